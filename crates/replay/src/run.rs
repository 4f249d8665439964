//! Replaying a manifest case through the Rust implementation, for the generated tests and
//! `cargo xtask verify`: runs a case in a [`Mode`] and keeps its taps;
//! [`crate::check`] compares them with the reference dumps; `parity::locate` names the worst
//! element of a tap in model terms.
//!
//! A stage can be fed the reference's own input (teacher forcing: the reference
//! `input.pixel_values` into the vision tower), so a failure points at the stage where it
//! enters rather than at everything downstream. A mode is one run function here (see
//! [`run_with`]) and one `Mode` variant; naming places needs nothing from it.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::{bail, ensure, Context, Result};
use candle_core::{DType, Device, Tensor};
use candle_nn::VarBuilder;
use contract::{ComputeDtype, Stage, Tap};
use neuron::config::{Config, ModelFamily};
use neuron::model::{EmbeddedBatch, Model, Residency};
use neuron::preprocess::image_file::Loader;
use neuron::preprocess::{Content, Conversation, GenerationPrompt, Item, Message, Role};
use neuron::preprocess::{Hooks, Processed, Processor};
use neuron::taps::Taps;
use neuron::text::cache::Cache;
use neuron::text::moe::Routing;
use neuron::vision::positions::Grid;
use neuron::vision::VisionPositions;
use parity::array::{Array, Data};
use parity::locate::Locator;
use parity::manifest::{
    CaseRef, ContentSpec, DumpKey, ImageLoader, ItemSpec, Manifest, MessageSpec, Part, Request, RoleSpec, Weights,
};
use parity::mode::Mode;

/// A case and what building its model takes: where its checkpoint is, its config (tests may
/// alter it before building the model), how it holds its weights and what it computes in.
pub struct CaseSetup<'m> {
    /// The case in its manifest.
    pub case: CaseRef<'m>,
    /// The folder of the case's checkpoint.
    pub model_dir: PathBuf,
    /// The checkpoint's config.
    pub config: Config,
    /// Streamed when the manifest's model says `stream = true`.
    pub residency: Residency,
    /// The case's `dtype`: f32, or bf16 for a case whose reference ran with
    /// `from_pretrained(dtype=torch.bfloat16)`.
    pub dtype: ComputeDtype,
}

