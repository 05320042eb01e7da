//! Plain data types shared by the on-disk structures and the [`crate::store::Store`] API.

use std::fmt;
use std::str::FromStr;

/// 128-bit identifier (ALUs, clusters). Displayed as 8-4-4-4-12 lowercase hex.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Debug)]
pub struct Uuid(pub [u8; 16]);

impl Uuid {
    pub const NIL: Uuid = Uuid([0; 16]);

    /// A random (version 4) UUID from /dev/urandom.
    pub fn random() -> Uuid {
        let mut b = random_bytes16();
        b[6] = (b[6] & 0x0f) | 0x40;
        b[8] = (b[8] & 0x3f) | 0x80;
        Uuid(b)
    }
}

impl fmt::Display for Uuid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, b) in self.0.iter().enumerate() {
            if matches!(i, 4 | 6 | 8 | 10) {
                f.write_str("-")?;
            }
            write!(f, "{b:02x}")?;
        }
        Ok(())
    }
}

/// Error parsing a [`Uuid`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid uuid {0:?}: expected 8-4-4-4-12 hex digits")]
pub struct UuidParseError(pub String);

impl FromStr for Uuid {
    type Err = UuidParseError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let err = || UuidParseError(s.to_string());
        let groups: Vec<&str> = s.split('-').collect();
        let lens = [8, 4, 4, 4, 12];
        if groups.len() != 5 || groups.iter().zip(lens).any(|(g, l)| g.len() != l) {
            return Err(err());
        }
        let hex: String = groups.concat();
        let mut out = [0u8; 16];
        for (i, o) in out.iter_mut().enumerate() {
            let pair = hex.get(2 * i..2 * i + 2).ok_or_else(err)?;
            *o = u8::from_str_radix(pair, 16).map_err(|_| err())?;
        }
        Ok(Uuid(out))
    }
}

/// 16 random bytes from /dev/urandom (falls back to a time/pid mix if unavailable).
pub fn random_bytes16() -> [u8; 16] {
    use std::io::Read;
    let mut b = [0u8; 16];
    if let Ok(mut f) = std::fs::File::open("/dev/urandom") {
        if f.read_exact(&mut b).is_ok() {
            return b;
        }
    }
    use std::sync::atomic::{AtomicU64, Ordering};
    static CTR: AtomicU64 = AtomicU64::new(0);
    let t = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0);
    let c = CTR.fetch_add(1, Ordering::Relaxed);
    let mut x = t ^ (u64::from(std::process::id()) << 32) ^ c.wrapping_mul(0x9e37_79b9_7f4a_7c15);
    for chunk in b.chunks_mut(8) {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        chunk.copy_from_slice(&x.to_le_bytes()[..chunk.len()]);
    }
    b
}

/// A random NAA-6 style world wide name (first nibble 6).
pub fn random_wwn() -> [u8; 16] {
    let mut b = random_bytes16();
    b[0] = 0x60 | (b[0] & 0x0f);
    b
}

/// Cluster identity stored in every MDR directory ([058] "signature").
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ClusterSig {
    pub name: String,
    pub uuid: Uuid,
}

/// A byte range on an ALU.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Extent {
    pub start: u64,
    pub len: u64,
}

/// One ALU as listed in the boot list.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AluRecord {
    pub uuid: Uuid,
    pub wwn: [u8; 16],
    pub size: u64,
    pub data_start: u64,
    pub data_end: u64,
    pub boot_member: bool,
}

/// One piece of a volume member: a partition on an ALU.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Segment {
    pub partition_id: u64,
    pub alu: Uuid,
    pub start: u64,
    pub len: u64,
    /// The member this segment belongs to (see [`Layout`]); each member is the
    /// concatenation of its segments in order.
    pub member: u16,
}

/// How a volume maps onto its members.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LayoutKind {
    /// One member (segments concatenated).
    Linear,
    /// `stripes` members, `chunk` bytes per stripe unit, round robin.
    Stripe,
    /// `copies` members (legs), each a full copy.
    Mirror,
    /// `stripes` mirrors of `copies` legs each, striped with `chunk`.
    Raid10,
}

