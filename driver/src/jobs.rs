//! Long-running work on volumes: mirror rebuild onto a replaced leg and scrub
//! (spec [0168]–[0171]; MD's recovery, check and repair), and the rollback of
//! an offline origin to one of its snapshots (spec [0167]; LVM's merge).
//!
//! Each job runs on a thread of its own with its own io_uring and its own
//! instance of the volume's tree, sharing only the mirrors' health records
//! (and their resync window) with the ublk queue threads. Progress reaches
//! the daemon as events; the daemon persists it in the boot set's job table,
//! so a job resumes from its last checkpoint after a crash. A job stops
//! cleanly at its next step when cancelled (quiescence relies on this).

use crate::daemon::Event;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc;
use std::sync::Arc;
use std::thread::JoinHandle;
use tierblk_meta::{Job, JobKind, JobState};
use tierblk_stack::resync::{rebuild_leg, resync_dirty, scrub, JobControl, JobError, PeerFence};
use tierblk_stack::uring::LocalRing;
use tierblk_stack::volume::{build_volume, VolumeDesc};
use tierblk_stack::{rollback, RollbackError, SetEntry, Snapshot, SnapshotOrigin, SnapshotState};
use tracing::{info, info_span, warn};

/// Bytes copied or compared per step (the resync window).
pub const STEP: u64 = 1 << 20;
/// Progress is persisted at least this often.
pub const CHECKPOINT_EVERY: u64 = 32 << 20;
/// A rollback merges 64 KiB chunks scattered over the origin, typically far
/// fewer bytes than a rebuild copies: it checkpoints more often.
pub const ROLLBACK_CHECKPOINT_EVERY: u64 = 4 << 20;

/// The job of `volume` to run next among `jobs` (one runs at a time per
/// volume): a crash resync or a repairing scrub (what an unclean stop queues
/// for a mirror without bitmaps) first, then the oldest. After an unclean
/// stop the legs may differ where writes were in flight, below a rebuild's
/// or move's checkpoint too; both write the leg being copied below its
/// checkpoint as well, so the copy then resumes over legs that agree there.
/// Run after it, the copy would end (a move dropping its source) with the
/// target still holding what it had there.
pub fn next_job(jobs: &[Job], volume: u64) -> Option<&Job> {
    let repairs = |j: &Job| j.kind == JobKind::Resync || (j.kind == JobKind::Scrub && j.repair);
    jobs.iter()
        .filter(|j| j.volume == volume && j.state == JobState::Running)
        .min_by_key(|j| (!repairs(j), j.id))
}

/// Whether `job` writes mirror legs (a copy, a resync or a repair). A
/// mirror's sync window holds back the writes of this SP's tree only; a
/// peer's write landing between the job's read of a region and its write of
/// the same region to another leg would be lost on that leg, so such a job
/// holds the other SPs exposing the volume off each span it works on
/// (`daemon::fence`, md-cluster's resync ranges).
pub fn writes_legs(job: &Job) -> bool {
    match job.kind {
        JobKind::Rebuild | JobKind::Move | JobKind::Resync => true,
        JobKind::Scrub => job.repair,
        JobKind::Rollback => false,
    }
}

/// The job's kind as `job list` names it.
pub fn kind_name(job: &Job) -> &'static str {
    match (job.kind, job.repair) {
        (JobKind::Rebuild, _) => "rebuild",
        (JobKind::Move, _) => "move",
        (JobKind::Scrub, false) => "scrub",
        (JobKind::Scrub, true) => "scrub-repair",
        (JobKind::Rollback, _) => "rollback",
        (JobKind::Resync, _) => "resync",
    }
}

/// What a job does.
#[derive(Clone)]
pub enum Work {
    /// Copy leg `leg` of mirror `mirror` from the healthy legs: all of it,
    /// or (`dirty_only`, a leg that returned with its data) only the regions
    /// the mirror's write-intent bitmap marks.
    Rebuild {
        mirror: usize,
        leg: usize,
        dirty_only: bool,
    },
    /// Compare (and with `repair`, fix) every mirror of the volume.
    Scrub { repair: bool },
    /// Copy the dirty regions of every mirror's write-intent bitmap from the
    /// first healthy leg to the others (after an unclean stop).
    Resync,
    /// Merge a snapshot back into its origin (the job's volume tree is the
    /// origin's), keeping the origin's other snapshots intact.
    Rollback(Arc<RollbackWork>),
}

