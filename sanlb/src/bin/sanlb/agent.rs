//! `sanlb agent`.

use std::{process::ExitCode, time::Duration};

use anyhow::Context as _;
use sanlb::{
    agent::{Agent, AgentConfig, Client, FaultConfig},
    dataplane::{Dataplane, DataplaneConfig},
    enforce::{NetlinkOwner, OwnerConfig},
};

use crate::args::AgentArgs;

/// Long poll for new shares between reports.
const LONG_POLL: Duration = Duration::from_secs(30);
/// Timeout of a report.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);

pub fn run(args: AgentArgs) -> anyhow::Result<ExitCode> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the runtime")?;
    // Everything that can fail on input is checked before attaching.
    let controller = match &args.controller {
        Some(url) => {
            let token = crate::controller::read_token(
                args.token_file.as_deref().expect("clap requires it"),
            )?;
            let client = Client::new(url, &token, REQUEST_TIMEOUT)?;
            if args.probe_window.is_zero() || args.probe_window > Duration::from_secs(5) {
                anyhow::bail!(
                    "--probe-window must be in (0, 5s], not {:?}",
                    args.probe_window
                );
            }
            if !args.capacity.is_finite() || args.capacity <= 0.0 {
                anyhow::bail!(
                    "--capacity must be a finite number > 0, not {}",
                    args.capacity
                );
            }
            // The owner's sockets and tasks live on this runtime.
            let _rt = rt.enter();
            let owner = NetlinkOwner::new(OwnerConfig {
                garp_count: args.garp_count,
                garp_interval: args.garp_interval,
                ..OwnerConfig::new(&args.dp.iface)
            })
            .with_context(|| format!("managing storage addresses on {}", args.dp.iface))?;
            Some((client, owner))
        }
        None => None,
    };
    let cfg = DataplaneConfig {
        iface: args.dp.iface.clone(),
        ports: args.ports.clone(),
        max_flows: args.max_flows,
        pin_dir: args.dp.pin_dir.clone(),
        xdp_mode: args.xdp_mode.into(),
    };
    let dp = Dataplane::attach(&cfg).with_context(|| format!("starting on {}", cfg.iface))?;
    let attachment = dp.attachment();
    tracing::info!(
        iface = dp.iface(),
        ingress = %attachment.ingress,
        why = %attachment.reason,
        pins = %dp.pin_dir().display(),
        ports = ?cfg.ports,
        "counting iSCSI traffic (ingress: {}, egress: tc)",
        attachment.ingress
    );
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
            let faults = FaultConfig {
                heartbeat: args.heartbeat,
                self_probe: args.self_probe,
                probe_window: args.probe_window,
                service_port: args.ports.first().copied(),
                on_stop: args.on_stop.into(),
                handoff_timeout: args.handoff_timeout,
            };
            let mut agent = Agent::new(agent_cfg, client, dp, owner).with_faults(faults);
            rt.block_on(agent.run(shutdown_signal()));
            // Fail-static: the addresses stay on the NIC for the next run.
            agent.into_counters()
        }
    };
    tracing::info!(iface = dp.iface(), keep_pins = args.keep_pins, "detaching");
    dp.detach(args.keep_pins);
    Ok(ExitCode::SUCCESS)
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
