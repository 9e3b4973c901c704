//! Gateway faults (issue 14): telling a dead gateway from a silent agent,
//! links that go down, drains, and duplicate owners.
//!
//! ```text
//!   heartbeats ──▶ Up ──(agent: NIC down)──▶ LinkDown   routes move away at once
//!                  │ silent for a lease
//!                  ▼
//!               Suspect ──probe: the gateway answers, its service listens──▶ Serving
//!                  │                                                 (pinned, re-probed)
//!                  │ probe: no answer, or the service refuses; or it holds nothing
//!                  ▼
//!                 Dead   routes fail over (no release to wait for)
//! ```
//!
//! A silent gateway's addresses are pinned while it is suspect or serving:
//! they stay in the map and in no other gateway's share, and no route is
//! added to it. Whether it still serves is asked on the data path: an alive
//! agent (the *prober*, another gateway on the segment) probes a sample of
//! its addresses (`enforce::probe`: ARP/ND, then a TCP SYN to the storage
//! port) on the controller's request, delivered in a heartbeat reply; the
//! result comes back in the prober's next heartbeat. An address the gateway
//! did not answer for in the last probe is not pinned: it fails over. A
//! control address (one a third, alive gateway holds) goes with each probe
//! when there is one: a prober that does not hear the control cannot hear
//! anything, and its "nobody answered" is not believed.
//!
//! No verdict, no move: a suspect gateway nobody can probe keeps its
//! addresses (logged), which is fail-static as before, never a second owner.
//!
//! Conflicts: every agent probes the addresses it holds now and then
//! (`agent::probe`) and reports the other MACs that answer. The controller
//! keeps the owner it assigned; a gateway whose MAC is among the others and
//! whose agent is alive is ordered to remove the address (its share already
//! lacks it if the address carries sanlb's marker; the order covers an
//! address added by hand); a foreign station cannot be ordered: the owner
//! announces again until the conflict clears.

pub(super) mod api;

use std::{
    collections::{BTreeMap, BTreeSet},
    net::IpAddr,
    sync::Arc,
    time::{Duration, Instant},
};

use super::{Controller, IngestError, gateways::Gateway, metrics::Out};
use crate::proto::{
    ConflictStatus, DrainKind, DrainReply, DrainRequest, GatewayHealth, GatewayState, Heartbeat,
    HeartbeatReply, MAX_PROBE_ADDRESSES, MacAddr, Mode, Ownership, ProbeRequest, ProbeResult,
    ReleaseOrder, ReportError, Service, shown,
};

/// Addresses of a silent gateway one probe covers: a sample decides whether
/// it serves (if it answers for some, the machine and its service are up).
const PROBE_SAMPLE: usize = 32;
const _: () = assert!(PROBE_SAMPLE < MAX_PROBE_ADDRESSES);

/// How long a release order for one (gateway, address) is not repeated.
const ORDER_REPEAT: Duration = Duration::from_secs(1);

/// A silent gateway, as far as probes told.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Silence {
    /// Its agent is heard (heartbeats or reports within the lease).
    Heard,
    /// Silent for a lease, not judged yet.
    Suspect,
    /// Silent, but answering on the data path.
    Serving,
    /// Silent and not serving.
    Dead,
}

/// Who drained a gateway.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Drain {
    /// An operator, until undrained.
    Operator,
    /// The agent run `boot_id` handing off before it stops: until another
    /// run reports.
    Handoff {
        /// The run.
        boot_id: String,
    },
}

impl Drain {
    fn kind(&self) -> DrainKind {
        match self {
            Self::Operator => DrainKind::Operator,
            Self::Handoff { .. } => DrainKind::Handoff,
        }
    }
}

/// A conflict a gateway reports.
#[derive(Debug, Clone, PartialEq)]
pub(super) struct SeenConflict {
    macs: Vec<MacAddr>,
    since: Instant,
}

/// The fault-handling state of one gateway.
#[derive(Debug, Clone)]
pub(super) struct Health {
    /// Its NIC is up, as its agent last said (true until told otherwise).
    pub link_up: bool,
    /// Its NIC's MAC, from its heartbeats.
    pub mac: Option<MacAddr>,
    /// (boot id, seq, when) of its last heartbeat.
    heartbeat: Option<(String, u64, Instant)>,
    pub silence: Silence,
    /// When [`Gateway::state`] last changed.
    since: Instant,
    /// Addresses a probe found it not answering for (while silent).
    unserved: BTreeSet<IpAddr>,
    /// When its last probe verdict came.
    judged: Option<Instant>,
    /// Probes that gave no verdict since the last one that did.
    attempts: u32,
    /// "Nobody can probe it" was logged.
    unprobed_warned: bool,
    pub drain: Option<Drain>,
    conflicts: BTreeMap<IpAddr, SeenConflict>,
    /// Release orders for its next heartbeat reply: address → its owner.
    orders: BTreeMap<IpAddr, String>,
}

impl Health {
    pub(super) fn new(now: Instant) -> Self {
        Self {
            link_up: true,
            mac: None,
            heartbeat: None,
            silence: Silence::Heard,
            since: now,
            unserved: BTreeSet::new(),
            judged: None,
            attempts: 0,
            unprobed_warned: false,
            drain: None,
            conflicts: BTreeMap::new(),
            orders: BTreeMap::new(),
        }
    }

    /// Its agent is heard again.
    pub(super) fn revive(&mut self, now: Instant) {
        if self.silence != Silence::Heard {
            self.since = now;
        }
        self.silence = Silence::Heard;
        self.unserved.clear();
        self.judged = None;
        self.attempts = 0;
        self.unprobed_warned = false;
    }
}

impl Gateway {
    /// Its liveness.
    pub(super) fn state(&self) -> GatewayState {
        match (self.alive, self.health.silence) {
            (true, _) if self.health.link_up => GatewayState::Up,
            (true, _) => GatewayState::LinkDown,
            (false, Silence::Serving) => GatewayState::Serving,
            (false, Silence::Dead) => GatewayState::Dead,
            (false, _) => GatewayState::Suspect,
        }
    }

