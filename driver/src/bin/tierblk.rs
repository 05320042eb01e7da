//! tierblk: the root-only admin CLI. Talks to tierblkd over its control socket.

use clap::{Parser, Subcommand};
use std::path::PathBuf;
use std::time::Duration;
use tierblk::client;
use tierblk::clock::{now, utc};
use tierblk::proto::{
    AluView, JobView, LayoutSpec, MetaHistoryView, PathView, Payload, Request, ScheduleView,
    SnapView, SpView, StatsView, VolumeView, DEFAULT_SOCKET,
};
use tierblk::size::{format_size, parse_interval, parse_size};
use tierblk::table::render;

/// Administer tierblk: ALUs (disks, partitions, image files) and the volumes built on them.
#[derive(Parser, Debug)]
#[command(
    version,
    after_help = "Examples:\n  tierblk alu claim /dev/vdb\n  tierblk vol create db --size 20G --layout raid10 --stripes 2 --copies 2\n  tierblk vol list\n  tierblk snap create db db-monday\n  tierblk alu replace /dev/vdd /dev/vdf --wait\n\nEvery command and its JSON: docs/ADMIN.md"
)]
struct Cli {
    /// Print JSON instead of a table.
    #[arg(long, global = true)]
    json: bool,
    /// The daemon's control socket.
    #[arg(long, global = true, value_name = "PATH", default_value = DEFAULT_SOCKET)]
    socket: PathBuf,
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand, Debug)]
enum Cmd {
    /// Everything on one screen: overall state, what to do, volumes, ALUs, jobs, snapshots.
    Status,
    /// What happened: volumes online/offline, failures, jobs, snapshots (the latest 256); --follow streams new ones.
    Events {
        /// Keep printing events as they happen (JSON lines with --json).
        #[arg(long)]
        follow: bool,
    },
    /// I/O statistics of online volumes since they came online: requests, bytes, errors, latency.
    Stats { vol: Option<String> },
    /// ALUs: the disks, partitions and image files volumes are made of.
    #[command(subcommand)]
    Alu(AluCmd),
    /// Volumes exposed as /dev/ublkbN.
    #[command(subcommand)]
    Vol(VolCmd),
    /// Point-in-time, read-only copy-on-write snapshots of volumes.
    #[command(subcommand)]
    Snap(SnapCmd),
    /// Long-running work: rebuilds, scrubs, resyncs and rollbacks.
    #[command(subcommand)]
    Job(JobCmd),
    /// For udev: print TIERBLK_VOLUME= and TIERBLK_WWN= lines for a /dev/ublkbN that tierblkd serves; exit 1 silently for any other device.
    UdevName {
        /// ublkbN or /dev/ublkbN (udev's %k).
        devname: String,
        /// Where libublk exports each device's JSON.
        #[arg(long, hide = true, value_name = "DIR", default_value = tierblk::udev::RUN_DIR)]
        run_dir: PathBuf,
    },
    /// Write man pages or shell completions into DIR (scripts/install uses it).
    #[command(hide = true)]
    Gen {
        #[arg(value_parser = ["man", "completions"])]
        what: String,
        dir: PathBuf,
    },
    /// Metadata history kept on the disks: list, dump and restore earlier configurations (vgcfgrestore).
    #[command(subcommand)]
    Meta(MetaCmd),
    /// Storage processors: this tierblkd and its peers (tierblkd --sp).
    #[command(subcommand)]
    Sp(SpCmd),
    /// Fabric paths of the remote references to peers' tier-1 objects.
    #[command(subcommand)]
    Path(PathCmd),
}

#[derive(Subcommand, Debug)]
enum SpCmd {
    /// Every SP: name, role (master/peer), generation, endpoints, ALUs, state.
    List,
}

#[derive(Subcommand, Debug)]
enum PathCmd {
    /// Every path of every remote reference: endpoint, priority, state, failures.
    List,
}

#[derive(Subcommand, Debug)]
enum MetaCmd {
    /// List the archived configurations (each commit keeps the one it replaced), newest first.
    History,
    /// Print the committed configuration, or archived configuration --seq N, as JSON.
    Dump {
        #[arg(long)]
        seq: Option<u64>,
    },
    /// Bring back the volumes of archived configuration SEQ (they must be offline); refused if that would lose data.
    Restore {
        seq: u64,
        /// Also drop volumes created since SEQ (their definitions are lost).
        #[arg(long)]
        force: bool,
    },
}

