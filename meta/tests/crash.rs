//! Crash-point enumeration for every commit path: after the first k writes of an
//! operation (and with write k+1 torn), the store opens to exactly the old or exactly
//! the new image, and the next operation works and sees no garbage.

mod common;
use common::*;
use tierblk_meta::store::{AluState, Store};
use tierblk_meta::testing::{replay, Event, Recorder};
use tierblk_meta::{Job, JobKind, JobState};
use tierblk_meta::{Layout, LayoutKind, MemberHealth, MetaError};

fn enumerate(n: usize, setup: impl Fn(&mut Store), op: impl Fn(&mut Store)) {
    enumerate_with(n, None, setup, op)
}

/// `enumerate`; `failed`: an ALU failed during setup, which the operation (and every
/// follow-up) must never write; it is the only problem reported and is not Owned.
fn enumerate_with(
    n: usize,
    failed: Option<usize>,
    setup: impl Fn(&mut Store),
    op: impl Fn(&mut Store),
) {
    let rec = Recorder::new();
    let mut st = open_rec(&rec, n, SIZE);
    setup(&mut st);
    let old = image(&st);
    let n0 = rec.write_count();
    let skip: Vec<_> = old
        .iter()
        .flat_map(|i| i.failed_alus.iter().copied())
        .collect();
    op(&mut st);
    let new = image(&st);
    assert_ne!(old, new, "operation changed nothing");
    drop(st);
    let log = rec.log();
    let n1 = write_count(&log);
    assert!(n1 > n0);
    eprintln!("writes: setup {n0}, operation {}", n1 - n0);
    if let Some(f) = failed {
        assert!(
            log.iter()
                .filter(|e| matches!(e, Event::Write { .. }))
                .skip(n0)
                .all(|e| !matches!(e, Event::Write { disk, .. } if *disk == f)),
            "operation wrote to the failed ALU"
        );
    }
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
                check_healthy_except(&st, &skip);
                if !repair {
                    continue;
                }
                let before = failed.map(|f| disks[f].lock().data.clone());
                // The next operation works and garbage is invisible.
                claim_all(&mut st);
                let img = st.image().cloned().expect("image after claim_all");
                let a0 = img.alus[0].uuid;
                st.create_volume("fresh", 2 * MIB, &[(a0, 2 * MIB)])
                    .unwrap_or_else(|e| panic!("{ctx}: follow-up create: {e}"));
                check_healthy_except(&st, &skip);
                // the follow-up rewrote every ALU: no partition leaked
                check_no_garbage(&st, &skip);
                let expect = image(&st);
                drop(st);
                let (st2, rep2) = open_shared(&disks, false);
                assert!(
                    rep2.repairs.is_empty(),
                    "{ctx}: repairs after follow-up: {:?}",
                    rep2.repairs
                );
                assert_eq!(
                    rep2.problems.len(),
                    usize::from(failed.is_some()),
                    "{ctx}: problems: {:?}",
                    rep2.problems
                );
                assert_eq!(image(&st2), expect, "{ctx}");
                check_healthy_except(&st2, &skip);
                for (i, a) in st2.alus().iter().enumerate() {
                    if Some(i) == failed {
                        assert!(disks[i].lock().data == *before.as_ref().unwrap(), "{ctx}");
                        continue;
                    }
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

fn mirror2() -> Layout {
    Layout {
        kind: LayoutKind::Mirror,
        stripes: 1,
        copies: 2,
        chunk: 0,
    }
}

fn raid10_2x2() -> Layout {
    Layout {
        kind: LayoutKind::Raid10,
        stripes: 2,
        copies: 2,
        chunk: 64 * 1024,
    }
}

#[test]
fn crash_create_mirror_two_alus() {
    enumerate(
        2,
        |st| {
            claim_all(st);
            let a0 = alu_uuid(st, 0);
            st.create_volume("base", 3 * MIB, &[(a0, 3 * MIB)]).unwrap();
        },
        |st| {
            let (a0, a1) = (alu_uuid(st, 0), alu_uuid(st, 1));
            st.create_volume_with(
                "m",
                4 * MIB,
                mirror2(),
                &[(0, a0, 4 * MIB), (1, a1, 3 * MIB), (1, a1, MIB)],
            )
            .unwrap();
        },
    );
}

#[test]
fn crash_create_raid10_four_alus() {
    enumerate(
        4,
        |st| {
            claim_all(st);
        },
        |st| {
            let a: Vec<_> = (0..4).map(|i| alu_uuid(st, i)).collect();
            st.create_volume_with(
                "r10",
                4 * MIB,
                raid10_2x2(),
                &[
                    (0, a[0], 2 * MIB),
                    (1, a[1], 2 * MIB),
                    (2, a[2], 2 * MIB),
                    (3, a[3], MIB),
                    (3, a[0], MIB),
                ],
            )
            .unwrap();
        },
    );
}

#[test]
fn crash_set_member_health() {
    for health in [
        MemberHealth::Failed { fail_seq: 0 },
        MemberHealth::Rebuilding { checkpoint: MIB },
    ] {
        enumerate(
            2,
            |st| {
                claim_all(st);
                let (a0, a1) = (alu_uuid(st, 0), alu_uuid(st, 1));
                st.create_volume_with(
                    "m",
                    2 * MIB,
                    mirror2(),
                    &[(0, a0, 2 * MIB), (1, a1, 2 * MIB)],
                )
                .unwrap();
                if matches!(health, MemberHealth::Rebuilding { .. }) {
                    st.set_member_health("m", 1, MemberHealth::Failed { fail_seq: 0 })
                        .unwrap();
                }
            },
            |st| {
                st.set_member_health("m", 1, health).unwrap();
            },
        );
    }
}

#[test]
fn crash_set_dirty_and_clean() {
    for dirty in [true, false] {
        enumerate(
            2,
            |st| {
                claim_all(st);
                if !dirty {
                    st.set_dirty(true).unwrap();
                }
            },
            |st| {
                st.set_dirty(dirty).unwrap();
                assert_eq!(st.dirty(), dirty);
            },
        );
    }
}

/// Like `enumerate`, for `fail_alu(alu #failed)`: the failed ALU is never written by
/// the operation nor afterwards, shows as Damaged once the new state is committed,
/// and everything else behaves as in `enumerate`.
fn enumerate_fail(n: usize, failed: usize, setup: impl Fn(&mut Store)) {
    let rec = Recorder::new();
    let mut st = open_rec(&rec, n, SIZE);
    setup(&mut st);
    let old = image(&st);
    let n0 = rec.write_count();
    let fu = alu_uuid(&st, failed);
    let affected = st.fail_alu(fu).unwrap();
    assert!(!affected.is_empty());
    let new = image(&st);
    assert_ne!(old, new, "operation changed nothing");
    drop(st);
    let log = rec.log();
    let n1 = write_count(&log);
    assert!(n1 > n0);
    let op_writes: Vec<_> = log
        .iter()
        .filter(|e| matches!(e, Event::Write { .. }))
        .skip(n0)
        .collect();
    assert!(
        op_writes
            .iter()
            .all(|e| !matches!(e, Event::Write { disk, .. } if *disk == failed)),
        "fail_alu wrote to the failed ALU"
    );
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
                // mirrors run degraded: never a volume problem
                assert!(
                    st.volume_problems().is_empty(),
                    "{ctx}: {:?}",
                    st.volume_problems()
                );
                let is_new = got == new;
                let before = disks[failed].lock().data.clone();
                if is_new {
                    assert!(
                        matches!(&st.alus()[failed].state, AluState::Damaged { reason, .. } if reason.contains("failed by administrator")),
                        "{ctx}: {:?}",
                        st.alus()[failed]
                    );
                    for (v, m) in &affected {
                        assert!(
                            st.degraded_members(v).iter().any(|(x, _)| x == m),
                            "{ctx}: {v}/{m} not degraded"
                        );
                    }
                }
                if !repair {
                    continue;
                }
                claim_all(&mut st);
                let img = st.image().cloned().expect("image");
                let a0 = img.alus[0].uuid;
                st.create_volume("fresh", 2 * MIB, &[(a0, 2 * MIB)])
                    .unwrap_or_else(|e| panic!("{ctx}: follow-up create: {e}"));
                let expect = image(&st);
                drop(st);
                let (st2, rep2) = open_shared(&disks, false);
                assert!(
                    rep2.repairs.is_empty(),
                    "{ctx}: repairs after follow-up: {:?}",
                    rep2.repairs
                );
                assert_eq!(image(&st2), expect, "{ctx}");
                assert!(st2.volume_problems().is_empty(), "{ctx}");
                if is_new {
                    assert!(
                        disks[failed].lock().data == before,
                        "{ctx}: failed ALU written after the commit"
                    );
                    assert_eq!(rep2.problems.len(), 1, "{ctx}: {:?}", rep2.problems);
                } else {
                    assert!(rep2.problems.is_empty(), "{ctx}: {:?}", rep2.problems);
                }
                for (i, a) in st2.alus().iter().enumerate() {
                    if is_new && i == failed {
                        continue;
                    }
                    assert!(matches!(a.state, AluState::Owned { .. }), "{ctx}: {a:?}");
                }
            }
        }
    }
}

