//! The HuggingFace `config.json` of a `qwen3_5` or `qwen3_5_moe` checkpoint, deserialised as is.
//!
//! Field names are the checkpoint's; serde defaults equal transformers' defaults
//! (`transformers/models/qwen3_5/configuration_qwen3_5.py`, and
//! `models/qwen3_5_moe/configuration_qwen3_5_moe.py` for the MoE family), so a config that
//! omits a field means here what it means there. Each struct takes its omitted fields from its
//! `Default`, which lists transformers' values one per line; the MoE family's text defaults
//! are the dense ones with the few that differ replaced ([`moe_text_defaults`]).

use std::path::Path;

use anyhow::{bail, Context, Result};
use serde::Deserialize;

/// The model family, from the top-level `model_type`: which decoder-layer MLP the checkpoint has
/// and which defaults its text config takes. Any other `model_type` is refused when the config is
/// parsed, with serde's message naming the known ones.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
pub enum ModelFamily {
    /// `"qwen3_5"`: `Qwen3_5ForConditionalGeneration`, a dense MLP (`Qwen3_5MLP`) in every decoder
    /// layer (Qwen3.6-27B). Also a config without `model_type`.
    #[default]
    #[serde(rename = "qwen3_5")]
    Dense,
    /// `"qwen3_5_moe"`: `Qwen3_5MoeForConditionalGeneration`, a sparse MoE block
    /// (`Qwen3_5MoeSparseMoeBlock`) in every decoder layer (Qwen3.6-35B-A3B).
    #[serde(rename = "qwen3_5_moe")]
    Moe,
}

impl ModelFamily {
    /// The `model_type` of `config.json` that names the family.
    pub fn model_type(self) -> &'static str {
        match self {
            ModelFamily::Dense => "qwen3_5",
            ModelFamily::Moe => "qwen3_5_moe",
        }
    }
}

/// Mirrors `Qwen3_5Config` and `Qwen3_5MoeConfig`. Omitted sub-configs are their defaults, as in
/// transformers; the text config's defaults are the family's (`model_type`).
#[derive(Debug, Clone, Deserialize)]
#[serde(try_from = "RawConfig")]
pub struct Config {
    pub text_config: TextConfig,
    pub vision_config: VisionConfig,
    pub image_token_id: u32,
    pub video_token_id: u32,
    pub vision_start_token_id: u32,
    pub vision_end_token_id: u32,
    /// Read from the top level, as `PreTrainedModel.get_expanded_tied_weights_keys` reads
    /// `self.config.tie_word_embeddings` of `Qwen3_5ForConditionalGeneration` (the text
    /// config's copy of the field is not consulted there, so it is not read here either).
    pub tie_word_embeddings: bool,
    /// `model_type`: `"qwen3_5"` (or absent) or `"qwen3_5_moe"`.
    pub family: ModelFamily,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            text_config: TextConfig::default(),
            vision_config: VisionConfig::default(),
            image_token_id: 248056,
            video_token_id: 248057,
            vision_start_token_id: 248053,
            vision_end_token_id: 248054,
            tie_word_embeddings: false,
            family: ModelFamily::Dense,
        }
    }
}

/// `config.json` as written, before the text config takes its family's defaults.
#[derive(Deserialize)]
#[serde(default)]
struct RawConfig {
    model_type: ModelFamily,
    text_config: serde_json::Map<String, serde_json::Value>,
    vision_config: VisionConfig,
    image_token_id: u32,
    video_token_id: u32,
    vision_start_token_id: u32,
    vision_end_token_id: u32,
    tie_word_embeddings: bool,
}

impl Default for RawConfig {
    fn default() -> Self {
        let c = Config::default();
        RawConfig {
            model_type: c.family,
            text_config: serde_json::Map::new(),
            vision_config: c.vision_config,
            image_token_id: c.image_token_id,
            video_token_id: c.video_token_id,
            vision_start_token_id: c.vision_start_token_id,
            vision_end_token_id: c.vision_end_token_id,
            tie_word_embeddings: c.tie_word_embeddings,
        }
    }
}

impl TryFrom<RawConfig> for Config {
    type Error = serde_json::Error;

