//! The sparse mixture-of-experts block of the `qwen3_5_moe` family (Qwen3.5 / Qwen3.6-35B-A3B):
//! `Qwen3_5MoeSparseMoeBlock` with its `Qwen3_5MoeTopKRouter`, `Qwen3_5MoeExperts` and shared
//! expert (`transformers/models/qwen3_5_moe/modeling_qwen3_5_moe.py`, transformers 5.23.0).
//!
//! What the reference computes, and where it rounds in bf16 (checked against it element for
//! element; every other step is plain f32 in an f32 model):
//! - router: `router_logits = F.linear(x, gate.weight)` in the compute dtype (one rounding);
//!   `softmax(router_logits, dtype=torch.float)` over all experts; `torch.topk(probs, k)`; the k
//!   values divided by their sum (always: the config has no `norm_topk_prob`), in f32 with the
//!   sum in PyTorch's order; `.to(router_logits.dtype)`: the weights rounded once;
//! - each routed expert, on the rows of its tokens: `gate_up_proj[e]` is one linear layer of
//!   2·I outputs, the gate half first (`.chunk(2, dim=-1)`), each output rounded once; SiLU of
//!   the gate (one rounding), times up (one rounding), `down_proj[e]` (one rounding), times the
//!   token's weight (one rounding: a bf16 product is exact in f32);
//! - the sum of a token's k weighted outputs depends on transformers' `experts_implementation`,
//!   see [`ExpertsImplementation`]: `from_pretrained` picks `"grouped_mm"` (a sum in f32 over the
//!   token's k slots, rounded once); `"eager"` adds expert by expert into a zero tensor of the
//!   compute dtype (`index_add_`, a rounding per add). The two differ on 1408 of 6400 bf16
//!   elements of a random block, by up to 2 ulps;
//! - shared expert: `Qwen3_5MoeMLP` (as the dense MLP), times `sigmoid(shared_expert_gate(x))`
//!   (a linear layer to one output, rounded; the sigmoid in f32, rounded; the product, rounded),
//!   added to the routed sum (one rounding).
//!
//! The router's exp and the GEMMs' summation order are not PyTorch's (libm against SLEEF, gemm
//! against MKL), so probabilities and outputs move by f32 rounding; everything else (the top-k
//! order of ties, the sums, the rounding points) is PyTorch's. A token whose k-th and (k+1)-th
//! probabilities are that close may be routed differently: [`routing_margins`] finds such near
//! ties, and [`Routing`] feeds the reference's choices in to check the experts apart from them.

use anyhow::{bail, ensure, Context, Result};
use candle_core::{DType, Device, Module, Tensor};
use candle_nn::VarBuilder;
use contract::Stage;

use super::torch_sum::{torch_inner_sum, torch_outer_sum};
use crate::config::TextConfig;
use crate::linear::{linear_no_bias, Linear};
use crate::precision::{sigmoid, silu};
use crate::taps::Taps;

/// How the routed experts' outputs are summed per token: transformers' `experts_implementation`
/// (`integrations/moe.py`), which moves bf16 results by a rounding. It is not in `config.json`:
/// `from_pretrained(..., experts_implementation=...)` chooses it, `"grouped_mm"` when not given.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ExpertsImplementation {
    /// `"grouped_mm"` (the default; `"batched_mm"` sums the same way): each token's k weighted
    /// outputs, in its top-k order, summed by `weighted_out.view(n, k, H).sum(dim=1)`: in f32
    /// in PyTorch's reduction order (a running sum for k < 16 on every column in bf16; the f32
    /// kernel sums the columns past the last whole block of 32 in four chains, `torch_outer_sum`),
    /// rounded once to the compute dtype.
    #[default]
    GroupedMm,
    /// `"eager"` (`Qwen3_5MoeExperts.forward` as written): `final_hidden_states.index_add_` expert
    /// by expert, in increasing expert id, into a zero tensor of the compute dtype: in bf16 every
    /// add is rounded.
    Eager,
}

/// Which on-disk layout a block's routed experts were read from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExpertsLayout {
    /// `experts.gate_up_proj` [E, 2·I, H] (gate rows first) and `experts.down_proj` [E, H, I]:
    /// the module's own parameters, as the published Qwen3.5 / 3.6 MoE checkpoints store them.
    Fused,
    /// `experts.{e}.gate_proj.weight` [I, H], `experts.{e}.up_proj.weight` [I, H] and
    /// `experts.{e}.down_proj.weight` [H, I]: what transformers' `save_pretrained` writes
    /// (5.23 reverses its load-time conversion, `conversion_mapping.py`'s `qwen2_moe` entry
    /// that `qwen3_5_moe_text` adds: `MergeModulelist` then `Concatenate(dim=1)` of gate and up).
    PerExpert,
}

/// One routed expert: gate and up as one linear layer of 2·I outputs (gate first), and down.
struct Expert {
    gate_up: Linear,
    down: Linear,
}

/// `Qwen3_5MoeMLP` as the shared expert: down(SiLU(gate(x)) · up(x)).
struct SharedExpert {
    gate_proj: Linear,
    up_proj: Linear,
    down_proj: Linear,
}

impl SharedExpert {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let gated = (silu(&self.gate_proj.forward(x)?)? * self.up_proj.forward(x)?)?;
        Ok(self.down_proj.forward(&gated)?)
    }
}

/// The experts chosen for each token and their weights, row-major [tokens, k]; the weights are
/// f32 values already rounded to the compute dtype.
struct Decision {
    ids: Vec<u32>,
    weights: Vec<f32>,
}

/// Expert choices given from outside, instead of the router's: the reference's `moe.{i}.top_ids`
/// and `moe.{i}.top_weights` ("routing teacher-forced"), so that the experts' arithmetic is
/// checked apart from the router's decisions (which a near tie may flip).
#[derive(Debug, Clone, PartialEq)]
pub struct Routing {
    tokens: usize,
    k: usize,
    ids: Vec<u32>,
    weights: Vec<f32>,
}

impl Routing {
    /// `ids` [n, k] (any integer dtype) and `weights` [n, k] (any float dtype) for n tokens, in
    /// the same order. The weights are rounded to the compute dtype when used (exact for the
    /// reference's bf16 weights widened to f32).
    pub fn new(ids: &Tensor, weights: &Tensor) -> Result<Routing> {
        let (tokens, k) = ids.dims2().context("routing ids must be [tokens, k]")?;
        ensure!(
            weights.dims() == [tokens, k],
            "routing weights {:?} do not match the ids {:?}",
            weights.dims(),
            ids.dims()
        );
        let raw: Vec<i64> = ids.to_dtype(DType::I64)?.flatten_all()?.to_vec1()?;
        let ids = raw
            .iter()
            .map(|&id| u32::try_from(id).with_context(|| format!("routing names expert {id}")))
            .collect::<Result<Vec<_>>>()?;
        let weights = weights.to_dtype(DType::F32)?.flatten_all()?.to_vec1()?;
        Ok(Routing { tokens, k, ids, weights })
    }

    /// The number of tokens.
    pub fn tokens(&self) -> usize {
        self.tokens
    }

    /// The experts per token.
    pub fn k(&self) -> usize {
        self.k
    }

    /// The choices as a [`Decision`] for `tokens` tokens of a block with `num_experts` experts and
    /// `k` per token, the weights rounded to `dtype`.
    fn decision(&self, tokens: usize, k: usize, num_experts: usize, dtype: DType) -> Result<Decision> {
        ensure!(
            (self.tokens, self.k) == (tokens, k),
            "the given routing is [{}, {}], the block routes {tokens} tokens to {k} experts each",
            self.tokens,
            self.k
        );
        for (t, row) in self.ids.chunks(k.max(1)).enumerate() {
            for (j, &id) in row.iter().enumerate() {
                ensure!((id as usize) < num_experts, "token {t}: routed to expert {id}, the block has {num_experts}");
                ensure!(!row[..j].contains(&id), "token {t}: routed to expert {id} twice");
            }
        }
        let weights = self.weights.iter().map(|&w| round_to(w, dtype)).collect();
        Ok(Decision { ids: self.ids.clone(), weights })
    }
}

/// `Qwen3_5MoeSparseMoeBlock`: a top-k softmax router over `num_experts` routed experts (each a
/// gated MLP of `moe_intermediate_size`), plus a shared expert (a gated MLP of
/// `shared_expert_intermediate_size`) scaled by a sigmoid gate, in the compute dtype of its
/// weights. The decoder layer's `mlp` of the MoE family.
pub struct SparseMoeBlock {
    gate: Linear,
    experts: Vec<Expert>,
    shared_expert: SharedExpert,
    shared_expert_gate: Linear,
    hidden: usize,
    intermediate: usize,
    top_k: usize,
    layout: ExpertsLayout,
    implementation: ExpertsImplementation,
}

