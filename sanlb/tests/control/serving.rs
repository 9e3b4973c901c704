//! How the controller is served: timeouts and the connection cap against
//! slow clients, JSON bodies on every refusal, the read-only token,
//! `/healthz`, and TLS end to end on loopback with a throwaway CA.

use std::{
    io::{Read as _, Write as _},
    net::{SocketAddr, TcpStream},
    path::{Path, PathBuf},
    sync::Arc,
    time::{Duration, Instant},
};

use axum::{
    body::Body,
    http::{Request, StatusCode, header},
};
use http_body_util::BodyExt as _;
use sanlb::{
    agent::{Agent, AgentConfig, Client, ClientError},
    controller::{
        Controller,
        http::{Access, AppState, app},
        server::{self, Limits, Options, Server},
        store::Store,
    },
    proto::{ApiError, EnforceCounters, Report},
};
use tower::ServiceExt as _;

use crate::fakes::{TOKEN, World, config, eventually, target};

const READ_TOKEN: &str = "read-only-token-9876543210";

fn report(gateway: &str, seq: u64) -> Report {
    Report {
        gateway: gateway.into(),
        boot_id: format!("boot-{gateway}"),
        seq,
        uptime_ms: seq * 1000,
        capacity: 1.0,
        applied: 0,
        owned: vec![],
        enforce: EnforceCounters::default(),
        flows: vec![],
    }
}

async fn start(dir: &Path, options: Options) -> Server {
    let c = Controller::new(
        config(&[target(1), target(2)]),
        Some(Store::new(dir.join("state.json"))),
        Instant::now(),
    )
    .unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    Server::start_with(c, TOKEN.into(), listener, options).unwrap()
}

fn open_fds() -> usize {
    std::fs::read_dir("/proc/self/fd").unwrap().count()
}

/// Reads until the peer closes (Ok(0) or an error), at most `limit`;
/// returns what was read and whether it closed.
fn read_until_closed(s: &mut TcpStream, limit: Duration) -> (String, bool) {
    s.set_read_timeout(Some(Duration::from_millis(100)))
        .unwrap();
    let end = Instant::now() + limit;
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    while Instant::now() < end {
        match s.read(&mut buf) {
            Ok(0) => return (String::from_utf8_lossy(&got).into_owned(), true),
            Ok(n) => got.extend_from_slice(&buf[..n]),
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) => {}
            Err(_) => return (String::from_utf8_lossy(&got).into_owned(), true),
        }
    }
    (String::from_utf8_lossy(&got).into_owned(), false)
}

