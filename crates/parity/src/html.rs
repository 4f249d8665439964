//! The verification report as one self-contained HTML page.
//!
//! Per case: a summary (counts, the first failing tap of each mode), plots of how the error
//! grows through the pipeline (max |Δ| and 1 − cosine per stage, one line per mode), the
//! per-patch heat maps and the table of every tap. No JavaScript and no external resources:
//! the CSS is inline and every figure is an inline SVG, so the file can be attached to a CI
//! run or opened from disk as it is.

use std::collections::BTreeSet;
use std::fmt::Write as _;

use plotters::prelude::*;
use plotters::style::text_anchor::{HPos, Pos, VPos};

use crate::array::DType;
use crate::mode::Mode;
use crate::report::{self, CaseReport, Heatmap, Row, Status};
use crate::taps::Tap;

/// Values at or below this are drawn at it on the log axes (a log axis has no 0, and
/// 1 − cosine can come out slightly negative by rounding).
pub const LOG_FLOOR: f64 = 1e-12;
/// Larger values are drawn at this (only absurd values are, but the axis must stay finite).
const LOG_CEILING: f64 = 1e290;

/// A figure could not be drawn.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("drawing {what}: {message}")]
pub struct RenderError {
    /// Which figure.
    pub what: String,
    /// What the drawing library said.
    pub message: String,
}

/// Appends formatted text to a `String` (writing to a `String` cannot fail).
macro_rules! w {
    ($out:expr, $($arg:tt)*) => {{
        let _ = write!($out, $($arg)*);
    }};
}

/// The whole report: `title`, an index of the cases and one section per case.
pub fn render(title: &str, cases: &[CaseReport]) -> Result<String, RenderError> {
    let mut out = String::new();
    w!(
        out,
        "<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n<title>{}</title>\n<style>{STYLE}</style>\n</head>\n<body>\n",
        esc(title)
    );
    w!(out, "<h1>{}</h1>\n", esc(title));
    index(&mut out, cases);
    for (n, case) in cases.iter().enumerate() {
        case_section(&mut out, n, case)?;
    }
    out.push_str("</body>\n</html>\n");
    Ok(out)
}

