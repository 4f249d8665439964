//! The whole model, mirroring `Qwen3_5Model` + `Qwen3_5ForConditionalGeneration.forward`:
//! the vision tower's projector rows replace the `<|image_pad|>` and `<|video_pad|>`
//! embeddings, multimodal positions are computed from the token ids and the image and video
//! grids, and the text model runs —
//! over a whole prompt, or with a [`Cache`]: a prompt prefilled in one pass or in chunks,
//! then decode steps (greedy generation, as `GenerationMixin.generate` with `do_sample=False`).

use std::collections::BTreeMap;
use std::ops::Range;
use std::sync::Arc;

use anyhow::{bail, ensure, Result};
use candle_core::{Device, IndexOp, Tensor};
use candle_nn::VarBuilder;

use crate::config::Config;
use crate::taps::Taps;
use contract::{ComputeDtype, Stage};

pub use crate::stack::Residency;
use crate::text::cache::Cache;
use crate::text::moe::Routing;
use crate::text::TextModel;
use crate::vision::positions::Grid;
use crate::vision::{VisionModel, VisionPositions};
use crate::weights::Checkpoint;

/// The placeholder tokens whose runs the rope index reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct VisionTokens {
    /// `<|image_pad|>`.
    pub image: u32,
    /// `<|video_pad|>`; `None` when the prompt can hold no video.
    pub video: Option<u32>,
}

/// Multimodal RoPE positions, mirroring `Qwen3_5Model.get_rope_index` for one sequence.
///
/// Runs of text tokens advance all three axes together. Each run of image tokens takes the
/// next image grid and gets (t, h, w) positions on its merged grid, offset by the current
/// position; the text after it resumes at that offset + max(h, w) / merge, i.e. one past
/// the image's largest position. Returns [t, h, w] rows of length seq.
pub fn rope_index(input_ids: &[u32], image_token_id: u32, grids: &[Grid], merge: usize) -> Result<[Vec<i64>; 3]> {
    rope_index_with_videos(input_ids, VisionTokens { image: image_token_id, video: None }, grids, &[], merge)
}

/// [`rope_index`] for a prompt with videos too. A video of t temporal patches is t grids of
/// one frame each (`repeat_interleave(video_grid_thw, t)` with t set to 1, transformers 5.23
/// since PR #44474): each frame's run of video tokens, between its timestamp text and the
/// next, takes the next frame grid, so within a frame t stays at the current position and time
/// advances only through the text between frames. The runs are those of
/// `itertools.groupby` over the token types (text 0, image 1, video 2).
pub fn rope_index_with_videos(
    input_ids: &[u32],
    tokens: VisionTokens,
    image_grids: &[Grid],
    video_grids: &[Grid],
    merge: usize,
) -> Result<[Vec<i64>; 3]> {
    let frames: Vec<Grid> =
        video_grids.iter().flat_map(|g| std::iter::repeat_n(Grid { t: 1, h: g.h, w: g.w }, g.t)).collect();
    let kind = |id: u32| {
        if id == tokens.image {
            1
        } else if Some(id) == tokens.video {
            2
        } else {
            0
        }
    };
    let mut rows: [Vec<i64>; 3] = Default::default();
    let (mut images_left, mut frames_left) = (image_grids.iter(), frames.iter());
    let mut current: i64 = 0;
    let mut i = 0;
    while i < input_ids.len() {
        let this = kind(input_ids[i]);
        let run = input_ids[i..].iter().take_while(|&&id| kind(id) == this).count();
        if this != 0 {
            let (what, g) = if this == 1 {
                let Some(g) = images_left.next() else {
                    bail!(
                        "the prompt has more runs of image tokens than the {} image grid(s) given",
                        image_grids.len()
                    );
                };
                ("image", g)
            } else {
                let Some(g) = frames_left.next() else {
                    bail!(
                        "the prompt has more runs of video tokens than the {} video frame(s) given ({} video grid(s))",
                        frames.len(),
                        video_grids.len()
                    );
                };
                ("video frame", g)
            };
            let (t, h, w) = (g.t, g.h / merge, g.w / merge);
            ensure!(
                run == t * h * w,
                "a run of {run} {what} tokens at position {i} does not match its {what} grid {t}×{h}×{w} = {} tokens",
                t * h * w
            );
            for ti in 0..t {
                for hi in 0..h {
                    for wi in 0..w {
                        rows[0].push(current + ti as i64);
                        rows[1].push(current + hi as i64);
                        rows[2].push(current + wi as i64);
                    }
                }
            }
            current += h.max(w) as i64;
        } else {
            for k in 0..run as i64 {
                for row in rows.iter_mut() {
                    row.push(current + k);
                }
            }
            current += run as i64;
        }
        i += run;
    }
    ensure!(
        images_left.next().is_none(),
        "{} image grid(s) given but fewer runs of image tokens in the prompt",
        image_grids.len()
    );
    ensure!(
        frames_left.next().is_none(),
        "{} video frame(s) given but fewer runs of video tokens in the prompt",
        frames.len()
    );
    Ok(rows)
}

