//! The HTTP API through `app()` without a socket: authentication, input
//! validation (each bad request refused with its status and the state
//! unchanged), long polls, metrics.

use std::{
    sync::Arc,
    time::{Duration, Instant},
};

use crate::fakes::{HOST, TOKEN, config, target};
use axum::{
    body::Body,
    http::{Request, StatusCode, header},
};
use http_body_util::BodyExt as _;
use sanlb::{
    controller::{
        Controller,
        http::{AppState, app},
        store::Store,
    },
    proto::{ApiError, EnforceCounters, Flow, Report, ReportReply, Share, Status},
};
use tower::ServiceExt as _;

fn report(seq: u64, uptime_ms: u64, bytes: u64) -> Report {
    Report {
        gateway: "gw1".into(),
        boot_id: "boot-a".into(),
        seq,
        uptime_ms,
        capacity: 1.0,
        applied: 0,
        owned: vec![target(1)],
        enforce: EnforceCounters::default(),
        flows: vec![Flow {
            initiator: HOST,
            target: target(1),
            to_target_bytes: bytes,
            to_initiator_bytes: 0,
        }],
    }
}

struct Api {
    state: Arc<AppState>,
    _dir: tempfile::TempDir,
}

impl Api {
    fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let c = Controller::new(
            config(&[target(1), target(2)]),
            Some(Store::new(dir.path().join("s.json"))),
            Instant::now(),
        )
        .unwrap();
        Self {
            state: AppState::new(c, TOKEN.into()),
            _dir: dir,
        }
    }

    async fn call(&self, req: Request<Body>) -> (StatusCode, Vec<u8>) {
        let resp = app(self.state.clone()).oneshot(req).await.unwrap();
        let status = resp.status();
        (
            status,
            resp.into_body()
                .collect()
                .await
                .unwrap()
                .to_bytes()
                .to_vec(),
        )
    }

    async fn post(&self, token: Option<&str>, body: impl Into<Body>) -> (StatusCode, Vec<u8>) {
        let mut req = Request::post("/v1/report").header(header::CONTENT_TYPE, "application/json");
        if let Some(t) = token {
            req = req.header(header::AUTHORIZATION, format!("Bearer {t}"));
        }
        self.call(req.body(body.into()).unwrap()).await
    }

    async fn get(&self, uri: &str) -> (StatusCode, Vec<u8>) {
        let req = Request::get(uri).header(header::AUTHORIZATION, format!("Bearer {TOKEN}"));
        self.call(req.body(Body::empty()).unwrap()).await
    }

    /// Everything but the error counters, at a fixed instant.
    fn snapshot(&self, at: Instant) -> (Status, u64, serde_json::Value) {
        let c = self.state.lock();
        let mut st = c.status(at);
        st.report_errors.clear();
        (
            st,
            c.events().reports,
            serde_json::to_value(c.saved()).unwrap(),
        )
    }
}

