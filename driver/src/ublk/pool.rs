//! The handoff, within one ublk queue, between its tags and the tasks that
//! serve their requests.
//!
//! A request's future is large: it is the future of the volume's write, an
//! enum over every layout, so sized for the largest (raid10: a stripe's
//! bounded join of mirror writes, each a bounded join of leg writes; tens of
//! KiB, see `size_of_val` in stack/examples/stackbench.rs). One such future per
//! tag, written whole when the tag's task is spawned, costs megabytes per
//! queue even when the volume is idle. So the tags do not serve their requests
//! themselves: each tag's task only fetches and commits (its ublk commands,
//! with a small future), and hands the request it fetched to this queue's
//! [`Pool`] of *servers*, tasks that each hold one request future
//! ([`server`]). A tag hands its request over with [`Pool::call`] and waits
//! for the result; a server takes the oldest waiting request, serves it and
//! hands the result back.
//!
//! The pool starts with a few servers and gains one when a request arrives,
//! no server is idle and there are fewer servers than tags: memory follows the
//! concurrency the queue has actually seen. Servers are never retired, so
//! growth is a one-time allocation per server, never one per request. A
//! request that waits for a long time (held behind a suspended gate, waiting
//! for a chunk another request copies) occupies its server only: every other
//! tag's request still gets a server, since the pool can grow to one per tag.
//!
//! Everything is single-threaded and preallocated for `depth` tags: the
//! queue of waiting tags, the idle list and every waker slot. Per request
//! there is no allocation and no lock; wakers are cloned only when the task
//! waiting changes.

use std::cell::{Cell, RefCell};
use std::collections::VecDeque;
use std::future::{poll_fn, Future};
use std::rc::Rc;
use std::task::{Context, Poll, Waker};

/// What a server does with a request: serve `req`, fetched by `tag`, and
/// return the result to commit for it.
pub trait Serve<Req> {
    fn serve(&self, tag: u16, req: Req) -> impl Future<Output = i32>;
}

/// Where one tag's request is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum State {
    /// No request handed over.
    Free,
    /// Waiting for a server.
    Queued,
    /// A server is serving it.
    Serving,
    /// Served; the result waits for the tag.
    Done,
}

struct TagSlot<Req> {
    state: Cell<State>,
    req: Cell<Option<Req>>,
    result: Cell<i32>,
    waker: RefCell<Option<Waker>>,
}

struct ServerSlot {
    /// On the idle list: only a request's arrival makes it take one.
    idle: Cell<bool>,
    waker: RefCell<Option<Waker>>,
}

/// One queue's handoff of requests from its tags to its servers.
pub struct Pool<Req> {
    tags: Box<[TagSlot<Req>]>,
    /// One slot per possible server (as many as tags); the first `started`
    /// are in use.
    servers: Box<[ServerSlot]>,
    started: Cell<usize>,
    /// Tags whose request waits for a server, oldest first. A tag has at most
    /// one request, so it never holds more than `depth`: it never reallocates.
    pending: RefCell<VecDeque<u16>>,
    /// Idle servers, the latest idle last (reused first: its memory is the
    /// warmest). At most one entry per server: never reallocates.
    idle: RefCell<Vec<u16>>,
}

impl<Req> Pool<Req> {
    /// A pool for `depth` tags, with no server yet ([`Pool::add_server`]).
    pub fn new(depth: u16) -> Pool<Req> {
        let depth = usize::from(depth);
        Pool {
            tags: (0..depth)
                .map(|_| TagSlot {
                    state: Cell::new(State::Free),
                    req: Cell::new(None),
                    result: Cell::new(0),
                    waker: RefCell::new(None),
                })
                .collect(),
            servers: (0..depth)
                .map(|_| ServerSlot {
                    idle: Cell::new(false),
                    waker: RefCell::new(None),
                })
                .collect(),
            started: Cell::new(0),
            pending: RefCell::new(VecDeque::with_capacity(depth)),
            idle: RefCell::new(Vec::with_capacity(depth)),
        }
    }

    /// Count one more server and return its id, which the caller must start
    /// ([`server`]); `None` once there is one server per tag.
    pub fn add_server(&self) -> Option<usize> {
        let n = self.started.get();
        (n < self.servers.len()).then(|| {
            self.started.set(n + 1);
            n
        })
    }

    /// How many servers were started.
    #[cfg(test)]
    pub fn servers(&self) -> usize {
        self.started.get()
    }

    /// How many servers wait for a request.
    #[cfg(test)]
    pub fn idle(&self) -> usize {
        self.idle.borrow().len()
    }

    /// Hand `tag`'s request over and wait for its result. If no server is
    /// idle, `spawn` is called with the id of a new server to start (unless
    /// there is one per tag already). The tag must have no other request in
    /// the pool.
    pub async fn call<S: FnOnce(usize)>(&self, tag: u16, req: Req, spawn: S) -> i32 {
        self.submit(tag, req, spawn);
        poll_fn(|cx| self.poll_result(tag, cx)).await
    }

