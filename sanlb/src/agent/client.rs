//! HTTP client of the controller's `/v1/` API (agents and `sanlb status`).

use std::time::Duration;

use reqwest::StatusCode;

use crate::proto::{
    ApiError, DrainReply, DrainRequest, Heartbeat, HeartbeatReply, Report, ReportReply, Share,
    Status,
};

/// Errors talking to the controller.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The URL is not an `http://` URL.
    #[error("controller URL {0:?}: expected http://HOST:PORT")]
    Url(String),
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
        let base = base.trim_end_matches('/');
        if !base.starts_with("http://") || base.len() <= "http://".len() {
            return Err(ClientError::Url(base.to_owned()));
        }
        let http = reqwest::Client::builder()
            .connect_timeout(timeout)
            .build()
            .map_err(|source| ClientError::Transport {
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
}
