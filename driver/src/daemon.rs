//! The embedded default: one process that is storage processor, master and
//! coordinator at once (spec section IV, [066]–[095]).
//!
//! Start-up follows the spec's order: scan the ALUs ([066]); ALUs without our
//! signature go to the not-owned pool and are never written ([067]); load the
//! object database and build the system image ([072]–[073]); build each
//! volume's stack offline ([092]); bring the volumes that are complete online
//! and leave the others offline with the reason ([094]–[095]).

mod cluster;
mod expose;
mod fence;
mod intent;
mod legacy;
mod meta;
mod remote;
mod reshape;
mod snap;

use crate::events::EventLog;
use crate::jobs::{self, Work};
use crate::planner::{self, Candidate};
use crate::proto::{
    AluView, JobView, LayoutSpec, MemberView, OpStatsView, PartitionView, Payload, Request,
    SegmentView, StatsView, VolumeView,
};
use crate::size::format_size;
use crate::stats;
use crate::top::{Snapshots, TopDesc, TopSlot};
use crate::ublk::{self, Exposed, VolumeSpec};
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fs::File;
use std::path::PathBuf;
use std::sync::mpsc;
use std::sync::Arc;
use std::time::Duration;
use tierblk_meta::{
    AluState, AluStatus, ClusterImage, Job, JobKind, JobState, Layout, LayoutKind, MemberHealth,
    MetaError, Store, Uuid, VolumeDef,
};
use tierblk_meta::{Disk, FileDisk};
use tierblk_stack::gate::Gate;
use tierblk_stack::mirror::MirrorHealth;
use tierblk_stack::volume::{Layout as StackLayout, MemberDesc, VolumeDesc};
use tierblk_stack::Piece;
use tracing::{debug, error, info, warn};

/// Something a volume's data path tells the daemon, off the hot path.
pub enum Event {
    /// A mirror leg failed with `errno`; `done` is answered once the failure
    /// is persisted, so the write that found it completes only afterwards
    /// (a leg that missed a write must never be trusted at reassembly).
    LegFailed {
        volume: String,
        member: u16,
        errno: i32,
        /// The peer that found it (it waits for this SP's answer), if not
        /// this SP.
        from: Option<String>,
        done: mpsc::Sender<()>,
    },
    /// A job reached a checkpoint worth persisting.
    JobProgress { id: u64, checkpoint: u64 },
    /// A job's thread ended.
    JobEnded {
        id: u64,
        run: u64,
        outcome: jobs::Outcome,
    },
    /// An inventory round: (path, ALU, error) of the ALUs that answered
    /// with an I/O error.
    Inventory(Vec<(String, Uuid, String)>),
    /// One round of heartbeats: each peer's answer, or why it gave none.
    Peers(Vec<(String, Result<crate::sp::SpView, String>)>),
    /// A control request from a peer, answered on `reply`.
    Control(expose::ControlRequest, mpsc::Sender<Result<String, String>>),
    /// What etcd says about the master election (with `--etcd`).
    Leadership(crate::etcd::Leadership),
    /// Time passed: run the snapshot schedules that are due.
    Tick,
    /// Rebuild `volume`'s trees without a failed part, once the requests
    /// that found the failure have their answer (`reshape::reconfigure`).
    Reconfigure { volume: String, why: String },
}

/// How often the schedules are looked at.
const TICK: Duration = Duration::from_secs(1);

/// How long a queue thread waits for a leg failure to be persisted before it
/// completes the write anyway (the failure stays in memory).
const PERSIST_WAIT: Duration = Duration::from_secs(10);

/// What the daemon was told on its command line and in its config file.
#[derive(Debug, Clone)]
pub struct Config {
    pub cluster: String,
    pub alus: Vec<PathBuf>,
    pub socket: PathBuf,
    pub queues: u16,
    pub depth: u16,
    /// Keep each ublk queue thread on its hardware queue's CPUs
    /// ([`VolumeSpec::pin_queues`]).
    pub pin_queues: bool,
    /// Let the ublk queues' I/O buffers be in transparent huge pages
    /// ([`VolumeSpec::huge_buffers`]).
    pub huge_buffers: bool,
    /// Serve requests with zero copy where the kernel and the tree allow
    /// ([`VolumeSpec::zero_copy`]).
    pub zero_copy: bool,
    /// Re-add a failed ALU that appears again without asking ([0174]).
    pub auto_reclaim: bool,
    /// This daemon as one SP among peers; None: the embedded default.
    pub sp: Option<crate::sp::SpConfig>,
}

/// What an exposed volume's runtime holds: its device, its tree, its
/// mirrors' health and its gate.
type OnlineParts = (
    Exposed,
    Arc<VolumeDesc>,
    Vec<Arc<MirrorHealth>>,
    Arc<Gate>,
    Arc<TopSlot>,
);

/// A volume's runtime state (the driver state machine's top level).
enum Runtime {
    /// Built but not exposed: by an administrator, or because a piece is
    /// missing (`reason`).
    Offline { reason: Option<String> },
    Online {
        exposed: Exposed,
        /// The tree every queue (and every job) builds its instance from.
        desc: Arc<VolumeDesc>,
        /// One per mirror, shared with every queue thread of the volume.
        health: Vec<Arc<MirrorHealth>>,
        /// Suspends the volume's host I/O (taking a snapshot, reloading).
        gate: Arc<Gate>,
        /// The tree the queues serve; reloaded under the gate to change the
        /// volume's shape online.
        slot: Arc<TopSlot>,
    },
    /// Exposed on other SPs only: the master keeps the volume's tree
    /// (mirror healths, bitmaps, leg slots; no device) for its jobs
    /// (`remote`).
    Remote {
        /// Where it is exposed, shown as the reason it is offline here.
        reason: String,
        desc: Arc<VolumeDesc>,
        health: Vec<Arc<MirrorHealth>>,
        /// No host I/O passes it: suspending it only marks the volume
        /// quiesced (its jobs stay stopped until `resume`).
        gate: Arc<Gate>,
    },
}

pub struct Daemon {
    cfg: Config,
    store: Store,
    /// Paths that could not be opened at all, with the error.
    missing: BTreeMap<String, String>,
    runtime: BTreeMap<String, Runtime>,
    /// Data-path file handles, one per ALU, shared by every queue thread.
    files: HashMap<Uuid, Arc<File>>,
    events: mpsc::Sender<Event>,
    /// Jobs whose thread is running, by job id.
    jobs: BTreeMap<u64, jobs::Runner>,
    /// Snapshot sets by origin volume id, shared with the origin's queues
    /// whether it is online or not.
    snapsets: HashMap<u64, Arc<Snapshots>>,
    /// Snapshots whose store could not be opened (snapshot volume id, why):
    /// their origin stays offline, since its writes could not be copied.
    snap_problems: BTreeMap<u64, snap::SnapProblem>,
    /// Online mirrors with write-intent bitmaps, for the sweeper thread.
    sweep: intent::SweepList,
    /// Online volumes' I/O statistics, shared with the metrics endpoint.
    stats: stats::Registry,
    /// Volumes an administrator quiesced (`vol quiesce`): their host I/O is
    /// held at the gate until `vol resume` drops the guard.
    quiesced: HashMap<String, tierblk_stack::gate::Suspended>,
    /// Spans of mirrors this SP holds its writes off for the master's jobs,
    /// by (volume, mirror) (see `fence`).
    fences: BTreeMap<(String, u16), fence::Held>,
    /// What happened, for `tierblk events`.
    log: Arc<EventLog>,
    /// The SP side when peers are configured (`--sp`).
    cluster: Option<cluster::Cluster>,
    /// On a peer: the volumes the master assigned to it, by name.
    assigned: BTreeMap<String, expose::Assigned>,
    /// On a peer: the SP owning each ALU under an assigned volume.
    owners: HashMap<Uuid, String>,
    /// Ticks since start (the periodic scan).
    ticks: u64,
    /// An inventory round is running.
    inventory_busy: Arc<std::sync::atomic::AtomicBool>,
}

/// Ticks between two inventories of the owned ALUs ([0168]).
const INVENTORY_TICKS: u64 = 10;

/// Ticks between two looks for missing ALUs that appeared ([0172]).
const SCAN_TICKS: u64 = 5;

/// How long `vol quiesce` waits for in-flight I/O to complete.
const QUIESCE_TIMEOUT: Duration = Duration::from_secs(30);

/// Disks by path, as the store opens them.
type Disks = Vec<(String, Box<dyn Disk>)>;

/// Open every ALU path once (repeats ignored); the ones that cannot be opened
/// are returned with why.
fn open_disks(alus: &[PathBuf]) -> (Disks, BTreeMap<String, String>) {
    let mut disks: Disks = Vec::new();
    let mut missing = BTreeMap::new();
    for p in alus {
        let path = p.display().to_string();
        if disks.iter().any(|(d, _)| *d == path) {
            continue;
        }
        match open_disk(&path) {
            Ok(d) => disks.push((path, d)),
            Err(e) => {
                warn!("{e}");
                missing.insert(path, e);
            }
        }
    }
    (disks, missing)
}

/// Open the object database over `disks`, repairing what it may and
/// logging what it repaired and what is wrong.
fn open_store(disks: Disks, cluster: &str) -> Result<Store, String> {
    let (store, report) = Store::open(disks, Some(cluster), true)
        .map_err(|e| format!("cannot open the object database: {e}"))?;
    for r in &report.repairs {
        warn!("repaired: {r}");
    }
    for p in &report.problems {
        error!("{p}");
    }
    Ok(store)
}

fn open_disk(path: &str) -> Result<Box<dyn Disk>, String> {
    FileDisk::open(std::path::Path::new(path), true)
        .map(|d| Box::new(d) as Box<dyn Disk>)
        .map_err(|e| format!("alu {path}: cannot open: {e}"))
}