impl LayoutKind {
    /// On-disk code (object database volume record and boot list volume entry).
    pub fn code(self) -> u8 {
        match self {
            LayoutKind::Linear => 1,
            LayoutKind::Stripe => 2,
            LayoutKind::Mirror => 3,
            LayoutKind::Raid10 => 4,
        }
    }
    pub fn from_code(c: u8) -> Option<LayoutKind> {
        Some(match c {
            1 => LayoutKind::Linear,
            2 => LayoutKind::Stripe,
            3 => LayoutKind::Mirror,
            4 => LayoutKind::Raid10,
            _ => return None,
        })
    }
}

/// A volume layout. linear: stripes 1, copies 1, chunk 0; stripe: stripes >= 2,
/// copies 1, chunk; mirror: stripes 1, copies 2..=4, chunk 0; raid10: stripes >= 2,
/// copies 2..=4, chunk. `chunk`: a power of two >= 4096 (striped layouts only).
/// Member `m` is stripe `m / copies`, leg `m % copies`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Layout {
    pub kind: LayoutKind,
    pub stripes: u16,
    pub copies: u16,
    pub chunk: u32,
}

/// Smallest stripe chunk.
pub const MIN_CHUNK: u32 = 4096;
/// Most legs of one mirror.
pub const MAX_COPIES: u16 = 4;

impl Layout {
    pub fn linear() -> Layout {
        Layout {
            kind: LayoutKind::Linear,
            stripes: 1,
            copies: 1,
            chunk: 0,
        }
    }

    /// Number of members: stripes × copies.
    pub fn members(&self) -> usize {
        usize::from(self.stripes) * usize::from(self.copies)
    }

    /// Bytes each member holds for a volume of `size` bytes.
    pub fn member_size(&self, size: u64) -> u64 {
        size / u64::from(self.stripes.max(1))
    }

    /// The mirror (stripe) a member belongs to.
    pub fn group_of(&self, member: u16) -> u16 {
        member / self.copies.max(1)
    }

    /// Whether the layout keeps more than one copy of the data.
    pub fn redundant(&self) -> bool {
        self.copies > 1
    }

    pub fn validate(&self) -> Result<(), String> {
        let chunk_ok = |c: u32| c >= MIN_CHUNK && c.is_power_of_two();
        let (s, c, k) = (self.stripes, self.copies, self.chunk);
        match self.kind {
            LayoutKind::Linear => {
                if (s, c, k) != (1, 1, 0) {
                    return Err(format!(
                        "linear layout: stripes, copies, chunk must be 1, 1, 0 (got {s}, {c}, {k})"
                    ));
                }
            }
            LayoutKind::Stripe => {
                if s < 2 || c != 1 {
                    return Err(format!(
                        "stripe layout: needs stripes >= 2 and copies = 1 (got {s}, {c})"
                    ));
                }
                if !chunk_ok(k) {
                    return Err(format!(
                        "stripe layout: chunk {k} must be a power of two >= {MIN_CHUNK}"
                    ));
                }
            }
            LayoutKind::Mirror => {
                if s != 1 || !(2..=MAX_COPIES).contains(&c) || k != 0 {
                    return Err(format!(
                        "mirror layout: needs stripes = 1, copies 2..={MAX_COPIES}, chunk 0 (got {s}, {c}, {k})"
                    ));
                }
            }
            LayoutKind::Raid10 => {
                if s < 2 || !(2..=MAX_COPIES).contains(&c) {
                    return Err(format!(
                        "raid10 layout: needs stripes >= 2 and copies 2..={MAX_COPIES} (got {s}, {c})"
                    ));
                }
                if !chunk_ok(k) {
                    return Err(format!(
                        "raid10 layout: chunk {k} must be a power of two >= {MIN_CHUNK}"
                    ));
                }
            }
        }
        if self.members() > usize::from(u16::MAX) {
            return Err(format!("layout: too many members ({})", self.members()));
        }
        Ok(())
    }

