//! The transmission phase of one NBD connection, pipelined: requests are read
//! while earlier ones are in flight, up to [`ServerConfig::max_in_flight`] of
//! them run at once on the connection's ring, and each reply is sent as soon
//! as its request completes (NBD lets replies come in any order; the client
//! matches them by cookie).
//!
//! Why: a server that reads one request, runs it and replies before reading
//! the next serves a client with 32 requests outstanding on one connection
//! at depth 1. Pipelined, one connection keeps the export as busy as the
//! client asks, which is what remote references (one connection per ublk
//! queue, many requests in flight on it) and fio/qemu-style clients need.
//!
//! # Shape
//!
//! Everything runs on the connection's thread, inside one
//! [`LocalRing::block_on`]; the socket and the export's I/O share the ring,
//! so whatever several tasks queue in one pass (a `Recv`, reads and writes of
//! the export, a `SendMsg`) goes to the kernel in one `io_uring_enter`. The
//! tasks, built once per connection:
//!
//! * the **reader** receives into a 64 KiB buffer, decodes as many request
//!   headers as it holds, takes a free *slot* for each, copies (or receives
//!   directly) a write's payload into the slot's buffer and hands the slot to
//!   its task. With no free slot it stops reading: the client is held back
//!   by the socket, so a connection never has more than `max_in_flight`
//!   requests accepted;
//! * one **slot task** per slot runs its request on the export and queues
//!   the reply;
//! * the **writer** sends every queued reply in one `SendMsg` (header and
//!   payload of each as consecutive iovecs, resubmitted on short sends), so
//!   replies never interleave on the stream, then frees their slots.
//!
//! A small scheduler ([`TaskSet`]) polls only the tasks that were woken (a bit
//! per task), so an idle slot costs nothing per request.
//!
//! # Memory
//!
//! No allocation and no lock per request: the slot table, each task's
//! future, the receive buffer, the reply queue and the iovec array are made
//! once per connection. The slots' payload buffers
//! ([`ServerConfig::slot_buffer`] bytes each, page-aligned for `O_DIRECT`)
//! are one anonymous mapping per connection ([`AnonMap`]): its pages cost
//! nothing until a request uses them and are never cleared by us, so a
//! connection doing 4 KiB requests only ever touches a few pages per slot.
//! (Heap buffers are zeroed whole when allocated: for the short connections
//! of `nbdcopy` that zeroing took about a third of the server's CPU.) A
//! `READ`/`WRITE` larger than a slot (NBD allows up to
//! [`proto::MAX_REQUEST_LEN`]) uses the connection's one large buffer, grown
//! to the largest such request seen; large requests take turns on it (and
//! the requests behind one wait in the socket meanwhile). So whatever the
//! client sends, a connection's buffers stay within `max_in_flight *
//! slot_buffer` plus `MAX_REQUEST_LEN`. State is in `Cell`s and `RefCell`s:
//! one thread, no `Mutex`.
//!
//! # Ordering
//!
//! * `FLUSH` waits until every write (`WRITE`, `TRIM`, `WRITE_ZEROES`)
//!   received before it has completed, then flushes the export: the protocol
//!   only asks for the writes already replied to, waiting for all earlier
//!   ones is simpler to reason about and costs little.
//! * `DISC`: the reader stops, the requests in flight complete and their
//!   replies are sent, then the connection closes (the protocol requires the
//!   server to finish outstanding requests).
//! * End of stream, a malformed frame, a revoked session, a send failure or
//!   [`NbdServer::shutdown`](super::NbdServer::shutdown): the reader stops
//!   and every request in flight is still driven to completion before the
//!   connection's buffers are released (the kernel may be writing into them:
//!   see the [`Ring`] contract); their replies go out if the socket still
//!   takes them.

use std::cell::{Cell, Ref, RefCell};
use std::collections::VecDeque;
use std::future::{poll_fn, Future};
use std::io;
use std::os::fd::RawFd;
use std::pin::Pin;
use std::ptr::NonNull;
use std::sync::Arc;
use std::task::Poll;

