//! The metadata store: scans ALUs, chooses the committed cluster image and performs
//! the crash-safe commit protocols (claim, release, create/remove volume, replace
//! member, persisted jobs).
//!
//! Ties together the MDR directory ([058]), the label directory ([057]), the object
//! database with its per-ALU copies of every volume top object ([056], [059]) and the
//! boot set ("GS ALU set", [059]). The boot set commit is the single commit point of
//! every operation; everything written before it is invisible garbage until it lands,
//! everything cleaned up after it is already invisible. See `docs/FORMAT.md`.

use std::collections::HashSet;

use crate::archive::{self, ArchiveRecord};
use crate::bootset::{
    read_list, BootList, BootPtr, BootVol, LIST_FLAG_DIRTY, MAX_EXPOSURES, MAX_JOBS, MAX_LEGACY,
    MAX_MEMBERS, MAX_SCHEDULES,
};
use crate::disk::Disk;
use crate::error::{FormatError, MetaError};
use crate::foreign::detect_foreign;
use crate::label::{max_entries, now_secs, LabelDir, LabelEntry, STATE_ALLOCATED};
use crate::mdr::{
    backup_offset, Directory, ARCHIVE_SLOT, ARCHIVE_SLOTS, BLOCK, DIR_MAGIC, DIR_OFFSET, MIB,
    MIN_ALU_SIZE,
};
use crate::objdb::{def_crc, AluObj, ObjDb, PartitionObj, Record};
pub use crate::types::{
    random_wwn, AluRecord, ClusterImage, ClusterSig, Extent, Job, JobKind, JobState, Layout,
    LayoutKind, MemberHealth, Segment, SnapshotOf, Uuid, VolumeDef,
};
use crate::types::{
    valid_cluster_name, valid_sp_name, valid_volume_name, Exposure, LegacyVol, Schedule, MAX_COPIES,
};

/// What the store knows about one device.
#[derive(Clone, Debug)]
pub enum AluState {
    /// No tierblk directory. `foreign` names a detected foreign signature.
    NotOwned { foreign: Option<String> },
    /// In this cluster's boot list, metadata readable.
    Owned { uuid: Uuid },
    /// Ours, but some region is unreadable on every copy, or the ALU is in the
    /// failed-ALU list (reason "failed by administrator or on I/O error (fail_seq N)"):
    /// never written.
    Damaged { uuid: Option<Uuid>, reason: String },
    /// Owned by another cluster: never written.
    OtherCluster { sig: ClusterSig },
    /// Carries this cluster's signature but is not in the committed boot list
    /// (e.g. crash during claim or release): treated as not owned; claim may reuse it.
    Orphan { uuid: Uuid },
    /// The device could not be read.
    Unreadable { reason: String },
}

/// One device as seen by the store.
#[derive(Clone, Debug)]
pub struct AluStatus {
    pub path: String,
    pub size: u64,
    pub state: AluState,
}

/// Findings of an open/scan; one human-readable line each, naming the ALU and region.
#[derive(Default, Debug)]
pub struct OpenReport {
    pub repairs: Vec<String>,
    pub problems: Vec<String>,
}

type Copy2<T> = [Result<T, FormatError>; 2];

fn blank2<T>() -> Copy2<T> {
    [Err(FormatError::Blank), Err(FormatError::Blank)]
}

const COPY: [&str; 2] = ["A", "B"];

/// Index of the valid copy with the highest `seq` (ties: the lower index).
fn live_idx<T>(c: &Copy2<T>, seq: impl Fn(&T) -> u64) -> Option<usize> {
    let mut best: Option<(usize, u64)> = None;
    for (i, r) in c.iter().enumerate() {
        if let Ok(v) = r {
            let s = seq(v);
            if best.is_none_or(|(_, bs)| s > bs) {
                best = Some((i, s));
            }
        }
    }
    best.map(|(i, _)| i)
}

fn both_errors<T>(c: &Copy2<T>) -> String {
    let e = |i: usize| match &c[i] {
        Ok(_) => "ok".to_string(),
        Err(e) => e.to_string(),
    };
    format!("copy A: {}, copy B: {}", e(0), e(1))
}

struct Slot {
    path: String,
    disk: Box<dyn Disk>,
    size: u64,
    io_error: Option<String>,
    /// Primary and backup directory.
    dir: Copy2<Directory>,
    /// Unchecked ALU uuid of a directory block that has our magic but failed to decode.
    damaged_dir_uuid: Option<Uuid>,
    label: Copy2<LabelDir>,
    objdb: Copy2<ObjDb>,
    ptr: Copy2<(BootPtr, BootList)>,
    foreign: Option<String>,
    state: AluState,
    /// The physical device under the ALU, when known (boot set placement).
    device: Option<u64>,
}

impl Slot {
    fn new(path: String, disk: Box<dyn Disk>) -> Slot {
        let size = disk.size();
        let device = disk.device_id();
        Slot {
            path,
            disk,
            size,
            device,
            io_error: None,
            dir: blank2(),
            damaged_dir_uuid: None,
            label: blank2(),
            objdb: blank2(),
            ptr: blank2(),
            foreign: None,
            state: AluState::NotOwned { foreign: None },
        }
    }

    /// The directory in use: the primary if valid, else the backup.
    fn dir(&self) -> Option<&Directory> {
        self.dir[0].as_ref().ok().or(self.dir[1].as_ref().ok())
    }

    fn label_live(&self) -> Option<&LabelDir> {
        live_idx(&self.label, |l| l.seq).and_then(|i| self.label[i].as_ref().ok())
    }

    fn objdb_live(&self) -> Option<&ObjDb> {
        live_idx(&self.objdb, |o| o.seq).and_then(|i| self.objdb[i].as_ref().ok())
    }

    fn boot_live(&self) -> Option<&(BootPtr, BootList)> {
        live_idx(&self.ptr, |p| p.0.seq).and_then(|i| self.ptr[i].as_ref().ok())
    }

    fn owned_uuid(&self) -> Option<Uuid> {
        match self.state {
            AluState::Owned { uuid } => Some(uuid),
            _ => None,
        }
    }

    fn read_block(&mut self, off: u64) -> Result<Vec<u8>, FormatError> {
        let mut b = vec![0u8; BLOCK as usize];
        self.disk
            .read_at(off, &mut b)
            .map_err(|e| FormatError::Io(e.to_string()))?;
        Ok(b)
    }

    /// Read every metadata region from the device.
    fn load(&mut self) {
        self.size = self.disk.size();
        self.io_error = None;
        self.dir = blank2();
        self.damaged_dir_uuid = None;
        self.label = blank2();
        self.objdb = blank2();
        self.ptr = blank2();
        self.foreign = None;
        if self.size < 2 * BLOCK {
            return;
        }
        let size = self.size;
        for (i, off) in [DIR_OFFSET, backup_offset(size)].into_iter().enumerate() {
            match self.read_block(off) {
                Ok(b) => {
                    let r = Directory::decode(&b, off, size);
                    if r.is_err() && b.get(..8) == Some(&DIR_MAGIC[..]) {
                        let mut u = [0u8; 16];
                        if let Some(s) = b.get(40..56) {
                            u.copy_from_slice(s);
                            self.damaged_dir_uuid.get_or_insert(Uuid(u));
                        }
                    }
                    self.dir[i] = r;
                }
                Err(e) => {
                    if i == 0 {
                        self.io_error = Some(format!("read directory: {e}"));
                        return;
                    }
                    self.dir[i] = Err(e);
                }
            }
        }
        let Some(d) = self.dir().cloned() else {
            match detect_foreign(self.disk.as_mut()) {
                Ok(f) => self.foreign = f,
                Err(e) => self.io_error = Some(format!("read signature area: {e}")),
            }
            return;
        };
        for i in 0..2 {
            self.label[i] = LabelDir::read(self.disk.as_mut(), d.label[i], d.label_len);
            self.objdb[i] = ObjDb::read(self.disk.as_mut(), d.objdb[i], d.objdb_len);
            self.ptr[i] = self.read_block(d.bootptr[i]).and_then(|b| {
                let p = BootPtr::decode(&b, d.bootptr[i], d.bootlist_len)?;
                let l = read_list(self.disk.as_mut(), &p, d.bootlist)?;
                Ok((p, l))
            });
        }
    }

    fn io(&self, action: &str, e: std::io::Error) -> MetaError {
        MetaError::io(format!("alu {}: {action}", self.path), e)
    }

    fn write(&mut self, off: u64, b: &[u8], action: &str) -> Result<(), MetaError> {
        self.disk.write_at(off, b).map_err(|e| self.io(action, e))
    }

    fn flush(&mut self, action: &str) -> Result<(), MetaError> {
        self.disk.flush().map_err(|e| self.io(action, e))
    }

    fn need_dir(&self) -> Result<Directory, MetaError> {
        self.dir()
            .cloned()
            .ok_or_else(|| MetaError::Corrupt(format!("alu {}: no valid directory", self.path)))
    }

    /// Label update: write the invalid copy (else the one with the lower sequence) with
    /// seq = max + 1 and flush; then mirror the same content into the other copy and
    /// flush, so that after a completed update both copies are current.
    fn write_label(&mut self, entries: Vec<LabelEntry>) -> Result<(), MetaError> {
        let d = self.need_dir()?;
        if entries.len() > max_entries(d.label_len) {
            return Err(MetaError::NoSpace(format!(
                "alu {}: label directory: more than {} partitions",
                self.path,
                max_entries(d.label_len)
            )));
        }
        let (target, seq) = next_copy(&self.label, |l| l.seq);
        let l = LabelDir {
            seq,
            timestamp: now_secs(),
            entries,
        };
        self.write_label_copy(target, &l)?;
        self.write_label_copy(1 - target, &l)
    }

    fn write_label_copy(&mut self, c: usize, l: &LabelDir) -> Result<(), MetaError> {
        let d = self.need_dir()?;
        let action = format!("label directory copy {}: write", COPY[c]);
        self.label[c] = Err(FormatError::Io("write in progress".into()));
        self.write(d.label[c], &l.encode(d.label[c]), &action)?;
        self.flush(&action)?;
        self.label[c] = Ok(l.clone());
        Ok(())
    }

    /// Object database commit: write the slot not holding the live copy and flush
    /// (never overwriting the live copy), then mirror into the other slot and flush.
    fn write_objdb(&mut self, records: Vec<Record>) -> Result<(), MetaError> {
        let (target, seq) = next_copy(&self.objdb, |o| o.seq);
        let o = ObjDb { seq, records };
        self.write_objdb_slot(target, &o)?;
        self.write_objdb_slot(1 - target, &o)
    }

    fn write_objdb_slot(&mut self, c: usize, o: &ObjDb) -> Result<(), MetaError> {
        let d = self.need_dir()?;
        let bytes = o.encode(d.objdb[c]);
        if bytes.len() as u64 > d.objdb_len {
            return Err(MetaError::NoSpace(format!(
                "alu {}: object database: full ({} bytes needed)",
                self.path,
                bytes.len()
            )));
        }
        let action = format!("object database slot {}: write", COPY[c]);
        self.objdb[c] = Err(FormatError::Io("write in progress".into()));
        self.write(d.objdb[c], &bytes, &action)?;
        self.flush(&action)?;
        self.objdb[c] = Ok(o.clone());
        Ok(())
    }

    /// Boot set commit on this member: inactive list area, flush, the pointer not
    /// carrying the highest sequence, flush (the commit point); then the same again
    /// for the other area/pointer so both copies carry the new list.
    fn write_boot(&mut self, list: &BootList) -> Result<(), MetaError> {
        self.write_boot_once(list)?;
        self.write_boot_once(list)
    }

    fn write_boot_once(&mut self, list: &BootList) -> Result<(), MetaError> {
        let d = self.need_dir()?;
        let best = live_idx(&self.ptr, |p| p.0.seq);
        let (ptr_idx, area) =
            match best.and_then(|i| self.ptr[i].as_ref().ok().map(|p| (i, p.0.area))) {
                Some((i, a)) => (1 - i, 1 - (a as usize & 1)),
                None => (0, 0),
            };
        let bytes = list.encode();
        if bytes.len() as u64 > d.bootlist_len {
            return Err(MetaError::NoSpace(format!(
                "alu {}: boot list too large ({} bytes)",
                self.path,
                bytes.len()
            )));
        }
        let p = BootPtr {
            seq: list.seq,
            area: area as u32,
            list_len: bytes.len() as u64,
            list_crc: crc32c::crc32c(&bytes),
            cluster: list.sig.uuid,
        };
        // Any pointer referring to the area we overwrite becomes invalid.
        for i in 0..2 {
            if self.ptr[i]
                .as_ref()
                .is_ok_and(|q| q.0.area as usize == area)
            {
                self.ptr[i] = Err(FormatError::Io("list area rewritten".into()));
            }
        }
        let mut padded = bytes;
        padded.resize(padded.len().div_ceil(BLOCK as usize) * BLOCK as usize, 0);
        let action = format!("boot list area {}: write", COPY[area]);
        self.write(d.bootlist[area], &padded, &action)?;
        self.flush(&action)?;
        let action = format!("boot pointer {}: write", COPY[ptr_idx]);
        self.ptr[ptr_idx] = Err(FormatError::Io("write in progress".into()));
        self.write(d.bootptr[ptr_idx], &p.encode(d.bootptr[ptr_idx]), &action)?;
        self.flush(&action)?;
        self.ptr[ptr_idx] = Ok((p, list.clone()));
        Ok(())
    }
}

/// One archived configuration as [`Store::history`] lists it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ArchiveEntry {
    /// Sequence number of the archived boot list.
    pub seq: u64,
    /// Unix seconds when it was archived (when the commit replacing it began).
    pub time: u64,
    /// Names of the volumes it lists.
    pub volumes: Vec<String>,
    /// ALUs it lists.
    pub alus: usize,
    /// How many archive rings hold a copy.
    pub copies: usize,
}

/// What [`Store::restore`] does (or did).
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub struct RestorePlan {
    pub seq: u64,
    /// Volumes brought back or given their archived definition.
    pub restored: Vec<String>,
    /// Current volumes absent from the archive, dropped (only with `force`).
    pub dropped: Vec<String>,
    /// Volumes whose definition is the same in the archive: left as they are.
    pub unchanged: Vec<String>,
}

/// Finished (Done/Failed) jobs kept when a job commit prunes the table.
pub const KEEP_FINISHED_JOBS: usize = 16;

/// The metadata store over a set of devices.
pub struct Store {
    slots: Vec<Slot>,
    cluster_name: Option<String>,
    repair: bool,
    list: Option<BootList>,
    image: Option<ClusterImage>,
    boot_unreadable: bool,
    max_seq: u64,
    vol_problems: Vec<(String, String)>,
    /// (volume, member, why) for members that are failed or unavailable.
    vol_degraded: Vec<(String, u16, String)>,
    problems: Vec<String>,
    /// Set after a failed write: in-memory state may not match the disks.
    poisoned: Option<String>,
    /// Metadata archive writes that failed or were skipped (newest last, bounded).
    archive_problems: Vec<String>,
}

fn alu_obj(r: &AluRecord) -> AluObj {
    AluObj {
        uuid: r.uuid,
        wwn: r.wwn,
        size: r.size,
        data_start: r.data_start,
        data_end: r.data_end,
    }
}

/// Sorted free extents of `[lo, hi)` minus `used` (clipped), 1 MiB aligned.
fn subtract(lo: u64, hi: u64, used: &[Extent]) -> Vec<Extent> {
    let mut u: Vec<Extent> = used.to_vec();
    u.sort_by_key(|e| e.start);
    let mut out = Vec::new();
    let mut cur = lo;
    for e in u {
        let end = e.start.saturating_add(e.len);
        if end <= cur {
            continue;
        }
        if e.start > cur {
            let s = cur.div_ceil(MIB) * MIB;
            let t = (e.start.min(hi) / MIB) * MIB;
            if t > s {
                out.push(Extent {
                    start: s,
                    len: t - s,
                });
            }
        }
        cur = cur.max(end);
        if cur >= hi {
            break;
        }
    }
    let s = cur.div_ceil(MIB) * MIB;
    let t = (hi / MIB) * MIB;
    if t > s {
        out.push(Extent {
            start: s,
            len: t - s,
        });
    }
    out
}

impl Store {
    /// Scan every disk: read directories, label directories, object databases and boot
    /// sets; build the committed image. `cluster_name`: if Some, ALUs of another cluster
    /// are `OtherCluster`. Repairs are performed only when `repair` is true, and only on
    /// ALUs that are Owned and consistent; they are listed in the report either way.
    pub fn open(
        disks: Vec<(String, Box<dyn Disk>)>,
        cluster_name: Option<&str>,
        repair: bool,
    ) -> Result<(Store, OpenReport), MetaError> {
        let mut st = Store {
            slots: disks.into_iter().map(|(p, d)| Slot::new(p, d)).collect(),
            cluster_name: cluster_name.map(str::to_string),
            repair,
            list: None,
            image: None,
            boot_unreadable: false,
            max_seq: 0,
            vol_problems: Vec::new(),
            vol_degraded: Vec::new(),
            problems: Vec::new(),
            poisoned: None,
            archive_problems: Vec::new(),
        };
        for s in &mut st.slots {
            s.load();
        }
        let report = st.rescan_and_repair();
        Ok((st, report))
    }

    fn rescan_and_repair(&mut self) -> OpenReport {
        self.evaluate();
        let mut report = OpenReport::default();
        let needed = self.repairs_needed();
        for (idx, what) in needed {
            if self.repair && self.poisoned.is_none() {
                match self.do_repair(idx, &what) {
                    Ok(()) => report.repairs.push(format!("{} (repaired)", what.line)),
                    Err(e) => {
                        self.poisoned = Some(e.to_string());
                        report
                            .repairs
                            .push(format!("{} (repair failed: {e})", what.line))
                    }
                }
            } else {
                report
                    .repairs
                    .push(format!("{} (not repaired: read-only open)", what.line));
            }
        }
        self.evaluate();
        report.problems = self.problems.clone();
        report
    }

    /// Why the store refuses changes until [`Store::reopen`]: a write failed
    /// in the middle of a change, so what is in memory may not be on disk.
    pub fn poisoned(&self) -> Option<&str> {
        self.poisoned.as_deref()
    }

    /// Read every disk again and rebuild the committed image from what they
    /// hold, exactly as [`Store::open`] does at a restart (repairing if the
    /// store was opened to): the way back after a failed write poisoned the
    /// store, e.g. a peer's ALU that went away in the middle of a commit.
    /// Every change keeps the disks in its old or its new committed state at
    /// each of its writes (tests/crash.rs), so the disks are the truth; a disk
    /// that still fails reads is reported as a problem like at a start.
    pub fn reopen(&mut self) -> OpenReport {
        let slots = std::mem::take(&mut self.slots);
        self.slots = slots
            .into_iter()
            .map(|s| Slot::new(s.path, s.disk))
            .collect();
        for s in &mut self.slots {
            s.load();
        }
        self.list = None;
        self.image = None;
        self.boot_unreadable = false;
        self.max_seq = 0;
        self.vol_problems.clear();
        self.vol_degraded.clear();
        self.problems.clear();
        self.poisoned = None;
        self.rescan_and_repair()
    }

    /// The committed image; None until the first claim commits.
    pub fn image(&self) -> Option<&ClusterImage> {
        self.image.as_ref()
    }

    pub fn alus(&self) -> Vec<AluStatus> {
        self.slots
            .iter()
            .map(|s| AluStatus {
                path: s.path.clone(),
                size: s.size,
                state: s.state.clone(),
            })
            .collect()
    }

    /// Add a newly appeared device (for `alu scan`).
    pub fn add_disk(&mut self, path: String, disk: Box<dyn Disk>) -> Result<OpenReport, MetaError> {
        if self.slots.iter().any(|s| s.path == path) {
            return Err(MetaError::Invalid(format!("alu {path}: already known")));
        }
        let mut s = Slot::new(path, disk);
        s.load();
        self.slots.push(s);
        Ok(self.rescan_and_repair())
    }

    /// Forget a device that went away (a peer SP that stopped answering):
    /// nothing is written; commits go on without it, like an ALU that was
    /// not found at start-up, until [`Store::add_disk`] brings it back.
    pub fn remove_disk(&mut self, path: &str) -> Result<(), MetaError> {
        let i = self
            .slots
            .iter()
            .position(|s| s.path == path)
            .ok_or_else(|| MetaError::NotFound(format!("alu {path}: not known")))?;
        self.slots.remove(i);
        self.evaluate();
        Ok(())
    }