    /// Size rules for a volume of this layout: the size splits evenly into the
    /// stripes, and (striped layouts) each member is a whole number of chunks.
    pub fn check_size(&self, size: u64) -> Result<(), String> {
        let s = u64::from(self.stripes.max(1));
        if !size.is_multiple_of(s) {
            return Err(format!("size {size} is not divisible by {s} stripes"));
        }
        if self.chunk != 0 && !self.member_size(size).is_multiple_of(u64::from(self.chunk)) {
            return Err(format!(
                "member size {} is not a multiple of the chunk ({})",
                self.member_size(size),
                self.chunk
            ));
        }
        Ok(())
    }
}

impl Default for Layout {
    fn default() -> Self {
        Layout::linear()
    }
}

/// Persisted health of one volume member (stored in the boot list, not in the
/// definition copies).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MemberHealth {
    Ok,
    /// Failed; `fail_seq` is a cluster-wide increasing number: of the failed legs of a
    /// mirror, the one with the highest `fail_seq` failed last and holds the newest data.
    Failed {
        fail_seq: u64,
    },
    /// Being resynchronised; bytes below `checkpoint` (member offset) are in sync.
    Rebuilding {
        checkpoint: u64,
    },
}

/// A volume top object.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VolumeDef {
    pub id: u64,
    pub name: String,
    pub size: u64,
    pub wwn: [u8; 16],
    pub segments: Vec<Segment>,
    pub layout: Layout,
    /// Health of each member (`layout.members()` entries). Comes from the boot list;
    /// not part of the definition (nor of its CRC).
    pub members: Vec<MemberHealth>,
    /// Set when this volume is a snapshot (spec section VIII): its segments are the
    /// copy-on-write store of `origin`'s point-in-time image.
    pub snapshot: Option<SnapshotOf>,
    /// Write-intent bitmap slot of every member (`layout.members()` entries, member 0
    /// first) of a mirror or raid10 volume: slot `s` is the 4 KiB block at
    /// `WI_OFFSET + s * WI_SLOT` ([`crate::mdr`]) on the ALU holding the member's
    /// first segment (see [`VolumeDef::wi_location`]). Empty for linear, stripe and
    /// snapshot volumes and for mirrors created before write-intent bitmaps existed
    /// (they resynchronise in full). Part of the definition (and of its CRC).
    /// During a move ([`VolumeDef::moving`]) one more entry, the target's, when
    /// the source has one.
    pub wi_slots: Vec<u16>,
    /// A move of one member of a stripe or raid10 volume in progress (spec claims
    /// 14-18): `Some(source)` when the volume has one member more than its layout,
    /// member `layout.members()` (the *target*), an extra leg of the source's group
    /// (stripe column or raid10 mirror) that a move job copies onto; the move ends by
    /// dropping the source and giving the target its number. `None` otherwise (a
    /// linear or mirror volume's move is a plain extra mirror leg). Part of the
    /// definition (and of its CRC).
    pub moving: Option<u16>,
}

/// What a snapshot volume is a snapshot of.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SnapshotOf {
    /// The origin volume's id.
    pub origin: u64,
    /// The origin's size when the snapshot was taken (the snapshot's size).
    pub origin_size: u64,
    /// Copy-on-write chunk in bytes: a power of two from 4 KiB to 16 MiB.
    pub chunk: u32,
}

impl SnapshotOf {
    pub fn validate(&self) -> Result<(), String> {
        if !self.chunk.is_power_of_two() || !(4096..=16 << 20).contains(&self.chunk) {
            return Err(format!(
                "snapshot chunk {} must be a power of two from 4K to 16M",
                self.chunk
            ));
        }
        if self.origin_size == 0 {
            return Err("snapshot of an empty origin".into());
        }
        Ok(())
    }
}

impl VolumeDef {
    /// Segments of one member, in order.
    pub fn member_segments(&self, member: u16) -> impl Iterator<Item = &Segment> {
        self.segments.iter().filter(move |s| s.member == member)
    }

    /// ALU of a member's first segment: where its write-intent slot lives.
    pub fn first_alu(&self, member: u16) -> Option<Uuid> {
        self.member_segments(member).next().map(|s| s.alu)
    }

