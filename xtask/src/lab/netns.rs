//! Network namespaces behind a guard, veth pairs and link counters.

use std::{
    net::Ipv4Addr,
    path::PathBuf,
    process::Command,
    sync::atomic::{AtomicU32, Ordering},
    thread,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail};
use serde::Deserialize;

use super::proc;

/// Where `ip netns` keeps its namespaces.
pub const NETNS_DIR: &str = "/run/netns";

static SEQ: AtomicU32 = AtomicU32::new(0);

/// `PREFIX-PID-SEQ`: unique among the live processes of this machine, and
/// [`super::cleanup_leftovers`] can tell from the pid whether its owner is
/// gone.
pub fn unique_name(prefix: &str) -> String {
    format!(
        "{prefix}-{}-{}",
        std::process::id(),
        SEQ.fetch_add(1, Ordering::Relaxed)
    )
}

/// A network namespace that is deleted on drop, after every process still
/// inside it has been killed (SIGTERM, then SIGKILL).
///
/// A new namespace has `lo` up, IPv6 disabled and `rp_filter` 0 (also the
/// defaults for interfaces created later).
#[derive(Debug)]
pub struct Netns {
    name: String,
}

impl Netns {
    /// Creates the namespace `name`; fails if it exists.
    pub fn create(name: impl Into<String>) -> Result<Netns> {
        let name = name.into();
        proc::run(Command::new("ip").args(["netns", "add", &name]))
            .with_context(|| format!("creating network namespace {name}"))?;
        // From here on the guard deletes it again if the setup fails.
        let ns = Netns { name };
        ns.ip(&["link", "set", "lo", "up"])?;
        ns.sysctl(&[
            ("net.ipv6.conf.all.disable_ipv6", "1"),
            ("net.ipv6.conf.default.disable_ipv6", "1"),
            ("net.ipv4.conf.all.rp_filter", "0"),
            ("net.ipv4.conf.default.rp_filter", "0"),
        ])?;
        Ok(ns)
    }

    /// Turns IPv6 on for the interfaces created from now on, without
    /// duplicate address detection (an address serves at once) and without
    /// forwarding.
    pub fn enable_ipv6(&self) -> Result<()> {
        self.sysctl(&[
            ("net.ipv6.conf.all.disable_ipv6", "0"),
            ("net.ipv6.conf.default.disable_ipv6", "0"),
            ("net.ipv6.conf.all.accept_dad", "0"),
            ("net.ipv6.conf.default.accept_dad", "0"),
            ("net.ipv6.conf.all.forwarding", "0"),
        ])
    }

    /// Creates a namespace named by [`unique_name`].
    pub fn unique(prefix: &str) -> Result<Netns> {
        Netns::create(unique_name(prefix))
    }

    /// The namespace's name (as `ip netns` knows it).
    pub fn name(&self) -> &str {
        &self.name
    }

    /// `/run/netns/NAME`.
    pub fn path(&self) -> PathBuf {
        PathBuf::from(NETNS_DIR).join(&self.name)
    }

    /// A command that runs `program` inside the namespace:
    /// `nsenter --net=/run/netns/NAME -- PROGRAM`. Unlike `ip netns exec` it
    /// leaves the mounts alone, so bpffs stays visible to BPF loaders. Only
    /// the network namespace changes: the file system is shared.
    pub fn command(&self, program: &str) -> Command {
        let mut cmd = Command::new("nsenter");
        cmd.arg(format!("--net={}", self.path().display()))
            .arg("--")
            .arg(program);
        cmd
    }

    /// Runs `program args` inside the namespace under
    /// [`proc::COMMAND_TIMEOUT`]; returns stdout, fails unless it exits 0.
    pub fn exec(&self, program: &str, args: &[&str]) -> Result<String> {
        proc::run(self.command(program).args(args))
    }

    /// `ip -n NAME ARGS`.
    pub fn ip(&self, args: &[&str]) -> Result<String> {
        proc::run(Command::new("ip").arg("-n").arg(&self.name).args(args))
    }

