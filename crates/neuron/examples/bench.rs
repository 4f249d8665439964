//! The Rust side of `cargo xtask bench`: times the vision tower, the text prefill, the whole
//! forward pass and cached greedy decoding of a checkpoint held resident in f32 (or, with
//! `--dtype bf16`, in bf16), the way
//! `script/bench.py` times transformers, and writes the medians and the peak resident memory
//! as JSON (the matmul work of each stage is the xtask's, in `gemms.rs`; candle's rate at its
//! shapes is `examples/gemm_rates.rs`'s). With `--batch 1,4,8` it also times batched greedy
//! decoding of left-padded text batches of those sizes ([`batched_decode`]). Run in release by
//! the xtask; thread count from `RAYON_NUM_THREADS`.

use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{Context, Result};
use candle_core::Tensor;
use clap::Parser;
use neuron::config::Config;
use neuron::model::{splice_image_embeds, Model, Request};
use neuron::preprocess::Processor;
use neuron::taps::Taps;
use neuron::text::cache::{Cache, LayerState};
use neuron::vision::VisionPositions;
use serde_json::json;

#[derive(Parser)]
struct Args {
    #[arg(long)]
    model_dir: PathBuf,
    #[arg(long)]
    image: PathBuf,
    #[arg(long)]
    prompt: String,
    #[arg(long, default_value_t = 5)]
    runs: usize,
    #[arg(long)]
    out: PathBuf,
    /// Cached greedy decode steps per run (0: no decode stage).
    #[arg(long, default_value_t = 8)]
    decode_steps: usize,
    /// Time only the vision tower, loading nothing else (for profiling it, e.g. under perf).
    #[arg(long)]
    vision_only: bool,
    /// The compute dtype: f32 or bf16.
    #[arg(long, default_value = "f32")]
    dtype: neuron::ComputeDtype,
    /// Batch sizes for batched greedy decoding (`1,4,8`): per size, a left-padded batch of text
    /// prompts cut from `--prompt` ([`batch_prompts`]), prefilled, then `--decode-steps` steps
    /// timed. None: no batched stage.
    #[arg(long, value_delimiter = ',')]
    batch: Vec<std::num::NonZeroUsize>,
    /// How the weights are held: `resident` (bf16 packed at load) or `mapped` (bf16 read where
    /// the checkpoint is mapped, packed per call).
    #[arg(long, default_value = "resident")]
    residency: neuron::model::Residency,
}

#[path = "common/allocator.rs"]
mod allocator;

