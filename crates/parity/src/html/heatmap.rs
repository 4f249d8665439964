//! The per-patch heat maps: where on the image grid the error is (`heatmaps.html` lays them
//! out, `heatmap.html` draws each as a small SVG).

use serde::Serialize;

use super::in_order_of_appearance;
use crate::report::{CaseReport, Heatmap, Row, Status};

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

/// Width of a heat map in pixels (wider only when a grid needs more than 1 px per cell).
const HEATMAP_PX: usize = 216;
/// Grids with more cells than this along a side are max-pooled for display.
const MAX_CELLS_PER_SIDE: usize = 108;
/// Above this many cells a map has no per-cell tooltips (they would weigh down the page).
const MAX_TOOLTIPS: usize = 1024;

fn viridis(t: f64) -> String {
    let t = if t.is_finite() { t.clamp(0.0, 1.0) } else { 0.0 } * 10.0;
    let i = (t.floor() as usize).min(9);
    let f = t - i as f64;
    let (a, b) = (VIRIDIS[i], VIRIDIS[i + 1]);
    let mix = |x: u8, y: u8| (x as f64 + (y as f64 - x as f64) * f).round() as u8;
    format!("#{:02x}{:02x}{:02x}", mix(a.0, b.0), mix(a.1, b.1), mix(a.2, b.2))
}

/// The heat maps of one case, grouped by mode.
#[derive(Serialize)]
pub(super) struct Heatmaps<'a> {
    count: usize,
    galleries: Vec<Gallery<'a>>,
    /// The colour scale's gradient.
    stops: Vec<Stop>,
    zero_colour: &'static str,
    nonfinite_colour: &'static str,
}

#[derive(Serialize)]
struct Gallery<'a> {
    mode: &'a str,
    maps: Vec<Map<'a>>,
}

#[derive(Serialize)]
struct Stop {
    offset: String,
    colour: String,
}

#[derive(Serialize)]
struct Map<'a> {
    /// Unique in the page: names the map's gradient.
    id: String,
    mode: &'a str,
    tap: &'a str,
    image: usize,
    /// The tap failed.
    failing: bool,
    grid_h: usize,
    grid_w: usize,
    /// Set when the values do not fill the grid, and then nothing is drawn.
    unfit: Option<Unfit>,
    drawing: Option<Drawing>,
}

#[derive(Serialize)]
struct Unfit {
    /// Values the grid needs (none when the count overflows).
    needs: Option<usize>,
    got: usize,
}

#[derive(Serialize)]
struct Drawing {
    /// Side of the square of grid cells shown as one cell (1 when not pooled).
    pool: usize,
    /// Side of a shown cell in pixels.
    cell: usize,
    width: usize,
    height: usize,
    /// Each shown cell carries its value as a tooltip.
    tooltips: bool,
    cells: Vec<Cell>,
    worst: Option<Worst>,
    /// Top of the colour scale, below the grid.
    y0: usize,
    legend_w: usize,
    /// The smallest and largest finite non-zero value; none when there is no such value.
    range: Option<Range>,
    /// Where the tap's atol falls on the colour scale, when it falls inside it.
    atol: Option<AtolMark>,
    zeros: usize,
    nonfinite: usize,
}

#[derive(Serialize)]
struct Cell {
    x: usize,
    y: usize,
    row: usize,
    col: usize,
    fill: String,
    value: f64,
}

/// The worst cell: its value and place on the grid, and the outline drawn round it.
#[derive(Serialize)]
struct Worst {
    value: f64,
    row: usize,
    col: usize,
    x: isize,
    y: isize,
    size: usize,
}

#[derive(Serialize)]
struct Range {
    min: f64,
    max: f64,
}

#[derive(Serialize)]
struct AtolMark {
    value: f64,
    x: i64,
}

