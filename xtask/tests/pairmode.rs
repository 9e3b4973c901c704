//! Pair mode in the lab with the real controller and agents: tgtd listens
//! on the data port (3261) of every gateway, the agents run the portal on
//! the entity addresses they hold and count both ports, the controller
//! (`--mode pair --data-pool 198.18.2.0/24`) places the pairs. Where a
//! session runs is checked on the gateways (`ss`, `tgtadm --op show --mode
//! conn`); `sanlb status` only says where the map wants it.

use std::{
    collections::BTreeMap,
    net::Ipv4Addr,
    path::PathBuf,
    thread,
    time::{Duration, Instant},
};

use serde_json::Value;
use xtask::lab::{
    self, DATA_PORT, Lab, Placement, Process, agent,
    loadgen::{self, Workload},
    proc,
};

const PORT: u16 = 7878;

fn url() -> String {
    format!("http://{}:{PORT}", lab::MANAGEMENT_ADDR)
}

struct PairSetup {
    lab: Lab,
    sanlb: PathBuf,
    controller: Process,
    agents: BTreeMap<String, Process>,
}

/// A pair-mode lab: a controller in the management namespace, an agent on
/// every gateway; returns once every portal is placed and every gateway
/// holds its data addresses.
fn setup(hosts: usize, gateways: usize, targets: usize) -> PairSetup {
    let sanlb = agent::sanlb_binary().unwrap();
    let lab = Lab::builder()
        .hosts(hosts)
        .gateways(gateways)
        .targets(targets)
        .disk_size(16 << 20)
        .placement(Placement::Unassigned)
        .management(true)
        .pair_mode(true)
        .build()
        .unwrap();
    let token = lab.dir().join("token");
    std::fs::write(&token, "lab-test-token").unwrap();
    let mgmt = lab.management().unwrap();
    let mut cmd = mgmt.ns.command(&sanlb.to_string_lossy());
    cmd.arg("controller")
        .args(["--listen", &format!("{}:{PORT}", mgmt.addr)])
        .arg("--state")
        .arg(lab.dir().join("state.json"))
        .arg("--token-file")
        .arg(&token)
        .args(["--mode", "pair", "--data-pool", "198.18.2.0/24"])
        .args(["--interval", "2s", "--lease", "3s", "--window", "2"])
        .args(["--storage", "198.18.1.0/24"]);
    for t in lab.targets() {
        cmd.args(["--target", &format!("{}={}", t.addr, t.iqn)]);
    }
    let controller = lab.spawn("controller", cmd).unwrap();
    let mut agents = BTreeMap::new();
    for g in lab.gateways() {
        agents.insert(g.name.clone(), start_agent(&lab, &sanlb, &g.name));
    }
    let s = PairSetup {
        lab,
        sanlb,
        controller,
        agents,
    };
    wait_for(
        Duration::from_secs(30),
        "portals and data addresses",
        || {
            let placed = s.lab.placement().unwrap().values().all(|o| o.len() == 1);
            placed
                && s.data_addresses().len() == gateways * targets
                && s.data_addresses().iter().all(|(gw, _, d)| s.holds(gw, *d))
        },
    );
    s
}

fn start_agent(lab: &Lab, sanlb: &std::path::Path, gw: &str) -> Process {
    let token = lab.dir().join("token");
    let extra: Vec<String> = [
        "--port",
        "3260",
        "--port",
        "3261",
        "--controller",
        &url(),
        "--gateway",
        gw,
        "--token-file",
        &token.to_string_lossy(),
        "--interval",
        "1s",
    ]
    .map(String::from)
    .to_vec();
    agent::start(lab, sanlb, lab.gateway(gw).unwrap(), &extra).unwrap()
}

fn wait_for(limit: Duration, what: &str, mut ok: impl FnMut() -> bool) {
    let deadline = Instant::now() + limit;
    while !ok() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        thread::sleep(Duration::from_millis(200));
    }
}

impl PairSetup {
    /// `sanlb status --json`.
    fn status(&self) -> Value {
        let mgmt = self.lab.management().unwrap();
        let mut cmd = mgmt.ns.command(&self.sanlb.to_string_lossy());
        cmd.args(["status", "--controller", &url(), "--json", "--token-file"])
            .arg(self.lab.dir().join("token"));
        let out = proc::run(&mut cmd).unwrap_or_else(|e| panic!("{e:#}"));
        serde_json::from_str(&out).unwrap()
    }

    /// (gateway, entity, data address) from the controller.
    fn data_addresses(&self) -> Vec<(String, Ipv4Addr, Ipv4Addr)> {
        self.status()["data_addresses"]
            .as_array()
            .map(|v| {
                v.iter()
                    .map(|d| {
                        (
                            d["gateway"].as_str().unwrap().to_owned(),
                            d["target"].as_str().unwrap().parse().unwrap(),
                            d["address"].as_str().unwrap().parse().unwrap(),
                        )
                    })
                    .collect()
            })
            .unwrap_or_default()
    }