fn main() -> Result<()> {
    allocator::keep_freed_pages();
    let args = Args::parse();
    anyhow::ensure!(
        args.batch.is_empty() || args.decode_steps > 0,
        "--batch times decode steps: give --decode-steps 1 or more"
    );
    let config = Config::from_dir(&args.model_dir)?;
    if args.vision_only {
        return vision_only(&args, &config);
    }
    let started = Instant::now();
    anyhow::ensure!(args.residency != neuron::model::Residency::Streamed, "the bench runs a resident model");
    let model = Model::load(&args.model_dir, &config, args.residency, args.dtype)?;
    let load_seconds = started.elapsed().as_secs_f64();

    let processed = Processor::from_dir(&args.model_dir)?.process(&[args.image.as_path()], &args.prompt)?;
    let pixels = processed.pixel_values.context("the prompt has an image")?;
    let ids = processed.input_ids;
    let vision_positions = VisionPositions::new(&config.vision_config, &processed.grids);
    // The first forward pass, before anything else runs (bench.py times the same): load + this
    // is the time to a first answer, which a side that maps its weights lazily pays here.
    let started = Instant::now();
    std::hint::black_box(model.forward(&ids, Some((&pixels, &vision_positions)), &mut Taps::disabled())?);
    let first_forward_seconds = started.elapsed().as_secs_f64();
    let positions = model.positions(&ids, &processed.grids)?;
    // The prefill's input, computed once outside the timing as bench.py does.
    let image_embeds = model.vision.forward(&pixels, &vision_positions, &mut Taps::disabled())?;
    let embeds = splice_image_embeds(&model.text.embed(&ids)?, &ids, config.image_token_id, &image_embeds)?;

    let vision = time(args.runs, || model.vision.forward(&pixels, &vision_positions, &mut Taps::disabled()))?;
    let prefill = time(args.runs, || model.text.forward(&embeds, &positions, &mut Taps::disabled()))?;
    let forward = time(args.runs, || model.forward(&ids, Some((&pixels, &vision_positions)), &mut Taps::disabled()))?;

    let (decode, decode_tokens, decode_cache_bytes) =
        decode(&model, &ids, (&pixels, &vision_positions), args.decode_steps, args.runs)?;
    // Right after decoding, so that the other tenants of a shared machine load it as they did
    // the decode steps.
    let bandwidth = memory_bandwidth_gbs();
    let batches = args
        .batch
        .iter()
        .map(|&rows| batched_decode(&model, &args.model_dir, &args.prompt, rows.get(), args.decode_steps, args.runs))
        .collect::<Result<Vec<_>>>()?;

    let patches = vision_positions.patches();
    let peak_rss = peak_rss_bytes();
    let mut report = json!({
        "side": "rust",
        "threads": candle_core::utils::get_num_threads(),
        "dtype": args.dtype.name(),
        "residency": args.residency.name(),
        "load_seconds": load_seconds,
        "first_forward_seconds": first_forward_seconds,
        "prompt_tokens": ids.len(),
        "image_tokens": image_embeds.dim(0)?,
        "patches": patches,
        "stages": { "vision": vision, "prefill": prefill, "forward": forward, "decode": decode },
        "decode_tokens": decode_tokens,
        "decode_weight_bytes": decode_weight_bytes(&args.model_dir, &config, args.dtype)?,
        "decode_cache_bytes": decode_cache_bytes,
        "memory_bandwidth_gbs": bandwidth,
        "peak_rss_bytes": peak_rss,
    });
    if !args.batch.is_empty() {
        report["batches"] = serde_json::Value::Array(batches);
    }
    std::fs::write(&args.out, serde_json::to_string_pretty(&report)?)?;
    Ok(())
}

fn vision_only(args: &Args, config: &Config) -> Result<()> {
    let checkpoint = std::sync::Arc::new(neuron::weights::Checkpoint::open(&args.model_dir)?);
    let vb = neuron::weights::builder_in(checkpoint, args.dtype)?;
    let vision = neuron::vision::VisionModel::new(&config.vision_config, vb.pp("model.visual"))?;
    let processed = Processor::from_dir(&args.model_dir)?.process(&[args.image.as_path()], &args.prompt)?;
    let pixels = processed.pixel_values.context("the prompt has an image")?;
    let positions = VisionPositions::new(&config.vision_config, &processed.grids);
    let timing = time(args.runs, || vision.forward(&pixels, &positions, &mut Taps::disabled()))?;
    std::fs::write(
        &args.out,
        serde_json::to_string_pretty(&json!({ "side": "rust", "stages": { "vision": timing } }))?,
    )?;
    Ok(())
}

/// Cached greedy decoding as `bench.py` times it: per round, the prompt prefilled into a new
/// cache (untimed), then `steps` single-token steps, each one sample; one warm-up round. Also
/// the bytes of cache a step reads, on average over the steps: the keys and values of the
/// attention layers (at the mean of the lengths after the prefill and after the last step) and
/// the conv and recurrent states of the Gated DeltaNet layers.
fn decode(
    model: &Model,
    ids: &[u32],
    pixels: (&Tensor, &VisionPositions),
    steps: usize,
    runs: usize,
) -> Result<(serde_json::Value, Vec<u32>, f64)> {
    let greedy = |logits: &Tensor| -> Result<u32> {
        neuron::model::argmax(&logits.to_vec1::<f32>()?).context("the logits are all NaN")
    };
    let (mut samples, mut tokens, mut cache_read) = (Vec::new(), Vec::new(), 0.0);
    for round in 0..=runs {
        let mut cache = model.new_cache();
        let mut token = greedy(&model.prefill(ids, Some(pixels), &mut cache, &mut Taps::disabled())?)?;
        let (kv_before, _) = cache_bytes(&cache);
        tokens.clear();
        for _ in 0..steps {
            let t = Instant::now();
            let logits = model.decode_step(token, &mut cache)?;
            let elapsed = t.elapsed().as_secs_f64();
            token = greedy(&logits)?;
            tokens.push(token);
            if round > 0 {
                samples.push(elapsed);
            }
        }
        let (kv_after, linear) = cache_bytes(&cache);
        cache_read = (kv_before + kv_after) as f64 / 2.0 + linear as f64;
    }
    Ok((json!({ "samples_seconds": samples, "median_seconds": median(&samples) }), tokens, cache_read))
}

