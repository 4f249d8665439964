//! The table of every tap: what each row of `table.html` shows.

use serde::Serialize;

use crate::report::{Row, Status};

/// A detail this short is shown as it is; longer ones fold away under their first line.
const DETAIL_FITS_CHARS: usize = 90;

/// One row of the tap table. Metrics stay numbers (NaN and infinities included): the template
/// formats and flags them.
#[derive(Serialize)]
pub(super) struct TapRow<'a> {
    mode: &'a str,
    tap: &'a str,
    status: Status,
    /// The first row of its mode: a rule above it separates the modes.
    mode_start: bool,
    /// None when nothing was compared.
    mismatched_pct: Option<f64>,
    mismatched: usize,
    total: usize,
    max_abs: Option<f64>,
    /// Where the largest |Δ| is.
    at: Option<String>,
    max_rel: Option<f64>,
    cosine: Option<f64>,
    argmax: Option<Argmax>,
    atol: Option<f64>,
    rtol: Option<f64>,
    /// A bf16 tap: its deviation in units of the reference's own, and the `k` it may reach.
    noise_ratio: Option<f64>,
    k: Option<f64>,
    detail: Option<&'a str>,
    /// The detail is one short line.
    detail_fits: bool,
}

/// The logits' top token, expected and actual.
#[derive(Serialize)]
struct Argmax {
    expected: usize,
    actual: usize,
    /// Share of the expected top-k tokens among the actual top-k.
    top_k: Option<f64>,
}

pub(super) fn rows(rows: &[Row]) -> Vec<TapRow<'_>> {
    let mut previous_mode: Option<&str> = None;
    rows.iter()
        .map(|r| {
            let mode_start = previous_mode != Some(r.mode.as_str());
            previous_mode = Some(&r.mode);
            TapRow {
                mode: &r.mode,
                tap: &r.tap,
                status: r.status,
                mode_start,
                mismatched_pct: (r.status != Status::Skip && r.total > 0).then_some(r.mismatched_pct),
                mismatched: r.mismatched,
                total: r.total,
                max_abs: r.max_abs,
                at: r.at(),
                max_rel: r.max_rel,
                cosine: r.cosine,
                argmax: match (r.argmax_expected, r.argmax_actual) {
                    (Some(expected), Some(actual)) => Some(Argmax { expected, actual, top_k: r.top_k_overlap }),
                    _ => None,
                },
                atol: r.atol,
                rtol: r.rtol,
                noise_ratio: r.noise_ratio,
                k: r.k,
                detail: r.detail.as_deref(),
                detail_fits: r
                    .detail
                    .as_deref()
                    .is_some_and(|d| d.lines().count() <= 1 && d.chars().count() <= DETAIL_FITS_CHARS),
            }
        })
        .collect()
}
