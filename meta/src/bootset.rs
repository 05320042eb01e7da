//! The boot set (the spec's "GS ALU set", [059]): up to six ALUs each hold two boot
//! list areas and two boot pointer sectors. The boot list is the cluster-wide commit
//! record (cluster signature, ALU list, volume list, failed-ALU list, next object id,
//! job table).
//! A commit writes the inactive list area, flushes, then writes the pointer sector that
//! does not carry the highest sequence and flushes, on every member. The pointer write
//! (one 512-byte sector) is the atomic commit point.

use crate::codec::{is_zero, put_u32, Rd, Wr};
use crate::disk::Disk;
use crate::error::FormatError;
use crate::types::{
    valid_cluster_name, valid_sp_name, valid_volume_name, AluRecord, ClusterSig, Exposure, Job,
    JobKind, JobState, Layout, LayoutKind, LegacyVol, MemberHealth, Schedule, Uuid,
    MAX_JOB_MESSAGE, MAX_SP_NAME,
};

pub const PTR_MAGIC: [u8; 8] = *b"TBLKBOOT";
pub const LIST_MAGIC: [u8; 8] = *b"TBLKLIST";
pub const BOOT_VERSION: u32 = 1;
/// Meaningful bytes of a pointer sector.
pub const PTR_LEN: usize = 512;
/// CRC of the pointer sector covers bytes 0..508.
pub const PTR_CRC_OFFSET: usize = 508;
pub const LIST_HEADER_LEN: usize = 136;
pub const LIST_ALU_LEN: usize = 64;
/// Fixed part of a volume entry; followed by [`LIST_MEMBER_LEN`] bytes per member.
pub const LIST_VOL_LEN: usize = 112;
pub const LIST_MEMBER_LEN: usize = 16;
pub const LIST_FAILED_LEN: usize = 24;
/// Bytes per job entry.
pub const LIST_JOB_LEN: usize = 192;
/// Offset of the message field inside a job entry (128 bytes: text, NUL padded).
pub const JOB_MESSAGE_OFFSET: usize = 64;
pub const JOB_FLAG_REPAIR: u8 = 1;
pub const JOB_FLAG_MEMBER: u8 = 2;
pub const JOB_FLAG_DIRTY_ONLY: u8 = 4;
/// Job entry flag: bytes 22..24 hold the source member of a move (required
/// for a move, forbidden for every other kind).
pub const JOB_FLAG_SOURCE: u8 = 8;
/// Most jobs a boot list may hold.
pub const MAX_JOBS: usize = 64;
pub const HEALTH_OK: u8 = 0;
pub const HEALTH_FAILED: u8 = 1;
pub const HEALTH_REBUILDING: u8 = 2;
/// Maximum number of boot set members.
pub const MAX_MEMBERS: usize = 6;
pub const ALU_FLAG_BOOT_MEMBER: u32 = 1;

/// Pointer sector contents.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BootPtr {
    pub seq: u64,
    /// Which list area (0 = A, 1 = B) holds the list.
    pub area: u32,
    pub list_len: u64,
    pub list_crc: u32,
    pub cluster: Uuid,
}

impl BootPtr {
    /// Encode as a full 4 KiB block (only the first 512 bytes are meaningful).
    pub fn encode(&self, own_offset: u64) -> Vec<u8> {
        let mut w = Wr::new();
        w.bytes(&PTR_MAGIC);
        w.u32(BOOT_VERSION);
        w.u32(self.area);
        w.u64(self.seq);
        w.u64(self.list_len);
        w.u32(self.list_crc);
        w.u32(0);
        w.bytes(&self.cluster.0);
        w.u64(own_offset);
        w.pad_to(4096);
        let mut b = w.v;
        let crc = crc32c::crc32c(&b[..PTR_CRC_OFFSET]);
        put_u32(&mut b, PTR_CRC_OFFSET, crc);
        b
    }

    pub fn decode(b: &[u8], read_offset: u64, area_len: u64) -> Result<BootPtr, FormatError> {
        let s = b.get(..PTR_LEN).ok_or(FormatError::Truncated)?;
        if is_zero(s) {
            return Err(FormatError::Blank);
        }
        let mut r = Rd::new(s);
        if r.take(8)? != PTR_MAGIC {
            return Err(FormatError::BadMagic);
        }
        if crc32c::crc32c(s.get(..PTR_CRC_OFFSET).ok_or(FormatError::Truncated)?)
            != Rd::at(s, PTR_CRC_OFFSET).u32()?
        {
            return Err(FormatError::BadChecksum);
        }
        let version = r.u32()?;
        if version != BOOT_VERSION {
            return Err(FormatError::Version(version));
        }
        let area = r.u32()?;
        let seq = r.u64()?;
        let list_len = r.u64()?;
        let list_crc = r.u32()?;
        r.u32()?;
        let cluster = Uuid(r.arr16()?);
        let own = r.u64()?;
        if own != read_offset {
            return Err(FormatError::WrongOffset {
                found: read_offset,
                claimed: own,
            });
        }
        if area > 1 || list_len > area_len || list_len < LIST_HEADER_LEN as u64 {
            return Err(FormatError::Invalid("boot pointer fields".into()));
        }
        Ok(BootPtr {
            seq,
            area,
            list_len,
            list_crc,
            cluster,
        })
    }
}

/// A volume as listed in the boot list.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BootVol {
    pub id: u64,
    pub name: String,
    pub size: u64,
    pub wwn: [u8; 16],
    /// CRC32C of the volume's encoded definition (objdb volume record payload):
    /// selects the matching copy in the object databases.
    pub def_crc: u32,
    /// The layout (also in the definition; here so a volume whose definition is
    /// unavailable still has the right member count).
    pub layout: Layout,
    /// Persisted health of each member (`layout.members()` entries): changes with one
    /// boot set commit, never by rewriting definitions.
    pub health: Vec<MemberHealth>,
}

