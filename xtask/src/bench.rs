//! `cargo xtask bench`: the Rust model against transformers on the full-width stand-in.
//!
//! Both sides hold the checkpoint resident in float32 (or, with `--dtype bf16`, in bf16) on the CPU, use the same thread count,
//! the same 448×448 image and the same 64-token user text, and time the vision tower (with
//! the projector), the text prefill (the decoder over the spliced embeddings, logits at the
//! last position), the whole forward pass and cached greedy decoding (time per generated
//! token): one warm-up and several runs each. Each side runs as its own process, one after
//! the other, so their peak memories are their own. The report gives the medians, the ratios
//! Rust / transformers, decode's weight bytes per token over time against the measured memory
//! bandwidth, and the peak resident memory of each side.
//!
//! It also says why the ratio is what it is on this host: the host itself (CPU, clock, the
//! vector and matrix extensions, the theoretical f32 and bf16 peaks: `host.rs`), each side's
//! matmul rate at every shape the model multiplies at (`gemms.rs`, measured after the stages
//! by `script/gemm_rates.py` and `examples/gemm_rates.rs` with the same threads) as a share of
//! the f32 peak, and each stage's time outside GEMMs: its median minus its GEMMs' flop at
//! that side's rates.
//!
//! With `--batch 1,4,8` both sides also decode left-padded text batches of those sizes, and the
//! report gains their tokens per second ([`batch`]).
//!
//! With `--standin moe` it runs on the MoE stand-in (Qwen3.6-35B-A3B's widths, `cargo xtask
//! standin --kind moe`) instead: the routed experts' products enter the GEMM inventory at the
//! mean rows per expert (`gemms.rs`), decode counts the k of E experts a token reads, and a
//! float32 run is refused where the host's memory cannot hold transformers' resident copy
//! ([`fits_in_memory`]).

mod batch;

use contract::ComputeDtype;
use std::num::NonZeroUsize;
use std::path::PathBuf;

use anyhow::{ensure, Context, Result};
use serde::Deserialize;
use xshell::{cmd, Shell};

use crate::gemms::{self, Gemm, Rate};
use crate::host::Host;
use crate::{harness, standin};

#[derive(clap::Args, Debug)]
pub struct Args {
    /// Which stand-in: Qwen3.6-27B's (dense, the default) or Qwen3.6-35B-A3B's (moe); as
    /// `cargo xtask standin --kind`.
    #[arg(long, value_enum, default_value_t = standin::Kind::Dense)]
    standin: standin::Kind,
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
    /// The dtype both sides load and compute in: f32, or bf16 (transformers with
    /// `from_pretrained(dtype=torch.bfloat16)`, Rust with `Model::load(.., ComputeDtype::Bf16)`).
    #[arg(long, default_value = "f32")]
    dtype: ComputeDtype,
    /// Batch sizes for batched greedy decoding, comma-separated (`--batch 1,4,8`): per size, a
    /// left-padded batch of text prompts cut from the user text, `--decode-steps` steps after
    /// the prefill, as tokens per second. Without it, no batched stage runs.
    #[arg(long, value_delimiter = ',')]
    batch: Vec<NonZeroUsize>,
    /// How Rust holds the weights: `resident` (bf16 packed at load) or `mapped` (bf16 read where
    /// the checkpoint is mapped and packed per call: no copy at load, a slower decode step).
    #[arg(long, default_value = "resident")]
    residency: neuron::model::Residency,
}

/// Reads every shard of the checkpoint once, so that each side's load starts from the page
/// cache: transformers in f32 peaks at 23.5 GB on a 24 GB machine and evicts the 9 GB
/// checkpoint, and Rust, run after it, then read the disk while loading (18 s against 6 s).
fn warm_page_cache(dir: &std::path::Path) -> Result<()> {
    for shard in neuron::weights::safetensors_files(dir)? {
        let mut file = std::fs::File::open(&shard).with_context(|| format!("opening {}", shard.display()))?;
        std::io::copy(&mut file, &mut std::io::sink()).with_context(|| format!("reading {}", shard.display()))?;
    }
    Ok(())
}

