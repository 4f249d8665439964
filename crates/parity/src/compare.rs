//! `torch.testing.assert_close`-style comparison of a Rust tensor against a PyTorch dump.
//!
//! The pass/fail rule is torch's: an element passes when
//! `|actual − expected| <= atol + rtol·|expected|`, computed in `f64`. It is stricter than
//! torch in two ways, because a port that produces NaN or ±inf has a bug even when the
//! reference does too: non-finite values never pass (not even NaN against NaN or inf
//! against the same inf), and `i64` arrays must match exactly whatever the tolerance.
//!
//! Besides pass/fail, a [`Comparison`] carries the diagnostics needed to judge a failure
//! (how many elements, where the worst ones are, cosine similarity, and for logits whether
//! the predicted tokens agree).

use std::collections::HashSet;
use std::fmt;

use crate::array::{unravel_index, Array, Data};
use contract::ArrayDtype;

/// Absolute and relative tolerance of the assert_close rule.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Tolerance {
    /// Allowed absolute difference.
    pub atol: f64,
    /// Allowed difference relative to `|expected|`.
    pub rtol: f64,
}

impl Tolerance {
    /// Zero tolerance, applied to integer arrays.
    pub const EXACT: Tolerance = Tolerance { atol: 0.0, rtol: 0.0 };

    /// The assert_close rule for one element (both values finite).
    fn allows(&self, abs_diff: f64, expected: f64) -> bool {
        abs_diff <= self.atol + self.rtol * expected.abs()
    }
}

impl Default for Tolerance {
    /// `atol = rtol = 1e-3`: loose enough for f32 kernels that reorder sums, tight enough
    /// to catch a wrong op.
    fn default() -> Self {
        Tolerance { atol: 1e-3, rtol: 1e-3 }
    }
}

/// What [`compare`] checks beyond the element-wise rule.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct CompareOptions {
    /// Tolerance for `f32` arrays (ignored for `i64`, which must match exactly, and replaced by
    /// the calibrated bound when `calibration` is set).
    pub tolerance: Tolerance,
    /// A bf16 tap: judged against the reference's own bf16-vs-f32 deviation instead of a fixed
    /// tolerance (see [`Calibration`]).
    pub calibration: Option<Calibration>,
    /// `Some(k)` treats the arrays as logits and reports argmax agreement and top-`k`
    /// overlap over the flattened tensor (select a single row with
    /// [`Array::select_rows`] first to check one position).
    pub top_k: Option<usize>,
}

/// How far the reference moves from itself between two dtypes: its bf16 run against its f32
/// run of the same inputs, one tap (`capture` measures it; [`noise`] computes it).
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Noise {
    /// Greatest `|bf16 − f32|`.
    pub max_abs: f64,
    /// Root mean square of `bf16 − f32`.
    pub rms: f64,
    /// Cosine similarity of the two runs.
    pub cosine: f64,
}

/// The bf16 rule: the port's deviation from the bf16 reference may be at most `k` times the
/// reference's own bf16-vs-f32 deviation, on the greatest absolute difference and on the RMS
/// of the difference. For logits (`top_k` set) the argmax and the whole top-k set must agree too.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Calibration {
    pub k: f64,
    pub noise: Noise,
}

impl Calibration {
    /// The per-element bound: `|Δ| ≤ k · noise.max_abs`, with no relative part.
    pub fn tolerance(&self) -> Tolerance {
        Tolerance { atol: self.k * self.noise.max_abs, rtol: 0.0 }
    }

    /// The bound on the RMS of the difference.
    pub fn rms_bound(&self) -> f64 {
        self.k * self.noise.rms
    }
}

/// The reference's own deviation between two runs of one tap (`other` against `base`, e.g. its
/// bf16 run against its f32 run): `None` when the shapes or dtypes differ, or either holds a
/// non-finite value.
pub fn noise(base: &Array, other: &Array) -> Option<Noise> {
    let c = compare(base, other, &CompareOptions { tolerance: Tolerance::EXACT, calibration: None, top_k: None });
    if c.expected_shape != c.actual_shape || c.dtype_mismatch.is_some() || c.non_finite > 0 {
        return None;
    }
    Some(Noise { max_abs: c.max_abs.map_or(0.0, |w| w.value), rms: c.rms.unwrap_or(0.0), cosine: c.cosine? })
}

/// The element with the greatest absolute or relative difference.
#[derive(Debug, Clone, PartialEq)]
pub struct Worst {
    /// C-order position.
    pub flat: usize,
    /// Multi-dimensional index.
    pub index: Vec<usize>,
    /// The difference; `+inf` if either value is non-finite.
    pub value: f64,
    /// The expected value there.
    pub expected: f64,
    /// The actual value there.
    pub actual: f64,
}

