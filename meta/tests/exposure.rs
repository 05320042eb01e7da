//! The exposure map (the spec's "volume location structure"): which SPs
//! expose which volume. Kept in the boot list: set and dropped with one
//! commit each (none when nothing changes), persisted across opens, dropped
//! with the volume (or legacy disk) and by a metadata restore that drops it.

mod common;
use common::*;
use tierblk_meta::store::Store;
use tierblk_meta::testing::SharedDisk;
use tierblk_meta::{Exposure, MemDisk, MetaError};

fn disks() -> Vec<SharedDisk> {
    let mut d: Vec<MemDisk> = (0..3).map(|_| MemDisk::new(SIZE)).collect();
    // Disk 2 is adopted as a legacy disk.
    d[2].identity = Some("serial:LEG".into());
    share(d)
}

fn x(volume: u64, sp: &str) -> Exposure {
    Exposure {
        volume,
        sp: sp.into(),
    }
}

fn id(st: &Store, name: &str) -> u64 {
    let img = st.image().unwrap();
    img.volumes
        .iter()
        .find(|v| v.name == name)
        .map(|v| v.id)
        .or_else(|| img.legacy.iter().find(|l| l.name == name).map(|l| l.id))
        .unwrap()
}

fn seq(st: &Store) -> u64 {
    st.image().unwrap().seq
}

/// Reopen over the same disks (no repair): what was committed.
fn reopen(d: &[SharedDisk]) -> Store {
    let (st, rep) = open_shared(d, false);
    assert!(rep.problems.is_empty(), "{rep:?}");
    st
}

/// Two ALUs claimed, volumes "v" and "w", snapshot "s" of "v", legacy disk "old1".
fn setup(d: &[SharedDisk]) -> Store {
    let mut st = open_shared(d, true).0;
    st.claim(&path(0), CLUSTER, false).unwrap();
    st.claim(&path(1), CLUSTER, false).unwrap();
    let (a0, a1) = (alu_uuid(&st, 0), alu_uuid(&st, 1));
    st.create_volume("v", 2 * MIB, &[(a0, 2 * MIB)]).unwrap();
    st.create_volume("w", 2 * MIB, &[(a1, 2 * MIB)]).unwrap();
    st.create_snapshot("s", "v", MIB, 4096, &[(a1, MIB)])
        .unwrap();
    st.adopt(&path(2), "old1").unwrap();
    st
}

#[test]
fn set_remove_idempotent_and_persisted() {
    let d = disks();
    let mut st = open_shared(&d, true).0;
    assert!(st.exposures().is_empty());
    assert!(matches!(
        st.set_exposure("v", "sp1", true),
        Err(MetaError::NotFound(_))
    ));
    drop(st);
    let mut st = setup(&d);
    assert!(st.exposures().is_empty());
    let (v, w) = (id(&st, "v"), id(&st, "w"));

    let s0 = seq(&st);
    assert!(st.set_exposure("v", "sp1", true).unwrap());
    assert_eq!(seq(&st), s0 + 1, "one commit");
    // Adding a present pair: nothing written.
    let before: Vec<Vec<u8>> = d.iter().map(|x| x.lock().data.clone()).collect();
    assert!(!st.set_exposure("v", "sp1", true).unwrap());
    assert_eq!(seq(&st), s0 + 1);
    assert!(st.set_exposure("v", "sp2", true).unwrap());
    assert!(st.set_exposure("w", "sp1", true).unwrap());
    assert_eq!(seq(&st), s0 + 3);
    // Dropping an absent pair: nothing written.
    let mid: Vec<Vec<u8>> = d.iter().map(|x| x.lock().data.clone()).collect();
    assert!(!st.set_exposure("w", "sp2", false).unwrap());
    assert!(!st.set_exposure("w", "sp9", false).unwrap());
    assert_eq!(seq(&st), s0 + 3);
    for (i, m) in mid.iter().enumerate() {
        assert!(d[i].lock().data == *m, "disk {i} written by a no-op");
    }
    assert_ne!(before[0], mid[0]);
    let want = vec![x(v, "sp1"), x(v, "sp2"), x(w, "sp1")];
    assert_eq!(st.exposures(), want);
    assert_eq!(st.image().unwrap().exposures, want);
    drop(st);

    let mut st = reopen(&d);
    assert_eq!(st.exposures(), want);
    assert_eq!(st.image().unwrap().exposures, want);
    assert!(st.set_exposure("v", "sp1", false).unwrap());
    assert!(!st.set_exposure("v", "sp1", false).unwrap());
    drop(st);
    let st = reopen(&d);
    assert_eq!(st.exposures(), vec![x(v, "sp2"), x(w, "sp1")]);
}