/// transformers' peak resident memory over the float32 size of the model it holds, measured on
/// the dense stand-in (22.7 GB for 16.7 GB, 2026-11-30): the loaded weights plus the loader's
/// and the activations' working memory.
const TRANSFORMERS_F32_PEAK_OVER_SIZE: f64 = 1.36;

/// Refuses a float32 run that transformers cannot hold on this host (the MoE stand-in's 17.9 GB
/// would peak near 24.4 GB, past a 24 GB machine, where the kernel would kill it mid-run).
fn fits_in_memory(f32_bytes: u64, total: Option<u64>) -> Result<()> {
    let Some(total) = total else { return Ok(()) };
    let need = TRANSFORMERS_F32_PEAK_OVER_SIZE * f32_bytes as f64;
    ensure!(
        need < 0.95 * total as f64,
        "in float32 transformers would peak near {:.1} GB ({TRANSFORMERS_F32_PEAK_OVER_SIZE}× the stand-in's \
         {:.1} GB, as measured on the dense stand-in) and this host has {:.1} GB of memory: run with --dtype bf16",
        need / 1e9,
        f32_bytes as f64 / 1e9,
        total as f64 / 1e9
    );
    Ok(())
}

/// MemTotal from /proc/meminfo (none where there is no such file).
fn mem_total_bytes() -> Option<u64> {
    let info = std::fs::read_to_string("/proc/meminfo").ok()?;
    let kb: u64 = info.lines().find(|l| l.starts_with("MemTotal:"))?.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024)
}

/// " Then the first forward pass: …" — load plus the first pass is the time to a first answer,
/// the fair comparison when one side maps its weights lazily and reads them in that pass.
fn first_answer(rust: &Side, python: &Side) -> String {
    let (Some(r), Some(p)) = (rust.first_forward_seconds, python.first_forward_seconds) else { return String::new() };
    let (rt, pt) = (rust.load_seconds + r, python.load_seconds + p);
    format!(
        " Then the first forward pass: Rust {r:.1} s, transformers {p:.1} s; loaded and answered once: Rust {rt:.1} s, \
         transformers {pt:.1} s ({:.2}×).",
        rt / pt
    )
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
    /// The first whole forward pass after loading (a lazily mapped checkpoint is read here).
    #[serde(default)]
    first_forward_seconds: Option<f64>,
    stages: std::collections::BTreeMap<String, Stage>,
    peak_rss_bytes: u64,
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
    /// How the Rust side held its weights (`Residency::name`); Rust side only.
    #[serde(default)]
    residency: Option<String>,
    /// Bytes of cache one decode step reads on average (attention's keys and values, the Gated
    /// DeltaNet's states); Rust side only.
    #[serde(default)]
    decode_cache_bytes: Option<f64>,
    /// Batched decoding, one entry per `--batch` size in order (none without the flag).
    #[serde(default)]
    batches: Vec<batch::BatchRun>,
}

#[derive(Deserialize)]
struct Stage {
    median_seconds: f64,
    samples_seconds: Vec<f64>,
}

