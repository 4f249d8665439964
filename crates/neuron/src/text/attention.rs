//! The gated full attention of the text model, mirroring `Qwen3_5Attention` (eager path),
//! and its interleaved multimodal rotary embedding (`Qwen3_5TextRotaryEmbedding`).

use anyhow::{ensure, Result};
use candle_core::{Device, Tensor, D};
use candle_nn::{linear_b, Linear, Module, VarBuilder};

use super::norm::RmsNorm;
use crate::config::TextConfig;

/// `Qwen3_5TextRotaryEmbedding`: RoPE over the first `head_dim · partial_rotary_factor`
/// dims, where each frequency takes its position from one of the (t, h, w) axes as laid out
/// by [`frequency_axes`].
///
/// The table is public, like the vision positions, so a test can inspect and perturb it.
pub struct TextRotary {
    pub inv_freq: Vec<f32>,
    /// Which position axis (0 = t, 1 = h, 2 = w) each frequency reads.
    pub axis: Vec<usize>,
}

impl TextRotary {
    pub fn new(cfg: &TextConfig) -> Result<Self> {
        let (theta, section) = (cfg.rope_parameters.rope_theta, &cfg.rope_parameters.mrope_section);
        let dim = cfg.rotary_dim();
        ensure!(section.len() == 3, "mrope_section {section:?} must have three entries (t, h, w)");
        ensure!(
            section.iter().sum::<usize>() == dim / 2,
            "mrope_section {section:?} must sum to rotary dim / 2 = {}",
            dim / 2
        );
        let base = theta as f32;
        let inv_freq = crate::rope::inv_freq(base, dim);
        let axis = frequency_axes(section, inv_freq.len());
        Ok(TextRotary { inv_freq, axis })
    }

    /// positions [3][seq] → cos, sin each [seq, rotary dim].
    pub fn cos_sin(&self, positions: &[Vec<i64>; 3], device: &Device) -> Result<(Tensor, Tensor)> {
        let seq = positions[0].len();
        let half = self.inv_freq.len();
        let mut cos = Vec::with_capacity(seq * 2 * half);
        let mut sin = Vec::with_capacity(seq * 2 * half);
        // Each frequency reads a different row of `positions`, so the token index is the clear key.
        #[allow(clippy::needless_range_loop)]
        for token in 0..seq {
            let angles: Vec<f32> =
                (0..half).map(|i| positions[self.axis[i]][token] as f32 * self.inv_freq[i]).collect();
            for _ in 0..2 {
                cos.extend(angles.iter().map(|a| a.cos()));
                sin.extend(angles.iter().map(|a| a.sin()));
            }
        }
        let shape = (seq, 2 * half);
        Ok((Tensor::from_vec(cos, shape, device)?, Tensor::from_vec(sin, shape, device)?))
    }
}

/// The interleaved M-RoPE layout (`recomposition_frequencies`): frequency i reads the h
/// position if i ≡ 1 (mod 3) and i < 3·section[1], the w position if i ≡ 2 (mod 3) and
/// i < 3·section[2], and the t position otherwise.
pub fn frequency_axes(section: &[usize], n_freq: usize) -> Vec<usize> {
    let mut axis = vec![0; n_freq];
    for (a, offset) in [(1usize, 1usize), (2, 2)] {
        for i in (offset..(section[a] * 3).min(n_freq)).step_by(3) {
            axis[i] = a;
        }
    }
    axis
}

/// `apply_rotary_pos_emb` with partial rotation: x [heads, seq, head_dim], cos/sin [seq, rot].
fn apply_rotary(x: &Tensor, cos: &Tensor, sin: &Tensor) -> Result<Tensor> {
    let rot = cos.dim(D::Minus1)?;
    let head_dim = x.dim(D::Minus1)?;
    let x_rot = x.narrow(D::Minus1, 0, rot)?;
    let x_pass = x.narrow(D::Minus1, rot, head_dim - rot)?;
    let embedded = (x_rot.broadcast_mul(cos)? + crate::rope::rotate_half(&x_rot)?.broadcast_mul(sin)?)?;
    Ok(Tensor::cat(&[&embedded, &x_pass], D::Minus1)?)
}

/// `Qwen3_5Attention`: q_proj yields query and gate per head; zero-centred RMSNorm on q and
/// k per head; partial interleaved M-RoPE; grouped KV heads; causal softmax; × sigmoid(gate).
pub struct Attention {
    q_proj: Linear,
    k_proj: Linear,
    v_proj: Linear,
    o_proj: Linear,
    q_norm: RmsNorm,
    k_norm: RmsNorm,
    num_heads: usize,
    num_kv_heads: usize,
    head_dim: usize,
}

