//! The report's screenshot check (`cargo xtask verify --report DIR --screenshot`): render
//! the page in headless Chromium and make sure the screenshot is not blank (a page that fails
//! to lay out, or an SVG that does not draw, shows up as a white image).

use std::collections::HashSet;
use std::ffi::OsStr;
use std::fmt;
use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

/// The names Chromium goes by: Debian's package, other distributions' and Google's build.
const CHROMIUM_NAMES: [&str; 3] = ["chromium", "chromium-browser", "google-chrome"];

/// The browser window: wide enough for the two plots side by side, tall enough for the
/// first case's summary, plots, heat maps and the start of its table.
pub const WINDOW: (u32, u32) = (1400, 2400);

/// How long Chromium may take before it is killed.
const TIMEOUT: Duration = Duration::from_secs(120);

/// Below either threshold the screenshot counts as blank.
const MIN_NON_BACKGROUND_FRACTION: f64 = 0.01;
const MIN_DISTINCT_COLOURS: usize = 8;

/// What the screenshot looked like.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ScreenshotCheck {
    /// Size of the PNG in pixels.
    pub width: u32,
    pub height: u32,
    /// Share of pixels that are neither white nor near-white (any channel below 240).
    pub non_background_fraction: f64,
    /// Number of distinct RGB colours in the image.
    pub distinct_colours: usize,
}

impl fmt::Display for ScreenshotCheck {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}×{} px, {:.1}% non-background pixels, {} distinct colours",
            self.width,
            self.height,
            100.0 * self.non_background_fraction,
            self.distinct_colours
        )
    }
}

/// Renders `html` in headless Chromium, writes the screenshot to `png` and checks that it is
/// not blank. Fails when Chromium is missing, does not finish within two minutes, writes no
/// PNG, or the PNG looks blank (under 1% non-background pixels or under 8 colours).
pub fn screenshot(html: &Path, png: &Path) -> Result<ScreenshotCheck> {
    let chromium = chromium()?;
    let name = chromium.display();
    let html = html.canonicalize().with_context(|| format!("the report page {}", html.display()))?;
    let png = std::path::absolute(png).with_context(|| format!("the screenshot path {}", png.display()))?;
    if let Some(parent) = png.parent() {
        fs::create_dir_all(parent).with_context(|| format!("creating {}", parent.display()))?;
    }
    // A stale screenshot must not pass for a fresh one.
    match fs::remove_file(&png) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(e).with_context(|| format!("removing the old {}", png.display())),
    }

    let scratch =
        tempfile::Builder::new().prefix("xtask-chromium-").tempdir().context("creating a folder for Chromium")?;
    let profile = scratch.path().join("profile");
    let log_path = scratch.path().join("chromium.log");
    let log = fs::File::create(&log_path).with_context(|| format!("creating {}", log_path.display()))?;
    let args = [
        "--headless".to_string(),
        "--no-sandbox".into(),
        "--disable-gpu".into(),
        "--disable-quic".into(),
        "--no-first-run".into(),
        "--disable-background-networking".into(),
        "--disable-component-update".into(),
        "--disable-sync".into(),
        format!("--user-data-dir={}", profile.display()),
        "--hide-scrollbars".into(),
        format!("--window-size={},{}", WINDOW.0, WINDOW.1),
        format!("--screenshot={}", png.display()),
        file_url(&html),
    ];
    let started = Instant::now();
    let mut command = Command::new(&chromium);
    command.args(&args).stdin(Stdio::null()).stdout(log.try_clone()?).stderr(log);
    // Its own process group, so that a hung browser can be ended with all its helpers.
    std::os::unix::process::CommandExt::process_group(&mut command, 0);
    let mut child = command.spawn().with_context(|| format!("starting {name}"))?;
    let status = loop {
        if let Some(status) = child.try_wait()? {
            break status;
        }
        if started.elapsed() > TIMEOUT {
            let _ = Command::new("kill").args(["-KILL", "--", &format!("-{}", child.id())]).status();
            let _ = child.kill();
            let _ = child.wait();
            bail!("{name} did not finish within {}s; its output:\n{}", TIMEOUT.as_secs(), tail(&log_path));
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    let output = tail(&log_path);
    if !status.success() || !png.exists() {
        bail!(
            "{name} exited with {status} {} {}; its output:\n{output}",
            if png.exists() { "after writing" } else { "without writing" },
            png.display()
        );
    }

    let image = image::ImageReader::open(&png)
        .with_context(|| format!("opening {}", png.display()))?
        .with_guessed_format()?
        .decode()
        .with_context(|| format!("decoding {}", png.display()))?
        .to_rgb8();
    let check = measure(&image);
    not_blank(&check).with_context(|| format!("the screenshot {} of {}", png.display(), html.display()))?;
    Ok(check)
}

/// Counts the pixels that are not (near-)white and the distinct colours.
fn measure(image: &image::RgbImage) -> ScreenshotCheck {
    let mut colours = HashSet::new();
    let mut non_background = 0usize;
    for p in image.pixels() {
        colours.insert(p.0);
        if p.0.iter().any(|c| *c < 240) {
            non_background += 1;
        }
    }
    let total = (image.width() as usize * image.height() as usize).max(1);
    ScreenshotCheck {
        width: image.width(),
        height: image.height(),
        non_background_fraction: non_background as f64 / total as f64,
        distinct_colours: colours.len(),
    }
}

fn not_blank(check: &ScreenshotCheck) -> Result<()> {
    if check.non_background_fraction < MIN_NON_BACKGROUND_FRACTION || check.distinct_colours < MIN_DISTINCT_COLOURS {
        bail!(
            "the page looks blank: {check} (expected at least {:.0}% non-background pixels and {MIN_DISTINCT_COLOURS} colours)",
            100.0 * MIN_NON_BACKGROUND_FRACTION
        );
    }
    Ok(())
}

/// `file://` URL of an absolute path, with everything but unreserved characters and `/`
/// percent-encoded.
fn file_url(path: &Path) -> String {
    let mut url = String::from("file://");
    for b in path.to_string_lossy().bytes() {
        if b.is_ascii_alphanumeric() || b"/-._~".contains(&b) {
            url.push(b as char);
        } else {
            url.push_str(&format!("%{b:02X}"));
        }
    }
    url
}

/// The last lines of Chromium's output, for error messages.
fn tail(path: &Path) -> String {
    let text = fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(20)..].join("\n")
}

