//! The linear-attention mixer, mirroring `Qwen3_5GatedDeltaNet` (prefill, no cache).

use anyhow::Result;
use candle_core::Tensor;
use candle_nn::{linear_no_bias, Linear, Module, VarBuilder};

use super::delta_rule::{chunk_gated_delta_rule, CHUNK_SIZE};
use super::norm::RmsNormGated;
use crate::config::TextConfig;

/// `Qwen3_5GatedDeltaNet`: in_proj_qkv → depthwise causal conv1d + SiLU → q, k, v; β =
/// sigmoid(b); g = −exp(A_log)·softplus(a + dt_bias); the gated delta rule (chunked, as the
/// reference prefill); gated RMSNorm with SiLU(z); out_proj.
pub struct GatedDeltaNet {
    in_proj_qkv: Linear,
    in_proj_z: Linear,
    in_proj_b: Linear,
    in_proj_a: Linear,
    /// Depthwise kernel [conv_dim, kernel].
    conv_weight: Tensor,
    /// −exp(A_log), per value head.
    neg_a: Tensor,
    dt_bias: Tensor,
    norm: RmsNormGated,
    out_proj: Linear,
    num_k_heads: usize,
    num_v_heads: usize,
    head_k_dim: usize,
    head_v_dim: usize,
}

impl GatedDeltaNet {
    pub fn new(cfg: &TextConfig, vb: VarBuilder) -> Result<Self> {
        let h = cfg.hidden_size;
        let value_dim = cfg.linear_num_value_heads * cfg.linear_value_head_dim;
        let conv_dim = cfg.linear_conv_dim();
        let kernel = cfg.linear_conv_kernel_dim;
        let nv = cfg.linear_num_value_heads;
        Ok(GatedDeltaNet {
            in_proj_qkv: linear_no_bias(h, conv_dim, vb.pp("in_proj_qkv"))?,
            in_proj_z: linear_no_bias(h, value_dim, vb.pp("in_proj_z"))?,
            in_proj_b: linear_no_bias(h, nv, vb.pp("in_proj_b"))?,
            in_proj_a: linear_no_bias(h, nv, vb.pp("in_proj_a"))?,
            conv_weight: vb.get((conv_dim, 1, kernel), "conv1d.weight")?.reshape((conv_dim, kernel))?,
            neg_a: vb.get(nv, "A_log")?.exp()?.neg()?,
            dt_bias: vb.get(nv, "dt_bias")?,
            norm: RmsNormGated::new(cfg.linear_value_head_dim, cfg.rms_norm_eps, vb.pp("norm"))?,
            out_proj: linear_no_bias(value_dim, h, vb.pp("out_proj"))?,
            num_k_heads: cfg.linear_num_key_heads,
            num_v_heads: nv,
            head_k_dim: cfg.linear_key_head_dim,
            head_v_dim: cfg.linear_value_head_dim,
        })
    }

    /// x [seq, hidden] → [seq, hidden]
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let seq = x.dim(0)?;
        let (nk, nv, dk, dv) = (self.num_k_heads, self.num_v_heads, self.head_k_dim, self.head_v_dim);
        let mixed = candle_nn::ops::silu(&causal_depthwise_conv(&self.in_proj_qkv.forward(x)?, &self.conv_weight)?)?;
        let query = mixed.narrow(1, 0, nk * dk)?.reshape((seq, nk, dk))?;
        let key = mixed.narrow(1, nk * dk, nk * dk)?.reshape((seq, nk, dk))?;
        let value = mixed.narrow(1, 2 * nk * dk, nv * dv)?.reshape((seq, nv, dv))?;
        let z = self.in_proj_z.forward(x)?.reshape((seq, nv, dv))?;
        let beta = candle_nn::ops::sigmoid(&self.in_proj_b.forward(x)?)?;
        let a = self.in_proj_a.forward(x)?.broadcast_add(&self.dt_bias)?;
        let g = softplus(&a)?.broadcast_mul(&self.neg_a)?;