/// The boot list.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BootList {
    pub sig: ClusterSig,
    pub seq: u64,
    pub next_id: u64,
    /// Next fail sequence number to hand out (cluster-wide, increasing; 0 = none yet).
    pub next_fail_seq: u64,
    pub alus: Vec<AluRecord>,
    pub volumes: Vec<BootVol>,
    /// Failed ALUs with the fail sequence number assigned when they failed.
    pub failed: Vec<(Uuid, u64)>,
    /// Persisted jobs (ids allocated from `next_id`), at most [`MAX_JOBS`].
    pub jobs: Vec<Job>,
    /// [`LIST_FLAG_DIRTY`]: a daemon has had volumes online since the last clean stop.
    pub flags: u32,
    /// Snapshot schedules, one per volume at most ([`MAX_SCHEDULES`]).
    pub schedules: Vec<Schedule>,
    /// Adopted legacy disks ([`MAX_LEGACY`]).
    pub legacy: Vec<LegacyVol>,
    /// The exposure map ([`MAX_EXPOSURES`]): distinct (volume, SP) pairs, each
    /// naming a volume or legacy disk of this list.
    pub exposures: Vec<Exposure>,
}

/// Boot list flag, set on encode when exposure entries follow the legacy
/// disk entries (lists written before the exposure map existed have none).
pub const LIST_FLAG_EXPOSURES: u32 = 8;
/// Most exposure entries in a list.
pub const MAX_EXPOSURES: usize = 1024;
/// Bytes per exposure entry: volume id u64, SP name (32, NUL padded).
pub const LIST_EXPOSURE_LEN: usize = 40;

/// Boot list flag, set on encode when legacy disk records follow the
/// schedules.
pub const LIST_FLAG_LEGACY: u32 = 4;
/// Most legacy disks in a list.
pub const MAX_LEGACY: usize = 64;
/// Bytes per legacy disk entry.
pub const LIST_LEGACY_LEN: usize = 288;

/// Boot list flag, set on encode when schedules follow the job entries (lists
/// written before schedules existed have none).
pub const LIST_FLAG_SCHEDULES: u32 = 2;
/// Most schedules in a list.
pub const MAX_SCHEDULES: usize = 256;
/// Bytes per schedule entry.
pub const LIST_SCHEDULE_LEN: usize = 40;

/// The flags that say which optional sections follow the job entries (set
/// on encode from the sections' contents, never kept in [`BootList::flags`]).
const SECTION_FLAGS: u32 = LIST_FLAG_SCHEDULES | LIST_FLAG_LEGACY | LIST_FLAG_EXPOSURES;

/// Boot list flag: volumes were in use and the daemon has not stopped cleanly
/// since; mirrors may have legs that missed in-flight writes and must be
/// resynchronised (as MD resyncs an array that was not cleanly stopped).
pub const LIST_FLAG_DIRTY: u32 = 1;

fn encode_job(w: &mut Wr, j: &Job) {
    let start = w.v.len();
    w.u64(j.id);
    w.u64(j.volume);
    w.u8(j.kind.code());
    w.u8(j.state.code());
    let mut flags = 0;
    if j.repair {
        flags |= JOB_FLAG_REPAIR;
    }
    if j.member.is_some() {
        flags |= JOB_FLAG_MEMBER;
    }
    if j.dirty_only {
        flags |= JOB_FLAG_DIRTY_ONLY;
    }
    if j.source.is_some() {
        flags |= JOB_FLAG_SOURCE;
    }
    w.u8(flags);
    let msg = &j.message.as_bytes()[..j.message.len().min(MAX_JOB_MESSAGE)];
    w.u8(msg.len() as u8);
    w.u16(j.member.unwrap_or(0));
    w.u16(j.source.unwrap_or(0));
    w.u64(j.checkpoint);
    w.u64(j.total);
    w.u64(j.mismatches);
    w.u64(j.repaired);
    w.u64(j.rate);
    w.zeros(start + JOB_MESSAGE_OFFSET - w.v.len());
    w.bytes(msg);
    w.zeros(start + LIST_JOB_LEN - w.v.len());
}

fn decode_job(r: &mut Rd) -> Result<Job, FormatError> {
    let e = r.take(LIST_JOB_LEN)?;
    let mut r = Rd::new(e);
    let id = r.u64()?;
    let volume = r.u64()?;
    let kind = r.u8()?;
    let state = r.u8()?;
    let flags = r.u8()?;
    let ml = usize::from(r.u8()?);
    let member = r.u16()?;
    let source = r.u16()?;
    let bad = |what: &str| FormatError::Invalid(format!("job {id}: {what}"));
    let kind = JobKind::from_code(kind).ok_or_else(|| bad("kind"))?;
    let state = JobState::from_code(state).ok_or_else(|| bad("state"))?;
    if flags & !(JOB_FLAG_REPAIR | JOB_FLAG_MEMBER | JOB_FLAG_DIRTY_ONLY | JOB_FLAG_SOURCE) != 0 {
        return Err(bad("flags"));
    }
    if flags & JOB_FLAG_MEMBER == 0 && member != 0 {
        return Err(bad("member"));
    }
    // Bytes 22..24 were reserved (zero) before moves existed: without the
    // source flag they must still be zero.
    if flags & JOB_FLAG_SOURCE == 0 && source != 0 {
        return Err(bad("reserved bytes"));
    }
    let checkpoint = r.u64()?;
    let total = r.u64()?;
    let mismatches = r.u64()?;
    let repaired = r.u64()?;
    let rate = r.u64()?;
    let text = e
        .get(JOB_MESSAGE_OFFSET..LIST_JOB_LEN)
        .ok_or(FormatError::Truncated)?;
    if ml > MAX_JOB_MESSAGE || text[ml..].iter().any(|&c| c != 0) {
        return Err(bad("message length/padding"));
    }
    let message = std::str::from_utf8(&text[..ml])
        .map_err(|_| bad("message (not UTF-8)"))?
        .to_string();
    let j = Job {
        id,
        kind,
        volume,
        member: (flags & JOB_FLAG_MEMBER != 0).then_some(member),
        source: (flags & JOB_FLAG_SOURCE != 0).then_some(source),
        repair: flags & JOB_FLAG_REPAIR != 0,
        dirty_only: flags & JOB_FLAG_DIRTY_ONLY != 0,
        state,
        checkpoint,
        total,
        mismatches,
        repaired,
        rate,
        message,
    };
    j.check().map_err(FormatError::Invalid)?;
    Ok(j)
}

