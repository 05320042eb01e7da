//! `tierblk status`: the whole system on one screen, as `zpool status` shows
//! a pool: the cluster, its overall state, what to do about anything that is
//! not well, then the volumes with their members, the ALUs, the jobs and the
//! snapshots.
//!
//! Assessment is a pure function of the daemon's views (the same objects
//! `--json` prints for `alu list`, `vol list`, `job list`, `snap list`), so it
//! is unit-tested here without a daemon.

use crate::proto::{AluView, JobView, SnapView, VolumeView};
use crate::size::format_size;
use crate::table::render;
use serde::Serialize;

/// Overall state, worst first.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Overall {
    /// A volume is offline with a problem (its data cannot be reached).
    Faulted,
    /// Everything is reachable, but with less redundancy than asked for, or a
    /// device is in trouble.
    Degraded,
    /// All is well.
    Online,
}

/// What `tierblk status` shows.
#[derive(Clone, Debug, Serialize)]
pub struct Status {
    pub cluster: Option<String>,
    pub state: Overall,
    /// One line per thing to look at, with the command that deals with it.
    pub actions: Vec<String>,
    pub volumes: Vec<VolumeView>,
    pub alus: Vec<AluView>,
    /// Running, paused and failed jobs (done ones are history: `job list`).
    pub jobs: Vec<JobView>,
    pub snapshots: Vec<SnapView>,
}

fn pct(done: u64, total: u64) -> u64 {
    (done.min(total) * 100).checked_div(total).unwrap_or(100)
}

/// Assess the views.
pub fn assess(
    alus: Vec<AluView>,
    volumes: Vec<VolumeView>,
    jobs: Vec<JobView>,
    snapshots: Vec<SnapView>,
) -> Status {
    let mut state = Overall::Online;
    let mut actions = Vec::new();
    let cluster = alus.iter().find_map(|a| a.cluster.clone());
    for a in &alus {
        let p = &a.path;
        match a.state.as_str() {
            "damaged" if a.detail.as_deref().is_some_and(|d| d.contains("failed")) => {
                state = state.min(Overall::Degraded);
                actions.push(format!(
                    "alu {p} is failed: if it came back with its data, `tierblk alu readd {p}`; \
                     else claim a new ALU and `tierblk alu replace {p} NEW --wait`"
                ));
            }
            "damaged" | "unreadable" | "missing" => {
                state = state.min(Overall::Degraded);
                actions.push(format!(
                    "alu {p} is {}: {}",
                    a.state,
                    a.detail.as_deref().unwrap_or("check the device")
                ));
            }
            _ => {}
        }
    }
    let jobs: Vec<JobView> = jobs.into_iter().filter(|j| j.state != "done").collect();
    for v in &volumes {
        let job = jobs
            .iter()
            .find(|j| j.volume == v.name && j.state == "running");
        match (v.state.as_str(), &v.problem) {
            ("degraded", _) => {
                state = state.min(Overall::Degraded);
                let failed: Vec<String> = v
                    .members
                    .iter()
                    .filter(|m| m.health == "failed")
                    .map(|m| m.index.to_string())
                    .collect();
                actions.push(match job {
                    Some(j) => format!(
                        "volume {} is degraded: {} job {} at {}%",
                        v.name,
                        j.kind,
                        j.id,
                        pct(j.done, j.total)
                    ),
                    None => format!(
                        "volume {} is degraded (failed member {}): replace or re-add the failed ALU",
                        v.name,
                        if failed.is_empty() {
                            "?".into()
                        } else {
                            failed.join(", ")
                        }
                    ),
                });
            }
            ("offline", Some(p)) => {
                state = state.min(Overall::Faulted);
                actions.push(format!("volume {} is offline: {p}", v.name));
            }
            ("quiesced", _) => actions.push(format!(
                "volume {} is quiesced: its I/O waits until `tierblk vol resume {}`",
                v.name, v.name
            )),
            _ => {}
        }
    }
    for j in jobs.iter().filter(|j| j.state == "failed") {
        state = state.min(Overall::Degraded);
        actions.push(format!(
            "job {} ({} of {}) failed: {}",
            j.id,
            j.kind,
            j.volume,
            j.message.as_deref().unwrap_or("see the daemon's log")
        ));
    }
    for j in jobs.iter().filter(|j| j.state == "paused") {
        actions.push(format!(
            "job {} ({} of {}) is paused at {}%: `tierblk job resume {}`",
            j.id,
            j.kind,
            j.volume,
            pct(j.done, j.total),
            j.id
        ));
    }
    for s in &snapshots {
        match s.state.as_str() {
            "invalid" => {
                state = state.min(Overall::Degraded);
                actions.push(format!(
                    "snapshot {} is invalid{}: `tierblk snap remove {}`",
                    s.name,
                    s.problem
                        .as_deref()
                        .map(|p| format!(" ({p})"))
                        .unwrap_or_default(),
                    s.name
                ));
            }
            "unavailable" => {
                state = state.min(Overall::Degraded);
                actions.push(format!(
                    "snapshot {} is unavailable: {}",
                    s.name,
                    s.problem.as_deref().unwrap_or("its store cannot be read")
                ));
            }
            _ if s.capacity > 0 && s.used * 10 >= s.capacity * 9 => {
                actions.push(format!(
                    "snapshot {} is {}% full: it becomes invalid when full",
                    s.name,
                    pct(s.used, s.capacity)
                ));
            }
            _ => {}
        }
    }
    Status {
        cluster,
        state,
        actions,
        volumes,
        alus,
        jobs,
        snapshots,
    }
}

