//! `cargo xtask demo`: a skewed IP SAN in network namespaces balances itself
//! while you watch.
//!
//! The lab ([`xtask::lab`]): n hosts, k gateways each running tgtd over the
//! same backing files (m targets), a `sanlb agent` on every gateway's
//! host-facing veth, every target address starting on gw1. Each host runs a
//! `sanlb-loadgen` over all targets with skewed rates (the busiest target
//! `--skew` times the lightest), writing and verifying as it goes.
//!
//! Who moves addresses (`--balancer`): `controller` (the default), `sanlb
//! controller` in a management namespace, to which the agents report and
//! whose map they enforce (add the /32, announce it, drop it); or `none`:
//! only count, the skew stays.
//!
//! What the controller moves (`--mode`): `target`, each target's address
//! (the default); or `pair`, each (host, target) pair by iSCSI login
//! redirection: tgtd listens on the data port, the agents run the portal on
//! the target addresses and hold a data address per target, and the demo
//! follows each pair by the gateway its bytes go through. Pair mode's
//! default scenario is one that target mode cannot balance: 3 hosts
//! sharing 1 target over 3 gateways.
//!
//! The run has four phases, and the demo watches all of them (the
//! controller decides in all of them): the load (`--duration`), the
//! initiators' read-back of what they wrote, `iscsi-perf` reading t1 as
//! fast as it can, and one more rebalance interval. Then it stops the
//! controller, takes a last sample and stops the agents.
//!
//! The terminal shows per-gateway load bars, the moves, var_norm and the
//! generation every second; the end prints a summary (also as JSON with
//! `--summary`) and writes `load.png` and `summary.json` into the output
//! folder. Everything is removed at the end, on Ctrl-C and on failure.
//! Rates are in MiB/s throughout.

mod metrics;
mod plot;
mod view;

use std::{
    collections::{BTreeMap, BTreeSet},
    io::{IsTerminal as _, Write as _},
    net::{IpAddr, Ipv4Addr},
    path::{Path, PathBuf},
    process::{Command, Output},
    sync::atomic::{AtomicBool, Ordering},
    thread,
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

use anyhow::{Context as _, Result, bail};
use serde::Deserialize;
use xtask::lab::{
    self, Lab, LineTail, NIC, Placement, Process, agent,
    loadgen::{self, Event, Workload},
    proc,
};

use self::metrics::{
    Balance, BytesCheck, MIB, Move, Phase, Phases, Rebalance, Sample, Shape, Stall, Summary,
};
use crate::util;

/// The controller's port in the management namespace.
const CONTROLLER_PORT: u16 = 7878;
/// How far max/mean may be from 1 for the map to count as balanced.
const BALANCED: f64 = 1.10;
/// The independent reader: `iscsi-perf` with this many 512-byte blocks per
/// read (16 KiB), for this long.
const PERF_BLOCKS: u64 = 32;
const PERF_SECONDS: u64 = 3;
/// Each (host, target) writes and verifies its own 2 MiB of the LUN.
const REGION_BLOCKS: u64 = 4096;
/// Size of every LUN.
const DISK_SIZE: u64 = 64 << 20;

/// Arguments of `cargo xtask demo`.
#[derive(clap::Args, Debug)]
pub struct DemoArgs {
    /// Hosts (iSCSI initiators) [default: 4; with --mode pair 3].
    #[arg(long)]
    hosts: Option<usize>,
    /// Gateways (tgtd + sanlb agent each).
    #[arg(long, default_value_t = 3)]
    gateways: usize,
    /// Targets (storage entities, one address each) [default: 6; with
    /// --mode pair 1].
    #[arg(long)]
    targets: Option<usize>,
    /// What the controller moves: target addresses, or (host, target) pairs
    /// by iSCSI login redirection.
    #[arg(long, value_enum, default_value_t = Mode::Target)]
    mode: Mode,
    /// How long the load runs: 45s, 90s, 2m.
    #[arg(long, default_value = "45s", value_parser = parse_duration)]
    duration: Duration,
    /// Rate of the busiest target over the lightest (rates grow geometrically).
    #[arg(long, default_value_t = 3.0)]
    skew: f64,
    /// Load offered by all hosts together, bytes per second (k, M, G:
    /// 1024-based, so 24M is 24 MiB/s).
    #[arg(long, default_value = "24M", value_parser = parse_size)]
    rate: u64,
    /// Rebalance period.
    #[arg(long, default_value = "5s", value_parser = parse_duration)]
    interval: Duration,
    /// Who moves the addresses.
    #[arg(long, value_enum, default_value_t = Balancer::Controller)]
    balancer: Balancer,
    /// The shortest stall the initiators report (20ms, 5ms) [default: 20ms;
    /// with --mode pair 5ms]: give both modes the same to compare them.
    #[arg(long, value_name = "DURATION", value_parser = parse_duration)]
    stall_event: Option<Duration>,
    /// Also write the summary as JSON to this file.
    #[arg(long, value_name = "FILE.json")]
    summary: Option<PathBuf>,
    /// Folder for load.png, summary.json and the logs [default: target/demo].
    #[arg(long, value_name = "DIR")]
    out: Option<PathBuf>,
    /// Build sanlb with the release profile.
    #[arg(long)]
    release: bool,
    /// Run this sanlb binary instead of building one.
    #[arg(long, value_name = "PATH", conflicts_with = "release")]
    sanlb: Option<PathBuf>,
}

/// `--mode`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
enum Mode {
    /// Each target's address moves between gateways.
    Target,
    /// Each (host, target) pair is steered by login redirection.
    Pair,
}

impl Mode {
    /// The shortest stall the loadgens report, seconds.
    fn stall_threshold(self) -> f64 {
        match self {
            Mode::Target => 0.02,
            Mode::Pair => 0.005,
        }
    }

    fn name(self) -> &'static str {
        match self {
            Mode::Target => "target",
            Mode::Pair => "pair",
        }
    }
}

impl DemoArgs {
    fn hosts(&self) -> usize {
        self.hosts.unwrap_or(match self.mode {
            Mode::Target => 4,
            Mode::Pair => 3,
        })
    }

    fn targets(&self) -> usize {
        self.targets.unwrap_or(match self.mode {
            Mode::Target => 6,
            Mode::Pair => 1,
        })
    }

    /// The shortest stall the loadgens report, seconds.
    fn stall_threshold(&self) -> f64 {
        self.stall_event
            .map_or(self.mode.stall_threshold(), |d| d.as_secs_f64())
    }
}

