#![allow(dead_code)]

use tierblk_meta::disk::{Disk, MemDisk};
use tierblk_meta::store::{AluState, ClusterImage, Store, Uuid};
use tierblk_meta::testing::{Event, Recorder};

pub const MIB: u64 = 1 << 20;
pub const SIZE: u64 = 32 * MIB;
pub const CLUSTER: &str = "testclu";

pub fn path(i: usize) -> String {
    format!("/dev/vd{}", (b'a' + i as u8) as char)
}

pub fn open_mem(disks: Vec<MemDisk>, repair: bool) -> Store {
    let v: Vec<(String, Box<dyn Disk>)> = disks
        .into_iter()
        .enumerate()
        .map(|(i, d)| (path(i), Box::new(d) as Box<dyn Disk>))
        .collect();
    Store::open(v, Some(CLUSTER), repair).expect("open").0
}

pub fn open_rec(rec: &Recorder, n: usize, size: u64) -> Store {
    let v: Vec<(String, Box<dyn Disk>)> = (0..n)
        .map(|i| {
            (
                path(i),
                Box::new(rec.disk(i, MemDisk::new(size))) as Box<dyn Disk>,
            )
        })
        .collect();
    Store::open(v, Some(CLUSTER), true).expect("open").0
}

pub fn alu_uuid(st: &Store, i: usize) -> Uuid {
    match st.alus()[i].state {
        AluState::Owned { uuid } => uuid,
        ref s => panic!("alu {i} not owned: {s:?}"),
    }
}

/// Snapshot of the whole store state that must be exactly old or new after a crash.
pub fn image(st: &Store) -> Option<ClusterImage> {
    st.image().cloned()
}

pub fn write_count(log: &[Event]) -> usize {
    log.iter()
        .filter(|e| matches!(e, Event::Write { .. }))
        .count()
}

/// Invariants of a healthy store: no volume problems, free space + segments = data area.
pub fn check_healthy(st: &Store) {
    check_healthy_except(st, &[]);
}

/// [`check_healthy`], skipping the free-space and label checks on `skip` (failed ALUs).
///
/// Besides the free-space accounting: every segment of every committed definition is
/// allocated (same partition, owner, start and length) in its ALU's live label
/// directory — a partition the committed image references is never freed — and the
/// label entries of an ALU lie in its data area and never overlap (no extent is used
/// twice, even by uncommitted garbage).
pub fn check_healthy_except(st: &Store, skip: &[Uuid]) {
    assert!(
        st.volume_problems().is_empty(),
        "{:?}",
        st.volume_problems()
    );
    let Some(img) = st.image() else { return };
    check_allocated_except(st, skip);
    for a in img.alus.iter().filter(|a| !skip.contains(&a.uuid)) {
        let free = st.free_extents(a.uuid);
        let mut used: Vec<(u64, u64)> = img
            .volumes
            .iter()
            .flat_map(|v| v.segments.iter())
            .filter(|s| s.alu == a.uuid)
            .map(|s| (s.start, s.len))
            .collect();
        for f in &free {
            for &(s, l) in &used {
                assert!(
                    f.start + f.len <= s || s + l <= f.start,
                    "free overlaps segment"
                );
            }
        }
        used.sort();
        for w in used.windows(2) {
            assert!(w[0].0 + w[0].1 <= w[1].0, "segments overlap");
        }
        let total: u64 =
            free.iter().map(|f| f.len).sum::<u64>() + used.iter().map(|u| u.1).sum::<u64>();
        assert_eq!(
            total,
            a.data_end - a.data_start,
            "garbage allocation visible"
        );
    }
}

use tierblk_meta::testing::SharedDisk;

pub fn open_shared(disks: &[SharedDisk], repair: bool) -> (Store, tierblk_meta::store::OpenReport) {
    let v: Vec<(String, Box<dyn Disk>)> = disks
        .iter()
        .enumerate()
        .map(|(i, d)| (path(i), Box::new(d.clone()) as Box<dyn Disk>))
        .collect();
    Store::open(v, Some(CLUSTER), repair).expect("open")
}

pub fn share(disks: Vec<MemDisk>) -> Vec<SharedDisk> {
    disks.into_iter().map(SharedDisk::new).collect()
}

/// Claim every disk that is not owned yet.
pub fn claim_all(st: &mut Store) {
    for (i, a) in st.alus().iter().enumerate() {
        if matches!(a.state, AluState::NotOwned { .. } | AluState::Orphan { .. }) {
            st.claim(&path(i), CLUSTER, false)
                .unwrap_or_else(|e| panic!("claim {}: {e}", path(i)));
        }
    }
}

/// Every segment of every committed definition (on an ALU not in `skip`) has its
/// label entry on that ALU; label entries lie in the data area and do not overlap.
pub fn check_allocated_except(st: &Store, skip: &[Uuid]) {
    let Some(img) = st.image() else { return };
    for a in img.alus.iter().filter(|a| !skip.contains(&a.uuid)) {
        let Some(entries) = st.label_entries(a.uuid) else {
            panic!("alu {}: no live label directory", a.uuid)
        };
        for v in &img.volumes {
            for g in v.segments.iter().filter(|g| g.alu == a.uuid) {
                assert!(
                    entries.iter().any(|e| e.partition == g.partition_id
                        && e.owner == v.id
                        && e.start == g.start
                        && e.len == g.len),
                    "volume {}: segment {g:?} of the committed definition is not allocated on its ALU",
                    v.name
                );
            }
        }
        let mut ext: Vec<(u64, u64)> = entries.iter().map(|e| (e.start, e.len)).collect();
        ext.sort();
        for e in &ext {
            assert!(
                e.0 >= a.data_start && e.0 + e.1 <= a.data_end,
                "alu {}: label entry {e:?} outside the data area",
                a.uuid
            );
        }
        for w in ext.windows(2) {
            assert!(
                w[0].0 + w[0].1 <= w[1].0,
                "alu {}: label entries overlap: {:?} and {:?}",
                a.uuid,
                w[0],
                w[1]
            );
        }
    }
}

/// After a commit that rewrote every ALU: the label directory of every ALU not in
/// `skip` holds exactly the committed segments on it (no leaked partition).
pub fn check_no_garbage(st: &Store, skip: &[Uuid]) {
    let Some(img) = st.image() else { return };
    for a in img.alus.iter().filter(|a| !skip.contains(&a.uuid)) {
        let mut want: Vec<(u64, u64, u64, u64)> = img
            .volumes
            .iter()
            .flat_map(|v| {
                v.segments
                    .iter()
                    .filter(|g| g.alu == a.uuid)
                    .map(move |g| (g.start, g.len, v.id, g.partition_id))
            })
            .collect();
        want.sort();
        let mut got: Vec<(u64, u64, u64, u64)> = st
            .label_entries(a.uuid)
            .unwrap_or_default()
            .iter()
            .map(|e| (e.start, e.len, e.owner, e.partition))
            .collect();
        got.sort();
        assert_eq!(got, want, "alu {}: label entries leaked or missing", a.uuid);
    }
}
