//! Command-line arguments.

use std::{net::IpAddr, net::SocketAddr, path::PathBuf, time::Duration};

use clap::{ArgGroup, Args, Parser, Subcommand, ValueEnum};
use ipnet::IpNet;
use sanlb::{dataplane::XdpAttachMode, optimize::Solver, proto::Mode};
use sanlb_common::{DEFAULT_ISCSI_PORT, DEFAULT_MAX_FLOWS};

/// Balance iSCSI traffic across the gateways of an IP SAN.
#[derive(Parser, Debug)]
#[command(name = "sanlb", version, about)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Count iSCSI traffic on a gateway's host-facing NIC (XDP ingress, TC egress).
    Agent(AgentArgs),
    /// Print the counters an agent pinned for a NIC.
    Counters(CountersArgs),
    /// The statistical server: aggregate reports, rebalance, hand out maps.
    Controller(ControllerArgs),
    /// What a controller knows: gateways, the map, the last rebalances.
    Status(StatusArgs),
    /// The best gateway map for a traffic matrix given a priori.
    Plan(PlanArgs),
    /// Move a gateway's storage addresses away (break-before-make) and keep it empty.
    Drain(DrainArgs),
    /// Let a drained gateway take storage addresses again.
    Undrain(DrainArgs),
}

/// The one duration grammar of every flag (sanlb_common::duration): `2.5`
/// (seconds), `250ms`, `1.5s`, `2m`, `1h30m`.
pub fn duration(s: &str) -> Result<Duration, String> {
    sanlb_common::duration::parse_duration(s).map_err(|e| format!("{s:?}: {e}"))
}

/// A gateway name the controller accepts (refused here, not at the first
/// report).
fn gateway_name(s: &str) -> Result<String, String> {
    if sanlb::proto::valid_gateway_name(s) {
        Ok(s.to_owned())
    } else {
        Err(format!(
            "\"{}\": 1–64 characters of [A-Za-z0-9._-]",
            sanlb::proto::shown(s)
        ))
    }
}

// The library's enums know nothing of clap: these mirror them for the
// command line and convert at this one contact point.

/// `--mode`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum ModeArg {
    /// A storage entity (its address): what address ownership enforces.
    Target,
    /// A (host, target) pair.
    Pair,
}

impl From<ModeArg> for Mode {
    fn from(m: ModeArg) -> Self {
        match m {
            ModeArg::Target => Mode::Target,
            ModeArg::Pair => Mode::Pair,
        }
    }
}

/// `--solver`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum SolverArg {
    /// Exact while it finishes in the time limit, else the heuristics.
    Auto,
    /// Exhaustive search with pruning; proves optimality.
    Exact,
    /// Change-aware longest-processing-time first.
    Greedy,
    /// Simulated annealing.
    Anneal,
    /// Genetic algorithm.
    Genetic,
    /// Tabu search.
    Tabu,
}

impl From<SolverArg> for Solver {
    fn from(s: SolverArg) -> Self {
        match s {
            SolverArg::Auto => Solver::Auto,
            SolverArg::Exact => Solver::Exact,
            SolverArg::Greedy => Solver::Greedy,
            SolverArg::Anneal => Solver::Anneal,
            SolverArg::Genetic => Solver::Genetic,
            SolverArg::Tabu => Solver::Tabu,
        }
    }
}

/// Where the data plane lives.
#[derive(Args, Debug, Clone)]
pub struct DataplaneArgs {
    /// The host-facing NIC.
    #[arg(long, value_name = "NIC")]
    pub iface: String,
    /// Directory of the pinned maps [default: /sys/fs/bpf/sanlb/<NIC>].
    #[arg(long, value_name = "DIR")]
    pub pin_dir: Option<PathBuf>,
}

