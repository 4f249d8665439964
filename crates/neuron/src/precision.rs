//! Computing in bf16 where the reference does, the way PyTorch's CPU kernels round.
//!
//! The model runs in one compute dtype: f32 (the default) or bf16 (the dtype checkpoints ship
//! and are served in; `from_pretrained(dtype=torch.bfloat16)` on the reference side). Weights
//! are held in the compute dtype (an f32 checkpoint is rounded to bf16 on load, as the
//! reference's loader rounds it) and so are activations and the attention and conv caches.
//! What PyTorch does with bf16 tensors on the CPU, measured on torch 2.15 (exact equality of
//! every element unless said otherwise):
//!
//! - a linear layer, a batched matmul, a convolution: bf16 inputs and weights multiplied
//!   with f32 accumulation, the bias added in f32, the sum rounded to bf16 once (a handful of
//!   elements in 10⁵ differ, by the summation order near a rounding tie). Rounding before
//!   the bias instead changes 27 % of the elements. candle rounds its bf16 matmul once too
//!   (it widens to f32) but adds a bias in bf16 after it, hence [`Linear`];
//! - an element-wise function (SiLU, sigmoid, GELU in both forms, exp) and `LayerNorm`: each
//!   element computed in f32 from the bf16 input and rounded once. candle computes SiLU and
//!   sigmoid in bf16 arithmetic with a rounding per step, hence [`in_f32`];
//! - a bf16 tensor times a Python float: the product in f32 (the scalar is not rounded to
//!   bf16 first), rounded once. candle's `affine` rounds the scalar to bf16 first, so scaling
//!   goes through [`in_f32`] as well;
//! - a bf16 tensor plus or times a bf16 tensor: computed in f32, rounded once — the same as
//!   candle's bf16 binary ops (`half` widens both operands), so those run as they are;
//! - a bf16 tensor times an f32 tensor (both with dimensions): promoted to f32, no rounding.
//!
//! Where the reference itself upcasts (`.float()`, `.to(torch.float32)`, `dtype=`), the port
//! upcasts at the same place and rounds back at the same place; each module lists those
//! places in its header. In f32 every helper here is the identity on the computation: the f32
//! path is bit for bit what it was before the compute dtype existed.

use anyhow::{ensure, Context, Result};
use candle_core::{DType, Device, Module, Tensor};
use candle_nn::VarBuilder;

/// The compute dtypes a model can be built in.
pub fn check_compute_dtype(dtype: DType) -> Result<()> {
    ensure!(matches!(dtype, DType::F32 | DType::BF16), "the model computes in f32 or bf16, not {dtype:?}");
    Ok(())
}

/// A compute dtype by name: `f32` / `float32` or `bf16` / `bfloat16` (as a command line or a
/// manifest field `dtype = "bf16"` would spell it).
pub fn parse_compute_dtype(name: &str) -> Result<DType> {
    match name {
        "f32" | "float32" => Ok(DType::F32),
        "bf16" | "bfloat16" => Ok(DType::BF16),
        other => anyhow::bail!("unknown compute dtype {other:?}: f32 or bf16"),
    }
}

/// `f` applied to `x` in f32 and the result rounded back to `x`'s dtype once: PyTorch's CPU
/// kernels of a bf16 element-wise function or reduction (and `x.float()` … `.to(bf16)` around
/// several ops, where the reference writes it). For an f32 `x` this is `f(x)`.
pub fn in_f32(x: &Tensor, f: impl FnOnce(&Tensor) -> Result<Tensor>) -> Result<Tensor> {
    if x.dtype() == DType::F32 {
        return f(x);
    }
    Ok(f(&x.to_dtype(DType::F32)?)?.to_dtype(x.dtype())?)
}

/// SiLU (`ACT2FN["silu"]`, `F.silu`) as PyTorch computes it in any dtype.
pub fn silu(x: &Tensor) -> Result<Tensor> {
    in_f32(x, |x| Ok(candle_nn::ops::silu(x)?))
}

