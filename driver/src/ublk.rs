//! The ublk frontend: exposes a built volume stack to the host as
//! `/dev/ublkbN` ([092]–[095]: a volume is built offline, then brought online).
//!
//! Each ublk queue gets its own thread (libublk), its own io_uring, and its
//! own instance of the volume's driver stack built over that ring, so the hot
//! path shares nothing between queues: one buffer per tag allocated once, no
//! lock and no allocation per I/O. Once the device has started, the queue
//! threads may run on any CPU the daemon may ([`unpin`]; `--pin-queues`
//! keeps libublk's binding to each hardware queue's CPUs).
//!
//! Each tag has a small task: it fetches a request, serves it on a server it
//! borrows from the queue's pool (the `pool` module: a server is a future in
//! a heap slot that holds one request's future at a time, tens of KiB, sized
//! for the volume's largest layout) by polling that server itself, commits
//! the result and gives the server back. The pool starts with
//! `INITIAL_SERVERS` and gains one when a request finds none idle, up to one
//! per tag, so a queue's memory follows the concurrency it has seen rather
//! than its depth, and a request held for long (a suspended gate) never
//! keeps another tag's request from being served.
//!
//! Devices are created with `UBLK_F_USER_RECOVERY` and `_REISSUE`: when the
//! daemon dies (kill -9, a crash) the kernel keeps `/dev/ublkbN` and holds
//! its I/O (in-flight requests are re-issued later) instead of failing it.
//! The next daemon finds the device by the volume's name and WWN in
//! libublk's JSON ([`orphan_of`]) and recovers it (`START_USER_RECOVERY`,
//! new queues, `END_USER_RECOVERY`): a filesystem mounted on it sees a
//! pause, not an error. A clean stop deletes the device as before.
//!
//! The queue loop is ours rather than libublk's `wait_and_handle_io_events`,
//! and so is its executor ([`TaskSet`], shared with the fabric server: the
//! tag tasks are a fixed set, a wake sets a bit). Between two polls of the
//! ring it runs one round: each task that was woken, once. A request waiting
//! on another (a held request behind a suspended gate, a write waiting for a
//! chunk another request is copying, a write outside a resync window) yields,
//! waking itself; it runs again in the next round, after the ring has been
//! reaped, so it cannot keep the thread from reaping the completions it waits
//! for. While some task is ready the ring is polled without blocking.
//! Otherwise the thread sleeps in the ring. Busy-polling it instead, for 50
//! or 200 µs after the last completion, was measured in the benchmark VM
//! (2026-12-02, linear group): the depth-1 ratios to dm-linear stayed where
//! they were (0.40-0.43) and every target in the VM, the raw disk included,
//! lost a third to two thirds of its IOPS: a spinning vCPU takes host CPU
//! from the emulator's other work.

use crate::stats::{QueueStats, VolumeStats};
use crate::top::{build_once, build_top, TopSlot};
use libublk::ctrl::{UblkCtrl, UblkCtrlBuilder};
use libublk::helpers::IoBuf;
use libublk::io::{with_task_io_ring, with_task_io_ring_mut};
use libublk::io::{UblkDev, UblkQueue};
use libublk::uring_async::{
    run_uring_tasks, ublk_reap_io_events_with_update_queue, ublk_wake_task, uring_poll_io_fn,
    UblkUringOpFuture,
};
use libublk::{BufDesc, UblkError, UblkFlags, UblkUringData};
use std::cell::{Cell, RefCell};
use std::pin::Pin;
use std::rc::Rc;
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::task::{ready, Context, Poll};
use std::thread::JoinHandle;
use std::time::Instant;
use thiserror::Error;
use tierblk_stack::gate::Gate;
use tierblk_stack::tasks::TaskSet;
use tierblk_stack::{BlockDev, Fixed, ReadBuf, Ring, WriteBuf};
use tracing::{debug, error, info, info_span, warn};

mod pool;
use pool::{Mailbox, Pool, Serve};

/// Largest single I/O the kernel will send us (per-tag buffer size).
const IO_BUF_BYTES: u32 = 512 << 10;

/// The device flags of zero copy: the kernel registers each request's pages
/// in the queue ring's buffer table at the tag's index, and the stack names
/// them in `READ_FIXED`/`WRITE_FIXED`; a request whose tree needs its bytes
/// copies them through the tag's buffer by reading or writing `/dev/ublkcN`
/// (user copy). docs/benchmarks/copy.md, *Zero copy in tierblk*.
const ZERO_COPY: u64 = (libublk::sys::UBLK_F_AUTO_BUF_REG | libublk::sys::UBLK_F_USER_COPY) as u64;

/// The copy flags to create a device with: zero copy when it is wanted, the
/// kernel's ublk driver offers both features (`features`, from
/// `UBLK_CMD_GET_FEATURES`; Linux 6.16 on), and the volume's tree can take
/// registered buffers when it comes online (`fixed`). A tree that cannot
/// (a remote leg, which sends the bytes over a socket) would copy every
/// request by user copy, slower than the tags' buffers at 4 KiB (copy.md):
/// such a device copies as before, and so does every device on an older
/// kernel. A zero-copy device whose tree changes online copies per request.
fn zero_copy_flags(wanted: bool, fixed: bool, features: Option<u64>) -> u64 {
    let offered = features.is_some_and(|f| f & ZERO_COPY == ZERO_COPY);
    if wanted && fixed && offered {
        ZERO_COPY
    } else {
        0
    }
}

