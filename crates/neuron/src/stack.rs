//! The repeated layers of a model (vision blocks, decoder layers), either built once and
//! kept, or built from the checkpoint just before they run and dropped right after.
//!
//! Keeping them is what the small iteration model wants. Streaming is what a 27B checkpoint
//! needs on an ordinary machine: its float32 weights are about 108 GB, one decoder layer
//! about 1.6 GB, so only one layer may be in float32 at a time.

use anyhow::Result;

/// How a model holds its weights.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Residency {
    /// Every tensor read once, in the compute dtype, and kept (the iteration model, a resident
    /// benchmark).
    Resident,
    /// At most one vision block or decoder layer in memory at a time, read from the mapped
    /// checkpoint just before it runs: a 27B checkpoint in the memory of one layer plus
    /// activations.
    Streamed,
}

/// Builds layer `i` (from a `VarBuilder` the closure owns).
type Build<T> = Box<dyn Fn(usize) -> Result<T> + Send + Sync>;

pub enum Stack<T> {
    Resident(Vec<T>),
    Streamed { len: usize, build: Build<T> },
}

impl<T> Stack<T> {
    /// All `len` layers built now ([`Residency::Resident`]) or on use ([`Residency::Streamed`]).
    pub fn new(
        len: usize,
        residency: Residency,
        build: impl Fn(usize) -> Result<T> + Send + Sync + 'static,
    ) -> Result<Self> {
        Ok(match residency {
            Residency::Streamed => Stack::Streamed { len, build: Box::new(build) },
            Residency::Resident => Stack::Resident((0..len).map(build).collect::<Result<_>>()?),
        })
    }

    /// Calls `f` on each layer in order; a streamed layer is dropped before the next one is
    /// built.
    pub fn try_for_each(&self, mut f: impl FnMut(usize, &T) -> Result<()>) -> Result<()> {
        match self {
            Stack::Resident(layers) => layers.iter().enumerate().try_for_each(|(i, layer)| f(i, layer)),
            Stack::Streamed { len, build } => (0..*len).try_for_each(|i| f(i, &build(i)?)),
        }
    }
}