/// Issue 11, item 6: 50 sockets holding half a request each used to stay
/// open for ever, and under a low fd limit valid requests timed out. Now at
/// most `max_connections` are served at once, each held one is closed after
/// the header timeout, a trickled body gets a 408 after the body timeout,
/// an idle kept-alive connection is closed, and a valid request gets
/// through meanwhile.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn issue_11_item_6_slow_clients_cannot_exhaust_connections() {
    let dir = tempfile::tempdir().unwrap();
    let limits = Limits {
        max_connections: 8,
        header_timeout: Duration::from_millis(300),
        body_timeout: Duration::from_millis(300),
    };
    let server = start(
        dir.path(),
        Options {
            limits,
            ..Options::default()
        },
    )
    .await;
    let addr = server.addr();
    let before = open_fds();
    let (slow, peak) = tokio::task::spawn_blocking(move || {
        let mut slow: Vec<TcpStream> = (0..50)
            .map(|_| {
                let mut s = TcpStream::connect(addr).unwrap();
                s.write_all(b"GET /v1/status HTTP/1.1\r\nHost: x\r\n")
                    .unwrap();
                s
            })
            .collect();
        std::thread::sleep(Duration::from_millis(100));
        // 50 client sockets, at most 8 served (the rest wait in the
        // kernel's queue, which holds no descriptor of ours).
        let peak = open_fds();
        for s in &mut slow {
            s.set_nonblocking(false).unwrap();
        }
        (slow, peak)
    })
    .await
    .unwrap();
    assert!(
        peak <= before + 50 + 8 + 4,
        "{peak} descriptors open with 50 slow clients, {before} before"
    );
    // A valid request gets through while they are cleared 8 at a time.
    let client = Client::new(&format!("http://{addr}"), TOKEN, Duration::from_secs(10)).unwrap();
    let t = Instant::now();
    client.status().await.expect("a valid request is served");
    assert!(t.elapsed() < Duration::from_secs(10));
    // Every slow one is closed by the server without an answer.
    let closed = tokio::task::spawn_blocking(move || {
        slow.into_iter()
            .map(|mut s| read_until_closed(&mut s, Duration::from_secs(10)))
            .collect::<Vec<_>>()
    })
    .await
    .unwrap();
    for (got, was_closed) in &closed {
        assert!(was_closed, "a slow client still connected, read {got:?}");
        assert!(got.is_empty(), "a half request was answered: {got:?}");
    }
    // A trickled body: 408 with a reason, then closed.
    let (reply, was_closed) = tokio::task::spawn_blocking(move || {
        let mut s = TcpStream::connect(addr).unwrap();
        write!(
            s,
            "POST /v1/report HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {TOKEN}\r\n\
             Content-Type: application/json\r\nContent-Length: 100\r\n\r\n{{\"gate"
        )
        .unwrap();
        read_until_closed(&mut s, Duration::from_secs(5))
    })
    .await
    .unwrap();
    assert!(was_closed);
    assert!(reply.starts_with("HTTP/1.1 408"), "{reply}");
    assert!(
        reply.contains(r#"{"error":"body not received within 300ms"}"#),
        "{reply}"
    );
    // An idle kept-alive connection is closed after the header timeout.
    let (reply, was_closed) = tokio::task::spawn_blocking(move || {
        let mut s = TcpStream::connect(addr).unwrap();
        write!(s, "GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
        let t = Instant::now();
        let r = read_until_closed(&mut s, Duration::from_secs(5));
        assert!(
            t.elapsed() >= Duration::from_millis(250),
            "closed before the idle limit"
        );
        r
    })
    .await
    .unwrap();
    assert!(was_closed && reply.starts_with("HTTP/1.1 200"), "{reply}");
    let metrics = sanlb::controller::metrics::render(&server.state().lock(), Instant::now());
    assert!(
        metrics.contains("sanlb_report_errors_total{reason=\"body_timeout\"} 1"),
        "{metrics}"
    );
    server.stop().await;
}

/// The connection cap is lowered to fit the file-descriptor limit.
#[tokio::test]
async fn the_connection_cap_fits_the_descriptor_limit() {
    let dir = tempfile::tempdir().unwrap();
    let mut r = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: reading this process's limit into a struct we own.
    assert_eq!(unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut r) }, 0);
    let server = start(
        dir.path(),
        Options {
            limits: Limits {
                max_connections: usize::MAX,
                ..Limits::default()
            },
            ..Options::default()
        },
    )
    .await;
    assert!((server.limits().max_connections as u64) < r.rlim_cur);
    server.stop().await;
}

async fn call(
    app: axum::Router,
    req: Request<Body>,
) -> (StatusCode, axum::http::HeaderMap, Vec<u8>) {
    let resp = app.oneshot(req).await.unwrap();
    let status = resp.status();
    let headers = resp.headers().clone();
    let body = resp
        .into_body()
        .collect()
        .await
        .unwrap()
        .to_bytes()
        .to_vec();
    (status, headers, body)
}

fn api_error(body: &[u8]) -> String {
    serde_json::from_slice::<ApiError>(body)
        .unwrap_or_else(|_| panic!("not an error body: {:?}", String::from_utf8_lossy(body)))
        .error
}

fn state_with_read_token() -> Arc<AppState> {
    let c = Controller::new(config(&[target(1)]), None, Instant::now()).unwrap();
    AppState::with_access(
        c,
        Access {
            token: TOKEN.into(),
            read_token: Some(READ_TOKEN.into()),
            body_timeout: server::DEFAULT_BODY_TIMEOUT,
            secure_cookies: false,
        },
    )
}

