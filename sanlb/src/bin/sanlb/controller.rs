//! `sanlb controller`.

use std::{collections::BTreeSet, path::Path, process::ExitCode};

use anyhow::Context as _;
use sanlb::{
    cluster::{ClusterError, ElectorConfig, Etcd, StateStore},
    config::{ControllerSection, IsnsSection},
    controller::{
        Config, ConfigError, Controller, PairSettings,
        isns::IsnsSettings,
        leadership::{Cluster, check_state},
        server::{self, Limits, Options, Server},
        store::Store,
    },
    optimize::Options as SolverOptions,
    proto::Mode,
    traffic,
};

use crate::{
    FAILURE,
    args::{ControllerArgs, IsnsArgs},
    bad_input,
};

/// Reads a bearer token: the file's content without surrounding whitespace.
/// A missing or malformed file is bad input (exit 2).
pub fn read_token(path: &Path) -> anyhow::Result<String> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("reading the token file {}", path.display()))
        .map_err(bad_input)?;
    let token = text.trim();
    if token.is_empty() || !token.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(bad_input(anyhow::anyhow!(
            "token file {}: expected one printable token",
            path.display()
        )));
    }
    Ok(token.to_owned())
}

pub fn run(args: ControllerArgs, file: &ControllerSection) -> anyhow::Result<ExitCode> {
    let listen = args
        .listen
        .or(file.listen)
        .ok_or_else(|| bad_input(anyhow::anyhow!("give --listen (or listen in [controller])")))?;
    let token_file = args
        .token_file
        .or_else(|| file.token_file.clone())
        .ok_or_else(|| {
            bad_input(anyhow::anyhow!(
                "give --token-file (or token_file in [controller])"
            ))
        })?;
    let token = read_token(&token_file)?;
    let read_token = match args
        .read_token_file
        .or_else(|| file.read_token_file.clone())
    {
        Some(p) => {
            let t = read_token(&p)?;
            if t == token {
                return Err(bad_input(anyhow::anyhow!(
                    "read token file {}: the read-only token must differ from the agents' token",
                    p.display()
                )));
            }
            Some(t)
        }
        None => None,
    };
    let tls = match (
        args.tls_cert.or_else(|| file.tls_cert.clone()),
        args.tls_key.or_else(|| file.tls_key.clone()),
    ) {
        (Some(cert), Some(key)) => Some(server::tls_config(&cert, &key).map_err(bad_input)?),
        (None, None) => None,
        _ => {
            return Err(bad_input(anyhow::anyhow!(
                "tls_cert and tls_key go together: give both or neither"
            )));
        }
    };
    let limits = Limits {
        max_connections: args.max_connections.unwrap_or(file.max_connections),
        header_timeout: args.header_timeout.unwrap_or(file.header_timeout),
        body_timeout: args.body_timeout.unwrap_or(file.body_timeout),
    };
    let traffic_replace = args.traffic_replace || file.traffic_replace;
    // A bad a-priori matrix is bad input, like in `sanlb plan`: exit 2.
    let traffic = match args.traffic.or_else(|| file.traffic.clone()) {
        None if traffic_replace => {
            return Err(bad_input(anyhow::anyhow!(
                "--traffic-replace needs --traffic (or traffic in [controller])"
            )));
        }
        None => None,
        Some(p) => {
            let text = std::fs::read_to_string(&p)
                .map_err(|e| bad_input(anyhow::anyhow!("{}: {e}", p.display())))?;
            Some(traffic::parse_csv(&p, &text).map_err(bad_input)?)
        }
    };
    let mut storage = file.storage.clone();
    storage.extend(args.storage);
    // `--target ADDR[=IQN]` adds to the file's `targets` and `target_names`.
    let mut targets: BTreeSet<_> = file.targets.iter().copied().collect();
    targets.extend(args.targets.iter().map(|(a, _)| *a));
    let mut target_names = file.target_names.clone();
    for (a, n) in &args.targets {
        targets.insert(*a);
        if let Some(n) = n {
            target_names.entry(*a).or_default().push(n.clone());
        }
    }
    let cfg = Config {
        interval: args.interval.unwrap_or(file.interval),
        window: args.window.unwrap_or(file.window),
        w_var: args.w_var.unwrap_or(file.w_var),
        w_change: args.w_change.unwrap_or(file.w_change),
        min_gain: args.min_gain.unwrap_or(file.min_gain),
        lease: args.lease.unwrap_or(file.lease),
        startup_grace: args.startup_grace.unwrap_or(file.startup_grace),
        release_timeout: args.release_timeout.unwrap_or(file.release_timeout),
        probe_timeout: args.probe_timeout.unwrap_or(file.probe_timeout),
        reprobe: args.reprobe.unwrap_or(file.reprobe),
        forget_after: args.forget_after.unwrap_or(file.forget_after),
        mode: args.mode.map_or(file.mode, Into::into),
        storage,
        targets: targets.into_iter().collect(),
        traffic,
        traffic_replace,
        solver: SolverOptions {
            solver: args.solver.map_or(file.solver, Into::into),
            time_limit: args.time_limit.unwrap_or(file.time_limit),
            seed: args.seed.unwrap_or(file.seed),
        },
        pairs: PairSettings {
            data_pool: args.data_pool.or(file.data_pool),
            data_port: args.data_port.unwrap_or(file.data_port),
            target_names,
        },
        advise: args.advise || file.advise,
        move_cooldown: args.move_cooldown.unwrap_or(file.move_cooldown),
    };
    cfg.validate()
        .map_err(|e| bad_input(anyhow::anyhow!(flag_error(&e))))?;
    let isns = isns_settings(&args.isns_args, &file.isns, &cfg.pairs.target_names)?;
    if limits.max_connections == 0 {
        return Err(bad_input(anyhow::anyhow!("--max-connections must be ≥ 1")));
    }
    for (flag, d) in [
        ("--header-timeout", limits.header_timeout),
        ("--body-timeout", limits.body_timeout),
    ] {
        if d.is_zero() {
            return Err(bad_input(anyhow::anyhow!("{flag} must be > 0")));
        }
    }
    let etcd = if args.etcd.is_empty() {
        file.etcd.clone()
    } else {
        args.etcd
    };
    if cfg.advise {
        tracing::warn!("advise mode: every decision is computed and shown, none is enforced");
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("starting the runtime")?;
    if !etcd.is_empty() && isns.is_some() {
        // A follower would publish its empty map: not wired for a cluster yet.
        return Err(bad_input(anyhow::anyhow!(
            "--isns with --etcd is not supported: give --isns to a controller without --etcd"
        )));
    }
    let (controller, cluster) = if etcd.is_empty() {
        let state = args.state.unwrap_or_else(|| file.state.clone());
        let controller = Controller::new(cfg, Some(Store::new(&state)), std::time::Instant::now())
            .with_context(|| format!("starting from {}", state.display()))?;
        (controller, None)
    } else {
        let scheme = if tls.is_some() { "https" } else { "http" };
        let advertise = match args.advertise.or_else(|| file.advertise.clone()) {
            Some(a) => a,
            None if listen.ip().is_unspecified() => {
                return Err(bad_input(anyhow::anyhow!(
                    "--etcd needs --advertise (or advertise in [controller]): --listen {listen} names no address agents could reach"
                )));
            }
            None => format!("{scheme}://{listen}"),
        };
        let elector = ElectorConfig {
            advertise,
            ttl: args.leader_ttl.unwrap_or(file.leader_ttl),
        };
        elector.validate().map_err(cluster_error)?;
        let prefix = args.etcd_prefix.unwrap_or_else(|| file.etcd_prefix.clone());
        let timeout = args.etcd_timeout.unwrap_or(file.etcd_timeout);
        let mode = cfg.mode;
        let etcd = rt.block_on(join_etcd(&etcd, &prefix, timeout, mode))?;
        let controller = Controller::new(cfg, None, std::time::Instant::now())?;
        (controller, Some(Cluster { etcd, elector }))
    };
    rt.block_on(async {
        let listener = tokio::net::TcpListener::bind(listen)
            .await
            .with_context(|| format!("listening on {listen}"))?;
        let options = Options {
            read_token,
            tls,
            limits,
            cluster,
            isns,
        };
        let mut server = Server::start_with(controller, token, listener, options)?;
        tokio::select! {
            () = crate::agent::shutdown_signal() => {
                tracing::info!("stopping");
                server.stop().await;
                anyhow::Ok(ExitCode::SUCCESS)
            }
            failure = server.failed() => {
                // Half alive is worse than dead: save what can be saved and
                // let the service manager restart the process.
                tracing::error!("{failure}: stopping");
                server.stop().await;
                crate::say(format_args!("{failure}"));
                anyhow::Ok(ExitCode::from(FAILURE))
            }
        }
    })
}

/// Connects to etcd and checks what sanlb keeps under `prefix` (its keys,
/// and a state a leader could start from) before serving anything.
async fn join_etcd(
    endpoints: &[String],
    prefix: &str,
    timeout: std::time::Duration,
    mode: Mode,
) -> anyhow::Result<Etcd> {
    let etcd = Etcd::connect(endpoints, prefix, timeout)
        .await
        .map_err(cluster_error)?;
    let store = StateStore::new(&etcd);
    if let Some(saved) = store.read().await.map_err(cluster_error)? {
        check_state(store.key(), &saved, mode).map_err(cluster_error)?;
    }
    tracing::info!(
        etcd = etcd.endpoints(),
        prefix = etcd.prefix(),
        "etcd reached"
    );
    Ok(etcd)
}

/// An error of the cluster's layer in the words of the command line: bad
/// settings and refused keys are bad input (exit 2); an etcd that does not
/// answer is a failure (exit 1).
fn cluster_error(e: ClusterError) -> anyhow::Error {
    match e {
        ClusterError::Setting { setting, reason } => {
            let flag = match setting {
                "etcd prefix" => "--etcd-prefix",
                "etcd timeout" => "--etcd-timeout",
                "leader ttl" => "--leader-ttl",
                "advertise" => "--advertise",
                other => other,
            };
            bad_input(anyhow::anyhow!("{flag} {reason}"))
        }
        e @ (ClusterError::Endpoint { .. } | ClusterError::Foreign { .. }) => {
            bad_input(anyhow::Error::from(e))
        }
        e => anyhow::Error::from(e),
    }
}

/// `--isns`, `--host`, `--isns-source`, `--isns-period` over
/// `[controller.isns]`; `None` without a server.
fn isns_settings(
    args: &IsnsArgs,
    file: &IsnsSection,
    target_names: &std::collections::BTreeMap<std::net::IpAddr, Vec<String>>,
) -> anyhow::Result<Option<IsnsSettings>> {
    let mut hosts = file.hosts.clone();
    hosts.extend(args.hosts.iter().cloned());
    let Some(server) = args.server.clone().or_else(|| file.server.clone()) else {
        if !hosts.is_empty() || args.source.is_some() || args.period.is_some() {
            return Err(bad_input(anyhow::anyhow!(
                "--host, --isns-source and --isns-period need --isns (or server in [controller.isns])"
            )));
        }
        return Ok(None);
    };
    let settings = IsnsSettings {
        server,
        source: args.source.clone().unwrap_or_else(|| file.source.clone()),
        hosts,
        period: args.period.unwrap_or(file.period),
        prefix: file.prefix.clone(),
    };
    settings
        .validate(target_names)
        .map_err(|e| bad_input(anyhow::anyhow!(flag_error(&e))))?;
    Ok(Some(settings))
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
