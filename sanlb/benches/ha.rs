//! Figures of the HA control plane (a benchmark, not a timed test):
//! `cargo bench -p sanlb --bench ha` (`SANLB_HA_RUNS=N` failovers of each
//! kind, 12 by default).
//!
//! 1. How often the controller saves its state at the default settings
//!    (interval 5 s, window 6, lease 3 s), per adopted map: the real
//!    controller state machine on a simulated clock with four synthetic
//!    gateways, its file store counting the saves (each replaces the file).
//!    Each save is one guarded etcd transaction once the state lives there.
//! 2. The cost of one guarded write of a state to etcd (one member on
//!    loopback, data in a temporary directory), against the file store's
//!    save of the same state (fsync, rename) in the same run.
//! 3. Failover: a leader process killed with SIGKILL → another controller
//!    leads and its first guarded write is acknowledged; the same after an
//!    orderly resign (SIGTERM). The leader is this binary run again with
//!    `SANLB_HA_CHILD` set.
//! 4. etcd hung (SIGSTOP) or killed under a leader: the time until it
//!    steps down; etcd restarted: the time until a guarded write succeeds.

use std::{
    collections::BTreeMap,
    net::IpAddr,
    os::unix::fs::MetadataExt as _,
    path::Path,
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use sanlb::{
    cluster::{Elector, ElectorConfig, Etcd, Role, StateStore},
    controller::{
        Config, Controller, Trigger,
        store::{Saved, SavedGateway, SavedRoute, Store, VERSION},
    },
    optimize::{DEFAULT_W_CHANGE, DEFAULT_W_VAR, Options, Solver},
    proto::{EnforceCounters, Flow, Mode, Ownership, RebalanceRecord, Report},
};
use sanlb_test::etcd::EtcdServer;

const CHILD_ENV: &str = "SANLB_HA_CHILD";
const CHILD_URL: &str = "http://127.0.0.1:17101";
const PARENT_URL: &str = "http://127.0.0.1:17102";
const PREFIX: &str = "/bench/";
const TTL: Duration = sanlb::cluster::DEFAULT_TTL;
const TIMEOUT: Duration = sanlb::cluster::DEFAULT_TIMEOUT;

fn main() {
    if let Ok(endpoint) = std::env::var(CHILD_ENV) {
        child(&endpoint);
        return;
    }
    // `cargo bench NAME` passes NAME to every bench: run only when it names
    // this one (or nothing).
    if std::env::args()
        .skip(1)
        .any(|a| !a.starts_with('-') && !"ha".contains(a.as_str()))
    {
        return;
    }
    let runs: usize = std::env::var("SANLB_HA_RUNS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(12);
    saves_per_adopted_map();
    let mut server = EtcdServer::start();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let etcd = Etcd::connect(&[server.endpoint()], PREFIX, TIMEOUT)
            .await
            .unwrap();
        write_cost(&etcd).await;
        failover(&etcd, &server.endpoint(), runs, Stop::Kill).await;
        failover(&etcd, &server.endpoint(), runs, Stop::Resign).await;
        etcd_faults(&mut server, &etcd, runs).await;
    });
}

// ---- 1. saves per adopted map ------------------------------------------

const GATEWAYS: [&str; 4] = ["gw1", "gw2", "gw3", "gw4"];
const HOST: IpAddr = IpAddr::V4(std::net::Ipv4Addr::new(198, 18, 0, 10));

fn target(i: usize) -> IpAddr {
    IpAddr::from([198, 18, 1, i as u8])
}

/// Synthetic agents around the real controller, on a simulated clock.
struct Sim {
    c: Controller,
    now: Instant,
    state: std::path::PathBuf,
    seq: BTreeMap<&'static str, u64>,
    bytes: BTreeMap<(&'static str, IpAddr), u64>,
    rate: BTreeMap<IpAddr, u64>,
    applied: BTreeMap<&'static str, u64>,
    held: BTreeMap<&'static str, Vec<IpAddr>>,
    dead: Vec<&'static str>,
    /// (inode, mtime ns) of the state file after the last call.
    file: (u64, i64),
    saves: u64,
    saves_new_generation: u64,
    adopted: u64,
    moves: u64,
}

impl Sim {
    /// Counts a save by the call just made (at most one per call: each
    /// replaces the file, so its inode or mtime changes).
    fn count(&mut self, generation_before: u64) {
        let m = std::fs::metadata(&self.state).unwrap();
        let now = (m.ino(), m.mtime_nsec() + m.mtime() * 1_000_000_000);
        if now != self.file {
            self.file = now;
            self.saves += 1;
            if self.c.generation() != generation_before {
                self.saves_new_generation += 1;
            }
        }
    }

