//! `cargo xtask`: the workspace's commands (capture, check, make-model, verify).
//!
//! A plain binary in the rust-analyzer style: one small clap enum, one module per command,
//! one `xshell::Shell` rooted at the project root.

mod capture;
mod check;
mod harness;
mod make_model;
mod manifest_edit;

use std::path::{Path, PathBuf};

use anyhow::Result;
use clap::{Parser, Subcommand};
use xshell::Shell;

#[derive(Parser)]
#[command(name = "cargo xtask", about = "neuron parity workspace commands")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Regenerate the iteration model from its fixed seed and record its digests.
    MakeModel(make_model::Args),
    /// Run the Python reference (transformers, through uv) and record the dumps.
    Capture(capture::Args),
    /// Check every recorded file against its digest; list unreferenced dumps.
    Check(check::Args),
}

fn main() {
    let cli = Cli::parse();
    let result = (|| -> Result<()> {
        let sh = Shell::new()?;
        sh.change_dir(project_root());
        match cli.command {
            Command::MakeModel(args) => make_model::run(&sh, args),
            Command::Capture(args) => capture::run(&sh, args),
            Command::Check(args) => check::run(&sh, args),
        }
    })();
    if let Err(e) = result {
        eprintln!("error: {e:#}");
        std::process::exit(1);
    }
}

/// The workspace root (the folder holding `fixtures.toml`).
fn project_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("xtask lives in the workspace root").to_owned()
}

/// `--manifest PATH`, resolved against the project root.
#[derive(clap::Args, Debug, Clone)]
struct ManifestArg {
    /// The manifest to read (and, for capture and make-model, update in place).
    #[arg(long, default_value = "fixtures.toml")]
    manifest: PathBuf,
}

impl ManifestArg {
    fn path(&self, sh: &Shell) -> PathBuf {
        sh.current_dir().join(&self.manifest)
    }

    fn load(&self, sh: &Shell) -> Result<parity::manifest::Manifest> {
        Ok(parity::manifest::Manifest::load(&self.path(sh))?)
    }
}
