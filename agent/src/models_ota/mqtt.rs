//! The MQTT chunk transfer of a model bundle on the device, for devices that reach only
//! the broker: the agent's half of `chimera model publish --serve`.
//!
//! Why it exists: [`aegis_ota::model_chunks::ChunkFetcher`] decides what to ask for and
//! checks what comes back, without a network; this module connects it to the fleet link.
//! The link owns the broker connection: it hands every message of the device's chunk topic
//! and every (re)connect to the [`ChunkPort`], and publishes on the fetch topic the
//! requests the transfer puts there. The transfer itself ([`fetch`]) runs on a blocking
//! thread (it hashes and writes files), waiting for the next message with a timeout.
//!
//! What it must not do:
//! - hold more than a bounded number of messages: the port's inbox is a bounded channel
//!   and a message that does not fit is dropped and counted (the fetcher asks for it again
//!   when nothing arrives for a while);
//! - stall the link: the link never waits on the port (it only `try_send`s);
//! - write anything the fetcher did not check: every message goes through
//!   [`ChunkFetcher::on_chunk`], which ignores what it did not ask for and puts a file in
//!   place only when it matches the signed manifest;
//! - wait for ever: when no chunk arrived for [`Timing::stall`] the transfer ends (its
//!   parts are kept, so the next delivery of the announcement resumes it).

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::mpsc::{Receiver, RecvTimeoutError, SyncSender, TrySendError};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use aegis_ota::model::BundleFile;
use aegis_ota::model_chunks::{ChunkError, ChunkFetcher, Progress, fetch_request_json};
use aegis_ota::staging::StagingError;

/// Messages the port holds for the transfer before it drops more (chunks of at most
/// 122 KiB: about 2 MiB at most).
pub const INBOX: usize = 16;

/// What the link hands the transfer.
#[derive(Debug)]
pub enum PortEvent {
    /// A message on the device's chunk topic (anything may arrive).
    Chunk(Vec<u8>),
    /// The link (re)connected and subscribed: chunks asked before are asked again.
    Connected,
}

/// Between the fleet link and the chunk transfer under way (at most one).
#[derive(Debug)]
pub struct ChunkPort {
    inbox: Mutex<Option<SyncSender<PortEvent>>>,
    requests: tokio::sync::mpsc::UnboundedSender<Vec<u8>>,
    link_end: Mutex<Option<tokio::sync::mpsc::UnboundedReceiver<Vec<u8>>>>,
    /// Chunk-topic messages dropped: no transfer under way, or its inbox full.
    pub dropped: AtomicU64,
}

impl ChunkPort {
    /// A port no link has attached to yet.
    pub fn new() -> Arc<ChunkPort> {
        let (requests, rx) = tokio::sync::mpsc::unbounded_channel();
        Arc::new(ChunkPort {
            inbox: Mutex::new(None),
            requests,
            link_end: Mutex::new(Some(rx)),
            dropped: AtomicU64::new(0),
        })
    }

    /// The link's end: the fetch requests (JSON) to publish on the device's fetch topic.
    /// Once; None after.
    pub fn attach(&self) -> Option<tokio::sync::mpsc::UnboundedReceiver<Vec<u8>>> {
        self.link_end
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take()
    }

    /// A fleet link took the requests: a transfer over MQTT can run.
    pub fn is_attached(&self) -> bool {
        self.link_end
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .is_none()
    }

    /// The link: a message arrived on the chunk topic. Never blocks; copied only when a
    /// transfer runs.
    pub fn chunk(&self, payload: &[u8]) {
        self.offer(|| PortEvent::Chunk(payload.to_vec()));
    }

    /// The link: connected and subscribed to the chunk topic. Never blocks.
    pub fn connected(&self) {
        self.offer(|| PortEvent::Connected);
    }

    fn offer(&self, ev: impl FnOnce() -> PortEvent) {
        let inbox = self.inbox.lock().unwrap_or_else(|p| p.into_inner());
        let sent = match inbox.as_ref() {
            Some(tx) => match tx.try_send(ev()) {
                Ok(()) => true,
                Err(TrySendError::Full(_) | TrySendError::Disconnected(_)) => false,
            },
            None => false,
        };
        if !sent {
            self.dropped.fetch_add(1, Relaxed);
        }
    }

