//! Recording named intermediate tensors ("taps", the names of ARCHITECTURE.md).

use std::collections::BTreeMap;

use candle_core::Tensor;

/// Collects taps during a forward pass when enabled; when disabled, `record` does nothing —
/// not even build the tap's name — so production runs pay nothing for it.
#[derive(Debug, Default)]
pub struct Taps {
    enabled: bool,
    tensors: BTreeMap<String, Tensor>,
}

impl Taps {
    /// A recorder that keeps every tap.
    pub fn recording() -> Taps {
        Taps { enabled: true, tensors: BTreeMap::new() }
    }

    /// A recorder that keeps nothing.
    pub fn disabled() -> Taps {
        Taps::default()
    }

    /// Whether taps are kept (to skip building a tensor only a tap would use).
    pub fn enabled(&self) -> bool {
        self.enabled
    }

    /// Keeps `tensor` under the name `name()` (tensors are reference-counted: no copy).
    pub fn record(&mut self, name: impl FnOnce() -> String, tensor: &Tensor) {
        if self.enabled {
            self.tensors.insert(name(), tensor.clone());
        }
    }

    /// The recorded tap `name`, if any.
    pub fn get(&self, name: &str) -> Option<&Tensor> {
        self.tensors.get(name)
    }

    /// All recorded taps by name.
    pub fn into_map(self) -> BTreeMap<String, Tensor> {
        self.tensors
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_disabled_recorder_keeps_nothing_and_never_builds_a_name() {
        let mut taps = Taps::disabled();
        let t = Tensor::zeros(3, candle_core::DType::F32, &candle_core::Device::Cpu).unwrap();
        taps.record(|| panic!("the name of a tap was built although taps are disabled"), &t);
        assert!(!taps.enabled());
        assert!(taps.into_map().is_empty());
    }

    #[test]
    fn a_recording_recorder_keeps_every_tap_by_name() {
        let mut taps = Taps::recording();
        let t = Tensor::ones(2, candle_core::DType::F32, &candle_core::Device::Cpu).unwrap();
        taps.record(|| "vision.tower".into(), &t);
        assert_eq!(taps.get("vision.tower").map(|t| t.dims().to_vec()), Some(vec![2]));
    }
}