    fn try_from(raw: RawConfig) -> Result<Self, Self::Error> {
        Ok(Config {
            text_config: TextConfig::of_family(raw.model_type, raw.text_config)?,
            vision_config: raw.vision_config,
            image_token_id: raw.image_token_id,
            video_token_id: raw.video_token_id,
            vision_start_token_id: raw.vision_start_token_id,
            vision_end_token_id: raw.vision_end_token_id,
            tie_word_embeddings: raw.tie_word_embeddings,
            family: raw.model_type,
        })
    }
}

impl Config {
    /// Reads `<dir>/config.json`.
    pub fn from_dir(dir: &Path) -> Result<Config> {
        let path = dir.join("config.json");
        let text = std::fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?;
        let config: Config = serde_json::from_str(&text).with_context(|| format!("parsing {}", path.display()))?;
        config.vision_config.validate().with_context(|| format!("{}: vision_config", path.display()))?;
        if let Some(moe) = &config.text_config.moe {
            moe.validate().with_context(|| format!("{}: text_config", path.display()))?;
        }
        Ok(config)
    }
}

/// Mirrors `Qwen3_5VisionConfig`.
#[derive(Debug, Clone, Deserialize)]
#[serde(default)]
pub struct VisionConfig {
    pub depth: usize,
    pub hidden_size: usize,
    pub hidden_act: String,
    pub intermediate_size: usize,
    pub num_heads: usize,
    pub in_channels: usize,
    pub patch_size: usize,
    pub spatial_merge_size: usize,
    pub temporal_patch_size: usize,
    pub out_hidden_size: usize,
    pub num_position_embeddings: usize,
    /// transformers fills `{"rope_type": "axial", "rope_theta": 10000.0}` when absent.
    pub rope_parameters: VisionRopeParameters,
    /// Fixed in transformers' code, never read from `config.json`.
    #[serde(skip)]
    pub constants: VisionConstants,
}

impl Default for VisionConfig {
    fn default() -> Self {
        VisionConfig {
            depth: 27,
            hidden_size: 1152,
            hidden_act: "gelu_pytorch_tanh".into(),
            intermediate_size: 4304,
            num_heads: 16,
            in_channels: 3,
            patch_size: 16,
            spatial_merge_size: 2,
            temporal_patch_size: 2,
            out_hidden_size: 3584,
            num_position_embeddings: 2304,
            rope_parameters: VisionRopeParameters::default(),
            constants: VisionConstants::default(),
        }
    }
}

/// The vision tower's numerical constants that transformers fixes in its code rather than in
/// the configuration. The defaults are transformers' values; a test may change one at load
/// time (`tests/constants.rs`) to show that the parity tests notice it.
#[derive(Debug, Clone, PartialEq)]
pub struct VisionConstants {
    /// `eps` of every vision LayerNorm: `nn.LayerNorm(config.hidden_size, eps=1e-6)` of
    /// `Qwen3_5VisionBlock.norm1` / `norm2` and `nn.LayerNorm(..., eps=1e-6)` of
    /// `Qwen3_5VisionPatchMerger.norm`.
    pub layer_norm_eps: f64,
    /// The attention's score scale; `None` is `Qwen3_5VisionAttention.scaling =
    /// self.head_dim**-0.5`.
    pub attention_scale: Option<f64>,
}

impl Default for VisionConstants {
    fn default() -> Self {
        VisionConstants { layer_norm_eps: 1e-6, attention_scale: None }
    }
}

/// The vision tower's `rope_parameters` (`compute_axial_rope_parameters`).
#[derive(Debug, Clone, Deserialize)]
#[serde(default)]
pub struct VisionRopeParameters {
    pub rope_theta: f64,
}

impl Default for VisionRopeParameters {
    fn default() -> Self {
        VisionRopeParameters { rope_theta: 10000.0 }
    }
}

impl VisionConfig {
    /// `head_dim` of `Qwen3_5VisionAttention`: hidden_size / num_heads (72 for Qwen3.6-27B).
    pub fn head_dim(&self) -> usize {
        self.hidden_size / self.num_heads
    }

    /// The rotary base of the vision attention (`compute_axial_rope_parameters`).
    pub fn rope_theta(&self) -> f64 {
        self.rope_parameters.rope_theta
    }

