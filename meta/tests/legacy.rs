//! Legacy disks ([058], [060]): adopting a disk without a metadata region
//! writes nothing to it; its record lives in the boot set; it is recognised
//! by identity and size at the next open; refusals write nothing; every crash
//! point of the adoption opens to the old or the new image.

mod common;
use common::*;
use tierblk_meta::disk::{Disk, MemDisk};
use tierblk_meta::store::{AluState, Store};
use tierblk_meta::testing::{replay, Recorder, SharedDisk};

fn disks() -> Vec<MemDisk> {
    let mut d: Vec<MemDisk> = (0..3).map(|_| MemDisk::new(SIZE)).collect();
    // Disk 1: somebody's data and a serial number; disk 2: no identity.
    for (i, b) in d[1].data.iter_mut().enumerate() {
        *b = (i * 7 + i / 4096) as u8;
    }
    d[1].identity = Some("serial:OLD1".into());
    d
}

fn open(disks: &[SharedDisk]) -> Store {
    open_shared(disks, false).0
}

#[test]
fn adopt_writes_nothing_persists_and_refuses_what_it_must() {
    let shared = share(disks());
    let before = shared[1].lock().data.clone();
    let mut st = open(&shared);
    // No cluster yet: the record would have nowhere to live.
    let e = st.adopt(&path(1), "old1").unwrap_err().to_string();
    assert!(e.contains("claim an ALU first"), "{e}");
    st.claim(&path(0), CLUSTER, false).unwrap();
    let l = st.adopt(&path(1), "old1").unwrap();
    assert_eq!((l.name.as_str(), l.size), ("old1", SIZE));
    assert_eq!(st.legacy_path("old1"), Ok(path(1)));
    for (args, what) in [
        ((1, "again"), "already adopted"),
        ((2, "x2"), "no stable identity"),
        ((0, "x3"), "adopt refused"),
    ] {
        let e = st.adopt(&path(args.0), args.1).unwrap_err().to_string();
        assert!(e.contains(what), "{e}");
    }
    let e = st.adopt(&path(2), "old1").unwrap_err().to_string();
    assert!(e.contains("name already in use"), "{e}");
    let e = st.claim(&path(1), CLUSTER, true).unwrap_err().to_string();
    assert!(e.contains("adopted as legacy volume old1"), "{e}");
    let a0 = alu_uuid(&st, 0);
    let e = st
        .create_volume("old1", 2 * MIB, &[(a0, 2 * MIB)])
        .unwrap_err()
        .to_string();
    assert!(e.contains("name already in use"), "{e}");
    drop(st);
    assert!(
        shared[1].lock().data == before,
        "the legacy disk was written"
    );

    // Found again at the next open, by identity, at another path too.
    let st = open(&shared);
    assert_eq!(st.image().unwrap().legacy.len(), 1);
    assert_eq!(st.legacy_path("old1"), Ok(path(1)));
    drop(st);
    let moved = vec![shared[0].clone(), shared[2].clone(), shared[1].clone()];
    let st = open(&moved);
    assert_eq!(st.legacy_path("old1"), Ok(path(2)), "found by identity");
    drop(st);
    // A different device at its path is not taken for it.
    let impostor = SharedDisk::new(MemDisk {
        identity: Some("serial:OTHER".into()),
        ..MemDisk::new(SIZE)
    });
    let st = open(&[shared[0].clone(), impostor]);
    let e = st.legacy_path("old1").unwrap_err();
    assert!(e.contains("not the one adopted"), "{e}");
    drop(st);

    let mut st = open(&shared);
    st.forget_legacy("old1").unwrap();
    assert!(st.image().unwrap().legacy.is_empty());
    assert!(st.forget_legacy("old1").is_err());
    assert!(matches!(st.alus()[1].state, AluState::NotOwned { .. }));
    drop(st);
    assert!(
        shared[1].lock().data == before,
        "the legacy disk was written"
    );
}

#[test]
fn crash_adopt() {
    let rec = Recorder::new();
    let mk = |i: usize| {
        let mut d = MemDisk::new(SIZE);
        if i == 1 {
            d.identity = Some("serial:OLD1".into());
        }
        d
    };
    let v: Vec<(String, Box<dyn Disk>)> = (0..3)
        .map(|i| (path(i), Box::new(rec.disk(i, mk(i))) as Box<dyn Disk>))
        .collect();
    let mut st = Store::open(v, Some(CLUSTER), true).unwrap().0;
    st.claim(&path(0), CLUSTER, false).unwrap();
    st.claim(&path(2), CLUSTER, false).unwrap();
    let old = image(&st);
    let n0 = rec.write_count();
    st.adopt(&path(1), "old1").unwrap();
    let new = image(&st);
    drop(st);
    let log = rec.log();
    let n1 = write_count(&log);
    assert!(n1 > n0);
    for k in n0..=n1 {
        for tear in [false, true] {
            let mut ds = replay(&[SIZE; 3], &log, k, tear);
            ds[1].identity = Some("serial:OLD1".into());
            assert!(
                ds[1].data.iter().all(|&b| b == 0),
                "k={k}: legacy disk written"
            );
            let st = open(&share(ds));
            let got = image(&st);
            assert!(
                got == old || got == new,
                "k={k} tear={tear}: neither old nor new"
            );
            if got == new {
                assert_eq!(st.legacy_path("old1"), Ok(path(1)), "k={k}");
            }
        }
    }
}