    fn data(&self, gw: &str, entity: Ipv4Addr) -> Ipv4Addr {
        self.data_addresses()
            .into_iter()
            .find(|(g, e, _)| g == gw && *e == entity)
            .unwrap()
            .2
    }

    fn holds(&self, gw: &str, addr: Ipv4Addr) -> bool {
        let g = self.lab.gateway(gw).unwrap();
        g.ns.ipv4_addresses(lab::NIC).unwrap().contains(&addr)
    }

    /// The gateway the map gives pair (host, entity) to, if it is owned.
    fn assigned(&self, host: Ipv4Addr, entity: Ipv4Addr) -> Option<String> {
        let st = self.status();
        st["map"].as_array()?.iter().find_map(|m| {
            (m["host"].as_str() == Some(&host.to_string())
                && m["target"].as_str() == Some(&entity.to_string())
                && m["state"] == "owned")
                .then(|| m["gateway"].as_str().unwrap().to_owned())
        })
    }

    /// The established connections on gateway `gw`'s data port from
    /// `host`, as `ss` there shows them: (local address, peer port).
    fn sessions_on(&self, gw: &str, host: Ipv4Addr) -> Vec<(Ipv4Addr, u16)> {
        let out = self
            .lab
            .gateway(gw)
            .unwrap()
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
        out.lines()
            .filter_map(|l| {
                let cols: Vec<&str> = l.split_whitespace().collect();
                let [.., local, peer] = cols.as_slice() else {
                    return None;
                };
                let (lip, _) = local.rsplit_once(':')?;
                let (pip, pport) = peer.rsplit_once(':')?;
                if pip != host.to_string() {
                    return None;
                }
                Some((lip.parse().ok()?, pport.parse().ok()?))
            })
            .collect()
    }

    /// Where `host`'s sessions run: gateway → connections.
    fn where_is(&self, host: Ipv4Addr) -> BTreeMap<String, Vec<(Ipv4Addr, u16)>> {
        self.lab
            .gateways()
            .iter()
            .map(|g| (g.name.clone(), self.sessions_on(&g.name, host)))
            .filter(|(_, s)| !s.is_empty())
            .collect()
    }

    /// tgtd's connections of target 1 on `gw`.
    fn tgtd_connections(&self, gw: &str) -> String {
        self.lab
            .gateway(gw)
            .unwrap()
            .tgtd
            .as_ref()
            .unwrap()
            .tgtadm(&["--op", "show", "--mode", "conn", "--tid", "1"])
            .unwrap()
    }

