//! HTTP(S) client of the controller's `/v1/` API (agents and `sanlb
//! status`). `https://` URLs trust the CA file given, else Debian's CA store
//! (`/etc/ssl/certs`).
//!
//! A client may be given every controller of a cluster: it asks the one
//! that answered last, and moves on to the next when that one cannot be
//! reached or has no leader (`503`). A follower answers `307` with the
//! leader's URL in `Location`; the client follows it only to a controller
//! it was given (its token goes nowhere else), and by hand: reqwest would
//! drop the token on a redirect to another port or host.

use std::{
    path::{Path, PathBuf},
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    },
    time::Duration,
};

use reqwest::StatusCode;

use crate::proto::{
    ApiError, ControlsStatus, DrainReply, DrainRequest, Heartbeat, HeartbeatReply, PinRequest,
    Report, ReportReply, Share, Status, UnpinRequest,
};

/// Errors talking to the controller.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The URL is not an `http://` or `https://` URL.
    #[error("controller URL {0:?}: expected http://HOST:PORT or https://HOST:PORT")]
    Url(String),
    /// The CA file cannot be read or holds no certificate.
    #[error("CA file {path}: {message}")]
    Ca {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        message: String,
    },
    /// A CA file was given for an `http://` URL, which would not use it.
    #[error("controller URL {0:?}: a CA file is for https:// URLs")]
    CaWithoutTls(String),
    /// Controllers given with both `http://` and `https://` URLs.
    #[error("controller URLs {0}: all http:// or all https://, not both")]
    MixedSchemes(String),
    /// The request did not complete (connection refused, timeout…).
    #[error("{url}: request failed")]
    Transport {
        /// The URL.
        url: String,
        /// The cause.
        #[source]
        source: reqwest::Error,
    },
    /// The controller answered with an error.
    #[error("{url}: {status}: {message}")]
    Refused {
        /// The URL.
        url: String,
        /// HTTP status.
        status: StatusCode,
        /// The controller's reason.
        message: String,
    },
}

/// A client of one controller, or of every controller of a cluster.
#[derive(Clone, Debug)]
pub struct Client {
    http: reqwest::Client,
    bases: Arc<[Base]>,
    /// The controller asked first: the last that answered.
    current: Arc<AtomicUsize>,
    token: String,
    timeout: Duration,
}

/// One controller's URL, and its origin to match redirects with.
#[derive(Debug)]
struct Base {
    url: String,
    origin: (String, Option<String>, Option<u16>),
}

fn origin(url: &reqwest::Url) -> (String, Option<String>, Option<u16>) {
    (
        url.scheme().to_owned(),
        url.host_str().map(str::to_ascii_lowercase),
        url.port_or_known_default(),
    )
}

/// How one attempt ended, when it did not succeed.
enum Miss {
    /// Ask another controller: this one is unreachable or has no leader.
    Elsewhere(ClientError),
    /// A follower named the leader.
    Redirect(ClientError, Option<reqwest::Url>),
    /// The answer stands (refused by the leader).
    Final(ClientError),
}

impl Client {
    /// Talks to `base` (`http://host:port`) with `token`; requests other
    /// than long polls give up after `timeout`.
    pub fn new(base: &str, token: &str, timeout: Duration) -> Result<Self, ClientError> {
        Self::with_ca(base, token, timeout, None)
    }

    /// As [`Client::new`], for `http://` or `https://` URLs; an `https://`
    /// controller's certificate must chain to a certificate of `ca` (PEM)
    /// if given, else to one of the system's CA store.
    pub fn with_ca(
        base: &str,
        token: &str,
        timeout: Duration,
        ca: Option<&Path>,
    ) -> Result<Self, ClientError> {
        Self::cluster(&[base.to_owned()], token, timeout, ca)
    }

