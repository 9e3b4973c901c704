//! The redirecting login portal of pair mode.
//!
//! Hosts log in to a storage entity's own address (port 3260). The portal
//! listening there reads ONE login and answers it; it never carries a
//! session's data:
//! - a normal session: the [`Director`] says where the pair (initiator IP,
//!   target) goes, and the portal answers with a temporary redirect (Status
//!   0x0101, `TargetAddress=DATA_ADDR:PORT`, RFC 7143 §11.13.5), holds the
//!   answer while the director says [`Steer::Hold`] (a move in flight), or
//!   refuses the login ([`Steer::Refuse`]);
//! - a discovery session (`SessionType=Discovery`): the portal completes the
//!   login itself (no authentication, the minimal operational keys),
//!   answers `SendTargets` with the targets the director lists for the
//!   address the host connected to, as `TargetAddress=<that address>:<port>,1`
//!   (so that discovery through the portal leads back to it), answers
//!   Logout, and closes.
//!
//! Initiators that follow a temporary redirect (libiscsi, open-iscsi) come
//! back to the original portal on every reconnect, so a pair moves when its
//! session reconnects: [`crate::enforce::end_connections`] ends it on the
//! old gateway while the director holds, then the director's answer changes
//! to the new gateway.
//!
//! Robustness (see [`PortalConfig`] for the numbers): every connection has a
//! login deadline, a deadline per later PDU and an overall deadline;
//! per-connection memory is bounded by [`Limits`] and
//! the PDU and target counts; connections are capped in total and per peer
//! address. Bad input gets a Login Response with an error status, a Reject,
//! or a closed connection, never a panic or a stuck task. [`PortalMetrics`]
//! counts what happened.
//!
//! ```no_run
//! # async fn demo() -> Result<(), sanlb::portal::PortalError> {
//! use std::sync::Arc;
//! use sanlb::portal::{Portal, PortalConfig, Steer, TableDirector};
//!
//! let director = Arc::new(TableDirector::new());
//! director.set_targets("198.18.1.50".parse().unwrap(), vec!["iqn.2026-11.test.sanlb:t1".into()]);
//! director.steer_all(Steer::Redirect("198.18.2.1:3261".parse().unwrap()));
//! let portal = Portal::new(PortalConfig::default(), director)?;
//! portal.listen("198.18.1.50:3260".parse().unwrap())?; // bound even before the address exists
//! println!("{:?}", portal.metrics());
//! # Ok(()) }
//! ```

mod conn;
mod director;
mod listen;
mod metrics;

use std::{
    collections::HashMap,
    net::{IpAddr, SocketAddr},
    sync::{Arc, Mutex, atomic::AtomicU16},
    time::Duration,
};

use tokio::{
    sync::{Semaphore, watch},
    task::JoinHandle,
};

pub use self::{
    director::TableDirector,
    metrics::{PortalMetrics, RejectCounts},
};
use crate::iscsi::{Limits, LoginStatus};

/// The iSCSI well-known port, where hosts log in.
pub const ISCSI_PORT: u16 = 3260;

/// The default data port of the gateways' target software in pair mode.
pub const DEFAULT_DATA_PORT: u16 = 3261;

/// A normal session's login, as the director sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LoginInfo {
    /// The address the host connected to (the storage entity's), IPv4-mapped
    /// addresses as IPv4.
    pub local: SocketAddr,
    /// The host's address: the initiator is identified by its IP.
    pub peer: SocketAddr,
    /// InitiatorName (for logs; steering goes by IP).
    pub initiator_name: String,
    /// TargetName.
    pub target_name: String,
    /// The initiator's ISID.
    pub isid: [u8; 6],
}

/// A discovery session, as the director sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DiscoveryInfo {
    /// The address the host connected to.
    pub local: SocketAddr,
    /// The host's address.
    pub peer: SocketAddr,
    /// InitiatorName.
    pub initiator_name: String,
}

/// The director's answer to a login.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Steer {
    /// Log in there instead (a gateway's data address and port).
    Redirect(SocketAddr),
    /// Wait: a move of this pair is in flight. The portal asks again each
    /// time [`Director::changes`] changes, up to the hold timeout.
    Hold,
    /// Refuse the login.
    Refuse(Refusal),
}