/// `--balancer`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
enum Balancer {
    /// sanlb controller + agents that enforce its map.
    Controller,
    /// Count only.
    None,
}

impl Balancer {
    fn name(self) -> &'static str {
        match self {
            Balancer::Controller => "controller",
            Balancer::None => "none",
        }
    }
}

/// The one duration grammar of sanlb's flags (`sanlb_common::duration`).
fn parse_duration(s: &str) -> Result<Duration, String> {
    sanlb_common::duration::parse_duration(s).map_err(|e| format!("{s:?}: {e}"))
}

fn parse_size(s: &str) -> Result<u64, String> {
    let err = || format!("{s:?} is not a byte count like 24M or 500k");
    let (num, scale) = match s.char_indices().last() {
        Some((i, 'k' | 'K')) => (&s[..i], 1u64 << 10),
        Some((i, 'm' | 'M')) => (&s[..i], 1 << 20),
        Some((i, 'g' | 'G')) => (&s[..i], 1 << 30),
        _ => (s, 1),
    };
    let v: f64 = num.trim().parse().map_err(|_| err())?;
    if v.is_nan() || v < 0.0 {
        return Err(err());
    }
    Ok((v * scale as f64) as u64)
}

static STOP: AtomicBool = AtomicBool::new(false);

extern "C" fn on_signal(_: libc::c_int) {
    STOP.store(true, Ordering::SeqCst);
}

fn stopping() -> bool {
    STOP.load(Ordering::SeqCst)
}

fn unix_now() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64())
}

/// Runs the demo (after `setup`).
pub fn run(args: DemoArgs) -> Result<()> {
    if !(1..=32).contains(&args.hosts()) {
        bail!("--hosts must be 1..=32");
    }
    if !(2..=16).contains(&args.gateways) {
        bail!("--gateways must be 2..=16");
    }
    if !(1..=64).contains(&args.targets()) {
        bail!("--targets must be 1..=64");
    }
    if args.skew.is_nan() || args.skew < 1.0 {
        bail!("--skew must be at least 1");
    }
    if args.duration < Duration::from_secs(10) || args.interval < Duration::from_secs(1) {
        bail!("--duration must be at least 10s and --interval at least 1s");
    }
    if args
        .stall_event
        .is_some_and(|d| d < Duration::from_millis(1) || d > Duration::from_secs(1))
    {
        bail!("--stall-event must be 1ms..=1s");
    }
    if args.mode == Mode::Pair && args.balancer == Balancer::None {
        bail!("--mode pair needs the controller: its agents run the portals that place the pairs");
    }
    if args.rate < 64 << 10 {
        bail!("--rate must be at least 64k");
    }
    if !util::is_root() {
        bail!(
            "the lab needs root (network namespaces, BPF): run `sudo -E env PATH=$PATH cargo xtask demo`"
        );
    }
    let out = match &args.out {
        Some(d) => d.clone(),
        None => util::target_dir()?.join("demo"),
    };
    std::fs::create_dir_all(&out).with_context(|| format!("creating {}", out.display()))?;

    let sanlb = match &args.sanlb {
        Some(path) => path
            .canonicalize()
            .with_context(|| format!("--sanlb {}", path.display()))?,
        None => {
            eprintln!("demo: building sanlb");
            let mut build = util::cargo(&["build", "--package", "sanlb"]);
            if args.release {
                build.arg("--release");
            }
            util::status(&mut build)?;
            util::target_dir()?
                .join(if args.release { "release" } else { "debug" })
                .join("sanlb")
        }
    };
    let loadgen_bin = loadgen::build()?;
    let balancer = args.balancer;

    // SAFETY: the handler only stores to an atomic, which is async-signal-safe.
    unsafe {
        libc::signal(libc::SIGINT, on_signal as *const () as libc::sighandler_t);
        libc::signal(libc::SIGTERM, on_signal as *const () as libc::sighandler_t);
    }

    eprintln!(
        "demo: building the lab: {} hosts, {} gateways, {} targets (leftovers of killed runs are removed first)",
        args.hosts(),
        args.gateways,
        args.targets()
    );
    // With a controller the agents place the addresses (with sanlb's
    // marker, which `ip addr` here cannot set); otherwise the lab puts them
    // all on gw1.
    let placement = if balancer == Balancer::Controller {
        Placement::Unassigned
    } else {
        Placement::AllOnFirst
    };
    let lab = Lab::builder()
        .hosts(args.hosts())
        .gateways(args.gateways)
        .targets(args.targets())
        .disk_size(DISK_SIZE)
        .placement(placement)
        .management(balancer == Balancer::Controller)
        .pair_mode(args.mode == Mode::Pair)
        .build()?;
    let demo = Demo {
        args: &args,
        lab: &lab,
        sanlb: &sanlb,
        loadgen: &loadgen_bin,
        balancer,
        out: &out,
    };
    let result = demo.run();
    // The logs outlive the lab (they are in its folder, which goes with it).
    let logs = out.join("logs");
    let _ = std::fs::remove_dir_all(&logs);
    if let Err(e) = copy_dir(&lab.log_dir(), &logs) {
        eprintln!("demo: copying the logs: {e:#}");
    }
    drop(lab);
    let summary = match result {
        Ok(s) => s,
        Err(_) if stopping() => bail!("interrupted; everything the demo made was removed"),
        Err(e) => return Err(e.context(format!("logs in {}", logs.display()))),
    };
    let json = serde_json::to_string_pretty(&summary)?;
    std::fs::write(out.join("summary.json"), &json)
        .with_context(|| format!("writing {}", out.join("summary.json").display()))?;
    if let Some(path) = &args.summary {
        std::fs::write(path, &json).with_context(|| format!("writing {}", path.display()))?;
    }
    print!("{}", view::summary(&summary));
    println!(
        "  wrote {} and {} (logs in {})",
        out.join("load.png").display(),
        out.join("summary.json").display(),
        logs.display()
    );
    Ok(())
}

fn copy_dir(from: &Path, to: &Path) -> Result<()> {
    std::fs::create_dir_all(to)?;
    for entry in std::fs::read_dir(from)? {
        let entry = entry?;
        std::fs::copy(entry.path(), to.join(entry.file_name()))?;
    }
    Ok(())
}

/// A host's loadgen and the reader of its output.
struct Loadgen {
    host: usize,
    process: Process,
    tail: LineTail,
    done: bool,
}

