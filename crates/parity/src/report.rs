//! Rows of a verification report, as a console table or JSON.

use std::fmt::Write as _;

use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use contract::Tap;

use crate::compare::Comparison;
use crate::manifest::DumpKey;
use crate::mode::Mode;

/// Outcome of one (case, mode, tap).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    Pass,
    Fail,
    /// Not run on this machine (e.g. the checkpoint is not here); never counts as a pass.
    Skip,
    /// An MoE routing tap that differs from the reference only at tokens whose k-th and
    /// (k+1)-th experts the reference itself nearly tied: reported with both experts and the
    /// margin, counted apart, neither a pass nor a failure.
    #[serde(rename = "near-tie")]
    NearTie,
}

impl Status {
    /// How the console table and the page spell the outcome: a failure stands out in capitals.
    pub fn word(self) -> &'static str {
        match self {
            Status::Pass => "pass",
            Status::Fail => "FAIL",
            Status::Skip => "skip",
            Status::NearTie => "TIE",
        }
    }
}

/// What produced a row: a replay mode, or a new capture compared with the checked-in dumps
/// (`cargo xtask capture --check`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Check {
    Replay(Mode),
    Recapture,
}

impl Check {
    /// The name in the report's mode column.
    pub fn name(self) -> &'static str {
        match self {
            Check::Replay(mode) => mode.name(),
            Check::Recapture => "recapture",
        }
    }
}

impl From<Mode> for Check {
    fn from(mode: Mode) -> Check {
        Check::Replay(mode)
    }
}

