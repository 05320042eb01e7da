//! Storage processors as peers (spec sections III–V): what one `tierblkd`
//! serves to the others over the fabric, and how the master reaches the ALUs
//! that other processes own.
//!
//! Every SP owns the ALUs named on its command line and serves two kinds of
//! NBD export for them ([`ExportName`]):
//!
//! * `part:<alu uuid>:<start>:<len>` — a tier-1 partition object ([080]): a
//!   byte range of the ALU's data area, checked against the ALU's own
//!   directory, so a peer can never address the metadata region through it.
//!   Tier-2 objects in other SPs reach it through remote references
//!   ([0109]–[0110], `tierblk_stack::remote`).
//! * `alu:<generation>:<path>` — the whole ALU, for the master only: the
//!   master is the one writer of the object database ([062]) and reaches the
//!   metadata regions of ALUs it does not own through it ([`RemoteDisk`]).
//!   The master's generation is part of the name: an SP refuses a generation
//!   older than the newest it has seen, so a deposed master cannot open the
//!   ALUs again (fencing, as the export-name epoch that NBD lacks).
//!
//! Peers authenticate with the cluster secret (`tierblk_stack::nbd::auth`).
//! Heartbeats are `State` requests on the control channel, answered with an
//! [`SpView`]; `sp:<name>:<role>:<generation>` is also listed next to the
//! ALUs, so that `nbdinfo --list` tells who an SP is.

use std::collections::BTreeMap;
use std::fs::File;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{mpsc, Arc, Mutex};

use tierblk_fabric::server::Catalog;
use tierblk_fabric::Export;
use tierblk_meta::mdr::{Directory, BLOCK, DIR_OFFSET};
use tierblk_meta::{Disk, Uuid};
use tierblk_stack::nbd::auth::Secret;
use tierblk_stack::nbd::{NbdAddr, NbdDev};
use tierblk_stack::uring::LocalRing;
use tierblk_stack::{BlockDev, Partition, RemoteDesc, RemoteRef};

/// How long a metadata write waits for a path to a peer's ALU before it
/// fails (and the commit with it).
const METADATA_NO_PATH: std::time::Duration = std::time::Duration::from_secs(3);

/// A peer SP: its name and the endpoints it listens on (preferred first).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Peer {
    pub name: String,
    pub paths: Vec<NbdAddr>,
}

/// This SP's part in a cluster of peer processes.
#[derive(Clone, Debug)]
pub struct SpConfig {
    /// This SP's name (unique in the cluster).
    pub name: String,
    /// Where this SP serves its exports.
    pub listen: Vec<NbdAddr>,
    /// The other SPs.
    pub peers: Vec<Peer>,
    /// The cluster secret peers authenticate with.
    pub secret: Option<Arc<Secret>>,
    /// Where leadership comes from across machines; None: the rule
    /// ([`elect`]), for SPs on one machine.
    pub etcd: Option<crate::etcd::Etcd>,
}

/// Whether `s` is a usable SP name: what ALU paths are prefixed with.
pub fn valid_sp_name(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 32
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

/// `NAME=ENDPOINT[,ENDPOINT...]`, e.g. `sp2=unix:/run/sp2.sock,tcp:10.0.0.2:10809`.
pub fn parse_peer(s: &str) -> Result<Peer, String> {
    let (name, eps) = s
        .split_once('=')
        .ok_or_else(|| format!("peer {s:?}: expected NAME=ENDPOINT[,ENDPOINT...]"))?;
    if !valid_sp_name(name) {
        return Err(format!(
            "peer {s:?}: name must be 1-32 letters, digits, '-' or '_'"
        ));
    }
    let paths = eps
        .split(',')
        .map(str::parse)
        .collect::<Result<Vec<NbdAddr>, String>>()
        .map_err(|e| format!("peer {name}: {e}"))?;
    Ok(Peer {
        name: name.to_string(),
        paths,
    })
}

/// The name of an export an SP serves (see the module docs).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ExportName {
    /// A tier-1 partition: `len` bytes at `start` of ALU `alu`, for the
    /// master of generation `generation` (the SP exposing the volume).
    Part {
        generation: u64,
        alu: Uuid,
        start: u64,
        len: u64,
    },
    /// A whole ALU, for the master of generation `generation`.
    Alu { generation: u64, path: String },
    /// Who the SP is (listed, never opened).
    Sp {
        name: String,
        master: bool,
        generation: u64,
    },
}