/// Servers a queue's pool starts with (see `pool`); it gains more, up to one
/// per tag, as its requests' concurrency needs them.
const INITIAL_SERVERS: usize = 2;

/// How long an idle queue waits in the ring before libublk's idle handling.
const IDLE_SECS: u64 = 20;

#[derive(Debug, Error)]
pub enum FrontendError {
    #[error("volume {0}: cannot create ublk device: {1} (is the ublk_drv module loaded? /dev/ublk-control must exist)")]
    Create(String, String),
    #[error("volume {0}: ublk device did not start: {1}")]
    Start(String, String),
    #[error("volume {0}: cannot stop /dev/ublkb{1}: {2}")]
    Stop(String, u32, String),
}

/// What the frontend needs to know to expose a volume.
#[derive(Clone)]
pub struct VolumeSpec {
    pub name: String,
    pub wwn: String,
    /// The volume's tree; every queue builds its own instance of it and
    /// follows its reloads.
    pub top: Arc<TopSlot>,
    /// The volume's suspend/resume gate, shared by its queues.
    pub gate: Arc<Gate>,
    /// The volume's I/O statistics; each queue registers its own counters.
    pub stats: Arc<VolumeStats>,
    pub queues: u16,
    pub depth: u16,
    /// Leave each queue thread on the CPUs the kernel maps to its hardware
    /// queue, as libublk sets it. Off (the default): once the device has
    /// started, every queue thread may run on any CPU the daemon may (see
    /// [`unpin`]).
    pub pin_queues: bool,
    /// Let the tags' I/O buffers be in transparent huge pages, as the host's
    /// policy decides (the default). Off (`--no-huge-buffers`): each buffer
    /// is advised `MADV_NOHUGEPAGE`, resident only in the 4 KiB pages
    /// requests touched (see `serve_queue`).
    pub huge_buffers: bool,
    /// Serve requests with zero copy where the kernel offers it and the
    /// tree can take it (the default; see [`zero_copy_flags`]). Off
    /// (`--no-zero-copy`): every device copies, as on a kernel without it.
    pub zero_copy: bool,
}

/// A volume online as a ublk device; `stop` takes it offline.
pub struct Exposed {
    name: String,
    dev_id: u32,
    thread: Option<JoinHandle<()>>,
}

/// Submits target SQEs on the calling ublk queue thread's own ring.
#[derive(Clone, Copy)]
pub struct UblkRing;

impl Ring for UblkRing {
    fn submit(&self, sqe: io_uring::squeue::Entry) -> impl std::future::Future<Output = i32> {
        Submit::Start(sqe)
    }
}

/// One target SQE on the queue's ring: pushed when first polled, then its
/// completion awaited in libublk's table (`UblkUringOpFuture`, keyed by
/// the SQE's user data).
///
/// Written by hand rather than as an `async fn` over libublk's
/// `ublk_submit_sqe_async`: that future kept the SQE twice, 168 bytes where
/// this one needs 72, and every leaf of a volume's tree holds one
/// submission per I/O in flight. A raid10 write's future holds 32 leaves
/// (a stripe's join of 8 mirror writes of 4 legs each), and the queue's
/// request future is sized for it whatever the layout, so the bytes add up
/// in every request's stack frame and copies (docs/benchmarks/profile.md).
enum Submit {
    Start(io_uring::squeue::Entry),
    Wait(UblkUringOpFuture),
    Done,
}

impl std::future::Future for Submit {
    type Output = i32;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<i32> {
        if let Submit::Start(sqe) = &*self {
            let op = UblkUringOpFuture::new(UblkUringData::Target as u64);
            let sqe = sqe.clone().user_data(op.user_data);
            loop {
                // SAFETY: the SQE's buffers are the caller's, kept alive
                // and in place until this future completes (the `Ring`
                // contract: a submission is driven to completion).
                let pushed = with_task_io_ring_mut(|r| unsafe { r.submission().push(&sqe) });
                if pushed.is_ok() {
                    break;
                }
                // A full submission queue: hand it to the kernel and retry.
                if let Err(e) = with_task_io_ring(|r| r.submit_and_wait(0)) {
                    error!("queue ring: cannot submit a full submission queue: {e}");
                    *self = Submit::Done;
                    return Poll::Ready(-libc::EIO);
                }
            }
            *self = Submit::Wait(op);
        }
        match &mut *self {
            Submit::Wait(op) => {
                let res = ready!(Pin::new(op).poll(cx));
                *self = Submit::Done;
                Poll::Ready(res)
            }
            _ => panic!("ublk submission polled after it completed"),
        }
    }
}

impl Exposed {
    pub fn device(&self) -> String {
        format!("/dev/ublkb{}", self.dev_id)
    }

    pub fn dev_id(&self) -> u32 {
        self.dev_id
    }

    /// Stop the device (the kernel flushes and drains it), wait for the queue
    /// threads, and delete it (libublk deletes a device it added when its
    /// control drops; a recovered one is deleted here).
    pub fn stop(mut self) -> Result<(), FrontendError> {
        self.stop_inner()
    }

