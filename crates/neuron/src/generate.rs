//! Generation as a user runs it: image and video files and a prompt through preprocessing, the prefill
//! into a cache, then greedy decoding step by step until `max_new_tokens` or an end-of-sequence
//! token — what `model.generate(**processor(...), do_sample=False)` followed by
//! `processor.decode(..., skip_special_tokens=True)` does in transformers.

use std::path::Path;
use std::time::Instant;

use anyhow::Result;

use crate::model::Model;
use crate::preprocess::{Conversation, GenerationPrompt, Processor};
use crate::taps::Taps;

/// What a generation produced, and how fast.
#[derive(Debug, Clone)]
pub struct Reply {
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

impl Reply {
    /// Prompt tokens per second of the prefill.
    pub fn prefill_tokens_per_second(&self) -> f64 {
        self.prompt_tokens as f64 / self.prefill_seconds
    }

    /// Reply tokens per second of the decode steps (the first token comes from the prefill).
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
    on_token: impl FnMut(usize, u32),
) -> Result<Reply> {
    generate_conversation(model, processor, &Conversation::single(images, prompt), max_new_tokens, on_token)
}

/// [`generate`] for any conversation (images and videos among its items), with the generation
/// prompt.
pub fn generate_conversation(
    model: &Model,
    processor: &Processor,
    conversation: &Conversation,
    max_new_tokens: usize,
    mut on_token: impl FnMut(usize, u32),
) -> Result<Reply> {
    let processed = processor.process_conversation(conversation, GenerationPrompt::Open)?;
    let vision = processed.vision_inputs(&model.config.vision_config)?;
    let pixels = vision.as_ref().map(|(p, positions)| (p, positions));
    let eos = model.config.text_config.eos_token_id.as_ref().map(|e| e.ids()).unwrap_or_default();

    let started = Instant::now();
    let mut prefill_seconds = 0.0;
    let generation = model.generate_greedy_with(
        &processed.input_ids,
        pixels,
        max_new_tokens,
        &eos,
        &mut Taps::disabled(),
        |step, token| {
            // The first token is the prefill's: the time to it is the prefill's time.
            if step == 0 {
                prefill_seconds = started.elapsed().as_secs_f64();
            }
            on_token(step, token);
        },
    )?;
    let decode_seconds = started.elapsed().as_secs_f64() - prefill_seconds;
    let tokens = generation.tokens;
    Ok(Reply {
        text: processor.prompt.decode(&tokens)?,
        tokens,
        prompt_tokens: processed.input_ids.len(),
        prefill_seconds,
        decode_seconds,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn generated(tokens: usize) -> Reply {
        Reply {
            tokens: vec![7; tokens],
            text: String::new(),
            prompt_tokens: 40,
            prefill_seconds: 0.5,
            decode_seconds: 0.25,
        }
    }

    #[test]
    fn prefill_speed_counts_prompt_tokens_and_decode_speed_the_steps_after_the_first_token() {
        let g = generated(6);
        assert_eq!(g.prefill_tokens_per_second(), 80.0, "40 prompt tokens in 0.5 s");
        // The first token comes from the prefill: 5 decode steps in 0.25 s.
        assert_eq!(g.decode_tokens_per_second(), Some(20.0), "5 steps in 0.25 s");
    }

    #[test]
    fn a_generation_of_one_token_or_none_has_no_decode_speed() {
        assert_eq!(generated(1).decode_tokens_per_second(), None, "one token, no decode step");
        assert_eq!(generated(0).decode_tokens_per_second(), None, "no token");
    }
}
