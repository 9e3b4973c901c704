//! Issue 18 in the lab: advise mode moves nothing while it reports the
//! moves it would make; and Debian's Prometheus, scraping the controller
//! (with the read-only token) and the agents' own `/metrics`, answers every
//! query of the Grafana dashboard with data.

use std::{
    collections::BTreeMap,
    fs,
    net::Ipv4Addr,
    path::{Path, PathBuf},
    thread,
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

use serde_json::Value;
use xtask::lab::{
    self, Lab, Placement, Process, agent,
    loadgen::{self, Workload},
    proc,
};

const PORT: u16 = 7878;
const AGENT_METRICS_PORT: u16 = 7391;
const PROMETHEUS_PORT: u16 = 9090;

struct Setup {
    // Processes stop before the lab's namespaces go.
    _agents: Vec<Process>,
    controller: Process,
    /// Unix ms when the controller under test started.
    since_ms: u64,
    sanlb: PathBuf,
    lab: Lab,
}

fn unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64
}

fn url() -> String {
    format!("http://{}:{PORT}", lab::MANAGEMENT_ADDR)
}

/// A controller (with `extra` flags) in the management namespace, its state
/// in the lab's folder, the three targets named up front.
fn controller(lab: &Lab, sanlb: &Path, extra: &[&str]) -> Process {
    let mgmt = lab.management().unwrap();
    let mut cmd = mgmt.ns.command(&sanlb.to_string_lossy());
    cmd.arg("controller")
        .args(["--listen", &format!("{}:{PORT}", mgmt.addr)])
        .arg("--state")
        .arg(lab.dir().join("state.json"))
        .arg("--token-file")
        .arg(lab.dir().join("token"))
        .arg("--read-token-file")
        .arg(lab.dir().join("read-token"))
        .args(["--interval", "2s", "--lease", "3s", "--window", "2"])
        .args(["--storage", "198.18.1.0/24"]);
    for t in lab.targets() {
        cmd.args(["--target", &t.addr.to_string()]);
    }
    cmd.args(extra);
    lab.spawn("controller", cmd).unwrap()
}

/// The agent on `g`, serving its own metrics.
fn agent_on(lab: &Lab, sanlb: &Path, g: &lab::Gateway) -> Process {
    let args: Vec<String> = vec![
        "--controller".to_owned(),
        url(),
        "--gateway".into(),
        g.name.clone(),
        "--token-file".into(),
        lab.dir().join("token").to_string_lossy().into_owned(),
        "--interval".into(),
        "1s".into(),
        "--metrics-listen".into(),
        format!("{}:{AGENT_METRICS_PORT}", g.addr),
    ];
    agent::start(lab, sanlb, g, &args).unwrap()
}

/// Three gateways and three targets, no address placed, the tokens.
fn lab() -> (Lab, PathBuf) {
    let sanlb = agent::sanlb_binary().unwrap();
    let lab = Lab::builder()
        .hosts(1)
        .gateways(3)
        .targets(3)
        .disk_size(16 << 20)
        .placement(Placement::Unassigned)
        .management(true)
        .build()
        .unwrap();
    fs::write(lab.dir().join("token"), "lab-agents-token").unwrap();
    fs::write(lab.dir().join("read-token"), "lab-read-token").unwrap();
    (lab, sanlb)
}

/// A controller and an agent on every gateway; the controller places the
/// addresses once its start-up grace is over.
fn setup() -> Setup {
    let (lab, sanlb) = lab();
    let since_ms = unix_ms();
    let controller = controller(&lab, &sanlb, &[]);
    let agents = lab
        .gateways()
        .iter()
        .map(|g| agent_on(&lab, &sanlb, g))
        .collect();
    Setup {
        _agents: agents,
        controller,
        since_ms,
        sanlb,
        lab,
    }
}

