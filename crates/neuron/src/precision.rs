//! Computing in bf16 where the reference does, the way PyTorch's CPU kernels round.
//!
//! The model runs in one compute dtype: f32 (the default) or bf16 (the dtype checkpoints ship
//! and are served in; `from_pretrained(dtype=torch.bfloat16)` on the reference side). Weights
//! are held in the compute dtype (an f32 checkpoint is rounded to bf16 on load, as the
//! reference's loader rounds it) and so are activations and the attention and conv caches.
//! What PyTorch does with bf16 tensors on the CPU, measured on torch 2.15 (exact equality of
//! every element unless said otherwise):
//!
//! - a linear layer, a batched matmul, a convolution: bf16 inputs and weights multiplied
//!   with f32 accumulation, the bias added in f32, the sum rounded to bf16 once (a handful of
//!   elements in 10⁵ differ, by the summation order near a rounding tie). Rounding before
//!   the bias instead changes 27 % of the elements. candle rounds its bf16 matmul once too
//!   (it widens to f32) but adds a bias in bf16 after it, hence [`Linear`];
//! - an element-wise function (SiLU, sigmoid, GELU in both forms, exp) and `LayerNorm`: each
//!   element computed in f32 from the bf16 input and rounded once. candle computes SiLU and
//!   sigmoid in bf16 arithmetic with a rounding per step, hence [`in_f32`];
//! - a bf16 tensor times a Python float: the product in f32 (the scalar is not rounded to
//!   bf16 first), rounded once. candle's `affine` rounds the scalar to bf16 first, so scaling
//!   goes through [`in_f32`] as well;
//! - a bf16 tensor plus or times a bf16 tensor: computed in f32, rounded once — the same as
//!   candle's bf16 binary ops (`half` widens both operands), so those run as they are;
//! - a bf16 tensor times an f32 tensor (both with dimensions): promoted to f32, no rounding.
//!
//! Where the reference itself upcasts (`.float()`, `.to(torch.float32)`, `dtype=`), the port
//! upcasts at the same place and rounds back at the same place; each module lists those
//! places in its header. In f32 every helper here is the identity on the computation: the f32
//! path is bit for bit what it was before the compute dtype existed.

use anyhow::{ensure, Result};
use candle_core::{DType, Tensor};
use candle_nn::VarBuilder;
use contract::ComputeDtype;

use crate::kernels::cast::cast;

/// The candle dtype a model computes in for a [`ComputeDtype`].
pub fn candle_dtype(dtype: ComputeDtype) -> DType {
    match dtype {
        ComputeDtype::F32 => DType::F32,
        ComputeDtype::Bf16 => DType::BF16,
    }
}

/// The compute dtypes a model can be built in.
pub fn check_compute_dtype(dtype: DType) -> Result<()> {
    ensure!(matches!(dtype, DType::F32 | DType::BF16), "the model computes in f32 or bf16, not {dtype:?}");
    Ok(())
}

/// `f` applied to `x` in f32 and the result rounded back to `x`'s dtype once: PyTorch's CPU
/// kernels of a bf16 element-wise function or reduction (and `x.float()` … `.to(bf16)` around
/// several ops, where the reference writes it). For an f32 `x` this is `f(x)`.
pub fn in_f32(x: &Tensor, f: impl FnOnce(&Tensor) -> Result<Tensor>) -> Result<Tensor> {
    if x.dtype() == DType::F32 {
        return f(x);
    }
    cast(&f(&cast(x, DType::F32)?)?, x.dtype())
}

/// SiLU (`ACT2FN["silu"]`, `F.silu`) as PyTorch computes it in any dtype.
pub fn silu(x: &Tensor) -> Result<Tensor> {
    in_f32(x, |x| Ok(candle_nn::ops::silu(x)?))
}

/// `torch.sigmoid` as PyTorch computes it in any dtype.
pub fn sigmoid(x: &Tensor) -> Result<Tensor> {
    in_f32(x, |x| Ok(candle_nn::ops::sigmoid(x)?))
}

