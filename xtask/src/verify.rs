//! `cargo xtask verify`: replay every case through the Rust implementation and compare each
//! tap with its reference dump; one row per tap, the first failing tap named per case.

use anyhow::{bail, Context, Result};
use contract::Tap;
use parity::manifest::{CaseRef, DumpKey};
use parity::report::{self, CaseReport, Heatmap, Row, Status};
use replay::{Loaded, Mode, Perturbations};
use xshell::Shell;

use crate::cli::ManifestArg;

#[derive(clap::Args, Debug)]
pub struct Args {
    /// Only this case.
    #[arg(long)]
    case: Option<String>,
    /// Only the cases of this model.
    #[arg(long)]
    model: Option<String>,
    #[arg(long, value_enum, default_value_t = Format::Table)]
    format: Format,
    /// Also write a self-contained HTML report (tables, error-growth plots, per-patch heat
    /// maps) and the JSON rows into this folder.
    #[arg(long)]
    report: Option<std::path::PathBuf>,
    /// With --report: render the page in headless Chromium, save `screenshot.png` beside it
    /// and fail if the page comes out blank.
    #[arg(long, requires = "report")]
    screenshot: bool,
    /// The checkpoint folder of the selected model when it lives outside the repository
    /// (overrides the variable the manifest names in `weights_env`).
    #[arg(long)]
    weights: Option<std::path::PathBuf>,
    #[command(flatten)]
    manifest: ManifestArg,
}

#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
enum Format {
    Table,
    Json,
}

pub fn run(sh: &Shell, args: Args) -> Result<()> {
    let manifest = args.manifest.load(sh)?;
    let cases = manifest.select(args.model.as_deref(), args.case.as_deref()).map_err(anyhow::Error::msg)?;
    manifest.check_weights_flag(&cases, args.weights.as_deref()).map_err(anyhow::Error::msg)?;
    let mut rows = Vec::new();
    let mut reports = Vec::new();
    let bar = crate::cli::progress(cases.len() * Mode::ALL.len(), "verifying");
    for &case in &cases {
        let mut report = CaseReport { case: case.name.to_owned(), rows: Vec::new(), heatmaps: Vec::new() };
        // One model per case, shared by its modes.
        let model = replay::load_case(case, args.weights.as_deref());
        if case.case.dumps.is_empty() {
            report.rows.push(uncaptured(case, &model));
        }
        for &mode in Mode::ALL {
            bar.set_message(format!("{case} · {}", mode.name()));
            let (case_rows, heatmaps) = verify_case(case, mode, &model, args.report.is_some());
            report.rows.extend(case_rows);
            report.heatmaps.extend(heatmaps);
            bar.inc(1);
        }
        rows.extend(report.rows.iter().cloned());
        reports.push(report);
    }
    bar.finish_and_clear();
    if let Some(dir) = &args.report {
        write_report(dir, &reports)?;
        if args.screenshot {
            let check = crate::screenshot::screenshot(&dir.join("index.html"), &dir.join("screenshot.png"))?;
            eprintln!("report screenshot {}: {check}", dir.join("screenshot.png").display());
        }
    }
    match args.format {
        Format::Table => print!("{}", report::table(&rows)),
        Format::Json => println!("{}", serde_json::to_string_pretty(&report::json(&rows))?),
    }
    let failed = rows.iter().filter(|r| r.status == Status::Fail).count();
    let passed = rows.iter().filter(|r| r.status == Status::Pass).count();
    let ties = rows.iter().filter(|r| r.status == Status::NearTie).count();
    let skipped = rows.len() - failed - passed - ties;
    // The summary goes to stderr so `--format json` stays parseable.
    for case in &cases {
        for &mode in Mode::ALL {
            let group: Vec<Row> =
                rows.iter().filter(|r| r.case == case.name && r.mode == mode.name()).cloned().collect();
            if let Some(first) = report::first_failure(&group) {
                let upstream: Vec<&str> =
                    group.iter().take_while(|r| r.status != Status::Fail).map(|r| r.tap.as_str()).collect();
                eprintln!(
                    "\nFIRST FAILING TAP in case {case} ({}): {} — upstream taps that pass: {}\n{}",
                    mode.name(),
                    first.tap,
                    if upstream.is_empty() { "none".into() } else { upstream.join(", ") },
                    first.detail.as_deref().unwrap_or("")
                );
            }
        }
    }
    for r in rows.iter().filter(|r| r.status == Status::NearTie) {
        eprintln!("\nNEAR TIE in case {} ({}): {}\n{}", r.case, r.mode, r.tap, r.detail.as_deref().unwrap_or(""));
    }
    let ties = if ties > 0 { format!(", {ties} near ties (neither passed nor failed)") } else { String::new() };
    eprintln!("\n{passed} passed, {failed} failed{ties}, {skipped} skipped");
    if let Some(peak) = crate::cli::peak_rss_bytes() {
        eprintln!("peak resident memory of this process: {:.2} GB", peak as f64 / 1e9);
    }
    if failed > 0 {
        bail!("{failed} check(s) failed");
    }
    Ok(())
}

