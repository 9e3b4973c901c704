//! The storage segment of the enforcement and agent tests: the lab
//! ([`xtask::lab`]) with one host, two gateways, no targets (so no tgtd) and
//! IPv6, each node paired with a runtime whose threads live in its namespace.
//!
//! ```text
//!  h1 (eth0 198.18.0.101/24, 2001:2::65/64)        routes 198.18.1.0/24 and
//!    │                                              2001:2:0:1::/64 on-link,
//!  bridge ns: br0 (no STP, no multicast snooping)   so ARP/ND pick the gateway
//!    │                    │
//!  gw1 (eth0 .1, ::1)   gw2 (eth0 .2, ::2)          ip_forward=0, rp_filter=0
//! ```
//! DAD is off so every address serves at once; the neighbour timers stay at
//! the kernel defaults, as on a real host. Everything is removed on drop,
//! also on panic (the lab's guards).

use std::{
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
    process::Command,
};

use xtask::lab::{Lab, NIC, Placement, netns::NETNS_DIR, proc};

use crate::{Mac, ns_runtime::NsRuntime, parse_mac};

/// The storage address the tests move, IPv4.
pub const STORAGE_V4: Ipv4Addr = Ipv4Addr::new(198, 18, 1, 50);
/// The storage address the tests move, IPv6.
pub const STORAGE_V6: Ipv6Addr = Ipv6Addr::new(0x2001, 2, 0, 1, 0, 0, 0, 0x50);

/// The storage address of a family.
pub fn storage(v6: bool) -> IpAddr {
    if v6 {
        STORAGE_V6.into()
    } else {
        STORAGE_V4.into()
    }
}

/// One namespace of the segment.
pub struct Node {
    /// The lab's name for it: `h1`, `gw1`, `gw2`.
    pub name: String,
    /// Its network namespace (as `ip netns` knows it).
    pub netns: String,
    /// The MAC of its `eth0`.
    pub mac: Mac,
    /// Its own IPv4 address on `eth0` (/24).
    pub v4: Ipv4Addr,
    /// Its own IPv6 address on `eth0` (/64).
    pub v6: Ipv6Addr,
    /// A runtime whose threads are in its namespace.
    pub rt: NsRuntime,
}

impl Node {
    fn new(name: &str, netns: &str, mac: &str, v4: Ipv4Addr, v6: Option<Ipv6Addr>) -> Self {
        Self {
            name: name.to_owned(),
            netns: netns.to_owned(),
            mac: parse_mac(mac).unwrap_or_else(|| panic!("the lab's MAC {mac}")),
            v4,
            v6: v6.expect("an IPv6 lab"),
            rt: NsRuntime::enter(netns),
        }
    }

    /// `ip -n NETNS ARGS`, which must succeed; its stdout.
    pub fn ip(&self, args: &[&str]) -> String {
        let mut cmd = Command::new("ip");
        cmd.arg("-n").arg(&self.netns).args(args);
        proc::run(&mut cmd).unwrap_or_else(|e| panic!("{e:#}"))
    }

    /// `sysctl -w` in the node's namespace (`key=value` each).
    pub fn sysctl(&self, settings: &[&str]) {
        let mut cmd = Command::new("nsenter");
        cmd.arg(format!("--net={NETNS_DIR}/{}", self.netns))
            .args(["--", "sysctl", "-qw"])
            .args(settings);
        proc::run(&mut cmd).unwrap_or_else(|e| panic!("{e:#}"));
    }

    /// The NIC's own addresses ("addr/len") as `ip` reports them.
    pub fn own_addrs(&self) -> Vec<String> {
        vec![format!("{}/24", self.v4), format!("{}/64", self.v6)]
    }
}

/// The segment; see the module docs.
pub struct Segment {
    /// The host.
    pub host: Node,
    /// The first gateway.
    pub gw1: Node,
    /// The second gateway.
    pub gw2: Node,
    // Dropped last: the runtimes above leave the namespaces first.
    lab: Lab,
}

impl Segment {
    /// Builds it; panics if it cannot (the lab removes what it built).
    pub fn new() -> Self {
        let lab = Lab::builder()
            .hosts(1)
            .gateways(2)
            .targets(0)
            .placement(Placement::Unassigned)
            .ipv6(true)
            .build()
            .unwrap_or_else(|e| panic!("building the lab: {e:#}"));
        let h = &lab.hosts()[0];
        let host = Node::new(&h.name, h.ns.name(), &h.mac, h.addr, h.addr6);
        let gw = |i: usize| {
            let g = &lab.gateways()[i];
            Node::new(&g.name, g.ns.name(), &g.mac, g.addr, g.addr6)
        };
        let (gw1, gw2) = (gw(0), gw(1));
        assert_eq!(NIC, "eth0", "the tests name the NIC");
        Self {
            host,
            gw1,
            gw2,
            lab,
        }
    }

    /// Both gateways.
    pub fn gateways(&self) -> [&Node; 2] {
        [&self.gw1, &self.gw2]
    }

    /// The lab underneath.
    pub fn lab(&self) -> &Lab {
        &self.lab
    }
}

impl Default for Segment {
    fn default() -> Self {
        Self::new()
    }
}
