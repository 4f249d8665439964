//! `cargo xtask faults`: named faults seeded into a copy of the model's source, one at a time.
//! Each is a bug a port of the MoE router or experts makes, written as the wrong line in place
//! of the right one; `verify` on the copy must fail first at the tap where the fault enters, in
//! the mode that isolates it. Faults that a weight or a position can stand for are tests
//! (`crates/replay/tests/mutations.rs`); these change arithmetic that only code can get wrong,
//! so they are patched into the source, as cargo-mutants does with its own mutants.
//!
//! The copy lives in `target/faults/src/` and builds into the workspace's target folder, so
//! each fault rebuilds only the model crate and what depends on it.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use parity::mode::Mode;
use xshell::{cmd, Shell};

#[derive(clap::Args, Debug)]
pub struct Args {
    /// Only the faults whose name contains this (repeatable).
    #[arg(long = "fault")]
    only: Vec<String>,
}

/// What seeding a fault must do.
#[derive(Debug, Clone, Copy)]
pub enum Expect {
    /// `verify` of the case fails, in this mode, first at this tap.
    CaughtAt(Mode, &'static str),
    /// The fault computes the same function in exact arithmetic (the reason given), so nothing
    /// may fail: a failure would disprove the claim.
    Equivalent(&'static str),
}

/// One fault: the line of `file` it replaces, and the case whose verification shows it.
#[derive(Debug)]
pub struct Fault {
    pub name: &'static str,
    pub file: &'static str,
    /// The right code, occurring exactly once in `file`.
    pub right: &'static str,
    /// The wrong code put in its place.
    pub wrong: &'static str,
    pub case: &'static str,
    pub expect: Expect,
}

const MOE: &str = "crates/neuron/src/text/moe.rs";

pub const FAULTS: &[Fault] = &[
    Fault {
        name: "top-k before the softmax",
        file: MOE,
        // Mixtral's order: the k largest logits, then a softmax over those k alone.
        right: "let values: Vec<f32> = ids.iter().map(|&id| row[id]).collect();",
        wrong: "let values: Vec<f32> = { let top: Vec<f32> = ids.iter().map(|&id| row[id].ln()).collect(); \
                let m = top.iter().copied().fold(f32::NEG_INFINITY, f32::max); \
                top.iter().map(|l| (l - m).exp()).collect() };",
        case: "moe-chelsea",
        expect: Expect::Equivalent(
            "softmax is monotonic, so the same k experts win, and a softmax over their k logits is \
             exp(l_i) / sum_k exp(l_j) = p_i / sum_k p_j: the renormalised probabilities",
        ),
    },
    Fault {
        name: "no renormalisation",
        file: MOE,
        right: "own.weights.extend(values.iter().map(|v| round_to(v / sum, dtype)));",
        wrong: "own.weights.extend(values.iter().map(|v| round_to(*v + 0.0 * sum, dtype)));",
        case: "moe-chelsea",
        expect: Expect::CaughtAt(Mode::LmTeacherForced, "moe.0.top_weights"),
    },
    Fault {
        name: "the shared gate without its sigmoid",
        file: MOE,
        right: "let gate = sigmoid(&self.shared_expert_gate.forward(x)?)?;",
        wrong: "let gate = self.shared_expert_gate.forward(x)?;",
        case: "moe-chelsea",
        expect: Expect::CaughtAt(Mode::LmTeacherForced, "moe.0.shared"),
    },
    Fault {
        name: "the gate and up halves swapped",
        file: MOE,
        right: "let act = (silu(&gate_up.narrow(1, 0, i)?)? * gate_up.narrow(1, i, i)?)?;",
        wrong: "let act = (silu(&gate_up.narrow(1, i, i)?)? * gate_up.narrow(1, 0, i)?)?;",
        case: "moe-chelsea",
        expect: Expect::CaughtAt(Mode::LmTeacherForced, "moe.0.out"),
    },
    Fault {
        name: "expert ids off by one",
        file: MOE,
        right: "own.ids.extend(ids.iter().map(|&id| id as u32));",
        wrong: "own.ids.extend(ids.iter().map(|&id| ((id + 1) % e) as u32));",
        case: "moe-chelsea",
        expect: Expect::CaughtAt(Mode::LmTeacherForced, "moe.0.top_ids"),
    },
    Fault {
        name: "the router softmax in bf16",
        file: MOE,
        right: "let probs = softmax_rows(&router_logits)?;",
        wrong: BF16_SOFTMAX,
        case: "moe-chelsea",
        expect: Expect::CaughtAt(Mode::LmTeacherForced, "moe.0.top_weights"),
    },
    Fault {
        name: "the router softmax in bf16, in a bf16 model",
        file: MOE,
        right: "let probs = softmax_rows(&router_logits)?;",
        wrong: BF16_SOFTMAX,
        case: "moe-chelsea-bf16",
        // Not at its own tap: the probabilities move by at most 2^-9 relative and the weights are
        // rounded to bf16 anyway, within k x the reference's own bf16 noise. It flips a near tie
        // of layer 1 (token 17, reported TIE), whose effect fails at layer 2's shared expert.
        // docs/MUTATIONS.md has the figures.
        expect: Expect::CaughtAt(Mode::LmTeacherForced, "moe.2.shared"),
    },
];

const BF16_SOFTMAX: &str =
    "let probs: Vec<f32> = softmax_rows(&router_logits)?.into_iter().map(|p| round_to(p, DType::BF16)).collect();";

/// What `verify` of the faulty copy said, for one fault.
struct Observed {
    first_failure: Option<String>,
    failed: usize,
}

pub fn run(sh: &Shell, args: Args) -> Result<()> {
    let root = sh.current_dir();
    let faults: Vec<&Fault> =
        FAULTS.iter().filter(|f| args.only.is_empty() || args.only.iter().any(|o| f.name.contains(o))).collect();
    if faults.is_empty() {
        bail!("no fault's name contains any of {:?}; the faults: {:?}", args.only, names());
    }
    let copy = root.join("target/faults/src");
    copy_sources(sh, &root, &copy)?;
    // The workspace's own target folder: the dependencies are built once for both, and the
    // copy's crates, at another path, get artifacts of their own.
    let target = std::env::var_os("CARGO_TARGET_DIR").map_or_else(|| root.join("target"), PathBuf::from);
    let mut rows = Vec::new();
    let mut wrong = Vec::new();
    for fault in faults {
        eprintln!("\n== {}: {} → {}", fault.name, fault.file, fault.case);
        let pristine = std::fs::read_to_string(root.join(fault.file))?;
        std::fs::write(copy.join(fault.file), seed(fault, &pristine)?)?;
        let observed = verify(sh, &copy, &target, fault);
        std::fs::write(copy.join(fault.file), &pristine)?;
        let observed = observed?;
        let verdict = judge(fault, &observed);
        if verdict.is_err() {
            wrong.push(fault.name);
        }
        rows.push((fault, observed, verdict));
    }
    println!("\n| fault | case | expected | first failing tap | failing taps | verdict |\n|---|---|---|---|---|---|");
    for (fault, observed, verdict) in &rows {
        let expected = match fault.expect {
            Expect::CaughtAt(mode, tap) => format!("{} {tap}", mode.name()),
            Expect::Equivalent(_) => "nothing (equivalent)".into(),
        };
        println!(
            "| {} | {} | {expected} | {} | {} | {} |",
            fault.name,
            fault.case,
            observed.first_failure.as_deref().unwrap_or("none"),
            observed.failed,
            match verdict {
                Ok(v) => v.clone(),
                Err(e) => format!("WRONG: {e}"),
            }
        );
    }
    if !wrong.is_empty() {
        bail!("{} fault(s) did not show where expected: {}", wrong.len(), wrong.join(", "));
    }
    Ok(())
}

fn names() -> Vec<&'static str> {
    FAULTS.iter().map(|f| f.name).collect()
}

/// The file with the fault's right code replaced by its wrong code; an error when the right code
/// is not there exactly once (the source moved on: update the fault).
pub fn seed(fault: &Fault, source: &str) -> Result<String> {
    let found = source.matches(fault.right).count();
    if found != 1 {
        bail!(
            "fault {:?}: its right code occurs {found} times in {} (once expected); the source changed, so \
             update the fault in xtask/src/faults.rs: {:?}",
            fault.name,
            fault.file,
            fault.right
        );
    }
    Ok(source.replacen(fault.right, fault.wrong, 1))
}

/// The workspace's files (tracked and new, not ignored) copied to `copy`, replacing what a
/// previous run left there.
fn copy_sources(sh: &Shell, root: &Path, copy: &Path) -> Result<()> {
    let listed = cmd!(sh, "git ls-files --cached --others --exclude-standard").read()?;
    for file in listed.lines().map(PathBuf::from) {
        let (from, to) = (root.join(&file), copy.join(&file));
        if !from.is_file() {
            continue; // deleted in the working tree
        }
        if let Some(dir) = to.parent() {
            std::fs::create_dir_all(dir)?;
        }
        std::fs::copy(&from, &to).with_context(|| format!("copying {}", from.display()))?;
    }
    Ok(())
}

/// `cargo xtask verify --case C --format json` in the faulty copy: the first failing tap of the
/// mode the fault names (or of any mode), and how many taps failed.
fn verify(sh: &Shell, copy: &Path, target: &Path, fault: &Fault) -> Result<Observed> {
    let _dir = sh.push_dir(copy);
    let _env = sh.push_env("CARGO_TARGET_DIR", target);
    let case = fault.case;
    // A caught fault makes verify exit non-zero; the JSON on stdout is the result.
    let output =
        cmd!(sh, "cargo run --quiet --package xtask -- verify --case {case} --format json").ignore_status().output()?;
    let text = String::from_utf8_lossy(&output.stdout);
    let rows: Vec<serde_json::Value> = serde_json::from_str(&text).with_context(|| {
        format!("verify of the faulty copy printed no report:\n{}", String::from_utf8_lossy(&output.stderr))
    })?;
    let field = |r: &serde_json::Value, k: &str| r.get(k).and_then(|v| v.as_str()).unwrap_or_default().to_owned();
    let failing: Vec<&serde_json::Value> = rows.iter().filter(|r| field(r, "status") == "fail").collect();
    let in_mode = |r: &&serde_json::Value| match fault.expect {
        Expect::CaughtAt(mode, _) => field(r, "mode") == mode.name(),
        Expect::Equivalent(_) => true,
    };
    let first = failing.iter().copied().find(in_mode).map(|r| format!("{} {}", field(r, "mode"), field(r, "tap")));
    Ok(Observed { first_failure: first, failed: failing.len() })
}

fn judge(fault: &Fault, observed: &Observed) -> Result<String, String> {
    match (fault.expect, &observed.first_failure) {
        (Expect::CaughtAt(mode, tap), Some(first)) if *first == format!("{} {tap}", mode.name()) => {
            Ok("caught at its tap".into())
        }
        (Expect::CaughtAt(..), Some(first)) => Err(format!("first failed at {first}")),
        (Expect::CaughtAt(..), None) => Err("went unnoticed".into()),
        (Expect::Equivalent(why), None) => Ok(format!("equivalent: {why}")),
        (Expect::Equivalent(_), Some(first)) => Err(format!("claimed equivalent, but failed at {first}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The faults stay seedable: each one's right code is still in its file exactly once, and
    /// its wrong code differs.
    #[test]
    fn every_faults_right_code_occurs_once_in_its_file() {
        let root = crate::cli::project_root();
        for fault in FAULTS {
            let source = std::fs::read_to_string(root.join(fault.file)).unwrap();
            let seeded = seed(fault, &source).unwrap_or_else(|e| panic!("{e:#}"));
            assert_ne!(seeded, source, "fault {:?} changes nothing", fault.name);
        }
    }
}