/// `softmax(x, dim=-1, dtype=torch.float32).to(x.dtype)`, the reference's eager attention: the
/// bf16 scores upcast, the softmax in f32, the probabilities rounded once.
pub fn softmax_last_dim(x: &Tensor) -> Result<Tensor> {
    in_f32(x, |x| Ok(candle_nn::ops::softmax_last_dim(x)?))
}

/// `x * scale` with a Python float: in f32, rounded once (candle's bf16 `affine` would round
/// `scale` to bf16 first).
pub fn scale(x: &Tensor, scale: f64) -> Result<Tensor> {
    in_f32(x, |x| Ok((x * scale)?))
}

/// A parameter as the reference reads it after `.float()`: stored in the compute dtype (so
/// an f32 checkpoint loaded in bf16 is rounded first, as `from_pretrained` rounds it), then
/// widened to f32. For an f32 model this is the parameter itself.
pub fn get_f32<S: Into<candle_core::Shape>>(vb: &VarBuilder, shape: S, name: &str) -> Result<Tensor> {
    Ok(vb.get(shape, name)?.to_dtype(DType::F32)?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;
    use half::bf16;

    fn bf(values: &[f32]) -> Tensor {
        Tensor::new(values, &Device::Cpu).unwrap().to_dtype(DType::BF16).unwrap()
    }

    fn values(t: &Tensor) -> Vec<f32> {
        t.to_dtype(DType::F32).unwrap().flatten_all().unwrap().to_vec1().unwrap()
    }

    /// SiLU of a bf16 tensor is SiLU of its f32 value rounded once, which bf16 arithmetic
    /// step by step (candle's bf16 kernel) is not for some inputs.
    #[test]
    fn silu_and_sigmoid_of_bf16_round_once_from_f32() {
        let xs: Vec<f32> = (-400..400).map(|i| bf16::from_f32(i as f32 * 0.0173).to_f32()).collect();
        let x = bf(&xs);
        let (ours, sig) = (values(&silu(&x).unwrap()), values(&sigmoid(&x).unwrap()));
        let stepwise = values(&candle_nn::ops::silu(&x).unwrap());
        let mut differs = 0;
        for (i, &v) in xs.iter().enumerate() {
            let s = 1.0 / (1.0 + (-v).exp());
            assert_eq!(ours[i], bf16::from_f32(v * s).to_f32(), "silu({v})");
            assert_eq!(sig[i], bf16::from_f32(s).to_f32(), "sigmoid({v})");
            differs += usize::from(stepwise[i] != ours[i]);
        }
        assert!(differs > 0, "bf16 step-by-step SiLU should differ somewhere from one rounding");
    }

    #[test]
    fn scaling_a_bf16_tensor_keeps_the_scalar_in_f32() {
        let s = 72f64.powf(-0.5);
        let xs: Vec<f32> = (-300..300).map(|i| bf16::from_f32(i as f32 * 0.0371).to_f32()).collect();
        let x = bf(&xs);
        let expected: Vec<f32> = xs.iter().map(|&v| bf16::from_f32(v * s as f32).to_f32()).collect();
        assert_eq!(values(&scale(&x, s).unwrap()), expected);
        assert_ne!(values(&(&x * s).unwrap()), expected, "candle's bf16 affine rounds the scalar first");
    }

    #[test]
    fn f32_tensors_go_through_unchanged() {
        let x = Tensor::new(&[0.1f32, -2.0, 7.5], &Device::Cpu).unwrap();
        assert_eq!(values(&silu(&x).unwrap()), values(&candle_nn::ops::silu(&x).unwrap()));
        assert_eq!(values(&scale(&x, 0.3).unwrap()), values(&(&x * 0.3).unwrap()));
        assert!(check_compute_dtype(DType::F16).is_err() && check_compute_dtype(DType::BF16).is_ok());
    }

    #[test]
    fn each_compute_dtype_maps_onto_the_candle_dtype_of_its_name() {
        assert_eq!(ComputeDtype::ALL.map(candle_dtype), [DType::F32, DType::BF16]);
    }
}
