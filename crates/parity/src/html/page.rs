//! The page: the template environment, and what the page shows of the run and of each case
//! (counts, the first failing tap of each mode) around its plots, heat maps and table.

use minijinja::syntax::SyntaxConfig;
use minijinja::value::Serde;
use minijinja::{Environment, UndefinedBehavior, Value};
use serde::Serialize;

use super::{heatmap, hex, mode_colour, modes_in_order, plots, table, RenderError};
use crate::report::{self, CaseReport, Row, Status};

/// Every template, by the name the others include or import it by. The `.html` names are
/// auto-escaped; the style sheet holds no variables.
const TEMPLATES: [(&str, &str); 8] = [
    ("page.html", include_str!("../../templates/page.html")),
    ("report.css", include_str!("../../templates/report.css")),
    ("macros.html", include_str!("../../templates/macros.html")),
    ("case.html", include_str!("../../templates/case.html")),
    ("plots.html", include_str!("../../templates/plots.html")),
    ("heatmaps.html", include_str!("../../templates/heatmaps.html")),
    ("heatmap.html", include_str!("../../templates/heatmap.html")),
    ("table.html", include_str!("../../templates/table.html")),
];

pub(super) fn render(title: &str, cases: &[CaseReport]) -> Result<String, RenderError> {
    let page = Page::new(title, cases)?;
    let env = environment().map_err(template_error)?;
    let template = env.get_template("page.html").map_err(template_error)?;
    template.render(Value::from(Serde(&page))).map_err(template_error)
}

fn template_error(e: minijinja::Error) -> RenderError {
    RenderError { what: "the page from its templates".into(), message: format!("{e:#}") }
}

/// The templates, and the filters, tests and functions they use. Numbers are formatted here,
/// not in the templates, so that the page prints them exactly as the console table does.
fn environment() -> Result<Environment<'static>, minijinja::Error> {
    let mut env = Environment::new();
    // Block tags on lines of their own leave no blank lines behind.
    env.set_syntax(SyntaxConfig::builder().trim_blocks(true).lstrip_blocks(true).keep_trailing_newline(true).build()?);
    // A misspelt field is an error, not an empty cell.
    env.set_undefined_behavior(UndefinedBehavior::Strict);
    for (name, source) in TEMPLATES {
        env.add_template(name, source)?;
    }
    env.add_filter("sci", report::sci);
    env.add_filter("status_word", |status: Serde<Status>| status.0.word());
    env.add_filter("exp", exp);
    env.add_filter("fixed", |v: f64, digits: usize| format!("{v:.digits$}"));
    env.add_filter("first_line", first_line);
    env.add_test("finite", |v: f64| v.is_finite());
    env.add_function("mode_colour", |mode: &str| hex(mode_colour(mode)));
    Ok(env)
}

/// A tolerance as the manifest writes it (`1e-4`), an exact 0 as `0`, `–` when there is none.
fn exp(v: Option<f64>) -> String {
    match v {
        None => "–".into(),
        Some(0.0) => "0".into(),
        Some(x) => format!("{x:e}"),
    }
}

/// The first line of `s`, cut at `max_chars`; an ellipsis says when there is more.
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

#[derive(Serialize)]
struct Page<'a> {
    title: &'a str,
    /// Every tap of every case.
    taps: usize,
    total: Counts,
    /// Cases with at least one failing tap.
    failing_cases: usize,
    cases: Vec<Case<'a>>,
}

impl<'a> Page<'a> {
    fn new(title: &'a str, cases: &'a [CaseReport]) -> Result<Page<'a>, RenderError> {
        let rows = || cases.iter().flat_map(|c| &c.rows);
        Ok(Page {
            title,
            taps: rows().count(),
            total: Counts::of(rows()),
            failing_cases: cases.iter().filter(|c| c.rows.iter().any(|r| r.status == Status::Fail)).count(),
            cases: cases.iter().enumerate().map(|(n, case)| Case::new(n, case)).collect::<Result<_, _>>()?,
        })
    }
}

