//! Mutation proof: each deliberately injected fault makes verification fail at the tap where
//! the fault enters — and not before — with a message that names the case, the tap and the
//! metrics. The faults are injected here, in the tests, by perturbing weights, position
//! inputs or the config at load time; production code has no switches.

use std::collections::HashMap;

use candle_core::{DType, Device, Tensor};
use candle_nn::VarBuilder;
use contract::{Family, Stage, Tap};
use neuron::config::LayerType;
use neuron::model::{EmbeddedBatch, Model};
use neuron::vision::VisionPositions;
use parity::manifest::{DumpKey, Manifest, Part};
use replay::{CaseSetup, Mode, Perturbations, Run};

fn manifest() -> Manifest {
    replay::workspace_manifest().unwrap_or_else(|e| panic!("{e:#}"))
}

/// Every tensor of the checkpoint, in f32, so a test can alter one before building.
fn all_tensors(inputs: &CaseSetup<'_>) -> HashMap<String, Tensor> {
    let files = neuron::weights::safetensors_files(&inputs.model_dir).unwrap();
    let mut map = HashMap::new();
    for f in files {
        for (name, t) in candle_core::safetensors::load(&f, &Device::Cpu).unwrap() {
            map.insert(name, t.to_dtype(DType::F32).unwrap());
        }
    }
    map
}

fn model_with(inputs: &CaseSetup<'_>, tensors: HashMap<String, Tensor>) -> Model {
    replay::model_from(inputs, VarBuilder::from_tensors(tensors, DType::F32, &Device::Cpu)).unwrap()
}

/// Runs `case` in `mode` with the positions the model would compute.
fn run(manifest: &Manifest, case: &str, mode: Mode, model: &Model) -> Run {
    let inputs = CaseSetup::new(manifest.case(case).unwrap(), None).unwrap();
    replay::run_with(&inputs, mode, model, &Perturbations::default()).unwrap()
}

/// Checks the run's taps in pipeline order and asserts that the first failure is
/// `expected_tap`, that every tap before it passes, and that the message names case, tap
/// and metrics.
fn assert_first_failure_at(manifest: &Manifest, case: &str, run: &Run, expected_tap: impl Into<DumpKey>) {
    let expected_tap = expected_tap.into();
    let message = first_failure_message(manifest, case, run, expected_tap);
    for needle in [case, &expected_tap.to_string(), "Mismatched elements", "Greatest absolute difference", "Cosine"] {
        assert!(message.contains(needle), "the failure message does not mention {needle:?}:\n{message}");
    }
}

/// Asserts that the first failure of the run in pipeline order is `expected_tap` and every tap
/// before it passes; returns the failure's message.
fn first_failure_message(manifest: &Manifest, case: &str, run: &Run, expected_tap: DumpKey) -> String {
    let mut upstream = Vec::new();
    let case_ref = manifest.case(case).unwrap();
    for tap in case_ref.checks(run.mode) {
        let result = run.check(case_ref, tap).unwrap();
        if result.passed() {
            upstream.push(tap);
            continue;
        }
        let message = result.message();
        assert_eq!(
            tap, expected_tap,
            "the fault should first show at {expected_tap}, but it showed at {tap} (taps passing before it: {upstream:?}):\n{message}"
        );
        println!("caught at {tap} as expected:\n{message}");
        return message;
    }
    panic!("the fault went unnoticed: every {} tap of {case} passed ({upstream:?})", run.mode.name());
}

const IMAGE_CASE: &str = "chelsea";

/// The index of the first decoder layer with full attention (the first to use positions and
/// the first with a KV cache).
fn first_full_attention_layer(inputs: &CaseSetup<'_>) -> usize {
    let types = inputs.config.text_config.layer_types();
    types.iter().position(|t| *t == neuron::config::LayerType::FullAttention).expect("a full-attention layer")
}

