//! The planner (the spec's VBM, [096]–[099]): turns "a volume of this size and
//! layout on these ALUs" into a list of pieces, before anything is written.
//!
//! - linear / concat: fill the candidate ALUs in the order given, first-fit
//!   over their free extents; a volume may concatenate pieces of many ALUs.
//! - stripe, mirror, RAID10 ([061], [074]–[076]): every member (stripe
//!   member or mirror leg) lives on an ALU of its own, chosen round-robin over
//!   the candidates with the most free space, so that mirror legs never share
//!   an ALU and stripes spread their load.
//!
//! A request that cannot be met is refused with the reason named.

use crate::size::format_size;
use thiserror::Error;
use tierblk_meta::{Extent, Layout, LayoutKind, Uuid};

/// An ALU the planner may allocate from, with its free extents.
#[derive(Debug, Clone)]
pub struct Candidate {
    pub alu: Uuid,
    pub name: String,
    pub free: Vec<Extent>,
}

impl Candidate {
    fn free_total(&self) -> u64 {
        self.free.iter().map(|e| e.len).sum()
    }
}

#[derive(Debug, Error, PartialEq, Eq)]
pub enum PlanError {
    #[error("no owned ALU to allocate from (claim one with `tierblk alu claim PATH`)")]
    NoAlus,
    #[error("not enough free space: {need} requested, {have} free on {alus}")]
    NoRoom {
        need: String,
        have: String,
        alus: String,
    },
    #[error(
        "{layout} needs {members} ALUs with {each} free each; only {have} have that much ({alus})"
    )]
    TooFewAlus {
        layout: String,
        members: usize,
        each: String,
        have: usize,
        alus: String,
    },
    #[error("{0}")]
    Layout(String),
}

/// One piece of the plan: `len` bytes of `alu` appended to `member`.
pub type Piece = (u16, Uuid, u64);

/// The size a volume of `layout` really gets: `size` rounded up so every
/// member is a whole number of chunks and MiB.
pub fn rounded_size(size: u64, layout: &Layout) -> Option<u64> {
    let stripes = u64::from(layout.stripes.max(1));
    let unit = match layout.kind {
        LayoutKind::Stripe | LayoutKind::Raid10 => lcm(u64::from(layout.chunk), 1 << 20) * stripes,
        LayoutKind::Linear | LayoutKind::Mirror => 1 << 20,
    };
    size.checked_add(unit - 1).map(|v| v / unit * unit)
}

fn lcm(a: u64, b: u64) -> u64 {
    fn gcd(a: u64, b: u64) -> u64 {
        if b == 0 {
            a
        } else {
            gcd(b, a % b)
        }
    }
    if a == 0 {
        b
    } else {
        a / gcd(a, b) * b
    }
}

/// Plan a volume of `size` bytes (already [`rounded_size`]) with `layout`.
pub fn plan(size: u64, layout: &Layout, candidates: &[Candidate]) -> Result<Vec<Piece>, PlanError> {
    layout.validate().map_err(PlanError::Layout)?;
    if candidates.is_empty() {
        return Err(PlanError::NoAlus);
    }
    match layout.kind {
        LayoutKind::Linear => plan_linear(size, candidates)
            .map(|p| p.into_iter().map(|(alu, len)| (0, alu, len)).collect()),
        _ => plan_spread(size, layout, candidates),
    }
}

/// Plan a linear volume: fill the candidates in order.
pub fn plan_linear(size: u64, candidates: &[Candidate]) -> Result<Vec<(Uuid, u64)>, PlanError> {
    if candidates.is_empty() {
        return Err(PlanError::NoAlus);
    }
    let mut remaining = size;
    let mut plan = Vec::new();
    'outer: for c in candidates {
        for ext in &c.free {
            if remaining == 0 {
                break 'outer;
            }
            let take = remaining.min(ext.len);
            if take > 0 {
                plan.push((c.alu, take));
                remaining -= take;
            }
        }
    }
    if remaining > 0 {
        let have: u64 = candidates.iter().map(Candidate::free_total).sum();
        return Err(PlanError::NoRoom {
            need: format_size(size),
            have: format_size(have),
            alus: names(candidates.iter()),
        });
    }
    Ok(plan)
}

fn names<'a>(c: impl Iterator<Item = &'a Candidate>) -> String {
    c.map(|c| c.name.as_str()).collect::<Vec<_>>().join(", ")
}

fn layout_name(l: &Layout) -> String {
    match l.kind {
        LayoutKind::Linear => "linear".into(),
        LayoutKind::Stripe => format!("a stripe of {}", l.stripes),
        LayoutKind::Mirror => format!("a {}-way mirror", l.copies),
        LayoutKind::Raid10 => format!("raid10 of {} stripes x {} copies", l.stripes, l.copies),
    }
}

