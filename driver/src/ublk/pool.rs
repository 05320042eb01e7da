//! The request servers of one ublk queue, and how a tag borrows one.
//!
//! A request's future is large: it is the future of the volume's write, an
//! enum over every layout, so sized for the largest (raid10: a stripe's
//! bounded join of mirror writes, each a bounded join of leg writes; tens of
//! KiB, see `size_of_val` in stack/examples/stackbench.rs). One such future per
//! tag, written whole when the tag's task is spawned, costs megabytes per
//! queue even when the volume is idle. So the tags' tasks are small (their
//! ublk commands only) and each request is served by a *server*: a
//! long-lived future ([`server`]) that holds one request future at a time, in
//! a heap slot of this queue's [`Pool`].
//!
//! A server is not a task of its own. The tag that fetched a request borrows
//! an idle server ([`Pool::call`]), puts the request in its mailbox and polls
//! the server itself, in place, until the result is in the mailbox; then it
//! gives the server back. So a request runs in its tag's task from fetch to
//! commit: its completions wake that task, and no other task is woken to
//! hand the request over or the result back. (Servers used to be tasks of
//! their own, two task wakes per request more; measured against rublk in one
//! boot, five rounds each, 4k random reads at depth 32 went from 0.82 to 0.86
//! of rublk's IOPS, writes from 0.86 to 0.87, depth 1 within noise (0.90 to
//! 0.88).)
//!
//! The pool starts with a few servers and gains one when a request arrives
//! and none is idle; a tag holds at most one, so there are never more than
//! tags: memory follows the concurrency the queue has actually seen. Servers
//! are never retired, so growth is a one-time allocation per server, never
//! one per request. A request that waits for a long time (held behind a
//! suspended gate, waiting for a chunk another request copies) holds its
//! server only: every other tag's request still gets one.
//!
//! Everything is single-threaded and preallocated for `depth` tags: the
//! mailboxes, the server slots and the idle list. Per request there is no
//! allocation, no lock and no waker stored.

use std::cell::{Cell, RefCell};
use std::future::{poll_fn, Future};
use std::pin::Pin;
use std::rc::Rc;
use std::task::Poll;

/// What a server does with a request: serve `req`, fetched by `tag`, and
/// return the result to commit for it.
pub trait Serve<Req> {
    fn serve(&self, tag: u16, req: Req) -> impl Future<Output = i32>;
}

/// Where a tag leaves a request for the server it borrowed, and the server
/// leaves the result.
pub struct Mailbox<Req> {
    req: Cell<Option<(u16, Req)>>,
    result: Cell<Option<i32>>,
}

/// A server: serve the requests put in `mail` with `s`, one at a time,
/// forever. Only the tag that borrowed it polls it (with its own waker), so
/// with no request it waits without a waker.
pub async fn server<Req, S: Serve<Req>>(mail: Rc<Mailbox<Req>>, s: S) {
    loop {
        let (tag, req) = poll_fn(|_| match mail.req.take() {
            Some(r) => Poll::Ready(r),
            None => Poll::Pending,
        })
        .await;
        let result = s.serve(tag, req).await;
        mail.result.set(Some(result));
    }
}

/// Where a server lives: pinned on the heap, since a request future in it
/// may borrow itself; empty until the pool grows to it.
type ServerSlot<F> = RefCell<Option<Pin<Box<F>>>>;

/// One queue's servers. `M` makes server `id` over its mailbox (once, when
/// the pool grows to it); `F` is a server's future.
pub struct Pool<Req, F, M> {
    mail: Box<[Rc<Mailbox<Req>>]>,
    /// One slot per possible server (as many as tags); the first `started`
    /// hold a server.
    servers: Box<[ServerSlot<F>]>,
    started: Cell<usize>,
    /// Idle servers, the latest idle last (reused first: its memory is the
    /// warmest). At most one entry per server: never reallocates.
    idle: RefCell<Vec<u16>>,
    make: M,
}

