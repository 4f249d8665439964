//! Turning what the harness wrote into the stored dumps: the case's tap selection, the row it
//! keeps, gzip-compressed `.npy` with a digest, the reference's bf16 noise, and the swap that
//! replaces a case's dumps only once the new ones are complete.

use std::path::{Path, PathBuf};

use anyhow::{bail, Result};
use contract::{ArrayDtype, Tap};
use parity::array::Array;
use parity::manifest::{CaseRef, Dump, DumpKey};

use super::listing::CaptureListing;

/// The dumps a case keeps of what the harness wrote into `dir` (its `taps` selection, cut to
/// its `rows`), with their digests; the others and `capture.json` are deleted.
pub(super) fn kept_dumps(case: CaseRef, listing: &CaptureListing, dir: &Path) -> Result<Vec<(DumpKey, Dump)>> {
    // capture.json served its purpose; the manifest is the record.
    std::fs::remove_file(dir.join("capture.json"))?;
    let kept = |tap: Tap| case.case.taps.as_ref().is_none_or(|patterns| patterns.iter().any(|p| p.matches(tap)));
    let mut dumps = Vec::new();
    for t in &listing.taps {
        if !kept(t.tap.tap) {
            std::fs::remove_file(raw_path(dir, t.tap))?;
            continue;
        }
        let (stored, shape) = store(case, t.tap, dir)?;
        let sha256 = parity::digest::sha256_file(&stored)?;
        dumps.push((t.tap, Dump { sha256, shape, dtype: t.dtype, noise: None }));
    }
    Ok(dumps)
}

/// Records, for each float dump of a bf16 case, the reference's own deviation between its
/// bf16 run (the stored dumps in `dir`) and its f32 run (the harness's files in `f32_dir`),
/// over the rows the case keeps.
pub(super) fn record_noise(case: CaseRef, dumps: &mut [(DumpKey, Dump)], dir: &Path, f32_dir: &Path) -> Result<()> {
    for (tap, dump) in dumps.iter_mut().filter(|(_, d)| d.dtype == ArrayDtype::F32) {
        let bf16 = parity::npy::read_npy(&stored_path(case, *tap, dir))?;
        let f32 = cut_rows(case, tap.tap, parity::npy::read_npy(&raw_path(f32_dir, *tap))?)?;
        let Some(noise) = parity::compare::noise(&f32, &bf16) else {
            bail!(
                "{tap}: the bf16 run gave {:?} and the f32 run {:?} (or a non-finite value), so the reference's \
                 noise cannot be measured; for gen.* taps this means the two runs generated different tokens \
                 — fewer `generate` steps keep them comparable",
                bf16.shape,
                f32.shape
            );
        };
        dump.noise = Some(noise);
    }
    Ok(())
}

/// Where the harness writes a tap: `<dir>/<tap>.npy`, or `<dir>/<part>/<tap>.npy`.
pub(super) fn raw_path(dir: &Path, key: DumpKey) -> PathBuf {
    part_dir(dir, key).join(format!("{}.npy", key.tap))
}

/// Where the stored dump of a tap goes in `dir`: the file name the manifest gives it, in its
/// part's folder.
pub(super) fn stored_path(case: CaseRef, key: DumpKey, dir: &Path) -> PathBuf {
    part_dir(dir, key).join(case.dump_path_at(key).file_name().expect("a dump path names a file"))
}

fn part_dir(dir: &Path, key: DumpKey) -> PathBuf {
    match key.part {
        Some(part) => dir.join(part.to_string()),
        None => dir.to_owned(),
    }
}

/// Turns the harness's `<tap>.npy` in `dir` into the stored dump: cut to the one row the case
/// keeps (`rows` in the manifest) and gzip-compressed under the name the manifest gives it.
/// Returns the stored file and the kept shape.
pub(super) fn store(case: CaseRef, key: DumpKey, dir: &Path) -> Result<(PathBuf, Vec<usize>)> {
    let raw = raw_path(dir, key);
    let array = cut_rows(case, key.tap, parity::npy::read_npy(&raw)?)?;
    let stored = stored_path(case, key, dir);
    parity::npy::write_npy(&stored, &array)?;
    std::fs::remove_file(&raw)?;
    Ok((stored, array.shape))
}

/// `array` cut to the one row the case keeps of `tap` (`rows` in the manifest), if any.
pub(super) fn cut_rows(case: CaseRef, tap: Tap, array: Array) -> Result<Array> {
    let Some(pick) = case.row_pick(tap) else { return Ok(array) };
    let Some(&rows) = array.shape.first() else { bail!("{tap}: a scalar has no rows to keep") };
    Ok(array.select_rows(&[pick.index(rows)])?)
}