#[test]
fn crash_fail_alu() {
    enumerate_fail(4, 1, |st| {
        claim_all(st);
        let a: Vec<_> = (0..4).map(|i| alu_uuid(st, i)).collect();
        st.create_volume_with(
            "m",
            2 * MIB,
            mirror2(),
            &[(0, a[0], 2 * MIB), (1, a[1], 2 * MIB)],
        )
        .unwrap();
        st.create_volume_with(
            "r10",
            4 * MIB,
            raid10_2x2(),
            &[
                (0, a[0], 2 * MIB),
                (1, a[1], 2 * MIB),
                (2, a[2], 2 * MIB),
                (3, a[3], 2 * MIB),
            ],
        )
        .unwrap();
        st.create_volume("lin", 2 * MIB, &[(a[2], 2 * MIB)])
            .unwrap();
    });
}

/// A 2 MiB 2-leg mirror "m" on the first two ALUs.
fn small_mirror(st: &mut Store) {
    claim_all(st);
    let (a0, a1) = (alu_uuid(st, 0), alu_uuid(st, 1));
    st.create_volume_with(
        "m",
        2 * MIB,
        mirror2(),
        &[(0, a0, 2 * MIB), (1, a1, 2 * MIB)],
    )
    .unwrap();
}

fn mirror_setup(st: &mut Store) {
    claim_all(st);
    let (a0, a1) = (alu_uuid(st, 0), alu_uuid(st, 1));
    st.create_volume("base", 3 * MIB, &[(a0, 3 * MIB)]).unwrap();
    st.create_volume_with(
        "m",
        4 * MIB,
        mirror2(),
        &[(0, a0, 4 * MIB), (1, a1, 4 * MIB)],
    )
    .unwrap();
}

