//! The tap contract of ARCHITECTURE.md: the names Python and Rust share, their dtypes and
//! the order in which the pipeline produces them.

use std::fmt;

use crate::array::DType;

/// The stages of the pipeline, in the order they run. Indexed stages (`vision.block.{i}`,
/// `lm.layer.{i}`, `cache.{i}.conv`) are one entry each here; their index orders them within
/// the stage. The cache taps are ordered by layer first (`cache.0.conv`, `cache.0.recurrent`,
/// `cache.3.key`, …), as the layers produce them.
const STAGES: &[Stage] = &[
    Stage::new("input.input_ids", Indexed::No, DType::I64, Layout::PerToken),
    Stage::new("input.image_grid_thw", Indexed::No, DType::I64, Layout::Whole),
    Stage::new("input.position_ids", Indexed::No, DType::I64, Layout::Positions),
    Stage::new("input.pixel_values", Indexed::No, DType::F32, Layout::PerPatch),
    Stage::new("vision.patch_embed", Indexed::No, DType::F32, Layout::PerPatch),
    Stage::new("vision.pos_embed", Indexed::No, DType::F32, Layout::PerPatch),
    Stage::new("vision.block", Indexed::Suffix, DType::F32, Layout::PerPatch),
    Stage::new("vision.tower", Indexed::No, DType::F32, Layout::PerPatch),
    Stage::new("vision.projector", Indexed::No, DType::F32, Layout::PerMergedToken),
    Stage::new("lm.image_embeds", Indexed::No, DType::F32, Layout::PerImageToken),
    Stage::new("lm.layer", Indexed::Suffix, DType::F32, Layout::PerToken),
    Stage::new("lm.norm", Indexed::No, DType::F32, Layout::PerToken),
    Stage::new("lm.logits_last", Indexed::No, DType::F32, Layout::Whole),
    // The cache after the prefill: [conv_dim, kernel] and [v_heads, d_k, d_v] of a Gated
    // DeltaNet layer, [kv_heads, seq, head_dim] keys (after rotary) and values of an attention layer.
    Stage::new("cache.conv", Indexed::Infix, DType::F32, Layout::ConvState),
    Stage::new("cache.recurrent", Indexed::Infix, DType::F32, Layout::RecurrentState),
    Stage::new("cache.key", Indexed::Infix, DType::F32, Layout::KvCache),
    Stage::new("cache.value", Indexed::Infix, DType::F32, Layout::KvCache),
    // Greedy generation: the logits of each step [steps, vocab] (step 0 = the prefill's last
    // position), the reference's top-k ids and logits per step [steps, k] (what a case of a
    // 27B-size model keeps instead of whole rows of a 248 320-word vocabulary), the tokens [steps].
    Stage::new("gen.logits", Indexed::No, DType::F32, Layout::PerStepVocab),
    Stage::new("gen.top_ids", Indexed::No, DType::I64, Layout::PerStepRank),
    Stage::new("gen.top_logits", Indexed::No, DType::F32, Layout::PerStepRank),
    Stage::new("gen.tokens", Indexed::No, DType::I64, Layout::PerStep),
];

/// One stage of the tap contract.
struct Stage {
    /// The name without the index: `vision.block`, `cache.conv` (for `cache.{i}.conv`).
    stem: &'static str,
    indexed: Indexed,
    dtype: DType,
    layout: Layout,
}

impl Stage {
    const fn new(stem: &'static str, indexed: Indexed, dtype: DType, layout: Layout) -> Stage {
        Stage { stem, indexed, dtype, layout }
    }

