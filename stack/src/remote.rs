//! The remote reference (spec \[0109\]–\[0110\]): a tier-2 object's link to a
//! tier-1 object that lives in a peer storage processor, over one or more
//! fabric paths (\[046\], section VII: redundant fabrics).
//!
//! A [`RemoteDesc`] names the peer's export and lists the paths to it in order
//! of preference; it is shared by every queue thread of a volume. Each queue
//! builds its own [`RemoteRef`], which owns that queue's connection ([`NbdDev`]
//! on the queue's ring): no connection, lock or buffer is shared between
//! queues.
//!
//! # Path failover (multipath)
//!
//! A request that fails because its connection broke (socket error, the peer
//! closed, or the peer answered `ESHUTDOWN` because its configuration moved
//! on) is not failed to the host: the connection is dropped, the next path is
//! connected and the request is issued again. Re-issuing is safe for block
//! I/O: a write carries its data and its offset, so writing it twice leaves
//! the same bytes, and the host does not overlap in-flight writes. When no
//! path works (none connects, or each shuts the session down again, as a peer
//! does for a fenced master generation until [`RemoteDesc::rename`] names the
//! new one), requests wait (with a growing back-off on the queue's ring, not
//! blocking it) for up to [`RemoteDesc::no_path_timeout`] — the bounded queue
//! of SPDK's `fast_io_fail_timeout_sec` — and then fail with `EIO`, which a
//! mirror above turns into a failed leg. Failback is immediate once the
//! preferred path answers again: while on another path the preferred one is
//! retried every [`FAILBACK_INTERVAL`].
//!
//! Connecting is the blocking NBD handshake; it runs on the queue thread. A
//! path that is gone (no listener) fails at once; a peer that accepts but does
//! not answer holds the queue up to [`RemoteDesc::connect_timeout`]. Requests on a live
//! connection have no timeout of their own (as NBD's kernel client without
//! `-timeout`): a hung peer is detected by the failure inventory, not here.
//!
//! [`PathState`] counts, per path and across queues, what happened; the
//! daemon reports it (`tierblk path list`).

use std::cell::{Cell, RefCell};
use std::rc::Rc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use io_uring::{opcode, types};

use crate::frames::Frames;
use crate::nbd::auth::Secret;
use crate::nbd::{NbdAddr, NbdDev};
use crate::{check_range, BlockDev, IoError, IoResult, Limits, Ring};

/// How often a reference running on a non-preferred path tries the preferred
/// one again.
pub const FAILBACK_INTERVAL: Duration = Duration::from_secs(2);

/// Default of [`RemoteDesc::connect_timeout`].
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// Default of [`RemoteDesc::no_path_timeout`].
pub const NO_PATH_TIMEOUT: Duration = Duration::from_secs(30);

/// First and largest wait between rounds over every path.
const BACKOFF_MIN: Duration = Duration::from_millis(50);
const BACKOFF_MAX: Duration = Duration::from_secs(1);

/// What every queue's reference to one path has seen (shared, atomics only).
#[derive(Debug)]
pub struct PathState {
    /// Where the path leads.
    pub addr: NbdAddr,
    up: AtomicBool,
    /// Connections that some queue is using on this path now.
    active: AtomicU64,
    connects: AtomicU64,
    failures: AtomicU64,
    /// Written only when a path fails (never on the I/O path).
    last_error: Mutex<Option<String>>,
}

/// A copy of a [`PathState`] for reports.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PathReport {
    /// Where the path leads.
    pub addr: NbdAddr,
    /// Whether the last attempt over this path worked.
    pub up: bool,
    /// Queues whose connection uses this path now.
    pub active: u64,
    /// Successful connections since start.
    pub connects: u64,
    /// Failed connections and broken connections since start.
    pub failures: u64,
    /// The last failure.
    pub last_error: Option<String>,
}

impl PathState {
    fn new(addr: NbdAddr) -> Self {
        PathState {
            addr,
            up: AtomicBool::new(true),
            active: AtomicU64::new(0),
            connects: AtomicU64::new(0),
            failures: AtomicU64::new(0),
            last_error: Mutex::new(None),
        }
    }

