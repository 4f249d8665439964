//! The hybrid text model, mirroring `Qwen3_5TextModel` and the `lm_head` of
//! `Qwen3_5ForConditionalGeneration`: decoder layers of Gated DeltaNet (linear attention)
//! or gated full attention, chosen by `layer_types`, each pre-norm with residuals, reading
//! and extending a [`Cache`].
//!
//! In a bf16 model (see [`crate::precision`]) the embeddings, every layer's input and output, the
//! residual sums and the logits are bf16. The reference's upcasts at this level, reproduced:
//! - `Qwen3_5TextRotaryEmbedding`: `position_ids.float() * inv_freq` and `cos`/`sin` in f32, then
//!   `.to(dtype=x.dtype)`: the tables are rounded to bf16 once, before the rotation (which runs
//!   in bf16, see [`attention`]);
//! - the MLP has none: `act_fn(gate_proj(x)) * up_proj(x)` is SiLU rounded once, then a bf16
//!   product; `lm_head` gives bf16 logits (`generate` widens them to f32 exactly).

pub mod attention;
pub mod cache;
pub mod delta_rule;
pub mod gated_delta_net;
pub mod moe;
pub mod norm;
mod torch_sum;

use std::collections::BTreeMap;
use std::sync::Arc;

use anyhow::{bail, Result};
use candle_core::{DType, Tensor};
use candle_nn::{Module, VarBuilder};

use crate::config::{LayerType, TextConfig};
use crate::linear::{linear_no_bias, Linear};
use crate::stack::{Residency, Stack};
use crate::taps::Taps;
use crate::weights::Checkpoint;
use attention::{Attention, TextRotary};
use cache::{Cache, LayerState};
use contract::{ComputeDtype, Stage};
use gated_delta_net::GatedDeltaNet;
use moe::{Routing, SparseMoeBlock};
use norm::RmsNorm;

/// `Qwen3_5MLP`: down(SiLU(gate(x)) · up(x)).
struct Mlp {
    gate_proj: Linear,
    up_proj: Linear,
    down_proj: Linear,
}

impl Mlp {
    fn new(cfg: &TextConfig, vb: VarBuilder) -> Result<Self> {
        let (h, i) = (cfg.hidden_size, cfg.intermediate_size);
        Ok(Mlp {
            gate_proj: linear_no_bias(h, i, vb.pp("gate_proj"))?,
            up_proj: linear_no_bias(h, i, vb.pp("up_proj"))?,
            down_proj: linear_no_bias(i, h, vb.pp("down_proj"))?,
        })
    }

    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let gated = (crate::precision::silu(&self.gate_proj.forward(x)?)? * self.up_proj.forward(x)?)?;
        Ok(self.down_proj.forward(&gated)?)
    }
}

enum Mixer {
    Linear(GatedDeltaNet),
    Full(Attention),
}

/// The feed-forward half of a decoder layer: `Qwen3_5MLP` in the dense family,
/// `Qwen3_5MoeSparseMoeBlock` in the MoE family (both named `mlp` in the checkpoint).
enum FeedForward {
    Dense(Mlp),
    Sparse(SparseMoeBlock),
}

/// `Qwen3_5DecoderLayer` (and `Qwen3_5MoeDecoderLayer`).
struct DecoderLayer {
    input_layernorm: RmsNorm,
    mixer: Mixer,
    post_attention_layernorm: RmsNorm,
    mlp: FeedForward,
}

impl DecoderLayer {
    fn new(cfg: &TextConfig, layer_type: LayerType, vb: VarBuilder) -> Result<Self> {
        let mixer = match layer_type {
            LayerType::LinearAttention => Mixer::Linear(GatedDeltaNet::new(cfg, vb.pp("linear_attn"))?),
            LayerType::FullAttention => Mixer::Full(Attention::new(cfg, vb.pp("self_attn"))?),
        };
        Ok(DecoderLayer {
            input_layernorm: RmsNorm::new(cfg.hidden_size, cfg.rms_norm_eps, vb.pp("input_layernorm"))?,
            mixer,
            post_attention_layernorm: RmsNorm::new(
                cfg.hidden_size,
                cfg.rms_norm_eps,
                vb.pp("post_attention_layernorm"),
            )?,
            mlp: match cfg.moe {
                Some(_) => FeedForward::Sparse(SparseMoeBlock::new(cfg, vb.pp("mlp"))?),
                None => FeedForward::Dense(Mlp::new(cfg, vb.pp("mlp"))?),
            },
        })
    }

