//! A fixed set of tasks on one thread, each polled only when it was woken.
//!
//! The request paths run a set of tasks made once and never spawned again:
//! one per tag of a ublk queue (the daemon's queue loop), one per slot of an
//! NBD connection plus its reader and writer (the fabric server). Such a set
//! needs no general task queue: each task is a bit in a [`ReadySet`], its
//! waker sets the bit, and a [round](TaskSet::round) polls every task whose
//! bit was set. A wake is one atomic OR; there is no allocation and no lock
//! per wake. A general executor (smol's `LocalExecutor`, used by the ublk
//! queues before) pushes each wake onto an unbounded queue that allocates a
//! block every few dozen pushes (an allocation per I/O, amortized) and takes
//! its notification path; in the benchmark VM's profile (2026-12-02,
//! docs/benchmarks/profile.md) that executor was about a third of a ublk
//! queue thread's user time per request.
//!
//! A round polls each task that was ready when the round began, once. A task
//! woken during the round (a request that yields to wait for another) runs in
//! the next round, after the caller has reaped its ring, so a waiter cannot
//! keep the thread from reaping the completions it waits for; the round
//! reports whether some task is ready again, and the caller then polls its
//! ring without blocking.
//!
//! The set is driven in one of two ways:
//!
//! * by calling [`TaskSet::round`] from a loop that owns the ring (the ublk
//!   queue: libublk's loop reaps, then runs a round);
//! * as a [`Future`] under another executor (the fabric's
//!   [`LocalRing::block_on`](crate::uring::LocalRing::block_on)): every
//!   task's waker then also wakes that executor, and a poll is one round
//!   that ends the future when every task has.
//!
//! Wakers are thread-safe (a wake from another thread sets the bit), but in
//! the first way a thread sleeping in its ring only notices it at its next
//! completion: the request paths wake only from their own thread
//! (completions reaped there, or a task waking itself or another to yield).

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll, Wake, Waker};

/// One bit per task: set when the task must be polled, cleared when a round
/// takes it. Shared with whoever wakes tasks by number
/// ([`ReadySet::set`]): the fabric's tasks wake one another this way.
pub struct ReadySet {
    words: Box<[AtomicU64]>,
}

impl ReadySet {
    /// A set for `tasks` tasks, none ready.
    pub fn new(tasks: usize) -> ReadySet {
        ReadySet {
            words: (0..tasks.div_ceil(64)).map(|_| AtomicU64::new(0)).collect(),
        }
    }

    /// Mark `task` to be polled in the next round. Out of range: ignored.
    pub fn set(&self, task: usize) {
        if let Some(w) = self.words.get(task / 64) {
            w.fetch_or(1 << (task % 64), Ordering::AcqRel);
        }
    }

    /// Take word `w`'s bits, leaving it clear.
    fn take(&self, w: usize) -> u64 {
        self.words[w].swap(0, Ordering::AcqRel)
    }

    /// Whether some task is marked.
    fn any(&self) -> bool {
        self.words.iter().any(|w| w.load(Ordering::Acquire) != 0)
    }
}

/// The waker of one task: marks it, and wakes the executor driving the set
/// when there is one.
struct TaskWake {
    ready: Arc<ReadySet>,
    task: usize,
    parent: Option<Waker>,
}

impl Wake for TaskWake {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        self.ready.set(self.task);
        if let Some(p) = &self.parent {
            p.wake_by_ref();
        }
    }
}

/// A fixed set of `!Send` tasks polled in rounds. `F` may be one future type
/// (the ublk tags) or `dyn Future` (the fabric's reader, writer and slots).
pub struct TaskSet<F: Future<Output = ()> + ?Sized> {
    /// `None` once the task has finished.
    tasks: Box<[Option<Pin<Box<F>>>]>,
    /// Made once (again only when another executor polls the set): waking
    /// costs no allocation.
    wakers: Box<[Waker]>,
    ready: Arc<ReadySet>,
    live: usize,
    /// The executor polling the set as a future, whose waker the tasks'
    /// wakers also wake.
    parent: Option<Waker>,
}

impl<F: Future<Output = ()>> TaskSet<F> {
    /// The tasks `futs`, every one ready to be polled.
    pub fn new(futs: impl IntoIterator<Item = F>) -> TaskSet<F> {
        let tasks: Vec<_> = futs.into_iter().map(Box::pin).collect();
        let ready = Arc::new(ReadySet::new(tasks.len()));
        TaskSet::with_ready(tasks, ready)
    }
}

impl<F: Future<Output = ()> + ?Sized> TaskSet<F> {
    /// The tasks `tasks`, every one ready to be polled, marked in `ready`
    /// (made beforehand with room for them, so that the tasks can hold it
    /// and wake one another by number).
    pub fn with_ready(tasks: Vec<Pin<Box<F>>>, ready: Arc<ReadySet>) -> TaskSet<F> {
        assert!(
            ready.words.len() >= tasks.len().div_ceil(64),
            "a ready set too small for {} tasks",
            tasks.len()
        );
        let mut set = TaskSet {
            live: tasks.len(),
            tasks: tasks.into_iter().map(Some).collect(),
            wakers: Box::new([]),
            ready,
            parent: None,
        };
        set.make_wakers(None);
        set
    }