impl Daemon {
    /// Scan the ALUs, open the object database, and bring complete volumes online.
    pub fn start(cfg: Config, events: mpsc::Sender<Event>) -> Result<Daemon, String> {
        // An SP among peers opens the object database only once elected
        // master (cluster.rs); until then it owns no store.
        let standalone = cfg.sp.is_none();
        let (disks, missing) = if standalone {
            open_disks(&cfg.alus)
        } else {
            Default::default()
        };
        let store = open_store(disks, &cfg.cluster)?;
        let cluster = match &cfg.sp {
            Some(sp) => Some(cluster::Cluster::start(
                sp.clone(),
                &cfg.cluster,
                &cfg.alus,
                events.clone(),
            )?),
            None => None,
        };
        let mut d = Daemon {
            cfg,
            store,
            missing,
            runtime: BTreeMap::new(),
            files: HashMap::new(),
            events,
            jobs: BTreeMap::new(),
            snapsets: HashMap::new(),
            snap_problems: BTreeMap::new(),
            sweep: Default::default(),
            stats: Default::default(),
            quiesced: HashMap::new(),
            fences: BTreeMap::new(),
            log: Arc::new(EventLog::default()),
            cluster,
            assigned: BTreeMap::new(),
            owners: HashMap::new(),
            ticks: 0,
            inventory_busy: Default::default(),
        };
        intent::spawn_sweeper(d.sweep.clone())
            .map_err(|e| format!("cannot start the write-intent sweeper: {e}"))?;
        let ticks = d.events.clone();
        std::thread::Builder::new()
            .name("ticker".into())
            .spawn(move || {
                while ticks.send(Event::Tick).is_ok() {
                    std::thread::sleep(TICK);
                }
            })
            .map_err(|e| format!("cannot start the schedule ticker: {e}"))?;
        if standalone {
            d.activate();
        }
        Ok(d)
    }

    /// With the object database open: resync what an unclean stop left,
    /// load the snapshots and bring every complete volume online.
    fn activate(&mut self) {
        for s in self.store.alus() {
            info!(alu = %s.path, state = %state_name(&s.state), "scanned");
        }
        if self.store.dirty() {
            // Queued before anything comes online, so that each mirror's
            // bitmap is loaded as needing it.
            self.resync_after_unclean_stop();
        }
        self.load_snapshots();
        // Origins first: a snapshot view reads through its origin's tree.
        let mut vols = self.image_volumes();
        vols.sort_by_key(|v| v.snapshot.is_some());
        for v in vols {
            let name = v.name.clone();
            // A snapshot may already be online: it follows its origin.
            self.runtime
                .entry(name.clone())
                .or_insert(Runtime::Offline { reason: None });
            // A snapshot is exposed where its origin is.
            let origin = v.snapshot.and_then(|s| self.volume_by_id(s.origin));
            let placed = origin.as_ref().unwrap_or(&v);
            if !self.exposed_here(placed) {
                if v.snapshot.is_some() {
                    let on = self.exposed_on(placed).join(", ");
                    self.runtime.insert(
                        name,
                        Runtime::Offline {
                            reason: Some(format!("exposed on sp {on}")),
                        },
                    );
                } else {
                    // The master runs its jobs all the same.
                    self.hold_remote(&v, false);
                    self.start_jobs_of(&v);
                }
                continue;
            }
            if let Err(e) = self.online(&name) {
                error!("{e}");
            }
        }
        self.resume_rollbacks();
        self.legacy_online_all();
    }

    fn image_volumes(&self) -> Vec<VolumeDef> {
        let mut v = self
            .store
            .image()
            .map(|i| i.volumes.clone())
            .unwrap_or_default();
        v.extend(self.assigned_volumes());
        v
    }

    fn volume(&self, name: &str) -> Result<VolumeDef, String> {
        self.image_volumes()
            .into_iter()
            .find(|v| v.name == name)
            .ok_or_else(|| format!("volume {name}: not found"))
    }

    /// Handle one control request.
    pub fn handle(&mut self, req: Request) -> Result<Payload, String> {
        if !req.read_only() {
            self.require_master()?;
        }
        let req = self.own_paths(req);
        match req {
            Request::SpList => Ok(Payload::Sps(self.sp_views())),
            Request::VolAddLeg { name, alu, rate } => self.add_leg(&name, &alu, rate),
            Request::VolRemoveLeg { name, member, alu } => {
                self.remove_leg(&name, member, alu.as_deref())
            }
            Request::VolMove {
                name,
                to,
                member,
                from,
                rate,
            } => self.move_member(&name, &to, member, from.as_deref(), rate),
            Request::VolExtend { name, add, alus } => self.extend(&name, add, &alus),
            Request::VolExpose { name, sp } => self.expose(&name, &sp),
            Request::VolUnexpose { name, sp } => self.unexpose(&name, &sp),
            Request::PathList => Ok(Payload::Paths(self.path_views())),
            Request::AluList => Ok(Payload::Alus(self.alu_views())),
            Request::AluShow { path } => self
                .alu_views()
                .into_iter()
                .find(|a| a.path == path)
                .map(Payload::Alu)
                .ok_or_else(|| format!("alu {path}: unknown (not scanned by this daemon)")),
            Request::AluScan => self.rescan().map(|()| Payload::Alus(self.alu_views())),
            Request::AluClaim { path, force } => self.claim(&path, force),
            Request::AluRelease { path } => self.release(&path),
            Request::AluFail { path } => self.fail_alu(&path),
            Request::AluReplace { old, new, rate } => self.replace(&old, &new, rate),
            Request::AluReadd { path, rate } => self.readd(&path, rate),
            Request::VolScrub { name, repair, rate } => self.scrub(&name, repair, rate),
            Request::JobList => Ok(Payload::Jobs(
                self.store.jobs().iter().map(|j| self.job_view(j)).collect(),
            )),
            Request::JobShow { id } => self.job(id).map(|j| Payload::Job(self.job_view(&j))),
            Request::JobCancel { id } => self.cancel_job(id),
            Request::JobResume { id } => self.resume_job(id),
            Request::VolCreate {
                name,
                size,
                alus,
                layout,
            } => self.create(&name, size, &alus, &layout),
            Request::VolList => Ok(Payload::Volumes(
                self.image_volumes()
                    .iter()
                    .map(|v| self.volume_view(v))
                    .chain(self.legacy_views())
                    .collect(),
            )),
            Request::VolShow { name } => {
                if let Some(v) = self.legacy_view_of(&name) {
                    return Ok(Payload::Volume(v));
                }
                let v = self.volume(&name)?;
                Ok(Payload::Volume(self.volume_view(&v)))
            }
            Request::VolRemove { name } => self.remove(&name),
            Request::VolOnline { name } if self.is_legacy(&name) => {
                self.online_legacy(&name)?;
                self.legacy_view_of(&name)
                    .map(Payload::Volume)
                    .ok_or_else(|| format!("volume {name}: not found"))
            }
            Request::VolOffline { name } if self.is_legacy(&name) => {
                self.offline(&name)?;
                self.legacy_view_of(&name)
                    .map(Payload::Volume)
                    .ok_or_else(|| format!("volume {name}: not found"))
            }
            Request::AluAdopt { path, name } => self.adopt(&path, &name),
            Request::VolQuiesce { name } => self.quiesce(&name),
            Request::Events { .. } => Ok(Payload::Events(self.log.recent())),
            Request::VolResume { name } => self.resume(&name),
            Request::VolOnline { name } => {
                self.volume(&name)?;
                self.online(&name)?;
                let v = self.volume(&name)?;
                Ok(Payload::Volume(self.volume_view(&v)))
            }
            Request::VolOffline { name } => {
                self.volume(&name)?;
                if let Some(Runtime::Remote { reason, .. }) = self.runtime.get(&name) {
                    return Err(format!(
                        "volume {name}: not exposed on this SP ({reason}): `tierblk vol unexpose {name} --on SP` there"
                    ));
                }
                self.offline(&name)?;
                let v = self.volume(&name)?;
                Ok(Payload::Volume(self.volume_view(&v)))
            }
            Request::SnapCreate {
                volume,
                name,
                size,
                chunk,
            } => self.snap_create(&volume, &name, size, chunk),
            Request::SnapList { volume } => self.snap_list(volume.as_deref()),
            Request::SnapRemove { name } => self.snap_remove(&name),
            Request::SnapRollback { name, rate } => self.snap_rollback(&name, rate),
            Request::SnapSchedule {
                volume,
                every,
                keep,
                size,
            } => self.snap_schedule(&volume, every, keep, size),
            Request::SnapUnschedule { volume } => self.snap_unschedule(&volume),
            Request::SnapSchedules => Ok(Payload::Schedules(self.schedule_views())),
            Request::Stats { volume } => self.stats_views(volume.as_deref()),
            Request::MetaHistory => self.meta_history(),
            Request::MetaDump { seq } => self.meta_dump(seq),
            Request::MetaRestore { seq, force } => self.meta_restore(seq, force),
        }
    }

    /// Take every volume offline (SIGTERM): the kernel flushes each device
    /// as it is stopped.
    pub fn shutdown(&mut self) {
        // Held I/O completes before the devices stop.
        self.quiesced.clear();
        let names: Vec<String> = self.runtime.keys().cloned().collect();
        for name in &names {
            self.stop_jobs_of(name);
        }
        let mut clean = true;
        for name in names {
            if let Err(e) = self.offline(&name) {
                error!("{e}");
                clean = false;
            }
        }
        if clean {
            match self.store.set_dirty(false) {
                Ok(()) => info!("clean stop recorded"),
                Err(e) => warn!("cannot record the clean stop: {e}"),
            }
        }
    }

    /// The registry of online volumes' statistics (for the metrics endpoint).
    pub fn stats_registry(&self) -> stats::Registry {
        self.stats.clone()
    }

    fn stats_views(&self, volume: Option<&str>) -> Result<Payload, String> {
        if let Some(n) = volume {
            self.volume(n)?;
        }
        let reg = self.stats.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(n) = volume.filter(|n| !reg.contains_key(*n)) {
            return Err(format!("volume {n}: offline: no statistics"));
        }
        Ok(Payload::Stats(
            reg.iter()
                .filter(|(n, _)| volume.is_none_or(|v| v == n.as_str()))
                .map(|(n, s)| {
                    let t = s.totals();
                    let spans = s.buffers();
                    StatsView {
                        buffer_bytes: spans.iter().map(|(_, len)| *len as u64).sum(),
                        buffer_resident: ublk::resident_bytes(&spans),
                        volume: n.clone(),
                        ops: stats::OPS
                            .iter()
                            .zip(&t.ops)
                            .map(|(op, o)| OpStatsView {
                                op: op.to_string(),
                                count: o.count,
                                bytes: o.bytes,
                                errors: o.errors,
                                p50_us: o.quantile_us(0.5),
                                p99_us: o.quantile_us(0.99),
                                latency_buckets: o.latency.to_vec(),
                            })
                            .collect(),
                    }
                })
                .collect(),
        ))
    }

