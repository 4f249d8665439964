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
    /// benchmark, a server): a bf16 weight packed at load for its kernel, so that every product,
    /// a decode step's included, reads it packed.
    Resident,
    /// As [`Residency::Resident`], but in bf16 a weight stored in bf16 stays where the
    /// checkpoint is mapped and is packed per call (`weights::builder_mapped`): nothing is
    /// copied at load, so the first answer comes as soon as transformers' does, and every
    /// product pays its packing, which a decode step (one row) feels most. In f32 it is
    /// [`Residency::Resident`].
    Mapped,
    /// At most one vision block or decoder layer in memory at a time, read from the mapped
    /// checkpoint just before it runs: a 27B checkpoint in the memory of one layer plus
    /// activations.
    Streamed,
}

impl Residency {
    /// The command line's spelling (see the `FromStr` impl).
    pub fn name(self) -> &'static str {
        match self {
            Residency::Resident => "resident",
            Residency::Mapped => "mapped",
            Residency::Streamed => "streamed",
        }
    }
}

impl std::str::FromStr for Residency {
    type Err = anyhow::Error;

    /// `resident`, `mapped` or `streamed` (a command line's spelling).
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "resident" => Ok(Residency::Resident),
            "mapped" => Ok(Residency::Mapped),
            "streamed" => Ok(Residency::Streamed),
            other => anyhow::bail!("unknown residency {other:?}: give resident, mapped or streamed"),
        }
    }
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
            Residency::Resident | Residency::Mapped => Stack::Resident((0..len).map(build).collect::<Result<_>>()?),
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_residency_parses_from_its_name_and_an_unknown_one_is_refused_naming_the_three() {
        for residency in [Residency::Resident, Residency::Mapped, Residency::Streamed] {
            assert_eq!(residency.name().parse::<Residency>().unwrap(), residency, "{}", residency.name());
        }
        let err = "packed".parse::<Residency>().unwrap_err().to_string();
        assert!(err.contains("\"packed\"") && err.contains("resident, mapped or streamed"), "{err}");
    }
}
