//! Loading a checkpoint: a missing or misshaped tensor is an error naming the tensor and
//! the shapes; weights stored in bf16 are computed in f32.

use std::collections::HashMap;

use candle_core::{DType, Device, Tensor};
use candle_nn::VarBuilder;
use contract::{ComputeDtype, Stage};
use neuron::model::Model;
use parity::manifest::Manifest;
use replay::CaseSetup;

fn manifest() -> &'static Manifest {
    static MANIFEST: std::sync::OnceLock<Manifest> = std::sync::OnceLock::new();
    MANIFEST.get_or_init(|| replay::workspace_manifest().unwrap())
}

fn checkpoint() -> (CaseSetup<'static>, HashMap<String, Tensor>) {
    let inputs = CaseSetup::new(manifest().case("chelsea").unwrap(), None).unwrap();
    let mut tensors = HashMap::new();
    for file in neuron::weights::safetensors_files(&inputs.model_dir).unwrap() {
        tensors.extend(candle_core::safetensors::load(&file, &Device::Cpu).unwrap());
    }
    (inputs, tensors)
}

fn build_error(inputs: &CaseSetup<'_>, tensors: HashMap<String, Tensor>) -> String {
    let vb = VarBuilder::from_tensors(tensors, DType::F32, &Device::Cpu);
    match Model::new(&inputs.config, vb) {
        Ok(_) => panic!("the model built from a broken checkpoint"),
        Err(e) => format!("{e:#}"),
    }
}

#[test]
fn the_checkpoint_is_stored_in_bf16_and_computed_in_f32() {
    let (inputs, tensors) = checkpoint();
    assert!(tensors.values().all(|t| t.dtype() == DType::BF16), "the iteration model should be stored in bf16");
    let vb = neuron::weights::var_builder(&inputs.model_dir).unwrap();
    let w = vb.get((128, 128), "model.language_model.layers.0.mlp.gate_proj.weight").unwrap();
    assert_eq!(w.dtype(), DType::F32);
}

#[test]
fn a_missing_tensor_is_an_error_naming_it() {
    let (inputs, mut tensors) = checkpoint();
    let name = "model.visual.merger.linear_fc2.bias";
    tensors.remove(name).expect("the checkpoint has the tensor");
    let err = build_error(&inputs, tensors);
    assert!(err.contains(name), "the error does not name {name}: {err}");
}

#[test]
fn a_misshaped_tensor_is_an_error_naming_it_and_both_shapes() {
    let (inputs, mut tensors) = checkpoint();
    let name = "model.language_model.layers.3.self_attn.k_proj.weight";
    let t = tensors.get_mut(name).expect("the checkpoint has the tensor");
    let (rows, cols) = t.dims2().unwrap();
    *t = t.narrow(0, 0, rows / 2).unwrap();
    let err = build_error(&inputs, tensors);
    for needle in [name.to_string(), format!("{}", rows / 2), format!("{rows}"), format!("{cols}")] {
        assert!(err.contains(&needle), "the error does not mention {needle:?}: {err}");
    }
}

/// The tiny checkpoint rewritten as two shards plus `model.safetensors.index.json`, like the
/// published releases.
fn sharded_copy(inputs: &CaseSetup<'_>, tensors: &HashMap<String, Tensor>, name: &str) -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("neuron-shards-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::copy(inputs.model_dir.join("config.json"), dir.join("config.json")).unwrap();
    let mut names: Vec<&String> = tensors.keys().collect();
    names.sort();
    let (first, second) = names.split_at(names.len() / 2);
    let mut weight_map = serde_json::Map::new();
    for (file, part) in [("model-00001-of-00002.safetensors", first), ("model-00002-of-00002.safetensors", second)] {
        let shard: HashMap<String, Tensor> = part.iter().map(|n| ((*n).clone(), tensors[*n].clone())).collect();
        candle_core::safetensors::save(&shard, dir.join(file)).unwrap();
        for n in part {
            weight_map.insert((*n).clone(), file.into());
        }
    }
    let index = serde_json::json!({"metadata": {}, "weight_map": weight_map});
    std::fs::write(dir.join("model.safetensors.index.json"), index.to_string()).unwrap();
    dir
}

#[test]
fn a_sharded_checkpoint_loads_every_tensor_from_its_shard() {
    let (inputs, tensors) = checkpoint();
    let dir = sharded_copy(&inputs, &tensors, "ok");
    let shards = neuron::weights::safetensors_files(&dir).unwrap();
    assert_eq!(shards.len(), 2, "{shards:?}");
    let vb = neuron::weights::var_builder(&dir).unwrap();
    let built = Model::new(&inputs.config, vb);
    std::fs::remove_dir_all(&dir).unwrap();
    built.unwrap();
}

