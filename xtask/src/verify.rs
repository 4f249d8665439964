//! `cargo xtask verify`: replay every case through the Rust implementation and compare each
//! tap with its reference dump; one row per tap, the first failing tap named per case.

use anyhow::{bail, Context, Result};
use neuron::model::Model;
use neuron::replay::{self, CaseInputs, Mode, Perturbations};
use parity::manifest::{Manifest, Weights};
use parity::report::{self, CaseReport, Heatmap, Row, Status};
use parity::taps::Tap;
use xshell::Shell;

use crate::ManifestArg;

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
    let cases = crate::select_cases(&manifest, args.model.as_deref(), args.case.as_deref())?;
    crate::check_weights_flag(&manifest, &cases, args.weights.as_deref())?;
    let mut rows = Vec::new();
    let mut reports = Vec::new();
    let bar = crate::progress(cases.len() * Mode::ALL.len(), "verifying");
    for case in &cases {
        let mut report = CaseReport { case: case.clone(), rows: Vec::new(), heatmaps: Vec::new() };
        // One model per case, shared by its modes.
        let model = load(&manifest, case, args.weights.as_deref());
        if manifest.cases[case].dumps.is_empty() {
            report.rows.push(uncaptured(case, &model));
        }
        for &mode in Mode::ALL {
            bar.set_message(format!("{case} · {}", mode.name()));
            let (case_rows, heatmaps) =
                verify_case(&manifest, case, mode, &model, args.weights.as_deref(), args.report.is_some());
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
    let skipped = rows.len() - failed - passed;
    // The summary goes to stderr so `--format json` stays parseable.
    for case in &cases {
        for &mode in Mode::ALL {
            let group: Vec<Row> = rows.iter().filter(|r| &r.case == case && r.mode == mode.name()).cloned().collect();
            if let Some(first) = report::first_failure(&group) {
                let upstream: Vec<&str> =
                    group.iter().take_while(|r| r.status == Status::Pass).map(|r| r.tap.as_str()).collect();
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
    eprintln!("\n{passed} passed, {failed} failed, {skipped} skipped");
    if let Some(peak) = crate::peak_rss_bytes() {
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

/// The model of a case's checkpoint, or why it cannot run here.
pub(crate) enum Loaded {
    Model(Box<Model>),
    Skip(String),
    Fail(String),
}

pub(crate) fn load(manifest: &Manifest, case: &str, weights: Option<&std::path::Path>) -> Loaded {
    match manifest.weights(&manifest.cases[case].model, weights) {
        Ok(Weights::Found(dir)) if !dir.join("config.json").is_file() => {
            return Loaded::Skip(format!("checkpoint not on this machine: {} has no config.json", dir.display()));
        }
        Ok(Weights::Found(_)) => {}
        Ok(Weights::Absent(why)) => return Loaded::Skip(why),
        Err(e) => return Loaded::Fail(e),
    }
    match CaseInputs::with_weights(manifest, case, weights).and_then(|inputs| replay::load_model(&inputs)) {
        Ok(m) => Loaded::Model(Box::new(m)),
        Err(e) => Loaded::Fail(format!("loading the model failed: {e:#}")),
    }
}

/// The row of a case that has no dumps yet: skipped without the checkpoint, failed with it
/// (there is nothing to compare until it is captured).
fn uncaptured(case: &str, model: &Loaded) -> Row {
    match model {
        Loaded::Skip(why) => Row::skipped(case, "-", "(not captured)", why.clone()),
        Loaded::Fail(why) => Row::failed(case, "-", "(not captured)", why.clone()),
        Loaded::Model(_) => Row::failed(
            case,
            "-",
            "(not captured)",
            format!("case {case} has no recorded dumps: run `cargo xtask capture --case {case}` (with --weights DIR)"),
        ),
    }
}

fn verify_case(
    manifest: &Manifest,
    case: &str,
    mode: Mode,
    model: &Loaded,
    weights: Option<&std::path::Path>,
    with_heatmaps: bool,
) -> (Vec<Row>, Vec<Heatmap>) {
    let taps = replay::taps_checked(manifest, case, mode);
    if taps.is_empty() {
        return (Vec::new(), Vec::new());
    }
    let model = match model {
        Loaded::Model(m) => m,
        Loaded::Skip(why) => {
            return (taps.iter().map(|t| Row::skipped(case, mode.name(), t, why.clone())).collect(), Vec::new());
        }
        Loaded::Fail(why) => {
            return (taps.iter().map(|t| Row::failed(case, mode.name(), t, why.clone())).collect(), Vec::new());
        }
    };
    let inputs = match CaseInputs::with_weights(manifest, case, weights) {
        Ok(inputs) => inputs,
        Err(e) => {
            return (taps.iter().map(|t| Row::failed(case, mode.name(), t, format!("{e:#}"))).collect(), Vec::new())
        }
    };
    let run = match replay::run_with(manifest, &inputs, mode, model, &Perturbations::default()) {
        Ok(run) => run,
        Err(e) => {
            let why = format!("the {} run failed: {e:#}", mode.name());
            return (taps.iter().map(|t| Row::failed(case, mode.name(), t, why.clone())).collect(), Vec::new());
        }
    };
    let rows = taps
        .iter()
        .map(|tap| match run.check(manifest, case, tap) {
            Ok(r) => Row::compared(case, mode.name(), tap, &r.comparison, r.location.clone(), r.message()),
            Err(e) => Row::failed(case, mode.name(), tap, format!("{e:#}")),
        })
        .collect();
    let heatmaps = if with_heatmaps {
        taps.iter().flat_map(|tap| heatmaps(manifest, case, &run, tap)).collect()
    } else {
        Vec::new()
    };
    (rows, heatmaps)
}

/// The per-image error maps of an image tap the case recorded whole (a tap cut to one row
/// has no grid to draw); none for other taps, or when the dump cannot be read.
fn heatmaps(manifest: &Manifest, case: &str, run: &replay::Run, tap: &str) -> Vec<Heatmap> {
    let Some(parsed) = Tap::parse(tap) else { return Vec::new() };
    let (Some(actual), true, None) =
        (run.taps.get(tap), parsed.layout().on_image_grid(), manifest.row_pick(case, parsed))
    else {
        return Vec::new();
    };
    match replay::reference(manifest, case, tap) {
        Ok(expected) => run.locator().heatmaps(run.mode.name(), parsed, &expected, actual),
        Err(_) => Vec::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
        std::fs::read_to_string(crate::project_root().join("fixtures.toml")).unwrap()
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
        let m = Manifest::load(&crate::project_root().join("fixtures.toml")).unwrap();
        let model = &m.cases["standin-astronaut"].model;
        let var = m.models[model].weights_env.clone().unwrap();
        if std::env::var_os(&var).is_some() {
            eprintln!("skipped: {var} is set, so the stand-in is named and will be verified instead");
            return;
        }
        let loaded = load(&m, "standin-astronaut", None);
        let Loaded::Skip(why) = &loaded else { panic!("the stand-in case should be skipped without its checkpoint") };
        assert!(why.contains("--weights DIR") && why.contains(&var), "{why}");
        let (rows, _) = verify_case(&m, "standin-astronaut", Mode::FromImageFiles, &loaded, None, false);
        assert!(!rows.is_empty() && rows.iter().all(|r| r.status == Status::Skip), "every row of the case is a skip");
    }

    #[test]
    fn weights_given_for_a_selection_without_one_external_model_is_refused() {
        let m = Manifest::load(&crate::project_root().join("fixtures.toml")).unwrap();
        let dir = std::path::Path::new("/somewhere");
        let all: Vec<String> = m.cases.keys().cloned().collect();
        let err = crate::check_weights_flag(&m, &all, Some(dir)).unwrap_err().to_string();
        assert!(err.contains("ambiguous") && err.contains("qwen3.6-27b-standin"), "{err}");
        let err = crate::check_weights_flag(&m, &["chelsea".to_string()], Some(dir)).unwrap_err().to_string();
        assert!(err.contains("none of the selected cases"), "{err}");
        crate::check_weights_flag(&m, &["standin-astronaut".to_string()], Some(dir)).unwrap();
    }
}
