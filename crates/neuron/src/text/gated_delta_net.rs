//! The linear-attention mixer, mirroring `Qwen3_5GatedDeltaNet.forward` with its cache: the
//! prefill of a prompt, later chunks of it, and one-token decode steps.
//!
//! In a bf16 model the projections, the conv input, output and state, q, k, v, β and the
//! layer's output are bf16 (see [`crate::precision`]). The reference's upcasts, reproduced:
//! - `g = -self.A_log.float().exp() * F.softplus(a.float() + self.dt_bias)`: A_log, `a` (the
//!   bf16 `in_proj_a` output) and dt_bias widened, exp, softplus and the product in f32; g
//!   stays f32;
//! - the delta rule: q, k, v, β and g `.to(torch.float32)`, everything in f32, the output
//!   rounded once by `.to(initial_dtype)`; its state stays f32, and so does the cached
//!   recurrent state (see [`super::delta_rule`]);
//! - the conv has none: `F.conv1d` on bf16 (f32 accumulation, one rounding), then SiLU (one
//!   rounding); the conv state keeps the bf16 `in_proj_qkv` output;
//! - the gated norm: see [`super::norm`]. `beta = b.sigmoid()` is bf16 (one rounding).

use anyhow::{ensure, Result};
use candle_core::{DType, Tensor};
use candle_nn::{Module, VarBuilder};

use super::cache::LinearState;
use super::delta_rule::{chunk_gated_delta_rule_with, recurrent_gated_delta_rule_with, DeltaRuleConstants, CHUNK_SIZE};
use super::norm::RmsNormGated;
use crate::config::TextConfig;
use crate::linear::{linear_no_bias, Linear};
use crate::precision::get_f32;

/// `Qwen3_5GatedDeltaNet`: in_proj_qkv → depthwise causal conv1d + SiLU → q, k, v; β =
/// sigmoid(b); g = −exp(A_log)·softplus(a + dt_bias); the gated delta rule (chunked, or
/// recurrent for one token after a cached state, as the reference chooses); gated RMSNorm with
/// SiLU(z); out_proj.
pub struct GatedDeltaNet {
    in_proj_qkv: Linear,
    in_proj_z: Linear,
    in_proj_b: Linear,
    in_proj_a: Linear,
    /// Depthwise kernel [conv_dim, kernel].
    conv_weight: Tensor,
    /// −exp(A_log), per value head, in f32.
    neg_a: Tensor,
    /// In f32.
    dt_bias: Tensor,
    norm: RmsNormGated,
    out_proj: Linear,
    num_k_heads: usize,
    num_v_heads: usize,
    head_k_dim: usize,
    head_v_dim: usize,
    /// `F.softplus`'s threshold ([`crate::config::TextConstants::softplus_threshold`]).
    softplus_threshold: f32,
    /// The delta rule's l2norm eps and query scale ([`crate::config::TextConstants`]).
    delta_rule: DeltaRuleConstants,
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
            neg_a: get_f32(&vb, nv, "A_log")?.exp()?.neg()?,
            dt_bias: get_f32(&vb, nv, "dt_bias")?,
            norm: RmsNormGated::new(cfg.linear_value_head_dim, cfg.gated_norm_eps(), vb.pp("norm"))?,
            out_proj: linear_no_bias(value_dim, h, vb.pp("out_proj"))?,
            num_k_heads: cfg.linear_num_key_heads,
            num_v_heads: nv,
            head_k_dim: cfg.linear_key_head_dim,
            head_v_dim: cfg.linear_value_head_dim,
            softplus_threshold: cfg.constants.softplus_threshold,
            delta_rule: DeltaRuleConstants {
                l2norm_eps: cfg.constants.l2norm_eps,
                query_scale: cfg.constants.linear_attention_scale,
            },
        })
    }

    /// x [batch, seq, hidden] and per row the layer's state after the row's tokens before x
    /// (`None` when there are none) and how many of x's first tokens in the row are left
    /// padding → the output [batch, seq, hidden]; each row's state is replaced by the state after
    /// its x ([`LinearState`]'s shapes).
    ///
    /// Follows `Qwen3_5GatedDeltaNet.forward` with a cache: padding tokens are zeroed first, as
    /// `apply_mask_to_padding_states` does (so they add nothing to the conv window or the state);
    /// the conv state is updated as by `update_conv_state` / `causal_conv1d_update` (see
    /// [`causal_conv_with_state`]); more than one token, or no state yet, runs
    /// `torch_chunk_gated_delta_rule` from the stored recurrent state (zeros when none); exactly
    /// one token after a state runs `torch_recurrent_gated_delta_rule` from it. Without a state
    /// this is the prefill of the reference with or without a cache. The projections run on every
    /// row at once; the conv and the delta rule row by row.
    pub fn forward(&self, x: &Tensor, states: &mut [&mut Option<LinearState>], padding: &[usize]) -> Result<Tensor> {
        let (batch, seq, _) = x.dims3()?;
        ensure!(
            states.len() == batch && padding.len() == batch,
            "{batch} rows with {} states and {} padding counts",
            states.len(),
            padding.len()
        );
        let x = &zero_padding(x, padding)?;
        let (nk, nv, dk, dv) = (self.num_k_heads, self.num_v_heads, self.head_k_dim, self.head_v_dim);
        let mixed_qkv = self.in_proj_qkv.forward(x)?;
        let z = self.in_proj_z.forward(x)?.reshape((batch, seq, nv, dv))?;
        let beta = crate::precision::sigmoid(&self.in_proj_b.forward(x)?)?;
        let a = self.in_proj_a.forward(x)?.to_dtype(DType::F32)?.broadcast_add(&self.dt_bias)?;
        let g = softplus(&a, self.softplus_threshold)?.broadcast_mul(&self.neg_a)?;
        let constants = self.delta_rule;
        let mut cores = Vec::with_capacity(batch);
        for (row, state) in states.iter_mut().enumerate() {
            let previous = state.take();
            let (mixed, conv) =
                causal_conv_with_state(&mixed_qkv.get(row)?, previous.as_ref().map(|s| &s.conv), &self.conv_weight)?;
            let mixed = crate::precision::silu(&mixed)?;
            let query = mixed.narrow(1, 0, nk * dk)?.reshape((seq, nk, dk))?;
            let key = mixed.narrow(1, nk * dk, nk * dk)?.reshape((seq, nk, dk))?;
            let value = mixed.narrow(1, 2 * nk * dk, nv * dv)?.reshape((seq, nv, dv))?;
            let (g, beta) = (g.get(row)?, beta.get(row)?);
            let (core, recurrent) = match &previous {
                Some(state) if seq == 1 => {
                    recurrent_gated_delta_rule_with(&query, &key, &value, &g, &beta, Some(&state.recurrent), constants)?
                }
                _ => {
                    let state = previous.as_ref().map(|s| &s.recurrent);
                    chunk_gated_delta_rule_with(&query, &key, &value, &g, &beta, CHUNK_SIZE, state, constants)?
                }
            };
            cores.push(core);
            **state = Some(LinearState { conv, recurrent });
        }
        let core = self.norm.forward(&Tensor::stack(&cores, 0)?, &z)?.reshape((batch, seq, nv * dv))?;
        Ok(self.out_proj.forward(&core)?)
    }
}