    fn failed(&self, why: String) {
        self.up.store(false, Ordering::Relaxed);
        self.failures.fetch_add(1, Ordering::Relaxed);
        *self.last_error.lock().unwrap_or_else(|e| e.into_inner()) = Some(why);
    }

    fn report(&self) -> PathReport {
        PathReport {
            addr: self.addr.clone(),
            up: self.up.load(Ordering::Relaxed),
            active: self.active.load(Ordering::Relaxed),
            connects: self.connects.load(Ordering::Relaxed),
            failures: self.failures.load(Ordering::Relaxed),
            last_error: self
                .last_error
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .clone(),
        }
    }
}

/// A tier-1 object in a peer: its export name, the paths to it and what the
/// volume expects of it. Shared by the volume's queue threads.
#[derive(Debug)]
pub struct RemoteDesc {
    /// The export's name at the peer; read at each connection, changed by
    /// [`RemoteDesc::rename`].
    export: Mutex<String>,
    /// How many times the export was renamed: a queue whose connection was
    /// opened under an older count opens a new one (an atomic load per
    /// request, not the name's lock).
    renames: AtomicU64,
    /// Size the volume needs; a shorter export is refused.
    pub size: u64,
    /// Limits every queue reports before its first connection (probe the
    /// export once with [`RemoteDesc::probe`]).
    pub limits: Limits,
    /// The cluster secret the peer wants, if any.
    pub secret: Option<Arc<Secret>>,
    /// How long requests wait when no path works before failing with `EIO`.
    pub no_path_timeout: Duration,
    /// How long one connection attempt (the NBD handshake) may take: a
    /// stalled peer must not hold a queue thread for long.
    pub connect_timeout: Duration,
    paths: Vec<PathState>,
}

/// Why a remote reference cannot be set up.
#[derive(Debug, thiserror::Error)]
pub enum RemoteError {
    /// No path given.
    #[error("export {0}: no path")]
    NoPath(String),
    /// Every path failed.
    #[error("export {export}: unreachable: {why}")]
    Unreachable {
        /// The export.
        export: String,
        /// One line per path.
        why: String,
    },
    /// The export is smaller than the volume needs.
    #[error("export {export} at {addr}: {have} bytes, need {need}")]
    TooSmall {
        /// The export.
        export: String,
        /// Where.
        addr: NbdAddr,
        /// Its size.
        have: u64,
        /// What the reference needs.
        need: u64,
    },
    /// The export is read-only.
    #[error("export {export} at {addr}: read-only")]
    ReadOnly {
        /// The export.
        export: String,
        /// Where.
        addr: NbdAddr,
    },
}

impl RemoteDesc {
    /// Describe `export` of `size` bytes behind `paths` (preferred first).
    /// Limits default to 4 KiB blocks and 1 MiB requests until probed.
    pub fn new(
        export: impl Into<String>,
        size: u64,
        paths: Vec<NbdAddr>,
        secret: Option<Arc<Secret>>,
    ) -> Result<RemoteDesc, RemoteError> {
        let export = export.into();
        if paths.is_empty() {
            return Err(RemoteError::NoPath(export));
        }
        Ok(RemoteDesc {
            export: Mutex::new(export),
            renames: AtomicU64::new(0),
            size,
            limits: Limits {
                logical_block: 512,
                physical_block: 4096,
                max_io_bytes: 1 << 20,
                discard: true,
                write_zeroes: true,
            },
            secret,
            no_path_timeout: NO_PATH_TIMEOUT,
            connect_timeout: CONNECT_TIMEOUT,
            paths: paths.into_iter().map(PathState::new).collect(),
        })
    }

