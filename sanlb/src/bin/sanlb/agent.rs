//! `sanlb agent`.

use std::{process::ExitCode, time::Duration};

use anyhow::Context as _;
use futures_util::FutureExt as _;
use sanlb::{
    agent::{Agent, AgentConfig, Client, FaultConfig, PairOptions, metrics},
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
    let metrics_listen = args.metrics_listen.or(file.metrics_listen);
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
        let window = args.probe_window.unwrap_or(file.probe_window);
        if window.is_zero() || window > Duration::from_secs(5) {
            return Err(bad_input(anyhow::anyhow!(
                "--probe-window must be in (0, 5s], not {window:?}"
            )));
        }
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
    // The agent's own /metrics: bound before the loop starts, so a taken
    // port is an error at start.
    let metrics = match metrics_listen {
        Some(addr) => Some(
            rt.block_on(tokio::net::TcpListener::bind(addr))
                .with_context(|| format!("metrics listener on {addr}"))?,
        ),
        None => None,
    };
    let (dp, code) = match controller {
        None => {
            let stats = metrics::SharedStats::default();
            if let Some(l) = metrics {
                rt.spawn(serve_metrics(l, stats.clone()));
            }
            // Counting only: the metrics are refreshed from the maps every
            // second.
            rt.block_on(async {
                let mut tick = tokio::time::interval(Duration::from_secs(1));
                let mut shutdown = std::pin::pin!(shutdown_signal());
                loop {
                    tokio::select! {
                        () = &mut shutdown => break,
                        _ = tick.tick() => {
                            let read = dp.snapshot();
                            let mut s = stats.lock().unwrap_or_else(|p| p.into_inner());
                            match read {
                                Ok(snap) => {
                                    s.flows = snap.flows.len();
                                    s.bytes = snap.flows.iter().fold([0u64; 2], |a, f| [
                                        a[0].wrapping_add(f.counters.to_target_bytes),
                                        a[1].wrapping_add(f.counters.to_initiator_bytes),
                                    ]);
                                    s.hooks = Some((snap.ingress, snap.egress));
                                }
                                Err(_) => s.read_failures += 1,
                            }
                        }
                    }
                }
            });
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
            let faults = FaultConfig {
                heartbeat: args.heartbeat.unwrap_or(file.heartbeat),
                self_probe: args.self_probe.unwrap_or(file.self_probe),
                probe_window: args.probe_window.unwrap_or(file.probe_window),
                service_port: cfg.ports.first().copied(),
                on_stop: args.on_stop.map_or(file.on_stop, Into::into),
                handoff_timeout: args.handoff_timeout.unwrap_or(file.handoff_timeout),
            };
            let mut agent = Agent::new(agent_cfg, client, dp, owner)
                .with_pairs(pairs)
                .with_faults(faults);
            if let Some(l) = metrics {
                rt.spawn(serve_metrics(l, agent.stats()));
            }
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
            // Fail-static (unless handed off): what is held stays on the
            // NIC for the next run.
            (agent.into_counters(), code)
        }
    };
    tracing::info!(iface = dp.iface(), keep_pins, "detaching");
    dp.detach(keep_pins);
    Ok(code)
}

async fn serve_metrics(listener: tokio::net::TcpListener, stats: metrics::SharedStats) {
    if let Err(e) = metrics::serve(listener, stats).await {
        tracing::error!(error = %e, "agent metrics stopped");
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
