//! Issue 18: advise mode, pause, pins and the move cool-down, on the
//! controller's state machine with an explicit clock (no HTTP, no timers),
//! and their persistence.

use std::{
    collections::BTreeMap,
    net::IpAddr,
    time::{Duration, Instant},
};

use crate::fakes::{Beats, HOST, config, target};
use sanlb::{
    controller::{Config, Controller, Trigger, controls::ControlError, metrics, store::Store},
    proto::{DrainRequest, EnforceCounters, Flow, Ownership, RebalanceRecord, Report},
};

const LEASE: Duration = Duration::from_millis(900);

/// One controller driven by synthetic agents that count what they hold.
struct Sim {
    c: Controller,
    now: Instant,
    seq: BTreeMap<String, u64>,
    uptime: BTreeMap<String, u64>,
    bytes: BTreeMap<(String, IpAddr), u64>,
    rate: BTreeMap<IpAddr, u64>,
    applied: BTreeMap<String, u64>,
    held: BTreeMap<String, Vec<IpAddr>>,
    beats: Beats,
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
            beats: Beats::default(),
        }
    }

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
        self.beats
            .beat(&mut self.c, self.now, gw, &self.held, LEASE / 2);
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

    fn owned_by(&self, t: IpAddr) -> Option<String> {
        match self.owner(t) {
            Ownership::Owned { gateway } => Some(gateway),
            _ => None,
        }
    }

    fn apply(&mut self, gw: &str) {
        let s = self.c.share(gw);
        if let Some(a) = s.addresses {
            self.held.insert(gw.into(), a);
            self.applied.insert(gw.into(), s.generation);
        }
    }

    /// Runs a rebalance now; the record, or `None` when none was due.
    fn rebalance(&mut self, trigger: Trigger) -> Option<RebalanceRecord> {
        let job = self.c.start_rebalance_at(trigger, self.now)?;
        let (sol, took) = job.solve().unwrap();
        Some(self.c.finish_rebalance(&job, &sol, took, self.now))
    }

    /// Every gateway in `gws` applies its share and reports (one interval
    /// of agent time), then the interval closes.
    fn interval(&mut self, gws: &[&str]) {
        self.advance(Duration::from_millis(300));
        for g in gws {
            self.apply(g);
        }
        for g in gws {
            self.report(g, 300);
        }
        self.c.close_interval();
    }

    /// `gw` is silent while `others` report: suspect after a lease, then
    /// found dead by their probes (it answers none).
    fn kill(&mut self, gw: &str, others: &[&str]) {
        for _ in 0..12 {
            self.advance(LEASE / 3);
            for o in others {
                self.report(o, 300);
            }
            if self.c.expire(self.now) {
                return;
            }
        }
        panic!("{gw} was never found dead");
    }
}

/// `n` targets of equal traffic, all held by gw1, gw2 empty; past the
/// grace with one interval of rates in the window.
fn all_on_gw1(n: u8, cfg: impl FnOnce(&mut Config), store: Option<Store>) -> Sim {
    let targets: Vec<IpAddr> = (1..=n).map(target).collect();
    let mut c = config(&targets);
    c.window = 1;
    cfg(&mut c);
    let mut s = Sim::new(c, store);
    s.rate = targets.iter().map(|t| (*t, 1000)).collect();
    s.held.insert("gw1".into(), targets.clone());
    s.report("gw1", 0);
    s.report("gw2", 0);
    s.advance(LEASE);
    s.report("gw1", 1000);
    s.report("gw2", 1000);
    assert!(!s.c.expire(s.now), "grace over, nothing to fail over");
    s.c.close_interval();
    for t in &targets {
        assert_eq!(s.owned_by(*t).as_deref(), Some("gw1"));
    }
    s
}

fn metric(c: &Controller, now: Instant, line_start: &str) -> f64 {
    let text = metrics::render(c, now);
    text.lines()
        .find_map(|l| l.strip_prefix(line_start))
        .unwrap_or_else(|| panic!("no {line_start} in\n{text}"))
        .trim()
        .parse()
        .unwrap()
}

