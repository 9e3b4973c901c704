//! Issue 15 in the lab (privileged: namespaces, BPF, tgtd): real initiators
//! write and verify through real gateways while the leader of three
//! `sanlb controller --etcd` processes is killed twice, each time during a
//! rebalance (a move in flight). Independent measures: the loadgen's own
//! count of failed I/Os and of reads that did not return what was written
//! (during the load and in a final pass over every block), and the lab's
//! view of which gateway namespaces held each target address at one instant
//! (`Lab::holders`).
//!
//! etcd (Debian `etcd-server`, one member, data in the lab's folder) and the
//! controllers run in the lab's management namespace; the agents are given
//! every controller. Run as root:
//! `cargo test -p sanlb --test ha_lab -- --ignored --test-threads=1`.

use std::{
    collections::BTreeMap,
    net::Ipv4Addr,
    path::Path,
    thread,
    time::{Duration, Instant},
};

use sanlb::{
    controller::store::Saved,
    proto::{Ownership, Status},
};
use xtask::lab::{
    self, Lab, LineTail, Placement, Process, agent,
    loadgen::{self, Workload},
    proc,
};

const SANLB: &str = env!("CARGO_BIN_EXE_sanlb");
const ETCD_PORT: u16 = 2379;
const PORTS: [u16; 3] = [7391, 7392, 7393];
/// Each host's region of every LUN, in 512-byte blocks (2 MiB).
const REGION: u64 = 4096;

fn url(port: u16) -> String {
    format!("http://{}:{port}", lab::MANAGEMENT_ADDR)
}

fn urls() -> String {
    PORTS.map(url).join(",")
}

/// The lab and its processes (dropped before the lab: fields drop in
/// order).
struct Ha {
    agents: Vec<Process>,
    ctls: Vec<Option<Process>>,
    etcd: Option<Process>,
    lab: Lab,
}

impl Ha {
    fn new() -> Ha {
        let lab = Lab::builder()
            .hosts(1)
            .gateways(3)
            .targets(4)
            .disk_size(64 << 20)
            .placement(Placement::Unassigned)
            .management(true)
            .build()
            .unwrap();
        std::fs::write(lab.dir().join("token"), "ha-lab-token-0123456789").unwrap();
        let mut ha = Ha {
            lab,
            ctls: vec![],
            agents: vec![],
            etcd: None,
        };
        ha.etcd = Some(ha.start_etcd());
        for i in 0..PORTS.len() {
            let p = ha.start_controller(i);
            ha.ctls.push(Some(p));
        }
        ha
    }

    fn mgmt(&self) -> &lab::Netns {
        &self.lab.management().unwrap().ns
    }

    fn start_etcd(&self) -> Process {
        let client = format!("http://{}:{ETCD_PORT}", lab::MANAGEMENT_ADDR);
        let peer = format!("http://{}:2380", lab::MANAGEMENT_ADDR);
        let mut cmd = self.mgmt().command("etcd");
        cmd.arg("--name=lab")
            .arg(format!(
                "--data-dir={}",
                self.lab.dir().join("etcd").display()
            ))
            .arg(format!("--listen-client-urls={client}"))
            .arg(format!("--advertise-client-urls={client}"))
            .arg(format!("--listen-peer-urls={peer}"))
            .arg(format!("--initial-advertise-peer-urls={peer}"))
            .arg(format!("--initial-cluster=lab={peer}"))
            .arg("--logger=zap")
            .arg("--log-level=warn");
        let etcd = self.lab.spawn("etcd", cmd).unwrap();
        let end = Instant::now() + Duration::from_secs(20);
        loop {
            let mut c = self.mgmt().command("etcdctl");
            c.env("ETCDCTL_API", "3")
                .args(["--endpoints", &client, "endpoint", "health"]);
            if proc::run(&mut c).is_ok() {
                return etcd;
            }
            assert!(Instant::now() < end, "etcd does not answer in the lab");
            thread::sleep(Duration::from_millis(200));
        }
    }

    fn start_controller(&self, i: usize) -> Process {
        let mut cmd = self.mgmt().command(SANLB);
        cmd.env("SANLB_CONFIG", "/dev/null")
            .env("RUST_LOG", "info")
            .arg("controller")
            .args([
                "--listen",
                &format!("{}:{}", lab::MANAGEMENT_ADDR, PORTS[i]),
            ])
            .args([
                "--etcd",
                &format!("http://{}:{ETCD_PORT}", lab::MANAGEMENT_ADDR),
            ])
            .args(["--etcd-prefix", "/lab/"])
            .arg("--token-file")
            .arg(self.lab.dir().join("token"))
            .args(["--interval", "1s", "--window", "2", "--lease", "3s"])
            .args([
                "--storage",
                &format!("{}/{}", lab::TARGET_NET.0, lab::TARGET_NET.1),
            ]);
        for t in self.lab.targets() {
            cmd.args(["--target", &t.addr.to_string()]);
        }
        // A restarted one gets new log files (the killed one's stay).
        static STARTS: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
        let n = STARTS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        self.lab
            .spawn(&format!("controller{}-{n}", i + 1), cmd)
            .unwrap()
    }

