//! Videos: decoded frames and the Qwen3-VL video processor.
//!
//! - [`Video`]: 8-bit RGB frames of one size with the frame rate and frame count that
//!   transformers keeps as `VideoMetadata` (`fps`, `total_num_frames`, `frames_indices`).
//! - [`load_frame_folder`]: PNG files in name order at a frame rate the caller gives.
//! - [`load_mp4`] (`mp4.rs`): H.264 video in MP4, decoded with OpenH264 and converted to RGB
//!   as FFmpeg's swscale does (`colour.rs`), so the frames equal those of transformers'
//!   `read_video_pyav`; other codecs and containers are refused by name.
//! - [`processor`]: `Qwen3VLVideoProcessor` (sampling, resize, normalise, patches) and the
//!   prompt text of each video (`Qwen3VLProcessor.replace_video_token`).
//!
//! How the processor uses it, for one video of a message:
//!
//! ```no_run
//! # use neuron::preprocess::video::{self, processor::VideoProcessorConfig, VideoLimits};
//! # fn main() -> anyhow::Result<()> {
//! let cfg = VideoProcessorConfig::from_dir("checkpoint".as_ref())?;
//! // Decodes every frame but keeps (converts to RGB) only those the processor samples.
//! let clip = video::load_mp4("clip.mp4".as_ref(), Some(&cfg), &VideoLimits::default())?;
//! let patches = video::processor::pixel_values_videos(&clip, &cfg)?;
//! // patches.values: this video's rows of pixel_values_videos; patches.grid: its video_grid_thw.
//! // The rendered prompt's `<|video_pad|>` (one per video, in order) becomes:
//! let text = patches.placeholder(&cfg);
//! # Ok(()) }
//! ```
//!
//! Memory stays bounded: a file is refused beyond [`VideoLimits`] (file size, frame count,
//! pixels per frame, bytes of RGB frames held), and only the sampled frames are held.

pub mod colour;
pub mod mp4;
pub mod processor;

use std::path::{Path, PathBuf};

use anyhow::{bail, ensure, Context, Result};

use super::image_file::{self, Loader, RgbImage};
pub use mp4::load_mp4;
use processor::VideoProcessorConfig;

/// A decoded video: some of its frames (all, or those a processor samples) as 8-bit RGB.
#[derive(Debug, Clone, PartialEq)]
pub struct Video {
    pub width: usize,
    pub height: usize,
    /// Frames per second (`metadata.fps`): the container's average frame rate, or the rate
    /// the caller gave for a folder of frames.
    pub fps: f64,
    /// Frames in the video (`metadata.total_num_frames`).
    pub total_frames: usize,
    /// Which frames `frames` holds, increasing (repeats allowed when the processor samples an
    /// index twice); `0..total_frames` for a whole video.
    pub indices: Vec<usize>,
    /// One interleaved RGB (HWC) frame per entry of `indices`.
    pub frames: Vec<Vec<u8>>,
}

impl Video {
    /// A whole video from frames of one size.
    pub fn from_frames(frames: Vec<RgbImage>, fps: f64) -> Result<Self> {
        check_fps(fps)?;
        let first = frames.first().context("a video needs at least one frame; none were given")?;
        let (width, height) = (first.width, first.height);
        for (i, f) in frames.iter().enumerate() {
            ensure!(
                (f.width, f.height) == (width, height),
                "frame {i} is {}×{} but frame 0 is {width}×{height}: every frame of a video must have one size",
                f.width,
                f.height
            );
            ensure!(
                f.data.len() == width * height * 3,
                "frame {i} holds {} bytes, not {width}×{height}×3",
                f.data.len()
            );
        }
        let total_frames = frames.len();
        Ok(Video {
            width,
            height,
            fps,
            total_frames,
            indices: (0..total_frames).collect(),
            frames: frames.into_iter().map(|f| f.data).collect(),
        })
    }

    /// The RGB frame at a video frame index, if this video holds it.
    pub fn frame(&self, index: usize) -> Option<&[u8]> {
        self.indices.iter().position(|&i| i == index).map(|k| self.frames[k].as_slice())
    }
}

/// Bounds on what decoding may read and hold; beyond each, the video is refused with the
/// figure and the bound.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct VideoLimits {
    /// Bytes of a video file read into memory.
    pub max_file_bytes: u64,
    /// Frames in a video (a folder's PNG files, an MP4 track's samples).
    pub max_frames: usize,
    /// Pixels of one frame. The default is OpenH264's own limit (level 5.2, 36 864 macroblocks:
    /// 4096×2304).
    pub max_frame_pixels: usize,
    /// Bytes of RGB frames held at once (the sampled frames).
    pub max_held_bytes: usize,
}

impl Default for VideoLimits {
    fn default() -> Self {
        VideoLimits {
            max_file_bytes: 4 << 30,
            max_frames: 1 << 20,
            max_frame_pixels: 36_864 * 256,
            max_held_bytes: 4 << 30,
        }
    }
}

impl VideoLimits {
    fn check_frames(&self, frames: usize) -> Result<()> {
        ensure!(
            frames <= self.max_frames,
            "the video has {frames} frames, more than the limit of {} (VideoLimits::max_frames)",
            self.max_frames
        );
        Ok(())
    }