/// The heat maps of case number `case_n`.
pub(super) fn heatmaps(case_n: usize, case: &CaseReport) -> Heatmaps<'_> {
    let mut k = 0;
    let galleries = in_order_of_appearance(case.heatmaps.iter().map(|h| h.mode.as_str()))
        .into_iter()
        .map(|mode| Gallery {
            mode,
            maps: case
                .heatmaps
                .iter()
                .filter(|h| h.mode == mode)
                .map(|h| {
                    let row = case.rows.iter().find(|r| r.mode == h.mode && r.tap == h.tap);
                    k += 1;
                    map(format!("hm{case_n}-{}", k - 1), h, row)
                })
                .collect(),
        })
        .collect();
    Heatmaps {
        count: case.heatmaps.len(),
        galleries,
        stops: (0..VIRIDIS.len())
            .map(|k| {
                let t = k as f64 / 10.0;
                Stop { offset: t.to_string(), colour: viridis(t) }
            })
            .collect(),
        zero_colour: ZERO_COLOUR,
        nonfinite_colour: NONFINITE_COLOUR,
    }
}

fn map<'a>(id: String, h: &'a Heatmap, row: Option<&Row>) -> Map<'a> {
    let cells = h.grid_h.checked_mul(h.grid_w);
    let fits = h.grid_h > 0 && h.grid_w > 0 && cells == Some(h.max_abs.len());
    Map {
        id,
        mode: &h.mode,
        tap: &h.tap,
        image: h.image,
        failing: row.is_some_and(|r| r.status == Status::Fail),
        grid_h: h.grid_h,
        grid_w: h.grid_w,
        unfit: (!fits).then_some(Unfit { needs: cells, got: h.max_abs.len() }),
        drawing: fits.then(|| drawing(h, row.and_then(|r| r.atol))),
    }
}

fn drawing(h: &Heatmap, atol: Option<f64>) -> Drawing {
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
    // Large grids are shown max-pooled, so that the worst cells stay visible.
    let pool = h.grid_h.max(h.grid_w).div_ceil(MAX_CELLS_PER_SIDE);
    let (dh, dw) = (h.grid_h.div_ceil(pool), h.grid_w.div_ceil(pool));
    let mut shown = vec![0.0f64; dh * dw];
    for (i, v) in h.max_abs.iter().enumerate() {
        let j = (i / h.grid_w / pool) * dw + (i % h.grid_w) / pool;
        shown[j] = if shown[j].is_nan() || v.is_nan() { f64::NAN } else { shown[j].max(*v) };
    }

    let cell = (HEATMAP_PX / dh.max(dw)).clamp(1, 18);
    let (gw, gh) = (cell * dw, cell * dh);
    let legend_w = gw.max(HEATMAP_PX);
    let cells = shown
        .iter()
        .enumerate()
        .map(|(i, v)| {
            let (row, col) = (i / dw, i % dw);
            Cell { x: col * cell, y: row * cell, row, col, fill: colour(*v), value: *v }
        })
        .collect();
    let worst = worst.map(|i| {
        let (r, c) = (i / h.grid_w / pool, (i % h.grid_w) / pool);
        // At least 4 px, so that the outline shows round a cell of 1 or 2 px.
        let size = cell.max(4);
        let off = (size - cell) / 2;
        Worst {
            value: h.max_abs[i],
            row: i / h.grid_w,
            col: i % h.grid_w,
            x: (c * cell) as isize - off as isize,
            y: (r * cell) as isize - off as isize,
            size,
        }
    });
    let range = (!finite_pos.is_empty()).then_some(Range { min, max });
    let atol = atol
        .filter(|a| range.is_some() && *a > min && *a < max && lmax > lmin)
        .map(|a| AtolMark { value: a, x: ((a.log10() - lmin) / (lmax - lmin) * legend_w as f64).round() as i64 });
    Drawing {
        pool,
        cell,
        width: legend_w,
        height: gh + 46,
        tooltips: pool == 1 && h.max_abs.len() <= MAX_TOOLTIPS,
        cells,
        worst,
        y0: gh + 8,
        legend_w,
        range,
        atol,
        zeros,
        nonfinite,
    }
}
