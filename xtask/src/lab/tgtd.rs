//! One `tgtd` (the Linux SCSI target daemon) per gateway namespace.
//!
//! Facts this relies on (see `shared/LAB-NOTES.md`): two tgtd clash on
//! `/run/tgtd/socket.0.lock` because namespaces do not separate the file
//! system, so each gets a control port of its own (`tgtd -C N`, `tgtadm -C
//! N`); tgtd ignores SIGTERM, so it is stopped with `tgtadm --op delete
//! --mode system --force` and SIGKILLed if that does not do; NOP-Ins every
//! 2 s drop a session whose address moved away after about 7 s.

use std::{
    path::{Path, PathBuf},
    process::Command,
    thread,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail};

use super::{
    netns::Netns,
    proc::{self, Process},
};

/// tgtd's iSCSI options: target-side NOP-In keepalive, so that a session
/// whose address moved away is reaped about 7 s later rather than minutes.
pub const DEFAULT_ISCSI_OPTIONS: &str = "nop_interval=2,nop_count=3";

/// Where tgtd keeps its control sockets (`socket.N`, `socket.N.lock`).
pub const TGTD_RUN_DIR: &str = "/run/tgtd";

/// A storage entity exported as an iSCSI target with one LUN.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TargetSpec {
    /// Target id in tgtd (1-based).
    pub tid: u32,
    /// Target IQN.
    pub iqn: String,
    /// Backing file of LUN 1.
    pub backing: PathBuf,
    /// SCSI identity, the same on every gateway so that every gateway
    /// presents the same disk.
    pub scsi_id: String,
    /// SCSI serial number, likewise.
    pub scsi_sn: String,
    /// SCSI product id (up to 16 characters).
    pub product_id: String,
}

/// A tgtd running in a namespace, stopped on drop.
#[derive(Debug)]
pub struct Tgtd {
    netns: PathBuf,
    ns_name: String,
    control_port: u16,
    process: Option<Process>,
}

impl Tgtd {
    /// Starts `tgtd -f -C PORT --iscsi OPTIONS` inside `ns`, trying the
    /// control ports from `first_port` on until one is free (a tgtd of
    /// another lab may hold one), and waits until it answers `tgtadm`.
    pub fn start(ns: &Netns, first_port: u16, iscsi_options: &str, log_dir: &Path) -> Result<Tgtd> {
        let mut last_err = None;
        for port in first_port..first_port.saturating_add(16) {
            if port_in_use(port) {
                continue;
            }
            match Tgtd::start_on(ns, port, iscsi_options, log_dir) {
                Ok(t) => return Ok(t),
                Err(e) => last_err = Some(e),
            }
        }
        Err(last_err.unwrap_or_else(|| {
            anyhow::anyhow!("control ports {first_port} and the 15 after it are all in use")
        }))
    }

