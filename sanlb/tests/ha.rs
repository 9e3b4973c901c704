//! Issue 15: three `sanlb controller` processes on loopback sharing a real
//! etcd (Debian `etcd-server`, one member, a temporary data directory,
//! removed at the end), and real agents (fake counters and address owners
//! that record any moment two gateways hold one address) given every
//! controller.
//!
//! - exactly one leads; the leader killed with SIGKILL is replaced within
//!   the lease plus an interval, the generation grows across the change and
//!   the map is the same;
//! - a move in flight when the leader dies completes under the new one, the
//!   address never on two gateways;
//! - a gateway that dies while no controller leads is failed over by the
//!   next leader;
//! - a leader paused (SIGSTOP) beyond its lease and continued hands out no
//!   share and writes nothing;
//! - etcd stopped: the leader steps down, agents keep what they hold; etcd
//!   back: a leader again, no address moved.
//!
//! The tests run one at a time (each starts four processes on two cores).

#[allow(dead_code)]
#[path = "control/fakes.rs"]
mod fakes;

use std::{
    collections::{BTreeMap, BTreeSet},
    io::Read as _,
    net::IpAddr,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::Mutex,
    time::{Duration, Instant},
};

use fakes::{TOKEN, World, target};
use sanlb::{
    agent::{Agent, AgentConfig, Client, ClientError},
    cluster::{Etcd, parse_state},
    proto::{Ownership, Status},
};
use sanlb_test::etcd::EtcdServer;

const SANLB: &str = env!("CARGO_BIN_EXE_sanlb");
/// The leader's lease (the default).
const TTL: Duration = Duration::from_secs(2);
const INTERVAL: Duration = Duration::from_millis(300);
/// The gateways' lease: also the new leader's start-up grace.
const LEASE: Duration = Duration::from_millis(900);
/// How long a failover may take: the TTL, etcd's expiry sweep (500 ms), a
/// watch event, the guarded read, one interval; with room for a loaded
/// machine.
const FAILOVER: Duration = Duration::from_secs(6);

static ONE_AT_A_TIME: Mutex<()> = Mutex::new(());

fn serial() -> std::sync::MutexGuard<'static, ()> {
    ONE_AT_A_TIME.lock().unwrap_or_else(|p| p.into_inner())
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn signal(pid: u32, sig: libc::c_int) {
    // SAFETY: kill(2) on a child of this test.
    let rc = unsafe { libc::kill(pid as libc::pid_t, sig) };
    assert_eq!(rc, 0, "kill({pid}, {sig})");
}

/// One `sanlb controller --etcd` process; killed on drop.
struct Ctl {
    child: Option<Child>,
    url: String,
    log: PathBuf,
    /// Stopped with SIGSTOP: not asked who leads (it would not answer).
    paused: bool,
}

impl Ctl {
    fn start(dir: &Path, n: usize, etcd: &str, targets: &[IpAddr]) -> Self {
        let port = free_port();
        let url = format!("http://127.0.0.1:{port}");
        let log = dir.join(format!("controller{n}.log"));
        let token = dir.join("token");
        let mut cmd = Command::new(SANLB);
        cmd.env("SANLB_CONFIG", "/dev/null")
            .env("RUST_LOG", "info,sanlb::controller::persist=debug")
            .arg("controller")
            .args(["--listen", &format!("127.0.0.1:{port}")])
            .args(["--etcd", etcd, "--etcd-prefix", "/ha/"])
            .arg("--token-file")
            .arg(&token)
            .args(["--interval", "300ms", "--window", "2", "--lease", "900ms"])
            .args(["--w-change", "0.0002", "--min-gain", "0.001"])
            .args(["--time-limit", "200ms", "--seed", "1"]);
        for t in targets {
            cmd.args(["--target", &t.to_string()]);
        }
        let file = std::fs::File::create(&log).unwrap();
        let child = cmd
            .stdin(Stdio::null())
            .stdout(file.try_clone().unwrap())
            .stderr(file)
            .spawn()
            .unwrap();
        Self {
            child: Some(child),
            url,
            log,
            paused: false,
        }
    }

