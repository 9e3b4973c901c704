//! Command-line arguments.

use std::{net::IpAddr, net::SocketAddr, path::PathBuf, time::Duration};

use clap::{Args, Parser, Subcommand};
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
    Plan(crate::plan::PlanArgs),
}

fn duration(s: &str) -> Result<Duration, String> {
    humantime::parse_duration(s).map_err(|e| format!("{s:?}: {e} (say 1s, 200ms, 2m)"))
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
    /// This gateway's name in reports.
    #[arg(long, value_name = "NAME")]
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
    /// Silence after which a gateway is dead and its routes move.
    #[arg(long, value_parser = duration, default_value = "3s")]
    pub lease: Duration,
    /// Unit of assignment.
    #[arg(long, value_enum, default_value_t = Mode::Target)]
    pub mode: Mode,
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
    #[arg(long, value_enum, default_value_t = Solver::Auto)]
    pub solver: Solver,
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
