//! `cargo xtask bench` (as root), the throughput part: what counting costs a
//! gateway in TCP and iSCSI throughput.
//!
//! TCP: iperf3 through one veth into a gateway namespace, to the iSCSI port
//! 3260, both directions (host → gateway is the gateway's ingress, gateway →
//! host its egress), at MTU 1500 and 9000, for each `--xdp-mode` of the
//! agent. Within one run the agent is detached and attached in turn
//! (A B, B A, A B, …: which side runs first alternates), so that both sides
//! of each ratio see the same machine load; iperf3's client runs on CPU 0
//! and its server on CPU 1. The table gives the ratio attached / not per
//! round as min / median / max and the median Gbit/s of each side.
//!
//! iSCSI: iscsi-perf (64 KiB reads, queue depth 16) through the lab's
//! gateway, the agent detached and attached in turn the same way.
//!
//! Results go to stdout and `target/bench/throughput.json`. Nothing here
//! asserts: a benchmark measures, the report says what it measured.
//!
//! `SANLB_BENCH_SECONDS` (default 3), `SANLB_BENCH_ROUNDS` (3) and
//! `SANLB_BENCH_MODES` (`auto,driver,generic,tc`; `none` skips the TCP part,
//! `SANLB_BENCH_ISCSI=0` the iSCSI part) trim or lengthen a run: on a busy
//! machine more rounds narrow the median.

use std::{
    fmt::Write as _,
    path::{Path, PathBuf},
    thread,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail};
use serde::Serialize;
use xtask::lab::{
    Lab, Netns, Process,
    agent::{self as lab_agent, sanlb_binary},
    netns::veth,
    proc,
};

/// The agent's `--xdp-mode` values measured; `auto` is the default.
const MODES: [&str; 4] = ["auto", "driver", "generic", "tc"];
const MTUS: [u32; 2] = [1500, 9000];
const HOST_ADDR: &str = "198.18.3.10";
const GW_ADDR: &str = "198.18.3.1";

/// How long and how often.
#[derive(Clone, Debug)]
pub struct Options {
    /// Seconds of one iperf3 or iscsi-perf measurement.
    pub seconds: u32,
    /// Pairs of measurements (without, with the agent) per configuration.
    pub rounds: usize,
    /// The `--xdp-mode` values to measure TCP with.
    pub modes: Vec<String>,
    /// Whether to measure iSCSI through the lab.
    pub iscsi: bool,
}

impl Default for Options {
    fn default() -> Self {
        Self {
            seconds: 3,
            rounds: 3,
            modes: MODES.iter().map(|m| (*m).to_owned()).collect(),
            iscsi: true,
        }
    }
}

impl Options {
    /// The defaults, changed by the `SANLB_BENCH_*` variables.
    pub fn from_env() -> Result<Self> {
        let mut o = Options::default();
        let var = |name: &str| std::env::var(name).ok().filter(|v| !v.is_empty());
        if let Some(v) = var("SANLB_BENCH_SECONDS") {
            o.seconds = v
                .parse()
                .with_context(|| format!("SANLB_BENCH_SECONDS={v}"))?;
        }
        if let Some(v) = var("SANLB_BENCH_ROUNDS") {
            o.rounds = v
                .parse()
                .with_context(|| format!("SANLB_BENCH_ROUNDS={v}"))?;
        }
        if let Some(v) = var("SANLB_BENCH_MODES") {
            o.modes = v
                .split(',')
                .filter(|m| *m != "none")
                .map(str::to_owned)
                .collect();
            if let Some(bad) = o.modes.iter().find(|m| !MODES.contains(&m.as_str())) {
                bail!("SANLB_BENCH_MODES: unknown mode {bad:?} (one of {MODES:?} or none)");
            }
        }
        if let Some(v) = var("SANLB_BENCH_ISCSI") {
            o.iscsi = v != "0";
        }
        if o.seconds == 0 || o.rounds == 0 {
            bail!("SANLB_BENCH_SECONDS and SANLB_BENCH_ROUNDS must be at least 1");
        }
        Ok(o)
    }
}