/// `rope_deltas` of `get_rope_index` for one sequence: its largest position (on any axis) + 1 −
/// its length. Positions after the prompt are `index + rope delta`.
pub fn rope_delta(positions: &[Vec<i64>; 3]) -> i64 {
    let seq = positions[0].len() as i64;
    positions.iter().flatten().max().map_or(0, |max| max + 1 - seq)
}

/// Replaces the rows of `embeds` at `<|image_pad|>` positions, in order, with the rows of
/// `image_embeds` (`masked_scatter` in the reference). A count mismatch is an error naming
/// both counts.
pub fn splice_image_embeds(
    embeds: &Tensor,
    input_ids: &[u32],
    image_token_id: u32,
    image_embeds: &Tensor,
) -> Result<Tensor> {
    splice_embeds(embeds, input_ids, (image_token_id, "Image", "<|image_pad|>"), image_embeds)
}

/// [`splice_image_embeds`] for any placeholder: `token` is its id, its kind for the message
/// ("Image", "Video") and its text.
fn splice_embeds(
    embeds: &Tensor,
    input_ids: &[u32],
    token: (u32, &str, &str),
    image_embeds: &Tensor,
) -> Result<Tensor> {
    let (token_id, kind, text) = token;
    let positions: Vec<usize> =
        input_ids.iter().enumerate().filter(|(_, &id)| id == token_id).map(|(p, _)| p).collect();
    let rows = image_embeds.dim(0)?;
    ensure!(
        positions.len() == rows,
        "{kind} features and {} tokens do not match: the prompt has {} {text} tokens, the vision tower gave {rows} rows",
        kind.to_lowercase(),
        positions.len()
    );
    let mut pieces = Vec::new();
    let mut next_image_row = 0;
    let mut start = 0;
    for &p in positions.iter().chain(std::iter::once(&input_ids.len())) {
        if p > start {
            pieces.push(embeds.narrow(0, start, p - start)?);
        }
        if p < input_ids.len() {
            pieces.push(image_embeds.i(next_image_row..next_image_row + 1)?);
            next_image_row += 1;
        }
        start = p + 1;
    }
    Ok(Tensor::cat(&pieces, 0)?)
}

/// A prompt ready for the text model: what `Qwen3_5Model.forward` computes before
/// `language_model` runs.
pub struct EmbeddedPrompt {
    /// The token embeddings with the image rows spliced in: [seq, hidden].
    pub embeds: Tensor,
    /// The multimodal positions (t, h, w): [3][seq].
    pub positions: [Vec<i64>; 3],
    /// See [`rope_delta`].
    pub rope_delta: i64,
}

impl EmbeddedPrompt {
    /// The number of tokens.
    pub fn len(&self) -> usize {
        self.positions[0].len()
    }

    /// Whether the prompt has no tokens.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// One request of a batch: its token ids and the patch grids of its images (whose pixels the
/// batch passes together, request after request, as the processor concatenates them).
pub struct Request<'a> {
    pub input_ids: &'a [u32],
    pub grids: &'a [Grid],
}

/// A left-padded batch ready for the text model: what `Qwen3_5Model.forward` computes before
/// `language_model` runs on a processor batch with `padding_side="left"`.
pub struct EmbeddedBatch {
    /// The token embeddings with the image rows spliced in, each row left-padded with the
    /// padding token's embedding: [batch, seq, hidden].
    pub embeds: Tensor,
    /// Each row's multimodal positions (t, h, w) [3][seq]; padding at 0, as `get_rope_index`
    /// leaves the masked positions.
    pub positions: Vec<[Vec<i64>; 3]>,
    /// How many padding tokens each row starts with: the keys full attention masks out, and
    /// what a row's decode positions discount (`create_causal_mask` and the cumulative sum of
    /// the attention mask). Kept in each row's cache.
    pub padding: Vec<usize>,
    /// How many leading tokens of each row are zeroed before every Gated DeltaNet layer
    /// (`apply_mask_to_padding_states`). Equal to `padding`; a field of its own because
    /// transformers builds this mask apart (`_update_linear_attn_mask`), and that is the one
    /// it has dropped (PR #46773, PR #47087): a test can take one mask away and not the other.
    pub linear_padding: Vec<usize>,
    /// Each row's rope delta, from its own tokens (see [`rope_delta`]).
    pub rope_deltas: Vec<i64>,
}

impl EmbeddedBatch {
    /// The number of rows.
    pub fn rows(&self) -> usize {
        self.padding.len()
    }
}

/// The result of [`Model::generate_greedy_batch`].
#[derive(Debug, Clone)]
pub struct BatchGeneration {
    /// Per row, the token of each step (the padding token after a row's end-of-sequence token,
    /// as `generate` fills a finished row).
    pub tokens: Vec<Vec<u32>>,
    /// The logits of each step, one [batch, vocab] per step.
    pub logits: Vec<Tensor>,
}

/// The result of [`Model::generate_greedy`].
#[derive(Debug, Clone)]
pub struct Generation {
    /// The generated tokens, the EOS that stopped generation included.
    pub tokens: Vec<u32>,
    /// The logits each token was chosen from, one [vocab] per token: step 0 is the prefill's
    /// last position, step i the decode step of token i − 1.
    pub logits: Vec<Tensor>,
}

