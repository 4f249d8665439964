//! The CI gate generated from `fixtures.toml` by `crates/replay/build.rs`: every recorded file
//! against its digest, every case × tap × mode against the reference.

mod support;

include!(concat!(env!("OUT_DIR"), "/fixtures_generated.rs"));
