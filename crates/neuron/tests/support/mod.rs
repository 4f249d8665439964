//! Assertions shared by the generated parity tests.

use std::path::Path;

/// Fails with the file, the manifest entry and both digests when a recorded file changed.
pub fn assert_digest(path: &str, expected: &str, entry: &str) {
    if let Err(e) = parity::digest::verify_file(Path::new(path), expected) {
        panic!("{e}\n(recorded at {entry} in fixtures.toml)");
    }
}

use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock};

use neuron::replay::{self, Mode, Run};
use parity::manifest::Manifest;

fn manifest() -> &'static Manifest {
    static MANIFEST: OnceLock<Manifest> = OnceLock::new();
    MANIFEST.get_or_init(|| replay::workspace_manifest().unwrap_or_else(|e| panic!("{e:#}")))
}

/// One run per (case, mode), shared by every test of that case and mode even when the
/// tests run in parallel.
fn run(case: &str, mode: Mode) -> Arc<Result<Run, String>> {
    type Slot = Arc<OnceLock<Arc<Result<Run, String>>>>;
    static RUNS: OnceLock<Mutex<HashMap<(String, Mode), Slot>>> = OnceLock::new();
    let slot = RUNS.get_or_init(Default::default).lock().unwrap().entry((case.to_owned(), mode)).or_default().clone();
    slot.get_or_init(|| Arc::new(replay::run(manifest(), case, mode).map_err(|e| format!("{e:#}")))).clone()
}

/// A case declared without dumps (a checkpoint outside the repository that was never
/// captured here) fails with the command that captures it.
pub fn assert_captured(case: &str) {
    let m = manifest();
    if m.cases[case].dumps.is_empty() {
        let model = &m.cases[case].model;
        panic!("case {case} has no recorded dumps: run `cargo xtask capture --case {case} --weights DIR` with the checkpoint of {model}");
    }
}

/// Fails with the case, the tap, the mode, the metrics and the worst element's place.
pub fn assert_tap(case: &str, tap: &str, mode: Mode) {
    let run = run(case, mode);
    let run = match run.as_ref() {
        Ok(run) => run,
        Err(e) => panic!("case {case}: the {} run failed: {e}", mode.name()),
    };
    let result = run.check(manifest(), case, tap).unwrap_or_else(|e| panic!("case {case} · tap {tap}: {e:#}"));
    if !result.passed() {
        panic!("{}", result.message());
    }
}