    /// Wakers for every task that wake `parent` too, and every live task
    /// marked: polled once more, it registers its new waker.
    fn make_wakers(&mut self, parent: Option<&Waker>) {
        self.wakers = (0..self.tasks.len())
            .map(|task| {
                self.ready.set(task);
                Waker::from(Arc::new(TaskWake {
                    ready: self.ready.clone(),
                    task,
                    parent: parent.cloned(),
                }))
            })
            .collect();
        self.parent = parent.cloned();
    }

    /// Poll, once each, the tasks that are ready now; whether some task is
    /// ready again (woken meanwhile) when the round ends.
    pub fn round(&mut self) -> bool {
        for w in 0..self.ready.words.len() {
            let mut bits = self.ready.take(w);
            while bits != 0 {
                let task = w * 64 + bits.trailing_zeros() as usize;
                bits &= bits - 1;
                // A finished task's waker may still be woken (a stale
                // clone), and a shared ready set may be larger: nothing to
                // poll.
                let Some(Some(fut)) = self.tasks.get_mut(task) else {
                    continue;
                };
                let mut cx = Context::from_waker(&self.wakers[task]);
                if fut.as_mut().poll(&mut cx).is_ready() {
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

impl<F: Future<Output = ()> + ?Sized> Future for TaskSet<F> {
    type Output = ();

    /// One round; ready when every task is.
    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        // `TaskSet` is `Unpin` (its tasks are boxed).
        let this = &mut *self;
        if !this
            .parent
            .as_ref()
            .is_some_and(|p| p.will_wake(cx.waker()))
        {
            this.make_wakers(Some(cx.waker()));
        }
        let again = this.round();
        if this.finished() {
            return Poll::Ready(());
        }
        if again {
            // Woken by one another during this round: come back after the
            // executor reaped its ring's completions (no syscall).
            cx.waker().wake_by_ref();
        }
        Poll::Pending
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::cell::Cell;
    use std::rc::Rc;
    use std::sync::atomic::AtomicUsize;

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
        let mut t = TaskSet::new(
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
        let mut t = TaskSet::new([async move {
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
        let mut t = TaskSet::new([async move {
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

    /// Counts the wakes of the executor polling the set.
    #[derive(Default)]
    struct Parent(AtomicUsize);
    impl Wake for Parent {
        fn wake(self: Arc<Self>) {
            self.0.fetch_add(1, Ordering::AcqRel);
        }
    }

    #[test]
    fn as_a_future_wakes_reach_the_parent_and_it_ends_with_its_tasks() {
        let ready = Arc::new(ReadySet::new(70));
        let polls: Rc<Vec<Cell<u32>>> = Rc::new((0..70).map(|_| Cell::new(0)).collect());
        let go = Rc::new(Cell::new(false));
        let tasks: Vec<Pin<Box<dyn Future<Output = ()>>>> = (0..70)
            .map(|t| {
                let polls = polls.clone();
                let go = go.clone();
                Box::pin(std::future::poll_fn(move |_| {
                    polls[t].set(polls[t].get() + 1);
                    if go.get() {
                        Poll::Ready(())
                    } else {
                        Poll::Pending
                    }
                })) as Pin<Box<dyn Future<Output = ()>>>
            })
            .collect();
        let mut set = TaskSet::with_ready(tasks, ready.clone());
        let parent = Arc::new(Parent::default());
        let waker = Waker::from(parent.clone());
        let mut cx = Context::from_waker(&waker);
        assert!(Pin::new(&mut set).poll(&mut cx).is_pending());
        assert!(polls.iter().all(|p| p.get() == 1), "first poll polls all");
        assert_eq!(parent.0.load(Ordering::Acquire), 0, "nothing woke");
        // Task 65's waker, as the ring would wake it: marks it and wakes
        // the parent.
        set.wakers[65].wake_by_ref();
        assert_eq!(parent.0.load(Ordering::Acquire), 1);
        assert!(Pin::new(&mut set).poll(&mut cx).is_pending());
        let counts: Vec<u32> = polls.iter().map(Cell::get).collect();
        assert_eq!(counts[65], 2);
        assert_eq!(counts.iter().sum::<u32>(), 71, "only task 65 polled again");
        // Woken by number (a task waking another) and released: done.
        go.set(true);
        for t in 0..70 {
            ready.set(t);
        }
        assert!(Pin::new(&mut set).poll(&mut cx).is_ready());
    }

    #[test]
    fn a_new_parent_gets_every_task_polled_again() {
        let polls = Rc::new(Cell::new(0));
        let p = polls.clone();
        let mut set = TaskSet::new([std::future::poll_fn(move |_| {
            p.set(p.get() + 1);
            Poll::<()>::Pending
        })]);
        let (a, b) = (Arc::new(Parent::default()), Arc::new(Parent::default()));
        let (wa, wb) = (Waker::from(a.clone()), Waker::from(b.clone()));
        assert!(Pin::new(&mut set)
            .poll(&mut Context::from_waker(&wa))
            .is_pending());
        assert!(Pin::new(&mut set)
            .poll(&mut Context::from_waker(&wa))
            .is_pending());
        assert_eq!(polls.get(), 1, "the same parent: not polled without a wake");
        // Another executor: the task's old waker would wake `a`, so it is
        // polled again to register one that wakes `b`.
        assert!(Pin::new(&mut set)
            .poll(&mut Context::from_waker(&wb))
            .is_pending());
        assert_eq!(polls.get(), 2);
        set.wakers[0].wake_by_ref();
        assert_eq!(b.0.load(Ordering::Acquire), 1);
        assert_eq!(a.0.load(Ordering::Acquire), 0);
    }
}