#[test]
fn a_zeroed_merger_bias_fails_at_the_projector() {
    let manifest = manifest();
    let inputs = CaseSetup::new(manifest.case(IMAGE_CASE).unwrap(), None).unwrap();
    let mut tensors = all_tensors(&inputs);
    let bias = tensors.get_mut("model.visual.merger.linear_fc2.bias").expect("the checkpoint has the merger bias");
    *bias = bias.zeros_like().unwrap();
    let model = model_with(&inputs, tensors);
    let run = run(&manifest, IMAGE_CASE, Mode::VisionTeacherForced, &model);
    assert_first_failure_at(&manifest, IMAGE_CASE, &run, Stage::VisionProjector.tap());
}

#[test]
fn position_embedding_indices_shifted_by_one_row_fail_at_the_position_embedding() {
    let manifest = manifest();
    let inputs = CaseSetup::new(manifest.case(IMAGE_CASE).unwrap(), None).unwrap();
    let model = replay::load_model(&inputs).unwrap();
    let cfg = inputs.config.vision_config.clone();
    let side = cfg.num_grid_per_side() as u32;
    let last = side * side - 1;
    let shift = |mut positions: VisionPositions| {
        for taps in &mut positions.interpolation.indices {
            for index in taps.iter_mut() {
                *index = (*index + side).min(last);
            }
        }
        positions
    };
    let perturb = Perturbations { vision_positions: Some(&shift), ..Default::default() };
    let run = replay::run_with(&inputs, Mode::VisionTeacherForced, &model, &perturb).unwrap();
    assert_first_failure_at(&manifest, IMAGE_CASE, &run, Stage::VisionPosEmbed.tap());
}

#[test]
fn a_doubled_vision_rotary_base_fails_at_the_first_block() {
    let manifest = manifest();
    let mut inputs = CaseSetup::new(manifest.case(IMAGE_CASE).unwrap(), None).unwrap();
    let theta = inputs.config.vision_config.rope_theta();
    inputs.config.vision_config.rope_parameters.rope_theta = 2.0 * theta;
    let model = replay::load_model(&inputs).unwrap();
    let run = run(&manifest, IMAGE_CASE, Mode::VisionTeacherForced, &model);
    assert_first_failure_at(&manifest, IMAGE_CASE, &run, Stage::VisionBlock.at(0));
}

#[test]
fn swapped_h_and_w_mrope_sections_fail_at_the_first_full_attention_layer() {
    let manifest = manifest();
    let inputs = CaseSetup::new(manifest.case(IMAGE_CASE).unwrap(), None).unwrap();
    let mut model = replay::load_model(&inputs).unwrap();
    for axis in model.text.rotary.axis.iter_mut() {
        *axis = [0, 2, 1][*axis];
    }
    let run = run(&manifest, IMAGE_CASE, Mode::LmTeacherForced, &model);
    let first_full = first_full_attention_layer(&inputs);
    // The linear-attention layers before it use no positions: they must still pass.
    assert_first_failure_at(&manifest, IMAGE_CASE, &run, Stage::LmLayer.at(first_full));
}

#[test]
fn rms_norms_without_the_one_plus_w_offset_fail_at_the_first_layer() {
    let manifest = manifest();
    let inputs = CaseSetup::new(manifest.case(IMAGE_CASE).unwrap(), None).unwrap();
    let mut tensors = all_tensors(&inputs);
    // A port that scales by w instead of (1 + w) is the reference with every zero-centred
    // norm weight shifted by −1.
    let zero_centred = |name: &str| {
        name.starts_with("model.language_model.") && name.ends_with("norm.weight") && !name.contains("linear_attn.norm")
    };
    let mut touched = 0;
    for (name, t) in tensors.iter_mut() {
        if zero_centred(name) {
            *t = (&*t - 1.0).unwrap();
            touched += 1;
        }
    }
    assert!(touched > 0, "no zero-centred norm weights found to perturb");
    let model = model_with(&inputs, tensors);
    let run = run(&manifest, IMAGE_CASE, Mode::LmTeacherForced, &model);
    assert_first_failure_at(&manifest, IMAGE_CASE, &run, Stage::LmLayer.at(0));
}