#[test]
fn crash_replace_member_healthy_old_alu() {
    // old leg on a writable ALU: its extents are freed after the commit
    enumerate(
        3,
        |st| {
            mirror_setup(st);
            // fragment alu 2 so the new leg needs two extents
            let a2 = alu_uuid(st, 2);
            st.create_volume("f1", 20 * MIB, &[(a2, 20 * MIB)]).unwrap();
            st.create_volume("f2", MIB, &[(a2, MIB)]).unwrap();
            st.remove_volume("f1").unwrap();
            st.create_volume("f3", 17 * MIB, &[(a2, 17 * MIB)]).unwrap();
        },
        |st| {
            let a2 = alu_uuid(st, 2);
            let (def, job) = st.replace_member("m", 1, a2).unwrap();
            assert!(def.member_segments(1).count() >= 2);
            assert_eq!(job.state, JobState::Running);
        },
    );
}

#[test]
fn crash_replace_member_on_failed_alu() {
    enumerate_with(
        3,
        Some(1),
        |st| {
            mirror_setup(st);
            let a1 = alu_uuid(st, 1);
            st.fail_alu(a1).unwrap();
        },
        |st| {
            let a2 = match st.alus()[2].state {
                AluState::Owned { uuid } => uuid,
                _ => unreachable!(),
            };
            st.replace_member("m", 1, a2).unwrap();
        },
    );
}

