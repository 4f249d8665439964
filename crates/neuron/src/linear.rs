//! `nn.Linear` and attention's batched products in the compute dtype, on the kernels of
//! [`crate::kernels`]: the bf16 weight packed once for [`PackedBf16`] (or read where the
//! checkpoint is mapped and packed per call), the f32 weight stored transposed once. How each
//! rounds is [`crate::precision`]'s policy.

use std::sync::Arc;

use anyhow::{ensure, Context, Result};
use candle_core::{DType, Device, Module, Tensor};
use candle_nn::VarBuilder;

use crate::kernels::gemm_bf16::PackedBf16;
use crate::kernels::{gemm_f32, transpose::transposed};

/// `nn.Linear` in the weight's dtype: for bf16, the product accumulated in f32 with the bias
/// added in f32 and one rounding (`F.linear` on bf16 tensors), on the weight packed once for
/// [`PackedBf16`]'s kernel; for f32, candle's `Linear` over the weight stored transposed.
///
/// Why transposed: candle multiplies `x · Wᵀ` with `W` as the checkpoint stores it ([out, in]),
/// so the right operand is a strided view and `gemm` re-packs it on every call. Stored once as
/// a contiguous [in, out] buffer, the same product ran at 421 GFLOP/s instead of 271 at the
/// prefill shapes (2 threads, 78 % against 50 % of this host's measured peak; 8 rows: 53 against
/// 9), and no extra memory: the [out, in] weight is dropped. The summation order is gemm's
/// either way but not always the same one, so outputs move by f32 rounding.
#[derive(Clone)]
pub struct Linear {
    kind: Kind,
}

#[derive(Clone)]
enum Kind {
    /// candle's `Linear`; for f32 its weight is a transposed view of a contiguous [in, out].
    Candle(candle_nn::Linear),
    /// A bf16 weight packed for the kernel, and the bias.
    Bf16 { weight: Arc<PackedBf16>, bias: Option<Tensor> },
}

impl std::fmt::Debug for Linear {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.kind {
            Kind::Candle(l) => write!(f, "Linear({:?}, {:?})", l.weight().dims(), l.weight().dtype()),
            Kind::Bf16 { weight, .. } if weight.is_in_place() => {
                write!(f, "Linear([{}, {}], BF16 mapped)", weight.n(), weight.k())
            }
            Kind::Bf16 { weight, .. } => write!(f, "Linear([{}, {}], BF16 packed)", weight.n(), weight.k()),
        }
    }
}

impl Linear {
    /// A bf16 weight [out, in] where the checkpoint is mapped, read in place by the kernel
    /// ([`PackedBf16::in_place`]: the same bits as the packed weight); `bias` [out].
    pub fn mapped(weight: crate::weights::MappedBf16, bias: Option<Tensor>) -> Linear {
        let (n, k) = weight.dims();
        Linear { kind: Kind::Bf16 { weight: Arc::new(PackedBf16::in_place(Arc::new(weight), n, k)), bias } }
    }

    /// `weight` is [out, in] as the checkpoint stores it; `bias` [out].
    pub fn new(weight: Tensor, bias: Option<Tensor>) -> Linear {
        let kind = match weight.dtype() {
            DType::F32 if weight.rank() == 2 => {
                // An error here can only be an allocation failure; keep the weight as it is then.
                let weight = transposed(&weight).and_then(|wt| Ok(wt.t()?)).unwrap_or(weight);
                Kind::Candle(candle_nn::Linear::new(weight, bias))
            }
            DType::BF16 if weight.rank() == 2 => match packed(&weight) {
                Ok(weight) => Kind::Bf16 { weight: Arc::new(weight), bias },
                Err(_) => Kind::Candle(candle_nn::Linear::new(weight, bias)),
            },
            _ => Kind::Candle(candle_nn::Linear::new(weight, bias)),
        };
        Linear { kind }
    }
}

