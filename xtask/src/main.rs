//! `cargo xtask`: the workspace's commands (capture, check, make-model, verify, status,
//! mutants, standin, bench, calibrate).
//!
//! A plain binary in the rust-analyzer style: one small clap enum, one module per command,
//! one `xshell::Shell` rooted at the project root.

mod bench;
mod calibrate;
mod capture;
mod check;
mod gemms;
mod harness;
mod host;
mod make_model;
mod manifest_edit;
mod mutants;
mod screenshot;
mod standin;
mod status;
mod verify;

use std::path::{Path, PathBuf};

use anyhow::Result;
use clap::{Parser, Subcommand};
use xshell::Shell;

#[derive(Parser)]
#[command(name = "cargo xtask", about = "neuron parity workspace commands")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Regenerate the iteration model from its fixed seed and record its digests.
    MakeModel(make_model::Args),
    /// Run the Python reference (transformers, through uv) and record the dumps.
    Capture(capture::Args),
    /// Check every recorded file against its digest; list unreferenced dumps.
    Check(check::Args),
    /// Replay every case through the Rust implementation and compare tap by tap.
    Verify(verify::Args),
    /// Which cases are captured, stale, missing or failing (like `dvc status`).
    Status(status::Args),
    /// Run cargo-mutants over the model code with the numerical tests; summarise the score.
    Mutants(mutants::Args),
    /// Write the full-width Qwen3.6-27B stand-in outside the repository, capture and verify
    /// its case streamed, and check each side's peak memory.
    Standin(standin::Args),
    /// Time the Rust model against transformers on the stand-in (vision tower, text
    /// prefill, whole forward pass; medians, ratios, peak memory).
    Bench(bench::Args),
    /// For the bf16 cases: the reference's own bf16-vs-f32 noise per tap, Rust's deviation
    /// and their ratio; proposes `tap_k` lines for taps beyond their k.
    Calibrate(calibrate::Args),
    /// This machine's CPU, its measured clock and vector rates, and the theoretical f32 and
    /// bf16 peaks that `bench` divides GEMM rates by (a few seconds).
    Host(host::Args),
}

/// mimalloc, as the examples use (see crates/neuron/examples/bench.rs): verify runs the model
/// here, and glibc's malloc would fault in fresh pages for every activation.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// `mi_option_purge_delay` of mimalloc.h (v2 and v3), which libmimalloc-sys does not name.
const MI_OPTION_PURGE_DELAY: libmimalloc_sys::mi_option_t = 15;

fn main() {
    // As the examples do (crates/neuron/examples/bench.rs): keep freed pages rather than fault
    // them in again. SAFETY: sets an option of this binary's allocator before threads start.
    unsafe { libmimalloc_sys::mi_option_set(MI_OPTION_PURGE_DELAY, -1) };
    let cli = Cli::parse();
    let result = (|| -> Result<()> {
        let sh = Shell::new()?;
        sh.change_dir(project_root());
        match cli.command {
            Command::MakeModel(args) => make_model::run(&sh, args),
            Command::Capture(args) => capture::run(&sh, args),
            Command::Check(args) => check::run(&sh, args),
            Command::Verify(args) => verify::run(&sh, args),
            Command::Status(args) => status::run(&sh, args),
            Command::Mutants(args) => mutants::run(&sh, args),
            Command::Standin(args) => standin::run(&sh, args),
            Command::Bench(args) => bench::run(&sh, args),
            Command::Calibrate(args) => calibrate::run(&sh, args),
            Command::Host(args) => host::run(args),
        }
    })();
    if let Err(e) = result {
        eprintln!("error: {e:#}");
        std::process::exit(1);
    }
}

/// The workspace root (the folder holding `fixtures.toml`).
fn project_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("xtask lives in the workspace root").to_owned()
}

/// `--manifest PATH`, resolved against the project root.
#[derive(clap::Args, Debug, Clone)]
struct ManifestArg {
    /// The manifest to read (and, for capture and make-model, update in place).
    #[arg(long, default_value = "fixtures.toml")]
    manifest: PathBuf,
}

impl ManifestArg {
    fn path(&self, sh: &Shell) -> PathBuf {
        sh.current_dir().join(&self.manifest)
    }

    fn load(&self, sh: &Shell) -> Result<parity::manifest::Manifest> {
        Ok(parity::manifest::Manifest::load(&self.path(sh))?)
    }
}

/// The cases chosen by `--model` / `--case` (all when neither is given).
fn select_cases(manifest: &parity::manifest::Manifest, model: Option<&str>, case: Option<&str>) -> Result<Vec<String>> {
    use anyhow::ensure;
    if let Some(m) = model {
        ensure!(
            manifest.models.contains_key(m),
            "no model \"{m}\" in the manifest; known models: {}",
            manifest.models.keys().cloned().collect::<Vec<_>>().join(", ")
        );
    }
    if let Some(c) = case {
        ensure!(
            manifest.cases.contains_key(c),
            "no case \"{c}\" in the manifest; known cases: {}",
            manifest.cases.keys().cloned().collect::<Vec<_>>().join(", ")
        );
    }
    let cases: Vec<String> = manifest
        .cases
        .iter()
        .filter(|(name, c)| case.is_none_or(|want| want == name.as_str()) && model.is_none_or(|m| m == c.model))
        .map(|(name, _)| name.clone())
        .collect();
    ensure!(!cases.is_empty(), "no case matches --model {model:?} --case {case:?}");
    Ok(cases)
}

/// A progress bar on stderr for long loops; hidden in CI and when stderr is not a terminal,
/// so logs stay clean.
fn progress(len: usize, what: &str) -> indicatif::ProgressBar {
    if std::env::var_os("CI").is_some() {
        return indicatif::ProgressBar::hidden();
    }
    let bar = indicatif::ProgressBar::new(len as u64);
    bar.set_style(
        indicatif::ProgressStyle::with_template(&format!("{what} {{bar:30}} {{pos}}/{{len}} {{msg}}"))
            .expect("a valid template"),
    );
    bar
}

/// `--weights DIR` names one checkpoint: refuse it when the selected cases use several
/// external models, or none (it would be silently ignored).
fn check_weights_flag(manifest: &parity::manifest::Manifest, cases: &[String], weights: Option<&Path>) -> Result<()> {
    let Some(dir) = weights else { return Ok(()) };
    let mut external: Vec<&str> =
        cases.iter().map(|c| manifest.cases[c].model.as_str()).filter(|m| manifest.models[*m].is_external()).collect();
    external.sort();
    external.dedup();
    match external.len() {
        1 => Ok(()),
        0 => anyhow::bail!(
            "--weights {} given, but none of the selected cases uses a checkpoint outside the repository",
            dir.display()
        ),
        _ => anyhow::bail!(
            "--weights {} is ambiguous: the selected cases use the external models {}; choose one with --model",
            dir.display(),
            external.join(", ")
        ),
    }
}

/// Peak resident memory of this process (`VmHWM`), on Linux.
fn peak_rss_bytes() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024)
}