impl<'m> CaseSetup<'m> {
    /// The case's checkpoint from the repository, from `--weights DIR` (`weights`), or from the
    /// folder its model's `weights_env` variable names. A checkpoint nobody named is an error
    /// saying how to name it.
    pub fn new(case: CaseRef<'m>, weights: Option<&Path>) -> Result<CaseSetup<'m>> {
        let model_dir = match case.weights(weights).map_err(anyhow::Error::msg)? {
            Weights::Found(dir) => dir,
            Weights::Absent(reason) => bail!("case {case}: {reason}"),
        };
        let config = Config::from_dir(&model_dir)?;
        let expected = case.model().model_type.as_deref().unwrap_or(ModelFamily::Dense.model_type());
        ensure!(
            config.family.model_type() == expected,
            "case {case}: model \"{}\" is a {expected} entry, but {} holds a {} checkpoint (config.json's \
             model_type); point the entry at a {expected} checkpoint, or set its model_type to \"{}\"",
            case.model_name(),
            model_dir.display(),
            config.family.model_type(),
            config.family.model_type()
        );
        let residency = if case.model().stream { Residency::Streamed } else { Residency::Resident };
        Ok(CaseSetup { case, model_dir, config, residency, dtype: case.case.dtype })
    }
}

/// The taps one run produced, plus what is needed to name positions in model terms.
pub struct Run {
    /// Which inputs the run took from the reference.
    pub mode: Mode,
    /// Every tap the run recorded (with its part, for a case checked in parts).
    pub taps: BTreeMap<DumpKey, Array>,
    /// What the taps are compared with instead of the reference's dumps: a batch's rows run one
    /// by one (`BatchInvariance`), laid out as the batch's packed taps.
    pub own_reference: Option<BTreeMap<DumpKey, Array>>,
    /// A batch's padding per row (its taps are compared packed); empty for one sequence.
    pub padding: Vec<usize>,
    /// What the run said it did (a reused cache, a restored snapshot), for reports.
    pub notes: Vec<String>,
    /// The patch grid of each image, then of each video (the vision tower's rows).
    pub grids: Vec<Grid>,
    /// How many of `grids`, at the end, are videos.
    pub videos: usize,
    /// The (frames, height, width) of each video's decoded frames, when the run decoded them.
    pub video_frames: Vec<(usize, usize, usize)>,
    /// The (row, col) rotary position of every patch, images one after the other.
    pub rotary: Vec<[u32; 2]>,
    /// The vision config's spatial merge size.
    pub merge: usize,
    /// The prompt's token ids (a batch's real tokens, row after row).
    pub input_ids: Vec<u32>,
    /// A batch's real tokens per row; empty for one sequence.
    pub row_lengths: Vec<usize>,
    /// The text of each token, when the checkpoint has a tokenizer (for failure messages).
    pub token_texts: Option<Vec<String>>,
    /// The checkpoint's folder (its tokenizer names generated tokens in failure messages).
    pub model_dir: PathBuf,
    /// Why the run stopped before producing every tap, if it did.
    pub failure: Option<String>,
}

/// Reads a recorded reference dump of a case.
pub fn reference(case: CaseRef, tap: Tap) -> Result<Array> {
    case.dump(tap).map_err(anyhow::Error::msg)?;
    Ok(parity::npy::read_npy(&case.manifest.root.join(case.dump_path(tap)))?)
}

/// The token ids the reference recorded for a case (`input.input_ids`).
pub fn reference_input_ids(case: CaseRef) -> Result<Vec<u32>> {
    let ids = reference(case, Stage::InputIds.tap())?;
    let Some(ids) = ids.as_i64() else { bail!("input.input_ids is not an integer array") };
    ids.iter().map(|&id| u32::try_from(id).with_context(|| format!("token id {id} out of range"))).collect()
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

/// The loader Rust preprocessing follows for a case's `loader` in the manifest.
pub fn loader(loader: ImageLoader) -> Loader {
    match loader {
        ImageLoader::Processor => Loader::Processor,
        ImageLoader::LoadImage => Loader::LoadImage,
    }
}

/// Loads the model of a case's checkpoint in the case's compute dtype: resident, or streamed
/// layer by layer when the manifest says `stream = true`.
pub fn load_model(setup: &CaseSetup) -> Result<Model> {
    Model::load(&setup.model_dir, &setup.config, setup.residency, setup.dtype).with_context(|| {
        format!("building the {:?} {} model of {}", setup.residency, setup.dtype, setup.model_dir.display())
    })
}

/// A case's model ready to replay, or why it cannot run here.
pub enum Loaded<'m> {
    Model {
        setup: Box<CaseSetup<'m>>,
        model: Box<Model>,
    },
    /// The checkpoint is outside the repository and nobody named it: the reason names the flag
    /// and the variable that would. Never a pass.
    Skip(String),
    /// The checkpoint is named but cannot be used.
    Fail(String),
}

/// Loads the model of a case as [`load_model`] does, telling an absent checkpoint (skipped)
/// from a broken one (failed).
pub fn load_case<'m>(case: CaseRef<'m>, weights: Option<&Path>) -> Loaded<'m> {
    match case.weights(weights) {
        Ok(Weights::Found(dir)) if !dir.join("config.json").is_file() => {
            return Loaded::Skip(format!("checkpoint not on this machine: {} has no config.json", dir.display()));
        }
        Ok(Weights::Found(_)) => {}
        Ok(Weights::Absent(why)) => return Loaded::Skip(why),
        Err(e) => return Loaded::Fail(e),
    }
    match CaseSetup::new(case, weights).and_then(|setup| Ok((load_model(&setup)?, setup))) {
        Ok((model, setup)) => Loaded::Model { setup: Box::new(setup), model: Box::new(model) },
        Err(e) => Loaded::Fail(format!("loading the model failed: {e:#}")),
    }
}

/// Builds the model from any `VarBuilder` rooted at the checkpoint (tests use this to hand
/// in perturbed weights) and the case's config (which tests may have altered).
pub fn model_from(setup: &CaseSetup, vb: VarBuilder<'static>) -> Result<Model> {
    Model::new(&setup.config, vb).with_context(|| format!("building the model of {}", setup.model_dir.display()))
}

/// Multimodal positions: (t, h, w) rows of one position per token.
pub type Positions = [Vec<i64>; 3];

/// Changes a cache in place: after the prefill, or after a decode step given the cache as it
/// was before the step.
pub type CacheHook<'a> = &'a dyn Fn(&mut Cache);
/// See [`CacheHook`]; the first argument is the cache before the step.
pub type StepHook<'a> = &'a dyn Fn(&Cache, &mut Cache);

