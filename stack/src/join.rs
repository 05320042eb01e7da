//! A heapless, bounded join: run up to `N` futures of one type concurrently
//! without allocating.
//!
//! The striping and mirroring objects (spec [074]–[076]) split one host request
//! into pieces (one per chunk, or one per mirror leg). Issuing the pieces one
//! after another would serialize I/O that the members could do in parallel;
//! [`uring::join_all`](crate::uring::join_all) boxes every future and is only a
//! test helper. [`join_bounded`] keeps the in-flight pieces in a fixed array
//! `[Option<F>; N]` that lives inside the caller's future (so on the queue's
//! stack/state machine, not the heap), and refills a slot from the iterator as
//! soon as its piece completes: a request with more pieces than `N` runs as a
//! sliding window of at most `N` pieces.
//!
//! Every future taken from the iterator is driven to completion before
//! [`join_bounded`] resolves, even after an error: the futures may own SQEs that
//! reference the caller's buffer (see the [`Ring`](crate::Ring) contract), so
//! dropping one in flight would be unsound for the kernel's view of memory.

use std::future::{poll_fn, Future};
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
    let mut slots: Pin<&mut [Option<F>; N]> = pin!([const { None }; N]);
    poll_fn(|cx| loop {
        let mut freed = false;
        let mut active = 0;
        for (i, idx) in index.iter_mut().enumerate() {
            // SAFETY: structural pinning of array elements. The array is
            // pinned and never moved; elements are only replaced through
            // `Pin::set`, which drops the old value in place.
            let mut slot = unsafe { slots.as_mut().map_unchecked_mut(|a| &mut a[i]) };
            if slot.is_none() {
                if exhausted {
                    continue;
                }
                match iter.next() {
                    Some((k, f)) => {
                        slot.set(Some(f));
                        *idx = k;
                    }
                    None => {
                        exhausted = true;
                        continue;
                    }
                }
            }
            let fut = slot.as_mut().as_pin_mut().expect("slot filled above");
            match fut.poll(cx) {
                Poll::Ready(out) => {
                    slot.set(None);
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
