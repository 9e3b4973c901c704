//! The controller's state machine driven directly (no HTTP, explicit
//! clock): break-before-make moves, bypass of a dead old owner, abandoned
//! moves, generations, persistence, a-priori traffic (pair mode: `pairs`).

use std::{
    collections::BTreeMap,
    net::IpAddr,
    time::{Duration, Instant},
};

use crate::fakes::{HOST, config, target};
use sanlb::{
    controller::{Config, Controller, Trigger, store::Store},
    proto::{EnforceCounters, Flow, Mode, Ownership, Report},
};

const LEASE: Duration = Duration::from_millis(900);

/// Drives one controller with synthetic agents that count what they hold.
struct Sim {
    c: Controller,
    now: Instant,
    seq: BTreeMap<String, u64>,
    uptime: BTreeMap<String, u64>,
    bytes: BTreeMap<(String, IpAddr), u64>,
    rate: BTreeMap<IpAddr, u64>,
    applied: BTreeMap<String, u64>,
    held: BTreeMap<String, Vec<IpAddr>>,
}

impl Sim {
    fn new(cfg: Config, store: Option<Store>) -> Self {
        let now = Instant::now();
        Self {
            c: Controller::new(cfg, store, now).unwrap(),
            now,
            seq: BTreeMap::new(),
            uptime: BTreeMap::new(),
            bytes: BTreeMap::new(),
            rate: BTreeMap::new(),
            applied: BTreeMap::new(),
            held: BTreeMap::new(),
        }
    }

    /// `gw` reports `ms` of agent time after its previous report, holding `held[gw]`.
    fn report(&mut self, gw: &str, ms: u64) {
        let seq = self.seq.entry(gw.into()).or_default();
        let uptime = self.uptime.entry(gw.into()).or_default();
        *uptime += ms;
        let held = self.held.get(gw).cloned().unwrap_or_default();
        for t in &held {
            *self.bytes.entry((gw.into(), *t)).or_default() +=
                self.rate.get(t).copied().unwrap_or(0) * ms / 1000;
        }
        let flows = self
            .bytes
            .iter()
            .filter(|((g, _), _)| g == gw)
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
            uptime_ms: *uptime,
            capacity: 1.0,
            applied: self.applied.get(gw).copied().unwrap_or(0),
            owned: held,
            enforce: EnforceCounters::default(),
            flows,
        };
        *seq += 1;
        self.c.ingest(&r, self.now).unwrap();
    }

    fn advance(&mut self, d: Duration) {
        self.now += d;
    }

    fn owner(&self, t: IpAddr) -> Ownership {
        self.c
            .status(self.now)
            .map
            .into_iter()
            .find(|m| m.target == t)
            .unwrap()
            .ownership
    }

    fn share(&self, gw: &str) -> Option<Vec<IpAddr>> {
        self.c.share(gw).addresses
    }

    /// The agent applies its share (exact set) and remembers the generation.
    fn apply(&mut self, gw: &str) {
        let s = self.c.share(gw);
        if let Some(a) = s.addresses {
            self.held.insert(gw.into(), a);
            self.applied.insert(gw.into(), s.generation);
        }
    }

    fn rebalance(&mut self, trigger: Trigger) -> bool {
        let Some(job) = self.c.start_rebalance(trigger) else {
            return false;
        };
        let (sol, took) = job.solve().unwrap();
        self.c.finish_rebalance(&job, &sol, took, self.now).adopted
    }
}

/// gw1 holds both targets with equal traffic, gw2 nothing; past the grace
/// with one interval of rates in the window.
fn two_on_one(store: Option<Store>) -> Sim {
    let mut cfg = config(&[target(1), target(2)]);
    cfg.window = 1;
    let mut s = Sim::new(cfg, store);
    s.rate = [(target(1), 1000), (target(2), 1000)].into();
    s.held.insert("gw1".into(), vec![target(1), target(2)]);
    s.report("gw1", 0);
    s.report("gw2", 0);
    assert!(
        matches!(s.owner(target(1)), Ownership::Owned { gateway } if gateway == "gw1"),
        "adopted from the report"
    );
    s.advance(LEASE);
    s.report("gw1", 1000);
    s.report("gw2", 1000);
    assert!(!s.c.expire(s.now), "grace over, nothing to fail over");
    s.apply("gw1");
    s.apply("gw2");
    s.c.close_interval();
    s
}

/// Rebalances and returns the moving target.
fn start_move(s: &mut Sim) -> IpAddr {
    assert!(s.rebalance(Trigger::Interval));
    let moving: Vec<IpAddr> = [target(1), target(2)]
        .into_iter()
        .filter(|t| matches!(s.owner(*t), Ownership::Moving { .. }))
        .collect();
    assert_eq!(moving.len(), 1, "one of two equal routes moves");
    moving[0]
}

