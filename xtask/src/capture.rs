//! `cargo xtask capture`: run the transformers reference for each selected case and record
//! its dumps.
//!
//! Each case is captured into a temporary folder beside its dump folder and swapped in only
//! when the whole case succeeded; the manifest is then updated for that case, so an
//! interrupted capture leaves every case either as it was or fully new.

use std::path::{Path, PathBuf};

use anyhow::{bail, ensure, Context, Result};
use parity::array::{Array, DType};
use parity::compare::{compare, CompareOptions};
use parity::manifest::{tap_matches, CaseDtype, Dump, Manifest, Reference, Weights, DUMPS_DIR};
use parity::report::{self, Row, Status};
use parity::taps::Tap;
use serde::Deserialize;
use xshell::Shell;

use crate::{harness, manifest_edit::ManifestDoc, ManifestArg};

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

/// `capture.json`, written by `script/capture.py` next to the dumps.
#[derive(Deserialize)]
struct CaptureListing {
    taps: Vec<CapturedTap>,
    versions: Versions,
    threads: u32,
    /// Peak resident memory of the Python process.
    #[serde(default)]
    peak_rss_bytes: Option<u64>,
}

#[derive(Deserialize)]
struct CapturedTap {
    tap: String,
    shape: Vec<usize>,
    dtype: DType,
    #[serde(default)]
    mean_abs: Option<f64>,
}

#[derive(Deserialize)]
struct Versions {
    transformers: String,
    torch: String,
    numpy: String,
    pillow: String,
    python: String,
}

pub fn run(sh: &Shell, args: Args) -> Result<()> {
    let manifest_path = args.manifest.path(sh);
    let manifest = args.manifest.load(sh)?;
    let cases = crate::select_cases(&manifest, args.model.as_deref(), args.case.as_deref())?;
    crate::check_weights_flag(&manifest, &cases, args.weights.as_deref())?;
    harness::require_uv(sh)?;
    let weights = args.weights.as_deref();
    if args.check {
        return check_against_recorded(sh, &manifest, &cases, args.threads, weights);
    }
    let harness_sha = harness::harness_digest(&manifest.root)?;
    let explicit = args.model.is_some() || args.case.is_some();

    let bar = crate::progress(cases.len(), "capturing");
    for case in &cases {
        bar.set_message(case.clone());
        bar.inc(1);
        let model = &manifest.cases[case].model;
        // Capturing everything skips, with a note, the cases whose checkpoint is outside the
        // repository and not named; asking for such a case by name is an error.
        if !explicit && matches!(manifest.weights(model, weights), Ok(Weights::Absent(_))) {
            let why = manifest.models[model].absent_reason(model);
            bar.suspend(|| eprintln!("skipping case {case}: {why}"));
            continue;
        }
        let recorded = record_case(sh, &manifest, &manifest_path, case, &args, &harness_sha)?;
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
            println!("  {:<22} {:<14} {stat}", t.tap, format!("{:?}", t.shape));
        }
    }
}