/// `torch.sigmoid` as PyTorch computes it in any dtype.
pub fn sigmoid(x: &Tensor) -> Result<Tensor> {
    in_f32(x, |x| Ok(candle_nn::ops::sigmoid(x)?))
}

/// `softmax(x, dim=-1, dtype=torch.float32).to(x.dtype)`, the reference's eager attention: the
/// bf16 scores upcast, the softmax in f32, the probabilities rounded once.
pub fn softmax_last_dim(x: &Tensor) -> Result<Tensor> {
    in_f32(x, |x| Ok(candle_nn::ops::softmax_last_dim(x)?))
}

/// `x * scale` with a Python float: in f32, rounded once (candle's bf16 `affine` would round
/// `scale` to bf16 first).
pub fn scale(x: &Tensor, scale: f64) -> Result<Tensor> {
    in_f32(x, |x| Ok((x * scale)?))
}

/// `nn.Linear` in the weight's dtype: for bf16, the product accumulated in f32 with the bias
/// added in f32 and one rounding (`F.linear` on bf16 tensors); for f32, candle's `Linear` over
/// the weight stored transposed.
///
/// Why transposed: candle multiplies `x · Wᵀ` with `W` as the checkpoint stores it ([out, in]),
/// so the right operand is a strided view and `gemm` re-packs it on every call. Stored once as
/// a contiguous [in, out] buffer, the same product ran at 421 GFLOP/s instead of 271 at the
/// prefill shapes (2 threads, 78 % against 50 % of this host's measured peak; 8 rows: 53 against
/// 9), and no extra memory: the [out, in] weight is dropped. The summation order is gemm's
/// either way but not always the same one, so outputs move by f32 rounding.
#[derive(Debug, Clone)]
pub struct Linear {
    inner: candle_nn::Linear,
}

impl Linear {
    /// `weight` is [out, in] as the checkpoint stores it; `bias` [out].
    pub fn new(weight: Tensor, bias: Option<Tensor>) -> Linear {
        let weight = if weight.dtype() == DType::F32 && weight.rank() == 2 {
            // An error here can only be an allocation failure; keep the weight as it is then.
            transposed(&weight).and_then(|wt| Ok(wt.t()?)).unwrap_or(weight)
        } else {
            weight
        };
        Linear { inner: candle_nn::Linear::new(weight, bias) }
    }

    /// The weight, [out, in] (for f32, a transposed view of the stored [in, out] buffer).
    pub fn weight(&self) -> &Tensor {
        self.inner.weight()
    }
}

impl Module for Linear {
    /// x [..., in] → [..., out]
    fn forward(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        if self.inner.weight().dtype() == DType::F32 {
            // All rows in one 2-D product: candle's `Linear` would broadcast the weight over a
            // leading batch dimension and multiply batch by batch.
            let dims = x.dims();
            if dims.len() > 2 {
                let (rows, out) = (x.elem_count() / dims[dims.len() - 1].max(1), self.inner.weight().dim(0)?);
                let mut shape = dims.to_vec();
                *shape.last_mut().unwrap() = out;
                return self.inner.forward(&x.reshape((rows, dims[dims.len() - 1]))?)?.reshape(shape);
            }
            return self.inner.forward(x);
        }
        linear_bf16(x, self.inner.weight(), self.inner.bias()).map_err(|e| candle_core::Error::Msg(format!("{e:#}")))
    }
}