    fn report(&mut self, gw: &'static str, ms: u64) {
        let seq = self.seq.entry(gw).or_default();
        for t in self.held.get(gw).cloned().unwrap_or_default() {
            *self.bytes.entry((gw, t)).or_default() += self.rate[&t] * ms / 1000;
        }
        let flows = self
            .bytes
            .iter()
            .filter(|((g, _), _)| *g == gw)
            .map(|((_, t), b)| Flow {
                initiator: HOST,
                target: *t,
                to_target_bytes: *b,
                to_initiator_bytes: 0,
            })
            .collect();
        let r = Report {
            gateway: gw.into(),
            boot_id: format!("boot-{gw}"),
            seq: *seq,
            uptime_ms: *seq * 1000,
            capacity: 1.0,
            applied: self.applied.get(gw).copied().unwrap_or(0),
            owned: self.held.get(gw).cloned().unwrap_or_default(),
            enforce: EnforceCounters::default(),
            flows,
        };
        *seq += 1;
        let g = self.c.generation();
        self.c.ingest(&r, self.now).unwrap();
        self.count(g);
        // The long poll hands the share over at once.
        let s = self.c.share(gw);
        if let Some(a) = s.addresses {
            self.held.insert(gw, a);
            self.applied.insert(gw, s.generation);
        }
    }

    /// One second: every live agent reports (agent interval 1 s), the
    /// lease timer runs; every fifth second the interval timer too.
    fn second(&mut self, t: u64) {
        for gw in GATEWAYS {
            if !self.dead.contains(&gw) {
                self.report(gw, 1000);
            }
        }
        self.now += Duration::from_secs(1);
        let g = self.c.generation();
        let failover = self.c.expire(self.now);
        self.count(g);
        if failover {
            self.rebalance(Trigger::Failover);
        }
        if t.is_multiple_of(5) {
            let g = self.c.generation();
            self.c.expire(self.now);
            self.c.close_interval();
            self.count(g);
            self.rebalance(Trigger::Interval);
        }
    }

    fn rebalance(&mut self, trigger: Trigger) {
        let Some(job) = self.c.start_rebalance(trigger) else {
            return;
        };
        let (sol, took) = job.solve().unwrap();
        let g = self.c.generation();
        let record = self.c.finish_rebalance(&job, &sol, took, self.now);
        self.count(g);
        if record.adopted {
            self.adopted += 1;
            self.moves += record.moves as u64;
        }
    }