    fn problem_of(&self, name: &str) -> Option<String> {
        self.store
            .volume_problems()
            .into_iter()
            .find(|(n, _)| n == name)
            .map(|(_, why)| why)
    }

    fn data_file(&mut self, alu: Uuid) -> Result<Arc<File>, String> {
        if let Some(f) = self.files.get(&alu) {
            return Ok(f.clone());
        }
        let path = self
            .store
            .path_of(alu)
            .ok_or_else(|| format!("alu {alu}: not present"))?
            .to_string();
        let f = tierblk_stack::partition::open_alu(std::path::Path::new(&path))
            .map_err(|e| format!("alu {path}: cannot open for I/O: {e}"))?;
        self.files.insert(alu, f.clone());
        Ok(f)
    }

    /// Build the volume's stack and expose it; a volume with a problem stays
    /// offline and remembers why ([094]).
    fn online(&mut self, name: &str) -> Result<(), String> {
        match self.runtime.get(name) {
            Some(Runtime::Online { .. }) => return Ok(()),
            // Its jobs ran on the tree kept for them: they go on over the
            // exposed one.
            Some(Runtime::Remote { .. }) => self.stop_jobs_of(name),
            _ => {}
        }
        let v = self.volume(name)?;
        // From the first volume online until a clean stop, mirror legs may
        // miss in-flight writes if the daemon dies: say so on disk first
        // (the master's business for a volume assigned to this peer).
        if !self.assigned.contains_key(name) {
            if let Err(e) = self.store.set_dirty(true) {
                warn!("cannot mark the cluster in use: {e}");
            }
        }
        let r = self.bring_online(&v);
        self.record_online(name, r)?;
        self.start_jobs_of(&v);
        self.views_follow(&v);
        Ok(())
    }

    /// Record how bringing `name` online went: online, or offline with why.
    fn record_online(&mut self, name: &str, r: Result<OnlineParts, String>) -> Result<(), String> {
        match r {
            Ok((exposed, desc, health, gate, slot)) => {
                self.log.emit("volume-online", Some(name), exposed.device());
                self.sweep_list_set(name, Some(&health));
                self.runtime.insert(
                    name.to_string(),
                    Runtime::Online {
                        exposed,
                        desc,
                        health,
                        gate,
                        slot,
                    },
                );
                Ok(())
            }
            Err(e) => {
                self.log.emit("volume-offline", Some(name), e.clone());
                self.runtime.insert(
                    name.to_string(),
                    Runtime::Offline {
                        reason: Some(e.clone()),
                    },
                );
                Err(e)
            }
        }
    }

    /// The event log (for the control socket's `events --follow`).
    pub fn event_log(&self) -> Arc<EventLog> {
        self.log.clone()
    }

    fn bring_online(&mut self, v: &VolumeDef) -> Result<OnlineParts, String> {
        if let Some(p) = self.problem_of(&v.name) {
            return Err(format!("volume {}: held offline: {p}", v.name));
        }
        if let Some(why) = self.held_by_snapshots(v) {
            return Err(format!("volume {}: held offline: {why}", v.name));
        }
        let (desc, health) = self.assemble(v)?;
        if ublk::available() {
            self.fail_absent_legs(v)?;
        }
        let desc = Arc::new(desc);
        let top = match v.snapshot {
            Some(_) => self.view_top(v, desc.clone())?,
            None => TopDesc::Origin {
                desc: desc.clone(),
                snapshots: self.snapset(v.id),
            },
        };
        let (exposed, gate, slot) = self.expose_top(&v.name, &v.wwn, top)?;
        Ok((exposed, desc, health, gate, slot))
    }

    /// A mirror about to serve writes without a leg whose ALU is missing
    /// records that leg failed first (as MD records a missing member in the
    /// superblocks of the ones it assembles): should the ALU come back at a
    /// later start, its stale copy is never read as current. It returns
    /// through `alu readd`, which copies only what its bitmap marks
    /// ([0172]–[0174]).
    fn fail_absent_legs(&mut self, v: &VolumeDef) -> Result<(), String> {
        if self.assigned.contains_key(&v.name) || v.mirror_count() == 0 {
            return Ok(());
        }
        let present: Vec<Uuid> = self.owned_alus().into_iter().map(|(_, u)| u).collect();
        let mut absent: Vec<Uuid> = Vec::new();
        for (m, h) in v.members.iter().enumerate() {
            if *h != MemberHealth::Ok {
                continue;
            }
            for s in v.segments.iter().filter(|s| usize::from(s.member) == m) {
                if !present.contains(&s.alu) && !absent.contains(&s.alu) {
                    absent.push(s.alu);
                }
            }
        }
        for alu in absent {
            warn!(volume = %v.name, %alu, "a mirror leg's ALU is missing: recording the leg failed before serving writes");
            self.fail_alu_uuid(alu, None).map_err(|e| {
                format!(
                    "volume {}: cannot record the missing ALU {alu} failed: {e}",
                    v.name
                )
            })?;
        }
        Ok(())
    }

    /// Expose `top` as `/dev/ublkbN` behind a new gate, with its statistics
    /// registered.
    fn expose_top(
        &mut self,
        name: &str,
        wwn: &[u8; 16],
        top: TopDesc,
    ) -> Result<(Exposed, Arc<Gate>, Arc<TopSlot>), String> {
        if !ublk::available() {
            return Err(format!(
                "volume {name}: cannot expose: /dev/ublk-control missing (load the ublk_drv module)"
            ));
        }
        let gate = Gate::new();
        let stats = Arc::new(stats::VolumeStats::default());
        let slot = TopSlot::new(top);
        let exposed = ublk::expose(VolumeSpec {
            name: name.to_string(),
            wwn: hex(wwn),
            top: slot.clone(),
            gate: gate.clone(),
            stats: stats.clone(),
            queues: self.cfg.queues,
            depth: self.cfg.depth,
            pin_queues: self.cfg.pin_queues,
            huge_buffers: self.cfg.huge_buffers,
            zero_copy: self.cfg.zero_copy,
        })
        .map_err(|e| e.to_string())?;
        self.stats
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(name.to_string(), stats);
        Ok((exposed, gate, slot))
    }

    /// The volume's tree as every queue and job instantiates it, with one
    /// shared health record per mirror.
    fn assemble(&mut self, v: &VolumeDef) -> Result<(VolumeDesc, Vec<Arc<MirrorHealth>>), String> {
        let degraded: Vec<u16> = match self.assigned.get(&v.name) {
            Some(a) => a.degraded.clone(),
            None => self
                .store
                .degraded_members(&v.name)
                .into_iter()
                .map(|(m, _)| m)
                .collect(),
        };
        let mut members = Vec::with_capacity(v.members.len());
        for m in 0..v.member_count() as u16 {
            // A failed mirror leg is never read or written again: the tree
            // leaves its device out altogether (claims 8 and 18 of 003_...),
            // so the descriptor of a dead disk closes with the tree that
            // found it dead. A re-add or replace gives the leg its pieces
            // back through its slot (`swap_leg`).
            // (A peer's definition marks the legs being copied rebuilding.)
            let out = degraded.contains(&m)
                && !matches!(
                    v.members.get(usize::from(m)),
                    Some(MemberHealth::Rebuilding { .. })
                )
                && v.group_members(v.leg_of(m).0).len() > 1;
            let mut pieces = Vec::new();
            for s in v.segments.iter().filter(|s| s.member == m) {
                if out {
                    pieces.push(Piece::local(absent_alu()?, s.start, s.len));
                    continue;
                }
                let piece = match self.piece(s.alu, s.start, s.len) {
                    Ok(p) => p,
                    // A degraded leg starts marked failed in its mirror and is
                    // never touched: a read-only /dev/null stands in for an
                    // ALU that is gone (a write to it would fail, not vanish).
                    Err(_) if degraded.contains(&m) => Piece::local(absent_alu()?, s.start, s.len),
                    Err(e) => return Err(format!("volume {}: {e}", v.name)),
                };
                pieces.push(piece);
            }
            members.push(MemberDesc { pieces });
        }
        let copies = usize::from(v.layout.copies.max(1));
        let health = self.mirror_health(v, &degraded)?;
        let layout = match v.layout.kind {
            LayoutKind::Linear => StackLayout::Linear,
            LayoutKind::Stripe => StackLayout::Stripe {
                chunk: v.layout.chunk,
            },
            LayoutKind::Mirror => StackLayout::Mirror,
            LayoutKind::Raid10 => StackLayout::Raid10 {
                chunk: v.layout.chunk,
            },
        };
        let desc = VolumeDesc {
            layout,
            copies,
            members,
            health: health.clone(),
            moving: v.moving_group(),
        };
        // The mirrors' leg slots are made by the first tree built over their
        // health: one is built now, so that a leg can be swapped in
        // (`swap_leg`) before a queue or a job has built one (a tree
        // reloaded under quiescence, or kept without a device).
        tierblk_stack::volume::build_volume(&desc, intent::ring()?)
            .map_err(|e| format!("volume {}: {e}", v.name))?;
        Ok((desc, health))
    }

    /// One shared health record per mirror; a failing leg reports through the
    /// event channel and waits until the failure is on disk.
    /// Each carries the mirror's write-intent bitmap, loaded, when the volume
    /// has them.
    fn mirror_health(
        &mut self,
        v: &VolumeDef,
        degraded: &[u16],
    ) -> Result<Vec<Arc<MirrorHealth>>, String> {
        let leg_size = v.layout.member_size(v.size);
        (0..v.mirror_count())
            .map(|j| {
                // A leg being rebuilt (with its ALU present) resumes from its
                // checkpoint; any other unavailable leg starts failed.
                let mut mask = 0u32;
                let mut rebuilding = Vec::new();
                let legs = v.group_members(j);
                for (leg, &m) in legs.iter().enumerate() {
                    let available = !self.member_alus_missing(v, m);
                    match v.members.get(usize::from(m)) {
                        Some(MemberHealth::Rebuilding { checkpoint }) if available => {
                            rebuilding.push((leg, *checkpoint));
                        }
                        _ if degraded.contains(&m) => mask |= 1 << leg,
                        _ => {}
                    }
                }
                let events = self.events.clone();
                let volume = v.name.clone();
                let n = legs.len();
                let on_fail = move |leg: usize, errno: i32| {
                    let (done, wait) = mpsc::channel();
                    let member = legs.get(leg).copied().unwrap_or(u16::MAX);
                    error!(volume = %volume, member, errno, "mirror leg failed: degrading");
                    let sent = events.send(Event::LegFailed {
                        volume: volume.clone(),
                        member,
                        errno,
                        from: None,
                        done,
                    });
                    if sent.is_err() || wait.recv_timeout(PERSIST_WAIT).is_err() {
                        error!(volume = %volume, member, "leg failure not yet persisted");
                    }
                };
                let health = MirrorHealth::new_with_rebuild(
                    n,
                    mask,
                    &rebuilding,
                    leg_size,
                    Box::new(on_fail),
                );
                let health = match self.load_intent(v, j as u16)? {
                    Some(wi) => health
                        .with_write_intent(wi)
                        .map_err(|e| format!("volume {}: {e}", v.name))?,
                    None => health,
                };
                Ok(Arc::new(health))
            })
            .collect()
    }

