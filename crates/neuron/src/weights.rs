//! Finding and memory-mapping a checkpoint's safetensors files.
//!
//! Tensors are read by their checkpoint names (`model.visual.*`, `model.language_model.*`,
//! `lm_head.*`) and converted to f32 on load whatever their stored dtype (bf16, f16, f32);
//! tensors the forward pass never asks for (`mtp.*`) are never read.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use candle_core::{DType, Device};
use candle_nn::VarBuilder;

/// The safetensors files of a checkpoint: the shards named by
/// `model.safetensors.index.json`, or the single `model.safetensors`.
pub fn safetensors_files(dir: &Path) -> Result<Vec<PathBuf>> {
    let index = dir.join("model.safetensors.index.json");
    if index.is_file() {
        let text = std::fs::read_to_string(&index).with_context(|| format!("reading {}", index.display()))?;
        let json: serde_json::Value =
            serde_json::from_str(&text).with_context(|| format!("parsing {}", index.display()))?;
        let Some(map) = json.get("weight_map").and_then(|m| m.as_object()) else {
            bail!("{}: no \"weight_map\" object", index.display());
        };
        let mut shards: Vec<PathBuf> = map.values().filter_map(|v| v.as_str()).map(|f| dir.join(f)).collect();
        shards.sort();
        shards.dedup();
        for shard in &shards {
            if !shard.is_file() {
                bail!("{}: names shard {} which is missing", index.display(), shard.display());
            }
        }
        return Ok(shards);
    }
    let single = dir.join("model.safetensors");
    if single.is_file() {
        return Ok(vec![single]);
    }
    bail!("{}: neither model.safetensors nor model.safetensors.index.json is there", dir.display())
}

/// A `VarBuilder` over the memory-mapped checkpoint that hands out f32 tensors on the CPU.
/// A missing tensor or a tensor of the wrong shape is an error naming the tensor (and both
/// shapes), raised when the module that needs it is built.
pub fn var_builder(dir: &Path) -> Result<VarBuilder<'static>> {
    let files = safetensors_files(dir)?;
    // SAFETY: the files are mapped read-only; like every mmap user we rely on nobody
    // truncating a checkpoint while it is in use.
    let vb = unsafe { VarBuilder::from_mmaped_safetensors(&files, DType::F32, &Device::Cpu) }
        .with_context(|| format!("mapping the safetensors files of {}", dir.display()))?;
    Ok(vb)
}
