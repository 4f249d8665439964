//! Times Rust preprocessing and prints one JSON line per input with the median milliseconds of
//! `--runs` runs. `script/bench_preprocess.py` runs it beside the reference processors.
//!
//! - An image file: decode, convert to RGB, smart_resize, the bicubic resize, normalise,
//!   patchify (no prompt); the line gives its megapixels.
//! - A video (`.mp4`, or a frame folder as `DIR@FPS`): decode (every frame up to the last
//!   sampled one, the sampled ones converted to RGB), sample, resize, normalise, patchify and
//!   write its prompt text; the line gives its seconds of video and frames sampled.
//!
//! `cargo run --release --example preprocess_bench -- MODEL_DIR RUNS INPUT...`

use std::path::{Path, PathBuf};
use std::time::Instant;

use neuron::preprocess::image_file::{load_rgb_with, Loader};
use neuron::preprocess::image_processor::{pixel_values_at, target_size};
use neuron::preprocess::video::processor::{pixel_values_videos, VideoProcessorConfig};
use neuron::preprocess::video::{load_video, VideoLimits};
use neuron::preprocess::ImageProcessorConfig;

/// The median of `runs` timed calls of `f`, in milliseconds.
fn median_ms(runs: usize, mut f: impl FnMut() -> anyhow::Result<()>) -> anyhow::Result<f64> {
    let mut times = Vec::with_capacity(runs);
    for _ in 0..runs {
        let start = Instant::now();
        f()?;
        times.push(start.elapsed().as_secs_f64() * 1e3);
    }
    times.sort_by(f64::total_cmp);
    Ok(times[runs / 2])
}

fn main() -> anyhow::Result<()> {
    let mut args = std::env::args().skip(1);
    let usage = "usage: preprocess_bench MODEL_DIR RUNS INPUT... (an image, a .mp4, or a frame folder as DIR@FPS)";
    let model = PathBuf::from(args.next().ok_or_else(|| anyhow::anyhow!(usage))?);
    let runs: usize = args.next().ok_or_else(|| anyhow::anyhow!(usage))?.parse()?;
    let cfg = ImageProcessorConfig::from_dir(&model)?;
    for input in args {
        let (path, folder_fps) = match input.rsplit_once('@') {
            Some((dir, fps)) => (PathBuf::from(dir), Some(fps.parse::<f64>()?)),
            None => (PathBuf::from(&input), None),
        };
        if folder_fps.is_some() || path.extension().is_some_and(|e| e.eq_ignore_ascii_case("mp4")) {
            bench_video(&model, &input, &path, folder_fps, runs)?;
            continue;
        }
        let mut megapixels = 0.0;
        let ms = median_ms(runs, || {
            let rgb = load_rgb_with(&path, Loader::Processor)?;
            let size = target_size(&rgb, &cfg)?;
            let patches = pixel_values_at(&rgb, size, &cfg)?;
            std::hint::black_box(&patches.values);
            megapixels = (rgb.width * rgb.height) as f64 / 1e6;
            Ok(())
        })?;
        println!(r#"{{"image": {input:?}, "megapixels": {megapixels}, "ms": {ms}}}"#);
    }
    Ok(())
}

/// One video through decoding and the video processor, as `Processor` runs it.
fn bench_video(model: &Path, input: &str, path: &Path, folder_fps: Option<f64>, runs: usize) -> anyhow::Result<()> {
    let cfg = VideoProcessorConfig::from_dir(model)?;
    let (mut seconds, mut frames) = (0.0, 0);
    let ms = median_ms(runs, || {
        let clip = load_video(path, folder_fps, Some(&cfg), &VideoLimits::default())?;
        let patches = pixel_values_videos(&clip, &cfg)?;
        std::hint::black_box((&patches.values, patches.placeholder(&cfg)));
        seconds = clip.total_frames as f64 / clip.fps;
        frames = patches.frame_indices.len();
        Ok(())
    })?;
    println!(r#"{{"video": {input:?}, "seconds": {seconds}, "frames": {frames}, "ms": {ms}}}"#);
    Ok(())
}
