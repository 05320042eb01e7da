//! The control API between the admin CLI and the daemon (the spec's MIC,
//! [063]): one JSON request line, one JSON reply line, on a Unix socket that
//! only root may use.
//!
//! Every request carries a protocol version so that an older CLI talking to a
//! newer daemon gets a clear refusal instead of a misparse.

use serde::{Deserialize, Serialize};

pub const PROTOCOL_VERSION: u32 = 1;
/// A request line longer than this is refused unread: a peer cannot make the
/// daemon allocate without bound.
pub const MAX_LINE: usize = 64 * 1024;
pub const DEFAULT_SOCKET: &str = "/run/tierblk/control.sock";

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "cmd", rename_all = "kebab-case")]
pub enum Request {
    AluList,
    AluScan,
    AluClaim {
        path: String,
        force: bool,
    },
    AluRelease {
        path: String,
    },
    AluShow {
        path: String,
    },
    AluFail {
        path: String,
    },
    VolCreate {
        name: String,
        size: u64,
        alus: Vec<String>,
        #[serde(default)]
        layout: LayoutSpec,
    },
    /// Move every mirror leg off `old` onto `new`, rebuilding each online.
    /// Adopt a disk without metadata as a direct-access volume, writing
    /// nothing to it.
    AluAdopt {
        path: String,
        name: String,
    },
    /// Recent events; with `follow`, the connection then streams every new
    /// event as one JSON line (no reply envelope) until the client leaves.
    Events {
        #[serde(default)]
        follow: bool,
    },
    /// Hold a volume's host I/O (drain in-flight requests, stop its jobs).
    VolQuiesce {
        name: String,
    },
    VolResume {
        name: String,
    },
    /// Take a failed ALU back with its data (mdadm --re-add).
    AluReadd {
        path: String,
        #[serde(default)]
        rate: u64,
    },
    AluReplace {
        old: String,
        new: String,
        /// Bytes per second per job, 0 = unlimited.
        #[serde(default)]
        rate: u64,
    },
    /// Compare mirror legs (and with `repair`, rewrite mismatches from the first leg).
    VolScrub {
        name: String,
        repair: bool,
        #[serde(default)]
        rate: u64,
    },
    JobList,
    JobShow {
        id: u64,
    },
    /// Stop a running job at its next step; it can be resumed with `job resume`.
    JobCancel {
        id: u64,
    },
    JobResume {
        id: u64,
    },
    VolList,
    VolShow {
        name: String,
    },
    VolRemove {
        name: String,
    },
    VolOnline {
        name: String,
    },
    VolOffline {
        name: String,
    },
    /// Take a snapshot of `volume` named `name`; `size` is the COW store's
    /// size (default: enough for every chunk of the origin to change).
    SnapCreate {
        volume: String,
        name: String,
        #[serde(default)]
        size: Option<u64>,
        #[serde(default)]
        chunk: Option<u32>,
    },
    SnapList {
        #[serde(default)]
        volume: Option<String>,
    },
    SnapRemove {
        name: String,
    },
    /// Snapshot `volume` every `every` seconds, keeping the newest `keep`.
    SnapSchedule {
        volume: String,
        every: u64,
        keep: u32,
        #[serde(default)]
        size: Option<u64>,
    },
    SnapUnschedule {
        volume: String,
    },
    SnapSchedules,
    /// I/O statistics of one online volume, or of all.
    Stats {
        #[serde(default)]
        volume: Option<String>,
    },
    /// Roll the snapshot's (offline) origin back to the snapshot's image.
    SnapRollback {
        name: String,
        #[serde(default)]
        rate: u64,
    },
    /// The metadata archive: the configurations commits replaced, newest first.
    MetaHistory,
    /// The committed configuration (`seq` absent) or archived configuration `seq`.
    MetaDump {
        #[serde(default)]
        seq: Option<u64>,
    },
    /// Bring back the volume definitions of archived configuration `seq`;
    /// `force` lets it drop volumes the archive does not list.
    MetaRestore {
        seq: u64,
        #[serde(default)]
        force: bool,
    },
    /// The storage processors: this one and its peers.
    SpList,
    /// Expose a volume on SP too (the exposure map).
    /// Add a mirror leg on `alu` (linear -> mirror, mirror -> one more leg;
    /// lvconvert -m+1); the leg is rebuilt online.
    VolAddLeg {
        name: String,
        alu: String,
        #[serde(default)]
        rate: u64,
    },
    /// Remove a mirror leg, named by member number or by the ALU holding it
    /// (a 2-leg mirror becomes linear; lvconvert -m-1).
    VolRemoveLeg {
        name: String,
        #[serde(default)]
        member: Option<u16>,
        #[serde(default)]
        alu: Option<String>,
    },
    /// Move a member to another ALU (or any ALU of SP `to`) online, like
    /// pvmove: a temporary mirror leg is copied with checkpoints, then the
    /// old one is dropped.
    VolMove {
        name: String,
        to: String,
        #[serde(default)]
        member: Option<u16>,
        #[serde(default)]
        from: Option<String>,
        #[serde(default)]
        rate: u64,
    },
    /// Grow a volume by `add` bytes, concatenating new
    /// pieces on `alus` (one per member).
    VolExtend {
        name: String,
        add: u64,
        alus: Vec<String>,
    },
    VolExpose {
        name: String,
        sp: String,
    },
    /// Stop exposing a volume on SP.
    VolUnexpose {
        name: String,
        sp: String,
    },
    /// The fabric paths of this SP's remote references.
    PathList,
}