    /// x [batch, seq, hidden], cos/sin [batch, seq, rotary dim] → [batch, seq, hidden]; the mixer
    /// reads and replaces the rows' states of layer `index` in `caches` (one cache per row), whose
    /// first `padding[row]` tokens of x are left padding.
    /// A sparse block records its taps (`moe.{index}.*`, [tokens, …]) for one sequence only, and
    /// routes as `routing` says when given (routing teacher-forced).
    #[allow(clippy::too_many_arguments)]
    fn forward(
        &self,
        x: &Tensor,
        cos: &Tensor,
        sin: &Tensor,
        caches: &mut [Cache],
        index: usize,
        padding: &[usize],
        taps: &mut Taps,
        routing: Option<&Routing>,
    ) -> Result<Tensor> {
        let normed = self.input_layernorm.forward(x)?;
        let mixed = match &self.mixer {
            Mixer::Linear(m) => {
                let mut states = caches
                    .iter_mut()
                    .map(|c| match c.layer_mut(index)? {
                        LayerState::Linear(state) => Ok(state),
                        LayerState::Full(_) => bail!("a Gated DeltaNet layer was given an attention cache"),
                    })
                    .collect::<Result<Vec<_>>>()?;
                m.forward(&normed, &mut states, padding)?
            }
            Mixer::Full(m) => {
                let key_padding: Vec<usize> = caches.iter().map(Cache::padding).collect();
                let mut states = caches
                    .iter_mut()
                    .map(|c| match c.layer_mut(index)? {
                        LayerState::Full(state) => Ok(state),
                        LayerState::Linear(_) => bail!("an attention layer was given a Gated DeltaNet cache"),
                    })
                    .collect::<Result<Vec<_>>>()?;
                m.forward(&normed, cos, sin, &mut states, &key_padding)?
            }
        };
        let x = (x + mixed)?;
        let normed = self.post_attention_layernorm.forward(&x)?;
        let fed = match &self.mlp {
            FeedForward::Dense(mlp) => mlp.forward(&normed)?,
            FeedForward::Sparse(block) => {
                let (batch, seq, hidden) = normed.dims3()?;
                let mut none = Taps::disabled();
                let taps = if batch == 1 { taps } else { &mut none };
                block
                    .forward(&normed.reshape((batch * seq, hidden))?, index, taps, routing)?
                    .reshape((batch, seq, hidden))?
            }
        };
        Ok((&x + fed)?)
    }
}

/// `embed_tokens`: the whole table, or rows gathered from the mapped checkpoint on use
/// (248320 × 5120 floats are 5 GB; a prompt needs a few hundred rows), converted (streamed) or
/// copied as stored (a bf16 model of a bf16 checkpoint loaded `Residency::Mapped`).
enum Embedding {
    Resident(Tensor),
    Mapped(Arc<Checkpoint>),
    MappedBf16(crate::weights::MappedBf16),
}

/// `lm_head`: the whole matrix, or read from the mapped checkpoint in vocabulary chunks
/// for the one position whose logits are wanted.
enum Head {
    Resident(Linear),
    Mapped { checkpoint: Arc<Checkpoint>, name: String },
}

/// `lm_head` read from a mapped checkpoint `chunk` vocabulary rows at a time:
/// x [n, hidden] → [n, vocab], in x's dtype (bf16 rows are multiplied with f32 accumulation and
/// rounded once, as `F.linear`).
pub fn logits_in_chunks(x: &Tensor, checkpoint: &Checkpoint, name: &str, chunk: usize) -> Result<Tensor> {
    let vocab = checkpoint.shape(name)?[0];
    let chunks = (0..vocab)
        .step_by(chunk)
        .map(|start| {
            let rows = checkpoint.rows(name, start, chunk.min(vocab - start))?.to_dtype(x.dtype())?;
            Ok(Linear::new(rows, None).forward(x)?)
        })
        .collect::<Result<Vec<_>>>()?;
    Ok(Tensor::cat(&chunks, 1)?)
}

