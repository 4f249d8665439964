//! Rows of a verification report, as a console table or JSON.

use std::fmt::Write as _;

use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use crate::compare::Comparison;

/// Outcome of one (case, mode, tap).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    Pass,
    Fail,
    /// Not run on this machine (e.g. the checkpoint is not here); never counts as a pass.
    Skip,
}

impl Status {
    /// How the console table and the page spell the outcome: a failure stands out in capitals.
    pub fn word(self) -> &'static str {
        match self {
            Status::Pass => "pass",
            Status::Fail => "FAIL",
            Status::Skip => "skip",
        }
    }
}

/// One line of the report.
#[derive(Debug, Clone, Serialize)]
pub struct Row {
    pub case: String,
    pub mode: String,
    pub tap: String,
    pub status: Status,
    pub atol: Option<f64>,
    pub rtol: Option<f64>,
    pub total: usize,
    pub mismatched: usize,
    pub mismatched_pct: f64,
    #[serde(serialize_with = "finite_or_string")]
    pub max_abs: Option<f64>,
    pub max_abs_index: Option<Vec<usize>>,
    /// The worst element in model terms (image and patch, token position).
    pub max_abs_location: Option<String>,
    #[serde(serialize_with = "finite_or_string")]
    pub max_rel: Option<f64>,
    pub max_rel_index: Option<Vec<usize>>,
    #[serde(serialize_with = "finite_or_string")]
    pub cosine: Option<f64>,
    pub argmax_expected: Option<usize>,
    pub argmax_actual: Option<usize>,
    pub top_k_overlap: Option<f64>,
    /// A bf16 tap: its deviation in units of the reference's own bf16-vs-f32 deviation (the
    /// larger of the max and RMS ratios), and the `k` it may reach.
    #[serde(serialize_with = "finite_or_string")]
    pub noise_ratio: Option<f64>,
    pub k: Option<f64>,
    /// The full failure message, or why the row was skipped.
    pub detail: Option<String>,
}

impl Row {
    /// A compared tap.
    pub fn compared(
        case: &str,
        mode: &str,
        tap: &str,
        c: &Comparison,
        location: Option<String>,
        detail: String,
    ) -> Row {
        let passed = c.passed();
        Row {
            case: case.into(),
            mode: mode.into(),
            tap: tap.into(),
            status: if passed { Status::Pass } else { Status::Fail },
            atol: Some(c.tolerance.atol),
            rtol: Some(c.tolerance.rtol),
            total: c.total,
            mismatched: c.mismatched,
            mismatched_pct: 100.0 * c.mismatched_fraction(),
            max_abs: c.max_abs.as_ref().map(|w| w.value),
            max_abs_index: c.max_abs.as_ref().map(|w| w.index.clone()),
            max_abs_location: location,
            max_rel: c.max_rel.as_ref().map(|w| w.value),
            max_rel_index: c.max_rel.as_ref().map(|w| w.index.clone()),
            cosine: c.cosine,
            argmax_expected: c.logits.map(|l| l.expected_argmax),
            argmax_actual: c.logits.map(|l| l.actual_argmax),
            top_k_overlap: c.logits.map(|l| l.top_k_overlap()),
            noise_ratio: c.noise_ratio(),
            k: c.noise_ratio().and(c.calibration.map(|cal| cal.k)),
            detail: (!passed).then_some(detail),
        }
    }

    /// A tap that could not be compared (the run failed, or the tap was not produced).
    pub fn failed(case: &str, mode: &str, tap: &str, why: String) -> Row {
        Row { status: Status::Fail, ..Row::empty(case, mode, tap, why) }
    }

    /// A tap that was not run here, with the reason.
    pub fn skipped(case: &str, mode: &str, tap: &str, why: String) -> Row {
        Row { status: Status::Skip, ..Row::empty(case, mode, tap, why) }
    }

    /// Where the largest |Δ| is: in model terms when the location is known, else its index.
    pub fn at(&self) -> Option<String> {
        match (&self.max_abs_location, &self.max_abs_index) {
            (Some(loc), _) => Some(loc.clone()),
            (None, Some(i)) => Some(format!("{i:?}")),
            _ => None,
        }
    }

    fn empty(case: &str, mode: &str, tap: &str, why: String) -> Row {
        Row {
            case: case.into(),
            mode: mode.into(),
            tap: tap.into(),
            status: Status::Skip,
            atol: None,
            rtol: None,
            total: 0,
            mismatched: 0,
            mismatched_pct: 0.0,
            max_abs: None,
            max_abs_index: None,
            max_abs_location: None,
            max_rel: None,
            max_rel_index: None,
            cosine: None,
            argmax_expected: None,
            argmax_actual: None,
            top_k_overlap: None,
            noise_ratio: None,
            k: None,
            detail: Some(why),
        }
    }
}

