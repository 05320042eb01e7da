//! Volume layouts (stripe, mirror, raid10), plan checks, persisted member health and
//! failed ALUs.

mod common;
use common::*;
use tierblk_meta::store::{AluState, Store};
use tierblk_meta::testing::SharedDisk;
use tierblk_meta::{Layout, LayoutKind, MemDisk, MemberHealth, MetaError, Uuid};

fn mirror(k: u16) -> Layout {
    Layout {
        kind: LayoutKind::Mirror,
        stripes: 1,
        copies: k,
        chunk: 0,
    }
}

fn stripe(n: u16) -> Layout {
    Layout {
        kind: LayoutKind::Stripe,
        stripes: n,
        copies: 1,
        chunk: 64 * 1024,
    }
}

fn raid10(n: u16, k: u16) -> Layout {
    Layout {
        kind: LayoutKind::Raid10,
        stripes: n,
        copies: k,
        chunk: 4096,
    }
}

/// A store over `n` claimed shared disks; returns the disks and ALU uuids.
fn cluster(n: usize) -> (Vec<SharedDisk>, Store, Vec<Uuid>) {
    let disks = share((0..n).map(|_| MemDisk::new(SIZE)).collect());
    let (mut st, _) = open_shared(&disks, true);
    claim_all(&mut st);
    let a = (0..n).map(|i| alu_uuid(&st, i)).collect();
    (disks, st, a)
}

fn snapshot(disks: &[SharedDisk]) -> Vec<Vec<u8>> {
    disks.iter().map(|d| d.lock().data.clone()).collect()
}

fn fail_seq(h: MemberHealth) -> u64 {
    match h {
        MemberHealth::Failed { fail_seq } => fail_seq,
        h => panic!("not failed: {h:?}"),
    }
}

#[test]
fn create_layouts_round_trip() {
    let (disks, mut st, a) = cluster(4);
    let m = st
        .create_volume_with(
            "m",
            3 * MIB,
            mirror(3),
            &[
                (0, a[0], 3 * MIB),
                (1, a[1], 2 * MIB),
                (1, a[2], MIB),
                (2, a[3], 3 * MIB),
            ],
        )
        .unwrap();
    assert_eq!(m.members, vec![MemberHealth::Ok; 3]);
    assert_eq!(m.segments.len(), 4);
    assert_eq!(m.member_segments(1).map(|s| s.len).sum::<u64>(), 3 * MIB);
    let s = st
        .create_volume_with(
            "s",
            4 * MIB,
            stripe(2),
            &[(1, a[1], 2 * MIB), (0, a[0], MIB), (0, a[3], MIB)],
        )
        .unwrap();
    // canonical order: by member, plan order within a member
    let order: Vec<(u16, Uuid)> = s.segments.iter().map(|g| (g.member, g.alu)).collect();
    assert_eq!(order, vec![(0, a[0]), (0, a[3]), (1, a[1])]);
    let r = st
        .create_volume_with(
            "r",
            4 * MIB,
            raid10(2, 2),
            &[
                (0, a[0], 2 * MIB),
                (1, a[1], 2 * MIB),
                (2, a[2], 2 * MIB),
                (3, a[3], 2 * MIB),
            ],
        )
        .unwrap();
    assert_eq!(r.layout.members(), 4);
    let l = st.create_volume("l", 2 * MIB, &[(a[2], 2 * MIB)]).unwrap();
    assert_eq!(l.layout, Layout::linear());
    assert_eq!(l.members, vec![MemberHealth::Ok]);
    assert!(l.segments.iter().all(|g| g.member == 0));
    check_healthy(&st);
    let img = st.image().cloned().unwrap();
    drop(st);
    let (st, rep) = open_shared(&disks, false);
    assert!(rep.problems.is_empty() && rep.repairs.is_empty(), "{rep:?}");
    assert_eq!(st.image().cloned().unwrap(), img);
    for v in ["m", "s", "r", "l"] {
        assert!(st.degraded_members(v).is_empty());
    }
    check_healthy(&st);
}

/// (name, size, layout, plan, expected error text)
type Case = (
    &'static str,
    u64,
    Layout,
    Vec<(u16, Uuid, u64)>,
    &'static str,
);

