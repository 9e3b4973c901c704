//! Test support shared by sanlb's tests and benchmarks (aya keeps its test
//! programs and harness in a test crate the same way). Nothing here ships in
//! the `sanlb` library or binary: it is a dev-dependency only.
//!
//! Each module is used by several test binaries, so unlike helper folders
//! under `tests/` it needs no `#[allow(dead_code)]`.
