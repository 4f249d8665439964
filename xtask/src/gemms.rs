//! The matrix products of each bench stage, by shape, and what they predict.
//!
//! Both sides multiply the same matrices: every weight of the vision tower over the patches
//! (the merger over the merged patches), every weight of the decoder over the prompt's tokens,
//! `lm_head` at the last position, and the attention products of the vision blocks and of the
//! full-attention layers. The bench measures each side's matmul at each of these shapes
//! (`script/gemm_rates.py`, `crates/neuron/examples/gemm_rates.rs`), so a stage's GEMM time is
//! predicted as Σ uses × flop ÷ that side's rate at the shape, and the rest of the stage's
//! median — norms, activations, rotary embeddings, softmax, the DeltaNet's convolution and
//! recurrence, copies — is its time outside GEMMs.
//!
//! A sparse MoE block (the `qwen3_5_moe` stand-in) multiplies each routed expert's matrices on
//! the rows of the tokens routed to it: tokens × k rows over E experts, about 8.7 per expert for
//! 277 tokens, 8 of 256. Which expert gets how many depends on the router, so they are counted
//! at the mean, rounded to whole rows, with a use count that keeps the flop exact (tokens × k ÷
//! those rows products per matrix); the shared expert and the router are ordinary weights over
//! every token.
//!
//! `lm_head` at one position reads 248 320 × 5120 floats for 2.5 GFLOP: it runs at the speed
//! of memory, not of the multiplier. It is measured as 1 × 5120 by 5120 × 16384 blocks (the
//! chunk the streamed model reads; 335 MB, far past any cache) and counted as vocab ÷ 16384
//! such blocks.

use std::collections::BTreeMap;

use neuron::config::{Config, LayerType};
use serde::{Deserialize, Serialize};

/// Columns of one measured `lm_head` block.
pub const LM_HEAD_BLOCK: usize = 16384;

/// One product: `batch` times an m × k matrix by a k × n one (2·batch·m·k·n flop).
#[derive(Serialize, Deserialize, Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Shape {
    pub batch: usize,
    pub m: usize,
    pub k: usize,
    pub n: usize,
}

impl Shape {
    pub fn flops(&self) -> f64 {
        2.0 * (self.batch * self.m * self.k * self.n) as f64
    }

    pub fn label(&self) -> String {
        let batch = if self.batch > 1 { format!("{} × ", self.batch) } else { String::new() };
        format!("{batch}{}×{} · {}×{}", self.m, self.k, self.k, self.n)
    }
}

/// A shape, the matrices that have it, and how often each stage multiplies at it.
#[derive(Debug, Clone, PartialEq)]
pub struct Gemm {
    pub shape: Shape,
    pub what: Vec<String>,
    pub vision_uses: f64,
    pub prefill_uses: f64,
}

impl Gemm {
    /// Uses in a stage of the bench; `forward` is the vision tower and the prefill.
    pub fn uses(&self, stage: &str) -> f64 {
        match stage {
            "vision" => self.vision_uses,
            "prefill" => self.prefill_uses,
            "forward" => self.vision_uses + self.prefill_uses,
            _ => 0.0,
        }
    }
}

