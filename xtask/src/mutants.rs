//! `cargo xtask mutants`: run cargo-mutants over the model code with the numerical tests as
//! the test suite, and summarise caught / missed / unviable / timeout counts.
//!
//! Settings (which files, which tests, which mutants are explained as equivalent) live in
//! `.cargo/mutants.toml`, where cargo-mutants reads them.

use std::collections::BTreeMap;

use anyhow::{Context, Result};
use serde::Deserialize;
use xshell::{cmd, Shell};

#[derive(clap::Args, Debug)]
pub struct Args {
    /// Only mutate files matching this glob (repeatable), e.g. `crates/neuron/src/vision/**`.
    #[arg(long = "file")]
    files: Vec<String>,
    /// Parallel build jobs (each needs its own copy of the tree).
    #[arg(long, default_value_t = 1)]
    jobs: u32,
    /// Where cargo-mutants writes `mutants.out`.
    #[arg(long, default_value = "target/mutants")]
    output: String,
    /// Skip the mutants the previous run into `--output` caught: re-test the missed ones and
    /// the new ones after adding tests or changing code.
    #[arg(long)]
    iterate: bool,
}

#[derive(Deserialize)]
struct Outcomes {
    outcomes: Vec<Outcome>,
}

#[derive(Deserialize)]
struct Outcome {
    scenario: serde_json::Value,
    summary: String,
}

pub fn run(sh: &Shell, args: Args) -> Result<()> {
    if cmd!(sh, "cargo mutants --version").quiet().ignore_stdout().ignore_stderr().run().is_err() {
        eprintln!("cargo-mutants is not installed; installing it (cargo install cargo-mutants --locked)");
        cmd!(sh, "cargo install cargo-mutants --locked").run().context("installing cargo-mutants")?;
    }
    let output = &args.output;
    let jobs = args.jobs.to_string();
    let mut files: Vec<String> = args.files.iter().flat_map(|f| ["--file".to_owned(), f.clone()]).collect();
    if args.iterate {
        files.push("--iterate".into());
    }
    // A missed mutant makes cargo-mutants exit non-zero; the summary below is the result.
    let status =
        cmd!(sh, "cargo mutants --package neuron --output {output} --jobs {jobs} {files...}").ignore_status().run();
    let path = sh.current_dir().join(output).join("mutants.out/outcomes.json");
    let outcomes: Outcomes = serde_json::from_str(
        &std::fs::read_to_string(&path)
            .with_context(|| format!("reading {} (did cargo-mutants run?)", path.display()))?,
    )
    .with_context(|| format!("parsing {}", path.display()))?;
    let summary = summarise(&outcomes);
    println!("{summary}");
    std::fs::write(sh.current_dir().join(output).join("summary.md"), &summary)?;
    status.context("running cargo-mutants")?;
    Ok(())
}

fn summarise(outcomes: &Outcomes) -> String {
    let mut counts: BTreeMap<&str, usize> = BTreeMap::new();
    let mut missed = Vec::new();
    for o in &outcomes.outcomes {
        if o.scenario == serde_json::json!("Baseline") {
            continue;
        }
        let kind = match o.summary.as_str() {
            "CaughtMutant" => "caught",
            "MissedMutant" => "missed",
            "Unviable" => "unviable",
            "Timeout" => "timeout",
            _ => "other",
        };
        *counts.entry(kind).or_default() += 1;
        if kind == "missed" {
            missed.push(
                o.scenario["Mutant"]["name"].as_str().map(str::to_owned).unwrap_or_else(|| o.scenario.to_string()),
            );
        }
    }
    let caught = counts.get("caught").copied().unwrap_or(0);
    let viable = caught + counts.get("missed").copied().unwrap_or(0) + counts.get("timeout").copied().unwrap_or(0);
    let mut s = format!(
        "caught {caught}, missed {}, unviable {}, timeout {} — score {:.1}% of {viable} viable mutants\n",
        counts.get("missed").copied().unwrap_or(0),
        counts.get("unviable").copied().unwrap_or(0),
        counts.get("timeout").copied().unwrap_or(0),
        if viable == 0 { 0.0 } else { 100.0 * caught as f64 / viable as f64 }
    );
    if !missed.is_empty() {
        s.push_str("\nmissed mutants:\n");
        for m in missed {
            s.push_str(&format!("- {m}\n"));
        }
    }
    s
}