/// One exposure entry: volume id u64, SP name (32 bytes: the name, then NUL
/// padding; a 32-byte name has none).
fn decode_exposure(r: &mut Rd) -> Result<Exposure, FormatError> {
    let volume = r.u64()?;
    let raw = r.take(MAX_SP_NAME)?;
    let len = raw.iter().position(|&c| c == 0).unwrap_or(raw.len());
    let sp = std::str::from_utf8(&raw[..len]).unwrap_or("");
    if !is_zero(&raw[len..]) || !valid_sp_name(sp) {
        return Err(FormatError::Invalid(format!(
            "exposure of volume id {volume}: sp name"
        )));
    }
    Ok(Exposure {
        volume,
        sp: sp.to_string(),
    })
}

impl BootList {
    /// Encode (unpadded; the pointer records the exact length and CRC).
    pub fn encode(&self) -> Vec<u8> {
        let mut w = Wr::new();
        w.bytes(&LIST_MAGIC);
        w.u32(BOOT_VERSION);
        let mut flags = self.flags & !SECTION_FLAGS;
        if !self.schedules.is_empty() {
            flags |= LIST_FLAG_SCHEDULES;
        }
        if !self.legacy.is_empty() {
            flags |= LIST_FLAG_LEGACY;
        }
        if !self.exposures.is_empty() {
            flags |= LIST_FLAG_EXPOSURES;
        }
        w.u32(flags);
        w.u64(self.seq);
        w.bytes(&self.sig.uuid.0);
        w.name(&self.sig.name, 64);
        w.u64(self.next_id);
        w.u64(self.next_fail_seq);
        w.u32(self.alus.len() as u32);
        w.u32(self.volumes.len() as u32);
        w.u32(self.failed.len() as u32);
        w.u32(self.jobs.len() as u32);
        for a in &self.alus {
            w.bytes(&a.uuid.0);
            w.bytes(&a.wwn);
            w.u64(a.size);
            w.u64(a.data_start);
            w.u64(a.data_end);
            w.u32(if a.boot_member {
                ALU_FLAG_BOOT_MEMBER
            } else {
                0
            });
            w.u32(0);
        }
        for v in &self.volumes {
            w.u64(v.id);
            w.u64(v.size);
            w.bytes(&v.wwn);
            w.u32(v.def_crc);
            w.u8(v.name.len().min(63) as u8);
            w.u8(v.layout.kind.code());
            w.u16(v.layout.stripes);
            w.u16(v.layout.copies);
            w.u16(v.health.len() as u16);
            w.u32(v.layout.chunk);
            w.name(&v.name, 64);
            for h in &v.health {
                let (code, val) = match *h {
                    MemberHealth::Ok => (HEALTH_OK, 0),
                    MemberHealth::Failed { fail_seq } => (HEALTH_FAILED, fail_seq),
                    MemberHealth::Rebuilding { checkpoint } => (HEALTH_REBUILDING, checkpoint),
                };
                w.u8(code);
                w.zeros(7);
                w.u64(val);
            }
        }
        for (u, q) in &self.failed {
            w.bytes(&u.0);
            w.u64(*q);
        }
        for j in &self.jobs {
            encode_job(&mut w, j);
        }
        if !self.schedules.is_empty() {
            w.u32(self.schedules.len() as u32);
            w.u32(0);
            for s in &self.schedules {
                w.u64(s.volume);
                w.u64(s.every);
                w.u64(s.size);
                w.u64(s.last);
                w.u32(s.keep);
                w.u32(0);
            }
        }
        if !self.legacy.is_empty() {
            w.u32(self.legacy.len() as u32);
            w.u32(0);
            for l in &self.legacy {
                w.u64(l.id);
                w.u64(l.size);
                w.bytes(&l.wwn);
                w.name(&l.name, 64);
                w.name(&l.identity, 64);
                w.name(&l.path, 128);
            }
        }
        if !self.exposures.is_empty() {
            w.u32(self.exposures.len() as u32);
            w.u32(0);
            for x in &self.exposures {
                w.u64(x.volume);
                // A name of exactly MAX_SP_NAME bytes fills the field (no NUL).
                let b = &x.sp.as_bytes()[..x.sp.len().min(MAX_SP_NAME)];
                w.bytes(b);
                w.zeros(MAX_SP_NAME - b.len());
            }
        }
        w.v
    }

