//! Storage Name Server mode (the patent's claim 5): the controller keeps an
//! iSNS server's registrations equal to its routing map, through
//! [`crate::isns::Reconciler`], so that a host asking the server for its
//! targets (open-iscsi's iSNS discovery) is told the portal of the gateway
//! the map gives it.
//!
//! - **What is published** ([`Controller::isns_map`]): every storage entity
//!   with target names, each name a target; every host of the host table
//!   ([`IsnsSettings::hosts`], address → initiator name) is assigned, per
//!   target, one portal. Target mode: the entity's own address on 3260
//!   (whichever gateway holds it). Pair mode: the data address of the
//!   gateway the map assigns the (host, entity) pair to, on the data port
//!   (the new gateway as soon as a move is decided); a host without a pair
//!   yet gets the entity's default, the data address of the gateway running
//!   its portal — where the portal would redirect it. Hosts outside the
//!   table and entities without names are not published (counted).
//! - **When**: the map is read under the controller's lock (a projection,
//!   no I/O) at every new generation, and at least every
//!   [`IsnsSettings::period`]; the sync itself runs on its own task, so
//!   ingest and lease checks never wait for the server. A generation is
//!   published only once persisted and while the controller steers (what
//!   gateways are told, the server is told): during the start-up grace, or
//!   while the state cannot be persisted, the server keeps what it has.
//! - **Failures**: a sync that fails (server down, refusing, a bad reply,
//!   no convergence) is logged and counted, and retried with a doubling
//!   backoff (from [`MIN_BACKOFF`] up to the period); the next sync reads
//!   the server's whole state again, so a server that comes back, with its
//!   old database or an empty one, is resynchronised completely.

use std::{
    collections::{BTreeMap, BTreeSet},
    fmt::Write as _,
    net::IpAddr,
    sync::{Arc, Mutex},
    time::Duration,
};

use tokio::time::Instant;

use super::{ConfigError, Controller, http::AppState};
use crate::{
    isns::{ClientConfig, Desired, IsnsCounters, IsnsError, Portal, Reconciler, ReconcilerConfig},
    proto::Mode,
};

/// First retry after a failed sync; doubles up to the period.
pub const MIN_BACKOFF: Duration = Duration::from_millis(250);
/// [`IsnsSettings::period`] by default.
pub const DEFAULT_PERIOD: Duration = Duration::from_secs(10);
/// [`IsnsSettings::source`] by default.
pub const DEFAULT_SOURCE: &str = "iqn.2026-01.org.sanlb:controller";
/// Most hosts the host table may list.
pub const MAX_HOSTS: usize = 65_536;

/// Where and how the controller publishes its map.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct IsnsSettings {
    /// The server, `HOST[:PORT]` (port 3205 by default).
    pub server: String,
    /// The iSCSI name the controller speaks as, registered as a control
    /// node.
    pub source: String,
    /// Host (initiator) address → its iSCSI initiator name: the hosts the
    /// server answers for.
    pub hosts: BTreeMap<IpAddr, String>,
    /// A full sync at least this often, besides one at every new
    /// generation: hand edits on the server are put right within it.
    pub period: Duration,
    /// Prefix of every entity and domain sanlb owns on the server.
    pub prefix: String,
}

impl IsnsSettings {
    /// Settings with the defaults.
    pub fn new(server: impl Into<String>) -> Self {
        Self {
            server: server.into(),
            source: DEFAULT_SOURCE.to_owned(),
            hosts: BTreeMap::new(),
            period: DEFAULT_PERIOD,
            prefix: ReconcilerConfig::default().prefix,
        }
    }

