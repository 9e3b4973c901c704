//! The SAN lab: real iSCSI initiators and targets in network namespaces.
//!
//! ```text
//!   h1 .. hn (initiators)        198.18.0.101.. /24, route 198.18.1.0/24 on-link
//!     │ eth0
//!   ┌─┴───────────── br0 (bridge namespace) ─────────────┬────────┐
//!     │ eth0                                              │ eth0   │ eth0
//!   gw1 .. gwk (tgtd each, same backing files)   198.18.0.1.. /24   mgmt 198.18.0.250
//!     + the target addresses 198.18.1.1.. /32 of the targets each one owns
//! ```
//!
//! With [`LabBuilder::pair_mode`] tgtd listens on the data port (3261) only,
//! leaving 3260 to sanlb's redirecting portal, and hosts also route the data
//! addresses' network [`DATA_NET`] on-link.
//!
//! With [`LabBuilder::ipv6`] every node also has an IPv6 address on
//! 2001:2::/64 (the benchmarking prefix of RFC 5180: `2001:2::` and the last
//! octet of its IPv4 address) and hosts route 2001:2:0:1::/64 on-link, so
//! neighbour discovery picks the gateway. A lab with no targets runs no tgtd:
//! the bare segment the enforcement tests need.
//!
//! A [`Lab`] is built with [`Lab::builder`]: one bridge namespace, a namespace
//! per host and per gateway (and optionally a management namespace for a
//! controller), all joined by veth pairs with fixed MACs. Every gateway runs
//! its own `tgtd` exporting the SAME sparse backing files as the same targets
//! with the same SCSI identity (the any-to-any storage layer), so whichever
//! gateway owns a target's address serves the same disk. Hosts route the
//! target /24 on-link, so ARP decides which gateway carries a target.
//!
//! Everything the lab creates is removed when it is dropped, also when a test
//! panics: tgtd is stopped, every process left in a lab namespace is killed,
//! the namespaces, the temporary folder (backing files, logs) and the pin
//! folder are deleted. A run that was killed before it could clean up leaves
//! names that carry its pid; [`cleanup_leftovers`] (called by
//! [`LabBuilder::build`]) removes those of dead pids.
//!
//! ```no_run
//! use xtask::lab::Lab;
//! let lab = Lab::builder().hosts(1).gateways(2).targets(1).build()?;
//! let t = &lab.targets()[0];
//! let ls = lab.hosts()[0].ns.exec("iscsi-ls", &["-s", &format!("iscsi://{}", t.addr)])?;
//! lab.move_address(t.addr, "gw1", "gw2", true)?;
//! assert_eq!(lab.owner(t.addr)?.as_deref(), Some("gw2"));
//! # anyhow::Ok(())
//! ```

pub mod agent;
pub mod loadgen;
pub mod netns;
pub mod proc;
pub mod tgtd;

use std::{
    collections::{BTreeMap, BTreeSet},
    fs,
    net::{Ipv4Addr, Ipv6Addr},
    path::{Path, PathBuf},
    process::Command,
    time::Duration,
};

use anyhow::{Context as _, Result, bail};

pub use self::{
    netns::{LinkStats, Netns},
    proc::{LineTail, Process},
    tgtd::{TargetSpec, Tgtd},
};

/// Prefix of everything a lab names: namespaces, folders, pins.
pub const LAB_PREFIX: &str = "sanlb-lab";

/// Where labs pin BPF maps: `PIN_ROOT/LAB_ID/GATEWAY`.
pub const PIN_ROOT: &str = "/sys/fs/bpf/sanlb-lab";

/// The NIC name inside every host, gateway and management namespace.
pub const NIC: &str = "eth0";

/// The bridge inside the bridge namespace.
pub const BRIDGE: &str = "br0";

/// Prefix of the lab's IQNs (targets `:t1`.., initiators `:h1`..).
pub const IQN_PREFIX: &str = "iqn.2026-11.test.sanlb";

/// The host network (hosts, gateways, management): 198.18.0.0/24.
pub const HOST_NET: (Ipv4Addr, u8) = (Ipv4Addr::new(198, 18, 0, 0), 24);

/// The target addresses' network, routed on-link from the hosts: 198.18.1.0/24.
pub const TARGET_NET: (Ipv4Addr, u8) = (Ipv4Addr::new(198, 18, 1, 0), 24);

/// Pair mode's data addresses (one per target and gateway, allocated by the
/// controller's `--data-pool`), routed on-link from the hosts in a
/// [`LabBuilder::pair_mode`] lab: 198.18.2.0/24.
pub const DATA_NET: (Ipv4Addr, u8) = (Ipv4Addr::new(198, 18, 2, 0), 24);

/// The port tgtd listens on in a [`LabBuilder::pair_mode`] lab.
pub const DATA_PORT: u16 = 3261;

/// The host network in IPv6 labs ([`LabBuilder::ipv6`]): 2001:2::/64.
pub const HOST_NET6: (Ipv6Addr, u8) = (Ipv6Addr::new(0x2001, 2, 0, 0, 0, 0, 0, 0), 64);