impl std::fmt::Display for ExportName {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ExportName::Part {
                generation,
                alu,
                start,
                len,
            } => write!(f, "part:{generation}:{alu}:{start}:{len}"),
            ExportName::Alu { generation, path } => write!(f, "alu:{generation}:{path}"),
            ExportName::Sp {
                name,
                master,
                generation,
            } => write!(
                f,
                "sp:{name}:{}:{generation}",
                if *master { "master" } else { "peer" }
            ),
        }
    }
}

impl std::str::FromStr for ExportName {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        let bad = || format!("export {s:?}: not a tierblk export name");
        let num = |t: &str| t.parse::<u64>().map_err(|_| bad());
        if let Some(rest) = s.strip_prefix("part:") {
            let f: Vec<&str> = rest.split(':').collect();
            let [generation, alu, start, len] = f[..] else {
                return Err(bad());
            };
            let alu: Uuid = alu.parse().map_err(|_| bad())?;
            let (generation, start, len) = (num(generation)?, num(start)?, num(len)?);
            if len == 0 || start.checked_add(len).is_none() {
                return Err(bad());
            }
            return Ok(ExportName::Part {
                generation,
                alu,
                start,
                len,
            });
        }
        if let Some(rest) = s.strip_prefix("alu:") {
            let (g, path) = rest.split_once(':').ok_or_else(bad)?;
            if path.is_empty() {
                return Err(bad());
            }
            return Ok(ExportName::Alu {
                generation: num(g)?,
                path: path.to_string(),
            });
        }
        if let Some(rest) = s.strip_prefix("sp:") {
            let f: Vec<&str> = rest.split(':').collect();
            let [name, role, g] = f[..] else {
                return Err(bad());
            };
            let master = match role {
                "master" => true,
                "peer" => false,
                _ => return Err(bad()),
            };
            if !valid_sp_name(name) {
                return Err(bad());
            }
            return Ok(ExportName::Sp {
                name: name.to_string(),
                master,
                generation: num(g)?,
            });
        }
        Err(bad())
    }
}

/// One local ALU as the catalog serves it.
struct LocalAlu {
    file: Arc<File>,
    size: u64,
}

/// What an SP exports (a [`Catalog`] of the fabric server): partitions of
/// its ALUs' data areas, and the ALUs themselves to the current master.
pub struct SpCatalog {
    name: String,
    alus: BTreeMap<String, LocalAlu>,
    /// Highest master generation seen; older ones are refused and their
    /// open sessions cut.
    generation: Arc<AtomicU64>,
    /// Whether this SP is the master now (for the `sp:` entry).
    master: std::sync::atomic::AtomicBool,
    cluster: String,
    control: Mutex<Option<ControlHandler>>,
}

/// What answers control requests: the daemon, through its event loop.
pub type ControlHandler = Box<dyn Fn(&[u8]) -> Result<Vec<u8>, String> + Send>;

impl SpCatalog {
    /// Open every ALU path for I/O (paths that cannot be opened are skipped
    /// with a warning: they are reported by the store scan).
    pub fn new(name: &str, cluster: &str, paths: &[PathBuf]) -> SpCatalog {
        let mut alus = BTreeMap::new();
        for p in paths {
            match tierblk_stack::open_alu(p) {
                Ok(f) => {
                    let size = tierblk_meta::disk::FileDisk::open(p, false)
                        .map(|d| d.size())
                        .unwrap_or(0);
                    alus.insert(p.display().to_string(), LocalAlu { file: f, size });
                }
                Err(e) => tracing::warn!(alu = %p.display(), "cannot export: {e}"),
            }
        }
        SpCatalog {
            name: name.to_string(),
            alus,
            generation: Arc::new(AtomicU64::new(0)),
            master: Default::default(),
            cluster: cluster.to_string(),
            control: Mutex::new(None),
        }
    }

    /// Record that this SP is (or is no longer) the master of `generation`.
    pub fn set_role(&self, master: bool, generation: u64) {
        self.generation.fetch_max(generation, Ordering::SeqCst);
        self.master.store(master, Ordering::SeqCst);
    }