impl SparseMoeBlock {
    /// Reads a layer's block from `vb` (its `mlp` prefix, e.g.
    /// `model.language_model.layers.{i}.mlp`), in `vb`'s dtype: `gate.weight` [E, H], the routed
    /// experts in either [`ExpertsLayout`], `shared_expert.{gate,up,down}_proj.weight` and
    /// `shared_expert_gate.weight` [1, H]. An expert tensor whose shape is not the config's is an
    /// error naming it and both shapes; so is a config without MoE fields.
    pub fn new(cfg: &TextConfig, vb: VarBuilder) -> Result<Self> {
        let Some(moe) = &cfg.moe else {
            bail!(
                "{}: a sparse MoE block needs the MoE fields of a \"qwen3_5_moe\" config; this text config is a \
                 dense \"qwen3_5\" one",
                vb.prefix()
            )
        };
        let (h, e, i, s) =
            (cfg.hidden_size, moe.num_experts, moe.moe_intermediate_size, moe.shared_expert_intermediate_size);
        ensure!(
            (1..=e).contains(&moe.num_experts_per_tok),
            "num_experts_per_tok {} must be between 1 and num_experts {e}",
            moe.num_experts_per_tok
        );
        let why = format!("num_experts {e}, moe_intermediate_size {i}, hidden_size {h}");
        let ev = vb.pp("experts");
        let (fused, per_expert) = (ev.contains_tensor("gate_up_proj"), ev.contains_tensor("0.gate_proj.weight"));
        let name = |n: &str| full_name(&ev, n);
        let (layout, experts) = match (fused, per_expert) {
            (true, true) => bail!(
                "{} and {} are both in the checkpoint: one layout of the experts, fused or per expert, not both",
                name("gate_up_proj"),
                name("0.gate_proj.weight")
            ),
            (false, false) => bail!(
                "the checkpoint has no routed experts at {}: neither the fused {} nor the per-expert {}",
                ev.prefix(),
                name("gate_up_proj"),
                name("0.gate_proj.weight")
            ),
            (true, false) => {
                let gate_up = get_shaped(&ev, "gate_up_proj", &[e, 2 * i, h], &why)?;
                let down = get_shaped(&ev, "down_proj", &[e, h, i], &why)?;
                // One packed (bf16) or transposed (f32) copy per expert; the stacked tensors are
                // dropped after.
                let experts = (0..e)
                    .map(|x| {
                        Ok(Expert {
                            gate_up: Linear::new(gate_up.get(x)?, None),
                            down: Linear::new(down.get(x)?, None),
                        })
                    })
                    .collect::<Result<Vec<_>>>()?;
                (ExpertsLayout::Fused, experts)
            }
            (false, true) => {
                let experts = (0..e)
                    .map(|x| {
                        let gate = get_shaped(&ev, &format!("{x}.gate_proj.weight"), &[i, h], &why)?;
                        let up = get_shaped(&ev, &format!("{x}.up_proj.weight"), &[i, h], &why)?;
                        let down = get_shaped(&ev, &format!("{x}.down_proj.weight"), &[h, i], &why)?;
                        Ok(Expert {
                            gate_up: Linear::new(Tensor::cat(&[gate, up], 0)?, None),
                            down: Linear::new(down, None),
                        })
                    })
                    .collect::<Result<Vec<_>>>()?;
                (ExpertsLayout::PerExpert, experts)
            }
        };
        let shared = vb.pp("shared_expert");
        Ok(SparseMoeBlock {
            gate: linear_no_bias(h, e, vb.pp("gate"))?,
            experts,
            shared_expert: SharedExpert {
                gate_proj: linear_no_bias(h, s, shared.pp("gate_proj"))?,
                up_proj: linear_no_bias(h, s, shared.pp("up_proj"))?,
                down_proj: linear_no_bias(s, h, shared.pp("down_proj"))?,
            },
            shared_expert_gate: linear_no_bias(h, 1, vb.pp("shared_expert_gate"))?,
            hidden: h,
            intermediate: i,
            top_k: moe.num_experts_per_tok,
            layout,
            implementation: ExpertsImplementation::default(),
        })
    }

    /// The block summing its experts as `implementation` does (the default is
    /// [`ExpertsImplementation::GroupedMm`], what `from_pretrained` uses).
    pub fn with_experts_implementation(mut self, implementation: ExpertsImplementation) -> Self {
        self.implementation = implementation;
        self
    }

    /// How the routed experts' outputs are summed.
    pub fn experts_implementation(&self) -> ExpertsImplementation {
        self.implementation
    }

    /// The layout the routed experts were read from.
    pub fn layout(&self) -> ExpertsLayout {
        self.layout
    }

    /// The number of routed experts (E).
    pub fn num_experts(&self) -> usize {
        self.experts.len()
    }

    /// The experts each token is routed to (k).
    pub fn top_k(&self) -> usize {
        self.top_k
    }

    /// `Qwen3_5MoeSparseMoeBlock.forward` on the tokens of one layer: x [n, H] (the
    /// post-attention norm's output) → [n, H], in x's dtype (the compute dtype).
    ///
    /// Records, for decoder layer `layer`: `moe.{layer}.router_logits` [n, E] (the gate's linear
    /// output), `moe.{layer}.top_ids` [n, k] (i64, each token's experts in `torch.topk`'s order),
    /// `moe.{layer}.top_weights` [n, k] (their renormalised weights, same order),
    /// `moe.{layer}.shared` [n, H] (the shared expert times its sigmoid gate) and `moe.{layer}.out`
    /// [n, H] (the block's output).
    ///
    /// With `routing`, the routed experts use its ids and weights instead of the router's; the
    /// router still runs, and `router_logits`, `top_ids` and `top_weights` record its own choice.
    pub fn forward(&self, x: &Tensor, layer: usize, taps: &mut Taps, routing: Option<&Routing>) -> Result<Tensor> {
        let (n, h) = x.dims2().context("the MoE block takes x as [tokens, hidden]")?;
        ensure!(h == self.hidden, "the MoE block has hidden size {}, x is {:?}", self.hidden, x.dims());
        let dtype = x.dtype();
        if n == 0 {
            return Ok(Tensor::zeros((0, h), dtype, x.device())?);
        }
        let (e, k) = (self.experts.len(), self.top_k);
        let router_logits = self.gate.forward(x)?;
        taps.record(Stage::MoeRouterLogits.at(layer), &router_logits);
        let probs = softmax_rows(&router_logits)?;
        let mut own = Decision { ids: Vec::with_capacity(n * k), weights: Vec::with_capacity(n * k) };
        for row in probs.chunks(e) {
            let ids = torch_topk(row, k);
            let values: Vec<f32> = ids.iter().map(|&id| row[id]).collect();
            // `router_top_value /= router_top_value.sum(dim=-1, keepdim=True)`, then
            // `.to(router_logits.dtype)`.
            let sum = torch_inner_sum(&values);
            own.ids.extend(ids.iter().map(|&id| id as u32));
            own.weights.extend(values.iter().map(|v| round_to(v / sum, dtype)));
        }
        if taps.enabled() {
            let ids: Vec<i64> = own.ids.iter().map(|&id| i64::from(id)).collect();
            taps.record(Stage::MoeTopIds.at(layer), &Tensor::from_vec(ids, (n, k), &Device::Cpu)?);
            let weights = Tensor::from_vec(own.weights.clone(), (n, k), &Device::Cpu)?.to_dtype(dtype)?;
            taps.record(Stage::MoeTopWeights.at(layer), &weights);
        }
        let decision = match routing {
            Some(routing) => routing.decision(n, k, e, dtype)?,
            None => own,
        };
        let routed = self.routed(x, &decision)?;
        let gate = sigmoid(&self.shared_expert_gate.forward(x)?)?;
        let shared = gate.broadcast_mul(&self.shared_expert.forward(x)?)?;
        taps.record(Stage::MoeShared.at(layer), &shared);
        let out = (routed + &shared)?;
        taps.record(Stage::MoeOut.at(layer), &out);
        Ok(out)
    }

