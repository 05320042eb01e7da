//! Functional tests of the Store API: claim rules, volumes, free space, release,
//! other clusters, foreign signatures, a real image file through FileDisk.

mod common;
use common::*;
use tierblk_meta::store::{AluState, Extent, Store};
use tierblk_meta::testing::SharedDisk;
use tierblk_meta::{Disk, FileDisk, MemDisk, MetaError};

fn blank(n: usize) -> Vec<SharedDisk> {
    share((0..n).map(|_| MemDisk::new(SIZE)).collect())
}

#[test]
fn claim_create_remove_release() {
    let disks = blank(2);
    let (mut st, rep) = open_shared(&disks, true);
    assert!(rep.repairs.is_empty() && rep.problems.is_empty());
    assert!(st.image().is_none());
    assert!(st.create_volume("v", MIB, &[]).is_err());
    let a0 = st.claim(&path(0), CLUSTER, false).unwrap();
    assert!(matches!(
        st.claim(&path(0), CLUSTER, false),
        Err(MetaError::Refused(_))
    ));
    assert!(st.claim(&path(1), "othername", false).is_err());
    let a1 = st.claim(&path(1), CLUSTER, false).unwrap();
    assert_eq!(st.path_of(a1), Some("/dev/vdb"));
    let img = st.image().unwrap().clone();
    assert_eq!(img.alus.len(), 2);
    assert!(img.alus.iter().all(|a| a.boot_member));
    assert_eq!(
        st.free_extents(a0),
        vec![Extent {
            start: 8 * MIB,
            len: 23 * MIB
        }]
    );
    // argument validation
    assert!(matches!(
        st.create_volume("bad name", MIB, &[(a0, MIB)]),
        Err(MetaError::Invalid(_))
    ));
    assert!(st.create_volume("v", MIB + 1, &[(a0, MIB + 1)]).is_err());
    assert!(st.create_volume("v", 2 * MIB, &[(a0, MIB)]).is_err());
    assert!(matches!(
        st.create_volume("v", 30 * MIB, &[(a0, 30 * MIB)]),
        Err(MetaError::NoSpace(_))
    ));
    let v = st
        .create_volume("v", 5 * MIB, &[(a0, 3 * MIB), (a1, 2 * MIB)])
        .unwrap();
    assert_eq!(v.segments.len(), 2);
    assert_eq!(v.segments[0].start, 8 * MIB);
    assert_eq!(v.wwn[0] >> 4, 6);
    assert!(st.create_volume("v", MIB, &[(a0, MIB)]).is_err());
    assert_eq!(
        st.free_extents(a0),
        vec![Extent {
            start: 11 * MIB,
            len: 20 * MIB
        }]
    );
    assert!(st.release(&path(1)).is_err(), "volume uses ALU 1");
    drop(st);
    let (mut st, rep) = open_shared(&disks, false);
    assert!(rep.repairs.is_empty() && rep.problems.is_empty(), "{rep:?}");
    assert_eq!(st.image().unwrap().volumes, vec![v.clone()]);
    drop(st);
    let (mut st2, _) = open_shared(&disks, true);
    st2.remove_volume("v").unwrap();
    assert!(st2.remove_volume("v").is_err());
    st2.release(&path(1)).unwrap();
    assert!(matches!(
        st2.alus()[1].state,
        AluState::NotOwned { foreign: None }
    ));
    assert_eq!(st2.image().unwrap().alus.len(), 1);
    drop(st2);
    st = open_shared(&disks, false).0;
    assert_eq!(st.image().unwrap().alus.len(), 1);
    assert!(st.image().unwrap().volumes.is_empty());
    check_healthy(&st);
    // fragmented allocation splits a piece over several extents
    let (mut st, _) = open_shared(&disks, true);
    st.create_volume("a", MIB, &[(a0, MIB)]).unwrap();
    st.create_volume("b", MIB, &[(a0, MIB)]).unwrap();
    st.remove_volume("a").unwrap();
    let big = st
        .create_volume("big", 22 * MIB, &[(a0, 22 * MIB)])
        .unwrap();
    assert_eq!(big.segments.len(), 2);
    assert!(st.free_extents(a0).is_empty());
    check_healthy(&st);
}