#[test]
fn a_shard_named_by_the_index_but_missing_is_an_error_naming_it() {
    let (inputs, tensors) = checkpoint();
    let dir = sharded_copy(&inputs, &tensors, "missing");
    std::fs::remove_file(dir.join("model-00002-of-00002.safetensors")).unwrap();
    let err = neuron::weights::safetensors_files(&dir).unwrap_err().to_string();
    std::fs::remove_dir_all(&dir).unwrap();
    assert!(err.contains("model-00002-of-00002.safetensors") && err.contains("missing"), "{err}");
}

/// The streamed model (one layer in f32 at a time, embeddings gathered row by row, logits in
/// vocabulary chunks) computes what the resident model computes, on a sharded checkpoint
/// that also carries `mtp.*` tensors the forward pass must ignore, like the releases.
#[test]
fn a_streamed_model_computes_what_the_resident_model_computes() {
    use neuron::taps::Taps;
    use parity::compare::{compare, CompareOptions, Tolerance};

    let (inputs, mut tensors) = checkpoint();
    tensors.insert("mtp.fc.weight".into(), Tensor::ones((4, 8), DType::BF16, &Device::Cpu).unwrap());
    let dir = sharded_copy(&inputs, &tensors, "streamed");
    let checkpoint = std::sync::Arc::new(neuron::weights::Checkpoint::open(&dir).unwrap());
    let streamed = Model::streamed(&inputs.config, checkpoint, ComputeDtype::F32).unwrap();
    let resident = replay::load_model(&inputs).unwrap();

    let (ids, pixels, positions) = chelsea_request(&inputs);
    let run = |model: &Model| {
        let mut taps = Taps::recording();
        model.forward(&ids, Some((&pixels, &positions)), &mut taps).unwrap();
        taps.into_map()
    };
    let (expected, actual) = (run(&resident), run(&streamed));
    std::fs::remove_dir_all(&dir).unwrap();
    assert_eq!(
        expected.keys().collect::<Vec<_>>(),
        actual.keys().collect::<Vec<_>>(),
        "the two runs recorded different taps"
    );
    // Same operations on the same f32 weights; only the matmul's run-to-run rounding differs.
    let opts = CompareOptions { tolerance: Tolerance { atol: 1e-6, rtol: 0.0 }, top_k: None, calibration: None };
    for (tap, e) in &expected {
        let c = compare(&replay::to_array(e).unwrap(), &replay::to_array(&actual[tap]).unwrap(), &opts);
        assert!(c.passed(), "tap {tap}: streamed vs resident\n{c}");
    }
}

/// The chelsea case's token ids, pixel values and vision positions.
fn chelsea_request(inputs: &CaseSetup<'_>) -> (Vec<u32>, Tensor, neuron::vision::VisionPositions) {
    let case = manifest().case("chelsea").unwrap();
    let ids: Vec<u32> = replay::reference_input_ids(case).unwrap();
    let grids = replay::grids_of(&replay::reference(case, Stage::ImageGridThw.tap()).unwrap()).unwrap();
    let pixels = replay::reference(case, Stage::PixelValues.tap()).unwrap();
    let pixels = Tensor::from_slice(pixels.as_f32().unwrap(), pixels.shape.as_slice(), &Device::Cpu).unwrap();
    (ids, pixels, neuron::vision::VisionPositions::new(&inputs.config.vision_config, &grids))
}

/// The streamed model keeps no layer between steps, so its cache lives outside the layers: a
/// prefill and two decode steps give the logits and every cache state of the resident model.
#[test]
fn a_streamed_model_decodes_what_the_resident_model_decodes() {
    use neuron::model::argmax;
    use neuron::taps::Taps;

    let (inputs, tensors) = checkpoint();
    let dir = sharded_copy(&inputs, &tensors, "decode");
    let checkpoint = std::sync::Arc::new(neuron::weights::Checkpoint::open(&dir).unwrap());
    let streamed = Model::streamed(&inputs.config, checkpoint, ComputeDtype::F32).unwrap();
    let resident = replay::load_model(&inputs).unwrap();
    let (ids, pixels, positions) = chelsea_request(&inputs);

    let run = |model: &Model| {
        let mut cache = model.new_cache();
        let mut logits = model.prefill(&ids, Some((&pixels, &positions)), &mut cache, &mut Taps::disabled()).unwrap();
        for _ in 0..2 {
            let token = argmax(&logits.to_vec1::<f32>().unwrap()).unwrap();
            logits = model.decode_step(token, &mut cache).unwrap();
        }
        let mut states: Vec<(String, Tensor)> = cache.states().into_iter().map(|(t, s)| (t.to_string(), s)).collect();
        states.push(("logits".into(), logits));
        (cache.len(), states)
    };
    let (expected, actual) = (run(&resident), run(&streamed));
    std::fs::remove_dir_all(&dir).unwrap();
    assert_eq!(actual.0, expected.0, "tokens in the cache");
    assert_eq!(actual.1.len(), expected.1.len(), "number of cache states");
    for ((name, e), (actual_name, a)) in expected.1.iter().zip(&actual.1) {
        assert_eq!(actual_name, name);
        let diff = (e - a).unwrap().abs().unwrap().flatten_all().unwrap().max(0).unwrap().to_scalar::<f32>().unwrap();
        assert!(diff <= 1e-6, "{name} after two decode steps: streamed vs resident max |Δ| = {diff:e}");
    }
}