/// The user texts of a batch of `rows`, cut from the bench's prompt so that their lengths differ
/// and the batch has padding: row r keeps the first ⌈W·(rows − r)/rows⌉ of its W words (row 0
/// the whole prompt, a batch of one the prompt alone, unpadded). `script/bench.py` cuts them the
/// same way; the report compares both sides' token counts per row.
fn batch_prompts(prompt: &str, rows: usize) -> Vec<String> {
    let words: Vec<&str> = prompt.split_whitespace().collect();
    (0..rows).map(|r| words[..(words.len() * (rows - r)).div_ceil(rows)].join(" ")).collect()
}

/// Batched greedy decoding as `bench.py` times `generate` on the same batch: the user texts of
/// [`batch_prompts`] through the chat template, left-padded with the tokenizer's pad token
/// (embedded once, untimed); per round new caches and the batch prefilled (untimed), then
/// `steps` steps of [`Model::decode_step_batch`], every row fed its own most likely token. A
/// round's time runs from the prefill's logits in hand to the last step's: the first tokens'
/// choice and `steps` forwards with their choices, as the reference's run from its logits
/// processor's first call to its last. No row stops at an end-of-sequence token (`bench.py`
/// passes `eos_token_id=None`). One warm-up round, then `runs`; each gives rows × steps / time
/// generated tokens per second. Also one row's cache after the last round, in bytes.
fn batched_decode(
    model: &Model,
    dir: &Path,
    prompt: &str,
    rows: usize,
    steps: usize,
    runs: usize,
) -> Result<serde_json::Value> {
    let processor = Processor::from_dir(dir)?;
    let pad = processor
        .prompt
        .pad_token_id()
        .context("the tokenizer names no pad_token (tokenizer_config.json), which a left-padded batch needs")?;
    let processed =
        batch_prompts(prompt, rows).iter().map(|text| processor.process(&[], text)).collect::<Result<Vec<_>>>()?;
    let requests: Vec<Request> = processed.iter().map(|p| Request { input_ids: &p.input_ids, grids: &[] }).collect();
    let batch = model.embed_batch(&requests, None, pad, &mut Taps::disabled())?;
    let greedy = |logits: &Tensor| -> Result<Vec<u32>> {
        logits
            .to_vec2::<f32>()?
            .iter()
            .enumerate()
            .map(|(row, values)| neuron::model::argmax(values).with_context(|| format!("row {row}'s logits are NaN")))
            .collect()
    };
    let (mut seconds, mut tokens, mut caches) = (Vec::new(), Vec::new(), Vec::new());
    for round in 0..=runs {
        caches = (0..rows).map(|_| model.new_cache()).collect::<Vec<Cache>>();
        let mut logits = model.prefill_batch(&batch, &mut caches, &mut Taps::disabled())?;
        tokens = vec![Vec::with_capacity(steps + 1); rows];
        let started = Instant::now();
        for _ in 0..steps {
            let next = greedy(&logits)?;
            tokens.iter_mut().zip(&next).for_each(|(row, &t)| row.push(t));
            logits = model.decode_step_batch(&next, &mut caches)?;
        }
        let elapsed = started.elapsed().as_secs_f64();
        tokens.iter_mut().zip(greedy(&logits)?).for_each(|(row, t)| row.push(t));
        if round > 0 {
            seconds.push(elapsed);
        }
    }
    let throughput: Vec<f64> = seconds.iter().map(|s| (rows * steps) as f64 / s).collect();
    let (kv, linear) = cache_bytes(caches.first().context("a batch has rows")?);
    Ok(json!({
        "rows": rows,
        "row_tokens": processed.iter().map(|p| p.input_ids.len()).collect::<Vec<_>>(),
        "decode_steps": steps,
        "decode_seconds": seconds,
        "tokens_per_second": { "samples": throughput, "median": median(&throughput) },
        "tokens": tokens,
        "cache_bytes_per_row": { "kv": kv, "linear": linear },
    }))
}

