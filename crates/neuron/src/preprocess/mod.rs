//! Preprocessing: image and video files and a prompt → the model's inputs (`input_ids`,
//! `pixel_values`, `pixel_values_videos`, their grids). Kept apart from the model: tensors are
//! the only interface.

pub mod image_file;
pub mod image_processor;
pub mod prompt;
pub mod resize;
pub mod video;

use std::path::Path;

use anyhow::{ensure, Context, Result};
use candle_core::{Device, Tensor};
use serde::Deserialize;

use crate::config::VisionConfig;
use crate::vision::positions::Grid;
use crate::vision::VisionPositions;
use prompt::PromptProcessor;
pub use prompt::{Content, Conversation, GenerationPrompt, Item, Message, Role};
use video::processor::VideoProcessorConfig;
use video::VideoLimits;

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
#[derive(Default)]
pub struct Processed {
    pub input_ids: Vec<u32>,
    /// [patches, C·T·P·P] over all images, or `None` for a prompt without images.
    pub pixel_values: Option<Tensor>,
    pub grids: Vec<Grid>,
    /// [video patches, C·T·P·P] over all videos, or `None` for a prompt without videos.
    pub pixel_values_videos: Option<Tensor>,
    /// The (t, h, w) patch grid of each video (`video_grid_thw`).
    pub video_grids: Vec<Grid>,
    /// Each video's sampled frames as decoded (`input.video_frames`).
    pub video_frames: Vec<DecodedFrames>,
}

/// The frames of one video the processor sampled, as decoded: 8-bit RGB, frame after frame,
/// each row-major (HWC).
#[derive(Debug, Clone, PartialEq)]
pub struct DecodedFrames {
    pub frames: usize,
    pub height: usize,
    pub width: usize,
    pub rgb: Vec<u8>,
}

impl Processed {
    /// The vision tower's input: the images' patch rows, then the videos' (the order of the
    /// reference's two tower calls, whose rows `Qwen3_5Model.forward` splices image tokens
    /// first, then video tokens), with their positions; `None` without images and videos.
    pub fn vision_inputs(&self, cfg: &VisionConfig) -> Result<Option<(Tensor, VisionPositions)>> {
        let rows: Vec<&Tensor> = self.pixel_values.iter().chain(&self.pixel_values_videos).collect();
        if rows.is_empty() {
            return Ok(None);
        }
        let positions = VisionPositions::with_videos(cfg, &self.grids, &self.video_grids);
        Ok(Some((Tensor::cat(&rows, 0)?, positions)))
    }
}

/// Maps the computed (height, width) resize target of an image.
pub type TargetSizeHook<'a> = &'a dyn Fn(&image_processor::RgbImage, (usize, usize)) -> (usize, usize);

/// The frame that pads a video to a whole temporal patch, from its last frame (normalised, CHW).
pub type PaddingHook<'a> = &'a dyn Fn(&[f32]) -> Vec<f32>;

/// Injection points into preprocessing, each applied to what the processor computed.
#[derive(Default)]
pub struct Hooks<'a> {
    /// The (height, width) an image is resized to.
    pub target_size: Option<TargetSizeHook<'a>>,
    /// The number of `<|image_pad|>` tokens per image.
    pub image_token_counts: Option<&'a dyn Fn(Vec<usize>) -> Vec<usize>>,
    /// How a video's timestamp (seconds) is written into the prompt (`<0.3 seconds>`).
    pub timestamp_text: Option<&'a dyn Fn(f64) -> String>,
    /// The frame that pads a video to a whole temporal patch, from its last frame (normalised,
    /// CHW).
    pub video_padding: Option<PaddingHook<'a>>,
}