/// Whether a model port predicts the same tokens as the reference.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LogitAgreement {
    /// Flat index of the largest expected logit (first one on ties).
    pub expected_argmax: usize,
    /// Flat index of the largest actual logit (first one on ties).
    pub actual_argmax: usize,
    /// The `k` used: the requested one, clamped to `1..=len`.
    pub k: usize,
    /// How many of the expected top-`k` indices are also in the actual top-`k`.
    pub overlap: usize,
}

impl LogitAgreement {
    /// Whether both sides predict the same index.
    pub fn argmax_agrees(&self) -> bool {
        self.expected_argmax == self.actual_argmax
    }

    /// `|topk(expected) ∩ topk(actual)| / k`, in `[0, 1]`.
    pub fn top_k_overlap(&self) -> f64 {
        self.overlap as f64 / self.k as f64
    }
}

impl fmt::Display for LogitAgreement {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let verdict = if self.argmax_agrees() { "agree" } else { "differ" };
        write!(
            f,
            "Argmax: expected {}, actual {} ({verdict}); top-{} overlap: {}/{}",
            self.expected_argmax, self.actual_argmax, self.k, self.overlap, self.k
        )
    }
}

/// The outcome of comparing one tensor against its reference.
///
/// Element statistics (`total` and below) are only computed when shapes and dtypes
/// agree; otherwise they are zero / `None` and [`Comparison::passed`] is false.
#[derive(Debug, Clone, PartialEq)]
pub struct Comparison {
    /// Shape of the reference.
    pub expected_shape: Vec<usize>,
    /// Shape of the port's output.
    pub actual_shape: Vec<usize>,
    /// Element type of the reference.
    pub dtype: ArrayDtype,
    /// `Some((expected, actual))` when the element types differ.
    pub dtype_mismatch: Option<(ArrayDtype, ArrayDtype)>,
    /// The tolerance applied: the requested one for `f32`, [`Tolerance::EXACT`] for `i64`.
    pub tolerance: Tolerance,
    /// Number of elements compared.
    pub total: usize,
    /// Elements failing the rule (including every non-finite one). If an array's data does
    /// not fill its shape, the unmatched elements count here too.
    pub mismatched: usize,
    /// Positions where either side is NaN or ±inf.
    pub non_finite: usize,
    /// Greatest `|actual − expected|` over all elements, passing or not. Non-finite
    /// positions count as `+inf`, so when there are any this is the first of them.
    pub max_abs: Option<Worst>,
    /// Greatest `|actual − expected| / |expected|` over all elements: `0` where they are
    /// equal, `+inf` where only `expected` is zero or either side is non-finite.
    pub max_rel: Option<Worst>,
    /// Cosine similarity of the flattened tensors, accumulated in `f64` and clamped to
    /// `[-1, 1]`: `1` if both are all zeros, `0` if only one is, NaN if any element is
    /// non-finite.
    pub cosine: Option<f64>,
    /// Token agreement, when requested with [`CompareOptions::top_k`] and non-empty.
    pub logits: Option<LogitAgreement>,
    /// Root mean square of `actual − expected` (infinite when any element is non-finite).
    pub rms: Option<f64>,
    /// The bf16 rule this comparison was judged by, if any.
    pub calibration: Option<Calibration>,
}

impl Comparison {
    /// Shapes and dtypes agree and every element satisfies the rule. Logit agreement is
    /// reported but does not affect this.
    pub fn passed(&self) -> bool {
        self.expected_shape == self.actual_shape
            && self.dtype_mismatch.is_none()
            && self.mismatched == 0
            && self.calibrated_checks_pass()
    }

    /// Under a [`Calibration`]: the RMS of the difference within its bound, and for logits the
    /// same argmax and the same top-k set. Always true without one.
    fn calibrated_checks_pass(&self) -> bool {
        let Some(cal) = self.calibration.filter(|_| self.dtype == ArrayDtype::F32) else { return true };
        let rms_ok = self.rms.is_some_and(|rms| rms <= cal.rms_bound());
        let logits_ok = self.logits.is_none_or(|l| l.argmax_agrees() && l.overlap == l.k);
        rms_ok && logits_ok
    }

    /// The port's deviation in units of the reference's own (the larger of the max and RMS
    /// ratios; a tap passes at ratios up to `k`). `None` without a calibration.
    pub fn noise_ratio(&self) -> Option<f64> {
        let cal = self.calibration.filter(|_| self.dtype == ArrayDtype::F32)?;
        let ratio = |ours: f64, noise: f64| if ours == 0.0 { 0.0 } else { ours / noise };
        let max = ratio(self.max_abs.as_ref().map_or(0.0, |w| w.value), cal.noise.max_abs);
        let rms = ratio(self.rms.unwrap_or(0.0), cal.noise.rms);
        Some(max.max(rms))
    }

