//! The files a manifest names: where a case's dumps live, every file recorded with a digest,
//! and the digest of everything a case's dumps depend on.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use contract::{ComputeDtype, Tap};
use serde::Serialize;

use super::schema::{ImageLoader, Manifest, RowPick, TapPattern};
use super::CaseRef;

/// Folder (relative to the manifest) that holds `<case>/<tap>.npy.gz`.
pub const DUMPS_DIR: &str = "fixtures/dumps";

/// A file the manifest records with a digest.
#[derive(Debug, Clone, PartialEq)]
pub struct RecordedFile {
    /// Relative to the manifest's folder.
    pub path: PathBuf,
    pub sha256: String,
    /// Where in the manifest the digest sits, e.g. `cases.chelsea.dumps."lm.norm"`.
    pub entry: String,
}

impl Manifest {
    /// Where a case's dump of `tap` lives, relative to the manifest.
    pub fn dump_path(case: &str, tap: Tap) -> PathBuf {
        Path::new(DUMPS_DIR).join(case).join(format!("{tap}.npy.gz"))
    }

    /// Every file the manifest records with a digest: model files, images, dumps.
    pub fn recorded_files(&self) -> Vec<RecordedFile> {
        let mut files = Vec::new();
        for (name, model) in &self.models {
            let Some(dir) = &model.path else { continue };
            for (file, sha) in &model.files {
                files.push(RecordedFile {
                    path: Path::new(dir).join(file),
                    sha256: sha.clone(),
                    entry: format!("models.\"{name}\".files.\"{file}\""),
                });
            }
        }
        for (name, image) in &self.images {
            if let Some(sha) = &image.sha256 {
                files.push(RecordedFile {
                    path: PathBuf::from(&image.path),
                    sha256: sha.clone(),
                    entry: format!("images.{name}.sha256"),
                });
            }
        }
        for case in self.case_refs() {
            for (tap, dump) in case.dumps_in_order() {
                files.push(RecordedFile {
                    path: case.dump_path(tap),
                    sha256: dump.sha256.clone(),
                    entry: format!("cases.{case}.dumps.\"{tap}\""),
                });
            }
        }
        files
    }
}

impl CaseRef<'_> {
    /// Where the case's dump of `tap` lives, relative to the manifest.
    pub fn dump_path(&self, tap: Tap) -> PathBuf {
        Manifest::dump_path(self.name, tap)
    }

    /// The case's image files, in message order, relative to the manifest.
    pub fn image_paths(&self) -> Vec<PathBuf> {
        self.case.images.iter().map(|i| PathBuf::from(&self.manifest.images[i.as_str()].path)).collect()
    }

    /// Everything the case's dumps depend on, as one SHA-256: the model files (by their
    /// recorded digests; for a checkpoint outside the repository, the digest of its
    /// `config.json`, `config_sha`), the images (by digest), the prompt, the tap and row
    /// selection, the generation settings and the harness. Hashed over a canonical
    /// serialisation — compact JSON of a struct whose fields and map keys come in a fixed
    /// order — never over `Debug` output, which promises no stable format.
    pub fn inputs_digest(
        &self,
        config_sha: Option<&str>,
        image_shas: &[(String, String)],
        harness_sha: &str,
    ) -> String {
        #[derive(Serialize)]
        struct DigestedInputs<'a> {
            model_files: &'a BTreeMap<String, String>,
            model_config_sha256: Option<&'a str>,
            images: &'a [(String, String)],
            prompt: &'a str,
            // Left out when it is the default, so the digests of the cases recorded before
            // the field existed do not move.
            #[serde(skip_serializing_if = "ImageLoader::is_processor")]
            loader: ImageLoader,
            #[serde(skip_serializing_if = "ComputeDtype::is_f32")]
            dtype: ComputeDtype,
            taps: Option<&'a Vec<TapPattern>>,
            rows: &'a BTreeMap<TapPattern, RowPick>,
            generate: Option<usize>,
            gen_top_k: Option<usize>,
            harness_sha256: &'a str,
        }
        let c = self.case;
        let inputs = DigestedInputs {
            model_files: &self.model().files,
            model_config_sha256: config_sha,
            images: image_shas,
            prompt: &c.prompt,
            loader: c.loader,
            dtype: c.dtype,
            taps: c.taps.as_ref(),
            rows: &c.rows,
            generate: c.generate,
            gen_top_k: c.gen_top_k,
            harness_sha256: harness_sha,
        };
        let json = serde_json::to_vec(&inputs).expect("plain data serialises");
        crate::digest::sha256_bytes(&json)
    }
}
