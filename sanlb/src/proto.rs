//! The agent ↔ controller protocol, version 1 (HTTP/JSON under `/v1/`).
//!
//! | endpoint | body | reply |
//! | --- | --- | --- |
//! | `POST /v1/report` | [`Report`] | [`ReportReply`] (the sender's [`Share`]) |
//! | `GET /v1/share?gateway=G&after=N&wait_ms=T` | — | [`Share`] once its generation > N, or at T |
//! | `GET /v1/status` | — | [`Status`] |
//! | `GET /v1/history` | — | per-gateway load over the last intervals (the status page's chart) |
//! | `POST /v1/pause`, `/v1/resume` | — | [`ControlsStatus`] |
//! | `POST /v1/pin` | [`PinRequest`] | [`ControlsStatus`] |
//! | `POST /v1/unpin` | [`UnpinRequest`] | [`ControlsStatus`] |
//! | `POST /v1/heartbeat`, `/v1/drain`, `/v1/undrain` | see `faults.rs` | |
//! | `GET /metrics` | — | Prometheus text format |
//!
//! Every request carries `Authorization: Bearer <token>`; errors are
//! [`ApiError`] bodies with a 4xx status. Bodies are parsed strictly
//! (`deny_unknown_fields`): a v1 peer sending a field this version does not
//! know is refused rather than half-understood.
//!
//! Counters are cumulative since the agent started (`boot_id`); the
//! controller turns them into deltas (`crate::stats`).

use std::net::IpAddr;

use serde::{Deserialize, Serialize};

use crate::optimize::Solver;

/// Path prefix of this version.
pub const PREFIX: &str = "/v1";
/// Largest request body the controller reads.
pub const MAX_BODY_BYTES: usize = 16 << 20;
/// Most flows one report may carry (an agent with more sends the largest).
pub const MAX_FLOWS_PER_REPORT: usize = 131_072;
/// Most addresses a gateway may report as owned.
pub const MAX_OWNED_PER_REPORT: usize = 65_536;
/// Longest gateway name.
pub const MAX_NAME_LEN: usize = 64;
/// Longest boot id.
pub const MAX_BOOT_ID_LEN: usize = 64;
/// Longest long-poll the controller grants.
pub const MAX_WAIT_MS: u64 = 60_000;
/// Largest generation: 2⁵³, exact in every JSON implementation. A report
/// claiming more is refused, and the controller never goes past it.
pub const MAX_GENERATION: u64 = 1 << 53;
/// Highest generation a controller catches up to from a report (when its
/// state was lost) or loads from its state: half of [`MAX_GENERATION`], so
/// that no report can push it to where its own shares would be refused
/// (2⁵² generations of headroom: millennia of moves).
pub const CATCH_UP_LIMIT: u64 = MAX_GENERATION / 2;
/// Most gateways a controller keeps (live and remembered dead ones).
pub const MAX_GATEWAYS: usize = 4_096;
/// Most routes a controller keeps: storage entities, or (host, entity)
/// pairs in pair mode. Flows beyond it are counted but found no new route.
pub const MAX_ROUTES: usize = 262_144;
/// Most data addresses (pair mode: one per (entity, gateway)) a controller
/// allocates.
pub const MAX_DATA_ADDRESSES: usize = 262_144;
/// Largest relative capacity a gateway may declare.
pub const MAX_CAPACITY: f64 = 1e6;
/// Smallest relative capacity a gateway may declare: with [`MAX_CAPACITY`],
/// capacities span at most 12 orders of magnitude, which keeps every cost
/// the optimiser computes finite.
pub const MIN_CAPACITY: f64 = 1e-6;

/// A name or id from the outside as logs and error messages show it:
/// control characters escaped, at most 64 characters, so that a hostile
/// name can neither forge log lines nor flood them.
pub fn shown(text: &str) -> String {
    const SHOWN: usize = 64;
    let mut out: String = text
        .chars()
        .take(SHOWN)
        .flat_map(char::escape_debug)
        .collect();
    if text.chars().nth(SHOWN).is_some() {
        out.push_str(&format!("… ({} bytes)", text.len()));
    }
    out
}