    /// Where member `member`'s write-intent bitmap block lives: the ALU holding the
    /// member's first segment and the byte offset of its slot on that ALU
    /// (`WI_OFFSET + slot * WI_SLOT`, one `WI_SLOT`-byte block). `None` when the
    /// volume has no write-intent slots or the member does not exist.
    pub fn wi_location(&self, member: u16) -> Option<(Uuid, u64)> {
        let slot = *self.wi_slots.get(usize::from(member))?;
        let alu = self.first_alu(member)?;
        Some((
            alu,
            crate::mdr::WI_OFFSET + u64::from(slot) * crate::mdr::WI_SLOT,
        ))
    }

    /// The members with a segment on ALU `alu`, ascending.
    pub fn members_on(&self, alu: Uuid) -> Vec<u16> {
        let mut ms: Vec<u16> = self
            .segments
            .iter()
            .filter(|g| g.alu == alu)
            .map(|g| g.member)
            .collect();
        ms.sort_unstable();
        ms.dedup();
        ms
    }

    /// The definition alone (members all `Ok`), as stored in the object database.
    pub fn definition(&self) -> VolumeDef {
        VolumeDef {
            members: vec![MemberHealth::Ok; self.member_count()],
            ..self.clone()
        }
    }

    /// Members of the volume: the layout's, plus a move's target.
    pub fn member_count(&self) -> usize {
        self.layout.members() + usize::from(self.moving.is_some())
    }

    /// Whether some member has another leg to copy from or onto: a mirror or
    /// raid10 layout, or a stripe during a move.
    pub fn mirrored(&self) -> bool {
        self.layout.redundant() || self.moving.is_some()
    }

    /// Mirrors of the volume's tree (`stack::volume`): one for a mirror, one per
    /// stripe for a raid10 volume or a stripe during a move (its other columns
    /// one-leg mirrors), none otherwise.
    pub fn mirror_count(&self) -> usize {
        if self.mirrored() {
            usize::from(self.layout.stripes.max(1))
        } else {
            0
        }
    }

    /// Which mirror (stripe) and which leg of it member `member` is: `(m / K, m % K)`
    /// for the layout's members, `(group of the source, K)` for a move's target.
    pub fn leg_of(&self, member: u16) -> (usize, usize) {
        let copies = self.layout.copies.max(1);
        match self.moving {
            Some(src) if usize::from(member) >= self.layout.members() => {
                (usize::from(src / copies), usize::from(copies))
            }
            _ => (usize::from(member / copies), usize::from(member % copies)),
        }
    }

    /// Legs of mirror (stripe) `group`: K, one more for the group a move copies in.
    pub fn legs_of(&self, group: usize) -> usize {
        let copies = usize::from(self.layout.copies.max(1));
        copies + usize::from(self.moving_group() == Some(group))
    }

    /// The member that is leg `leg` of mirror (stripe) `group` (inverse of
    /// [`VolumeDef::leg_of`]).
    pub fn member_at(&self, group: usize, leg: usize) -> u16 {
        let copies = usize::from(self.layout.copies.max(1));
        if leg >= copies && self.moving_group() == Some(group) {
            return self.layout.members() as u16;
        }
        (group * copies + leg) as u16
    }

    /// The members of mirror (stripe) `group`, leg 0 first.
    pub fn group_members(&self, group: usize) -> Vec<u16> {
        (0..self.legs_of(group))
            .map(|leg| self.member_at(group, leg))
            .collect()
    }

    /// The group a move copies in (see [`VolumeDef::moving`]).
    pub fn moving_group(&self) -> Option<usize> {
        self.moving
            .map(|src| usize::from(src / self.layout.copies.max(1)))
    }
}