/// Injection points for tests: each maps what the pipeline computed before it is used.
/// Production runs use `Perturbations::default()`, which changes nothing.
#[derive(Default)]
pub struct Perturbations<'a> {
    /// Maps the vision tower's positions (rotary, interpolation) of the images' grids.
    pub vision_positions: Option<&'a dyn Fn(VisionPositions) -> VisionPositions>,
    /// Maps the text model's (t, h, w) positions of the prompt.
    pub text_positions: Option<&'a dyn Fn(Positions) -> Positions>,
    /// Hooks into Rust preprocessing (`FromImageFiles` runs).
    pub preprocess: Hooks<'a>,
    /// The cache right after the prefill, before it is recorded and decoding starts.
    pub cache_after_prefill: Option<CacheHook<'a>>,
    /// The cache a turn or a suffix continues from, right after it is restored (`continue`).
    pub cache_after_restore: Option<CacheHook<'a>>,
    /// The cache after each decode step.
    pub cache_after_step: Option<StepHook<'a>>,
    /// A batch's embeddings, positions and padding, before its prefill.
    pub batch_after_embed: Option<&'a dyn Fn(&mut EmbeddedBatch)>,
}

/// Runs a case in one mode, as the model would.
pub fn run(case: CaseRef, mode: Mode) -> Result<Run> {
    let setup = CaseSetup::new(case, None)?;
    let model = load_model(&setup)?;
    run_with(&setup, mode, &model, &Perturbations::default())
}

/// Runs a case in one mode on a given model.
///
/// A stage that fails keeps the taps recorded before it: the run still comes back, so the
/// report can name the first tap that is wrong and say why the later ones are missing
/// ([`Run::failure`]). Failing to prepare the inputs is an error.
pub fn run_with(setup: &CaseSetup, mode: Mode, model: &Model, perturb: &Perturbations) -> Result<Run> {
    match setup.case.request() {
        Request::Batch { .. } => crate::batch::run(setup, mode, model, perturb),
        Request::Turns { .. } | Request::PrefixCache { .. } => crate::parts::run(setup, mode, model, perturb),
        Request::Single { .. } | Request::Conversation { .. } => run_single(setup, mode, model, perturb),
    }
}

/// A case of one request in one pass.
fn run_single(setup: &CaseSetup, mode: Mode, model: &Model, perturb: &Perturbations) -> Result<Run> {
    let mut taps = Taps::recording();
    let inputs = Inputs::prepare(setup, mode, model, perturb, &mut taps)?;
    let stages = match mode {
        Mode::VisionTeacherForced => vision_teacher_forced(&inputs, &mut taps),
        Mode::LmTeacherForced => lm_teacher_forced(&inputs, &mut taps),
        Mode::RoutingTeacherForced => routing_teacher_forced(&inputs, &mut taps),
        Mode::FromPixelValues | Mode::FromImageFiles => end_to_end(&inputs, &mut taps),
        Mode::DecodeTeacherForced => decode_teacher_forced(&inputs, &mut taps),
        Mode::Generate => generate(&inputs, &mut taps),
        Mode::Continue | Mode::BatchInvariance => Ok(()),
    };
    let failure = stages.err().map(|e| format!("{e:#}"));
    let token_texts = token_texts(&setup.model_dir, &inputs.input_ids);
    Ok(Run {
        mode,
        taps: arrays(taps, None)?,
        own_reference: None,
        padding: Vec::new(),
        notes: Vec::new(),
        grids: inputs.positions.grids,
        videos: inputs.positions.videos,
        video_frames: inputs.video_frames,
        rotary: inputs.positions.rotary,
        merge: model.config.vision_config.spatial_merge_size,
        input_ids: inputs.input_ids,
        row_lengths: Vec::new(),
        token_texts,
        model_dir: setup.model_dir.clone(),
        failure,
    })
}

/// The tensors a recorder kept, as dump-comparable arrays keyed for `part`.
pub(crate) fn arrays(taps: Taps, part: Option<Part>) -> Result<BTreeMap<DumpKey, Array>> {
    taps.into_map().iter().map(|(&tap, t)| Ok((DumpKey { part, tap }, to_array(t)?))).collect()
}

