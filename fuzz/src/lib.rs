//! Fuzz target bodies, shared by the libFuzzer binaries and by the corpus-replay test of the
//! main workspace (`e2e/tests/fuzz_corpus.rs` includes `targets.rs`).
#![forbid(unsafe_code)]

#[path = "targets.rs"]
pub mod targets;