/// The index of the largest logit, the first of equal ones (`torch.argmax`); `None` when all
/// are NaN or there are none.
pub fn argmax(logits: &[f32]) -> Option<u32> {
    let mut best: Option<(usize, f32)> = None;
    for (i, &v) in logits.iter().enumerate() {
        if !v.is_nan() && best.is_none_or(|(_, b)| v > b) {
            best = Some((i, v));
        }
    }
    best.map(|(i, _)| i as u32)
}

/// `Qwen3_5ForConditionalGeneration` for a single prompt.
pub struct Model {
    pub vision: VisionModel,
    pub text: TextModel,
    pub config: Config,
}

impl Model {
    /// The one way to load a checkpoint folder (`config.json` read by the caller, shards
    /// found by [`crate::weights::safetensors_files`]), resident, mapped or streamed ([`Residency`]), computing in
    /// `dtype`: f32, or bf16 as the reference runs with `from_pretrained(dtype=torch.bfloat16)`
    /// (see [`crate::precision`]).
    pub fn load(dir: &std::path::Path, config: &Config, residency: Residency, dtype: ComputeDtype) -> Result<Self> {
        let checkpoint = Arc::new(Checkpoint::open(dir)?);
        match residency {
            Residency::Resident => Model::new(config, crate::weights::builder_in(checkpoint, dtype)?),
            Residency::Mapped => Model::new(config, crate::weights::builder_mapped(checkpoint, dtype)?),
            Residency::Streamed => Model::streamed(config, checkpoint, dtype),
        }
    }

    /// From any `VarBuilder` rooted at the checkpoint (tensor names as stored), computing in
    /// its dtype; tests hand in perturbed weights this way.
    pub fn new(config: &Config, vb: VarBuilder<'static>) -> Result<Self> {
        crate::precision::check_compute_dtype(vb.dtype())?;
        Ok(Model {
            vision: VisionModel::new(&config.vision_config, vb.pp("model.visual"))?,
            text: TextModel::new(&config.text_config, config.tie_word_embeddings, vb)?,
            config: config.clone(),
        })
    }

    /// The model streamed from a mapped checkpoint: at most one vision block or one decoder
    /// layer is in memory at a time (see [`crate::stack`]), so a 27B checkpoint runs in the
    /// memory of one layer plus activations.
    pub fn streamed(config: &Config, checkpoint: Arc<Checkpoint>, dtype: ComputeDtype) -> Result<Self> {
        let vb = crate::weights::builder_in(checkpoint.clone(), dtype)?;
        Ok(Model {
            vision: VisionModel::load(&config.vision_config, vb.pp("model.visual"), Residency::Streamed)?,
            text: TextModel::streamed(&config.text_config, config.tie_word_embeddings, checkpoint, dtype)?,
            config: config.clone(),
        })
    }

    /// Multimodal positions of a prompt (see [`rope_index`]).
    pub fn positions(&self, input_ids: &[u32], grids: &[Grid]) -> Result<[Vec<i64>; 3]> {
        self.positions_with_videos(input_ids, grids, &[])
    }

    /// Multimodal positions of a prompt with images and videos (see [`rope_index_with_videos`]).
    pub fn positions_with_videos(
        &self,
        input_ids: &[u32],
        image_grids: &[Grid],
        video_grids: &[Grid],
    ) -> Result<[Vec<i64>; 3]> {
        self.check_length(input_ids.len(), "the prompt")?;
        let merge = self.config.vision_config.spatial_merge_size;
        rope_index_with_videos(input_ids, self.vision_tokens(), image_grids, video_grids, merge)
    }

    /// The image and video placeholder tokens of the checkpoint.
    pub fn vision_tokens(&self) -> VisionTokens {
        VisionTokens { image: self.config.image_token_id, video: Some(self.config.video_token_id) }
    }

    /// input_ids [seq] and, for a prompt with images, pixel_values [patches, C·T·P·P] with
    /// the images' vision positions → the [`EmbeddedPrompt`]: the
    /// vision tower runs, its rows are spliced into the embeddings, the positions and rope delta
    /// are computed. Records `vision.*`, `input.position_ids` and `lm.image_embeds`.
    pub fn prompt(
        &self,
        input_ids: &[u32],
        pixel_values: Option<(&Tensor, &VisionPositions)>,
        taps: &mut Taps,
    ) -> Result<EmbeddedPrompt> {
        ensure!(!input_ids.is_empty(), "the prompt has no tokens");
        let (images, videos) = pixel_values.map_or((&[][..], &[][..]), |(_, p)| (p.image_grids(), p.video_grids()));
        let positions = self.positions_with_videos(input_ids, images, videos)?;
        let image_embeds = match pixel_values {
            Some((pixels, vision_positions)) => Some(self.vision.forward(pixels, vision_positions, taps)?),
            None => None,
        };
        let embeds = self.prompt_embeds(input_ids, image_embeds.as_ref(), &positions, taps)?;
        Ok(EmbeddedPrompt { embeds, rope_delta: rope_delta(&positions), positions })
    }

