//! Pair mode end to end with the real peers: tgtd on each gateway listening
//! on the data port (3261) of every address, the portal on the storage
//! entity's address (port 3260) of gateway 1, libiscsi's tools and the
//! lab's load generator on the host. Where a login lands is checked on the
//! gateways (`ss` on the data address, `tgtadm --op show`), never by asking
//! the portal.
//!
//! ```text
//!  h1 198.18.0.101 ── br ── gw1 198.18.0.1: entity 198.18.1.1 (portal :3260),
//!                      │                    data 198.18.1.101 (tgtd :3261)
//!                      └─── gw2 198.18.0.2: data 198.18.1.102 (tgtd :3261)
//! ```
//!
//! Run as root: `cargo test -p sanlb --test pairmode -- --ignored --test-threads=1`.

use std::{
    net::{IpAddr, Ipv4Addr, SocketAddr},
    sync::Arc,
    thread,
    time::{Duration, Instant},
};

use sanlb::{
    enforce::end_connections,
    portal::{Director, Portal, PortalConfig, PortalMetrics, Steer, TableDirector},
};
use sanlb_test::ns_runtime::NsRuntime;
use xtask::lab::{
    Gateway, Lab, Placement,
    loadgen::{self, Workload},
    proc::Process,
    tgtd,
};

const DATA_PORT: u16 = 3261;

/// Gateway `g`'s (0-based) data address for the lab's one entity.
fn data_addr(g: usize) -> Ipv4Addr {
    Ipv4Addr::new(198, 18, 1, 101 + g as u8)
}

fn data(g: usize) -> SocketAddr {
    SocketAddr::new(data_addr(g).into(), DATA_PORT)
}

/// Fields drop in order: the portal, its runtime, then the lab.
struct PairLab {
    portal: Option<Portal>,
    config: PortalConfig,
    rt: NsRuntime,
    director: Arc<TableDirector>,
    entity: SocketAddr,
    lab: Lab,
}

impl PairLab {
    fn new() -> PairLab {
        PairLab::with(PortalConfig::default())
    }

    fn with(config: PortalConfig) -> PairLab {
        let lab = Lab::builder()
            .hosts(1)
            .gateways(2)
            .targets(1)
            .disk_size(16 << 20)
            // The entity address is added after the portal listens on it.
            .placement(Placement::Unassigned)
            .tgtd_iscsi(&format!(
                "{},portal=0.0.0.0:{DATA_PORT}",
                tgtd::DEFAULT_ISCSI_OPTIONS
            ))
            .build()
            .unwrap();
        for g in 0..2 {
            lab.add_address(data_addr(g), &format!("gw{}", g + 1), true)
                .unwrap();
        }
        let rt = NsRuntime::enter(lab.gateways()[0].ns.name());
        let director = Arc::new(TableDirector::new());
        let t = &lab.targets()[0];
        let entity = SocketAddr::new(t.addr.into(), 3260);
        director.set_targets(entity.ip(), vec![t.iqn.clone()]);
        let mut pair = PairLab {
            portal: None,
            config,
            rt,
            director,
            entity,
            lab,
        };
        // Bound before the address exists (IP_FREEBIND), as on a gateway
        // that acquires storage addresses at run time.
        pair.start_portal();
        let IpAddr::V4(entity_ip) = entity.ip() else {
            unreachable!()
        };
        pair.lab.add_address(entity_ip, "gw1", true).unwrap();
        pair
    }

    /// Starts a portal on the entity address inside gateway 1.
    fn start_portal(&mut self) {
        let director: Arc<dyn Director> = self.director.clone();
        let entity = self.entity;
        let config = self.config.clone();
        self.portal = Some(self.rt.run(async move {
            let p = Portal::new(config, director).unwrap();
            p.listen(entity).unwrap();
            p
        }));
    }

    fn metrics(&self) -> PortalMetrics {
        self.portal.as_ref().expect("a portal runs").metrics()
    }

    fn gw(&self, g: usize) -> &Gateway {
        &self.lab.gateways()[g]
    }

    fn host_ip(&self) -> Ipv4Addr {
        self.lab.hosts()[0].addr
    }

    /// `iscsi-ls`/`iscsi-inq`/... on the host with its initiator name.
    fn host_tool(&self, tool: &str, args: &[&str]) -> String {
        let h = &self.lab.hosts()[0];
        let mut all = vec!["-i", h.initiator.as_str()];
        all.extend_from_slice(args);
        h.ns.exec(tool, &all)
            .unwrap_or_else(|e| panic!("{tool} {args:?}: {e:#}"))
    }

