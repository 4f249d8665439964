//! Loading a checkpoint: a missing or misshaped tensor is an error naming the tensor and
//! the shapes; weights stored in bf16 are computed in f32.

use std::collections::HashMap;

use candle_core::{DType, Device, Tensor};
use candle_nn::VarBuilder;
use neuron::model::Model;
use neuron::replay::{self, CaseInputs};

fn checkpoint() -> (CaseInputs, HashMap<String, Tensor>) {
    let manifest = replay::workspace_manifest().unwrap();
    let inputs = CaseInputs::new(&manifest, "chelsea").unwrap();
    let mut tensors = HashMap::new();
    for file in neuron::weights::safetensors_files(&inputs.model_dir).unwrap() {
        tensors.extend(candle_core::safetensors::load(&file, &Device::Cpu).unwrap());
    }
    (inputs, tensors)
}

fn build_error(inputs: &CaseInputs, tensors: HashMap<String, Tensor>) -> String {
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
fn sharded_copy(inputs: &CaseInputs, tensors: &HashMap<String, Tensor>, name: &str) -> std::path::PathBuf {
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