#[derive(Subcommand, Debug)]
enum SnapCmd {
    /// Snapshot VOL (online or not) as NAME, a read-only /dev/ublkbN while VOL is online.
    Create {
        vol: String,
        name: String,
        /// Size of the copy-on-write store, e.g. 2G; default: enough for every chunk of VOL to change. A full store invalidates the snapshot.
        #[arg(long)]
        size: Option<String>,
        /// Copy-on-write chunk, a power of two from 4K to 16M (default 64K).
        #[arg(long)]
        chunk: Option<String>,
    },
    /// List snapshots (of VOL, or all).
    List { vol: Option<String> },
    /// Remove a snapshot (it must not be mounted); its store is freed.
    Remove { name: String },
    /// Snapshot VOL every interval (e.g. 1h, 30m, 1d), named VOL.auto-YYYYmmdd-HHMMSS (UTC), keeping the newest --keep; run by the daemon, kept across restarts.
    Schedule {
        vol: String,
        #[arg(long)]
        every: String,
        /// Scheduled snapshots kept (1-1000); older ones are removed.
        #[arg(long)]
        keep: u32,
        /// COW store size of each snapshot, e.g. 2G (default: enough for every chunk of VOL to change).
        #[arg(long)]
        size: Option<String>,
    },
    /// Stop scheduling snapshots of VOL (the snapshots taken stay).
    Unschedule { vol: String },
    /// List snapshot schedules with their last and next runs.
    Schedules,
    /// Roll the snapshot's origin (offline) back to the snapshot's image; the snapshot stays.
    Rollback {
        name: String,
        /// Rate limit, e.g. 50M (per second); default unlimited.
        #[arg(long)]
        rate: Option<String>,
        /// Wait until the rollback ends, showing progress.
        #[arg(long)]
        wait: bool,
    },
}

#[derive(Subcommand, Debug)]
enum JobCmd {
    /// List jobs with their progress.
    List,
    /// Show one job.
    Show {
        id: u64,
        /// Wait until the job ends, showing progress.
        #[arg(long)]
        wait: bool,
    },
    /// Stop a running job at its next step (its checkpoint is kept).
    Cancel { id: u64 },
    /// Restart a cancelled job from its checkpoint.
    Resume {
        id: u64,
        #[arg(long)]
        wait: bool,
    },
}

#[derive(Subcommand, Debug)]
enum AluCmd {
    /// List every scanned ALU and whether this cluster owns it.
    List,
    /// Look again for ALUs that could not be opened before.
    Scan,
    /// Take ownership of an ALU: writes the metadata region (refuses a disk holding data unless --force).
    Claim {
        path: String,
        /// Claim even if a filesystem or partition table is found (destroys it).
        #[arg(long)]
        force: bool,
    },
    /// Give an unused ALU back: its metadata region is invalidated.
    Release { path: String },
    /// Show one ALU with its partitions.
    Show { path: String },
    /// Declare an ALU failed (for tests and administrators): mirror legs on it stop being used.
    Fail { path: String },
    /// Adopt a disk that holds data but no tierblk metadata as volume NAME, writing nothing to it (a direct-access "legacy" volume; its record lives in the boot set).
    Adopt { path: String, name: String },
    /// Take back a failed ALU that returned with its data (mdadm --re-add): its mirror legs get only the regions their write-intent bitmap marks.
    Readd {
        path: String,
        /// Copy rate limit per job, e.g. 50M (per second); default unlimited.
        #[arg(long)]
        rate: Option<String>,
        /// Wait until the copies end, showing progress.
        #[arg(long)]
        wait: bool,
    },
    /// Replace OLD by NEW (a claimed ALU): every mirror leg on OLD is rebuilt on NEW, online.
    Replace {
        old: String,
        new: String,
        /// Rebuild rate limit per job, e.g. 50M (per second); default unlimited.
        #[arg(long)]
        rate: Option<String>,
        /// Wait until the rebuilds end, showing progress.
        #[arg(long)]
        wait: bool,
    },
}