/// Every product of the vision and prefill stages, grouped by shape, from the checkpoint's
/// tensor shapes (`weights`: name and stored shape) and the configuration; plus the `lm_head`
/// block at every position (no stage uses it; the cost of full logits, for reference).
pub fn inventory(weights: &[(String, Vec<usize>)], cfg: &Config, patches: usize, tokens: usize) -> Vec<Gemm> {
    let mut by_shape: BTreeMap<Shape, Gemm> = BTreeMap::new();
    let mut add = |shape: Shape, what: &str, vision: f64, prefill: f64| {
        let gemm =
            by_shape.entry(shape).or_insert_with(|| Gemm { shape, what: vec![], vision_uses: 0.0, prefill_uses: 0.0 });
        if !gemm.what.iter().any(|w| w == what) {
            gemm.what.push(what.to_string());
        }
        gemm.vision_uses += vision;
        gemm.prefill_uses += prefill;
    };
    let v = &cfg.vision_config;
    let t = &cfg.text_config;
    let merged = patches / (v.spatial_merge_size * v.spatial_merge_size);
    // The routed experts' rows: tokens × k over E, at the mean (see the module's docs).
    let routed = t.moe.as_ref().map(|moe| {
        let pairs = (tokens * moe.num_experts_per_tok) as f64;
        let rows = (pairs / moe.num_experts as f64).round().max(1.0) as usize;
        (rows, pairs / rows as f64, moe.num_experts as f64)
    });
    for (name, dims) in weights {
        if let Some((rows, uses, experts)) = routed.filter(|_| name.starts_with("model.language_model.")) {
            // Fused: `experts.gate_up_proj` [E, 2I, H] and `experts.down_proj` [E, H, I], one
            // entry for all E; per expert: `experts.{e}.{gate,up,down}_proj.weight` [out, in].
            let fused = name.ends_with(".mlp.experts.gate_up_proj") || name.ends_with(".mlp.experts.down_proj");
            let product = match dims.as_slice() {
                [_, out, inp] if fused => Some((*out, *inp, uses)),
                [out, inp] if name.contains(".mlp.experts.") => Some((*out, *inp, uses / experts)),
                _ => None,
            };
            if let Some((n, k, uses)) = product {
                let leaf = name.trim_end_matches(".weight").rsplit('.').next().unwrap_or(name);
                add(Shape { batch: 1, m: rows, k, n }, &format!("experts.{leaf} (routed)"), 0.0, uses);
                continue;
            }
        }
        let skipped = ["embed_tokens", "pos_embed", "conv1d"].iter().any(|s| name.contains(s));
        if dims.len() < 2 || skipped || !name.ends_with(".weight") {
            continue;
        }
        let (n, k) = (dims[0], dims[1..].iter().product::<usize>());
        let what = short_name(name);
        if name.starts_with("model.visual.merger.") {
            add(Shape { batch: 1, m: merged, k, n }, &what, 1.0, 0.0);
        } else if name.starts_with("model.visual.") {
            add(Shape { batch: 1, m: patches, k, n }, &what, 1.0, 0.0);
        } else if name.starts_with("model.language_model.") {
            add(Shape { batch: 1, m: tokens, k, n }, &what, 0.0, 1.0);
        } else if name == "lm_head.weight" {
            let blocks = n as f64 / LM_HEAD_BLOCK as f64;
            add(Shape { batch: 1, m: 1, k, n: LM_HEAD_BLOCK }, "lm_head (last position)", 0.0, blocks);
            add(Shape { batch: 1, m: tokens, k, n: LM_HEAD_BLOCK }, "lm_head (every position; no stage)", 0.0, 0.0);
        }
    }
    // Attention: QKᵀ and probabilities × V per head (one image, so one segment of patches).
    let (heads, hd) = (v.num_heads, v.head_dim());
    add(Shape { batch: heads, m: patches, k: hd, n: patches }, "vision QKᵀ", v.depth as f64, 0.0);
    add(Shape { batch: heads, m: patches, k: patches, n: hd }, "vision PV", v.depth as f64, 0.0);
    let full = t.layer_types().iter().filter(|l| **l == LayerType::FullAttention).count() as f64;
    let (heads, hd) = (t.num_attention_heads, t.head_dim);
    add(Shape { batch: heads, m: tokens, k: hd, n: tokens }, "text QKᵀ", 0.0, full);
    add(Shape { batch: heads, m: tokens, k: tokens, n: hd }, "text PV", 0.0, full);
    by_shape.into_values().collect()
}

/// "model.language_model.layers.3.mlp.gate_proj.weight" → "mlp.gate_proj".
fn short_name(name: &str) -> String {
    let parts: Vec<&str> = name.trim_end_matches(".weight").split('.').collect();
    let tail = &parts[parts.len().saturating_sub(2)..];
    let prefix = if name.starts_with("model.visual.") { "vision " } else { "" };
    format!("{prefix}{}", tail.join("."))
}

