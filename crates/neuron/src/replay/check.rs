//! Comparing a run's tap with the reference dump under the manifest's tolerance, and naming
//! the worst element in model terms.

use anyhow::{bail, Result};
use parity::array::Array;
use parity::compare::{compare, CompareOptions, Comparison};
use parity::manifest::{Manifest, RowPick};
use parity::taps::Tap;

use super::{reference, Mode, Run};

/// How many top logits are compared for `lm.logits_last`.
pub const TOP_K: usize = 5;

/// The result of checking one tap of one run.
pub struct TapResult {
    /// The case the run replayed.
    pub case: String,
    /// The tap compared.
    pub tap: String,
    /// The mode of the run.
    pub mode: Mode,
    /// The metrics of the comparison with the reference dump.
    pub comparison: Comparison,
    /// The worst element in model terms (image, patch row/col, token position).
    pub location: Option<String>,
}

impl TapResult {
    /// Whether the tap matches the reference within the tolerance.
    pub fn passed(&self) -> bool {
        self.comparison.passed()
    }

    /// A failure message naming the case, the tap, the mode, the metrics and the place.
    pub fn message(&self) -> String {
        let mut s = format!("case {} · tap {} · {}\n{}", self.case, self.tap, self.mode.name(), self.comparison);
        if let Some(loc) = &self.location {
            s.push_str(&format!("\nWorst element: {loc}"));
        }
        s
    }
}

impl Run {
    /// Compares the run's tap with the recorded dump under the manifest's tolerance.
    pub fn check(&self, manifest: &Manifest, case: &str, tap: &str) -> Result<TapResult> {
        let expected = reference(manifest, case, tap)?;
        let Some(actual) = self.taps.get(tap) else {
            match &self.failure {
                Some(why) => bail!("the {} run of case {case} stopped before {tap}: {why}", self.mode.name()),
                None => bail!("the {} run of case {case} produced no {tap}", self.mode.name()),
            }
        };
        let parsed = Tap::parse(tap);
        let opts = CompareOptions {
            tolerance: manifest.tolerance(case, tap),
            top_k: (tap == "lm.logits_last").then_some(TOP_K),
        };
        let (comparison, worst) =
            compare_picked(&expected, actual, parsed.and_then(|t| manifest.row_pick(case, t)), &opts)?;
        let location = worst.and_then(|index| self.locator().locate(parsed?, &index));
        Ok(TapResult { case: case.to_owned(), tap: tap.to_owned(), mode: self.mode, comparison, location })
    }
}

/// Compares a tap with its reference: whole, or on one row of `actual` when the case keeps
/// one row of the tap (the first patch, the last position). Also gives the index of the
/// largest absolute difference in the whole tap, so the place is named by its row in the run.
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
    use crate::replay::workspace_manifest;

    fn options() -> CompareOptions {
        CompareOptions { tolerance: Tolerance { atol: 1e-6, rtol: 0.0 }, top_k: None }
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
    fn run_of(case: &str, taps: BTreeMap<String, Array>, failure: Option<&str>) -> Run {
        let manifest = workspace_manifest().unwrap();
        let ids = reference(&manifest, case, "input.input_ids").unwrap();
        let input_ids = ids.as_i64().expect("integer token ids").iter().map(|&i| i as u32).collect();
        Run {
            mode: Mode::FromImageFiles,
            taps,
            grids: Vec::new(),
            rotary: Vec::new(),
            merge: 2,
            input_ids,
            token_texts: None,
            failure: failure.map(String::from),
        }
    }

    #[test]
    fn a_changed_element_of_a_one_row_case_is_named_by_its_token_position_in_the_whole_run() {
        // standin-astronaut keeps the last position of each lm tap: lm.norm is [1, hidden] of 220 tokens.
        let manifest = workspace_manifest().unwrap();
        let kept = reference(&manifest, "standin-astronaut", "lm.norm").unwrap();
        let mut row = kept.as_f32().expect("f32 lm.norm").to_vec();
        row[7] += 1.0;
        let hidden = row.len();
        let mut whole = vec![0.0; 219 * hidden];
        whole.extend(row);
        let taps = BTreeMap::from([("lm.norm".to_owned(), Array::f32(vec![220, hidden], whole))]);
        let run = run_of("standin-astronaut", taps, None);
        let result = run.check(&manifest, "standin-astronaut", "lm.norm").unwrap();
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
        let taps: BTreeMap<String, Array> = ["lm.logits_last", "lm.norm"]
            .into_iter()
            .map(|tap| (tap.to_owned(), reference(&manifest, "chelsea", tap).unwrap()))
            .collect();
        let run = run_of("chelsea", taps, None);
        let logits = run.check(&manifest, "chelsea", "lm.logits_last").unwrap();
        assert!(logits.passed(), "the reference logits against themselves:\n{}", logits.message());
        assert!(logits.comparison.logits.is_some(), "lm.logits_last is compared on its top {TOP_K}");
        assert_eq!(logits.location, None, "the last position's logits name no place");
        let norm = run.check(&manifest, "chelsea", "lm.norm").unwrap();
        assert!(norm.comparison.logits.is_none(), "lm.norm has no top-k comparison");
        assert!(norm.location.is_some(), "a tap per token names its worst element even when it passes");
    }

    #[test]
    fn a_tap_the_run_did_not_produce_is_an_error_saying_why() {
        let manifest = workspace_manifest().unwrap();
        let stopped = run_of("chelsea", BTreeMap::new(), Some("out of memory"));
        let err = format!("{:#}", stopped.check(&manifest, "chelsea", "lm.norm").err().expect("no lm.norm"));
        assert_eq!(err, "the from-image-files run of case chelsea stopped before lm.norm: out of memory", "stopped");
        let silent = run_of("chelsea", BTreeMap::new(), None);
        let err = format!("{:#}", silent.check(&manifest, "chelsea", "lm.norm").err().expect("no lm.norm"));
        assert_eq!(err, "the from-image-files run of case chelsea produced no lm.norm", "not produced");
    }

    #[test]
    fn a_message_without_a_place_has_no_worst_element_line() {
        let expected = Array::f32(vec![2], vec![1.0, 2.0]);
        let (comparison, _) = compare_picked(&expected, &expected, None, &options()).unwrap();
        let result = TapResult {
            case: "c".into(),
            tap: "lm.logits_last".into(),
            mode: Mode::LmTeacherForced,
            comparison,
            location: None,
        };
        let message = result.message();
        assert!(message.starts_with("case c · tap lm.logits_last · lm-teacher-forced\n"), "the heading:\n{message}");
        assert!(!message.contains("Worst element"), "a place was named without one:\n{message}");
        assert!(result.passed(), "identical arrays pass:\n{message}");
    }
}
