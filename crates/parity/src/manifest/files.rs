//! The files a manifest names: where a case's dumps live, every file recorded with a digest,
//! and the digest of everything a case's dumps depend on.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use contract::{ComputeDtype, Tap};
use serde::Serialize;

use super::schema::{DumpKey, ImageLoader, Manifest, MessageSpec, Request, RowPick, TapPattern};
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
        Manifest::dump_path_at(case, DumpKey::whole(tap))
    }

    /// Where a case's dump lives, relative to the manifest: `<case>/<tap>.npy.gz`, or
    /// `<case>/<part>/<tap>.npy.gz` for a tap of a part.
    pub fn dump_path_at(case: &str, key: DumpKey) -> PathBuf {
        let dir = Path::new(DUMPS_DIR).join(case);
        let dir = match key.part {
            Some(part) => dir.join(part.to_string()),
            None => dir,
        };
        dir.join(format!("{}.npy.gz", key.tap))
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
        for (name, video) in &self.videos {
            if let Some(sha) = &video.sha256 {
                files.push(RecordedFile {
                    path: PathBuf::from(&video.path),
                    sha256: sha.clone(),
                    entry: format!("videos.{name}.sha256"),
                });
            }
        }
        for case in self.case_refs() {
            for (key, dump) in case.dumps_in_order() {
                files.push(RecordedFile {
                    path: case.dump_path_at(key),
                    sha256: dump.sha256.clone(),
                    entry: format!("cases.{case}.dumps.\"{key}\""),
                });
            }
        }
        files
    }
}

impl<'m> CaseRef<'m> {
    /// Where the case's dump of `tap` lives, relative to the manifest.
    pub fn dump_path(&self, tap: Tap) -> PathBuf {
        Manifest::dump_path(self.name, tap)
    }

    /// Where the case's dump of a tap of a part (or of the whole case) lives.
    pub fn dump_path_at(&self, key: DumpKey) -> PathBuf {
        Manifest::dump_path_at(self.name, key)
    }

    /// The case's image names in message order; a batch's, its members' row after row.
    pub fn image_names(&self) -> Vec<&'m str> {
        match self.request() {
            Request::Batch { .. } => self.members().iter().flat_map(|m| m.case.image_names()).collect(),
            _ => self.case.image_names(),
        }
    }

    /// The case's image files, in message order, relative to the manifest.
    pub fn image_paths(&self) -> Vec<PathBuf> {
        self.image_names().into_iter().map(|i| self.image_path(i)).collect()
    }

    /// The file of the image `name` (validated to exist), relative to the manifest.
    pub fn image_path(&self, name: &str) -> PathBuf {
        PathBuf::from(&self.manifest.images[name].path)
    }

    /// The names of the videos the case's messages hold, in order.
    pub fn video_names(&self) -> Vec<&'m str> {
        self.case.video_names()
    }

    /// The file or frame folder of the video `name` (validated to exist), relative to the
    /// manifest.
    pub fn video_path(&self, name: &str) -> PathBuf {
        PathBuf::from(&self.manifest.videos[name].path)
    }

    /// Everything the case's dumps depend on, as one SHA-256: the model files (by their
    /// recorded digests; for a checkpoint outside the repository, the digest of its
    /// `config.json`, `config_sha`), the images (by digest), the request (prompt, messages,
    /// turns, suffixes, template arguments; a batch's members by their own digests), the videos
    /// (by digest, with a frame folder's rate), the tap and
    /// row selection, the generation settings and the harness. Hashed over a canonical
    /// serialisation — compact JSON of a struct whose fields and map keys come in a fixed
    /// order — never over `Debug` output, which promises no stable format. Fields added after
    /// the first captures are left out when empty, so older digests do not move.
    pub fn inputs_digest(
        &self,
        config_sha: Option<&str>,
        image_shas: &[(String, String)],
        video_shas: &[(String, String)],
        harness_sha: &str,
    ) -> String {
        #[derive(Serialize)]
        struct DigestedInputs<'a> {
            model_files: &'a BTreeMap<String, String>,
            model_config_sha256: Option<&'a str>,
            images: &'a [(String, String)],
            prompt: &'a str,
            #[serde(skip_serializing_if = "Option::is_none")]
            messages: Option<&'a Vec<MessageSpec>>,
            #[serde(skip_serializing_if = "BTreeMap::is_empty")]
            chat_template_kwargs: &'a BTreeMap<String, serde_json::Value>,
            #[serde(skip_serializing_if = "Option::is_none")]
            turns: Option<&'a Vec<Vec<MessageSpec>>>,
            #[serde(skip_serializing_if = "Option::is_none")]
            prefix_cache: Option<&'a Vec<Vec<MessageSpec>>>,
            #[serde(skip_serializing_if = "Vec::is_empty")]
            batch: Vec<Member<'a>>,
            #[serde(skip_serializing_if = "Vec::is_empty")]
            videos: Vec<(&'a str, &'a str, Option<f64>)>,
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
        /// A batch row's request (its images' digests are among the batch's).
        #[derive(Serialize)]
        struct Member<'a> {
            case: &'a str,
            prompt: Option<&'a str>,
            messages: Option<&'a Vec<MessageSpec>>,
            chat_template_kwargs: &'a BTreeMap<String, serde_json::Value>,
            images: Vec<&'a str>,
            loader: ImageLoader,
        }
        let c = self.case;
        let inputs = DigestedInputs {
            model_files: &self.model().files,
            model_config_sha256: config_sha,
            images: image_shas,
            prompt: c.prompt.as_deref().unwrap_or_default(),
            messages: c.messages.as_ref(),
            chat_template_kwargs: &c.chat_template_kwargs,
            turns: c.turns.as_ref(),
            prefix_cache: c.prefix_cache.as_ref(),
            batch: self
                .members()
                .iter()
                .map(|m| Member {
                    case: m.name,
                    prompt: m.case.prompt.as_deref(),
                    messages: m.case.messages.as_ref(),
                    chat_template_kwargs: &m.case.chat_template_kwargs,
                    images: m.case.image_names(),
                    loader: m.case.loader,
                })
                .collect(),
            videos: video_shas
                .iter()
                .map(|(name, sha)| (name.as_str(), sha.as_str(), self.manifest.videos.get(name).and_then(|v| v.fps)))
                .collect(),
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