/// `w` [rows, cols] (f32) → its transpose [cols, rows], contiguous, on all cores. Each 64 × 64
/// tile is copied row by row into a buffer and written out row by row: both sides then move
/// whole runs of 256 bytes. Writing a tile straight through, one element per output row, kept
/// 64 lines 4 KB-multiples apart live at once (a 5120 × 17408 weight has rows 68 KB long), which
/// all fall into one set of the L1 cache: 0.67 s for that weight, against 0.17 s now (0.12 s of
/// it faulting in the new buffer).
fn transposed(w: &Tensor) -> Result<Tensor> {
    use rayon::prelude::*;
    const TILE: usize = 64;
    let (rows, cols) = w.dims2()?;
    let w = w.contiguous()?;
    let (storage, layout) = w.storage_and_layout();
    let candle_core::Storage::Cpu(cpu) = &*storage else { anyhow::bail!("the weight is not on the CPU") };
    let (start, end) = layout.contiguous_offsets().context("a contiguous weight")?;
    let src = &cpu.as_slice::<f32>()?[start..end];
    let mut out = vec![0f32; rows * cols];
    // Each task writes TILE whole rows of the transpose (TILE columns of w).
    out.par_chunks_mut(TILE * rows.max(1)).enumerate().for_each(|(block, dst)| {
        let c0 = block * TILE;
        let width = dst.len() / rows.max(1);
        let mut tile = [[0f32; TILE]; TILE];
        for r0 in (0..rows).step_by(TILE) {
            let height = TILE.min(rows - r0);
            for (r, line) in tile.iter_mut().enumerate().take(height) {
                let at = (r0 + r) * cols + c0;
                line[..width].copy_from_slice(&src[at..at + width]);
            }
            for c in 0..width {
                let row = &mut dst[c * rows + r0..c * rows + r0 + height];
                for (r, v) in row.iter_mut().enumerate() {
                    *v = tile[r][c];
                }
            }
        }
    });
    drop(storage);
    Ok(Tensor::from_vec(out, (cols, rows), w.device())?)
}

/// Rows of x at most this many go through [`dot_rows`], which reads the bf16 weight as it is;
/// more rows are multiplied by candle's f32 `gemm` against the weight widened once.
const STREAMED_ROWS: usize = 16;

/// `F.linear(x, w, b)` for a bf16 weight [out, in]: x [..., in] (any float dtype, taken as its
/// bf16 values) → [..., out] in bf16, each output the f32 sum of the products (bf16 × bf16 is
/// exact in f32) plus the bias in f32, rounded once. The summation order is not MKL's, which
/// moves an output only where the f32 sum sits next to a rounding tie.
///
/// A decode step (a few rows) streams the bf16 weight once through [`dot_rows`], converting as
/// it goes: half the bytes of an f32 weight, which is what a memory-bound step costs. More rows
/// widen the weight to f32 block by block on all cores and multiply each block with `gemm`,
/// whose blocking a prefill needs.
pub fn linear_bf16(x: &Tensor, w: &Tensor, bias: Option<&Tensor>) -> Result<Tensor> {
    linear_bf16_in_blocks(x, w, bias, WIDE_BLOCK_FLOATS)
}

