//! Issue 11: one bad report must never take the control plane down.
//! Regression tests named for its items, and a fuzz of the report and
//! share handling, all on the state machine with an explicit clock.

use std::{
    collections::{BTreeMap, BTreeSet},
    net::IpAddr,
    time::{Duration, Instant},
};

use rand::{Rng, RngExt as _, SeedableRng as _, rngs::Xoshiro256PlusPlus};
use sanlb::{
    controller::{Controller, IngestError, Trigger, store::Store},
    proto::{CATCH_UP_LIMIT, EnforceCounters, Flow, MAX_GENERATION, Report},
};

use crate::fakes::{HOST, config, target};

const LEASE: Duration = Duration::from_millis(900);

fn report(gw: &str, boot: &str, seq: u64, applied: u64, owned: Vec<IpAddr>) -> Report {
    Report {
        gateway: gw.into(),
        boot_id: boot.into(),
        seq,
        uptime_ms: seq * 100,
        capacity: 1.0,
        applied,
        owned,
        enforce: EnforceCounters::default(),
        flows: vec![],
    }
}

/// A controller past its start-up grace with gw1 holding target 1.
fn running() -> (Controller, Instant) {
    let t0 = Instant::now();
    let mut c = Controller::new(config(&[target(1), target(2)]), None, t0).unwrap();
    c.ingest(&report("gw1", "b1", 0, 0, vec![target(1)]), t0)
        .unwrap();
    let now = t0 + LEASE;
    c.ingest(&report("gw1", "b1", 1, 0, vec![target(1)]), now)
        .unwrap();
    c.expire(now);
    (c, now)
}

#[test]
fn regression_11_1_a_report_cannot_push_the_generation_out_of_reach() {
    let (mut c, now) = running();
    let g = c.generation();
    // 2^53 was accepted and became the controller's generation, after
    // which every agent's report was refused as absurd.
    for applied in [MAX_GENERATION, CATCH_UP_LIMIT + 1] {
        let e = c
            .ingest(&report("gw2", "b9", 0, applied, vec![]), now)
            .unwrap_err();
        assert!(
            matches!(&e, IngestError::Invalid(r) if r.field == "applied"),
            "{e}"
        );
        assert_eq!(c.generation(), g, "nothing changed");
    }
    // The most a report may make it catch up to still leaves the agents
    // room: their reports of the new generation are accepted.
    c.ingest(&report("gw2", "b2", 0, CATCH_UP_LIMIT, vec![]), now)
        .unwrap();
    let caught = c.generation();
    assert!(caught > CATCH_UP_LIMIT && caught < MAX_GENERATION);
    let share = c.share("gw1");
    c.ingest(
        &report("gw1", "b1", 2, share.generation, vec![target(1)]),
        now,
    )
    .expect("an agent that applied the caught-up generation is not locked out");
    assert!(c.generation() >= caught);
}

#[test]
fn regression_11_2_the_state_file_is_validated_on_load() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("state.json");
    let good = serde_json::json!({
        "version": 1, "mode": "target", "generation": 7,
        "gateways": [{"name": "gw1", "capacity": 1.0, "alive": true}],
        "routes": [{"host": null, "target": "198.18.1.1",
                    "ownership": {"state": "owned", "gateway": "gw1"}, "changed": 7}],
        "rates": [["198.18.0.10", "198.18.1.1", 100.0]],
        "history": []
    });
    let start = |v: &serde_json::Value| {
        std::fs::write(&path, serde_json::to_vec(v).unwrap()).unwrap();
        Controller::new(
            config(&[target(1)]),
            Some(Store::new(&path)),
            Instant::now(),
        )
    };
    let c = start(&good).expect("a sane state loads");
    assert_eq!(c.generation(), 7);
    let cases: [(&str, serde_json::Value, &str); 8] = [
        (
            "/generation",
            serde_json::json!(u64::MAX),
            "generation 18446744073709551615",
        ),
        (
            "/gateways/0/capacity",
            serde_json::json!(-1.0),
            "capacity -1",
        ),
        (
            "/gateways/0/capacity",
            serde_json::json!(5e-324),
            "capacity 5e-324",
        ),
        ("/gateways/0/name", serde_json::json!("gw\n1"), "gw\\n1"),
        (
            "/routes/0/ownership/gateway",
            serde_json::json!("gw9"),
            "unknown gateway",
        ),
        (
            "/routes/0/changed",
            serde_json::json!(8),
            "changed in generation 8",
        ),
        (
            "/routes/0/target",
            serde_json::json!("224.0.0.1"),
            "not a usable address",
        ),
        ("/rates/0/2", serde_json::json!(1e300), "is not a rate"),
    ];
    for (pointer, value, reason) in cases {
        let mut bad = good.clone();
        *bad.pointer_mut(pointer).unwrap() = value;
        let text = serde_json::to_vec(&bad).unwrap();
        let e = start(&bad).unwrap_err().to_string();
        assert!(e.contains(reason), "{pointer}: {e}");
        assert_eq!(
            std::fs::read(&path).unwrap(),
            text,
            "the file is left as it was"
        );
    }
}

