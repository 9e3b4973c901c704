//! Runs a [`Controller`]: the HTTP API on a listener, and its clock
//! (`timers.rs`).
//!
//! Serving is hyper's HTTP/1 connection builder on an accept loop of our
//! own, which is what `axum::serve` does inside, because `axum::serve`
//! cannot be told what a server facing a network needs ([`Limits`]): a
//! header-read timeout (hyper has one, unused without a timer), a deadline
//! for request bodies, a connection cap below the file-descriptor limit, and
//! TLS (rustls) on the same loop. The long poll `GET /v1/share` holds a
//! request up to [`crate::proto::MAX_WAIT_MS`], so no limit bounds the whole
//! request.
//!
//! Logging never takes the server down: a task that ends while the server
//! is not stopping is reported by [`Server::failed`], so the process can
//! save what it can and exit non-zero for its service manager to restart
//! it, instead of answering requests with its clock stopped.

use std::{
    convert::Infallible,
    fmt,
    future::Future,
    io,
    net::SocketAddr,
    path::{Path, PathBuf},
    sync::Arc,
    time::Duration,
};

use axum::extract::ConnectInfo;
use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::{
    io::{AsyncRead, AsyncWrite, AsyncWriteExt as _},
    net::{TcpListener, TcpStream},
    sync::Semaphore,
    task::{JoinError, JoinHandle},
};
use tower::ServiceExt as _;

use super::{
    Controller,
    http::{self, AppState},
    isns::{IsnsPublisher, IsnsSettings},
    leadership::{self, Cluster, ClusterView},
    persist, timers,
};
use crate::cluster::{ClusterError, Elector, StateStore};

/// How much the server accepts before refusing (see docs/operation.md).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Limits {
    /// Connections served at once; more wait in the kernel's accept queue.
    /// Lowered at start to leave file descriptors free under the process's
    /// `RLIMIT_NOFILE`.
    pub max_connections: usize,
    /// Longest wait for a request's headers, counted from the connection's
    /// start or the end of its previous response: it is also the longest a
    /// kept-alive connection stays idle, and the TLS handshake's deadline.
    pub header_timeout: Duration,
    /// Longest wait for a request's whole body once its headers arrived.
    pub body_timeout: Duration,
}

/// [`Limits::max_connections`] by default.
pub const DEFAULT_MAX_CONNECTIONS: usize = 1024;
/// [`Limits::header_timeout`] by default.
pub const DEFAULT_HEADER_TIMEOUT: Duration = Duration::from_secs(10);
/// [`Limits::body_timeout`] by default.
pub const DEFAULT_BODY_TIMEOUT: Duration = Duration::from_secs(30);
/// File descriptors kept free for everything but connections (the state
/// file and its directory, the listener, the runtime, logs).
const FD_RESERVE: usize = 64;
/// hyper's own ceilings on a request's head, above the ones the router
/// enforces with a JSON reply ([`http::MAX_HEADERS`],
/// [`http::MAX_HEADER_BYTES`]): past these hyper answers `431` itself,
/// with an empty body.
const HYPER_MAX_HEADERS: usize = 1000;
const HYPER_MAX_BUF: usize = 256 * 1024;

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_connections: DEFAULT_MAX_CONNECTIONS,
            header_timeout: DEFAULT_HEADER_TIMEOUT,
            body_timeout: DEFAULT_BODY_TIMEOUT,
        }
    }
}

/// What a server does beyond serving a controller to one token: see
/// [`Server::start_with`].
#[derive(Clone, Debug, Default)]
pub struct Options {
    /// A second token that may read (`/v1/status`, `/metrics`) and nothing
    /// else: for Prometheus and `sanlb status`.
    pub read_token: Option<String>,
    /// Serve HTTPS with this configuration ([`tls_config`]); plain HTTP
    /// without.
    pub tls: Option<Arc<rustls::ServerConfig>>,
    /// Timeouts and the connection cap.
    pub limits: Limits,
    /// Run as one of a cluster of controllers, the state in etcd
    /// (`leadership.rs`); `None`: alone, with the controller's own store.
    pub cluster: Option<Cluster>,
    /// Publish the map to an iSNS server ([`IsnsSettings`]).
    pub isns: Option<IsnsSettings>,
}