    /// The host's established connections to gateway `g`'s data address,
    /// as `ss` on the gateway shows them.
    fn sessions_on(&self, g: usize) -> Vec<String> {
        let out = self
            .gw(g)
            .ns
            .exec(
                "ss",
                &[
                    "-tnH",
                    "state",
                    "established",
                    &format!("( sport = :{DATA_PORT} )"),
                ],
            )
            .unwrap();
        let local = format!("{}:{DATA_PORT}", data_addr(g));
        let peer = format!("{}:", self.host_ip());
        out.lines()
            .filter(|l| l.contains(&local) && l.contains(&peer))
            .map(|l| l.split_whitespace().collect::<Vec<_>>().join(" "))
            .collect()
    }

    /// tgtd's view of gateway `g`: the connections of target 1.
    fn tgtd_connections(&self, g: usize) -> String {
        self.gw(g)
            .tgtd
            .as_ref()
            .expect("a lab with targets runs tgtd")
            .tgtadm(&["--op", "show", "--mode", "conn", "--tid", "1"])
            .unwrap()
    }

    fn loadgen(&self, name: &str, run: Duration, verify: bool) -> Process {
        let bin = loadgen::build().unwrap();
        let w = Workload {
            rate: Some(2 << 20),
            read_pct: 50,
            verify,
            ..Workload::new(&self.lab.targets()[0])
        };
        let cmd = loadgen::command(&bin, &self.lab.hosts()[0], &[w], run, 11);
        self.lab.spawn(name, cmd).unwrap()
    }
}

fn wait_until(what: &str, limit: Duration, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + limit;
    while !done() {
        assert!(Instant::now() < deadline, "{what}: not within {limit:?}");
        thread::sleep(Duration::from_millis(50));
    }
}

/// Waits for a loadgen and checks its final line: no failed I/O, no
/// corrupt read, `reconnects` reconnects.
fn loadgen_ok(mut lg: Process, limit: Duration, reconnects: u64) {
    let status = lg
        .wait_timeout(limit)
        .unwrap()
        .expect("the loadgen ends by itself");
    let out = lg.stdout();
    assert!(status.success(), "loadgen: {status}\n{}", lg.stderr());
    let finals = loadgen::finals(&out).unwrap();
    assert_eq!(finals.len(), 1, "{out}");
    for (name, totals, _verified, final_errors) in finals {
        assert_eq!(totals.errors, 0, "{name}: failed I/O: {totals:?}");
        assert_eq!(totals.verify_errors, 0, "{name}: corrupt reads");
        assert_eq!(final_errors, 0, "{name}: corrupt blocks at the end");
        assert!(totals.read_ops > 0 && totals.write_ops > 0, "{totals:?}");
        assert_eq!(totals.reconnects, reconnects, "{name}: {totals:?}");
    }
}

#[test]
#[ignore = "privileged: cargo xtask test runs it as root"]
fn discovery_and_logins_through_the_portal_land_on_the_assigned_gateway() {
    let pair = PairLab::new();
    let t = pair.lab.targets()[0].clone();
    pair.director.steer_all(Steer::Redirect(data(1)));

    // Discovery through the portal lists the target at the portal's address.
    let ls = pair.host_tool("iscsi-ls", &[&format!("iscsi://{}", t.addr)]);
    assert!(
        ls.contains(&format!("Target:{} Portal:{}:3260,1", t.iqn, t.addr)),
        "{ls}"
    );
    // With LUNs: iscsi-ls logs in to each target found, through the portal.
    let ls = pair.host_tool("iscsi-ls", &["-s", &format!("iscsi://{}", t.addr)]);
    assert!(ls.contains("Lun:1"), "{ls}");
    let inq = pair.host_tool("iscsi-inq", &[&t.url()]);
    assert!(inq.contains("SANLB"), "{inq}");

    // A running session sits on gateway 2's data address, and only there.
    let lg = pair.loadgen("loadgen-a", Duration::from_secs(5), false);
    wait_until("a session on gw2", Duration::from_secs(10), || {
        pair.sessions_on(1).len() == 1
    });
    assert!(pair.sessions_on(0).is_empty());
    let conns = pair.tgtd_connections(1);
    assert!(
        conns.contains(&pair.lab.hosts()[0].initiator)
            && conns.contains(&pair.host_ip().to_string()),
        "{conns}"
    );
    assert!(
        !pair
            .tgtd_connections(0)
            .contains(&pair.lab.hosts()[0].initiator)
    );
    loadgen_ok(lg, Duration::from_secs(30), 0);

    let m = pair.metrics();
    assert_eq!(m.discovery_sessions, 2, "{m:#?}");
    // iscsi-ls -s, iscsi-inq, loadgen.
    assert_eq!((m.logins, m.redirects), (3, 3), "{m:#?}");
    assert_eq!(m.rejects, Default::default(), "{m:#?}");
}

