//! Moving one member of a stripe or raid10 online (pvmove): while the copy
//! runs, the source and its target are a mirror inside the volume tree
//! (`VolumeDesc::moving`). Data written before and during the move reads back
//! from the source, the target is never read while rebuilding, and after
//! `rebuild_leg` the target replaces the source; malformed move
//! descriptions are refused.

mod common;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use common::workload::{check_all, random_op, KIB, MIB};
use common::{Rng, TempImage};
use tierblk_stack::mirror::MAX_LEGS;
use tierblk_stack::resync::{rebuild_leg, JobControl};
use tierblk_stack::uring::LocalRing;
use tierblk_stack::{
    build_volume, open_alu, AlignedBuf, BlockDev, BuildError, Layout, MemberDesc, MirrorHealth,
    MirrorState, Volume, VolumeDesc,
};

const LEG: u64 = 2 * MIB;
/// Members start past the head of their image, as on an ALU.
const AT: u64 = 64 * KIB;
const CHUNK: u32 = 64 * 1024;

fn member(img: &TempImage) -> MemberDesc {
    MemberDesc {
        pieces: vec![(open_alu(&img.path).unwrap(), AT, LEG).into()],
    }
}

fn leg_bytes(img: &TempImage) -> Vec<u8> {
    img.contents()[AT as usize..(AT + LEG) as usize].to_vec()
}

fn health(legs: usize, rebuilding: &[(usize, u64)]) -> Arc<MirrorHealth> {
    Arc::new(MirrorHealth::new_with_rebuild(
        legs,
        0,
        rebuilding,
        LEG,
        Box::new(|leg, errno| panic!("leg {leg} failed: errno {errno}")),
    ))
}

/// The plain volume over `members`: no health for a stripe, one per column
/// for a raid10.
fn plain(layout: Layout, copies: usize, members: Vec<MemberDesc>) -> VolumeDesc {
    let columns = if copies == 1 {
        0
    } else {
        members.len() / copies
    };
    VolumeDesc {
        layout,
        copies,
        members,
        health: (0..columns).map(|_| health(copies, &[])).collect(),
        moving: None,
    }
}

/// Move member `source` (leg `source % copies` of column `g`) of a volume of
/// `stripes` columns onto a new, zeroed member, under host I/O.
fn move_member(layout: Layout, copies: usize, stripes: usize, source: usize, seed: u64) {
    let g = source / copies;
    let n = stripes * copies;
    let imgs: Vec<TempImage> = (0..=n)
        .map(|_| TempImage::new((AT + LEG) as usize, 0, None))
        .collect();
    let ring = LocalRing::new(64).unwrap();
    let mut rng = Rng::new(seed);

    // Data written through the plain tree.
    let before = build_volume(
        &plain(layout, copies, imgs[..n].iter().map(member).collect()),
        ring.clone(),
    )
    .unwrap();
    let mut model = vec![0u8; before.size() as usize];
    rng.fill(&mut model);
    ring.block_on(before.write(0, &AlignedBuf::from_slice(&model), false))
        .unwrap();
    for _ in 0..50 {
        random_op(&before, &ring, &mut model, &mut rng, u64::from(CHUNK)).unwrap();
    }
    drop(before);

    // The move: column g gets the target (the last member) as leg `copies`,
    // rebuilding from 0.
    let desc = VolumeDesc {
        layout,
        copies,
        members: imgs.iter().map(member).collect(),
        health: (0..stripes)
            .map(|i| {
                if i == g {
                    health(copies + 1, &[(copies, 0)])
                } else {
                    health(copies, &[])
                }
            })
            .collect(),
        moving: Some(g),
    };
    let host = build_volume(&desc, ring.clone()).unwrap();
    assert!(matches!(host, Volume::Raid10(_)));
    assert_eq!(host.size(), stripes as u64 * LEG);
    let legs: Vec<usize> = host.mirrors().iter().map(|m| m.legs().len()).collect();
    let mut want = vec![copies; stripes];
    want[g] += 1;
    assert_eq!(legs, want);
    assert!(host.degraded() && !host.failed());
    assert_eq!(host.mirrors()[g].state(), MirrorState::Degraded);
    // The target is zeroed and the model random: a read served by it fails.
    check_all(&host, &ring, &model, &mut rng).unwrap();
    for _ in 0..50 {
        random_op(&host, &ring, &mut model, &mut rng, u64::from(CHUNK)).unwrap();
    }

    // The copy runs on its own thread, tree and ring (as the daemon's job
    // does) while the host keeps writing.
    let done = Arc::new(AtomicBool::new(false));
    let job = {
        let (desc, done) = (desc.clone(), done.clone());
        std::thread::spawn(move || {
            let ring = LocalRing::new(32).unwrap();
            let vol = build_volume(&desc, ring.clone()).unwrap();
            let ctl = JobControl::new();
            ctl.set_rate_limit(16 * MIB);
            let r = ring.block_on(rebuild_leg(&vol.mirrors()[g], copies, 128 * KIB, &ctl));
            done.store(true, Ordering::SeqCst);
            r
        })
    };
    let mut ops = 0;
    while !done.load(Ordering::SeqCst) || ops < 100 {
        random_op(&host, &ring, &mut model, &mut rng, u64::from(CHUNK)).unwrap();
        ops += 1;
    }
    assert_eq!(job.join().unwrap(), Ok(LEG));
    assert!(!host.degraded());
    check_all(&host, &ring, &model, &mut rng).unwrap();
    drop(host);
    assert!(
        leg_bytes(&imgs[n]) == leg_bytes(&imgs[source]),
        "the target holds the source's column"
    );

    // The move is complete: the target replaces the source, which is gone.
    std::fs::write(&imgs[source].path, vec![0xee; (AT + LEG) as usize]).unwrap();
    let mut members: Vec<MemberDesc> = imgs[..n].iter().map(member).collect();
    members[source] = member(&imgs[n]);
    let after = build_volume(&plain(layout, copies, members), ring.clone()).unwrap();
    check_all(&after, &ring, &model, &mut rng).unwrap();
}