    /// Whether any ALU under member `m` is gone, failed or damaged.
    fn member_alus_missing(&self, v: &VolumeDef, m: u16) -> bool {
        if self.assigned.contains_key(&v.name) {
            return false;
        }
        let owned = self.owned_alus();
        v.segments
            .iter()
            .filter(|s| s.member == m)
            .any(|s| !owned.iter().any(|(_, u)| *u == s.alu))
    }

    /// The ALUs the object database holds as owned: (path, uuid).
    fn owned_alus(&self) -> Vec<(String, Uuid)> {
        self.store
            .alus()
            .into_iter()
            .filter_map(|a| match a.state {
                AluState::Owned { uuid } => Some((a.path, uuid)),
                _ => None,
            })
            .collect()
    }

    /// Persist a leg failure found on the data path ([0168]–[0171]). An
    /// I/O error means the ALU under the leg is dead (as MD marks a device
    /// faulty): the ALU is failed, which fails every member on it in one
    /// commit and stops every running mirror from using it.
    pub fn on_event(&mut self, ev: Event) {
        match ev {
            Event::LegFailed {
                volume,
                member,
                errno,
                done,
                ..
            } if self.assigned.contains_key(&volume) => {
                self.forward_leg_failure(&volume, member, errno);
                let _ = done.send(());
            }
            Event::LegFailed {
                volume,
                member,
                errno,
                from,
                done,
            } => {
                let alus: Vec<Uuid> = self
                    .volume(&volume)
                    .map(|v| {
                        let mut a: Vec<Uuid> = v
                            .segments
                            .iter()
                            .filter(|s| s.member == member)
                            .map(|s| s.alu)
                            .collect();
                        a.dedup();
                        a
                    })
                    .unwrap_or_default();
                for alu in alus {
                    // A store poisoned by an earlier failed write (the same
                    // dead ALU, in the middle of a commit) is read again
                    // first: the failure must be persisted now.
                    let from = from.as_deref();
                    let r = match self.fail_alu_uuid(alu, from) {
                        Err(_) if self.recover_store() => self.fail_alu_uuid(alu, from),
                        r => r,
                    };
                    match r {
                        Ok(_) => {
                            warn!(volume = %volume, member, errno, %alu, "leg failure persisted; ALU failed")
                        }
                        Err(e) => {
                            error!(volume = %volume, member, "cannot persist the leg failure: {e}")
                        }
                    }
                }
                let _ = done.send(());
            }
            Event::JobProgress { id, checkpoint } => self.on_job_progress(id, checkpoint),
            Event::JobEnded { id, run, outcome } => self.on_job_ended(id, run, outcome),
            Event::Tick => {
                self.run_schedules(crate::clock::now());
                self.expire_fences();
                self.ticks = self.ticks.wrapping_add(1);
                if self.ticks.is_multiple_of(INVENTORY_TICKS) {
                    self.inventory();
                    self.finish_pending_moves();
                    self.retry_jobs();
                }
                if self.ticks.is_multiple_of(SCAN_TICKS) && !self.missing.is_empty() {
                    if let Err(e) = self.rescan() {
                        warn!("periodic scan: {e}");
                    }
                }
            }
            Event::Reconfigure { volume, why } => self.reconfigure(&volume, &why),
            Event::Peers(views) => self.on_peers(views),
            Event::Inventory(dead) => self.on_inventory(dead),
            Event::Leadership(l) => self.on_leadership(l),
            Event::Control(req @ expose::ControlRequest::Fence { .. }, reply) => {
                self.fence_here(req, reply)
            }
            Event::Control(req, reply) => {
                let _ = reply.send(self.on_control(req));
            }
        }
        self.recover_store();
    }

    /// A failed metadata write poisons the store (what is in memory may not
    /// be on disk: an ALU, a peer's above all, went away in the middle of a
    /// commit) and every change is refused: read the ALUs again at once, as a
    /// restart would, rather than leaving a leg failure unrecorded until one.
    /// Returns whether it did.
    fn recover_store(&mut self) -> bool {
        let Some(why) = self.store.poisoned().map(str::to_string) else {
            return false;
        };
        warn!("metadata store poisoned ({why}): reading the ALUs again");
        let report = self.store.reopen();
        for r in &report.repairs {
            warn!("repaired: {r}");
        }
        for p in &report.problems {
            error!("{p}");
        }
        self.log.emit("store-reopened", None, why);
        true
    }

    fn offline(&mut self, name: &str) -> Result<(), String> {
        if self.quiesced.contains_key(name) {
            return Err(format!(
                "volume {name}: quiesced: `tierblk vol resume {name}` first (stopping it would wait for I/O that is held)"
            ));
        }
        // Refuse before changing anything: a snapshot view reads through its
        // origin and goes first, but not when the origin itself is in use.
        if let Some(Runtime::Online { exposed, .. }) = self.runtime.get(name) {
            ensure_unused(&exposed.device()).map_err(|e| format!("volume {name}: {e}"))?;
        }
        self.views_offline(name)?;
        match self.runtime.remove(name) {
            Some(Runtime::Online {
                exposed,
                desc,
                health,
                gate,
                slot,
            }) => {
                let dev = exposed.device();
                if let Err(e) = ensure_unused(&dev) {
                    self.runtime.insert(
                        name.to_string(),
                        Runtime::Online {
                            exposed,
                            desc,
                            health,
                            gate,
                            slot,
                        },
                    );
                    return Err(format!("volume {name}: {e}"));
                }
                // Jobs stop at a step boundary; their checkpoint is kept and
                // they resume when the volume is online again.
                self.stop_jobs_of(name);
                self.sweep_list_set(name, None);
                self.stats
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .remove(name);
                let r = exposed.stop().map_err(|e| e.to_string());
                self.log.emit(
                    "volume-offline",
                    Some(name),
                    r.clone().err().unwrap_or_else(|| "stopped".into()),
                );
                self.runtime
                    .insert(name.to_string(), Runtime::Offline { reason: None });
                r
            }
            // The tree kept for its jobs (the SP stepping down, the volume
            // exposed here or removed): they stop at their checkpoint.
            Some(Runtime::Remote { reason, .. }) => {
                self.stop_jobs_of(name);
                self.runtime.insert(
                    name.to_string(),
                    Runtime::Offline {
                        reason: Some(reason),
                    },
                );
                Ok(())
            }
            Some(other) => {
                self.runtime.insert(name.to_string(), other);
                Ok(())
            }
            None => Ok(()),
        }
    }

    fn cluster_name(&self) -> &str {
        self.store
            .image()
            .map(|i| i.sig.name.as_str())
            .unwrap_or(&self.cfg.cluster)
    }

    fn claim(&mut self, path: &str, force: bool) -> Result<Payload, String> {
        if !self.store.alus().iter().any(|a| a.path == path) {
            let disk = open_disk(path)?;
            self.store
                .add_disk(path.to_string(), disk)
                .map_err(|e| e.to_string())?;
            self.missing.remove(path);
            info!(alu = %path, "added to the scanned set");
        }
        let cluster = self.cluster_name().to_string();
        let uuid = self
            .store
            .claim(path, &cluster, force)
            .map_err(|e| match e {
                MetaError::ForeignData { .. } => {
                    format!("{e} (`tierblk alu claim --force {path}` destroys it)")
                }
                e => e.to_string(),
            })?;
        info!(alu = %path, %uuid, cluster = %cluster, "claimed");
        self.log
            .emit("alu-claimed", None, format!("{path} ({uuid})"));
        self.alu_view(path).map(Payload::Alu)
    }

    fn release(&mut self, path: &str) -> Result<Payload, String> {
        let uuid = self.owned_uuid(path)?;
        self.store.release(path).map_err(|e| e.to_string())?;
        self.files.remove(&uuid);
        info!(alu = %path, "released");
        Ok(Payload::Done(format!("alu {path}: released")))
    }

    fn owned_uuid(&self, path: &str) -> Result<Uuid, String> {
        let st = self
            .store
            .alus()
            .into_iter()
            .find(|a| a.path == path)
            .ok_or_else(|| format!("alu {path}: unknown (not scanned by this daemon)"))?;
        match st.state {
            AluState::Owned { uuid } => Ok(uuid),
            other => Err(format!(
                "alu {path}: not owned by cluster {:?} ({}): claim it first",
                self.cluster_name(),
                state_name(&other)
            )),
        }
    }

    /// The device inventory ([0168]–[0170]): every owned ALU of this
    /// process is read (its directory block, past any cache) now and then,
    /// so that a disk that died while idle is found before a write needs
    /// it. An ALU that answers with an I/O error is failed as a failing
    /// write would fail it: persisted, its mirror legs degraded, an event.
    fn inventory(&mut self) {
        use std::os::unix::fs::FileExt;
        use std::sync::atomic::Ordering;
        // The reads run on a thread of their own: a device that hangs must
        // not hang the daemon; while one round is stuck, no other starts.
        if self.inventory_busy.swap(true, Ordering::AcqRel) {
            return;
        }
        let local: Vec<(String, Uuid)> = self
            .owned_alus()
            .into_iter()
            .filter(|(p, _)| self.peer_of(p).is_none())
            .collect();
        let files: Vec<(String, Uuid, Arc<File>)> = local
            .into_iter()
            .filter_map(|(p, u)| self.data_file(u).ok().map(|f| (p, u, f)))
            .collect();
        let (events, busy) = (self.events.clone(), self.inventory_busy.clone());
        let spawned = std::thread::Builder::new()
            .name("inventory".into())
            .spawn(move || {
                let mut dead = Vec::new();
                for (path, uuid, file) in files {
                    let mut buf = tierblk_stack::AlignedBuf::new(4096);
                    let Err(e) = file.read_exact_at(&mut buf, tierblk_meta::mdr::DIR_OFFSET) else {
                        continue;
                    };
                    if matches!(
                        e.raw_os_error(),
                        Some(libc::EIO | libc::ENXIO | libc::ENODEV)
                    ) {
                        dead.push((path, uuid, e.to_string()));
                    }
                }
                busy.store(false, Ordering::Release);
                let _ = events.send(Event::Inventory(dead));
            });
        if spawned.is_err() {
            self.inventory_busy.store(false, Ordering::Release);
        }
    }

