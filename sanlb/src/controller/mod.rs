//! The statistical server (the patent's fig. 3): agents report cumulative
//! counters, the controller keeps the traffic matrix over a sliding window,
//! rebalances with hysteresis and hands out generation-numbered shares.
//!
//! [`Controller`] is the state machine, driven by calls with the current
//! time; [`http::app`] serves it, [`server::Server`] runs it with its timers.
//! Where each rule lives:
//!
//! | concern | file |
//! | --- | --- |
//! | settings and their checks | `config.rs` |
//! | gateways, their reports and leases | `gateways.rs` |
//! | heartbeats, probes of silent gateways, link state, drains, conflicts | `faults.rs` |
//! | the break-before-make ownership state machine | `ownership.rs` |
//! | pair mode: data addresses, portals, pair moves, pair shares | `pairs.rs` |
//! | Storage Name Server mode: the map published to an iSNS server | `isns.rs` |
//! | counters → rates over the window | `rates.rs` |
//! | when and whether a new map is adopted | `rebalance.rs` |
//! | advise mode, pause, pins, the move cool-down | `controls.rs` |
//! | the status read model | `view.rs` |
//! | the load history of the status page | `trend.rs` |
//! | the status page (`/`) and its sessions | `page.rs`, `page/` |
//! | lease checks, the rebalance period, solves off the timer path | `timers.rs` |
//! | the state file | `store.rs` |
//! | where the state lives (nowhere, the file, etcd) and when it is durable | `persist.rs` |
//! | leading or following in a cluster of controllers (etcd) | `leadership.rs` |
//! | generations, shares, the order of the steps | this file |
//!
//! ## Generations
//! The generation counts changes of the hand-out: every adopted map, every
//! batch of completed releases, failover, the end of the start-up grace. It
//! is persisted before any share that carries it leaves the controller, so a
//! restarted controller resumes it and never hands out an older one (with
//! etcd, where writes are asynchronous, see `persist.rs`: a share carries
//! the last generation stored, and addresses only when that is the one in
//! memory).

mod config;
pub mod controls;
mod faults;
mod gateways;
pub mod http;
pub mod isns;
pub mod leadership;
pub mod metrics;
mod ownership;
pub mod page;
mod pairs;
mod persist;
pub mod rates;
mod rebalance;
pub mod server;
pub mod store;
mod timers;
mod trend;
mod view;

use std::{
    collections::{BTreeMap, HashMap, VecDeque},
    net::IpAddr,
    time::Instant,
};

