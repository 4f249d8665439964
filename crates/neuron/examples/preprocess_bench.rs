//! Times Rust preprocessing of image files (decode, convert to RGB, smart_resize, the bicubic
//! resize, normalise, patchify; no prompt) and prints one JSON line per file: megapixels and
//! the median milliseconds of `--runs` runs. `script/bench_preprocess.py` runs it beside the
//! reference image processor.
//!
//! `cargo run --release --example preprocess_bench -- MODEL_DIR RUNS IMAGE...`

use std::path::PathBuf;
use std::time::Instant;

use neuron::preprocess::image_file::{load_rgb_with, Loader};
use neuron::preprocess::image_processor::{pixel_values_at, target_size};
use neuron::preprocess::ImageProcessorConfig;

fn main() -> anyhow::Result<()> {
    let mut args = std::env::args().skip(1);
    let usage = "usage: preprocess_bench MODEL_DIR RUNS IMAGE...";
    let model = PathBuf::from(args.next().ok_or_else(|| anyhow::anyhow!(usage))?);
    let runs: usize = args.next().ok_or_else(|| anyhow::anyhow!(usage))?.parse()?;
    let cfg = ImageProcessorConfig::from_dir(&model)?;
    for image in args {
        let path = PathBuf::from(&image);
        let mut times = Vec::with_capacity(runs);
        let mut megapixels = 0.0;
        for _ in 0..runs {
            let start = Instant::now();
            let rgb = load_rgb_with(&path, Loader::Processor)?;
            let size = target_size(&rgb, &cfg)?;
            let patches = pixel_values_at(&rgb, size, &cfg)?;
            std::hint::black_box(&patches.values);
            times.push(start.elapsed().as_secs_f64() * 1e3);
            megapixels = (rgb.width * rgb.height) as f64 / 1e6;
        }
        times.sort_by(f64::total_cmp);
        println!(r#"{{"image": {image:?}, "megapixels": {megapixels}, "ms": {}}}"#, times[runs / 2]);
    }
    Ok(())
}