    pub fn path_of(&self, alu: Uuid) -> Option<&str> {
        let owned = self
            .slots
            .iter()
            .find(|s| s.owned_uuid() == Some(alu))
            .or_else(|| {
                self.slots
                    .iter()
                    .find(|s| s.dir().is_some_and(|d| d.alu_uuid == alu))
            });
        owned.map(|s| s.path.as_str())
    }

    /// Volumes that cannot serve I/O, with a one-line reason; held offline. Linear and
    /// stripe volumes: any member failed or with a segment missing/damaged; mirror and
    /// raid10: some mirror with no leg available. A mirror running degraded is not a
    /// problem (see [`Store::degraded_members`]).
    pub fn volume_problems(&self) -> Vec<(String, String)> {
        self.vol_problems.clone()
    }

    /// Where the write-intent bitmap block of `member` of `volume` lives: the ALU
    /// holding the member's first segment and the byte offset of its slot on that ALU
    /// (one [`crate::mdr::WI_SLOT`]-byte block; see [`VolumeDef::wi_location`]).
    /// `None` for an unknown volume or member, a volume without write-intent slots
    /// (linear, stripe, snapshot, or a mirror created before bitmaps existed) or one
    /// whose definition is unavailable.
    pub fn wi_location(&self, volume: &str, member: u16) -> Option<(Uuid, u64)> {
        self.image
            .as_ref()?
            .volumes
            .iter()
            .find(|v| v.name == volume)?
            .wi_location(member)
    }

    /// Members of `volume` that are Failed, Rebuilding, or whose segments are
    /// unavailable (ALU missing, damaged or failed; label entry missing), with why.
    pub fn degraded_members(&self, volume: &str) -> Vec<(u16, String)> {
        self.vol_degraded
            .iter()
            .filter(|(v, _, _)| v == volume)
            .map(|(_, m, w)| (*m, w.clone()))
            .collect()
    }

    fn slot_of(&self, alu: Uuid) -> Option<usize> {
        self.slots
            .iter()
            .position(|s| s.owned_uuid() == Some(alu))
            .or_else(|| {
                self.slots.iter().position(
                    |s| matches!(&s.state, AluState::Damaged { uuid: Some(u), .. } if *u == alu),
                )
            })
    }

    // ---------------------------------------------------------------- evaluation

    fn evaluate(&mut self) {
        self.problems.clear();
        self.vol_problems.clear();
        self.vol_degraded.clear();
        self.list = None;
        self.image = None;
        self.boot_unreadable = false;
        // 1. per-slot state without cluster context
        for s in &mut self.slots {
            s.state = if let Some(e) = &s.io_error {
                AluState::Unreadable { reason: e.clone() }
            } else if s.dir().is_none() {
                let ours = s
                    .dir
                    .iter()
                    .any(|r| !matches!(r, Err(FormatError::Blank) | Err(FormatError::BadMagic)));
                if ours {
                    AluState::Damaged {
                        uuid: s.damaged_dir_uuid,
                        reason: format!("directory: both copies invalid ({})", both_errors(&s.dir)),
                    }
                } else {
                    AluState::NotOwned {
                        foreign: s.foreign.clone(),
                    }
                }
            } else {
                AluState::Orphan {
                    uuid: s.dir().map(|d| d.alu_uuid).unwrap_or(Uuid::NIL),
                }
            };
        }
        let name_ok = |d: &Directory, want: &Option<String>| {
            want.as_ref().is_none_or(|n| *n == d.cluster.name)
        };
        // 2. boot candidates
        let mut best: Option<(u64, BootList)> = None;
        for s in &self.slots {
            let Some(d) = s.dir() else { continue };
            if !name_ok(d, &self.cluster_name) {
                continue;
            }
            for (p, l) in s.ptr.iter().flatten() {
                if l.sig != d.cluster {
                    continue;
                }
                if best.as_ref().is_none_or(|(bs, _)| p.seq > *bs) {
                    best = Some((p.seq, l.clone()));
                }
            }
        }
        let cluster_uuid = best.as_ref().map(|(_, l)| l.sig.uuid);
        self.max_seq = 0;
        for s in &self.slots {
            let Some(d) = s.dir() else { continue };
            if Some(d.cluster.uuid) == cluster_uuid {
                for (p, _) in s.ptr.iter().flatten() {
                    self.max_seq = self.max_seq.max(p.seq);
                }
            }
        }
        match best {
            Some((_, list)) => self.evaluate_with_list(list),
            None => self.evaluate_without_list(),
        }
    }

    fn region_state(s: &Slot, uuid: Uuid) -> AluState {
        if s.label_live().is_none() {
            return AluState::Damaged {
                uuid: Some(uuid),
                reason: format!(
                    "label directory: both copies invalid ({})",
                    both_errors(&s.label)
                ),
            };
        }
        if s.objdb_live().is_none() {
            return AluState::Damaged {
                uuid: Some(uuid),
                reason: format!(
                    "object database: both slots invalid ({})",
                    both_errors(&s.objdb)
                ),
            };
        }
        AluState::Owned { uuid }
    }

    fn has_objects(s: &Slot) -> bool {
        s.objdb_live()
            .is_some_and(|o| o.partitions().next().is_some() || o.volumes().next().is_some())
    }

    fn evaluate_with_list(&mut self, list: BootList) {
        let sig = list.sig.clone();
        let in_list: HashSet<Uuid> = list.alus.iter().map(|a| a.uuid).collect();
        let mut seen: Vec<(Uuid, String)> = Vec::new();
        for s in &mut self.slots {
            let Some(d) = s.dir().cloned() else { continue };
            if d.cluster != sig {
                let same_name_orphan = d.cluster.name == sig.name
                    && s.ptr.iter().all(|p| p.is_err())
                    && !Self::has_objects(s);
                s.state = if same_name_orphan {
                    AluState::Orphan { uuid: d.alu_uuid }
                } else {
                    AluState::OtherCluster { sig: d.cluster }
                };
                continue;
            }
            if !in_list.contains(&d.alu_uuid) {
                s.state = AluState::Orphan { uuid: d.alu_uuid };
                continue;
            }
            if let Some((_, other)) = seen.iter().find(|(u, _)| *u == d.alu_uuid) {
                s.state = AluState::Damaged {
                    uuid: Some(d.alu_uuid),
                    reason: format!("duplicate ALU uuid {} (also at {other})", d.alu_uuid),
                };
                continue;
            }
            seen.push((d.alu_uuid, s.path.clone()));
            s.state = match list.failed.iter().find(|(u, _)| *u == d.alu_uuid) {
                Some((_, q)) => AluState::Damaged {
                    uuid: Some(d.alu_uuid),
                    reason: format!("failed by administrator or on I/O error (fail_seq {q})"),
                },
                None => Self::region_state(s, d.alu_uuid),
            };
        }
        for s in &self.slots {
            if let AluState::Damaged { reason, .. } = &s.state {
                self.problems
                    .push(format!("alu {}: {reason}; never written", s.path));
            }
            if let AluState::Unreadable { reason } = &s.state {
                self.problems
                    .push(format!("alu {}: unreadable: {reason}", s.path));
            }
        }
        for a in &list.alus {
            if self.slot_of(a.uuid).is_none() {
                self.problems.push(format!(
                    "alu {}: listed in the boot list but not found",
                    a.uuid
                ));
            }
        }
        // volumes
        let mut volumes = Vec::new();
        for bv in &list.volumes {
            let (def, problem, degraded) = self.resolve_volume(bv, &list);
            if let Some(p) = problem {
                self.problems
                    .push(format!("volume {}: {p}; held offline", bv.name));
                self.vol_problems.push((bv.name.clone(), p));
            }
            for (m, why) in degraded {
                self.vol_degraded.push((bv.name.clone(), m, why));
            }
            volumes.push(def);
        }
        self.image = Some(ClusterImage {
            sig,
            seq: list.seq,
            alus: list.alus.clone(),
            volumes,
            failed_alus: list.failed.iter().map(|f| f.0).collect(),
            next_id: list.next_id,
            jobs: list.jobs.clone(),
            dirty: list.flags & LIST_FLAG_DIRTY != 0,
            schedules: list.schedules.clone(),
            legacy: list.legacy.clone(),
            exposures: list.exposures.clone(),
        });
        self.list = Some(list);
    }

    /// Resolve a boot-list volume: its definition, a problem if it cannot serve I/O
    /// (held offline), and the members that are unavailable (failed, rebuilding, or a
    /// segment missing/damaged) with the reason.
    fn resolve_volume(
        &self,
        bv: &BootVol,
        list: &BootList,
    ) -> (VolumeDef, Option<String>, Vec<(u16, String)>) {
        let found = self
            .slots
            .iter()
            .filter(|s| s.owned_uuid().is_some())
            .filter_map(|s| s.objdb_live())
            .flat_map(|o| o.volumes())
            .find(|v| v.id == bv.id && def_crc(v) == bv.def_crc)
            .cloned();
        let Some(mut def) = found else {
            let def = VolumeDef {
                id: bv.id,
                name: bv.name.clone(),
                size: bv.size,
                wwn: bv.wwn,
                segments: Vec::new(),
                layout: bv.layout,
                members: bv.health.clone(),
                snapshot: None,
                wi_slots: Vec::new(),
                moving: None,
            };
            // Name the damage that hid the definition, so the administrator
            // knows which ALU to look at.
            let damaged: Vec<String> = self
                .slots
                .iter()
                .filter_map(|s| match &s.state {
                    AluState::Damaged { reason, .. } => Some(format!("alu {}: {reason}", s.path)),
                    _ => None,
                })
                .collect();
            let mut why = "no valid copy of the volume definition on any available ALU".to_string();
            if !damaged.is_empty() {
                why = format!("{why} ({})", damaged.join("; "));
            }
            return (def, Some(why), Vec::new());
        };
        def.members = bv.health.clone();
        if def.name != bv.name
            || def.size != bv.size
            || def.wwn != bv.wwn
            || def.layout != bv.layout
            || def.members.len() != def.member_count()
        {
            return (
                def,
                Some("volume definition does not match the boot list".into()),
                Vec::new(),
            );
        }
        let n = def.member_count();
        let mut why: Vec<Option<String>> = def
            .members
            .iter()
            .map(|h| match h {
                MemberHealth::Ok => None,
                MemberHealth::Failed { fail_seq } => Some(format!("failed (fail_seq {fail_seq})")),
                MemberHealth::Rebuilding { checkpoint } => {
                    Some(format!("rebuilding (checkpoint {checkpoint})"))
                }
            })
            .collect();
        // Segment problems, first per member; `seg_why` keeps the first overall.
        let mut seg_why: Vec<Option<String>> = vec![None; n];
        for (i, seg) in def.segments.iter().enumerate() {
            let m = usize::from(seg.member);
            if seg_why.get(m).is_none_or(|w| w.is_some()) {
                continue;
            }
            let problem = if !list.alus.iter().any(|a| a.uuid == seg.alu) {
                Some(format!("segment {i}: ALU {} not in the cluster", seg.alu))
            } else if let Some(si) = self.slot_of(seg.alu) {
                let s = &self.slots[si];
                match s.label_live().filter(|_| s.owned_uuid().is_some()) {
                    None => Some(format!("segment {i}: ALU {} ({}) damaged", seg.alu, s.path)),
                    Some(l) => {
                        let ok = l.entries.iter().any(|e| {
                            e.partition == seg.partition_id
                                && e.owner == def.id
                                && e.start == seg.start
                                && e.len == seg.len
                        });
                        (!ok).then(|| {
                            format!(
                                "segment {i}: label entry for partition {} missing on ALU {}",
                                seg.partition_id, s.path
                            )
                        })
                    }
                }
            } else {
                Some(format!("segment {i}: ALU {} missing", seg.alu))
            };
            seg_why[m] = problem;
        }
        for (w, sw) in why.iter_mut().zip(seg_why) {
            match (w.as_mut(), sw) {
                (Some(w), Some(sw)) => *w = format!("{w}; {sw}"),
                (None, Some(sw)) => *w = Some(sw),
                _ => {}
            }
        }
        let degraded: Vec<(u16, String)> = why
            .iter()
            .enumerate()
            .filter_map(|(m, w)| w.clone().map(|w| (m as u16, w)))
            .collect();
        let mut problem = None;
        for g in 0..usize::from(def.layout.stripes.max(1)) {
            let legs: Vec<usize> = def.group_members(g).into_iter().map(usize::from).collect();
            if legs.iter().any(|&m| why[m].is_none()) {
                continue;
            }
            problem = Some(if legs.len() == 1 {
                let w = why[g].clone().unwrap_or_default();
                if n == 1 && !w.starts_with("failed") && !w.starts_with("rebuilding") {
                    w
                } else {
                    format!("member {g}: {w}")
                }
            } else {
                let detail: Vec<String> = legs
                    .iter()
                    .map(|&m| format!("member {m}: {}", why[m].clone().unwrap_or_default()))
                    .collect();
                let newest = legs
                    .iter()
                    .filter_map(|&m| match def.members[m] {
                        MemberHealth::Failed { fail_seq } => Some((fail_seq, m)),
                        _ => None,
                    })
                    .max();
                let mut p = format!("mirror {g}: no leg available ({})", detail.join("; "));
                if let Some((q, m)) = newest {
                    p = format!("{p}; newest leg: member {m} (fail_seq {q})");
                }
                p
            });
            break;
        }
        (def, problem, degraded)
    }

    fn evaluate_without_list(&mut self) {
        let want = self.cluster_name.clone();
        // Which cluster do the signed ALUs belong to?
        let mut sig: Option<ClusterSig> = None;
        let mut unreadable = false;
        for s in &self.slots {
            let Some(d) = s.dir() else { continue };
            if want.as_ref().is_some_and(|n| *n != d.cluster.name) {
                continue;
            }
            let bad_ptr = s
                .ptr
                .iter()
                .any(|p| matches!(p, Err(e) if *e != FormatError::Blank));
            if bad_ptr || Self::has_objects(s) {
                unreadable = true;
                sig.get_or_insert(d.cluster.clone());
            }
        }
        for s in &mut self.slots {
            let Some(d) = s.dir().cloned() else { continue };
            let mine = sig.as_ref().is_some_and(|g| *g == d.cluster);
            let name_match = want.as_ref().is_none_or(|n| *n == d.cluster.name);
            s.state = if mine {
                Self::region_state(s, d.alu_uuid)
            } else if name_match
                && (sig.is_none()
                    || (s.ptr.iter().all(|p| matches!(p, Err(FormatError::Blank)))
                        && !Self::has_objects(s)))
            {
                AluState::Orphan { uuid: d.alu_uuid }
            } else {
                AluState::OtherCluster { sig: d.cluster }
            };
        }
        let Some(sig) = sig.filter(|_| unreadable) else {
            return;
        };
        self.boot_unreadable = true;
        self.problems.push(format!(
            "cluster {}: boot set unreadable on every ALU; metadata changes refused",
            sig.name
        ));
        let mut alus = Vec::new();
        let mut volumes: Vec<VolumeDef> = Vec::new();
        for s in &self.slots {
            let Some(d) = s.dir() else { continue };
            if d.cluster != sig {
                continue;
            }
            for r in s.ptr.iter() {
                if let Err(e) = r {
                    if *e != FormatError::Blank {
                        self.problems
                            .push(format!("alu {}: boot pointer: {e}", s.path));
                    }
                }
            }
            alus.push(AluRecord {
                uuid: d.alu_uuid,
                wwn: d.wwn,
                size: d.alu_size,
                data_start: d.data_start,
                data_end: d.data_end,
                boot_member: false,
            });
            if let Some(o) = s.objdb_live() {
                for v in o.volumes() {
                    if !volumes.iter().any(|x| x.id == v.id) {
                        volumes.push(v.clone());
                    }
                }
            }
        }
        for v in &volumes {
            self.vol_problems.push((
                v.name.clone(),
                "boot set unreadable on every ALU; volume held offline".into(),
            ));
        }
        self.image = Some(ClusterImage {
            sig,
            seq: 0,
            alus,
            volumes,
            failed_alus: Vec::new(),
            next_id: 0,
            jobs: Vec::new(),
            dirty: false,
            schedules: Vec::new(),
            legacy: Vec::new(),
            exposures: Vec::new(),
        });
    }

    // ---------------------------------------------------------------- repair

    fn repairs_needed(&self) -> Vec<(usize, RepairItem)> {
        let mut out = Vec::new();
        if self.boot_unreadable {
            return out;
        }
        let Some(list) = &self.list else { return out };
        for (i, s) in self.slots.iter().enumerate() {
            let Some(uuid) = s.owned_uuid() else { continue };
            let p = &s.path;
            match (&s.dir[0], &s.dir[1]) {
                (Err(e), Ok(_)) => out.push((
                    i,
                    RepairItem::new(
                        RepairKind::DirPrimary,
                        format!(
                            "alu {p}: directory: primary copy invalid ({e}); rewrite from backup"
                        ),
                    ),
                )),
                (Ok(_), Err(e)) => out.push((
                    i,
                    RepairItem::new(
                        RepairKind::DirBackup,
                        format!(
                            "alu {p}: directory: backup copy invalid ({e}); rewrite from primary"
                        ),
                    ),
                )),
                (Ok(a), Ok(b)) if !a.same_content(b) => out.push((
                    i,
                    RepairItem::new(
                        RepairKind::DirBackup,
                        format!(
                            "alu {p}: directory: backup differs from primary; rewrite from primary"
                        ),
                    ),
                )),
                _ => {}
            }
            for c in 0..2 {
                if let Err(e) = &s.label[c] {
                    out.push((i, RepairItem::new(RepairKind::Label(c), format!("alu {p}: label directory: copy {} invalid ({e}); rewrite from copy {}", COPY[c], COPY[1 - c]))));
                }
                if let Err(e) = &s.objdb[c] {
                    out.push((i, RepairItem::new(RepairKind::Objdb(c), format!("alu {p}: object database: slot {} invalid ({e}); rewrite from slot {}", COPY[c], COPY[1 - c]))));
                }
            }
            let member = list.alus.iter().any(|a| a.uuid == uuid && a.boot_member);
            if member {
                let live = s.boot_live().map(|b| b.0.seq);
                let bad_ptr = s
                    .ptr
                    .iter()
                    .any(|r| matches!(r, Err(e) if *e != FormatError::Blank));
                if live != Some(list.seq) || bad_ptr {
                    let why = match live {
                        Some(q) if q != list.seq => {
                            format!("stale copy (seq {q}, current {})", list.seq)
                        }
                        None => "no valid copy".to_string(),
                        Some(_) => "one pointer sector invalid".to_string(),
                    };
                    out.push((
                        i,
                        RepairItem::new(
                            RepairKind::Boot,
                            format!("alu {p}: boot set: {why}; rewrite current boot list"),
                        ),
                    ));
                }
            }
        }
        out
    }

    fn do_repair(&mut self, idx: usize, item: &RepairItem) -> Result<(), MetaError> {
        let list = self.list.clone();
        let s = &mut self.slots[idx];
        match item.kind {
            RepairKind::DirPrimary | RepairKind::DirBackup => {
                let d = s.need_dir()?;
                let (i, off) = if item.kind == RepairKind::DirPrimary {
                    (0, DIR_OFFSET)
                } else {
                    (1, d.backup_offset)
                };
                let nd = d.at(off);
                s.write(off, &nd.encode(), "directory: repair")?;
                s.flush("directory: repair")?;
                s.dir[i] = Ok(nd);
            }
            RepairKind::Label(c) => {
                let l = s.label_live().cloned().ok_or_else(|| {
                    MetaError::Corrupt(format!("alu {}: label directory: no valid copy", s.path))
                })?;
                s.write_label_copy(c, &l)?;
            }
            RepairKind::Objdb(c) => {
                let o = s.objdb_live().cloned().ok_or_else(|| {
                    MetaError::Corrupt(format!("alu {}: object database: no valid slot", s.path))
                })?;
                s.write_objdb_slot(c, &o)?;
            }
            RepairKind::Boot => {
                if let Some(l) = list {
                    s.write_boot(&l)?;
                }
            }
        }
        Ok(())
    }

    // ---------------------------------------------------------------- commits

