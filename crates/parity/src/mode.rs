//! Replay modes: which inputs a Rust run takes from the reference.
//!
//! Feeding a stage the reference's own input (teacher forcing) isolates that stage; feeding
//! it the Rust upstream output (end to end) shows how errors accumulate. Reports show both.

use contract::{Family, Stage, Tap};

/// Which inputs a run takes from the reference.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Mode {
    /// The vision tower fed the reference `input.pixel_values` and `input.image_grid_thw`.
    VisionTeacherForced,
    /// The text model fed the reference `input.input_ids` and the reference
    /// `vision.projector` rows.
    LmTeacherForced,
    /// As `LmTeacherForced`, and every MoE layer's experts chosen as the reference chose them
    /// (its `moe.{i}.top_ids` and `moe.{i}.top_weights`): the experts' arithmetic apart from
    /// the routers' decisions, so a flipped near tie cannot hide a wrong expert computation.
    RoutingTeacherForced,
    /// Reference `input.input_ids` and `input.pixel_values` through the Rust vision tower
    /// into the Rust text model: errors of both accumulate.
    FromPixelValues,
    /// End to end as production requests arrive: the image files and the prompt text through
    /// Rust preprocessing, the Rust vision tower and the Rust text model.
    FromImageFiles,
    /// The prefill into a cache (from the reference inputs when they are recorded whole, else
    /// from the files), then the reference's greedy tokens fed back one step at a time:
    /// checks the cache after the prefill and every step's logits, and names the first step
    /// that diverges.
    DecodeTeacherForced,
    /// Rust's own greedy generation from the files, as a user runs it: the tokens must be
    /// those of transformers' `generate`.
    Generate,
    /// A case checked in parts, as a chat server runs it: each turn prefilled on top of the
    /// cache of the turns before (restoring the latest snapshot that the new prompt still
    /// repeats), or each suffix continued from a copy of the cached prefix; per part the token
    /// ids, the cache after the prefill, the last logits, each step's logits and the tokens.
    /// Each turn's history holds the reference's reply to the turn before, so a turn is
    /// checked whatever Rust generated before it.
    Continue,
    /// A batch's rows against Rust's own runs of their cases, one by one: the batch must not
    /// change what a row computes (padding masked, positions per row).
    BatchInvariance,
}

/// What kind of case a mode runs: the modes that apply differ.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CaseKind {
    /// One request in one pass.
    Single,
    /// A conversation fed turn by turn, or a prefix continued by suffixes.
    Parts,
    /// A left-padded batch of other cases.
    Batch,
}

