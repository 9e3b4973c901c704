//! Test support shared by sanlb's tests and benchmarks (aya keeps its test
//! programs and harness in a test crate the same way). Nothing here ships in
//! the `sanlb` library or binary: it is a dev-dependency only.
//!
//! - [`testrun`]: the counting programs on crafted frames with
//!   `BPF_PROG_TEST_RUN`, and the empty XDP program benchmarks compare against;
//! - [`frames`]: Ethernet frames built field by field, malformed ones included;
//! - [`model`]: what the programs must count for one frame, written from the
//!   rules of docs/dataplane.md.
//!
//! Each module is used by several test binaries, so unlike helper folders
//! under `tests/` it needs no `#[allow(dead_code)]`. Calling aya directly is
//! fine here: "only `dataplane` calls aya" holds for the product.

pub mod frames;
pub mod model;
pub mod testrun;
