//! A storage segment in network namespaces: one host, two gateways and a
//! bridge, built with `ip` and always torn down (Drop, also on panic).
//!
//! ```text
//!  host (eth0 198.18.0.10/24, 2001:2::10/64)       routes 198.18.1.0/24 and
//!    │                                              2001:2:0:1::/64 on-link,
//!  bridge ns: br0 (no STP, no multicast snooping)   so ARP/ND pick the gateway
//!    │                    │
//!  gw1 (eth0 .1, ::1)   gw2 (eth0 .2, ::2)          ip_forward=0, rp_filter=0
//! ```
//! Addresses only from 198.18.0.0/15 and the IPv6 benchmarking prefix
//! 2001:2::/48 (RFC 5180). DAD is off so every address serves at once; the
//! neighbour timers stay at the kernel defaults, as on a real host.

use std::{
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
    process::Command,
    sync::atomic::{AtomicU32, Ordering},
};

use super::ns_runtime::NsRuntime;

pub type Mac = [u8; 6];

/// The storage prefixes the host reaches on-link.
pub const STORAGE_V4: Ipv4Addr = Ipv4Addr::new(198, 18, 1, 50);
pub const STORAGE_V6: Ipv6Addr = Ipv6Addr::new(0x2001, 2, 0, 1, 0, 0, 0, 0x50);

/// One namespace attached to the bridge.
pub struct Node {
    /// Short role name: "host", "gw1", "gw2".
    pub role: &'static str,
    pub netns: String,
    pub mac: Mac,
    pub v4: Ipv4Addr,
    pub v6: Ipv6Addr,
    pub rt: NsRuntime,
}

impl Node {
    /// `ip -n <netns> ARGS`, which must succeed.
    pub fn ip(&self, args: &[&str]) -> String {
        ip(Some(&self.netns), args)
    }

    /// `sysctl -w` in the node's namespace.
    pub fn sysctl(&self, settings: &[&str]) {
        sysctl(&self.netns, settings);
    }

    /// The NIC's own addresses ("addr/len") as `ip` reports them.
    pub fn own_addrs(&self) -> Vec<String> {
        vec![format!("{}/24", self.v4), format!("{}/64", self.v6)]
    }
}

pub struct Lab {
    pub host: Node,
    pub gw1: Node,
    pub gw2: Node,
    /// Every namespace created, deleted on drop.
    created: Vec<String>,
}

static NEXT: AtomicU32 = AtomicU32::new(0);

impl Lab {
    pub fn new() -> Self {
        let tag = format!(
            "sanlb-enf-{}-{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        );
        let mut guard = NsGuard(Vec::new());
        let ns = |role: &str| format!("{tag}-{role}");
        for role in ["br", "host", "gw1", "gw2"] {
            ip(None, &["netns", "add", &ns(role)]);
            guard.0.push(ns(role));
        }
        // Before any interface exists, so eth0 inherits the defaults.
        sysctl(
            &ns("br"),
            &[
                "net.ipv6.conf.all.disable_ipv6=1",
                "net.ipv6.conf.default.disable_ipv6=1",
            ],
        );
        for role in ["host", "gw1", "gw2"] {
            sysctl(
                &ns(role),
                &[
                    "net.ipv4.conf.all.rp_filter=0",
                    "net.ipv4.conf.default.rp_filter=0",
                    "net.ipv4.ip_forward=0",
                    "net.ipv6.conf.all.forwarding=0",
                    "net.ipv6.conf.all.accept_dad=0",
                    "net.ipv6.conf.default.accept_dad=0",
                ],
            );
            ip(Some(&ns(role)), &["link", "set", "lo", "up"]);
        }
        let br = ns("br");
        ip(
            Some(&br),
            &[
                "link",
                "add",
                "br0",
                "type",
                "bridge",
                "stp_state",
                "0",
                "forward_delay",
                "0",
                "mcast_snooping",
                "0",
            ],
        );
        ip(Some(&br), &["link", "set", "br0", "up"]);
        let mk = |role: &'static str, last: u8| -> Node {
            let netns = ns(role);
            let mac = [0x02, 0x00, 0xc6, 0x12, 0x00, last];
            let v4 = Ipv4Addr::new(198, 18, 0, last);
            let v6 = Ipv6Addr::new(0x2001, 2, 0, 0, 0, 0, 0, u16::from(last));
            let port = format!("p-{role}");
            ip(
                None,
                &[
                    "link",
                    "add",
                    "eth0",
                    "netns",
                    &netns,
                    "address",
                    &fmt_mac(&mac),
                    "type",
                    "veth",
                    "peer",
                    "name",
                    &port,
                    "netns",
                    &br,
                ],
            );
            ip(Some(&br), &["link", "set", &port, "master", "br0", "up"]);
            ip(
                Some(&netns),
                &["addr", "add", &format!("{v4}/24"), "dev", "eth0"],
            );
            ip(
                Some(&netns),
                &["addr", "add", &format!("{v6}/64"), "dev", "eth0", "nodad"],
            );
            ip(Some(&netns), &["link", "set", "eth0", "up"]);
            let rt = NsRuntime::enter(&netns);
            Node {
                role,
                netns,
                mac,
                v4,
                v6,
                rt,
            }
        };
        let host = mk("host", 10);
        let gw1 = mk("gw1", 1);
        let gw2 = mk("gw2", 2);
        host.ip(&["route", "add", "198.18.1.0/24", "dev", "eth0"]);
        host.ip(&["-6", "route", "add", "2001:2:0:1::/64", "dev", "eth0"]);
        Self {
            host,
            gw1,
            gw2,
            created: std::mem::take(&mut guard.0),
        }
    }

    pub fn gateways(&self) -> [&Node; 2] {
        [&self.gw1, &self.gw2]
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        delete_netns(&self.created);
    }
}

/// Deletes the namespaces of a half-built lab if building it panics.
struct NsGuard(Vec<String>);

impl Drop for NsGuard {
    fn drop(&mut self) {
        delete_netns(&self.0);
    }
}

fn delete_netns(names: &[String]) {
    for name in names {
        // Deleting a namespace removes its veth ends and the bridge; threads
        // still in it (a runtime being dropped) release it when they end.
        let _ = Command::new("ip").args(["netns", "del", name]).status();
    }
}

/// Runs `ip [-n netns] ARGS` and returns its stdout; panics on failure.
pub fn ip(netns: Option<&str>, args: &[&str]) -> String {
    let mut cmd = Command::new("timeout");
    cmd.args(["10", "ip"]);
    if let Some(ns) = netns {
        cmd.args(["-n", ns]);
    }
    let out = cmd.args(args).output().expect("running ip");
    assert!(
        out.status.success(),
        "ip {netns:?} {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).expect("ip prints UTF-8")
}

fn sysctl(netns: &str, settings: &[&str]) {
    let out = Command::new("timeout")
        .args(["10", "ip", "netns", "exec", netns, "sysctl", "-qw"])
        .args(settings)
        .output()
        .expect("running sysctl");
    assert!(
        out.status.success(),
        "sysctl in {netns} {settings:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

pub fn fmt_mac(m: &Mac) -> String {
    m.iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(":")
}

pub fn parse_mac(s: &str) -> Option<Mac> {
    let v: Vec<u8> = s
        .split(':')
        .map(|p| u8::from_str_radix(p, 16))
        .collect::<Result<_, _>>()
        .ok()?;
    v.try_into().ok()
}

/// The storage address of a family.
pub fn storage(v6: bool) -> IpAddr {
    if v6 {
        STORAGE_V6.into()
    } else {
        STORAGE_V4.into()
    }
}