#[test]
fn crash_replace_raid10_member() {
    enumerate(
        4,
        |st| {
            claim_all(st);
            let a: Vec<_> = (0..4).map(|i| alu_uuid(st, i)).collect();
            st.create_volume_with(
                "r10",
                4 * MIB,
                raid10_2x2(),
                &[
                    (0, a[0], 2 * MIB),
                    (1, a[1], 2 * MIB),
                    (2, a[2], 2 * MIB),
                    (3, a[3], 2 * MIB),
                ],
            )
            .unwrap();
        },
        |st| {
            // member 3 moves to alu 0 (which holds member 0 of the other mirror)
            let a0 = alu_uuid(st, 0);
            st.replace_member("r10", 3, a0).unwrap();
        },
    );
}

fn scrub(volume: u64) -> Job {
    Job {
        id: 0,
        kind: JobKind::Scrub,
        volume,
        member: None,
        source: None,
        repair: true,
        state: JobState::Running,
        checkpoint: 0,
        total: 4 * MIB,
        mismatches: 0,
        repaired: 0,
        message: String::new(),
        rate: 0,
        dirty_only: false,
    }
}

fn vol_id(st: &Store, name: &str) -> u64 {
    st.image()
        .unwrap()
        .volumes
        .iter()
        .find(|v| v.name == name)
        .unwrap()
        .id
}

#[test]
fn crash_add_job() {
    enumerate(2, mirror_setup, |st| {
        let id = vol_id(st, "m");
        st.add_job(scrub(id)).unwrap();
    });
}

#[test]
fn crash_update_rebuild_job() {
    for done in [false, true] {
        enumerate(
            3,
            |st| {
                mirror_setup(st);
                let a2 = alu_uuid(st, 2);
                st.replace_member("m", 1, a2).unwrap();
            },
            |st| {
                let mut j = st.jobs()[0].clone();
                j.checkpoint = if done { j.total } else { MIB };
                if done {
                    j.state = JobState::Done;
                }
                st.update_job(&j).unwrap();
                let want = if done {
                    MemberHealth::Ok
                } else {
                    MemberHealth::Rebuilding { checkpoint: MIB }
                };
                let img = st.image().unwrap();
                assert_eq!(img.volumes[1].members[1], want);
            },
        );
    }
}

#[test]
fn crash_remove_job() {
    enumerate(
        2,
        |st| {
            mirror_setup(st);
            let id = vol_id(st, "m");
            st.add_job(scrub(id)).unwrap();
        },
        |st| {
            let id = st.jobs()[0].id;
            st.remove_job(id).unwrap();
        },
    );
}

#[test]
fn crash_create_and_remove_snapshot() {
    let setup = |st: &mut Store| {
        claim_all(st);
        let a0 = alu_uuid(st, 0);
        st.create_volume("origin", 4 * MIB, &[(a0, 4 * MIB)])
            .unwrap();
    };
    enumerate(2, setup, |st| {
        let a1 = alu_uuid(st, 1);
        let s = st
            .create_snapshot("snap", "origin", 2 * MIB, 64 << 10, &[(a1, 2 * MIB)])
            .unwrap();
        assert_eq!(s.snapshot.unwrap().origin_size, 4 * MIB);
    });
    enumerate(
        2,
        |st| {
            setup(st);
            let a1 = alu_uuid(st, 1);
            st.create_snapshot("snap", "origin", 2 * MIB, 64 << 10, &[(a1, 2 * MIB)])
                .unwrap();
        },
        |st| st.remove_volume("snap").unwrap(),
    );
}

