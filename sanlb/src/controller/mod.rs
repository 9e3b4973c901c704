//! The statistical server (the patent's fig. 3): agents report cumulative
//! counters, the controller keeps the traffic matrix over a sliding window,
//! rebalances with hysteresis and hands out generation-numbered shares.
//!
//! [`Controller`] is the state machine, driven by calls with the current
//! time; [`http::app`] serves it, [`server::Server`] runs it with its timers.
//!
//! ## Moves (break-before-make)
//! Every route is [`Ownership::Unowned`], [`Ownership::Owned`] by one
//! gateway, or [`Ownership::Moving`] from one gateway to another. A gateway's
//! share is the set of addresses it owns; a moving address is in nobody's
//! share. Adopting a map that moves an address from A to B makes it
//! `Moving{from: A, to: B, release: G}` in the new generation G; when A
//! reports `applied ≥ G` without the address, it becomes `Owned{B}` (a new
//! generation) and enters B's share. If A is dead, the move completes at
//! once; if A is alive but does not release within a lease, the move is
//! abandoned (back to `Owned{A}`). So in a healthy system no address is in
//! two gateways' applied sets at once.
//!
//! ## Generations
//! The generation counts changes of the hand-out: every adopted map, every
//! batch of completed releases, failover, the end of the start-up grace. It
//! is persisted before any share that carries it leaves the controller, so a
//! restarted controller resumes it and never hands out an older one.

pub mod http;
pub mod metrics;
pub mod server;
pub mod store;

use std::{
    collections::{BTreeMap, BTreeSet, HashMap, VecDeque},
    net::IpAddr,
    time::{Duration, Instant, SystemTime},
};

use ipnet::IpNet;

pub use crate::proto::Ownership;
use crate::{
    optimize::{self, Gateway, Options, Problem, Route, Solution},
    proto::{
        EnforceCounters, FlowRate, GatewayStatus, MAX_BOOT_ID_LEN, MAX_FLOWS_PER_REPORT,
        MAX_NAME_LEN, MAX_OWNED_PER_REPORT, MapEntry, Mode, RebalanceRecord, Report, ReportReply,
        Share, Status,
    },
    stats::{self, Ingest, Stats, StatsError, TrafficMatrix},
};
use store::{Saved, SavedGateway, SavedRoute, Store, StoreError};

/// Largest `applied` generation a report may carry (2⁵³: exact in JSON).
pub const MAX_GENERATION: u64 = 1 << 53;
/// Rebalance decisions kept for status.
const HISTORY: usize = 32;

/// Errors of the controller.
#[derive(Debug, thiserror::Error)]
pub enum ControllerError {
    /// The state file could not be read or written.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The state file was written for another unit of assignment.
    #[error(
        "state file holds a {saved:?}-mode map, the controller runs in {running:?} mode (move the file away to start afresh)"
    )]
    ModeMismatch {
        /// Mode of the file.
        saved: Mode,
        /// Mode asked for.
        running: Mode,
    },
    /// Bad configuration.
    #[error("configuration: {0}")]
    Config(String),
    /// The listening socket.
    #[error("serving on {addr}")]
    Serve {
        /// The address.
        addr: String,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
}

/// Why a report was refused.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum IngestError {
    /// A field has a value the protocol does not allow.
    #[error("{field}: {message}")]
    Invalid {
        /// The field.
        field: &'static str,
        /// What is wrong.
        message: String,
    },
    /// The counters are inconsistent.
    #[error(transparent)]
    Stats(#[from] StatsError),
}

impl IngestError {
    /// Short label for metrics.
    pub fn reason(&self) -> &'static str {
        match self {
            Self::Invalid { field, .. } => field,
            Self::Stats(StatsError::Absurd { .. }) => "absurd_count",
            Self::Stats(StatsError::UptimeBackwards { .. }) => "uptime_backwards",
            Self::Stats(StatsError::DuplicateFlow { .. }) => "duplicate_flow",
        }
    }
}

/// How the controller runs.
#[derive(Clone, Debug)]
pub struct Config {
    /// Rebalance period (and length of one window sample).
    pub interval: Duration,
    /// Samples averaged.
    pub window: usize,
    /// Weight of var_norm.
    pub w_var: f64,
    /// Weight of a move.
    pub w_change: f64,
    /// Smallest fall of the cost that justifies a new map.
    pub min_gain: f64,
    /// Silence after which a gateway is dead; also the start-up grace and
    /// the time an alive owner has to release.
    pub lease: Duration,
    /// Unit of assignment.
    pub mode: Mode,
    /// Address ranges of storage entities: targets seen inside are routes.
    pub storage: Vec<IpNet>,
    /// Storage addresses known up front.
    pub targets: Vec<IpAddr>,
    /// A-priori traffic matrix (bytes per interval).
    pub traffic: Option<TrafficMatrix>,
    /// Use only the a-priori matrix (else it seeds the window).
    pub traffic_replace: bool,
    /// Optimiser options.
    pub solver: Options,
}