#[derive(Args, Debug)]
pub struct AgentArgs {
    #[command(flatten)]
    pub dp: DataplaneArgs,
    /// iSCSI TCP port; repeat for several.
    #[arg(long = "port", value_name = "PORT", default_values_t = [DEFAULT_ISCSI_PORT])]
    pub ports: Vec<u16>,
    /// Size of the LRU (initiator, target) table.
    #[arg(long, default_value_t = DEFAULT_MAX_FLOWS)]
    pub max_flows: u32,
    /// Where to count ingress traffic.
    #[arg(long, value_enum, default_value_t = XdpModeArg::Auto)]
    pub xdp_mode: XdpModeArg,
    /// Leave the maps pinned on exit (the programs are detached either way).
    #[arg(long)]
    pub keep_pins: bool,
    /// Report to this controller (http://HOST:PORT) and apply its map;
    /// without it the agent only counts.
    #[arg(long, value_name = "URL", requires_all = ["gateway", "token_file"])]
    pub controller: Option<String>,
    /// This gateway's name in reports: 1–64 characters of [A-Za-z0-9._-].
    #[arg(long, value_name = "NAME", value_parser = gateway_name)]
    pub gateway: Option<String>,
    /// File holding the controller's bearer token.
    #[arg(long, value_name = "FILE")]
    pub token_file: Option<PathBuf>,
    /// Relative capacity of this gateway.
    #[arg(long, default_value_t = 1.0)]
    pub capacity: f64,
    /// Report period.
    #[arg(long, value_parser = duration, default_value = "1s")]
    pub interval: Duration,
    /// Gratuitous ARP / unsolicited NA messages sent on acquiring an address.
    #[arg(long, default_value_t = sanlb::enforce::DEFAULT_GARP_COUNT)]
    pub garp_count: u32,
    /// Time between those messages.
    #[arg(long, value_parser = duration, default_value = "200ms")]
    pub garp_interval: Duration,
    /// Heartbeat period (liveness for the controller, and where it asks for
    /// probes); 0 sends none.
    #[arg(long, value_parser = duration, default_value = "100ms")]
    pub heartbeat: Duration,
    /// Period of the probes of the addresses this gateway holds, for a
    /// second station answering (a duplicate owner); 0 never.
    #[arg(long, value_parser = duration, default_value = "2s")]
    pub self_probe: Duration,
    /// How long a probe collects answers (each of its two phases).
    #[arg(long, value_parser = duration, default_value = "100ms")]
    pub probe_window: Duration,
    /// On SIGTERM: keep the addresses held (fail-static), or hand them off
    /// to the other gateways first (drains this gateway through the
    /// controller and waits until it holds nothing).
    #[arg(long, value_enum, default_value_t = OnStopArg::Keep)]
    pub on_stop: OnStopArg,
    /// Longest wait of a hand-off on stop; then the agent exits keeping
    /// what it still holds.
    #[arg(long, value_parser = duration, default_value = "30s")]
    pub handoff_timeout: Duration,
}

/// `--on-stop`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum OnStopArg {
    /// Leave the addresses on the NIC (fail-static).
    Keep,
    /// Drain this gateway through the controller and wait until it holds nothing.
    Handoff,
}

impl From<OnStopArg> for sanlb::agent::OnStop {
    fn from(o: OnStopArg) -> Self {
        match o {
            OnStopArg::Keep => Self::Keep,
            OnStopArg::Handoff => Self::Handoff,
        }
    }
}

#[derive(Args, Debug)]
pub struct DrainArgs {
    /// The controller (http://HOST:PORT).
    #[arg(long, value_name = "URL")]
    pub controller: String,
    /// File holding the bearer token.
    #[arg(long, value_name = "FILE")]
    pub token_file: Option<PathBuf>,
    /// Wait at most this long until the gateway holds nothing (drain) or
    /// for nothing (undrain); 0 returns at once.
    #[arg(long, value_parser = duration, default_value = "0")]
    pub wait: Duration,
    /// The gateway.
    #[arg(value_name = "GATEWAY", value_parser = gateway_name)]
    pub gateway: String,
}