    fn stop_inner(&mut self) -> Result<(), FrontendError> {
        let Some(thread) = self.thread.take() else {
            return Ok(());
        };
        let err = |e: UblkError| FrontendError::Stop(self.name.clone(), self.dev_id, e.to_string());
        let ctrl = UblkCtrl::new_simple(self.dev_id as i32).map_err(err)?;
        ctrl.kill_dev().map_err(err)?;
        if thread.join().is_err() {
            error!(volume = %self.name, "ublk device thread panicked");
        }
        if let Ok(c) = UblkCtrl::new_simple(self.dev_id as i32) {
            let _ = c.del_dev();
        }
        info!(volume = %self.name, dev = self.dev_id, "volume offline");
        Ok(())
    }
}

impl Drop for Exposed {
    fn drop(&mut self) {
        if let Err(e) = self.stop_inner() {
            error!("{e}");
        }
    }
}

/// The device a daemon that died left for `volume` (same name and WWN in
/// libublk's JSON), quiesced and waiting for recovery.
pub fn orphan_of(volume: &str, wwn: &str) -> Option<u32> {
    let dir = std::fs::read_dir(crate::udev::RUN_DIR).ok()?;
    dir.flatten().find_map(|e| {
        let name = e.file_name().into_string().ok()?;
        let id: u32 = name.strip_suffix(".json")?.parse().ok()?;
        let json = std::fs::read_to_string(e.path()).ok()?;
        let names = crate::udev::parse(id, &json)?;
        if names.volume != volume || names.wwn != wwn.to_ascii_lowercase() {
            return None;
        }
        let ctrl = UblkCtrl::new_simple(id as i32).ok()?;
        (u32::from(ctrl.dev_info().state) == libublk::sys::UBLK_S_DEV_QUIESCED).then_some(id)
    })
}

/// Create the ublk device for `spec` (or recover the one a dead daemon
/// left), start its queues, and return once the block device serves.
pub fn expose(spec: VolumeSpec) -> Result<Exposed, FrontendError> {
    let (tx, rx) = mpsc::channel::<Result<u32, FrontendError>>();
    let name = spec.name.clone();
    let recover = orphan_of(&spec.name, &spec.wwn);
    if let Some(id) = recover {
        info!(volume = %name, device = %format!("/dev/ublkb{id}"), "recovering the device a previous daemon left");
    }
    let thread = std::thread::Builder::new()
        .name(format!("ublk-{}", spec.name))
        .spawn(move || run_device(spec, recover, tx))
        .map_err(|e| FrontendError::Create(name.clone(), e.to_string()))?;
    match rx.recv() {
        Ok(Ok(dev_id)) => {
            info!(volume = %name, device = %format!("/dev/ublkb{dev_id}"), "volume online");
            Ok(Exposed {
                name,
                dev_id,
                thread: Some(thread),
            })
        }
        Ok(Err(e)) => {
            let _ = thread.join();
            Err(e)
        }
        Err(_) => {
            let _ = thread.join();
            Err(FrontendError::Start(
                name,
                "device thread exited before the device started".into(),
            ))
        }
    }
}