/// `apply_mask_to_padding_states`: x [batch, seq, hidden] with the first `padding[row]` tokens of
/// each row set to zero (x itself when no row is padded).
fn zero_padding(x: &Tensor, padding: &[usize]) -> Result<Tensor> {
    if padding.iter().all(|&p| p == 0) {
        return Ok(x.clone());
    }
    let (batch, seq, hidden) = x.dims3()?;
    let rows = (0..batch)
        .map(|row| {
            let p = padding[row].min(seq);
            let real = x.get(row)?.narrow(0, p, seq - p)?;
            let zeros = Tensor::zeros((p, hidden), x.dtype(), x.device())?;
            Ok(Tensor::cat(&[&zeros, &real], 0)?)
        })
        .collect::<Result<Vec<_>>>()?;
    Ok(Tensor::stack(&rows, 0)?)
}

/// The depthwise causal conv1d (no activation) over x [seq, channels] with the conv state
/// `state` [channels, K] of the tokens before it (`None`: no tokens, i.e. zeros), w [channels,
/// K] → (out [seq, channels], the new state [channels, K]). For bf16 inputs the products are
/// summed in f32 and the output rounded once, as PyTorch's bf16 `F.conv1d`.
///
/// The reference's three paths are one computation on `window = [state ; x]` ([K + seq,
/// channels], state zeros when none): out[t, c] = Σ_j w[c, j] · window[t + 1 + j, c], and the
/// new state is the last K rows of the window, transposed. A first prefill
/// (`update_conv_state` left-pads x with zeros to K columns and stores its last K, then
/// `causal_conv1d_fn` pads K − 1 zeros) sees zeros before the first token; a later chunk
/// (`update_conv_state` concatenates the stored state, `causal_conv1d_fn` keeps the last seq
/// outputs) and a decode step (`causal_conv1d_update`: no padding, last output) see the stored
/// columns, of which the oldest is stored but falls outside the kernel.
fn causal_conv_with_state(x: &Tensor, state: Option<&Tensor>, w: &Tensor) -> Result<(Tensor, Tensor)> {
    let (seq, channels) = x.dims2()?;
    let kernel = w.dim(1)?;
    let before = match state {
        Some(state) => {
            ensure!(
                state.dims() == [channels, kernel],
                "conv state {:?}, expected [{channels}, {kernel}]",
                state.dims()
            );
            state.t()?
        }
        None => Tensor::zeros((kernel, channels), x.dtype(), x.device())?,
    };
    let window = Tensor::cat(&[&before, x], 0)?;
    let new_state = window.narrow(0, seq, kernel)?.t()?.contiguous()?;
    let (wide_window, w) = (window.to_dtype(DType::F32)?, w.to_dtype(DType::F32)?);
    let mut out = Tensor::zeros((seq, channels), DType::F32, x.device())?;
    for j in 0..kernel {
        let tap = w.narrow(1, j, 1)?.squeeze(1)?; // [channels]
        out = (out + wide_window.narrow(0, j + 1, seq)?.broadcast_mul(&tap)?)?;
    }
    Ok((out.to_dtype(x.dtype())?, new_state))
}