impl Request {
    /// Whether the request only reads: a peer SP answers those itself and
    /// refuses the others, naming the master.
    pub fn read_only(&self) -> bool {
        matches!(
            self,
            Request::AluList
                | Request::AluShow { .. }
                | Request::Events { .. }
                | Request::JobList
                | Request::JobShow { .. }
                | Request::VolList
                | Request::VolShow { .. }
                | Request::SnapList { .. }
                | Request::SnapSchedules
                | Request::Stats { .. }
                | Request::MetaHistory
                | Request::MetaDump { .. }
                | Request::SpList
                | Request::PathList
        )
    }
}

/// The shape a new volume should have (`--layout`, `--stripes`, `--copies`, `--chunk`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LayoutSpec {
    /// linear, concat, stripe, mirror, raid10
    pub kind: String,
    pub stripes: Option<u16>,
    pub copies: Option<u16>,
    pub chunk: Option<u32>,
}

impl Default for LayoutSpec {
    fn default() -> Self {
        LayoutSpec {
            kind: "linear".into(),
            stripes: None,
            copies: None,
            chunk: None,
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Envelope {
    pub version: u32,
    pub request: Request,
}

/// The reply: exactly one of `ok` or `error`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Reply {
    Ok(Box<Payload>),
    Error(String),
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "kind", content = "data", rename_all = "kebab-case")]
pub enum Payload {
    Done(String),
    Alus(Vec<AluView>),
    Alu(AluView),
    Volumes(Vec<VolumeView>),
    Volume(VolumeView),
    Jobs(Vec<JobView>),
    Job(JobView),
    Snapshots(Vec<SnapView>),
    Snapshot(SnapView),
    Schedules(Vec<ScheduleView>),
    Stats(Vec<StatsView>),
    MetaHistory(MetaHistoryView),
    MetaDump(Box<MetaDumpView>),
    Events(Vec<crate::events::EventView>),
    Sps(Vec<SpView>),
    Paths(Vec<PathView>),
}

/// `sp list`: one storage processor.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SpView {
    pub name: String,
    /// master, peer, electing, or unknown (not answering).
    pub role: String,
    /// The master generation it reports.
    pub generation: u64,
    pub endpoints: Vec<String>,
    /// ALU paths it owns.
    pub alus: Vec<String>,
    /// up, down (missed heartbeats), or self.
    pub state: String,
    /// Why it does not answer.
    pub error: Option<String>,
}

