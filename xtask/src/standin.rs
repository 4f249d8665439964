//! `cargo xtask standin`: prove the 27B path where the real weights are not reachable.
//!
//! Writes the full-width stand-in (Qwen3.6-27B's configuration with 4 decoder layers and 4
//! vision blocks, the real vocabulary, sharded with an index and `mtp.*` tensors; with
//! `--kind moe` Qwen3.6-35B-A3B's, its 256 experts per layer in the published fused layout) to a
//! folder outside the repository, captures its case with the streamed Python reference,
//! verifies it with the streamed Rust model, and checks that each side's peak resident
//! memory stays within a quarter of the stand-in's float32 size. Each step runs as its own
//! process under `/usr/bin/time -v`, whose "Maximum resident set size" is the measurement.

use std::path::{Path, PathBuf};

use anyhow::{bail, ensure, Context, Result};
use serde::Deserialize;
use xshell::{cmd, Shell};

use crate::harness;

/// Which release the stand-in has the configuration of.
#[derive(clap::ValueEnum, Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Kind {
    /// Qwen3.6-27B (`qwen3_5`): manifest model `qwen3.6-27b-standin`.
    #[default]
    Dense,
    /// Qwen3.6-35B-A3B (`qwen3_5_moe`): manifest model `qwen3.6-35b-a3b-standin`.
    Moe,
}

impl Kind {
    /// The manifest's model entry of this stand-in.
    pub fn model(self) -> &'static str {
        match self {
            Kind::Dense => "qwen3.6-27b-standin",
            Kind::Moe => "qwen3.6-35b-a3b-standin",
        }
    }

    /// The variable that names its folder (the model entry's `weights_env`).
    pub fn env(self) -> &'static str {
        match self {
            Kind::Dense => "NEURON_QWEN3_6_27B_STANDIN_DIR",
            Kind::Moe => "NEURON_QWEN3_6_35B_A3B_STANDIN_DIR",
        }
    }

    /// Its folder under the temporary directory when neither `--dir` nor the variable names one.
    fn default_dir(self) -> &'static str {
        match self {
            Kind::Dense => "neuron-qwen3.6-27b-standin",
            Kind::Moe => "neuron-qwen3.6-35b-a3b-standin",
        }
    }

    /// `script/make_standin.py`'s `--kind`.
    fn name(self) -> &'static str {
        match self {
            Kind::Dense => "dense",
            Kind::Moe => "moe",
        }
    }
}

#[derive(clap::Args, Debug)]
pub struct Args {
    /// Which stand-in: Qwen3.6-27B's configuration (dense) or Qwen3.6-35B-A3B's (moe).
    #[arg(long, value_enum, default_value_t = Kind::Dense)]
    kind: Kind,
    /// Where the stand-in lives (written there if absent). Default: the folder named by
    /// NEURON_QWEN3_6_27B_STANDIN_DIR (moe: NEURON_QWEN3_6_35B_A3B_STANDIN_DIR), else
    /// `<temp>/neuron-qwen3.6-27b-standin` (moe: `<temp>/neuron-qwen3.6-35b-a3b-standin`).
    #[arg(long)]
    dir: Option<PathBuf>,
    /// Verify against the recorded dumps without capturing again.
    #[arg(long)]
    no_capture: bool,
    /// torch threads for the capture.
    #[arg(long, default_value_t = 1)]
    threads: u32,
}

/// `standin.json`, written by `script/make_standin.py`.
#[derive(Deserialize)]
pub struct Sizes {
    f32_bytes_without_mtp: u64,
    bf16_bytes: u64,
}

impl Sizes {
    /// The stand-in's size in float32 without the `mtp.*` head: what a resident f32 model holds.
    pub fn f32_bytes(&self) -> u64 {
        self.f32_bytes_without_mtp
    }
}

