//! Fakes for the controller and agent tests: a simulated SAN ("world")
//! whose traffic to a target is counted only by the gateway that holds the
//! target's address, in-memory address owners that record any moment at
//! which two gateways hold the same address, and helpers to run a real
//! controller and real agents on loopback.

use std::{
    collections::{BTreeMap, BTreeSet, HashMap},
    net::IpAddr,
    path::Path,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use sanlb::{
    agent::{Agent, AgentConfig, AgentError, Client, CounterSource, FaultConfig},
    controller::{Config, Controller, server::Server, store::Store},
    enforce::{AddressOwner, EnforceError, LinkState, ProbeSpec},
    optimize::{Options, Solver},
    proto::{Flow, MacAddr, Mode, ProbeAnswer, ProbedAddress, Service, Status},
};

pub const TOKEN: &str = "test-token-0123456789";
pub const HOST: IpAddr = IpAddr::V4(std::net::Ipv4Addr::new(198, 18, 0, 10));

pub fn target(i: u8) -> IpAddr {
    IpAddr::from([198, 18, 1, i])
}

#[derive(Default)]
struct WorldInner {
    /// Bytes/s towards each target.
    demand: BTreeMap<IpAddr, f64>,
    /// Addresses each gateway holds.
    held: BTreeMap<String, BTreeSet<IpAddr>>,
    /// Every (address, gateway, other holder) seen at an acquire.
    violations: Vec<(IpAddr, String, String)>,
    /// Gateways whose operations fail (release errors).
    failing: BTreeSet<String>,
    /// Gateways whose host-facing link is down (they answer no probe).
    link_down: BTreeSet<String>,
    /// Gateways whose storage service is down (a probe's SYN gets a reset).
    service_down: BTreeSet<String>,
    /// Addresses gateways hold without sanlb's marker (added by hand).
    by_hand: BTreeMap<String, BTreeSet<IpAddr>>,
    /// Addresses foreign stations hold, by MAC.
    foreign: BTreeMap<IpAddr, MacAddr>,
    /// Every re-announcement: (gateway, address).
    reannounced: Vec<(String, IpAddr)>,
}

/// The MAC of a gateway of the fake world (its name hashed).
pub fn mac_of(gateway: &str) -> MacAddr {
    let h = gateway.bytes().fold(0x811c_9dc5u32, |h, b| {
        (h ^ u32::from(b)).wrapping_mul(0x0100_0193)
    });
    let b = h.to_be_bytes();
    MacAddr([0x02, 0x5a, b[0], b[1], b[2], b[3]])
}

/// The simulated SAN.
#[derive(Clone, Default)]
pub struct World(Arc<Mutex<WorldInner>>);

impl World {
    pub fn set_demand(&self, demand: &[(IpAddr, f64)]) {
        self.0.lock().unwrap().demand = demand.iter().copied().collect();
    }

    pub fn demand(&self) -> BTreeMap<IpAddr, f64> {
        self.0.lock().unwrap().demand.clone()
    }

    pub fn held(&self, gateway: &str) -> BTreeSet<IpAddr> {
        self.0
            .lock()
            .unwrap()
            .held
            .get(gateway)
            .cloned()
            .unwrap_or_default()
    }

    pub fn all_held(&self) -> BTreeMap<String, BTreeSet<IpAddr>> {
        self.0.lock().unwrap().held.clone()
    }

    pub fn violations(&self) -> Vec<(IpAddr, String, String)> {
        self.0.lock().unwrap().violations.clone()
    }

    /// The gateway's machine is gone: it holds nothing any more.
    pub fn crash(&self, gateway: &str) {
        self.0.lock().unwrap().held.remove(gateway);
    }

    /// The gateway's host-facing link goes down or up.
    pub fn set_link(&self, gateway: &str, up: bool) {
        let mut w = self.0.lock().unwrap();
        if up {
            w.link_down.remove(gateway);
        } else {
            w.link_down.insert(gateway.into());
        }
    }

    /// The gateway's storage service stops (its machine answers on).
    pub fn stop_service(&self, gateway: &str) {
        self.0.lock().unwrap().service_down.insert(gateway.into());
    }

    /// Someone adds `addr` by hand on `gateway` (no marker).
    pub fn add_by_hand(&self, gateway: &str, addr: IpAddr) {
        let mut w = self.0.lock().unwrap();
        w.by_hand.entry(gateway.into()).or_default().insert(addr);
    }

    /// What `gateway` holds without the marker.
    pub fn by_hand(&self, gateway: &str) -> BTreeSet<IpAddr> {
        self.0
            .lock()
            .unwrap()
            .by_hand
            .get(gateway)
            .cloned()
            .unwrap_or_default()
    }

    /// A foreign station claims `addr` (`None`: gives it up).
    pub fn set_foreign(&self, addr: IpAddr, mac: Option<MacAddr>) {
        let mut w = self.0.lock().unwrap();
        match mac {
            Some(m) => w.foreign.insert(addr, m),
            None => w.foreign.remove(&addr),
        };
    }

    /// Every re-announcement so far.
    pub fn reannounced(&self) -> Vec<(String, IpAddr)> {
        self.0.lock().unwrap().reannounced.clone()
    }

    /// The stations that answer a probe for `addr` from `prober`, as the
    /// data path would: gateways holding it (with or without the marker)
    /// whose link is up, foreign stations; the prober's own answer is not
    /// listed.
    pub fn answers(&self, prober: &str, addr: IpAddr, service: bool) -> Vec<ProbeAnswer> {
        let w = self.0.lock().unwrap();
        let mut out = Vec::new();
        for (g, set) in w.held.iter().chain(w.by_hand.iter()) {
            if g == prober || !set.contains(&addr) || w.link_down.contains(g) {
                continue;
            }
            let svc = match (service, w.service_down.contains(g)) {
                (false, _) => Service::Unchecked,
                (true, true) => Service::Closed,
                (true, false) => Service::Open,
            };
            if !out.iter().any(|a: &ProbeAnswer| a.mac == mac_of(g)) {
                out.push(ProbeAnswer {
                    mac: mac_of(g),
                    service: svc,
                });
            }
        }
        if let Some(m) = w.foreign.get(&addr) {
            out.push(ProbeAnswer {
                mac: *m,
                service: Service::Unchecked,
            });
        }
        out
    }

    pub fn set_failing(&self, gateway: &str, failing: bool) {
        let mut w = self.0.lock().unwrap();
        if failing {
            w.failing.insert(gateway.into());
        } else {
            w.failing.remove(gateway);
        }
    }

    pub fn owner(&self, gateway: &str) -> MemOwner {
        MemOwner {
            world: self.clone(),
            gateway: gateway.into(),
        }
    }

    pub fn counters(&self, gateway: &str) -> WorldCounters {
        WorldCounters {
            world: self.clone(),
            gateway: gateway.into(),
            last: Instant::now(),
            cum: HashMap::new(),
        }
    }
}

/// An address owner whose addresses live in the world.
#[derive(Clone)]
pub struct MemOwner {
    world: World,
    gateway: String,
}

impl AddressOwner for MemOwner {
    async fn owned(&self) -> Result<BTreeSet<IpAddr>, EnforceError> {
        Ok(self.world.held(&self.gateway))
    }

    async fn acquire(&self, addr: IpAddr) -> Result<(), EnforceError> {
        let mut w = self.world.0.lock().unwrap();
        let others: Vec<String> = w
            .held
            .iter()
            .filter(|(g, set)| **g != self.gateway && set.contains(&addr))
            .map(|(g, _)| g.clone())
            .collect();
        for o in others {
            w.violations.push((addr, self.gateway.clone(), o));
        }
        w.held.entry(self.gateway.clone()).or_default().insert(addr);
        Ok(())
    }

    async fn release(&self, addr: IpAddr) -> Result<(), EnforceError> {
        let mut w = self.world.0.lock().unwrap();
        if w.failing.contains(&self.gateway) {
            return Err(EnforceError::Os {
                what: format!("removing {addr}"),
                source: std::io::Error::other("injected failure"),
            });
        }
        if let Some(s) = w.held.get_mut(&self.gateway) {
            s.remove(&addr);
        }
        Ok(())
    }

    async fn link(&self) -> Result<LinkState, EnforceError> {
        let w = self.world.0.lock().unwrap();
        Ok(LinkState {
            up: !w.link_down.contains(&self.gateway),
            mac: Some(mac_of(&self.gateway)),
        })
    }

    async fn probe(&self, spec: &ProbeSpec) -> Result<Vec<ProbedAddress>, EnforceError> {
        if self
            .world
            .0
            .lock()
            .unwrap()
            .link_down
            .contains(&self.gateway)
        {
            return Err(EnforceError::Os {
                what: "probing".into(),
                source: std::io::Error::from_raw_os_error(libc_enetdown()),
            });
        }
        // The probe window passes.
        tokio::time::sleep(spec.window).await;
        Ok(spec
            .addrs
            .iter()
            .map(|a| ProbedAddress {
                address: *a,
                answers: self
                    .world
                    .answers(&self.gateway, *a, spec.service_port.is_some()),
            })
            .collect())
    }

    async fn reannounce(&self, addr: IpAddr) -> Result<(), EnforceError> {
        let mut w = self.world.0.lock().unwrap();
        if w.held.get(&self.gateway).is_some_and(|s| s.contains(&addr)) {
            w.reannounced.push((self.gateway.clone(), addr));
        }
        Ok(())
    }

    async fn remove_unmanaged(&self, addr: IpAddr) -> Result<(), EnforceError> {
        let mut w = self.world.0.lock().unwrap();
        if let Some(s) = w.by_hand.get_mut(&self.gateway) {
            s.remove(&addr);
        }
        Ok(())
    }
}

/// ENETDOWN, without a libc dependency in the tests.
fn libc_enetdown() -> i32 {
    100
}

/// Counters of one gateway: traffic to the targets it holds, at the
/// world's demand, accumulated on every read.
pub struct WorldCounters {
    world: World,
    gateway: String,
    last: Instant,
    cum: HashMap<IpAddr, u64>,
}

impl CounterSource for WorldCounters {
    fn flows(&mut self) -> Result<Vec<Flow>, AgentError> {
        let now = Instant::now();
        let dt = now.duration_since(self.last).as_secs_f64();
        self.last = now;
        let w = self.world.0.lock().unwrap();
        let held = w.held.get(&self.gateway).cloned().unwrap_or_default();
        for t in held {
            let rate = w.demand.get(&t).copied().unwrap_or(0.0);
            *self.cum.entry(t).or_default() += (rate * dt) as u64;
        }
        Ok(self
            .cum
            .iter()
            .map(|(t, b)| Flow {
                initiator: HOST,
                target: *t,
                to_target_bytes: b / 2,
                to_initiator_bytes: b - b / 2,
            })
            .collect())
    }
}

/// A controller configuration with short periods.
pub fn config(targets: &[IpAddr]) -> Config {
    Config {
        interval: Duration::from_millis(300),
        window: 2,
        w_var: 1.0,
        // Cheap moves and a low bar: max/mean 1.10 over four gateways is a
        // var_norm of at least 0.0033, which must be worth leaving.
        w_change: 0.0002,
        min_gain: 0.001,
        lease: Duration::from_millis(900),
        startup_grace: Duration::from_millis(900),
        release_timeout: Duration::from_millis(900),
        probe_timeout: Duration::from_millis(500),
        reprobe: Duration::from_millis(500),
        forget_after: Duration::from_secs(3600),
        mode: Mode::Target,
        storage: vec![],
        targets: targets.to_vec(),
        traffic: None,
        pairs: Default::default(),
        traffic_replace: false,
        solver: Options {
            solver: Solver::Auto,
            time_limit: Duration::from_millis(200),
            seed: 1,
        },
        advise: false,
        move_cooldown: Duration::ZERO,
    }
}

/// Starts a controller on loopback (on `port`, or any when 0).
pub async fn start(cfg: Config, state: &Path, port: u16) -> Server {
    let c = Controller::new(cfg, Some(Store::new(state)), Instant::now()).expect("controller");
    let listener = tokio::net::TcpListener::bind(("127.0.0.1", port))
        .await
        .expect("bind");
    Server::start(c, TOKEN.into(), listener).expect("server")
}

pub fn client(server_port: u16) -> Client {
    Client::new(
        &format!("http://127.0.0.1:{server_port}"),
        TOKEN,
        Duration::from_secs(2),
    )
    .unwrap()
}

/// A running fake agent.
pub struct RunningAgent {
    stop: tokio::sync::oneshot::Sender<()>,
    task: tokio::task::JoinHandle<()>,
}

impl RunningAgent {
    /// Stops reporting (the process is gone; what it held stays held).
    pub async fn kill(self) {
        let _ = self.stop.send(());
        let _ = self.task.await;
    }
}

pub fn spawn_agent(world: &World, gateway: &str, port: u16) -> RunningAgent {
    spawn_agent_with(world, gateway, port, FaultConfig::default())
}

/// An agent with the fault settings `faults`.
pub fn spawn_agent_with(
    world: &World,
    gateway: &str,
    port: u16,
    faults: FaultConfig,
) -> RunningAgent {
    let cfg = AgentConfig {
        gateway: gateway.into(),
        capacity: 1.0,
        interval: Duration::from_millis(100),
        long_poll: Duration::from_secs(5),
    };
    let mut agent = Agent::new(
        cfg,
        client(port),
        world.counters(gateway),
        world.owner(gateway),
    )
    .with_faults(faults);
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

/// Polls `f` every 50 ms until it holds, at most `limit`.
pub async fn eventually<F: FnMut() -> bool>(limit: Duration, what: &str, mut f: F) {
    let end = Instant::now() + limit;
    while !f() {
        assert!(Instant::now() < end, "timed out waiting for: {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

pub fn status(server: &Server) -> Status {
    server.state().lock().status(Instant::now())
}

/// max/mean of the gateways' true loads (world demand) under the map the
/// controller hands out, over alive gateways.
pub fn true_imbalance(st: &Status, world: &World) -> f64 {
    let demand = world.demand();
    let mut loads: BTreeMap<&str, f64> = st
        .gateways
        .iter()
        .filter(|g| g.alive)
        .map(|g| (g.name.as_str(), 0.0))
        .collect();
    for m in &st.map {
        if let Some(g) = m.ownership.assigned()
            && let Some(l) = loads.get_mut(g)
        {
            *l += demand.get(&m.target).copied().unwrap_or(0.0);
        }
    }
    let max = loads.values().copied().fold(0.0, f64::max);
    let mean = loads.values().sum::<f64>() / loads.len() as f64;
    max / mean
}

/// Every target is held by exactly one gateway among `alive`.
pub fn held_once(world: &World, alive: &[&str], targets: &[IpAddr]) -> bool {
    let held = world.all_held();
    targets.iter().all(|t| {
        alive
            .iter()
            .filter(|g| held.get(**g).is_some_and(|s| s.contains(t)))
            .count()
            == 1
    })
}

/// Liveness for the explicit-clock state-machine tests (issue 14: silence
/// is not death, a probe's verdict is). Each gateway heartbeats after its
/// report and answers at once the probes the controller asks it for: for
/// every probed address, the other gateways holding it that reported within
/// `fresh` answer (in these simulations a gateway that stopped reporting is
/// a dead machine).
#[derive(Default)]
pub struct Beats {
    seq: BTreeMap<String, u64>,
    last: BTreeMap<String, Instant>,
}

impl Beats {
    /// `gw` reported at `now` and heartbeats; `held` is what each gateway
    /// holds.
    pub fn beat(
        &mut self,
        c: &mut Controller,
        now: Instant,
        gw: &str,
        held: &BTreeMap<String, Vec<IpAddr>>,
        fresh: Duration,
    ) {
        use sanlb::proto::{Heartbeat, ProbeResult};
        self.last.insert(gw.into(), now);
        let mut results = vec![];
        // A reply may ask for probes; their results go in the next beat.
        for _ in 0..4 {
            let seq = self.seq.entry(gw.into()).or_default();
            let hb = Heartbeat {
                gateway: gw.into(),
                boot_id: format!("boot-{gw}"),
                seq: *seq,
                link_up: true,
                mac: Some(mac_of(gw)),
                probes: std::mem::take(&mut results),
                conflicts: vec![],
            };
            *seq += 1;
            let reply = c.heartbeat(&hb, now).expect("heartbeat");
            if reply.probes.is_empty() {
                return;
            }
            results = reply
                .probes
                .iter()
                .map(|p| ProbeResult {
                    id: p.id,
                    addresses: p
                        .addresses
                        .iter()
                        .map(|a| ProbedAddress {
                            address: *a,
                            answers: held
                                .iter()
                                .filter(|(g, h)| {
                                    *g != gw
                                        && h.contains(a)
                                        && self
                                            .last
                                            .get(*g)
                                            .is_some_and(|t| now.duration_since(*t) < fresh)
                                })
                                .map(|(g, _)| ProbeAnswer {
                                    mac: mac_of(g),
                                    service: Service::Open,
                                })
                                .collect(),
                        })
                        .collect(),
                    failed: false,
                })
                .collect();
        }
        panic!("{gw}: probes asked again and again");
    }
}
