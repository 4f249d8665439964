//! The tap contract of ARCHITECTURE.md: the names Python and Rust share, their element types,
//! what their axes index, and the order in which the pipeline produces them.
//!
//! Every stage is declared once, in [`stages!`] below: its name, whether it carries a block or
//! layer index, its element type, its layout and whether a case may keep one row of it. Its
//! family (`input.`, `vision.`, …) is the start of its name. Adding a tap is one line here,
//! one `taps.record(Stage::….tap(), …)` in the model, one hook in `script/capture.py` (a test
//! keeps that script's pipeline equal to this one) and one row of ARCHITECTURE.md's table (a
//! test keeps that too); `docs/CHECKLISTS.md` walks through it.

use std::fmt;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::ArrayDtype;

/// The families of taps, by the start of their names: what a replay mode selects and what a
/// manifest pattern such as `"vision.*"` names.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Family {
    /// `input.*`: the preprocessing outputs and positions.
    Input,
    /// `vision.*`: the vision tower and its projector.
    Vision,
    /// `lm.*`: the language model's forward pass.
    Lm,
    /// `moe.*`: the sparse MoE block of a decoder layer (its router, experts and shared expert).
    Moe,
    /// `cache.*`: the cache after the prefill.
    Cache,
    /// `gen.*`: greedy generation.
    Gen,
}

impl Family {
    /// Every family, in pipeline order.
    pub const ALL: [Family; 6] = [Family::Input, Family::Vision, Family::Lm, Family::Moe, Family::Cache, Family::Gen];

    /// The start of every tap name of the family, dot included.
    pub fn prefix(self) -> &'static str {
        match self {
            Family::Input => "input.",
            Family::Vision => "vision.",
            Family::Lm => "lm.",
            Family::Moe => "moe.",
            Family::Cache => "cache.",
            Family::Gen => "gen.",
        }
    }

    fn of_stem(stem: &str) -> Family {
        Family::ALL.into_iter().find(|f| stem.starts_with(f.prefix())).expect("every stem starts with a family prefix")
    }
}

/// Where a stage's index sits in its name.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Indexed {
    No,
    /// `stem.{i}` (`vision.block.{i}`, `lm.layer.{i}`).
    Suffix,
    /// `head.{i}.tail` (the cache taps: `cache.{i}.conv`).
    Infix,
}

/// Whether a case may keep one row of a tap's leading axis (`rows` in the manifest).
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Rows {
    /// The leading axis lists patches, positions, steps, heads or channels.
    Yes,
    /// The token ids, the grids, the position rows, the one-position logits, the tokens.
    No,
}

struct StageInfo {
    stage: Stage,
    stem: &'static str,
    indexed: Indexed,
    dtype: ArrayDtype,
    layout: Layout,
    rows: Rows,
}