    /// Highest master generation seen.
    pub fn generation(&self) -> u64 {
        self.generation.load(Ordering::SeqCst)
    }

    /// This SP as its heartbeat reply describes it.
    pub fn view(&self) -> SpView {
        SpView {
            name: self.name.clone(),
            master: self.master.load(Ordering::SeqCst),
            generation: self.generation(),
            alus: self.alu_paths(),
        }
    }

    /// Paths of the ALUs this SP exports.
    pub fn alu_paths(&self) -> Vec<String> {
        self.alus.keys().cloned().collect()
    }

    /// The I/O handle of the local ALU whose uuid is `alu`.
    pub fn file_of(&self, alu: Uuid) -> Option<Arc<File>> {
        self.directory_of(alu).map(|(a, _)| a.file.clone())
    }

    /// Route control requests (`OPT_TIERBLK_CONTROL`) to `handler`.
    pub fn set_control(&self, handler: ControlHandler) {
        *self.control.lock().unwrap_or_else(|e| e.into_inner()) = Some(handler);
    }

    /// The directory of the local ALU whose uuid is `alu`, read now (an ALU
    /// claimed since start-up is found without a restart).
    fn directory_of(&self, alu: Uuid) -> Option<(&LocalAlu, Directory)> {
        self.located(alu).map(|(_, a, d)| (a, d))
    }

    /// [`SpCatalog::directory_of`] with the ALU's path.
    fn located(&self, alu: Uuid) -> Option<(&str, &LocalAlu, Directory)> {
        let mut buf = vec![0u8; BLOCK as usize];
        self.alus.iter().find_map(|(p, a)| {
            read_exact_at(&a.file, &mut buf, DIR_OFFSET).ok()?;
            let d = Directory::decode(&buf, DIR_OFFSET, a.size).ok()?;
            (d.alu_uuid == alu && d.cluster.name == self.cluster).then_some((p.as_str(), a, d))
        })
    }
}

/// Whether `[start, start + len)` is an allocated partition in the newest
/// valid copy of the ALU's label directory ([057]).
fn allocated(path: &str, d: &Directory, start: u64, len: u64) -> bool {
    use tierblk_meta::label::{LabelDir, STATE_ALLOCATED};
    let Ok(mut disk) = tierblk_meta::FileDisk::open(std::path::Path::new(path), false) else {
        return false;
    };
    let newest = d
        .label
        .iter()
        .filter_map(|&off| LabelDir::read(&mut disk, off, d.label_len).ok())
        .max_by_key(|l| l.seq);
    newest.is_some_and(|l| {
        l.entries
            .iter()
            .any(|e| e.state == STATE_ALLOCATED && e.start == start && e.len == len)
    })
}

fn read_exact_at(f: &File, buf: &mut [u8], off: u64) -> std::io::Result<()> {
    use std::os::unix::fs::FileExt;
    // O_DIRECT wants an aligned buffer: read through a fresh aligned one.
    let mut a = tierblk_stack::AlignedBuf::new(buf.len());
    f.read_exact_at(&mut a, off)?;
    buf.copy_from_slice(&a);
    Ok(())
}

impl Catalog<Partition<LocalRing>> for SpCatalog {
    fn list(&self) -> Vec<String> {
        let mut v = vec![ExportName::Sp {
            name: self.name.clone(),
            master: self.master.load(Ordering::SeqCst),
            generation: self.generation(),
        }
        .to_string()];
        // Listed with generation 0: the master substitutes its own.
        v.extend(self.alus.keys().map(|p| {
            ExportName::Alu {
                generation: 0,
                path: p.clone(),
            }
            .to_string()
        }));
        v
    }

