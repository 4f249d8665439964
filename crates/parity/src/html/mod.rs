//! The verification report as one self-contained HTML page.
//!
//! Per case: a summary (counts, the first failing tap of each mode), plots of how the error
//! grows through the pipeline (max |Δ| and 1 − cosine per stage, one line per mode), the
//! per-patch heat maps and the table of every tap. No JavaScript and no external resources:
//! the CSS is inline and every figure is an inline SVG, so the file can be attached to a CI
//! run or opened from disk as it is.
//!
//! The markup lives in templates (`crates/parity/templates/`), rendered by minijinja with
//! HTML auto-escaping, so no text from a report can turn into markup. The modules here work
//! out what the templates show: `page` the page and each case's summary, `table` the rows of
//! the tap table, `plots` the error-growth plots (SVG drawn by plotters), `heatmap` the
//! per-patch heat maps.

mod heatmap;
mod page;
mod plots;
mod table;

use plotters::style::RGBColor;

use crate::mode::Mode;
use crate::report::{CaseReport, Row};

pub use plots::LOG_FLOOR;

/// A figure, or the page, could not be drawn.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("drawing {what}: {message}")]
pub struct RenderError {
    /// Which figure, or the page.
    pub what: String,
    /// What the drawing library said.
    pub message: String,
}

/// The whole report: `title`, an index of the cases and one section per case.
pub fn render(title: &str, cases: &[CaseReport]) -> Result<String, RenderError> {
    page::render(title, cases)
}

/// A fixed colour per known mode (never red: red means failure here), the same in the plots
/// and beside each mode's name.
fn mode_colour(mode: &str) -> RGBColor {
    const OTHER: [RGBColor; 4] = [
        RGBColor(0x8c, 0x56, 0x4b),
        RGBColor(0x17, 0xbe, 0xcf),
        RGBColor(0xbc, 0xbd, 0x22),
        RGBColor(0x7f, 0x7f, 0x7f),
    ];
    // A match rather than a table indexed by the mode's place: a new mode must get a colour
    // here to compile, instead of indexing past the table.
    if let Some(known) = Mode::ALL.iter().find(|m| m.name() == mode) {
        return match known {
            Mode::VisionTeacherForced => RGBColor(0x1f, 0x77, 0xb4),  // blue
            Mode::LmTeacherForced => RGBColor(0xe6, 0x7e, 0x00),      // orange
            Mode::RoutingTeacherForced => RGBColor(0xb8, 0x86, 0x0b), // dark goldenrod
            Mode::FromPixelValues => RGBColor(0x2c, 0xa0, 0x2c),      // green
            Mode::FromImageFiles => RGBColor(0x94, 0x67, 0xbd),       // purple
            Mode::DecodeTeacherForced => RGBColor(0xe3, 0x77, 0xc2),  // pink
            Mode::Generate => RGBColor(0x17, 0x4a, 0x7e),             // dark blue
            Mode::Continue => RGBColor(0x00, 0x80, 0x80),             // teal
            Mode::BatchInvariance => RGBColor(0x6b, 0x8e, 0x23),      // olive
        };
    }
    let h = mode.bytes().fold(0usize, |h, b| h.wrapping_mul(31).wrapping_add(b as usize));
    OTHER[h % OTHER.len()]
}

fn hex(c: RGBColor) -> String {
    format!("#{:02x}{:02x}{:02x}", c.0, c.1, c.2)
}

/// The distinct values of `modes` in order of first appearance.
fn in_order_of_appearance<'a>(modes: impl IntoIterator<Item = &'a str>) -> Vec<&'a str> {
    let mut seen: Vec<&str> = Vec::new();
    for m in modes {
        if !seen.contains(&m) {
            seen.push(m);
        }
    }
    seen
}

/// The modes of `rows` in order of first appearance.
fn modes_in_order(rows: &[Row]) -> Vec<&str> {
    in_order_of_appearance(rows.iter().map(|r| r.mode.as_str()))
}

#[cfg(test)]
mod tests {
    #[test]
    fn every_mode_has_its_own_colour_and_none_is_red() {
        let colours: Vec<RGBColor> = Mode::ALL.iter().map(|m| mode_colour(m.name())).collect();
        for (i, c) in colours.iter().enumerate() {
            let RGBColor(r, g, b) = *c;
            assert!(!(r > 0xc0 && g < 0x40 && b < 0x40), "{} is drawn red, the colour of failure", Mode::ALL[i].name());
            for (j, d) in colours.iter().enumerate().skip(i + 1) {
                assert!(c != d, "{} and {} share a colour", Mode::ALL[i].name(), Mode::ALL[j].name());
            }
        }
    }

    use super::*;
    use crate::report::{self, Heatmap, Status};
    use contract::Stage;

    fn row(mode: &str, tap: &str, status: Status, max_abs: Option<f64>, cosine: Option<f64>) -> Row {
        Row {
            case: "case-a".into(),
            mode: mode.into(),
            tap: tap.into(),
            stage: contract::Tap::parse(tap),
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
            noise_ratio: None,
            k: None,
            detail: (status == Status::Fail).then(|| "max |Δ| 3e-2 > atol".to_string()),
        }
    }

    fn sample_case() -> CaseReport {
        let mut rows = vec![
            Row::skipped("case-a", Mode::FromImageFiles, Stage::InputIds.tap(), "no tokenizer here".into()),
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
    fn the_page_prints_each_metric_and_status_as_the_console_table_does() {
        let case = sample_case();
        let page = render("parity", std::slice::from_ref(&case)).unwrap();
        let console = report::table(&case.rows);
        for r in &case.rows {
            let badge = format!("<span class=\"badge {}\">{}</span>", status_class(r.status), r.status.word());
            assert!(page.contains(&badge), "{} {}: no {badge} on the page", r.mode, r.tap);
            for v in [r.max_abs, r.max_rel].into_iter().flatten() {
                let text = report::sci(Some(v));
                assert!(console.contains(&text), "{} {}: {text} not in the console table", r.mode, r.tap);
                assert!(page.contains(&format!(">{text}<")), "{} {}: {text} not on the page", r.mode, r.tap);
            }
        }
    }

    fn status_class(s: Status) -> String {
        serde_json::to_value(s).unwrap().as_str().unwrap().to_string()
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
        assert!(page.contains("expected &lt;script&gt;alert(1)&lt;&#x2f;script&gt; &amp; more"));
        assert!(page.contains("&lt;b&gt;case&lt;&#x2f;b&gt;"));
        assert!(page.contains("title &lt;i&gt;"));
        assert!(!page.contains("<x>"));
    }

    #[test]
    fn a_case_with_only_skipped_rows_renders_without_plots() {
        let case = CaseReport {
            case: "nothing-here".into(),
            rows: vec![
                Row::skipped(
                    "nothing-here",
                    Mode::FromImageFiles,
                    Stage::VisionPatchEmbed.tap(),
                    "checkpoint absent".into(),
                ),
                Row::skipped(
                    "nothing-here",
                    Mode::FromImageFiles,
                    Stage::LmLogitsLast.tap(),
                    "checkpoint absent".into(),
                ),
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
        case.rows.push(Row::failed("case-a", Mode::FromImageFiles, Stage::LmLayer.at(0), "the run panicked".into()));
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
}