    /// What an inventory round found: ALUs that answered with an I/O error
    /// (still owned and not failed meanwhile) are failed.
    fn on_inventory(&mut self, dead: Vec<(String, Uuid, String)>) {
        for (path, uuid, e) in dead {
            if !self.owned_alus().contains(&(path.clone(), uuid)) {
                continue;
            }
            if let Some(why) = self.last_leg_on(uuid) {
                // As MD never fails the last working leg: its errors go to
                // the host, and the failure is for the data path to find.
                warn!(alu = %path, "inventory: the ALU does not answer ({e}); not failed: {why}");
                continue;
            }
            error!(alu = %path, "inventory: the ALU does not answer ({e}): failing it");
            self.log
                .emit("alu-failed", None, format!("{path}: inventory read: {e}"));
            if let Err(e) = self.fail_alu_uuid(uuid, None) {
                error!(alu = %path, "cannot persist the failure: {e}");
            }
        }
    }

    /// Why failing `alu` would take away a volume's last copy of something
    /// (a mirror's last healthy leg, or any piece of a linear or stripe
    /// volume), if it would.
    fn last_leg_on(&self, alu: Uuid) -> Option<String> {
        let volumes = self.image_volumes();
        let failed: Vec<(String, u16)> = volumes
            .iter()
            .flat_map(|v| {
                self.store
                    .degraded_members(&v.name)
                    .into_iter()
                    .map(|(m, _)| (v.name.clone(), m))
            })
            .collect();
        for v in volumes {
            for m in v.members_on(alu) {
                if v.mirror_count() == 0 {
                    return Some(format!("volume {} has no other copy", v.name));
                }
                let others_ok = v
                    .group_members(v.leg_of(m).0)
                    .into_iter()
                    .filter(|&o| o != m)
                    .any(|o| {
                        !failed.contains(&(v.name.clone(), o))
                            && v.segments
                                .iter()
                                .filter(|s| s.member == o)
                                .all(|s| s.alu != alu)
                    });
                if !others_ok {
                    return Some(format!(
                        "it holds the last healthy leg of volume {}",
                        v.name
                    ));
                }
            }
        }
        None
    }

    /// The periodic scan: missing ALUs that appeared join the object
    /// database; a failed one that came back is re-added when
    /// `--auto-reclaim` says so, else named in the log and the events for
    /// `alu readd`; an unowned one is listed for claiming.
    fn rescan(&mut self) -> Result<(), String> {
        let before: Vec<String> = self.missing.keys().cloned().collect();
        self.scan()?;
        let appeared: Vec<String> = before
            .into_iter()
            .filter(|p| !self.missing.contains_key(p))
            .collect();
        for path in appeared {
            let state = self
                .store
                .alus()
                .into_iter()
                .find(|a| a.path == path)
                .map(|a| a.state);
            match state {
                Some(AluState::Damaged { uuid: Some(_), .. }) if self.cfg.auto_reclaim => {
                    info!(alu = %path, "a failed ALU came back: re-adding it (--auto-reclaim)");
                    if let Err(e) = self.readd(&path, 0) {
                        warn!(alu = %path, "cannot re-add: {e}");
                    }
                }
                Some(AluState::Damaged { uuid: Some(_), .. }) => {
                    warn!(alu = %path, "a failed ALU came back: `tierblk alu readd {path}` takes it back");
                    self.log.emit("alu-returned", None, path);
                }
                Some(AluState::Owned { .. }) => {
                    info!(alu = %path, "an ALU came back");
                    self.log.emit("alu-returned", None, path);
                    self.retry_held_volumes();
                }
                Some(s) => {
                    info!(alu = %path, state = state_name(&s), "an ALU appeared");
                    self.log
                        .emit("alu-appeared", None, format!("{path} ({})", state_name(&s)));
                }
                None => {}
            }
        }
        Ok(())
    }

    fn scan(&mut self) -> Result<Vec<AluView>, String> {
        // A peer's ALUs come back with the peer (cluster.rs).
        let retry: Vec<String> = self
            .missing
            .keys()
            .filter(|p| self.peer_of(p).is_none())
            .cloned()
            .collect();
        for path in retry {
            match open_disk(&path) {
                Ok(disk) => {
                    let report = self
                        .store
                        .add_disk(path.clone(), disk)
                        .map_err(|e| e.to_string())?;
                    for r in &report.repairs {
                        warn!("repaired: {r}");
                    }
                    self.missing.remove(&path);
                    info!(alu = %path, "appeared");
                }
                Err(e) => {
                    self.missing.insert(path, e);
                }
            }
        }
        Ok(self.alu_views())
    }

    fn create(
        &mut self,
        name: &str,
        size: u64,
        alus: &[String],
        spec: &LayoutSpec,
    ) -> Result<Payload, String> {
        if self.image_volumes().iter().any(|v| v.name == name) {
            return Err(format!("volume {name}: name already taken"));
        }
        let layout = layout_from(spec).map_err(|e| format!("volume {name}: {e}"))?;
        let size = planner::rounded_size(size, &layout)
            .ok_or_else(|| format!("volume {name}: size too large"))?;
        let candidates = self.candidates(alus)?;
        let plan =
            planner::plan(size, &layout, &candidates).map_err(|e| format!("volume {name}: {e}"))?;
        let def = self
            .store
            .create_volume_with(name, size, layout, &plan)
            .map_err(|e| e.to_string())?;
        if let Err(e) = self.format_intents(&def) {
            if let Err(e2) = self.store.remove_volume(name) {
                error!(volume = %name, "cannot undo the volume's creation: {e2}");
            }
            return Err(e);
        }
        info!(volume = %name, size = %format_size(size), layout = %spec.kind, "created");
        self.runtime
            .insert(name.to_string(), Runtime::Offline { reason: None });
        if let Err(e) = self.online(name) {
            warn!("{e}");
        }
        Ok(Payload::Volume(self.volume_view(&def)))
    }

    /// The planner's candidates: `alus` in this order, or every owned ALU in
    /// path order.
    fn candidates(&self, alus: &[String]) -> Result<Vec<Candidate>, String> {
        let paths: Vec<String> = if alus.is_empty() {
            let mut owned: Vec<String> = self
                .store
                .alus()
                .into_iter()
                .filter(|a| matches!(a.state, AluState::Owned { .. }))
                .map(|a| a.path)
                .collect();
            owned.sort();
            owned
        } else {
            alus.to_vec()
        };
        paths
            .into_iter()
            .map(|path| {
                let uuid = self.owned_uuid(&path)?;
                Ok(Candidate {
                    alu: uuid,
                    name: path,
                    free: self.store.free_extents(uuid),
                })
            })
            .collect()
    }

    fn remove(&mut self, name: &str) -> Result<Payload, String> {
        if self.is_legacy(name) {
            return self.forget(name);
        }
        let v = self.volume(name)?;
        if v.snapshot.is_some() {
            return self.snap_remove(name);
        }
        // Their trees would go on over partitions freed here ([0115]).
        let peers = self.exposing_peers(&v);
        if !peers.is_empty() {
            return Err(format!(
                "volume {name}: exposed on sp {}: `tierblk vol unexpose {name} --on SP` each first",
                peers.join(", ")
            ));
        }
        self.offline(name)?;
        self.store.remove_volume(name).map_err(|e| e.to_string())?;
        self.runtime.remove(name);
        info!(volume = %name, "removed");
        Ok(Payload::Done(format!("volume {name}: removed")))
    }

    fn volume_view(&self, v: &VolumeDef) -> VolumeView {
        let degraded = match self.assigned.get(&v.name) {
            // An exposing SP knows what the master sent: the legs it does
            // not use (a leg being copied is shown rebuilding).
            Some(a) => a
                .degraded
                .iter()
                .filter(|m| {
                    !matches!(
                        v.members.get(usize::from(**m)),
                        Some(MemberHealth::Rebuilding { .. })
                    )
                })
                .map(|m| (*m, "failed (by the master)".to_string()))
                .collect(),
            None => self.store.degraded_members(&v.name),
        };
        let (state, device, problem) = match self.runtime.get(&v.name) {
            Some(Runtime::Online {
                exposed, health, ..
            }) => {
                let live_degraded = health.iter().any(|h| h.failed_mask() != 0);
                let state = if self.quiesced.contains_key(&v.name) {
                    "quiesced"
                } else if live_degraded || !degraded.is_empty() {
                    "degraded"
                } else {
                    "online"
                };
                (state, Some(exposed.device()), None)
            }
            Some(Runtime::Offline { reason }) => (
                "offline",
                None,
                self.problem_of(&v.name).or_else(|| reason.clone()),
            ),
            Some(Runtime::Remote { reason, .. }) => (
                "offline",
                None,
                self.problem_of(&v.name).or_else(|| Some(reason.clone())),
            ),
            None => ("offline", None, self.problem_of(&v.name)),
        };
        let members = v
            .members
            .iter()
            .enumerate()
            .map(|(i, h)| {
                let index = i as u16;
                let detail = degraded
                    .iter()
                    .find(|(m, _)| *m == index)
                    .map(|(_, why)| why.clone());
                let (health, fail_seq) = match h {
                    MemberHealth::Ok if detail.is_some() => ("failed", None),
                    MemberHealth::Ok => ("ok", None),
                    MemberHealth::Failed { fail_seq } => ("failed", Some(*fail_seq)),
                    MemberHealth::Rebuilding { .. } => ("rebuilding", None),
                };
                MemberView {
                    index,
                    health: health.into(),
                    detail,
                    fail_seq,
                }
            })
            .collect();
        VolumeView {
            exposed_on: self.exposed_on(v),
            name: v.name.clone(),
            id: v.id,
            size: v.size,
            layout: if v.snapshot.is_some() {
                "snapshot"
            } else {
                layout_name(&v.layout)
            }
            .into(),
            stripes: v.layout.stripes,
            copies: v.layout.copies,
            chunk: v.layout.chunk,
            state: state.into(),
            device,
            wwn: hex(&v.wwn),
            problem,
            origin: v
                .snapshot
                .and_then(|sn| self.volume_by_id(sn.origin))
                .map(|o| o.name),
            bitmap: self
                .job_tree(&v.name)
                .and_then(|(_, health)| intent::bitmap_view(health)),
            members,
            segments: v
                .segments
                .iter()
                .map(|s| SegmentView {
                    member: s.member,
                    alu: s.alu.to_string(),
                    path: self.store.path_of(s.alu).map(str::to_string),
                    start: s.start,
                    len: s.len,
                })
                .collect(),
        }
    }

