//! Decoded frames → `pixel_values_videos`, `video_grid_thw` and the prompt text of each video,
//! mirroring transformers 5.23's `Qwen3VLVideoProcessor`
//! (`models/qwen3_vl/video_processing_qwen3_vl.py`) and `Qwen3VLProcessor.replace_video_token`
//! / `_calculate_timestamps` (`models/qwen3_vl/processing_qwen3_vl.py`):
//!
//! 1. `sample_frames`: `n = int(total / video_fps · fps)` (fps 2 by default), clamped to
//!    `min(max(n, min_frames), max_frames, total)`, then `np.linspace(0, total − 1, n).round()`
//!    (half to even). A video shorter than `min_frames` keeps all its frames; one frame is
//!    refused later, by `smart_resize`.
//! 2. `smart_resize` over the whole clip: the budget `[shortest_edge, longest_edge]` bounds
//!    t·h·w, with `t` rounded to the temporal patch (`round`, so 5 frames count as 4).
//! 3. The uint8 bicubic antialiased resize of every frame (torchvision's, as for images:
//!    [`super::super::resize`]), the fused rescale + normalise in f32, then the frame count
//!    padded to a multiple of `temporal_patch_size` by repeating the last frame.
//! 4. Patches in (t, merge-block row, merge-block col, row in block, col in block) order, each
//!    flattened as (channel, frame in the temporal patch, row, col).
//! 5. The text that replaces the video's `<|video_pad|>`: per temporal patch
//!    `<{t:.1f} seconds>` + `<|vision_start|>` + `<|video_pad|>` × (h·w / merge²) +
//!    `<|vision_end|>`, where `t` is the mean of the first and last frame time of the patch
//!    (`index / video_fps`, the sampled indices padded like the frames).

use anyhow::{bail, ensure, Context, Result};
use serde::Deserialize;
use std::path::Path;

use super::Video;
use crate::preprocess::resize::resize_bicubic_antialias_u8;
use crate::preprocess::Size;
use crate::vision::positions::Grid;

/// The placeholder the chat template writes for each video.
pub const VIDEO_PAD: &str = "<|video_pad|>";
/// The markers the processor writes around each temporal patch's tokens.
pub const VISION_START: &str = "<|vision_start|>";
pub const VISION_END: &str = "<|vision_end|>";

/// The one video processor class implemented.
pub const QWEN3_VL_VIDEO_PROCESSOR: &str = "Qwen3VLVideoProcessor";

/// `Qwen3VLVideoProcessor`'s settings: its class attributes are the defaults (transformers
/// 5.23), a checkpoint's video processor configuration overrides them.
#[derive(Debug, Clone, Deserialize)]
pub struct VideoProcessorConfig {
    /// Pixel bounds of the whole clip (t·h·w): `shortest_edge` 128·32·32, `longest_edge`
    /// 768·32·32 by default.
    #[serde(default)]
    pub size: Option<Size>,
    #[serde(default = "defaults::patch_size")]
    pub patch_size: usize,
    #[serde(default = "defaults::temporal_patch_size")]
    pub temporal_patch_size: usize,
    #[serde(default = "defaults::merge_size")]
    pub merge_size: usize,
    #[serde(default = "defaults::half")]
    pub image_mean: Vec<f64>,
    #[serde(default = "defaults::half")]
    pub image_std: Vec<f64>,
    #[serde(default = "defaults::rescale_factor")]
    pub rescale_factor: f64,
    /// Frames sampled per second of video (2); `null` samples `num_frames` instead.
    #[serde(default = "defaults::fps")]
    pub fps: Option<f64>,
    /// A fixed frame count; the reference refuses it together with `fps`.
    #[serde(default)]
    pub num_frames: Option<usize>,
    #[serde(default = "defaults::min_frames")]
    pub min_frames: usize,
    #[serde(default = "defaults::max_frames")]
    pub max_frames: usize,
    #[serde(default = "defaults::yes")]
    pub do_sample_frames: bool,
    /// qwen-vl-utils' per-frame pixel cap. Unset (the 5.23 default, with a warning) means off.
    #[serde(default)]
    pub cap_pixels_per_frame: Option<bool>,
    #[serde(default = "defaults::max_video_tokens")]
    pub max_video_tokens: usize,
    #[serde(default = "defaults::yes")]
    pub do_resize: bool,
    #[serde(default = "defaults::yes")]
    pub do_rescale: bool,
    #[serde(default = "defaults::yes")]
    pub do_normalize: bool,
}

