//! The checks a manifest must pass beyond its schema: references between entries (a case's
//! model and images exist), paths that stay inside the repository, finite tolerances, settings
//! that only make sense together. Each error names the entry, and its line through the span
//! the entry was read from ([`super::At`]).

use std::collections::BTreeMap;
use std::ops::Range;
use std::path::{Component, Path};

use contract::ComputeDtype;

use super::schema::{At, Manifest, ToleranceSpec};

/// A check that failed: what, and where in the text.
pub(super) struct Invalid {
    message: String,
    span: Option<Range<usize>>,
}

impl Invalid {
    fn at<T>(entry: &At<T>, message: String) -> Invalid {
        let span = entry.span();
        Invalid { message, span: (span != (0..0)).then_some(span) }
    }

    /// The message, prefixed by the line of the entry when it was read from `text`.
    pub(super) fn with_line(self, text: &str) -> String {
        match self.span {
            Some(span) => {
                let line = text[..span.start.min(text.len())].matches('\n').count() + 1;
                format!("line {line}: {}", self.message)
            }
            None => self.message,
        }
    }
}

impl Manifest {
    pub(super) fn validate(&self) -> Result<(), Invalid> {
        check_tolerance("tolerance", &self.tolerance).map_err(|m| Invalid::at(&self.tolerance, m))?;
        if !(self.calibration.k.is_finite() && self.calibration.k > 0.0) {
            let message =
                format!("calibration.k = {}: a positive multiple of the reference's noise", self.calibration.k);
            return Err(Invalid::at(&self.calibration, message));
        }
        for (name, model) in &self.models {
            self.validate_model(name, model).map_err(|message| Invalid::at(model, message))?;
        }
        for (name, image) in &self.images {
            check_relative_path(&format!("images.{name}.path"), &image.path).map_err(|m| Invalid::at(image, m))?;
        }
        for (name, case) in &self.cases {
            self.validate_case(name, case)?;
        }
        Ok(())
    }

    fn validate_model(&self, name: &str, model: &super::ModelEntry) -> Result<(), String> {
        match (&model.path, &model.weights_env) {
            (Some(path), None) => check_relative_path(&format!("models.\"{name}\".path"), path)?,
            (None, Some(var)) => {
                if var.is_empty() || !var.chars().all(|c| c.is_ascii_uppercase() || c.is_ascii_digit() || c == '_') {
                    return Err(format!(
                        "models.\"{name}\".weights_env = \"{var}\": an environment variable name (A-Z, 0-9, _)"
                    ));
                }
                if !model.files.is_empty() {
                    return Err(format!(
                        "models.\"{name}\".files: a checkpoint outside the repository has no recorded files; \
                         its config.json digest goes in config_sha256"
                    ));
                }
            }
            _ => {
                return Err(format!(
                    "models.\"{name}\": give exactly one of `path` (a checkpoint in the repository) or \
                     `weights_env` (the variable naming a folder outside it)"
                ))
            }
        }
        if let Some(t) = &model.tolerance {
            check_tolerance(&format!("models.\"{name}\".tolerance"), t)?;
        }
        for file in model.files.keys() {
            check_relative_path(&format!("models.\"{name}\".files.\"{file}\""), file)?;
        }
        Ok(())
    }

    fn validate_case(&self, name: &str, case: &At<super::Case>) -> Result<(), Invalid> {
        let at = format!("cases.{name}");
        let whole = |message: String| Invalid::at(case, message);
        if name.is_empty() || !name.chars().all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c)) {
            return Err(whole(format!("{at}: a case name becomes a folder name; use letters, digits, '-', '_', '.'")));
        }
        if !self.models.contains_key(case.model.as_str()) {
            return Err(Invalid::at(
                &case.model,
                format!("{at}.model: unknown model \"{}\"; known models: {}", *case.model, join_keys(&self.models)),
            ));
        }
        for image in &case.images {
            if !self.images.contains_key(image.as_str()) {
                return Err(Invalid::at(
                    image,
                    format!("{at}.images: unknown image \"{}\"; known images: {}", **image, join_keys(&self.images)),
                ));
            }
        }
        if let Some(t) = &case.tolerance {
            check_tolerance(&format!("{at}.tolerance"), t).map_err(whole)?;
        }
        for (pattern, t) in &case.tap_tolerance {
            check_tolerance(&format!("{at}.tap_tolerance.\"{pattern}\""), t).map_err(whole)?;
        }
        for (pattern, k) in &case.tap_k {
            if case.dtype == ComputeDtype::F32 {
                return Err(whole(format!(
                    "{at}.tap_k: only a bf16 case is calibrated; an f32 case uses tap_tolerance"
                )));
            }
            if !(k.is_finite() && *k > 0.0) {
                return Err(whole(format!(
                    "{at}.tap_k.\"{pattern}\" = {k}: a positive multiple of the reference's noise"
                )));
            }
        }
        match (case.generate, case.gen_top_k) {
            (Some(0), _) => Err(whole(format!("{at}.generate = 0: generate at least one token, or omit it"))),
            (None, Some(_)) => Err(whole(format!("{at}.gen_top_k: only a case that sets `generate` has steps"))),
            (_, Some(0)) => Err(whole(format!("{at}.gen_top_k = 0: keep at least one id per step"))),
            _ => Ok(()),
        }?;
        for (tap, dump) in &case.dumps {
            if tap.dtype() != dump.dtype {
                return Err(whole(format!(
                    "{at}.dumps.\"{tap}\": dtype {} but the contract says {}",
                    dump.dtype,
                    tap.dtype()
                )));
            }
        }
        Ok(())
    }
}

pub(super) fn join_keys<V>(map: &BTreeMap<String, V>) -> String {
    if map.is_empty() {
        return "(none)".into();
    }
    map.keys().map(|k| format!("\"{k}\"")).collect::<Vec<_>>().join(", ")
}

fn check_tolerance(at: &str, t: &ToleranceSpec) -> Result<(), String> {
    for (name, v) in [("atol", t.atol), ("rtol", t.rtol)] {
        if !v.is_finite() || v < 0.0 {
            return Err(format!("{at}.{name} = {v}: a tolerance must be a finite number >= 0"));
        }
    }
    Ok(())
}

/// Paths in the manifest must stay inside the repository: relative, without `..`.
fn check_relative_path(at: &str, path: &str) -> Result<(), String> {
    let p = Path::new(path);
    let escapes = p.is_absolute() || p.components().any(|c| !matches!(c, Component::Normal(_) | Component::CurDir));
    if path.is_empty() || escapes {
        return Err(format!(
            "{at} = \"{path}\": paths must be relative to the manifest and stay inside it (no '..', not absolute)"
        ));
    }
    Ok(())
}
