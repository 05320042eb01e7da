//! Online reshapes: add a mirror leg (`add_leg`), remove one (`remove_leg`), move a
//! member to another ALU (`move_member` + `finish_move`) and grow a linear or stripe
//! volume by concatenation (`extend_volume`). Each commits like `replace_member`;
//! refusals write nothing; every result survives a reopen; and a random sequence of
//! reshapes never leaves a committed segment unallocated or two extents overlapping.

mod common;
use common::*;
use tierblk_meta::store::Store;
use tierblk_meta::testing::{replay, Recorder, SharedDisk, XorShift};
use tierblk_meta::{
    Job, JobKind, JobState, Layout, LayoutKind, MemDisk, MemberHealth, MetaError, Uuid, VolumeDef,
};

fn mirror(k: u16) -> Layout {
    Layout {
        kind: LayoutKind::Mirror,
        stripes: 1,
        copies: k,
        chunk: 0,
    }
}

fn stripe2() -> Layout {
    Layout {
        kind: LayoutKind::Stripe,
        stripes: 2,
        copies: 1,
        chunk: 64 * 1024,
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

/// A 2 x 2 raid10 `name` of `size` bytes, member m on ALU a[m].
fn raid10_on(st: &mut Store, name: &str, size: u64, a: &[Uuid]) {
    let plan: Vec<(u16, Uuid, u64)> = (0..4).map(|m| (m as u16, a[m], size / 2)).collect();
    st.create_volume_with(name, size, raid10_2x2(), &plan)
        .unwrap();
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

fn vol(st: &Store, name: &str) -> VolumeDef {
    st.image()
        .unwrap()
        .volumes
        .iter()
        .find(|v| v.name == name)
        .cloned()
        .unwrap_or_else(|| panic!("volume {name} not found"))
}

fn job(st: &Store, id: u64) -> Job {
    st.jobs().into_iter().find(|j| j.id == id).unwrap()
}

fn free_total(st: &Store, alu: Uuid) -> u64 {
    st.free_extents(alu).iter().map(|e| e.len).sum()
}

/// (alu, len) of every segment of `member`, in concatenation order.
fn pieces(def: &VolumeDef, member: u16) -> Vec<(Uuid, u64)> {
    def.member_segments(member)
        .map(|s| (s.alu, s.len))
        .collect()
}

/// Reopen the disks read-only and check the image, the jobs and the invariants.
fn reopen_same(disks: &[SharedDisk], st: &Store) {
    let img = image(st);
    let (st2, rep) = open_shared(disks, false);
    assert!(rep.repairs.is_empty() && rep.problems.is_empty(), "{rep:?}");
    assert_eq!(image(&st2), img);
    assert_eq!(st2.jobs(), st.jobs());
    check_healthy(&st2);
    check_no_garbage(&st2, &[]);
}

/// `f` fails with an error whose text contains `want`, and neither the image nor a
/// single byte on any disk changed.
fn refused<T: std::fmt::Debug>(
    disks: &[SharedDisk],
    st: &mut Store,
    want: &str,
    f: impl FnOnce(&mut Store) -> Result<T, MetaError>,
) -> MetaError {
    let before = snapshot(disks);
    let img = image(st);
    let e = f(st).expect_err(want);
    assert!(e.to_string().contains(want), "{e} (wanted {want:?})");
    assert_eq!(image(st), img, "refusal changed the image: {e}");
    assert!(snapshot(disks) == before, "refusal wrote: {e}");
    e
}

fn complete(st: &mut Store, id: u64, state: JobState) {
    let mut j = job(st, id);
    j.checkpoint = j.total;
    j.state = state;
    st.update_job(&j).unwrap();
}

// ------------------------------------------------------------------ add leg

#[test]
fn add_leg_turns_a_linear_volume_into_a_mirror() {
    let (disks, mut st, a) = cluster(3);
    let lin = st
        .create_volume("lin", 4 * MIB, &[(a[0], 3 * MIB), (a[1], MIB)])
        .unwrap();
    assert!(lin.wi_slots.is_empty());
    let free2 = free_total(&st, a[2]);
    let (def, j) = st.add_leg("lin", a[2]).unwrap();
    assert_eq!(def.layout, mirror(2));
    assert_eq!(def.size, 4 * MIB);
    assert_eq!(
        def.members,
        vec![MemberHealth::Ok, MemberHealth::Rebuilding { checkpoint: 0 }]
    );
    assert_eq!(pieces(&def, 0), pieces(&lin, 0));
    assert_eq!(pieces(&def, 1), vec![(a[2], 4 * MIB)]);
    assert_eq!(free_total(&st, a[2]), free2 - 4 * MIB);
    // both legs get a write-intent slot on the ALU of their first segment
    assert_eq!(def.wi_slots.len(), 2);
    assert_eq!(st.wi_location("lin", 0).unwrap().0, a[0]);
    assert_eq!(st.wi_location("lin", 1).unwrap().0, a[2]);
    assert_eq!(
        (j.kind, j.state, j.member, j.source, j.checkpoint, j.total),
        (
            JobKind::Rebuild,
            JobState::Running,
            Some(1),
            None,
            0,
            4 * MIB
        )
    );
    assert_eq!(j.volume, def.id);
    assert_eq!(st.jobs(), vec![j.clone()]);
    assert_eq!(vol(&st, "lin"), def);
    assert!(st.degraded_members("lin").iter().any(|(m, _)| *m == 1));
    check_healthy(&st);
    check_no_garbage(&st, &[]);
    reopen_same(&disks, &st);
    // the rebuild brings the new leg in sync
    complete(&mut st, j.id, JobState::Done);
    assert_eq!(vol(&st, "lin").members, vec![MemberHealth::Ok; 2]);
    assert!(st.degraded_members("lin").is_empty());
    reopen_same(&disks, &st);
}

#[test]
fn add_leg_grows_a_mirror_to_three_legs() {
    let (disks, mut st, a) = cluster(3);
    let m = st
        .create_volume_with(
            "m",
            4 * MIB,
            mirror(2),
            &[(0, a[0], 4 * MIB), (1, a[1], 4 * MIB)],
        )
        .unwrap();
    let (def, j) = st.add_leg("m", a[2]).unwrap();
    assert_eq!(def.layout, mirror(3));
    assert_eq!(def.members.len(), 3);
    assert_eq!(def.members[2], MemberHealth::Rebuilding { checkpoint: 0 });
    assert_eq!(pieces(&def, 0), pieces(&m, 0));
    assert_eq!(pieces(&def, 1), pieces(&m, 1));
    assert_eq!(pieces(&def, 2), vec![(a[2], 4 * MIB)]);
    assert_eq!(def.wi_slots[..2], m.wi_slots[..]);
    assert_eq!(def.wi_slots.len(), 3);
    assert_eq!(st.wi_location("m", 2).unwrap().0, a[2]);
    assert_eq!((j.kind, j.member), (JobKind::Rebuild, Some(2)));
    check_healthy(&st);
    check_no_garbage(&st, &[]);
    reopen_same(&disks, &st);
}

/// The volumes every refusal test works on besides its linear one: a
/// stripe "st", a raid10 "r10", a 4-leg mirror "m4" and a 2-leg mirror "m".
fn refusal_volumes(st: &mut Store, a: &[Uuid]) {
    st.create_volume_with("st", 2 * MIB, stripe2(), &[(0, a[0], MIB), (1, a[1], MIB)])
        .unwrap();
    raid10_on(st, "r10", 4 * MIB, a);
    st.create_volume_with(
        "m4",
        MIB,
        mirror(4),
        &[
            (0, a[0], MIB),
            (1, a[1], MIB),
            (2, a[2], MIB),
            (3, a[3], MIB),
        ],
    )
    .unwrap();
    st.create_volume_with("m", MIB, mirror(2), &[(0, a[0], MIB), (1, a[1], MIB)])
        .unwrap();
}

#[test]
fn add_leg_refusals_write_nothing() {
    let (disks, mut st, a) = cluster(5);
    st.create_volume("lin", 4 * MIB, &[(a[0], 4 * MIB)])
        .unwrap();
    refusal_volumes(&mut st, &a);
    st.create_snapshot("snap", "lin", 2 * MIB, 64 << 10, &[(a[1], 2 * MIB)])
        .unwrap();
    let e = refused(&disks, &mut st, "only linear and mirror volumes", |st| {
        st.add_leg("st", a[4])
    });
    assert!(matches!(e, MetaError::Refused(_)));
    refused(&disks, &mut st, "only linear and mirror volumes", |st| {
        st.add_leg("r10", a[4])
    });
    refused(&disks, &mut st, "mirror has 4 legs", |st| {
        st.add_leg("m4", a[4])
    });
    refused(&disks, &mut st, "snapshot", |st| st.add_leg("snap", a[4]));
    refused(
        &disks,
        &mut st,
        &format!(
            "volume m: add leg refused: ALU {} holds member 1, another leg of mirror 0",
            a[1]
        ),
        |st| st.add_leg("m", a[1]),
    );
    refused(
        &disks,
        &mut st,
        "holds member 0, another leg of mirror 0",
        |st| st.add_leg("lin", a[0]),
    );
    refused(&disks, &mut st, "not found", |st| st.add_leg("nope", a[4]));
    refused(&disks, &mut st, "not part of the cluster", |st| {
        st.add_leg("lin", Uuid([9; 16]))
    });
    // no space: fill ALU 4
    let room = free_total(&st, a[4]);
    st.create_volume("fill", room - 2 * MIB, &[(a[4], room - 2 * MIB)])
        .unwrap();
    let e = refused(&disks, &mut st, "not enough free space on ALU", |st| {
        st.add_leg("lin", a[4])
    });
    assert!(matches!(e, MetaError::NoSpace(_)), "{e}");
    st.remove_volume("fill").unwrap();
    // an unfinished move holds the volume's legs
    let (_, mv) = st.move_member("m", 0, a[2]).unwrap();
    refused(
        &disks,
        &mut st,
        &format!("move job {} is unfinished", mv.id),
        |st| st.add_leg("m", a[3]),
    );
    // a failed ALU takes no new leg; an offline volume takes none
    st.fail_alu(a[3]).unwrap();
    refused(&disks, &mut st, "has failed", |st| st.add_leg("lin", a[3]));
    st.fail_alu(a[0]).unwrap();
    refused(&disks, &mut st, "volume is offline", |st| {
        st.add_leg("lin", a[4])
    });
}

// --------------------------------------------------------------- remove leg

#[test]
fn remove_leg_three_to_two_renumbers_later_members_and_their_jobs() {
    let (disks, mut st, a) = cluster(4);
    st.create_volume_with(
        "m",
        4 * MIB,
        mirror(3),
        &[
            (0, a[0], 4 * MIB),
            (1, a[1], 2 * MIB),
            (1, a[3], 2 * MIB),
            (2, a[2], 4 * MIB),
        ],
    )
    .unwrap();
    let id = vol(&st, "m").id;
    // member 2 is rebuilding (a job), member 1 too (another job)
    let rb = |member| Job {
        id: 0,
        kind: JobKind::Rebuild,
        volume: id,
        member: Some(member),
        source: None,
        repair: false,
        state: JobState::Running,
        checkpoint: MIB,
        total: 4 * MIB,
        mismatches: 0,
        repaired: 0,
        rate: 0,
        dirty_only: false,
        message: String::new(),
    };
    let j2 = st.add_job(rb(2)).unwrap();
    let j1 = st.add_job(rb(1)).unwrap();
    let old = vol(&st, "m");
    let (free1, free3) = (free_total(&st, a[1]), free_total(&st, a[3]));
    let def = st.remove_leg("m", 1).unwrap();
    assert_eq!(def.layout, mirror(2));
    assert_eq!(
        def.members,
        vec![
            MemberHealth::Ok,
            MemberHealth::Rebuilding { checkpoint: MIB }
        ]
    );
    assert_eq!(pieces(&def, 0), pieces(&old, 0));
    assert_eq!(pieces(&def, 1), pieces(&old, 2));
    assert_eq!(def.member_segments(2).count(), 0);
    assert!(def.segments.iter().all(|s| s.member < 2));
    assert_eq!(def.wi_slots, vec![old.wi_slots[0], old.wi_slots[2]]);
    assert_eq!(st.wi_location("m", 1).unwrap().0, a[2]);
    // the later member's rebuild follows it; the removed member's fails
    assert_eq!(job(&st, j2.id).member, Some(1));
    assert_eq!(job(&st, j2.id).state, JobState::Running);
    let f = job(&st, j1.id);
    assert_eq!((f.state, f.member), (JobState::Failed, Some(1)));
    assert_eq!(f.message, "leg removed");
    // the removed leg's extents are free again
    assert_eq!(free_total(&st, a[1]), free1 + 2 * MIB);
    assert_eq!(free_total(&st, a[3]), free3 + 2 * MIB);
    check_healthy(&st);
    check_no_garbage(&st, &[]);
    reopen_same(&disks, &st);
    // the renumbered job still drives its (renumbered) member
    complete(&mut st, j2.id, JobState::Done);
    assert_eq!(vol(&st, "m").members, vec![MemberHealth::Ok; 2]);
}

#[test]
fn remove_leg_two_to_one_makes_the_volume_linear() {
    let (disks, mut st, a) = cluster(2);
    st.create_volume_with(
        "m",
        4 * MIB,
        mirror(2),
        &[(0, a[0], 4 * MIB), (1, a[1], 4 * MIB)],
    )
    .unwrap();
    let old = vol(&st, "m");
    let scrub = st
        .add_job(Job {
            id: 0,
            kind: JobKind::Scrub,
            volume: old.id,
            member: None,
            source: None,
            repair: true,
            state: JobState::Paused,
            checkpoint: MIB,
            total: 4 * MIB,
            mismatches: 0,
            repaired: 0,
            rate: 0,
            dirty_only: false,
            message: String::new(),
        })
        .unwrap();
    let free0 = free_total(&st, a[0]);
    let def = st.remove_leg("m", 0).unwrap();
    assert_eq!(def.layout, Layout::linear());
    assert_eq!(def.members, vec![MemberHealth::Ok]);
    assert!(def.wi_slots.is_empty());
    assert_eq!(st.wi_location("m", 0), None);
    assert_eq!(pieces(&def, 0), pieces(&old, 1));
    assert!(def.segments.iter().all(|s| s.member == 0));
    let s = job(&st, scrub.id);
    assert_eq!(
        (s.state, s.message.as_str()),
        (JobState::Done, "volume no longer mirrored")
    );
    assert_eq!(free_total(&st, a[0]), free0 + 4 * MIB);
    check_healthy(&st);
    check_no_garbage(&st, &[]);
    reopen_same(&disks, &st);
}

#[test]
fn remove_leg_never_removes_the_last_in_sync_leg() {
    let (disks, mut st, a) = cluster(4);
    st.create_volume_with("m", MIB, mirror(2), &[(0, a[0], MIB), (1, a[1], MIB)])
        .unwrap();
    st.create_volume("lin", MIB, &[(a[0], MIB)]).unwrap();
    st.create_volume_with("st", 2 * MIB, stripe2(), &[(0, a[0], MIB), (1, a[1], MIB)])
        .unwrap();
    raid10_on(&mut st, "r10", 4 * MIB, &a);
    refused(&disks, &mut st, "only mirror volumes drop a leg", |st| {
        st.remove_leg("lin", 0)
    });
    refused(&disks, &mut st, "only mirror volumes drop a leg", |st| {
        st.remove_leg("st", 1)
    });
    refused(&disks, &mut st, "(this is a raid10 volume)", |st| {
        st.remove_leg("r10", 1)
    });
    let e = refused(&disks, &mut st, "volume m: no member 2", |st| {
        st.remove_leg("m", 2)
    });
    assert!(matches!(e, MetaError::NotFound(_)));
    // member 1 rebuilding: member 0 is the last in-sync leg
    st.set_member_health("m", 1, MemberHealth::Rebuilding { checkpoint: 0 })
        .unwrap();
    refused(
        &disks,
        &mut st,
        "volume m: member 0: remove leg refused: it is the last in-sync leg of mirror 0",
        |st| st.remove_leg("m", 0),
    );
    // member 1 failed: same; but the failed leg itself may go
    st.set_member_health("m", 1, MemberHealth::Failed { fail_seq: 0 })
        .unwrap();
    refused(&disks, &mut st, "last in-sync leg", |st| {
        st.remove_leg("m", 0)
    });
    let def = st.remove_leg("m", 1).unwrap();
    assert_eq!(def.layout, Layout::linear());
    assert_eq!(pieces(&def, 0), vec![(a[0], MIB)]);
    check_healthy(&st);
    reopen_same(&disks, &st);
}

#[test]
fn remove_leg_on_a_failed_alu_never_writes_it() {
    let (disks, mut st, a) = cluster(3);
    st.create_volume_with(
        "m",
        2 * MIB,
        mirror(3),
        &[(0, a[0], 2 * MIB), (1, a[1], 2 * MIB), (2, a[2], 2 * MIB)],
    )
    .unwrap();
    st.fail_alu(a[1]).unwrap();
    let dead = disks[1].lock().data.clone();
    let def = st.remove_leg("m", 1).unwrap();
    assert_eq!(def.layout, mirror(2));
    assert_eq!(pieces(&def, 1), vec![(a[2], 2 * MIB)]);
    assert_eq!(def.members, vec![MemberHealth::Ok; 2]);
    assert!(st.degraded_members("m").is_empty());
    assert!(disks[1].lock().data == dead, "failed ALU written");
    check_healthy_except(&st, &[a[1]]);
    let img = image(&st);
    drop(st);
    let (st2, rep) = open_shared(&disks, true);
    assert_eq!(image(&st2), img);
    assert_eq!(rep.problems.len(), 1, "{rep:?}");
    assert!(disks[1].lock().data == dead, "failed ALU written");
}

// --------------------------------------------------------------------- move

#[test]
fn move_a_linear_volume_to_another_alu() {
    let (disks, mut st, a) = cluster(3);
    let lin = st
        .create_volume("lin", 4 * MIB, &[(a[0], 2 * MIB), (a[1], 2 * MIB)])
        .unwrap();
    let (free0, free1) = (free_total(&st, a[0]), free_total(&st, a[1]));
    let (def, mv) = st.move_member("lin", 0, a[2]).unwrap();
    assert_eq!(def.layout, mirror(2));
    assert_eq!(
        def.members,
        vec![MemberHealth::Ok, MemberHealth::Rebuilding { checkpoint: 0 }]
    );
    assert_eq!(pieces(&def, 0), pieces(&lin, 0));
    assert_eq!(pieces(&def, 1), vec![(a[2], 4 * MIB)]);
    assert_eq!(def.wi_slots.len(), 2);
    assert_eq!(
        (
            mv.kind,
            mv.state,
            mv.member,
            mv.source,
            mv.checkpoint,
            mv.total
        ),
        (
            JobKind::Move,
            JobState::Running,
            Some(1),
            Some(0),
            0,
            4 * MIB
        )
    );
    assert_eq!(st.jobs(), vec![mv.clone()]);
    check_healthy(&st);
    check_no_garbage(&st, &[]);
    reopen_same(&disks, &st);
    // progress drives the target's health, as a rebuild's does
    let mut p = mv.clone();
    p.checkpoint = MIB;
    p.state = JobState::Paused;
    st.update_job(&p).unwrap();
    assert_eq!(
        vol(&st, "lin").members[1],
        MemberHealth::Rebuilding { checkpoint: MIB }
    );
    // a move never becomes Done by update_job ...
    let mut d = p.clone();
    d.checkpoint = d.total;
    d.state = JobState::Done;
    let e = refused(
        &disks,
        &mut st,
        &format!("job {}: a move ends with finish_move", mv.id),
        |st| st.update_job(&d),
    );
    assert!(matches!(e, MetaError::Refused(_)));
    // ... and finish_move wants the whole copy
    refused(
        &disks,
        &mut st,
        &format!("job {}: copy not complete (1048576 of 4194304)", mv.id),
        |st| st.finish_move(mv.id),
    );
    complete(&mut st, mv.id, JobState::Running);
    assert_eq!(
        vol(&st, "lin").members[1],
        MemberHealth::Rebuilding {
            checkpoint: 4 * MIB
        }
    );
    let def = st.finish_move(mv.id).unwrap();
    assert_eq!(def.layout, Layout::linear());
    assert_eq!(def.members, vec![MemberHealth::Ok]);
    assert!(def.wi_slots.is_empty());
    assert_eq!(pieces(&def, 0), vec![(a[2], 4 * MIB)]);
    assert_eq!(def.size, 4 * MIB);
    let done = job(&st, mv.id);
    assert_eq!(done.state, JobState::Done);
    assert_eq!((done.member, done.source), (Some(1), Some(0)));
    // the source's extents are free again
    assert_eq!(free_total(&st, a[0]), free0 + 2 * MIB);
    assert_eq!(free_total(&st, a[1]), free1 + 2 * MIB);
    assert!(st.degraded_members("lin").is_empty());
    check_healthy(&st);
    check_no_garbage(&st, &[]);
    reopen_same(&disks, &st);
    refused(
        &disks,
        &mut st,
        "finish move refused: the job is Done",
        |st| st.finish_move(mv.id),
    );
}

#[test]
fn move_leg_0_of_a_two_leg_mirror() {
    let (disks, mut st, a) = cluster(3);
    let m = st
        .create_volume_with(
            "m",
            4 * MIB,
            mirror(2),
            &[(0, a[0], 4 * MIB), (1, a[1], 4 * MIB)],
        )
        .unwrap();
    let (def, mv) = st.move_member("m", 0, a[2]).unwrap();
    assert_eq!(def.layout, mirror(3));
    assert_eq!((mv.member, mv.source), (Some(2), Some(0)));
    assert_eq!(pieces(&def, 2), vec![(a[2], 4 * MIB)]);
    complete(&mut st, mv.id, JobState::Running);
    let free0 = free_total(&st, a[0]);
    let def = st.finish_move(mv.id).unwrap();
    assert_eq!(def.layout, mirror(2));
    assert_eq!(def.members, vec![MemberHealth::Ok; 2]);
    // old member 1 is member 0 now; the target is member 1
    assert_eq!(pieces(&def, 0), pieces(&m, 1));
    assert_eq!(pieces(&def, 1), vec![(a[2], 4 * MIB)]);
    assert_eq!(def.wi_slots.len(), 2);
    assert_eq!(def.wi_slots[0], m.wi_slots[1]);
    assert_eq!(st.wi_location("m", 0).unwrap().0, a[1]);
    assert_eq!(st.wi_location("m", 1).unwrap().0, a[2]);
    assert_eq!(free_total(&st, a[0]), free0 + 4 * MIB);
    assert_eq!(job(&st, mv.id).state, JobState::Done);
    check_healthy(&st);
    check_no_garbage(&st, &[]);
    reopen_same(&disks, &st);
}

#[test]
fn move_refusals_write_nothing() {
    let (disks, mut st, a) = cluster(5);
    st.create_volume("lin", MIB, &[(a[0], MIB)]).unwrap();
    refusal_volumes(&mut st, &a);
    // a stripe or raid10 move's target: not onto the source's ALU nor another
    // leg of its mirror
    refused(
        &disks,
        &mut st,
        "volume st: move refused: member 0 is on ALU",
        |st| st.move_member("st", 0, a[0]),
    );
    refused(&disks, &mut st, "volume r10: move refused: ALU", |st| {
        st.move_member("r10", 0, a[1])
    });
    refused(
        &disks,
        &mut st,
        "holds member 1, another leg of mirror 0",
        |st| st.move_member("r10", 0, a[1]),
    );
    refused(
        &disks,
        &mut st,
        "volume m4: move refused: mirror has 4 legs: remove one or use alu replace",
        |st| st.move_member("m4", 0, a[4]),
    );
    let e = refused(&disks, &mut st, "volume lin: no member 1", |st| {
        st.move_member("lin", 1, a[4])
    });
    assert!(matches!(e, MetaError::NotFound(_)));
    // onto an ALU holding a leg (the source's own ALU included)
    refused(&disks, &mut st, "holds member 1, another leg", |st| {
        st.move_member("m", 0, a[1])
    });
    refused(&disks, &mut st, "holds member 0, another leg", |st| {
        st.move_member("m", 0, a[0])
    });
    refused(&disks, &mut st, "holds member 0", |st| {
        st.move_member("lin", 0, a[0])
    });
    // a leg that is not in sync is replaced, not moved
    st.set_member_health("m", 1, MemberHealth::Failed { fail_seq: 0 })
        .unwrap();
    refused(
        &disks,
        &mut st,
        "volume m: member 1: move refused: it is not in sync (failed (fail_seq",
        |st| st.move_member("m", 1, a[4]),
    );
    refused(&disks, &mut st, "use alu replace", |st| {
        st.move_member("m", 1, a[4])
    });
    st.set_member_health("m", 1, MemberHealth::Ok).unwrap();
    // one move at a time
    let (_, mv) = st.move_member("m", 1, a[4]).unwrap();
    refused(
        &disks,
        &mut st,
        &format!("move job {} is unfinished", mv.id),
        |st| st.move_member("m", 0, a[3]),
    );
    // a move job is not added by hand
    let mut hand = mv.clone();
    hand.member = Some(1);
    hand.source = Some(0);
    refused(&disks, &mut st, "move_member", |st| st.add_job(hand));
    // finish_move wants a move job
    let rb = st.add_leg("lin", a[1]).unwrap().1;
    refused(&disks, &mut st, "not a move job", |st| {
        st.finish_move(rb.id)
    });
    refused(&disks, &mut st, "job 99999: not found", |st| {
        st.finish_move(99999)
    });
}

#[test]
fn remove_leg_during_a_move() {
    let (disks, mut st, a) = cluster(4);
    st.create_volume_with(
        "m",
        2 * MIB,
        mirror(2),
        &[(0, a[0], 2 * MIB), (1, a[1], 2 * MIB)],
    )
    .unwrap();
    let (_, mv) = st.move_member("m", 0, a[2]).unwrap();
    // the source stays while the move runs
    refused(
        &disks,
        &mut st,
        &format!(
            "volume m: remove leg refused: a move is using member 0: cancel job {} first",
            mv.id
        ),
        |st| st.remove_leg("m", 0),
    );
    // another leg may go: the move's members are renumbered
    let def = st.remove_leg("m", 1).unwrap();
    assert_eq!(def.layout, mirror(2));
    let j = job(&st, mv.id);
    assert_eq!(
        (j.state, j.member, j.source),
        (JobState::Running, Some(1), Some(0))
    );
    assert_eq!(pieces(&def, 1), vec![(a[2], 2 * MIB)]);
    // ... and it still finishes
    complete(&mut st, mv.id, JobState::Running);
    let def = st.finish_move(mv.id).unwrap();
    assert_eq!(def.layout, Layout::linear());
    assert_eq!(pieces(&def, 0), vec![(a[2], 2 * MIB)]);
    check_healthy(&st);
    // removing the target ends the move
    let (_, mv2) = st.move_member("m", 0, a[3]).unwrap();
    let def = st.remove_leg("m", 1).unwrap();
    assert_eq!(def.layout, Layout::linear());
    assert_eq!(pieces(&def, 0), vec![(a[2], 2 * MIB)]);
    let j = job(&st, mv2.id);
    assert_eq!(
        (j.state, j.message.as_str()),
        (JobState::Failed, "target leg removed")
    );
    check_healthy(&st);
    check_no_garbage(&st, &[]);
    reopen_same(&disks, &st);
}

// ------------------------------------------------------------------- extend

#[test]
fn extend_a_linear_volume_by_concatenation() {
    let (disks, mut st, a) = cluster(2);
    let lin = st
        .create_volume("lin", 2 * MIB, &[(a[0], 2 * MIB)])
        .unwrap();
    let def = st.extend_volume("lin", 3 * MIB, &[a[1]]).unwrap();
    assert_eq!(def.size, 5 * MIB);
    assert_eq!(def.layout, Layout::linear());
    assert_eq!(pieces(&def, 0), vec![(a[0], 2 * MIB), (a[1], 3 * MIB)]);
    assert_eq!(def.segments[0], lin.segments[0]);
    assert_eq!((def.id, def.wwn), (lin.id, lin.wwn));
    check_healthy(&st);
    check_no_garbage(&st, &[]);
    reopen_same(&disks, &st);
    // again, fragmented: several extents, appended in order
    st.create_volume("f1", 2 * MIB, &[(a[0], 2 * MIB)]).unwrap();
    st.create_volume("f2", MIB, &[(a[0], MIB)]).unwrap();
    st.remove_volume("f1").unwrap();
    let room = free_total(&st, a[0]);
    st.create_volume("f3", room - 3 * MIB, &[(a[0], room - 3 * MIB)])
        .unwrap();
    let def = st.extend_volume("lin", 3 * MIB, &[a[0]]).unwrap();
    assert_eq!(def.size, 8 * MIB);
    let p = pieces(&def, 0);
    assert_eq!(p[..2], [(a[0], 2 * MIB), (a[1], 3 * MIB)]);
    assert!(p.len() >= 4, "{p:?}");
    assert_eq!(p[2..].iter().map(|x| x.1).sum::<u64>(), 3 * MIB);
    check_healthy(&st);
    reopen_same(&disks, &st);
}

#[test]
fn extend_a_stripe_volume() {
    let (disks, mut st, a) = cluster(3);
    let s = st
        .create_volume_with("st", 2 * MIB, stripe2(), &[(0, a[0], MIB), (1, a[1], MIB)])
        .unwrap();
    // both new pieces on one ALU: they must not overlap
    let def = st.extend_volume("st", 4 * MIB, &[a[2], a[2]]).unwrap();
    assert_eq!(def.size, 6 * MIB);
    assert_eq!(def.layout, stripe2());
    assert_eq!(pieces(&def, 0), vec![(a[0], MIB), (a[2], 2 * MIB)]);
    assert_eq!(pieces(&def, 1), vec![(a[1], MIB), (a[2], 2 * MIB)]);
    assert_eq!(def.member_segments(0).next(), s.member_segments(0).next());
    check_healthy(&st);
    check_no_garbage(&st, &[]);
    reopen_same(&disks, &st);
}

#[test]
fn extend_a_mirror_copies_the_new_part_of_every_other_leg() {
    let (disks, mut st, a) = cluster(4);
    let m = st
        .create_volume_with(
            "m",
            2 * MIB,
            mirror(3),
            &[(0, a[0], 2 * MIB), (1, a[1], 2 * MIB), (2, a[2], 2 * MIB)],
        )
        .unwrap();
    let def = st.extend_volume("m", 3 * MIB, &[a[3], a[1], a[2]]).unwrap();
    assert_eq!(def.size, 5 * MIB);
    assert_eq!(def.layout, mirror(3));
    assert_eq!(pieces(&def, 0), vec![(a[0], 2 * MIB), (a[3], 3 * MIB)]);
    assert_eq!(pieces(&def, 1), vec![(a[1], 2 * MIB), (a[1], 3 * MIB)]);
    assert_eq!(pieces(&def, 2), vec![(a[2], 2 * MIB), (a[2], 3 * MIB)]);
    // the first leg keeps serving; the others copy from the old end on
    assert_eq!(
        def.members,
        vec![
            MemberHealth::Ok,
            MemberHealth::Rebuilding {
                checkpoint: 2 * MIB
            },
            MemberHealth::Rebuilding {
                checkpoint: 2 * MIB
            },
        ]
    );
    assert_eq!(def.wi_slots, m.wi_slots, "the bitmaps keep their slots");
    let jobs: Vec<Job> = st
        .jobs()
        .into_iter()
        .filter(|j| j.volume == def.id)
        .collect();
    assert_eq!(jobs.len(), 2, "{jobs:?}");
    for (j, member) in jobs.iter().zip([1, 2]) {
        assert_eq!(j.kind, JobKind::Rebuild);
        assert_eq!(j.member, Some(member));
        assert_eq!((j.checkpoint, j.total), (2 * MIB, 5 * MIB));
        assert_eq!(j.state, JobState::Running);
        assert!(!j.dirty_only);
    }
    check_healthy(&st);
    check_no_garbage(&st, &[]);
    reopen_same(&disks, &st);
    // a second extend waits for the copies
    refused(
        &disks,
        &mut st,
        &format!("rebuild job {} is unfinished", jobs[0].id),
        |st| st.extend_volume("m", MIB, &[a[3], a[1], a[2]]),
    );
    for j in &jobs {
        complete(&mut st, j.id, JobState::Done);
    }
    assert_eq!(vol(&st, "m").members, vec![MemberHealth::Ok; 3]);
    let def = st.extend_volume("m", MIB, &[a[3], a[1], a[2]]).unwrap();
    assert_eq!(def.size, 6 * MIB);
    check_healthy(&st);
    reopen_same(&disks, &st);
}

#[test]
fn extend_a_raid10_volume() {
    let (disks, mut st, a) = cluster(4);
    raid10_on(&mut st, "r", 2 * MIB, &a);
    let def = st
        .extend_volume("r", 4 * MIB, &[a[2], a[3], a[0], a[1]])
        .unwrap();
    assert_eq!(def.size, 6 * MIB);
    for (m, alu) in [a[2], a[3], a[0], a[1]].into_iter().enumerate() {
        assert_eq!(pieces(&def, m as u16)[1..], [(alu, 2 * MIB)]);
    }
    let rebuilding = MemberHealth::Rebuilding { checkpoint: MIB };
    assert_eq!(
        def.members,
        vec![MemberHealth::Ok, rebuilding, MemberHealth::Ok, rebuilding]
    );
    let jobs: Vec<(Option<u16>, u64, u64)> = st
        .jobs()
        .into_iter()
        .filter(|j| j.volume == def.id)
        .map(|j| (j.member, j.checkpoint, j.total))
        .collect();
    assert_eq!(jobs, vec![(Some(1), MIB, 3 * MIB), (Some(3), MIB, 3 * MIB)]);
    check_healthy(&st);
    check_no_garbage(&st, &[]);
    reopen_same(&disks, &st);
}

#[test]
fn extend_refusals_of_a_mirror_write_nothing() {
    let (disks, mut st, a) = cluster(4);
    st.create_volume_with("m", MIB, mirror(2), &[(0, a[0], MIB), (1, a[1], MIB)])
        .unwrap();
    raid10_on(&mut st, "r", 2 * MIB, &a);
    refused(&disks, &mut st, "volume m: extend refused: ALU", |st| {
        st.extend_volume("m", MIB, &[a[2], a[2]])
    });
    let e = refused(
        &disks,
        &mut st,
        "holds member 0, another leg of mirror 0",
        |st| st.extend_volume("m", MIB, &[a[2], a[0]]),
    );
    assert!(e.to_string().contains(&a[0].to_string()), "{e}");
    refused(
        &disks,
        &mut st,
        "holds member 2, another leg of mirror 1",
        |st| st.extend_volume("r", 2 * MIB, &[a[2], a[3], a[0], a[2]]),
    );
    refused(
        &disks,
        &mut st,
        "4 ALUs given, one per member needed (2)",
        |st| st.extend_volume("m", MIB, &[a[2], a[3], a[2], a[3]]),
    );
    // a leg being rebuilt: its old part is not copied yet
    let (_, j) = st.add_leg("m", a[2]).unwrap();
    refused(
        &disks,
        &mut st,
        &format!("rebuild job {} is unfinished", j.id),
        |st| st.extend_volume("m", MIB, &[a[3], a[1], a[0]]),
    );
    let mut failed = job(&st, j.id);
    failed.state = JobState::Failed;
    st.update_job(&failed).unwrap();
    refused(&disks, &mut st, "member 2 is not in sync", |st| {
        st.extend_volume("m", MIB, &[a[3], a[1], a[0]])
    });
}

#[test]
fn extend_refusals_write_nothing() {
    let (disks, mut st, a) = cluster(3);
    st.create_volume("lin", 2 * MIB, &[(a[0], 2 * MIB)])
        .unwrap();
    st.create_volume("solo", 2 * MIB, &[(a[0], 2 * MIB)])
        .unwrap();
    st.create_volume_with("st", 2 * MIB, stripe2(), &[(0, a[0], MIB), (1, a[1], MIB)])
        .unwrap();
    st.create_volume_with("m", MIB, mirror(2), &[(0, a[0], MIB), (1, a[1], MIB)])
        .unwrap();
    st.create_snapshot("snap", "lin", 2 * MIB, 64 << 10, &[(a[1], 2 * MIB)])
        .unwrap();
    refused(&disks, &mut st, "it has snapshots (snap)", |st| {
        st.extend_volume("lin", MIB, &[a[2]])
    });
    refused(&disks, &mut st, "extend refused: it is a snapshot", |st| {
        st.extend_volume("snap", MIB, &[a[2]])
    });
    refused(&disks, &mut st, "non-zero multiple of 1 MiB", |st| {
        st.extend_volume("solo", 4096, &[a[2]])
    });
    refused(&disks, &mut st, "non-zero multiple of 1 MiB", |st| {
        st.extend_volume("solo", 0, &[a[2]])
    });
    refused(
        &disks,
        &mut st,
        "1 ALUs given, one per member needed (2)",
        |st| st.extend_volume("st", 2 * MIB, &[a[2]]),
    );
    // a stripe grows by whole MiB (and chunks) per member
    refused(&disks, &mut st, "must be a multiple of 1 MiB", |st| {
        st.extend_volume("st", MIB, &[a[2], a[2]])
    });
    refused(&disks, &mut st, "not part of the cluster", |st| {
        st.extend_volume("solo", MIB, &[Uuid([7; 16])])
    });
    let e = refused(&disks, &mut st, "not enough free space on ALU", |st| {
        st.extend_volume("solo", 100 * MIB, &[a[2]])
    });
    assert!(matches!(e, MetaError::NoSpace(_)));
    // the second member's piece does not fit once the first took its share
    let room = free_total(&st, a[2]);
    let half = room / 2 / MIB * MIB + MIB;
    refused(&disks, &mut st, "member 1: not enough free space", |st| {
        st.extend_volume("st", 2 * half, &[a[2], a[2]])
    });
}

// ---------------------------------------------------------- property test

/// Every committed segment is allocated, extents never overlap and no partition
/// leaked (every successful reshape cleaned up every ALU).
fn invariants(st: &Store, ctx: &str) {
    assert!(
        st.volume_problems().is_empty(),
        "{ctx}: {:?}",
        st.volume_problems()
    );
    check_healthy(st);
    check_no_garbage(st, &[]);
    for v in &st.image().unwrap().volumes {
        assert_eq!(v.members.len(), v.member_count(), "{ctx}: {}", v.name);
        for m in 0..v.member_count() as u16 {
            let total: u64 = v.member_segments(m).map(|s| s.len).sum();
            assert_eq!(
                total,
                v.layout.member_size(v.size),
                "{ctx}: {} member {m}",
                v.name
            );
        }
        assert!(
            v.wi_slots.is_empty() || v.wi_slots.len() == v.member_count(),
            "{ctx}: {}",
            v.name
        );
    }
    for j in st.jobs().iter().filter(|j| !j.state.finished()) {
        let v = st
            .image()
            .unwrap()
            .volumes
            .iter()
            .find(|v| v.id == j.volume)
            .cloned()
            .unwrap();
        if let Some(m) = j.member {
            assert!(usize::from(m) < v.member_count(), "{ctx}: {j:?}");
            assert!(
                matches!(v.members[usize::from(m)], MemberHealth::Rebuilding { .. }),
                "{ctx}: {j:?} {:?}",
                v.members
            );
        }
        if let Some(s) = j.source {
            assert!(usize::from(s) < v.layout.members(), "{ctx}: {j:?}");
        }
    }
}

#[test]
fn random_reshapes_keep_every_extent_allocated_once() {
    const N: usize = 5;
    const DISK: u64 = 64 * MIB;
    for seed in [1u64, 0xdead_beef, 42, 7777] {
        let rec = Recorder::new();
        let mut st = open_rec(&rec, N, DISK);
        claim_all(&mut st);
        let a: Vec<Uuid> = (0..N).map(|i| alu_uuid(&st, i)).collect();
        st.create_volume("lin", 2 * MIB, &[(a[0], 2 * MIB)])
            .unwrap();
        st.create_volume_with(
            "m",
            2 * MIB,
            mirror(2),
            &[(0, a[1], 2 * MIB), (1, a[2], 2 * MIB)],
        )
        .unwrap();
        st.create_volume_with("st", 2 * MIB, stripe2(), &[(0, a[3], MIB), (1, a[4], MIB)])
            .unwrap();
        st.create_volume("lin2", MIB, &[(a[4], MIB)]).unwrap();
        let names = ["lin", "m", "st", "lin2"];
        let mut rng = XorShift::new(seed);
        let (mut ok, mut failed) = (0, 0);
        for step in 0..120 {
            let name = names[rng.below(names.len() as u64) as usize];
            let v = vol(&st, name);
            let alu = a[rng.below(N as u64) as usize];
            // now and then a member that does not exist
            let extra = u64::from(rng.below(8) == 0);
            let member = rng.below(v.member_count() as u64 + extra) as u16;
            let unfinished: Vec<Job> = st
                .jobs()
                .into_iter()
                .filter(|j| j.volume == v.id && !j.state.finished())
                .collect();
            let img = image(&st);
            let writes = rec.write_count();
            let op = rng.below(7);
            let what = format!("seed {seed} step {step}: op {op} on {name}");
            let r: Result<(), MetaError> = match op {
                0 => st.add_leg(name, alu).map(drop),
                1 => st.remove_leg(name, member).map(drop),
                2 => st.move_member(name, member, alu).map(drop),
                3 => match unfinished.iter().find(|j| j.kind == JobKind::Move) {
                    Some(j) => {
                        if rng.below(3) != 0 {
                            complete(&mut st, j.id, JobState::Running);
                        }
                        let (img2, w2) = (image(&st), rec.write_count());
                        let r = st.finish_move(j.id).map(drop);
                        if r.is_err() {
                            assert_eq!(image(&st), img2, "{what}");
                            assert_eq!(rec.write_count(), w2, "{what}");
                            failed += 1;
                            continue;
                        }
                        r
                    }
                    None if step % 10 == 0 => st.finish_move(1 << 40).map(drop),
                    None => st.move_member(name, member, alu).map(drop),
                },
                4 => {
                    let k = v.layout.stripes as usize;
                    let alus: Vec<Uuid> = (0..k).map(|_| a[rng.below(N as u64) as usize]).collect();
                    let add = (1 + rng.below(2)) * MIB * k as u64;
                    st.extend_volume(name, add, &alus).map(drop)
                }
                _ => match unfinished.iter().find(|j| j.kind == JobKind::Rebuild) {
                    Some(j) => {
                        complete(&mut st, j.id, JobState::Done);
                        invariants(&st, &what);
                        ok += 1;
                        continue;
                    }
                    None if step % 10 == 0 => st.remove_leg("nope", 0).map(drop),
                    None => st.remove_leg(name, member).map(drop),
                },
            };
            match r {
                Ok(()) => {
                    ok += 1;
                    invariants(&st, &what);
                }
                Err(e) => {
                    failed += 1;
                    assert!(
                        !matches!(e, MetaError::Io { .. } | MetaError::Corrupt(_)),
                        "{what}: {e}"
                    );
                    assert_eq!(image(&st), img, "{what}: refusal changed the image: {e}");
                    assert_eq!(rec.write_count(), writes, "{what}: refusal wrote: {e}");
                }
            }
            if step % 30 == 29 {
                let log = rec.log();
                let disks = share(replay(&[DISK; N], &log, write_count(&log), false));
                let (st2, rep) = open_shared(&disks, false);
                assert!(
                    rep.repairs.is_empty() && rep.problems.is_empty(),
                    "{what}: {rep:?}"
                );
                assert_eq!(image(&st2), image(&st), "{what}: reopen");
                invariants(&st2, &what);
            }
        }
        assert!(
            ok >= 30 && failed >= 10,
            "seed {seed}: {ok} ok, {failed} refused"
        );
    }
}

#[test]
fn a_move_target_is_guarded_like_a_rebuild_target() {
    let (disks, mut st, a) = cluster(3);
    st.create_volume_with(
        "m",
        2 * MIB,
        mirror(2),
        &[(0, a[0], 2 * MIB), (1, a[1], 2 * MIB)],
    )
    .unwrap();
    let (_, mv) = st.move_member("m", 1, a[2]).unwrap();
    // one job drives the target
    let rb = Job {
        id: 0,
        kind: JobKind::Rebuild,
        member: Some(2),
        source: None,
        ..mv.clone()
    };
    refused(
        &disks,
        &mut st,
        &format!("volume m: member 2: move job {} is already Running", mv.id),
        |st| st.add_job(rb),
    );
    // kind, member and source are fixed
    let mut other = mv.clone();
    other.source = Some(0);
    refused(&disks, &mut st, "cannot change", |st| st.update_job(&other));
    // a failed target fails the move, which then cannot be finished
    st.set_member_health("m", 2, MemberHealth::Failed { fail_seq: 0 })
        .unwrap();
    let j = job(&st, mv.id);
    assert_eq!(j.state, JobState::Failed);
    assert!(j.message.contains("target member failed"), "{}", j.message);
    refused(&disks, &mut st, "the job is Failed", |st| {
        st.finish_move(mv.id)
    });
    // the failed target leg goes; a new move may start
    let def = st.remove_leg("m", 2).unwrap();
    assert_eq!(def.layout, mirror(2));
    let (_, mv2) = st.move_member("m", 1, a[2]).unwrap();
    // failing the target's ALU fails the move too
    st.fail_alu(a[2]).unwrap();
    assert_eq!(job(&st, mv2.id).state, JobState::Failed);
}

#[test]
fn finish_move_after_the_source_failed_brings_the_volume_back() {
    let (disks, mut st, a) = cluster(3);
    st.create_volume("lin", 2 * MIB, &[(a[0], 2 * MIB)])
        .unwrap();
    let (_, mv) = st.move_member("lin", 0, a[1]).unwrap();
    complete(&mut st, mv.id, JobState::Running);
    st.fail_alu(a[0]).unwrap();
    // the source failed after the copy: no leg is available, the move is intact
    assert!(!st.volume_problems().is_empty());
    assert_eq!(job(&st, mv.id).state, JobState::Running);
    let dead = disks[0].lock().data.clone();
    let def = st.finish_move(mv.id).unwrap();
    assert_eq!(def.layout, Layout::linear());
    assert_eq!(pieces(&def, 0), vec![(a[1], 2 * MIB)]);
    assert_eq!(def.members, vec![MemberHealth::Ok]);
    assert!(
        st.volume_problems().is_empty(),
        "{:?}",
        st.volume_problems()
    );
    assert!(disks[0].lock().data == dead, "failed ALU written");
    check_healthy_except(&st, &[a[0]]);
    // but an incomplete copy with a failed source stays refused
    st.create_volume("lin2", MIB, &[(a[2], MIB)]).unwrap();
    let (_, mv2) = st.move_member("lin2", 0, a[1]).unwrap();
    st.fail_alu(a[2]).unwrap();
    refused(&disks, &mut st, "copy not complete (0 of 1048576)", |st| {
        st.finish_move(mv2.id)
    });
}

// ------------------------------------------------------- move (stripe, raid10)

#[test]
fn move_a_stripe_member_keeps_the_layout_and_renumbers_the_target() {
    let (disks, mut st, a) = cluster(3);
    let before = st
        .create_volume_with(
            "st",
            4 * MIB,
            stripe2(),
            &[(0, a[0], 2 * MIB), (1, a[1], 2 * MIB)],
        )
        .unwrap();
    assert_eq!(before.moving, None);
    let free0 = free_total(&st, a[0]);
    // onto an ALU that holds the other column: allowed (emptying an ALU)
    let (def, mv) = st.move_member("st", 0, a[1]).unwrap();
    assert_eq!(def.layout, stripe2());
    assert_eq!(def.moving, Some(0));
    assert_eq!(def.member_count(), 3);
    assert_eq!(
        def.members,
        vec![
            MemberHealth::Ok,
            MemberHealth::Ok,
            MemberHealth::Rebuilding { checkpoint: 0 }
        ]
    );
    assert_eq!(pieces(&def, 2), vec![(a[1], 2 * MIB)]);
    assert!(def.wi_slots.is_empty());
    assert_eq!(
        (def.leg_of(0), def.leg_of(1), def.leg_of(2)),
        ((0, 0), (1, 0), (0, 1))
    );
    assert_eq!(def.group_members(0), vec![0, 2]);
    assert_eq!(def.group_members(1), vec![1]);
    assert_eq!(
        (mv.kind, mv.member, mv.source, mv.total),
        (JobKind::Move, Some(2), Some(0), 2 * MIB)
    );
    check_healthy(&st);
    check_no_garbage(&st, &[]);
    // the move survives a reopen (object database and boot list carry the target)
    reopen_same(&disks, &st);
    let (st2, _) = open_shared(&disks, false);
    assert_eq!(vol(&st2, "st").moving, Some(0));
    assert!(st2.volume_problems().is_empty());
    // one move at a time, and no extend under it
    refused(
        &disks,
        &mut st,
        &format!("move job {} is unfinished", mv.id),
        |st| st.move_member("st", 1, a[2]),
    );
    refused(&disks, &mut st, "extend refused: move job", |st| {
        st.extend_volume("st", 2 * MIB, &[a[2], a[2]])
    });
    let mut p = mv.clone();
    p.checkpoint = MIB;
    st.update_job(&p).unwrap();
    assert_eq!(
        vol(&st, "st").members[2],
        MemberHealth::Rebuilding { checkpoint: MIB }
    );
    complete(&mut st, mv.id, JobState::Running);
    let def = st.finish_move(mv.id).unwrap();
    assert_eq!(def.layout, stripe2());
    assert_eq!(def.moving, None);
    assert_eq!(def.members, vec![MemberHealth::Ok; 2]);
    assert_eq!(pieces(&def, 0), vec![(a[1], 2 * MIB)]);
    assert_eq!(pieces(&def, 1), pieces(&before, 1));
    assert_eq!(free_total(&st, a[0]), free0 + 2 * MIB);
    assert_eq!(job(&st, mv.id).state, JobState::Done);
    assert!(st.degraded_members("st").is_empty());
    check_healthy(&st);
    check_no_garbage(&st, &[]);
    reopen_same(&disks, &st);
}

#[test]
fn move_a_raid10_leg_gives_the_target_a_write_intent_slot() {
    let (disks, mut st, a) = cluster(5);
    raid10_on(&mut st, "r10", 4 * MIB, &a);
    let before = vol(&st, "r10");
    let (def, mv) = st.move_member("r10", 3, a[4]).unwrap();
    assert_eq!(def.layout, raid10_2x2());
    assert_eq!((def.moving, def.member_count()), (Some(3), 5));
    assert_eq!(def.leg_of(4), (1, 2));
    assert_eq!(def.group_members(1), vec![2, 3, 4]);
    assert_eq!(def.wi_slots.len(), 5);
    assert_eq!(st.wi_location("r10", 4).unwrap().0, a[4]);
    assert_eq!((mv.member, mv.source), (Some(4), Some(3)));
    reopen_same(&disks, &st);
    complete(&mut st, mv.id, JobState::Running);
    let def = st.finish_move(mv.id).unwrap();
    assert_eq!((def.moving, def.member_count()), (None, 4));
    assert_eq!(pieces(&def, 3), vec![(a[4], 2 * MIB)]);
    assert_eq!(pieces(&def, 2), pieces(&before, 2));
    assert_eq!(def.wi_slots.len(), 4);
    assert_eq!(st.wi_location("r10", 3).unwrap().0, a[4]);
    check_healthy(&st);
    check_no_garbage(&st, &[]);
    reopen_same(&disks, &st);
}

#[test]
fn abandoning_a_stripe_move_drops_the_target_and_fails_the_job() {
    let (disks, mut st, a) = cluster(3);
    let before = st
        .create_volume_with("st", 2 * MIB, stripe2(), &[(0, a[0], MIB), (1, a[1], MIB)])
        .unwrap();
    let free2 = free_total(&st, a[2]);
    let (_, mv) = st.move_member("st", 1, a[2]).unwrap();
    assert_eq!(free_total(&st, a[2]), free2 - MIB);
    // only the target goes: a stripe has no other leg to drop
    refused(&disks, &mut st, "only mirror volumes drop a leg", |st| {
        st.remove_leg("st", 1)
    });
    let def = st.remove_leg("st", 2).unwrap();
    assert_eq!(def.moving, None);
    assert_eq!(def.segments, before.segments);
    assert_eq!(def.members, vec![MemberHealth::Ok; 2]);
    assert_eq!(free_total(&st, a[2]), free2);
    let j = job(&st, mv.id);
    assert_eq!(
        (j.state, j.message.as_str()),
        (JobState::Failed, "target leg removed")
    );
    check_healthy(&st);
    check_no_garbage(&st, &[]);
    reopen_same(&disks, &st);
}

#[test]
fn a_stripe_whose_move_source_fails_goes_offline_and_its_target_cannot_rescue_it() {
    let (_disks, mut st, a) = cluster(3);
    st.create_volume_with("st", 2 * MIB, stripe2(), &[(0, a[0], MIB), (1, a[1], MIB)])
        .unwrap();
    st.move_member("st", 0, a[2]).unwrap();
    st.set_member_health("st", 0, MemberHealth::Failed { fail_seq: 0 })
        .unwrap();
    // the target is incomplete: mirror 0 has no leg left
    let p = st.volume_problems();
    assert!(
        p.iter()
            .any(|(v, w)| v == "st" && w.contains("mirror 0: no leg available")),
        "{p:?}"
    );
}
