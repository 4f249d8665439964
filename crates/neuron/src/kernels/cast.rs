//! Conversions between bf16 and f32 on all cores.

use anyhow::{Context, Result};
use candle_core::{DType, Device, Tensor};

/// `x.to_dtype(dtype)`, between bf16 and f32 on all cores (candle converts on one; in the
/// bf16 model every element-wise function converts twice). The same conversions: widening
/// is exact, narrowing rounds to nearest even through `half`, as candle's.
pub fn cast(x: &Tensor, dtype: DType) -> Result<Tensor> {
    use rayon::prelude::*;
    // Below this many elements one core is quicker than sharing the work out.
    const PARALLEL: usize = 1 << 15;
    if x.dtype() == dtype || x.elem_count() < PARALLEL || !x.is_contiguous() || !x.device().is_cpu() {
        return Ok(x.to_dtype(dtype)?);
    }
    const PIECE: usize = 1 << 14;
    let shape = x.shape().clone();
    Ok(match (x.dtype(), dtype) {
        (DType::BF16, DType::F32) => {
            let (storage, layout) = x.storage_and_layout();
            let candle_core::Storage::Cpu(cpu) = &*storage else { unreachable!("checked: a CPU tensor") };
            let (start, end) = layout.contiguous_offsets().context("checked: contiguous")?;
            let src = &cpu.as_slice::<half::bf16>()?[start..end];
            let mut out = vec![0f32; src.len()];
            out.par_chunks_mut(PIECE).zip(src.par_chunks(PIECE)).for_each(|(o, s)| {
                o.iter_mut().zip(s).for_each(|(o, s)| *o = s.to_f32());
            });
            Tensor::from_vec(out, shape, &Device::Cpu)?
        }
        (DType::F32, DType::BF16) => {
            let (storage, layout) = x.storage_and_layout();
            let candle_core::Storage::Cpu(cpu) = &*storage else { unreachable!("checked: a CPU tensor") };
            let (start, end) = layout.contiguous_offsets().context("checked: contiguous")?;
            let src = &cpu.as_slice::<f32>()?[start..end];
            let mut out = vec![half::bf16::ZERO; src.len()];
            out.par_chunks_mut(PIECE).zip(src.par_chunks(PIECE)).for_each(|(o, s)| {
                o.iter_mut().zip(s).for_each(|(o, s)| *o = half::bf16::from_f32(*s));
            });
            Tensor::from_vec(out, shape, &Device::Cpu)?
        }
        _ => x.to_dtype(dtype)?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use half::bf16;

    /// The parallel cast is candle's conversion, element for element, both ways, on a tensor
    /// large enough to be shared out (ties, subnormals, infinities and NaN included).
    #[test]
    fn casting_between_bf16_and_f32_on_all_cores_equals_candles_conversion() {
        let mut xs: Vec<f32> = (0..100_003).map(|i| (i as f32 - 50_000.0) * 1.000_976_6e-3).collect();
        xs.extend([f32::INFINITY, f32::NEG_INFINITY, 1e-40, -3e-39, 1.0 + 1.0 / 256.0, 1.0 + 3.0 / 256.0]);
        let x = Tensor::new(xs.as_slice(), &Device::Cpu).unwrap().reshape((xs.len() / 7, 7)).unwrap();
        let narrowed = cast(&x, DType::BF16).unwrap();
        let expected: Vec<bf16> = x.to_dtype(DType::BF16).unwrap().flatten_all().unwrap().to_vec1().unwrap();
        let got: Vec<bf16> = narrowed.flatten_all().unwrap().to_vec1().unwrap();
        let wrong = got.iter().zip(&expected).position(|(a, b)| a.to_bits() != b.to_bits());
        assert!(
            wrong.is_none(),
            "f32 → bf16 at {wrong:?}: {:?} against candle's {:?}",
            wrong.map(|i| got[i]),
            wrong.map(|i| expected[i])
        );
        assert_eq!(narrowed.dims(), x.dims());
        let widened: Vec<f32> = cast(&narrowed, DType::F32).unwrap().flatten_all().unwrap().to_vec1().unwrap();
        let expected: Vec<f32> = narrowed.to_dtype(DType::F32).unwrap().flatten_all().unwrap().to_vec1().unwrap();
        assert!(
            widened.iter().zip(&expected).all(|(a, b)| a.to_bits() == b.to_bits()),
            "bf16 → f32 differs from candle's"
        );
        // A strided view (a transpose) of the same size goes through candle's strided copy.
        let strided = x.reshape((7, xs.len() / 7)).unwrap().t().unwrap();
        let got: Vec<bf16> = cast(&strided, DType::BF16).unwrap().flatten_all().unwrap().to_vec1().unwrap();
        let expected: Vec<bf16> = strided.to_dtype(DType::BF16).unwrap().flatten_all().unwrap().to_vec1().unwrap();
        assert!(got == expected, "a transposed f32 view cast to bf16 differs from candle's conversion");
        let nan = Tensor::new(&[f32::NAN; 40_000], &Device::Cpu).unwrap();
        let nan: Vec<f32> = cast(&cast(&nan, DType::BF16).unwrap(), DType::F32).unwrap().to_vec1().unwrap();
        assert!(nan.iter().all(|v| v.is_nan()), "NaN stays NaN through both casts");
    }
}
