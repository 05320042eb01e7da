//! Copies while other storage processors expose the volume (spec
//! [0109]–[0110], claims 14–18; issue 5): md-cluster's resync ranges over
//! the control channel.
//!
//! The master runs a volume's jobs that write its legs (a rebuild, a move's
//! copy, a crash resync, a repairing scrub). An SP that exposes the volume
//! too writes the same legs from its own tree, past the master's sync window:
//!
//! * its tree has the leg being copied as *rebuilding*, like the master's
//!   (written at every offset, never read: `Assignment::rebuilding`), so
//!   nothing it writes misses the new leg;
//! * before the job works on a span of a mirror's legs ([`FENCE_SPAN`]), the
//!   master sends it a [`ControlRequest::Fence`]: the SP moves its own
//!   mirror's sync window there ([`HeldWindow`]), its host writes to the span
//!   wait, and it answers once none of them is in flight. The job's read of
//!   the source and write of the target then cannot straddle one of the SP's
//!   writes (which would leave the older data on the target);
//! * the hold is a lease ([`LEASE`]): the SP lets it go by itself after it,
//!   so a master that died mid-copy does not stop its writes for good, and
//!   the job redoes a step that ended after half the lease
//!   ([`tierblk_stack::resync::PeerFence`]). [`ControlRequest::Unfence`]
//!   ends it when the job stops.
//!
//! An SP that cannot be held (unreachable, refusing) stops the job where it
//! is: it waits, running, and is started again at the next inventory round
//! (when the master has given the SP up, it is no longer a writer).
//!
//! [`FENCE_SPAN`]: tierblk_stack::resync::FENCE_SPAN

use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Instant;

use tierblk_stack::nbd::auth::Secret;
use tierblk_stack::nbd::NbdAddr;
use tierblk_stack::resync::PeerFence;
use tierblk_stack::HeldWindow;

use super::expose::{send_control, ControlRequest};
use super::*;

/// How long an SP holds a span without news from the master.
pub const LEASE: Duration = Duration::from_secs(10);

/// How long the master waits for an SP's answer to a fence request (its
/// writes in flight in the span must complete first).
const ANSWER_TIMEOUT: Duration = Duration::from_secs(8);

/// How long an SP waits for its writes in flight in a span to complete
/// before it answers that it cannot hold it.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(5);

/// The master's side: the SPs writing a volume, held off each span its job
/// works on.
pub struct Fencer {
    volume: String,
    master: String,
    generation: u64,
    peers: Vec<(String, Vec<NbdAddr>)>,
    secret: Option<Arc<Secret>>,
    mirror: AtomicUsize,
}

impl Fencer {
    /// Send `req` to every SP; the first refusal or unreachable SP fails it.
    fn send_all(&self, req: &ControlRequest) -> Result<(), String> {
        let body = serde_json::to_vec(req).map_err(|e| e.to_string())?;
        for (sp, paths) in &self.peers {
            send_control(sp, paths, self.secret.as_deref(), &body, ANSWER_TIMEOUT)?;
        }
        Ok(())
    }

    fn mirror(&self) -> u16 {
        self.mirror.load(Ordering::SeqCst) as u16
    }
}

impl PeerFence for Fencer {
    fn hold(&self, start: u64, len: u64) -> Result<Instant, String> {
        // The SPs' leases start when they get the request, after this.
        let asked = Instant::now();
        self.send_all(&ControlRequest::Fence {
            master: self.master.clone(),
            generation: self.generation,
            volume: self.volume.clone(),
            mirror: self.mirror(),
            start,
            len,
            lease_ms: LEASE.as_millis() as u64,
        })?;
        Ok(asked + LEASE / 2)
    }

    fn release(&self) {
        let req = ControlRequest::Unfence {
            master: self.master.clone(),
            generation: self.generation,
            volume: self.volume.clone(),
            mirror: self.mirror(),
        };
        if let Err(e) = self.send_all(&req) {
            // Its lease ends it anyway.
            debug!(volume = %self.volume, "cannot end the hold: {e}");
        }
    }
}