    fn lookup(&self, name: &str) -> Result<Export<Partition<LocalRing>>, String> {
        match name.parse::<ExportName>()? {
            ExportName::Part {
                generation,
                alu,
                start,
                len,
            } => {
                self.admit(name, generation)?;
                let (path, a, d) = self.located(alu).ok_or_else(|| {
                    format!("{name}: no ALU {alu} of cluster {:?} here", self.cluster)
                })?;
                if start < d.data_start || start + len > d.data_end {
                    return Err(format!(
                        "{name}: outside the data area [{}, {}) of ALU {alu}",
                        d.data_start, d.data_end
                    ));
                }
                // Only tier-1 objects that exist are exported ([080]): the
                // range must be a partition allocated in the ALU's label
                // directory, not any byte range a peer asks for.
                if !allocated(path, &d, start, len) {
                    return Err(format!(
                        "{name}: no partition [{start}, +{len}) allocated on ALU {alu}"
                    ));
                }
                let file = a.file.clone();
                Ok(Export::new(name, len, move |ring: &LocalRing| {
                    Ok(Partition::new(file.clone(), start, len, ring.clone()))
                })
                .multi_conn(true)
                .valid_while(self.still_current(generation)))
            }
            ExportName::Alu { generation, path } => {
                let a = self
                    .alus
                    .get(&path)
                    .ok_or_else(|| format!("{name}: no ALU {path} here"))?;
                self.admit(name, generation)?;
                let (file, size) = (a.file.clone(), a.size);
                Ok(Export::new(name, size, move |ring: &LocalRing| {
                    Ok(Partition::new(file.clone(), 0, size, ring.clone()))
                })
                .multi_conn(true)
                .valid_while(self.still_current(generation)))
            }
            ExportName::Sp { .. } => Err(format!("{name}: not an export")),
        }
    }

    fn control(&self, request: &[u8]) -> Result<Vec<u8>, String> {
        match &*self.control.lock().unwrap_or_else(|e| e.into_inner()) {
            Some(h) => h(request),
            None => Err("no control channel here".into()),
        }
    }
}

impl SpCatalog {
    /// Fencing at the storage: a session of generation `generation` is
    /// admitted only if no newer master has been seen, and a newer one
    /// becomes the one to beat.
    fn admit(&self, name: &str, generation: u64) -> Result<(), String> {
        let seen = self.generation.fetch_max(generation, Ordering::SeqCst);
        if generation < seen || generation == 0 {
            tracing::warn!(generation, seen, export = %name, "refusing a stale master");
            return Err(format!(
                "{name}: stale master generation {generation} (this SP has seen {seen})"
            ));
        }
        if generation > seen {
            tracing::info!(generation, "a new master generation");
        }
        Ok(())
    }

    /// Whether sessions of `generation` may go on: checked before each
    /// request, so a deposed master's open sessions end (ESHUTDOWN) as soon
    /// as a newer master opens anything here.
    fn still_current(&self, generation: u64) -> impl Fn() -> bool + Send + Sync + 'static {
        let seen = self.generation.clone();
        move || seen.load(Ordering::Relaxed) <= generation
    }
}

/// One request to a [`RemoteDisk`]'s connection thread.
enum DiskOp {
    Read(u64, usize, mpsc::Sender<std::io::Result<Vec<u8>>>),
    Write(u64, Vec<u8>, mpsc::Sender<std::io::Result<Vec<u8>>>),
    Flush(mpsc::Sender<std::io::Result<Vec<u8>>>),
}

/// An ALU of another SP as the master's metadata store sees it: a
/// [`Disk`] over the peer's `alu:` export. Metadata I/O is small and rare,
/// so one connection on a thread of its own serves it synchronously.
pub struct RemoteDisk {
    size: u64,
    tx: Mutex<mpsc::Sender<DiskOp>>,
    /// Set once no path worked: later calls fail at once rather than wait
    /// again (the peer is gone until it answers a heartbeat and the master
    /// opens a new RemoteDisk).
    dead: std::sync::atomic::AtomicBool,
}