impl Config {
    /// Checks the values.
    pub fn validate(&self) -> Result<(), ControllerError> {
        let bad = |m: String| Err(ControllerError::Config(m));
        if self.interval.is_zero() {
            return bad("--interval must be > 0".into());
        }
        if self.lease.is_zero() {
            return bad("--lease must be > 0".into());
        }
        if self.window == 0 {
            return bad("--window must be ≥ 1".into());
        }
        for (name, v) in [
            ("--w-var", self.w_var),
            ("--w-change", self.w_change),
            ("--min-gain", self.min_gain),
        ] {
            if !v.is_finite() || v < 0.0 {
                return bad(format!("{name} must be a finite number ≥ 0, not {v}"));
            }
        }
        if self.storage.is_empty() && self.targets.is_empty() && self.traffic.is_none() {
            return bad("nothing to manage: give --storage, --target or --traffic".into());
        }
        Ok(())
    }
}

/// (host in pair mode, target).
pub type RouteKey = (Option<IpAddr>, IpAddr);

#[derive(Debug, Clone)]
struct Gw {
    capacity: f64,
    alive: bool,
    last_seen: Instant,
    boot_id: String,
    applied: u64,
    owned: BTreeSet<IpAddr>,
    enforce: EnforceCounters,
}

#[derive(Debug, Clone)]
struct RouteState {
    ownership: Ownership,
    changed: u64,
    /// When the current move started (for abandoning it).
    since: Instant,
}

/// Why a rebalance runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Trigger {
    /// The periodic one.
    Interval,
    /// Routes sit on dead gateways (or nowhere).
    Failover,
}

impl Trigger {
    fn label(self) -> &'static str {
        match self {
            Self::Interval => "interval",
            Self::Failover => "failover",
        }
    }
}

/// A problem to solve outside the lock, and what it was built from.
#[derive(Debug, Clone)]
pub struct Plan {
    /// The optimisation problem.
    pub problem: Problem,
    /// Options for the solver.
    pub options: Options,
    keys: Vec<RouteKey>,
    epoch: u64,
    trigger: Trigger,
}

/// Counters for metrics.
#[derive(Debug, Default, Clone)]
pub struct Counters {
    /// Reports counted.
    pub reports: u64,
    /// Reports ignored as duplicates or reordered.
    pub stale_reports: u64,
    /// Reports and requests refused, by reason.
    pub errors: BTreeMap<String, u64>,
    /// Routes moved by adopted maps.
    pub moves: u64,
    /// Moves whose old owner was dead (bypassed).
    pub bypassed: u64,
    /// Moves abandoned because an alive owner did not release.
    pub abandoned: u64,
    /// Rebalances by result (`adopted`, `kept`, `superseded`).
    pub rebalances: BTreeMap<&'static str, u64>,
    /// Failovers (gateways declared dead).
    pub deaths: u64,
    /// Seconds the last solve took.
    pub last_solve_s: f64,
    /// Failed writes of the state file.
    pub persist_failures: u64,
}

/// The controller's state machine.
#[derive(Debug)]
pub struct Controller {
    cfg: Config,
    generation: u64,
    /// Bumped on every change that invalidates a plan.
    epoch: u64,
    gateways: BTreeMap<String, Gw>,
    routes: BTreeMap<RouteKey, RouteState>,
    stats: Stats,
    apriori: Option<HashMap<stats::FlowKey, f64>>,
    /// Targets named up front (`targets` and the a-priori matrix).
    listed: BTreeSet<IpAddr>,
    history: VecDeque<RebalanceRecord>,
    started: Instant,
    ready: bool,
    /// Intervals closed since the last adopted map: rates measured while
    /// routes move (one is briefly held by nobody) are not representative,
    /// so the next periodic rebalance waits for a fresh window.
    settled: usize,
    /// Intervals closed since start.
    intervals: u64,
    counters: Counters,
    store: Option<Store>,
    /// Generation changed and not yet persisted.
    dirty: bool,
    persist_failed: bool,
    notify: tokio::sync::watch::Sender<u64>,
}

