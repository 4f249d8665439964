//! Preprocessing: image files and a prompt → the model's inputs (`input_ids`,
//! `pixel_values`, image grids). Kept apart from the model: tensors are the only interface.

pub mod image_file;
pub mod image_processor;
pub mod prompt;
pub mod resize;
pub mod video;

use std::path::Path;

use anyhow::{Context, Result};
use candle_core::{Device, Tensor};
use serde::Deserialize;

use crate::vision::positions::Grid;
use prompt::PromptProcessor;
pub use prompt::{Content, Conversation, GenerationPrompt, Item, Message, Role};

/// The image processor's settings, mirroring `Qwen2VLImageProcessor`'s attributes and their
/// defaults. Read from `preprocessor_config.json` (published repositories) or from the
/// `image_processor` object of `processor_config.json` (what transformers 5 saves).
#[derive(Debug, Clone, Deserialize)]
pub struct ImageProcessorConfig {
    #[serde(default)]
    pub size: Option<Size>,
    /// Older spelling of `size.shortest_edge`.
    #[serde(default)]
    pub min_pixels: Option<usize>,
    /// Older spelling of `size.longest_edge`.
    #[serde(default)]
    pub max_pixels: Option<usize>,
    #[serde(default = "defaults::patch_size")]
    pub patch_size: usize,
    #[serde(default = "defaults::temporal_patch_size")]
    pub temporal_patch_size: usize,
    #[serde(default = "defaults::merge_size")]
    pub merge_size: usize,
    #[serde(default = "defaults::image_mean")]
    pub image_mean: Vec<f64>,
    #[serde(default = "defaults::image_std")]
    pub image_std: Vec<f64>,
    #[serde(default = "defaults::rescale_factor")]
    pub rescale_factor: f64,
}

/// `size`: min and max pixel counts.
#[derive(Debug, Clone, Deserialize)]
pub struct Size {
    pub shortest_edge: Option<usize>,
    pub longest_edge: Option<usize>,
}

impl ImageProcessorConfig {
    pub fn from_dir(dir: &Path) -> Result<Self> {
        let pre = dir.join("preprocessor_config.json");
        let proc = dir.join("processor_config.json");
        let (path, value) = if pre.is_file() {
            (pre.clone(), read_json(&pre)?)
        } else if proc.is_file() {
            let json = read_json(&proc)?;
            let inner = json.get("image_processor").cloned().unwrap_or(json);
            (proc.clone(), inner)
        } else {
            anyhow::bail!(
                "{}: the checkpoint has neither preprocessor_config.json nor processor_config.json",
                dir.display()
            );
        };
        let cfg: Self = serde_json::from_value(value).with_context(|| format!("parsing {}", path.display()))?;
        anyhow::ensure!(
            cfg.image_mean.len() == 3 && cfg.image_std.len() == 3,
            "{}: image_mean and image_std need three values (RGB)",
            path.display()
        );
        Ok(cfg)
    }

    /// `size.shortest_edge` (a pixel count, despite the name), else `min_pixels`, else the default.
    pub fn min_pixels(&self) -> usize {
        self.size.as_ref().and_then(|s| s.shortest_edge).or(self.min_pixels).unwrap_or(56 * 56)
    }

    /// `size.longest_edge`, else `max_pixels`, else the default.
    pub fn max_pixels(&self) -> usize {
        self.size.as_ref().and_then(|s| s.longest_edge).or(self.max_pixels).unwrap_or(28 * 28 * 1280)
    }
}

fn read_json(path: &Path) -> Result<serde_json::Value> {
    let text = std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    serde_json::from_str(&text).with_context(|| format!("parsing {}", path.display()))
}

mod defaults {
    pub fn patch_size() -> usize {
        14
    }
    pub fn temporal_patch_size() -> usize {
        2
    }
    pub fn merge_size() -> usize {
        2
    }
    pub fn image_mean() -> Vec<f64> {
        vec![0.48145466, 0.4578275, 0.40821073] // OPENAI_CLIP_MEAN
    }
    pub fn image_std() -> Vec<f64> {
        vec![0.26862954, 0.26130258, 0.27577711] // OPENAI_CLIP_STD
    }
    pub fn rescale_factor() -> f64 {
        1.0 / 255.0
    }
}

/// What preprocessing hands the model.
pub struct Processed {
    pub input_ids: Vec<u32>,
    /// [patches, C·T·P·P] over all images, or `None` for a text-only prompt.
    pub pixel_values: Option<Tensor>,
    pub grids: Vec<Grid>,
}

/// Maps the computed (height, width) resize target of an image.
pub type TargetSizeHook<'a> = &'a dyn Fn(&image_processor::RgbImage, (usize, usize)) -> (usize, usize);