    fn start_on(ns: &Netns, port: u16, iscsi_options: &str, log_dir: &Path) -> Result<Tgtd> {
        let mut cmd = ns.command("tgtd");
        cmd.args(["-f", "-C", &port.to_string()]);
        if !iscsi_options.is_empty() {
            cmd.args(["--iscsi", iscsi_options]);
        }
        let name = format!("tgtd-{}", ns.name());
        let process = Process::spawn(&name, cmd, log_dir)?;
        let mut tgtd = Tgtd {
            netns: ns.path(),
            ns_name: ns.name().to_owned(),
            control_port: port,
            process: Some(process),
        };
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            let p = tgtd.process.as_mut().expect("just started");
            if let Some(status) = p.try_status()? {
                let err = p.stderr();
                // Dropping the guard now must not send tgtadm to another
                // lab's daemon on this port.
                tgtd.process = None;
                bail!(
                    "tgtd in {} on control port {port} exited ({}): {}",
                    ns.name(),
                    proc::describe(status),
                    err.trim()
                );
            }
            if tgtd.tgtadm(&["--op", "show", "--mode", "sys"]).is_ok() {
                return Ok(tgtd);
            }
            if Instant::now() >= deadline {
                bail!(
                    "tgtd in {} does not answer on control port {port}",
                    ns.name()
                );
            }
            thread::sleep(Duration::from_millis(20));
        }
    }

    /// The control port (`tgtadm -C PORT`).
    pub fn control_port(&self) -> u16 {
        self.control_port
    }

    /// tgtd's pid, while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.process.as_ref().map(Process::pid)
    }

    /// Whether tgtd is running.
    pub fn is_running(&mut self) -> bool {
        self.process.as_mut().is_some_and(Process::is_running)
    }

    /// Runs `tgtadm -C PORT --lld iscsi ARGS` in the namespace; returns its
    /// stdout.
    pub fn tgtadm(&self, args: &[&str]) -> Result<String> {
        let mut cmd = Command::new("nsenter");
        cmd.arg(format!("--net={}", self.netns.display()))
            .args([
                "--",
                "tgtadm",
                "-C",
                &self.control_port.to_string(),
                "--lld",
                "iscsi",
            ])
            .args(args);
        proc::run(&mut cmd).with_context(|| format!("tgtadm in {}", self.ns_name))
    }

    /// Exports `spec`: the target, LUN 1 on its backing file with its SCSI
    /// identity, bound to all initiators.
    pub fn add_target(&self, spec: &TargetSpec) -> Result<()> {
        let tid = spec.tid.to_string();
        let backing = spec.backing.to_string_lossy();
        self.tgtadm(&[
            "--op", "new", "--mode", "target", "--tid", &tid, "-T", &spec.iqn,
        ])?;
        self.tgtadm(&[
            "--op",
            "new",
            "--mode",
            "logicalunit",
            "--tid",
            &tid,
            "--lun",
            "1",
            "--bstype",
            "rdwr",
            "-b",
            &backing,
        ])?;
        let params = format!(
            "scsi_id={},scsi_sn={},vendor_id=SANLB,product_id={}",
            spec.scsi_id, spec.scsi_sn, spec.product_id
        );
        self.tgtadm(&[
            "--op",
            "update",
            "--mode",
            "logicalunit",
            "--tid",
            &tid,
            "--lun",
            "1",
            "--params",
            &params,
        ])?;
        // Writes of up to 256 KiB travel as immediate data in the command
        // PDU, with no Data-Out PDUs. libiscsi 1.19 gives a NOP-Out that
        // answers a target NOP-In the CmdSN of the head of its send queue;
        // when that head is a Data-Out of a command the target already has,
        // the CmdSN is below ExpCmdSN, libiscsi drops the connection and
        // the reconnect waits up to 3 s (its reconnect throttle).
        for (key, value) in [
            ("MaxRecvDataSegmentLength", "262144"),
            ("FirstBurstLength", "262144"),
            ("MaxBurstLength", "262144"),
        ] {
            self.tgtadm(&[
                "--op", "update", "--mode", "target", "--tid", &tid, "-n", key, "-v", value,
            ])?;
        }
        self.tgtadm(&[
            "--op", "bind", "--mode", "target", "--tid", &tid, "-I", "ALL",
        ])?;
        Ok(())
    }

    /// The initiator names with a session on target `tid` (from `tgtadm --op
    /// show --mode target`).
    pub fn initiators(&self, tid: u32) -> Result<Vec<String>> {
        let out = self.tgtadm(&["--op", "show", "--mode", "target"])?;
        Ok(parse_initiators(&out, tid))
    }

    /// Stops tgtd cleanly: `tgtadm --op delete --mode system --force` under
    /// a timeout, then SIGKILL if it is still there after 2 s.
    pub fn stop(&mut self) -> Result<()> {
        let Some(mut p) = self.process.take() else {
            return Ok(());
        };
        if p.is_running() {
            // tgtd may exit before it answers, so the outcome is judged by
            // whether the process goes away.
            let mut cmd = Command::new("nsenter");
            cmd.arg(format!("--net={}", self.netns.display())).args([
                "--",
                "tgtadm",
                "-C",
                &self.control_port.to_string(),
                "--op",
                "delete",
                "--mode",
                "system",
                "--force",
            ]);
            let _ = proc::output_timeout(&mut cmd, Duration::from_secs(3));
            if p.wait_timeout(Duration::from_secs(2))?.is_none() {
                p.kill()?;
            }
        }
        remove_control_files(self.control_port);
        Ok(())
    }

    /// SIGKILLs tgtd at once (a gateway failure); its sessions die with it.
    pub fn kill(&mut self) -> Result<()> {
        if let Some(mut p) = self.process.take() {
            p.kill()?;
            remove_control_files(self.control_port);
        }
        Ok(())
    }
}

impl Drop for Tgtd {
    fn drop(&mut self) {
        if let Err(e) = self.stop() {
            eprintln!("lab: stopping tgtd in {}: {e:#}", self.ns_name);
        }
    }
}

/// Whether a tgtd holds the lock of control port `port`.
fn port_in_use(port: u16) -> bool {
    use std::os::fd::AsRawFd as _;
    let Ok(f) = std::fs::OpenOptions::new()
        .write(true)
        .open(format!("{TGTD_RUN_DIR}/socket.{port}.lock"))
    else {
        return false;
    };
    // SAFETY: lockf on an open descriptor we own; F_TEST changes nothing.
    unsafe { libc::lockf(f.as_raw_fd(), libc::F_TEST, 0) != 0 }
}

/// Removes `socket.PORT` and `socket.PORT.lock` (a killed tgtd leaves them).
pub(crate) fn remove_control_files(port: u16) {
    for suffix in ["", ".lock"] {
        let _ = std::fs::remove_file(format!("{TGTD_RUN_DIR}/socket.{port}{suffix}"));
    }
}

fn parse_initiators(show: &str, tid: u32) -> Vec<String> {
    let mut out = Vec::new();
    let mut in_target = false;
    for line in show.lines() {
        if let Some(rest) = line.strip_prefix("Target ") {
            in_target = rest
                .split(':')
                .next()
                .and_then(|n| n.trim().parse::<u32>().ok())
                == Some(tid);
        } else if in_target && let Some(name) = line.trim().strip_prefix("Initiator: ") {
            let name = name.split_whitespace().next().unwrap_or(name).to_owned();
            if !out.contains(&name) {
                out.push(name);
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_sessions_of_one_target() {
        let show = "\
Target 1: iqn.2026-11.test.sanlb:t1
    System information:
        Driver: iscsi
        State: ready
    I_T nexus information:
        I_T nexus: 3
            Initiator: iqn.2026-11.test.sanlb:h1 alias: none
            Connection: 0
                IP Address: 198.18.0.101
        I_T nexus: 4
            Initiator: iqn.2026-11.test.sanlb:h2 alias: none
Target 2: iqn.2026-11.test.sanlb:t2
    I_T nexus information:
        I_T nexus: 5
            Initiator: iqn.2026-11.test.sanlb:h3 alias: none
";
        assert_eq!(
            parse_initiators(show, 1),
            ["iqn.2026-11.test.sanlb:h1", "iqn.2026-11.test.sanlb:h2"]
        );
        assert_eq!(parse_initiators(show, 2), ["iqn.2026-11.test.sanlb:h3"]);
        assert!(parse_initiators(show, 3).is_empty());
    }
}