/// The storage network in IPv6 labs, routed on-link from the hosts:
/// 2001:2:0:1::/64.
pub const TARGET_NET6: (Ipv6Addr, u8) = (Ipv6Addr::new(0x2001, 2, 0, 1, 0, 0, 0, 0), 64);

/// The management namespace's address.
pub const MANAGEMENT_ADDR: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 250);

/// Most hosts a lab has (their addresses are 198.18.0.101..=200).
pub const MAX_HOSTS: usize = 100;
/// Most gateways a lab has (198.18.0.1..=99).
pub const MAX_GATEWAYS: usize = 99;
/// Most targets a lab has (198.18.1.1..=250).
pub const MAX_TARGETS: usize = 250;

/// Address of host `i` (0-based): 198.18.0.101 + i.
pub fn host_addr(i: usize) -> Ipv4Addr {
    Ipv4Addr::new(198, 18, 0, 101 + i as u8)
}

/// Address of gateway `g` (0-based) on the host network: 198.18.0.1 + g.
pub fn gateway_addr(g: usize) -> Ipv4Addr {
    Ipv4Addr::new(198, 18, 0, 1 + g as u8)
}

/// Address of target `t` (0-based): 198.18.1.1 + t.
pub fn target_addr(t: usize) -> Ipv4Addr {
    Ipv4Addr::new(198, 18, 1, 1 + t as u8)
}

/// The IPv6 address of the node whose IPv4 address is `v4` in an IPv6 lab:
/// [`HOST_NET6`] with the last octet of `v4` as its last group
/// (198.18.0.1 → 2001:2::1, 198.18.0.101 → 2001:2::65).
pub fn node_addr6(v4: Ipv4Addr) -> Ipv6Addr {
    let mut seg = HOST_NET6.0.segments();
    seg[7] = u16::from(v4.octets()[3]);
    Ipv6Addr::from(seg)
}

fn mac(last: u8, group: u8) -> String {
    format!("02:00:c6:12:{group:02x}:{last:02x}")
}

/// Where each target's address starts.
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub enum Placement {
    /// Every target address on the first gateway (the most skewed start).
    #[default]
    AllOnFirst,
    /// Target `i` on gateway `map[i]` (0-based indices).
    Map(Vec<usize>),
    /// No address anywhere: something else (the agents) places them.
    Unassigned,
}

/// Builds a [`Lab`]; see the module docs.
#[derive(Clone, Debug)]
pub struct LabBuilder {
    hosts: usize,
    gateways: usize,
    targets: usize,
    disk_size: u64,
    tgtd_iscsi: String,
    placement: Placement,
    management: bool,
    ipv6: bool,
    pair_mode: bool,
    prefix: String,
}

impl Default for LabBuilder {
    fn default() -> Self {
        LabBuilder {
            hosts: 1,
            gateways: 2,
            targets: 1,
            disk_size: 64 << 20,
            tgtd_iscsi: tgtd::DEFAULT_ISCSI_OPTIONS.to_owned(),
            placement: Placement::AllOnFirst,
            management: false,
            ipv6: false,
            pair_mode: false,
            prefix: LAB_PREFIX.to_owned(),
        }
    }
}

impl LabBuilder {
    /// Number of hosts (initiators) `h1..`; default 1.
    pub fn hosts(mut self, n: usize) -> Self {
        self.hosts = n;
        self
    }

    /// Number of gateways `gw1..`; default 2.
    pub fn gateways(mut self, k: usize) -> Self {
        self.gateways = k;
        self
    }

    /// Number of targets `t1..`; default 1. With 0 the gateways run no
    /// tgtd.
    pub fn targets(mut self, m: usize) -> Self {
        self.targets = m;
        self
    }

    /// Size of each (sparse) backing file; default 64 MiB.
    pub fn disk_size(mut self, bytes: u64) -> Self {
        self.disk_size = bytes;
        self
    }

    /// tgtd's `--iscsi` options; default [`tgtd::DEFAULT_ISCSI_OPTIONS`].
    pub fn tgtd_iscsi(mut self, options: &str) -> Self {
        self.tgtd_iscsi = options.to_owned();
        self
    }

    /// Where the target addresses start; default [`Placement::AllOnFirst`].
    pub fn placement(mut self, placement: Placement) -> Self {
        self.placement = placement;
        self
    }

    /// Adds a management namespace `mgmt` at [`MANAGEMENT_ADDR`] on the host
    /// network (for a controller the agents can reach); default off.
    pub fn management(mut self, on: bool) -> Self {
        self.management = on;
        self
    }

    /// Gives every host, gateway and the management namespace an IPv6
    /// address too ([`node_addr6`], without duplicate address detection so it
    /// serves at once) and routes [`TARGET_NET6`] on-link from the hosts;
    /// default off (IPv6 disabled everywhere).
    pub fn ipv6(mut self, on: bool) -> Self {
        self.ipv6 = on;
        self
    }

    /// Pair mode: tgtd listens on [`DATA_PORT`] of every address (not on
    /// 3260, where sanlb's portal answers logins), and hosts route
    /// [`DATA_NET`] on-link; default off.
    pub fn pair_mode(mut self, on: bool) -> Self {
        self.pair_mode = on;
        self
    }

