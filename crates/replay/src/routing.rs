//! An MoE layer's routing taps against the reference: Rust's experts put in the reference's
//! order (`moe.{i}.top_ids` is compared as a set per token, `moe.{i}.top_weights` expert by
//! expert), and the tokens where the two chose differently told apart: a near tie of the
//! reference's own router (its k-th and (k+1)-th experts within rounding of each other), which
//! another correct implementation may flip, or a real difference.

use std::fmt;

use anyhow::{bail, Result};
use contract::{Stage, Tap};
use parity::array::Array;
use parity::manifest::{CaseRef, DumpKey};

/// Whether a tap is one of an MoE layer's routing decisions: its chosen experts or their weights.
pub fn is_routing(tap: Tap) -> bool {
    matches!(tap.stage(), Stage::MoeTopIds | Stage::MoeTopWeights)
}

/// Rust's `[tokens, k]` routing values (`values`: its ids or its weights, in its own order)
/// reordered so that an expert both sides chose sits in the reference's slot for it; Rust's
/// other experts fill the remaining slots in its own order. The ids then differ exactly where
/// the sets do, and each weight is compared with the reference's weight of the same expert.
pub fn align(reference_ids: &Array, actual_ids: &Array, values: &Array) -> Result<Array> {
    let ([tokens, k], Some(expected), Some(actual)) =
        (reference_ids.shape.as_slice(), reference_ids.as_i64(), actual_ids.as_i64())
    else {
        bail!("routing ids are [tokens, k] i64 arrays, not {:?}", reference_ids.shape)
    };
    if actual_ids.shape != reference_ids.shape || values.shape != reference_ids.shape {
        bail!(
            "the reference routes {:?}, Rust {:?} with values {:?}: the shapes must agree",
            reference_ids.shape,
            actual_ids.shape,
            values.shape
        );
    }
    let order: Vec<usize> = (0..*tokens)
        .flat_map(|t| {
            let (e, a) = (&expected[t * k..(t + 1) * k], &actual[t * k..(t + 1) * k]);
            let mut slots: Vec<Option<usize>> = e.iter().map(|id| a.iter().position(|x| x == id)).collect();
            let mut others = (0..*k).filter(|j| !e.contains(&a[*j]));
            for slot in slots.iter_mut().filter(|s| s.is_none()) {
                *slot = others.next();
            }
            slots.into_iter().map(move |s| t * k + s.expect("as many of Rust's experts as empty slots"))
        })
        .collect();
    let mut aligned = values.clone();
    match (&mut aligned.data, &values.data) {
        (parity::array::Data::I64(out), parity::array::Data::I64(v)) => {
            order.iter().enumerate().for_each(|(i, &from)| out[i] = v[from])
        }
        (parity::array::Data::F32(out), parity::array::Data::F32(v)) => {
            order.iter().enumerate().for_each(|(i, &from)| out[i] = v[from])
        }
        _ => bail!("routing values of mismatched dtypes"),
    }
    Ok(aligned)
}

/// One token the two sides routed differently, judged by the reference's own router.
#[derive(Debug, Clone, PartialEq)]
pub struct Divergence {
    pub token: usize,
    /// The experts only the reference chose, and those only Rust chose, each with the
    /// probability the reference's router gave it.
    pub reference_only: Vec<(i64, f64)>,
    pub rust_only: Vec<(i64, f64)>,
    /// How far the reference's router put its choices ahead of Rust's: the largest logit of an
    /// expert only it chose minus the smallest of one only Rust chose (for a single flip to the
    /// (k+1)-th expert, its k-th margin).
    pub logit_margin: f64,
    /// What a router logit may be off by (the router-logits tap's tolerance at that logit, or
    /// k × its bf16 noise); a margin within twice this is a near tie.
    pub allowed: f64,
}

impl Divergence {
    /// Whether an implementation within the tolerance could make Rust's choice: each of the two
    /// logits may move by `allowed`, so a margin up to twice that can flip.
    pub fn is_near_tie(&self) -> bool {
        self.logit_margin <= 2.0 * self.allowed
    }
}

impl fmt::Display for Divergence {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let experts =
            |v: &[(i64, f64)]| v.iter().map(|(e, p)| format!("expert {e} (p {p:.6})")).collect::<Vec<_>>().join(", ");
        write!(
            f,
            "token {}: the reference chose {}, Rust {} (probabilities of the reference's router); logit margin \
             {:.3e}: {} (each logit may be off by {:.1e})",
            self.token,
            experts(&self.reference_only),
            experts(&self.rust_only),
            self.logit_margin,
            if self.is_near_tie() { "a near tie" } else { "NOT a tie" },
            self.allowed,
        )
    }
}