    /// Sets sysctls inside the namespace (`net.*` keys are per namespace).
    pub fn sysctl(&self, settings: &[(&str, &str)]) -> Result<()> {
        let args: Vec<String> = settings.iter().map(|(k, v)| format!("{k}={v}")).collect();
        let mut cmd = self.command("sysctl");
        cmd.arg("-qw").args(&args);
        proc::run(&mut cmd)
            .with_context(|| format!("setting sysctls in {}", self.name))
            .map(drop)
    }

    /// The pids of the processes inside the namespace.
    pub fn pids(&self) -> Result<Vec<u32>> {
        pids_in(&self.name)
    }

    /// The byte and packet counters of `dev` (read with `ip -s -j link`
    /// inside the namespace: `/sys/class/net` shows the reader's namespace).
    pub fn link_stats(&self, dev: &str) -> Result<LinkStats> {
        let json = self.ip(&["-s", "-j", "link", "show", "dev", dev])?;
        parse_link_stats(&json).with_context(|| format!("link counters of {dev} in {}", self.name))
    }

    /// The IPv4 addresses on `dev`.
    pub fn ipv4_addresses(&self, dev: &str) -> Result<Vec<Ipv4Addr>> {
        let json = self.ip(&["-4", "-j", "addr", "show", "dev", dev])?;
        parse_addresses(&json).with_context(|| format!("addresses of {dev} in {}", self.name))
    }

    /// Kills every process inside the namespace: SIGTERM, then SIGKILL after
    /// `grace`.
    pub fn kill_all(&self, grace: Duration) -> Result<()> {
        kill_all_in(&self.name, grace)
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        if let Err(e) = kill_all_in(&self.name, Duration::from_secs(2)) {
            eprintln!("lab: {e:#}");
        }
        if let Err(e) = delete(&self.name) {
            eprintln!("lab: {e:#}");
        }
    }
}

/// `ip netns pids NAME`.
pub(crate) fn pids_in(name: &str) -> Result<Vec<u32>> {
    let out = proc::run(Command::new("ip").args(["netns", "pids", name]))?;
    Ok(out
        .split_whitespace()
        .filter_map(|p| p.parse().ok())
        .collect())
}

pub(crate) fn kill_all_in(name: &str, grace: Duration) -> Result<()> {
    let pids = pids_in(name)?;
    if pids.is_empty() {
        return Ok(());
    }
    for &pid in &pids {
        // SAFETY: kill has no memory preconditions.
        unsafe { libc::kill(pid as i32, libc::SIGTERM) };
    }
    let deadline = Instant::now() + grace;
    while Instant::now() < deadline {
        if pids_in(name)?.is_empty() {
            return Ok(());
        }
        thread::sleep(Duration::from_millis(20));
    }
    for pid in pids_in(name)? {
        // SAFETY: as above.
        unsafe { libc::kill(pid as i32, libc::SIGKILL) };
    }
    // A killed child of ours stays a zombie (and in the list) until its
    // Process guard reaps it, so only wait for the others to go.
    let deadline = Instant::now() + Duration::from_secs(2);
    while Instant::now() < deadline {
        let left: Vec<u32> = pids_in(name)?
            .into_iter()
            .filter(|&p| !is_zombie(p))
            .collect();
        if left.is_empty() {
            return Ok(());
        }
        thread::sleep(Duration::from_millis(20));
    }
    bail!("processes in {name} survived SIGKILL")
}

fn is_zombie(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .map(|s| {
            s.rsplit_once(')')
                .is_some_and(|(_, rest)| rest.trim_start().starts_with('Z'))
        })
        .unwrap_or(true)
}

pub(crate) fn delete(name: &str) -> Result<()> {
    proc::run(Command::new("ip").args(["netns", "del", name]))
        .with_context(|| format!("deleting network namespace {name}"))
        .map(drop)
}

/// The names of all network namespaces.
pub fn list() -> Result<Vec<String>> {
    let out = proc::run(Command::new("ip").args(["-j", "netns", "list"]))?;
    #[derive(Deserialize)]
    struct Entry {
        name: String,
    }
    // `ip -j netns list` prints nothing at all when there are none.
    if out.trim().is_empty() {
        return Ok(Vec::new());
    }
    let entries: Vec<Entry> = serde_json::from_str(&out).context("parsing ip -j netns list")?;
    Ok(entries.into_iter().map(|e| e.name).collect())
}

