//! What a case's entries mean for one tap (its tolerance, its calibration, the row kept, the
//! taps a mode checks), and where a model's checkpoint is: the one place `--weights` and
//! `weights_env` are resolved.

use std::path::{Path, PathBuf};

use contract::{ArrayDtype, Tap};

use super::schema::{Dump, DumpKey, Manifest, Request, RowPick};
use super::validate::join_keys;
use super::CaseRef;
use crate::compare::{Calibration, CompareOptions, Tolerance};
use crate::mode::{CaseKind, Mode};

/// Where a model's checkpoint is, or why it is not here.
#[derive(Debug, Clone, PartialEq)]
pub enum Weights {
    Found(PathBuf),
    /// The checkpoint lives outside the repository and nobody named it; the reason names the
    /// flag and the variable that would.
    Absent(String),
}

impl<'m> CaseRef<'m> {
    /// The tolerance for one tap: tap override, then case, then model, then global. Of several
    /// matching tap patterns the longest (most specific) wins.
    pub fn tolerance(&self, tap: Tap) -> Tolerance {
        let by_tap = self
            .case
            .tap_tolerance
            .iter()
            .filter(|(pattern, _)| pattern.matches(tap))
            .max_by_key(|(pattern, _)| pattern.specificity())
            .map(|(_, t)| *t);
        by_tap.or(self.case.tolerance).or(self.model().tolerance).unwrap_or(*self.manifest.tolerance).into()
    }

    /// The bf16 rule's multiple for one tap: the longest matching `tap_k` pattern, else
    /// `[calibration] k`.
    pub fn calibration_k(&self, tap: Tap) -> f64 {
        self.case
            .tap_k
            .iter()
            .filter(|(pattern, _)| pattern.matches(tap))
            .max_by_key(|(pattern, _)| pattern.specificity())
            .map_or(self.manifest.calibration.k, |(_, k)| *k)
    }

    /// How a tap is judged: by its tolerance in an f32 case; in a bf16 case by its recorded
    /// noise times `k` ([`Calibration`]). `top_k` asks for logit agreement (which the bf16 rule
    /// then requires). A bf16 float tap without a recorded noise is an error.
    pub fn compare_options(&self, tap: Tap, top_k: Option<usize>) -> Result<CompareOptions, String> {
        let tolerance = self.tolerance(tap);
        if self.case.dtype.is_f32() {
            return Ok(CompareOptions { tolerance, top_k, calibration: None });
        }
        let dump = self.dump(tap)?;
        let calibration = match (dump.dtype, dump.noise) {
            (ArrayDtype::I64, _) => None,
            (ArrayDtype::F32, Some(noise)) => Some(Calibration { k: self.calibration_k(tap), noise }),
            (ArrayDtype::F32, None) => {
                return Err(format!(
                    "cases.{self}.dumps.\"{tap}\" records no noise, which a bf16 case needs; run \
                     `cargo xtask capture --case {self}`"
                ))
            }
        };
        Ok(CompareOptions { tolerance, top_k, calibration })
    }

    /// The tolerance a tap's elements are held to in the end: the tolerance of an f32 case,
    /// `k × noise` of a bf16 one (for naming what a margin is measured against).
    pub fn effective_tolerance(&self, tap: Tap) -> Tolerance {
        self.compare_options(tap, None)
            .map_or(self.tolerance(tap), |o| o.calibration.map_or(o.tolerance, |c| c.tolerance()))
    }

    /// The recorded dump of a tap of the whole case, or an error naming the capture that
    /// records it.
    pub fn dump(&self, tap: Tap) -> Result<&'m Dump, String> {
        self.dump_at(DumpKey::whole(tap))
    }

    /// The recorded dump of a tap of a part (or of the whole case).
    pub fn dump_at(&self, key: DumpKey) -> Result<&'m Dump, String> {
        self.case
            .dumps
            .get(&key)
            .ok_or_else(|| format!("case {self} has no recorded {key}; run `cargo xtask capture --case {self}`"))
    }

    /// Whether the case recorded `tap` for the whole case.
    pub fn records(&self, tap: Tap) -> bool {
        self.case.dumps.contains_key(&DumpKey::whole(tap))
    }

    /// Whether the case recorded a tap of a part (or of the whole case).
    pub fn records_at(&self, key: DumpKey) -> bool {
        self.case.dumps.contains_key(&key)
    }

    /// Which row of `tap` the case keeps, if only one (the longest matching pattern wins).
    /// Taps without rows of patches or positions ([`Tap::has_rows`]) are always whole.
    pub fn row_pick(&self, tap: Tap) -> Option<RowPick> {
        if !tap.has_rows() {
            return None;
        }
        self.case
            .rows
            .iter()
            .filter(|(pattern, _)| pattern.matches(tap))
            .max_by_key(|(pattern, _)| pattern.specificity())
            .map(|(_, pick)| *pick)
    }

    /// The recorded dumps, the whole case's in pipeline order, then each part's.
    pub fn dumps_in_order(&self) -> impl Iterator<Item = (DumpKey, &'m Dump)> {
        self.case.dumps.iter().map(|(key, d)| (*key, d))
    }

    /// The recorded taps of the whole case that a run in `mode` checks, in pipeline order (see
    /// [`Mode::taps`]), and for a case checked in parts, each part's taps that a `continue` run
    /// checks.
    pub fn checks(&self, mode: Mode) -> Vec<DumpKey> {
        let kind = match self.request() {
            Request::Batch { .. } => CaseKind::Batch,
            Request::Turns { .. } | Request::PrefixCache { .. } => CaseKind::Parts,
            _ => CaseKind::Single,
        };
        let whole_case: Vec<Tap> = self.case.dumps.keys().filter(|k| k.part.is_none()).map(|k| k.tap).collect();
        let whole_rows: Vec<Tap> = whole_case.iter().copied().filter(|&t| self.row_pick(t).is_none()).collect();
        let mut keys: Vec<DumpKey> =
            mode.taps(kind, &whole_case, &whole_rows).into_iter().map(DumpKey::whole).collect();
        for part in self.case.parts() {
            let taps: Vec<Tap> = self.case.dumps.keys().filter(|k| k.part == Some(part)).map(|k| k.tap).collect();
            keys.extend(mode.part_taps(&taps).into_iter().map(|tap| DumpKey::of(part, tap)));
        }
        keys
    }

    /// The recorded taps of the whole case that a run in `mode` checks (see [`CaseRef::checks`]).
    pub fn taps_checked(&self, mode: Mode) -> Vec<Tap> {
        self.checks(mode).into_iter().filter(|k| k.part.is_none()).map(|k| k.tap).collect()
    }

    /// Where the case's checkpoint is (see [`Manifest::weights`]).
    pub fn weights(&self, flag: Option<&Path>) -> Result<Weights, String> {
        self.manifest.weights(self.model_name(), flag)
    }
}

