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

/// Checks that `path` exists and its SHA-256 is `expected`.
pub fn verify_file(path: &Path, expected: &str) -> Result<(), DigestError> {
    let actual = sha256_file(path).map_err(|source| DigestError::Missing { path: path.to_owned(), source })?;
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
    fn a_missing_file_is_reported_not_panicked_on() {
        let err = verify_file(Path::new("/nonexistent/neuron/parity.npy"), "00").unwrap_err();
        assert!(matches!(err, DigestError::Missing { .. }), "{err}");
    }
}
