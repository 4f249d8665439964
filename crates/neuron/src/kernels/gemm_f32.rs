//! The f32 batched product of attention: one single-threaded `gemm` per batch entry, the
//! entries shared out between the threads (see [`crate::linear::matmul`] for why).

use anyhow::Result;
use candle_core::{Device, Tensor};

/// [`crate::linear::matmul_grouped`] in f32: one single-threaded `gemm` per batch entry of a,
/// entry i of a times entry i / groups of b, the entries on all cores.
pub fn batched(a: &Tensor, b: &Tensor, batch: usize, groups: usize, m: usize, k: usize, n: usize) -> Result<Tensor> {
    use rayon::prelude::*;
    let (a_storage, a_layout) = a.storage_and_layout();
    let (b_storage, b_layout) = b.storage_and_layout();
    let (candle_core::Storage::Cpu(a_cpu), candle_core::Storage::Cpu(b_cpu)) = (&*a_storage, &*b_storage) else {
        anyhow::bail!("matmul runs on the CPU")
    };
    let (a_all, b_all) = (a_cpu.as_slice::<f32>()?, b_cpu.as_slice::<f32>()?);
    let (sa, sb) = (a_layout.stride(), b_layout.stride());
    let (a0, b0) = (a_layout.start_offset(), b_layout.start_offset());
    let mut out = vec![0f32; batch * m * n];
    out.par_chunks_mut((m * n).max(1)).enumerate().for_each(|(i, dst)| {
        // SAFETY: dst is this entry's m × n (row stride n); lhs element (r, p) is at
        // a0 + i·sa0 + r·sa1 + p·sa2 and rhs element (p, j) at b0 + (i / groups)·sb0 + p·sb1 +
        // j·sb2, both inside their storages since the layouts describe [batch, m, k] and
        // [batch / groups, k, n].
        unsafe {
            gemm::gemm(
                m,
                n,
                k,
                dst.as_mut_ptr(),
                1,
                n as isize,
                false,
                a_all.as_ptr().add(a0 + i * sa[0]),
                sa[2] as isize,
                sa[1] as isize,
                b_all.as_ptr().add(b0 + i / groups * sb[0]),
                sb[2] as isize,
                sb[1] as isize,
                0.0,
                1.0,
                false,
                false,
                false,
                gemm::Parallelism::None,
            )
        }
    });
    drop((a_storage, b_storage));
    Ok(Tensor::from_vec(out, (batch, m, n), &Device::Cpu)?)
}

/// `x · w` for one row x [k] and w [k, n] (row-major, an f32 linear layer's transposed
/// weight) → [n], on all cores, with exactly the arithmetic `gemm` uses for this product
/// (`gemv::mixed_gemv_colmajor`, which it takes for one row): out[j] = x[0]·w[0, j], then
/// out[j] = fma(w[p, j], x[p], out[j]) for p = 1..k in order, so the result is `gemm`'s bit
/// for bit. `None` where that equivalence does not hold: without FMA `gemm` rounds the
/// product and the sum apart; k ≤ 2 and n ≤ 1 take other paths in `gemm`.
///
/// Why: `gemm` runs this product on one thread and sweeps the whole output row once per depth
/// (for `lm_head`, 248 320 floats 5120 times), so a decode step read its weights at about
/// half of the memory bandwidth of two cores. Here each thread takes blocks of up to 4096
/// columns, whose sums stay in L1 while the depths stream past.
pub fn gemv(x: &[f32], w: &[f32], k: usize, n: usize) -> Option<Vec<f32>> {
    use rayon::prelude::*;
    assert_eq!(x.len(), k, "gemv: x has {} values, expected k = {k}", x.len());
    assert_eq!(w.len(), k * n, "gemv: w has {} values, expected k·n = {k}·{n} = {}", w.len(), k * n);
    if k <= 2 || n <= 1 || !fused() {
        return None;
    }
    const BLOCK: usize = 4096;
    let threads = rayon::current_num_threads().max(1);
    // At least one block per thread where n allows, each a multiple of 16 columns.
    let blocks = n.div_ceil(BLOCK).max(threads.min(n / 16).max(1));
    let width = n.div_ceil(blocks).next_multiple_of(16);
    let mut out = vec![0f32; n];
    out.par_chunks_mut(width).enumerate().for_each(|(b, acc)| {
        let j0 = b * width;
        // SAFETY: `fused()` checked that the CPU has AVX2 and FMA.
        #[cfg(target_arch = "x86_64")]
        unsafe {
            sweep(x, w, n, j0, acc)
        }
    });
    Some(out)
}

