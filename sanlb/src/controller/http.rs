//! The controller's HTTP API (see [`crate::proto`] for the endpoints).
//!
//! Who may do what: the agents' token may do everything (reports, shares,
//! the controls `POST /v1/pause`, `/v1/resume`, `/v1/pin`, `/v1/unpin`);
//! the read-only token, and a browser session of the status page
//! ([`super::page`]), only read (`GET /v1/status`, `/v1/history`,
//! `/metrics`, the page); `GET /healthz` needs no token and says nothing but
//! whether the server is up. Every refusal, including unknown paths (404),
//! wrong methods (405) and oversized heads (431), has a `{"error": …}`
//! body. Refusals of the agents' endpoints count as report errors, the
//! others (a scrape or a page without a token) apart.

use std::{
    net::SocketAddr,
    sync::{Arc, Mutex, MutexGuard},
    time::{Duration, Instant},
};

use axum::{
    Extension, Json, Router,
    body::Body,
    extract::{ConnectInfo, DefaultBodyLimit, Query, Request, State, rejection::JsonRejection},
    http::{StatusCode, Uri, header},
    middleware::{self, Next},
    response::{IntoResponse, Response},
    routing::{get, post},
};
use http_body_util::BodyExt as _;
use serde::Deserialize;

use super::{
    Controller, IngestError, controls::ControlError, leadership::ClusterView, metrics, page,
    server::DEFAULT_BODY_TIMEOUT,
};
use crate::proto::{
    ApiError, ControlsStatus, History, MAX_BODY_BYTES, MAX_NAME_LEN, MAX_WAIT_MS, PinRequest,
    Report, ReportReply, Share, Status, UnpinRequest, shown,
};

/// Most header fields a request may carry (`431` beyond).
pub const MAX_HEADERS: usize = 100;
/// Most bytes of header fields (names and values) a request may carry
/// (`431` beyond).
pub const MAX_HEADER_BYTES: usize = 16 * 1024;

/// Who may call what, and how long a request body may take.
#[derive(Clone, Debug)]
pub struct Access {
    /// The agents' token: every endpoint.
    pub token: String,
    /// A token that may only read (`/v1/status`, `/metrics`).
    pub read_token: Option<String>,
    /// Longest wait for a request's whole body (`408` after).
    pub body_timeout: Duration,
    /// Mark the status page's session cookie `Secure` (served over HTTPS).
    pub secure_cookies: bool,
}

/// What the handlers share.
#[derive(Debug)]
pub struct AppState {
    controller: Mutex<Controller>,
    /// The iSNS sync's statistics, when it runs.
    isns: std::sync::OnceLock<Arc<super::isns::IsnsStats>>,
    access: Access,
    closing: tokio::sync::watch::Sender<bool>,
    /// The cluster's view, when the state lives in etcd (`leadership.rs`).
    pub(super) cluster: Option<ClusterView>,
    sessions: page::Sessions,
}

impl AppState {
    /// Serves `controller` to clients presenting `token`.
    pub fn new(controller: Controller, token: String) -> Arc<Self> {
        Self::with_access(
            controller,
            Access {
                token,
                read_token: None,
                body_timeout: DEFAULT_BODY_TIMEOUT,
                secure_cookies: false,
            },
        )
    }

    /// Serves `controller` as `access` says.
    pub fn with_access(controller: Controller, access: Access) -> Arc<Self> {
        Self::in_cluster(controller, access, None)
    }

    /// Serves `controller` as `access` says, as one of a cluster when
    /// `cluster` is given.
    pub fn in_cluster(
        controller: Controller,
        access: Access,
        cluster: Option<ClusterView>,
    ) -> Arc<Self> {
        Arc::new(Self {
            controller: Mutex::new(controller),
            isns: std::sync::OnceLock::new(),
            access,
            closing: tokio::sync::watch::channel(false).0,
            cluster,
            sessions: page::Sessions::default(),
        })
    }

    /// Whether `token` is one of the controller's (either may open a
    /// read-only session of the status page).
    pub fn is_token(&self, token: &str) -> bool {
        let is = |t: &str| same_token(token.as_bytes(), t.as_bytes());
        is(&self.access.token) || self.access.read_token.as_deref().is_some_and(is)
    }