impl Controller {
    /// A controller, resuming from `store` when it holds a state.
    pub fn new(cfg: Config, store: Option<Store>, now: Instant) -> Result<Self, ControllerError> {
        cfg.validate()?;
        let apriori = cfg
            .traffic
            .as_ref()
            .map(|m| m.rates(cfg.interval.as_secs_f64()));
        let mut c = Self {
            stats: Stats::new(cfg.window),
            generation: 0,
            epoch: 0,
            gateways: BTreeMap::new(),
            routes: BTreeMap::new(),
            listed: cfg
                .targets
                .iter()
                .copied()
                .chain(cfg.traffic.iter().flat_map(|m| m.cells.iter().map(|c| c.1)))
                .collect(),
            apriori,
            history: VecDeque::new(),
            started: now,
            ready: false,
            settled: 0,
            intervals: 0,
            counters: Counters::default(),
            store: None,
            dirty: false,
            persist_failed: false,
            notify: tokio::sync::watch::channel(0).0,
            cfg,
        };
        let fresh = match store.as_ref().map(Store::load).transpose()?.flatten() {
            Some(saved) => {
                c.restore(saved, now)?;
                false
            }
            None => true,
        };
        c.store = store;
        if let Some(m) = &c.apriori {
            if !c.cfg.traffic_replace {
                c.stats.seed(m);
            }
            let keys: Vec<_> = m.keys().copied().collect();
            for (h, t) in keys {
                c.discover(Some(h), t, now);
            }
        }
        for t in c.cfg.targets.clone() {
            if c.cfg.mode == Mode::Target {
                c.discover(None, t, now);
            }
        }
        if fresh && let Some(store) = &c.store {
            // A state file that cannot be written is a start-up error, not
            // a surprise at the first move.
            store.save(&c.saved())?;
        }
        c.notify.send_replace(c.generation);
        Ok(c)
    }

    /// Writes the state now (on shutdown).
    pub fn save(&self) -> Result<(), ControllerError> {
        if let Some(store) = &self.store {
            store.save(&self.saved())?;
        }
        Ok(())
    }

    fn restore(&mut self, saved: Saved, now: Instant) -> Result<(), ControllerError> {
        if saved.mode != self.cfg.mode {
            return Err(ControllerError::ModeMismatch {
                saved: saved.mode,
                running: self.cfg.mode,
            });
        }
        self.generation = saved.generation;
        for g in saved.gateways {
            self.gateways.insert(
                g.name,
                Gw {
                    capacity: g.capacity,
                    alive: g.alive,
                    // A fresh lease: nobody could report while we were down.
                    last_seen: now,
                    boot_id: String::new(),
                    applied: 0,
                    owned: BTreeSet::new(),
                    enforce: EnforceCounters::default(),
                },
            );
        }
        for r in saved.routes {
            self.routes.insert(
                (r.host, r.target),
                RouteState {
                    ownership: r.ownership,
                    changed: r.changed,
                    since: now,
                },
            );
        }
        let rates: HashMap<stats::FlowKey, f64> = saved
            .rates
            .into_iter()
            .filter(|(_, _, r)| r.is_finite() && *r >= 0.0)
            .map(|(h, t, r)| ((h, t), r))
            .collect();
        if !rates.is_empty() {
            self.stats.seed(&rates);
        }
        self.history = saved.history.into();
        tracing::info!(
            generation = self.generation,
            gateways = self.gateways.len(),
            routes = self.routes.len(),
            "resumed from the state file"
        );
        Ok(())
    }

    /// The configuration.
    pub fn config(&self) -> &Config {
        &self.cfg
    }

    /// Current generation.
    pub fn generation(&self) -> u64 {
        self.generation
    }

    /// A receiver that sees every new generation (for long polls).
    pub fn subscribe(&self) -> tokio::sync::watch::Receiver<u64> {
        self.notify.subscribe()
    }

    /// Counters for metrics.
    pub fn counters(&self) -> &Counters {
        &self.counters
    }

    /// Counts a refused request.
    pub fn count_error(&mut self, reason: &str) {
        *self.counters.errors.entry(reason.to_owned()).or_default() += 1;
    }

    fn managed(&self, addr: IpAddr) -> bool {
        self.listed.contains(&addr) || self.cfg.storage.iter().any(|n| n.contains(&addr))
    }

    fn discover(&mut self, host: Option<IpAddr>, target: IpAddr, now: Instant) {
        let key = match self.cfg.mode {
            Mode::Target => (None, target),
            Mode::Pair => match host {
                Some(h) => (Some(h), target),
                None => return,
            },
        };
        if !self.routes.contains_key(&key) {
            self.routes.insert(
                key,
                RouteState {
                    ownership: Ownership::Unowned,
                    changed: self.generation,
                    since: now,
                },
            );
            self.epoch += 1;
        }
    }

    fn bump(&mut self) -> u64 {
        self.generation += 1;
        self.epoch += 1;
        self.dirty = true;
        self.generation
    }

