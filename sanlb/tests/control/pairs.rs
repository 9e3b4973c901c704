//! Pair mode's state machine driven directly (no HTTP, explicit clock), with
//! synthetic gateways whose portals answer from their applied shares and
//! whose counters count the sessions on their data addresses: new pairs
//! adopted where they run, moves through hold, eviction and redirect,
//! bypass and abandon, data addresses allocated, persisted, validated and
//! released, portals placed, spread and failed over, shares' content.

use std::{
    collections::{BTreeMap, BTreeSet},
    net::IpAddr,
    time::{Duration, Instant},
};

use crate::fakes::{config, target};
use sanlb::{
    controller::{Config, Controller, ControllerError, Trigger, store::Store},
    proto::{EnforceCounters, Flow, Mode, Ownership, Report, Share},
};

const LEASE: Duration = Duration::from_millis(900);
const IQN: &str = "iqn.2026-11.test.sanlb:t1";

fn host(i: u8) -> IpAddr {
    IpAddr::from([198, 18, 0, 100 + i])
}

fn pair_config(targets: &[IpAddr], pool: &str) -> Config {
    let mut cfg = config(targets);
    cfg.mode = Mode::Pair;
    cfg.window = 1;
    cfg.pairs.data_pool = Some(pool.parse().unwrap());
    cfg.pairs.target_names = [(target(1), vec![IQN.to_owned()])].into();
    cfg
}

/// Gateways that report what runs on their data addresses and apply their
/// shares; hosts that log in through the portal of the gateway holding the
/// entity's address.
struct PairSim {
    c: Controller,
    now: Instant,
    seq: BTreeMap<String, u64>,
    uptime: BTreeMap<String, u64>,
    /// Where each (host, entity) session runs: the data address.
    sessions: BTreeMap<(IpAddr, IpAddr), IpAddr>,
    /// Bytes/s of each (host, entity).
    rate: BTreeMap<(IpAddr, IpAddr), u64>,
    /// Cumulative bytes per (gateway, host, data address).
    bytes: BTreeMap<(String, IpAddr, IpAddr), u64>,
    /// The share each gateway applied last.
    applied: BTreeMap<String, Share>,
    /// Connections each gateway ended.
    ended: BTreeMap<String, Vec<(IpAddr, IpAddr)>>,
}

impl PairSim {
    fn new(cfg: Config, store: Option<Store>) -> Self {
        let now = Instant::now();
        Self {
            c: Controller::new(cfg, store, now).unwrap(),
            now,
            seq: BTreeMap::new(),
            uptime: BTreeMap::new(),
            sessions: BTreeMap::new(),
            rate: BTreeMap::new(),
            bytes: BTreeMap::new(),
            applied: BTreeMap::new(),
            ended: BTreeMap::new(),
        }
    }

    /// D(entity, gateway), from the controller's status.
    fn data(&self, entity: IpAddr, gw: &str) -> IpAddr {
        self.c
            .status(self.now)
            .data_addresses
            .iter()
            .find(|d| d.target == entity && d.gateway == gw)
            .unwrap_or_else(|| panic!("no data address of {entity} on {gw}"))
            .address
    }

    /// The gateway a data address is on.
    fn gateway_of(&self, data: IpAddr) -> String {
        self.c
            .status(self.now)
            .data_addresses
            .iter()
            .find(|d| d.address == data)
            .unwrap()
            .gateway
            .clone()
    }

