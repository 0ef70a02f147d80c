//! Streaming outputs: the processed video in VMSs and clouds, encoded once. Each output
//! takes the stream's encoded packets from its live slot ([`crate::live`]) through
//! a bounded queue of its own, so a slow or dead consumer is dropped and counted and never
//! slows the pipeline, the recording or the other outputs.
//!
//! - [`rtsp`]: the RTSP restream server (`outputs.rtsp`, the `restream` sink).
//! - [`push`]: RTMP and SRT push (the `push` sink).

pub mod push;
pub mod rtp;
pub mod rtsp;
