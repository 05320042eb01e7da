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

/// [`check_healthy`], skipping the free-space check on `skip` (failed ALUs).
pub fn check_healthy_except(st: &Store, skip: &[Uuid]) {
    assert!(
        st.volume_problems().is_empty(),
        "{:?}",
        st.volume_problems()
    );
    let Some(img) = st.image() else { return };
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