/// Whether the CPU fuses `gemm`'s multiply-adds (its V3 and V4 paths, chosen where AVX2 and
/// FMA are), which [`gemv`] reproduces.
fn fused() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        static FUSED: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
        *FUSED.get_or_init(|| is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma"))
    }
    #[cfg(not(target_arch = "x86_64"))]
    false
}

/// Columns j0..j0 + acc.len() of [`gemv`]: the first depth's products, then one fused
/// multiply-add per depth (`mul_add` is one rounding; with FMA enabled it compiles to it).
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn sweep(x: &[f32], w: &[f32], n: usize, j0: usize, acc: &mut [f32]) {
    let cols = acc.len();
    for (a, w) in acc.iter_mut().zip(&w[j0..j0 + cols]) {
        *a = w * x[0];
    }
    for (p, &xp) in x.iter().enumerate().skip(1) {
        let row = &w[p * n + j0..p * n + j0 + cols];
        for (a, w) in acc.iter_mut().zip(row) {
            *a = w.mul_add(xp, *a);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Whether this CPU has AVX2 and FMA, asked here rather than through [`fused`], which the
    /// test checks.
    fn cpu_fuses() -> bool {
        #[cfg(target_arch = "x86_64")]
        {
            is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma")
        }
        #[cfg(not(target_arch = "x86_64"))]
        false
    }

    /// One row times a weight, as `gemm` computes it (candle's matmul calls it) and as [`gemv`]
    /// does, on shapes with ragged blocks, tails of fewer than 16 columns and the stand-in's
    /// `lm_head` width: the same bits.
    #[test]
    fn one_row_times_a_weight_gives_gemms_bits_on_all_cores() {
        for (k, n) in [(3, 2), (5, 17), (64, 100), (128, 1024), (300, 4097), (1153, 9000), (64, 248_320)] {
            let x = Tensor::randn(0f32, 1.0, (1, k), &Device::Cpu).unwrap();
            let w = Tensor::randn(0f32, 1.0, (k, n), &Device::Cpu).unwrap();
            let expected: Vec<f32> = x.matmul(&w).unwrap().flatten_all().unwrap().to_vec1().unwrap();
            let (xs, ws): (Vec<f32>, Vec<f32>) =
                (x.flatten_all().unwrap().to_vec1().unwrap(), w.flatten_all().unwrap().to_vec1().unwrap());
            let Some(got) = gemv(&xs, &ws, k, n) else {
                // Declining is right only where gemm does not fuse; elsewhere it would hide
                // every check below.
                assert!(!cpu_fuses(), "k {k}, n {n}: gemv declined on a CPU with AVX2 and FMA");
                eprintln!("skipped: this CPU lacks AVX2 and FMA, where gemm does not fuse");
                return;
            };
            let wrong = got.iter().zip(&expected).position(|(a, b)| a.to_bits() != b.to_bits());
            assert!(
                wrong.is_none(),
                "k {k}, n {n}: out[{wrong:?}] is {:?}, gemm gives {:?}",
                wrong.map(|j| got[j]),
                wrong.map(|j| expected[j])
            );
        }
        let x = [1f32, 2.0];
        assert!(gemv(&x, &[0.0; 6], 2, 3).is_none(), "k = 2 is gemm's other path");
        assert!(gemv(&[1f32; 5], &[0.0; 5], 5, 1).is_none(), "n = 1 is gemm's other path");
    }
}