    /// Whether a request may read: a token, or an open page session.
    pub fn may_read(&self, headers: &axum::http::HeaderMap) -> bool {
        let bearer = headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "));
        bearer.is_some_and(|t| self.is_token(t))
            || page::session_cookie(headers)
                .is_some_and(|id| self.sessions.valid(id, Instant::now()))
    }

    /// The status page's sessions.
    pub fn sessions(&self) -> &page::Sessions {
        &self.sessions
    }

    /// Whether session cookies are `Secure`.
    pub fn secure_cookies(&self) -> bool {
        self.access.secure_cookies
    }

    /// Ends long polls and timers: the server is going down.
    pub fn close(&self) {
        self.closing.send_replace(true);
    }

    /// Whether [`AppState::close`] was called.
    pub fn is_closing(&self) -> bool {
        *self.closing.borrow()
    }

    /// Resolves once [`AppState::close`] was called.
    pub async fn closed(&self) {
        let mut rx = self.closing.subscribe();
        let _ = rx.wait_for(|c| *c).await;
    }

    /// The iSNS sync's statistics, when the server publishes to one.
    pub fn isns(&self) -> Option<&Arc<super::isns::IsnsStats>> {
        self.isns.get()
    }

    pub(super) fn set_isns(&self, stats: Arc<super::isns::IsnsStats>) {
        let _ = self.isns.set(stats);
    }

    /// The controller (for the timers and tests).
    pub fn lock(&self) -> MutexGuard<'_, Controller> {
        // A panic while holding the lock is a bug elsewhere; the state is
        // still the last consistent one (every mutation validates first).
        self.controller.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// The router: `/v1/report`, `/v1/share`, `/v1/status`, `/metrics`,
/// `/v1/heartbeat`, `/v1/drain`, `/v1/undrain` behind the tokens, `/healthz`
/// open.
pub fn app(state: Arc<AppState>) -> Router {
    let api = Router::new()
        .route("/v1/report", post(report))
        .route("/v1/share", get(share))
        .route("/v1/status", get(status))
        .route("/v1/history", get(history))
        .route("/v1/pause", post(pause))
        .route("/v1/resume", post(resume))
        .route("/v1/pin", post(pin))
        .route("/v1/unpin", post(unpin))
        .route("/metrics", get(metrics_text))
        .route("/v1/heartbeat", post(super::faults::api::heartbeat))
        .route("/v1/drain", post(super::faults::api::drain))
        .route("/v1/undrain", post(super::faults::api::undrain))
        .method_not_allowed_fallback(method_not_allowed)
        // Outermost first when a request comes in: auth, then the body.
        .layer(middleware::from_fn_with_state(state.clone(), read_body))
        .layer(middleware::from_fn_with_state(state.clone(), auth))
        .layer(DefaultBodyLimit::max(MAX_BODY_BYTES));
    Router::new()
        .route("/healthz", get(healthz))
        .method_not_allowed_fallback(method_not_allowed)
        .merge(page::routes())
        .merge(api)
        .fallback(not_found)
        .layer(middleware::from_fn(head_limits))
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

/// What a path needs.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Need {
    Read,
    Agent,
}

fn need(path: &str) -> Need {
    match path {
        "/v1/status" | "/v1/history" | "/metrics" => Need::Read,
        _ => Need::Agent,
    }
}

/// The label a refused request is counted under: `None` for the agents'
/// endpoints (report errors), else the endpoint (`sanlb_http_refused_total`).
fn endpoint(path: &str) -> Option<&'static str> {
    match path {
        "/v1/report" | "/v1/share" | "/v1/heartbeat" => None,
        "/v1/status" => Some("status"),
        "/v1/history" => Some("history"),
        "/metrics" => Some("metrics"),
        "/v1/pause" | "/v1/resume" | "/v1/pin" | "/v1/unpin" | "/v1/drain" | "/v1/undrain" => {
            Some("control")
        }
        _ => Some("other"),
    }
}

/// Counts a refusal where it belongs (see [`endpoint`]).
fn count(state: &AppState, path: &str, reason: &str) {
    let mut c = state.lock();
    match endpoint(path) {
        None => c.count_error(reason),
        Some(e) => c.count_refused(e, reason),
    }
}