mod defaults {
    pub fn patch_size() -> usize {
        16
    }
    pub fn temporal_patch_size() -> usize {
        2
    }
    pub fn merge_size() -> usize {
        2
    }
    pub fn half() -> Vec<f64> {
        vec![0.5, 0.5, 0.5] // IMAGENET_STANDARD_MEAN / _STD
    }
    pub fn rescale_factor() -> f64 {
        1.0 / 255.0
    }
    pub fn fps() -> Option<f64> {
        Some(2.0)
    }
    pub fn min_frames() -> usize {
        4
    }
    pub fn max_frames() -> usize {
        768
    }
    pub fn yes() -> bool {
        true
    }
    pub fn max_video_tokens() -> usize {
        768
    }
}

impl Default for VideoProcessorConfig {
    fn default() -> Self {
        serde_json::from_str("{}").expect("every field has a default")
    }
}

impl VideoProcessorConfig {
    /// Reads a checkpoint's video processor configuration the way transformers 5.23 finds it
    /// (`BaseVideoProcessor.get_video_processor_dict`, `AutoVideoProcessor`): the
    /// `video_processor` object of `processor_config.json`, else `video_preprocessor_config.json`,
    /// else `preprocessor_config.json`. The class is `video_processor_type`, else the
    /// `image_processor_type` with "Image" replaced by "Video"; any class other than
    /// `Qwen3VLVideoProcessor` is refused, naming it (a checkpoint with only an image processor
    /// configuration `Qwen2VLImageProcessor` gets `Qwen2VLVideoProcessor` from transformers,
    /// which samples no frames and computes no timestamps).
    pub fn from_dir(dir: &Path) -> Result<Self> {
        let read = |name: &str| -> Result<Option<(std::path::PathBuf, serde_json::Value)>> {
            let path = dir.join(name);
            if !path.is_file() {
                return Ok(None);
            }
            let text = std::fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?;
            let json = serde_json::from_str(&text).with_context(|| format!("parsing {}", path.display()))?;
            Ok(Some((path, json)))
        };
        let nested = read("processor_config.json")?
            .and_then(|(path, json)| json.get("video_processor").cloned().map(|inner| (path, inner)));
        let found = match nested {
            Some(found) => Some(found),
            None => match read("video_preprocessor_config.json")? {
                Some(found) => Some(found),
                None => read("preprocessor_config.json")?,
            },
        };
        let Some((path, json)) = found else {
            bail!(
                "{}: the checkpoint has no video processor configuration (processor_config.json with a \
                 \"video_processor\", video_preprocessor_config.json or preprocessor_config.json)",
                dir.display()
            );
        };
        Self::from_json(&json).with_context(|| format!("{}", path.display()))
    }

    /// Parses one video processor configuration object (see [`Self::from_dir`] for the class).
    pub fn from_json(json: &serde_json::Value) -> Result<Self> {
        let class = match json.get("video_processor_type").and_then(|v| v.as_str()) {
            Some(class) => Some(class.to_owned()),
            None => json
                .get("image_processor_type")
                .and_then(|v| v.as_str())
                .map(|image| image.replace("ImageProcessor", "VideoProcessor")),
        };
        if let Some(class) = class {
            ensure!(
                class == QWEN3_VL_VIDEO_PROCESSOR,
                "transformers would build {class} from this configuration; only {QWEN3_VL_VIDEO_PROCESSOR} is \
                 implemented (give the checkpoint a video_preprocessor_config.json with \"video_processor_type\": \
                 \"{QWEN3_VL_VIDEO_PROCESSOR}\", as the published Qwen3-VL repositories do)"
            );
        }
        let cfg: Self = serde_json::from_value(json.clone())?;
        cfg.validate()?;
        Ok(cfg)
    }

