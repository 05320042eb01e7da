//! Suspend/resume of a volume's host I/O, after dm's suspend/resume (spec
//! section IX, \[0171\], Fig. 15 steps 1504–1508: complete existing tasks, queue
//! incoming requests, then change the configuration and resume).
//!
//! A [`Gate`] is shared (in an `Arc`) by every queue thread of one exposed
//! volume. Each queue registers once and gets its own [`GateHandle`] with its
//! own in-flight counter on its own cache line, so the hot path touches no
//! shared cache line for writing: one increment and one decrement of the
//! queue's counter and one load of the shared `suspended` flag per request
//! (SeqCst on both sides: the suspender stores the flag then loads every
//! counter, a request increments its counter then loads the flag, so at least
//! one of them sees the other — a request either waits or is drained).
//!
//! [`Gate::suspend`] (a control thread, never a queue thread) raises the flag,
//! waits until every queue's counter is zero, and returns a [`Suspended`] guard;
//! dropping the guard resumes. Requests arriving meanwhile wait in their queue
//! (they are *held*, never failed: dm's "requeue, do not fail") and proceed in
//! arrival order per queue once the flag drops.
//!
//! Held requests wait by yielding to their queue's executor; once the gate is
//! fully drained (nothing in flight on any queue, so there is no completion to
//! reap) they also sleep a millisecond per round so a long suspension does not
//! burn a core. The queue loop in the daemon bounds the ticks it runs between
//! two ring polls, so a held request never starves the completions of the
//! requests being drained.
//!
//! [`Gated`] wraps a [`BlockDev`] so every request passes the gate.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::{BlockDev, IoResult, Limits, ReadBuf, WriteBuf};

/// Why a suspension did not happen.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum GateError {
    /// Another suspension holds the gate.
    #[error("already suspended")]
    Busy,
    /// In-flight requests did not complete in time; the gate was reopened.
    #[error("{0} requests still in flight after {1:?}: suspension abandoned")]
    Timeout(u64, Duration),
}

/// A queue's in-flight counter, alone on its cache line.
#[repr(align(128))]
#[derive(Debug, Default)]
struct QueueCount(AtomicU64);

/// The suspend/resume gate of one volume.
#[derive(Debug, Default)]
pub struct Gate {
    suspended: AtomicBool,
    /// Set once a suspension has drained every queue; held requests may then
    /// sleep instead of yielding.
    drained: AtomicBool,
    queues: Mutex<Vec<Arc<QueueCount>>>,
}

impl Gate {
    /// A new, open gate.
    pub fn new() -> Arc<Gate> {
        Arc::new(Gate::default())
    }

    /// Register one queue; its requests pass through the returned handle.
    pub fn register(self: &Arc<Self>) -> GateHandle {
        let count = Arc::new(QueueCount::default());
        self.queues
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(count.clone());
        GateHandle {
            gate: self.clone(),
            count,
        }
    }

    /// Whether a suspension holds the gate.
    pub fn is_suspended(&self) -> bool {
        self.suspended.load(Ordering::SeqCst)
    }

    fn in_flight(&self) -> u64 {
        self.queues
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .map(|q| q.0.load(Ordering::SeqCst))
            .sum()
    }

    /// Hold new requests and wait (blocking the calling thread, which must not
    /// be a queue thread) until none is in flight. On timeout the gate reopens
    /// and nothing changed.
    pub fn suspend(self: &Arc<Self>, timeout: Duration) -> Result<Suspended, GateError> {
        if self
            .suspended
            .compare_exchange(false, true, Ordering::SeqCst, Ordering::SeqCst)
            .is_err()
        {
            return Err(GateError::Busy);
        }
        let start = Instant::now();
        loop {
            let n = self.in_flight();
            if n == 0 {
                break;
            }
            if start.elapsed() >= timeout {
                self.suspended.store(false, Ordering::SeqCst);
                return Err(GateError::Timeout(n, timeout));
            }
            std::thread::sleep(Duration::from_micros(200));
        }
        self.drained.store(true, Ordering::SeqCst);
        Ok(Suspended { gate: self.clone() })
    }
}

/// Holds a gate suspended; dropping it resumes the held requests.
#[derive(Debug)]
pub struct Suspended {
    gate: Arc<Gate>,
}

impl Drop for Suspended {
    fn drop(&mut self) {
        self.gate.drained.store(false, Ordering::SeqCst);
        self.gate.suspended.store(false, Ordering::SeqCst);
    }
}

/// One queue's side of a [`Gate`].
#[derive(Debug)]
pub struct GateHandle {
    gate: Arc<Gate>,
    count: Arc<QueueCount>,
}

/// A request counted in flight; dropping it ends the request.
pub struct Pass<'a>(&'a QueueCount);

impl Drop for Pass<'_> {
    fn drop(&mut self) {
        self.0 .0.fetch_sub(1, Ordering::SeqCst);
    }
}

impl GateHandle {
    /// Wait until the gate is open and count the request in flight.
    pub async fn enter(&self) -> Pass<'_> {
        let mut spins = 0;
        loop {
            self.count.0.fetch_add(1, Ordering::SeqCst);
            if !self.gate.suspended.load(Ordering::SeqCst) {
                return Pass(&self.count);
            }
            self.count.0.fetch_sub(1, Ordering::SeqCst);
            while self.gate.suspended.load(Ordering::SeqCst) {
                if self.gate.drained.load(Ordering::SeqCst) {
                    std::thread::sleep(Duration::from_millis(1));
                }
                crate::mirror::backoff(&mut spins).await;
            }
        }
    }
}

/// A [`BlockDev`] whose every request passes a [`GateHandle`] first.
pub struct Gated<D: BlockDev> {
    inner: D,
    gate: GateHandle,
}

impl<D: BlockDev> Gated<D> {
    /// Wrap `inner` behind this queue's handle of the volume's gate.
    pub fn new(inner: D, gate: GateHandle) -> Self {
        Gated { inner, gate }
    }

    /// The wrapped device.
    pub fn inner(&self) -> &D {
        &self.inner
    }
}

impl<D: BlockDev> BlockDev for Gated<D> {
    fn size(&self) -> u64 {
        self.inner.size()
    }

    fn limits(&self) -> Limits {
        self.inner.limits()
    }

    async fn read(&self, offset: u64, buf: &mut [u8]) -> IoResult<()> {
        self.read_to(offset, ReadBuf::Mem(buf)).await
    }

    async fn write(&self, offset: u64, buf: &[u8], fua: bool) -> IoResult<()> {
        self.write_from(offset, WriteBuf::Mem(buf), fua).await
    }

    async fn read_to(&self, offset: u64, buf: ReadBuf<'_>) -> IoResult<()> {
        let _pass = self.gate.enter().await;
        self.inner.read_to(offset, buf).await
    }

    async fn write_from(&self, offset: u64, buf: WriteBuf<'_>, fua: bool) -> IoResult<()> {
        let _pass = self.gate.enter().await;
        self.inner.write_from(offset, buf, fua).await
    }

    fn fixed(&self) -> bool {
        self.inner.fixed()
    }

    async fn flush(&self) -> IoResult<()> {
        let _pass = self.gate.enter().await;
        self.inner.flush().await
    }

    async fn discard(&self, offset: u64, len: u64) -> IoResult<()> {
        let _pass = self.gate.enter().await;
        self.inner.discard(offset, len).await
    }

    async fn write_zeroes(&self, offset: u64, len: u64) -> IoResult<()> {
        let _pass = self.gate.enter().await;
        self.inner.write_zeroes(offset, len).await
    }
}
