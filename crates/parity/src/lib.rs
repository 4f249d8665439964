//! Shared machinery of the parity workspace: the manifest (`fixtures.toml`), `.npy`
//! dumps, SHA-256 digests, the tap contract and the comparison semantics of ARCHITECTURE.md.

pub mod array;
pub mod batch;
pub mod compare;
pub mod digest;
#[cfg(feature = "html")]
pub mod html;
pub mod locate;
pub mod manifest;
pub mod mode;
pub mod npy;
pub mod report;
