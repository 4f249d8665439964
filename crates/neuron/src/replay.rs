//! Replaying a manifest case through the Rust implementation and comparing each tap with
//! the reference dump. Shared by the generated tests and `cargo xtask verify`.
//!
//! A stage can be fed the reference's own input (teacher forcing: the reference
//! `input.pixel_values` into the vision tower), so a failure points at the stage where it
//! enters rather than at everything downstream.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::{bail, ensure, Context, Result};
use candle_core::{DType, Device, Tensor};
use candle_nn::VarBuilder;
use parity::array::{Array, Data};
use parity::compare::{compare, CompareOptions, Comparison};
use parity::manifest::{Manifest, Weights};
pub use parity::mode::Mode;
use parity::report::Heatmap;
use parity::taps::Tap;

use crate::config::Config;
use crate::model::{Model, Residency};
use crate::preprocess::{Hooks, Processed, Processor};
use crate::taps::Taps;
use crate::vision::positions::Grid;
use crate::vision::VisionPositions;

/// How many top logits are compared for `lm.logits_last`.
pub const TOP_K: usize = 5;

/// The inputs of one case as the manifest names them.
pub struct CaseInputs {
    pub case: String,
    pub model_dir: PathBuf,
    pub config: Config,
    /// Whether the model runs streamed from the mapped checkpoint (the manifest's `stream`).
    pub stream: bool,
}

impl CaseInputs {
    /// The case's checkpoint from the repository, or from the folder its model's
    /// `weights_env` variable names.
    pub fn new(manifest: &Manifest, case: &str) -> Result<CaseInputs> {
        Self::with_weights(manifest, case, None)
    }

    /// As [`CaseInputs::new`], with `--weights DIR` for a checkpoint outside the repository.
    /// A checkpoint nobody named is an error saying how to name it.
    pub fn with_weights(manifest: &Manifest, case: &str, weights: Option<&Path>) -> Result<CaseInputs> {
        let Some(c) = manifest.cases.get(case) else {
            bail!("no case \"{case}\"; known cases: {}", manifest.cases.keys().cloned().collect::<Vec<_>>().join(", "));
        };
        let model_dir = match manifest.weights(&c.model, weights).map_err(anyhow::Error::msg)? {
            Weights::Found(dir) => dir,
            Weights::Absent(reason) => bail!("case {case}: {reason}"),
        };
        let config = Config::from_dir(&model_dir)?;
        Ok(CaseInputs { case: case.to_owned(), model_dir, config, stream: manifest.models[&c.model].stream })
    }
}

/// The taps one run produced, plus what is needed to name positions in model terms.
pub struct Run {
    pub mode: Mode,
    pub taps: BTreeMap<String, Array>,
    pub grids: Vec<Grid>,
    pub rotary: Vec<[u32; 2]>,
    pub merge: usize,
    pub input_ids: Vec<u32>,
    /// The text of each token, when the checkpoint has a tokenizer (for failure messages).
    pub token_texts: Option<Vec<String>>,
    /// Why the run stopped before producing every tap, if it did.
    pub failure: Option<String>,
}

/// Reads a recorded reference dump of a case.
pub fn reference(manifest: &Manifest, case: &str, tap: &str) -> Result<Array> {
    ensure!(
        manifest.cases[case].dumps.contains_key(tap),
        "case {case} has no recorded {tap}; run `cargo xtask capture --case {case}`"
    );
    let path = manifest.root.join(Manifest::dump_path(case, tap));
    Ok(parity::npy::read_npy(&path)?)
}

/// Converts a tensor into a dump-comparable array (f32, or i64 for integer tensors).
pub fn to_array(t: &Tensor) -> Result<Array> {
    let shape = t.dims().to_vec();
    Ok(match t.dtype() {
        DType::I64 | DType::U32 | DType::U8 => Array::i64(shape, t.to_dtype(DType::I64)?.flatten_all()?.to_vec1()?),
        _ => Array::f32(shape, t.to_dtype(DType::F32)?.flatten_all()?.to_vec1()?),
    })
}

