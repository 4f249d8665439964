//! The gated full attention of the text model, mirroring `Qwen3_5Attention` (eager path) with
//! its key/value cache, and its interleaved multimodal rotary embedding
//! (`Qwen3_5TextRotaryEmbedding`).
//!
//! In a bf16 model the projections, the rotary products, the scores, the probabilities and the
//! cached keys and values are bf16 (see [`crate::precision`] for how each op rounds). The
//! reference's upcasts, reproduced:
//! - `eager_attention_forward`: `softmax(attn_weights, dim=-1, dtype=torch.float32)` then
//!   `.to(query.dtype)` — the bf16 scores (a bf16 matmul, then `* scaling` with the product in
//!   f32 and rounded once) are widened, the causal mask (`finfo.min` in the reference, −inf
//!   here: the same zeros after the softmax) is added and the softmax taken in f32, and the
//!   probabilities are rounded once;
//! - q_norm and k_norm: see [`super::norm`]; the rotary tables arrive rounded to bf16 (see
//!   [`super`]) and `apply_rotary_pos_emb` has no upcast: `q·cos + rotate_half(q)·sin` rounds
//!   after each product and after the sum;
//! - none in the output gate: `attn_output * torch.sigmoid(gate)` is a sigmoid rounded once and
//!   a bf16 product.

use anyhow::{ensure, Result};
use candle_core::{Device, Tensor, D};
use candle_nn::{Module, VarBuilder};

use super::cache::KvState;
use super::norm::RmsNorm;
use crate::config::TextConfig;
use crate::linear::{linear_b, Linear};
use crate::precision::in_f32;

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
    /// `Qwen3_5Attention.scaling` ([`TextConfig::attention_scale`]).
    scale: f64,
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
            scale: cfg.attention_scale(),
        })
    }

    /// x [batch, seq, hidden], cos/sin [batch, seq, rotary dim] of each row's positions, and per
    /// row the keys and values of its tokens before x (`None` when there are none) and how many
    /// of its first tokens are left padding → the output [batch, seq, hidden]; each row's state
    /// is replaced by the keys (after q/k norm and rotary) and values of all its past + seq
    /// tokens ([`KvState`]).
    ///
    /// As `Qwen3_5Attention.forward` with `past_key_values.update`: the new keys and values are
    /// appended to the cached ones, and the query of token i (absolute index past + i) attends
    /// to keys 0 ..= past + i (`create_causal_mask` with the cache length as offset) that are not
    /// padding (the `attention_mask` of a left-padded batch). The projections run on every row
    /// at once, so a decode step reads each weight once for the whole batch.
    pub fn forward(
        &self,
        x: &Tensor,
        cos: &Tensor,
        sin: &Tensor,
        states: &mut [&mut Option<KvState>],
        padding: &[usize],
    ) -> Result<Tensor> {
        let (batch, seq, _) = x.dims3()?;
        ensure!(
            states.len() == batch && padding.len() == batch,
            "{batch} rows with {} cache states and {} padding counts",
            states.len(),
            padding.len()
        );
        let (nh, nkv, hd) = (self.num_heads, self.num_kv_heads, self.head_dim);
        let q_and_gate = self.q_proj.forward(x)?.reshape((batch, seq, nh, 2 * hd))?;
        let query = q_and_gate.narrow(D::Minus1, 0, hd)?;
        let gate = q_and_gate.narrow(D::Minus1, hd, hd)?.reshape((batch, seq, nh * hd))?;
        let query = self.q_norm.forward(&query)?;
        let key = self.k_norm.forward(&self.k_proj.forward(x)?.reshape((batch, seq, nkv, hd))?)?;
        let value = self.v_proj.forward(x)?.reshape((batch, seq, nkv, hd))?;
        let mut rows = Vec::with_capacity(batch);
        for (row, state) in states.iter_mut().enumerate() {
            let q = query.get(row)?.transpose(0, 1)?.contiguous()?; // [nh, seq, hd]
            let k = key.get(row)?.transpose(0, 1)?;
            let v = value.get(row)?.transpose(0, 1)?.contiguous()?;
            let (cos, sin) = (cos.get(row)?, sin.get(row)?);
            let q = apply_rotary(&q, &cos, &sin)?;
            let k = apply_rotary(&k.contiguous()?, &cos, &sin)?;
            let cached = match state.take() {
                Some(mut past) => {
                    past.append(&k, &v)?;
                    past
                }
                None => KvState::new(&k, &v)?,
            };
            rows.push(self.attend(&q, &cached, padding[row])?);
            **state = Some(cached);
        }
        let out = Tensor::stack(&rows, 0)?; // [batch, seq, nh·hd]
        let out = (out * crate::precision::sigmoid(&gate)?)?;
        Ok(self.o_proj.forward(&out)?)
    }

    /// One row's attention: q [heads, seq, head_dim] of the row's last `seq` tokens over all its
    /// cached keys and values, the first `padding` of which are masked → [seq, heads·head_dim].
    ///
    /// Query head h reads KV head h / groups where it is cached (`repeat_kv` without its copy):
    /// each head's product is the one it was over the repeated keys, on the same operands.
    fn attend(&self, q: &Tensor, cached: &KvState, padding: usize) -> Result<Tensor> {
        let (nh, nkv, hd) = (self.num_heads, self.num_kv_heads, self.head_dim);
        let seq = q.dim(1)?;
        let total = cached.key.dim(1)?;
        let groups = nh / nkv;
        let scores = crate::precision::scale(&crate::linear::matmul_grouped(q, &cached.key.t()?, groups)?, self.scale)?;
        let mask = attention_mask(seq, total - seq, padding, q.device())?;
        let probs = in_f32(&scores, |s| Ok(candle_nn::ops::softmax_last_dim(&s.broadcast_add(&mask)?)?))?;
        Ok(crate::linear::matmul_grouped(&probs, &cached.value, groups)?.transpose(0, 1)?.reshape((seq, nh * hd))?)
    }
}