/// `unfail_alu` (alu readd): at every crash point the store opens to the old
/// image (the ALU still failed, never used) or the new one (the ALU owned
/// again, its mirror leg rebuilding with a dirty-only job, its label
/// directory without the partitions of a volume removed while it was failed).
#[test]
fn crash_unfail_alu() {
    let rec = Recorder::new();
    let mut st = open_rec(&rec, 3, SIZE);
    mirror_setup(&mut st);
    let (a0, a1) = (alu_uuid(&st, 0), alu_uuid(&st, 1));
    st.create_volume_with(
        "m2",
        2 * MIB,
        mirror2(),
        &[(0, a0, 2 * MIB), (1, a1, 2 * MIB)],
    )
    .unwrap();
    st.fail_alu(a1).unwrap();
    st.remove_volume("m2").unwrap();
    let old = image(&st);
    let n0 = rec.write_count();
    // A healthy ALU cannot be re-added; nothing is written.
    let e = st.unfail_alu(a0).unwrap_err().to_string();
    assert!(e.contains("not failed"), "{e}");
    assert_eq!(rec.write_count(), n0);
    let out = st.unfail_alu(a1).unwrap();
    assert_eq!(out.len(), 1, "{out:?}");
    let (ref name, member, Some(ref job)) = out[0] else {
        panic!("no job: {out:?}")
    };
    assert_eq!((name.as_str(), member), ("m", 1));
    assert!(job.dirty_only && job.kind == JobKind::Rebuild);
    let new = image(&st);
    assert_ne!(old, new);
    let free_after = st.free_extents(a1);
    drop(st);
    let log = rec.log();
    let n1 = write_count(&log);
    let sizes = vec![SIZE; 3];
    for k in n0..=n1 {
        for tear in [false, true] {
            if tear && k == n1 {
                continue;
            }
            let disks = share(replay(&sizes, &log, k, tear));
            let (mut st, _) = open_shared(&disks, true);
            let got = image(&st);
            let ctx = format!("k={k} (n0={n0}, n1={n1}) tear={tear}");
            let unfailed = matches!(st.alus()[1].state, AluState::Owned { .. });
            if got == new {
                assert!(unfailed, "{ctx}");
                assert_eq!(st.free_extents(a1), free_after, "{ctx}");
                let v = got.as_ref().unwrap().volumes.iter().find(|v| v.name == "m");
                assert_eq!(
                    v.unwrap().members[1],
                    MemberHealth::Rebuilding { checkpoint: 0 },
                    "{ctx}"
                );
                assert!(st.jobs().iter().any(|j| j.dirty_only), "{ctx}");
            } else {
                assert_eq!(got, old, "{ctx}: image neither old nor new");
                assert!(!unfailed, "{ctx}: a failed ALU came back by itself");
                // And the re-add still works from here.
                st.unfail_alu(a1)
                    .unwrap_or_else(|e| panic!("{ctx}: retry: {e}"));
                assert_eq!(image(&st), new, "{ctx}: retry");
            }
        }
    }
}

#[test]
fn crash_set_schedule() {
    enumerate(2, mirror_setup, |st| {
        let m = vol_id(st, "m");
        st.set_schedule(tierblk_meta::Schedule {
            volume: m,
            every: 3600,
            size: 0,
            last: 0,
            keep: 24,
        })
        .unwrap();
    });
}

#[test]
fn crash_remove_volume_drops_its_schedule() {
    enumerate(
        2,
        |st| {
            mirror_setup(st);
            let m = vol_id(st, "m");
            st.set_schedule(tierblk_meta::Schedule {
                volume: m,
                every: 60,
                size: 0,
                last: 7,
                keep: 3,
            })
            .unwrap();
        },
        |st| {
            st.remove_volume("m").unwrap();
            assert!(st.schedules().is_empty());
        },
    );
}

#[test]
fn crash_set_exposure() {
    enumerate(2, mirror_setup, |st| {
        assert!(st.set_exposure("m", "sp2", true).unwrap());
    });
    enumerate(
        2,
        |st| {
            mirror_setup(st);
            st.set_exposure("m", "sp1", true).unwrap();
            st.set_exposure("base", "sp1", true).unwrap();
        },
        |st| {
            assert!(st.set_exposure("m", "sp1", false).unwrap());
        },
    );
}

#[test]
fn crash_remove_volume_drops_its_exposures() {
    enumerate(
        2,
        |st| {
            mirror_setup(st);
            st.set_exposure("m", "sp1", true).unwrap();
            st.set_exposure("m", "sp2", true).unwrap();
            st.set_exposure("base", "sp2", true).unwrap();
        },
        |st| {
            st.remove_volume("m").unwrap();
            let base = vol_id(st, "base");
            assert_eq!(
                st.exposures(),
                vec![tierblk_meta::Exposure {
                    volume: base,
                    sp: "sp2".into()
                }]
            );
        },
    );
}

