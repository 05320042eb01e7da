//! [`LocalRing`]: a standalone, single-thread [`Ring`] for tests, tools and
//! host benchmarks.
//!
//! It owns an [`io_uring::IoUring`] and a slab of in-flight operations indexed
//! by `user_data`. [`LocalRing::block_on`] is a minimal executor: it polls the
//! future; while the future is ready to make progress it keeps polling (SQEs
//! just accumulate in the SQ); when nothing is ready it submits the whole batch
//! and waits for at least one completion, reaps the CQ and wakes the owners.
//! [`join_all`] / [`LocalRing::run_all`] drive many futures concurrently.
//!
//! The daemon does not use this: on a ublk queue thread the ring is libublk's.

use std::cell::RefCell;
use std::future::Future;
use std::io;
use std::pin::{pin, Pin};
use std::rc::Rc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll, Wake, Waker};

use io_uring::{squeue, IoUring};

use crate::{AlignedBuf, Fixed, Ring};

/// State of one slab slot.
enum Slot {
    Free,
    /// Pushed to the SQ (maybe not yet submitted); waiting for its CQE.
    Waiting(Waker),
    /// CQE reaped; result not yet taken by the future.
    Done(i32),
    /// The future was dropped while in flight; free the slot when the CQE
    /// arrives.
    Orphaned,
}

struct Inner {
    ring: RefCell<IoUring>,
    slots: RefCell<Slab>,
    /// Reused scratch list of wakers to call after releasing borrows.
    wake_scratch: RefCell<Vec<Waker>>,
    /// The ring's registered buffers, kept as long as the ring (declared
    /// after it, so dropped after the ring has unregistered them).
    registered: RefCell<Vec<AlignedBuf>>,
}

#[derive(Default)]
struct Slab {
    slots: Vec<Slot>,
    free: Vec<usize>,
    in_flight: usize,
}

impl Slab {
    fn alloc(&mut self, waker: Waker) -> usize {
        self.in_flight += 1;
        match self.free.pop() {
            Some(i) => {
                self.slots[i] = Slot::Waiting(waker);
                i
            }
            None => {
                self.slots.push(Slot::Waiting(waker));
                self.slots.len() - 1
            }
        }
    }

    fn release(&mut self, i: usize) {
        self.slots[i] = Slot::Free;
        self.free.push(i);
    }
}

/// A single-thread io_uring implementing [`Ring`]. Cloning is cheap and shares
/// the same ring (`Rc`), so a `LocalRing` can be handed to every
/// [`crate::Partition`] of a volume.
#[derive(Clone)]
pub struct LocalRing {
    inner: Rc<Inner>,
}

impl LocalRing {
    /// A ring with `entries` SQ entries.
    ///
    /// The ring runs completions' task work cooperatively
    /// (`IORING_SETUP_COOP_TASKRUN`, as libublk's queue rings do): a
    /// completion that the kernel finishes outside this thread (an io_uring
    /// worker's, an interrupt's) is posted when this thread next enters the
    /// kernel or is next interrupted, instead of being forced in by an IPI.
    /// [`Self::block_on`] enters the kernel whenever it waits. Where the
    /// workers do the I/O (tmpfs' `O_DIRECT`), those IPIs cost more than the
    /// thread's own work: `stackbench` from /dev/shm, 4 KiB at depth 32,
    /// went from about 0.3 M to 0.5 M IOPS without them (2026-12-04). A
    /// kernel without the flag (before 5.19) gets a plain ring.
    pub fn new(entries: u32) -> io::Result<Self> {
        let ring = match IoUring::builder().setup_coop_taskrun().build(entries) {
            Err(e) if e.raw_os_error() == Some(libc::EINVAL) => IoUring::new(entries)?,
            r => r?,
        };
        Ok(LocalRing {
            inner: Rc::new(Inner {
                ring: RefCell::new(ring),
                slots: RefCell::new(Slab::default()),
                wake_scratch: RefCell::new(Vec::new()),
                registered: RefCell::new(Vec::new()),
            }),
        })
    }