fn to_tensor(a: &Array) -> Result<Tensor> {
    Ok(match &a.data {
        Data::F32(v) => Tensor::from_slice(v, a.shape.as_slice(), &Device::Cpu)?,
        Data::I64(v) => Tensor::from_slice(v, a.shape.as_slice(), &Device::Cpu)?,
    })
}

/// The image grids recorded as `input.image_grid_thw` ([images, 3]).
pub fn grids_of(thw: &Array) -> Result<Vec<Grid>> {
    let Some(values) = thw.as_i64() else { bail!("input.image_grid_thw is not an integer array") };
    ensure!(
        thw.shape.len() == 2 && thw.shape[1] == 3,
        "input.image_grid_thw has shape {:?}, not [images, 3]",
        thw.shape
    );
    Ok(values.chunks(3).map(|g| Grid { t: g[0] as usize, h: g[1] as usize, w: g[2] as usize }).collect())
}

/// Loads the model of a case's checkpoint: resident, or streamed layer by layer when the
/// manifest says `stream = true`.
pub fn load_model(inputs: &CaseInputs) -> Result<Model> {
    let residency = if inputs.stream { Residency::Streamed } else { Residency::Resident };
    Model::load(&inputs.model_dir, &inputs.config, residency)
        .with_context(|| format!("building the {residency:?} model of {}", inputs.model_dir.display()))
}

/// Builds the model from any `VarBuilder` rooted at the checkpoint (tests use this to hand
/// in perturbed weights) and the case's config (which tests may have altered).
pub fn model_from(inputs: &CaseInputs, vb: VarBuilder<'static>) -> Result<Model> {
    Model::new(&inputs.config, vb).with_context(|| format!("building the model of {}", inputs.model_dir.display()))
}

/// Multimodal positions: (t, h, w) rows of one position per token.
pub type Positions = [Vec<i64>; 3];

/// Injection points for tests: each maps what the pipeline computed before it is used.
/// Production runs use `Perturbations::default()`, which changes nothing.
#[derive(Default)]
pub struct Perturbations<'a> {
    pub vision_positions: Option<&'a dyn Fn(VisionPositions) -> VisionPositions>,
    pub text_positions: Option<&'a dyn Fn(Positions) -> Positions>,
    pub preprocess: Hooks<'a>,
}

/// Runs a case in one mode, as the model would.
pub fn run(manifest: &Manifest, case: &str, mode: Mode) -> Result<Run> {
    let inputs = CaseInputs::new(manifest, case)?;
    let model = load_model(&inputs)?;
    run_with(manifest, &inputs, mode, &model, &Perturbations::default())
}