impl Module for Linear {
    /// x [..., in] → [..., out]
    fn forward(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        match &self.kind {
            Kind::Bf16 { weight, bias } => {
                linear_bf16(x, weight, bias.as_ref()).map_err(|e| candle_core::Error::Msg(format!("{e:#}")))
            }
            Kind::Candle(linear) => {
                if let Some(y) = one_row_f32(x, linear).map_err(|e| candle_core::Error::Msg(format!("{e:#}")))? {
                    return Ok(y);
                }
                // All rows in one 2-D product: candle's `Linear` would broadcast the weight over
                // a leading batch dimension and multiply batch by batch.
                let dims = x.dims();
                if dims.len() > 2 {
                    let (rows, out) = (x.elem_count() / dims[dims.len() - 1].max(1), linear.weight().dim(0)?);
                    let mut shape = dims.to_vec();
                    *shape.last_mut().unwrap() = out;
                    return linear.forward(&x.reshape((rows, dims[dims.len() - 1]))?)?.reshape(shape);
                }
                linear.forward(x)
            }
        }
    }
}

/// candle's `Linear` on one f32 row x [..., in] (a decode step) by [`gemm_f32::gemv`] on all
/// cores, with `gemm`'s bits; `None` for more rows, another dtype, or where `gemv` declines.
fn one_row_f32(x: &Tensor, linear: &candle_nn::Linear) -> Result<Option<Tensor>> {
    let weight = linear.weight().t()?; // [in, out], contiguous when stored transposed
    let (k, n) = weight.dims2()?;
    if x.dtype() != DType::F32 || weight.dtype() != DType::F32 || x.elem_count() != k || !weight.is_contiguous() {
        return Ok(None);
    }
    let xs: Vec<f32> = x.flatten_all()?.to_vec1()?;
    let (storage, layout) = weight.storage_and_layout();
    let candle_core::Storage::Cpu(cpu) = &*storage else { return Ok(None) };
    let (start, end) = layout.contiguous_offsets().context("a contiguous weight")?;
    let Some(out) = gemm_f32::gemv(&xs, &cpu.as_slice::<f32>()?[start..end], k, n) else { return Ok(None) };
    drop(storage);
    let mut shape = x.dims().to_vec();
    *shape.last_mut().context("a linear layer's input has a feature axis")? = n;
    let y = Tensor::from_vec(out, shape, &Device::Cpu)?;
    // As candle's `Linear` adds it: after the product, broadcast.
    Ok(Some(match linear.bias() {
        Some(bias) => y.broadcast_add(bias)?,
        None => y,
    }))
}

/// `torch.matmul(a, b)` of two batches as attention multiplies them: a [B, m, k] · b [B, k, n]
/// → [B, m, n] in a's dtype (any strides; `k.t()` is read as it is). In bf16, f32 sums
/// rounded once, as PyTorch's CPU `bmm` and as candle's do.
///
/// Why not candle's `matmul`: it runs one multi-threaded `gemm` per batch entry, and at
/// attention's shapes (16 heads × 784×72 · 72×784 in the vision tower) the threads spend more
/// time meeting than multiplying (81 GFLOP/s measured); here the batch entries are shared out
/// between the threads and each runs single-threaded (352 GFLOP/s for the same product, in
/// the GEMM-options study). In bf16, candle's `gemm` has no bf16 kernel (14 GFLOP/s for the
/// vision tower's P·V); here each entry's right operand is packed for [`PackedBf16`].
pub fn matmul(a: &Tensor, b: &Tensor) -> Result<Tensor> {
    matmul_grouped(a, b, 1)
}