    /// Its agent talks and its NIC is up: it can hold addresses.
    pub(super) fn can_serve(&self) -> bool {
        self.alive && self.health.link_up
    }

    /// New routes may go to it (it can serve and is not drained).
    pub(super) fn takes_routes(&self) -> bool {
        self.can_serve() && self.health.drain.is_none()
    }

    /// Its agent is silent and it may still serve its addresses (suspect,
    /// or found serving).
    pub(super) fn silent_holding(&self) -> bool {
        !self.alive && matches!(self.health.silence, Silence::Suspect | Silence::Serving)
    }

    /// A route on `addr` assigned to it stays there whatever the map says:
    /// its agent is silent, and it serves the address (or has not been
    /// judged yet).
    pub(super) fn pins(&self, addr: IpAddr) -> bool {
        self.silent_holding() && !self.health.unserved.contains(&addr)
    }

    /// It may hold `addr` on the data path now: taking the address from it
    /// must wait for its release (break-before-make).
    pub(super) fn may_hold(&self, addr: IpAddr) -> bool {
        if self.alive {
            self.health.link_up
        } else {
            self.pins(addr)
        }
    }

    /// It can be a move's end: it serves, or may still hold what it held.
    pub(super) fn present(&self) -> bool {
        self.can_serve() || self.silent_holding()
    }

    /// It can probe for others: alive, NIC up, a known MAC (an agent with a
    /// data path).
    fn can_probe(&self) -> bool {
        self.can_serve() && self.health.mac.is_some() && self.health.heartbeat.is_some()
    }
}

/// A probe in flight.
#[derive(Debug, Clone)]
struct Probe {
    suspect: String,
    prober: String,
    addresses: Vec<IpAddr>,
    /// An address a third, alive gateway holds, and its MAC.
    control: Option<(IpAddr, MacAddr)>,
    asked: Instant,
    delivered: bool,
}

/// The controller's fault-handling state outside the gateways.
#[derive(Debug, Default)]
pub(super) struct Faults {
    probes: BTreeMap<u64, Probe>,
    next_id: u64,
    /// When each (gateway, address) release order was last issued.
    ordered: BTreeMap<(String, IpAddr), Instant>,
    /// Pokes the timers: a failover may be due now.
    pub wake: Arc<tokio::sync::Notify>,
}

/// What happened since start (for metrics).
#[derive(Debug, Default, Clone)]
pub struct FaultEvents {
    /// Heartbeats taken.
    pub heartbeats: u64,
    /// Probe verdicts: `serving`, `dead`, `inconclusive`, `timeout`.
    pub probes: BTreeMap<&'static str, u64>,
    /// Conflicts first reported.
    pub conflicts: u64,
    /// Release orders issued.
    pub release_orders: u64,
    /// Agents that reported their NIC down.
    pub link_downs: u64,
    /// Drains and undrains.
    pub drains: u64,
}

/// Why a drain or undrain was refused.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum DrainError {
    /// A field is wrong.
    #[error(transparent)]
    Invalid(#[from] ReportError),
    /// The controller does not know the gateway.
    #[error("no gateway {0} known to this controller")]
    NotFound(String),
    /// A hand-off from an agent run that does not own the name.
    #[error("gateway {gateway} is reported by agent run {owner}, not {asker}")]
    NotOwner {
        /// The gateway (escaped).
        gateway: String,
        /// The run that owns the name.
        owner: String,
        /// The run that asked (escaped).
        asker: String,
    },
}

impl DrainError {
    /// Short label for metrics.
    pub fn reason(&self) -> &'static str {
        match self {
            Self::Invalid(e) => e.field,
            Self::NotFound(_) => "drain_unknown_gateway",
            Self::NotOwner { .. } => "boot_conflict",
        }
    }
}

impl Controller {
    /// A handle the timers wait on: poked when a failover may be due
    /// before the next lease check (a dead verdict, a link down, a drain).
    pub fn wake_handle(&self) -> Arc<tokio::sync::Notify> {
        Arc::clone(&self.faults.wake)
    }

    fn wake(&self) {
        self.faults.wake.notify_one();
    }

    /// Takes a heartbeat; on error nothing changes.
    pub fn heartbeat(
        &mut self,
        hb: &Heartbeat,
        now: Instant,
    ) -> Result<HeartbeatReply, IngestError> {
        hb.validate()?;
        self.events.faults.heartbeats += 1;
        let takeover = self.takeover();
        let Some(g) = self.gateways.get(&hb.gateway) else {
            // Not known yet: its first report comes before anything else.
            return Ok(HeartbeatReply::default());
        };
        if g.boot_id != hb.boot_id {
            if !g.boot_id.is_empty() && now.saturating_duration_since(g.last_seen) < takeover {
                self.events.boot_conflicts += 1;
                return Err(super::BootConflict {
                    gateway: shown(&hb.gateway),
                    owner: g.boot_id.clone(),
                    contender: shown(&hb.boot_id),
                }
                .into());
            }
            // A new run that has not reported yet.
            return Ok(HeartbeatReply::default());
        }
        let Some(g) = self.gateways.get_mut(&hb.gateway) else {
            unreachable!("looked up above")
        };
        if g.health
            .heartbeat
            .as_ref()
            .is_some_and(|(b, seq, _)| *b == hb.boot_id && hb.seq <= *seq)
        {
            // Late or repeated: changes nothing.
            return Ok(HeartbeatReply {
                known: true,
                ..HeartbeatReply::default()
            });
        }
        g.health.heartbeat = Some((hb.boot_id.clone(), hb.seq, now));
        g.last_seen = now;
        let mut changed = false;
        if !g.alive {
            g.alive = true;
            let was = g.state();
            g.health.revive(now);
            tracing::info!(gateway = %hb.gateway, was = %was, "gateway heard again");
            changed = true;
        }
        if g.health.link_up != hb.link_up {
            g.health.link_up = hb.link_up;
            g.health.since = now;
            changed = true;
            if hb.link_up {
                tracing::info!(gateway = %hb.gateway, "host-facing link up again");
            } else {
                tracing::warn!(gateway = %hb.gateway, "host-facing link down: its addresses move away");
                self.events.faults.link_downs += 1;
            }
        }
        if hb.mac.is_some() && g.health.mac != hb.mac {
            g.health.mac = hb.mac;
        }
        if changed {
            self.epoch += 1;
            self.wake();
        }
        for r in &hb.probes {
            self.probe_result(&hb.gateway, r, now);
        }
        self.take_conflicts(&hb.gateway, &hb.conflicts, now);
        let mut probes = Vec::new();
        for (id, p) in &mut self.faults.probes {
            if p.prober == hb.gateway && !p.delivered {
                p.delivered = true;
                let mut addresses = p.addresses.clone();
                addresses.extend(p.control.map(|c| c.0));
                probes.push(ProbeRequest { id: *id, addresses });
            }
        }
        let g = self.gateways.get_mut(&hb.gateway).expect("looked up above");
        let release = std::mem::take(&mut g.health.orders)
            .into_iter()
            .map(|(address, owner)| ReleaseOrder { address, owner })
            .collect();
        Ok(HeartbeatReply {
            known: true,
            probes,
            release,
        })
    }

