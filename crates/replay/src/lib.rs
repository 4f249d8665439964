//! The parity harness of the neuron model: replays the cases of `fixtures.toml` through the
//! Rust implementation in each [`Mode`] and compares every tap with the reference dumps.
//!
//! - [`run`]: a case in a mode, its inputs from the reference or from the files, the taps it
//!   recorded;
//! - [`check`]: one tap of a run against its dump under the manifest's rule, the worst element
//!   named in model terms.
//!
//! It sits between the model (`neuron`, which knows nothing of manifests) and the manifest
//! (`parity`, which knows nothing of models). `build.rs` generates the parity tests of
//! `tests/parity.rs` from the manifest; `cargo xtask verify` runs the same code.

mod batch;
pub mod check;
mod parts;
pub mod routing;
pub mod run;

pub use check::{TapResult, TOP_K};
pub use parity::mode::Mode;
pub use run::{
    grids_of, load_case, load_model, loader, model_from, reference, reference_input_ids, run, run_with, to_array,
    workspace_manifest, CaseSetup, Loaded, Perturbations, Positions, Run,
};
