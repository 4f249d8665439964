//! `capture --check`: capture again into a temporary folder outside the repository and compare
//! every recorded dump with the new one by the manifest's rule (byte-identical, within
//! tolerance, or moved), changing nothing.

use std::path::Path;

use anyhow::{ensure, Context, Result};
use parity::compare::compare;
use parity::manifest::{CaseRef, Weights};
use parity::report::{self, Check, Row, Status};
use xshell::Shell;

use super::listing::capture_case;
use super::store::{store, stored_path};

pub(super) fn check_against_recorded(
    sh: &Shell,
    cases: &[CaseRef],
    threads: u32,
    weights: Option<&Path>,
) -> Result<()> {
    let scratch = std::env::temp_dir().join(format!("neuron-capture-check-{}", std::process::id()));
    let mut rows = Vec::new();
    let mut identical = 0;
    for &case in cases {
        if let Ok(Weights::Absent(why)) = case.weights(weights) {
            rows.extend(
                case.dumps_in_order().map(|(tap, _)| Row::skipped(case.name, Check::Recapture, tap, why.clone())),
            );
            continue;
        }
        if case.case.dumps.is_empty() {
            eprintln!("case {case} was never captured: nothing to compare");
            continue;
        }
        let model_dir = super::checkpoint(case, weights)?;
        let out = scratch.join(case.name);
        let result = capture_case(sh, case, case.case.dtype, &model_dir, &out, threads)
            .and_then(|_| case.dumps_in_order().try_for_each(|(key, _)| store(case, key, &out).map(|_| ())))
            .with_context(|| format!("capturing case {case}"));
        if let Err(e) = result {
            let _ = std::fs::remove_dir_all(&scratch);
            return Err(e);
        }
        for (tap, dump) in case.dumps_in_order() {
            let new_path = stored_path(case, tap, &out);
            let new_sha = parity::digest::sha256_file(&new_path).unwrap_or_default();
            if new_sha == dump.sha256 {
                identical += 1;
            }
            let recorded = parity::npy::read_npy(&case.manifest.root.join(case.dump_path_at(tap)));
            let row = match (recorded, parity::npy::read_npy(&new_path)) {
                (Ok(recorded), Ok(new)) => {
                    let opts = case.compare_options(tap.tap, None).unwrap_or(parity::compare::CompareOptions {
                        tolerance: case.tolerance(tap.tap),
                        ..Default::default()
                    });
                    let c = compare(&recorded, &new, &opts);
                    let detail = format!("case {case} · tap {tap} · new capture vs checked-in dump\n{c}");
                    Row::compared(case.name, Check::Recapture, tap, &c, None, detail)
                }
                (Err(e), _) | (_, Err(e)) => Row::failed(case.name, Check::Recapture, tap, e.to_string()),
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
