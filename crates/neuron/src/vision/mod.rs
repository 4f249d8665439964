//! The vision tower and patch merger, mirroring `Qwen3_5VisionModel`
//! (`transformers/models/qwen3_5/modeling_qwen3_5.py`), top to bottom in the reference's order.
//!
//! In a bf16 model the activations between ops are bf16 (see [`crate::precision`]). The
//! reference's upcasts and f32 islands, reproduced:
//! - `pixel_values.type(self.visual.dtype)`: the pixels are rounded to bf16 before the patch
//!   embedding (a bf16 Conv3d: f32 accumulation with the bias, one rounding);
//! - the position embedding `(pos_embed(indices) * weights[:, :, None]).sum(1)`: the bf16 table
//!   times the f32 weights promotes to f32 and the sum is f32 (the `vision.pos_embed` tap), then
//!   `pos_embeds.to(hidden_states.dtype)` rounds it before the bf16 addition;
//! - rotary: `cos`/`sin` stay f32, and `apply_rotary_pos_emb_vision` rotates `q.float()` and
//!   `k.float()` in f32 and rounds them back once (`.to(orig_q_dtype)`);
//! - attention: `softmax(dim=-1, dtype=torch.float32).to(query.dtype)` over the bf16 scores
//!   (a bf16 matmul, `* scaling` in f32 rounded once);
//! - `nn.LayerNorm` and GELU on bf16 tensors compute in f32 and round once (PyTorch's kernels,
//!   measured; the modeling file writes no cast there): the norms run on widened inputs with
//!   widened weights.

pub mod positions;

use anyhow::{ensure, Result};
use candle_core::{DType, Device, IndexOp, Module, Tensor};
use candle_nn::{LayerNorm, VarBuilder};

use crate::config::VisionConfig;
use crate::linear::{linear, Linear};
use crate::precision::{get_f32, in_f32};
use crate::stack::{Residency, Stack};
use crate::taps::Taps;
use contract::Stage;
use positions::{attention_segments, pos_embed_interpolation, rotary_positions, Grid, Interpolation};

/// The position-dependent inputs of the tower for a set of image (and video) grids. Built by
/// [`VisionPositions::new`] from the pure functions in [`positions`]; the tower uses exactly
/// these, so a test may alter any of them before the forward pass.
///
/// A video's grid is t temporal patches of h × w: every position function repeats per
/// temporal patch (`patch_rows_cols`), so the position embedding and rotary coordinates are
/// the same for each frame, and each frame is its own attention segment.
#[derive(Debug, Clone, PartialEq)]
pub struct VisionPositions {
    /// The images' grids, then the videos'.
    pub grids: Vec<Grid>,
    pub interpolation: Interpolation,
    pub rotary: Vec<[u32; 2]>,
    pub segments: Vec<usize>,
    /// How many of `grids`, at the end, are videos.
    pub videos: usize,
}

impl VisionPositions {
    pub fn new(cfg: &VisionConfig, grids: &[Grid]) -> VisionPositions {
        let merge = cfg.spatial_merge_size;
        VisionPositions {
            grids: grids.to_vec(),
            interpolation: pos_embed_interpolation(grids, cfg.num_grid_per_side(), merge),
            rotary: rotary_positions(grids, merge),
            segments: attention_segments(grids),
            videos: 0,
        }
    }

    /// The positions of the images' grids followed by the videos'. The reference runs the
    /// tower once for the images and once for the videos (`get_image_features`,
    /// `get_video_features`); each row depends only on its own frame (position embedding,
    /// rotary, attention segment), so one run over both gives the rows of the two.
    pub fn with_videos(cfg: &VisionConfig, images: &[Grid], videos: &[Grid]) -> VisionPositions {
        let grids: Vec<Grid> = images.iter().chain(videos).copied().collect();
        VisionPositions { videos: videos.len(), ..VisionPositions::new(cfg, &grids) }
    }

    pub fn patches(&self) -> usize {
        self.rotary.len()
    }

    /// The images' grids.
    pub fn image_grids(&self) -> &[Grid] {
        &self.grids[..self.grids.len() - self.videos.min(self.grids.len())]
    }