/// The committed cluster configuration.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ClusterImage {
    pub sig: ClusterSig,
    pub seq: u64,
    pub alus: Vec<AluRecord>,
    pub volumes: Vec<VolumeDef>,
    pub failed_alus: Vec<Uuid>,
    pub next_id: u64,
    /// Persisted long-running jobs (rebuild, scrub), from the boot list.
    pub jobs: Vec<Job>,
    /// Volumes were in use and the daemon has not stopped cleanly since.
    pub dirty: bool,
    /// Snapshot schedules, from the boot list.
    pub schedules: Vec<Schedule>,
    /// Adopted legacy disks, from the boot list.
    pub legacy: Vec<LegacyVol>,
    /// The exposure map, from the boot list.
    pub exposures: Vec<Exposure>,
}

/// What a persisted job does.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum JobKind {
    /// Resynchronise one member (`Job::member`) from the other legs of its mirror.
    Rebuild,
    /// Compare (and with `Job::repair`, fix) the legs of every mirror.
    Scrub,
    /// Roll the snapshot's origin back to the snapshot's image (spec [0167]):
    /// `Job::volume` is the snapshot volume; the checkpoint counts merged
    /// chunks.
    Rollback,
    /// After an unclean stop, copy the regions set in the mirrors'
    /// write-intent bitmaps from the first healthy leg to the others (MD's
    /// bitmap-based resync). The checkpoint runs over every mirror in turn, as
    /// a scrub's; `repaired` counts the dirty regions copied.
    Resync,
    /// Move a member to another ALU online (pvmove; spec claims 14-18, [0111]-
    /// [0113]): `Job::member` is the copy target, a leg added as the volume's
    /// last member, rebuilt like a Rebuild's target; `Job::source` is the member
    /// being moved off, dropped by `Store::finish_move` once the copy is
    /// complete, so the old extents are freed only after the new ones hold the
    /// data and the committed definition no longer references them.
    Move,
}

impl JobKind {
    /// On-disk code (boot list job entry).
    pub fn code(self) -> u8 {
        match self {
            JobKind::Rebuild => 1,
            JobKind::Scrub => 2,
            JobKind::Rollback => 3,
            JobKind::Resync => 4,
            JobKind::Move => 5,
        }
    }
    pub fn from_code(c: u8) -> Option<JobKind> {
        Some(match c {
            1 => JobKind::Rebuild,
            2 => JobKind::Scrub,
            3 => JobKind::Rollback,
            4 => JobKind::Resync,
            5 => JobKind::Move,
            _ => return None,
        })
    }
}

/// A snapshot schedule (spec [0167]): every `every` seconds the daemon takes
/// a snapshot of `volume` and keeps the newest `keep` of them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Schedule {
    /// The origin volume's id.
    pub volume: u64,
    /// Seconds between snapshots (at least 1).
    pub every: u64,
    /// COW store size of each snapshot in bytes (0: the default, enough for
    /// every chunk of the origin to change).
    pub size: u64,
    /// When the last snapshot was taken (Unix seconds; 0: never).
    pub last: u64,
    /// Snapshots kept (1 ..= [`MAX_SCHEDULE_KEEP`]); older ones are removed.
    pub keep: u32,
}

/// A legacy disk adopted as a direct-access volume ([058], [060]): the disk
/// carries no metadata region (nothing is ever written to it but the host's
/// own writes through the volume); its record lives in the boot set, and the
/// disk is recognised by its identity (a serial or WWID, an image file's
/// inode) and size.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LegacyVol {
    /// Allocated from the boot list's next object id.
    pub id: u64,
    pub name: String,
    /// The whole disk, in bytes.
    pub size: u64,
    pub wwn: [u8; 16],
    /// [`crate::Disk::identity`] at adoption (1..=63 bytes).
    pub identity: String,
    /// The path it was adopted from (a hint for administrators, 1..=127 bytes).
    pub path: String,
}

/// One entry of the exposure map (the spec's "volume location structure"):
/// storage processor `sp` exposes volume `volume` to its host. A volume with
/// no entry is exposed by the master (the daemon decides what the map means).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Exposure {
    /// The volume's id (a volume or an adopted legacy disk of the same list).
    pub volume: u64,
    /// The SP's name ([`valid_sp_name`]).
    pub sp: String,
}

/// Largest `keep` of a schedule.
pub const MAX_SCHEDULE_KEEP: u32 = 1000;

