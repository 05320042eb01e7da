//! The metadata archive in the daemon (`tierblk meta history|dump|restore`,
//! LVM's vgcfgbackup/vgcfgrestore): every boot set commit keeps the
//! configuration it replaced in the archive ring of the boot set members
//! (`Store::history`); a restore brings archived volume definitions back as a
//! new commit (`Store::restore`), refused while a volume it changes or drops is
//! online.

use super::*;
use crate::proto::{ArchiveView, MetaAluView, MetaDumpView, MetaHistoryView};
use tierblk_meta::ArchiveRecord;

impl Daemon {
    pub(super) fn meta_history(&mut self) -> Result<Payload, String> {
        let current = self
            .store
            .image()
            .map(|i| i.seq)
            .ok_or_else(|| "metadata history: no cluster".to_string())?;
        let entries = self
            .store
            .history()
            .into_iter()
            .map(|e| ArchiveView {
                seq: e.seq,
                time: e.time,
                volumes: e.volumes,
                alus: e.alus,
                copies: e.copies,
            })
            .collect();
        Ok(Payload::MetaHistory(MetaHistoryView {
            current,
            entries,
            problems: self.store.archive_problems(),
        }))
    }

    pub(super) fn meta_dump(&mut self, seq: Option<u64>) -> Result<Payload, String> {
        let img = self
            .store
            .image()
            .cloned()
            .ok_or_else(|| "metadata dump: no cluster".to_string())?;
        let view = match seq {
            Some(q) if q != img.seq => {
                let rec = self.store.archived(q).ok_or_else(|| {
                    format!("metadata dump: configuration {q} is not in the archive (`tierblk meta history` lists it)")
                })?;
                self.archived_view(&rec)
            }
            _ => MetaDumpView {
                cluster: img.sig.name.clone(),
                cluster_uuid: img.sig.uuid.to_string(),
                seq: img.seq,
                archived: None,
                next_id: img.next_id,
                alus: img
                    .alus
                    .iter()
                    .map(|a| self.meta_alu(a, img.failed_alus.contains(&a.uuid)))
                    .collect(),
                volumes: img.volumes.iter().map(|v| self.volume_view(v)).collect(),
                jobs: img.jobs.len(),
                schedules: img.schedules.len(),
                legacy: img.legacy.iter().map(|l| l.name.clone()).collect(),
            },
        };
        Ok(Payload::MetaDump(Box::new(view)))
    }

    fn meta_alu(&self, a: &tierblk_meta::AluRecord, failed: bool) -> MetaAluView {
        MetaAluView {
            uuid: a.uuid.to_string(),
            wwn: hex(&a.wwn),
            size: a.size,
            data_start: a.data_start,
            data_end: a.data_end,
            boot_member: a.boot_member,
            failed,
            path: self.store.path_of(a.uuid).map(str::to_string),
        }
    }

    fn archived_view(&self, rec: &ArchiveRecord) -> MetaDumpView {
        let l = &rec.list;
        let volumes = l
            .volumes
            .iter()
            .map(|bv| {
                let def = rec.volumes.iter().find(|v| v.id == bv.id);
                let v = VolumeDef {
                    id: bv.id,
                    name: bv.name.clone(),
                    size: bv.size,
                    wwn: bv.wwn,
                    segments: def.map(|d| d.segments.clone()).unwrap_or_default(),
                    layout: bv.layout,
                    members: bv.health.clone(),
                    snapshot: def.and_then(|d| d.snapshot),
                    wi_slots: def.map(|d| d.wi_slots.clone()).unwrap_or_default(),
                    moving: def.and_then(|d| d.moving),
                };
                let mut view = self.volume_view(&v);
                view.state = "archived".into();
                view.device = None;
                view.bitmap = None;
                view.problem = def
                    .is_none()
                    .then(|| "definition not archived (unavailable then)".into());
                view.origin = v.snapshot.and_then(|sn| {
                    l.volumes
                        .iter()
                        .find(|o| o.id == sn.origin)
                        .map(|o| o.name.clone())
                });
                // Health as archived, not as the store sees the name now.
                for (m, mv) in view.members.iter_mut().enumerate() {
                    mv.detail = None;
                    (mv.health, mv.fail_seq) = match bv.health.get(m) {
                        Some(MemberHealth::Failed { fail_seq }) => {
                            ("failed".into(), Some(*fail_seq))
                        }
                        Some(MemberHealth::Rebuilding { .. }) => ("rebuilding".into(), None),
                        _ => ("ok".into(), None),
                    };
                }
                view
            })
            .collect();
        MetaDumpView {
            cluster: l.sig.name.clone(),
            cluster_uuid: l.sig.uuid.to_string(),
            seq: l.seq,
            archived: Some(rec.time),
            next_id: l.next_id,
            alus: l
                .alus
                .iter()
                .map(|a| self.meta_alu(a, l.failed.iter().any(|(u, _)| *u == a.uuid)))
                .collect(),
            volumes,
            jobs: l.jobs.len(),
            schedules: l.schedules.len(),
            legacy: l.legacy.iter().map(|x| x.name.clone()).collect(),
        }
    }

    /// Restore archived configuration `seq`: refused while a volume it changes
    /// or drops (or the origin of a snapshot it brings back) is online; the
    /// restored volumes are brought online afterwards.
    pub(super) fn meta_restore(&mut self, seq: u64, force: bool) -> Result<Payload, String> {
        let plan = self
            .store
            .restore_plan(seq, force)
            .map_err(|e| e.to_string())?;
        let snaps: Vec<VolumeDef> = self
            .store
            .archived(seq)
            .map(|r| r.volumes)
            .unwrap_or_default()
            .into_iter()
            .filter(|v| v.snapshot.is_some() && plan.restored.contains(&v.name))
            .collect();
        let mut affected: Vec<String> =
            plan.restored.iter().chain(&plan.dropped).cloned().collect();
        for s in &snaps {
            if let Some(o) = s.snapshot.and_then(|sn| self.volume_by_id(sn.origin)) {
                affected.push(o.name);
            }
        }
        let mut online: Vec<String> = affected
            .into_iter()
            .filter(|n| self.job_tree(n).is_some())
            .collect();
        online.dedup();
        if !online.is_empty() {
            return Err(format!(
                "metadata restore of configuration {seq} refused: volume(s) {} online (here or on another SP): take them offline first (`tierblk vol offline NAME`; `vol unexpose NAME --on SP`)",
                online.join(", ")
            ));
        }
        if plan.restored.is_empty() && plan.dropped.is_empty() {
            return Ok(Payload::Done(format!(
                "configuration {seq}: nothing to restore (every volume is as archived)"
            )));
        }
        let done = self.store.restore(seq, force).map_err(|e| e.to_string())?;
        for n in &done.dropped {
            self.runtime.remove(n);
        }
        for n in &done.restored {
            let reason = snaps.iter().any(|s| s.name == *n).then(|| {
                "restored snapshot: its store was invalidated when it was removed; remove it"
                    .to_string()
            });
            let snapshot = reason.is_some();
            self.runtime.insert(n.clone(), Runtime::Offline { reason });
            if !snapshot {
                if let Err(e) = self.online(n) {
                    warn!("{e}");
                }
            }
        }
        info!(seq, restored = ?done.restored, dropped = ?done.dropped, "metadata restored");
        let list = |v: &[String]| {
            if v.is_empty() {
                "-".to_string()
            } else {
                v.join(", ")
            }
        };
        Ok(Payload::Done(format!(
            "configuration {seq} restored: volumes back: {}; dropped: {}",
            list(&done.restored),
            list(&done.dropped)
        )))
    }
}