    /// Checks the values against the target names of the configuration
    /// (a name cannot be both a host's and a target's). Errors name the
    /// setting (`isns`, `isns_source`, `isns_period`, `host`).
    pub fn validate(
        &self,
        target_names: &BTreeMap<IpAddr, Vec<String>>,
    ) -> Result<(), ConfigError> {
        let bad = |setting, message: String| Err(ConfigError::Invalid { setting, message });
        if self.server.is_empty() || self.server.contains(char::is_whitespace) {
            return bad("isns", format!("{:?}: expected HOST[:PORT]", self.server));
        }
        if self.period.is_zero() {
            return bad("isns_period", "must be > 0".into());
        }
        if self.hosts.len() > MAX_HOSTS {
            return bad(
                "host",
                format!("{} hosts, at most {MAX_HOSTS}", self.hosts.len()),
            );
        }
        if let Err(e) = self.reconciler() {
            return match e {
                IsnsError::Config {
                    field: "source",
                    why,
                } => bad("isns_source", why),
                e => bad("isns", e.to_string()),
            };
        }
        let mut targets: BTreeMap<&str, IpAddr> = BTreeMap::new();
        for (addr, names) in target_names {
            for n in names {
                if let Some(other) = targets.insert(n, *addr)
                    && other != *addr
                {
                    return bad(
                        "target",
                        format!(
                            "{n} names both {other} and {addr}: one iSNS target cannot be two entities"
                        ),
                    );
                }
            }
        }
        let mut seen = BTreeMap::new();
        for (addr, name) in &self.hosts {
            if let Err(e) = crate::isns::reconcile::check_name("host", name) {
                return bad("host", format!("{addr}: {e}"));
            }
            if targets.contains_key(name.as_str()) || *name == self.source {
                return bad(
                    "host",
                    format!("{addr}: {name} is also a target's or the controller's name"),
                );
            }
            if let Some(other) = seen.insert(name.as_str(), addr) {
                return bad(
                    "host",
                    format!("{addr} and {other} have the same name {name}"),
                );
            }
        }
        Ok(())
    }

    fn reconciler(&self) -> Result<Reconciler, IsnsError> {
        Reconciler::new(
            ClientConfig::new(self.server.clone(), self.source.clone()),
            ReconcilerConfig {
                prefix: self.prefix.clone(),
                ..ReconcilerConfig::default()
            },
        )
    }
}

/// The map as the server should hold it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct IsnsMap {
    /// The generation it is the map of.
    pub generation: u64,
    /// The registrations.
    pub desired: Desired,
    /// Hosts with traffic in the window that the host table does not name.
    pub unnamed_hosts: usize,
    /// Storage entities without a target name.
    pub unnamed_entities: usize,
}

impl Controller {
    /// The map in force as iSNS registrations for the hosts of `hosts`
    /// (address → initiator name); `None` while the controller does not
    /// steer (start-up grace, state not persisted, generations exhausted):
    /// the server then keeps what it has, like the gateways.
    pub fn isns_map(&self, hosts: &BTreeMap<IpAddr, String>) -> Option<IsnsMap> {
        if !self.ready || self.persist_failed || self.dirty || self.exhausted {
            return None;
        }
        let mut map = IsnsMap {
            generation: self.generation,
            ..IsnsMap::default()
        };
        let names = &self.cfg.pairs.target_names;
        let entities: Vec<IpAddr> = self
            .routes
            .keys()
            .filter(|k| k.0.is_none())
            .map(|k| k.1)
            .collect();
        let data_port = self.cfg.pairs.data_port;
        for e in entities {
            let Some(targets) = names.get(&e).filter(|n| !n.is_empty()) else {
                map.unnamed_entities += 1;
                continue;
            };
            let portal_of = |host: Option<IpAddr>| -> Option<Portal> {
                match self.cfg.mode {
                    Mode::Target => Some(Portal::new(e, crate::portal::ISCSI_PORT)),
                    Mode::Pair => {
                        let gateway =
                            |key| self.routes.get(&key).and_then(|r| r.ownership.assigned());
                        host.and_then(|h| gateway((Some(h), e)))
                            .or_else(|| gateway((None, e)))
                            .and_then(|g| self.data.get(e, g))
                            .map(|d| Portal::new(d, data_port))
                    }
                }
            };
            let portals: Vec<Portal> = match self.cfg.mode {
                Mode::Target => vec![Portal::new(e, crate::portal::ISCSI_PORT)],
                Mode::Pair => self
                    .data
                    .gateways(e)
                    .filter_map(|g| self.data.get(e, g))
                    .map(|d| Portal::new(d, data_port))
                    .collect(),
            };
            if portals.is_empty() {
                continue;
            }
            for t in targets {
                map.desired.add_target(t.clone(), portals.iter().copied());
            }
            for (addr, name) in hosts {
                if let Some(p) = portal_of(Some(*addr)) {
                    for t in targets {
                        map.desired.assign(name.clone(), t.clone(), p);
                    }
                }
            }
        }
        let seen: BTreeSet<IpAddr> = self.matrix().keys().map(|(h, _)| *h).collect();
        map.unnamed_hosts = seen.iter().filter(|h| !hosts.contains_key(h)).count();
        Some(map)
    }
}

/// What the sync task did, for `/metrics`.
#[derive(Debug, Default)]
pub struct IsnsStats {
    counters: Arc<IsnsCounters>,
    last: Mutex<LastSync>,
}

