//! A conversation served turn by turn, as a chat server runs it: each turn's prompt (the whole
//! conversation rendered again) is prefilled on top of the cache of the turns before, and the
//! cache is reused as far as the new prompt repeats what it holds.
//!
//! A chat template may render the history differently from what was generated (Qwen3.6's drops
//! the reasoning of earlier assistant turns), and then the cached tokens are no longer a prefix
//! of the new prompt. Attention's keys could be cut back token by token, but a Gated DeltaNet
//! layer's state cannot be rolled back. So the session keeps a snapshot of the cache at each
//! turn boundary (after a turn's messages, before its generation prompt) and, for a new prompt,
//! restores the latest snapshot that is still a prefix of it and prefills from there
//! ([`Reuse`] says what it did).

use std::ops::Range;

use anyhow::{ensure, Result};
use candle_core::Tensor;

use crate::model::{EmbeddedPrompt, Model};
use crate::taps::Taps;
use crate::text::cache::Cache;

/// A cache and the tokens it holds, taken at a turn boundary.
#[derive(Debug, Clone)]
struct Snapshot {
    tokens: Vec<u32>,
    cache: Cache,
}

/// What a prefill reused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Reuse {
    /// The length of the longest common prefix of the new prompt and the tokens the cache held.
    pub common_prefix: usize,
    /// The tokens the cache it continued from holds (a snapshot's, the live cache's, or 0).
    pub restored: usize,
    /// The tokens prefilled on top of it.
    pub prefilled: usize,
}

impl std::fmt::Display for Reuse {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "the new prompt repeats {} cached tokens; restored the cache of {} tokens and prefilled {}",
            self.common_prefix, self.restored, self.prefilled
        )
    }
}

/// A conversation's cache across turns.
#[derive(Debug, Clone)]
pub struct Session {
    /// The live cache and the tokens it holds (the last turn's prompt and generated tokens).
    live: Snapshot,
    /// One per turn boundary, oldest first.
    snapshots: Vec<Snapshot>,
}

impl Session {
    /// A session with nothing cached.
    pub fn new(model: &Model) -> Session {
        Session { live: Snapshot { tokens: Vec::new(), cache: model.new_cache() }, snapshots: Vec::new() }
    }

    /// The live cache (after the last prefill or decode step).
    pub fn cache(&self) -> &Cache {
        &self.live.cache
    }

    /// The live cache, for tests that perturb it.
    pub fn cache_mut(&mut self) -> &mut Cache {
        &mut self.live.cache
    }

    /// The tokens the live cache holds.
    pub fn tokens(&self) -> &[u32] {
        &self.live.tokens
    }

    /// Makes the live cache the latest one that the new prompt `input_ids` (the whole
    /// conversation) still repeats: the live cache when all it holds is repeated, else the
    /// latest turn-boundary snapshot that is, else an empty cache. Says what it found; call
    /// [`Session::prefill`] next.
    pub fn resume(&mut self, model: &Model, input_ids: &[u32]) -> Reuse {
        let common_prefix = common_prefix(&self.live.tokens, input_ids);
        if self.live.tokens.len() > common_prefix {
            self.live = match self.snapshots.iter().rev().find(|s| s.tokens.len() <= common_prefix) {
                Some(snapshot) => snapshot.clone(),
                None => Snapshot { tokens: Vec::new(), cache: model.new_cache() },
            };
        }
        let restored = self.live.tokens.len();
        Reuse { common_prefix, restored, prefilled: input_ids.len().saturating_sub(restored) }
    }

    /// Prefills the rest of a turn after what the live cache holds ([`Session::resume`] first):
    /// `input_ids` is the whole conversation's prompt and `prompt` its embeddings and positions
    /// (from [`Model::prompt`]); `boundary` is where the turn's messages end and its generation
    /// prompt begins (the prompt's length for a prefix cached for later requests). Prefills up
    /// to `boundary`, keeps a snapshot there, prefills the rest → the logits at the last position
    /// [vocab]. Records the text model's taps of the last chunk and the cache after it.
    pub fn prefill(
        &mut self,
        model: &Model,
        input_ids: &[u32],
        prompt: &EmbeddedPrompt,
        boundary: usize,
        taps: &mut Taps,
    ) -> Result<Tensor> {
        ensure!(
            prompt.len() == input_ids.len(),
            "{} token ids for a prompt of {} tokens",
            input_ids.len(),
            prompt.len()
        );
        ensure!(
            boundary <= input_ids.len(),
            "the turn boundary {boundary} lies past the {}-token prompt",
            input_ids.len()
        );
        let start = self.live.tokens.len();
        ensure!(
            input_ids.starts_with(&self.live.tokens),
            "the cache holds {start} tokens that do not begin the new prompt: resume the session first"
        );
        let mut logits = None;
        for range in [start..boundary, boundary.max(start)..input_ids.len()] {
            if range.is_empty() {
                continue;
            }
            logits = Some(self.prefill_range(model, input_ids, prompt, range.clone(), taps)?);
            if range.end == boundary {
                self.snapshots.push(self.live.clone());
            }
        }
        match logits {
            Some(logits) => Ok(logits),
            None => anyhow::bail!(
                "the cache already holds all {} tokens of the prompt: nothing to prefill",
                input_ids.len()
            ),
        }
    }

    /// Appends one generated token → the next logits [vocab].
    pub fn decode_step(&mut self, model: &Model, token: u32) -> Result<Tensor> {
        let logits = model.decode_step(token, &mut self.live.cache)?;
        self.live.tokens.push(token);
        Ok(logits)
    }

    fn prefill_range(
        &mut self,
        model: &Model,
        input_ids: &[u32],
        prompt: &EmbeddedPrompt,
        range: Range<usize>,
        taps: &mut Taps,
    ) -> Result<Tensor> {
        let logits = model.prefill_chunk(prompt, range.clone(), &mut self.live.cache, taps)?;
        self.live.tokens.extend_from_slice(&input_ids[range]);
        Ok(logits)
    }
}

/// The length of the longest common prefix of two token sequences.
pub fn common_prefix(a: &[u32], b: &[u32]) -> usize {
    a.iter().zip(b).take_while(|(x, y)| x == y).count()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_common_prefix_stops_at_the_first_difference_or_the_shorter_end() {
        assert_eq!(common_prefix(&[1, 2, 3, 4], &[1, 2, 9, 4]), 2);
        assert_eq!(common_prefix(&[1, 2], &[1, 2, 3]), 2);
        assert_eq!(common_prefix(&[], &[1]), 0);
        assert_eq!(common_prefix(&[5], &[6]), 0);
    }
}
