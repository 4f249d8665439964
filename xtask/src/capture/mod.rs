//! `cargo xtask capture`: run the transformers reference for each selected case and record
//! its dumps.
//!
//! Each case is captured into a temporary folder beside its dump folder and swapped in only
//! when the whole case succeeded; the manifest is then updated for that case, so an
//! interrupted capture leaves every case either as it was or fully new.
//!
//! - [`listing`]: one run of `script/capture.py` and the taps it lists;
//! - [`store`]: the dumps a case keeps, compressed, with digests and noise, swapped in whole;
//! - [`recheck`]: `--check`, capture again and compare without changing anything.

mod listing;
mod recheck;
mod store;

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use contract::ComputeDtype;
use parity::manifest::{CaseRef, Reference, Weights, DUMPS_DIR};
use xshell::Shell;

use crate::cli::ManifestArg;
use crate::{harness, manifest_edit::ManifestDoc};
use listing::{capture_case, CaptureListing};
use store::{kept_dumps, record_noise, swap_in};

#[derive(clap::Args, Debug)]
pub struct Args {
    /// Capture only the cases of this model.
    #[arg(long)]
    model: Option<String>,
    /// Capture only this case.
    #[arg(long)]
    case: Option<String>,
    /// torch threads; the dumps are bit-reproducible for a fixed count.
    #[arg(long, default_value_t = 1)]
    threads: u32,
    /// Re-capture into a temporary folder and compare with the checked-in dumps by the
    /// manifest's tolerances ("did the reference move?"), without touching anything.
    #[arg(long)]
    check: bool,
    /// The checkpoint folder of the selected model when it lives outside the repository
    /// (overrides the variable the manifest names in `weights_env`).
    #[arg(long)]
    weights: Option<PathBuf>,
    /// The published revision (commit) of that checkpoint, recorded in the manifest; read
    /// from the path when it is a HuggingFace cache snapshot (`…/snapshots/<commit>/`).
    #[arg(long)]
    revision: Option<String>,
    #[command(flatten)]
    manifest: ManifestArg,
}

pub fn run(sh: &Shell, args: Args) -> Result<()> {
    let manifest_path = args.manifest.path(sh);
    let manifest = args.manifest.load(sh)?;
    let cases = manifest.select(args.model.as_deref(), args.case.as_deref()).map_err(anyhow::Error::msg)?;
    manifest.check_weights_flag(&cases, args.weights.as_deref()).map_err(anyhow::Error::msg)?;
    harness::require_uv(sh)?;
    let weights = args.weights.as_deref();
    if args.check {
        return recheck::check_against_recorded(sh, &cases, args.threads, weights);
    }
    let harness_sha = harness::harness_digest(&manifest.root)?;
    let explicit = args.model.is_some() || args.case.is_some();

    let bar = crate::cli::progress(cases.len(), "capturing");
    for &case in &cases {
        bar.set_message(case.name.to_owned());
        bar.inc(1);
        // Capturing everything skips, with a note, the cases whose checkpoint is outside the
        // repository and not named; asking for such a case by name is an error.
        if !explicit && matches!(case.weights(weights), Ok(Weights::Absent(_))) {
            let why = case.model().absent_reason(case.model_name());
            bar.suspend(|| eprintln!("skipping case {case}: {why}"));
            continue;
        }
        let recorded = record_case(sh, case, &manifest_path, &args, &harness_sha)?;
        bar.suspend(|| recorded.print());
    }
    bar.finish_and_clear();
    Ok(())
}

/// What one case's capture recorded, for the console.
struct Recorded {
    case: String,
    listing: CaptureListing,
    kept: usize,
    seconds: f64,
}

impl Recorded {
    fn print(&self) {
        let peak = self
            .listing
            .peak_rss_bytes
            .map(|b| format!(", reference peak memory {:.2} GB", b as f64 / 1e9))
            .unwrap_or_default();
        println!("captured {}: {} taps in {:.1}s{peak}", self.case, self.kept, self.seconds);
        for t in &self.listing.taps {
            let stat = t.mean_abs.map(|m| format!("mean |x| {m:.4}")).unwrap_or_default();
            println!("  {:<22} {:<14} {stat}", t.tap.to_string(), format!("{:?}", t.shape));
        }
    }
}