/// Request bodies are JSON objects: serde's derive also accepts a struct as
/// a positional array, which a strict v1 parser must not. The derived
/// deserializer of a mirror type reads the fields; this one insists on a map.
macro_rules! map_only {
    ($ty:ident, $fields:ident) => {
        impl<'de> Deserialize<'de> for $ty {
            fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                struct MapOnly;
                impl<'de> serde::de::Visitor<'de> for MapOnly {
                    type Value = $ty;
                    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                        f.write_str(concat!("a JSON object (", stringify!($ty), ")"))
                    }
                    fn visit_map<A: serde::de::MapAccess<'de>>(
                        self,
                        map: A,
                    ) -> Result<$ty, A::Error> {
                        $fields::deserialize(serde::de::value::MapAccessDeserializer::new(map))
                            .map(Into::into)
                    }
                }
                d.deserialize_map(MapOnly)
            }
        }
    };
}

/// One (initiator, target) flow's cumulative counters.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Flow {
    /// The host (iSCSI initiator).
    pub initiator: IpAddr,
    /// The storage entity (iSCSI target address).
    pub target: IpAddr,
    /// iSCSI payload bytes towards the target since the agent started.
    pub to_target_bytes: u64,
    /// iSCSI payload bytes towards the initiator since the agent started.
    pub to_initiator_bytes: u64,
}

/// Cumulative enforcement counters of an agent (for metrics).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct EnforceCounters {
    /// Addresses acquired.
    pub acquired: u64,
    /// Addresses released.
    pub released: u64,
    /// Acquire or release calls that failed.
    pub failed: u64,
}

/// What an agent sends every interval.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Report {
    /// Gateway name: 1–64 characters of `[A-Za-z0-9._-]`.
    pub gateway: String,
    /// Random id of this agent run; a new one means counters restarted at 0.
    pub boot_id: String,
    /// Report number within this boot, from 0, increasing.
    pub seq: u64,
    /// Milliseconds since this boot started (the agent's monotonic clock);
    /// the span between two reports is what turns deltas into rates.
    pub uptime_ms: u64,
    /// Relative capacity of the gateway, in [[`MIN_CAPACITY`], [`MAX_CAPACITY`]].
    pub capacity: f64,
    /// Generation of the last share the agent applied completely (0: none).
    pub applied: u64,
    /// The storage addresses the agent holds now.
    pub owned: Vec<IpAddr>,
    /// Enforcement counters since the agent started.
    pub enforce: EnforceCounters,
    /// Cumulative counters per (initiator, target).
    pub flows: Vec<Flow>,
}

/// The wire forms: the field names, defaults and strictness of the types
/// above (see `map_only!`).
mod wire {
    use std::net::IpAddr;

    use serde::Deserialize;

    #[derive(Deserialize)]
    #[serde(deny_unknown_fields)]
    pub struct Flow {
        pub initiator: IpAddr,
        pub target: IpAddr,
        pub to_target_bytes: u64,
        pub to_initiator_bytes: u64,
    }

    #[derive(Deserialize)]
    #[serde(deny_unknown_fields)]
    pub struct EnforceCounters {
        pub acquired: u64,
        pub released: u64,
        pub failed: u64,
    }

    #[derive(Deserialize)]
    #[serde(deny_unknown_fields)]
    pub struct Report {
        pub gateway: String,
        pub boot_id: String,
        pub seq: u64,
        pub uptime_ms: u64,
        #[serde(default = "default_capacity")]
        pub capacity: f64,
        pub applied: u64,
        pub owned: Vec<IpAddr>,
        #[serde(default)]
        pub enforce: super::EnforceCounters,
        pub flows: Vec<super::Flow>,
    }

    fn default_capacity() -> f64 {
        1.0
    }
}

impl From<wire::Flow> for Flow {
    fn from(w: wire::Flow) -> Self {
        Self {
            initiator: w.initiator,
            target: w.target,
            to_target_bytes: w.to_target_bytes,
            to_initiator_bytes: w.to_initiator_bytes,
        }
    }
}

impl From<wire::EnforceCounters> for EnforceCounters {
    fn from(w: wire::EnforceCounters) -> Self {
        Self {
            acquired: w.acquired,
            released: w.released,
            failed: w.failed,
        }
    }
}

impl From<wire::Report> for Report {
    fn from(w: wire::Report) -> Self {
        Self {
            gateway: w.gateway,
            boot_id: w.boot_id,
            seq: w.seq,
            uptime_ms: w.uptime_ms,
            capacity: w.capacity,
            applied: w.applied,
            owned: w.owned,
            enforce: w.enforce,
            flows: w.flows,
        }
    }
}