#[test]
fn bad_plans_refused_and_nothing_written() {
    let (disks, mut st, a) = cluster(4);
    st.create_volume("keep", MIB, &[(a[0], MIB)]).unwrap();
    let before = snapshot(&disks);
    let cases: Vec<Case> = vec![
        // mirror legs on one ALU
        (
            "m1",
            2 * MIB,
            mirror(2),
            vec![(0, a[0], 2 * MIB), (1, a[0], 2 * MIB)],
            "different ALUs",
        ),
        // a leg partly on the other leg's ALU
        (
            "m2",
            2 * MIB,
            mirror(2),
            vec![(0, a[0], 2 * MIB), (1, a[1], MIB), (1, a[0], MIB)],
            "different ALUs",
        ),
        // raid10: legs of one mirror share an ALU (different stripes may share)
        (
            "r1",
            4 * MIB,
            raid10(2, 2),
            vec![
                (0, a[0], 2 * MIB),
                (1, a[1], 2 * MIB),
                (2, a[2], 2 * MIB),
                (3, a[2], 2 * MIB),
            ],
            "different ALUs",
        ),
        // member sizes wrong
        (
            "m3",
            2 * MIB,
            mirror(2),
            vec![(0, a[0], 2 * MIB), (1, a[1], MIB)],
            "member 1",
        ),
        (
            "s1",
            4 * MIB,
            stripe(2),
            vec![(0, a[0], 3 * MIB), (1, a[1], MIB)],
            "member 0",
        ),
        (
            "s2",
            4 * MIB,
            stripe(2),
            vec![(0, a[0], 4 * MIB), (1, a[1], 4 * MIB)],
            "member 0",
        ),
        // member missing
        (
            "m4",
            2 * MIB,
            mirror(3),
            vec![(0, a[0], 2 * MIB), (1, a[1], 2 * MIB)],
            "member 2",
        ),
        // member out of range
        (
            "m5",
            2 * MIB,
            mirror(2),
            vec![(0, a[0], 2 * MIB), (1, a[1], 2 * MIB), (2, a[2], 2 * MIB)],
            "member 2",
        ),
        // linear with a member 1 piece
        (
            "l1",
            2 * MIB,
            Layout::linear(),
            vec![(1, a[0], 2 * MIB)],
            "member 1",
        ),
        // invalid layouts / sizes
        (
            "x1",
            2 * MIB,
            Layout {
                chunk: 1000,
                ..stripe(2)
            },
            vec![(0, a[0], MIB), (1, a[1], MIB)],
            "chunk",
        ),
        ("x2", 2 * MIB, mirror(5), vec![(0, a[0], 2 * MIB)], "copies"),
        (
            "x3",
            3 * MIB,
            stripe(2),
            vec![(0, a[0], MIB), (1, a[1], 2 * MIB)],
            "stripes",
        ),
        (
            "x5",
            3 * MIB,
            Layout {
                chunk: 4096,
                ..stripe(2)
            },
            vec![(0, a[0], MIB), (1, a[1], 2 * MIB)],
            "stripes",
        ),
        (
            "x6",
            5 * MIB,
            Layout {
                chunk: 4096,
                ..stripe(3)
            },
            vec![(0, a[0], MIB), (1, a[1], 2 * MIB), (2, a[2], 2 * MIB)],
            "divisible",
        ),
        (
            "x4",
            2 * MIB,
            Layout {
                chunk: 4 << 20,
                ..stripe(2)
            },
            vec![(0, a[0], MIB), (1, a[1], MIB)],
            "chunk",
        ),
    ];
    for (name, size, layout, plan, want) in cases {
        let e = st
            .create_volume_with(name, size, layout, &plan)
            .expect_err(name);
        assert!(matches!(e, MetaError::Invalid(_)), "{name}: {e:?}");
        assert!(e.to_string().contains(want), "{name}: {e}");
        assert!(snapshot(&disks) == before, "{name}: disk bytes changed");
    }
    // raid10: legs of *different* mirrors may share an ALU
    st.create_volume_with(
        "r2",
        4 * MIB,
        raid10(2, 2),
        &[
            (0, a[0], 2 * MIB),
            (1, a[1], 2 * MIB),
            (2, a[0], 2 * MIB),
            (3, a[1], 2 * MIB),
        ],
    )
    .unwrap();
    check_healthy(&st);
}