/// One configuration's figures.
#[derive(Clone, Debug, Serialize)]
pub struct Row {
    /// `tcp` or `iscsi`.
    pub what: String,
    /// `host->gateway` (gateway ingress) or `gateway->host` (egress).
    pub direction: String,
    /// The gateway NIC's MTU.
    pub mtu: u32,
    /// The agent's `--xdp-mode`.
    pub mode: String,
    /// The hook the agent reported for ingress.
    pub ingress_hook: String,
    /// Throughput without the agent, per round (Gbit/s).
    pub without_gbps: Vec<f64>,
    /// Throughput with the agent, per round (Gbit/s).
    pub with_gbps: Vec<f64>,
    /// with / without, per round.
    pub ratios: Vec<f64>,
}

impl Row {
    fn ratio_stats(&self) -> (f64, f64, f64) {
        let mut r = self.ratios.clone();
        r.sort_by(f64::total_cmp);
        (r[0], median(&r), r[r.len() - 1])
    }
}

fn median(v: &[f64]) -> f64 {
    let mut v = v.to_vec();
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

/// Runs the whole benchmark and prints the table.
pub fn run(opts: Options) -> Result<()> {
    let sanlb = sanlb_binary()?;
    let logs = std::env::temp_dir().join(format!("sanlb-bench-{}", std::process::id()));
    let pins = PathBuf::from(format!("/sys/fs/bpf/sanlb-bench-{}", std::process::id()));
    let mut rows = Vec::new();
    let result = (|| -> Result<()> {
        for mtu in MTUS {
            for mode in &opts.modes {
                eprintln!("bench throughput: tcp, MTU {mtu}, --xdp-mode {mode}");
                rows.extend(tcp(&sanlb, &logs, &pins, mtu, mode, &opts)?);
            }
        }
        if opts.iscsi {
            eprintln!("bench throughput: iscsi through the lab gateway");
            rows.push(iscsi(&sanlb, &opts)?);
        }
        Ok(())
    })();
    let _ = std::fs::remove_dir_all(&pins);
    let _ = std::fs::remove_dir_all(&logs);
    result?;
    print!("{}", table(&rows));
    let dir = crate::util::target_dir()?.join("bench");
    std::fs::create_dir_all(&dir)?;
    std::fs::write(
        dir.join("throughput.json"),
        serde_json::to_string_pretty(&rows)?,
    )?;
    Ok(())
}

/// The printed table.
pub fn table(rows: &[Row]) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "throughput: attached / not, alternating in one run (min / median / max of the rounds)"
    );
    let _ = writeln!(
        out,
        "{:<6} {:<14} {:>5} {:<8} {:<12} {:>9} {:>9} {:>22}",
        "what", "direction", "mtu", "mode", "ingress", "without", "with", "ratio"
    );
    for r in rows {
        let (lo, mid, hi) = r.ratio_stats();
        let unit = if r.what == "iscsi" { "MB/s" } else { "Gb/s" };
        let scale = if r.what == "iscsi" { 1e3 / 8.0 } else { 1.0 };
        let _ = writeln!(
            out,
            "{:<6} {:<14} {:>5} {:<8} {:<12} {:>9} {:>9} {:>22}",
            r.what,
            r.direction,
            r.mtu,
            r.mode,
            r.ingress_hook,
            format!("{:.1} {unit}", median(&r.without_gbps) * scale),
            format!("{:.1} {unit}", median(&r.with_gbps) * scale),
            format!("{lo:.3} / {mid:.3} / {hi:.3}"),
        );
    }
    out
}

/// A host and a gateway namespace joined by one veth of `mtu`, with an
/// iperf3 server on the gateway's port 3260. Everything is removed on drop.
struct Pair {
    host: Netns,
    gw: Netns,
    _server: Process,
}

impl Pair {
    fn new(mtu: u32, logs: &Path) -> Result<Pair> {
        let host = Netns::unique("sanlb-bench-h")?;
        let gw = Netns::unique("sanlb-bench-g")?;
        veth(
            &host,
            "eth0",
            "02:00:c6:12:30:0a",
            &gw,
            "eth0",
            "02:00:c6:12:30:01",
        )?;
        host.ip(&["addr", "add", &format!("{HOST_ADDR}/24"), "dev", "eth0"])?;
        gw.ip(&["addr", "add", &format!("{GW_ADDR}/24"), "dev", "eth0"])?;
        for ns in [&host, &gw] {
            ns.ip(&["link", "set", "eth0", "mtu", &mtu.to_string()])?;
        }
        let mut server = gw.command("iperf3");
        server.args(["-s", "-p", "3260", "-B", GW_ADDR]);
        let server = Process::spawn("iperf3-server", server, logs)?;
        let pair = Pair {
            host,
            gw,
            _server: server,
        };
        // The server is up when a client gets an answer.
        let deadline = Instant::now() + Duration::from_secs(10);
        while pair.iperf(false, 1).is_err() {
            if Instant::now() > deadline {
                bail!("iperf3 server did not come up");
            }
            thread::sleep(Duration::from_millis(200));
        }
        Ok(pair)
    }

