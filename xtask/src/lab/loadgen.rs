//! `sanlb-loadgen`, the lab's iSCSI load generator (`xtask/loadgen/`): how
//! to build it, command lines for it, and its JSON-lines output.
//!
//! It is C on libiscsi (see the comment at the top of `sanlb-loadgen.c` for
//! why and for every flag); [`build`] compiles it with gcc into
//! `target/lab/` when the source is newer than the binary.

use std::{
    net::Ipv4Addr,
    path::{Path, PathBuf},
    process::Command,
    time::Duration,
};

use anyhow::{Context as _, Result, bail};
use serde::Deserialize;

use super::{Host, Target, proc};

/// The C source, inside the xtask crate.
pub fn source() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("loadgen/sanlb-loadgen.c")
}

/// `target/lab/` (under `CARGO_TARGET_DIR` if set).
pub fn output_dir() -> PathBuf {
    match std::env::var_os("CARGO_TARGET_DIR") {
        Some(d) => PathBuf::from(d).join("lab"),
        None => Path::new(env!("CARGO_MANIFEST_DIR"))
            .parent()
            .expect("xtask is inside the workspace")
            .join("target/lab"),
    }
}

/// Compiles `sanlb-loadgen` unless an up-to-date binary exists; returns its
/// path. Needs gcc and libiscsi-dev (`cargo xtask setup` installs both).
pub fn build() -> Result<PathBuf> {
    let src = source();
    let dir = output_dir();
    let bin = dir.join("sanlb-loadgen");
    let modified = |p: &Path| p.metadata().and_then(|m| m.modified()).ok();
    if let (Some(b), Some(s)) = (modified(&bin), modified(&src))
        && b >= s
    {
        return Ok(bin);
    }
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    // Build to a temporary name and rename, so that a concurrent build never
    // runs a half-written binary.
    let tmp = dir.join(format!("sanlb-loadgen.{}.tmp", std::process::id()));
    let mut cmd = Command::new("gcc");
    cmd.args([
        "-O2",
        "-g",
        "-Wall",
        "-Wextra",
        "-Werror",
        "-std=gnu11",
        "-o",
    ])
    .arg(&tmp)
    .arg(&src)
    .args(["-liscsi", "-lm"]);
    let out = proc::output_timeout(&mut cmd, Duration::from_secs(120))?;
    if !out.status.success() {
        let _ = std::fs::remove_file(&tmp);
        bail!(
            "compiling {} failed (is libiscsi-dev installed? `cargo xtask setup`): {}",
            src.display(),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    std::fs::rename(&tmp, &bin).with_context(|| format!("installing {}", bin.display()))?;
    Ok(bin)
}

/// What one loadgen does to one target (one `--target` spec).
#[derive(Clone, Debug, PartialEq)]
pub struct Workload {
    /// `iscsi://ADDR/IQN/LUN`.
    pub url: String,
    /// Label in the output (the target's name, say).
    pub name: String,
    /// Byte rate limit per second; `None` = unlimited.
    pub rate: Option<u64>,
    /// I/O rate limit per second instead of `rate`.
    pub iops: Option<u64>,
    /// Share of reads in percent.
    pub read_pct: u8,
    /// I/O size in bytes (a multiple of the LUN's block size).
    pub block_bytes: u32,
    /// Queue depth.
    pub queue_depth: u32,
    /// First LBA of the region used.
    pub lba: u64,
    /// Region length in LBAs; `None` = to the end of the LUN.
    pub blocks: Option<u64>,
    /// Write the whole region first and read it all back at the end.
    pub verify: bool,
}

impl Workload {
    /// 70 % reads of 16 KiB at queue depth 4 over the whole LUN of `target`,
    /// unlimited, without the verify passes. (Reads above 16 KiB see
    /// recurring 70-80 ms gaps from tgtd in the lab, which would hide the
    /// stall of a move.)
    pub fn new(target: &Target) -> Workload {
        Workload {
            url: target.url(),
            name: target.name.clone(),
            rate: None,
            iops: None,
            read_pct: 70,
            block_bytes: 16 * 1024,
            queue_depth: 4,
            lba: 0,
            blocks: None,
            verify: false,
        }
    }

    /// The `--target` argument.
    pub fn spec(&self) -> String {
        let mut s = format!(
            "{},name={},read={},bs={},qd={},lba={}",
            self.url, self.name, self.read_pct, self.block_bytes, self.queue_depth, self.lba
        );
        if let Some(r) = self.rate {
            s.push_str(&format!(",rate={r}"));
        }
        if let Some(i) = self.iops {
            s.push_str(&format!(",iops={i}"));
        }
        if let Some(b) = self.blocks {
            s.push_str(&format!(",blocks={b}"));
        }
        if self.verify {
            s.push_str(",verify");
        }
        s
    }
}

/// The command line of a loadgen run from `host` (inside its namespace, with
/// its initiator name) over `workloads` for `duration`.
pub fn command(
    bin: &Path,
    host: &Host,
    workloads: &[Workload],
    duration: Duration,
    seed: u64,
) -> Command {
    let mut cmd = host.ns.command(&bin.to_string_lossy());
    cmd.args(["--initiator", &host.initiator])
        .args(["--duration", &format!("{:.3}", duration.as_secs_f64())])
        .args(["--seed", &seed.to_string()]);
    for w in workloads {
        cmd.arg("--target").arg(w.spec());
    }
    cmd
}

/// Counters common to `report` and `final` lines (totals since the start).
#[derive(Clone, Debug, Default, PartialEq, Deserialize)]
pub struct Totals {
    /// Reads completed.
    pub read_ops: u64,
    /// Writes completed.
    pub write_ops: u64,
    /// Bytes read.
    pub read_bytes: u64,
    /// Bytes written.
    pub write_bytes: u64,
    /// Failed I/Os.
    pub errors: u64,
    /// Reads that did not return what was last written.
    pub verify_errors: u64,
    /// Reads checked during the workload.
    pub verified: u64,
    /// Reconnects libiscsi made.
    pub reconnects: u64,
    /// I/Os outstanding.
    pub inflight: u64,
    /// Longest stall of the run so far, seconds.
    pub stall_max_s: f64,
}

/// One line of loadgen output.
#[derive(Clone, Debug, PartialEq, Deserialize)]
#[serde(tag = "event", rename_all = "kebab-case")]
pub enum Event {
    /// Every interval, per target.
    Report {
        /// Target label.
        target: String,
        /// Seconds since the loadgen started.
        t: f64,
        /// Wall clock, Unix seconds.
        unix: f64,
        /// Phase (`prefill`, `run`, `drain`, `final-verify`, `done`).
        phase: String,
        /// I/Os completed per second over the interval.
        iops: f64,
        /// Longest stall in the interval, seconds.
        stall_s: f64,
        /// Totals.
        #[serde(flatten)]
        totals: Totals,
    },
    /// A stall of at least `--stall-event` seconds ended.
    Stall {
        /// Target label.
        target: String,
        /// When it began, Unix seconds.
        start_unix: f64,
        /// How long it lasted.
        duration_s: f64,
    },
    /// libiscsi reconnected the session.
    Reconnect {
        /// Target label.
        target: String,
        /// When, Unix seconds.
        unix: f64,
    },
    /// A target's workload changed phase.
    Phase {
        /// Target label.
        target: String,
        /// The new phase.
        phase: String,
    },
    /// Once per target at the end.
    Final {
        /// Target label.
        target: String,
        /// Seconds since the loadgen started, when its I/O was over (the
        /// line itself is written when it exits, after the logouts).
        #[serde(default)]
        t: f64,
        /// Seconds of workload.
        seconds: f64,
        /// Totals.
        #[serde(flatten)]
        totals: Totals,
        /// Chunks read back by the final verify pass.
        final_verified: u64,
        /// Of which wrong.
        final_verify_errors: u64,
    },
}

/// Parses one output line.
pub fn parse_line(line: &str) -> Result<Event> {
    serde_json::from_str(line).with_context(|| format!("loadgen line {line:?}"))
}

/// The `final` events of a finished loadgen's stdout, by target label.
pub fn finals(stdout: &str) -> Result<Vec<(String, Totals, u64, u64)>> {
    let mut out = Vec::new();
    for line in stdout.lines().filter(|l| !l.trim().is_empty()) {
        if let Event::Final {
            target,
            totals,
            final_verified,
            final_verify_errors,
            ..
        } = parse_line(line)?
        {
            out.push((target, totals, final_verified, final_verify_errors));
        }
    }
    Ok(out)
}

/// The address in an `iscsi://ADDR[:PORT]/..` URL.
pub fn url_addr(url: &str) -> Option<Ipv4Addr> {
    let rest = url.strip_prefix("iscsi://")?;
    let end = rest.find([':', '/']).unwrap_or(rest.len());
    rest[..end].parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_every_event() {
        let report = r#"{"event":"report","target":"t1","t":1.001,"unix":1700000000.5,
            "phase":"run","iops":250.0,"stall_s":0.001,"read_ops":175,"write_ops":75,
            "read_bytes":11468800,"write_bytes":4915200,"errors":0,"verify_errors":0,
            "verified":12,"reconnects":0,"inflight":1,"stall_max_s":0.002}"#;
        let Event::Report { target, totals, .. } = parse_line(&report.replace('\n', "")).unwrap()
        else {
            panic!("not a report");
        };
        assert_eq!(target, "t1");
        assert_eq!(totals.read_bytes, 11468800);
        assert!(matches!(
            parse_line(r#"{"event":"stall","target":"t1","start_unix":1.5,"duration_s":0.2}"#)
                .unwrap(),
            Event::Stall { duration_s, .. } if duration_s == 0.2
        ));
        assert!(matches!(
            parse_line(r#"{"event":"phase","target":"t1","phase":"final-verify"}"#).unwrap(),
            Event::Phase { phase, .. } if phase == "final-verify"
        ));
        let fin = r#"{"event":"final","target":"t2","t":9.0,"seconds":8.0,"read_ops":1,
            "write_ops":2,"read_bytes":3,"write_bytes":4,"errors":0,"verify_errors":0,
            "verified":0,"reconnects":2,"inflight":0,"stall_max_s":0.2,"final_verified":7,
            "final_verify_errors":0}"#
            .replace('\n', "");
        let f = finals(&fin).unwrap();
        assert_eq!(f.len(), 1);
        assert_eq!((f[0].1.reconnects, f[0].2), (2, 7));
        assert!(parse_line(r#"{"event":"bogus"}"#).is_err());
    }

    #[test]
    fn specs_carry_every_setting() {
        let w = Workload {
            url: "iscsi://198.18.1.1/iqn.x:t1/1".into(),
            name: "t1".into(),
            rate: Some(4 << 20),
            iops: None,
            read_pct: 50,
            block_bytes: 8192,
            queue_depth: 2,
            lba: 128,
            blocks: Some(1024),
            verify: true,
        };
        assert_eq!(
            w.spec(),
            "iscsi://198.18.1.1/iqn.x:t1/1,name=t1,read=50,bs=8192,qd=2,lba=128,\
             rate=4194304,blocks=1024,verify"
        );
        assert_eq!(url_addr(&w.url), Some(Ipv4Addr::new(198, 18, 1, 1)));
        assert_eq!(
            url_addr("iscsi://198.18.1.2:3260/x/1"),
            Some(Ipv4Addr::new(198, 18, 1, 2))
        );
    }
}