    fn validate(&self) -> Result<()> {
        ensure!(
            self.image_mean.len() == 3 && self.image_std.len() == 3,
            "image_mean and image_std need three values (RGB)"
        );
        ensure!(
            self.do_resize && self.do_rescale && self.do_normalize,
            "do_resize, do_rescale and do_normalize must be true (the processor's patches assume them)"
        );
        ensure!(
            self.patch_size > 0 && self.temporal_patch_size > 0 && self.merge_size > 0,
            "patch_size, temporal_patch_size and merge_size must be positive"
        );
        ensure!(
            !(self.fps.is_some() && self.num_frames.is_some()),
            "`num_frames` and `fps` are mutually exclusive arguments, please use only one! (the reference's \
             words; set \"fps\": null to sample a fixed number of frames)"
        );
        if let Some(fps) = self.fps {
            ensure!(fps.is_finite() && fps > 0.0, "fps must be a positive number, got {fps}");
        }
        let (min, max) = self.pixel_bounds()?;
        ensure!(min <= max, "size.shortest_edge {min} exceeds size.longest_edge {max}");
        Ok(())
    }

    /// `size.shortest_edge` and `size.longest_edge`: pixel counts of the whole clip.
    pub fn pixel_bounds(&self) -> Result<(usize, usize)> {
        match &self.size {
            None => Ok((128 * 32 * 32, 32 * 32 * 768)),
            Some(Size { shortest_edge: Some(min), longest_edge: Some(max) }) => Ok((*min, *max)),
            Some(size) => bail!(
                "`size` dict must contain 'shortest_edge' and 'longest_edge' keys but got {size:?} (the reference's \
                 words)"
            ),
        }
    }

    /// `sample_frames`: the indices of the frames the processor keeps out of `total_frames`
    /// frames decoded at `video_fps` (every frame when `do_sample_frames` is off).
    pub fn sample_indices(&self, total_frames: usize, video_fps: f64) -> Result<Vec<usize>> {
        ensure!(total_frames > 0, "the video has no frames");
        if !self.do_sample_frames {
            return Ok((0..total_frames).collect());
        }
        ensure!(
            !(self.fps.is_some() && self.num_frames.is_some()),
            "`num_frames` and `fps` are mutually exclusive arguments, please use only one!"
        );
        let count = match (self.num_frames, self.fps) {
            (Some(n), _) => n,
            (None, Some(fps)) => {
                ensure!(
                    video_fps.is_finite() && video_fps > 0.0,
                    "the video's fps is {video_fps}: no frames can be sampled per second"
                );
                // Python's int() truncates toward zero; the division comes first, as written.
                let wanted = (total_frames as f64 / video_fps * fps) as usize;
                wanted.max(self.min_frames).min(self.max_frames).min(total_frames)
            }
            (None, None) => total_frames.max(self.min_frames).min(self.max_frames),
        };
        Ok(linspace_rounded(total_frames, count))
    }
}

/// `np.linspace(0, total − 1, count).round().astype(int)`: numpy's arithmetic (`i · step`,
/// the last value set to the stop exactly) and round half to even.
pub fn linspace_rounded(total: usize, count: usize) -> Vec<usize> {
    let stop = total as f64 - 1.0;
    let div = count.saturating_sub(1);
    let step = stop / div as f64;
    (0..count)
        .map(|i| {
            let value = if div == 0 {
                0.0
            } else if i == div {
                stop
            } else if step == 0.0 {
                i as f64 / div as f64 * stop
            } else {
                i as f64 * step
            };
            value.round_ties_even().max(0.0) as usize
        })
        .collect()
}

