//! Assertions shared by the generated parity tests.

use std::collections::HashMap;
use std::path::Path;
use std::sync::{Arc, Mutex, OnceLock};

use parity::manifest::{CaseRef, DumpKey, Manifest};
use replay::{Mode, Run};

/// Fails with the file, the manifest entry and both digests when a recorded file changed.
pub fn assert_digest(path: &str, expected: &str, entry: &str) {
    if let Err(e) = parity::digest::verify_file(Path::new(path), expected) {
        panic!("{e}\n(recorded at {entry} in fixtures.toml)");
    }
}

fn manifest() -> &'static Manifest {
    static MANIFEST: OnceLock<Manifest> = OnceLock::new();
    MANIFEST.get_or_init(|| replay::workspace_manifest().unwrap_or_else(|e| panic!("{e:#}")))
}

fn case(name: &str) -> CaseRef<'static> {
    manifest().case(name).unwrap_or_else(|e| panic!("{e}"))
}

/// One run per (case, mode), shared by every test of that case and mode even when the
/// tests run in parallel.
fn run(name: &str, mode: Mode) -> Arc<Result<Run, String>> {
    type Slot = Arc<OnceLock<Arc<Result<Run, String>>>>;
    static RUNS: OnceLock<Mutex<HashMap<(String, Mode), Slot>>> = OnceLock::new();
    let slot = RUNS.get_or_init(Default::default).lock().unwrap().entry((name.to_owned(), mode)).or_default().clone();
    slot.get_or_init(|| Arc::new(replay::run(case(name), mode).map_err(|e| format!("{e:#}")))).clone()
}

/// A case declared without dumps (a checkpoint outside the repository that was never
/// captured here) fails with the command that captures it.
pub fn assert_captured(name: &str) {
    let c = case(name);
    if c.case.dumps.is_empty() {
        panic!(
            "case {c} has no recorded dumps: run `cargo xtask capture --case {c} --weights DIR` with the checkpoint of {}",
            c.model_name()
        );
    }
}

/// Fails with the case, the tap, the mode, the metrics and the worst element's place.
pub fn assert_tap(name: &str, tap: DumpKey, mode: Mode) {
    let run = run(name, mode);
    let run = match run.as_ref() {
        Ok(run) => run,
        Err(e) => panic!("case {name}: the {} run failed: {e}", mode.name()),
    };
    let result = run.check(case(name), tap).unwrap_or_else(|e| panic!("case {name} · tap {tap}: {e:#}"));
    // A routing tap that differs only where the reference's own router nearly tied is no
    // failure; everything else that differs is (a non-tie flip, a wrong weight).
    if result.near_tie() {
        println!("near tie, neither passed nor failed:\n{}", result.message());
    } else if !result.passed() {
        panic!("{}", result.message());
    }
}
