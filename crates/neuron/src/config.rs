//! The HuggingFace `config.json` of a `qwen3_5` checkpoint, deserialised as is.
//!
//! Field names are the checkpoint's; serde defaults equal transformers' defaults
//! (`transformers/models/qwen3_5/configuration_qwen3_5.py`), so a config that omits a field
//! means here what it means there.

use std::path::Path;

use anyhow::{bail, Context, Result};
use serde::Deserialize;

/// Mirrors `Qwen3_5Config`.
#[derive(Debug, Clone, Deserialize)]
pub struct Config {
    pub text_config: TextConfig,
    pub vision_config: VisionConfig,
    #[serde(default = "defaults::image_token_id")]
    pub image_token_id: u32,
    #[serde(default = "defaults::video_token_id")]
    pub video_token_id: u32,
    #[serde(default = "defaults::vision_start_token_id")]
    pub vision_start_token_id: u32,
    #[serde(default = "defaults::vision_end_token_id")]
    pub vision_end_token_id: u32,
    #[serde(default)]
    pub tie_word_embeddings: bool,
    #[serde(default)]
    pub model_type: Option<String>,
}

impl Config {
    /// Reads `<dir>/config.json`.
    pub fn from_dir(dir: &Path) -> Result<Config> {
        let path = dir.join("config.json");
        let text = std::fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?;
        let config: Config = serde_json::from_str(&text).with_context(|| format!("parsing {}", path.display()))?;
        if let Some(t) = &config.model_type {
            if t != "qwen3_5" {
                bail!("{}: model_type is \"{t}\", this implementation is for \"qwen3_5\"", path.display());
            }
        }
        config.vision_config.validate().with_context(|| format!("{}: vision_config", path.display()))?;
        Ok(config)
    }
}

/// Mirrors `Qwen3_5VisionConfig`.
#[derive(Debug, Clone, Deserialize)]
pub struct VisionConfig {
    #[serde(default = "defaults::depth")]
    pub depth: usize,
    #[serde(default = "defaults::vision_hidden_size")]
    pub hidden_size: usize,
    #[serde(default = "defaults::vision_hidden_act")]
    pub hidden_act: String,
    #[serde(default = "defaults::vision_intermediate_size")]
    pub intermediate_size: usize,
    #[serde(default = "defaults::num_heads")]
    pub num_heads: usize,
    #[serde(default = "defaults::in_channels")]
    pub in_channels: usize,
    #[serde(default = "defaults::patch_size")]
    pub patch_size: usize,
    #[serde(default = "defaults::spatial_merge_size")]
    pub spatial_merge_size: usize,
    #[serde(default = "defaults::temporal_patch_size")]
    pub temporal_patch_size: usize,
    #[serde(default = "defaults::out_hidden_size")]
    pub out_hidden_size: usize,
    #[serde(default = "defaults::num_position_embeddings")]
    pub num_position_embeddings: usize,
    /// transformers fills `{"rope_type": "axial", "rope_theta": 10000.0}` when absent.
    #[serde(default)]
    pub rope_parameters: Option<VisionRopeParameters>,
}

#[derive(Debug, Clone, Deserialize)]
pub struct VisionRopeParameters {
    #[serde(default = "defaults::rope_theta")]
    pub rope_theta: f64,
}

impl VisionConfig {
    /// `head_dim` of `Qwen3_5VisionAttention`: hidden_size / num_heads (72 for Qwen3.6-27B).
    pub fn head_dim(&self) -> usize {
        self.hidden_size / self.num_heads
    }

