//! A heapless, bounded join: run up to `N` futures of one type concurrently
//! without allocating.
//!
//! The striping and mirroring objects (spec [074]–[076]) split one host request
//! into pieces (one per chunk, or one per mirror leg). Issuing the pieces one
//! after another would serialize I/O that the members could do in parallel;
//! [`uring::join_all`](crate::uring::join_all) boxes every future and is only a
//! test helper. [`join_bounded`] keeps the in-flight pieces in a fixed array of
//! `N` slots that lives inside the caller's future (so on the queue's
//! stack/state machine, not the heap), and refills a slot from the iterator as
//! soon as its piece completes: a request with more pieces than `N` runs as a
//! sliding window of at most `N` pieces.
//!
//! Every future taken from the iterator is driven to completion before
//! [`join_bounded`] resolves, even after an error: the futures may own SQEs that
//! reference the caller's buffer (see the [`Ring`](crate::Ring) contract), so
//! dropping one in flight would be unsound for the kernel's view of memory.

use std::future::{poll_fn, Future};
use std::mem::MaybeUninit;
use std::pin::{pin, Pin};
use std::task::Poll;

/// Default bound used by the striping and mirroring objects: enough to keep
/// several members busy per request, small enough to keep the request future
/// small (it embeds `N` member futures).
pub const DEFAULT_WIDTH: usize = 8;

/// Run the futures produced by `futs`, at most `N` at a time, calling
/// `on_done(index, output)` as each completes (`index` is the future's
/// position in the iterator). Resolves when the iterator is exhausted and every
/// future has completed. No heap allocation.
///
/// The iterator is advanced lazily, only when a slot is free, so it may borrow
/// disjoint pieces of a buffer as it goes.
pub async fn join_bounded<const N: usize, I, F, C>(futs: I, mut on_done: C)
where
    I: IntoIterator<Item = F>,
    F: Future,
    C: FnMut(usize, F::Output),
{
    const { assert!(N > 0, "join_bounded needs at least one slot") };
    let mut iter = futs.into_iter().enumerate();
    let mut exhausted = false;
    // Index (in iterator order) of the future in each slot.
    let mut index = [0usize; N];
    let mut slots = pin!(Slots::<F, N>::new());
    poll_fn(|cx| loop {
        let mut freed = false;
        let mut active = 0;
        for (i, idx) in index.iter_mut().enumerate() {
            if !slots.live[i] {
                if exhausted {
                    continue;
                }
                match iter.next() {
                    Some((k, f)) => {
                        slots.as_mut().put(i, f);
                        *idx = k;
                    }
                    None => {
                        exhausted = true;
                        continue;
                    }
                }
            }
            let fut = slots.as_mut().get(i).expect("slot filled above");
            match fut.poll(cx) {
                Poll::Ready(out) => {
                    slots.as_mut().clear(i);
                    on_done(*idx, out);
                    freed = true;
                }
                Poll::Pending => active += 1,
            }
        }
        if active == 0 && exhausted {
            return Poll::Ready(());
        }
        // Loop again only if a slot was freed and more futures may be
        // waiting to start; otherwise every active future has registered its
        // waker.
        if !freed || exhausted {
            return Poll::Pending;
        }
    })
    .await
}

/// The futures in flight: `N` slots that start uninitialized, so that
/// starting a join writes only the occupancy flags. (An `[Option<F>; N]`
/// started as `[const { None }; N]` compiled to a memset of the whole array
/// per join: 7.5 KiB for a stripe's read, 38 KiB for a raid10 write's mirror
/// writes, on every host request; perf in the VM showed libc's memset and
/// memmove taking a tenth of a stripe queue's CPU.)
struct Slots<F, const N: usize> {
    futs: [MaybeUninit<F>; N],
    /// `live[i]`: `futs[i]` holds a future (initialized, pinned).
    live: [bool; N],
}

impl<F, const N: usize> Slots<F, N> {
    fn new() -> Self {
        Slots {
            futs: [const { MaybeUninit::uninit() }; N],
            live: [false; N],
        }
    }

    /// Start `f` in the free slot `i`.
    fn put(self: Pin<&mut Self>, i: usize, f: F) {
        // SAFETY: nothing pinned is moved or overwritten: slot `i` is free
        // (asserted: a future there would be lost without its drop), and
        // `f` is pinned only from here on, in place.
        let this = unsafe { self.get_unchecked_mut() };
        assert!(!this.live[i], "join slot {i} is in use");
        this.futs[i].write(f);
        this.live[i] = true;
    }

    /// The future in slot `i`, if one is there.
    fn get(self: Pin<&mut Self>, i: usize) -> Option<Pin<&mut F>> {
        // SAFETY: structural pinning: a future in a slot is never moved (the
        // slots live in the pinned `Slots` and a future leaves its slot only
        // by `clear` or `drop`, dropped in place); `live[i]` says the slot
        // is initialized.
        unsafe {
            let this = self.get_unchecked_mut();
            this.live[i].then(|| Pin::new_unchecked(this.futs[i].assume_init_mut()))
        }
    }

    /// Drop the future in slot `i` (in place), freeing the slot.
    fn clear(self: Pin<&mut Self>, i: usize) {
        // SAFETY: the slot is marked free before its future is dropped in
        // place, so a panicking drop can leak it but never drop it twice;
        // dropping a pinned value in place keeps the pinning contract.
        unsafe {
            let this = self.get_unchecked_mut();
            if std::mem::replace(&mut this.live[i], false) {
                this.futs[i].assume_init_drop();
            }
        }
    }
}

