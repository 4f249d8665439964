//! Replaying a case checked in parts (`continue` mode), as a chat server runs it: a
//! conversation fed turn by turn on one session (each turn's prompt resumes the latest cache it
//! still repeats, see [`neuron::session`]), or a prefix cached once and continued by each suffix
//! from a copy of its cache. Per part: the prompt's token ids, the cache after the prefill, the
//! logits at its last position, each greedy step's logits and the tokens.

use std::collections::BTreeMap;

use anyhow::{ensure, Context, Result};
use candle_core::{Device, Tensor};
use contract::Stage;
use neuron::model::{argmax, Model};
use neuron::preprocess::{GenerationPrompt, Processed, Processor};
use neuron::session::{Reuse, Session};
use neuron::taps::Taps;
use neuron::vision::VisionPositions;
use parity::manifest::{CaseRef, ContentSpec, DumpKey, MessageSpec, Part, Request, RoleSpec};
use parity::mode::Mode;

use crate::run::{arrays, conversation, processor, record_inputs, token_texts, CaseSetup, Perturbations, Run};

pub(crate) fn run(setup: &CaseSetup, mode: Mode, model: &Model, perturb: &Perturbations) -> Result<Run> {
    let case = setup.case;
    let mut run = Run {
        mode,
        taps: BTreeMap::new(),
        own_reference: None,
        padding: Vec::new(),
        notes: Vec::new(),
        grids: Vec::new(),
        videos: 0,
        video_frames: Vec::new(),
        rotary: Vec::new(),
        merge: model.config.vision_config.spatial_merge_size,
        input_ids: Vec::new(),
        row_lengths: Vec::new(),
        token_texts: None,
        model_dir: setup.model_dir.clone(),
        failure: None,
    };
    if mode != Mode::Continue {
        return Ok(run);
    }
    let parts = Parts { case, model, processor: processor(case, &setup.model_dir)?, perturb };
    let result = match case.request() {
        Request::Turns { turns } => parts.turns(turns, &mut run),
        Request::PrefixCache { prefix, suffixes } => parts.suffixes(prefix, suffixes, &mut run),
        _ => Ok(()),
    };
    run.failure = result.err().map(|e| format!("{e:#}"));
    run.token_texts = token_texts(&setup.model_dir, &run.input_ids);
    Ok(run)
}

struct Parts<'a> {
    case: CaseRef<'a>,
    model: &'a Model,
    processor: Processor,
    perturb: &'a Perturbations<'a>,
}

