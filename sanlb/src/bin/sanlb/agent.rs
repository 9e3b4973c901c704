//! `sanlb agent`.

use std::{process::ExitCode, time::Duration};

use anyhow::Context as _;
use sanlb::{
    agent::{Agent, AgentConfig, Client},
    dataplane::{Dataplane, DataplaneConfig},
    enforce::{AddressOwner, EnforceError},
};

use crate::args::AgentArgs;

/// Long poll for new shares between reports.
const LONG_POLL: Duration = Duration::from_secs(30);
/// Timeout of a report.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);

pub fn run(args: AgentArgs) -> anyhow::Result<ExitCode> {
    // Everything that can fail on input is checked before attaching.
    let controller = match &args.controller {
        Some(url) => {
            let token = crate::controller::read_token(args.token_file.as_deref().expect("clap requires it"))?;
            let client = Client::new(url, &token, REQUEST_TIMEOUT)?;
            if !args.capacity.is_finite() || args.capacity <= 0.0 {
                anyhow::bail!("--capacity must be a finite number > 0, not {}", args.capacity);
            }
            Some((client, address_owner(&args)?))
        }
        None => None,
    };
    let cfg = DataplaneConfig {
        iface: args.dp.iface.clone(),
        ports: args.ports.clone(),
        max_flows: args.max_flows,
        pin_dir: args.dp.pin_dir.clone(),
        xdp_mode: args.xdp_mode,
    };
    let dp = Dataplane::attach(&cfg).with_context(|| format!("starting on {}", cfg.iface))?;
    tracing::info!(
        iface = dp.iface(),
        xdp_mode = %dp.xdp_mode(),
        pins = %dp.pin_dir().display(),
        ports = ?cfg.ports,
        "counting iSCSI traffic (XDP ingress, TC egress)"
    );
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the runtime")?;
    let dp = match controller {
        None => {
            rt.block_on(shutdown_signal());
            dp
        }
        Some((client, owner)) => {
            let gateway = args.gateway.clone().expect("clap requires it");
            tracing::info!(%gateway, controller = args.controller.as_deref().unwrap_or_default(), "reporting");
            let agent_cfg = AgentConfig {
                gateway,
                capacity: args.capacity,
                interval: args.interval,
                long_poll: LONG_POLL,
            };
            let mut agent = Agent::new(agent_cfg, client, dp, owner);
            rt.block_on(agent.run(shutdown_signal()));
            agent.into_counters()
        }
    };
    tracing::info!(iface = dp.iface(), keep_pins = args.keep_pins, "detaching");
    dp.detach(args.keep_pins);
    Ok(ExitCode::SUCCESS)
}

/// The address owner of this gateway: where enforcement is wired in.
///
/// `sanlb::enforce` has no rtnetlink implementation in this build yet, so an
/// agent with `--controller` refuses to start rather than report addresses
/// it cannot move. When `NetlinkOwner` lands, the body becomes
/// `Ok(NetlinkOwner::new(OwnerConfig { iface: args.dp.iface.clone(),
/// garp_count: args.garp_count, garp_interval: args.garp_interval })?)`
/// and the return type `anyhow::Result<NetlinkOwner>`.
fn address_owner(args: &AgentArgs) -> anyhow::Result<NoOwner> {
    let _ = (args.garp_count, args.garp_interval);
    anyhow::bail!(
        "--controller needs address enforcement on {} (sanlb::enforce::NetlinkOwner), which this build does not have yet",
        args.dp.iface
    )
}

/// No owner can exist: stands for the rtnetlink owner until it lands.
enum NoOwner {}

impl AddressOwner for NoOwner {
    async fn owned(&self) -> Result<std::collections::BTreeSet<std::net::IpAddr>, EnforceError> {
        match *self {}
    }
    async fn acquire(&self, _: std::net::IpAddr) -> Result<(), EnforceError> {
        match *self {}
    }
    async fn release(&self, _: std::net::IpAddr) -> Result<(), EnforceError> {
        match *self {}
    }
}

/// Resolves on SIGINT or SIGTERM.
pub async fn shutdown_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate()).expect("installing the SIGTERM handler");
    let mut int = signal(SignalKind::interrupt()).expect("installing the SIGINT handler");
    tokio::select! {
        _ = term.recv() => {}
        _ = int.recv() => {}
    }
}