    fn fail_alu(&mut self, path: &str) -> Result<Payload, String> {
        let uuid = self.owned_uuid(path)?;
        let affected = self.fail_alu_uuid(uuid, None)?;
        let list = affected
            .iter()
            .map(|(v, m)| format!("{v} member {m}"))
            .collect::<Vec<_>>()
            .join(", ");
        Ok(Payload::Done(if list.is_empty() {
            format!("alu {path}: failed (no volume used it)")
        } else {
            format!("alu {path}: failed; degraded: {list}")
        }))
    }

    /// Fail an ALU: persist it, then stop every running mirror from using it.
    /// Fail ALU `uuid` in the object database and every member on it in the
    /// trees running here; then tell every other SP that exposes one of the
    /// volumes and answers (except `reporter`, the peer that found it: it
    /// failed the leg already and waits for this SP's answer). They stop
    /// using the leg before the write that found the failure completes
    /// ([0168]-[0171]: the system goes on without the failed part): else
    /// one of them could read a leg that misses a write acknowledged through
    /// another.
    fn fail_alu_uuid(
        &mut self,
        uuid: Uuid,
        reporter: Option<&str>,
    ) -> Result<Vec<(String, u16)>, String> {
        let newly = self.owned_alus().iter().any(|(_, u)| *u == uuid);
        let path = self
            .store
            .path_of(uuid)
            .map_or_else(|| uuid.to_string(), str::to_string);
        let affected = self.store.fail_alu(uuid).map_err(|e| e.to_string())?;
        for (volume, member) in &affected {
            self.fail_members_here(volume, &[*member]);
            warn!(alu = %uuid, volume = %volume, member, "member failed with its ALU");
            self.log.emit(
                "member-failed",
                Some(volume),
                format!("member {member}: its ALU {uuid} failed"),
            );
        }
        self.files.remove(&uuid);
        let mut volumes: Vec<&String> = affected.iter().map(|(v, _)| v).collect();
        volumes.sort();
        volumes.dedup();
        for name in volumes {
            let Ok(v) = self.volume(name) else { continue };
            self.mark_unseen_writes(&v);
            for sp in self.writing_peers(&v) {
                if Some(sp.as_str()) == reporter {
                    continue;
                }
                match self.assign(&v, &sp) {
                    Ok(()) => info!(volume = %name, %sp, "leg failure sent"),
                    Err(e) => {
                        error!(volume = %name, %sp, "cannot send the leg failure: {e}");
                        if let Some(c) = self.cluster.as_mut() {
                            c.unassigned.insert(sp);
                        }
                    }
                }
            }
            // Queued, not run here: the requests that found the failure
            // (on this SP or a peer) wait for this call's answer, and the
            // reconfiguration drains them first.
            if newly {
                let _ = self.events.send(Event::Reconfigure {
                    volume: name.clone(),
                    why: format!("alu {path} failed"),
                });
            }
        }
        Ok(affected)
    }

    /// Mark `members` of `volume` failed in the tree running here (already
    /// persisted: no report back).
    pub(super) fn fail_members_here(&self, volume: &str, members: &[u16]) {
        let Ok(v) = self.volume(volume) else { return };
        if let Some((_, health)) = self.job_tree(volume) {
            for &m in members {
                let (mirror, leg) = v.leg_of(m);
                if let Some(h) = health.get(mirror) {
                    h.mark_failed(leg);
                }
            }
        }
    }

    fn job(&self, id: u64) -> Result<Job, String> {
        self.store
            .jobs()
            .into_iter()
            .find(|j| j.id == id)
            .ok_or_else(|| format!("job {id}: not found"))
    }

    fn volume_by_id(&self, id: u64) -> Option<VolumeDef> {
        self.image_volumes().into_iter().find(|v| v.id == id)
    }

    fn job_view(&self, j: &Job) -> JobView {
        let live = self.jobs.get(&j.id);
        JobView {
            id: j.id,
            kind: jobs::kind_name(j).into(),
            volume: self
                .volume_by_id(j.volume)
                .map(|v| v.name)
                .unwrap_or_else(|| format!("#{}", j.volume)),
            member: j.member,
            state: match j.state {
                JobState::Running => "running",
                JobState::Paused => "paused",
                JobState::Done => "done",
                JobState::Failed => "failed",
            }
            .into(),
            done: live.map(|r| r.done()).unwrap_or(j.checkpoint).min(j.total),
            total: j.total,
            mismatches: j.mismatches,
            repaired: j.repaired,
            message: (!j.message.is_empty()).then(|| j.message.clone()),
        }
    }

    /// After an unclean stop, legs of a mirror may differ where writes were
    /// in flight: queue a resync of every mirror volume, as MD resyncs an
    /// array that was not cleanly stopped: of the regions its write-intent
    /// bitmaps mark (a `resync` job), or, for a volume made before bitmaps
    /// or one that ran without them (a leg on a peer's ALU, or another SP
    /// its master: [`Daemon::bitmaps_cover`]), of everything (a repairing
    /// scrub). A stripe whose member moves is a stripe of mirrors meanwhile
    /// (the moving column a mirror of source and target) without bitmaps: it
    /// gets the repairing scrub too, which makes the target agree with the
    /// source below the copy's checkpoint before the copy resumes from there
    /// (`jobs::next_job` runs repairs first).
    fn resync_after_unclean_stop(&mut self) {
        for v in self.image_volumes() {
            // A mirror that ran without a bitmap (a leg on a peer's ALU, or
            // another SP its master) has no record of its dirty regions.
            let bitmap = self.bitmaps_cover(&v);
            self.queue_resync(&v, bitmap, "an unclean stop");
        }
    }

    /// A peer that exposed volumes stopped answering (claim 3 of 003_...: a
    /// processor failed): writes it had in flight may have reached some legs
    /// of a mirror and not others, and no bitmap of this SP's marks them, so
    /// each mirrored volume it exposed gets a repairing scrub, as md-cluster
    /// resyncs a failed node's dirty regions from another node. Its other
    /// writers are fenced span by span as for any job; a peer that returns
    /// is given the tree and the job starts again over it.
    pub(super) fn resync_after_peer(&mut self, peer: &str) {
        for v in self.image_volumes() {
            if self.exposed_on(&v).iter().any(|sp| sp == peer) {
                self.queue_resync(&v, false, &format!("sp {peer} stopped answering"));
            }
        }
    }

    /// Queue a resync of mirrored volume `v` after `why`: of the regions its
    /// bitmaps mark when `bitmap` (they cover every write that may differ),
    /// else a repairing scrub of all of it; nothing when one is queued.
    fn queue_resync(&mut self, v: &VolumeDef, bitmap: bool, why: &str) {
        let mirrored = matches!(v.layout.kind, LayoutKind::Mirror | LayoutKind::Raid10);
        if !mirrored && v.moving.is_none() {
            return;
        }
        // One is enough: an earlier unclean stop may have queued one
        // that never ran (the volume stayed offline).
        let queued = self.store.jobs().iter().any(|j| {
            j.volume == v.id
                && j.member.is_none()
                && (j.kind == JobKind::Resync || (j.kind == JobKind::Scrub && j.repair))
                && !j.state.finished()
        });
        if queued {
            return;
        }
        // Queued for offline volumes too: it runs when they come online.
        let total = v.layout.member_size(v.size) * u64::from(v.layout.stripes.max(1));
        let kind = if bitmap {
            JobKind::Resync
        } else {
            JobKind::Scrub
        };
        let job = Job {
            repair: !bitmap,
            message: if bitmap {
                format!("resync of the dirty regions after {why}")
            } else {
                format!("resync after {why}")
            },
            ..Job::whole(kind, v.id, total)
        };
        match self.store.add_job(job) {
            Ok(j) => {
                warn!(volume = %v.name, job = j.id, "{why}: resyncing the mirror legs");
                self.log.emit(
                    "resync-queued",
                    Some(&v.name),
                    format!("job {} after {why}", j.id),
                );
                self.start_jobs_of(v);
            }
            Err(e) => error!(volume = %v.name, "cannot queue the resync: {e}"),
        }
    }

    /// Start the volume's first running job (at start-up, after a replace,
    /// when the volume comes online again, when its previous job ends): a
    /// volume's jobs run one at a time, in id order.
    fn start_jobs_of(&mut self, v: &VolumeDef) {
        if self.quiesced.contains_key(&v.name) {
            return;
        }
        let Some((desc, _)) = self.job_tree(&v.name) else {
            return;
        };
        let desc = desc.clone();
        let all = self.store.jobs();
        if all
            .iter()
            .any(|j| j.volume == v.id && self.jobs.contains_key(&j.id))
        {
            return;
        }
        let Some(j) = jobs::next_job(&all, v.id).cloned() else {
            return;
        };
        // Other SPs writing the legs: each must run the tree with the leg
        // being copied rebuilding, and hold its writes off each span the job
        // works on (`fence`).
        let peers = if jobs::writes_legs(&j) {
            self.writing_peers(v)
        } else {
            Vec::new()
        };
        let fence = match self.fence_peers(v, &peers) {
            Ok(f) => f,
            Err(e) => {
                warn!(job = j.id, volume = %v.name, "job waits: {e}");
                return;
            }
        };
        let work = match (j.kind, j.member) {
            (JobKind::Rebuild | JobKind::Move, Some(m)) => {
                let (mirror, leg) = v.leg_of(m);
                Work::Rebuild {
                    mirror,
                    leg,
                    dirty_only: j.dirty_only,
                }
            }
            (JobKind::Scrub, _) => Work::Scrub { repair: j.repair },
            (JobKind::Resync, _) => Work::Resync,
            // A rollback runs on the offline origin (see `start_rollback`).
            (JobKind::Rebuild | JobKind::Move, None) | (JobKind::Rollback, _) => return,
        };
        let spec = jobs::Spec {
            id: j.id,
            volume: v.name.clone(),
            desc: desc.clone(),
            work,
            start: j.checkpoint,
            mismatches: j.mismatches,
            repaired: j.repaired,
            rate: j.rate,
            leg_size: jobs::leg_size(&desc),
            fence: fence.map(|f| f as Arc<dyn jobs::MirrorFence>),
        };
        match jobs::spawn(spec, self.events.clone()) {
            Ok(r) => {
                info!(job = j.id, volume = %v.name, from = j.checkpoint, "job started");
                self.log.emit(
                    "job-started",
                    Some(&v.name),
                    format!("job {} ({:?}) from {}", j.id, j.kind, j.checkpoint),
                );
                self.jobs.insert(j.id, r);
            }
            Err(e) => error!(job = j.id, "cannot start the job thread: {e}"),
        }
    }