#[derive(Subcommand, Debug)]
enum VolCmd {
    /// Create a volume and bring it online.
    Create {
        name: String,
        /// Size, e.g. 512M or 10G (rounded up to whole MiB).
        #[arg(long)]
        size: String,
        /// Allocate from these ALUs, in this order (repeatable; default: every owned ALU).
        #[arg(long = "alu", value_name = "PATH")]
        alus: Vec<String>,
        /// linear (alias concat): pieces end to end; stripe: RAID0; mirror: RAID1; raid10: stripe over mirrors.
        #[arg(long, default_value = "linear", value_parser = ["linear", "concat", "stripe", "mirror", "raid10"])]
        layout: String,
        /// Stripe members (stripe, raid10; default 2).
        #[arg(long)]
        stripes: Option<u16>,
        /// Copies per mirror (mirror, raid10; 2-4, default 2).
        #[arg(long)]
        copies: Option<u16>,
        /// Stripe chunk, a power of two of at least 4K (default 64K).
        #[arg(long)]
        chunk: Option<String>,
    },
    /// List volumes.
    List,
    /// Show one volume with its segments.
    Show { name: String },
    /// Remove a volume (it must not be mounted, nor exposed on other SPs); its space is freed.
    Remove { name: String },
    /// Compare the legs of a mirror or raid10 volume (md's check); --repair rewrites mismatches.
    Scrub {
        name: String,
        #[arg(long)]
        repair: bool,
        /// Rate limit, e.g. 50M (per second); default unlimited.
        #[arg(long)]
        rate: Option<String>,
        /// Wait until the scrub ends, showing progress.
        #[arg(long)]
        wait: bool,
    },
    /// Expose a volume as /dev/ublkbN.
    Online { name: String },
    /// Stop exposing a volume (it must not be mounted); lasts until the daemon restarts.
    Offline { name: String },
    /// Expose NAME on storage processor SP too (tierblkd --sp): the master sends SP the volume's tree; SP's host gets its own /dev/ublkbN.
    Expose {
        name: String,
        #[arg(long = "on", value_name = "SP")]
        sp: String,
    },
    /// Stop exposing NAME on SP (its device must not be open there); not its last exposure.
    Unexpose {
        name: String,
        #[arg(long = "on", value_name = "SP")]
        sp: String,
    },
    /// Add a mirror leg on ALU (a path from `alu list`) or on any ALU of storage processor SP, online: linear becomes mirror, a mirror gets one more leg (lvconvert -m+1). The leg is rebuilt in the background.
    AddLeg {
        name: String,
        #[arg(value_name = "ALU|SP")]
        to: String,
        /// Rebuild rate limit, e.g. 50M (per second); default unlimited.
        #[arg(long)]
        rate: Option<String>,
        /// Wait until the rebuild ends, showing progress.
        #[arg(long)]
        wait: bool,
    },
    /// Remove a mirror leg online, named by --member or by the --alu holding it (never the last in-sync leg; a 2-leg mirror becomes linear). Its space is freed. On a stripe or raid10 move's target (the extra member) it abandons the move.
    RemoveLeg {
        name: String,
        #[arg(long)]
        member: Option<u16>,
        #[arg(long, value_name = "PATH")]
        alu: Option<String>,
    },
    /// Move a member of a volume (any layout) to another ALU or SP online (like pvmove): a temporary mirror leg is copied with checkpoints (resumed after a crash), then the old piece is dropped and freed.
    Move {
        name: String,
        /// Target: an owned ALU path, or a storage processor (one of its ALUs with room is picked).
        #[arg(long, value_name = "ALU|SP")]
        to: String,
        /// The member to move (default: the only one).
        #[arg(long)]
        member: Option<u16>,
        /// Or the ALU the member is on.
        #[arg(long, value_name = "PATH")]
        from: Option<String>,
        /// Copy rate limit, e.g. 50M (per second); default unlimited.
        #[arg(long)]
        rate: Option<String>,
        /// Wait until the move ends, showing progress.
        #[arg(long)]
        wait: bool,
    },
    /// Grow a volume online by concatenating new pieces (one --alu per member; a mirror's other legs then copy their new part). The device grows at once where the kernel can (Linux 6.16+), else when the volume next comes online.
    Extend {
        name: String,
        /// How much to add, e.g. 512M (whole MiB; a stripe grows by whole chunks per member).
        #[arg(long)]
        by: String,
        /// ALU for each member's new piece, in member order (repeatable).
        #[arg(long = "alu", value_name = "PATH", required = true)]
        alus: Vec<String>,
    },
    /// Hold a volume's I/O (like dmsetup suspend): in-flight requests complete, new ones wait, jobs pause.
    Quiesce { name: String },
    /// Let a quiesced volume's held I/O and jobs go on.
    Resume { name: String },
}

fn main() {
    let cli = Cli::parse();
    let code = match run(&cli) {
        Ok(()) => 0,
        Err(msg) => {
            eprintln!("tierblk: {msg}");
            1
        }
    };
    std::process::exit(code);
}