    /// A transfer starts: its inbox (the previous one, if any, is closed).
    fn open(&self) -> Receiver<PortEvent> {
        let (tx, rx) = std::sync::mpsc::sync_channel(INBOX);
        *self.inbox.lock().unwrap_or_else(|p| p.into_inner()) = Some(tx);
        rx
    }

    /// The transfer ended: chunks are dropped again.
    fn close(&self) {
        *self.inbox.lock().unwrap_or_else(|p| p.into_inner()) = None;
    }

    /// Queues one request for the link; false when the link is gone.
    fn send(&self, request: Vec<u8>) -> bool {
        self.requests.send(request).is_ok()
    }
}

/// How long the transfer waits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Timing {
    /// Nothing arrived for this long: the chunks outstanding are asked again (doubling up
    /// to `max_ask_again` while nothing comes, back to this after a chunk).
    pub ask_again: Duration,
    /// The longest wait before asking again.
    pub max_ask_again: Duration,
    /// No chunk accepted for this long: the transfer ends.
    pub stall: Duration,
}

impl Timing {
    /// The defaults with `stall`.
    pub fn with_stall(stall: Duration) -> Timing {
        Timing {
            ask_again: Duration::from_secs(3),
            max_ask_again: Duration::from_secs(30),
            stall,
        }
    }
}

/// Why a chunk transfer ended without the bundle.
#[derive(Debug, thiserror::Error)]
pub enum TransferError {
    /// The fetcher failed (see [`ChunkError`]).
    #[error(transparent)]
    Chunk(#[from] ChunkError),
    /// Nothing useful came for too long.
    #[error(
        "no chunk accepted for {0} s over MQTT (is a gateway serving this bundle: \
         `chimera model publish --serve`?); the parts are kept and the next delivery of the \
         announcement resumes them"
    )]
    Stalled(u64),
    /// The fleet link stopped (the agent is stopping).
    #[error("the fleet link stopped")]
    LinkGone,
}

impl TransferError {
    /// Whether trying again later may succeed (a gateway that comes, a disk that frees),
    /// rather than a gateway that refused or served the wrong bytes.
    pub fn transient(&self) -> bool {
        match self {
            TransferError::Stalled(_) | TransferError::LinkGone => true,
            TransferError::Chunk(e) => {
                matches!(e, ChunkError::Staging(StagingError::Io { .. }))
            }
        }
    }
}

/// The transfer under way on `port`: closes the port's inbox when dropped.
pub struct Transfer {
    port: Arc<ChunkPort>,
    inbox: Receiver<PortEvent>,
}

impl Transfer {
    /// Opens `port` for one transfer.
    pub fn open(port: Arc<ChunkPort>) -> Transfer {
        let inbox = port.open();
        Transfer { port, inbox }
    }

    /// Fetches the bundle's `files` into `staging` (resuming what is there) over the port:
    /// blocking, until every file is in place and verified, the fetcher fails, nothing
    /// came for `timing.stall`, or the link is gone. `progress` is called after each chunk
    /// written.
    pub fn fetch(
        &self,
        name: &str,
        version: u64,
        files: &[BundleFile],
        staging: &std::path::Path,
        timing: Timing,
        progress: &dyn Fn(&Progress),
    ) -> Result<(), TransferError> {
        let mut f = ChunkFetcher::new(name, version, files, staging)?;
        progress(&f.progress());
        let mut wait = timing.ask_again;
        let mut last_accepted = Instant::now();
        let mut ignored_logged = 0u64;
        while !f.is_done() {
            for r in f.next_requests() {
                if !self.port.send(fetch_request_json(&r)) {
                    return Err(TransferError::LinkGone);
                }
            }
            match self.inbox.recv_timeout(wait) {
                Ok(PortEvent::Chunk(msg)) => {
                    let (done, outstanding) = (f.progress().done, f.outstanding());
                    let p = f.on_chunk(&msg)?;
                    if p.done > done || f.outstanding() < outstanding {
                        last_accepted = Instant::now();
                        wait = timing.ask_again;
                    }
                    if p.done > done {
                        progress(&p);
                    }
                    if p.ignored > ignored_logged {
                        ignored_logged = p.ignored;
                        tracing::debug!(
                            model = name,
                            version,
                            ignored = p.ignored,
                            why = f.last_ignored().unwrap_or(""),
                            "chunk message ignored"
                        );
                    }
                }
                Ok(PortEvent::Connected) => f.on_timeout(),
                Err(RecvTimeoutError::Timeout) => {
                    if last_accepted.elapsed() >= timing.stall {
                        return Err(TransferError::Stalled(timing.stall.as_secs()));
                    }
                    tracing::debug!(
                        model = name,
                        version,
                        outstanding = f.outstanding(),
                        waited_ms = wait.as_millis() as u64,
                        "no chunk: asking again"
                    );
                    f.on_timeout();
                    wait = (wait * 2).min(timing.max_ask_again);
                }
                Err(RecvTimeoutError::Disconnected) => return Err(TransferError::LinkGone),
            }
        }
        Ok(())
    }
}