fn finite_or_string<S: serde::Serializer>(v: &Option<f64>, s: S) -> Result<S::Ok, S::Error> {
    // JSON has no NaN or infinity; spell them out rather than lose them.
    match v {
        Some(x) if !x.is_finite() => s.serialize_str(&x.to_string()),
        Some(x) => s.serialize_f64(*x),
        None => s.serialize_none(),
    }
}

/// A metric as the console table and the page print it: three significant digits in
/// scientific notation, an exact 0 as `0` (not `0.00e0`), NaN and infinities spelled out
/// (`NaN`, `inf`, `-inf`), and `-` when there is none.
pub fn sci(v: Option<f64>) -> String {
    match v {
        None => "-".into(),
        Some(0.0) => "0".into(),
        Some(x) => format!("{x:.2e}"),
    }
}

/// The console table: one row per tap, in the order given (pipeline order per case/mode).
pub fn table(rows: &[Row]) -> String {
    let mut out = String::new();
    let header = ["case", "mode", "tap", "status", "mismatch", "max |Δ|", "at", "max rel Δ", "×noise", "cosine"];
    let cells: Vec<[String; 10]> = rows
        .iter()
        .map(|r| {
            let at = r.at().unwrap_or_else(|| "-".into());
            let mut cosine = r.cosine.map_or("-".into(), |c| format!("{c:.7}"));
            if let (Some(e), Some(a), Some(k)) = (r.argmax_expected, r.argmax_actual, r.top_k_overlap) {
                cosine.push_str(&format!(" argmax {e}/{a} top-k {:.0}%", 100.0 * k));
            }
            [
                r.case.clone(),
                r.mode.clone(),
                r.tap.clone(),
                r.status.word().into(),
                if r.status == Status::Skip { "-".into() } else { format!("{:.2}%", r.mismatched_pct) },
                sci(r.max_abs),
                at,
                sci(r.max_rel),
                // bf16 taps: how many times the reference's own bf16-vs-f32 deviation, of k.
                match (r.noise_ratio, r.k) {
                    (Some(ratio), Some(k)) => format!("{ratio:.2}/{k}"),
                    _ => "-".into(),
                },
                cosine,
            ]
        })
        .collect();
    let mut widths = header.map(str::len);
    for row in &cells {
        for (w, c) in widths.iter_mut().zip(row) {
            *w = (*w).max(c.chars().count());
        }
    }
    let line = |out: &mut String, row: &[String]| {
        let padded: Vec<String> = row.iter().zip(widths).map(|(c, w)| format!("{c:<w$}")).collect();
        writeln!(out, "{}", padded.join("  ").trim_end()).unwrap();
    };
    line(&mut out, &header.map(String::from));
    for row in &cells {
        line(&mut out, row);
    }
    out
}

/// The rows as a JSON array.
pub fn json(rows: &[Row]) -> Value {
    json!(rows)
}

/// The first failing row in the order given: rows come in pipeline order, so this is
/// where the fault entered.
pub fn first_failure(rows: &[Row]) -> Option<&Row> {
    rows.iter().find(|r| r.status == Status::Fail)
}

/// Per-patch error of one image tap laid out on the image's patch grid: where positional
/// bugs show (a shifted row, a transposed grid, an edge off by one).
#[derive(Debug, Clone, Serialize)]
pub struct Heatmap {
    pub mode: String,
    pub tap: String,
    /// Which image of the case (0-based).
    pub image: usize,
    /// Rows and columns of the grid (patches, or merged tokens for `vision.projector`).
    pub grid_h: usize,
    pub grid_w: usize,
    /// max |Δ| over the channels of each grid cell, row-major (`grid_h × grid_w` values).
    pub max_abs: Vec<f64>,
}

/// Everything the report shows about one case.
#[derive(Debug, Clone, Serialize)]
pub struct CaseReport {
    pub case: String,
    /// Every tap of every mode, in pipeline order within each mode.
    pub rows: Vec<Row>,
    pub heatmaps: Vec<Heatmap>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sci_keeps_three_significant_digits_and_spells_out_zero_and_non_finite_values() {
        let cases = [
            (None, "-"),
            (Some(0.0), "0"),
            (Some(-0.0), "0"),
            (Some(1.23456e-7), "1.23e-7"),
            (Some(-2.5), "-2.50e0"),
            (Some(f64::NAN), "NaN"),
            (Some(f64::INFINITY), "inf"),
            (Some(f64::NEG_INFINITY), "-inf"),
        ];
        for (v, want) in cases {
            assert_eq!(sci(v), want, "sci({v:?})");
        }
    }

    #[test]
    fn the_console_table_spells_each_status_with_its_word() {
        let rows = [
            Row::skipped("c", "m", "lm.norm", "absent".into()),
            Row::failed("c", "m", "lm.layer.0", "panicked".into()),
        ];
        let table = table(&rows);
        for (row, line) in rows.iter().zip(table.lines().skip(1)) {
            let status = line.split_whitespace().nth(3);
            assert_eq!(status, Some(row.status.word()), "line {line:?}");
        }
        assert_eq!(Status::Fail.word(), "FAIL", "a failure stands out in capitals");
    }
}