    /// `mismatched / total`, or 0 when nothing was compared.
    pub fn mismatched_fraction(&self) -> f64 {
        if self.total == 0 {
            0.0
        } else {
            self.mismatched as f64 / self.total as f64
        }
    }

    fn is_exact(&self) -> bool {
        self.tolerance == Tolerance::EXACT
    }

    /// One line for a comparison that passed.
    fn fmt_summary(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let verb = if self.is_exact() { "equal" } else { "close" };
        write!(f, "Tensor-likes are {verb}: {} {} elements", self.total, self.dtype)?;
        if let (Some(worst), false) = (&self.max_abs, self.is_exact()) {
            write!(
                f,
                "; greatest absolute difference {} at index {} (up to {} allowed)",
                worst.value,
                format_index(&worst.index),
                self.tolerance.atol
            )?;
        }
        if let Some(cosine) = self.cosine {
            write!(f, "; cosine similarity {cosine}")?;
        }
        if let Some(logits) = &self.logits {
            write!(f, "; {logits}")?;
        }
        if let (Some(cal), Some(ratio)) = (self.calibration, self.noise_ratio()) {
            write!(f, "; {:.2} × the reference's bf16-vs-f32 deviation (k = {})", ratio, cal.k)?;
        }
        Ok(())
    }

    /// The calibrated bounds and where this comparison stands against them.
    fn fmt_calibration(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let (Some(cal), Some(ratio)) = (self.calibration, self.noise_ratio()) else { return Ok(()) };
        let rms = self.rms.unwrap_or(f64::NAN);
        write!(
            f,
            "\nRMS difference: {rms} (up to {} allowed = k {} × the reference's own {})\n\
             Reference bf16 vs f32: greatest absolute difference {}, RMS {}, cosine {}; \
             this port is {ratio:.2} × that",
            cal.rms_bound(),
            cal.k,
            cal.noise.rms,
            cal.noise.max_abs,
            cal.noise.rms,
            cal.noise.cosine
        )?;
        if let Some(l) = self.logits.filter(|l| !(l.argmax_agrees() && l.overlap == l.k)) {
            write!(f, "\nThe bf16 rule needs the same argmax and top-{} set: {l}", l.k)?;
        }
        Ok(())
    }

    /// A torch-style "Greatest ... difference" line.
    fn fmt_worst(&self, f: &mut fmt::Formatter<'_>, kind: &str, worst: &Worst, allowed: f64) -> fmt::Result {
        if self.total == 1 {
            let mut kind = kind.to_owned();
            kind[..1].make_ascii_uppercase();
            write!(f, "\n{kind} difference: {}", worst.value)?;
        } else {
            write!(f, "\nGreatest {kind} difference: {} at index {}", worst.value, format_index(&worst.index))?;
        }
        if allowed > 0.0 {
            write!(f, " (up to {allowed} allowed)")?;
        }
        Ok(())
    }
}

/// Formats like torch: `5` for one dimension, `(4, 17)` for several, `()` for none.
fn format_index(index: &[usize]) -> String {
    match index {
        [only] => only.to_string(),
        _ => {
            let parts: Vec<String> = index.iter().map(usize::to_string).collect();
            format!("({})", parts.join(", "))
        }
    }
}

impl fmt::Display for Comparison {
    /// Mirrors `torch.testing.assert_close` messages, including its order of operands in
    /// attribute mismatches: `actual != expected`. Diagnostics torch lacks (non-finite
    /// count, cosine, logits) follow on extra lines. A passing comparison is one line.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.expected_shape != self.actual_shape {
            return write!(
                f,
                "The values for attribute 'shape' do not match: {:?} != {:?}.",
                self.actual_shape, self.expected_shape
            );
        }
        if let Some((expected, actual)) = self.dtype_mismatch {
            return write!(f, "The values for attribute 'dtype' do not match: {actual} != {expected}.");
        }
        if self.passed() {
            return self.fmt_summary(f);
        }
        let verb = if self.is_exact() { "equal" } else { "close" };
        write!(
            f,
            "Tensor-likes are not {verb}!\n\nMismatched elements: {} / {} ({:.1}%)",
            self.mismatched,
            self.total,
            100.0 * self.mismatched_fraction()
        )?;
        if let Some(worst) = &self.max_abs {
            self.fmt_worst(f, "absolute", worst, self.tolerance.atol)?;
        }
        if let Some(worst) = &self.max_rel {
            self.fmt_worst(f, "relative", worst, self.tolerance.rtol)?;
        }
        if self.non_finite > 0 {
            write!(f, "\nNon-finite elements: {}", self.non_finite)?;
            // Non-finite positions are the only ones with an infinite absolute difference,
            // and the first of them is the reported maximum.
            if let Some(first) = self.max_abs.as_ref().filter(|w| w.value == f64::INFINITY) {
                write!(
                    f,
                    " (first at index {}: expected {}, actual {})",
                    format_index(&first.index),
                    first.expected,
                    first.actual
                )?;
            }
        }
        if let Some(cosine) = self.cosine {
            write!(f, "\nCosine similarity: {cosine}")?;
        }
        if let Some(logits) = &self.logits {
            write!(f, "\n{logits}")?;
        }
        self.fmt_calibration(f)
    }
}