fn run_device(
    spec: VolumeSpec,
    recover: Option<u32>,
    tx: mpsc::Sender<Result<u32, FrontendError>>,
) {
    let span = info_span!("volume", name = %spec.name);
    let _enter = span.enter();
    let (id, dev_flags) = match recover {
        Some(id) => (id as i32, UblkFlags::UBLK_DEV_F_RECOVER_DEV),
        None => (-1, UblkFlags::UBLK_DEV_F_ADD_DEV),
    };
    // Build once here to validate the tree and learn its size before the
    // device exists. Not kept: this thread lives as long as the device, and
    // a tree replaced later (a failed disk left out) must close its ALUs.
    let (size, read_only, fixed) = {
        let (_, first) = spec.top.current();
        match build_once(&first, UblkRing) {
            Ok(v) => (v.size(), first.read_only(), v.fixed()),
            Err(e) => {
                let _ = tx.send(Err(FrontendError::Create(spec.name.clone(), e)));
                return;
            }
        }
    };
    // A recovered device keeps the flags it was created with: libublk reads
    // them back from the kernel, and the queues follow them (`serve_queue`).
    let copy_flags = match recover {
        Some(_) => 0,
        None => zero_copy_flags(spec.zero_copy, fixed, UblkCtrl::get_features()),
    };
    let ctrl = match UblkCtrlBuilder::default()
        .name("tierblk")
        .id(id)
        .nr_queues(spec.queues)
        .depth(spec.depth)
        .io_buf_bytes(IO_BUF_BYTES)
        .ctrl_flags(
            u64::from(libublk::sys::UBLK_F_USER_RECOVERY)
                | u64::from(libublk::sys::UBLK_F_USER_RECOVERY_REISSUE)
                | copy_flags,
        )
        .dev_flags(dev_flags)
        .build()
    {
        Ok(c) => c,
        Err(e) => {
            let _ = tx.send(Err(FrontendError::Create(spec.name.clone(), e.to_string())));
            return;
        }
    };
    if recover.is_some() {
        if let Err(e) = ctrl.start_user_recover() {
            let _ = tx.send(Err(FrontendError::Start(
                spec.name.clone(),
                format!("cannot start recovering the device: {e}"),
            )));
            return;
        }
    }
    let zero_copy = ctrl.dev_info().flags & ZERO_COPY == ZERO_COPY;
    info!(
        zero_copy,
        "ublk device {}: {}",
        ctrl.dev_info().dev_id,
        if zero_copy {
            "zero copy (requests' pages are registered in the queue rings)"
        } else {
            "copying through the tags' buffers"
        }
    );
    let mut attrs = libublk::sys::UBLK_ATTR_VOLATILE_CACHE | libublk::sys::UBLK_ATTR_FUA;
    if read_only {
        attrs |= libublk::sys::UBLK_ATTR_READ_ONLY;
    }
    let json = serde_json::json!({ "tierblk": { "volume": spec.name, "wwn": spec.wwn } });
    let tgt_init = move |dev: &mut UblkDev| {
        let max_sectors = dev.dev_info.max_io_buf_bytes >> 9;
        dev.tgt.dev_size = size;
        dev.tgt.params = libublk::sys::ublk_params {
            types: libublk::sys::UBLK_PARAM_TYPE_BASIC | libublk::sys::UBLK_PARAM_TYPE_DISCARD,
            basic: libublk::sys::ublk_param_basic {
                // A volatile cache makes the kernel send FLUSH and FUA, which
                // we must pass to the ALUs (their caches are volatile too).
                attrs,
                logical_bs_shift: 9,
                physical_bs_shift: 12,
                io_opt_shift: 12,
                io_min_shift: 9,
                max_sectors,
                dev_sectors: size >> 9,
                ..Default::default()
            },
            discard: libublk::sys::ublk_param_discard {
                discard_granularity: 4096,
                max_discard_sectors: u32::MAX >> 9,
                max_write_zeroes_sectors: u32::MAX >> 9,
                max_discard_segments: 1,
                ..Default::default()
            },
            ..Default::default()
        };
        dev.set_target_json(json);
        Ok(())
    };
    let (top, gate, stats) = (spec.top.clone(), spec.gate.clone(), spec.stats.clone());
    let huge_buffers = spec.huge_buffers;
    // Each queue thread's id, recorded before it fetches its first request,
    // so all are here once the device has started (START_DEV waits for every
    // queue's fetches).
    let queue_tids = Arc::new(Mutex::new(Vec::new()));
    let tids = queue_tids.clone();
    let q_fn = move |qid: u16, dev: &UblkDev| {
        // SAFETY: gettid has no preconditions.
        let tid = unsafe { libc::gettid() };
        tids.lock().unwrap_or_else(|p| p.into_inner()).push(tid);
        serve_queue(qid, dev, &top, &gate, &stats, huge_buffers)
    };
    let started = tx.clone();
    let pin_queues = spec.pin_queues;
    let dev_fn = move |ctrl: &UblkCtrl| {
        if !pin_queues {
            unpin(&queue_tids.lock().unwrap_or_else(|p| p.into_inner()));
        }
        let _ = started.send(Ok(ctrl.dev_info().dev_id));
    };
    if let Err(e) = ctrl.run_target(tgt_init, q_fn, dev_fn) {
        let _ = tx.send(Err(FrontendError::Start(spec.name.clone(), e.to_string())));
    }
    // Dropping `ctrl` deletes the device.
}

/// Let the queue threads `tids` run on any CPU this thread may run on.
///
/// libublk binds each queue thread to the CPUs the kernel maps to its
/// hardware queue, and an application's requests go to the hardware queue
/// of the CPU it submits from: bound, the application and the queue thread
/// serving it take turns on one CPU while the others idle. Unbound, the
/// scheduler runs the queue thread beside the application. In the VM rig
/// (2 vCPUs, `scripts/bench`, bound then unbound) a linear volume's ratio to
/// dm-linear went from 0.24 to 0.38 for 4k random reads at depth 1, from
/// 1.10 to 1.50 at depth 32, from 0.44 to 0.59 for 128 KiB sequential reads
/// (docs/benchmarks/README.md). `--pin-queues` keeps the binding, for hosts
/// where the cache locality it buys is worth more.
fn unpin(tids: &[libc::pid_t]) {
    // SAFETY: cpu_set_t is a plain bit array; all zeroes is a valid value.
    let mut set: libc::cpu_set_t = unsafe { std::mem::zeroed() };
    let size = std::mem::size_of::<libc::cpu_set_t>();
    // SAFETY: `set` is a valid, writable cpu_set_t of `size` bytes.
    if unsafe { libc::sched_getaffinity(0, size, &mut set) } != 0 {
        warn!(
            "cannot read the daemon's CPU affinity: {}",
            std::io::Error::last_os_error()
        );
        return;
    }
    for &tid in tids {
        // SAFETY: `set` is a valid cpu_set_t of `size` bytes; `tid` is one of
        // this process's threads (a queue thread that is still serving: the
        // device has just started).
        if unsafe { libc::sched_setaffinity(tid, size, &set) } != 0 {
            warn!(
                tid,
                "cannot unbind a ublk queue thread: {}",
                std::io::Error::last_os_error()
            );
        }
    }
}

