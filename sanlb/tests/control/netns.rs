//! The agent loop with the real address owner (rtnetlink, gratuitous ARP) in
//! network namespaces, driven by a real controller over HTTP: the map is
//! applied on the NICs, no address is ever on both gateways, and a dead
//! gateway's addresses move to the other one after the lease, announced to
//! the host. The enforcement counters each agent reports agree with the
//! addresses the kernel shows on its NIC.

use std::{
    collections::BTreeSet,
    net::IpAddr,
    time::{Duration, Instant},
};

use crate::fakes::{TOKEN, config};
use sanlb::{
    agent::{Agent, AgentConfig, AgentError, Client, CounterSource},
    controller::{self, Controller, server::Server},
    enforce::{DEFAULT_ADDR_PROTO, NetlinkOwner, OwnerConfig},
    proto::{EnforceCounters, Flow},
};
use sanlb_test::{
    probe,
    segment::{Node, Segment as Lab},
};

struct NoTraffic;

impl CounterSource for NoTraffic {
    fn flows(&mut self) -> Result<Vec<Flow>, AgentError> {
        Ok(vec![])
    }
}

fn storage() -> [IpAddr; 2] {
    [
        "198.18.1.50".parse().unwrap(),
        "198.18.1.51".parse().unwrap(),
    ]
}

/// sanlb's addresses on the node's eth0.
fn held(node: &Node) -> BTreeSet<IpAddr> {
    probe::addresses_on(node, "eth0")
        .into_iter()
        .filter(|a| a.proto == Some(DEFAULT_ADDR_PROTO))
        .map(|a| a.addr)
        .collect()
}

/// Starts the agent of `node`; it stops when the sender is dropped or fires.
fn spawn_agent(node: &Node, url: &str) -> tokio::sync::oneshot::Sender<()> {
    let (stop, rx) = tokio::sync::oneshot::channel::<()>();
    let cfg = AgentConfig {
        gateway: node.name.clone(),
        capacity: 1.0,
        interval: Duration::from_millis(100),
        long_poll: Duration::from_secs(5),
    };
    let client = Client::new(url, TOKEN, Duration::from_secs(2)).unwrap();
    node.rt.spawn(async move {
        // Created on a thread of the gateway's namespace.
        let owner = NetlinkOwner::new(OwnerConfig::new("eth0")).expect("address owner");
        let mut agent = Agent::new(cfg, client, NoTraffic, owner);
        agent
            .run(async {
                let _ = rx.await;
            })
            .await;
    });
    stop
}

/// A controller for `cfg`, serving HTTP on the host's address.
fn start_controller(lab: &Lab, cfg: controller::Config) -> Server {
    let at = (lab.host.v4, 0);
    lab.host.rt.run(async move {
        let c = Controller::new(cfg, None, Instant::now()).unwrap();
        let listener = tokio::net::TcpListener::bind(at).await.unwrap();
        Server::start(c, TOKEN.into(), listener).unwrap()
    })
}

/// The enforcement counters the controller has from `gw`'s agent.
fn reported(lab: &Lab, url: &str, gw: &Node) -> EnforceCounters {
    let client = Client::new(url, TOKEN, Duration::from_secs(2)).unwrap();
    let status = lab
        .host
        .rt
        .run(async move { client.status().await })
        .expect("the controller's status");
    status
        .gateways
        .into_iter()
        .find(|g| g.name == gw.name)
        .unwrap_or_else(|| panic!("{} in the status", gw.name))
        .enforce
}