/// `restore` (metadata archive): at every crash point the store opens to the old
/// image (the volume still removed) or the new one (it is back with its extents).
#[test]
fn crash_restore_removed_volume() {
    enumerate(
        2,
        |st| {
            mirror_setup(st);
            let a1 = alu_uuid(st, 1);
            st.create_volume("v1", 3 * MIB, &[(a1, 3 * MIB)]).unwrap();
            st.remove_volume("m").unwrap();
        },
        |st| {
            let seq = st
                .history()
                .into_iter()
                .find(|e| e.volumes.iter().any(|v| v == "m"))
                .unwrap()
                .seq;
            let p = st.restore(seq, false).unwrap();
            assert_eq!(p.restored, vec!["m"]);
            assert!(st.image().unwrap().volumes.iter().any(|v| v.name == "m"));
        },
    );
}

// ------------------------------------------------------------------ reshapes
//
// Online reshapes commit like replace_member: at every crash point the store opens
// to exactly the old or the new image, every segment of the committed definition is
// allocated on its ALU (`check_healthy_except`: a partition the committed image
// references is never freed, claims 11-18), and after the follow-up commit no
// partition leaked (`check_no_garbage`).

/// A linear volume "lin" on alu 0 (two extents) next to "base".
fn linear_setup(st: &mut Store) {
    claim_all(st);
    let (a0, a1) = (alu_uuid(st, 0), alu_uuid(st, 1));
    st.create_volume("base", 3 * MIB, &[(a0, 3 * MIB)]).unwrap();
    st.create_volume("lin", 4 * MIB, &[(a0, 2 * MIB), (a1, 2 * MIB)])
        .unwrap();
}

#[test]
fn crash_add_leg_linear_to_mirror() {
    enumerate(3, linear_setup, |st| {
        let a2 = alu_uuid(st, 2);
        let (def, job) = st.add_leg("lin", a2).unwrap();
        assert_eq!(def.layout, mirror2());
        assert_eq!(def.wi_slots.len(), 2);
        assert_eq!((job.kind, job.member), (JobKind::Rebuild, Some(1)));
    });
}

#[test]
fn crash_add_leg_mirror_to_three_legs() {
    enumerate(3, mirror_setup, |st| {
        let a2 = alu_uuid(st, 2);
        let (def, _) = st.add_leg("m", a2).unwrap();
        assert_eq!(def.layout.copies, 3);
    });
}

#[test]
fn crash_remove_leg_mirror_to_linear() {
    // leg 0 goes: its extents on alu 0 are freed after the commit, leg 1 becomes
    // member 0 of a linear volume
    enumerate(2, mirror_setup, |st| {
        let def = st.remove_leg("m", 0).unwrap();
        assert_eq!(def.layout, Layout::linear());
        assert!(def.segments.iter().all(|s| s.member == 0));
    });
}

#[test]
fn crash_remove_leg_three_to_two() {
    enumerate(
        3,
        |st| {
            mirror_setup(st);
            let a2 = alu_uuid(st, 2);
            let (_, j) = st.add_leg("m", a2).unwrap();
            let mut j = j;
            j.checkpoint = j.total;
            j.state = JobState::Done;
            st.update_job(&j).unwrap();
        },
        |st| {
            let def = st.remove_leg("m", 1).unwrap();
            assert_eq!(def.layout.copies, 2);
        },
    );
}

#[test]
fn crash_remove_leg_on_failed_alu() {
    // the removed leg's ALU has failed: it is never written, before or after
    enumerate_with(
        3,
        Some(1),
        |st| {
            mirror_setup(st);
            let a2 = alu_uuid(st, 2);
            st.add_leg("m", a2).unwrap();
            let mut j = st.jobs()[0].clone();
            j.checkpoint = j.total;
            j.state = JobState::Done;
            st.update_job(&j).unwrap();
            let a1 = alu_uuid(st, 1);
            st.fail_alu(a1).unwrap();
        },
        |st| {
            st.remove_leg("m", 1).unwrap();
        },
    );
}