    /// Stop the volume's job threads, persisting how far they got; they stay
    /// Running in the job table and resume when the volume is online again.
    fn stop_jobs_of(&mut self, name: &str) {
        let Ok(v) = self.volume(name) else { return };
        let ids: Vec<u64> = self
            .store
            .jobs()
            .iter()
            .filter(|j| j.volume == v.id)
            .map(|j| j.id)
            .collect();
        for id in ids {
            if let Some(r) = self.jobs.remove(&id) {
                let done = r.stop();
                if let Ok(mut j) = self.job(id) {
                    if j.state == JobState::Running {
                        j.checkpoint = done.min(j.total);
                        if let Err(e) = self.store.update_job(&j) {
                            error!(job = id, "cannot persist the job's checkpoint: {e}");
                        }
                    }
                }
            }
        }
    }

    fn replace(&mut self, old: &str, new: &str, rate: u64) -> Result<Payload, String> {
        let new_uuid = self.owned_uuid(new)?;
        let old_uuid = self
            .store
            .alus()
            .into_iter()
            .find(|a| a.path == old)
            .and_then(|a| match a.state {
                AluState::Owned { uuid } => Some(uuid),
                AluState::Damaged { uuid, .. } => uuid,
                _ => None,
            })
            .ok_or_else(|| format!("alu {old}: not an ALU of this cluster"))?;
        if old_uuid == new_uuid {
            return Err(format!("alu {old}: cannot replace an ALU by itself"));
        }
        // Check everything before writing anything.
        let mut todo = Vec::new();
        for v in self.image_volumes() {
            for m in 0..v.layout.members() as u16 {
                if v.segments
                    .iter()
                    .any(|s| s.member == m && s.alu == old_uuid)
                {
                    if !matches!(v.layout.kind, LayoutKind::Mirror | LayoutKind::Raid10) {
                        return Err(format!(
                            "volume {}: {} has no redundancy: its data on {old} cannot be rebuilt",
                            v.name,
                            layout_name(&v.layout)
                        ));
                    }
                    todo.push((v.name.clone(), m));
                }
            }
        }
        if todo.is_empty() {
            return Err(format!("alu {old}: no volume uses it: nothing to replace"));
        }
        // The old leg stops being used first (mdadm --fail, then --add).
        self.fail_alu_uuid(old_uuid, None)?;
        let mut out = Vec::new();
        for (name, member) in todo {
            let (def, job) = self
                .store
                .replace_member(&name, member, new_uuid)
                .map_err(|e| e.to_string())?;
            info!(volume = %name, member, alu = %new, job = job.id, "leg replaced; rebuilding");
            out.push(self.start_leg_job(&def, member, job, rate)?);
        }
        Ok(Payload::Jobs(out))
    }

    /// Hand a new or returning leg to its running mirror and start its
    /// rebuild job, throttled to `rate` (persisted) when non-zero.
    fn start_leg_job(
        &mut self,
        def: &VolumeDef,
        member: u16,
        mut job: Job,
        rate: u64,
    ) -> Result<JobView, String> {
        if rate > 0 {
            job.rate = rate;
            self.store.update_job(&job).map_err(|e| e.to_string())?;
        }
        self.swap_leg(def, member)?;
        self.start_jobs_of(def);
        Ok(self.job_view(&job))
    }

    /// Quiesce a volume for an administrator (spec IX, [0171] steps
    /// 1504–1508; dm's suspend): its jobs stop at a step boundary with their
    /// checkpoint, in-flight requests complete, new ones are held (never
    /// failed) until `resume`.
    fn quiesce_here(&mut self, name: &str) -> Result<Payload, String> {
        let v = self.volume(name)?;
        if self.quiesced.contains_key(name) {
            return Err(format!("volume {name}: already quiesced"));
        }
        let (Some(Runtime::Online { gate, .. }) | Some(Runtime::Remote { gate, .. })) =
            self.runtime.get(name)
        else {
            return Err(format!("volume {name}: offline: nothing to quiesce"));
        };
        let gate = gate.clone();
        self.stop_jobs_of(name);
        match gate.suspend(QUIESCE_TIMEOUT) {
            Ok(held) => {
                self.quiesced.insert(name.to_string(), held);
                info!(volume = %name, "quiesced");
                self.log.emit("volume-quiesced", Some(name), String::new());
                Ok(Payload::Volume(self.volume_view(&v)))
            }
            Err(e) => {
                self.start_jobs_of(&v);
                Err(format!("volume {name}: cannot quiesce: {e}"))
            }
        }
    }

    /// Resume a quiesced volume: held requests proceed, its jobs restart
    /// from their checkpoints.
    fn resume_here(&mut self, name: &str) -> Result<Payload, String> {
        let v = self.volume(name)?;
        if self.quiesced.remove(name).is_none() {
            return Err(format!("volume {name}: not quiesced"));
        }
        info!(volume = %name, "resumed");
        self.log.emit("volume-resumed", Some(name), String::new());
        self.start_jobs_of(&v);
        Ok(Payload::Volume(self.volume_view(&v)))
    }

    /// Take a failed ALU back with its data (mdadm's `--re-add`): each mirror
    /// leg on it gets back into its mirror as rebuilding and a dirty-only
    /// rebuild copies onto it what its mirror's bitmap marks; a linear or
    /// stripe volume that lost it may come online again.
    fn readd(&mut self, path: &str, rate: u64) -> Result<Payload, String> {
        let uuid = match self.store.alus().into_iter().find(|a| a.path == path) {
            Some(AluStatus {
                state: AluState::Damaged {
                    uuid: Some(uuid), ..
                },
                ..
            }) => uuid,
            Some(AluStatus {
                state: AluState::Owned { .. },
                ..
            }) => return Err(format!("alu {path}: not failed: nothing to re-add")),
            Some(a) => {
                return Err(format!(
                    "alu {path}: {}: cannot be re-added (`tierblk alu replace` onto another ALU instead)",
                    state_name(&a.state)
                ))
            }
            None => return Err(format!("alu {path}: unknown (not scanned by this daemon)")),
        };
        let back = self.store.unfail_alu(uuid).map_err(|e| e.to_string())?;
        info!(alu = %path, "re-added");
        self.log.emit("alu-readded", None, path.to_string());
        let mut out = Vec::new();
        for (name, member, job) in back {
            let def = self.volume(&name)?;
            let Some(job) = job else {
                let down = !matches!(
                    self.runtime.get(&name),
                    Some(Runtime::Online { .. } | Runtime::Remote { .. })
                );
                if down && self.exposed_here(&def) {
                    if let Err(e) = self.online(&name) {
                        warn!("{e}");
                    }
                } else if down {
                    // Only other SPs expose it: its tree here, for its jobs.
                    self.hold_remote(&def, false);
                    self.start_jobs_of(&def);
                }
                continue;
            };
            out.push(self.start_leg_job(&def, member, job, rate)?);
        }
        Ok(Payload::Jobs(out))
    }

    /// Hand the running volume its new leg: every queue switches at its next
    /// I/O, and the leg takes writes (never reads) while it is rebuilt.
    fn swap_leg(&mut self, def: &VolumeDef, member: u16) -> Result<(), String> {
        let mut pieces = Vec::new();
        for s in def.segments.iter().filter(|s| s.member == member) {
            pieces.push(self.piece(s.alu, s.start, s.len)?);
        }
        // Only the leg slots change: every instance of the tree (queues and
        // jobs) takes its legs from the slots, whatever `desc` first said.
        let (mirror, leg) = def.leg_of(member);
        let Some((_, health)) = self.job_tree(&def.name) else {
            return Ok(());
        };
        let health = health[mirror].clone();
        // The new leg's bitmap copy first: its first write must find it.
        self.move_intent_copy(def, &health, member)?;
        let slot = health
            .slot(leg)
            .ok_or_else(|| format!("volume {}: member {member}: no leg slot", def.name))?;
        slot.replace(MemberDesc { pieces })
            .map_err(|e| format!("volume {}: member {member}: {e}", def.name))?;
        health.start_rebuild(leg, 0);
        Ok(())
    }

    fn scrub(&mut self, name: &str, repair: bool, rate: u64) -> Result<Payload, String> {
        let v = self.volume(name)?;
        if !matches!(v.layout.kind, LayoutKind::Mirror | LayoutKind::Raid10) {
            return Err(format!(
                "volume {name}: {} has no copies to compare",
                layout_name(&v.layout)
            ));
        }
        let Some((desc, _)) = self.job_tree(name) else {
            return Err(format!(
                "volume {name}: offline: bring it online to scrub it"
            ));
        };
        if let Some(j) = self
            .store
            .jobs()
            .into_iter()
            .find(|j| j.volume == v.id && j.state == JobState::Running)
        {
            return Err(format!(
                "volume {name}: job {} is already running on it (wait: tierblk job show {} --wait)",
                j.id, j.id
            ));
        }
        let mirrors = u64::from(v.layout.stripes.max(1));
        let total = jobs::leg_size(desc) * mirrors;
        let job = self
            .store
            .add_job(Job {
                repair,
                rate,
                ..Job::whole(JobKind::Scrub, v.id, total)
            })
            .map_err(|e| e.to_string())?;
        self.start_jobs_of(&v);
        Ok(Payload::Job(self.job_view(&job)))
    }

    fn cancel_job(&mut self, id: u64) -> Result<Payload, String> {
        let mut j = self.job(id)?;
        if j.state != JobState::Running {
            return Err(format!("job {id}: not running"));
        }
        if let Some(r) = self.jobs.remove(&id) {
            j.checkpoint = r.stop().min(j.total);
        }
        j.state = JobState::Paused;
        self.store.update_job(&j).map_err(|e| e.to_string())?;
        info!(job = id, checkpoint = j.checkpoint, "job paused");
        Ok(Payload::Job(self.job_view(&j)))
    }

