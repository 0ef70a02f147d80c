//! The binary's tools, apart from the product: benchmarks, the fleet simulator, sample
//! generation and the CUDA golden-file generator. The runtime never calls into this module;
//! `aegis bench …`, `aegis sample` and the GPU machine's scripts do.

pub mod bench;
pub mod bench_backends;
pub mod bench_evidence;
pub mod bench_models;
pub mod bench_outputs;
pub mod bench_rtsp;
pub mod bench_stages;
pub mod bench_web;
pub mod bench_workflow;
pub mod cuda_golden;
pub mod fleet_devices;
pub mod fleet_sim;
pub mod proc;
pub mod sample;