/// One line of the report, as printed: the case, the mode's and the tap's names (`-` and
/// `(not captured)` for a case that has nothing to compare yet) and the metrics.
#[derive(Debug, Clone, Serialize)]
pub struct Row {
    pub case: String,
    pub mode: String,
    pub tap: String,
    /// The tap compared, when the row is about one (the plots place it in the pipeline).
    #[serde(skip)]
    pub stage: Option<Tap>,
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
        check: impl Into<Check>,
        key: impl Into<DumpKey>,
        c: &Comparison,
        location: Option<String>,
        detail: String,
    ) -> Row {
        let passed = c.passed();
        let key = key.into();
        Row {
            case: case.into(),
            mode: check.into().name().into(),
            tap: key.to_string(),
            stage: Some(key.tap),
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

    /// A compared tap whose every difference is a near tie of the reference's router
    /// ([`Status::NearTie`]), `ties` naming them.
    pub fn near_tie(self, ties: String) -> Row {
        Row { status: Status::NearTie, detail: Some(ties), ..self }
    }

    /// A tap that could not be compared (the run failed, or the tap was not produced).
    pub fn failed(case: &str, check: impl Into<Check>, key: impl Into<DumpKey>, why: String) -> Row {
        Row { status: Status::Fail, ..Row::empty(case, check.into().name(), Some(key.into()), why) }
    }

    /// A tap that was not run here, with the reason.
    pub fn skipped(case: &str, check: impl Into<Check>, key: impl Into<DumpKey>, why: String) -> Row {
        Row { status: Status::Skip, ..Row::empty(case, check.into().name(), Some(key.into()), why) }
    }

    /// A case with no recorded dumps: skipped without its checkpoint, failed with it (there is
    /// nothing to compare until it is captured).
    pub fn uncaptured(case: &str, status: Status, why: String) -> Row {
        Row { status, ..Row::empty(case, "-", None, why) }
    }

    /// Where the largest |Δ| is: in model terms when the location is known, else its index.
    pub fn at(&self) -> Option<String> {
        match (&self.max_abs_location, &self.max_abs_index) {
            (Some(loc), _) => Some(loc.clone()),
            (None, Some(i)) => Some(format!("{i:?}")),
            _ => None,
        }
    }

    fn empty(case: &str, mode: &str, key: Option<DumpKey>, why: String) -> Row {
        Row {
            case: case.into(),
            mode: mode.into(),
            tap: key.map_or_else(|| "(not captured)".into(), |k| k.to_string()),
            stage: key.map(|k| k.tap),
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
/// Consecutive skipped rows of one case for one reason are one line, followed by the reason
/// (the flag and the variable that would name the checkpoint) once.
pub fn table(rows: &[Row]) -> String {
    let mut out = String::new();
    let header = ["case", "mode", "tap", "status", "mismatch", "max |Δ|", "at", "max rel Δ", "×noise", "cosine"];
    // Each line of the table, and the reason printed under it (skips only).
    let mut lines: Vec<([String; 10], Option<String>)> = Vec::new();
    let mut i = 0;
    while i < rows.len() {
        let r = &rows[i];
        if r.status == Status::Skip {
            let run =
                rows[i..].iter().take_while(|o| o.status == Status::Skip && o.case == r.case && o.detail == r.detail);
            let group: Vec<&Row> = run.collect();
            let mut modes: Vec<&str> = group.iter().map(|g| g.mode.as_str()).collect();
            modes.dedup();
            let mode = if modes.len() == 1 { modes[0].to_string() } else { format!("{} modes", modes.len()) };
            let tap = if group.len() == 1 { r.tap.clone() } else { format!("{} taps", group.len()) };
            let dash = || "-".to_string();
            let cells =
                [r.case.clone(), mode, tap, r.status.word().into(), dash(), dash(), dash(), dash(), dash(), dash()];
            lines.push((cells, r.detail.clone()));
            i += group.len();
            continue;
        }
        let at = r.at().unwrap_or_else(|| "-".into());
        let mut cosine = r.cosine.map_or("-".into(), |c| format!("{c:.7}"));
        if let (Some(e), Some(a), Some(k)) = (r.argmax_expected, r.argmax_actual, r.top_k_overlap) {
            cosine.push_str(&format!(" argmax {e}/{a} top-k {:.0}%", 100.0 * k));
        }
        let cells = [
            r.case.clone(),
            r.mode.clone(),
            r.tap.clone(),
            r.status.word().into(),
            format!("{:.2}%", r.mismatched_pct),
            sci(r.max_abs),
            at,
            sci(r.max_rel),
            // bf16 taps: how many times the reference's own bf16-vs-f32 deviation, of k.
            match (r.noise_ratio, r.k) {
                (Some(ratio), Some(k)) => format!("{ratio:.2}/{k}"),
                _ => "-".into(),
            },
            cosine,
        ];
        lines.push((cells, None));
        i += 1;
    }
    let mut widths = header.map(str::len);
    for (row, _) in &lines {
        for (w, c) in widths.iter_mut().zip(row) {
            *w = (*w).max(c.chars().count());
        }
    }
    let line = |out: &mut String, row: &[String]| {
        let padded: Vec<String> = row.iter().zip(widths).map(|(c, w)| format!("{c:<w$}")).collect();
        writeln!(out, "{}", padded.join("  ").trim_end()).unwrap();
    };
    line(&mut out, &header.map(String::from));
    for (row, why) in &lines {
        line(&mut out, row);
        if let Some(why) = why {
            writeln!(out, "{:indent$}why: {why}", "", indent = widths[0] + 2).unwrap();
        }
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
    use contract::Stage;

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
    fn skipped_rows_of_a_case_are_one_line_with_their_reason_once() {
        let why = "the checkpoint of big is not in the repository: pass --weights DIR or set BIG_DIR to its folder";
        let rows = [
            Row::skipped("big-case", Mode::VisionTeacherForced, Stage::VisionTower.tap(), why.into()),
            Row::skipped("big-case", Mode::FromImageFiles, Stage::LmNorm.tap(), why.into()),
            Row::skipped("big-case", Mode::FromImageFiles, Stage::LmLogitsLast.tap(), why.into()),
            Row::failed("small", Mode::Generate, Stage::GenTokens.tap(), "panicked".into()),
        ];
        let table = table(&rows);
        let lines: Vec<&str> = table.lines().collect();
        assert_eq!(lines.len(), 4, "the header, one skip line, its reason, the failure:\n{table}");
        let skip: Vec<&str> = lines[1].split("  ").filter(|c| !c.trim().is_empty()).map(str::trim).collect();
        assert_eq!(&skip[..4], ["big-case", "2 modes", "3 taps", "skip"], "{table}");
        assert_eq!(lines[2].trim(), format!("why: {why}"), "the reason, once:\n{table}");
        assert_eq!(table.matches("--weights DIR").count(), 1, "{table}");
    }

    #[test]
    fn the_console_table_spells_each_status_with_its_word() {
        let rows = [
            Row::skipped("c", Mode::Generate, Stage::LmNorm.tap(), "absent".into()),
            Row::failed("c", Mode::Generate, Stage::LmLayer.at(0), "panicked".into()),
        ];
        let table = table(&rows);
        let lines: Vec<&str> = table.lines().filter(|l| !l.trim_start().starts_with("why:")).skip(1).collect();
        for (row, line) in rows.iter().zip(&lines) {
            let status = line.split_whitespace().nth(3);
            assert_eq!(status, Some(row.status.word()), "line {line:?}");
        }
        assert_eq!(Status::Fail.word(), "FAIL", "a failure stands out in capitals");
    }
}