    fn check_writable(&self) -> Result<(), MetaError> {
        if let Some(p) = &self.poisoned {
            return Err(MetaError::Refused(format!(
                "metadata store must be reopened after a failed write ({p})"
            )));
        }
        if self.boot_unreadable {
            let name = self
                .image
                .as_ref()
                .map(|i| i.sig.name.as_str())
                .unwrap_or("?");
            return Err(MetaError::Refused(format!(
                "cluster {name}: boot set unreadable on every ALU; metadata changes refused until an administrator repairs it"
            )));
        }
        Ok(())
    }

    fn poison<T>(&mut self, r: Result<T, MetaError>) -> Result<T, MetaError> {
        if let Err(e) = &r {
            if matches!(e, MetaError::Io { .. }) {
                self.poisoned = Some(e.to_string());
            }
        }
        r
    }

    fn next_seq(&self) -> u64 {
        self.max_seq.max(self.list.as_ref().map_or(0, |l| l.seq)) + 1
    }

    /// A definition change in two phases: write `both` (old and new
    /// definitions side by side) to every writable ALU, commit `list` — the
    /// commit point — then bring the ALUs in line with `after` (the old
    /// definitions and extents go). The outer error is before the commit
    /// point (nothing changed); the inner one is the cleanup's, after it.
    fn commit_definitions(
        &mut self,
        list: &mut BootList,
        both: &[VolumeDef],
        after: &[VolumeDef],
    ) -> Result<Result<(), MetaError>, MetaError> {
        self.sync_alus(&list.alus, both)?;
        list.seq = self.next_seq();
        let r = self.boot_commit(list);
        self.poison(r)?;
        self.list = Some(list.clone());
        let r = self.sync_alus(&list.alus, after);
        self.evaluate();
        Ok(r)
    }

    /// Commit `list` as the next boot list (new sequence number, the
    /// protocol of [`Store::boot_commit`]); a failure poisons the store. The
    /// image is re-evaluated from it.
    fn commit_list(&mut self, list: &mut BootList) -> Result<(), MetaError> {
        list.seq = self.next_seq();
        let r = self.boot_commit(list);
        self.poison(r)?;
        self.evaluate();
        Ok(())
    }

    /// Commit `list` on every present, Owned boot member. Succeeds if at least one
    /// member committed (the others are stale and get healed on the next commit/open).
    fn boot_commit(&mut self, list: &BootList) -> Result<(), MetaError> {
        let members: Vec<usize> = list
            .alus
            .iter()
            .filter(|a| a.boot_member)
            .filter_map(|a| {
                self.slots
                    .iter()
                    .position(|s| s.owned_uuid() == Some(a.uuid))
            })
            .collect();
        // Keep the configuration this commit replaces (best effort, never fails it).
        self.archive_before_commit(list, &members);
        let mut ok = 0;
        let mut first_err = None;
        for i in members {
            match self.slots[i].write_boot(list) {
                Ok(()) => ok += 1,
                Err(e) => {
                    first_err.get_or_insert(e);
                }
            }
        }
        match (ok, first_err) {
            (0, Some(e)) => Err(e),
            (0, None) => Err(MetaError::Refused(format!(
                "cluster {}: no boot set member available",
                list.sig.name
            ))),
            (_, Some(e)) => {
                self.poisoned = Some(e.to_string());
                Ok(())
            }
            _ => Ok(()),
        }
    }

    fn boot_vols(&self, volumes: &[VolumeDef]) -> Vec<BootVol> {
        volumes
            .iter()
            .map(|v| {
                let old = self
                    .list
                    .as_ref()
                    .and_then(|l| l.volumes.iter().find(|b| b.id == v.id));
                let crc = match old {
                    Some(b) if v.segments.is_empty() => b.def_crc,
                    _ => def_crc(v),
                };
                BootVol {
                    id: v.id,
                    name: v.name.clone(),
                    size: v.size,
                    wwn: v.wwn,
                    def_crc: crc,
                    layout: v.layout,
                    health: v.members.clone(),
                }
            })
            .collect()
    }

    /// Bring label directory and object database of every Owned ALU in line with
    /// `volumes` (drops uncommitted garbage).
    fn sync_alus(&mut self, alus: &[AluRecord], volumes: &[VolumeDef]) -> Result<(), MetaError> {
        for rec in alus {
            let Some(i) = self
                .slots
                .iter()
                .position(|s| s.owned_uuid() == Some(rec.uuid))
            else {
                continue;
            };
            let s = &self.slots[i];
            let live_label = s.label_live().cloned();
            let live_obj = s.objdb_live().cloned();
            let mut entries = Vec::new();
            let mut records = vec![Record::Alu(alu_obj(rec))];
            let mut copies = Vec::new();
            for v in volumes {
                if v.segments.is_empty() {
                    if let Some(l) = &live_label {
                        entries.extend(l.entries.iter().filter(|e| e.owner == v.id).copied());
                    }
                    continue;
                }
                let mut here = false;
                for seg in v.segments.iter().filter(|g| g.alu == rec.uuid) {
                    here = true;
                    let e = LabelEntry {
                        start: seg.start,
                        len: seg.len,
                        owner: v.id,
                        partition: seg.partition_id,
                        state: STATE_ALLOCATED,
                        flags: 0,
                    };
                    // `volumes` may list two definitions of one volume (replace_member
                    // before its commit point): shared partitions appear once.
                    if entries.contains(&e) {
                        continue;
                    }
                    entries.push(e);
                    records.push(Record::Partition(PartitionObj {
                        id: seg.partition_id,
                        alu: rec.uuid,
                        start: seg.start,
                        len: seg.len,
                        volume: v.id,
                    }));
                }
                if here {
                    copies.push(Record::Volume(v.definition()));
                }
            }
            records.extend(copies);
            if let Some(o) = &live_obj {
                records.extend(
                    o.records
                        .iter()
                        .filter(|r| matches!(r, Record::Unknown { .. }))
                        .cloned(),
                );
            }
            entries.sort_by_key(|e| e.start);
            if live_label.as_ref().map(|l| &l.entries) != Some(&entries) {
                let r = self.slots[i].write_label(entries);
                self.poison(r)?;
            }
            if live_obj.as_ref().map(|o| &o.records) != Some(&records) {
                let r = self.slots[i].write_objdb(records);
                self.poison(r)?;
            }
        }
        Ok(())
    }

    /// Format the MDR on `path` and add the ALU to the boot list (creating the cluster
    /// if there is none). Returns the new ALU uuid.
    pub fn claim(
        &mut self,
        path: &str,
        cluster_name: &str,
        force: bool,
    ) -> Result<Uuid, MetaError> {
        self.check_writable()?;
        if !valid_cluster_name(cluster_name) {
            return Err(MetaError::Invalid(format!(
                "cluster name {cluster_name:?}: must be 1..=63 bytes"
            )));
        }
        let idx = self
            .slots
            .iter()
            .position(|s| s.path == path)
            .ok_or_else(|| MetaError::NotFound(format!("alu {path}: unknown device")))?;
        let refuse = |why: String| {
            Err(MetaError::Refused(format!(
                "alu {path}: claim refused: {why}"
            )))
        };
        if let Some(l) = self.legacy_on(idx) {
            return refuse(format!(
                "adopted as legacy volume {} (`tierblk vol remove {}` forgets it, keeping its data)",
                l.name, l.name
            ));
        }
        match &self.slots[idx].state {
            AluState::NotOwned { foreign: Some(f) } if !force => {
                return Err(MetaError::ForeignData {
                    path: path.to_string(),
                    what: f.clone(),
                })
            }
            AluState::NotOwned { .. } | AluState::Orphan { .. } => {}
            AluState::Owned { .. } => return refuse("already owned by this cluster".into()),
            AluState::OtherCluster { sig } => {
                return refuse(format!("owned by cluster {} ({})", sig.name, sig.uuid))
            }
            AluState::Damaged { reason, .. } => {
                return refuse(format!("damaged metadata: {reason}"))
            }
            AluState::Unreadable { reason } => return refuse(format!("unreadable: {reason}")),
        }
        if let Some(l) = &self.list {
            if l.sig.name != cluster_name {
                return refuse(format!("this store holds cluster {}", l.sig.name));
            }
        }
        let size = self.slots[idx].size;
        if size < MIN_ALU_SIZE {
            return refuse(format!(
                "device too small ({size} bytes, minimum {MIN_ALU_SIZE})"
            ));
        }
        let sig = match &self.list {
            Some(l) => l.sig.clone(),
            None => ClusterSig {
                name: cluster_name.to_string(),
                uuid: Uuid::random(),
            },
        };
        let uuid = Uuid::random();
        let dir = Directory::new_v1(uuid, random_wwn(), sig.clone(), size);
        let rec = AluRecord {
            uuid,
            wwn: dir.wwn,
            size,
            data_start: dir.data_start,
            data_end: dir.data_end,
            boot_member: true,
        };
        let r = self.format(idx, &dir, &rec);
        self.poison(r)?;
        // Commit point: boot set listing the new ALU.
        let mut list = self.list.clone().unwrap_or(BootList {
            sig: sig.clone(),
            seq: 0,
            next_id: 1,
            next_fail_seq: 1,
            alus: Vec::new(),
            volumes: Vec::new(),
            failed: Vec::new(),
            jobs: Vec::new(),
            flags: 0,
            schedules: Vec::new(),
            legacy: Vec::new(),
            exposures: Vec::new(),
        });
        let member = self.boot_membership_for(&mut list, idx);
        list.alus.push(AluRecord {
            boot_member: member,
            ..rec
        });
        list.seq = self.next_seq();
        self.slots[idx].state = AluState::Owned { uuid };
        let r = self.boot_commit(&list);
        if r.is_err() {
            self.poisoned
                .get_or_insert_with(|| "claim: boot set commit failed".into());
            self.evaluate();
        }
        r?;
        self.cluster_name = Some(sig.name.clone());
        self.evaluate();
        Ok(uuid)
    }

    /// Make one owned, unfailed non-member a boot set member, preferring one
    /// on a device no member is on yet.
    fn promote_member(&self, list: &mut BootList) {
        let used: Vec<Option<u64>> = list
            .alus
            .iter()
            .filter(|a| a.boot_member)
            .map(|a| self.device_of(a.uuid))
            .collect();
        let eligible: Vec<Uuid> = list
            .alus
            .iter()
            .filter(|a| {
                !a.boot_member
                    && !list.failed.iter().any(|(u, _)| *u == a.uuid)
                    && self.slots.iter().any(|s| s.owned_uuid() == Some(a.uuid))
            })
            .map(|a| a.uuid)
            .collect();
        let pick = eligible
            .iter()
            .find(|u| self.device_of(**u).is_none_or(|d| !used.contains(&Some(d))))
            .or(eligible.first())
            .copied();
        if let Some(a) = list.alus.iter_mut().find(|a| Some(a.uuid) == pick) {
            a.boot_member = true;
        }
    }

    /// New extents may go on `alu` only if it is in the cluster, not failed,
    /// and present and readable here. `what` names the object in a not-found
    /// error, `refused` prefixes the other refusals.
    fn check_usable(
        &self,
        list: &BootList,
        alu: Uuid,
        what: &str,
        refused: &str,
    ) -> Result<(), MetaError> {
        if !list.alus.iter().any(|a| a.uuid == alu) {
            return Err(MetaError::NotFound(format!(
                "{what}: ALU {alu} is not part of the cluster"
            )));
        }
        if list.failed.iter().any(|(u, _)| *u == alu) {
            return Err(MetaError::Refused(format!(
                "{refused}: ALU {alu} has failed"
            )));
        }
        if self.slots.iter().all(|s| s.owned_uuid() != Some(alu)) {
            return Err(MetaError::Refused(format!(
                "{refused}: ALU {alu} is missing or damaged"
            )));
        }
        Ok(())
    }

    /// Give the members `todo` of `def` (a mirror or raid10 definition whose
    /// `wi_slots` has one entry per member) a write-intent slot each: the lowest slot
    /// of the ALU holding the member's first segment that no member of another volume
    /// in `others` and no other member of `def` uses. There is no allocation table:
    /// slots are derived from the committed definitions, so removing a volume frees
    /// its slots. Pure: nothing is written. `what` prefixes errors.
    fn assign_wi_slots(
        &self,
        others: &[VolumeDef],
        def: &mut VolumeDef,
        todo: &[u16],
        what: &str,
    ) -> Result<(), MetaError> {
        for &m in todo {
            let alu = def
                .first_alu(m)
                .ok_or_else(|| MetaError::Invalid(format!("{what}: member {m} has no segment")))?;
            let idx = self.slots.iter().position(|s| s.owned_uuid() == Some(alu));
            let Some(dir) = idx.and_then(|i| self.slots[i].dir()) else {
                return Err(MetaError::Refused(format!(
                    "{what}: ALU {alu} is missing or damaged"
                )));
            };
            if !dir.has_wi_area() {
                return Err(MetaError::Refused(format!(
                    "{what}: ALU {alu} has no write-intent area (non-standard region layout)"
                )));
            }
            // A volume whose definition is unavailable may hold slots here that we
            // cannot see: never hand out a slot that might be in use.
            let label = idx.and_then(|i| self.slots[i].label_live());
            if let Some(v) = others.iter().find(|v| {
                v.segments.is_empty()
                    && v.layout.redundant()
                    && label.is_some_and(|l| l.entries.iter().any(|e| e.owner == v.id))
            }) {
                return Err(MetaError::Refused(format!(
                    "{what}: ALU {alu}: the write-intent slots of volume {} are unknown (its definition is unavailable) and it has partitions there",
                    v.name
                )));
            }
            let mut used = vec![false; crate::mdr::WI_SLOTS as usize];
            let mut mark = |v: &VolumeDef| {
                for (k, &slot) in v.wi_slots.iter().enumerate() {
                    if v.first_alu(k as u16) == Some(alu) {
                        if let Some(u) = used.get_mut(usize::from(slot)) {
                            *u = true;
                        }
                    }
                }
            };
            for v in others.iter().filter(|v| v.id != def.id) {
                mark(v);
            }
            // Members of `def` still to do hold placeholder slots: skip them.
            let pending: Vec<u16> = todo.iter().copied().skip_while(|&k| k != m).collect();
            let mut mine = def.clone();
            for &k in &pending {
                if let Some(s) = mine.wi_slots.get_mut(usize::from(k)) {
                    *s = u16::MAX;
                }
            }
            mark(&mine);
            let slot = used.iter().position(|u| !u).ok_or_else(|| {
                MetaError::NoSpace(format!(
                    "{what}: member {m}: no free write-intent slot on ALU {alu} (all {} in use)",
                    crate::mdr::WI_SLOTS
                ))
            })?;
            def.wi_slots[usize::from(m)] = slot as u16;
        }
        Ok(())
    }

    fn device_of(&self, alu: Uuid) -> Option<u64> {
        self.slots
            .iter()
            .find(|s| s.owned_uuid() == Some(alu))
            .and_then(|s| s.device)
    }

    /// Whether the ALU being claimed in slot `idx` joins the boot set: yes
    /// while there are fewer than [`MAX_MEMBERS`]; with a full set, it takes
    /// the place of a member sharing its device with another member when it
    /// brings a device the set lacks ("distinct devices preferred", [059]).
    /// The demoted member keeps a stale copy, which loses to newer sequence
    /// numbers at open.
    fn boot_membership_for(&self, list: &mut BootList, idx: usize) -> bool {
        let members: Vec<Uuid> = list
            .alus
            .iter()
            .filter(|a| a.boot_member)
            .map(|a| a.uuid)
            .collect();
        if members.len() < MAX_MEMBERS {
            return true;
        }
        let Some(dev) = self.slots[idx].device else {
            return false;
        };
        let devices: Vec<Option<u64>> = members.iter().map(|u| self.device_of(*u)).collect();
        if devices.contains(&Some(dev)) {
            return false;
        }
        // The last member whose device another member also uses.
        let dup = members.iter().enumerate().rev().find(|(i, _)| {
            devices[*i].is_some() && devices.iter().filter(|d| **d == devices[*i]).count() > 1
        });
        let Some((_, &demote)) = dup else {
            return false;
        };
        for a in list.alus.iter_mut().filter(|a| a.uuid == demote) {
            a.boot_member = false;
        }
        true
    }

    fn format(&mut self, idx: usize, dir: &Directory, rec: &AluRecord) -> Result<(), MetaError> {
        let s = &mut self.slots[idx];
        let zero = vec![0u8; BLOCK as usize];
        s.write(0, &zero, "claim: wipe block 0")?;
        let label = LabelDir {
            seq: 1,
            timestamp: now_secs(),
            entries: Vec::new(),
        };
        let obj = ObjDb {
            seq: 1,
            records: vec![Record::Alu(alu_obj(rec))],
        };
        for i in 0..2 {
            s.write(
                dir.label[i],
                &label.encode(dir.label[i]),
                "claim: write label directory",
            )?;
            s.write(
                dir.objdb[i],
                &obj.encode(dir.objdb[i]),
                "claim: write object database",
            )?;
            s.write(dir.bootptr[i], &zero, "claim: clear boot pointer")?;
        }
        s.flush("claim: flush metadata regions")?;
        s.write(DIR_OFFSET, &dir.encode(), "claim: write directory")?;
        let bk = dir.at(dir.backup_offset);
        s.write(bk.own_offset, &bk.encode(), "claim: write backup directory")?;
        s.flush("claim: flush directory")?;
        s.dir = [Ok(dir.clone()), Ok(bk)];
        s.damaged_dir_uuid = None;
        s.label = [Ok(label.clone()), Ok(label)];
        s.objdb = [Ok(obj.clone()), Ok(obj)];
        s.ptr = blank2();
        s.foreign = None;
        Ok(())
    }

    /// Remove an ALU from the cluster (refused while any volume uses it).
    pub fn release(&mut self, path: &str) -> Result<(), MetaError> {
        self.check_writable()?;
        let idx = self
            .slots
            .iter()
            .position(|s| s.path == path)
            .ok_or_else(|| MetaError::NotFound(format!("alu {path}: unknown device")))?;
        let Some(uuid) = self.slots[idx].owned_uuid() else {
            return Err(MetaError::Refused(format!(
                "alu {path}: release refused: not an owned, healthy ALU of this cluster"
            )));
        };
        let Some(mut list) = self.list.clone() else {
            return Err(MetaError::Refused(format!(
                "alu {path}: no committed cluster"
            )));
        };
        let image = self.image.clone();
        let in_use = image.iter().flat_map(|i| i.volumes.iter()).find(|v| {
            v.segments.iter().any(|g| g.alu == uuid)
                || (v.segments.is_empty()
                    && self.slots[idx]
                        .label_live()
                        .is_some_and(|l| l.entries.iter().any(|e| e.owner == v.id)))
        });
        if let Some(v) = in_use {
            return Err(MetaError::Refused(format!(
                "alu {path}: release refused: volume {} has a segment on it",
                v.name
            )));
        }
        let was_member = list.alus.iter().any(|a| a.uuid == uuid && a.boot_member);
        list.alus.retain(|a| a.uuid != uuid);
        if !list.alus.is_empty() {
            if was_member {
                self.promote_member(&mut list);
            }
            list.seq = self.next_seq();
            let r = self.boot_commit(&list);
            self.poison(r)?;
        }
        // After the commit point: invalidate the directory (primary, then backup).
        let s = &mut self.slots[idx];
        let d = s.need_dir()?;
        let zero = vec![0u8; BLOCK as usize];
        let r = (|| {
            s.write(DIR_OFFSET, &zero, "release: invalidate directory")?;
            s.flush("release: invalidate directory")?;
            s.dir[0] = Err(FormatError::Blank);
            s.write(
                d.backup_offset,
                &zero,
                "release: invalidate backup directory",
            )?;
            s.flush("release: invalidate backup directory")?;
            s.dir[1] = Err(FormatError::Blank);
            Ok(())
        })();
        let r = self.poison(r);
        if r.is_ok() {
            self.slots[idx].load();
        }
        self.evaluate();
        r
    }

    /// The partitions allocated in the live label directory of an Owned ALU (None
    /// for an ALU that is not Owned here). For audits and tests: allocation always
    /// goes by the committed definitions ([`Store::free_extents`]), so entries no
    /// committed definition references are uncommitted garbage.
    pub fn label_entries(&self, alu: Uuid) -> Option<Vec<LabelEntry>> {
        self.slots
            .iter()
            .find(|s| s.owned_uuid() == Some(alu))
            .and_then(|s| s.label_live())
            .map(|l| l.entries.clone())
    }

