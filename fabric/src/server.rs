//! NBD server: exposes tier-1 objects to peers (spec \[046\] fabric; the
//! serving side of the remote references of \[0109\]–\[0110\]).
//!
//! [`NbdServer::start`] binds Unix socket paths and/or TCP addresses and
//! serves a fixed list of [`Export`]s (name, size, read-only flag and a
//! factory); [`NbdServer::start_catalog`] serves a [`Catalog`] instead, asked
//! for the names and for an export each time a client lists or selects one,
//! so that the daemon's set of exports can change while the server runs
//! (volumes created and removed, stale generations refused). The fixed list
//! is itself a catalog (`Vec<Export<D>>`). One accept thread polls every
//! listener; each accepted connection
//! gets a thread of its own with its own
//! [`LocalRing`], and, once the client
//! selects an export, its own instance of that export built by the export's
//! factory on that thread. Nothing is shared between connections per I/O.
//!
//! Negotiation is fixed newstyle (`GO`, `INFO`, `LIST`, `ABORT`,
//! `EXPORT_NAME`; anything else gets `NBD_REP_ERR_UNSUP`), transmission uses
//! simple replies. Transmission is pipelined (module `transmission`): the
//! connection keeps reading requests while earlier ones are in flight, runs
//! up to [`ServerConfig::max_in_flight`] of them at once on its ring and
//! replies to each as it completes, in any order, as NBD allows. See the NBD
//! protocol: <https://github.com/NetworkBlockDevice/nbd/blob/master/doc/proto.md>.
//!
//! A malformed frame or protocol violation ends that connection only (logged
//! with `tracing`); the server keeps serving the others. A request that is
//! well-formed but wrong (out of range, unknown command, write to a read-only
//! export) is answered with an NBD error and the connection continues.
//!
//! # Authentication
//!
//! With a cluster secret in [`ServerConfig::secret`], a connection must
//! authenticate (the challenge-response of [`crate::auth`], options
//! `OPT_TIERBLK_AUTH_CHALLENGE` / `OPT_TIERBLK_AUTH_PROOF`) before it may
//! list or select an export: until then `LIST`, `INFO` and `GO` get
//! `NBD_REP_ERR_POLICY` and `EXPORT_NAME` closes the connection. After
//! [`MAX_AUTH_FAILURES`] failed or malformed attempts the connection is
//! closed. A Unix-socket peer running as root (`SO_PEERCRED` uid 0) counts as
//! authenticated when [`ServerConfig::trust_unix_root`] is on (the default):
//! root on this machine can read the ALUs directly anyway, and standard tools
//! (`nbdinfo`, `nbdcopy`, qemu) cannot run our challenge-response. TCP peers
//! always have to authenticate. Without a secret the server behaves as a
//! plain NBD server and answers our options `NBD_REP_ERR_UNSUP`.

mod transmission;

