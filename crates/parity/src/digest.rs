//! SHA-256 digests of fixture files and the check that a file is the one recorded.

use std::fmt;
use std::fs::File;
use std::io::{self, Read};
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

/// Lowercase hex SHA-256 of a file's bytes, read in blocks so a multi-GB shard does not
/// need to fit in memory.
pub fn sha256_file(path: &Path) -> io::Result<String> {
    let mut file = File::open(path)?;
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = file.read(&mut buf)?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
    }
    Ok(hex(&hasher.finalize()))
}

/// The SHA-256 of a file, or of a folder (a video's frames): the digest of its listing, one
/// `name<TAB>sha256<LF>` line per regular file in byte order of the names, so a frame renamed,
/// added, removed or changed changes it.
pub fn sha256_path(path: &Path) -> io::Result<String> {
    if !path.is_dir() {
        return sha256_file(path);
    }
    let mut entries = Vec::new();
    for entry in std::fs::read_dir(path)? {
        let entry = entry?;
        if entry.file_type()?.is_file() {
            entries.push(entry.path());
        }
    }
    entries.sort_by(|a, b| a.file_name().cmp(&b.file_name()));
    let mut listing = String::new();
    for file in entries {
        let name = file.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
        listing.push_str(&format!("{name}\t{}\n", sha256_file(&file)?));
    }
    Ok(sha256_bytes(listing.as_bytes()))
}

/// Lowercase hex SHA-256 of bytes.
pub fn sha256_bytes(bytes: &[u8]) -> String {
    hex(&Sha256::digest(bytes))
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Why a recorded file failed its check.
#[derive(Debug)]
pub enum DigestError {
    /// The file is not there (or cannot be read).
    Missing { path: PathBuf, source: io::Error },
    /// The file's bytes are not the recorded ones.
    Mismatch { path: PathBuf, expected: String, actual: String },
}

impl fmt::Display for DigestError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DigestError::Missing { path, source } => write!(
                f,
                "{}: cannot read a file that fixtures.toml records ({source}); restore it with \
                 `git checkout -- {}` or re-create it with `cargo xtask capture`",
                path.display(),
                path.display()
            ),
            DigestError::Mismatch { path, expected, actual } => write!(
                f,
                "{}: SHA-256 mismatch\n  expected (fixtures.toml): {expected}\n  actual   (on disk):      {actual}\n\
                 The file changed after it was recorded. If the change is intended, re-run \
                 `cargo xtask capture` (dumps) or `cargo xtask make-model` (the iteration model) \
                 so the manifest records the new digest; otherwise restore the file with git.",
                path.display()
            ),
        }
    }
}

impl std::error::Error for DigestError {}

/// Checks that `path` exists and its SHA-256 ([`sha256_path`] for a folder) is `expected`.
pub fn verify_file(path: &Path, expected: &str) -> Result<(), DigestError> {
    let actual = sha256_path(path).map_err(|source| DigestError::Missing { path: path.to_owned(), source })?;
    if actual.eq_ignore_ascii_case(expected) {
        Ok(())
    } else {
        Err(DigestError::Mismatch { path: path.to_owned(), expected: expected.to_owned(), actual })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn digest_of_known_bytes_matches_the_sha256_test_vector() {
        assert_eq!(sha256_bytes(b"abc"), "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");
    }

    #[test]
    fn a_changed_byte_names_the_file_and_both_digests() {
        let dir = std::env::temp_dir().join(format!("parity-digest-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("x.bin");
        std::fs::write(&path, b"abd").unwrap();
        let expected = sha256_bytes(b"abc");
        let err = verify_file(&path, &expected).unwrap_err().to_string();
        std::fs::remove_dir_all(&dir).unwrap();
        assert!(err.contains("x.bin"), "message does not name the file: {err}");
        assert!(err.contains(&expected), "message does not give the expected digest: {err}");
        assert!(err.contains(&sha256_bytes(b"abd")), "message does not give the actual digest: {err}");
    }

    #[test]
    fn a_folders_digest_changes_with_a_frames_bytes_or_name() {
        let dir = std::env::temp_dir().join(format!("parity-digest-folder-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(dir.join("sub")).unwrap();
        std::fs::write(dir.join("a.png"), b"one").unwrap();
        std::fs::write(dir.join("b.png"), b"two").unwrap();
        let listing = format!("a.png\t{}\nb.png\t{}\n", sha256_bytes(b"one"), sha256_bytes(b"two"));
        let first = sha256_path(&dir).unwrap();
        std::fs::write(dir.join("b.png"), b"tw0").unwrap();
        let changed = sha256_path(&dir).unwrap();
        std::fs::rename(dir.join("b.png"), dir.join("c.png")).unwrap();
        let renamed = sha256_path(&dir).unwrap();
        let verified = verify_file(&dir, &renamed).is_ok();
        std::fs::remove_dir_all(&dir).unwrap();
        assert_eq!(first, sha256_bytes(listing.as_bytes()), "the digest of the listing, subfolders left out");
        assert!(first != changed && changed != renamed, "a changed frame and a renamed frame each move it");
        assert!(verified, "a folder verifies against its own digest");
    }

    #[test]
    fn a_missing_file_is_reported_not_panicked_on() {
        let err = verify_file(Path::new("/nonexistent/neuron/parity.npy"), "00").unwrap_err();
        assert!(matches!(err, DigestError::Missing { .. }), "{err}");
    }
}