/// The snapshots a rollback works with.
pub struct RollbackWork {
    /// The snapshot rolled back to: its COW volume and state.
    pub cow: Arc<VolumeDesc>,
    pub state: Arc<SnapshotState>,
    /// The origin's other snapshots, which must keep their images.
    pub others: Vec<SetEntry<Arc<VolumeDesc>>>,
}

/// How a job ended.
#[derive(Debug)]
pub enum Outcome {
    Done {
        mismatches: u64,
        repaired: u64,
    },
    Stopped {
        checkpoint: u64,
        mismatches: u64,
        repaired: u64,
    },
    Failed {
        checkpoint: u64,
        message: String,
    },
    /// Stopped because another SP writing the legs could not be held: the
    /// job stays running and is started again later.
    Waiting {
        checkpoint: u64,
        mismatches: u64,
        repaired: u64,
        message: String,
    },
}

/// A running job, as the daemon holds it.
pub struct Runner {
    pub control: Arc<JobControl>,
    /// This run of the job (a job stopped and started again is a new run):
    /// its end event names it, so that the end of a run stopped by the
    /// daemon is never taken for the end of the run that replaced it.
    pub run: u64,
    /// Where the job started.
    start: u64,
    /// Offset of the mirror being worked on within the job's range (a scrub
    /// walks every mirror of a raid10 in turn).
    base: Arc<AtomicU64>,
    thread: Option<JoinHandle<()>>,
}

impl Runner {
    /// Ask the job to stop at its next step and wait for its thread.
    pub fn stop(mut self) -> u64 {
        self.control.cancel();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        self.done()
    }

    /// Bytes done so far, including what was done before this run.
    pub fn done(&self) -> u64 {
        (self.base.load(Ordering::SeqCst) + self.control.progress()).max(self.start)
    }

    pub fn finished(&self) -> bool {
        self.thread.as_ref().is_none_or(|t| t.is_finished())
    }
}

/// Everything a job thread needs.
pub struct Spec {
    pub id: u64,
    pub volume: String,
    pub desc: Arc<VolumeDesc>,
    pub work: Work,
    /// Bytes already done (persisted checkpoint).
    pub start: u64,
    /// Counters carried over from before the checkpoint (scrub).
    pub mismatches: u64,
    pub repaired: u64,
    /// Bytes per second, 0 = unlimited.
    pub rate: u64,
    /// Bytes per mirror leg: a scrub's checkpoint runs over every mirror in turn.
    pub leg_size: u64,
    /// The other SPs writing the volume's legs, held off each span the job
    /// works on (none: no other SP exposes the volume).
    pub fence: Option<Arc<dyn MirrorFence>>,
}

impl Spec {
    /// The job works on mirror `mirror` from now on: the spans its fence
    /// holds are of that mirror's legs.
    fn at_mirror(&self, mirror: usize) {
        if let Some(f) = &self.fence {
            f.at_mirror(mirror);
        }
    }
}

/// A [`PeerFence`] over every mirror of a volume: the job names the mirror it
/// works on before it holds spans of its legs.
pub trait MirrorFence: PeerFence {
    /// The spans held from now on are of mirror `mirror`'s legs.
    fn at_mirror(&self, mirror: usize);
}

pub fn spawn(spec: Spec, events: mpsc::Sender<Event>) -> std::io::Result<Runner> {
    static RUNS: AtomicU64 = AtomicU64::new(1);
    let id = spec.id;
    let run_id = RUNS.fetch_add(1, Ordering::Relaxed);
    let progress_events = events.clone();
    let base = Arc::new(AtomicU64::new(0));
    let b = base.clone();
    // The stack reports offsets within the mirror being worked on.
    let every = match spec.work {
        Work::Rollback(_) => ROLLBACK_CHECKPOINT_EVERY,
        _ => CHECKPOINT_EVERY,
    };
    let control = JobControl::new().with_checkpoint(
        every,
        Box::new(move |offset| {
            let _ = progress_events.send(Event::JobProgress {
                id,
                checkpoint: b.load(Ordering::SeqCst) + offset,
            });
        }),
    );
    let control = match &spec.fence {
        Some(f) => control.with_fence(f.clone()),
        None => control,
    };
    let control = Arc::new(control);
    control.set_rate_limit(spec.rate);
    let ctl = control.clone();
    let job_base = base.clone();
    let spec_start = spec.start;
    let thread = std::thread::Builder::new()
        .name(format!("job-{id}"))
        .spawn(move || {
            let span = info_span!("job", id, volume = %spec.volume);
            let _enter = span.enter();
            let outcome = run(&spec, &ctl, &job_base);
            info!(?outcome, "job ended");
            let _ = events.send(Event::JobEnded {
                id,
                run: run_id,
                outcome,
            });
        })?;
    Ok(Runner {
        control,
        run: run_id,
        start: spec_start,
        base,
        thread: Some(thread),
    })
}