/// The human screen.
pub fn render_status(s: &Status) -> String {
    let mut out = String::new();
    let state = match s.state {
        Overall::Online => "ONLINE",
        Overall::Degraded => "DEGRADED",
        Overall::Faulted => "FAULTED",
    };
    out.push_str(&format!(
        "cluster: {}\n  state: {state}\n",
        s.cluster.as_deref().unwrap_or("(none: claim an ALU)")
    ));
    for (i, a) in s.actions.iter().enumerate() {
        out.push_str(if i == 0 { " action: " } else { "         " });
        out.push_str(a);
        out.push('\n');
    }
    if s.actions.is_empty() {
        out.push_str(" action: none\n");
    }
    out.push('\n');
    let mut rows = Vec::new();
    for v in &s.volumes {
        rows.push(vec![
            v.name.clone(),
            v.layout.clone(),
            format_size(v.size),
            v.state.clone(),
            v.device.clone().unwrap_or_else(|| "-".into()),
            v.bitmap
                .as_ref()
                .map(|b| format!("{}/{} dirty", b.dirty, b.regions))
                .unwrap_or_else(|| "-".into()),
        ]);
        for m in v.members.iter().filter(|m| m.health != "ok") {
            rows.push(vec![
                format!("  member {}", m.index),
                String::new(),
                String::new(),
                m.health.clone(),
                String::new(),
                m.detail.clone().unwrap_or_default(),
            ]);
        }
    }
    if rows.is_empty() {
        out.push_str("no volumes\n");
    } else {
        out.push_str(&render(
            &["VOLUME", "LAYOUT", "SIZE", "STATE", "DEVICE", "BITMAP"],
            &rows,
        ));
    }
    out.push('\n');
    let rows: Vec<Vec<String>> = s
        .alus
        .iter()
        .map(|a| {
            vec![
                a.path.clone(),
                a.state.clone(),
                format_size(a.size),
                a.free.map(format_size).unwrap_or_else(|| "-".into()),
                if a.boot_member { "yes" } else { "-" }.into(),
            ]
        })
        .collect();
    out.push_str(&render(&["ALU", "STATE", "SIZE", "FREE", "BOOT"], &rows));
    if !s.jobs.is_empty() {
        out.push('\n');
        let rows: Vec<Vec<String>> = s
            .jobs
            .iter()
            .map(|j| {
                vec![
                    j.id.to_string(),
                    j.kind.clone(),
                    j.volume.clone(),
                    j.state.clone(),
                    format!("{}%", pct(j.done, j.total)),
                ]
            })
            .collect();
        out.push_str(&render(
            &["JOB", "KIND", "VOLUME", "STATE", "PROGRESS"],
            &rows,
        ));
    }
    if !s.snapshots.is_empty() {
        out.push('\n');
        let rows: Vec<Vec<String>> = s
            .snapshots
            .iter()
            .map(|n| {
                vec![
                    n.name.clone(),
                    n.origin.clone(),
                    n.state.clone(),
                    format!("{}%", pct(n.used, n.capacity)),
                    n.device.clone().unwrap_or_else(|| "-".into()),
                ]
            })
            .collect();
        out.push_str(&render(
            &["SNAPSHOT", "ORIGIN", "STATE", "USED", "DEVICE"],
            &rows,
        ));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::MemberView;

    fn alu(path: &str, state: &str, detail: Option<&str>) -> AluView {
        AluView {
            sp: None,
            path: path.into(),
            state: state.into(),
            size: 1 << 30,
            uuid: None,
            cluster: Some("lab".into()),
            detail: detail.map(str::to_string),
            boot_member: true,
            free: Some(1 << 29),
            partitions: Vec::new(),
        }
    }

    fn vol(name: &str, state: &str, problem: Option<&str>, failed: &[u16]) -> VolumeView {
        VolumeView {
            exposed_on: Vec::new(),
            name: name.into(),
            id: 1,
            size: 1 << 28,
            layout: "mirror".into(),
            stripes: 1,
            copies: 2,
            chunk: 0,
            state: state.into(),
            device: None,
            wwn: String::new(),
            problem: problem.map(str::to_string),
            origin: None,
            bitmap: None,
            members: (0..2)
                .map(|i| MemberView {
                    index: i,
                    health: if failed.contains(&i) { "failed" } else { "ok" }.into(),
                    detail: None,
                    fail_seq: None,
                })
                .collect(),
            segments: Vec::new(),
        }
    }

    fn job(id: u64, kind: &str, volume: &str, state: &str) -> JobView {
        JobView {
            id,
            kind: kind.into(),
            volume: volume.into(),
            member: None,
            state: state.into(),
            done: 50,
            total: 100,
            mismatches: 0,
            repaired: 0,
            message: Some("boom".into()),
        }
    }

    #[test]
    fn all_well_is_online_with_no_action() {
        let s = assess(
            vec![alu("/dev/vda", "owned", None)],
            vec![vol("v1", "online", None, &[])],
            vec![job(1, "scrub", "v1", "done")],
            vec![],
        );
        assert_eq!(s.state, Overall::Online);
        assert!(s.actions.is_empty());
        assert!(s.jobs.is_empty(), "done jobs are history");
        let t = render_status(&s);
        assert!(
            t.contains("state: ONLINE") && t.contains("action: none"),
            "{t}"
        );
        assert!(t.contains("cluster: lab"), "{t}");
    }

    #[test]
    fn a_failed_alu_and_a_degraded_volume_say_what_to_do() {
        let s = assess(
            vec![
                alu("/dev/vda", "owned", None),
                alu("/dev/vdb", "damaged", Some("failed by administrator")),
            ],
            vec![vol("m1", "degraded", None, &[1])],
            vec![],
            vec![],
        );
        assert_eq!(s.state, Overall::Degraded);
        assert!(
            s.actions[0].contains("tierblk alu readd /dev/vdb"),
            "{:?}",
            s.actions
        );
        assert!(s.actions[1].contains("failed member 1"), "{:?}", s.actions);
        let t = render_status(&s);
        assert!(t.contains("DEGRADED") && t.contains("  member 1"), "{t}");
    }

    #[test]
    fn a_rebuild_in_progress_is_shown_instead_of_advice() {
        let s = assess(
            vec![alu("/dev/vda", "owned", None)],
            vec![vol("m1", "degraded", None, &[1])],
            vec![job(7, "rebuild", "m1", "running")],
            vec![],
        );
        assert_eq!(
            s.actions,
            vec!["volume m1 is degraded: rebuild job 7 at 50%"]
        );
        assert!(render_status(&s).contains("JOB"));
    }

    #[test]
    fn an_offline_volume_with_a_problem_is_faulted() {
        let s = assess(
            vec![alu("/dev/vda", "missing", None)],
            vec![vol("v1", "offline", Some("alu /dev/vda missing"), &[])],
            vec![
                job(3, "scrub", "v1", "failed"),
                job(4, "scrub", "v1", "paused"),
            ],
            vec![],
        );
        assert_eq!(s.state, Overall::Faulted);
        assert!(s.actions.iter().any(|a| a.contains("volume v1 is offline")));
        assert!(s
            .actions
            .iter()
            .any(|a| a.contains("job 3") && a.contains("boom")));
        assert!(s.actions.iter().any(|a| a.contains("tierblk job resume 4")));
        // An administrator's offline (no problem) is not a fault.
        let s = assess(
            vec![],
            vec![vol("v1", "offline", None, &[])],
            vec![],
            vec![],
        );
        assert_eq!(s.state, Overall::Online);
        // A quiesced volume is a reminder, not a fault.
        let s = assess(
            vec![],
            vec![vol("v1", "quiesced", None, &[])],
            vec![],
            vec![],
        );
        assert_eq!(s.state, Overall::Online);
        assert!(
            s.actions[0].contains("tierblk vol resume v1"),
            "{:?}",
            s.actions
        );
    }

    #[test]
    fn snapshots_invalid_or_nearly_full_are_reported() {
        let snap = |name: &str, state: &str, used: u64| SnapView {
            name: name.into(),
            origin: "v1".into(),
            size: 100,
            cow_size: 100,
            chunk: 65536,
            used,
            capacity: 100,
            state: state.into(),
            device: None,
            problem: None,
        };
        let s = assess(
            vec![],
            vec![],
            vec![],
            vec![
                snap("s1", "invalid", 0),
                snap("s2", "valid", 95),
                snap("s3", "valid", 10),
            ],
        );
        assert_eq!(s.state, Overall::Degraded);
        assert_eq!(s.actions.len(), 2, "{:?}", s.actions);
        assert!(s.actions[0].contains("tierblk snap remove s1"));
        assert!(s.actions[1].contains("s2 is 95% full"));
    }
}