#[test]
fn member_health_persisted_in_boot_list_only() {
    let (disks, mut st, a) = cluster(3);
    st.create_volume_with(
        "m",
        2 * MIB,
        mirror(3),
        &[(0, a[0], 2 * MIB), (1, a[1], 2 * MIB), (2, a[2], 2 * MIB)],
    )
    .unwrap();
    st.create_volume("l", MIB, &[(a[0], MIB)]).unwrap();
    let objdb = |d: &[SharedDisk]| -> Vec<Vec<u8>> {
        d.iter()
            .map(|x| x.lock().data[0x10_0000..0x30_0000].to_vec())
            .collect()
    };
    let before = objdb(&disks);
    let h1 = st
        .set_member_health("m", 1, MemberHealth::Failed { fail_seq: 0 })
        .unwrap();
    let h2 = st
        .set_member_health("m", 2, MemberHealth::Failed { fail_seq: 77 })
        .unwrap();
    assert!(fail_seq(h1) >= 1 && fail_seq(h2) > fail_seq(h1));
    // failing again keeps the first number
    assert_eq!(
        st.set_member_health("m", 1, MemberHealth::Failed { fail_seq: 0 })
            .unwrap(),
        h1
    );
    // rebuild member 2 from member 0
    let rb = MemberHealth::Rebuilding { checkpoint: MIB };
    assert_eq!(st.set_member_health("m", 2, rb).unwrap(), rb);
    assert!(objdb(&disks) == before, "definitions rewritten");
    assert!(st.volume_problems().is_empty());
    let deg = st.degraded_members("m");
    assert_eq!(deg.len(), 2, "{deg:?}");
    assert!(deg[0].1.contains("failed (fail_seq"), "{deg:?}");
    assert!(deg[1].1.contains("rebuilding"), "{deg:?}");
    // refusals
    for (v, m, h) in [
        ("m", 3, MemberHealth::Ok),
        (
            "m",
            0,
            MemberHealth::Rebuilding {
                checkpoint: 3 * MIB,
            },
        ),
        ("l", 0, MemberHealth::Rebuilding { checkpoint: 0 }),
        ("nope", 0, MemberHealth::Ok),
    ] {
        assert!(st.set_member_health(v, m, h).is_err(), "{v} {m} {h:?}");
    }
    let img = st.image().cloned().unwrap();
    drop(st);
    let (mut st, rep) = open_shared(&disks, false);
    assert!(rep.problems.is_empty(), "{rep:?}");
    assert_eq!(st.image().cloned().unwrap(), img);
    let m = img.volumes.iter().find(|v| v.name == "m").unwrap();
    assert_eq!(m.members, vec![MemberHealth::Ok, h1, rb]);
    // fail the last in-sync leg: rebuilding member 2 has no source; volume offline,
    // naming the newest failed leg
    let h0 = st
        .set_member_health("m", 0, MemberHealth::Failed { fail_seq: 0 })
        .unwrap();
    assert!(fail_seq(h0) > fail_seq(h2));
    let p = st.volume_problems();
    assert_eq!(p.len(), 1, "{p:?}");
    assert!(p[0].1.contains("newest leg: member 0"), "{p:?}");
    assert!(st
        .set_member_health("m", 1, MemberHealth::Rebuilding { checkpoint: 0 })
        .is_err());
    // back to ok
    st.set_member_health("m", 0, MemberHealth::Ok).unwrap();
    assert!(st.volume_problems().is_empty());
    // a failed linear volume is held offline
    st.set_member_health("l", 0, MemberHealth::Failed { fail_seq: 0 })
        .unwrap();
    let p = st.volume_problems();
    assert!(
        p.iter().any(|(v, w)| v == "l" && w.contains("failed")),
        "{p:?}"
    );
}

