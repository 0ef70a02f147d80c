//! How the [`Batcher`]'s waiting window affects a pipeline's inference throughput, with the
//! access pattern of the demo's stages: each stream calls three models in sequence, one on
//! every frame (segmentation), one on every 3rd and one on every 5th frame (the detectors),
//! the streams out of phase. The engines are models of the batcher's scheduling, not of a
//! network: each call sleeps a fixed cost plus a cost per item (`gpu`: 1 ms + 0.15 ms per
//! item, so batching pays; `cpu`: 0.2 ms + 6 ms per item, so it hardly does), and each frame
//! spends 0.5 ms outside inference (decode, preprocess).
//!
//! `cargo run --release -p aegis-models --example batch_window [FRAMES]` prints, per engine
//! model and stream count, the wall time of batching off (`max_batch` 1, the baseline, run in
//! the same process), and its ratio to batching on with a 4 ms window and with none.

use std::path::Path;
use std::sync::{Arc, Barrier};
use std::time::{Duration, Instant};

use aegis_models::batch::Batcher;
use aegis_models::engine::{EngineError, InferenceEngine};

/// Sleeps `fixed + per_item * n` per call of `n` items; echoes its input.
struct Modelled {
    fixed: Duration,
    per_item: Duration,
}

impl InferenceEngine for Modelled {
    fn run(
        &mut self,
        input: &[f32],
        shape: &[usize],
        out: &mut Vec<f32>,
    ) -> Result<Vec<usize>, EngineError> {
        std::thread::sleep(self.fixed + self.per_item * shape[0] as u32);
        out.clear();
        out.extend_from_slice(input);
        Ok(shape.to_vec())
    }
    fn input_shape(&self) -> &[i64] {
        &[-1, 4]
    }
    fn model(&self) -> &Path {
        Path::new("modelled.onnx")
    }
}

/// Wall time of `streams` threads running `frames` frames each through the three models.
fn pipeline(
    streams: usize,
    frames: usize,
    engine: (Duration, Duration),
    max_batch: usize,
    window: Duration,
) -> Duration {
    let models: Vec<Batcher> = (0..3)
        .map(|_| {
            let e = Modelled {
                fixed: engine.0,
                per_item: engine.1,
            };
            Batcher::start(Box::new(e), &[4], max_batch, window).expect("batcher")
        })
        .collect();
    let start = Arc::new(Barrier::new(streams + 1));
    let threads: Vec<_> = (0..streams)
        .map(|s| {
            let mut clients: Vec<_> = models.iter().map(Batcher::client).collect();
            let start = start.clone();
            std::thread::spawn(move || {
                start.wait();
                for f in 0..frames {
                    std::thread::sleep(Duration::from_micros(500));
                    for (client, every) in clients.iter_mut().zip([1, 3, 5]) {
                        if (f + s) % every == 0 {
                            client.input(4).fill(f as f32);
                            client.run().expect("inference");
                        }
                    }
                }
            })
        })
        .collect();
    start.wait();
    let t0 = Instant::now();
    for t in threads {
        t.join().expect("stream thread");
    }
    t0.elapsed()
}

fn main() {
    let frames: usize = std::env::args()
        .nth(1)
        .and_then(|a| a.parse().ok())
        .unwrap_or(90);
    let us = Duration::from_micros;
    for (name, engine) in [("gpu", (us(1000), us(150))), ("cpu", (us(200), us(6000)))] {
        for streams in [2, 4, 8] {
            let off = pipeline(streams, frames, engine, 1, Duration::ZERO);
            let w4 = pipeline(streams, frames, engine, 8, Duration::from_millis(4));
            let w0 = pipeline(streams, frames, engine, 8, Duration::ZERO);
            let ratio = |d: Duration| off.as_secs_f64() / d.as_secs_f64();
            println!(
                "{name} engine, {streams} streams, {frames} frames: batching off {off:.2?}; \
                 on with a 4 ms window {:.2}x, with none {:.2}x (speed-up over off)",
                ratio(w4),
                ratio(w0)
            );
        }
    }
}