    fn start_agent(&mut self, g: usize) {
        let gw = &self.lab.gateways()[g];
        let extra: Vec<String> = [
            "--controller",
            &urls(),
            "--gateway",
            &gw.name,
            "--interval",
            "1s",
        ]
        .map(str::to_owned)
        .into_iter()
        .chain([
            "--token-file".to_owned(),
            self.lab.dir().join("token").display().to_string(),
        ])
        .collect();
        self.agents
            .push(agent::start(&self.lab, Path::new(SANLB), gw, &extra).unwrap());
    }

    /// The leader's status through `sanlb status` (which follows a
    /// follower's redirect), if some controller leads.
    fn status(&self) -> Option<Status> {
        let mut cmd = self.mgmt().command(SANLB);
        cmd.env("SANLB_CONFIG", "/dev/null")
            .args(["status", "--controller", &urls(), "--json"])
            .arg("--token-file")
            .arg(self.lab.dir().join("token"));
        let out = proc::output_timeout(&mut cmd, Duration::from_secs(5)).ok()?;
        let st: Status = serde_json::from_slice(&out.stdout).ok()?;
        (st.cluster.as_ref()?.role == "leader").then_some(st)
    }

    /// Which controller (index) `st` came from.
    fn leader_of(st: &Status) -> usize {
        let leader = st.cluster.as_ref().unwrap().leader.clone().unwrap();
        PORTS.iter().position(|p| url(*p) == leader).unwrap()
    }

    /// Who holds each target address now; panics if two gateways held one
    /// at one instant (`Lab::holders`: a move between two reads is not).
    fn holders(&self) -> BTreeMap<Ipv4Addr, Option<String>> {
        let h = self.lab.holders().unwrap();
        assert!(
            h.at_once.is_empty(),
            "on two gateways at once: {:?}\n{}",
            h.at_once,
            self.logs()
        );
        // Two here are a move seen half-way: the waits poll again.
        h.now
            .into_iter()
            .map(|(a, o)| (a, (o.len() == 1).then(|| o[0].clone())))
            .collect()
    }

    /// Polls (checking that no address is ever on two gateways) until
    /// `done` returns something.
    fn wait<T>(&self, what: &str, limit: Duration, mut done: impl FnMut(&Ha) -> Option<T>) -> T {
        let end = Instant::now() + limit;
        loop {
            self.holders();
            if let Some(t) = done(self) {
                return t;
            }
            assert!(
                Instant::now() < end,
                "{what}: not within {limit:?}\n{}",
                self.logs()
            );
            thread::sleep(Duration::from_millis(50));
        }
    }

    /// The last lines of every controller's and agent's log.
    fn logs(&self) -> String {
        self.ctls
            .iter()
            .flatten()
            .chain(&self.agents)
            .map(|p| {
                let e = p.stderr();
                let lines: Vec<&str> = e.lines().collect();
                format!(
                    "--- {}:\n{}",
                    p.name(),
                    lines[lines.len().saturating_sub(15)..].join("\n")
                )
            })
            .collect::<Vec<_>>()
            .join("\n")
    }

    /// Joins gateway `g` and waits for the leader to store a state with a
    /// move to it in flight (seen by `etcdctl watch` of the state key, a few
    /// milliseconds after the write, before the move can complete: the old
    /// owner must first be handed and acknowledge a share without the
    /// address); kills that leader with SIGKILL then. Returns (its index,
    /// the generation of that state).
    fn join_and_kill_the_leader_mid_move(&mut self, g: usize) -> (usize, u64) {
        let what = format!("{} joined", self.lab.gateways()[g].name);
        let leader = self.wait(&what, Duration::from_secs(15), |ha| {
            ha.status().map(|st| Ha::leader_of(&st))
        });
        let mut cmd = self.mgmt().command("etcdctl");
        cmd.env("ETCDCTL_API", "3").args([
            "--endpoints",
            &format!("http://{}:{ETCD_PORT}", lab::MANAGEMENT_ADDR),
            "watch",
            "/lab/state",
        ]);
        let mut watch = self.lab.spawn(&format!("watch-{g}"), cmd).unwrap();
        let mut tail = LineTail::new(watch.stdout_path());
        thread::sleep(Duration::from_millis(300));
        self.start_agent(g);
        let to = self.lab.gateways()[g].name.clone();
        let end = Instant::now() + Duration::from_secs(40);
        let saved =
            'found: loop {
                for line in tail.read_lines().unwrap() {
                    let Ok(saved) = serde_json::from_str::<Saved>(&line) else {
                        continue;
                    };
                    if saved.routes.iter().any(
                        |r| matches!(&r.ownership, Ownership::Moving { to: t, .. } if *t == to),
                    ) {
                        break 'found saved;
                    }
                }
                self.holders();
                assert!(
                    Instant::now() < end,
                    "{what}: no move to it within 40 s\n{}",
                    self.logs()
                );
                thread::sleep(Duration::from_millis(5));
            };
        self.ctls[leader].take().unwrap().kill().unwrap();
        watch.kill().unwrap();
        let moving: Vec<String> = saved
            .routes
            .iter()
            .filter(|r| matches!(r.ownership, Ownership::Moving { .. }))
            .map(|r| format!("{} {:?}", r.target, r.ownership))
            .collect();
        eprintln!(
            "{what}: killed controller{} (generation {}) with {moving:?} in flight",
            leader + 1,
            saved.generation
        );
        (leader, saved.generation)
    }
}