    /// `cache.{i}.conv` → ("cache", "conv").
    fn infix_parts(&self) -> (&'static str, &'static str) {
        self.stem.split_once('.').expect("an infix stem has a dot")
    }
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Indexed {
    No,
    /// `stem.{i}`
    Suffix,
    /// `head.{i}.tail` (the cache taps: `cache.{i}.conv`)
    Infix,
}

/// A parsed tap name such as `vision.block.3` or `cache.0.conv`.
///
/// Taps sort in pipeline order: by `rank` (the stage's place; all cache stages share one),
/// then by index, then by stage (conv before recurrent within a layer).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Tap {
    rank: usize,
    index: usize,
    stage: usize,
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
    /// Parses a contract tap name; `None` for anything the contract does not define.
    pub fn parse(name: &str) -> Option<Tap> {
        let first_cache = STAGES.iter().position(|s| s.indexed == Indexed::Infix).expect("cache stages exist");
        for (stage, s) in STAGES.iter().enumerate() {
            let rank = if s.indexed == Indexed::Infix { first_cache } else { stage };
            let index = match s.indexed {
                Indexed::No if name == s.stem => Some(0),
                Indexed::No => None,
                Indexed::Suffix => name.strip_prefix(s.stem).and_then(|r| r.strip_prefix('.')).and_then(parse_index),
                Indexed::Infix => {
                    let (head, tail) = s.infix_parts();
                    name.strip_prefix(head)
                        .and_then(|r| r.strip_prefix('.'))
                        .and_then(|r| r.strip_suffix(tail))
                        .and_then(|r| r.strip_suffix('.'))
                        .and_then(parse_index)
                }
            };
            if let Some(index) = index {
                return Some(Tap { rank, index, stage });
            }
        }
        None
    }

    fn stage(self) -> &'static Stage {
        &STAGES[self.stage]
    }

    /// The dtype every dump of this tap has.
    pub fn dtype(self) -> DType {
        self.stage().dtype
    }

    /// The stage name without the index (`vision.block` for `vision.block.3`, `cache.conv` for
    /// `cache.0.conv`).
    pub fn stem(self) -> &'static str {
        self.stage().stem
    }

    /// The block or layer index of an indexed tap.
    pub fn index(self) -> Option<usize> {
        (self.stage().indexed != Indexed::No).then_some(self.index)
    }

    /// Whether the leading axis lists patches, positions, steps, heads or channels ([patches, …],
    /// [seq, hidden], [steps, vocab], a cache's [heads, …]), so that a case may keep one row of
    /// it. Not the token ids, grids, position rows, the one-position logits or the tokens.
    pub fn has_rows(self) -> bool {
        !matches!(
            self.stem(),
            "input.input_ids" | "input.image_grid_thw" | "input.position_ids" | "lm.logits_last" | "gen.tokens"
        )
    }

    /// What the tap's axes index in model terms.
    pub fn layout(self) -> Layout {
        self.stage().layout
    }

    /// Whether the tap belongs to the vision tower or projector (`vision.*`).
    pub fn is_vision(self) -> bool {
        self.stem().starts_with("vision.")
    }

    /// Whether the tap belongs to the language model's prefill (`lm.*`).
    pub fn is_lm(self) -> bool {
        self.stem().starts_with("lm.")
    }

    /// Whether the tap is a preprocessing output (`input.*`).
    pub fn is_input(self) -> bool {
        self.stem().starts_with("input.")
    }

    /// Whether the tap is a cache state after the prefill (`cache.*`).
    pub fn is_cache(self) -> bool {
        self.stem().starts_with("cache.")
    }

    /// Whether the tap belongs to greedy generation (`gen.*`).
    pub fn is_gen(self) -> bool {
        self.stem().starts_with("gen.")
    }
}

impl fmt::Display for Tap {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let stage = self.stage();
        match stage.indexed {
            Indexed::No => f.write_str(stage.stem),
            Indexed::Suffix => write!(f, "{}.{}", stage.stem, self.index),
            Indexed::Infix => {
                let (head, tail) = stage.infix_parts();
                write!(f, "{head}.{}.{tail}", self.index)
            }
        }
    }
}