#[test]
fn text_after_an_image_not_resumed_at_max_plus_one_fails_at_the_position_ids() {
    let manifest = manifest();
    let inputs = CaseSetup::new(manifest.case(IMAGE_CASE).unwrap(), None).unwrap();
    let model = replay::load_model(&inputs).unwrap();
    let image_token = inputs.config.image_token_id;
    let ids: Vec<u32> = replay::reference_input_ids(manifest.case(IMAGE_CASE).unwrap()).unwrap();
    let last_image_token = ids.iter().rposition(|&i| i == image_token).expect("the case has an image");
    let resume_at_max = |mut p: [Vec<i64>; 3]| {
        // Resume at the image's largest position instead of one past it.
        for row in p.iter_mut() {
            for v in &mut row[last_image_token + 1..] {
                *v -= 1;
            }
        }
        p
    };
    let perturb = Perturbations { text_positions: Some(&resume_at_max), ..Default::default() };
    let run = replay::run_with(&inputs, Mode::LmTeacherForced, &model, &perturb).unwrap();
    assert_first_failure_at(&manifest, IMAGE_CASE, &run, Stage::PositionIds.tap());
}

#[test]
fn a_flipped_sign_of_a_log_fails_at_the_first_layer() {
    let manifest = manifest();
    let case = "text-only";
    let inputs = CaseSetup::new(manifest.case(case).unwrap(), None).unwrap();
    let mut tensors = all_tensors(&inputs);
    let mut touched = 0;
    for (name, t) in tensors.iter_mut() {
        if name.ends_with("linear_attn.A_log") {
            *t = t.neg().unwrap();
            touched += 1;
        }
    }
    assert!(touched > 0, "no A_log tensors found to perturb");
    let model = model_with(&inputs, tensors);
    let run = run(&manifest, case, Mode::LmTeacherForced, &model);
    assert_first_failure_at(&manifest, case, &run, Stage::LmLayer.at(0));
}

// Generation faults: each is injected into the cache between the steps of a
// decode-teacher-forced run and must fail at the cache tap or the step where it enters.

use neuron::text::cache::{Cache, LayerState};

/// The first failing tap of a decode-teacher-forced run of chelsea must be `expected_tap`, and
/// for the step logits the message must name `step` as the first diverging step.
fn assert_decode_fault_at(perturb: &Perturbations, expected_tap: Tap, step: Option<usize>) {
    let manifest = manifest();
    let inputs = CaseSetup::new(manifest.case(IMAGE_CASE).unwrap(), None).unwrap();
    let model = replay::load_model(&inputs).unwrap();
    let run = replay::run_with(&inputs, Mode::DecodeTeacherForced, &model, perturb).unwrap();
    assert_first_failure_at(&manifest, IMAGE_CASE, &run, expected_tap);
    if let Some(step) = step {
        let message = run.check(manifest.case(IMAGE_CASE).unwrap(), expected_tap).unwrap().message();
        assert!(
            message.contains(&format!("first diverging step: {step}")),
            "the fault enters at step {step}; the message should name it:\n{message}"
        );
    }
}

/// Calls `f(layer, state)` on every Gated DeltaNet layer's state in a cache.
fn for_each_linear(cache: &mut Cache, mut f: impl FnMut(usize, &mut neuron::text::cache::LinearState)) {
    for i in 0..cache.num_layers() {
        if let Ok(LayerState::Linear(Some(state))) = cache.layer_mut(i) {
            f(i, state);
        }
    }
}

#[test]
fn a_conv_state_not_shifted_by_a_decode_step_fails_at_the_step_after_it() {
    // The first decode step reads the prefill's state, which is right; it then keeps the old
    // window instead of shifting in its token, so step 2 convolves the wrong columns.
    let keep_old_window = |before: &Cache, after: &mut Cache| {
        let mut before = before.clone();
        let mut old_windows = std::collections::BTreeMap::new();
        for_each_linear(&mut before, |i, state| {
            old_windows.insert(i, state.conv.clone());
        });
        for_each_linear(after, |i, state| state.conv = old_windows[&i].clone());
    };
    let perturb = Perturbations { cache_after_step: Some(&keep_old_window), ..Default::default() };
    assert_decode_fault_at(&perturb, Stage::GenLogits.tap(), Some(2));
}

