//! The suspend/resume gate (spec IX, [0171] steps 1504–1508): a suspension
//! waits for every queue's in-flight requests, holds new ones without failing
//! them, and resumes them; a stuck request makes the suspension time out and
//! reopen the gate.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::thread;
use std::time::Duration;

use tierblk_stack::gate::{Gate, GateError, Gated};
use tierblk_stack::uring::LocalRing;
use tierblk_stack::{BlockDev, IoResult, Limits};

/// Counts requests inside it (below the gate) and completed ones; each
/// request takes a few scheduling rounds, or hangs while `stuck` is set.
struct Probe {
    inside: Arc<AtomicU64>,
    done: Arc<AtomicU64>,
    stuck: Arc<AtomicBool>,
}

struct Rounds(u32);
impl Future for Rounds {
    type Output = ();
    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        if self.0 == 0 {
            Poll::Ready(())
        } else {
            self.0 -= 1;
            cx.waker().wake_by_ref();
            Poll::Pending
        }
    }
}

impl Probe {
    async fn op(&self) -> IoResult<()> {
        self.inside.fetch_add(1, Ordering::SeqCst);
        Rounds(20).await;
        while self.stuck.load(Ordering::SeqCst) {
            Rounds(1).await;
            thread::yield_now();
        }
        self.inside.fetch_sub(1, Ordering::SeqCst);
        self.done.fetch_add(1, Ordering::SeqCst);
        Ok(())
    }
}

impl BlockDev for Probe {
    fn size(&self) -> u64 {
        1 << 20
    }
    fn limits(&self) -> Limits {
        tierblk_stack::partition::DEFAULT_LIMITS
    }
    async fn read(&self, _: u64, _: &mut [u8]) -> IoResult<()> {
        self.op().await
    }
    async fn write(&self, _: u64, _: &[u8], _: bool) -> IoResult<()> {
        self.op().await
    }
    async fn flush(&self) -> IoResult<()> {
        self.op().await
    }
    async fn discard(&self, _: u64, _: u64) -> IoResult<()> {
        self.op().await
    }
    async fn write_zeroes(&self, _: u64, _: u64) -> IoResult<()> {
        self.op().await
    }
}

struct Rig {
    gate: Arc<Gate>,
    inside: Arc<AtomicU64>,
    done: Arc<AtomicU64>,
    stuck: Arc<AtomicBool>,
    stop: Arc<AtomicBool>,
    threads: Vec<thread::JoinHandle<u64>>,
}

/// `queues` threads, each its own gated probe, issuing requests until stopped.
fn rig(queues: usize) -> Rig {
    let gate = Gate::new();
    let inside = Arc::new(AtomicU64::new(0));
    let done = Arc::new(AtomicU64::new(0));
    let stuck = Arc::new(AtomicBool::new(false));
    let stop = Arc::new(AtomicBool::new(false));
    let threads = (0..queues)
        .map(|q| {
            let handle = gate.register();
            let probe = Probe {
                inside: inside.clone(),
                done: done.clone(),
                stuck: stuck.clone(),
            };
            let stop = stop.clone();
            thread::spawn(move || {
                let dev = Gated::new(probe, handle);
                let ring = LocalRing::new(4).unwrap();
                let mut n = 0u64;
                let mut buf = [0u8; 512];
                while !stop.load(Ordering::SeqCst) {
                    match (n + q as u64) % 3 {
                        0 => ring.block_on(dev.write(0, &buf, false)).unwrap(),
                        1 => ring.block_on(dev.read(0, &mut buf)).unwrap(),
                        _ => ring.block_on(dev.flush()).unwrap(),
                    }
                    n += 1;
                }
                n
            })
        })
        .collect();
    Rig {
        gate,
        inside,
        done,
        stuck,
        stop,
        threads,
    }
}

impl Rig {
    fn finish(self) -> u64 {
        self.stop.store(true, Ordering::SeqCst);
        self.threads.into_iter().map(|t| t.join().unwrap()).sum()
    }
}

#[test]
fn suspend_drains_holds_and_resumes() {
    let r = rig(3);
    for _ in 0..20 {
        while r.done.load(Ordering::SeqCst) < 10 {
            thread::yield_now();
        }
        let s = r.gate.suspend(Duration::from_secs(10)).unwrap();
        // Drained: nothing below the gate, and nothing gets through.
        assert_eq!(r.inside.load(Ordering::SeqCst), 0);
        let before = r.done.load(Ordering::SeqCst);
        assert_eq!(
            r.gate.suspend(Duration::from_secs(1)).unwrap_err(),
            GateError::Busy
        );
        thread::sleep(Duration::from_millis(20));
        assert_eq!(r.inside.load(Ordering::SeqCst), 0, "a request passed");
        assert_eq!(r.done.load(Ordering::SeqCst), before, "a request passed");
        drop(s);
        // Held requests resume (none failed: the threads unwrap).
        while r.done.load(Ordering::SeqCst) < before + 10 {
            thread::yield_now();
        }
        r.done.store(0, Ordering::SeqCst);
    }
    assert!(r.finish() > 0);
}

#[test]
fn stuck_request_times_out_and_reopens() {
    let r = rig(2);
    while r.done.load(Ordering::SeqCst) < 5 {
        thread::yield_now();
    }
    r.stuck.store(true, Ordering::SeqCst);
    while r.inside.load(Ordering::SeqCst) == 0 {
        thread::yield_now();
    }
    match r.gate.suspend(Duration::from_millis(50)) {
        Err(GateError::Timeout(n, _)) => assert!(n >= 1),
        other => panic!("expected a timeout, got {other:?}"),
    }
    assert!(
        !r.gate.is_suspended(),
        "the gate stays closed after a timeout"
    );
    r.stuck.store(false, Ordering::SeqCst);
    let before = r.done.load(Ordering::SeqCst);
    while r.done.load(Ordering::SeqCst) < before + 10 {
        thread::yield_now();
    }
    // And a later suspension works.
    drop(r.gate.suspend(Duration::from_secs(10)).unwrap());
    r.finish();
}