pub use self::faults::{DrainError, FaultEvents};
pub use self::gateways::BootConflict;
pub use self::{
    config::{Config, ConfigError},
    ownership::RouteKey,
    pairs::PairSettings,
    rebalance::{Rebalance, Trigger},
};
use self::{
    gateways::{Gateway, Gateways},
    ownership::{RouteState, Routes},
    persist::Backend,
    rates::{FlowKey, Ingest, Rates, RatesError},
};
pub use crate::proto::Ownership;
use crate::proto::{
    CATCH_UP_LIMIT, MAX_GATEWAYS, MAX_GENERATION, MAX_ROUTES, Mode, RebalanceRecord, Report,
    ReportError, ReportReply, Share,
};
use store::{Saved, SavedDataAddress, SavedGateway, SavedRoute, Store, StoreError};

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
    /// The state file's data addresses do not fit the data pool.
    #[error(
        "state file: data address {address} of {target} on {gateway} is outside the data pool {pool} (restore the pool, or move the file away to start afresh)"
    )]
    DataPool {
        /// The address.
        address: IpAddr,
        /// Its entity.
        target: IpAddr,
        /// Its gateway.
        gateway: String,
        /// The pool configured.
        pool: String,
    },
    /// Bad configuration.
    #[error("configuration: {0}")]
    Config(#[from] ConfigError),
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
    #[error(transparent)]
    Invalid(#[from] ReportError),
    /// The counters are inconsistent.
    #[error(transparent)]
    Rates(#[from] RatesError),
    /// Another live agent reports under the same gateway name.
    #[error(transparent)]
    Conflict(#[from] BootConflict),
}

impl IngestError {
    /// Short label for metrics.
    pub fn reason(&self) -> &'static str {
        match self {
            Self::Invalid(e) => e.field,
            Self::Rates(RatesError::Absurd { .. }) => "absurd_count",
            Self::Rates(RatesError::UptimeBackwards { .. }) => "uptime_backwards",
            Self::Rates(RatesError::DuplicateFlow { .. }) => "duplicate_flow",
            Self::Conflict(_) => "boot_conflict",
        }
    }
}

/// What happened since start, for metrics.
#[derive(Debug, Default, Clone)]
pub struct Events {
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
    /// Reports refused because another agent owns the gateway name.
    pub boot_conflicts: u64,
    /// Gateways forgotten after a long silence.
    pub forgotten: u64,
    /// Routes not created because the controller holds [`MAX_ROUTES`].
    pub routes_refused: u64,
    /// Generations caught up to from a gateway that had seen more.
    pub catch_ups: u64,
    /// Pair moves whose old gateway was told to end their connections.
    pub pair_evictions: u64,
    /// Solver times (the histogram of `/metrics`).
    pub solve_times: metrics::Histogram,
    /// Requests refused other than the agents' (status, metrics, the page,
    /// controls), by (endpoint, reason).
    pub refused: BTreeMap<(&'static str, String), u64>,
    /// Heartbeats, probes, conflicts, drains.
    pub faults: FaultEvents,
}

/// The controller's state machine.
#[derive(Debug)]
pub struct Controller {
    cfg: Config,
    generation: u64,
    /// Bumped on every change that invalidates a rebalance under way.
    epoch: u64,
    gateways: Gateways,
    routes: Routes,
    /// Pair mode's data addresses.
    data: pairs::DataAddresses,
    rates: Rates,
    apriori: Option<HashMap<FlowKey, f64>>,
    /// Targets named up front (`targets` and the a-priori matrix).
    listed: std::collections::BTreeSet<IpAddr>,
    history: VecDeque<RebalanceRecord>,
    started: Instant,
    ready: bool,
    /// Intervals closed since the last adopted map: rates measured while
    /// routes move (one is briefly held by nobody) are not representative,
    /// so the next periodic rebalance waits for a fresh window.
    settled: usize,
    /// Intervals closed since start.
    intervals: u64,
    events: Events,
    /// Where the state is persisted.
    backend: Backend,
    /// The last generation whose state is durable: the one shares carry.
    persisted: u64,
    /// Generation changed and not yet persisted.
    dirty: bool,
    /// The generation reached [`MAX_GENERATION`]: no more changes.
    exhausted: bool,
    persist_failed: bool,
    notify: tokio::sync::watch::Sender<u64>,
    controls: controls::Controls,
    trend: trend::Trend,
    faults: faults::Faults,
}

impl Controller {
    /// A controller, resuming from `store` when it holds a state.
    pub fn new(cfg: Config, store: Option<Store>, now: Instant) -> Result<Self, ControllerError> {
        let saved = store.as_ref().map(Store::load).transpose()?.flatten();
        let fresh = saved.is_none();
        let c = Self::build(
            cfg,
            store.map_or(Backend::Memory, Backend::File),
            saved,
            now,
        )?;
        if fresh && let Backend::File(store) = &c.backend {
            // A state file that cannot be written is a start-up error, not
            // a surprise at the first move.
            store.save(&c.saved())?;
        }
        Ok(c)
    }

    /// A controller persisting to `backend`, resuming from `saved`.
    fn build(
        cfg: Config,
        backend: Backend,
        saved: Option<Saved>,
        now: Instant,
    ) -> Result<Self, ControllerError> {
        cfg.validate()?;
        let apriori = cfg
            .traffic
            .as_ref()
            .map(|m| m.rates(cfg.interval.as_secs_f64()));
        let mut c = Self {
            rates: Rates::new(cfg.window),
            generation: 0,
            epoch: 0,
            gateways: Gateways::default(),
            routes: Routes::default(),
            data: pairs::DataAddresses::default(),
            listed: cfg
                .targets
                .iter()
                .copied()
                .chain(cfg.traffic.iter().flat_map(|m| m.targets.iter().copied()))
                .collect(),
            apriori,
            history: VecDeque::new(),
            started: now,
            ready: false,
            settled: 0,
            intervals: 0,
            events: Events::default(),
            backend,
            persisted: 0,
            dirty: false,
            exhausted: false,
            persist_failed: false,
            notify: tokio::sync::watch::channel(0).0,
            controls: controls::Controls::default(),
            trend: trend::Trend::default(),
            faults: faults::Faults::default(),
            cfg,
        };
        if let Some(saved) = saved {
            c.restore(saved, now)?;
        }
        if let Some(m) = &c.apriori {
            if !c.cfg.traffic_replace {
                c.rates.seed(m);
            }
            let keys: Vec<_> = m.keys().copied().collect();
            for (h, t) in keys {
                c.discover(Some(h), t, now);
            }
        }
        // Entities: target mode's routes, pair mode's portals.
        for t in c.cfg.targets.clone() {
            c.discover(None, t, now);
        }
        c.notify.send_replace(c.persisted);
        Ok(c)
    }

    /// Writes the state file now (on shutdown; with etcd the server makes a
    /// last guarded write instead).
    pub fn save(&self) -> Result<(), ControllerError> {
        if let Backend::File(store) = &self.backend {
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
        // Whatever was handed out carried at most this generation.
        self.persisted = saved.generation;
        for g in saved.gateways {
            // A fresh lease: nobody could report while we were down. One
            // that was silent is suspect again: probed before its routes
            // move (it may have been serving).
            let mut gw = Gateway::new(g.capacity, g.alive, now);
            if !g.alive {
                gw.health.silence = faults::Silence::Suspect;
            }
            Self::restore_drain(&mut gw, g.drained.as_ref());
            self.gateways.insert(g.name, gw);
        }
        for r in saved.routes {
            self.routes.insert(
                (r.host, r.target),
                RouteState {
                    ownership: r.ownership,
                    changed: r.changed,
                    // A move in flight gets a whole lease after the start-up
                    // grace for its old owner to release: nothing was handed
                    // out since the state was saved.
                    since: now + self.cfg.lease,
                },
            );
        }
        for d in saved.data_addresses {
            if let Some(pool) = &self.cfg.pairs.data_pool
                && !pool.contains(&d.address)
            {
                return Err(ControllerError::DataPool {
                    address: d.address,
                    target: d.target,
                    gateway: d.gateway,
                    pool: pool.to_string(),
                });
            }
            self.data.insert(d.target, d.gateway, d.address);
        }
        // Validated on load (`Saved::validate`): finite, in range.
        let rates: HashMap<FlowKey, f64> = saved
            .rates
            .into_iter()
            .map(|(h, t, r)| ((h, t), r))
            .collect();
        if !rates.is_empty() {
            self.rates.seed(&rates);
        }
        self.history = saved.history.into();
        self.restore_controls(saved.controls, now);
        tracing::info!(
            generation = self.generation,
            gateways = self.gateways.len(),
            routes = self.routes.len(),
            from = self.backend.describe(),
            "resumed the saved state"
        );
        Ok(())
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
                    drained: Self::saved_drain(g),
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
            rates: self.rates.export(),
            history: self.history.iter().cloned().collect(),
            data_addresses: self
                .data
                .iter()
                .map(|(target, gateway, address)| SavedDataAddress {
                    target,
                    gateway: gateway.to_owned(),
                    address,
                })
                .collect(),
            controls: self.saved_controls(),
        }
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

    /// What happened since start, for metrics.
    pub fn events(&self) -> &Events {
        &self.events
    }

    /// Counts a refused request of an agent (`/v1/report`, `/v1/share`).
    pub fn count_error(&mut self, reason: &str) {
        *self.events.errors.entry(reason.to_owned()).or_default() += 1;
    }

    /// Counts a refused request of anyone else (`endpoint`: `status`,
    /// `metrics`, `page`, `control`, …): not a report error.
    pub fn count_refused(&mut self, endpoint: &'static str, reason: &str) {
        *self
            .events
            .refused
            .entry((endpoint, reason.to_owned()))
            .or_default() += 1;
    }

    /// Whether `addr` is a storage entity's address (data addresses never
    /// are, even inside a storage range).
    fn managed(&self, addr: IpAddr) -> bool {
        (self.listed.contains(&addr) || self.cfg.storage.iter().any(|n| n.contains(&addr)))
            && !self.in_data_pool(&addr)
    }

    /// Makes a route known: the entity's in target mode; in pair mode the
    /// pair's (with a host) and the entity's portal route.
    fn discover(&mut self, host: Option<IpAddr>, target: IpAddr, now: Instant) {
        let key = match self.cfg.mode {
            Mode::Target => (None, target),
            Mode::Pair => {
                if host.is_some() {
                    self.discover(None, target, now);
                }
                (host, target)
            }
        };
        if self.routes.len() >= MAX_ROUTES && !self.routes.contains(&key) {
            self.events.routes_refused += 1;
            return;
        }
        if self.routes.discover(key, self.generation, now) {
            self.epoch += 1;
        }
    }

    /// A new generation for a change of the hand-out. It never wraps: at
    /// [`MAX_GENERATION`] (2⁵² changes past anything loadable) the
    /// controller stops steering rather than reuse a generation.
    fn bump(&mut self) -> u64 {
        if self.generation >= MAX_GENERATION {
            if !self.exhausted {
                tracing::error!(
                    generation = self.generation,
                    "generations exhausted: handing out no more changes"
                );
            }
            self.exhausted = true;
        } else {
            self.generation += 1;
        }
        self.epoch += 1;
        self.dirty = true;
        self.generation
    }

    /// Persists when the generation changed, then announces it. Shares are
    /// built only after this, so none carries an unpersisted generation. A
    /// synchronous backend (the file) is done on return; etcd's writer is
    /// woken and announces once its write is acknowledged (`persist.rs`).
    fn flush(&mut self) {
        if !self.dirty {
            return;
        }
        let file = match &self.backend {
            Backend::Memory => None,
            Backend::File(store) => Some(store.save(&self.saved())),
            Backend::Etcd(remote) => {
                remote.wake();
                return;
            }
        };
        match file {
            None | Some(Ok(())) => {
                if self.persist_failed {
                    tracing::info!("state file writable again");
                }
                self.stored(self.generation);
            }
            Some(Err(e)) => self.persist_error(&e),
        }
    }

    /// Takes a report; on error nothing changes (but a refused contender
    /// for a gateway name is remembered, for status).
    pub fn ingest(&mut self, r: &Report, now: Instant) -> Result<ReportReply, IngestError> {
        r.validate()?;
        if self.rates.is_retired(&r.gateway, &r.boot_id) {
            // A late report of an agent run already replaced: it changes
            // nothing, renews nothing and is handed nothing.
            self.events.stale_reports += 1;
            return Ok(ReportReply {
                counted: false,
                share: Share {
                    gateway: r.gateway.clone(),
                    generation: self.persisted,
                    addresses: None,
                    pairs: None,
                },
            });
        }
        self.gateways
            .admit(&r.gateway, &r.boot_id, now, self.takeover())
            .inspect_err(|_| self.events.boot_conflicts += 1)?;
        if self.gateways.get(&r.gateway).is_none() && self.gateways.len() >= MAX_GATEWAYS {
            return Err(ReportError {
                field: "gateway",
                message: format!(
                    "the controller already keeps {MAX_GATEWAYS} gateways (dead ones are forgotten after {})",
                    humanize(self.cfg.forget_after)
                ),
            }
            .into());
        }
        if r.applied > self.generation && r.applied > CATCH_UP_LIMIT {
            return Err(ReportError {
                field: "applied",
                message: format!(
                    "{} is ahead of this controller's generation {} and beyond the {CATCH_UP_LIMIT} it catches up to",
                    r.applied, self.generation
                ),
            }
            .into());
        }
        let outcome = self.rates.ingest(r)?;
        let counted = outcome != Ingest::Stale;
        if counted {
            self.events.reports += 1;
        } else {
            self.events.stale_reports += 1;
        }
        if self.gateways.record(r, counted, now) {
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
                self.events.catch_ups += 1;
            }
            for f in &r.flows {
                if self.pair_mode() {
                    self.pair_flow(f.initiator, f.target, now);
                } else if self.managed(f.target) {
                    self.discover(Some(f.initiator), f.target, now);
                }
            }
            for &a in &r.owned {
                if self.managed(a) {
                    self.discover(None, a, now);
                }
            }
            self.acknowledge(&r.gateway);
            if self.pair_mode() {
                self.allocate_data();
                self.advance_pairs(now);
            }
            self.end_handoff(&r.gateway);
        }
        self.flush();
        Ok(ReportReply {
            counted,
            share: self.share(&r.gateway),
        })
    }

    /// Completes the moves `gateway` released and adopts addresses it holds
    /// that nobody owns (target mode's addresses, pair mode's portals).
    fn acknowledge(&mut self, gateway: &str) {
        let Some(gw) = self.gateways.get(gateway) else {
            return;
        };
        let next = self.generation + 1;
        let (released, adopted) =
            self.routes
                .acknowledge(gateway, gw.applied, &gw.owned.clone(), next);
        if released.is_empty() && adopted.is_empty() {
            return;
        }
        let g = self.bump();
        debug_assert_eq!(g, next);
        for key in released {
            tracing::info!(target = %key.1, from = gateway, generation = g, "released: handing over");
        }
        for key in adopted {
            tracing::info!(target = %key.1, gateway, generation = g, "adopting an address the gateway already holds");
        }
    }

    /// Whether the agent run `boot_id` may be handed `gateway`'s share: the
    /// name is unknown, or that run owns it.
    pub fn may_share(&self, gateway: &str, boot_id: &str) -> bool {
        self.gateways.get(gateway).is_none() || self.gateways.is_owner(gateway, boot_id)
    }

    /// Silence after which another agent run takes a gateway name over.
    fn takeover(&self) -> std::time::Duration {
        self.cfg.lease / 2
    }

    /// What `gateway` should own now.
    pub fn share(&self, gateway: &str) -> Share {
        let steering = self.ready
            && !self.cfg.advise
            && !self.persist_failed
            && !self.dirty
            && !self.exhausted
            && self.backend.may_hand_out()
            && self.gateways.alive(gateway);
        let (addresses, pairs) = match (steering, self.cfg.mode) {
            (false, _) => (None, None),
            (true, Mode::Target) => (Some(self.routes.owned_by(gateway)), None),
            (true, Mode::Pair) => {
                let (addresses, pairs) = self.pair_share(gateway);
                (Some(addresses), Some(pairs))
            }
        };
        Share {
            gateway: gateway.to_owned(),
            // Never one not yet durable (equal to `generation` once stored).
            generation: self.persisted,
            addresses,
            pairs,
        }
    }

    /// Liveness: ends the start-up grace, makes gateways silent for a lease
    /// suspect and probes them (`faults.rs`), bypasses dead old owners and
    /// abandons moves an old owner did not release within the release
    /// timeout. Returns whether a failover is due.
    pub fn expire(&mut self, now: Instant) -> bool {
        if !self.backend.active() {
            // A follower keeps no clock: the leader does.
            return false;
        }
        self.seen(now);
        if !self.ready {
            if now.saturating_duration_since(self.started) < self.cfg.startup_grace {
                return false;
            }
            self.ready = true;
            if self.cfg.advise {
                tracing::info!("start-up grace over: advising (advise mode steers nothing)");
            } else {
                tracing::info!("start-up grace over: steering addresses");
            }
            self.bump();
        }
        for name in self.gateways.expire(now, self.cfg.lease) {
            self.on_silent(&name, now);
            self.epoch += 1;
        }
        // Long gone and carrying nothing: forgotten, so that the state and
        // every solve stay bounded by the gateways that matter.
        let routes = &self.routes;
        for name in self
            .gateways
            .forget(now, self.cfg.forget_after, |n| routes.involves(n))
        {
            tracing::info!(gateway = %name, after = %humanize(self.cfg.forget_after), "dead gateway forgotten");
            self.rates.forget(&name);
            self.forget_data(&name);
            self.events.forgotten += 1;
            self.epoch += 1;
        }
        self.judge(now);
        let next = self.generation + 1;
        let gateways = &self.gateways;
        // A move's old owner that may still hold the address (alive with
        // its NIC up, or silent and not judged dead) must release it; one
        // that cannot hold it is bypassed.
        let expired = self.routes.expire_moves(
            |n| gateways.get(n).is_some_and(Gateway::present),
            now,
            self.cfg.release_timeout,
            next,
        );
        if !expired.bypassed.is_empty() || !expired.abandoned.is_empty() {
            let g = self.bump();
            for key in &expired.bypassed {
                tracing::warn!(target = %key.1, generation = g, "old owner dead: bypassed");
            }
            for key in &expired.abandoned {
                tracing::warn!(target = %key.1, generation = g, "old owner did not release within the release timeout: move abandoned");
            }
            self.events.bypassed += expired.bypassed.len() as u64;
            self.events.abandoned += expired.abandoned.len() as u64;
        }
        if self.pair_mode() {
            // A death may complete holds; portals fail over here, not in
            // the optimiser.
            self.advance_pairs(now);
            self.place_portals(now);
            self.allocate_data();
        }
        if self.persist_failed {
            // Retry: shares stay "keep what you hold" until it works.
            self.dirty = true;
        }
        self.flush();
        self.needs_failover()
    }

    fn needs_failover(&self) -> bool {
        if !self.ready || !self.any_takes_routes() {
            return false;
        }
        if self.pair_mode() {
            // The optimiser places pairs only, and only where a data
            // address lets them go.
            return self.routes.iter().any(|(k, r)| {
                k.0.is_some()
                    && r.ownership.assigned().is_none_or(|g| {
                        self.gateways
                            .get(g)
                            .is_none_or(|g| !(g.takes_routes() || g.pins(k.1)))
                    })
                    && self.placeable(k)
            });
        }
        self.stranded()
    }

    /// Ends an interval: one sample into the window; persists the rates.
    pub fn close_interval(&mut self) {
        if !self.backend.active() {
            return;
        }
        let gws = &self.gateways;
        self.rates.close_interval(|n| gws.alive(n));
        self.settled = self.settled.saturating_add(1);
        self.intervals += 1;
        self.sample_trend();
        // Rates are refreshed on disk once per window (and with every new
        // generation): a restart loses at most one window of them.
        if !self.dirty && self.intervals.is_multiple_of(self.cfg.window as u64) {
            self.persist_rates();
        }
    }

    /// The traffic matrix in use: the a-priori one when it replaces the
    /// measurements, else the window's (bytes/s per (host, target)).
    fn matrix(&self) -> &HashMap<FlowKey, f64> {
        match (&self.apriori, self.cfg.traffic_replace) {
            (Some(m), true) => m,
            _ => self.rates.matrix(),
        }
    }

    /// Samples in the rate window.
    pub fn window_samples(&self) -> usize {
        self.rates.samples()
    }

    /// Routes moving now.
    pub fn moves_in_flight(&self) -> usize {
        self.routes.moves_in_flight()
    }

    /// Rates per route, bytes/s, keyed like the routes.
    pub fn rates(&self) -> HashMap<RouteKey, f64> {
        let mut out = HashMap::new();
        for ((h, t), r) in self.matrix() {
            let key = match self.cfg.mode {
                Mode::Target => (None, *t),
                Mode::Pair => (Some(*h), self.entity_of(*t)),
            };
            *out.entry(key).or_default() += r;
        }
        out
    }
}

/// `1h`, `90s`, `250ms` for messages.
fn humanize(d: std::time::Duration) -> String {
    let ms = d.as_millis();
    if ms.is_multiple_of(3_600_000) && ms > 0 {
        format!("{}h", ms / 3_600_000)
    } else if ms.is_multiple_of(1000) {
        format!("{}s", ms / 1000)
    } else {
        format!("{ms}ms")
    }
}
