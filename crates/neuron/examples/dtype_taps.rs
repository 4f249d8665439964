//! Runs a manifest case in a compute dtype and writes every tap Rust records as float32 / int64
//! `.npy`, for comparing a bf16 run with the reference's bf16 run (`script/probe_bf16.py`,
//! `script/compare_bf16.py`), which the manifest does not record yet.
//!
//! ```sh
//! cargo run --release --example dtype_taps -- --case chelsea --dtype bf16 \
//!     --reference /tmp/bf16-ref/chelsea --out /tmp/bf16-rust/chelsea
//! ```
//!
//! Writes into `--out`:
//! - the taps of the forward pass from the image files (`from-image-files`: Rust preprocessing,
//!   tower, text model);
//! - `lm-teacher-forced/`: the text model's taps with the image rows taken from the
//!   reference's `vision.projector` in `--reference` (the bf16 reference's own, so the text
//!   model's deviation is its own);
//! - for a case with `generate`: the cache after the prefill (`cache.*`) and each step's logits
//!   (`gen.logits`) with the reference's greedy tokens of `--reference` fed back, and Rust's own
//!   greedy tokens (`gen.tokens`), as many as the reference made.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use candle_core::{DType, Device, Tensor};
use clap::Parser;
use neuron::model::Model;
use neuron::preprocess::Processor;
use neuron::replay::{self, CaseInputs, Mode, Perturbations};
use neuron::taps::Taps;
use neuron::vision::VisionPositions;
use parity::array::Array;

#[derive(Parser)]
struct Args {
    #[arg(long)]
    case: String,
    /// f32 or bf16.
    #[arg(long, default_value = "bf16", value_parser = neuron::precision::parse_compute_dtype)]
    dtype: DType,
    /// The reference taps of the same dtype (`script/probe_bf16.py`'s folder of the case).
    #[arg(long)]
    reference: PathBuf,
    #[arg(long)]
    out: PathBuf,
}

fn main() -> Result<()> {
    let args = Args::parse();
    let manifest = replay::workspace_manifest()?;
    let mut inputs = CaseInputs::new(&manifest, &args.case)?;
    inputs.dtype = args.dtype;
    let model = replay::load_model(&inputs)?;

    let run = replay::run_with(&manifest, &inputs, Mode::FromImageFiles, &model, &Perturbations::default())?;
    if let Some(failure) = &run.failure {
        anyhow::bail!("from-image-files stopped: {failure}");
    }
    write_all(&args.out, run.taps.iter().map(|(k, v)| (k.clone(), v.clone())))?;

    let c = &manifest.cases[&args.case];
    let images: Vec<PathBuf> = c.images.iter().map(|i| manifest.root.join(&manifest.images[i].path)).collect();
    let image_refs: Vec<&Path> = images.iter().map(PathBuf::as_path).collect();
    let mut processor = Processor::from_dir(&inputs.model_dir)?;
    processor.loader = c.loader;
    let processed = processor.process(&image_refs, &c.prompt)?;
    let ids = processed.input_ids.clone();

    // The text model fed the reference's own projector rows.
    let mut taps = Taps::recording();
    let projector = match processed.pixel_values {
        Some(_) => Some(read_tensor(&args.reference.join("vision.projector.npy"))?),
        None => None,
    };
    let positions = model.positions(&ids, &processed.grids)?;
    model.forward_from_image_embeds(&ids, projector.as_ref(), &positions, &mut taps)?;
    write_taps(&args.out.join("lm-teacher-forced"), taps)?;

    let tokens_path = args.reference.join("gen.tokens.npy");
    if c.generate.is_some() && tokens_path.is_file() {
        let reference_tokens: Vec<u32> = parity::npy::read_npy(&tokens_path)?
            .as_i64()
            .context("gen.tokens is not an integer array")?
            .iter()
            .map(|&t| t as u32)
            .collect();
        let vision_positions = VisionPositions::new(&model.config.vision_config, &processed.grids);
        let pixels = processed.pixel_values.as_ref().map(|p| (p, &vision_positions));
        decode_teacher_forced(&model, &ids, pixels, &reference_tokens, &args.out)?;

        let eos = model.config.text_config.eos_token_id.as_ref().map(|e| e.ids()).unwrap_or_default();
        let generation = model.generate_greedy(&ids, pixels, reference_tokens.len(), &eos, &mut Taps::disabled())?;
        let tokens: Vec<i64> = generation.tokens.iter().map(|&t| i64::from(t)).collect();
        write_all(&args.out, [("gen.tokens".to_string(), Array::i64(vec![tokens.len()], tokens))])?;
    }
    Ok(())
}

/// The prefill, then the reference's tokens fed back one step at a time: `cache.*` after the
/// prefill and `gen.logits` [steps, vocab].
fn decode_teacher_forced(
    model: &Model,
    ids: &[u32],
    pixels: Option<(&Tensor, &VisionPositions)>,
    tokens: &[u32],
    out: &Path,
) -> Result<()> {
    let mut cache = model.new_cache();
    let mut logits = vec![model.prefill(ids, pixels, &mut cache, &mut Taps::disabled())?];
    let mut taps = Taps::recording();
    cache.record(&mut taps);
    for &token in tokens.iter().take(tokens.len().saturating_sub(1)) {
        logits.push(model.decode_step(token, &mut cache)?);
    }
    taps.record(|| "gen.logits".into(), &Tensor::stack(&logits, 0)?);
    write_taps(out, taps)
}

fn read_tensor(path: &Path) -> Result<Tensor> {
    let a = parity::npy::read_npy(path).with_context(|| format!("reading {}", path.display()))?;
    let values = a.as_f32().with_context(|| format!("{} is not float32", path.display()))?;
    Ok(Tensor::from_slice(values, a.shape.as_slice(), &Device::Cpu)?)
}

fn write_taps(dir: &Path, taps: Taps) -> Result<()> {
    let arrays =
        taps.into_map().into_iter().map(|(k, v)| Ok((k, replay::to_array(&v)?))).collect::<Result<Vec<_>>>()?;
    write_all(dir, arrays)
}

fn write_all(dir: &Path, taps: impl IntoIterator<Item = (String, Array)>) -> Result<()> {
    std::fs::create_dir_all(dir)?;
    for (name, array) in taps {
        parity::npy::write_npy(&dir.join(format!("{name}.npy")), &array)?;
    }
    Ok(())
}
