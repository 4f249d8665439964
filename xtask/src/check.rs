//! `cargo xtask check`: every file the manifest records exists and has its digest, every
//! dump has its recorded shape and dtype, every case was captured, nothing under
//! `fixtures/dumps/` is left that no entry references, and the recorded files fit
//! [`FIXTURES_BUDGET`].

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

/// Bytes the files a manifest records may take together: a clone of the repository stays
/// small, and a new case makes room for itself instead of growing `fixtures/` unnoticed.
pub const FIXTURES_BUDGET: u64 = 25_000_000;

fn problems(manifest: &Manifest) -> Vec<String> {
    let mut problems = Vec::new();
    if let Some(over) = over_budget(manifest, FIXTURES_BUDGET) {
        problems.push(over);
    }
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

/// Why the recorded files exceed `budget` bytes, naming the largest cases; `None` within it.
fn over_budget(manifest: &Manifest, budget: u64) -> Option<String> {
    let size = |path: &Path| std::fs::metadata(manifest.root.join(path)).map_or(0, |m| m.len());
    let total: u64 = manifest.recorded_files().iter().map(|f| size(&f.path)).sum();
    if total <= budget {
        return None;
    }
    let mut cases: Vec<(u64, String)> = manifest
        .case_refs()
        .map(|case| {
            let bytes = case.dumps_in_order().map(|(tap, _)| size(&case.dump_path_at(tap))).sum();
            (bytes, case.to_string())
        })
        .collect();
    cases.sort_by(|a, b| b.cmp(a));
    let largest: Vec<String> = cases.iter().take(5).map(|(b, c)| format!("{c} {:.2} MB", *b as f64 / 1e6)).collect();
    Some(format!(
        "the recorded files take {:.2} MB, over the budget of {:.2} MB: narrow a case's `taps` or `rows` \
         and re-capture it (largest cases: {})",
        total as f64 / 1e6,
        budget as f64 / 1e6,
        largest.join(", ")
    ))
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

#[cfg(test)]
mod tests {
    use super::*;

    fn shipped() -> Manifest {
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("the workspace root");
        Manifest::load(&root.join("fixtures.toml")).expect("the shipped manifest loads")
    }

    #[test]
    fn the_shipped_fixtures_fit_their_budget() {
        let manifest = shipped();
        assert_eq!(over_budget(&manifest, FIXTURES_BUDGET), None);
    }

    #[test]
    fn fixtures_over_the_budget_are_a_problem_naming_the_total_and_the_largest_cases() {
        let manifest = shipped();
        let message = over_budget(&manifest, 1_000_000).expect("the shipped fixtures exceed 1 MB");
        assert!(message.contains("over the budget of 1.00 MB"), "{message}");
        assert!(message.contains("largest cases: "), "{message}");
    }
}
