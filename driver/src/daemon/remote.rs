//! The master's tree of a volume that only other storage processors expose
//! (spec [0109]–[0110], claims 14–18; issue 5).
//!
//! The master runs every job that copies or compares a volume's mirror legs
//! (a rebuild, a move's copy, a crash resync, a scrub), for all the SPs that
//! expose it: they hold no bitmap and run no jobs (`fence` holds their
//! writes off each span a job works on). A volume unexposed on the master
//! (`vol unexpose NAME --on` the master while another SP exposes it) keeps
//! a tree there all the same, [`Runtime::Remote`]: the mirror healths, the
//! bitmaps and the leg slots, and no device, so no host I/O. Its jobs run on
//! it as on an exposed volume's tree; its leg changes (a failure, a re-add,
//! a reshape) reach it as they reach an exposed one.
//!
//! Only a master builds one, for a volume with mirrors (nothing else has
//! jobs); a snapshot is never exposed elsewhere.

use super::*;

impl Daemon {
    /// The tree `name`'s jobs run on and its mirrors' health: the exposed
    /// volume's, or the master's tree of a volume only others expose.
    pub(super) fn job_tree(&self, name: &str) -> Option<(&Arc<VolumeDesc>, &[Arc<MirrorHealth>])> {
        match self.runtime.get(name) {
            Some(Runtime::Online { desc, health, .. })
            | Some(Runtime::Remote { desc, health, .. }) => Some((desc, health)),
            _ => None,
        }
    }

    /// `v` is exposed on other SPs only: (re)build its tree here without a
    /// device, or record it offline with why when it has none to keep. Its
    /// jobs stop first (they ran on the old tree); the caller starts them
    /// once the other SPs have the definition the tree was built from.
    /// `persist`: write every leg's bitmap copy first (a new definition: a
    /// new leg's copy holds nothing yet), as `reload` does.
    pub(super) fn hold_remote(&mut self, v: &VolumeDef, persist: bool) {
        self.stop_jobs_of(&v.name);
        let reason = format!("exposed on sp {}", self.exposed_on(v).join(", "));
        let runtime = if self.keeps_tree(v) {
            match self.remote_tree(v, persist) {
                Ok((desc, health)) => {
                    info!(volume = %v.name, "{reason}: its tree kept here for its jobs (no device)");
                    Runtime::Remote {
                        reason,
                        desc,
                        health,
                        gate: Gate::new(),
                    }
                }
                Err(e) => {
                    warn!(volume = %v.name, "{reason}: cannot build its tree for its jobs: {e}");
                    Runtime::Offline {
                        reason: Some(format!("{reason}; its jobs cannot run here: {e}")),
                    }
                }
            }
        } else {
            Runtime::Offline {
                reason: Some(reason),
            }
        };
        self.runtime.insert(v.name.clone(), runtime);
    }

    /// Whether this SP keeps a tree of `v` for its jobs when it does not
    /// expose it: as the master, for a volume with mirrors.
    pub(super) fn keeps_tree(&self, v: &VolumeDef) -> bool {
        v.mirror_count() > 0
            && v.snapshot.is_none()
            && !self.assigned.contains_key(&v.name)
            && self.require_master().is_ok()
    }

    fn remote_tree(
        &mut self,
        v: &VolumeDef,
        persist: bool,
    ) -> Result<(Arc<VolumeDesc>, Vec<Arc<MirrorHealth>>), String> {
        if let Some(p) = self.problem_of(&v.name) {
            return Err(p);
        }
        let (desc, health) = self.assemble(v)?;
        if persist {
            self.persist_intents(v, &health)?;
        }
        Ok((Arc::new(desc), health))
    }
}