#[derive(Clone, Debug, Default)]
struct LastSync {
    up: bool,
    generation: u64,
    seconds: f64,
    requests: u64,
    ambiguous: usize,
    unnamed_hosts: usize,
    unnamed_entities: usize,
    targets: usize,
    hosts: usize,
}

impl IsnsStats {
    fn last(&self) -> std::sync::MutexGuard<'_, LastSync> {
        self.last.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The generation whose map the server holds (0: none yet).
    pub fn published(&self) -> u64 {
        self.last().generation
    }

    /// Appends the `sanlb_isns_*` series in the Prometheus text format.
    pub fn render(&self, out: &mut String) {
        let c = self.counters.snapshot();
        let l = self.last().clone();
        let mut one = |name: &str, kind: &str, help: &str, v: f64| {
            let _ = writeln!(
                out,
                "# HELP {name} {help}\n# TYPE {name} {kind}\n{name} {v}"
            );
        };
        one(
            "sanlb_isns_up",
            "gauge",
            "1 when the last sync with the iSNS server succeeded.",
            f64::from(u8::from(l.up)),
        );
        one(
            "sanlb_isns_syncs_total",
            "counter",
            "Syncs that left the iSNS server equal to the map.",
            c.syncs as f64,
        );
        one(
            "sanlb_isns_sync_failures_total",
            "counter",
            "Syncs that failed (server away or refusing, bad replies, no convergence).",
            c.failures as f64,
        );
        one(
            "sanlb_isns_registrations_added_total",
            "counter",
            "Registrations made on the iSNS server (nodes, portals, domains, members).",
            c.added as f64,
        );
        one(
            "sanlb_isns_registrations_removed_total",
            "counter",
            "Registrations removed from the iSNS server.",
            c.removed as f64,
        );
        one(
            "sanlb_isns_published_generation",
            "gauge",
            "Generation whose map the iSNS server holds (0: none yet).",
            l.generation as f64,
        );
        one(
            "sanlb_isns_last_sync_seconds",
            "gauge",
            "Duration of the last successful sync.",
            l.seconds,
        );
        one(
            "sanlb_isns_last_sync_requests",
            "gauge",
            "Requests the last successful sync sent.",
            l.requests as f64,
        );
        one(
            "sanlb_isns_targets",
            "gauge",
            "Targets registered by the last successful sync.",
            l.targets as f64,
        );
        one(
            "sanlb_isns_hosts",
            "gauge",
            "Hosts given a portal by the last successful sync.",
            l.hosts as f64,
        );
        one(
            "sanlb_isns_ambiguous_pairs",
            "gauge",
            "(host, target) pairs the server shows more than their portal (shared portals).",
            l.ambiguous as f64,
        );
        one(
            "sanlb_isns_unnamed_hosts",
            "gauge",
            "Hosts with traffic that the host table does not name: not published.",
            l.unnamed_hosts as f64,
        );
        one(
            "sanlb_isns_unnamed_entities",
            "gauge",
            "Storage entities without a target name: not published.",
            l.unnamed_entities as f64,
        );
    }
}

/// The sync task of a server: built before it starts, so that bad settings
/// are refused at start.
#[derive(Debug)]
pub struct IsnsPublisher {
    settings: IsnsSettings,
    reconciler: Reconciler,
    stats: Arc<IsnsStats>,
}

impl IsnsPublisher {
    /// A publisher; nothing is sent before it runs.
    pub fn new(settings: IsnsSettings) -> Result<Self, IsnsError> {
        let reconciler = settings.reconciler()?;
        let stats = Arc::new(IsnsStats {
            counters: reconciler.counters(),
            last: Mutex::default(),
        });
        Ok(Self {
            settings,
            reconciler,
            stats,
        })
    }

    /// Its statistics.
    pub fn stats(&self) -> Arc<IsnsStats> {
        Arc::clone(&self.stats)
    }