#[test]
fn a_recurrent_state_reset_between_decode_steps_fails_at_the_step_after_the_reset() {
    let reset = |_: &Cache, after: &mut Cache| {
        for_each_linear(after, |_, state| state.recurrent = state.recurrent.zeros_like().unwrap());
    };
    let perturb = Perturbations { cache_after_step: Some(&reset), ..Default::default() };
    assert_decode_fault_at(&perturb, Stage::GenLogits.tap(), Some(2));
}

#[test]
fn decode_positions_without_the_rope_delta_fail_at_the_first_decode_step() {
    // chelsea's 24 image tokens take 6 positions: the text after them resumes 18 positions
    // early (a negative rope delta), which a decode step that counts tokens forgets.
    let forget_delta = |cache: &mut Cache| {
        assert!(cache.rope_delta() < 0, "chelsea's rope delta is negative, so forgetting it moves positions");
        cache.set_rope_delta(0);
    };
    let perturb = Perturbations { cache_after_prefill: Some(&forget_delta), ..Default::default() };
    assert_decode_fault_at(&perturb, Stage::GenLogits.tap(), Some(1));
}

#[test]
fn keys_cached_before_their_rotary_fail_at_the_cached_keys() {
    let manifest = manifest();
    let inputs = CaseSetup::new(manifest.case(IMAGE_CASE).unwrap(), None).unwrap();
    let model = replay::load_model(&inputs).unwrap();
    let ids: Vec<u32> = replay::reference_input_ids(manifest.case(IMAGE_CASE).unwrap()).unwrap();
    let grids =
        replay::grids_of(&replay::reference(manifest.case(IMAGE_CASE).unwrap(), Stage::ImageGridThw.tap()).unwrap())
            .unwrap();
    let positions = model.positions(&ids, &grids).unwrap();
    let (cos, sin) = model.text.rotary.cos_sin(&positions, &Device::Cpu).unwrap();
    // Undo the rotary of each cached key: rotating by −θ (cos θ, −sin θ) over the rotated dims.
    let unrotate = |cache: &mut Cache| {
        for i in 0..cache.num_layers() {
            if let Ok(LayerState::Full(Some(kv))) = cache.layer_mut(i) {
                let rot = cos.dim(1).unwrap();
                let head_dim = kv.key.dim(2).unwrap();
                let x = kv.key.narrow(2, 0, rot).unwrap();
                let pass = kv.key.narrow(2, rot, head_dim - rot).unwrap();
                let back = (x.broadcast_mul(&cos).unwrap()
                    - neuron::rope::rotate_half(&x).unwrap().broadcast_mul(&sin).unwrap())
                .unwrap();
                kv.key = Tensor::cat(&[&back, &pass], 2).unwrap();
            }
        }
    };
    let perturb = Perturbations { cache_after_prefill: Some(&unrotate), ..Default::default() };
    let run = replay::run_with(&inputs, Mode::DecodeTeacherForced, &model, &perturb).unwrap();
    let first_full = first_full_attention_layer(&inputs);
    assert_first_failure_at(&manifest, IMAGE_CASE, &run, Stage::CacheKey.at(first_full));
}

// Request faults: a left-padded batch (batch-mixed: chelsea, text-short and rocket, text-short
// padded by more than the conv window) and a case in parts. Each is injected into what the
// model is given (a batch's positions and masks, a session's cache) and must fail where it
// enters.

const BATCH_CASE: &str = "batch-mixed";

fn run_batch(perturb: &Perturbations) -> (Manifest, Run) {
    let manifest = manifest();
    let inputs = CaseSetup::new(manifest.case(BATCH_CASE).unwrap(), None).unwrap();
    let model = replay::load_model(&inputs).unwrap();
    let run = replay::run_with(&inputs, Mode::FromImageFiles, &model, perturb).unwrap();
    assert!(run.padding.iter().any(|&p| p >= 5), "a row of {BATCH_CASE} is padded by 5 or more: {:?}", run.padding);
    (manifest, run)
}

