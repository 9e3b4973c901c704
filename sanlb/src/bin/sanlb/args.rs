//! Command-line arguments.

use std::{net::IpAddr, net::SocketAddr, path::PathBuf, time::Duration};

use clap::{ArgGroup, Args, Parser, Subcommand, ValueEnum};
use ipnet::IpNet;
use sanlb::{config::LogFormat, dataplane::XdpAttachMode, optimize::Solver, proto::Mode};

/// `sanlb --version`: the package version and the commit it was built from.
const VERSION: &str = concat!(env!("CARGO_PKG_VERSION"), " (", env!("SANLB_COMMIT"), ")");

/// Balance iSCSI traffic across the gateways of an IP SAN.
#[derive(Parser, Debug)]
#[command(
    name = "sanlb",
    version = VERSION,
    about,
    after_help = "\
Settings come from the flags, then the config file (/etc/sanlb/sanlb.toml, or --config),
then the defaults. Exit status: 0 success, 1 failure, 2 bad flags or configuration;
`sanlb status`, `pause`, `resume`, `pin`, `unpin` also 3 controller unreachable,
4 request refused (see sanlb-status(1))."
)]
pub struct Cli {
    /// Configuration file [default: /etc/sanlb/sanlb.toml if it exists].
    #[arg(long, global = true, value_name = "FILE", env = "SANLB_CONFIG")]
    pub config: Option<PathBuf>,
    /// Log line format [default: the config file's, else text].
    #[arg(long, global = true, value_enum)]
    pub log_format: Option<LogFormatArg>,
    #[command(subcommand)]
    pub command: Command,
}

/// `--log-format`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum LogFormatArg {
    /// Human-readable; colours only on a terminal.
    Text,
    /// One JSON object per line.
    Json,
}

