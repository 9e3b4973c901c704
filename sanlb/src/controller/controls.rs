//! The operator's controls and advise mode: what may move, and whether a
//! decision is enforced.
//!
//! - **Advise** (`--advise`, a setting): every rebalance is computed and
//!   recorded with the moves it would make; none is adopted, and shares
//!   hand out no address sets ("keep what you hold"). Addresses gateways
//!   hold are still adopted into the map, so the map shows what is.
//! - **Pause** (`sanlb pause` / `resume`): periodic rebalances are computed
//!   and recorded as `paused`, not adopted; failover and pins still act.
//! - **Pin** (`sanlb pin TARGET GATEWAY` / `unpin`): every route of the
//!   target may only use that gateway while it is alive (the optimiser's
//!   per-route `allowed` set). A pin that is not met asks for a rebalance of
//!   its own (trigger `pin`) that moves only the pinned routes. When the
//!   pinned gateway dies, failover moves the route elsewhere; it comes back
//!   once the gateway does.
//! - **Cool-down** (`--move-cooldown`, a setting): a route that changed
//!   gateway may not move again for that long, except off a dead gateway
//!   (failover) or to its pin.
//!
//! Pause and pins are persisted with the state (and checked on load like
//! live input), and so are the cool-downs under way, as the time left.

use std::{
    collections::BTreeMap,
    net::IpAddr,
    time::{Duration, Instant, SystemTime},
};

use serde::{Deserialize, Serialize};

use super::{Controller, Trigger, ownership::RouteKey};
use crate::{
    optimize::Problem,
    proto::{
        ControlsStatus, CoolingRoute, MAX_ROUTES, PinStatus, RouteChange, shown,
        valid_gateway_name, valid_storage_address,
    },
};

/// `move_cooldown` unless configured: moving an address stalls its I/O
/// for 0.1–0.25 s, and one window's burst should not move it back and
/// forth.
pub const DEFAULT_MOVE_COOLDOWN: Duration = Duration::from_secs(300);

/// Longest `move_cooldown` (and cool-down a state file may carry).
pub const MAX_MOVE_COOLDOWN: Duration = Duration::from_secs(24 * 3600);

/// Why a control request was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ControlError {
    /// The target is not a storage address this controller manages.
    #[error("target {0}: not a storage address this controller manages (--storage, --target)")]
    NotManaged(IpAddr),
    /// No gateway of that name has reported.
    #[error("gateway {0}: no such gateway has reported to this controller")]
    UnknownGateway(String),
    /// Unpin of a target without a pin.
    #[error("target {0}: not pinned")]
    NotPinned(IpAddr),
    /// As many pins as routes the controller keeps.
    #[error("{MAX_ROUTES} pins already: unpin some first")]
    TooMany,
    /// The state file cannot be written: the control is not taken.
    #[error("the state file cannot be written: control not applied")]
    NotPersisted,
}

/// A pin.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Pin {
    gateway: String,
    since_ms: u64,
}

/// The controls' state.
#[derive(Debug, Default)]
pub(super) struct Controls {
    /// Paused since (Unix ms).
    paused_since_ms: Option<u64>,
    pins: BTreeMap<IpAddr, Pin>,
    /// When each route last changed gateway, while within the cool-down.
    moved: BTreeMap<RouteKey, Instant>,
    /// The latest time the controller was told (for the cool-downs saved).
    latest: Option<Instant>,
    /// Epoch of the last forced decision (failover, pin) advised: in advise
    /// mode such a decision is computed once per state, not every tick.
    advised_epoch: Option<u64>,
    /// Actions taken, for metrics.
    pub(super) actions: BTreeMap<&'static str, u64>,
    /// Moves of the newest decision that was withheld (advise, pause).
    pub(super) withheld_moves: usize,
}

/// The controls as persisted.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SavedControls {
    /// Paused since (Unix ms).
    #[serde(default)]
    pub paused_since_ms: Option<u64>,
    /// Pins.
    #[serde(default)]
    pub pins: Vec<SavedPin>,
    /// Cool-downs under way.
    #[serde(default)]
    pub cooling: Vec<SavedCooling>,
}

/// A pin as persisted.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SavedPin {
    /// Storage address.
    pub target: IpAddr,
    /// Gateway name.
    pub gateway: String,
    /// Unix ms of the pin.
    pub since_ms: u64,
}