    /// Persists when the generation changed, then announces it. Shares are
    /// built only after this, so none carries an unpersisted generation.
    fn flush(&mut self) {
        if !self.dirty {
            return;
        }
        if self.persist().is_ok() {
            self.dirty = false;
            self.notify.send_replace(self.generation);
        }
    }

    fn persist(&mut self) -> Result<(), ()> {
        let Some(store) = &self.store else {
            self.persist_failed = false;
            return Ok(());
        };
        match store.save(&self.saved()) {
            Ok(()) => {
                if self.persist_failed {
                    tracing::info!("state file writable again");
                }
                self.persist_failed = false;
                Ok(())
            }
            Err(e) => {
                if !self.persist_failed {
                    tracing::error!(error = %crate::dataplane::error_chain(&e), "cannot persist the state: handing out no changes until it can");
                }
                self.persist_failed = true;
                self.counters.persist_failures += 1;
                Err(())
            }
        }
    }

    /// The persisted form of the state.
    pub fn saved(&self) -> Saved {
        Saved {
            version: store::VERSION,
            mode: self.cfg.mode,
            generation: self.generation,
            gateways: self
                .gateways
                .iter()
                .map(|(n, g)| SavedGateway {
                    name: n.clone(),
                    capacity: g.capacity,
                    alive: g.alive,
                })
                .collect(),
            routes: self
                .routes
                .iter()
                .map(|(k, r)| SavedRoute {
                    host: k.0,
                    target: k.1,
                    ownership: r.ownership.clone(),
                    changed: r.changed,
                })
                .collect(),
            rates: self.stats.export(),
            history: self.history.iter().cloned().collect(),
        }
    }