/// `--xdp-mode` values: [`XdpAttachMode`] for the command line.
#[derive(Clone, Copy, Debug, clap::ValueEnum)]
pub enum XdpModeArg {
    /// Per NIC: driver XDP on a physical NIC, TC ingress on a virtual one (veth)
    /// or where the driver refuses XDP.
    Auto,
    /// Driver (native) XDP only.
    Driver,
    /// Generic (skb) XDP only.
    Generic,
    /// TC ingress, no XDP.
    Tc,
}

impl From<XdpModeArg> for XdpAttachMode {
    fn from(mode: XdpModeArg) -> Self {
        match mode {
            XdpModeArg::Auto => Self::Auto,
            XdpModeArg::Driver => Self::Driver,
            XdpModeArg::Generic => Self::Generic,
            XdpModeArg::Tc => Self::Tc,
        }
    }
}

#[derive(Args, Debug)]
pub struct ControllerArgs {
    /// Address to listen on.
    #[arg(long, value_name = "ADDR")]
    pub listen: SocketAddr,
    /// State file (map, generation, gateways, rates), replaced atomically.
    #[arg(long, value_name = "FILE")]
    pub state: PathBuf,
    /// File holding the bearer token clients must present.
    #[arg(long, value_name = "FILE")]
    pub token_file: PathBuf,
    /// Rebalance period, and length of one window sample.
    #[arg(long, value_parser = duration, default_value = "5s")]
    pub interval: Duration,
    /// Number of intervals the rates are averaged over.
    #[arg(long, default_value_t = 6)]
    pub window: usize,
    /// Weight of the normalised variance of utilisation.
    #[arg(long, default_value_t = sanlb::optimize::DEFAULT_W_VAR)]
    pub w_var: f64,
    /// Weight of one move.
    #[arg(long, default_value_t = sanlb::optimize::DEFAULT_W_CHANGE)]
    pub w_change: f64,
    /// Smallest fall of the cost for which a new map is adopted.
    #[arg(long, default_value_t = 0.01)]
    pub min_gain: f64,
    /// Silence (no heartbeat, no report) after which a gateway is suspect:
    /// its addresses are probed on the data path, and move only if it does
    /// not serve them.
    #[arg(long, value_parser = duration, default_value = "300ms")]
    pub lease: Duration,
    /// After a start, how long nothing is steered while the agents report in.
    #[arg(long, value_parser = duration, default_value = "3s")]
    pub startup_grace: Duration,
    /// How long an old owner has to release a moving address before the
    /// move is abandoned.
    #[arg(long, value_parser = duration, default_value = "3s")]
    pub release_timeout: Duration,
    /// How long a probe of a silent gateway may take before another gateway
    /// is asked.
    #[arg(long, value_parser = duration, default_value = "1s")]
    pub probe_timeout: Duration,
    /// How often a silent gateway that still serves is probed again.
    #[arg(long, value_parser = duration, default_value = "1s")]
    pub reprobe: Duration,
    /// Dead gateways that own nothing are forgotten after this long (they
    /// stay in status until then).
    #[arg(long, value_parser = duration, default_value = "1h")]
    pub forget_after: Duration,
    /// Unit of assignment.
    #[arg(long, value_enum, default_value_t = ModeArg::Target)]
    pub mode: ModeArg,
    /// Address range of storage entities (repeatable): targets inside are managed.
    #[arg(long = "storage", value_name = "CIDR")]
    pub storage: Vec<IpNet>,
    /// A storage address known up front (repeatable).
    #[arg(long = "target", value_name = "ADDR")]
    pub targets: Vec<IpAddr>,
    /// A-priori traffic matrix (CSV: targets across, hosts down, bytes per interval).
    #[arg(long, value_name = "FILE")]
    pub traffic: Option<PathBuf>,
    /// Use only the a-priori matrix instead of seeding the measured window with it.
    #[arg(long, requires = "traffic")]
    pub traffic_replace: bool,
    /// Optimiser algorithm.
    #[arg(long, value_enum, default_value_t = SolverArg::Auto)]
    pub solver: SolverArg,
    /// Time limit of one optimisation.
    #[arg(long, value_parser = duration, default_value = "1s")]
    pub time_limit: Duration,
    /// Seed of the randomised solvers.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
}