    /// Marks a gateway silent for a lease: suspect until a probe says more.
    pub(super) fn on_silent(&mut self, name: &str, now: Instant) {
        let lease_ms = self.cfg.lease.as_millis() as u64;
        let Some(g) = self.gateways.get_mut(name) else {
            return;
        };
        g.health.silence = Silence::Suspect;
        g.health.since = now;
        g.health.unserved.clear();
        g.health.attempts = 0;
        tracing::warn!(gateway = %name, lease_ms, "gateway silent for a lease: suspect, probing whether it still serves");
    }

    /// The addresses a silent gateway may hold: assigned to it, moving off
    /// it, or reported held; those assigned but not reported held first
    /// (they are the likeliest not to be served).
    fn holdings(&self, name: &str, g: &Gateway) -> Vec<IpAddr> {
        let mut assigned = BTreeSet::new();
        for (k, r) in self.routes.iter() {
            match &r.ownership {
                Ownership::Owned { gateway } if gateway == name => {
                    assigned.insert(k.1);
                }
                Ownership::Moving { from, .. } if from == name => {
                    assigned.insert(k.1);
                }
                _ => {}
            }
        }
        let routed = |a: &IpAddr| self.routes.contains(&(None, *a)) || self.cfg.mode == Mode::Pair;
        let mut out: Vec<IpAddr> = assigned.difference(&g.owned).copied().collect();
        out.extend(assigned.intersection(&g.owned).copied());
        out.extend(
            g.owned
                .iter()
                .filter(|a| !assigned.contains(a) && routed(a)),
        );
        out
    }

    /// An alive gateway to probe `suspect` from, rotating with `attempt`.
    fn prober(&self, suspect: &str, attempt: u32) -> Option<String> {
        let candidates: Vec<&String> = self
            .gateways
            .iter()
            .filter(|(n, g)| *n != suspect && g.can_probe())
            .map(|(n, _)| n)
            .collect();
        if candidates.is_empty() {
            return None;
        }
        Some(candidates[attempt as usize % candidates.len()].clone())
    }

    /// An address a gateway other than `suspect` and `prober` holds, with
    /// its MAC: if the prober does not hear it, it hears nothing.
    fn control(&self, suspect: &str, prober: &str) -> Option<(IpAddr, MacAddr)> {
        self.routes.iter().find_map(|(k, r)| {
            let Ownership::Owned { gateway } = &r.ownership else {
                return None;
            };
            if gateway == suspect || gateway == prober {
                return None;
            }
            let g = self.gateways.get(gateway)?;
            (g.can_serve() && g.owned.contains(&k.1))
                .then_some(())
                .and(g.health.mac.map(|m| (k.1, m)))
        })
    }

    /// Probes silent gateways (new suspects at once, serving ones every
    /// `reprobe`), retries probes that gave no verdict within
    /// `probe_timeout` with another prober, and declares dead a silent
    /// gateway that holds nothing.
    pub(super) fn judge(&mut self, now: Instant) {
        // Probes of gateways heard again, or gone, are dropped.
        let gateways = &self.gateways;
        self.faults.probes.retain(|_, p| {
            gateways
                .get(&p.suspect)
                .is_some_and(Gateway::silent_holding)
        });
        let timeout = self.cfg.probe_timeout;
        let mut timed_out = Vec::new();
        self.faults.probes.retain(|_, p| {
            let keep = now.saturating_duration_since(p.asked) < timeout;
            if !keep {
                timed_out.push((p.suspect.clone(), p.prober.clone()));
            }
            keep
        });
        for (suspect, prober) in timed_out {
            tracing::warn!(gateway = %suspect, %prober, "no probe result in time: asking another gateway");
            *self.events.faults.probes.entry("timeout").or_default() += 1;
            if let Some(g) = self.gateways.get_mut(&suspect) {
                g.health.attempts += 1;
            }
        }
        let silent: Vec<String> = self
            .gateways
            .iter()
            .filter(|(_, g)| g.silent_holding())
            .map(|(n, _)| n.clone())
            .collect();
        for name in silent {
            if self.faults.probes.values().any(|p| p.suspect == name) {
                continue;
            }
            let g = self.gateways.get(&name).expect("listed above");
            if g.health.silence == Silence::Serving
                && g.health
                    .judged
                    .is_some_and(|t| now.saturating_duration_since(t) < self.cfg.reprobe)
            {
                continue;
            }
            let mut addresses = self.holdings(&name, g);
            if addresses.is_empty() {
                self.declare_dead(&name, "silent and holding nothing", now);
                continue;
            }
            addresses.truncate(PROBE_SAMPLE);
            let attempts = g.health.attempts;
            let Some(prober) = self.prober(&name, attempts) else {
                let g = self.gateways.get_mut(&name).expect("listed above");
                if !g.health.unprobed_warned {
                    g.health.unprobed_warned = true;
                    tracing::warn!(gateway = %name, "no alive gateway can probe it: it keeps its addresses until one can");
                }
                continue;
            };
            let control = self.control(&name, &prober);
            let id = self.faults.next_id;
            self.faults.next_id += 1;
            tracing::debug!(gateway = %name, %prober, id, addresses = addresses.len(), "probing");
            self.faults.probes.insert(
                id,
                Probe {
                    suspect: name,
                    prober,
                    addresses,
                    control,
                    asked: now,
                    delivered: false,
                },
            );
        }
    }

