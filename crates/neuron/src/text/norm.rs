//! The RMSNorms of the text model.
//!
//! The reference's upcasts, reproduced here for a bf16 model (see [`crate::precision`]):
//! - `Qwen3_5RMSNorm`: `x.float()`; the mean of squares, `rsqrt` and the scaling by
//!   `(1.0 + weight.float())` in f32; `.type_as(x)`: one rounding at the end.
//! - `Qwen3_5RMSNormGated`: `hidden_states.to(torch.float32)`; the statistics and the
//!   normalisation in f32, then `.to(input_dtype)` (a rounding) before `self.weight * …` (a bf16
//!   product, a rounding); `* silu(gate.to(torch.float32))` promotes to f32, and the result is
//!   rounded once by `.to(input_dtype)`.

use anyhow::Result;
use candle_core::{DType, Tensor, D};
use candle_nn::VarBuilder;

use crate::precision::{get_f32, in_f32};

fn rms_normalise(x: &Tensor, eps: f64) -> Result<Tensor> {
    let variance = x.sqr()?.mean_keepdim(D::Minus1)?;
    Ok(x.broadcast_mul(&(variance + eps)?.sqrt()?.recip()?)?)
}

/// `Qwen3_5RMSNorm`: zero-centred weight, the output is scaled by `(1 + w)`.
pub struct RmsNorm {
    scale: Tensor,
    eps: f64,
}

impl RmsNorm {
    pub fn new(size: usize, eps: f64, vb: VarBuilder) -> Result<Self> {
        let scale = (get_f32(&vb, size, "weight")? + 1.0)?;
        Ok(RmsNorm { scale, eps })
    }

    /// [..., size] → [..., size]
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        in_f32(x, |x| Ok(rms_normalise(x, self.eps)?.broadcast_mul(&self.scale)?))
    }
}

/// `Qwen3_5RMSNormGated`: plain weight (not zero-centred), then × SiLU(gate).
pub struct RmsNormGated {
    weight: Tensor,
    eps: f64,
}

impl RmsNormGated {
    pub fn new(size: usize, eps: f64, vb: VarBuilder) -> Result<Self> {
        Ok(RmsNormGated { weight: vb.get(size, "weight")?, eps })
    }

    /// x, gate: [..., size] → [..., size]
    pub fn forward(&self, x: &Tensor, gate: &Tensor) -> Result<Tensor> {
        let dtype = x.dtype();
        let normed = rms_normalise(&x.to_dtype(DType::F32)?, self.eps)?.to_dtype(dtype)?.broadcast_mul(&self.weight)?;
        let gate = candle_nn::ops::silu(&gate.to_dtype(DType::F32)?)?;
        Ok((normed.to_dtype(DType::F32)? * gate)?.to_dtype(dtype)?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;
    use half::bf16;

    const EPS: f64 = 1e-6;

    /// 300 rows of 4 values whose squares and their sums are exact in f32 (multiples of 1/8
    /// below 8), so the statistics do not depend on the summation order; a weight and gates
    /// that are not round.
    fn inputs() -> (Vec<f32>, Vec<f32>, [f32; 4]) {
        let x: Vec<f32> = (0..1200).map(|i| ((i * 37 % 113) as f32 - 56.0) / 8.0).collect();
        let gate: Vec<f32> =
            (0..1200).map(|i| bf16::from_f32(((i * 53 % 97) as f32 - 48.0) * 0.0731).to_f32()).collect();
        let weight = [0.8125f32, -1.3125, 0.0390625, 2.71875];
        (x, gate, weight)
    }

    fn round(v: f32) -> f32 {
        bf16::from_f32(v).to_f32()
    }

    /// x · rsqrt(mean(x²) + eps) in f32, row by row.
    fn normalised(x: &[f32]) -> Vec<f32> {
        x.chunks(4)
            .flat_map(|row| {
                let mean = row.iter().map(|v| v * v).sum::<f32>() / 4.0;
                let inv = 1.0 / (mean + EPS as f32).sqrt();
                row.iter().map(move |v| v * inv)
            })
            .collect()
    }

    fn bf16_tensor(values: &[f32], shape: &[usize]) -> Tensor {
        Tensor::from_slice(values, shape, &Device::Cpu).unwrap().to_dtype(DType::BF16).unwrap()
    }

    fn builder(weight: &[f32; 4]) -> VarBuilder<'static> {
        let w = Tensor::new(weight, &Device::Cpu).unwrap();
        VarBuilder::from_tensors([("weight".to_string(), w)].into(), DType::BF16, &Device::Cpu)
    }

    fn values(t: &Tensor) -> Vec<f32> {
        t.to_dtype(DType::F32).unwrap().flatten_all().unwrap().to_vec1().unwrap()
    }

    /// `Qwen3_5RMSNorm` on bf16: `(x.float() normalised) * (1 + weight.float())` in f32, one
    /// rounding — not Llama's rounding of the normalised x before the weight.
    #[test]
    fn the_zero_centred_norm_of_bf16_scales_in_f32_and_rounds_once() {
        let (x, _, weight) = inputs();
        let weight: [f32; 4] = weight.map(round);
        let norm = RmsNorm::new(4, EPS, builder(&weight)).unwrap();
        let got = values(&norm.forward(&bf16_tensor(&x, &[300, 4])).unwrap());
        let n = normalised(&x);
        let expected: Vec<f32> = n.iter().enumerate().map(|(i, v)| round(v * (1.0 + weight[i % 4]))).collect();
        assert_eq!(got, expected);
        let llama: Vec<f32> = n.iter().enumerate().map(|(i, v)| round(round(*v) * (1.0 + weight[i % 4]))).collect();
        assert_ne!(got, llama, "the inputs should tell one rounding from two");
    }

    /// `Qwen3_5RMSNormGated` on bf16 rounds three times: the normalised x (`.to(input_dtype)`),
    /// its product with the bf16 weight, and the product with SiLU of the f32 gate.
    #[test]
    fn the_gated_norm_of_bf16_rounds_after_normalising_after_the_weight_and_after_the_gate() {
        let (x, gate, weight) = inputs();
        let weight: [f32; 4] = weight.map(round);
        let norm = RmsNormGated::new(4, EPS, builder(&weight)).unwrap();
        let got = values(&norm.forward(&bf16_tensor(&x, &[300, 4]), &bf16_tensor(&gate, &[300, 4])).unwrap());
        let silu = |g: f32| g / (1.0 + (-g).exp());
        let n = normalised(&x);
        let expected: Vec<f32> =
            n.iter().enumerate().map(|(i, v)| round(round(round(*v) * weight[i % 4]) * silu(gate[i]))).collect();
        assert_eq!(got, expected);
        let once: Vec<f32> = n.iter().enumerate().map(|(i, v)| round(v * weight[i % 4] * silu(gate[i]))).collect();
        assert_ne!(got, once, "the inputs should tell three roundings from one");
    }
}