/// Writes `index.html` and `report.json` into `dir`.
fn write_report(dir: &std::path::Path, reports: &[CaseReport]) -> Result<()> {
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let html = parity::html::render("neuron parity report", reports)
        .map_err(|e| anyhow::anyhow!("rendering the report: {e}"))?;
    std::fs::write(dir.join("index.html"), html)?;
    std::fs::write(dir.join("report.json"), serde_json::to_string_pretty(reports)?)?;
    eprintln!("report written to {}", dir.join("index.html").display());
    Ok(())
}

/// The row of a case that has no dumps yet: skipped without the checkpoint, failed with it
/// (there is nothing to compare until it is captured).
fn uncaptured(case: CaseRef, model: &Loaded) -> Row {
    match model {
        Loaded::Skip(why) => Row::uncaptured(case.name, Status::Skip, why.clone()),
        Loaded::Fail(why) => Row::uncaptured(case.name, Status::Fail, why.clone()),
        Loaded::Model { .. } => Row::uncaptured(
            case.name,
            Status::Fail,
            format!("case {case} has no recorded dumps: run `cargo xtask capture --case {case}` (with --weights DIR)"),
        ),
    }
}

fn verify_case(case: CaseRef, mode: Mode, model: &Loaded, with_heatmaps: bool) -> (Vec<Row>, Vec<Heatmap>) {
    let taps = case.checks(mode);
    let every = |f: &dyn Fn(DumpKey) -> Row| (taps.iter().map(|&t| f(t)).collect(), Vec::new());
    let (setup, model) = match model {
        Loaded::Model { setup, model } => (setup, model),
        Loaded::Skip(why) => return every(&|t| Row::skipped(case.name, mode, t, why.clone())),
        Loaded::Fail(why) => return every(&|t| Row::failed(case.name, mode, t, why.clone())),
    };
    if taps.is_empty() {
        return (Vec::new(), Vec::new());
    }
    let run = match replay::run_with(setup, mode, model, &Perturbations::default()) {
        Ok(run) => run,
        Err(e) => {
            let why = format!("the {} run failed: {e:#}", mode.name());
            return every(&|t| Row::failed(case.name, mode, t, why.clone()));
        }
    };
    for note in &run.notes {
        eprintln!("case {case} ({}): {note}", mode.name());
    }
    let rows = taps
        .iter()
        .map(|&tap| match run.check(case, tap) {
            Ok(r) if r.near_tie() => {
                Row::compared(case.name, mode, tap, &r.comparison, r.location.clone(), r.message())
                    .near_tie(r.message())
            }
            Ok(r) => Row::compared(case.name, mode, tap, &r.comparison, r.location.clone(), r.message()),
            Err(e) => Row::failed(case.name, mode, tap, format!("{e:#}")),
        })
        .collect();
    // A batch's or a part's taps are not laid out on one prompt's image grids.
    let heatmaps = if with_heatmaps && run.padding.is_empty() {
        taps.iter().filter(|k| k.part.is_none()).flat_map(|k| heatmaps(case, &run, k.tap)).collect()
    } else {
        Vec::new()
    };
    (rows, heatmaps)
}

