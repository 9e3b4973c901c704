//! `cargo xtask demo`: a skewed IP SAN in network namespaces balances itself
//! while you watch.
//!
//! The lab ([`xtask::lab`]): n hosts, k gateways each running tgtd over the
//! same backing files (m targets), a `sanlb agent` on every gateway's
//! host-facing veth, every target address starting on gw1. Each host runs a
//! `sanlb-loadgen` over all targets with skewed rates (the busiest target
//! `--skew` times the lightest), writing and verifying as it goes.
//!
//! Who moves addresses (`--balancer`):
//! - `controller`: `sanlb controller` in a management namespace; the agents
//!   report to it and enforce its map (add the /32, announce it, drop it).
//! - `plan`: until the controller is there, the demo plays its part: every
//!   interval it turns the agents' counters into a problem for `sanlb plan`
//!   and moves the addresses the way the agents would (del, add, gratuitous
//!   ARP) when the plan lowers the cost enough.
//! - `none`: only count; the skew stays.
//! - `auto` (default): `controller` if this sanlb has it, else `plan`, else
//!   `none`.
//!
//! The terminal shows per-gateway load bars, the moves, var_norm and the
//! generation every second; the end prints a summary (also as JSON with
//! `--summary`) and writes `load.png` and `summary.json` into the output
//! folder. Everything is removed at the end, on Ctrl-C and on failure.

mod metrics;
mod plot;
mod view;

