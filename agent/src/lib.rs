//! The Aegis Edge agent: runtime wiring for the `aegis` binary.
//!
//! The agent owns no codec, pixel or crypto logic: it reads the config (`aegis-config`),
//! builds the pipeline from HAL pieces (`aegis-hal`), runs it on threads, exports metrics
//! and serves the local HTTP endpoints. See `docs/architecture.md`.

pub mod alloc;
pub mod apply;
pub mod bench;
pub mod bench_backends;
pub mod bench_rtsp;
pub mod bench_stages;
pub mod bench_workflow;
pub mod cli;
pub mod cuda_golden;
pub mod db_cli;
pub mod fleet;
pub mod fleet_sim;
pub mod inference;
pub mod logging;
pub mod metrics;
pub mod pipeline;
pub mod process;
pub mod runtime;
pub mod sample;
pub mod sensing;
pub mod sensors_cli;
pub mod server;
pub mod store;
pub mod workflow_cli;