/// Vocabulary rows per chunk of a mapped `lm_head`: 16384 × 5120 floats are 320 MB at 27B.
const HEAD_CHUNK: usize = 16384;

const EMBED_TOKENS: &str = "model.language_model.embed_tokens.weight";

/// `Qwen3_5TextModel` plus `lm_head`.
pub struct TextModel {
    embed_tokens: Embedding,
    layers: Stack<DecoderLayer>,
    norm: RmsNorm,
    lm_head: Head,
    /// The M-RoPE table; public so tests can perturb it like the vision positions.
    pub rotary: TextRotary,
    layer_types: Vec<LayerType>,
    /// The compute dtype (f32 or bf16): the embeddings' and so every activation's.
    dtype: DType,
}

impl TextModel {
    /// `vb` is rooted at the checkpoint: reads `model.language_model.*` and `lm_head.weight`
    /// (or the embeddings when `tie_word_embeddings`), in `vb`'s dtype, which is the compute
    /// dtype.
    pub fn new(cfg: &TextConfig, tie_word_embeddings: bool, vb: VarBuilder<'static>) -> Result<Self> {
        use crate::weights::{fetch, Fetched, MAP};
        let lm = vb.pp("model.language_model");
        let shape = (cfg.vocab_size, cfg.hidden_size);
        let fetched = fetch(|| lm.get_with_hints(shape, "embed_tokens.weight", MAP))?;
        let lm_head = match (&fetched, tie_word_embeddings) {
            (_, false) => linear_no_bias(cfg.hidden_size, cfg.vocab_size, vb.pp("lm_head"))?,
            (Fetched::Tensor(table), true) => Linear::new(table.clone(), None),
            (Fetched::Mapped(_), true) => match fetch(|| lm.get_with_hints(shape, "embed_tokens.weight", MAP))? {
                Fetched::Mapped(table) => Linear::mapped(table, None),
                Fetched::Tensor(_) => bail!("the embedding table was mapped once, not twice"),
            },
        };
        let embed_tokens = match fetched {
            Fetched::Tensor(table) => Embedding::Resident(table),
            Fetched::Mapped(table) => Embedding::MappedBf16(table),
        };
        Self::assemble(cfg, vb, embed_tokens, Head::Resident(lm_head), Residency::Resident)
    }

    /// As [`TextModel::new`] but streamed from a mapped checkpoint: each decoder layer is
    /// read when it runs and dropped after, embeddings are gathered row by row, and the
    /// logits are computed in vocabulary chunks.
    pub fn streamed(
        cfg: &TextConfig,
        tie_word_embeddings: bool,
        checkpoint: Arc<Checkpoint>,
        dtype: ComputeDtype,
    ) -> Result<Self> {
        let vb = crate::weights::builder_in(checkpoint.clone(), dtype)?;
        let check = |name: &str, shape: [usize; 2]| -> Result<()> {
            let stored = checkpoint.shape(name)?;
            if stored != shape {
                bail!("shape mismatch for {name}: the model expects {shape:?}, the checkpoint stores {stored:?}");
            }
            Ok(())
        };
        check(EMBED_TOKENS, [cfg.vocab_size, cfg.hidden_size])?;
        let head = if tie_word_embeddings { EMBED_TOKENS } else { "lm_head.weight" };
        check(head, [cfg.vocab_size, cfg.hidden_size])?;
        let lm_head = Head::Mapped { checkpoint: checkpoint.clone(), name: head.to_string() };
        Self::assemble(cfg, vb, Embedding::Mapped(checkpoint), lm_head, Residency::Streamed)
    }