/// Issue 11, item 8: 404, 405 and 431 used to have empty bodies.
#[tokio::test]
async fn issue_11_item_8_refusals_have_json_bodies() {
    let app = app(state_with_read_token());
    let auth = format!("Bearer {TOKEN}");
    let cases = [
        (
            Request::get("/v2/nothing").body(Body::empty()).unwrap(),
            StatusCode::NOT_FOUND,
            "no such endpoint: /v2/nothing",
        ),
        (
            Request::delete("/v1/status")
                .header(header::AUTHORIZATION, &auth)
                .body(Body::empty())
                .unwrap(),
            StatusCode::METHOD_NOT_ALLOWED,
            "DELETE is not allowed on /v1/status",
        ),
        (
            Request::post("/healthz").body(Body::empty()).unwrap(),
            StatusCode::METHOD_NOT_ALLOWED,
            "POST is not allowed on /healthz",
        ),
        (
            {
                let mut b = Request::get("/v1/status").header(header::AUTHORIZATION, &auth);
                for i in 0..150 {
                    b = b.header(format!("x-filler-{i}"), "1");
                }
                b.body(Body::empty()).unwrap()
            },
            StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
            "151 header fields",
        ),
    ];
    for (req, want, says) in cases {
        let what = format!("{} {}", req.method(), req.uri());
        let (status, headers, body) = call(app.clone(), req).await;
        assert_eq!(status, want, "{what}");
        assert_eq!(headers[header::CONTENT_TYPE], "application/json", "{what}");
        let e = api_error(&body);
        assert!(e.contains(says), "{what}: {e:?}");
    }
}