    fn check_frame_size(&self, width: usize, height: usize) -> Result<()> {
        ensure!(width > 0 && height > 0, "the frames are {width}×{height}: they have no pixels");
        ensure!(
            width.saturating_mul(height) <= self.max_frame_pixels,
            "the frames are {width}×{height} = {} pixels, more than the limit of {} (VideoLimits::max_frame_pixels)",
            width.saturating_mul(height),
            self.max_frame_pixels
        );
        Ok(())
    }

    fn check_held(&self, frames: usize, width: usize, height: usize) -> Result<()> {
        let bytes = frames.saturating_mul(width).saturating_mul(height).saturating_mul(3);
        ensure!(
            bytes <= self.max_held_bytes,
            "holding {frames} RGB frames of {width}×{height} takes {bytes} bytes, more than the limit of {} \
             (VideoLimits::max_held_bytes)",
            self.max_held_bytes
        );
        Ok(())
    }
}

fn check_fps(fps: f64) -> Result<()> {
    ensure!(fps.is_finite() && fps > 0.0, "the frame rate must be a positive number of frames per second, got {fps}");
    Ok(())
}

/// The frames to keep out of `total`: what `sampling` samples, or all of them.
fn wanted_indices(sampling: Option<&VideoProcessorConfig>, total: usize, fps: f64) -> Result<Vec<usize>> {
    match sampling {
        Some(cfg) => cfg.sample_indices(total, fps),
        None => Ok((0..total).collect()),
    }
}

/// A folder of frames: its PNG files (by extension, any case) in byte order of their names,
/// at `fps` frames per second. Every frame must have the first frame's size. With `sampling`,
/// only the frames that processor samples are decoded and held (every file's header is
/// still read, to check the sizes). Frames are read as transformers' `load_image` reads a frame
/// path (alpha dropped; see [`image_file`]).
pub fn load_frame_folder(
    dir: &Path,
    fps: f64,
    sampling: Option<&VideoProcessorConfig>,
    limits: &VideoLimits,
) -> Result<Video> {
    check_fps(fps)?;
    let entries = std::fs::read_dir(dir).with_context(|| format!("{}: cannot read the frame folder", dir.display()))?;
    let mut others = 0usize;
    let mut files: Vec<PathBuf> = Vec::new();
    for entry in entries {
        let path = entry.with_context(|| format!("{}: cannot list the frame folder", dir.display()))?.path();
        let is_png = path.extension().is_some_and(|e| e.eq_ignore_ascii_case("png"));
        if is_png && path.is_file() {
            files.push(path);
        } else {
            others += 1;
        }
    }
    if files.is_empty() {
        if others == 0 {
            bail!("{}: the frame folder is empty: a video needs at least one frame", dir.display());
        }
        bail!("{}: the frame folder holds no PNG frames ({others} other entries)", dir.display());
    }
    limits.check_frames(files.len()).with_context(|| format!("{}", dir.display()))?;
    files.sort_by(|a, b| a.file_name().cmp(&b.file_name()));
    let name = |p: &Path| p.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    let (width, height) = png_size(&files[0])?;
    limits.check_frame_size(width, height).with_context(|| format!("{}", files[0].display()))?;
    for path in &files[1..] {
        let size = png_size(path)?;
        ensure!(
            size == (width, height),
            "{}: the frame is {}×{} but the first frame, {}, is {width}×{height}: every frame of a video must have \
             one size",
            path.display(),
            size.0,
            size.1,
            name(&files[0])
        );
    }
    let total_frames = files.len();
    let indices = wanted_indices(sampling, total_frames, fps).with_context(|| format!("{}", dir.display()))?;
    limits.check_held(indices.len(), width, height).with_context(|| format!("{}", dir.display()))?;
    let mut frames = Vec::with_capacity(indices.len());
    for &i in &indices {
        let rgb = image_file::load_rgb_with(&files[i], Loader::LoadImage)?;
        ensure!(
            (rgb.width, rgb.height) == (width, height),
            "{}: decoded to {}×{}, not the {width}×{height} its header declares",
            files[i].display(),
            rgb.width,
            rgb.height
        );
        frames.push(rgb.data);
    }
    Ok(Video { width, height, fps, total_frames, indices, frames })
}

/// A PNG's (width, height) from its header, without decoding it.
fn png_size(path: &Path) -> Result<(usize, usize)> {
    use std::io::Read;
    let mut head = [0u8; 24];
    let mut file = std::fs::File::open(path).with_context(|| format!("{}: cannot open the frame", path.display()))?;
    let read = file.read(&mut head).with_context(|| format!("{}: cannot read the frame", path.display()))?;
    ensure!(
        read == 24 && head[..8] == *b"\x89PNG\r\n\x1a\n" && head[12..16] == *b"IHDR",
        "{}: not a PNG file ({read} bytes read of its header)",
        path.display()
    );
    let be = |b: &[u8]| u32::from_be_bytes([b[0], b[1], b[2], b[3]]) as usize;
    Ok((be(&head[16..20]), be(&head[20..24])))
}

/// A video path: a folder of PNG frames (played at `folder_fps`, required for folders) or an
/// MP4 file.
pub fn load_video(
    path: &Path,
    folder_fps: Option<f64>,
    sampling: Option<&VideoProcessorConfig>,
    limits: &VideoLimits,
) -> Result<Video> {
    if path.is_dir() {
        let fps = folder_fps.with_context(|| {
            format!("{}: a folder of frames has no frame rate of its own; give one", path.display())
        })?;
        load_frame_folder(path, fps, sampling, limits)
    } else {
        load_mp4(path, sampling, limits)
    }
}