/// `path list`: one fabric path of one remote reference.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PathView {
    /// The peer serving the tier-1 object.
    pub sp: String,
    /// The export (`part:GEN:ALU:START:LEN`).
    pub export: String,
    pub endpoint: String,
    /// 1 for the preferred path.
    pub priority: usize,
    /// up or down (the last attempt over it failed).
    pub state: String,
    /// Queues connected over it now.
    pub active: u64,
    pub connects: u64,
    pub failures: u64,
    pub last_error: Option<String>,
}

/// `meta history`: the archived configurations, newest first.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MetaHistoryView {
    /// Sequence number of the committed configuration.
    pub current: u64,
    pub entries: Vec<ArchiveView>,
    /// Archive writes that failed or were skipped since the daemon started.
    pub problems: Vec<String>,
}

/// One archived configuration.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ArchiveView {
    pub seq: u64,
    /// Unix seconds when it was archived (when the commit replacing it began).
    pub time: u64,
    pub volumes: Vec<String>,
    /// ALUs it lists.
    pub alus: usize,
    /// Boot set members whose archive holds a copy.
    pub copies: usize,
}

/// `meta dump`: a whole configuration, live or archived.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MetaDumpView {
    pub cluster: String,
    pub cluster_uuid: String,
    pub seq: u64,
    /// Set for an archived configuration: when it was archived (Unix seconds).
    pub archived: Option<u64>,
    pub next_id: u64,
    pub alus: Vec<MetaAluView>,
    /// Volumes with layout, members (health) and segments; an archived volume's
    /// state is "archived".
    pub volumes: Vec<VolumeView>,
    pub jobs: usize,
    pub schedules: usize,
    pub legacy: Vec<String>,
}

/// An ALU as the boot list records it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MetaAluView {
    pub uuid: String,
    pub wwn: String,
    pub size: u64,
    pub data_start: u64,
    pub data_end: u64,
    pub boot_member: bool,
    /// In the failed-ALU list (never written).
    pub failed: bool,
    /// Where it is now, when present.
    pub path: Option<String>,
}

/// An online volume's I/O statistics since it came online.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StatsView {
    pub volume: String,
    pub ops: Vec<OpStatsView>,
    /// Bytes of the ublk queues' tag I/O buffers (address space: queues x
    /// depth x 512 KiB), and how many of them are resident now (touched by
    /// a request).
    #[serde(default)]
    pub buffer_bytes: u64,
    #[serde(default)]
    pub buffer_resident: u64,
}

/// One operation's counters (`op`: read, write, flush, discard, write_zeroes).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OpStatsView {
    pub op: String,
    pub count: u64,
    pub bytes: u64,
    pub errors: u64,
    /// Upper bounds of the latency buckets holding the median and the 99th
    /// percentile, in microseconds (`null` without requests).
    pub p50_us: Option<u64>,
    pub p99_us: Option<u64>,
    /// Requests per bucket: bucket i took less than 2^i µs (the last one: more).
    pub latency_buckets: Vec<u64>,
}

/// A snapshot schedule as `snap schedules` shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ScheduleView {
    pub volume: String,
    /// Seconds between snapshots.
    pub every: u64,
    pub keep: u32,
    /// COW store size of each snapshot (0: the default).
    pub size: u64,
    /// Unix seconds of the last and the next snapshot (`last` 0: never).
    pub last: u64,
    pub next: u64,
    /// The scheduled snapshots that exist now, oldest first.
    pub snapshots: Vec<String>,
}

/// A snapshot as `snap list` shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SnapView {
    pub name: String,
    pub origin: String,
    /// The snapshot's size (the origin's when it was taken).
    pub size: u64,
    /// Size of the COW store volume.
    pub cow_size: u64,
    pub chunk: u32,
    /// Bytes of COW data in use (changed chunks) and the store's capacity.
    pub used: u64,
    pub capacity: u64,
    /// "valid", "invalid" (COW full or failed: unreadable, remove it),
    /// "unavailable" (its store cannot be read), "rolling-back".
    pub state: String,
    pub device: Option<String>,
    pub problem: Option<String>,
}