fn run(cli: &Cli) -> Result<(), String> {
    let request = match &cli.cmd {
        Cmd::Status => return status(cli),
        Cmd::Events { follow: true } => return follow_events(cli),
        Cmd::Events { follow: false } => Request::Events { follow: false },
        Cmd::Stats { vol } => Request::Stats {
            volume: vol.clone(),
        },
        Cmd::Alu(AluCmd::List) => Request::AluList,
        Cmd::Alu(AluCmd::Scan) => Request::AluScan,
        Cmd::Alu(AluCmd::Claim { path, force }) => Request::AluClaim {
            path: path.clone(),
            force: *force,
        },
        Cmd::Alu(AluCmd::Release { path }) => Request::AluRelease { path: path.clone() },
        Cmd::Alu(AluCmd::Show { path }) => Request::AluShow { path: path.clone() },
        Cmd::Alu(AluCmd::Fail { path }) => Request::AluFail { path: path.clone() },
        Cmd::Alu(AluCmd::Adopt { path, name }) => Request::AluAdopt {
            path: path.clone(),
            name: name.clone(),
        },
        Cmd::Alu(AluCmd::Readd { path, rate, .. }) => Request::AluReadd {
            path: path.clone(),
            rate: parse_rate(rate)?,
        },
        Cmd::Alu(AluCmd::Replace { old, new, rate, .. }) => Request::AluReplace {
            old: old.clone(),
            new: new.clone(),
            rate: parse_rate(rate)?,
        },
        Cmd::Vol(VolCmd::Scrub {
            name, repair, rate, ..
        }) => Request::VolScrub {
            name: name.clone(),
            repair: *repair,
            rate: parse_rate(rate)?,
        },
        Cmd::Job(JobCmd::List) => Request::JobList,
        Cmd::Job(JobCmd::Show { id, .. }) => Request::JobShow { id: *id },
        Cmd::Job(JobCmd::Cancel { id }) => Request::JobCancel { id: *id },
        Cmd::Job(JobCmd::Resume { id, .. }) => Request::JobResume { id: *id },
        Cmd::Vol(VolCmd::Create {
            name,
            size,
            alus,
            layout,
            stripes,
            copies,
            chunk,
        }) => Request::VolCreate {
            name: name.clone(),
            size: parse_size(size).map_err(|e| e.to_string())?,
            alus: alus.clone(),
            layout: LayoutSpec {
                kind: layout.clone(),
                stripes: *stripes,
                copies: *copies,
                chunk: parse_chunk(chunk)?,
            },
        },
        Cmd::Vol(VolCmd::List) => Request::VolList,
        Cmd::Vol(VolCmd::Show { name }) => Request::VolShow { name: name.clone() },
        Cmd::Vol(VolCmd::Remove { name }) => Request::VolRemove { name: name.clone() },
        Cmd::Vol(VolCmd::Online { name }) => Request::VolOnline { name: name.clone() },
        Cmd::Vol(VolCmd::Expose { name, sp }) => Request::VolExpose {
            name: name.clone(),
            sp: sp.clone(),
        },
        Cmd::Vol(VolCmd::Unexpose { name, sp }) => Request::VolUnexpose {
            name: name.clone(),
            sp: sp.clone(),
        },
        Cmd::Vol(VolCmd::Offline { name }) => Request::VolOffline { name: name.clone() },
        Cmd::Vol(VolCmd::AddLeg { name, to, rate, .. }) => Request::VolAddLeg {
            name: name.clone(),
            alu: to.clone(),
            rate: parse_rate(rate)?,
        },
        Cmd::Vol(VolCmd::RemoveLeg { name, member, alu }) => Request::VolRemoveLeg {
            name: name.clone(),
            member: *member,
            alu: alu.clone(),
        },
        Cmd::Vol(VolCmd::Move {
            name,
            to,
            member,
            from,
            rate,
            ..
        }) => Request::VolMove {
            name: name.clone(),
            to: to.clone(),
            member: *member,
            from: from.clone(),
            rate: parse_rate(rate)?,
        },
        Cmd::Vol(VolCmd::Extend { name, by, alus }) => Request::VolExtend {
            name: name.clone(),
            add: parse_size(by).map_err(|e| format!("--by: {e}"))?,
            alus: alus.clone(),
        },
        Cmd::Vol(VolCmd::Quiesce { name }) => Request::VolQuiesce { name: name.clone() },
        Cmd::Vol(VolCmd::Resume { name }) => Request::VolResume { name: name.clone() },
        Cmd::Snap(SnapCmd::Create {
            vol,
            name,
            size,
            chunk,
        }) => Request::SnapCreate {
            volume: vol.clone(),
            name: name.clone(),
            size: size
                .as_deref()
                .map(|s| parse_size(s).map_err(|e| format!("--size: {e}")))
                .transpose()?,
            chunk: parse_chunk(chunk)?,
        },
        Cmd::Snap(SnapCmd::List { vol }) => Request::SnapList {
            volume: vol.clone(),
        },
        Cmd::Snap(SnapCmd::Remove { name }) => Request::SnapRemove { name: name.clone() },
        Cmd::Snap(SnapCmd::Schedule {
            vol,
            every,
            keep,
            size,
        }) => Request::SnapSchedule {
            volume: vol.clone(),
            every: parse_interval(every).map_err(|e| format!("--every: {e}"))?,
            keep: *keep,
            size: size
                .as_deref()
                .map(|s| parse_size(s).map_err(|e| format!("--size: {e}")))
                .transpose()?,
        },
        Cmd::Snap(SnapCmd::Unschedule { vol }) => Request::SnapUnschedule {
            volume: vol.clone(),
        },
        Cmd::Snap(SnapCmd::Schedules) => Request::SnapSchedules,
        Cmd::Snap(SnapCmd::Rollback { name, rate, .. }) => Request::SnapRollback {
            name: name.clone(),
            rate: parse_rate(rate)?,
        },
        Cmd::UdevName { devname, run_dir } => {
            std::process::exit(tierblk::udev::main(devname, run_dir))
        }
        Cmd::Gen { what, dir } => return gen_docs(what, dir),
        Cmd::Sp(SpCmd::List) => Request::SpList,
        Cmd::Path(PathCmd::List) => Request::PathList,
        Cmd::Meta(MetaCmd::History) => Request::MetaHistory,
        Cmd::Meta(MetaCmd::Dump { seq }) => Request::MetaDump { seq: *seq },
        Cmd::Meta(MetaCmd::Restore { seq, force }) => Request::MetaRestore {
            seq: *seq,
            force: *force,
        },
    };
    // Creating a volume writes metadata on several ALUs and starts a device.
    let payload =
        client::call(&cli.socket, request, Duration::from_secs(120)).map_err(|e| e.to_string())?;
    let wait = matches!(
        cli.cmd,
        Cmd::Alu(AluCmd::Replace { wait: true, .. })
            | Cmd::Alu(AluCmd::Readd { wait: true, .. })
            | Cmd::Vol(VolCmd::Scrub { wait: true, .. })
            | Cmd::Vol(VolCmd::AddLeg { wait: true, .. })
            | Cmd::Vol(VolCmd::Move { wait: true, .. })
            | Cmd::Job(JobCmd::Show { wait: true, .. })
            | Cmd::Job(JobCmd::Resume { wait: true, .. })
            | Cmd::Snap(SnapCmd::Rollback { wait: true, .. })
    );
    if !wait {
        print!(
            "{}",
            if cli.json {
                json(&payload)
            } else {
                human(&payload)
            }
        );
        return Ok(());
    }
    let ids: Vec<u64> = match &payload {
        Payload::Jobs(j) => j.iter().map(|j| j.id).collect(),
        Payload::Job(j) => vec![j.id],
        _ => Vec::new(),
    };
    let ended = wait_jobs(&cli.socket, &ids)?;
    let failed: Vec<String> = ended
        .iter()
        .filter(|j| j.state != "done")
        .map(|j| {
            format!(
                "job {} {}: {}",
                j.id,
                j.state,
                j.message.clone().unwrap_or_default()
            )
        })
        .collect();
    // One job is shown as an object, several as an array (like the request's reply).
    let payload = match ended.as_slice() {
        [one] if matches!(payload, Payload::Job(_)) => Payload::Job(one.clone()),
        _ => Payload::Jobs(ended),
    };
    print!(
        "{}",
        if cli.json {
            json(&payload)
        } else {
            human(&payload)
        }
    );
    if failed.is_empty() {
        Ok(())
    } else {
        Err(failed.join("; "))
    }
}