impl RemoteDisk {
    /// Connect to `export` over the first of `paths` that answers.
    pub fn open(
        paths: &[NbdAddr],
        export: &str,
        secret: Option<Arc<Secret>>,
    ) -> Result<RemoteDisk, String> {
        let (tx, rx) = mpsc::channel::<DiskOp>();
        let (ready_tx, ready_rx) = mpsc::channel();
        let (paths, export_name) = (paths.to_vec(), export.to_string());
        std::thread::Builder::new()
            .name("remote-alu".into())
            .spawn(move || {
                let ring = match LocalRing::new(8) {
                    Ok(r) => r,
                    Err(e) => {
                        let _ = ready_tx.send(Err(format!("cannot create a ring: {e}")));
                        return;
                    }
                };
                let mut why = Vec::new();
                let t = tierblk_stack::remote::CONNECT_TIMEOUT;
                let size = paths.iter().find_map(|p| {
                    match NbdDev::connect_timeout(p, &export_name, &ring, secret.as_deref(), t) {
                        Ok(d) => Some(d.size()),
                        Err(e) => {
                            why.push(format!("{p}: {e}"));
                            None
                        }
                    }
                });
                let Some(size) = size else {
                    let _ = ready_tx.send(Err(why.join("; ")));
                    return;
                };
                // Through a remote reference: a broken connection (the peer
                // restarted) is reopened, over another path if need be.
                let desc = RemoteDesc::new(export_name, size, paths, secret);
                let Ok(mut desc) = desc else {
                    let _ = ready_tx.send(Err("no path".into()));
                    return;
                };
                desc.no_path_timeout = METADATA_NO_PATH;
                let dev = RemoteRef::new(Arc::new(desc), &ring);
                let _ = ready_tx.send(Ok(size));
                let io = |r: tierblk_stack::IoResult<()>| {
                    r.map_err(|e| std::io::Error::from_raw_os_error(e.errno()))
                };
                for op in rx {
                    match op {
                        DiskOp::Read(off, len, reply) => {
                            let mut buf = tierblk_stack::AlignedBuf::new(len);
                            let r = io(ring.block_on(dev.read(off, &mut buf)));
                            let _ = reply.send(r.map(|()| buf.to_vec()));
                        }
                        DiskOp::Write(off, data, reply) => {
                            let buf = tierblk_stack::AlignedBuf::from_slice(&data);
                            let r = io(ring.block_on(dev.write(off, &buf, false)));
                            let _ = reply.send(r.map(|()| Vec::new()));
                        }
                        DiskOp::Flush(reply) => {
                            let r = io(ring.block_on(dev.flush()));
                            let _ = reply.send(r.map(|()| Vec::new()));
                        }
                    }
                }
            })
            .map_err(|e| format!("cannot start a thread: {e}"))?;
        let size = ready_rx
            .recv()
            .map_err(|_| "connection thread died".to_string())??;
        Ok(RemoteDisk {
            size,
            tx: Mutex::new(tx),
            dead: Default::default(),
        })
    }

    fn call(
        &self,
        op: impl FnOnce(mpsc::Sender<std::io::Result<Vec<u8>>>) -> DiskOp,
    ) -> std::io::Result<Vec<u8>> {
        if self.dead.load(Ordering::Relaxed) {
            return Err(std::io::Error::new(
                std::io::ErrorKind::NotConnected,
                "remote ALU unreachable (its SP stopped answering)",
            ));
        }
        let (reply, rx) = mpsc::channel();
        let sent = self
            .tx
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .send(op(reply));
        let lost =
            || std::io::Error::new(std::io::ErrorKind::BrokenPipe, "remote ALU connection lost");
        sent.map_err(|_| lost())?;
        let r = rx.recv().map_err(|_| lost())?;
        if r.as_ref()
            .is_err_and(|e| e.raw_os_error() == Some(libc::EIO))
        {
            self.dead.store(true, Ordering::Relaxed);
        }
        r
    }
}

impl Disk for RemoteDisk {
    fn size(&self) -> u64 {
        self.size
    }

    fn read_at(&mut self, offset: u64, buf: &mut [u8]) -> std::io::Result<()> {
        let data = self.call(|r| DiskOp::Read(offset, buf.len(), r))?;
        buf.copy_from_slice(&data);
        Ok(())
    }

    fn write_at(&mut self, offset: u64, buf: &[u8]) -> std::io::Result<()> {
        self.call(|r| DiskOp::Write(offset, buf.to_vec(), r))
            .map(|_| ())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.call(DiskOp::Flush).map(|_| ())
    }
}

/// What one SP says about itself (its heartbeat reply, and its
/// `NBD_OPT_LIST` for standard tools).
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct SpView {
    pub name: String,
    pub master: bool,
    pub generation: u64,
    /// ALU paths it owns.
    pub alus: Vec<String>,
}

/// What the election rule says this SP should do.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Decision {
    /// Be the master of this generation (newly, or still).
    Lead(u64),
    /// `name` is, or is about to become, the master.
    Follow(String),
}