    /// Name prefix of namespaces and folders; default [`LAB_PREFIX`].
    /// Leftovers are only cleaned up for the prefix in use.
    pub fn prefix(mut self, prefix: &str) -> Self {
        self.prefix = prefix.to_owned();
        self
    }

    /// Cleans up leftovers of dead runs, then builds the lab. A failure
    /// part-way removes what was built.
    pub fn build(self) -> Result<Lab> {
        if !(1..=MAX_HOSTS).contains(&self.hosts) {
            bail!("hosts must be 1..={MAX_HOSTS}, not {}", self.hosts);
        }
        if !(1..=MAX_GATEWAYS).contains(&self.gateways) {
            bail!("gateways must be 1..={MAX_GATEWAYS}, not {}", self.gateways);
        }
        if self.targets > MAX_TARGETS {
            bail!("targets must be 0..={MAX_TARGETS}, not {}", self.targets);
        }
        if let Placement::Map(map) = &self.placement {
            if map.len() != self.targets {
                bail!(
                    "placement has {} entries for {} targets",
                    map.len(),
                    self.targets
                );
            }
            if let Some(g) = map.iter().find(|&&g| g >= self.gateways) {
                bail!("placement names gateway index {g} of {}", self.gateways);
            }
        }
        if self.disk_size < 1 << 20 || !self.disk_size.is_multiple_of(4096) {
            bail!("disk size must be a multiple of 4096 of at least 1 MiB");
        }
        cleanup_leftovers(&self.prefix)?;
        Lab::build(self)
    }
}

/// A host (initiator) namespace.
#[derive(Debug)]
pub struct Host {
    /// `h1`, `h2`, ..
    pub name: String,
    /// Its namespace.
    pub ns: Netns,
    /// Its address on the host network.
    pub addr: Ipv4Addr,
    /// Its IPv6 address in an IPv6 lab ([`LabBuilder::ipv6`]).
    pub addr6: Option<Ipv6Addr>,
    /// The MAC of its `eth0`.
    pub mac: String,
    /// The initiator IQN it should use (`IQN_PREFIX:h1`).
    pub initiator: String,
}

/// A gateway namespace with its tgtd (when the lab has targets).
#[derive(Debug)]
pub struct Gateway {
    /// `gw1`, `gw2`, ..
    pub name: String,
    /// Its namespace.
    pub ns: Netns,
    /// Its own address on the host network.
    pub addr: Ipv4Addr,
    /// Its own IPv6 address in an IPv6 lab ([`LabBuilder::ipv6`]).
    pub addr6: Option<Ipv6Addr>,
    /// The MAC of its `eth0`.
    pub mac: String,
    /// Its tgtd (stop or kill it to fail the gateway's storage side);
    /// `None` in a lab without targets.
    pub tgtd: Option<Tgtd>,
    /// The pin folder for an agent on this gateway
    /// (`PIN_ROOT/LAB_ID/NAME`; not created by the lab).
    pub pin_dir: PathBuf,
}

/// A storage entity: one iSCSI target with one LUN on a shared backing file.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Target {
    /// `t1`, `t2`, ..
    pub name: String,
    /// Its address (owned by one gateway at a time).
    pub addr: Ipv4Addr,
    /// Its IQN.
    pub iqn: String,
    /// What every gateway's tgtd exports for it.
    pub spec: TargetSpec,
    /// Size of the LUN in bytes.
    pub size: u64,
}

impl Target {
    /// `iscsi://ADDR/IQN/1`: the libiscsi URL of its LUN.
    pub fn url(&self) -> String {
        format!("iscsi://{}/{}/1", self.addr, self.iqn)
    }
}

/// The management namespace (see [`LabBuilder::management`]).
#[derive(Debug)]
pub struct Management {
    /// Its namespace.
    pub ns: Netns,
    /// Its address, [`MANAGEMENT_ADDR`].
    pub addr: Ipv4Addr,
    /// Its IPv6 address in an IPv6 lab ([`LabBuilder::ipv6`]).
    pub addr6: Option<Ipv6Addr>,
}

/// A running lab; see the module docs. Dropping it removes everything.
#[derive(Debug)]
pub struct Lab {
    id: String,
    dir: PathBuf,
    pin_root: PathBuf,
    hosts: Vec<Host>,
    gateways: Vec<Gateway>,
    targets: Vec<Target>,
    management: Option<Management>,
    bridge: Option<Netns>,
}

impl Lab {
    /// A builder with 1 host, 2 gateways, 1 target.
    pub fn builder() -> LabBuilder {
        LabBuilder::default()
    }