    /// As [`Client::with_ca`], given every controller of a cluster (at
    /// least one): requests go to the leader among them.
    pub fn cluster(
        bases: &[String],
        token: &str,
        timeout: Duration,
        ca: Option<&Path>,
    ) -> Result<Self, ClientError> {
        let mut parsed = Vec::with_capacity(bases.len());
        for base in bases {
            let base = base.trim_end_matches('/');
            let rest = base
                .strip_prefix("https://")
                .or_else(|| base.strip_prefix("http://"));
            if rest.is_none_or(str::is_empty) {
                return Err(ClientError::Url(base.to_owned()));
            }
            let url = reqwest::Url::parse(base).map_err(|_| ClientError::Url(base.to_owned()))?;
            parsed.push(Base {
                url: base.to_owned(),
                origin: origin(&url),
            });
        }
        let Some(first) = parsed.first() else {
            return Err(ClientError::Url(String::new()));
        };
        let https = first.url.starts_with("https://");
        if parsed
            .iter()
            .any(|b| b.url.starts_with("https://") != https)
        {
            let all: Vec<&str> = parsed.iter().map(|b| b.url.as_str()).collect();
            return Err(ClientError::MixedSchemes(all.join(",")));
        }
        let mut builder = reqwest::Client::builder()
            .connect_timeout(timeout)
            // Below the controller's idle limit (its header timeout, 10 s by
            // default), so a request never goes out on a connection the
            // controller is closing.
            .pool_idle_timeout(Duration::from_secs(5))
            // A follower's redirect is followed by hand (see the module).
            .redirect(reqwest::redirect::Policy::none())
            .https_only(https);
        if let Some(path) = ca {
            if !https {
                return Err(ClientError::CaWithoutTls(first.url.clone()));
            }
            let ca_err = |message: String| ClientError::Ca {
                path: path.to_owned(),
                message,
            };
            let pem = std::fs::read(path).map_err(|e| ca_err(e.to_string()))?;
            let certs = reqwest::Certificate::from_pem_bundle(&pem)
                .map_err(|e| ca_err(crate::error_chain(&e)))?;
            if certs.is_empty() {
                return Err(ca_err("no PEM certificate in it".into()));
            }
            builder = builder.tls_built_in_root_certs(false);
            for c in certs {
                builder = builder.add_root_certificate(c);
            }
        }
        let http = builder.build().map_err(|source| ClientError::Transport {
            url: first.url.clone(),
            source,
        })?;
        Ok(Self {
            http,
            bases: parsed.into(),
            current: Arc::new(AtomicUsize::new(0)),
            token: token.to_owned(),
            timeout,
        })
    }

    /// The controller asked first: the last that answered.
    pub fn current(&self) -> &str {
        &self.bases[self.current.load(Ordering::Relaxed) % self.bases.len()].url
    }

    /// Sends the request `build` makes for a URL, to the controller that
    /// answered last, then to the others in turn (each at most once, plus
    /// the redirects to the leader among them).
    async fn send<T: serde::de::DeserializeOwned>(
        &self,
        path: &str,
        build: impl Fn(&str) -> reqwest::RequestBuilder,
    ) -> Result<T, ClientError> {
        let n = self.bases.len();
        let mut at = self.current.load(Ordering::Relaxed) % n;
        let (mut tried, mut hops) = (0, 0);
        loop {
            let url = format!("{}{path}", self.bases[at].url);
            let miss = match self.once(build(&url), url).await {
                Ok(t) => {
                    self.current.store(at, Ordering::Relaxed);
                    return Ok(t);
                }
                Err(miss) => miss,
            };
            let error = match miss {
                Miss::Final(e) => return Err(e),
                Miss::Redirect(e, Some(to)) if hops < n => {
                    let to = origin(&to);
                    match self.bases.iter().position(|b| b.origin == to) {
                        Some(i) => {
                            hops += 1;
                            at = i;
                            continue;
                        }
                        None => e,
                    }
                }
                Miss::Redirect(e, _) | Miss::Elsewhere(e) => e,
            };
            tried += 1;
            if tried >= n {
                return Err(error);
            }
            at = (at + 1) % n;
        }
    }