#[test]
fn foreign_and_other_cluster() {
    let disks = blank(2);
    disks[0].lock().data[1080..1082].copy_from_slice(&[0x53, 0xef]);
    let (mut st, _) = open_shared(&disks, true);
    match &st.alus()[0].state {
        AluState::NotOwned { foreign: Some(f) } => assert!(f.contains("ext")),
        s => panic!("{s:?}"),
    }
    let e = st.claim(&path(0), CLUSTER, false).unwrap_err();
    assert!(e.to_string().contains("ext2 filesystem"), "{e}");
    st.claim(&path(0), CLUSTER, true).unwrap();
    drop(st);
    // disk 1 owned by another cluster
    let v: Vec<(String, Box<dyn Disk>)> = vec![(path(1), Box::new(disks[1].clone()))];
    let (mut other, _) = Store::open(v, Some("other"), true).unwrap();
    other.claim(&path(1), "other", false).unwrap();
    drop(other);
    let (mut st, _) = open_shared(&disks, true);
    assert!(matches!(&st.alus()[1].state, AluState::OtherCluster { sig } if sig.name == "other"));
    assert!(st.claim(&path(1), CLUSTER, true).is_err());
    assert_eq!(st.image().unwrap().alus.len(), 1);
    // add_disk for a device that appears later
    let rep = st
        .add_disk("/dev/vdz".into(), Box::new(MemDisk::new(SIZE)))
        .unwrap();
    assert!(rep.problems.is_empty());
    st.claim("/dev/vdz", CLUSTER, false).unwrap();
    assert!(st
        .add_disk("/dev/vdz".into(), Box::new(MemDisk::new(SIZE)))
        .is_err());
    let small = st.add_disk("/dev/small".into(), Box::new(MemDisk::new(4 * MIB)));
    assert!(small.is_ok());
    assert!(st.claim("/dev/small", CLUSTER, false).is_err());
}

#[test]
fn orphan_from_crashed_claim_is_reusable() {
    let disks = blank(2);
    let (mut st, _) = open_shared(&disks, true);
    st.claim(&path(0), CLUSTER, false).unwrap();
    let snapshot = disks[1].lock().data.clone();
    st.claim(&path(1), CLUSTER, false).unwrap();
    drop(st);
    // Build the state of a claim whose boot commit was lost: ALU 1 gets its formatted
    // regions and directories, but keeps its old (blank) boot pointers and list areas.
    let claimed = disks[1].lock().data.clone();
    let mut d = snapshot;
    d[0x1000..0x2000].copy_from_slice(&claimed[0x1000..0x2000]);
    d[0x10000..0x300000].copy_from_slice(&claimed[0x10000..0x300000]);
    let end = d.len() - 4096;
    d[end..].copy_from_slice(&claimed[end..]);
    *disks[1].lock() = MemDisk {
        data: d,
        identity: None,
    };
    // ALU 0's boot list would list ALU 1, so pair the orphan with a blank disk instead.
    let d0 = MemDisk::new(SIZE);
    let shared = vec![SharedDisk::new(d0), disks[1].clone()];
    let (mut st, rep) = open_shared(&shared, true);
    assert!(st.image().is_none(), "{rep:?}");
    assert!(
        matches!(st.alus()[1].state, AluState::Orphan { .. }),
        "{:?}",
        st.alus()[1]
    );
    st.claim(&path(0), CLUSTER, false).unwrap();
    assert!(
        matches!(st.alus()[1].state, AluState::Orphan { .. }),
        "{:?}",
        st.alus()[1]
    );
    st.claim(&path(1), CLUSTER, false).unwrap();
    assert_eq!(st.image().unwrap().alus.len(), 2);
}

#[test]
fn file_disk_store() {
    let p = std::env::temp_dir().join(format!("tierblk-meta-store-{}.img", std::process::id()));
    let f = std::fs::File::create(&p).unwrap();
    f.set_len(SIZE).unwrap();
    drop(f);
    let open = |repair| {
        let d = FileDisk::open(&p, true).unwrap();
        let v: Vec<(String, Box<dyn Disk>)> = vec![(p.display().to_string(), Box::new(d))];
        Store::open(v, Some(CLUSTER), repair).unwrap().0
    };
    let mut st = open(true);
    let a = st.claim(&p.display().to_string(), CLUSTER, false).unwrap();
    let v = st
        .create_volume("filevol", 4 * MIB, &[(a, 4 * MIB)])
        .unwrap();
    drop(st);
    let st = open(false);
    assert_eq!(st.image().unwrap().volumes, vec![v]);
    std::fs::remove_file(&p).unwrap();
}

#[test]
fn store_is_send() {
    fn assert_send<T: Send>() {}
    assert_send::<Store>();
}