    /// `Qwen3_5MoeExperts.forward`: x [n, H] and each token's experts and weights → the weighted
    /// sum of its experts' outputs [n, H], in x's dtype. One GEMM per expert hit, on the rows of
    /// its tokens gathered once.
    fn routed(&self, x: &Tensor, decision: &Decision) -> Result<Tensor> {
        use rayon::prelude::*;
        let (n, h) = x.dims2()?;
        let (k, i, dtype) = (self.top_k, self.intermediate, x.dtype());
        // The (token, slot) pairs of each expert, in token order.
        let mut hits: Vec<Vec<(usize, usize)>> = vec![Vec::new(); self.experts.len()];
        for (at, &id) in decision.ids.iter().enumerate() {
            hits[id as usize].push((at / k, at % k));
        }
        // The weighted output of every (token, slot), as transformers' `weighted_out.view(n, k, H)`;
        // f32 holds bf16 values exactly.
        let mut weighted = vec![0f32; n * k * h];
        for (expert, hit) in self.experts.iter().zip(&hits) {
            if hit.is_empty() {
                continue;
            }
            let tokens: Vec<u32> = hit.iter().map(|&(t, _)| t as u32).collect();
            let rows = x.index_select(&Tensor::new(tokens.as_slice(), x.device())?, 0)?;
            let gate_up = expert.gate_up.forward(&rows)?;
            let act = (silu(&gate_up.narrow(1, 0, i)?)? * gate_up.narrow(1, i, i)?)?;
            let out: Vec<f32> = expert.down.forward(&act)?.to_dtype(DType::F32)?.flatten_all()?.to_vec1()?;
            for (&(t, j), row) in hit.iter().zip(out.chunks_exact(h)) {
                let w = decision.weights[t * k + j];
                let dst = &mut weighted[(t * k + j) * h..(t * k + j + 1) * h];
                for (d, &y) in dst.iter_mut().zip(row) {
                    *d = round_to(y * w, dtype);
                }
            }
        }
        let mut sums = vec![0f32; n * h];
        match self.implementation {
            ExpertsImplementation::GroupedMm => {
                sums.par_chunks_mut(h).zip(weighted.par_chunks(k * h)).for_each(|(sum, slots)| {
                    let load = |r: usize, c: usize| slots[r * h + c];
                    if dtype == DType::F32 {
                        torch_outer_sum(k, h, load, sum);
                    } else {
                        cascade_rows(k, h, load, sum);
                    }
                    for s in sum.iter_mut() {
                        *s = round_to(*s, dtype);
                    }
                });
            }
            ExpertsImplementation::Eager => {
                for hit in &hits {
                    for &(t, j) in hit {
                        let src = &weighted[(t * k + j) * h..(t * k + j + 1) * h];
                        for (s, &v) in sums[t * h..(t + 1) * h].iter_mut().zip(src) {
                            *s = round_to(*s + v, dtype);
                        }
                    }
                }
            }
        }
        Ok(Tensor::from_vec(sums, (n, h), x.device())?.to_dtype(dtype)?)
    }
}

/// The full name of tensor `name` under `vb`'s prefix.
fn full_name(vb: &VarBuilder, name: &str) -> String {
    let prefix = vb.prefix();
    if prefix.is_empty() {
        name.to_string()
    } else {
        format!("{prefix}.{name}")
    }
}

/// Tensor `name` of `vb`, which the config (`why`) says is `expected`: a different stored shape is
/// an error naming the tensor and both shapes.
fn get_shaped(vb: &VarBuilder, name: &str, expected: &[usize], why: &str) -> Result<Tensor> {
    let full = full_name(vb, name);
    let tensor = vb.get_unchecked(name).with_context(|| format!("reading {full}"))?;
    ensure!(
        tensor.dims() == expected,
        "{full}: the config ({why}) expects {expected:?}, the checkpoint stores {:?}",
        tensor.dims()
    );
    Ok(tensor)
}

/// `v` as the compute dtype holds it: rounded to nearest even for bf16, unchanged for f32.
fn round_to(v: f32, dtype: DType) -> f32 {
    match dtype {
        DType::BF16 => half::bf16::from_f32(v).to_f32(),
        DType::F16 => half::f16::from_f32(v).to_f32(),
        _ => v,
    }
}

/// PyTorch's `x.sum(dim=-2)` of a bf16 [rows, cols] block (float accumulation, `cascade_sum`'s
/// `multi_row_sum` on every column): running sums of blocks of `2^max(4, ceil_log2(rows) / 4)`
/// rows carried up four levels, so a running sum for fewer than 16 rows. (The f32 kernel sums
/// columns beyond the last whole block of 32 differently; that one is `torch_outer_sum`.)
/// Measured bit for bit against torch 2.15 for 4 to 33 rows and 128, 136 and 2048 columns.
fn cascade_rows(rows: usize, cols: usize, load: impl Fn(usize, usize) -> f32, out: &mut [f32]) {
    const LEVELS: usize = 4;
    let ceil_log2 = if rows <= 1 { 0 } else { (usize::BITS - (rows - 1).leading_zeros()) as usize };
    let power = (ceil_log2 / LEVELS).max(4);
    let (step, mask) = (1usize << power, (1usize << power) - 1);
    let mut acc = vec![vec![0f32; cols]; LEVELS];
    let mut r = 0;
    while r + step <= rows {
        for _ in 0..step {
            for (c, a) in acc[0].iter_mut().enumerate() {
                *a += load(r, c);
            }
            r += 1;
        }
        for level in 1..LEVELS {
            let (lower, upper) = acc.split_at_mut(level);
            for (hi, lo) in upper[0].iter_mut().zip(lower[level - 1].iter_mut()) {
                *hi += *lo;
                *lo = 0.0;
            }
            if r & (mask << (level * power)) != 0 {
                break;
            }
        }
    }
    while r < rows {
        for (c, a) in acc[0].iter_mut().enumerate() {
            *a += load(r, c);
        }
        r += 1;
    }
    for (c, o) in out.iter_mut().enumerate().take(cols) {
        *o = acc[0][c];
        for level in &acc[1..] {
            *o += level[c];
        }
    }
}

/// `softmax(router_logits, dim=-1, dtype=torch.float)` of [n, E] logits, row-major: per row the
/// maximum, `exp(x − max)`, their sum, and each times `1 / sum` (PyTorch's
/// `_vec_softmax_lastdim`; its SLEEF `exp` and vector sum may differ from these in the last bit).
fn softmax_rows(router_logits: &Tensor) -> Result<Vec<f32>> {
    let (_, e) = router_logits.dims2()?;
    let mut probs: Vec<f32> = router_logits.to_dtype(DType::F32)?.flatten_all()?.to_vec1()?;
    for row in probs.chunks_mut(e.max(1)) {
        let max = row.iter().copied().fold(f32::NEG_INFINITY, f32::max);
        let mut sum = 0f32;
        for p in row.iter_mut() {
            *p = (*p - max).exp();
            sum += *p;
        }
        let inv = 1.0 / sum;
        for p in row.iter_mut() {
            *p *= inv;
        }
    }
    Ok(probs)
}

/// The router's probabilities: `softmax(router_logits, dim=-1, dtype=torch.float)` of
/// `router_logits` [n, E] (any float dtype) → [n, E] f32, as the block computes them.
pub fn router_probabilities(router_logits: &Tensor) -> Result<Tensor> {
    let (n, e) = router_logits.dims2().context("router logits must be [tokens, experts]")?;
    Ok(Tensor::from_vec(softmax_rows(router_logits)?, (n, e), &Device::Cpu)?)
}

/// The router's margin at the k-th choice of one token: the last expert it picks and the best
/// one it leaves out. A margin within the probabilities' rounding (bf16 logits are rounded to
/// 2^-8 relative) is a near tie: another implementation may pick the other expert.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RoutingMargin {
    /// The token (row of the router logits).
    pub token: usize,
    /// The k-th expert of `torch.topk` (the last one chosen) and its probability.
    pub kth_expert: usize,
    pub kth_prob: f32,
    /// The most probable expert not chosen (the (k+1)-th) and its probability; `None` and 0
    /// when every expert is chosen (k = E).
    pub next_expert: Option<usize>,
    pub next_prob: f32,
}

impl RoutingMargin {
    /// `kth_prob − next_prob` (≥ 0; 0 for an exact tie).
    pub fn margin(&self) -> f32 {
        self.kth_prob - self.next_prob
    }

    /// The margin relative to the k-th probability.
    pub fn relative_margin(&self) -> f32 {
        if self.kth_prob > 0.0 {
            self.margin() / self.kth_prob
        } else {
            0.0
        }
    }

    /// Whether the two probabilities are within `relative` of each other (with an expert left
    /// out to swap in).
    pub fn is_near_tie(&self, relative: f32) -> bool {
        self.next_expert.is_some() && self.relative_margin() <= relative
    }
}