    /// `gw` reports `ms` of agent time after its previous report.
    fn report(&mut self, gw: &str, ms: u64) {
        let seq = self.seq.entry(gw.into()).or_default();
        let uptime = self.uptime.entry(gw.into()).or_default();
        *uptime += ms;
        let here: BTreeSet<IpAddr> = self
            .applied
            .get(gw)
            .and_then(|s| s.addresses.clone())
            .unwrap_or_default()
            .into_iter()
            .collect();
        for ((h, e), d) in &self.sessions {
            if here.contains(d) {
                *self.bytes.entry((gw.into(), *h, *d)).or_default() +=
                    self.rate.get(&(*h, *e)).copied().unwrap_or(0) * ms / 1000;
            }
        }
        let flows = self
            .bytes
            .iter()
            .filter(|((g, _, _), _)| g == gw)
            .map(|((_, h, d), b)| Flow {
                initiator: *h,
                target: *d,
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
            applied: self.applied.get(gw).map_or(0, |s| s.generation),
            owned: here.into_iter().collect(),
            enforce: EnforceCounters::default(),
            flows,
        };
        *seq += 1;
        self.c.ingest(&r, self.now).unwrap();
    }

    fn reports(&mut self, gws: &[&str], ms: u64) {
        for gw in gws {
            self.report(gw, ms);
        }
    }

    /// `gw` applies its share as the agent does: addresses, and the
    /// connections it must end.
    fn apply(&mut self, gw: &str) {
        let s = self.c.share(gw);
        if s.addresses.is_none() {
            return;
        }
        if let Some(p) = &s.pairs {
            for ev in &p.evict {
                let before = self.sessions.len();
                self.sessions
                    .retain(|(h, _), d| !(*h == ev.host && *d == ev.data_address));
                if self.sessions.len() < before {
                    self.ended
                        .entry(gw.into())
                        .or_default()
                        .push((ev.host, ev.data_address));
                }
            }
        }
        self.applied.insert(gw.into(), s);
    }

    fn apply_all(&mut self, gws: &[&str]) {
        for gw in gws {
            self.apply(gw);
        }
    }

    /// What the portal of `entity` (on the gateway whose applied share
    /// holds its address) answers `h`: `Some(data address)` or `None`
    /// (hold).
    fn portal(&self, h: IpAddr, entity: IpAddr) -> Option<IpAddr> {
        let share = self
            .applied
            .values()
            .find(|s| s.addresses.as_ref().is_some_and(|a| a.contains(&entity)))
            .expect("a gateway runs the portal");
        let e = share
            .pairs
            .as_ref()
            .unwrap()
            .entities
            .iter()
            .find(|e| e.address == entity)
            .unwrap();
        match e.hosts.iter().find(|s| s.host == h) {
            Some(s) => s.redirect,
            None => e.default,
        }
    }

    /// `h` logs in to `entity` through the portal; returns where it landed.
    fn login(&mut self, h: IpAddr, entity: IpAddr) -> Option<IpAddr> {
        let d = self.portal(h, entity)?;
        self.sessions.insert((h, entity), d);
        Some(d)
    }

    fn owner(&self, key: (Option<IpAddr>, IpAddr)) -> Ownership {
        self.c
            .status(self.now)
            .map
            .into_iter()
            .find(|m| (m.host, m.target) == key)
            .unwrap_or_else(|| panic!("no route {key:?}"))
            .ownership
    }

    fn rebalance(&mut self, trigger: Trigger) -> bool {
        let Some(job) = self.c.start_rebalance(trigger) else {
            return false;
        };
        if self.c.config().mode == Mode::Pair {
            assert!(
                job.problem.routes.iter().all(|r| r.host.is_some()),
                "the optimiser places pairs only"
            );
        }
        let (sol, took) = job.solve().unwrap();
        self.c.finish_rebalance(&job, &sol, took, self.now).adopted
    }

    /// max/mean of the gateways' loads in the controller's status.
    fn max_mean(&self) -> f64 {
        let loads: Vec<f64> = self
            .c
            .status(self.now)
            .gateways
            .iter()
            .filter(|g| g.alive)
            .map(|g| g.load)
            .collect();
        let mean = loads.iter().sum::<f64>() / loads.len() as f64;
        loads.iter().copied().fold(0.0, f64::max) / mean
    }
}

const GWS: [&str; 3] = ["gw1", "gw2", "gw3"];

/// Three gateways past the grace, the portal of target 1 placed on gw1,
/// every share applied.
fn three_gateways(cfg: Config, store: Option<Store>) -> PairSim {
    let mut s = PairSim::new(cfg, store);
    s.reports(&GWS, 0);
    s.now += LEASE;
    s.reports(&GWS, 1000);
    assert!(!s.c.expire(s.now), "no pair to place yet");
    s.apply_all(&GWS);
    s
}

/// Three hosts on target 1, 1000 B/s each, logged in through the portal
/// (all sent to gw1 by default), adopted and measured over one interval.
fn three_hosts_on_gw1(store: Option<Store>) -> PairSim {
    let mut s = three_gateways(pair_config(&[target(1)], "198.18.2.0/24"), store);
    let e = target(1);
    for i in 1..=3 {
        s.rate.insert((host(i), e), 1000);
        assert_eq!(s.login(host(i), e), Some(s.data(e, "gw1")), "the default");
    }
    s.now += Duration::from_millis(300);
    s.reports(&GWS, 1000);
    for i in 1..=3 {
        assert_eq!(
            s.owner((Some(host(i)), e)),
            Ownership::Owned {
                gateway: "gw1".into()
            },
            "adopted where it runs"
        );
    }
    s.apply_all(&GWS);
    s.reports(&GWS, 1000);
    s.c.close_interval();
    s
}

#[test]
fn pair_mode_needs_a_data_pool() {
    let mut cfg = config(&[target(1)]);
    cfg.mode = Mode::Pair;
    let e = Controller::new(cfg, None, Instant::now()).unwrap_err();
    assert!(e.to_string().contains("data_pool"), "{e}");
}

#[test]
fn shares_carry_portals_data_addresses_and_the_pair_map() {
    let s = three_gateways(pair_config(&[target(1)], "198.18.2.0/24"), None);
    let e = target(1);
    let d: Vec<IpAddr> = GWS.iter().map(|g| s.data(e, g)).collect();
    // Lowest first in (entity, gateway) order.
    assert_eq!(
        d,
        ["198.18.2.1", "198.18.2.2", "198.18.2.3"].map(|a| a.parse::<IpAddr>().unwrap())
    );
    assert_eq!(
        s.owner((None, e)),
        Ownership::Owned {
            gateway: "gw1".into()
        },
        "the portal"
    );
    for (i, gw) in GWS.iter().enumerate() {
        let share = s.c.share(gw);
        let mut want = vec![d[i]];
        if i == 0 {
            want.insert(0, e);
        }
        assert_eq!(share.addresses, Some(want), "{gw}");
        // Every gateway gets the whole map: the portal's gateway's data
        // address for new hosts, the target's name for discovery.
        let p = share.pairs.unwrap();
        assert_eq!(p.data_port, 3261);
        assert_eq!(p.entities.len(), 1);
        assert_eq!(p.entities[0].address, e);
        assert_eq!(p.entities[0].targets, [IQN]);
        assert_eq!(p.entities[0].default, Some(d[0]));
        assert_eq!(p.entities[0].data_address, Some(d[i]), "its own");
        assert!(p.entities[0].hosts.is_empty() && p.evict.is_empty());
    }
    // Target mode's shares keep their form: no pair field on the wire.
    let t = Controller::new(config(&[target(1)]), None, Instant::now()).unwrap();
    let json = serde_json::to_value(t.share("gw1")).unwrap();
    let keys: Vec<&String> = json.as_object().unwrap().keys().collect();
    assert_eq!(keys, ["addresses", "gateway", "generation"]);
    // A pair share reads back as it was.
    let share = s.c.share("gw2");
    let back: Share = serde_json::from_str(&serde_json::to_string(&share).unwrap()).unwrap();
    assert_eq!(back, share);
}

#[test]
fn a_hot_entity_shared_by_three_hosts_balances_only_in_pair_mode() {
    let e = target(1);
    // Target mode: one address, one gateway, whatever the map.
    {
        let mut t = PairSim::new(
            {
                let mut c = config(&[e]);
                c.window = 1;
                c
            },
            None,
        );
        t.reports(&GWS, 0);
        t.now += LEASE;
        t.reports(&GWS, 1000);
        t.c.expire(t.now);
        assert!(t.rebalance(Trigger::Failover));
        let st = t.c.status(t.now);
        assert_eq!(st.map.len(), 1);
        let gws: Vec<String> = st
            .map
            .iter()
            .filter_map(|m| m.ownership.assigned().map(str::to_owned))
            .collect();
        assert_eq!(gws.len(), 1, "the whole entity on one gateway: max/mean 3");
    }

    let mut s = three_hosts_on_gw1(None);
    assert!((s.max_mean() - 3.0).abs() < 1e-9, "{}", s.max_mean());
    let g0 = s.c.generation();
    assert!(s.rebalance(Trigger::Interval));
    let g1 = s.c.generation();
    assert_eq!(g1, g0 + 1);
    let moving: Vec<IpAddr> = (1..=3)
        .map(host)
        .filter(|h| matches!(s.owner((Some(*h), e)), Ownership::Holding { .. }))
        .collect();
    assert_eq!(moving.len(), 2, "two of three equal pairs move");
    let stays = (1..=3).map(host).find(|h| !moving.contains(h)).unwrap();
    let targets: BTreeMap<IpAddr, String> = moving
        .iter()
        .map(|h| match s.owner((Some(*h), e)) {
            Ownership::Holding { from, to, hold } => {
                assert_eq!((from.as_str(), hold), ("gw1", g1));
                (*h, to)
            }
            o => unreachable!("{o:?}"),
        })
        .collect();
    assert_eq!(
        targets.values().collect::<BTreeSet<_>>().len(),
        2,
        "one to each other gateway"
    );

    // Phase 1: every portal holds them; nobody ends anything yet.
    for gw in GWS {
        let p = s.c.share(gw).pairs.unwrap();
        for h in &moving {
            let steer = p.entities[0].hosts.iter().find(|x| x.host == *h).unwrap();
            assert_eq!(steer.redirect, None, "{gw} holds {h}");
        }
        assert!(p.evict.is_empty(), "{gw}");
    }
    // gw1 and gw2 apply the hold; gw3 has not yet: still holding.
    s.apply_all(&["gw1", "gw2"]);
    s.reports(&GWS, 100);
    assert!(matches!(
        s.owner((Some(moving[0]), e)),
        Ownership::Holding { .. }
    ));
    // A login of a moving host now waits at the portal.
    assert_eq!(s.portal(moving[0], e), None);
    s.apply("gw3");
    s.report("gw3", 100);

    // Phase 2: gw1 is told to end their connections, nobody else.
    let g2 = s.c.generation();
    assert_eq!(g2, g1 + 1);
    for h in &moving {
        assert!(matches!(
            s.owner((Some(*h), e)),
            Ownership::Evicting { ref from, evict, .. } if from == "gw1" && evict == g2
        ));
    }
    let d1 = s.data(e, "gw1");
    let evict = s.c.share("gw1").pairs.unwrap().evict;
    assert_eq!(
        evict
            .iter()
            .map(|x| (x.host, x.data_address))
            .collect::<Vec<_>>(),
        moving.iter().map(|h| (*h, d1)).collect::<Vec<_>>()
    );
    for gw in ["gw2", "gw3"] {
        assert!(s.c.share(gw).pairs.unwrap().evict.is_empty(), "{gw}");
    }
    // Others acknowledging the eviction's generation changes nothing.
    s.apply_all(&["gw2", "gw3"]);
    s.reports(&["gw2", "gw3"], 100);
    assert_eq!(s.c.generation(), g2);
    s.apply("gw1");
    assert_eq!(s.ended["gw1"].len(), 2, "their sessions ended on gw1");
    // The hosts reconnect through the portal: held, gw1 has not said done.
    for h in &moving {
        assert_eq!(s.login(*h, e), None);
    }
    s.report("gw1", 100);

    // Phase 3: the portals redirect them to their new gateways.
    assert_eq!(s.c.generation(), g2 + 1);
    s.apply_all(&GWS);
    for h in &moving {
        let to = &targets[h];
        assert_eq!(
            s.owner((Some(*h), e)),
            Ownership::Owned {
                gateway: to.clone()
            }
        );
        let d = s.login(*h, e).expect("redirected");
        assert_eq!(&s.gateway_of(d), to);
        assert!(s.c.share("gw1").pairs.unwrap().evict.is_empty());
    }
    assert_eq!(s.sessions[&(stays, e)], d1, "the third one never moved");
    assert_eq!(s.c.events().pair_evictions, 2);

    // The load follows: balanced, and it stays so.
    for _ in 0..4 {
        s.now += Duration::from_millis(300);
        s.reports(&GWS, 1000);
        s.c.close_interval();
        assert!(!s.rebalance(Trigger::Interval), "no further move");
        s.apply_all(&GWS);
    }
    assert!(s.max_mean() <= 1.10, "max/mean {}", s.max_mean());
    // The status reports the traffic by entity, not data address.
    let m = s.c.status(s.now).matrix;
    assert_eq!(m.len(), 3);
    assert!(
        m.iter()
            .all(|f| f.target == e && (f.rate - 1000.0).abs() < 1.0),
        "{m:?}"
    );
}

#[test]
fn a_move_whose_hold_is_not_applied_within_a_lease_is_abandoned() {
    let mut s = three_hosts_on_gw1(None);
    let e = target(1);
    assert!(s.rebalance(Trigger::Interval));
    // gw3 never applies the hold; all keep reporting.
    s.apply_all(&["gw1", "gw2"]);
    for _ in 0..3 {
        s.now += LEASE / 3;
        s.reports(&GWS, 300);
        s.c.expire(s.now);
    }
    for i in 1..=3 {
        assert_eq!(
            s.owner((Some(host(i)), e)),
            Ownership::Owned {
                gateway: "gw1".into()
            }
        );
    }
    assert_eq!(s.c.events().abandoned, 2);
    assert!(s.ended.is_empty(), "nothing was ended");
}

#[test]
fn an_eviction_not_acknowledged_within_a_lease_is_abandoned() {
    let mut s = three_hosts_on_gw1(None);
    let e = target(1);
    assert!(s.rebalance(Trigger::Interval));
    s.apply_all(&GWS);
    s.reports(&GWS, 100);
    let g = s.c.generation();
    // gw1 takes the share but fails to end the connections: it never
    // acknowledges that generation.
    for _ in 0..4 {
        s.now += LEASE / 3;
        s.reports(&GWS, 300);
        s.c.expire(s.now);
    }
    assert!(s.applied["gw1"].generation < g);
    for i in 1..=3 {
        assert_eq!(
            s.owner((Some(host(i)), e)),
            Ownership::Owned {
                gateway: "gw1".into()
            }
        );
    }
    assert_eq!(s.c.events().abandoned, 2);
}

#[test]
fn an_eviction_on_a_dead_gateway_is_bypassed() {
    let mut s = three_hosts_on_gw1(None);
    let e = target(1);
    assert!(s.rebalance(Trigger::Interval));
    s.apply_all(&GWS);
    s.reports(&GWS, 100);
    let evicting: BTreeMap<IpAddr, String> = (1..=3)
        .map(host)
        .filter_map(|h| match s.owner((Some(h), e)) {
            Ownership::Evicting { to, .. } => Some((h, to)),
            _ => None,
        })
        .collect();
    assert_eq!(evicting.len(), 2);
    // gw1 dies before it ends anything: its sessions died with it.
    for _ in 0..4 {
        s.now += LEASE / 3;
        s.reports(&["gw2", "gw3"], 300);
        s.c.expire(s.now);
    }
    assert_eq!(s.c.events().bypassed, 2);
    for (h, to) in &evicting {
        assert_eq!(
            s.owner((Some(*h), e)),
            Ownership::Owned {
                gateway: to.clone()
            }
        );
    }
    // The portal failed over with the third pair (failover: at once).
    assert!(s.c.expire(s.now));
    assert!(s.rebalance(Trigger::Failover));
    for i in 1..=3 {
        assert_ne!(
            s.owner((Some(host(i)), e)).assigned(),
            Some("gw1"),
            "host {i}"
        );
    }
    assert_ne!(s.owner((None, e)).assigned(), Some("gw1"));
    s.apply_all(&["gw2", "gw3"]);
    let p = s.c.share("gw2").pairs.unwrap();
    let portal_gw = s.owner((None, e)).assigned().unwrap().to_owned();
    assert_eq!(p.entities[0].default, Some(s.data(e, &portal_gw)));
}

#[test]
fn portals_are_placed_spread_and_failed_over() {
    let targets = [target(1), target(2), target(3)];
    let mut s = PairSim::new(pair_config(&targets, "198.18.2.0/24"), None);
    s.report("gw1", 0);
    s.now += LEASE;
    s.report("gw1", 1000);
    s.c.expire(s.now);
    for t in targets {
        assert_eq!(
            s.owner((None, t)).assigned(),
            Some("gw1"),
            "the only gateway alive"
        );
    }
    s.apply("gw1");
    // Two more gateways: the portals even out, one move at a time, each
    // released by gw1 before another gateway takes it.
    s.reports(&["gw2", "gw3"], 0);
    for _ in 0..10 {
        s.now += Duration::from_millis(100);
        s.c.expire(s.now);
        s.apply_all(&GWS);
        let held: Vec<&IpAddr> = s
            .applied
            .values()
            .flat_map(|sh| sh.addresses.iter().flatten())
            .filter(|a| targets.contains(a))
            .collect();
        assert_eq!(
            held.len(),
            held.iter().collect::<BTreeSet<_>>().len(),
            "an entity on two gateways"
        );
        s.reports(&GWS, 100);
    }
    let per_gw: BTreeMap<String, usize> = targets
        .iter()
        .map(|t| s.owner((None, *t)).assigned().unwrap().to_owned())
        .fold(BTreeMap::new(), |mut m, g| {
            *m.entry(g).or_default() += 1;
            m
        });
    assert_eq!(
        per_gw.values().copied().collect::<Vec<_>>(),
        [1, 1, 1],
        "{per_gw:?}"
    );
    // gw2 dies: its portal goes to another gateway at the next lease check.
    let t2 = targets
        .into_iter()
        .find(|t| s.owner((None, *t)).assigned() == Some("gw2"))
        .unwrap();
    for _ in 0..4 {
        s.now += LEASE / 3;
        s.reports(&["gw1", "gw3"], 300);
        s.c.expire(s.now);
    }
    let now_on = s.owner((None, t2));
    assert!(
        matches!(&now_on, Ownership::Owned { gateway } if gateway != "gw2"),
        "{now_on:?}"
    );
}

#[test]
fn a_pool_too_small_leaves_pairs_where_they_are() {
    // Two data addresses for one entity and three gateways.
    let mut s = three_gateways(pair_config(&[target(1)], "198.18.2.0/30"), None);
    let e = target(1);
    assert_eq!(s.c.data_pool_use(), (1, 2));
    assert_eq!(s.c.status(s.now).data_addresses.len(), 2);
    let m = sanlb::controller::metrics::render(&s.c, s.now);
    assert!(m.contains("sanlb_data_pool_unserved 1"), "{m}");
    for i in 1..=3 {
        s.rate.insert((host(i), e), 1000);
        s.login(host(i), e);
    }
    s.now += Duration::from_millis(300);
    s.reports(&GWS, 1000);
    s.apply_all(&GWS);
    s.reports(&GWS, 1000);
    s.c.close_interval();
    assert!(s.rebalance(Trigger::Interval));
    for i in 1..=3 {
        assert_ne!(s.owner((Some(host(i)), e)).assigned(), Some("gw3"));
    }
}

#[test]
fn data_addresses_persist_are_validated_and_are_released() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("state.json");
    let e = target(1);
    let mut s = three_hosts_on_gw1(Some(Store::new(&path)));
    assert!(s.rebalance(Trigger::Interval));
    let before = s.c.status(s.now);
    let saved = Store::new(&path).load().unwrap().unwrap();
    assert_eq!(saved.data_addresses.len(), 3);
    assert_eq!(
        saved
            .routes
            .iter()
            .filter(|r| matches!(r.ownership, Ownership::Holding { .. }))
            .count(),
        2
    );
    drop(s);

