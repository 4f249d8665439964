//! Rates of `neuron::kernels::gemm_bf16` (bf16 × bf16 → f32, weight packed at load) at the model's
//! linear shapes, against the path the bf16 model has used so far: candle's
//! `x.to_dtype(F32).matmul(&w_f32.t())` with the weight widened to f32 once.
//!
//! Each rate is the best of 5 runs after a warm-up, in GFLOP/s (2·rows·k·n flop), and with
//! `--peak G` as a percentage of a bf16 peak of G GFLOP/s: `cargo xtask host` measures this
//! host's clock and prints its peak (threads × clock × 128 flop per cycle with AVX-512 BF16).
//!
//! `RAYON_NUM_THREADS=2 cargo run -p neuron --release --example gemm_bf16_rate [-- --no-candle] [--peak G] [K×N ...]`

use std::time::Instant;

use anyhow::Result;
use candle_core::{DType, Device, Tensor};
use half::bf16;
use neuron::kernels::gemm_bf16::{kernel_name, PackedBf16};

/// (k, n) of the model's linear layers, and the row counts each is timed at.
const SHAPES: &[(usize, usize, &[usize])] = &[
    (5120, 17408, &[1, 16, 277]),
    (17408, 5120, &[1, 16, 277]),
    (5120, 10240, &[1, 16, 277]),
    (5120, 6144, &[1, 16, 277]),
    (6144, 5120, &[1, 16, 277]),
    (5120, 8192, &[1, 16, 277]),
    (1152, 3456, &[1, 16, 277, 784]),
    (1152, 4304, &[1, 16, 277, 784]),
    (4304, 1152, &[1, 16, 277, 784]),
    // One chunk of the 248320-wide output head.
    (5120, 16384, &[1, 16, 277]),
];

/// Best of 5 seconds after one warm-up run.
fn best_of_five(mut f: impl FnMut() -> Result<()>) -> Result<f64> {
    f()?;
    let mut best = f64::INFINITY;
    for _ in 0..5 {
        let t = Instant::now();
        f()?;
        best = best.min(t.elapsed().as_secs_f64());
    }
    Ok(best)
}

/// Deterministic bf16 in about ±4 (xorshift64*), fast enough for 10⁸ values.
fn random_bf16(len: usize, seed: u64) -> Vec<bf16> {
    let mut s = seed | 1;
    (0..len)
        .map(|_| {
            s ^= s >> 12;
            s ^= s << 25;
            s ^= s >> 27;
            let r = s.wrapping_mul(0x2545_f491_4f6c_dd1d);
            bf16::from_f32(((r >> 40) as f32 / (1u64 << 24) as f32 - 0.5) * 8.0)
        })
        .collect()
}

fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let with_candle = !args.iter().any(|a| a == "--no-candle");
    let peak = match args.iter().position(|a| a == "--peak") {
        Some(i) => Some(
            args.get(i + 1)
                .and_then(|v| v.parse::<f64>().ok())
                .ok_or_else(|| anyhow::anyhow!("--peak wants GFLOP/s (cargo xtask host prints the bf16 peak)"))?,
        ),
        None => None,
    };
    let only: Vec<&String> = args
        .iter()
        .enumerate()
        .filter(|(i, a)| !a.starts_with("--") && args.get(i.wrapping_sub(1)).map(String::as_str) != Some("--peak"))
        .map(|(_, a)| a)
        .collect();
    if std::env::var("RAYON_NUM_THREADS").is_err() {
        eprintln!("note: RAYON_NUM_THREADS is not set (the reference numbers use 2)");
    }
    let threads = rayon::current_num_threads();
    println!(
        "kernel {}, {threads} threads, bf16 peak {}",
        kernel_name(),
        peak.map_or("not given (--peak)".to_string(), |p| format!("{p:.0} GFLOP/s"))
    );
    println!(
        "{:>5} {:>6} {:>6} | {:>16} | {:>16} | {:>7} | {:>8}",
        "rows", "k", "n", "packed GFLOP/s", "candle GFLOP/s", "speedup", "max diff"
    );
    for &(k, n, row_counts) in SHAPES {
        if !only.is_empty() && !only.iter().any(|s| **s == format!("{k}x{n}")) {
            continue;
        }
        let w = random_bf16(n * k, (k * 31 + n) as u64);
        let t = Instant::now();
        let packed = PackedBf16::pack(&w, n, k);
        let pack_s = t.elapsed().as_secs_f64();
        let w32 =
            if with_candle { Some(Tensor::from_vec(w, (n, k), &Device::Cpu)?.to_dtype(DType::F32)?) } else { None };
        for &rows in row_counts {
            let x = random_bf16(rows * k, rows as u64);
            let mut out = vec![0f32; rows * n];
            let flop = 2.0 * (rows * k * n) as f64;
            let s = best_of_five(|| {
                packed.matmul(&x, rows, &mut out);
                Ok(())
            })?;
            let rate = flop / s / 1e9;
            let (candle, diff) = match &w32 {
                Some(w32) => {
                    let xt = Tensor::from_vec(x.clone(), (rows, k), &Device::Cpu)?;
                    let mut result = None;
                    let s = best_of_five(|| {
                        result = Some(xt.to_dtype(DType::F32)?.matmul(&w32.t()?)?);
                        Ok(())
                    })?;
                    let theirs: Vec<f32> = result.expect("ran").flatten_all()?.to_vec1()?;
                    // Both are f32 sums of the same exact products: they differ by rounding only.
                    let diff =
                        out.iter().zip(&theirs).map(|(a, b)| (a - b).abs() / b.abs().max(1.0)).fold(0.0, f32::max);
                    (Some(flop / s / 1e9), Some(diff))
                }
                None => (None, None),
            };
            let cell = |r: Option<f64>| match (r, peak) {
                (Some(r), Some(p)) => format!("{r:7.1} ({:4.1} %)", 100.0 * r / p),
                (Some(r), None) => format!("{r:7.1}"),
                (None, _) => "-".to_string(),
            };
            println!(
                "{rows:>5} {k:>6} {n:>6} | {:>16} | {:>16} | {:>7} | {:>8}",
                cell(Some(rate)),
                cell(candle),
                candle.map_or("-".to_string(), |c| format!("{:.2}x", rate / c)),
                diff.map_or("-".to_string(), |d| format!("{d:.1e}")),
            );
        }
        println!("{:>5} {k:>6} {n:>6} | packed in {pack_s:.2} s, {:.0} MB", "", packed.bytes() as f64 / 1e6);
    }
    Ok(())
}