    /// Connect once over the first path that answers, check the export (size,
    /// writable) and take its limits. This is the "discover, then build
    /// offline" step of start-up ([090]–[093]): a volume whose remote piece
    /// fails here stays offline with this error.
    pub fn probe(mut self) -> Result<RemoteDesc, RemoteError> {
        let export = self.export();
        let ring = crate::uring::LocalRing::new(4).map_err(|e| RemoteError::Unreachable {
            export: export.clone(),
            why: format!("cannot create a ring: {e}"),
        })?;
        let mut why = Vec::new();
        for (i, p) in self.paths.iter().enumerate() {
            match NbdDev::connect_timeout(
                &p.addr,
                &export,
                &ring,
                self.secret.as_deref(),
                self.connect_timeout,
            ) {
                Ok(dev) => {
                    let info = dev.info();
                    if dev.read_only() {
                        return Err(RemoteError::ReadOnly {
                            export: export.clone(),
                            addr: p.addr.clone(),
                        });
                    }
                    if info.size < self.size {
                        return Err(RemoteError::TooSmall {
                            export: export.clone(),
                            addr: p.addr.clone(),
                            have: info.size,
                            need: self.size,
                        });
                    }
                    let l = dev.limits();
                    self.limits = l;
                    for q in &self.paths[..i] {
                        q.up.store(false, Ordering::Relaxed);
                    }
                    return Ok(self);
                }
                Err(e) => {
                    p.failed(e.to_string());
                    why.push(format!("{}: {e}", p.addr));
                }
            }
        }
        Err(RemoteError::Unreachable {
            export: export.clone(),
            why: why.join("; "),
        })
    }

    /// Every path's state, preferred first.
    pub fn paths(&self) -> Vec<PathReport> {
        self.paths.iter().map(PathState::report).collect()
    }

    /// The export's name at the peer now.
    pub fn export(&self) -> String {
        self.export
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Name the same tier-1 object by `export` from now on: every queue's
    /// next connection asks for it. A new master re-admits the trees that
    /// still match its object database this way (their references carried
    /// the old master's generation, which the peers now refuse): requests
    /// waiting on a cut connection reconnect under the new name and go on,
    /// with nothing failed to the host. A queue's connection open under the
    /// old name is closed at its next request, which opens one under the
    /// new name: the peer cuts the old name's sessions, and a request sent
    /// on one would only come back `ESHUTDOWN` and count as a path failure.
    pub fn rename(&self, export: impl Into<String>) {
        *self.export.lock().unwrap_or_else(|e| e.into_inner()) = export.into();
        self.renames.fetch_add(1, Ordering::Release);
    }
}

/// One queue's connection to a remote tier-1 object (see the module docs).
pub struct RemoteRef<R: Ring + Clone> {
    desc: Arc<RemoteDesc>,
    ring: R,
    conn: RefCell<Option<(usize, Rc<NbdDev<R>>)>>,
    /// The desc's rename count when `conn` was opened.
    conn_name: Cell<u64>,
    /// When to try the preferred path again while on another one.
    failback_at: Cell<Option<Instant>>,
    /// Where [`Leaf`](crate::Leaf) runs this reference's request futures,
    /// so that a local leaf's future is not sized for the remote one.
    frames: Frames,
}

impl<R: Ring + Clone> RemoteRef<R> {
    /// This queue's reference; it connects on first use.
    pub fn new(desc: Arc<RemoteDesc>, ring: R) -> Self {
        RemoteRef {
            desc,
            ring,
            conn: RefCell::new(None),
            conn_name: Cell::new(0),
            failback_at: Cell::new(None),
            frames: Frames::new(),
        }
    }

    /// The frames this reference's requests run in when a tree holds it
    /// as one arm of a leaf (see [`crate::frames`]).
    pub(crate) fn frames(&self) -> &Frames {
        &self.frames
    }

    /// The description shared by every queue.
    pub fn desc(&self) -> &Arc<RemoteDesc> {
        &self.desc
    }

    /// Index of the path this queue is connected over, if any.
    pub fn current_path(&self) -> Option<usize> {
        self.conn.borrow().as_ref().map(|(i, _)| *i)
    }

    fn try_path(&self, i: usize) -> Option<(Rc<NbdDev<R>>, u64)> {
        let p = &self.desc.paths[i];
        // Read before the name: a rename in between reconnects once more.
        let name = self.desc.renames.load(Ordering::Acquire);
        let export = self.desc.export();
        let r = NbdDev::connect_timeout(
            &p.addr,
            &export,
            self.ring.clone(),
            self.desc.secret.as_deref(),
            self.desc.connect_timeout,
        );
        match r {
            Ok(dev) if dev.info().size >= self.desc.size && !dev.read_only() => {
                p.up.store(true, Ordering::Relaxed);
                p.connects.fetch_add(1, Ordering::Relaxed);
                p.active.fetch_add(1, Ordering::Relaxed);
                tracing::info!(%export, path = %p.addr, "remote reference connected");
                Some((Rc::new(dev), name))
            }
            Ok(dev) => {
                p.failed(format!(
                    "export is {} bytes{}, need {} writable",
                    dev.info().size,
                    if dev.read_only() { " read-only" } else { "" },
                    self.desc.size
                ));
                None
            }
            Err(e) => {
                p.failed(e.to_string());
                None
            }
        }
    }

