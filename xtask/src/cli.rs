//! What the commands share: the project root, the `--manifest` flag, progress bars and the
//! process's peak memory.

use std::path::{Path, PathBuf};

use anyhow::Result;
use parity::manifest::Manifest;
use xshell::Shell;

/// The workspace root (the folder holding `fixtures.toml`).
pub fn project_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("xtask lives in the workspace root").to_owned()
}

/// `--manifest PATH`, resolved against the project root.
#[derive(clap::Args, Debug, Clone)]
pub struct ManifestArg {
    /// The manifest to read (and, for capture and make-model, update in place).
    #[arg(long, default_value = "fixtures.toml")]
    pub manifest: PathBuf,
}

impl ManifestArg {
    pub fn path(&self, sh: &Shell) -> PathBuf {
        sh.current_dir().join(&self.manifest)
    }

    pub fn load(&self, sh: &Shell) -> Result<Manifest> {
        Ok(Manifest::load(&self.path(sh))?)
    }
}

/// A progress bar on stderr for long loops; hidden in CI and when stderr is not a terminal,
/// so logs stay clean.
pub fn progress(len: usize, what: &str) -> indicatif::ProgressBar {
    if std::env::var_os("CI").is_some() {
        return indicatif::ProgressBar::hidden();
    }
    let bar = indicatif::ProgressBar::new(len as u64);
    bar.set_style(
        indicatif::ProgressStyle::with_template(&format!("{what} {{bar:30}} {{pos}}/{{len}} {{msg}}"))
            .expect("a valid template"),
    );
    bar
}

/// Peak resident memory of this process (`VmHWM`), on Linux.
pub fn peak_rss_bytes() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024)
}