    async fn once<T: serde::de::DeserializeOwned>(
        &self,
        req: reqwest::RequestBuilder,
        url: String,
    ) -> Result<T, Miss> {
        let transport = |source| ClientError::Transport {
            url: url.clone(),
            source,
        };
        let resp = req
            .bearer_auth(&self.token)
            .send()
            .await
            .map_err(|e| Miss::Elsewhere(transport(e)))?;
        let status = resp.status();
        if !status.is_success() {
            let location = resp
                .headers()
                .get(reqwest::header::LOCATION)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| reqwest::Url::parse(v).ok());
            let text = resp.text().await.unwrap_or_default();
            let message = serde_json::from_str::<ApiError>(&text).map_or(text, |e| e.error);
            let error = ClientError::Refused {
                url,
                status,
                message,
            };
            return Err(match status {
                StatusCode::TEMPORARY_REDIRECT | StatusCode::PERMANENT_REDIRECT => {
                    Miss::Redirect(error, location)
                }
                StatusCode::SERVICE_UNAVAILABLE => Miss::Elsewhere(error),
                _ => Miss::Final(error),
            });
        }
        resp.json().await.map_err(|e| Miss::Elsewhere(transport(e)))
    }

    /// `POST /v1/report`.
    pub async fn report(&self, r: &Report) -> Result<ReportReply, ClientError> {
        self.send("/v1/report", |url| {
            self.http.post(url).json(r).timeout(self.timeout)
        })
        .await
    }

    /// `GET /v1/share`: returns once the generation exceeds `after`, or
    /// after `wait`.
    pub async fn share(
        &self,
        gateway: &str,
        boot_id: &str,
        after: u64,
        wait: Duration,
    ) -> Result<Share, ClientError> {
        let wait_ms = wait.as_millis().to_string();
        let after = after.to_string();
        self.send("/v1/share", |url| {
            self.http
                .get(url)
                .query(&[
                    ("gateway", gateway),
                    ("boot_id", boot_id),
                    ("after", &after),
                    ("wait_ms", &wait_ms),
                ])
                .timeout(wait + self.timeout)
        })
        .await
    }

    /// `POST /v1/heartbeat`, given up after `timeout` (shorter than other
    /// requests: a heartbeat that is late is worth nothing).
    pub async fn heartbeat(
        &self,
        hb: &Heartbeat,
        timeout: Duration,
    ) -> Result<HeartbeatReply, ClientError> {
        self.send("/v1/heartbeat", |url| {
            self.http.post(url).json(hb).timeout(timeout)
        })
        .await
    }

    /// `POST /v1/drain`.
    pub async fn drain(&self, req: &DrainRequest) -> Result<DrainReply, ClientError> {
        self.send("/v1/drain", |url| {
            self.http.post(url).json(req).timeout(self.timeout)
        })
        .await
    }

    /// `POST /v1/undrain`.
    pub async fn undrain(&self, req: &DrainRequest) -> Result<DrainReply, ClientError> {
        self.send("/v1/undrain", |url| {
            self.http.post(url).json(req).timeout(self.timeout)
        })
        .await
    }

    /// `GET /v1/status`.
    pub async fn status(&self) -> Result<Status, ClientError> {
        self.send("/v1/status", |url| self.http.get(url).timeout(self.timeout))
            .await
    }

    /// `POST /v1/pause` (`resume: false`) or `/v1/resume`.
    pub async fn pause(&self, resume: bool) -> Result<ControlsStatus, ClientError> {
        let path = if resume { "/v1/resume" } else { "/v1/pause" };
        self.send(path, |url| self.http.post(url).timeout(self.timeout))
            .await
    }

    /// `POST /v1/pin`.
    pub async fn pin(&self, req: &PinRequest) -> Result<ControlsStatus, ClientError> {
        self.send("/v1/pin", |url| {
            self.http.post(url).json(req).timeout(self.timeout)
        })
        .await
    }

    /// `POST /v1/unpin`.
    pub async fn unpin(&self, req: &UnpinRequest) -> Result<ControlsStatus, ClientError> {
        self.send("/v1/unpin", |url| {
            self.http.post(url).json(req).timeout(self.timeout)
        })
        .await
    }
}
