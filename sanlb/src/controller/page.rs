//! The status page at `/`: plain HTML, CSS and JavaScript compiled into the
//! binary (`page/`), no framework and nothing fetched from elsewhere. The
//! page polls `GET /v1/status` and `GET /v1/history` and draws the
//! gateways' load with SVG.
//!
//! Who sees it: a request with a bearer token (the read-only one or the
//! agents'), or a browser session. A browser logs in with a form that
//! posts the token to `POST /login`; the controller answers with a random
//! session id in an `HttpOnly`, `SameSite=Strict` cookie (`Secure` over
//! HTTPS), so the token never appears in a URL and scripts cannot read the
//! session. A session may only read (the page, `/v1/status`,
//! `/v1/history`, `/metrics`), whichever token opened it; sessions live in
//! memory (a restart logs everyone out), at most [`MAX_SESSIONS`], for
//! [`SESSION_TTL`].

use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use axum::{
    Form, Router,
    extract::{DefaultBodyLimit, Path, State},
    http::{HeaderMap, HeaderValue, StatusCode, header},
    response::{IntoResponse, Response},
    routing::{get, post},
};
use serde::Deserialize;

use super::http::AppState;

/// Name of the session cookie.
pub const COOKIE: &str = "sanlb_session";
/// How long a session lasts.
pub const SESSION_TTL: Duration = Duration::from_secs(12 * 3600);
/// Most sessions at once; the oldest goes first.
pub const MAX_SESSIONS: usize = 256;

const INDEX: &str = include_str!("page/index.html");
const LOGIN: &str = include_str!("page/login.html");
const APP_JS: &str = include_str!("page/app.js");
const STYLE: &str = include_str!("page/style.css");

/// Everything the page loads comes from here; no inline script.
const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'";

/// The browser sessions.
#[derive(Debug, Default)]
pub struct Sessions {
    map: Mutex<HashMap<String, Instant>>,
}

impl Sessions {
    /// Opens a session at `now`; returns its id.
    pub fn open(&self, now: Instant) -> String {
        let id = format!("{:032x}", rand::random::<u128>());
        let mut m = self.map.lock().unwrap_or_else(|p| p.into_inner());
        m.retain(|_, start| now.saturating_duration_since(*start) < SESSION_TTL);
        while m.len() >= MAX_SESSIONS {
            let Some(oldest) = m.iter().min_by_key(|(_, s)| **s).map(|(k, _)| k.clone()) else {
                break;
            };
            m.remove(&oldest);
        }
        m.insert(id.clone(), now);
        id
    }

    /// Whether `id` is an open session at `now`.
    pub fn valid(&self, id: &str, now: Instant) -> bool {
        let m = self.map.lock().unwrap_or_else(|p| p.into_inner());
        m.get(id)
            .is_some_and(|start| now.saturating_duration_since(*start) < SESSION_TTL)
    }

    /// Ends a session.
    pub fn close(&self, id: &str) {
        self.map
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(id);
    }
}

/// The session id a request's cookies carry, if any.
pub fn session_cookie(headers: &HeaderMap) -> Option<&str> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|kv| kv.trim().split_once('='))
        .find(|(k, _)| *k == COOKIE)
        .map(|(_, v)| v)
}

/// The page's routes: `/`, `/login`, `/logout`, `/ui/FILE`.
pub(super) fn routes() -> Router<Arc<AppState>> {
    Router::new()
        .route("/", get(index))
        .route("/login", post(login))
        .route("/logout", post(logout))
        .route("/ui/{file}", get(asset))
        .layer(DefaultBodyLimit::max(4096))
}