impl Drop for Transfer {
    fn drop(&mut self) {
        self.port.close();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use aegis_ota::model::ModelManifest;
    use aegis_ota::model_chunks::{ChunkServer, parse_fetch_request};

    fn file(path: &str, data: &[u8]) -> BundleFile {
        BundleFile {
            path: path.into(),
            sha256: aegis_ota::sha256_hex(data),
            size: data.len() as u64,
        }
    }

    /// A bundle of two files (one of several chunks) in `dir`, and its manifest.
    fn bundle(dir: &std::path::Path) -> ModelManifest {
        let big: Vec<u8> = (0..300_000u32).map(|i| (i * 7 + i / 251) as u8).collect();
        std::fs::create_dir_all(dir).unwrap();
        std::fs::write(dir.join("model.onnx"), &big).unwrap();
        std::fs::write(dir.join("labels.txt"), b"labels\n").unwrap();
        ModelManifest::example(
            "nn",
            3,
            vec![file("model.onnx", &big), file("labels.txt", b"labels\n")],
        )
    }

    /// A gateway on a thread: answers each request the port sends (through `lossy`, which
    /// may drop or duplicate); returns the count of requests so far.
    fn gateway(
        port: &Arc<ChunkPort>,
        dir: &std::path::Path,
        m: &ModelManifest,
        lossy: impl Fn(u64) -> usize + Send + 'static,
    ) -> Arc<AtomicU64> {
        let server = ChunkServer::new(dir, m).unwrap();
        let mut rx = port.attach().unwrap();
        let port = Arc::downgrade(port);
        let count = Arc::new(AtomicU64::new(0));
        let n = count.clone();
        std::thread::spawn(move || {
            while let Some(req) = rx.blocking_recv() {
                let Some(port) = port.upgrade() else { break };
                let i = n.fetch_add(1, Relaxed) + 1;
                let r = parse_fetch_request(&req).unwrap();
                let msg = server.answer(&r).message;
                for _ in 0..lossy(i) {
                    port.chunk(&msg);
                }
                // Junk between the answers: never written.
                port.chunk(b"AEGC\x00\x00garbage");
            }
        });
        count
    }

    fn fast(stall_ms: u64) -> Timing {
        Timing {
            ask_again: Duration::from_millis(20),
            max_ask_again: Duration::from_millis(80),
            stall: Duration::from_millis(stall_ms),
        }
    }

    #[test]
    fn a_bundle_arrives_through_drops_duplicates_junk_and_a_reconnect() {
        let d = tempfile::tempdir().unwrap();
        let m = bundle(&d.path().join("bundle"));
        let port = ChunkPort::new();
        // Every 3rd answer lost, every 5th sent twice.
        let gw = gateway(&port, &d.path().join("bundle"), &m, |n| {
            if n % 3 == 0 {
                0
            } else if n % 5 == 0 {
                2
            } else {
                1
            }
        });
        let staging = d.path().join("staging");
        let t = Transfer::open(port.clone());
        port.connected();
        let reports = Mutex::new(Vec::new());
        t.fetch("nn", 3, &m.files, &staging, fast(10_000), &|p| {
            reports.lock().unwrap().push(p.done)
        })
        .unwrap();
        for f in &m.files {
            let got = std::fs::read(staging.join(&f.path)).unwrap();
            assert_eq!(aegis_ota::sha256_hex(&got), f.sha256, "{}", f.path);
        }
        let reports = reports.into_inner().unwrap();
        assert_eq!(reports.last(), Some(&300_007));
        assert!(reports.windows(2).all(|w| w[0] < w[1]), "{reports:?}");
        drop(t);
        // A chunk after the transfer is dropped (no inbox), not queued.
        let before = port.dropped.load(Relaxed);
        port.chunk(b"late");
        assert_eq!(port.dropped.load(Relaxed), before + 1);
        // Each chunk asked for at least once, some of them again.
        assert!(gw.load(Relaxed) > 3, "{}", gw.load(Relaxed));
    }

    #[test]
    fn a_silent_gateway_ends_the_transfer_as_stalled_and_the_parts_resume_later() {
        let d = tempfile::tempdir().unwrap();
        let m = bundle(&d.path().join("bundle"));
        let staging = d.path().join("staging");
        // First gateway: answers the first two requests, then nothing.
        let port = ChunkPort::new();
        let _gw = gateway(&port, &d.path().join("bundle"), &m, |n| usize::from(n <= 2));
        let t = Transfer::open(port.clone());
        let e = t
            .fetch("nn", 3, &m.files, &staging, fast(300), &|_| {})
            .unwrap_err();
        assert!(matches!(e, TransferError::Stalled(_)), "{e}");
        assert!(e.transient());
        let part = staging.join("model.onnx.part");
        assert_eq!(std::fs::metadata(&part).unwrap().len(), 2 * 120 * 1024);
        // A second transfer resumes from the part: the first request is at its end.
        let port2 = ChunkPort::new();
        let asked = Arc::new(Mutex::new(Vec::new()));
        let server = ChunkServer::new(&d.path().join("bundle"), &m).unwrap();
        let mut rx = port2.attach().unwrap();
        let (p2, a2) = (port2.clone(), asked.clone());
        std::thread::spawn(move || {
            while let Some(req) = rx.blocking_recv() {
                let r = parse_fetch_request(&req).unwrap();
                a2.lock().unwrap().push((r.file.clone(), r.offset));
                p2.chunk(&server.answer(&r).message);
            }
        });
        let t2 = Transfer::open(port2.clone());
        t2.fetch("nn", 3, &m.files, &staging, fast(10_000), &|_| {})
            .unwrap();
        assert_eq!(
            asked.lock().unwrap().first(),
            Some(&("model.onnx".to_string(), 2 * 120 * 1024))
        );
        assert!(staging.join("model.onnx").is_file() && !part.exists());
    }

    #[test]
    fn a_wrong_file_from_the_gateway_is_removed_and_not_retried_as_transient() {
        let d = tempfile::tempdir().unwrap();
        let m = bundle(&d.path().join("bundle"));
        // The gateway's copy of labels.txt differs from the signed manifest's.
        let mut served = m.clone();
        std::fs::write(d.path().join("bundle/labels.txt"), b"LABELS\n").unwrap();
        served.files[1].sha256 = aegis_ota::sha256_hex(b"LABELS\n");
        let port = ChunkPort::new();
        let _gw = gateway(&port, &d.path().join("bundle"), &served, |_| 1);
        let staging = d.path().join("staging");
        let t = Transfer::open(port.clone());
        let e = t
            .fetch("nn", 3, &m.files, &staging, fast(10_000), &|_| {})
            .unwrap_err();
        assert!(
            matches!(
                e,
                TransferError::Chunk(ChunkError::Staging(StagingError::HashMismatch { .. }))
            ),
            "{e}"
        );
        assert!(!e.transient());
        assert!(!staging.join("labels.txt").exists());
        assert!(!staging.join("labels.txt.part").exists());
    }

    #[test]
    fn a_full_inbox_drops_and_counts_and_the_link_never_waits() {
        let port = ChunkPort::new();
        let t = Transfer::open(port.clone());
        for _ in 0..INBOX + 5 {
            port.chunk(b"x");
        }
        assert_eq!(port.dropped.load(Relaxed), 5);
        drop(t);
        assert!(!port.is_attached());
        let _rx = port.attach().unwrap();
        assert!(port.is_attached() && port.attach().is_none());
    }
}
