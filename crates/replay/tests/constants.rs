//! Every numerical constant of the model is observable: each epsilon, rotary base, attention
//! scale and the softplus threshold, changed tenfold (a rotary base twofold) when the model is
//! built, makes at least one tap of a shipped f32 case fail. A constant no tap notices could be
//! wrong in the port without any parity test saying so.
//!
//! The change is made here, in the tests, through the config the model is built from
//! ([`neuron::config::TextConstants`] and [`neuron::config::VisionConstants`] hold the values
//! transformers fixes in code); production code has no switches. Where the iteration model's
//! activations would leave a constant invisible, `script/make_model.py` (`expose_constants`)
//! puts one head or input in the regime where it matters. Every test replays chelsea, the
//! cheapest case that catches all of them: the text constants with the text model teacher
//! forced, the vision constants with the tower teacher forced.

use contract::Tap;
use neuron::config::Config;
use parity::manifest::Manifest;
use replay::{CaseSetup, Mode, Perturbations};

const CASE: &str = "chelsea";

fn manifest() -> Manifest {
    replay::workspace_manifest().unwrap_or_else(|e| panic!("{e:#}"))
}

/// Builds the model of [`CASE`] from its config changed by `change`, replays the case in
/// `mode` and asserts that some tap fails; prints the first failing tap with its metrics. The
/// same tap must pass with the unchanged model, so the failure is the constant's, not the
/// fixtures'. If every tap passes, the message names the surviving constant and the largest
/// deviation from the reference seen.
fn assert_a_tap_fails(constant: &str, mode: Mode, change: impl FnOnce(&mut Config)) {
    let manifest = manifest();
    let mut inputs = CaseSetup::new(manifest.case(CASE).unwrap(), None).unwrap();
    change(&mut inputs.config);
    let model = replay::load_model(&inputs).unwrap();
    let run = replay::run_with(&inputs, mode, &model, &Perturbations::default()).unwrap();
    let taps = manifest.case(CASE).unwrap().taps_checked(mode);
    assert!(!taps.is_empty(), "case {CASE} records no tap that a {} run checks", mode.name());
    // (max |Δ|, the tolerance at that element, the tap) of the worst tap so far.
    let mut largest = (0f64, 0f64, None);
    for &tap in &taps {
        let result = run.check(manifest.case(CASE).unwrap(), tap).unwrap_or_else(|e| panic!("{constant}: {e:#}"));
        if !result.passed() {
            assert_passes_unchanged(&manifest, mode, tap);
            println!("{constant} is caught at {tap}:\n{}", result.message());
            return;
        }
        if let Some(worst) = &result.comparison.max_abs {
            if worst.value > largest.0 {
                let tolerance = &result.comparison.tolerance;
                largest = (worst.value, tolerance.atol + tolerance.rtol * worst.expected.abs(), Some(tap));
            }
        }
    }
    let (deviation, allowed, at) = largest;
    let at = at.map_or_else(|| "no tap".to_string(), |t| t.to_string());
    panic!(
        "{constant} survived: all {} taps of {CASE} passed in {}; the largest deviation from the reference \
         was max |Δ| {deviation:.3e} at {at} (the tolerance there {allowed:.3e})",
        taps.len(),
        mode.name()
    );
}

/// The tap passes when the model is built with transformers' values.
fn assert_passes_unchanged(manifest: &Manifest, mode: Mode, tap: Tap) {
    let inputs = CaseSetup::new(manifest.case(CASE).unwrap(), None).unwrap();
    let model = replay::load_model(&inputs).unwrap();
    let run = replay::run_with(&inputs, mode, &model, &Perturbations::default()).unwrap();
    let result = run.check(manifest.case(CASE).unwrap(), tap).unwrap();
    assert!(result.passed(), "{tap} fails without any change, so it cannot show one:\n{}", result.message());
}

/// `Qwen3_5RMSNorm(..., eps=config.rms_norm_eps)`: the decoder layers' input and
/// post-attention norms, q_norm, k_norm and the final norm. The gated RMSNorm reads the same
/// field; it keeps its value here so that only the zero-centred norms change (the next test
/// changes the gated one alone).
#[test]
fn an_rms_norm_epsilon_ten_times_too_large_fails_a_tap() {
    assert_a_tap_fails("rms_norm_eps × 10 (zero-centred RMSNorm)", Mode::LmTeacherForced, |c| {
        let t = &mut c.text_config;
        t.constants.gated_norm_eps = Some(t.rms_norm_eps);
        t.rms_norm_eps *= 10.0;
    });
}