/// How one pair of elements compares.
struct ElementDiff {
    abs: f64,
    rel: f64,
    passes: bool,
    finite: bool,
}

impl ElementDiff {
    fn finite(abs: f64, expected: f64, passes: bool) -> Self {
        // abs / 0 is +inf for a nonzero difference; equal values have no relative error.
        let rel = if abs == 0.0 { 0.0 } else { abs / expected.abs() };
        ElementDiff { abs, rel, passes, finite: true }
    }
}

/// An element type [`compare`] knows how to judge.
trait Element: Copy {
    fn to_f64(self) -> f64;
    fn diff(expected: Self, actual: Self, tolerance: Tolerance) -> ElementDiff;
}

impl Element for f32 {
    fn to_f64(self) -> f64 {
        f64::from(self)
    }

    fn diff(expected: Self, actual: Self, tolerance: Tolerance) -> ElementDiff {
        let (e, a) = (f64::from(expected), f64::from(actual));
        if !(e.is_finite() && a.is_finite()) {
            return ElementDiff { abs: f64::INFINITY, rel: f64::INFINITY, passes: false, finite: false };
        }
        let abs = (a - e).abs();
        ElementDiff::finite(abs, e, tolerance.allows(abs, e))
    }
}

impl Element for i64 {
    fn to_f64(self) -> f64 {
        self as f64
    }

    fn diff(expected: Self, actual: Self, _: Tolerance) -> ElementDiff {
        // i128 so that i64::MIN vs i64::MAX cannot overflow.
        let abs = (i128::from(actual) - i128::from(expected)).unsigned_abs() as f64;
        ElementDiff::finite(abs, expected as f64, actual == expected)
    }
}

/// Compares `actual` (the port's output) against `expected` (the PyTorch reference).
///
/// Never panics, whatever the inputs.
pub fn compare(expected: &Array, actual: &Array, opts: &CompareOptions) -> Comparison {
    let mut comparison = Comparison {
        expected_shape: expected.shape.clone(),
        actual_shape: actual.shape.clone(),
        dtype: expected.dtype(),
        dtype_mismatch: (expected.dtype() != actual.dtype()).then_some((expected.dtype(), actual.dtype())),
        tolerance: match (expected.dtype(), opts.calibration) {
            (ArrayDtype::F32, Some(cal)) => cal.tolerance(),
            (ArrayDtype::F32, None) => opts.tolerance,
            (ArrayDtype::I64, _) => Tolerance::EXACT,
        },
        total: 0,
        mismatched: 0,
        non_finite: 0,
        max_abs: None,
        max_rel: None,
        cosine: None,
        logits: None,
        rms: None,
        calibration: opts.calibration,
    };
    if expected.shape != actual.shape {
        return comparison;
    }
    match (&expected.data, &actual.data) {
        (Data::F32(e), Data::F32(a)) => fill(&mut comparison, e, a, opts.top_k),
        (Data::I64(e), Data::I64(a)) => fill(&mut comparison, e, a, opts.top_k),
        _ => {}
    }
    comparison
}