use io_uring::{opcode, types};
use tierblk_stack::tasks::{ReadySet, TaskSet};
use tierblk_stack::uring::LocalRing;
use tierblk_stack::{BlockDev, IoResult, Ring};

use super::{ConnError, Selected, ServerConfig};
use crate::proto::{self, Command, Reject, Request, SimpleReply};

/// Most requests in flight on one connection ([`ServerConfig::max_in_flight`]
/// is clamped to it): the writer sends at most two iovecs per reply in one
/// `sendmsg`, well under the kernel's `UIO_MAXIOV` (1024).
pub const MAX_IN_FLIGHT: usize = 256;

/// Size of the reader's receive buffer: many request headers (and small
/// write payloads) arrive in one `Recv`.
const RECV_BUFFER: usize = 64 * 1024;

/// Socket operations retried after `EINTR`/`EAGAIN` before giving up.
const MAX_RETRIES: u32 = 64;

const READER: usize = 0;
const WRITER: usize = 1;
/// Task index of slot `i`.
const fn slot_task(i: usize) -> usize {
    2 + i
}

/// Run the transmission phase on the socket `fd` (owned by the caller, open
/// until this returns). `early` holds request bytes the client sent right
/// after selecting the export, already read by the negotiation's buffered
/// reader. Returns once the client disconnected or the connection failed,
/// and every request it accepted has completed.
pub(super) fn run<D: BlockDev>(
    fd: RawFd,
    early: &[u8],
    sel: Selected<D>,
    ring: &LocalRing,
    config: &ServerConfig,
) -> Result<(), ConnError> {
    let Selected { export, dev } = sel;
    let n = config.max_in_flight.clamp(1, MAX_IN_FLIGHT);
    let slot_bytes = config
        .slot_buffer
        .clamp(4096, proto::MAX_REQUEST_LEN as usize)
        .next_multiple_of(4096);
    let wake = Arc::new(ReadySet::new(slot_task(n)));
    let total = n
        .checked_mul(slot_bytes)
        .ok_or_else(|| io::Error::from(io::ErrorKind::OutOfMemory))?;
    let mut slot_mem = AnonMap::new(total)?;
    let conn = Conn {
        fd,
        ring,
        dev: &dev,
        name: &export.name,
        size: export.size,
        read_only: export.read_only,
        valid: export.valid.as_deref(),
        slots: slot_mem
            .as_mut_slice()
            .chunks_exact_mut(slot_bytes)
            .map(Slot::new)
            .collect(),
        slot_bytes,
        free: RefCell::new((0..n as u16).rev().collect()),
        ready: RefCell::new(VecDeque::with_capacity(n)),
        large: RefCell::new(AnonMap::empty()),
        large_busy: Cell::new(false),
        next_seq: Cell::new(0),
        flushes_waiting: Cell::new(0),
        reader_done: Cell::new(false),
        broken: Cell::new(false),
        wake: wake.clone(),
        reader_result: RefCell::new(Ok(())),
        writer_result: RefCell::new(Ok(())),
    };
    let mut rbuf = RecvBuf::new(early);
    let conn = &conn;
    let mut tasks: Vec<Pin<Box<dyn Future<Output = ()> + '_>>> = Vec::with_capacity(slot_task(n));
    tasks.push(Box::pin(async move {
        let r = conn.read_requests(&mut rbuf).await;
        *conn.reader_result.borrow_mut() = r;
        conn.reader_done.set(true);
        // Idle slot tasks and the writer end once the reader did.
        for i in 0..slot_task(n) {
            conn.wake(i);
        }
    }));
    tasks.push(Box::pin(async move {
        let r = conn.write_replies().await;
        *conn.writer_result.borrow_mut() = r;
    }));
    for i in 0..n {
        tasks.push(Box::pin(conn.slot_loop(i)));
    }
    ring.block_on(TaskSet::with_ready(tasks, wake));
    // A send failure is the root cause when there was one (the reader then
    // only saw the socket go down); else whatever ended the reader.
    conn.writer_result.replace(Ok(())).map_err(ConnError::Io)?;
    conn.reader_result.replace(Ok(()))
}

