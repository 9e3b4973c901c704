//! `sanlb controller`.

use std::{path::Path, process::ExitCode};

use anyhow::Context as _;
use sanlb::{
    controller::ConfigError,
    controller::{Config, Controller, server::Server, store::Store},
    optimize::Options,
    traffic,
};

use crate::args::ControllerArgs;

/// Reads a bearer token: the file's content without surrounding whitespace.
pub fn read_token(path: &Path) -> anyhow::Result<String> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("reading the token file {}", path.display()))?;
    let token = text.trim();
    if token.is_empty() || !token.bytes().all(|b| b.is_ascii_graphic()) {
        anyhow::bail!(
            "token file {}: expected one printable token",
            path.display()
        );
    }
    Ok(token.to_owned())
}

pub fn run(args: ControllerArgs) -> anyhow::Result<ExitCode> {
    let token = read_token(&args.token_file)?;
    // A bad a-priori matrix is bad input, like in `sanlb plan`: exit 2.
    let traffic = match args.traffic.as_deref() {
        None => None,
        Some(p) => {
            let parsed = std::fs::read_to_string(p)
                .map_err(|e| format!("{}: {e}", p.display()))
                .and_then(|text| traffic::parse_csv(p, &text).map_err(|e| e.to_string()));
            match parsed {
                Ok(matrix) => Some(matrix),
                Err(e) => {
                    eprintln!("sanlb: {e}");
                    return Ok(ExitCode::from(2));
                }
            }
        }
    };
    let cfg = Config {
        interval: args.interval,
        window: args.window,
        w_var: args.w_var,
        w_change: args.w_change,
        min_gain: args.min_gain,
        lease: args.lease,
        startup_grace: args.startup_grace,
        release_timeout: args.release_timeout,
        probe_timeout: args.probe_timeout,
        reprobe: args.reprobe,
        forget_after: args.forget_after,
        mode: args.mode.into(),
        storage: args.storage,
        targets: args.targets,
        traffic,
        traffic_replace: args.traffic_replace,
        solver: Options {
            solver: args.solver.into(),
            time_limit: args.time_limit,
            seed: args.seed,
        },
    };
    if let Err(e) = cfg.validate() {
        eprintln!("sanlb: {}", flag_error(&e));
        return Ok(ExitCode::from(2));
    }
    let controller = Controller::new(
        cfg,
        Some(Store::new(&args.state)),
        std::time::Instant::now(),
    )
    .with_context(|| format!("starting from {}", args.state.display()))?;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("starting the runtime")?;
    rt.block_on(async {
        let listener = tokio::net::TcpListener::bind(args.listen)
            .await
            .with_context(|| format!("listening on {}", args.listen))?;
        let server = Server::start(controller, token, listener)?;
        crate::agent::shutdown_signal().await;
        tracing::info!("stopping");
        server.stop().await;
        anyhow::Ok(())
    })?;
    Ok(ExitCode::SUCCESS)
}

/// A configuration error in the words of the command line: the library
/// names settings (`min_gain`), the command line has flags (`--min-gain`).
fn flag_error(e: &ConfigError) -> String {
    match e {
        ConfigError::Invalid { setting, message } => {
            format!("--{} {message}", setting.replace('_', "-"))
        }
        ConfigError::NothingToManage => {
            "nothing to manage: give --storage, --target or --traffic".into()
        }
    }
}