    pub fn decode(b: &[u8]) -> Result<BootList, FormatError> {
        let mut r = Rd::new(b);
        if r.take(8)? != LIST_MAGIC {
            return Err(FormatError::BadMagic);
        }
        let version = r.u32()?;
        if version != BOOT_VERSION {
            return Err(FormatError::Version(version));
        }
        let flags = r.u32()?;
        if flags & !(LIST_FLAG_DIRTY | SECTION_FLAGS) != 0 {
            return Err(FormatError::Invalid(format!("boot list flags {flags:#x}")));
        }
        let seq = r.u64()?;
        let uuid = Uuid(r.arr16()?);
        let name = r.name(64, "cluster name")?;
        if !valid_cluster_name(&name) {
            return Err(FormatError::Invalid("cluster name".into()));
        }
        let next_id = r.u64()?;
        let next_fail_seq = r.u64()?;
        let na = r.u32()? as usize;
        let nv = r.u32()? as usize;
        let nf = r.u32()? as usize;
        let nj = r.u32()? as usize;
        if nj > MAX_JOBS {
            return Err(FormatError::Invalid(format!("job count {nj}")));
        }
        let need = na
            .checked_mul(LIST_ALU_LEN)
            .and_then(|x| x.checked_add(nv.checked_mul(LIST_VOL_LEN)?))
            .and_then(|x| x.checked_add(nf.checked_mul(LIST_FAILED_LEN)?))
            .and_then(|x| x.checked_add(nj.checked_mul(LIST_JOB_LEN)?))
            .ok_or(FormatError::Truncated)?;
        // Volume entries are variable length: this is a lower bound (it also bounds
        // the allocations below).
        if need > r.remaining() {
            return Err(FormatError::Invalid("boot list length".into()));
        }
        let mut alus = Vec::with_capacity(na);
        for _ in 0..na {
            let a = AluRecord {
                uuid: Uuid(r.arr16()?),
                wwn: r.arr16()?,
                size: r.u64()?,
                data_start: r.u64()?,
                data_end: r.u64()?,
                boot_member: r.u32()? & ALU_FLAG_BOOT_MEMBER != 0,
            };
            r.u32()?;
            alus.push(a);
        }
        let mut volumes = Vec::with_capacity(nv);
        for _ in 0..nv {
            let id = r.u64()?;
            let size = r.u64()?;
            let wwn = r.arr16()?;
            let def_crc = r.u32()?;
            let nl = r.u8()? as usize;
            let code = r.u8()?;
            let stripes = r.u16()?;
            let copies = r.u16()?;
            let nm = r.u16()? as usize;
            let chunk = r.u32()?;
            let name = r.name(64, "volume name")?;
            if name.len() != nl || !valid_volume_name(&name) {
                return Err(FormatError::Invalid("volume name".into()));
            }
            let kind = LayoutKind::from_code(code)
                .ok_or_else(|| FormatError::Invalid(format!("volume layout {code}")))?;
            let layout = Layout {
                kind,
                stripes,
                copies,
                chunk,
            };
            layout
                .validate()
                .map_err(|e| FormatError::Invalid(format!("volume {name}: {e}")))?;
            // One more during a move of a stripe or raid10 member (VolumeDef::moving).
            let moving_ok = matches!(kind, LayoutKind::Stripe | LayoutKind::Raid10)
                && nm == layout.members() + 1;
            if nm != layout.members() && !moving_ok {
                return Err(FormatError::Invalid(format!("volume {name}: member count")));
            }
            let mut health = Vec::with_capacity(nm.min(r.remaining() / LIST_MEMBER_LEN));
            for _ in 0..nm {
                let code = r.u8()?;
                r.skip(7)?;
                let val = r.u64()?;
                health.push(match code {
                    HEALTH_OK if val == 0 => MemberHealth::Ok,
                    HEALTH_FAILED => MemberHealth::Failed { fail_seq: val },
                    HEALTH_REBUILDING => MemberHealth::Rebuilding { checkpoint: val },
                    _ => {
                        return Err(FormatError::Invalid(format!(
                            "volume {name}: member health {code}"
                        )))
                    }
                });
            }
            volumes.push(BootVol {
                id,
                name,
                size,
                wwn,
                def_crc,
                layout,
                health,
            });
        }
        let mut failed = Vec::with_capacity(nf.min(r.remaining() / LIST_FAILED_LEN));
        for _ in 0..nf {
            failed.push((Uuid(r.arr16()?), r.u64()?));
        }
        let mut jobs: Vec<Job> = Vec::with_capacity(nj);
        for _ in 0..nj {
            let j = decode_job(&mut r)?;
            if jobs.iter().any(|x| x.id == j.id) {
                return Err(FormatError::Invalid(format!("job {}: duplicate id", j.id)));
            }
            jobs.push(j);
        }
        let mut schedules: Vec<Schedule> = Vec::new();
        if flags & LIST_FLAG_SCHEDULES != 0 {
            let n = r.u32()? as usize;
            if n == 0 || n > MAX_SCHEDULES || r.u32()? != 0 {
                return Err(FormatError::Invalid(format!("schedule count {n}")));
            }
            for _ in 0..n {
                let s = Schedule {
                    volume: r.u64()?,
                    every: r.u64()?,
                    size: r.u64()?,
                    last: r.u64()?,
                    keep: r.u32()?,
                };
                if r.u32()? != 0 {
                    return Err(FormatError::Invalid("schedule: reserved bytes".into()));
                }
                s.check().map_err(FormatError::Invalid)?;
                if schedules.iter().any(|x| x.volume == s.volume) {
                    return Err(FormatError::Invalid(format!(
                        "schedule: volume id {} twice",
                        s.volume
                    )));
                }
                schedules.push(s);
            }
        }
        let mut legacy: Vec<LegacyVol> = Vec::new();
        if flags & LIST_FLAG_LEGACY != 0 {
            let n = r.u32()? as usize;
            if n == 0 || n > MAX_LEGACY || r.u32()? != 0 {
                return Err(FormatError::Invalid(format!("legacy disk count {n}")));
            }
            for _ in 0..n {
                let l = LegacyVol {
                    id: r.u64()?,
                    size: r.u64()?,
                    wwn: r.arr16()?,
                    name: r.name(64, "legacy volume name")?,
                    identity: r.name(64, "legacy disk identity")?,
                    path: r.name(128, "legacy disk path")?,
                };
                let bad =
                    |what: &str| FormatError::Invalid(format!("legacy disk {}: {what}", l.id));
                if !valid_volume_name(&l.name) {
                    return Err(bad("name"));
                }
                if l.identity.is_empty() || l.path.is_empty() || l.size == 0 {
                    return Err(bad("identity, path or size"));
                }
                if legacy
                    .iter()
                    .any(|x| x.id == l.id || x.name == l.name || x.identity == l.identity)
                {
                    return Err(bad("duplicate"));
                }
                legacy.push(l);
            }
        }
        let mut exposures: Vec<Exposure> = Vec::new();
        if flags & LIST_FLAG_EXPOSURES != 0 {
            let n = r.u32()? as usize;
            if n == 0 || n > MAX_EXPOSURES || r.u32()? != 0 {
                return Err(FormatError::Invalid(format!("exposure count {n}")));
            }
            for _ in 0..n {
                let x = decode_exposure(&mut r)?;
                let bad = |what: &str| {
                    FormatError::Invalid(format!(
                        "exposure of volume id {} on sp {}: {what}",
                        x.volume, x.sp
                    ))
                };
                if !volumes.iter().any(|v| v.id == x.volume)
                    && !legacy.iter().any(|l| l.id == x.volume)
                {
                    return Err(bad("no such volume"));
                }
                if exposures.contains(&x) {
                    return Err(bad("duplicate"));
                }
                exposures.push(x);
            }
        }
        if r.remaining() != 0 {
            return Err(FormatError::Invalid("boot list length".into()));
        }
        Ok(BootList {
            sig: ClusterSig { name, uuid },
            seq,
            next_id,
            next_fail_seq,
            alus,
            volumes,
            failed,
            jobs,
            flags: flags & !SECTION_FLAGS,
            schedules,
            legacy,
            exposures,
        })
    }
}

