//! Comparing a run's tap with the reference dump under the manifest's tolerance, and naming
//! the worst element in model terms.

use std::borrow::Cow;

use anyhow::{bail, ensure, Result};
use contract::{ComputeDtype, Family, Stage, Tap};
use parity::array::Array;
use parity::compare::{compare, CompareOptions, Comparison};
use parity::manifest::{CaseRef, DumpKey, Part, RowPick};
use parity::mode::Mode;

use crate::routing::{self, Divergence};
use crate::run::{reference, token_texts, Run};

/// How many top logits are compared for `lm.logits_last`.
pub const TOP_K: usize = 5;

/// The result of checking one tap of one run.
pub struct TapResult {
    /// The case the run replayed.
    pub case: String,
    /// The tap compared (with its part, for a case checked in parts).
    pub tap: DumpKey,
    /// The mode of the run.
    pub mode: Mode,
    /// The metrics of the comparison with the reference dump.
    pub comparison: Comparison,
    /// The worst element in model terms (image, patch row/col, token position).
    pub location: Option<String>,
    /// For an MoE routing tap that differs: the tokens routed differently, each with the
    /// reference's margin, and the tokens that differ although routed alike.
    pub routing: Option<RoutingVerdict>,
}

/// Where an MoE routing tap differs from the reference.
pub struct RoutingVerdict {
    /// The tokens Rust routed to other experts than the reference.
    pub divergences: Vec<Divergence>,
    /// The tokens whose values differ although both sides chose the same experts.
    pub routed_alike: Vec<usize>,
}

impl TapResult {
    /// Whether the tap matches the reference within the tolerance.
    pub fn passed(&self) -> bool {
        self.comparison.passed()
    }

    /// Whether the tap differs only at tokens whose routing the reference itself nearly tied
    /// (neither a pass nor a failure: see [`parity::report::Status::NearTie`]).
    pub fn near_tie(&self) -> bool {
        !self.passed()
            && self.routing.as_ref().is_some_and(|r| {
                r.routed_alike.is_empty()
                    && !r.divergences.is_empty()
                    && r.divergences.iter().all(Divergence::is_near_tie)
            })
    }

    /// A failure message naming the case, the tap, the mode, the metrics and the place.
    pub fn message(&self) -> String {
        let mut s = format!("case {} · tap {} · {}\n{}", self.case, self.tap, self.mode.name(), self.comparison);
        if let Some(loc) = &self.location {
            s.push_str(&format!("\nWorst element: {loc}"));
        }
        if let Some(routing) = &self.routing {
            let ties = routing.divergences.iter().filter(|d| d.is_near_tie()).count();
            s.push_str(&format!(
                "\nRouted differently at {} token(s), {ties} of them near ties of the reference's router:",
                routing.divergences.len()
            ));
            for d in &routing.divergences {
                s.push_str(&format!("\n  {d}"));
            }
            if !routing.routed_alike.is_empty() {
                s.push_str(&format!(
                    "\nDifferent although routed alike (not a tie): tokens {:?}",
                    routing.routed_alike
                ));
            }
        }
        s
    }
}