/// Every member on its own ALU; members take the emptiest ALUs first.
fn plan_spread(
    size: u64,
    layout: &Layout,
    candidates: &[Candidate],
) -> Result<Vec<Piece>, PlanError> {
    let members = layout.members();
    let member_len = match layout.kind {
        LayoutKind::Stripe | LayoutKind::Raid10 => size / u64::from(layout.stripes),
        _ => size,
    };
    let mut fit: Vec<&Candidate> = candidates
        .iter()
        .filter(|c| c.free_total() >= member_len)
        .collect();
    if fit.len() < members {
        return Err(PlanError::TooFewAlus {
            layout: layout_name(layout),
            members,
            each: format_size(member_len),
            have: fit.len(),
            alus: names(candidates.iter()),
        });
    }
    // Stable: among equals, the order the administrator gave wins.
    fit.sort_by_key(|c| std::cmp::Reverse(c.free_total()));
    let mut plan = Vec::new();
    for (m, c) in fit.iter().take(members).enumerate() {
        let mut remaining = member_len;
        for ext in &c.free {
            if remaining == 0 {
                break;
            }
            let take = remaining.min(ext.len);
            plan.push((m as u16, c.alu, take));
            remaining -= take;
        }
    }
    Ok(plan)
}

#[cfg(test)]
mod tests {
    use super::*;

    const M: u64 = 1 << 20;

    fn cand(n: u8, free: &[(u64, u64)]) -> Candidate {
        Candidate {
            alu: Uuid([n; 16]),
            name: format!("alu{n}"),
            free: free
                .iter()
                .map(|&(start, len)| Extent { start, len })
                .collect(),
        }
    }

    fn layout(kind: LayoutKind, stripes: u16, copies: u16, chunk: u32) -> Layout {
        Layout {
            kind,
            stripes,
            copies,
            chunk,
        }
    }

    #[test]
    fn linear_spans_alus_in_order() {
        let c = [cand(1, &[(8 * M, 200 * M)]), cand(2, &[(8 * M, 200 * M)])];
        let plan = plan(300 * M, &Layout::linear(), &c).unwrap();
        assert_eq!(
            plan,
            vec![(0, Uuid([1; 16]), 200 * M), (0, Uuid([2; 16]), 100 * M)]
        );
    }

    #[test]
    fn linear_uses_several_extents_of_one_alu() {
        let c = [cand(1, &[(8 * M, 10 * M), (40 * M, 30 * M)])];
        let plan = plan_linear(25 * M, &c).unwrap();
        assert_eq!(plan, vec![(Uuid([1; 16]), 10 * M), (Uuid([1; 16]), 15 * M)]);
    }

    #[test]
    fn linear_refuses_what_does_not_fit() {
        let c = [cand(1, &[(8 * M, 10 * M)])];
        let err = plan_linear(11 * M, &c).unwrap_err();
        assert_eq!(
            err.to_string(),
            "not enough free space: 11.0M requested, 10.0M free on alu1"
        );
        assert_eq!(plan_linear(M, &[]), Err(PlanError::NoAlus));
    }

    #[test]
    fn mirror_legs_never_share_an_alu() {
        let c = [
            cand(1, &[(8 * M, 100 * M)]),
            cand(2, &[(8 * M, 300 * M)]),
            cand(3, &[(8 * M, 200 * M)]),
        ];
        let l = layout(LayoutKind::Mirror, 1, 2, 0);
        let p = plan(100 * M, &l, &c).unwrap();
        // The two emptiest ALUs, one leg each.
        assert_eq!(
            p,
            vec![(0, Uuid([2; 16]), 100 * M), (1, Uuid([3; 16]), 100 * M)]
        );
        let l3 = layout(LayoutKind::Mirror, 1, 3, 0);
        let err = plan(150 * M, &l3, &c).unwrap_err();
        assert!(
            matches!(
                err,
                PlanError::TooFewAlus {
                    have: 2,
                    members: 3,
                    ..
                }
            ),
            "{err}"
        );
    }

    #[test]
    fn raid10_takes_one_alu_per_member_and_splits_the_size() {
        let c: Vec<Candidate> = (1..=4).map(|n| cand(n, &[(8 * M, 100 * M)])).collect();
        let l = layout(LayoutKind::Raid10, 2, 2, 64 << 10);
        let size = rounded_size(150 * M, &l).unwrap();
        assert_eq!(size, 150 * M);
        let p = plan(size, &l, &c).unwrap();
        assert_eq!(p.len(), 4);
        let alus: std::collections::BTreeSet<_> = p.iter().map(|x| x.1).collect();
        assert_eq!(alus.len(), 4);
        assert!(p.iter().all(|x| x.2 == 75 * M));
        assert_eq!(p.iter().map(|x| x.0).collect::<Vec<_>>(), vec![0, 1, 2, 3]);
    }

    #[test]
    fn a_member_may_use_several_extents_of_its_alu() {
        let c = [
            cand(1, &[(8 * M, 30 * M), (60 * M, 30 * M)]),
            cand(2, &[(8 * M, 60 * M)]),
        ];
        let l = layout(LayoutKind::Stripe, 2, 1, 64 << 10);
        let p = plan(100 * M, &l, &c).unwrap();
        let on1: u64 = p.iter().filter(|x| x.1 == Uuid([1; 16])).map(|x| x.2).sum();
        assert_eq!(on1, 50 * M);
        assert!(p
            .iter()
            .filter(|x| x.1 == Uuid([1; 16]))
            .all(|x| x.0 == p[0].0));
    }

    #[test]
    fn rounding_keeps_members_whole_chunks() {
        let l = layout(LayoutKind::Stripe, 3, 1, 64 << 10);
        let s = rounded_size(100 * M + 1, &l).unwrap();
        assert_eq!(s % (3 * M), 0);
        assert!(s > 100 * M);
        assert_eq!(rounded_size(5, &Layout::linear()), Some(M));
        assert_eq!(rounded_size(u64::MAX, &Layout::linear()), None);
    }
}