    /// Free extents on an Owned ALU: data area minus allocated extents, 1 MiB aligned.
    pub fn free_extents(&self, alu: Uuid) -> Vec<Extent> {
        let (Some(img), Some(i)) = (
            &self.image,
            self.slots.iter().position(|s| s.owned_uuid() == Some(alu)),
        ) else {
            return Vec::new();
        };
        let Some(rec) = img.alus.iter().find(|a| a.uuid == alu) else {
            return Vec::new();
        };
        let label = self.slots[i].label_live();
        let mut used = Vec::new();
        for v in &img.volumes {
            if v.segments.is_empty() {
                if let Some(l) = label {
                    used.extend(
                        l.entries
                            .iter()
                            .filter(|e| e.owner == v.id)
                            .map(|e| Extent {
                                start: e.start,
                                len: e.len,
                            }),
                    );
                }
            }
            used.extend(v.segments.iter().filter(|g| g.alu == alu).map(|g| Extent {
                start: g.start,
                len: g.len,
            }));
        }
        subtract(rec.data_start, rec.data_end, &used)
    }

    /// Create a linear volume from `plan` = ordered (alu, len) pieces.
    pub fn create_volume(
        &mut self,
        name: &str,
        size: u64,
        plan: &[(Uuid, u64)],
    ) -> Result<VolumeDef, MetaError> {
        let plan: Vec<(u16, Uuid, u64)> = plan.iter().map(|&(a, l)| (0, a, l)).collect();
        self.create_volume_with(name, size, Layout::linear(), &plan)
    }

    /// Create a volume of any layout: `plan` lists (member, alu, len) pieces; for each
    /// member the pieces are concatenated in order; every member must total
    /// size / stripes (stripe, raid10) or size (linear, mirror); legs of the same mirror
    /// must not share an ALU. Same crash-safe commit order as [`Store::create_volume`]:
    /// every check is done before anything is written.
    pub fn create_volume_with(
        &mut self,
        name: &str,
        size: u64,
        layout: Layout,
        plan: &[(u16, Uuid, u64)],
    ) -> Result<VolumeDef, MetaError> {
        self.create_inner(name, size, layout, plan, None)
    }

    /// Create snapshot volume `name` of volume `origin` (spec section VIII): a
    /// linear volume of `cow_size` bytes whose segments hold the copy-on-write
    /// store, planned like [`Store::create_volume`]. The origin must exist and
    /// not be a snapshot itself. Same crash-safe commit as any volume.
    pub fn create_snapshot(
        &mut self,
        name: &str,
        origin: &str,
        cow_size: u64,
        chunk: u32,
        plan: &[(Uuid, u64)],
    ) -> Result<VolumeDef, MetaError> {
        let Some(o) = self
            .image
            .as_ref()
            .and_then(|i| i.volumes.iter().find(|v| v.name == origin))
        else {
            return Err(MetaError::NotFound(format!("volume {origin}: not found")));
        };
        if o.snapshot.is_some() {
            return Err(MetaError::Invalid(format!(
                "snapshot {name}: {origin} is itself a snapshot"
            )));
        }
        let sn = SnapshotOf {
            origin: o.id,
            origin_size: o.size,
            chunk,
        };
        sn.validate()
            .map_err(|e| MetaError::Invalid(format!("snapshot {name}: {e}")))?;
        let plan: Vec<(u16, Uuid, u64)> = plan.iter().map(|&(a, l)| (0, a, l)).collect();
        self.create_inner(name, cow_size, Layout::linear(), &plan, Some(sn))
    }

    fn create_inner(
        &mut self,
        name: &str,
        size: u64,
        layout: Layout,
        plan: &[(u16, Uuid, u64)],
        snapshot: Option<SnapshotOf>,
    ) -> Result<VolumeDef, MetaError> {
        self.check_writable()?;
        let Some(mut list) = self.list.clone() else {
            return Err(MetaError::Refused(format!(
                "volume {name}: no cluster (claim an ALU first)"
            )));
        };
        let Some(image) = self.image.clone() else {
            return Err(MetaError::Refused(format!("volume {name}: no cluster")));
        };
        Self::check_new_name(&image, name)?;
        layout
            .validate()
            .map_err(|e| MetaError::Invalid(format!("volume {name}: {e}")))?;
        if size == 0 || !size.is_multiple_of(MIB) {
            return Err(MetaError::Invalid(format!(
                "volume {name}: size must be a non-zero multiple of 1 MiB"
            )));
        }
        layout
            .check_size(size)
            .map_err(|e| MetaError::Invalid(format!("volume {name}: {e}")))?;
        let members = layout.members();
        let member_size = layout.member_size(size);
        if !member_size.is_multiple_of(MIB) {
            return Err(MetaError::Invalid(format!(
                "volume {name}: size / stripes ({member_size} bytes) must be a multiple of 1 MiB"
            )));
        }
        if plan.is_empty() || plan.iter().any(|(_, _, l)| *l == 0 || l % MIB != 0) {
            return Err(MetaError::Invalid(format!(
                "volume {name}: plan pieces must be non-zero multiples of 1 MiB summing to the size"
            )));
        }
        if let Some((m, _, _)) = plan.iter().find(|(m, _, _)| usize::from(*m) >= members) {
            return Err(MetaError::Invalid(format!(
                "volume {name}: plan names member {m}, but the layout has {members} members"
            )));
        }
        for m in 0..members {
            let total = plan
                .iter()
                .filter(|(pm, _, _)| usize::from(*pm) == m)
                .try_fold(0u64, |a, (_, _, l)| a.checked_add(*l));
            if total != Some(member_size) {
                return Err(MetaError::Invalid(if members == 1 {
                    format!(
                        "volume {name}: plan pieces must be non-zero multiples of 1 MiB summing to the size"
                    )
                } else {
                    format!(
                        "volume {name}: member {m}: plan pieces total {} bytes, expected {member_size} (size / stripes)",
                        total.unwrap_or(u64::MAX)
                    )
                }));
            }
        }
        // Legs of one mirror on distinct ALUs: a shared ALU would lose both legs at once.
        if layout.redundant() {
            let alus_of = |m: usize| -> HashSet<Uuid> {
                plan.iter()
                    .filter(|(pm, _, _)| usize::from(*pm) == m)
                    .map(|(_, a, _)| *a)
                    .collect()
            };
            let copies = usize::from(layout.copies);
            for g in 0..usize::from(layout.stripes) {
                for x in g * copies..(g + 1) * copies {
                    for y in x + 1..(g + 1) * copies {
                        if let Some(a) = alus_of(x).intersection(&alus_of(y)).next() {
                            return Err(MetaError::Invalid(format!(
                                "volume {name}: refused: members {x} and {y} are legs of mirror {g} and both use ALU {a}; legs of one mirror must be on different ALUs"
                            )));
                        }
                    }
                }
            }
        }
        for (_, alu, _) in plan {
            self.check_usable(
                &list,
                *alu,
                &format!("volume {name}"),
                &format!("volume {name}"),
            )?;
        }
        let mut next_id = list.next_id.max(1);
        let vol_id = next_id;
        next_id += 1;
        let mut segments = Vec::new();
        self.place_pieces(plan.iter().copied(), &mut next_id, &mut segments)
            .map_err(|(_, alu, short)| {
                MetaError::NoSpace(format!(
                    "volume {name}: not enough free space on ALU {alu} ({} MiB short)",
                    short / MIB
                ))
            })?;
        // Canonical order: by member, each member's pieces in plan order.
        segments.sort_by_key(|g| g.member);
        let mut def = VolumeDef {
            id: vol_id,
            name: name.to_string(),
            size,
            wwn: random_wwn(),
            segments,
            layout,
            members: vec![MemberHealth::Ok; members],
            snapshot,
            wi_slots: Vec::new(),
            moving: None,
        };
        // Every leg gets a write-intent slot on the ALU of its first segment.
        if layout.redundant() {
            def.wi_slots = vec![0; members];
            let all: Vec<u16> = (0..members as u16).collect();
            self.assign_wi_slots(&image.volumes, &mut def, &all, &format!("volume {name}"))?;
        }
        let mut volumes = image.volumes.clone();
        volumes.push(def.clone());
        // Before the commit point: partitions, labels and volume copies on every ALU.
        self.sync_alus(&list.alus, &volumes)?;
        list.volumes = self.boot_vols(&volumes);
        list.next_id = next_id;
        self.commit_list(&mut list)?;
        Ok(def)
    }

    /// Persist one member's health with one boot set commit (definitions are not
    /// rewritten). `Failed { .. }`: the store assigns a new cluster-wide fail sequence
    /// number (the value passed is ignored); a member already Failed keeps its original
    /// number (nothing is written). `Rebuilding` needs a redundant layout, another leg
    /// of the same mirror that is Ok, and checkpoint <= member size. A member with a
    /// segment on a failed ALU can only be Failed. Returns the stored value.
    pub fn set_member_health(
        &mut self,
        volume: &str,
        member: u16,
        health: MemberHealth,
    ) -> Result<MemberHealth, MetaError> {
        self.check_writable()?;
        let (Some(mut list), Some(image)) = (self.list.clone(), self.image.clone()) else {
            return Err(MetaError::NotFound(format!("volume {volume}: no cluster")));
        };
        let Some(vi) = list.volumes.iter().position(|v| v.name == volume) else {
            return Err(MetaError::NotFound(format!("volume {volume}: not found")));
        };
        let bv = &list.volumes[vi];
        let m = usize::from(member);
        let Some(cur) = bv.health.get(m).copied() else {
            return Err(MetaError::Invalid(format!(
                "volume {volume}: no member {member} (the layout has {} members)",
                bv.health.len()
            )));
        };
        let layout = bv.layout;
        let def = image.volumes.iter().find(|v| v.id == bv.id);
        let stored = match health {
            MemberHealth::Failed { .. } => {
                if let MemberHealth::Failed { .. } = cur {
                    return Ok(cur);
                }
                let q = list.next_fail_seq.max(1);
                list.next_fail_seq = q + 1;
                MemberHealth::Failed { fail_seq: q }
            }
            MemberHealth::Ok | MemberHealth::Rebuilding { .. } => {
                if let Some((alu, _)) = def.and_then(|d| {
                    d.member_segments(member)
                        .find_map(|g| list.failed.iter().find(|(u, _)| *u == g.alu))
                }) {
                    return Err(MetaError::Refused(format!(
                        "volume {volume}: member {member}: has a segment on failed ALU {alu}"
                    )));
                }
                if let MemberHealth::Rebuilding { checkpoint } = health {
                    let moving = def.and_then(|d| d.moving);
                    if !layout.redundant() && moving.is_none() {
                        return Err(MetaError::Invalid(format!(
                            "volume {volume}: a {:?} volume has no redundancy to rebuild from",
                            layout.kind
                        )));
                    }
                    if checkpoint > layout.member_size(bv.size) {
                        return Err(MetaError::Invalid(format!(
                            "volume {volume}: member {member}: checkpoint {checkpoint} beyond the member size {}",
                            layout.member_size(bv.size)
                        )));
                    }
                    if let Err(g) = Self::other_leg_in_sync(bv, member, moving) {
                        return Err(MetaError::Refused(format!(
                            "volume {volume}: member {member}: no other leg of mirror {g} is in sync to rebuild from"
                        )));
                    }
                }
                health
            }
        };
        if stored == cur {
            return Ok(cur);
        }
        list.volumes[vi].health[m] = stored;
        if let MemberHealth::Failed { fail_seq } = stored {
            let id = list.volumes[vi].id;
            Self::fail_rebuild_jobs(
                &mut list,
                id,
                member,
                &format!("target member failed (fail_seq {fail_seq})"),
            );
        }
        self.commit_list(&mut list)?;
        Ok(stored)
    }

    /// Whether the boot list says volumes were in use and the daemon did not
    /// stop cleanly since (mirrors then need a resync).
    pub fn dirty(&self) -> bool {
        self.image.as_ref().is_some_and(|i| i.dirty)
    }

    /// Persist the dirty flag (one boot set commit; nothing written when it
    /// already has that value). Set before volumes go online, cleared after a
    /// clean stop.
    pub fn set_dirty(&mut self, dirty: bool) -> Result<(), MetaError> {
        if self.dirty() == dirty || self.list.is_none() {
            return Ok(());
        }
        self.check_writable()?;
        let Some(mut list) = self.list.clone() else {
            return Ok(());
        };
        if dirty {
            list.flags |= LIST_FLAG_DIRTY;
        } else {
            list.flags &= !LIST_FLAG_DIRTY;
        }
        self.commit_list(&mut list)?;
        Ok(())
    }

    /// Mark an ALU failed: add it to the failed-ALU list and set every member with a
    /// segment on it to Failed (new fail sequence numbers, in volume/member order), in
    /// one boot set commit. Nothing is ever written to the ALU again: it stops being a
    /// boot set member (the first Owned non-member is promoted) and shows as
    /// [`AluState::Damaged`]. Refused if no other boot set member can take the commit.
    /// Returns the affected (volume, member) pairs (members already Failed keep their
    /// number and are included). Failing an ALU that already failed changes nothing.
    pub fn fail_alu(&mut self, alu: Uuid) -> Result<Vec<(String, u16)>, MetaError> {
        self.check_writable()?;
        let (Some(mut list), Some(image)) = (self.list.clone(), self.image.clone()) else {
            return Err(MetaError::NotFound(format!("alu {alu}: no cluster")));
        };
        if !list.alus.iter().any(|a| a.uuid == alu) {
            return Err(MetaError::NotFound(format!(
                "alu {alu}: not part of the cluster"
            )));
        }
        let mut affected = Vec::new();
        for v in &image.volumes {
            for m in v.members_on(alu) {
                affected.push((v.name.clone(), m));
            }
        }
        if list.failed.iter().any(|(u, _)| *u == alu) {
            return Ok(affected);
        }
        let mut q = list.next_fail_seq.max(1);
        list.failed.push((alu, q));
        q += 1;
        for (name, m) in &affected {
            let Some(bv) = list.volumes.iter_mut().find(|b| b.name == *name) else {
                continue;
            };
            if let Some(h) = bv.health.get_mut(usize::from(*m)) {
                if !matches!(h, MemberHealth::Failed { .. }) {
                    *h = MemberHealth::Failed { fail_seq: q };
                    q += 1;
                }
            }
            let id = bv.id;
            Self::fail_rebuild_jobs(&mut list, id, *m, &format!("target ALU {alu} failed"));
        }
        list.next_fail_seq = q;
        let was_member = list.alus.iter().any(|a| a.uuid == alu && a.boot_member);
        if was_member {
            for a in list.alus.iter_mut().filter(|a| a.uuid == alu) {
                a.boot_member = false;
            }
            self.promote_member(&mut list);
        }
        let writable = list.alus.iter().any(|a| {
            a.boot_member
                && a.uuid != alu
                && self.slots.iter().any(|s| s.owned_uuid() == Some(a.uuid))
        });
        if !writable {
            return Err(MetaError::Refused(format!(
                "alu {alu}: fail refused: no other boot set member can record it"
            )));
        }
        self.commit_list(&mut list)?;
        Ok(affected)
    }

    /// Take a failed ALU back (`alu readd`, mdadm's `--re-add`): it returned
    /// with its data, its metadata readable and its UUID unchanged. Returns the
    /// members on it: each member of a mirror or raid10 volume that was failed
    /// becomes rebuilding with a *dirty-only* rebuild job (only the regions the
    /// mirror's write-intent bitmap marks are copied back, [0169]); a member
    /// of a linear or stripe volume becomes healthy (nothing could write it
    /// while it was gone: its volume was held offline).
    ///
    /// Commit order: the ALU's label directory and object database are first
    /// brought in line with the current definitions (while failed, the ALU is
    /// never read, so this is invisible), then the boot set commit removes it
    /// from the failed list with the new health and jobs — the commit point.
    ///
    /// Refused (nothing written): the ALU is not failed, not present, or its
    /// metadata is not readable.
    pub fn unfail_alu(&mut self, alu: Uuid) -> Result<Vec<(String, u16, Option<Job>)>, MetaError> {
        self.check_writable()?;
        let (Some(mut list), Some(image)) = (self.list.clone(), self.image.clone()) else {
            return Err(MetaError::NotFound(format!("alu {alu}: no cluster")));
        };
        if !list.failed.iter().any(|(u, _)| *u == alu) {
            return Err(MetaError::Refused(format!("alu {alu}: not failed")));
        }
        let Some(i) = self.slot_of(alu) else {
            return Err(MetaError::NotFound(format!("alu {alu}: not present")));
        };
        let path = self.slots[i].path.clone();
        let AluState::Owned { .. } = Self::region_state(&self.slots[i], alu) else {
            return Err(MetaError::Refused(format!(
                "alu {path}: its metadata is not readable: replace it instead"
            )));
        };
        let Some(rec) = list.alus.iter().find(|a| a.uuid == alu).cloned() else {
            return Err(MetaError::NotFound(format!(
                "alu {alu}: not part of the cluster"
            )));
        };
        let mut out = Vec::new();
        let mut next_id = list.next_id.max(1);
        for bv in list.volumes.iter_mut() {
            let Some(def) = image.volumes.iter().find(|v| v.id == bv.id) else {
                continue;
            };
            for m in def.members_on(alu) {
                let Some(h) = bv.health.get_mut(usize::from(m)) else {
                    continue;
                };
                if !matches!(h, MemberHealth::Failed { .. }) {
                    out.push((bv.name.clone(), m, None));
                    continue;
                }
                // A failed move's target stays failed: abandon the move (remove
                // the target leg) and start it again.
                if def.moving.is_some() && usize::from(m) == def.layout.members() {
                    continue;
                }
                if !def.layout.redundant() {
                    *h = MemberHealth::Ok;
                    out.push((bv.name.clone(), m, None));
                    continue;
                }
                *h = MemberHealth::Rebuilding { checkpoint: 0 };
                let job = Job {
                    dirty_only: true,
                    message: format!("re-add of {path}: dirty regions only"),
                    ..Job::leg_copy(next_id, bv.id, m, None, def.layout.member_size(def.size))
                };
                next_id += 1;
                list.jobs.push(job.clone());
                out.push((bv.name.clone(), m, Some(job)));
            }
        }
        list.next_id = next_id;
        Self::prune_jobs(&mut list.jobs)?;
        list.failed.retain(|(u, _)| *u != alu);
        // Heal its metadata first: it was never written while failed.
        let was = std::mem::replace(&mut self.slots[i].state, AluState::Owned { uuid: alu });
        if let Err(e) = self.sync_alus(&[rec], &image.volumes) {
            self.slots[i].state = was;
            return Err(e);
        }
        self.commit_list(&mut list)?;
        Ok(out)
    }

    /// Remove a volume: boot set commit first, then per-ALU cleanup.
    pub fn remove_volume(&mut self, name: &str) -> Result<(), MetaError> {
        self.check_writable()?;
        let (Some(mut list), Some(image)) = (self.list.clone(), self.image.clone()) else {
            return Err(MetaError::NotFound(format!("volume {name}: no cluster")));
        };
        let Some(target) = image.volumes.iter().find(|v| v.name == name) else {
            return Err(MetaError::NotFound(format!("volume {name}: not found")));
        };
        let snaps: Vec<&str> = image
            .volumes
            .iter()
            .filter(|v| v.snapshot.is_some_and(|s| s.origin == target.id))
            .map(|v| v.name.as_str())
            .collect();
        if !snaps.is_empty() {
            return Err(MetaError::Refused(format!(
                "volume {name}: remove refused: it has snapshots ({}); remove them first",
                snaps.join(", ")
            )));
        }
        let volumes: Vec<VolumeDef> = image
            .volumes
            .iter()
            .filter(|v| v.name != name)
            .cloned()
            .collect();
        let ids: Vec<u64> = image
            .volumes
            .iter()
            .filter(|v| v.name == name)
            .map(|v| v.id)
            .collect();
        list.jobs.retain(|j| !ids.contains(&j.volume));
        list.schedules.retain(|s| !ids.contains(&s.volume));
        list.exposures.retain(|x| !ids.contains(&x.volume));
        list.volumes = self.boot_vols(&volumes);
        list.seq = self.next_seq();
        let r = self.boot_commit(&list);
        self.poison(r)?;
        self.list = Some(list.clone());
        let r = self.sync_alus(&list.alus, &volumes);
        self.evaluate();
        r.map_err(|e| {
            MetaError::Corrupt(format!("volume {name}: removed, but cleanup failed: {e}"))
        })
    }

