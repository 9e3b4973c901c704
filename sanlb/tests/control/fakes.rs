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
    agent::{Agent, AgentConfig, AgentError, Client, CounterSource},
    controller::{Config, Controller, server::Server, store::Store},
    enforce::{AddressOwner, EnforceError},
    optimize::{Options, Solver},
    proto::{Flow, Mode, Status},
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
    );
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