/// What a slot's task does with its request.
#[derive(Clone, Copy, Debug)]
enum Job {
    /// Answer with this NBD error (a refused request): nothing to run.
    Refuse(u32),
    /// Execute the checked command.
    Run(Command),
}

/// Life of a slot: `Free` -> `Taken` (by the reader, filling a write's
/// payload) -> `Queued` (handed to its task) -> `Running` -> `Replying` (in
/// the writer's queue or being sent) -> `Free`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum State {
    Free,
    Taken,
    Queued,
    Running,
    Replying,
}

/// One request in flight and the buffers it keeps for the connection's life.
struct Slot<'m> {
    state: Cell<State>,
    job: Cell<Job>,
    cookie: Cell<u64>,
    /// Dispatch order, for flush barriers.
    seq: Cell<u64>,
    /// A write-type request dispatched and not completed yet.
    writing: Cell<bool>,
    /// A flush waiting for earlier writes.
    flush_waiting: Cell<bool>,
    /// The payload lives in the connection's large buffer.
    large: Cell<bool>,
    /// Payload bytes following the reply header.
    reply_len: Cell<usize>,
    io: RefCell<SlotIo<'m>>,
}

/// Reply header and payload buffer of a slot.
struct SlotIo<'m> {
    hdr: [u8; proto::REPLY_LEN],
    /// This slot's part of the connection's mapping.
    data: &'m mut [u8],
}

impl<'m> Slot<'m> {
    fn new(data: &'m mut [u8]) -> Self {
        Slot {
            state: Cell::new(State::Free),
            job: Cell::new(Job::Refuse(0)),
            cookie: Cell::new(0),
            seq: Cell::new(0),
            writing: Cell::new(false),
            flush_waiting: Cell::new(false),
            large: Cell::new(false),
            reply_len: Cell::new(0),
            io: RefCell::new(SlotIo {
                hdr: [0; proto::REPLY_LEN],
                data,
            }),
        }
    }
}

/// State shared by the tasks of one connection.
struct Conn<'a, D> {
    fd: RawFd,
    ring: &'a LocalRing,
    dev: &'a D,
    name: &'a str,
    size: u64,
    read_only: bool,
    valid: Option<&'a (dyn Fn() -> bool + Send + Sync)>,
    slots: Box<[Slot<'a>]>,
    slot_bytes: usize,
    /// Free slots, most recently freed last (its buffer is warm).
    free: RefCell<Vec<u16>>,
    /// Slots whose reply waits for the writer, in completion order.
    ready: RefCell<VecDeque<u16>>,
    /// Payload buffer of requests larger than `slot_bytes`, one at a time.
    large: RefCell<AnonMap>,
    large_busy: Cell<bool>,
    next_seq: Cell<u64>,
    flushes_waiting: Cell<u32>,
    /// The reader takes no more requests: tasks end once idle.
    reader_done: Cell<bool>,
    /// Sending failed: the socket is shut down, replies are dropped.
    broken: Cell<bool>,
    wake: Arc<ReadySet>,
    reader_result: RefCell<Result<(), ConnError>>,
    writer_result: RefCell<io::Result<()>>,
}