map_only!(Flow, wire_flow);
map_only!(EnforceCounters, wire_enforce);
map_only!(Report, wire_report);
use wire::{EnforceCounters as wire_enforce, Flow as wire_flow, Report as wire_report};

// Heartbeats, probes, conflicts, drains: after `map_only!`, which they use.
mod faults;
pub use self::faults::*;

/// Why a report is refused before anything is counted: a field has a value
/// the protocol does not allow.
#[derive(Clone, Debug, PartialEq, thiserror::Error)]
#[error("{field}: {message}")]
pub struct ReportError {
    /// The field.
    pub field: &'static str,
    /// What is wrong.
    pub message: String,
}

/// Checks a relative capacity: finite, in [[`MIN_CAPACITY`], [`MAX_CAPACITY`]].
pub fn valid_capacity(c: f64) -> bool {
    (MIN_CAPACITY..=MAX_CAPACITY).contains(&c)
}

/// Whether an address can be a storage address in a report or a state:
/// not unspecified, multicast or loopback.
pub fn valid_storage_address(a: &IpAddr) -> bool {
    !(a.is_unspecified() || a.is_multicast() || a.is_loopback())
}

/// Checks a gateway name: 1–[`MAX_NAME_LEN`] characters of `[A-Za-z0-9._-]`.
pub fn valid_gateway_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= MAX_NAME_LEN
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b))
}

impl Report {
    /// Checks every field against the limits above; the counters' own
    /// consistency is checked when they are turned into deltas.
    pub fn validate(&self) -> Result<(), ReportError> {
        let invalid = |field, message: String| Err(ReportError { field, message });
        if !valid_gateway_name(&self.gateway) {
            return invalid(
                "gateway",
                format!(
                    "\"{}\": 1–{MAX_NAME_LEN} characters of [A-Za-z0-9._-]",
                    shown(&self.gateway)
                ),
            );
        }
        if self.boot_id.is_empty()
            || self.boot_id.len() > MAX_BOOT_ID_LEN
            || !self.boot_id.bytes().all(|b| b.is_ascii_graphic())
        {
            return invalid(
                "boot_id",
                format!("1–{MAX_BOOT_ID_LEN} printable ASCII characters"),
            );
        }
        if !valid_capacity(self.capacity) {
            return invalid(
                "capacity",
                format!(
                    "{} is not in [{MIN_CAPACITY:e}, {MAX_CAPACITY:e}]",
                    self.capacity
                ),
            );
        }
        if self.applied > MAX_GENERATION {
            return invalid("applied", format!("{} is absurd (> 2^53)", self.applied));
        }
        if self.flows.len() > MAX_FLOWS_PER_REPORT {
            return invalid(
                "flows",
                format!("{} flows, at most {MAX_FLOWS_PER_REPORT}", self.flows.len()),
            );
        }
        if self.owned.len() > MAX_OWNED_PER_REPORT {
            return invalid(
                "owned",
                format!(
                    "{} addresses, at most {MAX_OWNED_PER_REPORT}",
                    self.owned.len()
                ),
            );
        }
        if let Some(a) = self.owned.iter().find(|a| !valid_storage_address(a)) {
            return invalid("owned", format!("{a} cannot be a storage address"));
        }
        Ok(())
    }
}

/// The controller's answer to a report.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReportReply {
    /// False when the report was a duplicate or older than one already seen
    /// (it changed nothing).
    pub counted: bool,
    /// What the gateway should own now.
    pub share: Share,
}

/// What one gateway should own.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Share {
    /// The gateway.
    pub gateway: String,
    /// Generation of the hand-out this share belongs to; never decreases.
    pub generation: u64,
    /// The exact set of storage addresses to hold, or `None`: keep what you
    /// hold (the controller is not steering addresses yet). In pair mode:
    /// the entity addresses whose portal this gateway runs and its own data
    /// addresses.
    pub addresses: Option<Vec<IpAddr>>,
    /// Pair mode: the pair map every portal answers from and the
    /// connections this gateway must end. Absent in target mode (whose
    /// shares keep their form).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pairs: Option<PairShare>,
}

/// Most target names one storage entity may list.
pub const MAX_TARGET_NAMES: usize = 16;