fn serve_queue(
    qid: u16,
    dev: &UblkDev,
    top: &Arc<TopSlot>,
    gate: &Arc<Gate>,
    stats: &VolumeStats,
    huge_buffers: bool,
) {
    let q = match UblkQueue::new(qid, dev) {
        Ok(q) => Rc::new(q),
        Err(e) => {
            error!(queue = qid, "cannot set up ublk queue: {e}");
            return;
        }
    };
    // This queue's own instance of the stack, submitting on this queue's ring.
    let vol = match build_top(top, UblkRing, gate) {
        Ok(v) => Rc::new(v),
        Err(e) => {
            error!(queue = qid, "cannot build the volume stack: {e}");
            return;
        }
    };
    let counters = stats.register();
    let zero_copy = dev.dev_info.flags & ZERO_COPY == ZERO_COPY;
    // One buffer per tag, registered with the tag for ublk; the tag's task
    // borrows it for its ublk commands, the server serving the tag's request
    // borrows it (mutably) meanwhile. By default they follow the host's
    // transparent huge page policy, as rublk's do: kept out of huge pages,
    // large sequential reads were about a quarter slower
    // (docs/benchmarks/profile.md, *I/O buffers in huge pages*); the cost,
    // residency in 2 MiB steps, is in docs/ADMIN.md, *ublk I/O buffers and
    // huge pages*, and `--no-huge-buffers` declines it.
    let depth = dev.dev_info.queue_depth;
    let buf_bytes = dev.dev_info.max_io_buf_bytes as usize;
    let bufs: Rc<[RefCell<IoBuf<u8>>]> = (0..depth)
        .map(|_| RefCell::new(IoBuf::<u8>::new(buf_bytes)))
        .collect();
    if !huge_buffers {
        for b in bufs.iter() {
            // SAFETY: the range is this buffer's allocation (IoBuf allocates
            // it page-aligned); the advice changes no content.
            let r = unsafe {
                libc::madvise(
                    b.borrow().as_mut_ptr().cast(),
                    buf_bytes,
                    libc::MADV_NOHUGEPAGE,
                )
            };
            if r != 0 {
                // A kernel without transparent huge pages refuses the
                // advice: nothing to keep the buffers out of.
                warn!(
                    queue = qid,
                    "cannot keep the I/O buffers out of huge pages: {}",
                    std::io::Error::last_os_error()
                );
                break;
            }
        }
    }
    counters.set_buffers(
        bufs.iter()
            .map(|b| (b.borrow().as_ptr() as usize, buf_bytes))
            .collect(),
    );
    let serve = UblkServe {
        vol: vol.clone(),
        bufs: bufs.clone(),
        zero_copy: zero_copy.then(|| ZeroCopy {
            qid,
            copying: Rc::new(Cell::new(false)),
        }),
    };
    let pool = Rc::new(Pool::new(depth, INITIAL_SERVERS, move |id, mail| {
        debug!(queue = qid, servers = id + 1, "request server started");
        pool::server(mail, serve.clone())
    }));
    // The time of the current round, read once per round rather than twice
    // per request (the two reads were about 0.5 µs of a 4k request's 10 µs
    // in user space in the profile VM, docs/benchmarks/profile.md): a
    // request's latency runs from the round that received it to the round
    // that completed it.
    let clock = Cell::new(Instant::now());
    let clock = &clock;
    let tasks = RefCell::new(TaskSet::new(q.tags().map(|tag| {
        let q = q.clone();
        let bufs = bufs.clone();
        let pool = pool.clone();
        let counters = counters.clone();
        async move {
            let ctx = TagCtx {
                stats: &counters,
                clock,
            };
            let buf = (!zero_copy).then(|| &bufs[usize::from(tag)]);
            match tag_task(&q, tag, buf, &*pool, ctx).await {
                Err(UblkError::QueueIsDown) | Ok(()) => {}
                Err(e) => error!(queue = qid, tag, "io task failed: {e}"),
            }
        }
    })));
    smol::block_on(async {
        // Whether the last round left ready tasks: then poll without
        // blocking, so they run again right after the completions are reaped.
        let busy = Cell::new(false);
        let run_ops = || {
            clock.set(Instant::now());
            busy.set(tasks.borrow_mut().round());
        };
        let poll = || async {
            if busy.get() {
                uring_poll_io_fn::<io_uring::squeue::Entry>(&q, None, 0)
            } else {
                let ts = io_uring::types::Timespec::new().sec(IDLE_SECS);
                uring_poll_io_fn::<io_uring::squeue::Entry>(&q, Some(ts), 1)
            }
        };
        let reap = |timed_out| {
            ublk_reap_io_events_with_update_queue(&q, timed_out, None, |cqe| {
                ublk_wake_task(cqe.user_data(), cqe)
            })
        };
        let done = || tasks.borrow().finished();
        if let Err(e) = run_uring_tasks(poll, reap, run_ops, done).await {
            error!(queue = qid, "ublk queue loop failed: {e}");
        }
    });
}