/// Read the list a valid pointer refers to and check it against the pointer.
pub fn read_list(
    disk: &mut dyn Disk,
    ptr: &BootPtr,
    areas: [u64; 2],
) -> Result<BootList, FormatError> {
    let off = areas[ptr.area as usize & 1];
    let len = ptr.list_len as usize;
    let mut b = vec![0u8; len.div_ceil(4096) * 4096];
    disk.read_at(off, &mut b)
        .map_err(|e| FormatError::Io(e.to_string()))?;
    let list = b.get(..len).ok_or(FormatError::Truncated)?;
    if crc32c::crc32c(list) != ptr.list_crc {
        return Err(FormatError::Invalid("boot list checksum mismatch".into()));
    }
    let l = BootList::decode(list)?;
    if l.seq != ptr.seq || l.sig.uuid != ptr.cluster {
        return Err(FormatError::Invalid(
            "boot list does not match its pointer".into(),
        ));
    }
    Ok(l)
}

#[cfg(test)]
mod tests {
    use super::*;

    pub(crate) fn sample() -> BootList {
        BootList {
            sig: ClusterSig {
                name: "clu".into(),
                uuid: Uuid([5; 16]),
            },
            seq: 42,
            next_id: 17,
            next_fail_seq: 5,
            alus: vec![AluRecord {
                uuid: Uuid([6; 16]),
                wwn: [0x60; 16],
                size: 64 << 20,
                data_start: 8 << 20,
                data_end: 63 << 20,
                boot_member: true,
            }],
            volumes: vec![
                BootVol {
                    id: 3,
                    name: "v1".into(),
                    size: 1 << 20,
                    wwn: [0x61; 16],
                    def_crc: 0xdead_beef,
                    layout: Layout::linear(),
                    health: vec![MemberHealth::Ok],
                },
                BootVol {
                    id: 9,
                    name: "mirror".into(),
                    size: 2 << 20,
                    wwn: [0x62; 16],
                    def_crc: 0x1234_5678,
                    layout: Layout {
                        kind: LayoutKind::Raid10,
                        stripes: 2,
                        copies: 2,
                        chunk: 1 << 16,
                    },
                    health: vec![
                        MemberHealth::Ok,
                        MemberHealth::Failed { fail_seq: 3 },
                        MemberHealth::Rebuilding {
                            checkpoint: 1 << 20,
                        },
                        MemberHealth::Failed { fail_seq: 4 },
                    ],
                },
            ],
            failed: vec![(Uuid([7; 16]), 2)],
            jobs: Vec::new(),
            flags: LIST_FLAG_DIRTY,
            schedules: Vec::new(),
            legacy: Vec::new(),
            exposures: Vec::new(),
        }
    }

    fn job(id: u64) -> Job {
        Job {
            id,
            kind: JobKind::Rebuild,
            volume: 9,
            member: Some(2),
            source: None,
            repair: false,
            state: JobState::Running,
            checkpoint: 1 << 20,
            total: 2 << 20,
            mismatches: 0,
            repaired: 0,
            message: String::new(),
            rate: 0,
            dirty_only: false,
        }
    }

    /// docs/FORMAT.md documents the job entry as encoded here.
    #[test]
    fn format_doc_matches_job_entry() {
        let doc = include_str!("../../docs/FORMAT.md");
        for row in [
            format!("Job entry ({LIST_JOB_LEN} bytes)"),
            format!("| … | {LIST_JOB_LEN}·j | job entries |"),
            format!("| 132 | 4 | job count j (≤ {MAX_JOBS};"),
            format!(
                "| {JOB_MESSAGE_OFFSET} | {} | message |",
                LIST_JOB_LEN - JOB_MESSAGE_OFFSET
            ),
            format!("| 19 | 1 | message length | 0..={MAX_JOB_MESSAGE} |"),
            "| 56 | 8 | rate | throttle in bytes per second".to_string(),
            "5 = move of a member to another ALU (member = the copy target, source = the member moved off".to_string(),
            format!("bit {} = source present (required for move", JOB_FLAG_SOURCE.trailing_zeros()),
            "| 22 | 2 | source | move: the member being moved off".to_string(),
        ] {
            assert!(doc.contains(&row), "FORMAT.md lacks {row}");
        }
        // field offsets of an encoded entry
        let j = Job {
            id: 0x0101,
            volume: 0x0202,
            checkpoint: 0x0303,
            total: 0x0404,
            mismatches: 0x0505,
            repaired: 0x0606,
            message: "hi".into(),
            rate: 0x0707,
            dirty_only: false,
            ..job(0)
        };
        let mut w = Wr::new();
        encode_job(&mut w, &j);
        let b = w.v;
        assert_eq!(b.len(), LIST_JOB_LEN);
        let u = |o: usize| u64::from_le_bytes(b[o..o + 8].try_into().unwrap());
        assert_eq!(
            (u(0), u(8), u(24), u(32), u(40), u(48), u(56)),
            (0x0101, 0x0202, 0x0303, 0x0404, 0x0505, 0x0606, 0x0707)
        );
        assert_eq!(decode_job(&mut Rd::new(&b)).unwrap(), j);
        assert_eq!(&b[16..24], &[1, 1, JOB_FLAG_MEMBER, 2, 2, 0, 0, 0]);
        assert_eq!(&b[JOB_MESSAGE_OFFSET..JOB_MESSAGE_OFFSET + 3], b"hi\0");
    }

