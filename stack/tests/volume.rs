//! build_volume validation: every malformed description is refused with a
//! specific error, and well-formed ones build the expected variant.

mod common;

use std::sync::Arc;

use common::TempImage;
use tierblk_stack::uring::LocalRing;
use tierblk_stack::{
    build_volume, open_alu, BlockDev, BuildError, Layout, MemberDesc, MirrorHealth, Volume,
    VolumeDesc,
};

const MIB: u64 = 1 << 20;

struct Env {
    _img: TempImage,
    file: Arc<std::fs::File>,
    ring: LocalRing,
}

fn env() -> Env {
    let img = TempImage::new((16 * MIB) as usize, 0, None);
    let file = open_alu(&img.path).unwrap();
    Env {
        _img: img,
        file,
        ring: LocalRing::new(8).unwrap(),
    }
}

impl Env {
    /// `n` members of `size` bytes each, at distinct places of the image.
    fn members(&self, sizes: &[u64]) -> Vec<MemberDesc> {
        sizes
            .iter()
            .enumerate()
            .map(|(i, &s)| MemberDesc {
                pieces: vec![(self.file.clone(), i as u64 * MIB, s).into()],
            })
            .collect()
    }

    fn build(
        &self,
        layout: Layout,
        copies: usize,
        sizes: &[u64],
        health: Vec<Arc<MirrorHealth>>,
    ) -> Result<Volume<LocalRing>, BuildError> {
        let desc = VolumeDesc {
            layout,
            copies,
            members: self.members(sizes),
            health,
            moving: None,
        };
        build_volume(&desc, self.ring.clone())
    }
}

fn h(legs: usize) -> Arc<MirrorHealth> {
    Arc::new(MirrorHealth::new(legs, 0, Box::new(|_, _| {})))
}

#[test]
fn valid_descriptions_build_the_right_variant() {
    let e = env();
    let v = e.build(Layout::Linear, 1, &[MIB], vec![]).unwrap();
    assert!(matches!(v, Volume::Linear(_)) && v.size() == MIB);
    let v = e
        .build(Layout::Stripe { chunk: 65536 }, 1, &[MIB; 3], vec![])
        .unwrap();
    assert!(matches!(v, Volume::Stripe(_)) && v.size() == 3 * MIB);
    let v = e.build(Layout::Mirror, 3, &[MIB; 3], vec![h(3)]).unwrap();
    assert!(matches!(v, Volume::Mirror(_)) && v.size() == MIB);
    let v = e
        .build(
            Layout::Raid10 { chunk: 4096 },
            2,
            &[MIB; 6],
            vec![h(2), h(2), h(2)],
        )
        .unwrap();
    assert!(matches!(v, Volume::Raid10(_)) && v.size() == 3 * MIB);
    assert!(!v.degraded());
    // A mirror persisted with a failed leg builds degraded.
    let hd = Arc::new(MirrorHealth::new(2, 0b01, Box::new(|_, _| {})));
    let v = e.build(Layout::Mirror, 2, &[MIB; 2], vec![hd]).unwrap();
    assert!(v.degraded() && !v.failed());
}