fn parse_chunk(chunk: &Option<String>) -> Result<Option<u32>, String> {
    chunk
        .as_deref()
        .map(|c| {
            parse_size(c)
                .map_err(|e| format!("--chunk: {e}"))
                .and_then(|b| u32::try_from(b).map_err(|_| format!("--chunk {c}: too large")))
        })
        .transpose()
}

fn parse_rate(rate: &Option<String>) -> Result<u64, String> {
    rate.as_deref()
        .map(|r| parse_size(r.trim_end_matches("/s")).map_err(|e| format!("--rate: {e}")))
        .transpose()
        .map(|r| r.unwrap_or(0))
}

/// Poll the jobs until none is running, drawing progress on stderr.
fn wait_jobs(socket: &std::path::Path, ids: &[u64]) -> Result<Vec<JobView>, String> {
    use std::io::{IsTerminal, Write};
    let tty = std::io::stderr().is_terminal();
    let mut last_tenth = vec![u64::MAX; ids.len()];
    loop {
        let mut jobs = Vec::new();
        for id in ids {
            match client::call(
                socket,
                Request::JobShow { id: *id },
                Duration::from_secs(30),
            ) {
                Ok(Payload::Job(j)) => jobs.push(j),
                Ok(_) => return Err(format!("job {id}: unexpected reply")),
                Err(e) => return Err(e.to_string()),
            }
        }
        let mut err = std::io::stderr().lock();
        for (i, j) in jobs.iter().enumerate() {
            let pct = (j.done.min(j.total) * 100)
                .checked_div(j.total)
                .unwrap_or(100);
            if tty {
                let bar: String = (0..30)
                    .map(|k| if k * 100 < pct * 30 { '#' } else { '.' })
                    .collect();
                let _ = write!(
                    err,
                    "\r[{bar}] {pct:3}% job {} {} {}",
                    j.id, j.kind, j.volume
                );
            } else if pct / 10 != last_tenth[i] {
                last_tenth[i] = pct / 10;
                let _ = writeln!(err, "job {} {} {}: {pct}%", j.id, j.kind, j.volume);
            }
        }
        if jobs.iter().all(|j| j.state != "running") {
            if tty {
                let _ = writeln!(err);
            }
            return Ok(jobs);
        }
        drop(err);
        std::thread::sleep(Duration::from_millis(500));
    }
}