#[test]
fn a_move_waits_for_the_old_owner_to_release() {
    let mut s = two_on_one(None);
    let t = start_move(&mut s);
    let Ownership::Moving { from, to, release } = s.owner(t) else {
        unreachable!()
    };
    assert_eq!(
        (from.as_str(), to.as_str(), release),
        ("gw1", "gw2", s.c.generation())
    );
    // Withheld from everyone.
    assert!(!s.share("gw1").unwrap().contains(&t));
    assert!(!s.share("gw2").unwrap().contains(&t));
    // gw1 reports before applying: still moving.
    s.report("gw1", 100);
    assert!(matches!(s.owner(t), Ownership::Moving { .. }));
    // gw1 applies and acknowledges: gw2 gets it, in a new generation.
    s.apply("gw1");
    assert!(!s.held["gw1"].contains(&t));
    s.report("gw1", 100);
    assert!(matches!(s.owner(t), Ownership::Owned { ref gateway } if gateway == "gw2"));
    assert!(s.c.generation() > release);
    assert_eq!(s.share("gw2").unwrap(), vec![t]);
    let st = s.c.status(s.now);
    assert_eq!(
        st.map.iter().find(|m| m.target == t).unwrap().changed,
        s.c.generation()
    );
    // A steady load: no further move.
    s.apply("gw2");
    for _ in 0..3 {
        s.advance(Duration::from_millis(300));
        s.report("gw1", 1000);
        s.report("gw2", 1000);
        s.c.close_interval();
        assert!(!s.rebalance(Trigger::Interval));
    }
}

#[test]
fn a_dead_old_owner_is_bypassed_after_the_lease() {
    let mut s = two_on_one(None);
    let t = start_move(&mut s);
    // gw1 goes silent; gw2 keeps reporting.
    for _ in 0..3 {
        s.advance(LEASE / 3);
        s.report("gw2", 300);
        s.c.expire(s.now);
    }
    assert!(matches!(s.owner(t), Ownership::Owned { ref gateway } if gateway == "gw2"));
    assert_eq!(s.c.events().bypassed, 1);
    // Failover takes gw1's other route too, at once.
    assert!(s.c.expire(s.now));
    assert!(s.rebalance(Trigger::Failover));
    assert_eq!(s.share("gw2").unwrap(), vec![target(1), target(2)]);
    // gw1 comes back: it starts empty.
    s.report("gw1", 100);
    assert_eq!(s.share("gw1").unwrap(), Vec::<IpAddr>::new());
}

#[test]
fn an_alive_owner_that_does_not_release_keeps_the_route() {
    let mut s = two_on_one(None);
    let t = start_move(&mut s);
    let g = s.c.generation();
    // gw1 applies everything but the release (it failed): it still holds t.
    s.applied.insert("gw1".into(), g - 1);
    for _ in 0..3 {
        s.advance(LEASE / 3);
        s.report("gw1", 300);
        s.report("gw2", 300);
        s.c.expire(s.now);
    }
    assert!(matches!(s.owner(t), Ownership::Owned { ref gateway } if gateway == "gw1"));
    assert_eq!(s.c.events().abandoned, 1);
    assert!(s.share("gw1").unwrap().contains(&t));
    assert!(!s.share("gw2").unwrap().contains(&t));
}

#[test]
fn the_generation_is_persisted_and_resumed() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("state.json");
    let mut s = two_on_one(Some(Store::new(&path)));
    let t = start_move(&mut s);
    // What a gateway can see is on disk.
    let saved = Store::new(&path).load().unwrap().unwrap();
    assert_eq!(saved.generation, s.c.generation());
    assert!(
        saved
            .routes
            .iter()
            .any(|r| r.target == t && matches!(r.ownership, Ownership::Moving { .. }))
    );
    let before = s.c.status(s.now);
    let rates = s.c.rates();
    assert_eq!(rates[&(None, t)], 1000.0);
    drop(s);
    let c = Controller::new(
        config(&[target(1), target(2)]),
        Some(Store::new(&path)),
        Instant::now(),
    )
    .unwrap();
    let after = c.status(Instant::now());
    assert_eq!(after.generation, before.generation);
    let owners = |st: &sanlb::proto::Status| {
        st.map
            .iter()
            .map(|m| (m.target, m.ownership.clone(), m.changed))
            .collect::<Vec<_>>()
    };
    assert_eq!(owners(&after), owners(&before));
    assert_eq!(c.rates(), rates, "recent rates not resumed");
    // A state written in another mode is refused, not reinterpreted.
    let mut pair = config(&[]);
    pair.mode = Mode::Pair;
    assert!(Controller::new(pair, Some(Store::new(&path)), Instant::now()).is_err());
}