#[tokio::test]
async fn bad_requests_are_refused_and_change_nothing() {
    let api = Api::new();
    // Some state first: a baseline and one counted report.
    for (seq, up, b) in [(0, 0, 0), (1, 1000, 5000)] {
        let (s, body) = api
            .post(
                Some(TOKEN),
                serde_json::to_vec(&report(seq, up, b)).unwrap(),
            )
            .await;
        assert_eq!(s, StatusCode::OK, "{}", String::from_utf8_lossy(&body));
        let reply: ReportReply = serde_json::from_slice(&body).unwrap();
        assert!(reply.counted);
    }
    let at = Instant::now();
    let before = api.snapshot(at);

    let good = serde_json::to_value(report(2, 2000, 6000)).unwrap();
    let with = |path: &str, v: serde_json::Value| {
        let mut g = good.clone();
        *g.pointer_mut(path).unwrap() = v;
        serde_json::to_vec(&g).unwrap()
    };
    let mut unknown = good.clone();
    unknown["surprise"] = serde_json::json!(1);
    let huge = {
        let mut g = good.clone();
        g["gateway"] = serde_json::Value::String("x".repeat(17 << 20));
        serde_json::to_vec(&g).unwrap()
    };
    // (name, token, body, expected status, what the error must say)
    type Case<'a> = (&'a str, Option<&'a str>, Vec<u8>, StatusCode, &'a str);
    let cases: Vec<Case> = vec![
        (
            "no token",
            None,
            serde_json::to_vec(&good).unwrap(),
            StatusCode::UNAUTHORIZED,
            "no bearer token",
        ),
        (
            "wrong token",
            Some("nope"),
            serde_json::to_vec(&good).unwrap(),
            StatusCode::UNAUTHORIZED,
            "wrong bearer token",
        ),
        (
            "malformed json",
            Some(TOKEN),
            b"{\"gateway\": \"gw1\",".to_vec(),
            StatusCode::BAD_REQUEST,
            "",
        ),
        (
            "wrong type",
            Some(TOKEN),
            with("/seq", serde_json::json!("three")),
            StatusCode::UNPROCESSABLE_ENTITY,
            "seq",
        ),
        (
            "unknown field",
            Some(TOKEN),
            serde_json::to_vec(&unknown).unwrap(),
            StatusCode::UNPROCESSABLE_ENTITY,
            "surprise",
        ),
        (
            "negative count",
            Some(TOKEN),
            with("/flows/0/to_target_bytes", serde_json::json!(-5)),
            StatusCode::UNPROCESSABLE_ENTITY,
            "to_target_bytes",
        ),
        (
            "absurd count",
            Some(TOKEN),
            with("/flows/0/to_target_bytes", serde_json::json!(1u64 << 60)),
            StatusCode::UNPROCESSABLE_ENTITY,
            "198.18.0.10→198.18.1.1: to_target_bytes",
        ),
        (
            "bad gateway name",
            Some(TOKEN),
            with("/gateway", serde_json::json!("gw 1/../x")),
            StatusCode::UNPROCESSABLE_ENTITY,
            "gateway:",
        ),
        (
            "zero capacity",
            Some(TOKEN),
            with("/capacity", serde_json::json!(0.0)),
            StatusCode::UNPROCESSABLE_ENTITY,
            "capacity:",
        ),
        (
            "absurd generation",
            Some(TOKEN),
            with("/applied", serde_json::json!(1u64 << 60)),
            StatusCode::UNPROCESSABLE_ENTITY,
            "applied:",
        ),
        (
            "multicast owned",
            Some(TOKEN),
            with("/owned/0", serde_json::json!("224.0.0.1")),
            StatusCode::UNPROCESSABLE_ENTITY,
            "owned:",
        ),
        (
            "huge body",
            Some(TOKEN),
            huge,
            StatusCode::PAYLOAD_TOO_LARGE,
            "",
        ),
    ];
    for (name, token, body, want, says) in cases {
        let (got, reply) = api.post(token, body).await;
        assert_eq!(got, want, "{name}: {}", String::from_utf8_lossy(&reply));
        let err: ApiError = serde_json::from_slice(&reply).unwrap_or_else(|_| {
            panic!(
                "{name}: not an error body: {}",
                String::from_utf8_lossy(&reply)
            )
        });
        assert!(
            err.error.contains(says),
            "{name}: {:?} does not say {says:?}",
            err.error
        );
        assert_eq!(api.snapshot(at), before, "{name} changed the state");
    }
    // Missing content type.
    let req = Request::post("/v1/report")
        .header(header::AUTHORIZATION, format!("Bearer {TOKEN}"))
        .body(Body::from(serde_json::to_vec(&good).unwrap()))
        .unwrap();
    assert_eq!(api.call(req).await.0, StatusCode::UNSUPPORTED_MEDIA_TYPE);
    // Reads need the token too.
    for uri in [
        "/v1/status",
        "/metrics",
        "/v1/share?gateway=gw1&boot_id=boot-a",
    ] {
        let (s, _) = api
            .call(Request::get(uri).body(Body::empty()).unwrap())
            .await;
        assert_eq!(s, StatusCode::UNAUTHORIZED, "{uri}");
    }
    assert_eq!(api.snapshot(at), before);
    // The refusals are counted by reason, and the good report still counts from the old baseline.
    // Issue 18: a scrape or a status read without a token is not a report error.
    let metrics = String::from_utf8(api.get("/metrics").await.1).unwrap();
    for line in [
        "sanlb_report_errors_total{reason=\"unauthorized\"} 3",
        "sanlb_http_refused_total{endpoint=\"status\",reason=\"unauthorized\"} 1",
        "sanlb_http_refused_total{endpoint=\"metrics\",reason=\"unauthorized\"} 1",
        "sanlb_report_errors_total{reason=\"malformed_json\"} 1",
        "sanlb_report_errors_total{reason=\"invalid_field\"} 3",
        "sanlb_report_errors_total{reason=\"absurd_count\"} 1",
        "sanlb_report_errors_total{reason=\"body_too_large\"} 1",
        "sanlb_report_errors_total{reason=\"content_type\"} 1",
        "sanlb_reports_total 2",
    ] {
        assert!(
            metrics.lines().any(|l| l == line),
            "missing {line:?} in\n{metrics}"
        );
    }
    let (s, _) = api
        .post(Some(TOKEN), serde_json::to_vec(&good).unwrap())
        .await;
    assert_eq!(s, StatusCode::OK);
    api.state.lock().close_interval();
    let st: Status = serde_json::from_slice(&api.get("/v1/status").await.1).unwrap();
    // 6000 bytes over 2 s since the baseline.
    assert_eq!(
        st.map.iter().find(|m| m.target == target(1)).unwrap().rate,
        3000.0
    );
}