/// Computes the element statistics of `comparison` (whose shapes and dtypes agree).
fn fill<T: Element>(comparison: &mut Comparison, expected: &[T], actual: &[T], top_k: Option<usize>) {
    let mut max_abs: Option<(usize, f64)> = None;
    let mut max_rel: Option<(usize, f64)> = None;
    let (mut dot, mut expected_sq, mut actual_sq, mut diff_sq) = (0.0f64, 0.0f64, 0.0f64, 0.0f64);
    for (flat, (&e, &a)) in expected.iter().zip(actual).enumerate() {
        let diff = T::diff(e, a, comparison.tolerance);
        comparison.mismatched += usize::from(!diff.passes);
        comparison.non_finite += usize::from(!diff.finite);
        // Strict `>`: ties keep the first index.
        if max_abs.is_none_or(|(_, worst)| diff.abs > worst) {
            max_abs = Some((flat, diff.abs));
        }
        if max_rel.is_none_or(|(_, worst)| diff.rel > worst) {
            max_rel = Some((flat, diff.rel));
        }
        diff_sq += diff.abs * diff.abs;
        let (e, a) = (e.to_f64(), a.to_f64());
        dot += e * a;
        expected_sq += e * e;
        actual_sq += a * a;
    }
    // Only possible for arrays built by hand whose data does not fill their shape: the
    // elements present on one side only cannot match anything.
    comparison.total = expected.len().max(actual.len());
    comparison.mismatched += expected.len().abs_diff(actual.len());

    let worst = |(flat, value): (usize, f64)| Worst {
        flat,
        index: unravel_index(&comparison.expected_shape, flat),
        value,
        expected: expected[flat].to_f64(),
        actual: actual[flat].to_f64(),
    };
    comparison.max_abs = max_abs.map(worst);
    comparison.max_rel = max_rel.map(worst);
    comparison.cosine = Some(if comparison.non_finite > 0 { f64::NAN } else { cosine(dot, expected_sq, actual_sq) });
    comparison.rms = (!expected.is_empty()).then(|| (diff_sq / expected.len() as f64).sqrt());
    let n = expected.len().min(actual.len());
    comparison.logits = top_k.and_then(|k| logit_agreement(&expected[..n], &actual[..n], k));
}

fn cosine(dot: f64, expected_sq: f64, actual_sq: f64) -> f64 {
    match (expected_sq == 0.0, actual_sq == 0.0) {
        (true, true) => 1.0,
        (true, false) | (false, true) => 0.0,
        (false, false) => (dot / (expected_sq.sqrt() * actual_sq.sqrt())).clamp(-1.0, 1.0),
    }
}

/// Argmax and top-`k` overlap of two equally long logit vectors; `None` if empty.
fn logit_agreement<T: Element>(expected: &[T], actual: &[T], k: usize) -> Option<LogitAgreement> {
    if expected.is_empty() {
        return None;
    }
    let k = k.clamp(1, expected.len());
    let expected_top = top_indices(expected, k);
    let actual_top = top_indices(actual, k);
    let expected_set: HashSet<usize> = expected_top.iter().copied().collect();
    Some(LogitAgreement {
        expected_argmax: expected_top[0],
        actual_argmax: actual_top[0],
        k,
        overlap: actual_top.iter().filter(|i| expected_set.contains(i)).count(),
    })
}

/// Indices of the `k` largest values (1 ≤ k ≤ len), largest first, ties by lower index.
///
/// Ranking uses IEEE total order, so a positive NaN ranks above +inf (such a comparison
/// fails anyway).
fn top_indices<T: Element>(values: &[T], k: usize) -> Vec<usize> {
    let by_rank = |&i: &usize, &j: &usize| values[j].to_f64().total_cmp(&values[i].to_f64()).then(i.cmp(&j));
    let mut order: Vec<usize> = (0..values.len()).collect();
    if k < order.len() {
        order.select_nth_unstable_by(k - 1, by_rank);
        order.truncate(k);
    }
    order.sort_unstable_by(by_rank);
    order
}

#[cfg(test)]
mod tests {
    use super::*;

    fn calibrated(k: f64, max_abs: f64, rms: f64) -> CompareOptions {
        CompareOptions {
            calibration: Some(Calibration { k, noise: Noise { max_abs, rms, cosine: 1.0 } }),
            ..tol(0.0, 0.0)
        }
    }

    #[test]
    fn a_calibrated_comparison_bounds_the_greatest_difference_and_the_rms_by_k_times_the_noise() {
        // |Δ| = [0.1, 0, 0, 0]: max 0.1, RMS 0.05.
        let (e, a) = ([1.0, 2.0, 3.0, 4.0], [1.1, 2.0, 3.0, 4.0]);
        let within = compare_f32(&e, &a, calibrated(2.0, 0.06, 0.03));
        assert!(within.passed(), "{within}");
        let ratio = within.noise_ratio().unwrap();
        assert!((ratio - 0.1 / 0.06).abs() < 1e-6, "ratio is the larger of max and RMS ratios: {ratio}");
        let max_beyond = compare_f32(&e, &a, calibrated(2.0, 0.04, 0.03));
        assert!(!max_beyond.passed() && max_beyond.mismatched == 1, "{max_beyond}");
        let rms_beyond = compare_f32(&e, &a, calibrated(2.0, 0.06, 0.02));
        assert_eq!(rms_beyond.mismatched, 0, "every element is within 2 × 0.06");
        assert!(!rms_beyond.passed(), "RMS 0.05 > 2 × 0.02 must fail:\n{rms_beyond}");
        let message = rms_beyond.to_string();
        assert!(message.contains("RMS difference") && message.contains("Reference bf16 vs f32"), "{message}");
    }