/// Why a server could not start.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    /// The listener has no address.
    #[error("the listener")]
    Listener(#[source] io::Error),
    /// A limit is out of range.
    #[error("{setting} {message}")]
    Limit {
        /// The setting, as the config file spells it.
        setting: &'static str,
        /// What is wrong.
        message: &'static str,
    },
    /// The certificate or key file cannot be read or parsed.
    #[error("{path}: {message}")]
    Pem {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        message: String,
    },
    /// The cluster could not be joined (a setting out of range).
    #[error("joining the cluster")]
    Cluster(#[source] ClusterError),
    /// The controller could not be made a follower.
    #[error("standing by")]
    StandBy(#[source] super::ControllerError),
    /// The iSNS settings are unusable.
    #[error("isns")]
    Isns(#[source] crate::isns::IsnsError),
    /// rustls refused the certificate and key together.
    #[error("certificate {cert} with key {key}")]
    Tls {
        /// The certificate file.
        cert: PathBuf,
        /// The key file.
        key: PathBuf,
        /// rustls's reason.
        #[source]
        source: rustls::Error,
    },
}

/// The rustls configuration of a certificate chain and its private key,
/// both PEM files (the key PKCS#8, PKCS#1 or SEC1). HTTP/1.1 only.
pub fn tls_config(cert: &Path, key: &Path) -> Result<Arc<rustls::ServerConfig>, ServeError> {
    use rustls::pki_types::{CertificateDer, PrivateKeyDer, pem::PemObject as _};
    let pem = |path: &Path, message: String| ServeError::Pem {
        path: path.to_owned(),
        message,
    };
    let chain = CertificateDer::pem_file_iter(cert)
        .map_err(|e| pem(cert, e.to_string()))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| pem(cert, e.to_string()))?;
    if chain.is_empty() {
        return Err(pem(cert, "no certificate in it".into()));
    }
    let private = PrivateKeyDer::from_pem_file(key).map_err(|e| pem(key, e.to_string()))?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut cfg = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .and_then(|b| b.with_no_client_auth().with_single_cert(chain, private))
        .map_err(|source| ServeError::Tls {
            cert: cert.to_owned(),
            key: key.to_owned(),
            source,
        })?;
    cfg.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(cfg))
}

/// Which of a server's tasks ended while it was not stopping, and how.
#[derive(Debug)]
pub struct TaskFailure {
    /// `serving`, `timers`, and in a cluster `leadership` or `persisting`.
    pub task: &'static str,
    /// `panicked: …`, `returned`, or the task's error.
    pub how: String,
}

impl fmt::Display for TaskFailure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "the {} task ended unexpectedly ({})",
            self.task, self.how
        )
    }
}

/// A task's end: `Err` with why it could not go on.
type TaskResult = Result<(), String>;