/// An advise-mode controller over a map it did not make: first a normal
/// controller with only gw1's agent, which places every address on gw1
/// (its agent acquires them); then that controller is replaced by one with
/// `--advise` on the same state, and gw2's and gw3's agents start.
fn setup_advise() -> Setup {
    let (lab, sanlb) = lab();
    let gw1 = agent_on(&lab, &sanlb, &lab.gateways()[0]);
    let first = controller(&lab, &sanlb, &[]);
    let start = Instant::now();
    loop {
        let placed = owners(&lab);
        if placed.len() == 3 && placed.values().all(|o| o.as_slice() == ["gw1"]) {
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "every address on gw1: {placed:?}"
        );
        thread::sleep(Duration::from_millis(250));
    }
    drop(first);
    let since_ms = unix_ms();
    let advising = controller(&lab, &sanlb, &["--advise"]);
    let mut agents = vec![gw1];
    agents.extend(
        lab.gateways()[1..]
            .iter()
            .map(|g| agent_on(&lab, &sanlb, g)),
    );
    Setup {
        _agents: agents,
        controller: advising,
        since_ms,
        sanlb,
        lab,
    }
}

/// Skewed load on every target for `seconds`, verified.
fn start_load(s: &Setup, seconds: u64) -> Process {
    let bin = loadgen::build().unwrap();
    let workloads: Vec<Workload> = s
        .lab
        .targets()
        .iter()
        .enumerate()
        .map(|(i, t)| Workload {
            rate: Some((1 << 20) * (i as u64 + 1)),
            read_pct: 70,
            blocks: Some(4096),
            verify: true,
            ..Workload::new(t)
        })
        .collect();
    let cmd = loadgen::command(
        &bin,
        &s.lab.hosts()[0],
        &workloads,
        Duration::from_secs(seconds),
        7,
    );
    s.lab.spawn("loadgen", cmd).unwrap()
}

fn finish_load(lg: &mut Process) {
    let status = lg
        .wait_timeout(Duration::from_secs(120))
        .unwrap()
        .expect("the loadgen ends");
    assert!(status.success(), "loadgen {status}: {}", lg.stderr());
    for (name, totals, _, wrong) in loadgen::finals(&lg.stdout()).unwrap() {
        assert_eq!(
            (totals.errors, totals.verify_errors, wrong),
            (0, 0, 0),
            "{name}"
        );
    }
}

/// `sanlb status --json` from the management namespace (read-only token).
fn status(s: &Setup) -> Value {
    let mgmt = s.lab.management().unwrap();
    let mut cmd = mgmt.ns.command(&s.sanlb.to_string_lossy());
    cmd.args(["status", "--controller", &url(), "--json", "--token-file"])
        .arg(s.lab.dir().join("read-token"));
    let out = proc::run(&mut cmd).unwrap_or_else(|e| panic!("{e:#}"));
    serde_json::from_str(&out).unwrap()
}

/// curl inside the management namespace.
fn try_curl(s: &Setup, args: &[&str]) -> anyhow::Result<String> {
    let mgmt = s.lab.management().unwrap();
    let mut cmd = mgmt.ns.command("curl");
    cmd.args(["-sS", "--max-time", "10"]).args(args);
    proc::run(&mut cmd)
}

fn curl(s: &Setup, args: &[&str]) -> String {
    try_curl(s, args).unwrap_or_else(|e| panic!("curl {args:?}: {e:#}"))
}

fn prometheus_url() -> String {
    format!("http://{}:{PROMETHEUS_PORT}", lab::MANAGEMENT_ADDR)
}

fn owners(lab: &Lab) -> BTreeMap<Ipv4Addr, Vec<String>> {
    lab.placement().unwrap()
}