    fn declare_dead(&mut self, name: &str, why: &str, now: Instant) {
        let Some(g) = self.gateways.get_mut(name) else {
            return;
        };
        g.health.silence = Silence::Dead;
        g.health.since = now;
        g.health.judged = Some(now);
        tracing::warn!(gateway = %name, why, "gateway dead: its addresses fail over");
        self.events.deaths += 1;
        self.epoch += 1;
        self.wake();
    }

    /// Takes one probe result from `prober`.
    fn probe_result(&mut self, prober: &str, r: &ProbeResult, now: Instant) {
        if !self
            .faults
            .probes
            .get(&r.id)
            .is_some_and(|p| p.prober == prober && p.delivered)
        {
            return;
        }
        let p = self.faults.probes.remove(&r.id).expect("checked above");
        let others: BTreeMap<MacAddr, &String> = self
            .gateways
            .iter()
            .filter(|(n, _)| **n != p.suspect)
            .filter_map(|(n, g)| g.health.mac.map(|m| (m, n)))
            .collect();
        let Some(s) = self.gateways.get(&p.suspect) else {
            return;
        };
        if !s.silent_holding() {
            return;
        }
        let inconclusive = |c: &mut Self, why: &str| {
            tracing::warn!(gateway = %p.suspect, prober, why, "probe inconclusive: asking again");
            *c.events.faults.probes.entry("inconclusive").or_default() += 1;
            if let Some(g) = c.gateways.get_mut(&p.suspect) {
                g.health.attempts += 1;
            }
        };
        if r.failed {
            return inconclusive(self, "the prober could not send");
        }
        if let Some((addr, mac)) = p.control {
            let heard = r
                .addresses
                .iter()
                .any(|a| a.address == addr && a.answers.iter().any(|x| x.mac == mac));
            if !heard {
                return inconclusive(self, "the prober did not hear the control address");
            }
        }
        let suspect_mac = s.health.mac;
        let from_suspect = |m: &MacAddr| match suspect_mac {
            Some(sm) => *m == sm,
            None => !others.contains_key(m),
        };
        let (mut answered, mut closed, mut serving) = (false, false, BTreeSet::new());
        for a in r
            .addresses
            .iter()
            .filter(|a| p.addresses.contains(&a.address))
        {
            for x in a.answers.iter().filter(|x| from_suspect(&x.mac)) {
                answered = true;
                match x.service {
                    Service::Closed => closed = true,
                    Service::Open | Service::Silent | Service::Unchecked => {
                        serving.insert(a.address);
                    }
                }
            }
        }
        if serving.is_empty() {
            *self.events.faults.probes.entry("dead").or_default() += 1;
            let why = if answered && closed {
                "it answers for its addresses but its storage port refuses connections"
            } else {
                "nothing answers for its addresses on the data path"
            };
            self.declare_dead(&p.suspect, why, now);
            return;
        }
        *self.events.faults.probes.entry("serving").or_default() += 1;
        let unserved: BTreeSet<IpAddr> = p
            .addresses
            .iter()
            .filter(|a| !serving.contains(a))
            .copied()
            .collect();
        let g = self.gateways.get_mut(&p.suspect).expect("looked up above");
        let first = g.health.silence != Silence::Serving;
        let grew = !unserved.is_subset(&g.health.unserved);
        g.health.silence = Silence::Serving;
        if first {
            g.health.since = now;
        }
        g.health.judged = Some(now);
        g.health.attempts = 0;
        g.health.unserved = unserved;
        if first {
            tracing::warn!(gateway = %p.suspect, prober, serving = serving.len(), unserved = g.health.unserved.len(), "agent silent, gateway serving: it keeps its addresses");
        }
        if grew {
            // Addresses it does not serve fail over.
            self.epoch += 1;
            self.wake();
        }
    }

    /// Replaces what `reporter` says about conflicts, and orders a sanlb
    /// gateway among the other holders to remove an address assigned
    /// elsewhere.
    fn take_conflicts(&mut self, reporter: &str, list: &[crate::proto::Conflict], now: Instant) {
        let by_mac: BTreeMap<MacAddr, String> = self
            .gateways
            .iter()
            .filter_map(|(n, g)| g.health.mac.map(|m| (m, n.clone())))
            .collect();
        let Some(g) = self.gateways.get_mut(reporter) else {
            return;
        };
        let own = g.health.mac;
        let mut next = BTreeMap::new();
        let mut fresh = Vec::new();
        for c in list {
            let since = match g.health.conflicts.get(&c.address) {
                Some(old) => old.since,
                None => {
                    fresh.push(c.address);
                    now
                }
            };
            next.insert(
                c.address,
                SeenConflict {
                    macs: c.macs.clone(),
                    since,
                },
            );
        }
        for gone in g.health.conflicts.keys().filter(|a| !next.contains_key(a)) {
            tracing::info!(gateway = %reporter, address = %gone, "address conflict cleared");
        }
        g.health.conflicts = next;
        let name = |m: &MacAddr| by_mac.get(m).map_or("a foreign station", String::as_str);
        for a in &fresh {
            let others: Vec<String> = list
                .iter()
                .find(|c| c.address == *a)
                .map(|c| {
                    c.macs
                        .iter()
                        .map(|m| format!("{m} ({})", name(m)))
                        .collect()
                })
                .unwrap_or_default();
            tracing::warn!(
                address = %a,
                gateway = %reporter,
                mac = %own.map_or_else(|| "?".into(), |m| m.to_string()),
                others = %others.join(", "),
                "address conflict: another station answers for an address this gateway holds"
            );
            self.events.faults.conflicts += 1;
        }
        if self.cfg.mode != Mode::Target {
            return;
        }
        for c in list {
            let Some(owner) = self.routes.iter().find_map(|(k, r)| match &r.ownership {
                Ownership::Owned { gateway } if k.1 == c.address => Some(gateway.clone()),
                _ => None,
            }) else {
                continue;
            };
            for m in &c.macs {
                let Some(x) = by_mac.get(m) else { continue };
                if *x == owner || !self.gateways.get(x).is_some_and(|g| g.alive) {
                    continue;
                }
                let key = (x.clone(), c.address);
                if self
                    .faults
                    .ordered
                    .get(&key)
                    .is_some_and(|t| now.saturating_duration_since(*t) < ORDER_REPEAT)
                {
                    continue;
                }
                self.faults.ordered.insert(key, now);
                tracing::warn!(gateway = %x, address = %c.address, %owner, "ordering the gateway to remove an address assigned elsewhere");
                self.events.faults.release_orders += 1;
                if let Some(g) = self.gateways.get_mut(x) {
                    g.health.orders.insert(c.address, owner.clone());
                }
            }
        }
        let ordered = &mut self.faults.ordered;
        ordered.retain(|_, t| now.saturating_duration_since(*t) < ORDER_REPEAT * 60);
    }