/// For each token of `router_logits` [n, E] (any float dtype), the router's margin between the
/// k-th and the (k+1)-th probability ([`RoutingMargin`]), from the same softmax and top-k as the
/// block's router.
pub fn routing_margins(router_logits: &Tensor, k: usize) -> Result<Vec<RoutingMargin>> {
    let (_, e) = router_logits.dims2().context("router logits must be [tokens, experts]")?;
    ensure!((1..=e).contains(&k), "k = {k} experts of {e}");
    let probs = softmax_rows(router_logits)?;
    Ok(probs
        .chunks(e)
        .enumerate()
        .map(|(token, row)| {
            let chosen = torch_topk(row, k);
            let kth_expert = chosen[k - 1];
            let next_expert = (0..e).filter(|x| !chosen.contains(x)).fold(None, |best: Option<usize>, x| match best {
                Some(b) if row[b] >= row[x] => Some(b),
                _ => Some(x),
            });
            RoutingMargin {
                token,
                kth_expert,
                kth_prob: row[kth_expert],
                next_expert,
                next_prob: next_expert.map_or(0.0, |x| row[x]),
            }
        })
        .collect())
}

/// `torch.topk(values, k)` (largest, sorted) as PyTorch computes it on the CPU: the indices of the
/// `k` largest values, largest first, NaN above everything, and equal values in PyTorch's order.
///
/// That order is neither by index nor stable. `topk_impl_loop`
/// (`aten/src/ATen/native/cpu/SortingKernel.cpp`) fills a queue of (value, index) pairs and,
/// comparing values only, runs `std::partial_sort` of the first k when `k · 64 ≤ n`, otherwise
/// `std::nth_element` at k − 1 and `std::sort` of the first k − 1. The result is libstdc++'s
/// introselect / introsort / heap order, reproduced here step by step: 8 equal values give
/// `[6, 5, 4, 7]` for k = 4, 16 equal values `[12, 9, 10, 11, 14, 15, 8, 13]` for k = 8 (torch 2.15).
/// A Python port of the same steps agreed with `torch.topk` on 6000 random inputs full of ties
/// (n from 4 to 1100, k from 1 to 20, both paths).
pub fn torch_topk(values: &[f32], k: usize) -> Vec<usize> {
    let n = values.len();
    let k = k.min(n);
    if k == 0 {
        return Vec::new();
    }
    let mut queue: Vec<(f32, usize)> = values.iter().copied().zip(0..).collect();
    let q = &mut queue[..];
    if k * 64 <= n {
        stl::heap_select(q, k);
        stl::sort_heap(&mut q[..k]);
    } else {
        stl::nth_element(q, k - 1);
        stl::sort(&mut q[..k - 1]);
    }
    queue[..k].iter().map(|&(_, i)| i).collect()
}

/// libstdc++'s `<bits/stl_algo.h>` / `<bits/stl_heap.h>` algorithms as `topk_impl_loop` calls
/// them, over (value, index) pairs with its comparator `comp(x, y) = (isnan(x) && !isnan(y)) ||
/// x > y` ("x goes before y"). Indices are positions in the slice; the iterator arithmetic of
/// the C++ is kept (`first`, `last`, `hole`, …) so that each step can be read against it.
mod stl {
    type Item = (f32, usize);

    /// `_S_threshold` of `std::sort`.
    const THRESHOLD: usize = 16;

    fn comp(x: &Item, y: &Item) -> bool {
        (x.0.is_nan() && !y.0.is_nan()) || x.0 > y.0
    }

    /// `std::__lg`: floor(log2(n)).
    fn lg(n: usize) -> usize {
        (usize::BITS - 1 - n.leading_zeros()) as usize
    }

    /// `std::__insertion_sort`.
    fn insertion_sort(a: &mut [Item]) {
        for i in 1..a.len() {
            if comp(&a[i], &a[0]) {
                let v = a[i];
                a.copy_within(0..i, 1);
                a[0] = v;
            } else {
                unguarded_linear_insert(a, i);
            }
        }
    }

    /// `std::__unguarded_linear_insert`.
    fn unguarded_linear_insert(a: &mut [Item], mut last: usize) {
        let v = a[last];
        let mut next = last - 1;
        while comp(&v, &a[next]) {
            a[last] = a[next];
            last = next;
            next -= 1;
        }
        a[last] = v;
    }

    /// `std::__move_median_to_first(result, a, b, c)`.
    fn move_median_to_first(s: &mut [Item], result: usize, a: usize, b: usize, c: usize) {
        let pick = if comp(&s[a], &s[b]) {
            if comp(&s[b], &s[c]) {
                b
            } else if comp(&s[a], &s[c]) {
                c
            } else {
                a
            }
        } else if comp(&s[a], &s[c]) {
            a
        } else if comp(&s[b], &s[c]) {
            c
        } else {
            b
        };
        s.swap(result, pick);
    }

    /// `std::__unguarded_partition(first, last, pivot)`.
    fn unguarded_partition(s: &mut [Item], mut first: usize, mut last: usize, pivot: usize) -> usize {
        loop {
            while comp(&s[first], &s[pivot]) {
                first += 1;
            }
            last -= 1;
            while comp(&s[pivot], &s[last]) {
                last -= 1;
            }
            if first >= last {
                return first;
            }
            s.swap(first, last);
            first += 1;
        }
    }

    /// `std::__unguarded_partition_pivot` on `s[first..last]`.
    fn partition_pivot(s: &mut [Item], first: usize, last: usize) -> usize {
        let mid = first + (last - first) / 2;
        move_median_to_first(s, first, first + 1, mid, last - 1);
        unguarded_partition(s, first + 1, last, first)
    }

    /// `std::__adjust_heap(first, hole, len, value)` with its `__push_heap`.
    fn adjust_heap(s: &mut [Item], mut hole: usize, len: usize, value: Item) {
        let top = hole;
        let mut second = hole;
        while second < (len - 1) / 2 {
            second = 2 * (second + 1);
            if comp(&s[second], &s[second - 1]) {
                second -= 1;
            }
            s[hole] = s[second];
            hole = second;
        }
        if len & 1 == 0 && second == (len - 2) / 2 {
            second = 2 * (second + 1);
            s[hole] = s[second - 1];
            hole = second - 1;
        }
        while hole > top {
            let parent = (hole - 1) / 2;
            if !comp(&s[parent], &value) {
                break;
            }
            s[hole] = s[parent];
            hole = parent;
        }
        s[hole] = value;
    }

    /// `std::__make_heap`.
    fn make_heap(s: &mut [Item]) {
        let len = s.len();
        if len < 2 {
            return;
        }
        let mut parent = (len - 2) / 2;
        loop {
            let value = s[parent];
            adjust_heap(s, parent, len, value);
            if parent == 0 {
                return;
            }
            parent -= 1;
        }
    }

    /// `std::__pop_heap(first, last, result)` for the heap `s[..last]`.
    fn pop_heap(s: &mut [Item], last: usize, result: usize) {
        let value = s[result];
        s[result] = s[0];
        adjust_heap(s, 0, last, value);
    }

    /// `std::__heap_select(first, middle, last)`: the heap `s[..middle]` holds the `middle` items
    /// that go first.
    pub fn heap_select(s: &mut [Item], middle: usize) {
        make_heap(&mut s[..middle]);
        for i in middle..s.len() {
            if comp(&s[i], &s[0]) {
                pop_heap(s, middle, i);
            }
        }
    }

    /// `std::__sort_heap`.
    pub fn sort_heap(s: &mut [Item]) {
        let mut last = s.len();
        while last > 1 {
            last -= 1;
            pop_heap(s, last, last);
        }
    }

    /// `std::nth_element(first, first + nth, last)`: `std::__introselect` with a depth limit of
    /// 2·lg(n).
    pub fn nth_element(s: &mut [Item], nth: usize) {
        if s.is_empty() || nth == s.len() {
            return;
        }
        let (mut first, mut last) = (0, s.len());
        let mut depth = 2 * lg(s.len());
        while last - first > 3 {
            if depth == 0 {
                heap_select(&mut s[first..last], nth + 1 - first);
                s.swap(first, nth);
                return;
            }
            depth -= 1;
            let cut = partition_pivot(s, first, last);
            if cut <= nth {
                first = cut;
            } else {
                last = cut;
            }
        }
        insertion_sort(&mut s[first..last]);
    }

    /// `std::__introsort_loop(first, last, depth)`.
    fn introsort_loop(s: &mut [Item], first: usize, mut last: usize, mut depth: usize) {
        while last - first > THRESHOLD {
            if depth == 0 {
                // `std::__partial_sort(first, last, last)`: a heap sort.
                heap_select(&mut s[first..last], last - first);
                sort_heap(&mut s[first..last]);
                return;
            }
            depth -= 1;
            let cut = partition_pivot(s, first, last);
            introsort_loop(s, cut, last, depth);
            last = cut;
        }
    }

