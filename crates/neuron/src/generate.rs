//! Generation as a user runs it: image files and a prompt through preprocessing, the prefill
//! into a cache, then greedy decoding step by step until `max_new_tokens` or an end-of-sequence
//! token — what `model.generate(**processor(...), do_sample=False)` followed by
//! `processor.decode(..., skip_special_tokens=True)` does in transformers.

use std::path::Path;
use std::time::Instant;

use anyhow::{bail, Result};

use crate::model::{argmax, Model};
use crate::preprocess::Processor;
use crate::taps::Taps;
use crate::vision::VisionPositions;

/// What a generation produced, and how fast.
#[derive(Debug, Clone)]
pub struct Generated {
    /// The greedy tokens, an end-of-sequence token included if one stopped the run.
    pub tokens: Vec<u32>,
    /// The tokens as text, special tokens left out.
    pub text: String,
    pub prompt_tokens: usize,
    /// Preprocessing not included: the vision tower, the prefill and the first token's logits.
    pub prefill_seconds: f64,
    /// The decode steps after the first token.
    pub decode_seconds: f64,
}

impl Generated {
    /// Prompt tokens per second of the prefill.
    pub fn prefill_tokens_per_second(&self) -> f64 {
        self.prompt_tokens as f64 / self.prefill_seconds
    }

    /// Generated tokens per second of the decode steps (the first token comes from the prefill).
    pub fn decode_tokens_per_second(&self) -> Option<f64> {
        let steps = self.tokens.len().checked_sub(1).filter(|&s| s > 0)?;
        Some(steps as f64 / self.decode_seconds)
    }
}

/// Greedy generation from files. `on_token(step, token)` is called as each token is chosen
/// (for a progress line); the end-of-sequence ids are the checkpoint's `eos_token_id`.
pub fn generate(
    model: &Model,
    processor: &Processor,
    images: &[&Path],
    prompt: &str,
    max_new_tokens: usize,
    mut on_token: impl FnMut(usize, u32),
) -> Result<Generated> {
    let processed = processor.process(images, prompt)?;
    let positions = VisionPositions::new(&model.config.vision_config, &processed.grids);
    let pixels = processed.pixel_values.as_ref().map(|p| (p, &positions));
    let eos = model.config.text_config.eos_token_id.as_ref().map(|e| e.ids()).unwrap_or_default();

    let started = Instant::now();
    let mut cache = model.new_cache();
    let mut logits = model.prefill(&processed.input_ids, pixels, &mut cache, &mut Taps::disabled())?;
    let mut tokens = Vec::new();
    let mut prefill_seconds = 0.0;
    while tokens.len() < max_new_tokens {
        let values: Vec<f32> = logits.to_vec1()?;
        let Some(token) = argmax(&values) else { bail!("the logits of step {} are all NaN", tokens.len()) };
        tokens.push(token);
        if tokens.len() == 1 {
            prefill_seconds = started.elapsed().as_secs_f64();
        }
        on_token(tokens.len() - 1, token);
        if tokens.len() == max_new_tokens || eos.contains(&token) {
            break;
        }
        logits = model.decode_step(token, &mut cache)?;
    }
    let decode_seconds = started.elapsed().as_secs_f64() - prefill_seconds;
    Ok(Generated {
        text: processor.prompt.decode(&tokens)?,
        tokens,
        prompt_tokens: processed.input_ids.len(),
        prefill_seconds,
        decode_seconds,
    })
}