    /// The embeddings of input_ids [seq] with the rows of `image_embeds` spliced in → [seq,
    /// hidden]; records `input.position_ids` (checking there is one column per token) and
    /// `lm.image_embeds`.
    fn prompt_embeds(
        &self,
        input_ids: &[u32],
        image_embeds: Option<&Tensor>,
        positions: &[Vec<i64>; 3],
        taps: &mut Taps,
    ) -> Result<Tensor> {
        let image_token = self.config.image_token_id;
        ensure!(
            positions.iter().all(|row| row.len() == input_ids.len()),
            "positions have {} columns for {} tokens",
            positions[0].len(),
            input_ids.len()
        );
        if taps.enabled() {
            let flat: Vec<i64> = positions.iter().flatten().copied().collect();
            taps.record(Stage::PositionIds.tap(), &Tensor::from_vec(flat, (3, input_ids.len()), &Device::Cpu)?);
        }
        let video_token = self.config.video_token_id;
        let mut embeds = self.text.embed(input_ids)?;
        if let Some(vision_rows) = image_embeds {
            // `.to(inputs_embeds.device, inputs_embeds.dtype)`: a reference projector (f32 dump)
            // fed to a bf16 model is rounded as the model's own would be.
            let vision_rows = vision_rows.to_dtype(embeds.dtype())?;
            // The rows are the images' then the videos' (the reference's two tower calls); the
            // image rows replace the image tokens first, then the video rows the video tokens.
            let count = |token: u32| input_ids.iter().filter(|&&id| id == token).count();
            let (image_tokens, video_tokens) = (count(image_token), count(video_token));
            let rows = vision_rows.dim(0)?;
            let image_rows = if video_tokens == 0 { rows } else { image_tokens.min(rows) };
            let device = embeds.device().clone();
            let at = |token: u32| -> Result<Tensor> {
                let at: Vec<u32> =
                    input_ids.iter().enumerate().filter(|(_, &id)| id == token).map(|(p, _)| p as u32).collect();
                Ok(Tensor::new(at, &device)?)
            };
            if image_tokens > 0 || video_tokens == 0 {
                let image = vision_rows.narrow(0, 0, image_rows)?;
                embeds = splice_embeds(&embeds, input_ids, (image_token, "Image", "<|image_pad|>"), &image)?;
                taps.record(Stage::LmImageEmbeds.tap(), &embeds.index_select(&at(image_token)?, 0)?);
            }
            if video_tokens > 0 {
                let video = vision_rows.narrow(0, image_rows, rows - image_rows)?;
                embeds = splice_embeds(&embeds, input_ids, (video_token, "Video", "<|video_pad|>"), &video)?;
                taps.record(Stage::LmVideoEmbeds.tap(), &embeds.index_select(&at(video_token)?, 0)?);
            }
        }
        Ok(embeds)
    }

    /// input_ids [seq], projector rows `image_embeds` [image tokens, hidden] and the
    /// multimodal `positions` [3][seq] → logits at the last position [vocab]. Records
    /// `input.position_ids`, `lm.image_embeds` and the text model's taps.
    pub fn forward_from_image_embeds(
        &self,
        input_ids: &[u32],
        image_embeds: Option<&Tensor>,
        positions: &[Vec<i64>; 3],
        taps: &mut Taps,
    ) -> Result<Tensor> {
        let embeds = self.prompt_embeds(input_ids, image_embeds, positions, taps)?;
        self.text.forward(&embeds, positions, taps)
    }

    /// [`Model::forward_from_image_embeds`] with the experts of the MoE layers that `routing`
    /// names chosen as it says (the reference's choices) instead of by their routers: the
    /// experts' arithmetic apart from the routers' decisions, which a near tie may flip. The
    /// routers still run and record their own `moe.{i}.router_logits`, `top_ids`, `top_weights`.
    pub fn forward_routed(
        &self,
        input_ids: &[u32],
        image_embeds: Option<&Tensor>,
        positions: &[Vec<i64>; 3],
        routing: &BTreeMap<usize, Routing>,
        taps: &mut Taps,
    ) -> Result<Tensor> {
        let embeds = self.prompt_embeds(input_ids, image_embeds, positions, taps)?;
        self.text.forward_routed(&embeds, positions, &mut self.new_cache(), taps, routing)
    }

    /// input_ids [seq] and, for a prompt with images, pixel_values [patches, C·T·P·P] with
    /// the images' vision positions → logits at the last position [vocab]. Records every tap
    /// from `vision.*` on.
    pub fn forward(
        &self,
        input_ids: &[u32],
        pixel_values: Option<(&Tensor, &VisionPositions)>,
        taps: &mut Taps,
    ) -> Result<Tensor> {
        let prompt = self.prompt(input_ids, pixel_values, taps)?;
        self.text.forward(&prompt.embeds, &prompt.positions, taps)
    }

    /// An empty cache for this model.
    pub fn new_cache(&self) -> Cache {
        self.text.new_cache()
    }