    /// The rotary base of the vision attention (`compute_axial_rope_parameters`).
    pub fn rope_theta(&self) -> f64 {
        self.rope_parameters.as_ref().map_or(defaults::rope_theta(), |r| r.rope_theta)
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

/// Mirrors `Qwen3_5TextConfig`.
#[derive(Debug, Clone, Deserialize)]
pub struct TextConfig {
    #[serde(default = "defaults::vocab_size")]
    pub vocab_size: usize,
    #[serde(default = "defaults::hidden_size")]
    pub hidden_size: usize,
    #[serde(default = "defaults::intermediate_size")]
    pub intermediate_size: usize,
    #[serde(default = "defaults::num_hidden_layers")]
    pub num_hidden_layers: usize,
    #[serde(default = "defaults::num_attention_heads")]
    pub num_attention_heads: usize,
    #[serde(default = "defaults::num_key_value_heads")]
    pub num_key_value_heads: usize,
    #[serde(default = "defaults::head_dim")]
    pub head_dim: usize,
    #[serde(default = "defaults::rms_norm_eps")]
    pub rms_norm_eps: f64,
    #[serde(default = "defaults::linear_conv_kernel_dim")]
    pub linear_conv_kernel_dim: usize,
    #[serde(default = "defaults::linear_key_head_dim")]
    pub linear_key_head_dim: usize,
    #[serde(default = "defaults::linear_value_head_dim")]
    pub linear_value_head_dim: usize,
    #[serde(default = "defaults::linear_num_key_heads")]
    pub linear_num_key_heads: usize,
    #[serde(default = "defaults::linear_num_value_heads")]
    pub linear_num_value_heads: usize,
    #[serde(default)]
    pub layer_types: Option<Vec<String>>,
    #[serde(default = "defaults::full_attention_interval")]
    pub full_attention_interval: usize,
    #[serde(default)]
    pub rope_parameters: Option<TextRopeParameters>,
    #[serde(default)]
    pub attention_bias: bool,
    #[serde(default)]
    pub tie_word_embeddings: bool,
}

#[derive(Debug, Clone, Deserialize)]
pub struct TextRopeParameters {
    #[serde(default = "defaults::rope_theta")]
    pub rope_theta: f64,
    #[serde(default = "defaults::partial_rotary_factor")]
    pub partial_rotary_factor: f64,
    #[serde(default = "defaults::mrope_section")]
    pub mrope_section: Vec<usize>,
}

impl TextConfig {
    /// `layer_types`, or the pattern transformers derives from `full_attention_interval`:
    /// every interval-th layer is full attention, the others linear attention.
    pub fn layer_types(&self) -> Vec<String> {
        self.layer_types.clone().unwrap_or_else(|| {
            (0..self.num_hidden_layers)
                .map(|i| {
                    if (i + 1) % self.full_attention_interval == 0 { "full_attention" } else { "linear_attention" }
                        .to_string()
                })
                .collect()
        })
    }
}

mod defaults {
    pub fn image_token_id() -> u32 {
        248056
    }
    pub fn video_token_id() -> u32 {
        248057
    }
    pub fn vision_start_token_id() -> u32 {
        248053
    }
    pub fn vision_end_token_id() -> u32 {
        248054
    }
    pub fn depth() -> usize {
        27
    }
    pub fn vision_hidden_size() -> usize {
        1152
    }
    pub fn vision_hidden_act() -> String {
        "gelu_pytorch_tanh".into()
    }
    pub fn vision_intermediate_size() -> usize {
        4304
    }
    pub fn num_heads() -> usize {
        16
    }
    pub fn in_channels() -> usize {
        3
    }
    pub fn patch_size() -> usize {
        16
    }
    pub fn spatial_merge_size() -> usize {
        2
    }
    pub fn temporal_patch_size() -> usize {
        2
    }
    pub fn out_hidden_size() -> usize {
        3584
    }
    pub fn num_position_embeddings() -> usize {
        2304
    }
    pub fn rope_theta() -> f64 {
        10000.0
    }
    pub fn partial_rotary_factor() -> f64 {
        0.25
    }
    pub fn mrope_section() -> Vec<usize> {
        vec![11, 11, 10]
    }
    pub fn vocab_size() -> usize {
        248320
    }
    pub fn hidden_size() -> usize {
        4096
    }
    pub fn intermediate_size() -> usize {
        12288
    }
    pub fn num_hidden_layers() -> usize {
        32
    }
    pub fn num_attention_heads() -> usize {
        16
    }
    pub fn num_key_value_heads() -> usize {
        4
    }
    pub fn head_dim() -> usize {
        256
    }
    pub fn rms_norm_eps() -> f64 {
        1e-6
    }
    pub fn linear_conv_kernel_dim() -> usize {
        4
    }
    pub fn linear_key_head_dim() -> usize {
        128
    }
    pub fn linear_value_head_dim() -> usize {
        128
    }
    pub fn linear_num_key_heads() -> usize {
        16
    }
    pub fn linear_num_value_heads() -> usize {
        32
    }
    pub fn full_attention_interval() -> usize {
        4
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

    #[test]
    fn rope_parameters_without_fields_take_transformers_defaults() {
        let r: TextRopeParameters = serde_json::from_str("{}").unwrap();
        assert_eq!((r.rope_theta, r.partial_rotary_factor, r.mrope_section.clone()), (10000.0, 0.25, vec![11, 11, 10]));
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
        let full: Vec<usize> =
            cfg.layer_types().iter().enumerate().filter(|(_, t)| *t == "full_attention").map(|(i, _)| i).collect();
        assert_eq!(full, [3, 7]);
    }

    #[test]
    fn the_published_qwen36_27b_config_parses() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../../shared/reference/qwen3.6-27b.config.json");
        let Ok(text) = std::fs::read_to_string(&path) else {
            println!("SKIP: {} is not beside the repository", path.display());
            return;
        };
        let cfg: Config = serde_json::from_str(&text).unwrap();
        cfg.vision_config.validate().unwrap();
        assert_eq!((cfg.vision_config.head_dim(), cfg.text_config.layer_types().len()), (72, 64));
    }
}
