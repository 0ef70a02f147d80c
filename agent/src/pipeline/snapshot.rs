//! Snapshots on request: a caller (the fleet `snapshot` command, later the technician page)
//! asks for a stream's next frame as a JPEG; the stream's sink thread encodes the next frame
//! it delivers and answers. Nothing is encoded unless asked: the frame path only reads one
//! atomic flag.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use aegis_hal::Frame;

/// Width limit of snapshots (keeps a JPEG of a 4K camera within one 128 KB MQTT message most
/// of the time; larger ones are sent in chunks).
pub const SNAPSHOT_MAX_WIDTH: usize = 1280;
/// JPEG quantiser (2 best … 31 smallest).
pub const SNAPSHOT_QUALITY: u32 = 6;

type Reply = tokio::sync::oneshot::Sender<Result<Vec<u8>, SnapshotError>>;

/// Why no snapshot came; the message is the `error` text of the fleet reply.
#[derive(Debug, Clone, thiserror::Error)]
pub enum SnapshotError {
    /// The device takes no snapshots (the fleet simulator's devices).
    #[error("snapshots are not available on this device")]
    Unavailable,
    /// No stream has the id asked for.
    #[error("no stream {stream:?} (streams: {known})")]
    NoStream {
        /// The id asked for.
        stream: String,
        /// The running streams' ids, comma-separated.
        known: String,
    },
    /// No stream runs.
    #[error("no streams are running")]
    NoStreams,
    /// The stream stopped before its next frame.
    #[error("the stream ended before a frame came")]
    Ended,
    /// No frame came in time.
    #[error("no frame within 5 s (is the stream running?)")]
    Timeout,
    /// The frame could not be encoded (shared by every request the frame answers).
    #[error("{source}")]
    Encode {
        /// Why.
        source: Arc<aegis_hal::codec::CodecError>,
    },
}

/// One stream's pending requests.
#[derive(Default)]
pub struct SnapshotSlot {
    wanted: AtomicBool,
    waiters: Mutex<Vec<Reply>>,
}

impl SnapshotSlot {
    /// Whether the next frame offered is taken (someone waits for a snapshot).
    pub fn wants_frame(&self) -> bool {
        self.wanted.load(Ordering::Acquire)
    }

    /// Called by the sink thread for each delivered frame: answers pending requests with it.
    pub fn offer(&self, frame: &Frame) {
        // A frame whose pixels are still on the device (asked for after the sink loop
        // looked) has nothing on the host yet: the next frame serves.
        if !self.wanted.load(Ordering::Acquire) || frame.device.is_some() {
            return;
        }
        let waiters: Vec<Reply> = {
            let mut w = self.waiters.lock().unwrap_or_else(|e| e.into_inner());
            self.wanted.store(false, Ordering::Release);
            std::mem::take(&mut *w)
        };
        let jpeg = aegis_hal::codec::encode_jpeg(frame, SNAPSHOT_MAX_WIDTH, SNAPSHOT_QUALITY)
            .map_err(|e| SnapshotError::Encode {
                source: Arc::new(e),
            });
        for w in waiters {
            let _ = w.send(jpeg.clone());
        }
    }
}

/// The snapshot slots of every stream of a pipeline.
#[derive(Default)]
pub struct SnapshotHub {
    slots: Mutex<Vec<(String, Arc<SnapshotSlot>)>>,
}

impl std::fmt::Debug for SnapshotHub {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SnapshotHub").finish_non_exhaustive()
    }
}

impl SnapshotHub {
    /// The slot of `stream` (created on first use).
    pub fn slot(&self, stream: &str) -> Arc<SnapshotSlot> {
        let mut slots = self.slots.lock().unwrap_or_else(|e| e.into_inner());
        if let Some((_, s)) = slots.iter().find(|(id, _)| id == stream) {
            return s.clone();
        }
        let s = Arc::new(SnapshotSlot::default());
        slots.push((stream.to_string(), s.clone()));
        s
    }

    /// Asks for the next frame of `stream` (default: the first stream) as a JPEG.
    pub fn request(
        &self,
        stream: Option<&str>,
    ) -> Result<tokio::sync::oneshot::Receiver<Result<Vec<u8>, SnapshotError>>, SnapshotError> {
        let slots = self.slots.lock().unwrap_or_else(|e| e.into_inner());
        let known: HashMap<&str, &Arc<SnapshotSlot>> =
            slots.iter().map(|(id, s)| (id.as_str(), s)).collect();
        let slot = match stream {
            Some(id) => known.get(id).ok_or_else(|| SnapshotError::NoStream {
                stream: id.to_string(),
                known: slots
                    .iter()
                    .map(|(i, _)| i.as_str())
                    .collect::<Vec<_>>()
                    .join(", "),
            })?,
            None => &slots.first().ok_or(SnapshotError::NoStreams)?.1,
        };
        let (tx, rx) = tokio::sync::oneshot::channel();
        slot.waiters
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(tx);
        slot.wanted.store(true, Ordering::Release);
        Ok(rx)
    }
}