/// [`linear_bf16`] with the widened blocks of `block_floats` floats (tests use small ones).
fn linear_bf16_in_blocks(x: &Tensor, w: &Tensor, bias: Option<&Tensor>, block_floats: usize) -> Result<Tensor> {
    use rayon::prelude::*;
    let (out_dim, in_dim) = w.dims2()?;
    let dims = x.dims().to_vec();
    ensure!(dims.last() == Some(&in_dim), "linear of {in_dim} inputs applied to {dims:?}");
    let rows = x.elem_count() / in_dim.max(1);
    let x32 = x.to_dtype(DType::BF16)?.to_dtype(DType::F32)?.reshape((rows, in_dim))?;
    let w = w.to_dtype(DType::BF16)?.contiguous()?;
    let out = if rows <= STREAMED_ROWS {
        let xs = x32.flatten_all()?.to_vec1::<f32>()?;
        let (storage, layout) = w.storage_and_layout();
        let candle_core::Storage::Cpu(cpu) = &*storage else { anyhow::bail!("linear_bf16 runs on the CPU") };
        let (start, end) = layout.contiguous_offsets().context("a contiguous weight")?;
        let weights = &cpu.as_slice::<half::bf16>()?[start..end];
        // Output features in blocks, each block's [features, rows] written by one task.
        const BLOCK: usize = 32;
        let mut out_t = vec![0f32; out_dim * rows];
        out_t.par_chunks_mut(BLOCK * rows).enumerate().for_each(|(b, dst)| {
            for (f, dst_row) in dst.chunks_mut(rows).enumerate() {
                let j = b * BLOCK + f;
                dot_rows(&xs, &weights[j * in_dim..(j + 1) * in_dim], dst_row);
            }
        });
        Tensor::from_vec(out_t, (out_dim, rows), &Device::Cpu)?.t()?.contiguous()?
    } else {
        let xs = x32.flatten_all()?.to_vec1::<f32>()?;
        let (storage, layout) = w.storage_and_layout();
        let candle_core::Storage::Cpu(cpu) = &*storage else { anyhow::bail!("linear_bf16 runs on the CPU") };
        let (start, end) = layout.contiguous_offsets().context("a contiguous weight")?;
        let weights = &cpu.as_slice::<half::bf16>()?[start..end];
        let mut out = vec![0f32; rows * out_dim];
        // Blocks of weight rows (output features) widened into a buffer kept per thread, about
        // 16 MB: the widened block is still in cache when gemm packs it, and no page is faulted in
        // per call (a whole widened 27B MLP matrix would be 356 MB).
        let block = (block_floats / in_dim.max(1)).clamp(16, out_dim.max(16));
        WIDE.with_borrow_mut(|wide| {
            for j0 in (0..out_dim).step_by(block) {
                let cols = block.min(out_dim - j0);
                wide.resize(cols * in_dim, 0.0);
                wide.par_chunks_mut(1 << 14)
                    .zip(weights[j0 * in_dim..(j0 + cols) * in_dim].par_chunks(1 << 14))
                    .for_each(|(d, s)| d.iter_mut().zip(s).for_each(|(d, s)| *d = widen(*s)));
                let threads = candle_core::utils::get_num_threads();
                let parallelism = if threads > 1 { gemm::Parallelism::Rayon(threads) } else { gemm::Parallelism::None };
                // SAFETY: dst is rows × out_dim (row stride out_dim) and columns j0..j0 + cols
                // are inside it; lhs is rows × in_dim row-major; rhs is the transposed block,
                // element (k, j) at wide[j · in_dim + k]. All three live through the call.
                unsafe {
                    gemm::gemm(
                        rows,
                        cols,
                        in_dim,
                        out.as_mut_ptr().add(j0),
                        1,
                        out_dim as isize,
                        false,
                        xs.as_ptr(),
                        1,
                        in_dim as isize,
                        wide.as_ptr(),
                        in_dim as isize,
                        1,
                        0.0,
                        1.0,
                        false,
                        false,
                        false,
                        parallelism,
                    )
                };
            }
        });
        drop(storage);
        Tensor::from_vec(out, (rows, out_dim), &Device::Cpu)?
    };
    let out = match bias {
        Some(b) => out.broadcast_add(&b.to_dtype(DType::BF16)?.to_dtype(DType::F32)?)?,
        None => out,
    };
    let mut shape = dims;
    *shape.last_mut().unwrap() = out_dim;
    Ok(out.to_dtype(DType::BF16)?.reshape(shape)?)
}

/// The size of a widened block of weight rows, in floats (16 MB).
const WIDE_BLOCK_FLOATS: usize = 1 << 22;

