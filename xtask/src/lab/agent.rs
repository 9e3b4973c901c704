//! `sanlb agent` on the lab's gateways, and what it counts.
//!
//! xtask never links the sanlb crate; it runs the binary (see
//! [`sanlb_binary`]) and reads `sanlb counters --json`.

use std::{
    net::IpAddr,
    path::{Path, PathBuf},
    process::Command,
    thread,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail};
use serde::Deserialize;

use super::{Gateway, Lab, NIC, Process, proc};

/// The sanlb binary: `$SANLB_BIN` if set, else `target/debug/sanlb` after
/// `cargo build -p sanlb` (quick when it is up to date).
pub fn sanlb_binary() -> Result<PathBuf> {
    if let Some(bin) = std::env::var_os("SANLB_BIN") {
        return Ok(PathBuf::from(bin));
    }
    let root = Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("xtask is inside the workspace");
    let mut cmd = proc::cargo();
    cmd.current_dir(root)
        .args(["build", "--quiet", "--package", "sanlb"]);
    // A first build compiles the eBPF programs too: minutes, not seconds.
    let out = proc::output_timeout(&mut cmd, Duration::from_secs(1800))?;
    if !out.status.success() {
        bail!(
            "cargo build -p sanlb failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    let target = match std::env::var_os("CARGO_TARGET_DIR") {
        Some(d) => PathBuf::from(d),
        None => root.join("target"),
    };
    Ok(target.join("debug/sanlb"))
}

/// One (initiator, target) row of `sanlb counters --json`: the fields the
/// lab uses.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
pub struct FlowCount {
    /// Initiator (host) address.
    pub initiator: IpAddr,
    /// Target address.
    pub target: IpAddr,
    /// iSCSI stream bytes (TCP payload) towards the target.
    pub to_target_bytes: u64,
    /// iSCSI stream bytes towards the initiator.
    pub to_initiator_bytes: u64,
    /// Frame bytes (Ethernet and up) towards the target.
    #[serde(default)]
    pub to_target_frame_bytes: u64,
    /// Frame bytes towards the initiator.
    #[serde(default)]
    pub to_initiator_frame_bytes: u64,
    /// Data the READ commands asked for.
    #[serde(default)]
    pub read_requested_bytes: u64,
    /// Data the WRITE commands asked for.
    #[serde(default)]
    pub write_requested_bytes: u64,
}

/// Starts `sanlb agent --iface eth0 --pin-dir GW.pin_dir EXTRA..` inside
/// gateway `gw` and waits (up to 20 s) until its maps can be read.
pub fn start(lab: &Lab, sanlb: &Path, gw: &Gateway, extra: &[String]) -> Result<Process> {
    let mut cmd = gw.ns.command(&sanlb.to_string_lossy());
    cmd.args(["agent", "--iface", NIC])
        .arg("--pin-dir")
        .arg(&gw.pin_dir)
        .args(extra);
    if std::env::var_os("RUST_LOG").is_none() {
        cmd.env("RUST_LOG", "info");
    }
    let mut agent = lab.spawn(&format!("agent-{}", gw.name), cmd)?;
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        if let Some(s) = agent.try_status()? {
            bail!(
                "sanlb agent on {} exited ({}): {}",
                gw.name,
                proc::describe(s),
                agent.stderr().trim()
            );
        }
        if counters(sanlb, gw).is_ok() {
            return Ok(agent);
        }
        if Instant::now() > deadline {
            bail!(
                "the agent on {} pinned no maps in {}",
                gw.name,
                gw.pin_dir.display()
            );
        }
        thread::sleep(Duration::from_millis(100));
    }
}

/// `sanlb counters --json` of gateway `gw`'s agent (read from its pins).
pub fn counters(sanlb: &Path, gw: &Gateway) -> Result<Vec<FlowCount>> {
    let mut cmd = Command::new(sanlb);
    cmd.args(["counters", "--iface", NIC, "--json"])
        .arg("--pin-dir")
        .arg(&gw.pin_dir);
    let out = proc::run(&mut cmd)?;
    serde_json::from_str(&out).with_context(|| format!("parsing the counters of {}", gw.name))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_counters_json() {
        let json = r#"[{"initiator":"198.18.0.101","target":"198.18.1.1",
            "to_target_bytes":10,"to_initiator_bytes":20,"to_target_packets":1,
            "to_initiator_packets":2,"read_requested_bytes":16384,
            "write_requested_bytes":0}]"#;
        let flows: Vec<FlowCount> = serde_json::from_str(json).unwrap();
        assert_eq!(flows[0].to_initiator_bytes, 20);
        assert_eq!(flows[0].read_requested_bytes, 16384);
        assert_eq!(flows[0].target, "198.18.1.1".parse::<IpAddr>().unwrap());
    }
}