    // -------------------------------------------------------------- legacy

    /// A new volume's (or legacy disk's) name: valid, and used by no volume
    /// or legacy disk.
    fn check_new_name(image: &ClusterImage, name: &str) -> Result<(), MetaError> {
        if !valid_volume_name(name) {
            return Err(MetaError::Invalid(format!(
                "volume {name:?}: invalid name (1..=63 bytes of [A-Za-z0-9._-])"
            )));
        }
        if image.volumes.iter().any(|v| v.name == name)
            || image.legacy.iter().any(|l| l.name == name)
        {
            return Err(MetaError::Invalid(format!(
                "volume {name}: name already in use"
            )));
        }
        Ok(())
    }

    /// The adopted legacy disk that is device `idx`, if any: same identity
    /// and size.
    fn legacy_on(&self, idx: usize) -> Option<&LegacyVol> {
        let s = self.slots.get(idx)?;
        let id = s.disk.identity()?;
        self.list
            .as_ref()?
            .legacy
            .iter()
            .find(|l| l.identity == id && l.size == s.size)
    }

    /// Where adopted legacy disk `name` is now: its path, or why it cannot
    /// be used (not scanned, or a device at its path that is not it).
    pub fn legacy_path(&self, name: &str) -> Result<String, String> {
        let Some(l) = self
            .image
            .as_ref()
            .and_then(|i| i.legacy.iter().find(|l| l.name == name))
        else {
            return Err(format!("volume {name}: not a legacy disk"));
        };
        for (i, s) in self.slots.iter().enumerate() {
            if self.legacy_on(i).is_some_and(|x| x.id == l.id) {
                return match &s.state {
                    AluState::NotOwned { .. } => Ok(s.path.clone()),
                    other => Err(format!(
                        "legacy disk {}: now carries metadata ({other:?}): not used",
                        s.path
                    )),
                };
            }
        }
        if self.slots.iter().any(|s| s.path == l.path) {
            return Err(format!(
                "legacy disk {}: the device there is not the one adopted (identity or size differ)",
                l.path
            ));
        }
        Err(format!(
            "legacy disk {} (identity {}) not found among the scanned ALUs",
            l.path, l.identity
        ))
    }

    /// Adopt device `path` as legacy volume `name` without writing a byte to
    /// it ([058], [060]): one boot set commit on the other ALUs records its
    /// identity and size. Refused (nothing written) when the device is ours,
    /// another cluster's or unreadable, already adopted, cannot be
    /// identified, or the name is taken.
    pub fn adopt(&mut self, path: &str, name: &str) -> Result<LegacyVol, MetaError> {
        self.check_writable()?;
        let (Some(mut list), Some(image)) = (self.list.clone(), self.image.clone()) else {
            return Err(MetaError::Refused(format!(
                "alu {path}: adopt refused: no cluster (claim an ALU first: the record lives in the boot set)"
            )));
        };
        let refuse = |why: String| {
            Err(MetaError::Refused(format!(
                "alu {path}: adopt refused: {why}"
            )))
        };
        let Some(idx) = self.slots.iter().position(|s| s.path == path) else {
            return Err(MetaError::NotFound(format!("alu {path}: unknown device")));
        };
        Self::check_new_name(&image, name)?;
        if let Some(l) = self.legacy_on(idx) {
            return refuse(format!("already adopted as {}", l.name));
        }
        match &self.slots[idx].state {
            AluState::NotOwned { .. } => {}
            other => return refuse(format!("{other:?}")),
        }
        let s = &self.slots[idx];
        let Some(identity) = s.disk.identity().filter(|i| !i.is_empty() && i.len() < 64) else {
            return refuse("the device has no stable identity (serial, WWID or inode)".into());
        };
        if path.is_empty() || path.len() > 127 {
            return refuse("path longer than 127 bytes".into());
        }
        if list.legacy.len() >= MAX_LEGACY {
            return Err(MetaError::NoSpace(format!(
                "alu {path}: at most {MAX_LEGACY} legacy disks"
            )));
        }
        let id = list.next_id.max(1);
        let mut wwn = [0u8; 16];
        wwn[..8].copy_from_slice(&list.sig.uuid.0[..8]);
        wwn[8..].copy_from_slice(&id.to_be_bytes());
        let l = LegacyVol {
            id,
            name: name.to_string(),
            size: s.size,
            wwn,
            identity,
            path: path.to_string(),
        };
        list.next_id = id + 1;
        list.legacy.push(l.clone());
        self.commit_list(&mut list)?;
        Ok(l)
    }

    /// Forget legacy volume `name` (its disk is left as it is).
    pub fn forget_legacy(&mut self, name: &str) -> Result<(), MetaError> {
        self.check_writable()?;
        let Some(mut list) = self.list.clone() else {
            return Err(MetaError::NotFound(format!("volume {name}: not found")));
        };
        let Some(id) = list.legacy.iter().find(|l| l.name == name).map(|l| l.id) else {
            return Err(MetaError::NotFound(format!(
                "volume {name}: not a legacy disk"
            )));
        };
        list.legacy.retain(|l| l.id != id);
        list.exposures.retain(|x| x.volume != id);
        self.commit_list(&mut list)?;
        Ok(())
    }

    // ----------------------------------------------------------- schedules

    /// The snapshot schedules (spec [0167]).
    pub fn schedules(&self) -> Vec<Schedule> {
        self.list
            .as_ref()
            .map(|l| l.schedules.clone())
            .unwrap_or_default()
    }

    /// Add or replace the schedule of `s.volume` (an existing volume that is
    /// not a snapshot) with one boot set commit.
    pub fn set_schedule(&mut self, s: Schedule) -> Result<(), MetaError> {
        self.check_writable()?;
        s.check().map_err(MetaError::Invalid)?;
        let (Some(mut list), Some(image)) = (self.list.clone(), self.image.clone()) else {
            return Err(MetaError::NotFound("schedule: no cluster".into()));
        };
        match image.volumes.iter().find(|v| v.id == s.volume) {
            None => {
                return Err(MetaError::NotFound(format!(
                    "schedule: volume id {} not found",
                    s.volume
                )))
            }
            Some(v) if v.snapshot.is_some() => {
                return Err(MetaError::Invalid(format!(
                    "volume {}: a snapshot cannot be scheduled for snapshots",
                    v.name
                )))
            }
            Some(_) => {}
        }
        let full = list.schedules.len() >= MAX_SCHEDULES;
        match list.schedules.iter_mut().find(|x| x.volume == s.volume) {
            Some(x) => *x = s,
            None if full => {
                return Err(MetaError::NoSpace(format!(
                    "schedule: at most {MAX_SCHEDULES} schedules"
                )))
            }
            None => list.schedules.push(s),
        }
        if Some(&list) == self.list.as_ref() {
            return Ok(());
        }
        self.commit_list(&mut list)?;
        Ok(())
    }

    /// Drop the schedule of volume id `volume`; whether there was one.
    pub fn remove_schedule(&mut self, volume: u64) -> Result<bool, MetaError> {
        self.check_writable()?;
        let Some(mut list) = self.list.clone() else {
            return Ok(false);
        };
        let n = list.schedules.len();
        list.schedules.retain(|s| s.volume != volume);
        if list.schedules.len() == n {
            return Ok(false);
        }
        self.commit_list(&mut list)?;
        Ok(true)
    }

    // ------------------------------------------------------------ exposures

    /// The committed exposure map (the spec's "volume location structure"):
    /// which SPs expose which volume to their host (empty without a cluster).
    pub fn exposures(&self) -> Vec<Exposure> {
        self.list
            .as_ref()
            .map(|l| l.exposures.clone())
            .unwrap_or_default()
    }

    /// Record (`exposed`) or drop that SP `sp` exposes volume `volume` (a
    /// volume, snapshot or legacy disk of the image, by name) with one boot
    /// set commit; whether the map changed (adding a present entry or
    /// dropping an absent one writes nothing).
    pub fn set_exposure(
        &mut self,
        volume: &str,
        sp: &str,
        exposed: bool,
    ) -> Result<bool, MetaError> {
        self.check_writable()?;
        if !valid_sp_name(sp) {
            return Err(MetaError::Invalid(format!(
                "sp {sp:?}: invalid name (1 to 32 of A-Z a-z 0-9 - _)"
            )));
        }
        let (Some(mut list), Some(image)) = (self.list.clone(), self.image.clone()) else {
            return Err(MetaError::NotFound(format!("volume {volume}: no cluster")));
        };
        let id = image
            .volumes
            .iter()
            .find(|v| v.name == volume)
            .map(|v| v.id)
            .or_else(|| image.legacy.iter().find(|l| l.name == volume).map(|l| l.id))
            .ok_or_else(|| MetaError::NotFound(format!("volume {volume}: not found")))?;
        let x = Exposure {
            volume: id,
            sp: sp.to_string(),
        };
        let present = list.exposures.contains(&x);
        if present == exposed {
            return Ok(false);
        }
        if exposed {
            if list.exposures.len() >= MAX_EXPOSURES {
                return Err(MetaError::NoSpace(format!(
                    "volume {volume}: expose on sp {sp}: at most {MAX_EXPOSURES} exposures"
                )));
            }
            list.exposures.push(x);
        } else {
            list.exposures.retain(|e| *e != x);
        }
        self.commit_list(&mut list)?;
        Ok(true)
    }

    // ---------------------------------------------------------------- jobs

    /// Persisted jobs of the committed boot list (empty without a cluster).
    pub fn jobs(&self) -> Vec<Job> {
        self.list
            .as_ref()
            .map(|l| l.jobs.clone())
            .unwrap_or_default()
    }

    /// Check a rebuild (or move) job against its volume — a move's target member is
    /// treated as a rebuild's — and return the member health to store in
    /// the same commit (None: leave it). Running/Paused: Rebuilding { checkpoint }
    /// (refused for a failed member, a member with a segment on a failed ALU, or without
    /// another in-sync leg). Done: Ok (needs checkpoint = total). Failed: unchanged.
    fn rebuild_health(list: &BootList, job: &Job) -> Result<Option<MemberHealth>, MetaError> {
        let Some(bv) = list.volumes.iter().find(|v| v.id == job.volume) else {
            return Err(MetaError::NotFound(format!(
                "job {}: volume id {} not found",
                job.id, job.volume
            )));
        };
        let name = &bv.name;
        let Some(member) = job.member else {
            return Err(MetaError::Invalid(format!(
                "job {}: a rebuild job needs a member",
                job.id
            )));
        };
        let m = usize::from(member);
        let Some(cur) = bv.health.get(m).copied() else {
            return Err(MetaError::Invalid(format!(
                "volume {name}: no member {member} (the layout has {} members)",
                bv.health.len()
            )));
        };
        let layout = bv.layout;
        // A move's target (one member beyond the layout) copies from its source.
        let moving = job.source.filter(|_| m >= layout.members());
        if !layout.redundant() && moving.is_none() {
            return Err(MetaError::Invalid(format!(
                "volume {name}: a {:?} volume has no redundancy to rebuild from",
                layout.kind
            )));
        }
        if job.state == JobState::Failed {
            return Ok(None);
        }
        if let MemberHealth::Failed { fail_seq } = cur {
            return Err(MetaError::Refused(format!(
                "volume {name}: member {member}: failed (fail_seq {fail_seq}); replace it before rebuilding"
            )));
        }
        let msize = layout.member_size(bv.size);
        if job.checkpoint > msize {
            return Err(MetaError::Invalid(format!(
                "volume {name}: member {member}: checkpoint {} beyond the member size {msize}",
                job.checkpoint
            )));
        }
        if job.state == JobState::Done {
            if job.checkpoint != job.total {
                return Err(MetaError::Invalid(format!(
                    "job {}: done before its checkpoint ({}) reached the total ({})",
                    job.id, job.checkpoint, job.total
                )));
            }
            return Ok(Some(MemberHealth::Ok));
        }
        if cur == MemberHealth::Ok {
            if let Err(g) = Self::other_leg_in_sync(bv, member, moving) {
                return Err(MetaError::Refused(format!(
                    "volume {name}: member {member}: no other leg of mirror {g} is in sync to rebuild from"
                )));
            }
        }
        Ok(Some(MemberHealth::Rebuilding {
            checkpoint: job.checkpoint,
        }))
    }

    /// Whether a leg of `member`'s mirror other than `member` is Ok in the boot list;
    /// `Err(group)` if none. `moving`: the source of a move in progress, whose
    /// group the extra member (one beyond the layout) belongs to.
    fn other_leg_in_sync(bv: &BootVol, member: u16, moving: Option<u16>) -> Result<(), u16> {
        let copies = bv.layout.copies.max(1);
        let n = bv.layout.members();
        let group = |x: u16| {
            if usize::from(x) >= n {
                moving.map(|s| s / copies)
            } else {
                Some(x / copies)
            }
        };
        let g = group(member);
        let ok = (0..bv.health.len()).any(|x| {
            x != usize::from(member) && group(x as u16) == g && bv.health[x] == MemberHealth::Ok
        });
        if ok {
            Ok(())
        } else {
            Err(g.unwrap_or(member))
        }
    }

    /// Drop finished (Done/Failed) jobs beyond the newest [`KEEP_FINISHED_JOBS`], then
    /// refuse if more than [`MAX_JOBS`] remain.
    fn prune_jobs(jobs: &mut Vec<Job>) -> Result<(), MetaError> {
        let mut finished: Vec<u64> = jobs
            .iter()
            .filter(|j| j.state.finished())
            .map(|j| j.id)
            .collect();
        finished.sort_unstable_by(|a, b| b.cmp(a));
        if let Some(&cut) = finished.get(KEEP_FINISHED_JOBS) {
            jobs.retain(|j| !j.state.finished() || j.id > cut);
        }
        if jobs.len() > MAX_JOBS {
            return Err(MetaError::NoSpace(format!(
                "job table full ({MAX_JOBS} jobs, {} still running or paused): remove finished jobs first",
                jobs.iter().filter(|j| !j.state.finished()).count()
            )));
        }
        Ok(())
    }

    /// Record a new job with one boot set commit. The id is assigned from the boot
    /// list's next object id (the value passed is ignored). A Rebuild job also sets its
    /// member's health in the same commit (see [`Store::update_job`]); only one
    /// unfinished rebuild (or move) job per member. A Move job is refused: its target
    /// leg is created with it by [`Store::move_member`]. Finished jobs beyond the newest
    /// 16 are pruned; refused when 64 jobs would remain.
    pub fn add_job(&mut self, job: Job) -> Result<Job, MetaError> {
        self.check_writable()?;
        let Some(mut list) = self.list.clone() else {
            return Err(MetaError::NotFound("job: no cluster".into()));
        };
        let mut job = job;
        job.id = list.next_id.max(1);
        job.truncate_message();
        job.check().map_err(MetaError::Invalid)?;
        if job.kind == JobKind::Move {
            return Err(MetaError::Refused(format!(
                "job: a move job is recorded by move_member, with the leg it copies to (volume id {})",
                job.volume
            )));
        }
        let Some(vi) = list.volumes.iter().position(|v| v.id == job.volume) else {
            return Err(MetaError::NotFound(format!(
                "job: volume id {} not found",
                job.volume
            )));
        };
        if job.kind == JobKind::Rebuild {
            if let Some(other) = list.jobs.iter().find(|j| {
                matches!(j.kind, JobKind::Rebuild | JobKind::Move)
                    && j.volume == job.volume
                    && j.member == job.member
                    && !j.state.finished()
            }) {
                return Err(MetaError::Refused(format!(
                    "volume {}: member {}: {} job {} is already {:?}",
                    list.volumes[vi].name,
                    job.member.unwrap_or(0),
                    kind_word(other.kind),
                    other.id,
                    other.state
                )));
            }
            if let Some(h) = Self::rebuild_health(&list, &job)? {
                let m = usize::from(job.member.unwrap_or(0));
                list.volumes[vi].health[m] = h;
            }
        }
        list.next_id = job.id + 1;
        list.jobs.push(job.clone());
        Self::prune_jobs(&mut list.jobs)?;
        self.commit_list(&mut list)?;
        Ok(job)
    }

    /// Persist a job's progress (checkpoint, state, counters, message) with one boot set
    /// commit (a message over 127 bytes is cut at a character boundary); kind, volume,
    /// member, source and repair cannot change. For a Rebuild job the
    /// member's health changes in the same commit: Running/Paused → Rebuilding
    /// { checkpoint }, Done → Ok (needs checkpoint = total), Failed → unchanged.
    /// A Move job's target member follows it the same way, except that Done is
    /// refused: a move ends with [`Store::finish_move`], which also drops the source
    /// member in the same commit (a Done move whose source were still listed would
    /// leave the old extents referenced by nothing that frees them).
    /// Nothing is written if nothing changes.
    pub fn update_job(&mut self, job: &Job) -> Result<(), MetaError> {
        self.check_writable()?;
        let Some(mut list) = self.list.clone() else {
            return Err(MetaError::NotFound(format!("job {}: no cluster", job.id)));
        };
        let Some(ji) = list.jobs.iter().position(|j| j.id == job.id) else {
            return Err(MetaError::NotFound(format!("job {}: not found", job.id)));
        };
        let old = &list.jobs[ji];
        if (
            old.kind,
            old.volume,
            old.member,
            old.source,
            old.repair,
            old.dirty_only,
        ) != (
            job.kind,
            job.volume,
            job.member,
            job.source,
            job.repair,
            job.dirty_only,
        ) {
            return Err(MetaError::Invalid(format!(
                "job {}: kind, volume, member, source and repair cannot change",
                job.id
            )));
        }
        if job.kind == JobKind::Move && job.state == JobState::Done && old.state != JobState::Done {
            return Err(MetaError::Refused(format!(
                "job {}: a move ends with finish_move",
                job.id
            )));
        }
        // A job that was finished and stays finished no longer drives its member
        // (after remove_leg or finish_move its member index may be stale).
        let drives = !(old.state.finished() && job.state.finished());
        let mut job = job.clone();
        job.truncate_message();
        job.check().map_err(MetaError::Invalid)?;
        if drives && matches!(job.kind, JobKind::Rebuild | JobKind::Move) {
            if let Some(h) = Self::rebuild_health(&list, &job)? {
                let m = usize::from(job.member.unwrap_or(0));
                if let Some(v) = list.volumes.iter_mut().find(|v| v.id == job.volume) {
                    v.health[m] = h;
                }
            }
        }
        list.jobs[ji] = job;
        if Some(&list) == self.list.as_ref() {
            return Ok(());
        }
        Self::prune_jobs(&mut list.jobs)?;
        self.commit_list(&mut list)?;
        Ok(())
    }

    /// Remove a job with one boot set commit (member health is left as it is).
    pub fn remove_job(&mut self, id: u64) -> Result<(), MetaError> {
        self.check_writable()?;
        let Some(mut list) = self.list.clone() else {
            return Err(MetaError::NotFound(format!("job {id}: no cluster")));
        };
        let n = list.jobs.len();
        list.jobs.retain(|j| j.id != id);
        if list.jobs.len() == n {
            return Err(MetaError::NotFound(format!("job {id}: not found")));
        }
        self.commit_list(&mut list)?;
        Ok(())
    }

    /// Mark unfinished rebuild jobs of (volume id, member) Failed with `why`; so are
    /// unfinished move jobs copying onto that member (their target).
    fn fail_rebuild_jobs(list: &mut BootList, volume: u64, member: u16, why: &str) {
        for j in list.jobs.iter_mut().filter(|j| {
            matches!(j.kind, JobKind::Rebuild | JobKind::Move)
                && j.volume == volume
                && j.member == Some(member)
                && !j.state.finished()
        }) {
            j.state = JobState::Failed;
            j.message = why.to_string();
            j.truncate_message();
        }
    }

    // ---------------------------------------------------------------- replace