    #[test]
    fn schedules_roundtrip_and_checks() {
        let mut l = sample();
        assert_eq!(l.encode()[12] & LIST_FLAG_SCHEDULES as u8, 0);
        l.schedules = vec![
            Schedule {
                volume: 7,
                every: 3600,
                size: 1 << 30,
                last: 1_700_000_000,
                keep: 24,
            },
            Schedule {
                volume: 9,
                every: 1,
                size: 0,
                last: 0,
                keep: 1,
            },
        ];
        let e = l.encode();
        assert_eq!(e[12] & LIST_FLAG_SCHEDULES as u8, LIST_FLAG_SCHEDULES as u8);
        assert_eq!(BootList::decode(&e).unwrap(), l);
        let s0 = e.len() - 2 * LIST_SCHEDULE_LEN;
        // keep 0, keep too large, every 0, reserved, duplicate volume, count
        let bad: Vec<(usize, Vec<u8>)> = vec![
            (s0 + 32, 0u32.to_le_bytes().to_vec()),
            (s0 + 32, 1001u32.to_le_bytes().to_vec()),
            (s0 + 8, 0u64.to_le_bytes().to_vec()),
            (s0 + 36, 1u32.to_le_bytes().to_vec()),
            (s0 + LIST_SCHEDULE_LEN, 7u64.to_le_bytes().to_vec()),
            (s0 - 8, 3u32.to_le_bytes().to_vec()),
        ];
        for (off, val) in bad {
            let mut c = e.clone();
            c[off..off + val.len()].copy_from_slice(&val);
            assert!(BootList::decode(&c).is_err(), "off {off}");
        }
        // The flag without the section, and the section without the flag.
        let mut c = sample().encode();
        c[12] |= LIST_FLAG_SCHEDULES as u8;
        assert!(BootList::decode(&c).is_err());
        let mut c = e.clone();
        c[12] &= !(LIST_FLAG_SCHEDULES as u8);
        assert!(BootList::decode(&c).is_err());
    }

    #[test]
    fn legacy_roundtrip_and_checks() {
        let mut l = sample();
        let rec = |id: u64, name: &str, identity: &str| LegacyVol {
            id,
            name: name.into(),
            size: 1 << 30,
            wwn: [id as u8; 16],
            identity: identity.into(),
            path: format!("/dev/disk/{name}"),
        };
        l.legacy = vec![rec(40, "old1", "serial:A"), rec(41, "old2", "wwid:B")];
        let e = l.encode();
        assert_eq!(e[12] & LIST_FLAG_LEGACY as u8, LIST_FLAG_LEGACY as u8);
        assert_eq!(e.len(), sample().encode().len() + 8 + 2 * LIST_LEGACY_LEN);
        assert_eq!(BootList::decode(&e).unwrap(), l);
        let l0 = e.len() - 2 * LIST_LEGACY_LEN;
        let mut bad: Vec<(usize, Vec<u8>)> = vec![
            (l0 + 32, b"bad name!".to_vec()),      // invalid name
            (l0 + 96, vec![0u8; 64]),              // empty identity
            (l0 + 8, 0u64.to_le_bytes().to_vec()), // size 0
            (l0 - 4, 1u32.to_le_bytes().to_vec()), // reserved
        ];
        // a duplicate identity
        let mut dup = vec![0u8; 64];
        dup[..8].copy_from_slice(b"serial:A");
        bad.push((l0 + LIST_LEGACY_LEN + 96, dup));
        for (off, val) in bad {
            let mut c = e.clone();
            c[off..off + val.len()].copy_from_slice(&val);
            assert!(BootList::decode(&c).is_err(), "off {off}");
        }
        let doc = include_str!("../../docs/FORMAT.md");
        for row in [
            format!("Legacy disk entry ({LIST_LEGACY_LEN} bytes)"),
            format!(
                "bit {} = legacy disk entries follow",
                LIST_FLAG_LEGACY.trailing_zeros()
            ),
        ] {
            assert!(doc.contains(&row), "FORMAT.md lacks {row}");
        }
    }

    fn expo(volume: u64, sp: &str) -> Exposure {
        Exposure {
            volume,
            sp: sp.into(),
        }
    }