    fn host_tool(&self, h: usize, tool: &str, args: &[&str]) -> String {
        let host = &self.lab.hosts()[h];
        let mut cmd = host.ns.command("timeout");
        cmd.arg("15")
            .arg(tool)
            .args(["-i", &host.initiator])
            .args(args);
        let out = proc::output_timeout(&mut cmd, Duration::from_secs(20)).unwrap();
        assert!(
            out.status.success(),
            "{tool} {args:?}: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// A verifying loadgen from host `h` on target 1, in its own region.
    fn loadgen(&self, h: usize, seconds: u64, rate: u64) -> Process {
        let bin = loadgen::build().unwrap();
        let w = Workload {
            rate: Some(rate),
            read_pct: 50,
            lba: h as u64 * 4096,
            blocks: Some(4096),
            verify: true,
            ..Workload::new(&self.lab.targets()[0])
        };
        let host = &self.lab.hosts()[h];
        let mut cmd = loadgen::command(&bin, host, &[w], Duration::from_secs(seconds), h as u64);
        cmd.args(["--stall-event", "0.02"]);
        self.lab
            .spawn(&format!("loadgen-{}", host.name), cmd)
            .unwrap()
    }
}

/// Waits for a loadgen: no failed I/O, every block intact; returns its
/// reconnects, the stalls that span them (seconds) and the bytes it read
/// and wrote.
fn loadgen_ok(lg: &mut Process) -> (u64, Vec<f64>, u64) {
    let status = lg
        .wait_timeout(Duration::from_secs(120))
        .unwrap()
        .expect("the loadgen ends");
    assert!(status.success(), "loadgen {status}: {}", lg.stderr());
    let out = lg.stdout();
    let finals = loadgen::finals(&out).unwrap();
    assert_eq!(finals.len(), 1);
    let (name, totals, verified, wrong) = &finals[0];
    assert_eq!(totals.errors, 0, "{name}: failed I/O");
    assert_eq!(totals.verify_errors, 0, "{name}: corrupt reads");
    assert_eq!((*verified, *wrong), (128, 0), "{name}: read back");
    assert!(totals.read_ops > 0 && totals.write_ops > 0);
    let events: Vec<loadgen::Event> = out
        .lines()
        .map(|l| loadgen::parse_line(l).unwrap())
        .collect();
    let reconnects: Vec<f64> = events
        .iter()
        .filter_map(|e| match e {
            loadgen::Event::Reconnect { unix, .. } => Some(*unix),
            _ => None,
        })
        .collect();
    let stalls = events
        .iter()
        .filter_map(|e| match e {
            loadgen::Event::Stall {
                start_unix,
                duration_s,
                ..
            } if reconnects
                .iter()
                .any(|r| *start_unix <= r + 1e-3 && *r <= start_unix + duration_s + 1e-3) =>
            {
                Some(*duration_s)
            }
            _ => None,
        })
        .collect();
    (
        totals.reconnects,
        stalls,
        totals.read_bytes + totals.write_bytes,
    )
}

#[test]
#[ignore = "privileged: cargo xtask test runs it as root"]
fn discovery_and_logins_through_the_portal_land_where_the_map_says() {
    let s = setup(1, 2, 1);
    let t = s.lab.targets()[0].clone();
    let h = s.lab.hosts()[0].addr;
    let portal_gw = s.lab.owner(t.addr).unwrap().expect("the portal is placed");

    // Discovery through the portal: the target at the entity's address.
    let ls = s.host_tool(0, "iscsi-ls", &[&format!("iscsi://{}", t.addr)]);
    assert!(
        ls.contains(&format!("Target:{} Portal:{}:3260,1", t.iqn, t.addr)),
        "{ls}"
    );
    let ls = s.host_tool(0, "iscsi-ls", &["-s", &format!("iscsi://{}", t.addr)]);
    assert!(ls.contains("Lun:1"), "{ls}");
    let inq = s.host_tool(0, "iscsi-inq", &[&t.url()]);
    assert!(inq.contains("SANLB"), "{inq}");

    // A running session: a new pair goes to the portal's gateway's data
    // address (the default), is adopted there, and runs there only.
    let mut lg = s.loadgen(0, 8, 2 << 20);
    wait_for(Duration::from_secs(15), "the pair adopted", || {
        s.assigned(h, t.addr).is_some()
    });
    let gw = s.assigned(h, t.addr).unwrap();
    assert_eq!(gw, portal_gw, "the default is the portal's gateway");
    wait_for(
        Duration::from_secs(10),
        "the session on its gateway",
        || s.where_is(h).len() == 1,
    );
    let sessions = s.where_is(h);
    let d = s.data(&gw, t.addr);
    assert_eq!(sessions.keys().collect::<Vec<_>>(), [&gw]);
    assert!(sessions[&gw].iter().all(|(local, _)| *local == d));
    let initiator = &s.lab.hosts()[0].initiator;
    assert!(s.tgtd_connections(&gw).contains(initiator.as_str()));
    for g in s.lab.gateways().iter().filter(|g| g.name != gw) {
        assert!(!s.tgtd_connections(&g.name).contains(initiator.as_str()));
    }
    let (reconnects, _, _) = loadgen_ok(&mut lg);
    assert_eq!(reconnects, 0);
    drop(s.controller);
}

#[test]
#[ignore = "privileged: cargo xtask test runs it as root"]
fn a_pair_moves_under_verified_writes() {
    // Two hosts on one entity, both sent to the portal's gateway first: the
    // controller moves one pair to the other gateway.
    let s = setup(2, 2, 1);
    let t = s.lab.targets()[0].clone();
    let hosts: Vec<Ipv4Addr> = s.lab.hosts().iter().map(|h| h.addr).collect();
    let mut lgs: Vec<Process> = (0..2).map(|h| s.loadgen(h, 24, 2 << 20)).collect();
    wait_for(
        Duration::from_secs(15),
        "both sessions on one gateway",
        || {
            let a = s.where_is(hosts[0]);
            let b = s.where_is(hosts[1]);
            a.len() == 1 && a.keys().eq(b.keys())
        },
    );
    let start = s.where_is(hosts[0]).into_keys().next().unwrap();
    wait_for(Duration::from_secs(30), "one pair moved", || {
        let a = s.where_is(hosts[0]);
        let b = s.where_is(hosts[1]);
        a.len() == 1 && b.len() == 1 && a.keys().ne(b.keys())
    });
    let moved = (0..2)
        .find(|&h| !s.where_is(hosts[h]).contains_key(&start))
        .unwrap();
    let to = s.where_is(hosts[moved]).into_keys().next().unwrap();
    assert_eq!(
        s.assigned(hosts[moved], t.addr).as_deref(),
        Some(to.as_str())
    );
    assert_eq!(
        s.where_is(hosts[moved])[&to]
            .iter()
            .map(|c| c.0)
            .collect::<Vec<_>>(),
        [s.data(&to, t.addr)]
    );
    // tgtd on the old gateway dropped the moved session and serves the other.
    let moved_initiator = s.lab.hosts()[moved].initiator.clone();
    wait_for(
        Duration::from_secs(10),
        "tgtd drops the old session",
        || {
            !s.tgtd_connections(&start)
                .contains(moved_initiator.as_str())
        },
    );
    assert!(s.tgtd_connections(&to).contains(moved_initiator.as_str()));
    let stayed_initiator = &s.lab.hosts()[1 - moved].initiator;
    assert!(
        s.tgtd_connections(&start)
            .contains(stayed_initiator.as_str())
    );
    let (moved_reconnects, stalls, moved_bytes) = loadgen_ok(&mut lgs[moved]);
    let (stayed_reconnects, _, stayed_bytes) = loadgen_ok(&mut lgs[1 - moved]);
    assert_eq!((moved_reconnects, stayed_reconnects), (1, 0));
    eprintln!("stall across the pair's move: {stalls:?} s");
    assert!(stalls.iter().all(|s| *s < 3.0), "{stalls:?}");

    // Counting stays per (host, entity) and exact across the move: a flow
    // to D(t, g) is counted on g only, and each host's flows to t's data
    // addresses and to its portal add up to what the initiator moved (the
    // data, plus PDU headers, logins and NOPs: at most 1 % more).
    let data: BTreeMap<Ipv4Addr, String> = s
        .data_addresses()
        .into_iter()
        .filter(|(_, e, _)| *e == t.addr)
        .map(|(g, _, d)| (d, g))
        .collect();
    let mut counted = [0u64; 2];
    for g in s.lab.gateways() {
        for f in agent::counters(&s.sanlb, g).unwrap() {
            let (std::net::IpAddr::V4(i), std::net::IpAddr::V4(d)) = (f.initiator, f.target) else {
                continue;
            };
            if let Some(holder) = data.get(&d) {
                assert_eq!(holder, &g.name, "{f:?} counted on {}", g.name);
            } else if d != t.addr {
                continue;
            }
            if let Some(h) = hosts.iter().position(|h| *h == i) {
                counted[h] += f.to_target_bytes + f.to_initiator_bytes;
            }
        }
    }
    let mut wire = [0u64; 2];
    wire[moved] = moved_bytes;
    wire[1 - moved] = stayed_bytes;
    for h in 0..2 {
        let ratio = counted[h] as f64 / wire[h] as f64;
        eprintln!(
            "h{}: moved {} bytes, counted {} ({:+.3} %)",
            h + 1,
            wire[h],
            counted[h],
            (ratio - 1.0) * 100.0
        );
        assert!(
            (1.0..=1.01).contains(&ratio),
            "h{}: moved {}, counted {}",
            h + 1,
            wire[h],
            counted[h]
        );
    }
    let st = s.status();
    assert_eq!(st["report_errors"], serde_json::json!([]));
}

#[test]
#[ignore = "privileged: cargo xtask test runs it as root"]
fn an_agent_restart_loses_no_running_session() {
    let mut s = setup(1, 2, 1);
    let t = s.lab.targets()[0].clone();
    let h = s.lab.hosts()[0].addr;
    let mut lg = s.loadgen(0, 14, 2 << 20);
    wait_for(Duration::from_secs(15), "the session placed", || {
        s.assigned(h, t.addr).is_some() && s.where_is(h).len() == 1
    });
    let before = s.where_is(h);
    let gw = before.keys().next().unwrap().clone();
    let portal_gw = s.lab.owner(t.addr).unwrap().unwrap();
    assert_eq!(gw, portal_gw, "the portal and the session on one gateway");

    // The agent (and with it the portal) restarts; it holds its addresses
    // meanwhile (fail-static) and comes back within the lease.
    s.agents
        .get_mut(&gw)
        .unwrap()
        .stop(Duration::from_secs(5))
        .unwrap();
    let agent = start_agent(&s.lab, &s.sanlb, &gw);
    s.agents.insert(gw.clone(), agent);
    thread::sleep(Duration::from_secs(3));
    assert_eq!(s.where_is(h), before, "the same connection carries it");
    // The new portal serves new logins.
    let inq = s.host_tool(0, "iscsi-inq", &[&t.url()]);
    assert!(inq.contains("SANLB"), "{inq}");
    let (reconnects, _, _) = loadgen_ok(&mut lg);
    assert_eq!(reconnects, 0);
    assert_eq!(s.where_is(h), BTreeMap::new(), "logged out");
}