fn json(p: &Payload) -> String {
    let v = match p {
        Payload::Done(msg) => serde_json::json!({ "message": msg }),
        Payload::Alus(a) => serde_json::to_value(a).unwrap_or_default(),
        Payload::Alu(a) => serde_json::to_value(a).unwrap_or_default(),
        Payload::Volumes(v) => serde_json::to_value(v).unwrap_or_default(),
        Payload::Volume(v) => serde_json::to_value(v).unwrap_or_default(),
        Payload::Jobs(j) => serde_json::to_value(j).unwrap_or_default(),
        Payload::Job(j) => serde_json::to_value(j).unwrap_or_default(),
        Payload::Snapshots(s) => serde_json::to_value(s).unwrap_or_default(),
        Payload::Snapshot(s) => serde_json::to_value(s).unwrap_or_default(),
        Payload::Schedules(s) => serde_json::to_value(s).unwrap_or_default(),
        Payload::Stats(s) => serde_json::to_value(s).unwrap_or_default(),
        Payload::Events(e) => serde_json::to_value(e).unwrap_or_default(),
        Payload::MetaHistory(h) => serde_json::to_value(h).unwrap_or_default(),
        Payload::MetaDump(d) => serde_json::to_value(d).unwrap_or_default(),
        Payload::Sps(v) => serde_json::to_value(v).unwrap_or_default(),
        Payload::Paths(v) => serde_json::to_value(v).unwrap_or_default(),
    };
    format!("{v}\n")
}

fn opt(s: &Option<String>) -> String {
    s.clone().unwrap_or_else(|| "-".into())
}

fn sp_rows(sps: &[SpView]) -> String {
    if sps.is_empty() {
        return "no peers: this tierblkd runs alone (start it with --sp to join peers)\n".into();
    }
    let rows: Vec<Vec<String>> = sps
        .iter()
        .map(|s| {
            vec![
                s.name.clone(),
                s.role.clone(),
                s.generation.to_string(),
                s.state.clone(),
                s.alus.len().to_string(),
                s.endpoints.join(","),
                opt(&s.error),
            ]
        })
        .collect();
    render(
        &["SP", "ROLE", "GEN", "STATE", "ALUS", "ENDPOINTS", "ERROR"],
        &rows,
    )
}

fn path_rows(paths: &[PathView]) -> String {
    let rows: Vec<Vec<String>> = paths
        .iter()
        .map(|p| {
            vec![
                p.sp.clone(),
                p.export.clone(),
                p.priority.to_string(),
                p.endpoint.clone(),
                p.state.clone(),
                p.active.to_string(),
                p.connects.to_string(),
                p.failures.to_string(),
                opt(&p.last_error),
            ]
        })
        .collect();
    render(
        &[
            "SP",
            "EXPORT",
            "PRIO",
            "ENDPOINT",
            "STATE",
            "ACTIVE",
            "CONNECTS",
            "FAILURES",
            "LAST ERROR",
        ],
        &rows,
    )
}

fn alu_rows(alus: &[AluView]) -> String {
    let with_sp = alus.iter().any(|a| a.sp.is_some());
    let rows: Vec<Vec<String>> = alus
        .iter()
        .map(|a| {
            let mut row = alu_row(a);
            if with_sp {
                row.insert(0, opt(&a.sp));
            }
            row
        })
        .collect();
    let mut head = vec![
        "PATH", "STATE", "SIZE", "FREE", "PARTS", "BOOT", "UUID", "DETAIL",
    ];
    if with_sp {
        head.insert(0, "SP");
    }
    render(&head, &rows)
}

fn alu_row(a: &AluView) -> Vec<String> {
    vec![
        a.path.clone(),
        a.state.clone(),
        format_size(a.size),
        a.free.map(format_size).unwrap_or_else(|| "-".into()),
        a.partitions.len().to_string(),
        if a.boot_member {
            "yes".into()
        } else {
            "-".into()
        },
        opt(&a.uuid),
        opt(&a.detail),
    ]
}

fn vol_rows(vols: &[VolumeView]) -> String {
    let rows: Vec<Vec<String>> = vols
        .iter()
        .map(|v| {
            vec![
                v.name.clone(),
                format_size(v.size),
                v.layout.clone(),
                v.state.clone(),
                opt(&v.device),
                opt(&v.problem),
            ]
        })
        .collect();
    render(
        &["NAME", "SIZE", "LAYOUT", "STATE", "DEVICE", "PROBLEM"],
        &rows,
    )
}