/// One side's measured rate at one shape.
#[derive(Serialize, Deserialize, Debug, Clone, Copy, PartialEq)]
pub struct Rate {
    #[serde(flatten)]
    pub shape: Shape,
    pub seconds: f64,
    pub gflops: f64,
}

/// A stage's GEMMs at one side's rates: flop, predicted seconds, and the rate they imply.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct StageGemms {
    pub flops: f64,
    pub seconds: f64,
}

impl StageGemms {
    pub fn gflops(&self) -> f64 {
        self.flops / self.seconds / 1e9
    }
}

/// Σ uses × flop and Σ uses × flop ÷ rate over the stage's shapes; `None` if a shape the
/// stage uses was not measured.
pub fn stage_gemms(gemms: &[Gemm], rates: &[Rate], stage: &str) -> Option<StageGemms> {
    let mut total = StageGemms { flops: 0.0, seconds: 0.0 };
    for gemm in gemms.iter().filter(|g| g.uses(stage) > 0.0) {
        let rate = rates.iter().find(|r| r.shape == gemm.shape)?;
        let flops = gemm.uses(stage) * gemm.shape.flops();
        total.flops += flops;
        total.seconds += flops / (rate.gflops * 1e9);
    }
    (total.flops > 0.0).then_some(total)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The stand-in's configuration (Qwen3.6-27B's widths, 4 layers each side).
    fn standin_config() -> Config {
        let text = std::fs::read_to_string(crate::cli::project_root().join("script/qwen3.6-27b.config.json")).unwrap();
        let mut cfg: Config = serde_json::from_str(&text).unwrap();
        cfg.text_config.num_hidden_layers = 4;
        cfg.vision_config.depth = 4;
        cfg
    }

    fn weight(name: &str, dims: &[usize]) -> (String, Vec<usize>) {
        (name.to_string(), dims.to_vec())
    }

    #[test]
    fn weights_of_one_shape_are_grouped_and_counted_per_stage() {
        let cfg = standin_config();
        let weights = vec![
            weight("model.language_model.layers.0.mlp.gate_proj.weight", &[17408, 5120]),
            weight("model.language_model.layers.0.mlp.up_proj.weight", &[17408, 5120]),
            weight("model.language_model.layers.1.mlp.gate_proj.weight", &[17408, 5120]),
            weight("model.language_model.layers.0.input_layernorm.weight", &[5120]),
            weight("model.language_model.layers.0.linear_attn.conv1d.weight", &[10240, 1, 4]),
            weight("model.visual.patch_embed.proj.weight", &[1152, 3, 2, 16, 16]),
            weight("model.visual.blocks.0.attn.qkv.bias", &[3456]),
            weight("model.visual.merger.linear_fc2.weight", &[5120, 4608]),
            weight("lm_head.weight", &[248320, 5120]),
        ];
        let gemms = inventory(&weights, &cfg, 784, 277);
        let find = |shape: Shape| gemms.iter().find(|g| g.shape == shape).unwrap_or_else(|| panic!("no {shape:?}"));
        let mlp = find(Shape { batch: 1, m: 277, k: 5120, n: 17408 });
        assert_eq!(mlp.what, ["mlp.gate_proj", "mlp.up_proj"], "names at the MLP's shape");
        assert_eq!((mlp.vision_uses, mlp.prefill_uses), (0.0, 3.0), "uses of the MLP's shape");
        let patch = find(Shape { batch: 1, m: 784, k: 1536, n: 1152 });
        assert_eq!((patch.vision_uses, patch.prefill_uses), (1.0, 0.0), "the patch embedding is a 1536-wide product");
        find(Shape { batch: 1, m: 196, k: 4608, n: 5120 });
        let head = find(Shape { batch: 1, m: 1, k: 5120, n: LM_HEAD_BLOCK });
        assert!((head.prefill_uses - 248320.0 / 16384.0).abs() < 1e-12, "lm_head blocks: {}", head.prefill_uses);
        let every = find(Shape { batch: 1, m: 277, k: 5120, n: LM_HEAD_BLOCK });
        assert_eq!(every.uses("forward"), 0.0, "full logits are measured for reference only");
        let qk = find(Shape { batch: 16, m: 784, k: 72, n: 784 });
        assert_eq!(qk.vision_uses, 4.0, "one vision QKᵀ per block");
        let text_qk = find(Shape { batch: 24, m: 277, k: 256, n: 277 });
        assert_eq!(text_qk.prefill_uses, 1.0, "one full-attention layer in four");
        // 3 weight shapes, 2 lm_head blocks, 4 attention products; norms, biases, conv1d skipped.
        assert_eq!(gemms.len(), 9, "shapes: {:?}", gemms.iter().map(|g| g.shape).collect::<Vec<_>>());
    }

    #[test]
    fn routed_experts_are_counted_at_the_mean_rows_per_expert_with_exact_flop() {
        let text =
            std::fs::read_to_string(crate::cli::project_root().join("script/qwen3.6-35b-a3b.config.json")).unwrap();
        let cfg: Config = serde_json::from_str(&text).unwrap();
        let weights = vec![
            weight("model.language_model.layers.0.mlp.experts.gate_up_proj", &[256, 1024, 2048]),
            weight("model.language_model.layers.0.mlp.experts.down_proj", &[256, 2048, 512]),
            weight("model.language_model.layers.0.mlp.shared_expert.gate_proj.weight", &[512, 2048]),
            weight("model.language_model.layers.0.mlp.gate.weight", &[256, 2048]),
            weight("mtp.layers.0.mlp.experts.gate_up_proj", &[256, 1024, 2048]),
        ];
        // 277 tokens × 8 = 2216 (token, expert) pairs over 256 experts: 8.66, so 9 rows.
        let gemms = inventory(&weights, &cfg, 784, 277);
        let find = |shape: Shape| gemms.iter().find(|g| g.shape == shape).unwrap_or_else(|| panic!("no {shape:?}"));
        let gate_up = find(Shape { batch: 1, m: 9, k: 2048, n: 1024 });
        assert_eq!(gate_up.what, ["experts.gate_up_proj (routed)"]);
        let flop = gate_up.prefill_uses * gate_up.shape.flops();
        assert!((flop - 2.0 * 2216.0 * 2048.0 * 1024.0).abs() < 1.0, "routed gate_up flop {flop}");
        find(Shape { batch: 1, m: 9, k: 512, n: 2048 });
        assert_eq!(find(Shape { batch: 1, m: 277, k: 2048, n: 512 }).prefill_uses, 1.0, "the shared expert");
        assert_eq!(find(Shape { batch: 1, m: 277, k: 2048, n: 256 }).what, ["mlp.gate"], "the router");
        // 4 weight shapes and 4 attention products; mtp.* is not the forward pass's.
        assert_eq!(gemms.len(), 8, "shapes: {:?}", gemms.iter().map(|g| g.shape).collect::<Vec<_>>());
    }

    #[test]
    fn a_stage_is_predicted_at_each_shapes_own_rate() {
        let shape = |m, n| Shape { batch: 1, m, k: 1000, n };
        let gemms = vec![
            Gemm { shape: shape(100, 1000), what: vec![], vision_uses: 2.0, prefill_uses: 0.0 },
            Gemm { shape: shape(1, 1000), what: vec![], vision_uses: 0.0, prefill_uses: 1.0 },
        ];
        let rates = [
            Rate { shape: shape(100, 1000), seconds: 0.0, gflops: 100.0 },
            Rate { shape: shape(1, 1000), seconds: 0.0, gflops: 1.0 },
        ];
        let vision = stage_gemms(&gemms, &rates, "vision").unwrap();
        assert!((vision.flops - 4e8).abs() < 1.0, "vision flop: {}", vision.flops);
        assert!((vision.seconds - 4e-3).abs() < 1e-12, "vision seconds: {}", vision.seconds);
        let forward = stage_gemms(&gemms, &rates, "forward").unwrap();
        assert!((forward.seconds - 6e-3).abs() < 1e-12, "forward adds the slow product's 2 ms: {}", forward.seconds);
        assert_eq!(stage_gemms(&gemms, &rates[..1], "prefill"), None, "an unmeasured shape gives no prediction");
    }
}