    fn build(cfg: LabBuilder) -> Result<Lab> {
        let id = netns::unique_name(&cfg.prefix);
        let dir = std::env::temp_dir().join(&cfg.prefix).join(&id);
        fs::create_dir_all(dir.join("logs"))
            .with_context(|| format!("creating {}", dir.display()))?;
        let bridge = Netns::create(format!("{id}-san"))?;
        // The guard from here: an error below drops it and cleans up.
        let mut lab = Lab {
            pin_root: PathBuf::from(PIN_ROOT).join(&id),
            id,
            dir,
            hosts: Vec::new(),
            gateways: Vec::new(),
            targets: Vec::new(),
            management: None,
            bridge: Some(bridge),
        };
        // No multicast snooping: without a querier it could hold back the
        // multicast of neighbour discovery.
        lab.bridge().ip(&[
            "link",
            "add",
            BRIDGE,
            "type",
            "bridge",
            "stp_state",
            "0",
            "forward_delay",
            "0",
            "mcast_snooping",
            "0",
        ])?;
        lab.bridge().ip(&["link", "set", BRIDGE, "up"])?;

        for t in 0..cfg.targets {
            let name = format!("t{}", t + 1);
            let backing = lab.dir.join(format!("{name}.img"));
            let f = fs::File::create(&backing)
                .with_context(|| format!("creating {}", backing.display()))?;
            f.set_len(cfg.disk_size)
                .with_context(|| format!("sizing {}", backing.display()))?;
            let iqn = format!("{IQN_PREFIX}:{name}");
            lab.targets.push(Target {
                spec: TargetSpec {
                    tid: t as u32 + 1,
                    iqn: iqn.clone(),
                    backing,
                    scsi_id: format!("sanlb-{name}"),
                    scsi_sn: format!("SANLB{:04}", t + 1),
                    product_id: name.clone(),
                },
                name,
                addr: target_addr(t),
                iqn,
                size: cfg.disk_size,
            });
        }

        for h in 0..cfg.hosts {
            let name = format!("h{}", h + 1);
            let addr = host_addr(h);
            let ns = Netns::create(format!("{}-{name}", lab.id))?;
            let mac = mac(addr.octets()[3], 0);
            let addr6 = lab.attach(&ns, &name, addr, &mac, cfg.ipv6)?;
            let (net, len) = TARGET_NET;
            ns.ip(&["route", "add", &format!("{net}/{len}"), "dev", NIC])?;
            if cfg.pair_mode {
                let (net, len) = DATA_NET;
                ns.ip(&["route", "add", &format!("{net}/{len}"), "dev", NIC])?;
            }
            if cfg.ipv6 {
                let (net, len) = TARGET_NET6;
                ns.ip(&["-6", "route", "add", &format!("{net}/{len}"), "dev", NIC])?;
            }
            lab.hosts.push(Host {
                initiator: format!("{IQN_PREFIX}:{name}"),
                name,
                ns,
                addr,
                addr6,
                mac,
            });
        }

        // Control ports for this lab's tgtd (tgtd takes 0..=32767): spread
        // by pid and lab, skipping any a tgtd of another lab holds.
        let mut port = 1024 + ((std::process::id() as usize * 37 + lab.seq() * 101) % 30000) as u16;
        let tgtd_iscsi = if cfg.pair_mode {
            format!("{},portal=0.0.0.0:{DATA_PORT}", cfg.tgtd_iscsi)
        } else {
            cfg.tgtd_iscsi.clone()
        };
        for g in 0..cfg.gateways {
            let name = format!("gw{}", g + 1);
            let addr = gateway_addr(g);
            let ns = Netns::create(format!("{}-{name}", lab.id))?;
            ns.sysctl(&[
                ("net.ipv4.ip_forward", "0"),
                ("net.ipv4.conf.all.rp_filter", "0"),
            ])?;
            let mac = mac(addr.octets()[3], 0);
            let addr6 = lab.attach(&ns, &name, addr, &mac, cfg.ipv6)?;
            let tgtd = if lab.targets.is_empty() {
                None
            } else {
                let tgtd = Tgtd::start(&ns, port, &tgtd_iscsi, &lab.log_dir())?;
                port = tgtd.control_port() + 1;
                // Recorded for the leftover cleanup of a killed run.
                append_line(
                    &lab.dir.join("tgtd-ports"),
                    &tgtd.control_port().to_string(),
                )?;
                for t in &lab.targets {
                    tgtd.add_target(&t.spec)
                        .with_context(|| format!("exporting {} on {name}", t.name))?;
                }
                Some(tgtd)
            };
            lab.gateways.push(Gateway {
                pin_dir: lab.pin_root.join(&name),
                name,
                ns,
                addr,
                addr6,
                mac,
                tgtd,
            });
        }

        if cfg.management {
            let ns = Netns::create(format!("{}-mgmt", lab.id))?;
            let addr6 = lab.attach(
                &ns,
                "mgmt",
                MANAGEMENT_ADDR,
                &mac(MANAGEMENT_ADDR.octets()[3], 0),
                cfg.ipv6,
            )?;
            lab.management = Some(Management {
                ns,
                addr: MANAGEMENT_ADDR,
                addr6,
            });
        }

        let initial: Vec<Option<usize>> = match &cfg.placement {
            Placement::AllOnFirst => vec![Some(0); cfg.targets],
            Placement::Map(map) => map.iter().copied().map(Some).collect(),
            Placement::Unassigned => vec![None; cfg.targets],
        };
        for (t, g) in initial.into_iter().enumerate() {
            if let Some(g) = g {
                let gw = lab.gateways[g].name.clone();
                lab.add_address(lab.targets[t].addr, &gw, true)?;
            }
        }
        Ok(lab)
    }

    fn seq(&self) -> usize {
        self.id
            .rsplit('-')
            .next()
            .and_then(|s| s.parse().ok())
            .unwrap_or(0)
    }