fn snap_rows(snaps: &[SnapView]) -> String {
    let rows: Vec<Vec<String>> = snaps
        .iter()
        .map(|s| {
            let pct = (s.used * 100).checked_div(s.capacity).unwrap_or(0);
            vec![
                s.name.clone(),
                s.origin.clone(),
                format_size(s.size),
                format_size(s.cow_size),
                format_size(u64::from(s.chunk)),
                format!("{pct}%"),
                s.state.clone(),
                opt(&s.device),
                opt(&s.problem),
            ]
        })
        .collect();
    render(
        &[
            "NAME", "ORIGIN", "SIZE", "COW", "CHUNK", "USED", "STATE", "DEVICE", "PROBLEM",
        ],
        &rows,
    )
}

fn schedule_rows(s: &[ScheduleView]) -> String {
    let t = now();
    let last = |l: u64| match l {
        0 => "-".to_string(),
        l => format!("{}s ago", t.saturating_sub(l)),
    };
    let next = |n: u64| match n {
        n if n <= t => "due".to_string(),
        n => format!("in {}s", n - t),
    };
    let rows: Vec<Vec<String>> = s
        .iter()
        .map(|s| {
            vec![
                s.volume.clone(),
                format!("{}s", s.every),
                s.keep.to_string(),
                if s.size == 0 {
                    "default".into()
                } else {
                    format_size(s.size)
                },
                last(s.last),
                next(s.next),
                s.snapshots.len().to_string(),
            ]
        })
        .collect();
    render(
        &["VOLUME", "EVERY", "KEEP", "SIZE", "LAST", "NEXT", "TAKEN"],
        &rows,
    )
}

fn stats_rows(stats: &[StatsView]) -> String {
    let us = |v: Option<u64>| v.map_or_else(|| "-".into(), |u| format!("<{u}us"));
    let rows: Vec<Vec<String>> = stats
        .iter()
        .flat_map(|s| {
            s.ops.iter().filter(|o| o.count > 0).map(|o| {
                vec![
                    s.volume.clone(),
                    o.op.clone(),
                    o.count.to_string(),
                    format_size(o.bytes),
                    o.errors.to_string(),
                    us(o.p50_us),
                    us(o.p99_us),
                ]
            })
        })
        .collect();
    let ops = render(
        &["VOLUME", "OP", "REQUESTS", "BYTES", "ERRORS", "P50", "P99"],
        &rows,
    );
    let bufs: Vec<Vec<String>> = stats
        .iter()
        .map(|s| {
            vec![
                s.volume.clone(),
                format_size(s.buffer_bytes),
                format_size(s.buffer_resident),
            ]
        })
        .collect();
    format!(
        "{ops}\n{}",
        render(&["VOLUME", "I/O BUFFERS", "RESIDENT"], &bufs)
    )
}

fn job_rows(jobs: &[JobView]) -> String {
    let rows: Vec<Vec<String>> = jobs
        .iter()
        .map(|j| {
            let pct = (j.done.min(j.total) * 100)
                .checked_div(j.total)
                .unwrap_or(100);
            vec![
                j.id.to_string(),
                j.kind.clone(),
                j.volume.clone(),
                j.member
                    .map(|m| m.to_string())
                    .unwrap_or_else(|| "-".into()),
                j.state.clone(),
                format!("{pct}%"),
                format!("{}/{}", format_size(j.done), format_size(j.total)),
                j.mismatches.to_string(),
                opt(&j.message),
            ]
        })
        .collect();
    render(
        &[
            "ID",
            "KIND",
            "VOLUME",
            "MEMBER",
            "STATE",
            "PROGRESS",
            "DONE",
            "MISMATCHES",
            "MESSAGE",
        ],
        &rows,
    )
}