    /// The videos' grids.
    pub fn video_grids(&self) -> &[Grid] {
        &self.grids[self.grids.len() - self.videos.min(self.grids.len())..]
    }
}

/// `Qwen3_5VisionPatchEmbed`: the Conv3d whose stride equals its kernel (T × P × P, T = 2
/// frames) is one matmul of each flattened (channel, frame, row, col) patch with the kernel
/// flattened the same way, plus the bias: both temporal slices of the kernel meet their own
/// frame. An image repeats its frame, so a kernel with its slices swapped gives the same
/// numbers there; a video's two frames differ, and only video shows such a fault.
struct PatchEmbed {
    proj: Linear,
}

impl PatchEmbed {
    fn new(cfg: &VisionConfig, vb: VarBuilder) -> Result<Self> {
        let (c, t, p) = (cfg.in_channels, cfg.temporal_patch_size, cfg.patch_size);
        let weight = vb.get((cfg.hidden_size, c, t, p, p), "proj.weight")?.reshape((cfg.hidden_size, c * t * p * p))?;
        let bias = vb.get(cfg.hidden_size, "proj.bias")?;
        Ok(PatchEmbed { proj: Linear::new(weight, Some(bias)) })
    }

    /// [patches, C·T·P·P] → [patches, Hv]
    fn forward(&self, pixel_values: &Tensor) -> Result<Tensor> {
        Ok(self.proj.forward(pixel_values)?)
    }
}

/// `Qwen3_5VisionRotaryEmbedding`: 2-D axial RoPE. A quarter of the head dims rotate with the
/// patch row, a quarter with the column, and the pattern repeats for the second half
/// (`rotate_half` pairs dim i with i + head_dim/2).
struct VisionRotary {
    inv_freq: Vec<f32>,
}

impl VisionRotary {
    fn new(cfg: &VisionConfig) -> Self {
        let dim = cfg.head_dim() / 2;
        let base = cfg.rope_theta() as f32;
        let inv_freq = crate::rope::inv_freq(base, dim);
        VisionRotary { inv_freq }
    }

    /// cos and sin, each [patches, head_dim].
    fn cos_sin(&self, positions: &[[u32; 2]], device: &Device) -> Result<(Tensor, Tensor)> {
        let quarter = self.inv_freq.len();
        let head_dim = 4 * quarter;
        let mut cos = Vec::with_capacity(positions.len() * head_dim);
        let mut sin = Vec::with_capacity(positions.len() * head_dim);
        for [row, col] in positions {
            let angles: Vec<f32> =
                [*row, *col].iter().flat_map(|&p| self.inv_freq.iter().map(move |f| p as f32 * f)).collect();
            for _ in 0..2 {
                cos.extend(angles.iter().map(|a| a.cos()));
                sin.extend(angles.iter().map(|a| a.sin()));
            }
        }
        let shape = (positions.len(), head_dim);
        Ok((Tensor::from_vec(cos, shape, device)?, Tensor::from_vec(sin, shape, device)?))
    }
}

/// `apply_rotary_pos_emb_vision`: x [patches, heads, head_dim], cos/sin [patches, head_dim].
fn apply_rotary(x: &Tensor, cos: &Tensor, sin: &Tensor) -> Result<Tensor> {
    let cos = cos.unsqueeze(1)?;
    let sin = sin.unsqueeze(1)?;
    Ok((x.broadcast_mul(&cos)? + crate::rope::rotate_half(x)?.broadcast_mul(&sin)?)?)
}

/// `Qwen3_5VisionAttention` with the eager path: each attention segment (one frame of one
/// image) attends only to its own patches.
struct VisionAttention {
    qkv: Linear,
    proj: Linear,
    num_heads: usize,
    head_dim: usize,
    /// `Qwen3_5VisionAttention.scaling` ([`VisionConfig::attention_scale`]).
    scale: f64,
}

impl VisionAttention {
    fn new(cfg: &VisionConfig, vb: VarBuilder) -> Result<Self> {
        let h = cfg.hidden_size;
        Ok(VisionAttention {
            qkv: linear(h, 3 * h, vb.pp("qkv"))?,
            proj: linear(h, h, vb.pp("proj"))?,
            num_heads: cfg.num_heads,
            head_dim: cfg.head_dim(),
            scale: cfg.attention_scale(),
        })
    }