#[derive(Args, Debug)]
pub struct StatusArgs {
    /// The controller (http://HOST:PORT).
    #[arg(long, value_name = "URL")]
    pub controller: String,
    /// File holding the bearer token.
    #[arg(long, value_name = "FILE")]
    pub token_file: Option<PathBuf>,
    /// The raw /v1/status JSON.
    #[arg(long)]
    pub json: bool,
}

#[derive(Args, Debug)]
pub struct CountersArgs {
    #[command(flatten)]
    pub dp: DataplaneArgs,
    /// JSON array of objects instead of a table.
    #[arg(long)]
    pub json: bool,
}

#[derive(Args, Debug)]
#[command(
    group(ArgGroup::new("input").required(true).args(["problem", "traffic"])),
    after_help = "\
Inputs (docs/optimiser.md and docs/examples/ have samples):
  --problem FILE    JSON: {\"gateways\":[{\"name\":\"gw1\",\"capacity\":1.0}],
                    \"routes\":[{\"target\":\"198.18.1.50\",\"host\":null,\"rate\":1200.5,
                    \"current\":\"gw1\",\"allowed\":[\"gw1\",\"gw2\"]}],\"w_var\":1.0,\"w_change\":0.01}
  --traffic FILE    CSV: first row the target addresses (after a corner cell), first
                    column the host addresses, cells the bytes in the interval
  --gateways FILE   JSON array: [{\"name\":\"gw1\",\"capacity\":1.0}, ...] (capacity
                    defaults to 1.0; 0 = drained)
  --current FILE    JSON array: [{\"target\":\"198.18.1.50\",\"host\":null,\"gateway\":\"gw1\"}, ...]
                    or the output of a previous `sanlb plan --json`

Exit status: 0 planned, 2 bad input (the message names the file, route and reason)."
)]
pub struct PlanArgs {
    /// The problem as JSON.
    #[arg(long, value_name = "FILE")]
    pub problem: Option<PathBuf>,
    /// The traffic matrix as CSV (needs --gateways).
    #[arg(long, value_name = "FILE.csv", requires = "gateways")]
    pub traffic: Option<PathBuf>,
    /// The gateways as JSON (with --traffic).
    #[arg(long, value_name = "FILE", requires = "traffic")]
    pub gateways: Option<PathBuf>,
    /// The map in force as JSON (with --traffic).
    #[arg(long, value_name = "FILE", requires = "traffic")]
    pub current: Option<PathBuf>,
    /// One route per (host, target) pair instead of per target (with --traffic).
    #[arg(long, requires = "traffic")]
    pub pairs: bool,
    /// The algorithm.
    #[arg(long, value_enum, default_value_t = SolverArg::Auto)]
    pub solver: SolverArg,
    /// Weight of the normalised variance [default: the file's, else 1].
    #[arg(long, value_name = "W", allow_negative_numbers = true)]
    pub w_var: Option<f64>,
    /// Weight of one move [default: the file's, else 0.01].
    #[arg(long, value_name = "W", allow_negative_numbers = true)]
    pub w_change: Option<f64>,
    /// Longest search, e.g. 1s, 250ms, 2.5 (seconds).
    #[arg(long, value_name = "TIME", default_value = "1s", value_parser = duration)]
    pub time_limit: Duration,
    /// Seed of the randomised heuristics.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// JSON instead of tables.
    #[arg(long)]
    pub json: bool,
}