use std::collections::HashMap;
use std::io::{self, BufReader, IoSlice, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::os::fd::{AsFd, AsRawFd, OwnedFd, RawFd};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use thiserror::Error;
use tierblk_stack::nbd::auth::{self, AuthError, Secret};
use tierblk_stack::uring::LocalRing;
use tierblk_stack::BlockDev;

use crate::proto::{self, ClientOption, Info, ProtoError};
use crate::NbdAddr;

/// Builds the per-connection instance of an export on the connection's thread
/// around that connection's ring.
pub type Factory<D> = dyn Fn(&LocalRing) -> Result<D, String> + Send + Sync;

/// One named export.
pub struct Export<D> {
    name: String,
    size: u64,
    read_only: bool,
    multi_conn: bool,
    description: Option<String>,
    factory: Arc<Factory<D>>,
    /// Checked before each request: once false, the session is revoked.
    valid: Option<Arc<dyn Fn() -> bool + Send + Sync>>,
}

impl<D> Clone for Export<D> {
    fn clone(&self) -> Self {
        Export {
            name: self.name.clone(),
            size: self.size,
            read_only: self.read_only,
            multi_conn: self.multi_conn,
            description: self.description.clone(),
            factory: self.factory.clone(),
            valid: self.valid.clone(),
        }
    }
}

impl<D: BlockDev> Export<D> {
    /// An export called `name` of `size` bytes, read-write, whose instance for
    /// each connection is built by `factory` (called on the connection thread
    /// with that connection's ring when the client selects the export).
    pub fn new(
        name: impl Into<String>,
        size: u64,
        factory: impl Fn(&LocalRing) -> Result<D, String> + Send + Sync + 'static,
    ) -> Self {
        Export {
            name: name.into(),
            size,
            read_only: false,
            multi_conn: false,
            description: None,
            factory: Arc::new(factory),
            valid: None,
        }
    }

    /// Serve the export only while `valid()` holds: it is asked before every
    /// request, and once it says no, the request gets `NBD_ESHUTDOWN` and
    /// the connection is closed. This is how a session opened under an old
    /// configuration is cut (a deposed master's, a generation that moved
    /// on): NBD itself has no epochs. `valid` runs on the I/O path: keep it
    /// to an atomic load.
    pub fn valid_while(mut self, valid: impl Fn() -> bool + Send + Sync + 'static) -> Self {
        self.valid = Some(Arc::new(valid));
        self
    }

    /// Serve the export read-only (writes, trims and write-zeroes fail with
    /// `EPERM`).
    pub fn read_only(mut self, ro: bool) -> Self {
        self.read_only = ro;
        self
    }

    /// Advertise `NBD_FLAG_CAN_MULTI_CONN`: a flush on one connection covers
    /// the writes completed on every connection (true when all instances share
    /// one backing file, as partitions over one ALU do).
    pub fn multi_conn(mut self, on: bool) -> Self {
        self.multi_conn = on;
        self
    }

    /// A description shown by `nbdinfo --list`.
    pub fn description(mut self, text: impl Into<String>) -> Self {
        self.description = Some(text.into());
        self
    }

    /// Export name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Export size in bytes.
    pub fn size(&self) -> u64 {
        self.size
    }

    fn transmission_flags(&self) -> u16 {
        let mut f = proto::TFLAG_HAS_FLAGS
            | proto::TFLAG_SEND_FLUSH
            | proto::TFLAG_SEND_FUA
            | proto::TFLAG_SEND_TRIM
            | proto::TFLAG_SEND_WRITE_ZEROES;
        if self.read_only {
            f |= proto::TFLAG_READ_ONLY;
        }
        if self.multi_conn {
            f |= proto::TFLAG_CAN_MULTI_CONN;
        }
        f
    }
}

/// The set of exports a server offers, asked on every `LIST` and every export
/// selection (so it may change while the server runs). Called on connection
/// threads, concurrently: keep it quick (a map lookup), never blocking on
/// I/O.
pub trait Catalog<D>: Send + Sync + 'static {
    /// Names for `NBD_OPT_LIST`, in the order to list them. Names longer
    /// than 4096 bytes or containing NUL are left out of the reply.
    fn list(&self) -> Vec<String>;

    /// The export called `name` now (`""`: the default export, if the
    /// catalog has one), or why not (unknown, or refused, e.g. a stale
    /// generation): the message goes back to the client in
    /// `NBD_REP_ERR_UNKNOWN` (`EXPORT_NAME` just closes, as the protocol
    /// requires).
    fn lookup(&self, name: &str) -> Result<Export<D>, String>;

    /// One request of the control protocol between storage processors
    /// (`OPT_TIERBLK_CONTROL`, only after authentication): the reply body,
    /// or a refusal that goes back as an error reply. Runs on the
    /// connection's thread. By default there is no control channel.
    fn control(&self, _request: &[u8]) -> Result<Vec<u8>, String> {
        Err("no control channel here".into())
    }
}

/// The fixed list of [`NbdServer::start`]: names in order; the default
/// export (`""`) is the one called `""` if any, else the first.
impl<D: 'static> Catalog<D> for Vec<Export<D>> {
    fn list(&self) -> Vec<String> {
        self.iter().map(|e| e.name.clone()).collect()
    }

    fn lookup(&self, name: &str) -> Result<Export<D>, String> {
        let found = if name.is_empty() {
            self.iter().find(|e| e.name.is_empty()).or(self.first())
        } else {
            self.iter().find(|e| e.name == name)
        };
        found.cloned().ok_or_else(|| format!("no export {name:?}"))
    }
}

/// Failed or malformed authentication attempts after which a connection is
/// closed.
pub const MAX_AUTH_FAILURES: u32 = 3;

/// Server start-up failure.
#[derive(Debug, Error)]
pub enum ServerError {
    /// Binding or configuring a listener failed.
    #[error("cannot listen on {addr}: {source}")]
    Listen {
        /// The address.
        addr: NbdAddr,
        /// The cause.
        source: io::Error,
    },
    /// Bad configuration (duplicate export names, no listener...).
    #[error("invalid server configuration: {0}")]
    Config(String),
    /// Creating the accept thread or its wake-up pipe failed.
    #[error("cannot start the server: {0}")]
    Start(io::Error),
}