    /// Joins `ns` to the bridge: `eth0` (MAC `mac`, `addr`/24, and with
    /// `ipv6` its [`node_addr6`]/64, returned) in `ns`, its peer `port` on the
    /// bridge.
    fn attach(
        &self,
        ns: &Netns,
        port: &str,
        addr: Ipv4Addr,
        mac: &str,
        ipv6: bool,
    ) -> Result<Option<Ipv6Addr>> {
        if ipv6 {
            // Before eth0 exists, so that it inherits the defaults.
            ns.enable_ipv6()?;
        }
        let last = addr.octets()[3];
        netns::veth(ns, NIC, mac, self.bridge(), port, &self::mac(last, 1))?;
        self.bridge().ip(&["link", "set", port, "master", BRIDGE])?;
        ns.ip(&["addr", "add", &format!("{addr}/{}", HOST_NET.1), "dev", NIC])?;
        if !ipv6 {
            return Ok(None);
        }
        let addr6 = node_addr6(addr);
        ns.ip(&[
            "addr",
            "add",
            &format!("{addr6}/{}", HOST_NET6.1),
            "dev",
            NIC,
            "nodad",
        ])?;
        Ok(Some(addr6))
    }

    /// The lab's id, `PREFIX-PID-SEQ`; namespaces are `ID-h1`, `ID-gw1`,
    /// `ID-san`, `ID-mgmt`.
    pub fn id(&self) -> &str {
        &self.id
    }

    /// The lab's temporary folder (backing files, logs); removed on drop.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Where processes started through the lab log (`DIR/logs`).
    pub fn log_dir(&self) -> PathBuf {
        self.dir.join("logs")
    }

    /// `PIN_ROOT/ID`: parent of the gateways' pin folders; removed on drop.
    pub fn pin_root(&self) -> &Path {
        &self.pin_root
    }

    /// The bridge namespace (holds `br0` and the bridge ends of the veths,
    /// named after the node: `h1`, `gw1`, `mgmt`).
    pub fn bridge(&self) -> &Netns {
        self.bridge
            .as_ref()
            .expect("the bridge lives as long as the lab")
    }

    /// The hosts, `h1` first.
    pub fn hosts(&self) -> &[Host] {
        &self.hosts
    }

    /// The gateways, `gw1` first.
    pub fn gateways(&self) -> &[Gateway] {
        &self.gateways
    }

    /// The targets, `t1` first.
    pub fn targets(&self) -> &[Target] {
        &self.targets
    }

    /// The management namespace, if built with one.
    pub fn management(&self) -> Option<&Management> {
        self.management.as_ref()
    }

    /// The host called `name`.
    pub fn host(&self, name: &str) -> Result<&Host> {
        self.hosts
            .iter()
            .find(|h| h.name == name)
            .with_context(|| format!("no host {name} in the lab"))
    }

    /// The gateway called `name`.
    pub fn gateway(&self, name: &str) -> Result<&Gateway> {
        self.gateways
            .iter()
            .find(|g| g.name == name)
            .with_context(|| format!("no gateway {name} in the lab"))
    }

    /// The gateway called `name`, mutably (to stop its tgtd, say).
    pub fn gateway_mut(&mut self, name: &str) -> Result<&mut Gateway> {
        self.gateways
            .iter_mut()
            .find(|g| g.name == name)
            .with_context(|| format!("no gateway {name} in the lab"))
    }

    /// The target whose address is `addr`.
    pub fn target(&self, addr: Ipv4Addr) -> Result<&Target> {
        self.targets
            .iter()
            .find(|t| t.addr == addr)
            .with_context(|| format!("no target at {addr} in the lab"))
    }

    /// Starts `cmd` as a [`Process`] logging to [`Lab::log_dir`] (build `cmd`
    /// with [`Netns::command`] to run it in a namespace).
    pub fn spawn(&self, name: &str, cmd: Command) -> Result<Process> {
        Process::spawn(name, cmd, &self.log_dir())
    }

    /// Adds `addr`/32 on gateway `gw`'s `eth0`, announcing it with
    /// [`Lab::announce`] when `announce`.
    pub fn add_address(&self, addr: Ipv4Addr, gw: &str, announce: bool) -> Result<()> {
        let g = self.gateway(gw)?;
        g.ns.ip(&["addr", "add", &format!("{addr}/32"), "dev", NIC])
            .with_context(|| format!("adding {addr} on {gw}"))?;
        if announce {
            self.announce(addr, gw)?;
        }
        Ok(())
    }

    /// Removes `addr`/32 from gateway `gw`'s `eth0`.
    pub fn remove_address(&self, addr: Ipv4Addr, gw: &str) -> Result<()> {
        let g = self.gateway(gw)?;
        g.ns.ip(&["addr", "del", &format!("{addr}/32"), "dev", NIC])
            .with_context(|| format!("removing {addr} from {gw}"))
            .map(drop)
    }