#[derive(Serialize)]
struct Case<'a> {
    /// Its place in the report: the anchor the index links to.
    n: usize,
    name: &'a str,
    taps: usize,
    counts: Counts,
    first_failures: Vec<FirstFailure<'a>>,
    plots: plots::Plots,
    heatmaps: heatmap::Heatmaps<'a>,
    rows: Vec<table::TapRow<'a>>,
}

impl<'a> Case<'a> {
    fn new(n: usize, case: &'a CaseReport) -> Result<Case<'a>, RenderError> {
        Ok(Case {
            n,
            name: &case.case,
            taps: case.rows.len(),
            counts: Counts::of(&case.rows),
            first_failures: first_failures(&case.rows).into_iter().map(FirstFailure::new).collect(),
            plots: plots::plots(n, case)?,
            heatmaps: heatmap::heatmaps(n, case),
            rows: table::rows(&case.rows),
        })
    }
}

#[derive(Serialize)]
struct Counts {
    pass: usize,
    fail: usize,
    skip: usize,
    tie: usize,
}

impl Counts {
    fn of<'a>(rows: impl IntoIterator<Item = &'a Row>) -> Counts {
        let mut c = Counts { pass: 0, fail: 0, skip: 0, tie: 0 };
        for r in rows {
            *match r.status {
                Status::Pass => &mut c.pass,
                Status::Fail => &mut c.fail,
                Status::Skip => &mut c.skip,
                Status::NearTie => &mut c.tie,
            } += 1;
        }
        c
    }
}

/// The first failing row of each mode, modes in order of appearance.
fn first_failures(rows: &[Row]) -> Vec<&Row> {
    modes_in_order(rows)
        .into_iter()
        .filter_map(|m| rows.iter().find(|r| r.mode == m && r.status == Status::Fail))
        .collect()
}

/// Where the fault entered a mode, and by how much.
#[derive(Serialize)]
struct FirstFailure<'a> {
    mode: &'a str,
    tap: &'a str,
    max_abs: Option<f64>,
    /// None when no element was compared.
    mismatched_pct: Option<f64>,
    /// Why it failed, when there is no number to say it (the run failed, the tap is missing).
    detail: Option<&'a str>,
}

impl<'a> FirstFailure<'a> {
    fn new(r: &'a Row) -> FirstFailure<'a> {
        let mismatched_pct = (r.total > 0).then_some(r.mismatched_pct);
        FirstFailure {
            mode: &r.mode,
            tap: &r.tap,
            max_abs: r.max_abs,
            mismatched_pct,
            detail: r.detail.as_deref().filter(|_| r.max_abs.is_none() && mismatched_pct.is_none()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn first_line_cuts_long_lines_and_marks_what_it_leaves_out() {
        let cases = [
            ("short", 10, "short"),
            ("exactly ten", 11, "exactly ten"),
            ("a line that goes on", 6, "a line…"),
            ("one\ntwo", 10, "one …"),
            ("", 5, ""),
        ];
        for (s, max, want) in cases {
            assert_eq!(first_line(s, max), want, "first_line({s:?}, {max})");
        }
    }

    #[test]
    fn tolerances_print_as_the_manifest_writes_them() {
        for (v, want) in [(None, "–"), (Some(0.0), "0"), (Some(1e-4), "1e-4"), (Some(2.5e-3), "2.5e-3")] {
            assert_eq!(exp(v), want, "exp({v:?})");
        }
    }

    #[test]
    fn every_template_parses_and_a_misspelt_field_is_an_error() {
        let mut env = environment().unwrap();
        for (name, _) in TEMPLATES {
            env.get_template(name).unwrap_or_else(|e| panic!("{name}: {e:#}"));
        }
        env.add_template("misspelt.html", "{{ case.nmae }}").unwrap();
        let counts = Value::from(Serde(Counts { pass: 1, fail: 0, skip: 0, tie: 0 }));
        let rendered = env.get_template("misspelt.html").unwrap().render(minijinja::context! { case => counts });
        assert!(rendered.is_err(), "rendered {rendered:?}");
    }
}