struct Demo<'a> {
    args: &'a DemoArgs,
    lab: &'a Lab,
    sanlb: &'a Path,
    loadgen: &'a Path,
    balancer: Balancer,
    out: &'a Path,
}

/// What the initiators told so far.
#[derive(Default)]
struct Initiators {
    /// Unix time of the start of the load: event times are made relative to it.
    t0_unix: f64,
    /// Latest totals per (host, target name).
    totals: BTreeMap<(usize, String), loadgen::Totals>,
    /// Every stall event.
    stalls: Vec<Stall>,
    /// Every reconnect: host, target name, seconds since the start.
    reconnects: Vec<(usize, String, f64)>,
    /// The (host, target) pairs whose fill is over.
    running: BTreeSet<(usize, String)>,
    /// Final lines per (host, target name): totals, blocks read back, wrong.
    finals: BTreeMap<(usize, String), (loadgen::Totals, u64, u64)>,
    /// Each host's loadgen start, Unix seconds (from its reports).
    started_unix: BTreeMap<usize, f64>,
    /// When the last initiator's I/O was over, seconds since the start.
    io_end_s: f64,
}

impl Initiators {
    fn read(&mut self, lg: &mut Loadgen) -> Result<()> {
        for line in lg.tail.read_lines()? {
            match loadgen::parse_line(&line)? {
                Event::Report {
                    target,
                    totals,
                    t,
                    unix,
                    ..
                } => {
                    self.started_unix.entry(lg.host).or_insert(unix - t);
                    self.totals.insert((lg.host, target), totals);
                }
                Event::Stall {
                    target,
                    start_unix,
                    duration_s,
                } => self.stalls.push(Stall {
                    host: lg.host,
                    target,
                    start_s: start_unix - self.t0_unix,
                    duration_s,
                }),
                Event::Reconnect { target, unix } => {
                    self.reconnects.push((lg.host, target, unix - self.t0_unix));
                }
                Event::Phase { target, phase } => {
                    if phase != "prefill" {
                        self.running.insert((lg.host, target));
                    }
                }
                Event::Final {
                    target,
                    t,
                    totals,
                    final_verified,
                    final_verify_errors,
                    ..
                } => {
                    if let Some(start) = self.started_unix.get(&lg.host) {
                        self.io_end_s = self.io_end_s.max(start + t - self.t0_unix);
                    }
                    self.totals
                        .insert((lg.host, target.clone()), totals.clone());
                    self.finals.insert(
                        (lg.host, target),
                        (totals, final_verified, final_verify_errors),
                    );
                }
            }
        }
        Ok(())
    }

    /// I/O errors, verify errors, reconnects, longest stall.
    fn io(&self) -> (u64, u64, u64, f64) {
        let t = self.totals.values();
        (
            t.clone().map(|x| x.errors).sum(),
            t.clone().map(|x| x.verify_errors).sum::<u64>()
                + self.finals.values().map(|f| f.2).sum::<u64>(),
            t.clone().map(|x| x.reconnects).sum(),
            t.map(|x| x.stall_max_s).fold(0.0, f64::max),
        )
    }

    /// The longest stall of `host` on `target` that spans `t`.
    fn stall_spanning(&self, host: usize, target: &str, t: f64) -> Option<f64> {
        self.stalls
            .iter()
            .filter(|s| s.host == host && s.target == target && s.spans(t))
            .map(|s| s.duration_s)
            .reduce(f64::max)
    }

    /// Fills in each move's stalls: a reconnect of a target belongs to the
    /// latest move of that target (of that host's pair, in pair mode) before
    /// it (within 10 s), and its stall is the one that spans it.
    fn attach_stalls(&self, moves: &mut [Move]) {
        for (host, target, at) in &self.reconnects {
            // The lab names hosts h1, h2, ..
            let name = format!("h{}", host + 1);
            let Some(m) = moves
                .iter_mut()
                .filter(|m| &m.target == target)
                .filter(|m| m.host.as_ref().is_none_or(|h| *h == name))
                .filter(|m| m.time_s() - 0.5 <= *at && *at - m.time_s() < 10.0)
                .max_by(|a, b| a.time_s().total_cmp(&b.time_s()))
            else {
                continue;
            };
            m.reconnects += 1;
            if let Some(stall) = self.stall_spanning(*host, target, *at) {
                m.stalls_s.push(stall);
            }
        }
        for m in moves {
            m.stall_s = m.stalls_s.iter().copied().reduce(f64::max);
        }
    }
}

/// The parts of `sanlb status --json` the demo reads.
#[derive(Deserialize)]
struct Status {
    generation: u64,
    #[serde(default)]
    map: Vec<StatusRoute>,
    #[serde(default)]
    rebalances: Vec<StatusRebalance>,
    #[serde(default)]
    data_addresses: Vec<StatusData>,
}

#[derive(Deserialize)]
struct StatusRoute {
    target: IpAddr,
    #[serde(default)]
    host: Option<IpAddr>,
    changed: u64,
}

#[derive(Deserialize)]
struct StatusData {
    target: IpAddr,
    address: IpAddr,
}

#[derive(Deserialize)]
struct StatusRebalance {
    at_ms: u64,
    generation: u64,
    trigger: String,
    adopted: bool,
    reason: String,
    moves: usize,
    var_norm_before: Option<f64>,
    var_norm_after: f64,
}

