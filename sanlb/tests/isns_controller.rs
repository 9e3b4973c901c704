//! `sanlb controller --isns`: the real controller (the binary) publishing its
//! map to a real isnsd on loopback (its own configuration and database in a
//! temporary directory, killed and removed at the end), fed by fake agents
//! over its HTTP API; what each host is told is taken independently with
//! `isnsadm` under the host's own name (the DevAttrQry open-iscsi's iSNS
//! discovery sends), and compared with the map `/v1/status` shows.

use std::{
    collections::{BTreeMap, BTreeSet},
    net::IpAddr,
    process::{Child, Command, Stdio},
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use sanlb::{
    agent::client::Client,
    isns::{ClientConfig, Portal, Reconciler, ReconcilerConfig},
    proto::{EnforceCounters, Flow, Report, Status},
};

mod isnsd;

use isnsd::Isnsd;

const SANLB: &str = env!("CARGO_BIN_EXE_sanlb");
const TOKEN: &str = "isns-test-token";
const CONTROL: &str = "iqn.2026-11.test.sanlb:controller";
const T1: &str = "iqn.2026-11.test.sanlb:disk1";
const T2: &str = "iqn.2026-11.test.sanlb:disk2";
const H1: &str = "iqn.2026-11.test.sanlb:host1";
const H2: &str = "iqn.2026-11.test.sanlb:host2";
const HX: &str = "iqn.2026-11.test.sanlb:stranger";
const DATA_PORT: u16 = 3261;
/// The controller's interval (and the iSNS period).
const INTERVAL: Duration = Duration::from_millis(500);

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

fn e1() -> IpAddr {
    ip("198.18.1.1")
}

fn e2() -> IpAddr {
    ip("198.18.1.2")
}

fn h(i: u8) -> IpAddr {
    IpAddr::from([198, 18, 0, 100 + i])
}

/// The controller process, killed on drop.
struct Controller {
    child: Child,
    url: String,
    client: Client,
    _dir: tempfile::TempDir,
}

impl Controller {
    fn start(isnsd: &Isnsd, extra: &[&str]) -> Controller {
        Controller::start_at(&isnsd.addr(), extra)
    }

    fn start_at(server: &str, extra: &[&str]) -> Controller {
        let dir = tempfile::tempdir().unwrap();
        let token = dir.path().join("token");
        std::fs::write(&token, TOKEN).unwrap();
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let listen = format!("127.0.0.1:{port}");
        let log = std::fs::File::create(dir.path().join("controller.log")).unwrap();
        let child = Command::new(SANLB)
            .env("SANLB_CONFIG", "/dev/null")
            .env("RUST_LOG", "info")
            .args(["controller", "--listen", &listen, "--state"])
            .arg(dir.path().join("state.json"))
            .arg("--token-file")
            .arg(&token)
            .args(["--interval", "500ms", "--window", "2", "--lease", "1s"])
            .args(["--isns", server, "--isns-source", CONTROL])
            .args(["--isns-period", "500ms"])
            .args(["--host", &format!("{}={H1}", h(1))])
            .args(["--host", &format!("{}={H2}", h(2))])
            .args(extra)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap();
        let url = format!("http://{listen}");
        let client = Client::new(&url, TOKEN, Duration::from_secs(2)).unwrap();
        Controller {
            child,
            url,
            client,
            _dir: dir,
        }
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self._dir.path().join("controller.log")).unwrap_or_default()
    }

    async fn status(&self) -> Status {
        let end = Instant::now() + Duration::from_secs(10);
        loop {
            match self.client.status().await {
                Ok(s) => return s,
                Err(e) => assert!(Instant::now() < end, "no status: {e}\n{}", self.log()),
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Waits until `/metrics` shows `name` with a value `ok` accepts.
    async fn metric_eventually(&self, name: &str, ok: impl Fn(f64) -> bool) {
        let end = Instant::now() + Duration::from_secs(10);
        loop {
            let m = self.metrics().await;
            if m.get(name).copied().is_some_and(&ok) {
                return;
            }
            assert!(Instant::now() < end, "{name}: {:?}", m.get(name));
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// `/metrics` as name → value (series without labels).
    async fn metrics(&self) -> BTreeMap<String, f64> {
        let text = reqwest::Client::new()
            .get(format!("{}/metrics", self.url))
            .bearer_auth(TOKEN)
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        text.lines()
            .filter(|l| !l.starts_with('#') && !l.contains('{'))
            .filter_map(|l| l.split_once(' '))
            .filter_map(|(k, v)| Some((k.to_owned(), v.parse().ok()?)))
            .collect()
    }
}

impl Drop for Controller {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Fake gateways: each applies the shares it is handed (holds their
/// addresses, acknowledges their generation) and counts the sessions that
/// run on the addresses it holds.
#[derive(Default)]
struct World {
    /// (host, entity) → the address its session runs to.
    sessions: BTreeMap<(IpAddr, IpAddr), IpAddr>,
    /// Bytes/s of each (host, entity).
    rate: BTreeMap<(IpAddr, IpAddr), u64>,
    /// Cumulative bytes per (gateway, host, address).
    bytes: BTreeMap<(String, IpAddr, IpAddr), u64>,
}

struct FakeAgent {
    stop: tokio::sync::oneshot::Sender<()>,
    task: tokio::task::JoinHandle<()>,
}

impl FakeAgent {
    fn spawn(world: Arc<Mutex<World>>, url: &str, gateway: &str) -> FakeAgent {
        let client = Client::new(url, TOKEN, Duration::from_secs(2)).unwrap();
        let gateway = gateway.to_owned();
        // Every run a boot of its own.
        static RUNS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        let boot_id = format!(
            "boot-{gateway}-{}",
            RUNS.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
        );
        let (stop, mut rx) = tokio::sync::oneshot::channel();
        let task = tokio::spawn(async move {
            let mut seq = 0;
            let mut applied = 0;
            let mut owned: BTreeSet<IpAddr> = BTreeSet::new();
            let start = Instant::now();
            let mut last = Instant::now();
            loop {
                let dt = last.elapsed().as_millis() as u64;
                last = Instant::now();
                let flows = {
                    let mut w = world.lock().unwrap();
                    let w = &mut *w;
                    for (pair, addr) in &w.sessions {
                        if owned.contains(addr) {
                            *w.bytes.entry((gateway.clone(), pair.0, *addr)).or_default() +=
                                w.rate.get(pair).copied().unwrap_or(0) * dt / 1000;
                        }
                    }
                    w.bytes
                        .iter()
                        .filter(|((g, _, _), _)| *g == gateway)
                        .map(|((_, host, addr), b)| Flow {
                            initiator: *host,
                            target: *addr,
                            to_target_bytes: *b,
                            to_initiator_bytes: 0,
                        })
                        .collect()
                };
                let r = Report {
                    gateway: gateway.clone(),
                    boot_id: boot_id.clone(),
                    seq,
                    uptime_ms: start.elapsed().as_millis() as u64 + 1,
                    capacity: 1.0,
                    applied,
                    owned: owned.iter().copied().collect(),
                    enforce: EnforceCounters::default(),
                    flows,
                };
                seq += 1;
                if let Ok(reply) = client.report(&r).await {
                    if let Some(a) = reply.share.addresses {
                        owned = a.into_iter().collect();
                    }
                    applied = reply.share.generation;
                }
                tokio::select! {
                    _ = &mut rx => return,
                    () = tokio::time::sleep(Duration::from_millis(100)) => {}
                }
            }
        });
        FakeAgent { stop, task }
    }

    async fn kill(self) {
        let _ = self.stop.send(());
        let _ = self.task.await;
    }
}

/// The portal the map gives `host` for `entity` in pair mode: its pair's
/// gateway, else the gateway running the entity's portal; that gateway's
/// data address for the entity.
fn pair_portal(st: &Status, host: IpAddr, entity: IpAddr) -> Option<Portal> {
    let assigned = |hst: Option<IpAddr>| {
        st.map
            .iter()
            .find(|m| m.host == hst && m.target == entity)
            .and_then(|m| m.ownership.assigned().map(str::to_owned))
    };
    let g = assigned(Some(host)).or_else(|| assigned(None))?;
    st.data_addresses
        .iter()
        .find(|d| d.target == entity && d.gateway == g)
        .map(|d| Portal::new(d.address, DATA_PORT))
}

fn pair_expected(st: &Status, host: IpAddr) -> BTreeMap<String, BTreeSet<Portal>> {
    [(e1(), T1), (e2(), T2)]
        .into_iter()
        .filter_map(|(e, t)| Some((t.to_owned(), BTreeSet::from([pair_portal(st, host, e)?]))))
        .collect()
}

/// Waits until `isnsadm` as each named host shows what the status shows
/// (both read again each round), and the stranger nothing. Returns the
/// status it matched.
async fn converged(c: &Controller, s: &Isnsd, limit: Duration, what: &str) -> Status {
    let end = Instant::now() + limit;
    loop {
        let st = c.status().await;
        let want1 = pair_expected(&st, h(1));
        let want2 = pair_expected(&st, h(2));
        let (v1, v2, vx) = (s.view(H1), s.view(H2), s.view(HX));
        if v1 == want1 && v2 == want2 && vx.is_empty() && !want1.is_empty() {
            return st;
        }
        assert!(
            Instant::now() < end,
            "{what}: the iSNS answers never matched the map:\n host1 {v1:?}, want {want1:?}\n host2 {v2:?}, want {want2:?}\n stranger {vx:?}\n{}",
            c.log()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The pair of `host` for `entity` as the status shows it.
fn pair_gateway(st: &Status, host: IpAddr, entity: IpAddr) -> Option<String> {
    st.map
        .iter()
        .find(|m| m.host == Some(host) && m.target == entity)
        .and_then(|m| m.ownership.assigned().map(str::to_owned))
}

/// An independent reader of the server, under a prefix of its own.
async fn audit(s: &Isnsd) -> sanlb::isns::ServerState {
    let mut r = Reconciler::new(
        ClientConfig::new(s.addr(), "iqn.2026-11.test.sanlb:auditor"),
        ReconcilerConfig {
            prefix: "audit".into(),
            ..ReconcilerConfig::default()
        },
    )
    .unwrap();
    r.read_state().await.unwrap()
}

/// sanlb's domains on the server: name → (node members, portal members).
fn sanlb_domains(
    state: &sanlb::isns::ServerState,
) -> BTreeMap<String, (BTreeSet<String>, BTreeSet<Portal>)> {
    state
        .dds
        .values()
        .filter_map(|d| {
            let name = d.name.clone()?;
            name.starts_with("sanlb:").then(|| {
                (
                    name,
                    (
                        d.node_names().into_iter().map(str::to_owned).collect(),
                        d.portals()
                            .into_iter()
                            .map(|p| Portal::new(p.ip(), p.port as u16))
                            .collect(),
                    ),
                )
            })
        })
        .collect()
}

/// What sanlb's domains must be: one per named host and target, holding
/// the host, the target and the host's portal.
fn domains_expected(st: &Status) -> BTreeMap<String, (BTreeSet<String>, BTreeSet<Portal>)> {
    let mut out = BTreeMap::new();
    for (hip, hname) in [(h(1), H1), (h(2), H2)] {
        for (t, portals) in pair_expected(st, hip) {
            out.insert(
                format!("sanlb:dd:{hname}|{t}"),
                (BTreeSet::from([hname.to_owned(), t.clone()]), portals),
            );
        }
    }
    out
}

fn median(v: &mut [Duration]) -> Duration {
    v.sort();
    v[v.len() / 2]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pair_mode_hosts_are_told_their_gateway_and_follow_moves() {
    let mut s = Isnsd::start();
    let c = Controller::start(
        &s,
        &[
            "--mode",
            "pair",
            "--target",
            &format!("{}={T1}", e1()),
            "--target",
            &format!("{}={T2}", e2()),
            "--data-pool",
            "198.18.2.0/24",
            "--data-port",
            &DATA_PORT.to_string(),
        ],
    );
    let world = Arc::new(Mutex::new(World::default()));
    let gw1 = FakeAgent::spawn(world.clone(), &c.url, "gw1");
    let gw2 = FakeAgent::spawn(world.clone(), &c.url, "gw2");

    // 1. Published: the named hosts see, per target, the data address of
    //    the gateway running its portal (no pair yet); the stranger nothing.
    let st = converged(&c, &s, Duration::from_secs(20), "first publication").await;
    assert_eq!(st.data_addresses.len(), 4, "{:?}", st.data_addresses);
    let first = pair_expected(&st, h(1));
    assert_eq!(first.len(), 2, "{first:?}");

    // 2. The hosts log in where they are told: both to disk1 on the same
    //    gateway (and an unnamed host to disk2). The optimiser splits them;
    //    the host moved is told its new gateway within about an interval.
    {
        let mut w = world.lock().unwrap();
        for (host, name) in [(h(1), H1), (h(2), H2)] {
            let p = s.view(name)[T1].first().copied().unwrap();
            w.sessions.insert((host, e1()), p.addr);
            w.rate.insert((host, e1()), 50_000_000);
        }
        let p = pair_portal(&st, h(1), e2()).unwrap();
        w.sessions.insert((h(3), e2()), p.addr);
        w.rate.insert((h(3), e2()), 1_000);
    }
    let mut latencies = Vec::new();
    let (moved, to, t0) = {
        let end = Instant::now() + Duration::from_secs(30);
        loop {
            let st = c.status().await;
            let g1 = pair_gateway(&st, h(1), e1());
            let g2 = pair_gateway(&st, h(2), e1());
            if let (Some(a), Some(b)) = (&g1, &g2)
                && a != b
            {
                // Which one moved: the one whose session is elsewhere.
                let w = world.lock().unwrap();
                let on = |host| {
                    st.data_addresses
                        .iter()
                        .find(|d| Some(d.address) == w.sessions.get(&(host, e1())).copied())
                        .map(|d| d.gateway.clone())
                };
                let (moved, to) = if on(h(1)) != g1 {
                    (h(1), a.clone())
                } else {
                    (h(2), b.clone())
                };
                break (moved, to, Instant::now());
            }
            assert!(Instant::now() < end, "no rebalance: {st:?}\n{}", c.log());
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    };
    let name = if moved == h(1) { H1 } else { H2 };
    let st = c.status().await;
    let want = Portal::new(
        st.data_addresses
            .iter()
            .find(|d| d.target == e1() && d.gateway == to)
            .unwrap()
            .address,
        DATA_PORT,
    );
    let end = t0 + Duration::from_secs(10);
    while s.view(name).get(T1) != Some(&BTreeSet::from([want])) {
        assert!(Instant::now() < end, "{name} never told {want}");
    }
    latencies.push(t0.elapsed());
    // The host follows its new answer.
    world
        .lock()
        .unwrap()
        .sessions
        .insert((moved, e1()), want.addr);
    let st = converged(&c, &s, Duration::from_secs(10), "after the rebalance").await;
    assert_ne!(pair_gateway(&st, h(1), e1()), pair_gateway(&st, h(2), e1()));
    // Host 3 has no name: counted once its traffic is in the window.
    c.metric_eventually("sanlb_isns_unnamed_hosts", |v| v == 1.0)
        .await;
    let m = c.metrics().await;
    assert_eq!(m["sanlb_isns_up"], 1.0, "{m:?}");
    assert_eq!(m["sanlb_isns_hosts"], 2.0);
    assert_eq!(m["sanlb_isns_targets"], 2.0);
    assert_eq!(m["sanlb_isns_ambiguous_pairs"], 0.0);

    // 3. A hand-made stray member: put right at the next sync.
    let state = audit(&s).await;
    let dd = state
        .dds
        .iter()
        .find(|(_, d)| d.name.as_deref() == Some(&format!("sanlb:dd:{H1}|{T1}")))
        .map(|(id, _)| *id)
        .unwrap();
    let other = st
        .data_addresses
        .iter()
        .find(|d| d.target == e1() && Some(&d.gateway) != pair_gateway(&st, h(1), e1()).as_ref())
        .unwrap()
        .address;
    let t0 = Instant::now();
    s.isnsadm(
        "iqn.2026-11.test.sanlb:admin",
        &[
            "--dd-register",
            &format!("dd-id={dd}"),
            &format!("member-addr=::ffff:{other}"),
            &format!("member-port={DATA_PORT}"),
        ],
    );
    let seen_stray = s.view(H1).get(T1).is_some_and(|p| p.len() == 2);
    let st = converged(&c, &s, Duration::from_secs(10), "after a stray member").await;
    let fixed = t0.elapsed();
    assert_eq!(sanlb_domains(&audit(&s).await), domains_expected(&st));

    // 4. The server away while the map changes: the controller keeps
    //    steering, counts the failures, and resynchronises everything
    //    (stale registrations of the old map in the server's database
    //    removed, new ones added) once the server is back.
    let before = c.metrics().await["sanlb_isns_sync_failures_total"];
    s.stop();
    let generation = c.status().await.generation;
    let (dying, survivor, dead) = if to == "gw2" {
        (gw2, gw1, "gw2")
    } else {
        (gw1, gw2, "gw1")
    };
    dying.kill().await;
    let end = Instant::now() + Duration::from_secs(20);
    let st = loop {
        let st = c.status().await;
        let away = st.gateways.iter().any(|g| g.name == dead && !g.alive);
        let none_there = st.map.iter().all(|m| m.ownership.assigned() != Some(dead));
        if away && none_there && st.generation > generation {
            break st;
        }
        assert!(Instant::now() < end, "no failover: {st:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    c.metric_eventually("sanlb_isns_sync_failures_total", |v| v > before)
        .await;
    let m = c.metrics().await;
    assert_eq!(m["sanlb_isns_up"], 0.0, "{m:?}");
    assert!(m["sanlb_isns_published_generation"] < st.generation as f64);
    // The hosts follow the failover on their own later; the server comes
    // back with its old database.
    s.spawn();
    let back = Instant::now();
    let st = converged(
        &c,
        &s,
        Duration::from_secs(10),
        "after the server came back",
    )
    .await;
    let resync = back.elapsed();
    assert_eq!(sanlb_domains(&audit(&s).await), domains_expected(&st));
    c.metric_eventually("sanlb_isns_published_generation", |v| {
        v >= st.generation as f64
    })
    .await;
    assert_eq!(c.metrics().await["sanlb_isns_up"], 1.0);

    // 5. Moves for the figure, each timed from the map change in
    //    /v1/status to the new answer: the gateway comes back (a new agent
    //    run) and the load is split again; then, three times, the gateway
    //    carrying host1 dies (failover) and comes back (rebalance).
    let mut agents = BTreeMap::from([(dead.to_owned(), None), (other_name(dead), Some(survivor))]);
    agents.insert(
        dead.to_owned(),
        Some(FakeAgent::spawn(world.clone(), &c.url, dead)),
    );
    follow(&c, &world).await;
    latencies.push(time_next_move(&c, &s, Duration::from_secs(30)).await);
    for _ in 0..3 {
        follow(&c, &world).await;
        let st = c.status().await;
        let carrier = pair_gateway(&st, h(1), e1()).unwrap();
        agents
            .get_mut(&carrier)
            .unwrap()
            .take()
            .unwrap()
            .kill()
            .await;
        latencies.push(time_next_move(&c, &s, Duration::from_secs(30)).await);
        agents.insert(
            carrier.clone(),
            Some(FakeAgent::spawn(world.clone(), &c.url, &carrier)),
        );
        follow(&c, &world).await;
        latencies.push(time_next_move(&c, &s, Duration::from_secs(30)).await);
    }
    converged(&c, &s, Duration::from_secs(10), "at the end").await;
    let m = c.metrics().await;
    let n = latencies.len();
    let mut sorted = latencies.clone();
    eprintln!(
        "isns (controller binary, pair mode, interval {INTERVAL:?}): map change seen in /v1/status -> isnsadm as the host shows the new portal: {n} moves, median {:?}, min {:?}, max {:?}; last sync {:.1} ms, {} requests; stray member visible before the fix: {seen_stray}, put right after {fixed:?}; server back -> hosts' answers right after {resync:?}",
        median(&mut sorted),
        sorted[0],
        sorted[n - 1],
        m["sanlb_isns_last_sync_seconds"] * 1000.0,
        m["sanlb_isns_last_sync_requests"],
    );
    for a in agents.into_values().flatten() {
        a.kill().await;
    }
}

fn other_name(g: &str) -> String {
    if g == "gw1" { "gw2" } else { "gw1" }.to_owned()
}

/// The hosts log in where they are told (a rediscovery).
async fn follow(c: &Controller, world: &Mutex<World>) {
    let st = c.status().await;
    let mut w = world.lock().unwrap();
    for host in [h(1), h(2)] {
        if let Some(p) = pair_portal(&st, host, e1()) {
            w.sessions.insert((host, e1()), p.addr);
        }
    }
}

/// Waits for the map to move host1's or host2's disk1 pair, then for
/// isnsadm as that host to show the new portal: the time between.
async fn time_next_move(c: &Controller, s: &Isnsd, limit: Duration) -> Duration {
    let st = c.status().await;
    let g1 = pair_gateway(&st, h(1), e1());
    let g2 = pair_gateway(&st, h(2), e1());
    let end = Instant::now() + limit;
    let (host, name, t0, st) = loop {
        let st = c.status().await;
        if pair_gateway(&st, h(1), e1()) != g1 {
            break (h(1), H1, Instant::now(), st);
        }
        if pair_gateway(&st, h(2), e1()) != g2 {
            break (h(2), H2, Instant::now(), st);
        }
        assert!(Instant::now() < end, "no move: {st:?}\n{}", c.log());
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let want = pair_portal(&st, host, e1()).unwrap();
    let end = t0 + Duration::from_secs(10);
    while s.view(name).get(T1) != Some(&BTreeSet::from([want])) {
        assert!(Instant::now() < end, "{name} never told {want}");
    }
    t0.elapsed()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn target_mode_hosts_see_the_entity_address() {
    let s = Isnsd::start();
    let c = Controller::start(
        &s,
        &[
            "--target",
            &format!("{}={T1}", e1()),
            "--target",
            &format!("{}={T2}", e2()),
            // A third entity without a name: not published, counted.
            "--target",
            "198.18.1.3",
        ],
    );
    let world = Arc::new(Mutex::new(World::default()));
    let gw1 = FakeAgent::spawn(world.clone(), &c.url, "gw1");
    let want: BTreeMap<String, BTreeSet<Portal>> = [
        (T1.to_owned(), BTreeSet::from([Portal::new(e1(), 3260)])),
        (T2.to_owned(), BTreeSet::from([Portal::new(e2(), 3260)])),
    ]
    .into();
    let end = Instant::now() + Duration::from_secs(20);
    while s.view(H1) != want || s.view(H2) != want {
        assert!(
            Instant::now() < end,
            "host1 {:?}, host2 {:?}\n{}",
            s.view(H1),
            s.view(H2),
            c.log()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(s.view(HX).is_empty());
    c.metric_eventually("sanlb_isns_unnamed_entities", |v| v == 1.0)
        .await;
    assert_eq!(c.metrics().await["sanlb_isns_up"], 1.0);
    gw1.kill().await;
}

/// A server that answers every connection with bytes that are no iSNSP
/// reply: the controller logs and counts the failures, retries with
/// backoff, and steers on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_answering_garbage_is_counted_and_steering_goes_on() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    let accepted = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let counter = accepted.clone();
    let fake = tokio::spawn(async move {
        use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
        loop {
            let Ok((mut conn, _)) = listener.accept().await else {
                return;
            };
            counter.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            let mut buf = [0u8; 4096];
            let _ = conn.read(&mut buf).await;
            // Version 9, a length past the end, then junk.
            let _ = conn
                .write_all(&[0, 9, 0x80, 0x05, 0xff, 0xf0, 0, 0, 1, 2, 3, 4, 0xde, 0xad])
                .await;
        }
    });
    let c = Controller::start_at(&addr, &["--target", &format!("{}={T1}", e1())]);
    let world = Arc::new(Mutex::new(World::default()));
    let gw1 = FakeAgent::spawn(world.clone(), &c.url, "gw1");
    c.metric_eventually("sanlb_isns_sync_failures_total", |v| v >= 3.0)
        .await;
    // Steering went on: the entity is handed to the gateway.
    let end = Instant::now() + Duration::from_secs(10);
    loop {
        let st = c.status().await;
        if st
            .map
            .iter()
            .any(|m| m.target == e1() && m.ownership.assigned() == Some("gw1"))
        {
            break;
        }
        assert!(Instant::now() < end, "not steering: {st:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let m = c.metrics().await;
    assert_eq!(m["sanlb_isns_up"], 0.0);
    assert_eq!(m["sanlb_isns_syncs_total"], 0.0);
    assert!(accepted.load(std::sync::atomic::Ordering::Relaxed) >= 3);
    let log = c.log();
    assert!(log.contains("cannot publish the map"), "{log}");
    assert!(!log.contains("panicked"), "{log}");
    gw1.kill().await;
    fake.abort();
}

#[test]
fn isns_flags_are_checked() {
    let dir = tempfile::tempdir().unwrap();
    let token = dir.path().join("token");
    std::fs::write(&token, TOKEN).unwrap();
    let run = |args: &[&str]| {
        let out = Command::new(SANLB)
            .env("SANLB_CONFIG", "/dev/null")
            .args(["controller", "--listen", "127.0.0.1:1", "--token-file"])
            .arg(&token)
            .args(["--target", "198.18.1.1=iqn.2026-11.test.sanlb:t1"])
            .args(args)
            .output()
            .unwrap();
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    for (args, says) in [
        (&["--host", "198.18.0.1=iqn.x"][..], "need --isns"),
        (
            &["--isns", "127.0.0.1", "--host", "198.18.0.1"][..],
            "ADDR=IQN",
        ),
        (
            &["--isns", "127.0.0.1", "--host", "nope=iqn.x"][..],
            "not an IP address",
        ),
        (
            &[
                "--isns",
                "127.0.0.1",
                "--host",
                "198.18.0.1=iqn.2026-11.test.sanlb:t1",
            ][..],
            "--host 198.18.0.1",
        ),
        (
            &[
                "--isns",
                "127.0.0.1",
                "--host",
                "198.18.0.1=iqn.a",
                "--host",
                "198.18.0.2=iqn.a",
            ][..],
            "same name",
        ),
        (
            &["--isns", "127.0.0.1", "--isns-source", "a b"][..],
            "--isns-source",
        ),
        (
            &["--isns", "127.0.0.1", "--isns-period", "0s"][..],
            "--isns-period",
        ),
    ] {
        let (code, err) = run(args);
        assert_eq!(code, Some(2), "{args:?}: {err}");
        assert!(err.contains(says), "{args:?}: {err}");
    }
}