/// Captures one case into a temporary folder, swaps it in whole, and records its dumps, the
/// checkpoint's source, the image digests, the inputs digest and the reference versions in
/// the manifest. On any error the case's dumps and manifest entries stay as they were.
fn record_case(sh: &Shell, case: CaseRef, manifest_path: &Path, args: &Args, harness_sha: &str) -> Result<Recorded> {
    let started = std::time::Instant::now();
    let (manifest, c) = (case.manifest, case.case);
    let model_dir = checkpoint(case, args.weights.as_deref())?;
    let image_shas = image_digests(case)?;
    let video_shas = video_digests(case)?;

    let final_dir = manifest.root.join(DUMPS_DIR).join(case.name);
    let tmp_dir = manifest.root.join(DUMPS_DIR).join(format!(".tmp-{case}-{}", std::process::id()));
    if tmp_dir.exists() {
        std::fs::remove_dir_all(&tmp_dir)?;
    }
    // A bf16 case also runs the reference in f32 (into a second folder), to measure how far
    // the reference itself moves between the two dtypes.
    let f32_dir = tmp_dir.with_file_name(format!(".tmp-{case}-{}-f32", std::process::id()));
    let captured = capture_case(sh, case, c.dtype, &model_dir, &tmp_dir, args.threads)
        .and_then(|listing| Ok((kept_dumps(case, &listing, &tmp_dir)?, listing)))
        .and_then(|(mut dumps, listing)| {
            if !c.dtype.is_f32() {
                capture_case(sh, case, ComputeDtype::F32, &model_dir, &f32_dir, args.threads)?;
                record_noise(case, &mut dumps, &tmp_dir, &f32_dir)?;
            }
            Ok((dumps, listing))
        })
        .with_context(|| format!("capturing case {case}"));
    let _ = std::fs::remove_dir_all(&f32_dir);
    let (dumps, listing) = match captured {
        Ok(captured) => captured,
        Err(e) => {
            let _ = std::fs::remove_dir_all(&tmp_dir);
            return Err(e);
        }
    };
    swap_in(&tmp_dir, &final_dir)?;

    let mut doc = ManifestDoc::open(manifest_path)?;
    let model = case.model();
    let mut config_sha = model.config_sha256.clone();
    if model.is_external() {
        let sha = parity::digest::sha256_file(&model_dir.join("config.json"))?;
        let revision = args.revision.clone().or_else(|| snapshot_revision(&model_dir));
        // A generated checkpoint (the stand-in) has no published revision to record.
        if revision.is_none() && model.revision.is_none() && model.generated_by.is_none() {
            eprintln!(
                "note: {} is not a HuggingFace cache snapshot; pass --revision COMMIT to record which \
                 revision of {} it is",
                model_dir.display(),
                model.hf_repo.as_deref().unwrap_or("the checkpoint")
            );
        }
        doc.set_model_source(case.model_name(), &sha, revision.as_deref());
        config_sha = Some(sha);
    }
    for (name, sha) in &image_shas {
        doc.set_image_sha(name, sha);
    }
    for (name, sha) in &video_shas {
        doc.set_video_sha(name, sha);
    }
    let inputs = case.inputs_digest(config_sha.as_deref(), &image_shas, &video_shas, harness_sha);
    doc.set_case_capture(case.name, &inputs, &dumps);
    doc.set_reference(&Reference {
        transformers: listing.versions.transformers.clone(),
        torch: listing.versions.torch.clone(),
        numpy: listing.versions.numpy.clone(),
        pillow: listing.versions.pillow.clone(),
        python: listing.versions.python.clone(),
        av: listing.versions.av.clone().or_else(|| manifest.reference.as_ref().and_then(|r| r.av.clone())),
        threads: listing.threads,
        harness_sha256: harness_sha.to_owned(),
    });
    doc.save()?;
    Ok(Recorded { case: case.name.to_owned(), kept: dumps.len(), listing, seconds: started.elapsed().as_secs_f64() })
}

