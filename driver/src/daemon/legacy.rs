//! Legacy disks in the daemon ([058], [060]): a disk without our metadata
//! region, adopted as a direct-access volume. Nothing of ours is ever written
//! to it; its record lives in the boot set (`Store::adopt`), and each start
//! finds it again by identity and size (`Store::legacy_path`). The volume is
//! the whole disk, linear, exposed like any other (gate, statistics,
//! snapshot-free).

use super::*;
use tierblk_meta::LegacyVol;

impl Daemon {
    fn legacy_defs(&self) -> Vec<LegacyVol> {
        self.store
            .image()
            .map(|i| i.legacy.clone())
            .unwrap_or_default()
    }

    pub(super) fn is_legacy(&self, name: &str) -> bool {
        self.legacy_defs().iter().any(|l| l.name == name)
    }

    /// The legacy volume adopted from the device now at `path`, if any.
    pub(super) fn legacy_on_path(&self, path: &str) -> Option<String> {
        self.legacy_defs()
            .into_iter()
            .find(|l| self.store.legacy_path(&l.name).as_deref() == Ok(path))
            .map(|l| l.name)
    }

    fn legacy_view(&self, l: &LegacyVol) -> VolumeView {
        let path = self.store.legacy_path(&l.name);
        let (state, device, problem) = match self.runtime.get(&l.name) {
            Some(Runtime::Online { exposed, .. }) => ("online", Some(exposed.device()), None),
            Some(Runtime::Offline { reason }) => ("offline", None, reason.clone()),
            Some(Runtime::Remote { reason, .. }) => ("offline", None, Some(reason.clone())),
            None => ("offline", None, path.clone().err()),
        };
        VolumeView {
            exposed_on: Vec::new(),
            name: l.name.clone(),
            id: l.id,
            size: l.size,
            layout: "legacy".into(),
            stripes: 1,
            copies: 1,
            chunk: 0,
            state: state.into(),
            device,
            wwn: hex(&l.wwn),
            problem,
            origin: None,
            bitmap: None,
            members: Vec::new(),
            segments: vec![SegmentView {
                member: 0,
                alu: l.identity.clone(),
                path: path.ok(),
                start: 0,
                len: l.size,
            }],
        }
    }

    pub(super) fn legacy_views(&self) -> Vec<VolumeView> {
        self.legacy_defs()
            .iter()
            .map(|l| self.legacy_view(l))
            .collect()
    }

    pub(super) fn legacy_view_of(&self, name: &str) -> Option<VolumeView> {
        self.legacy_defs()
            .iter()
            .find(|l| l.name == name)
            .map(|l| self.legacy_view(l))
    }

    /// Expose legacy volume `name`: the whole disk, read and written only by
    /// the host through the volume.
    pub(super) fn online_legacy(&mut self, name: &str) -> Result<(), String> {
        if matches!(self.runtime.get(name), Some(Runtime::Online { .. })) {
            return Ok(());
        }
        let r = self.expose_legacy(name);
        self.record_online(name, r)
    }

    fn expose_legacy(&mut self, name: &str) -> Result<OnlineParts, String> {
        let l = self
            .legacy_defs()
            .into_iter()
            .find(|l| l.name == name)
            .ok_or_else(|| format!("volume {name}: not a legacy disk"))?;
        let path = self
            .store
            .legacy_path(name)
            .map_err(|e| format!("volume {name}: held offline: {e}"))?;
        let file = tierblk_stack::partition::open_alu(std::path::Path::new(&path))
            .map_err(|e| format!("volume {name}: {path}: cannot open: {e}"))?;
        let desc = Arc::new(VolumeDesc {
            layout: StackLayout::Linear,
            copies: 1,
            members: vec![MemberDesc {
                pieces: vec![Piece::local(file, 0, l.size)],
            }],
            health: Vec::new(),
            moving: None,
        });
        let top = TopDesc::Origin {
            desc: desc.clone(),
            snapshots: Snapshots::new(Vec::new()),
        };
        let (exposed, gate, slot) = self.expose_top(name, &l.wwn, top)?;
        Ok((exposed, desc, Vec::new(), gate, slot))
    }

    /// Bring every adopted legacy disk online (start-up).
    pub(super) fn legacy_online_all(&mut self) {
        for l in self.legacy_defs() {
            if let Err(e) = self.online_legacy(&l.name) {
                warn!("{e}");
            }
        }
    }

    pub(super) fn adopt(&mut self, path: &str, name: &str) -> Result<Payload, String> {
        if !self.store.alus().iter().any(|a| a.path == path) {
            let disk = open_disk(path)?;
            self.store
                .add_disk(path.to_string(), disk)
                .map_err(|e| e.to_string())?;
            self.missing.remove(path);
        }
        ensure_unused(path).map_err(|e| format!("alu {path}: {e}"))?;
        let l = self.store.adopt(path, name).map_err(|e| e.to_string())?;
        info!(alu = %path, volume = %name, identity = %l.identity, "adopted as a legacy volume");
        self.log.emit("alu-adopted", Some(name), path.to_string());
        if let Err(e) = self.online_legacy(name) {
            warn!("{e}");
        }
        self.legacy_view_of(name)
            .map(Payload::Volume)
            .ok_or_else(|| format!("volume {name}: not found"))
    }

    /// Forget a legacy volume: offline first; its disk keeps every byte.
    pub(super) fn forget(&mut self, name: &str) -> Result<Payload, String> {
        self.offline(name)?;
        self.store.forget_legacy(name).map_err(|e| e.to_string())?;
        self.runtime.remove(name);
        info!(volume = %name, "legacy volume forgotten; its disk is left as it is");
        Ok(Payload::Done(format!(
            "volume {name}: forgotten (the legacy disk is left as it is)"
        )))
    }
}