    /// The attention's score scale: `Qwen3_5VisionAttention.scaling`, `head_dim**-0.5`
    /// unless [`VisionConstants::attention_scale`] says otherwise.
    pub fn attention_scale(&self) -> f64 {
        self.constants.attention_scale.unwrap_or((self.head_dim() as f64).powf(-0.5))
    }

    /// Side of the square learned position-embedding grid (`num_grid_per_side`).
    pub fn num_grid_per_side(&self) -> usize {
        (self.num_position_embeddings as f64).sqrt() as usize
    }

    /// Values per patch row of `pixel_values`: channels × temporal patch × patch².
    pub fn patch_dim(&self) -> usize {
        self.in_channels * self.temporal_patch_size * self.patch_size * self.patch_size
    }

    fn validate(&self) -> Result<()> {
        if self.num_heads == 0 || !self.hidden_size.is_multiple_of(self.num_heads) {
            bail!("hidden_size {} is not a multiple of num_heads {}", self.hidden_size, self.num_heads);
        }
        if !self.head_dim().is_multiple_of(4) {
            bail!("head_dim {} must be a multiple of 4 for the 2-D axial rotary embedding", self.head_dim());
        }
        let side = self.num_grid_per_side();
        if side * side != self.num_position_embeddings {
            bail!("num_position_embeddings {} is not a square", self.num_position_embeddings);
        }
        if self.hidden_act != "gelu_pytorch_tanh" {
            bail!("hidden_act \"{}\" is not supported (only gelu_pytorch_tanh)", self.hidden_act);
        }
        Ok(())
    }
}

/// The mixer of a decoder layer (`Qwen3_5TextConfig.layer_types`); any other string in
/// `config.json` is rejected when it is parsed, with serde's message naming the variants.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LayerType {
    /// `Qwen3_5GatedDeltaNet`.
    LinearAttention,
    /// `Qwen3_5Attention`.
    FullAttention,
}

/// Mirrors `Qwen3_5TextConfig` and `Qwen3_5MoeTextConfig`. Deserialised alone it is the dense
/// family's (`moe` is `None`); [`Config`] builds it for the family its `model_type` names
/// ([`TextConfig::of_family`]). `Qwen3_5MoeTextConfig` has no `intermediate_size`: in an MoE
/// config it keeps its dense default and nothing reads it.
#[derive(Debug, Clone, Deserialize)]
#[serde(default)]
pub struct TextConfig {
    pub vocab_size: usize,
    pub hidden_size: usize,
    pub intermediate_size: usize,
    pub num_hidden_layers: usize,
    pub num_attention_heads: usize,
    pub num_key_value_heads: usize,
    pub head_dim: usize,
    pub rms_norm_eps: f64,
    pub linear_conv_kernel_dim: usize,
    pub linear_key_head_dim: usize,
    pub linear_value_head_dim: usize,
    pub linear_num_key_heads: usize,
    pub linear_num_value_heads: usize,
    pub layer_types: Option<Vec<LayerType>>,
    /// Only read when `layer_types` is absent (`__post_init__` pops it from the kwargs).
    pub full_attention_interval: usize,
    pub rope_parameters: TextRopeParameters,
    pub attention_bias: bool,
    /// The longest sequence the model was trained for: a longer prompt is refused.
    pub max_position_embeddings: usize,
    /// The end-of-sequence token(s) `generate` stops at.
    pub eos_token_id: Option<EosTokenId>,
    /// The sparse MoE block's fields, for the MoE family (`None` for the dense one): read from
    /// the same object by [`TextConfig::of_family`].
    #[serde(skip)]
    pub moe: Option<MoeConfig>,
    /// Fixed in transformers' code, never read from `config.json`.
    #[serde(skip)]
    pub constants: TextConstants,
}