    fn resume_job(&mut self, id: u64) -> Result<Payload, String> {
        let mut j = self.job(id)?;
        if j.state != JobState::Paused {
            return Err(format!("job {id}: not paused"));
        }
        j.state = JobState::Running;
        self.store.update_job(&j).map_err(|e| e.to_string())?;
        if j.kind == JobKind::Rollback {
            self.start_rollback(&j)?;
        } else if let Some(v) = self.volume_by_id(j.volume) {
            self.start_jobs_of(&v);
        }
        Ok(Payload::Job(self.job_view(&j)))
    }

    fn on_job_progress(&mut self, id: u64, checkpoint: u64) {
        let Ok(mut j) = self.job(id) else { return };
        if j.state != JobState::Running || checkpoint <= j.checkpoint {
            return;
        }
        j.checkpoint = checkpoint.min(j.total);
        if let Err(e) = self.store.update_job(&j) {
            error!(job = id, "cannot persist the job's checkpoint: {e}");
        }
    }

    fn on_job_ended(&mut self, id: u64, run: u64, outcome: jobs::Outcome) {
        // Not the running run (`stop_jobs_of` took it out, or a quiesce and
        // resume replaced it before this event came): stopped by us.
        let stopped_here = match self.jobs.get(&id) {
            Some(r) if r.run == run => {
                self.jobs.remove(&id);
                false
            }
            _ => true,
        };
        let Ok(mut j) = self.job(id) else { return };
        if let (JobKind::Move, jobs::Outcome::Done { .. }) = (j.kind, &outcome) {
            // The copy is complete: its checkpoint first (so a failure below
            // finishes again later), then the source member goes in the
            // commit that ends the job.
            j.checkpoint = j.total;
            if let Err(e) = self.store.update_job(&j) {
                error!(job = id, "cannot persist the move's checkpoint: {e}");
                return;
            }
            self.finish_move(id);
            return;
        }
        match outcome {
            jobs::Outcome::Done {
                mismatches,
                repaired,
            } => {
                j.state = JobState::Done;
                j.checkpoint = j.total;
                j.mismatches = mismatches;
                j.repaired = repaired;
            }
            // Stopped by us (offline, cancel, shutdown): state and checkpoint
            // already persisted; the counters come only with the outcome.
            jobs::Outcome::Stopped {
                mismatches,
                repaired,
                ..
            } if stopped_here => {
                if (mismatches, repaired) != (j.mismatches, j.repaired) {
                    j.mismatches = mismatches;
                    j.repaired = repaired;
                    if let Err(e) = self.store.update_job(&j) {
                        error!(job = id, "cannot persist the job's counters: {e}");
                    }
                }
                return;
            }
            jobs::Outcome::Stopped {
                checkpoint,
                mismatches,
                repaired,
            } => {
                j.state = JobState::Paused;
                j.checkpoint = checkpoint.min(j.total);
                j.mismatches = mismatches;
                j.repaired = repaired;
            }
            jobs::Outcome::Failed {
                checkpoint,
                message,
            } => {
                j.state = JobState::Failed;
                j.checkpoint = checkpoint.min(j.total);
                j.message = message.chars().take(120).collect();
            }
            // Another SP could not be held: still running, started again at
            // the next inventory round (`retry_jobs`).
            jobs::Outcome::Waiting {
                checkpoint,
                mismatches,
                repaired,
                message,
            } => {
                j.checkpoint = checkpoint.min(j.total);
                (j.mismatches, j.repaired) = (mismatches, repaired);
                warn!(job = id, "job waits: {message}");
                if let Err(e) = self.store.update_job(&j) {
                    error!(job = id, "cannot persist the job's checkpoint: {e}");
                }
                let vname = self.volume_by_id(j.volume).map(|v| v.name);
                self.log.emit(
                    "job-waiting",
                    vname.as_deref(),
                    format!("job {id} ({:?}): {message}", j.kind),
                );
                return;
            }
        }
        let vname = self.volume_by_id(j.volume).map(|v| v.name);
        self.log.emit(
            "job-ended",
            vname.as_deref(),
            format!("job {} ({:?}) {:?} {}", j.id, j.kind, j.state, j.message),
        );
        if let Err(e) = self.store.update_job(&j) {
            error!(job = id, "cannot persist the job's end: {e}");
            return;
        }
        // The volume's next queued job, if any.
        if let Some(v) = self.volume_by_id(j.volume) {
            self.start_jobs_of(&v);
        }
        if j.state == JobState::Done && j.kind == JobKind::Rebuild {
            if let (Some(v), Some(m)) = (self.volume_by_id(j.volume), j.member) {
                if let Some((_, health)) = self.job_tree(&v.name) {
                    let (mirror, leg) = v.leg_of(m);
                    if let Some(h) = health.get(mirror) {
                        h.finish_rebuild(leg);
                    }
                }
                info!(volume = %v.name, member = m, "rebuild complete: leg in sync");
                // The other SPs read the leg again.
                if let Err(e) = self.assign_writers(&v) {
                    warn!(volume = %v.name, "the other SPs keep the leg unread for now: {e}");
                }
            }
        }
    }

    fn alu_view(&self, path: &str) -> Result<AluView, String> {
        self.alu_views()
            .into_iter()
            .find(|a| a.path == path)
            .ok_or_else(|| format!("alu {path}: unknown"))
    }

    fn alu_views(&self) -> Vec<AluView> {
        let image: Option<&ClusterImage> = self.store.image();
        let mut out: Vec<AluView> = self
            .store
            .alus()
            .into_iter()
            .map(|s| {
                let mut view = AluView {
                    sp: self.sp_of(&s.path),
                    path: s.path.clone(),
                    state: state_name(&s.state).into(),
                    size: s.size,
                    uuid: None,
                    cluster: None,
                    detail: None,
                    boot_member: false,
                    free: None,
                    partitions: Vec::new(),
                };
                match &s.state {
                    AluState::Owned { uuid } => {
                        view.uuid = Some(uuid.to_string());
                        view.cluster = image.map(|i| i.sig.name.clone());
                        view.free = Some(self.store.free_extents(*uuid).iter().map(|e| e.len).sum());
                        if let Some(i) = image {
                            view.boot_member = i.alus.iter().any(|a| a.uuid == *uuid && a.boot_member);
                            for v in &i.volumes {
                                for seg in v.segments.iter().filter(|seg| seg.alu == *uuid) {
                                    view.partitions.push(PartitionView {
                                        volume: v.name.clone(),
                                        start: seg.start,
                                        len: seg.len,
                                    });
                                }
                            }
                        }
                    }
                    AluState::NotOwned { foreign } => {
                        view.detail = match self.legacy_on_path(&s.path) {
                            Some(name) => Some(format!("adopted as legacy volume {name}")),
                            None => foreign.clone(),
                        }
                    }
                    AluState::Damaged { uuid, reason } => {
                        view.uuid = uuid.map(|u| u.to_string());
                        view.detail = Some(reason.clone());
                    }
                    AluState::OtherCluster { sig } => {
                        view.cluster = Some(sig.name.clone());
                        view.detail = Some(format!("owned by cluster {:?}", sig.name));
                    }
                    AluState::Orphan { uuid } => {
                        view.uuid = Some(uuid.to_string());
                        view.detail =
                            Some("signature present but not in the boot set (interrupted claim): claim it again".into());
                    }
                    AluState::Unreadable { reason } => view.detail = Some(reason.clone()),
                }
                view
            })
            .collect();
        for (path, err) in &self.missing {
            out.push(AluView {
                sp: self.sp_of(path),
                path: path.clone(),
                state: "missing".into(),
                size: 0,
                uuid: None,
                cluster: None,
                detail: Some(err.clone()),
                boot_member: false,
                free: None,
                partitions: Vec::new(),
            });
        }
        out.sort_by(|a, b| a.path.cmp(&b.path));
        out
    }
}

fn absent_alu() -> Result<Arc<File>, String> {
    File::open("/dev/null")
        .map(Arc::new)
        .map_err(|e| format!("cannot open /dev/null: {e}"))
}

/// Turn the CLI's layout request into a validated layout, with defaults.
fn layout_from(spec: &LayoutSpec) -> Result<Layout, String> {
    let chunk = spec.chunk.unwrap_or(64 << 10);
    let (kind, stripes, copies, chunk) = match spec.kind.as_str() {
        "linear" | "concat" => (LayoutKind::Linear, 1, 1, 0),
        "stripe" => (LayoutKind::Stripe, spec.stripes.unwrap_or(2), 1, chunk),
        "mirror" => (LayoutKind::Mirror, 1, spec.copies.unwrap_or(2), 0),
        "raid10" => (
            LayoutKind::Raid10,
            spec.stripes.unwrap_or(2),
            spec.copies.unwrap_or(2),
            chunk,
        ),
        other => {
            return Err(format!(
                "unknown layout {other:?} (linear, concat, stripe, mirror, raid10)"
            ))
        }
    };
    let layout = Layout {
        kind,
        stripes,
        copies,
        chunk,
    };
    layout.validate()?;
    Ok(layout)
}

fn layout_name(l: &Layout) -> &'static str {
    match l.kind {
        LayoutKind::Linear => "linear",
        LayoutKind::Stripe => "stripe",
        LayoutKind::Mirror => "mirror",
        LayoutKind::Raid10 => "raid10",
    }
}

pub fn state_name(s: &AluState) -> &'static str {
    match s {
        AluState::NotOwned { .. } => "not-owned",
        AluState::Owned { .. } => "owned",
        AluState::Damaged { .. } => "damaged",
        AluState::OtherCluster { .. } => "other-cluster",
        AluState::Orphan { .. } => "orphan",
        AluState::Unreadable { .. } => "unreadable",
    }
}

pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Refuse to stop a device that is mounted or held open: an exclusive open of
/// a block device fails with EBUSY while a filesystem is mounted on it.
fn ensure_unused(dev: &str) -> Result<(), String> {
    use std::os::unix::fs::OpenOptionsExt;
    match std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_EXCL)
        .open(dev)
    {
        Ok(_) => Ok(()),
        Err(e) if e.raw_os_error() == Some(libc::EBUSY) => Err(format!(
            "{dev} is in use (mounted or open): unmount it first"
        )),
        // Device node gone or not openable: nothing holds it through us.
        Err(_) => Ok(()),
    }
}