    /// Give mirror leg `member` of a mirror/raid10 volume new extents on `new_alu`
    /// (first fit, possibly several extents), replacing that member's segments; the
    /// member becomes Rebuilding { checkpoint: 0 } and a Running Rebuild job (total =
    /// member size) is recorded in the same commit; both are returned.
    ///
    /// Refused (nothing written): linear/stripe volume, unknown volume/member/ALU,
    /// `new_alu` failed, missing, damaged or holding another leg of the same mirror,
    /// no other in-sync leg of the mirror, not enough room.
    ///
    /// Commit order: label entries and partitions on `new_alu` and the new definition
    /// copy on every ALU holding a partition of it, each ALU keeping the old definition
    /// and old label entries too; then the boot set commit (new definition CRC, health,
    /// job, next id) — the commit point; then cleanup of the old definition copies and
    /// old extents on writable ALUs (a failed ALU is never written: its stale entries are
    /// garbage no committed definition references).
    pub fn replace_member(
        &mut self,
        volume: &str,
        member: u16,
        new_alu: Uuid,
    ) -> Result<(VolumeDef, Job), MetaError> {
        self.check_writable()?;
        let (Some(mut list), Some(image)) = (self.list.clone(), self.image.clone()) else {
            return Err(MetaError::NotFound(format!("volume {volume}: no cluster")));
        };
        let Some(vi) = list.volumes.iter().position(|v| v.name == volume) else {
            return Err(MetaError::NotFound(format!("volume {volume}: not found")));
        };
        let Some(old) = image.volumes.iter().find(|v| v.name == volume).cloned() else {
            return Err(MetaError::NotFound(format!("volume {volume}: not found")));
        };
        let layout = old.layout;
        if !layout.redundant() {
            return Err(MetaError::Refused(format!(
                "volume {volume}: replace refused: a {:?} volume has no mirror legs",
                layout.kind
            )));
        }
        let m = usize::from(member);
        if m >= layout.members() {
            return Err(MetaError::NotFound(format!(
                "volume {volume}: no member {member} (the layout has {} members)",
                layout.members()
            )));
        }
        if let Some((_, p)) = self.vol_problems.iter().find(|(v, _)| v == volume) {
            return Err(MetaError::Refused(format!(
                "volume {volume}: replace refused: volume is offline ({p})"
            )));
        }
        if old.segments.is_empty() {
            return Err(MetaError::Refused(format!(
                "volume {volume}: replace refused: definition unavailable"
            )));
        }
        let g = layout.group_of(member);
        let copies = usize::from(layout.copies);
        let lo = usize::from(g) * copies;
        let degraded = self.degraded_members(volume);
        let available = |x: usize| {
            list.volumes[vi].health.get(x) == Some(&MemberHealth::Ok)
                && !degraded.iter().any(|(d, _)| usize::from(*d) == x)
        };
        if !(lo..lo + copies).any(|x| x != m && available(x)) {
            return Err(MetaError::Refused(if available(m) {
                format!(
                    "volume {volume}: member {member}: replace refused: it is the last in-sync leg of mirror {g}"
                )
            } else {
                format!(
                    "volume {volume}: member {member}: replace refused: no other leg of mirror {g} is in sync to rebuild from"
                )
            }));
        }
        self.check_usable(
            &list,
            new_alu,
            &format!("volume {volume}"),
            &format!("volume {volume}: replace refused"),
        )?;
        if let Some(x) = old
            .segments
            .iter()
            .find(|s| s.alu == new_alu && s.member != member && layout.group_of(s.member) == g)
            .map(|s| s.member)
        {
            return Err(MetaError::Refused(format!(
                "volume {volume}: replace refused: ALU {new_alu} holds member {x}, another leg of mirror {g}"
            )));
        }
        let msize = layout.member_size(old.size);
        let free = self.free_extents(new_alu);
        let pieces = first_fit(&free, msize).map_err(|short| {
            MetaError::NoSpace(format!(
                "volume {volume}: member {member}: not enough free space on ALU {new_alu} ({} MiB short)",
                short.div_ceil(MIB)
            ))
        })?;
        let mut next_id = list.next_id.max(1);
        let mut segments: Vec<Segment> = old
            .segments
            .iter()
            .filter(|s| s.member != member)
            .cloned()
            .collect();
        for p in pieces {
            segments.push(Segment {
                partition_id: next_id,
                alu: new_alu,
                start: p.start,
                len: p.len,
                member,
            });
            next_id += 1;
        }
        segments.sort_by_key(|s| s.member);
        let mut def = VolumeDef {
            segments,
            ..old.clone()
        };
        def.members[m] = MemberHealth::Rebuilding { checkpoint: 0 };
        // The new leg's write-intent slot moves to its new ALU (a volume created
        // before write-intent bitmaps keeps none).
        if def.wi_slots.len() == layout.members() {
            self.assign_wi_slots(
                &image.volumes,
                &mut def,
                &[member],
                &format!("volume {volume}: replace refused"),
            )?;
        }
        let job = Job::leg_copy(next_id, def.id, member, None, msize);
        next_id += 1;
        Self::fail_rebuild_jobs(
            &mut list,
            def.id,
            member,
            &format!("superseded by job {} (member replaced)", job.id),
        );
        list.jobs.push(job.clone());
        Self::prune_jobs(&mut list.jobs)?;
        list.next_id = next_id;
        let def =
            self.commit_reshape(list, &image, old, def, &format!("member {member} replaced"))?;
        Ok((def, job))
    }

    // ---------------------------------------------------------------- reshape
    //
    // Online reshapes (spec section VI: adding [0109]-[0110], moving [0111]-[0113],
    // removing [0114]-[0117]; claims 11-18). The volume's definition (its tier-2
    // object) changes while the daemon keeps it online (it quiesces host I/O around
    // the call). Every reshape is replace_member's two-phase commit: the new
    // definition is written next to the old one, the boot set commit switches to it,
    // and only then are the old definition copies and the extents no committed
    // definition references any more freed — a partition (tier-1 object) is deleted
    // only after nothing references it (claims 11, 13, 14-18).

    /// The committed boot list, image and definition of `volume` for a reshape:
    /// refused (nothing written) without a cluster, for an unknown volume, a volume
    /// held offline (unless `offline_ok`) or one whose definition is unavailable.
    /// `what` names the action in refusals ("add leg", "remove leg", "move", "finish
    /// move", "extend").
    fn reshape_target(
        &self,
        volume: &str,
        what: &str,
        offline_ok: bool,
    ) -> Result<(BootList, ClusterImage, VolumeDef), MetaError> {
        self.check_writable()?;
        let (Some(list), Some(image)) = (self.list.clone(), self.image.clone()) else {
            return Err(MetaError::NotFound(format!("volume {volume}: no cluster")));
        };
        if !list.volumes.iter().any(|v| v.name == volume) {
            return Err(MetaError::NotFound(format!("volume {volume}: not found")));
        }
        let Some(old) = image.volumes.iter().find(|v| v.name == volume).cloned() else {
            return Err(MetaError::NotFound(format!("volume {volume}: not found")));
        };
        if let Some((_, p)) = self
            .vol_problems
            .iter()
            .find(|(v, _)| v == volume)
            .filter(|_| !offline_ok || old.segments.is_empty())
        {
            return Err(MetaError::Refused(format!(
                "volume {volume}: {what} refused: volume is offline ({p})"
            )));
        }
        if old.segments.is_empty() {
            return Err(MetaError::Refused(format!(
                "volume {volume}: {what} refused: definition unavailable"
            )));
        }
        Ok((list, image, old))
    }

    /// Refuse while the volume has an unfinished move: a move's target is the last
    /// member and its source a fixed index, so the legs must not change under it
    /// (one move per volume at a time, as pvmove holds its volume).
    fn refuse_if_moving(list: &BootList, def: &VolumeDef, what: &str) -> Result<(), MetaError> {
        match list
            .jobs
            .iter()
            .find(|j| j.kind == JobKind::Move && j.volume == def.id && !j.state.finished())
        {
            Some(j) => Err(MetaError::Refused(format!(
                "volume {}: {what} refused: move job {} is unfinished (finish_move or cancel it first)",
                def.name, j.id
            ))),
            None => Ok(()),
        }
    }

    /// `old` (linear or mirror) with one more leg: the new last member on `alu`,
    /// first fit of the member size (possibly several extents), Rebuilding
    /// { checkpoint: 0 }; a linear volume becomes a 2-leg mirror. Write-intent
    /// slots: a linear volume gets one for every member (it becomes a mirror), a
    /// mirror that has slots one for the new leg, a mirror created before bitmaps
    /// stays without. Returns the definition and the next object id after the new
    /// partition ids. Pure: nothing is written; `what` names the action.
    fn plan_new_leg(
        &self,
        list: &BootList,
        image: &ClusterImage,
        old: &VolumeDef,
        alu: Uuid,
        what: &str,
    ) -> Result<(VolumeDef, u64), MetaError> {
        let volume = &old.name;
        let refused = format!("volume {volume}: {what} refused");
        self.check_usable(list, alu, &format!("volume {volume}"), &refused)?;
        // Legs of one mirror on distinct ALUs: a shared ALU would lose both at once.
        if let Some(x) = old.segments.iter().find(|s| s.alu == alu).map(|s| s.member) {
            return Err(MetaError::Refused(format!(
                "{refused}: ALU {alu} holds member {x}, another leg of mirror 0"
            )));
        }
        let layout = Layout {
            kind: LayoutKind::Mirror,
            stripes: 1,
            copies: old.layout.copies + 1,
            chunk: 0,
        };
        layout
            .validate()
            .map_err(|e| MetaError::Invalid(format!("volume {volume}: {e}")))?;
        let n = old.layout.copies;
        let mut def = old.clone();
        def.layout = layout;
        let next_id = self.push_rebuilding_member(list, &mut def, alu, n, what)?;
        let todo: Vec<u16> = if old.layout.kind == LayoutKind::Linear {
            def.wi_slots = vec![0; layout.members()];
            (0..=n).collect()
        } else if old.wi_slots.len() == old.layout.members() {
            def.wi_slots.push(0);
            vec![n]
        } else {
            Vec::new()
        };
        if !todo.is_empty() {
            self.assign_wi_slots(&image.volumes, &mut def, &todo, &refused)?;
        }
        Ok((def, next_id))
    }

    /// `old` (stripe or raid10) with a move's target: member `layout.members()` on
    /// `alu` (first fit of the member size, possibly several extents), Rebuilding
    /// { checkpoint: 0 }, an extra leg of `source`'s group (`VolumeDef::moving`);
    /// the layout is unchanged. A raid10 volume with write-intent slots gets one
    /// for the target. `alu` must not hold `source` nor (raid10) another leg of
    /// its mirror; a stripe's target may share an ALU with other columns (the
    /// usual reason to move: emptying an ALU). Pure, as [`Store::plan_new_leg`].
    fn plan_move_target(
        &self,
        list: &BootList,
        image: &ClusterImage,
        old: &VolumeDef,
        source: u16,
        alu: Uuid,
    ) -> Result<(VolumeDef, u64), MetaError> {
        let volume = &old.name;
        let refused = format!("volume {volume}: move refused");
        self.check_usable(list, alu, &format!("volume {volume}"), &refused)?;
        let group = old.layout.group_of(source);
        let copies = old.layout.copies.max(1);
        if let Some(x) = old
            .segments
            .iter()
            .filter(|s| s.alu == alu)
            .map(|s| s.member)
            .find(|&m| old.layout.group_of(m) == group)
        {
            return Err(MetaError::Refused(if x == source {
                format!("{refused}: member {source} is on ALU {alu} already")
            } else {
                format!("{refused}: ALU {alu} holds member {x}, another leg of mirror {group}")
            }));
        }
        let target = old.layout.members() as u16;
        let mut def = old.clone();
        let next_id = self.push_rebuilding_member(list, &mut def, alu, target, "move")?;
        def.moving = Some(source);
        if copies > 1 && old.wi_slots.len() == old.layout.members() {
            def.wi_slots.push(0);
            self.assign_wi_slots(&image.volumes, &mut def, &[target], &refused)?;
        }
        Ok((def, next_id))
    }

    /// Append member `member` to `def`: the member size in first-fit extents of
    /// `alu` (new partition ids from the list's next id), Rebuilding
    /// { checkpoint: 0 }. Returns the next object id after them. Pure.
    fn push_rebuilding_member(
        &self,
        list: &BootList,
        def: &mut VolumeDef,
        alu: Uuid,
        member: u16,
        what: &str,
    ) -> Result<u64, MetaError> {
        let msize = def.layout.member_size(def.size);
        let pieces = first_fit(&self.free_extents(alu), msize).map_err(|short| {
            MetaError::NoSpace(format!(
                "volume {}: {what}: not enough free space on ALU {alu} ({} MiB short)",
                def.name,
                short.div_ceil(MIB)
            ))
        })?;
        let mut next_id = list.next_id.max(1);
        for p in pieces {
            def.segments.push(Segment {
                partition_id: next_id,
                alu,
                start: p.start,
                len: p.len,
                member,
            });
            next_id += 1;
        }
        def.members.push(MemberHealth::Rebuilding { checkpoint: 0 });
        Ok(next_id)
    }

    /// `def` (a stripe or raid10 volume during a move) with its move done: the
    /// source's segments gone, the target's renumbered to the source's number
    /// (health, write-intent slot), `moving` cleared. Pure.
    fn settle_move(def: &VolumeDef, source: u16) -> VolumeDef {
        let target = def.layout.members() as u16;
        let mut new = def.clone();
        new.segments.retain(|s| s.member != source);
        for s in new.segments.iter_mut().filter(|s| s.member == target) {
            s.member = source;
        }
        new.segments.sort_by_key(|s| s.member);
        new.members[usize::from(source)] = MemberHealth::Ok;
        new.members.truncate(usize::from(target));
        if new.wi_slots.len() > usize::from(target) {
            new.wi_slots[usize::from(source)] = new.wi_slots[usize::from(target)];
            new.wi_slots.truncate(usize::from(target));
        }
        new.moving = None;
        new
    }

    /// `def` (a stripe or raid10 volume during a move) without the move's target:
    /// the move is abandoned (`pvmove --abort`); its unfinished move job fails
    /// ("target leg removed") in `list`. Pure.
    fn drop_move_target(list: &mut BootList, def: &VolumeDef) -> VolumeDef {
        let target = def.layout.members() as u16;
        let mut new = def.clone();
        new.segments.retain(|s| s.member != target);
        new.members.truncate(usize::from(target));
        new.wi_slots
            .truncate(usize::from(target).min(new.wi_slots.len()));
        new.moving = None;
        Self::fail_rebuild_jobs(list, def.id, target, "target leg removed");
        new
    }

    /// `def` without mirror leg `member`: later members are renumbered down by one
    /// (segments, health, write-intent slots), and a mirror left with one leg
    /// becomes linear (without write-intent slots). The unfinished jobs of the
    /// volume in `list` follow in the same commit: a rebuild of the dropped member
    /// fails ("leg removed"), as does a move copying onto it ("target leg removed");
    /// rebuilds and moves of later members (a move's source too) are renumbered;
    /// on a volume that is no longer mirrored, scrubs and resyncs are done and
    /// rebuilds failed ("volume no longer mirrored"). Finished jobs keep their
    /// numbers: they are history. Pure.
    fn drop_member(list: &mut BootList, def: &VolumeDef, member: u16) -> VolumeDef {
        let mut new = def.clone();
        new.segments.retain(|s| s.member != member);
        for s in new.segments.iter_mut().filter(|s| s.member > member) {
            s.member -= 1;
        }
        new.members.remove(usize::from(member));
        if usize::from(member) < new.wi_slots.len() {
            new.wi_slots.remove(usize::from(member));
        }
        new.layout.copies -= 1;
        if new.layout.copies == 1 {
            new.layout = Layout::linear();
            new.wi_slots.clear();
        }
        let linear = new.layout.kind == LayoutKind::Linear;
        let renumber = |m: &mut Option<u16>| {
            if let Some(x) = m.as_mut().filter(|x| **x > member) {
                *x -= 1;
            }
        };
        for j in list
            .jobs
            .iter_mut()
            .filter(|j| j.volume == def.id && !j.state.finished())
        {
            let (state, why) = match j.kind {
                JobKind::Rebuild if j.member == Some(member) => (JobState::Failed, "leg removed"),
                JobKind::Move if j.member == Some(member) => {
                    (JobState::Failed, "target leg removed")
                }
                JobKind::Rebuild | JobKind::Move => {
                    renumber(&mut j.member);
                    renumber(&mut j.source);
                    if !linear {
                        continue;
                    }
                    (JobState::Failed, "volume no longer mirrored")
                }
                JobKind::Scrub | JobKind::Resync if linear => {
                    (JobState::Done, "volume no longer mirrored")
                }
                _ => continue,
            };
            j.state = state;
            j.message = why.to_string();
        }
        new
    }

    /// Commit `def`, the reshaped definition of `old`, with `list` (jobs, health
    /// and next id already in it): replace_member's two phases. (1) every writable
    /// ALU's label directory and object database hold the committed state plus the
    /// new definition (old copies and old label entries kept); (2) the boot set
    /// commit — the commit point; (3) cleanup to the new state, which drops the old
    /// definition copies and frees extents only the old definition referenced (a
    /// failed ALU is never written). `done` says what happened, for a cleanup error.
    fn commit_reshape(
        &mut self,
        mut list: BootList,
        image: &ClusterImage,
        old: VolumeDef,
        def: VolumeDef,
        done: &str,
    ) -> Result<VolumeDef, MetaError> {
        let name = def.name.clone();
        let volumes: Vec<VolumeDef> = image
            .volumes
            .iter()
            .map(|v| {
                if v.id == def.id {
                    def.clone()
                } else {
                    v.clone()
                }
            })
            .collect();
        let mut both = volumes.clone();
        both.push(old);
        list.volumes = self.boot_vols(&volumes);
        self.commit_definitions(&mut list, &both, &volumes)?
            .map_err(|e| {
                MetaError::Corrupt(format!("volume {name}: {done}, but cleanup failed: {e}"))
            })?;
        Ok(self
            .image
            .as_ref()
            .and_then(|i| i.volumes.iter().find(|v| v.id == def.id).cloned())
            .unwrap_or(def))
    }

    /// Add a leg to a linear or mirror volume online (`lvconvert -m+1`; spec [0109]:
    /// a new tier-1 object under the volume): a linear volume becomes a 2-leg mirror,
    /// a mirror of c legs one of c+1. The new leg is the last member, on `alu` (first
    /// fit of the member size, possibly several extents), Rebuilding { checkpoint: 0 }
    /// with a Running Rebuild job (total = member size) in the same commit; both are
    /// returned. Write-intent slots: see `plan_new_leg`.
    ///
    /// Refused (nothing written): a stripe or raid10 volume, a snapshot, a volume
    /// held offline or with an unavailable definition, a mirror with [`MAX_COPIES`]
    /// legs, an unfinished move on the volume, `alu` unknown, failed, missing or
    /// damaged or holding a leg of the volume, not enough room, no free
    /// write-intent slot, a full job table.
    ///
    /// Commit order: as [`Store::replace_member`] (new definition copies next to the
    /// old ones, boot set commit, cleanup of the old copies).
    pub fn add_leg(&mut self, volume: &str, alu: Uuid) -> Result<(VolumeDef, Job), MetaError> {
        let (list, image, old) = self.reshape_target(volume, "add leg", false)?;
        let refused = format!("volume {volume}: add leg refused");
        if old.snapshot.is_some() {
            return Err(MetaError::Refused(format!(
                "{refused}: it is a snapshot (its copy-on-write store stays linear)"
            )));
        }
        match old.layout.kind {
            LayoutKind::Linear => {}
            LayoutKind::Mirror if old.layout.copies >= MAX_COPIES => {
                return Err(MetaError::Refused(format!(
                    "{refused}: mirror has {} legs (at most {MAX_COPIES})",
                    old.layout.copies
                )))
            }
            LayoutKind::Mirror => {}
            k => {
                return Err(MetaError::Refused(format!(
                "{refused}: only linear and mirror volumes take a leg online (this is a {} volume)",
                layout_word(k)
            )))
            }
        }
        Self::refuse_if_moving(&list, &old, "add leg")?;
        let (def, next_id) = self.plan_new_leg(&list, &image, &old, alu, "add leg")?;
        let member = old.layout.copies;
        self.commit_new_leg(list, &image, old, def, next_id, None, |_| {
            format!("leg {member} added on ALU {alu}")
        })
    }

