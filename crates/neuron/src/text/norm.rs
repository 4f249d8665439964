//! The RMSNorms of the text model.

use anyhow::Result;
use candle_core::{Tensor, D};
use candle_nn::VarBuilder;

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
        let scale = (vb.get(size, "weight")? + 1.0)?;
        Ok(RmsNorm { scale, eps })
    }

    /// [..., size] → [..., size]
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        Ok(rms_normalise(x, self.eps)?.broadcast_mul(&self.scale)?)
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
        let normed = rms_normalise(x, self.eps)?.broadcast_mul(&self.weight)?;
        Ok((normed * candle_nn::ops::silu(gate)?)?)
    }
}