thread_local! {
    /// The buffer a block of bf16 weight rows is widened into (see [`linear_bf16`]).
    static WIDE: std::cell::RefCell<Vec<f32>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// A bf16 value widened to f32 (exactly: its bits are the f32's upper half).
#[inline(always)]
fn widen(v: half::bf16) -> f32 {
    f32::from_bits(u32::from(v.to_bits()) << 16)
}

/// `out[i] = Σ_k xs[i·K + k] · w[k]` for each row i of xs (row length K = `w.len()`), in f32:
/// 64 interleaved partial sums (4 × 16 lanes, so that AVX-512 keeps four independent chains),
/// added in a fixed order, then the tail. The order is the same whatever instruction set runs
/// it (the lanes are explicit, nothing is reassociated), so results do not depend on the machine.
fn dot_rows(xs: &[f32], w: &[half::bf16], out: &mut [f32]) {
    #[cfg(target_arch = "x86_64")]
    {
        if std::arch::is_x86_feature_detected!("avx512f") {
            // SAFETY: the CPU has AVX-512F (checked above).
            return unsafe { dot_rows_avx512(xs, w, out) };
        }
        if std::arch::is_x86_feature_detected!("avx2") {
            // SAFETY: the CPU has AVX2 (checked above).
            return unsafe { dot_rows_avx2(xs, w, out) };
        }
    }
    dot_rows_generic(xs, w, out)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn dot_rows_avx512(xs: &[f32], w: &[half::bf16], out: &mut [f32]) {
    dot_rows_generic(xs, w, out)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn dot_rows_avx2(xs: &[f32], w: &[half::bf16], out: &mut [f32]) {
    dot_rows_generic(xs, w, out)
}

#[inline(always)]
fn dot_rows_generic(xs: &[f32], w: &[half::bf16], out: &mut [f32]) {
    const LANES: usize = 64;
    let k = w.len();
    let body = k - k % LANES;
    for (x, o) in xs.chunks_exact(k).zip(out.iter_mut()) {
        let mut acc = [0f32; LANES];
        for (xc, wc) in x[..body].chunks_exact(LANES).zip(w[..body].chunks_exact(LANES)) {
            for l in 0..LANES {
                acc[l] += xc[l] * widen(wc[l]);
            }
        }
        let mut sum = 0f32;
        for a in acc {
            sum += a;
        }
        for (xv, wv) in x[body..].iter().zip(&w[body..]) {
            sum += xv * widen(*wv);
        }
        *o = sum;
    }
}

/// `nn.Linear(in_dim, out_dim, bias=True)` read from `vb` in its dtype.
pub fn linear(in_dim: usize, out_dim: usize, vb: VarBuilder) -> Result<Linear> {
    linear_b(in_dim, out_dim, true, vb)
}

/// `nn.Linear(in_dim, out_dim, bias=False)` read from `vb` in its dtype.
pub fn linear_no_bias(in_dim: usize, out_dim: usize, vb: VarBuilder) -> Result<Linear> {
    linear_b(in_dim, out_dim, false, vb)
}

/// `nn.Linear(in_dim, out_dim, bias=bias)` read from `vb` in its dtype.
pub fn linear_b(in_dim: usize, out_dim: usize, bias: bool, vb: VarBuilder) -> Result<Linear> {
    let weight = vb.get((out_dim, in_dim), "weight")?;
    let bias = if bias { Some(vb.get(out_dim, "bias")?) } else { None };
    Ok(Linear::new(weight, bias))
}

/// A parameter as the reference reads it after `.float()`: stored in the compute dtype (so
/// an f32 checkpoint loaded in bf16 is rounded first, as `from_pretrained` rounds it), then
/// widened to f32. For an f32 model this is the parameter itself.
pub fn get_f32<S: Into<candle_core::Shape>>(vb: &VarBuilder, shape: S, name: &str) -> Result<Tensor> {
    Ok(vb.get(shape, name)?.to_dtype(DType::F32)?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;
    use half::bf16;

    fn bf(values: &[f32]) -> Tensor {
        Tensor::new(values, &Device::Cpu).unwrap().to_dtype(DType::BF16).unwrap()
    }

    fn values(t: &Tensor) -> Vec<f32> {
        t.to_dtype(DType::F32).unwrap().flatten_all().unwrap().to_vec1().unwrap()
    }

    /// SiLU of a bf16 tensor is SiLU of its f32 value rounded once, which bf16 arithmetic
    /// step by step (candle's bf16 kernel) is not for some inputs.
    #[test]
    fn silu_and_sigmoid_of_bf16_round_once_from_f32() {
        let xs: Vec<f32> = (-400..400).map(|i| bf16::from_f32(i as f32 * 0.0173).to_f32()).collect();
        let x = bf(&xs);
        let (ours, sig) = (values(&silu(&x).unwrap()), values(&sigmoid(&x).unwrap()));
        let stepwise = values(&candle_nn::ops::silu(&x).unwrap());
        let mut differs = 0;
        for (i, &v) in xs.iter().enumerate() {
            let s = 1.0 / (1.0 + (-v).exp());
            assert_eq!(ours[i], bf16::from_f32(v * s).to_f32(), "silu({v})");
            assert_eq!(sig[i], bf16::from_f32(s).to_f32(), "sigmoid({v})");
            differs += usize::from(stepwise[i] != ours[i]);
        }
        assert!(differs > 0, "bf16 step-by-step SiLU should differ somewhere from one rounding");
    }

    /// A bf16 linear layer with a bias rounds once after the bias (F.linear), not after the
    /// product and again after the bias.
    #[test]
    fn a_bf16_linear_adds_its_bias_before_the_one_rounding() {
        // 1 + 2^-8 is a tie between two bf16 neighbours once rounded alone (to 1.0); with the
        // bias 2^-8 added in f32 first the sum 1 + 2^-7 is exact.
        let x = bf(&[1.0, 1.0 / 256.0]).reshape((1, 2)).unwrap();
        let w = bf(&[1.0, 1.0]).reshape((1, 2)).unwrap();
        let b = bf(&[1.0 / 256.0]);
        let y = values(&Linear::new(w, Some(b.clone())).forward(&x).unwrap());
        assert_eq!(y, [1.0 + 1.0 / 128.0], "x·w + b rounded once");
        let product = x.matmul(&bf(&[1.0, 1.0]).reshape((2, 1)).unwrap()).unwrap();
        let twice = values(&product.broadcast_add(&bf(&[1.0 / 256.0])).unwrap());
        assert_eq!(twice, [1.0], "rounded after the product, then after the bias");
    }

    /// Both ways of multiplying (the weight streamed for a few rows, widened for more) give the
    /// exact sum plus bias rounded once, on inputs whose every partial sum is exact in f32 (so
    /// the summation order cannot matter); 3-D inputs keep their leading dimensions.
    #[test]
    fn a_bf16_linear_streams_a_few_rows_and_widens_for_many_with_the_same_rounding() {
        let (k, n) = (200, 40);
        let grid = |i: usize, m: usize| ((i * m % 127) as f32 - 63.0) / 8.0;
        let w: Vec<f32> = (0..n * k).map(|i| grid(i, 31)).collect();
        let b: Vec<f32> = (0..n).map(|i| grid(i, 7) / 64.0).collect();
        let linear = Linear::new(bf(&w).reshape((n, k)).unwrap(), Some(bf(&b)));
        for rows in [1, 3, 16, 17, 40] {
            let x: Vec<f32> = (0..rows * k).map(|i| grid(i, 53)).collect();
            let x = bf(&x).reshape((1, rows, k)).unwrap();
            let got = values(&linear.forward(&x).unwrap());
            // Blocks of 16 weight rows: 16 + 16 + 8.
            let blocked = linear_bf16_in_blocks(&x, linear.inner.weight(), linear.inner.bias(), 16 * k).unwrap();
            assert_eq!(values(&blocked), got, "{rows} rows in blocks");
            let x: Vec<f32> = values(&x);
            let mut expected = Vec::new();
            for i in 0..rows {
                for j in 0..n {
                    let exact: f64 = (0..k).map(|c| f64::from(x[i * k + c]) * f64::from(w[j * k + c])).sum();
                    expected.push(bf16::from_f64(exact + f64::from(b[j])).to_f32());
                }
            }
            assert_eq!(got, expected, "{rows} rows");
        }
    }

    #[test]
    fn scaling_a_bf16_tensor_keeps_the_scalar_in_f32() {
        let s = 72f64.powf(-0.5);
        let xs: Vec<f32> = (-300..300).map(|i| bf16::from_f32(i as f32 * 0.0371).to_f32()).collect();
        let x = bf(&xs);
        let expected: Vec<f32> = xs.iter().map(|&v| bf16::from_f32(v * s as f32).to_f32()).collect();
        assert_eq!(values(&scale(&x, s).unwrap()), expected);
        assert_ne!(values(&(&x * s).unwrap()), expected, "candle's bf16 affine rounds the scalar first");
    }

    #[test]
    fn f32_tensors_go_through_unchanged() {
        let x = Tensor::new(&[0.1f32, -2.0, 7.5], &Device::Cpu).unwrap();
        assert_eq!(values(&silu(&x).unwrap()), values(&candle_nn::ops::silu(&x).unwrap()));
        assert_eq!(values(&scale(&x, 0.3).unwrap()), values(&(&x * 0.3).unwrap()));
        let w = Tensor::new(&[[0.5f32, 0.25, -1.0]], &Device::Cpu).unwrap();
        let linear = Linear::new(w.clone(), Some(Tensor::new(&[0.125f32], &Device::Cpu).unwrap()));
        let plain = candle_nn::Linear::new(w, Some(Tensor::new(&[0.125f32], &Device::Cpu).unwrap()));
        let x = x.reshape((1, 3)).unwrap();
        assert_eq!(values(&linear.forward(&x).unwrap()), values(&plain.forward(&x).unwrap()));
        assert!(check_compute_dtype(DType::F16).is_err() && check_compute_dtype(DType::BF16).is_ok());
    }

    /// The f32 linear stores its weight transposed; products of 1, 17 and 277 rows (2-D and
    /// 3-D inputs, ragged weight shapes that cross the 64 × 64 transpose tiles) equal candle's
    /// own `Linear` over the untransposed weight to f32 rounding (gemm takes another path for a
    /// contiguous right operand, so the summation order may differ).
    #[test]
    fn an_f32_linear_on_its_transposed_weight_computes_what_candles_linear_computes() {
        for (out_dim, in_dim) in [(1, 1), (3, 130), (65, 64), (129, 70)] {
            let w = Tensor::randn(0f32, 1.0, (out_dim, in_dim), &Device::Cpu).unwrap();
            let b = Tensor::randn(0f32, 1.0, out_dim, &Device::Cpu).unwrap();
            let ours = Linear::new(w.clone(), Some(b.clone()));
            assert!(ours.weight().t().unwrap().is_contiguous(), "{out_dim}×{in_dim}: the weight is stored [in, out]");
            assert_eq!(values(ours.weight()), values(&w), "{out_dim}×{in_dim}: the weight as [out, in]");
            let plain = candle_nn::Linear::new(w, Some(b));
            for rows in [1, 17, 277] {
                let x = Tensor::randn(0f32, 1.0, (1, rows, in_dim), &Device::Cpu).unwrap();
                let (got, expected) = (ours.forward(&x).unwrap(), plain.forward(&x).unwrap());
                assert_eq!(got.dims(), [1, rows, out_dim], "{rows} rows of {in_dim}");
                let (got, expected) = (values(&got), values(&expected));
                let worst = got.iter().zip(&expected).map(|(a, b)| (a - b).abs()).fold(0f32, f32::max);
                // f32 summation error only (terms ~1, sums ~√in): a wrong index or a lost
                // bias is off by about 1.
                assert!(worst <= 1e-6 * in_dim as f32, "{rows}×{in_dim} · {in_dim}×{out_dim}: off by {worst:e}");
            }
        }
    }

    #[test]
    fn compute_dtypes_are_named_as_torch_and_numpy_name_them() {
        assert_eq!(parse_compute_dtype("bf16").unwrap(), DType::BF16);
        assert_eq!(parse_compute_dtype("bfloat16").unwrap(), DType::BF16);
        assert_eq!(parse_compute_dtype("float32").unwrap(), DType::F32);
        let err = parse_compute_dtype("f16").unwrap_err().to_string();
        assert!(err.contains("\"f16\"") && err.contains("f32 or bf16"), "{err}");
    }
}
