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
    /// The text model fed the reference `input.input_ids` and the reference
    /// `vision.projector` rows.
    LmTeacherForced,
    /// Reference `input.input_ids` and `input.pixel_values` through the Rust vision tower
    /// into the Rust text model: errors of both accumulate.
    FromPixelValues,
    /// End to end as production requests arrive: the image files and the prompt text through
    /// Rust preprocessing, the Rust vision tower and the Rust text model.
    FromImageFiles,
}

impl Mode {
    /// Every mode, in report order.
    pub const ALL: &'static [Mode] =
        &[Mode::VisionTeacherForced, Mode::LmTeacherForced, Mode::FromPixelValues, Mode::FromImageFiles];

    /// The name used in reports and JSON.
    pub fn name(self) -> &'static str {
        match self {
            Mode::VisionTeacherForced => "vision-teacher-forced",
            Mode::LmTeacherForced => "lm-teacher-forced",
            Mode::FromPixelValues => "from-pixel-values",
            Mode::FromImageFiles => "from-image-files",
        }
    }

    /// The taps a run in this mode checks, out of those a case recorded (pipeline order kept).
    /// The vision tower runs identically in `FromPixelValues`, so its taps are checked once,
    /// in `VisionTeacherForced`; a case without images has no `FromPixelValues` run, and
    /// teacher forcing needs the reference input it forces with, recorded whole (`whole`:
    /// the recorded taps not cut to one row). `FromImageFiles` checks every tap, from the
    /// token ids on.
    pub fn taps(self, recorded: &[Tap], whole: &[Tap]) -> Vec<Tap> {
        let has = |name: &str| whole.iter().any(|t| t.to_string() == name);
        let text_side = |t: &Tap| t.is_lm() || t.to_string() == "input.position_ids";
        let has_images = recorded.iter().any(|t| t.to_string() == "input.pixel_values");
        let pixels = has("input.pixel_values");
        recorded
            .iter()
            .copied()
            // The cache and the generated steps come from a generation run, not a forward pass.
            .filter(|t| !t.is_cache() && !t.is_gen())
            .filter(|t| match self {
                Mode::VisionTeacherForced => pixels && t.is_vision(),
                Mode::LmTeacherForced => (!has_images || has("vision.projector")) && text_side(t),
                Mode::FromPixelValues => pixels && text_side(t),
                Mode::FromImageFiles => true,
            })
            .collect()
    }
}