/// The video `smart_resize` of `video_processing_qwen3_vl.py`: (height, width) with sides
/// multiples of `factor` such that t·h·w lies in [min_pixels, max_pixels], t being
/// `num_frames` rounded (half to even) to a multiple of `temporal_factor`. Sides shorter than
/// `factor` are first scaled up (truncated to integers). Python's arithmetic on f64.
pub fn smart_resize(
    num_frames: usize,
    height: usize,
    width: usize,
    temporal_factor: usize,
    factor: usize,
    min_pixels: usize,
    max_pixels: usize,
) -> Result<(usize, usize)> {
    ensure!(
        num_frames >= temporal_factor,
        "the video gives {num_frames} frame(s), fewer than temporal_patch_size {temporal_factor} (the reference \
         raises \"t:{num_frames} must be larger than temporal_factor:{temporal_factor}\")"
    );
    ensure!(height > 0 && width > 0, "the frames are {width}×{height}: they have no pixels");
    let (mut height, mut width) = (height, width);
    let f = factor as f64;
    if height < factor || width < factor {
        let scale = (f / height as f64).max(f / width as f64);
        height = (height as f64 * scale) as usize;
        width = (width as f64 * scale) as usize;
    }
    let (h, w) = (height as f64, width as f64);
    let ratio = h.max(w) / h.min(w);
    ensure!(ratio <= 200.0, "absolute aspect ratio must be smaller than 200, got {ratio}");
    let mut h_bar = (h / f).round_ties_even() * f;
    let mut w_bar = (w / f).round_ties_even() * f;
    let t_bar = (num_frames as f64 / temporal_factor as f64).round_ties_even() * temporal_factor as f64;
    let volume = (num_frames * height * width) as f64;
    if t_bar * h_bar * w_bar > max_pixels as f64 {
        let beta = (volume / max_pixels as f64).sqrt();
        h_bar = f.max((h / beta / f).floor() * f);
        w_bar = f.max((w / beta / f).floor() * f);
    } else if t_bar * h_bar * w_bar < min_pixels as f64 {
        let beta = (min_pixels as f64 / volume).sqrt();
        h_bar = (h * beta / f).ceil() * f;
        w_bar = (w * beta / f).ceil() * f;
    }
    Ok((h_bar as usize, w_bar as usize))
}

/// The processor's output for one video.
#[derive(Debug, Clone)]
pub struct VideoPatches {
    /// `pixel_values_videos` rows of this video: [grid.t·grid.h·grid.w, C·T·P·P] row-major.
    pub values: Vec<f32>,
    /// `video_grid_thw` row of this video.
    pub grid: Grid,
    /// The sampled frame indices (`metadata.frames_indices`), before padding.
    pub frame_indices: Vec<usize>,
    /// The video's frame rate (`metadata.fps`), which the timestamps divide by.
    pub fps: f64,
    /// Columns per row: C·T·P·P.
    pub row_len: usize,
}

impl VideoPatches {
    /// One timestamp per temporal patch ([`timestamps`]).
    pub fn timestamps(&self, temporal_patch_size: usize) -> Vec<f64> {
        timestamps(&self.frame_indices, self.fps, temporal_patch_size)
    }

    /// The text that replaces this video's `<|video_pad|>` ([`video_placeholder`]).
    pub fn placeholder(&self, cfg: &VideoProcessorConfig) -> String {
        self.placeholder_with(cfg, &timestamp_text)
    }

    /// [`VideoPatches::placeholder`] with each timestamp written by `stamp` (the reference's is
    /// [`timestamp_text`]; tests hand in another precision).
    pub fn placeholder_with(&self, cfg: &VideoProcessorConfig, stamp: &dyn Fn(f64) -> String) -> String {
        video_placeholder_with(&self.frame_indices, self.fps, self.grid, cfg.merge_size, cfg.temporal_patch_size, stamp)
    }
}

/// The (height, width) the sampled frames are resized to: the video `smart_resize` with
/// factor patch × merge, over the clip's budget (capped per frame when
/// `cap_pixels_per_frame` is on).
pub fn target_size(
    num_frames: usize,
    height: usize,
    width: usize,
    cfg: &VideoProcessorConfig,
) -> Result<(usize, usize)> {
    let factor = cfg.patch_size * cfg.merge_size;
    let (min_pixels, mut max_pixels) = cfg.pixel_bounds()?;
    if cfg.cap_pixels_per_frame == Some(true) && num_frames > 0 {
        let frame_cap = cfg.max_video_tokens * factor * factor;
        let floor = (min_pixels as f64 * 1.05) as usize;
        max_pixels = frame_cap.min(max_pixels / num_frames).max(floor) * num_frames;
    }
    smart_resize(num_frames, height, width, cfg.temporal_patch_size, factor, min_pixels, max_pixels)
}