impl<D: BlockDev> Conn<'_, D> {
    /// Have `task` polled again. Tasks wake one another only while the
    /// [`TaskSet`] polls them, and it checks the bits again before it
    /// returns: no executor wake-up is needed here.
    fn wake(&self, task: usize) {
        self.wake.set(task);
    }

    /// Slots not free.
    fn outstanding(&self) -> usize {
        self.slots.len() - self.free.borrow().len()
    }

    // ------------------------------------------------------------ reader

    /// Read and dispatch requests until the client disconnects or the
    /// stream cannot go on.
    // Holding a slot's (or the large) buffer borrowed while its payload is
    // received is the point: the slot is `Taken`, nothing else touches it
    // until it is dispatched (the borrow is the runtime check of that).
    #[allow(clippy::await_holding_refcell_ref)]
    async fn read_requests(&self, rb: &mut RecvBuf) -> Result<(), ConnError> {
        let mut hb = [0u8; proto::REQUEST_LEN];
        loop {
            if self.broken.get() {
                // The writer failed and recorded why.
                return Ok(());
            }
            if !rb.fill(self, proto::REQUEST_LEN).await? {
                return Ok(());
            }
            hb.copy_from_slice(rb.take(proto::REQUEST_LEN));
            let req = Request::decode(&hb)?;
            if self.valid.is_some_and(|v| !v()) {
                tracing::warn!(export = %self.name, "session revoked: answering ESHUTDOWN and closing");
                if req.command == proto::CMD_WRITE {
                    rb.skip(self, req.len as u64).await?;
                }
                let i = self.take_slot().await;
                self.dispatch(i, req.cookie, Job::Refuse(proto::NBD_ESHUTDOWN));
                return Ok(());
            }
            let cmd = match proto::check_request(&req, self.size, self.read_only) {
                Ok(c) => c,
                Err(Reject::Close) => {
                    return Err(ConnError::Violation(format!(
                        "write payload of {} bytes exceeds the limit",
                        req.len
                    )))
                }
                Err(Reject::Error(e)) => {
                    tracing::debug!(?req, error = e, "NBD: request rejected");
                    if req.command == proto::CMD_WRITE {
                        rb.skip(self, req.len as u64).await?;
                    }
                    let i = self.take_slot().await;
                    self.dispatch(i, req.cookie, Job::Refuse(e));
                    continue;
                }
            };
            let len = match cmd {
                Command::Disconnect => return Ok(()),
                Command::Read { len, .. } | Command::Write { len, .. } => len as usize,
                _ => 0,
            };
            let i = self.take_slot().await;
            let slot = &self.slots[i];
            if len > self.slot_bytes {
                if let Err(e) = self.take_large(len).await {
                    tracing::warn!(export = %self.name, len, error = %e, "NBD: no memory for a large request");
                    if req.command == proto::CMD_WRITE {
                        if let Err(e) = rb.skip(self, len as u64).await {
                            self.release(i);
                            return Err(e);
                        }
                    }
                    self.dispatch(i, req.cookie, Job::Refuse(proto::NBD_ENOMEM));
                    continue;
                }
                slot.large.set(true);
            }
            if let Command::Write { .. } = cmd {
                let got = if slot.large.get() {
                    let mut b = self.large.borrow_mut();
                    rb.payload(self, &mut b.as_mut_slice()[..len]).await
                } else {
                    let mut io = slot.io.borrow_mut();
                    rb.payload(self, &mut io.data[..len]).await
                };
                if let Err(e) = got {
                    self.release(i);
                    return Err(e);
                }
            }
            self.dispatch(i, req.cookie, Job::Run(cmd));
        }
    }

    /// Wait for a free slot (they are freed once their reply is sent).
    async fn take_slot(&self) -> usize {
        poll_fn(|_| match self.free.borrow_mut().pop() {
            Some(i) => {
                let i = i as usize;
                self.slots[i].state.set(State::Taken);
                Poll::Ready(i)
            }
            None => Poll::Pending,
        })
        .await
    }

    /// Wait for the large buffer and make it hold `len` bytes.
    async fn take_large(&self, len: usize) -> io::Result<()> {
        poll_fn(|_| {
            if self.large_busy.get() {
                return Poll::Pending;
            }
            let mut b = self.large.borrow_mut();
            if b.len() < len {
                // Grown to the largest request seen, not per request.
                match AnonMap::new(len.next_power_of_two()) {
                    Ok(m) => *b = m,
                    Err(e) => return Poll::Ready(Err(e)),
                }
            }
            self.large_busy.set(true);
            Poll::Ready(Ok(()))
        })
        .await
    }

    /// Hand slot `i` its request and wake its task.
    fn dispatch(&self, i: usize, cookie: u64, job: Job) {
        let slot = &self.slots[i];
        let seq = self.next_seq.get();
        self.next_seq.set(seq + 1);
        slot.cookie.set(cookie);
        slot.seq.set(seq);
        slot.job.set(job);
        slot.writing.set(matches!(
            job,
            Job::Run(Command::Write { .. } | Command::Trim { .. } | Command::WriteZeroes { .. })
        ));
        slot.state.set(State::Queued);
        self.wake(slot_task(i));
    }

    /// Free slot `i` (its reply was sent or dropped).
    fn release(&self, i: usize) {
        let slot = &self.slots[i];
        slot.state.set(State::Free);
        if slot.large.replace(false) {
            self.large_busy.set(false);
        }
        self.free.borrow_mut().push(i as u16);
        self.wake(READER);
        if self.reader_done.get() {
            // Its task ends, and the writer once the last slot is free.
            self.wake(slot_task(i));
            self.wake(WRITER);
        }
    }

    // ------------------------------------------------------------ slots

    /// Task of slot `i`: run each request handed to it, queue its reply.
    async fn slot_loop(&self, i: usize) {
        let slot = &self.slots[i];
        loop {
            let job = poll_fn(|_| match slot.state.get() {
                State::Queued => Poll::Ready(Some(slot.job.get())),
                State::Free if self.reader_done.get() => Poll::Ready(None),
                _ => Poll::Pending,
            })
            .await;
            let Some(job) = job else {
                return;
            };
            slot.state.set(State::Running);
            let (error, reply_len) = match job {
                Job::Refuse(e) => (e, 0),
                Job::Run(cmd) => self.execute(slot, cmd).await,
            };
            if slot.writing.replace(false) {
                self.wake_flushes();
            }
            slot.io.borrow_mut().hdr = SimpleReply {
                error,
                cookie: slot.cookie.get(),
            }
            .encode();
            slot.reply_len.set(reply_len);
            slot.state.set(State::Replying);
            self.ready.borrow_mut().push_back(i as u16);
            self.wake(WRITER);
        }
    }

    /// Run `cmd` on the export: the NBD error and the reply's payload length.
    // The slot is `Running`: its buffer (or the large one, which only it
    // holds) is its own until the reply is queued; the borrow checks that.
    #[allow(clippy::await_holding_refcell_ref)]
    async fn execute(&self, slot: &Slot<'_>, cmd: Command) -> (u32, usize) {
        let dev = self.dev;
        let result: IoResult<()> = match cmd {
            Command::Read { offset, len } => {
                let len = len as usize;
                let r = if slot.large.get() {
                    let mut b = self.large.borrow_mut();
                    dev.read(offset, &mut b.as_mut_slice()[..len]).await
                } else {
                    let mut io = slot.io.borrow_mut();
                    dev.read(offset, &mut io.data[..len]).await
                };
                if r.is_ok() {
                    return (0, len);
                }
                r
            }
            Command::Write { offset, len, fua } => {
                let len = len as usize;
                if slot.large.get() {
                    let b = self.large.borrow();
                    dev.write(offset, &b.as_slice()[..len], fua).await
                } else {
                    let io = slot.io.borrow();
                    dev.write(offset, &io.data[..len], fua).await
                }
            }
            Command::Flush => {
                self.flush_barrier(slot).await;
                dev.flush().await
            }
            Command::Trim { offset, len, fua } => {
                let r = dev.discard(offset, len as u64).await;
                if r.is_ok() && fua {
                    dev.flush().await
                } else {
                    r
                }
            }
            Command::WriteZeroes { offset, len, fua } => {
                let r = dev.write_zeroes(offset, len as u64).await;
                if r.is_ok() && fua {
                    dev.flush().await
                } else {
                    r
                }
            }
            // The reader ends the session on DISC; it never dispatches one.
            Command::Disconnect => Ok(()),
        };
        match result {
            Ok(()) => (0, 0),
            Err(e) => {
                tracing::debug!(export = %self.name, error = %e, "NBD: request failed");
                (proto::errno_to_nbd(e.errno()), 0)
            }
        }
    }

    /// Wait until every write dispatched before the flush in `me` completed.
    async fn flush_barrier(&self, me: &Slot<'_>) {
        let seq = me.seq.get();
        poll_fn(|_| {
            let earlier = self
                .slots
                .iter()
                .any(|s| s.writing.get() && s.seq.get() < seq);
            if earlier {
                if !me.flush_waiting.replace(true) {
                    self.flushes_waiting.set(self.flushes_waiting.get() + 1);
                }
                Poll::Pending
            } else {
                Poll::Ready(())
            }
        })
        .await
    }

    /// A write completed: let waiting flushes check their barrier again.
    fn wake_flushes(&self) {
        if self.flushes_waiting.get() == 0 {
            return;
        }
        self.flushes_waiting.set(0);
        for (i, s) in self.slots.iter().enumerate() {
            if s.flush_waiting.replace(false) {
                self.wake(slot_task(i));
            }
        }
    }

    // ------------------------------------------------------------ writer

    /// Send queued replies, batched, until the reader is done and no slot
    /// is busy.
    async fn write_replies(&self) -> io::Result<()> {
        let n = self.slots.len();
        let mut batch: Vec<u16> = Vec::with_capacity(n);
        let mut iovs: Vec<libc::iovec> = Vec::with_capacity(2 * n);
        let mut held: Vec<Ref<'_, SlotIo<'_>>> = Vec::with_capacity(n);
        let mut result = Ok(());
        loop {
            let more = poll_fn(|_| {
                if !self.ready.borrow().is_empty() {
                    Poll::Ready(true)
                } else if self.reader_done.get() && self.outstanding() == 0 {
                    Poll::Ready(false)
                } else {
                    Poll::Pending
                }
            })
            .await;
            if !more {
                return result;
            }
            batch.extend(self.ready.borrow_mut().drain(..));
            if !self.broken.get() {
                let sent = {
                    let large = batch
                        .iter()
                        .any(|&i| self.slots[i as usize].large.get())
                        .then(|| self.large.borrow());
                    iovs.clear();
                    for &i in &batch {
                        let slot = &self.slots[i as usize];
                        let io = slot.io.borrow();
                        let len = slot.reply_len.get();
                        let data: &[u8] = match (&large, slot.large.get()) {
                            (Some(b), true) => &b.as_slice()[..len],
                            _ => &io.data[..len],
                        };
                        iovs.push(iovec(&io.hdr));
                        if !data.is_empty() {
                            iovs.push(iovec(data));
                        }
                        held.push(io);
                    }
                    let sent = self.send_all(&mut iovs).await;
                    held.clear();
                    sent
                };
                if let Err(e) = sent {
                    result = Err(e);
                    self.break_conn();
                }
            }
            for i in batch.drain(..) {
                self.release(i as usize);
            }
        }
    }

    /// Send everything `iovs` points to as one stream write (`SendMsg`,
    /// resubmitted after short sends). `iovs` is consumed.
    async fn send_all(&self, iovs: &mut [libc::iovec]) -> io::Result<()> {
        let mut first = 0;
        let mut retries = 0;
        while first < iovs.len() {
            let rest = &mut iovs[first..];
            // SAFETY: msghdr is a plain C struct for which all-zeroes is a
            // valid (empty) value.
            let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
            msg.msg_iov = rest.as_mut_ptr();
            msg.msg_iovlen = rest.len() as _;
            let sqe = opcode::SendMsg::new(types::Fd(self.fd), &msg)
                .flags(libc::MSG_NOSIGNAL as u32)
                .build();
            // `msg`, the iovecs and the buffers they point to (held borrowed
            // by the caller) stay alive until the future resolves: the Ring
            // contract.
            let r = self.ring.submit(sqe).await;
            match r {
                n if n > 0 => advance(iovs, &mut first, n as usize),
                e if (e == -libc::EINTR || e == -libc::EAGAIN) && retries < MAX_RETRIES => {
                    retries += 1
                }
                0 => return Err(io::ErrorKind::WriteZero.into()),
                e => return Err(io::Error::from_raw_os_error(-e)),
            }
        }
        Ok(())
    }

    /// Sending failed: drop every later reply and end the reader (its
    /// pending receive returns once the socket is shut down).
    fn break_conn(&self) {
        if !self.broken.replace(true) {
            // SAFETY: shutdown(2) on the connection's socket, which the
            // caller of `run` keeps open until it returns.
            unsafe { libc::shutdown(self.fd, libc::SHUT_RDWR) };
        }
        self.wake(READER);
    }

    // ------------------------------------------------------------ socket

    /// One `Recv` into `len` bytes at `buf`: bytes received, 0 at end of
    /// stream.
    async fn recv(&self, buf: *mut u8, len: usize, flags: i32) -> io::Result<usize> {
        let mut retries = 0;
        loop {
            let sqe = opcode::Recv::new(types::Fd(self.fd), buf, len.min(1 << 30) as u32)
                .flags(flags)
                .build();
            // The caller keeps `buf` borrowed until this resolves.
            match self.ring.submit(sqe).await {
                n if n >= 0 => return Ok(n as usize),
                e if (e == -libc::EINTR || e == -libc::EAGAIN) && retries < MAX_RETRIES => {
                    retries += 1
                }
                e => return Err(io::Error::from_raw_os_error(-e)),
            }
        }
    }
}