/// Runs a case in one mode on a given model.
pub fn run_with(
    manifest: &Manifest,
    inputs: &CaseInputs,
    mode: Mode,
    model: &Model,
    perturb: &Perturbations,
) -> Result<Run> {
    let case = inputs.case.as_str();
    let vision_cfg = &model.config.vision_config;
    let vision_positions = |grids: &[Grid]| {
        let p = VisionPositions::new(vision_cfg, grids);
        match perturb.vision_positions {
            Some(f) => f(p),
            None => p,
        }
    };
    let text_positions = |ids: &[u32], grids: &[Grid]| -> Result<[Vec<i64>; 3]> {
        let p = model.positions(ids, grids)?;
        Ok(match perturb.text_positions {
            Some(f) => f(p),
            None => p,
        })
    };
    let mut taps = Taps::recording();

    // The inputs: from the reference dumps, or from the files through Rust preprocessing.
    let (input_ids, grids, pixels) = if mode == Mode::FromImageFiles {
        let c = &manifest.cases[case];
        let images: Vec<PathBuf> = c.images.iter().map(|i| manifest.root.join(&manifest.images[i].path)).collect();
        let image_refs: Vec<&Path> = images.iter().map(PathBuf::as_path).collect();
        let processor = Processor::from_dir(&inputs.model_dir)?;
        let processed = processor.process_with(&image_refs, &c.prompt, &perturb.preprocess)?;
        record_inputs(&mut taps, &processed)?;
        (processed.input_ids, processed.grids, processed.pixel_values)
    } else {
        let recorded = |tap: &str| manifest.cases[case].dumps.contains_key(tap);
        let ids = reference(manifest, case, "input.input_ids")?;
        let Some(ids) = ids.as_i64() else { bail!("input.input_ids is not an integer array") };
        let ids = ids
            .iter()
            .map(|&id| u32::try_from(id).with_context(|| format!("token id {id} out of range")))
            .collect::<Result<Vec<_>>>()?;
        let grids = if recorded("input.image_grid_thw") {
            grids_of(&reference(manifest, case, "input.image_grid_thw")?)?
        } else {
            Vec::new()
        };
        let pixels = if recorded("input.pixel_values") {
            Some(to_tensor(&reference(manifest, case, "input.pixel_values")?)?)
        } else {
            None
        };
        (ids, grids, pixels)
    };
    let positions = vision_positions(&grids);

    // A stage that fails keeps the taps recorded before it: the report can still name the
    // first tap that is wrong, and says why the later ones are missing.
    let stages = (|| -> Result<()> {
        match mode {
            Mode::VisionTeacherForced => {
                let Some(pixels) = &pixels else { bail!("case {case} has no recorded input.pixel_values") };
                model.vision.forward(pixels, &positions, &mut taps)?;
            }
            Mode::LmTeacherForced => {
                let projector = if manifest.cases[case].dumps.contains_key("vision.projector") {
                    Some(to_tensor(&reference(manifest, case, "vision.projector")?)?)
                } else {
                    None
                };
                let text = text_positions(&input_ids, &grids)?;
                model.forward_from_image_embeds(&input_ids, projector.as_ref(), &text, &mut taps)?;
            }
            Mode::FromPixelValues | Mode::FromImageFiles => {
                let image_embeds = match &pixels {
                    Some(pixels) => Some(model.vision.forward(pixels, &positions, &mut taps)?),
                    None => None,
                };
                let text = text_positions(&input_ids, &grids)?;
                model.forward_from_image_embeds(&input_ids, image_embeds.as_ref(), &text, &mut taps)?;
            }
        }
        Ok(())
    })();
    let failure = stages.err().map(|e| format!("{e:#}"));
    let taps = taps.into_map().iter().map(|(k, v)| Ok((k.clone(), to_array(v)?))).collect::<Result<_>>()?;
    let token_texts = token_texts(&inputs.model_dir, &input_ids);
    Ok(Run {
        mode,
        taps,
        grids,
        rotary: positions.rotary,
        merge: vision_cfg.spatial_merge_size,
        input_ids,
        token_texts,
        failure,
    })
}

/// Each token decoded on its own, for naming positions in reports; `None` without a tokenizer.
fn token_texts(model_dir: &Path, ids: &[u32]) -> Option<Vec<String>> {
    let tokenizer = tokenizers::Tokenizer::from_file(model_dir.join("tokenizer.json")).ok()?;
    ids.iter().map(|&id| tokenizer.decode(&[id], false).ok()).collect()
}

/// Records what preprocessing produced under the `input.*` tap names.
fn record_inputs(taps: &mut Taps, p: &Processed) -> Result<()> {
    let ids: Vec<i64> = p.input_ids.iter().map(|&i| i64::from(i)).collect();
    taps.record(|| "input.input_ids".into(), &Tensor::new(ids, &Device::Cpu)?);
    if let Some(pixels) = &p.pixel_values {
        let thw: Vec<i64> = p.grids.iter().flat_map(|g| [g.t as i64, g.h as i64, g.w as i64]).collect();
        taps.record(|| "input.image_grid_thw".into(), &Tensor::from_vec(thw, (p.grids.len(), 3), &Device::Cpu)?);
        taps.record(|| "input.pixel_values".into(), pixels);
    }
    Ok(())
}