/// Chromium, found on `PATH` under any of its usual names.
fn chromium() -> Result<PathBuf> {
    chromium_on(&std::env::var_os("PATH").unwrap_or_default())
}

fn chromium_on(path: &OsStr) -> Result<PathBuf> {
    find_on_path(path, &CHROMIUM_NAMES).with_context(|| {
        format!(
            "no Chromium on PATH (looked for {}): install Debian's package with `apt-get install -y chromium` \
             to screenshot the report",
            CHROMIUM_NAMES.join(", ")
        )
    })
}

/// The first executable file named one of `names` in the folders of `path` (a `PATH`-style
/// list). Folders come first, names second: the order of `PATH` says which install the user
/// prefers.
fn find_on_path(path: &OsStr, names: &[&str]) -> Option<PathBuf> {
    std::env::split_paths(path).filter(|dir| !dir.as_os_str().is_empty()).find_map(|dir| {
        names
            .iter()
            .map(|name| dir.join(name))
            .find(|candidate| fs::metadata(candidate).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0))
    })
}

#[cfg(test)]
mod tests {
    use parity::report::{CaseReport, Heatmap, Row, Status};

    use super::*;

    fn chromium_missing() -> bool {
        match chromium() {
            Ok(_) => false,
            Err(e) => {
                println!("SKIP: {e:#}");
                true
            }
        }
    }

    /// Where the tests leave their pages and screenshots, to look at.
    fn out_dir() -> PathBuf {
        let dir = std::env::temp_dir().join("xtask-report-screenshot");
        fs::create_dir_all(&dir).unwrap();
        dir
    }

    fn compared(case: &str, mode: &str, tap: &str, max_abs: f64, cosine: f64, atol: f64, fail: bool) -> Row {
        let total = 4096;
        let mismatched = if fail { 301 } else { 0 };
        Row {
            case: case.into(),
            mode: mode.into(),
            tap: tap.into(),
            stage: contract::Tap::parse(tap),
            status: if fail { Status::Fail } else { Status::Pass },
            atol: Some(atol),
            rtol: Some(1e-3),
            total,
            mismatched,
            mismatched_pct: 100.0 * mismatched as f64 / total as f64,
            max_abs: Some(max_abs),
            max_abs_index: Some(vec![0, 17, 311]),
            max_abs_location: tap.starts_with("vision.").then(|| "image 0, patch row 3 col 5, channel 311".to_string()),
            max_rel: Some(max_abs * 40.0),
            max_rel_index: Some(vec![0, 2, 9]),
            cosine: Some(cosine),
            argmax_expected: None,
            argmax_actual: None,
            top_k_overlap: None,
            noise_ratio: None,
            k: None,
            detail: fail.then(|| {
                format!(
                    "{tap}: {mismatched} of {total} elements exceed |Δ| ≤ atol + rtol·|expected| (atol {atol:e}, rtol 1e-3)\n  worst: index [0, 17, 311] expected 0.8125 actual 0.8431 |Δ| {max_abs:.3e}\n  <mismatch listing truncated>"
                )
            }),
        }
    }

