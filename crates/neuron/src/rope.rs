//! Rotary-embedding pieces shared by the vision tower and the text model.

use anyhow::Result;
use candle_core::{Tensor, D};

/// `1 / base^(i / dim)` for even i < dim, in f32 as the reference's `compute_*_rope_parameters`.
pub fn inv_freq(base: f32, dim: usize) -> Vec<f32> {
    (0..dim).step_by(2).map(|i| 1.0 / base.powf(i as f32 / dim as f32)).collect()
}

/// `rotate_half`: (x1, x2) → (−x2, x1) over the last dimension.
pub fn rotate_half(x: &Tensor) -> Result<Tensor> {
    let half = x.dim(D::Minus1)? / 2;
    Ok(Tensor::cat(&[&x.narrow(D::Minus1, half, half)?.neg()?, &x.narrow(D::Minus1, 0, half)?], D::Minus1)?)
}