    /// Register `bufs` in the ring's buffer table (index = position), once
    /// per ring, and keep them as long as the ring lives. Requests then name
    /// their ranges with [`Fixed`] descriptors (made by [`Self::fixed`]), as a zero-copy ublk request names its pages:
    /// what lets the stack's tests run that path without ublk.
    pub fn register_buffers(&self, bufs: Vec<AlignedBuf>) -> io::Result<()> {
        let iovecs: Vec<libc::iovec> = bufs
            .iter()
            .map(|b| libc::iovec {
                iov_base: b.as_ptr() as *mut libc::c_void,
                iov_len: b.len(),
            })
            .collect();
        let mut registered = self.inner.registered.borrow_mut();
        if !registered.is_empty() {
            return Err(io::Error::new(
                io::ErrorKind::AlreadyExists,
                "the ring's buffers are registered already",
            ));
        }
        // SAFETY: each iovec is one of `bufs`' heap allocations, which move
        // into `registered` below and stay there, unmoved (a Vec move keeps
        // its elements' heap memory in place), until the ring is dropped;
        // the ring is dropped first (field order), which unregisters them.
        unsafe {
            self.inner
                .ring
                .borrow()
                .submitter()
                .register_buffers(&iovecs)?;
        }
        *registered = bufs;
        Ok(())
    }

    /// Bytes `[start, start + len)` of registered buffer `index`, as the
    /// stack names them. Panics if there is no such range.
    pub fn fixed(&self, index: u16, start: usize, len: usize) -> Fixed {
        let registered = self.inner.registered.borrow();
        let buf = &registered[usize::from(index)];
        Fixed::new(index, buf.as_ptr() as u64, buf.len()).slice(start, len)
    }

