//! Member replacement (`replace_member`) and the persisted job table.

mod common;
use common::*;
use tierblk_meta::store::Store;
use tierblk_meta::testing::SharedDisk;
use tierblk_meta::{
    Job, JobKind, JobState, Layout, LayoutKind, MemDisk, MemberHealth, MetaError, Uuid,
};

fn mirror2() -> Layout {
    Layout {
        kind: LayoutKind::Mirror,
        stripes: 1,
        copies: 2,
        chunk: 0,
    }
}

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

fn vol(st: &Store, name: &str) -> tierblk_meta::VolumeDef {
    st.image()
        .unwrap()
        .volumes
        .iter()
        .find(|v| v.name == name)
        .cloned()
        .unwrap()
}

fn scrub(volume: u64) -> Job {
    Job {
        id: 0,
        kind: JobKind::Scrub,
        volume,
        member: None,
        source: None,
        repair: false,
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

/// alu 0, 1: mirror "m" (4 MiB legs); alu 2 free; "lin" linear on alu 2; "st" stripe.
fn setup() -> (Vec<SharedDisk>, Store, Vec<Uuid>) {
    let (disks, mut st, a) = cluster(4);
    st.create_volume_with(
        "m",
        4 * MIB,
        mirror2(),
        &[(0, a[0], 4 * MIB), (1, a[1], 4 * MIB)],
    )
    .unwrap();
    st.create_volume("lin", 2 * MIB, &[(a[2], 2 * MIB)])
        .unwrap();
    st.create_volume_with(
        "st",
        2 * MIB,
        Layout {
            kind: LayoutKind::Stripe,
            stripes: 2,
            copies: 1,
            chunk: 65536,
        },
        &[(0, a[0], MIB), (1, a[1], MIB)],
    )
    .unwrap();
    (disks, st, a)
}

#[test]
fn replace_member_round_trip_and_frees_old_extents() {
    let (disks, mut st, a) = setup();
    let free1 = st.free_extents(a[1]);
    let before = vol(&st, "m");
    let (def, job) = st.replace_member("m", 1, a[3]).unwrap();
    assert_eq!(def.members[1], MemberHealth::Rebuilding { checkpoint: 0 });
    assert_eq!(def.members[0], MemberHealth::Ok);
    assert!(def.member_segments(1).all(|s| s.alu == a[3]));
    assert_eq!(
        def.member_segments(0).collect::<Vec<_>>(),
        before.member_segments(0).collect::<Vec<_>>()
    );
    assert_eq!(def.member_segments(1).map(|s| s.len).sum::<u64>(), 4 * MIB);
    assert_eq!(
        (job.kind, job.state, job.member, job.checkpoint, job.total),
        (JobKind::Rebuild, JobState::Running, Some(1), 0, 4 * MIB)
    );
    assert_eq!(job.volume, def.id);
    assert_eq!(st.jobs(), vec![job.clone()]);
    // old extents freed on the (writable) old ALU
    let free1b: u64 = st.free_extents(a[1]).iter().map(|e| e.len).sum();
    assert_eq!(free1b, free1.iter().map(|e| e.len).sum::<u64>() + 4 * MIB);
    assert_eq!(vol(&st, "m"), def);
    assert!(st.degraded_members("m").iter().any(|(m, _)| *m == 1));
    check_healthy(&st);
    let img = image(&st);
    drop(st);
    let (st2, rep) = open_shared(&disks, false);
    assert!(rep.repairs.is_empty() && rep.problems.is_empty(), "{rep:?}");
    assert_eq!(image(&st2), img);
    assert_eq!(st2.jobs(), vec![job]);
    check_healthy(&st2);
}

#[test]
fn replace_member_refusals_write_nothing() {
    let (disks, mut st, a) = setup();
    let snap = snapshot(&disks);
    let img = image(&st);
    let err = |st: &mut Store, v: &str, m: u16, alu: Uuid| -> String {
        let e = st.replace_member(v, m, alu).unwrap_err();
        let s = e.to_string();
        assert!(!s.contains('\n'), "{s}");
        s
    };
    let e = err(&mut st, "lin", 0, a[3]);
    assert!(e.contains("volume lin") && e.contains("Linear"), "{e}");
    let e = err(&mut st, "st", 0, a[3]);
    assert!(e.contains("volume st") && e.contains("Stripe"), "{e}");
    let e = err(&mut st, "nope", 0, a[3]);
    assert!(e.contains("volume nope: not found"), "{e}");
    let e = err(&mut st, "m", 2, a[3]);
    assert!(e.contains("no member 2"), "{e}");
    let bogus = Uuid([9; 16]);
    let e = err(&mut st, "m", 1, bogus);
    assert!(
        e.contains(&bogus.to_string()) && e.contains("not part"),
        "{e}"
    );
    let e = err(&mut st, "m", 1, a[0]);
    assert!(e.contains("holds member 0"), "{e}");
    assert_eq!(snapshot(&disks), snap);
    assert_eq!(image(&st), img);
    // a[2] has 2 MiB used by "lin": leave only 3 MiB free there
    let free2: u64 = st.free_extents(a[2]).iter().map(|e| e.len).sum();
    st.create_volume("fill", free2 - 3 * MIB, &[(a[2], free2 - 3 * MIB)])
        .unwrap();
    let snap = snapshot(&disks);
    let img = image(&st);
    let e = st.replace_member("m", 1, a[2]).unwrap_err();
    assert!(matches!(e, MetaError::NoSpace(_)), "{e}");
    assert!(e.to_string().contains(&a[2].to_string()), "{e}");
    assert_eq!(snapshot(&disks), snap);
    assert_eq!(image(&st), img);
    // last in-sync leg
    st.set_member_health("m", 1, MemberHealth::Failed { fail_seq: 0 })
        .unwrap();
    let snap = snapshot(&disks);
    let e = err(&mut st, "m", 0, a[3]);
    assert!(e.contains("last in-sync leg of mirror 0"), "{e}");
    assert_eq!(snapshot(&disks), snap);
    // failed target ALU
    st.fail_alu(a[3]).unwrap();
    let snap2 = snapshot(&disks);
    let e = err(&mut st, "m", 1, a[3]);
    assert!(e.contains("has failed"), "{e}");
    assert_eq!(snapshot(&disks), snap2);
    assert_ne!(snap, snap2);
}

#[test]
fn replace_member_on_failed_alu_never_writes_it() {
    let (disks, mut st, a) = setup();
    // "lin" and "st" would go offline with alu 1: remove the stripe
    st.remove_volume("st").unwrap();
    st.fail_alu(a[1]).unwrap();
    let dead = disks[1].lock().data.clone();
    let (def, job) = st.replace_member("m", 1, a[3]).unwrap();
    assert_eq!(def.members[1], MemberHealth::Rebuilding { checkpoint: 0 });
    assert!(def.segments.iter().all(|s| s.alu != a[1]));
    assert!(st.volume_problems().is_empty());
    // rebuild progresses and completes
    let mut j = job.clone();
    j.checkpoint = MIB;
    st.update_job(&j).unwrap();
    assert_eq!(
        vol(&st, "m").members[1],
        MemberHealth::Rebuilding { checkpoint: MIB }
    );
    j.checkpoint = j.total;
    j.state = JobState::Done;
    st.update_job(&j).unwrap();
    assert_eq!(vol(&st, "m").members[1], MemberHealth::Ok);
    assert!(st.degraded_members("m").is_empty());
    assert!(disks[1].lock().data == dead, "failed ALU written");
    drop(st);
    let (st2, rep) = open_shared(&disks, true);
    assert!(rep.repairs.is_empty(), "{:?}", rep.repairs);
    assert_eq!(st2.jobs(), vec![j]);
    assert!(disks[1].lock().data == dead, "failed ALU written");
}

#[test]
fn job_lifecycle_and_checks() {
    let (disks, mut st, a) = setup();
    let m = vol(&st, "m").id;
    let next = st.image().unwrap().next_id;
    let j = st
        .add_job(Job {
            id: 999,
            ..scrub(m)
        })
        .unwrap();
    assert_eq!(j.id, next);
    assert_eq!(st.image().unwrap().next_id, next + 1);
    let j2 = st.add_job(scrub(vol(&st, "lin").id)).unwrap();
    assert_eq!(j2.id, next + 1);
    // refusals write nothing
    let snap = snapshot(&disks);
    assert!(st
        .add_job(scrub(12345))
        .unwrap_err()
        .to_string()
        .contains("volume id 12345"));
    let bad = Job {
        member: Some(0),
        ..scrub(m)
    };
    assert!(st.add_job(bad).is_err());
    let rb_lin = Job {
        kind: JobKind::Rebuild,
        member: Some(0),
        ..scrub(vol(&st, "lin").id)
    };
    assert!(st
        .add_job(rb_lin)
        .unwrap_err()
        .to_string()
        .contains("redundancy"));
    let mut changed = j.clone();
    changed.volume = vol(&st, "lin").id;
    assert!(st
        .update_job(&changed)
        .unwrap_err()
        .to_string()
        .contains("cannot change"));
    let mut over = j.clone();
    over.checkpoint = over.total + 1;
    assert!(st.update_job(&over).is_err());
    assert!(st
        .update_job(&Job {
            id: 4242,
            ..j.clone()
        })
        .is_err());
    assert!(st
        .remove_job(4242)
        .unwrap_err()
        .to_string()
        .contains("job 4242"));
    // no-op update writes nothing
    st.update_job(&j).unwrap();
    assert_eq!(snapshot(&disks), snap);
    // long messages are cut at a character boundary
    let mut long = j.clone();
    long.message = "ü".repeat(100);
    st.update_job(&long).unwrap();
    assert_eq!(st.jobs()[0].message, "ü".repeat(63));
    // progress
    let mut p = j.clone();
    p.checkpoint = 2 * MIB;
    p.mismatches = 3;
    p.state = JobState::Paused;
    p.message = "cancelled by admin".into();
    st.update_job(&p).unwrap();
    assert_eq!(st.jobs(), vec![p.clone(), j2.clone()]);
    // rebuild job via add_job sets the member rebuilding
    let rb = Job {
        kind: JobKind::Rebuild,
        member: Some(1),
        checkpoint: MIB,
        ..scrub(m)
    };
    let rb = st.add_job(rb).unwrap();
    assert_eq!(
        vol(&st, "m").members[1],
        MemberHealth::Rebuilding { checkpoint: MIB }
    );
    assert!(st
        .add_job(Job {
            kind: JobKind::Rebuild,
            member: Some(1),
            ..scrub(m)
        })
        .unwrap_err()
        .to_string()
        .contains("already"));
    // Done before the end is refused; failing the ALU fails the job
    let mut d = rb.clone();
    d.state = JobState::Done;
    assert!(st.update_job(&d).is_err());
    st.fail_alu(a[1]).unwrap();
    let failed = st.jobs().into_iter().find(|x| x.id == rb.id).unwrap();
    assert_eq!(failed.state, JobState::Failed);
    assert!(failed.message.contains("failed"), "{}", failed.message);
    let img = image(&st);
    drop(st);
    let (mut st, _) = open_shared(&disks, true);
    assert_eq!(image(&st), img);
    // remove_volume drops the volume's jobs
    st.remove_volume("lin").unwrap();
    assert!(st.jobs().iter().all(|x| x.volume != j2.volume));
    st.remove_job(p.id).unwrap();
    assert_eq!(st.jobs().len(), 1);
}

#[test]
fn job_table_limit_and_pruning() {
    let (_disks, mut st, _a) = setup();
    let m = vol(&st, "m").id;
    let mut ids = Vec::new();
    for _ in 0..64 {
        ids.push(st.add_job(scrub(m)).unwrap().id);
    }
    let e = st.add_job(scrub(m)).unwrap_err();
    assert!(e.to_string().contains("job table full"), "{e}");
    // finish 20: the table keeps the newest 16 finished ones, making room
    for (i, id) in ids.iter().take(20).enumerate() {
        let mut j = st.jobs().into_iter().find(|x| x.id == *id).unwrap();
        j.state = if i % 2 == 0 {
            JobState::Done
        } else {
            JobState::Failed
        };
        st.update_job(&j).unwrap();
    }
    let jobs = st.jobs();
    assert_eq!(jobs.len(), 60);
    assert!(jobs.iter().all(|x| x.id > ids[3]));
    st.add_job(scrub(m)).unwrap();
    assert_eq!(st.jobs().len(), 61);
}
