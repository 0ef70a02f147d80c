//! `aegis`: the Aegis Edge agent binary. See `aegis --help`.

#[global_allocator]
static ALLOC: aegis_agent::alloc::CountingAlloc = aegis_agent::alloc::CountingAlloc;

fn main() -> std::process::ExitCode {
    aegis_agent::cli::main()
}