use std::{
    collections::BTreeMap,
    io::{IsTerminal as _, Write as _},
    net::{IpAddr, Ipv4Addr},
    path::{Path, PathBuf},
    process::Command,
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

use self::metrics::{Balance, BytesCheck, Move, Sample, Shape, Summary};
use crate::util;

/// The controller's port in the management namespace.
const CONTROLLER_PORT: u16 = 7878;
/// How far max/mean may be from 1 for the map to count as balanced.
const BALANCED: f64 = 1.10;
/// A new plan is adopted when it lowers w_var·var_norm + w_change·moves by
/// at least this much (the controller's default hysteresis).
const MIN_GAIN: f64 = 0.02;
/// Each (host, target) writes and verifies its own 2 MiB of the LUN.
const REGION_BLOCKS: u64 = 4096;
/// Size of every LUN.
const DISK_SIZE: u64 = 64 << 20;

/// Arguments of `cargo xtask demo`.
#[derive(clap::Args, Debug)]
pub struct DemoArgs {
    /// Hosts (iSCSI initiators).
    #[arg(long, default_value_t = 4)]
    hosts: usize,
    /// Gateways (tgtd + sanlb agent each).
    #[arg(long, default_value_t = 3)]
    gateways: usize,
    /// Targets (storage entities, one address each).
    #[arg(long, default_value_t = 6)]
    targets: usize,
    /// How long the load runs: 45s, 90s, 2m.
    #[arg(long, default_value = "45s", value_parser = parse_duration)]
    duration: Duration,
    /// Rate of the busiest target over the lightest (rates grow geometrically).
    #[arg(long, default_value_t = 3.0)]
    skew: f64,
    /// Load offered by all hosts together, bytes per second (k, M, G).
    #[arg(long, default_value = "24M", value_parser = parse_size)]
    rate: u64,
    /// Rebalance period.
    #[arg(long, default_value = "5s", value_parser = parse_duration)]
    interval: Duration,
    /// Who moves the addresses.
    #[arg(long, value_enum, default_value_t = BalancerArg::Auto)]
    balancer: BalancerArg,
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

/// `--balancer`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
enum BalancerArg {
    /// The controller if sanlb has one, else plan, else none.
    Auto,
    /// sanlb controller + agents that enforce its map.
    Controller,
    /// The demo runs `sanlb plan` on the agents' counters and moves addresses.
    Plan,
    /// Count only.
    None,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Balancer {
    Controller,
    Plan,
    None,
}

impl Balancer {
    fn name(self) -> &'static str {
        match self {
            Balancer::Controller => "controller",
            Balancer::Plan => "plan",
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
    if !(1..=32).contains(&args.hosts) {
        bail!("--hosts must be 1..=32");
    }
    if !(2..=16).contains(&args.gateways) {
        bail!("--gateways must be 2..=16");
    }
    if !(1..=64).contains(&args.targets) {
        bail!("--targets must be 1..=64");
    }
    if args.skew.is_nan() || args.skew < 1.0 {
        bail!("--skew must be at least 1");
    }
    if args.duration < Duration::from_secs(10) || args.interval < Duration::from_secs(1) {
        bail!("--duration must be at least 10s and --interval at least 1s");
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

    let balancer = match args.balancer {
        BalancerArg::Controller => Balancer::Controller,
        BalancerArg::Plan => Balancer::Plan,
        BalancerArg::None => Balancer::None,
        BalancerArg::Auto if agent::has_subcommand(&sanlb, "controller") => Balancer::Controller,
        BalancerArg::Auto if agent::has_subcommand(&sanlb, "plan") => Balancer::Plan,
        BalancerArg::Auto => Balancer::None,
    };
    for needed in match balancer {
        Balancer::Controller => &["controller", "status"][..],
        Balancer::Plan => &["plan"][..],
        Balancer::None => &[][..],
    } {
        if !agent::has_subcommand(&sanlb, needed) {
            bail!(
                "--balancer {} needs `sanlb {needed}`, which this sanlb does not have",
                balancer.name()
            );
        }
    }

    // SAFETY: the handler only stores to an atomic, which is async-signal-safe.
    unsafe {
        libc::signal(libc::SIGINT, on_signal as *const () as libc::sighandler_t);
        libc::signal(libc::SIGTERM, on_signal as *const () as libc::sighandler_t);
    }

    eprintln!(
        "demo: building the lab: {} hosts, {} gateways, {} targets (leftovers of killed runs are removed first)",
        args.hosts, args.gateways, args.targets
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
        .hosts(args.hosts)
        .gateways(args.gateways)
        .targets(args.targets)
        .disk_size(DISK_SIZE)
        .placement(placement)
        .management(balancer == Balancer::Controller)
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
    /// Latest totals per (host, target name).
    totals: BTreeMap<(usize, String), loadgen::Totals>,
    /// Stall events: target name, start (Unix seconds), length.
    stalls: Vec<(String, f64, f64)>,
    /// Final lines per (host, target name): totals, blocks read back, wrong.
    finals: BTreeMap<(usize, String), (loadgen::Totals, u64, u64)>,
}

impl Initiators {
    fn read(&mut self, lg: &mut Loadgen) -> Result<()> {
        for line in lg.tail.read_lines()? {
            match loadgen::parse_line(&line)? {
                Event::Report { target, totals, .. } => {
                    self.totals.insert((lg.host, target), totals);
                }
                Event::Stall {
                    target,
                    start_unix,
                    duration_s,
                } => self.stalls.push((target, start_unix, duration_s)),
                Event::Final {
                    target,
                    totals,
                    final_verified,
                    final_verify_errors,
                    ..
                } => {
                    self.totals
                        .insert((lg.host, target.clone()), totals.clone());
                    self.finals.insert(
                        (lg.host, target),
                        (totals, final_verified, final_verify_errors),
                    );
                }
                Event::Reconnect { .. } | Event::Phase { .. } => {}
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

    /// The longest stall on `target` that began near `at` (Unix seconds).
    fn stall_near(&self, target: &str, at: f64) -> Option<f64> {
        self.stalls
            .iter()
            .filter(|(t, start, _)| t == target && (*start - at).abs() <= 2.0)
            .map(|s| s.2)
            .reduce(f64::max)
    }
}

impl Demo<'_> {
    fn title(&self) -> String {
        format!(
            "sanlb lab demo: {} hosts, {} gateways, {} targets, skew {}, {:.1} MB/s offered; balancer: {}",
            self.args.hosts,
            self.args.gateways,
            self.args.targets,
            self.args.skew,
            self.args.rate as f64 / 1e6,
            self.balancer.name()
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
        let m = self.args.targets;
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
        let mut procs: Vec<Process> = Vec::new();
        if self.balancer == Balancer::Controller {
            procs.push(self.start_controller()?);
        }
        for (i, g) in self.lab.gateways().iter().enumerate() {
            if stopping() {
                bail!("interrupted");
            }
            procs.push(self.start_agent(g)?);
            // The skewed start with a controller: gw1 is the only gateway
            // alive at first, so every address goes to it; the others join
            // once it holds them all.
            if i == 0 && self.balancer == Balancer::Controller {
                self.wait_all_on(&g.name)?;
            }
        }
        let mut loadgens = self.start_loadgens()?;
        let t0 = Instant::now();
        let result = self.watch(t0, &mut procs, &mut loadgens);
        // Loadgens first, agents and controller after: the last counters
        // must be read while the agents still run.
        drop(loadgens);
        drop(procs);
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
        for t in self.lab.targets() {
            cmd.args(["--target", &t.addr.to_string()]);
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
    fn status(&self) -> Result<serde_json::Value> {
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

    fn wait_all_on(&self, gw: &str) -> Result<()> {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let placement = self.lab.placement()?;
            if placement.values().all(|owners| owners == &[gw.to_owned()]) {
                return Ok(());
            }
            if Instant::now() > deadline || stopping() {
                bail!("the controller did not place every target on {gw} in 30 s: {placement:?}");
            }
            thread::sleep(Duration::from_millis(200));
        }
    }

    fn start_agent(&self, g: &lab::Gateway) -> Result<Process> {
        let mut extra: Vec<String> = Vec::new();
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
        let n = self.args.hosts as f64;
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
            cmd.args(["--stall-event", "0.02"]);
            let process = self.lab.spawn(&format!("loadgen-{}", host.name), cmd)?;
            let tail = LineTail::new(process.stdout_path());
            out.push(Loadgen {
                host: h,
                process,
                tail,
            });
        }
        Ok(out)
    }

    fn sample(&self, t: f64) -> Result<Sample> {
        let mut s = Sample {
            t,
            ..Sample::default()
        };
        for g in self.lab.gateways() {
            let flows = agent::counters(self.sanlb, g)?;
            let mut total = 0;
            for f in flows {
                let (IpAddr::V4(i), IpAddr::V4(tg)) = (f.initiator, f.target) else {
                    continue;
                };
                let b = f.to_target_bytes + f.to_initiator_bytes;
                total += b;
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

    fn watch(
        &self,
        t0: Instant,
        procs: &mut [Process],
        loadgens: &mut [Loadgen],
    ) -> Result<Summary> {
        let tty = std::io::stdout().is_terminal();
        let names: Vec<String> = self.lab.gateways().iter().map(|g| g.name.clone()).collect();
        let addrs: Vec<Ipv4Addr> = self.lab.targets().iter().map(|t| t.addr).collect();
        let duration = self.args.duration.as_secs_f64();
        let interval = self.args.interval.as_secs_f64();
        let title = self.title();
        let mut samples: Vec<Sample> = vec![self.sample(0.0)?];
        let mut known: Vec<Option<usize>> = samples[0].owners.clone();
        let mut moves: Vec<Move> = Vec::new();
        let mut init = Initiators::default();
        let mut generation = 0;
        let mut next_plan = interval;
        let mut tick = 1.0;

        while t0.elapsed().as_secs_f64() < duration {
            if stopping() {
                bail!("interrupted");
            }
            let wait = Duration::from_secs_f64(tick).saturating_sub(t0.elapsed());
            thread::sleep(wait);
            tick += 1.0;
            for p in procs.iter_mut() {
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
                init.read(lg)?;
            }
            let t = t0.elapsed().as_secs_f64();
            let s = self.sample(t)?;
            if self.balancer == Balancer::Controller
                && let Ok(status) = self.status()
            {
                generation = status["generation"].as_u64().unwrap_or(generation);
            }
            // Break before make: an address may be on no gateway for a
            // moment; a move is a new owner, not the gap.
            for (i, b) in s.owners.iter().enumerate() {
                if b.is_some() && *b != known[i] {
                    let target = &self.lab.targets()[i];
                    let m = Move {
                        at_s: t,
                        at_unix: unix_now(),
                        target: target.name.clone(),
                        addr: target.addr,
                        from: known[i].map(|g| names[g].clone()),
                        to: b.map(|g| names[g].clone()),
                        generation,
                        stall_s: None,
                    };
                    known[i] = *b;
                    if !tty {
                        println!("move: {}", view::move_line(&m));
                    }
                    moves.push(m);
                }
            }
            samples.push(s);
            if self.balancer == Balancer::Plan && t >= next_plan {
                next_plan += interval;
                let started = unix_now();
                if let Some(planned) =
                    self.plan_and_move(&samples, &addrs, interval, generation + 1)?
                {
                    generation += 1;
                    for (i, _) in planned {
                        // Stamped with the time the move began, to find its stall.
                        let target = &self.lab.targets()[i];
                        moves.push(Move {
                            at_s: t,
                            at_unix: started,
                            target: target.name.clone(),
                            addr: target.addr,
                            from: None,
                            to: None,
                            generation,
                            stall_s: None,
                        });
                    }
                    // The owners changed under the demo's feet: take a fresh
                    // sample so that the tick does not count them again, and
                    // fill in from/to.
                    let s = self.sample(t0.elapsed().as_secs_f64())?;
                    let fresh = moves.iter_mut().filter(|m| m.generation == generation);
                    for m in fresh {
                        let i = self
                            .lab
                            .targets()
                            .iter()
                            .position(|x| x.name == m.target)
                            .expect("a lab target");
                        m.from = known[i].map(|g| names[g].clone());
                        m.to = s.owners[i].map(|g| names[g].clone());
                        known[i] = s.owners[i];
                        if !tty {
                            println!("move: {}", view::move_line(m));
                        }
                    }
                    samples.push(s);
                }
            }
            // The view: loads over the last second, balance over the last interval.
            let n = samples.len();
            let (a, b) = (&samples[n - 2], &samples[n - 1]);
            let dt = b.t - a.t;
            let loads = metrics::rates(&a.gateway_bytes, &b.gateway_bytes, dt);
            let veth = metrics::rates(&a.veth_bytes, &b.veth_bytes, dt);
            let balance = Balance::of(&samples, (b.t - interval).max(0.0), b.t);
            let owned: Vec<Vec<String>> = (0..names.len())
                .map(|g| {
                    b.owners
                        .iter()
                        .enumerate()
                        .filter(|(_, o)| **o == Some(g))
                        .map(|(i, _)| self.lab.targets()[i].name.clone())
                        .collect()
                })
                .collect();
            let frame = view::Frame {
                title: &title,
                elapsed: b.t,
                duration,
                generation,
                gateways: &names,
                loads: &loads,
                veth: &veth,
                balance: balance.as_ref(),
                scale: self.args.rate as f64,
                owned: &owned,
                moves: &moves,
                io: init.io(),
            };
            if tty {
                print!("\x1b[H\x1b[2J{}", view::render(&frame));
            } else {
                println!(
                    "t={:>5.1}s gen={generation} var_norm={:.4} max/mean={:.2} loads={} MB/s io_errors={}",
                    b.t,
                    balance.as_ref().map_or(f64::NAN, |x| x.var_norm),
                    balance.as_ref().map_or(f64::NAN, |x| x.max_mean),
                    loads
                        .iter()
                        .map(|l| format!("{:.2}", l / 1e6))
                        .collect::<Vec<_>>()
                        .join("/"),
                    init.io().0
                );
            }
            let _ = std::io::stdout().flush();
        }

        eprintln!("demo: load done; the initiators read back and check what they wrote");
        let deadline = Instant::now() + Duration::from_secs(120);
        for lg in loadgens.iter_mut() {
            let left = deadline.saturating_duration_since(Instant::now());
            let status = lg.process.wait_timeout(left)?;
            init.read(lg)?;
            match status {
                Some(s) if s.success() || s.code() == Some(1) => {}
                Some(s) => bail!(
                    "the loadgen of host {} failed ({}): {}",
                    lg.host + 1,
                    proc::describe(s),
                    lg.process.stderr().trim()
                ),
                None => bail!("the loadgen of host {} did not finish", lg.host + 1),
            }
        }
        // Counted bytes, now that the initiators are done.
        let last = self.sample(t0.elapsed().as_secs_f64())?;
        let bytes = self.bytes_check(&last, &init);
        let iscsi_perf = self.iscsi_perf();

        for m in &mut moves {
            m.stall_s = init.stall_near(&m.target, m.at_unix);
        }
        let io = init.io();
        // The last second may already hold the initiators' final read-back.
        let end = samples.last().map_or(0.0, |s| s.t).min(duration - 1.0);
        samples.retain(|s| s.t <= end);
        let first_move = moves.first().map_or(end, |m| m.at_s);
        // Before: from when the prefill is surely over to the first move
        // (or the first interval).
        let before_to = first_move.min(interval).max(2.0);
        let before =
            Balance::of(&samples, (before_to - 3.0).max(1.0), before_to).unwrap_or_default();
        let after = Balance::of(&samples, (end - interval).max(0.0), end).unwrap_or_default();
        let finals = init.finals.values();
        let summary = Summary {
            before,
            after,
            moves: moves.len(),
            converge_s: moves.last().map_or(0.0, |m| m.at_s),
            balanced_s: metrics::balanced_since(&samples, interval, BALANCED),
            io_errors: io.0,
            max_stall_s: moves.iter().filter_map(|m| m.stall_s).fold(0.0, f64::max),
            verify_errors: io.1,
            verified_blocks: finals.clone().map(|f| f.1).sum(),
            reconnects: io.2,
            generation,
            balancer: self.balancer.name().to_owned(),
            move_log: moves.clone(),
            bytes,
            iscsi_perf,
            shape: Shape {
                hosts: self.args.hosts,
                gateways: self.args.gateways,
                targets: self.args.targets,
                duration_s: duration,
                skew: self.args.skew,
                rate: self.args.rate,
            },
        };
        let png = self.out.join("load.png");
        match plot::draw(&png, &samples, &names, &moves) {
            Ok(true) => {}
            Ok(false) => eprintln!(
                "demo: no font found, {} has no text; gateways in order: {}",
                png.display(),
                plot::COLOURS
                    .iter()
                    .map(|c| c.0)
                    .take(names.len())
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
            Err(e) => eprintln!("demo: {e:#}"),
        }
        Ok(summary)
    }

    /// Plans on the rates of the last interval; moves what the plan moves
    /// when it lowers the cost by [`MIN_GAIN`]. Returns the targets moved
    /// and their new gateway.
    fn plan_and_move(
        &self,
        samples: &[Sample],
        addrs: &[Ipv4Addr],
        interval: f64,
        generation: u64,
    ) -> Result<Option<Vec<(usize, usize)>>> {
        let last = samples.last().expect("one sample at least");
        let Some(first) = samples.iter().find(|s| s.t >= last.t - interval) else {
            return Ok(None);
        };
        let dt = last.t - first.t;
        if dt <= 0.0 {
            return Ok(None);
        }
        let rates = metrics::rates(&first.target_bytes(addrs), &last.target_bytes(addrs), dt);
        let names: Vec<&str> = self
            .lab
            .gateways()
            .iter()
            .map(|g| g.name.as_str())
            .collect();
        let problem = serde_json::json!({
            "gateways": names.iter().map(|n| serde_json::json!({"name": n, "capacity": 1.0})).collect::<Vec<_>>(),
            "routes": addrs.iter().zip(&rates).zip(&last.owners).map(|((a, r), o)| serde_json::json!({
                "target": a.to_string(),
                "rate": r,
                "current": o.map(|g| names[g]),
            })).collect::<Vec<_>>(),
            "w_var": 1.0,
            "w_change": 0.01,
        });
        let path = self.lab.dir().join(format!("problem-{generation}.json"));
        std::fs::write(&path, problem.to_string())
            .with_context(|| format!("writing {}", path.display()))?;
        let out = proc::run(
            Command::new(self.sanlb)
                .args(["plan", "--json", "--time-limit", "500ms", "--problem"])
                .arg(&path),
        )?;
        #[derive(Deserialize)]
        struct Placed {
            target: IpAddr,
            gateway: String,
        }
        #[derive(Deserialize)]
        struct Plan {
            assignment: Vec<Placed>,
            cost: f64,
        }
        let plan: Plan = serde_json::from_str(&out).context("parsing sanlb plan --json")?;
        let mut loads = vec![0.0; names.len()];
        for (r, o) in rates.iter().zip(&last.owners) {
            if let Some(g) = o {
                loads[*g] += r;
            }
        }
        let cost_now = metrics::var_norm(&loads);
        if cost_now - plan.cost < MIN_GAIN {
            return Ok(None);
        }
        let mut wanted = Vec::new();
        for p in &plan.assignment {
            let IpAddr::V4(a) = p.target else { continue };
            let i = addrs
                .iter()
                .position(|x| *x == a)
                .context("plan names an unknown target")?;
            let g = names
                .iter()
                .position(|n| *n == p.gateway)
                .context("plan names an unknown gateway")?;
            if last.owners[i] != Some(g) {
                wanted.push((i, g));
            }
        }
        if wanted.is_empty() {
            return Ok(None);
        }
        // Break before make per address, all addresses at once (each
        // announcement takes about 1.4 s).
        let results: Vec<Result<()>> = thread::scope(|scope| {
            let handles: Vec<_> = wanted
                .iter()
                .map(|&(i, g)| {
                    let addr = addrs[i];
                    let from = last.owners[i].map(|o| names[o]);
                    let to = names[g];
                    scope.spawn(move || match from {
                        Some(from) => self.lab.move_address(addr, from, to, true),
                        None => self.lab.add_address(addr, to, true),
                    })
                })
                .collect();
            handles
                .into_iter()
                .map(|h| {
                    h.join()
                        .unwrap_or_else(|_| Err(anyhow::anyhow!("a move panicked")))
                })
                .collect()
        });
        for r in results {
            r?;
        }
        Ok(Some(wanted))
    }

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

    /// `iscsi-perf` from the first host against the first target for 3 s:
    /// an independent libiscsi reader through whatever gateway owns it now.
    fn iscsi_perf(&self) -> Option<String> {
        let h = &self.lab.hosts()[0];
        let t = &self.lab.targets()[0];
        let mut cmd = h.ns.command("timeout");
        cmd.args(["15", "iscsi-perf", "-i", &format!("{}-perf", h.initiator)])
            .args(["-t", "3", "-m", "4", "-b", "32", "-x", "3", &t.url()]);
        match proc::output_timeout(&mut cmd, Duration::from_secs(20)) {
            Ok(o) => {
                // It redraws its progress line with \r; the last one has the
                // average.
                let text = String::from_utf8_lossy(&o.stdout).into_owned()
                    + &String::from_utf8_lossy(&o.stderr);
                let last = text
                    .split(['\r', '\n'])
                    .rfind(|l| l.contains("iops average"))
                    .or_else(|| text.lines().rfind(|l| !l.trim().is_empty()))
                    .unwrap_or("")
                    .trim();
                Some(format!("{} ({}): {last}", t.name, proc::describe(o.status)))
            }
            Err(e) => Some(format!("{}: {e:#}", t.name)),
        }
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
    fn stalls_are_matched_to_moves_by_target_and_time() {
        let init = Initiators {
            stalls: vec![
                ("t1".into(), 100.1, 0.22),
                ("t1".into(), 100.3, 0.05),
                ("t2".into(), 100.0, 9.0),
                ("t1".into(), 150.0, 5.0),
            ],
            ..Initiators::default()
        };
        assert_eq!(init.stall_near("t1", 100.0), Some(0.22));
        assert_eq!(init.stall_near("t3", 100.0), None);
    }
}