#[test]
fn pads_not_zeroed_before_the_gated_delta_net_fail_at_the_first_decoder_layer() {
    // The pad token's embedding then enters the causal conv and the recurrent state of the
    // first Gated DeltaNet layer, and bleeds into the row's first real tokens.
    let keep_pads = |batch: &mut EmbeddedBatch| batch.linear_padding.iter_mut().for_each(|p| *p = 0);
    let (manifest, run) = run_batch(&Perturbations { batch_after_embed: Some(&keep_pads), ..Default::default() });
    assert_first_failure_at(&manifest, BATCH_CASE, &run, Stage::LmLayer.at(0));
}

#[test]
fn a_padded_rows_positions_counted_from_its_first_pad_fail_at_the_position_ids() {
    let from_first_pad = |batch: &mut EmbeddedBatch| {
        for (positions, &pad) in batch.positions.iter_mut().zip(&batch.padding) {
            for axis in positions.iter_mut() {
                for (j, p) in axis.iter_mut().enumerate() {
                    *p = if j < pad { j as i64 } else { *p + pad as i64 };
                }
            }
        }
    };
    let (manifest, run) = run_batch(&Perturbations { batch_after_embed: Some(&from_first_pad), ..Default::default() });
    assert_first_failure_at(&manifest, BATCH_CASE, &run, Stage::PositionIds.tap());
}

#[test]
fn a_full_attention_mask_that_ignores_pads_fails_at_the_first_full_attention_layer() {
    // The Gated DeltaNet layers still zero the pads; only full attention's key mask is lost.
    let attend_to_pads = |batch: &mut EmbeddedBatch| batch.padding.iter_mut().for_each(|p| *p = 0);
    let (manifest, run) = run_batch(&Perturbations { batch_after_embed: Some(&attend_to_pads), ..Default::default() });
    let inputs = CaseSetup::new(manifest.case(BATCH_CASE).unwrap(), None).unwrap();
    assert_first_failure_at(&manifest, BATCH_CASE, &run, Stage::LmLayer.at(first_full_attention_layer(&inputs)));
}

fn run_parts(case: &str, perturb: &Perturbations) -> (Manifest, Run) {
    let manifest = manifest();
    let inputs = CaseSetup::new(manifest.case(case).unwrap(), None).unwrap();
    let model = replay::load_model(&inputs).unwrap();
    let run = replay::run_with(&inputs, Mode::Continue, &model, perturb).unwrap();
    (manifest, run)
}

#[test]
fn a_restored_prefix_cache_without_its_conv_state_fails_at_the_first_suffixs_recurrent_state() {
    // The suffix is longer than the conv window, so the conv state after its prefill is whole
    // again; what the lost window corrupts is the first Gated DeltaNet layer's recurrent state
    // (and everything after it, the last logits included).
    let case = "prefix-two-questions";
    let drop_conv =
        |cache: &mut Cache| for_each_linear(cache, |_, state| state.conv = state.conv.zeros_like().unwrap());
    let (manifest, run) =
        run_parts(case, &Perturbations { cache_after_restore: Some(&drop_conv), ..Default::default() });
    let case_ref = manifest.case(case).unwrap();
    let suffix = Part::Suffix(0);
    let inputs = CaseSetup::new(case_ref, None).unwrap();
    let first_linear = inputs.config.text_config.layer_types().iter().position(|t| *t == LayerType::LinearAttention);
    let first_linear = first_linear.expect("a Gated DeltaNet layer");
    let conv = run.check(case_ref, DumpKey::of(suffix, Stage::CacheConv.at(first_linear))).unwrap();
    assert!(conv.passed(), "the conv state is rebuilt by the suffix's own tokens:\n{}", conv.message());
    let first_cache_failure = case_ref
        .checks(Mode::Continue)
        .into_iter()
        .filter(|k| k.part == Some(suffix) && k.tap.family() == Family::Cache)
        .find(|&k| !run.check(case_ref, k).unwrap().passed());
    assert_eq!(
        first_cache_failure,
        Some(DumpKey::of(suffix, Stage::CacheRecurrent.at(first_linear))),
        "the first wrong state of the suffix should be layer {first_linear}'s recurrent state"
    );
    assert_first_failure_at(&manifest, case, &run, DumpKey::of(suffix, Stage::LmLogitsLast.tap()));
}