/// Why one connection ended abnormally (logged, never propagated).
#[derive(Debug, Error)]
enum ConnError {
    #[error("socket: {0}")]
    Io(#[from] io::Error),
    #[error("malformed frame: {0}")]
    Proto(#[from] ProtoError),
    #[error("protocol violation: {0}")]
    Violation(String),
    #[error("{0}")]
    Auth(#[from] AuthError),
}

/// Tunables.
#[derive(Clone, Debug)]
pub struct ServerConfig {
    /// SQ entries of each connection's ring (raised to hold
    /// `max_in_flight` requests plus the socket's receive and send).
    pub ring_entries: u32,
    /// How long a client may take between handshake frames.
    pub handshake_timeout: Duration,
    /// Most options accepted in one negotiation.
    pub max_options: u32,
    /// The cluster secret: when set, a connection must authenticate (see the
    /// module docs) before it may list or select an export. `None` (the
    /// default): no authentication, plain NBD.
    pub secret: Option<Secret>,
    /// With a secret, count a Unix-socket peer whose `SO_PEERCRED` uid is 0
    /// as authenticated, so that standard tools run as root keep working on
    /// Unix sockets. TCP peers always authenticate. Default: on.
    pub trust_unix_root: bool,
    /// Most requests of one connection in flight at once (read ahead,
    /// executed concurrently, answered as each completes); the next ones
    /// wait in the socket until a reply is sent. Clamped to 1..=256.
    /// Default: 32 (qemu-nbd runs 16 per client).
    pub max_in_flight: usize,
    /// Payload buffer of each of a connection's `max_in_flight` slots, in
    /// bytes (rounded up to 4 KiB). The slots' buffers are one anonymous
    /// mapping made when transmission starts and kept for the connection's
    /// life; a page takes memory only once a request used it.
    /// `READ`/`WRITE` requests larger than this (up to the 32 MiB the server
    /// accepts) share one connection buffer and take turns. Default: 1 MiB,
    /// the partition's and the ublk queues' largest request.
    pub slot_buffer: usize,
}

impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig {
            ring_entries: 64,
            handshake_timeout: Duration::from_secs(30),
            max_options: 256,
            secret: None,
            trust_unix_root: true,
            max_in_flight: 32,
            slot_buffer: 1 << 20,
        }
    }
}

enum Listener {
    Unix(UnixListener, PathBuf),
    Tcp(TcpListener),
}

impl Listener {
    fn raw_fd(&self) -> RawFd {
        match self {
            Listener::Unix(l, _) => l.as_raw_fd(),
            Listener::Tcp(l) => l.as_raw_fd(),
        }
    }
}

/// A connected peer, as the connection thread sees it.
enum Stream {
    Unix(UnixStream),
    Tcp(TcpStream),
}

impl Stream {
    fn try_clone(&self) -> io::Result<Stream> {
        Ok(match self {
            Stream::Unix(s) => Stream::Unix(s.try_clone()?),
            Stream::Tcp(s) => Stream::Tcp(s.try_clone()?),
        })
    }

    fn set_read_timeout(&self, t: Option<Duration>) -> io::Result<()> {
        match self {
            Stream::Unix(s) => s.set_read_timeout(t),
            Stream::Tcp(s) => s.set_read_timeout(t),
        }
    }

    fn fd(&self) -> io::Result<OwnedFd> {
        match self {
            Stream::Unix(s) => s.as_fd().try_clone_to_owned(),
            Stream::Tcp(s) => s.as_fd().try_clone_to_owned(),
        }
    }

    /// Whether the peer is a local process running as root (`SO_PEERCRED`
    /// of a Unix socket; never for TCP).
    fn peer_is_root(&self) -> bool {
        let Stream::Unix(s) = self else {
            return false;
        };
        let mut cred = libc::ucred {
            pid: 0,
            uid: u32::MAX,
            gid: u32::MAX,
        };
        let want = std::mem::size_of::<libc::ucred>() as libc::socklen_t;
        let mut len = want;
        // SAFETY: getsockopt writes at most `len` bytes into `cred`, a local
        // ucred of that size.
        let r = unsafe {
            libc::getsockopt(
                s.as_raw_fd(),
                libc::SOL_SOCKET,
                libc::SO_PEERCRED,
                (&mut cred as *mut libc::ucred).cast(),
                &mut len,
            )
        };
        r == 0 && len == want && cred.uid == 0
    }
}

impl Read for Stream {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self {
            Stream::Unix(s) => s.read(buf),
            Stream::Tcp(s) => s.read(buf),
        }
    }
}

impl Stream {
    fn raw(&self) -> RawFd {
        match self {
            Stream::Unix(s) => s.as_raw_fd(),
            Stream::Tcp(s) => s.as_raw_fd(),
        }
    }
}