    /// Some route sits on no gateway, or on one that neither takes routes
    /// nor pins it (dead, link down, drained, or a silent gateway that does
    /// not serve it).
    pub(super) fn stranded(&self) -> bool {
        self.routes
            .iter()
            .any(|(k, r)| match r.ownership.assigned() {
                None => true,
                Some(a) => self
                    .gateways
                    .get(a)
                    .is_none_or(|g| !(g.takes_routes() || g.pins(k.1))),
            })
    }

    /// Whether some gateway can take routes.
    pub(super) fn any_takes_routes(&self) -> bool {
        self.gateways.iter().any(|(_, g)| g.takes_routes())
    }

    /// `POST /v1/drain`: the gateway's routes move away (break-before-make)
    /// and it gets none until undrained (an operator's drain) or until
    /// another run of its agent reports (a hand-off).
    pub fn drain(&mut self, req: &DrainRequest, now: Instant) -> Result<DrainReply, DrainError> {
        req.validate()?;
        let _ = now;
        let g = self
            .gateways
            .get_mut(&req.gateway)
            .ok_or_else(|| DrainError::NotFound(shown(&req.gateway)))?;
        let drain = match &req.boot_id {
            None => Drain::Operator,
            Some(b) if *b == g.boot_id => Drain::Handoff { boot_id: b.clone() },
            Some(b) => {
                return Err(DrainError::NotOwner {
                    gateway: req.gateway.clone(),
                    owner: g.boot_id.clone(),
                    asker: shown(b),
                });
            }
        };
        // An operator's drain stays one when its agent hands off.
        if g.health.drain != Some(Drain::Operator) && g.health.drain.as_ref() != Some(&drain) {
            tracing::info!(gateway = %req.gateway, by = ?drain.kind(), "drained: its routes move away");
            g.health.drain = Some(drain);
            self.events.faults.drains += 1;
            self.epoch += 1;
            self.dirty = true;
            self.flush();
            self.wake();
        }
        Ok(self.drain_reply(&req.gateway))
    }

    /// `POST /v1/undrain`: the gateway takes routes again (through the next
    /// rebalances).
    pub fn undrain(&mut self, req: &DrainRequest, now: Instant) -> Result<DrainReply, DrainError> {
        req.validate()?;
        let _ = now;
        let g = self
            .gateways
            .get_mut(&req.gateway)
            .ok_or_else(|| DrainError::NotFound(shown(&req.gateway)))?;
        if g.health.drain.take().is_some() {
            tracing::info!(gateway = %req.gateway, "undrained");
            self.events.faults.drains += 1;
            self.epoch += 1;
            self.dirty = true;
            self.flush();
        }
        Ok(self.drain_reply(&req.gateway))
    }

    fn drain_reply(&self, gateway: &str) -> DrainReply {
        let g = self.gateways.get(gateway);
        DrainReply {
            gateway: gateway.to_owned(),
            drained: g.and_then(|g| g.health.drain.as_ref().map(Drain::kind)),
            routes: self
                .routes
                .iter()
                .filter(|(_, r)| r.ownership.assigned() == Some(gateway))
                .count(),
            held: g.map_or(0, |g| g.owned.len()),
        }
    }

    /// After a counted report of `gateway`: a hand-off drain ends when
    /// another run of its agent reports.
    pub(super) fn end_handoff(&mut self, gateway: &str) {
        let Some(g) = self.gateways.get_mut(gateway) else {
            return;
        };
        if matches!(&g.health.drain, Some(Drain::Handoff { boot_id }) if *boot_id != g.boot_id) {
            g.health.drain = None;
            tracing::info!(gateway, "a new agent run reports: its hand-off drain ends");
            self.epoch += 1;
            self.dirty = true;
        }
    }

    /// A saved drain, restored.
    pub(super) fn restore_drain(g: &mut Gateway, saved: Option<&super::store::SavedDrain>) {
        g.health.drain = saved.map(|d| match d {
            super::store::SavedDrain::Operator => Drain::Operator,
            super::store::SavedDrain::Handoff { boot_id } => Drain::Handoff {
                boot_id: boot_id.clone(),
            },
        });
    }

    /// A drain, to save.
    pub(super) fn saved_drain(g: &Gateway) -> Option<super::store::SavedDrain> {
        g.health.drain.as_ref().map(|d| match d {
            Drain::Operator => super::store::SavedDrain::Operator,
            Drain::Handoff { boot_id } => super::store::SavedDrain::Handoff {
                boot_id: boot_id.clone(),
            },
        })
    }