#[test]
fn raid10_problem_only_when_a_whole_mirror_is_gone() {
    let (_disks, mut st, a) = cluster(4);
    st.create_volume_with(
        "r",
        4 * MIB,
        raid10(2, 2),
        &[
            (0, a[0], 2 * MIB),
            (1, a[1], 2 * MIB),
            (2, a[2], 2 * MIB),
            (3, a[3], 2 * MIB),
        ],
    )
    .unwrap();
    let f = MemberHealth::Failed { fail_seq: 0 };
    st.set_member_health("r", 0, f).unwrap();
    st.set_member_health("r", 3, f).unwrap();
    assert!(st.volume_problems().is_empty());
    assert_eq!(st.degraded_members("r").len(), 2);
    st.set_member_health("r", 2, f).unwrap();
    let p = st.volume_problems();
    assert_eq!(p.len(), 1);
    assert!(p[0].1.starts_with("mirror 1:"), "{p:?}");
    assert!(p[0].1.contains("newest leg: member 2"), "{p:?}");
}

#[test]
fn missing_alu_under_mirror_leg_is_degraded_not_a_problem() {
    let (disks, mut st, a) = cluster(3);
    st.create_volume_with(
        "m",
        2 * MIB,
        mirror(2),
        &[(0, a[0], 2 * MIB), (1, a[1], 2 * MIB)],
    )
    .unwrap();
    st.create_volume_with("s", 2 * MIB, stripe(2), &[(0, a[0], MIB), (1, a[1], MIB)])
        .unwrap();
    drop(st);
    // open without ALU 1
    let v: Vec<(String, Box<dyn tierblk_meta::Disk>)> = [0usize, 2]
        .iter()
        .map(|&i| {
            (
                path(i),
                Box::new(disks[i].clone()) as Box<dyn tierblk_meta::Disk>,
            )
        })
        .collect();
    let (st, _) = Store::open(v, Some(CLUSTER), false).unwrap();
    let p = st.volume_problems();
    assert_eq!(p.len(), 1, "{p:?}");
    assert_eq!(p[0].0, "s");
    assert!(p[0].1.contains("member 1"), "{p:?}");
    let d = st.degraded_members("m");
    assert_eq!(d.len(), 1);
    assert_eq!(d[0].0, 1);
    assert!(d[0].1.contains("missing"), "{d:?}");
}

