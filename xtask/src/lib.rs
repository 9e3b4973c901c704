//! sanlb's task runner as a library: the SAN lab that `cargo xtask demo` and
//! the privileged end-to-end tests (`xtask/tests/`, `sanlb/tests/`) build on.
//!
//! This crate never depends on the `sanlb` crate: `cargo xtask setup` must
//! build on a machine that cannot compile sanlb yet. Programs are run as
//! processes instead (the `sanlb` binary, tgtd, libiscsi's tools).

#![deny(missing_docs)]

pub mod lab;