/// Writes use `sendmsg(MSG_NOSIGNAL)`: a peer that went away yields `EPIPE`,
/// never a `SIGPIPE`, even in a host process that does not ignore it.
impl Write for Stream {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.write_vectored(&[IoSlice::new(buf)])
    }
    fn write_vectored(&mut self, bufs: &[IoSlice<'_>]) -> io::Result<usize> {
        // SAFETY: msghdr is a plain C struct; all-zeroes is a valid empty one.
        let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
        // IoSlice is ABI-compatible with iovec; sendmsg only reads them.
        msg.msg_iov = bufs.as_ptr() as *mut libc::iovec;
        msg.msg_iovlen = bufs.len().min(1024) as _;
        // SAFETY: `msg` points to `bufs`, valid for the duration of the call.
        let n = unsafe { libc::sendmsg(self.raw(), &msg, libc::MSG_NOSIGNAL) };
        if n < 0 {
            Err(io::Error::last_os_error())
        } else {
            Ok(n as usize)
        }
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

struct ConnEntry {
    /// A duplicate of the connection's socket, to shut it down on
    /// [`NbdServer::shutdown`].
    fd: OwnedFd,
    thread: JoinHandle<()>,
}

/// State shared by the accept thread and the server handle (never touched per
/// I/O).
struct Shared {
    stop: AtomicBool,
    live: AtomicUsize,
    served: AtomicUsize,
    conns: Mutex<HashMap<u64, ConnEntry>>,
}

/// A running NBD server. Dropping it shuts it down.
pub struct NbdServer {
    addrs: Vec<NbdAddr>,
    shared: Arc<Shared>,
    wake_tx: Option<OwnedFd>,
    accept: Option<JoinHandle<()>>,
    unix_paths: Vec<PathBuf>,
}

impl NbdServer {
    /// Listen on every address of `listen` and serve `exports` with the
    /// default [`ServerConfig`]. A TCP address with port 0 gets an ephemeral
    /// port: see [`NbdServer::addrs`].
    pub fn start<D: BlockDev + 'static>(
        listen: &[NbdAddr],
        exports: Vec<Export<D>>,
    ) -> Result<NbdServer, ServerError> {
        Self::start_with(listen, exports, ServerConfig::default())
    }

    /// As [`NbdServer::start`], with explicit tunables (and, in them, the
    /// cluster secret).
    pub fn start_with<D: BlockDev + 'static>(
        listen: &[NbdAddr],
        exports: Vec<Export<D>>,
        config: ServerConfig,
    ) -> Result<NbdServer, ServerError> {
        let mut seen = std::collections::HashSet::new();
        for e in &exports {
            if !seen.insert(e.name.as_str()) {
                return Err(ServerError::Config(format!(
                    "duplicate export name {:?}",
                    e.name
                )));
            }
            if e.name.len() > proto::MAX_STRING_LEN || e.name.contains('\0') {
                return Err(ServerError::Config(format!("bad export name {:?}", e.name)));
            }
        }
        Self::start_catalog(listen, Arc::new(exports), config)
    }

    /// Listen on every address of `listen` and serve the exports of
    /// `catalog`, asked on every `LIST` and every export selection: exports
    /// added to or removed from it while the server runs are seen by the
    /// next client (connections already in transmission keep their
    /// instance).
    pub fn start_catalog<D: BlockDev + 'static>(
        listen: &[NbdAddr],
        catalog: Arc<dyn Catalog<D>>,
        config: ServerConfig,
    ) -> Result<NbdServer, ServerError> {
        if listen.is_empty() {
            return Err(ServerError::Config("no listen address".into()));
        }
        let mut listeners = Vec::new();
        let mut addrs = Vec::new();
        let mut unix_paths = Vec::new();
        for addr in listen {
            let err = |source| ServerError::Listen {
                addr: addr.clone(),
                source,
            };
            match addr {
                NbdAddr::Unix(path) => {
                    let l = UnixListener::bind(path).map_err(err)?;
                    l.set_nonblocking(true).map_err(err)?;
                    unix_paths.push(path.clone());
                    addrs.push(addr.clone());
                    listeners.push(Listener::Unix(l, path.clone()));
                }
                NbdAddr::Tcp(a) => {
                    let l = TcpListener::bind(a).map_err(err)?;
                    l.set_nonblocking(true).map_err(err)?;
                    addrs.push(NbdAddr::Tcp(l.local_addr().map_err(err)?));
                    listeners.push(Listener::Tcp(l));
                }
            }
        }
        let (wake_rx, wake_tx) = pipe().map_err(ServerError::Start)?;
        let shared = Arc::new(Shared {
            stop: AtomicBool::new(false),
            live: AtomicUsize::new(0),
            served: AtomicUsize::new(0),
            conns: Mutex::new(HashMap::new()),
        });
        let sh = shared.clone();
        let authenticated = config.secret.is_some();
        let accept = std::thread::Builder::new()
            .name("nbd-accept".into())
            .spawn(move || accept_loop(listeners, wake_rx, sh, catalog, config))
            .map_err(ServerError::Start)?;
        tracing::info!(addrs = ?addrs, authenticated, "NBD server listening");
        Ok(NbdServer {
            addrs,
            shared,
            wake_tx: Some(wake_tx),
            accept: Some(accept),
            unix_paths,
        })
    }

    /// The addresses listened on (TCP ports resolved).
    pub fn addrs(&self) -> &[NbdAddr] {
        &self.addrs
    }

    /// Connections currently open.
    pub fn live_connections(&self) -> usize {
        self.shared.live.load(Ordering::Acquire)
    }

    /// Connections accepted since start.
    pub fn accepted_connections(&self) -> usize {
        self.shared.served.load(Ordering::Acquire)
    }

    /// Stop accepting, close every connection (the requests they have in
    /// flight complete first) and join all threads. Unix socket paths are
    /// removed.
    pub fn shutdown(mut self) {
        self.stop();
    }

    fn stop(&mut self) {
        let Some(wake_tx) = self.wake_tx.take() else {
            return;
        };
        self.shared.stop.store(true, Ordering::Release);
        // SAFETY: writes one byte from a valid local buffer to an fd we own.
        let _ = unsafe { libc::write(wake_tx.as_raw_fd(), [1u8].as_ptr().cast(), 1) };
        if let Some(t) = self.accept.take() {
            if t.join().is_err() {
                tracing::error!("NBD accept thread panicked");
            }
        }
        let conns: Vec<ConnEntry> = {
            let mut map = self.shared.conns.lock().unwrap_or_else(|e| e.into_inner());
            map.drain().map(|(_, c)| c).collect()
        };
        for c in &conns {
            // SAFETY: shutdown(2) on an fd we own (a duplicate of the socket).
            unsafe { libc::shutdown(c.fd.as_raw_fd(), libc::SHUT_RDWR) };
        }
        for c in conns {
            if c.thread.join().is_err() {
                tracing::error!("NBD connection thread panicked");
            }
        }
        for p in &self.unix_paths {
            let _ = std::fs::remove_file(p);
        }
        tracing::info!(addrs = ?self.addrs, "NBD server stopped");
    }
}

