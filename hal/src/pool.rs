//! Bounded pools of frame surfaces.
//!
//! Every surface a pipeline will ever use is allocated when its pool is created. A producer
//! that finds the pool empty *waits* until a consumer drops a frame (backpressure) — the
//! pool never grows, so a stalled sink shows up as a blocked source and a queue-depth metric,
//! not as unbounded memory. Acquire/release move a `Vec` between the free list and a
//! [`PooledSurface`]; neither allocates.

use std::ops::{Deref, DerefMut};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use crate::frame::FrameLayout;

/// The pool was closed while a producer waited for a surface (pipeline shutting down).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("surface pool closed")]
pub struct PoolClosed;

struct Shared {
    layout: FrameLayout,
    capacity: usize,
    free: Mutex<Vec<Vec<u8>>>,
    returned: Condvar,
    closed: AtomicBool,
    waits: AtomicU64,
    wait_ns: AtomicU64,
    /// Producers blocked in `acquire` right now.
    waiting: AtomicUsize,
    /// The surfaces page-locked for GPU downloads (CUDA backend); unpinned before the
    /// surfaces are freed.
    pinned: Mutex<Vec<aegis_cuda::PinnedHost>>,
}

impl Drop for Shared {
    fn drop(&mut self) {
        // Before the buffers in `free` go: every surface is back by now (each loan holds
        // this struct alive).
        self.pinned
            .get_mut()
            .unwrap_or_else(|p| p.into_inner())
            .clear();
    }
}

impl Shared {
    fn free(&self) -> MutexGuard<'_, Vec<Vec<u8>>> {
        // A panic while holding this lock cannot leave the Vec inconsistent (push/pop only),
        // so a poisoned lock is still safe to use.
        self.free.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// A fixed set of equally sized host surfaces. Cloning shares the same pool.
#[derive(Clone)]
pub struct SurfacePool {
    shared: Arc<Shared>,
}

/// A surface on loan from a [`SurfacePool`]; it goes back to the pool when dropped.
pub struct PooledSurface {
    buf: Vec<u8>,
    shared: Arc<Shared>,
}

impl SurfacePool {
    /// Allocates `capacity` zeroed surfaces of `layout.size` bytes.
    pub fn new(layout: FrameLayout, capacity: usize) -> Self {
        let capacity = capacity.max(1);
        let mut free = Vec::with_capacity(capacity);
        for _ in 0..capacity {
            free.push(vec![0u8; layout.size]);
        }
        SurfacePool {
            shared: Arc::new(Shared {
                layout,
                capacity,
                free: Mutex::new(free),
                returned: Condvar::new(),
                closed: AtomicBool::new(false),
                waits: AtomicU64::new(0),
                wait_ns: AtomicU64::new(0),
                waiting: AtomicUsize::new(0),
                pinned: Mutex::new(Vec::new()),
            }),
        }
    }

    /// The layout of every surface in this pool.
    pub fn layout(&self) -> FrameLayout {
        self.shared.layout
    }

    /// Number of surfaces the pool owns.
    pub fn capacity(&self) -> usize {
        self.shared.capacity
    }

    /// Surfaces currently free.
    pub fn available(&self) -> usize {
        self.shared.free().len()
    }

    /// How many acquisitions had to wait for a surface, and for how long in total.
    pub fn backpressure(&self) -> (u64, Duration) {
        (
            self.shared.waits.load(Ordering::Relaxed),
            Duration::from_nanos(self.shared.wait_ns.load(Ordering::Relaxed)),
        )
    }

    /// Producers blocked waiting for a surface right now.
    pub fn waiting(&self) -> usize {
        self.shared.waiting.load(Ordering::Acquire)
    }

    /// Takes a free surface, waiting as long as it takes (backpressure).
    pub fn acquire(&self) -> Result<PooledSurface, PoolClosed> {
        self.acquire_until(None).and_then(|s| s.ok_or(PoolClosed))
    }

    /// Takes a free surface, waiting at most `timeout`; `Ok(None)` when none came free.
    pub fn acquire_timeout(&self, timeout: Duration) -> Result<Option<PooledSurface>, PoolClosed> {
        self.acquire_until(Some(Instant::now() + timeout))
    }

    /// Takes a free surface if one is available right now.
    pub fn try_acquire(&self) -> Option<PooledSurface> {
        let buf = self.shared.free().pop()?;
        Some(PooledSurface {
            buf,
            shared: self.shared.clone(),
        })
    }

