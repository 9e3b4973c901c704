//! Privileged tests of `sanlb::enforce`: a host, two gateways and a bridge in
//! network namespaces (the lab, see `sanlb_test::segment`). Each gateway's `NetlinkOwner` is
//! created on a thread inside the gateway's namespace, as the agent would be.
//! The host side is observed from outside the code under test: a raw capture
//! of the announcements, the host's neighbour table, and TCP connections to a
//! name service on each gateway. What the owner did is asserted there and in
//! the kernel's address list, never through the owner's own account.
//!
//! Run as root: `cargo test -p sanlb --test enforce -- --ignored --test-threads=1`
//! (add `--nocapture` to see the measured move times).

use std::{
    collections::BTreeSet,
    net::IpAddr,
    sync::Arc,
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

use sanlb::enforce::{
    AddressOwner as _, DEFAULT_ADDR_PROTO, EnforceError, NetlinkOwner, OwnerConfig, reconcile,
};
use sanlb_test::{
    Mac,
    capture::{Arp, Capture, Frame, Na, parse_arp, parse_na},
    fmt_mac,
    probe::{
        KernelAddr, add_foreign_addr, addresses, addresses_on, neighbour, neighbour_state,
        reconnect_until, serve_name, wait_neighbour,
    },
    segment::{Node, STORAGE_V4, STORAGE_V6, Segment as Lab, storage},
};

/// Each connection attempt of the host's client.
const ATTEMPT: Duration = Duration::from_millis(200);

fn owner_on(node: &Node, cfg: OwnerConfig) -> Arc<NetlinkOwner> {
    Arc::new(
        node.rt
            .run(async move { NetlinkOwner::new(cfg) })
            .unwrap_or_else(|e| panic!("owner on {}: {e}", node.name)),
    )
}

/// The times of the unsolicited announcements of `addr` from `mac` among
/// `frames`: gratuitous ARP requests (sender and target address both
/// `addr`) or unsolicited NAs. Answers to the host's own ARP and NS are not
/// announcements.
fn announcements(frames: &[Frame], addr: IpAddr, mac: Mac) -> Vec<Duration> {
    frames
        .iter()
        .filter(|f| f.bytes[6..12] == mac)
        .filter(|f| match addr {
            IpAddr::V4(a) => {
                parse_arp(&f.bytes).is_some_and(|arp| arp.op == 1 && arp.spa == a && arp.tpa == a)
            }
            IpAddr::V6(a) => parse_na(&f.bytes).is_some_and(|na| na.target == a && !na.solicited),
        })
        .map(|f| f.stamp)
        .collect()
}

fn unix_now() -> Duration {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap()
}

fn cfg(iface: &str, garp_count: u32, garp_interval_ms: u64) -> OwnerConfig {
    OwnerConfig {
        garp_count,
        garp_interval: Duration::from_millis(garp_interval_ms),
        ..OwnerConfig::new(iface)
    }
}

fn set(addrs: &[IpAddr]) -> BTreeSet<IpAddr> {
    addrs.iter().copied().collect()
}

fn ip_of(s: &str) -> IpAddr {
    s.parse().unwrap()
}

/// The address as sanlb leaves it on eth0: a host prefix with the marker,
/// added without DAD when IPv6.
fn managed(addr: IpAddr) -> KernelAddr {
    KernelAddr {
        ifname: "eth0".into(),
        addr,
        prefix_len: if addr.is_ipv4() { 32 } else { 128 },
        proto: Some(DEFAULT_ADDR_PROTO),
        nodad: addr.is_ipv6(),
    }
}

fn with(mut addrs: Vec<KernelAddr>, extra: &[KernelAddr]) -> Vec<KernelAddr> {
    addrs.extend_from_slice(extra);
    addrs.sort();
    addrs
}

/// The host reaches `gw` at `addr` (bounded), its neighbour entry points at
/// `gw`: the state a host with an active session is in before a move.
fn host_reaches(lab: &Lab, addr: IpAddr, gw: &Node) {
    let name = &gw.name;
    let (reached, seen) = lab.host.rt.run(reconnect_until(
        addr,
        name.clone(),
        ATTEMPT,
        Duration::from_secs(10),
    ));
    assert!(
        reached.is_some(),
        "host never reached {name} at {addr} (answers: {seen:?})"
    );
    assert_eq!(
        neighbour(&lab.host, addr),
        Some(gw.mac),
        "host neighbour entry for {addr}"
    );
}

const BROADCAST: Mac = [0xff; 6];

/// The address moves from gw1 to gw2: gw1 releases (its long announcement
/// burst stops with it), gw2 acquires and announces; the host's capture holds
/// exactly gw2's announcements with the right fields, the host's neighbour
/// entry flips to gw2 within the announce time, a reconnecting TCP client
/// reaches gw2, and neither NIC's own addresses change.
fn move_between_gateways(v6: bool) {
    let lab = Lab::new();
    serve_name(&lab.gw1);
    serve_name(&lab.gw2);
    let addr = storage(v6);
    let own = lab.gateways().map(|gw| addresses_on(gw, "eth0"));
    for (gw, own) in lab.gateways().iter().zip(&own) {
        for a in gw.own_addrs() {
            assert!(
                own.iter()
                    .any(|k| format!("{}/{}", k.addr, k.prefix_len) == a),
                "{a} on {}",
                gw.name
            );
        }
    }
    // gw1 announces 50 rounds over 5 s: release must cut that short.
    let o1 = owner_on(&lab.gw1, cfg("eth0", 50, 100));
    let (count, interval) = (3, Duration::from_millis(50));
    let o2 = owner_on(&lab.gw2, cfg("eth0", count, 50));

    // Everything the host receives while gw1 holds the address.
    let early = lab
        .host
        .rt
        .run(async { Capture::open("eth0") })
        .expect("capture on the host");
    std::thread::sleep(Duration::from_millis(100));
    lab.gw1.rt.block_on(o1.acquire(addr)).unwrap();
    assert_eq!(lab.gw1.rt.block_on(o1.owned()).unwrap(), set(&[addr]));
    assert_eq!(
        addresses_on(&lab.gw1, "eth0"),
        with(own[0].clone(), &[managed(addr)])
    );
    host_reaches(&lab, addr, &lab.gw1);

    lab.gw1.rt.block_on(o1.release(addr)).unwrap();
    let released = unix_now();
    assert!(lab.gw1.rt.block_on(o1.owned()).unwrap().is_empty());
    assert_eq!(
        addresses_on(&lab.gw1, "eth0"),
        own[0],
        "gw1 eth0 after release"
    );
    // gw1 announced from its acquire on, 100 ms apart, and stopped at the
    // release: far fewer than its 50 rounds.
    let early = early.collect(Duration::from_millis(50));
    let rounds = announcements(&early, addr, lab.gw1.mac);
    eprintln!(
        "gw1 announced {addr} {} times before its release",
        rounds.len()
    );
    assert!(
        !rounds.is_empty() && rounds.len() < 50,
        "gw1's announcements: {rounds:?}"
    );
    assert_spacing(&rounds, Duration::from_millis(100));
    assert!(
        rounds
            .iter()
            .all(|&t| t <= released + Duration::from_millis(20)),
        "gw1 announced after its release at {released:?}: {rounds:?}"
    );
    // Frames sent before release returned are past the bridge by now; the
    // capture only sees frames from its creation on.
    std::thread::sleep(Duration::from_millis(50));
    let capture = lab
        .host
        .rt
        .run(async { Capture::open("eth0") })
        .expect("capture on the host");
    // The kernel turns receive stamps on in deferred work: give it time, or
    // the first frames are stamped when read.
    std::thread::sleep(Duration::from_millis(100));

    let acquired = Instant::now();
    lab.gw2.rt.block_on(o2.acquire(addr)).unwrap();
    let announce_time = interval * (count - 1) + Duration::from_secs(1);
    let flipped = wait_neighbour(&lab.host, addr, lab.gw2.mac, announce_time);
    eprintln!(
        "{addr}: host neighbour entry -> gw2 {:?} after acquire returned ({:?} after it was called)",
        flipped,
        acquired.elapsed()
    );
    assert!(
        flipped.is_some(),
        "host neighbour entry for {addr} is {:?}, not gw2 {}, {announce_time:?} after the acquire",
        neighbour(&lab.host, addr).map(|m| fmt_mac(&m)),
        fmt_mac(&lab.gw2.mac)
    );
    let frames = capture.collect(interval * count + Duration::from_secs(1));

    if v6 {
        let IpAddr::V6(target) = addr else {
            unreachable!()
        };
        let nas: Vec<(Duration, Na)> = frames
            .iter()
            .filter_map(|f| Some((f.stamp, parse_na(&f.bytes)?)))
            .filter(|(_, na)| na.target == target)
            .collect();
        let want = Na {
            eth_dst: [0x33, 0x33, 0, 0, 0, 1],
            eth_src: lab.gw2.mac,
            src: target,
            dst: "ff02::1".parse().unwrap(),
            hop_limit: 255,
            router: false,
            solicited: false,
            override_: true,
            target,
            tlla: Some(lab.gw2.mac),
            checksum_ok: true,
        };
        assert_eq!(nas.len(), count as usize, "NAs for {addr}: {nas:#?}");
        for (_, na) in &nas {
            assert_eq!(*na, want);
        }
        assert_spacing(&nas.iter().map(|(t, _)| *t).collect::<Vec<_>>(), interval);
    } else {
        let IpAddr::V4(ip4) = addr else {
            unreachable!()
        };
        let arps: Vec<(Duration, Arp)> = frames
            .iter()
            .filter_map(|f| Some((f.stamp, parse_arp(&f.bytes)?)))
            .filter(|(_, a)| a.spa == ip4 || a.tpa == ip4)
            .collect();
        let request = Arp {
            eth_dst: BROADCAST,
            eth_src: lab.gw2.mac,
            op: 1,
            sha: lab.gw2.mac,
            spa: ip4,
            tha: [0; 6],
            tpa: ip4,
        };
        let reply = Arp {
            op: 2,
            tha: lab.gw2.mac,
            ..request.clone()
        };
        let requests: Vec<_> = arps
            .iter()
            .filter(|(_, a)| *a == request)
            .map(|(t, _)| *t)
            .collect();
        let replies = arps.iter().filter(|(_, a)| *a == reply).count();
        assert_eq!(requests.len(), count as usize, "ARP for {addr}: {arps:#?}");
        assert_eq!(replies, count as usize, "ARP for {addr}: {arps:#?}");
        assert_eq!(
            arps.len(),
            2 * count as usize,
            "nothing but the gratuitous ARPs: {arps:#?}"
        );
        assert_spacing(&requests, interval);
    }
    // No announcement from gw1 after its release.
    let from_gw1 = frames
        .iter()
        .filter(|f| f.bytes[6..12] == lab.gw1.mac)
        .filter(|f| match addr {
            IpAddr::V4(a) => parse_arp(&f.bytes).is_some_and(|arp| arp.spa == a),
            IpAddr::V6(a) => parse_na(&f.bytes).is_some_and(|na| na.target == a),
        })
        .count();
    assert_eq!(
        from_gw1, 0,
        "gw1 announced {addr} {from_gw1} times after releasing it"
    );

    let (reached, seen) = lab.host.rt.run(reconnect_until(
        addr,
        "gw2",
        ATTEMPT,
        Duration::from_secs(5),
    ));
    assert!(
        reached.is_some(),
        "host TCP never reached gw2 at {addr} (answers {seen:?})"
    );
    assert!(
        seen.is_empty(),
        "answers from the old owner after the move: {seen:?}"
    );

    assert_eq!(
        addresses_on(&lab.gw1, "eth0"),
        own[0],
        "gw1 eth0 at the end"
    );
    assert_eq!(
        addresses_on(&lab.gw2, "eth0"),
        with(own[1].clone(), &[managed(addr)]),
        "gw2 eth0"
    );
}

/// Lower bound on the spacing of announcement rounds: the sender's timer
/// never fires early; the margin is for delivery jitter on the receiver.
fn assert_spacing(stamps: &[Duration], interval: Duration) {
    let gaps: Vec<Duration> = stamps
        .windows(2)
        .map(|w| w[1].saturating_sub(w[0]))
        .collect();
    eprintln!("announcement rounds arrived {gaps:?} apart");
    for gap in gaps {
        assert!(
            gap >= interval * 8 / 10,
            "rounds {gap:?} apart, configured {interval:?}"
        );
    }
}

#[test]
#[ignore = "privileged: cargo xtask test runs it as root"]
fn ipv4_move_announces_with_gratuitous_arp() {
    move_between_gateways(false);
}

#[test]
#[ignore = "privileged: cargo xtask test runs it as root"]
fn ipv6_move_announces_with_unsolicited_na() {
    move_between_gateways(true);
}

/// A client on the host keeps reconnecting while an IPv4 and an IPv6 address
/// move back and forth between the gateways (default announcement settings);
/// after every move it reaches the new owner, never the old one.
#[test]
#[ignore = "privileged: cargo xtask test runs it as root"]
fn tcp_client_follows_repeated_moves() {
    let lab = Lab::new();
    serve_name(&lab.gw1);
    serve_name(&lab.gw2);
    let gws = [&lab.gw1, &lab.gw2];
    let owners = gws.map(|gw| owner_on(gw, OwnerConfig::new("eth0")));
    let addrs = [IpAddr::from(STORAGE_V4), IpAddr::from(STORAGE_V6)];
    for addr in addrs {
        lab.gw1.rt.block_on(owners[0].acquire(addr)).unwrap();
        host_reaches(&lab, addr, &lab.gw1);
    }
    for (from, to) in [(0, 1), (1, 0), (0, 1)] {
        for addr in addrs {
            gws[from].rt.block_on(owners[from].release(addr)).unwrap();
            let t0 = Instant::now();
            gws[to].rt.block_on(owners[to].acquire(addr)).unwrap();
            let (reached, seen) = lab.host.rt.run(reconnect_until(
                addr,
                gws[to].name.clone(),
                ATTEMPT,
                Duration::from_secs(5),
            ));
            let reached = reached
                .unwrap_or_else(|| panic!("{addr}: never reached {}: {seen:?}", gws[to].name));
            assert!(
                seen.is_empty(),
                "{addr}: the old owner answered after the move: {seen:?}"
            );
            eprintln!(
                "{addr} {} -> {}: reached after {:?}",
                gws[from].name,
                gws[to].name,
                reached - t0
            );
        }
    }
    assert_eq!(lab.gw2.rt.block_on(owners[1].owned()).unwrap(), set(&addrs));
    assert!(lab.gw1.rt.block_on(owners[0].owned()).unwrap().is_empty());
}

/// An agent restarts: the addresses of the previous owner are still on the
/// NIC (fail-static), the new owner finds exactly those, and reconcile
/// releases the stale ones first, then acquires the missing ones. Addresses
/// without sanlb's marker (the NIC's own, one without a protocol, one with
/// another protocol) and sanlb-marked addresses on another NIC are never
/// touched, and acquire/release on them are refused.
#[test]
#[ignore = "privileged: cargo xtask test runs it as root"]
fn restart_reconciles_managed_addresses_only() {
    let lab = Lab::new();
    let gw = &lab.gw1;
    let (a51, a52, a53) = (
        ip_of("198.18.1.51"),
        ip_of("198.18.1.52"),
        ip_of("198.18.1.53"),
    );
    let (b51, b53) = (ip_of("2001:2:0:1::51"), ip_of("2001:2:0:1::53"));
    let own = addresses_on(gw, "eth0");

    let first = owner_on(gw, OwnerConfig::new("eth0"));
    for a in [a51, a52, b51] {
        gw.rt.block_on(first.acquire(a)).unwrap();
    }
    // Not sanlb's: no protocol (as `ip addr add` sets it), another tool's
    // protocol, and sanlb's protocol on another interface.
    let (plain4, plain6, other, elsewhere) = (
        ip_of("198.18.1.60"),
        ip_of("2001:2:0:1::60"),
        ip_of("198.18.1.61"),
        ip_of("198.18.1.62"),
    );
    gw.ip(&["addr", "add", &format!("{plain4}/32"), "dev", "eth0"]);
    gw.ip(&[
        "addr",
        "add",
        &format!("{plain6}/128"),
        "dev",
        "eth0",
        "nodad",
    ]);
    add_foreign_addr(gw, "eth0", other, 99);
    gw.ip(&[
        "link", "add", "d0", "type", "veth", "peer", "name", "d0-peer",
    ]);
    add_foreign_addr(gw, "d0", elsewhere, DEFAULT_ADDR_PROTO);
    let untouched = |a: &KernelAddr| a.proto != Some(DEFAULT_ADDR_PROTO) || a.ifname != "eth0";
    let foreign: Vec<KernelAddr> = addresses(gw).into_iter().filter(untouched).collect();

    drop(first); // the agent stops: it keeps what it owns
    assert_eq!(
        addresses_on(gw, "eth0")
            .into_iter()
            .filter(|a| !untouched(a))
            .collect::<Vec<_>>(),
        with(vec![], &[managed(a51), managed(a52), managed(b51)])
    );

    let second = owner_on(gw, OwnerConfig::new("eth0"));
    assert_eq!(
        gw.rt.block_on(second.owned()).unwrap(),
        set(&[a51, a52, b51])
    );
    let report = gw
        .rt
        .block_on(reconcile(&*second, &set(&[a52, a53, b53])))
        .unwrap();
    assert!(report.is_complete(), "{report:?}");
    assert_eq!(report.released, set(&[a51, b51]));
    assert_eq!(report.acquired, set(&[a53, b53]));
    assert_eq!(report.kept, set(&[a52]));
    assert_eq!(
        gw.rt.block_on(second.owned()).unwrap(),
        set(&[a52, a53, b53])
    );
    assert_eq!(
        addresses(gw),
        with(foreign.clone(), &[managed(a52), managed(a53), managed(b53)]),
        "only managed addresses changed"
    );

    // What sanlb does not manage, it refuses to take or give up.
    for (a, iface) in [
        (plain4, "eth0"),
        (plain6, "eth0"),
        (other, "eth0"),
        (elsewhere, "d0"),
        (gw.v4.into(), "eth0"),
        (gw.v6.into(), "eth0"),
    ] {
        let err = gw.rt.block_on(second.acquire(a)).unwrap_err();
        assert!(
            matches!(&err, EnforceError::InUse { addr, iface: i, .. } if *addr == a && i == iface),
            "acquire {a}: {err:?}"
        );
        if iface == "eth0" {
            let err = gw.rt.block_on(second.release(a)).unwrap_err();
            assert!(
                matches!(&err, EnforceError::InUse { addr, .. } if *addr == a),
                "release {a}: {err:?}"
            );
        } else {
            // Not on this owner's NIC: nothing to release there.
            gw.rt.block_on(second.release(a)).unwrap();
        }
    }

    // Reconciling to nothing removes every managed address and only those.
    let report = gw
        .rt
        .block_on(reconcile(&*second, &BTreeSet::new()))
        .unwrap();
    assert_eq!(report.released, set(&[a52, a53, b53]));
    assert_eq!(addresses(gw), foreign);
    assert!(
        own.iter().all(|a| foreign.contains(a)),
        "the NIC's own addresses are there"
    );
}

/// Refused input changes nothing: a NIC that does not exist (at creation or
/// gone later), a NIC that is not Ethernet, addresses that are not unicast
/// host addresses, a reconcile with one bad address among good ones.
#[test]
#[ignore = "privileged: cargo xtask test runs it as root"]
fn bad_input_is_refused_and_changes_nothing() {
    let lab = Lab::new();
    let gw = &lab.gw1;
    gw.ip(&[
        "link", "add", "d1", "type", "veth", "peer", "name", "d1-peer",
    ]);
    gw.ip(&["link", "set", "d1", "up"]);
    let before = addresses(gw);

    let err = gw
        .rt
        .run(async { NetlinkOwner::new(OwnerConfig::new("nosuch0")) })
        .unwrap_err();
    assert!(
        matches!(&err, EnforceError::NoSuchInterface(n) if n == "nosuch0"),
        "{err:?}"
    );
    assert_eq!(err.to_string(), "interface \"nosuch0\" does not exist");

    let lo = owner_on(gw, OwnerConfig::new("lo"));
    let err = gw.rt.block_on(lo.acquire(STORAGE_V4.into())).unwrap_err();
    assert!(
        matches!(&err, EnforceError::NotEthernet(n) if n == "lo"),
        "{err:?}"
    );

    let owner = owner_on(gw, OwnerConfig::new("eth0"));
    for bad in [
        "0.0.0.0",
        "127.0.0.1",
        "224.0.0.1",
        "239.255.255.250",
        "169.254.10.1",
        "255.255.255.255",
        "240.0.0.9",
        "::",
        "::1",
        "ff02::1",
        "fe80::1",
        "::ffff:198.18.1.50",
    ] {
        let a = ip_of(bad);
        for err in [
            gw.rt.block_on(owner.acquire(a)).unwrap_err(),
            gw.rt.block_on(owner.release(a)).unwrap_err(),
        ] {
            assert!(
                matches!(&err, EnforceError::InvalidAddress { addr, .. } if *addr == a),
                "{bad}: {err:?}"
            );
            assert!(
                err.to_string()
                    .starts_with(&format!("{a}: not a storage address (")),
                "{err}"
            );
        }
    }
    let err = gw
        .rt
        .block_on(reconcile(
            &*owner,
            &set(&[STORAGE_V4.into(), ip_of("fe80::5")]),
        ))
        .unwrap_err();
    assert!(
        matches!(err, EnforceError::InvalidAddress { .. }),
        "{err:?}"
    );

    // The NIC goes away under an owner.
    let gone = owner_on(gw, OwnerConfig::new("d1"));
    gw.ip(&["link", "del", "d1"]);
    let before: Vec<_> = before.into_iter().filter(|a| a.ifname != "d1").collect();
    for err in [
        gw.rt.block_on(gone.acquire(STORAGE_V4.into())).unwrap_err(),
        gw.rt.block_on(gone.release(STORAGE_V4.into())).unwrap_err(),
        gw.rt.block_on(gone.owned()).unwrap_err(),
    ] {
        assert!(
            matches!(&err, EnforceError::NoSuchInterface(n) if n == "d1"),
            "{err:?}"
        );
    }

    assert_eq!(addresses(gw), before, "nothing changed");
}

/// An announcement that cannot leave (the NIC is down) fails the acquire and
/// takes the address away again: acquire is all or nothing.
#[test]
#[ignore = "privileged: cargo xtask test runs it as root"]
fn acquire_rolls_back_when_the_announcement_cannot_be_sent() {
    let lab = Lab::new();
    let gw = &lab.gw1;
    gw.ip(&[
        "link", "add", "d2", "type", "veth", "peer", "name", "d2-peer",
    ]); // down
    let before = addresses(gw);
    let owner = owner_on(gw, OwnerConfig::new("d2"));
    for addr in [IpAddr::from(STORAGE_V4), STORAGE_V6.into()] {
        let err = gw.rt.block_on(owner.acquire(addr)).unwrap_err();
        let EnforceError::Os { what, source } = &err else {
            panic!("{err:?}")
        };
        assert_eq!(what, &format!("announcing {addr} on d2"));
        assert_eq!(source.raw_os_error(), Some(libc::ENETDOWN), "{source}");
        assert!(gw.rt.block_on(owner.owned()).unwrap().is_empty());
    }
    assert_eq!(addresses(gw), before);
    // Without announcements the same acquire succeeds: the address serves
    // as soon as the link comes up.
    let quiet = owner_on(gw, cfg("d2", 0, 0));
    gw.rt.block_on(quiet.acquire(STORAGE_V4.into())).unwrap();
    assert_eq!(
        gw.rt.block_on(quiet.owned()).unwrap(),
        set(&[STORAGE_V4.into()])
    );
}

/// Measures the time from "acquire called" on the new owner to the host's
/// reconnecting TCP client being answered by it, with the announcement
/// (default settings, several moves) and without (garp_count 0: the host
/// finds the new owner only when its neighbour entry for the address expires;
/// one sample per family, both at once, at most 60 s). Prints the figures;
/// asserts only that the announced moves reach the new owner.
#[test]
#[ignore = "privileged: cargo xtask test runs it as root"]
fn measure_move_time_with_and_without_announcement() {
    let lab = Lab::new();
    serve_name(&lab.gw1);
    serve_name(&lab.gw2);
    let gws = [&lab.gw1, &lab.gw2];
    let announcing = gws.map(|gw| owner_on(gw, OwnerConfig::new("eth0")));
    let quiet = owner_on(&lab.gw2, cfg("eth0", 0, 0));
    let addrs = [IpAddr::from(STORAGE_V4), IpAddr::from(STORAGE_V6)];

    for addr in addrs {
        lab.gw1.rt.block_on(announcing[0].acquire(addr)).unwrap();
        host_reaches(&lab, addr, &lab.gw1);
        let (mut times, mut acquires) = (Vec::new(), Vec::new());
        for (from, to) in [(0, 1), (1, 0), (0, 1), (1, 0), (0, 1), (1, 0)] {
            gws[from]
                .rt
                .block_on(announcing[from].release(addr))
                .unwrap();
            let t0 = Instant::now();
            gws[to].rt.block_on(announcing[to].acquire(addr)).unwrap();
            acquires.push(t0.elapsed());
            let (reached, seen) = lab.host.rt.run(reconnect_until(
                addr,
                gws[to].name.clone(),
                ATTEMPT,
                Duration::from_secs(10),
            ));
            let reached = reached
                .unwrap_or_else(|| panic!("{addr}: never reached {}: {seen:?}", gws[to].name));
            times.push(reached - t0);
        }
        times.sort();
        acquires.sort();
        eprintln!(
            "MEASURE {addr} with announcement ({} rounds, {:?} apart): min {:?} median {:?} \
             max {:?} over {} moves (the acquire call itself: median {:?}, max {:?})",
            announcing[0].config().garp_count,
            announcing[0].config().garp_interval,
            times[0],
            times[times.len() / 2],
            times[times.len() - 1],
            times.len(),
            acquires[acquires.len() / 2],
            acquires[acquires.len() - 1],
        );
    }

    // Without: both families at once, gw1 (which owns both after the last
    // move above) to gw2. First with the host's entries as an announced move
    // and a reconnection left them, then freshly resolved (REACHABLE for the
    // kernel's full reachable time, as an active session keeps them).
    for addr in addrs {
        host_reaches(&lab, addr, &lab.gw1);
    }
    quiet_move(&lab, addrs, &announcing[0], &quiet);
    for addr in addrs {
        lab.gw2.rt.block_on(quiet.release(addr)).unwrap();
        lab.gw1.rt.block_on(announcing[0].acquire(addr)).unwrap();
        lab.host
            .ip(&["neigh", "flush", "to", &addr.to_string(), "dev", "eth0"]);
        host_reaches(&lab, addr, &lab.gw1);
    }
    quiet_move(&lab, addrs, &announcing[0], &quiet);
}

/// Moves `addrs` from gw1 to gw2 without announcing them and prints, for
/// each, the host's neighbour state at the move and the time until its
/// client reaches gw2 (at most 60 s). Asserts that gw2 announced nothing in
/// the first second.
fn quiet_move(lab: &Lab, addrs: [IpAddr; 2], from: &NetlinkOwner, to: &NetlinkOwner) {
    let states = addrs.map(|a| neighbour_state(&lab.host, a));
    let capture = lab
        .host
        .rt
        .run(async { Capture::open("eth0") })
        .expect("capture on the host");
    std::thread::sleep(Duration::from_millis(100));
    let mut started = Vec::new();
    for addr in addrs {
        lab.gw1.rt.block_on(from.release(addr)).unwrap();
        started.push(Instant::now());
        lab.gw2.rt.block_on(to.acquire(addr)).unwrap();
    }
    // Watched beside the client: an announcement would go out at once.
    let watch = std::thread::spawn(move || capture.collect(Duration::from_secs(1)));
    let limit = Duration::from_secs(60);
    let (r4, r6) = lab.host.rt.run(async move {
        tokio::join!(
            reconnect_until(addrs[0], "gw2", ATTEMPT, limit),
            reconnect_until(addrs[1], "gw2", ATTEMPT, limit)
        )
    });
    let frames = watch.join().expect("the capture thread");
    for addr in addrs {
        let sent = announcements(&frames, addr, lab.gw2.mac);
        assert!(sent.is_empty(), "gw2 announced {addr} at {sent:?}");
    }
    for (i, (reached, _)) in [r4, r6].into_iter().enumerate() {
        let (addr, state) = (addrs[i], &states[i]);
        match reached {
            Some(t) => eprintln!(
                "MEASURE {addr} without announcement (host entry {state} at the move): {:?}",
                t - started[i]
            ),
            None => eprintln!(
                "MEASURE {addr} without announcement (host entry {state} at the move): \
                 not reached within {limit:?}"
            ),
        }
    }
}

/// `ip` shows the storage addresses as host prefixes; IPv6 ones are added
/// without DAD, so they are never tentative even where DAD is on.
#[test]
#[ignore = "privileged: cargo xtask test runs it as root"]
fn operators_see_host_prefixes_on_the_nic() {
    let lab = Lab::new();
    let gw = &lab.gw2;
    gw.sysctl(&[
        "net.ipv6.conf.eth0.accept_dad=1",
        "net.ipv6.conf.eth0.dad_transmits=3",
    ]);
    let owner = owner_on(gw, OwnerConfig::new("eth0"));
    for addr in [IpAddr::from(STORAGE_V4), STORAGE_V6.into()] {
        gw.rt.block_on(owner.acquire(addr)).unwrap();
    }
    let v4 = gw.ip(&["-4", "-o", "addr", "show", "dev", "eth0"]);
    assert!(
        v4.contains(&format!("inet {STORAGE_V4}/32 scope global eth0")),
        "{v4}"
    );
    let v6 = gw.ip(&["-6", "-o", "addr", "show", "dev", "eth0"]);
    assert!(
        v6.contains(&format!("inet6 {STORAGE_V6}/128 scope global nodad")),
        "{v6}"
    );
    assert!(!v6.contains("tentative"), "{v6}");
}