    /// Commit `def`, `old` with a new last leg (from [`Store::plan_new_leg`]),
    /// together with the job that copies it (a rebuild, or with `source` a
    /// move of that member), its id taken from `next_id`. `done` says what
    /// happened, for a cleanup error.
    #[allow(clippy::too_many_arguments)]
    fn commit_new_leg(
        &mut self,
        mut list: BootList,
        image: &ClusterImage,
        old: VolumeDef,
        def: VolumeDef,
        next_id: u64,
        source: Option<u16>,
        done: impl FnOnce(&Job) -> String,
    ) -> Result<(VolumeDef, Job), MetaError> {
        // The new leg is the last member: a mirror's new last leg, or a move's
        // target beyond a stripe or raid10 layout.
        let job = Job::leg_copy(
            next_id,
            def.id,
            (def.member_count() - 1) as u16,
            source,
            def.layout.member_size(def.size),
        );
        list.jobs.push(job.clone());
        Self::prune_jobs(&mut list.jobs)?;
        list.next_id = next_id + 1;
        let what = done(&job);
        let def = self.commit_reshape(list, image, old, def, &what)?;
        Ok((def, job))
    }

    /// Remove mirror leg `member` online (`lvconvert -m-1`; spec [0114]-[0117]: the
    /// reference goes first, the tier-1 objects only it referenced after): a mirror
    /// of c legs keeps c-1, a 2-leg mirror becomes linear (its write-intent slots
    /// go). Later members are renumbered down, and the volume's jobs follow (see
    /// `drop_member`); an unfinished move copying onto the member fails ("target leg
    /// removed"). The member's extents are freed after the commit point (never on a
    /// failed ALU, which is never written).
    ///
    /// Refused (nothing written): a linear, stripe or raid10 volume, an unknown
    /// volume or member, a volume held offline or with an unavailable definition,
    /// when no other member would be in sync (health ok and available: the last
    /// in-sync leg is never removed), and while an unfinished move copies *from*
    /// the member.
    pub fn remove_leg(&mut self, volume: &str, member: u16) -> Result<VolumeDef, MetaError> {
        let (mut list, image, old) = self.reshape_target(volume, "remove leg", false)?;
        let refused = format!("volume {volume}: remove leg refused");
        if old.moving.is_some() && usize::from(member) == old.layout.members() {
            let def = Self::drop_move_target(&mut list, &old);
            Self::prune_jobs(&mut list.jobs)?;
            return self.commit_reshape(
                list,
                &image,
                old,
                def,
                &format!("move target {member} removed (move abandoned)"),
            );
        }
        if old.layout.kind != LayoutKind::Mirror {
            return Err(MetaError::Refused(format!(
                "{refused}: only mirror volumes drop a leg online (this is a {} volume)",
                layout_word(old.layout.kind)
            )));
        }
        let copies = old.layout.copies;
        if member >= copies {
            return Err(MetaError::NotFound(format!(
                "volume {volume}: no member {member} (the layout has {copies} members)"
            )));
        }
        if let Some(j) = list.jobs.iter().find(|j| {
            j.kind == JobKind::Move
                && j.volume == old.id
                && j.source == Some(member)
                && !j.state.finished()
        }) {
            return Err(MetaError::Refused(format!(
                "{refused}: a move is using member {member}: cancel job {} first",
                j.id
            )));
        }
        let degraded = self.degraded_members(volume);
        let in_sync = |x: u16| {
            old.members.get(usize::from(x)) == Some(&MemberHealth::Ok)
                && !degraded.iter().any(|(d, _)| *d == x)
        };
        if !(0..copies).any(|x| x != member && in_sync(x)) {
            return Err(MetaError::Refused(if in_sync(member) {
                format!(
                    "volume {volume}: member {member}: remove leg refused: it is the last in-sync leg of mirror 0"
                )
            } else {
                format!(
                    "volume {volume}: member {member}: remove leg refused: no other leg of mirror 0 is in sync"
                )
            }));
        }
        let def = Self::drop_member(&mut list, &old, member);
        Self::prune_jobs(&mut list.jobs)?;
        self.commit_reshape(list, &image, old, def, &format!("leg {member} removed"))
    }

    /// Start moving member `member` of a linear or mirror volume to `alu` online
    /// (pvmove; spec claims 14-18, [0111]-[0113]): exactly [`Store::add_leg`] — a new
    /// last member on `alu`, Rebuilding { checkpoint: 0 } — but recorded with a
    /// Running Move job (target `member` = the new leg, `source` = `member`, total =
    /// member size). The copy is the daemon's; the target's health follows the job
    /// as a rebuild's does ([`Store::update_job`]), and [`Store::finish_move`] ends
    /// it, dropping the source in the same commit that makes the target in sync —
    /// so the data has a committed, complete home at every point.
    ///
    /// Refused (nothing written): a stripe or raid10 volume, a snapshot, a volume
    /// held offline or with an unavailable definition, member unknown (a linear
    /// volume has only member 0), a mirror that already has [`MAX_COPIES`] legs, a
    /// source that is not in sync (a failed leg is replaced, not moved), an
    /// unfinished move on the volume, `alu` unknown, failed, missing or damaged or
    /// holding a leg of the volume, not enough room, no free write-intent slot, a
    /// full job table.
    pub fn move_member(
        &mut self,
        volume: &str,
        member: u16,
        alu: Uuid,
    ) -> Result<(VolumeDef, Job), MetaError> {
        let (list, image, old) = self.reshape_target(volume, "move", false)?;
        let refused = format!("volume {volume}: move refused");
        if old.snapshot.is_some() {
            return Err(MetaError::Refused(format!(
                "{refused}: it is a snapshot (its copy-on-write store stays linear)"
            )));
        }
        let striped = matches!(old.layout.kind, LayoutKind::Stripe | LayoutKind::Raid10);
        let copies = old.layout.copies;
        let n = old.layout.members();
        if usize::from(member) >= n {
            return Err(MetaError::NotFound(format!(
                "volume {volume}: no member {member} (the layout has {n} members)"
            )));
        }
        if striped && copies >= MAX_COPIES {
            return Err(MetaError::Refused(format!(
                "{refused}: mirror {} has {copies} legs: use alu replace",
                old.layout.group_of(member)
            )));
        }
        if !striped && copies >= MAX_COPIES {
            return Err(MetaError::Refused(format!(
                "{refused}: mirror has {copies} legs: remove one or use alu replace"
            )));
        }
        Self::refuse_if_moving(&list, &old, "move")?;
        let degraded = self.degraded_members(volume);
        if let Some((_, why)) = degraded.iter().find(|(d, _)| *d == member) {
            return Err(MetaError::Refused(format!(
                "volume {volume}: member {member}: move refused: it is not in sync ({why}): use alu replace"
            )));
        }
        if old.members.get(usize::from(member)) != Some(&MemberHealth::Ok) {
            return Err(MetaError::Refused(format!(
                "volume {volume}: member {member}: move refused: it is not in sync: use alu replace"
            )));
        }
        let (def, next_id) = if striped {
            self.plan_move_target(&list, &image, &old, member, alu)?
        } else {
            self.plan_new_leg(&list, &image, &old, alu, "move")?
        };
        self.commit_new_leg(list, &image, old, def, next_id, Some(member), |job| {
            format!(
                "move of member {member} to ALU {alu} started (job {})",
                job.id
            )
        })
    }

    /// End move job `job` once its copy is complete (checkpoint = total): in one
    /// commit the job becomes Done, the target member Ok, and the source member is
    /// dropped as [`Store::remove_leg`] drops a leg (renumbering; a 2-leg mirror —
    /// a moved linear volume — is linear again, now on the target ALU). The
    /// source's extents are freed after the commit point (spec claim 15-17: the old
    /// tier-1 object goes once the new reference to its copy is committed).
    ///
    /// Refused (nothing written): an unknown job, a job that is not a move or is
    /// finished, a copy not complete, a volume whose definition is unavailable, a
    /// target member that failed or has a segment that is not available. A volume
    /// held offline is not refused for that alone: a complete, available target
    /// holds all the data (no write reached the volume while it was offline), so a
    /// source that failed after the copy finished is dropped and the volume comes
    /// back on the target.
    pub fn finish_move(&mut self, job: u64) -> Result<VolumeDef, MetaError> {
        self.check_writable()?;
        let Some(list) = self.list.as_ref() else {
            return Err(MetaError::NotFound(format!("job {job}: no cluster")));
        };
        let Some(j) = list.jobs.iter().find(|j| j.id == job).cloned() else {
            return Err(MetaError::NotFound(format!("job {job}: not found")));
        };
        if j.kind != JobKind::Move {
            return Err(MetaError::Invalid(format!(
                "job {job}: not a move job (a {} job)",
                kind_word(j.kind)
            )));
        }
        if j.state.finished() {
            return Err(MetaError::Refused(format!(
                "job {job}: finish move refused: the job is {:?}",
                j.state
            )));
        }
        if j.checkpoint != j.total {
            return Err(MetaError::Refused(format!(
                "job {job}: copy not complete ({} of {})",
                j.checkpoint, j.total
            )));
        }
        let Some(volume) = list
            .volumes
            .iter()
            .find(|v| v.id == j.volume)
            .map(|v| v.name.clone())
        else {
            return Err(MetaError::NotFound(format!(
                "job {job}: volume id {} not found",
                j.volume
            )));
        };
        let (mut list, image, old) = self.reshape_target(&volume, "finish move", true)?;
        let (Some(target), Some(source)) = (j.member, j.source) else {
            return Err(MetaError::Invalid(format!(
                "job {job}: a move job needs a target member and a source member"
            )));
        };
        let refused = format!("volume {volume}: member {target}: finish move refused");
        match old.members.get(usize::from(target)) {
            None => {
                return Err(MetaError::Corrupt(format!(
                    "job {job}: volume {volume} has no member {target}"
                )))
            }
            Some(MemberHealth::Failed { fail_seq }) => {
                return Err(MetaError::Refused(format!(
                    "{refused}: the copy target failed (fail_seq {fail_seq})"
                )))
            }
            Some(_) => {}
        }
        if usize::from(source) >= old.members.len() || source == target {
            return Err(MetaError::Corrupt(format!(
                "job {job}: volume {volume} has no source member {source}"
            )));
        }
        // The target must hold the data: every segment present, readable and allocated.
        for (i, seg) in old.member_segments(target).enumerate() {
            self.check_usable(&list, seg.alu, &format!("volume {volume}"), &refused)?;
            let allocated = self.slot_of(seg.alu).is_some_and(|si| {
                self.slots[si].label_live().is_some_and(|l| {
                    l.entries.iter().any(|e| {
                        e.partition == seg.partition_id
                            && e.owner == old.id
                            && e.start == seg.start
                            && e.len == seg.len
                    })
                })
            });
            if !allocated {
                return Err(MetaError::Refused(format!(
                    "{refused}: segment {i}: label entry for partition {} missing on ALU {}",
                    seg.partition_id, seg.alu
                )));
            }
        }
        if let Some(x) = list.jobs.iter_mut().find(|x| x.id == job) {
            x.state = JobState::Done;
        }
        let def = if old.moving.is_some() {
            Self::settle_move(&old, source)
        } else {
            let mut synced = old.clone();
            synced.members[usize::from(target)] = MemberHealth::Ok;
            Self::drop_member(&mut list, &synced, source)
        };
        Self::prune_jobs(&mut list.jobs)?;
        self.commit_reshape(
            list,
            &image,
            old,
            def,
            &format!("move job {job} finished (member {source} dropped)"),
        )
    }

    /// Grow a volume by `add` bytes online by concatenation (`lvextend`; spec
    /// [0109]: "additional storage space" is new tier-1 objects under the volume):
    /// member m gets new segments on `alus[m]` (first fit of size / S of `add`,
    /// possibly several extents) after its existing ones, so every byte keeps its
    /// address and the new bytes follow the old ones.
    ///
    /// A mirror or raid10 volume grows every leg. The new part of the legs holds
    /// whatever the ALUs held, different on each leg, so it is synchronised as a
    /// rebuild is (as lvextend syncs the new part of a raid1 LV): the first leg of
    /// each mirror stays Ok, every other leg becomes Rebuilding { checkpoint: the
    /// old member size } with a Running Rebuild job from there to the new member
    /// size, all in the same commit. Reads of the new part go to the first leg
    /// until its copy is done; the write-intent bitmaps keep their slots (the
    /// daemon rewrites them for the new leg size, see `WriteIntent::load`).
    ///
    /// Refused (nothing written): a snapshot or a volume that has snapshots (a
    /// snapshot covers its origin's size when taken), a volume held offline or
    /// with an unavailable definition, `add` not a non-zero multiple of 1 MiB per
    /// member, a new size breaking the layout's size rules (a stripe grows by whole
    /// chunks per member), not one ALU per member, an ALU unknown, failed, missing
    /// or damaged, not enough room; for a mirror or raid10 also an unfinished job
    /// on the volume, a member not in sync, and two legs of one mirror on one ALU.
    /// One two-phase commit as replace_member's.
    pub fn extend_volume(
        &mut self,
        volume: &str,
        add: u64,
        alus: &[Uuid],
    ) -> Result<VolumeDef, MetaError> {
        let (mut list, image, old) = self.reshape_target(volume, "extend", false)?;
        let refused = format!("volume {volume}: extend refused");
        Self::refuse_if_moving(&list, &old, "extend")?;
        if old.snapshot.is_some() {
            return Err(MetaError::Refused(format!(
                "{refused}: it is a snapshot (it covers its origin's size when taken)"
            )));
        }
        let snaps: Vec<&str> = image
            .volumes
            .iter()
            .filter(|v| v.snapshot.is_some_and(|s| s.origin == old.id))
            .map(|v| v.name.as_str())
            .collect();
        if !snaps.is_empty() {
            return Err(MetaError::Refused(format!(
                "{refused}: it has snapshots ({}), which cover its size when taken; remove them first",
                snaps.join(", ")
            )));
        }
        let layout = old.layout;
        let members = layout.members();
        if add == 0 || !add.is_multiple_of(MIB) {
            return Err(MetaError::Invalid(format!(
                "volume {volume}: extend: the size to add must be a non-zero multiple of 1 MiB"
            )));
        }
        let Some(size) = old.size.checked_add(add) else {
            return Err(MetaError::Invalid(format!(
                "volume {volume}: extend: size overflows"
            )));
        };
        layout
            .check_size(size)
            .map_err(|e| MetaError::Invalid(format!("volume {volume}: extend: {e}")))?;
        let madd = layout.member_size(add);
        if !madd.is_multiple_of(MIB)
            || layout.member_size(size) != layout.member_size(old.size) + madd
        {
            return Err(MetaError::Invalid(format!(
                "volume {volume}: extend: {add} bytes / {} stripes ({madd} bytes per member) must be a multiple of 1 MiB",
                layout.stripes
            )));
        }
        if alus.len() != members {
            return Err(MetaError::Invalid(format!(
                "volume {volume}: extend: {} ALUs given, one per member needed ({members})",
                alus.len()
            )));
        }
        for &alu in alus {
            self.check_usable(&list, alu, &format!("volume {volume}"), &refused)?;
        }
        if layout.redundant() {
            self.check_mirror_extend(&list, &old, alus, &refused)?;
        }
        let mut next_id = list.next_id.max(1);
        let mut segments = old.segments.clone();
        let plan = alus
            .iter()
            .enumerate()
            .map(|(m, &alu)| (m as u16, alu, madd));
        self.place_pieces(plan, &mut next_id, &mut segments)
            .map_err(|(m, alu, short)| {
                MetaError::NoSpace(format!(
                    "volume {volume}: extend: member {m}: not enough free space on ALU {alu} ({} MiB short)",
                    short.div_ceil(MIB)
                ))
            })?;
        // Stable: each member's segments stay in concatenation order, new ones last.
        segments.sort_by_key(|g| g.member);
        let mut def = VolumeDef {
            size,
            segments,
            ..old.clone()
        };
        if layout.redundant() {
            // Every leg but each mirror's first is copied from the old end on.
            let (from, to) = (layout.member_size(old.size), layout.member_size(size));
            for m in (0..members as u16).filter(|m| m % layout.copies != 0) {
                def.members[usize::from(m)] = MemberHealth::Rebuilding { checkpoint: from };
                let mut job = Job::leg_copy(next_id, def.id, m, None, to);
                job.checkpoint = from;
                list.jobs.push(job);
                next_id += 1;
            }
            Self::prune_jobs(&mut list.jobs)?;
        }
        list.next_id = next_id;
        self.commit_reshape(list, &image, old, def, &format!("extended by {add} bytes"))
    }

    /// Place the `(member, alu, len)` pieces of `plan` in order, each by first
    /// fit of the ALU's free extents less those this plan already took (so
    /// pieces sharing an ALU never overlap): one new segment per extent, its
    /// partition id taken from `next_id`, appended to `segments`. Pure. On
    /// failure, the piece that did not fit (member, ALU) and how many bytes
    /// it was short.
    fn place_pieces(
        &self,
        plan: impl IntoIterator<Item = (u16, Uuid, u64)>,
        next_id: &mut u64,
        segments: &mut Vec<Segment>,
    ) -> Result<(), (u16, Uuid, u64)> {
        let mut taken: Vec<(Uuid, Extent)> = Vec::new();
        for (member, alu, len) in plan {
            let used: Vec<Extent> = taken
                .iter()
                .filter(|(u, _)| *u == alu)
                .map(|(_, e)| *e)
                .collect();
            let mut free = Vec::new();
            for f in self.free_extents(alu) {
                free.extend(subtract(f.start, f.start + f.len, &used));
            }
            let pieces = first_fit(&free, len).map_err(|short| (member, alu, short))?;
            for p in pieces {
                taken.push((alu, p));
                segments.push(Segment {
                    partition_id: *next_id,
                    alu,
                    start: p.start,
                    len: p.len,
                    member,
                });
                *next_id += 1;
            }
        }
        Ok(())
    }

    /// The mirror-only refusals of [`Store::extend_volume`]: an unfinished job on
    /// the volume (its checkpoints are member offsets of the old size), a member
    /// not in sync (its new part would have nothing to be copied from, or its old
    /// part is still being copied), a new piece on an ALU that holds another leg
    /// of its mirror (or gets one in the same extend).
    fn check_mirror_extend(
        &self,
        list: &BootList,
        old: &VolumeDef,
        alus: &[Uuid],
        refused: &str,
    ) -> Result<(), MetaError> {
        if let Some(j) = list
            .jobs
            .iter()
            .find(|j| j.volume == old.id && !j.state.finished())
        {
            return Err(MetaError::Refused(format!(
                "{refused}: {} job {} is unfinished (wait for it or cancel it)",
                kind_word(j.kind),
                j.id
            )));
        }
        let degraded = self.degraded_members(&old.name);
        for (m, h) in old.members.iter().enumerate() {
            let m = m as u16;
            if *h != MemberHealth::Ok || degraded.iter().any(|(d, _)| *d == m) {
                return Err(MetaError::Refused(format!(
                    "{refused}: member {m} is not in sync (let its rebuild finish or replace it first)"
                )));
            }
        }
        let copies = old.layout.copies;
        for (m, &alu) in alus.iter().enumerate() {
            let m = m as u16;
            let g = old.layout.group_of(m);
            let other = (g * copies..(g + 1) * copies)
                .filter(|&x| x != m)
                .find(|&x| {
                    alus[usize::from(x)] == alu || old.member_segments(x).any(|s| s.alu == alu)
                });
            if let Some(x) = other {
                return Err(MetaError::Refused(format!(
                    "{refused}: ALU {alu} holds member {x}, another leg of mirror {g}: give each leg its own ALU"
                )));
            }
        }
        Ok(())
    }

    // ---------------------------------------------------------------- archive

    /// Hook of [`Store::boot_commit`]: before `next` is written, put the committed
    /// configuration it replaces (boot list and available definitions) into the
    /// archive ring of each member in `members` (slot indices). Best effort: a
    /// failure is recorded in [`Store::archive_problems`], never returned.
    fn archive_before_commit(&mut self, next: &BootList, members: &[usize]) {
        let (Some(cur), Some(img)) = (self.list.as_ref(), self.image.as_ref()) else {
            return;
        };
        if self.boot_unreadable || cur.seq >= next.seq {
            return;
        }
        let volumes = img
            .volumes
            .iter()
            .filter(|v| {
                !v.segments.is_empty()
                    && cur
                        .volumes
                        .iter()
                        .any(|b| b.id == v.id && b.def_crc == def_crc(v))
            })
            .map(VolumeDef::definition)
            .collect();
        let rec = ArchiveRecord {
            time: now_secs(),
            list: cur.clone(),
            volumes,
        };
        let seq = cur.seq;
        let bytes = match rec.encode() {
            Ok(b) => b,
            Err(len) => {
                self.note_archive(format!(
                    "configuration {seq} not archived: {len} bytes exceed an archive slot ({ARCHIVE_SLOT} bytes)"
                ));
                return;
            }
        };
        let off = archive::slot_offset(archive::slot_of(seq));
        let mut failed = Vec::new();
        for &i in members {
            let s = &mut self.slots[i];
            if !s.dir().is_some_and(|d| d.has_archive_area()) {
                continue;
            }
            if let Err(e) = s.write(off, &bytes, "metadata archive: write") {
                failed.push(format!("configuration {seq} not archived: {e}"));
            }
        }
        for f in failed {
            self.note_archive(f);
        }
    }

