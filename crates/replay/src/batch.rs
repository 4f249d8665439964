//! Replaying a batch case: its member cases' requests through Rust preprocessing, left-padded
//! into one batch as the processor pads them (`padding_side="left"`), through the model in one
//! prefill and one greedy decode; or each row against Rust's own run of its case alone.

use std::collections::BTreeMap;

use anyhow::{bail, Context, Result};
use candle_core::{Device, Tensor};
use contract::Stage;
use neuron::model::{EmbeddedBatch, Model, Request};
use neuron::preprocess::{GenerationPrompt, Processed};
use neuron::taps::Taps;
use neuron::vision::VisionPositions;
use parity::array::Array;
use parity::manifest::DumpKey;
use parity::mode::Mode;

use crate::run::{
    arrays, processor, record_inputs, reference_tokens, single_conversation, token_texts, CaseSetup, Perturbations, Run,
};

pub(crate) fn run(setup: &CaseSetup, mode: Mode, model: &Model, perturb: &Perturbations) -> Result<Run> {
    let case = setup.case;
    let processor = processor(case, &setup.model_dir)?;
    let members = case.members();
    let processed: Vec<Processed> = members
        .iter()
        .map(|&m| {
            let conversation = single_conversation(m)?;
            processor
                .process_conversation_with(&conversation, GenerationPrompt::Open, &perturb.preprocess)
                .with_context(|| format!("case {case}, row of case {m}"))
        })
        .collect::<Result<_>>()?;
    let Some(pad) = processor.prompt.pad_token_id() else {
        bail!("case {case}: the tokenizer names no pad_token (tokenizer_config.json), which a left-padded batch needs")
    };
    let eos = model.config.text_config.eos_token_id.as_ref().map(|e| e.ids()).unwrap_or_default();
    let mut taps = Taps::recording();
    record_batch_inputs(&mut taps, &processed, pad)?;
    let grids: Vec<_> = processed.iter().flat_map(|p| p.grids.clone()).collect();
    let pixels: Vec<&Tensor> = processed.iter().filter_map(|p| p.pixel_values.as_ref()).collect();
    let pixels = if pixels.is_empty() { None } else { Some(Tensor::cat(&pixels, 0)?) };
    let positions = VisionPositions::new(&model.config.vision_config, &grids);
    let positions = match perturb.vision_positions {
        Some(f) => f(positions),
        None => positions,
    };
    let requests: Vec<Request> =
        processed.iter().map(|p| Request { input_ids: &p.input_ids, grids: &p.grids }).collect();
    let mut own_reference = None;
    let stages = (|| -> Result<()> {
        let pixel_values = pixels.as_ref().map(|p| (p, &positions));
        let embed = |taps: &mut Taps| -> Result<EmbeddedBatch> {
            let mut batch = model.embed_batch(&requests, pixel_values, pad, taps)?;
            if let Some(hook) = perturb.batch_after_embed {
                hook(&mut batch);
            }
            Ok(batch)
        };
        let steps = || -> Result<usize> { Ok(reference_tokens(case)?.shape.get(1).copied().unwrap_or(0)) };
        match mode {
            Mode::FromImageFiles => {
                let batch = embed(&mut taps)?;
                let mut caches: Vec<_> = (0..batch.rows()).map(|_| model.new_cache()).collect();
                model.prefill_batch(&batch, &mut caches, &mut taps)?;
            }
            Mode::DecodeTeacherForced => {
                let batch = embed(&mut Taps::disabled())?;
                let mut caches: Vec<_> = (0..batch.rows()).map(|_| model.new_cache()).collect();
                let mut logits = vec![model.prefill_batch(&batch, &mut caches, &mut Taps::disabled())?];
                if let Some(hook) = perturb.cache_after_prefill {
                    caches.iter_mut().for_each(hook);
                }
                neuron::text::cache::Cache::record_batch(&caches, &mut taps)?;
                let tokens = reference_tokens(case)?;
                let (rows, steps) = (batch.rows(), tokens.shape.get(1).copied().unwrap_or(0));
                let ids = tokens.as_i64().unwrap_or_default();
                for step in 0..steps.saturating_sub(1) {
                    let fed: Vec<u32> = (0..rows).map(|r| ids[r * steps + step] as u32).collect();
                    logits.push(model.decode_step_batch(&fed, &mut caches)?);
                }
                taps.record(Stage::GenLogits.tap(), &Tensor::stack(&logits, 1)?);
            }
            Mode::Generate => {
                let batch = embed(&mut Taps::disabled())?;
                let generation = model.generate_greedy_batch(&batch, steps()?, &eos, pad, &mut Taps::disabled())?;
                record_tokens(&mut taps, &generation.tokens)?;
            }
            Mode::BatchInvariance => {
                let batch = embed(&mut taps)?;
                model.generate_greedy_batch(&batch, steps()?, &eos, pad, &mut taps)?;
                own_reference = Some(rows_alone(model, &processed, steps()?, &eos)?);
            }
            _ => {}
        }
        Ok(())
    })();
    let failure = stages.err().map(|e| format!("{e:#}"));
    let input_ids: Vec<u32> = processed.iter().flat_map(|p| p.input_ids.clone()).collect();
    let row_lengths: Vec<usize> = processed.iter().map(|p| p.input_ids.len()).collect();
    let seq = row_lengths.iter().copied().max().unwrap_or(0);
    Ok(Run {
        mode,
        taps: arrays(taps, None)?,
        own_reference,
        padding: row_lengths.iter().map(|len| seq - len).collect(),
        notes: Vec::new(),
        grids,
        videos: 0,
        video_frames: Vec::new(),
        rotary: positions.rotary,
        merge: model.config.vision_config.spatial_merge_size,
        token_texts: token_texts(&setup.model_dir, &input_ids),
        input_ids,
        row_lengths,
        model_dir: setup.model_dir.clone(),
        failure,
    })
}