    fn install(&self, i: usize, (dev, name): (Rc<NbdDev<R>>, u64)) -> Rc<NbdDev<R>> {
        self.conn_name.set(name);
        let old = self.conn.borrow_mut().replace((i, dev.clone()));
        if let Some((j, _)) = old {
            self.desc.paths[j].active.fetch_sub(1, Ordering::Relaxed);
        }
        self.failback_at
            .set((i != 0).then(|| Instant::now() + FAILBACK_INTERVAL));
        dev
    }

    /// The connection to use: the current one, the preferred path when it is
    /// time to fail back, else the first path that connects; waits with a
    /// back-off while none does, up to the no-path timeout.
    async fn conn(
        &self,
        op: &'static str,
        offset: u64,
        len: u64,
        retry: &Retry,
    ) -> IoResult<Rc<NbdDev<R>>> {
        if self.conn_name.get() != self.desc.renames.load(Ordering::Acquire) {
            self.renamed();
        }
        let current = self.conn.borrow().clone();
        if let Some((_, dev)) = current {
            let due = self.failback_at.get().is_some_and(|t| Instant::now() >= t);
            if !due {
                return Ok(dev);
            }
            match self.try_path(0) {
                Some(d) => {
                    tracing::info!(export = %self.desc.export(), "failed back to the preferred path");
                    return Ok(self.install(0, d));
                }
                None => {
                    self.failback_at
                        .set(Some(Instant::now() + FAILBACK_INTERVAL));
                    return Ok(dev);
                }
            }
        }
        let deadline = retry.since.unwrap_or_else(Instant::now) + self.desc.no_path_timeout;
        let mut wait = BACKOFF_MIN;
        loop {
            for i in 0..self.desc.paths.len() {
                if let Some(d) = self.try_path(i) {
                    return Ok(self.install(i, d));
                }
            }
            let now = Instant::now();
            if now >= deadline {
                tracing::error!(export = %self.desc.export(), "no path to the export: failing I/O");
                return Err(IoError::new(libc::EIO, op, offset, len));
            }
            self.sleep(wait.min(deadline - now)).await;
            wait = (wait * 2).min(BACKOFF_MAX);
        }
    }

    /// After a request's connection failed: the first time, fail over at
    /// once; again within the same request (a peer that accepts the
    /// session and then shuts it down, e.g. a fenced generation), wait with
    /// a growing back-off, and fail with `EIO` once the no-path timeout has
    /// passed since the first failure.
    async fn backoff(
        &self,
        retry: &mut Retry,
        op: &'static str,
        offset: u64,
        len: u64,
    ) -> IoResult<()> {
        let now = Instant::now();
        let since = *retry.since.get_or_insert(now);
        retry.losses += 1;
        if retry.losses == 1 {
            return Ok(());
        }
        let deadline = since + self.desc.no_path_timeout;
        if now >= deadline {
            tracing::error!(export = %self.desc.export(), "no working path to the export: failing I/O");
            return Err(IoError::new(libc::EIO, op, offset, len));
        }
        self.sleep(retry.wait.min(deadline - now)).await;
        retry.wait = (retry.wait * 2).min(BACKOFF_MAX);
        Ok(())
    }

    /// The export was renamed since this queue's connection opened: close
    /// it (requests in flight on it keep it until they end) so that the
    /// next request opens one under the new name. Not a path failure.
    fn renamed(&self) {
        if let Some((i, _)) = self.conn.borrow_mut().take() {
            let p = &self.desc.paths[i];
            p.active.fetch_sub(1, Ordering::Relaxed);
            tracing::info!(export = %self.desc.export(), path = %p.addr, "renamed: reconnecting under the new name");
        }
        self.conn_name
            .set(self.desc.renames.load(Ordering::Acquire));
    }