impl Drop for NbdServer {
    fn drop(&mut self) {
        self.stop();
    }
}

fn pipe() -> io::Result<(OwnedFd, OwnedFd)> {
    use std::os::fd::FromRawFd;
    let mut fds = [0 as libc::c_int; 2];
    // SAFETY: pipe2 writes two fds into the local array.
    let r = unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) };
    if r != 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: both fds were just created by pipe2 and are owned by nobody else.
    Ok(unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) })
}

fn accept_loop<D: BlockDev + 'static>(
    listeners: Vec<Listener>,
    wake_rx: OwnedFd,
    shared: Arc<Shared>,
    catalog: Arc<dyn Catalog<D>>,
    config: ServerConfig,
) {
    let mut next_id = 0u64;
    let mut pfds: Vec<libc::pollfd> = listeners
        .iter()
        .map(|l| l.raw_fd())
        .chain(std::iter::once(wake_rx.as_raw_fd()))
        .map(|fd| libc::pollfd {
            fd,
            events: libc::POLLIN,
            revents: 0,
        })
        .collect();
    while !shared.stop.load(Ordering::Acquire) {
        // SAFETY: `pfds` is a valid array of pollfd of the given length.
        let r = unsafe { libc::poll(pfds.as_mut_ptr(), pfds.len() as libc::nfds_t, -1) };
        if r < 0 {
            let e = io::Error::last_os_error();
            if e.kind() == io::ErrorKind::Interrupted {
                continue;
            }
            tracing::error!(error = %e, "NBD accept poll failed");
            std::thread::sleep(Duration::from_millis(100));
            continue;
        }
        if shared.stop.load(Ordering::Acquire) {
            break;
        }
        reap_finished(&shared);
        for (i, l) in listeners.iter().enumerate() {
            if pfds[i].revents == 0 {
                continue;
            }
            loop {
                let accepted = match l {
                    Listener::Unix(l, _) => l.accept().map(|(s, _)| Stream::Unix(s)),
                    Listener::Tcp(l) => l.accept().map(|(s, _)| {
                        let _ = s.set_nodelay(true);
                        Stream::Tcp(s)
                    }),
                };
                let stream = match accepted {
                    Ok(s) => s,
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                    Err(e) => {
                        tracing::warn!(error = %e, "NBD accept failed");
                        break;
                    }
                };
                next_id += 1;
                spawn_conn(next_id, stream, &shared, &catalog, &config);
            }
        }
    }
    for l in &listeners {
        if let Listener::Unix(_, p) = l {
            tracing::debug!(path = %p.display(), "closing NBD listener");
        }
    }
}

fn reap_finished(shared: &Shared) {
    let done: Vec<ConnEntry> = {
        let mut map = shared.conns.lock().unwrap_or_else(|e| e.into_inner());
        let ids: Vec<u64> = map
            .iter()
            .filter(|(_, c)| c.thread.is_finished())
            .map(|(id, _)| *id)
            .collect();
        ids.iter().filter_map(|id| map.remove(id)).collect()
    };
    for c in done {
        if c.thread.join().is_err() {
            tracing::error!("NBD connection thread panicked");
        }
    }
}