/// `Qwen3VLVideoProcessor` on one decoded video: samples its frames (they must be among the
/// frames `video` holds), resizes, normalises and patchifies them.
pub fn pixel_values_videos(video: &Video, cfg: &VideoProcessorConfig) -> Result<VideoPatches> {
    pixel_values_videos_with(video, cfg, &|last: &[f32]| last.to_vec())
}

/// The frames of one video as [`pixel_values_videos`] samples them: RGB (HWC) frames in the
/// order of the sampled indices (an index sampled twice gives its frame twice), what the
/// reference's `video[indices]` holds before the resize.
pub fn sampled_frames<'v>(video: &'v Video, cfg: &VideoProcessorConfig) -> Result<Vec<&'v [u8]>> {
    sampled(video, cfg).map(|(_, frames)| frames)
}

fn sampled<'v>(video: &'v Video, cfg: &VideoProcessorConfig) -> Result<(Vec<usize>, Vec<&'v [u8]>)> {
    let indices =
        if cfg.do_sample_frames { cfg.sample_indices(video.total_frames, video.fps)? } else { video.indices.clone() };
    let frames = indices
        .iter()
        .map(|&i| {
            video.frame(i).with_context(|| {
                format!(
                    "the processor samples frame {i} of {}, which the decoded video does not hold (it holds {} \
                     frames: {:?}…)",
                    video.total_frames,
                    video.indices.len(),
                    &video.indices[..video.indices.len().min(8)]
                )
            })
        })
        .collect::<Result<Vec<_>>>()?;
    Ok((indices, frames))
}

/// [`pixel_values_videos`] with the frame that pads the clip to a whole temporal patch
/// computed by `pad` from the last frame (normalised, CHW): the reference repeats the last frame
/// (`pad` returns it unchanged); tests hand in another frame to see the fault where it enters.
pub fn pixel_values_videos_with(
    video: &Video,
    cfg: &VideoProcessorConfig,
    pad: &dyn Fn(&[f32]) -> Vec<f32>,
) -> Result<VideoPatches> {
    cfg.validate()?;
    let (indices, frames) = sampled(video, cfg)?;
    let (height, width) = target_size(frames.len(), video.height, video.width, cfg)?;
    let (p, m, t) = (cfg.patch_size, cfg.merge_size, cfg.temporal_patch_size);
    ensure!(
        height % (p * m) == 0 && width % (p * m) == 0,
        "the frames would be resized to {width}×{height}, which does not tile into {}-pixel blocks",
        p * m
    );
    let mut planes: Vec<Vec<f32>> = frames
        .iter()
        .map(|rgb| normalise(&resize_bicubic_antialias_u8(rgb, video.width, video.height, width, height), cfg))
        .collect();
    while !planes.len().is_multiple_of(t) {
        let last = pad(planes.last().expect("at least temporal_patch_size frames"));
        ensure!(
            last.len() == 3 * height * width,
            "the padding frame has {} values, not 3×{height}×{width}",
            last.len()
        );
        planes.push(last);
    }
    let grid = Grid { t: planes.len() / t, h: height / p, w: width / p };
    let row_len = 3 * t * p * p;
    let mut values = Vec::with_capacity(grid.patches() * row_len);
    let plane = height * width;
    for group in planes.chunks_exact(t) {
        for block_row in 0..grid.h / m {
            for block_col in 0..grid.w / m {
                for in_row in 0..m {
                    for in_col in 0..m {
                        let (row, col) = (block_row * m + in_row, block_col * m + in_col);
                        for c in 0..3 {
                            for frame in group {
                                for y in 0..p {
                                    let start = c * plane + (row * p + y) * width + col * p;
                                    values.extend_from_slice(&frame[start..start + p]);
                                }
                            }
                        }
                    }
                }
            }
        }
    }
    Ok(VideoPatches { values, grid, frame_indices: indices, fps: video.fps, row_len })
}