impl Demo<'_> {
    fn title(&self) -> String {
        format!(
            "sanlb lab demo: {} hosts, {} gateways, {} targets, skew {}, {:.1} MiB/s offered; balancer: {} ({} mode)",
            self.args.hosts(),
            self.args.gateways,
            self.args.targets(),
            self.args.skew,
            self.args.rate as f64 / MIB,
            self.balancer.name(),
            self.args.mode.name()
        )
    }

    fn controller_url(&self) -> String {
        format!("http://{}:{CONTROLLER_PORT}", lab::MANAGEMENT_ADDR)
    }

    fn token_file(&self) -> PathBuf {
        self.lab.dir().join("token")
    }

    /// The rate of each target (bytes/s), geometric from the lightest to
    /// `skew` times that, `rate` in total.
    fn target_rates(&self) -> Vec<f64> {
        let m = self.args.targets();
        let weights: Vec<f64> = (0..m)
            .map(|t| {
                if m == 1 {
                    1.0
                } else {
                    self.args.skew.powf(t as f64 / (m - 1) as f64)
                }
            })
            .collect();
        let sum: f64 = weights.iter().sum();
        weights
            .iter()
            .map(|w| w / sum * self.args.rate as f64)
            .collect()
    }

    fn run(&self) -> Result<Summary> {
        let mut controller = match self.balancer {
            Balancer::Controller => Some(self.start_controller()?),
            Balancer::None => None,
        };
        let mut agents: Vec<Process> = Vec::new();
        for (i, g) in self.lab.gateways().iter().enumerate() {
            if stopping() {
                bail!("interrupted");
            }
            agents.push(self.start_agent(g)?);
            // The skewed start with a controller: gw1 is the only gateway
            // alive at first, so every address goes to it; the others join
            // once it holds them all.
            if i == 0 && controller.is_some() {
                self.wait_all_on(&g.name)?;
            }
        }
        let mut loadgens = self.start_loadgens()?;
        let mut watch = Watch::new(self)?;
        let result = watch.run(&mut controller, &mut agents, &mut loadgens);
        // Loadgens first, agents and controller after: the last counters
        // must be read while the agents still run.
        drop(loadgens);
        drop(agents);
        drop(controller);
        result
    }

    fn start_controller(&self) -> Result<Process> {
        let token = format!("demo-{}-{}", std::process::id(), unix_now());
        std::fs::write(self.token_file(), token).context("writing the token file")?;
        let mgmt = self
            .lab
            .management()
            .context("the lab has no management namespace")?;
        let mut cmd = mgmt.ns.command(&self.sanlb.to_string_lossy());
        cmd.arg("controller")
            .args(["--listen", &format!("{}:{CONTROLLER_PORT}", mgmt.addr)])
            .arg("--state")
            .arg(self.lab.dir().join("controller-state.json"))
            .arg("--token-file")
            .arg(self.token_file())
            .args([
                "--interval",
                &format!("{}ms", self.args.interval.as_millis()),
            ])
            .args(["--lease", "3s"])
            // Rates over two intervals: the first rebalance after the other
            // gateways join comes within a few intervals.
            .args(["--window", "2"])
            .args([
                "--storage",
                &format!("{}/{}", lab::TARGET_NET.0, lab::TARGET_NET.1),
            ]);
        match self.args.mode {
            Mode::Target => {
                for t in self.lab.targets() {
                    cmd.args(["--target", &t.addr.to_string()]);
                }
            }
            Mode::Pair => {
                cmd.args(["--mode", "pair"]).args([
                    "--data-pool",
                    &format!("{}/{}", lab::DATA_NET.0, lab::DATA_NET.1),
                ]);
                for t in self.lab.targets() {
                    cmd.args(["--target", &format!("{}={}", t.addr, t.iqn)]);
                }
            }
        }
        let mut p = self.lab.spawn("controller", cmd)?;
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            if let Some(s) = p.try_status()? {
                bail!(
                    "sanlb controller exited ({}): {}",
                    proc::describe(s),
                    p.stderr().trim()
                );
            }
            if self.status().is_ok() {
                return Ok(p);
            }
            if Instant::now() > deadline {
                bail!(
                    "sanlb controller does not answer at {}",
                    self.controller_url()
                );
            }
            thread::sleep(Duration::from_millis(100));
        }
    }

    /// `sanlb status --json` from the management namespace.
    fn status(&self) -> Result<Status> {
        let mgmt = self
            .lab
            .management()
            .context("the lab has no management namespace")?;
        let mut cmd = mgmt.ns.command(&self.sanlb.to_string_lossy());
        cmd.args(["status", "--controller", &self.controller_url(), "--json"])
            .arg("--token-file")
            .arg(self.token_file());
        let out = proc::run(&mut cmd)?;
        serde_json::from_str(&out).context("parsing sanlb status --json")
    }

    /// Waits until `gw` holds every target address (in pair mode: runs
    /// every portal and holds its data addresses, so that every host is
    /// sent to it first).
    fn wait_all_on(&self, gw: &str) -> Result<()> {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let placement = self.lab.placement()?;
            let data_ready = self.args.mode == Mode::Target || {
                let held = self.lab.gateway(gw)?.ns.ipv4_addresses(NIC)?;
                let data = self.data_map().unwrap_or_default();
                data.len() == self.args.targets() && data.keys().all(|d| held.contains(d))
            };
            if placement.values().all(|owners| owners == &[gw.to_owned()]) && data_ready {
                return Ok(());
            }
            if Instant::now() > deadline || stopping() {
                bail!("the controller did not place every target on {gw} in 30 s: {placement:?}");
            }
            thread::sleep(Duration::from_millis(200));
        }
    }

    /// Pair mode: each data address's target, from the controller.
    fn data_map(&self) -> Result<BTreeMap<Ipv4Addr, Ipv4Addr>> {
        Ok(self
            .status()?
            .data_addresses
            .into_iter()
            .filter_map(|d| match (d.address, d.target) {
                (IpAddr::V4(a), IpAddr::V4(t)) => Some((a, t)),
                _ => None,
            })
            .collect())
    }

    fn start_agent(&self, g: &lab::Gateway) -> Result<Process> {
        let mut extra: Vec<String> = Vec::new();
        if self.args.mode == Mode::Pair {
            // The portal's logins and the sessions on the data port.
            for port in ["3260", "3261"] {
                extra.extend(["--port".into(), port.into()]);
            }
        }
        if self.balancer == Balancer::Controller {
            extra.extend(["--controller".into(), self.controller_url()]);
            extra.extend(["--gateway".into(), g.name.clone()]);
            extra.extend([
                "--token-file".into(),
                self.token_file().to_string_lossy().into_owned(),
            ]);
            extra.extend(["--interval".into(), "1s".into()]);
        }
        agent::start(self.lab, self.sanlb, g, &extra)
    }

    fn start_loadgens(&self) -> Result<Vec<Loadgen>> {
        let rates = self.target_rates();
        let n = self.args.hosts() as f64;
        let mut out = Vec::new();
        for (h, host) in self.lab.hosts().iter().enumerate() {
            let workloads: Vec<Workload> = self
                .lab
                .targets()
                .iter()
                .zip(&rates)
                .map(|(t, r)| Workload {
                    rate: Some((r / n).max(16384.0) as u64),
                    lba: h as u64 * REGION_BLOCKS,
                    blocks: Some(REGION_BLOCKS),
                    verify: true,
                    ..Workload::new(t)
                })
                .collect();
            let mut cmd = loadgen::command(
                self.loadgen,
                host,
                &workloads,
                self.args.duration,
                h as u64 + 1,
            );
            // A pair's move stalls its I/O for less than 20 ms: in pair mode
            // every gap from 5 ms on is reported, so that the moves' are seen
            // (and the baseline is measured alike).
            cmd.args(["--stall-event", &self.args.stall_threshold().to_string()]);
            let process = self.lab.spawn(&format!("loadgen-{}", host.name), cmd)?;
            let tail = LineTail::new(process.stdout_path());
            out.push(Loadgen {
                host: h,
                process,
                tail,
                done: false,
            });
        }
        Ok(out)
    }

    /// What every gateway counted, its NIC and who holds each target
    /// address; `data` maps pair mode's data addresses to their targets.
    fn sample(&self, t: f64, data: &BTreeMap<Ipv4Addr, Ipv4Addr>) -> Result<Sample> {
        let mut s = Sample {
            t,
            ..Sample::default()
        };
        let k = self.lab.gateways().len();
        for (gi, g) in self.lab.gateways().iter().enumerate() {
            let flows = agent::counters(self.sanlb, g)?;
            let mut total = 0;
            for f in flows {
                let (IpAddr::V4(i), IpAddr::V4(tg)) = (f.initiator, f.target) else {
                    continue;
                };
                let tg = data.get(&tg).copied().unwrap_or(tg);
                let b = f.to_target_bytes + f.to_initiator_bytes;
                total += b;
                s.pair_gateway_bytes
                    .entry((i, tg))
                    .or_insert_with(|| vec![0; k])[gi] += b;
                *s.pair_bytes.entry((i, tg)).or_default() += b;
                *s.pair_data_bytes.entry((i, tg)).or_default() +=
                    f.read_requested_bytes + f.write_requested_bytes;
            }
            s.gateway_bytes.push(total);
            let link = g.ns.link_stats(NIC)?;
            s.veth_bytes.push(link.rx_bytes + link.tx_bytes);
        }
        let placement = self.lab.placement()?;
        for t in self.lab.targets() {
            let owners = &placement[&t.addr];
            s.owners.push(
                owners
                    .first()
                    .and_then(|o| self.lab.gateways().iter().position(|g| &g.name == o)),
            );
        }
        Ok(s)
    }

    /// The `iscsi-perf` command: from the first host against the first
    /// target, an independent libiscsi reader through whatever gateway owns
    /// it then.
    fn iscsi_perf_command(&self) -> Command {
        let h = &self.lab.hosts()[0];
        let t = &self.lab.targets()[0];
        let mut cmd = h.ns.command("timeout");
        cmd.args(["15", "iscsi-perf", "-i", &format!("{}-perf", h.initiator)])
            .args(["-t", &PERF_SECONDS.to_string(), "-m", "4"])
            .args(["-b", &PERF_BLOCKS.to_string(), "-x", "3", &t.url()]);
        cmd
    }
}

