//! The controller's read model: `GET /v1/status` (and through it the
//! Prometheus text), projected from the state without changing it.

use std::time::Instant;

use super::Controller;
use crate::{
    optimize,
    proto::{FlowRate, GatewayStatus, MapEntry, NameConflict, Status},
};

/// Utilisation as a ratio: each gateway's load per unit of capacity over
/// the mean of that over the alive gateways, so 1 is an even share, 1.25
/// a quarter above it, and `sanlb_var_norm` is the variance of these
/// ratios over the alive gateways. All 0 when nothing flows.
pub(super) fn utilisation(loads: &[f64], gateways: &[(f64, bool)]) -> Vec<f64> {
    let per_cap: Vec<f64> = loads
        .iter()
        .zip(gateways)
        .map(|(l, (cap, _))| if *cap > 0.0 { l / cap } else { 0.0 })
        .collect();
    let alive: Vec<f64> = per_cap
        .iter()
        .zip(gateways)
        .filter(|(_, (_, a))| *a)
        .map(|(u, _)| *u)
        .collect();
    let mean = if alive.is_empty() {
        0.0
    } else {
        alive.iter().sum::<f64>() / alive.len() as f64
    };
    per_cap
        .iter()
        .map(|u| if mean > 0.0 { u / mean } else { 0.0 })
        .collect()
}

impl Controller {
    /// `GET /v1/status`.
    pub fn status(&self, now: Instant) -> Status {
        let (problem, _) = self.problem(true);
        let rates = self.rates();
        let in_force = optimize::in_force(&problem);
        let caps: Vec<(f64, bool)> = self
            .gateways
            .iter()
            .map(|(_, g)| (g.capacity, g.alive))
            .collect();
        let utilisation = utilisation(&in_force.loads, &caps);
        Status {
            generation: self.generation,
            mode: self.cfg.mode,
            interval_ms: self.cfg.interval.as_millis() as u64,
            window: self.cfg.window,
            lease_ms: self.cfg.lease.as_millis() as u64,
            var_norm: in_force.var_norm,
            gateways: self
                .gateways
                .iter()
                .zip(in_force.loads.iter().zip(&utilisation))
                .map(|((n, g), (&load, &utilisation))| GatewayStatus {
                    name: n.clone(),
                    capacity: g.capacity,
                    alive: g.alive,
                    last_report_ms: Some(
                        now.saturating_duration_since(g.last_seen).as_millis() as u64
                    ),
                    load,
                    utilisation,
                    applied: g.applied,
                    owned: g.owned.iter().copied().collect(),
                    enforce: g.enforce,
                    conflict: g.conflict.as_ref().map(|c| NameConflict {
                        boot_id: c.boot_id.clone(),
                        refused: c.refused,
                        last_ms: now.saturating_duration_since(c.last).as_millis() as u64,
                    }),
                    health: self.health_status(n, g, now),
                    forget_in_ms: (!g.alive && !self.routes.involves(n)).then(|| {
                        self.cfg
                            .forget_after
                            .saturating_sub(now.saturating_duration_since(g.last_seen))
                            .as_millis() as u64
                    }),
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
                // Pair mode: flows to data addresses are their entity's.
                let mut m: std::collections::BTreeMap<_, f64> = Default::default();
                for (&(host, target), &rate) in self.matrix() {
                    *m.entry((self.entity_of(target), host)).or_default() += rate;
                }
                m.into_iter()
                    .map(|((target, host), rate)| FlowRate { host, target, rate })
                    .collect()
            },
            rebalances: self.history.iter().cloned().collect(),
            report_errors: self
                .events
                .errors
                .iter()
                .map(|(k, v)| (k.clone(), *v))
                .collect(),
            cluster: None,
            data_addresses: self.data_addresses(),
            controls: self.controls_status(now),
        }
    }
}