impl Default for TextConfig {
    fn default() -> Self {
        TextConfig {
            vocab_size: 248320,
            hidden_size: 4096,
            intermediate_size: 12288,
            num_hidden_layers: 32,
            num_attention_heads: 16,
            num_key_value_heads: 4,
            head_dim: 256,
            rms_norm_eps: 1e-6,
            linear_conv_kernel_dim: 4,
            linear_key_head_dim: 128,
            linear_value_head_dim: 128,
            linear_num_key_heads: 16,
            linear_num_value_heads: 32,
            layer_types: None,
            full_attention_interval: 4,
            rope_parameters: TextRopeParameters::default(),
            attention_bias: false,
            max_position_embeddings: 32768,
            eos_token_id: None,
            moe: None,
            constants: TextConstants::default(),
        }
    }
}

/// `Qwen3_5MoeTextConfig`'s defaults where they differ from `Qwen3_5TextConfig`'s (every other
/// field of the two has the same default; `Qwen3_5MoeConfig()` is Qwen3.5-35B-A3B's text model).
pub fn moe_text_defaults() -> serde_json::Map<String, serde_json::Value> {
    let mut defaults = serde_json::Map::new();
    defaults.insert("hidden_size".into(), 2048.into());
    defaults.insert("num_hidden_layers".into(), 40.into());
    defaults.insert("num_key_value_heads".into(), 2.into());
    defaults
}

/// The sparse MoE block's fields of `Qwen3_5MoeTextConfig` (`Qwen3_5MoeSparseMoeBlock`,
/// `Qwen3_5MoeTopKRouter`, `Qwen3_5MoeExperts`). transformers removes `norm_topk_prob`,
/// `decoder_sparse_step` and `mlp_only_layers` from this config: every layer's block is sparse
/// and the top-k weights are always renormalised.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(default)]
pub struct MoeConfig {
    /// Routed experts per layer.
    pub num_experts: usize,
    /// Experts each token is routed to (k).
    pub num_experts_per_tok: usize,
    /// The intermediate size of each routed expert.
    pub moe_intermediate_size: usize,
    /// The intermediate size of the shared expert.
    pub shared_expert_intermediate_size: usize,
    /// The load-balancing loss' weight: training only, read and ignored.
    pub router_aux_loss_coef: f64,
    /// Whether the forward pass returns the router logits: training only, read and ignored.
    pub output_router_logits: bool,
}

impl Default for MoeConfig {
    fn default() -> Self {
        MoeConfig {
            num_experts: 256,
            num_experts_per_tok: 8,
            moe_intermediate_size: 512,
            shared_expert_intermediate_size: 512,
            router_aux_loss_coef: 0.001,
            output_router_logits: false,
        }
    }
}

impl MoeConfig {
    fn validate(&self) -> Result<()> {
        if self.num_experts_per_tok == 0 || self.num_experts_per_tok > self.num_experts {
            bail!(
                "num_experts_per_tok {} must be between 1 and num_experts {}",
                self.num_experts_per_tok,
                self.num_experts
            );
        }
        if self.moe_intermediate_size == 0 || self.shared_expert_intermediate_size == 0 {
            bail!(
                "moe_intermediate_size {} and shared_expert_intermediate_size {} must be positive",
                self.moe_intermediate_size,
                self.shared_expert_intermediate_size
            );
        }
        Ok(())
    }
}

/// The text model's numerical constants that transformers fixes in its code rather than in
/// the configuration. The defaults are transformers' values; a test may change one at load
/// time (`tests/constants.rs`) to show that the parity tests notice it.
#[derive(Debug, Clone, PartialEq)]
pub struct TextConstants {
    /// `eps` of the delta rule's `l2norm` of q and k: `l2norm(query, dim=-1, eps=1e-6)` (and
    /// of key) in `torch_chunk_gated_delta_rule` and `torch_recurrent_gated_delta_rule`.
    pub l2norm_eps: f64,
    /// `threshold` of `F.softplus(a.float() + self.dt_bias)` in
    /// `Qwen3_5GatedDeltaNet.forward`: torch's default 20 (with beta 1), above which softplus
    /// is the identity.
    pub softplus_threshold: f32,
    /// `eps` of the Gated DeltaNet's `Qwen3_5RMSNormGated`; `None` is `rms_norm_eps`, as
    /// `Qwen3_5GatedDeltaNet.__init__` sets `self.layer_norm_epsilon = config.rms_norm_eps`.
    pub gated_norm_eps: Option<f64>,
    /// The full attention's score scale; `None` is `Qwen3_5Attention.scaling =
    /// self.head_dim**-0.5`.
    pub attention_scale: Option<f64>,
    /// The delta rule's query scale; `None` is the reference's `query.shape[-1] ** -0.5` in
    /// `torch_chunk_gated_delta_rule` (`/ query.shape[-1] ** 0.5` in
    /// `torch_recurrent_gated_delta_rule`), 1/√`linear_key_head_dim`.
    pub linear_attention_scale: Option<f64>,
}