#[test]
#[ignore = "privileged: cargo xtask test runs it as root"]
fn a_held_login_is_released_by_a_director_change() {
    let pair = PairLab::new();
    let t = pair.lab.targets()[0].clone();
    pair.director.steer_all(Steer::Hold);
    let h = &pair.lab.hosts()[0];
    let mut cmd = h.ns.command("iscsi-inq");
    cmd.args(["-i", &h.initiator, &t.url()]);
    let mut inq = pair.lab.spawn("inq-held", cmd).unwrap();
    wait_until("the login is held", Duration::from_secs(5), || {
        pair.metrics().holds == 1
    });
    thread::sleep(Duration::from_millis(500));
    assert!(inq.is_running(), "a held login went on: {}", inq.stderr());
    // Only gateway 1 has its data address: success means it landed there.
    pair.director.steer_all(Steer::Redirect(data(0)));
    let status = inq
        .wait_timeout(Duration::from_secs(10))
        .unwrap()
        .expect("iscsi-inq ends once released");
    assert!(status.success(), "{}", inq.stderr());
    assert!(inq.stdout().contains("SANLB"), "{}", inq.stdout());
    let m = pair.metrics();
    assert_eq!((m.holds, m.redirects, m.hold_timeouts), (1, 1, 0), "{m:#?}");
}

#[test]
#[ignore = "privileged: cargo xtask test runs it as root"]
fn a_pair_moves_when_its_connection_is_ended_on_the_old_gateway() {
    let pair = PairLab::new();
    pair.director.steer_all(Steer::Redirect(data(0)));
    let lg = pair.loadgen("loadgen-move", Duration::from_secs(12), true);
    wait_until("a session on gw1", Duration::from_secs(10), || {
        pair.sessions_on(0).len() == 1
    });
    thread::sleep(Duration::from_secs(2));

    // Break before make: hold the pair, end its connection on gw1.
    pair.director.steer_all(Steer::Hold);
    let host: IpAddr = pair.host_ip().into();
    assert!(
        pair.tgtd_connections(0)
            .contains(&pair.lab.hosts()[0].initiator)
    );
    let ended = pair
        .rt
        .run(async move { end_connections(data_addr(0).into(), DATA_PORT, &[host]).unwrap() });
    assert_eq!(ended, 1);
    wait_until("the reconnect is held", Duration::from_secs(5), || {
        pair.metrics().holds == 1
    });
    assert!(pair.sessions_on(0).is_empty());
    assert!(pair.sessions_on(1).is_empty());

    // tgtd on gw1 saw its connection aborted and dropped the session.
    let initiator = pair.lab.hosts()[0].initiator.clone();
    wait_until(
        "tgtd on gw1 drops the session",
        Duration::from_secs(5),
        || !pair.tgtd_connections(0).contains(&initiator),
    );

    pair.director.steer_all(Steer::Redirect(data(1)));
    wait_until("the session on gw2", Duration::from_secs(10), || {
        pair.sessions_on(1).len() == 1
    });
    assert!(pair.sessions_on(0).is_empty());
    assert!(
        pair.tgtd_connections(1)
            .contains(&pair.lab.hosts()[0].initiator)
    );
    loadgen_ok(lg, Duration::from_secs(60), 1);
    let m = pair.metrics();
    assert_eq!((m.logins, m.redirects, m.holds), (2, 2, 1), "{m:#?}");
}

#[test]
#[ignore = "privileged: cargo xtask test runs it as root"]
fn a_portal_restart_loses_no_running_session() {
    let mut pair = PairLab::new();
    pair.director.steer_all(Steer::Redirect(data(0)));
    let lg = pair.loadgen("loadgen-restart", Duration::from_secs(8), true);
    wait_until("a session on gw1", Duration::from_secs(10), || {
        pair.sessions_on(0).len() == 1
    });
    let before = pair.sessions_on(0);

    pair.portal = None; // stopped
    thread::sleep(Duration::from_secs(1));
    pair.start_portal();
    thread::sleep(Duration::from_secs(1));

    // The same connection (same host port) carries the session.
    let after = pair.sessions_on(0);
    let port = |lines: &[String]| -> String {
        lines[0]
            .split_whitespace()
            .last()
            .expect("a peer column")
            .to_owned()
    };
    assert_eq!(after.len(), 1);
    assert_eq!(port(&before), port(&after));
    // The new portal serves new logins.
    let inq = pair.host_tool("iscsi-inq", &[&pair.lab.targets()[0].url()]);
    assert!(inq.contains("SANLB"), "{inq}");
    assert_eq!(pair.metrics().redirects, 1);
    loadgen_ok(lg, Duration::from_secs(60), 0);
}