/// The same over a socket: hyper's parser is in the way there.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refusals_over_a_socket_have_json_bodies() {
    let dir = tempfile::tempdir().unwrap();
    let server = start(dir.path(), Options::default()).await;
    let addr = server.addr();
    let replies = tokio::task::spawn_blocking(move || {
        let mut filler = String::new();
        for i in 0..150 {
            filler.push_str(&format!("X-Filler-{i}: 1\r\n"));
        }
        [
            "GET /nothing HTTP/1.1\r\nHost: x\r\n",
            &format!("GET /healthz HTTP/1.1\r\nHost: x\r\n{filler}"),
        ]
        .map(|head| {
            let mut s = TcpStream::connect(addr).unwrap();
            write!(s, "{head}Connection: close\r\n\r\n").unwrap();
            read_until_closed(&mut s, Duration::from_secs(5)).0
        })
    })
    .await
    .unwrap();
    assert!(replies[0].starts_with("HTTP/1.1 404"), "{}", replies[0]);
    assert!(
        replies[0].ends_with(r#"{"error":"no such endpoint: /nothing"}"#),
        "{}",
        replies[0]
    );
    assert!(replies[1].starts_with("HTTP/1.1 431"), "{}", replies[1]);
    assert!(
        replies[1].contains(r#"{"error":"15"#) && replies[1].contains("header fields of"),
        "{}",
        replies[1]
    );
    server.stop().await;
}

#[tokio::test]
async fn the_read_only_token_reads_and_cannot_post_a_report() {
    let state = state_with_read_token();
    let app = app(state.clone());
    let read = format!("Bearer {READ_TOKEN}");
    for uri in ["/v1/status", "/metrics"] {
        let (s, _, _) = call(
            app.clone(),
            Request::get(uri)
                .header(header::AUTHORIZATION, &read)
                .body(Body::empty())
                .unwrap(),
        )
        .await;
        assert_eq!(s, StatusCode::OK, "{uri}");
    }
    let before = serde_json::to_value(state.lock().saved()).unwrap();
    let (s, _, body) = call(
        app.clone(),
        Request::post("/v1/report")
            .header(header::AUTHORIZATION, &read)
            .header(header::CONTENT_TYPE, "application/json")
            .body(Body::from(serde_json::to_vec(&report("gw1", 0)).unwrap()))
            .unwrap(),
    )
    .await;
    assert_eq!(s, StatusCode::FORBIDDEN);
    assert_eq!(
        api_error(&body),
        "the read-only token cannot POST /v1/report"
    );
    let (s, _, _) = call(
        app.clone(),
        Request::get("/v1/share?gateway=gw1")
            .header(header::AUTHORIZATION, &read)
            .body(Body::empty())
            .unwrap(),
    )
    .await;
    assert_eq!(s, StatusCode::FORBIDDEN);
    assert_eq!(serde_json::to_value(state.lock().saved()).unwrap(), before);
    let st = state.lock().status(Instant::now());
    assert!(
        st.gateways.is_empty(),
        "the refused report registered a gateway"
    );
    assert!(
        st.report_errors.contains(&("forbidden".to_owned(), 2)),
        "{:?}",
        st.report_errors
    );
    // The agents' token still does everything.
    let (s, _, _) = call(
        app,
        Request::post("/v1/report")
            .header(header::AUTHORIZATION, format!("Bearer {TOKEN}"))
            .header(header::CONTENT_TYPE, "application/json")
            .body(Body::from(serde_json::to_vec(&report("gw1", 0)).unwrap()))
            .unwrap(),
    )
    .await;
    assert_eq!(s, StatusCode::OK);
}

#[tokio::test]
async fn healthz_answers_without_a_token_and_leaks_nothing() {
    let state = state_with_read_token();
    let app = app(state.clone());
    let get = || Request::get("/healthz").body(Body::empty()).unwrap();
    let (s, headers, empty) = call(app.clone(), get()).await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(empty, b"ok\n");
    let names: Vec<_> = headers.keys().map(|k| k.as_str()).collect();
    assert_eq!(names, ["content-type", "content-length"]);
    // With gateways, routes and refusals behind it, the same bytes.
    let auth = format!("Bearer {TOKEN}");
    for (gw, seq) in [("gw1", 0), ("gw2", 0), ("gw1", 1)] {
        let (s, _, _) = call(
            app.clone(),
            Request::post("/v1/report")
                .header(header::AUTHORIZATION, &auth)
                .header(header::CONTENT_TYPE, "application/json")
                .body(Body::from(serde_json::to_vec(&report(gw, seq)).unwrap()))
                .unwrap(),
        )
        .await;
        assert_eq!(s, StatusCode::OK);
    }
    let (_, _, body) = call(app.clone(), get()).await;
    assert_eq!(body, empty);
    state.close();
    let (s, _, body) = call(app, get()).await;
    assert_eq!(
        (s, body.as_slice()),
        (StatusCode::SERVICE_UNAVAILABLE, &b"stopping\n"[..])
    );
}

/// A throwaway CA and a certificate it signed for 127.0.0.1 and localhost.
struct Pki {
    dir: tempfile::TempDir,
}

impl Pki {
    fn new(name: &str) -> Self {
        use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, KeyPair};
        let dir = tempfile::tempdir().unwrap();
        let ca_key = KeyPair::generate().unwrap();
        let mut ca = CertificateParams::new(Vec::<String>::new()).unwrap();
        ca.distinguished_name.push(DnType::CommonName, name);
        ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        let ca_cert = ca.self_signed(&ca_key).unwrap();
        let key = KeyPair::generate().unwrap();
        let leaf = CertificateParams::new(vec!["127.0.0.1".into(), "localhost".into()])
            .unwrap()
            .signed_by(&key, &rcgen::Issuer::new(ca, ca_key))
            .unwrap();
        std::fs::write(dir.path().join("ca.pem"), ca_cert.pem()).unwrap();
        std::fs::write(dir.path().join("cert.pem"), leaf.pem()).unwrap();
        std::fs::write(dir.path().join("key.pem"), key.serialize_pem()).unwrap();
        Self { dir }
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    fn tls(&self) -> Arc<rustls::ServerConfig> {
        server::tls_config(&self.path("cert.pem"), &self.path("key.pem")).unwrap()
    }
}

async fn https_server(pki: &Pki, dir: &Path) -> (Server, SocketAddr) {
    let server = start(
        dir,
        Options {
            tls: Some(pki.tls()),
            read_token: Some(READ_TOKEN.into()),
            ..Options::default()
        },
    )
    .await;
    let addr = server.addr();
    (server, addr)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_end_to_end_with_a_throwaway_ca() {
    let pki = Pki::new("sanlb test CA");
    let other = Pki::new("another CA");
    let dir = tempfile::tempdir().unwrap();
    let (server, addr) = https_server(&pki, dir.path()).await;
    let url = format!("https://127.0.0.1:{}", addr.port());
    // A real agent loop over HTTPS: it reports, gets a share, applies it.
    let world = World::default();
    let client = Client::with_ca(
        &url,
        TOKEN,
        Duration::from_secs(2),
        Some(&pki.path("ca.pem")),
    )
    .unwrap();
    let mut agent = Agent::new(
        AgentConfig {
            gateway: "gw1".into(),
            capacity: 1.0,
            interval: Duration::from_millis(100),
            long_poll: Duration::from_secs(5),
        },
        client,
        world.counters("gw1"),
        world.owner("gw1"),
    );
    let (stop, rx) = tokio::sync::oneshot::channel::<()>();
    let task = tokio::spawn(async move {
        agent
            .run(async {
                let _ = rx.await;
            })
            .await;
    });
    eventually(
        Duration::from_secs(10),
        "gw1 holds both targets over HTTPS",
        || world.held("gw1").len() == 2,
    )
    .await;
    let _ = stop.send(());
    task.await.unwrap();
    // The read-only token reads over HTTPS.
    let reader = Client::with_ca(
        &url,
        READ_TOKEN,
        Duration::from_secs(2),
        Some(&pki.path("ca.pem")),
    )
    .unwrap();
    let st = reader.status().await.unwrap();
    assert_eq!(st.gateways.len(), 1);
    // Another CA's client refuses the certificate.
    let stranger = Client::with_ca(
        &url,
        TOKEN,
        Duration::from_secs(2),
        Some(&other.path("ca.pem")),
    )
    .unwrap();
    let e = stranger.status().await.unwrap_err();
    assert!(matches!(e, ClientError::Transport { .. }), "{e:?}");
    let chain = sanlb::error_chain(&e);
    assert!(chain.contains("UnknownIssuer"), "{chain}");
    // Without a CA file, the system's store does not know the throwaway CA.
    let e = Client::new(&url, TOKEN, Duration::from_secs(2))
        .unwrap()
        .status()
        .await
        .unwrap_err();
    assert!(sanlb::error_chain(&e).contains("UnknownIssuer"), "{e:?}");
    // Plain HTTP to the HTTPS port: told so, in HTTP.
    let plain = Client::new(&format!("http://{addr}"), TOKEN, Duration::from_secs(2)).unwrap();
    let e = plain.status().await.unwrap_err();
    let text = e.to_string();
    assert!(
        matches!(e, ClientError::Refused { status, .. } if status == 400)
            && text.contains("this controller serves HTTPS: use an https:// URL"),
        "{text}"
    );
    // A CA file is refused for an http:// URL, an empty one for https://.
    assert!(matches!(
        Client::with_ca(
            &format!("http://{addr}"),
            TOKEN,
            Duration::from_secs(1),
            Some(&pki.path("ca.pem"))
        ),
        Err(ClientError::CaWithoutTls(_))
    ));
    let empty = dir.path().join("empty.pem");
    std::fs::write(&empty, "").unwrap();
    let e = Client::with_ca(&url, TOKEN, Duration::from_secs(1), Some(&empty)).unwrap_err();
    assert!(
        e.to_string().contains("empty.pem: no PEM certificate"),
        "{e}"
    );
    server.stop().await;
}

#[test]
fn a_key_that_does_not_match_the_certificate_is_refused() {
    let a = Pki::new("CA a");
    let b = Pki::new("CA b");
    let e = server::tls_config(&a.path("cert.pem"), &b.path("key.pem")).unwrap_err();
    assert!(e.to_string().contains("cert.pem with key"), "{e}");
    let e = server::tls_config(&a.path("missing.pem"), &a.path("key.pem")).unwrap_err();
    assert!(e.to_string().contains("missing.pem"), "{e}");
    let e = server::tls_config(&a.path("key.pem"), &a.path("key.pem")).unwrap_err();
    assert!(e.to_string().contains("no certificate in it"), "{e}");
}