    /// A run with a positional bug entering at `vision.block.3` (a row of patches shifted
    /// by one) that then spreads through the end-to-end modes.
    fn synthetic_cases() -> Vec<CaseReport> {
        let case = "two-cats";
        // Qwen2-VL-2B's depth: enough stages that the plots must thin their labels.
        let (blocks, layers) = (32, 28);
        let mut rows = Vec::new();
        let mut heatmaps = Vec::new();
        let (gh, gw) = (14, 20);
        let grid = |fault: bool, scale: f64, seed: usize| -> Vec<f64> {
            (0..gh * gw)
                .map(|i| {
                    let (r, c) = (i / gw, i % gw);
                    let noise = 1.0 + ((i * 7919 + seed * 104729) % 97) as f64 / 40.0;
                    let base = scale * noise;
                    if fault && r == 6 {
                        base * 3e3
                    } else if fault && r > 6 {
                        base * 8.0
                    } else if c == 0 && r == 0 {
                        0.0
                    } else {
                        base
                    }
                })
                .collect()
        };

        // vision-teacher-forced: clean until block 3.
        let mode = "vision-teacher-forced";
        let mut vision_taps = vec!["vision.patch_embed".to_string(), "vision.pos_embed".into()];
        vision_taps.extend((0..blocks).map(|i| format!("vision.block.{i}")));
        vision_taps.extend(["vision.tower".into(), "vision.projector".into()]);
        for (k, tap) in vision_taps.iter().enumerate() {
            let fault = k >= 5;
            let err = if k == 0 {
                0.0
            } else if fault {
                2e-2 * 1.05f64.powi(k as i32)
            } else {
                3e-7 * 1.6f64.powi(k as i32)
            };
            let cos = if fault { 1.0 - 2e-4 * k as f64 } else { 1.0 - 1e-13 * k as f64 };
            rows.push(compared(case, mode, tap, err, cos, 1e-4, fault));
            if tap == "vision.patch_embed" || tap.starts_with("vision.block.") && k % 4 == 1 || tap == "vision.tower" {
                heatmaps.push(Heatmap {
                    mode: mode.into(),
                    tap: tap.clone(),
                    image: 0,
                    grid_h: gh,
                    grid_w: gw,
                    max_abs: grid(fault, err.max(1e-9) / 4e3, k),
                });
            }
        }
        heatmaps.push(Heatmap {
            mode: mode.into(),
            tap: "vision.projector".into(),
            image: 1,
            grid_h: gh / 2,
            grid_w: gw / 2,
            max_abs: (0..gh * gw / 4).map(|i| 1e-5 * (1.0 + (i % 10) as f64)).collect(),
        });

        // lm-teacher-forced: clean all the way.
        let mut lm_taps = vec!["lm.image_embeds".to_string()];
        lm_taps.extend((0..layers).map(|i| format!("lm.layer.{i}")));
        lm_taps.extend(["lm.norm".into(), "lm.logits_last".into()]);
        for (k, tap) in lm_taps.iter().enumerate() {
            let mut row = compared(
                case,
                "lm-teacher-forced",
                tap,
                1e-6 * 1.25f64.powi(k as i32),
                1.0 - 1e-10 * (k + 1) as f64,
                1e-4,
                false,
            );
            if tap == "lm.logits_last" {
                (row.argmax_expected, row.argmax_actual, row.top_k_overlap) = (Some(31337), Some(31337), Some(1.0));
            }
            rows.push(row);
        }
        // from-pixel-values: the vision fault reaches the text model.
        for (k, tap) in lm_taps.iter().enumerate() {
            let mut row = compared(
                case,
                "from-pixel-values",
                tap,
                4e-2 * 1.05f64.powi(k as i32),
                1.0 - 1e-4 * (k + 1) as f64,
                1e-4,
                true,
            );
            if tap == "lm.logits_last" {
                (row.argmax_expected, row.argmax_actual, row.top_k_overlap) = (Some(31337), Some(2024), Some(0.6));
            }
            if tap == "lm.layer.9" {
                row.max_abs = Some(f64::NAN);
                row.cosine = Some(f64::NAN);
            }
            rows.push(row);
        }
        // from-image-files: preprocessing differs slightly, then the same fault.
        rows.push(compared(case, "from-image-files", "input.input_ids", 0.0, 1.0, 0.0, false));
        rows.push(Row::skipped(
            case,
            replay::Mode::FromImageFiles,
            contract::Stage::ImageGridThw.tap(),
            "not recorded by this reference version".into(),
        ));
        rows.push(compared(case, "from-image-files", "input.pixel_values", 3e-3, 0.99999, 1e-2, false));
        for (k, tap) in vision_taps.iter().chain(&lm_taps).enumerate() {
            let fault = k >= 5;
            let err = if fault { 5e-2 * 1.03f64.powi(k as i32) } else { 2e-3 * 1.3f64.powi(k as i32) };
            rows.push(compared(
                case,
                "from-image-files",
                tap,
                err,
                1.0 - if fault { 4e-4 } else { 2e-6 } * (k + 1) as f64,
                1e-2,
                fault,
            ));
        }
        heatmaps.push(Heatmap {
            mode: "from-image-files".into(),
            tap: "vision.block.3".into(),
            image: 0,
            grid_h: gh,
            grid_w: gw,
            max_abs: grid(true, 1e-5, 99),
        });
        let first = CaseReport { case: case.into(), rows, heatmaps };

        let clean_rows = (0..layers)
            .map(|i| {
                compared(
                    "text-only",
                    "lm-teacher-forced",
                    &format!("lm.layer.{i}"),
                    2e-6 * (i + 1) as f64,
                    1.0 - 1e-11,
                    1e-4,
                    false,
                )
            })
            .collect();
        let clean = CaseReport { case: "text-only".into(), rows: clean_rows, heatmaps: vec![] };
        let skipped = CaseReport {
            case: "large-checkpoint".into(),
            rows: vec![Row::skipped(
                "large-checkpoint",
                replay::Mode::FromImageFiles,
                contract::Stage::VisionPatchEmbed.tap(),
                "checkpoint not on this machine".into(),
            )],
            heatmaps: vec![],
        };
        vec![first, clean, skipped]
    }