#[test]
fn paused_rebalances_are_recorded_not_adopted_and_failover_still_acts() {
    let mut s = all_on_gw1(2, |_| {}, None);
    let g = s.c.generation();
    assert!(s.c.pause(s.now).unwrap().paused_since_ms.is_some());
    let r = s.rebalance(Trigger::Interval).expect("due");
    assert_eq!(
        (r.result.as_str(), r.adopted, r.moves),
        ("paused", false, 1)
    );
    assert!(r.reason.starts_with("paused: would adopt"), "{}", r.reason);
    assert_eq!(r.changes.len(), 1);
    assert_eq!(r.changes[0].from.as_deref(), Some("gw1"));
    assert_eq!(r.changes[0].to, "gw2");
    assert_eq!(s.c.generation(), g, "nothing handed out");
    for t in [target(1), target(2)] {
        assert_eq!(s.owned_by(t).as_deref(), Some("gw1"));
    }
    assert_eq!(
        metric(&s.c, s.now, "sanlb_rebalances_total{result=\"paused\"}"),
        1.0
    );
    assert_eq!(metric(&s.c, s.now, "sanlb_rebalancing_paused"), 1.0);
    assert_eq!(metric(&s.c, s.now, "sanlb_withheld_moves"), 1.0);
    // The same decision again is one entry in the history.
    s.interval(&["gw1", "gw2"]);
    s.rebalance(Trigger::Interval).expect("due");
    let st = s.c.status(s.now);
    assert_eq!(
        st.rebalances
            .iter()
            .filter(|r| r.result == "paused")
            .count(),
        1
    );
    // gw1 dies: failover moves both to gw2 while paused.
    s.kill("gw1", &["gw2"]);
    assert!(s.c.expire(s.now));
    let r = s.rebalance(Trigger::Failover).expect("due");
    assert_eq!((r.result.as_str(), r.adopted), ("adopted", true));
    for t in [target(1), target(2)] {
        assert_eq!(s.owned_by(t).as_deref(), Some("gw2"));
    }
    // gw1 back; resumed, the next periodic rebalance adopts.
    s.report("gw1", 100);
    s.interval(&["gw1", "gw2"]);
    assert!(s.c.resume(s.now).unwrap().paused_since_ms.is_none());
    let r = s.rebalance(Trigger::Interval).expect("due");
    assert_eq!((r.result.as_str(), r.adopted), ("adopted", true));
    assert_eq!(
        metric(&s.c, s.now, "sanlb_controls_total{action=\"pause\"}"),
        1.0
    );
    assert_eq!(
        metric(&s.c, s.now, "sanlb_controls_total{action=\"resume\"}"),
        1.0
    );
}

#[test]
fn a_pin_moves_only_its_routes_holds_them_and_yields_to_failover() {
    let mut s = all_on_gw1(2, |_| {}, None);
    // Refusals name what is wrong and change nothing.
    assert_eq!(
        s.c.pin(target(9), "gw2", s.now),
        Err(ControlError::NotManaged(target(9)))
    );
    assert!(matches!(
        s.c.pin(target(1), "gw9", s.now),
        Err(ControlError::UnknownGateway(_))
    ));
    assert_eq!(
        s.c.unpin(target(1), s.now),
        Err(ControlError::NotPinned(target(1)))
    );
    assert!(!s.c.pins_unmet());
    // Paused: a pin still acts, and moves nothing else.
    s.c.pause(s.now).unwrap();
    let st = s.c.pin(target(1), "gw2", s.now).unwrap();
    assert_eq!(st.pins.len(), 1);
    assert_eq!(st.pins[0].gateway, "gw2");
    assert!(s.c.pins_unmet());
    let r = s.rebalance(Trigger::Pin).expect("due");
    assert_eq!((r.trigger.as_str(), r.result.as_str()), ("pin", "adopted"));
    assert_eq!(r.moves, 1);
    assert!(matches!(s.owner(target(1)), Ownership::Moving { ref to, .. } if to == "gw2"));
    assert_eq!(s.owned_by(target(2)).as_deref(), Some("gw1"));
    assert!(!s.c.pins_unmet(), "moving to its pin");
    // gw1 releases, gw2 acquires.
    s.interval(&["gw1", "gw2"]);
    s.interval(&["gw1", "gw2"]);
    assert_eq!(s.owned_by(target(1)).as_deref(), Some("gw2"));
    // Both pinned to gw2: a worse balance, adopted anyway (pins first).
    s.c.pin(target(2), "gw2", s.now).unwrap();
    let r = s.rebalance(Trigger::Pin).expect("due");
    assert!(r.adopted, "{r:?}");
    assert!(r.reason.starts_with("pins not met"), "{}", r.reason);
    s.interval(&["gw1", "gw2"]);
    s.interval(&["gw1", "gw2"]);
    assert_eq!(s.owned_by(target(2)).as_deref(), Some("gw2"));
    // A periodic rebalance cannot take them off their pin.
    s.c.resume(s.now).unwrap();
    for _ in 0..2 {
        s.interval(&["gw1", "gw2"]);
    }
    let r = s.rebalance(Trigger::Interval).expect("due");
    assert!(!r.adopted, "{r:?}");
    // The pinned gateway dies: failover moves its routes off it.
    s.kill("gw2", &["gw1"]);
    assert!(s.c.expire(s.now));
    assert!(!s.c.pins_unmet(), "a dead gateway's pin does not hold");
    let r = s.rebalance(Trigger::Failover).expect("due");
    assert!(r.adopted);
    for t in [target(1), target(2)] {
        assert_eq!(s.owned_by(t).as_deref(), Some("gw1"));
    }
    // It comes back: the pins bring them home.
    s.report("gw2", 100);
    assert!(s.c.pins_unmet());
    let r = s.rebalance(Trigger::Pin).expect("due");
    assert!(r.adopted);
    assert_eq!(r.moves, 2);
    // Unpinned: free again.
    let st = s.c.unpin(target(1), s.now).unwrap();
    assert_eq!(st.pins.len(), 1);
    assert_eq!(metric(&s.c, s.now, "sanlb_pinned_targets"), 1.0);
}