macro_rules! stages {
    ($($(#[$doc:meta])* $variant:ident = $stem:literal, $indexed:ident, $dtype:ident, $layout:ident, $rows:ident;)*) => {
        /// One stage of the pipeline, in the order the stages run (the derived order is the
        /// pipeline order). Indexed stages (`vision.block.{i}`, `cache.{i}.conv`) are one stage
        /// each; a [`Tap`] adds the index.
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
        pub enum Stage {
            $($(#[$doc])* $variant,)*
        }

        const STAGES: &[StageInfo] = &[
            $(StageInfo {
                stage: Stage::$variant,
                stem: $stem,
                indexed: Indexed::$indexed,
                dtype: ArrayDtype::$dtype,
                layout: Layout::$layout,
                rows: Rows::$rows,
            },)*
        ];
    };
}

stages! {
    /// [seq]: token ids after the chat template and image-pad expansion.
    InputIds = "input.input_ids", No, I64, PerToken, No;
    /// [batch, seq]: a left-padded batch's mask (1 for a token, 0 for padding); batches only.
    AttentionMask = "input.attention_mask", No, I64, PerToken, No;
    /// [images, 3]: the (t, h, w) patch grid of each image.
    ImageGridThw = "input.image_grid_thw", No, I64, Whole, No;
    /// [videos, 3]: the (t, h, w) patch grid of each video (t temporal patches).
    VideoGridThw = "input.video_grid_thw", No, I64, Whole, No;
    /// [3, seq]: M-RoPE positions (t, h, w).
    PositionIds = "input.position_ids", No, I64, Positions, No;
    /// [patches, C·T·P·P]: the processor's output.
    PixelValues = "input.pixel_values", No, F32, PerPatch, Yes;
    /// [pixels, 3]: the decoded RGB frames the video processor samples (0–255), video after
    /// video, frame after frame, row-major: what decoding and colour conversion give.
    VideoFrames = "input.video_frames", No, I64, VideoPixels, No;
    /// [video patches, C·T·P·P]: the video processor's output.
    PixelValuesVideos = "input.pixel_values_videos", No, F32, PerPatch, Yes;
    /// [patches, Hv]: after the patch projection.
    VisionPatchEmbed = "vision.patch_embed", No, F32, PerPatch, Yes;
    /// [patches, Hv]: the interpolated position embeddings that are added.
    VisionPosEmbed = "vision.pos_embed", No, F32, PerPatch, Yes;
    /// [patches, Hv]: the output of vision block i.
    VisionBlock = "vision.block", Suffix, F32, PerPatch, Yes;
    /// [patches, Hv]: the last block's output, before the merger.
    VisionTower = "vision.tower", No, F32, PerPatch, Yes;
    /// [merged, H]: the patch merger's output.
    VisionProjector = "vision.projector", No, F32, PerMergedToken, Yes;
    /// [image tokens, H]: the input embeddings at the image-token positions after the splice.
    LmImageEmbeds = "lm.image_embeds", No, F32, PerImageToken, Yes;
    /// [video tokens, H]: the input embeddings at the video-token positions after the splice.
    LmVideoEmbeds = "lm.video_embeds", No, F32, PerVideoToken, Yes;
    /// [seq, experts]: the router's logits of decoder layer i's sparse MoE block (the gate's
    /// linear output, before the softmax).
    MoeRouterLogits = "moe.router_logits", Infix, F32, PerToken, Yes;
    /// [seq, k]: the experts each token is routed to, compared as a set per token.
    MoeTopIds = "moe.top_ids", Infix, I64, PerToken, Yes;
    /// [seq, k]: their weights after renormalisation, in the order of `moe.{i}.top_ids`.
    MoeTopWeights = "moe.top_weights", Infix, F32, PerToken, Yes;
    /// [seq, H]: the shared expert's output times its sigmoid gate.
    MoeShared = "moe.shared", Infix, F32, PerToken, Yes;
    /// [seq, H]: the block's output (routed experts plus the gated shared expert).
    MoeOut = "moe.out", Infix, F32, PerToken, Yes;
    /// [seq, H]: the output of decoder layer i.
    LmLayer = "lm.layer", Suffix, F32, PerToken, Yes;
    /// [seq, H]: after the final norm.
    LmNorm = "lm.norm", No, F32, PerToken, Yes;
    /// [vocab]: the logits at the last position.
    LmLogitsLast = "lm.logits_last", No, F32, Whole, No;
    /// [conv_dim, kernel]: a Gated DeltaNet layer's conv state after the prefill.
    CacheConv = "cache.conv", Infix, F32, ConvState, Yes;
    /// [v_heads, d_k, d_v]: a Gated DeltaNet layer's recurrent state after the prefill.
    CacheRecurrent = "cache.recurrent", Infix, F32, RecurrentState, Yes;
    /// [kv_heads, seq, head_dim]: an attention layer's cached keys (after rotary).
    CacheKey = "cache.key", Infix, F32, KvCache, Yes;
    /// [kv_heads, seq, head_dim]: an attention layer's cached values.
    CacheValue = "cache.value", Infix, F32, KvCache, Yes;
    /// [steps, vocab]: the logits of each greedy step (step 0 = the prefill's last position).
    GenLogits = "gen.logits", No, F32, PerStepVocab, Yes;
    /// [steps, k]: the reference's top-k token ids per step.
    GenTopIds = "gen.top_ids", No, I64, PerStepRank, Yes;
    /// [steps, k]: their logits.
    GenTopLogits = "gen.top_logits", No, F32, PerStepRank, Yes;
    /// [steps]: the greedy tokens.
    GenTokens = "gen.tokens", No, I64, PerStep, No;
}

impl Stage {
    /// Every stage, in pipeline order.
    pub fn all() -> impl Iterator<Item = Stage> {
        STAGES.iter().map(|s| s.stage)
    }

    fn info(self) -> &'static StageInfo {
        &STAGES[self as usize]
    }

    /// The name without the index: `vision.block`, `cache.conv` (for `cache.{i}.conv`).
    pub fn stem(self) -> &'static str {
        self.info().stem
    }

    /// Whether the stage's taps carry a block or layer index.
    pub fn is_indexed(self) -> bool {
        self.info().indexed != Indexed::No
    }

    /// The tap of a stage without an index.
    ///
    /// # Panics
    /// For an indexed stage: which block or layer is a programming error to leave out.
    pub fn tap(self) -> Tap {
        assert!(!self.is_indexed(), "{} needs a block or layer index: use Stage::at", self.stem());
        Tap::new(self, 0)
    }

    /// The tap of block or layer `index` of an indexed stage.
    ///
    /// # Panics
    /// For a stage without an index.
    pub fn at(self, index: usize) -> Tap {
        assert!(self.is_indexed(), "{} has no index: use Stage::tap", self.stem());
        Tap::new(self, index)
    }

    /// `cache.{i}.conv` → ("cache", "conv").
    fn infix_parts(self) -> (&'static str, &'static str) {
        self.stem().split_once('.').expect("an infix stem has a dot")
    }

    /// The stage's name with `{i}` for its index: `vision.block.{i}`, `cache.{i}.conv`.
    pub fn pattern(self) -> String {
        match self.info().indexed {
            Indexed::No => self.stem().to_string(),
            Indexed::Suffix => format!("{}.{{i}}", self.stem()),
            Indexed::Infix => {
                let (head, tail) = self.infix_parts();
                format!("{head}.{{i}}.{tail}")
            }
        }
    }

    /// The place in the pipeline. The cache stages share one, so that their taps sort by layer
    /// first (`cache.0.conv`, `cache.0.recurrent`, `cache.3.key`, …), as the layers produce them;
    /// the MoE stages share the decoder layers' one, so that a layer's MoE taps come right before
    /// its output (`lm.layer.0`, `moe.1.router_logits`, …, `moe.1.out`, `lm.layer.1`).
    fn rank(self) -> Stage {
        match Family::of_stem(self.stem()) {
            Family::Cache => Stage::CacheConv,
            Family::Moe => Stage::LmLayer,
            _ => self,
        }
    }
}

/// A tap of the contract: a stage and, for an indexed stage, the block or layer index
/// (`vision.block.3`, `cache.0.conv`).
///
/// Taps sort in pipeline order: by stage, the cache stages by layer first (conv before
/// recurrent within a layer, key before value).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Tap {
    rank: Stage,
    index: usize,
    stage: Stage,
}

/// Canonical decimal only: "01" would name the same file twice.
fn parse_index(text: &str) -> Option<usize> {
    let canonical = text == "0" || (!text.starts_with('0') && text.chars().all(|c| c.is_ascii_digit()));
    if canonical {
        text.parse().ok()
    } else {
        None
    }
}

impl Tap {
    fn new(stage: Stage, index: usize) -> Tap {
        Tap { rank: stage.rank(), index, stage }
    }

    /// Parses a contract tap name; `None` for anything the contract does not define.
    pub fn parse(name: &str) -> Option<Tap> {
        STAGES.iter().find_map(|s| {
            let index = match s.indexed {
                Indexed::No => (name == s.stem).then_some(0),
                Indexed::Suffix => name.strip_prefix(s.stem).and_then(|r| r.strip_prefix('.')).and_then(parse_index),
                Indexed::Infix => {
                    let (head, tail) = s.stage.infix_parts();
                    name.strip_prefix(head)
                        .and_then(|r| r.strip_prefix('.'))
                        .and_then(|r| r.strip_suffix(tail))
                        .and_then(|r| r.strip_suffix('.'))
                        .and_then(parse_index)
                }
            };
            index.map(|i| Tap::new(s.stage, i))
        })
    }

    /// The stage of the tap.
    pub fn stage(self) -> Stage {
        self.stage
    }

    /// The element type every dump of this tap has.
    pub fn dtype(self) -> ArrayDtype {
        self.stage.info().dtype
    }

    /// The stage name without the index (`vision.block` for `vision.block.3`, `cache.conv` for
    /// `cache.0.conv`).
    pub fn stem(self) -> &'static str {
        self.stage.stem()
    }

    /// The block or layer index of an indexed tap.
    pub fn index(self) -> Option<usize> {
        self.stage.is_indexed().then_some(self.index)
    }

    /// Whether a case may keep one row of the tap's leading axis: it lists patches, positions,
    /// steps, heads or channels. Not the token ids, grids, position rows, the one-position
    /// logits or the tokens.
    pub fn has_rows(self) -> bool {
        self.stage.info().rows == Rows::Yes
    }

    /// What the tap's axes index in model terms.
    pub fn layout(self) -> Layout {
        self.stage.info().layout
    }

    /// The family the tap's name starts with.
    pub fn family(self) -> Family {
        Family::of_stem(self.stem())
    }
}