    fn snapshot(&self) -> (u64, u64, u64, u64, u64) {
        (
            self.saves,
            self.saves_new_generation,
            self.adopted,
            self.moves,
            self.c.generation(),
        )
    }
}

fn saves_per_adopted_map() {
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state.json");
    let targets: Vec<IpAddr> = (1..=16).map(target).collect();
    let cfg = Config {
        interval: Duration::from_secs(5),
        window: 6,
        w_var: DEFAULT_W_VAR,
        w_change: DEFAULT_W_CHANGE,
        min_gain: 0.01,
        lease: Duration::from_secs(3),
        startup_grace: Duration::from_secs(3),
        release_timeout: Duration::from_secs(3),
        probe_timeout: Duration::from_secs(1),
        reprobe: Duration::from_secs(1),
        forget_after: Duration::from_secs(3600),
        mode: Mode::Target,
        storage: vec![],
        targets: targets.clone(),
        traffic: None,
        traffic_replace: false,
        pairs: Default::default(),
        solver: Options {
            solver: Solver::Auto,
            time_limit: Duration::from_secs(1),
            seed: 1,
        },
        advise: false,
        move_cooldown: Duration::ZERO,
    };
    let now = Instant::now();
    let c = Controller::new(cfg, Some(Store::new(&state)), now).unwrap();
    let m = std::fs::metadata(&state).unwrap();
    // Skewed rates, every target on gw1 at the start.
    let skew = [40, 30, 25, 20, 15, 12, 10, 8, 6, 5, 4, 3, 2, 2, 1, 1];
    let mut sim = Sim {
        c,
        now,
        state,
        seq: BTreeMap::new(),
        bytes: BTreeMap::new(),
        rate: targets
            .iter()
            .zip(skew)
            .map(|(t, r)| (*t, r * 100_000))
            .collect(),
        applied: BTreeMap::new(),
        held: [("gw1", targets.clone())].into(),
        dead: vec![],
        file: (m.ino(), m.mtime_nsec() + m.mtime() * 1_000_000_000),
        saves: 0,
        saves_new_generation: 0,
        adopted: 0,
        moves: 0,
    };
    let phase = |sim: &mut Sim, name: &str, from: u64, to: u64| {
        let before = sim.snapshot();
        for t in from..to {
            sim.second(t);
        }
        let after = sim.snapshot();
        let (saves, new_gen, adopted, moves) = (
            after.0 - before.0,
            after.1 - before.1,
            after.2 - before.2,
            after.3 - before.3,
        );
        let per_map = if adopted > 0 {
            format!("{:.1}", new_gen as f64 / adopted as f64)
        } else {
            "-".into()
        };
        println!(
            "  {name:<34} {:>4} s  saves {saves:>3} ({new_gen:>2} new generation, {:>2} rates only)  \
             adopted maps {adopted:>2}  moves {moves:>2}  generation saves per adopted map {per_map}  \
             {:.3} writes/s",
            to - from,
            saves - new_gen,
            saves as f64 / (to - from) as f64,
        );
    };
    println!(
        "state saves (= etcd writes) at interval 5 s, window 6, lease 3 s, agents every 1 s, 4 gateways, 16 targets:"
    );
    phase(&mut sim, "start (all on gw1) to balance", 1, 301);
    phase(&mut sim, "steady load", 301, 901);
    let t: Vec<IpAddr> = (1..=4).map(target).collect();
    for (i, x) in t.iter().enumerate() {
        // The heaviest four swap their rates.
        let r = [1, 1, 2, 2][i] * 100_000;
        sim.rate.insert(*x, r);
    }
    for x in (13..=16).map(target) {
        sim.rate.insert(x, 35 * 100_000);
    }
    phase(&mut sim, "load shifts", 901, 1201);
    sim.dead.push("gw4");
    phase(&mut sim, "gw4 dies (failover)", 1201, 1321);
    let (saves, new_gen, adopted, moves, generation) = sim.snapshot();
    println!(
        "  total: {saves} saves in 1320 s, {new_gen} with a new generation (generation {generation}), \
         {adopted} adopted maps, {moves} moves"
    );
}

// ---- 2. the cost of one guarded write ----------------------------------

/// A state of a mid-size SAN: 8 gateways, 64 targets (8 moving), the
/// rates of 400 (host, target) pairs, 32 rebalance records.
fn big_state(generation: u64) -> Saved {
    let gateways: Vec<String> = (1..=8).map(|i| format!("gw{i}")).collect();
    Saved {
        version: VERSION,
        mode: Mode::Target,
        generation,
        gateways: gateways
            .iter()
            .map(|g| SavedGateway {
                name: g.clone(),
                capacity: 1.0,
                alive: true,
                drained: None,
            })
            .collect(),
        routes: (0..64)
            .map(|i| SavedRoute {
                host: None,
                target: IpAddr::from([198, 18, 1, i as u8]),
                ownership: if i < 8 {
                    Ownership::Moving {
                        from: gateways[i % 8].clone(),
                        to: gateways[(i + 1) % 8].clone(),
                        release: generation,
                    }
                } else {
                    Ownership::Owned {
                        gateway: gateways[i % 8].clone(),
                    }
                },
                changed: generation,
            })
            .collect(),
        rates: (0..400)
            .map(|i| {
                (
                    IpAddr::from([198, 18, 0, (i % 200) as u8]),
                    IpAddr::from([198, 18, 1, (i % 64) as u8]),
                    1e6 + f64::from(i) * 1234.5,
                )
            })
            .collect(),
        history: (0..32)
            .map(|i| RebalanceRecord {
                at_ms: 1_700_000_000_000 + i * 30_000,
                generation: generation - 32 + i,
                trigger: "interval".into(),
                adopted: i % 3 == 0,
                reason: "the cost falls by 12.5 % (more than min_gain)".into(),
                cost_before: Some(0.0123),
                cost_after: 0.0101,
                var_norm_before: Some(0.0122),
                var_norm_after: 0.0096,
                moves: 3,
                duration_ms: 12.5,
                solver: Solver::Exact,
                result: if i % 3 == 0 { "adopted" } else { "kept" }.into(),
                changes: vec![],
            })
            .collect(),
        data_addresses: vec![],
        controls: Default::default(),
    }
}

fn stats(label: &str, mut v: Vec<Duration>) {
    v.sort();
    let ms = |d: Duration| d.as_secs_f64() * 1e3;
    let q = |p: f64| v[((v.len() as f64 * p).ceil() as usize).clamp(1, v.len()) - 1];
    println!(
        "  {label:<44} n {:>3}  median {:>8.1} ms  min {:>8.1}  p90 {:>8.1}  max {:>8.1}",
        v.len(),
        ms(q(0.5)),
        ms(v[0]),
        ms(q(0.9)),
        ms(v[v.len() - 1]),
    );
}

async fn lead(etcd: &Etcd, url: &str) -> (Elector, sanlb::cluster::Term) {
    let e = Elector::start(etcd, ElectorConfig::new(url)).unwrap();
    let mut rx = e.subscribe();
    let role = tokio::time::timeout(Duration::from_secs(20), rx.wait_for(Role::is_leader))
        .await
        .expect("leads within 20 s")
        .unwrap()
        .clone();
    let term = role.term().unwrap().clone();
    (e, term)
}

async fn write_cost(etcd: &Etcd) {
    let (elector, term) = lead(etcd, PARENT_URL).await;
    let store = StateStore::new(etcd);
    let dir = tempfile::tempdir().unwrap();
    let file = Store::new(dir.path().join("state.json"));
    let size = serde_json::to_vec(&big_state(100)).unwrap().len();
    println!(
        "one save of a state of {size} bytes (8 gateways, 64 targets, 400 rates, 32 records):"
    );
    let n = 200;
    let mut on_file = Vec::new();
    let mut on_etcd = Vec::new();
    for i in 0..n {
        let s = big_state(100 + i);
        let t = Instant::now();
        file.save(&s).unwrap();
        on_file.push(t.elapsed());
        let t = Instant::now();
        store.save(&term, &s).await.unwrap();
        on_etcd.push(t.elapsed());
    }
    let median = |v: &[Duration]| {
        let mut v = v.to_vec();
        v.sort();
        v[v.len() / 2]
    };
    let ratio = median(&on_etcd).as_secs_f64() / median(&on_file).as_secs_f64();
    stats("state file (baseline): write, fsync, rename", on_file);
    stats("etcd: guarded transaction", on_etcd);
    println!("  etcd / file (medians): {ratio:.2}");
    assert_eq!(
        store.load(&term).await.unwrap(),
        Some(big_state(100 + n - 1))
    );
    elector.resign().await;
    tmp_fs(dir.path());
}

/// Which file system the temporary directories (etcd's data) are on.
fn tmp_fs(p: &Path) {
    let out = Command::new("stat")
        .args(["-f", "-c", "%T"])
        .arg(p)
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
        .unwrap_or_default();
    println!("  (temporary directories, etcd's data included, on {out})");
}

// ---- 3. failover -------------------------------------------------------

#[derive(Clone, Copy, PartialEq, Eq)]
enum Stop {
    Kill,
    Resign,
}

/// The leader to stop: this binary as a child, killed on drop.
struct Leader(Child);

impl Drop for Leader {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

async fn failover(etcd: &Etcd, endpoint: &str, runs: usize, stop: Stop) {
    let store = StateStore::new(etcd);
    let mut to_lead = Vec::new();
    let mut to_write = Vec::new();
    for run in 0..runs {
        let mut leader = Leader(
            Command::new(std::env::current_exe().unwrap())
                .env(CHILD_ENV, endpoint)
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .spawn()
                .unwrap(),
        );
        let start = Instant::now();
        while etcd
            .leader()
            .await
            .unwrap()
            .is_none_or(|r| r.advertise != CHILD_URL)
        {
            assert!(
                start.elapsed() < Duration::from_secs(20),
                "the child never led"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let me = Elector::start(etcd, ElectorConfig::new(PARENT_URL)).unwrap();
        let mut rx = me.subscribe();
        tokio::time::timeout(
            Duration::from_secs(10),
            rx.wait_for(|r| matches!(r, Role::Follower { leader, .. } if leader == CHILD_URL)),
        )
        .await
        .expect("follows within 10 s")
        .unwrap();
        // Stop the leader at a different phase of its keep-alive period
        // (ttl/6) each run.
        let phase = (run as u64 * 97) % (TTL.as_millis() as u64 / 6);
        tokio::time::sleep(Duration::from_millis(phase)).await;
        let sig = match stop {
            Stop::Kill => libc::SIGKILL,
            Stop::Resign => libc::SIGTERM,
        };
        // SAFETY: kill(2) on our child.
        assert_eq!(unsafe { libc::kill(leader.0.id() as libc::pid_t, sig) }, 0);
        let t0 = Instant::now();
        let role = tokio::time::timeout(Duration::from_secs(10), rx.wait_for(Role::is_leader))
            .await
            .expect("leads within 10 s")
            .unwrap()
            .clone();
        to_lead.push(t0.elapsed());
        store
            .save(role.term().unwrap(), &big_state(1000 + run as u64))
            .await
            .unwrap();
        to_write.push(t0.elapsed());
        me.resign().await;
        let _ = leader.0.wait();
    }
    let what = match stop {
        Stop::Kill => "leader killed (SIGKILL)",
        Stop::Resign => "leader resigned (SIGTERM)",
    };
    println!("failover, ttl {TTL:?}, {what}:");
    stats("→ another leads", to_lead);
    stats("→ its first guarded write acknowledged", to_write);
}

/// etcd hung (SIGSTOP) or killed under a leader: how soon it steps down,
/// and how soon, etcd back, a leader writes again.
async fn etcd_faults(server: &mut EtcdServer, etcd: &Etcd, runs: usize) {
    let store = StateStore::new(etcd);
    let mut hung = Vec::new();
    let mut killed = Vec::new();
    let mut back = Vec::new();
    let stepped_down = |e: &Elector| {
        let mut rx = e.subscribe();
        async move {
            tokio::time::timeout(TTL, rx.wait_for(|r| !r.is_leader()))
                .await
                .expect("steps down within the ttl")
                .unwrap();
        }
    };
    for run in 0..runs {
        let phase = Duration::from_millis((run as u64 * 97) % (TTL.as_millis() as u64 / 6));
        let (e, _) = lead(etcd, PARENT_URL).await;
        tokio::time::sleep(phase).await;
        server.pause();
        let t0 = Instant::now();
        stepped_down(&e).await;
        hung.push(t0.elapsed());
        server.resume();
        e.resign().await;

        let (e, _) = lead(etcd, PARENT_URL).await;
        tokio::time::sleep(phase).await;
        server.kill();
        let t0 = Instant::now();
        stepped_down(&e).await;
        killed.push(t0.elapsed());
        server.restart();
        let t0 = Instant::now();
        let mut rx = e.subscribe();
        let role = tokio::time::timeout(Duration::from_secs(20), rx.wait_for(Role::is_leader))
            .await
            .expect("leads again within 20 s")
            .unwrap()
            .clone();
        store
            .save(role.term().unwrap(), &big_state(2000 + run as u64))
            .await
            .unwrap();
        back.push(t0.elapsed());
        e.resign().await;
    }
    println!("etcd faults under a leader, ttl {TTL:?}:");
    stats("etcd hung (SIGSTOP) → the leader steps down", hung);
    stats("etcd killed → the leader steps down", killed);
    stats("etcd restarted → a guarded write acknowledged", back);
}

/// The leader process: leads until SIGKILL, or resigns on SIGTERM.
fn child(endpoint: &str) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let mut term =
            tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).unwrap();
        let etcd = Etcd::connect(&[endpoint.to_owned()], PREFIX, TIMEOUT)
            .await
            .unwrap();
        let (elector, _) = lead(&etcd, CHILD_URL).await;
        tokio::select! {
            _ = term.recv() => elector.resign().await,
            _ = tokio::time::sleep(Duration::from_secs(120)) => {}
        }
    });
}