/// Longest target name (RFC 7143 §4.2.7.1: 223 bytes).
pub const MAX_TARGET_NAME_LEN: usize = 223;

/// Whether `name` can be an iSCSI target name in a share: 1–223 bytes, no
/// control characters or spaces (what a SendTargets answer can carry).
pub fn valid_target_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= MAX_TARGET_NAME_LEN
        && !name.chars().any(|c| c.is_control() || c.is_whitespace())
}

/// Pair mode's part of a [`Share`]: what the redirecting portals answer
/// (every alive gateway gets all of it, so that a portal that moves or
/// fails over answers the same at once) and what this gateway ends.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PairShare {
    /// Port the target software listens on at the data addresses.
    pub data_port: u16,
    /// Every storage entity, by address.
    pub entities: Vec<PairEntity>,
    /// Connections this gateway must end (and keep ending while listed):
    /// pairs moving away from it.
    #[serde(default)]
    pub evict: Vec<Eviction>,
}

/// One storage entity in a [`PairShare`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PairEntity {
    /// Its address, where hosts log in (port 3260) and its portal listens.
    pub address: IpAddr,
    /// Its target names, offered to discovery sessions and required of
    /// logins (empty: any name, none offered).
    #[serde(default)]
    pub targets: Vec<String>,
    /// The receiving gateway's own data address for it.
    pub data_address: Option<IpAddr>,
    /// The data address hosts without a steer of their own are sent to
    /// (new pairs); `None`: they are refused "service unavailable" (no
    /// gateway has a data address for it).
    pub default: Option<IpAddr>,
    /// Per host: where its logins go.
    #[serde(default)]
    pub hosts: Vec<HostSteer>,
}

/// Where one host's logins to an entity go.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HostSteer {
    /// The host (initiator IP).
    pub host: IpAddr,
    /// The data address to redirect to; `None`: hold the login (a move of
    /// the pair is in flight).
    pub redirect: Option<IpAddr>,
}

/// A pair whose connections a gateway must end.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Eviction {
    /// The host.
    pub host: IpAddr,
    /// The gateway's data address the host is connected to.
    pub data_address: IpAddr,
}

/// Unit of assignment.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    /// A storage entity (its address): what address ownership enforces.
    #[default]
    Target,
    /// A (host, target) pair: steered by iSCSI login redirection through
    /// a portal on the entity's address, to a data address per (entity,
    /// gateway).
    Pair,
}

impl std::fmt::Display for Mode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Target => "target",
            Self::Pair => "pair",
        })
    }
}

/// An error reply.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ApiError {
    /// What was wrong, naming the field or input.
    pub error: String,
}

/// `GET /v1/status`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Status {
    /// Current generation.
    pub generation: u64,
    /// Unit of assignment.
    pub mode: Mode,
    /// Rebalance interval, ms.
    pub interval_ms: u64,
    /// Number of intervals averaged.
    pub window: usize,
    /// Lease after which a silent gateway is dead, ms.
    pub lease_ms: u64,
    /// Current normalised variance of utilisation.
    pub var_norm: f64,
    /// Gateways, by name.
    pub gateways: Vec<GatewayStatus>,
    /// The map, by route.
    pub map: Vec<MapEntry>,
    /// The traffic matrix: rate per (host, target), mean over the window.
    pub matrix: Vec<FlowRate>,
    /// Most recent rebalance decisions, newest last.
    pub rebalances: Vec<RebalanceRecord>,
    /// Reports refused since start, by reason.
    pub report_errors: Vec<(String, u64)>,
    /// The cluster of controllers, when the state lives in etcd (`None`:
    /// a single controller with its state file).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cluster: Option<ClusterStatus>,
    /// Pair mode: the data address of each (entity, gateway).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub data_addresses: Vec<DataAddress>,
    /// Advise mode and the operator's controls (pause, pins, cool-down).
    #[serde(default)]
    pub controls: ControlsStatus,
}

/// A controller's place in a cluster of controllers (etcd).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClusterStatus {
    /// `leader`, `follower` or `unknown`.
    pub role: String,
    /// The leader's advertised URL, when one is known.
    pub leader: Option<String>,
    /// The leader's term: the etcd revision of its leader key, growing from
    /// one term to the next.
    pub term: Option<i64>,
    /// This controller's advertised URL.
    pub advertise: String,
    /// etcd's endpoints and sanlb's key prefix there.
    pub etcd: String,
    /// Why the role is unknown.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