    /// The health part of a gateway's status.
    pub(super) fn health_status(&self, name: &str, g: &Gateway, now: Instant) -> GatewayHealth {
        let by_mac: BTreeMap<MacAddr, &String> = self
            .gateways
            .iter()
            .filter_map(|(n, g)| g.health.mac.map(|m| (m, n)))
            .collect();
        let ms = |t: Instant| now.saturating_duration_since(t).as_millis() as u64;
        GatewayHealth {
            state: g.state(),
            state_ms: ms(g.health.since),
            link_up: g.health.link_up,
            mac: g.health.mac,
            last_heartbeat_ms: g.health.heartbeat.as_ref().map(|h| ms(h.2)),
            drained: g.health.drain.as_ref().map(Drain::kind),
            serving: if g.health.silence == Silence::Serving && !g.alive {
                self.holdings(name, g)
                    .into_iter()
                    .filter(|a| !g.health.unserved.contains(a))
                    .collect()
            } else {
                Vec::new()
            },
            conflicts: g
                .health
                .conflicts
                .iter()
                .map(|(a, c)| ConflictStatus {
                    address: *a,
                    others: c
                        .macs
                        .iter()
                        .map(|m| (*m, by_mac.get(m).map(|n| (*n).clone())))
                        .collect(),
                    since_ms: ms(c.since),
                })
                .collect(),
        }
    }