fn iovec(b: &[u8]) -> libc::iovec {
    libc::iovec {
        iov_base: b.as_ptr() as *mut libc::c_void,
        iov_len: b.len(),
    }
}

/// Account for `n` bytes sent from `iovs[*first..]`.
fn advance(iovs: &mut [libc::iovec], first: &mut usize, mut n: usize) {
    while *first < iovs.len() && iovs[*first].iov_len <= n {
        n -= iovs[*first].iov_len;
        *first += 1;
    }
    if n > 0 {
        if let Some(v) = iovs.get_mut(*first) {
            // SAFETY: n < v.iov_len, so the result stays inside the buffer
            // the iovec describes.
            v.iov_base = unsafe { v.iov_base.cast::<u8>().add(n) }.cast();
            v.iov_len -= n;
        }
    }
}

/// Page-aligned memory straight from `mmap(2)` (anonymous, private): the
/// kernel hands out zeroed pages on first touch, so untouched parts cost no
/// memory and nothing is cleared up front, unlike a heap buffer that the
/// allocator zeroes whole. Unmapped on drop.
struct AnonMap {
    ptr: NonNull<u8>,
    len: usize,
}

impl AnonMap {
    fn empty() -> Self {
        AnonMap {
            ptr: NonNull::dangling(),
            len: 0,
        }
    }