impl Schedule {
    pub fn check(&self) -> Result<(), String> {
        if self.every == 0 {
            return Err("schedule: interval must be at least 1 second".into());
        }
        if !(1..=MAX_SCHEDULE_KEEP).contains(&self.keep) {
            return Err(format!(
                "schedule: keep must be 1 to {MAX_SCHEDULE_KEEP}, not {}",
                self.keep
            ));
        }
        Ok(())
    }
}

/// Lifecycle state of a persisted job.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum JobState {
    Running,
    /// Cancelled by the administrator; resumable from `checkpoint`.
    Paused,
    Done,
    Failed,
}

impl JobState {
    /// On-disk code (boot list job entry).
    pub fn code(self) -> u8 {
        match self {
            JobState::Running => 1,
            JobState::Paused => 2,
            JobState::Done => 3,
            JobState::Failed => 4,
        }
    }
    pub fn from_code(c: u8) -> Option<JobState> {
        Some(match c {
            1 => JobState::Running,
            2 => JobState::Paused,
            3 => JobState::Done,
            4 => JobState::Failed,
            _ => return None,
        })
    }
    /// Done or Failed.
    pub fn finished(self) -> bool {
        matches!(self, JobState::Done | JobState::Failed)
    }
}

/// Longest job message in bytes.
pub const MAX_JOB_MESSAGE: usize = 127;

/// A persisted long-running job (stored in the boot list; progress survives restarts).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Job {
    /// Assigned by the store from the boot list's next object id.
    pub id: u64,
    pub kind: JobKind,
    /// Volume id.
    pub volume: u64,
    /// Rebuild: the member being rebuilt (required). Move: the copy target
    /// (required). Scrub: None (whole volume).
    pub member: Option<u16>,
    /// Move only (required there): the member being moved off, which
    /// `Store::finish_move` drops. None for every other kind.
    pub source: Option<u16>,
    /// Scrub: repair mismatches (else only count them). Always false for a rebuild.
    pub repair: bool,
    /// Rebuild only: the leg returned with its data (`alu readd`) and only the
    /// regions the mirror's write-intent bitmap marks are copied onto it.
    pub dirty_only: bool,
    pub state: JobState,
    /// Member (rebuild, move) or volume (scrub) offset below which the job is done.
    pub checkpoint: u64,
    /// Bytes the job covers; checkpoint <= total.
    pub total: u64,
    pub mismatches: u64,
    pub repaired: u64,
    /// Throttle in bytes per second asked for by the administrator (0 =
    /// unthrottled); persisted so a resumed job keeps it.
    pub rate: u64,
    /// At most [`MAX_JOB_MESSAGE`] bytes of UTF-8 (e.g. a failure reason); the store
    /// cuts longer messages at a character boundary.
    pub message: String,
}

impl Job {
    /// A running job of `kind` over the whole of `volume` (no member),
    /// `total` bytes, from the start, unthrottled; the store gives it its
    /// id.
    pub fn whole(kind: JobKind, volume: u64, total: u64) -> Job {
        Job {
            id: 0,
            kind,
            volume,
            member: None,
            source: None,
            repair: false,
            state: JobState::Running,
            checkpoint: 0,
            total,
            mismatches: 0,
            repaired: 0,
            rate: 0,
            dirty_only: false,
            message: String::new(),
        }
    }

    /// A running copy onto leg `member` of `volume` from its start (a
    /// rebuild, or with `source` a move), `total` bytes.
    pub fn leg_copy(id: u64, volume: u64, member: u16, source: Option<u16>, total: u64) -> Job {
        let kind = if source.is_some() {
            JobKind::Move
        } else {
            JobKind::Rebuild
        };
        Job {
            id,
            member: Some(member),
            source,
            ..Job::whole(kind, volume, total)
        }
    }

    /// Cut the message to at most [`MAX_JOB_MESSAGE`] bytes at a character boundary.
    pub fn truncate_message(&mut self) {
        if self.message.len() > MAX_JOB_MESSAGE {
            let mut n = MAX_JOB_MESSAGE;
            while !self.message.is_char_boundary(n) {
                n -= 1;
            }
            self.message.truncate(n);
        }
    }