/// One data address of pair mode in [`Status`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DataAddress {
    /// The storage entity.
    pub target: IpAddr,
    /// The gateway holding it.
    pub gateway: String,
    /// The address.
    pub address: IpAddr,
}

/// Most route changes a [`RebalanceRecord`] lists (its `moves` counts all).
pub const MAX_RECORDED_CHANGES: usize = 64;

/// One route a rebalance moved, or would have moved.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RouteChange {
    /// Storage address.
    pub target: IpAddr,
    /// Host, in pair mode.
    #[serde(default)]
    pub host: Option<IpAddr>,
    /// The gateway it was assigned to (`None`: none).
    pub from: Option<String>,
    /// The gateway the proposal gives it.
    pub to: String,
}

/// The operator's controls as `GET /v1/status` shows them (and the reply
/// to every control request).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct ControlsStatus {
    /// Advise mode (`--advise`): every decision is computed and recorded,
    /// none is enforced.
    pub advise: bool,
    /// Periodic rebalancing paused (`sanlb pause`) since this Unix time, ms;
    /// failover still acts.
    pub paused_since_ms: Option<u64>,
    /// Routes pinned to a gateway (`sanlb pin`).
    pub pins: Vec<PinStatus>,
    /// Minimum time between two moves of the same route, ms (failover
    /// excepted).
    pub move_cooldown_ms: u64,
    /// Routes that moved within the cool-down, and how long until they
    /// may move again.
    pub cooling: Vec<CoolingRoute>,
}

/// A pin in [`ControlsStatus`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PinStatus {
    /// The storage address (every route of it, in pair mode).
    pub target: IpAddr,
    /// The only gateway it may use while that gateway is alive.
    pub gateway: String,
    /// Unix time of the pin, ms.
    pub since_ms: u64,
}

/// A route in its cool-down.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CoolingRoute {
    /// Storage address.
    pub target: IpAddr,
    /// Host, in pair mode.
    #[serde(default)]
    pub host: Option<IpAddr>,
    /// Milliseconds until it may move again.
    pub remaining_ms: u64,
}

/// `POST /v1/pin`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PinRequest {
    /// A storage address the controller manages.
    pub target: IpAddr,
    /// A gateway the controller knows.
    pub gateway: String,
}

/// `POST /v1/unpin`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UnpinRequest {
    /// The pinned storage address.
    pub target: IpAddr,
}

/// One gateway in [`Status`].
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct GatewayStatus {
    /// Name.
    pub name: String,
    /// Relative capacity.
    pub capacity: f64,
    /// Reporting within its lease.
    pub alive: bool,
    /// Milliseconds since its last report (`None`: none since the controller started).
    pub last_report_ms: Option<u64>,
    /// Sum of the rates of the routes the map gives it, bytes/s.
    pub load: f64,
    /// Load per unit of capacity over the mean of that over the alive
    /// gateways: 1 is an even share (0 when nothing flows).
    pub utilisation: f64,
    /// Generation it last applied.
    pub applied: u64,
    /// Addresses it reported holding.
    pub owned: Vec<IpAddr>,
    /// Its enforcement counters.
    pub enforce: EnforceCounters,
    /// A second live agent reporting under this name, refused.
    #[serde(default)]
    pub conflict: Option<NameConflict>,
    /// For a dead gateway that owns nothing: milliseconds until it is
    /// forgotten.
    #[serde(default)]
    pub forget_in_ms: Option<u64>,
    /// Liveness, link, drain and conflicts (issue 14).
    #[serde(default)]
    pub health: GatewayHealth,
}

/// `GET /v1/history`: per-gateway load at the end of each of the last
/// intervals, oldest first (the status page's chart).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct History {
    /// Rebalance interval, ms (one sample each).
    pub interval_ms: u64,
    /// The samples.
    pub samples: Vec<HistorySample>,
}

/// One sample of [`History`].
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct HistorySample {
    /// Unix time, ms.
    pub at_ms: u64,
    /// Generation then.
    pub generation: u64,
    /// var_norm of the map then.
    pub var_norm: f64,
    /// Gateways then.
    pub gateways: Vec<GatewayLoad>,
}