/// The election rule ([069], [062]) over this SP and the peers that answer:
/// an incumbent master keeps the role (the one of the newest generation when
/// two claim it: the other was deposed while it could not see); with no
/// master, the SP with the most ALUs, then the lowest name, takes over with a
/// generation above every one seen. Every SP evaluates the same rule over
/// the same views, so they agree without a vote; across machines, where
/// views may differ, the election comes from etcd instead.
pub fn elect(me: &SpView, peers: &[SpView]) -> Decision {
    let all = || std::iter::once(me).chain(peers.iter());
    if let Some(m) = all().filter(|v| v.master).max_by_key(|v| v.generation) {
        return if m.name == me.name {
            Decision::Lead(m.generation)
        } else {
            Decision::Follow(m.name.clone())
        };
    }
    let top = all().max_by(|a, b| {
        a.alus
            .len()
            .cmp(&b.alus.len())
            .then_with(|| b.name.cmp(&a.name))
    });
    let newest = all().map(|v| v.generation).max().unwrap_or(0);
    match top {
        Some(t) if t.name != me.name => Decision::Follow(t.name.clone()),
        _ => Decision::Lead(newest + 1),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn export_names_round_trip_and_garbage_is_refused() {
        let u: Uuid = "00112233-4455-6677-8899-aabbccddeeff".parse().unwrap();
        for n in [
            ExportName::Part {
                generation: 2,
                alu: u,
                start: 8 << 20,
                len: 4096,
            },
            ExportName::Alu {
                generation: 7,
                path: "/var/lib/x:y.img".into(),
            },
            ExportName::Sp {
                name: "sp-1".into(),
                master: true,
                generation: 3,
            },
        ] {
            assert_eq!(n.to_string().parse::<ExportName>().unwrap(), n);
        }
        for bad in [
            "",
            "part:",
            "part:xyz:1:2",
            "part:1:00112233-4455-6677-8899-aabbccddeeff:1",
            "part:00112233-4455-6677-8899-aabbccddeeff:1:2",
            "part:1:00112233-4455-6677-8899-aabbccddeeff:1:0",
            "part:1:00112233-4455-6677-8899-aabbccddeeff:18446744073709551615:2",
            "alu:x:/dev/vdb",
            "alu:1:",
            "sp:a:boss:1",
            "sp:a b:master:1",
            "disk",
        ] {
            assert!(bad.parse::<ExportName>().is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn peers_parse() {
        let p = parse_peer("sp2=unix:/run/a.sock,tcp:127.0.0.1:10809").unwrap();
        assert_eq!(p.name, "sp2");
        assert_eq!(p.paths.len(), 2);
        for bad in ["sp2", "=unix:/a", "sp 2=unix:/a", "sp2=", "sp2=unix:/a,,"] {
            assert!(parse_peer(bad).is_err(), "{bad:?} accepted");
        }
    }

    fn view(name: &str, master: bool, generation: u64, alus: usize) -> SpView {
        SpView {
            name: name.into(),
            master,
            generation,
            alus: (0..alus).map(|i| format!("/a{i}")).collect(),
        }
    }

    #[test]
    fn election_by_rule() {
        // No master: most ALUs wins, then the lowest name; the generation is
        // above every one seen.
        let me = view("b", false, 4, 2);
        assert_eq!(
            elect(&me, &[view("a", false, 1, 2)]),
            Decision::Follow("a".into())
        );
        assert_eq!(elect(&me, &[view("a", false, 1, 1)]), Decision::Lead(5));
        assert_eq!(
            elect(&me, &[view("a", false, 9, 1), view("c", false, 0, 3)]),
            Decision::Follow("c".into())
        );
        assert_eq!(elect(&me, &[]), Decision::Lead(5));
        // An incumbent keeps the role even if the rule would pick another.
        assert_eq!(
            elect(&view("z", false, 0, 9), &[view("y", true, 3, 0)]),
            Decision::Follow("y".into())
        );
        assert_eq!(
            elect(&view("y", true, 3, 0), &[view("z", false, 3, 9)]),
            Decision::Lead(3)
        );
        // Two masters: the newer generation wins, the older steps down.
        assert_eq!(
            elect(&view("a", true, 2, 5), &[view("b", true, 3, 1)]),
            Decision::Follow("b".into())
        );
        assert_eq!(
            elect(&view("b", true, 3, 1), &[view("a", true, 2, 5)]),
            Decision::Lead(3)
        );
    }
}