impl Run {
    /// Compares the run's tap with the recorded dump under the manifest's tolerance.
    pub fn check(&self, case: CaseRef, key: impl Into<DumpKey>) -> Result<TapResult> {
        let key = key.into();
        let tap = key.tap;
        let Some(actual) = self.taps.get(&key) else {
            match &self.failure {
                Some(why) => bail!("the {} run of case {case} stopped before {key}: {why}", self.mode.name()),
                None => bail!("the {} run of case {case} produced no {key}", self.mode.name()),
            }
        };
        // In bf16 a step's ranking below the top is not decidable: logits 64 apart in a
        // 248 320-word vocabulary sit one bf16 step (0.0625 near 8) apart or tie exactly (the
        // stand-in's 5th and 6th logits of step 1 are both 8.0625). A bf16 case keeps the
        // argmax of each step exactly; gen.top_logits bounds Rust's logits at the reference's
        // top ids by k × noise.
        let (expected, actual) = self.compared_arrays(case, key, actual)?;
        let routing_ids = self.routing_ids(case, key)?;
        let actual = match &routing_ids {
            Some((reference_ids, actual_ids)) => routing::align(reference_ids, actual_ids, &actual)?,
            None => actual,
        };
        let actual = &actual;
        let (expected, actual) = if tap.stage() == Stage::GenTopIds && case.case.dtype == ComputeDtype::Bf16 {
            (first_column(&expected)?, Cow::Owned(first_column(actual)?))
        } else {
            (expected, Cow::Borrowed(actual))
        };
        let actual = actual.as_ref();
        let opts = case
            .compare_options(tap, (tap.stage() == Stage::LmLogitsLast).then_some(TOP_K))
            .map_err(anyhow::Error::msg)?;
        let (comparison, worst) = compare_picked(&expected, actual, case.row_pick(tap), &opts)?;
        let mut location = worst.and_then(|index| self.locate(tap, &index));
        if !comparison.passed() && tap.family() == Family::Gen && self.padding.is_empty() {
            if let Some(divergence) = self.first_diverging_step(case, key, &expected, actual, &opts) {
                location = Some(match location {
                    Some(worst) => format!("{divergence}; the worst element: {worst}"),
                    None => divergence,
                });
            }
        }
        let routing = match routing_ids {
            Some((reference_ids, actual_ids)) if !comparison.passed() => {
                let divergences = routing::divergences(case, key, &reference_ids, &actual_ids)?;
                let tokens = expected.shape.first().copied().unwrap_or(0);
                let routed_alike = (0..tokens)
                    .filter(|&t| divergences.iter().all(|d| d.token != t))
                    .filter(|&t| match (expected.select_rows(&[t]), actual.select_rows(&[t])) {
                        (Ok(e), Ok(a)) => !compare(&e, &a, &opts).passed(),
                        _ => true,
                    })
                    .collect();
                Some(RoutingVerdict { divergences, routed_alike })
            }
            _ => None,
        };
        Ok(TapResult { case: case.name.to_owned(), tap: key, mode: self.mode, comparison, location, routing })
    }

    /// For an MoE routing tap of a run of one sequence kept whole: the reference's and Rust's
    /// `moe.{i}.top_ids` of its layer, by which both sides' values are aligned.
    fn routing_ids(&self, case: CaseRef, key: DumpKey) -> Result<Option<(Array, Array)>> {
        if !routing::is_routing(key.tap) || case.row_pick(key.tap).is_some() || !self.padding.is_empty() {
            return Ok(None);
        }
        let ids = DumpKey { part: key.part, tap: Stage::MoeTopIds.at(key.tap.index().unwrap_or(0)) };
        let Some(actual) = self.taps.get(&ids) else {
            bail!("the {} run of case {case} produced {key} without {ids}", self.mode.name())
        };
        Ok(Some((reference_at(case, ids)?, actual.clone())))
    }

    /// Names the element at `index` of a compared tap: a batch's tap without a sequence axis
    /// keeps its batch axis first, named as the row; the rest as one sequence's tap.
    fn locate(&self, tap: Tap, index: &[usize]) -> Option<String> {
        let batched = !self.padding.is_empty() && parity::batch::carries_batch_axis(tap);
        if !batched || parity::batch::sequence_axis(tap.layout()).is_some() {
            return self.locator().locate(tap, index);
        }
        let (row, rest) = index.split_first()?;
        Some(match self.locator().locate(tap, rest) {
            Some(place) => format!("row {row}, {place}"),
            None => format!("row {row}, index {rest:?}"),
        })
    }