fn human(p: &Payload) -> String {
    match p {
        Payload::Jobs(j) => job_rows(j),
        Payload::Job(j) => job_rows(std::slice::from_ref(j)),
        Payload::Done(msg) => format!("{msg}\n"),
        Payload::Alus(a) => alu_rows(a),
        Payload::Alu(a) => {
            let mut s = alu_rows(std::slice::from_ref(a));
            if !a.partitions.is_empty() {
                let rows: Vec<Vec<String>> = a
                    .partitions
                    .iter()
                    .map(|p| vec![p.volume.clone(), p.start.to_string(), format_size(p.len)])
                    .collect();
                s.push('\n');
                s.push_str(&render(&["VOLUME", "START", "LENGTH"], &rows));
            }
            s
        }
        Payload::Snapshots(s) => snap_rows(s),
        Payload::Schedules(s) => schedule_rows(s),
        Payload::Stats(s) => stats_rows(s),
        Payload::Events(e) => e.iter().map(|e| tierblk::events::human(e) + "\n").collect(),
        Payload::MetaHistory(h) => history_rows(h),
        Payload::Sps(v) => sp_rows(v),
        Payload::Paths(v) => path_rows(v),
        Payload::MetaDump(d) => {
            format!("{}\n", serde_json::to_string_pretty(d).unwrap_or_default())
        }
        Payload::Snapshot(s) => snap_rows(std::slice::from_ref(s)),
        Payload::Volumes(v) => vol_rows(v),
        Payload::Volume(v) => {
            let mut s = vol_rows(std::slice::from_ref(v));
            let rows: Vec<Vec<String>> = v
                .segments
                .iter()
                .map(|g| {
                    let m = v.members.iter().find(|m| m.index == g.member);
                    vec![
                        g.member.to_string(),
                        m.map(|m| m.health.clone()).unwrap_or_default(),
                        opt(&g.path),
                        g.alu.clone(),
                        g.start.to_string(),
                        format_size(g.len),
                    ]
                })
                .collect();
            s.push('\n');
            s.push_str(&render(
                &["MEMBER", "HEALTH", "ALU", "UUID", "START", "LENGTH"],
                &rows,
            ));
            for m in v.members.iter().filter(|m| m.detail.is_some()) {
                s.push_str(&format!("member {}: {}\n", m.index, opt(&m.detail)));
            }
            if let Some(b) = &v.bitmap {
                s.push_str(&format!(
                    "write-intent bitmap: {} of {} regions of {} dirty{}\n",
                    b.dirty,
                    b.regions,
                    format_size(b.region_size),
                    if b.resync_pending {
                        " (resync pending)"
                    } else {
                        ""
                    }
                ));
            }
            s
        }
    }
}

/// `meta history`: SEQ, TIME (UTC), VOLUMES; then any archive problem.
fn history_rows(h: &MetaHistoryView) -> String {
    let rows: Vec<Vec<String>> = h
        .entries
        .iter()
        .map(|e| {
            vec![
                e.seq.to_string(),
                utc(e.time),
                if e.volumes.is_empty() {
                    "-".into()
                } else {
                    e.volumes.join(",")
                },
            ]
        })
        .collect();
    let mut s = render(&["SEQ", "TIME", "VOLUMES"], &rows);
    s.push_str(&format!("current: {}\n", h.current));
    for p in &h.problems {
        s.push_str(&format!("warning: {p}\n"));
    }
    s
}

/// `tierblk gen man|completions DIR`: print the paths written.
fn gen_docs(what: &str, dir: &std::path::Path) -> Result<(), String> {
    use clap::CommandFactory;
    let written = if what == "man" {
        tierblk::docgen::man_pages(Cli::command(), dir)
    } else {
        tierblk::docgen::completions(Cli::command(), dir)
    }
    .map_err(|e| format!("{}: {e}", dir.display()))?;
    for p in written {
        println!("{}", p.display());
    }
    Ok(())
}

/// `tierblk status`: four views from the daemon, assessed together.
fn status(cli: &Cli) -> Result<(), String> {
    let call = |r: Request| {
        client::call(&cli.socket, r, Duration::from_secs(30)).map_err(|e| e.to_string())
    };
    let (
        Payload::Alus(alus),
        Payload::Volumes(vols),
        Payload::Jobs(jobs),
        Payload::Snapshots(snaps),
    ) = (
        call(Request::AluList)?,
        call(Request::VolList)?,
        call(Request::JobList)?,
        call(Request::SnapList { volume: None })?,
    )
    else {
        return Err("unexpected reply from the daemon".into());
    };
    let s = tierblk::status::assess(alus, vols, jobs, snaps);
    if cli.json {
        println!("{}", serde_json::to_string(&s).map_err(|e| e.to_string())?);
    } else {
        print!("{}", tierblk::status::render_status(&s));
    }
    Ok(())
}

/// `tierblk events --follow`: print every event the daemon streams, until it
/// stops or we are interrupted.
fn follow_events(cli: &Cli) -> Result<(), String> {
    use std::io::{BufRead, BufReader, Write};
    let name = cli.socket.display().to_string();
    let mut stream = std::os::unix::net::UnixStream::connect(&cli.socket)
        .map_err(|e| format!("daemon not running? {name}: {e}"))?;
    let env = tierblk::proto::Envelope {
        version: tierblk::proto::PROTOCOL_VERSION,
        request: Request::Events { follow: true },
    };
    let mut line = serde_json::to_vec(&env).map_err(|e| e.to_string())?;
    line.push(b'\n');
    stream
        .write_all(&line)
        .map_err(|e| format!("{name}: {e}"))?;
    let out = std::io::stdout();
    for l in BufReader::new(stream).lines() {
        let l = l.map_err(|e| format!("{name}: {e}"))?;
        let text = if cli.json {
            l
        } else {
            match serde_json::from_str::<tierblk::events::EventView>(&l) {
                Ok(e) => tierblk::events::human(&e),
                Err(_) => return Err(format!("daemon: {l}")),
            }
        };
        let mut o = out.lock();
        if writeln!(o, "{text}").and_then(|_| o.flush()).is_err() {
            break;
        }
    }
    Ok(())
}