#[test]
fn crash_move_member() {
    // a linear volume: becomes a mirror with a move job
    enumerate(3, linear_setup, |st| {
        let a2 = alu_uuid(st, 2);
        let (def, job) = st.move_member("lin", 0, a2).unwrap();
        assert_eq!(def.layout, mirror2());
        assert_eq!((job.member, job.source), (Some(1), Some(0)));
    });
    // leg 0 of a mirror
    enumerate(3, mirror_setup, |st| {
        let a2 = alu_uuid(st, 2);
        let (_, job) = st.move_member("m", 0, a2).unwrap();
        assert_eq!(
            (job.kind, job.member, job.source),
            (JobKind::Move, Some(2), Some(0))
        );
    });
}

fn stripe_setup(st: &mut Store) {
    claim_all(st);
    let (a0, a1) = (alu_uuid(st, 0), alu_uuid(st, 1));
    let stripe = Layout {
        kind: LayoutKind::Stripe,
        stripes: 2,
        copies: 1,
        chunk: 64 * 1024,
    };
    st.create_volume_with("st", 4 * MIB, stripe, &[(0, a0, 2 * MIB), (1, a1, 2 * MIB)])
        .unwrap();
}

#[test]
fn crash_move_stripe_member() {
    // start: the target appears beyond the layout; finish: it takes the source's
    // number and the source's extents are freed after the commit point; abandon:
    // the target goes. At every crash point one of the two definitions is whole.
    enumerate(3, stripe_setup, |st| {
        let a2 = alu_uuid(st, 2);
        let (def, job) = st.move_member("st", 1, a2).unwrap();
        assert_eq!(
            (def.moving, job.member, job.source),
            (Some(1), Some(2), Some(1))
        );
    });
    enumerate(
        3,
        |st| {
            stripe_setup(st);
            let a2 = alu_uuid(st, 2);
            let (_, mut j) = st.move_member("st", 1, a2).unwrap();
            j.checkpoint = j.total;
            st.update_job(&j).unwrap();
        },
        |st| {
            let id = st.jobs()[0].id;
            let def = st.finish_move(id).unwrap();
            let a2 = alu_uuid(st, 2);
            assert_eq!(def.moving, None);
            assert!(def.member_segments(1).all(|s| s.alu == a2));
        },
    );
    enumerate(
        3,
        |st| {
            stripe_setup(st);
            let a2 = alu_uuid(st, 2);
            st.move_member("st", 0, a2).unwrap();
        },
        |st| {
            let def = st.remove_leg("st", 2).unwrap();
            assert_eq!((def.moving, def.member_count()), (None, 2));
        },
    );
}

#[test]
fn crash_finish_move() {
    // a moved linear volume: the source extents (on alus 0 and 1) are freed only
    // after the commit point; the volume is linear on alu 2 afterwards
    enumerate(
        3,
        |st| {
            linear_setup(st);
            let a2 = alu_uuid(st, 2);
            let (_, mut j) = st.move_member("lin", 0, a2).unwrap();
            j.checkpoint = j.total;
            st.update_job(&j).unwrap();
        },
        |st| {
            let id = st.jobs()[0].id;
            let def = st.finish_move(id).unwrap();
            assert_eq!(def.layout, Layout::linear());
            let a2 = alu_uuid(st, 2);
            assert!(def.segments.iter().all(|s| s.alu == a2));
        },
    );
    // leg 0 of a 2-leg mirror
    enumerate(
        3,
        |st| {
            mirror_setup(st);
            let a2 = alu_uuid(st, 2);
            let (_, mut j) = st.move_member("m", 0, a2).unwrap();
            j.checkpoint = j.total;
            st.update_job(&j).unwrap();
        },
        |st| {
            let id = st.jobs()[0].id;
            let def = st.finish_move(id).unwrap();
            assert_eq!(def.layout, mirror2());
        },
    );
}

