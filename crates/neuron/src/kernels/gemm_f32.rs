//! The f32 batched product of attention: one single-threaded `gemm` per batch entry, the
//! entries shared out between the threads (see [`crate::linear::matmul`] for why).

use anyhow::Result;
use candle_core::{Device, Tensor};

/// [`crate::linear::matmul`] in f32: one single-threaded `gemm` per batch entry, the entries on all cores.
pub fn batched(a: &Tensor, b: &Tensor, batch: usize, m: usize, k: usize, n: usize) -> Result<Tensor> {
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
        // a0 + i·sa0 + r·sa1 + p·sa2 and rhs element (p, j) at b0 + i·sb0 + p·sb1 + j·sb2, both
        // inside their storages since the layouts describe [batch, m, k] and [batch, k, n].
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
                b_all.as_ptr().add(b0 + i * sb[0]),
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
