//! Replay modes: which inputs a Rust run takes from the reference.
//!
//! Feeding a stage the reference's own input (teacher forcing) isolates that stage; feeding
//! it the Rust upstream output (end to end) shows how errors accumulate. Reports show both.

use crate::taps::Tap;

/// Which inputs a run takes from the reference.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Mode {
    /// The vision tower fed the reference `input.pixel_values` and `input.image_grid_thw`.
    VisionTeacherForced,
}

impl Mode {
    /// Every mode, in report order.
    pub const ALL: &'static [Mode] = &[Mode::VisionTeacherForced];

    /// The name used in reports and JSON.
    pub fn name(self) -> &'static str {
        match self {
            Mode::VisionTeacherForced => "vision-teacher-forced",
        }
    }

    /// Whether a run in this mode produces (and so checks) `tap`.
    pub fn covers(self, tap: Tap) -> bool {
        match self {
            Mode::VisionTeacherForced => tap.is_vision(),
        }
    }
}
