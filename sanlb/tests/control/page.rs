//! Issue 18: the status page and the controls' API. Through `app()`: the
//! login form, the session cookie (HttpOnly, read-only), the controls'
//! authentication. In a real browser (Debian's headless Chromium, driven
//! over WebDriver by chromedriver): a controller with simulated agents,
//! the page loaded after logging in, its rendering checked against
//! `/v1/status` and in a screenshot.

use std::{
    net::IpAddr,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::Arc,
    time::{Duration, Instant},
};

use axum::{
    body::Body,
    http::{Request, StatusCode, header},
};
use base64::Engine as _;
use http_body_util::BodyExt as _;
use sanlb::{
    controller::{
        Controller,
        http::{Access, AppState, app},
        server::{self, Options, Server},
        store::Store,
    },
    proto::{ControlsStatus, Ownership, Status},
};
use serde_json::{Value, json};
use tower::ServiceExt as _;

use crate::fakes::*;

const READ_TOKEN: &str = "read-only-token-9876543210";

fn state() -> Arc<AppState> {
    let c = Controller::new(config(&[target(1), target(2)]), None, Instant::now()).unwrap();
    AppState::with_access(
        c,
        Access {
            token: TOKEN.into(),
            read_token: Some(READ_TOKEN.into()),
            body_timeout: server::DEFAULT_BODY_TIMEOUT,
            secure_cookies: true,
        },
    )
}

async fn call(
    state: &Arc<AppState>,
    req: Request<Body>,
) -> (StatusCode, header::HeaderMap, String) {
    let resp = app(state.clone()).oneshot(req).await.unwrap();
    let (parts, body) = resp.into_parts();
    let bytes = body.collect().await.unwrap().to_bytes();
    (
        parts.status,
        parts.headers,
        String::from_utf8_lossy(&bytes).into_owned(),
    )
}

fn get(uri: &str, auth: Option<&str>, cookie: Option<&str>) -> Request<Body> {
    let mut r = Request::get(uri);
    if let Some(t) = auth {
        r = r.header(header::AUTHORIZATION, format!("Bearer {t}"));
    }
    if let Some(c) = cookie {
        r = r.header(header::COOKIE, c);
    }
    r.body(Body::empty()).unwrap()
}

fn post_json(uri: &str, auth: Option<&str>, cookie: Option<&str>, body: Value) -> Request<Body> {
    let mut r = Request::post(uri).header(header::CONTENT_TYPE, "application/json");
    if let Some(t) = auth {
        r = r.header(header::AUTHORIZATION, format!("Bearer {t}"));
    }
    if let Some(c) = cookie {
        r = r.header(header::COOKIE, c);
    }
    r.body(Body::from(body.to_string())).unwrap()
}

fn login(token: &str) -> Request<Body> {
    Request::post("/login")
        .header(header::CONTENT_TYPE, "application/x-www-form-urlencoded")
        .body(Body::from(format!("token={token}")))
        .unwrap()
}