impl<F, const N: usize> Drop for Slots<F, N> {
    fn drop(&mut self) {
        for i in 0..N {
            if std::mem::replace(&mut self.live[i], false) {
                // SAFETY: `live[i]` said the slot is initialized; dropped in
                // place, as pinning requires.
                unsafe { self.futs[i].assume_init_drop() };
            }
        }
    }
}

/// [`join_bounded`] with [`DEFAULT_WIDTH`] slots.
pub async fn join<I, F, C>(futs: I, on_done: C)
where
    I: IntoIterator<Item = F>,
    F: Future,
    C: FnMut(usize, F::Output),
{
    join_bounded::<DEFAULT_WIDTH, I, F, C>(futs, on_done).await
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::cell::Cell;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;
    use std::task::{Context, Wake, Waker};

    /// Pending `n` times (waking itself each time), then ready with `v`.
    struct Yield {
        left: u32,
        v: usize,
    }

    impl Future for Yield {
        type Output = usize;
        fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<usize> {
            if self.left == 0 {
                Poll::Ready(self.v)
            } else {
                self.left -= 1;
                cx.waker().wake_by_ref();
                Poll::Pending
            }
        }
    }

    struct CountWake(AtomicUsize);
    impl Wake for CountWake {
        fn wake(self: Arc<Self>) {
            self.0.fetch_add(1, Ordering::Relaxed);
        }
    }

    fn run<F: Future>(f: F) -> F::Output {
        let w = Arc::new(CountWake(AtomicUsize::new(0)));
        let waker = Waker::from(w);
        let mut cx = Context::from_waker(&waker);
        let mut f = pin!(f);
        for _ in 0..100_000 {
            if let Poll::Ready(v) = f.as_mut().poll(&mut cx) {
                return v;
            }
        }
        panic!("future did not complete");
    }

    #[test]
    fn runs_all_with_bounded_concurrency_and_reports_indices() {
        let live = Cell::new(0usize);
        let max_live = Cell::new(0usize);
        let mut seen = Vec::new();
        let futs = (0..20usize).map(|i| {
            let (live, max_live) = (&live, &max_live);
            async move {
                live.set(live.get() + 1);
                max_live.set(max_live.get().max(live.get()));
                let v = Yield {
                    left: (i % 5) as u32 + 1,
                    v: i * 10,
                }
                .await;
                live.set(live.get() - 1);
                v
            }
        });
        run(join_bounded::<4, _, _, _>(futs, |i, v| seen.push((i, v))));
        assert_eq!(max_live.get(), 4, "at most N in flight, and N reached");
        seen.sort();
        assert_eq!(seen, (0..20).map(|i| (i, i * 10)).collect::<Vec<_>>());
    }

    /// Counts its drops; pending forever, or (`ready`) ready at once with
    /// the drop count seen when polled.
    struct Tracked<'a> {
        dropped: &'a Cell<usize>,
        ready: bool,
    }
    impl Future for Tracked<'_> {
        type Output = usize;
        fn poll(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<usize> {
            if self.ready {
                Poll::Ready(self.dropped.get())
            } else {
                Poll::Pending
            }
        }
    }
    impl Drop for Tracked<'_> {
        fn drop(&mut self) {
            self.dropped.set(self.dropped.get() + 1);
        }
    }

    #[test]
    fn a_join_dropped_midway_drops_each_started_future_once() {
        let (made, dropped) = (Cell::new(0usize), Cell::new(0usize));
        let futs = (0..10).map(|_| {
            made.set(made.get() + 1);
            Tracked {
                dropped: &dropped,
                ready: false,
            }
        });
        let mut j = Box::pin(join_bounded::<4, _, _, _>(futs, |_, _| {}));
        let waker = Waker::from(Arc::new(CountWake(AtomicUsize::new(0))));
        assert!(j
            .as_mut()
            .poll(&mut Context::from_waker(&waker))
            .is_pending());
        assert_eq!((made.get(), dropped.get()), (4, 0), "4 slots filled");
        drop(j);
        assert_eq!(dropped.get(), 4, "each started future dropped once");
    }

    #[test]
    fn a_completed_future_is_dropped_when_it_completes() {
        let dropped = Cell::new(0usize);
        let futs = (0..5).map(|_| Tracked {
            dropped: &dropped,
            ready: true,
        });
        let mut seen = Vec::new();
        run(join_bounded::<2, _, _, _>(futs, |i, v| seen.push((i, v))));
        // Each output was taken before the next future in its slot started,
        // and its future dropped before `on_done` ran.
        assert_eq!(dropped.get(), 5);
        assert_eq!(seen, vec![(0, 0), (1, 1), (2, 2), (3, 3), (4, 4)]);
    }

    #[test]
    fn empty_and_immediately_ready() {
        let mut n = 0;
        run(join(std::iter::empty::<Yield>(), |_, _| n += 1));
        assert_eq!(n, 0);
        run(join((0..50).map(|v| Yield { left: 0, v }), |i, v| {
            assert_eq!(i, v);
            n += 1
        }));
        assert_eq!(n, 50);
    }

    #[test]
    fn lazy_iterator_borrows_disjoint_pieces() {
        let mut buf = vec![0u8; 100];
        let mut rest: &mut [u8] = &mut buf;
        let mut k = 0u8;
        let pieces = std::iter::from_fn(move || {
            if rest.is_empty() {
                return None;
            }
            let n = rest.len().min(7);
            let (piece, tail) = std::mem::take(&mut rest).split_at_mut(n);
            rest = tail;
            k += 1;
            let tag = k;
            Some(async move {
                Yield { left: 1, v: 0 }.await;
                piece.fill(tag);
            })
        });
        run(join_bounded::<3, _, _, _>(pieces, |_, ()| {}));
        for (i, b) in buf.iter().enumerate() {
            assert_eq!(*b as usize, i / 7 + 1);
        }
    }
}