    /// Checks a report's fields.
    pub fn validate(r: &Report) -> Result<(), IngestError> {
        let invalid = |field, message: String| Err(IngestError::Invalid { field, message });
        if r.gateway.is_empty()
            || r.gateway.len() > MAX_NAME_LEN
            || !r
                .gateway
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b))
        {
            return invalid(
                "gateway",
                format!(
                    "{:?}: 1–{MAX_NAME_LEN} characters of [A-Za-z0-9._-]",
                    r.gateway
                ),
            );
        }
        if r.boot_id.is_empty()
            || r.boot_id.len() > MAX_BOOT_ID_LEN
            || !r.boot_id.bytes().all(|b| b.is_ascii_graphic())
        {
            return invalid(
                "boot_id",
                format!("1–{MAX_BOOT_ID_LEN} printable ASCII characters"),
            );
        }
        if !r.capacity.is_finite() || r.capacity <= 0.0 || r.capacity > 1e6 {
            return invalid("capacity", format!("{} is not in (0, 1e6]", r.capacity));
        }
        if r.applied > MAX_GENERATION {
            return invalid("applied", format!("{} is absurd (> 2^53)", r.applied));
        }
        if r.flows.len() > MAX_FLOWS_PER_REPORT {
            return invalid(
                "flows",
                format!("{} flows, at most {MAX_FLOWS_PER_REPORT}", r.flows.len()),
            );
        }
        if r.owned.len() > MAX_OWNED_PER_REPORT {
            return invalid(
                "owned",
                format!(
                    "{} addresses, at most {MAX_OWNED_PER_REPORT}",
                    r.owned.len()
                ),
            );
        }
        if let Some(a) = r
            .owned
            .iter()
            .find(|a| a.is_unspecified() || a.is_multicast() || a.is_loopback())
        {
            return invalid("owned", format!("{a} cannot be a storage address"));
        }
        Ok(())
    }

    /// Takes a report; on error nothing changes.
    pub fn ingest(&mut self, r: &Report, now: Instant) -> Result<ReportReply, IngestError> {
        Self::validate(r)?;
        let outcome = self.stats.ingest(r)?;
        let counted = outcome != Ingest::Stale;
        if counted {
            self.counters.reports += 1;
        } else {
            self.counters.stale_reports += 1;
        }
        let gw = self
            .gateways
            .entry(r.gateway.clone())
            .or_insert_with(|| Gw {
                capacity: r.capacity,
                alive: false,
                last_seen: now,
                boot_id: String::new(),
                applied: 0,
                owned: BTreeSet::new(),
                enforce: EnforceCounters::default(),
            });
        gw.last_seen = now;
        let revived = !gw.alive;
        gw.alive = true;
        if counted {
            gw.capacity = r.capacity;
            gw.boot_id = r.boot_id.clone();
            gw.applied = r.applied;
            gw.owned = r.owned.iter().copied().collect();
            gw.enforce = r.enforce;
        }
        if revived {
            tracing::info!(gateway = %r.gateway, "gateway reporting");
            self.epoch += 1;
        }
        if counted {
            if r.applied > self.generation {
                // The state file was lost or replaced: never go below what
                // the gateways have seen.
                tracing::warn!(gateway = %r.gateway, applied = r.applied, generation = self.generation, "gateway applied a later generation than ours: catching up");
                self.generation = r.applied;
                self.bump();
            }
            for f in &r.flows {
                if self.managed(f.target) {
                    self.discover(Some(f.initiator), f.target, now);
                }
            }
            for &a in &r.owned {
                if self.managed(a) {
                    self.discover(None, a, now);
                }
            }
            self.acknowledge(&r.gateway);
        }
        self.flush();
        Ok(ReportReply {
            counted,
            share: self.share(&r.gateway),
        })
    }

    /// Completes moves `gateway` released and adopts addresses it holds
    /// that nobody owns.
    fn acknowledge(&mut self, gateway: &str) {
        if self.cfg.mode != Mode::Target {
            return;
        }
        let gw = &self.gateways[gateway];
        let (applied, owned) = (gw.applied, gw.owned.clone());
        let mut released = Vec::new();
        let mut adopted = Vec::new();
        for (key, r) in &self.routes {
            match &r.ownership {
                Ownership::Moving { from, release, .. }
                    if from == gateway && applied >= *release && !owned.contains(&key.1) =>
                {
                    released.push(*key);
                }
                Ownership::Unowned if owned.contains(&key.1) => adopted.push(*key),
                _ => {}
            }
        }
        if released.is_empty() && adopted.is_empty() {
            return;
        }
        let g = self.bump();
        for key in released {
            let r = self.routes.get_mut(&key).expect("listed above");
            if let Ownership::Moving { from, to, .. } = &r.ownership {
                tracing::info!(target = %key.1, %from, %to, generation = g, "released: handing over");
                r.ownership = Ownership::Owned {
                    gateway: to.clone(),
                };
                r.changed = g;
            }
        }
        for key in adopted {
            tracing::info!(target = %key.1, gateway, generation = g, "adopting an address the gateway already holds");
            let r = self.routes.get_mut(&key).expect("listed above");
            r.ownership = Ownership::Owned {
                gateway: gateway.to_owned(),
            };
            r.changed = g;
        }
    }

    /// What `gateway` should own now.
    pub fn share(&self, gateway: &str) -> Share {
        let steering = self.ready
            && self.cfg.mode == Mode::Target
            && !self.persist_failed
            && !self.dirty
            && self.gateways.get(gateway).is_some_and(|g| g.alive);
        Share {
            gateway: gateway.to_owned(),
            generation: self.generation,
            addresses: steering.then(|| {
                self.routes
                    .iter()
                    .filter(|(_, r)| matches!(&r.ownership, Ownership::Owned { gateway: g } if g == gateway))
                    .map(|(k, _)| k.1)
                    .collect()
            }),
        }
    }

    /// Liveness: ends the start-up grace, declares silent gateways dead,
    /// bypasses dead old owners and abandons moves an alive owner did not
    /// release within a lease. Returns whether a failover is due.
    pub fn expire(&mut self, now: Instant) -> bool {
        if !self.ready {
            if now.duration_since(self.started) < self.cfg.lease {
                return false;
            }
            self.ready = true;
            tracing::info!("start-up grace over: steering addresses");
            self.bump();
        }
        let lease = self.cfg.lease;
        let mut died = Vec::new();
        for (name, g) in &mut self.gateways {
            if g.alive && now.duration_since(g.last_seen) >= lease {
                g.alive = false;
                died.push(name.clone());
            }
        }
        for name in &died {
            tracing::warn!(gateway = %name, lease_ms = lease.as_millis() as u64, "gateway silent for a lease: dead");
            self.counters.deaths += 1;
            self.epoch += 1;
        }
        let alive = |n: &str, gws: &BTreeMap<String, Gw>| gws.get(n).is_some_and(|g| g.alive);
        let mut bypass = Vec::new();
        let mut abandon = Vec::new();
        for (key, r) in &self.routes {
            if let Ownership::Moving { from, to, .. } = &r.ownership {
                if !alive(from, &self.gateways) && alive(to, &self.gateways) {
                    bypass.push(*key);
                } else if alive(from, &self.gateways) && now.duration_since(r.since) >= lease {
                    abandon.push(*key);
                }
            }
        }
        if !bypass.is_empty() || !abandon.is_empty() {
            let g = self.bump();
            for key in bypass {
                let r = self.routes.get_mut(&key).expect("listed above");
                if let Ownership::Moving { from, to, .. } = &r.ownership {
                    tracing::warn!(target = %key.1, %from, %to, generation = g, "old owner dead: bypassed");
                    r.ownership = Ownership::Owned {
                        gateway: to.clone(),
                    };
                    r.changed = g;
                    self.counters.bypassed += 1;
                }
            }
            for key in abandon {
                let r = self.routes.get_mut(&key).expect("listed above");
                if let Ownership::Moving { from, to, .. } = &r.ownership {
                    tracing::warn!(target = %key.1, %from, %to, generation = g, "old owner did not release within a lease: move abandoned");
                    r.ownership = Ownership::Owned {
                        gateway: from.clone(),
                    };
                    r.changed = g;
                    self.counters.abandoned += 1;
                }
            }
        }
        if self.persist_failed {
            // Retry: shares stay "keep what you hold" until it works.
            self.dirty = true;
        }
        self.flush();
        self.needs_failover()
    }

    fn needs_failover(&self) -> bool {
        if !self.ready || !self.gateways.values().any(|g| g.alive) {
            return false;
        }
        self.routes.values().any(|r| match r.ownership.assigned() {
            None => true,
            Some(g) => !self.gateways.get(g).is_some_and(|g| g.alive),
        })
    }

    /// Ends an interval: one sample into the window; persists the rates.
    pub fn close_interval(&mut self) {
        let gws = &self.gateways;
        self.stats
            .close_interval(|n| gws.get(n).is_some_and(|g| g.alive));
        self.settled = self.settled.saturating_add(1);
        self.intervals += 1;
        // Rates are refreshed on disk once per window (and with every new
        // generation): a restart loses at most one window of them.
        if let Some(store) = &self.store
            && !self.dirty
            && self.intervals.is_multiple_of(self.cfg.window as u64)
            && let Err(e) = store.save(&self.saved())
        {
            tracing::warn!(error = %crate::dataplane::error_chain(&e), "cannot persist the rates");
            self.counters.persist_failures += 1;
        }
    }

    /// Rates per route, bytes/s, keyed like the routes.
    pub fn rates(&self) -> HashMap<RouteKey, f64> {
        let matrix = match (&self.apriori, self.cfg.traffic_replace) {
            (Some(m), true) => m,
            _ => self.stats.matrix(),
        };
        let mut out = HashMap::new();
        for ((h, t), r) in matrix {
            let key = match self.cfg.mode {
                Mode::Target => (None, *t),
                Mode::Pair => (Some(*h), *t),
            };
            *out.entry(key).or_default() += r;
        }
        out
    }

    fn moves_in_flight(&self) -> usize {
        self.routes
            .values()
            .filter(|r| matches!(r.ownership, Ownership::Moving { .. }))
            .count()
    }

    /// The problem for a rebalance, or `None` when there is nothing to do:
    /// grace not over, no alive gateway, no route, or (periodic only) moves
    /// still in flight or fewer than `window` intervals since the last
    /// adopted map.
    pub fn plan(&self, trigger: Trigger) -> Option<Plan> {
        if !self.ready || self.routes.is_empty() || !self.gateways.values().any(|g| g.alive) {
            return None;
        }
        if trigger == Trigger::Interval
            && (self.moves_in_flight() > 0 || self.settled < self.cfg.window)
        {
            return None;
        }
        let rates = self.rates();
        let gateways = self
            .gateways
            .iter()
            .map(|(n, g)| Gateway {
                name: n.clone(),
                // Dead gateways are drained, not removed, so that moving
                // off them counts and `current` still names them.
                capacity: if g.alive { g.capacity } else { 0.0 },
            })
            .collect();
        let keys: Vec<RouteKey> = self.routes.keys().copied().collect();
        let routes = self
            .routes
            .iter()
            .map(|(k, r)| Route {
                target: k.1,
                host: k.0,
                rate: rates.get(k).copied().unwrap_or(0.0),
                current: r.ownership.assigned().map(str::to_owned),
                allowed: None,
            })
            .collect();
        Some(Plan {
            problem: Problem {
                gateways,
                routes,
                w_var: self.cfg.w_var,
                w_change: self.cfg.w_change,
            },
            options: self.cfg.solver.clone(),
            keys,
            epoch: self.epoch,
            trigger,
        })
    }

    /// Adopts `solution` of `plan` if it is still current and, for a
    /// periodic rebalance, gains at least `min_gain`.
    pub fn adopt(
        &mut self,
        plan: &Plan,
        solution: &Solution,
        solve_time: Duration,
        now: Instant,
    ) -> RebalanceRecord {
        self.counters.last_solve_s = solve_time.as_secs_f64();
        let p = &plan.problem;
        let current: Option<Vec<usize>> = p
            .routes
            .iter()
            .map(|r| {
                let c = r.current.as_deref()?;
                p.gateways
                    .iter()
                    .position(|g| g.name == c && g.capacity > 0.0)
            })
            .collect();
        let before = current.as_ref().and_then(|a| optimize::evaluate(p, a).ok());
        let gain = before
            .as_ref()
            .map_or(f64::INFINITY, |e| e.cost - solution.cost);
        let mut record = RebalanceRecord {
            at_ms: SystemTime::now()
                .duration_since(SystemTime::UNIX_EPOCH)
                .map_or(0, |d| d.as_millis() as u64),
            generation: self.generation,
            trigger: plan.trigger.label().into(),
            adopted: false,
            reason: String::new(),
            cost_before: before.as_ref().map(|e| e.cost),
            cost_after: solution.cost,
            var_norm_before: before.as_ref().map(|e| e.var_norm),
            var_norm_after: solution.var_norm,
            moves: solution.moves,
            duration_ms: solve_time.as_secs_f64() * 1000.0,
            solver: solution.solver,
        };
        let result = if plan.epoch != self.epoch {
            record.reason = "state changed while solving: retry next time".into();
            "superseded"
        } else if before.is_some() && solution.moves == 0 {
            record.reason = "no better map".into();
            "kept"
        } else if before.is_some() && plan.trigger == Trigger::Interval && gain < self.cfg.min_gain
        {
            record.reason = format!("gain {gain:.4} < min-gain {}", self.cfg.min_gain);
            "kept"
        } else {
            record.reason = if before.is_none() {
                "routes on dead gateways or on none".into()
            } else {
                format!("gain {gain:.4}")
            };
            self.apply(plan, solution, now);
            record.adopted = true;
            record.generation = self.generation;
            "adopted"
        };
        *self.counters.rebalances.entry(result).or_default() += 1;
        tracing::info!(
            trigger = plan.trigger.label(),
            result,
            reason = %record.reason,
            generation = self.generation,
            moves = solution.moves,
            var_norm = solution.var_norm,
            solve_ms = record.duration_ms,
            "rebalance"
        );
        if !record.adopted && self.history.back().is_some_and(|h| !h.adopted) {
            self.history.pop_back();
        }
        self.history.push_back(record.clone());
        while self.history.len() > HISTORY {
            self.history.pop_front();
        }
        self.flush();
        record
    }

    fn apply(&mut self, plan: &Plan, solution: &Solution, now: Instant) {
        let g = self.bump();
        self.settled = 0;
        let alive: BTreeSet<String> = self
            .gateways
            .iter()
            .filter(|(_, g)| g.alive)
            .map(|(n, _)| n.clone())
            .collect();
        let enforced = self.cfg.mode == Mode::Target;
        for (key, &gi) in plan.keys.iter().zip(&solution.assignment) {
            let to = plan.problem.gateways[gi].name.clone();
            let Some(r) = self.routes.get_mut(key) else {
                continue;
            };
            let next = match &r.ownership {
                Ownership::Owned { gateway } if *gateway == to => continue,
                Ownership::Moving { to: t, .. } if *t == to => continue,
                Ownership::Moving { from, .. } if *from == to => Ownership::Owned { gateway: to },
                Ownership::Owned { gateway: from } | Ownership::Moving { from, .. }
                    if enforced && alive.contains(from) =>
                {
                    let release = match &r.ownership {
                        Ownership::Moving { release, .. } => *release,
                        _ => g,
                    };
                    Ownership::Moving {
                        from: from.clone(),
                        to,
                        release,
                    }
                }
                _ => Ownership::Owned { gateway: to },
            };
            if !matches!(r.ownership, Ownership::Moving { .. }) {
                r.since = now;
            }
            if !matches!(r.ownership, Ownership::Unowned) {
                self.counters.moves += 1;
            }
            r.ownership = next;
            r.changed = g;
        }
    }

    /// `GET /v1/status`.
    pub fn status(&self, now: Instant) -> Status {
        let rates = self.rates();
        let mut loads: BTreeMap<&str, f64> =
            self.gateways.keys().map(|n| (n.as_str(), 0.0)).collect();
        for (k, r) in &self.routes {
            if let Some(g) = r.ownership.assigned()
                && let Some(l) = loads.get_mut(g)
            {
                *l += rates.get(k).copied().unwrap_or(0.0);
            }
        }
        let caps: Vec<f64> = self
            .gateways
            .values()
            .map(|g| if g.alive { g.capacity } else { 0.0 })
            .collect();
        let load_vec: Vec<f64> = loads.values().copied().collect();
        Status {
            generation: self.generation,
            mode: self.cfg.mode,
            interval_ms: self.cfg.interval.as_millis() as u64,
            window: self.cfg.window,
            lease_ms: self.cfg.lease.as_millis() as u64,
            var_norm: optimize::var_norm(&load_vec, &caps),
            gateways: self
                .gateways
                .iter()
                .map(|(n, g)| GatewayStatus {
                    name: n.clone(),
                    capacity: g.capacity,
                    alive: g.alive,
                    last_report_ms: Some(
                        now.saturating_duration_since(g.last_seen).as_millis() as u64
                    ),
                    load: loads[n.as_str()],
                    utilisation: loads[n.as_str()] / g.capacity,
                    applied: g.applied,
                    owned: g.owned.iter().copied().collect(),
                    enforce: g.enforce,
                })
                .collect(),
            map: self
                .routes
                .iter()
                .map(|(k, r)| MapEntry {
                    target: k.1,
                    host: k.0,
                    ownership: r.ownership.clone(),
                    changed: r.changed,
                    rate: rates.get(k).copied().unwrap_or(0.0),
                })
                .collect(),
            matrix: {
                let m = match (&self.apriori, self.cfg.traffic_replace) {
                    (Some(m), true) => m,
                    _ => self.stats.matrix(),
                };
                let mut v: Vec<FlowRate> = m
                    .iter()
                    .map(|(&(host, target), &rate)| FlowRate { host, target, rate })
                    .collect();
                v.sort_by_key(|f| (f.target, f.host));
                v
            },
            rebalances: self.history.iter().cloned().collect(),
            report_errors: self
                .counters
                .errors
                .iter()
                .map(|(k, v)| (k.clone(), *v))
                .collect(),
        }
    }
}

