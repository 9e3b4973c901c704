//! `sanlb agent`.

use std::process::ExitCode;

use anyhow::Context as _;
use sanlb::dataplane::{Dataplane, DataplaneConfig};

use crate::args::AgentArgs;

pub fn run(args: AgentArgs) -> anyhow::Result<ExitCode> {
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
    rt.block_on(shutdown_signal());
    tracing::info!(iface = dp.iface(), keep_pins = args.keep_pins, "detaching");
    dp.detach(args.keep_pins);
    Ok(ExitCode::SUCCESS)
}

/// Resolves on SIGINT or SIGTERM.
async fn shutdown_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate()).expect("installing the SIGTERM handler");
    let mut int = signal(SignalKind::interrupt()).expect("installing the SIGINT handler");
    tokio::select! {
        _ = term.recv() => {}
        _ = int.recv() => {}
    }
}