    /// Registered buffer `index`, to fill it before a write or check it
    /// after a read; never while an operation on it is in flight.
    pub fn registered(&self, index: u16) -> std::cell::RefMut<'_, AlignedBuf> {
        std::cell::RefMut::map(self.inner.registered.borrow_mut(), |r| {
            &mut r[usize::from(index)]
        })
    }

    /// Number of operations submitted and not yet completed.
    pub fn in_flight(&self) -> usize {
        self.inner.slots.borrow().in_flight
    }

    /// Run `f` to completion on this thread, driving the ring.
    ///
    /// # Panics
    ///
    /// If the future is pending while no operation is in flight on this ring
    /// (it waits on something this executor cannot drive), or if the ring
    /// itself fails.
    pub fn block_on<F: Future>(&self, f: F) -> F::Output {
        let mut fut = pin!(f);
        let flag = Arc::new(WakeFlag(AtomicBool::new(true)));
        let waker = Waker::from(flag.clone());
        let mut cx = Context::from_waker(&waker);
        loop {
            if flag.0.swap(false, Ordering::AcqRel) {
                if let Poll::Ready(v) = fut.as_mut().poll(&mut cx) {
                    return v;
                }
                // Woken again while it was polled: a future yielding (a
                // waiter spinning until another thread, or another future of
                // this one, makes progress), so the loop polls again without
                // reaching `submit_and_wait`. What the others queued must
                // reach the kernel now, or the progress it waits for never
                // comes (a host write spinning at a resync window while the
                // write that holds the job back sat in the queue, unsubmitted).
                if flag.0.load(Ordering::Acquire) {
                    self.submit_queued();
                }
                // Completions the kernel already posted (no syscall).
                self.reap();
                continue;
            }
            assert!(
                self.in_flight() > 0,
                "LocalRing::block_on: future pending with no I/O in flight"
            );
            self.submit_and_wait(1)
                .expect("io_uring submit_and_wait failed");
            self.reap();
        }
    }

    /// Run all futures concurrently to completion.
    pub fn run_all<'a>(&self, futs: Vec<Pin<Box<dyn Future<Output = ()> + 'a>>>) {
        self.block_on(join_all(futs));
    }

    /// Hand the kernel the SQEs queued so far, without waiting (one syscall,
    /// none when the queue is empty). A failure is left to the next
    /// `submit_and_wait`, which sees the same queue.
    fn submit_queued(&self) {
        let mut ring = self.inner.ring.borrow_mut();
        if ring.submission().is_empty() {
            return;
        }
        let _ = ring.submit();
    }

    /// Submit queued SQEs and wait for `want` completions, retrying on
    /// `EINTR` and reaping on `EBUSY` (CQ overflow backlog).
    fn submit_and_wait(&self, want: usize) -> io::Result<()> {
        loop {
            let r = self.inner.ring.borrow().submit_and_wait(want);
            match r {
                Ok(_) => return Ok(()),
                Err(e) if e.raw_os_error() == Some(libc::EINTR) => continue,
                Err(e)
                    if e.raw_os_error() == Some(libc::EBUSY)
                        || e.raw_os_error() == Some(libc::EAGAIN) =>
                {
                    if self.reap() == 0 {
                        return Err(e);
                    }
                    return Ok(());
                }
                Err(e) => return Err(e),
            }
        }
    }

    /// Move completed CQEs into their slots and wake their futures. Returns the
    /// number of CQEs reaped.
    fn reap(&self) -> usize {
        let mut wakers = self.inner.wake_scratch.take();
        let mut n = 0;
        {
            let mut ring = self.inner.ring.borrow_mut();
            let mut slab = self.inner.slots.borrow_mut();
            for cqe in ring.completion() {
                n += 1;
                let i = cqe.user_data() as usize;
                match slab.slots.get(i) {
                    Some(Slot::Waiting(_)) => {
                        if let Slot::Waiting(w) =
                            std::mem::replace(&mut slab.slots[i], Slot::Done(cqe.result()))
                        {
                            wakers.push(w);
                        }
                    }
                    Some(Slot::Orphaned) => {
                        slab.release(i);
                        slab.in_flight -= 1;
                    }
                    _ => tracing::error!(user_data = i, "LocalRing: CQE for a slot not in flight"),
                }
            }
        }
        for w in wakers.drain(..) {
            w.wake();
        }
        *self.inner.wake_scratch.borrow_mut() = wakers;
        n
    }

    /// Push `sqe` to the SQ, flushing the SQ to the kernel while it is full.
    fn push(&self, sqe: &squeue::Entry) {
        loop {
            {
                let mut ring = self.inner.ring.borrow_mut();
                // SAFETY: the memory referenced by `sqe` stays valid until its
                // CQE is reaped: that is the documented contract of
                // `Ring::submit` (the caller keeps the buffer alive and drives
                // the future to completion).
                if unsafe { ring.submission().push(sqe) }.is_ok() {
                    return;
                }
            }
            // SQ full: hand the queued entries to the kernel, then retry.
            let r = self.inner.ring.borrow().submit();
            match r {
                Ok(_) => {}
                Err(e) if e.raw_os_error() == Some(libc::EINTR) => {}
                Err(e)
                    if e.raw_os_error() == Some(libc::EBUSY)
                        || e.raw_os_error() == Some(libc::EAGAIN) =>
                {
                    // CQ backlog: make room by reaping (wakes only set flags).
                    if self.reap() == 0 {
                        self.submit_and_wait(1).expect("io_uring submit failed");
                    }
                }
                Err(e) => panic!("io_uring submit failed: {e}"),
            }
        }
    }
}

struct WakeFlag(AtomicBool);

impl Wake for WakeFlag {
    fn wake(self: Arc<Self>) {
        self.0.store(true, Ordering::Release);
    }
    fn wake_by_ref(self: &Arc<Self>) {
        self.0.store(true, Ordering::Release);
    }
}

/// Future returned by [`LocalRing`]'s [`Ring::submit`].
pub struct Submit {
    inner: Rc<Inner>,
    sqe: Option<squeue::Entry>,
    slot: Option<usize>,
}