/// Chunks that do not divide the vocabulary (the last one is short) give the logits of the
/// whole matrix, column for column; so does a gathered embedding row.
#[test]
fn logits_in_uneven_vocabulary_chunks_equal_the_whole_matmul() {
    let (inputs, tensors) = checkpoint();
    let checkpoint = neuron::weights::Checkpoint::open(&inputs.model_dir).unwrap();
    let head = tensors["lm_head.weight"].to_dtype(DType::F32).unwrap();
    let x = Tensor::randn(0f32, 1.0, (2, head.dim(1).unwrap()), &Device::Cpu).unwrap();
    let whole = x.matmul(&head.t().unwrap()).unwrap();
    let chunked = neuron::text::logits_in_chunks(&x, &checkpoint, "lm_head.weight", 100).unwrap();
    assert_eq!(chunked.dims(), whole.dims());
    let diff = (chunked - &whole).unwrap().abs().unwrap().max_all().unwrap().to_scalar::<f32>().unwrap();
    assert!(diff <= 1e-5, "chunked logits differ from the whole matmul by up to {diff}");

    let name = "model.language_model.embed_tokens.weight";
    let table = tensors[name].to_dtype(DType::F32).unwrap();
    let ids = [0u32, 1023, 7, 7];
    let gathered = checkpoint.gather_rows(name, &ids).unwrap();
    let expected = table.index_select(&Tensor::new(&ids, &Device::Cpu).unwrap(), 0).unwrap();
    let diff = (gathered - expected).unwrap().abs().unwrap().max_all().unwrap().to_scalar::<f32>().unwrap();
    assert_eq!(diff, 0.0, "gathered embedding rows differ from index_select");
    let err = checkpoint.gather_rows(name, &[1024]).unwrap_err().to_string();
    assert!(err.contains("1024") && err.contains("vocabulary of 1024"), "{err}");
}

#[test]
fn a_checkpoint_lists_every_tensor_name_it_holds_sorted() {
    let (inputs, tensors) = checkpoint();
    let checkpoint = neuron::weights::Checkpoint::open(&inputs.model_dir).unwrap();
    let mut expected: Vec<&str> = tensors.keys().map(String::as_str).collect();
    expected.sort_unstable();
    assert_eq!(checkpoint.names(), expected, "names() against the tensors safetensors reads");
}

/// A manifest whose `moe-chelsea` and `chelsea` entries point at each other's checkpoints.
fn swapped_checkpoints() -> Manifest {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fixtures.toml");
    let text = std::fs::read_to_string(&path).unwrap();
    let (dense, moe) = ("fixtures/models/tiny-qwen3.6-27b\"", "fixtures/models/tiny-qwen3.6-35b-a3b\"");
    let swapped = text.replace(dense, "SWAP").replace(moe, dense).replace("SWAP", moe);
    Manifest::parse(&swapped, &path, path.parent().unwrap()).unwrap()
}

#[test]
fn a_dense_checkpoint_given_to_an_moe_entry_is_refused_naming_both_model_types() {
    let manifest = swapped_checkpoints();
    let err = CaseSetup::new(manifest.case("moe-chelsea").unwrap(), None).map(|_| ()).unwrap_err().to_string();
    assert!(
        err.contains("is a qwen3_5_moe entry") && err.contains("holds a qwen3_5 checkpoint"),
        "the error names both model types: {err}"
    );
}

#[test]
fn an_moe_checkpoint_given_to_a_dense_entry_is_refused_naming_both_model_types() {
    let manifest = swapped_checkpoints();
    let err = CaseSetup::new(manifest.case("chelsea").unwrap(), None).map(|_| ()).unwrap_err().to_string();
    assert!(err.contains("is a qwen3_5 entry") && err.contains("holds a qwen3_5_moe checkpoint"), "{err}");
}