#[test]
#[ignore = "privileged: cargo xtask test runs it as root"]
fn killing_the_leader_twice_during_rebalances_loses_no_io() {
    let loadgen_bin = loadgen::build().unwrap();
    let mut ha = Ha::new();
    // The skewed start: gw1 alone gets every address.
    ha.start_agent(0);
    let targets: Vec<Ipv4Addr> = ha.lab.targets().iter().map(|t| t.addr).collect();
    ha.wait("every address on gw1", Duration::from_secs(40), |ha| {
        let h = ha.holders();
        h.values()
            .all(|o| o.as_deref() == Some("gw1"))
            .then_some(())
    });
    // Write and verify, skewed, for the whole run.
    let host = &ha.lab.hosts()[0];
    let workloads: Vec<Workload> = ha
        .lab
        .targets()
        .iter()
        .enumerate()
        .map(|(i, t)| Workload {
            rate: Some((1 << 20) * (4 - i as u64)),
            read_pct: 50,
            blocks: Some(REGION),
            verify: true,
            ..Workload::new(t)
        })
        .collect();
    let cmd = loadgen::command(&loadgen_bin, host, &workloads, Duration::from_secs(45), 3);
    let mut lg = ha.lab.spawn("loadgen", cmd).unwrap();
    let started = Instant::now();

    // Rebalance 1: gw2 joins; the leader dies with a move in flight.
    let (first, gen1) = ha.join_and_kill_the_leader_mid_move(1);
    let st = ha.wait("a new leader", Duration::from_secs(15), Ha::status);
    assert_ne!(Ha::leader_of(&st), first);
    assert!(st.generation >= gen1, "{} < {gen1}", st.generation);
    // The killed one comes back as a follower.
    ha.ctls[first] = Some(ha.start_controller(first));

    // Rebalance 2: gw3 joins; the next leader dies with a move in flight.
    let (second, gen2) = ha.join_and_kill_the_leader_mid_move(2);
    assert!(gen2 > gen1, "generation {gen1} then {gen2}");
    let st = ha.wait("a new leader", Duration::from_secs(15), Ha::status);
    assert_ne!(Ha::leader_of(&st), second);
    assert!(st.generation >= gen2);
    // Every move completes: each address held once, nothing moving, every
    // gateway used.
    let st = ha.wait("the moves completed", Duration::from_secs(30), |ha| {
        let st = ha.status()?;
        let h = ha.holders();
        let settled = st
            .map
            .iter()
            .all(|m| matches!(m.ownership, Ownership::Owned { .. }))
            && targets
                .iter()
                .all(|t| h.get(t).is_some_and(Option::is_some));
        settled.then_some(st)
    });
    assert!(st.generation > gen2);
    eprintln!(
        "settled {:?} after the loadgen started at generation {}: {:?}",
        started.elapsed(),
        st.generation,
        ha.holders()
    );
    // The load ends by itself: no failed I/O, no corrupt read.
    let status = ha.wait("the loadgen's end", Duration::from_secs(120), |_| {
        lg.try_status().unwrap()
    });
    let out = lg.stdout();
    assert!(status.success(), "loadgen: {status}\n{}", lg.stderr());
    let finals = loadgen::finals(&out).unwrap();
    assert_eq!(finals.len(), targets.len(), "{out}");
    for (name, totals, verified, final_errors) in finals {
        eprintln!("{name}: {totals:?}, {verified} blocks verified at the end");
        assert_eq!(totals.errors, 0, "{name}: failed I/O: {totals:?}");
        assert_eq!(totals.verify_errors, 0, "{name}: corrupt reads");
        assert_eq!(final_errors, 0, "{name}: corrupt blocks at the end");
        assert!(verified > 0, "{name}: nothing verified at the end");
        assert!(totals.read_ops > 0 && totals.write_ops > 0, "{totals:?}");
    }
    for a in &mut ha.agents {
        assert!(a.is_running(), "{} exited: {}", a.name(), a.stderr());
    }
}