/// `F.softplus` (beta 1, threshold 20 in the model): log1p(exp(x)), and x itself above the
/// threshold. Element-wise on the host because candle has no log1p, and `log(1 + exp(x))` loses
/// all digits for x ≪ 0.
fn softplus(x: &Tensor, threshold: f32) -> Result<Tensor> {
    let values: Vec<f32> = x.flatten_all()?.to_vec1()?;
    let soft: Vec<f32> = values.into_iter().map(|v| if v > threshold { v } else { v.exp().ln_1p() }).collect();
    Ok(Tensor::from_vec(soft, x.shape(), x.device())?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn softplus_keeps_small_values_and_is_the_identity_above_20_where_exp_overflows() {
        let x = Tensor::new(&[-30f32, 0.0, 20.0, 25.0, 100.0], &Device::Cpu).unwrap();
        let y: Vec<f32> = softplus(&x, 20.0).unwrap().to_vec1().unwrap();
        // log(1 + exp(-30)) = 9.36e-14: log1p keeps it where log(1 + …) would give 0.
        assert!((y[0] - 9.357623e-14).abs() < 1e-19, "softplus(-30) = {}", y[0]);
        assert!((y[1] - std::f32::consts::LN_2).abs() < 1e-7, "softplus(0) = {}", y[1]);
        // exp(100) overflows f32: above the threshold the value itself, as F.softplus does.
        assert_eq!(&y[2..], &[20.0, 25.0, 100.0], "softplus above the threshold");
    }
    use candle_core::Device;

    fn column(t: &Tensor) -> Vec<f32> {
        t.flatten_all().unwrap().to_vec1().unwrap()
    }

    #[test]
    fn the_causal_conv_sees_only_the_current_and_earlier_tokens() {
        let x = Tensor::new(&[[1f32], [2.], [3.], [4.]], &Device::Cpu).unwrap();
        let w = Tensor::new(&[[1000f32, 100., 10., 1.]], &Device::Cpu).unwrap();
        let (out, state) = causal_conv_with_state(&x, None, &w).unwrap();
        // out[t] = 1·x[t] + 10·x[t−1] + 100·x[t−2] + 1000·x[t−3]
        assert_eq!(column(&out), [1., 12., 123., 1234.], "causal conv output");
        assert_eq!((state.dims(), column(&state)), (&[1, 4][..], vec![1., 2., 3., 4.]), "conv state");
    }

    /// `update_conv_state` keeps the last `kernel` (not kernel − 1) columns, left-padded with
    /// zeros for a prompt shorter than the kernel.
    #[test]
    fn the_conv_state_is_the_last_kernel_inputs_left_padded_with_zeros() {
        let w = Tensor::new(&[[1000f32, 100., 10., 1.]], &Device::Cpu).unwrap();
        let x = Tensor::new(&[[5f32], [6.]], &Device::Cpu).unwrap();
        let (_, state) = causal_conv_with_state(&x, None, &w).unwrap();
        assert_eq!(column(&state), [0., 0., 5., 6.], "state after a two-token prompt");
        let longer = Tensor::new(&[[1f32], [2.], [3.], [4.], [5.], [6.]], &Device::Cpu).unwrap();
        let (_, state) = causal_conv_with_state(&longer, None, &w).unwrap();
        assert_eq!(column(&state), [3., 4., 5., 6.], "state after a six-token prompt");
    }

    /// A sequence convolved in pieces, each after the state of the ones before (a later chunk
    /// and single-token steps), gives the outputs and the state of one pass, exactly.
    #[test]
    fn convolving_in_pieces_from_the_stored_state_equals_one_pass() {
        let x = Tensor::new(&[[1f32, -1.], [2., 0.5], [3., 4.], [4., -2.], [5., 1.], [6., 3.], [7., 0.]], &Device::Cpu)
            .unwrap();
        let w = Tensor::new(&[[1000f32, 100., 10., 1.], [0.5, -0.25, 2., 3.]], &Device::Cpu).unwrap();
        let (whole, whole_state) = causal_conv_with_state(&x, None, &w).unwrap();
        let mut state = None;
        let mut pieces = Vec::new();
        for (start, len) in [(0, 2), (2, 3), (5, 1), (6, 1)] {
            let (out, next) = causal_conv_with_state(&x.narrow(0, start, len).unwrap(), state.as_ref(), &w).unwrap();
            pieces.push(out);
            state = Some(next);
        }
        let pieces = Tensor::cat(&pieces, 0).unwrap();
        assert_eq!(column(&pieces), column(&whole), "outputs of the pieces vs one pass");
        assert_eq!(column(&state.unwrap()), column(&whole_state), "state after the pieces vs one pass");
    }

    /// On bf16 input the conv sums its four products in f32 and rounds once (PyTorch's bf16
    /// `F.conv1d`, measured equal element for element); the state keeps the bf16 inputs.
    #[test]
    fn the_bf16_conv_sums_in_f32_and_rounds_once() {
        use half::bf16;
        let round = |v: f32| bf16::from_f32(v).to_f32();
        let (seq, channels) = (9, 64);
        let x: Vec<f32> = (0..seq * channels).map(|i| round(((i * 29 % 71) as f32 - 35.0) * 0.0937)).collect();
        let w: Vec<f32> = (0..channels * 4).map(|i| round(((i * 17 % 23) as f32 - 11.0) * 0.113)).collect();
        let to_bf16 = |v: &[f32], shape: (usize, usize)| {
            Tensor::from_slice(v, shape, &Device::Cpu).unwrap().to_dtype(candle_core::DType::BF16).unwrap()
        };
        let (out, state) =
            causal_conv_with_state(&to_bf16(&x, (seq, channels)), None, &to_bf16(&w, (channels, 4))).unwrap();
        assert_eq!((out.dtype(), state.dtype()), (candle_core::DType::BF16, candle_core::DType::BF16));
        let (mut once, mut stepwise) = (Vec::new(), Vec::new());
        for t in 0..seq {
            for c in 0..channels {
                let window = |j: usize| if t + j >= 3 { x[(t + j - 3) * channels + c] } else { 0.0 };
                let (mut sum, mut rounded) = (0f32, 0f32);
                for j in 0..4 {
                    sum += window(j) * w[c * 4 + j];
                    rounded = round(rounded + round(window(j) * w[c * 4 + j]));
                }
                once.push(round(sum));
                stepwise.push(rounded);
            }
        }
        let got = column(&out.to_dtype(candle_core::DType::F32).unwrap());
        assert_eq!(got, once, "rounded once after an f32 sum");
        assert_ne!(got, stepwise, "the inputs should tell one rounding from a rounding per step");
        let x = &x;
        let last: Vec<f32> = (0..channels).flat_map(|c| (seq - 4..seq).map(move |t| x[t * channels + c])).collect();
        assert_eq!(column(&state.to_dtype(candle_core::DType::F32).unwrap()), last, "the state: the last 4 inputs");
    }

    #[test]
    fn padding_tokens_are_zeroed_and_the_real_ones_kept() {
        let x =
            Tensor::new(&[[[1f32, 2.], [3., 4.], [5., 6.]], [[7., 8.], [9., 10.], [11., 12.]]], &Device::Cpu).unwrap();
        let zeroed = zero_padding(&x, &[2, 0]).unwrap();
        assert_eq!(column(&zeroed), [0., 0., 0., 0., 5., 6., 7., 8., 9., 10., 11., 12.], "row 0 padded by 2");
        assert_eq!(column(&zero_padding(&x, &[0, 0]).unwrap()), column(&x), "no padding: unchanged");
    }

    #[test]
    fn softplus_switches_to_identity_above_twenty() {
        let x = Tensor::new(&[-30f32, 0.0, 19.0, 25.0], &Device::Cpu).unwrap();
        let y: Vec<f32> = softplus(&x, 20.0).unwrap().to_vec1().unwrap();
        let expected = [(-30f32).exp().ln_1p(), 2f32.ln(), 19f32.exp().ln_1p(), 25.0];
        for (i, (a, e)) in y.iter().zip(expected).enumerate() {
            assert!((a - e).abs() <= 1e-6 * e.abs().max(1e-30), "softplus[{i}] = {a}, expected {e}");
        }
    }
}