/// A cool-down as persisted: the time it had left when saved (a restart
/// lengthens it by the time the controller was down, never shortens it).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SavedCooling {
    /// Host (pair mode).
    pub host: Option<IpAddr>,
    /// Target.
    pub target: IpAddr,
    /// Milliseconds left.
    pub remaining_ms: u64,
}

impl SavedControls {
    /// The checks of live input, for a state file.
    pub fn validate(&self) -> Result<(), String> {
        if self.pins.len() > MAX_ROUTES || self.cooling.len() > MAX_ROUTES {
            return Err(format!(
                "controls: more than {MAX_ROUTES} pins or cool-downs"
            ));
        }
        let mut seen = std::collections::BTreeSet::new();
        for p in &self.pins {
            if !valid_storage_address(&p.target) {
                return Err(format!("pin {}: not a usable address", p.target));
            }
            if !valid_gateway_name(&p.gateway) {
                return Err(format!(
                    "pin {}: \"{}\" is not a gateway name",
                    p.target,
                    shown(&p.gateway)
                ));
            }
            if !seen.insert(p.target) {
                return Err(format!("pin {} listed twice", p.target));
            }
        }
        let max = MAX_MOVE_COOLDOWN.as_millis() as u64;
        for c in &self.cooling {
            if !valid_storage_address(&c.target)
                || c.host.is_some_and(|h| !valid_storage_address(&h))
            {
                return Err(format!("cool-down of {}: not a usable address", c.target));
            }
            if c.remaining_ms > max {
                return Err(format!(
                    "cool-down of {}: {} ms left, more than the longest cool-down ({max} ms)",
                    c.target, c.remaining_ms
                ));
            }
        }
        Ok(())
    }
}

/// Unix time, ms.
pub(super) fn unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

impl Controls {
    /// Restores saved controls at `now`.
    pub(super) fn restore(saved: SavedControls, now: Instant, cooldown: Duration) -> Self {
        let mut c = Self {
            paused_since_ms: saved.paused_since_ms,
            pins: saved
                .pins
                .into_iter()
                .map(|p| {
                    (
                        p.target,
                        Pin {
                            gateway: p.gateway,
                            since_ms: p.since_ms,
                        },
                    )
                })
                .collect(),
            latest: Some(now),
            ..Self::default()
        };
        for s in saved.cooling {
            // Stored as the time it moved: `cooldown - remaining` ago.
            let left = Duration::from_millis(s.remaining_ms).min(cooldown);
            let ago = cooldown - left;
            let at = now.checked_sub(ago).unwrap_or(now);
            c.moved.insert((s.host, s.target), at);
        }
        c
    }

    /// What is persisted.
    pub(super) fn saved(&self, cooldown: Duration) -> SavedControls {
        SavedControls {
            paused_since_ms: self.paused_since_ms,
            pins: self
                .pins
                .iter()
                .map(|(t, p)| SavedPin {
                    target: *t,
                    gateway: p.gateway.clone(),
                    since_ms: p.since_ms,
                })
                .collect(),
            cooling: self
                .latest
                .map(|now| {
                    self.cooling(now, cooldown)
                        .map(|(k, left)| SavedCooling {
                            host: k.0,
                            target: k.1,
                            remaining_ms: left.as_millis() as u64,
                        })
                        .collect()
                })
                .unwrap_or_default(),
        }
    }

    /// Routes in their cool-down at `now`, with the time left.
    fn cooling(
        &self,
        now: Instant,
        cooldown: Duration,
    ) -> impl Iterator<Item = (&RouteKey, Duration)> {
        self.moved.iter().filter_map(move |(k, at)| {
            let left = cooldown.saturating_sub(now.saturating_duration_since(*at));
            (!left.is_zero()).then_some((k, left))
        })
    }

    fn seen(&mut self, now: Instant) {
        if self.latest.is_none_or(|l| now > l) {
            self.latest = Some(now);
        }
    }

    fn count(&mut self, action: &'static str) {
        *self.actions.entry(action).or_default() += 1;
    }
}

/// The outcome a rebalance would have without controls, and what the
/// controls make of it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Verdict {
    /// Enforce it.
    Adopt,
    /// Advise mode: record it only.
    Advise,
    /// Paused: record it only.
    Pause,
}

impl Controller {
    /// Whether periodic rebalancing is paused.
    pub fn paused(&self) -> bool {
        self.controls.paused_since_ms.is_some()
    }