    #[test]
    fn the_report_of_a_synthetic_run_screenshots_as_a_non_blank_page() {
        if chromium_missing() {
            return;
        }
        let dir = out_dir();
        let html = dir.join("report.html");
        let png = dir.join("report.png");
        fs::write(&html, parity::html::render("Parity report (synthetic)", &synthetic_cases()).unwrap()).unwrap();
        let check = screenshot(&html, &png).unwrap();
        println!("{}: {check}", png.display());
        assert_eq!((check.width, check.height), WINDOW);
        assert!(check.non_background_fraction > 0.05, "{check}");
        assert!(check.distinct_colours > 100, "{check}");
    }

    #[test]
    fn a_blank_page_is_reported_as_blank() {
        if chromium_missing() {
            return;
        }
        let dir = out_dir();
        let html = dir.join("blank.html");
        fs::write(&html, "<!DOCTYPE html><html><body></body></html>").unwrap();
        let err = screenshot(&html, &dir.join("blank.png")).unwrap_err();
        assert!(format!("{err:#}").contains("looks blank"), "{err:#}");
    }

    #[test]
    fn an_all_white_image_measures_as_blank() {
        let white = image::RgbImage::from_pixel(100, 50, image::Rgb([255, 255, 255]));
        let check = measure(&white);
        assert_eq!(
            check,
            ScreenshotCheck { width: 100, height: 50, non_background_fraction: 0.0, distinct_colours: 1 }
        );
        assert!(not_blank(&check).is_err());
    }

    #[test]
    fn chromium_is_found_on_path_under_any_of_its_names_and_only_if_executable() {
        let dirs = [tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap()];
        let put = |dir: &tempfile::TempDir, name: &str, mode: u32| {
            let file = dir.path().join(name);
            fs::write(&file, "#!/bin/sh\n").unwrap();
            fs::set_permissions(&file, fs::Permissions::from_mode(mode)).unwrap();
            file
        };
        put(&dirs[0], "chromium", 0o644);
        let wanted = put(&dirs[1], "google-chrome", 0o755);
        let path = std::env::join_paths(dirs.iter().map(|d| d.path())).unwrap();
        assert_eq!(
            find_on_path(&path, &CHROMIUM_NAMES),
            Some(wanted),
            "the non-executable {} must be passed over",
            dirs[0].path().join("chromium").display()
        );
        let missing = format!("{:#}", chromium_on(OsStr::new("")).unwrap_err());
        assert!(missing.contains("apt-get install -y chromium"), "an empty PATH: {missing}");
        let first = put(&dirs[0], "chromium-browser", 0o755);
        assert_eq!(find_on_path(&path, &CHROMIUM_NAMES), Some(first), "the earlier folder on PATH wins");
    }

    #[test]
    fn file_urls_percent_encode_unusual_characters() {
        assert_eq!(file_url(Path::new("/tmp/a b/r#1.html")), "file:///tmp/a%20b/r%231.html");
    }
}