/// What `iscsi-perf` did, in the demo's unit: it prints "MB/s" for what is
/// MiB/s (IOPS × 16 KiB / 2^20), so the rate is computed from its IOPS.
fn iscsi_perf_result(target: &str, out: Result<Output>) -> String {
    let o = match out {
        Ok(o) => o,
        Err(e) => return format!("{target}: {e:#}"),
    };
    // It redraws its progress line with \r; the last one has the average.
    let text =
        String::from_utf8_lossy(&o.stdout).into_owned() + &String::from_utf8_lossy(&o.stderr);
    let iops = text.split(['\r', '\n']).rev().find_map(|l| {
        l.split("iops average")
            .nth(1)?
            .split_whitespace()
            .next()?
            .parse::<f64>()
            .ok()
    });
    let status = proc::describe(o.status);
    match iops {
        Some(iops) => format!(
            "{target} ({status}): {iops:.0} IOPS of {} KiB = {:.1} MiB/s",
            PERF_BLOCKS * 512 / 1024,
            iops * (PERF_BLOCKS * 512) as f64 / MIB
        ),
        None => format!(
            "{target} ({status}): {}",
            text.lines()
                .rfind(|l| !l.trim().is_empty())
                .unwrap_or("")
                .trim()
        ),
    }
}

/// The run as the demo watches it: a tick every second.
struct Watch<'a> {
    demo: &'a Demo<'a>,
    t0: Instant,
    tty: bool,
    names: Vec<String>,
    title: String,
    next_tick: f64,
    samples: Vec<Sample>,
    known: Vec<Option<usize>>,
    /// Pair mode: the gateway each (host, target) runs through.
    carriers: BTreeMap<(usize, usize), usize>,
    /// Pair mode: data address → target.
    data: BTreeMap<Ipv4Addr, Ipv4Addr>,
    moves: Vec<Move>,
    init: Initiators,
    generation: u64,
    /// The generation in which each route last changed: (host in pair
    /// mode, target).
    changed: BTreeMap<(Option<Ipv4Addr>, Ipv4Addr), u64>,
    /// Every rebalance adopted, by (Unix ms, generation).
    rebalances: BTreeMap<(u64, u64), StatusRebalance>,
    t0_unix: f64,
    phases: Phases,
    reader: Option<String>,
    /// The sample when the initiators were done (before iscsi-perf, which
    /// reads from the first host too).
    initiators_done: Option<Sample>,
}

impl<'a> Watch<'a> {
    fn new(demo: &'a Demo<'a>) -> Result<Self> {
        let t0 = Instant::now();
        let t0_unix = unix_now();
        let data = match (demo.args.mode, demo.balancer) {
            (Mode::Pair, Balancer::Controller) => demo.data_map()?,
            _ => BTreeMap::new(),
        };
        let first = demo.sample(0.0, &data)?;
        Ok(Watch {
            demo,
            t0,
            tty: std::io::stdout().is_terminal(),
            names: demo.lab.gateways().iter().map(|g| g.name.clone()).collect(),
            title: demo.title(),
            next_tick: 1.0,
            known: first.owners.clone(),
            carriers: BTreeMap::new(),
            data,
            samples: vec![first],
            moves: Vec::new(),
            init: Initiators {
                t0_unix,
                ..Initiators::default()
            },
            generation: 0,
            changed: BTreeMap::new(),
            rebalances: BTreeMap::new(),
            t0_unix,
            phases: Phases::default(),
            reader: None,
            initiators_done: None,
        })
    }

