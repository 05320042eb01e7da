//! In-memory `BlockDev` test double with injectable failures and counters.

use std::cell::{Cell, RefCell};
use std::future::Future;
use std::pin::Pin;
use std::rc::Rc;
use std::task::{Context, Poll};

use tierblk_stack::partition::DEFAULT_LIMITS;
use tierblk_stack::{BlockDev, IoError, IoResult, Limits};

/// When operations fail.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FailMode {
    Never,
    /// Every operation.
    Always,
    /// Operations after the first `n` (counted from when the mode was set).
    AfterOps(u32),
    /// Writes, write-zeroes and discard (reads and flush succeed).
    WritesOnly,
    /// Writes after the first `n` are torn: only their first half (rounded
    /// down to 512 bytes) reaches the medium, then they fail.
    TornWritesAfter(u32),
}

/// Shared in-flight tracker, to observe concurrency across devices.
#[derive(Default)]
pub struct Tracker {
    pub live: Cell<usize>,
    pub max_live: Cell<usize>,
}

pub struct Inner {
    pub data: RefCell<Vec<u8>>,
    mode: Cell<FailMode>,
    since_mode: Cell<u32>,
    pub errno: Cell<i32>,
    pub reads: Cell<u32>,
    pub writes: Cell<u32>,
    pub flushes: Cell<u32>,
    pub failures: Cell<u32>,
    /// Extra scheduling rounds every operation waits (latency).
    pub delay: Cell<u32>,
    pub tracker: Rc<Tracker>,
}

/// A cheap handle; clones share the same storage (like two queues' objects
/// over one disk).
#[derive(Clone)]
pub struct MemDev(pub Rc<Inner>);

/// Pending once (waking itself), so concurrent operations really interleave.
pub struct YieldOnce(pub bool);
impl Future for YieldOnce {
    type Output = ();
    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        if self.0 {
            Poll::Ready(())
        } else {
            self.0 = true;
            cx.waker().wake_by_ref();
            Poll::Pending
        }
    }
}

impl MemDev {
    pub fn new(size: usize) -> Self {
        Self::with_tracker(size, Rc::new(Tracker::default()))
    }

    pub fn with_tracker(size: usize, tracker: Rc<Tracker>) -> Self {
        MemDev(Rc::new(Inner {
            data: RefCell::new(vec![0; size]),
            mode: Cell::new(FailMode::Never),
            since_mode: Cell::new(0),
            errno: Cell::new(libc::EIO),
            reads: Cell::new(0),
            writes: Cell::new(0),
            flushes: Cell::new(0),
            failures: Cell::new(0),
            delay: Cell::new(0),
            tracker,
        }))
    }

    pub fn set_fail(&self, mode: FailMode) {
        self.0.mode.set(mode);
        self.0.since_mode.set(0);
    }

    /// Make every operation take `rounds` extra scheduling rounds, so that
    /// this device completes after faster ones (out-of-order completion).
    pub fn set_delay(&self, rounds: u32) {
        self.0.delay.set(rounds);
    }

    pub fn set_errno(&self, errno: i32) {
        self.0.errno.set(errno);
    }

    pub fn reads(&self) -> u32 {
        self.0.reads.get()
    }
    pub fn writes(&self) -> u32 {
        self.0.writes.get()
    }
    pub fn flushes(&self) -> u32 {
        self.0.flushes.get()
    }
    pub fn failures(&self) -> u32 {
        self.0.failures.get()
    }

    pub fn bytes(&self, off: u64, len: u64) -> Vec<u8> {
        self.0.data.borrow()[off as usize..(off + len) as usize].to_vec()
    }

    pub fn contents(&self) -> Vec<u8> {
        self.0.data.borrow().clone()
    }

    /// Decide whether this op fails; counts it.
    fn check(&self, op: &'static str, write_like: bool, off: u64, len: u64) -> IoResult<()> {
        let i = &self.0;
        let n = i.since_mode.get();
        i.since_mode.set(n + 1);
        let fail = match i.mode.get() {
            FailMode::Never => false,
            FailMode::Always => true,
            FailMode::AfterOps(k) => n >= k,
            FailMode::WritesOnly => write_like,
            // Torn writes are handled by `write` itself.
            FailMode::TornWritesAfter(_) => false,
        };
        if fail {
            i.failures.set(i.failures.get() + 1);
            return Err(IoError::new(i.errno.get(), op, off, len));
        }
        let size = i.data.borrow().len() as u64;
        match off.checked_add(len) {
            Some(end) if end <= size => Ok(()),
            _ => Err(IoError::out_of_range(op, off, len)),
        }
    }

    async fn op<T>(&self, f: impl FnOnce() -> IoResult<T>) -> IoResult<T> {
        let t = &self.0.tracker;
        t.live.set(t.live.get() + 1);
        t.max_live.set(t.max_live.get().max(t.live.get()));
        for _ in 0..=self.0.delay.get() {
            YieldOnce(false).await;
        }
        t.live.set(t.live.get() - 1);
        f()
    }
}

impl BlockDev for MemDev {
    fn size(&self) -> u64 {
        self.0.data.borrow().len() as u64
    }
    fn limits(&self) -> Limits {
        DEFAULT_LIMITS
    }
    async fn read(&self, offset: u64, buf: &mut [u8]) -> IoResult<()> {
        self.0.reads.set(self.0.reads.get() + 1);
        self.op(|| {
            self.check("read", false, offset, buf.len() as u64)?;
            let o = offset as usize;
            buf.copy_from_slice(&self.0.data.borrow()[o..o + buf.len()]);
            Ok(())
        })
        .await
    }
    async fn write(&self, offset: u64, buf: &[u8], _fua: bool) -> IoResult<()> {
        self.0.writes.set(self.0.writes.get() + 1);
        self.op(|| {
            self.check("write", true, offset, buf.len() as u64)?;
            let o = offset as usize;
            if let FailMode::TornWritesAfter(k) = self.0.mode.get() {
                if self.0.since_mode.get() > k {
                    let half = buf.len() / 2 / 512 * 512;
                    self.0.data.borrow_mut()[o..o + half].copy_from_slice(&buf[..half]);
                    self.0.failures.set(self.0.failures.get() + 1);
                    return Err(IoError::new(
                        self.0.errno.get(),
                        "write",
                        offset,
                        buf.len() as u64,
                    ));
                }
            }
            self.0.data.borrow_mut()[o..o + buf.len()].copy_from_slice(buf);
            Ok(())
        })
        .await
    }
    async fn flush(&self) -> IoResult<()> {
        self.0.flushes.set(self.0.flushes.get() + 1);
        self.op(|| self.check("flush", false, 0, 0)).await
    }
    async fn discard(&self, offset: u64, len: u64) -> IoResult<()> {
        self.op(|| {
            self.check("discard", true, offset, len)?;
            self.0.data.borrow_mut()[offset as usize..(offset + len) as usize].fill(0);
            Ok(())
        })
        .await
    }
    async fn write_zeroes(&self, offset: u64, len: u64) -> IoResult<()> {
        self.op(|| {
            self.check("write_zeroes", true, offset, len)?;
            self.0.data.borrow_mut()[offset as usize..(offset + len) as usize].fill(0);
            Ok(())
        })
        .await
    }
}