/// One row's cache in bytes, from its tensors' shapes and dtype: (the keys and values of the
/// full-attention layers, the conv and recurrent states of the Gated DeltaNet layers). The keys
/// and values hold every position of the padded row, padding included, as the reference's do.
fn cache_bytes(cache: &Cache) -> (usize, usize) {
    let bytes = |t: &Tensor| t.elem_count() * t.dtype().size_in_bytes();
    let (mut kv, mut linear) = (0, 0);
    for layer in (0..cache.num_layers()).filter_map(|i| cache.layer(i)) {
        match layer {
            LayerState::Full(Some(s)) => kv += bytes(&s.key) + bytes(&s.value),
            LayerState::Linear(Some(s)) => linear += bytes(&s.conv) + bytes(&s.recurrent),
            LayerState::Full(None) | LayerState::Linear(None) => {}
        }
    }
    (kv, linear)
}

/// Bytes of weights (in the compute dtype) one decode step reads: every decoder layer, the
/// final norm and the `lm_head` (the embedding table contributes one row, the vision tower
/// nothing); of a sparse MoE block's routed experts only the k of E the token is routed to.
fn decode_weight_bytes(dir: &Path, config: &Config, dtype: neuron::ComputeDtype) -> Result<f64> {
    let checkpoint = neuron::weights::Checkpoint::open(dir)?;
    let routed = config.text_config.moe.as_ref().map_or(1.0, |m| m.num_experts_per_tok as f64 / m.num_experts as f64);
    let mut params = 0.0;
    for name in checkpoint.names() {
        let read =
            (name.starts_with("model.language_model.") && !name.contains("embed_tokens")) || name == "lm_head.weight";
        if read {
            let share = if name.contains(".mlp.experts.") { routed } else { 1.0 };
            params += share * checkpoint.shape(name)?.iter().product::<usize>() as f64;
        }
    }
    Ok(neuron::precision::candle_dtype(dtype).size_in_bytes() as f64 * params)
}

/// The machine's memory read bandwidth with this process's threads: the best of five passes
/// over a 2 GiB buffer, split over the rayon pool (the decode step's access pattern: stream
/// every byte once). Wrapping integer sums, which the compiler vectorises: an f32 sum is a
/// chain of dependent adds and would measure the adder's latency, not the memory.
fn memory_bandwidth_gbs() -> f64 {
    use rayon::prelude::*;
    let buffer: Vec<u64> = (0..1u64 << 28).collect();
    let mut best = f64::INFINITY;
    for _ in 0..5 {
        let t = Instant::now();
        let sum: u64 = buffer
            .par_chunks(1 << 16)
            .map(|c| c.iter().fold(0u64, |a, &x| a.wrapping_add(x)))
            .reduce(|| 0, u64::wrapping_add);
        std::hint::black_box(sum);
        best = best.min(t.elapsed().as_secs_f64());
    }
    (buffer.len() * 8) as f64 / best / 1e9
}

fn median(samples: &[f64]) -> f64 {
    let mut sorted = samples.to_vec();
    sorted.sort_by(f64::total_cmp);
    match sorted.len() {
        0 => f64::NAN,
        n if n % 2 == 1 => sorted[n / 2],
        n => (sorted[n / 2 - 1] + sorted[n / 2]) / 2.0,
    }
}

/// One warm-up, then `runs` timed calls: every sample and the median, in seconds.
fn time<T>(runs: usize, mut f: impl FnMut() -> Result<T>) -> Result<serde_json::Value> {
    f()?;
    let mut samples = Vec::with_capacity(runs);
    for _ in 0..runs {
        let t = Instant::now();
        std::hint::black_box(f()?);
        samples.push(t.elapsed().as_secs_f64());
    }
    Ok(json!({ "samples_seconds": samples, "median_seconds": median(&samples) }))
}

fn peak_rss_bytes() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let kb: u64 = status.lines().find(|l| l.starts_with("VmHWM:"))?.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024)
}
