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