    /// The expected array of `key` (the reference's dump, or the rows run alone for a batch's
    /// `batch-invariance`) and the run's, both packed for a batch: its rows' padding left out
    /// (the reference's padding from its `input.attention_mask`, the run's own).
    fn compared_arrays(&self, case: CaseRef, key: DumpKey, actual: &Array) -> Result<(Array, Array)> {
        if let Some(own) = &self.own_reference {
            let Some(expected) = own.get(&key) else {
                bail!("the rows of case {case} run alone produced no {key}");
            };
            let actual = parity::batch::pack(actual, key.tap.layout(), &self.padding).map_err(anyhow::Error::msg)?;
            return Ok((expected.clone(), actual));
        }
        let expected = reference_at(case, key)?;
        if self.padding.is_empty() || !parity::batch::carries_batch_axis(key.tap) {
            return Ok((expected, actual.clone()));
        }
        let padding = reference_padding(case)?;
        let expected = parity::batch::pack(&expected, key.tap.layout(), &padding).map_err(anyhow::Error::msg)?;
        let actual = parity::batch::pack(actual, key.tap.layout(), &self.padding).map_err(anyhow::Error::msg)?;
        Ok((expected, actual))
    }
}

/// A reference dump of a tap of a part (or of the whole case).
pub fn reference_at(case: CaseRef, key: DumpKey) -> Result<Array> {
    case.dump_at(key).map_err(anyhow::Error::msg)?;
    Ok(parity::npy::read_npy(&case.manifest.root.join(case.dump_path_at(key)))?)
}

/// Each row's padding in the reference's batch: the zeros its `input.attention_mask` starts with.
fn reference_padding(case: CaseRef) -> Result<Vec<usize>> {
    let mask = reference(case, Stage::AttentionMask.tap())?;
    let (Some(values), [rows, seq]) = (mask.as_i64(), mask.shape.as_slice()) else {
        bail!("input.attention_mask of case {case} is not a [batch, seq] i64 array: {:?}", mask.shape)
    };
    Ok((0..*rows).map(|r| values[r * seq..(r + 1) * seq].iter().take_while(|&&m| m == 0).count()).collect())
}

impl Run {
    /// For a tap of generation steps that failed: the first step whose row does not match
    /// (a bug entering at step s shows at s and after). For the tokens, both tokens of that
    /// step as text and the reference's logit margin between them, so that a near tie — two
    /// tokens whose logits differ by less than their tolerance — is told apart from a bug.
    fn first_diverging_step(
        &self,
        case: CaseRef,
        key: DumpKey,
        expected: &Array,
        actual: &Array,
        opts: &CompareOptions,
    ) -> Option<String> {
        let tap = key.tap;
        // Runs of different lengths (one stopped at an end-of-sequence token) are compared
        // over the steps both made.
        let (Some(&expected_steps), Some(&actual_steps)) = (expected.shape.first(), actual.shape.first()) else {
            return None;
        };
        if expected.shape[1..] != actual.shape[1..] {
            return None;
        }
        let common = expected_steps.min(actual_steps);
        let step = (0..common).find(|&s| {
            let (Ok(e), Ok(a)) = (expected.select_rows(&[s]), actual.select_rows(&[s])) else { return true };
            !compare(&e, &a, opts).passed()
        });
        let Some(step) = step else {
            return Some(format!(
                "the first {common} steps agree; Rust made {actual_steps} steps, the reference {expected_steps} \
                 (one run stopped at an end-of-sequence token, or the step count differs)"
            ));
        };
        if tap.stage() != Stage::GenTokens {
            return Some(format!("first diverging step: {step}"));
        }
        let (e, a) = (expected.as_i64()?[step], actual.as_i64()?[step]);
        let texts = token_texts(&self.model_dir, &[e as u32, a as u32]).unwrap_or_default();
        let text = |i: usize, id: i64| texts.get(i).map_or(format!("id {id}"), |t| format!("{t:?} (id {id})"));
        let margin = reference_margin(case, key.part, step, e, a).map_or_else(
            || "the reference's logits of that step are not recorded".to_owned(),
            |(margin, scale)| {
                let t = case.effective_tolerance(Stage::GenLogits.tap());
                let noise = t.atol + t.rtol * scale.abs();
                let verdict = if margin <= 2.0 * noise {
                    "a near tie: within twice the logits' tolerance, rounding can swap them"
                } else {
                    "not a tie: the reference prefers its token by more than twice the logits' tolerance"
                };
                format!("the reference's logits put its token ahead by {margin:.3e} ({verdict}, {noise:.1e})")
            },
        );
        Some(format!("first diverging step: {step}, reference {}, Rust {}; {margin}", text(0, e), text(1, a)))
    }
}

