//! Finding and memory-mapping a checkpoint's safetensors files.
//!
//! Tensors are read by their checkpoint names (`model.visual.*`, `model.language_model.*`,
//! `lm_head.*`) and converted on load, on all cores, to the compute dtype (f32 or bf16)
//! whatever their stored dtype (bf16, f16, f32); tensors the forward pass never asks for
//! (`mtp.*`) are never read.
//!
//! A 27B checkpoint is 55 GB of bf16: the pages of a tensor are released from the process
//! (`MADV_DONTNEED`) as soon as it has been converted, so that reading a layer costs its f32
//! copy and nothing more. Without that, every page ever read would stay resident and the
//! resident set would grow to the size of the checkpoint however carefully layers are
//! dropped. The kernel keeps the pages in its page cache, so a second read is still cheap.
//!
//! A bf16 model loaded `Residency::Mapped` from a bf16 checkpoint copies nothing large: its
//! linear weights and its embedding table are read where the checkpoint is mapped ([`MappedBf16`], handed out by
//! [`fetch`] from a builder of [`builder_mapped`]), as transformers uses the mapped file. Copying
//! them meant 8.6 GB of fresh pages before the first answer, which this VM hands out slowly
//! after another process has freed memory (docs/BENCHMARKS.md). The price is a packing per call,
//! which a decode step feels, so `Residency::Resident` still packs at load.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{bail, ensure, Context, Result};
use candle_core::{DType, Device, Shape, Tensor};
use candle_nn::var_builder::SimpleBackend;
use candle_nn::VarBuilder;
use contract::ComputeDtype;

use crate::kernels::gemm_bf16::Bf16Rows;
use memmap2::{Mmap, UncheckedAdvice};
use safetensors::Dtype;

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

/// Where one tensor's bytes are: shard, byte range inside the mapping, stored dtype and shape.
#[derive(Debug, Clone)]
struct Entry {
    shard: usize,
    start: usize,
    end: usize,
    dtype: Dtype,
    shape: Vec<usize>,
}

/// The memory-mapped shards of a checkpoint and the table of its tensors; hands out tensors
/// whole (f32 or bf16) or by rows (f32), releasing the pages it read.
pub struct Checkpoint {
    dir: PathBuf,
    shards: Vec<(PathBuf, Mmap)>,
    entries: HashMap<String, Entry>,
}

impl Checkpoint {
    /// Maps every shard and reads their headers (mirrors `safe_open` over the files of
    /// `model.safetensors.index.json` in transformers' loading).
    pub fn open(dir: &Path) -> Result<Checkpoint> {
        let files = safetensors_files(dir)?;
        let mut shards = Vec::with_capacity(files.len());
        let mut entries = HashMap::new();
        for (i, path) in files.into_iter().enumerate() {
            let file = std::fs::File::open(&path).with_context(|| format!("opening {}", path.display()))?;
            // SAFETY: the file is mapped read-only; like every mmap user we rely on nobody
            // truncating a checkpoint while it is in use.
            let mmap = unsafe { Mmap::map(&file) }.with_context(|| format!("mapping {}", path.display()))?;
            let (header_len, metadata) = safetensors::SafeTensors::read_metadata(&mmap)
                .map_err(|e| anyhow::anyhow!("{}: not a safetensors file: {e}", path.display()))?;
            let data_start = 8 + header_len;
            for (name, info) in metadata.tensors() {
                let (start, end) = info.data_offsets;
                entries.insert(
                    name,
                    Entry {
                        shard: i,
                        start: data_start + start,
                        end: data_start + end,
                        dtype: info.dtype,
                        shape: info.shape.clone(),
                    },
                );
            }
            shards.push((path, mmap));
        }
        Ok(Checkpoint { dir: dir.to_path_buf(), shards, entries })
    }

    /// The names of every tensor in the checkpoint, sorted.
    pub fn names(&self) -> Vec<&str> {
        let mut names: Vec<&str> = self.entries.keys().map(String::as_str).collect();
        names.sort_unstable();
        names
    }

    /// The stored shape of a tensor, or an error naming it and the checkpoint.
    pub fn shape(&self, name: &str) -> Result<&[usize]> {
        Ok(&self.entry(name)?.shape)
    }