/// Runs the solver on a plan and times it.
///
/// Two candidates, scored on the same objective against the map in force:
/// the solver started from the map in force, and the solver from scratch
/// (no current gateway) whose moves are then counted. A change-aware
/// heuristic stays close to the map it starts from and can settle in a
/// local optimum; the fresh start escapes it when the gain pays for the
/// moves. Whichever costs less wins (the first on a tie).
pub fn solve(plan: &Plan) -> Result<(Solution, Duration), optimize::OptimizeError> {
    let t = Instant::now();
    let near = optimize::solve(&plan.problem, &plan.options)?;
    let mut fresh_problem = plan.problem.clone();
    for r in &mut fresh_problem.routes {
        r.current = None;
    }
    let mut fresh = optimize::solve(&fresh_problem, &plan.options)?;
    relabel(&plan.problem, &mut fresh.assignment);
    let scored = optimize::evaluate(&plan.problem, &fresh.assignment)?;
    let best = if scored.cost < near.cost - 1e-12 {
        Solution {
            cost: scored.cost,
            var_norm: scored.var_norm,
            moves: scored.moves,
            loads: scored.loads,
            ..fresh
        }
    } else {
        near
    };
    Ok((best, t.elapsed()))
}

/// Renames the gateways of a map made from scratch to keep as many routes
/// as possible where they are: a map from scratch is only defined up to a
/// permutation of gateways of equal capacity, and the permutation that
/// overlaps most with the map in force moves least. Greedy matching by
/// overlap (largest first); loads are only permuted among equal
/// capacities, so var_norm does not change.
fn relabel(p: &Problem, assignment: &mut [usize]) {
    let k = p.gateways.len();
    let index = p.gateway_index();
    let mut overlap = vec![0usize; k * k];
    for (r, &b) in p.routes.iter().zip(assignment.iter()) {
        if let Some(&g) = r.current.as_deref().and_then(|c| index.get(c)) {
            overlap[b * k + g] += 1;
        }
    }
    let same =
        |a: usize, b: usize| p.gateways[a].capacity.to_bits() == p.gateways[b].capacity.to_bits();
    let mut pairs: Vec<(usize, usize, usize)> = (0..k)
        .flat_map(|b| (0..k).map(move |g| (b, g)))
        .filter(|&(b, g)| overlap[b * k + g] > 0 && same(b, g))
        .map(|(b, g)| (overlap[b * k + g], b, g))
        .collect();
    pairs.sort_by(|x, y| y.0.cmp(&x.0).then(x.1.cmp(&y.1)).then(x.2.cmp(&y.2)));
    let mut perm: Vec<Option<usize>> = vec![None; k];
    let mut taken = vec![false; k];
    for (_, b, g) in pairs {
        if perm[b].is_none() && !taken[g] {
            perm[b] = Some(g);
            taken[g] = true;
        }
    }
    for (b, p) in perm.iter_mut().enumerate() {
        if p.is_none() {
            let g = (0..k)
                .find(|&g| !taken[g] && same(b, g))
                .expect("a bin always has its own capacity class");
            *p = Some(g);
            taken[g] = true;
        }
    }
    for a in assignment.iter_mut() {
        *a = perm[*a].expect("every bin is mapped");
    }
}