impl Attention {
    pub fn new(cfg: &TextConfig, vb: VarBuilder) -> Result<Self> {
        let (h, hd) = (cfg.hidden_size, cfg.head_dim);
        let bias = cfg.attention_bias;
        Ok(Attention {
            q_proj: linear_b(h, cfg.num_attention_heads * hd * 2, bias, vb.pp("q_proj"))?,
            k_proj: linear_b(h, cfg.num_key_value_heads * hd, bias, vb.pp("k_proj"))?,
            v_proj: linear_b(h, cfg.num_key_value_heads * hd, bias, vb.pp("v_proj"))?,
            o_proj: linear_b(cfg.num_attention_heads * hd, h, bias, vb.pp("o_proj"))?,
            q_norm: RmsNorm::new(hd, cfg.rms_norm_eps, vb.pp("q_norm"))?,
            k_norm: RmsNorm::new(hd, cfg.rms_norm_eps, vb.pp("k_norm"))?,
            num_heads: cfg.num_attention_heads,
            num_kv_heads: cfg.num_key_value_heads,
            head_dim: hd,
        })
    }

    /// x [seq, hidden], cos/sin [seq, rotary dim] → [seq, hidden]
    pub fn forward(&self, x: &Tensor, cos: &Tensor, sin: &Tensor) -> Result<Tensor> {
        let seq = x.dim(0)?;
        let (nh, nkv, hd) = (self.num_heads, self.num_kv_heads, self.head_dim);
        let q_and_gate = self.q_proj.forward(x)?.reshape((seq, nh, 2 * hd))?;
        let query = q_and_gate.narrow(D::Minus1, 0, hd)?;
        let gate = q_and_gate.narrow(D::Minus1, hd, hd)?.reshape((seq, nh * hd))?;

        let q = self.q_norm.forward(&query)?.transpose(0, 1)?.contiguous()?; // [nh, seq, hd]
        let k = self.k_norm.forward(&self.k_proj.forward(x)?.reshape((seq, nkv, hd))?)?.transpose(0, 1)?;
        let v = self.v_proj.forward(x)?.reshape((seq, nkv, hd))?.transpose(0, 1)?;
        let q = apply_rotary(&q, cos, sin)?;
        let k = apply_rotary(&k.contiguous()?, cos, sin)?;

        // repeat_kv: KV head j serves query heads j·groups .. (j+1)·groups.
        let groups = nh / nkv;
        let repeat = |t: Tensor| -> Result<Tensor> {
            Ok(t.unsqueeze(1)?.expand((nkv, groups, seq, hd))?.reshape((nh, seq, hd))?)
        };
        let (k, v) = (repeat(k)?, repeat(v.contiguous()?)?);

        let scores = (q.matmul(&k.t()?)? * (hd as f64).powf(-0.5))?;
        let scores = scores.broadcast_add(&causal_mask(seq, x.device())?)?;
        let probs = candle_nn::ops::softmax_last_dim(&scores)?;
        let out = probs.matmul(&v)?.transpose(0, 1)?.reshape((seq, nh * hd))?;
        let out = (out * candle_nn::ops::sigmoid(&gate)?)?;
        Ok(self.o_proj.forward(&out)?)
    }
}

/// [seq, seq]: 0 on and below the diagonal, −inf above.
fn causal_mask(seq: usize, device: &Device) -> Result<Tensor> {
    let mask: Vec<f32> =
        (0..seq).flat_map(|i| (0..seq).map(move |j| if j <= i { 0.0 } else { f32::NEG_INFINITY })).collect();
    Ok(Tensor::from_vec(mask, (seq, seq), device)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn interleaved_sections_of_qwen36_assign_h_and_w_to_every_third_frequency() {
        let axes = frequency_axes(&[11, 11, 10], 32);
        let expected: Vec<usize> = (0..32)
            .map(|i| match i % 3 {
                1 if i < 33 => 1,
                2 if i < 30 => 2,
                _ => 0,
            })
            .collect();
        assert_eq!(axes, expected);
        let counts = [0, 1, 2].map(|a| axes.iter().filter(|&&x| x == a).count());
        assert_eq!(counts, [11, 11, 10], "frequencies per axis (t, h, w)");
    }
}