/// `rescale_and_normalize` fused as the torchvision backend does it, in f32:
/// (x − mean/rescale) / (std/rescale). HWC u8 in, CHW f32 out.
fn normalise(hwc: &[u8], cfg: &VideoProcessorConfig) -> Vec<f32> {
    let pixels = hwc.len() / 3;
    let inv = (1.0 / cfg.rescale_factor) as f32;
    let mut chw = vec![0f32; hwc.len()];
    for c in 0..3 {
        let mean = cfg.image_mean[c] as f32 * inv;
        let std = cfg.image_std[c] as f32 * inv;
        for (p, out) in chw[c * pixels..(c + 1) * pixels].iter_mut().enumerate() {
            *out = (f32::from(hwc[p * 3 + c]) - mean) / std;
        }
    }
    chw
}

/// `Qwen3VLProcessor._calculate_timestamps(indices, video_fps, temporal_patch_size)`: the
/// indices padded with the last one to a multiple of the temporal patch, each turned into
/// `index / video_fps` seconds, then per temporal patch the mean of its first and last time.
pub fn timestamps(indices: &[usize], video_fps: f64, temporal_patch_size: usize) -> Vec<f64> {
    let t = temporal_patch_size.max(1);
    let mut padded: Vec<usize> = indices.to_vec();
    if let Some(&last) = indices.last() {
        while !padded.len().is_multiple_of(t) {
            padded.push(last);
        }
    }
    let seconds: Vec<f64> = padded.iter().map(|&i| i as f64 / video_fps).collect();
    seconds.chunks_exact(t).map(|group| (group[0] + group[t - 1]) / 2.0).collect()
}

/// Python's `f"<{seconds:.1f} seconds>"` (Rust's `{:.1}` rounds the exact binary value half to
/// even, as Python's formatting does: 0.25 gives "0.2").
pub fn timestamp_text(seconds: f64) -> String {
    format!("<{seconds:.1} seconds>")
}

/// The text `Qwen3VLProcessor.replace_video_token` puts in place of one `<|video_pad|>`: for
/// each of the grid's temporal patches, its timestamp, `<|vision_start|>`, `<|video_pad|>`
/// repeated grid.h·grid.w / merge² times, `<|vision_end|>`.
///
/// In transformers 5.23 only the `<|video_pad|>` itself is replaced
/// (`ProcessorMixin.get_text_with_replacements`), so the `<|vision_start|>` / `<|vision_end|>`
/// the chat template wrote around it stay: the prompt reads
/// `<|vision_start|><0.3 seconds><|vision_start|><|video_pad|>…<|vision_end|>…<|vision_end|>`.
/// transformers 4.57 replaced the template's whole `<|vision_start|><|video_pad|><|vision_end|>`
/// (no outer pair), and so does vLLM; vLLM issue #46817 (open) reports the difference and takes
/// transformers 5's text as the reference. No upstream issue calls 5's text a bug, so this
/// follows the pinned reference (docs/ARCHITECTURE.md, "Reference facts").
pub fn video_placeholder(
    indices: &[usize],
    video_fps: f64,
    grid: Grid,
    merge_size: usize,
    temporal_patch_size: usize,
) -> String {
    video_placeholder_with(indices, video_fps, grid, merge_size, temporal_patch_size, &timestamp_text)
}

/// [`video_placeholder`] with each timestamp written by `stamp`.
pub fn video_placeholder_with(
    indices: &[usize],
    video_fps: f64,
    grid: Grid,
    merge_size: usize,
    temporal_patch_size: usize,
    stamp: &dyn Fn(f64) -> String,
) -> String {
    let per_frame = grid.h * grid.w / (merge_size * merge_size);
    let times = timestamps(indices, video_fps, temporal_patch_size);
    let mut text = String::new();
    for t in 0..grid.t {
        // The reference indexes the timestamps by temporal patch; they have the same count.
        let seconds = times.get(t).copied().unwrap_or(f64::NAN);
        text.push_str(&stamp(seconds));
        text.push_str(VISION_START);
        text.push_str(&VIDEO_PAD.repeat(per_frame));
        text.push_str(VISION_END);
    }
    text
}