#[test]
fn malformed_descriptions_are_refused() {
    let e = env();
    let err = |r: Result<Volume<LocalRing>, BuildError>| r.err().expect("must be refused");
    // Linear.
    assert!(matches!(
        err(e.build(Layout::Linear, 1, &[MIB, MIB], vec![])),
        BuildError::MemberCount {
            layout: "linear",
            got: 2,
            ..
        }
    ));
    assert!(matches!(
        err(e.build(Layout::Linear, 2, &[MIB], vec![])),
        BuildError::Copies {
            layout: "linear",
            copies: 2,
            ..
        }
    ));
    assert!(matches!(
        err(e.build(Layout::Linear, 1, &[MIB], vec![h(2)])),
        BuildError::HealthCount {
            expected: 0,
            got: 1,
            ..
        }
    ));
    // Stripe.
    let s = Layout::Stripe { chunk: 65536 };
    assert!(matches!(
        err(e.build(s, 1, &[MIB], vec![])),
        BuildError::MemberCount {
            layout: "stripe",
            got: 1,
            ..
        }
    ));
    assert!(matches!(
        err(e.build(s, 1, &[MIB, MIB - 4096], vec![])),
        BuildError::UnequalMembers { member: 1, .. }
    ));
    assert!(matches!(
        err(e.build(s, 1, &[0, 0], vec![])),
        BuildError::MemberTooSmall { .. }
    ));
    assert!(matches!(
        err(e.build(s, 1, &[4096, 4096], vec![])),
        BuildError::MemberTooSmall { .. }
    ));
    for bad in [0, 512, 2048, 12288, 65535] {
        assert_eq!(
            err(e.build(Layout::Stripe { chunk: bad }, 1, &[MIB; 2], vec![])),
            BuildError::Chunk(bad)
        );
    }
    // Mirror.
    assert!(matches!(
        err(e.build(Layout::Mirror, 1, &[MIB], vec![h(1)])),
        BuildError::Copies {
            layout: "mirror",
            ..
        }
    ));
    assert!(matches!(
        err(e.build(Layout::Mirror, 5, &[MIB; 5], vec![h(4)])),
        BuildError::Copies { .. }
    ));
    assert!(matches!(
        err(e.build(Layout::Mirror, 2, &[MIB; 3], vec![h(2)])),
        BuildError::MemberCount {
            layout: "mirror",
            got: 3,
            ..
        }
    ));
    assert!(matches!(
        err(e.build(Layout::Mirror, 2, &[MIB; 2], vec![])),
        BuildError::HealthCount {
            expected: 1,
            got: 0,
            ..
        }
    ));
    assert!(matches!(
        err(e.build(Layout::Mirror, 2, &[MIB; 2], vec![h(3)])),
        BuildError::HealthLegs {
            health_legs: 3,
            legs: 2,
            ..
        }
    ));
    assert!(matches!(
        err(e.build(Layout::Mirror, 2, &[MIB, 2 * MIB], vec![h(2)])),
        BuildError::UnequalMembers { .. }
    ));
    // RAID10.
    let r = Layout::Raid10 { chunk: 8192 };
    assert!(matches!(
        err(e.build(r, 2, &[MIB; 2], vec![h(2)])),
        BuildError::MemberCount {
            layout: "raid10",
            got: 2,
            ..
        }
    ));
    assert!(matches!(
        err(e.build(r, 2, &[MIB; 5], vec![h(2), h(2)])),
        BuildError::MemberCount { got: 5, .. }
    ));
    assert!(matches!(
        err(e.build(r, 1, &[MIB; 4], vec![])),
        BuildError::Copies {
            layout: "raid10",
            ..
        }
    ));
    assert!(matches!(
        err(e.build(r, 2, &[MIB; 4], vec![h(2)])),
        BuildError::HealthCount {
            expected: 2,
            got: 1,
            ..
        }
    ));
    assert!(matches!(
        err(e.build(r, 2, &[MIB; 4], vec![h(2), h(3)])),
        BuildError::HealthLegs { mirror: 1, .. }
    ));
    assert!(matches!(
        err(e.build(r, 2, &[MIB, MIB, MIB, MIB / 2], vec![h(2), h(2)])),
        BuildError::UnequalMembers { member: 3, .. }
    ));
    assert_eq!(
        err(e.build(
            Layout::Raid10 { chunk: 1000 },
            2,
            &[MIB; 4],
            vec![h(2), h(2)]
        )),
        BuildError::Chunk(1000)
    );
    // Messages are specific.
    let msg = err(e.build(s, 1, &[MIB, MIB - 4096], vec![])).to_string();
    assert!(
        msg.contains("member 1") && msg.contains("equal size"),
        "{msg}"
    );
}
