//! Command-line arguments.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};
use sanlb::dataplane::XdpAttachMode;
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
    /// The best gateway map for a traffic matrix given a priori.
    Plan(crate::plan::PlanArgs),
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
    /// XDP attach mode.
    #[arg(long, value_enum, default_value_t = XdpAttachMode::Auto)]
    pub xdp_mode: XdpAttachMode,
    /// Leave the maps pinned on exit (the programs are detached either way).
    #[arg(long)]
    pub keep_pins: bool,
}

#[derive(Args, Debug)]
pub struct CountersArgs {
    #[command(flatten)]
    pub dp: DataplaneArgs,
    /// JSON array of objects instead of a table.
    #[arg(long)]
    pub json: bool,
}