impl Manifest {
    /// Where the checkpoint of `model` is: its folder in the repository, the folder given by
    /// `--weights` (`flag`), or the one its `weights_env` variable names. An external
    /// checkpoint nobody named is [`Weights::Absent`]; a named folder that is not a checkpoint,
    /// or whose `config.json` is not the recorded one, is an error.
    pub fn weights(&self, model: &str, flag: Option<&Path>) -> Result<Weights, String> {
        let Some(m) = self.models.get(model) else {
            return Err(format!("unknown model \"{model}\"; known models: {}", join_keys(&self.models)));
        };
        let (dir, source) = match (&m.path, &m.weights_env, flag) {
            (Some(path), _, _) => return Ok(Weights::Found(self.root.join(path))),
            (None, _, Some(dir)) => (dir.to_owned(), "--weights".to_string()),
            (None, Some(var), None) => match std::env::var_os(var) {
                Some(dir) if !dir.is_empty() => (PathBuf::from(dir), format!("${var}")),
                _ => return Ok(Weights::Absent(m.absent_reason(model))),
            },
            (None, None, None) => unreachable!("validated at load: a model has a path or a weights_env"),
        };
        let config = dir.join("config.json");
        if !config.is_file() {
            return Err(format!(
                "{source} names {} for model \"{model}\", but it has no config.json; \
                 point it at the folder that holds config.json and the *.safetensors files",
                dir.display()
            ));
        }
        if let Some(expected) = &m.config_sha256 {
            let actual =
                crate::digest::sha256_file(&config).map_err(|e| format!("reading {}: {e}", config.display()))?;
            if &actual != expected {
                return Err(format!(
                    "{}: config.json digest mismatch for model \"{model}\": fixtures.toml records \
                     config_sha256 = {expected}, the file has {actual}; point {source} at the checkpoint \
                     the dumps were captured from, or re-capture with `cargo xtask capture --model {model} --weights DIR`",
                    config.display()
                ));
            }
        }
        Ok(Weights::Found(dir))
    }

    /// `--weights DIR` names one checkpoint: it is refused when the selected cases use several
    /// external models, or none (it would be silently ignored).
    pub fn check_weights_flag(&self, cases: &[CaseRef], flag: Option<&Path>) -> Result<(), String> {
        let Some(dir) = flag else { return Ok(()) };
        let mut external: Vec<&str> =
            cases.iter().filter(|c| c.model().is_external()).map(|c| c.model_name()).collect();
        external.sort();
        external.dedup();
        match external.len() {
            1 => Ok(()),
            0 => Err(format!(
                "--weights {} given, but none of the selected cases uses a checkpoint outside the repository",
                dir.display()
            )),
            _ => Err(format!(
                "--weights {} is ambiguous: the selected cases use the external models {}; choose one with --model",
                dir.display(),
                external.join(", ")
            )),
        }
    }

    /// The cases chosen by `--model` / `--case` (all when neither is given); an unknown name is
    /// an error listing the known ones.
    pub fn select(&self, model: Option<&str>, case: Option<&str>) -> Result<Vec<CaseRef<'_>>, String> {
        if let Some(m) = model {
            if !self.models.contains_key(m) {
                return Err(format!("no model \"{m}\" in the manifest; known models: {}", join_keys(&self.models)));
            }
        }
        if let Some(c) = case {
            self.case(c).map_err(|e| e.to_string())?;
        }
        let cases: Vec<CaseRef> = self
            .case_refs()
            .filter(|c| case.is_none_or(|want| want == c.name) && model.is_none_or(|m| m == c.model_name()))
            .collect();
        if cases.is_empty() {
            return Err(format!("no case matches --model {model:?} --case {case:?}"));
        }
        Ok(cases)
    }
}