/// The recorded taps of a case that a mode checks, in pipeline order.
pub fn taps_checked(manifest: &Manifest, case: &str, mode: Mode) -> Vec<String> {
    manifest.taps_checked(case, mode).iter().map(Tap::to_string).collect()
}

/// The result of checking one tap of one run.
pub struct TapResult {
    pub case: String,
    pub tap: String,
    pub mode: Mode,
    pub comparison: Comparison,
    /// The worst element in model terms (image, patch row/col, token position).
    pub location: Option<String>,
}

impl TapResult {
    pub fn passed(&self) -> bool {
        self.comparison.passed()
    }

    /// A failure message naming the case, the tap, the mode, the metrics and the place.
    pub fn message(&self) -> String {
        let mut s = format!("case {} · tap {} · {}\n{}", self.case, self.tap, self.mode.name(), self.comparison);
        if let Some(loc) = &self.location {
            s.push_str(&format!("\nWorst element: {loc}"));
        }
        s
    }
}

impl Run {
    /// Compares the run's tap with the recorded dump under the manifest's tolerance.
    pub fn check(&self, manifest: &Manifest, case: &str, tap: &str) -> Result<TapResult> {
        let expected = reference(manifest, case, tap)?;
        let Some(actual) = self.taps.get(tap) else {
            match &self.failure {
                Some(why) => bail!("the {} run of case {case} stopped before {tap}: {why}", self.mode.name()),
                None => bail!("the {} run of case {case} produced no {tap}", self.mode.name()),
            }
        };
        // A case that keeps one row of a tap (the first patch, the last position) is compared
        // on that row; the worst element is then named by its row in the whole tap.
        let pick = Tap::parse(tap).and_then(|t| manifest.row_pick(case, t));
        let (actual, row_offset) = match pick {
            Some(pick) if !actual.shape.is_empty() => {
                let row = pick.index(actual.shape[0]);
                (actual.select_rows(&[row])?, row)
            }
            _ => (actual.clone(), 0),
        };
        let opts = CompareOptions {
            tolerance: manifest.tolerance(case, tap),
            top_k: (tap == "lm.logits_last").then_some(TOP_K),
        };
        let comparison = compare(&expected, &actual, &opts);
        let location = comparison.max_abs.as_ref().and_then(|w| {
            let mut index = w.index.clone();
            if let Some(first) = index.first_mut() {
                *first += row_offset;
            }
            self.locate(tap, &index)
        });
        Ok(TapResult { case: case.to_owned(), tap: tap.to_owned(), mode: self.mode, comparison, location })
    }