impl Future for Submit {
    type Output = i32;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<i32> {
        let this = &mut *self;
        if let Some(sqe) = this.sqe.take() {
            let i = this.inner.slots.borrow_mut().alloc(cx.waker().clone());
            this.slot = Some(i);
            LocalRing {
                inner: this.inner.clone(),
            }
            .push(&sqe.user_data(i as u64));
            return Poll::Pending;
        }
        let Some(i) = this.slot else {
            // Polled after completion.
            return Poll::Ready(-libc::EINVAL);
        };
        let mut slab = this.inner.slots.borrow_mut();
        match &mut slab.slots[i] {
            Slot::Done(r) => {
                let r = *r;
                slab.release(i);
                slab.in_flight -= 1;
                this.slot = None;
                Poll::Ready(r)
            }
            Slot::Waiting(w) => {
                if !w.will_wake(cx.waker()) {
                    *w = cx.waker().clone();
                }
                Poll::Pending
            }
            Slot::Free | Slot::Orphaned => unreachable!("LocalRing slot {i} lost"),
        }
    }
}

impl Drop for Submit {
    fn drop(&mut self) {
        if let Some(i) = self.slot {
            let mut slab = self.inner.slots.borrow_mut();
            match slab.slots[i] {
                Slot::Done(_) => {
                    slab.release(i);
                    slab.in_flight -= 1;
                }
                Slot::Waiting(_) => {
                    tracing::error!(
                        user_data = i,
                        "LocalRing: I/O future dropped while in flight"
                    );
                    slab.slots[i] = Slot::Orphaned;
                }
                Slot::Free | Slot::Orphaned => {}
            }
        }
    }
}

impl Ring for LocalRing {
    fn submit(&self, sqe: squeue::Entry) -> impl Future<Output = i32> {
        Submit {
            inner: self.inner.clone(),
            sqe: Some(sqe),
            slot: None,
        }
    }
}

/// Poll all futures concurrently; resolves to their outputs in order once all
/// are done. Each future is boxed once up front (test/tool helper, not for the
/// I/O path).
pub fn join_all<F: Future>(futs: Vec<F>) -> JoinAll<F> {
    JoinAll {
        futs: futs.into_iter().map(|f| Some(Box::pin(f))).collect(),
        outs: Vec::new(),
        remaining: 0,
        started: false,
    }
}

/// Future returned by [`join_all`].
pub struct JoinAll<F: Future> {
    futs: Vec<Option<Pin<Box<F>>>>,
    outs: Vec<Option<F::Output>>,
    remaining: usize,
    started: bool,
}

impl<F: Future> Unpin for JoinAll<F> {}