    fn assemble(
        cfg: &TextConfig,
        vb: VarBuilder<'static>,
        embed_tokens: Embedding,
        lm_head: Head,
        residency: Residency,
    ) -> Result<Self> {
        let lm = vb.pp("model.language_model");
        let layers = {
            let (cfg, lm, types) = (cfg.clone(), lm.clone(), cfg.layer_types());
            Stack::new(types.len(), residency, move |i| {
                DecoderLayer::new(&cfg, types[i], lm.pp(format!("layers.{i}")))
            })?
        };
        Ok(TextModel {
            embed_tokens,
            layers,
            norm: RmsNorm::new(cfg.hidden_size, cfg.rms_norm_eps, lm.pp("norm"))?,
            lm_head,
            rotary: TextRotary::new(cfg)?,
            layer_types: cfg.layer_types(),
            dtype: vb.dtype(),
        })
    }

    /// An empty cache for this model.
    pub fn new_cache(&self) -> Cache {
        Cache::new(&self.layer_types)
    }

    /// `embed_tokens`: ids [seq] → [seq, hidden].
    pub fn embed(&self, input_ids: &[u32]) -> Result<Tensor> {
        match &self.embed_tokens {
            Embedding::Resident(table) => {
                let vocab = table.dim(0)?;
                if let Some(bad) = input_ids.iter().find(|&&id| id as usize >= vocab) {
                    bail!("token id {bad} is outside the vocabulary of {vocab}");
                }
                let ids = Tensor::new(input_ids, table.device())?;
                Ok(table.index_select(&ids, 0)?)
            }
            Embedding::Mapped(checkpoint) => {
                Ok(checkpoint.gather_rows(EMBED_TOKENS, input_ids)?.to_dtype(self.dtype)?)
            }
            Embedding::MappedBf16(table) => table.gather_rows(input_ids),
        }
    }

    /// `lm_head` on the last position of each row: x [rows, hidden] → [rows, vocab].
    fn logits(&self, x: &Tensor) -> Result<Tensor> {
        match &self.lm_head {
            Head::Resident(linear) => Ok(linear.forward(x)?),
            Head::Mapped { checkpoint, name } => logits_in_chunks(x, checkpoint, name, HEAD_CHUNK),
        }
    }

    /// embeds [seq, hidden], positions [3][seq] (t, h, w) → logits at the last position
    /// [vocab], with no tokens before (a prefill without a cache). Records `lm.layer.{i}`,
    /// `lm.norm` and `lm.logits_last`.
    pub fn forward(&self, embeds: &Tensor, positions: &[Vec<i64>; 3], taps: &mut Taps) -> Result<Tensor> {
        self.forward_with_cache(embeds, positions, &mut self.new_cache(), taps)
    }

    /// `Qwen3_5TextModel.forward` with `past_key_values` (plus `lm_head` on the last
    /// position): embeds [seq, hidden] of the tokens after the `cache.len()` already seen, and
    /// their positions [3][seq] (t, h, w) → logits at the last position [vocab]. Every layer
    /// reads its state from `cache` and leaves the state after these tokens; any number of
    /// tokens may be appended (a whole prompt, a chunk of one, a decode step). The logits are
    /// f32 whatever the compute dtype. Records `lm.layer.{i}` [seq, hidden], `lm.norm` and
    /// `lm.logits_last`.
    pub fn forward_with_cache(
        &self,
        embeds: &Tensor,
        positions: &[Vec<i64>; 3],
        cache: &mut Cache,
        taps: &mut Taps,
    ) -> Result<Tensor> {
        self.forward_routed(embeds, positions, cache, taps, &BTreeMap::new())
    }

    /// [`TextModel::forward_with_cache`] with the experts of the MoE layers chosen as `routing`
    /// says (by layer; the router's own choice for a layer it does not name): the reference's
    /// choices, so that the experts' arithmetic is checked apart from the router's decisions.
    pub fn forward_routed(
        &self,
        embeds: &Tensor,
        positions: &[Vec<i64>; 3],
        cache: &mut Cache,
        taps: &mut Taps,
        routing: &BTreeMap<usize, Routing>,
    ) -> Result<Tensor> {
        let rows = Rows { positions: std::slice::from_ref(positions), padding: &[0], taps: TapAxes::Sequence, routing };
        Ok(self.forward_rows(&embeds.unsqueeze(0)?, rows, std::slice::from_mut(cache), taps)?.squeeze(0)?)
    }