/// A veth pair from `a` (named `a_dev`, MAC `a_mac`) to `b`, created
/// directly inside the two namespaces (no name ever appears in the root
/// namespace), both ends up.
pub fn veth(
    a: &Netns,
    a_dev: &str,
    a_mac: &str,
    b: &Netns,
    b_dev: &str,
    b_mac: &str,
) -> Result<()> {
    proc::run(Command::new("ip").args([
        "link", "add", a_dev, "netns", &a.name, "address", a_mac, "type", "veth", "peer", "name",
        b_dev, "netns", &b.name, "address", b_mac,
    ]))
    .with_context(|| format!("creating veth {}/{a_dev} - {}/{b_dev}", a.name, b.name))?;
    a.ip(&["link", "set", a_dev, "up"])?;
    b.ip(&["link", "set", b_dev, "up"])?;
    Ok(())
}

/// A link's counters (`ip -s link`), from the point of view of the
/// namespace that holds it: `rx` is what arrived on it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
pub struct LinkStats {
    /// Bytes received (frame bytes without the FCS).
    pub rx_bytes: u64,
    /// Packets received.
    pub rx_packets: u64,
    /// Bytes sent.
    pub tx_bytes: u64,
    /// Packets sent.
    pub tx_packets: u64,
}

fn parse_link_stats(json: &str) -> Result<LinkStats> {
    #[derive(Deserialize)]
    struct Dir {
        bytes: u64,
        packets: u64,
    }
    #[derive(Deserialize)]
    struct Stats {
        rx: Dir,
        tx: Dir,
    }
    #[derive(Deserialize)]
    struct Link {
        stats64: Stats,
    }
    let links: Vec<Link> = serde_json::from_str(json)?;
    let Some(link) = links.into_iter().next() else {
        bail!("no such link");
    };
    Ok(LinkStats {
        rx_bytes: link.stats64.rx.bytes,
        rx_packets: link.stats64.rx.packets,
        tx_bytes: link.stats64.tx.bytes,
        tx_packets: link.stats64.tx.packets,
    })
}

fn parse_addresses(json: &str) -> Result<Vec<Ipv4Addr>> {
    #[derive(Deserialize)]
    struct AddrInfo {
        family: String,
        local: String,
    }
    #[derive(Deserialize)]
    struct Link {
        #[serde(default)]
        addr_info: Vec<AddrInfo>,
    }
    let links: Vec<Link> = serde_json::from_str(json)?;
    let mut out = Vec::new();
    for a in links.into_iter().flat_map(|l| l.addr_info) {
        if a.family == "inet" {
            out.push(
                a.local
                    .parse()
                    .with_context(|| format!("address {}", a.local))?,
            );
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_ip_link_stats() {
        let json = r#"[{"ifindex":2,"ifname":"eth0","stats64":{"rx":{"bytes":1234,"packets":5,
            "errors":0},"tx":{"bytes":99,"packets":2,"errors":0}}}]"#;
        assert_eq!(
            parse_link_stats(json).unwrap(),
            LinkStats {
                rx_bytes: 1234,
                rx_packets: 5,
                tx_bytes: 99,
                tx_packets: 2
            }
        );
        assert!(parse_link_stats("[]").is_err());
    }

    #[test]
    fn parses_ip_addr() {
        let json = r#"[{"ifindex":2,"ifname":"eth0","addr_info":[{"family":"inet",
            "local":"198.18.0.1","prefixlen":24},{"family":"inet","local":"198.18.1.1",
            "prefixlen":32}]}]"#;
        assert_eq!(
            parse_addresses(json).unwrap(),
            [Ipv4Addr::new(198, 18, 0, 1), Ipv4Addr::new(198, 18, 1, 1)]
        );
    }

    #[test]
    fn unique_names_differ_and_carry_the_pid() {
        let a = unique_name("p");
        let b = unique_name("p");
        assert_ne!(a, b);
        assert!(a.starts_with(&format!("p-{}-", std::process::id())));
    }
}