    /// `std::sort`: introsort to blocks of 16, then `std::__final_insertion_sort`.
    pub fn sort(s: &mut [Item]) {
        let n = s.len();
        if n == 0 {
            return;
        }
        introsort_loop(s, 0, n, 2 * lg(n));
        if n > THRESHOLD {
            insertion_sort(&mut s[..THRESHOLD]);
            for i in THRESHOLD..n {
                unguarded_linear_insert(s, i);
            }
        } else {
            insertion_sort(s);
        }
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;
    use std::path::{Path, PathBuf};
    use std::sync::Arc;

    use super::*;
    use crate::config::MoeConfig;
    use crate::weights::{builder_in, Checkpoint};
    use contract::ComputeDtype;
    use half::bf16;

    /// The text config of a block: hidden H, E experts, k per token, intermediate I, shared S.
    fn config(h: usize, e: usize, k: usize, i: usize, s: usize) -> TextConfig {
        TextConfig {
            hidden_size: h,
            moe: Some(MoeConfig {
                num_experts: e,
                num_experts_per_tok: k,
                moe_intermediate_size: i,
                shared_expert_intermediate_size: s,
                ..MoeConfig::default()
            }),
            ..TextConfig::default()
        }
    }

    fn tensor(values: &[f32], shape: &[usize]) -> Tensor {
        Tensor::from_vec(values.to_vec(), shape, &Device::Cpu).unwrap()
    }

    fn values(t: &Tensor) -> Vec<f32> {
        t.to_dtype(DType::F32).unwrap().flatten_all().unwrap().to_vec1().unwrap()
    }

    /// Uniform values in [-scale, scale) from a xorshift generator (the same sequence each run).
    fn random(seed: &mut u64, n: usize, scale: f32) -> Vec<f32> {
        (0..n)
            .map(|_| {
                *seed ^= *seed << 13;
                *seed ^= *seed >> 7;
                *seed ^= *seed << 17;
                ((*seed >> 40) as f32 / (1u64 << 23) as f32 - 1.0) * scale
            })
            .collect()
    }

    /// A block's weights in the fused layout, under `mlp.`: the router, `gate_up_proj` [E, 2I, H],
    /// `down_proj` [E, H, I], the shared expert and its gate.
    struct Weights {
        h: usize,
        e: usize,
        i: usize,
        s: usize,
        gate: Vec<f32>,
        gate_up: Vec<f32>,
        down: Vec<f32>,
        shared_gate: Vec<f32>,
        shared_up: Vec<f32>,
        shared_down: Vec<f32>,
        shared_expert_gate: Vec<f32>,
    }

    impl Weights {
        fn random(h: usize, e: usize, i: usize, s: usize, seed: u64) -> Weights {
            let mut seed = seed;
            let (wh, wi, ws) = (1.0 / (h as f32).sqrt(), 1.0 / (i as f32).sqrt(), 1.0 / (s as f32).sqrt());
            Weights {
                h,
                e,
                i,
                s,
                gate: random(&mut seed, e * h, 2.0 * wh),
                gate_up: random(&mut seed, e * 2 * i * h, 1.7 * wh),
                down: random(&mut seed, e * h * i, 1.7 * wi),
                shared_gate: random(&mut seed, s * h, 1.7 * wh),
                shared_up: random(&mut seed, s * h, 1.7 * wh),
                shared_down: random(&mut seed, h * s, 1.7 * ws),
                shared_expert_gate: random(&mut seed, h, 1.7 * wh),
            }
        }

        /// Zeros everywhere: a test sets the weights it needs.
        fn zeros(h: usize, e: usize, i: usize, s: usize) -> Weights {
            let mut w = Weights::random(h, e, i, s, 1);
            for v in [
                &mut w.gate,
                &mut w.gate_up,
                &mut w.down,
                &mut w.shared_gate,
                &mut w.shared_up,
                &mut w.shared_down,
                &mut w.shared_expert_gate,
            ] {
                v.iter_mut().for_each(|x| *x = 0.0);
            }
            w
        }

        fn common(&self) -> HashMap<String, Tensor> {
            let (h, e, s) = (self.h, self.e, self.s);
            HashMap::from([
                ("mlp.gate.weight".to_string(), tensor(&self.gate, &[e, h])),
                ("mlp.shared_expert.gate_proj.weight".to_string(), tensor(&self.shared_gate, &[s, h])),
                ("mlp.shared_expert.up_proj.weight".to_string(), tensor(&self.shared_up, &[s, h])),
                ("mlp.shared_expert.down_proj.weight".to_string(), tensor(&self.shared_down, &[h, s])),
                ("mlp.shared_expert_gate.weight".to_string(), tensor(&self.shared_expert_gate, &[1, h])),
            ])
        }

        fn fused(&self) -> HashMap<String, Tensor> {
            let (h, e, i) = (self.h, self.e, self.i);
            let mut map = self.common();
            map.insert("mlp.experts.gate_up_proj".into(), tensor(&self.gate_up, &[e, 2 * i, h]));
            map.insert("mlp.experts.down_proj".into(), tensor(&self.down, &[e, h, i]));
            map
        }

        fn per_expert(&self) -> HashMap<String, Tensor> {
            let (h, i) = (self.h, self.i);
            let mut map = self.common();
            for x in 0..self.e {
                let gate_up = &self.gate_up[x * 2 * i * h..(x + 1) * 2 * i * h];
                map.insert(format!("mlp.experts.{x}.gate_proj.weight"), tensor(&gate_up[..i * h], &[i, h]));
                map.insert(format!("mlp.experts.{x}.up_proj.weight"), tensor(&gate_up[i * h..], &[i, h]));
                let down = &self.down[x * h * i..(x + 1) * h * i];
                map.insert(format!("mlp.experts.{x}.down_proj.weight"), tensor(down, &[h, i]));
            }
            map
        }
    }

    fn block_from(cfg: &TextConfig, tensors: HashMap<String, Tensor>, dtype: DType) -> Result<SparseMoeBlock> {
        let vb = VarBuilder::from_tensors(tensors, dtype, &Device::Cpu);
        SparseMoeBlock::new(cfg, vb.pp("mlp"))
    }

    /// `x` [n, H] through the block with taps on; the output and the taps.
    fn run(block: &SparseMoeBlock, x: &Tensor, routing: Option<&Routing>) -> (Tensor, Taps) {
        let mut taps = Taps::recording();
        let out = block.forward(x, 3, &mut taps, routing).unwrap();
        (out, taps)
    }

    /// `Qwen3_5MoeSparseMoeBlock` computed the plain way, in f64 from the fused weights: per
    /// token, every expert's probability, the top k renormalised, each chosen expert's
    /// down(SiLU(gate) · up) times its weight, plus the shared expert times sigmoid of its gate.
    /// `ids`: the experts to use per token instead of the top k (with their given weights).
    fn reference(w: &Weights, k: usize, x: &[f32], given: Option<(&[u32], &[f32])>) -> Vec<f64> {
        let (h, e, i, s) = (w.h, w.e, w.i, w.s);
        let silu = |v: f64| v / (1.0 + (-v).exp());
        let dot = |a: &[f32], b: &[f32]| a.iter().zip(b).map(|(&p, &q)| f64::from(p) * f64::from(q)).sum::<f64>();
        let mut out = Vec::new();
        for (t, xt) in x.chunks(h).enumerate() {
            let logits: Vec<f64> = (0..e).map(|x| dot(&w.gate[x * h..(x + 1) * h], xt)).collect();
            let max = logits.iter().copied().fold(f64::NEG_INFINITY, f64::max);
            let probs: Vec<f64> = logits.iter().map(|l| (l - max).exp()).collect();
            let mut order: Vec<usize> = (0..e).collect();
            order.sort_by(|&a, &b| probs[b].total_cmp(&probs[a]));
            let chosen: Vec<(usize, f64)> = match given {
                Some((ids, weights)) => {
                    (0..k).map(|j| (ids[t * k + j] as usize, f64::from(weights[t * k + j]))).collect()
                }
                None => {
                    let total: f64 = order[..k].iter().map(|&x| probs[x]).sum();
                    order[..k].iter().map(|&x| (x, probs[x] / total)).collect()
                }
            };
            let mut row = vec![0f64; h];
            for (x, weight) in chosen {
                let gate_up = &w.gate_up[x * 2 * i * h..(x + 1) * 2 * i * h];
                let act: Vec<f64> = (0..i)
                    .map(|r| {
                        silu(dot(&gate_up[r * h..(r + 1) * h], xt)) * dot(&gate_up[(i + r) * h..(i + r + 1) * h], xt)
                    })
                    .collect();
                let down = &w.down[x * h * i..(x + 1) * h * i];
                for (c, o) in row.iter_mut().enumerate() {
                    *o += weight * (0..i).map(|r| f64::from(down[c * i + r]) * act[r]).sum::<f64>();
                }
            }
            let act: Vec<f64> = (0..s)
                .map(|r| silu(dot(&w.shared_gate[r * h..(r + 1) * h], xt)) * dot(&w.shared_up[r * h..(r + 1) * h], xt))
                .collect();
            let g = 1.0 / (1.0 + (-dot(&w.shared_expert_gate, xt)).exp());
            for (c, o) in row.iter_mut().enumerate() {
                *o += g * (0..s).map(|r| f64::from(w.shared_down[c * s + r]) * act[r]).sum::<f64>();
            }
            out.extend(row);
        }
        out
    }

    fn worst(got: &[f32], expected: &[f64]) -> (usize, f64) {
        got.iter().zip(expected).map(|(&g, &e)| (f64::from(g) - e).abs()).enumerate().fold((0, 0.0), |best, (at, d)| {
            if d > best.1 {
                (at, d)
            } else {
                best
            }
        })
    }

    /// A folder under the system's temporary directory holding `tensors` as `model.safetensors`.
    fn checkpoint(name: &str, tensors: &HashMap<String, Tensor>) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("neuron-moe-{name}-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        candle_core::safetensors::save(tensors, dir.join("model.safetensors")).unwrap();
        dir
    }

    fn load(cfg: &TextConfig, dir: &Path, dtype: ComputeDtype) -> SparseMoeBlock {
        let vb = builder_in(Arc::new(Checkpoint::open(dir).unwrap()), dtype).unwrap();
        SparseMoeBlock::new(cfg, vb.pp("mlp")).unwrap()
    }

    /// The router on hand-made logits (the gate is the identity, so the logits are x): the
    /// softmax over all experts in f32, the top k in `torch.topk`'s order (a tie at the top
    /// included), the k weights renormalised to sum to 1, then rounded to the compute dtype.
    #[test]
    fn the_router_takes_the_top_k_of_an_f32_softmax_and_renormalises_their_weights() {
        let cfg = config(4, 4, 2, 1, 1);
        let mut w = Weights::zeros(4, 4, 1, 1);
        for x in 0..4 {
            w.gate[x * 4 + x] = 1.0;
        }
        let x = tensor(&[1.0, 2.0, 0.5, 3.0, 0.0, 0.0, 0.0, 0.0, -1.0, 4.0, 4.0, -2.0], &[3, 4]);
        // torch.topk of the three rows' probabilities, torch 2.15: [3, 1]; four equal values give
        // [2, 3]; the tie at the top [1, 2].
        let expected_ids = [3i64, 1, 2, 3, 1, 2];
        let sigmoid_1 = 1.0 / (1.0 + (-1f64).exp());
        let expected_weights = [sigmoid_1, 1.0 - sigmoid_1, 0.5, 0.5, 0.5, 0.5];
        for dtype in [DType::F32, DType::BF16] {
            let block = block_from(&cfg, w.fused(), dtype).unwrap();
            let (_, taps) = run(&block, &x.to_dtype(dtype).unwrap(), None);
            let logits = taps.get(Stage::MoeRouterLogits.at(3)).expect("router logits recorded");
            assert_eq!((logits.dims(), logits.dtype()), (&[3, 4][..], dtype), "{dtype:?}: the gate's output");
            assert_eq!(values(logits), values(&x), "{dtype:?}: the logits are the gate's linear output");
            let ids = taps.get(Stage::MoeTopIds.at(3)).expect("top ids recorded");
            assert_eq!(ids.dtype(), DType::I64);
            assert_eq!(ids.flatten_all().unwrap().to_vec1::<i64>().unwrap(), expected_ids, "{dtype:?}: top ids");
            let weights = taps.get(Stage::MoeTopWeights.at(3)).expect("top weights recorded");
            assert_eq!((weights.dims(), weights.dtype()), (&[3, 2][..], dtype));
            let got = values(weights);
            for (at, (&g, &e)) in got.iter().zip(&expected_weights).enumerate() {
                let e = if dtype == DType::BF16 { f64::from(bf16::from_f64(e).to_f32()) } else { e };
                let allowed = if dtype == DType::BF16 { 0.0 } else { 2e-7 };
                assert!(
                    (f64::from(g) - e).abs() <= allowed,
                    "{dtype:?}: weight {at} (token {}, slot {}) is {g}, expected {e} (off by {:e})",
                    at / 2,
                    at % 2,
                    (f64::from(g) - e).abs()
                );
            }
            if dtype == DType::F32 {
                for (t, pair) in got.chunks(2).enumerate() {
                    let sum = pair[0] + pair[1];
                    assert!((sum - 1.0).abs() <= f32::EPSILON, "token {t}: the weights sum to {sum}, not 1");
                }
            }
        }
    }

    /// `torch.topk` of inputs full of ties, as torch 2.15 orders them on the CPU (values
    /// `((7919 i + 104729 seed) mod levels) / 7`): the nth_element path (k · 64 > n) with its
    /// partitions and the final sort of more than 16 items, the partial_sort path (k · 64 ≤ n),
    /// and NaN above every number.
    #[test]
    fn torch_topk_orders_ties_as_pytorch_does_on_the_cpu() {
        let cases: [(usize, usize, usize, usize, &[usize]); 9] = [
            (8, 4, 1, 0, &[6, 5, 4, 7]),
            (16, 8, 1, 0, &[12, 9, 10, 11, 14, 15, 8, 13]),
            (24, 5, 3, 1, &[15, 18, 9, 6, 12]),
            (64, 8, 4, 2, &[19, 11, 47, 43, 15, 39, 31, 27]),
            (256, 8, 16, 3, &[204, 12, 124, 220, 44, 156, 188, 172]),
            (512, 8, 5, 4, &[7, 17, 32, 27, 12, 37, 22, 2]),
            (40, 20, 2, 5, &[32, 34, 8, 36, 6, 38, 4, 2, 12, 14, 0, 16, 18, 30, 20, 22, 28, 24, 26, 10]),
            (1100, 16, 3, 6, &[22, 10, 1, 7, 16, 40, 4, 43, 31, 34, 19, 13, 46, 37, 28, 25]),
            (256, 9, 256, 7, &[176, 161, 146, 131, 116, 101, 86, 71, 56]),
        ];
        for (n, k, levels, seed, expected) in cases {
            let v: Vec<f32> = (0..n).map(|i| ((i * 7919 + seed * 104729) % levels) as f32 / 7.0).collect();
            let got = torch_topk(&v, k);
            assert_eq!(got, expected, "torch.topk of {n} values on {levels} levels (seed {seed}), k = {k}");
            let by_index: Vec<usize> = {
                let mut order: Vec<usize> = (0..n).collect();
                order.sort_by(|&a, &b| v[b].total_cmp(&v[a]));
                order.truncate(k);
                order
            };
            if levels < n {
                assert_ne!(got, by_index, "{n} values, k = {k}: torch's ties are not in index order");
            }
        }
        let nan = [1.0, f32::NAN, 3.0, f32::NAN, 2.0, 3.0];
        assert_eq!((torch_topk(&nan, 3), torch_topk(&nan, 4)), (vec![1, 3, 5], vec![1, 3, 5, 2]), "NaN first");
        assert_eq!(torch_topk(&[0.5, 0.25], 5), [0, 1], "k beyond the values takes them all");
    }

    /// The published fused layout and the per-expert one `save_pretrained` writes load, through
    /// the checkpoint reader, to blocks that compute the same bits, in f32 and bf16.
    #[test]
    fn both_checkpoint_layouts_load_to_the_same_block() {
        let cfg = config(16, 6, 3, 8, 12);
        let w = Weights::random(16, 6, 8, 12, 0x5EED);
        let (fused, per_expert) = (checkpoint("fused", &w.fused()), checkpoint("per-expert", &w.per_expert()));
        let x = tensor(&random(&mut 99, 11 * 16, 2.0), &[11, 16]);
        for dtype in ComputeDtype::ALL {
            let (a, b) = (load(&cfg, &fused, dtype), load(&cfg, &per_expert, dtype));
            assert_eq!((a.layout(), b.layout()), (ExpertsLayout::Fused, ExpertsLayout::PerExpert));
            let x = x.to_dtype(crate::precision::candle_dtype(dtype)).unwrap();
            let ((ya, ta), (yb, tb)) = (run(&a, &x, None), run(&b, &x, None));
            assert_eq!(values(&ya), values(&yb), "{dtype:?}: the two layouts compute different outputs");
            for stage in [Stage::MoeTopIds, Stage::MoeTopWeights, Stage::MoeShared] {
                let (pa, pb) = (ta.get(stage.at(3)).unwrap(), tb.get(stage.at(3)).unwrap());
                assert_eq!(values(pa), values(pb), "{dtype:?}: {}", stage.at(3));
            }
        }
        std::fs::remove_dir_all(&fused).unwrap();
        std::fs::remove_dir_all(&per_expert).unwrap();
    }

    /// The block in f32 against the plain computation in f64 ([`reference`]): the same top-k
    /// experts per token, and outputs within f32 rounding; routed to given experts, the same.
    #[test]
    fn the_block_adds_its_top_k_experts_weighted_to_the_gated_shared_expert() {
        let (h, e, k, i, s, n) = (24, 8, 3, 10, 14, 40);
        let w = Weights::random(h, e, i, s, 0xC0FFEE);
        let block = block_from(&config(h, e, k, i, s), w.per_expert(), DType::F32).unwrap();
        let xs = random(&mut 7, n * h, 2.0);
        let x = tensor(&xs, &[n, h]);
        let (out, taps) = run(&block, &x, None);
        let (at, off) = worst(&values(&out), &reference(&w, k, &xs, None));
        assert!(
            off <= 1e-5,
            "the block differs from the plain computation by {off:e} at token {}, column {}",
            at / h,
            at % h
        );
        let out_tap = taps.get(Stage::MoeOut.at(3)).unwrap();
        assert_eq!(values(out_tap), values(&out), "moe.3.out is the block's output");
        // Routed by hand: each token to experts (t, t + 1, t + 2) mod E with weights 0.5, 0.25, 2.
        let ids: Vec<u32> = (0..n * k).map(|at| ((at / k + at % k) % e) as u32).collect();
        let weights: Vec<f32> = (0..n * k).map(|at| [0.5, 0.25, 2.0][at % k]).collect();
        let routing =
            Routing::new(&Tensor::from_vec(ids.clone(), (n, k), &Device::Cpu).unwrap(), &tensor(&weights, &[n, k]))
                .unwrap();
        let (forced, forced_taps) = run(&block, &x, Some(&routing));
        let (at, off) = worst(&values(&forced), &reference(&w, k, &xs, Some((&ids, &weights))));
        assert!(off <= 1e-5, "routed by hand: off by {off:e} at token {}, column {}", at / h, at % h);
        for stage in [Stage::MoeRouterLogits, Stage::MoeTopIds, Stage::MoeTopWeights] {
            assert_eq!(
                values(forced_taps.get(stage.at(3)).unwrap()),
                values(taps.get(stage.at(3)).unwrap()),
                "{}: the router's own decision is recorded when the routing is given",
                stage.at(3)
            );
        }
    }

    /// The given routing must fit the block: its shape, expert ids in range, no expert twice.
    #[test]
    fn a_given_routing_that_does_not_fit_the_block_is_refused() {
        let (h, e, k) = (8, 4, 2);
        let block = block_from(&config(h, e, k, 4, 4), Weights::random(h, e, 4, 4, 3).fused(), DType::F32).unwrap();
        let x = tensor(&random(&mut 5, 2 * h, 1.0), &[2, h]);
        let cases: [(&[i64], usize, &str); 4] = [
            (&[0, 1, 2, 3], 2, ""),
            (&[0, 1, 2], 1, "the given routing is [3, 1], the block routes 2 tokens to 2 experts each"),
            (&[0, 4, 2, 3], 2, "token 0: routed to expert 4, the block has 4"),
            (&[0, 1, 3, 3], 2, "token 1: routed to expert 3 twice"),
        ];
        for (ids, k_given, expected) in cases {
            let n = ids.len() / k_given;
            let ids = Tensor::from_vec(ids.to_vec(), (n, k_given), &Device::Cpu).unwrap();
            let routing = Routing::new(&ids, &Tensor::ones((n, k_given), DType::F32, &Device::Cpu).unwrap()).unwrap();
            let result = block.forward(&x, 0, &mut Taps::disabled(), Some(&routing));
            match (result, expected) {
                (Ok(_), "") => {}
                (Err(err), expected) if !expected.is_empty() => {
                    assert!(format!("{err:#}").contains(expected), "expected {expected:?} in {err:#}")
                }
                (result, expected) => panic!("expected {expected:?}, got {:?}", result.map(|t| t.dims().to_vec())),
            }
        }
        let negative = Tensor::from_vec(vec![-1i64, 0], (1, 2), &Device::Cpu).unwrap();
        let err = Routing::new(&negative, &Tensor::ones((1, 2), DType::F32, &Device::Cpu).unwrap()).unwrap_err();
        assert!(format!("{err:#}").contains("expert -1"), "{err:#}");
    }

    /// A routed expert tensor of another shape than the config's is refused, naming the tensor,
    /// the shape the config expects and the stored one; in both layouts. A config without MoE
    /// fields, no experts at all, or both layouts at once are refused too.
    #[test]
    fn a_misshaped_expert_tensor_is_refused_naming_it_and_both_shapes() {
        let cfg = config(16, 6, 3, 8, 12);
        let w = Weights::random(16, 6, 8, 12, 11);
        let mut fused = w.fused();
        fused.insert("mlp.experts.gate_up_proj".into(), tensor(&w.gate_up, &[6, 32, 8]));
        let mut per_expert = w.per_expert();
        per_expert.insert("mlp.experts.4.down_proj.weight".into(), tensor(&vec![0.0; 128], &[8, 16]));
        let mut both = w.fused();
        both.extend(w.per_expert());
        let mut none = w.fused();
        none.retain(|name, _| !name.contains("experts"));
        let cases = [
            (&cfg, fused, "mlp.experts.gate_up_proj: the config (num_experts 6, moe_intermediate_size 8, hidden_size 16) expects [6, 16, 16], the checkpoint stores [6, 32, 8]"),
            (&cfg, per_expert, "mlp.experts.4.down_proj.weight: the config (num_experts 6, moe_intermediate_size 8, hidden_size 16) expects [16, 8], the checkpoint stores [8, 16]"),
            (&cfg, both, "mlp.experts.gate_up_proj and mlp.experts.0.gate_proj.weight are both in the checkpoint"),
            (&cfg, none, "no routed experts at mlp.experts"),
        ];
        for (cfg, tensors, expected) in cases {
            let err = block_from(cfg, tensors, DType::F32).err().expect(expected);
            assert!(format!("{err:#}").contains(expected), "expected {expected:?} in {err:#}");
        }
        let dense = TextConfig { hidden_size: 16, ..TextConfig::default() };
        let err = block_from(&dense, w.fused(), DType::F32).err().expect("a dense config");
        assert!(format!("{err:#}").contains("\"qwen3_5_moe\""), "{err:#}");
    }

    /// `gate_up_proj` holds the gate rows first and the up rows second (`.chunk(2, dim=-1)`), as
    /// `gate_proj` / `up_proj` of the per-expert layout: one expert with gate 2 and up −1 gives
    /// SiLU(2) · (−1) = −1.7616, swapped halves SiLU(−1) · 2 = −0.5379.
    #[test]
    fn the_gate_half_of_gate_up_proj_comes_first() {
        let cfg = config(2, 2, 1, 1, 1);
        let mut w = Weights::zeros(2, 2, 1, 1);
        w.gate[..2].copy_from_slice(&[1.0, 0.0]); // expert 0 wins the token x = (1, 0)
        w.gate_up[..4].copy_from_slice(&[2.0, 0.0, -1.0, 0.0]); // expert 0: gate row, then up row
        w.down[..2].copy_from_slice(&[1.0, 0.5]);
        let x = tensor(&[1.0, 0.0], &[1, 2]);
        let silu = |v: f64| v / (1.0 + (-v).exp());
        let expected = [-silu(2.0), silu(2.0) * -0.5];
        for tensors in [w.fused(), w.per_expert()] {
            let block = block_from(&cfg, tensors, DType::F32).unwrap();
            let (out, _) = run(&block, &x, None);
            let (at, off) = worst(&values(&out), &expected);
            assert!(
                off <= 1e-6,
                "{:?} layout: column {at} is {:?}, down(SiLU(gate) · up) is {expected:?}; with the halves swapped it \
                 would be {:?}",
                block.layout(),
                values(&out),
                [silu(-1.0) * 2.0, silu(-1.0)]
            );
        }
    }

    /// The shared expert is `Qwen3_5MoeMLP` times sigmoid of `shared_expert_gate` (a linear layer
    /// to one output), recorded as `moe.{i}.shared` and added to the routed experts (zero here).
    #[test]
    fn the_shared_expert_is_scaled_by_the_sigmoid_of_its_gate() {
        let cfg = config(2, 2, 1, 1, 1);
        let mut w = Weights::zeros(2, 2, 1, 1);
        w.shared_gate.copy_from_slice(&[1.0, 0.0]);
        w.shared_up.copy_from_slice(&[0.0, 1.0]);
        w.shared_down.copy_from_slice(&[2.0, -1.0]);
        let silu = |v: f64| v / (1.0 + (-v).exp());
        let sigmoid = |v: f64| 1.0 / (1.0 + (-v).exp());
        let x = tensor(&[1.5, -0.5], &[1, 2]);
        for (gate, z) in [([0.5f32, 1.0], 0.25f64), ([-2.0, 1.0], -3.5)] {
            w.shared_expert_gate.copy_from_slice(&gate);
            let block = block_from(&cfg, w.fused(), DType::F32).unwrap();
            let (out, taps) = run(&block, &x, None);
            let mlp = silu(1.5) * -0.5;
            let expected = [sigmoid(z) * 2.0 * mlp, sigmoid(z) * -mlp];
            let (at, off) = worst(&values(&out), &expected);
            assert!(off <= 1e-6, "gate {gate:?}: column {at} of {:?}, expected {expected:?}", values(&out));
            assert_eq!(values(taps.get(Stage::MoeShared.at(3)).unwrap()), values(&out), "moe.3.shared");
        }
    }

    /// Three experts whose weighted outputs for x = (1, 0) are exactly `outputs[e]` in column 0
    /// (gate 32, where SiLU is the identity in f32; up 2^-5; down the value), every token routed
    /// to all three with weight 1 in the slot order `slots`; column 0 of each token's output.
    fn summed(outputs: [f32; 3], slots: &[[u32; 3]], implementation: ExpertsImplementation, dtype: DType) -> Vec<f32> {
        let cfg = config(2, 3, 3, 1, 1);
        let mut w = Weights::zeros(2, 3, 1, 1);
        for (x, &value) in outputs.iter().enumerate() {
            w.gate_up[x * 4..x * 4 + 4].copy_from_slice(&[32.0, 0.0, 1.0 / 32.0, 0.0]);
            w.down[x * 2] = value;
        }
        let block = block_from(&cfg, w.fused(), dtype).unwrap().with_experts_implementation(implementation);
        let n = slots.len();
        let x = tensor(&[1.0, 0.0].repeat(n), &[n, 2]).to_dtype(dtype).unwrap();
        let ids: Vec<u32> = slots.iter().flatten().copied().collect();
        let routing = Routing::new(
            &Tensor::from_vec(ids, (n, 3), &Device::Cpu).unwrap(),
            &Tensor::ones((n, 3), DType::F32, &Device::Cpu).unwrap(),
        )
        .unwrap();
        let out = block.forward(&x, 0, &mut Taps::disabled(), Some(&routing)).unwrap();
        values(&out).chunks(2).map(|row| row[0]).collect()
    }

    /// Where the routed sum rounds. `"grouped_mm"` sums a token's k outputs in f32 in its slot
    /// order and rounds once; `"eager"` adds expert by expert in increasing id into the
    /// compute dtype, rounding every add. In bf16: 1 + 2^-8 + 2^-8 is 1 + 2^-7 rounded once, but
    /// 1 when each add is rounded (1 + 2^-8 is a tie, to even); in expert order even when the
    /// slots put the small ones first. In f32: 1 + 2^-24 + 2^-24 is 1 in that order and 1 + 2^-23
    /// with the small ones first.
    #[test]
    fn the_routed_sum_rounds_once_per_token_grouped_and_once_per_expert_eager() {
        use ExpertsImplementation::{Eager, GroupedMm};
        let slots = [[0, 1, 2], [1, 2, 0]];
        let small = 1.0 / 256.0;
        let cases = [
            (GroupedMm, DType::BF16, [1.0, small, small], [1.0 + 2.0 * small; 2]),
            (Eager, DType::BF16, [1.0, small, small], [1.0, 1.0]),
            (GroupedMm, DType::F32, [1.0, small, small], [1.0 + 2.0 * small; 2]),
            (Eager, DType::F32, [1.0, small, small], [1.0 + 2.0 * small; 2]),
            (GroupedMm, DType::F32, [1.0, 2f32.powi(-24), 2f32.powi(-24)], [1.0, 1.0 + 2f32.powi(-23)]),
            (Eager, DType::F32, [1.0, 2f32.powi(-24), 2f32.powi(-24)], [1.0, 1.0]),
        ];
        for (implementation, dtype, outputs, expected) in cases {
            let got = summed(outputs, &slots, implementation, dtype);
            assert_eq!(
                got, expected,
                "{implementation:?} in {dtype:?}: experts giving {outputs:?} in slot orders {slots:?} sum to {got:?}"
            );
        }
    }

    /// The margin between each token's k-th and (k+1)-th probability, naming both experts: an
    /// exact tie (margin 0), a clear choice, and k = E (nothing left out).
    #[test]
    fn routing_margins_name_the_kth_and_the_next_expert() {
        let logits = tensor(&[2.0, 1.0, 1.0, 0.0, 3.0, 0.0, 2.0, 1.0], &[2, 4]);
        let margins = routing_margins(&logits, 2).unwrap();
        let tie = margins[0];
        assert_eq!((tie.token, tie.kth_expert, tie.next_expert, tie.margin()), (0, 1, Some(2), 0.0), "{tie:?}");
        assert!(tie.is_near_tie(0.0), "an exact tie is a near tie: {tie:?}");
        let clear = margins[1];
        let probs = values(&router_probabilities(&logits).unwrap());
        assert_eq!((clear.kth_expert, clear.next_expert), (2, Some(3)), "{clear:?}");
        assert_eq!((clear.kth_prob, clear.next_prob), (probs[6], probs[7]));
        let relative = 1.0 - (-1f32).exp();
        assert!((clear.relative_margin() - relative).abs() <= 1e-6, "{clear:?}: relative margin {relative}");
        assert!(!clear.is_near_tie(1e-3) && clear.is_near_tie(0.7));
        let all = routing_margins(&logits, 4).unwrap();
        assert_eq!((all[0].next_expert, all[0].next_prob), (None, 0.0));
        assert!(!all[0].is_near_tie(1.0), "no expert left out, no tie");
        assert!(routing_margins(&logits, 5).is_err() && routing_margins(&logits, 0).is_err());
    }

    /// The bf16 slot sum's order ([`cascade_rows`]): PyTorch's `multi_row_sum` on every column,
    /// which is what the f32 kernel ([`torch_outer_sum`], checked against PyTorch's bits in
    /// `torch_sum`) does on whole blocks of 32 columns; a running sum below 16 rows, and blocks of
    /// 16 rows summed apart beyond (2^24 and fifteen zeros, then sixteen ones: a running sum loses
    /// every one, 2^24 + 1 being a tie to even; the cascade adds the ones up first).
    #[test]
    fn the_bf16_slot_sum_is_pytorchs_cascade_of_16_row_blocks() {
        let (cols, mut seed) = (32, 17u64);
        for rows in [1, 2, 3, 4, 5, 8, 15, 16, 17, 20, 31, 32, 33, 40, 257] {
            let m = random(&mut seed, rows * cols, 1.0);
            let m: Vec<f32> = m.iter().enumerate().map(|(at, v)| v * 2f32.powi((at % 13) as i32 - 6)).collect();
            let load = |r: usize, c: usize| m[r * cols + c];
            let (mut ours, mut torch) = (vec![0f32; cols], vec![0f32; cols]);
            cascade_rows(rows, cols, load, &mut ours);
            torch_outer_sum(rows, cols, load, &mut torch);
            assert_eq!(ours, torch, "{rows} rows of {cols} columns");
            if rows < 16 {
                let running: Vec<f32> = (0..cols).map(|c| (0..rows).fold(0f32, |s, r| s + load(r, c))).collect();
                assert_eq!(ours, running, "{rows} rows: a running sum");
            }
        }
        let load = |r: usize, _: usize| match r {
            0 => 16_777_216f32,
            1..=15 => 0.0,
            _ => 1.0,
        };
        let mut out = [0f32];
        cascade_rows(32, 1, load, &mut out);
        assert_eq!(out[0], 16_777_216.0 + 16.0, "the second block of 16 rows is summed apart");
    }
}