    fn entry(&self, name: &str) -> Result<&Entry> {
        self.entries.get(name).with_context(|| format!("the checkpoint at {} has no tensor {name}", self.dir.display()))
    }

    /// The whole tensor, in f32, with the given shape (an error naming the tensor and both
    /// shapes when the stored one differs).
    pub fn get(&self, name: &str, shape: &[usize]) -> Result<Tensor> {
        self.get_in(name, shape, DType::F32)
    }

    /// The whole tensor converted to `dtype` (f32 or bf16) straight from the stored bytes, on
    /// all cores: a bf16 tensor read as bf16 is a copy, read as f32 a shift; an f32 one read
    /// as bf16 is rounded to nearest even, as `from_pretrained(dtype=torch.bfloat16)` rounds.
    /// (Converting through an f32 copy on one core, as before, made loading the bf16 stand-in
    /// take 87 s.)
    pub fn get_in(&self, name: &str, shape: &[usize], dtype: DType) -> Result<Tensor> {
        let entry = self.entry(name)?;
        ensure!(
            entry.shape == shape,
            "shape mismatch for {name}: the model expects {shape:?}, the checkpoint at {} stores {:?}",
            self.dir.display(),
            entry.shape
        );
        let tensor = match dtype {
            DType::F32 => Tensor::from_vec(self.read_f32(name, entry, entry.start, entry.end)?, shape, &Device::Cpu)?,
            DType::BF16 => Tensor::from_vec(self.read_bf16(name, entry, entry.start, entry.end)?, shape, &Device::Cpu)?,
            other => bail!("tensors are read as f32 or bf16, not {other:?} ({name})"),
        };
        Ok(tensor)
    }

    /// Rows `start..start + len` of a 2-D tensor, in f32: [len, cols].
    pub fn rows(&self, name: &str, start: usize, len: usize) -> Result<Tensor> {
        let entry = self.entry(name)?;
        let [rows, cols] = entry.shape[..] else { bail!("{name} is {:?}, not a matrix", entry.shape) };
        ensure!(start + len <= rows, "rows {start}..{} of {name}, which has {rows}", start + len);
        let row_bytes = cols * dtype_size(name, entry.dtype)?;
        let from = entry.start + start * row_bytes;
        let values = self.read_f32(name, entry, from, from + len * row_bytes)?;
        Ok(Tensor::from_vec(values, (len, cols), &Device::Cpu)?)
    }

    /// The rows at `ids` of a 2-D tensor, in f32: [ids, cols] (an embedding lookup that reads
    /// only the rows asked for).
    pub fn gather_rows(&self, name: &str, ids: &[u32]) -> Result<Tensor> {
        let rows = self.shape(name)?[0];
        if let Some(bad) = ids.iter().find(|&&id| id as usize >= rows) {
            bail!("token id {bad} is outside the vocabulary of {rows}");
        }
        let picked = ids.iter().map(|&id| self.rows(name, id as usize, 1)).collect::<Result<Vec<_>>>()?;
        Ok(Tensor::cat(&picked, 0)?)
    }

    /// Converts bytes `from..to` of a tensor to f32 and releases their pages.
    fn read_f32(&self, name: &str, entry: &Entry, from: usize, to: usize) -> Result<Vec<f32>> {
        self.read(name, entry, from, to, |dtype, bytes, out: &mut [f32]| match dtype {
            Dtype::BF16 => convert(bytes, out, |b| half::bf16::from_le_bytes(b).to_f32()),
            Dtype::F16 => convert(bytes, out, |b| half::f16::from_le_bytes(b).to_f32()),
            _ => convert(bytes, out, f32::from_le_bytes),
        })
    }

    /// Converts bytes `from..to` of a tensor to bf16 (rounding f32 and f16 values to nearest
    /// even) and releases their pages.
    fn read_bf16(&self, name: &str, entry: &Entry, from: usize, to: usize) -> Result<Vec<half::bf16>> {
        self.read(name, entry, from, to, |dtype, bytes, out: &mut [half::bf16]| match dtype {
            Dtype::BF16 => convert(bytes, out, half::bf16::from_le_bytes),
            Dtype::F16 => convert(bytes, out, |b| half::bf16::from_f32(half::f16::from_le_bytes(b).to_f32())),
            _ => convert(bytes, out, |b| half::bf16::from_f32(f32::from_le_bytes(b))),
        })
    }

