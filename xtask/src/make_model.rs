//! `cargo xtask make-model`: regenerate a generated checkpoint (the iteration model) and
//! record the digest of each of its files in the manifest.

use std::collections::BTreeMap;

use anyhow::{bail, Context, Result};
use xshell::Shell;

use crate::cli::ManifestArg;
use crate::{harness, manifest_edit::ManifestDoc};

#[derive(clap::Args, Debug)]
pub struct Args {
    /// The model entry to regenerate (it must name its generator with `generated_by`).
    #[arg(long, default_value = "tiny-qwen3.6-27b")]
    model: String,
    #[command(flatten)]
    manifest: ManifestArg,
}

pub fn run(sh: &Shell, args: Args) -> Result<()> {
    let manifest = args.manifest.load(sh)?;
    let Some(model) = manifest.models.get(&args.model) else {
        bail!(
            "{}: no model \"{}\"; known models: {}",
            args.manifest.manifest.display(),
            args.model,
            manifest.models.keys().cloned().collect::<Vec<_>>().join(", ")
        );
    };
    let Some(generator) = &model.generated_by else {
        bail!(
            "model \"{}\" has no `generated_by` in {}: it is an external checkpoint and cannot be regenerated here",
            args.model,
            args.manifest.manifest.display()
        );
    };
    let Some(path) = &model.path else {
        bail!(
            "model \"{}\" lives outside the repository (weights_env); its generator writes to a temporary \
             folder through `cargo xtask standin`, never into the repository",
            args.model
        );
    };
    let script = generator.strip_prefix("script/").unwrap_or(generator);
    let out = manifest.root.join(path);
    let mut script_args = vec!["--out".to_string(), out.display().to_string()];
    script_args.extend(model.generator_args.iter().cloned());
    harness::run_python(sh, script, &script_args)?;

    let mut files = BTreeMap::new();
    for entry in std::fs::read_dir(&out).with_context(|| format!("listing {}", out.display()))? {
        let path = entry?.path();
        if path.is_file() {
            let name = path.file_name().expect("a file has a name").to_string_lossy().into_owned();
            files.insert(name, parity::digest::sha256_file(&path)?);
        }
    }
    let mut doc = ManifestDoc::open(&args.manifest.path(sh))?;
    doc.set_model_files(&args.model, &files);
    doc.save()?;
    for (name, sha) in &files {
        println!("{:<28} {sha}", name);
    }
    println!("recorded {} files of {} in {}", files.len(), args.model, args.manifest.manifest.display());
    Ok(())
}
