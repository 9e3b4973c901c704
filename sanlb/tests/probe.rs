//! Privileged tests of the data-path probes (issue 14) on the lab's segment
//! (`sanlb_test::segment`: a host, two gateways, IPv4 and IPv6): who answers
//! for an address, whether the service behind it listens, duplicates, the
//! NIC's link state, announcing again, and removing an unmanaged address on
//! order. What is asserted is checked against the kernel's own view (its
//! address list, the host's neighbour table, a capture on the host).
//!
//! Run as root: `cargo test -p sanlb --test probe -- --ignored --test-threads=1`

use std::{
    net::IpAddr,
    sync::Arc,
    time::{Duration, Instant},
};

use sanlb::{
    enforce::{AddressOwner as _, EnforceError, NetlinkOwner, OwnerConfig, ProbeSpec},
    proto::{MacAddr, ProbedAddress, Service},
};
use sanlb_test::{
    capture::{Capture, parse_arp, parse_na},
    probe::{NAME_PORT, addresses_on, neighbour, serve_name},
    segment::{Node, Segment as Lab, storage},
};

fn owner_on(node: &Node) -> Arc<NetlinkOwner> {
    Arc::new(
        node.rt
            .run(async move { NetlinkOwner::new(OwnerConfig::new("eth0")) })
            .unwrap_or_else(|e| panic!("owner on {}: {e}", node.name)),
    )
}

/// Probes `addrs` from `node` (on a thread of its namespace).
fn probe(
    node: &Node,
    owner: &Arc<NetlinkOwner>,
    addrs: &[IpAddr],
    port: Option<u16>,
) -> Result<Vec<ProbedAddress>, EnforceError> {
    let owner = Arc::clone(owner);
    let spec = ProbeSpec {
        addrs: addrs.to_vec(),
        window: Duration::from_millis(100),
        service_port: port,
    };
    node.rt.run(async move { owner.probe(&spec).await })
}

fn macs(p: &ProbedAddress) -> Vec<(MacAddr, Service)> {
    p.answers.iter().map(|a| (a.mac, a.service)).collect()
}

fn mac(node: &Node) -> MacAddr {
    MacAddr(node.mac)
}

/// Adds `addr` by hand on the node (no marker), as an operator would.
fn add_by_hand(node: &Node, addr: IpAddr) {
    let len = if addr.is_ipv4() { 32 } else { 128 };
    let mut args = vec!["addr", "add"];
    let a = format!("{addr}/{len}");
    args.push(&a);
    args.extend(["dev", "eth0"]);
    if addr.is_ipv6() {
        args.push("nodad");
    }
    node.ip(&args);
}

#[test]
#[ignore = "privileged: cargo xtask test runs it as root"]
fn a_probe_finds_the_holder_and_whether_its_service_listens() {
    let lab = Lab::new();
    let gw1 = owner_on(&lab.gw1);
    let gw2 = owner_on(&lab.gw2);
    serve_name(&lab.gw1); // listens on NAME_PORT
    for v6 in [false, true] {
        let addr = storage(v6);
        lab.gw1
            .rt
            .run({
                let gw1 = Arc::clone(&gw1);
                async move { gw1.acquire(addr).await }
            })
            .unwrap();
        let before = neighbour(&lab.host, addr);
        // From the other gateway: gw1 answers, its service listens.
        let t = Instant::now();
        let got = probe(&lab.gw2, &gw2, &[addr], Some(NAME_PORT)).unwrap();
        let took = t.elapsed();
        assert_eq!(got.len(), 1);
        assert_eq!(macs(&got[0]), [(mac(&lab.gw1), Service::Open)], "{addr}");
        // A port nothing listens on: the machine answers with a reset.
        let got = probe(&lab.gw2, &gw2, &[addr], Some(NAME_PORT + 1)).unwrap();
        assert_eq!(macs(&got[0]), [(mac(&lab.gw1), Service::Closed)], "{addr}");
        // Without a service check.
        let got = probe(&lab.gw2, &gw2, &[addr], None).unwrap();
        assert_eq!(
            macs(&got[0]),
            [(mac(&lab.gw1), Service::Unchecked)],
            "{addr}"
        );
        // Its own probe does not list itself.
        let got = probe(&lab.gw1, &gw1, &[addr], Some(NAME_PORT)).unwrap();
        assert!(got[0].answers.is_empty(), "{addr}: {got:?}");
        // Nobody holds the neighbour address: no answer.
        let nobody: IpAddr = if v6 {
            "2001:2:0:1::77".parse().unwrap()
        } else {
            "198.18.1.77".parse().unwrap()
        };
        let got = probe(&lab.gw2, &gw2, &[nobody, addr], Some(NAME_PORT)).unwrap();
        let by: std::collections::BTreeMap<_, _> =
            got.iter().map(|p| (p.address, macs(p))).collect();
        assert!(by[&nobody].is_empty());
        assert_eq!(by[&addr], [(mac(&lab.gw1), Service::Open)]);
        // Probes touch no host's neighbour table.
        assert_eq!(neighbour(&lab.host, addr), before, "{addr}");
        eprintln!("MEASURE probe of {addr} with a service check: {took:?}");
    }
}