    /// x [patches, Hv] → [patches, Hv]
    fn forward(&self, x: &Tensor, cos: &Tensor, sin: &Tensor, segments: &[usize]) -> Result<Tensor> {
        let n = x.dim(0)?;
        let qkv = self.qkv.forward(x)?.reshape((n, 3, self.num_heads, self.head_dim))?;
        let q = in_f32(&qkv.i((.., 0))?, |q| apply_rotary(q, cos, sin))?;
        let k = in_f32(&qkv.i((.., 1))?, |k| apply_rotary(k, cos, sin))?;
        let v = qkv.i((.., 2))?;
        let scale = self.scale;
        let mut outputs = Vec::with_capacity(segments.len());
        for bounds in segments.windows(2) {
            let (start, len) = (bounds[0], bounds[1] - bounds[0]);
            // [len, heads, d] → [heads, len, d]
            let seg = |t: &Tensor| -> Result<Tensor> { Ok(t.narrow(0, start, len)?.transpose(0, 1)?.contiguous()?) };
            let (q, k, v) = (seg(&q)?, seg(&k)?, seg(&v)?);
            let scores = crate::precision::scale(&crate::linear::matmul(&q, &k.t()?)?, scale)?;
            let probs = crate::precision::softmax_last_dim(&scores)?;
            outputs.push(crate::linear::matmul(&probs, &v)?.transpose(0, 1)?);
        }
        let out = Tensor::cat(&outputs, 0)?.reshape((n, self.num_heads * self.head_dim))?;
        Ok(self.proj.forward(&out)?)
    }
}

/// `Qwen3_5VisionMLP`: fc1, GELU (tanh approximation, `gelu_pytorch_tanh`), fc2.
struct VisionMlp {
    linear_fc1: Linear,
    linear_fc2: Linear,
}

impl VisionMlp {
    fn new(cfg: &VisionConfig, vb: VarBuilder) -> Result<Self> {
        Ok(VisionMlp {
            linear_fc1: linear(cfg.hidden_size, cfg.intermediate_size, vb.pp("linear_fc1"))?,
            linear_fc2: linear(cfg.intermediate_size, cfg.hidden_size, vb.pp("linear_fc2"))?,
        })
    }

    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        Ok(self.linear_fc2.forward(&in_f32(&self.linear_fc1.forward(x)?, gelu_tanh)?)?)
    }
}

/// `gelu_pytorch_tanh`: 0.5·x·(1 + tanh(√(2/π)·(x + 0.044715·x³))), on all cores.
///
/// candle's `gelu` calls glibc's `tanhf` on one core, which measured 14 % of the 27B
/// tower's time (perf); here tanh(u) = 1 − 2 / (exp(2u) + 1), which is within 1.2e-7 of it
/// (an absolute error, where the gate multiplies by |x|/2), computed in parallel.
fn gelu_tanh(x: &Tensor) -> Result<Tensor> {
    use rayon::prelude::*;
    const SQRT_2_OVER_PI: f32 = 0.797_884_6;
    let mut values: Vec<f32> = x.flatten_all()?.to_vec1()?;
    values.par_chunks_mut(1 << 14).for_each(|chunk| {
        for v in chunk {
            let u = SQRT_2_OVER_PI * (*v + 0.044715 * *v * *v * *v);
            let tanh = 1.0 - 2.0 / ((2.0 * u).exp() + 1.0);
            *v = 0.5 * *v * (1.0 + tanh);
        }
    });
    Ok(Tensor::from_vec(values, x.shape(), x.device())?)
}

/// `nn.LayerNorm(size, eps)`, eps being [`crate::config::VisionConstants::layer_norm_eps`]
/// (1e-6), with its weight and bias widened to f32, for [`norm`].
fn layer_norm_eps(size: usize, cfg: &VisionConfig, vb: VarBuilder) -> Result<LayerNorm> {
    Ok(LayerNorm::new(get_f32(&vb, size, "weight")?, get_f32(&vb, size, "bias")?, cfg.constants.layer_norm_eps))
}