#[test]
fn the_second_turns_rope_delta_reset_to_zero_fails_at_its_first_decode_step() {
    // Turn 2 brings rocket's image, whose tokens take fewer positions than tokens: its decode
    // steps resume from the conversation's rope delta, not from the token count.
    let case = "turns-new-image";
    let prefills = std::cell::Cell::new(0);
    let reset_second = |cache: &mut Cache| {
        prefills.set(prefills.get() + 1);
        if prefills.get() == 2 {
            assert!(cache.rope_delta() != 0, "the conversation's images make turn 2's rope delta non-zero");
            cache.set_rope_delta(0);
        }
    };
    let (manifest, run) =
        run_parts(case, &Perturbations { cache_after_prefill: Some(&reset_second), ..Default::default() });
    let expected = DumpKey::of(Part::Turn(1), Stage::GenLogits.tap());
    assert_first_failure_at(&manifest, case, &run, expected);
    let message = run.check(manifest.case(case).unwrap(), expected).unwrap().message();
    assert!(message.contains("first diverging step: 1"), "the fault enters at step 1 of turn 1:\n{message}");
}

// Video faults: each is one a port makes when a video is only "an image with more frames". They
// are injected into the weights, the tower's positions, the processor or the text positions of
// `video-counter` (7 sampled frames, so the last is repeated to fill 4 temporal patches of 4×6
// patches, each frame's tokens behind a timestamp).

const VIDEO_CASE: &str = "video-counter";

#[test]
fn the_temporal_slices_of_the_conv3d_swapped_fail_at_the_patch_embedding_of_a_video_only() {
    let manifest = manifest();
    let inputs = CaseSetup::new(manifest.case(VIDEO_CASE).unwrap(), None).unwrap();
    let mut tensors = all_tensors(&inputs);
    // [out, channels, frames, patch, patch]: the kernel slice of frame 0 and that of frame 1 swapped.
    let weight = tensors.get_mut("model.visual.patch_embed.proj.weight").expect("the patch embedding");
    let (first, second) = (weight.narrow(2, 0, 1).unwrap(), weight.narrow(2, 1, 1).unwrap());
    *weight = Tensor::cat(&[&second, &first], 2).unwrap();
    let model = model_with(&inputs, tensors);
    let run = run(&manifest, VIDEO_CASE, Mode::VisionTeacherForced, &model);
    assert_first_failure_at(&manifest, VIDEO_CASE, &run, Stage::VisionPatchEmbed.tap());
    // An image repeats its frame in both slices: the same fault passes every vision tap there,
    // which is why no image case could have caught it.
    let image = replay::run_with(
        &CaseSetup::new(manifest.case(IMAGE_CASE).unwrap(), None).unwrap(),
        Mode::VisionTeacherForced,
        &model,
        &Perturbations::default(),
    )
    .unwrap();
    let case = manifest.case(IMAGE_CASE).unwrap();
    for tap in case.checks(Mode::VisionTeacherForced) {
        let result = image.check(case, tap).unwrap();
        assert!(result.passed(), "an image does not see the swapped slices:\n{}", result.message());
    }
}