    /// Field rules shared by the decoder and the store: one line naming the problem.
    pub fn check(&self) -> Result<(), String> {
        if self.message.len() > MAX_JOB_MESSAGE {
            return Err(format!(
                "job {}: message longer than {MAX_JOB_MESSAGE} bytes",
                self.id
            ));
        }
        if self.checkpoint > self.total {
            return Err(format!(
                "job {}: checkpoint {} beyond total {}",
                self.id, self.checkpoint, self.total
            ));
        }
        match self.kind {
            JobKind::Rebuild if self.member.is_none() => {
                Err(format!("job {}: a rebuild job needs a member", self.id))
            }
            JobKind::Move if self.member.is_none() || self.source.is_none() => Err(format!(
                "job {}: a move job needs a target member and a source member",
                self.id
            )),
            JobKind::Move if self.member == self.source => Err(format!(
                "job {}: a move's source and target are the same member",
                self.id
            )),
            _ if self.source.is_some() && self.kind != JobKind::Move => Err(format!(
                "job {}: only a move job has a source member",
                self.id
            )),
            _ if self.dirty_only && self.kind != JobKind::Rebuild => Err(format!(
                "job {}: dirty-only applies to rebuild jobs only",
                self.id
            )),
            JobKind::Rebuild | JobKind::Move if self.repair => Err(format!(
                "job {}: repair applies to scrub jobs only",
                self.id
            )),
            JobKind::Scrub if self.member.is_some() => Err(format!(
                "job {}: a scrub job covers the whole volume (no member)",
                self.id
            )),
            JobKind::Rollback | JobKind::Resync if self.member.is_some() || self.repair => {
                Err(format!(
                    "job {}: a {:?} job has no member and no repair flag",
                    self.id, self.kind
                ))
            }
            _ => Ok(()),
        }
    }
}

/// Maximum length of cluster and volume names in bytes.
pub const MAX_NAME: usize = 63;

/// Cluster names: 1..=63 bytes of UTF-8 without NUL.
pub fn valid_cluster_name(s: &str) -> bool {
    !s.is_empty() && s.len() <= MAX_NAME && !s.contains('\0')
}

/// Volume names: 1..=63 bytes of `[A-Za-z0-9._-]`.
pub fn valid_volume_name(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= MAX_NAME
        && s.bytes()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, b'.' | b'_' | b'-'))
}

/// Longest SP name in bytes.
pub const MAX_SP_NAME: usize = 32;