fn run(spec: &Spec, ctl: &JobControl, base: &AtomicU64) -> Outcome {
    let ring = match LocalRing::new(64) {
        Ok(r) => r,
        Err(e) => {
            return Outcome::Failed {
                checkpoint: spec.start,
                message: format!("cannot set up io_uring: {e}"),
            }
        }
    };
    let vol = match build_volume(&spec.desc, ring.clone()) {
        Ok(v) => v,
        Err(e) => {
            return Outcome::Failed {
                checkpoint: spec.start,
                message: e.to_string(),
            }
        }
    };
    let mirrors = vol.mirrors();
    match &spec.work {
        Work::Rebuild {
            mirror,
            leg,
            dirty_only,
        } => {
            let (mirror, leg) = (*mirror, *leg);
            let Some(m) = mirrors.get(mirror) else {
                return Outcome::Failed {
                    checkpoint: spec.start,
                    message: format!("no mirror {mirror}"),
                };
            };
            spec.at_mirror(mirror);
            let bitmap = m.health().write_intent().is_some();
            let r = if *dirty_only && bitmap {
                ring.block_on(resync_dirty(m, Some(leg), STEP, ctl))
                    .map(|r| r.regions)
            } else {
                if *dirty_only {
                    warn!("no write-intent bitmap: rebuilding the whole leg");
                }
                ring.block_on(rebuild_leg(m, leg, STEP, ctl)).map(|_| 0)
            };
            match r {
                Ok(regions) => Outcome::Done {
                    mismatches: 0,
                    repaired: regions,
                },
                Err(e) => ended(spec, ctl, base, e, 0, 0),
            }
        }
        Work::Scrub { repair } => {
            let (mut mismatches, mut repaired) = (spec.mismatches, spec.repaired);
            let leg = spec.leg_size.max(1);
            let first = (spec.start / leg) as usize;
            for (i, m) in mirrors.iter().enumerate().skip(first) {
                let from = if i == first { spec.start % leg } else { 0 };
                base.store(i as u64 * leg, Ordering::SeqCst);
                spec.at_mirror(i);
                if m.legs().len() < 2 {
                    // A stripe's column while another column moves: nothing
                    // to compare.
                    continue;
                }
                match ring.block_on(scrub(m, from, STEP, *repair, ctl)) {
                    Ok(r) => {
                        mismatches += r.mismatches;
                        repaired += r.repaired;
                    }
                    Err(e) => return ended(spec, ctl, base, e, mismatches, repaired),
                }
            }
            if mismatches > 0 {
                warn!(mismatches, repaired, "scrub found mismatches");
            }
            Outcome::Done {
                mismatches,
                repaired,
            }
        }
        Work::Resync => {
            let mut regions = spec.repaired;
            let leg = spec.leg_size.max(1);
            let first = (spec.start / leg) as usize;
            for (i, m) in mirrors.iter().enumerate().skip(first) {
                spec.at_mirror(i);
                let Some(wi) = m.health().write_intent() else {
                    // No record of where writes were in flight (a mirror that
                    // ran without a bitmap: a leg on a peer's ALU): a
                    // repairing scrub of all of it, as for a volume made
                    // before bitmaps.
                    let from = if i == first { spec.start % leg } else { 0 };
                    base.store(i as u64 * leg, Ordering::SeqCst);
                    match ring.block_on(scrub(m, from, STEP, true, ctl)) {
                        Ok(r) => regions += r.repaired,
                        Err(e) => return ended(spec, ctl, base, e, 0, regions),
                    }
                    continue;
                };
                // Already in sync: nothing to do.
                if !wi.unsynced() {
                    continue;
                }
                base.store(i as u64 * leg, Ordering::SeqCst);
                match ring.block_on(resync_dirty(m, None, STEP, ctl)) {
                    Ok(r) => regions += r.regions,
                    Err(e) => return ended(spec, ctl, base, e, 0, regions),
                }
            }
            info!(regions, "dirty regions resynchronised");
            Outcome::Done {
                mismatches: 0,
                repaired: regions,
            }
        }
        Work::Rollback(w) => {
            let built = build_volume(&w.cow, ring.clone()).and_then(|cow| {
                let others = w
                    .others
                    .iter()
                    .map(|(_, d, st)| {
                        build_volume(d, ring.clone()).map(|v| Snapshot::new(v, st.clone()))
                    })
                    .collect::<Result<Vec<_>, _>>()?;
                Ok((cow, others))
            });
            let (cow, others) = match built {
                Ok(b) => b,
                Err(e) => {
                    return Outcome::Failed {
                        checkpoint: spec.start,
                        message: e.to_string(),
                    }
                }
            };
            // Writes to the origin still copy for its other snapshots.
            let target = SnapshotOrigin::new(vol, others);
            let snap = Snapshot::new(cow, w.state.clone());
            match ring.block_on(rollback(&target, &snap, ctl, spec.start)) {
                Ok(_) => Outcome::Done {
                    mismatches: 0,
                    repaired: 0,
                },
                Err(RollbackError::Cancelled { checkpoint }) => Outcome::Stopped {
                    checkpoint,
                    mismatches: 0,
                    repaired: 0,
                },
                Err(e) => Outcome::Failed {
                    checkpoint: ctl.progress().max(spec.start),
                    message: e.to_string(),
                },
            }
        }
    }
}

