//! The Rust side of `cargo xtask bench`'s GEMM rates: candle's f32 matmul on the CPU at each
//! shape of a JSON list (`[{"batch", "m", "k", "n"}]`, written by the xtask from the model's
//! weights), one warm-up and the best of five, as `script/gemm_rates.py` times torch. The
//! right operand is stored n × k and transposed, as `Linear` holds its weight and as QKᵀ reads
//! the keys. Threads from `RAYON_NUM_THREADS`. Writes the list back with `seconds` and `gflops`.
//! Each product runs as the model runs it: a weight-shaped one through `neuron::linear::Linear`
//! (f32: the weight stored transposed; bf16: packed for the VDPBF16PS kernel, one rounding), a
//! batched one (attention) through `neuron::linear::matmul`. With `--dtype bf16` the
//! operands are bf16.

use std::path::PathBuf;
use std::time::Instant;

use anyhow::{Context, Result};
use candle_core::{Device, Module, Tensor};
use clap::Parser;
use serde_json::{json, Value};

#[derive(Parser)]
struct Args {
    /// The shapes (JSON list of {batch, m, k, n}).
    #[arg(long)]
    shapes: PathBuf,
    #[arg(long)]
    out: PathBuf,
    /// The operand dtype: f32 or bf16.
    #[arg(long, default_value = "f32")]
    dtype: neuron::ComputeDtype,
}

fn main() -> Result<()> {
    let args = Args::parse();
    let shapes: Vec<Value> = serde_json::from_str(
        &std::fs::read_to_string(&args.shapes).with_context(|| format!("reading {}", args.shapes.display()))?,
    )?;
    let mut rates = Vec::with_capacity(shapes.len());
    for shape in &shapes {
        let dim = |key: &str| -> Result<usize> {
            Ok(shape[key].as_u64().with_context(|| format!("shape {shape} has no integer {key}"))? as usize)
        };
        let (batch, m, k, n) = (dim("batch")?, dim("m")?, dim("k")?, dim("n")?);
        let seconds = best_of_five(batch, m, k, n, args.dtype)?;
        let gflops = 2.0 * (batch * m * k * n) as f64 / seconds / 1e9;
        eprintln!("candle {batch} × {m}×{k} · {k}×{n}: {gflops:.1} GFLOP/s");
        rates.push(json!({ "batch": batch, "m": m, "k": k, "n": n, "seconds": seconds, "gflops": gflops }));
    }
    std::fs::write(
        &args.out,
        serde_json::to_string_pretty(&json!({
            "threads": candle_core::utils::get_num_threads(),
            "rates": rates,
        }))?,
    )?;
    Ok(())
}

fn best_of_five(batch: usize, m: usize, k: usize, n: usize, dtype: neuron::ComputeDtype) -> Result<f64> {
    let dtype = neuron::precision::candle_dtype(dtype);
    let (x, w) = if batch > 1 {
        (Tensor::randn(0f32, 1.0, (batch, m, k), &Device::Cpu)?, Tensor::randn(0f32, 1.0, (batch, n, k), &Device::Cpu)?)
    } else {
        (Tensor::randn(0f32, 1.0, (m, k), &Device::Cpu)?, Tensor::randn(0f32, 1.0, (n, k), &Device::Cpu)?)
    };
    let (x, w) = (x.to_dtype(dtype)?, w.to_dtype(dtype)?);
    // A weight-shaped product runs through the model's Linear (packing or transposing the weight
    // once, outside the timing, as loading does); batched ones (attention) through the
    // model's matmul.
    let linear = (batch == 1).then(|| neuron::linear::Linear::new(w.clone(), None));
    let product = || -> Result<Tensor> {
        Ok(match &linear {
            Some(l) => l.forward(&x)?,
            None => neuron::linear::matmul(&x, &w.t()?)?,
        })
    };
    std::hint::black_box(product()?);
    let mut best = f64::INFINITY;
    for _ in 0..5 {
        let t = Instant::now();
        std::hint::black_box(product()?);
        best = best.min(t.elapsed().as_secs_f64());
    }
    Ok(best)
}