#[test]
fn crash_extend_volume() {
    // linear: new extents on another ALU, fragmented so it takes several
    enumerate(
        2,
        |st| {
            linear_setup(st);
            let a1 = alu_uuid(st, 1);
            st.create_volume("f1", 2 * MIB, &[(a1, 2 * MIB)]).unwrap();
            st.create_volume("f2", MIB, &[(a1, MIB)]).unwrap();
            st.remove_volume("f1").unwrap();
            st.create_volume("f3", 17 * MIB, &[(a1, 17 * MIB)]).unwrap();
        },
        |st| {
            let a1 = alu_uuid(st, 1);
            let def = st.extend_volume("lin", 3 * MIB, &[a1]).unwrap();
            assert_eq!(def.size, 7 * MIB);
            assert!(def.segments.len() >= 4, "{:?}", def.segments);
        },
    );
    // stripe: one piece per member, both on one ALU
    enumerate(
        3,
        |st| {
            claim_all(st);
            let (a0, a1) = (alu_uuid(st, 0), alu_uuid(st, 1));
            st.create_volume_with(
                "st",
                2 * MIB,
                Layout {
                    kind: LayoutKind::Stripe,
                    stripes: 2,
                    copies: 1,
                    chunk: 64 * 1024,
                },
                &[(0, a0, MIB), (1, a1, MIB)],
            )
            .unwrap();
        },
        |st| {
            let a2 = alu_uuid(st, 2);
            let def = st.extend_volume("st", 4 * MIB, &[a2, a2]).unwrap();
            assert_eq!(def.size, 6 * MIB);
        },
    );
    // mirror: every leg grows; the second copies its new part (a rebuild job
    // from the old member size) in the same commit
    enumerate(3, small_mirror, |st| {
        let (a1, a2) = (alu_uuid(st, 1), alu_uuid(st, 2));
        let def = st.extend_volume("m", 3 * MIB, &[a2, a1]).unwrap();
        assert_eq!(def.size, 5 * MIB);
        assert_eq!(
            def.members[1],
            MemberHealth::Rebuilding {
                checkpoint: 2 * MIB
            }
        );
        let j = st.jobs().into_iter().find(|j| j.volume == def.id).unwrap();
        assert_eq!(
            (j.member, j.checkpoint, j.total),
            (Some(1), 2 * MIB, 5 * MIB)
        );
    });
}

/// A write that fails in the middle of a change (a peer's ALU gone for a
/// moment) poisons the store: every change is refused until `reopen`, which
/// reads the disks again as a restart would and finds the old or the new
/// state, healthy; the next change works.
#[test]
fn a_failed_write_poisons_the_store_until_it_is_reopened() {
    let setup = small_mirror;
    let op = |st: &mut Store| {
        let a2 = alu_uuid(st, 2);
        st.add_leg("m", a2).map(drop)
    };
    let copies = |st: &Store| {
        let img = st.image().unwrap();
        img.volumes
            .iter()
            .find(|v| v.name == "m")
            .unwrap()
            .layout
            .copies
    };
    // How many writes the change takes.
    let rec = Recorder::new();
    let mut st = open_rec(&rec, 3, SIZE);
    setup(&mut st);
    let n0 = rec.write_count();
    op(&mut st).unwrap();
    let n1 = rec.write_count();
    assert!(n1 > n0);
    let (mut olds, mut news) = (0, 0);
    for k in 0..n1 - n0 {
        let rec = Recorder::new();
        let mut st = open_rec(&rec, 3, SIZE);
        setup(&mut st);
        let old = image(&st);
        let from = rec.state().writes + k;
        rec.state().fail_from = Some(from);
        let e = op(&mut st).expect_err("a write failed");
        // Before the commit point the write error itself; after it, the
        // committed change with its cleanup not done.
        assert!(
            matches!(e, MetaError::Io { .. }) || e.to_string().contains("cleanup failed"),
            "k={k}: {e}"
        );
        assert!(st.poisoned().is_some(), "k={k}: {e}");
        let e = st.remove_volume("m").expect_err("poisoned");
        assert!(e.to_string().contains("must be reopened"), "k={k}: {e}");
        rec.state().fail_from = None;
        let report = st.reopen();
        assert!(st.poisoned().is_none(), "k={k}");
        assert!(report.problems.is_empty(), "k={k}: {:?}", report.problems);
        check_healthy(&st);
        if image(&st) == old {
            olds += 1;
            op(&mut st).unwrap_or_else(|e| panic!("k={k}: the change again: {e}"));
        } else {
            news += 1;
        }
        assert_eq!(copies(&st), 3, "k={k}: the leg is not there");
        st.remove_volume("m")
            .unwrap_or_else(|e| panic!("k={k}: a change after reopen: {e}"));
        check_healthy(&st);
    }
    // Both sides of the commit point were hit.
    assert!(olds > 0 && news > 0, "old {olds}, new {news}");
}