/// A shared in-memory disk that says which physical device it is on.
#[derive(Clone)]
struct OnDevice(tierblk_meta::testing::SharedDisk, u64);

impl tierblk_meta::disk::Disk for OnDevice {
    fn size(&self) -> u64 {
        self.0.size()
    }
    fn read_at(&mut self, offset: u64, buf: &mut [u8]) -> std::io::Result<()> {
        self.0.read_at(offset, buf)
    }
    fn write_at(&mut self, offset: u64, buf: &[u8]) -> std::io::Result<()> {
        self.0.write_at(offset, buf)
    }
    fn flush(&mut self) -> std::io::Result<()> {
        self.0.flush()
    }
    fn device_id(&self) -> Option<u64> {
        Some(self.1)
    }
}

#[test]
fn boot_set_prefers_distinct_devices() {
    use tierblk_meta::disk::{Disk, MemDisk};
    use tierblk_meta::testing::SharedDisk;
    // Six ALUs on device 1 fill the boot set; a seventh on device 2 takes the
    // place of one of them, an eighth on device 1 does not join.
    let devs = [1u64, 1, 1, 1, 1, 1, 2, 1];
    let disks: Vec<OnDevice> = devs
        .iter()
        .map(|&d| OnDevice(SharedDisk::new(MemDisk::new(SIZE)), d))
        .collect();
    let open = |disks: &[OnDevice]| {
        let v: Vec<(String, Box<dyn Disk>)> = disks
            .iter()
            .enumerate()
            .map(|(i, d)| (path(i), Box::new(d.clone()) as Box<dyn Disk>))
            .collect();
        Store::open(v, Some(CLUSTER), true).expect("open").0
    };
    let mut st = open(&disks);
    for i in 0..devs.len() {
        st.claim(&path(i), CLUSTER, false).unwrap();
    }
    let members = |st: &Store| -> Vec<usize> {
        let img = st.image().unwrap();
        (0..devs.len())
            .filter(|&i| match st.alus()[i].state {
                tierblk_meta::store::AluState::Owned { uuid } => {
                    img.alus.iter().any(|a| a.uuid == uuid && a.boot_member)
                }
                _ => false,
            })
            .collect()
    };
    let m = members(&st);
    assert_eq!(m.len(), 6, "{m:?}");
    assert!(
        m.contains(&6),
        "the ALU on the second device is not a member: {m:?}"
    );
    assert!(!m.contains(&7));
    // Reopened from the disks alone: the same image.
    let img = st.image().cloned();
    drop(st);
    let st = open(&disks);
    assert_eq!(st.image().cloned(), img);
    assert_eq!(members(&st), m);
    // Failing the member on device 2 promotes a non-member (all on device 1).
    let mut st = st;
    st.fail_alu(alu_uuid(&st, 6)).unwrap();
    assert_eq!(members(&st).len(), 6);
}

#[test]
fn snapshots_are_volumes_that_pin_their_origin() {
    let disks = vec![MemDisk::new(SIZE), MemDisk::new(SIZE)];
    let mut st = open_mem(disks, true);
    st.claim(&path(0), CLUSTER, false).unwrap();
    st.claim(&path(1), CLUSTER, false).unwrap();
    let (a0, a1) = (alu_uuid(&st, 0), alu_uuid(&st, 1));
    let o = st
        .create_volume("origin", 4 * MIB, &[(a0, 4 * MIB)])
        .unwrap();
    let e = st
        .create_snapshot("s1", "nosuch", MIB, 64 << 10, &[(a1, MIB)])
        .unwrap_err();
    assert!(e.to_string().contains("nosuch"), "{e}");
    let e = st
        .create_snapshot("s1", "origin", MIB, 5000, &[(a1, MIB)])
        .unwrap_err();
    assert!(e.to_string().contains("chunk"), "{e}");
    let s = st
        .create_snapshot("s1", "origin", MIB, 64 << 10, &[(a1, MIB)])
        .unwrap();
    assert_eq!(s.snapshot.unwrap().origin, o.id);
    let e = st
        .create_snapshot("s2", "s1", MIB, 64 << 10, &[(a1, MIB)])
        .unwrap_err();
    assert!(e.to_string().contains("itself a snapshot"), "{e}");
    let e = st.remove_volume("origin").unwrap_err();
    assert!(e.to_string().contains("s1"), "{e}");
    st.remove_volume("s1").unwrap();
    st.remove_volume("origin").unwrap();
    assert!(st.image().unwrap().volumes.is_empty());
}