/// A case's messages as the processor takes them: the image items' files resolved.
pub fn conversation(case: CaseRef, messages: &[&MessageSpec]) -> Conversation {
    let messages = messages
        .iter()
        .map(|m| {
            let role = match m.role {
                RoleSpec::System => Role::System,
                RoleSpec::User => Role::User,
                RoleSpec::Assistant => Role::Assistant,
            };
            let content = match &m.content {
                ContentSpec::Text(text) => Content::Text(text.clone()),
                ContentSpec::Items(items) => Content::Items(
                    items
                        .iter()
                        .map(|item| match item {
                            ItemSpec::Text { text } => Item::Text(text.clone()),
                            ItemSpec::Image { image } => Item::Image(case.manifest.root.join(case.image_path(image))),
                            ItemSpec::Video { video } => Item::Video {
                                path: case.manifest.root.join(case.video_path(video)),
                                fps: case.manifest.videos[video.as_str()].fps,
                            },
                        })
                        .collect(),
                ),
            };
            Message { role, content }
        })
        .collect();
    Conversation { messages, template_args: case.case.chat_template_kwargs.clone().into_iter().collect() }
}

/// The conversation of a case of one request (a prompt after its images, or its messages).
pub fn single_conversation(case: CaseRef) -> Result<Conversation> {
    match case.request() {
        Request::Single { prompt, .. } => {
            let images: Vec<PathBuf> = case.image_paths().iter().map(|p| case.manifest.root.join(p)).collect();
            let refs: Vec<&Path> = images.iter().map(PathBuf::as_path).collect();
            Ok(Conversation::single(&refs, prompt))
        }
        Request::Conversation { messages } => Ok(conversation(case, &messages.iter().collect::<Vec<_>>())),
        _ => bail!("case {case} is not one request"),
    }
}

/// The case's processor: the checkpoint's, opening images as the case's loader does.
pub fn processor(case: CaseRef, model_dir: &Path) -> Result<Processor> {
    let mut processor = Processor::from_dir(model_dir)?;
    processor.loader = loader(case.case.loader);
    Ok(processor)
}

/// What a run starts from, and what its stages need: the case, the model, the test's
/// perturbations and the prompt's inputs.
struct Inputs<'a> {
    case: CaseRef<'a>,
    model: &'a Model,
    perturb: &'a Perturbations<'a>,
    input_ids: Vec<u32>,
    /// The images' grids.
    grids: Vec<Grid>,
    /// The videos' grids.
    video_grids: Vec<Grid>,
    /// The vision tower's input: the images' patch rows, then the videos'.
    pixels: Option<Tensor>,
    /// The vision tower's positions for the grids (after the test's perturbation).
    positions: VisionPositions,
    /// The (frames, height, width) of each video's decoded frames (from the files only).
    video_frames: Vec<(usize, usize, usize)>,
}

impl<'a> Inputs<'a> {
    /// The inputs from the reference dumps, or in `FromImageFiles` from the image files and
    /// the prompt through Rust preprocessing (recorded as the `input.*` taps).
    fn prepare(
        setup: &CaseSetup<'a>,
        mode: Mode,
        model: &'a Model,
        perturb: &'a Perturbations<'a>,
        taps: &mut Taps,
    ) -> Result<Inputs<'a>> {
        let case = setup.case;
        let from_files = match mode {
            Mode::FromImageFiles | Mode::Generate => true,
            // Teacher forcing needs the reference inputs whole; a case that keeps one row of
            // its pixels (a 27B-size case), or leaves them out, prefills from the files instead.
            Mode::DecodeTeacherForced => {
                [(Stage::ImageGridThw, Stage::PixelValues), (Stage::VideoGridThw, Stage::PixelValuesVideos)]
                    .into_iter()
                    .any(|(grid, pixels)| {
                        case.records(grid.tap())
                            && (!case.records(pixels.tap()) || case.row_pick(pixels.tap()).is_some())
                    })
            }
            _ => false,
        };
        let mut video_frames = Vec::new();
        let (input_ids, grids, video_grids, pixels) = if from_files {
            let processed = processor(case, &setup.model_dir)?.process_conversation_with(
                &single_conversation(case)?,
                GenerationPrompt::Open,
                &perturb.preprocess,
            )?;
            record_inputs(taps, &processed)?;
            video_frames = processed.video_frames.iter().map(|f| (f.frames, f.height, f.width)).collect();
            let pixels = vision_rows([processed.pixel_values, processed.pixel_values_videos])?;
            (processed.input_ids, processed.grids, processed.video_grids, pixels)
        } else {
            let ids = reference_input_ids(case)?;
            let grids_at = |tap: Tap| -> Result<Vec<Grid>> {
                Ok(match recorded(case, tap)? {
                    Some(thw) => grids_of(&thw)?,
                    None => Vec::new(),
                })
            };
            let pixels_at =
                |tap: Tap| -> Result<Option<Tensor>> { recorded(case, tap)?.map(|p| to_tensor(&p)).transpose() };
            let pixels =
                vision_rows([pixels_at(Stage::PixelValues.tap())?, pixels_at(Stage::PixelValuesVideos.tap())?])?;
            (ids, grids_at(Stage::ImageGridThw.tap())?, grids_at(Stage::VideoGridThw.tap())?, pixels)
        };
        let positions = VisionPositions::with_videos(&model.config.vision_config, &grids, &video_grids);
        let positions = match perturb.vision_positions {
            Some(f) => f(positions),
            None => positions,
        };
        Ok(Inputs { case, model, perturb, input_ids, grids, video_grids, pixels, positions, video_frames })
    }

    /// The text model's (t, h, w) positions of the prompt (after the test's perturbation).
    fn text_positions(&self) -> Result<Positions> {
        let p = self.model.positions_with_videos(&self.input_ids, &self.grids, &self.video_grids)?;
        Ok(match self.perturb.text_positions {
            Some(f) => f(p),
            None => p,
        })
    }

    /// The pixels, which a vision run cannot do without.
    fn pixels(&self) -> Result<&Tensor> {
        match &self.pixels {
            Some(pixels) => Ok(pixels),
            None => bail!("case {} has no recorded input.pixel_values or input.pixel_values_videos", self.case),
        }
    }

    /// The reference's greedy tokens, which the decode modes cannot do without.
    fn reference_tokens(&self) -> Result<Array> {
        reference_tokens(self.case)
    }
}

