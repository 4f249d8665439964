//! `cargo xtask calibrate`: for each bf16 case, replay it in Rust and print per tap the
//! reference's own bf16-vs-f32 noise (recorded by capture), Rust's deviation from the bf16
//! reference and their ratio; propose a `tap_k` line, with its comment, for every tap whose
//! ratio exceeds the case's `k`.

use anyhow::{bail, Result};
use contract::{ComputeDtype, Tap};
use parity::compare::Comparison;
use parity::report::sci;
use replay::{Loaded, Mode, Perturbations};
use xshell::Shell;

use crate::cli::ManifestArg;

#[derive(clap::Args, Debug)]
pub struct Args {
    /// Only this case (a bf16 case).
    #[arg(long)]
    case: Option<String>,
    /// The checkpoint folder when the case's model lives outside the repository.
    #[arg(long)]
    weights: Option<std::path::PathBuf>,
    #[command(flatten)]
    manifest: ManifestArg,
}

/// The worst Rust deviation of one tap over the modes that check it.
struct Measured {
    tap: Tap,
    mode: &'static str,
    comparison: Comparison,
}

pub fn run(sh: &Shell, args: Args) -> Result<()> {
    let manifest = args.manifest.load(sh)?;
    let cases: Vec<_> = manifest
        .select(None, args.case.as_deref())
        .map_err(anyhow::Error::msg)?
        .into_iter()
        .filter(|c| c.case.dtype == ComputeDtype::Bf16)
        .collect();
    if cases.is_empty() {
        bail!("no bf16 case selected: calibration applies to cases with dtype = \"bf16\"");
    }
    let mut proposals = Vec::new();
    for &case in &cases {
        let (setup, model) = match replay::load_case(case, args.weights.as_deref()) {
            Loaded::Model { setup, model } => (setup, model),
            Loaded::Skip(why) => {
                println!("case {case}: skipped, {why}");
                continue;
            }
            Loaded::Fail(why) => bail!("case {case}: {why}"),
        };
        let mut worst: Vec<Measured> = Vec::new();
        for &mode in Mode::ALL {
            let taps = case.taps_checked(mode);
            if taps.is_empty() {
                continue;
            }
            let run = replay::run_with(&setup, mode, &model, &Perturbations::default())?;
            for tap in taps {
                let comparison = run.check(case, tap)?.comparison;
                let ratio = comparison.noise_ratio().unwrap_or(0.0);
                match worst.iter_mut().find(|m| m.tap == tap) {
                    Some(m) if m.comparison.noise_ratio().unwrap_or(0.0) >= ratio => {}
                    Some(m) => *m = Measured { tap, mode: mode.name(), comparison },
                    None => worst.push(Measured { tap, mode: mode.name(), comparison }),
                }
            }
        }
        println!("\ncase {case} (bf16): Rust against the bf16 reference, in units of the reference's own bf16-vs-f32 deviation");
        println!(
            "{:<20} {:>10} {:>10} {:>10} {:>10} {:>8} {:>8} {:>5}  worst mode",
            "tap", "noise max", "noise rms", "Rust max", "Rust rms", "× max", "× rms", "k"
        );
        for m in &worst {
            let c = &m.comparison;
            let Some(cal) = c.calibration.filter(|_| c.noise_ratio().is_some()) else {
                let tap = m.tap.to_string();
                println!("{tap:<20} exact (integer tap): {}", if c.passed() { "equal" } else { "DIFFERENT" });
                continue;
            };
            let rust_max = c.max_abs.as_ref().map_or(0.0, |w| w.value);
            let rust_rms = c.rms.unwrap_or(0.0);
            let ratio = |ours: f64, noise: f64| if ours == 0.0 { 0.0 } else { ours / noise };
            let (r_max, r_rms) = (ratio(rust_max, cal.noise.max_abs), ratio(rust_rms, cal.noise.rms));
            let logits_ok = c.logits.is_none_or(|l| l.argmax_agrees() && l.overlap == l.k);
            println!(
                "{:<20} {:>10} {:>10} {:>10} {:>10} {:>8.2} {:>8.2} {:>5}  {}{}",
                m.tap.to_string(),
                sci(Some(cal.noise.max_abs)),
                sci(Some(cal.noise.rms)),
                sci(Some(rust_max)),
                sci(Some(rust_rms)),
                r_max,
                r_rms,
                cal.k,
                m.mode,
                if logits_ok { "" } else { "  (argmax or top-5 set differs)" }
            );
            if r_max.max(r_rms) > cal.k {
                // A quarter above the measurement, rounded up to a tenth: room for rounding
                // noise between hosts, not for a bug.
                let k = (r_max.max(r_rms) * 1.25 * 10.0).ceil() / 10.0;
                proposals.push(format!(
                    "[cases.{case}] tap_k: \"{}\" = {k}  # calibrate: Rust is {r_max:.2}× the reference's bf16-vs-f32 \
                     max |Δ| ({}) and {r_rms:.2}× its RMS ({}) in {}; k = {} fails",
                    m.tap,
                    sci(Some(cal.noise.max_abs)),
                    sci(Some(cal.noise.rms)),
                    m.mode,
                    cal.k
                ));
            }
        }
    }
    if proposals.is_empty() {
        println!("\nevery bf16 tap is within its k: no tolerance line to propose");
    } else {
        println!("\nproposed lines (add under the case, with the comment):");
        for p in &proposals {
            println!("  {p}");
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn calibrating_an_f32_only_selection_is_refused_naming_the_dtype() {
        let sh = Shell::new().unwrap();
        sh.change_dir(crate::cli::project_root());
        let f32_case = "chelsea".to_owned();
        let args =
            Args { case: Some(f32_case), weights: None, manifest: ManifestArg { manifest: "fixtures.toml".into() } };
        let err = run(&sh, args).expect_err("chelsea is an f32 case");
        assert!(err.to_string().contains("dtype = \"bf16\""), "message was: {err}");
    }
}