#[test]
#[ignore = "privileged: cargo xtask test runs it as root"]
fn advise_mode_moves_nothing_and_reports_the_moves_it_would_make() {
    let s = setup_advise();
    let before = owners(&s.lab);
    assert!(
        before.values().all(|o| o.as_slice() == ["gw1"]),
        "every address on gw1: {before:?}"
    );
    let mut lg = start_load(&s, 20);
    // Watch every address through enough intervals for several decisions.
    let end = Instant::now() + Duration::from_secs(18);
    while Instant::now() < end {
        assert_eq!(owners(&s.lab), before, "an address moved in advise mode");
        thread::sleep(Duration::from_millis(250));
    }
    let st = status(&s);
    assert_eq!(st["controls"]["advise"], true);
    // The first controller's decision (everything on gw1) is in the
    // history it left; the advising one's come after.
    let decisions: Vec<&Value> = st["rebalances"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|r| r["at_ms"].as_u64().unwrap() >= s.since_ms)
        .collect();
    assert!(
        decisions.iter().all(|r| r["adopted"] == false),
        "{decisions:?}"
    );
    let advised: Vec<&Value> = decisions
        .iter()
        .copied()
        .filter(|r| r["result"] == "advised")
        .collect();
    let would_move = advised
        .iter()
        .find(|r| r["moves"].as_u64().unwrap() > 0)
        .unwrap_or_else(|| panic!("no advice with moves: {}", st["rebalances"]));
    let changes = would_move["changes"].as_array().unwrap();
    assert!(!changes.is_empty());
    assert!(
        changes
            .iter()
            .all(|c| c["from"] == "gw1" && c["to"] != "gw1")
    );
    eprintln!(
        "advise mode: {} advised decisions, e.g. {} moves ({}), nothing moved",
        advised.len(),
        would_move["moves"],
        would_move["reason"]
    );
    let metrics = curl(
        &s,
        &[
            "-H",
            "Authorization: Bearer lab-read-token",
            &format!("{}/metrics", url()),
        ],
    );
    let value = |name: &str| -> f64 {
        metrics
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .unwrap_or_else(|| panic!("no {name}"))
            .trim()
            .parse()
            .unwrap()
    };
    assert_eq!(value("sanlb_advise_mode "), 1.0);
    assert!(value("sanlb_rebalances_total{result=\"advised\"} ") >= 1.0);
    assert_eq!(value("sanlb_rebalances_total{result=\"adopted\"} "), 0.0);
    assert_eq!(value("sanlb_moves_total "), 0.0);
    assert!(value("sanlb_withheld_moves ") >= 1.0);
    // And the log names each move it would make.
    let log = s.controller.stderr();
    assert!(
        log.lines().any(|l| l.contains("would move")
            && l.contains("from=\"gw1\"")
            && l.contains("result=\"advised\"")),
        "{log}"
    );
    finish_load(&mut lg);
    assert_eq!(owners(&s.lab), before);
}

/// Starts Prometheus in the management namespace, scraping the controller
/// and the agents every second.
fn prometheus(s: &Setup) -> Process {
    let dir = s.lab.dir().join("prometheus");
    fs::create_dir_all(dir.join("data")).unwrap();
    let agents: Vec<String> = s
        .lab
        .gateways()
        .iter()
        .map(|g| format!("'{}:{AGENT_METRICS_PORT}'", g.addr))
        .collect();
    let config = format!(
        "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\n\
         scrape_configs:\n\
         \x20 - job_name: sanlb-controller\n\
         \x20   authorization:\n\
         \x20     credentials_file: {}\n\
         \x20   static_configs:\n\
         \x20     - targets: ['{}:{PORT}']\n\
         \x20 - job_name: sanlb-agent\n\
         \x20   static_configs:\n\
         \x20     - targets: [{}]\n",
        s.lab.dir().join("read-token").display(),
        lab::MANAGEMENT_ADDR,
        agents.join(", ")
    );
    fs::write(dir.join("prometheus.yml"), config).unwrap();
    let mgmt = s.lab.management().unwrap();
    let mut cmd = mgmt.ns.command("prometheus");
    cmd.arg(format!(
        "--config.file={}",
        dir.join("prometheus.yml").display()
    ))
    .arg(format!(
        "--storage.tsdb.path={}",
        dir.join("data").display()
    ))
    .arg(format!(
        "--web.listen-address={}:{PROMETHEUS_PORT}",
        lab::MANAGEMENT_ADDR
    ));
    s.lab.spawn("prometheus", cmd).unwrap()
}

