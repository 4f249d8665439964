//! `fixtures.toml`: what is captured (models, images, cases), how closely it must match
//! (tolerances) and what was recorded (digests, shapes, dtypes, library versions).
//!
//! People edit the intent; `cargo xtask capture` and `cargo xtask make-model` write the
//! recorded fields back in place with `toml_edit`, so comments and order survive.
//!
//! - [`schema`]: the fields as serde reads them; tap names and patterns are parsed there;
//! - [`validate`]: the checks across entries, each error naming its line;
//! - [`resolve`]: what a case's entries mean for one tap (tolerance, calibration, kept row,
//!   the taps a mode checks) and where a checkpoint is (`--weights`, `weights_env`);
//! - [`files`]: where dumps live, the files the manifest records, the inputs digest.
//!
//! A case is handled through a [`CaseRef`]: the manifest, the case's name and its entry,
//! found once.

mod files;
mod resolve;
mod schema;
mod validate;

use std::fmt;
use std::path::{Path, PathBuf};

pub use files::{RecordedFile, DUMPS_DIR};
pub use resolve::Weights;
pub use schema::{
    At, CalibrationSpec, Case, ContentSpec, Dump, DumpKey, Image, ImageLoader, ItemSpec, Manifest, MessageSpec,
    ModelEntry, Part, Reference, Request, RoleSpec, RowPick, TapPattern, ToleranceSpec, Video,
};

/// A manifest that cannot be used, with the file and the entry at fault.
#[derive(Debug)]
pub struct ManifestError {
    pub file: PathBuf,
    pub message: String,
}

impl fmt::Display for ManifestError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.file.display(), self.message)
    }
}

impl std::error::Error for ManifestError {}

impl Manifest {
    /// Reads and validates a manifest; every path in it is taken relative to its folder.
    pub fn load(path: &Path) -> Result<Manifest, ManifestError> {
        let text = std::fs::read_to_string(path).map_err(|e| ManifestError {
            file: path.to_owned(),
            message: format!("cannot read the manifest ({e}); pass another one with --manifest PATH"),
        })?;
        let root = path.parent().map(Path::to_owned).unwrap_or_default();
        Manifest::parse(&text, path, &root)
    }

    /// Parses manifest text; `file` only labels errors.
    pub fn parse(text: &str, file: &Path, root: &Path) -> Result<Manifest, ManifestError> {
        let err = |message: String| ManifestError { file: file.to_owned(), message };
        let mut manifest: Manifest = toml::from_str(text).map_err(|e| err(e.to_string()))?;
        manifest.root = root.to_owned();
        manifest.validate().map_err(|e| err(e.with_line(text)))?;
        Ok(manifest)
    }

    /// The case `name`, or an error naming the known ones.
    pub fn case<'m>(&'m self, name: &str) -> Result<CaseRef<'m>, UnknownCase> {
        match self.cases.get_key_value(name) {
            Some((name, case)) => Ok(CaseRef { manifest: self, name, case }),
            None => Err(UnknownCase { name: name.to_owned(), known: self.cases.keys().cloned().collect() }),
        }
    }

    /// Every case, in manifest order.
    pub fn case_refs(&self) -> impl Iterator<Item = CaseRef<'_>> {
        self.cases.iter().map(move |(name, case)| CaseRef { manifest: self, name, case })
    }
}

/// A case the manifest does not have.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UnknownCase {
    pub name: String,
    pub known: Vec<String>,
}

impl fmt::Display for UnknownCase {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "no case \"{}\" in the manifest; known cases: {}", self.name, self.known.join(", "))
    }
}

impl std::error::Error for UnknownCase {}

/// One case of a manifest: where everything about a case is asked (its tolerances, its rows,
/// its dumps, its model), found once by name.
#[derive(Debug, Clone, Copy)]
pub struct CaseRef<'m> {
    pub manifest: &'m Manifest,
    pub name: &'m str,
    pub case: &'m Case,
}

impl<'m> CaseRef<'m> {
    /// The case's model entry (validated to exist when the manifest loaded).
    pub fn model(&self) -> &'m ModelEntry {
        &self.manifest.models[self.case.model.as_str()]
    }

    /// The name of the case's model.
    pub fn model_name(&self) -> &'m str {
        self.case.model.as_str()
    }

    /// The case's request (validated to be exactly one when the manifest loaded).
    pub fn request(&self) -> Request<'m> {
        self.case.request().expect("validated at load: a case has one request")
    }

    /// The cases of a batch, in row order; none for any other case.
    pub fn members(&self) -> Vec<CaseRef<'m>> {
        match self.request() {
            Request::Batch { members } => members
                .iter()
                .map(|m| self.manifest.case(m.as_str()).expect("validated at load: batch members exist"))
                .collect(),
            _ => Vec::new(),
        }
    }
}

impl fmt::Display for CaseRef<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name)
    }
}

#[cfg(test)]
mod tests;
