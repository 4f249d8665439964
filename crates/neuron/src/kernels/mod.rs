//! The numerical kernels the layers run on, apart from what they compute: the bf16 GEMM on a
//! weight packed at load ([`gemm_bf16`]), the f32 batched-product driver ([`gemm_f32`]), the
//! transpose of an f32 weight at load ([`transpose`]) and the parallel bf16 ↔ f32 conversion
//! ([`cast`]). Each selects what the CPU supports at run time and keeps a portable fallback.

pub mod cast;
pub mod gemm_bf16;
pub mod gemm_f32;
pub mod transpose;