impl Default for TextConstants {
    fn default() -> Self {
        TextConstants {
            l2norm_eps: 1e-6,
            softplus_threshold: 20.0,
            gated_norm_eps: None,
            attention_scale: None,
            linear_attention_scale: None,
        }
    }
}

/// `eos_token_id`: one id or a list, as transformers accepts both.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(untagged)]
pub enum EosTokenId {
    One(u32),
    Many(Vec<u32>),
}

impl EosTokenId {
    /// The ids as a list.
    pub fn ids(&self) -> Vec<u32> {
        match self {
            EosTokenId::One(id) => vec![*id],
            EosTokenId::Many(ids) => ids.clone(),
        }
    }
}

/// The text model's `rope_parameters` (interleaved M-RoPE).
#[derive(Debug, Clone, Deserialize)]
#[serde(default)]
pub struct TextRopeParameters {
    pub rope_theta: f64,
    /// `kwargs.setdefault("partial_rotary_factor", 0.25)` in `__post_init__`.
    pub partial_rotary_factor: f64,
    pub mrope_section: Vec<usize>,
}

impl Default for TextRopeParameters {
    fn default() -> Self {
        TextRopeParameters { rope_theta: 10000.0, partial_rotary_factor: 0.25, mrope_section: vec![11, 11, 10] }
    }
}

impl TextConfig {
    /// The text config of a `family` from its `config.json` object: omitted fields take that
    /// family's transformers defaults, and the MoE family's also reads [`MoeConfig`].
    pub fn of_family(
        family: ModelFamily,
        fields: serde_json::Map<String, serde_json::Value>,
    ) -> serde_json::Result<TextConfig> {
        match family {
            ModelFamily::Dense => serde_json::from_value(serde_json::Value::Object(fields)),
            ModelFamily::Moe => {
                let moe: MoeConfig = serde_json::from_value(serde_json::Value::Object(fields.clone()))?;
                let mut merged = moe_text_defaults();
                merged.extend(fields);
                let mut text: TextConfig = serde_json::from_value(serde_json::Value::Object(merged))?;
                text.moe = Some(moe);
                Ok(text)
            }
        }
    }

    /// The family this text config was built for.
    pub fn family(&self) -> ModelFamily {
        if self.moe.is_some() {
            ModelFamily::Moe
        } else {
            ModelFamily::Dense
        }
    }

    /// `layer_types`, or the pattern transformers derives from `full_attention_interval`:
    /// every interval-th layer is full attention, the others linear attention.
    pub fn layer_types(&self) -> Vec<LayerType> {
        self.layer_types.clone().unwrap_or_else(|| {
            (0..self.num_hidden_layers)
                .map(|i| {
                    if (i + 1) % self.full_attention_interval == 0 {
                        LayerType::FullAttention
                    } else {
                        LayerType::LinearAttention
                    }
                })
                .collect()
        })
    }

    /// The rotated dims of each attention head: `head_dim · partial_rotary_factor` (64 of 256).
    pub fn rotary_dim(&self) -> usize {
        (self.head_dim as f64 * self.rope_parameters.partial_rotary_factor) as usize
    }

    /// `eps` of the Gated DeltaNet's gated RMSNorm (`rms_norm_eps` unless
    /// [`TextConstants::gated_norm_eps`] says otherwise).
    pub fn gated_norm_eps(&self) -> f64 {
        self.constants.gated_norm_eps.unwrap_or(self.rms_norm_eps)
    }

    /// The full attention's score scale: `Qwen3_5Attention.scaling`, `head_dim**-0.5` unless
    /// [`TextConstants::attention_scale`] says otherwise.
    pub fn attention_scale(&self) -> f64 {
        self.constants.attention_scale.unwrap_or((self.head_dim as f64).powf(-0.5))
    }