impl<F: Future> Future for JoinAll<F> {
    type Output = Vec<F::Output>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = &mut *self;
        if !this.started {
            this.started = true;
            this.remaining = this.futs.len();
            this.outs = this.futs.iter().map(|_| None).collect();
        }
        for (slot, out) in this.futs.iter_mut().zip(this.outs.iter_mut()) {
            if let Some(f) = slot {
                if let Poll::Ready(v) = f.as_mut().poll(cx) {
                    *out = Some(v);
                    *slot = None;
                    this.remaining -= 1;
                }
            }
        }
        if this.remaining == 0 {
            Poll::Ready(
                this.outs
                    .drain(..)
                    .map(|o| o.expect("output present"))
                    .collect(),
            )
        } else {
            Poll::Pending
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use io_uring::opcode;

    #[test]
    fn nop_roundtrip() {
        let ring = LocalRing::new(8).unwrap();
        let r = ring.block_on(ring.submit(opcode::Nop::new().build()));
        assert_eq!(r, 0);
        assert_eq!(ring.in_flight(), 0);
    }

    #[test]
    fn a_future_spinning_on_another_does_not_starve_its_submission() {
        // One future submits an op; the other waits for it with the mirror's
        // `backoff` (as a host write waits at a resync window): the loop
        // keeps polling, and the op must still reach the kernel. Bounded
        // spins, so a starved op fails the test instead of hanging it.
        let ring = LocalRing::new(8).unwrap();
        let done = std::cell::Cell::new(false);
        let submitter = async {
            ring.submit(opcode::Nop::new().build()).await;
            done.set(true);
        };
        let waiter = async {
            let mut spins = 0u32;
            while !done.get() {
                assert!(spins < 100_000, "the op was never submitted");
                crate::mirror::backoff(&mut spins).await;
            }
        };
        let futs: Vec<Pin<Box<dyn Future<Output = ()> + '_>>> =
            vec![Box::pin(submitter), Box::pin(waiter)];
        ring.run_all(futs);
        assert!(done.get());
    }

    #[test]
    fn many_concurrent_ops_complete_with_correct_results() {
        // More ops than SQ entries to exercise SQ-full handling, and results
        // that differ per op: write distinct data through a pipe-less file.
        let ring = LocalRing::new(4).unwrap();
        let path = std::env::temp_dir().join(format!("tierblk-uring-{}", std::process::id()));
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(&path)
            .unwrap();
        std::fs::remove_file(&path).unwrap();
        use std::os::fd::AsRawFd;
        let fd = io_uring::types::Fd(file.as_raw_fd());
        const N: usize = 200;
        let bufs: Vec<Vec<u8>> = (0..N).map(|i| vec![i as u8; i + 1]).collect();
        let futs: Vec<_> = bufs
            .iter()
            .enumerate()
            .map(|(i, b)| {
                let ring = ring.clone();
                async move {
                    let sqe = opcode::Write::new(fd, b.as_ptr(), b.len() as u32)
                        .offset((i * 1024) as u64)
                        .build();
                    ring.submit(sqe).await
                }
            })
            .collect();
        let results = ring.block_on(join_all(futs));
        for (i, r) in results.iter().enumerate() {
            assert_eq!(*r, (i + 1) as i32, "op {i}");
        }
        assert_eq!(ring.in_flight(), 0);
        // Read everything back concurrently too.
        let mut rbufs: Vec<Vec<u8>> = (0..N).map(|i| vec![0u8; i + 1]).collect();
        let futs: Vec<_> = rbufs
            .iter_mut()
            .enumerate()
            .map(|(i, b)| {
                let ring = ring.clone();
                async move {
                    let sqe = opcode::Read::new(fd, b.as_mut_ptr(), b.len() as u32)
                        .offset((i * 1024) as u64)
                        .build();
                    ring.submit(sqe).await
                }
            })
            .collect();
        let results = ring.block_on(join_all(futs));
        assert!(results
            .iter()
            .enumerate()
            .all(|(i, &r)| r == (i + 1) as i32));
        assert_eq!(rbufs, bufs);
    }

    #[test]
    fn dropped_in_flight_future_frees_its_slot_on_completion() {
        let ring = LocalRing::new(8).unwrap();
        let waker = Waker::from(Arc::new(WakeFlag(AtomicBool::new(false))));
        let mut cx = Context::from_waker(&waker);
        let mut orphan = Box::pin(ring.submit(opcode::Nop::new().build()));
        assert!(orphan.as_mut().poll(&mut cx).is_pending());
        assert_eq!(ring.in_flight(), 1);
        drop(orphan);
        assert_eq!(ring.in_flight(), 1, "CQE not reaped yet");
        assert_eq!(ring.block_on(ring.submit(opcode::Nop::new().build())), 0);
        assert_eq!(ring.in_flight(), 0);
        // The slot is reused correctly afterwards.
        assert_eq!(ring.block_on(ring.submit(opcode::Nop::new().build())), 0);
    }

    #[test]
    fn errors_are_negative_errno() {
        let ring = LocalRing::new(8).unwrap();
        let mut b = [0u8; 16];
        let sqe = opcode::Read::new(io_uring::types::Fd(-1), b.as_mut_ptr(), 16).build();
        assert_eq!(ring.block_on(ring.submit(sqe)), -libc::EBADF);
    }

    #[test]
    fn run_all_runs_boxed_futures() {
        let ring = LocalRing::new(2).unwrap();
        let count = std::cell::Cell::new(0);
        let futs: Vec<Pin<Box<dyn Future<Output = ()> + '_>>> = (0..10)
            .map(|_| {
                let ring = ring.clone();
                let count = &count;
                Box::pin(async move {
                    for _ in 0..3 {
                        assert_eq!(ring.submit(opcode::Nop::new().build()).await, 0);
                    }
                    count.set(count.get() + 1);
                }) as Pin<Box<dyn Future<Output = ()>>>
            })
            .collect();
        ring.run_all(futs);
        assert_eq!(count.get(), 10);
    }
}
