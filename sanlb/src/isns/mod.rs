//! iSNS (RFC 4171) client side of the Storage Name Server mode: sanlb keeps
//! an iSNS server's registrations equal to its routing map, so that each
//! host, querying the server for its targets (open-iscsi's `iscsiadm -m
//! discovery -t isns`), is told the portal of the gateway the map assigns to
//! its (host, target) pair — the patent's claim 5.
//!
//! No Rust iSNS crate exists, so iSNSP is written here by hand:
//! - [`codec`]: the PDU header, TLV attributes and message sections, strict
//!   decoding of replies;
//! - [`client`]: one request at a time over TCP (port 3205), timeouts,
//!   transaction ids checked, reconnection after any failure;
//! - [`state`]: the server's objects read back as a control node;
//! - [`reconcile`]: the map → registrations diff and [`Reconciler::sync`].
//!
//! Authentication: sanlb speaks unauthenticated iSNSP and needs the server
//! at `Security = 0` (on an isolated management network). open-iscsi never
//! signs its discovery queries (`usr/discovery.c` and `usr/discoveryd.c` set
//! `ic_security = 0`), and an open-isns server with `Security = 1` drops
//! every unsigned message ("Ignoring unauthenticated message", checked on
//! 0.101): hosts would see nothing however sanlb registers. A reply carrying
//! an authentication block is refused with an error saying so.
//! `docs/isns.md` has the details, the server's configuration and figures.
//!
//! ```no_run
//! # async fn demo() -> Result<(), sanlb::isns::IsnsError> {
//! use sanlb::isns::{ClientConfig, Desired, Reconciler, ReconcilerConfig};
//!
//! let mut map = Desired::new();
//! map.add_target("iqn.2024-01.lab:disk1", ["198.18.1.1:3260".parse().unwrap()])
//!     .assign("iqn.2024-01.lab:host1", "iqn.2024-01.lab:disk1", "198.18.1.1:3260".parse().unwrap());
//! let client = ClientConfig::new("isns.example", "iqn.2024-01.lab:sanlb");
//! let mut reconciler = Reconciler::new(client, ReconcilerConfig::default())?;
//! let report = reconciler.sync(&map).await?;
//! println!("{} added, {} removed", report.added, report.removed);
//! # Ok(()) }
//! ```

pub mod client;
pub mod codec;
pub mod reconcile;
pub mod state;

pub use client::{Client, ClientConfig, ClientError};
pub use codec::{CodecError, Function, Status};
pub use reconcile::{
    Ambiguity, CountersSnapshot, Desired, IsnsCounters, Portal, Reconciler, ReconcilerConfig,
    SyncReport,
};
pub use state::{RawPortal, ServerState};

/// Errors of the iSNS mode.
#[derive(Debug, thiserror::Error)]
pub enum IsnsError {
    /// Talking to the server failed, or it refused a request.
    #[error(transparent)]
    Client(#[from] ClientError),
    /// A reply that decodes but does not make sense.
    #[error("{function} reply: {why}")]
    Reply {
        /// The request.
        function: Function,
        /// What is wrong.
        why: String,
    },
    /// The server lists more objects than allowed.
    #[error("the server lists more than {max} {what}")]
    TooMany {
        /// Object kind.
        what: &'static str,
        /// The limit.
        max: usize,
    },
    /// The desired state is unusable.
    #[error("isns map: {0}")]
    Desired(String),
    /// A setting is unusable.
    #[error("invalid isns setting {field}: {why}")]
    Config {
        /// The setting.
        field: &'static str,
        /// Why.
        why: String,
    },
    /// The server still differs after the last round.
    #[error(
        "the server's registrations still differ from the map after {rounds} rounds: {remaining}"
    )]
    NotConverged {
        /// Rounds made.
        rounds: u32,
        /// What is left to do.
        remaining: String,
    },
}