/// Runs `f` on a thread inside the host's namespace.
fn on_host<T: Send>(pair: &PairLab, f: impl FnOnce() -> T + Send) -> T {
    use std::os::fd::AsRawFd as _;
    let file = std::fs::File::open(pair.lab.hosts()[0].ns.path()).unwrap();
    thread::scope(|s| {
        s.spawn(|| {
            // SAFETY: setns(2) on a namespace descriptor we hold; it changes
            // only this thread's network namespace.
            let r = unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) };
            assert_eq!(r, 0, "setns: {}", std::io::Error::last_os_error());
            f()
        })
        .join()
        .unwrap()
    })
}

/// Sends `bytes` (one at a time, `gap` apart, when `gap` is given), then
/// waits for the portal to answer or close; returns what came back and
/// when the connection ended.
fn poke(to: SocketAddr, bytes: &[u8], gap: Option<Duration>) -> (Vec<u8>, Duration) {
    use std::io::{Read as _, Write as _};
    let start = Instant::now();
    let mut s = std::net::TcpStream::connect_timeout(&to, Duration::from_secs(5)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(15))).unwrap();
    match gap {
        None => {
            let _ = s.write_all(bytes);
        }
        Some(gap) => {
            for b in bytes {
                if s.write_all(&[*b]).is_err() {
                    break;
                }
                thread::sleep(gap);
            }
        }
    }
    let mut got = Vec::new();
    let mut buf = [0u8; 512];
    loop {
        match s.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => got.extend_from_slice(&buf[..n]),
        }
    }
    (got, start.elapsed())
}

#[test]
#[ignore = "privileged: cargo xtask test runs it as root"]
fn bad_input_leaves_the_portal_serving_real_initiators() {
    use sanlb::iscsi::{Keys, LoginRequest, Pdu, Stage};
    let login_timeout = Duration::from_secs(1);
    let pair = PairLab::with(PortalConfig {
        login_timeout,
        pdu_timeout: login_timeout,
        ..PortalConfig::default()
    });
    pair.director.steer_all(Steer::Redirect(data(0)));
    let to = pair.entity;
    let t = pair.lab.targets()[0].clone();
    let login = Pdu::LoginRequest(LoginRequest::new(
        Stage::Operational,
        Some(Stage::FullFeature),
        [0x80, 0, 0, 0, 0, 1],
        1,
        [
            ("InitiatorName", pair.lab.hosts()[0].initiator.as_str()),
            ("TargetName", t.iqn.as_str()),
        ]
        .into_iter()
        .collect::<Keys>()
        .encode(),
    ))
    .to_bytes();
    let mut oversized = login.clone();
    oversized[5..8].copy_from_slice(&[0x7f, 0xff, 0xff]);
    let garbage: Vec<u8> = (0..200u32).map(|i| (i * 37 % 251) as u8).collect();

    on_host(&pair, || {
        // Truncated: the login timeout closes it.
        let (got, took) = poke(to, &login[..40], None);
        assert!(got.is_empty() && took < login_timeout * 3, "{took:?}");
        // Oversized: a login reject (class 2), then close.
        let (got, _) = poke(to, &oversized[..48], None);
        assert_eq!((got.len(), got[0], got[36]), (48, 0x23, 0x02), "{got:?}");
        // Garbage: closed without an answer.
        let (got, took) = poke(to, &garbage, None);
        assert!(got.is_empty() && took < login_timeout * 3, "{took:?}");
        // Slowloris: a byte every 100 ms is cut at the login timeout.
        let (got, took) = poke(to, &login, Some(Duration::from_millis(100)));
        assert!(got.is_empty(), "{got:?}");
        assert!(took < login_timeout * 3, "slow login lived {took:?}");
    });
    // A real initiator is still served.
    let inq = pair.host_tool("iscsi-inq", &[&t.url()]);
    assert!(inq.contains("SANLB"), "{inq}");
    let m = pair.metrics();
    assert_eq!(m.rejects.timeout, 2, "{m:#?}");
    assert_eq!((m.rejects.oversized, m.rejects.not_login), (1, 1), "{m:#?}");
    assert_eq!(m.redirects, 1);
}