    #[test]
    fn exposures_roundtrip_and_checks() {
        let mut l = sample();
        // Lists without the section (all lists written before it existed)
        // decode as before, with an empty map.
        let old = l.encode();
        assert_eq!(old[12] & LIST_FLAG_EXPOSURES as u8, 0);
        let d = BootList::decode(&old).unwrap();
        assert!(d.exposures.is_empty());
        assert_eq!(d, l);
        let long = "s".repeat(MAX_SP_NAME);
        l.legacy = vec![LegacyVol {
            id: 40,
            name: "old1".into(),
            size: 1 << 30,
            wwn: [40; 16],
            identity: "serial:A".into(),
            path: "/dev/sdz".into(),
        }];
        l.exposures = vec![
            expo(3, "sp1"),
            expo(3, "sp2"),
            expo(9, &long),
            expo(40, "sp1"),
        ];
        let e = l.encode();
        assert_eq!(e[12] & LIST_FLAG_EXPOSURES as u8, LIST_FLAG_EXPOSURES as u8);
        let no_expo = BootList {
            exposures: Vec::new(),
            ..l.clone()
        };
        assert_eq!(e.len(), no_expo.encode().len() + 8 + 4 * LIST_EXPOSURE_LEN);
        let d = BootList::decode(&e).unwrap();
        assert_eq!(d, l);
        assert_eq!(d.flags, LIST_FLAG_DIRTY, "section flags are not kept");
        // entry layout: volume id, then the NUL-padded name (none at 32 bytes)
        let x0 = e.len() - 4 * LIST_EXPOSURE_LEN;
        assert_eq!(&e[x0 - 8..x0], &[4, 0, 0, 0, 0, 0, 0, 0]);
        assert_eq!(&e[x0..x0 + 8], &3u64.to_le_bytes());
        assert_eq!(&e[x0 + 8..x0 + 12], b"sp1\0");
        assert!(is_zero(&e[x0 + 11..x0 + LIST_EXPOSURE_LEN]));
        let x2 = x0 + 2 * LIST_EXPOSURE_LEN;
        assert_eq!(&e[x2 + 8..x2 + LIST_EXPOSURE_LEN], long.as_bytes());
        let name = |s: &[u8]| {
            let mut v = vec![0u8; MAX_SP_NAME];
            v[..s.len()].copy_from_slice(s);
            v
        };
        let bad: Vec<(usize, Vec<u8>, &str)> = vec![
            (x0 - 8, 0u32.to_le_bytes().to_vec(), "count 0"),
            (
                x0 - 8,
                5u32.to_le_bytes().to_vec(),
                "count beyond the entries",
            ),
            (
                x0 - 8,
                3u32.to_le_bytes().to_vec(),
                "count short of the entries",
            ),
            (
                x0 - 8,
                (MAX_EXPOSURES as u32 + 1).to_le_bytes().to_vec(),
                "count over the maximum",
            ),
            (x0 - 4, 1u32.to_le_bytes().to_vec(), "reserved"),
            (x0 + 8, name(b""), "empty sp name"),
            (x0 + 8, name(b"sp.1"), "invalid sp name"),
            (x0 + 8, name(b"sp 1"), "invalid sp name (space)"),
            (x0 + 8, name(&[0xff, 0xfe]), "sp name not UTF-8"),
            (x0 + 8 + 5, vec![b'x'], "non-zero padding after the NUL"),
            (x0 + LIST_EXPOSURE_LEN + 8, name(b"sp1"), "duplicate pair"),
            (x0, 4u64.to_le_bytes().to_vec(), "unknown volume id"),
            (
                x0 + 3 * LIST_EXPOSURE_LEN,
                41u64.to_le_bytes().to_vec(),
                "unknown legacy id",
            ),
        ];
        for (off, val, what) in bad {
            let mut c = e.clone();
            c[off..off + val.len()].copy_from_slice(&val);
            assert!(BootList::decode(&c).is_err(), "{what}");
        }
        // Same volume on another SP and same SP for another volume are fine.
        let mut c = e.clone();
        c[x0 + LIST_EXPOSURE_LEN + 8..x0 + LIST_EXPOSURE_LEN + 12].copy_from_slice(b"sp3\0");
        assert_eq!(BootList::decode(&c).unwrap().exposures[1], expo(3, "sp3"));
        // An exposure of a volume the list does not hold is rejected on its own too.
        let mut gone = l.clone();
        gone.volumes.remove(1);
        assert!(BootList::decode(&gone.encode()).is_err());
        // The flag without the section, and the section without the flag.
        let mut c = sample().encode();
        c[12] |= LIST_FLAG_EXPOSURES as u8;
        assert!(BootList::decode(&c).is_err());
        let mut c = e.clone();
        c[12] &= !(LIST_FLAG_EXPOSURES as u8);
        assert!(BootList::decode(&c).is_err());
        // Unknown flag bits beyond bit 3 are still rejected.
        let mut c = e.clone();
        c[12] |= 16;
        assert!(BootList::decode(&c).is_err());
        // After schedules and legacy disks, in that order.
        let mut all = l.clone();
        all.schedules = vec![Schedule {
            volume: 3,
            every: 60,
            size: 0,
            last: 0,
            keep: 2,
        }];
        let a = all.encode();
        assert_eq!(a[12] as u32, LIST_FLAG_DIRTY | SECTION_FLAGS);
        assert_eq!(BootList::decode(&a).unwrap(), all);
        assert_eq!(
            &a[a.len() - e.len() + x0 - 8..][..e.len() - x0 + 8],
            &e[x0 - 8..]
        );
        // Decoding never panics on a damaged section.
        for i in x0 - 8..e.len() {
            for v in [0u8, 0xff, b'-', b'a'] {
                let mut c = e.clone();
                c[i] = v;
                let _ = BootList::decode(&c);
            }
        }
    }

    /// docs/FORMAT.md documents the exposure section as encoded here.
    #[test]
    fn format_doc_matches_exposures() {
        let doc = include_str!("../../docs/FORMAT.md");
        let bit = LIST_FLAG_EXPOSURES.trailing_zeros();
        assert_eq!(bit, 3);
        for row in [
            format!("Exposure entry ({LIST_EXPOSURE_LEN} bytes)"),
            format!("bit {bit} = exposure entries follow the legacy disk entries"),
            format!(
                "| … | 8 + {LIST_EXPOSURE_LEN}·x | with flag bit {bit}: exposure count x u32 (1 to {MAX_EXPOSURES}), reserved u32 (0), then x exposure entries |"
            ),
            "| 0 | 8 | volume id | a volume (snapshots included) or legacy disk of this list |"
                .to_string(),
            format!("| 8 | {MAX_SP_NAME} | SP name | 1 to {MAX_SP_NAME} bytes of `A-Z a-z 0-9 - _`, then NUL padding"),
        ] {
            assert!(doc.contains(&row), "FORMAT.md lacks {row}");
        }
        assert_eq!(LIST_EXPOSURE_LEN, 8 + MAX_SP_NAME);
    }

    /// docs/FORMAT.md documents the schedule section as encoded here.
    #[test]
    fn format_doc_matches_schedules() {
        let doc = include_str!("../../docs/FORMAT.md");
        for row in [
            format!("Schedule entry ({LIST_SCHEDULE_LEN} bytes)"),
            format!(
                "bit {} = snapshot schedules follow the job entries",
                LIST_FLAG_SCHEDULES.trailing_zeros()
            ),
            format!("(1 to {MAX_SCHEDULES})"),
        ] {
            assert!(doc.contains(&row), "FORMAT.md lacks {row}");
        }
    }