    /// The fault series of `/metrics`.
    pub(super) fn render_fault_metrics(&self, o: &mut Out) {
        let k = &self.events.faults;
        o.head(
            "sanlb_gateway_state",
            "gauge",
            "1 for the gateway's liveness state: up, link_down, suspect, serving (agent silent, gateway serving), dead.",
        );
        for (n, g) in self.gateways.iter() {
            let state = g.state();
            for (label, s) in [
                ("up", GatewayState::Up),
                ("link_down", GatewayState::LinkDown),
                ("suspect", GatewayState::Suspect),
                ("serving", GatewayState::Serving),
                ("dead", GatewayState::Dead),
            ] {
                o.sample(
                    "sanlb_gateway_state",
                    &[("gateway", n), ("state", label)],
                    f64::from(u8::from(state == s)),
                );
            }
        }
        o.head(
            "sanlb_gateway_drained",
            "gauge",
            "1 while the gateway is drained (by an operator or its agent's hand-off).",
        );
        for (n, g) in self.gateways.iter() {
            o.sample(
                "sanlb_gateway_drained",
                &[("gateway", n)],
                f64::from(u8::from(g.health.drain.is_some())),
            );
        }
        o.head(
            "sanlb_address_conflicts",
            "gauge",
            "Addresses the gateway holds that another station answers for too (its last self-probe).",
        );
        for (n, g) in self.gateways.iter() {
            o.sample(
                "sanlb_address_conflicts",
                &[("gateway", n)],
                g.health.conflicts.len() as f64,
            );
        }
        o.one(
            "sanlb_address_conflicts_total",
            "counter",
            "Address conflicts first reported.",
            k.conflicts as f64,
        );
        o.one(
            "sanlb_conflict_release_orders_total",
            "counter",
            "Orders to a gateway to remove an address assigned to another.",
            k.release_orders as f64,
        );
        o.head(
            "sanlb_probes_total",
            "counter",
            "Probes of silent gateways by verdict.",
        );
        for v in ["serving", "dead", "inconclusive", "timeout"] {
            o.sample(
                "sanlb_probes_total",
                &[("verdict", v)],
                k.probes.get(v).copied().unwrap_or(0) as f64,
            );
        }
        o.one(
            "sanlb_heartbeats_total",
            "counter",
            "Heartbeats taken.",
            k.heartbeats as f64,
        );
        o.one(
            "sanlb_gateway_link_downs_total",
            "counter",
            "Times an agent reported its host-facing link down.",
            k.link_downs as f64,
        );
        o.one(
            "sanlb_drains_total",
            "counter",
            "Drains and undrains.",
            k.drains as f64,
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{
        controller::Config,
        optimize::Options,
        proto::{Conflict, EnforceCounters, ProbeAnswer, ProbedAddress, Report},
    };

    const LEASE: Duration = Duration::from_millis(300);

    fn mac(i: u8) -> MacAddr {
        MacAddr([2, 0, 0, 0, 0, i])
    }

    fn addr(i: u8) -> IpAddr {
        IpAddr::from([198, 18, 1, i])
    }

    fn config() -> Config {
        Config {
            interval: Duration::from_secs(5),
            window: 1,
            w_var: 1.0,
            w_change: 0.01,
            min_gain: 0.01,
            lease: LEASE,
            startup_grace: Duration::from_secs(1),
            release_timeout: Duration::from_secs(1),
            probe_timeout: Duration::from_millis(500),
            reprobe: Duration::from_secs(1),
            forget_after: Duration::from_secs(3600),
            mode: Mode::Target,
            storage: vec![],
            targets: vec![addr(1), addr(2), addr(3)],
            traffic: None,
            traffic_replace: false,
            solver: Options::default(),
            pairs: Default::default(),
            advise: false,
            move_cooldown: Duration::ZERO,
        }
    }

    /// A controller with gw1..gw3 reporting and heartbeating, gw_i holding
    /// address i, past the grace, at `now`.
    struct Sim {
        c: Controller,
        now: Instant,
        seq: BTreeMap<String, u64>,
    }

    impl Sim {
        fn new() -> Self {
            let now = Instant::now();
            let mut s = Self {
                c: Controller::new(config(), None, now).unwrap(),
                now,
                seq: BTreeMap::new(),
            };
            for i in 1..=3 {
                s.report(&format!("gw{i}"), &[addr(i)]);
                s.beat(&format!("gw{i}"), true, vec![], vec![]);
            }
            s.advance(Duration::from_secs(1));
            for i in 1..=3 {
                s.beat(&format!("gw{i}"), true, vec![], vec![]);
            }
            s.c.expire(s.now);
            assert!(s.c.ready);
            s
        }

        fn advance(&mut self, d: Duration) {
            self.now += d;
        }

        fn report(&mut self, gw: &str, owned: &[IpAddr]) {
            let seq = self.seq.entry(format!("r{gw}")).or_default();
            let r = Report {
                gateway: gw.into(),
                boot_id: format!("boot-{gw}"),
                seq: *seq,
                uptime_ms: *seq * 100,
                capacity: 1.0,
                applied: self.c.generation(),
                owned: owned.to_vec(),
                enforce: EnforceCounters::default(),
                flows: vec![],
            };
            *seq += 1;
            self.c.ingest(&r, self.now).unwrap();
        }

        fn beat(
            &mut self,
            gw: &str,
            link_up: bool,
            probes: Vec<ProbeResult>,
            conflicts: Vec<Conflict>,
        ) -> HeartbeatReply {
            let seq = self.seq.entry(gw.into()).or_default();
            let i: u8 = gw[2..].parse().unwrap();
            let hb = Heartbeat {
                gateway: gw.into(),
                boot_id: format!("boot-{gw}"),
                seq: *seq,
                link_up,
                mac: Some(mac(i)),
                probes,
                conflicts,
            };
            *seq += 1;
            self.c.heartbeat(&hb, self.now).unwrap()
        }

        fn state(&self, gw: &str) -> GatewayState {
            self.c.gateways.get(gw).unwrap().state()
        }

        fn owner(&self, i: u8) -> Ownership {
            self.c
                .routes
                .iter()
                .find(|(k, _)| k.1 == addr(i))
                .unwrap()
                .1
                .ownership
                .clone()
        }

        /// gw2 and gw3 heartbeat; gw1 is silent for a lease (and just
        /// became suspect).
        fn silence_gw1(&mut self) {
            self.silence_gw1_unchecked();
            assert_eq!(self.state("gw1"), GatewayState::Suspect);
        }

        /// The probe request a heartbeat of `gw` gets.
        fn request(&mut self, gw: &str) -> Option<ProbeRequest> {
            let mut r = self.beat(gw, true, vec![], vec![]);
            assert!(r.probes.len() <= 1);
            r.probes.pop()
        }
    }

    fn answer(a: IpAddr, from: &[(MacAddr, Service)]) -> ProbedAddress {
        ProbedAddress {
            address: a,
            answers: from
                .iter()
                .map(|(mac, service)| ProbeAnswer {
                    mac: *mac,
                    service: *service,
                })
                .collect(),
        }
    }

    fn owned(g: &str) -> Ownership {
        Ownership::Owned { gateway: g.into() }
    }

    #[test]
    fn a_silent_gateway_that_serves_keeps_its_addresses() {
        let mut s = Sim::new();
        assert_eq!(s.owner(1), owned("gw1"));
        s.silence_gw1();
        assert!(!s.c.needs_failover(), "suspect: pinned while probed");
        let req = s.request("gw2").expect("gw2 probes gw1");
        // With a control address held by gw3.
        assert!(req.addresses.contains(&addr(1)) && req.addresses.contains(&addr(3)));
        let result = ProbeResult {
            id: req.id,
            addresses: vec![
                answer(addr(1), &[(mac(1), Service::Open)]),
                answer(addr(3), &[(mac(3), Service::Open)]),
            ],
            failed: false,
        };
        s.beat("gw2", true, vec![result], vec![]);
        assert_eq!(s.state("gw1"), GatewayState::Serving);
        assert!(!s.c.needs_failover());
        assert_eq!(s.owner(1), owned("gw1"));
        // Re-probed after `reprobe`, not before.
        s.advance(Duration::from_millis(500));
        s.c.expire(s.now);
        assert!(s.request("gw2").is_none() && s.request("gw3").is_none());
        s.advance(Duration::from_millis(600));
        s.beat("gw2", true, vec![], vec![]);
        s.beat("gw3", true, vec![], vec![]);
        s.c.expire(s.now);
        assert!(s.request("gw2").is_some(), "probed again");
        // Its agent comes back: up, nothing moved.
        s.report("gw1", &[addr(1)]);
        assert_eq!(s.state("gw1"), GatewayState::Up);
        assert_eq!(s.owner(1), owned("gw1"));
    }

    #[test]
    fn a_silent_gateway_that_does_not_answer_is_dead_and_fails_over() {
        let mut s = Sim::new();
        s.silence_gw1();
        let req = s.request("gw2").unwrap();
        let result = ProbeResult {
            id: req.id,
            addresses: vec![
                answer(addr(1), &[]),
                answer(addr(3), &[(mac(3), Service::Open)]),
            ],
            failed: false,
        };
        s.beat("gw2", true, vec![result], vec![]);
        assert_eq!(s.state("gw1"), GatewayState::Dead);
        assert_eq!(s.c.events.deaths, 1);
        assert!(s.c.needs_failover());
    }

    #[test]
    fn a_closed_service_behind_an_answer_is_not_serving() {
        let mut s = Sim::new();
        s.silence_gw1();
        let req = s.request("gw2").unwrap();
        let result = ProbeResult {
            id: req.id,
            addresses: vec![
                answer(addr(1), &[(mac(1), Service::Closed)]),
                answer(addr(3), &[(mac(3), Service::Open)]),
            ],
            failed: false,
        };
        s.beat("gw2", true, vec![result], vec![]);
        assert_eq!(s.state("gw1"), GatewayState::Dead);
    }

    #[test]
    fn no_verdict_without_the_control_or_from_another_prober() {
        let mut s = Sim::new();
        s.silence_gw1();
        let req = s.request("gw2").unwrap();
        // gw3 cannot answer gw2's probe.
        let forged = ProbeResult {
            id: req.id,
            addresses: vec![answer(addr(1), &[])],
            failed: false,
        };
        s.beat("gw3", true, vec![forged], vec![]);
        assert_eq!(s.state("gw1"), GatewayState::Suspect);
        // gw2 hears nothing at all, not even the control: inconclusive.
        let deaf = ProbeResult {
            id: req.id,
            addresses: vec![answer(addr(1), &[]), answer(addr(3), &[])],
            failed: false,
        };
        s.beat("gw2", true, vec![deaf], vec![]);
        assert_eq!(s.state("gw1"), GatewayState::Suspect);
        assert_eq!(s.c.events.faults.probes["inconclusive"], 1);
        // The next probe goes to the other prober.
        s.c.expire(s.now);
        assert!(s.request("gw2").is_none());
        assert!(s.request("gw3").is_some());
        assert!(!s.c.needs_failover(), "no verdict, no move");
    }

    #[test]
    fn a_probe_without_result_is_asked_again_elsewhere() {
        let mut s = Sim::new();
        s.silence_gw1();
        s.request("gw2").unwrap();
        // gw2 heartbeats on but never answers.
        for _ in 0..3 {
            s.advance(Duration::from_millis(200));
            s.beat("gw2", true, vec![], vec![]);
            s.beat("gw3", true, vec![], vec![]);
            s.c.expire(s.now);
        }
        assert_eq!(s.c.events.faults.probes["timeout"], 1);
        assert!(s.request("gw3").is_some());
    }

    #[test]
    fn a_silent_gateway_holding_nothing_is_dead_at_once() {
        let mut s = Sim::new();
        // gw1 releases its address (say a drain finished) and reports it.
        s.c.routes.insert(
            (None, addr(1)),
            super::super::ownership::RouteState {
                ownership: owned("gw2"),
                changed: s.c.generation(),
                since: s.now,
            },
        );
        s.report("gw1", &[]);
        s.silence_gw1_unchecked();
        assert_eq!(s.state("gw1"), GatewayState::Dead);
    }

    impl Sim {
        fn silence_gw1_unchecked(&mut self) {
            for _ in 0..4 {
                self.advance(LEASE / 2);
                self.beat("gw2", true, vec![], vec![]);
                self.beat("gw3", true, vec![], vec![]);
                self.c.expire(self.now);
                if self.state("gw1") != GatewayState::Up {
                    break;
                }
            }
        }
    }

    #[test]
    fn a_link_down_moves_routes_away_without_waiting_for_a_release() {
        let mut s = Sim::new();
        s.beat("gw1", false, vec![], vec![]);
        assert_eq!(s.state("gw1"), GatewayState::LinkDown);
        assert!(s.c.needs_failover());
        let g = s.c.gateways.get("gw1").unwrap();
        assert!(!g.may_hold(addr(1)) && !g.takes_routes());
        s.beat("gw1", true, vec![], vec![]);
        assert_eq!(s.state("gw1"), GatewayState::Up);
    }

    #[test]
    fn drains_need_a_known_gateway_and_the_owning_run() {
        let mut s = Sim::new();
        let req = |g: &str, b: Option<&str>| DrainRequest {
            gateway: g.into(),
            boot_id: b.map(Into::into),
        };
        assert!(matches!(
            s.c.drain(&req("gw9", None), s.now),
            Err(DrainError::NotFound(_))
        ));
        assert!(matches!(
            s.c.drain(&req("gw1", Some("other")), s.now),
            Err(DrainError::NotOwner { .. })
        ));
        let r = s.c.drain(&req("gw1", Some("boot-gw1")), s.now).unwrap();
        assert_eq!(
            (r.drained, r.routes, r.held),
            (Some(DrainKind::Handoff), 1, 1)
        );
        assert!(s.c.needs_failover());
        // An operator's drain is not turned into a hand-off.
        s.c.drain(&req("gw2", None), s.now).unwrap();
        let r = s.c.drain(&req("gw2", Some("boot-gw2")), s.now).unwrap();
        assert_eq!(r.drained, Some(DrainKind::Operator));
        // A new run of gw1 ends its hand-off; gw2's drain stays.
        let r = Report {
            gateway: "gw1".into(),
            boot_id: "boot-gw1-new".into(),
            seq: 0,
            uptime_ms: 0,
            capacity: 1.0,
            applied: 0,
            owned: vec![addr(1)],
            enforce: EnforceCounters::default(),
            flows: vec![],
        };
        s.advance(LEASE);
        s.c.ingest(&r, s.now).unwrap();
        assert_eq!(s.c.gateways.get("gw1").unwrap().health.drain, None);
        let r = s.c.undrain(&req("gw2", None), s.now).unwrap();
        assert_eq!(r.drained, None);
    }

    #[test]
    fn a_conflict_orders_the_other_gateway_to_release() {
        let mut s = Sim::new();
        // gw1 finds gw2's MAC answering for its address 1, and a foreign one.
        let c = Conflict {
            address: addr(1),
            macs: vec![mac(2), MacAddr([2, 9, 9, 9, 9, 9])],
        };
        s.beat("gw1", true, vec![], vec![c.clone()]);
        assert_eq!(s.c.events.faults.conflicts, 1);
        let r = s.beat("gw2", true, vec![], vec![]);
        assert_eq!(
            r.release,
            vec![ReleaseOrder {
                address: addr(1),
                owner: "gw1".into()
            }]
        );
        // Reported again at once: not ordered again yet, not counted again.
        s.beat("gw1", true, vec![], vec![c]);
        assert!(s.beat("gw2", true, vec![], vec![]).release.is_empty());
        assert_eq!(s.c.events.faults.conflicts, 1);
        let st =
            s.c.health_status("gw1", s.c.gateways.get("gw1").unwrap(), s.now);
        assert_eq!(st.conflicts.len(), 1);
        assert_eq!(st.conflicts[0].others[0], (mac(2), Some("gw2".into())));
        assert_eq!(st.conflicts[0].others[1].1, None);
        // Cleared.
        s.beat("gw1", true, vec![], vec![]);
        assert!(s.c.gateways.get("gw1").unwrap().health.conflicts.is_empty());
    }

    #[test]
    fn stale_heartbeats_and_other_runs_change_nothing() {
        let mut s = Sim::new();
        let hb = Heartbeat {
            gateway: "gw1".into(),
            boot_id: "impostor".into(),
            seq: 99,
            link_up: false,
            mac: Some(mac(1)),
            probes: vec![],
            conflicts: vec![],
        };
        assert!(matches!(
            s.c.heartbeat(&hb, s.now),
            Err(IngestError::Conflict(_))
        ));
        let old = Heartbeat {
            boot_id: "boot-gw1".into(),
            seq: 0,
            ..hb
        };
        assert!(s.c.heartbeat(&old, s.now).unwrap().known);
        assert_eq!(s.state("gw1"), GatewayState::Up, "a late heartbeat");
        let unknown = Heartbeat {
            gateway: "gw7".into(),
            ..old
        };
        assert!(!s.c.heartbeat(&unknown, s.now).unwrap().known);
    }
}