/// The tokens of an MoE layer that Rust routed differently from the reference, judged by the
/// reference's router logits of that layer (`moe.{i}.router_logits`, recorded whole).
pub fn divergences(case: CaseRef, key: DumpKey, reference_ids: &Array, actual_ids: &Array) -> Result<Vec<Divergence>> {
    let router = Stage::MoeRouterLogits.at(key.tap.index().unwrap_or(0));
    let logits = crate::check::reference_at(case, DumpKey { part: key.part, tap: router })?;
    let ([tokens, experts], [_, k], Some(logits), Some(expected), Some(actual)) = (
        logits.shape.as_slice(),
        reference_ids.shape.as_slice(),
        logits.as_f32(),
        reference_ids.as_i64(),
        actual_ids.as_i64(),
    ) else {
        bail!("case {case}: {router} is not [tokens, experts] f32 or the routing ids are not [tokens, k] i64")
    };
    let tolerance = case.effective_tolerance(router);
    let mut found = Vec::new();
    for t in 0..*tokens {
        let (e, a) = (&expected[t * k..(t + 1) * k], &actual[t * k..(t + 1) * k]);
        if e.iter().all(|id| a.contains(id)) {
            continue;
        }
        let row: Vec<f64> = logits[t * experts..(t + 1) * experts].iter().map(|&v| f64::from(v)).collect();
        let logit = |id: i64| usize::try_from(id).ok().and_then(|i| row.get(i).copied());
        let (Some(mine), Some(theirs)) = (
            e.iter().filter(|id| !a.contains(id)).map(|&id| logit(id).map(|l| (id, l))).collect::<Option<Vec<_>>>(),
            a.iter().filter(|id| !e.contains(id)).map(|&id| logit(id).map(|l| (id, l))).collect::<Option<Vec<_>>>(),
        ) else {
            bail!("case {case}, {key}: token {t} names an expert outside the router's {experts}");
        };
        let max = row.iter().copied().fold(f64::NEG_INFINITY, f64::max);
        let sum: f64 = row.iter().map(|v| (v - max).exp()).sum();
        let prob = |v: &[(i64, f64)]| v.iter().map(|&(id, l)| (id, (l - max).exp() / sum)).collect();
        let best_left = mine.iter().map(|m| m.1).fold(f64::NEG_INFINITY, f64::max);
        let worst_taken = theirs.iter().map(|m| m.1).fold(f64::INFINITY, f64::min);
        found.push(Divergence {
            token: t,
            reference_only: prob(&mine),
            rust_only: prob(&theirs),
            logit_margin: best_left - worst_taken,
            allowed: tolerance.atol + tolerance.rtol * best_left.abs(),
        });
    }
    Ok(found)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ids(rows: &[[i64; 3]]) -> Array {
        Array::i64(vec![rows.len(), 3], rows.iter().flatten().copied().collect())
    }

    #[test]
    fn shared_experts_take_the_reference_slots_and_the_rest_fill_the_gaps_in_rusts_order() {
        let reference = ids(&[[4, 1, 7], [0, 2, 5]]);
        let rust = ids(&[[7, 4, 1], [6, 0, 3]]);
        let aligned = align(&reference, &rust, &rust).unwrap();
        assert_eq!(aligned.as_i64().unwrap(), [4, 1, 7, 0, 6, 3], "same set reordered; a flip stays in its slot");
        let weights = Array::f32(vec![2, 3], vec![0.5, 0.3, 0.2, 0.6, 0.3, 0.1]);
        let aligned = align(&reference, &rust, &weights).unwrap();
        assert_eq!(aligned.as_f32().unwrap(), [0.3, 0.2, 0.5, 0.3, 0.6, 0.1], "each weight follows its expert");
    }

    #[test]
    fn routing_values_of_another_shape_are_an_error() {
        let reference = ids(&[[4, 1, 7]]);
        let err = align(&reference, &ids(&[[4, 1, 7], [1, 2, 3]]), &reference).unwrap_err().to_string();
        assert!(err.contains("the shapes must agree"), "{err}");
    }

    #[test]
    fn a_margin_within_twice_the_allowed_logit_error_is_a_near_tie() {
        let d = |margin: f64| Divergence {
            token: 3,
            reference_only: vec![(5, 0.2)],
            rust_only: vec![(6, 0.19)],
            logit_margin: margin,
            allowed: 1e-3,
        };
        assert!(d(2e-3).is_near_tie() && !d(2.1e-3).is_near_tie());
        let text = d(1e-3).to_string();
        assert!(text.contains("token 3") && text.contains("expert 5") && text.contains("a near tie"), "{text}");
    }
}