/// A LayerNorm as PyTorch runs it on a bf16 tensor: in f32, rounded once.
fn norm(layer_norm: &LayerNorm, x: &Tensor) -> Result<Tensor> {
    in_f32(x, |x| Ok(layer_norm.forward(x)?))
}

/// `Qwen3_5VisionBlock`: pre-norm attention and MLP with residuals (LayerNorm eps 1e-6).
struct VisionBlock {
    norm1: LayerNorm,
    norm2: LayerNorm,
    attn: VisionAttention,
    mlp: VisionMlp,
}

impl VisionBlock {
    fn new(cfg: &VisionConfig, vb: VarBuilder) -> Result<Self> {
        Ok(VisionBlock {
            norm1: layer_norm_eps(cfg.hidden_size, cfg, vb.pp("norm1"))?,
            norm2: layer_norm_eps(cfg.hidden_size, cfg, vb.pp("norm2"))?,
            attn: VisionAttention::new(cfg, vb.pp("attn"))?,
            mlp: VisionMlp::new(cfg, vb.pp("mlp"))?,
        })
    }

    /// x [patches, Hv] → [patches, Hv]
    fn forward(&self, x: &Tensor, cos: &Tensor, sin: &Tensor, segments: &[usize]) -> Result<Tensor> {
        let x = (x + self.attn.forward(&norm(&self.norm1, x)?, cos, sin, segments)?)?;
        Ok((&x + self.mlp.forward(&norm(&self.norm2, &x)?)?)?)
    }
}

/// `Qwen3_5VisionPatchMerger` (no post-shuffle norm): LayerNorm per patch, then each
/// merge×merge block of consecutive patches is concatenated and projected by fc1, exact GELU,
/// fc2 (both with biases) into the language model's width.
struct PatchMerger {
    norm: LayerNorm,
    linear_fc1: Linear,
    linear_fc2: Linear,
    merged_dim: usize,
}

impl PatchMerger {
    fn new(cfg: &VisionConfig, vb: VarBuilder) -> Result<Self> {
        let merged_dim = cfg.hidden_size * cfg.spatial_merge_size * cfg.spatial_merge_size;
        Ok(PatchMerger {
            norm: layer_norm_eps(cfg.hidden_size, cfg, vb.pp("norm"))?,
            linear_fc1: linear(merged_dim, merged_dim, vb.pp("linear_fc1"))?,
            linear_fc2: linear(merged_dim, cfg.out_hidden_size, vb.pp("linear_fc2"))?,
            merged_dim,
        })
    }

    /// [patches, Hv] → [patches / merge², out_hidden]
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let x = norm(&self.norm, x)?.reshape(((), self.merged_dim))?;
        let hidden = in_f32(&self.linear_fc1.forward(&x)?, |h| Ok(h.gelu_erf()?))?;
        Ok(self.linear_fc2.forward(&hidden)?)
    }
}

/// `Qwen3_5VisionModel`.
pub struct VisionModel {
    patch_embed: PatchEmbed,
    pos_embed: Tensor,
    rotary: VisionRotary,
    blocks: Stack<VisionBlock>,
    merger: PatchMerger,
    cfg: VisionConfig,
    /// The compute dtype (`self.visual.dtype`).
    dtype: DType,
}

impl VisionModel {
    /// Builds the tower from `model.visual.*` (pass `vb.pp("model.visual")`).
    pub fn new(cfg: &VisionConfig, vb: VarBuilder<'static>) -> Result<Self> {
        Self::load(cfg, vb, Residency::Resident)
    }