/// Why the director refuses a login; each maps to a login status.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// No such target here: 0x0203 "not found".
    NotFound,
    /// This initiator may not use the target: 0x0202 "authorization failure".
    NotAuthorized,
    /// The target was removed: 0x0204 "target removed".
    Removed,
    /// No gateway can serve it now; try later: 0x0301 "service unavailable".
    Unavailable,
}

impl Refusal {
    /// The login status sent.
    pub fn status(self) -> LoginStatus {
        match self {
            Refusal::NotFound => LoginStatus::NOT_FOUND,
            Refusal::NotAuthorized => LoginStatus::AUTHORIZATION_FAILURE,
            Refusal::Removed => LoginStatus::TARGET_REMOVED,
            Refusal::Unavailable => LoginStatus::SERVICE_UNAVAILABLE,
        }
    }
}

/// Where logins go; implemented by the integrator (the agent, from the
/// controller's map). Calls are synchronous and must be quick: they run on
/// the connection's task.
pub trait Director: Send + Sync + 'static {
    /// Where the pair (initiator IP `login.peer`, `login.target_name`) goes.
    fn steer(&self, login: &LoginInfo) -> Steer;
    /// The target names to offer a discovery session on `session.local`.
    fn targets(&self, session: &DiscoveryInfo) -> Vec<String>;
    /// A generation that changes whenever an answer of
    /// [`Director::steer`] may have changed; held logins ask again then.
    fn changes(&self) -> watch::Receiver<u64>;
}

/// The portal's settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PortalConfig {
    /// Time to deliver the whole login request (with its continuations)
    /// from the connection's start; default 5 s. Bounds slow senders.
    pub login_timeout: Duration,
    /// Time to deliver each later PDU of a discovery session; default 5 s.
    pub pdu_timeout: Duration,
    /// Longest a login is held; then it is answered 0x0301 "service
    /// unavailable", which libiscsi and open-iscsi retry. Default 10 s
    /// (open-iscsi's login timeout is 15 s).
    pub hold_timeout: Duration,
    /// Longest any connection lives; default 30 s.
    pub connection_timeout: Duration,
    /// Connections served at once; more are closed on accept. Default 1024.
    pub max_connections: usize,
    /// Connections served at once from one peer address; default 64.
    pub max_connections_per_peer: usize,
    /// Login Requests in one login (continuations and negotiation steps);
    /// default 8.
    pub max_login_pdus: usize,
    /// PDUs after login in one discovery session; default 64.
    pub max_session_pdus: usize,
    /// Targets offered in one SendTargets answer; default 1024.
    pub max_targets: usize,
    /// PDU and text limits; default [`Limits::default`] (8 KiB data
    /// segments, no AHS, 64 keys).
    pub limits: Limits,
}

impl Default for PortalConfig {
    fn default() -> Self {
        PortalConfig {
            login_timeout: Duration::from_secs(5),
            pdu_timeout: Duration::from_secs(5),
            hold_timeout: Duration::from_secs(10),
            connection_timeout: Duration::from_secs(30),
            max_connections: 1024,
            max_connections_per_peer: 64,
            max_login_pdus: 8,
            max_session_pdus: 64,
            max_targets: 1024,
            limits: Limits::default(),
        }
    }
}

impl PortalConfig {
    fn validate(&self) -> Result<(), PortalError> {
        let bad = |field, why: &str| {
            Err(PortalError::InvalidConfig {
                field,
                why: why.to_owned(),
            })
        };
        for (field, d) in [
            ("login_timeout", self.login_timeout),
            ("pdu_timeout", self.pdu_timeout),
            ("hold_timeout", self.hold_timeout),
            ("connection_timeout", self.connection_timeout),
        ] {
            if d.is_zero() {
                return bad(field, "must be above zero");
            }
        }
        if self.connection_timeout < self.login_timeout + self.hold_timeout {
            return bad(
                "connection_timeout",
                "must be at least login_timeout + hold_timeout",
            );
        }
        for (field, n) in [
            ("max_connections", self.max_connections),
            ("max_connections_per_peer", self.max_connections_per_peer),
            ("max_login_pdus", self.max_login_pdus),
            ("max_session_pdus", self.max_session_pdus),
        ] {
            if n == 0 {
                return bad(field, "must be above zero");
            }
        }
        if self.max_connections > Semaphore::MAX_PERMITS {
            return bad("max_connections", "too large");
        }
        if self.limits.max_data_segment < 512 || self.limits.max_data_segment >= 1 << 24 {
            return bad("limits.max_data_segment", "must be 512..16777215 bytes");
        }
        Ok(())
    }
}