/// `Qwen3_5RMSNormGated(self.head_v_dim, eps=self.layer_norm_epsilon)` of the Gated DeltaNet.
#[test]
fn a_gated_rms_norm_epsilon_ten_times_too_large_fails_a_tap() {
    assert_a_tap_fails("gated RMSNorm eps × 10", Mode::LmTeacherForced, |c| {
        let t = &mut c.text_config;
        t.constants.gated_norm_eps = Some(10.0 * t.gated_norm_eps());
    });
}

/// `l2norm(query, dim=-1, eps=1e-6)` and of key in the delta rule.
#[test]
fn an_l2norm_epsilon_ten_times_too_large_fails_a_tap() {
    assert_a_tap_fails("l2norm eps × 10 (delta rule)", Mode::LmTeacherForced, |c| {
        c.text_config.constants.l2norm_eps *= 10.0;
    });
}

/// `nn.LayerNorm(config.hidden_size, eps=1e-6)` of the vision blocks and the patch merger.
#[test]
fn a_vision_layer_norm_epsilon_ten_times_too_large_fails_a_tap() {
    assert_a_tap_fails("vision LayerNorm eps × 10", Mode::VisionTeacherForced, |c| {
        c.vision_config.constants.layer_norm_eps *= 10.0;
    });
}

/// `rope_parameters.rope_theta` of the text config (1e7 in the iteration model, as in
/// Qwen3.6-27B).
#[test]
fn a_text_rope_theta_twice_too_large_fails_a_tap() {
    assert_a_tap_fails("text rope_theta × 2", Mode::LmTeacherForced, |c| {
        c.text_config.rope_parameters.rope_theta *= 2.0;
    });
}

/// The vision config's `rope_parameters.rope_theta`, 10000 by default
/// (`compute_axial_rope_parameters`).
#[test]
fn a_vision_rope_theta_twice_too_large_fails_a_tap() {
    assert_a_tap_fails("vision rope_theta × 2", Mode::VisionTeacherForced, |c| {
        c.vision_config.rope_parameters.rope_theta *= 2.0;
    });
}

/// `Qwen3_5Attention.scaling = self.head_dim**-0.5`.
#[test]
fn a_text_attention_scale_ten_times_too_large_fails_a_tap() {
    assert_a_tap_fails("text attention scale × 10", Mode::LmTeacherForced, |c| {
        let t = &mut c.text_config;
        t.constants.attention_scale = Some(10.0 * t.attention_scale());
    });
}

/// `Qwen3_5VisionAttention.scaling = self.head_dim**-0.5`.
#[test]
fn a_vision_attention_scale_ten_times_too_large_fails_a_tap() {
    assert_a_tap_fails("vision attention scale × 10", Mode::VisionTeacherForced, |c| {
        let v = &mut c.vision_config;
        v.constants.attention_scale = Some(10.0 * v.attention_scale());
    });
}

/// `scaling = query.shape[-1] ** -0.5` of `torch_chunk_gated_delta_rule` (a division by
/// `query.shape[-1] ** 0.5` in `torch_recurrent_gated_delta_rule`). The gated RMSNorm after
/// the delta rule divides a uniform scale of its output out again, except where eps is a
/// sizeable part of the mean square, which is where this is seen.
#[test]
fn a_delta_rule_query_scale_ten_times_too_large_fails_a_tap() {
    assert_a_tap_fails("delta rule query scale × 10", Mode::LmTeacherForced, |c| {
        let t = &mut c.text_config;
        t.constants.linear_attention_scale = Some(10.0 * (t.linear_key_head_dim as f64).powf(-0.5));
    });
}

/// `F.softplus(a.float() + self.dt_bias)`: torch's threshold 20, above which softplus is the
/// identity. In f32 a threshold of 200 differs only where exp overflows (above 88.7), which
/// value head 5 of the first Gated DeltaNet reaches (make_model.py).
#[test]
fn a_softplus_threshold_ten_times_too_large_fails_a_tap() {
    assert_a_tap_fails("softplus threshold × 10", Mode::LmTeacherForced, |c| {
        c.text_config.constants.softplus_threshold *= 10.0;
    });
}
