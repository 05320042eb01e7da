//! The planner (the spec's VBM, [096]–[099]): turns "a volume of this size on
//! these ALUs" into an ordered list of pieces, before anything is written.
//!
//! A linear volume fills the candidate ALUs in the order given, taking their
//! free extents first-fit; a request that cannot be met is refused with the
//! shortfall named.

use crate::size::format_size;
use thiserror::Error;
use tierblk_meta::{Extent, Uuid};

/// An ALU the planner may allocate from, with its free extents.
#[derive(Debug, Clone)]
pub struct Candidate {
    pub alu: Uuid,
    pub name: String,
    pub free: Vec<Extent>,
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
}

/// Plan a linear volume of `size` bytes (a whole number of allocation units).
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
        let have: u64 = candidates
            .iter()
            .flat_map(|c| c.free.iter())
            .map(|e| e.len)
            .sum();
        let alus = candidates
            .iter()
            .map(|c| c.name.as_str())
            .collect::<Vec<_>>()
            .join(", ");
        return Err(PlanError::NoRoom {
            need: format_size(size),
            have: format_size(have),
            alus,
        });
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

    #[test]
    fn spans_alus_in_order() {
        let c = [cand(1, &[(8 * M, 200 * M)]), cand(2, &[(8 * M, 200 * M)])];
        let plan = plan_linear(300 * M, &c).unwrap();
        assert_eq!(
            plan,
            vec![(Uuid([1; 16]), 200 * M), (Uuid([2; 16]), 100 * M)]
        );
    }

    #[test]
    fn uses_several_extents_of_one_alu() {
        let c = [cand(1, &[(8 * M, 10 * M), (40 * M, 30 * M)])];
        let plan = plan_linear(25 * M, &c).unwrap();
        assert_eq!(plan, vec![(Uuid([1; 16]), 10 * M), (Uuid([1; 16]), 15 * M)]);
    }

    #[test]
    fn refuses_what_does_not_fit() {
        let c = [cand(1, &[(8 * M, 10 * M)])];
        let err = plan_linear(11 * M, &c).unwrap_err();
        assert_eq!(
            err.to_string(),
            "not enough free space: 11.0M requested, 10.0M free on alu1"
        );
        assert_eq!(plan_linear(M, &[]), Err(PlanError::NoAlus));
    }
}