    /// Forget `dev` if it is still the current connection (another task may
    /// have replaced it already).
    fn lost(&self, dev: &Rc<NbdDev<R>>, e: &IoError) {
        let mut conn = self.conn.borrow_mut();
        if let Some((i, cur)) = conn.as_ref() {
            if Rc::ptr_eq(cur, dev) {
                let p = &self.desc.paths[*i];
                tracing::warn!(export = %self.desc.export(), path = %p.addr, error = %e, "fabric path failed: failing over");
                p.failed(e.to_string());
                p.active.fetch_sub(1, Ordering::Relaxed);
                *conn = None;
            }
        }
    }

    async fn sleep(&self, d: Duration) {
        let ts = types::Timespec::new()
            .sec(d.as_secs())
            .nsec(d.subsec_nanos());
        // `ts` lives in this future, which is driven to completion.
        let _ = self
            .ring
            .submit(opcode::Timeout::new(&ts as *const types::Timespec).build())
            .await;
    }
}

/// One request's way through failures (kept in the request's future).
struct Retry {
    /// When its first connection failed.
    since: Option<Instant>,
    /// Connections it lost.
    losses: u32,
    /// The next back-off.
    wait: Duration,
}

impl Retry {
    fn new() -> Self {
        Retry {
            since: None,
            losses: 0,
            wait: BACKOFF_MIN,
        }
    }
}

/// Whether `e` from `dev` means "try another path" rather than "the object
/// failed": a broken connection, or the peer shutting the session down.
fn retryable<R: Ring>(dev: &NbdDev<R>, e: &IoError) -> bool {
    dev.is_broken() || e.errno() == libc::ESHUTDOWN
}

/// Issue `$call` on a connection, failing over until it succeeds, fails for a
/// reason of the object's own, or no path is left.
macro_rules! with_failover {
    ($self:ident, $op:expr, $off:expr, $len:expr, |$dev:ident| $call:expr) => {{
        let mut retry = Retry::new();
        loop {
            let $dev = $self.conn($op, $off, $len, &retry).await?;
            match $call.await {
                Ok(v) => break Ok(v),
                Err(e) if retryable(&$dev, &e) => {
                    $self.lost(&$dev, &e);
                    $self.backoff(&mut retry, $op, $off, $len).await?;
                }
                Err(e) => break Err(e),
            }
        }
    }};
}

impl<R: Ring + Clone> BlockDev for RemoteRef<R> {
    fn size(&self) -> u64 {
        self.desc.size
    }

    fn limits(&self) -> Limits {
        self.desc.limits
    }

    async fn read(&self, offset: u64, buf: &mut [u8]) -> IoResult<()> {
        let len = buf.len() as u64;
        check_range("read", offset, len, self.desc.size)?;
        with_failover!(self, "read", offset, len, |dev| dev.read(offset, &mut *buf))
    }

    async fn write(&self, offset: u64, buf: &[u8], fua: bool) -> IoResult<()> {
        let len = buf.len() as u64;
        check_range("write", offset, len, self.desc.size)?;
        with_failover!(self, "write", offset, len, |dev| dev
            .write(offset, buf, fua))
    }

    async fn flush(&self) -> IoResult<()> {
        // A flush on a new connection covers the writes completed on the old
        // one only if the peer flushes its whole ALU, which an NBD flush
        // does (qemu-nbd, nbdkit and our server all fsync the backing file).
        with_failover!(self, "flush", 0, 0, |dev| dev.flush())
    }

    async fn discard(&self, offset: u64, len: u64) -> IoResult<()> {
        check_range("discard", offset, len, self.desc.size)?;
        with_failover!(self, "discard", offset, len, |dev| dev.discard(offset, len))
    }

    async fn write_zeroes(&self, offset: u64, len: u64) -> IoResult<()> {
        check_range("write_zeroes", offset, len, self.desc.size)?;
        with_failover!(self, "write_zeroes", offset, len, |dev| dev
            .write_zeroes(offset, len))
    }
}

impl<R: Ring + Clone> Drop for RemoteRef<R> {
    fn drop(&mut self) {
        if let Some((i, _)) = self.conn.get_mut().take() {
            self.desc.paths[i].active.fetch_sub(1, Ordering::Relaxed);
        }
    }
}