pub fn run(sh: &Shell, args: Args) -> Result<()> {
    ensure!(
        args.batch.is_empty() || args.decode_steps > 0,
        "--batch times decode steps: give --decode-steps 1 or more"
    );
    let mut host = Host::detect()?;
    // Before anything else runs, so the loops have the cores to themselves.
    host.measure(args.threads.min(host.logical_cpus.max(1)));
    host.measure_bandwidth(args.threads.min(host.logical_cpus.max(1)));
    let mut loads = vec![("before transformers", load_average())];
    let (dir, sizes) = standin::ensure(sh, args.standin, args.dir.clone())?;
    if args.standin == standin::Kind::Moe && args.dtype == ComputeDtype::F32 {
        fits_in_memory(sizes.f32_bytes(), mem_total_bytes())?;
    }
    let out = sh.current_dir().join(&args.out);
    std::fs::create_dir_all(&out)?;
    let (runs, threads, tokens) = (args.runs.to_string(), args.threads.to_string(), args.prompt_tokens.to_string());
    let steps = args.decode_steps.to_string();
    let batch_args = batch::side_args(&args.batch);
    let (py_json, rs_json) = (out.join("transformers.json"), out.join("rust.json"));
    let (shapes_json, py_gemms, rs_gemms) =
        (out.join("gemm_shapes.json"), out.join("transformers_gemms.json"), out.join("rust_gemms.json"));

    let dtype = args.dtype.name();
    warm_page_cache(&dir)?;
    eprintln!("transformers: loading the stand-in in {dtype} and timing {runs} runs per stage");
    let bench_args: Vec<String> = [
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
        "--dtype".into(),
        dtype.into(),
    ]
    .into_iter()
    .chain(batch_args.iter().cloned())
    .collect();
    harness::run_python(sh, "bench.py", &bench_args)?;
    let python = read(&py_json)?;
    loads.push(("after transformers", load_average()));
    let prompt = python.prompt.clone().context("bench.py recorded no prompt")?;

    // The products of the stages at this prompt's sizes, measured on each side on its own.
    let config = neuron::config::Config::from_dir(&dir)?;
    let checkpoint = neuron::weights::Checkpoint::open(&dir)?;
    let weights = checkpoint
        .names()
        .into_iter()
        .map(|name| Ok((name.to_string(), checkpoint.shape(name)?.to_vec())))
        .collect::<Result<Vec<_>>>()?;
    drop(checkpoint);
    let inventory = gemms::inventory(&weights, &config, python.patches, python.prompt_tokens);
    let shapes: Vec<gemms::Shape> = inventory.iter().map(|g| g.shape).collect();
    std::fs::write(&shapes_json, serde_json::to_string_pretty(&shapes)?)?;
    eprintln!("transformers: torch.matmul at the {} shapes of the stages", shapes.len());
    harness::run_python(
        sh,
        "gemm_rates.py",
        &[
            "--shapes".into(),
            shapes_json.display().to_string(),
            "--threads".into(),
            threads.clone(),
            "--out".into(),
            py_gemms.display().to_string(),
            "--dtype".into(),
            dtype.into(),
        ],
    )?;

    eprintln!("rust: building the bench in release, then the same runs");
    cmd!(sh, "cargo build --quiet --release --package neuron --example bench --example gemm_rates").run()?;
    // The examples are where cargo put them: CARGO_TARGET_DIR when set (a shared target of
    // several worktrees), else the workspace's target/.
    let examples = std::env::var_os("CARGO_TARGET_DIR")
        .map_or_else(|| sh.current_dir().join("target"), PathBuf::from)
        .join("release/examples");
    let (bench, gemm_rates) = (examples.join("bench"), examples.join("gemm_rates"));
    let dir_arg = dir.display().to_string();
    let residency = args.residency.name();
    let rs_arg = rs_json.display().to_string();
    warm_page_cache(&dir)?;
    cmd!(sh, "{bench} --model-dir {dir_arg} --image {IMAGE} --prompt {prompt} --runs {runs} --decode-steps {steps} --out {rs_arg} --dtype {dtype} --residency {residency} {batch_args...}")
        .env("RAYON_NUM_THREADS", &threads)
        .run()?;
    let rust = read(&rs_json)?;
    loads.push(("after Rust", load_average()));
    eprintln!("rust: candle's matmul at the same shapes");
    cmd!(sh, "{gemm_rates} --shapes {shapes_json} --out {rs_gemms} --dtype {dtype}")
        .env("RAYON_NUM_THREADS", &threads)
        .run()?;

    let rates = Rates { rust: read_rates(&rs_gemms)?, python: read_rates(&py_gemms)? };
    let loads: Vec<(&str, f64)> = loads.into_iter().filter_map(|(when, load)| Some((when, load?))).collect();
    let mut report = render(&host, args.dtype, &loads, &inventory, &rates, &rust, &python);
    if args.standin == standin::Kind::Moe {
        report = report.replacen("on the full-width stand-in", "on the full-width MoE stand-in (Qwen3.6-35B-A3B)", 1);
    }
    if !args.batch.is_empty() {
        report.push_str(&batch::render(&rust.batches, &python.batches));
    }
    print!("{report}");
    std::fs::write(out.join("report.md"), &report)?;
    eprintln!("written: {}", out.join("report.md").display());
    Ok(())
}

