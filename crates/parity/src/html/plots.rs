//! The error-growth plots: max |Δ| and 1 − cosine per stage on log axes, one line per mode,
//! drawn by plotters as inline SVG; and what their shared legend and caption say.

use std::collections::BTreeSet;

use plotters::prelude::*;
use plotters::style::text_anchor::{HPos, Pos, VPos};
use serde::Serialize;

use super::{mode_colour, modes_in_order, RenderError};
use crate::report::{CaseReport, Row, Status};
use contract::ArrayDtype;
use contract::{Family, Tap};

/// Values at or below this are drawn at it on the log axes (a log axis has no 0, and
/// 1 − cosine can come out slightly negative by rounding).
pub const LOG_FLOOR: f64 = 1e-12;
/// Larger values are drawn at this (only absurd values are, but the axis must stay finite).
const LOG_CEILING: f64 = 1e290;

/// Axis labels: powers of ten as `1e-5`.
fn decade_label(v: f64) -> String {
    let e = v.log10();
    if (e - e.round()).abs() < 1e-6 {
        format!("1e{}", e.round() as i64)
    } else {
        format!("{v:.0e}")
    }
}

/// The row's tap as a plotted stage: float activations from `vision.patch_embed` on.
fn float_stage(row: &Row) -> Option<Tap> {
    row.stage.filter(|t| t.family() != Family::Input && t.dtype() == ArrayDtype::F32)
}

/// A compact stage name for the x axis (the table has the full names).
fn short_stage(t: Tap) -> String {
    let s = t.to_string();
    match s.strip_prefix("vision.") {
        Some(rest) => format!("v.{rest}"),
        None => s,
    }
}

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
            let Some(x) = float_stage(r).and_then(|t| stages.iter().position(|s| *s == t)) else {
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
            let (Some(x), Some(atol)) = (float_stage(r).and_then(|t| stages.iter().position(|s| *s == t)), r.atol)
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

/// The plots of one case and the facts their shared legend and caption state.
#[derive(Serialize)]
pub(super) struct Plots {
    /// One per metric; none when no float tap was compared.
    figures: Vec<Figure>,
    /// The legend: every mode of the case, in order.
    modes: Vec<String>,
    /// Some stage is a vision stage (shown as `v.…`).
    vision_stages: bool,
    /// Where values too small for a log axis are drawn.
    floor: String,
    /// Values drawn at the floor.
    clamped: usize,
    /// The one atol of every plotted tap, drawn as a line across the max |Δ| plot...
    atol: Option<f64>,
    /// ...or, when atol varies, a dashed line per mode through each stage's atol.
    atol_per_mode: bool,
    /// Values left out because they are NaN or infinite.
    omitted: usize,
}

#[derive(Serialize)]
struct Figure {
    metric: &'static str,
    /// None when the metric has no finite value to plot.
    svg: Option<String>,
}

/// The plots of case number `n`.
pub(super) fn plots(n: usize, case: &CaseReport) -> Result<Plots, RenderError> {
    let stages: Vec<Tap> = case.rows.iter().filter_map(float_stage).collect::<BTreeSet<_>>().into_iter().collect();
    let metrics = [
        Metric { name: "max |Δ|", what: |r| r.max_abs },
        Metric { name: "1 − cosine", what: |r| r.cosine.map(|c| 1.0 - c) },
    ];
    let data: Vec<PlotData> = metrics.iter().map(|m| plot_data(&case.rows, &stages, m)).collect();
    let reference = atol_reference(&case.rows, &stages);
    let mut figures = Vec::new();
    if data.iter().any(|d| !d.series.is_empty()) {
        for (metric, d) in metrics.iter().zip(&data) {
            let with_reference = if metric.name == "max |Δ|" { reference.as_ref() } else { None };
            let title = format!("{} per stage (log scale)", metric.name);
            let svg = (!d.series.is_empty())
                .then(|| stage_plot(&title, metric.name, &stages, d, with_reference))
                .transpose()
                .map_err(|message| RenderError {
                    what: format!("the {} plot of case {} (#{n})", metric.name, case.case),
                    message,
                })?;
            figures.push(Figure { metric: metric.name, svg });
        }
    }
    Ok(Plots {
        figures,
        modes: modes_in_order(&case.rows).into_iter().map(String::from).collect(),
        vision_stages: stages.iter().any(|t| t.family() == Family::Vision),
        floor: decade_label(LOG_FLOOR),
        clamped: data.iter().map(|d| d.clamped).sum(),
        atol: match reference {
            Some(Reference::Single(a)) => Some(a),
            _ => None,
        },
        atol_per_mode: matches!(reference, Some(Reference::PerMode(_))),
        omitted: data.iter().map(|d| d.omitted).sum(),
    })
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
        for (name, part) in [("vision tower", Family::Vision), ("language model", Family::Lm)] {
            let (Some(first), Some(last)) =
                (stages.iter().position(|t| t.family() == part), stages.iter().rposition(|t| t.family() == part))
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
        if let Some(first_lm) = stages.iter().position(|t| t.family() == Family::Lm).filter(|i| *i > 0) {
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

#[cfg(test)]
mod tests {
    use super::*;
    use contract::Stage;

    #[test]
    fn many_stages_get_labels_that_do_not_overlap() {
        let stages: Vec<Tap> = (0..40).map(|i| Stage::LmLayer.at(i)).chain([Stage::LmNorm.tap()]).collect();
        let shown = shown_labels(&stages, 6.0);
        let idx: Vec<usize> = shown.iter().enumerate().filter(|(_, s)| **s).map(|(i, _)| i).collect();
        assert!(idx.windows(2).all(|w| w[1] - w[0] >= 3), "{idx:?}");
        assert!(shown[40], "unindexed stages are always labelled");
        assert!(shown[0]);
    }
}
