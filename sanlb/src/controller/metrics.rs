//! `GET /metrics` in the Prometheus text format (version 0.0.4).
//!
//! Rendered by hand at scrape time from the controller's state: every
//! series is a projection of state that already exists (the map, the
//! window, the counters), so a metrics registry would only duplicate it and
//! have to be kept in sync, including removing series of routes that left.

use std::{collections::BTreeMap, fmt::Write as _, time::Instant};

use super::Controller;

/// Content type of the text format.
pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// Upper bounds (seconds) of the solver-time histogram's buckets: the
/// optimiser's time limit is 1 s by default, a few ms for small maps.
pub const SOLVE_BUCKETS: [f64; 14] = [
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

/// A Prometheus histogram of solver times (cumulative buckets when
/// rendered).
#[derive(Debug, Default, Clone, PartialEq)]
pub struct Histogram {
    /// Observations per bucket of [`SOLVE_BUCKETS`] (not cumulative); the
    /// last one counts those above every bound.
    pub buckets: [u64; SOLVE_BUCKETS.len() + 1],
    /// Sum of the observations.
    pub sum: f64,
    /// Number of observations.
    pub count: u64,
}

impl Histogram {
    /// Adds one observation (seconds).
    pub fn observe(&mut self, v: f64) {
        let i = SOLVE_BUCKETS
            .iter()
            .position(|b| v <= *b)
            .unwrap_or(SOLVE_BUCKETS.len());
        self.buckets[i] += 1;
        self.sum += v;
        self.count += 1;
    }
}

/// The build as a label set: `version` and `commit`.
pub fn build_labels() -> [(&'static str, &'static str); 2] {
    [
        ("version", env!("CARGO_PKG_VERSION")),
        ("commit", env!("SANLB_COMMIT")),
    ]
}

/// Prometheus text being written (also the agent's `/metrics`).
pub(crate) struct Out(pub(crate) String);

impl Out {
    pub(crate) fn head(&mut self, name: &str, kind: &str, help: &str) {
        let _ = writeln!(self.0, "# HELP {name} {help}\n# TYPE {name} {kind}");
    }

    pub(crate) fn sample(&mut self, name: &str, labels: &[(&str, &str)], value: f64) {
        self.0.push_str(name);
        if !labels.is_empty() {
            self.0.push('{');
            for (i, (k, v)) in labels.iter().enumerate() {
                if i > 0 {
                    self.0.push(',');
                }
                let _ = write!(self.0, "{k}=\"{}\"", escape(v));
            }
            self.0.push('}');
        }
        let _ = writeln!(self.0, " {}", number(value));
    }

    pub(crate) fn one(&mut self, name: &str, kind: &str, help: &str, value: f64) {
        self.head(name, kind, help);
        self.sample(name, &[], value);
    }
}

pub(crate) fn escape(v: &str) -> String {
    v.replace('\\', r"\\")
        .replace('"', "\\\"")
        .replace('\n', r"\n")
}

pub(crate) fn number(v: f64) -> String {
    if v.is_nan() {
        "NaN".into()
    } else if v.is_infinite() {
        if v > 0.0 {
            "+Inf".into()
        } else {
            "-Inf".into()
        }
    } else {
        format!("{v}")
    }
}

/// The exposition.
pub fn render(c: &Controller, now: Instant) -> String {
    let st = c.status(now);
    let k = c.events();
    let mut o = Out(String::with_capacity(4096));
    o.head(
        "sanlb_build_info",
        "gauge",
        "Always 1: the version and commit of this controller.",
    );
    o.sample("sanlb_build_info", &build_labels(), 1.0);
    o.one(
        "sanlb_generation",
        "gauge",
        "Generation of the hand-out in force.",
        st.generation as f64,
    );
    o.one(
        "sanlb_var_norm",
        "gauge",
        "Normalised variance of gateway utilisation under the current map (the population variance of sanlb_gateway_utilisation over alive gateways).",
        st.var_norm,
    );
    o.one(
        "sanlb_window_samples",
        "gauge",
        "Interval samples in the rate window.",
        c.window_samples() as f64,
    );

    o.head(
        "sanlb_gateway_up",
        "gauge",
        "1 while the gateway reports within its lease.",
    );
    for g in &st.gateways {
        o.sample(
            "sanlb_gateway_up",
            &[("gateway", &g.name)],
            f64::from(u8::from(g.alive)),
        );
    }
    o.head(
        "sanlb_gateway_capacity",
        "gauge",
        "Relative capacity the gateway reports.",
    );
    for g in &st.gateways {
        o.sample(
            "sanlb_gateway_capacity",
            &[("gateway", &g.name)],
            g.capacity,
        );
    }
    o.head(
        "sanlb_gateway_load_bytes_per_second",
        "gauge",
        "Sum of the rates of the routes the map gives the gateway.",
    );
    for g in &st.gateways {
        o.sample(
            "sanlb_gateway_load_bytes_per_second",
            &[("gateway", &g.name)],
            g.load,
        );
    }
    o.head(
        "sanlb_gateway_utilisation",
        "gauge",
        "Load per unit of capacity over the mean of that over alive gateways: 1 is an even share.",
    );
    for g in &st.gateways {
        o.sample(
            "sanlb_gateway_utilisation",
            &[("gateway", &g.name)],
            g.utilisation,
        );
    }
    o.head(
        "sanlb_gateway_bytes_total",
        "counter",
        "iSCSI bytes counted from the gateway's reports since the controller started, by direction (to_target: host to storage; to_initiator: storage to host).",
    );
    for g in &st.gateways {
        if let Some(t) = c.rates.bytes_total(&g.name) {
            for (dir, v) in [("to_target", t[0]), ("to_initiator", t[1])] {
                o.sample(
                    "sanlb_gateway_bytes_total",
                    &[("gateway", &g.name), ("direction", dir)],
                    v as f64,
                );
            }
        }
    }
    o.head(
        "sanlb_gateway_routes",
        "gauge",
        "Routes the map assigns to the gateway (moving ones count for the new owner).",
    );
    for g in &st.gateways {
        let n = st
            .map
            .iter()
            .filter(|m| m.ownership.assigned() == Some(g.name.as_str()))
            .count();
        o.sample("sanlb_gateway_routes", &[("gateway", &g.name)], n as f64);
    }
    o.head(
        "sanlb_gateway_applied_generation",
        "gauge",
        "Generation the gateway last applied.",
    );
    for g in &st.gateways {
        o.sample(
            "sanlb_gateway_applied_generation",
            &[("gateway", &g.name)],
            g.applied as f64,
        );
    }
    for (name, help, get) in [
        (
            "sanlb_gateway_acquires_total",
            "Addresses the gateway's agent acquired (since it started).",
            (|e: &crate::proto::EnforceCounters| e.acquired) as fn(&_) -> u64,
        ),
        (
            "sanlb_gateway_releases_total",
            "Addresses the gateway's agent released (since it started).",
            |e| e.released,
        ),
        (
            "sanlb_gateway_enforce_failures_total",
            "Failed acquires and releases (since the agent started).",
            |e| e.failed,
        ),
    ] {
        o.head(name, "counter", help);
        for g in &st.gateways {
            o.sample(name, &[("gateway", &g.name)], get(&g.enforce) as f64);
        }
    }

    o.head(
        "sanlb_route_rate_bytes_per_second",
        "gauge",
        "Rate of a route, mean over the window.",
    );
    for m in &st.map {
        let target = m.target.to_string();
        match m.host {
            Some(h) => {
                let host = h.to_string();
                o.sample(
                    "sanlb_route_rate_bytes_per_second",
                    &[("host", &host), ("target", &target)],
                    m.rate,
                )
            }
            None => o.sample(
                "sanlb_route_rate_bytes_per_second",
                &[("target", &target)],
                m.rate,
            ),
        }
    }
    o.one(
        "sanlb_moves_in_flight",
        "gauge",
        "Routes moving: withheld until their old owner releases them (pairs: held at the portals).",
        c.moves_in_flight() as f64,
    );
    o.one(
        "sanlb_moves_total",
        "counter",
        "Routes moved between gateways by adopted maps.",
        k.moves as f64,
    );
    o.one(
        "sanlb_moves_bypassed_total",
        "counter",
        "Moves completed without the release of a dead old owner.",
        k.bypassed as f64,
    );
    o.one(
        "sanlb_moves_abandoned_total",
        "counter",
        "Moves abandoned because an alive old owner did not release within a lease.",
        k.abandoned as f64,
    );
    o.head(
        "sanlb_rebalances_total",
        "counter",
        "Rebalance decisions by result.",
    );
    for result in ["adopted", "kept", "superseded", "paused", "advised"] {
        let n = k.rebalances.get(result).copied().unwrap_or(0);
        o.sample("sanlb_rebalances_total", &[("result", result)], n as f64);
    }
    let h = &k.solve_times;
    o.head(
        "sanlb_rebalance_duration_seconds",
        "histogram",
        "Solver time of rebalances.",
    );
    let mut cumulative = 0;
    for (i, le) in SOLVE_BUCKETS.iter().enumerate() {
        cumulative += h.buckets[i];
        o.sample(
            "sanlb_rebalance_duration_seconds_bucket",
            &[("le", &number(*le))],
            cumulative as f64,
        );
    }
    o.sample(
        "sanlb_rebalance_duration_seconds_bucket",
        &[("le", "+Inf")],
        h.count as f64,
    );
    o.sample("sanlb_rebalance_duration_seconds_sum", &[], h.sum);
    o.sample(
        "sanlb_rebalance_duration_seconds_count",
        &[],
        h.count as f64,
    );
    let ctl = &st.controls;
    o.one(
        "sanlb_advise_mode",
        "gauge",
        "1 in advise mode: decisions are computed and recorded, none enforced.",
        f64::from(u8::from(ctl.advise)),
    );
    o.one(
        "sanlb_rebalancing_paused",
        "gauge",
        "1 while periodic rebalancing is paused by the operator (failover and pins still act).",
        f64::from(u8::from(ctl.paused_since_ms.is_some())),
    );
    o.one(
        "sanlb_pinned_targets",
        "gauge",
        "Storage addresses pinned to a gateway by the operator.",
        ctl.pins.len() as f64,
    );
    o.one(
        "sanlb_routes_cooling",
        "gauge",
        "Routes that moved within the move cool-down (they stay where they are unless failover moves them).",
        ctl.cooling.len() as f64,
    );
    o.one(
        "sanlb_withheld_moves",
        "gauge",
        "Moves of the newest decision withheld by advise mode or pause (0 before any).",
        c.controls.withheld_moves as f64,
    );
    o.head(
        "sanlb_controls_total",
        "counter",
        "Operator controls applied, by action.",
    );
    for action in ["pause", "resume", "pin", "unpin"] {
        let n = c.controls.actions.get(action).copied().unwrap_or(0);
        o.sample("sanlb_controls_total", &[("action", action)], n as f64);
    }
    o.one(
        "sanlb_gateway_deaths_total",
        "counter",
        "Gateways declared dead after a silent lease.",
        k.deaths as f64,
    );
    o.one(
        "sanlb_reports_total",
        "counter",
        "Reports counted.",
        k.reports as f64,
    );
    o.one(
        "sanlb_reports_stale_total",
        "counter",
        "Reports ignored as duplicates or out of order.",
        k.stale_reports as f64,
    );
    o.head(
        "sanlb_report_errors_total",
        "counter",
        "Agents' requests (reports, share polls) refused, by reason.",
    );
    // The common reasons start at 0, so that rate() has a series before
    // the first refusal.
    let mut errors: BTreeMap<&str, u64> = [
        "unauthorized",
        "forbidden",
        "malformed_json",
        "invalid_field",
        "boot_conflict",
    ]
    .into_iter()
    .map(|r| (r, 0))
    .collect();
    for (reason, n) in &k.errors {
        errors.insert(reason, *n);
    }
    for (reason, n) in errors {
        o.sample("sanlb_report_errors_total", &[("reason", reason)], n as f64);
    }
    o.head(
        "sanlb_http_refused_total",
        "counter",
        "Other requests refused (status, metrics, the page, its login, controls), by endpoint and reason.",
    );
    for ((endpoint, reason), n) in &k.refused {
        o.sample(
            "sanlb_http_refused_total",
            &[("endpoint", endpoint), ("reason", reason)],
            *n as f64,
        );
    }
    o.head(
        "sanlb_gateway_name_conflict",
        "gauge",
        "1 while a second live agent reports under the gateway's name (its reports are refused).",
    );
    for g in &st.gateways {
        o.sample(
            "sanlb_gateway_name_conflict",
            &[("gateway", &g.name)],
            f64::from(u8::from(g.conflict.is_some())),
        );
    }
    o.one(
        "sanlb_boot_conflicts_total",
        "counter",
        "Reports refused because another agent run owns the gateway name.",
        k.boot_conflicts as f64,
    );
    o.one(
        "sanlb_gateways_forgotten_total",
        "counter",
        "Dead gateways forgotten after --forget-after.",
        k.forgotten as f64,
    );
    o.one(
        "sanlb_routes_refused_total",
        "counter",
        "Routes not created because the controller keeps its maximum.",
        k.routes_refused as f64,
    );
    o.one(
        "sanlb_generation_catch_ups_total",
        "counter",
        "Times the generation caught up with a gateway that had applied a later one.",
        k.catch_ups as f64,
    );
    o.one(
        "sanlb_state_persist_failures_total",
        "counter",
        "Failed writes of the state file.",
        k.persist_failures as f64,
    );
    if st.mode == crate::proto::Mode::Pair {
        let (unserved, allocated) = c.data_pool_use();
        o.one(
            "sanlb_data_addresses",
            "gauge",
            "Data addresses allocated from the data pool (one per entity and gateway).",
            allocated as f64,
        );
        o.one(
            "sanlb_data_pool_unserved",
            "gauge",
            "(entity, gateway) the data pool has no address left for: their pairs cannot go there.",
            unserved as f64,
        );
        o.one(
            "sanlb_pair_evictions_total",
            "counter",
            "Pair moves whose old gateway was told to end their connections.",
            k.pair_evictions as f64,
        );
    }
    o.0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_and_labels_are_escaped() {
        assert_eq!(number(1.5), "1.5");
        assert_eq!(number(f64::INFINITY), "+Inf");
        assert_eq!(escape("a\"b\\c\nd"), r#"a\"b\\c\nd"#);
        let mut o = Out(String::new());
        o.sample("x", &[("a", "1"), ("b", "q\"")], 2.0);
        assert_eq!(o.0, "x{a=\"1\",b=\"q\\\"\"} 2\n");
    }
}