/// The reference's greedy tokens of a case, which the decode modes cannot do without.
pub(crate) fn reference_tokens(case: CaseRef) -> Result<Array> {
    match recorded(case, Stage::GenTokens.tap())? {
        Some(tokens) => Ok(tokens),
        None => bail!("case {case} has no recorded gen.tokens: set `generate` and capture it"),
    }
}

/// A reference dump of a case when the case recorded it.
pub(crate) fn recorded(case: CaseRef, tap: Tap) -> Result<Option<Array>> {
    if case.records(tap) {
        reference(case, tap).map(Some)
    } else {
        Ok(None)
    }
}

/// The vision tower alone, fed the reference pixels.
fn vision_teacher_forced(inputs: &Inputs, taps: &mut Taps) -> Result<()> {
    inputs.model.vision.forward(inputs.pixels()?, &inputs.positions, taps)?;
    Ok(())
}

/// The text model alone, fed the reference projector rows as its image embeddings.
fn lm_teacher_forced(inputs: &Inputs, taps: &mut Taps) -> Result<()> {
    let projector = recorded(inputs.case, Stage::VisionProjector.tap())?.map(|p| to_tensor(&p)).transpose()?;
    let text = inputs.text_positions()?;
    inputs.model.forward_from_image_embeds(&inputs.input_ids, projector.as_ref(), &text, taps)?;
    Ok(())
}

/// The text model fed the reference projector rows, each MoE layer's experts chosen as the
/// reference chose them (its recorded `moe.{i}.top_ids` and `top_weights`).
fn routing_teacher_forced(inputs: &Inputs, taps: &mut Taps) -> Result<()> {
    let case = inputs.case;
    let projector = recorded(case, Stage::VisionProjector.tap())?.map(|p| to_tensor(&p)).transpose()?;
    let mut routing = BTreeMap::new();
    for layer in 0..inputs.model.config.text_config.num_hidden_layers {
        let ids = recorded(case, Stage::MoeTopIds.at(layer))?;
        let weights = recorded(case, Stage::MoeTopWeights.at(layer))?;
        if let (Some(ids), Some(weights)) = (ids, weights) {
            let forced = Routing::new(&to_tensor(&ids)?, &to_tensor(&weights)?)
                .with_context(|| format!("case {case}: the reference's routing of layer {layer}"))?;
            routing.insert(layer, forced);
        }
    }
    ensure!(!routing.is_empty(), "case {case} recorded no moe.*.top_ids and moe.*.top_weights to route by");
    let text = inputs.text_positions()?;
    inputs.model.forward_routed(&inputs.input_ids, projector.as_ref(), &text, &routing, taps)?;
    Ok(())
}

/// The Rust vision tower into the Rust text model, as a request runs.
fn end_to_end(inputs: &Inputs, taps: &mut Taps) -> Result<()> {
    let image_embeds = match &inputs.pixels {
        Some(pixels) => Some(inputs.model.vision.forward(pixels, &inputs.positions, taps)?),
        None => None,
    };
    let text = inputs.text_positions()?;
    inputs.model.forward_from_image_embeds(&inputs.input_ids, image_embeds.as_ref(), &text, taps)?;
    Ok(())
}