    fn pid(&self) -> u32 {
        self.child.as_ref().expect("running").id()
    }

    /// SIGKILL, as a crash or a power loss.
    fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    fn is_running(&mut self) -> bool {
        self.child
            .as_mut()
            .is_some_and(|c| c.try_wait().unwrap().is_none())
    }

    fn log(&self) -> String {
        let mut text = String::new();
        let _ = std::fs::File::open(&self.log).and_then(|mut f| f.read_to_string(&mut text));
        text
    }

    /// Asks this controller alone (no redirect followed).
    fn client(&self) -> Client {
        self.patient(Duration::from_secs(2))
    }

    /// The same, waiting up to `timeout` for an answer.
    fn patient(&self, timeout: Duration) -> Client {
        Client::new(&self.url, TOKEN, timeout).unwrap()
    }

    /// Its `/v1/status` if it leads and serves.
    async fn leading(&self) -> Option<Status> {
        match self.client().status().await {
            Ok(st) => {
                let c = st.cluster.as_ref().expect("a cluster's status");
                assert_eq!(c.role, "leader", "{c:?}");
                assert_eq!(c.leader.as_deref(), Some(self.url.as_str()));
                Some(st)
            }
            Err(_) => None,
        }
    }
}

impl Drop for Ctl {
    fn drop(&mut self) {
        if let Some(c) = &self.child {
            // A stopped process dies of SIGKILL too.
            let _ = unsafe { libc::kill(c.id() as libc::pid_t, libc::SIGCONT) };
        }
        self.kill();
    }
}

/// Skewed rates (bytes/s) over eight targets.
fn demand() -> Vec<(IpAddr, f64)> {
    [40, 30, 25, 20, 15, 12, 10, 8]
        .iter()
        .enumerate()
        .map(|(i, r)| (target(i as u8 + 1), f64::from(*r) * 10_000.0))
        .collect()
}

/// A running agent given every controller.
struct RunningAgent {
    stop: tokio::sync::oneshot::Sender<()>,
    task: tokio::task::JoinHandle<()>,
}

impl RunningAgent {
    async fn kill(self) {
        let _ = self.stop.send(());
        let _ = self.task.await;
    }
}

fn spawn_agent(world: &World, gateway: &str, urls: &[String]) -> RunningAgent {
    let cfg = AgentConfig {
        gateway: gateway.into(),
        capacity: 1.0,
        interval: Duration::from_millis(100),
        long_poll: Duration::from_secs(5),
    };
    let client = Client::cluster(urls, TOKEN, Duration::from_secs(2), None).unwrap();
    let mut agent = Agent::new(cfg, client, world.counters(gateway), world.owner(gateway));
    let (stop, rx) = tokio::sync::oneshot::channel();
    let task = tokio::spawn(async move {
        agent
            .run(async {
                let _ = rx.await;
            })
            .await;
    });
    RunningAgent { stop, task }
}

/// Etcd, three controllers, agents on `gateways`.
struct Cluster {
    etcd: EtcdServer,
    ctls: Vec<Ctl>,
    world: World,
    agents: BTreeMap<String, RunningAgent>,
    targets: Vec<IpAddr>,
    _dir: tempfile::TempDir,
}

impl Cluster {
    async fn start(gateways: &[&str]) -> Self {
        let etcd = EtcdServer::start();
        let dir = tempfile::tempdir().unwrap();
        let targets: Vec<IpAddr> = demand().iter().map(|d| d.0).collect();
        std::fs::write(dir.path().join("token"), TOKEN).unwrap();
        let ctls: Vec<Ctl> = (1..=3)
            .map(|n| Ctl::start(dir.path(), n, &etcd.endpoint(), &targets))
            .collect();
        let world = World::default();
        world.set_demand(&demand());
        let mut c = Self {
            etcd,
            ctls,
            world,
            agents: BTreeMap::new(),
            targets,
            _dir: dir,
        };
        for g in gateways {
            c.add_agent(g);
        }
        c
    }