    /// A batch of requests, left-padded to the longest with `pad_token` as a processor batch with
    /// `padding_side="left"` is, with the pixel values and vision positions of all their images
    /// (request after request) → the [`EmbeddedBatch`]: the vision tower runs once over every
    /// image, each row gets its own images' rows spliced in, its positions (padding at 0) and its
    /// rope delta. Records `vision.*` (over all images), `input.position_ids` [batch, 3, seq] and
    /// `lm.image_embeds` (every row's image tokens, row after row).
    pub fn embed_batch(
        &self,
        requests: &[Request],
        pixel_values: Option<(&Tensor, &VisionPositions)>,
        pad_token: u32,
        taps: &mut Taps,
    ) -> Result<EmbeddedBatch> {
        ensure!(!requests.is_empty(), "a batch needs at least one request");
        ensure!(requests.iter().all(|r| !r.input_ids.is_empty()), "a request of the batch has no tokens");
        let image_embeds = match pixel_values {
            Some((pixels, positions)) => Some(self.vision.forward(pixels, positions, taps)?),
            None => None,
        };
        let seq = requests.iter().map(|r| r.input_ids.len()).max().unwrap_or(0);
        let merge = self.config.vision_config.spatial_merge_size;
        let pad = self.text.embed(&[pad_token])?;
        let (mut rows, mut positions, mut padding, mut rope_deltas, mut spliced) =
            (Vec::new(), Vec::new(), Vec::new(), Vec::new(), Vec::new());
        let mut first_image_row = 0;
        for request in requests {
            let ids = request.input_ids;
            let row_positions = self.positions(ids, request.grids)?;
            let tokens: usize = request.grids.iter().map(|g| g.patches() / (merge * merge)).sum();
            let mut embeds = self.text.embed(ids)?;
            if tokens > 0 {
                let Some(all) = &image_embeds else { bail!("a request has image grids but the batch has no pixels") };
                let own = all.narrow(0, first_image_row, tokens)?.to_dtype(embeds.dtype())?;
                embeds = splice_image_embeds(&embeds, ids, self.config.image_token_id, &own)?;
                spliced.push(own);
                first_image_row += tokens;
            }
            let p = seq - ids.len();
            rope_deltas.push(rope_delta(&row_positions));
            positions.push(row_positions.map(|row| std::iter::repeat_n(0, p).chain(row).collect::<Vec<i64>>()));
            rows.push(Tensor::cat(&[pad.repeat((p, 1))?, embeds], 0)?);
            padding.push(p);
        }
        if let Some(all) = &image_embeds {
            ensure!(
                first_image_row == all.dim(0)?,
                "the batch's requests take {first_image_row} image tokens, its pixels give {} rows",
                all.dim(0)?
            );
        }
        if taps.enabled() && !spliced.is_empty() {
            taps.record(Stage::LmImageEmbeds.tap(), &Tensor::cat(&spliced, 0)?);
        }
        let linear_padding = padding.clone();
        Ok(EmbeddedBatch { embeds: Tensor::stack(&rows, 0)?, positions, padding, linear_padding, rope_deltas })
    }

    /// Prefills a batch into empty caches, one per row → the logits at each row's last position
    /// [batch, vocab]. Records the positions it runs at, the text model's taps and the caches
    /// after the prefill, each with a leading batch axis.
    pub fn prefill_batch(&self, batch: &EmbeddedBatch, caches: &mut [Cache], taps: &mut Taps) -> Result<Tensor> {
        let rows = batch.rows();
        ensure!(caches.len() == rows, "{rows} rows and {} caches", caches.len());
        ensure!(
            batch.linear_padding.len() == rows,
            "{rows} rows and {} linear padding counts",
            batch.linear_padding.len()
        );
        ensure!(caches.iter().all(Cache::is_empty), "a batch is prefilled into empty caches");
        if taps.enabled() {
            let seq = batch.embeds.dim(1)?;
            let flat: Vec<i64> = batch.positions.iter().flat_map(|p| p.iter().flatten().copied()).collect();
            taps.record(Stage::PositionIds.tap(), &Tensor::from_vec(flat, (rows, 3, seq), &Device::Cpu)?);
        }
        for ((cache, &padding), &delta) in caches.iter_mut().zip(&batch.padding).zip(&batch.rope_deltas) {
            cache.set_padding(padding);
            cache.set_rope_delta(delta);
        }
        let logits = self.text.forward_batch(&batch.embeds, &batch.positions, &batch.linear_padding, caches, taps)?;
        Cache::record_batch(caches, taps)?;
        Ok(logits)
    }

    /// One decode step of a batch: `tokens[row]` appended after what `caches[row]` holds, at its
    /// own next position → the next logits [batch, vocab]. The projections of every layer run on
    /// all rows at once: the weights are read once per step.
    pub fn decode_step_batch(&self, tokens: &[u32], caches: &mut [Cache]) -> Result<Tensor> {
        ensure!(tokens.len() == caches.len(), "{} tokens for {} caches", tokens.len(), caches.len());
        for (row, cache) in caches.iter().enumerate() {
            self.check_length(
                cache.len() - cache.padding() + 1,
                &format!("row {row}'s prompt and the tokens after it"),
            )?;
        }
        let embeds = self.text.embed(tokens)?.unsqueeze(1)?;
        let positions: Vec<[Vec<i64>; 3]> = caches.iter().map(|c| c.next_positions(1)).collect();
        let padding = vec![0; tokens.len()];
        self.text.forward_batch(&embeds, &positions, &padding, caches, &mut Taps::disabled())
    }

