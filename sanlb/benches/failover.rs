//! Failover of real controllers (issue 15; a benchmark, not a timed test):
//! `cargo bench -p sanlb --bench failover` (`SANLB_FAILOVER_RUNS=N`, 12 by
//! default).
//!
//! Three `sanlb controller --etcd` processes (this build's binary) on
//! loopback with one etcd member (a temporary data directory), at the
//! default settings (leader TTL 2 s, interval 5 s, window 6, gateway lease
//! 3 s), and four agents in this process (fake counters and address owners)
//! given every controller, reporting every second. Each run kills the
//! leader with SIGKILL at a different phase of its keep-alive period and
//! measures:
//!
//! 1. kill → another controller serves as leader (answers agents' reports
//!    and shares, its state loaded from etcd);
//! 2. kill → the new leader's first write of the state to etcd (seen by a
//!    watch of the state key from this process);
//! 3. kill → every gateway applied a share of the new leader, which comes
//!    after its start-up grace (one gateway lease, 3 s);
//!
//! then restarts the killed controller and waits for it to follow. Last,
//! the state writes to etcd over a minute of steady load (the state key's
//! version in etcd counts its writes).

#[allow(dead_code)]
#[path = "../tests/control/fakes.rs"]
mod fakes;

use std::{
    collections::BTreeMap,
    net::IpAddr,
    path::Path,
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use fakes::{TOKEN, World, target};
use sanlb::{
    agent::{Agent, AgentConfig, Client},
    cluster::Etcd,
    proto::Status,
};
use sanlb_test::etcd::EtcdServer;

const SANLB: &str = env!("CARGO_BIN_EXE_sanlb");
const GATEWAYS: [&str; 4] = ["gw1", "gw2", "gw3", "gw4"];
const PREFIX: &str = "/failover/";

fn main() {
    // `cargo bench NAME` passes NAME to every bench: run only when it names
    // this one (or nothing).
    if std::env::args()
        .skip(1)
        .any(|a| !a.starts_with('-') && !"failover".contains(a.as_str()))
    {
        return;
    }
    let runs: usize = std::env::var("SANLB_FAILOVER_RUNS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(12);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(run(runs));
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

struct Ctl {
    child: Option<Child>,
    port: u16,
    url: String,
}

impl Ctl {
    fn new() -> Self {
        let port = free_port();
        Self {
            child: None,
            port,
            url: format!("http://127.0.0.1:{port}"),
        }
    }

    fn spawn(&mut self, dir: &Path, etcd: &str) {
        let mut cmd = Command::new(SANLB);
        cmd.env("SANLB_CONFIG", "/dev/null")
            .env("RUST_LOG", "warn")
            .arg("controller")
            .args(["--listen", &format!("127.0.0.1:{}", self.port)])
            .args(["--etcd", etcd, "--etcd-prefix", PREFIX])
            .arg("--token-file")
            .arg(dir.join("token"));
        for (t, _) in demand() {
            cmd.args(["--target", &t.to_string()]);
        }
        self.child = Some(
            cmd.stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .unwrap(),
        );
    }

    fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    async fn leading(&self) -> Option<Status> {
        self.child.as_ref()?;
        let client = Client::new(&self.url, TOKEN, Duration::from_secs(2)).unwrap();
        client
            .status()
            .await
            .ok()
            .filter(|st| st.cluster.as_ref().is_some_and(|c| c.role == "leader"))
    }
}

impl Drop for Ctl {
    fn drop(&mut self) {
        self.kill();
    }
}

fn demand() -> Vec<(IpAddr, f64)> {
    [40, 30, 25, 20, 15, 12, 10, 8]
        .iter()
        .enumerate()
        .map(|(i, r)| (target(i as u8 + 1), f64::from(*r) * 100_000.0))
        .collect()
}

async fn leader(ctls: &[Ctl]) -> Option<(usize, Status)> {
    for (i, c) in ctls.iter().enumerate() {
        if let Some(st) = c.leading().await {
            return Some((i, st));
        }
    }
    None
}

async fn wait<T>(within: Duration, what: &str, mut f: impl AsyncFnMut() -> Option<T>) -> T {
    let end = Instant::now() + within;
    loop {
        if let Some(t) = f().await {
            return t;
        }
        assert!(Instant::now() < end, "{what}: not within {within:?}");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// Every gateway alive and past generation `after` in `st`.
fn applied_past(st: &Status, after: u64) -> bool {
    st.gateways.len() == GATEWAYS.len() && st.gateways.iter().all(|g| g.alive && g.applied > after)
}

fn stats(label: &str, mut v: Vec<Duration>) {
    v.sort();
    let ms = |d: Duration| d.as_secs_f64() * 1e3;
    let q = |p: f64| v[((v.len() as f64 * p).ceil() as usize).clamp(1, v.len()) - 1];
    println!(
        "  {label:<58} n {:>3}  median {:>7.0} ms  min {:>7.0}  p90 {:>7.0}  max {:>7.0}",
        v.len(),
        ms(q(0.5)),
        ms(v[0]),
        ms(q(0.9)),
        ms(v[v.len() - 1]),
    );
}

async fn run(runs: usize) {
    let server = EtcdServer::start();
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("token"), TOKEN).unwrap();
    let mut ctls: Vec<Ctl> = (0..3).map(|_| Ctl::new()).collect();
    for c in &mut ctls {
        c.spawn(dir.path(), &server.endpoint());
    }
    let urls: Vec<String> = ctls.iter().map(|c| c.url.clone()).collect();
    let world = World::default();
    world.set_demand(&demand());
    let mut stops = Vec::new();
    for g in GATEWAYS {
        let cfg = AgentConfig {
            gateway: g.into(),
            capacity: 1.0,
            interval: Duration::from_secs(1),
            long_poll: Duration::from_secs(30),
        };
        let client = Client::cluster(&urls, TOKEN, Duration::from_secs(5), None).unwrap();
        let mut agent = Agent::new(cfg, client, world.counters(g), world.owner(g));
        let (stop, rx) = tokio::sync::oneshot::channel::<()>();
        stops.push(stop);
        tokio::spawn(async move {
            agent
                .run(async {
                    let _ = rx.await;
                })
                .await;
        });
    }
    wait(Duration::from_secs(30), "a leader steering", async || {
        leader(&ctls).await.filter(|(_, st)| applied_past(st, 0))
    })
    .await;

    // Every write of the state, as this process sees it.
    let etcd = Etcd::connect(&[server.endpoint()], PREFIX, Duration::from_secs(2))
        .await
        .unwrap();
    let writes = std::sync::Arc::new(std::sync::Mutex::new(Vec::<Instant>::new()));
    {
        let mut wc = etcd.client().watch_client();
        let mut stream = wc.watch(etcd.state_key(), None).await.unwrap();
        let writes = writes.clone();
        tokio::spawn(async move {
            while let Ok(Some(resp)) = stream.message().await {
                let now = Instant::now();
                writes
                    .lock()
                    .unwrap()
                    .extend(resp.events().iter().map(|_| now));
            }
        });
    }
    let first_write_after = |t: Instant| writes.lock().unwrap().iter().copied().find(|w| *w > t);

    let mut serving = Vec::new();
    let mut written = Vec::new();
    let mut applied = Vec::new();
    for run in 0..runs {
        let (old, before) = wait(
            Duration::from_secs(30),
            "every gateway steered",
            async || leader(&ctls).await.filter(|(_, st)| applied_past(st, 0)),
        )
        .await;
        let top = before.gateways.iter().map(|g| g.applied).max().unwrap();
        // A different phase of the leader's keep-alive period (ttl/6 =
        // 333 ms) each run.
        tokio::time::sleep(Duration::from_millis((run as u64 * 97) % 333)).await;
        ctls[old].kill();
        let killed = Instant::now();
        let (new, _) = wait(Duration::from_secs(15), "a new leader", async || {
            leader(&ctls).await
        })
        .await;
        serving.push(killed.elapsed());
        assert_ne!(new, old);
        wait(
            Duration::from_secs(15),
            "the new leader's shares applied",
            async || ctls[new].leading().await.filter(|st| applied_past(st, top)),
        )
        .await;
        applied.push(killed.elapsed());
        let w = first_write_after(killed).expect("the new leader wrote the state");
        written.push(w - killed);
        ctls[old].spawn(dir.path(), &server.endpoint());
    }
    // Every address held by one gateway, every one of them.
    let held: BTreeMap<String, usize> = world
        .all_held()
        .into_iter()
        .map(|(g, s)| (g, s.len()))
        .collect();
    assert_eq!(held.values().sum::<usize>(), demand().len(), "{held:?}");
    assert!(world.violations().is_empty(), "{:?}", world.violations());
    println!(
        "controller failover (3 controllers, 4 agents reporting every 1 s, leader ttl 2 s, gateway lease 3 s):"
    );
    stats("kill -9 → another controller serves as leader", serving);
    stats(
        "kill -9 → the new leader's first state write in etcd",
        written,
    );
    stats(
        "kill -9 → every gateway applied the new leader's share",
        applied,
    );

    // Writes at the default interval (5 s), steady load.
    let version = async || {
        let mut kv = etcd.client().kv_client();
        let r = kv.get(etcd.state_key(), None).await.unwrap();
        r.kvs().first().map_or(0, |kv| kv.version())
    };
    let (_, st0) = wait(Duration::from_secs(30), "a leader", async || {
        leader(&ctls).await
    })
    .await;
    let (v0, t0) = (version().await, Instant::now());
    let minute = Duration::from_secs(60);
    tokio::time::sleep(minute).await;
    let (v1, took) = (version().await, t0.elapsed());
    let (_, st1) = wait(Duration::from_secs(30), "a leader", async || {
        leader(&ctls).await
    })
    .await;
    println!(
        "  state writes to etcd, steady load, interval 5 s, window 6: {} in {:.0} s = {:.3}/s ({} new generations)",
        v1 - v0,
        took.as_secs_f64(),
        (v1 - v0) as f64 / took.as_secs_f64(),
        st1.generation - st0.generation
    );
    for s in stops {
        let _ = s.send(());
    }
    for c in &mut ctls {
        c.kill();
    }
}
