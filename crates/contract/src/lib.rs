//! What the model and the parity harness agree on, in one small crate that both depend on:
//! the tap contract of ARCHITECTURE.md ([`Tap`]: names, element types, layouts, pipeline
//! order, families) and the dtype a model computes in ([`ComputeDtype`]).
//!
//! The model (`neuron`) records its intermediate tensors under these [`Tap`]s, the manifest
//! (`parity`) reads them from `fixtures.toml`, and the replay compares them: one type from the
//! forward pass to the report, never a string in between.

mod dtype;
mod tap;

pub use dtype::{ArrayDtype, ComputeDtype};
pub use tap::{known_taps, Family, Layout, Stage, Tap};