/// One tag's task: fetch a request, serve it on a server borrowed from the
/// queue's pool, commit its result and fetch the next. Small (the request's
/// future is in the server, not here), so a queue holds `depth` of them at
/// little cost. `buf` is the tag's buffer on a copying device, which the
/// kernel copies requests' data through; `None` on a zero-copy device, whose
/// requests' pages the kernel registers at the tag's index instead.
// The buffer's borrow across the ublk commands is the point: the kernel
// owns the buffer meanwhile, and no server borrows it until the tag hands a
// request over.
#[allow(clippy::await_holding_refcell_ref)]
async fn tag_task<F, M>(
    q: &UblkQueue<'_>,
    tag: u16,
    buf: Option<&RefCell<IoBuf<u8>>>,
    pool: &Pool<libublk::sys::ublksrv_io_desc, F, M>,
    ctx: TagCtx<'_>,
) -> Result<(), UblkError>
where
    F: std::future::Future<Output = ()>,
    M: Fn(usize, Rc<Mailbox<libublk::sys::ublksrv_io_desc>>) -> F,
{
    let auto = || {
        BufDesc::AutoReg(libublk::sys::ublk_auto_buf_reg {
            index: tag,
            ..Default::default()
        })
    };
    match buf {
        Some(buf) => {
            let b = buf.borrow();
            q.submit_io_prep_cmd(tag, BufDesc::Slice(b.as_slice()), 0, Some(&b))
                .await?;
        }
        None => {
            q.submit_io_prep_cmd(tag, auto(), 0, None).await?;
        }
    }
    loop {
        let iod = *q.get_iod(tag);
        let started = ctx.clock.get();
        let res = pool.call(tag, iod, -libc::EBUSY).await;
        if let Some(op) = stats_op(iod.op_flags & 0xff) {
            let bytes = u64::from(iod.nr_sectors) << 9;
            let elapsed = ctx.clock.get().saturating_duration_since(started);
            ctx.stats.record(op, bytes, res >= 0, elapsed);
        }
        match buf {
            Some(buf) => {
                let b = buf.borrow();
                q.submit_io_commit_cmd(tag, BufDesc::Slice(b.as_slice()), res)
                    .await?;
            }
            None => {
                q.submit_io_commit_cmd(tag, auto(), res).await?;
            }
        }
    }
}

/// What a tag's task counts its requests with: the queue's statistics, and
/// the time of the queue loop's current round.
#[derive(Clone, Copy)]
struct TagCtx<'a> {
    stats: &'a QueueStats,
    clock: &'a Cell<Instant>,
}

/// What a server of a queue's pool serves requests with: the queue's
/// instance of the volume, the tags' buffers, and on a zero-copy device
/// where the requests' data is.
struct UblkServe<D> {
    vol: Rc<D>,
    bufs: Rc<[RefCell<IoBuf<u8>>]>,
    zero_copy: Option<ZeroCopy>,
}

impl<D> Clone for UblkServe<D> {
    fn clone(&self) -> Self {
        UblkServe {
            vol: self.vol.clone(),
            bufs: self.bufs.clone(),
            zero_copy: self.zero_copy.clone(),
        }
    }
}

/// A zero-copy device's queue: its id (which, with a tag, locates a
/// request's data in `/dev/ublkcN` for user copy), and whether its last
/// read or write was copied, so that the queue logs each change of path
/// once rather than per request.
#[derive(Clone)]
struct ZeroCopy {
    qid: u16,
    copying: Rc<Cell<bool>>,
}

impl<D: BlockDev> Serve<libublk::sys::ublksrv_io_desc> for UblkServe<D> {
    // The server has the tag's buffer to itself while it serves the request.
    #[allow(clippy::await_holding_refcell_ref)]
    async fn serve(&self, tag: u16, iod: libublk::sys::ublksrv_io_desc) -> i32 {
        let Ok(mut buf) = self.bufs[usize::from(tag)].try_borrow_mut() else {
            error!(tag, "the tag's buffer is in use: request failed");
            return -libc::EIO;
        };
        match &self.zero_copy {
            None => serve_one(&*self.vol, &iod, buf.as_mut_slice()).await,
            Some(zc) => serve_zero_copy(&*self.vol, &iod, tag, zc, buf.as_mut_slice()).await,
        }
    }
}

/// Serve one request of a zero-copy device: a read or write in the
/// request's own pages (registered at index `tag`) when the tree can take
/// them; else, or when a changed tree refuses them
/// ([`tierblk_stack::IoError::needs_bytes`]: a leg became remote), through
/// `buf` by user copy, the data moved between `buf` and `/dev/ublkcN` (fixed
/// file 0 of the queue's ring) by one more ring operation.
async fn serve_zero_copy<D: BlockDev>(
    vol: &D,
    iod: &libublk::sys::ublksrv_io_desc,
    tag: u16,
    zc: &ZeroCopy,
    buf: &mut [u8],
) -> i32 {
    use libublk::sys::{UBLK_IO_F_FUA, UBLK_IO_OP_READ, UBLK_IO_OP_WRITE};
    let op = iod.op_flags & 0xff;
    let read = match op {
        UBLK_IO_OP_READ => true,
        UBLK_IO_OP_WRITE => false,
        _ => return serve_one(vol, iod, buf).await,
    };
    let fua = iod.op_flags & UBLK_IO_F_FUA != 0;
    let off = iod.start_sector << 9;
    let len = (iod.nr_sectors as usize) << 9;
    if len > buf.len() {
        return -libc::EINVAL;
    }
    if vol.fixed() {
        let data = Fixed::new(tag, 0, len);
        let r = if read {
            vol.read_to(off, ReadBuf::Fixed(data)).await
        } else {
            vol.write_from(off, WriteBuf::Fixed(data), fua).await
        };
        match r {
            Err(e) if e.is_needs_bytes() => {}
            r => {
                zc.path(false);
                return r.map_or_else(|e| -e.errno(), |()| len as i32);
            }
        }
    }
    zc.path(true);
    let buf = &mut buf[..len];
    let pos = libublk::io::UblkIOCtx::ublk_user_copy_pos(zc.qid, tag, 0);
    let cdev = io_uring::types::Fixed(0);
    if read {
        if let Err(e) = vol.read(off, buf).await {
            return -e.errno();
        }
        let sqe = io_uring::opcode::Write::new(cdev, buf.as_ptr(), len as u32).offset(pos);
        user_copy(UblkRing.submit(sqe.build()).await, len, "read", off)
    } else {
        let sqe = io_uring::opcode::Read::new(cdev, buf.as_mut_ptr(), len as u32).offset(pos);
        let r = user_copy(UblkRing.submit(sqe.build()).await, len, "write", off);
        if r < 0 {
            return r;
        }
        vol.write(off, buf, fua)
            .await
            .map_or_else(|e| -e.errno(), |()| len as i32)
    }
}