    /// One iperf3 run of `seconds` from the host (`reverse`: from the
    /// gateway); received Gbit/s.
    fn iperf(&self, reverse: bool, seconds: u32) -> Result<f64> {
        let mut cmd = self.host.command("iperf3");
        cmd.args([
            "-c",
            GW_ADDR,
            "-p",
            "3260",
            "-J",
            "-t",
            &seconds.to_string(),
        ]);
        if reverse {
            cmd.arg("-R");
        }
        // Client on CPU 0, server on CPU 1: left to the scheduler, both
        // wander between the CPUs and the rounds differ by tens of percent.
        if thread::available_parallelism().is_ok_and(|n| n.get() >= 2) {
            cmd.args(["-A", "0,1"]);
        }
        let out = proc::output_timeout(&mut cmd, Duration::from_secs(u64::from(seconds) + 20))?;
        if !out.status.success() {
            bail!(
                "iperf3 failed: {}",
                String::from_utf8_lossy(&out.stdout).trim()
            );
        }
        iperf_gbps(&String::from_utf8_lossy(&out.stdout))
    }
}

/// Received bits per second of an `iperf3 -J` report, in Gbit/s.
pub fn iperf_gbps(json: &str) -> Result<f64> {
    let v: serde_json::Value = serde_json::from_str(json).context("iperf3 -J output")?;
    v["end"]["sum_received"]["bits_per_second"]
        .as_f64()
        .map(|b| b / 1e9)
        .context("no end.sum_received.bits_per_second in the iperf3 report")
}

/// The agent on `ns`'s eth0, running until dropped; and the ingress hook it
/// reported.
fn agent(
    sanlb: &Path,
    ns: &Netns,
    pin_dir: &Path,
    logs: &Path,
    mode: &str,
) -> Result<(Process, String)> {
    let mut cmd = ns.command(&sanlb.to_string_lossy());
    cmd.args(["agent", "--iface", "eth0", "--xdp-mode", mode, "--pin-dir"])
        .arg(pin_dir)
        .env("NO_COLOR", "1");
    let mut p = Process::spawn("agent", cmd, logs)?;
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let err = p.stderr();
        if let Some(hook) = logged_hook(&err) {
            return Ok((p, hook));
        }
        if !p.is_running() || Instant::now() > deadline {
            bail!("the agent did not start: {err}");
        }
        thread::sleep(Duration::from_millis(20));
    }
}

/// The hook in the agent's "counting iSCSI traffic (ingress: HOOK, …" line.
pub fn logged_hook(log: &str) -> Option<String> {
    let rest = log.split("counting iSCSI traffic (ingress: ").nth(1)?;
    Some(rest.split([',', ')']).next()?.to_owned())
}

fn tcp(
    sanlb: &Path,
    logs: &Path,
    pins: &Path,
    mtu: u32,
    mode: &str,
    opts: &Options,
) -> Result<Vec<Row>> {
    let pair = Pair::new(mtu, logs)?;
    let pin_dir = pins.join(format!("{mode}-{mtu}"));
    let mut rows: Vec<Row> = ["host->gateway", "gateway->host"]
        .iter()
        .map(|d| Row {
            what: "tcp".into(),
            direction: (*d).into(),
            mtu,
            mode: mode.into(),
            ingress_hook: String::new(),
            without_gbps: Vec::new(),
            with_gbps: Vec::new(),
            ratios: Vec::new(),
        })
        .collect();
    let both = || -> Result<[f64; 2]> {
        Ok([
            pair.iperf(false, opts.seconds)?,
            pair.iperf(true, opts.seconds)?,
        ])
    };
    let attached = || -> Result<([f64; 2], String)> {
        let (agent, hook) = agent(sanlb, &pair.gw, &pin_dir, logs, mode)?;
        let with = both()?;
        drop(agent);
        Ok((with, hook))
    };
    for round in 0..opts.rounds {
        // A B, then B A: whichever runs first in a round gains or loses
        // from it the same number of times.
        let (without, (with, hook)) = if round % 2 == 0 {
            (both()?, attached()?)
        } else {
            let with = attached()?;
            (both()?, with)
        };
        for (i, row) in rows.iter_mut().enumerate() {
            row.ingress_hook.clone_from(&hook);
            row.without_gbps.push(without[i]);
            row.with_gbps.push(with[i]);
            row.ratios.push(with[i] / without[i]);
        }
    }
    Ok(rows)
}