/// Waits (at most 5 s) until `gw`'s reported counters satisfy `ok`, which
/// says what it checks; returns them.
fn wait_reported(
    lab: &Lab,
    url: &str,
    gw: &Node,
    what: &str,
    ok: impl Fn(&EnforceCounters) -> bool,
) -> EnforceCounters {
    let start = Instant::now();
    loop {
        let got = reported(lab, url, gw);
        if ok(&got) {
            return got;
        }
        assert!(
            start.elapsed() < Duration::from_secs(5),
            "{} reported {got:?}; expected {what}",
            gw.name
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// What an agent that started on an empty NIC reports once it applied its
/// share: every address it holds acquired (and any it gave up released),
/// no failure.
fn agrees_with_nic(gw: &Node) -> impl Fn(&EnforceCounters) -> bool {
    let held = held(gw).len() as u64;
    move |c| c.failed == 0 && c.acquired.checked_sub(c.released) == Some(held)
}

/// Waits (at most 20 s) until every target is on exactly one gateway.
/// Returns the owner of the first target, the other gateway, and every
/// address seen on both gateways at once meanwhile (there must be none).
fn placed<'a>(lab: &'a Lab, targets: &[IpAddr]) -> (&'a Node, &'a Node, Vec<IpAddr>) {
    let mut both = Vec::new();
    let start = Instant::now();
    loop {
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "the map was not applied"
        );
        let (a, b) = (held(&lab.gw1), held(&lab.gw2));
        both.extend(a.intersection(&b).copied());
        if targets.iter().all(|t| a.contains(t) ^ b.contains(t)) {
            return if a.contains(&targets[0]) {
                (&lab.gw1, &lab.gw2, both)
            } else {
                (&lab.gw2, &lab.gw1, both)
            };
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
#[ignore = "privileged: cargo xtask test runs it as root"]
fn addresses_move_between_real_gateways_one_owner_at_a_time() {
    let lab = Lab::new();
    let targets = storage();
    let cfg = config(&targets);
    let lease = cfg.lease;
    let server = start_controller(&lab, cfg);
    let url = format!("http://{}", server.addr());
    let mut stops = vec![spawn_agent(&lab.gw1, &url), spawn_agent(&lab.gw2, &url)];
    probe::serve_name(&lab.gw1);
    probe::serve_name(&lab.gw2);

    // Watch both NICs all along: an address must never be on both.
    let (dead, alive, mut both) = placed(&lab, &targets);
    // The host talks to the first address: the owner answers.
    let ask = |node: &Node| {
        let t = targets[0];
        node.rt
            .run(async move { probe::ask_name(t, Duration::from_secs(2)).await })
    };
    assert_eq!(ask(&lab.host).as_deref(), Some(dead.name.as_str()));
    assert_eq!(probe::neighbour(&lab.host, targets[0]), Some(dead.mac));
    // The owner of the first address dies: agent gone, addresses gone.
    let i = if dead.name == "gw1" { 0 } else { 1 };
    // Both agents started on an empty NIC: their counters tell what the NIC
    // holds.
    let mut before = Vec::new();
    for gw in lab.gateways() {
        before.push(wait_reported(
            &lab,
            &url,
            gw,
            "acquired - released = held",
            agrees_with_nic(gw),
        ));
    }
    let orphans = held(dead).len() as u64;
    let _ = stops.remove(i).send(());
    std::thread::sleep(Duration::from_millis(100));
    for t in held(dead) {
        dead.ip(&["addr", "del", &format!("{t}/32"), "dev", "eth0"]);
    }
    let died = Instant::now();
    // Within the lease nothing moves; after it, the other gateway holds all.
    std::thread::sleep(lease / 4);
    let (a, b) = (held(&lab.gw1), held(&lab.gw2));
    both.extend(a.intersection(&b).copied());
    assert!(!held(alive).contains(&targets[0]), "moved before the lease");
    let moved = loop {
        let h = held(alive);
        if targets.iter().all(|t| h.contains(t)) {
            break died.elapsed();
        }
        assert!(
            died.elapsed() < lease + Duration::from_secs(5),
            "no failover: {h:?}"
        );
        std::thread::sleep(Duration::from_millis(20));
    };
    // The host learned the new owner from the announcement.
    let seen = probe::wait_neighbour(&lab.host, targets[0], alive.mac, Duration::from_secs(3));
    assert!(
        seen.is_some(),
        "the host still resolves {} elsewhere",
        targets[0]
    );
    assert_eq!(ask(&lab.host).as_deref(), Some(alive.name.as_str()));
    assert!(both.is_empty(), "on both gateways: {both:?}");
    // The survivor counts the addresses it took over, and only those.
    let was = before[1 - i];
    wait_reported(&lab, &url, alive, "the orphans acquired", move |c| {
        c.acquired == was.acquired + orphans && c.released == was.released && c.failed == 0
    });
    eprintln!("failover after {moved:?} (lease {lease:?})");
    drop(stops);
    lab.host.rt.run(async move { server.stop().await });
}

/// Issue 6's restart case: an agent that is killed leaves its addresses on
/// the NIC (fail-static), the other gateway takes them after the lease, and
/// when the killed agent comes back it starts empty: it releases its stale
/// managed addresses and leaves an address it does not manage alone.
#[test]
#[ignore = "privileged: cargo xtask test runs it as root"]
fn a_restarted_agent_drops_stale_addresses_and_keeps_unmanaged_ones() {
    let lab = Lab::new();
    let targets = storage();
    let cfg = config(&targets);
    let lease = cfg.lease;
    let server = start_controller(&lab, cfg);
    let url = format!("http://{}", server.addr());
    let mut stops = vec![spawn_agent(&lab.gw1, &url), spawn_agent(&lab.gw2, &url)];
    let (victim, other, _) = placed(&lab, &targets);
    let i = if victim.name == "gw1" { 0 } else { 1 };
    let stale = held(victim);
    assert!(!stale.is_empty());
    // An address the agent does not manage (no sanlb marker) on the same NIC.
    victim.ip(&["addr", "add", "198.18.1.99/32", "dev", "eth0"]);

    // Kill the agent: fail-static, its addresses stay where they are.
    let _ = stops.remove(i).send(());
    std::thread::sleep(Duration::from_millis(200));
    assert_eq!(held(victim), stale, "a stopped agent must not release");

    // After the lease the other gateway holds every address.
    let died = Instant::now();
    loop {
        if targets.iter().all(|t| held(other).contains(t)) {
            break;
        }
        assert!(
            died.elapsed() < lease + Duration::from_secs(5),
            "no failover"
        );
        std::thread::sleep(Duration::from_millis(20));
    }

    // The agent comes back: it starts empty and drops what it held.
    let restarted = Instant::now();
    stops.push(spawn_agent(victim, &url));
    loop {
        if held(victim).is_empty() {
            break;
        }
        assert!(
            restarted.elapsed() < lease + Duration::from_secs(5),
            "stale addresses stayed: {:?}",
            held(victim)
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    let unmanaged = probe::addresses_on(victim, "eth0")
        .into_iter()
        .any(|a| a.addr == "198.18.1.99".parse::<IpAddr>().unwrap());
    assert!(unmanaged, "the unmanaged address was touched");
    // The new run reports what it did: released the stale ones, nothing
    // else (the unmanaged address is not its to count).
    let stale_n = stale.len() as u64;
    wait_reported(&lab, &url, victim, "the stale addresses released", |c| {
        *c == EnforceCounters {
            acquired: 0,
            released: stale_n,
            failed: 0,
        }
    });
    assert!(targets.iter().all(|t| held(other).contains(t)));
    eprintln!("restart reconciled after {:?}", restarted.elapsed());
    drop(stops);
    lab.host.rt.run(async move { server.stop().await });
}