/// What the axes of a tap index in model terms: the one place that says which taps are per
/// patch, per token, per step, so that naming an element and laying a tap out on an image grid
/// (`crate::locate`) need no list of tap names.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Layout {
    /// [patches, channels]: one row per vision patch, image after image, each image's patches
    /// in the order its rotary positions give.
    PerPatch,
    /// [merged tokens, hidden]: one row per block of spatial_merge × spatial_merge patches,
    /// image after image, row-major over each image's block grid.
    PerMergedToken,
    /// [seq] or [seq, hidden]: one row per token position of the prompt.
    PerToken,
    /// [image tokens, hidden]: one row per image token (the merged tokens of every image, in order).
    PerImageToken,
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
    STAGES
        .iter()
        .map(|s| match s.indexed {
            Indexed::No => s.stem.to_string(),
            Indexed::Suffix => format!("{}.{{i}}", s.stem),
            Indexed::Infix => {
                let (head, tail) = s.infix_parts();
                format!("{head}.{{i}}.{tail}")
            }
        })
        .collect::<Vec<_>>()
        .join(", ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn indexed_taps_sort_by_stage_then_index() {
        let mut taps: Vec<Tap> = ["lm.norm", "lm.layer.10", "vision.block.1", "lm.layer.2", "input.input_ids"]
            .iter()
            .map(|n| Tap::parse(n).unwrap())
            .collect();
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
    fn integer_taps_are_the_input_ids_grid_and_positions() {
        let ints: Vec<&str> = ["input.input_ids", "input.image_grid_thw", "input.position_ids", "input.pixel_values"]
            .into_iter()
            .filter(|n| Tap::parse(n).unwrap().dtype() == DType::I64)
            .collect();
        assert_eq!(ints, ["input.input_ids", "input.image_grid_thw", "input.position_ids"]);
    }

    #[test]
    fn cache_taps_sort_by_layer_after_the_logits_and_before_generation() {
        let names = ["gen.tokens", "cache.3.key", "cache.0.recurrent", "gen.logits", "cache.10.conv", "cache.0.conv"];
        let mut taps: Vec<Tap> = names.iter().map(|n| Tap::parse(n).unwrap()).collect();
        taps.push(Tap::parse("lm.logits_last").unwrap());
        taps.push(Tap::parse("cache.3.value").unwrap());
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
        let conv = Tap::parse("cache.10.conv").unwrap();
        assert_eq!((conv.stem(), conv.index(), conv.is_cache(), conv.has_rows()), ("cache.conv", Some(10), true, true));
    }

    #[test]
    fn every_tap_reports_the_layout_its_shape_in_the_contract_has() {
        let expected = [
            ("input.input_ids", Layout::PerToken),
            ("input.image_grid_thw", Layout::Whole),
            ("input.position_ids", Layout::Positions),
            ("input.pixel_values", Layout::PerPatch),
            ("vision.patch_embed", Layout::PerPatch),
            ("vision.pos_embed", Layout::PerPatch),
            ("vision.block.7", Layout::PerPatch),
            ("vision.tower", Layout::PerPatch),
            ("vision.projector", Layout::PerMergedToken),
            ("lm.image_embeds", Layout::PerImageToken),
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
            let tap = Tap::parse(name).unwrap_or_else(|| panic!("{name} should parse"));
            assert_eq!(tap.layout(), layout, "the layout of {name}");
        }
        let on_grid: Vec<&str> =
            expected.iter().filter(|(_, layout)| layout.on_image_grid()).map(|(name, _)| *name).collect();
        assert_eq!(
            on_grid,
            [
                "input.pixel_values",
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
    fn each_tap_belongs_to_the_one_family_its_name_starts_with() {
        let families = |name: &str| {
            let t = Tap::parse(name).unwrap_or_else(|| panic!("{name} should parse"));
            [t.is_input(), t.is_vision(), t.is_lm(), t.is_cache(), t.is_gen()]
        };
        let expected = [
            ("input.pixel_values", [true, false, false, false, false]),
            ("vision.block.0", [false, true, false, false, false]),
            ("lm.logits_last", [false, false, true, false, false]),
            ("cache.1.key", [false, false, false, true, false]),
            ("gen.tokens", [false, false, false, false, true]),
        ];
        for (name, family) in expected {
            assert_eq!(families(name), family, "{name}: [input, vision, lm, cache, gen]");
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