impl Mode {
    /// Every mode, in report order.
    pub const ALL: &'static [Mode] = &[
        Mode::VisionTeacherForced,
        Mode::LmTeacherForced,
        Mode::RoutingTeacherForced,
        Mode::FromPixelValues,
        Mode::FromImageFiles,
        Mode::DecodeTeacherForced,
        Mode::Generate,
        Mode::Continue,
        Mode::BatchInvariance,
    ];

    /// The name used in reports and JSON.
    pub fn name(self) -> &'static str {
        match self {
            Mode::VisionTeacherForced => "vision-teacher-forced",
            Mode::LmTeacherForced => "lm-teacher-forced",
            Mode::RoutingTeacherForced => "routing-teacher-forced",
            Mode::FromPixelValues => "from-pixel-values",
            Mode::FromImageFiles => "from-image-files",
            Mode::DecodeTeacherForced => "decode-teacher-forced",
            Mode::Generate => "generate",
            Mode::Continue => "continue",
            Mode::BatchInvariance => "batch-invariance",
        }
    }

    /// The taps of the whole case a run in this mode checks, out of those a case of `kind`
    /// recorded (pipeline order kept). The vision tower runs identically in `FromPixelValues`, so
    /// its taps are checked once, in `VisionTeacherForced`; a case without images has no
    /// `FromPixelValues` run, and teacher forcing needs the reference input it forces with,
    /// recorded whole (`whole`: the recorded taps not cut to one row). `FromImageFiles` checks
    /// every tap of the forward pass, from the token ids on. The cache and the steps (`cache.*`,
    /// `gen.*`) come from a generation run: `DecodeTeacherForced` checks the cache and each
    /// step's logits, `Generate` the tokens. A batch runs from its files only, plus
    /// `BatchInvariance` over its text-side taps; a case in parts records only per-part taps
    /// (see [`Mode::part_taps`]).
    pub fn taps(self, kind: CaseKind, recorded: &[Tap], whole: &[Tap]) -> Vec<Tap> {
        let has = |stage: Stage| whole.iter().any(|t| t.stage() == stage);
        let text_side = |t: &Tap| matches!(t.family(), Family::Lm | Family::Moe) || t.stage() == Stage::PositionIds;
        // The vision tower's inputs: the images' pixels, the videos' or both, each recorded whole.
        let vision_inputs = [Stage::PixelValues, Stage::PixelValuesVideos];
        let records = |stage: Stage| recorded.iter().any(|t| t.stage() == stage);
        let has_images = vision_inputs.iter().any(|&s| records(s));
        let pixels = has_images && vision_inputs.iter().all(|&s| !records(s) || has(s));
        let routing = has(Stage::MoeTopIds) && has(Stage::MoeTopWeights);
        let after_routing = |t: &Tap| t.family() == Family::Lm || matches!(t.stage(), Stage::MoeShared | Stage::MoeOut);
        let single = kind == CaseKind::Single;
        recorded
            .iter()
            .copied()
            .filter(|t| match self {
                Mode::VisionTeacherForced => single && pixels && t.family() == Family::Vision,
                Mode::LmTeacherForced => single && (!has_images || has(Stage::VisionProjector)) && text_side(t),
                Mode::RoutingTeacherForced => {
                    single && routing && (!has_images || has(Stage::VisionProjector)) && after_routing(t)
                }
                Mode::FromPixelValues => single && pixels && text_side(t),
                Mode::FromImageFiles => kind != CaseKind::Parts && !matches!(t.family(), Family::Cache | Family::Gen),
                Mode::DecodeTeacherForced => {
                    kind != CaseKind::Parts
                        && (t.family() == Family::Cache || (t.family() == Family::Gen && t.stage() != Stage::GenTokens))
                }
                Mode::Generate => kind != CaseKind::Parts && t.stage() == Stage::GenTokens,
                Mode::Continue => false,
                Mode::BatchInvariance => {
                    kind == CaseKind::Batch
                        && (matches!(t.family(), Family::Lm | Family::Moe | Family::Cache | Family::Gen)
                            || matches!(t.stage(), Stage::InputIds | Stage::PositionIds))
                        && !matches!(t.stage(), Stage::LmImageEmbeds | Stage::LmVideoEmbeds)
                }
            })
            .collect()
    }

    /// The taps of one part of a case (a turn, a suffix) a run in this mode checks: all of
    /// them in `Continue`, none elsewhere.
    pub fn part_taps(self, recorded: &[Tap]) -> Vec<Tap> {
        match self {
            Mode::Continue => recorded.to_vec(),
            _ => Vec::new(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn taps(names: &[&str]) -> Vec<Tap> {
        names.iter().map(|n| Tap::parse(n).unwrap()).collect()
    }

    fn checked(mode: Mode, recorded: &[Tap]) -> Vec<String> {
        mode.taps(CaseKind::Single, recorded, recorded).iter().map(Tap::to_string).collect()
    }

    #[test]
    fn a_batch_runs_from_its_files_and_against_its_rows_alone_and_parts_only_continue() {
        let recorded = taps(&[
            "input.input_ids",
            "input.pixel_values",
            "vision.tower",
            "lm.image_embeds",
            "lm.norm",
            "gen.tokens",
        ]);
        let batch = |mode: Mode| -> Vec<String> {
            mode.taps(CaseKind::Batch, &recorded, &recorded).iter().map(Tap::to_string).collect()
        };
        assert!(batch(Mode::VisionTeacherForced).is_empty() && batch(Mode::LmTeacherForced).is_empty());
        assert_eq!(
            batch(Mode::FromImageFiles),
            ["input.input_ids", "input.pixel_values", "vision.tower", "lm.image_embeds", "lm.norm"]
        );
        assert_eq!(batch(Mode::BatchInvariance), ["input.input_ids", "lm.norm", "gen.tokens"]);
        assert_eq!(batch(Mode::Generate), ["gen.tokens"]);
        for mode in Mode::ALL {
            assert!(mode.taps(CaseKind::Parts, &recorded, &recorded).is_empty(), "{}: a case in parts", mode.name());
            let part = mode.part_taps(&recorded);
            assert_eq!(part.is_empty(), *mode != Mode::Continue, "{}: a part's taps", mode.name());
            let single = mode.taps(CaseKind::Single, &recorded, &recorded);
            assert!(
                !matches!(mode, Mode::Continue | Mode::BatchInvariance) || single.is_empty(),
                "{} checks nothing of a single case",
                mode.name()
            );
        }
    }

    #[test]
    fn the_cache_and_step_logits_belong_to_decode_teacher_forcing_and_the_tokens_to_generate() {
        let recorded = taps(&[
            "input.input_ids",
            "lm.layer.0",
            "lm.logits_last",
            "cache.0.conv",
            "cache.3.key",
            "gen.logits",
            "gen.top_ids",
            "gen.top_logits",
            "gen.tokens",
        ]);
        assert_eq!(
            checked(Mode::DecodeTeacherForced, &recorded),
            ["cache.0.conv", "cache.3.key", "gen.logits", "gen.top_ids", "gen.top_logits"],
            "decode-teacher-forced"
        );
        assert_eq!(checked(Mode::Generate, &recorded), ["gen.tokens"], "generate");
        assert_eq!(
            checked(Mode::FromImageFiles, &recorded),
            ["input.input_ids", "lm.layer.0", "lm.logits_last"],
            "from-image-files checks the forward pass only"
        );
        for mode in [Mode::LmTeacherForced, Mode::FromPixelValues, Mode::VisionTeacherForced] {
            let generation =
                checked(mode, &recorded).into_iter().filter(|t| t.starts_with("cache.") || t.starts_with("gen."));
            assert_eq!(generation.count(), 0, "{} checks no generation tap", mode.name());
        }
    }

    #[test]
    fn a_video_case_runs_its_tower_from_the_video_pixels_and_decodes_its_frames_from_the_files_only() {
        let recorded = taps(&[
            "input.input_ids",
            "input.video_grid_thw",
            "input.position_ids",
            "input.video_frames",
            "input.pixel_values_videos",
            "vision.patch_embed",
            "vision.projector",
            "lm.video_embeds",
            "lm.layer.0",
        ]);
        assert_eq!(checked(Mode::VisionTeacherForced, &recorded), ["vision.patch_embed", "vision.projector"]);
        assert_eq!(
            checked(Mode::FromPixelValues, &recorded),
            ["input.position_ids", "lm.video_embeds", "lm.layer.0"],
            "a video without images still has a tower to run"
        );
        assert_eq!(checked(Mode::FromImageFiles, &recorded).len(), recorded.len(), "every tap from the files");
        assert!(!checked(Mode::LmTeacherForced, &recorded).contains(&"input.video_frames".to_owned()));
        // With the video pixels cut to one row, nothing can be teacher-forced from them, even
        // though the images' pixels (none here, or whole) would allow it.
        let mut with_images = recorded.clone();
        with_images.extend(taps(&["input.pixel_values"]));
        with_images.sort();
        let whole: Vec<Tap> = with_images.iter().copied().filter(|t| t.stage() != Stage::PixelValuesVideos).collect();
        assert!(Mode::VisionTeacherForced.taps(CaseKind::Single, &with_images, &whole).is_empty());
        assert!(Mode::FromPixelValues.taps(CaseKind::Single, &with_images, &whole).is_empty());
    }

    #[test]
    fn a_case_without_generation_has_nothing_for_the_decode_modes() {
        let recorded = taps(&["input.input_ids", "lm.layer.0", "lm.logits_last"]);
        assert!(checked(Mode::DecodeTeacherForced, &recorded).is_empty(), "decode-teacher-forced");
        assert!(checked(Mode::Generate, &recorded).is_empty(), "generate");
    }
}