    /// Runs until the state is closed.
    pub(super) async fn run(mut self, state: Arc<AppState>) {
        let mut generations = state.lock().subscribe();
        let period = self.settings.period;
        let max_backoff = period.max(MIN_BACKOFF);
        let mut backoff = MIN_BACKOFF;
        let mut failing = false;
        tracing::info!(server = %self.settings.server, source = %self.settings.source,
            hosts = self.settings.hosts.len(), "publishing the map to the iSNS server");
        loop {
            generations.borrow_and_update();
            let map = state.lock().isns_map(&self.settings.hosts);
            let next = match map {
                None => Instant::now() + period,
                Some(map) => {
                    let t0 = Instant::now();
                    let result = tokio::select! {
                        () = state.closed() => return,
                        r = self.reconciler.sync(&map.desired) => r,
                    };
                    match result {
                        Ok(report) => {
                            if failing {
                                tracing::info!(
                                    generation = map.generation,
                                    "isns: the server is back and holds the map again"
                                );
                            }
                            failing = false;
                            backoff = MIN_BACKOFF;
                            *self.stats.last() = LastSync {
                                up: true,
                                generation: map.generation,
                                seconds: t0.elapsed().as_secs_f64(),
                                requests: report.requests,
                                ambiguous: report.ambiguous.len(),
                                unnamed_hosts: map.unnamed_hosts,
                                unnamed_entities: map.unnamed_entities,
                                targets: map.desired.targets.len(),
                                hosts: map.desired.hosts.len(),
                            };
                            Instant::now() + period
                        }
                        Err(e) => {
                            // The reconciler logged and counted it.
                            if !failing {
                                tracing::error!(error = %crate::error_chain(&e), "isns: cannot publish the map: retrying with backoff; the gateways keep steering");
                            }
                            failing = true;
                            self.stats.last().up = false;
                            let retry = Instant::now() + backoff;
                            backoff = (backoff * 2).min(max_backoff);
                            // No new generation cuts a backoff short.
                            tokio::select! {
                                () = state.closed() => return,
                                () = tokio::time::sleep_until(retry) => {}
                            }
                            continue;
                        }
                    }
                }
            };
            tokio::select! {
                () = state.closed() => return,
                () = tokio::time::sleep_until(next) => {}
                changed = generations.changed() => {
                    if changed.is_err() {
                        return;
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Instant;

    use super::*;
    use crate::{
        controller::{Config, PairSettings},
        optimize::{Options, Solver},
        proto::{EnforceCounters, Flow, Report},
    };

    const T1: &str = "iqn.2026-11.test.sanlb:t1";
    const H1: &str = "iqn.2026-11.test.sanlb:h1";
    const H2: &str = "iqn.2026-11.test.sanlb:h2";

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    fn config(mode: Mode) -> Config {
        Config {
            interval: Duration::from_millis(300),
            window: 2,
            w_var: 1.0,
            w_change: 0.01,
            min_gain: 0.01,
            lease: Duration::from_millis(900),
            forget_after: Duration::from_secs(3600),
            mode,
            storage: vec![],
            // The second entity has no name.
            targets: vec![ip("198.18.1.1"), ip("198.18.1.2")],
            traffic: None,
            traffic_replace: false,
            solver: Options {
                solver: Solver::Auto,
                time_limit: Duration::from_millis(200),
                seed: 1,
            },
            pairs: PairSettings {
                data_pool: (mode == Mode::Pair).then(|| "198.18.2.0/24".parse().unwrap()),
                target_names: [(ip("198.18.1.1"), vec![T1.to_owned()])].into(),
                ..PairSettings::default()
            },
            advise: false,
            move_cooldown: Duration::ZERO,
        }
    }

    fn hosts() -> BTreeMap<IpAddr, String> {
        [
            (ip("198.18.0.101"), H1.to_owned()),
            (ip("198.18.0.102"), H2.to_owned()),
        ]
        .into()
    }

    fn report(gw: &str, seq: u64, applied: u64, owned: Vec<IpAddr>, flows: Vec<Flow>) -> Report {
        Report {
            gateway: gw.into(),
            boot_id: format!("boot-{gw}"),
            seq,
            uptime_ms: 1000 * (seq + 1),
            capacity: 1.0,
            applied,
            owned,
            enforce: EnforceCounters::default(),
            flows,
        }
    }

    fn told(map: &IsnsMap, host: &str) -> Option<Portal> {
        map.desired.hosts.get(host).and_then(|t| t.get(T1)).copied()
    }

    #[test]
    fn target_mode_publishes_the_entity_address_once_steering() {
        let t0 = Instant::now();
        let mut c = Controller::new(config(Mode::Target), None, t0).unwrap();
        assert_eq!(c.isns_map(&hosts()), None, "nothing during the grace");
        c.expire(t0 + Duration::from_secs(1));
        let map = c.isns_map(&hosts()).unwrap();
        let portal = Portal::new(ip("198.18.1.1"), 3260);
        assert_eq!(map.desired.targets[T1], BTreeSet::from([portal]));
        assert_eq!(map.desired.targets.len(), 1);
        assert_eq!(
            (told(&map, H1), told(&map, H2)),
            (Some(portal), Some(portal))
        );
        assert_eq!(map.unnamed_entities, 1);
        assert_eq!(map.generation, c.generation());
        assert_eq!(map.desired.validate().map_err(|e| e.to_string()), Ok(()));
    }

    #[test]
    fn pair_mode_publishes_the_pairs_gateway_else_the_portals() {
        let t0 = Instant::now();
        let mut c = Controller::new(config(Mode::Pair), None, t0).unwrap();
        // Reports just before the grace ends, so both are alive after it.
        let t1 = t0 + Duration::from_millis(950);
        for gw in ["gw1", "gw2"] {
            c.ingest(&report(gw, 0, 0, vec![], vec![]), t1).unwrap();
        }
        c.expire(t1);
        let st = c.status(t1);
        let data_port = c.config().pairs.data_port;
        let data = |g: &str| {
            st.data_addresses
                .iter()
                .find(|d| d.target == ip("198.18.1.1") && d.gateway == g)
                .map(|d| Portal::new(d.address, data_port))
                .unwrap()
        };
        let portal_gw = st
            .map
            .iter()
            .find(|m| m.host.is_none() && m.target == ip("198.18.1.1"))
            .and_then(|m| m.ownership.assigned().map(str::to_owned))
            .unwrap();
        let map = c.isns_map(&hosts()).unwrap();
        assert_eq!(
            map.desired.targets[T1],
            BTreeSet::from([data("gw1"), data("gw2")])
        );
        // No pairs yet: both hosts get the portal's gateway.
        assert_eq!(told(&map, H1), Some(data(&portal_gw)));
        assert_eq!(told(&map, H2), Some(data(&portal_gw)));
        // Host 1 runs on the other gateway: the pair is adopted there and
        // host 1 is told so; an unnamed host's traffic is counted.
        let other = if portal_gw == "gw1" { "gw2" } else { "gw1" };
        let flows = vec![
            Flow {
                initiator: ip("198.18.0.101"),
                target: data(other).addr,
                to_target_bytes: 1000,
                to_initiator_bytes: 0,
            },
            Flow {
                initiator: ip("198.18.0.109"),
                target: data(other).addr,
                to_target_bytes: 1000,
                to_initiator_bytes: 0,
            },
        ];
        let g = c.generation();
        c.ingest(&report(other, 1, g, vec![], flows), t1).unwrap();
        c.close_interval();
        let map = c.isns_map(&hosts()).unwrap();
        assert_eq!(told(&map, H1), Some(data(other)));
        assert_eq!(told(&map, H2), Some(data(&portal_gw)));
        assert_eq!(map.unnamed_hosts, 1);
        assert!(map.desired.ambiguities().is_empty());
    }

    #[test]
    fn settings_are_checked() {
        let names: BTreeMap<IpAddr, Vec<String>> = [(ip("198.18.1.1"), vec![T1.to_owned()])].into();
        let ok = IsnsSettings {
            hosts: hosts(),
            ..IsnsSettings::new("10.0.0.9")
        };
        assert_eq!(ok.validate(&names), Ok(()));
        let setting = |s: IsnsSettings| match s.validate(&names).unwrap_err() {
            ConfigError::Invalid { setting, message } => format!("{setting}: {message}"),
            e => panic!("{e}"),
        };
        let mut s = ok.clone();
        s.hosts.insert(ip("198.18.0.103"), T1.to_owned());
        assert!(setting(s).starts_with("host: 198.18.0.103"));
        let mut s = ok.clone();
        s.hosts.insert(ip("198.18.0.103"), H1.to_owned());
        assert!(setting(s).contains("same name"));
        let mut s = ok.clone();
        s.hosts.insert(ip("198.18.0.103"), "a b".to_owned());
        assert!(setting(s).starts_with("host: 198.18.0.103"));
        let s = IsnsSettings {
            source: "x y".into(),
            ..ok.clone()
        };
        assert!(setting(s).starts_with("isns_source"));
        let s = IsnsSettings {
            period: Duration::ZERO,
            ..ok.clone()
        };
        assert!(setting(s).starts_with("isns_period"));
        let s = IsnsSettings {
            prefix: "UPPER".into(),
            ..ok.clone()
        };
        assert!(setting(s).starts_with("isns"));
        assert!(setting(IsnsSettings::new("a b")).starts_with("isns"));
        let twice: BTreeMap<IpAddr, Vec<String>> = [
            (ip("198.18.1.1"), vec![T1.to_owned()]),
            (ip("198.18.1.2"), vec![T1.to_owned()]),
        ]
        .into();
        let e = ok.validate(&twice).unwrap_err().to_string();
        assert!(e.starts_with("target ") && e.contains("both"), "{e}");
    }
}
