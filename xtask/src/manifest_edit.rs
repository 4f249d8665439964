//! Writing recorded fields (digests, shapes, versions) back into `fixtures.toml` in place.
//!
//! `toml_edit` keeps the comments, order and layout that people wrote; only the recorded
//! fields change. The file is replaced atomically and only with text that still validates.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};

use parity::manifest::{Dump, DumpKey, Manifest, Reference};
use toml_edit::{value, Array, DocumentMut, InlineTable, Item, Table};

pub struct ManifestDoc {
    path: PathBuf,
    doc: DocumentMut,
}

impl ManifestDoc {
    pub fn open(path: &Path) -> Result<ManifestDoc> {
        let text = std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
        let doc = text.parse::<DocumentMut>().with_context(|| format!("parsing {}", path.display()))?;
        Ok(ManifestDoc { path: path.to_owned(), doc })
    }

    /// Records the digest of every file of a checkpoint, one file per line.
    pub fn set_model_files(&mut self, model: &str, files: &BTreeMap<String, String>) {
        let model_table = self.doc["models"][model].as_table_mut().expect("models are tables (validated)");
        let table = fresh_subtable(model_table, "files");
        for (file, sha) in files {
            table.insert(file, value(sha));
        }
    }

    /// Records which published checkpoint an external model's dumps came from.
    pub fn set_model_source(&mut self, model: &str, config_sha256: &str, revision: Option<&str>) {
        self.doc["models"][model]["config_sha256"] = value(config_sha256);
        if let Some(revision) = revision {
            self.doc["models"][model]["revision"] = value(revision);
        }
    }

    pub fn set_image_sha(&mut self, image: &str, sha: &str) {
        self.doc["images"][image]["sha256"] = value(sha);
    }

    pub fn set_video_sha(&mut self, video: &str, sha: &str) {
        self.doc["videos"][video]["sha256"] = value(sha);
    }

    pub fn set_reference(&mut self, r: &Reference) {
        let mut t = Table::new();
        t.decor_mut().set_prefix("\n# The reference the dumps came from (written by `cargo xtask capture`).\n");
        t["transformers"] = value(&r.transformers);
        t["torch"] = value(&r.torch);
        t["numpy"] = value(&r.numpy);
        t["pillow"] = value(&r.pillow);
        t["python"] = value(&r.python);
        if let Some(av) = &r.av {
            t["av"] = value(av);
        }
        t["threads"] = value(i64::from(r.threads));
        t["harness_sha256"] = value(&r.harness_sha256);
        match self.doc.get_mut("reference").and_then(Item::as_table_mut) {
            Some(existing) => {
                for (k, v) in t.iter() {
                    existing[k] = v.clone();
                }
            }
            // A new [reference] goes last: the manifest opens with what people write.
            None => {
                self.doc.insert("reference", Item::Table(t));
            }
        }
    }

    /// Replaces a case's recorded dumps (in the given order) and its inputs digest.
    pub fn set_case_capture(&mut self, case: &str, inputs_sha256: &str, dumps: &[(DumpKey, Dump)]) {
        let case_table = self.doc["cases"][case].as_table_mut().expect("cases are tables (validated)");
        case_table["inputs_sha256"] = value(inputs_sha256);
        let table = fresh_subtable(case_table, "dumps");
        for (tap, dump) in dumps {
            let mut entry = InlineTable::new();
            entry.insert("sha256", dump.sha256.as_str().into());
            entry.insert("shape", Array::from_iter(dump.shape.iter().map(|&d| d as i64)).into());
            entry.insert("dtype", dump.dtype.to_string().into());
            if let Some(noise) = &dump.noise {
                // Four significant digits: the figure sets a bound, its last bits do not matter.
                let round = |x: f64| format!("{x:.3e}").parse::<f64>().expect("a formatted float parses");
                let mut n = InlineTable::new();
                n.insert("max_abs", round(noise.max_abs).into());
                n.insert("rms", round(noise.rms).into());
                n.insert("cosine", ((noise.cosine * 1e9).round() / 1e9).into());
                entry.insert("noise", n.into());
            }
            table.insert(&tap.to_string(), Item::Value(entry.into()));
        }
    }

    /// Validates the edited text as a manifest, then replaces the file atomically.
    pub fn save(&self) -> Result<()> {
        let text = self.doc.to_string();
        let root = self.path.parent().unwrap_or(Path::new("."));
        Manifest::parse(&text, &self.path, root).context("the updated manifest would not validate")?;
        let tmp = self.path.with_extension("toml.tmp");
        std::fs::write(&tmp, &text).with_context(|| format!("writing {}", tmp.display()))?;
        std::fs::rename(&tmp, &self.path).with_context(|| format!("replacing {}", self.path.display()))?;
        Ok(())
    }
}

/// `parent.key` emptied (or created) as a `[parent.key]` table that stays where it was, or
/// directly after its parent when new.
fn fresh_subtable<'a>(parent: &'a mut Table, key: &str) -> &'a mut Table {
    let position = parent.position();
    let mut table = match parent.remove(key) {
        Some(Item::Table(t)) => t,
        _ => {
            let mut t = Table::new();
            if let Some(p) = position {
                t.set_position(p);
            }
            t
        }
    };
    table.clear();
    parent.insert(key, Item::Table(table));
    parent[key].as_table_mut().expect("just inserted a table")
}