impl fmt::Display for Tap {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.stage.info().indexed {
            Indexed::No => f.write_str(self.stem()),
            Indexed::Suffix => write!(f, "{}.{}", self.stem(), self.index),
            Indexed::Infix => {
                let (head, tail) = self.stage.infix_parts();
                write!(f, "{head}.{}.{tail}", self.index)
            }
        }
    }
}

impl Serialize for Tap {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

/// A tap name in `fixtures.toml` is parsed where it is read; an unknown one is an error that
/// lists the contract's names (the manifest adds the line).
impl<'de> Deserialize<'de> for Tap {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let name = String::deserialize(deserializer)?;
        Tap::parse(&name)
            .ok_or_else(|| serde::de::Error::custom(format!("unknown tap \"{name}\"; known taps: {}", known_taps())))
    }
}

/// What the axes of a tap index in model terms: the one place that says which taps are per
/// patch, per token, per step, so that naming an element and laying a tap out on an image grid
/// need no list of tap names.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Layout {
    /// [patches, channels]: one row per vision patch, image after image (then video after video,
    /// frame after frame: the tower's second call, for the video tokens), each grid's patches
    /// in the order its rotary positions give.
    PerPatch,
    /// [merged tokens, hidden]: one row per block of spatial_merge × spatial_merge patches,
    /// image after image, row-major over each image's block grid.
    PerMergedToken,
    /// [seq] or [seq, hidden]: one row per token position of the prompt.
    PerToken,
    /// [image tokens, hidden]: one row per image token (the merged tokens of every image, in order).
    PerImageToken,
    /// [video tokens, hidden]: one row per video token (the merged tokens of every frame of every
    /// video, in order).
    PerVideoToken,
    /// [pixels, 3]: one row per pixel of the decoded frames, video after video, frame after
    /// frame, row-major within a frame; the columns are R, G, B.
    VideoPixels,
    /// [3, seq]: the t, h and w position rows of every token.
    Positions,
    /// [conv_dim, kernel]: the convolution state of a Gated DeltaNet layer.
    ConvState,
    /// [v_heads, d_k, d_v]: the recurrent state of a Gated DeltaNet layer.
    RecurrentState,
    /// [kv_heads, seq, head_dim]: the keys or values an attention layer keeps.
    KvCache,
    /// [steps]: one entry per generation step.
    PerStep,
    /// [steps, vocab]: the logits of each generation step.
    PerStepVocab,
    /// [steps, k]: the reference's k best ids or logits of each generation step.
    PerStepRank,
    /// No axis names a place in the model (the grid rows, the last position's logits).
    Whole,
}

