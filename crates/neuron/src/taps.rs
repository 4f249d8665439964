//! Recording intermediate tensors under their [`Tap`]s (the contract of ARCHITECTURE.md).

use std::collections::BTreeMap;

use candle_core::Tensor;
use contract::Tap;

/// Collects taps during a forward pass when enabled; when disabled, `record` does nothing, so
/// production runs pay nothing for it.
#[derive(Debug, Default)]
pub struct Taps {
    enabled: bool,
    tensors: BTreeMap<Tap, Tensor>,
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

    /// Keeps `tensor` as `tap` (tensors are reference-counted: no copy).
    pub fn record(&mut self, tap: Tap, tensor: &Tensor) {
        if self.enabled {
            self.tensors.insert(tap, tensor.clone());
        }
    }

    /// The recorded `tap`, if any.
    pub fn get(&self, tap: Tap) -> Option<&Tensor> {
        self.tensors.get(&tap)
    }

    /// All recorded taps, in pipeline order.
    pub fn into_map(self) -> BTreeMap<Tap, Tensor> {
        self.tensors
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use contract::Stage;

    #[test]
    fn a_disabled_recorder_keeps_nothing() {
        let mut taps = Taps::disabled();
        let t = Tensor::zeros(3, candle_core::DType::F32, &candle_core::Device::Cpu).unwrap();
        taps.record(Stage::VisionTower.tap(), &t);
        assert!(!taps.enabled());
        assert!(taps.into_map().is_empty());
    }

    #[test]
    fn a_recording_recorder_keeps_every_tap() {
        let mut taps = Taps::recording();
        let t = Tensor::ones(2, candle_core::DType::F32, &candle_core::Device::Cpu).unwrap();
        taps.record(Stage::VisionTower.tap(), &t);
        assert_eq!(taps.get(Stage::VisionTower.tap()).map(|t| t.dims().to_vec()), Some(vec![2]));
    }
}