    /// As [`VisionModel::new`]; streamed, each block is read from `vb` when it runs and dropped
    /// after (the patch embedding, position table and merger stay loaded).
    pub fn load(cfg: &VisionConfig, vb: VarBuilder<'static>, residency: Residency) -> Result<Self> {
        let blocks = {
            let (cfg, vb) = (cfg.clone(), vb.clone());
            Stack::new(cfg.depth, residency, move |i| VisionBlock::new(&cfg, vb.pp(format!("blocks.{i}"))))?
        };
        Ok(VisionModel {
            patch_embed: PatchEmbed::new(cfg, vb.pp("patch_embed"))?,
            pos_embed: vb.get((cfg.num_position_embeddings, cfg.hidden_size), "pos_embed.weight")?,
            rotary: VisionRotary::new(cfg),
            blocks,
            merger: PatchMerger::new(cfg, vb.pp("merger"))?,
            cfg: cfg.clone(),
            dtype: vb.dtype(),
        })
    }

    pub fn config(&self) -> &VisionConfig {
        &self.cfg
    }

    /// `(pos_embed(indices) * weights).sum(1)`: [patches, Hv], in f32.
    fn interpolated_pos_embed(&self, interp: &Interpolation) -> Result<Tensor> {
        let n = interp.indices.len();
        let device = self.pos_embed.device();
        let indices: Vec<u32> = interp.indices.iter().flatten().copied().collect();
        let weights: Vec<f32> = interp.weights.iter().flatten().copied().collect();
        let indices = Tensor::from_vec(indices, 4 * n, device)?;
        let weights = Tensor::from_vec(weights, (n, 4, 1), device)?;
        let gathered =
            self.pos_embed.index_select(&indices, 0)?.reshape((n, 4, self.cfg.hidden_size))?.to_dtype(DType::F32)?;
        Ok(gathered.broadcast_mul(&weights)?.sum(1)?)
    }

    /// pixel_values [patches, C·T·P·P] (processor order) → projector output
    /// [patches / merge², out_hidden]. Records `vision.patch_embed`, `vision.pos_embed`,
    /// `vision.block.{i}`, `vision.tower` and `vision.projector`.
    pub fn forward(&self, pixel_values: &Tensor, positions: &VisionPositions, taps: &mut Taps) -> Result<Tensor> {
        let n = positions.patches();
        ensure!(
            pixel_values.dims() == [n, self.cfg.patch_dim()],
            "pixel_values has shape {:?} but the image grids {:?} need [{n}, {}]",
            pixel_values.dims(),
            positions.grids,
            self.cfg.patch_dim()
        );
        let pixel_values = pixel_values.to_dtype(self.dtype)?;
        let patches = self.patch_embed.forward(&pixel_values)?;
        taps.record(Stage::VisionPatchEmbed.tap(), &patches);
        let pos = self.interpolated_pos_embed(&positions.interpolation)?;
        taps.record(Stage::VisionPosEmbed.tap(), &pos);
        let mut x = (&patches + pos.to_dtype(patches.dtype())?)?;

        let (cos, sin) = self.rotary.cos_sin(&positions.rotary, x.device())?;
        self.blocks.try_for_each(|i, block| {
            x = block.forward(&x, &cos, &sin, &positions.segments)?;
            taps.record(Stage::VisionBlock.at(i), &x);
            Ok(())
        })?;
        taps.record(Stage::VisionTower.tap(), &x);
        let merged = self.merger.forward(&x)?;
        taps.record(Stage::VisionProjector.tap(), &merged);
        Ok(merged)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gelu_tanh_matches_the_tanh_formula_from_minus_20_to_20() {
        let xs: Vec<f32> = (-40_000..=40_000).map(|i| i as f32 * 5e-4).collect();
        let x = Tensor::new(xs.as_slice(), &Device::Cpu).unwrap();
        let ours: Vec<f32> = gelu_tanh(&x).unwrap().to_vec1().unwrap();
        let (mut worst, mut at) = (0f64, 0f32);
        for (&v, &g) in xs.iter().zip(&ours) {
            let v64 = f64::from(v);
            let u = (2.0 / std::f64::consts::PI).sqrt() * (v64 + 0.044715 * v64.powi(3));
            let exact = 0.5 * v64 * (1.0 + u.tanh());
            let err = (f64::from(g) - exact).abs() / v64.abs().max(1.0);
            if err > worst {
                (worst, at) = (err, v);
            }
        }
        assert!(worst < 3e-7, "gelu_tanh is off by {worst:e} (relative to max(1, |x|)) at x = {at}");
    }
}