/// The prefill into a new cache, then the reference's greedy tokens fed back one decode step
/// at a time (`generate`'s loop, teacher-forced): records the cache after the prefill
/// (`cache.*`) and the logits of every step, as `gen.logits` or, for a case that keeps the
/// reference's top k, as the Rust logits at the reference's top ids (`gen.top_logits`) and
/// Rust's own top-k ids (`gen.top_ids`).
fn decode_teacher_forced(inputs: &Inputs, taps: &mut Taps) -> Result<()> {
    let tokens: Vec<u32> = inputs.reference_tokens()?.as_i64().unwrap_or_default().iter().map(|&t| t as u32).collect();
    let model = inputs.model;
    let mut cache = model.new_cache();
    let pixels = inputs.pixels.as_ref().map(|p| (p, &inputs.positions));
    let mut logits = vec![model.prefill(&inputs.input_ids, pixels, &mut cache, &mut Taps::disabled())?];
    if let Some(hook) = inputs.perturb.cache_after_prefill {
        hook(&mut cache);
    }
    cache.record(taps);
    for &token in tokens.iter().take(tokens.len().saturating_sub(1)) {
        let before = inputs.perturb.cache_after_step.map(|_| cache.clone());
        logits.push(model.decode_step(token, &mut cache)?);
        if let (Some(hook), Some(before)) = (inputs.perturb.cache_after_step, before) {
            hook(&before, &mut cache);
        }
    }
    record_step_logits(inputs, &Tensor::stack(&logits, 0)?, taps)
}

/// Rust's own greedy generation from its own prefill, for as many steps as the reference
/// made (stopping early at an end-of-sequence token, as the reference would): `gen.tokens`.
fn generate(inputs: &Inputs, taps: &mut Taps) -> Result<()> {
    let steps = inputs.reference_tokens()?.shape.first().copied().unwrap_or(0);
    let eos = inputs.model.config.text_config.eos_token_id.as_ref().map(|e| e.ids()).unwrap_or_default();
    let pixels = inputs.pixels.as_ref().map(|p| (p, &inputs.positions));
    let mut recorder = Taps::recording();
    let generation = inputs.model.generate_greedy(&inputs.input_ids, pixels, steps, &eos, &mut recorder)?;
    let tokens: Vec<i64> = generation.tokens.iter().map(|&t| i64::from(t)).collect();
    taps.record(Stage::GenTokens.tap(), &Tensor::new(tokens, &Device::Cpu)?);
    Ok(())
}

/// Records each step's logits [steps, vocab] as the case keeps them: whole (`gen.logits`), or
/// for a case with `gen_top_k`, Rust's logits at the reference's top ids (`gen.top_logits`,
/// compared value for value) and Rust's own top-k ids (`gen.top_ids`, compared exactly).
fn record_step_logits(inputs: &Inputs, logits: &Tensor, taps: &mut Taps) -> Result<()> {
    let Some(top_ids) = recorded(inputs.case, Stage::GenTopIds.tap())? else {
        taps.record(Stage::GenLogits.tap(), logits);
        return Ok(());
    };
    let k = top_ids.shape.get(1).copied().unwrap_or(0);
    let rows: Vec<Vec<f32>> = logits.to_vec2()?;
    let (at_reference_ids, own_ids) = top_k_record(&rows, top_ids.as_i64().unwrap_or_default(), k);
    let steps = rows.len();
    taps.record(Stage::GenTopLogits.tap(), &Tensor::from_vec(at_reference_ids, (steps, k), &Device::Cpu)?);
    taps.record(Stage::GenTopIds.tap(), &Tensor::from_vec(own_ids, (steps, k), &Device::Cpu)?);
    Ok(())
}

/// Per step (a row of logits): the logits at the reference's `k` top ids of that step
/// (`reference_ids`, [steps, k] flattened; NaN for an id outside the vocabulary, so it fails)
/// and Rust's own top-k ids.
fn top_k_record(rows: &[Vec<f32>], reference_ids: &[i64], k: usize) -> (Vec<f32>, Vec<i64>) {
    let mut at_reference_ids = Vec::with_capacity(rows.len() * k);
    let mut own_ids = Vec::with_capacity(rows.len() * k);
    for (step, row) in rows.iter().enumerate() {
        for &id in reference_ids.iter().skip(step * k).take(k) {
            at_reference_ids.push(usize::try_from(id).ok().and_then(|i| row.get(i)).copied().unwrap_or(f32::NAN));
        }
        own_ids.extend(top_k(row, k).into_iter().map(|i| i as i64));
    }
    (at_reference_ids, own_ids)
}

