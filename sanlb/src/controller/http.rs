//! The controller's HTTP API (see [`crate::proto`] for the endpoints).

use std::{
    net::SocketAddr,
    sync::{Arc, Mutex, MutexGuard},
    time::{Duration, Instant},
};

use axum::{
    Json, Router,
    extract::{ConnectInfo, DefaultBodyLimit, Query, Request, State, rejection::JsonRejection},
    http::{StatusCode, header},
    middleware::{self, Next},
    response::{IntoResponse, Response},
    routing::{get, post},
};
use serde::Deserialize;

use super::{Controller, IngestError, metrics};
use crate::proto::{
    ApiError, MAX_BODY_BYTES, MAX_NAME_LEN, MAX_WAIT_MS, Report, ReportReply, Share, Status, shown,
};

/// What the handlers share.
#[derive(Debug)]
pub struct AppState {
    controller: Mutex<Controller>,
    token: String,
    closing: tokio::sync::watch::Sender<bool>,
}

impl AppState {
    /// Serves `controller` to clients presenting `token`.
    pub fn new(controller: Controller, token: String) -> Arc<Self> {
        Arc::new(Self {
            controller: Mutex::new(controller),
            token,
            closing: tokio::sync::watch::channel(false).0,
        })
    }

    /// Ends long polls and timers: the server is going down.
    pub fn close(&self) {
        self.closing.send_replace(true);
    }

    /// Resolves once [`AppState::close`] was called.
    pub async fn closed(&self) {
        let mut rx = self.closing.subscribe();
        let _ = rx.wait_for(|c| *c).await;
    }

    /// The controller (for the timers and tests).
    pub fn lock(&self) -> MutexGuard<'_, Controller> {
        // A panic while holding the lock is a bug elsewhere; the state is
        // still the last consistent one (every mutation validates first).
        self.controller.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// The router: `/v1/report`, `/v1/share`, `/v1/status`, `/metrics`,
/// `/v1/heartbeat`, `/v1/drain`, `/v1/undrain`, all behind the bearer token.
pub fn app(state: Arc<AppState>) -> Router {
    Router::new()
        .route("/v1/report", post(report))
        .route("/v1/share", get(share))
        .route("/v1/status", get(status))
        .route("/metrics", get(metrics_text))
        .route("/v1/heartbeat", post(super::faults::api::heartbeat))
        .route("/v1/drain", post(super::faults::api::drain))
        .route("/v1/undrain", post(super::faults::api::undrain))
        .layer(middleware::from_fn_with_state(state.clone(), auth))
        .layer(DefaultBodyLimit::max(MAX_BODY_BYTES))
        .with_state(state)
}

fn error(status: StatusCode, message: impl Into<String>) -> Response {
    (
        status,
        Json(ApiError {
            error: message.into(),
        }),
    )
        .into_response()
}

/// Compares without an early exit, so the time taken does not reveal how
/// much of the token matched (a dozen lines do not justify a crate).
fn same_token(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

async fn auth(State(state): State<Arc<AppState>>, req: Request, next: Next) -> Response {
    let presented = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "));
    let ok = presented.is_some_and(|t| same_token(t.as_bytes(), state.token.as_bytes()));
    if ok {
        return next.run(req).await;
    }
    let peer = req
        .extensions()
        .get::<ConnectInfo<SocketAddr>>()
        .map(|c| c.0.to_string())
        .unwrap_or_else(|| "unknown".into());
    let why = if presented.is_some() {
        "wrong bearer token"
    } else {
        "no bearer token"
    };
    tracing::warn!(%peer, path = %req.uri().path(), "refused: {why}");
    state.lock().count_error("unauthorized");
    let mut resp = error(StatusCode::UNAUTHORIZED, why);
    resp.headers_mut().insert(
        header::WWW_AUTHENTICATE,
        header::HeaderValue::from_static("Bearer"),
    );
    resp
}

async fn report(
    State(state): State<Arc<AppState>>,
    body: Result<Json<Report>, JsonRejection>,
) -> Response {
    let r = match body {
        Ok(Json(r)) => r,
        Err(rej) => {
            let status = rej.status();
            let reason = match status {
                StatusCode::PAYLOAD_TOO_LARGE => "body_too_large",
                StatusCode::UNSUPPORTED_MEDIA_TYPE => "content_type",
                StatusCode::UNPROCESSABLE_ENTITY => "invalid_field",
                _ => "malformed_json",
            };
            let text = rej.body_text();
            tracing::warn!(reason, "report refused: {text}");
            state.lock().count_error(reason);
            return error(status, text);
        }
    };
    let mut c = state.lock();
    match c.ingest(&r, Instant::now()) {
        Ok(reply) => Json::<ReportReply>(reply).into_response(),
        Err(e) => {
            tracing::warn!(gateway = %shown(&r.gateway), reason = e.reason(), "report refused: {e}");
            c.count_error(e.reason());
            let status = match e {
                IngestError::Conflict(_) => StatusCode::CONFLICT,
                _ => StatusCode::UNPROCESSABLE_ENTITY,
            };
            error(status, e.to_string())
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ShareQuery {
    gateway: String,
    /// The asking agent's run: a share goes only to the run that owns the
    /// gateway name.
    boot_id: String,
    #[serde(default)]
    after: u64,
    #[serde(default)]
    wait_ms: u64,
}

async fn share(
    State(state): State<Arc<AppState>>,
    q: Result<Query<ShareQuery>, axum::extract::rejection::QueryRejection>,
) -> Response {
    let Query(q) = match q {
        Ok(q) => q,
        Err(rej) => {
            state.lock().count_error("share_query");
            return error(StatusCode::BAD_REQUEST, rej.body_text());
        }
    };
    if q.gateway.is_empty() || q.gateway.len() > MAX_NAME_LEN {
        state.lock().count_error("share_query");
        return error(StatusCode::BAD_REQUEST, "gateway: 1–64 characters");
    }
    let mut rx = {
        let mut c = state.lock();
        if !c.may_share(&q.gateway, &q.boot_id) {
            c.count_error("boot_conflict");
            return error(
                StatusCode::CONFLICT,
                format!(
                    "gateway {} is reported by another live agent: no share for boot {}",
                    shown(&q.gateway),
                    shown(&q.boot_id)
                ),
            );
        }
        c.subscribe()
    };
    let wait = Duration::from_millis(q.wait_ms.min(MAX_WAIT_MS));
    // Bounded: returns at the deadline (or shutdown) whatever the generation.
    tokio::select! {
        _ = tokio::time::timeout(wait, rx.wait_for(|g| *g > q.after)) => {}
        () = state.closed() => {}
    }
    let c = state.lock();
    if !c.may_share(&q.gateway, &q.boot_id) {
        // Taken over while this poll waited.
        return error(
            StatusCode::CONFLICT,
            "gateway reported by another agent run",
        );
    }
    Json::<Share>(c.share(&q.gateway)).into_response()
}

async fn status(State(state): State<Arc<AppState>>) -> Json<Status> {
    Json(state.lock().status(Instant::now()))
}

async fn metrics_text(State(state): State<Arc<AppState>>) -> Response {
    let text = metrics::render(&state.lock(), Instant::now());
    ([(header::CONTENT_TYPE, metrics::CONTENT_TYPE)], text).into_response()
}