/// The folder of a case's checkpoint. Capture never regenerates a model: a checkpoint in the
/// repository must be the recorded one; one outside it must be named (`--weights` or the
/// manifest's variable) and, once captured, keep its `config.json`.
fn checkpoint(case: CaseRef, weights: Option<&Path>) -> Result<PathBuf> {
    let dir = match case.weights(weights).map_err(anyhow::Error::msg)? {
        Weights::Found(dir) => dir,
        Weights::Absent(why) => bail!("cannot capture: {why}"),
    };
    let (m, model) = (case.model(), case.model_name());
    if m.is_external() {
        neuron::weights::safetensors_files(&dir)?;
        return Ok(dir);
    }
    if m.files.is_empty() {
        bail!("model \"{model}\" has no recorded files; run `cargo xtask make-model --model {model}` first");
    }
    for (file, sha) in &m.files {
        let path = dir.join(file);
        parity::digest::verify_file(&path, sha)
            .map_err(|e| anyhow::anyhow!("{e}\n(capture uses the checkpoint as recorded and never regenerates it)"))?;
    }
    Ok(dir)
}

/// The commit of a HuggingFace cache snapshot (`…/models--org--name/snapshots/<commit>`).
fn snapshot_revision(dir: &Path) -> Option<String> {
    let dir = dir.canonicalize().ok()?;
    let parent = dir.parent()?;
    let commit = dir.file_name()?.to_str()?;
    let is_commit = commit.len() == 40 && commit.chars().all(|c| c.is_ascii_hexdigit());
    (parent.file_name()? == "snapshots" && is_commit).then(|| commit.to_owned())
}

fn image_digests(case: CaseRef) -> Result<Vec<(String, String)>> {
    case.case
        .images
        .iter()
        .zip(case.image_paths())
        .map(|(name, path)| {
            let path = case.manifest.root.join(path);
            let sha =
                parity::digest::sha256_file(&path).with_context(|| format!("reading image {}", path.display()))?;
            Ok((name.to_string(), sha))
        })
        .collect()
}

/// The digest of each video a case's messages hold: a file's, or a frame folder's listing.
fn video_digests(case: CaseRef) -> Result<Vec<(String, String)>> {
    case.video_names()
        .into_iter()
        .map(|name| {
            let path = case.manifest.root.join(case.video_path(name));
            let sha =
                parity::digest::sha256_path(&path).with_context(|| format!("reading video {}", path.display()))?;
            Ok((name.to_owned(), sha))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_huggingface_cache_snapshot_names_its_revision_and_another_folder_does_not() {
        let root = std::env::temp_dir().join(format!("xtask-snapshot-{}", std::process::id()));
        let commit = "0123456789abcdef0123456789abcdef01234567";
        let snapshot = root.join("models--Qwen--Qwen3.6-27B/snapshots").join(commit);
        std::fs::create_dir_all(&snapshot).unwrap();
        let plain = root.join("Qwen3.6-27B");
        std::fs::create_dir_all(&plain).unwrap();
        let short = root.join("snapshots/0123");
        std::fs::create_dir_all(&short).unwrap();
        let found = (snapshot_revision(&snapshot), snapshot_revision(&plain), snapshot_revision(&short));
        std::fs::remove_dir_all(&root).unwrap();
        assert_eq!(found, (Some(commit.to_owned()), None, None));
    }

    #[test]
    fn a_checkpoint_in_the_repository_must_be_the_recorded_one() {
        let text = std::fs::read_to_string(crate::cli::project_root().join("fixtures.toml")).unwrap();
        let root = crate::cli::project_root();
        let tampered = text.replacen("\"config.json\" = \"", "\"config.json\" = \"00", 1);
        assert_ne!(tampered, text, "the shipped manifest records the iteration model's config.json");
        let m = parity::manifest::Manifest::parse(&tampered, Path::new("fixtures.toml"), &root).unwrap();
        let err = format!("{:#}", checkpoint(m.case("chelsea").unwrap(), None).unwrap_err());
        assert!(err.contains("config.json") && err.contains("never regenerates"), "{err}");
        let shipped = parity::manifest::Manifest::parse(&text, Path::new("fixtures.toml"), &root).unwrap();
        assert!(checkpoint(shipped.case("chelsea").unwrap(), None).is_ok());
    }
}