impl jobs::MirrorFence for Fencer {
    fn at_mirror(&self, mirror: usize) {
        self.mirror.store(mirror, Ordering::SeqCst);
    }
}

/// A span an SP holds for the master's job: the window on its own mirror.
pub struct Held {
    window: HeldWindow,
    start: u64,
    len: u64,
    until: Instant,
}

impl Daemon {
    /// Before a job writes `v`'s legs while the SPs `peers` write them too:
    /// each gets `v`'s current tree (the leg being copied rebuilding there
    /// too; unchanged, it answers at once), then the job's fence over them.
    /// `None` when no other SP writes.
    pub(super) fn fence_peers(
        &mut self,
        v: &VolumeDef,
        peers: &[String],
    ) -> Result<Option<Arc<Fencer>>, String> {
        if peers.is_empty() {
            return Ok(None);
        }
        self.assign_to(v, peers)?;
        self.fencer(v, peers).map(Some)
    }

    /// Send `v`'s current tree to every other SP writing it.
    pub(super) fn assign_writers(&mut self, v: &VolumeDef) -> Result<(), String> {
        let peers = self.writing_peers(v);
        self.assign_to(v, &peers)
    }

    fn assign_to(&mut self, v: &VolumeDef, peers: &[String]) -> Result<(), String> {
        for sp in peers {
            if let Err(e) = self.assign(v, sp) {
                // Sent again at its next heartbeat (`push_assignments`).
                if let Some(c) = self.cluster.as_mut() {
                    c.unassigned.insert(sp.clone());
                }
                return Err(format!("the volume's tree is not on sp {sp} yet: {e}"));
            }
        }
        Ok(())
    }

    /// Start the jobs that wait (an SP that could not be held, or that did
    /// not have the volume's tree yet), as the master, every inventory round.
    pub(super) fn retry_jobs(&mut self) {
        if self.cluster.is_some() && self.require_master().is_err() {
            return;
        }
        let online: Vec<String> = self
            .runtime
            .iter()
            .filter(|(n, r)| {
                matches!(r, Runtime::Online { .. } | Runtime::Remote { .. })
                    && !self.assigned.contains_key(*n)
            })
            .map(|(n, _)| n.clone())
            .collect();
        for name in online {
            if let Ok(v) = self.volume(&name) {
                self.start_jobs_of(&v);
            }
        }
    }

    /// The fence of `v`'s leg-writing job over the SPs `peers`.
    fn fencer(&self, v: &VolumeDef, peers: &[String]) -> Result<Arc<Fencer>, String> {
        let (master, generation) = self.me()?;
        let c = self.cluster.as_ref().ok_or("no peers")?;
        let peers = peers
            .iter()
            .map(|sp| {
                let paths = c
                    .paths_of(sp)
                    .ok_or_else(|| format!("sp {sp}: not a configured peer"))?;
                Ok((sp.clone(), paths.to_vec()))
            })
            .collect::<Result<Vec<_>, String>>()?;
        Ok(Arc::new(Fencer {
            volume: v.name.clone(),
            master,
            generation,
            peers,
            secret: c.sp.secret.clone(),
            mirror: AtomicUsize::new(0),
        }))
    }

    /// [`ControlRequest::Fence`] on an exposing SP: hold the span, then
    /// answer (from a thread of its own: the writes in flight complete on the
    /// queue threads, and the event loop must not wait for them).
    pub(super) fn fence_here(
        &mut self,
        req: ControlRequest,
        reply: mpsc::Sender<Result<String, String>>,
    ) {
        let held = self.hold_span(req);
        let (health, start, len) = match held {
            Ok(h) => h,
            Err(e) => {
                let _ = reply.send(Err(e));
                return;
            }
        };
        let spawned = std::thread::Builder::new()
            .name("fence".into())
            .spawn(move || {
                let t = Instant::now();
                while health.busy(start, len) {
                    if t.elapsed() > DRAIN_TIMEOUT {
                        let _ = reply.send(Err(format!(
                            "writes to [{start}, +{len}) still in flight after {DRAIN_TIMEOUT:?}"
                        )));
                        return;
                    }
                    std::thread::sleep(Duration::from_micros(100));
                }
                let _ = reply.send(Ok("held".into()));
            });
        if let Err(e) = spawned {
            error!("cannot start a fence thread: {e}");
        }
    }