/// [seq, past + seq]: query i (absolute index past + i) sees keys 0 ..= past + i (0), not the
/// later ones (−inf), and not the first `padding` keys, which are left padding. A padding key
/// takes `f32::MIN`, as the reference's mask takes `finfo.min`: a query that is itself padding
/// sees only padding, and its softmax stays finite (uniform over those keys) instead of NaN,
/// which the Gated DeltaNet's zeroing would not remove (NaN · 0 is NaN).
fn attention_mask(seq: usize, past: usize, padding: usize, device: &Device) -> Result<Tensor> {
    let total = past + seq;
    let mask: Vec<f32> = (0..seq)
        .flat_map(|i| {
            (0..total).map(move |j| match j {
                j if j > past + i => f32::NEG_INFINITY,
                j if j < padding => f32::MIN,
                _ => 0.0,
            })
        })
        .collect();
    Ok(Tensor::from_vec(mask, (seq, total), device)?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::TextRopeParameters;
    use candle_core::DType;

    /// A 16-wide attention (4 query heads, 2 KV heads of 8 dims, 4 of them rotated) with
    /// seeded weights of unit scale, and six tokens of input x [6, 16].
    fn tiny_attention() -> (TextConfig, Attention, Tensor) {
        let cfg = TextConfig {
            hidden_size: 16,
            num_attention_heads: 4,
            num_key_value_heads: 2,
            head_dim: 8,
            rope_parameters: TextRopeParameters {
                rope_theta: 10000.0,
                partial_rotary_factor: 0.5,
                mrope_section: vec![1, 1, 0],
            },
            ..TextConfig::default()
        };
        let mut seed = 0x2545_F491_4F6C_DD1Du64;
        let mut random = |shape: &[usize]| {
            let n = shape.iter().product::<usize>();
            let values: Vec<f32> = (0..n)
                .map(|_| {
                    seed ^= seed << 13;
                    seed ^= seed >> 7;
                    seed ^= seed << 17;
                    (seed >> 40) as f32 / (1u64 << 23) as f32 - 1.0
                })
                .collect();
            Tensor::from_vec(values, shape, &Device::Cpu).unwrap()
        };
        let tensors = [
            ("q_proj.weight", random(&[64, 16])),
            ("k_proj.weight", random(&[16, 16])),
            ("v_proj.weight", random(&[16, 16])),
            ("o_proj.weight", random(&[16, 32])),
            ("q_norm.weight", random(&[8])),
            ("k_norm.weight", random(&[8])),
        ];
        let x = random(&[6, 16]);
        let tensors = tensors.into_iter().map(|(n, t)| (n.to_string(), t)).collect();
        let attention = Attention::new(&cfg, VarBuilder::from_tensors(tensors, DType::F32, &Device::Cpu)).unwrap();
        (cfg, attention, x)
    }

    /// One sequence x [seq, hidden] through the batched forward as a batch of one.
    fn one_row(
        attention: &Attention,
        x: &Tensor,
        cos: &Tensor,
        sin: &Tensor,
        past: Option<KvState>,
        padding: usize,
    ) -> (Tensor, KvState) {
        let mut state = past;
        let b = |t: &Tensor| t.unsqueeze(0).unwrap();
        let out = attention.forward(&b(x), &b(cos), &b(sin), &mut [&mut state], &[padding]).unwrap();
        (out.squeeze(0).unwrap(), state.unwrap())
    }

    fn max_diff(a: &Tensor, b: &Tensor) -> f32 {
        (a - b).unwrap().abs().unwrap().flatten_all().unwrap().max(0).unwrap().to_scalar().unwrap()
    }

    /// The cache must hold what `past_key_values.update` receives: keys after q/k norm and
    /// rotary (a cache of unrotated keys would be rotated again, or not at all, when read).
    #[test]
    fn keys_are_cached_after_their_norm_and_rotary_and_values_as_projected() {
        let (cfg, attention, x) = tiny_attention();
        let x = x.narrow(0, 0, 3).unwrap();
        let rotary = TextRotary::new(&cfg).unwrap();
        let positions = [vec![5, 6, 9], vec![5, 7, 9], vec![5, 8, 12]];
        let (cos, sin) = rotary.cos_sin(&positions, &Device::Cpu).unwrap();
        let (_, cached) = one_row(&attention, &x, &cos, &sin, None, 0);

        let heads_first = |t: Tensor| t.reshape((3, 2, 8)).unwrap().transpose(0, 1).unwrap().contiguous().unwrap();
        let normed = attention.k_norm.forward(&heads_first(attention.k_proj.forward(&x).unwrap())).unwrap();
        let rotated = apply_rotary(&normed, &cos, &sin).unwrap();
        assert_eq!(cached.key.dims(), [2, 3, 8], "cached keys [kv_heads, seq, head_dim]");
        assert_eq!(max_diff(&cached.key, &rotated), 0.0, "cached keys vs k_norm(k_proj(x)) after rotary");
        let unrotated = max_diff(&cached.key, &normed);
        assert!(unrotated > 1e-2, "rotary should move the keys at these positions (max |Δ| {unrotated:e})");
        let values = heads_first(attention.v_proj.forward(&x).unwrap());
        assert_eq!(max_diff(&cached.value, &values), 0.0, "cached values vs v_proj(x)");
    }

    /// Queries after a cache see every cached key and the causal part of their own chunk:
    /// three tokens, then two, then one give the outputs and cache of six in one pass.
    #[test]
    fn attending_after_cached_keys_equals_attending_over_the_whole_sequence() {
        let (cfg, attention, x) = tiny_attention();
        let rotary = TextRotary::new(&cfg).unwrap();
        let positions = [vec![0, 1, 2, 2, 5, 6], vec![0, 1, 2, 3, 5, 6], vec![0, 1, 3, 2, 5, 6]];
        let (cos, sin) = rotary.cos_sin(&positions, &Device::Cpu).unwrap();
        let (whole, whole_cache) = one_row(&attention, &x, &cos, &sin, None, 0);

        let mut cache: Option<KvState> = None;
        let mut outputs = Vec::new();
        for (start, len) in [(0, 3), (3, 2), (5, 1)] {
            let cut = |t: &Tensor| t.narrow(0, start, len).unwrap();
            let (out, next) = one_row(&attention, &cut(&x), &cut(&cos), &cut(&sin), cache, 0);
            outputs.push(out);
            cache = Some(next);
        }
        let cache = cache.unwrap();
        let diff = max_diff(&Tensor::cat(&outputs, 0).unwrap(), &whole);
        assert!(diff <= 1e-6, "outputs in pieces vs one pass: max |Δ| {diff:e}");
        assert_eq!(cache.key.dims(), [2, 6, 8], "cached keys after six tokens");
        let (dk, dv) = (max_diff(&cache.key, &whole_cache.key), max_diff(&cache.value, &whole_cache.value));
        assert_eq!((dk, dv), (0.0, 0.0), "keys and values cached in pieces vs one pass");
    }

    #[test]
    fn the_causal_mask_after_a_cache_lets_query_i_see_keys_up_to_past_plus_i() {
        let mask = attention_mask(2, 3, 0, &Device::Cpu).unwrap().to_vec2::<f32>().unwrap();
        let inf = f32::NEG_INFINITY;
        assert_eq!(mask, [vec![0.0, 0.0, 0.0, 0.0, inf], vec![0.0; 5]], "mask of 2 queries after 3 cached keys");
    }

    #[test]
    fn padding_keys_are_masked_with_the_least_float_so_a_padding_query_stays_finite() {
        let mask = attention_mask(4, 0, 2, &Device::Cpu).unwrap().to_vec2::<f32>().unwrap();
        let (inf, min) = (f32::NEG_INFINITY, f32::MIN);
        assert_eq!(
            mask,
            [vec![min, inf, inf, inf], vec![min, min, inf, inf], vec![min, min, 0.0, inf], vec![min, min, 0.0, 0.0]],
            "4 tokens, the first 2 padding"
        );
    }

    /// A row left-padded by two tokens attends over its real tokens exactly as the row alone:
    /// its padding keys get no weight, whatever their values.
    #[test]
    fn a_left_padded_row_attends_as_the_row_alone() {
        let (cfg, attention, x) = tiny_attention();
        let rotary = TextRotary::new(&cfg).unwrap();
        let real = x.narrow(0, 2, 4).unwrap();
        let positions = [vec![0, 1, 2, 3], vec![0, 1, 2, 3], vec![0, 1, 2, 3]];
        let (cos, sin) = rotary.cos_sin(&positions, &Device::Cpu).unwrap();
        let (alone, alone_cache) = one_row(&attention, &real, &cos, &sin, None, 0);
        // The same row behind two padding tokens (any values; positions 0, as the reference gives them).
        let padded_positions = [vec![0, 0, 0, 1, 2, 3], vec![0, 0, 0, 1, 2, 3], vec![0, 0, 0, 1, 2, 3]];
        let (cos, sin) = rotary.cos_sin(&padded_positions, &Device::Cpu).unwrap();
        let (padded, padded_cache) = one_row(&attention, &x, &cos, &sin, None, 2);
        let got = padded.narrow(0, 2, 4).unwrap();
        let diff = max_diff(&got, &alone);
        assert!(diff <= 1e-6, "the real tokens behind padding vs alone: max |Δ| {diff:e}");
        let pad_rows: Vec<f32> = padded.narrow(0, 0, 2).unwrap().flatten_all().unwrap().to_vec1().unwrap();
        assert!(pad_rows.iter().all(|v| v.is_finite()), "the padding rows stay finite: {pad_rows:?}");
        assert_eq!(padded_cache.key.dims(), [2, 6, 8], "the cache keeps the padding keys");
        let (dk, dv) = (
            max_diff(&padded_cache.key.narrow(1, 2, 4).unwrap(), &alone_cache.key),
            max_diff(&padded_cache.value.narrow(1, 2, 4).unwrap(), &alone_cache.value),
        );
        assert_eq!((dk, dv), (0.0, 0.0), "the real keys and values, as alone");
    }

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
