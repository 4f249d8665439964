//! Mutation proof for the vision tower: each deliberately injected fault makes verification
//! fail at the tap where the fault enters — and not before — with a message that names the
//! case, the tap and the metrics. The faults are injected here, in the tests, by perturbing
//! weights, position inputs or the config at load time; production code has no switches.

use candle_core::{DType, Device, Tensor};
use candle_nn::VarBuilder;
use neuron::replay::{self, CaseInputs, Run};
use neuron::vision::{VisionModel, VisionPositions};
use parity::manifest::Manifest;

const CASE: &str = "chelsea";

fn manifest() -> Manifest {
    replay::workspace_manifest().unwrap_or_else(|e| panic!("{e:#}"))
}

/// Every tensor of the checkpoint, in f32, so a test can alter one before building.
fn all_tensors(inputs: &CaseInputs) -> std::collections::HashMap<String, Tensor> {
    let files = neuron::weights::safetensors_files(&inputs.model_dir).unwrap();
    let mut map = std::collections::HashMap::new();
    for f in files {
        for (name, t) in candle_core::safetensors::load(&f, &Device::Cpu).unwrap() {
            map.insert(name, t.to_dtype(DType::F32).unwrap());
        }
    }
    map
}

/// Checks the run's vision taps in pipeline order and asserts that the first failure is
/// `expected_tap`, that every tap before it passes, and that the message names case, tap
/// and metrics.
fn assert_first_failure_at(manifest: &Manifest, run: &Run, expected_tap: &str) {
    let mut upstream = Vec::new();
    for tap in replay::taps_checked(manifest, CASE, run.mode) {
        let result = run.check(manifest, CASE, &tap).unwrap();
        if result.passed() {
            upstream.push(tap);
            continue;
        }
        let message = result.message();
        assert_eq!(
            tap, expected_tap,
            "the fault should first show at {expected_tap}, but it showed at {tap} (taps passing before it: {upstream:?}):\n{message}"
        );
        for needle in [CASE, expected_tap, "Mismatched elements", "Greatest absolute difference", "Cosine"] {
            assert!(message.contains(needle), "the failure message does not mention {needle:?}:\n{message}");
        }
        println!("caught at {tap} as expected:\n{message}");
        return;
    }
    panic!("the fault went unnoticed: every vision tap passed ({upstream:?})");
}

#[test]
fn a_zeroed_merger_bias_fails_at_the_projector() {
    let manifest = manifest();
    let inputs = CaseInputs::new(&manifest, CASE).unwrap();
    let mut tensors = all_tensors(&inputs);
    let bias = tensors.get_mut("model.visual.merger.linear_fc2.bias").expect("the checkpoint has the merger bias");
    *bias = bias.zeros_like().unwrap();
    let vision = replay::vision_from(&inputs, VarBuilder::from_tensors(tensors, DType::F32, &Device::Cpu)).unwrap();
    let cfg = inputs.config.vision_config.clone();
    let run = replay::run_vision_with(&manifest, CASE, &vision, |g| VisionPositions::new(&cfg, &g)).unwrap();
    assert_first_failure_at(&manifest, &run, "vision.projector");
}

#[test]
fn position_embedding_indices_shifted_by_one_row_fail_at_the_position_embedding() {
    let manifest = manifest();
    let inputs = CaseInputs::new(&manifest, CASE).unwrap();
    let vision = replay::load_vision(&inputs).unwrap();
    let cfg = inputs.config.vision_config.clone();
    let side = cfg.num_grid_per_side() as u32;
    let last = side * side - 1;
    let run = replay::run_vision_with(&manifest, CASE, &vision, |grids| {
        let mut positions = VisionPositions::new(&cfg, &grids);
        for taps in &mut positions.interpolation.indices {
            for index in taps.iter_mut() {
                *index = (*index + side).min(last);
            }
        }
        positions
    })
    .unwrap();
    assert_first_failure_at(&manifest, &run, "vision.pos_embed");
}

#[test]
fn a_doubled_vision_rotary_base_fails_at_the_first_block() {
    let manifest = manifest();
    let mut inputs = CaseInputs::new(&manifest, CASE).unwrap();
    let theta = inputs.config.vision_config.rope_theta();
    inputs.config.vision_config.rope_parameters = Some(neuron::config::VisionRopeParameters { rope_theta: 2.0 * theta });
    let vision: VisionModel = replay::load_vision(&inputs).unwrap();
    let cfg = inputs.config.vision_config.clone();
    let run = replay::run_vision_with(&manifest, CASE, &vision, |g| VisionPositions::new(&cfg, &g)).unwrap();
    assert_first_failure_at(&manifest, &run, "vision.block.0");
}