const STYLE: &str = r#"
body { font-family: system-ui, -apple-system, "Segoe UI", Roboto, "DejaVu Sans", sans-serif; font-size: 14px; color: #1f2328; background: #fff; margin: 20px 28px; }
h1 { font-size: 24px; margin: 0 0 12px; }
h2 { font-size: 20px; margin: 0 0 8px; padding-bottom: 6px; border-bottom: 2px solid #d0d7de; }
h3 { font-size: 15px; margin: 18px 0 8px; color: #424a53; }
h4 { font-size: 13px; margin: 10px 0 6px; }
section.case { margin: 28px 0 40px; }
.num, td.num { font-family: ui-monospace, "DejaVu Sans Mono", Menlo, Consolas, monospace; font-size: 12px; white-space: nowrap; }
.muted { color: #6e7781; }
.pass { color: #1a7f37; } .fail { color: #cf222e; } .skip { color: #6e7781; }
.nonfinite { color: #bc4c00; font-weight: bold; }
.badge { display: inline-block; padding: 1px 8px; border-radius: 10px; font-size: 12px; font-weight: 600; }
.badge.pass { background: #dafbe1; } .badge.fail { background: #ffebe9; } .badge.skip { background: #eaeef2; }
.summary { margin: 6px 0 4px; font-size: 15px; }
.summary b { font-size: 16px; }
.firstfail { margin: 4px 0 0; padding: 8px 12px; background: #fff5f5; border-left: 4px solid #cf222e; }
.firstfail ul { margin: 4px 0 0; padding-left: 20px; }
.allpass { margin: 4px 0 0; padding: 8px 12px; background: #f0fff4; border-left: 4px solid #1a7f37; }
.swatch { display: inline-block; width: 12px; height: 12px; border-radius: 2px; vertical-align: -1px; margin-right: 4px; }
.mode { white-space: nowrap; }
.plots { display: flex; flex-wrap: wrap; gap: 12px; }
.plots svg, .heatmap svg { display: block; }
.caption { font-size: 12px; color: #424a53; margin: 6px 0 0; max-width: 1340px; line-height: 1.5; }
.legend span.item { margin-right: 14px; white-space: nowrap; }
.gallery { display: flex; flex-wrap: wrap; gap: 10px; }
.heatmap { border: 1px solid #d0d7de; border-radius: 6px; padding: 6px 8px; background: #fff; }
.heatmap.failing { border: 2px solid #cf222e; }
.heatmap .title { font-size: 12px; font-weight: 600; max-width: 240px; }
.heatmap .sub { font-size: 11px; color: #57606a; max-width: 240px; }
table { border-collapse: collapse; font-size: 12.5px; }
th, td { padding: 3px 6px; text-align: left; vertical-align: top; border-bottom: 1px solid #eaeef2; }
th { background: #f6f8fa; border-bottom: 2px solid #d0d7de; position: sticky; top: 0; white-space: nowrap; }
tr.tap-row.mode-start td { border-top: 2px solid #afb8c1; }
tr.tap-row.status-fail { background: #fff5f5; }
tr.tap-row.status-skip td { color: #6e7781; }
div.loc { font-size: 11px; color: #57606a; white-space: normal; min-width: 140px; max-width: 220px; font-family: system-ui, sans-serif; }
td.detail { min-width: 240px; max-width: 380px; font-size: 12px; }
table.taps { width: 100%; }
details summary { cursor: pointer; }
summary > h3 { display: inline-block; }
pre { white-space: pre-wrap; word-break: break-word; margin: 4px 0; font-size: 11.5px; background: #f6f8fa; padding: 6px 8px; border-radius: 4px; max-height: 360px; overflow: auto; }
table.index td, table.index th { font-size: 13px; }
a { color: #0969da; text-decoration: none; }
"#;

// ---------------------------------------------------------------- text helpers

/// Escapes text for HTML element content and attribute values.
pub fn esc(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

/// A metric in scientific notation (`report::sci`); non-finite values flagged.
fn sci(v: Option<f64>) -> String {
    match v {
        None => "<span class=\"muted\">–</span>".into(),
        Some(x) if !x.is_finite() => format!("<span class=\"nonfinite\">{}</span>", esc(&report::sci(v))),
        Some(_) => report::sci(v),
    }
}

/// A plain-text number for captions and titles.
fn sci_text(x: f64) -> String {
    report::sci(Some(x))
}

/// Axis labels: powers of ten as `1e-5`.
fn decade_label(v: f64) -> String {
    let e = v.log10();
    if (e - e.round()).abs() < 1e-6 {
        format!("1e{}", e.round() as i64)
    } else {
        format!("{v:.0e}")
    }
}

fn status_class(s: Status) -> &'static str {
    match s {
        Status::Pass => "pass",
        Status::Fail => "fail",
        Status::Skip => "skip",
    }
}

// ---------------------------------------------------------------- modes and stages

/// A fixed colour per known mode (never red: red means failure here).
fn mode_colour(mode: &str) -> RGBColor {
    const KNOWN: [RGBColor; 4] = [
        RGBColor(0x1f, 0x77, 0xb4), // vision-teacher-forced: blue
        RGBColor(0xe6, 0x7e, 0x00), // lm-teacher-forced: orange
        RGBColor(0x2c, 0xa0, 0x2c), // from-pixel-values: green
        RGBColor(0x94, 0x67, 0xbd), // from-image-files: purple
    ];
    const OTHER: [RGBColor; 4] = [
        RGBColor(0x8c, 0x56, 0x4b),
        RGBColor(0x17, 0xbe, 0xcf),
        RGBColor(0xbc, 0xbd, 0x22),
        RGBColor(0x7f, 0x7f, 0x7f),
    ];
    if let Some(i) = Mode::ALL.iter().position(|m| m.name() == mode) {
        return KNOWN[i];
    }
    let h = mode.bytes().fold(0usize, |h, b| h.wrapping_mul(31).wrapping_add(b as usize));
    OTHER[h % OTHER.len()]
}

fn hex(c: RGBColor) -> String {
    format!("#{:02x}{:02x}{:02x}", c.0, c.1, c.2)
}

fn mode_chip(mode: &str) -> String {
    format!(
        "<span class=\"mode\"><span class=\"swatch\" style=\"background:{}\"></span>{}</span>",
        hex(mode_colour(mode)),
        esc(mode)
    )
}

/// The modes of `rows` in order of first appearance.
fn modes_in_order(rows: &[Row]) -> Vec<&str> {
    let mut modes: Vec<&str> = Vec::new();
    for r in rows {
        if !modes.contains(&r.mode.as_str()) {
            modes.push(&r.mode);
        }
    }
    modes
}

/// The tap as a plotted stage: float activations from `vision.patch_embed` on.
fn float_stage(tap: &str) -> Option<Tap> {
    Tap::parse(tap).filter(|t| !t.is_input() && t.dtype() == DType::F32)
}

/// A compact stage name for the x axis (the table has the full names).
fn short_stage(t: Tap) -> String {
    let s = t.to_string();
    match s.strip_prefix("vision.") {
        Some(rest) => format!("v.{rest}"),
        None => s,
    }
}

// ---------------------------------------------------------------- page sections

struct Counts {
    pass: usize,
    fail: usize,
    skip: usize,
}

fn counts(rows: &[Row]) -> Counts {
    let n = |s| rows.iter().filter(|r| r.status == s).count();
    Counts { pass: n(Status::Pass), fail: n(Status::Fail), skip: n(Status::Skip) }
}

/// The first failing row of each mode, modes in order of appearance.
fn first_failures(rows: &[Row]) -> Vec<&Row> {
    modes_in_order(rows)
        .into_iter()
        .filter_map(|m| rows.iter().find(|r| r.mode == m && r.status == Status::Fail))
        .collect()
}

fn counts_html(c: &Counts) -> String {
    format!(
        "<span class=\"badge pass\">{} passed</span> <span class=\"badge fail\">{} failed</span> <span class=\"badge skip\">{} skipped</span>",
        c.pass, c.fail, c.skip
    )
}

fn index(out: &mut String, cases: &[CaseReport]) {
    let all: Vec<Row> = cases.iter().flat_map(|c| c.rows.iter().cloned()).collect();
    let total = counts(&all);
    let failing_cases = cases.iter().filter(|c| c.rows.iter().any(|r| r.status == Status::Fail)).count();
    w!(
        out,
        "<p class=\"summary\">{} case{}, {} failing · {} taps: {}</p>\n",
        cases.len(),
        if cases.len() == 1 { "" } else { "s" },
        failing_cases,
        all.len(),
        counts_html(&total)
    );
    if cases.is_empty() {
        out.push_str("<p class=\"muted\">No cases were verified.</p>\n");
        return;
    }
    out.push_str("<table class=\"index\">\n<thead><tr><th>case</th><th>pass</th><th>fail</th><th>skip</th><th>first failing tap per mode</th></tr></thead>\n<tbody>\n");
    for (n, case) in cases.iter().enumerate() {
        let c = counts(&case.rows);
        let firsts: Vec<String> = first_failures(&case.rows)
            .iter()
            .map(|r| format!("{} <b class=\"num\">{}</b>", mode_chip(&r.mode), esc(&r.tap)))
            .collect();
        w!(
            out,
            "<tr><td><a href=\"#case-{n}\">{}</a></td><td class=\"num pass\">{}</td><td class=\"num fail\">{}</td><td class=\"num skip\">{}</td><td>{}</td></tr>\n",
            esc(&case.case),
            c.pass,
            c.fail,
            c.skip,
            if firsts.is_empty() { "<span class=\"muted\">–</span>".to_string() } else { firsts.join(" · ") }
        );
    }
    out.push_str("</tbody>\n</table>\n");
}

fn case_section(out: &mut String, n: usize, case: &CaseReport) -> Result<(), RenderError> {
    w!(out, "<section class=\"case\" id=\"case-{n}\">\n<h2>{}</h2>\n", esc(&case.case));
    let c = counts(&case.rows);
    w!(out, "<p class=\"summary\">{} taps: {}</p>\n", case.rows.len(), counts_html(&c));
    let firsts = first_failures(&case.rows);
    if firsts.is_empty() {
        if c.pass > 0 {
            out.push_str("<div class=\"allpass\">No tap failed.</div>\n");
        }
    } else {
        out.push_str("<div class=\"firstfail\"><b>First failing tap</b> (where the fault entered, per mode):<ul>\n");
        for r in firsts {
            let mut what = Vec::new();
            if let Some(v) = r.max_abs {
                what.push(format!("max |Δ| {}", sci(Some(v))));
            }
            if r.total > 0 {
                what.push(format!("{:.2}% mismatched", r.mismatched_pct));
            }
            if what.is_empty() {
                if let Some(d) = &r.detail {
                    what.push(esc(first_line(d, 120).as_str()));
                }
            }
            w!(
                out,
                "<li>{}: <b class=\"num\">{}</b> <span class=\"muted\">{}</span></li>\n",
                mode_chip(&r.mode),
                esc(&r.tap),
                what.join(", ")
            );
        }
        out.push_str("</ul></div>\n");
    }

    plots(out, n, case)?;
    heatmaps(out, n, case);

    out.push_str("<details open><summary><h3>Every tap</h3></summary>\n");
    table(out, &case.rows);
    out.push_str("</details>\n");
    out.push_str("</section>\n");
    Ok(())
}

fn first_line(s: &str, max_chars: usize) -> String {
    let line = s.lines().next().unwrap_or("");
    if line.chars().count() > max_chars {
        format!("{}…", line.chars().take(max_chars).collect::<String>())
    } else if s.lines().nth(1).is_some() {
        format!("{line} …")
    } else {
        line.to_string()
    }
}

// ---------------------------------------------------------------- the table

fn table(out: &mut String, rows: &[Row]) {
    out.push_str(
        "<table class=\"taps\">\n<thead><tr><th>mode</th><th>tap</th><th>status</th><th>mismatched</th><th>max |Δ| <span class=\"muted\">at</span></th><th>max rel Δ</th><th>cosine <span class=\"muted\">1 − cos</span></th><th>logits</th><th>tolerance</th><th>detail</th></tr></thead>\n<tbody>\n",
    );
    let mut previous_mode: Option<&str> = None;
    for r in rows {
        let mode_start = previous_mode != Some(r.mode.as_str());
        previous_mode = Some(&r.mode);
        let mismatched = if r.status == Status::Skip || r.total == 0 {
            "<span class=\"muted\">–</span>".to_string()
        } else {
            format!("{:.2}%<div class=\"muted\">{}/{}</div>", r.mismatched_pct, r.mismatched, r.total)
        };
        let at = r.at().map_or(String::new(), |at| format!("<div class=\"loc\">{}</div>", esc(&at)));
        let cosine = match r.cosine {
            None => "<span class=\"muted\">–</span>".to_string(),
            Some(c) if !c.is_finite() => sci(Some(c)),
            Some(c) => format!("{c:.7}<div class=\"muted\">{}</div>", sci(Some(1.0 - c))),
        };
        let logits = match (r.argmax_expected, r.argmax_actual) {
            (Some(e), Some(a)) => {
                let (class, mark) = if e == a { ("pass", "=") } else { ("fail", "≠") };
                let top_k = match r.top_k_overlap {
                    Some(k) if k.is_finite() => format!("<br>top-k {:.0}%", 100.0 * k),
                    Some(k) => format!("<br>top-k {}", sci(Some(k))),
                    None => String::new(),
                };
                format!("argmax <span class=\"{class}\">{e}&nbsp;{mark}&nbsp;{a}</span>{top_k}")
            }
            _ => String::new(),
        };
        let tolerance = match (r.atol, r.rtol) {
            (None, None) => String::new(),
            (a, r) => {
                let f = |v: Option<f64>| match v {
                    None => "–".to_string(),
                    Some(0.0) => "0".to_string(),
                    Some(x) => format!("{x:e}"),
                };
                format!("atol {}<br>rtol {}", f(a), f(r))
            }
        };
        let detail = match &r.detail {
            None => String::new(),
            Some(d) if r.status == Status::Fail => {
                format!("<details><summary>{}</summary><pre>{}</pre></details>", esc(&first_line(d, 60)), esc(d))
            }
            Some(d) if d.lines().count() <= 1 && d.chars().count() <= 90 => {
                format!("<span class=\"muted\">{}</span>", esc(d))
            }
            Some(d) => format!(
                "<details><summary class=\"muted\">{}</summary><pre>{}</pre></details>",
                esc(&first_line(d, 70)),
                esc(d)
            ),
        };
        w!(
            out,
            "<tr class=\"tap-row status-{}{}\"><td>{}</td><td class=\"num\">{}</td><td><span class=\"badge {}\">{}</span></td><td class=\"num\">{}</td><td class=\"num\">{}{}</td><td class=\"num\">{}</td><td class=\"num\">{}</td><td class=\"num\">{}</td><td class=\"num\">{}</td><td class=\"detail\">{}</td></tr>\n",
            status_class(r.status),
            if mode_start { " mode-start" } else { "" },
            mode_chip(&r.mode),
            esc(&r.tap),
            status_class(r.status),
            r.status.word(),
            mismatched,
            sci(r.max_abs),
            at,
            sci(r.max_rel),
            cosine,
            logits,
            tolerance,
            detail
        );
    }
    out.push_str("</tbody>\n</table>\n");
}

// ---------------------------------------------------------------- error-growth plots

#[derive(Clone, Copy)]
struct Point {
    x: usize,
    y: f64,
    clamped: bool,
    failed: bool,
}

struct Series {
    colour: RGBColor,
    /// Runs of consecutive plotted stages; a stage that could not be plotted breaks the line.
    segments: Vec<Vec<Point>>,
}

struct Metric {
    name: &'static str,
    what: fn(&Row) -> Option<f64>,
}

struct PlotData {
    series: Vec<Series>,
    /// Values left out because they are NaN or infinite.
    omitted: usize,
    clamped: usize,
}

fn plot_data(rows: &[Row], stages: &[Tap], metric: &Metric) -> PlotData {
    let mut data = PlotData { series: Vec::new(), omitted: 0, clamped: 0 };
    for mode in modes_in_order(rows) {
        let mut segments: Vec<Vec<Point>> = vec![Vec::new()];
        for r in rows.iter().filter(|r| r.mode == mode) {
            let Some(x) = float_stage(&r.tap).and_then(|t| stages.iter().position(|s| *s == t)) else {
                continue;
            };
            let value = if r.status == Status::Skip { None } else { (metric.what)(r) };
            match value {
                Some(v) if v.is_finite() => {
                    let clamped = v <= LOG_FLOOR;
                    data.clamped += clamped as usize;
                    segments.last_mut().expect("never empty").push(Point {
                        x,
                        y: v.clamp(LOG_FLOOR, LOG_CEILING),
                        clamped,
                        failed: r.status == Status::Fail,
                    });
                }
                other => {
                    data.omitted += other.is_some() as usize;
                    if !segments.last().expect("never empty").is_empty() {
                        segments.push(Vec::new());
                    }
                }
            }
        }
        segments.retain(|s| !s.is_empty());
        if !segments.is_empty() {
            data.series.push(Series { colour: mode_colour(mode), segments });
        }
    }
    data
}

/// The tolerance drawn on the max |Δ| plot.
enum Reference {
    /// One atol for every plotted tap: a horizontal line.
    Single(f64),
    /// atol varies: a dashed line per mode through each stage's atol.
    PerMode(Vec<(RGBColor, Vec<(usize, f64)>)>),
}

fn atol_reference(rows: &[Row], stages: &[Tap]) -> Option<Reference> {
    let mut per_mode = Vec::new();
    let mut all = Vec::new();
    for mode in modes_in_order(rows) {
        let mut line = Vec::new();
        for r in rows.iter().filter(|r| r.mode == mode && r.status != Status::Skip) {
            let (Some(x), Some(atol)) = (float_stage(&r.tap).and_then(|t| stages.iter().position(|s| *s == t)), r.atol)
            else {
                continue;
            };
            if atol.is_finite() && atol > 0.0 {
                line.push((x, atol));
                all.push(atol);
            }
        }
        if !line.is_empty() {
            per_mode.push((mode_colour(mode), line));
        }
    }
    let first = *all.first()?;
    if all.iter().all(|a| *a == first) {
        Some(Reference::Single(first))
    } else {
        Some(Reference::PerMode(per_mode))
    }
}

/// Two plots side by side fit a 1400 px window...
const PLOT_W: u32 = 652;
/// ...unless there are so many stages that each plot needs the full width.
const WIDE_PLOT_W: u32 = 1330;
const WIDE_FROM_STAGES: usize = 32;
const PLOT_H: u32 = 400;

fn plots(out: &mut String, n: usize, case: &CaseReport) -> Result<(), RenderError> {
    let stages: Vec<Tap> =
        case.rows.iter().filter_map(|r| float_stage(&r.tap)).collect::<BTreeSet<_>>().into_iter().collect();
    let metrics = [
        Metric { name: "max |Δ|", what: |r| r.max_abs },
        Metric { name: "1 − cosine", what: |r| r.cosine.map(|c| 1.0 - c) },
    ];
    let data: Vec<PlotData> = metrics.iter().map(|m| plot_data(&case.rows, &stages, m)).collect();
    out.push_str("<h3>Error growth through the pipeline</h3>\n");
    if data.iter().all(|d| d.series.is_empty()) {
        out.push_str("<p class=\"muted\">No float tap was compared in this case: nothing to plot.</p>\n");
        return Ok(());
    }
    let reference = atol_reference(&case.rows, &stages);
    out.push_str("<div class=\"plots\">\n");
    for (metric, d) in metrics.iter().zip(&data) {
        if d.series.is_empty() {
            w!(out, "<p class=\"muted\">No finite {} to plot.</p>\n", esc(metric.name));
            continue;
        }
        let with_reference = if metric.name == "max |Δ|" { reference.as_ref() } else { None };
        let svg =
            stage_plot(&format!("{} per stage (log scale)", metric.name), metric.name, &stages, d, with_reference)
                .map_err(|message| RenderError {
                    what: format!("the {} plot of case {} (#{n})", metric.name, case.case),
                    message,
                })?;
        w!(out, "<div class=\"plot\">{svg}</div>\n");
    }
    out.push_str("</div>\n");

    // Legend and caption, shared by both plots.
    out.push_str("<p class=\"caption legend\">");
    for mode in modes_in_order(&case.rows) {
        w!(out, "<span class=\"item\">{}</span>", mode_chip(mode));
    }
    out.push_str("</p>\n<p class=\"caption\">");
    out.push_str("x: the float taps in pipeline order");
    if case.rows.iter().any(|r| float_stage(&r.tap).is_some_and(|t| t.is_vision())) {
        out.push_str(" (<b>v.</b> = <span class=\"num\">vision.</span>)");
    }
    out.push_str("; y: log scale; the modes are shifted sideways a little so that equal values stay visible. ");
    out.push_str("Filled dots are compared taps; a <span class=\"fail\">red ring</span> marks a failing tap. ");
    w!(
        out,
        "Values of 0 (or below {floor}, and negative 1 − cosine from rounding) cannot go on a log axis: they are drawn as hollow dots at the floor {floor}",
        floor = decade_label(LOG_FLOOR)
    );
    let clamped: usize = data.iter().map(|d| d.clamped).sum();
    if clamped > 0 {
        w!(out, " ({clamped} here)");
    }
    out.push_str(". ");
    match &reference {
        Some(Reference::Single(a)) => w!(out, "The dashed grey line is atol = {a:e}; "),
        Some(Reference::PerMode(_)) => out.push_str("Thin dashed lines are each mode's atol per tap; "),
        None => {}
    }
    if reference.is_some() {
        out.push_str(
            "a tap passes when every |Δ| ≤ atol + rtol·|expected|, so max |Δ| above atol alone is not a failure. ",
        );
    }
    let omitted: usize = data.iter().map(|d| d.omitted).sum();
    if omitted > 0 {
        w!(out, "<span class=\"nonfinite\">{omitted} non-finite value{} (NaN or ±inf) left out of the plots</span>: see the table. ", if omitted == 1 { "" } else { "s" });
    }
    out.push_str("Lines break where a stage was not compared.</p>\n");
    Ok(())
}

/// Which x labels to print so that they do not overlap: every stage if there is room, else
/// the unindexed stages plus every `step`-th block/layer.
fn shown_labels(stages: &[Tap], px_per_stage: f64) -> Vec<bool> {
    const LABEL_PX: f64 = 13.0;
    let step = (LABEL_PX / px_per_stage).ceil().max(1.0) as usize;
    let n = stages.len();
    let mut shown = vec![false; n];
    let fixed: Vec<bool> = stages.iter().map(|t| t.index().is_none()).collect();
    let mut last: Option<usize> = None;
    for i in 0..n {
        let next_fixed = (i + 1..n).find(|&j| fixed[j]);
        let room_before = last.is_none_or(|l| i - l >= step);
        let room_after = next_fixed.is_none_or(|j| j - i >= step);
        // Every step-th block or layer, and the last stage.
        let wanted = stages[i].index().is_some_and(|k| k % step == 0) || i + 1 == n;
        if fixed[i] || (wanted && room_before && room_after) {
            shown[i] = true;
            last = Some(i);
        }
    }
    shown
}

fn stage_plot(
    title: &str,
    y_desc: &str,
    stages: &[Tap],
    data: &PlotData,
    reference: Option<&Reference>,
) -> Result<String, String> {
    let err = |e: &dyn std::fmt::Display| e.to_string();
    let mut values: Vec<f64> = data.series.iter().flat_map(|s| s.segments.iter().flatten().map(|p| p.y)).collect();
    match reference {
        Some(Reference::Single(a)) => values.push(*a),
        Some(Reference::PerMode(lines)) => values.extend(lines.iter().flat_map(|(_, l)| l.iter().map(|(_, a)| *a))),
        None => {}
    }
    let min = values.iter().copied().fold(f64::INFINITY, f64::min);
    let max = values.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    let lo_exp = (min.log10() - 0.2).floor();
    let hi_exp = (max.log10() + 0.2).ceil().min(300.0).max(lo_exp + 2.0);
    let decades = (hi_exp - lo_exp) as usize;
    // Nudged outwards so that rounding in powf cannot drop the end decades' grid lines.
    let (lo, hi) = (10f64.powf(lo_exp) * (1.0 - 1e-9), 10f64.powf(hi_exp) * (1.0 + 1e-9));

    let n = stages.len();
    let label_chars = stages.iter().map(|t| short_stage(*t).chars().count()).max().unwrap_or(4);
    // Rotated stage names, then a bracket naming each part of the model.
    let x_label_area = (label_chars as f64 * 6.0 + 14.0) as u32 + 30;

    let mut svg = String::new();
    {
        let width = if n >= WIDE_FROM_STAGES { WIDE_PLOT_W } else { PLOT_W };
        let root = SVGBackend::with_string(&mut svg, (width, PLOT_H)).into_drawing_area();
        root.fill(&WHITE).map_err(|e| err(&e))?;
        let mut chart = ChartBuilder::on(&root)
            .caption(title, ("sans-serif", 19))
            .margin(10)
            .margin_right(18)
            .x_label_area_size(x_label_area)
            .y_label_area_size(62)
            .build_cartesian_2d(-0.5f64..(n as f64 - 0.5), (lo..hi).log_scale())
            .map_err(|e| err(&e))?;
        chart
            .configure_mesh()
            .disable_x_mesh()
            .x_labels(0)
            .x_label_formatter(&|_| String::new())
            .y_labels((decades + 1).min(16))
            .y_max_light_lines(1)
            .y_label_formatter(&|v| decade_label(*v))
            .y_label_style(("sans-serif", 14))
            .y_desc(y_desc)
            .axis_desc_style(("sans-serif", 15))
            .bold_line_style(RGBColor(0xdd, 0xdd, 0xdd).stroke_width(1))
            .light_line_style(RGBColor(0xf2, 0xf2, 0xf2).stroke_width(1))
            .draw()
            .map_err(|e| err(&e))?;

        // Stage labels, rotated, drawn by hand so that they hang below their stage.
        let (left, _) = chart.backend_coord(&(-0.5, lo));
        let (right, bottom) = chart.backend_coord(&(n as f64 - 0.5, lo));
        let px_per_stage = (right - left) as f64 / n.max(1) as f64;
        let label_style = ("sans-serif", 13)
            .into_font()
            .transform(FontTransform::Rotate270)
            .color(&RGBColor(0x33, 0x33, 0x33))
            .pos(Pos::new(HPos::Right, VPos::Center));
        for (i, (stage, shown)) in stages.iter().zip(shown_labels(stages, px_per_stage)).enumerate() {
            let (x, _) = chart.backend_coord(&(i as f64, lo));
            let tick = if shown { 5 } else { 2 };
            root.draw(&PathElement::new(vec![(x, bottom), (x, bottom + tick)], BLACK.stroke_width(1)))
                .map_err(|e| err(&e))?;
            if shown {
                root.draw(&Text::new(short_stage(*stage), (x, bottom + 8), label_style.clone()))
                    .map_err(|e| err(&e))?;
            }
        }

        // The parts of the model: a bracket under each, and a dashed line where the vision
        // tower hands over to the language model.
        let grey = RGBColor(0x77, 0x77, 0x77);
        let bracket_y = bottom + x_label_area as i32 - 26;
        for (name, part) in [("vision tower", Tap::is_vision as fn(Tap) -> bool), ("language model", Tap::is_lm)] {
            let (Some(first), Some(last)) =
                (stages.iter().position(|t| part(*t)), stages.iter().rposition(|t| part(*t)))
            else {
                continue;
            };
            let (x0, _) = chart.backend_coord(&(first as f64 - 0.4, lo));
            let (x1, _) = chart.backend_coord(&(last as f64 + 0.4, lo));
            let bracket = vec![(x0, bracket_y - 4), (x0, bracket_y), (x1, bracket_y), (x1, bracket_y - 4)];
            root.draw(&PathElement::new(bracket, grey.stroke_width(1))).map_err(|e| err(&e))?;
            let style = ("sans-serif", 14).into_font().color(&grey).pos(Pos::new(HPos::Center, VPos::Top));
            root.draw(&Text::new(name, ((x0 + x1) / 2, bracket_y + 4), style)).map_err(|e| err(&e))?;
        }
        if let Some(first_lm) = stages.iter().position(|t| t.is_lm()).filter(|i| *i > 0) {
            let xb = first_lm as f64 - 0.5;
            chart
                .draw_series(DashedLineSeries::new(
                    vec![(xb, lo), (xb, hi)],
                    5,
                    4,
                    RGBColor(0x99, 0x99, 0x99).stroke_width(1),
                ))
                .map_err(|e| err(&e))?;
        }

        match reference {
            Some(Reference::Single(a)) => {
                let grey = RGBColor(0x55, 0x55, 0x55);
                chart
                    .draw_series(DashedLineSeries::new(
                        vec![(-0.5, *a), (n as f64 - 0.5, *a)],
                        7,
                        4,
                        grey.stroke_width(1),
                    ))
                    .map_err(|e| err(&e))?;
                let (x, y) = chart.backend_coord(&(n as f64 - 0.5, *a));
                let style = ("sans-serif", 13).into_font().color(&grey).pos(Pos::new(HPos::Right, VPos::Bottom));
                root.draw(&Text::new(format!("atol {a:e}"), (x - 4, y - 3), style)).map_err(|e| err(&e))?;
            }
            Some(Reference::PerMode(lines)) => {
                for (colour, line) in lines {
                    let pts: Vec<(f64, f64)> = line.iter().map(|(x, a)| (*x as f64, *a)).collect();
                    chart
                        .draw_series(DashedLineSeries::new(pts, 4, 4, colour.mix(0.6).stroke_width(1)))
                        .map_err(|e| err(&e))?;
                }
            }
            None => {}
        }

        // Modes are dodged sideways a little so that equal values (a tap that two modes
        // compute the same way) stay visible.
        let m = data.series.len();
        let dodge = |i: usize| (i as f64 - (m as f64 - 1.0) / 2.0) * (0.5 / m.max(1) as f64).min(0.12);
        for (i, s) in data.series.iter().enumerate() {
            for seg in &s.segments {
                chart
                    .draw_series(LineSeries::new(
                        seg.iter().map(|p| (p.x as f64 + dodge(i), p.y)),
                        s.colour.stroke_width(2),
                    ))
                    .map_err(|e| err(&e))?;
            }
        }
        for (i, s) in data.series.iter().enumerate() {
            for p in s.segments.iter().flatten() {
                let at = (p.x as f64 + dodge(i), p.y);
                if p.failed {
                    chart.draw_series(std::iter::once(Circle::new(at, 7, RED.stroke_width(2)))).map_err(|e| err(&e))?;
                }
                if p.clamped {
                    chart.draw_series(std::iter::once(Circle::new(at, 4, WHITE.filled()))).map_err(|e| err(&e))?;
                    chart
                        .draw_series(std::iter::once(Circle::new(at, 4, s.colour.stroke_width(2))))
                        .map_err(|e| err(&e))?;
                } else {
                    chart.draw_series(std::iter::once(Circle::new(at, 4, s.colour.filled()))).map_err(|e| err(&e))?;
                }
            }
        }
        root.present().map_err(|e| err(&e))?;
    }
    Ok(svg)
}

// ---------------------------------------------------------------- heat maps

/// Viridis, sampled at tenths: dark purple (small error) to yellow (large error).
const VIRIDIS: [(u8, u8, u8); 11] = [
    (0x44, 0x01, 0x54),
    (0x48, 0x24, 0x75),
    (0x41, 0x44, 0x87),
    (0x35, 0x5f, 0x8d),
    (0x2a, 0x78, 0x8e),
    (0x21, 0x91, 0x8c),
    (0x22, 0xa8, 0x84),
    (0x44, 0xbf, 0x70),
    (0x7a, 0xd1, 0x51),
    (0xbd, 0xdf, 0x26),
    (0xfd, 0xe7, 0x25),
];
/// Cells with exactly zero error.
const ZERO_COLOUR: &str = "#e8e8e8";
/// Cells whose error is NaN or infinite.
const NONFINITE_COLOUR: &str = "#ff00cc";

fn viridis(t: f64) -> String {
    let t = if t.is_finite() { t.clamp(0.0, 1.0) } else { 0.0 } * 10.0;
    let i = (t.floor() as usize).min(9);
    let f = t - i as f64;
    let (a, b) = (VIRIDIS[i], VIRIDIS[i + 1]);
    let mix = |x: u8, y: u8| (x as f64 + (y as f64 - x as f64) * f).round() as u8;
    format!("#{:02x}{:02x}{:02x}", mix(a.0, b.0), mix(a.1, b.1), mix(a.2, b.2))
}

fn heatmaps(out: &mut String, case_n: usize, case: &CaseReport) {
    if case.heatmaps.is_empty() {
        return;
    }
    w!(
        out,
        "<details open><summary><h3>Per-patch max |Δ| on the image grid <span class=\"muted\">({} map{})</span></h3></summary>\n",
        case.heatmaps.len(),
        if case.heatmaps.len() == 1 { "" } else { "s" }
    );
    out.push_str("<p class=\"caption\">Each cell is the largest |Δ| over the channels of one grid cell (row-major, row 0 at the top), on a log colour scale from the map's own minimum (dark purple) to its maximum (yellow); the black-outlined cell is the worst. <span class=\"swatch\" style=\"background:#e8e8e8\"></span>exactly 0, <span class=\"swatch\" style=\"background:#ff00cc\"></span>NaN or ±inf. A red frame marks a map whose tap failed. Structure (a stripe, a shifted row, a transposed pattern) points at a positional bug.</p>\n");
    let mut modes: Vec<&str> = Vec::new();
    for h in &case.heatmaps {
        if !modes.contains(&h.mode.as_str()) {
            modes.push(&h.mode);
        }
    }
    let mut k = 0;
    for mode in modes {
        w!(out, "<h4>{}</h4>\n<div class=\"gallery\">\n", mode_chip(mode));
        for h in case.heatmaps.iter().filter(|h| h.mode == mode) {
            let row = case.rows.iter().find(|r| r.mode == h.mode && r.tap == h.tap);
            heatmap(out, &format!("hm{case_n}-{k}"), h, row);
            k += 1;
        }
        out.push_str("</div>\n");
    }
    out.push_str("</details>\n");
}

/// Width of a heat map in pixels (wider only when a grid needs more than 1 px per cell).
const HEATMAP_PX: usize = 216;
/// Grids with more cells than this along a side are max-pooled for display.
const MAX_CELLS_PER_SIDE: usize = 108;

fn heatmap(out: &mut String, id: &str, h: &Heatmap, row: Option<&Row>) {
    let failing = row.is_some_and(|r| r.status == Status::Fail);
    w!(
        out,
        "<div class=\"heatmap{}\"><div class=\"title\">{} · {} · image {}</div>",
        if failing { " failing" } else { "" },
        esc(&h.mode),
        esc(&h.tap),
        h.image
    );
    let cells = h.grid_h.checked_mul(h.grid_w);
    if h.grid_h == 0 || h.grid_w == 0 || cells != Some(h.max_abs.len()) {
        w!(
            out,
            "<div class=\"sub nonfinite\">cannot draw: a {} × {} grid needs {} values, got {}</div></div>\n",
            h.grid_h,
            h.grid_w,
            cells.map_or("too many".to_string(), |c| c.to_string()),
            h.max_abs.len()
        );
        return;
    }
    let finite_pos: Vec<f64> = h.max_abs.iter().copied().filter(|v| v.is_finite() && *v > 0.0).collect();
    let zeros = h.max_abs.iter().filter(|v| **v == 0.0).count();
    let nonfinite = h.max_abs.iter().filter(|v| !v.is_finite()).count();
    let min = finite_pos.iter().copied().fold(f64::INFINITY, f64::min);
    let max = finite_pos.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    let (lmin, lmax) = (min.log10(), max.log10());
    let colour = |v: f64| -> String {
        if !v.is_finite() {
            NONFINITE_COLOUR.into()
        } else if v <= 0.0 {
            ZERO_COLOUR.into()
        } else if lmax - lmin < 1e-12 {
            viridis(1.0)
        } else {
            viridis((v.log10() - lmin) / (lmax - lmin))
        }
    };
    // The worst cell: a non-finite one if any, else the largest (none when all are 0).
    let worst = h
        .max_abs
        .iter()
        .enumerate()
        .filter(|(_, v)| v.is_nan() || **v > 0.0)
        .max_by(|(_, a), (_, b)| {
            let key = |v: f64| if v.is_nan() { f64::INFINITY } else { v };
            key(**a).total_cmp(&key(**b))
        })
        .map(|(i, _)| i);
    let worst_text =
        worst.map(|i| format!("max {} at row {}, col {}", sci_text(h.max_abs[i]), i / h.grid_w, i % h.grid_w));
    // Large grids are shown max-pooled, so that the worst cells stay visible.
    let pool = h.grid_h.max(h.grid_w).div_ceil(MAX_CELLS_PER_SIDE);
    let (dh, dw) = (h.grid_h.div_ceil(pool), h.grid_w.div_ceil(pool));
    let mut shown = vec![0.0f64; dh * dw];
    for (i, v) in h.max_abs.iter().enumerate() {
        let j = (i / h.grid_w / pool) * dw + (i % h.grid_w) / pool;
        shown[j] = if shown[j].is_nan() || v.is_nan() { f64::NAN } else { shown[j].max(*v) };
    }
    w!(
        out,
        "<div class=\"sub\">{} × {} cells (h × w){}{}</div>",
        h.grid_h,
        h.grid_w,
        if pool > 1 { format!(", shown max-pooled {pool} × {pool}") } else { String::new() },
        worst_text.as_ref().map_or(String::new(), |t| format!(" · {}", esc(t)))
    );

    let cell = (HEATMAP_PX / dh.max(dw)).clamp(1, 18);
    let (gw, gh) = (cell * dw, cell * dh);
    let legend_w = gw.max(HEATMAP_PX);
    let width = legend_w;
    let height = gh + 46;
    w!(
        out,
        "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{width}\" height=\"{height}\" viewBox=\"0 0 {width} {height}\" font-family=\"sans-serif\" font-size=\"11\" shape-rendering=\"crispEdges\">"
    );
    let tooltips = pool == 1 && h.max_abs.len() <= 1024;
    for (i, v) in shown.iter().enumerate() {
        let (r, c) = (i / dw, i % dw);
        if tooltips {
            w!(
                out,
                "<rect x=\"{}\" y=\"{}\" width=\"{cell}\" height=\"{cell}\" fill=\"{}\"><title>row {r}, col {c}: {}</title></rect>",
                c * cell,
                r * cell,
                colour(*v),
                esc(&sci_text(*v))
            );
        } else {
            w!(
                out,
                "<rect x=\"{}\" y=\"{}\" width=\"{cell}\" height=\"{cell}\" fill=\"{}\"/>",
                c * cell,
                r * cell,
                colour(*v)
            );
        }
    }
    if let Some(i) = worst {
        let (r, c) = (i / h.grid_w / pool, (i % h.grid_w) / pool);
        let s = cell.max(4);
        let off = (s - cell) / 2;
        w!(
            out,
            "<rect x=\"{}\" y=\"{}\" width=\"{s}\" height=\"{s}\" fill=\"none\" stroke=\"#000\" stroke-width=\"2\"/>",
            (c * cell) as isize - off as isize,
            (r * cell) as isize - off as isize
        );
    }
    // Colour legend: the gradient from the map's minimum to its maximum.
    let y0 = gh + 8;
    if finite_pos.is_empty() {
        w!(
            out,
            "<text x=\"0\" y=\"{}\" fill=\"#57606a\">{}</text>",
            y0 + 12,
            if nonfinite > 0 { "no finite non-zero value" } else { "every cell is exactly 0" }
        );
    } else {
        w!(out, "<defs><linearGradient id=\"{id}\" x1=\"0\" x2=\"1\" y1=\"0\" y2=\"0\">");
        for (k, _) in VIRIDIS.iter().enumerate() {
            w!(out, "<stop offset=\"{}\" stop-color=\"{}\"/>", k as f64 / 10.0, viridis(k as f64 / 10.0));
        }
        w!(out, "</linearGradient></defs>");
        w!(out, "<rect x=\"0\" y=\"{y0}\" width=\"{legend_w}\" height=\"10\" fill=\"url(#{id})\"/>");
        if let Some(atol) = row.and_then(|r| r.atol).filter(|a| *a > min && *a < max && lmax > lmin) {
            let x = ((atol.log10() - lmin) / (lmax - lmin) * legend_w as f64).round();
            w!(
                out,
                "<line x1=\"{x}\" x2=\"{x}\" y1=\"{}\" y2=\"{}\" stroke=\"#000\" stroke-width=\"1.5\"><title>atol {atol:e}</title></line>",
                y0 - 2,
                y0 + 12
            );
        }
        w!(out, "<text x=\"0\" y=\"{}\" fill=\"#333\">min {}</text>", y0 + 24, esc(&sci_text(min)));
        w!(
            out,
            "<text x=\"{legend_w}\" y=\"{}\" text-anchor=\"end\" fill=\"#333\">max {}</text>",
            y0 + 24,
            esc(&sci_text(max))
        );
    }
    let mut notes = Vec::new();
    if zeros > 0 && !finite_pos.is_empty() {
        notes.push(format!("{zeros} exactly 0"));
    }
    if nonfinite > 0 {
        notes.push(format!("{nonfinite} non-finite"));
    }
    if !notes.is_empty() {
        w!(out, "<text x=\"0\" y=\"{}\" fill=\"#bc4c00\">{}</text>", y0 + 37, esc(&notes.join(" · ")));
    }
    out.push_str("</svg></div>\n");
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(mode: &str, tap: &str, status: Status, max_abs: Option<f64>, cosine: Option<f64>) -> Row {
        Row {
            case: "case-a".into(),
            mode: mode.into(),
            tap: tap.into(),
            status,
            atol: Some(1e-4),
            rtol: Some(1e-3),
            total: 1000,
            mismatched: if status == Status::Fail { 12 } else { 0 },
            mismatched_pct: if status == Status::Fail { 1.2 } else { 0.0 },
            max_abs,
            max_abs_index: Some(vec![0, 3, 7]),
            max_abs_location: Some("image 0, patch (1, 2)".into()),
            max_rel: max_abs.map(|m| m * 10.0),
            max_rel_index: Some(vec![0, 3, 7]),
            cosine,
            argmax_expected: None,
            argmax_actual: None,
            top_k_overlap: None,
            detail: (status == Status::Fail).then(|| "max |Δ| 3e-2 > atol".to_string()),
        }
    }

    fn sample_case() -> CaseReport {
        let mut rows = vec![
            Row::skipped("case-a", "from-image-files", "input.input_ids", "no tokenizer here".into()),
            row("vision-teacher-forced", "vision.patch_embed", Status::Pass, Some(0.0), Some(1.0)),
            row("vision-teacher-forced", "vision.block.0", Status::Pass, Some(2e-6), Some(0.9999999)),
            row("vision-teacher-forced", "vision.block.1", Status::Fail, Some(3e-2), Some(0.999)),
            row("lm-teacher-forced", "lm.layer.0", Status::Pass, Some(1e-5), Some(0.99999)),
        ];
        let mut logits = row("lm-teacher-forced", "lm.logits_last", Status::Pass, Some(1e-4), Some(0.9999));
        logits.argmax_expected = Some(42);
        logits.argmax_actual = Some(42);
        logits.top_k_overlap = Some(1.0);
        rows.push(logits);
        CaseReport {
            case: "case-a".into(),
            rows,
            heatmaps: vec![Heatmap {
                mode: "vision-teacher-forced".into(),
                tap: "vision.block.1".into(),
                image: 0,
                grid_h: 4,
                grid_w: 6,
                max_abs: (0..24).map(|i| if i == 5 { 0.0 } else { 1e-6 * (i as f64 + 1.0) }).collect(),
            }],
        }
    }

    #[test]
    fn the_page_has_one_table_row_per_report_row() {
        let case = sample_case();
        let page = render("parity", std::slice::from_ref(&case)).unwrap();
        assert_eq!(page.matches("<tr class=\"tap-row").count(), case.rows.len());
        // The table header is the only other row of the tap table.
        let table = &page[page.find("<table class=\"taps\">").unwrap()..];
        let table = &table[..table.find("</table>").unwrap()];
        assert_eq!(table.matches("<tr").count(), case.rows.len() + 1);
    }

    #[test]
    fn each_plot_and_heat_map_is_an_inline_svg() {
        let case = sample_case();
        let page = render("parity", &[case]).unwrap();
        // Two plots (max |Δ|, 1 − cosine) and one heat map.
        assert_eq!(page.matches("<svg").count(), 3);
        assert!(page.contains("max |Δ| per stage"));
        assert!(page.contains("1 − cosine per stage"));
        assert!(page.contains("vision-teacher-forced · vision.block.1 · image 0"));
        // Labels are real SVG text, and the page loads nothing from outside.
        assert!(page.contains("<text"));
        assert!(page.contains("v.block.1"));
        assert!(!page.contains("<script"));
        assert!(!page.contains("src=\"http"));
        assert!(!page.contains("href=\"http"));
    }

    #[test]
    fn the_summary_names_the_first_failing_tap_of_each_mode() {
        let page = render("parity", &[sample_case()]).unwrap();
        let summary = &page[page.find("First failing tap").unwrap()..];
        let summary = &summary[..summary.find("</div>").unwrap()];
        assert!(summary.contains("vision.block.1"));
        assert!(summary.contains("vision-teacher-forced"));
        assert!(!summary.contains("lm-teacher-forced"), "that mode did not fail");
        assert!(page.contains("4 passed"));
        assert!(page.contains("1 failed"));
        assert!(page.contains("1 skipped"));
    }

    #[test]
    fn text_from_the_report_is_escaped() {
        let mut case = sample_case();
        case.case = "<b>case</b>".into();
        case.rows[3].detail = Some("expected <script>alert(1)</script> & more".into());
        case.rows[0].mode = "mode\"<x>".into();
        let page = render("title <i>", &[case]).unwrap();
        assert!(!page.contains("<script>"));
        assert!(page.contains("expected &lt;script&gt;alert(1)&lt;/script&gt; &amp; more"));
        assert!(page.contains("&lt;b&gt;case&lt;/b&gt;"));
        assert!(page.contains("title &lt;i&gt;"));
        assert!(!page.contains("<x>"));
    }

    #[test]
    fn a_case_with_only_skipped_rows_renders_without_plots() {
        let case = CaseReport {
            case: "nothing-here".into(),
            rows: vec![
                Row::skipped("nothing-here", "from-image-files", "vision.patch_embed", "checkpoint absent".into()),
                Row::skipped("nothing-here", "from-image-files", "lm.logits_last", "checkpoint absent".into()),
            ],
            heatmaps: vec![],
        };
        let page = render("parity", &[case]).unwrap();
        assert_eq!(page.matches("<tr class=\"tap-row").count(), 2);
        assert!(page.contains("nothing to plot"));
        assert!(page.contains("checkpoint absent"));
        assert!(page.contains("0 passed"));
    }

    #[test]
    fn non_finite_and_missing_metrics_are_shown_as_text_and_left_out_of_plots() {
        let mut case = sample_case();
        case.rows.push(row("from-image-files", "vision.patch_embed", Status::Fail, Some(f64::NAN), Some(f64::NAN)));
        case.rows.push(row("from-image-files", "vision.block.0", Status::Fail, Some(f64::INFINITY), None));
        case.rows.push(row("from-image-files", "vision.block.1", Status::Fail, None, Some(f64::NEG_INFINITY)));
        case.rows.push(Row::failed("case-a", "from-image-files", "lm.layer.0", "the run panicked".into()));
        case.heatmaps.push(Heatmap {
            mode: "from-image-files".into(),
            tap: "vision.block.0".into(),
            image: 1,
            grid_h: 2,
            grid_w: 2,
            max_abs: vec![f64::NAN, f64::INFINITY, 0.0, 1e-3],
        });
        case.heatmaps.push(Heatmap {
            mode: "from-image-files".into(),
            tap: "vision.block.1".into(),
            image: 0,
            grid_h: 3,
            grid_w: 3,
            max_abs: vec![1.0; 4],
        });
        let page = render("parity", &[case]).unwrap();
        assert!(page.contains("<span class=\"nonfinite\">NaN</span>"));
        assert!(page.contains("<span class=\"nonfinite\">inf</span>"));
        assert!(page.contains("<span class=\"nonfinite\">-inf</span>"));
        assert!(page.contains("left out of the plots"));
        assert!(page.contains("cannot draw: a 3 × 3 grid needs 9 values, got 4"));
        // Plotted coordinates never carry a non-finite number.
        assert!(!page.contains("=\"NaN\"") && !page.contains("=\"inf\""));
    }

    #[test]
    fn only_non_finite_values_still_render() {
        let case = CaseReport {
            case: "broken".into(),
            rows: vec![row("from-image-files", "lm.norm", Status::Fail, Some(f64::NAN), Some(f64::NAN))],
            heatmaps: vec![Heatmap {
                mode: "from-image-files".into(),
                tap: "vision.tower".into(),
                image: 0,
                grid_h: 1,
                grid_w: 2,
                max_abs: vec![f64::NAN, f64::NAN],
            }],
        };
        let page = render("parity", &[case]).unwrap();
        assert!(page.contains("nothing to plot"));
        assert!(page.contains("no finite non-zero value"));
    }

    #[test]
    fn zero_errors_are_drawn_at_the_floor_and_the_caption_says_so() {
        let page = render("parity", &[sample_case()]).unwrap();
        assert!(page.contains("drawn as hollow dots at the floor 1e-12"));
        assert!(page.contains("1 exactly 0"));
    }

    #[test]
    fn extreme_values_keep_the_axes_finite() {
        let mut case = sample_case();
        case.rows.push(row("from-image-files", "vision.tower", Status::Fail, Some(f64::MAX), Some(-1.0)));
        case.rows.push(row("from-image-files", "vision.projector", Status::Fail, Some(1e-300), Some(1.0 + 1e-9)));
        let page = render("parity", &[case]).unwrap();
        assert_eq!(page.matches("<svg").count(), 3);
        assert!(!page.contains("NaN\"") && !page.contains("inf\""));
    }

    #[test]
    fn large_grids_are_max_pooled_and_keep_their_worst_cell() {
        let (gh, gw) = (300, 250);
        let mut values = vec![1e-6; gh * gw];
        values[123 * gw + 77] = 5.0;
        let case = CaseReport {
            case: "big".into(),
            rows: vec![],
            heatmaps: vec![Heatmap {
                mode: "from-image-files".into(),
                tap: "vision.tower".into(),
                image: 0,
                grid_h: gh,
                grid_w: gw,
                max_abs: values,
            }],
        };
        let page = render("parity", &[case]).unwrap();
        assert!(page.contains("shown max-pooled 3 × 3"));
        assert!(page.contains("max 5.00e0 at row 123, col 77"));
        assert_eq!(page.matches("<rect").count(), 100 * 84 + 2, "pooled cells, the worst-cell outline, the colour bar");
        // The yellow end of the scale is used by the pooled cell holding the maximum.
        assert!(page.contains("fill=\"#fde725\""));
    }

    #[test]
    fn many_stages_get_labels_that_do_not_overlap() {
        let stages: Vec<Tap> = (0..40)
            .map(|i| Tap::parse(&format!("lm.layer.{i}")).unwrap())
            .chain([Tap::parse("lm.norm").unwrap()])
            .collect();
        let shown = shown_labels(&stages, 6.0);
        let idx: Vec<usize> = shown.iter().enumerate().filter(|(_, s)| **s).map(|(i, _)| i).collect();
        assert!(idx.windows(2).all(|w| w[1] - w[0] >= 3), "{idx:?}");
        assert!(shown[40], "unindexed stages are always labelled");
        assert!(shown[0]);
    }
}