    /// Per-patch error maps of an image tap, one per image, laid out on the image's patch grid
    /// (merged-token grid for `vision.projector`); empty for other taps or mismatched shapes.
    pub fn heatmaps(&self, manifest: &Manifest, case: &str, tap: &str) -> Result<Vec<Heatmap>> {
        let per_patch = matches!(
            Tap::parse(tap).map(Tap::stem),
            Some("input.pixel_values" | "vision.patch_embed" | "vision.pos_embed" | "vision.block" | "vision.tower")
        );
        let merged = tap == "vision.projector";
        let whole = Tap::parse(tap).is_some_and(|t| manifest.row_pick(case, t).is_none());
        let (Some(actual), true) = (self.taps.get(tap), (per_patch || merged) && whole) else { return Ok(Vec::new()) };
        let expected = reference(manifest, case, tap)?;
        let (Some(e), Some(a)) = (expected.as_f32(), actual.as_f32()) else { return Ok(Vec::new()) };
        if expected.shape != actual.shape || expected.shape.len() != 2 {
            return Ok(Vec::new());
        }
        let width = expected.shape[1];
        let row_max: Vec<f64> = e
            .chunks(width)
            .zip(a.chunks(width))
            .map(|(e, a)| e.iter().zip(a).map(|(x, y)| (f64::from(*x) - f64::from(*y)).abs()).fold(0.0, f64::max))
            .collect();
        let unit = if merged { self.merge * self.merge } else { 1 };
        let mut maps = Vec::new();
        let mut start = 0;
        for (image, g) in self.grids.iter().enumerate() {
            let (grid_h, grid_w) = if merged { (g.h / self.merge, g.w / self.merge) } else { (g.h, g.w) };
            let count = g.patches() / unit;
            let mut cells = vec![0.0; grid_h * grid_w];
            for (row, &max_abs) in row_max.iter().enumerate().take(start + count).skip(start) {
                let cell = if merged {
                    // Merged tokens come block by block, row-major over the block grid.
                    row - start
                } else {
                    let [r, c] = self.rotary[row];
                    r as usize * grid_w + c as usize
                };
                if let Some(slot) = cells.get_mut(cell) {
                    *slot = f64::max(*slot, max_abs);
                }
            }
            maps.push(Heatmap {
                mode: self.mode.name().into(),
                tap: tap.into(),
                image,
                grid_h,
                grid_w,
                max_abs: cells,
            });
            start += count;
        }
        Ok(maps)
    }

    /// "id 613 '<|image_pad|>'" for a token position.
    fn token(&self, position: usize) -> Option<String> {
        let id = self.input_ids.get(position)?;
        Some(match self.token_texts.as_ref().and_then(|t| t.get(position)) {
            Some(text) => format!("id {id} {text:?}"),
            None => format!("id {id}"),
        })
    }

    /// Names a tensor index in model terms: which image and which patch (row, col) for
    /// per-patch taps, which merged token for the projector.
    pub fn locate(&self, tap: &str, index: &[usize]) -> Option<String> {
        let row = *index.first()?;
        let column = index.get(1).map(|c| format!(", channel {c}")).unwrap_or_default();
        let per_patch = matches!(
            Tap::parse(tap)?.stem(),
            "input.pixel_values" | "vision.patch_embed" | "vision.pos_embed" | "vision.block" | "vision.tower"
        );
        let merged = tap == "vision.projector";
        let per_token = matches!(Tap::parse(tap)?.stem(), "lm.layer" | "lm.norm" | "input.input_ids");
        if per_token {
            return Some(format!("token position {row} ({}){column}", self.token(row)?));
        }
        if tap == "lm.image_embeds" {
            return Some(format!("image token {row}{column}"));
        }
        if tap == "input.position_ids" {
            let pos = index.get(1)?;
            let axis = ["t", "h", "w"].get(row)?;
            return Some(format!("{axis} position of token {pos} ({})", self.token(*pos)?));
        }
        if !per_patch && !merged {
            return None;
        }
        let unit = if merged { self.merge * self.merge } else { 1 };
        let mut start = 0;
        for (image, g) in self.grids.iter().enumerate() {
            let count = g.patches() / unit;
            if row < start + count {
                return Some(if merged {
                    let block = row - start;
                    let blocks_w = g.w / self.merge;
                    format!(
                        "image {image}, merged token {block} (block row {}, col {} of {}×{}){column}",
                        block / blocks_w,
                        block % blocks_w,
                        g.h / self.merge,
                        blocks_w
                    )
                } else {
                    let [r, c] = self.rotary.get(row)?;
                    format!("image {image}, patch row {r}, col {c} of the {}×{} grid{column}", g.h, g.w)
                });
            }
            start += count;
        }
        None
    }
}

/// The manifest at the workspace root (for tests).
pub fn workspace_manifest() -> Result<Manifest> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    Ok(Manifest::load(&root.join("fixtures.toml"))?)
}
