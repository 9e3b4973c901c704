//! HTTP(S) client of the controller's `/v1/` API (agents and `sanlb
//! status`). `https://` URLs trust the CA file given, else Debian's CA store
//! (`/etc/ssl/certs`).

use std::{
    path::{Path, PathBuf},
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

/// A client of one controller.
#[derive(Clone, Debug)]
pub struct Client {
    http: reqwest::Client,
    base: String,
    token: String,
    timeout: Duration,
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
        let base = base.trim_end_matches('/');
        let rest = base
            .strip_prefix("https://")
            .or_else(|| base.strip_prefix("http://"));
        if rest.is_none_or(str::is_empty) {
            return Err(ClientError::Url(base.to_owned()));
        }
        let https = base.starts_with("https://");
        let mut builder = reqwest::Client::builder()
            .connect_timeout(timeout)
            // Below the controller's idle limit (its header timeout, 10 s by
            // default), so a request never goes out on a connection the
            // controller is closing.
            .pool_idle_timeout(Duration::from_secs(5))
            .https_only(https);
        if let Some(path) = ca {
            if !https {
                return Err(ClientError::CaWithoutTls(base.to_owned()));
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
            url: base.to_owned(),
            source,
        })?;
        Ok(Self {
            http,
            base: base.to_owned(),
            token: token.to_owned(),
            timeout,
        })
    }

    async fn send<T: serde::de::DeserializeOwned>(
        &self,
        req: reqwest::RequestBuilder,
        url: String,
    ) -> Result<T, ClientError> {
        let transport = |source| ClientError::Transport {
            url: url.clone(),
            source,
        };
        let resp = req
            .bearer_auth(&self.token)
            .send()
            .await
            .map_err(transport)?;
        let status = resp.status();
        if !status.is_success() {
            let text = resp.text().await.unwrap_or_default();
            let message = serde_json::from_str::<ApiError>(&text).map_or(text, |e| e.error);
            return Err(ClientError::Refused {
                url,
                status,
                message,
            });
        }
        resp.json().await.map_err(transport)
    }

    /// `POST /v1/report`.
    pub async fn report(&self, r: &Report) -> Result<ReportReply, ClientError> {
        let url = format!("{}/v1/report", self.base);
        self.send(self.http.post(&url).json(r).timeout(self.timeout), url)
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
        let url = format!("{}/v1/share", self.base);
        let wait_ms = wait.as_millis().to_string();
        let req = self
            .http
            .get(&url)
            .query(&[
                ("gateway", gateway),
                ("boot_id", boot_id),
                ("after", &after.to_string()),
                ("wait_ms", &wait_ms),
            ])
            .timeout(wait + self.timeout);
        self.send(req, url).await
    }

    /// `POST /v1/heartbeat`, given up after `timeout` (shorter than other
    /// requests: a heartbeat that is late is worth nothing).
    pub async fn heartbeat(
        &self,
        hb: &Heartbeat,
        timeout: Duration,
    ) -> Result<HeartbeatReply, ClientError> {
        let url = format!("{}/v1/heartbeat", self.base);
        self.send(self.http.post(&url).json(hb).timeout(timeout), url)
            .await
    }

    /// `POST /v1/drain`.
    pub async fn drain(&self, req: &DrainRequest) -> Result<DrainReply, ClientError> {
        let url = format!("{}/v1/drain", self.base);
        self.send(self.http.post(&url).json(req).timeout(self.timeout), url)
            .await
    }

    /// `POST /v1/undrain`.
    pub async fn undrain(&self, req: &DrainRequest) -> Result<DrainReply, ClientError> {
        let url = format!("{}/v1/undrain", self.base);
        self.send(self.http.post(&url).json(req).timeout(self.timeout), url)
            .await
    }

    /// `GET /v1/status`.
    pub async fn status(&self) -> Result<Status, ClientError> {
        let url = format!("{}/v1/status", self.base);
        self.send(self.http.get(&url).timeout(self.timeout), url)
            .await
    }

    /// `POST /v1/pause` (`resume: false`) or `/v1/resume`.
    pub async fn pause(&self, resume: bool) -> Result<ControlsStatus, ClientError> {
        let path = if resume { "resume" } else { "pause" };
        let url = format!("{}/v1/{path}", self.base);
        self.send(self.http.post(&url).timeout(self.timeout), url)
            .await
    }

    /// `POST /v1/pin`.
    pub async fn pin(&self, req: &PinRequest) -> Result<ControlsStatus, ClientError> {
        let url = format!("{}/v1/pin", self.base);
        self.send(self.http.post(&url).json(req).timeout(self.timeout), url)
            .await
    }

    /// `POST /v1/unpin`.
    pub async fn unpin(&self, req: &UnpinRequest) -> Result<ControlsStatus, ClientError> {
        let url = format!("{}/v1/unpin", self.base);
        self.send(self.http.post(&url).json(req).timeout(self.timeout), url)
            .await
    }
}
