//! `cargo xtask check`: every file the manifest records exists and has its digest, every
//! dump has its recorded shape and dtype, every case was captured, and nothing under
//! `fixtures/dumps/` is left that no entry references.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use anyhow::{bail, Result};
use parity::manifest::{Manifest, DUMPS_DIR};
use xshell::Shell;

use crate::cli::ManifestArg;

#[derive(clap::Args, Debug)]
pub struct Args {
    #[command(flatten)]
    manifest: ManifestArg,
}

pub fn run(sh: &Shell, args: Args) -> Result<()> {
    let manifest = args.manifest.load(sh)?;
    for case in manifest.case_refs() {
        let model = case.model();
        if model.is_external() && case.case.dumps.is_empty() {
            println!(
                "note: cases.{case} is not captured yet; its checkpoint lives outside the repository ({})",
                model.absent_reason(case.model_name())
            );
        }
    }
    let problems = problems(&manifest);
    let files = manifest.recorded_files().len();
    for p in &problems {
        eprintln!("FAIL {p}\n");
    }
    if !problems.is_empty() {
        bail!("{} problem(s) in {} recorded files of {}", problems.len(), files, args.manifest.manifest.display());
    }
    println!("ok: {files} recorded files match their digests, shapes and dtypes; no stray dumps");
    Ok(())
}

fn problems(manifest: &Manifest) -> Vec<String> {
    let mut problems = Vec::new();
    for (name, model) in &manifest.models {
        if model.files.is_empty() && !model.is_external() {
            problems.push(format!("models.\"{name}\": no files recorded; run `cargo xtask make-model --model {name}`"));
        }
    }
    for case in manifest.case_refs() {
        if case.case.dumps.is_empty() && !case.model().is_external() {
            problems.push(format!("cases.{case}: never captured; run `cargo xtask capture --case {case}`"));
        }
    }
    for file in manifest.recorded_files() {
        if let Err(e) = parity::digest::verify_file(&manifest.root.join(&file.path), &file.sha256) {
            problems.push(format!("{} ({})", e, file.entry));
        }
    }
    for case in manifest.case_refs() {
        for (tap, dump) in case.dumps_in_order() {
            let path = manifest.root.join(case.dump_path_at(tap));
            // A digest mismatch is already reported; only a readable file's header is checked.
            if let Ok(array) = parity::npy::read_npy(&path) {
                if array.shape != dump.shape || array.dtype() != dump.dtype {
                    problems.push(format!(
                        "{}: holds {} {:?} but cases.{case}.dumps.\"{tap}\" records {} {:?}",
                        path.display(),
                        array.dtype(),
                        array.shape,
                        dump.dtype,
                        dump.shape
                    ));
                }
            }
        }
    }
    let referenced: BTreeSet<PathBuf> = manifest.recorded_files().into_iter().map(|f| f.path).collect();
    for stray in files_under(&manifest.root, Path::new(DUMPS_DIR)) {
        if !referenced.contains(&stray) {
            problems.push(format!(
                "{}: no manifest entry references this dump; delete it (`git rm {}`) or restore its case",
                stray.display(),
                stray.display()
            ));
        }
    }
    problems
}

/// Files below `root/rel`, as paths relative to `root`, sorted.
fn files_under(root: &Path, rel: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let Ok(entries) = std::fs::read_dir(root.join(rel)) else { return out };
    for entry in entries.flatten() {
        let rel_child = rel.join(entry.file_name());
        match entry.file_type() {
            Ok(t) if t.is_dir() => out.extend(files_under(root, &rel_child)),
            Ok(_) => out.push(rel_child),
            Err(_) => {}
        }
    }
    out.sort();
    out
}
