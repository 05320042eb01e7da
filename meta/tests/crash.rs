//! Crash-point enumeration for every commit path: after the first k writes of an
//! operation (and with write k+1 torn), the store opens to exactly the old or exactly
//! the new image, and the next operation works and sees no garbage.

mod common;
use common::*;
use tierblk_meta::store::{AluState, Store};
use tierblk_meta::testing::{replay, Recorder};

fn enumerate(n: usize, setup: impl Fn(&mut Store), op: impl Fn(&mut Store)) {
    let rec = Recorder::new();
    let mut st = open_rec(&rec, n, SIZE);
    setup(&mut st);
    let old = image(&st);
    let n0 = rec.write_count();
    op(&mut st);
    let new = image(&st);
    assert_ne!(old, new, "operation changed nothing");
    drop(st);
    let log = rec.log();
    let n1 = write_count(&log);
    assert!(n1 > n0);
    eprintln!("writes: setup {n0}, operation {}", n1 - n0);
    let sizes = vec![SIZE; n];
    for k in n0..=n1 {
        for tear in [false, true] {
            if tear && k == n1 {
                continue;
            }
            for repair in [false, true] {
                let disks = share(replay(&sizes, &log, k, tear));
                let (mut st, _rep) = open_shared(&disks, repair);
                let got = image(&st);
                let ctx = format!("k={k} (n0={n0}, n1={n1}) tear={tear} repair={repair}");
                assert!(
                    got == old || got == new,
                    "{ctx}: image neither old nor new:\n{got:#?}"
                );
                if k == n0 && !tear {
                    assert_eq!(got, old, "{ctx}");
                }
                if k == n1 {
                    assert_eq!(got, new, "{ctx}");
                }
                check_healthy(&st);
                if !repair {
                    continue;
                }
                // The next operation works and garbage is invisible.
                claim_all(&mut st);
                let img = st.image().cloned().expect("image after claim_all");
                let a0 = img.alus[0].uuid;
                st.create_volume("fresh", 2 * MIB, &[(a0, 2 * MIB)])
                    .unwrap_or_else(|e| panic!("{ctx}: follow-up create: {e}"));
                check_healthy(&st);
                let expect = image(&st);
                drop(st);
                let (st2, rep2) = open_shared(&disks, false);
                assert!(
                    rep2.repairs.is_empty(),
                    "{ctx}: repairs after follow-up: {:?}",
                    rep2.repairs
                );
                assert!(
                    rep2.problems.is_empty(),
                    "{ctx}: problems: {:?}",
                    rep2.problems
                );
                assert_eq!(image(&st2), expect, "{ctx}");
                check_healthy(&st2);
                for a in st2.alus() {
                    assert!(matches!(a.state, AluState::Owned { .. }), "{ctx}: {a:?}");
                }
            }
        }
    }
}

#[test]
fn crash_claim_first_alu() {
    enumerate(
        1,
        |_| {},
        |st| {
            st.claim(&path(0), CLUSTER, false).unwrap();
        },
    );
}

#[test]
fn crash_claim_second_alu() {
    enumerate(
        2,
        |st| {
            st.claim(&path(0), CLUSTER, false).unwrap();
        },
        |st| {
            st.claim(&path(1), CLUSTER, false).unwrap();
        },
    );
}

#[test]
fn crash_boot_set_update_three_members() {
    enumerate(
        3,
        |st| {
            st.claim(&path(0), CLUSTER, false).unwrap();
            st.claim(&path(1), CLUSTER, false).unwrap();
        },
        |st| {
            st.claim(&path(2), CLUSTER, false).unwrap();
        },
    );
}

#[test]
fn crash_create_volume_spanning_two_alus() {
    enumerate(
        2,
        |st| {
            st.claim(&path(0), CLUSTER, false).unwrap();
            st.claim(&path(1), CLUSTER, false).unwrap();
            let a0 = alu_uuid(st, 0);
            st.create_volume("base", 3 * MIB, &[(a0, 3 * MIB)]).unwrap();
        },
        |st| {
            let (a0, a1) = (alu_uuid(st, 0), alu_uuid(st, 1));
            st.create_volume("v1", 6 * MIB, &[(a0, 4 * MIB), (a1, 2 * MIB)])
                .unwrap();
        },
    );
}

#[test]
fn crash_remove_volume() {
    enumerate(
        2,
        |st| {
            st.claim(&path(0), CLUSTER, false).unwrap();
            st.claim(&path(1), CLUSTER, false).unwrap();
            let (a0, a1) = (alu_uuid(st, 0), alu_uuid(st, 1));
            st.create_volume("v1", 6 * MIB, &[(a0, 4 * MIB), (a1, 2 * MIB)])
                .unwrap();
            st.create_volume("v2", 2 * MIB, &[(a1, 2 * MIB)]).unwrap();
        },
        |st| {
            st.remove_volume("v1").unwrap();
        },
    );
}

#[test]
fn crash_release_alu() {
    enumerate(
        3,
        |st| {
            for i in 0..3 {
                st.claim(&path(i), CLUSTER, false).unwrap();
            }
            let a0 = alu_uuid(st, 0);
            st.create_volume("keep", 2 * MIB, &[(a0, 2 * MIB)]).unwrap();
        },
        |st| {
            st.release(&path(1)).unwrap();
        },
    );
}

#[test]
fn crash_release_last_alu() {
    enumerate(
        1,
        |st| {
            st.claim(&path(0), CLUSTER, false).unwrap();
        },
        |st| {
            st.release(&path(0)).unwrap();
        },
    );
}