    /// A batch: embeds [batch, seq, hidden] of each row's tokens after those its cache holds,
    /// left-padded to one length, with each row's positions (padding at 0, as the reference
    /// leaves them) and the count of leading tokens zeroed before each Gated DeltaNet layer →
    /// the logits at each row's last position [batch, vocab]. Full attention masks the keys each
    /// row's cache calls padding ([`Cache::padding`]). Each row reads and extends its own cache
    /// (`caches[row]`). Records the taps with a leading
    /// batch axis (`lm.layer.{i}` [batch, seq, hidden], `lm.logits_last` [batch, vocab]).
    pub fn forward_batch(
        &self,
        embeds: &Tensor,
        positions: &[[Vec<i64>; 3]],
        padding: &[usize],
        caches: &mut [Cache],
        taps: &mut Taps,
    ) -> Result<Tensor> {
        let routing = &BTreeMap::new();
        self.forward_rows(embeds, Rows { positions, padding, taps: TapAxes::Batch, routing }, caches, taps)
    }

    fn forward_rows(&self, embeds: &Tensor, rows: Rows, caches: &mut [Cache], taps: &mut Taps) -> Result<Tensor> {
        let (batch, seq, _) = embeds.dims3()?;
        if seq == 0 || rows.positions.len() != batch || rows.positions.iter().flatten().any(|row| row.len() != seq) {
            bail!(
                "{batch} rows of {seq} tokens with positions of {:?} columns: need one or more tokens, one column each",
                rows.positions.iter().map(|p| p[0].len()).collect::<Vec<_>>()
            );
        }
        if caches.len() != batch || rows.padding.len() != batch {
            bail!("{batch} rows with {} caches and {} padding counts", caches.len(), rows.padding.len());
        }
        if let Some(c) = caches.iter().find(|c| c.num_layers() != self.layer_types.len()) {
            bail!("the cache has {} layers, the model {}", c.num_layers(), self.layer_types.len());
        }
        let mut tables = (Vec::with_capacity(batch), Vec::with_capacity(batch));
        for positions in rows.positions {
            let (cos, sin) = self.rotary.cos_sin(positions, embeds.device())?;
            tables.0.push(cos.to_dtype(embeds.dtype())?);
            tables.1.push(sin.to_dtype(embeds.dtype())?);
        }
        let (cos, sin) = (Tensor::stack(&tables.0, 0)?, Tensor::stack(&tables.1, 0)?);
        let mut x = embeds.clone();
        self.layers.try_for_each(|i, layer| {
            x = layer.forward(&x, &cos, &sin, caches, i, rows.padding, taps, rows.routing.get(&i))?;
            rows.taps.record(taps, Stage::LmLayer.at(i), &x)
        })?;
        for cache in caches.iter_mut() {
            cache.advance(seq);
        }
        let x = self.norm.forward(&x)?;
        rows.taps.record(taps, Stage::LmNorm.tap(), &x)?;
        let last = x.narrow(1, seq - 1, 1)?.squeeze(1)?;
        // bf16 logits widened to f32 (exactly), as `generate` widens them before choosing.
        let logits = self.logits(&last)?.to_dtype(DType::F32)?;
        rows.taps.record(taps, Stage::LmLogitsLast.tap(), &logits)?;
        Ok(logits)
    }
}

/// The rows of a forward: positions and padding per row, how their taps are recorded, and the
/// expert choices given per MoE layer.
struct Rows<'a> {
    positions: &'a [[Vec<i64>; 3]],
    padding: &'a [usize],
    taps: TapAxes,
    routing: &'a BTreeMap<usize, Routing>,
}

/// Whether taps keep the batch axis (a batch) or drop it (one sequence, the contract's shapes).
#[derive(Clone, Copy)]
enum TapAxes {
    Sequence,
    Batch,
}

impl TapAxes {
    fn record(self, taps: &mut Taps, tap: contract::Tap, t: &Tensor) -> Result<()> {
        if taps.enabled() {
            match self {
                TapAxes::Batch => taps.record(tap, t),
                TapAxes::Sequence => taps.record(tap, &t.squeeze(0)?),
            }
        }
        Ok(())
    }
}