#[test]
fn stripe_member_moves_online_onto_a_new_member() {
    move_member(Layout::Stripe { chunk: CHUNK }, 1, 3, 1, 0x3017e);
}

#[test]
fn raid10_leg_moves_online_onto_a_new_member() {
    move_member(Layout::Raid10 { chunk: CHUNK }, 2, 2, 1, 0x10_3017e);
}

#[test]
fn malformed_moves_are_refused() {
    let img = TempImage::new((16 * MIB) as usize, 0, None);
    let file = open_alu(&img.path).unwrap();
    let ring = LocalRing::new(8).unwrap();
    let h = |legs: usize| Arc::new(MirrorHealth::new(legs, 0, Box::new(|_, _| {})));
    let build = |layout, copies, sizes: &[u64], health, moving| {
        let members = sizes
            .iter()
            .enumerate()
            .map(|(i, &s)| MemberDesc {
                pieces: vec![(file.clone(), i as u64 * MIB, s).into()],
            })
            .collect();
        let desc = VolumeDesc {
            layout,
            copies,
            members,
            health,
            moving,
        };
        build_volume(&desc, ring.clone())
    };
    let err = |r: Result<Volume<LocalRing>, BuildError>| r.err().expect("must be refused");
    let s = Layout::Stripe { chunk: 65536 };
    let r = Layout::Raid10 { chunk: 65536 };

    // Linear and mirror moves are plain mirror legs already.
    assert_eq!(
        err(build(Layout::Linear, 1, &[MIB; 2], vec![], Some(0))),
        BuildError::Moving { layout: "linear" }
    );
    let e = err(build(Layout::Mirror, 2, &[MIB; 3], vec![h(3)], Some(0)));
    assert_eq!(e, BuildError::Moving { layout: "mirror" });
    assert!(e.to_string().contains("stripe or raid10"), "{e}");
    // Column out of range.
    assert_eq!(
        err(build(s, 1, &[MIB; 4], vec![h(1), h(1), h(1)], Some(3))),
        BuildError::MovingGroup {
            group: 3,
            groups: 3
        }
    );
    // Member counts: one stripe column plus the target; raid10 without the
    // target, or with a single column.
    for (layout, copies, n) in [(s, 1, 2), (r, 2, 4), (r, 2, 3), (s, 1, 0)] {
        assert!(
            matches!(
                err(build(layout, copies, &vec![MIB; n], vec![h(2), h(2)], Some(0))),
                BuildError::MemberCount { got, .. } if got == n
            ),
            "{n} members"
        );
    }
    assert!(matches!(
        err(build(s, 2, &[MIB; 5], vec![h(3), h(2)], Some(0))),
        BuildError::Copies {
            layout: "stripe",
            ..
        }
    ));
    // Health: one per column, the moving column's with the extra leg.
    assert!(matches!(
        err(build(s, 1, &[MIB; 4], vec![h(1), h(2)], Some(1))),
        BuildError::HealthCount {
            expected: 3,
            got: 2,
            ..
        }
    ));
    assert_eq!(
        err(build(s, 1, &[MIB; 4], vec![h(1), h(1), h(1)], Some(1))),
        BuildError::HealthLegs {
            mirror: 1,
            health_legs: 1,
            legs: 2
        }
    );
    assert_eq!(
        err(build(s, 1, &[MIB; 4], vec![h(2), h(2), h(1)], Some(1))),
        BuildError::HealthLegs {
            mirror: 0,
            health_legs: 2,
            legs: 1
        }
    );
    assert_eq!(
        err(build(r, 2, &[MIB; 5], vec![h(2), h(2)], Some(0))),
        BuildError::HealthLegs {
            mirror: 0,
            health_legs: 2,
            legs: 3
        }
    );
    // No room for the extra leg in a mirror of MAX_LEGS legs.
    let e = err(build(
        r,
        MAX_LEGS,
        &[MIB; 2 * MAX_LEGS + 1],
        vec![h(MAX_LEGS), h(MAX_LEGS)],
        Some(0),
    ));
    assert!(
        matches!(e, BuildError::Copies { layout: "raid10", copies, .. } if copies == MAX_LEGS),
        "{e}"
    );
    // The target must match the other members.
    assert!(matches!(
        err(build(s, 1, &[MIB, MIB, MIB / 2], vec![h(2), h(1)], Some(0))),
        BuildError::UnequalMembers { member: 2, .. }
    ));

    // Well-formed: a 2-column stripe moving column 0.
    let v = build(s, 1, &[MIB; 3], vec![h(2), h(1)], Some(0)).unwrap();
    assert!(matches!(v, Volume::Raid10(_)) && v.size() == 2 * MIB);
    let legs: Vec<usize> = v.mirrors().iter().map(|m| m.legs().len()).collect();
    assert_eq!(legs, vec![2, 1]);
    assert!(!v.degraded());
}