/// The indices of the `k` largest values, largest first; of equal values the lower index
/// first, as `torch.topk` on a CPU orders them.
fn top_k(values: &[f32], k: usize) -> Vec<usize> {
    let mut order: Vec<usize> = (0..values.len()).collect();
    order.sort_by(|&a, &b| values[b].total_cmp(&values[a]).then(a.cmp(&b)));
    order.truncate(k);
    order
}

/// Each token decoded on its own, for naming positions in reports; `None` without a tokenizer.
pub(crate) fn token_texts(model_dir: &Path, ids: &[u32]) -> Option<Vec<String>> {
    let tokenizer = tokenizers::Tokenizer::from_file(model_dir.join("tokenizer.json")).ok()?;
    ids.iter().map(|&id| tokenizer.decode(&[id], false).ok()).collect()
}

/// The vision tower's input rows: the images' (if any), then the videos' (if any).
fn vision_rows(parts: [Option<Tensor>; 2]) -> Result<Option<Tensor>> {
    let parts: Vec<Tensor> = parts.into_iter().flatten().collect();
    Ok(match parts.len() {
        0 => None,
        1 => parts.into_iter().next(),
        _ => Some(Tensor::cat(&parts, 0)?),
    })
}

/// Records what preprocessing produced under the `input.*` taps.
pub(crate) fn record_inputs(taps: &mut Taps, p: &Processed) -> Result<()> {
    let ids: Vec<i64> = p.input_ids.iter().map(|&i| i64::from(i)).collect();
    taps.record(Stage::InputIds.tap(), &Tensor::new(ids, &Device::Cpu)?);
    let thw = |grids: &[Grid]| -> Result<Tensor> {
        let values: Vec<i64> = grids.iter().flat_map(|g| [g.t as i64, g.h as i64, g.w as i64]).collect();
        Ok(Tensor::from_vec(values, (grids.len(), 3), &Device::Cpu)?)
    };
    if let Some(pixels) = &p.pixel_values {
        taps.record(Stage::ImageGridThw.tap(), &thw(&p.grids)?);
        taps.record(Stage::PixelValues.tap(), pixels);
    }
    if let Some(pixels) = &p.pixel_values_videos {
        taps.record(Stage::VideoGridThw.tap(), &thw(&p.video_grids)?);
        if taps.enabled() {
            let rgb: Vec<u8> = p.video_frames.iter().flat_map(|f| f.rgb.iter().copied()).collect();
            let pixels = rgb.len() / 3;
            taps.record(Stage::VideoFrames.tap(), &Tensor::from_vec(rgb, (pixels, 3), &Device::Cpu)?);
        }
        taps.record(Stage::PixelValuesVideos.tap(), pixels);
    }
    Ok(())
}

impl Run {
    /// The run's images, patches and tokens as plain data, for naming an element of a tap
    /// in model terms (`parity::locate`).
    pub fn locator(&self) -> Locator<'_> {
        Locator {
            grids: self.grids.iter().map(|g| (g.t, g.h, g.w)).collect(),
            videos: self.videos,
            video_frames: self.video_frames.clone(),
            merge: self.merge,
            rotary: &self.rotary,
            input_ids: &self.input_ids,
            token_texts: self.token_texts.as_deref(),
            row_lengths: &self.row_lengths,
        }
    }
}