/// How many `<|video_pad|>` tokens each temporal patch of a video takes: h·w / merge².
pub fn tokens_per_temporal_patch(grid: Grid, merge_size: usize) -> usize {
    grid.h * grid.w / (merge_size * merge_size)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(json: &str) -> VideoProcessorConfig {
        VideoProcessorConfig::from_json(&serde_json::from_str(json).unwrap()).unwrap()
    }

    /// `Qwen3VLVideoProcessor`'s class attributes in transformers 5.23.
    #[test]
    fn omitted_fields_take_the_qwen3_vl_video_processor_defaults() {
        let c = VideoProcessorConfig::default();
        assert_eq!((c.patch_size, c.temporal_patch_size, c.merge_size), (16, 2, 2));
        assert_eq!(c.pixel_bounds().unwrap(), (131072, 786432));
        assert_eq!((c.fps, c.num_frames, c.min_frames, c.max_frames), (Some(2.0), None, 4, 768));
        assert_eq!((c.do_sample_frames, c.cap_pixels_per_frame, c.max_video_tokens), (true, None, 768));
        assert_eq!((c.image_mean.clone(), c.image_std.clone()), (vec![0.5; 3], vec![0.5; 3]));
    }

    #[test]
    fn a_configuration_for_another_video_processor_class_is_refused_by_name() {
        let image_only = serde_json::json!({"image_processor_type": "Qwen2VLImageProcessor", "patch_size": 16});
        let err = VideoProcessorConfig::from_json(&image_only).unwrap_err().to_string();
        assert!(err.contains("Qwen2VLVideoProcessor") && err.contains("video_preprocessor_config.json"), "{err}");
        let ok = serde_json::json!({"video_processor_type": "Qwen3VLVideoProcessor"});
        VideoProcessorConfig::from_json(&ok).unwrap();
    }

    #[test]
    fn fps_and_num_frames_together_are_refused_as_the_reference_refuses_them() {
        let both = serde_json::json!({"num_frames": 8});
        let err = VideoProcessorConfig::from_json(&both).unwrap_err().to_string();
        assert!(err.contains("mutually exclusive"), "{err}");
        let c = cfg(r#"{"num_frames": 8, "fps": null}"#);
        assert_eq!(c.sample_indices(100, 25.0).unwrap(), [0, 14, 28, 42, 57, 71, 85, 99]);
    }

    /// Indices from transformers 5.23 (`Qwen3VLVideoProcessor().sample_frames`) for
    /// (total frames, video fps, processor fps, min_frames).
    #[test]
    fn sampled_indices_equal_the_references() {
        let cases: &[(usize, f64, f64, usize, &[usize])] = &[
            (50, 24.0, 2.0, 4, &[0, 16, 33, 49]),
            (36, 10.0, 2.0, 4, &[0, 6, 12, 18, 23, 29, 35]),
            (45, 30000.0 / 1001.0, 2.0, 4, &[0, 15, 29, 44]),
            (36, 10.0, 0.5, 6, &[0, 7, 14, 21, 28, 35]),
            (45, 30000.0 / 1001.0, 0.5, 6, &[0, 9, 18, 26, 35, 44]),
            // fewer frames than min_frames: all of them; one frame: one index.
            (3, 24.0, 2.0, 4, &[0, 1, 2]),
            (1, 24.0, 2.0, 4, &[0]),
            // 2 s at 30 fps: 4 frames, linspace(0, 59, 4) = 0, 19.67, 39.33, 59.
            (60, 30.0, 2.0, 4, &[0, 20, 39, 59]),
            // 10 s at 25 fps: 20 frames; 249 / 19 = 13.105…, rounded half to even.
            (
                250,
                25.0,
                2.0,
                4,
                &[0, 13, 26, 39, 52, 66, 79, 92, 105, 118, 131, 144, 157, 170, 183, 197, 210, 223, 236, 249],
            ),
        ];
        for &(total, video_fps, fps, min_frames, expected) in cases {
            let c = VideoProcessorConfig { fps: Some(fps), min_frames, ..Default::default() };
            let got = c.sample_indices(total, video_fps).unwrap();
            assert_eq!(got, expected, "{total} frames at {video_fps} fps sampled at {fps} fps (min {min_frames})");
        }
    }

    #[test]
    fn linspace_rounds_half_to_even_and_may_repeat_indices() {
        // linspace(0, 3, 3) = 0, 1.5, 3 → 0, 2, 3; linspace(0, 1, 4) → 0, 0, 1, 1 (0.333, 0.667).
        assert_eq!(linspace_rounded(4, 3), [0, 2, 3]);
        assert_eq!(linspace_rounded(2, 4), [0, 0, 1, 1]);
        assert_eq!(linspace_rounded(6, 5), [0, 1, 2, 4, 5], "1.25 → 1, 2.5 → 2, 3.75 → 4");
        assert_eq!(linspace_rounded(1, 3), [0, 0, 0]);
        assert_eq!(linspace_rounded(9, 0), Vec::<usize>::new());
    }

    /// (frames, height, width, min, max) → (height, width) from transformers 5.23's
    /// `video_processing_qwen3_vl.smart_resize` (temporal factor 2, factor 32).
    #[test]
    fn smart_resize_equals_the_references() {
        type Case = (usize, usize, usize, usize, usize, (usize, usize));
        let cases: &[Case] = &[
            (4, 48, 64, 131072, 786432, (160, 224)),
            (4, 48, 64, 4096, 16384, (64, 64)),
            (7, 64, 96, 4096, 16384, (32, 32)),
            (6, 48, 64, 131072, 786432, (128, 192)),
            (4, 120, 160, 4096, 16384, (32, 64)),
            (2, 1080, 1920, 131072, 786432, (448, 832)),
            (768, 1080, 1920, 131072, 786432, (32, 32)),
            (3, 10, 500, 1, 1 << 40, (32, 1600)),
        ];
        for &(t, h, w, min, max, expected) in cases {
            assert_eq!(
                smart_resize(t, h, w, 2, 32, min, max).unwrap(),
                expected,
                "{t} frames of {w}×{h} in [{min}, {max}]"
            );
        }
    }

    #[test]
    fn one_frame_is_refused_as_the_reference_refuses_it() {
        let err = smart_resize(1, 48, 64, 2, 32, 1, 1 << 30).unwrap_err().to_string();
        assert!(err.contains("t:1 must be larger than temporal_factor:2"), "{err}");
    }

    #[test]
    fn timestamps_average_the_first_and_last_frame_of_each_temporal_patch() {
        // 7 indices at 10 fps: padded with 35, pairs (0, 6), (12, 18), (23, 29), (35, 35).
        let got = timestamps(&[0, 6, 12, 18, 23, 29, 35], 10.0, 2);
        assert_eq!(got, [0.3, 1.5, 2.5999999999999996, 3.5]);
        assert_eq!(timestamp_text(got[2]), "<2.6 seconds>");
        // 0.25 is an exact binary tie: Python's .1f gives 0.2.
        assert_eq!(timestamps(&[0, 1], 2.0, 2), [0.25]);
        assert_eq!(timestamp_text(0.25), "<0.2 seconds>");
    }

    #[test]
    fn the_placeholder_has_a_timestamp_and_framed_tokens_per_temporal_patch() {
        let text = video_placeholder(&[0, 16, 33, 49], 24.0, Grid { t: 2, h: 4, w: 6 }, 2, 2);
        let pads = VIDEO_PAD.repeat(6);
        let expected =
            format!("<0.3 seconds>{VISION_START}{pads}{VISION_END}<1.7 seconds>{VISION_START}{pads}{VISION_END}");
        assert_eq!(text, expected);
    }

    #[test]
    fn the_per_frame_cap_bounds_each_frame_when_asked() {
        // 600 frames of 1080p: uncapped the clip keeps the whole budget spread over all frames;
        // capped, each frame gets max(min(768·32², 786432 / 600), 1.05·131072) pixels.
        let mut c = VideoProcessorConfig::default();
        assert_eq!(target_size(600, 1080, 1920, &c).unwrap(), (32, 32));
        c.cap_pixels_per_frame = Some(true);
        assert_eq!(target_size(600, 1080, 1920, &c).unwrap(), (256, 480));
    }
}
