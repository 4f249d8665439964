//! `cargo xtask status`: like `dvc status`, which cases are captured and up to date, stale
//! (model, image, prompt, tap selection or harness changed since the capture), missing (never
//! captured, or a dump is gone) or failing (a recorded file no longer has its digest).

use anyhow::{bail, Result};
use parity::manifest::{CaseRef, Manifest};
use xshell::Shell;

use crate::cli::ManifestArg;
use crate::harness;

#[derive(clap::Args, Debug)]
pub struct Args {
    #[command(flatten)]
    manifest: ManifestArg,
}

/// The state of one case's dumps.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum State {
    Captured,
    /// Never captured, and its checkpoint lives outside the repository: nothing to do on a
    /// machine without it (the reason names the flag and the variable).
    External(String),
    Stale(Vec<String>),
    Missing(Vec<String>),
    Failing(Vec<String>),
}

impl State {
    /// Captured and up to date, or not capturable here.
    fn is_fine(&self) -> bool {
        matches!(self, State::Captured | State::External(_))
    }

    fn label(&self) -> &'static str {
        match self {
            State::Captured => "captured",
            State::External(_) => "not captured (external checkpoint)",
            State::Stale(_) => "stale",
            State::Missing(_) => "missing",
            State::Failing(_) => "failing",
        }
    }

    fn reasons(&self) -> &[String] {
        match self {
            State::Captured => &[],
            State::External(r) => std::slice::from_ref(r),
            State::Stale(r) | State::Missing(r) | State::Failing(r) => r,
        }
    }
}

pub fn run(sh: &Shell, args: Args) -> Result<()> {
    let manifest = args.manifest.load(sh)?;
    let harness_sha = harness::harness_digest(&manifest.root)?;
    let states = case_states(&manifest, &harness_sha);
    for (case, state) in &states {
        println!("{:<22} {}", case, state.label());
        for r in state.reasons() {
            println!("{:<22}   {r}", "");
        }
    }
    let not_ok = states.iter().filter(|(_, s)| !s.is_fine()).count();
    if not_ok > 0 {
        bail!("{not_ok} case(s) need attention: `cargo xtask capture --case NAME` re-captures a case");
    }
    let external = states.iter().filter(|(_, s)| matches!(s, State::External(_))).count();
    println!("all {} cases captured and up to date ({external} external, not captured here)", states.len() - external);
    Ok(())
}

/// The state of every case, in manifest order.
pub fn case_states(manifest: &Manifest, harness_sha: &str) -> Vec<(String, State)> {
    manifest.case_refs().map(|case| (case.name.to_owned(), case_state(case, harness_sha))).collect()
}

