//! The executor of one ublk queue's tag tasks.
//!
//! A queue has one task per tag, made when the queue starts and never
//! spawned again, so the executor needs no general task queue: each task is a
//! bit in a ready set, its waker sets the bit, and a round polls every task
//! whose bit was set. A wake is one atomic OR; there is no allocation and no
//! lock per wake. The general executor used before (smol's `LocalExecutor`)
//! pushed each wake onto an unbounded queue that allocates a block every few
//! dozen pushes (an allocation per I/O, amortized) and took its
//! notification path; in the benchmark VM's profile (2026-12-02, `perf` with
//! `vm-extra: perf`, 4k random reads at depth 32 on a linear volume) the
//! executor was about a third of the queue thread's user time per request.
//!
//! A round polls each task that was ready when the round began, once. A task
//! woken during the round (a request that yields to wait for another) runs in
//! the next round, after the queue loop has reaped the ring, so a waiter
//! cannot keep the thread from reaping the completions it waits for; the
//! round reports whether some task is ready again, and the queue loop then
//! polls the ring without blocking.
//!
//! Wakers are thread-safe (a wake from another thread sets the bit too), but
//! a thread sleeping in the ring only notices it at its next completion: the
//! request path wakes only from this thread (completions reaped here, or a
//! task waking itself to yield).

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll, Wake, Waker};

/// One bit per task: set when it must be polled.
struct ReadySet {
    words: Box<[AtomicU64]>,
}

impl ReadySet {
    fn new(tasks: usize) -> ReadySet {
        ReadySet {
            words: (0..tasks.div_ceil(64)).map(|_| AtomicU64::new(0)).collect(),
        }
    }

    fn set(&self, task: usize) {
        self.words[task / 64].fetch_or(1 << (task % 64), Ordering::Release);
    }

    /// Take word `w`'s bits, leaving it clear.
    fn take(&self, w: usize) -> u64 {
        self.words[w].swap(0, Ordering::Acquire)
    }

    fn any(&self) -> bool {
        self.words.iter().any(|w| w.load(Ordering::Acquire) != 0)
    }
}

/// The waker of one task.
struct TaskWake {
    ready: Arc<ReadySet>,
    task: usize,
}

impl Wake for TaskWake {
    fn wake(self: Arc<Self>) {
        self.ready.set(self.task);
    }

    fn wake_by_ref(self: &Arc<Self>) {
        self.ready.set(self.task);
    }
}

/// A fixed set of tasks (one per tag), polled in rounds.
pub struct TagTasks<F> {
    /// `None` once the task has finished.
    tasks: Box<[Option<Pin<Box<F>>>]>,
    wakers: Box<[Waker]>,
    ready: Arc<ReadySet>,
    live: usize,
}

impl<F: Future<Output = ()>> TagTasks<F> {
    /// The tasks `futs`, every one ready to be polled.
    pub fn new(futs: impl IntoIterator<Item = F>) -> TagTasks<F> {
        let tasks: Box<[_]> = futs.into_iter().map(|f| Some(Box::pin(f))).collect();
        let ready = Arc::new(ReadySet::new(tasks.len()));
        let wakers = (0..tasks.len())
            .map(|task| {
                ready.set(task);
                Waker::from(Arc::new(TaskWake {
                    ready: ready.clone(),
                    task,
                }))
            })
            .collect();
        let live = tasks.len();
        TagTasks {
            tasks,
            wakers,
            ready,
            live,
        }
    }

    /// Poll, once each, the tasks that are ready now; whether some task is
    /// ready again (woken meanwhile) when the round ends.
    pub fn round(&mut self) -> bool {
        for w in 0..self.ready.words.len() {
            let mut bits = self.ready.take(w);
            while bits != 0 {
                let task = w * 64 + bits.trailing_zeros() as usize;
                bits &= bits - 1;
                // A finished task's waker may still be woken (a stale clone):
                // nothing to poll.
                let Some(fut) = self.tasks[task].as_mut() else {
                    continue;
                };
                let mut cx = Context::from_waker(&self.wakers[task]);
                if let Poll::Ready(()) = fut.as_mut().poll(&mut cx) {
                    self.tasks[task] = None;
                    self.live -= 1;
                }
            }
        }
        self.ready.any()
    }

    /// Whether every task has finished.
    pub fn finished(&self) -> bool {
        self.live == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::cell::Cell;
    use std::rc::Rc;

    /// Pending `n` times, waking itself each time, counting its polls.
    async fn yields(n: usize, polls: Rc<Cell<usize>>) {
        let mut left = n;
        std::future::poll_fn(|cx| {
            polls.set(polls.get() + 1);
            if left == 0 {
                return Poll::Ready(());
            }
            left -= 1;
            cx.waker().wake_by_ref();
            Poll::Pending
        })
        .await
    }

    #[test]
    fn every_task_runs_to_completion_one_poll_per_round() {
        let polls: Vec<_> = (0..130).map(|_| Rc::new(Cell::new(0))).collect();
        let mut t = TagTasks::new(
            polls
                .iter()
                .enumerate()
                .map(|(i, p)| yields(i % 5, p.clone())),
        );
        let mut rounds = 0;
        while t.round() {
            rounds += 1;
            // Each task was polled once per round it was ready in.
            for (i, p) in polls.iter().enumerate() {
                assert_eq!(p.get(), (rounds).min(i % 5 + 1), "task {i}");
            }
        }
        assert!(t.finished());
        assert_eq!(rounds, 4, "the longest task yields 4 times");
        for (i, p) in polls.iter().enumerate() {
            assert_eq!(p.get(), i % 5 + 1, "task {i}");
        }
    }

    #[test]
    fn a_task_not_woken_is_not_polled() {
        // Pending without waking: only a wake from outside makes it run.
        let polls = Rc::new(Cell::new(0));
        let released = Rc::new(Cell::new(false));
        let (p, r) = (polls.clone(), released.clone());
        let waker = Rc::new(Cell::new(None::<Waker>));
        let w = waker.clone();
        let mut t = TagTasks::new([async move {
            std::future::poll_fn(|cx| {
                p.set(p.get() + 1);
                if r.get() {
                    return Poll::Ready(());
                }
                w.set(Some(cx.waker().clone()));
                Poll::Pending
            })
            .await
        }]);
        assert!(!t.round(), "nothing ready after the first poll");
        for _ in 0..3 {
            assert!(!t.round());
        }
        assert_eq!(polls.get(), 1, "not polled again without a wake");
        assert!(!t.finished());
        released.set(true);
        let woken = waker.take().expect("the task left its waker");
        // Woken from another thread: the bit is set all the same.
        std::thread::spawn(move || woken.wake()).join().unwrap();
        assert!(!t.round());
        assert_eq!(polls.get(), 2);
        assert!(t.finished());
    }

    #[test]
    fn a_stale_wake_of_a_finished_task_is_ignored() {
        let kept = Rc::new(Cell::new(None::<Waker>));
        let k = kept.clone();
        let mut t = TagTasks::new([async move {
            std::future::poll_fn(|cx| {
                k.set(Some(cx.waker().clone()));
                Poll::Ready(())
            })
            .await
        }]);
        assert!(!t.round());
        assert!(t.finished());
        kept.take().unwrap().wake();
        assert!(!t.round(), "the stale bit is consumed, nothing is polled");
        assert!(t.finished());
    }
}
