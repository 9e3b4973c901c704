//! sanlb balances iSCSI traffic across the gateways of an IP SAN.
//!
//! The four stages of the mission and where they live:
//! 1. count: [`dataplane`] loads the XDP/TC programs of `sanlb-ebpf` and reads
//!    their pinned maps; [`counters`] presents them;
//! 2. aggregate: [`controller`] (the statistical server), fed by
//!    [`agent`]s over the [`proto`] API, or an operator's [`traffic`] matrix;
//! 3. optimise: [`optimize`], pure, and [`plan`], its a-priori front end;
//! 4. enforce: [`enforce`], address ownership on a gateway's NIC.
//!
//! [`config`] reads `/etc/sanlb/sanlb.toml`, the settings of every role.
//!
//! `docs/architecture.md` has the map of the code and its invariants.
#![deny(missing_docs)]

pub mod agent;
pub mod cluster;
pub mod config;
pub mod controller;
pub mod counters;
pub mod dataplane;
pub mod enforce;
pub mod iscsi;
pub mod isns;
pub mod optimize;
pub mod plan;
pub mod portal;
pub mod proto;
pub mod traffic;

/// `a: b: c` for an error and its sources, for logs (where `{:#}` of
/// anyhow is not at hand).
pub fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(inner) = cur {
        s.push_str(": ");
        s.push_str(&inner.to_string());
        cur = inner.source();
    }
    s
}