#[test]
fn fail_alu_never_writes_it_and_persists_failures() {
    let (disks, mut st, a) = cluster(4);
    st.create_volume_with(
        "m",
        2 * MIB,
        mirror(2),
        &[(0, a[0], 2 * MIB), (1, a[1], 2 * MIB)],
    )
    .unwrap();
    st.create_volume_with(
        "r",
        4 * MIB,
        raid10(2, 2),
        &[
            (0, a[1], 2 * MIB),
            (1, a[2], 2 * MIB),
            (2, a[3], MIB),
            (2, a[1], MIB),
            (3, a[0], 2 * MIB),
        ],
    )
    .unwrap();
    st.create_volume("l", MIB, &[(a[1], MIB)]).unwrap();
    st.create_volume("other", MIB, &[(a[2], MIB)]).unwrap();
    // a member already failed keeps its number
    let pre = st
        .set_member_health("r", 2, MemberHealth::Failed { fail_seq: 0 })
        .unwrap();
    let failed_bytes = disks[1].lock().data.clone();
    let mut affected = st.fail_alu(a[1]).unwrap();
    affected.sort();
    assert_eq!(
        affected,
        vec![
            ("l".to_string(), 0),
            ("m".to_string(), 1),
            ("r".to_string(), 0),
            ("r".to_string(), 2)
        ]
    );
    assert!(disks[1].lock().data == failed_bytes, "failed ALU written");
    // further operations don't write it either
    st.create_volume("after", MIB, &[(a[0], MIB)]).unwrap();
    st.remove_volume("l").unwrap();
    st.set_member_health("m", 0, MemberHealth::Failed { fail_seq: 0 })
        .unwrap();
    st.set_member_health("m", 0, MemberHealth::Ok).unwrap();
    assert!(st.create_volume("bad", MIB, &[(a[1], MIB)]).is_err());
    assert!(st
        .set_member_health("m", 1, MemberHealth::Ok)
        .unwrap_err()
        .to_string()
        .contains("failed ALU"));
    assert!(disks[1].lock().data == failed_bytes, "failed ALU written");
    let img = st.image().cloned().unwrap();
    drop(st);
    // reopen, the failed ALU (with its stale boot copy) listed first and last
    for repair in [false, true] {
        let (st, rep) = open_shared(&disks, repair);
        assert!(
            disks[1].lock().data == failed_bytes,
            "failed ALU written by open"
        );
        assert_eq!(st.image().cloned().unwrap(), img);
        assert_eq!(img.failed_alus, vec![a[1]]);
        match &st.alus()[1].state {
            AluState::Damaged { uuid, reason } => {
                assert_eq!(*uuid, Some(a[1]));
                assert!(
                    reason.contains("failed by administrator or on I/O error (fail_seq"),
                    "{reason}"
                );
            }
            s => panic!("{s:?}"),
        }
        assert_eq!(rep.problems.len(), 1, "{:?}", rep.problems);
        let vol = |n: &str| img.volumes.iter().find(|v| v.name == n).unwrap().clone();
        let m = vol("m");
        let r = vol("r");
        assert_eq!(m.members[0], MemberHealth::Ok);
        assert_eq!(r.members[2], pre, "already failed member keeps its number");
        let (s_m1, s_r0) = (fail_seq(m.members[1]), fail_seq(r.members[0]));
        assert!(s_m1 > fail_seq(pre) && s_r0 > s_m1, "{m:?} {r:?}");
        assert_eq!(r.members[1], MemberHealth::Ok);
        assert_eq!(r.members[3], MemberHealth::Ok);
        // raid10 mirror 1 (members 2, 3) still has member 3; mirror 0 has member 1
        assert!(
            st.volume_problems().is_empty(),
            "{:?}",
            st.volume_problems()
        );
        assert_eq!(st.degraded_members("m").len(), 1);
        assert_eq!(st.degraded_members("r").len(), 2);
    }
    // the failed ALU is no longer a boot set member; its boot copy is stale
    let img2 = img.alus.iter().find(|x| x.uuid == a[1]).unwrap();
    assert!(!img2.boot_member);
    // failing it again changes nothing
    let (mut st, _) = open_shared(&disks, true);
    let seq = st.image().unwrap().seq;
    st.fail_alu(a[1]).unwrap();
    assert_eq!(st.image().unwrap().seq, seq);
    assert!(st.fail_alu(Uuid([9; 16])).is_err());
}

#[test]
fn fail_alu_linear_volume_goes_offline() {
    let (_disks, mut st, a) = cluster(2);
    st.create_volume("l", 2 * MIB, &[(a[0], MIB), (a[1], MIB)])
        .unwrap();
    st.fail_alu(a[1]).unwrap();
    let p = st.volume_problems();
    assert_eq!(p.len(), 1);
    assert!(p[0].1.contains("failed"), "{p:?}");
}

#[test]
fn fail_only_alu_refused_without_writing() {
    let (disks, mut st, a) = cluster(1);
    st.create_volume("l", MIB, &[(a[0], MIB)]).unwrap();
    let before = snapshot(&disks);
    let e = st.fail_alu(a[0]).unwrap_err();
    assert!(matches!(e, MetaError::Refused(_)), "{e:?}");
    assert!(snapshot(&disks) == before);
    assert!(st.image().unwrap().failed_alus.is_empty());
}

#[test]
fn fail_alu_promotes_a_boot_member() {
    let (disks, mut st, a) = cluster(7);
    let members = |st: &Store| -> Vec<Uuid> {
        st.image()
            .unwrap()
            .alus
            .iter()
            .filter(|x| x.boot_member)
            .map(|x| x.uuid)
            .collect()
    };
    assert_eq!(members(&st), a[..6].to_vec());
    let before = disks[0].lock().data.clone();
    st.fail_alu(a[0]).unwrap();
    assert_eq!(members(&st), a[1..7].to_vec());
    assert!(disks[0].lock().data == before);
    drop(st);
    let (st, rep) = open_shared(&disks, true);
    assert_eq!(members(&st), a[1..7].to_vec());
    assert!(rep.repairs.is_empty(), "{:?}", rep.repairs);
    assert!(disks[0].lock().data == before);
}