    #[test]
    fn a_calibrated_comparison_with_zero_noise_demands_equality_and_nan_never_passes() {
        let equal = compare_f32(&[0.5, 1.5], &[0.5, 1.5], calibrated(2.0, 0.0, 0.0));
        assert!(equal.passed() && equal.noise_ratio() == Some(0.0), "{equal}");
        let off = compare_f32(&[0.5, 1.5], &[0.5, 1.5000001], calibrated(2.0, 0.0, 0.0));
        assert!(!off.passed(), "{off}");
        let nan = compare_f32(&[0.5, 1.5], &[0.5, f32::NAN], calibrated(1e6, 1.0, 1.0));
        assert!(!nan.passed(), "{nan}");
    }

    #[test]
    fn calibrated_logits_must_keep_the_argmax_and_the_whole_top_k_set() {
        let e = [5.0, 4.0, 3.0, 2.0, 1.0, 0.0];
        let swapped_tail = [5.0, 4.0, 3.0, 2.0, 0.0, 1.0];
        let opts = CompareOptions { top_k: Some(5), ..calibrated(2.0, 1.0, 1.0) };
        let c = compare_f32(&e, &swapped_tail, opts);
        assert_eq!(c.mismatched, 0, "every element is within 2 × 1.0");
        assert!(!c.passed(), "element 5 entered the top 5 in place of element 4:\n{c}");
        assert!(c.to_string().contains("top-5 set"), "{c}");
        let same_top = compare_f32(&e, &[5.5, 4.0, 3.0, 2.0, 1.0, 0.0], opts);
        assert!(same_top.passed(), "{same_top}");
    }

    #[test]
    fn noise_is_the_greatest_difference_rms_and_cosine_of_two_runs() {
        let base = Array::f32(vec![2, 2], vec![1.0, 2.0, 3.0, 4.0]);
        let other = Array::f32(vec![2, 2], vec![1.0, 2.0, 3.0, 4.5]);
        let n = noise(&base, &other).unwrap();
        assert_eq!((n.max_abs, n.rms), (0.5, 0.25));
        assert!(n.cosine < 1.0 && n.cosine > 0.99, "{n:?}");
        assert_eq!(noise(&base, &Array::f32(vec![4], vec![1.0, 2.0, 3.0, 4.0])), None, "shapes differ");
        assert_eq!(noise(&base, &Array::f32(vec![2, 2], vec![1.0, 2.0, 3.0, f32::INFINITY])), None);
    }

    fn tol(atol: f64, rtol: f64) -> CompareOptions {
        CompareOptions { tolerance: Tolerance { atol, rtol }, top_k: None, calibration: None }
    }

    fn compare_f32(expected: &[f32], actual: &[f32], opts: CompareOptions) -> Comparison {
        let shape = vec![expected.len()];
        compare(&Array::f32(shape.clone(), expected.to_vec()), &Array::f32(shape, actual.to_vec()), &opts)
    }

    #[test]
    fn element_exactly_at_the_tolerance_boundary_passes_and_just_above_fails() {
        // atol + rtol·|e| = 0.5 + 0.25·2 = 1, all exactly representable.
        let at = compare_f32(&[2.0], &[3.0], tol(0.5, 0.25));
        assert!(at.passed(), "|3 - 2| = 1 is allowed: {at}");
        let above = compare_f32(&[2.0], &[3.0f32.next_up()], tol(0.5, 0.25));
        assert!(!above.passed(), "one ulp above the bound must fail: {above}");
        let below = compare_f32(&[2.0], &[1.0], tol(0.5, 0.25));
        assert!(below.passed(), "the rule is symmetric in the sign of the difference: {below}");
    }

    #[test]
    fn rtol_scales_with_expected_not_actual() {
        // |Δ| = 0.6; bound 0.5·|1.0| = 0.5 fails, bound 0.5·|1.6| = 0.8 passes.
        let small_expected = compare_f32(&[1.0], &[1.6], tol(0.0, 0.5));
        assert!(!small_expected.passed(), "{small_expected}");
        let large_expected = compare_f32(&[1.6], &[1.0], tol(0.0, 0.5));
        assert!(large_expected.passed(), "{large_expected}");
    }

    #[test]
    fn nan_on_either_or_both_sides_never_passes() {
        let nan = f32::NAN;
        let c = compare_f32(&[nan, 1.0, nan], &[1.0, nan, nan], tol(1e9, 1e9));
        assert_eq!((c.mismatched, c.non_finite, c.passed()), (3, 3, false), "{c}");
    }

    #[test]
    fn infinities_never_pass_even_when_equal() {
        let inf = f32::INFINITY;
        let c = compare_f32(&[inf, -inf, 1.0], &[inf, -inf, inf], tol(1e9, 1e9));
        assert_eq!((c.mismatched, c.non_finite, c.passed()), (3, 3, false), "{c}");
    }