    /// Sends 3 gratuitous ARPs (unsolicited requests) for `addr` from `gw`,
    /// 200 ms apart like the agents' defaults; returns after the last
    /// (about 0.5 s). A host with an entry for `addr` switches to `gw` on
    /// the first (Linux accepts a gratuitous request even with
    /// `arp_accept=0` and within `locktime`); the others cover a lost frame.
    pub fn announce(&self, addr: Ipv4Addr, gw: &str) -> Result<()> {
        let g = self.gateway(gw)?;
        let mut cmd = g.ns.command("arping");
        let a = addr.to_string();
        // Habets' arping (Debian `arping`) needs -S as well as -U for a
        // gratuitous ARP: without it the sender is the NIC's primary address.
        cmd.args([
            "-q", "-U", "-S", &a, "-c", "3", "-W", "0.2", "-w", "0.5", "-i", NIC, &a,
        ]);
        let out = proc::output_timeout(&mut cmd, proc::COMMAND_TIMEOUT)?;
        // Exit 1 only says that nobody answered, which nobody does to an
        // unsolicited ARP.
        match out.status.code() {
            Some(0 | 1) => Ok(()),
            _ => bail!(
                "announcing {addr} from {gw} failed ({}): {}",
                proc::describe(out.status),
                String::from_utf8_lossy(&out.stderr).trim()
            ),
        }
    }

    /// Moves `addr` the way lab.sh does, break before make: removed from
    /// `from`, added on `to`, announced from `to` when `announce`.
    pub fn move_address(&self, addr: Ipv4Addr, from: &str, to: &str, announce: bool) -> Result<()> {
        self.remove_address(addr, from)?;
        self.add_address(addr, to, announce)
    }

    /// The gateways that hold `addr`, in gateway order.
    pub fn owners(&self, addr: Ipv4Addr) -> Result<Vec<String>> {
        let mut out = Vec::new();
        for g in &self.gateways {
            if g.ns.ipv4_addresses(NIC)?.contains(&addr) {
                out.push(g.name.clone());
            }
        }
        Ok(out)
    }

    /// The gateway that holds `addr`, or `None`; an error if several held
    /// it at one instant ([`Lab::holders`]). A move seen half-way is read
    /// again (five times at most).
    pub fn owner(&self, addr: Ipv4Addr) -> Result<Option<String>> {
        for _ in 0..5 {
            let (forward, backward) = self.two_passes()?;
            if let Some(gws) = held_at_once(&forward, &backward).get(&addr) {
                let names: Vec<&str> = gws.iter().map(|&i| &*self.gateways[i].name).collect();
                bail!(
                    "{addr} is on several gateways at once: {}",
                    names.join(", ")
                );
            }
            let mut owners = (0..self.gateways.len()).filter(|&i| backward[i].contains(&addr));
            match (owners.next(), owners.next()) {
                (None, _) => return Ok(None),
                (Some(i), None) => return Ok(Some(self.gateways[i].name.clone())),
                _ => std::thread::sleep(Duration::from_millis(20)),
            }
        }
        bail!("{addr} kept moving between gateways over five reads")
    }

    /// Which gateways hold each target address (empty when none does), and
    /// which addresses two of them held at one instant ([`held_at_once`]:
    /// every gateway read twice, forward then backward). One pass cannot
    /// tell a clean move between two of its reads from a second owner.
    pub fn holders(&self) -> Result<Holders> {
        let (forward, backward) = self.two_passes()?;
        let name = |i: usize| self.gateways[i].name.clone();
        let targets: BTreeSet<Ipv4Addr> = self.targets.iter().map(|t| t.addr).collect();
        Ok(Holders {
            now: self
                .targets
                .iter()
                .map(|t| {
                    let on = (0..self.gateways.len()).filter(|&i| backward[i].contains(&t.addr));
                    (t.addr, on.map(name).collect())
                })
                .collect(),
            at_once: held_at_once(&forward, &backward)
                .into_iter()
                .filter(|(a, _)| targets.contains(a))
                .map(|(a, gws)| (a, gws.into_iter().map(name).collect()))
                .collect(),
        })
    }

    /// Every gateway's addresses read in gateway order, then in reverse.
    fn two_passes(&self) -> Result<(Pass, Pass)> {
        let mut forward = Vec::with_capacity(self.gateways.len());
        for g in &self.gateways {
            forward.push(g.ns.ipv4_addresses(NIC)?.into_iter().collect());
        }
        let mut backward = vec![BTreeSet::new(); self.gateways.len()];
        for (i, g) in self.gateways.iter().enumerate().rev() {
            backward[i] = g.ns.ipv4_addresses(NIC)?.into_iter().collect();
        }
        Ok((forward, backward))
    }

    /// Which gateways hold each target address (empty when none does), in
    /// one pass: see [`Lab::holders`] to tell two owners from a move.
    pub fn placement(&self) -> Result<BTreeMap<Ipv4Addr, Vec<String>>> {
        let mut map: BTreeMap<Ipv4Addr, Vec<String>> =
            self.targets.iter().map(|t| (t.addr, Vec::new())).collect();
        for g in &self.gateways {
            for a in g.ns.ipv4_addresses(NIC)? {
                if let Some(owners) = map.get_mut(&a) {
                    owners.push(g.name.clone());
                }
            }
        }
        Ok(map)
    }