/// The batch's `input.*` taps: the token ids left-padded with `pad` [batch, seq], the mask
/// [batch, seq], and every row's image grids and pixels, row after row.
fn record_batch_inputs(taps: &mut Taps, processed: &[Processed], pad: u32) -> Result<()> {
    let seq = processed.iter().map(|p| p.input_ids.len()).max().unwrap_or(0);
    let rows = processed.len();
    let (mut ids, mut mask) = (Vec::with_capacity(rows * seq), Vec::with_capacity(rows * seq));
    for p in processed {
        let padding = seq - p.input_ids.len();
        ids.extend(std::iter::repeat_n(i64::from(pad), padding).chain(p.input_ids.iter().map(|&i| i64::from(i))));
        mask.extend(std::iter::repeat_n(0i64, padding).chain(std::iter::repeat_n(1, p.input_ids.len())));
    }
    taps.record(Stage::InputIds.tap(), &Tensor::from_vec(ids, (rows, seq), &Device::Cpu)?);
    taps.record(Stage::AttentionMask.tap(), &Tensor::from_vec(mask, (rows, seq), &Device::Cpu)?);
    let grids: Vec<_> = processed.iter().flat_map(|p| p.grids.clone()).collect();
    let pixels: Vec<&Tensor> = processed.iter().filter_map(|p| p.pixel_values.as_ref()).collect();
    if !pixels.is_empty() {
        let merged = Processed { pixel_values: Some(Tensor::cat(&pixels, 0)?), grids, ..Default::default() };
        let mut images = Taps::recording();
        record_inputs(&mut images, &merged)?;
        for (tap, t) in images.into_map() {
            if tap.stage() != Stage::InputIds {
                taps.record(tap, &t);
            }
        }
    }
    Ok(())
}

/// `gen.tokens` [rows, steps] of a batch's greedy generation.
fn record_tokens(taps: &mut Taps, tokens: &[Vec<u32>]) -> Result<()> {
    let steps = tokens.first().map_or(0, Vec::len);
    let flat: Vec<i64> = tokens.iter().flatten().map(|&t| i64::from(t)).collect();
    taps.record(Stage::GenTokens.tap(), &Tensor::from_vec(flat, (tokens.len(), steps), &Device::Cpu)?);
    Ok(())
}

/// Each row's request run alone (greedy generation for `steps` steps, as its own case would
/// run it), its taps laid out as the batch's packed taps: what a batch must not change.
fn rows_alone(model: &Model, processed: &[Processed], steps: usize, eos: &[u32]) -> Result<BTreeMap<DumpKey, Array>> {
    let mut per_tap: BTreeMap<DumpKey, Vec<Array>> = BTreeMap::new();
    for p in processed {
        let mut taps = Taps::recording();
        record_inputs(&mut taps, p)?;
        let positions = VisionPositions::new(&model.config.vision_config, &p.grids);
        let pixels = p.pixel_values.as_ref().map(|t| (t, &positions));
        model.generate_greedy(&p.input_ids, pixels, steps, eos, &mut taps)?;
        for (key, array) in arrays(taps, None)? {
            per_tap.entry(key).or_default().push(array);
        }
    }
    let mut stacked = BTreeMap::new();
    for (key, rows) in per_tap {
        if rows.len() == processed.len() {
            let array = parity::batch::stack_rows(&rows, key.tap.layout())
                .map_err(|e| anyhow::anyhow!("{key} of the rows run alone: {e}"))?;
            stacked.insert(key, array);
        }
    }
    Ok(stacked)
}