    // Resumed as they were: addresses, pairs, moves in flight.
    let cfg = pair_config(&[e], "198.18.2.0/24");
    let c = Controller::new(cfg.clone(), Some(Store::new(&path)), Instant::now()).unwrap();
    let after = c.status(Instant::now());
    assert_eq!(after.data_addresses, before.data_addresses);
    assert_eq!(after.generation, before.generation);
    let map = |st: &sanlb::proto::Status| {
        st.map
            .iter()
            .map(|m| (m.host, m.target, m.ownership.clone()))
            .collect::<Vec<_>>()
    };
    assert_eq!(map(&after), map(&before));
    drop(c);

    // Another pool: refused, naming the address.
    let other = pair_config(&[e], "198.18.3.0/24");
    match Controller::new(other, Some(Store::new(&path)), Instant::now()) {
        Err(ControllerError::DataPool { address, .. }) => {
            assert_eq!(address, before.data_addresses[0].address)
        }
        r => panic!("{:?}", r.map(|_| ())),
    }
    // Edited files that break the rules are refused whole.
    let text = std::fs::read_to_string(&path).unwrap();
    let mut json: serde_json::Value = serde_json::from_str(&text).unwrap();
    let d = json["data_addresses"].as_array().unwrap().clone();
    for (what, edit) in [
        ("address listed twice", {
            let mut d = d.clone();
            d[1]["address"] = d[0]["address"].clone();
            d
        }),
        ("unknown gateway", {
            let mut d = d.clone();
            d[0]["gateway"] = "gw9".into();
            d
        }),
        ("no such storage entity", {
            let mut d = d.clone();
            d[0]["target"] = "198.18.1.77".into();
            d
        }),
        ("same entity and gateway", {
            let mut d = d.clone();
            d[1]["gateway"] = d[0]["gateway"].clone();
            d
        }),
        ("not a usable address", {
            let mut d = d.clone();
            d[0]["address"] = "224.0.0.1".into();
            d
        }),
    ] {
        json["data_addresses"] = edit.into();
        std::fs::write(&path, json.to_string()).unwrap();
        let e = Controller::new(cfg.clone(), Some(Store::new(&path)), Instant::now())
            .unwrap_err()
            .to_string();
        assert!(e.contains(what), "{what}: {e}");
    }
    json["data_addresses"] = d.into();
    std::fs::write(&path, json.to_string()).unwrap();
    Controller::new(cfg, Some(Store::new(&path)), Instant::now()).unwrap();
}

#[test]
fn a_forgotten_gateway_gives_its_data_addresses_back() {
    let mut cfg = pair_config(&[target(1)], "198.18.2.0/24");
    cfg.forget_after = LEASE * 2;
    let mut s = three_gateways(cfg, None);
    let d3 = s.data(target(1), "gw3");
    for _ in 0..8 {
        s.now += LEASE / 2;
        s.reports(&["gw1", "gw2"], 450);
        s.c.expire(s.now);
    }
    let st = s.c.status(s.now);
    assert!(st.gateways.iter().all(|g| g.name != "gw3"), "forgotten");
    assert!(st.data_addresses.iter().all(|d| d.gateway != "gw3"));
    // A new gateway gets the address back.
    s.report("gw4", 0);
    assert_eq!(s.data(target(1), "gw4"), d3);
}