/// `Qwen3VLProcessor`: image and video files and prompt text → model inputs.
pub struct Processor {
    pub image: ImageProcessorConfig,
    /// The video processor's settings, or why the checkpoint has none that is implemented (an
    /// error only when a video is given).
    pub video: std::result::Result<VideoProcessorConfig, String>,
    /// Bounds on what decoding a video may read and hold.
    pub video_limits: VideoLimits,
    pub prompt: PromptProcessor,
    /// How image files are opened and converted to RGB, as the reference's loader does
    /// (`loader` of a case; the image processor's own conversion by default).
    pub loader: image_file::Loader,
}

impl Processor {
    pub fn from_dir(dir: &Path) -> Result<Self> {
        let image = ImageProcessorConfig::from_dir(dir)?;
        let prompt = PromptProcessor::from_dir(dir, image.merge_size)?;
        let video = VideoProcessorConfig::from_dir(dir).map_err(|e| format!("{e:#}"));
        Ok(Processor {
            image,
            video,
            video_limits: VideoLimits::default(),
            prompt,
            loader: image_file::Loader::default(),
        })
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
        let videos = self.videos(conversation, hooks)?;
        let rendered = self.prompt.render_conversation(conversation, prompt)?;
        let mut counts = self.prompt.image_token_counts(&grids);
        if let Some(hook) = hooks.image_token_counts {
            counts = hook(counts);
        }
        let input_ids = self.prompt.input_ids_with_videos(&rendered, &counts, &videos.texts)?;
        Ok(Processed {
            input_ids,
            pixel_values: rows_tensor(values, &grids)?,
            grids,
            pixel_values_videos: rows_tensor(videos.values, &videos.grids)?,
            video_grids: videos.grids,
            video_frames: videos.frames,
        })
    }

    /// Decodes, samples and patchifies every video of a conversation, in order: the
    /// `Qwen3VLVideoProcessor` half of `Qwen3VLProcessor.__call__`, and each video's text.
    fn videos(&self, conversation: &Conversation, hooks: &Hooks) -> Result<ProcessedVideos> {
        let mut out = ProcessedVideos::default();
        let sources = conversation.videos();
        if sources.is_empty() {
            return Ok(out);
        }
        let cfg = self.video.as_ref().map_err(|e| anyhow::anyhow!("the prompt holds a video, but {e}"))?;
        let keep_last = |last: &[f32]| last.to_vec();
        let pad = hooks.video_padding.unwrap_or(&keep_last);
        for (path, fps) in sources {
            ensure!(
                fps.is_none() || path.is_dir(),
                "{}: a video file has its own frame rate (its container's); give a frame rate only for a folder of \
                 frames",
                path.display()
            );
            let clip = video::load_video(path, fps, Some(cfg), &self.video_limits)?;
            let patches = video::processor::pixel_values_videos_with(&clip, cfg, pad)
                .with_context(|| format!("{}", path.display()))?;
            let frames = video::processor::sampled_frames(&clip, cfg)?;
            out.frames.push(DecodedFrames {
                frames: frames.len(),
                height: clip.height,
                width: clip.width,
                rgb: frames.concat(),
            });
            out.texts.push(match hooks.timestamp_text {
                Some(stamp) => patches.placeholder_with(cfg, stamp),
                None => patches.placeholder(cfg),
            });
            out.grids.push(patches.grid);
            out.values.extend(patches.values);
        }
        Ok(out)
    }
}

/// What the videos of a conversation give: their patch rows, grids, decoded frames and texts.
#[derive(Default)]
struct ProcessedVideos {
    values: Vec<f32>,
    grids: Vec<Grid>,
    frames: Vec<DecodedFrames>,
    texts: Vec<String>,
}

/// Patch rows of grids as one [patches, C·T·P·P] tensor; `None` for no grid.
fn rows_tensor(values: Vec<f32>, grids: &[Grid]) -> Result<Option<Tensor>> {
    if grids.is_empty() {
        return Ok(None);
    }
    let rows: usize = grids.iter().map(Grid::patches).sum();
    let cols = values.len() / rows;
    Ok(Some(Tensor::from_vec(values, (rows, cols), &Device::Cpu)?))
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
