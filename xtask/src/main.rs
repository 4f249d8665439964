//! `cargo xtask`: the workspace's commands (capture, check, make-model, verify, status,
//! mutants, faults, standin, bench, calibrate, host).
//!
//! A plain binary in the rust-analyzer style: one small clap enum, one module per command,
//! one `xshell::Shell` rooted at the project root. This file only dispatches; what commands
//! share (the `--manifest` flag, progress bars, the project root) is in [`cli`].

mod bench;
mod calibrate;
mod capture;
mod check;
mod cli;
mod faults;
mod gemms;
mod harness;
mod host;
mod make_model;
mod manifest_edit;
mod mutants;
mod screenshot;
mod standin;
mod status;
#[cfg(test)]
mod tidy;
mod verify;

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
    /// Seed named faults into a copy of the model's source, one at a time; each must fail
    /// verification at the tap where it enters.
    Faults(faults::Args),
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
    let args = Cli::parse();
    let result = (|| -> Result<()> {
        let sh = Shell::new()?;
        sh.change_dir(cli::project_root());
        match args.command {
            Command::MakeModel(args) => make_model::run(&sh, args),
            Command::Capture(args) => capture::run(&sh, args),
            Command::Check(args) => check::run(&sh, args),
            Command::Verify(args) => verify::run(&sh, args),
            Command::Status(args) => status::run(&sh, args),
            Command::Mutants(args) => mutants::run(&sh, args),
            Command::Faults(args) => faults::run(&sh, args),
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