#[tokio::test]
async fn long_poll_returns_on_a_new_generation_or_at_its_deadline() {
    let api = Api::new();
    let (s, _) = api
        .post(Some(TOKEN), serde_json::to_vec(&report(0, 0, 0)).unwrap())
        .await;
    assert_eq!(s, StatusCode::OK);
    let g = api.state.lock().generation();
    // Nothing new: returns at the deadline with the same generation, and
    // no address set during the start-up grace.
    let t = Instant::now();
    let share: Share = serde_json::from_slice(
        &api.get(&format!(
            "/v1/share?gateway=gw1&boot_id=boot-a&after={g}&wait_ms=300"
        ))
        .await
        .1,
    )
    .unwrap();
    assert!(t.elapsed() >= Duration::from_millis(300));
    assert_eq!((share.generation, share.addresses), (g, None));
    // The grace ends while a poll waits: it returns at once with the address set.
    let state = api.state.clone();
    let bump = tokio::spawn(async move {
        // Past the grace (one lease, 900 ms), with gw1 freshly heard from.
        tokio::time::sleep(Duration::from_millis(950)).await;
        let mut c = state.lock();
        c.ingest(&report(1, 950, 0), Instant::now()).unwrap();
        c.expire(Instant::now());
    });
    let t = Instant::now();
    let share: Share = serde_json::from_slice(
        &api.get(&format!(
            "/v1/share?gateway=gw1&boot_id=boot-a&after={g}&wait_ms=20000"
        ))
        .await
        .1,
    )
    .unwrap();
    assert!(t.elapsed() < Duration::from_secs(5));
    assert!(share.generation > g);
    // gw1 held target 1 when it first reported: it was adopted.
    assert_eq!(share.addresses, Some(vec![target(1)]));
    bump.await.unwrap();
    // A gateway the controller has not heard from is told to keep what it holds.
    let other: Share =
        serde_json::from_slice(&api.get("/v1/share?gateway=gw9&boot_id=any").await.1).unwrap();
    assert_eq!(other.addresses, None);
    let (s, _) = api
        .get("/v1/share?gateway=gw1&boot_id=boot-a&after=x")
        .await;
    assert_eq!(s, StatusCode::BAD_REQUEST);
}

#[tokio::test]
async fn metrics_are_prometheus_text() {
    let api = Api::new();
    api.post(Some(TOKEN), serde_json::to_vec(&report(0, 0, 0)).unwrap())
        .await;
    let req = Request::get("/metrics")
        .header(header::AUTHORIZATION, format!("Bearer {TOKEN}"))
        .body(Body::empty())
        .unwrap();
    let resp = app(api.state.clone()).oneshot(req).await.unwrap();
    assert_eq!(
        resp.headers()[header::CONTENT_TYPE],
        "text/plain; version=0.0.4; charset=utf-8"
    );
    let text = String::from_utf8(
        resp.into_body()
            .collect()
            .await
            .unwrap()
            .to_bytes()
            .to_vec(),
    )
    .unwrap();
    for name in [
        "sanlb_generation",
        "sanlb_gateway_load_bytes_per_second",
        "sanlb_route_rate_bytes_per_second",
        "sanlb_var_norm",
        "sanlb_moves_total",
        "sanlb_rebalance_duration_seconds",
        "sanlb_report_errors_total",
    ] {
        assert!(text.contains(&format!("# TYPE {name} ")), "no {name}");
    }
    // Every sample line is `name{labels} value` with a known family and a number.
    for line in text.lines().filter(|l| !l.starts_with('#')) {
        let (series, value) = line.rsplit_once(' ').unwrap();
        assert!(series.starts_with("sanlb_"), "{line}");
        assert!(
            value.parse::<f64>().is_ok() || ["NaN", "+Inf", "-Inf"].contains(&value),
            "{line}"
        );
    }
    assert!(text.contains("sanlb_gateway_up{gateway=\"gw1\"} 1\n"));
    assert!(text.contains("sanlb_route_rate_bytes_per_second{target=\"198.18.1.1\"} 0\n"));
}

/// Issue 11, item 8: bodies are "parsed strictly", yet serde took a JSON
/// array of the fields in order as a report (and as its flows).
#[tokio::test]
async fn regression_11_8_positional_arrays_are_not_reports() {
    let api = Api::new();
    let before = api.snapshot(Instant::now());
    let positional =
        serde_json::json!(["gw1", "boot-a", 0, 0, 1.0, 0, ["198.18.1.1"], [0, 0, 0], []]);
    let (s, body) = api
        .post(Some(TOKEN), serde_json::to_vec(&positional).unwrap())
        .await;
    assert_eq!(s, StatusCode::UNPROCESSABLE_ENTITY);
    let e: ApiError = serde_json::from_slice(&body).unwrap();
    assert!(e.error.contains("a JSON object (Report)"), "{}", e.error);
    let mut nested = serde_json::to_value(report(0, 0, 0)).unwrap();
    nested["flows"] = serde_json::json!([["198.18.0.10", "198.18.1.1", 1, 2]]);
    let (s, _) = api
        .post(Some(TOKEN), serde_json::to_vec(&nested).unwrap())
        .await;
    assert_eq!(s, StatusCode::UNPROCESSABLE_ENTITY);
    nested["flows"] = serde_json::json!([]);
    nested["enforce"] = serde_json::json!([1, 2, 3]);
    let (s, _) = api
        .post(Some(TOKEN), serde_json::to_vec(&nested).unwrap())
        .await;
    assert_eq!(s, StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(api.snapshot(Instant::now()).2, before.2, "nothing changed");
}