#[test]
fn a_lost_state_catches_up_with_the_gateways() {
    let mut s = Sim::new(config(&[target(1)]), None);
    s.applied.insert("gw1".into(), 500);
    s.report("gw1", 0);
    assert!(s.c.generation() > 500);
}

#[test]
fn a_priori_traffic_seeds_or_replaces_the_measured_rates() {
    let csv = "host,198.18.1.1,198.18.1.2\n198.18.0.10,3000,600\n";
    let mut cfg = config(&[]);
    let matrix = sanlb::traffic::parse_csv(std::path::Path::new("traffic.csv"), csv).unwrap();
    cfg.traffic = Some(matrix);
    // Bytes per 300 ms interval → bytes/s.
    let mut seeded = Sim::new(cfg.clone(), None);
    let rates = seeded.c.rates();
    assert_eq!(rates[&(None, target(1))], 10_000.0);
    assert_eq!(rates[&(None, target(2))], 2_000.0);
    // Measurements push the seed out of the window.
    seeded.rate = [(target(1), 500)].into();
    seeded.held.insert("gw1".into(), vec![target(1)]);
    seeded.report("gw1", 0);
    seeded.report("gw1", 1000);
    for _ in 0..cfg.window {
        seeded.c.close_interval();
    }
    assert_eq!(seeded.c.rates()[&(None, target(1))], 500.0);
    cfg.traffic_replace = true;
    let mut replaced = Sim::new(cfg.clone(), None);
    replaced.rate = [(target(1), 500)].into();
    replaced.held.insert("gw1".into(), vec![target(1)]);
    replaced.report("gw1", 0);
    replaced.report("gw1", 1000);
    replaced.c.close_interval();
    assert_eq!(replaced.c.rates()[&(None, target(1))], 10_000.0);
}

#[test]
fn targets_outside_the_storage_ranges_are_not_routes() {
    let mut cfg = config(&[]);
    cfg.storage = vec!["198.18.1.0/30".parse().unwrap()];
    let mut s = Sim::new(cfg, None);
    s.rate = [(target(1), 1000), (target(9), 1000)].into();
    s.held.insert("gw1".into(), vec![target(1), target(9)]);
    s.report("gw1", 0);
    let st = s.c.status(s.now);
    assert_eq!(
        st.map.iter().map(|m| m.target).collect::<Vec<_>>(),
        vec![target(1)]
    );
}

/// `sanlb plan` and the controller call the same optimiser entry point, so
/// the same problem gives the same map through both (the controller's
/// rebalance problem written out as a `sanlb plan --problem` file).
#[test]
fn sanlb_plan_and_the_controller_give_the_same_map() {
    let targets: Vec<IpAddr> = (1..=9).map(target).collect();
    let mut cfg = config(&targets);
    cfg.window = 1;
    let mut s = Sim::new(cfg.clone(), None);
    // Skewed, uneven rates, everything on gw1: neither start is trivially
    // optimal, so both starts and the relabelling run.
    s.rate = targets
        .iter()
        .zip([9000, 7000, 5000, 3000, 3000, 2000, 1500, 700, 300])
        .map(|(&t, r)| (t, r))
        .collect();
    s.held.insert("gw1".into(), targets.clone());
    for gw in ["gw1", "gw2", "gw3"] {
        s.report(gw, 0);
    }
    s.advance(LEASE);
    for gw in ["gw1", "gw2", "gw3"] {
        s.report(gw, 1000);
    }
    s.c.expire(s.now);
    s.c.close_interval();
    let job =
        s.c.start_rebalance(Trigger::Interval)
            .expect("a rebalance is due");
    let (solution, _) = job.solve().unwrap();
    assert!(solution.moves > 0, "the skewed map is worth changing");

    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("problem.json");
    std::fs::write(&file, serde_json::to_vec(&job.problem).unwrap()).unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_sanlb"))
        .args(["plan", "--json", "--solver", "auto", "--time-limit"])
        .arg(format!("{}ms", cfg.solver.time_limit.as_millis()))
        .args(["--seed", &cfg.solver.seed.to_string(), "--problem"])
        .arg(&file)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let plan: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let planned: Vec<(IpAddr, String)> = plan["assignment"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| {
            (
                p["target"].as_str().unwrap().parse().unwrap(),
                p["gateway"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    let controller: Vec<(IpAddr, String)> = job
        .problem
        .routes
        .iter()
        .zip(&solution.assignment)
        .map(|(r, &g)| (r.target, job.problem.gateways[g].name.clone()))
        .collect();
    assert_eq!(planned, controller);
    assert_eq!(plan["moves"].as_u64(), Some(solution.moves as u64));
}