/// [`matmul`] where `groups` consecutive entries of a share one entry of b: a [B, m, k] ·
/// b [B / groups, k, n] → [B, m, n], entry i multiplied by b's entry i / groups (grouped-query
/// attention's keys and values, read without `repeat_kv`'s copy). Each entry's product is the
/// one [`matmul`] computes on b repeated, bit for bit: the same operands, strides and kernel; in
/// bf16 each entry of b is packed once for its group instead of once per entry.
pub fn matmul_grouped(a: &Tensor, b: &Tensor, groups: usize) -> Result<Tensor> {
    let (batch, m, k) = a.dims3()?;
    let (batch_b, k_b, n) = b.dims3()?;
    ensure!(
        groups > 0 && batch == batch_b * groups && k == k_b,
        "matmul of {:?} and {:?} in groups of {groups}",
        a.dims(),
        b.dims()
    );
    match a.dtype() {
        DType::F32 => gemm_f32::batched(a, &b.to_dtype(DType::F32)?, batch, groups, m, k, n),
        DType::BF16 => {
            // Each entry of b, transposed to [n, k], is a linear layer's weight.
            let bt = b.to_dtype(DType::BF16)?.transpose(1, 2)?.contiguous()?.flatten_all()?.to_vec1::<half::bf16>()?;
            let a = a.contiguous()?.flatten_all()?.to_vec1::<half::bf16>()?;
            use rayon::prelude::*;
            let weights: Vec<PackedBf16> =
                (0..batch_b).into_par_iter().map(|j| PackedBf16::pack(&bt[j * n * k..(j + 1) * n * k], n, k)).collect();
            // The entries on all cores, each multiplied inside its own task: one entry is too
            // small to split between threads without them waiting on each other.
            let mut out = vec![half::bf16::ZERO; batch * m * n];
            out.par_chunks_mut((m * n).max(1)).enumerate().for_each(|(i, out)| {
                let mut sums = vec![0f32; m * n];
                weights[i / groups].matmul(&a[i * m * k..(i + 1) * m * k], m, &mut sums);
                for (o, s) in out.iter_mut().zip(&sums) {
                    *o = half::bf16::from_f32(*s);
                }
            });
            Ok(Tensor::from_vec(out, (batch, m, n), &Device::Cpu)?)
        }
        _ if groups == 1 => Ok(a.matmul(b)?),
        other => anyhow::bail!("grouped matmul in {other:?}"),
    }
}

/// A bf16 weight [out, in] packed for [`PackedBf16`].
fn packed(w: &Tensor) -> Result<PackedBf16> {
    let (n, k) = w.dims2()?;
    let w = w.contiguous()?;
    let (storage, layout) = w.storage_and_layout();
    let candle_core::Storage::Cpu(cpu) = &*storage else { anyhow::bail!("the weight is not on the CPU") };
    let (start, end) = layout.contiguous_offsets().context("a contiguous weight")?;
    Ok(PackedBf16::pack(&cpu.as_slice::<half::bf16>()?[start..end], n, k))
}

/// `F.linear(x, w, b)` for a packed bf16 weight [out, in]: x [..., in] (any float dtype, taken
/// as its bf16 values) → [..., out] in bf16, each output the f32 sum of the products (bf16 ×
/// bf16 is exact in f32) plus the bias in f32, rounded once. The summation order is not
/// MKL's, which moves an output only where the f32 sum sits next to a rounding tie.
pub fn linear_bf16(x: &Tensor, w: &PackedBf16, bias: Option<&Tensor>) -> Result<Tensor> {
    use rayon::prelude::*;
    let (out_dim, in_dim) = (w.n(), w.k());
    let dims = x.dims().to_vec();
    ensure!(dims.last() == Some(&in_dim), "linear of {in_dim} inputs applied to {dims:?}");
    let rows = x.elem_count() / in_dim.max(1);
    let xs: Vec<half::bf16> = x.to_dtype(DType::BF16)?.flatten_all()?.to_vec1()?;
    let mut sums = vec![0f32; rows * out_dim];
    w.matmul(&xs, rows, &mut sums);
    let bias: Option<Vec<f32>> = bias.map(|b| b.to_dtype(DType::F32)?.to_vec1()).transpose()?;
    let mut out = vec![half::bf16::ZERO; rows * out_dim];
    out.par_chunks_mut(out_dim.max(1)).zip(sums.par_chunks(out_dim.max(1))).for_each(|(out, sums)| match &bias {
        Some(b) => out.iter_mut().zip(sums).zip(b).for_each(|((o, s), b)| *o = half::bf16::from_f32(s + b)),
        None => out.iter_mut().zip(sums).for_each(|(o, s)| *o = half::bf16::from_f32(*s)),
    });
    let mut shape = dims;
    *shape.last_mut().unwrap() = out_dim;
    Ok(Tensor::from_vec(out, shape, &Device::Cpu)?)
}

/// `nn.Linear(in_dim, out_dim, bias=True)` read from `vb` in its dtype.
pub fn linear(in_dim: usize, out_dim: usize, vb: VarBuilder) -> Result<Linear> {
    linear_b(in_dim, out_dim, true, vb)
}