#[tokio::test]
async fn the_page_needs_a_login_whose_session_only_reads() {
    let st = state();
    // Without a token: the login form, no data, not a report error.
    let (s, h, body) = call(&st, get("/", None, None)).await;
    assert_eq!(s, StatusCode::UNAUTHORIZED);
    assert!(
        body.contains("<form method=\"post\" action=\"/login\">"),
        "{body}"
    );
    assert!(
        h[header::CONTENT_SECURITY_POLICY]
            .to_str()
            .unwrap()
            .contains("script-src 'self'")
    );
    // Its assets need no token (they hold no data).
    for f in ["/ui/app.js", "/ui/style.css"] {
        let (s, _, body) = call(&st, get(f, None, None)).await;
        assert_eq!(s, StatusCode::OK, "{f}");
        assert!(!body.is_empty());
    }
    assert_eq!(
        call(&st, get("/ui/x.js", None, None)).await.0,
        StatusCode::NOT_FOUND
    );
    // A wrong token: refused, counted apart.
    let (s, _, body) = call(&st, login("nope")).await;
    assert_eq!(s, StatusCode::UNAUTHORIZED);
    assert!(body.contains("Wrong token."));
    // The read-only token opens a session: an HttpOnly, Strict, Secure cookie.
    let (s, h, _) = call(&st, login(READ_TOKEN)).await;
    assert_eq!(s, StatusCode::SEE_OTHER);
    assert_eq!(h[header::LOCATION], "/");
    let set = h[header::SET_COOKIE].to_str().unwrap().to_owned();
    for attr in ["HttpOnly", "SameSite=Strict", "Path=/", "Secure"] {
        assert!(set.contains(attr), "{set}");
    }
    assert!(!set.contains(READ_TOKEN), "the cookie is not the token");
    let cookie = set.split(';').next().unwrap().to_owned();
    let (s, _, body) = call(&st, get("/", None, Some(&cookie))).await;
    assert_eq!(s, StatusCode::OK);
    assert!(body.contains("/ui/app.js"));
    for uri in ["/v1/status", "/v1/history", "/metrics"] {
        assert_eq!(
            call(&st, get(uri, None, Some(&cookie))).await.0,
            StatusCode::OK,
            "{uri}"
        );
    }
    // The agents' token opens a session too, which still only reads.
    let (_, h, _) = call(&st, login(TOKEN)).await;
    let agent_cookie = h[header::SET_COOKIE]
        .to_str()
        .unwrap()
        .split(';')
        .next()
        .unwrap()
        .to_owned();
    for c in [&cookie, &agent_cookie] {
        let (s, _, body) = call(&st, post_json("/v1/pause", None, Some(c), json!({}))).await;
        assert_eq!(s, StatusCode::FORBIDDEN);
        assert!(
            body.contains("a page session cannot POST /v1/pause"),
            "{body}"
        );
    }
    assert!(!st.lock().paused());
    // A forged session id reads nothing.
    let (s, _, _) = call(
        &st,
        get(
            "/v1/status",
            None,
            Some("sanlb_session=0123456789abcdef0123456789abcdef"),
        ),
    )
    .await;
    assert_eq!(s, StatusCode::UNAUTHORIZED);
    // Logging out ends the session.
    let req = Request::post("/logout")
        .header(header::COOKIE, &cookie)
        .body(Body::empty())
        .unwrap();
    assert_eq!(call(&st, req).await.0, StatusCode::SEE_OTHER);
    assert_eq!(
        call(&st, get("/v1/status", None, Some(&cookie))).await.0,
        StatusCode::UNAUTHORIZED
    );
    // None of this was a report error.
    let (_, _, metrics) = call(&st, get("/metrics", Some(TOKEN), None)).await;
    let errors: Vec<&str> = metrics
        .lines()
        .filter(|l| l.starts_with("sanlb_report_errors_total{"))
        .collect();
    assert!(!errors.is_empty(), "{metrics}");
    assert!(errors.iter().all(|l| l.ends_with("} 0")), "{errors:?}");
    for line in [
        "sanlb_http_refused_total{endpoint=\"login\",reason=\"unauthorized\"} 1",
        "sanlb_http_refused_total{endpoint=\"control\",reason=\"forbidden\"} 2",
        "sanlb_http_refused_total{endpoint=\"status\",reason=\"unauthorized\"} 2",
    ] {
        assert!(
            metrics.lines().any(|l| l == line),
            "no {line} in\n{metrics}"
        );
    }
}