/// The manifest at the workspace root (for tests).
pub fn workspace_manifest() -> Result<Manifest> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    Ok(Manifest::load(&root.join("fixtures.toml"))?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn integer_tensors_become_i64_arrays_and_float_tensors_f32_arrays() {
        let ids = Tensor::new(&[3u32, 613], &Device::Cpu).unwrap();
        let bytes = Tensor::new(&[7u8], &Device::Cpu).unwrap();
        let floats = Tensor::new(&[[0.5f32, -1.0]], &Device::Cpu).unwrap().to_dtype(DType::BF16).unwrap();
        assert_eq!(to_array(&ids).unwrap(), Array::i64(vec![2], vec![3, 613]), "u32 token ids");
        assert_eq!(to_array(&bytes).unwrap(), Array::i64(vec![1], vec![7]), "u8");
        assert_eq!(to_array(&floats).unwrap(), Array::f32(vec![1, 2], vec![0.5, -1.0]), "bf16 activations");
    }

    #[test]
    fn arrays_become_tensors_of_their_shape_and_dtype() {
        let floats = to_tensor(&Array::f32(vec![2, 1], vec![0.25, 4.0])).unwrap();
        assert_eq!((floats.dims(), floats.dtype()), (&[2, 1][..], DType::F32), "an f32 array");
        assert_eq!(to_array(&floats).unwrap(), Array::f32(vec![2, 1], vec![0.25, 4.0]), "the f32 values");
        let ints = to_tensor(&Array::i64(vec![3], vec![1, 2, 3])).unwrap();
        assert_eq!((ints.dims(), ints.dtype()), (&[3][..], DType::I64), "an i64 array");
    }

    #[test]
    fn image_grids_are_read_as_one_t_h_w_row_per_image() {
        let thw = Array::i64(vec![2, 3], vec![1, 8, 8, 1, 6, 12]);
        let grids: Vec<(usize, usize, usize)> = grids_of(&thw).unwrap().iter().map(|g| (g.t, g.h, g.w)).collect();
        assert_eq!(grids, [(1, 8, 8), (1, 6, 12)], "two images");
    }

    #[test]
    fn image_grids_of_another_shape_or_dtype_are_errors() {
        let bad = [
            (Array::i64(vec![6], vec![1, 8, 8, 1, 6, 12]), "has shape [6], not [images, 3]"),
            (Array::i64(vec![3, 2], vec![1, 8, 8, 1, 6, 12]), "has shape [3, 2], not [images, 3]"),
            (Array::f32(vec![1, 3], vec![1.0, 8.0, 8.0]), "is not an integer array"),
        ];
        for (thw, expected) in bad {
            let err = grids_of(&thw).err().map(|e| e.to_string()).unwrap_or_default();
            assert!(err.contains(expected), "{thw:?}: the error {err:?} does not say {expected:?}");
        }
    }

    #[test]
    fn tokens_are_decoded_one_by_one_with_the_checkpoints_tokenizer() {
        let manifest = workspace_manifest().unwrap();
        let setup = CaseSetup::new(manifest.case("chelsea").unwrap(), None).unwrap();
        let texts = token_texts(&setup.model_dir, &[609, 613, 198]);
        assert_eq!(texts, Some(["<|im_start|>", "<|image_pad|>", "\n"].map(String::from).to_vec()), "three tokens");
        assert_eq!(
            token_texts(&manifest.root.join("fixtures/images"), &[609]),
            None,
            "a folder without tokenizer.json"
        );
    }

    #[test]
    fn a_run_hands_its_images_patches_and_tokens_to_the_locator() {
        let texts = vec!["a".to_owned()];
        let run = Run {
            mode: Mode::VisionTeacherForced,
            taps: BTreeMap::new(),
            own_reference: None,
            padding: Vec::new(),
            notes: Vec::new(),
            grids: vec![Grid { t: 1, h: 2, w: 4 }],
            videos: 0,
            video_frames: Vec::new(),
            rotary: vec![[1, 3]],
            merge: 2,
            input_ids: vec![5],
            row_lengths: Vec::new(),
            token_texts: Some(texts.clone()),
            model_dir: PathBuf::new(),
            failure: None,
        };
        let l = run.locator();
        assert_eq!(
            (l.grids, l.merge, l.rotary, l.input_ids, l.token_texts),
            (vec![(1, 2, 4)], 2, &[[1, 3]][..], &[5][..], Some(&texts[..])),
            "the locator's data"
        );
    }

    #[test]
    fn top_k_orders_largest_first_and_equal_values_by_the_lower_index() {
        assert_eq!(top_k(&[0.5, 2.0, -1.0, 2.0, 1.0], 3), [1, 3, 4], "two equal maxima, then the next");
        assert_eq!(top_k(&[3.0, 1.0], 5), [0, 1], "k past the length keeps every index");
    }

    #[test]
    fn each_step_is_read_at_its_own_reference_ids_and_ranked_by_its_own_logits() {
        let rows = vec![vec![0.0, 1.0, 2.0, 3.0], vec![9.0, 8.0, 7.0, 6.0]];
        // The reference's top 2 of step 0 are ids 3 and 2, of step 1 ids 0 and 2 (as if it
        // disagreed with Rust at rank 1); 7 is outside the vocabulary.
        let (values, ids) = top_k_record(&rows, &[3, 2, 0, 7], 2);
        assert_eq!(&values[..3], [3.0, 2.0, 9.0], "logits at each step's own reference ids");
        assert!(values[3].is_nan(), "an id outside the vocabulary reads NaN, which never passes");
        assert_eq!(ids, [3, 2, 0, 1], "Rust's own top 2 of each step");
    }
}