/// `expr` through Prometheus's HTTP API: the result's series.
fn query(s: &Setup, expr: &str) -> Vec<Value> {
    let out = curl(
        s,
        &[
            "-G",
            &format!("{}/api/v1/query", prometheus_url()),
            "--data-urlencode",
            &format!("query={expr}"),
        ],
    );
    let v: Value = serde_json::from_str(&out).unwrap_or_else(|e| panic!("{expr}: {e}: {out}"));
    assert_eq!(v["status"], "success", "{expr}: {v}");
    v["data"]["result"].as_array().cloned().unwrap_or_default()
}

fn dashboard() -> Value {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .join("packaging/grafana/sanlb-dashboard.json");
    serde_json::from_str(&fs::read_to_string(path).unwrap()).unwrap()
}

#[test]
#[ignore = "privileged: cargo xtask test runs it as root"]
fn prometheus_answers_every_query_of_the_dashboard() {
    let s = setup();
    let mut prom = prometheus(&s);
    let mut lg = start_load(&s, 40);
    // Every target up in Prometheus: the controller and three agents.
    let start = Instant::now();
    loop {
        let ready = try_curl(&s, &[&format!("{}/-/ready", prometheus_url())]).is_ok();
        let up = if ready { query(&s, "up == 1") } else { vec![] };
        if up.len() == 4 {
            break;
        }
        if let Some(st) = prom.try_status().unwrap() {
            panic!("prometheus exited ({st}): {}", prom.stderr());
        }
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "targets up: {up:?}; {:?}",
            try_curl(&s, &[&format!("{}/api/v1/targets", prometheus_url())])
        );
        thread::sleep(Duration::from_millis(500));
    }
    let up_after = start.elapsed();
    // A few minutes' windows are not needed: the queries' ranges (1m, 5m)
    // hold the samples scraped so far once two of them are in.
    thread::sleep(Duration::from_secs(25));
    let dash = dashboard();
    let mut n = 0;
    for panel in dash["panels"].as_array().unwrap() {
        for t in panel["targets"].as_array().unwrap() {
            let expr = t["expr"].as_str().unwrap();
            let result = query(&s, expr);
            assert!(
                !result.is_empty(),
                "panel {}: {expr} returned nothing",
                panel["title"]
            );
            // Data, not NaN (a quantile of no observations, a ratio of 0/0).
            for r in &result {
                let v: f64 = r["value"][1].as_str().unwrap().parse().unwrap();
                assert!(v.is_finite(), "panel {}: {expr}: {r}", panel["title"]);
            }
            eprintln!(
                "{:<45} {:<90} {} series",
                panel["title"].as_str().unwrap(),
                expr,
                result.len()
            );
            n += 1;
        }
    }
    // The data mean what they say: three gateways carried load, utilisation
    // is a ratio around 1, and the bytes counters grow.
    let util = query(&s, "sanlb_gateway_utilisation");
    assert_eq!(util.len(), 3);
    for u in &util {
        let v: f64 = u["value"][1].as_str().unwrap().parse().unwrap();
        assert!((0.0..=3.0).contains(&v), "utilisation {u}");
    }
    let bytes = query(&s, "sum(rate(sanlb_gateway_bytes_total[30s]))");
    let rate: f64 = bytes[0]["value"][1].as_str().unwrap().parse().unwrap();
    assert!(rate > 1e6, "counted {rate} bytes/s");
    eprintln!(
        "prometheus: 4 targets up {:.1} s after start; {n} dashboard queries answered; counted {:.1} MiB/s",
        up_after.as_secs_f64(),
        rate / f64::from(1 << 20)
    );
    finish_load(&mut lg);
    drop(prom);
}