/// SP names: 1..=32 bytes of `[A-Za-z0-9_-]`.
pub fn valid_sp_name(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= MAX_SP_NAME
        && s.bytes()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, b'_' | b'-'))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sp_names() {
        for ok in ["sp1", "a", "SP_2-b", &"x".repeat(MAX_SP_NAME)] {
            assert!(valid_sp_name(ok), "{ok}");
        }
        for bad in [
            "",
            "sp.1",
            "sp 1",
            "sp:1",
            "sp/1",
            "spé",
            &"x".repeat(MAX_SP_NAME + 1),
        ] {
            assert!(!valid_sp_name(bad), "{bad}");
        }
    }

    #[test]
    fn uuid_roundtrip() {
        let u = Uuid::random();
        let s = u.to_string();
        assert_eq!(s.len(), 36);
        assert_eq!(s.parse::<Uuid>().unwrap(), u);
        assert!("xyz".parse::<Uuid>().is_err());
        assert!("0123456789abcdef0123456789abcdef0123"
            .parse::<Uuid>()
            .is_err());
        assert_eq!(
            Uuid([0x12; 16]).to_string(),
            "12121212-1212-1212-1212-121212121212"
        );
        assert_ne!(Uuid::random(), Uuid::random());
        assert_eq!(random_wwn()[0] >> 4, 6);
    }

    #[test]
    fn layout_validate() {
        let l = |kind, stripes, copies, chunk| Layout {
            kind,
            stripes,
            copies,
            chunk,
        };
        use LayoutKind::*;
        assert!(Layout::linear().validate().is_ok());
        assert_eq!(Layout::linear().members(), 1);
        assert!(l(Linear, 2, 1, 0).validate().is_err());
        assert!(l(Linear, 1, 1, 4096).validate().is_err());
        assert!(l(Stripe, 2, 1, 4096).validate().is_ok());
        assert!(l(Stripe, 3, 1, 65536).validate().is_ok());
        assert!(l(Stripe, 1, 1, 4096).validate().is_err());
        assert!(l(Stripe, 2, 2, 4096).validate().is_err());
        assert!(l(Stripe, 2, 1, 2048).validate().is_err());
        assert!(l(Stripe, 2, 1, 12288).validate().is_err());
        assert!(l(Stripe, 2, 1, 0).validate().is_err());
        assert!(l(Mirror, 1, 2, 0).validate().is_ok());
        assert!(l(Mirror, 1, 4, 0).validate().is_ok());
        assert!(l(Mirror, 1, 5, 0).validate().is_err());
        assert!(l(Mirror, 1, 1, 0).validate().is_err());
        assert!(l(Mirror, 2, 2, 0).validate().is_err());
        assert!(l(Mirror, 1, 2, 4096).validate().is_err());
        assert!(l(Raid10, 2, 2, 4096).validate().is_ok());
        assert_eq!(l(Raid10, 3, 2, 4096).members(), 6);
        assert_eq!(l(Raid10, 3, 2, 4096).group_of(5), 2);
        assert!(l(Raid10, 1, 2, 4096).validate().is_err());
        assert!(l(Raid10, 2, 1, 4096).validate().is_err());
        assert!(l(Raid10, 2, 5, 4096).validate().is_err());
        assert!(l(Raid10, 2, 2, 100).validate().is_err());
        assert!(l(Raid10, 20000, 4, 4096).validate().is_err());
        for k in [Linear, Stripe, Mirror, Raid10] {
            assert_eq!(LayoutKind::from_code(k.code()), Some(k));
        }
        assert_eq!(LayoutKind::from_code(0), None);
        let s = l(Stripe, 2, 1, 1 << 20);
        assert!(s.check_size(4 << 20).is_ok());
        assert!(s.check_size(3 << 20).is_err());
        assert!(l(Stripe, 3, 1, 4096).check_size(4 << 20).is_err());
    }

    #[test]
    fn move_job_rules() {
        let mv = Job {
            id: 7,
            kind: JobKind::Move,
            volume: 3,
            member: Some(1),
            source: Some(0),
            repair: false,
            dirty_only: false,
            state: JobState::Running,
            checkpoint: 0,
            total: 1 << 20,
            mismatches: 0,
            repaired: 0,
            rate: 0,
            message: String::new(),
        };
        assert_eq!(mv.check(), Ok(()));
        assert_eq!(JobKind::from_code(5), Some(JobKind::Move));
        assert_eq!(JobKind::Move.code(), 5);
        for bad in [
            Job {
                source: None,
                ..mv.clone()
            },
            Job {
                member: None,
                ..mv.clone()
            },
            Job {
                source: Some(1),
                ..mv.clone()
            },
            Job {
                repair: true,
                ..mv.clone()
            },
            Job {
                dirty_only: true,
                ..mv.clone()
            },
            // only a move has a source
            Job {
                kind: JobKind::Rebuild,
                ..mv.clone()
            },
            Job {
                kind: JobKind::Scrub,
                member: None,
                ..mv.clone()
            },
        ] {
            assert!(bad.check().is_err(), "{bad:?}");
        }
        assert_eq!(
            Job {
                kind: JobKind::Rebuild,
                source: None,
                ..mv.clone()
            }
            .check(),
            Ok(())
        );
    }

    #[test]
    fn names() {
        assert!(valid_volume_name("vol-1.a_b"));
        assert!(!valid_volume_name(""));
        assert!(!valid_volume_name("a b"));
        assert!(!valid_volume_name(&"a".repeat(64)));
        assert!(valid_volume_name(&"a".repeat(63)));
        assert!(valid_cluster_name("c1"));
        assert!(!valid_cluster_name(""));
    }
}