    /// Bytes `from..to` of a tensor (bf16, f16 or f32) converted by `fill` into a new vector,
    /// in pieces on all cores; then their pages are released.
    fn read<T: Copy + Default + Send>(
        &self,
        name: &str,
        entry: &Entry,
        from: usize,
        to: usize,
        fill: impl Fn(Dtype, &[u8], &mut [T]) + Sync,
    ) -> Result<Vec<T>> {
        use rayon::prelude::*;
        let (path, mmap) = &self.shards[entry.shard];
        ensure!(to <= mmap.len(), "{}: tensor {name} runs past the end of the file", path.display());
        let size = dtype_size(name, entry.dtype).with_context(|| format!("in {}", path.display()))?;
        let bytes = &mmap[from..to];
        let mut values = vec![T::default(); bytes.len() / size];
        // Pieces of 64 K values: large enough to amortise a task, small enough to spread a
        // 1152-wide bias as well as a 5120 × 17408 matrix over the cores.
        const PIECE: usize = 1 << 16;
        values
            .par_chunks_mut(PIECE)
            .zip(bytes.par_chunks(PIECE * size))
            .for_each(|(out, bytes)| fill(entry.dtype, bytes, out));
        // SAFETY: the mapping is read-only and file-backed, so dropping its pages loses
        // nothing: a later read faults them back in from the file (or the page cache). No
        // reference into the range outlives this call.
        unsafe { mmap.unchecked_advise_range(UncheckedAdvice::DontNeed, from, to - from) }
            .with_context(|| format!("releasing the pages of {name} in {}", path.display()))?;
        Ok(values)
    }
}

/// `out[i] = f(bytes[i·N..(i + 1)·N])`, N the stored element's size.
#[inline]
fn convert<const N: usize, T>(bytes: &[u8], out: &mut [T], f: impl Fn([u8; N]) -> T) {
    for (o, b) in out.iter_mut().zip(bytes.chunks_exact(N)) {
        *o = f(b.try_into().expect("chunks of N bytes"));
    }
}

fn dtype_size(name: &str, dtype: Dtype) -> Result<usize> {
    Ok(match dtype {
        Dtype::BF16 | Dtype::F16 => 2,
        Dtype::F32 => 4,
        other => bail!("tensor {name} is stored as {other:?}; only bf16, f16 and f32 are read"),
    })
}

/// A bf16 matrix [rows, cols] where the checkpoint is mapped: no copy. Its pages come from the
/// page cache on first use and are never released by this process (they hold a weight in use).
pub struct MappedBf16 {
    checkpoint: Arc<Checkpoint>,
    shard: usize,
    start: usize,
    rows: usize,
    cols: usize,
}

impl MappedBf16 {
    /// [rows, cols].
    pub fn dims(&self) -> (usize, usize) {
        (self.rows, self.cols)
    }

    /// The rows at `ids`: [ids, cols] in bf16 (an embedding lookup).
    pub fn gather_rows(&self, ids: &[u32]) -> Result<Tensor> {
        let values = self.values();
        let mut out = Vec::with_capacity(ids.len() * self.cols);
        for &id in ids {
            let row = id as usize;
            ensure!(row < self.rows, "token id {id} is outside the vocabulary of {}", self.rows);
            out.extend_from_slice(&values[row * self.cols..(row + 1) * self.cols]);
        }
        Ok(Tensor::from_vec(out, (ids.len(), self.cols), &Device::Cpu)?)
    }
}

impl Bf16Rows for MappedBf16 {
    fn values(&self) -> &[half::bf16] {
        let bytes = &self.checkpoint.shards[self.shard].1[self.start..self.start + 2 * self.rows * self.cols];
        // SAFETY: the range is inside the read-only mapping, which lives as long as the
        // checkpoint this holds; its start is 2-byte aligned (checked in `Checkpoint::mapped_bf16`)
        // and any bit pattern is a bf16.
        unsafe { std::slice::from_raw_parts(bytes.as_ptr() as *const half::bf16, self.rows * self.cols) }
    }
}