    fn new(len: usize) -> io::Result<Self> {
        if len == 0 {
            return Ok(Self::empty());
        }
        // SAFETY: a new anonymous private mapping (no fd, no fixed
        // address): it cannot alias any memory of ours.
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
        if p == libc::MAP_FAILED {
            return Err(io::Error::last_os_error());
        }
        let ptr = NonNull::new(p.cast::<u8>())
            .ok_or_else(|| io::Error::from(io::ErrorKind::OutOfMemory))?;
        Ok(AnonMap { ptr, len })
    }

    fn len(&self) -> usize {
        self.len
    }

    fn as_slice(&self) -> &[u8] {
        // SAFETY: `ptr` is a readable mapping of `len` bytes (or dangling
        // with `len` 0), zero-filled by the kernel so initialized, and
        // unmapped only on drop; `&self` keeps it alive and unaliased by
        // any `&mut`.
        unsafe { std::slice::from_raw_parts(self.ptr.as_ptr(), self.len) }
    }

    fn as_mut_slice(&mut self) -> &mut [u8] {
        // SAFETY: as in `as_slice`, and `&mut self` makes this the only
        // reference to the mapping.
        unsafe { std::slice::from_raw_parts_mut(self.ptr.as_ptr(), self.len) }
    }
}

impl Drop for AnonMap {
    fn drop(&mut self) {
        if self.len > 0 {
            // SAFETY: unmaps exactly the mapping made in `new`; no slice of
            // it outlives `self` (they borrow it).
            unsafe { libc::munmap(self.ptr.as_ptr().cast(), self.len) };
        }
    }
}

