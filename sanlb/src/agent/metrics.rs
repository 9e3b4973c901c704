//! The agent's own `GET /metrics` (Prometheus text), on a local port
//! (`--metrics-listen`): what its programs saw (frames, counted, skipped by
//! reason, flow-table entries created and refused), its reports and what it
//! enforced. No token: bind it to loopback or a management address only.
//!
//! Rendered at scrape time from [`AgentStats`], which the agent's loop
//! updates after each read of the counters and each report.

use std::{
    net::SocketAddr,
    sync::{Arc, Mutex},
};

use axum::{
    Router,
    extract::State,
    http::{StatusCode, header},
    response::{IntoResponse, Response},
    routing::get,
};

use crate::{
    controller::metrics::{CONTENT_TYPE, Out, build_labels},
    dataplane::Stats,
    proto::EnforceCounters,
};

/// What the agent knows about itself, for `/metrics`.
#[derive(Debug, Default, Clone)]
pub struct AgentStats {
    /// Gateway name (empty when only counting).
    pub gateway: String,
    /// The ingress and egress programs' statistics at the last read (`None`
    /// until one, or for a counter source without them).
    pub hooks: Option<(Stats, Stats)>,
    /// Flow-table entries at the last read.
    pub flows: usize,
    /// Bytes the flow table holds (towards targets, towards initiators).
    pub bytes: [u64; 2],
    /// Failed reads of the counters.
    pub read_failures: u64,
    /// Reports the controller took.
    pub reports: u64,
    /// Reports that failed (unreachable, refused).
    pub report_failures: u64,
    /// The last report reached the controller.
    pub reachable: bool,
    /// Generation of the last share applied completely.
    pub applied: u64,
    /// Addresses held at the last report.
    pub held: usize,
    /// Acquires, releases, failures.
    pub enforce: EnforceCounters,
}

/// Shared between the agent's loop and the metrics server.
pub type SharedStats = Arc<Mutex<AgentStats>>;

/// Renders `s` as Prometheus text.
pub fn render(s: &AgentStats) -> String {
    let mut o = Out(String::with_capacity(2048));
    o.head(
        "sanlb_agent_build_info",
        "gauge",
        "Always 1: the version and commit of this agent.",
    );
    o.sample("sanlb_agent_build_info", &build_labels(), 1.0);
    if let Some((ingress, egress)) = &s.hooks {
        let hooks = [("ingress", ingress), ("egress", egress)];
        for (name, help, get) in [
            (
                "sanlb_agent_frames_total",
                "Frames the hook's program ran on.",
                (|h: &Stats| h.frames) as fn(&Stats) -> u64,
            ),
            (
                "sanlb_agent_frames_counted_total",
                "Frames counted into the flow table.",
                |h| h.counted,
            ),
            (
                "sanlb_agent_flows_created_total",
                "Flow-table entries the hook's program created.",
                |h| h.new_flows,
            ),
            (
                "sanlb_agent_flow_insert_failures_total",
                "Flow-table entries that could not be created (the frame was not counted).",
                |h| h.insert_failed,
            ),
        ] {
            o.head(name, "counter", help);
            for (hook, h) in hooks {
                o.sample(name, &[("hook", hook)], get(h) as f64);
            }
        }
        o.head(
            "sanlb_agent_frames_skipped_total",
            "counter",
            "Frames not counted, by reason (not IP, not TCP, not an iSCSI port, fragment, truncated, malformed, too many IPv6 extension headers).",
        );
        for (hook, h) in hooks {
            for (reason, v) in [
                ("not_ip", h.not_ip),
                ("not_tcp", h.not_tcp),
                ("not_iscsi", h.not_iscsi),
                ("fragment", h.fragment),
                ("truncated", h.truncated),
                ("malformed", h.malformed),
                ("ext_header_limit", h.ext_header_limit),
            ] {
                o.sample(
                    "sanlb_agent_frames_skipped_total",
                    &[("hook", hook), ("reason", reason)],
                    v as f64,
                );
            }
        }
    }
    o.one(
        "sanlb_agent_flows",
        "gauge",
        "(initiator, target) entries in the flow table at the last read.",
        s.flows as f64,
    );
    o.head(
        "sanlb_agent_bytes_total",
        "counter",
        "iSCSI bytes in the flow table, by direction (to_target: host to storage; to_initiator: storage to host).",
    );
    o.sample(
        "sanlb_agent_bytes_total",
        &[("direction", "to_target")],
        s.bytes[0] as f64,
    );
    o.sample(
        "sanlb_agent_bytes_total",
        &[("direction", "to_initiator")],
        s.bytes[1] as f64,
    );
    o.one(
        "sanlb_agent_map_read_failures_total",
        "counter",
        "Failed reads of the pinned maps.",
        s.read_failures as f64,
    );
    o.head(
        "sanlb_agent_reports_total",
        "counter",
        "Reports sent to the controller, by result.",
    );
    o.sample(
        "sanlb_agent_reports_total",
        &[("result", "ok")],
        s.reports as f64,
    );
    o.sample(
        "sanlb_agent_reports_total",
        &[("result", "failed")],
        s.report_failures as f64,
    );
    o.one(
        "sanlb_agent_controller_reachable",
        "gauge",
        "1 when the last report reached the controller.",
        f64::from(u8::from(s.reachable)),
    );
    o.one(
        "sanlb_agent_applied_generation",
        "gauge",
        "Generation of the last share applied completely.",
        s.applied as f64,
    );
    o.one(
        "sanlb_agent_addresses_held",
        "gauge",
        "Storage addresses held at the last report.",
        s.held as f64,
    );
    for (name, help, v) in [
        (
            "sanlb_agent_acquires_total",
            "Storage addresses acquired.",
            s.enforce.acquired,
        ),
        (
            "sanlb_agent_releases_total",
            "Storage addresses released.",
            s.enforce.released,
        ),
        (
            "sanlb_agent_enforce_failures_total",
            "Failed acquires, releases and listings of the addresses held.",
            s.enforce.failed,
        ),
    ] {
        o.one(name, "counter", help, v as f64);
    }
    o.0
}

/// The router: `GET /metrics`.
pub fn app(stats: SharedStats) -> Router {
    Router::new()
        .route("/metrics", get(metrics))
        .fallback(|| async { (StatusCode::NOT_FOUND, "only /metrics here\n") })
        .with_state(stats)
}

async fn metrics(State(stats): State<SharedStats>) -> Response {
    let text = render(&stats.lock().unwrap_or_else(|p| p.into_inner()));
    ([(header::CONTENT_TYPE, CONTENT_TYPE)], text).into_response()
}

/// Serves `stats` on `listener` until the future is dropped.
pub async fn serve(listener: tokio::net::TcpListener, stats: SharedStats) -> std::io::Result<()> {
    let addr: Option<SocketAddr> = listener.local_addr().ok();
    tracing::info!(addr = ?addr, "agent metrics listening");
    axum::serve(listener, app(stats)).await
}
