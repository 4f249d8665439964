//! The CI gate generated from `fixtures.toml` by `crates/neuron/build.rs`.

mod support;

include!(concat!(env!("OUT_DIR"), "/fixtures_generated.rs"));
