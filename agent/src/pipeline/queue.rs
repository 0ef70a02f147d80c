//! Bounded frame queues between pipeline threads, with a depth gauge.
//!
//! `std::sync::mpsc::sync_channel` keeps its slots in a fixed ring allocated up front, so
//! sending a frame never allocates; a full queue blocks the sender, which is how
//! backpressure travels from a slow sink back to the decoder.

use std::sync::mpsc::{Receiver, RecvError, SendError, SyncSender, sync_channel};

use prometheus_client::metrics::gauge::Gauge;

/// Sending half.
pub struct QueueTx<T> {
    tx: SyncSender<T>,
    depth: Gauge,
}

/// Receiving half.
pub struct QueueRx<T> {
    rx: Receiver<T>,
    depth: Gauge,
}

/// A queue of `capacity` items whose current depth is mirrored in `depth`.
pub fn bounded<T>(capacity: usize, depth: Gauge) -> (QueueTx<T>, QueueRx<T>) {
    let (tx, rx) = sync_channel(capacity.max(1));
    (
        QueueTx {
            tx,
            depth: depth.clone(),
        },
        QueueRx { rx, depth },
    )
}

impl<T> QueueTx<T> {
    /// Sends, waiting while the queue is full. Fails only when the receiver is gone.
    pub fn send(&self, item: T) -> Result<(), SendError<T>> {
        self.depth.inc();
        self.tx.send(item).inspect_err(|_| {
            self.depth.dec();
        })
    }
}

impl<T> QueueRx<T> {
    /// Receives, waiting while the queue is empty. Fails when every sender is gone and the
    /// queue is drained.
    pub fn recv(&self) -> Result<T, RecvError> {
        let item = self.rx.recv()?;
        self.depth.dec();
        Ok(item)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn depth_follows_contents_and_close_ends_receiver() {
        let g = Gauge::default();
        let (tx, rx) = bounded::<u32>(2, g.clone());
        tx.send(1).unwrap();
        tx.send(2).unwrap();
        assert_eq!(g.get(), 2);
        assert_eq!(rx.recv(), Ok(1));
        assert_eq!(g.get(), 1);
        drop(tx);
        assert_eq!(rx.recv(), Ok(2));
        assert!(rx.recv().is_err());
        assert_eq!(g.get(), 0);
    }
}