    fn submit<S: FnOnce(usize)>(&self, tag: u16, req: Req, spawn: S) {
        let t = &self.tags[usize::from(tag)];
        debug_assert_eq!(
            t.state.get(),
            State::Free,
            "tag {tag} has a request in the pool"
        );
        t.req.set(Some(req));
        t.state.set(State::Queued);
        self.pending.borrow_mut().push_back(tag);
        let idle = self.idle.borrow_mut().pop();
        match idle {
            Some(id) => {
                let s = &self.servers[usize::from(id)];
                s.idle.set(false);
                if let Some(w) = &*s.waker.borrow() {
                    w.wake_by_ref();
                }
            }
            None => {
                // Every server is busy (or about to take a request): one more,
                // so that no request waits on another's completion.
                if let Some(id) = self.add_server() {
                    spawn(id);
                }
            }
        }
    }

    fn poll_result(&self, tag: u16, cx: &mut Context<'_>) -> Poll<i32> {
        let t = &self.tags[usize::from(tag)];
        if t.state.get() == State::Done {
            t.state.set(State::Free);
            return Poll::Ready(t.result.get());
        }
        register(&t.waker, cx.waker());
        Poll::Pending
    }

    /// Server `id`'s next request: the oldest waiting, or the next to arrive.
    pub fn next(&self, id: usize) -> impl Future<Output = (u16, Req)> + '_ {
        poll_fn(move |cx| {
            let s = &self.servers[id];
            // A server on the idle list waits for the request that takes it
            // off (polled before, it would take a request while listed idle,
            // and the request that takes it off would find no server).
            if !s.idle.get() {
                if let Some(tag) = self.pending.borrow_mut().pop_front() {
                    let t = &self.tags[usize::from(tag)];
                    t.state.set(State::Serving);
                    let req = t.req.take().expect("a queued tag has its request");
                    return Poll::Ready((tag, req));
                }
                s.idle.set(true);
                self.idle.borrow_mut().push(id as u16);
            }
            register(&s.waker, cx.waker());
            Poll::Pending
        })
    }

    /// `tag`'s request was served with `result`: wake the tag.
    pub fn complete(&self, tag: u16, result: i32) {
        let t = &self.tags[usize::from(tag)];
        debug_assert_eq!(t.state.get(), State::Serving);
        t.result.set(result);
        t.state.set(State::Done);
        if let Some(w) = &*t.waker.borrow() {
            w.wake_by_ref();
        }
    }
}

/// Keep `w` in `slot`, cloning it only if it wakes another task.
fn register(slot: &RefCell<Option<Waker>>, w: &Waker) {
    let mut slot = slot.borrow_mut();
    match &*slot {
        Some(old) if old.will_wake(w) => {}
        _ => *slot = Some(w.clone()),
    }
}