impl Checkpoint {
    /// A 2-D tensor stored in bf16 as it is mapped, if it is stored in bf16, has `shape` and
    /// starts on a 2-byte boundary (else `None`: read it with [`Checkpoint::get_in`]).
    pub fn mapped_bf16(self: &Arc<Self>, name: &str, shape: &[usize]) -> Option<MappedBf16> {
        let entry = self.entries.get(name)?;
        let [rows, cols] = shape[..] else { return None };
        let mmap = &self.shards[entry.shard].1;
        let fits = entry.end <= mmap.len() && entry.end - entry.start == 2 * rows * cols;
        let aligned = (mmap.as_ptr() as usize + entry.start).is_multiple_of(std::mem::align_of::<half::bf16>());
        (entry.dtype == Dtype::BF16 && entry.shape == shape && fits && aligned).then(|| MappedBf16 {
            checkpoint: self.clone(),
            shard: entry.shard,
            start: entry.start,
            rows,
            cols,
        })
    }
}

/// The hint that asks a builder of [`builder_mapped`] for a [`MappedBf16`] (see [`fetch`]): a
/// NaN no initialiser uses, compared by its bits.
pub const MAP: candle_nn::Init = candle_nn::Init::Const(f64::from_bits(0x7ff8_6d61_7070_6564));

fn is_map(hint: candle_nn::Init) -> bool {
    matches!(hint, candle_nn::Init::Const(c) if c.to_bits() == 0x7ff8_6d61_7070_6564)
}

thread_local! {
    /// A mapped tensor on its way from the backend to [`fetch`], on the thread that asked.
    static HANDOFF: std::cell::RefCell<Option<MappedBf16>> = const { std::cell::RefCell::new(None) };
}

/// A weight as a builder hands it out: read into a tensor, or left where it is mapped.
pub enum Fetched {
    Tensor(Tensor),
    Mapped(MappedBf16),
}

/// Calls `get` (a `VarBuilder::get_with_hints(.., MAP)`) and returns the mapped tensor when the
/// builder is one of [`builder_mapped`] and the tensor can be read in place, else the tensor
/// `get` read. `VarBuilder` hands out only tensors, so the backend passes the mapping back on
/// this thread (it is taken here, within the same call).
pub fn fetch(get: impl FnOnce() -> candle_core::Result<Tensor>) -> Result<Fetched> {
    HANDOFF.with(|h| h.borrow_mut().take());
    let tensor = get();
    if let Some(mapped) = HANDOFF.with(|h| h.borrow_mut().take()) {
        return Ok(Fetched::Mapped(mapped));
    }
    Ok(Fetched::Tensor(tensor?))
}

/// The `VarBuilder` backend over a [`Checkpoint`]; with `map`, bf16 matrices asked for with the
/// [`MAP`] hint in bf16 are handed to [`fetch`] where they are mapped.
struct Backend {
    checkpoint: Arc<Checkpoint>,
    map: bool,
}

impl SimpleBackend for Backend {
    fn get(&self, s: Shape, name: &str, h: candle_nn::Init, dtype: DType, dev: &Device) -> candle_core::Result<Tensor> {
        if self.map && is_map(h) && dtype == DType::BF16 && dev.is_cpu() {
            if let Some(mapped) = self.checkpoint.mapped_bf16(name, s.dims()) {
                HANDOFF.with(|slot| *slot.borrow_mut() = Some(mapped));
                // What `fetch` discards: the weight is the mapping it takes.
                return Tensor::zeros(0, DType::BF16, dev);
            }
        }
        let read = match dtype {
            DType::F32 | DType::BF16 => self.checkpoint.get_in(name, s.dims(), dtype),
            _ => self.checkpoint.get(name, s.dims()),
        };
        read.map_err(|e| candle_core::Error::Msg(format!("{e:#}")))?.to_dtype(dtype)?.to_device(dev)
    }

    fn get_unchecked(&self, name: &str, dtype: DType, dev: &Device) -> candle_core::Result<Tensor> {
        let shape = self.checkpoint.shape(name).map_err(|e| candle_core::Error::Msg(format!("{e:#}")))?.to_vec();
        self.get(Shape::from(shape), name, candle_nn::Init::Const(0.), dtype, dev)
    }

    fn contains_tensor(&self, name: &str) -> bool {
        self.checkpoint.entries.contains_key(name)
    }
}

/// A `VarBuilder` over the memory-mapped checkpoint that hands out f32 tensors on the CPU.
/// A missing tensor or a tensor of the wrong shape is an error naming the tensor (and both
/// shapes), raised when the module that needs it is built.
pub fn var_builder(dir: &Path) -> Result<VarBuilder<'static>> {
    Ok(builder(Arc::new(Checkpoint::open(dir)?)))
}

