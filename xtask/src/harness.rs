//! Running the Python reference harness under `script/` through uv, with the pinned lock.

use std::path::Path;

use anyhow::{bail, Context, Result};
use xshell::{cmd, Shell};

/// The harness files whose digest tells which reference produced a dump.
const HARNESS_FILES: &[&str] = &["script/capture.py", "script/uv.lock", "script/pyproject.toml"];

/// Fails with the install command when uv is not on PATH.
pub fn require_uv(sh: &Shell) -> Result<()> {
    if cmd!(sh, "uv --version").quiet().ignore_stdout().ignore_stderr().run().is_err() {
        bail!(
            "`uv` is not on PATH; the reference harness runs through uv with the pinned script/uv.lock.\n\
             Install it with:  python3 -m pip install uv   (then re-run this command)"
        );
    }
    Ok(())
}

/// Runs `python script/<script> args…` in the locked environment of `script/`.
pub fn run_python(sh: &Shell, script: &str, args: &[String]) -> Result<()> {
    require_uv(sh)?;
    let path = format!("script/{script}");
    // --locked: never re-resolve; the reference is exactly what uv.lock pins.
    cmd!(sh, "uv run --quiet --project script --locked python {path} {args...}")
        .run()
        .with_context(|| format!("the reference harness failed: python {path}"))?;
    Ok(())
}

/// SHA-256 over the harness files (capture code and the lock), recorded with every capture so
/// that a changed harness marks dumps as stale.
pub fn harness_digest(root: &Path) -> Result<String> {
    let mut listing = String::new();
    for file in HARNESS_FILES {
        let sha = parity::digest::sha256_file(&root.join(file)).with_context(|| format!("reading {file}"))?;
        listing.push_str(&format!("{file} {sha}\n"));
    }
    Ok(parity::digest::sha256_bytes(listing.as_bytes()))
}