/// The reader's receive buffer: `buf[start..end]` is received and not yet
/// consumed.
struct RecvBuf {
    buf: Box<[u8]>,
    start: usize,
    end: usize,
}

impl RecvBuf {
    /// A buffer holding `early` (at most [`RECV_BUFFER`] bytes in practice:
    /// the negotiation's reader is no larger; a longer `early` gets a
    /// buffer of its size).
    fn new(early: &[u8]) -> Self {
        let mut buf = vec![0u8; RECV_BUFFER.max(early.len())].into_boxed_slice();
        buf[..early.len()].copy_from_slice(early);
        RecvBuf {
            buf,
            start: 0,
            end: early.len(),
        }
    }

    fn available(&self) -> usize {
        self.end - self.start
    }

    /// Have at least `want` (≤ the buffer's size) bytes buffered.
    /// `Ok(false)`: the stream ended cleanly, nothing buffered.
    async fn fill<D: BlockDev>(
        &mut self,
        conn: &Conn<'_, D>,
        want: usize,
    ) -> Result<bool, ConnError> {
        while self.available() < want {
            if self.start > 0 {
                self.buf.copy_within(self.start..self.end, 0);
                self.end -= self.start;
                self.start = 0;
            }
            let room = &mut self.buf[self.end..];
            let n = conn.recv(room.as_mut_ptr(), room.len(), 0).await?;
            if n == 0 {
                if self.available() == 0 {
                    return Ok(false);
                }
                return Err(io::Error::from(io::ErrorKind::UnexpectedEof).into());
            }
            self.end += n;
        }
        Ok(true)
    }

