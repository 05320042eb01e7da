//! Reused heap frames for futures kept out of their caller's future.
//!
//! An `async fn` that awaits one of several futures is as large as the
//! largest of them, and a tree of objects multiplies that: a leaf is an
//! enum of a local partition and a remote reference ([`Leaf`](crate::Leaf)),
//! a mirror's write joins up to [`MAX_LEGS`](crate::mirror::MAX_LEGS) leaf
//! writes, a stripe's write joins up to [`DEFAULT_WIDTH`](crate::join::DEFAULT_WIDTH)
//! mirror writes. A remote reference's request future (its NBD request and
//! its path failover) is about four times a partition's, so every local
//! leaf in every request paid for the remote arm 32 times over in a raid10
//! write, and the ublk queue's request future, sized for the largest
//! layout, paid it for every request of every volume: in its size, in the
//! copies rustc makes of a future when it starts it, and in the stack frame
//! of the poll that starts it (docs/benchmarks/profile.md).
//!
//! [`Frames::run`] moves a future into a heap frame and returns a small
//! handle that polls it there, so the caller's future holds a pointer
//! instead. The frames are recycled: a frame goes back to its pool when its
//! future completes or its handle is dropped, and the next future takes it,
//! so a pool allocates only while the concurrency it has seen grows (like
//! the ublk queue's request servers), never per I/O in the steady state.
//! A pool belongs to one thread's instance of an object (it is `!Sync`).

use std::alloc::{alloc, dealloc, handle_alloc_error, Layout};
use std::cell::{Cell, RefCell};
use std::future::Future;
use std::marker::PhantomData;
use std::pin::Pin;
use std::ptr::NonNull;
use std::task::{Context, Poll};

/// Alignment of every frame; a future that needs more is refused at
/// compile time.
const FRAME_ALIGN: usize = 64;

/// One heap block of `size` bytes, aligned to [`FRAME_ALIGN`].
struct Frame {
    ptr: NonNull<u8>,
    size: usize,
}

impl Frame {
    fn layout(size: usize) -> Layout {
        Layout::from_size_align(size, FRAME_ALIGN).expect("frame size fits a layout")
    }

    fn new(size: usize) -> Frame {
        let layout = Frame::layout(size);
        // SAFETY: `size` is non-zero (rounded up from at least one byte by
        // the caller), so the layout is valid for `alloc`.
        let p = unsafe { alloc(layout) };
        let ptr = NonNull::new(p).unwrap_or_else(|| handle_alloc_error(layout));
        Frame { ptr, size }
    }
}

impl Drop for Frame {
    fn drop(&mut self) {
        // SAFETY: `ptr` came from `alloc` with this same layout and is
        // freed once, here; whatever future lived in it was dropped first
        // (a frame is only dropped empty, see `InFrame`).
        unsafe { dealloc(self.ptr.as_ptr(), Frame::layout(self.size)) };
    }
}

/// A pool of frames (see the module docs).
#[derive(Default)]
pub struct Frames {
    /// Idle frames, all of `size` bytes.
    free: RefCell<Vec<Frame>>,
    /// Size of the frames the pool keeps: the largest future it has run,
    /// rounded up to [`FRAME_ALIGN`].
    size: Cell<usize>,
    /// Frames allocated so far (the tests check reuse with it).
    allocated: Cell<u64>,
}

impl Frames {
    /// An empty pool; frames are allocated on first use.
    pub fn new() -> Frames {
        Frames::default()
    }

    /// How many frames this pool has allocated in its life.
    pub fn allocated(&self) -> u64 {
        self.allocated.get()
    }

    /// Run `fut` in a frame of this pool: the returned future polls it in
    /// place and gives its output.
    pub fn run<F: Future>(&self, fut: F) -> InFrame<'_, F> {
        const {
            assert!(
                std::mem::align_of::<F>() <= FRAME_ALIGN,
                "future over-aligned for a frame"
            )
        };
        let need = std::mem::size_of::<F>()
            .max(1)
            .next_multiple_of(FRAME_ALIGN);
        let frame = self.take(need);
        let ptr = frame.ptr.cast::<F>();
        // SAFETY: the frame is at least `size_of::<F>()` bytes, aligned for
        // `F` (asserted above), and empty: it is this handle's alone.
        unsafe { ptr.as_ptr().write(fut) };
        InFrame {
            pool: self,
            frame: Some(frame),
            ptr,
            _fut: PhantomData,
        }
    }

    /// An idle frame of at least `need` bytes. A larger need than the
    /// pool's grows every frame from now on: the idle smaller ones are
    /// freed, and busy ones as they come back.
    fn take(&self, need: usize) -> Frame {
        if need > self.size.get() {
            self.size.set(need);
            self.free.borrow_mut().clear();
        }
        match self.free.borrow_mut().pop() {
            Some(f) => f,
            None => {
                self.allocated.set(self.allocated.get() + 1);
                Frame::new(self.size.get())
            }
        }
    }

    fn give_back(&self, frame: Frame) {
        if frame.size == self.size.get() {
            self.free.borrow_mut().push(frame);
        }
    }
}

/// A future running in a frame of a [`Frames`] pool; resolves to its output.
pub struct InFrame<'p, F: Future> {
    pool: &'p Frames,
    /// `Some` while the frame holds the future.
    frame: Option<Frame>,
    ptr: NonNull<F>,
    /// The frame owns an `F` (drop check, variance, auto traits).
    _fut: PhantomData<F>,
}