    /// Greedy generation for a batch (`generate(do_sample=False)` on a left-padded batch): prefill,
    /// then each row's most likely token step after step; a row that has produced a token of
    /// `eos` is fed `pad_token` from then on, as `generate` fills finished rows; generation stops
    /// when every row has finished or after `max_new_tokens` steps. Records the prefill's taps,
    /// `gen.logits` [batch, steps, vocab] and `gen.tokens` [batch, steps].
    pub fn generate_greedy_batch(
        &self,
        batch: &EmbeddedBatch,
        max_new_tokens: usize,
        eos: &[u32],
        pad_token: u32,
        taps: &mut Taps,
    ) -> Result<BatchGeneration> {
        let rows = batch.rows();
        let mut generation = BatchGeneration { tokens: vec![Vec::new(); rows], logits: Vec::new() };
        if max_new_tokens == 0 {
            return Ok(generation);
        }
        let mut caches: Vec<Cache> = (0..rows).map(|_| self.new_cache()).collect();
        let mut logits = self.prefill_batch(batch, &mut caches, taps)?;
        let mut unfinished = vec![true; rows];
        loop {
            let values: Vec<Vec<f32>> = logits.to_vec2()?;
            let step = generation.logits.len();
            let mut next = Vec::with_capacity(rows);
            for (row, values) in values.iter().enumerate() {
                let Some(token) = argmax(values) else { bail!("the logits of row {row} at step {step} are all NaN") };
                let token = if unfinished[row] { token } else { pad_token };
                unfinished[row] &= !eos.contains(&token);
                generation.tokens[row].push(token);
                next.push(token);
            }
            generation.logits.push(logits);
            if step + 1 == max_new_tokens || unfinished.iter().all(|u| !u) {
                break;
            }
            logits = self.decode_step_batch(&next, &mut caches)?;
        }
        if taps.enabled() {
            taps.record(Stage::GenLogits.tap(), &Tensor::stack(&generation.logits, 1)?);
            let tokens: Vec<i64> = generation.tokens.iter().flatten().map(|&t| i64::from(t)).collect();
            let steps = generation.logits.len();
            taps.record(Stage::GenTokens.tap(), &Tensor::from_vec(tokens, (rows, steps), &Device::Cpu)?);
        }
        Ok(generation)
    }

    /// Prefills an empty `cache` with a whole prompt (input_ids [seq], optional pixel values as
    /// [`Model::forward`]) → logits at its last position [vocab]. Records the taps of
    /// [`Model::forward`] and the cache after the prefill (`cache.{i}.*`).
    pub fn prefill(
        &self,
        input_ids: &[u32],
        pixel_values: Option<(&Tensor, &VisionPositions)>,
        cache: &mut Cache,
        taps: &mut Taps,
    ) -> Result<Tensor> {
        let prompt = self.prompt(input_ids, pixel_values, taps)?;
        self.prefill_chunk(&prompt, 0..prompt.len(), cache, taps)
    }

    /// Prefills the prompt's tokens `tokens` (embeddings and multimodal positions of those
    /// columns) after the `tokens.start` earlier ones already in `cache` → logits at the chunk's
    /// last position [vocab]. A prompt prefilled chunk after chunk ends with the cache of one
    /// pass; the rope delta is the whole prompt's. Records the text model's taps of the chunk
    /// and the cache after it (`cache.{i}.*`).
    pub fn prefill_chunk(
        &self,
        prompt: &EmbeddedPrompt,
        tokens: Range<usize>,
        cache: &mut Cache,
        taps: &mut Taps,
    ) -> Result<Tensor> {
        ensure!(
            tokens.start == cache.len() && tokens.start < tokens.end && tokens.end <= prompt.len(),
            "prefilling tokens {tokens:?} of a {}-token prompt into a cache of {} tokens: chunks must be non-empty, \
             in order and within the prompt",
            prompt.len(),
            cache.len()
        );
        let embeds = prompt.embeds.narrow(0, tokens.start, tokens.len())?;
        let positions = prompt.positions.clone().map(|row| row[tokens.clone()].to_vec());
        cache.set_rope_delta(prompt.rope_delta);
        let logits = self.text.forward_with_cache(&embeds, &positions, cache, taps)?;
        cache.record(taps);
        Ok(logits)
    }

    /// Appends text tokens after what `cache` holds (a prompt and any tokens since), at
    /// positions `cache length + rope delta` on all three axes → logits at the last of them
    /// [vocab]. Records the text model's taps.
    pub fn extend(&self, input_ids: &[u32], cache: &mut Cache, taps: &mut Taps) -> Result<Tensor> {
        ensure!(!input_ids.is_empty(), "no tokens to append");
        ensure!(!cache.is_empty(), "the cache is empty: prefill a prompt first");
        self.check_length(cache.len() - cache.padding() + input_ids.len(), "the prompt and the tokens after it")?;
        let positions = cache.next_positions(input_ids.len());
        self.text.forward_with_cache(&self.text.embed(input_ids)?, &positions, cache, taps)
    }