/// Named tasks that must run until the server stops.
#[derive(Debug, Default)]
struct Tasks(Vec<(&'static str, Option<JoinHandle<TaskResult>>)>);

impl Tasks {
    fn spawn(&mut self, name: &'static str, f: impl Future<Output = ()> + Send + 'static) {
        self.spawn_fallible(name, async move {
            f.await;
            Ok(())
        });
    }

    fn spawn_fallible(
        &mut self,
        name: &'static str,
        f: impl Future<Output = TaskResult> + Send + 'static,
    ) {
        self.0.push((name, Some(tokio::spawn(f))));
    }

    /// The first task to end; pending while all run.
    async fn first_ended(&mut self) -> TaskFailure {
        let waits = self.0.iter_mut().map(|(name, slot)| {
            Box::pin(async move {
                let Some(handle) = slot.as_mut() else {
                    return std::future::pending().await;
                };
                let r = handle.await;
                *slot = None;
                TaskFailure {
                    task: name,
                    how: describe(r),
                }
            })
        });
        futures_util::future::select_all(waits).await.0
    }

    /// Waits for every task to end, aborting those still running after
    /// `grace`.
    async fn stop(&mut self, grace: Duration) {
        for (name, slot) in &mut self.0 {
            let Some(mut handle) = slot.take() else {
                continue;
            };
            if tokio::time::timeout(grace, &mut handle).await.is_err() {
                tracing::warn!(task = *name, "still running after {grace:?}: aborted");
                handle.abort();
            }
        }
    }
}

fn describe(r: Result<TaskResult, JoinError>) -> String {
    match r {
        Ok(Ok(())) => "returned".into(),
        Ok(Err(why)) => why,
        Err(e) if e.is_panic() => {
            let p = e.into_panic();
            let what = p
                .downcast_ref::<&str>()
                .map(|s| (*s).to_owned())
                .or_else(|| p.downcast_ref::<String>().cloned())
                .unwrap_or_default();
            format!("panicked: {what}")
        }
        Err(_) => "cancelled".into(),
    }
}

/// A running controller.
#[derive(Debug)]
pub struct Server {
    addr: SocketAddr,
    state: Arc<AppState>,
    limits: Limits,
    tasks: Tasks,
    /// In a cluster: the campaign (resigned on stop) and the state in etcd.
    cluster: Option<(Elector, StateStore)>,
}

impl Server {
    /// Serves `controller` on `listener` to clients presenting `token`,
    /// over plain HTTP with the default [`Limits`].
    pub fn start(
        controller: Controller,
        token: String,
        listener: TcpListener,
    ) -> Result<Self, ServeError> {
        Self::start_with(controller, token, listener, Options::default())
    }

    /// Serves `controller` on `listener` to agents presenting `token`, with
    /// `options` (a read-only token, TLS, limits).
    pub fn start_with(
        mut controller: Controller,
        token: String,
        listener: TcpListener,
        options: Options,
    ) -> Result<Self, ServeError> {
        let addr = listener.local_addr().map_err(ServeError::Listener)?;
        let mut limits = options.limits;
        if limits.max_connections == 0 {
            return Err(ServeError::Limit {
                setting: "max_connections",
                message: "must be ≥ 1",
            });
        }
        if limits.header_timeout.is_zero() || limits.body_timeout.is_zero() {
            return Err(ServeError::Limit {
                setting: "header_timeout and body_timeout",
                message: "must be > 0",
            });
        }
        if let Some(fds) = fd_limit() {
            let room = fds.saturating_sub(FD_RESERVE).max(1);
            if room < limits.max_connections {
                tracing::warn!(
                    max_connections = limits.max_connections,
                    nofile = fds,
                    "the file-descriptor limit leaves room for {room} connections: serving at most {room}"
                );
                limits.max_connections = room;
            }
        }
        let access = http::Access {
            token,
            read_token: options.read_token,
            body_timeout: limits.body_timeout,
            secure_cookies: options.tls.is_some(),
        };
        let isns = options
            .isns
            .map(IsnsPublisher::new)
            .transpose()
            .map_err(ServeError::Isns)?;
        let mut cluster = None;
        let mut view = None;
        if let Some(c) = &options.cluster {
            let wake = Arc::new(tokio::sync::Notify::new());
            controller
                .stand_by(wake.clone())
                .map_err(ServeError::StandBy)?;
            let elector =
                Elector::start(&c.etcd, c.elector.clone()).map_err(ServeError::Cluster)?;
            view = Some(ClusterView::new(
                elector.subscribe(),
                c.elector.advertise.clone(),
                &c.etcd,
            ));
            cluster = Some((elector, StateStore::new(&c.etcd), wake));
        }
        let state = AppState::in_cluster(controller, access, view);
        let mut tasks = Tasks::default();
        if let Some(isns) = isns {
            state.set_isns(isns.stats());
            tasks.spawn("isns", isns.run(state.clone()));
        }
        let cluster = cluster.map(|(elector, store, wake)| {
            tasks.spawn_fallible(
                "leadership",
                leadership::run(state.clone(), elector.subscribe(), store.clone()),
            );
            tasks.spawn(
                "persisting",
                persist::writer(state.clone(), store.clone(), wake),
            );
            (elector, store)
        });
        tasks.spawn(
            "serving",
            accept_loop(listener, state.clone(), options.tls.clone(), limits.clone()),
        );
        tasks.spawn("timers", timers::run(state.clone()));
        tracing::info!(
            %addr,
            tls = options.tls.is_some(),
            max_connections = limits.max_connections,
            "controller listening"
        );
        Ok(Self {
            addr,
            state,
            limits,
            tasks,
            cluster,
        })
    }

    /// The address it listens on.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The limits in force (the connection cap possibly lowered to fit the
    /// file-descriptor limit).
    pub fn limits(&self) -> &Limits {
        &self.limits
    }

    /// The shared state (for tests and the binary).
    pub fn state(&self) -> &Arc<AppState> {
        &self.state
    }

    /// Resolves when serving or the timers ended although the server was
    /// not stopped: the process should [`Server::stop`] (which saves what it
    /// can) and exit non-zero. Pending otherwise; cancel-safe.
    pub async fn failed(&mut self) -> TaskFailure {
        self.tasks.first_ended().await
    }

    /// Stops serving (long polls end at once), waits at most 5 s for
    /// requests in flight, and saves the state; in a cluster a leader
    /// writes it to etcd and resigns, so another leads at once.
    pub async fn stop(mut self) {
        self.state.close();
        self.tasks.stop(Duration::from_secs(5)).await;
        if let Some((elector, store)) = self.cluster.take() {
            persist::last_write(&self.state, &store).await;
            elector.resign().await;
            return;
        }
        if let Err(e) = self.state.lock().save() {
            tracing::error!(error = %crate::error_chain(&e), "saving the state on shutdown");
        }
    }

    /// Stops like a process killed with SIGKILL: no last write, no
    /// resignation (the others wait for the lease to expire). For tests
    /// and benchmarks of failover.
    pub async fn abort(mut self) {
        if let Some((elector, _)) = self.cluster.take() {
            drop(elector);
        }
        self.state.close();
        self.tasks.stop(Duration::from_secs(5)).await;
    }
}

/// The soft `RLIMIT_NOFILE`, if finite.
fn fd_limit() -> Option<usize> {
    let mut r = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes into the struct we own.
    let ok = unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut r) } == 0;
    (ok && r.rlim_cur != libc::RLIM_INFINITY)
        .then(|| usize::try_from(r.rlim_cur).unwrap_or(usize::MAX))
}