    /// Channels of the Gated DeltaNet's causal conv: q, k (key heads) and v (value heads).
    pub fn linear_conv_dim(&self) -> usize {
        2 * self.linear_num_key_heads * self.linear_key_head_dim
            + self.linear_num_value_heads * self.linear_value_head_dim
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Omitted fields mean what they mean in transformers' `Qwen3_5Config`,
    /// `Qwen3_5TextConfig` and `Qwen3_5VisionConfig` (configuration_qwen3_5.py).
    #[test]
    fn omitted_fields_take_transformers_defaults() {
        let cfg: Config = serde_json::from_str(r#"{"text_config": {}, "vision_config": {}}"#).unwrap();
        let (t, v) = (&cfg.text_config, &cfg.vision_config);
        assert_eq!((cfg.image_token_id, cfg.video_token_id), (248056, 248057));
        assert_eq!((cfg.vision_start_token_id, cfg.vision_end_token_id), (248053, 248054));
        assert!(!cfg.tie_word_embeddings);
        assert_eq!((t.vocab_size, t.hidden_size, t.intermediate_size), (248320, 4096, 12288));
        assert_eq!((t.num_hidden_layers, t.num_attention_heads, t.num_key_value_heads, t.head_dim), (32, 16, 4, 256));
        assert_eq!(t.rms_norm_eps, 1e-6);
        assert_eq!((t.linear_conv_kernel_dim, t.linear_key_head_dim, t.linear_value_head_dim), (4, 128, 128));
        assert_eq!((t.linear_num_key_heads, t.linear_num_value_heads), (16, 32));
        assert_eq!((v.depth, v.hidden_size, v.intermediate_size, v.num_heads), (27, 1152, 4304, 16));
        assert_eq!((v.in_channels, v.patch_size, v.spatial_merge_size, v.temporal_patch_size), (3, 16, 2, 2));
        assert_eq!((v.out_hidden_size, v.num_position_embeddings), (3584, 2304));
        assert_eq!((v.rope_theta(), v.head_dim(), v.num_grid_per_side()), (10000.0, 72, 48));
        assert_eq!(v.hidden_act, "gelu_pytorch_tanh");
    }

    /// The constants transformers hard-codes are not read from `config.json` (transformers
    /// ignores such keys too) and default to transformers' values.
    #[test]
    fn hard_coded_constants_take_transformers_values_and_are_not_read_from_the_config() {
        let json = r#"{"text_config": {"l2norm_eps": 1, "constants": {"l2norm_eps": 1}, "head_dim": 64},
                       "vision_config": {"layer_norm_eps": 1, "constants": {"layer_norm_eps": 1}}}"#;
        let cfg: Config = serde_json::from_str(json).unwrap();
        let (t, v) = (&cfg.text_config, &cfg.vision_config);
        assert_eq!(t.constants, TextConstants::default(), "text constants");
        assert_eq!(v.constants, VisionConstants::default(), "vision constants");
        assert_eq!((t.constants.l2norm_eps, t.constants.softplus_threshold), (1e-6, 20.0));
        assert_eq!((t.gated_norm_eps(), t.attention_scale()), (1e-6, 0.125), "rms_norm_eps, 64^-0.5");
        assert_eq!((v.constants.layer_norm_eps, v.attention_scale()), (1e-6, 72f64.powf(-0.5)));
    }

    #[test]
    fn rope_parameters_without_fields_take_transformers_defaults() {
        let r: TextRopeParameters = serde_json::from_str("{}").unwrap();
        assert_eq!((r.rope_theta, r.partial_rotary_factor, r.mrope_section.clone()), (10000.0, 0.25, vec![11, 11, 10]));
        let t: TextConfig = serde_json::from_str(r#"{"rope_parameters": {"rope_theta": 1e7}}"#).unwrap();
        assert_eq!((t.rope_parameters.rope_theta, t.rotary_dim()), (1e7, 64), "theta read, the rest defaulted");
        let v: VisionConfig = serde_json::from_str("{}").unwrap();
        assert_eq!(v.rope_theta(), 10000.0);
    }

    #[test]
    fn an_unknown_layer_type_is_rejected_when_the_config_is_parsed() {
        let err = serde_json::from_str::<TextConfig>(r#"{"layer_types": ["linear_attention", "sliding_attention"]}"#)
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("unknown variant `sliding_attention`")
                && err.contains("linear_attention")
                && err.contains("full_attention"),
            "serde's message names the bad value and the known ones: {err}"
        );
    }

    #[test]
    fn eos_token_id_may_be_one_id_or_a_list() {
        let one: TextConfig = serde_json::from_str(r#"{"eos_token_id": 610}"#).unwrap();
        let many: TextConfig = serde_json::from_str(r#"{"eos_token_id": [610, 611]}"#).unwrap();
        assert_eq!((one.eos_token_id.unwrap().ids(), many.eos_token_id.unwrap().ids()), (vec![610], vec![610, 611]));
    }

    #[test]
    fn vision_configs_the_tower_cannot_run_are_rejected() {
        let base = serde_json::json!({"hidden_size": 144, "num_heads": 2});
        let broken = [
            (serde_json::json!({"num_heads": 0}), "num_heads"),
            (serde_json::json!({"hidden_size": 145}), "multiple of num_heads"),
            (serde_json::json!({"hidden_size": 140}), "multiple of 4"),
            (serde_json::json!({"num_position_embeddings": 2300}), "not a square"),
            (serde_json::json!({"hidden_act": "gelu"}), "not supported"),
        ];
        let ok: VisionConfig = serde_json::from_value(base.clone()).unwrap();
        ok.validate().unwrap();
        for (patch, expected) in broken {
            let mut v = base.clone();
            v.as_object_mut().unwrap().extend(patch.as_object().unwrap().clone());
            let cfg: VisionConfig = serde_json::from_value(v).unwrap();
            let err = cfg.validate().expect_err(expected).to_string();
            assert!(err.contains(expected), "expected {expected:?} in {err}");
        }
    }

    #[test]
    fn every_fourth_layer_is_full_attention_when_layer_types_is_omitted() {
        let cfg: TextConfig = serde_json::from_str(r#"{"num_hidden_layers": 8}"#).unwrap();
        let full: Vec<usize> = cfg
            .layer_types()
            .iter()
            .enumerate()
            .filter(|(_, t)| **t == LayerType::FullAttention)
            .map(|(i, _)| i)
            .collect();
        assert_eq!(full, [3, 7]);
    }

    /// A `qwen3_5_moe` config takes `Qwen3_5MoeConfig`'s defaults (Qwen3.5-35B-A3B's text
    /// model) for what it omits, the MoE fields included; a `qwen3_5` one, or one without
    /// `model_type`, is dense and has none.
    #[test]
    fn an_moe_config_takes_the_moe_defaults_and_a_dense_one_has_no_moe_fields() {
        let cfg: Config = serde_json::from_str(r#"{"model_type": "qwen3_5_moe"}"#).unwrap();
        let t = &cfg.text_config;
        assert_eq!((cfg.family, t.family()), (ModelFamily::Moe, ModelFamily::Moe));
        assert_eq!((t.hidden_size, t.num_hidden_layers, t.num_key_value_heads), (2048, 40, 2));
        assert_eq!((t.vocab_size, t.num_attention_heads, t.head_dim, t.rms_norm_eps), (248320, 16, 256, 1e-6));
        assert_eq!((t.linear_num_key_heads, t.linear_num_value_heads, t.linear_key_head_dim), (16, 32, 128));
        let full = t.layer_types().iter().filter(|l| **l == LayerType::FullAttention).count();
        assert_eq!((t.layer_types().len(), full), (40, 10));
        let moe = t.moe.as_ref().expect("MoE fields");
        assert_eq!(
            (moe.num_experts, moe.num_experts_per_tok, moe.moe_intermediate_size, moe.shared_expert_intermediate_size),
            (256, 8, 512, 512)
        );
        assert_eq!((moe.router_aux_loss_coef, moe.output_router_logits), (0.001, false));
        assert_eq!((cfg.image_token_id, cfg.vision_config.out_hidden_size), (248056, 3584));

        let json = r#"{"model_type": "qwen3_5_moe", "text_config": {"model_type": "qwen3_5_moe_text",
                       "hidden_size": 64, "num_experts": 8, "num_experts_per_tok": 2, "norm_topk_prob": true}}"#;
        let cfg: Config = serde_json::from_str(json).unwrap();
        let moe = cfg.text_config.moe.as_ref().unwrap();
        assert_eq!((cfg.text_config.hidden_size, moe.num_experts, moe.num_experts_per_tok), (64, 8, 2));
        assert_eq!((cfg.text_config.num_hidden_layers, moe.moe_intermediate_size), (40, 512), "defaults kept");

        for json in [r#"{"model_type": "qwen3_5"}"#, r#"{"text_config": {"num_experts": 8}}"#] {
            let cfg: Config = serde_json::from_str(json).unwrap();
            assert_eq!((cfg.family, cfg.text_config.moe.is_none()), (ModelFamily::Dense, true), "{json}");
            assert_eq!((cfg.text_config.hidden_size, cfg.text_config.num_key_value_heads), (4096, 4), "{json}");
        }
    }

    #[test]
    fn an_unknown_model_type_is_refused_naming_the_known_ones() {
        let err = serde_json::from_str::<Config>(r#"{"model_type": "qwen3_next"}"#).unwrap_err().to_string();
        assert!(
            err.contains("unknown variant `qwen3_next`") && err.contains("`qwen3_5`") && err.contains("`qwen3_5_moe`"),
            "serde's message names the bad model_type and the known ones: {err}"
        );
    }

    #[test]
    fn moe_configs_the_block_cannot_run_are_rejected() {
        let broken = [
            (r#"{"num_experts": 4, "num_experts_per_tok": 5}"#, "between 1 and num_experts 4"),
            (r#"{"num_experts_per_tok": 0}"#, "between 1 and num_experts 256"),
            (r#"{"moe_intermediate_size": 0}"#, "must be positive"),
        ];
        for (json, expected) in broken {
            let moe: MoeConfig = serde_json::from_str(json).unwrap();
            let err = moe.validate().expect_err(expected).to_string();
            assert!(err.contains(expected), "expected {expected:?} in {err}");
        }
        MoeConfig::default().validate().unwrap();
    }

    /// script/qwen3.6-35b-a3b.config.json, Qwen3.6-35B-A3B's configuration as published.
    #[test]
    fn the_qwen36_35b_a3b_config_parses() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../script/qwen3.6-35b-a3b.config.json");
        let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        let cfg: Config = serde_json::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        cfg.vision_config.validate().unwrap();
        let t = &cfg.text_config;
        let moe = t.moe.as_ref().expect("an MoE config");
        moe.validate().unwrap();
        let full = t.layer_types().iter().filter(|l| **l == LayerType::FullAttention).count();
        assert_eq!((cfg.family, t.hidden_size, t.layer_types().len(), full), (ModelFamily::Moe, 2048, 40, 10));
        assert_eq!((t.num_attention_heads, t.num_key_value_heads, t.head_dim, t.rotary_dim()), (16, 2, 256, 64));
        assert_eq!((moe.num_experts, moe.num_experts_per_tok, moe.moe_intermediate_size), (256, 8, 512));
        assert_eq!((t.linear_conv_dim(), cfg.vision_config.out_hidden_size), (8192, 2048));
        assert_eq!(t.eos_token_id.as_ref().map(EosTokenId::ids), Some(vec![248044]));
    }

    #[test]
    fn the_published_qwen36_27b_config_parses() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../script/qwen3.6-27b.config.json");
        let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        let cfg: Config = serde_json::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        cfg.vision_config.validate().unwrap();
        let t = &cfg.text_config;
        let full = t.layer_types().iter().filter(|l| **l == LayerType::FullAttention).count();
        assert_eq!((cfg.vision_config.head_dim(), t.layer_types().len(), full), (72, 64, 16));
        assert_eq!((t.rope_parameters.rope_theta, t.rotary_dim(), t.linear_conv_dim()), (1e7, 64, 10240));
        assert_eq!(t.eos_token_id.as_ref().map(EosTokenId::ids), Some(vec![248044]));
    }
}
