//! A Qwen3.5 / Qwen3.6 vision-language model in candle (CPU; f32, or bf16 as the reference
//! runs it), mirroring HuggingFace transformers' `Qwen3_5ForConditionalGeneration`, with named
//! taps for parity checks.

pub mod config;
pub mod gemm_bf16;
pub mod generate;
pub mod model;
pub mod precision;
pub mod preprocess;
pub mod replay;
pub mod rope;
pub mod stack;
pub mod taps;
pub mod text;
pub mod vision;
pub mod weights;