#[test]
fn a_route_in_its_cool_down_leaves_a_drained_gateway() {
    // Regression (merge of issues 14 and 18): a drain, like a failover,
    // moves routes in their cool-down; before, a hand-off on stop waited
    // for a cool-down of minutes.
    let mut s = all_on_gw1(3, |c| c.move_cooldown = Duration::from_secs(600), None);
    let r = s.rebalance(Trigger::Interval).expect("due");
    assert!(r.adopted);
    let first = r.changes[0].target;
    s.interval(&["gw1", "gw2"]);
    s.interval(&["gw1", "gw2"]);
    assert_eq!(s.owned_by(first).as_deref(), Some("gw2"));
    assert_eq!(s.c.controls_status(s.now).cooling.len(), 1);
    s.c.drain(
        &DrainRequest {
            gateway: "gw2".into(),
            boot_id: None,
        },
        s.now,
    )
    .unwrap();
    assert!(
        s.c.expire(s.now),
        "a drained gateway's routes are due to move"
    );
    let r = s.rebalance(Trigger::Failover).expect("due");
    assert!(r.adopted, "{r:?}");
    assert!(
        r.changes.iter().any(|c| c.target == first),
        "the cooling route stayed on the drained gateway: {r:?}"
    );
}

#[test]
fn a_route_in_its_cool_down_stays_unless_failover_moves_it() {
    let cooldown = Duration::from_secs(10);
    let mut s = all_on_gw1(3, |c| c.move_cooldown = cooldown, None);
    let t0 = s.now;
    let r = s.rebalance(Trigger::Interval).expect("due");
    assert!(r.adopted);
    assert_eq!(r.changes.len(), 1);
    let first = r.changes[0].target;
    s.interval(&["gw1", "gw2"]);
    s.interval(&["gw1", "gw2"]);
    assert_eq!(s.owned_by(first).as_deref(), Some("gw2"));
    let st = s.c.controls_status(s.now);
    assert_eq!(st.cooling.len(), 1);
    assert_eq!(st.cooling[0].target, first);
    assert_eq!(
        st.cooling[0].remaining_ms,
        (cooldown - (s.now - t0)).as_millis() as u64
    );
    // Within the cool-down, the problem holds it where it is…
    let job = s.c.start_rebalance_at(Trigger::Interval, s.now).unwrap();
    let i = job
        .problem
        .routes
        .iter()
        .position(|r| r.target == first)
        .unwrap();
    assert_eq!(job.problem.routes[i].allowed, Some(vec!["gw2".to_owned()]));
    assert!(
        job.problem
            .routes
            .iter()
            .enumerate()
            .all(|(j, r)| j == i || r.allowed.is_none())
    );
    // …but failover moves it off a dead gateway.
    s.kill("gw2", &["gw1"]);
    assert!(s.c.expire(s.now));
    let r = s.rebalance(Trigger::Failover).expect("due");
    assert!(r.adopted);
    assert_eq!(s.owned_by(first).as_deref(), Some("gw1"));
    let t1 = s.now;
    // gw2 back: the periodic rebalance moves one of the others, not the
    // one that just moved twice.
    s.report("gw2", 100);
    s.interval(&["gw1", "gw2"]);
    let r = s.rebalance(Trigger::Interval).expect("due");
    assert!(r.adopted, "{r:?}");
    assert_eq!(r.changes.len(), 1);
    assert_ne!(r.changes[0].target, first);
    assert_eq!(metric(&s.c, s.now, "sanlb_routes_cooling"), 2.0);
    // Past the cool-down it is free again.
    s.advance(cooldown - (s.now - t1));
    let job = s.c.start_rebalance_at(Trigger::Failover, s.now);
    assert!(
        job.is_none()
            || job
                .unwrap()
                .problem
                .routes
                .iter()
                .all(|r| r.target != first || r.allowed.is_none())
    );
    let job = s.c.start_rebalance_at(Trigger::Pin, s.now).unwrap();
    // A pin rebalance holds every unpinned route where it is.
    assert!(
        job.problem
            .routes
            .iter()
            .all(|r| r.allowed.as_ref() == r.current.as_ref().map(|c| vec![c.clone()]).as_ref())
    );
}