async fn auth(State(state): State<Arc<AppState>>, req: Request, next: Next) -> Response {
    let presented = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "));
    let access = &state.access;
    let is = |t: &str| presented.is_some_and(|p| same_token(p.as_bytes(), t.as_bytes()));
    // A page session reads, whichever token opened it.
    let read_token = access.read_token.as_deref().is_some_and(is);
    let session = presented.is_none()
        && page::session_cookie(req.headers())
            .is_some_and(|id| state.sessions.valid(id, Instant::now()));
    let reader = read_token || session;
    if is(&access.token) || (reader && need(req.uri().path()) == Need::Read) {
        return next.run(req).await;
    }
    let peer = req
        .extensions()
        .get::<ConnectInfo<SocketAddr>>()
        .map(|c| c.0.to_string())
        .unwrap_or_else(|| "unknown".into());
    let path = req.uri().path().to_owned();
    if reader {
        let who = if read_token {
            "the read-only token"
        } else {
            "a page session"
        };
        let method = req.method();
        tracing::warn!(%peer, %path, "refused: {who} cannot {method} {path}");
        count(&state, &path, "forbidden");
        return error(
            StatusCode::FORBIDDEN,
            format!("{who} cannot {method} {path}"),
        );
    }
    let why = if presented.is_some() {
        "wrong bearer token"
    } else {
        "no bearer token"
    };
    tracing::warn!(%peer, %path, "refused: {why}");
    count(&state, &path, "unauthorized");
    let mut resp = error(StatusCode::UNAUTHORIZED, why);
    resp.headers_mut().insert(
        header::WWW_AUTHENTICATE,
        header::HeaderValue::from_static("Bearer"),
    );
    resp
}

/// Reads the whole body before the handler, within the body deadline and
/// the size limit, so a slow client cannot hold a connection with a
/// trickle and no handler waits on the network.
async fn read_body(State(state): State<Arc<AppState>>, req: Request, next: Next) -> Response {
    let (parts, body) = req.into_parts();
    let limited = http_body_util::Limited::new(body, MAX_BODY_BYTES);
    let deadline = state.access.body_timeout;
    let bytes = match tokio::time::timeout(deadline, limited.collect()).await {
        Ok(Ok(collected)) => collected.to_bytes(),
        Ok(Err(e)) if e.is::<http_body_util::LengthLimitError>() => {
            tracing::warn!(path = %parts.uri.path(), "refused: body larger than {MAX_BODY_BYTES} bytes");
            count(&state, parts.uri.path(), "body_too_large");
            return error(
                StatusCode::PAYLOAD_TOO_LARGE,
                format!("body larger than {MAX_BODY_BYTES} bytes"),
            );
        }
        Ok(Err(e)) => {
            tracing::debug!(error = %e, "reading a request body");
            count(&state, parts.uri.path(), "body_read");
            return error(StatusCode::BAD_REQUEST, format!("reading the body: {e}"));
        }
        Err(_) => {
            tracing::warn!(path = %parts.uri.path(), "refused: body not received within {deadline:?}");
            count(&state, parts.uri.path(), "body_timeout");
            let mut resp = error(
                StatusCode::REQUEST_TIMEOUT,
                format!("body not received within {deadline:?}"),
            );
            resp.headers_mut().insert(
                header::CONNECTION,
                header::HeaderValue::from_static("close"),
            );
            return resp;
        }
    };
    next.run(Request::from_parts(parts, Body::from(bytes)))
        .await
}

/// `431` with a reason, below hyper's own ceilings (which answer with an
/// empty body).
async fn head_limits(req: Request, next: Next) -> Response {
    let headers = req.headers();
    let bytes: usize = headers
        .iter()
        .map(|(n, v)| n.as_str().len() + v.len())
        .sum();
    if headers.len() > MAX_HEADERS || bytes > MAX_HEADER_BYTES {
        return error(
            StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
            format!(
                "{} header fields of {bytes} bytes: at most {MAX_HEADERS} fields of {MAX_HEADER_BYTES} bytes",
                headers.len()
            ),
        );
    }
    next.run(req).await
}

async fn not_found(req: Request) -> Response {
    error(
        StatusCode::NOT_FOUND,
        format!("no such endpoint: {}", req.uri().path()),
    )
}

async fn method_not_allowed(req: Request) -> Response {
    error(
        StatusCode::METHOD_NOT_ALLOWED,
        format!("{} is not allowed on {}", req.method(), req.uri().path()),
    )
}

/// Up or stopping, nothing more: no token, so no data.
async fn healthz(State(state): State<Arc<AppState>>) -> Response {
    if state.is_closing() {
        (StatusCode::SERVICE_UNAVAILABLE, "stopping\n").into_response()
    } else {
        (StatusCode::OK, "ok\n").into_response()
    }
}