/// The reference's logit of its own token minus that of `other` at `step`, with the size of
/// the logit (for the relative tolerance): from `gen.logits`, or from the top-k record when
/// `other` is among the top k (a lower bound, the top-1 minus the k-th, when it is not).
fn reference_margin(case: CaseRef, part: Option<Part>, step: usize, token: i64, other: i64) -> Option<(f64, f64)> {
    let at_part = |stage: Stage| DumpKey { part, tap: stage.tap() };
    if case.records_at(at_part(Stage::GenLogits)) {
        let logits = reference_at(case, at_part(Stage::GenLogits)).ok()?;
        let vocab = *logits.shape.get(1)?;
        let row = logits.as_f32()?.get(step * vocab..(step + 1) * vocab)?;
        let at = |id: i64| usize::try_from(id).ok().and_then(|i| row.get(i)).map(|&v| f64::from(v));
        let own = at(token)?;
        return Some((own - at(other)?, own));
    }
    let ids = reference_at(case, at_part(Stage::GenTopIds)).ok()?;
    let values = reference_at(case, at_part(Stage::GenTopLogits)).ok()?;
    let k = *ids.shape.get(1)?;
    let ids = ids.as_i64()?.get(step * k..(step + 1) * k)?;
    let values = values.as_f32()?.get(step * k..(step + 1) * k)?;
    let at = |id: i64| ids.iter().position(|&i| i == id).map(|p| f64::from(values[p]));
    let own = at(token)?;
    let other = at(other).unwrap_or(f64::from(*values.last()?));
    Some((own - other, own))
}

/// Compares a tap with its reference: whole, or on one row of `actual` when the case keeps
/// one row of the tap (the first patch, the last position). Also gives the index of the
/// largest absolute difference in the whole tap, so the place is named by its row in the run.
/// The first column of top-k ids [steps, k]: the argmax of each step, [steps, 1].
fn first_column(ids: &Array) -> Result<Array> {
    let (Some(values), [steps, k]) = (ids.as_i64(), ids.shape.as_slice()) else {
        bail!("top-k ids are a [steps, k] i64 array, not {:?}", ids.shape)
    };
    ensure!(*k >= 1, "top-k ids keep no id per step");
    Ok(Array::i64(vec![*steps, 1], values.chunks(*k).map(|row| row[0]).collect()))
}