/// The ublk result of moving a request's `len` bytes by user copy: `len`,
/// or -errno (a short copy is an I/O error: the request's data is whole).
fn user_copy(res: i32, len: usize, op: &str, off: u64) -> i32 {
    if res >= 0 && res as usize == len {
        return res;
    }
    let err = if res < 0 { -res } else { libc::EIO };
    warn!(
        offset = off,
        len,
        "{op}: user copy of the request's data through /dev/ublkcN: {}",
        std::io::Error::from_raw_os_error(err)
    );
    -err
}

impl ZeroCopy {
    /// Note the path of this request (`copied`), logging a change.
    fn path(&self, copied: bool) {
        if self.copying.replace(copied) != copied {
            info!(
                queue = self.qid,
                "{}",
                if copied {
                    "the volume's tree needs the requests' bytes: copying them (user copy)"
                } else {
                    "serving requests with zero copy"
                }
            );
        }
    }
}

/// How many bytes of `spans` (page-aligned `(address, length)` ranges of
/// this process's tag I/O buffers, [`crate::stats::VolumeStats::buffers`])
/// are resident now: `tierblk stats` reports it, and the memory target counts
/// I/O buffers apart (issue 6). A range no longer mapped (its queue has
/// exited) counts as nothing.
pub fn resident_bytes(spans: &[(usize, usize)]) -> u64 {
    // SAFETY: sysconf reads a constant of the system; no memory is involved.
    let page = match unsafe { libc::sysconf(libc::_SC_PAGESIZE) } {
        p if p > 0 => p as usize,
        _ => 4096,
    };
    let mut vec = Vec::new();
    let mut total = 0u64;
    for &(addr, len) in spans {
        if addr % page != 0 || len == 0 {
            continue;
        }
        vec.resize(len.div_ceil(page), 0u8);
        // SAFETY: mincore reads only the page tables of [addr, addr + len)
        // (never the memory) and writes one byte per page into `vec`, which
        // holds that many; an unmapped range fails with ENOMEM.
        let r = unsafe { libc::mincore(addr as *mut libc::c_void, len, vec.as_mut_ptr()) };
        if r == 0 {
            total += vec.iter().filter(|b| **b & 1 != 0).count() as u64 * page as u64;
        }
    }
    total
}

/// The [`crate::stats::OPS`] index of a ublk operation.
fn stats_op(op: u32) -> Option<usize> {
    use libublk::sys::*;
    match op {
        UBLK_IO_OP_READ => Some(0),
        UBLK_IO_OP_WRITE => Some(1),
        UBLK_IO_OP_FLUSH => Some(2),
        UBLK_IO_OP_DISCARD => Some(3),
        UBLK_IO_OP_WRITE_ZEROES => Some(4),
        _ => None,
    }
}

/// Serve one ublk request on the volume stack; the ublk result is the byte
/// count for reads and writes, 0 for other operations, or -errno.
async fn serve_one<D: BlockDev>(
    vol: &D,
    iod: &libublk::sys::ublksrv_io_desc,
    buf: &mut [u8],
) -> i32 {
    use libublk::sys::*;
    let op = iod.op_flags & 0xff;
    let fua = iod.op_flags & UBLK_IO_F_FUA != 0;
    let off = iod.start_sector << 9;
    let bytes = (iod.nr_sectors as u64) << 9;
    let data_len = bytes as usize;
    let result = match op {
        UBLK_IO_OP_READ | UBLK_IO_OP_WRITE if data_len > buf.len() => return -libc::EINVAL,
        UBLK_IO_OP_READ => vol.read(off, &mut buf[..data_len]).await.map(|_| bytes),
        UBLK_IO_OP_WRITE => vol.write(off, &buf[..data_len], fua).await.map(|_| bytes),
        UBLK_IO_OP_FLUSH => vol.flush().await.map(|_| 0),
        UBLK_IO_OP_DISCARD => vol.discard(off, bytes).await.map(|_| 0),
        UBLK_IO_OP_WRITE_ZEROES => vol.write_zeroes(off, bytes).await.map(|_| 0),
        _ => return -libc::EOPNOTSUPP,
    };
    match result {
        Ok(n) => n as i32,
        Err(e) => -e.errno(),
    }
}

/// Resize live device `dev_id` to `bytes` (UBLK_CMD_UPDATE_SIZE, which the
/// kernel's ublk driver has from Linux 6.16).
pub fn resize(dev_id: u32, bytes: u64) -> Result<(), String> {
    let has = UblkCtrl::get_features()
        .is_some_and(|f| f & u64::from(libublk::sys::UBLK_F_UPDATE_SIZE) != 0);
    if !has {
        return Err(
            "this kernel's ublk driver cannot resize a live device (UBLK_CMD_UPDATE_SIZE needs Linux 6.16)"
                .into(),
        );
    }
    let ctrl = UblkCtrl::new_simple(dev_id as i32).map_err(|e| format!("ublk control: {e}"))?;
    ctrl.update_size(bytes)
        .map(|_| ())
        .map_err(|e| format!("cannot resize /dev/ublkb{dev_id}: {e}"))
}