async fn report(
    State(state): State<Arc<AppState>>,
    uri: Uri,
    body: Result<Json<Report>, JsonRejection>,
) -> Response {
    if let Some(elsewhere) = state.not_here(&uri) {
        return elsewhere;
    }
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
    uri: Uri,
    q: Result<Query<ShareQuery>, axum::extract::rejection::QueryRejection>,
) -> Response {
    if let Some(elsewhere) = state.not_here(&uri) {
        return elsewhere;
    }
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
    // The lead may have changed hands while this poll waited.
    if let Some(elsewhere) = state.not_here(&uri) {
        return elsewhere;
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

async fn status(State(state): State<Arc<AppState>>, uri: Uri) -> Response {
    if let Some(elsewhere) = state.not_here(&uri) {
        return elsewhere;
    }
    let mut st = state.lock().status(Instant::now());
    st.cluster = state.cluster_status();
    Json::<Status>(st).into_response()
}

async fn history(State(state): State<Arc<AppState>>) -> Json<History> {
    Json(state.lock().history())
}

fn peer_of(info: Option<Extension<ConnectInfo<SocketAddr>>>) -> String {
    info.map_or_else(|| "unknown".into(), |c| c.0.0.to_string())
}

/// The reply to a control: the controls in force, or why not.
fn control_reply(peer: &str, what: &str, r: Result<ControlsStatus, ControlError>) -> Response {
    match r {
        Ok(c) => {
            tracing::info!(%peer, "control: {what}");
            Json(c).into_response()
        }
        Err(e) => {
            tracing::warn!(%peer, "control refused: {what}: {e}");
            let status = match e {
                ControlError::NotPersisted => StatusCode::SERVICE_UNAVAILABLE,
                _ => StatusCode::UNPROCESSABLE_ENTITY,
            };
            error(status, e.to_string())
        }
    }
}

/// A control's JSON body, or the refusal (counted apart from report errors).
fn control_body<T>(
    state: &AppState,
    body: Result<Json<T>, JsonRejection>,
) -> Result<T, Box<Response>> {
    body.map(|Json(b)| b).map_err(|rej| {
        state.lock().count_refused("control", "malformed");
        Box::new(error(rej.status(), rej.body_text()))
    })
}

async fn pause(
    State(state): State<Arc<AppState>>,
    info: Option<Extension<ConnectInfo<SocketAddr>>>,
) -> Response {
    let r = state.lock().pause(Instant::now());
    control_reply(&peer_of(info), "pause", r)
}

async fn resume(
    State(state): State<Arc<AppState>>,
    info: Option<Extension<ConnectInfo<SocketAddr>>>,
) -> Response {
    let r = state.lock().resume(Instant::now());
    control_reply(&peer_of(info), "resume", r)
}

async fn pin(
    State(state): State<Arc<AppState>>,
    info: Option<Extension<ConnectInfo<SocketAddr>>>,
    body: Result<Json<PinRequest>, JsonRejection>,
) -> Response {
    let req = match control_body(&state, body) {
        Ok(r) => r,
        Err(resp) => return *resp,
    };
    let r = state.lock().pin(req.target, &req.gateway, Instant::now());
    let what = format!("pin {} to {}", req.target, shown(&req.gateway));
    if r.is_err() {
        state.lock().count_refused("control", "invalid");
    }
    control_reply(&peer_of(info), &what, r)
}

async fn unpin(
    State(state): State<Arc<AppState>>,
    info: Option<Extension<ConnectInfo<SocketAddr>>>,
    body: Result<Json<UnpinRequest>, JsonRejection>,
) -> Response {
    let req = match control_body(&state, body) {
        Ok(r) => r,
        Err(resp) => return *resp,
    };
    let r = state.lock().unpin(req.target, Instant::now());
    if r.is_err() {
        state.lock().count_refused("control", "invalid");
    }
    control_reply(&peer_of(info), &format!("unpin {}", req.target), r)
}

async fn metrics_text(State(state): State<Arc<AppState>>) -> Response {
    let mut text = metrics::render(&state.lock(), Instant::now());
    text.push_str(&state.cluster_metrics());
    if let Some(isns) = state.isns() {
        isns.render(&mut text);
    }
    ([(header::CONTENT_TYPE, metrics::CONTENT_TYPE)], text).into_response()
}
