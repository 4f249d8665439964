//! The two dtypes of the workspace: the one a model computes in, and the one a dump stores.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// The dtype a model computes in, and so a case's reference: f32, or bf16 as checkpoints ship
/// and servers run them (`from_pretrained(dtype=torch.bfloat16)` on the reference side).
///
/// The one spelling of the choice everywhere: a case's `dtype` in `fixtures.toml`, the `--dtype`
/// of the bench and the examples, `Model::load`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ComputeDtype {
    #[default]
    F32,
    Bf16,
}

impl ComputeDtype {
    /// Both, in the order reports list them.
    pub const ALL: [ComputeDtype; 2] = [ComputeDtype::F32, ComputeDtype::Bf16];

    /// The name used in `fixtures.toml`, on command lines and passed to the harness.
    pub fn name(self) -> &'static str {
        match self {
            ComputeDtype::F32 => "f32",
            ComputeDtype::Bf16 => "bf16",
        }
    }

    /// Whether this is f32, the default (serde's `skip_serializing_if` takes a reference).
    pub fn is_f32(&self) -> bool {
        *self == ComputeDtype::F32
    }
}

impl fmt::Display for ComputeDtype {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// Returned when a string names no compute dtype.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParseComputeDtypeError(String);

impl fmt::Display for ParseComputeDtypeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "unknown compute dtype {:?}: f32 or bf16", self.0)
    }
}

impl std::error::Error for ParseComputeDtypeError {}

impl FromStr for ComputeDtype {
    type Err = ParseComputeDtypeError;

    /// `f32` / `float32` or `bf16` / `bfloat16`, as a command line or PyTorch spells them.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "f32" | "float32" => Ok(ComputeDtype::F32),
            "bf16" | "bfloat16" => Ok(ComputeDtype::Bf16),
            other => Err(ParseComputeDtypeError(other.to_owned())),
        }
    }
}

/// The element type of a dump (`.npy`) and of a tap: `'<f4'` or `'<i8'`, nothing else.
/// Floating taps are stored as f32 whatever the compute dtype; integer taps as i64.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ArrayDtype {
    /// 32-bit IEEE float.
    F32,
    /// 64-bit signed integer.
    I64,
}

impl fmt::Display for ArrayDtype {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            ArrayDtype::F32 => "f32",
            ArrayDtype::I64 => "i64",
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn compute_dtypes_parse_as_a_command_line_or_pytorch_spells_them_and_print_as_the_manifest_does() {
        for (text, dtype) in [
            ("f32", ComputeDtype::F32),
            ("float32", ComputeDtype::F32),
            ("bf16", ComputeDtype::Bf16),
            ("bfloat16", ComputeDtype::Bf16),
        ] {
            assert_eq!(text.parse::<ComputeDtype>(), Ok(dtype), "{text}");
        }
        let err = "f16".parse::<ComputeDtype>().unwrap_err().to_string();
        assert!(err.contains("\"f16\"") && err.contains("f32 or bf16"), "{err}");
        assert_eq!(ComputeDtype::ALL.map(|d| d.to_string()), ["f32", "bf16"]);
        assert_eq!(ComputeDtype::default(), ComputeDtype::F32, "f32 unless a case says otherwise");
    }
}
