//! The whole model, mirroring `Qwen3_5Model` + `Qwen3_5ForConditionalGeneration.forward`:
//! the vision tower's projector rows replace the `<|image_pad|>` embeddings, multimodal
//! positions are computed from the token ids and image grids, and the text model runs.

use std::sync::Arc;

use anyhow::{ensure, Result};
use candle_core::{Device, IndexOp, Tensor};
use candle_nn::VarBuilder;

use crate::config::Config;
use crate::taps::Taps;
use crate::text::TextModel;
use crate::vision::positions::Grid;
use crate::vision::{VisionModel, VisionPositions};
use crate::weights::Checkpoint;

/// Multimodal RoPE positions, mirroring `Qwen3_5Model.get_rope_index` for one sequence.
///
/// Runs of text tokens advance all three axes together. Each run of image tokens takes the
/// next image grid and gets (t, h, w) positions on its merged grid, offset by the current
/// position; the text after it resumes at that offset + max(h, w) / merge, i.e. one past
/// the image's largest position. Returns [t, h, w] rows of length seq.
pub fn rope_index(input_ids: &[u32], image_token_id: u32, grids: &[Grid], merge: usize) -> Result<[Vec<i64>; 3]> {
    let mut rows: [Vec<i64>; 3] = Default::default();
    let mut grids_left = grids.iter();
    let mut current: i64 = 0;
    let mut i = 0;
    while i < input_ids.len() {
        let is_image = input_ids[i] == image_token_id;
        let run = input_ids[i..].iter().take_while(|&&id| (id == image_token_id) == is_image).count();
        if is_image {
            let Some(g) = grids_left.next() else {
                anyhow::bail!("the prompt has more runs of image tokens than the {} image grid(s) given", grids.len());
            };
            let (t, h, w) = (g.t, g.h / merge, g.w / merge);
            ensure!(
                run == t * h * w,
                "a run of {run} image tokens at position {i} does not match its image grid {t}×{h}×{w} = {} tokens",
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
        grids_left.next().is_none(),
        "{} image grid(s) given but fewer runs of image tokens in the prompt",
        grids.len()
    );
    Ok(rows)
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
    let positions: Vec<usize> =
        input_ids.iter().enumerate().filter(|(_, &id)| id == image_token_id).map(|(p, _)| p).collect();
    let rows = image_embeds.dim(0)?;
    ensure!(
        positions.len() == rows,
        "Image features and image tokens do not match: the prompt has {} <|image_pad|> tokens, the vision tower gave {rows} rows",
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

/// How a model holds its weights.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Residency {
    /// Every tensor read once, in f32, and kept (the iteration model, a resident benchmark).
    Resident,
    /// At most one vision block or decoder layer in f32 at a time, read from the mapped
    /// checkpoint just before it runs (see [`crate::stack`]): a 27B checkpoint in the memory
    /// of one layer plus activations.
    Streamed,
}

/// `Qwen3_5ForConditionalGeneration` for a single prompt.
pub struct Model {
    pub vision: VisionModel,
    pub text: TextModel,
    pub config: Config,
}

impl Model {
    /// The one way to load a checkpoint folder (`config.json` read by the caller, shards
    /// found by [`crate::weights::safetensors_files`]), resident or streamed.
    pub fn load(dir: &std::path::Path, config: &Config, residency: Residency) -> Result<Self> {
        match residency {
            Residency::Resident => Model::new(config, crate::weights::var_builder(dir)?),
            Residency::Streamed => Model::streamed(config, Arc::new(Checkpoint::open(dir)?)),
        }
    }

    /// From any `VarBuilder` rooted at the checkpoint (tensor names as stored); tests hand in
    /// perturbed weights this way.
    pub fn new(config: &Config, vb: VarBuilder<'static>) -> Result<Self> {
        Ok(Model {
            vision: VisionModel::new(&config.vision_config, vb.pp("model.visual"))?,
            text: TextModel::new(&config.text_config, config.tie_word_embeddings, vb)?,
            config: config.clone(),
        })
    }

    /// The model streamed from a mapped checkpoint: at most one vision block or one decoder
    /// layer is in f32 at a time (see [`crate::stack`]), so a 27B checkpoint runs in the
    /// memory of one layer plus activations.
    pub fn streamed(config: &Config, checkpoint: Arc<Checkpoint>) -> Result<Self> {
        let vb = crate::weights::builder(checkpoint.clone());
        Ok(Model {
            vision: VisionModel::load(&config.vision_config, vb.pp("model.visual"), true)?,
            text: TextModel::streamed(&config.text_config, config.tie_word_embeddings, checkpoint)?,
            config: config.clone(),
        })
    }

    /// Multimodal positions of a prompt (see [`rope_index`]).
    pub fn positions(&self, input_ids: &[u32], grids: &[Grid]) -> Result<[Vec<i64>; 3]> {
        rope_index(input_ids, self.config.image_token_id, grids, self.config.vision_config.spatial_merge_size)
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
        let image_token = self.config.image_token_id;
        ensure!(
            positions.iter().all(|row| row.len() == input_ids.len()),
            "positions have {} columns for {} tokens",
            positions[0].len(),
            input_ids.len()
        );
        if taps.enabled() {
            let flat: Vec<i64> = positions.iter().flatten().copied().collect();
            taps.record(|| "input.position_ids".into(), &Tensor::from_vec(flat, (3, input_ids.len()), &Device::Cpu)?);
        }
        let mut embeds = self.text.embed(input_ids)?;
        if let Some(image_embeds) = image_embeds {
            embeds = splice_image_embeds(&embeds, input_ids, image_token, image_embeds)?;
            let at: Vec<u32> =
                input_ids.iter().enumerate().filter(|(_, &id)| id == image_token).map(|(p, _)| p as u32).collect();
            taps.record(|| "lm.image_embeds".into(), &embeds.index_select(&Tensor::new(at, embeds.device())?, 0)?);
        }
        self.text.forward(&embeds, positions, taps)
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
        let grids = pixel_values.map_or(&[][..], |(_, p)| &p.grids);
        let positions = self.positions(input_ids, grids)?;
        let image_embeds = match pixel_values {
            Some((pixels, vision_positions)) => Some(self.vision.forward(pixels, vision_positions, taps)?),
            None => None,
        };
        self.forward_from_image_embeds(input_ids, image_embeds.as_ref(), &positions, taps)
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
}
