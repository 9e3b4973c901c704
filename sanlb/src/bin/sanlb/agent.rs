//! `sanlb agent`.

use std::{process::ExitCode, time::Duration};

use anyhow::Context as _;
use futures_util::FutureExt as _;
use sanlb::{
    agent::{Agent, AgentConfig, Client, PairOptions},
    config::AgentSection,
    dataplane::{Dataplane, DataplaneConfig},
    enforce::{NetlinkOwner, OwnerConfig},
};

use crate::{FAILURE, args::AgentArgs, bad_input};

/// Long poll for new shares between reports.
const LONG_POLL: Duration = Duration::from_secs(30);
/// Timeout of a report.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);

pub fn run(args: AgentArgs, file: &AgentSection) -> anyhow::Result<ExitCode> {
    let iface = args
        .dp
        .iface
        .clone()
        .or_else(|| file.iface.clone())
        .ok_or_else(|| bad_input(anyhow::anyhow!("give --iface (or iface in [agent])")))?;
    let controller_urls = if args.controller.is_empty() {
        file.controller.clone()
    } else {
        args.controller.clone()
    };
    let gateway = args.gateway.clone().or_else(|| file.gateway.clone());
    let token_file = args.token_file.clone().or_else(|| file.token_file.clone());
    let ca_file = args.ca_file.clone().or_else(|| file.ca_file.clone());
    let capacity = args.capacity.unwrap_or(file.capacity);
    let keep_pins = args.keep_pins || file.keep_pins;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the runtime")?;
    // Everything that can fail on input is checked before attaching.
    let controller = if controller_urls.is_empty() {
        None
    } else {
        let (Some(gateway), Some(token_file)) = (&gateway, &token_file) else {
            return Err(bad_input(anyhow::anyhow!(
                "--controller needs --gateway and --token-file (or gateway and token_file in [agent])"
            )));
        };
        let token = crate::controller::read_token(token_file)?;
        let client = Client::cluster(
            &controller_urls,
            &token,
            REQUEST_TIMEOUT,
            ca_file.as_deref(),
        )
        .map_err(bad_input)?;
        if !capacity.is_finite() || capacity <= 0.0 {
            return Err(bad_input(anyhow::anyhow!(
                "--capacity must be a finite number > 0, not {capacity}"
            )));
        }
        // The owner's sockets and tasks live on this runtime.
        let _rt = rt.enter();
        let owner = NetlinkOwner::new(OwnerConfig {
            garp_count: args.garp_count.unwrap_or(file.garp_count),
            garp_interval: args.garp_interval.unwrap_or(file.garp_interval),
            ..OwnerConfig::new(&iface)
        })
        .with_context(|| format!("managing storage addresses on {iface}"))?;
        Some((client, owner, gateway.clone()))
    };
    let cfg = DataplaneConfig {
        iface: iface.clone(),
        ports: if args.ports.is_empty() {
            file.ports.clone()
        } else {
            args.ports.clone()
        },
        max_flows: args.max_flows.unwrap_or(file.max_flows),
        pin_dir: args.dp.pin_dir.clone().or_else(|| file.pin_dir.clone()),
        xdp_mode: args.xdp_mode.map_or(file.xdp_mode, Into::into),
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
    let (dp, code) = match controller {
        None => {
            rt.block_on(shutdown_signal());
            (dp, ExitCode::SUCCESS)
        }
        Some((client, owner, gateway)) => {
            tracing::info!(%gateway, controller = controller_urls.join(","), "reporting");
            let agent_cfg = AgentConfig {
                gateway,
                capacity,
                interval: args.interval.unwrap_or(file.interval),
                long_poll: LONG_POLL,
            };
            // Pair mode when the controller's shares carry a pair map: the
            // portal on port 3260 of the entities this gateway holds.
            let pairs = PairOptions {
                counted_ports: Some(cfg.ports.clone()),
                ..PairOptions::new()
            };
            let mut agent = Agent::new(agent_cfg, client, dp, owner).with_pairs(pairs);
            // A panic in the loop (a bug) must not leave the programs
            // attached and the pins behind: detach, then exit non-zero for
            // the service manager to restart the agent.
            let ended = rt.block_on(
                std::panic::AssertUnwindSafe(agent.run(shutdown_signal())).catch_unwind(),
            );
            let code = match ended {
                Ok(()) => ExitCode::SUCCESS,
                Err(_) => {
                    tracing::error!("the agent's loop panicked: detaching");
                    ExitCode::from(FAILURE)
                }
            };
            // Fail-static: the addresses stay on the NIC for the next run.
            (agent.into_counters(), code)
        }
    };
    tracing::info!(iface = dp.iface(), keep_pins, "detaching");
    dp.detach(keep_pins);
    Ok(code)
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
