//! `cargo xtask bench`: the Rust model against transformers on the full-width stand-in.
//!
//! Both sides hold the checkpoint resident in float32 on the CPU, use the same thread count,
//! the same 448×448 image and the same 64-token user text, and time the vision tower (with
//! the projector), the text prefill (the decoder over the spliced embeddings, logits at the
//! last position), the whole forward pass and cached greedy decoding (time per generated
//! token): one warm-up and several runs each. Each side runs as its own process, one after
//! the other, so their peak memories are their own. The report gives the medians, the ratios
//! Rust / transformers, each stage's matmul rate against the machine's measured f32 GEMM
//! rate, decode's weight bytes per token over time against the measured memory bandwidth,
//! and the peak resident memory of each side.

use std::path::PathBuf;

use anyhow::{Context, Result};
use serde::Deserialize;
use xshell::{cmd, Shell};

use crate::{harness, standin};

#[derive(clap::Args, Debug)]
pub struct Args {
    /// Where the stand-in lives (written there if absent); as for `cargo xtask standin`.
    #[arg(long)]
    dir: Option<PathBuf>,
    /// Timed runs per stage, after one warm-up.
    #[arg(long, default_value_t = 5)]
    runs: usize,
    /// Threads on both sides (torch.set_num_threads, RAYON_NUM_THREADS).
    #[arg(long, default_value_t = 2)]
    threads: usize,
    /// Tokens of the user text.
    #[arg(long, default_value_t = 64)]
    prompt_tokens: usize,
    /// Cached greedy decode steps per run (time per generated token).
    #[arg(long, default_value_t = 8)]
    decode_steps: usize,
    /// Where the JSON of each side and the report go.
    #[arg(long, default_value = "target/bench")]
    out: PathBuf,
}

/// The image both sides see: 448×448, kept as is by Qwen3.6's preprocessing.
const IMAGE: &str = "fixtures/images/astronaut-448.png";
const STAGES: [&str; 4] = ["vision", "prefill", "forward", "decode"];

#[derive(Deserialize)]
struct Side {
    prompt_tokens: usize,
    image_tokens: usize,
    patches: usize,
    threads: usize,
    load_seconds: f64,
    stages: std::collections::BTreeMap<String, Stage>,
    peak_rss_bytes: u64,
    #[serde(default)]
    gemm_gflops: Option<f64>,
    #[serde(default)]
    flops: std::collections::BTreeMap<String, f64>,
    #[serde(default)]
    prompt: Option<String>,
    /// The greedy tokens of the decode stage, which both sides must agree on.
    #[serde(default)]
    decode_tokens: Vec<u32>,
    /// Bytes of weights one decode step reads (the decoder layers, the final norm, the
    /// `lm_head`; one embedding row); Rust side only.
    #[serde(default)]
    decode_weight_bytes: Option<f64>,
    /// The machine's memory read bandwidth, measured by the Rust side with the same threads.
    #[serde(default)]
    memory_bandwidth_gbs: Option<f64>,
}

#[derive(Deserialize)]
struct Stage {
    median_seconds: f64,
    samples_seconds: Vec<f64>,
}

pub fn run(sh: &Shell, args: Args) -> Result<()> {
    let (dir, _) = standin::ensure(sh, args.dir.clone())?;
    let out = sh.current_dir().join(&args.out);
    std::fs::create_dir_all(&out)?;
    let (runs, threads, tokens) = (args.runs.to_string(), args.threads.to_string(), args.prompt_tokens.to_string());
    let steps = args.decode_steps.to_string();
    let (py_json, rs_json) = (out.join("transformers.json"), out.join("rust.json"));

    eprintln!("transformers: loading the stand-in in float32 and timing {runs} runs per stage");
    harness::run_python(
        sh,
        "bench.py",
        &[
            "--model-dir".into(),
            dir.display().to_string(),
            "--image".into(),
            IMAGE.into(),
            "--prompt-tokens".into(),
            tokens,
            "--threads".into(),
            threads.clone(),
            "--runs".into(),
            runs.clone(),
            "--decode-steps".into(),
            steps.clone(),
            "--out".into(),
            py_json.display().to_string(),
        ],
    )?;
    let python = read(&py_json)?;
    let prompt = python.prompt.clone().context("bench.py recorded no prompt")?;

    eprintln!("rust: building the bench in release, then the same runs");
    cmd!(sh, "cargo build --quiet --release --package neuron --example bench").run()?;
    let dir_arg = dir.display().to_string();
    let rs_arg = rs_json.display().to_string();
    cmd!(sh, "target/release/examples/bench --model-dir {dir_arg} --image {IMAGE} --prompt {prompt} --runs {runs} --decode-steps {steps} --out {rs_arg}")
        .env("RAYON_NUM_THREADS", &threads)
        .run()?;
    let rust = read(&rs_json)?;

    let report = render(&rust, &python);
    print!("{report}");
    std::fs::write(out.join("report.md"), &report)?;
    eprintln!("written: {}", out.join("report.md").display());
    Ok(())
}