    /// The `eth0` counters of every gateway, in gateway order (`rx` = from
    /// the hosts).
    pub fn gateway_link_stats(&self) -> Result<Vec<(String, LinkStats)>> {
        self.gateways
            .iter()
            .map(|g| Ok((g.name.clone(), g.ns.link_stats(NIC)?)))
            .collect()
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        // tgtd first, cleanly, while its namespace is there.
        for g in &mut self.gateways {
            let Some(tgtd) = &mut g.tgtd else { continue };
            if let Err(e) = tgtd.stop() {
                eprintln!("lab: stopping tgtd on {}: {e:#}", g.name);
            }
        }
        // Then whatever else runs in the lab (agents, load generators, a
        // controller), before any namespace goes.
        let all = self
            .hosts
            .iter()
            .map(|h| &h.ns)
            .chain(self.gateways.iter().map(|g| &g.ns))
            .chain(self.management.iter().map(|m| &m.ns))
            .chain(self.bridge.iter());
        for ns in all {
            if let Err(e) = ns.kill_all(Duration::from_secs(3)) {
                eprintln!("lab: {e:#}");
            }
        }
        // Dropping the guards deletes the namespaces.
        self.hosts.clear();
        self.gateways.clear();
        self.management = None;
        self.bridge = None;
        remove_tree(&self.pin_root);
        remove_tree(&self.dir);
        // The parents too once no lab uses them (this fails while one does).
        for dir in [&self.pin_root, &self.dir] {
            if let Some(parent) = dir.parent() {
                let _ = fs::remove_dir(parent);
            }
        }
    }
}

/// Every gateway's addresses (by gateway index) from one pass.
type Pass = Vec<BTreeSet<Ipv4Addr>>;

/// What [`Lab::holders`] saw.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Holders {
    /// The gateways holding each target address at their second read (both
    /// ends of a move that happened between two of those reads).
    pub now: BTreeMap<Ipv4Addr, Vec<String>>,
    /// The target addresses two gateways or more held at one instant, with
    /// those gateways.
    pub at_once: BTreeMap<Ipv4Addr, Vec<String>>,
}

/// The addresses that two gateways held at one instant, with the gateways'
/// indices, from two passes: `forward[i]` read gateway `i` in the order
/// 0, 1, .., k-1, then `backward[i]` in the order k-1, .., 0.
///
/// Gateways `i < j` are read at `a_i < a_j < b_j < b_i`. An address `i`
/// holds at `a_i` and at `b_i` it held throughout (an owner does not release
/// an address and take it back within two passes, tens of milliseconds: a
/// move back is another rebalance, an interval later, or an abandoned move,
/// a lease later), so `j` holding it at `a_j` or `b_j` is a second owner.
/// Anything else may be a move between two reads (the old owner read before
/// it released, the new one after it acquired), which is no overlap. An
/// overlap shorter than the reads is not seen.
pub fn held_at_once<A: Ord + Copy>(
    forward: &[BTreeSet<A>],
    backward: &[BTreeSet<A>],
) -> BTreeMap<A, BTreeSet<usize>> {
    let mut out: BTreeMap<A, BTreeSet<usize>> = BTreeMap::new();
    for (i, (fi, bi)) in forward.iter().zip(backward).enumerate() {
        for a in fi.intersection(bi) {
            for (j, (fj, bj)) in forward.iter().zip(backward).enumerate().skip(i + 1) {
                if fj.contains(a) || bj.contains(a) {
                    out.entry(*a).or_default().extend([i, j]);
                }
            }
        }
    }
    out
}

fn remove_tree(path: &Path) {
    match fs::remove_dir_all(path) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => eprintln!("lab: removing {}: {e}", path.display()),
    }
}

fn append_line(path: &Path, line: &str) -> Result<()> {
    use std::io::Write as _;
    let mut f = fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .with_context(|| format!("opening {}", path.display()))?;
    writeln!(f, "{line}").with_context(|| format!("writing {}", path.display()))
}

/// What [`cleanup_leftovers`] removed.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Leftovers {
    /// Namespaces deleted.
    pub namespaces: Vec<String>,
    /// Processes killed inside them.
    pub processes: usize,
    /// Folders removed (temporary folders and pin folders).
    pub folders: Vec<PathBuf>,
}

/// The pid in a name `PREFIX-PID-...`, if the name has that form.
fn owner_pid(prefix: &str, name: &str) -> Option<u32> {
    name.strip_prefix(prefix)?
        .strip_prefix('-')?
        .split('-')
        .next()?
        .parse()
        .ok()
}

fn is_dead(pid: u32) -> bool {
    pid != std::process::id() && !Path::new(&format!("/proc/{pid}")).exists()
}