    fn now(&self) -> f64 {
        self.t0.elapsed().as_secs_f64()
    }

    /// The load, the read-back, the independent reader, the controller's
    /// stop and a last sample; then the summary.
    fn run(
        &mut self,
        controller: &mut Option<Process>,
        agents: &mut [Process],
        loadgens: &mut [Loadgen],
    ) -> Result<Summary> {
        let duration = self.demo.args.duration.as_secs_f64();
        self.phases.prefill_end_s = duration;
        while self.now() < duration {
            self.tick(Phase::Load, controller, agents, loadgens)?;
        }
        self.phases.load_end_s = duration;

        eprintln!("demo: load done; the initiators read back and check what they wrote");
        let deadline = Instant::now() + Duration::from_secs(120);
        while loadgens.iter().any(|lg| !lg.done) {
            if Instant::now() > deadline {
                bail!("the loadgens did not finish within 120 s of the load");
            }
            self.tick(Phase::ReadBack, controller, agents, loadgens)?;
        }
        // The loadgens log out after their I/O, which takes a few seconds:
        // the read-back is over when their last I/O is.
        self.phases.readback_end_s = if self.init.io_end_s > duration {
            self.init.io_end_s
        } else {
            self.now()
        };
        self.initiators_done = self.samples.last().cloned();

        eprintln!(
            "demo: iscsi-perf reads {} for {PERF_SECONDS} s",
            self.demo.lab.targets()[0].name
        );
        let mut cmd = self.demo.iscsi_perf_command();
        let target = self.demo.lab.targets()[0].name.clone();
        self.phases.reader_start_s = self.now();
        let perf = thread::spawn(move || proc::output_timeout(&mut cmd, Duration::from_secs(20)));
        while !perf.is_finished() {
            self.tick(Phase::Reader, controller, agents, loadgens)?;
        }
        self.phases.reader_end_s = self.now();
        // One more interval: the controller decides on the burst too.
        if controller.is_some() {
            let until = self.now() + self.demo.args.interval.as_secs_f64() + 0.5;
            while self.now() < until {
                self.tick(Phase::After, controller, agents, loadgens)?;
            }
        }
        let out = perf
            .join()
            .unwrap_or_else(|_| Err(anyhow::anyhow!("iscsi-perf's thread panicked")));
        self.reader = Some(iscsi_perf_result(&target, out));

        // No decision after this; a last sample shows where the addresses
        // stay.
        if let Some(mut c) = controller.take() {
            self.status()?;
            c.stop(Duration::from_secs(5))?;
            self.phases.controller_stop_s = Some(self.now());
        }
        self.tick(Phase::After, controller, agents, loadgens)?;
        self.phases.end_s = self.samples.last().map_or(0.0, |s| s.t);
        Ok(self.finish())
    }

    /// Polls the controller: generation, route changes, adopted rebalances.
    fn status(&mut self) -> Result<()> {
        let status = self.demo.status()?;
        self.generation = status.generation;
        for r in status.map {
            let host = match r.host {
                Some(IpAddr::V4(h)) => Some(h),
                _ => None,
            };
            if let IpAddr::V4(a) = r.target {
                self.changed.insert((host, a), r.changed);
            }
        }
        for d in status.data_addresses {
            if let (IpAddr::V4(a), IpAddr::V4(t)) = (d.address, d.target) {
                self.data.insert(a, t);
            }
        }
        for r in status.rebalances {
            if r.adopted && r.moves > 0 {
                self.rebalances.insert((r.at_ms, r.generation), r);
            }
        }
        Ok(())
    }

    fn rebalance(&self, r: &StatusRebalance) -> Rebalance {
        let at_s = r.at_ms as f64 / 1000.0 - self.t0_unix;
        Rebalance {
            at_s,
            phase: self.phase_at(at_s),
            generation: r.generation,
            trigger: r.trigger.clone(),
            reason: r.reason.clone(),
            moves: r.moves,
            var_norm_before: r.var_norm_before,
            var_norm_after: r.var_norm_after,
        }
    }

    /// The phase of a moment of the run (by the phases known so far).
    fn phase_at(&self, t: f64) -> Phase {
        let p = &self.phases;
        if p.load_end_s == 0.0 || t < p.load_end_s {
            Phase::Load
        } else if p.reader_start_s == 0.0 || t < p.reader_start_s {
            Phase::ReadBack
        } else if p.reader_end_s == 0.0 || t < p.reader_end_s {
            Phase::Reader
        } else {
            Phase::After
        }
    }