    /// `sanlb pause`: periodic rebalances are computed and recorded, not
    /// adopted. Idempotent.
    pub fn pause(&mut self, now: Instant) -> Result<ControlsStatus, ControlError> {
        self.controls.seen(now);
        if !self.paused() {
            self.controls.paused_since_ms = Some(unix_ms());
            if let Err(e) = self.persist_controls() {
                self.controls.paused_since_ms = None;
                return Err(e);
            }
            self.controls.count("pause");
            tracing::info!("rebalancing paused by the operator (failover and pins still act)");
        }
        Ok(self.controls_status(now))
    }

    /// `sanlb resume`. Idempotent.
    pub fn resume(&mut self, now: Instant) -> Result<ControlsStatus, ControlError> {
        self.controls.seen(now);
        if let Some(since) = self.controls.paused_since_ms.take() {
            if let Err(e) = self.persist_controls() {
                self.controls.paused_since_ms = Some(since);
                return Err(e);
            }
            self.controls.count("resume");
            tracing::info!("rebalancing resumed by the operator");
        }
        Ok(self.controls_status(now))
    }

    /// `sanlb pin TARGET GATEWAY`: every route of `target` may only use
    /// `gateway` while it is alive. A pin not met yet is acted on at the
    /// next lease tick (trigger `pin`).
    pub fn pin(
        &mut self,
        target: IpAddr,
        gateway: &str,
        now: Instant,
    ) -> Result<ControlsStatus, ControlError> {
        self.controls.seen(now);
        if !self.managed(target) {
            return Err(ControlError::NotManaged(target));
        }
        if self.gateways.get(gateway).is_none() {
            return Err(ControlError::UnknownGateway(shown(gateway)));
        }
        if self.controls.pins.len() >= MAX_ROUTES && !self.controls.pins.contains_key(&target) {
            return Err(ControlError::TooMany);
        }
        let pin = Pin {
            gateway: gateway.to_owned(),
            since_ms: unix_ms(),
        };
        let before = self.controls.pins.insert(target, pin);
        if let Err(e) = self.persist_controls() {
            match before {
                Some(p) => self.controls.pins.insert(target, p),
                None => self.controls.pins.remove(&target),
            };
            return Err(e);
        }
        // A route that does not exist yet is placed on its pin when it does.
        if self.cfg.mode == crate::proto::Mode::Target {
            self.discover(None, target, now);
        }
        self.epoch += 1;
        self.controls.count("pin");
        tracing::info!(%target, gateway, "pinned by the operator");
        Ok(self.controls_status(now))
    }

    /// `sanlb unpin TARGET`.
    pub fn unpin(&mut self, target: IpAddr, now: Instant) -> Result<ControlsStatus, ControlError> {
        self.controls.seen(now);
        let Some(pin) = self.controls.pins.remove(&target) else {
            return Err(ControlError::NotPinned(target));
        };
        if let Err(e) = self.persist_controls() {
            self.controls.pins.insert(target, pin);
            return Err(e);
        }
        self.epoch += 1;
        self.controls.count("unpin");
        tracing::info!(%target, gateway = %pin.gateway, "unpinned by the operator");
        Ok(self.controls_status(now))
    }

    fn persist_controls(&mut self) -> Result<(), ControlError> {
        self.persist().map_err(|()| ControlError::NotPersisted)
    }

    /// The controls for status.
    pub fn controls_status(&self, now: Instant) -> ControlsStatus {
        let cooldown = self.cfg.move_cooldown;
        ControlsStatus {
            advise: self.cfg.advise,
            paused_since_ms: self.controls.paused_since_ms,
            pins: self
                .controls
                .pins
                .iter()
                .map(|(t, p)| PinStatus {
                    target: *t,
                    gateway: p.gateway.clone(),
                    since_ms: p.since_ms,
                })
                .collect(),
            move_cooldown_ms: cooldown.as_millis() as u64,
            cooling: self
                .controls
                .cooling(now, cooldown)
                .map(|(k, left)| CoolingRoute {
                    target: k.1,
                    host: k.0,
                    remaining_ms: left.as_millis() as u64,
                })
                .collect(),
        }
    }

    /// The pinned gateway of a route, if pinned.
    fn pinned(&self, key: &RouteKey) -> Option<&str> {
        self.controls.pins.get(&key.1).map(|p| p.gateway.as_str())
    }

    /// Whether some pin is not met: a route of a pinned target assigned
    /// elsewhere while its gateway is alive. The timers then start a `pin`
    /// rebalance.
    pub fn pins_unmet(&self) -> bool {
        if self.controls.pins.is_empty() {
            return false;
        }
        self.routes.iter().any(|(k, r)| {
            self.pinned(k).is_some_and(|g| {
                self.gateways.get(g).is_some_and(|g| g.takes_routes())
                    && r.ownership.assigned().is_some_and(|a| a != g)
            })
        })
    }