fn ended(
    spec: &Spec,
    ctl: &JobControl,
    base: &AtomicU64,
    e: JobError,
    mismatches: u64,
    repaired: u64,
) -> Outcome {
    let checkpoint = (base.load(Ordering::SeqCst) + ctl.progress()).max(spec.start);
    match e {
        JobError::Cancelled { .. } => Outcome::Stopped {
            checkpoint,
            mismatches,
            repaired,
        },
        JobError::Fence(why) => Outcome::Waiting {
            checkpoint,
            mismatches,
            repaired,
            message: why,
        },
        other => Outcome::Failed {
            checkpoint,
            message: other.to_string(),
        },
    }
}

/// The size of one leg of the volume's mirrors (0 when it has none).
pub fn leg_size(desc: &VolumeDesc) -> u64 {
    desc.members.first().map(|m| m.size()).unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn job(id: u64, kind: JobKind, volume: u64, state: JobState) -> Job {
        Job {
            kind,
            state,
            ..Job::leg_copy(id, volume, 1, None, 64 << 20)
        }
    }

    #[test]
    fn jobs_that_write_legs_are_the_copies_resyncs_and_repairs() {
        let mut j = job(1, JobKind::Scrub, 1, JobState::Running);
        assert!(!writes_legs(&j), "a checking scrub only reads");
        assert_eq!(kind_name(&j), "scrub");
        j.repair = true;
        assert!(writes_legs(&j));
        assert_eq!(kind_name(&j), "scrub-repair");
        for k in [JobKind::Rebuild, JobKind::Move, JobKind::Resync] {
            assert!(writes_legs(&job(1, k, 1, JobState::Running)), "{k:?}");
        }
        // A rollback writes the offline origin, not a mirror's legs apart.
        assert!(!writes_legs(&job(
            1,
            JobKind::Rollback,
            1,
            JobState::Running
        )));
    }

    #[test]
    fn a_crash_resync_or_repair_runs_before_the_copy_it_found_running() {
        let jobs = [
            job(3, JobKind::Move, 7, JobState::Running),
            job(4, JobKind::Resync, 9, JobState::Running),
            job(5, JobKind::Rebuild, 7, JobState::Running),
            job(6, JobKind::Resync, 7, JobState::Paused),
        ];
        // No running resync of volume 7: the oldest.
        assert_eq!(next_job(&jobs, 7).map(|j| j.id), Some(3));
        let mut jobs = jobs.to_vec();
        jobs[3].state = JobState::Running;
        assert_eq!(next_job(&jobs, 7).map(|j| j.id), Some(6));
        assert_eq!(next_job(&jobs, 9).map(|j| j.id), Some(4));
        assert_eq!(next_job(&jobs, 8), None);
        // A repairing scrub (a mirror without bitmaps) goes first too; a
        // checking one waits its turn.
        jobs[3].kind = JobKind::Scrub;
        assert_eq!(next_job(&jobs, 7).map(|j| j.id), Some(3));
        jobs[3].repair = true;
        assert_eq!(next_job(&jobs, 7).map(|j| j.id), Some(6));
    }
}