/// `nn.Linear(in_dim, out_dim, bias=False)` read from `vb` in its dtype.
pub fn linear_no_bias(in_dim: usize, out_dim: usize, vb: VarBuilder) -> Result<Linear> {
    linear_b(in_dim, out_dim, false, vb)
}

/// `nn.Linear(in_dim, out_dim, bias=bias)` read from `vb` in its dtype; a bf16 weight stays
/// where the checkpoint is mapped when `vb` is a [`crate::weights::builder_mapped`].
pub fn linear_b(in_dim: usize, out_dim: usize, bias: bool, vb: VarBuilder) -> Result<Linear> {
    let weight = crate::weights::fetch(|| vb.get_with_hints((out_dim, in_dim), "weight", crate::weights::MAP))?;
    let bias = if bias { Some(vb.get(out_dim, "bias")?) } else { None };
    Ok(match weight {
        crate::weights::Fetched::Mapped(weight) => Linear::mapped(weight, bias),
        crate::weights::Fetched::Tensor(weight) => Linear::new(weight, bias),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use half::bf16;

    fn bf(values: &[f32]) -> Tensor {
        Tensor::new(values, &Device::Cpu).unwrap().to_dtype(DType::BF16).unwrap()
    }

    fn values(t: &Tensor) -> Vec<f32> {
        t.to_dtype(DType::F32).unwrap().flatten_all().unwrap().to_vec1().unwrap()
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

    /// A bf16 linear gives the exact sum plus bias rounded once, for 1 to 40 rows, on inputs
    /// whose every partial sum is exact in f32 (so the summation order cannot matter); 3-D
    /// inputs keep their leading dimensions.
    #[test]
    fn a_bf16_linear_rounds_the_exact_sum_plus_bias_once_for_any_number_of_rows() {
        let (k, n) = (200, 40);
        let grid = |i: usize, m: usize| ((i * m % 127) as f32 - 63.0) / 8.0;
        let w: Vec<f32> = (0..n * k).map(|i| grid(i, 31)).collect();
        let b: Vec<f32> = (0..n).map(|i| grid(i, 7) / 64.0).collect();
        let linear = Linear::new(bf(&w).reshape((n, k)).unwrap(), Some(bf(&b)));
        assert!(matches!(linear.kind, Kind::Bf16 { .. }), "a bf16 weight is packed: {linear:?}");
        for rows in [1, 3, 16, 17, 40] {
            let x: Vec<f32> = (0..rows * k).map(|i| grid(i, 53)).collect();
            let x = bf(&x).reshape((1, rows, k)).unwrap();
            let y = linear.forward(&x).unwrap();
            assert_eq!((y.dims(), y.dtype()), (&[1, rows, n][..], DType::BF16), "{rows} rows");
            let got = values(&y);
            let x: Vec<f32> = values(&x);
            let mut expected = Vec::new();
            for i in 0..rows {
                for j in 0..n {
                    let exact: f64 = (0..k).map(|c| f64::from(x[i * k + c]) * f64::from(w[j * k + c])).sum();
                    expected.push(bf16::from_f64(exact + f64::from(b[j])).to_f32());
                }
            }
            let wrong = got.iter().zip(&expected).position(|(g, e)| g != e);
            assert!(
                wrong.is_none(),
                "{rows} rows: output {wrong:?} is {:?}, the exact sum rounded once is {:?}",
                wrong.map(|i| got[i]),
                wrong.map(|i| expected[i])
            );
        }
    }

    /// The attention matmul against candle's: f32 to summation error with a transposed right
    /// operand (`k.t()`) and a narrowed left one; bf16 as the exact f32 sum rounded once, on
    /// grid inputs where the summation order cannot matter.
    #[test]
    fn the_attention_matmul_computes_what_candles_matmul_computes_in_f32_and_bf16() {
        let q = Tensor::randn(0f32, 1.0, (3, 20, 72), &Device::Cpu).unwrap();
        let keys = Tensor::randn(0f32, 1.0, (3, 33, 72), &Device::Cpu).unwrap();
        let q_part = q.narrow(1, 3, 17).unwrap();
        for (a, b) in [(&q_part, keys.t().unwrap()), (&keys, keys.t().unwrap().contiguous().unwrap())] {
            let (got, expected) = (matmul(a, &b).unwrap(), a.matmul(&b).unwrap());
            assert_eq!(got.dims(), expected.dims());
            let worst = values(&got).iter().zip(values(&expected)).map(|(x, y)| (x - y).abs()).fold(0f32, f32::max);
            assert!(worst <= 1e-5, "f32 {:?} · {:?}: off by {worst:e}", a.dims(), b.dims());
        }
        let grid =
            |len: usize, m: usize| -> Vec<f32> { (0..len).map(|i| ((i * m % 61) as f32 - 30.0) / 8.0).collect() };
        let a = bf(&grid(2 * 5 * 40, 7)).reshape((2, 5, 40)).unwrap();
        let b = bf(&grid(2 * 40 * 9, 13)).reshape((2, 40, 9)).unwrap();
        let got = matmul(&a, &b).unwrap();
        assert_eq!((got.dims(), got.dtype()), (&[2, 5, 9][..], DType::BF16));
        let exact = a.to_dtype(DType::F32).unwrap().matmul(&b.to_dtype(DType::F32).unwrap()).unwrap();
        assert_eq!(values(&got), values(&exact.to_dtype(DType::BF16).unwrap()), "bf16: the exact sums rounded once");
    }

    #[test]
    fn an_f32_linear_without_rows_beyond_two_dimensions_is_candles_linear() {
        let x = Tensor::new(&[[0.1f32, -2.0, 7.5]], &Device::Cpu).unwrap();
        let w = Tensor::new(&[[0.5f32, 0.25, -1.0]], &Device::Cpu).unwrap();
        let linear = Linear::new(w.clone(), Some(Tensor::new(&[0.125f32], &Device::Cpu).unwrap()));
        let plain = candle_nn::Linear::new(w, Some(Tensor::new(&[0.125f32], &Device::Cpu).unwrap()));
        assert_eq!(values(&linear.forward(&x).unwrap()), values(&plain.forward(&x).unwrap()));
    }

    /// A mapped bf16 model's builder leaves a bf16-stored weight where the checkpoint is mapped
    /// (same bits as the packed copy, for 1 to 40 rows); a weight stored in f32 is rounded and
    /// packed as before, and an f32 model never maps.
    #[test]
    fn a_bf16_weight_stored_in_bf16_is_read_where_it_is_mapped_with_the_packed_copys_bits() {
        let dir = std::env::temp_dir().join(format!("neuron-linear-mapped-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let w = Tensor::randn(0f32, 1.0, (40, 200), &Device::Cpu).unwrap();
        let b = Tensor::randn(0f32, 1.0, 40, &Device::Cpu).unwrap();
        let tensors = std::collections::HashMap::from([
            ("bf.weight".to_string(), w.to_dtype(DType::BF16).unwrap()),
            ("bf.bias".to_string(), b.to_dtype(DType::BF16).unwrap()),
            ("f.weight".to_string(), w.clone()),
        ]);
        candle_core::safetensors::save(&tensors, dir.join("model.safetensors")).unwrap();
        let checkpoint = Arc::new(crate::weights::Checkpoint::open(&dir).unwrap());
        let mapped = crate::weights::builder_mapped(checkpoint.clone(), contract::ComputeDtype::Bf16).unwrap();
        let in_place = linear(200, 40, mapped.pp("bf")).unwrap();
        assert!(format!("{in_place:?}").contains("BF16 mapped"), "{in_place:?}");
        let rounded = linear_no_bias(200, 40, mapped.pp("f")).unwrap();
        assert!(
            format!("{rounded:?}").contains("BF16 packed"),
            "an f32-stored weight is rounded and packed: {rounded:?}"
        );
        let f32_model = crate::weights::builder_mapped(checkpoint, contract::ComputeDtype::F32).unwrap();
        let plain = linear(200, 40, f32_model.pp("bf")).unwrap();
        assert!(format!("{plain:?}").contains("F32"), "an f32 model reads tensors: {plain:?}");
        let packed = Linear::new(tensors["bf.weight"].clone(), Some(tensors["bf.bias"].clone()));
        for rows in [1, 13, 40] {
            let x = Tensor::randn(0f32, 1.0, (rows, 200), &Device::Cpu).unwrap().to_dtype(DType::BF16).unwrap();
            let (got, expected) = (values(&in_place.forward(&x).unwrap()), values(&packed.forward(&x).unwrap()));
            assert!(got == expected, "{rows} rows: the mapped weight's outputs differ from the packed copy's");
        }
        drop((in_place, rounded, plain));
        std::fs::remove_dir_all(&dir).unwrap();
    }

    /// One f32 row (a decode step) runs on `gemm_f32::gemv`, not on candle's `gemm`: the same bits
    /// as candle's `Linear` over the same stored weight, bias included.
    #[test]
    fn an_f32_linear_of_one_row_gives_candles_bits_on_all_cores() {
        let w = Tensor::randn(0f32, 1.0, (300, 129), &Device::Cpu).unwrap();
        let b = Tensor::randn(0f32, 1.0, 300, &Device::Cpu).unwrap();
        let ours = Linear::new(w, Some(b));
        let Kind::Candle(inner) = &ours.kind else { panic!("an f32 weight stays with candle: {ours:?}") };
        let x = Tensor::randn(0f32, 1.0, (1, 1, 129), &Device::Cpu).unwrap();
        let got = ours.forward(&x).unwrap();
        let expected = inner.forward(&x.squeeze(0).unwrap()).unwrap().unsqueeze(0).unwrap();
        assert_eq!(got.dims(), [1, 1, 300]);
        let (got, expected) = (values(&got), values(&expected));
        assert!(got.iter().zip(&expected).all(|(a, b)| a.to_bits() == b.to_bits()), "one row differs from candle's");
    }

    /// The f32 linear stores its weight transposed; products of 1, 15, 17, 277 and 784 rows (2-D and
    /// 3-D inputs, ragged weight shapes that cross the 64 × 64 transpose tiles) equal candle's
    /// own `Linear` over the untransposed weight to f32 rounding (gemm takes another path for a
    /// contiguous right operand, so the summation order may differ).
    #[test]
    fn an_f32_linear_on_its_transposed_weight_computes_what_candles_linear_computes() {
        for (out_dim, in_dim) in [(1, 1), (3, 130), (65, 64), (129, 70)] {
            let w = Tensor::randn(0f32, 1.0, (out_dim, in_dim), &Device::Cpu).unwrap();
            let b = Tensor::randn(0f32, 1.0, out_dim, &Device::Cpu).unwrap();
            let ours = Linear::new(w.clone(), Some(b.clone()));
            let Kind::Candle(inner) = &ours.kind else { panic!("an f32 weight stays with candle: {ours:?}") };
            assert!(inner.weight().t().unwrap().is_contiguous(), "{out_dim}×{in_dim}: the weight is stored [in, out]");
            assert_eq!(values(inner.weight()), values(&w), "{out_dim}×{in_dim}: the weight as [out, in]");
            let plain = candle_nn::Linear::new(w, Some(b));
            for rows in [1, 15, 17, 277, 784] {
                let x = Tensor::randn(0f32, 1.0, (1, rows, in_dim), &Device::Cpu).unwrap();
                let (got, expected) = (ours.forward(&x).unwrap(), plain.forward(&x).unwrap());
                assert_eq!(got.dims(), [1, rows, out_dim], "{rows} rows of {in_dim}");
                let (got, expected) = (values(&got), values(&expected));
                let worst = got.iter().zip(&expected).map(|(a, b)| (a - b).abs()).fold(0f32, f32::max);
                // f32 summation error only (terms ~1, sums ~√in): a wrong index or a lost
                // bias is off by about 1.
                assert!(worst <= 1e-6 * in_dim as f32, "{rows}×{in_dim} · {in_dim}×{out_dim}: off by {worst:e}");
                let flat = values(&ours.forward(&x.squeeze(0).unwrap()).unwrap());
                assert_eq!(flat, got, "{rows} rows as a 2-D input give what the 3-D input gives");
            }
        }
    }
}