    fn hold_span(&mut self, req: ControlRequest) -> Result<(Arc<MirrorHealth>, u64, u64), String> {
        let ControlRequest::Fence {
            master,
            generation,
            volume,
            mirror,
            start,
            len,
            lease_ms,
        } = req
        else {
            return Err("not a fence request".into());
        };
        self.check_master(&master, generation)?;
        let Some(Runtime::Online { health, .. }) = self.runtime.get(&volume) else {
            return Err(format!("volume {volume}: not online here"));
        };
        let h = health
            .get(usize::from(mirror))
            .ok_or_else(|| format!("volume {volume}: no mirror {mirror}"))?
            .clone();
        let key = (volume.clone(), mirror);
        let until = Instant::now() + Duration::from_millis(lease_ms).min(LEASE * 6);
        match self.fences.get_mut(&key) {
            Some(f) if Arc::ptr_eq(f.window.health(), &h) => {
                f.window.set(start, len);
                (f.start, f.len, f.until) = (start, len, until);
            }
            _ => {
                self.fences.remove(&key);
                let window = h.hold_window().ok_or_else(|| {
                    format!("volume {volume}: mirror {mirror}: a job holds its window here")
                })?;
                window.set(start, len);
                debug!(volume = %volume, mirror, start, len, "holding writes for the master's job");
                self.fences.insert(
                    key,
                    Held {
                        window,
                        start,
                        len,
                        until,
                    },
                );
            }
        }
        Ok((h, start, len))
    }

    /// [`ControlRequest::Unfence`]: the master's job stopped.
    pub(super) fn unfence_here(
        &mut self,
        master: &str,
        generation: u64,
        volume: &str,
        mirror: u16,
    ) -> Result<String, String> {
        self.check_master(master, generation)?;
        self.fences.remove(&(volume.to_string(), mirror));
        Ok("released".into())
    }

    /// Let go of holds whose lease ran out (their master died or lost the
    /// way here mid-job).
    pub(super) fn expire_fences(&mut self) {
        let now = Instant::now();
        self.fences.retain(|(volume, mirror), f| {
            let keep = f.until > now;
            if !keep {
                warn!(volume = %volume, mirror, "the master's hold on writes ran out: writing again");
            }
            keep
        });
    }

    /// After `name`'s tree was built again here (new mirror healths), the
    /// spans held on the old ones move to the new: the queued writes that
    /// enter the new tree must wait as those of the old did.
    pub(super) fn carry_fences(&mut self, name: &str) {
        let Some(Runtime::Online { health, .. }) = self.runtime.get(name) else {
            self.fences.retain(|(v, _), _| v != name);
            return;
        };
        let health = health.clone();
        let keys: Vec<(String, u16)> = self
            .fences
            .keys()
            .filter(|(v, _)| v == name)
            .cloned()
            .collect();
        for key in keys {
            let Some(h) = health.get(usize::from(key.1)) else {
                self.fences.remove(&key);
                continue;
            };
            if self
                .fences
                .get(&key)
                .is_some_and(|f| Arc::ptr_eq(f.window.health(), h))
            {
                continue;
            }
            let Some(old) = self.fences.remove(&key) else {
                continue;
            };
            match h.hold_window() {
                Some(window) => {
                    window.set(old.start, old.len);
                    self.fences.insert(key, Held { window, ..old });
                }
                None => {
                    error!(volume = %name, mirror = key.1, "cannot carry the master's hold to the new tree")
                }
            }
        }
    }
}