/// Replaces `final_dir` by `tmp_dir` with renames, so the old dumps survive until the new
/// ones are complete.
pub(super) fn swap_in(tmp_dir: &Path, final_dir: &Path) -> Result<()> {
    let old = final_dir.with_file_name(format!(
        ".old-{}-{}",
        final_dir.file_name().unwrap().to_string_lossy(),
        std::process::id()
    ));
    if final_dir.exists() {
        std::fs::rename(final_dir, &old)?;
    }
    std::fs::rename(tmp_dir, final_dir)?;
    if old.exists() {
        std::fs::remove_dir_all(&old)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use contract::Stage;
    use parity::manifest::Manifest;

    /// A manifest with one case that keeps the last row of lm taps and only `lm.*` taps.
    fn manifest() -> Manifest {
        let text = r#"
            [models.m]
            path = "m"
            [cases.c]
            model = "m"
            prompt = "p"
            taps = ["lm.*"]
            rows = { "lm.*" = "last" }
        "#;
        Manifest::parse(text, Path::new("fixtures.toml"), Path::new(".")).unwrap()
    }

    fn scratch(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("xtask-store-{}-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }

    #[test]
    fn a_kept_row_is_cut_and_a_tap_without_rows_stays_whole() {
        let m = manifest();
        let case = m.case("c").unwrap();
        let three = Array::f32(vec![3, 2], vec![1.0, 2.0, 3.0, 4.0, 5.0, 6.0]);
        let cut = cut_rows(case, Stage::LmNorm.tap(), three.clone()).unwrap();
        assert_eq!(cut, Array::f32(vec![1, 2], vec![5.0, 6.0]), "the last row of lm.norm");
        let logits = Array::f32(vec![3], vec![1.0, 2.0, 3.0]);
        assert_eq!(cut_rows(case, Stage::LmLogitsLast.tap(), logits.clone()).unwrap(), logits, "one position already");
        assert_eq!(cut_rows(case, Stage::VisionTower.tap(), three.clone()).unwrap(), three, "no row kept: whole");
    }

    #[test]
    fn the_kept_taps_are_stored_compressed_and_the_others_deleted() {
        let m = manifest();
        let case = m.case("c").unwrap();
        let dir = scratch("kept");
        let norm = Array::f32(vec![2, 2], vec![1.0, 2.0, 3.0, 4.0]);
        parity::npy::write_npy(&raw_path(&dir, Stage::LmNorm.tap().into()), &norm).unwrap();
        parity::npy::write_npy(&raw_path(&dir, Stage::VisionTower.tap().into()), &norm).unwrap();
        let listing = CaptureListing::parse(
            r#"{"taps": [{"tap": "lm.norm", "shape": [2, 2], "dtype": "f32"},
                         {"tap": "vision.tower", "shape": [2, 2], "dtype": "f32"}],
                "threads": 1, "versions": {"transformers": "t", "torch": "t", "numpy": "n", "pillow": "p", "python": "p"}}"#,
        )
        .unwrap();
        std::fs::write(dir.join("capture.json"), "{}").unwrap();
        let dumps = kept_dumps(case, &listing, &dir).unwrap();
        let mut left: Vec<String> =
            std::fs::read_dir(&dir).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect();
        left.sort();
        assert_eq!(left, ["lm.norm.npy.gz"], "the stored dump alone: the raw files, the other tap and the listing go");
        assert_eq!(dumps.len(), 1);
        let (tap, dump) = &dumps[0];
        assert_eq!((*tap, dump.shape.as_slice()), (Stage::LmNorm.tap().into(), &[1, 2][..]), "the last row kept");
        assert_eq!(dump.sha256, parity::digest::sha256_file(&dir.join("lm.norm.npy.gz")).unwrap());
        assert_eq!(parity::npy::read_npy(&dir.join("lm.norm.npy.gz")).unwrap(), Array::f32(vec![1, 2], vec![3.0, 4.0]));
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn swapping_in_replaces_the_old_dumps_whole_and_leaves_no_temporary_folder() {
        let dir = scratch("swap");
        let (tmp, done) = (dir.join(".tmp-c"), dir.join("c"));
        std::fs::create_dir_all(&done).unwrap();
        std::fs::write(done.join("old.npy.gz"), "old").unwrap();
        std::fs::create_dir_all(&tmp).unwrap();
        std::fs::write(tmp.join("new.npy.gz"), "new").unwrap();
        swap_in(&tmp, &done).unwrap();
        let names = |d: &Path| -> Vec<String> {
            let mut n: Vec<String> =
                std::fs::read_dir(d).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect();
            n.sort();
            n
        };
        assert_eq!(names(&done), ["new.npy.gz"], "the new dumps, and only them");
        assert_eq!(names(&dir), ["c"], "no temporary or old folder left beside it");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
