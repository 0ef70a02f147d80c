//! `chimera`: the gateway's offline CLI for MAML workflows (keys, templates, signing,
//! verification). Trust metadata, enrolment and sealing commands come with the rest of the
//! MAML issue.

use std::path::PathBuf;
use std::process::ExitCode;

use aegis_ota::maml;
use aegis_ota::sign::{PublicKey, Purpose, SecretKey};
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "chimera",
    version,
    about = "Aegis Edge gateway CLI: MAML workflows"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Make an ML-DSA-65 key pair: PREFIX.key (secret, 0600, never overwritten) and PREFIX.pub.
    Keygen {
        /// Path prefix of the two files.
        #[arg(long)]
        out: PathBuf,
    },
    /// Write a valid, unsigned workflow template.
    New {
        /// Output file (`.maml.md`); never overwritten.
        #[arg(long)]
        out: PathBuf,
        /// Issuer name (origin: chimera://ISSUER).
        #[arg(long, default_value = "fleet-gw-1")]
        issuer: String,
        /// Target device id.
        #[arg(long)]
        device: String,
        /// Sequence number (strictly increasing per issuer key and target).
        #[arg(long, default_value_t = 1)]
        sequence: u64,
        /// Validity in days from now.
        #[arg(long, default_value_t = 7)]
        days: u32,
    },
    /// Sign a workflow: appends the ```signature block (the signed bytes are the file as is,
    /// CRLF normalised to LF).
    Sign {
        /// The workflow.
        file: PathBuf,
        /// Secret key file.
        #[arg(long)]
        key: PathBuf,
        /// Output (default: FILE with `.signed` before `.maml.md`).
        #[arg(long)]
        out: Option<PathBuf>,
    },
    /// Run every device-side check that needs no device state and print each.
    Verify {
        /// The signed workflow.
        file: PathBuf,
        /// Trusted public key files.
        #[arg(long = "trust", required = true)]
        trust: Vec<PathBuf>,
    },
}

fn now_rfc3339(offset_days: i64) -> String {
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64)
        + offset_days * 86_400;
    let days = secs.div_euclid(86_400);
    let rem = secs.rem_euclid(86_400);
    // civil_from_days (Howard Hinnant).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

fn uuid_v4() -> anyhow::Result<String> {
    let mut b = [0u8; 16];
    getrandom::fill(&mut b).map_err(|e| anyhow::anyhow!("random generator: {e}"))?;
    b[6] = (b[6] & 0x0f) | 0x40;
    b[8] = (b[8] & 0x3f) | 0x80;
    let h: String = b.iter().map(|x| format!("{x:02x}")).collect();
    Ok(format!(
        "{}-{}-{}-{}-{}",
        &h[..8],
        &h[8..12],
        &h[12..16],
        &h[16..20],
        &h[20..]
    ))
}

fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Keygen { out } => {
            let key = SecretKey::generate()?;
            let secret = out.with_extension("key");
            let public = out.with_extension("pub");
            key.write(&secret)?;
            std::fs::write(&public, key.public().to_file_text())?;
            println!(
                "{} (secret, 0600)\n{} (public)\nkey id {}",
                secret.display(),
                public.display(),
                key.public().id()
            );
        }
        Command::New {
            out,
            issuer,
            device,
            sequence,
            days,
        } => {
            let text = maml::template(
                &uuid_v4()?,
                &issuer,
                &device,
                sequence,
                &now_rfc3339(0),
                &now_rfc3339(i64::from(days)),
            );
            use std::io::Write;
            let mut f = std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .open(&out)
                .map_err(|e| anyhow::anyhow!("{}: {e}", out.display()))?;
            f.write_all(text.as_bytes())?;
            println!("{}", out.display());
        }
        Command::Sign { file, key, out } => {
            let key = SecretKey::read(&key)?;
            let doc = std::fs::read(&file)?;
            if maml::split_signed(&doc).is_ok() {
                anyhow::bail!("{} is already signed", file.display());
            }
            let mut out_bytes = maml::normalise(&doc);
            // The signature block starts on a line of its own.
            if !out_bytes.ends_with(b"\n") {
                out_bytes.push(b'\n');
            }
            // Sign only what parses: a gateway must not sign a document devices will refuse.
            maml::parse(&out_bytes).map_err(|e| anyhow::anyhow!("{}: {e}", file.display()))?;
            let block = key.sign_block(&out_bytes, Purpose::Workflow)?;
            out_bytes.extend_from_slice(block.render().as_bytes());
            let out = out.unwrap_or_else(|| {
                let name = file.to_string_lossy();
                PathBuf::from(match name.strip_suffix(".maml.md") {
                    Some(stem) => format!("{stem}.signed.maml.md"),
                    None => format!("{name}.signed"),
                })
            });
            std::fs::write(&out, out_bytes)?;
            println!("{} signed by {}", out.display(), key.public().id());
        }
        Command::Verify { file, trust } => {
            let keys = trust
                .iter()
                .map(|p| PublicKey::read(p))
                .collect::<Result<Vec<_>, _>>()?;
            let doc = std::fs::read(&file)?;
            match aegis_ota::verify_document(&doc, &keys) {
                Ok(v) => {
                    println!(
                        "ok  size {} bytes (limit {})",
                        doc.len(),
                        maml::MAX_DOCUMENT_BYTES
                    );
                    println!(
                        "ok  signature {} by {}",
                        aegis_ota::sign::ALG,
                        v.signer.id()
                    );
                    println!(
                        "ok  front matter: {} sequence {} for {:?} {:?}",
                        v.document.front.id,
                        v.document.front.sequence,
                        v.document.front.target.devices,
                        v.document.front.target.groups
                    );
                    println!(
                        "ok  valid {} .. {}",
                        v.document.front.issued_at, v.document.front.expires_at
                    );
                    match &v.pipeline {
                        Some(p) => println!(
                            "ok  pipeline: {} sources, {} stages, {} sinks",
                            p.sources.len(),
                            p.stages.len(),
                            p.sinks.len()
                        ),
                        None => println!("--  no Pipeline section"),
                    }
                    println!("sha256 {}", v.digest);
                    println!(
                        "not checked here (device state): trust metadata version, replay sequence, time floor, device policy, target = this device"
                    );
                }
                Err(e) => anyhow::bail!("REFUSED: {e}"),
            }
        }
    }
    Ok(())
}

fn main() -> ExitCode {
    match run(Cli::parse()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("chimera: {e}");
            ExitCode::FAILURE
        }
    }
}