#[tokio::test]
async fn controls_need_the_agents_token_and_name_what_is_wrong() {
    let st = state();
    // Known gateway for the pin.
    let r = sanlb::proto::Report {
        gateway: "gw1".into(),
        boot_id: "b1".into(),
        seq: 0,
        uptime_ms: 0,
        capacity: 1.0,
        applied: 0,
        owned: vec![],
        enforce: Default::default(),
        flows: vec![],
    };
    st.lock().ingest(&r, Instant::now()).unwrap();
    for (uri, body) in [
        ("/v1/pause", json!({})),
        ("/v1/resume", json!({})),
        ("/v1/pin", json!({"target": "198.18.1.1", "gateway": "gw1"})),
        ("/v1/unpin", json!({"target": "198.18.1.1"})),
    ] {
        assert_eq!(
            call(&st, post_json(uri, Some(READ_TOKEN), None, body.clone()))
                .await
                .0,
            StatusCode::FORBIDDEN,
            "{uri}"
        );
        assert_eq!(
            call(&st, post_json(uri, None, None, body)).await.0,
            StatusCode::UNAUTHORIZED,
            "{uri}"
        );
    }
    assert!(!st.lock().paused());
    let (s, _, body) = call(&st, post_json("/v1/pause", Some(TOKEN), None, json!({}))).await;
    assert_eq!(s, StatusCode::OK);
    let c: ControlsStatus = serde_json::from_str(&body).unwrap();
    assert!(c.paused_since_ms.is_some());
    let (s, _, body) = call(
        &st,
        post_json(
            "/v1/pin",
            Some(TOKEN),
            None,
            json!({"target": "198.18.1.1", "gateway": "gw1"}),
        ),
    )
    .await;
    assert_eq!(s, StatusCode::OK, "{body}");
    for (body, says) in [
        (
            json!({"target": "198.18.9.9", "gateway": "gw1"}),
            "not a storage address this controller manages",
        ),
        (
            json!({"target": "198.18.1.2", "gateway": "gw7"}),
            "gateway gw7: no such gateway",
        ),
        (json!({"target": "198.18.1.2"}), "missing field `gateway`"),
        (
            json!({"target": "198.18.1.2", "gateway": "gw1", "x": 1}),
            "unknown field `x`",
        ),
    ] {
        let (s, _, text) = call(&st, post_json("/v1/pin", Some(TOKEN), None, body)).await;
        assert_eq!(s, StatusCode::UNPROCESSABLE_ENTITY, "{text}");
        assert!(text.contains(says), "{text}");
    }
    let (s, _, text) = call(
        &st,
        post_json(
            "/v1/unpin",
            Some(TOKEN),
            None,
            json!({"target": "198.18.1.2"}),
        ),
    )
    .await;
    assert_eq!(s, StatusCode::UNPROCESSABLE_ENTITY);
    assert!(text.contains("not pinned"), "{text}");
    let (_, _, body) = call(&st, get("/v1/status", Some(READ_TOKEN), None)).await;
    let status: Status = serde_json::from_str(&body).unwrap();
    assert_eq!(status.controls.pins.len(), 1);
    assert_eq!(status.controls.pins[0].gateway, "gw1");
}

// ---- the browser ---------------------------------------------------------

/// A chromedriver process, killed on drop, and one browser session.
struct Browser {
    driver: Child,
    http: reqwest::Client,
    base: String,
    session: String,
    _profile: tempfile::TempDir,
}