#[test]
fn regression_11_3_two_agents_under_one_name_never_share() {
    let (mut c, mut now) = running();
    let gen_before = c.generation();
    // An impostor (or a second agent configured with the same name).
    let e = c
        .ingest(&report("gw1", "impostor", 50, 0, vec![target(2)]), now)
        .unwrap_err();
    assert!(matches!(e, IngestError::Conflict(_)), "{e}");
    assert!(!c.may_share("gw1", "impostor"));
    assert!(c.may_share("gw1", "b1"));
    let st = c.status(now);
    let gw1 = st.gateways.iter().find(|g| g.name == "gw1").unwrap();
    let conflict = gw1.conflict.as_ref().expect("visible in status");
    assert_eq!(
        (conflict.boot_id.as_str(), conflict.refused),
        ("impostor", 1)
    );
    assert_eq!(c.events().boot_conflicts, 1);
    assert!(
        sanlb::controller::metrics::render(&c, now)
            .contains("sanlb_gateway_name_conflict{gateway=\"gw1\"} 1")
    );
    // Both keep reporting: the real one is served, the impostor refused.
    for i in 0..5 {
        now += Duration::from_millis(200);
        let r = c
            .ingest(
                &report("gw1", "b1", 2 + i, gen_before, vec![target(1)]),
                now,
            )
            .unwrap();
        assert!(r.counted);
        assert!(
            c.ingest(&report("gw1", "impostor", 51 + i, 0, vec![]), now)
                .is_err()
        );
    }
    assert_eq!(c.share("gw1").addresses, Some(vec![target(1)]));
    // The real agent restarts (a new run) and the old one falls silent: the
    // new run takes the name over after half a lease, and a late report of
    // the old run is stale, never current again.
    now += LEASE / 2;
    c.ingest(&report("gw1", "b1-new", 0, 0, vec![target(1)]), now)
        .unwrap();
    let late = c.ingest(&report("gw1", "b1", 99, 0, vec![]), now).unwrap();
    assert!(!late.counted && late.share.addresses.is_none());
    assert!(c.may_share("gw1", "b1-new") && !c.may_share("gw1", "b1"));
}

#[test]
fn regression_11_7_a_tiny_capacity_is_refused_and_extremes_stay_finite() {
    let (mut c, now) = running();
    let mut r = report("gw2", "b2", 0, 0, vec![]);
    r.capacity = 5e-324;
    let e = c.ingest(&r, now).unwrap_err();
    assert!(
        matches!(&e, IngestError::Invalid(x) if x.field == "capacity"),
        "{e}"
    );
    // The extremes that are allowed: the map still solves, status is finite.
    r.capacity = 1e-6;
    c.ingest(&r, now).unwrap();
    let mut big = report("gw3", "b3", 0, 0, vec![]);
    big.capacity = 1e6;
    c.ingest(&big, now).unwrap();
    let job = c.start_rebalance(Trigger::Failover).unwrap();
    let (s, took) = job.solve().unwrap();
    assert!(s.cost.is_finite());
    c.finish_rebalance(&job, &s, took, now);
    let st = c.status(now);
    assert!(st.var_norm.is_finite());
    let text = serde_json::to_string(&st).unwrap();
    assert!(!text.contains("null,") || serde_json::from_str::<serde_json::Value>(&text).is_ok());
    assert!(
        st.gateways
            .iter()
            .all(|g| g.utilisation.is_finite() && g.load.is_finite())
    );
}

#[test]
fn regression_11_8_a_refused_name_is_shown_escaped_and_short() {
    let (mut c, now) = running();
    let name = format!("evil\n\u{1b}[31m{}", "x".repeat(10_000_000));
    let e = c
        .ingest(&report(&name, "b", 0, 0, vec![]), now)
        .unwrap_err();
    let text = e.to_string();
    assert!(
        !text.contains('\n') && !text.contains('\u{1b}'),
        "{:?}",
        &text[..80]
    );
    assert!(text.len() < 400, "{} bytes", text.len());
    assert!(text.contains("evil\\n\\u{1b}[31m"));
}

/// One honest agent: reports every step, applies its share at once.
struct Honest {
    name: String,
    boot: String,
    seq: u64,
    applied: u64,
    held: Vec<IpAddr>,
    bytes: u64,
}

impl Honest {
    fn report(&mut self) -> Report {
        self.seq += 1;
        self.bytes += 10_000;
        Report {
            gateway: self.name.clone(),
            boot_id: self.boot.clone(),
            seq: self.seq,
            uptime_ms: self.seq * 100,
            capacity: 1.0,
            applied: self.applied,
            owned: self.held.clone(),
            enforce: EnforceCounters::default(),
            flows: self
                .held
                .iter()
                .map(|&t| Flow {
                    initiator: HOST,
                    target: t,
                    to_target_bytes: self.bytes,
                    to_initiator_bytes: 0,
                })
                .collect(),
        }
    }
}