        let (core, _) = chunk_gated_delta_rule(&query, &key, &value, &g, &beta, CHUNK_SIZE, None)?;
        let core = self.norm.forward(&core, &z)?.reshape((seq, nv * dv))?;
        Ok(self.out_proj.forward(&core)?)
    }
}

/// `causal_conv1d_fn` without activation: out[t, c] = Σ_j w[c, j] · x[t − (K−1) + j, c], with
/// zeros before the first token. x [seq, channels], w [channels, K].
fn causal_depthwise_conv(x: &Tensor, w: &Tensor) -> Result<Tensor> {
    let (seq, channels) = x.dims2()?;
    let kernel = w.dim(1)?;
    let padded = Tensor::cat(&[&Tensor::zeros((kernel - 1, channels), x.dtype(), x.device())?, x], 0)?;
    let mut out = Tensor::zeros((seq, channels), x.dtype(), x.device())?;
    for j in 0..kernel {
        let tap = w.narrow(1, j, 1)?.squeeze(1)?; // [channels]
        out = (out + padded.narrow(0, j, seq)?.broadcast_mul(&tap)?)?;
    }
    Ok(out)
}

/// `F.softplus` (beta 1, threshold 20): log1p(exp(x)), and x itself above 20. Element-wise on
/// the host because candle has no log1p, and `log(1 + exp(x))` loses all digits for x ≪ 0.
fn softplus(x: &Tensor) -> Result<Tensor> {
    let values: Vec<f32> = x.flatten_all()?.to_vec1()?;
    let soft: Vec<f32> = values.into_iter().map(|v| if v > 20.0 { v } else { v.exp().ln_1p() }).collect();
    Ok(Tensor::from_vec(soft, x.shape(), x.device())?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn softplus_keeps_small_values_and_is_the_identity_above_20_where_exp_overflows() {
        let x = Tensor::new(&[-30f32, 0.0, 20.0, 25.0, 100.0], &Device::Cpu).unwrap();
        let y: Vec<f32> = softplus(&x).unwrap().to_vec1().unwrap();
        // log(1 + exp(-30)) = 9.36e-14: log1p keeps it where log(1 + …) would give 0.
        assert!((y[0] - 9.357623e-14).abs() < 1e-19, "softplus(-30) = {}", y[0]);
        assert!((y[1] - std::f32::consts::LN_2).abs() < 1e-7, "softplus(0) = {}", y[1]);
        // exp(100) overflows f32: above the threshold the value itself, as F.softplus does.
        assert_eq!(&y[2..], &[20.0, 25.0, 100.0], "softplus above the threshold");
    }
    use candle_core::Device;

    #[test]
    fn the_causal_conv_sees_only_the_current_and_earlier_tokens() {
        let x = Tensor::new(&[[1f32], [2.], [3.], [4.]], &Device::Cpu).unwrap();
        let w = Tensor::new(&[[1000f32, 100., 10., 1.]], &Device::Cpu).unwrap();
        let out: Vec<f32> = causal_depthwise_conv(&x, &w).unwrap().flatten_all().unwrap().to_vec1().unwrap();
        // out[t] = 1·x[t] + 10·x[t−1] + 100·x[t−2] + 1000·x[t−3]
        assert_eq!(out, [1., 12., 123., 1234.], "causal conv output");
    }

    #[test]
    fn softplus_switches_to_identity_above_twenty() {
        let x = Tensor::new(&[-30f32, 0.0, 19.0, 25.0], &Device::Cpu).unwrap();
        let y: Vec<f32> = softplus(&x).unwrap().to_vec1().unwrap();
        let expected = [(-30f32).exp().ln_1p(), 2f32.ln(), 19f32.exp().ln_1p(), 25.0];
        for (i, (a, e)) in y.iter().zip(expected).enumerate() {
            assert!((a - e).abs() <= 1e-6 * e.abs().max(1e-30), "softplus[{i}] = {a}, expected {e}");
        }
    }
}