/// Injection points into preprocessing, each applied to what the processor computed.
#[derive(Default)]
pub struct Hooks<'a> {
    /// The (height, width) an image is resized to.
    pub target_size: Option<TargetSizeHook<'a>>,
    /// The number of `<|image_pad|>` tokens per image.
    pub image_token_counts: Option<&'a dyn Fn(Vec<usize>) -> Vec<usize>>,
}

/// `Qwen3VLProcessor`: image files and prompt text → model inputs.
pub struct Processor {
    pub image: ImageProcessorConfig,
    pub prompt: PromptProcessor,
    /// How image files are opened and converted to RGB, as the reference's loader does
    /// (`loader` of a case; the image processor's own conversion by default).
    pub loader: image_file::Loader,
}

impl Processor {
    pub fn from_dir(dir: &Path) -> Result<Self> {
        let image = ImageProcessorConfig::from_dir(dir)?;
        let prompt = PromptProcessor::from_dir(dir, image.merge_size)?;
        Ok(Processor { image, prompt, loader: image_file::Loader::default() })
    }

    /// One user message: the images (in order), then the prompt text.
    pub fn process(&self, images: &[&Path], prompt: &str) -> Result<Processed> {
        self.process_with(images, prompt, &Hooks::default())
    }

    /// [`Processor::process`] with the computed resize targets and image token counts passed
    /// through `hooks` (tests perturb them there; production code passes none).
    pub fn process_with(&self, images: &[&Path], prompt: &str, hooks: &Hooks) -> Result<Processed> {
        self.process_conversation_with(&Conversation::single(images, prompt), GenerationPrompt::Open, hooks)
    }

    /// A whole conversation, as `processor.apply_chat_template(messages, add_generation_prompt=…,
    /// tokenize=True, **template_args)` processes it: the images in the order the messages hold
    /// them, the chat template over every message.
    pub fn process_conversation(&self, conversation: &Conversation, prompt: GenerationPrompt) -> Result<Processed> {
        self.process_conversation_with(conversation, prompt, &Hooks::default())
    }

    /// [`Processor::process_conversation`] with `hooks`.
    pub fn process_conversation_with(
        &self,
        conversation: &Conversation,
        prompt: GenerationPrompt,
        hooks: &Hooks,
    ) -> Result<Processed> {
        let images = conversation.images();
        let mut values = Vec::new();
        let mut grids = Vec::new();
        for path in &images {
            let rgb = image_file::load_rgb_with(path, self.loader)?;
            let mut size =
                image_processor::target_size(&rgb, &self.image).with_context(|| format!("{}", path.display()))?;
            if let Some(hook) = hooks.target_size {
                size = hook(&rgb, size);
            }
            let patches = image_processor::pixel_values_at(&rgb, size, &self.image)
                .with_context(|| format!("{}", path.display()))?;
            values.extend(patches.values);
            grids.push(patches.grid);
        }
        let rendered = self.prompt.render_conversation(conversation, prompt)?;
        let mut counts = self.prompt.image_token_counts(&grids);
        if let Some(hook) = hooks.image_token_counts {
            counts = hook(counts);
        }
        let input_ids = self.prompt.input_ids(&rendered, &counts)?;
        let pixel_values = if grids.is_empty() {
            None
        } else {
            let rows: usize = grids.iter().map(Grid::patches).sum();
            let cols = values.len() / rows;
            Some(Tensor::from_vec(values, (rows, cols), &Device::Cpu)?)
        };
        Ok(Processed { input_ids, pixel_values, grids })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What `Qwen2VLImageProcessor` uses when preprocessor_config.json omits a field
    /// (`image_processing_qwen2_vl.py` class attributes; OPENAI_CLIP_MEAN / _STD).
    #[test]
    fn omitted_fields_take_transformers_defaults() {
        let cfg: ImageProcessorConfig = serde_json::from_str("{}").unwrap();
        assert_eq!((cfg.patch_size, cfg.temporal_patch_size, cfg.merge_size), (14, 2, 2));
        assert_eq!((cfg.min_pixels(), cfg.max_pixels()), (3136, 1003520));
        assert_eq!(cfg.image_mean, [0.48145466, 0.4578275, 0.40821073]);
        assert_eq!(cfg.image_std, [0.26862954, 0.26130258, 0.27577711]);
        assert_eq!(cfg.rescale_factor, 1.0 / 255.0);
    }

    #[test]
    fn size_takes_precedence_over_the_older_min_and_max_pixels() {
        let cfg: ImageProcessorConfig = serde_json::from_str(
            r#"{"size": {"shortest_edge": 100, "longest_edge": 200}, "min_pixels": 1, "max_pixels": 2}"#,
        )
        .unwrap();
        assert_eq!((cfg.min_pixels(), cfg.max_pixels()), (100, 200));
        let older: ImageProcessorConfig = serde_json::from_str(r#"{"min_pixels": 7, "max_pixels": 9}"#).unwrap();
        assert_eq!((older.min_pixels(), older.max_pixels()), (7, 9));
    }
}