/// Captures one case into a temporary folder, swaps it in whole, and records its dumps, the
/// checkpoint's source, the image digests, the inputs digest and the reference versions in
/// the manifest. On any error the case's dumps and manifest entries stay as they were.
fn record_case(
    sh: &Shell,
    manifest: &Manifest,
    manifest_path: &Path,
    case: &str,
    args: &Args,
    harness_sha: &str,
) -> Result<Recorded> {
    let started = std::time::Instant::now();
    let c = &manifest.cases[case];
    let model_dir = checkpoint(manifest, &c.model, args.weights.as_deref())?;
    let image_shas = image_digests(manifest, case)?;

    let final_dir = manifest.root.join(DUMPS_DIR).join(case);
    let tmp_dir = manifest.root.join(DUMPS_DIR).join(format!(".tmp-{case}-{}", std::process::id()));
    if tmp_dir.exists() {
        std::fs::remove_dir_all(&tmp_dir)?;
    }
    // A bf16 case also runs the reference in f32 (into a second folder), to measure how far
    // the reference itself moves between the two dtypes.
    let f32_dir = tmp_dir.with_file_name(format!(".tmp-{case}-{}-f32", std::process::id()));
    let captured = capture_case(sh, manifest, case, c.dtype, &model_dir, &tmp_dir, args.threads)
        .and_then(|listing| Ok((kept_dumps(manifest, case, &listing, &tmp_dir)?, listing)))
        .and_then(|(mut dumps, listing)| {
            if !c.dtype.is_f32() {
                capture_case(sh, manifest, case, CaseDtype::F32, &model_dir, &f32_dir, args.threads)?;
                record_noise(manifest, case, &mut dumps, &tmp_dir, &f32_dir)?;
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
    let model = &manifest.models[&c.model];
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
        doc.set_model_source(&c.model, &sha, revision.as_deref());
        config_sha = Some(sha);
    }
    for (name, sha) in &image_shas {
        doc.set_image_sha(name, sha);
    }
    let inputs = manifest.inputs_digest(case, config_sha.as_deref(), &image_shas, harness_sha);
    doc.set_case_capture(case, &inputs, &dumps);
    doc.set_reference(&Reference {
        transformers: listing.versions.transformers.clone(),
        torch: listing.versions.torch.clone(),
        numpy: listing.versions.numpy.clone(),
        pillow: listing.versions.pillow.clone(),
        python: listing.versions.python.clone(),
        threads: listing.threads,
        harness_sha256: harness_sha.to_owned(),
    });
    doc.save()?;
    Ok(Recorded { case: case.to_owned(), kept: dumps.len(), listing, seconds: started.elapsed().as_secs_f64() })
}

/// The dumps a case keeps of what the harness wrote into `dir` (its `taps` selection, cut to
/// its `rows`), with their digests; the others and `capture.json` are deleted.
fn kept_dumps(manifest: &Manifest, case: &str, listing: &CaptureListing, dir: &Path) -> Result<Vec<(String, Dump)>> {
    let c = &manifest.cases[case];
    // capture.json served its purpose; the manifest is the record.
    std::fs::remove_file(dir.join("capture.json"))?;
    let kept = |tap: &str| c.taps.as_ref().is_none_or(|patterns| patterns.iter().any(|p| tap_matches(p, tap)));
    let mut dumps = Vec::new();
    for t in &listing.taps {
        let path = dir.join(format!("{}.npy", t.tap));
        if !kept(&t.tap) {
            std::fs::remove_file(&path)?;
            continue;
        }
        let (stored, shape) = store(manifest, case, &t.tap, dir)?;
        let sha256 = parity::digest::sha256_file(&stored)?;
        dumps.push((t.tap.clone(), Dump { sha256, shape, dtype: t.dtype, noise: None }));
    }
    Ok(dumps)
}

/// Records, for each float dump of a bf16 case, the reference's own deviation between its
/// bf16 run (the stored dumps in `dir`) and its f32 run (the harness's files in `f32_dir`),
/// over the rows the case keeps.
fn record_noise(
    manifest: &Manifest,
    case: &str,
    dumps: &mut [(String, Dump)],
    dir: &Path,
    f32_dir: &Path,
) -> Result<()> {
    for (tap, dump) in dumps.iter_mut().filter(|(_, d)| d.dtype == DType::F32) {
        let stored = dir.join(Manifest::dump_path(case, tap).file_name().expect("a dump path names a file"));
        let bf16 = parity::npy::read_npy(&stored)?;
        let f32 = cut_rows(manifest, case, tap, parity::npy::read_npy(&f32_dir.join(format!("{tap}.npy")))?)?;
        let Some(noise) = parity::compare::noise(&f32, &bf16) else {
            bail!(
                "{tap}: the bf16 run gave {:?} and the f32 run {:?} (or a non-finite value), so the reference's \
                 noise cannot be measured; for gen.* taps this means the two runs generated different tokens \
                 — fewer `generate` steps keep them comparable",
                bf16.shape,
                f32.shape
            );
        };
        dump.noise = Some(noise);
    }
    Ok(())
}

/// `--check`: capture into a temporary folder outside the repository and compare each
/// recorded dump with the new one; bytes identical, within tolerance, or moved.
fn check_against_recorded(
    sh: &Shell,
    manifest: &Manifest,
    cases: &[String],
    threads: u32,
    weights: Option<&Path>,
) -> Result<()> {
    let scratch = std::env::temp_dir().join(format!("neuron-capture-check-{}", std::process::id()));
    let mut rows = Vec::new();
    let mut identical = 0;
    for case in cases {
        let model = &manifest.cases[case].model;
        if let Ok(Weights::Absent(why)) = manifest.weights(model, weights) {
            rows.extend(
                manifest
                    .dumps_in_order(case)
                    .iter()
                    .map(|(tap, _)| Row::skipped(case, "recapture", &tap.to_string(), why.clone())),
            );
            continue;
        }
        if manifest.cases[case].dumps.is_empty() {
            eprintln!("case {case} was never captured: nothing to compare");
            continue;
        }
        let model_dir = checkpoint(manifest, model, weights)?;
        let out = scratch.join(case);
        let result = capture_case(sh, manifest, case, manifest.cases[case].dtype, &model_dir, &out, threads)
            .and_then(|_| {
                for (tap, _) in manifest.dumps_in_order(case) {
                    store(manifest, case, &tap.to_string(), &out)?;
                }
                Ok(())
            })
            .with_context(|| format!("capturing case {case}"));
        if let Err(e) = result {
            let _ = std::fs::remove_dir_all(&scratch);
            return Err(e);
        }
        for (tap, dump) in manifest.dumps_in_order(case) {
            let tap = tap.to_string();
            let new_path = out.join(Manifest::dump_path(case, &tap).file_name().expect("a dump path names a file"));
            let new_sha = parity::digest::sha256_file(&new_path).unwrap_or_default();
            if new_sha == dump.sha256 {
                identical += 1;
            }
            let recorded = parity::npy::read_npy(&manifest.root.join(Manifest::dump_path(case, &tap)));
            let row = match (recorded, parity::npy::read_npy(&new_path)) {
                (Ok(recorded), Ok(new)) => {
                    let opts = manifest.compare_options(case, &tap, None).unwrap_or(CompareOptions {
                        tolerance: manifest.tolerance(case, &tap),
                        ..CompareOptions::default()
                    });
                    let c = compare(&recorded, &new, &opts);
                    let detail = format!("case {case} · tap {tap} · new capture vs checked-in dump\n{c}");
                    Row::compared(case, "recapture", &tap, &c, None, detail)
                }
                (Err(e), _) | (_, Err(e)) => Row::failed(case, "recapture", &tap, e.to_string()),
            };
            rows.push(row);
        }
    }
    let _ = std::fs::remove_dir_all(&scratch);
    print!("{}", report::table(&rows));
    let moved: Vec<&Row> = rows.iter().filter(|r| r.status == Status::Fail).collect();
    let skipped = rows.iter().filter(|r| r.status == Status::Skip).count();
    println!(
        "\n{} dumps: {identical} byte-identical, {} within tolerance, {} moved, {skipped} skipped",
        rows.len(),
        rows.len() - identical - moved.len() - skipped,
        moved.len()
    );
    for r in &moved {
        eprintln!("\n{}", r.detail.as_deref().unwrap_or_default());
    }
    ensure!(moved.is_empty(), "the reference moved for {} dump(s); nothing was changed on disk", moved.len());
    Ok(())
}

/// The folder of a model's checkpoint. Capture never regenerates a model: a checkpoint in
/// the repository must be the recorded one; one outside it must be named (`--weights` or
/// the manifest's variable) and, once captured, keep its `config.json`.
fn checkpoint(manifest: &Manifest, model: &str, weights: Option<&Path>) -> Result<PathBuf> {
    let dir = match manifest.weights(model, weights).map_err(anyhow::Error::msg)? {
        Weights::Found(dir) => dir,
        Weights::Absent(why) => bail!("cannot capture: {why}"),
    };
    let m = &manifest.models[model];
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

/// Turns the harness's `<tap>.npy` in `dir` into the stored dump: cut to the one row the case
/// keeps (`rows` in the manifest) and gzip-compressed under the name [`Manifest::dump_path`]
/// gives it. Returns the stored file and the kept shape.
fn store(manifest: &Manifest, case: &str, tap: &str, dir: &Path) -> Result<(PathBuf, Vec<usize>)> {
    let raw = dir.join(format!("{tap}.npy"));
    let array = cut_rows(manifest, case, tap, parity::npy::read_npy(&raw)?)?;
    let stored = dir.join(Manifest::dump_path(case, tap).file_name().expect("a dump path names a file"));
    parity::npy::write_npy(&stored, &array)?;
    std::fs::remove_file(&raw)?;
    Ok((stored, array.shape))
}

/// `array` cut to the one row the case keeps of `tap` (`rows` in the manifest), if any.
fn cut_rows(manifest: &Manifest, case: &str, tap: &str, array: Array) -> Result<Array> {
    let Some(pick) = Tap::parse(tap).and_then(|t| manifest.row_pick(case, t)) else { return Ok(array) };
    let Some(&rows) = array.shape.first() else { bail!("{tap}: a scalar has no rows to keep") };
    Ok(array.select_rows(&[pick.index(rows)])?)
}

/// The commit of a HuggingFace cache snapshot (`…/models--org--name/snapshots/<commit>`).
fn snapshot_revision(dir: &Path) -> Option<String> {
    let dir = dir.canonicalize().ok()?;
    let parent = dir.parent()?;
    let commit = dir.file_name()?.to_str()?;
    let is_commit = commit.len() == 40 && commit.chars().all(|c| c.is_ascii_hexdigit());
    (parent.file_name()? == "snapshots" && is_commit).then(|| commit.to_owned())
}

fn image_digests(manifest: &Manifest, case: &str) -> Result<Vec<(String, String)>> {
    manifest.cases[case]
        .images
        .iter()
        .map(|name| {
            let path = manifest.root.join(&manifest.images[name].path);
            let sha =
                parity::digest::sha256_file(&path).with_context(|| format!("reading image {}", path.display()))?;
            Ok((name.clone(), sha))
        })
        .collect()
}

fn capture_case(
    sh: &Shell,
    manifest: &Manifest,
    case: &str,
    dtype: CaseDtype,
    model_dir: &Path,
    out: &Path,
    threads: u32,
) -> Result<CaptureListing> {
    let c = &manifest.cases[case];
    let images: Vec<PathBuf> = c.images.iter().map(|i| manifest.root.join(&manifest.images[i].path)).collect();
    let spec = serde_json::json!({
        "model_dir": model_dir,
        "images": images,
        "prompt": c.prompt,
        "loader": c.loader.name(),
        "dtype": dtype.name(),
        "generate": c.generate,
        "gen_top_k": c.gen_top_k,
    });
    let mut script_args = vec![
        "--case-json".to_string(),
        spec.to_string(),
        "--out".into(),
        out.display().to_string(),
        "--threads".into(),
        threads.to_string(),
    ];
    if manifest.models[&c.model].stream {
        script_args.push("--stream".into());
    }
    harness::run_python(sh, "capture.py", &script_args)?;
    let listing_path = out.join("capture.json");
    let listing: CaptureListing = serde_json::from_str(
        &std::fs::read_to_string(&listing_path).with_context(|| format!("reading {}", listing_path.display()))?,
    )
    .with_context(|| format!("parsing {}", listing_path.display()))?;
    for t in &listing.taps {
        let Some(tap) = Tap::parse(&t.tap) else { bail!("the harness wrote an unknown tap {}", t.tap) };
        ensure!(
            tap.dtype() == t.dtype,
            "the harness wrote {} as {} but the contract says {}",
            t.tap,
            t.dtype,
            tap.dtype()
        );
    }
    Ok(listing)
}

/// Replaces `final_dir` by `tmp_dir` with renames, so the old dumps survive until the new
/// ones are complete.
fn swap_in(tmp_dir: &Path, final_dir: &Path) -> Result<()> {
    let old = final_dir.with_file_name(format!(
        ".old-{}-{}",
        final_dir.file_name().unwrap().to_string_lossy(),
        std::process::id()
    ));
    if final_dir.exists() {
        std::fs::rename(final_dir, &old)?;
    }
    std::fs::rename(tmp_dir, final_dir)?;
    if old.exists() {
        std::fs::remove_dir_all(&old)?;
    }
    Ok(())
}
