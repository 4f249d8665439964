//! A Qwen3.5 / Qwen3.6 vision-language model in candle (CPU; f32, or bf16 as the reference
//! runs it), mirroring HuggingFace transformers' `Qwen3_5ForConditionalGeneration`, with named
//! taps ([`contract::Tap`]) for parity checks.
//!
//! The model only: the harness that replays cases against the reference lives in the `replay`
//! crate, and nothing here reads `fixtures.toml`.

pub mod config;
pub mod generate;
pub mod kernels;
pub mod linear;
pub mod model;
pub mod precision;
pub mod preprocess;
pub mod rope;
pub mod session;
pub mod stack;
pub mod taps;
pub mod text;
pub mod vision;
pub mod weights;

pub use contract::{ComputeDtype, Stage, Tap};