#[test]
#[ignore = "privileged: cargo xtask test runs it as root"]
fn a_second_holder_is_a_second_answer() {
    let lab = Lab::new();
    let gw1 = owner_on(&lab.gw1);
    let gw2 = owner_on(&lab.gw2);
    for v6 in [false, true] {
        let addr = storage(v6);
        lab.gw1
            .rt
            .run({
                let gw1 = Arc::clone(&gw1);
                async move { gw1.acquire(addr).await }
            })
            .unwrap();
        // The host configures it too, by hand.
        add_by_hand(&lab.host, addr);
        // gw1's self-probe hears the host; gw2 hears both.
        let got = probe(&lab.gw1, &gw1, &[addr], None).unwrap();
        assert_eq!(
            macs(&got[0]),
            [(mac(&lab.host), Service::Unchecked)],
            "{addr}"
        );
        let got = probe(&lab.gw2, &gw2, &[addr], None).unwrap();
        let mut heard: Vec<MacAddr> = got[0].answers.iter().map(|a| a.mac).collect();
        heard.sort();
        let mut want = vec![mac(&lab.gw1), mac(&lab.host)];
        want.sort();
        assert_eq!(heard, want, "{addr}");
    }
}

#[test]
#[ignore = "privileged: cargo xtask test runs it as root"]
fn the_link_state_follows_the_nic_and_a_down_nic_cannot_probe() {
    let lab = Lab::new();
    let gw1 = owner_on(&lab.gw1);
    let link = |o: &Arc<NetlinkOwner>| {
        let o = Arc::clone(o);
        lab.gw1.rt.run(async move { o.link().await }).unwrap()
    };
    let l = link(&gw1);
    assert!(l.up);
    assert_eq!(l.mac, Some(mac(&lab.gw1)));
    // The switch port goes down (the bridge end of the veth): no carrier.
    lab.lab()
        .bridge()
        .ip(&["link", "set", "gw1", "down"])
        .unwrap();
    assert!(!link(&gw1).up, "no carrier");
    lab.lab()
        .bridge()
        .ip(&["link", "set", "gw1", "up"])
        .unwrap();
    let t = Instant::now();
    while !link(&gw1).up {
        assert!(t.elapsed() < Duration::from_secs(5), "carrier back");
        std::thread::sleep(Duration::from_millis(20));
    }
    // The NIC itself goes down.
    lab.gw1.ip(&["link", "set", "eth0", "down"]);
    assert!(!link(&gw1).up);
    let err = probe(&lab.gw1, &gw1, &[storage(false)], None).unwrap_err();
    assert!(matches!(err, EnforceError::Os { .. }), "{err}");
    lab.gw1.ip(&["link", "set", "eth0", "up"]);
}

#[test]
#[ignore = "privileged: cargo xtask test runs it as root"]
fn probing_from_another_namespace_is_refused() {
    let lab = Lab::new();
    let gw1 = owner_on(&lab.gw1);
    let spec = ProbeSpec {
        addrs: vec![storage(false)],
        window: Duration::from_millis(10),
        service_port: None,
    };
    // The test thread is in the root namespace.
    let err = lab.gw1.rt.block_on(gw1.probe(&spec)).unwrap_err();
    assert!(
        err.to_string().contains("another network namespace"),
        "{err}"
    );
}

#[test]
#[ignore = "privileged: cargo xtask test runs it as root"]
fn announcing_again_reaches_the_host_and_only_for_a_held_address() {
    let lab = Lab::new();
    let gw1 = owner_on(&lab.gw1);
    let cap = lab.host.rt.run(async { Capture::open("eth0") }).unwrap();
    for v6 in [false, true] {
        let addr = storage(v6);
        // Not held: nothing is sent.
        lab.gw1
            .rt
            .run({
                let gw1 = Arc::clone(&gw1);
                async move { gw1.reannounce(addr).await }
            })
            .unwrap();
        lab.gw1
            .rt
            .run({
                let gw1 = Arc::clone(&gw1);
                async move { gw1.acquire(addr).await }
            })
            .unwrap();
        std::thread::sleep(Duration::from_millis(700));
        let _ = cap.collect(Duration::from_millis(10));
        lab.gw1
            .rt
            .run({
                let gw1 = Arc::clone(&gw1);
                async move { gw1.reannounce(addr).await }
            })
            .unwrap();
        let frames = cap.collect(Duration::from_millis(700));
        let from_gw1 = frames
            .iter()
            .filter(|f| f.bytes[6..12] == lab.gw1.mac)
            .filter(|f| match addr {
                IpAddr::V4(a) => parse_arp(&f.bytes).is_some_and(|x| x.spa == a && x.tpa == a),
                IpAddr::V6(a) => parse_na(&f.bytes).is_some_and(|x| x.target == a),
            })
            .count();
        // Three rounds: ARP request and reply each (IPv4), one NA (IPv6).
        assert_eq!(from_gw1, if v6 { 3 } else { 6 }, "{addr}");
    }
}

#[test]
#[ignore = "privileged: cargo xtask test runs it as root"]
fn an_unmanaged_host_address_is_removed_on_order_and_the_nics_own_never() {
    let lab = Lab::new();
    let gw2 = owner_on(&lab.gw2);
    let remove = |a: IpAddr| {
        let o = Arc::clone(&gw2);
        lab.gw2.rt.run(async move { o.remove_unmanaged(a).await })
    };
    for v6 in [false, true] {
        let addr = storage(v6);
        add_by_hand(&lab.gw2, addr);
        remove(addr).unwrap();
        assert!(
            !addresses_on(&lab.gw2, "eth0")
                .iter()
                .any(|a| a.addr == addr),
            "{addr} removed"
        );
        // Gone already: fine.
        remove(addr).unwrap();
    }
    // The NIC's own addresses are not host prefixes: refused, untouched.
    for own in [IpAddr::from(lab.gw2.v4), IpAddr::from(lab.gw2.v6)] {
        let err = remove(own).unwrap_err();
        assert!(
            matches!(err, EnforceError::NotRemovable { .. }),
            "{own}: {err}"
        );
        assert!(addresses_on(&lab.gw2, "eth0").iter().any(|a| a.addr == own));
    }
}