#[test]
fn refusals_write_nothing() {
    let d = disks();
    let mut st = setup(&d);
    let s0 = seq(&st);
    let snap: Vec<Vec<u8>> = d.iter().map(|x| x.lock().data.clone()).collect();
    match st.set_exposure("nope", "sp1", true) {
        Err(MetaError::NotFound(m)) => assert!(m.contains("nope"), "{m}"),
        other => panic!("{other:?}"),
    }
    assert!(matches!(
        st.set_exposure("nope", "sp1", false),
        Err(MetaError::NotFound(_))
    ));
    let long = "x".repeat(33);
    for bad in ["", "sp.1", "sp 1", "sp:1", "sp\n1", "spé", long.as_str()] {
        for exposed in [true, false] {
            match st.set_exposure("v", bad, exposed) {
                Err(MetaError::Invalid(m)) => {
                    assert!(m.contains(&format!("{bad:?}")), "{m}");
                    assert!(!m.contains('\n'), "{m}");
                }
                other => panic!("{bad:?}: {other:?}"),
            }
        }
    }
    assert_eq!(seq(&st), s0);
    for (i, s) in snap.iter().enumerate() {
        assert!(d[i].lock().data == *s, "disk {i} written by a refusal");
    }
    // The longest valid name fits exactly.
    let max = "y".repeat(32);
    assert!(st.set_exposure("v", &max, true).unwrap());
    drop(st);
    assert_eq!(reopen(&d).exposures(), vec![x(id(&reopen(&d), "v"), &max)]);
}

#[test]
fn snapshots_and_legacy_disks_can_be_exposed() {
    let d = disks();
    let mut st = setup(&d);
    let (s, old) = (id(&st, "s"), id(&st, "old1"));
    assert!(st.set_exposure("s", "sp1", true).unwrap());
    assert!(st.set_exposure("old1", "sp2", true).unwrap());
    drop(st);
    let mut st = reopen(&d);
    assert_eq!(st.exposures(), vec![x(s, "sp1"), x(old, "sp2")]);
    // Forgetting the legacy disk drops its entries in the same commit.
    let s0 = seq(&st);
    st.forget_legacy("old1").unwrap();
    assert_eq!(seq(&st), s0 + 1);
    assert_eq!(st.exposures(), vec![x(s, "sp1")]);
    drop(st);
    assert_eq!(reopen(&d).exposures(), vec![x(s, "sp1")]);
}

#[test]
fn remove_volume_drops_its_exposures() {
    let d = disks();
    let mut st = setup(&d);
    let (v, w, s) = (id(&st, "v"), id(&st, "w"), id(&st, "s"));
    for (n, sp) in [("w", "sp1"), ("v", "sp1"), ("w", "sp2"), ("s", "sp2")] {
        assert!(st.set_exposure(n, sp, true).unwrap());
    }
    let s0 = seq(&st);
    st.remove_volume("w").unwrap();
    assert_eq!(seq(&st), s0 + 1, "one commit");
    assert_eq!(st.exposures(), vec![x(v, "sp1"), x(s, "sp2")]);
    assert!(!st.exposures().iter().any(|e| e.volume == w));
    st.remove_volume("s").unwrap();
    assert_eq!(st.exposures(), vec![x(v, "sp1")]);
    drop(st);
    let mut st = reopen(&d);
    assert_eq!(st.exposures(), vec![x(v, "sp1")]);
    assert!(matches!(
        st.set_exposure("w", "sp1", true),
        Err(MetaError::NotFound(_))
    ));
}

/// A metadata restore that drops a volume drops its entries and keeps the
/// current ones of the volumes it leaves (the list must still decode).
#[test]
fn restore_keeps_the_map_of_remaining_volumes() {
    let d = disks();
    let mut st = open_shared(&d, true).0;
    st.claim(&path(0), CLUSTER, false).unwrap();
    let a0 = alu_uuid(&st, 0);
    st.create_volume("v", 2 * MIB, &[(a0, 2 * MIB)]).unwrap();
    let only_v = seq(&st);
    st.create_volume("w", 2 * MIB, &[(a0, 2 * MIB)]).unwrap();
    let (v, w) = (id(&st, "v"), id(&st, "w"));
    assert!(st.set_exposure("v", "sp1", true).unwrap());
    assert!(st.set_exposure("w", "sp2", true).unwrap());
    assert!(st.restore(only_v, false).is_err(), "drops w without force");
    let p = st.restore(only_v, true).unwrap();
    assert_eq!(p.dropped, vec!["w"]);
    assert_eq!(st.exposures(), vec![x(v, "sp1")]);
    drop(st);
    let st = reopen(&d);
    assert_eq!(st.exposures(), vec![x(v, "sp1")]);
    assert!(!st.exposures().iter().any(|e| e.volume == w));
}
