//! sanlb balances iSCSI traffic across the gateways of an IP SAN.
//!
//! The four stages of the mission and where they live:
//! 1. count: [`dataplane`] loads the XDP/TC programs of `sanlb-ebpf` and reads
//!    their pinned maps; [`counters`] presents them;
//! 2. aggregate: [`controller`] (the statistical server) with [`stats`],
//!    fed by [`agent`]s over the [`proto`] API;
//! 3. optimise: [`optimize`], pure, and [`plan`], its a-priori front end;
//! 4. enforce: [`enforce`], address ownership on a gateway's NIC.
//!
//! `docs/architecture.md` has the map of the code and its invariants.
#![deny(missing_docs)]

pub mod agent;
pub mod controller;
pub mod counters;
pub mod dataplane;
pub mod enforce;
pub mod iscsi;
pub mod optimize;
pub mod plan;
pub mod portal;
pub mod proto;
pub mod stats;