fn read(path: &std::path::Path) -> Result<Side> {
    serde_json::from_str(&std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?)
        .with_context(|| format!("parsing {}", path.display()))
}

/// Each side's measured matmul rates.
struct Rates {
    rust: Vec<Rate>,
    python: Vec<Rate>,
}

fn read_rates(path: &std::path::Path) -> Result<Vec<Rate>> {
    #[derive(Deserialize)]
    struct File {
        rates: Vec<Rate>,
    }
    let text = std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    Ok(serde_json::from_str::<File>(&text).with_context(|| format!("parsing {}", path.display()))?.rates)
}

/// The report as Markdown: the host and its peaks, inputs, one row per stage (medians, ratio,
/// GEMM rate at the stage's shapes, time outside GEMMs), the rate at every shape, memory.
fn render(
    host: &Host,
    dtype: ComputeDtype,
    loads: &[(&str, f64)],
    inventory: &[Gemm],
    rates: &Rates,
    rust: &Side,
    python: &Side,
) -> String {
    let threads = python.threads;
    let cores = threads.min(host.logical_cpus.max(1));
    let (peak, dtype_name) = match dtype {
        ComputeDtype::F32 => (host.f32_peak_gflops(cores), "f32"),
        ComputeDtype::Bf16 => (host.bf16_peak_gflops(cores), "bf16"),
    };
    let of_peak = |g: f64| format!("{g:.0} GFLOP/s ({:.0} %)", 100.0 * g / peak);
    let mut s = String::new();
    s.push_str(&format!(
        "# Rust vs transformers on the full-width stand-in\n\n{}\n\
         {} prompt tokens ({} image tokens from {} patches), {} threads on each side, {}, CPU.\n\
         Loading (the checkpoint read into the page cache first): Rust {:.1} s, transformers {:.1} s.{}\n{}\n",
        host.describe(cores),
        python.prompt_tokens,
        python.image_tokens,
        python.patches,
        threads,
        match &rust.residency {
            Some(residency) => format!("{dtype_name} (Rust's weights {residency})"),
            None => dtype_name.to_string(),
        },
        rust.load_seconds,
        python.load_seconds,
        first_answer(rust, python),
        load_line(loads, threads),
    ));
    if (rust.prompt_tokens, rust.image_tokens, rust.patches, rust.threads)
        != (python.prompt_tokens, python.image_tokens, python.patches, python.threads)
    {
        s.push_str(
            "**The two sides did not run the same inputs or thread count; the ratios below are not comparable.**\n\n",
        );
    }
    s.push_str(
        "| stage | GEMM work | Rust median | transformers median | Rust / transformers | Rust GEMM rate at the \
         stage's shapes (of the peak) | torch GEMM rate (of the peak) | Rust outside GEMMs | transformers outside \
         GEMMs |\n|---|---|---|---|---|---|---|---|---|\n",
    );
    for stage in STAGES {
        let (Some(r), Some(p)) = (rust.stages.get(stage), python.stages.get(stage)) else { continue };
        let (rs, py) =
            (gemms::stage_gemms(inventory, &rates.rust, stage), gemms::stage_gemms(inventory, &rates.python, stage));
        let work = rs.or(py).map_or("–".into(), |g| format!("{:.1} GFLOP", g.flops / 1e9));
        let rate = |g: Option<gemms::StageGemms>| g.map_or("–".into(), |g| of_peak(g.gflops()));
        let outside = |g: Option<gemms::StageGemms>, median: f64| {
            g.map_or("–".into(), |g| {
                format!("{:.3} s ({:.0} %)", median - g.seconds, 100.0 * (median - g.seconds) / median)
            })
        };
        s.push_str(&format!(
            "| {stage} | {work} | {:.3} s | {:.3} s | {:.2}× | {} | {} | {} | {} |\n",
            r.median_seconds,
            p.median_seconds,
            r.median_seconds / p.median_seconds,
            rate(rs),
            rate(py),
            outside(rs, r.median_seconds),
            outside(py, p.median_seconds),
        ));
    }
    s.push_str(
        "\nA stage's GEMM rate is its GEMMs' flop over their predicted time, Σ uses × flop ÷ the side's rate at \
         each shape (below); outside GEMMs is the stage's median minus that time (norms, activations, rotary \
         embeddings, softmax, the DeltaNet's convolution and recurrence, copies), with its share of the median. \
         The estimate assumes a product runs in the model as fast as alone with fresh operands (a negative \
         figure says it ran faster).\n\n\
         | product (rows × k · k × n) | matrices | uses (vision, prefill) | GFLOP each | Rust (of the peak) | \
         torch (of the peak) |\n|---|---|---|---|---|---|\n",
    );
    for gemm in inventory {
        let at =
            |side: &[Rate]| side.iter().find(|r| r.shape == gemm.shape).map_or("–".into(), |r| of_peak(r.gflops));
        s.push_str(&format!(
            "| {} | {} | {}, {} | {:.2} | {} | {} |\n",
            gemm.shape.label(),
            gemm.what.join(", "),
            uses(gemm.vision_uses),
            uses(gemm.prefill_uses),
            gemm.shape.flops() / 1e9,
            at(&rates.rust),
            at(&rates.python),
        ));
    }
    if let (Some(r), Some(p), Some(bytes)) =
        (rust.stages.get("decode"), python.stages.get("decode"), rust.decode_weight_bytes)
    {
        // Decode reads every decoder weight once per token and does little arithmetic on each:
        // the bound is memory bandwidth, not GEMM rate.
        s.push_str(&decode_line(bytes, rust.decode_cache_bytes, rust.memory_bandwidth_gbs, r, p, rust.threads));
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

/// The decode paragraph: the bytes a step reads (the weights and, when the Rust side counted
/// them, the cache), each side's rate, and that rate as a share of the memory read bandwidth
/// the Rust side measured right after its decode steps (both sides read the same bytes).
fn decode_line(
    weights: f64,
    cache: Option<f64>,
    bandwidth: Option<f64>,
    rust: &Stage,
    python: &Stage,
    threads: usize,
) -> String {
    let bytes = weights + cache.unwrap_or(0.0);
    let rate = |st: &Stage| {
        let gbs = bytes / st.median_seconds / 1e9;
        match bandwidth {
            Some(b) => format!("{gbs:.1} GB/s ({:.0} % of the bandwidth)", 100.0 * gbs / b),
            None => format!("{gbs:.1} GB/s"),
        }
    };
    let read = match cache {
        Some(c) => format!("{:.2} GB ({:.2} GB of weights, {:.1} MB of cache)", bytes / 1e9, weights / 1e9, c / 1e6),
        None => format!("{:.2} GB of weights", weights / 1e9),
    };
    let bandwidth = bandwidth.map_or("not measured".into(), |b| format!("{b:.1} GB/s"));
    format!(
        "\nDecode reads {read} per step: Rust {}, transformers {}; this machine's measured memory read bandwidth \
         ({threads} threads): {bandwidth}.\n",
        rate(rust),
        rate(python),
    )
}

/// The one-minute load average, from /proc/loadavg (none where there is no such file).
fn load_average() -> Option<f64> {
    std::fs::read_to_string("/proc/loadavg").ok()?.split_whitespace().next()?.parse().ok()
}

/// The load averages around each side's run: above the thread count, other work shared the
/// cores and the timings (stages and GEMM rates alike) are slower than an idle machine's.
fn load_line(loads: &[(&str, f64)], threads: usize) -> String {
    if loads.is_empty() {
        return String::new();
    }
    let listed: Vec<String> = loads.iter().map(|(when, load)| format!("{when} {load:.1}")).collect();
    let busy = loads.iter().any(|(_, load)| *load > threads as f64 + 0.5);
    format!(
        "One-minute load average: {}{}.\n",
        listed.join(", "),
        if busy { " — **busy: other work shared the cores; every figure below is slower than idle**" } else { "" }
    )
}

/// A use count as the report prints it: whole, or to two places (the `lm_head` blocks).
fn uses(n: f64) -> String {
    if n.fract() == 0.0 {
        format!("{n:.0}")
    } else {
        format!("{n:.2}")
    }
}

fn rounded(samples: &[f64]) -> Vec<f64> {
    samples.iter().map(|x| (x * 1000.0).round() / 1000.0).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::gemms::Shape;

    fn side(vision: f64) -> Side {
        serde_json::from_value(serde_json::json!({
            "prompt_tokens": 277, "image_tokens": 196, "patches": 784, "threads": 2, "load_seconds": 10.0,
            "first_forward_seconds": vision * 100.0,
            "peak_rss_bytes": 17_000_000_000u64,
            "stages": { "vision": { "median_seconds": vision, "samples_seconds": [vision] } },
        }))
        .unwrap()
    }

    #[test]
    fn the_decode_line_gives_the_bytes_per_step_and_each_sides_share_of_the_bandwidth() {
        let step = |seconds: f64| Stage { median_seconds: seconds, samples_seconds: vec![seconds] };
        let decode = decode_line(9.0e9, Some(1.0e9), Some(40.0), &step(0.25), &step(0.5), 2);
        assert!(
            decode.contains(
                "Decode reads 10.00 GB (9.00 GB of weights, 1000.0 MB of cache) per step: Rust 40.0 GB/s (100 % of the \
                 bandwidth), transformers 20.0 GB/s (50 % of the bandwidth)"
            ),
            "{decode}"
        );
        let unmeasured = decode_line(9.0e9, None, None, &step(0.25), &step(0.5), 2);
        assert!(
            unmeasured.contains("Decode reads 9.00 GB of weights per step: Rust 36.0 GB/s, transformers"),
            "{unmeasured}"
        );
    }

    #[test]
    fn the_report_gives_the_host_the_peak_share_and_the_time_outside_gemms() {
        let host = Host::parse(
            "processor : 0\nmodel name : Test CPU @ 2.00GHz\nflags : avx2 fma avx512f\nprocessor : 1\n",
            "",
        )
        .unwrap();
        // One product of 2·100·1000·1000 = 0.2 GFLOP, used 10 times by the vision stage: 2 GFLOP.
        let shape = Shape { batch: 1, m: 100, k: 1000, n: 1000 };
        let inventory = [Gemm { shape, what: vec!["fc".into()], vision_uses: 10.0, prefill_uses: 0.0 }];
        // Peak: 2 cores × 2 GHz × 64 = 256 GFLOP/s; Rust at 128 (2 GFLOP in 15.6 ms), torch at 200 (10 ms).
        let rates = Rates {
            rust: vec![Rate { shape, seconds: 0.0, gflops: 128.0 }],
            python: vec![Rate { shape, seconds: 0.0, gflops: 200.0 }],
        };
        let loads = [("before transformers", 0.4), ("after Rust", 3.2)];
        let report = render(&host, ComputeDtype::F32, &loads, &inventory, &rates, &side(0.05), &side(0.04));
        for expected in [
            "Host: Test CPU @ 2.00GHz (2 logical CPUs, 2 used), 2.00 GHz",
            "f32 256 GFLOP/s",
            "One-minute load average: before transformers 0.4, after Rust 3.2 — **busy",
            "Then the first forward pass: Rust 5.0 s, transformers 4.0 s; loaded and answered once: Rust 15.0 s, \
             transformers 14.0 s (1.07×).",
            // vision: 2.0 GFLOP; Rust 0.050 s of which 0.050 − 0.015625 outside; torch 0.040 − 0.010.
            "| vision | 2.0 GFLOP | 0.050 s | 0.040 s | 1.25× | 128 GFLOP/s (50 %) | 200 GFLOP/s (78 %) | 0.034 s (69 %) | 0.030 s (75 %) |",
            "| 100×1000 · 1000×1000 | fc | 10, 0 | 0.20 | 128 GFLOP/s (50 %) | 200 GFLOP/s (78 %) |",
        ] {
            assert!(report.contains(expected), "the report lacks {expected:?}:\n{report}");
        }
    }
}
