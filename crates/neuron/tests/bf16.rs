//! The iteration model computing in bf16 (as checkpoints are served, and as the reference runs
//! with `from_pretrained(dtype=torch.bfloat16)`): which dtype each activation and state has.
//!
//! The numbers themselves are checked against the bf16 reference by the bf16 cases of
//! `fixtures.toml` (chelsea-bf16, two-images-bf16, text-only-bf16, standin-astronaut-bf16),
//! tap by tap in every replay mode, with the tolerance calibrated from the reference's own
//! bf16-vs-f32 noise (docs/BF16.md).

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use candle_core::{DType, Tensor};
use neuron::config::Config;
use neuron::model::{Model, Residency};
use neuron::preprocess::Processor;
use neuron::taps::Taps;
use neuron::text::cache::LayerState;
use neuron::vision::VisionPositions;
use neuron::{ComputeDtype, Stage};

fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn model_dir() -> PathBuf {
    workspace().join("fixtures/models/tiny-qwen3.6-27b")
}

fn model(dtype: ComputeDtype) -> &'static Model {
    static F32: OnceLock<Model> = OnceLock::new();
    static BF16: OnceLock<Model> = OnceLock::new();
    let cell = if dtype == ComputeDtype::Bf16 { &BF16 } else { &F32 };
    cell.get_or_init(|| {
        Model::load(&model_dir(), &Config::from_dir(&model_dir()).unwrap(), Residency::Resident, dtype).unwrap()
    })
}

/// A case's request through Rust preprocessing: token ids, pixels and vision positions.
struct Request {
    ids: Vec<u32>,
    pixels: Option<(Tensor, VisionPositions)>,
}

fn request(images: &[&str], prompt: &str) -> Request {
    let paths: Vec<PathBuf> = images.iter().map(|i| workspace().join(format!("fixtures/images/{i}"))).collect();
    let refs: Vec<&Path> = paths.iter().map(PathBuf::as_path).collect();
    let processed = Processor::from_dir(&model_dir()).unwrap().process(&refs, prompt).unwrap();
    let positions = VisionPositions::new(&model(ComputeDtype::F32).config.vision_config, &processed.grids);
    Request { ids: processed.input_ids, pixels: processed.pixel_values.map(|p| (p, positions)) }
}

fn chelsea() -> Request {
    request(&["chelsea.png"], "Describe this image in one sentence.")
}

#[test]
fn a_bf16_model_keeps_activations_and_the_attention_and_conv_caches_in_bf16_and_the_delta_rule_state_in_f32() {
    let r = chelsea();
    let model = model(ComputeDtype::Bf16);
    let mut cache = model.new_cache();
    let mut taps = Taps::recording();
    let pixels = r.pixels.as_ref().map(|(t, p)| (t, p));
    let logits = model.prefill(&r.ids, pixels, &mut cache, &mut taps).unwrap();
    assert_eq!(logits.dtype(), DType::F32, "logits are widened to f32, as generate widens them");
    let bf16_taps = [
        Stage::VisionPatchEmbed.tap(),
        Stage::VisionTower.tap(),
        Stage::VisionProjector.tap(),
        Stage::LmLayer.at(0),
        Stage::LmLayer.at(3),
        Stage::LmNorm.tap(),
    ];
    for tap in bf16_taps {
        assert_eq!(taps.get(tap).unwrap().dtype(), DType::BF16, "{tap}");
    }
    let pos_embed = taps.get(Stage::VisionPosEmbed.tap()).unwrap();
    assert_eq!(pos_embed.dtype(), DType::F32, "the interpolated table before its cast");
    for i in 0..cache.num_layers() {
        match cache.layer(i).unwrap() {
            LayerState::Linear(Some(s)) => {
                assert_eq!((s.conv.dtype(), s.recurrent.dtype()), (DType::BF16, DType::F32), "layer {i}: conv, state");
            }
            LayerState::Full(Some(s)) => {
                assert_eq!((s.key.dtype(), s.value.dtype()), (DType::BF16, DType::BF16), "layer {i}: keys, values");
            }
            other => panic!("layer {i} has no state after the prefill: {other:?}"),
        }
    }
}

/// A bf16 model loaded `Residency::Mapped` reads its linear weights and embedding table where
/// the checkpoint is mapped (no copy at load) and packs them per call; one loaded `Resident`
/// packs copies at load. Both compute the same bits: the prefill's logits and every decode
/// step's.
#[test]
fn a_bf16_model_reading_its_mapped_weights_computes_what_one_with_packed_copies_computes() {
    let r = chelsea();
    let config = Config::from_dir(&model_dir()).unwrap();
    let mapped = Model::load(&model_dir(), &config, Residency::Mapped, ComputeDtype::Bf16).unwrap();
    let copied = model(ComputeDtype::Bf16);
    let bits = |t: &Tensor| -> Vec<u32> {
        t.flatten_all().unwrap().to_vec1::<f32>().unwrap().iter().map(|v| v.to_bits()).collect()
    };
    let pixels = r.pixels.as_ref().map(|(p, v)| (p, v));
    let (mut a, mut b) = (mapped.new_cache(), copied.new_cache());
    let (mut la, mut lb) = (
        mapped.prefill(&r.ids, pixels, &mut a, &mut Taps::disabled()).unwrap(),
        copied.prefill(&r.ids, pixels, &mut b, &mut Taps::disabled()).unwrap(),
    );
    for step in 0..4 {
        assert!(bits(&la) == bits(&lb), "step {step}: the mapped model's logits differ from the packed one's");
        let token = neuron::model::argmax(&la.to_vec1::<f32>().unwrap()).unwrap();
        la = mapped.decode_step(token, &mut a).unwrap();
        lb = copied.decode_step(token, &mut b).unwrap();
    }
}