fn case_state(case: CaseRef, harness_sha: &str) -> State {
    let (manifest, c, model) = (case.manifest, case.case, case.model());
    if c.dumps.is_empty() && model.is_external() {
        return State::External(model.absent_reason(case.model_name()));
    }
    if c.dumps.is_empty() || c.inputs_sha256.is_none() {
        return State::Missing(vec!["never captured".into()]);
    }
    let gone: Vec<String> = c
        .dumps
        .keys()
        .map(|&key| case.dump_path_at(key))
        .filter(|p| !manifest.root.join(p).is_file())
        .map(|p| format!("{} is gone", p.display()))
        .collect();
    if !gone.is_empty() {
        return State::Missing(gone);
    }
    let failing: Vec<String> = c
        .dumps
        .iter()
        .filter_map(|(key, d)| {
            parity::digest::verify_file(&manifest.root.join(case.dump_path_at(*key)), &d.sha256).err()
        })
        .map(|e| e.to_string().lines().next().unwrap_or_default().to_owned())
        .collect();
    if !failing.is_empty() {
        return State::Failing(failing);
    }

    let mut stale = Vec::new();
    // An external checkpoint is compared only when it is named (its config.json digest).
    if let Err(e) = case.weights(None) {
        stale.push(e);
    }
    for (file, recorded) in &model.files {
        let path = manifest.root.join(model.path.as_deref().unwrap_or_default()).join(file);
        if parity::digest::sha256_file(&path).ok().as_deref() != Some(recorded.as_str()) {
            stale.push(format!("model file {} changed", path.display()));
        }
    }
    let mut image_shas = Vec::new();
    for name in &c.images {
        let image = &manifest.images[name.as_str()];
        let now = parity::digest::sha256_file(&manifest.root.join(&image.path)).unwrap_or_default();
        if image.sha256.as_deref() != Some(now.as_str()) {
            stale.push(format!("image {name} ({}) changed", image.path));
        }
        image_shas.push((name.to_string(), image.sha256.clone().unwrap_or_default()));
    }
    let mut video_shas = Vec::new();
    for name in case.video_names() {
        let video = &manifest.videos[name];
        let now = parity::digest::sha256_path(&manifest.root.join(&video.path)).unwrap_or_default();
        if video.sha256.as_deref() != Some(now.as_str()) {
            stale.push(format!("video {name} ({}) changed", video.path));
        }
        video_shas.push((name.to_string(), video.sha256.clone().unwrap_or_default()));
    }
    let recorded_harness = manifest.reference.as_ref().map(|r| r.harness_sha256.as_str());
    if recorded_harness != Some(harness_sha) {
        stale.push("the harness (script/capture.py, pyproject.toml or uv.lock) changed".into());
    }
    let recorded_harness = recorded_harness.unwrap_or_default();
    if stale.is_empty()
        && c.inputs_sha256.as_deref()
            != Some(&case.inputs_digest(model.config_sha256.as_deref(), &image_shas, &video_shas, recorded_harness))
    {
        stale.push(
            "the prompt, the images listed, the videos, the tap or row selection or the generation settings changed"
                .into(),
        );
    }
    if stale.is_empty() {
        State::Captured
    } else {
        State::Stale(stale)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    fn shipped() -> (String, std::path::PathBuf) {
        let root = crate::cli::project_root();
        (std::fs::read_to_string(root.join("fixtures.toml")).unwrap(), root)
    }

    fn states_of(text: &str, root: &Path) -> Vec<(String, State)> {
        let manifest = Manifest::parse(text, Path::new("fixtures.toml"), root).unwrap();
        case_states(&manifest, &harness::harness_digest(root).unwrap())
    }

    #[test]
    fn the_shipped_fixtures_are_captured_and_up_to_date() {
        let (text, root) = shipped();
        for (case, state) in states_of(&text, &root) {
            assert!(state.is_fine(), "case {case}: {state:?}");
        }
    }

    #[test]
    fn a_modified_prompt_makes_its_case_stale() {
        let (text, root) = shipped();
        let edited = text.replacen("prompt = \"Describe this image in one sentence.\"", "prompt = \"Describe it.\"", 1);
        assert_ne!(edited, text, "the shipped manifest has no such prompt to edit");
        let states = states_of(&edited, &root);
        let stale: Vec<&str> =
            states.iter().filter(|(_, s)| matches!(s, State::Stale(_))).map(|(c, _)| c.as_str()).collect();
        // The first such prompt is chelsea's; batch-mixed batches chelsea's request, so it is
        // stale with it. Nothing else is.
        assert_eq!(stale, ["batch-mixed", "chelsea"], "the edited case and the batch holding it: {states:?}");
    }

    #[test]
    fn a_modified_image_makes_every_case_that_uses_it_stale() {
        let (text, root) = shipped();
        // A copy of chelsea.png with one byte changed, inside the repository.
        let dir = root.join("target").join(format!("status-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let mut bytes = std::fs::read(root.join("fixtures/images/chelsea.png")).unwrap();
        let last = bytes.len() - 20;
        bytes[last] ^= 1;
        std::fs::write(dir.join("chelsea.png"), &bytes).unwrap();
        let rel = dir.strip_prefix(&root).unwrap().join("chelsea.png");
        let edited = text.replace("path = \"fixtures/images/chelsea.png\"", &format!("path = \"{}\"", rel.display()));
        let states = states_of(&edited, &root);
        std::fs::remove_dir_all(&dir).unwrap();
        let shipped = Manifest::parse(&text, Path::new("fixtures.toml"), &root).unwrap();
        assert!(
            states
                .iter()
                .filter(|(case, _)| shipped.cases[case].images.iter().any(|i| i.as_str() == "chelsea"))
                .count()
                >= 2
        );
        for (case, state) in &states {
            let uses_chelsea = shipped.cases[case].images.iter().any(|i| i.as_str() == "chelsea");
            let reasons = state.reasons().join("; ");
            assert_eq!(
                matches!(state, State::Stale(_)) && reasons.contains("image chelsea"),
                uses_chelsea,
                "case {case}: {state:?}"
            );
        }
    }
}