    fn tick(
        &mut self,
        phase: Phase,
        controller: &mut Option<Process>,
        agents: &mut [Process],
        loadgens: &mut [Loadgen],
    ) -> Result<()> {
        if stopping() {
            bail!("interrupted");
        }
        thread::sleep(Duration::from_secs_f64(self.next_tick).saturating_sub(self.t0.elapsed()));
        self.next_tick += 1.0;
        for p in agents.iter_mut().chain(controller.iter_mut()) {
            if let Some(s) = p.try_status()? {
                bail!(
                    "{} exited ({}): {}",
                    p.name(),
                    proc::describe(s),
                    p.stderr().trim()
                );
            }
        }
        for lg in loadgens.iter_mut() {
            if lg.done {
                continue;
            }
            let status = lg.process.try_status()?;
            self.init.read(lg)?;
            match status {
                None => {}
                Some(s) if s.success() || s.code() == Some(1) => lg.done = true,
                Some(s) => bail!(
                    "the loadgen of host {} failed ({}): {}",
                    lg.host + 1,
                    proc::describe(s),
                    lg.process.stderr().trim()
                ),
            }
        }
        let n_pairs = self.demo.args.hosts() * self.demo.args.targets();
        let t = self.now();
        if phase == Phase::Load
            && self.init.running.len() == n_pairs
            && self.phases.prefill_end_s > t
        {
            self.phases.prefill_end_s = t;
        }
        let s = self.demo.sample(t, &self.data)?;
        if controller.is_some() {
            // A status that fails once (a busy moment) is taken next tick.
            let _ = self.status();
        }
        // The sample ends before the status is read: a move in it was
        // decided before now.
        let seen = self.now();
        let decision = |w: &Self| {
            w.rebalances
                .values()
                .rfind(|r| r.at_ms as f64 / 1000.0 - w.t0_unix <= seen)
                .map(|r| w.rebalance(r))
        };
        // Pair mode: a pair moved when its bytes go through another gateway.
        if self.demo.args.mode == Mode::Pair
            && let Some(prev) = self.samples.last()
        {
            for ((h, tg), to) in metrics::carriers(prev, &s) {
                let Some(to) = to else { continue };
                let hi = self.demo.lab.hosts().iter().position(|x| x.addr == h);
                let ti = self.demo.lab.targets().iter().position(|x| x.addr == tg);
                let (Some(hi), Some(ti)) = (hi, ti) else {
                    continue;
                };
                let from = self.carriers.insert((hi, ti), to);
                if from.is_none_or(|f| f == to) {
                    continue;
                }
                let target = &self.demo.lab.targets()[ti];
                let m = Move {
                    at_s: t,
                    phase,
                    target: target.name.clone(),
                    host: Some(self.demo.lab.hosts()[hi].name.clone()),
                    addr: target.addr,
                    from: from.map(|g| self.names[g].clone()),
                    to: Some(self.names[to].clone()),
                    generation: self
                        .changed
                        .get(&(Some(h), target.addr))
                        .copied()
                        .unwrap_or(self.generation),
                    decision: decision(self),
                    reconnects: 0,
                    stalls_s: Vec::new(),
                    stall_s: None,
                };
                if !self.tty {
                    println!("move: {}", view::move_line(&m));
                }
                self.moves.push(m);
            }
        }
        // Break before make: an address may be on no gateway for a moment;
        // a move is a new owner, not the gap. (In pair mode the addresses
        // are the portals: the pairs' moves are above.)
        for (i, b) in s.owners.iter().enumerate() {
            if self.demo.args.mode == Mode::Pair {
                break;
            }
            if b.is_none() || *b == self.known[i] {
                continue;
            }
            let target = &self.demo.lab.targets()[i];
            let decision = decision(self);
            let m = Move {
                at_s: t,
                phase,
                target: target.name.clone(),
                host: None,
                addr: target.addr,
                from: self.known[i].map(|g| self.names[g].clone()),
                to: b.map(|g| self.names[g].clone()),
                generation: self
                    .changed
                    .get(&(None, target.addr))
                    .copied()
                    .unwrap_or(self.generation),
                decision,
                reconnects: 0,
                stalls_s: Vec::new(),
                stall_s: None,
            };
            self.known[i] = *b;
            if !self.tty {
                println!("move: {}", view::move_line(&m));
            }
            self.moves.push(m);
        }
        self.samples.push(s);
        self.show(phase);
        Ok(())
    }

    /// The view: loads over the last second, balance over the last interval.
    fn show(&self, phase: Phase) {
        let n = self.samples.len();
        let (a, b) = (&self.samples[n - 2], &self.samples[n - 1]);
        let dt = b.t - a.t;
        let loads = metrics::rates(&a.gateway_bytes, &b.gateway_bytes, dt);
        let veth = metrics::rates(&a.veth_bytes, &b.veth_bytes, dt);
        let interval = self.demo.args.interval.as_secs_f64();
        let balance = Balance::of(&self.samples, (b.t - interval).max(0.0), b.t);
        // What each gateway carries: its targets, or in pair mode its pairs
        // (and the portals it runs, in brackets).
        let owned: Vec<Vec<String>> = (0..self.names.len())
            .map(|g| {
                let targets = b
                    .owners
                    .iter()
                    .enumerate()
                    .filter(|(_, o)| **o == Some(g))
                    .map(|(i, _)| self.demo.lab.targets()[i].name.clone());
                match self.demo.args.mode {
                    Mode::Target => targets.collect(),
                    Mode::Pair => self
                        .carriers
                        .iter()
                        .filter(|(_, c)| **c == g)
                        .map(|((h, t), _)| {
                            format!(
                                "{}→{}",
                                self.demo.lab.hosts()[*h].name,
                                self.demo.lab.targets()[*t].name
                            )
                        })
                        .chain(targets.map(|t| format!("[{t}]")))
                        .collect(),
                }
            })
            .collect();
        if self.tty {
            let frame = view::Frame {
                title: &self.title,
                phase: phase.name(),
                elapsed: b.t,
                duration: self.demo.args.duration.as_secs_f64(),
                generation: self.generation,
                gateways: &self.names,
                loads: &loads,
                veth: &veth,
                balance: balance.as_ref(),
                scale: self.demo.args.rate as f64,
                owned: &owned,
                moves: &self.moves,
                io: self.init.io(),
            };
            print!("\x1b[H\x1b[2J{}", view::render(&frame));
        } else {
            println!(
                "t={:>5.1}s {:<10} gen={} var_norm={:.4} max/mean={:.2} loads={} MiB/s io_errors={}",
                b.t,
                phase.name(),
                self.generation,
                balance.as_ref().map_or(f64::NAN, |x| x.var_norm),
                balance.as_ref().map_or(f64::NAN, |x| x.max_mean),
                loads
                    .iter()
                    .map(|l| format!("{:.2}", l / MIB))
                    .collect::<Vec<_>>()
                    .join("/"),
                self.init.io().0
            );
        }
        let _ = std::io::stdout().flush();
    }