impl From<LogFormatArg> for LogFormat {
    fn from(f: LogFormatArg) -> Self {
        match f {
            LogFormatArg::Text => LogFormat::Text,
            LogFormatArg::Json => LogFormat::Json,
        }
    }
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Count iSCSI traffic on a gateway's host-facing NIC (XDP ingress, TC egress).
    Agent(AgentArgs),
    /// Print the counters an agent pinned for a NIC.
    Counters(CountersArgs),
    /// The statistical server: aggregate reports, rebalance, hand out maps.
    Controller(Box<ControllerArgs>),
    /// What a controller knows: gateways, the map, the last rebalances.
    Status(StatusArgs),
    /// Stop periodic rebalancing (failover and pins still act).
    Pause(ControlArgs),
    /// Resume periodic rebalancing.
    Resume(ControlArgs),
    /// Keep a storage address on one gateway (while that gateway is alive).
    Pin(PinArgs),
    /// Remove a pin.
    Unpin(UnpinArgs),
    /// The best gateway map for a traffic matrix given a priori.
    Plan(PlanArgs),
    /// Create a bearer token file (mode 0600) for the controller and its clients.
    Token(TokenArgs),
    /// Move a gateway's storage addresses away (break-before-make) and keep it empty.
    Drain(DrainArgs),
    /// Let a drained gateway take storage addresses again.
    Undrain(DrainArgs),
    /// Write the man pages and shell completions (for packaging).
    #[command(hide = true)]
    Generate(GenerateArgs),
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

/// `--target ADDR[=IQN]`.
fn target_arg(s: &str) -> Result<(IpAddr, Option<String>), String> {
    let (addr, name) = match s.split_once('=') {
        Some((a, n)) => (a, Some(n.to_owned())),
        None => (s, None),
    };
    let addr = addr
        .parse()
        .map_err(|_| format!("{addr:?} is not an IP address (ADDR or ADDR=IQN)"))?;
    if let Some(n) = &name
        && !sanlb::proto::valid_target_name(n)
    {
        return Err(format!(
            "\"{}\" is not an iSCSI name (1–223 bytes, no spaces or control characters)",
            sanlb::proto::shown(n)
        ));
    }
    Ok((addr, name))
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
    /// The host-facing NIC [default: [agent] iface of the config file].
    #[arg(long, value_name = "NIC")]
    pub iface: Option<String>,
    /// Directory of the pinned maps [default: /sys/fs/bpf/sanlb/<NIC>].
    #[arg(long, value_name = "DIR")]
    pub pin_dir: Option<PathBuf>,
}

// Flags without a value here take it from the config file, else from the
// defaults written in sanlb::config (shown in brackets).

#[derive(Args, Debug)]
pub struct AgentArgs {
    #[command(flatten)]
    pub dp: DataplaneArgs,
    /// iSCSI TCP port; repeat for several [default: 3260].
    #[arg(long = "port", value_name = "PORT")]
    pub ports: Vec<u16>,
    /// Size of the LRU (initiator, target) table [default: 65536].
    #[arg(long)]
    pub max_flows: Option<u32>,
    /// Where to count ingress traffic [default: auto: per NIC].
    #[arg(long, value_enum)]
    pub xdp_mode: Option<XdpModeArg>,
    /// Leave the maps pinned on exit (the programs are detached either way).
    #[arg(long)]
    pub keep_pins: bool,
    /// Report to this controller (http://HOST:PORT or https://HOST:PORT) and
    /// apply its map; without it the agent only counts. With several
    /// controllers, every one (repeat or separate with commas): the agent
    /// follows the leader.
    #[arg(long, value_name = "URL", value_delimiter = ',')]
    pub controller: Vec<String>,
    /// This gateway's name in reports (with --controller): 1–64 characters
    /// of [A-Za-z0-9._-].
    #[arg(long, value_name = "NAME", value_parser = gateway_name)]
    pub gateway: Option<String>,
    /// File holding the agents' bearer token (with --controller).
    #[arg(long, value_name = "FILE")]
    pub token_file: Option<PathBuf>,
    /// CA certificates (PEM) of an https:// controller [default: the system's].
    #[arg(long, value_name = "FILE")]
    pub ca_file: Option<PathBuf>,
    /// Relative capacity of this gateway [default: 1].
    #[arg(long)]
    pub capacity: Option<f64>,
    /// Report period [default: 1s].
    #[arg(long, value_parser = duration)]
    pub interval: Option<Duration>,
    /// Gratuitous ARP / unsolicited NA messages sent on acquiring an address [default: 3].
    #[arg(long)]
    pub garp_count: Option<u32>,
    /// Time between those messages [default: 200ms].
    #[arg(long, value_parser = duration)]
    pub garp_interval: Option<Duration>,
    /// Serve the agent's own /metrics (no token) on this address, e.g.
    /// 127.0.0.1:7391 [default: none].
    #[arg(long, value_name = "ADDR")]
    pub metrics_listen: Option<SocketAddr>,
    /// Heartbeat period (liveness for the controller, and where it asks for
    /// probes); 0 sends none [default: 100ms].
    #[arg(long, value_parser = duration)]
    pub heartbeat: Option<Duration>,
    /// Period of the probes of the addresses this gateway holds, for a
    /// second station answering (a duplicate owner); 0 never [default: 2s].
    #[arg(long, value_parser = duration)]
    pub self_probe: Option<Duration>,
    /// How long a probe collects answers (each of its two phases) [default: 100ms].
    #[arg(long, value_parser = duration)]
    pub probe_window: Option<Duration>,
    /// On SIGTERM: keep the addresses held (fail-static), or hand them off
    /// to the other gateways first (drains this gateway through the
    /// controller and waits until it holds nothing) [default: keep].
    #[arg(long, value_enum)]
    pub on_stop: Option<OnStopArg>,
    /// Longest hand-off on stop; then the agent exits keeping what it still
    /// holds [default: 30s].
    #[arg(long, value_parser = duration)]
    pub handoff_timeout: Option<Duration>,
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
    /// Address to listen on (required here or in the config file).
    #[arg(long, value_name = "ADDR")]
    pub listen: Option<SocketAddr>,
    /// State file (map, generation, gateways, rates), replaced atomically
    /// [default: /var/lib/sanlb/controller.json].
    #[arg(long, value_name = "FILE", conflicts_with = "etcd")]
    pub state: Option<PathBuf>,
    /// etcd's client URLs (repeat or separate with commas): one of several
    /// controllers, one leading, the state in etcd instead of a file.
    #[arg(long, value_name = "URL", value_delimiter = ',')]
    pub etcd: Vec<String>,
    /// sanlb's key prefix in etcd, one per sanlb cluster sharing it [default: /sanlb/].
    #[arg(long, value_name = "PREFIX")]
    pub etcd_prefix: Option<String>,
    /// The URL agents and `sanlb status` reach this controller at, published
    /// while it leads (with --etcd) [default: http(s)://LISTEN].
    #[arg(long, value_name = "URL")]
    pub advertise: Option<String>,
    /// Time-to-live of the leader's lease in etcd, whole seconds [default: 2s].
    #[arg(long, value_parser = duration)]
    pub leader_ttl: Option<Duration>,
    /// Time etcd has to answer one request [default: 2s].
    #[arg(long, value_parser = duration)]
    pub etcd_timeout: Option<Duration>,
    /// File holding the agents' bearer token (required here or in the config file).
    #[arg(long, value_name = "FILE")]
    pub token_file: Option<PathBuf>,
    /// File holding a read-only token (/v1/status, /metrics).
    #[arg(long, value_name = "FILE")]
    pub read_token_file: Option<PathBuf>,
    /// Certificate chain (PEM): serve HTTPS (with --tls-key).
    #[arg(long, value_name = "FILE", requires = "tls_key")]
    pub tls_cert: Option<PathBuf>,
    /// Private key (PEM) of --tls-cert.
    #[arg(long, value_name = "FILE", requires = "tls_cert")]
    pub tls_key: Option<PathBuf>,
    /// Connections served at once [default: 1024].
    #[arg(long)]
    pub max_connections: Option<usize>,
    /// Longest wait for a request's headers; also the keep-alive idle limit [default: 10s].
    #[arg(long, value_parser = duration)]
    pub header_timeout: Option<Duration>,
    /// Longest wait for a request's body [default: 30s].
    #[arg(long, value_parser = duration)]
    pub body_timeout: Option<Duration>,
    /// Rebalance period, and length of one window sample [default: 5s].
    #[arg(long, value_parser = duration)]
    pub interval: Option<Duration>,
    /// Number of intervals the rates are averaged over [default: 6].
    #[arg(long)]
    pub window: Option<usize>,
    /// Weight of the normalised variance of utilisation [default: 1].
    #[arg(long)]
    pub w_var: Option<f64>,
    /// Weight of one move [default: 0.01].
    #[arg(long)]
    pub w_change: Option<f64>,
    /// Smallest fall of the cost for which a new map is adopted [default: 0.01].
    #[arg(long)]
    pub min_gain: Option<f64>,
    /// Silence (no heartbeat, no report) after which a gateway is suspect:
    /// its addresses are probed on the data path and move only if it does
    /// not serve them [default: 300ms].
    #[arg(long, value_parser = duration)]
    pub lease: Option<Duration>,
    /// After a start, how long nothing is steered while the agents report in [default: 3s].
    #[arg(long, value_parser = duration)]
    pub startup_grace: Option<Duration>,
    /// How long an old owner has to release a moving address before the
    /// move is abandoned [default: 3s].
    #[arg(long, value_parser = duration)]
    pub release_timeout: Option<Duration>,
    /// How long a probe of a silent gateway may take before another gateway
    /// is asked [default: 1s].
    #[arg(long, value_parser = duration)]
    pub probe_timeout: Option<Duration>,
    /// How often a silent gateway that still serves is probed again [default: 1s].
    #[arg(long, value_parser = duration)]
    pub reprobe: Option<Duration>,
    /// Dead gateways that own nothing are forgotten after this long (they
    /// stay in status until then) [default: 1h].
    #[arg(long, value_parser = duration)]
    pub forget_after: Option<Duration>,
    /// Unit of assignment [default: target].
    #[arg(long, value_enum)]
    pub mode: Option<ModeArg>,
    /// Address range of storage entities (repeatable): targets inside are managed.
    #[arg(long = "storage", value_name = "CIDR")]
    pub storage: Vec<IpNet>,
    /// A storage address known up front, with its iSCSI target name for pair
    /// mode's portals (repeatable; several names: repeat the address).
    #[arg(long = "target", value_name = "ADDR[=IQN]", value_parser = target_arg)]
    pub targets: Vec<(IpAddr, Option<String>)>,
    /// Pair mode: the range data addresses are allocated from, one per
    /// (storage entity, gateway).
    #[arg(long, value_name = "CIDR")]
    pub data_pool: Option<IpNet>,
    /// Pair mode: the port the target software listens on at the data
    /// addresses [default: 3261].
    #[arg(long, value_name = "PORT")]
    pub data_port: Option<u16>,
    /// A-priori traffic matrix (CSV: targets across, hosts down, bytes per interval).
    #[arg(long, value_name = "FILE")]
    pub traffic: Option<PathBuf>,
    /// Use only the a-priori matrix instead of seeding the measured window with it.
    #[arg(long)]
    pub traffic_replace: bool,
    /// Optimiser algorithm [default: auto].
    #[arg(long, value_enum)]
    pub solver: Option<SolverArg>,
    /// Time limit of one optimisation [default: 1s].
    #[arg(long, value_parser = duration)]
    pub time_limit: Option<Duration>,
    /// Seed of the randomised solvers [default: 0].
    #[arg(long)]
    pub seed: Option<u64>,
    /// Compute and show every decision (page, status, metrics, log); enforce none.
    #[arg(long)]
    pub advise: bool,
    /// Minimum time before the same storage address may move again (failover
    /// excepted; 0 for none) [default: 5m].
    #[arg(long, value_parser = duration)]
    pub move_cooldown: Option<Duration>,
    /// Storage Name Server mode.
    #[command(flatten)]
    pub isns_args: IsnsArgs,
}

/// How `sanlb pause`, `resume`, `pin` and `unpin` reach the controller.
#[derive(Args, Debug)]
#[command(after_help = "\
Exit status: 0 done, 1 failure (writing the output), 2 bad flags, configuration or token
file, 3 controller unreachable (refused, timed out, TLS failure), 4 the controller refused
the request (401 wrong token, 403 the read-only token, 422 unknown target or gateway,
503 state not writable).")]
pub struct ControlArgs {
    /// The controller (http://HOST:PORT or https://HOST:PORT), or every controller of a
    /// cluster (repeat or separate with commas): the leader is found [default: [control]
    /// controller].
    #[arg(long, value_name = "URL", value_delimiter = ',')]
    pub controller: Vec<String>,
    /// File holding the agents' bearer token (the read-only one may not steer).
    #[arg(long, value_name = "FILE")]
    pub token_file: Option<PathBuf>,
    /// CA certificates (PEM) of an https:// controller [default: the system's].
    #[arg(long, value_name = "FILE")]
    pub ca_file: Option<PathBuf>,
    /// Print the controls in force as JSON.
    #[arg(long)]
    pub json: bool,
}

#[derive(Args, Debug)]
pub struct PinArgs {
    /// The storage address (every route of it, in pair mode).
    #[arg(value_name = "TARGET")]
    pub target: IpAddr,
    /// The gateway it stays on; failover still moves it off a dead gateway.
    #[arg(value_name = "GATEWAY", value_parser = gateway_name)]
    pub gateway: String,
    #[command(flatten)]
    pub control: ControlArgs,
}

#[derive(Args, Debug)]
pub struct UnpinArgs {
    /// The pinned storage address.
    #[arg(value_name = "TARGET")]
    pub target: IpAddr,
    #[command(flatten)]
    pub control: ControlArgs,
}

/// `sanlb controller`'s iSNS flags (docs/isns.md).
#[derive(Args, Debug)]
#[command(next_help_heading = "Storage Name Server (iSNS)")]
pub struct IsnsArgs {
    /// Publish the map to this iSNS server (HOST[:PORT], port 3205 by default).
    #[arg(long = "isns", value_name = "HOST[:PORT]")]
    pub server: Option<String>,
    /// A host's initiator address and iSCSI name: the hosts the iSNS server
    /// answers (repeatable; adds to [controller.isns] hosts).
    #[arg(long = "host", value_name = "ADDR=IQN", value_parser = host_arg)]
    pub hosts: Vec<(IpAddr, String)>,
    /// The iSCSI name the controller speaks to the iSNS server as
    /// [default: iqn.2026-01.org.sanlb:controller].
    #[arg(long = "isns-source", value_name = "IQN")]
    pub source: Option<String>,
    /// Full iSNS sync at least this often, besides one at every new map [default: 10s].
    #[arg(long = "isns-period", value_parser = duration)]
    pub period: Option<Duration>,
}

/// `--host ADDR=IQN`.
fn host_arg(s: &str) -> Result<(IpAddr, String), String> {
    let Some((addr, name)) = s.split_once('=') else {
        return Err(format!("{s:?}: expected ADDR=IQN"));
    };
    let addr = addr
        .parse()
        .map_err(|_| format!("{addr:?} is not an IP address (ADDR=IQN)"))?;
    if !sanlb::proto::valid_target_name(name) {
        return Err(format!(
            "\"{}\" is not an iSCSI name (1–223 bytes, no spaces or control characters)",
            sanlb::proto::shown(name)
        ));
    }
    Ok((addr, name.to_owned()))
}

#[derive(Args, Debug)]
#[command(after_help = "\
Exit status: 0 printed, 1 failure (writing the output), 2 bad flags, configuration or
token file, 3 controller unreachable (refused, timed out, TLS failure), 4 the controller
refused the request (401 wrong token, 403 token not allowed, other errors).")]
pub struct StatusArgs {
    /// The controller (http://HOST:PORT or https://HOST:PORT); or several
    /// of a cluster (repeat or separate with commas): the first that
    /// answers, and its redirect to the leader, are followed.
    #[arg(long, value_name = "URL", value_delimiter = ',')]
    pub controller: Vec<String>,
    /// File holding a bearer token (the read-only one suffices).
    #[arg(long, value_name = "FILE")]
    pub token_file: Option<PathBuf>,
    /// CA certificates (PEM) of an https:// controller [default: the system's].
    #[arg(long, value_name = "FILE")]
    pub ca_file: Option<PathBuf>,
    /// The raw /v1/status JSON.
    #[arg(long)]
    pub json: bool,
}

#[derive(Args, Debug)]
#[command(after_help = "\
The controller and token come from the flags, else from [status] in the config file.
Exit status: 0 done, 1 --wait ran out, 2 bad flags, configuration or token file,
3 controller unreachable, 4 the controller refused (404 unknown gateway).")]
pub struct DrainArgs {
    /// The controller (http://HOST:PORT or https://HOST:PORT); repeat it for
    /// every controller of a cluster (the leader is found).
    #[arg(long, value_name = "URL", value_delimiter = ',')]
    pub controller: Vec<String>,
    /// File holding the agents' bearer token (the read-only one cannot drain).
    #[arg(long, value_name = "FILE")]
    pub token_file: Option<PathBuf>,
    /// CA certificates (PEM) of an https:// controller [default: the system's].
    #[arg(long, value_name = "FILE")]
    pub ca_file: Option<PathBuf>,
    /// Wait at most this long until the gateway holds nothing (drain only);
    /// 0 returns at once.
    #[arg(long, value_parser = duration, default_value = "0")]
    pub wait: Duration,
    /// The gateway.
    #[arg(value_name = "GATEWAY", value_parser = gateway_name)]
    pub gateway: String,
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

#[derive(Args, Debug)]
#[command(
    after_help = "Exit status: 0 created, 1 not created (the file exists, or cannot be written)."
)]
pub struct TokenArgs {
    /// The file to create (mode 0600), e.g. /etc/sanlb/token.
    #[arg(value_name = "FILE")]
    pub path: PathBuf,
    /// Replace the file if it exists.
    #[arg(long)]
    pub force: bool,
}

#[derive(Args, Debug)]
pub struct GenerateArgs {
    /// Write man pages (sanlb.1, sanlb-SUBCOMMAND.1) here.
    #[arg(long, value_name = "DIR")]
    pub man: Option<PathBuf>,
    /// Write bash, zsh and fish completions here.
    #[arg(long, value_name = "DIR")]
    pub completions: Option<PathBuf>,
}