/// Random, mutated and extreme reports.
fn hostile(rng: &mut impl Rng, honest: &[Honest], step: u64) -> Report {
    let names = ["gw1", "gw2", "gw3", "evil", "gw\n1", "", "a b", "ok-name.9"];
    let mut r = report(
        names[rng.random_range(0..names.len())],
        ["x1", "x2", "", "\u{7}"][rng.random_range(0..4)],
        rng.random_range(0..step + 2),
        0,
        vec![],
    );
    if rng.random_bool(0.3) {
        // A copy of an honest report under another run.
        let h = &honest[rng.random_range(0..honest.len())];
        r.gateway.clone_from(&h.name);
        r.owned.clone_from(&h.held);
    }
    match rng.random_range(0..12) {
        0 => {
            r.applied = [CATCH_UP_LIMIT, CATCH_UP_LIMIT + 1, MAX_GENERATION, u64::MAX]
                [rng.random_range(0..4)]
        }
        1 => {
            r.capacity = [5e-324, f64::NAN, f64::INFINITY, -1.0, 1e7, 1e-6][rng.random_range(0..6)]
        }
        2 => r.uptime_ms = u64::MAX - rng.random_range(0..3),
        3 => r.seq = u64::MAX,
        4 => r.owned = vec![IpAddr::from([224, 0, 0, 1])],
        5 => r.owned = (1..=3).map(target).collect(),
        6 => {
            let f = Flow {
                initiator: HOST,
                target: target(rng.random_range(1..4)),
                to_target_bytes: rng.random(),
                to_initiator_bytes: rng.random(),
            };
            r.flows = vec![f.clone(), f];
        }
        7 => {
            r.flows = (0..rng.random_range(0..50))
                .map(|i| Flow {
                    initiator: IpAddr::from([198, 18, 0, i]),
                    target: target(rng.random_range(1..250)),
                    to_target_bytes: rng.random_range(0..u64::MAX),
                    to_initiator_bytes: 0,
                })
                .collect();
        }
        8 => r.boot_id = "y".repeat(rng.random_range(60..70)),
        _ => {}
    }
    r
}

/// After every step: the generation stays in range and never goes back, no
/// address is in two shares nor held by two honest agents, every honest
/// report is accepted, and nothing panics.
#[test]
fn regression_11_fuzz_reports_and_shares_keep_their_invariants() {
    for seed in 0..6 {
        let mut rng = Xoshiro256PlusPlus::seed_from_u64(seed);
        let t0 = Instant::now();
        let targets: Vec<IpAddr> = (1..=6).map(target).collect();
        let mut c = Controller::new(config(&targets), None, t0).unwrap();
        let mut honest: Vec<Honest> = (1..=3)
            .map(|i| Honest {
                name: format!("gw{i}"),
                boot: format!("boot-{i}"),
                seq: 0,
                applied: 0,
                held: if i == 1 { targets.clone() } else { vec![] },
                bytes: 0,
            })
            .collect();
        let mut last_gen = c.generation();
        let mut now = t0;
        for step in 0..1_500u64 {
            now += Duration::from_millis(100);
            for h in &mut honest {
                let r = h.report();
                let reply = c
                    .ingest(&r, now)
                    .unwrap_or_else(|e| panic!("seed {seed} step {step}: {} refused: {e}", h.name));
                if let Some(a) = reply.share.addresses
                    && reply.share.generation > h.applied
                {
                    h.held = a;
                    h.applied = reply.share.generation;
                }
            }
            for _ in 0..rng.random_range(0..4) {
                let r = hostile(&mut rng, &honest, step);
                let _ = c.ingest(&r, now);
            }
            if c.expire(now) || step % 10 == 0 {
                let trigger = if step % 10 == 0 {
                    Trigger::Interval
                } else {
                    Trigger::Failover
                };
                if step % 10 == 0 {
                    c.close_interval();
                }
                if let Some(job) = c.start_rebalance(trigger) {
                    let (s, took) = job.solve().unwrap();
                    c.finish_rebalance(&job, &s, took, now);
                }
            }
            let g = c.generation();
            assert!(
                g >= last_gen && g <= MAX_GENERATION,
                "seed {seed} step {step}: generation {last_gen} → {g}"
            );
            last_gen = g;
            let st = c.status(now);
            let mut shared = BTreeMap::new();
            for gw in &st.gateways {
                for a in c.share(&gw.name).addresses.unwrap_or_default() {
                    if let Some(other) = shared.insert(a, gw.name.clone()) {
                        panic!(
                            "seed {seed} step {step}: {a} in the shares of {other} and {}",
                            gw.name
                        );
                    }
                }
            }
            let mut held = BTreeSet::new();
            for h in &honest {
                for a in &h.held {
                    assert!(held.insert(*a), "seed {seed} step {step}: {a} held twice");
                }
            }
        }
        assert!(
            honest.iter().all(|h| h.applied > 0),
            "seed {seed}: every honest agent was steered"
        );
    }
}