    fn finish(&mut self) -> Summary {
        let interval = self.demo.args.interval.as_secs_f64();
        let duration = self.phases.load_end_s;
        let done = match &self.initiators_done {
            Some(s) => s.clone(),
            None => self.samples.last().expect("samples").clone(),
        };
        let bytes = self.demo.bytes_check(&done, &self.init);
        // Now that the phases are known, each event goes into its own.
        let rebalances: Vec<Rebalance> = self
            .rebalances
            .values()
            .map(|r| self.rebalance(r))
            .collect();
        let mut moves = std::mem::take(&mut self.moves);
        for m in &mut moves {
            m.phase = self.phase_at(m.time_s());
            if let Some(d) = &mut m.decision {
                d.phase = self.phase_at(d.at_s);
            }
        }
        self.init.attach_stalls(&mut moves);
        let mut stalls = metrics::stalls(
            &self.init.stalls,
            &self.init.reconnects,
            &self.phases,
            &moves,
        );
        stalls.threshold_s = self.demo.args.stall_threshold();
        let io = self.init.io();
        let in_load: Vec<&Move> = moves.iter().filter(|m| m.phase == Phase::Load).collect();
        // The load's figures end a second early: the last second may already
        // hold the initiators' read-back.
        let end = duration - 1.0;
        let load: Vec<Sample> = self
            .samples
            .iter()
            .filter(|s| s.t <= end)
            .cloned()
            .collect();
        let first_move = in_load.first().map_or(end, |m| m.time_s());
        // Before: from when the fill is surely over to the first move (or
        // the first interval).
        let before_to = first_move.min(interval).max(2.0);
        let before = Balance::of(&load, (before_to - 3.0).max(1.0), before_to).unwrap_or_default();
        let after = Balance::of(&load, (end - interval).max(0.0), end).unwrap_or_default();
        let finals = self.init.finals.values();
        let summary = Summary {
            before,
            after,
            moves: moves.len(),
            moves_in_load: in_load.len(),
            converge_s: in_load.last().map_or(0.0, |m| m.time_s()),
            balanced_s: metrics::balanced_since(&load, interval, BALANCED),
            io_errors: io.0,
            max_stall_s: moves.iter().filter_map(|m| m.stall_s).fold(0.0, f64::max),
            stalls,
            verify_errors: io.1,
            verified_blocks: finals.clone().map(|f| f.1).sum(),
            reconnects: io.2,
            generation: self.generation,
            balancer: self.demo.balancer.name().to_owned(),
            mode: self.demo.args.mode.name().to_owned(),
            move_log: moves,
            rebalances,
            phases: self.phases.clone(),
            bytes,
            iscsi_perf: self.reader.clone(),
            shape: Shape {
                hosts: self.demo.args.hosts(),
                gateways: self.demo.args.gateways,
                targets: self.demo.args.targets(),
                duration_s: duration,
                skew: self.demo.args.skew,
                rate: self.demo.args.rate,
                interval_s: interval,
            },
        };
        let png = self.demo.out.join("load.png");
        let input = plot::Input {
            samples: &self.samples,
            gateways: &self.names,
            moves: &summary.move_log,
            phases: &self.phases,
            interval,
            balanced: BALANCED,
        };
        match plot::draw(&png, &input) {
            Ok(true) => {}
            Ok(false) => eprintln!(
                "demo: no font found, {} has no text; gateways in order: {}",
                png.display(),
                plot::STYLES
                    .iter()
                    .map(|c| c.0)
                    .take(self.names.len())
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
            Err(e) => eprintln!("demo: {e:#}"),
        }
        summary
    }
}

impl Demo<'_> {
    fn bytes_check(&self, last: &Sample, init: &Initiators) -> BytesCheck {
        let mut check = BytesCheck::default();
        for ((h, name), (totals, _, _)) in &init.finals {
            let host = self.lab.hosts()[*h].addr;
            let Some(target) = self.lab.targets().iter().find(|t| &t.name == name) else {
                continue;
            };
            let key = (host, target.addr);
            check.add(
                format!("{}→{}", self.lab.hosts()[*h].name, target.name),
                totals.read_bytes + totals.write_bytes,
                last.pair_bytes.get(&key).copied().unwrap_or(0),
                last.pair_data_bytes.get(&key).copied().unwrap_or(0),
            );
        }
        check
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_durations_and_sizes() {
        assert_eq!(parse_duration("60s"), Ok(Duration::from_secs(60)));
        assert_eq!(parse_duration("2m"), Ok(Duration::from_secs(120)));
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration("1.5"), Ok(Duration::from_millis(1500)));
        assert!(parse_duration("soon").is_err());
        assert!(parse_duration("-1s").is_err());
        assert_eq!(parse_size("24M"), Ok(24 << 20));
        assert_eq!(parse_size("500k"), Ok(500 << 10));
        assert_eq!(parse_size("100"), Ok(100));
        assert!(parse_size("lots").is_err());
    }

    #[test]
    fn reconnects_find_their_move_and_its_stall() {
        let mv = |target: &str, at_s: f64| Move {
            at_s,
            phase: Phase::Load,
            target: target.into(),
            host: None,
            addr: Ipv4Addr::new(198, 18, 1, 1),
            from: Some("gw1".into()),
            to: Some("gw2".into()),
            generation: 4,
            decision: None,
            reconnects: 0,
            stalls_s: Vec::new(),
            stall_s: None,
        };
        let stall = |host, target: &str, start_s, duration_s| Stall {
            host,
            target: target.into(),
            start_s,
            duration_s,
        };
        let init = Initiators {
            stalls: vec![
                stall(0, "t1", 5.1, 0.22),
                stall(1, "t1", 5.2, 0.09), // ordinary: spans no reconnect
                stall(1, "t1", 5.3, 0.15),
                stall(0, "t1", 20.0, 0.4),
                stall(0, "t2", 5.1, 9.0),
            ],
            reconnects: vec![
                (0, "t1".into(), 5.3),
                (1, "t1".into(), 5.4),
                (0, "t1".into(), 20.2),
                (2, "t1".into(), 5.5), // no stall of 20 ms or more
            ],
            ..Initiators::default()
        };
        let mut moves = vec![mv("t1", 5.0), mv("t1", 19.5), mv("t3", 5.0)];
        init.attach_stalls(&mut moves);
        assert_eq!(moves[0].stalls_s, [0.22, 0.15]);
        assert_eq!(moves[0].stall_s, Some(0.22));
        assert_eq!(moves[0].reconnects, 3);
        assert_eq!((moves[1].reconnects, moves[1].stall_s), (1, Some(0.4)));
        assert_eq!((moves[2].reconnects, moves[2].stall_s), (0, None));
        // Reconnects whose gaps were all short: a move that stalled no one.
        let quiet = Initiators {
            reconnects: vec![(2, "t1".into(), 5.5)],
            ..Initiators::default()
        };
        let mut moves = vec![mv("t1", 5.0)];
        quiet.attach_stalls(&mut moves);
        assert_eq!((moves[0].reconnects, moves[0].stall_s), (1, None));
    }

    #[test]
    fn iscsi_perf_rates_are_computed_in_mib() {
        use std::os::unix::process::ExitStatusExt as _;
        let out = Output {
            status: std::process::ExitStatus::from_raw(0),
            stdout: b"iops average 25000 (390 MB/s)\r iops average 25698 (401 MB/s)\n".to_vec(),
            stderr: Vec::new(),
        };
        assert_eq!(
            iscsi_perf_result("t1", Ok(out)),
            "t1 (exit 0): 25698 IOPS of 16 KiB = 401.5 MiB/s"
        );
        assert!(iscsi_perf_result("t1", Err(anyhow::anyhow!("boom"))).contains("boom"));
    }
}