    fn acquire_until(
        &self,
        deadline: Option<Instant>,
    ) -> Result<Option<PooledSurface>, PoolClosed> {
        let sh = &self.shared;
        let mut free = sh.free();
        let mut waited_since = None;
        loop {
            if sh.closed.load(Ordering::Acquire) {
                return Err(PoolClosed);
            }
            if let Some(buf) = free.pop() {
                if let Some(t0) = waited_since {
                    let t0: Instant = t0;
                    sh.waits.fetch_add(1, Ordering::Relaxed);
                    sh.wait_ns
                        .fetch_add(t0.elapsed().as_nanos() as u64, Ordering::Relaxed);
                }
                return Ok(Some(PooledSurface {
                    buf,
                    shared: sh.clone(),
                }));
            }
            waited_since.get_or_insert_with(Instant::now);
            sh.waiting.fetch_add(1, Ordering::AcqRel);
            let woken = match deadline {
                None => Ok(sh.returned.wait(free).unwrap_or_else(|p| p.into_inner())),
                Some(d) => {
                    let now = Instant::now();
                    if now >= d {
                        Err(())
                    } else {
                        Ok(sh
                            .returned
                            .wait_timeout(free, d - now)
                            .unwrap_or_else(|p| p.into_inner())
                            .0)
                    }
                }
            };
            sh.waiting.fetch_sub(1, Ordering::AcqRel);
            free = match woken {
                Ok(guard) => guard,
                Err(()) => return Ok(None),
            };
        }
    }

    /// Page-locks every surface for downloads from `gpu` (the CUDA backend's final copy
    /// then runs as DMA). Call it on a fresh pool: surfaces on loan are not pinned.
    pub fn pin_for(&self, gpu: &aegis_cuda::Gpu) -> Result<(), aegis_cuda::CudaError> {
        let mut free = self.shared.free();
        let mut pinned = self.shared.pinned.lock().unwrap_or_else(|p| p.into_inner());
        for buf in free.iter_mut() {
            pinned.push(gpu.pin_host(buf)?);
        }
        Ok(())
    }

    /// Whether [`SurfacePool::close`] was called (the source is stopping).
    pub fn is_closed(&self) -> bool {
        self.shared.closed.load(Ordering::Acquire)
    }

    /// Wakes every waiting producer with [`PoolClosed`]; surfaces still on loan return normally.
    pub fn close(&self) {
        self.shared.closed.store(true, Ordering::Release);
        // Take the lock so a producer between its closed-check and its wait cannot miss this.
        let _guard = self.shared.free();
        self.shared.returned.notify_all();
    }
}

impl std::fmt::Debug for SurfacePool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SurfacePool")
            .field("layout", &self.shared.layout)
            .field("capacity", &self.shared.capacity)
            .finish()
    }
}

impl Deref for PooledSurface {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        &self.buf
    }
}

impl DerefMut for PooledSurface {
    fn deref_mut(&mut self) -> &mut [u8] {
        &mut self.buf
    }
}

impl Drop for PooledSurface {
    fn drop(&mut self) {
        let buf = std::mem::take(&mut self.buf);
        // The free list was created with room for every surface, so this push never reallocates.
        self.shared.free().push(buf);
        self.shared.returned.notify_one();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::frame::PixelFormat;

    fn pool(n: usize) -> SurfacePool {
        SurfacePool::new(FrameLayout::new(PixelFormat::I420, 64, 48), n)
    }

    #[test]
    fn full_pool_blocks_until_a_surface_returns() {
        let p = pool(2);
        let a = p.acquire().unwrap();
        let _b = p.acquire().unwrap();
        assert_eq!(p.available(), 0);
        assert!(p.try_acquire().is_none());
        assert!(
            p.acquire_timeout(Duration::from_millis(20))
                .unwrap()
                .is_none()
        );
        let p2 = p.clone();
        let waiter = std::thread::spawn(move || p2.acquire().map(|s| s.len()));
        while p.waiting() == 0 {
            std::thread::yield_now();
        }
        assert!(
            !waiter.is_finished(),
            "producer must wait while the pool is empty"
        );
        drop(a);
        assert_eq!(waiter.join().unwrap(), Ok(p.layout().size));
        assert_eq!(p.backpressure().0, 1);
    }

    #[test]
    fn close_wakes_waiters_and_surfaces_still_return() {
        let p = pool(1);
        let held = p.acquire().unwrap();
        let p2 = p.clone();
        let waiter = std::thread::spawn(move || p2.acquire().err());
        while p.waiting() == 0 {
            std::thread::yield_now();
        }
        p.close();
        assert_eq!(waiter.join().unwrap(), Some(PoolClosed));
        drop(held);
        assert_eq!(p.available(), 1);
        assert_eq!(p.capacity(), 1);
    }
}