fn compare_picked(
    expected: &Array,
    actual: &Array,
    pick: Option<RowPick>,
    opts: &CompareOptions,
) -> Result<(Comparison, Option<Vec<usize>>)> {
    let (actual, row_offset) = match pick {
        Some(pick) if !actual.shape.is_empty() => {
            let row = pick.index(actual.shape[0]);
            (actual.select_rows(&[row])?, row)
        }
        _ => (actual.clone(), 0),
    };
    let comparison = compare(expected, &actual, opts);
    let worst = comparison.max_abs.as_ref().map(|w| {
        let mut index = w.index.clone();
        if let Some(first) = index.first_mut() {
            *first += row_offset;
        }
        index
    });
    Ok((comparison, worst))
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use parity::compare::Tolerance;

    use super::*;

    #[test]
    fn bf16_top_ids_are_judged_by_the_argmax_of_each_step() {
        let reference = Array::i64(vec![2, 3], vec![7, 1, 2, 5, 6, 7]);
        let reordered = Array::i64(vec![2, 3], vec![7, 2, 9, 5, 7, 6]);
        let column = |a: &Array| first_column(a).unwrap();
        assert_eq!(column(&reference), Array::i64(vec![2, 1], vec![7, 5]));
        assert_eq!(column(&reference), column(&reordered), "ranks below the first may swap");
        assert_ne!(column(&reference), column(&Array::i64(vec![2, 3], vec![7, 1, 2, 6, 5, 7])), "step 1's argmax");
        assert!(first_column(&Array::i64(vec![3], vec![1, 2, 3])).is_err(), "not [steps, k]");
    }
    use crate::run::workspace_manifest;
    use parity::manifest::Manifest;

    fn tap(name: &str) -> Tap {
        Tap::parse(name).unwrap_or_else(|| panic!("{name} is a contract tap"))
    }

    fn options() -> CompareOptions {
        CompareOptions { tolerance: Tolerance { atol: 1e-6, rtol: 0.0 }, top_k: None, calibration: None }
    }

    /// Three rows of two channels: the reference kept one of them, [10, 20].
    fn three_rows(changed_row: usize) -> (Array, Array) {
        let mut rows = [[-5.0, 7.0], [10.0, 20.0], [10.0, 20.0]];
        rows[changed_row][1] += 0.5;
        (Array::f32(vec![1, 2], vec![10.0, 20.0]), Array::f32(vec![3, 2], rows.concat()))
    }

    #[test]
    fn a_picked_last_row_is_compared_alone_and_named_by_its_row_in_the_whole_tap() {
        let (expected, actual) = three_rows(2);
        let (c, worst) = compare_picked(&expected, &actual, Some(RowPick::Last), &options()).unwrap();
        assert_eq!((c.total, c.mismatched), (2, 1), "the last row alone, one channel off");
        assert_eq!(worst, Some(vec![2, 1]), "the worst element's index in the whole tap");
    }

    #[test]
    fn a_picked_first_row_is_compared_alone_and_the_other_rows_do_not_count() {
        let (expected, mut actual) = three_rows(2);
        let (c, worst) = compare_picked(&expected, &actual, Some(RowPick::First), &options()).unwrap();
        // Row 0 is [-5, 7]: far from the reference row, and the only row compared.
        assert_eq!((c.total, c.mismatched), (2, 2), "the first row alone");
        assert_eq!(worst, Some(vec![0, 0]), "the worst element's index in the whole tap");
        actual = Array::f32(vec![3, 2], vec![10.0, 20.0, 0.0, 0.0, 0.0, 0.0]);
        let (c, _) = compare_picked(&expected, &actual, Some(RowPick::First), &options()).unwrap();
        assert!(c.passed(), "the first row matches, the others are not compared:\n{c}");
    }

    #[test]
    fn an_unpicked_tap_is_compared_whole() {
        let expected = Array::f32(vec![2, 2], vec![1.0, 2.0, 3.0, 4.0]);
        let actual = Array::f32(vec![2, 2], vec![1.0, 2.0, 3.0, 4.5]);
        let (c, worst) = compare_picked(&expected, &actual, None, &options()).unwrap();
        assert_eq!((c.total, c.mismatched), (4, 1), "every element compared");
        assert_eq!(worst, Some(vec![1, 1]), "the worst element's index");
    }

    #[test]
    fn a_tap_without_axes_is_compared_whole_even_when_a_row_is_picked() {
        let expected = Array::f32(vec![], vec![1.0]);
        let actual = Array::f32(vec![], vec![1.5]);
        let (c, worst) = compare_picked(&expected, &actual, Some(RowPick::Last), &options()).unwrap();
        assert_eq!((c.total, c.mismatched), (1, 1), "the one element compared");
        assert_eq!(worst, Some(vec![]), "a scalar's index is empty");
    }

    /// A run that produced `taps`, with the token ids of `case`'s reference.
    fn run_of(case: &str, taps: BTreeMap<Tap, Array>, failure: Option<&str>) -> Run {
        let taps = taps.into_iter().map(|(t, a)| (DumpKey::whole(t), a)).collect();
        let manifest = workspace_manifest().unwrap();
        let ids = reference(manifest.case(case).unwrap(), Stage::InputIds.tap()).unwrap();
        let input_ids = ids.as_i64().expect("integer token ids").iter().map(|&i| i as u32).collect();
        Run {
            mode: Mode::FromImageFiles,
            taps,
            own_reference: None,
            padding: Vec::new(),
            notes: Vec::new(),
            row_lengths: Vec::new(),
            grids: Vec::new(),
            videos: 0,
            video_frames: Vec::new(),
            rotary: Vec::new(),
            merge: 2,
            input_ids,
            token_texts: None,
            model_dir: std::path::PathBuf::new(),
            failure: failure.map(String::from),
        }
    }

    #[test]
    fn a_changed_element_of_a_one_row_case_is_named_by_its_token_position_in_the_whole_run() {
        // standin-astronaut keeps the last position of each lm tap: lm.norm is [1, hidden] of 220 tokens.
        let manifest = workspace_manifest().unwrap();
        let kept = reference(manifest.case("standin-astronaut").unwrap(), tap("lm.norm")).unwrap();
        let mut row = kept.as_f32().expect("f32 lm.norm").to_vec();
        row[7] += 1.0;
        let hidden = row.len();
        let mut whole = vec![0.0; 219 * hidden];
        whole.extend(row);
        let taps = BTreeMap::from([(tap("lm.norm"), Array::f32(vec![220, hidden], whole))]);
        let run = run_of("standin-astronaut", taps, None);
        let result = run.check(manifest.case("standin-astronaut").unwrap(), tap("lm.norm")).unwrap();
        assert!(!result.passed(), "a changed element passed:\n{}", result.message());
        assert_eq!(result.comparison.total, hidden, "only the kept row is compared");
        let id = run.input_ids[219];
        let place = format!("token position 219 (id {id}), channel 7");
        assert_eq!(result.location.as_deref(), Some(place.as_str()), "the worst element's place");
        let message = result.message();
        for needle in ["case standin-astronaut · tap lm.norm · from-image-files", &format!("Worst element: {place}")]
        {
            assert!(message.contains(needle), "the message does not say {needle:?}:\n{message}");
        }
    }

    #[test]
    fn the_last_logits_are_compared_on_their_top_k_and_other_taps_are_not() {
        let manifest = workspace_manifest().unwrap();
        let taps: BTreeMap<Tap, Array> = ["lm.logits_last", "lm.norm"]
            .into_iter()
            .map(|name| (tap(name), reference(manifest.case("chelsea").unwrap(), tap(name)).unwrap()))
            .collect();
        let run = run_of("chelsea", taps, None);
        let logits = run.check(manifest.case("chelsea").unwrap(), tap("lm.logits_last")).unwrap();
        assert!(logits.passed(), "the reference logits against themselves:\n{}", logits.message());
        assert!(logits.comparison.logits.is_some(), "lm.logits_last is compared on its top {TOP_K}");
        assert_eq!(logits.location, None, "the last position's logits name no place");
        let norm = run.check(manifest.case("chelsea").unwrap(), tap("lm.norm")).unwrap();
        assert!(norm.comparison.logits.is_none(), "lm.norm has no top-k comparison");
        assert!(norm.location.is_some(), "a tap per token names its worst element even when it passes");
    }

    #[test]
    fn a_tap_the_run_did_not_produce_is_an_error_saying_why() {
        let manifest = workspace_manifest().unwrap();
        let stopped = run_of("chelsea", BTreeMap::new(), Some("out of memory"));
        let err = format!(
            "{:#}",
            stopped.check(manifest.case("chelsea").unwrap(), tap("lm.norm")).err().expect("no lm.norm")
        );
        assert_eq!(err, "the from-image-files run of case chelsea stopped before lm.norm: out of memory", "stopped");
        let silent = run_of("chelsea", BTreeMap::new(), None);
        let err =
            format!("{:#}", silent.check(manifest.case("chelsea").unwrap(), tap("lm.norm")).err().expect("no lm.norm"));
        assert_eq!(err, "the from-image-files run of case chelsea produced no lm.norm", "not produced");
    }

    #[test]
    fn a_message_without_a_place_has_no_worst_element_line() {
        let expected = Array::f32(vec![2], vec![1.0, 2.0]);
        let (comparison, _) = compare_picked(&expected, &expected, None, &options()).unwrap();
        let result = TapResult {
            case: "c".into(),
            tap: tap("lm.logits_last").into(),
            mode: Mode::LmTeacherForced,
            comparison,
            location: None,
            routing: None,
        };
        let message = result.message();
        assert!(message.starts_with("case c · tap lm.logits_last · lm-teacher-forced\n"), "the heading:\n{message}");
        assert!(!message.contains("Worst element"), "a place was named without one:\n{message}");
        assert!(result.passed(), "identical arrays pass:\n{message}");
    }

    /// chelsea's greedy tokens with step `step` replaced by the reference's `rank`-th choice there.
    fn tokens_with_runner_up(manifest: &Manifest, step: usize, rank: usize) -> (Array, i64, i64) {
        let tokens = reference(manifest.case("chelsea").unwrap(), tap("gen.tokens")).unwrap();
        let logits = reference(manifest.case("chelsea").unwrap(), tap("gen.logits")).unwrap();
        let vocab = logits.shape[1];
        let row = &logits.as_f32().unwrap()[step * vocab..(step + 1) * vocab];
        let mut order: Vec<usize> = (0..vocab).collect();
        order.sort_by(|&a, &b| row[b].total_cmp(&row[a]));
        let mut ids = tokens.as_i64().unwrap().to_vec();
        let (chosen, other) = (ids[step], order[rank] as i64);
        assert_eq!(chosen, order[0] as i64, "the reference's token is its argmax");
        ids[step] = other;
        (Array::i64(tokens.shape.clone(), ids), chosen, other)
    }

    #[test]
    fn a_different_generated_token_is_named_by_its_step_both_texts_and_the_references_margin() {
        let manifest = workspace_manifest().unwrap();
        let (tokens, chosen, other) = tokens_with_runner_up(&manifest, 3, 1);
        let mut run = run_of("chelsea", BTreeMap::from([(tap("gen.tokens"), tokens)]), None);
        run.mode = Mode::Generate;
        run.model_dir = manifest.root.join("fixtures/models/tiny-qwen3.6-27b");
        let result = run.check(manifest.case("chelsea").unwrap(), tap("gen.tokens")).unwrap();
        let message = result.message();
        assert!(!result.passed(), "a changed token passed:\n{message}");
        let texts = token_texts(&run.model_dir, &[chosen as u32, other as u32]).unwrap();
        let logits = reference(manifest.case("chelsea").unwrap(), tap("gen.logits")).unwrap();
        let vocab = logits.shape[1];
        let row = &logits.as_f32().unwrap()[3 * vocab..4 * vocab];
        let margin = f64::from(row[chosen as usize]) - f64::from(row[other as usize]);
        for needle in [
            format!("ahead by {margin:.3e}"),
            "first diverging step: 3".to_owned(),
            format!("reference {:?} (id {chosen}), Rust {:?} (id {other})", texts[0], texts[1]),
            "the reference's logits put its token ahead by".to_owned(),
            "not a tie".to_owned(),
        ] {
            assert!(message.contains(&needle), "the message does not say {needle:?}:\n{message}");
        }
    }

    /// The message for chelsea's tokens with step 5 (the smallest margin, 0.098) replaced by the
    /// reference's second choice, with the logits' tolerance set to `atol` and `rtol`.
    fn runner_up_at_step_5_under(manifest: &mut Manifest, atol: f64, rtol: f64) -> String {
        let tolerance = parity::manifest::ToleranceSpec { atol, rtol };
        let pattern = parity::manifest::TapPattern::parse("gen.logits").unwrap();
        manifest.cases.get_mut("chelsea").unwrap().tap_tolerance.insert(pattern, tolerance);
        let (tokens, _, _) = tokens_with_runner_up(manifest, 5, 1);
        let mut run = run_of("chelsea", BTreeMap::from([(tap("gen.tokens"), tokens)]), None);
        run.model_dir = manifest.root.join("fixtures/models/tiny-qwen3.6-27b");
        run.check(manifest.case("chelsea").unwrap(), tap("gen.tokens")).unwrap().message()
    }

    #[test]
    fn a_runner_up_within_the_logits_tolerance_is_called_a_near_tie() {
        let mut manifest = workspace_manifest().unwrap();
        // chelsea's step 5 has the smallest margin between first and second choice (0.098):
        // a logits tolerance wider than half of it makes that a near tie.
        let message = runner_up_at_step_5_under(&mut manifest, 0.05, 0.0);
        assert!(message.contains("first diverging step: 5") && message.contains("a near tie"), "{message}");
    }

    #[test]
    fn a_generation_that_stops_early_is_named_by_the_steps_both_runs_made() {
        let manifest = workspace_manifest().unwrap();
        let tokens = reference(manifest.case("chelsea").unwrap(), tap("gen.tokens")).unwrap();
        let ids = tokens.as_i64().unwrap();
        let short = Array::i64(vec![5], ids[..5].to_vec());
        let mut run = run_of("chelsea", BTreeMap::from([(tap("gen.tokens"), short)]), None);
        run.model_dir = manifest.root.join("fixtures/models/tiny-qwen3.6-27b");
        let result = run.check(manifest.case("chelsea").unwrap(), tap("gen.tokens")).unwrap();
        let message = result.message();
        assert!(!result.passed(), "a shorter run passed:\n{message}");
        assert!(
            message.contains("the first 5 steps agree; Rust made 5 steps, the reference 8"),
            "the message should say how far the runs agree:\n{message}"
        );
    }

    #[test]
    fn a_near_tie_is_judged_against_the_relative_tolerance_at_the_size_of_the_logit() {
        let mut manifest = workspace_manifest().unwrap();
        // Step 5's first two logits are 5.549 and 5.451 (margin 0.098): with rtol 0.009 alone
        // the allowance is 0.009 · 5.549 = 0.050, twice of which covers the margin (0.009
        // taken of the margin or of 1 would not).
        let message = runner_up_at_step_5_under(&mut manifest, 0.0, 0.009);
        assert!(message.contains("a near tie") && message.contains("5.0e-2"), "{message}");
    }

    #[test]
    fn a_top_k_cases_margin_is_read_at_its_step_and_bounded_below_past_the_kept_ids() {
        // standin-astronaut keeps the reference's top 64 ids and logits of each step.
        let manifest = workspace_manifest().unwrap();
        let ids = reference(manifest.case("standin-astronaut").unwrap(), tap("gen.top_ids")).unwrap();
        let values = reference(manifest.case("standin-astronaut").unwrap(), tap("gen.top_logits")).unwrap();
        let k = ids.shape[1];
        let (ids, values) = (&ids.as_i64().unwrap()[2 * k..3 * k], &values.as_f32().unwrap()[2 * k..3 * k]);
        let (first, fourth) = (f64::from(values[0]), f64::from(values[3]));
        assert_eq!(
            reference_margin(manifest.case("standin-astronaut").unwrap(), None, 2, ids[0], ids[3]),
            Some((first - fourth, first)),
            "step 2: its first id against its fourth"
        );
        let absent = (0..).find(|id| !ids.contains(id)).unwrap();
        assert_eq!(
            reference_margin(manifest.case("standin-astronaut").unwrap(), None, 2, ids[0], absent),
            Some((first - f64::from(values[k - 1]), first)),
            "an id outside the kept 64: at least the first minus the 64th"
        );
    }
}