fn page(status: StatusCode, body: String) -> Response {
    (
        status,
        [
            (header::CONTENT_TYPE, "text/html; charset=utf-8"),
            (header::CACHE_CONTROL, "no-store"),
            (header::CONTENT_SECURITY_POLICY, CSP),
            (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
            (header::REFERRER_POLICY, "no-referrer"),
        ],
        body,
    )
        .into_response()
}

fn login_page(status: StatusCode, message: &str) -> Response {
    let escaped = message
        .replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;");
    page(status, LOGIN.replace("<!--message-->", &escaped))
}

/// The page for a reader, else the login form (401: no data without a
/// token; not counted as a refusal, it is how one starts).
async fn index(State(state): State<Arc<AppState>>, headers: HeaderMap) -> Response {
    if state.may_read(&headers) {
        page(StatusCode::OK, INDEX.to_owned())
    } else {
        login_page(StatusCode::UNAUTHORIZED, "")
    }
}

#[derive(Deserialize)]
struct Login {
    token: String,
}

async fn login(
    State(state): State<Arc<AppState>>,
    form: Result<Form<Login>, axum::extract::rejection::FormRejection>,
) -> Response {
    let Ok(Form(form)) = form else {
        state.lock().count_refused("login", "malformed");
        return login_page(StatusCode::BAD_REQUEST, "Send the token from the form.");
    };
    if !state.is_token(form.token.trim()) {
        tracing::warn!("status page: login refused (wrong token)");
        state.lock().count_refused("login", "unauthorized");
        return login_page(StatusCode::UNAUTHORIZED, "Wrong token.");
    }
    let id = state.sessions().open(Instant::now());
    let secure = if state.secure_cookies() {
        "; Secure"
    } else {
        ""
    };
    let cookie = format!(
        "{COOKIE}={id}; HttpOnly; SameSite=Strict; Path=/; Max-Age={}{secure}",
        SESSION_TTL.as_secs()
    );
    tracing::info!("status page: session opened");
    let mut resp = (StatusCode::SEE_OTHER, [(header::LOCATION, "/")]).into_response();
    if let Ok(v) = HeaderValue::from_str(&cookie) {
        resp.headers_mut().insert(header::SET_COOKIE, v);
    }
    resp
}

async fn logout(State(state): State<Arc<AppState>>, headers: HeaderMap) -> Response {
    if let Some(id) = session_cookie(&headers) {
        state.sessions().close(id);
    }
    let cookie = format!("{COOKIE}=; HttpOnly; SameSite=Strict; Path=/; Max-Age=0");
    (
        StatusCode::SEE_OTHER,
        [
            (header::LOCATION, "/".to_owned()),
            (header::SET_COOKIE, cookie),
        ],
    )
        .into_response()
}

/// The script and the style sheet: no data in them, so no token needed
/// (the login form uses the style sheet).
async fn asset(Path(file): Path<String>) -> Response {
    let (body, kind) = match file.as_str() {
        "app.js" => (APP_JS, "text/javascript; charset=utf-8"),
        "style.css" => (STYLE, "text/css; charset=utf-8"),
        _ => {
            return (
                StatusCode::NOT_FOUND,
                axum::Json(crate::proto::ApiError {
                    error: format!("no such file: /ui/{}", crate::proto::shown(&file)),
                }),
            )
                .into_response();
        }
    };
    (
        [
            (header::CONTENT_TYPE, kind),
            (header::CACHE_CONTROL, "no-cache"),
            (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
        ],
        body,
    )
        .into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sessions_expire_and_are_bounded() {
        let s = Sessions::default();
        let t0 = Instant::now();
        let a = s.open(t0);
        assert_eq!(a.len(), 32);
        assert!(s.valid(&a, t0 + SESSION_TTL - Duration::from_secs(1)));
        assert!(!s.valid(&a, t0 + SESSION_TTL));
        assert!(!s.valid("nope", t0));
        for i in 0..MAX_SESSIONS {
            s.open(t0 + Duration::from_millis(i as u64 + 1));
        }
        assert!(!s.valid(&a, t0), "the oldest went first");
        assert_eq!(s.map.lock().unwrap().len(), MAX_SESSIONS);
        let b = s.open(t0 + Duration::from_secs(1));
        s.close(&b);
        assert!(!s.valid(&b, t0 + Duration::from_secs(1)));
    }

    #[test]
    fn the_cookie_is_found_among_others() {
        let mut h = HeaderMap::new();
        h.append(
            header::COOKIE,
            HeaderValue::from_static("a=1; sanlb_session=abc"),
        );
        assert_eq!(session_cookie(&h), Some("abc"));
        let mut h = HeaderMap::new();
        h.append(
            header::COOKIE,
            HeaderValue::from_static("xsanlb_session=abc"),
        );
        assert_eq!(session_cookie(&h), None);
    }
}