    #[test]
    fn non_finite_elements_make_max_abs_infinite_at_the_first_such_index() {
        let c = compare_f32(&[1.0, 5.0, f32::NAN, 0.0], &[1.5, f32::INFINITY, 2.0, 0.0], tol(0.0, 0.0));
        let max_abs = c.max_abs.as_ref().expect("elements were compared");
        assert_eq!((max_abs.flat, max_abs.value), (1, f64::INFINITY), "{c}");
        assert!(c.cosine.is_some_and(f64::is_nan), "cosine is undefined with non-finite values: {c}");
        assert!(c.to_string().contains("Non-finite elements: 2 (first at index 1: expected 5, actual inf)"), "{c}");
    }

    #[test]
    fn negative_zero_equals_zero() {
        let c = compare_f32(&[0.0, -0.0], &[-0.0, 0.0], tol(0.0, 0.0));
        assert!(c.passed(), "{c}");
    }

    #[test]
    fn shapes_must_match_exactly_even_with_the_same_element_count() {
        let expected = Array::f32(vec![4, 3], vec![0.0; 12]);
        let actual = Array::f32(vec![3, 4], vec![0.0; 12]);
        let c = compare(&expected, &actual, &CompareOptions::default());
        assert!(!c.passed(), "{c}");
        assert_eq!(c.to_string(), "The values for attribute 'shape' do not match: [3, 4] != [4, 3].");
    }

    #[test]
    fn dtypes_must_match() {
        let expected = Array::f32(vec![2], vec![1.0, 2.0]);
        let actual = Array::i64(vec![2], vec![1, 2]);
        let c = compare(&expected, &actual, &CompareOptions::default());
        assert_eq!(c.dtype_mismatch, Some((ArrayDtype::F32, ArrayDtype::I64)), "{c}");
        assert!(!c.passed(), "{c}");
        assert_eq!(c.to_string(), "The values for attribute 'dtype' do not match: i64 != f32.");
    }

    #[test]
    fn integer_arrays_must_match_exactly_whatever_the_tolerance() {
        let expected = Array::i64(vec![3], vec![10, i64::MIN, 7]);
        let actual = Array::i64(vec![3], vec![11, i64::MAX, 7]);
        let c = compare(&expected, &actual, &tol(1e30, 1e30));
        assert_eq!((c.mismatched, c.tolerance), (2, Tolerance::EXACT), "{c}");
        assert!(c.to_string().starts_with("Tensor-likes are not equal!"), "{c}");
        assert!(compare(&expected, &expected, &tol(0.0, 0.0)).passed());
    }

    #[test]
    fn relative_difference_against_zero_expected_is_infinite() {
        let c = compare_f32(&[0.0, 0.0, 4.0], &[0.0, 1e-6, 4.002], tol(1e-3, 1e-3));
        let max_rel = c.max_rel.as_ref().expect("elements were compared");
        assert_eq!((max_rel.flat, max_rel.value), (1, f64::INFINITY), "{c}");
        assert!(c.passed(), "passing elements still feed the maxima: {c}");
    }

    #[test]
    fn metrics_report_mismatch_count_worst_indices_and_cosine() {
        let mut expected = vec![1.0f32; 8];
        let mut actual = expected.clone();
        actual[5] = 1.25; // (1, 1): abs 0.25, rel 0.25
        expected[6] = 0.5;
        actual[6] = 0.7; // (1, 2): abs 0.2, rel 0.4
        let c =
            compare(&Array::f32(vec![2, 4], expected.clone()), &Array::f32(vec![2, 4], actual.clone()), &tol(0.1, 0.0));
        assert_eq!((c.total, c.mismatched, c.mismatched_fraction()), (8, 2, 0.25), "{c}");
        let max_abs = c.max_abs.as_ref().expect("elements were compared");
        assert_eq!((max_abs.flat, &max_abs.index[..], max_abs.value), (5, &[1, 1][..], 0.25), "{c}");
        let max_rel = c.max_rel.as_ref().expect("elements were compared");
        assert_eq!(&max_rel.index[..], &[1, 2][..], "{c}");
        assert!((max_rel.value - 0.4).abs() < 1e-6, "{c}");

        let dot: f64 = expected.iter().zip(&actual).map(|(&e, &a)| f64::from(e) * f64::from(a)).sum();
        let norm = |v: &[f32]| v.iter().map(|&x| f64::from(x).powi(2)).sum::<f64>().sqrt();
        let cosine = dot / (norm(&expected) * norm(&actual));
        assert_eq!(c.cosine, Some(cosine), "{c}");
    }

