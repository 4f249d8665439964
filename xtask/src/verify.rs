//! `cargo xtask verify`: replay every case through the Rust implementation and compare each
//! tap with its reference dump; one row per tap, the first failing tap named per case.

use anyhow::{bail, Result};
use neuron::replay::{self, Mode};
use parity::manifest::Manifest;
use parity::report::{self, Row, Status};
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
    let mut rows = Vec::new();
    for case in &cases {
        for &mode in Mode::ALL {
            rows.extend(verify_case(&manifest, case, mode));
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
            let group: Vec<Row> =
                rows.iter().filter(|r| &r.case == case && r.mode == mode.name()).cloned().collect();
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
    if failed > 0 {
        bail!("{failed} tap(s) outside tolerance");
    }
    Ok(())
}

fn verify_case(manifest: &Manifest, case: &str, mode: Mode) -> Vec<Row> {
    let taps = replay::taps_checked(manifest, case, mode);
    if taps.is_empty() {
        return Vec::new();
    }
    let model = &manifest.models[&manifest.cases[case].model];
    let model_dir = manifest.root.join(&model.path);
    if !model_dir.join("config.json").is_file() {
        let why = format!("checkpoint not on this machine: {} has no config.json", model_dir.display());
        return taps.iter().map(|t| Row::skipped(case, mode.name(), t, why.clone())).collect();
    }
    let run = match replay::run(manifest, case, mode) {
        Ok(run) => run,
        Err(e) => {
            let why = format!("the {} run failed: {e:#}", mode.name());
            return taps.iter().map(|t| Row::failed(case, mode.name(), t, why.clone())).collect();
        }
    };
    taps.iter()
        .map(|tap| match run.check(manifest, case, tap) {
            Ok(r) => Row::compared(case, mode.name(), tap, &r.comparison, r.location.clone(), r.message()),
            Err(e) => Row::failed(case, mode.name(), tap, format!("{e:#}")),
        })
        .collect()
}