impl Browser {
    async fn start() -> Self {
        let port = {
            let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            l.local_addr().unwrap().port()
        };
        let driver = Command::new("chromedriver")
            .arg(format!("--port={port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("chromedriver (Debian chromium-driver; cargo xtask setup installs it)");
        let http = reqwest::Client::new();
        let base = format!("http://127.0.0.1:{port}");
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Ok(r) = http.get(format!("{base}/status")).send().await
                && r.status().is_success()
            {
                break;
            }
            assert!(Instant::now() < deadline, "chromedriver did not start");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let profile = tempfile::tempdir().unwrap();
        let caps = json!({"capabilities": {"alwaysMatch": {
            "browserName": "chrome",
            "goog:chromeOptions": {
                "binary": "/usr/bin/chromium",
                "args": [
                    "--headless", "--no-sandbox", "--disable-gpu",
                    "--disable-background-networking", "--disable-component-update",
                    "--disable-sync", "--no-first-run", "--hide-scrollbars",
                    "--force-device-scale-factor=1", "--window-size=1400,2000",
                    format!("--user-data-dir={}", profile.path().display()),
                ]
            }
        }}});
        let v: Value = http
            .post(format!("{base}/session"))
            .json(&caps)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        let session = v["value"]["sessionId"]
            .as_str()
            .unwrap_or_else(|| panic!("no session: {v}"))
            .to_owned();
        Self {
            driver,
            http,
            base,
            session,
            _profile: profile,
        }
    }

    async fn cmd(&self, method: reqwest::Method, path: &str, body: Option<Value>) -> Value {
        let url = format!("{}/session/{}{path}", self.base, self.session);
        let mut req = self.http.request(method, url);
        if let Some(b) = body {
            req = req.json(&b);
        }
        let v: Value = req.send().await.unwrap().json().await.unwrap();
        assert!(v["value"]["error"].is_null(), "{path}: {v}");
        v["value"].clone()
    }

    async fn go(&self, url: &str) {
        self.cmd(reqwest::Method::POST, "/url", Some(json!({"url": url})))
            .await;
    }

    async fn script(&self, js: &str) -> Value {
        self.cmd(
            reqwest::Method::POST,
            "/execute/sync",
            Some(json!({"script": js, "args": []})),
        )
        .await
    }

    async fn element(&self, css: &str) -> String {
        let v = self
            .cmd(
                reqwest::Method::POST,
                "/element",
                Some(json!({"using": "css selector", "value": css})),
            )
            .await;
        v.as_object()
            .and_then(|o| o.values().next())
            .and_then(Value::as_str)
            .unwrap()
            .to_owned()
    }

    async fn screenshot(&self) -> Vec<u8> {
        let v = self.cmd(reqwest::Method::GET, "/screenshot", None).await;
        base64::engine::general_purpose::STANDARD
            .decode(v.as_str().unwrap())
            .unwrap()
    }

    async fn close(mut self) {
        let _ = self
            .http
            .delete(format!("{}/session/{}", self.base, self.session))
            .send()
            .await;
        let _ = self.driver.kill();
        let _ = self.driver.wait();
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        let _ = self.driver.kill();
        let _ = self.driver.wait();
    }
}

/// The page's bar colours (app.js `BAR`), by the gateway's place in the
/// name order.
const BAR: [[u8; 3]; 4] = [
    [0x0b, 0x4f, 0x8a],
    [0xc2, 0x54, 0x00],
    [0x1b, 0x7a, 0x1b],
    [0xa3, 0x15, 0x15],
];

/// The longest horizontal run of `rgb` pixels in a PNG.
fn longest_run(png_bytes: &[u8], rgb: [u8; 3]) -> (usize, usize, usize) {
    let decoder = png::Decoder::new(png_bytes);
    let mut reader = decoder.read_info().unwrap();
    let mut buf = vec![0; reader.output_buffer_size()];
    let info = reader.next_frame(&mut buf).unwrap();
    let bpp = match info.color_type {
        png::ColorType::Rgba => 4,
        png::ColorType::Rgb => 3,
        other => panic!("unexpected PNG colour type {other:?}"),
    };
    let (w, h) = (info.width as usize, info.height as usize);
    let mut best = (0, 0, 0);
    for y in 0..h {
        let mut run = 0;
        for x in 0..w {
            let i = (y * w + x) * bpp;
            if buf[i..i + 3] == rgb {
                run += 1;
                if run > best.0 {
                    best = (run, x + 1 - run, y);
                }
            } else {
                run = 0;
            }
        }
    }
    best
}

/// Writes the screenshot where `SANLB_PAGE_SCREENSHOT` says (for the docs),
/// else into the target folder.
fn keep_screenshot(png: &[u8]) -> PathBuf {
    let path = std::env::var_os("SANLB_PAGE_SCREENSHOT")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_TARGET_TMPDIR")).join("status-page.png"));
    std::fs::write(&path, png).unwrap();
    path
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_page_in_a_real_browser_shows_what_status_says() {
    // A controller with four simulated gateways under a skewed load, one
    // target pinned and rebalancing paused after it converged, so the page
    // has decisions, controls and a chart to show.
    let world = World::default();
    let demand: Vec<(IpAddr, f64)> = [48, 36, 30, 24, 18, 12, 9, 6]
        .iter()
        .enumerate()
        .map(|(i, r)| (target(i as u8 + 1), f64::from(*r) * (1 << 20) as f64 / 10.0))
        .collect();
    world.set_demand(&demand);
    let targets: Vec<IpAddr> = demand.iter().map(|d| d.0).collect();
    let dir = tempfile::tempdir().unwrap();
    let c = Controller::new(
        config(&targets),
        Some(Store::new(dir.path().join("state.json"))),
        Instant::now(),
    )
    .unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let server = Server::start_with(
        c,
        TOKEN.into(),
        listener,
        Options {
            read_token: Some(READ_TOKEN.into()),
            ..Options::default()
        },
    )
    .unwrap();
    let port = server.addr().port();
    let agents: Vec<RunningAgent> = ["gw1", "gw2", "gw3", "gw4"]
        .iter()
        .map(|g| spawn_agent(&world, g, port))
        .collect();
    eventually(Duration::from_secs(30), "a balanced map", || {
        let st = status(&server);
        st.gateways.len() == 4
            && st
                .map
                .iter()
                .all(|m| matches!(m.ownership, Ownership::Owned { .. }))
            && true_imbalance(&st, &world) < 1.25
            && st.rebalances.iter().any(|r| r.adopted)
    })
    .await;
    let admin = client(port);
    admin
        .pin(&sanlb::proto::PinRequest {
            target: target(8),
            gateway: "gw4".into(),
        })
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_secs(2)).await;
    admin.pause(false).await.unwrap();
    // A few intervals of history for the chart.
    tokio::time::sleep(Duration::from_secs(3)).await;

    let browser = Browser::start().await;
    let url = format!("http://127.0.0.1:{port}/");
    let t = Instant::now();
    browser.go(&url).await;
    let input = browser.element("#token").await;
    browser
        .cmd(
            reqwest::Method::POST,
            &format!("/element/{input}/value"),
            Some(json!({"text": READ_TOKEN})),
        )
        .await;
    let button = browser.element("#login").await;
    browser
        .cmd(
            reqwest::Method::POST,
            &format!("/element/{button}/click"),
            Some(json!({})),
        )
        .await;
    // Rendered twice (a poll after the first): the page is live.
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let n = browser
            .script("return window.sanlb ? window.sanlb.renders : 0;")
            .await;
        if n.as_u64().unwrap_or(0) >= 2 {
            break;
        }
        assert!(Instant::now() < deadline, "the page did not render: {n}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let first_render = t.elapsed();
    // The token is in no URL, and scripts cannot read the session.
    let here = browser.cmd(reqwest::Method::GET, "/url", None).await;
    assert_eq!(here.as_str().unwrap(), url);
    assert_eq!(browser.script("return document.cookie;").await, json!(""));
    // Freeze the view, then read what it shows.
    let freeze = browser.element("#freeze").await;
    browser
        .cmd(
            reqwest::Method::POST,
            &format!("/element/{freeze}/click"),
            Some(json!({})),
        )
        .await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let shown = browser
        .script(
            "const rows = (id) => [...document.querySelectorAll(id + ' tbody tr')]
                .map((tr) => ({ key: tr.dataset.gateway || tr.dataset.target || '',
                                owner: tr.dataset.owner || '',
                                cells: [...tr.cells].map((c) => c.textContent) }));
             return { raw: window.sanlb.raw, pre: document.getElementById('raw').textContent,
                      gateways: rows('#gateways'), map: rows('#map'), decisions: rows('#decisions'),
                      generation: document.getElementById('generation').textContent,
                      badges: document.getElementById('badges').textContent,
                      charts: document.querySelectorAll('.chart polyline').length,
                      errors: window.sanlb.errors };",
        )
        .await;
    let png = browser.screenshot().await;
    let path = keep_screenshot(&png);
    let fresh = admin.status().await.unwrap();
    browser.close().await;

    // The JSON the page shows is /v1/status.
    let page: Status = serde_json::from_str(shown["raw"].as_str().unwrap()).unwrap();
    let pre: Status = serde_json::from_str(shown["pre"].as_str().unwrap()).unwrap();
    assert_eq!(page, pre, "the JSON view is the JSON fetched");
    assert_eq!(shown["errors"], json!(0));
    assert_eq!(
        page.generation, fresh.generation,
        "paused: no new map since"
    );
    assert_eq!(page.controls.pins, fresh.controls.pins);
    assert!(page.controls.paused_since_ms.is_some());
    let names = |s: &Status| {
        s.gateways
            .iter()
            .map(|g| g.name.clone())
            .collect::<Vec<_>>()
    };
    assert_eq!(names(&page), names(&fresh));
    let owners = |s: &Status| {
        s.map
            .iter()
            .map(|m| (m.target, m.ownership.clone()))
            .collect::<Vec<_>>()
    };
    assert_eq!(owners(&page), owners(&fresh));
    for (p, f) in page.gateways.iter().zip(&fresh.gateways) {
        assert!(
            (p.load - f.load).abs() <= 0.15 * f.load.max(1.0),
            "{}: page {} vs now {}",
            p.name,
            p.load,
            f.load
        );
    }
    // The page renders every gateway with its load as the JSON says.
    assert_eq!(shown["generation"], json!(page.generation.to_string()));
    let rows = shown["gateways"].as_array().unwrap();
    assert_eq!(rows.len(), 4);
    for (row, g) in rows.iter().zip(&page.gateways) {
        assert_eq!(row["key"], json!(g.name));
        let cells: Vec<&str> = row["cells"]
            .as_array()
            .unwrap()
            .iter()
            .map(|c| c.as_str().unwrap())
            .collect();
        assert_eq!(cells[0], g.name);
        assert_eq!(cells[1], "up");
        assert_eq!(cells[3], format!("{:.1} MiB/s", g.load / (1 << 20) as f64));
        assert_eq!(cells[5], format!("{:.2}", g.utilisation));
    }
    for (row, m) in shown["map"].as_array().unwrap().iter().zip(&page.map) {
        assert_eq!(row["key"], json!(m.target.to_string()));
        if let Ownership::Owned { gateway } = &m.ownership {
            assert_eq!(row["owner"], json!(gateway));
        }
    }
    assert!(shown["badges"].as_str().unwrap().contains("PAUSED"));
    assert!(shown["badges"].as_str().unwrap().contains("1 pinned"));
    assert_eq!(shown["charts"], json!(8), "4 gateways × 2 charts");
    let decisions = shown["decisions"].as_array().unwrap();
    assert_eq!(decisions.len(), page.rebalances.len());
    // The screenshot: each gateway's load bar, as wide as its load over
    // the largest (160 px for the largest).
    let max = page.gateways.iter().map(|g| g.load).fold(0.0, f64::max);
    for (i, g) in page.gateways.iter().enumerate() {
        let (run, x, y) = longest_run(&png, BAR[i]);
        let want = (160.0 * g.load / max).round() as usize;
        assert!(
            run.abs_diff(want) <= 2,
            "{}: bar of {run} px at ({x}, {y}), want {want} px ({} of {max}); screenshot {}",
            g.name,
            g.load,
            path.display()
        );
    }
    eprintln!(
        "status page: logged in and rendered twice in {:.2} s; screenshot {}",
        first_render.as_secs_f64(),
        path.display()
    );
    for a in agents {
        a.kill().await;
    }
    server.stop().await;
}

/// promtool (Debian's prometheus package) lints the controller's and the
/// agent's exposition: names, types, HELP, counters' `_total`, units.
#[tokio::test]
async fn promtool_accepts_every_metric() {
    use sanlb::{
        agent::metrics::{AgentStats, render},
        controller::Trigger,
        dataplane::Stats,
    };
    use std::io::Write as _;
    let st = state();
    {
        let mut c = st.lock();
        let now = Instant::now();
        for (seq, up) in [(0, 0), (1, 1000)] {
            let r = sanlb::proto::Report {
                gateway: "gw1".into(),
                boot_id: "b1".into(),
                seq,
                uptime_ms: up,
                capacity: 1.0,
                applied: 0,
                owned: vec![target(1)],
                enforce: Default::default(),
                flows: vec![sanlb::proto::Flow {
                    initiator: HOST,
                    target: target(1),
                    to_target_bytes: 100 * up,
                    to_initiator_bytes: 300 * up,
                }],
            };
            c.ingest(&r, now).unwrap();
        }
        c.pause(now).unwrap();
        c.pin(target(1), "gw1", now).unwrap();
        c.count_refused("metrics", "unauthorized");
        c.count_error("unauthorized");
        c.expire(now + Duration::from_secs(5));
        c.close_interval();
        if let Some(job) = c.start_rebalance(Trigger::Failover) {
            let (sol, took) = job.solve().unwrap();
            c.finish_rebalance(&job, &sol, took, now);
        }
    }
    let (_, _, controller) = call(&st, get("/metrics", Some(TOKEN), None)).await;
    assert!(controller.contains("sanlb_rebalance_duration_seconds_bucket{le=\"+Inf\"}"));
    assert!(
        controller.contains(
            "sanlb_gateway_bytes_total{gateway=\"gw1\",direction=\"to_initiator\"} 300000"
        )
    );
    let agent = render(&AgentStats {
        hooks: Some((Stats::default(), Stats::default())),
        ..AgentStats::default()
    });
    for (what, text) in [("controller", controller), ("agent", agent)] {
        let mut child = Command::new("promtool")
            .args(["check", "metrics"])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("promtool (Debian prometheus; cargo xtask setup installs it)");
        child
            .stdin
            .take()
            .unwrap()
            .write_all(text.as_bytes())
            .unwrap();
        let out = child.wait_with_output().unwrap();
        let said = String::from_utf8_lossy(&out.stdout).into_owned()
            + &String::from_utf8_lossy(&out.stderr);
        assert!(
            out.status.success() && said.trim().is_empty(),
            "promtool on the {what}'s metrics: {said}\n{text}"
        );
    }
}

/// The agent's own `/metrics` follows its loop: reports, what it holds,
/// what it enforced, and a report that failed.
#[tokio::test]
async fn the_agents_metrics_follow_its_loop() {
    use sanlb::agent::{Agent, AgentConfig, metrics};
    let world = World::default();
    world.set_demand(&[(target(1), 1000.0)]);
    let dir = tempfile::tempdir().unwrap();
    let server = start(config(&[target(1)]), &dir.path().join("s.json"), 0).await;
    let cfg = AgentConfig {
        gateway: "gw1".into(),
        capacity: 1.0,
        interval: Duration::from_millis(100),
        long_poll: Duration::from_secs(1),
    };
    let mut agent = Agent::new(
        cfg,
        client(server.addr().port()),
        world.counters("gw1"),
        world.owner("gw1"),
    );
    let stats = agent.stats();
    // Past the grace, gw1 is handed the target and acquires it.
    for _ in 0..30 {
        agent.cycle().await.unwrap();
        if world.held("gw1").contains(&target(1)) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    agent.cycle().await.unwrap();
    let resp = metrics::app(stats.clone())
        .oneshot(Request::get("/metrics").body(Body::empty()).unwrap())
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    let text = String::from_utf8(
        resp.into_body()
            .collect()
            .await
            .unwrap()
            .to_bytes()
            .to_vec(),
    )
    .unwrap();
    let value = |name: &str| -> f64 {
        text.lines()
            .find_map(|l| l.strip_prefix(name))
            .unwrap_or_else(|| panic!("no {name} in\n{text}"))
            .trim()
            .parse()
            .unwrap()
    };
    assert!(value("sanlb_agent_reports_total{result=\"ok\"}") >= 2.0);
    assert_eq!(value("sanlb_agent_reports_total{result=\"failed\"}"), 0.0);
    assert_eq!(value("sanlb_agent_acquires_total"), 1.0);
    assert_eq!(value("sanlb_agent_addresses_held"), 1.0);
    assert_eq!(value("sanlb_agent_controller_reachable"), 1.0);
    assert!(value("sanlb_agent_applied_generation") >= 1.0);
    // The controller goes away: the next report fails and says so.
    server.stop().await;
    assert!(agent.cycle().await.is_err());
    let s = stats.lock().unwrap().clone();
    assert_eq!((s.report_failures, s.reachable), (1, false));
    assert!(metrics::render(&s).contains("sanlb_agent_controller_reachable 0"));
}

/// Every series the Grafana dashboard queries is one the controller or the
/// agent exposes (the lab test then runs the queries in Prometheus).
#[test]
fn the_dashboard_queries_only_series_that_exist() {
    use sanlb::agent::metrics::{AgentStats, render};
    let dash: Value = serde_json::from_str(include_str!(
        "../../../packaging/grafana/sanlb-dashboard.json"
    ))
    .unwrap();
    let c = Controller::new(config(&[target(1)]), None, Instant::now()).unwrap();
    let exposed = sanlb::controller::metrics::render(&c, Instant::now())
        + &render(&AgentStats {
            hooks: Some(Default::default()),
            ..AgentStats::default()
        });
    let types: Vec<&str> = exposed
        .lines()
        .filter_map(|l| l.strip_prefix("# TYPE "))
        .filter_map(|l| l.split(' ').next())
        .collect();
    let mut n = 0;
    for panel in dash["panels"].as_array().unwrap() {
        for t in panel["targets"].as_array().unwrap() {
            let expr = t["expr"].as_str().unwrap();
            for word in expr.split(|c: char| !(c.is_ascii_alphanumeric() || c == '_')) {
                if let Some(series) = word.strip_prefix("sanlb_").map(|_| word) {
                    let base = series.strip_suffix("_bucket").unwrap_or(series);
                    assert!(
                        types.contains(&base),
                        "{}: {series} is not exposed",
                        panel["title"]
                    );
                    n += 1;
                }
            }
        }
    }
    assert!(n >= 20, "{n} series");
}