impl Parts<'_> {
    /// Each turn appended to the history and prefilled on the one session; the reply the
    /// history keeps is the reference's (its `turn.{t}/gen.tokens`, decoded as the harness
    /// decoded it), so a later turn is checked whatever Rust generated before it.
    fn turns(&self, turns: &[Vec<MessageSpec>], run: &mut Run) -> Result<()> {
        let mut session = Session::new(self.model);
        let mut history: Vec<MessageSpec> = Vec::new();
        for (t, turn) in turns.iter().enumerate() {
            let part = Part::Turn(t);
            history.extend(turn.iter().cloned());
            let (generated, _) = self.part(part, &history, &mut session, run).with_context(|| format!("{part}"))?;
            let reply = match recorded_part(self.case, part, Stage::GenTokens)? {
                Some(reference) => reference,
                None => generated,
            };
            let text = self.processor.prompt.decode(&reply)?;
            history.push(MessageSpec { role: RoleSpec::Assistant, content: ContentSpec::Text(text) });
        }
        Ok(())
    }

    /// The prefix prefilled once (no generation prompt: the whole of it is a turn boundary),
    /// then each suffix continued from a copy of that session.
    fn suffixes(&self, prefix: &[MessageSpec], suffixes: &[Vec<MessageSpec>], run: &mut Run) -> Result<()> {
        let mut base = Session::new(self.model);
        let refs: Vec<&MessageSpec> = prefix.iter().collect();
        let processed =
            self.processor.process_conversation(&conversation(self.case, &refs), GenerationPrompt::Closed)?;
        let prompt = self.embed(&processed)?;
        base.resume(self.model, &processed.input_ids);
        base.prefill(self.model, &processed.input_ids, &prompt, processed.input_ids.len(), &mut Taps::disabled())?;
        run.notes.push(format!("the prefix: {} tokens cached", processed.input_ids.len()));
        for (s, suffix) in suffixes.iter().enumerate() {
            let part = Part::Suffix(s);
            let messages: Vec<MessageSpec> = prefix.iter().chain(suffix).cloned().collect();
            let mut session = base.clone();
            let (_, reuse) = self.part(part, &messages, &mut session, run).with_context(|| format!("{part}"))?;
            // A suffix that does not continue the whole cached prefix would quietly test a
            // fresh prefill instead of the restored cache.
            ensure!(
                reuse.restored == processed.input_ids.len(),
                "case {}, {part}: the prefix is not a prefix of prefix + suffix as the chat template renders them \
                 ({reuse}): the template renders the prefix's last message differently once more messages follow \
                 (an assistant message loses its think block); end the prefix with a system or user message",
                self.case,
            );
        }
        Ok(())
    }

    /// One part: the conversation so far rendered with its generation prompt, prefilled on the
    /// session from the latest cache it repeats, then greedy generation → Rust's tokens.
    fn part(
        &self,
        part: Part,
        messages: &[MessageSpec],
        session: &mut Session,
        run: &mut Run,
    ) -> Result<(Vec<u32>, Reuse)> {
        let refs: Vec<&MessageSpec> = messages.iter().collect();
        let conversation = conversation(self.case, &refs);
        let closed = self.processor.process_conversation(&conversation, GenerationPrompt::Closed)?;
        let open = self.processor.process_conversation_with(
            &conversation,
            GenerationPrompt::Open,
            &self.perturb.preprocess,
        )?;
        let boundary = neuron::session::common_prefix(&closed.input_ids, &open.input_ids);
        let mut taps = Taps::recording();
        record_inputs(&mut taps, &open)?;
        let prompt = self.embed(&open)?;
        let reuse = session.resume(self.model, &open.input_ids);
        if let Some(hook) = self.perturb.cache_after_restore {
            hook(session.cache_mut());
        }
        run.notes.push(format!("{part}: {reuse}"));
        let mut logits = session.prefill(self.model, &open.input_ids, &prompt, boundary, &mut taps)?;
        if let Some(hook) = self.perturb.cache_after_prefill {
            hook(session.cache_mut());
        }
        let steps = self.case.case.generate.unwrap_or(0);
        let eos = self.model.config.text_config.eos_token_id.as_ref().map(|e| e.ids()).unwrap_or_default();
        let (mut tokens, mut all_logits) = (Vec::new(), Vec::new());
        while tokens.len() < steps {
            let values: Vec<f32> = logits.to_vec1()?;
            let Some(token) = argmax(&values) else { anyhow::bail!("the logits of step {} are all NaN", tokens.len()) };
            tokens.push(token);
            all_logits.push(logits);
            if tokens.len() == steps || eos.contains(&token) {
                break;
            }
            logits = session.decode_step(self.model, token)?;
        }
        if !tokens.is_empty() {
            taps.record(Stage::GenLogits.tap(), &Tensor::stack(&all_logits, 0)?);
            let ids: Vec<i64> = tokens.iter().map(|&t| i64::from(t)).collect();
            taps.record(Stage::GenTokens.tap(), &Tensor::new(ids, &Device::Cpu)?);
        }
        let keep = |key: &DumpKey| {
            matches!(key.tap.stage(), Stage::InputIds | Stage::LmLogitsLast | Stage::GenLogits | Stage::GenTokens)
                || key.tap.family() == contract::Family::Cache
        };
        run.taps.extend(arrays(taps, Some(part))?.into_iter().filter(|(k, _)| keep(k)));
        run.input_ids = open.input_ids;
        Ok((tokens, reuse))
    }

    /// The prompt's embeddings and positions, the vision tower run over every image it holds.
    fn embed(&self, processed: &Processed) -> Result<neuron::model::EmbeddedPrompt> {
        let positions = VisionPositions::new(&self.model.config.vision_config, &processed.grids);
        let pixels = processed.pixel_values.as_ref().map(|p| (p, &positions));
        self.model.prompt(&processed.input_ids, pixels, &mut Taps::disabled())
    }
}

/// A part's recorded reference tokens, when the case recorded them.
fn recorded_part(case: CaseRef, part: Part, stage: Stage) -> Result<Option<Vec<u32>>> {
    let key = DumpKey::of(part, stage.tap());
    if !case.records_at(key) {
        return Ok(None);
    }
    let array = parity::npy::read_npy(&case.manifest.root.join(case.dump_path_at(key)))?;
    Ok(array.as_i64().map(|ids| ids.iter().map(|&t| t as u32).collect()))
}
