//! `GET /metrics` in the Prometheus text format (version 0.0.4).
//!
//! Rendered by hand at scrape time from the controller's state: every
//! series is a projection of state that already exists (the map, the
//! window, the counters), so a metrics registry would only duplicate it and
//! have to be kept in sync, including removing series of routes that left.

use std::{fmt::Write as _, time::Instant};

use super::Controller;

/// Content type of the text format.
pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

struct Out(String);

impl Out {
    fn head(&mut self, name: &str, kind: &str, help: &str) {
        let _ = writeln!(self.0, "# HELP {name} {help}\n# TYPE {name} {kind}");
    }

    fn sample(&mut self, name: &str, labels: &[(&str, &str)], value: f64) {
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

    fn one(&mut self, name: &str, kind: &str, help: &str, value: f64) {
        self.head(name, kind, help);
        self.sample(name, &[], value);
    }
}

fn escape(v: &str) -> String {
    v.replace('\\', r"\\")
        .replace('"', "\\\"")
        .replace('\n', r"\n")
}

fn number(v: f64) -> String {
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
    o.one(
        "sanlb_generation",
        "gauge",
        "Generation of the hand-out in force.",
        st.generation as f64,
    );
    o.one(
        "sanlb_var_norm",
        "gauge",
        "Normalised variance of gateway utilisation under the current map.",
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
        "Load divided by capacity.",
    );
    for g in &st.gateways {
        o.sample(
            "sanlb_gateway_utilisation",
            &[("gateway", &g.name)],
            g.utilisation,
        );
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
    for result in ["adopted", "kept", "superseded"] {
        let n = k.rebalances.get(result).copied().unwrap_or(0);
        o.sample("sanlb_rebalances_total", &[("result", result)], n as f64);
    }
    o.one(
        "sanlb_rebalance_duration_seconds",
        "gauge",
        "Solver time of the last rebalance.",
        k.last_solve_s,
    );
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
        "Requests refused, by reason.",
    );
    for (reason, n) in &k.errors {
        o.sample(
            "sanlb_report_errors_total",
            &[("reason", reason)],
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