    /// Refuses a sequence of `tokens` longer than the model's positions (`max_position_embeddings`):
    /// transformers would run it, on rotary angles the model never saw in training.
    fn check_length(&self, tokens: usize, what: &str) -> Result<()> {
        let max = self.config.text_config.max_position_embeddings;
        ensure!(
            tokens <= max,
            "{what} takes {tokens} tokens, more than the model's {max} positions (max_position_embeddings in its \
             config.json): shorten the prompt or the conversation, or generate fewer tokens"
        );
        Ok(())
    }

    /// One decode step: `token` appended after what `cache` holds → the next logits [vocab].
    pub fn decode_step(&self, token: u32, cache: &mut Cache) -> Result<Tensor> {
        self.extend(&[token], cache, &mut Taps::disabled())
    }

    /// Greedy generation (`generate(do_sample=False)`): prefills the prompt, then appends the
    /// most likely token until `max_new_tokens` tokens are generated or a token of `eos` is
    /// (it is kept). Records the prefill's taps, `gen.logits` [steps, vocab] and `gen.tokens`
    /// [steps].
    pub fn generate_greedy(
        &self,
        input_ids: &[u32],
        pixel_values: Option<(&Tensor, &VisionPositions)>,
        max_new_tokens: usize,
        eos: &[u32],
        taps: &mut Taps,
    ) -> Result<Generation> {
        self.generate_greedy_with(input_ids, pixel_values, max_new_tokens, eos, taps, |_, _| {})
    }