impl<Req, F, M> Pool<Req, F, M>
where
    F: Future<Output = ()>,
    M: Fn(usize, Rc<Mailbox<Req>>) -> F,
{
    /// A pool for `depth` tags, with `initial` servers made already.
    pub fn new(depth: u16, initial: usize, make: M) -> Pool<Req, F, M> {
        let depth = usize::from(depth);
        let pool = Pool {
            mail: (0..depth)
                .map(|_| {
                    Rc::new(Mailbox {
                        req: Cell::new(None),
                        result: Cell::new(None),
                    })
                })
                .collect(),
            servers: (0..depth).map(|_| RefCell::new(None)).collect(),
            started: Cell::new(0),
            idle: RefCell::new(Vec::with_capacity(depth)),
            make,
        };
        for _ in 0..initial.min(depth) {
            let id = pool.grow().expect("fewer servers than tags");
            pool.idle.borrow_mut().push(id as u16);
        }
        pool
    }

    /// Make one more server; its id, or `None` once there is one per tag.
    fn grow(&self) -> Option<usize> {
        let id = self.started.get();
        let slot = self.servers.get(id)?;
        *slot.borrow_mut() = Some(Box::pin((self.make)(id, self.mail[id].clone())));
        self.started.set(id + 1);
        Some(id)
    }

    /// How many servers were made.
    #[cfg(test)]
    pub fn servers(&self) -> usize {
        self.started.get()
    }

    /// How many servers are idle.
    #[cfg(test)]
    pub fn idle(&self) -> usize {
        self.idle.borrow().len()
    }

    /// Serve `tag`'s request on an idle server (a new one if none is idle)
    /// and return its result. Each tag has at most one call in progress, so
    /// a server is always found; `busy` is returned if not (more calls than
    /// tags: a caller's bug).
    ///
    /// If this future is dropped before it resolves, its server is never
    /// reused (its request's future is left as it is, not polled again).
    pub async fn call(&self, tag: u16, req: Req, busy: i32) -> i32 {
        let popped = self.idle.borrow_mut().pop();
        let Some(id) = popped.map(usize::from).or_else(|| self.grow()) else {
            return busy;
        };
        let mail = &self.mail[id];
        mail.req.set(Some((tag, req)));
        let result = poll_fn(|cx| {
            if let Some(server) = self.servers[id].borrow_mut().as_mut() {
                // A server never finishes: its result is in the mailbox.
                let _ = server.as_mut().poll(cx);
            }
            match mail.result.take() {
                Some(r) => Poll::Ready(r),
                None => Poll::Pending,
            }
        })
        .await;
        self.idle.borrow_mut().push(id as u16);
        result
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use smol::LocalExecutor;

    /// Requests are `(value, hold)`: served as `value * 2` after `value % 4`
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

    type Fut = Pin<Box<dyn Future<Output = ()>>>;
    type Make = Box<dyn Fn(usize, Rc<Mailbox<(i32, bool)>>) -> Fut>;
    type TestPool = Pool<(i32, bool), Fut, Make>;

    struct Rig<'a> {
        exe: LocalExecutor<'a>,
        pool: Rc<TestPool>,
        serve: Test,
    }

    impl<'a> Rig<'a> {
        fn new(depth: u16, initial: usize) -> Rig<'a> {
            let serve = Test {
                release: Rc::new(Cell::new(false)),
                in_flight: Rc::new(Cell::new(0)),
                max_in_flight: Rc::new(Cell::new(0)),
            };
            let s = serve.clone();
            let make: Make = Box::new(move |_, mail| Box::pin(server(mail, s.clone())));
            Rig {
                exe: LocalExecutor::new(),
                pool: Rc::new(Pool::new(depth, initial, make)),
                serve,
            }
        }

        /// A tag's task: `n` requests of `value` (tag * 1000 + i), each
        /// checked; `hold` holds its first request until released.
        fn tag(&self, tag: u16, n: i32, hold: bool, done: Rc<Cell<i32>>) -> smol::Task<()> {
            let pool = self.pool.clone();
            self.exe.spawn(async move {
                for i in 0..n {
                    let v = i32::from(tag) * 1000 + i;
                    let r = pool.call(tag, (v, hold && i == 0), -1).await;
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
        assert!(rig.pool.mail.iter().all(|m| {
            let (req, res) = (m.req.take(), m.result.take());
            req.is_none() && res.is_none()
        }));
    }

    #[test]
    fn a_request_is_served_in_its_tags_task() {
        // Requests that complete at once (value % 4 == 0: no yield): a tag
        // serves 100 of them, one after the other, in one poll of its task.
        // A hand-off to another task would take at least two ticks each.
        let rig = Rig::new(4, 1);
        let pool = rig.pool.clone();
        let done = Rc::new(Cell::new(0));
        let d = done.clone();
        let t = rig.exe.spawn(async move {
            for i in 0..100 {
                assert_eq!(pool.call(3, (i * 4, false), -1).await, i * 8);
                d.set(d.get() + 1);
            }
        });
        let ticks = rig.run(|| t.is_finished());
        assert_eq!(done.get(), 100);
        assert_eq!(ticks, 1, "the tag's task alone ran, once");
        assert_eq!(rig.pool.servers(), 1, "one server, reused");
    }

    #[test]
    fn a_request_that_waits_is_woken_in_its_tags_task() {
        // Three yields per request (value % 4 == 3): each wakes the tag's
        // task and no other, so four polls per request.
        let rig = Rig::new(4, 1);
        let pool = rig.pool.clone();
        let t = rig.exe.spawn(async move {
            for i in 0..10 {
                assert_eq!(pool.call(0, (i * 4 + 3, false), -1).await, (i * 4 + 3) * 2);
            }
        });
        assert_eq!(rig.run(|| t.is_finished()), 10 * 3 + 1);
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
        assert_eq!(rig.pool.grow(), None);
    }

    #[test]
    fn a_call_beyond_depth_is_refused_not_queued() {
        let rig = Rig::new(2, 0);
        let done = Rc::new(Cell::new(0));
        let _held: Vec<_> = (0..2).map(|t| rig.tag(t, 1, true, done.clone())).collect();
        rig.run(|| rig.serve.in_flight.get() == 2);
        let pool = rig.pool.clone();
        let extra = rig
            .exe
            .spawn(async move { pool.call(0, (5, false), -16).await });
        rig.run(|| extra.is_finished());
        assert_eq!(smol::block_on(extra), -16);
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
        assert_eq!(rig.pool.servers(), 0);
        let done = Rc::new(Cell::new(0));
        let tasks: Vec<_> = (0..2)
            .map(|t| rig.tag(t, 10, false, done.clone()))
            .collect();
        rig.run(|| tasks.iter().all(|t| t.is_finished()));
        assert_eq!(done.get(), 20);
        assert!((1..=2).contains(&rig.pool.servers()));
    }
}