/// A `VarBuilder` reading from an already opened checkpoint.
pub fn builder(checkpoint: Arc<Checkpoint>) -> VarBuilder<'static> {
    VarBuilder::from_backend(Box::new(Backend { checkpoint, map: false }), DType::F32, Device::Cpu)
}

/// A `VarBuilder` reading from an already opened checkpoint in a compute dtype (f32 or bf16):
/// each tensor is converted to it whatever its stored dtype, an f32 one rounded to nearest
/// even as `from_pretrained(dtype=torch.bfloat16)` rounds it.
pub fn builder_in(checkpoint: Arc<Checkpoint>, dtype: ComputeDtype) -> Result<VarBuilder<'static>> {
    let backend = Backend { checkpoint, map: false };
    Ok(VarBuilder::from_backend(Box::new(backend), crate::precision::candle_dtype(dtype), Device::Cpu))
}

/// As [`builder_in`], and in bf16 a matrix stored in bf16 that a module asks for with [`MAP`]
/// through [`fetch`] stays where it is mapped (a resident model's linear weights and embedding
/// table). A streamed model must not use it: its layers are read and released one by one.
pub fn builder_mapped(checkpoint: Arc<Checkpoint>, dtype: ComputeDtype) -> Result<VarBuilder<'static>> {
    let backend = Backend { checkpoint, map: dtype == ComputeDtype::Bf16 };
    Ok(VarBuilder::from_backend(Box::new(backend), crate::precision::candle_dtype(dtype), Device::Cpu))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A checkpoint with one matrix stored in each supported dtype (values exact in all three).
    fn stored(dir: &Path) -> Vec<f32> {
        let values: Vec<f32> = (0..12).map(|i| (i as f32 - 5.5) * 0.25).collect();
        let base = Tensor::from_vec(values.clone(), (4, 3), &Device::Cpu).unwrap();
        let tensors: HashMap<String, Tensor> = [("a.bf16", DType::BF16), ("a.f16", DType::F16), ("a.f32", DType::F32)]
            .into_iter()
            .map(|(name, dtype)| (name.to_string(), base.to_dtype(dtype).unwrap()))
            .collect();
        std::fs::create_dir_all(dir).unwrap();
        candle_core::safetensors::save(&tensors, dir.join("model.safetensors")).unwrap();
        values
    }

    /// Read as bf16, every stored dtype gives what candle's conversion of the f32 values gives
    /// (round to nearest even), on a matrix large enough to be split over the cores (pieces
    /// of 64 K values) and with values that are not bf16 already, ties included.
    #[test]
    fn tensors_read_as_bf16_round_to_nearest_even_in_pieces_on_all_cores() {
        let dir = std::env::temp_dir().join(format!("neuron-weights-bf16-{}", std::process::id()));
        let (rows, cols) = (300, 701);
        // Multiples of 2^-16 around 1..4: a bf16 keeps 8 significant bits, so most are rounded
        // and some sit exactly on a tie.
        let values: Vec<f32> = (0..rows * cols).map(|i| 1.0 + (i * 7919 % 196_613) as f32 / 65_536.0).collect();
        let base = Tensor::from_vec(values, (rows, cols), &Device::Cpu).unwrap();
        let tensors: HashMap<String, Tensor> = [("w.bf16", DType::BF16), ("w.f16", DType::F16), ("w.f32", DType::F32)]
            .into_iter()
            .map(|(name, dtype)| (name.to_string(), base.to_dtype(dtype).unwrap()))
            .collect();
        std::fs::create_dir_all(&dir).unwrap();
        candle_core::safetensors::save(&tensors, dir.join("model.safetensors")).unwrap();
        let checkpoint = Checkpoint::open(&dir).unwrap();
        for (name, stored) in &tensors {
            let expected: Vec<half::bf16> =
                stored.to_dtype(DType::BF16).unwrap().flatten_all().unwrap().to_vec1().unwrap();
            let got = checkpoint.get_in(name, &[rows, cols], DType::BF16).unwrap();
            assert_eq!(got.dtype(), DType::BF16, "{name}");
            let got: Vec<half::bf16> = got.flatten_all().unwrap().to_vec1().unwrap();
            let wrong = got.iter().zip(&expected).position(|(a, b)| a != b);
            assert!(
                wrong.is_none(),
                "{name}: element {wrong:?} read as {:?}, expected {:?}",
                wrong.map(|i| got[i]),
                wrong.map(|i| expected[i])
            );
            let f32s: Vec<f32> =
                checkpoint.get_in(name, &[rows, cols], DType::F32).unwrap().flatten_all().unwrap().to_vec1().unwrap();
            let expected: Vec<f32> = stored.to_dtype(DType::F32).unwrap().flatten_all().unwrap().to_vec1().unwrap();
            assert!(f32s == expected, "{name} read as f32 differs from its stored values");
        }
        let err = checkpoint.get_in("w.f32", &[rows, cols], DType::F16).unwrap_err().to_string();
        assert!(err.contains("f32 or bf16") && err.contains("w.f32"), "{err}");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn bf16_f16_and_f32_tensors_read_whole_by_rows_and_by_ids_as_f32() {
        let dir = std::env::temp_dir().join(format!("neuron-weights-dtypes-{}", std::process::id()));
        let values = stored(&dir);
        let checkpoint = Checkpoint::open(&dir).unwrap();
        for name in ["a.bf16", "a.f16", "a.f32"] {
            let whole = checkpoint.get(name, &[4, 3]).unwrap();
            assert_eq!(whole.flatten_all().unwrap().to_vec1::<f32>().unwrap(), values, "{name} whole");
            let rows = checkpoint.rows(name, 1, 2).unwrap();
            assert_eq!(rows.flatten_all().unwrap().to_vec1::<f32>().unwrap(), &values[3..9], "{name} rows 1..3");
            let picked = checkpoint.gather_rows(name, &[3, 0]).unwrap();
            let expected: Vec<f32> = values[9..12].iter().chain(&values[0..3]).copied().collect();
            assert_eq!(picked.flatten_all().unwrap().to_vec1::<f32>().unwrap(), expected, "{name} rows 3, 0");
        }
        let err = checkpoint.get("a.f32", &[3, 4]).unwrap_err().to_string();
        assert!(err.contains("a.f32") && err.contains("[3, 4]") && err.contains("[4, 3]"), "{err}");
        let err = checkpoint.rows("a.f32", 3, 2).unwrap_err().to_string();
        assert!(err.contains("rows 3..5") && err.contains("4"), "{err}");
        let err = checkpoint.get("b", &[1]).unwrap_err().to_string();
        assert!(err.contains("no tensor b"), "{err}");
        let vb = builder(std::sync::Arc::new(checkpoint));
        assert!(vb.contains_tensor("a.f16") && !vb.contains_tensor("b"), "contains_tensor answers from the headers");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    /// An f32 checkpoint loaded in bf16 is rounded to nearest, ties to even, as
    /// `from_pretrained(dtype=torch.bfloat16)` rounds it.
    #[test]
    fn a_bf16_builder_rounds_f32_tensors_to_nearest_even() {
        let dir = std::env::temp_dir().join(format!("neuron-weights-bf16-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        // 1 + 2^-8 and 1 + 3·2^-8 are ties (to 1 and to 1 + 2^-6), 0.1 is not representable.
        let values = vec![1.0 + 1.0 / 256.0, 1.0 + 3.0 / 256.0, 0.1, -2.5e-3];
        let t = Tensor::from_vec(values.clone(), 4, &Device::Cpu).unwrap();
        candle_core::safetensors::save(&HashMap::from([("w".to_string(), t)]), dir.join("model.safetensors")).unwrap();
        let checkpoint = Arc::new(Checkpoint::open(&dir).unwrap());
        let got = builder_in(checkpoint.clone(), ComputeDtype::Bf16).unwrap().get(4, "w").unwrap();
        assert_eq!(got.dtype(), DType::BF16);
        let expected: Vec<half::bf16> = values.iter().map(|&v| half::bf16::from_f32(v)).collect();
        assert_eq!(got.to_vec1::<half::bf16>().unwrap(), expected);
        assert_eq!(
            expected[..2].iter().map(|v| v.to_f32()).collect::<Vec<_>>(),
            [1.0, 1.0 + 1.0 / 64.0],
            "ties to even"
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
