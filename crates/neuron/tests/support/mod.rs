//! Assertions shared by the generated parity tests.

use std::path::Path;

/// Fails with the file, the manifest entry and both digests when a recorded file changed.
pub fn assert_digest(path: &str, expected: &str, entry: &str) {
    if let Err(e) = parity::digest::verify_file(Path::new(path), expected) {
        panic!("{e}\n(recorded at {entry} in fixtures.toml)");
    }
}