/// Server `id` of `pool`: serve requests with `s`, one at a time, forever.
pub async fn server<Req, S: Serve<Req>>(pool: Rc<Pool<Req>>, id: usize, s: S) {
    loop {
        let (tag, req) = pool.next(id).await;
        let result = s.serve(tag, req).await;
        pool.complete(tag, result);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use smol::LocalExecutor;

    /// Requests are `(value, hold)`: served as `value * 2` after a few
    /// yields, or, with `hold`, only once `release` is set.
    #[derive(Clone)]
    struct Test {
        release: Rc<Cell<bool>>,
        in_flight: Rc<Cell<usize>>,
        max_in_flight: Rc<Cell<usize>>,
    }

    impl Serve<(i32, bool)> for Test {
        async fn serve(&self, _tag: u16, (v, hold): (i32, bool)) -> i32 {
            self.in_flight.set(self.in_flight.get() + 1);
            self.max_in_flight
                .set(self.max_in_flight.get().max(self.in_flight.get()));
            for _ in 0..(v % 4) {
                smol::future::yield_now().await;
            }
            while hold && !self.release.get() {
                smol::future::yield_now().await;
            }
            self.in_flight.set(self.in_flight.get() - 1);
            v * 2
        }
    }

    struct Rig<'a> {
        exe: Rc<LocalExecutor<'a>>,
        pool: Rc<Pool<(i32, bool)>>,
        serve: Test,
    }

    impl<'a> Rig<'a> {
        fn new(depth: u16, initial: usize) -> Rig<'a> {
            let rig = Rig {
                exe: Rc::new(LocalExecutor::new()),
                pool: Rc::new(Pool::new(depth)),
                serve: Test {
                    release: Rc::new(Cell::new(false)),
                    in_flight: Rc::new(Cell::new(0)),
                    max_in_flight: Rc::new(Cell::new(0)),
                },
            };
            for _ in 0..initial {
                let id = rig.pool.add_server().unwrap();
                rig.spawn(id);
            }
            rig
        }

        fn spawn(&self, id: usize) {
            let f = server(self.pool.clone(), id, self.serve.clone());
            self.exe.spawn(f).detach();
        }

        /// A tag's task: `n` requests of `value` (tag * 1000 + i), each
        /// checked; `hold` holds its first request until released.
        fn tag(&self, tag: u16, n: i32, hold: bool, done: Rc<Cell<i32>>) -> smol::Task<()> {
            let (pool, exe) = (self.pool.clone(), Rc::downgrade(&self.exe));
            let serve = self.serve.clone();
            self.exe.spawn(async move {
                for i in 0..n {
                    let v = i32::from(tag) * 1000 + i;
                    let spawn = |id| {
                        let exe = exe.upgrade().unwrap();
                        exe.spawn(server(pool.clone(), id, serve.clone())).detach();
                    };
                    let r = pool.call(tag, (v, hold && i == 0), spawn).await;
                    assert_eq!(r, v * 2, "tag {tag} request {i}");
                    done.set(done.get() + 1);
                }
            })
        }

        /// Tick until `until` or no task can run; the ticks taken.
        fn run(&self, until: impl Fn() -> bool) -> usize {
            let mut n = 0;
            while !until() && self.exe.try_tick() {
                n += 1;
                assert!(n < 1_000_000, "no progress");
            }
            n
        }
    }

    #[test]
    fn requests_complete_with_their_results() {
        let rig = Rig::new(8, 2);
        let done = Rc::new(Cell::new(0));
        let tasks: Vec<_> = (0..8)
            .map(|t| rig.tag(t, 50, false, done.clone()))
            .collect();
        rig.run(|| tasks.iter().all(|t| t.is_finished()));
        assert_eq!(done.get(), 8 * 50);
        assert!(tasks.iter().all(|t| t.is_finished()));
        assert!(rig.pool.servers() <= 8);
        assert_eq!(
            rig.pool.idle(),
            rig.pool.servers(),
            "every server idle at rest"
        );
        assert!(rig.pool.pending.borrow().is_empty());
        assert!(rig.pool.tags.iter().all(|t| t.state.get() == State::Free));
    }

    #[test]
    fn more_concurrent_requests_than_servers_grow_the_pool_up_to_depth() {
        // Eight tags, all holding their first request at once: only servers
        // that grow to one per tag let them all be in flight together.
        let rig = Rig::new(8, 2);
        let done = Rc::new(Cell::new(0));
        let tasks: Vec<_> = (0..8).map(|t| rig.tag(t, 3, true, done.clone())).collect();
        rig.run(|| rig.serve.in_flight.get() == 8);
        assert_eq!(
            rig.serve.in_flight.get(),
            8,
            "every held request is being served"
        );
        assert_eq!(rig.pool.servers(), 8, "grown to one server per tag");
        rig.serve.release.set(true);
        rig.run(|| tasks.iter().all(|t| t.is_finished()));
        assert_eq!(done.get(), 8 * 3);
        assert_eq!(rig.pool.servers(), 8, "never beyond depth, never retired");
        assert_eq!(rig.pool.add_server(), None);
    }

    #[test]
    fn a_held_request_does_not_block_other_tags() {
        let rig = Rig::new(4, 1);
        let (held, others) = (Rc::new(Cell::new(0)), Rc::new(Cell::new(0)));
        let h = rig.tag(0, 1, true, held.clone());
        let tasks: Vec<_> = (1..4)
            .map(|t| rig.tag(t, 100, false, others.clone()))
            .collect();
        rig.run(|| tasks.iter().all(|t| t.is_finished()));
        assert_eq!(
            others.get(),
            3 * 100,
            "the other tags were served meanwhile"
        );
        assert_eq!(held.get(), 0, "the held request still waits");
        assert!(!h.is_finished());
        assert!(
            rig.pool.servers() >= 2,
            "the held request kept its own server"
        );
        rig.serve.release.set(true);
        rig.run(|| h.is_finished());
        assert_eq!(held.get(), 1);
    }

    #[test]
    fn servers_follow_the_concurrency_seen() {
        // One tag at a time: the initial servers suffice.
        let rig = Rig::new(128, 2);
        let done = Rc::new(Cell::new(0));
        let t = rig.tag(5, 200, false, done.clone());
        rig.run(|| t.is_finished());
        assert_eq!(done.get(), 200);
        assert_eq!(rig.pool.servers(), 2, "a serial queue does not grow");
        assert_eq!(rig.serve.max_in_flight.get(), 1);
        // Sixteen tags at once, every request held until all are in flight:
        // exactly sixteen servers, never more (the rest of the depth unused).
        let tasks: Vec<_> = (0..16).map(|t| rig.tag(t, 2, true, done.clone())).collect();
        rig.run(|| rig.serve.in_flight.get() == 16);
        rig.serve.release.set(true);
        rig.run(|| tasks.iter().all(|t| t.is_finished()));
        assert_eq!(rig.pool.servers(), 16);
        assert!(rig.pool.servers() >= rig.serve.max_in_flight.get());
    }

    #[test]
    fn no_server_to_start_with() {
        let rig = Rig::new(2, 0);
        let done = Rc::new(Cell::new(0));
        let tasks: Vec<_> = (0..2)
            .map(|t| rig.tag(t, 10, false, done.clone()))
            .collect();
        rig.run(|| tasks.iter().all(|t| t.is_finished()));
        assert_eq!(done.get(), 20);
        assert!((1..=2).contains(&rig.pool.servers()));
    }
}