/// Removes what labs named `PREFIX-PID-..` left behind when PID is no longer
/// running (a killed run): processes in and the namespaces themselves, tgtd
/// control sockets, temporary folders, pin folders. Labs of live processes
/// are left alone. Called by [`LabBuilder::build`].
pub fn cleanup_leftovers(prefix: &str) -> Result<Leftovers> {
    let mut done = Leftovers::default();
    for name in netns::list()? {
        if !owner_pid(prefix, &name).is_some_and(is_dead) {
            continue;
        }
        done.processes += netns::pids_in(&name)?.len();
        netns::kill_all_in(&name, Duration::from_secs(1))?;
        netns::delete(&name)?;
        done.namespaces.push(name);
    }
    let roots = [
        std::env::temp_dir().join(prefix),
        PathBuf::from("/sys/fs/bpf").join(prefix),
    ];
    for root in roots {
        let Ok(entries) = fs::read_dir(&root) else {
            continue;
        };
        for entry in entries.flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            if !owner_pid(prefix, &name).is_some_and(is_dead) {
                continue;
            }
            let path = entry.path();
            if let Ok(ports) = fs::read_to_string(path.join("tgtd-ports")) {
                for port in ports.lines().filter_map(|p| p.trim().parse().ok()) {
                    tgtd::remove_control_files(port);
                }
            }
            fs::remove_dir_all(&path).with_context(|| format!("removing {}", path.display()))?;
            done.folders.push(path);
        }
    }
    if done != Leftovers::default() {
        eprintln!(
            "lab: removed leftovers of a killed run: {} namespaces, {} processes, {} folders",
            done.namespaces.len(),
            done.processes,
            done.folders.len()
        );
    }
    Ok(done)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sets(v: &[&[u8]]) -> Vec<BTreeSet<u8>> {
        v.iter().map(|s| s.iter().copied().collect()).collect()
    }

    #[test]
    fn a_move_between_two_reads_is_no_overlap() {
        // 1 moves from gateway 0 to gateway 2 after gateway 0's first read
        // and before gateway 2's: each pass alone shows it twice at most
        // once, and gateway 0 lost it by its second read.
        let fwd = sets(&[&[1, 7], &[], &[1]]);
        let bwd = sets(&[&[7], &[], &[1]]);
        assert!(held_at_once(&fwd, &bwd).is_empty());
        // The other way round: 2 read before it acquired, 0 after it left.
        let fwd = sets(&[&[1], &[], &[]]);
        let bwd = sets(&[&[], &[], &[1]]);
        assert!(held_at_once(&fwd, &bwd).is_empty());
    }

    #[test]
    fn an_outer_owner_held_throughout_overlaps_any_inner_sighting() {
        let fwd = sets(&[&[1], &[], &[1]]);
        let bwd = sets(&[&[1], &[], &[]]);
        assert_eq!(
            held_at_once(&fwd, &bwd),
            BTreeMap::from([(1, BTreeSet::from([0, 2]))])
        );
        // Three owners, two addresses, each with its own pair.
        let fwd = sets(&[&[1, 2], &[1, 2], &[1]]);
        let bwd = sets(&[&[1, 2], &[1], &[1]]);
        assert_eq!(
            held_at_once(&fwd, &bwd),
            BTreeMap::from([(1, BTreeSet::from([0, 1, 2])), (2, BTreeSet::from([0, 1]))])
        );
    }

    #[test]
    fn an_inner_owner_throughout_and_an_outer_once_is_unproven() {
        // Gateway 2 (read inside gateway 0's two reads) held it both times;
        // gateway 0 only before: it may have released before 2 acquired.
        let fwd = sets(&[&[1], &[], &[1]]);
        let bwd = sets(&[&[], &[], &[1]]);
        assert!(held_at_once(&fwd, &bwd).is_empty());
    }

    #[test]
    fn addresses_stay_in_the_lab_ranges() {
        assert_eq!(host_addr(0), Ipv4Addr::new(198, 18, 0, 101));
        assert_eq!(host_addr(MAX_HOSTS - 1), Ipv4Addr::new(198, 18, 0, 200));
        assert_eq!(
            gateway_addr(MAX_GATEWAYS - 1),
            Ipv4Addr::new(198, 18, 0, 99)
        );
        assert_eq!(target_addr(MAX_TARGETS - 1), Ipv4Addr::new(198, 18, 1, 250));
        assert_eq!(
            node_addr6(host_addr(0)),
            "2001:2::65".parse::<Ipv6Addr>().unwrap()
        );
        assert_eq!(
            node_addr6(gateway_addr(0)),
            "2001:2::1".parse::<Ipv6Addr>().unwrap()
        );
    }

    #[test]
    fn owner_pid_parses_lab_names() {
        assert_eq!(owner_pid("sanlb-lab", "sanlb-lab-123-4-gw1"), Some(123));
        assert_eq!(owner_pid("sanlb-lab", "sanlb-lab-123-4"), Some(123));
        assert_eq!(owner_pid("sanlb-lab", "sanlb-labx-123-4"), None);
        assert_eq!(owner_pid("sanlb-lab", "other-123"), None);
        assert_eq!(owner_pid("sanlb-lab", "sanlb-lab-h1"), None);
    }

    #[test]
    fn the_builder_rejects_bad_shapes() {
        let err = Lab::builder().hosts(0).build().unwrap_err();
        assert!(err.to_string().contains("hosts"), "{err:#}");
        let err = Lab::builder()
            .targets(2)
            .placement(Placement::Map(vec![0]))
            .build()
            .unwrap_err();
        assert!(err.to_string().contains("placement"), "{err:#}");
        let err = Lab::builder()
            .placement(Placement::Map(vec![5]))
            .build()
            .unwrap_err();
        assert!(err.to_string().contains("gateway index 5"), "{err:#}");
    }
}