    fn note_archive(&mut self, line: String) {
        const KEEP: usize = 16;
        self.archive_problems.push(line);
        if self.archive_problems.len() > KEEP {
            self.archive_problems.remove(0);
        }
    }

    /// Metadata archive writes that failed or were skipped since the store was
    /// opened (the newest 16), one line each.
    pub fn archive_problems(&self) -> Vec<String> {
        self.archive_problems.clone()
    }

    /// The valid archive records in the ring of slot `idx` (unread slots, blank
    /// slots and invalid records are skipped).
    fn read_ring(&mut self, idx: usize) -> Vec<ArchiveRecord> {
        let s = &mut self.slots[idx];
        if !s.dir().is_some_and(|d| d.has_archive_area()) {
            return Vec::new();
        }
        let mut out = Vec::new();
        for k in 0..ARCHIVE_SLOTS {
            let off = archive::slot_offset(k);
            let mut b = vec![0u8; BLOCK as usize];
            if s.disk.read_at(off, &mut b).is_err() {
                continue;
            }
            let Ok(need) = ArchiveRecord::needed_len(&b) else {
                continue;
            };
            if need > b.len() {
                b = vec![0u8; need];
                if s.disk.read_at(off, &mut b).is_err() {
                    continue;
                }
            }
            if let Ok(r) = ArchiveRecord::decode(&b, off) {
                out.push(r);
            }
        }
        out
    }

    /// Every archived configuration of this cluster older than the committed one,
    /// from the rings of every present, Owned ALU of the boot list, merged by
    /// sequence (with the number of copies found), newest first.
    fn archive_records(&mut self) -> Vec<(ArchiveRecord, usize)> {
        let Some(list) = self.list.clone() else {
            return Vec::new();
        };
        let idxs: Vec<usize> = list
            .alus
            .iter()
            .filter_map(|a| {
                self.slots
                    .iter()
                    .position(|s| s.owned_uuid() == Some(a.uuid))
            })
            .collect();
        let mut out: Vec<(ArchiveRecord, usize)> = Vec::new();
        for i in idxs {
            for r in self.read_ring(i) {
                if r.list.sig.uuid != list.sig.uuid || r.list.seq >= list.seq {
                    continue;
                }
                match out.iter_mut().find(|(x, _)| x.list.seq == r.list.seq) {
                    Some((_, n)) => *n += 1,
                    None => out.push((r, 1)),
                }
            }
        }
        out.sort_by_key(|r| std::cmp::Reverse(r.0.list.seq));
        out
    }

    /// The metadata history (LVM's archive): every configuration a commit replaced
    /// that the rings still hold, newest first.
    pub fn history(&mut self) -> Vec<ArchiveEntry> {
        self.archive_records()
            .into_iter()
            .map(|(r, copies)| ArchiveEntry {
                seq: r.list.seq,
                time: r.time,
                volumes: r.list.volumes.iter().map(|v| v.name.clone()).collect(),
                alus: r.list.alus.len(),
                copies,
            })
            .collect()
    }

    /// Archived configuration `seq` (boot list and definitions), if a ring holds it.
    pub fn archived(&mut self, seq: u64) -> Option<ArchiveRecord> {
        self.archive_records()
            .into_iter()
            .find(|(r, _)| r.list.seq == seq)
            .map(|(r, _)| r)
    }

    /// Extents of volume `v` on `alu`: its segments, or for a volume whose
    /// definition is unavailable, its label entries there.
    fn extents_on(&self, v: &VolumeDef, alu: Uuid) -> Vec<Extent> {
        if v.segments.is_empty() {
            let label = self
                .slots
                .iter()
                .find(|s| s.owned_uuid() == Some(alu))
                .and_then(|s| s.label_live());
            return label
                .map(|l| {
                    l.entries
                        .iter()
                        .filter(|e| e.owner == v.id)
                        .map(|e| Extent {
                            start: e.start,
                            len: e.len,
                        })
                        .collect()
                })
                .unwrap_or_default();
        }
        v.segments
            .iter()
            .filter(|g| g.alu == alu)
            .map(|g| Extent {
                start: g.start,
                len: g.len,
            })
            .collect()
    }

    /// What [`Store::restore`] would do, or why it refuses; nothing is written.
    pub fn restore_plan(&mut self, seq: u64, force: bool) -> Result<RestorePlan, MetaError> {
        self.plan_restore(seq, force).map(|p| p.0)
    }

    /// Bring back the volume definitions of archived configuration `seq`
    /// (vgcfgrestore) as a new commit: every volume it lists comes back with its
    /// archived definition (a volume whose definition is unchanged is left as it is,
    /// health and jobs included); the ALUs, failed ALUs, legacy disks, next ids and
    /// the schedules of the remaining volumes are the current ones; jobs of restored
    /// or dropped volumes are dropped. A restored member is Ok if it was Ok in the
    /// archive and has no segment on a now-failed ALU, keeps its number if it was
    /// Failed, and is Failed with a new number otherwise (a leg that was not in sync,
    /// or sits on a failed ALU). A mirror leg's write-intent slot that another volume
    /// now uses is moved to a free slot.
    ///
    /// Refused, writing nothing, when: `seq` is not in the archive or not older than
    /// the committed configuration; an archived volume's name now belongs to another
    /// volume or a legacy disk; its definition was not archived; a segment names an
    /// ALU that left the cluster, is missing or damaged, or lies outside its data area;
    /// a segment overlaps space now allocated to another volume, or allocated to
    /// another volume by a newer archived configuration (its data may be gone); a
    /// snapshot's origin would be missing; a current volume is absent from the
    /// archive (it would be dropped) unless `force`.
    ///
    /// Commit order (as replace member): every Owned ALU's label directory and object
    /// database rewritten to hold the committed state plus the restored definitions
    /// (old and new copies side by side); boot set commit (the commit point); cleanup
    /// to the new state only.
    pub fn restore(&mut self, seq: u64, force: bool) -> Result<RestorePlan, MetaError> {
        let (plan, mut list, result, olds) = self.plan_restore(seq, force)?;
        if plan.restored.is_empty() && plan.dropped.is_empty() {
            return Ok(plan);
        }
        let mut both = result.clone();
        both.extend(olds);
        self.commit_definitions(&mut list, &both, &result)?
            .map_err(|e| {
                MetaError::Corrupt(format!(
                    "metadata restore of configuration {seq}: committed, but cleanup failed: {e}"
                ))
            })?;
        Ok(plan)
    }

    /// The plan, the boot list to commit (sequence not set), the resulting volumes
    /// and the current definitions the restore replaces or drops.
    #[allow(clippy::type_complexity)]
    fn plan_restore(
        &mut self,
        seq: u64,
        force: bool,
    ) -> Result<(RestorePlan, BootList, Vec<VolumeDef>, Vec<VolumeDef>), MetaError> {
        self.check_writable()?;
        let (Some(list), Some(image)) = (self.list.clone(), self.image.clone()) else {
            return Err(MetaError::NotFound("metadata restore: no cluster".into()));
        };
        let what = format!("metadata restore of configuration {seq}");
        let refuse = |why: String| Err(MetaError::Refused(format!("{what} refused: {why}")));
        if seq >= list.seq {
            return Err(MetaError::Invalid(format!(
                "{what}: not older than the committed configuration ({})",
                list.seq
            )));
        }
        let records = self.archive_records();
        let Some(arch) = records
            .iter()
            .find(|(r, _)| r.list.seq == seq)
            .map(|(r, _)| r.clone())
        else {
            return Err(MetaError::NotFound(format!(
                "{what}: not in the metadata archive (`tierblk meta history` lists it)"
            )));
        };
        let newer: Vec<ArchiveRecord> = records
            .into_iter()
            .filter(|(r, _)| r.list.seq > seq)
            .map(|(r, _)| r)
            .collect();
        let mut plan = RestorePlan {
            seq,
            restored: Vec::new(),
            dropped: Vec::new(),
            unchanged: Vec::new(),
        };
        let mut next_fail = list.next_fail_seq.max(1);
        let mut result: Vec<VolumeDef> = Vec::new();
        for bv in &arch.list.volumes {
            let name = &bv.name;
            if image
                .volumes
                .iter()
                .any(|v| v.name == *name && v.id != bv.id)
            {
                return refuse(format!(
                    "volume {name}: the name now belongs to a different volume"
                ));
            }
            if list.legacy.iter().any(|l| l.name == *name) {
                return refuse(format!(
                    "volume {name}: the name now belongs to a legacy disk"
                ));
            }
            let same = list
                .volumes
                .iter()
                .any(|c| c.id == bv.id && c.def_crc == bv.def_crc);
            if let Some(v) = image
                .volumes
                .iter()
                .find(|v| v.id == bv.id)
                .filter(|_| same)
            {
                result.push(v.clone());
                plan.unchanged.push(name.clone());
                continue;
            }
            let Some(mut def) = arch.volumes.iter().find(|v| v.id == bv.id).cloned() else {
                return refuse(format!(
                    "volume {name}: its definition was not archived (it was unavailable then)"
                ));
            };
            for g in &def.segments {
                let Some(rec) = list.alus.iter().find(|a| a.uuid == g.alu) else {
                    return refuse(format!(
                        "volume {name}: ALU {} is no longer part of the cluster",
                        g.alu
                    ));
                };
                let failed = list.failed.iter().any(|(u, _)| *u == g.alu);
                if !failed && self.slots.iter().all(|s| s.owned_uuid() != Some(g.alu)) {
                    return refuse(format!(
                        "volume {name}: ALU {} is missing or damaged",
                        g.alu
                    ));
                }
                if g.start < rec.data_start || g.start.saturating_add(g.len) > rec.data_end {
                    return refuse(format!(
                        "volume {name}: a segment lies outside the data area of ALU {}",
                        g.alu
                    ));
                }
            }
            def.members = bv
                .health
                .iter()
                .enumerate()
                .map(|(m, h)| {
                    let on_failed = def
                        .member_segments(m as u16)
                        .any(|g| list.failed.iter().any(|(u, _)| *u == g.alu));
                    match *h {
                        MemberHealth::Failed { fail_seq } => MemberHealth::Failed { fail_seq },
                        MemberHealth::Ok if !on_failed => MemberHealth::Ok,
                        _ => {
                            next_fail += 1;
                            MemberHealth::Failed {
                                fail_seq: next_fail - 1,
                            }
                        }
                    }
                })
                .collect();
            plan.restored.push(name.clone());
            result.push(def);
        }
        let dropped: Vec<VolumeDef> = image
            .volumes
            .iter()
            .filter(|v| !arch.list.volumes.iter().any(|b| b.id == v.id))
            .cloned()
            .collect();
        plan.dropped = dropped.iter().map(|v| v.name.clone()).collect();
        if !dropped.is_empty() && !force {
            return refuse(format!(
                "it would drop volume(s) {} (not in configuration {seq}; --force drops them)",
                plan.dropped.join(", ")
            ));
        }
        // Blocks a restored volume would get must be nobody else's, now or since.
        for v in result.iter().filter(|v| plan.restored.contains(&v.name)) {
            for g in &v.segments {
                let hit = |e: &Extent| e.start < g.start + g.len && g.start < e.start + e.len;
                for c in image.volumes.iter().filter(|c| c.id != v.id) {
                    if self.extents_on(c, g.alu).iter().any(hit) {
                        return refuse(format!(
                            "volume {}: its extent at {} on ALU {} is now allocated to volume {}",
                            v.name, g.start, g.alu, c.name
                        ));
                    }
                }
                for r in &newer {
                    for c in r.volumes.iter().filter(|c| c.id != v.id) {
                        if self.extents_on(c, g.alu).iter().any(hit) {
                            return refuse(format!(
                                "volume {}: its extent at {} on ALU {} was allocated to volume {} since (configuration {}); its data may have been overwritten",
                                v.name, g.start, g.alu, c.name, r.list.seq
                            ));
                        }
                    }
                }
            }
        }
        for v in &result {
            if let Some(sn) = v.snapshot {
                if !result.iter().any(|o| o.id == sn.origin) {
                    return refuse(format!("snapshot {}: its origin would be missing", v.name));
                }
            }
        }
        // Write-intent slots another volume uses now move to a free slot.
        for i in 0..result.len() {
            if !plan.restored.contains(&result[i].name) || result[i].wi_slots.is_empty() {
                continue;
            }
            let others: Vec<VolumeDef> = result
                .iter()
                .enumerate()
                .filter(|(j, _)| *j != i)
                .map(|(_, v)| v.clone())
                .collect();
            let def = &result[i];
            let clash: Vec<u16> = (0..def.wi_slots.len() as u16)
                .filter(|&m| {
                    let (slot, alu) = (def.wi_slots[usize::from(m)], def.first_alu(m));
                    others.iter().any(|o| {
                        o.wi_slots
                            .iter()
                            .enumerate()
                            .any(|(k, &s)| s == slot && o.first_alu(k as u16) == alu)
                    })
                })
                .collect();
            if !clash.is_empty() {
                let mut d = result[i].clone();
                self.assign_wi_slots(&others, &mut d, &clash, &format!("{what} refused"))?;
                result[i] = d;
            }
        }
        let keep: Vec<u64> = result
            .iter()
            .filter(|v| plan.unchanged.contains(&v.name))
            .map(|v| v.id)
            .collect();
        let mut new = list.clone();
        new.jobs.retain(|j| keep.contains(&j.volume));
        new.schedules.retain(|s| {
            result
                .iter()
                .any(|v| v.id == s.volume && v.snapshot.is_none())
        });
        new.exposures.retain(|x| {
            result.iter().any(|v| v.id == x.volume) || new.legacy.iter().any(|l| l.id == x.volume)
        });
        new.next_fail_seq = next_fail;
        new.next_id = list.next_id.max(arch.list.next_id);
        new.volumes = self.boot_vols(&result);
        let olds: Vec<VolumeDef> = image
            .volumes
            .iter()
            .filter(|v| plan.dropped.contains(&v.name) || plan.restored.contains(&v.name))
            .cloned()
            .collect();
        Ok((plan, new, result, olds))
    }
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum RepairKind {
    DirPrimary,
    DirBackup,
    Label(usize),
    Objdb(usize),
    Boot,
}

struct RepairItem {
    kind: RepairKind,
    line: String,
}

impl RepairItem {
    fn new(kind: RepairKind, line: String) -> Self {
        RepairItem { kind, line }
    }
}

/// A layout kind as messages name it.
fn layout_word(k: LayoutKind) -> &'static str {
    match k {
        LayoutKind::Linear => "linear",
        LayoutKind::Stripe => "stripe",
        LayoutKind::Mirror => "mirror",
        LayoutKind::Raid10 => "raid10",
    }
}

/// A job kind as messages name it.
fn kind_word(k: JobKind) -> &'static str {
    match k {
        JobKind::Rebuild => "rebuild",
        JobKind::Scrub => "scrub",
        JobKind::Rollback => "rollback",
        JobKind::Resync => "resync",
        JobKind::Move => "move",
    }
}

/// Allocate `len` bytes from `free`: one extent that fits whole if there is
/// one, else the free extents in order. `Err(short)` names how many bytes are
/// missing.
fn first_fit(free: &[Extent], len: u64) -> Result<Vec<Extent>, u64> {
    if let Some(f) = free.iter().find(|f| f.len >= len) {
        return Ok(vec![Extent {
            start: f.start,
            len,
        }]);
    }
    let mut pieces = Vec::new();
    let mut need = len;
    for f in free {
        if need == 0 {
            break;
        }
        let l = f.len.min(need);
        pieces.push(Extent {
            start: f.start,
            len: l,
        });
        need -= l;
    }
    if need > 0 {
        Err(need)
    } else {
        Ok(pieces)
    }
}

/// Of two A/B copies, the one to write first (an invalid one, else the older
/// one, so the live copy is never overwritten first) and the sequence number
/// the new contents get.
fn next_copy<T>(copies: &Copy2<T>, seq: impl Fn(&T) -> u64) -> (usize, u64) {
    let target = match (&copies[0], &copies[1]) {
        (Err(_), _) => 0,
        (_, Err(_)) => 1,
        (Ok(a), Ok(b)) => usize::from(seq(a) >= seq(b)),
    };
    let max = copies.iter().flatten().map(&seq).max().unwrap_or(0);
    (target, max + 1)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::disk::MemDisk;

    /// A store over `n` claimed 32 MiB memory disks and their ALU uuids.
    fn mem_store(n: usize) -> (Store, Vec<Uuid>) {
        let disks: Vec<(String, Box<dyn Disk>)> = (0..n)
            .map(|i| {
                (
                    format!("/dev/m{i}"),
                    Box::new(MemDisk::new(32 * MIB)) as Box<dyn Disk>,
                )
            })
            .collect();
        let (mut st, _) = Store::open(disks, Some("t"), true).unwrap();
        for i in 0..n {
            st.claim(&format!("/dev/m{i}"), "t", false).unwrap();
        }
        let a = st
            .alus()
            .iter()
            .map(|s| match s.state {
                AluState::Owned { uuid } => uuid,
                ref x => panic!("{x:?}"),
            })
            .collect();
        (st, a)
    }

    fn vol(st: &Store, name: &str) -> VolumeDef {
        let img = st.image().unwrap();
        img.volumes.iter().find(|v| v.name == name).unwrap().clone()
    }

    /// A mirror created before write-intent bitmaps (no slots) resynchronises in
    /// full: a leg added or moved does not give it slots, and removing a leg keeps
    /// it without.
    #[test]
    fn a_mirror_without_write_intent_slots_stays_without() {
        let (mut st, a) = mem_store(4);
        let mirror2 = Layout {
            kind: LayoutKind::Mirror,
            stripes: 1,
            copies: 2,
            chunk: 0,
        };
        st.create_volume_with(
            "m",
            2 * MIB,
            mirror2,
            &[(0, a[0], 2 * MIB), (1, a[1], 2 * MIB)],
        )
        .unwrap();
        assert_eq!(vol(&st, "m").wi_slots.len(), 2);
        // Make it an old mirror: the same definition without slots, committed as a
        // reshape is.
        let (list, image, old) = st.reshape_target("m", "test", false).unwrap();
        let def = VolumeDef {
            wi_slots: Vec::new(),
            moving: None,
            ..old.clone()
        };
        st.commit_reshape(list, &image, old, def, "slots dropped")
            .unwrap();
        assert!(vol(&st, "m").wi_slots.is_empty());
        let (def, mut j) = st.add_leg("m", a[2]).unwrap();
        assert_eq!(def.layout.copies, 3);
        assert!(def.wi_slots.is_empty());
        assert_eq!(st.wi_location("m", 2), None);
        j.checkpoint = j.total;
        j.state = JobState::Done;
        st.update_job(&j).unwrap();
        let def = st.remove_leg("m", 0).unwrap();
        assert_eq!(def.layout.copies, 2);
        assert!(def.wi_slots.is_empty());
        let (def, _) = st.move_member("m", 0, a[3]).unwrap();
        assert_eq!(def.layout.copies, 3);
        assert!(def.wi_slots.is_empty());
    }

    #[test]
    fn subtract_works() {
        let m = MIB;
        assert_eq!(
            subtract(8 * m, 20 * m, &[]),
            vec![Extent {
                start: 8 * m,
                len: 12 * m
            }]
        );
        let used = [
            Extent {
                start: 10 * m,
                len: 2 * m,
            },
            Extent {
                start: 8 * m,
                len: m,
            },
        ];
        assert_eq!(
            subtract(8 * m, 20 * m, &used),
            vec![
                Extent {
                    start: 9 * m,
                    len: m
                },
                Extent {
                    start: 12 * m,
                    len: 8 * m
                }
            ]
        );
        assert_eq!(
            subtract(
                8 * m,
                20 * m,
                &[Extent {
                    start: 0,
                    len: 30 * m
                }]
            ),
            vec![]
        );
    }
}