    /// Consume `n` buffered bytes.
    fn take(&mut self, n: usize) -> &[u8] {
        let s = &self.buf[self.start..self.start + n];
        self.start += n;
        s
    }

    /// Receive exactly `dst.len()` bytes: what is buffered first, the rest
    /// straight from the socket into `dst`.
    async fn payload<D: BlockDev>(
        &mut self,
        conn: &Conn<'_, D>,
        dst: &mut [u8],
    ) -> Result<(), ConnError> {
        let k = self.available().min(dst.len());
        dst[..k].copy_from_slice(self.take(k));
        let mut done = k;
        while done < dst.len() {
            let rest = &mut dst[done..];
            let n = conn
                .recv(rest.as_mut_ptr(), rest.len(), libc::MSG_WAITALL)
                .await?;
            if n == 0 {
                return Err(io::Error::from(io::ErrorKind::UnexpectedEof).into());
            }
            done += n;
        }
        Ok(())
    }

    /// Discard the next `len` bytes of the stream (a refused write's
    /// payload), keeping whatever follows them.
    async fn skip<D: BlockDev>(&mut self, conn: &Conn<'_, D>, len: u64) -> Result<(), ConnError> {
        let mut left = len;
        loop {
            let k = (self.available() as u64).min(left);
            self.start += k as usize;
            left -= k;
            if left == 0 {
                return Ok(());
            }
            self.start = 0;
            self.end = 0;
            let n = conn.recv(self.buf.as_mut_ptr(), self.buf.len(), 0).await?;
            if n == 0 {
                return Err(io::Error::from(io::ErrorKind::UnexpectedEof).into());
            }
            self.end = n;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn advance_consumes_whole_and_partial_iovecs() {
        let a = [1u8; 16];
        let b = [2u8; 100];
        let c: [u8; 0] = [];
        let d = [3u8; 16];
        let mut iovs = [iovec(&a), iovec(&b), iovec(&c), iovec(&d)];
        let mut first = 0;
        advance(&mut iovs, &mut first, 10);
        assert_eq!((first, iovs[0].iov_len), (0, 6));
        advance(&mut iovs, &mut first, 6 + 100);
        // The empty iovec after b is consumed with it.
        assert_eq!(first, 3);
        advance(&mut iovs, &mut first, 15);
        assert_eq!((first, iovs[3].iov_len), (3, 1));
        assert_eq!(iovs[3].iov_base as usize, d.as_ptr() as usize + 15);
        advance(&mut iovs, &mut first, 1);
        assert_eq!(first, 4);
    }
}