    fn urls(&self) -> Vec<String> {
        self.ctls.iter().map(|c| c.url.clone()).collect()
    }

    fn add_agent(&mut self, gateway: &str) {
        let a = spawn_agent(&self.world, gateway, &self.urls());
        self.agents.insert(gateway.into(), a);
    }

    /// Every controller's answer: the index and status of the one that
    /// leads; panics if two do.
    async fn leader(&self) -> Option<(usize, Status)> {
        let mut found = None;
        for (i, c) in self.ctls.iter().enumerate() {
            if c.child.is_none() || c.paused {
                continue;
            }
            if let Some(st) = c.leading().await {
                assert!(
                    found.is_none(),
                    "two controllers serve as leader: {} and {}",
                    self.ctls[found.as_ref().map_or(0, |f: &(usize, Status)| f.0)].url,
                    c.url
                );
                found = Some((i, st));
            }
        }
        found
    }

    async fn wait_leader(&self, within: Duration, what: &str) -> (usize, Status) {
        let end = Instant::now() + within;
        loop {
            if let Some(l) = self.leader().await {
                return l;
            }
            assert!(
                Instant::now() < end,
                "{what}: no leader within {within:?}\n{}",
                self.logs()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    fn logs(&self) -> String {
        self.ctls
            .iter()
            .map(|c| {
                let log = c.log();
                let lines: Vec<&str> = log.lines().collect();
                format!(
                    "--- {}:\n{}",
                    c.url,
                    lines[lines.len().saturating_sub(25)..].join("\n")
                )
            })
            .collect::<Vec<_>>()
            .join("\n")
    }

    /// Every target held by exactly one of `alive`, and the leader's map
    /// all owned, with nothing moving.
    async fn placed(&self, alive: &[&str]) -> bool {
        let held = self.world.all_held();
        let once = self.targets.iter().all(|t| {
            alive
                .iter()
                .filter(|g| held.get(**g).is_some_and(|s| s.contains(t)))
                .count()
                == 1
        });
        once && self.leader().await.is_some_and(|(_, st)| {
            st.map
                .iter()
                .all(|m| matches!(m.ownership, Ownership::Owned { .. }))
        })
    }

    async fn wait_placed(&self, alive: &[&str], within: Duration, what: &str) {
        let end = Instant::now() + within;
        while !self.placed(alive).await {
            assert!(
                Instant::now() < end,
                "{what}: not placed within {within:?}: held {:?}\n{}",
                self.world.all_held(),
                self.logs()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Waits until the world's placement has not changed for `quiet`.
    async fn settle(&self, quiet: Duration, within: Duration) {
        let end = Instant::now() + within;
        let mut last = (self.world.all_held(), Instant::now());
        loop {
            let now = self.world.all_held();
            if now != last.0 {
                last = (now, Instant::now());
            } else if last.1.elapsed() >= quiet && self.placed(&self.alive()).await {
                return;
            }
            assert!(Instant::now() < end, "no quiet placement within {within:?}");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    fn alive(&self) -> Vec<&str> {
        self.agents.keys().map(String::as_str).collect()
    }

    fn assert_never_two_owners(&self) {
        assert_eq!(
            self.world.violations(),
            vec![],
            "an address held by two gateways at once"
        );
    }

    async fn stop(mut self) {
        for (_, a) in std::mem::take(&mut self.agents) {
            a.kill().await;
        }
        for c in &mut self.ctls {
            if let Some(child) = &c.child {
                signal(child.id(), libc::SIGTERM);
            }
        }
        for c in &mut self.ctls {
            if let Some(mut child) = c.child.take() {
                let end = Instant::now() + Duration::from_secs(10);
                while child.try_wait().unwrap().is_none() && Instant::now() < end {
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
                let _ = child.kill();
                let status = child.wait().unwrap();
                assert!(
                    status.success(),
                    "{} on SIGTERM: {status}\n{}",
                    c.url,
                    c.log()
                );
            }
        }
    }
}

fn owners(st: &Status) -> BTreeMap<IpAddr, Ownership> {
    st.map
        .iter()
        .map(|m| (m.target, m.ownership.clone()))
        .collect()
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

const GWS: [&str; 4] = ["gw1", "gw2", "gw3", "gw4"];

#[test]
fn of_three_controllers_one_leads_and_a_killed_leader_is_replaced() {
    let _one = serial();
    runtime().block_on(async {
        let mut c = Cluster::start(&GWS).await;
        let (first, _) = c.wait_leader(Duration::from_secs(15), "at start").await;
        c.wait_placed(&GWS, Duration::from_secs(20), "at start")
            .await;
        // For two lease lifetimes, the same single leader (`leader()`
        // panics on two).
        let end = Instant::now() + 2 * TTL;
        while Instant::now() < end {
            assert_eq!(c.leader().await.map(|l| l.0), Some(first));
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        c.settle(Duration::from_secs(2), Duration::from_secs(30))
            .await;
        let (_, before) = c.leader().await.expect("still leads");
        let applied_before = before.gateways.iter().map(|g| g.applied).max().unwrap();
        assert!(applied_before > 0, "agents applied shares");

        c.ctls[first].kill();
        let killed = Instant::now();
        let (second, after) = c.wait_leader(FAILOVER, "after the kill").await;
        let took = killed.elapsed();
        eprintln!("killed leader replaced (serving) after {took:?}");
        assert_ne!(second, first);
        assert!(took <= TTL + INTERVAL + Duration::from_secs(3), "{took:?}");
        // The map continues as it was; the generation resumes from etcd.
        assert_eq!(
            owners(&after),
            owners(&before),
            "the map changed hands unchanged"
        );
        assert!(after.generation >= before.generation);
        // After the grace, every gateway applies a generation above any
        // the old leader handed out.
        let end = Instant::now() + Duration::from_secs(10);
        loop {
            let (i, st) = c.leader().await.expect("leads");
            assert_eq!(i, second);
            if st.gateways.len() == GWS.len()
                && st
                    .gateways
                    .iter()
                    .all(|g| g.alive && g.applied > applied_before)
            {
                eprintln!(
                    "generation {applied_before} → {} applied by every gateway {:?} after the kill",
                    st.gateways.iter().map(|g| g.applied).min().unwrap(),
                    killed.elapsed()
                );
                break;
            }
            assert!(
                Instant::now() < end,
                "not applied: {:?}\n{}",
                st.gateways,
                c.logs()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        assert_eq!(c.world.all_held().len(), GWS.len());
        c.assert_never_two_owners();
        c.stop().await;
    });
}

#[test]
fn a_move_in_flight_when_the_leader_dies_completes_under_the_next() {
    let _one = serial();
    runtime().block_on(async {
        let mut c = Cluster::start(&["gw1", "gw2"]).await;
        c.wait_leader(Duration::from_secs(15), "at start").await;
        c.wait_placed(&["gw1", "gw2"], Duration::from_secs(20), "at start")
            .await;
        c.settle(Duration::from_secs(1), Duration::from_secs(30))
            .await;
        // The old owners cannot release: the move a third gateway brings
        // stays in flight.
        c.world.set_failing("gw1", true);
        c.world.set_failing("gw2", true);
        c.add_agent("gw3");
        let end = Instant::now() + Duration::from_secs(20);
        let (leader, moving) = loop {
            if let Some((i, st)) = c.leader().await
                && let Some(m) = st
                    .map
                    .iter()
                    .find(|m| matches!(m.ownership, Ownership::Moving { .. }))
            {
                break (i, m.clone());
            }
            assert!(Instant::now() < end, "no move started\n{}", c.logs());
            tokio::time::sleep(Duration::from_millis(10)).await;
        };
        c.ctls[leader].kill();
        let Ownership::Moving { from, to, .. } = &moving.ownership else {
            unreachable!()
        };
        eprintln!("leader killed with {} moving {from} → {to}", moving.target);
        let (_, st) = c.wait_leader(FAILOVER, "after the kill").await;
        let resumed = st.map.iter().find(|m| m.target == moving.target).unwrap();
        assert_eq!(resumed.ownership, moving.ownership, "the move is resumed");
        // The old owner can release again: under the new leader it does,
        // and only then does the new owner take the address.
        c.world.set_failing("gw1", false);
        c.world.set_failing("gw2", false);
        let end = Instant::now() + Duration::from_secs(15);
        loop {
            let held = c.world.all_held();
            let holders: Vec<&String> = held
                .iter()
                .filter(|(_, s)| s.contains(&moving.target))
                .map(|(g, _)| g)
                .collect();
            assert!(holders.len() <= 1, "{} on {holders:?}", moving.target);
            if holders == [to] {
                break;
            }
            assert!(
                Instant::now() < end,
                "the move did not complete: {held:?}\n{}",
                c.logs()
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let (i, _) = c.leader().await.expect("leads");
        let metrics = reqwest::Client::new()
            .get(format!("{}/metrics", c.ctls[i].url))
            .bearer_auth(TOKEN)
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        assert!(
            metrics.contains("sanlb_moves_abandoned_total 0\n"),
            "completed, not abandoned:\n{metrics}"
        );
        assert!(metrics.contains("sanlb_cluster_leader 1\n"), "{metrics}");
        c.assert_never_two_owners();
        c.stop().await;
    });
}

#[test]
fn a_gateway_that_dies_while_no_controller_leads_is_failed_over_by_the_next() {
    let _one = serial();
    runtime().block_on(async {
        let mut c = Cluster::start(&["gw1", "gw2", "gw3"]).await;
        let (leader, _) = c.wait_leader(Duration::from_secs(15), "at start").await;
        c.wait_placed(&["gw1", "gw2", "gw3"], Duration::from_secs(20), "at start")
            .await;
        c.settle(Duration::from_secs(1), Duration::from_secs(30))
            .await;
        let orphans = c.world.held("gw1");
        assert!(!orphans.is_empty());
        // The leader and gw1 die together.
        c.ctls[leader].kill();
        c.agents.remove("gw1").unwrap().kill().await;
        c.world.crash("gw1");
        let died = Instant::now();
        c.wait_leader(FAILOVER, "after the kill").await;
        c.wait_placed(&["gw2", "gw3"], Duration::from_secs(15), "failed over")
            .await;
        eprintln!(
            "{} addresses of a gateway that died with the leader served again after {:?}",
            orphans.len(),
            died.elapsed()
        );
        let (_, st) = c.leader().await.expect("leads");
        let gw1 = st.gateways.iter().find(|g| g.name == "gw1").unwrap();
        assert!(!gw1.alive);
        c.assert_never_two_owners();
        c.stop().await;
    });
}

#[test]
fn a_paused_leader_hands_out_nothing_and_writes_nothing() {
    let _one = serial();
    runtime().block_on(async {
        let mut c = Cluster::start(&GWS).await;
        let (leader, _) = c.wait_leader(Duration::from_secs(15), "at start").await;
        c.wait_placed(&GWS, Duration::from_secs(20), "at start")
            .await;
        // Every write of the state from now on, in order.
        let etcd = Etcd::connect(&[c.etcd.endpoint()], "/ha/", Duration::from_secs(2))
            .await
            .unwrap();
        let key = etcd.state_key();
        let mut wc = etcd.client().watch_client();
        let mut writes = wc.watch(key.as_bytes(), None).await.unwrap();

        signal(c.ctls[leader].pid(), libc::SIGSTOP);
        c.ctls[leader].paused = true;
        let stopped = Instant::now();
        let old = &c.ctls[leader];
        // Asked while it is stopped: answered when it runs again.
        let client = old.patient(Duration::from_secs(30));
        let report = tokio::spawn(async move {
            client
                .share("gw1", "boot-of-nobody", 0, Duration::from_millis(100))
                .await
        });
        let status = tokio::spawn({
            let client = old.patient(Duration::from_secs(30));
            async move { client.status().await }
        });
        let (new, _) = c.wait_leader(FAILOVER, "while the leader is stopped").await;
        assert_ne!(new, leader);
        eprintln!("stopped leader replaced after {:?}", stopped.elapsed());
        // Beyond its lease by half a lease more.
        let beyond = TTL + TTL / 2;
        if let Some(left) = beyond.checked_sub(stopped.elapsed()) {
            tokio::time::sleep(left).await;
        }
        signal(old.pid(), libc::SIGCONT);
        c.ctls[leader].paused = false;
        let old = &c.ctls[leader];
        for (what, r) in [
            ("share", report.await.unwrap().map(|_| ())),
            ("status", status.await.unwrap().map(|_| ())),
        ] {
            match r {
                Err(ClientError::Refused {
                    status, message, ..
                }) => {
                    assert!(status == 307 || status == 503, "{what}: {status} {message}");
                    eprintln!(
                        "resumed leader answered the {what} asked while stopped: {status} {message}"
                    );
                }
                other => panic!("{what} asked of the stopped leader: {other:?}"),
            }
        }
        // Its writes, if any were attempted, were refused: the generations
        // stored only grow.
        tokio::time::sleep(Duration::from_secs(2)).await;
        let mut last = 0;
        let mut n = 0;
        while let Ok(Ok(Some(resp))) =
            tokio::time::timeout(Duration::from_millis(200), writes.message()).await
        {
            for ev in resp.events() {
                let kv = ev.kv().unwrap();
                let saved = parse_state(&key, kv.value()).unwrap();
                assert!(
                    saved.generation >= last,
                    "generation {} stored after {last}",
                    saved.generation
                );
                last = saved.generation;
                n += 1;
            }
        }
        eprintln!("{n} state writes while and after the pause, generations never back");
        assert!(n > 0);
        let (i, _) = c.leader().await.expect("leads");
        assert_eq!(i, new, "the resumed one follows");
        assert!(old.log().contains("not leading"), "{}", old.log());
        c.assert_never_two_owners();
        c.stop().await;
    });
}

#[test]
fn without_etcd_nobody_leads_agents_keep_what_they_hold_and_a_leader_returns() {
    let _one = serial();
    runtime().block_on(async {
        let mut c = Cluster::start(&GWS).await;
        c.wait_leader(Duration::from_secs(15), "at start").await;
        c.wait_placed(&GWS, Duration::from_secs(20), "at start")
            .await;
        c.settle(Duration::from_secs(2), Duration::from_secs(30))
            .await;
        let held = c.world.all_held();
        c.etcd.kill();
        let killed = Instant::now();
        let end = Instant::now() + TTL;
        while c.leader().await.is_some() {
            assert!(
                Instant::now() < end,
                "still leading {:?} after etcd died",
                killed.elapsed()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        eprintln!("leader stepped down {:?} after etcd died", killed.elapsed());
        // Fail-static: nothing moves while etcd is away.
        let end = Instant::now() + Duration::from_secs(4);
        while Instant::now() < end {
            assert!(c.leader().await.is_none());
            assert_eq!(
                c.world.all_held(),
                held,
                "an address moved without a leader"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        c.etcd.restart();
        let back = Instant::now();
        c.wait_leader(Duration::from_secs(10), "etcd back").await;
        eprintln!("a leader again {:?} after etcd came back", back.elapsed());
        // Through the grace and several windows, no address moves.
        let end = Instant::now() + LEASE + 10 * INTERVAL;
        while Instant::now() < end {
            assert_eq!(c.world.all_held(), held, "an address moved without cause");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let (_, st) = c.leader().await.expect("leads");
        assert!(st.gateways.iter().all(|g| g.alive));
        let now: BTreeSet<IpAddr> = c.world.all_held().values().flatten().copied().collect();
        assert_eq!(now.len(), c.targets.len());
        for ctl in &mut c.ctls {
            assert!(ctl.is_running(), "{} exited:\n{}", ctl.url, ctl.log());
        }
        c.assert_never_two_owners();
        c.stop().await;
    });
}

/// `sanlb controller --etcd …` run to its exit (it must not start).
fn refused_start(etcd: &str, prefix: &str, extra: &[&str]) -> (Option<i32>, String) {
    let dir = tempfile::tempdir().unwrap();
    let token = dir.path().join("token");
    std::fs::write(&token, TOKEN).unwrap();
    let mut cmd = Command::new(SANLB);
    cmd.env("SANLB_CONFIG", "/dev/null")
        .arg("controller")
        .args(["--etcd", etcd, "--etcd-prefix", prefix])
        .args(["--etcd-timeout", "1s", "--target", "198.18.1.1"])
        .arg("--token-file")
        .arg(&token)
        .args(extra);
    if !extra.contains(&"--listen") {
        cmd.args(["--listen", &format!("127.0.0.1:{}", free_port())]);
    }
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let end = Instant::now() + Duration::from_secs(15);
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        if Instant::now() > end {
            let _ = child.kill();
            let _ = child.wait();
            panic!("the controller started ({etcd} {prefix} {extra:?})");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let mut stderr = String::new();
    child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut stderr)
        .unwrap();
    (status.code(), stderr)
}

#[test]
fn bad_etcd_input_at_start_is_a_clear_error_and_starts_nothing() {
    let _one = serial();
    // Nothing listens there: exit 1 (a failure, not bad input), the
    // endpoint named.
    let closed = format!("http://127.0.0.1:{}", free_port());
    let (code, err) = refused_start(&closed, "/ha/", &[]);
    assert_eq!(code, Some(1), "{err}");
    assert!(err.contains(&closed), "{err}");
    // Not an etcd client URL: bad input (2), naming it.
    let (code, err) = refused_start("ftp://127.0.0.1:2379", "/ha/", &[]);
    assert_eq!(code, Some(2), "{err}");
    assert!(err.contains("ftp://127.0.0.1:2379"), "{err}");
    // A listen address agents cannot reach, and no --advertise.
    let (code, err) = refused_start(&closed, "/ha/", &["--listen", "0.0.0.0:7390"]);
    assert_eq!(code, Some(2), "{err}");
    assert!(err.contains("--advertise"), "{err}");
    // An iSNS server is not published to by a cluster (yet).
    let (code, err) = refused_start(&closed, "/ha/", &["--isns", "127.0.0.1"]);
    assert_eq!(code, Some(2), "{err}");
    assert!(err.contains("--isns with --etcd"), "{err}");
    // A prefix of `/` alone would hold every other program's keys.
    let (code, err) = refused_start(&closed, "/", &[]);
    assert_eq!(code, Some(2), "{err}");
    assert!(err.contains("--etcd-prefix"), "{err}");

    let etcd = EtcdServer::start();
    runtime().block_on(async {
        let mut kv = Etcd::connect(&[etcd.endpoint()], "/x/", Duration::from_secs(2))
            .await
            .unwrap()
            .client()
            .kv_client();
        kv.put("/corrupt/state", "{\"version\":1,\"generation\":", None)
            .await
            .unwrap();
        kv.put("/foreign/config", "someone else's", None)
            .await
            .unwrap();
    });
    // A corrupt state, a key that is not sanlb's: bad input (2), the key
    // named; nothing was written (the corrupt value is still there).
    for (prefix, key) in [
        ("/corrupt/", "/corrupt/state"),
        ("/foreign/", "/foreign/config"),
    ] {
        let (code, err) = refused_start(&etcd.endpoint(), prefix, &[]);
        assert_eq!(code, Some(2), "{prefix}: {err}");
        assert!(err.contains(key), "{prefix}: {err}");
    }
    runtime().block_on(async {
        let mut kv = Etcd::connect(&[etcd.endpoint()], "/x/", Duration::from_secs(2))
            .await
            .unwrap()
            .client()
            .kv_client();
        let r = kv
            .get("/", Some(etcd_client::GetOptions::new().with_prefix()))
            .await
            .unwrap();
        let keys: Vec<&str> = r.kvs().iter().map(|kv| kv.key_str().unwrap()).collect();
        assert_eq!(
            keys,
            ["/corrupt/state", "/foreign/config"],
            "nothing written"
        );
    });
}