/// iscsi-perf's average read rate in MB/s (from its last progress line:
/// "... iops average (... MB/s)" style; the figure before "MB/s").
pub fn iscsi_perf_mbps(text: &str) -> Option<f64> {
    let line = text
        .split(['\r', '\n'])
        .rfind(|l| l.contains("MB/s") || l.contains("MiB/s"))?;
    let words: Vec<&str> = line.split_whitespace().collect();
    let at = words
        .iter()
        .position(|w| w.starts_with("MB/s") || w.starts_with("MiB/s"))?;
    words
        .get(at.checked_sub(1)?)?
        .trim_start_matches('(')
        .parse()
        .ok()
}

fn iscsi(sanlb: &Path, opts: &Options) -> Result<Row> {
    let lab = Lab::builder().hosts(1).gateways(1).targets(1).build()?;
    let gw = &lab.gateways()[0];
    let host = &lab.hosts()[0];
    let target = &lab.targets()[0];
    let perf = || -> Result<f64> {
        let mut cmd = host.ns.command("timeout");
        cmd.args([
            &(opts.seconds + 15).to_string(),
            "iscsi-perf",
            "-i",
            &host.initiator,
            "-t",
            &opts.seconds.to_string(),
            "-m",
            "16",
            "-b",
            "128",
        ])
        .arg(target.url());
        let out =
            proc::output_timeout(&mut cmd, Duration::from_secs(u64::from(opts.seconds) + 30))?;
        let text = String::from_utf8_lossy(&out.stdout).into_owned()
            + &String::from_utf8_lossy(&out.stderr);
        if !out.status.success() {
            bail!("iscsi-perf: {}: {text}", proc::describe(out.status));
        }
        // MB/s → Gbit/s, so that one table holds both.
        iscsi_perf_mbps(&text)
            .map(|mbps| mbps * 8.0 / 1e3)
            .with_context(|| format!("no rate in the iscsi-perf output: {text}"))
    };
    let mut row = Row {
        what: "iscsi".into(),
        direction: "gateway->host".into(),
        mtu: 1500,
        mode: "auto".into(),
        ingress_hook: String::new(),
        without_gbps: Vec::new(),
        with_gbps: Vec::new(),
        ratios: Vec::new(),
    };
    let attached = || -> Result<(f64, String)> {
        let agent = lab_agent::start(&lab, sanlb, gw, &[])?;
        let deadline = Instant::now() + Duration::from_secs(5);
        while logged_hook(&agent.stderr()).is_none() && Instant::now() < deadline {
            thread::sleep(Duration::from_millis(20));
        }
        let hook = logged_hook(&agent.stderr()).unwrap_or_default();
        let with = perf()?;
        drop(agent);
        Ok((with, hook))
    };
    for round in 0..opts.rounds {
        // A B, then B A, as in `tcp`.
        let (without, (with, hook)) = if round % 2 == 0 {
            (perf()?, attached()?)
        } else {
            let with = attached()?;
            (perf()?, with)
        };
        row.ingress_hook = hook;
        row.without_gbps.push(without);
        row.with_gbps.push(with);
        row.ratios.push(with / without);
    }
    Ok(row)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_iperf3_json() {
        let json = r#"{"end":{"sum_received":{"bits_per_second":18700000000.0}}}"#;
        assert!((iperf_gbps(json).unwrap() - 18.7).abs() < 1e-9);
        assert!(iperf_gbps("{}").is_err());
    }

    #[test]
    fn reads_the_agents_hook() {
        let log = "INFO sanlb::agent: counting iSCSI traffic (ingress: xdp-driver, egress: tc) iface=eth0";
        assert_eq!(logged_hook(log).as_deref(), Some("xdp-driver"));
        assert_eq!(logged_hook("starting"), None);
    }
}
