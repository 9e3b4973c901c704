//! The HTTP handlers of `/v1/heartbeat`, `/v1/drain` and `/v1/undrain`
//! (routed in `http.rs`, behind its bearer token).

use std::{sync::Arc, time::Instant};

use axum::{
    Json,
    extract::{State, rejection::JsonRejection},
    http::{StatusCode, Uri},
    response::{IntoResponse, Response},
};

use super::DrainError;
use crate::{
    controller::{IngestError, http::AppState},
    proto::{ApiError, DrainReply, DrainRequest, Heartbeat, HeartbeatReply, shown},
};

fn error(status: StatusCode, message: impl Into<String>) -> Response {
    (
        status,
        Json(ApiError {
            error: message.into(),
        }),
    )
        .into_response()
}

/// A body that did not parse: its status and reason, counted.
fn refused(state: &AppState, what: &str, rej: &JsonRejection) -> Response {
    let status = rej.status();
    let reason = match status {
        StatusCode::PAYLOAD_TOO_LARGE => "body_too_large",
        StatusCode::UNSUPPORTED_MEDIA_TYPE => "content_type",
        StatusCode::UNPROCESSABLE_ENTITY => "invalid_field",
        _ => "malformed_json",
    };
    let text = rej.body_text();
    tracing::warn!(reason, "{what} refused: {text}");
    state.lock().count_error(reason);
    error(status, text)
}

/// `POST /v1/heartbeat`.
pub(in crate::controller) async fn heartbeat(
    State(state): State<Arc<AppState>>,
    uri: Uri,
    body: Result<Json<Heartbeat>, JsonRejection>,
) -> Response {
    // In a cluster only the leader answers: a redirect or 503 elsewhere.
    if let Some(elsewhere) = state.not_here(&uri) {
        return elsewhere;
    }
    let hb = match body {
        Ok(Json(hb)) => hb,
        Err(rej) => return refused(&state, "heartbeat", &rej),
    };
    let mut c = state.lock();
    match c.heartbeat(&hb, Instant::now()) {
        Ok(reply) => Json::<HeartbeatReply>(reply).into_response(),
        Err(e) => {
            // A contender heartbeats ten times a second: warn at debug.
            tracing::debug!(gateway = %shown(&hb.gateway), reason = e.reason(), "heartbeat refused: {e}");
            c.count_error(e.reason());
            let status = match e {
                IngestError::Conflict(_) => StatusCode::CONFLICT,
                _ => StatusCode::UNPROCESSABLE_ENTITY,
            };
            error(status, e.to_string())
        }
    }
}

fn drain_answer(
    c: &mut crate::controller::Controller,
    r: Result<DrainReply, DrainError>,
) -> Response {
    match r {
        Ok(reply) => Json(reply).into_response(),
        Err(e) => {
            tracing::warn!(reason = e.reason(), "drain refused: {e}");
            c.count_error(e.reason());
            let status = match e {
                DrainError::NotFound(_) => StatusCode::NOT_FOUND,
                DrainError::NotOwner { .. } => StatusCode::CONFLICT,
                DrainError::Invalid(_) => StatusCode::UNPROCESSABLE_ENTITY,
            };
            error(status, e.to_string())
        }
    }
}

/// `POST /v1/drain`.
pub(in crate::controller) async fn drain(
    State(state): State<Arc<AppState>>,
    uri: Uri,
    body: Result<Json<DrainRequest>, JsonRejection>,
) -> Response {
    drain_or_undrain(&state, &uri, body, true)
}

/// `POST /v1/undrain`.
pub(in crate::controller) async fn undrain(
    State(state): State<Arc<AppState>>,
    uri: Uri,
    body: Result<Json<DrainRequest>, JsonRejection>,
) -> Response {
    drain_or_undrain(&state, &uri, body, false)
}

fn drain_or_undrain(
    state: &AppState,
    uri: &Uri,
    body: Result<Json<DrainRequest>, JsonRejection>,
    drain: bool,
) -> Response {
    // In a cluster only the leader answers: a redirect or 503 elsewhere.
    if let Some(elsewhere) = state.not_here(uri) {
        return elsewhere;
    }
    let what = if drain { "drain" } else { "undrain" };
    let req = match body {
        Ok(Json(r)) => r,
        Err(rej) => return refused(state, what, &rej),
    };
    let mut c = state.lock();
    let r = if drain {
        c.drain(&req, Instant::now())
    } else {
        c.undrain(&req, Instant::now())
    };
    drain_answer(&mut c, r)
}