impl<F: Future> InFrame<'_, F> {
    /// Drop the future in its frame and return the frame to the pool.
    fn finish(&mut self) {
        if let Some(frame) = self.frame.take() {
            // SAFETY: the frame held an `F` written by `run` and not
            // dropped yet (`frame` was `Some`); it is dropped in place, as
            // a pinned value must be, and never touched again.
            unsafe { self.ptr.as_ptr().drop_in_place() };
            self.pool.give_back(frame);
        }
    }
}

// The future never moves: it stays in its heap frame whatever happens to
// the handle (like `Pin<Box<F>>`).
impl<F: Future> Unpin for InFrame<'_, F> {}

impl<F: Future> Future for InFrame<'_, F> {
    type Output = F::Output;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<F::Output> {
        assert!(
            self.frame.is_some(),
            "future in a frame polled after it completed"
        );
        // SAFETY: the frame holds a live `F` (`frame` is `Some`) that is
        // never moved out of it: pinned in place until `finish` drops it.
        let fut = unsafe { Pin::new_unchecked(&mut *self.ptr.as_ptr()) };
        let out = fut.poll(cx);
        if out.is_ready() {
            self.finish();
        }
        out
    }
}

impl<F: Future> Drop for InFrame<'_, F> {
    fn drop(&mut self) {
        self.finish();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::rc::Rc;
    use std::task::Waker;

    /// Pending once, then ready with its payload's last byte; counts drops.
    struct Probe<const N: usize> {
        payload: [u8; N],
        polled: bool,
        drops: Rc<Cell<u32>>,
    }

    impl<const N: usize> Probe<N> {
        fn new(v: u8, drops: &Rc<Cell<u32>>) -> Self {
            Probe {
                payload: [v; N],
                polled: false,
                drops: drops.clone(),
            }
        }
    }

    impl<const N: usize> Future for Probe<N> {
        type Output = u8;
        fn poll(mut self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<u8> {
            if std::mem::replace(&mut self.polled, true) {
                Poll::Ready(self.payload[N - 1])
            } else {
                Poll::Pending
            }
        }
    }

    impl<const N: usize> Drop for Probe<N> {
        fn drop(&mut self) {
            self.drops.set(self.drops.get() + 1);
        }
    }

    fn poll<F: Future + Unpin>(f: &mut F) -> Poll<F::Output> {
        Pin::new(f).poll(&mut Context::from_waker(Waker::noop()))
    }

    #[test]
    fn runs_in_place_and_reuses_frames() {
        let pool = Frames::new();
        let drops = Rc::new(Cell::new(0));
        for round in 0..10u8 {
            let mut a = pool.run(Probe::<300>::new(round, &drops));
            let mut b = pool.run(Probe::<300>::new(round + 100, &drops));
            assert!(poll(&mut a).is_pending());
            assert!(poll(&mut b).is_pending());
            assert_eq!(poll(&mut b), Poll::Ready(round + 100));
            assert_eq!(poll(&mut a), Poll::Ready(round));
            // Completed futures are dropped at once, in their frames.
            assert_eq!(drops.get(), 2 * u32::from(round) + 2);
        }
        // Two in flight at most: two frames, whatever the number of runs.
        assert_eq!(pool.allocated(), 2);
        // The handle stays small whatever the future's size.
        assert!(std::mem::size_of::<InFrame<'_, Probe<300>>>() <= 40);
    }

    #[test]
    fn a_dropped_handle_drops_its_future_and_returns_the_frame() {
        let pool = Frames::new();
        let drops = Rc::new(Cell::new(0));
        let mut a = pool.run(Probe::<64>::new(1, &drops));
        assert!(poll(&mut a).is_pending());
        drop(a);
        assert_eq!(drops.get(), 1, "the future in flight was dropped");
        let mut b = pool.run(Probe::<64>::new(2, &drops));
        assert!(poll(&mut b).is_pending());
        assert_eq!(poll(&mut b), Poll::Ready(2));
        assert_eq!(pool.allocated(), 1, "the frame was reused");
        // Never polled: dropped all the same.
        drop(pool.run(Probe::<64>::new(3, &drops)));
        assert_eq!(drops.get(), 3);
    }

    #[test]
    fn a_larger_future_grows_the_frames() {
        let pool = Frames::new();
        let drops = Rc::new(Cell::new(0));
        let mut small = pool.run(Probe::<100>::new(1, &drops));
        let mut big = pool.run(Probe::<5000>::new(2, &drops));
        assert_eq!(pool.allocated(), 2);
        assert!(poll(&mut small).is_pending());
        assert!(poll(&mut big).is_pending());
        assert_eq!(poll(&mut small), Poll::Ready(1));
        assert_eq!(poll(&mut big), Poll::Ready(2));
        // The small frame was freed on return; the big one serves both.
        for v in 3..6 {
            let mut s = pool.run(Probe::<100>::new(v, &drops));
            let mut b = pool.run(Probe::<5000>::new(v, &drops));
            assert!(poll(&mut s).is_pending() && poll(&mut b).is_pending());
            assert_eq!(
                (poll(&mut s), poll(&mut b)),
                (Poll::Ready(v), Poll::Ready(v))
            );
        }
        assert_eq!(pool.allocated(), 3);
    }
}
