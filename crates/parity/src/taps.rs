//! The tap contract of ARCHITECTURE.md: the names Python and Rust share, their dtypes and
//! the order in which the pipeline produces them.

use std::fmt;

use crate::array::DType;

/// The stages of the pipeline, in the order they run. Indexed stages (`vision.block.{i}`,
/// `lm.layer.{i}`) are one entry each here; their index orders them within the stage.
const STAGES: &[(&str, Indexed, DType)] = &[
    ("input.input_ids", Indexed::No, DType::I64),
    ("input.image_grid_thw", Indexed::No, DType::I64),
    ("input.position_ids", Indexed::No, DType::I64),
    ("input.pixel_values", Indexed::No, DType::F32),
    ("vision.patch_embed", Indexed::No, DType::F32),
    ("vision.pos_embed", Indexed::No, DType::F32),
    ("vision.block", Indexed::Yes, DType::F32),
    ("vision.tower", Indexed::No, DType::F32),
    ("vision.projector", Indexed::No, DType::F32),
    ("lm.image_embeds", Indexed::No, DType::F32),
    ("lm.layer", Indexed::Yes, DType::F32),
    ("lm.norm", Indexed::No, DType::F32),
    ("lm.logits_last", Indexed::No, DType::F32),
];

#[derive(Clone, Copy, PartialEq, Eq)]
enum Indexed {
    No,
    Yes,
}

/// A parsed tap name such as `vision.block.3`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Tap {
    stage: usize,
    index: usize,
}

impl Tap {
    /// Parses a contract tap name; `None` for anything the contract does not define.
    pub fn parse(name: &str) -> Option<Tap> {
        for (stage, (stem, indexed, _)) in STAGES.iter().enumerate() {
            match indexed {
                Indexed::No if name == *stem => return Some(Tap { stage, index: 0 }),
                Indexed::Yes => {
                    let Some(rest) = name.strip_prefix(stem).and_then(|r| r.strip_prefix('.')) else {
                        continue;
                    };
                    // Canonical decimal only: "01" would name the same file twice.
                    if rest == "0" || (!rest.starts_with('0') && rest.chars().all(|c| c.is_ascii_digit())) {
                        if let Ok(index) = rest.parse() {
                            return Some(Tap { stage, index });
                        }
                    }
                }
                _ => {}
            }
        }
        None
    }

    /// The dtype every dump of this tap has.
    pub fn dtype(self) -> DType {
        STAGES[self.stage].2
    }

    /// The stage name without the index (`vision.block` for `vision.block.3`).
    pub fn stem(self) -> &'static str {
        STAGES[self.stage].0
    }

    /// The block or layer index of an indexed tap.
    pub fn index(self) -> Option<usize> {
        (STAGES[self.stage].1 == Indexed::Yes).then_some(self.index)
    }

    /// Whether the leading axis lists patches or positions ([patches, …] or [seq, hidden]),
    /// so that a case may keep one row of it. Not the token ids, grids, position rows or the
    /// one-position logits.
    pub fn has_rows(self) -> bool {
        !matches!(self.stem(), "input.input_ids" | "input.image_grid_thw" | "input.position_ids" | "lm.logits_last")
    }

    /// Whether the tap belongs to the vision tower or projector (`vision.*`).
    pub fn is_vision(self) -> bool {
        self.stem().starts_with("vision.")
    }

    /// Whether the tap belongs to the language model (`lm.*`).
    pub fn is_lm(self) -> bool {
        self.stem().starts_with("lm.")
    }

    /// Whether the tap is a preprocessing output (`input.*`).
    pub fn is_input(self) -> bool {
        self.stem().starts_with("input.")
    }
}

impl fmt::Display for Tap {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.index() {
            Some(i) => write!(f, "{}.{i}", self.stem()),
            None => f.write_str(self.stem()),
        }
    }
}

/// The tap names of the contract, for error messages (`{i}` marks an index).
pub fn known_taps() -> String {
    STAGES
        .iter()
        .map(|(stem, indexed, _)| match indexed {
            Indexed::No => stem.to_string(),
            Indexed::Yes => format!("{stem}.{{i}}"),
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
        for bad in ["vision.block", "vision.block.x", "vision.block.01", "lm.layers.0", "lm.logits", ""] {
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
}