fn read(path: &std::path::Path) -> Result<Side> {
    serde_json::from_str(&std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?)
        .with_context(|| format!("parsing {}", path.display()))
}

/// The report as Markdown: inputs, one row per stage, memory.
fn render(rust: &Side, python: &Side) -> String {
    let mut s = String::new();
    s.push_str(&format!(
        "# Rust vs transformers on the full-width stand-in\n\n\
         {} prompt tokens ({} image tokens from {} patches), {} threads on each side, float32, CPU.\n\
         Loading: Rust {:.1} s, transformers {:.1} s. f32 GEMM rate ({}×5120·5120×17408): Rust {}, torch {}.\n\n",
        python.prompt_tokens,
        python.image_tokens,
        python.patches,
        python.threads,
        rust.load_seconds,
        python.load_seconds,
        python.prompt_tokens,
        gflops(rust.gemm_gflops),
        gflops(python.gemm_gflops),
    ));
    if (rust.prompt_tokens, rust.image_tokens, rust.patches, rust.threads)
        != (python.prompt_tokens, python.image_tokens, python.patches, python.threads)
    {
        s.push_str(
            "**The two sides did not run the same inputs or thread count; the ratios below are not comparable.**\n\n",
        );
    }
    s.push_str("| stage | Rust median | transformers median | Rust / transformers | Rust GFLOP/s (share of GEMM rate) | torch GFLOP/s (share) |\n|---|---|---|---|---|---|\n");
    for stage in STAGES {
        let (Some(r), Some(p)) = (rust.stages.get(stage), python.stages.get(stage)) else { continue };
        let rate = |side: &Side, st: &Stage| -> String {
            match (side.gemm_gflops.or(rust.gemm_gflops), rust.flops.get(stage)) {
                (Some(peak), Some(flops)) => {
                    let g = flops / st.median_seconds / 1e9;
                    format!("{g:.0} ({:.0} %)", 100.0 * g / peak)
                }
                _ => "-".into(),
            }
        };
        s.push_str(&format!(
            "| {stage} | {:.3} s | {:.3} s | {:.2}× | {} | {} |\n",
            r.median_seconds,
            p.median_seconds,
            r.median_seconds / p.median_seconds,
            rate(rust, r),
            rate(python, p)
        ));
    }
    if let (Some(r), Some(p), Some(bytes)) =
        (rust.stages.get("decode"), python.stages.get("decode"), rust.decode_weight_bytes)
    {
        // Decode reads every decoder weight once per token and does little arithmetic on each:
        // the bound is memory bandwidth, not GEMM rate.
        let rate = |st: &Stage| bytes / st.median_seconds / 1e9;
        let bandwidth = rust.memory_bandwidth_gbs.map_or("not measured".into(), |b| format!("{b:.1} GB/s"));
        s.push_str(&format!(
            "\nDecode reads {:.2} GB of weights per token: Rust {:.1} GB/s, transformers {:.1} GB/s; this \
             machine's measured memory read bandwidth ({} threads): {bandwidth}.\n",
            bytes / 1e9,
            rate(r),
            rate(p),
            rust.threads,
        ));
        if rust.decode_tokens != python.decode_tokens {
            s.push_str(&format!(
                "**The greedy tokens differ: Rust {:?}, transformers {:?}.**\n",
                rust.decode_tokens, python.decode_tokens
            ));
        }
    }
    s.push_str(&format!(
        "\nPeak resident memory: Rust {:.2} GB, transformers {:.2} GB.\n\nSamples (s): \n",
        rust.peak_rss_bytes as f64 / 1e9,
        python.peak_rss_bytes as f64 / 1e9
    ));
    for stage in STAGES {
        if let (Some(r), Some(p)) = (rust.stages.get(stage), python.stages.get(stage)) {
            s.push_str(&format!(
                "- {stage}: Rust {:?}, transformers {:?}\n",
                rounded(&r.samples_seconds),
                rounded(&p.samples_seconds)
            ));
        }
    }
    s
}

fn gflops(g: Option<f64>) -> String {
    g.map_or("-".into(), |g| format!("{g:.0} GFLOP/s"))
}

fn rounded(samples: &[f64]) -> Vec<f64> {
    samples.iter().map(|x| (x * 1000.0).round() / 1000.0).collect()
}