fn spawn_conn<D: BlockDev + 'static>(
    id: u64,
    stream: Stream,
    shared: &Arc<Shared>,
    catalog: &Arc<dyn Catalog<D>>,
    config: &ServerConfig,
) {
    let fd = match stream.fd() {
        Ok(fd) => fd,
        Err(e) => {
            tracing::warn!(error = %e, "NBD: cannot duplicate connection fd; dropping it");
            return;
        }
    };
    let catalog = catalog.clone();
    let config = config.clone();
    let sh = shared.clone();
    sh.live.fetch_add(1, Ordering::AcqRel);
    sh.served.fetch_add(1, Ordering::AcqRel);
    let sh2 = sh.clone();
    let spawned = std::thread::Builder::new()
        .name(format!("nbd-conn-{id}"))
        .spawn(move || {
            struct Live(Arc<Shared>);
            impl Drop for Live {
                fn drop(&mut self) {
                    self.0.live.fetch_sub(1, Ordering::AcqRel);
                }
            }
            let _live = Live(sh2);
            match serve_connection(stream, &*catalog, &config) {
                Ok(()) => tracing::debug!(conn = id, "NBD connection closed"),
                Err(e) => tracing::warn!(conn = id, error = %e, "NBD connection closed"),
            }
        });
    match spawned {
        Ok(thread) => {
            let mut map = shared.conns.lock().unwrap_or_else(|e| e.into_inner());
            map.insert(id, ConnEntry { fd, thread });
        }
        Err(e) => {
            sh.live.fetch_sub(1, Ordering::AcqRel);
            tracing::warn!(error = %e, "NBD: cannot spawn connection thread");
        }
    }
}

/// Read exactly `buf.len()` bytes; `Ok(false)` on EOF before the first byte.
fn read_frame(r: &mut impl Read, buf: &mut [u8]) -> io::Result<bool> {
    let mut done = 0;
    while done < buf.len() {
        match r.read(&mut buf[done..]) {
            Ok(0) if done == 0 => return Ok(false),
            Ok(0) => return Err(io::ErrorKind::UnexpectedEof.into()),
            Ok(n) => done += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(true)
}

fn send_option_reply(w: &mut impl Write, option: u32, reply: u32, data: &[u8]) -> io::Result<()> {
    let mut out = Vec::with_capacity(proto::OPTION_REPLY_HEADER_LEN + data.len());
    proto::encode_option_reply(option, reply, data, &mut out);
    w.write_all(&out)
}

/// An export selected by the client, instantiated for this connection.
struct Selected<D> {
    export: Export<D>,
    dev: D,
}

/// Authentication state of one connection.
struct Auth<'a> {
    /// The cluster secret (`None`: no authentication, plain NBD).
    secret: Option<&'a Secret>,
    /// The peer may list and select exports.
    authenticated: bool,
    /// Nonce of the last challenge, consumed by the next proof.
    server_nonce: Option<auth::Nonce>,
    failures: u32,
}

impl Auth<'_> {
    /// Count a failed or malformed attempt and answer it with `reply`;
    /// close (an error) once there were [`MAX_AUTH_FAILURES`].
    fn fail(
        &mut self,
        w: &mut impl Write,
        option: u32,
        reply: u32,
        msg: &str,
    ) -> Result<(), ConnError> {
        self.failures += 1;
        tracing::warn!(
            option,
            failures = self.failures,
            reason = msg,
            "NBD: authentication failed"
        );
        send_option_reply(w, option, reply, msg.as_bytes())?;
        if self.failures >= MAX_AUTH_FAILURES {
            return Err(ConnError::Violation(format!(
                "{} failed authentication attempts",
                self.failures
            )));
        }
        Ok(())
    }
}

fn serve_connection<D: BlockDev + 'static>(
    stream: Stream,
    catalog: &dyn Catalog<D>,
    config: &ServerConfig,
) -> Result<(), ConnError> {
    // Room for every slot's SQE plus the socket's receive and send.
    let entries = (config.max_in_flight.clamp(1, transmission::MAX_IN_FLIGHT) as u32 + 2)
        .next_power_of_two()
        .max(config.ring_entries);
    let ring = LocalRing::new(entries)?;
    stream.set_read_timeout(Some(config.handshake_timeout))?;
    let trusted = config.secret.is_none() || (config.trust_unix_root && stream.peer_is_root());
    if config.secret.is_some() && trusted {
        tracing::debug!("NBD: Unix peer is root, authenticated by SO_PEERCRED");
    }
    let auth = Auth {
        secret: config.secret.as_ref(),
        authenticated: trusted,
        server_nonce: None,
        failures: 0,
    };
    let mut w = stream.try_clone()?;
    let fd = stream.fd()?;
    let mut r = BufReader::with_capacity(64 * 1024, stream);
    let result = match negotiate(&mut r, &mut w, catalog, auth, &ring, config) {
        Ok(Some(sel)) => {
            tracing::debug!(export = %sel.export.name, "NBD transmission");
            // Requests the client sent right after selecting the export may
            // already sit in the negotiation's buffer: they come first.
            let early = r.buffer();
            r.get_ref()
                .set_read_timeout(None)
                .map_err(ConnError::from)
                .and_then(|()| transmission::run(r.get_ref().raw(), early, sel, &ring, config))
        }
        Ok(None) => Ok(()),
        Err(e) => Err(e),
    };
    // The accept side keeps a duplicate of the fd until it reaps this thread:
    // shut the socket down so the peer sees the close now.
    // SAFETY: shutdown(2) on an fd we own.
    unsafe { libc::shutdown(fd.as_raw_fd(), libc::SHUT_RDWR) };
    result
}