    /// [`Model::generate_greedy`], calling `on_token(step, token)` as each token is chosen (for
    /// a progress line, or to time the first token).
    pub fn generate_greedy_with(
        &self,
        input_ids: &[u32],
        pixel_values: Option<(&Tensor, &VisionPositions)>,
        max_new_tokens: usize,
        eos: &[u32],
        taps: &mut Taps,
        mut on_token: impl FnMut(usize, u32),
    ) -> Result<Generation> {
        let mut generation = Generation { tokens: Vec::new(), logits: Vec::new() };
        if max_new_tokens == 0 {
            return Ok(generation);
        }
        let mut cache = self.new_cache();
        let mut logits = self.prefill(input_ids, pixel_values, &mut cache, taps)?;
        loop {
            let values: Vec<f32> = logits.to_vec1()?;
            let step = generation.tokens.len();
            let Some(token) = argmax(&values) else { anyhow::bail!("the logits of step {step} are all NaN") };
            generation.tokens.push(token);
            generation.logits.push(logits);
            on_token(step, token);
            if generation.tokens.len() == max_new_tokens || eos.contains(&token) {
                break;
            }
            logits = self.decode_step(token, &mut cache)?;
        }
        if taps.enabled() {
            taps.record(Stage::GenLogits.tap(), &Tensor::stack(&generation.logits, 0)?);
            let tokens: Vec<i64> = generation.tokens.iter().map(|&t| t as i64).collect();
            taps.record(Stage::GenTokens.tap(), &Tensor::new(tokens, &Device::Cpu)?);
        }
        Ok(generation)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const IMG: u32 = 9;

    #[test]
    fn text_after_an_image_resumes_at_max_position_plus_one() {
        // 2 text tokens, a 1×4×6 patch grid (2×3 merged = 6 tokens), 2 text tokens.
        let ids = [1, 2, IMG, IMG, IMG, IMG, IMG, IMG, 3, 4];
        let p = rope_index(&ids, IMG, &[Grid { t: 1, h: 4, w: 6 }], 2).unwrap();
        assert_eq!(p[0], [0, 1, 2, 2, 2, 2, 2, 2, 5, 6], "t positions");
        assert_eq!(p[1], [0, 1, 2, 2, 2, 3, 3, 3, 5, 6], "h positions");
        assert_eq!(p[2], [0, 1, 2, 3, 4, 2, 3, 4, 5, 6], "w positions");
    }

    #[test]
    fn frames_of_a_multi_frame_grid_advance_the_t_axis() {
        // A 2×2×2 grid (2 frames, one merged token each) between two text tokens.
        let ids = [1, IMG, IMG, 2];
        let p = rope_index(&ids, IMG, &[Grid { t: 2, h: 2, w: 2 }], 2).unwrap();
        assert_eq!(p[0], [0, 1, 2, 2], "t positions");
        assert_eq!(p[1], [0, 1, 1, 2], "h positions");
        assert_eq!(p[2], [0, 1, 1, 2], "w positions");
    }

    const VID: u32 = 11;
    const TOKENS: VisionTokens = VisionTokens { image: IMG, video: Some(VID) };

    #[test]
    fn each_video_frame_is_a_grid_of_its_own_and_time_advances_only_through_the_text() {
        // Text, then a video of 2 temporal patches of 2×4 patches (1×2 merged tokens per frame),
        // each frame behind a timestamp token (5) and between markers (6 … 7), then text.
        let ids = [1, 5, 6, VID, VID, 7, 5, 6, VID, VID, 7, 2];
        let p = rope_index_with_videos(&ids, TOKENS, &[], &[Grid { t: 2, h: 2, w: 4 }], 2).unwrap();
        // Frame 0 sits at position 3 (t = h = 3, w = 3, 4); the text resumes at 3 + max(1, 2) = 5.
        assert_eq!(p[0], [0, 1, 2, 3, 3, 5, 6, 7, 8, 8, 10, 11], "t positions: no frame index added");
        assert_eq!(p[1], [0, 1, 2, 3, 3, 5, 6, 7, 8, 8, 10, 11], "h positions");
        assert_eq!(p[2], [0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11], "w positions");
    }

    #[test]
    fn image_runs_take_the_image_grids_and_video_runs_the_video_frames_in_prompt_order() {
        // A video frame (1×2 tokens) before an image (2×3 tokens): each takes its own kind's grid.
        let ids = [1, VID, VID, 2, IMG, IMG, IMG, IMG, IMG, IMG, 3];
        let image = [Grid { t: 1, h: 4, w: 6 }];
        let video = [Grid { t: 1, h: 2, w: 4 }];
        let p = rope_index_with_videos(&ids, TOKENS, &image, &video, 2).unwrap();
        assert_eq!(p[1], [0, 1, 1, 3, 4, 4, 4, 5, 5, 5, 7], "h positions: the image starts at 4, after 1 + 2 + 1");
        assert_eq!(p[2], [0, 1, 2, 3, 4, 5, 6, 4, 5, 6, 7], "w positions");
        let err = rope_index_with_videos(&ids, TOKENS, &image, &[], 2).unwrap_err().to_string();
        assert!(err.contains("more runs of video tokens than the 0 video frame(s)"), "{err}");
        let short = [Grid { t: 1, h: 2, w: 2 }];
        let err = rope_index_with_videos(&ids, TOKENS, &image, &short, 2).unwrap_err().to_string();
        assert!(err.contains("2 video frame tokens") && err.contains("1×1×1 = 1 tokens"), "{err}");
    }

    #[test]
    fn video_tokens_without_a_video_token_id_are_text() {
        let ids = [1, VID, VID, 2];
        let as_text = rope_index(&ids, IMG, &[], 2).unwrap();
        assert_eq!(as_text[0], [0, 1, 2, 3], "an image-only index reads the video id as text");
    }

    #[test]
    fn the_rope_delta_is_the_largest_position_plus_one_minus_the_length() {
        let ids = [1, 2, IMG, IMG, IMG, IMG, IMG, IMG, 3, 4];
        let p = rope_index(&ids, IMG, &[Grid { t: 1, h: 4, w: 6 }], 2).unwrap();
        assert_eq!(rope_delta(&p), 6 + 1 - 10, "after a 2×3 image");
        let text = rope_index(&[1, 2, 3], IMG, &[], 2).unwrap();
        assert_eq!(rope_delta(&text), 0, "text alone");
    }

    #[test]
    fn argmax_takes_the_first_of_equal_largest_logits_and_skips_nan() {
        assert_eq!(argmax(&[0.5, 2.0, -1.0, 2.0]), Some(1), "first of two equal maxima");
        assert_eq!(argmax(&[f32::NAN, -3.0, f32::NAN, -2.0]), Some(3), "NaN skipped");
        assert_eq!(argmax(&[f32::NAN]), None);
        assert_eq!(argmax(&[]), None);
    }

    #[test]
    fn a_run_of_image_tokens_that_does_not_fit_its_grid_is_an_error() {
        let ids = [1, IMG, IMG, IMG, 2];
        let err = rope_index(&ids, IMG, &[Grid { t: 1, h: 4, w: 4 }], 2).unwrap_err().to_string();
        assert!(err.contains("3 image tokens") && err.contains("4 tokens"), "{err}");
    }

    #[test]
    fn splicing_a_wrong_number_of_rows_names_both_counts() {
        let embeds = Tensor::zeros((4, 2), candle_core::DType::F32, &candle_core::Device::Cpu).unwrap();
        let image = Tensor::ones((1, 2), candle_core::DType::F32, &candle_core::Device::Cpu).unwrap();
        let err = splice_image_embeds(&embeds, &[1, IMG, IMG, 2], IMG, &image).unwrap_err().to_string();
        assert!(err.contains("2 <|image_pad|> tokens") && err.contains("1 rows"), "{err}");
    }

    #[test]
    fn a_prompt_counts_its_embedding_rows() {
        let prompt = |rows: usize| EmbeddedPrompt {
            embeds: Tensor::zeros((rows, 4), candle_core::DType::F32, &Device::Cpu).unwrap(),
            positions: [vec![0; rows], vec![0; rows], vec![0; rows]],
            rope_delta: 0,
        };
        assert_eq!((prompt(3).len(), prompt(3).is_empty()), (3, false), "three tokens");
        assert_eq!((prompt(0).len(), prompt(0).is_empty()), (0, true), "no token");
    }
}