/// Whether this host can expose volumes at all.
pub fn available() -> bool {
    std::path::Path::new("/dev/ublk-control").exists()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The size of the future `make` would return, without calling it.
    fn future_size<Fut: std::future::Future>(_make: impl FnOnce() -> Fut) -> usize {
        std::mem::size_of::<Fut>()
    }

    // The `panic!()`s only give `future_size`'s closures values of the
    // right types; the closures are never called.
    #[allow(unreachable_code, unused_variables, clippy::diverging_sub_expression)]
    #[test]
    fn request_futures_stay_small() {
        use tierblk_stack::{BlockDev, Leaf, Partition};
        type Served = tierblk_stack::gate::Gated<crate::top::Reloading<UblkRing>>;
        let submit = future_size(|| UblkRing.submit(io_uring::opcode::Nop::new().build()));
        let part = future_size(|| {
            let p: &Partition<UblkRing> = panic!();
            p.write(0, &[], false)
        });
        let leaf = future_size(|| {
            let l: &Leaf<UblkRing> = panic!();
            l.write(0, &[], false)
        });
        let request = future_size(|| {
            let vol: &Served = panic!();
            let iod: &libublk::sys::ublksrv_io_desc = panic!();
            serve_one(vol, iod, &mut [])
        });
        // A zero-copy device's request: the same tree, in the request's own
        // pages or (a tree that needs the bytes) by user copy.
        let zc_request = future_size(|| {
            let vol: &Served = panic!();
            let iod: &libublk::sys::ublksrv_io_desc = panic!();
            let zc: &ZeroCopy = panic!();
            serve_zero_copy(vol, iod, 0, zc, &mut [])
        });
        // The SQE and its completion's key: libublk's async fn was 168.
        assert!(submit <= 80, "ublk submission future: {submit} bytes");
        // A leaf is a partition or a remote reference; the remote request
        // (about 800 bytes) runs in a frame of its own (stack::frames).
        assert!(leaf <= part + 64, "leaf {leaf} bytes, partition {part}");
        // Every request's future is sized for a raid10 write (32 leaf
        // writes): 41,864 bytes before the two changes above, 20,104 after
        // (rustc 1.95); 20,712 with the two buffer forms (memory or a
        // registered buffer, [`tierblk_stack::WriteBuf`]), 20,840 for a
        // zero-copy device's request.
        assert!(request <= 24 << 10, "request future: {request} bytes");
        assert!(
            zc_request <= 24 << 10,
            "zero-copy request future: {zc_request} bytes"
        );
    }

    #[test]
    fn zero_copy_only_when_wanted_offered_and_the_tree_takes_it() {
        let all = Some(u64::MAX);
        assert_eq!(zero_copy_flags(true, true, all), ZERO_COPY);
        // Either feature alone is not enough: without USER_COPY a request
        // whose tree needs the bytes could not be served.
        let auto = u64::from(libublk::sys::UBLK_F_AUTO_BUF_REG);
        let user = u64::from(libublk::sys::UBLK_F_USER_COPY);
        assert_eq!(zero_copy_flags(true, true, Some(auto)), 0);
        assert_eq!(zero_copy_flags(true, true, Some(user)), 0);
        assert_eq!(zero_copy_flags(true, true, Some(auto | user)), ZERO_COPY);
        // No GET_FEATURES (an old kernel), a remote leg, --no-zero-copy.
        assert_eq!(zero_copy_flags(true, true, None), 0);
        assert_eq!(zero_copy_flags(true, false, all), 0);
        assert_eq!(zero_copy_flags(false, true, all), 0);
    }

    #[test]
    fn resident_bytes_counts_the_pages_requests_touched() {
        // Fresh anonymous pages (a reused heap chunk could be resident
        // already), without huge pages, so that each touched page counts
        // alone whatever the host's huge page policy.
        let len = 512 << 10;
        // SAFETY: a new private anonymous mapping; no existing memory changes.
        let p = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                -1,
                0,
            )
        };
        assert_ne!(p, libc::MAP_FAILED);
        // SAFETY: the range is the mapping's; the advice changes no content.
        unsafe { libc::madvise(p, len, libc::MADV_NOHUGEPAGE) };
        let span = [(p as usize, len)];
        assert_eq!(resident_bytes(&span), 0, "nothing touched yet");
        for off in [0, 100 << 10, 300 << 10] {
            // SAFETY: off < len, inside the writable mapping.
            unsafe { p.cast::<u8>().add(off).write(1) };
        }
        assert_eq!(resident_bytes(&span), 3 * 4096, "three pages touched");
        // A range that is not page-aligned is skipped, not mis-read.
        assert_eq!(resident_bytes(&[(p as usize + 1, 4096)]), 0);
        // SAFETY: the mapping is ours and nothing refers to it any more.
        unsafe { libc::munmap(p, len) };
        // Unmapped (its queue gone): nothing.
        assert_eq!(resident_bytes(&span), 0);
    }
}