/// `msg` cut to at most [`proto::MAX_STRING_LEN`] bytes (on a character
/// boundary), so that a catalog's long refusal still fits a reply.
fn clip(msg: &str) -> &str {
    let mut end = msg.len().min(proto::MAX_STRING_LEN);
    while !msg.is_char_boundary(end) {
        end -= 1;
    }
    &msg[..end]
}

/// Whether a name can go on the wire (`NBD_REP_SERVER`, `NBD_INFO_NAME`).
fn valid_name(name: &str) -> bool {
    name.len() <= proto::MAX_STRING_LEN && !name.contains('\0')
}

/// The fixed newstyle negotiation. `Ok(None)`: the client ended it cleanly.
fn negotiate<D: BlockDev + 'static>(
    r: &mut impl Read,
    w: &mut impl Write,
    catalog: &dyn Catalog<D>,
    mut auth: Auth<'_>,
    ring: &LocalRing,
    config: &ServerConfig,
) -> Result<Option<Selected<D>>, ConnError> {
    w.write_all(&proto::encode_greeting(
        proto::FLAG_FIXED_NEWSTYLE | proto::FLAG_NO_ZEROES,
    ))?;
    let mut cf = [0u8; 4];
    if !read_frame(r, &mut cf)? {
        return Ok(None);
    }
    let client_flags = proto::decode_client_flags(&cf)?;
    let no_zeroes = client_flags & proto::FLAG_C_NO_ZEROES != 0;
    for _ in 0..config.max_options {
        let mut hb = [0u8; proto::OPTION_HEADER_LEN];
        if !read_frame(r, &mut hb)? {
            return Ok(None);
        }
        let h = proto::decode_option_header(&hb)?;
        let mut data = vec![0u8; h.len as usize];
        if !data.is_empty() && !read_frame(r, &mut data)? {
            return Err(io::Error::from(io::ErrorKind::UnexpectedEof).into());
        }
        let is_auth = matches!(
            h.option,
            proto::OPT_TIERBLK_AUTH_CHALLENGE | proto::OPT_TIERBLK_AUTH_PROOF
        );
        let decoded = if is_auth && auth.secret.is_none() {
            // No secret: our options are unknown, as to any plain server.
            Ok(ClientOption::Unsupported(h.option))
        } else {
            proto::decode_option(h.option, &data)
        };
        let opt = match decoded {
            Ok(o) => o,
            Err(e) if h.option == proto::OPT_EXPORT_NAME => return Err(e.into()),
            Err(e) if is_auth => {
                auth.fail(w, h.option, proto::REP_ERR_INVALID, &e.to_string())?;
                continue;
            }
            Err(e) => {
                tracing::debug!(option = h.option, error = %e, "NBD: invalid option");
                let msg = e.to_string();
                send_option_reply(w, h.option, proto::REP_ERR_INVALID, msg.as_bytes())?;
                continue;
            }
        };
        let selects = matches!(
            opt,
            ClientOption::ExportName(_)
                | ClientOption::List
                | ClientOption::Info(_)
                | ClientOption::Go(_)
                | ClientOption::Control(_)
        );
        if selects && !auth.authenticated {
            if h.option == proto::OPT_EXPORT_NAME {
                return Err(ConnError::Violation(
                    "NBD_OPT_EXPORT_NAME before authentication".into(),
                ));
            }
            tracing::debug!(option = h.option, "NBD: refused before authentication");
            send_option_reply(
                w,
                h.option,
                proto::REP_ERR_POLICY,
                b"authentication required (tierblk cluster secret)",
            )?;
            continue;
        }
        match opt {
            ClientOption::AuthChallenge => {
                let nonce = auth::nonce()?;
                auth.server_nonce = Some(nonce);
                send_option_reply(w, h.option, proto::REP_TIERBLK_AUTH, &nonce)?;
            }
            ClientOption::AuthProof(p) => {
                let (Some(secret), Some(sn)) = (auth.secret, auth.server_nonce.take()) else {
                    auth.fail(
                        w,
                        h.option,
                        proto::REP_ERR_INVALID,
                        "authentication proof without a challenge",
                    )?;
                    continue;
                };
                if secret.verify_client_proof(&sn, &p.client_nonce, &p.mac) {
                    auth.authenticated = true;
                    tracing::debug!("NBD: peer authenticated");
                    let proof = secret.server_proof(&sn, &p.client_nonce);
                    send_option_reply(w, h.option, proto::REP_TIERBLK_AUTH, &proof)?;
                } else {
                    auth.fail(
                        w,
                        h.option,
                        proto::REP_ERR_POLICY,
                        "authentication failed (wrong cluster secret?)",
                    )?;
                }
            }
            ClientOption::ExportName(name) => {
                let export = catalog.lookup(&name).map_err(|e| {
                    ConnError::Violation(format!(
                        "NBD_OPT_EXPORT_NAME for unknown export {name:?}: {e}"
                    ))
                })?;
                let dev = (export.factory)(ring).map_err(|e| {
                    ConnError::Violation(format!("export {name:?} unavailable: {e}"))
                })?;
                w.write_all(&proto::encode_export_name_reply(
                    export.size,
                    export.transmission_flags(),
                    no_zeroes,
                ))?;
                return Ok(Some(Selected { export, dev }));
            }
            ClientOption::Control(req) => match catalog.control(&req) {
                Ok(reply) if reply.len() + 4 <= proto::MAX_OPTION_REPLY_LEN as usize => {
                    send_option_reply(
                        w,
                        h.option,
                        proto::REP_TIERBLK_CONTROL,
                        &proto::encode_control(&reply),
                    )?;
                }
                Ok(reply) => {
                    let msg = format!("control reply of {} bytes is too long", reply.len());
                    send_option_reply(w, h.option, proto::REP_ERR_INVALID, msg.as_bytes())?;
                }
                Err(msg) => {
                    tracing::debug!(reason = %msg, "NBD: control request refused");
                    let msg = clip(&msg);
                    send_option_reply(w, h.option, proto::REP_ERR_INVALID, msg.as_bytes())?;
                }
            },
            ClientOption::Abort => {
                // The client may already have closed: ignore write errors.
                let _ = send_option_reply(w, h.option, proto::REP_ACK, &[]);
                return Ok(None);
            }
            ClientOption::List => {
                for name in catalog.list() {
                    if !valid_name(&name) {
                        tracing::warn!(name = %name.escape_debug(), "NBD: export name cannot be listed");
                        continue;
                    }
                    send_option_reply(
                        w,
                        h.option,
                        proto::REP_SERVER,
                        &proto::encode_rep_server(&name),
                    )?;
                }
                send_option_reply(w, h.option, proto::REP_ACK, &[])?;
            }
            ClientOption::Info(req) | ClientOption::Go(req) => {
                let go = h.option == proto::OPT_GO;
                let export = match catalog.lookup(&req.name) {
                    Ok(e) => e,
                    Err(msg) => {
                        tracing::debug!(export = %req.name, reason = %msg, "NBD: no such export");
                        let msg = clip(&msg);
                        send_option_reply(w, h.option, proto::REP_ERR_UNKNOWN, msg.as_bytes())?;
                        continue;
                    }
                };
                let dev = if go {
                    match (export.factory)(ring) {
                        Ok(d) => Some(d),
                        Err(e) => {
                            tracing::warn!(export = %export.name, error = %e, "NBD: export unavailable");
                            let msg = format!("export {:?} unavailable: {e}", export.name);
                            let msg = clip(&msg);
                            send_option_reply(w, h.option, proto::REP_ERR_UNKNOWN, msg.as_bytes())?;
                            continue;
                        }
                    }
                } else {
                    None
                };
                let mut infos = vec![
                    Info::Export {
                        size: export.size,
                        flags: export.transmission_flags(),
                    },
                    block_size_info(dev.as_ref()),
                ];
                if req.requests.contains(&proto::INFO_NAME) && valid_name(&export.name) {
                    infos.push(Info::Name(export.name.clone()));
                }
                if let (true, Some(d)) = (
                    req.requests.contains(&proto::INFO_DESCRIPTION),
                    &export.description,
                ) {
                    infos.push(Info::Description(d.clone()));
                }
                for i in &infos {
                    send_option_reply(w, h.option, proto::REP_INFO, &proto::encode_info(i))?;
                }
                send_option_reply(w, h.option, proto::REP_ACK, &[])?;
                if let Some(dev) = dev {
                    return Ok(Some(Selected { export, dev }));
                }
            }
            ClientOption::Unsupported(o) => {
                send_option_reply(w, o, proto::REP_ERR_UNSUP, b"option not supported")?;
            }
        }
    }
    Err(ConnError::Violation(format!(
        "more than {} options",
        config.max_options
    )))
}

/// Block size constraints advertised for an export: the instance's logical
/// block (512 when not instantiated yet), its physical block as preferred
/// size, and at most [`proto::MAX_REQUEST_LEN`] per request.
fn block_size_info<D: BlockDev>(dev: Option<&D>) -> Info {
    let (min, pref) = match dev {
        Some(d) => {
            let l = d.limits();
            let min = l.logical_block.clamp(1, 64 * 1024);
            let min = if min.is_power_of_two() { min } else { 512 };
            let pref = l.physical_block.max(min);
            let pref = if pref.is_power_of_two() { pref } else { min };
            (min, pref)
        }
        None => (512, 4096),
    };
    Info::BlockSize {
        min,
        preferred: pref,
        max: proto::MAX_REQUEST_LEN,
    }
}