    #[test]
    fn cosine_of_zero_vectors_is_one_for_both_and_zero_for_one() {
        let both = compare_f32(&[0.0, 0.0], &[0.0, -0.0], tol(0.0, 0.0));
        assert_eq!(both.cosine, Some(1.0), "{both}");
        let one = compare_f32(&[0.0, 0.0], &[0.0, 1.0], tol(0.0, 0.0));
        assert_eq!(one.cosine, Some(0.0), "{one}");
        let opposite = compare_f32(&[1.0, 2.0], &[-1.0, -2.0], tol(0.0, 0.0));
        assert!(opposite.cosine.is_some_and(|c| (c + 1.0).abs() < 1e-12), "{opposite}");
    }

    #[test]
    fn display_matches_torch_assert_close() {
        let c = compare(
            &Array::f32(vec![2, 2], vec![1.0, 2.0, 0.5, 4.0]),
            &Array::f32(vec![2, 2], vec![1.0, 2.0, 1.0, 4.125]),
            &tol(0.0001, 0.0001),
        );
        let expected = format!(
            "Tensor-likes are not close!\n\n\
             Mismatched elements: 2 / 4 (50.0%)\n\
             Greatest absolute difference: 0.5 at index (1, 0) (up to 0.0001 allowed)\n\
             Greatest relative difference: 1 at index (1, 0) (up to 0.0001 allowed)\n\
             Cosine similarity: {}",
            c.cosine.unwrap_or_default()
        );
        assert_eq!(c.to_string(), expected);
        let scalar = compare(&Array::f32(vec![], vec![1.0]), &Array::f32(vec![], vec![2.0]), &tol(0.5, 0.0));
        assert!(
            scalar.to_string().contains("\nAbsolute difference: 1 (up to 0.5 allowed)\nRelative difference: 1\n"),
            "{scalar}"
        );
    }

    #[test]
    fn passing_comparison_is_a_one_line_summary() {
        let c = compare_f32(&[1.0, 2.0], &[1.0, 2.0005], CompareOptions::default());
        let text = c.to_string();
        assert!(c.passed() && !text.contains('\n'), "{text}");
        assert!(text.starts_with("Tensor-likes are close: 2 f32 elements; greatest absolute difference"), "{text}");
    }

    #[test]
    fn logits_report_argmax_and_top_k_overlap() {
        let expected = [0.1, 5.0, 3.0, 4.0, -1.0, 2.0];
        let actual = [0.1, 4.0, 3.0, 5.0, 2.5, -1.0];
        let opts = CompareOptions { top_k: Some(3), ..CompareOptions::default() };
        let c = compare_f32(&expected, &actual, opts);
        let logits = c.logits.expect("top_k was requested");
        // top3(expected) = {1, 3, 2}; top3(actual) = {3, 1, 2}.
        assert_eq!(logits, LogitAgreement { expected_argmax: 1, actual_argmax: 3, k: 3, overlap: 3 }, "{c}");
        assert!(!logits.argmax_agrees());
        assert_eq!(logits.top_k_overlap(), 1.0);

        let top2 = compare_f32(&expected, &actual, CompareOptions { top_k: Some(2), ..opts });
        assert_eq!(top2.logits.map(|l| l.top_k_overlap()), Some(1.0), "{top2}");
        let huge_k = compare_f32(&[1.0, 1.0], &[1.0, 2.0], CompareOptions { top_k: Some(10), ..opts });
        assert_eq!(
            huge_k.logits,
            Some(LogitAgreement { expected_argmax: 0, actual_argmax: 1, k: 2, overlap: 2 }),
            "ties pick the first index and k is clamped: {huge_k}"
        );
        assert_eq!(compare_f32(&expected, &actual, tol(1.0, 0.0)).logits, None, "opt-in only");
    }

    #[test]
    fn empty_arrays_pass_with_nothing_to_report() {
        let c = compare(
            &Array::f32(vec![0, 3], vec![]),
            &Array::f32(vec![0, 3], vec![]),
            &CompareOptions { top_k: Some(5), ..Default::default() },
        );
        assert!(c.passed(), "{c}");
        assert_eq!((c.total, &c.max_abs, c.logits), (0, &None, None), "{c}");
    }

    #[test]
    fn malformed_arrays_fail_instead_of_panicking() {
        let expected = Array { shape: vec![3], data: Data::F32(vec![1.0, 2.0, 3.0]) };
        let actual = Array { shape: vec![3], data: Data::F32(vec![1.0]) };
        let c = compare(&expected, &actual, &CompareOptions { top_k: Some(2), ..Default::default() });
        assert_eq!((c.total, c.mismatched, c.passed()), (3, 2, false), "{c}");
    }
}