/// A long-running job (rebuild, scrub) with its persisted progress.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct JobView {
    pub id: u64,
    /// rebuild, scrub, scrub-repair
    pub kind: String,
    pub volume: String,
    pub member: Option<u16>,
    /// running, paused, done, failed
    pub state: String,
    /// Bytes done (persisted checkpoint, or live progress while running).
    pub done: u64,
    pub total: u64,
    pub mismatches: u64,
    pub repaired: u64,
    pub message: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AluView {
    pub path: String,
    /// The storage processor owning the ALU (with `--sp`; a peer's ALU's
    /// path is `SP:/path`).
    #[serde(default)]
    pub sp: Option<String>,
    /// owned, not-owned, orphan, damaged, other-cluster, unreadable
    pub state: String,
    pub size: u64,
    pub uuid: Option<String>,
    pub cluster: Option<String>,
    /// Why the ALU is in this state (foreign signature, damage, ...).
    pub detail: Option<String>,
    pub boot_member: bool,
    /// Bytes free in the data area (owned ALUs only).
    pub free: Option<u64>,
    pub partitions: Vec<PartitionView>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PartitionView {
    pub volume: String,
    pub start: u64,
    pub len: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VolumeView {
    pub name: String,
    pub id: u64,
    pub size: u64,
    pub layout: String,
    pub stripes: u16,
    pub copies: u16,
    /// Stripe chunk in bytes (0 when the layout has no stripes).
    pub chunk: u32,
    /// online, degraded (online with a failed mirror leg), offline
    pub state: String,
    pub device: Option<String>,
    pub wwn: String,
    /// Why the volume is not online, when it is not.
    pub problem: Option<String>,
    /// Set for a snapshot: the volume it is a snapshot of.
    #[serde(default)]
    pub origin: Option<String>,
    /// The mirrors' write-intent bitmaps, while the volume is online.
    #[serde(default)]
    pub bitmap: Option<BitmapView>,
    pub members: Vec<MemberView>,
    pub segments: Vec<SegmentView>,
    /// The SPs exposing the volume (the exposure map); empty: the master.
    #[serde(default)]
    pub exposed_on: Vec<String>,
}

/// A stripe member or mirror leg: the concatenation of its segments.
/// A volume's write-intent bitmaps (one per mirror), summed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BitmapView {
    /// Bytes of a mirror leg one bit covers.
    pub region_size: u64,
    /// Regions over all mirrors, and how many are marked dirty.
    pub regions: u64,
    pub dirty: u64,
    /// A resync of the dirty regions (after an unclean stop) is pending.
    pub resync_pending: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MemberView {
    pub index: u16,
    /// ok, failed, rebuilding
    pub health: String,
    /// Why the member is not serving, when it is not.
    pub detail: Option<String>,
    pub fail_seq: Option<u64>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SegmentView {
    pub member: u16,
    pub alu: String,
    pub path: Option<String>,
    pub start: u64,
    pub len: u64,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_wire_format_is_stable() {
        let env = Envelope {
            version: PROTOCOL_VERSION,
            request: Request::AluClaim {
                path: "/dev/vdb".into(),
                force: false,
            },
        };
        let line = serde_json::to_string(&env).unwrap();
        assert_eq!(
            line,
            r#"{"version":1,"request":{"cmd":"alu-claim","path":"/dev/vdb","force":false}}"#
        );
        let back: Envelope = serde_json::from_str(&line).unwrap();
        assert_eq!(back.request, env.request);
    }

    #[test]
    fn reply_round_trip() {
        let r = Reply::Error("volume v1: not found".into());
        let line = serde_json::to_string(&r).unwrap();
        assert_eq!(line, r#"{"error":"volume v1: not found"}"#);
        let r = Reply::Ok(Box::new(Payload::Done("x".into())));
        let line = serde_json::to_string(&r).unwrap();
        assert!(matches!(
            serde_json::from_str::<Reply>(&line).unwrap(),
            Reply::Ok(p) if matches!(*p, Payload::Done(_))
        ));
    }

    #[test]
    fn garbage_is_an_error_not_a_panic() {
        for bad in [
            "",
            "{",
            "null",
            r#"{"version":1}"#,
            r#"{"version":1,"request":{"cmd":"nope"}}"#,
        ] {
            assert!(serde_json::from_str::<Envelope>(bad).is_err());
        }
    }
}