impl Layout {
    /// Whether the rows lie on the images' patch or block grids, so a tap can be drawn as a
    /// heat map per image.
    pub fn on_image_grid(self) -> bool {
        matches!(self, Layout::PerPatch | Layout::PerMergedToken)
    }
}

/// The tap names of the contract, for error messages (`{i}` marks an index).
pub fn known_taps() -> String {
    Stage::all().map(Stage::pattern).collect::<Vec<_>>().join(", ")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(name: &str) -> Tap {
        Tap::parse(name).unwrap_or_else(|| panic!("{name} should parse"))
    }

    #[test]
    fn the_stage_table_is_in_declaration_order_and_every_stem_names_its_family() {
        for (i, s) in STAGES.iter().enumerate() {
            assert_eq!(s.stage as usize, i, "{} sits at its own place in the table", s.stem);
            assert!(
                Family::ALL.iter().any(|f| s.stem.starts_with(f.prefix())),
                "{} starts with no family prefix",
                s.stem
            );
        }
    }

    #[test]
    fn typed_taps_print_and_parse_as_the_names_of_the_contract() {
        assert_eq!(Stage::LmLayer.at(3).to_string(), "lm.layer.3");
        assert_eq!(Stage::CacheConv.at(10).to_string(), "cache.10.conv");
        assert_eq!(Stage::LmNorm.tap().to_string(), "lm.norm");
        for stage in Stage::all() {
            let tap = if stage.is_indexed() { stage.at(7) } else { stage.tap() };
            assert_eq!(Tap::parse(&tap.to_string()), Some(tap), "{tap} round-trips");
            assert_eq!(tap.stage(), stage);
        }
    }

    #[test]
    #[should_panic(expected = "lm.layer needs a block or layer index")]
    fn an_indexed_stage_without_its_index_is_a_programming_error() {
        Stage::LmLayer.tap();
    }

    #[test]
    #[should_panic(expected = "lm.norm has no index")]
    fn an_index_on_a_stage_without_one_is_a_programming_error() {
        Stage::LmNorm.at(0);
    }

    #[test]
    fn indexed_taps_sort_by_stage_then_index() {
        let mut taps: Vec<Tap> =
            ["lm.norm", "lm.layer.10", "vision.block.1", "lm.layer.2", "input.input_ids"].map(parse).to_vec();
        taps.sort();
        let names: Vec<String> = taps.iter().map(Tap::to_string).collect();
        assert_eq!(names, ["input.input_ids", "vision.block.1", "lm.layer.2", "lm.layer.10", "lm.norm"]);
    }

    #[test]
    fn names_outside_the_contract_are_rejected() {
        let bad_names = [
            "vision.block",
            "vision.block.x",
            "vision.block.01",
            "lm.layers.0",
            "lm.logits",
            "",
            "cache.conv",
            "cache.0",
            "cache.01.conv",
            "cache.0.state",
            "cache.0.conv.1",
            "gen.token",
        ];
        for bad in bad_names {
            assert_eq!(Tap::parse(bad), None, "{bad:?} should not parse");
        }
    }

    #[test]
    fn integer_taps_are_the_ids_grids_positions_decoded_frames_expert_choices_and_tokens() {
        let ints: Vec<&str> = Stage::all().filter(|s| s.info().dtype == ArrayDtype::I64).map(Stage::stem).collect();
        assert_eq!(
            ints,
            [
                "input.input_ids",
                "input.attention_mask",
                "input.image_grid_thw",
                "input.video_grid_thw",
                "input.position_ids",
                "input.video_frames",
                "moe.top_ids",
                "gen.top_ids",
                "gen.tokens"
            ]
        );
    }

    #[test]
    fn cache_taps_sort_by_layer_after_the_logits_and_before_generation() {
        let names = ["gen.tokens", "cache.3.key", "cache.0.recurrent", "gen.logits", "cache.10.conv", "cache.0.conv"];
        let mut taps: Vec<Tap> = names.map(parse).to_vec();
        taps.push(parse("lm.logits_last"));
        taps.push(parse("cache.3.value"));
        taps.sort();
        let sorted: Vec<String> = taps.iter().map(Tap::to_string).collect();
        assert_eq!(
            sorted,
            [
                "lm.logits_last",
                "cache.0.conv",
                "cache.0.recurrent",
                "cache.3.key",
                "cache.3.value",
                "cache.10.conv",
                "gen.logits",
                "gen.tokens"
            ]
        );
        let conv = parse("cache.10.conv");
        assert_eq!(
            (conv.stem(), conv.index(), conv.family(), conv.has_rows()),
            ("cache.conv", Some(10), Family::Cache, true)
        );
    }

    #[test]
    fn the_taps_without_rows_are_ids_grids_positions_frames_last_logits_and_tokens() {
        let whole: Vec<&str> = Stage::all().filter(|s| s.info().rows == Rows::No).map(Stage::stem).collect();
        assert_eq!(
            whole,
            [
                "input.input_ids",
                "input.attention_mask",
                "input.image_grid_thw",
                "input.video_grid_thw",
                "input.position_ids",
                "input.video_frames",
                "lm.logits_last",
                "gen.tokens"
            ]
        );
    }

    #[test]
    fn every_tap_reports_the_layout_its_shape_in_the_contract_has() {
        let expected = [
            ("input.input_ids", Layout::PerToken),
            ("input.image_grid_thw", Layout::Whole),
            ("input.position_ids", Layout::Positions),
            ("input.video_grid_thw", Layout::Whole),
            ("input.pixel_values", Layout::PerPatch),
            ("input.video_frames", Layout::VideoPixels),
            ("input.pixel_values_videos", Layout::PerPatch),
            ("vision.patch_embed", Layout::PerPatch),
            ("vision.pos_embed", Layout::PerPatch),
            ("vision.block.7", Layout::PerPatch),
            ("vision.tower", Layout::PerPatch),
            ("vision.projector", Layout::PerMergedToken),
            ("lm.image_embeds", Layout::PerImageToken),
            ("lm.video_embeds", Layout::PerVideoToken),
            ("lm.layer.3", Layout::PerToken),
            ("lm.norm", Layout::PerToken),
            ("lm.logits_last", Layout::Whole),
            ("cache.0.conv", Layout::ConvState),
            ("cache.0.recurrent", Layout::RecurrentState),
            ("cache.3.key", Layout::KvCache),
            ("cache.3.value", Layout::KvCache),
            ("gen.logits", Layout::PerStepVocab),
            ("gen.top_ids", Layout::PerStepRank),
            ("gen.top_logits", Layout::PerStepRank),
            ("gen.tokens", Layout::PerStep),
        ];
        for (name, layout) in expected {
            assert_eq!(parse(name).layout(), layout, "the layout of {name}");
        }
        let on_grid: Vec<&str> =
            expected.iter().filter(|(_, layout)| layout.on_image_grid()).map(|(name, _)| *name).collect();
        assert_eq!(
            on_grid,
            [
                "input.pixel_values",
                "input.pixel_values_videos",
                "vision.patch_embed",
                "vision.pos_embed",
                "vision.block.7",
                "vision.tower",
                "vision.projector"
            ],
            "the taps drawn on an image's grid"
        );
    }

    #[test]
    fn a_layers_moe_taps_sort_between_the_layer_before_and_its_own_output() {
        let names = ["lm.layer.1", "moe.1.out", "lm.layer.0", "moe.1.router_logits", "moe.0.top_ids", "lm.norm"];
        let mut taps: Vec<Tap> = names.map(parse).to_vec();
        taps.sort();
        let sorted: Vec<String> = taps.iter().map(Tap::to_string).collect();
        assert_eq!(
            sorted,
            ["moe.0.top_ids", "lm.layer.0", "moe.1.router_logits", "moe.1.out", "lm.layer.1", "lm.norm"]
        );
        let ids = parse("moe.3.top_ids");
        assert_eq!((ids.family(), ids.index(), ids.dtype()), (Family::Moe, Some(3), ArrayDtype::I64));
    }

    #[test]
    fn each_tap_belongs_to_the_one_family_its_name_starts_with() {
        let expected = [
            ("input.pixel_values", Family::Input),
            ("vision.block.0", Family::Vision),
            ("lm.logits_last", Family::Lm),
            ("cache.1.key", Family::Cache),
            ("gen.tokens", Family::Gen),
        ];
        for (name, family) in expected {
            assert_eq!(parse(name).family(), family, "{name}");
        }
    }

    #[test]
    fn known_taps_spell_the_index_where_the_name_carries_it() {
        let known = known_taps();
        for name in ["vision.block.{i}", "cache.{i}.conv", "cache.{i}.value", "gen.tokens", "gen.top_ids"] {
            assert!(known.contains(name), "{name} missing from {known}");
        }
    }
}