/// A gateway in a [`HistorySample`].
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct GatewayLoad {
    /// Name.
    pub name: String,
    /// Alive then.
    pub alive: bool,
    /// Load, bytes/s.
    pub load: f64,
    /// Utilisation (as in [`GatewayStatus`]).
    pub utilisation: f64,
}

/// A second agent run under a gateway name (see `controller` docs).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct NameConflict {
    /// The refused run's boot id.
    pub boot_id: String,
    /// Its reports refused.
    pub refused: u64,
    /// Milliseconds since its last refused report.
    pub last_ms: u64,
}

/// Where a route is in the move protocol.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "state", rename_all = "lowercase")]
pub enum Ownership {
    /// Nobody holds it and nobody is told to.
    Unowned,
    /// `gateway` holds it (it is in that gateway's share).
    Owned {
        /// The owner.
        gateway: String,
    },
    /// Withheld from everyone until `from` acknowledges generation `release`
    /// without it (or is dead); then it goes to `to`.
    Moving {
        /// The old owner.
        from: String,
        /// The new owner.
        to: String,
        /// Generation of the first share without it for `from`.
        release: u64,
    },
    /// A pair's move, phase 1: every portal holds the pair's logins; the
    /// session on `from` runs on. Done once every alive gateway applied
    /// generation `hold`.
    Holding {
        /// The gateway serving it now.
        from: String,
        /// The gateway it goes to.
        to: String,
        /// Generation of the first shares holding it.
        hold: u64,
    },
    /// A pair's move, phase 2: the portals still hold it and `from` ends
    /// its connections. Done once `from` applied generation `evict` (or is
    /// dead); then the portals redirect it to `to`.
    Evicting {
        /// The gateway ending the pair's connections.
        from: String,
        /// The gateway it goes to.
        to: String,
        /// Generation of `from`'s first share listing the eviction.
        evict: u64,
    },
}

impl Ownership {
    /// The gateway the map assigns it to (the new owner while moving).
    pub fn assigned(&self) -> Option<&str> {
        match self {
            Self::Unowned => None,
            Self::Owned { gateway } => Some(gateway),
            Self::Moving { to, .. } | Self::Holding { to, .. } | Self::Evicting { to, .. } => {
                Some(to)
            }
        }
    }

    /// Whether a move is in flight (an address's or a pair's).
    pub fn in_flight(&self) -> bool {
        matches!(
            self,
            Self::Moving { .. } | Self::Holding { .. } | Self::Evicting { .. }
        )
    }
}

/// One route of the map.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct MapEntry {
    /// Storage address.
    pub target: IpAddr,
    /// Host, in pair mode.
    pub host: Option<IpAddr>,
    /// Its state.
    #[serde(flatten)]
    pub ownership: Ownership,
    /// Generation in which its state last changed.
    pub changed: u64,
    /// Its rate, bytes/s (mean over the window).
    pub rate: f64,
}

/// One cell of the traffic matrix.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct FlowRate {
    /// Host (initiator).
    pub host: IpAddr,
    /// Storage entity (target).
    pub target: IpAddr,
    /// Bytes/s, mean over the window.
    pub rate: f64,
}

/// One rebalance decision.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct RebalanceRecord {
    /// Unix time, ms.
    pub at_ms: u64,
    /// Generation after the decision.
    pub generation: u64,
    /// Why it ran: `interval`, `failover`, `pin`.
    pub trigger: String,
    /// Whether the new map was adopted.
    pub adopted: bool,
    /// The decision: `adopted`, `kept`, `superseded`, `paused` (a periodic
    /// rebalance while paused) or `advised` (advise mode); empty in records
    /// of older controllers.
    #[serde(default)]
    pub result: String,
    /// Why (adopted or not), for people.
    pub reason: String,
    /// Cost of the map in force (`None`: it had routes on dead gateways or
    /// on none).
    pub cost_before: Option<f64>,
    /// Cost of the proposed map.
    pub cost_after: f64,
    /// var_norm of the map in force.
    pub var_norm_before: Option<f64>,
    /// var_norm of the proposed map.
    pub var_norm_after: f64,
    /// Routes that change gateway.
    pub moves: usize,
    /// Solver time, ms.
    pub duration_ms: f64,
    /// Algorithm of the proposal.
    pub solver: Solver,
    /// The routes it moves (or would move), at most
    /// [`MAX_RECORDED_CHANGES`] of them.
    #[serde(default)]
    pub changes: Vec<RouteChange>,
}