pub fn run(sh: &Shell, args: Args) -> Result<()> {
    let (dir, sizes) = ensure(sh, args.kind, args.dir)?;
    let budget = sizes.f32_bytes_without_mtp / 4;
    let model = args.kind.model();

    let weights = dir.display().to_string();
    let mut steps = Vec::new();
    if !args.no_capture {
        let threads = args.threads.to_string();
        let capture = ["capture", "--model", model, "--weights", &weights, "--threads", &threads];
        steps.push(("capture (transformers, streamed)", measured(sh, &capture)?));
    }
    let verify = ["verify", "--model", model, "--weights", &weights];
    steps.push(("verify (Rust, streamed)", measured(sh, &verify)?));

    println!(
        "\nstand-in at {}: {:.2} GB bf16, {:.2} GB as float32 (without mtp.*); budget 25 % = {:.2} GB",
        dir.display(),
        gb(sizes.bf16_bytes),
        gb(sizes.f32_bytes_without_mtp),
        gb(budget)
    );
    println!("{:<34} {:>10} {:>14} {:>10}", "step", "wall", "peak RSS", "of f32");
    let mut over = Vec::new();
    for (name, m) in &steps {
        let share = m.peak_rss as f64 / sizes.f32_bytes_without_mtp as f64;
        println!("{name:<34} {:>9.1}s {:>11.2} GB {:>9.1}%", m.wall_seconds, gb(m.peak_rss), 100.0 * share);
        if m.peak_rss > budget {
            over.push(*name);
        }
    }
    if !over.is_empty() {
        bail!("peak resident memory above 25 % of the float32 size in: {}", over.join(", "));
    }
    Ok(())
}

/// The stand-in's folder (`--dir`, else the manifest's variable, else a temporary folder),
/// written by `script/make_standin.py` when it is not there yet, and its sizes.
pub fn ensure(sh: &Shell, kind: Kind, dir: Option<PathBuf>) -> Result<(PathBuf, Sizes)> {
    let dir = match dir {
        Some(dir) => dir,
        None => match std::env::var_os(kind.env()) {
            Some(dir) if !dir.is_empty() => PathBuf::from(dir),
            _ => std::env::temp_dir().join(kind.default_dir()),
        },
    };
    let root = sh.current_dir();
    let inside = |d: &Path| d.canonicalize().ok().zip(root.canonicalize().ok()).is_some_and(|(d, r)| d.starts_with(r));
    ensure!(
        !inside(&dir) && !dir.parent().is_some_and(|p| !p.as_os_str().is_empty() && inside(p)),
        "{} is inside the repository; the stand-in (9 to 11 GB) must live outside it",
        dir.display()
    );
    if !dir.join("standin.json").is_file() {
        let gb = match kind {
            Kind::Dense => 9,
            Kind::Moe => 11,
        };
        eprintln!("writing the {} stand-in to {} (about {gb} GB)", kind.name(), dir.display());
        let args = ["--out".into(), dir.display().to_string(), "--kind".into(), kind.name().into()];
        harness::run_python(sh, "make_standin.py", &args)?;
    }
    let sizes: Sizes = serde_json::from_str(&std::fs::read_to_string(dir.join("standin.json"))?)
        .with_context(|| format!("reading {}", dir.join("standin.json").display()))?;
    Ok((dir, sizes))
}

struct Measured {
    wall_seconds: f64,
    peak_rss: u64,
}

/// Runs `cargo xtask <xtask_args>` under `/usr/bin/time -v`, echoes its output, fails when
/// it fails, and returns its wall time and peak resident memory (the largest process of its
/// tree: the Python reference for capture, the xtask process for verify).
fn measured(sh: &Shell, xtask_args: &[&str]) -> Result<Measured> {
    let time = Path::new("/usr/bin/time");
    ensure!(time.is_file(), "/usr/bin/time is missing (Debian package `time`); it measures the peak memory");
    let shown = format!("cargo xtask {}", xtask_args.join(" "));
    eprintln!("$ {shown}");
    let started = std::time::Instant::now();
    let out = cmd!(sh, "/usr/bin/time -v cargo xtask {xtask_args...}").ignore_status().output()?;
    let wall_seconds = started.elapsed().as_secs_f64();
    print!("{}", String::from_utf8_lossy(&out.stdout));
    let stderr = String::from_utf8_lossy(&out.stderr);
    let (ours, time_report) = stderr.split_once("\tCommand being timed:").unwrap_or((&stderr, ""));
    eprint!("{ours}");
    ensure!(out.status.success(), "`{shown}` failed");
    let kb = time_report
        .lines()
        .find_map(|l| l.trim().strip_prefix("Maximum resident set size (kbytes): "))
        .and_then(|v| v.trim().parse::<u64>().ok())
        .context("/usr/bin/time -v printed no maximum resident set size")?;
    Ok(Measured { wall_seconds, peak_rss: kb * 1024 })
}

fn gb(bytes: u64) -> f64 {
    bytes as f64 / 1e9
}