/// The per-image error maps of an image tap the case recorded whole (a tap cut to one row
/// has no grid to draw); none for other taps, or when the dump cannot be read.
fn heatmaps(case: CaseRef, run: &replay::Run, tap: Tap) -> Vec<Heatmap> {
    let (Some(actual), true, None) = (run.taps.get(&tap.into()), tap.layout().on_image_grid(), case.row_pick(tap))
    else {
        return Vec::new();
    };
    match replay::reference(case, tap) {
        Ok(expected) => run.locator().heatmaps(run.mode.name(), tap, &expected, actual),
        Err(_) => Vec::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use parity::manifest::Manifest;

    /// Runs `cargo xtask verify --manifest <broken>` in-process and returns its error.
    fn verify_error(name: &str, text: &str) -> String {
        let dir = std::env::temp_dir().join(format!("neuron-verify-{}-{name}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("fixtures.toml");
        std::fs::write(&path, text).unwrap();
        let sh = Shell::new().unwrap();
        let args = Args {
            case: None,
            model: None,
            format: Format::Json,
            report: None,
            screenshot: false,
            weights: None,
            manifest: ManifestArg { manifest: path.clone() },
        };
        let result = run(&sh, args);
        std::fs::remove_dir_all(&dir).unwrap();
        match result {
            Ok(()) => panic!("{name}: a broken manifest verified"),
            Err(e) => format!("{e:#}"),
        }
    }

    fn shipped() -> String {
        std::fs::read_to_string(crate::cli::project_root().join("fixtures.toml")).unwrap()
    }

    #[test]
    fn broken_manifests_are_errors_naming_the_line_never_panics() {
        let good = shipped();
        let cases = [
            ("unknown-key", good.replacen("prompt = ", "promt = \"x\"\nprompt = ", 1), "promt"),
            ("unknown-tap", good.replacen("\"lm.norm\" = {", "\"lm.nrom\" = {", 1), "unknown tap \"lm.nrom\""),
            (
                "duplicate-case",
                format!("{good}\n[cases.chelsea]\nmodel = \"tiny-qwen3.6-27b\"\nprompt = \"again\"\n"),
                "duplicate",
            ),
            ("path-leaves-repo", good.replacen("fixtures/images/chelsea.png", "../../etc/passwd", 1), "stay inside"),
            ("negative-tolerance", good.replacen("atol = 1e-4", "atol = -1e-4", 1), "finite number >= 0"),
            ("nan-tolerance", good.replacen("rtol = 1e-4", "rtol = nan", 1), "finite number >= 0"),
            ("not-toml", "[cases\nthis is not toml".to_string(), "line"),
        ];
        for (name, text, expected) in cases {
            assert_ne!(text, good, "{name}: the edit did not apply");
            let err = verify_error(name, &text);
            assert!(err.contains(expected), "{name}: the error does not say {expected:?}:\n{err}");
            assert!(err.contains("line"), "{name}: the error does not name the line:\n{err}");
        }
    }

    #[test]
    fn a_missing_manifest_names_the_flag_that_points_elsewhere() {
        let sh = Shell::new().unwrap();
        let path = std::env::temp_dir().join("neuron-no-such-manifest.toml");
        let args = Args {
            case: None,
            model: None,
            format: Format::Table,
            report: None,
            screenshot: false,
            weights: None,
            manifest: ManifestArg { manifest: path },
        };
        let err = format!("{:#}", run(&sh, args).unwrap_err());
        assert!(err.contains("--manifest"), "{err}");
    }

    #[test]
    fn an_external_checkpoint_nobody_named_is_skipped_with_the_flag_and_variable() {
        let m = Manifest::load(&crate::cli::project_root().join("fixtures.toml")).unwrap();
        let case = m.case("standin-astronaut").unwrap();
        let var = case.model().weights_env.clone().unwrap();
        if std::env::var_os(&var).is_some() {
            eprintln!("skipped: {var} is set, so the stand-in is named and will be verified instead");
            return;
        }
        let loaded = replay::load_case(case, None);
        let Loaded::Skip(why) = &loaded else { panic!("the stand-in case should be skipped without its checkpoint") };
        assert!(why.contains("--weights DIR") && why.contains(&var), "{why}");
        let (rows, _) = verify_case(case, Mode::FromImageFiles, &loaded, false);
        assert!(!rows.is_empty() && rows.iter().all(|r| r.status == Status::Skip), "every row of the case is a skip");
    }

    #[test]
    fn weights_given_for_a_selection_without_one_external_model_is_refused() {
        let m = Manifest::load(&crate::cli::project_root().join("fixtures.toml")).unwrap();
        let dir = std::path::Path::new("/somewhere");
        let all: Vec<CaseRef> = m.case_refs().collect();
        let err = m.check_weights_flag(&all, Some(dir)).unwrap_err();
        assert!(err.contains("ambiguous") && err.contains("qwen3.6-27b-standin"), "{err}");
        let err = m.check_weights_flag(&[m.case("chelsea").unwrap()], Some(dir)).unwrap_err();
        assert!(err.contains("none of the selected cases"), "{err}");
        m.check_weights_flag(&[m.case("standin-astronaut").unwrap()], Some(dir)).unwrap();
    }
}