    /// Whether a forced decision (failover, pin) is worth computing now: in
    /// advise mode, once per state (it would otherwise be advised again
    /// every lease tick, since nothing changes).
    pub(super) fn forced_due(&self) -> bool {
        !(self.cfg.advise && self.controls.advised_epoch == Some(self.epoch))
    }

    /// Restricts the routes of `problem` (route `i` is `keys[i]`): a pinned
    /// route to its gateway while that one takes routes; a route in its
    /// cool-down on a gateway that takes routes to that gateway; and, for a `pin`
    /// rebalance, every route that is not pinned to where it is, so that
    /// only pinned routes move.
    pub(super) fn constrain(
        &mut self,
        problem: &mut Problem,
        keys: &[RouteKey],
        trigger: Trigger,
        now: Instant,
    ) {
        self.controls.seen(now);
        let cooldown = self.cfg.move_cooldown;
        self.controls
            .moved
            .retain(|_, at| now.saturating_duration_since(*at) < cooldown);
        // Pins and cool-downs yield to faults and drains: a gateway that
        // takes no routes (dead, link down, drained) keeps none.
        let takes = |g: &str| self.gateways.get(g).is_some_and(|g| g.takes_routes());
        for (route, key) in problem.routes.iter_mut().zip(keys) {
            if let Some(g) = self.pinned(key)
                && takes(g)
            {
                route.allowed = Some(vec![g.to_owned()]);
                continue;
            }
            let Some(current) = route.current.as_deref().filter(|g| takes(g)) else {
                // Off a gateway that takes no routes, or on none: placed
                // freely.
                continue;
            };
            let hold = match trigger {
                Trigger::Pin => true,
                Trigger::Interval | Trigger::Failover => self.controls.moved.contains_key(key),
            };
            if hold {
                route.allowed = Some(vec![current.to_owned()]);
            }
        }
    }

    /// What the controls make of a decision to change the map.
    pub(super) fn verdict(&self, trigger: Trigger) -> Verdict {
        if self.cfg.advise {
            Verdict::Advise
        } else if self.paused() && trigger == Trigger::Interval {
            Verdict::Pause
        } else {
            Verdict::Adopt
        }
    }

    /// Notes a decision that was not adopted (advise, pause) with its moves.
    pub(super) fn withheld(&mut self, epoch: u64, forced: bool, moves: usize) {
        self.controls.withheld_moves = moves;
        if forced {
            self.controls.advised_epoch = Some(epoch);
        }
    }

    /// Starts the cool-down of the routes an adopted map moved.
    pub(super) fn moved(&mut self, changes: &[RouteKey], now: Instant) {
        self.controls.seen(now);
        if self.cfg.move_cooldown.is_zero() {
            return;
        }
        for k in changes {
            self.controls.moved.insert(*k, now);
        }
    }

    /// Restores the controls from a state file.
    pub(super) fn restore_controls(&mut self, saved: SavedControls, now: Instant) {
        self.controls = Controls::restore(saved, now, self.cfg.move_cooldown);
    }

    /// The controls to persist.
    pub(super) fn saved_controls(&self) -> SavedControls {
        self.controls.saved(self.cfg.move_cooldown)
    }

    /// Notes the time (for the cool-downs saved).
    pub(super) fn seen(&mut self, now: Instant) {
        self.controls.seen(now);
    }
}

/// The routes of `keys` whose gateway differs between `problem` (current)
/// and `assignment`, as records (at most [`crate::proto::MAX_RECORDED_CHANGES`]),
/// and the keys of all of them.
pub(super) fn changes(
    problem: &Problem,
    keys: &[RouteKey],
    assignment: &[usize],
) -> (Vec<RouteChange>, Vec<RouteKey>) {
    let mut records = Vec::new();
    let mut moved = Vec::new();
    for ((route, key), &gi) in problem.routes.iter().zip(keys).zip(assignment) {
        let to = &problem.gateways[gi].name;
        if route.current.as_deref() == Some(to.as_str()) {
            continue;
        }
        if route.current.is_some() {
            moved.push(*key);
        }
        if records.len() < crate::proto::MAX_RECORDED_CHANGES {
            records.push(RouteChange {
                target: key.1,
                host: key.0,
                from: route.current.clone(),
                to: to.clone(),
            });
        }
    }
    (records, moved)
}