/// Errors of the portal.
#[derive(Debug, thiserror::Error)]
pub enum PortalError {
    /// A [`PortalConfig`] field is out of range.
    #[error("invalid portal setting {field}: {why}")]
    InvalidConfig {
        /// The field.
        field: &'static str,
        /// What is wrong.
        why: String,
    },
    /// Listening on an address failed.
    #[error("listening on {addr}")]
    Listen {
        /// The address.
        addr: SocketAddr,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// [`Portal::listen`] was called outside a tokio runtime.
    #[error("the portal must listen from inside a tokio runtime")]
    NoRuntime,
}

/// What every connection task shares.
struct Shared {
    config: PortalConfig,
    director: Arc<dyn Director>,
    counters: metrics::Counters,
    slots: Arc<Semaphore>,
    per_peer: Mutex<HashMap<IpAddr, usize>>,
    next_tsih: AtomicU16,
    shutdown: watch::Receiver<bool>,
}

/// A running portal: listeners added and removed at run time, connections
/// served on the tokio runtime. Dropping it (or [`Portal::shutdown`]) stops
/// the listeners and ends every connection.
pub struct Portal {
    shared: Arc<Shared>,
    shutdown: watch::Sender<bool>,
    listeners: Mutex<HashMap<SocketAddr, JoinHandle<()>>>,
}

impl std::fmt::Debug for Portal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Portal")
            .field("listening", &self.listening())
            .finish_non_exhaustive()
    }
}

impl Portal {
    /// A portal with no listener yet.
    pub fn new(config: PortalConfig, director: Arc<dyn Director>) -> Result<Portal, PortalError> {
        config.validate()?;
        let (shutdown, rx) = watch::channel(false);
        Ok(Portal {
            shared: Arc::new(Shared {
                slots: Arc::new(Semaphore::new(config.max_connections)),
                config,
                director,
                counters: metrics::Counters::default(),
                per_peer: Mutex::new(HashMap::new()),
                next_tsih: AtomicU16::new(1),
                shutdown: rx,
            }),
            shutdown,
            listeners: Mutex::new(HashMap::new()),
        })
    }

    /// Listens on `addr` and serves it; returns the bound address (port 0
    /// picks one). The address need not exist yet (IP_FREEBIND /
    /// IPV6_FREEBIND): a gateway binds storage addresses before it acquires
    /// them. Listening again on a bound address is a no-op.
    pub fn listen(&self, addr: SocketAddr) -> Result<SocketAddr, PortalError> {
        let rt = tokio::runtime::Handle::try_current().map_err(|_| PortalError::NoRuntime)?;
        let mut listeners = self.listeners.lock().expect("listeners lock");
        if addr.port() != 0 && listeners.contains_key(&addr) {
            return Ok(addr);
        }
        let listener = {
            let _guard = rt.enter();
            listen::bind(addr).map_err(|source| PortalError::Listen { addr, source })?
        };
        let bound = listener
            .local_addr()
            .map_err(|source| PortalError::Listen { addr, source })?;
        let task = rt.spawn(listen::accept_loop(listener, Arc::clone(&self.shared)));
        listeners.insert(bound, task);
        tracing::info!(%bound, "portal listening");
        Ok(bound)
    }

    /// Stops listening on `addr` (connections being served go on); whether
    /// it was listened on. The accept task is aborted at once; its socket
    /// closes as soon as the runtime drops the task.
    pub fn unlisten(&self, addr: SocketAddr) -> bool {
        let task = self.listeners.lock().expect("listeners lock").remove(&addr);
        task.map(|t| t.abort()).is_some()
    }

    /// The addresses listened on.
    pub fn listening(&self) -> Vec<SocketAddr> {
        let mut v: Vec<_> = self
            .listeners
            .lock()
            .expect("listeners lock")
            .keys()
            .copied()
            .collect();
        v.sort();
        v
    }

    /// The counters.
    pub fn metrics(&self) -> PortalMetrics {
        self.shared.counters.snapshot()
    }

    /// Stops every listener and ends every connection.
    pub fn shutdown(&self) {
        for (_, task) in self.listeners.lock().expect("listeners lock").drain() {
            task.abort();
        }
        let _ = self.shutdown.send(true);
    }
}

impl Drop for Portal {
    fn drop(&mut self) {
        self.shutdown();
    }
}