#[test]
fn advise_mode_records_every_decision_and_enforces_none() {
    let mut s = all_on_gw1(2, |c| c.advise = true, None);
    // The map shows what the gateways hold; shares steer nothing.
    assert_eq!(s.c.share("gw1").addresses, None);
    assert_eq!(s.c.share("gw2").addresses, None);
    let g = s.c.generation();
    let r = s.rebalance(Trigger::Interval).expect("due");
    assert_eq!(
        (r.result.as_str(), r.adopted, r.moves),
        ("advised", false, 1)
    );
    assert_eq!(r.changes.len(), 1);
    assert!(
        r.reason.starts_with("advise mode: would adopt"),
        "{}",
        r.reason
    );
    assert_eq!(s.c.generation(), g);
    // gw1 dies: the failover is advised once, not at every lease tick.
    s.kill("gw1", &["gw2"]);
    assert!(s.c.expire(s.now));
    let r = s.rebalance(Trigger::Failover).expect("due");
    assert_eq!((r.result.as_str(), r.moves), ("advised", 2));
    assert!(s.rebalance(Trigger::Failover).is_none(), "once per state");
    for t in [target(1), target(2)] {
        assert_eq!(s.owned_by(t).as_deref(), Some("gw1"), "nothing moved");
    }
    let st = s.c.status(s.now);
    assert!(st.controls.advise);
    assert_eq!(
        st.rebalances
            .iter()
            .filter(|r| r.result == "advised")
            .count(),
        2
    );
    assert_eq!(metric(&s.c, s.now, "sanlb_advise_mode"), 1.0);
    assert_eq!(
        metric(&s.c, s.now, "sanlb_rebalances_total{result=\"advised\"}"),
        2.0
    );
    assert_eq!(
        metric(&s.c, s.now, "sanlb_rebalances_total{result=\"adopted\"}"),
        0.0
    );
}

#[test]
fn controls_are_persisted_and_checked_on_load() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("state.json");
    let cooldown = Duration::from_secs(60);
    let mut s = all_on_gw1(2, |c| c.move_cooldown = cooldown, Some(Store::new(&path)));
    assert!(s.rebalance(Trigger::Interval).unwrap().adopted);
    s.c.pause(s.now).unwrap();
    s.c.pin(target(2), "gw1", s.now).unwrap();
    let before = s.c.controls_status(s.now);
    assert_eq!(before.cooling.len(), 1);
    let saved = Store::new(&path).load().unwrap().unwrap();
    assert_eq!(saved.controls.pins.len(), 1);
    assert_eq!(saved.controls.paused_since_ms, before.paused_since_ms);
    drop(s);
    let mut cfg = config(&[target(1), target(2)]);
    cfg.move_cooldown = cooldown;
    let now = Instant::now();
    let c = Controller::new(cfg.clone(), Some(Store::new(&path)), now).unwrap();
    let after = c.controls_status(now);
    assert_eq!(after.paused_since_ms, before.paused_since_ms);
    assert_eq!(after.pins, before.pins);
    assert_eq!(after.cooling.len(), 1);
    assert!(after.cooling[0].remaining_ms <= cooldown.as_millis() as u64);
    assert!(after.cooling[0].remaining_ms > 0);
    // A state file with a bad pin is refused whole.
    let mut text: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
    text["controls"]["pins"][0]["gateway"] = "not a name!".into();
    std::fs::write(&path, serde_json::to_vec(&text).unwrap()).unwrap();
    let e = Controller::new(cfg.clone(), Some(Store::new(&path)), now).unwrap_err();
    assert!(e.to_string().contains("not a gateway name"), "{e}");
    text["controls"]["pins"][0]["gateway"] = "gw1".into();
    text["controls"]["cooling"][0]["remaining_ms"] = (200_000_000u64).into();
    std::fs::write(&path, serde_json::to_vec(&text).unwrap()).unwrap();
    let e = Controller::new(cfg, Some(Store::new(&path)), now).unwrap_err();
    assert!(e.to_string().contains("longest cool-down"), "{e}");
}