    #[test]
    fn jobs_roundtrip_and_checks() {
        let mut l = sample();
        l.jobs = vec![
            job(20),
            Job {
                id: 21,
                kind: JobKind::Scrub,
                member: None,
                repair: true,
                state: JobState::Failed,
                checkpoint: 3,
                total: 4 << 20,
                mismatches: 7,
                repaired: 5,
                message: format!("read error: {}", "ü".repeat(50)),
                rate: 0,
                dirty_only: false,
                ..job(21)
            },
            Job {
                state: JobState::Paused,
                message: "m".repeat(MAX_JOB_MESSAGE),
                rate: 0,
                dirty_only: false,
                ..job(22)
            },
        ];
        let e = l.encode();
        assert_eq!(BootList::decode(&e).unwrap(), l);
        assert_eq!(
            e.len(),
            LIST_HEADER_LEN
                + LIST_ALU_LEN
                + 2 * LIST_VOL_LEN
                + 5 * LIST_MEMBER_LEN
                + LIST_FAILED_LEN
                + 3 * LIST_JOB_LEN
        );
        let j0 = e.len() - 3 * LIST_JOB_LEN;
        // kind, state, flags, message length, reserved, padding, truncation
        // (bytes 56..64 hold the rate: any value is valid)
        for (off, val) in [
            (16, 0u8),
            (16, 6),
            (17, 0),
            (17, 5),
            (18, 8),
            (18, 16),
            (19, 128),
            (19, 0),
            (22, 1),
            (JOB_MESSAGE_OFFSET + 127, 1),
        ] {
            let mut c = e.clone();
            c[j0 + LIST_JOB_LEN + off] = val;
            assert!(BootList::decode(&c).is_err(), "off {off} val {val}");
        }
        let mut c = e.clone();
        c[j0 + 18] = 0; // rebuild without member
        c[j0 + 20] = 0;
        assert!(BootList::decode(&c).is_err());
        let mut c = e.clone();
        c[j0 + 24..j0 + 32].copy_from_slice(&(3u64 << 20).to_le_bytes()); // checkpoint > total
        assert!(BootList::decode(&c).is_err());
        let mut dup = l.clone();
        dup.jobs[1].id = 20;
        assert!(BootList::decode(&dup.encode()).is_err());
        assert!(BootList::decode(&e[..e.len() - 1]).is_err());
        let mut c = e.clone();
        c[132] = 4; // more jobs than bytes
        assert!(BootList::decode(&c).is_err());
        c[132..136].copy_from_slice(&(MAX_JOBS as u32 + 1).to_le_bytes());
        assert!(BootList::decode(&c).is_err());
    }

    /// A move job (kind 5): flag bit 3 says bytes 22..24 hold the source member;
    /// the flag is required for a move and forbidden otherwise.
    #[test]
    fn move_job_entry_roundtrip_and_checks() {
        let mv = Job {
            kind: JobKind::Move,
            member: Some(2),
            source: Some(0x0101),
            ..job(30)
        };
        let mut w = Wr::new();
        encode_job(&mut w, &mv);
        let b = w.v;
        assert_eq!(
            &b[16..24],
            &[5, 1, JOB_FLAG_MEMBER | JOB_FLAG_SOURCE, 0, 2, 0, 1, 1]
        );
        assert_eq!(decode_job(&mut Rd::new(&b)).unwrap(), mv);
        let mut l = sample();
        l.jobs = vec![job(20), mv.clone()];
        assert_eq!(BootList::decode(&l.encode()).unwrap(), l);
        let bad = |f: &dyn Fn(&mut Vec<u8>)| {
            let mut c = b.clone();
            f(&mut c);
            decode_job(&mut Rd::new(&c)).is_err()
        };
        // a move without its source flag (and the source bytes then non-zero)
        assert!(bad(&|c| c[18] = JOB_FLAG_MEMBER));
        // a move without its source flag and with zero source bytes
        assert!(bad(&|c| {
            c[18] = JOB_FLAG_MEMBER;
            c[22] = 0;
            c[23] = 0;
        }));
        // a move without a target member
        assert!(bad(&|c| {
            c[18] = JOB_FLAG_SOURCE;
            c[20] = 0;
        }));
        // source = target
        assert!(bad(&|c| {
            c[22] = 2;
            c[23] = 0;
        }));
        // a rebuild carrying a source
        assert!(bad(&|c| c[16] = JobKind::Rebuild.code()));
        // a rebuild with non-zero bytes 22..24 and no source flag (reserved, as before)
        let mut c = b.clone();
        c[16] = JobKind::Rebuild.code();
        c[18] = JOB_FLAG_MEMBER;
        assert!(decode_job(&mut Rd::new(&c)).is_err());
        c[22] = 0;
        c[23] = 0;
        assert_eq!(
            decode_job(&mut Rd::new(&c)).unwrap(),
            Job {
                kind: JobKind::Rebuild,
                source: None,
                ..mv.clone()
            }
        );
        // a move may not be dirty-only or repair
        assert!(bad(&|c| c[18] |= JOB_FLAG_DIRTY_ONLY));
        assert!(bad(&|c| c[18] |= JOB_FLAG_REPAIR));
    }

    #[test]
    fn roundtrip() {
        let l = sample();
        assert_eq!(BootList::decode(&l.encode()).unwrap(), l);
        let p = BootPtr {
            seq: 42,
            area: 1,
            list_len: l.encode().len() as u64,
            list_crc: crc32c::crc32c(&l.encode()),
            cluster: l.sig.uuid,
        };
        let b = p.encode(0x2000);
        assert_eq!(BootPtr::decode(&b, 0x2000, 1 << 20).unwrap(), p);
        assert!(matches!(
            BootPtr::decode(&b, 0x3000, 1 << 20),
            Err(FormatError::WrongOffset { .. })
        ));
        let mut c = b.clone();
        c[20] ^= 4;
        assert_eq!(
            BootPtr::decode(&c, 0x2000, 1 << 20),
            Err(FormatError::BadChecksum)
        );
        assert_eq!(
            BootPtr::decode(&[0u8; 512], 0x2000, 1 << 20),
            Err(FormatError::Blank)
        );
        let e = l.encode();
        assert!(BootList::decode(&e[..e.len() - 1]).is_err());
        let mut x = e.clone();
        x.push(0);
        assert!(BootList::decode(&x).is_err());
        assert_eq!(
            e.len(),
            LIST_HEADER_LEN
                + LIST_ALU_LEN
                + 2 * LIST_VOL_LEN
                + 5 * LIST_MEMBER_LEN
                + LIST_FAILED_LEN
        );
        // member count must match the layout; health codes are checked
        let mut bad = l.clone();
        bad.volumes[1].health.pop();
        assert!(BootList::decode(&bad.encode()).is_err());
        let vol1 = LIST_HEADER_LEN + LIST_ALU_LEN + LIST_VOL_LEN + LIST_MEMBER_LEN;
        let mut c = e.clone();
        c[vol1 + LIST_VOL_LEN] = 7;
        assert!(BootList::decode(&c).is_err());
        let mut c = e.clone();
        c[vol1 + 37] = 0;
        assert!(BootList::decode(&c).is_err());
    }
}