/// Accepts while a connection slot is free; each connection is its own
/// task holding its slot. On shutdown waits up to 5 s for them.
async fn accept_loop(
    listener: TcpListener,
    state: Arc<AppState>,
    tls: Option<Arc<rustls::ServerConfig>>,
    limits: Limits,
) {
    let slots = Arc::new(Semaphore::new(limits.max_connections));
    let tls = tls.map(tokio_rustls::TlsAcceptor::from);
    let app = http::app(state.clone());
    loop {
        let permit = tokio::select! {
            () = state.closed() => break,
            p = slots.clone().acquire_owned() => p.expect("the semaphore is never closed"),
        };
        let (stream, peer) = tokio::select! {
            () = state.closed() => break,
            r = listener.accept() => match r {
                Ok(c) => c,
                Err(e) => {
                    // EMFILE, ENFILE, ENOBUFS, ECONNABORTED: transient; the
                    // cap keeps the first two rare.
                    tracing::warn!(error = %e, "accepting a connection");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let conn = Connection {
            app: app.clone(),
            state: state.clone(),
            peer,
            header_timeout: limits.header_timeout,
        };
        let tls = tls.clone();
        tokio::spawn(async move {
            let _permit = permit;
            conn.run(stream, tls).await;
        });
    }
    drop(listener);
    // In-flight requests finish (long polls return at once on close).
    let all = u32::try_from(limits.max_connections).unwrap_or(u32::MAX);
    let _ = tokio::time::timeout(Duration::from_secs(5), slots.acquire_many(all)).await;
}

struct Connection {
    app: axum::Router,
    state: Arc<AppState>,
    peer: SocketAddr,
    header_timeout: Duration,
}

impl Connection {
    async fn run(self, stream: TcpStream, tls: Option<tokio_rustls::TlsAcceptor>) {
        let _ = stream.set_nodelay(true);
        let Some(acceptor) = tls else {
            return self.serve(stream).await;
        };
        // A TLS connection starts with a handshake record (0x16); a plain
        // HTTP request starts with a method. Tell the latter what is wrong
        // in its own protocol instead of a TLS alert it cannot read.
        let mut first = [0u8; 1];
        match tokio::time::timeout(self.header_timeout, stream.peek(&mut first)).await {
            Ok(Ok(1)) if first[0].is_ascii_uppercase() => {
                return refuse_plain_http(stream, self.peer, self.header_timeout).await;
            }
            Ok(Ok(1)) => {}
            _ => return,
        }
        match tokio::time::timeout(self.header_timeout, acceptor.accept(stream)).await {
            Ok(Ok(s)) => self.serve(s).await,
            Ok(Err(e)) => tracing::debug!(peer = %self.peer, error = %e, "TLS handshake failed"),
            Err(_) => tracing::debug!(peer = %self.peer, "TLS handshake timed out"),
        }
    }

    async fn serve<S>(self, stream: S)
    where
        S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        let peer = self.peer;
        let app = self.app;
        let svc = hyper::service::service_fn(move |mut req: hyper::Request<Incoming>| {
            req.extensions_mut().insert(ConnectInfo(peer));
            let app = app.clone();
            async move {
                let resp = app.oneshot(req.map(axum::body::Body::new)).await;
                Ok::<_, Infallible>(resp.unwrap_or_else(|never| match never {}))
            }
        });
        let mut builder = hyper::server::conn::http1::Builder::new();
        builder
            .timer(TokioTimer::new())
            .header_read_timeout(self.header_timeout)
            .max_headers(HYPER_MAX_HEADERS)
            .max_buf_size(HYPER_MAX_BUF);
        let conn = builder.serve_connection(TokioIo::new(stream), svc);
        let mut conn = std::pin::pin!(conn);
        let r = tokio::select! {
            r = conn.as_mut() => r,
            () = self.state.closed() => {
                conn.as_mut().graceful_shutdown();
                conn.await
            }
        };
        if let Err(e) = r {
            // Timeouts, resets and malformed requests: the client's doing.
            tracing::debug!(%peer, error = %e, "connection ended");
        }
    }
}

/// Answers a plain HTTP request on the HTTPS port with a 400 naming the
/// problem, then closes.
async fn refuse_plain_http(mut stream: TcpStream, peer: SocketAddr, deadline: Duration) {
    tracing::warn!(%peer, "refused: plain HTTP on the HTTPS port");
    let body = r#"{"error":"this controller serves HTTPS: use an https:// URL"}"#;
    let reply = format!(
        "HTTP/1.1 400 Bad Request\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
        body.len()
    );
    let _ = tokio::time::timeout(deadline, async {
        stream.write_all(reply.as_bytes()).await?;
        stream.shutdown().await
    })
    .await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_task_that_panics_or_returns_is_reported() {
        let mut tasks = Tasks::default();
        tasks.spawn("forever", std::future::pending());
        tasks.spawn("short", async {
            tokio::time::sleep(Duration::from_millis(10)).await;
            panic!("boom");
        });
        let f = tasks.first_ended().await;
        assert_eq!(f.task, "short");
        assert_eq!(f.how, "panicked: boom");
        // The ended one is not reported twice; the other still runs.
        assert!(
            tokio::time::timeout(Duration::from_millis(50), tasks.first_ended())
                .await
                .is_err()
        );
        let mut tasks = Tasks::default();
        tasks.spawn("returns", async {});
        assert_eq!(tasks.first_ended().await.how, "returned");
    }

    #[tokio::test]
    async fn stop_aborts_what_outlives_the_grace() {
        let mut tasks = Tasks::default();
        tasks.spawn("forever", std::future::pending());
        let t = std::time::Instant::now();
        tasks.stop(Duration::from_millis(50)).await;
        assert!(t.elapsed() < Duration::from_secs(5));
        assert!(tasks.0.iter().all(|(_, h)| h.is_none()));
    }
}