#[test]
fn attention_across_the_frames_of_a_video_fails_at_the_first_block() {
    let manifest = manifest();
    let inputs = CaseSetup::new(manifest.case(VIDEO_CASE).unwrap(), None).unwrap();
    let model = replay::load_model(&inputs).unwrap();
    // One attention segment per video instead of one per frame.
    let per_video = |mut positions: VisionPositions| {
        let mut bounds = vec![0];
        for g in &positions.grids {
            bounds.push(bounds.last().unwrap() + g.patches());
        }
        assert!(bounds.len() < positions.segments.len(), "the video has several frames to merge");
        positions.segments = bounds;
        positions
    };
    let perturb = Perturbations { vision_positions: Some(&per_video), ..Default::default() };
    let run = replay::run_with(&inputs, Mode::VisionTeacherForced, &model, &perturb).unwrap();
    assert_first_failure_at(&manifest, VIDEO_CASE, &run, Stage::VisionBlock.at(0));
}

#[test]
fn timestamps_printed_with_another_precision_fail_at_the_token_ids() {
    let manifest = manifest();
    let inputs = CaseSetup::new(manifest.case(VIDEO_CASE).unwrap(), None).unwrap();
    let model = replay::load_model(&inputs).unwrap();
    // `<0.30 seconds>` instead of the reference's `<0.3 seconds>` (`f"{t:.1f}"`).
    let two_decimals = |seconds: f64| format!("<{seconds:.2} seconds>");
    let preprocess = neuron::preprocess::Hooks { timestamp_text: Some(&two_decimals), ..Default::default() };
    let perturb = Perturbations { preprocess, ..Default::default() };
    let run = replay::run_with(&inputs, Mode::FromImageFiles, &model, &perturb).unwrap();
    // The longer text tokenises to more ids: the tap fails on its shape, which the message gives.
    let message = first_failure_message(&manifest, VIDEO_CASE, &run, Stage::InputIds.tap().into());
    for needle in [VIDEO_CASE, "input.input_ids", "'shape' do not match: [109] != [105]"] {
        assert!(message.contains(needle), "the failure message does not mention {needle:?}:\n{message}");
    }
}

#[test]
fn a_rope_index_advancing_t_per_frame_fails_at_the_position_ids() {
    let manifest = manifest();
    let case = manifest.case(VIDEO_CASE).unwrap();
    let inputs = CaseSetup::new(case, None).unwrap();
    let model = replay::load_model(&inputs).unwrap();
    let video_token = inputs.config.video_token_id;
    let ids: Vec<u32> = replay::reference_input_ids(case).unwrap();
    // Qwen2-VL's index reads a video as one grid whose t grows frame by frame; here each frame's
    // tokens get t + (the frame's index), on top of the time the timestamps already carry.
    let per_frame = |mut p: [Vec<i64>; 3]| {
        let mut frame = -1i64;
        for (i, &id) in ids.iter().enumerate() {
            if id == video_token {
                if i == 0 || ids[i - 1] != video_token {
                    frame += 1;
                }
                p[0][i] += frame;
            }
        }
        assert!(frame >= 1, "the case's video has several frames");
        p
    };
    let perturb = Perturbations { text_positions: Some(&per_frame), ..Default::default() };
    let run = replay::run_with(&inputs, Mode::LmTeacherForced, &model, &perturb).unwrap();
    assert_first_failure_at(&manifest, VIDEO_CASE, &run, Stage::PositionIds.tap());
}

#[test]
fn padding_a_video_with_black_frames_instead_of_its_last_frame_fails_at_the_video_pixel_values() {
    let manifest = manifest();
    let inputs = CaseSetup::new(manifest.case(VIDEO_CASE).unwrap(), None).unwrap();
    let model = replay::load_model(&inputs).unwrap();
    // Black after normalisation: (0 / 255 − 0.5) / 0.5 (the iteration model's mean and std).
    let black = |last: &[f32]| vec![-1.0; last.len()];
    let preprocess = neuron::preprocess::Hooks { video_padding: Some(&black), ..Default::default() };
    let perturb = Perturbations { preprocess, ..Default::default() };
    let run = replay::run_with(&inputs, Mode::FromImageFiles, &model, &perturb).unwrap();
    assert_first_failure_at(&manifest, VIDEO_CASE, &run, Stage::PixelValuesVideos.tap());
}
