//! `sanlb status`.

use std::{fmt::Write as _, io::Write as _, process::ExitCode};

use anyhow::Context as _;
use sanlb::{
    agent::ClientError,
    config::StatusSection,
    proto::{GatewayState, GatewayStatus, Ownership, Status},
};

use crate::{Exit, REFUSED, UNREACHABLE, args::StatusArgs};

pub fn run(args: StatusArgs, file: &StatusSection) -> anyhow::Result<ExitCode> {
    let urls = crate::remote::controllers(&args.controller, &file.controller, "status")?;
    let token = match args.token_file.as_ref().or(file.token_file.as_ref()) {
        Some(p) => crate::controller::read_token(p)?,
        None => String::new(),
    };
    let ca = args.ca_file.as_ref().or(file.ca_file.as_ref());
    let client = crate::remote::client(&urls, &token, ca.map(|p| p.as_path()))?;
    let rt = crate::remote::runtime()?;
    let status = rt.block_on(client.status()).map_err(|e| {
        let code = match e {
            ClientError::Refused { .. } => REFUSED,
            _ => UNREACHABLE,
        };
        anyhow::Error::from(Exit {
            code,
            error: e.into(),
        })
    })?;
    let text = if args.json {
        serde_json::to_string_pretty(&status)? + "\n"
    } else {
        render(client.current(), &status)
    };
    match std::io::stdout().write_all(text.as_bytes()) {
        // `sanlb status | head`: the reader has what it wanted.
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => Ok(ExitCode::SUCCESS),
        r => {
            r.context("writing the status")?;
            Ok(ExitCode::SUCCESS)
        }
    }
}

/// Rates in one unit, MiB/s, as everywhere sanlb shows rates.
fn rate(r: f64) -> String {
    format!("{:.1} MiB/s", r.max(0.0) / (1u64 << 20) as f64)
}

fn bar(fraction: f64, width: usize) -> String {
    let full = ((fraction.clamp(0.0, 1.0)) * width as f64).round() as usize;
    format!("{}{}", "█".repeat(full), "░".repeat(width - full))
}

/// `HH:MM:SS` (UTC) of a Unix time in ms.
pub fn clock(at_ms: u64) -> String {
    let s = at_ms / 1000 % 86_400;
    format!("{:02}:{:02}:{:02}", s / 3600, s / 60 % 60, s % 60)
}

/// The STATE column: liveness (issue 14), and a drain.
fn state(g: &GatewayStatus) -> String {
    let s = match g.health.state {
        GatewayState::Up if g.alive => "up",
        // An older controller sends no health: its `alive` says it.
        GatewayState::Up => "DEAD",
        GatewayState::LinkDown => "LINK-DOWN",
        GatewayState::Suspect => "SUSPECT",
        GatewayState::Serving => "SERVING",
        GatewayState::Dead => "DEAD",
    };
    match g.health.drained {
        Some(_) => format!("{s},drained"),
        None => s.to_owned(),
    }
}

fn render(url: &str, st: &Status) -> String {
    let mut o = String::new();
    let _ = writeln!(
        o,
        "controller {url}  generation {}  mode {}  var_norm {:.4}  interval {} ms × {}  lease {} ms\n",
        st.generation, st.mode, st.var_norm, st.interval_ms, st.window, st.lease_ms
    );
    if let Some(c) = &st.cluster {
        let _ = writeln!(
            o,
            "cluster: {} leads (term {}); this answer from {} ({}); etcd {}\n",
            c.leader.as_deref().unwrap_or("nobody"),
            c.term.map_or("-".into(), |t| t.to_string()),
            c.advertise,
            c.role,
            c.etcd
        );
    }
    let max_u = st
        .gateways
        .iter()
        .map(|g| g.utilisation)
        .fold(0.0, f64::max);
    let _ = writeln!(
        o,
        "{:<16} {:<17} {:>5} {:>12} {:<20} {:>6} {:>7} {:>8}",
        "GATEWAY", "STATE", "CAP", "LOAD", "", "ROUTES", "APPLIED", "LAST"
    );
    for g in &st.gateways {
        let routes = st
            .map
            .iter()
            .filter(|m| m.ownership.assigned() == Some(g.name.as_str()))
            .count();
        let frac = if max_u > 0.0 {
            g.utilisation / max_u
        } else {
            0.0
        };
        let last = g
            .last_report_ms
            .map_or("-".into(), |ms| format!("{:.1}s", ms as f64 / 1000.0));
        let _ = writeln!(
            o,
            "{:<16} {:<17} {:>5} {:>12} {} {:>6} {:>7} {:>8}",
            g.name,
            state(g),
            g.capacity,
            rate(g.load),
            bar(frac, 20),
            routes,
            g.applied,
            last
        );
    }
    for g in st
        .gateways
        .iter()
        .filter(|g| g.health.state == GatewayState::Serving)
    {
        let _ = writeln!(
            o,
            "  {}: agent silent, gateway serving (for {:.1}s): its {} addresses stay",
            g.name,
            g.health.state_ms as f64 / 1000.0,
            g.health.serving.len()
        );
    }
    let conflicts: Vec<_> = st
        .gateways
        .iter()
        .flat_map(|g| g.health.conflicts.iter().map(move |c| (g, c)))
        .collect();
    if !conflicts.is_empty() {
        let _ = writeln!(
            o,
            "\n{:<40} {:<16} {:<18} {:>8}  ALSO ANSWERING",
            "CONFLICT", "HELD BY", "ITS MAC", "SINCE"
        );
        for (g, c) in conflicts {
            let others: Vec<String> = c
                .others
                .iter()
                .map(|(m, n)| match n {
                    Some(n) => format!("{m} ({n})"),
                    None => format!("{m} (not a gateway)"),
                })
                .collect();
            let _ = writeln!(
                o,
                "{:<40} {:<16} {:<18} {:>7.1}s  {}",
                c.address.to_string(),
                g.name,
                g.health.mac.map_or_else(|| "-".into(), |m| m.to_string()),
                c.since_ms as f64 / 1000.0,
                others.join(", ")
            );
        }
    }
    let _ = writeln!(
        o,
        "\n{:<40} {:<24} {:<8} {:>7} {:>12}",
        "ROUTE", "OWNER", "STATE", "CHANGED", "RATE"
    );
    for m in &st.map {
        let route = match m.host {
            Some(h) => format!("{h}→{}", m.target),
            None if st.mode == sanlb::proto::Mode::Pair => format!("{} (portal)", m.target),
            None => m.target.to_string(),
        };
        let (owner, state) = match &m.ownership {
            Ownership::Unowned => ("-".to_owned(), "unowned"),
            Ownership::Owned { gateway } => (gateway.clone(), "owned"),
            Ownership::Moving { from, to, .. } => (format!("{from}→{to}"), "moving"),
            Ownership::Holding { from, to, .. } => (format!("{from}→{to}"), "holding"),
            Ownership::Evicting { from, to, .. } => (format!("{from}→{to}"), "evicting"),
        };
        let _ = writeln!(
            o,
            "{route:<40} {owner:<24} {state:<8} {:>7} {:>12}",
            m.changed,
            rate(m.rate)
        );
    }
    let _ = writeln!(o, "\nREBALANCES (newest last)");
    let _ = writeln!(
        o,
        "{:<8} {:>5} {:<9} {:<10} {:>5} {:>17} {:>9}  WHY",
        "UTC", "GEN", "TRIGGER", "RESULT", "MOVES", "VAR_NORM", "SOLVE"
    );
    for r in st.rebalances.iter().rev().take(8).rev() {
        let _ = writeln!(
            o,
            "{:<8} {:>5} {:<9} {:<10} {:>5} {:>17} {:>7.1}ms  {}",
            clock(r.at_ms),
            r.generation,
            r.trigger,
            if r.result.is_empty() {
                if r.adopted { "adopted" } else { "kept" }
            } else {
                r.result.as_str()
            },
            r.moves,
            format!(
                "{}→{:.4}",
                r.var_norm_before.map_or("-".into(), |v| format!("{v:.4}")),
                r.var_norm_after
            ),
            r.duration_ms,
            r.reason
        );
    }
    let c = &st.controls;
    if c.advise || c.paused_since_ms.is_some() || !c.pins.is_empty() {
        let _ = writeln!(o, "\nCONTROLS");
        o.push_str(&crate::control::render(c));
    }
    if !st.report_errors.is_empty() {
        let _ = writeln!(o, "\nREFUSED REQUESTS");
        for (reason, n) in &st.report_errors {
            let _ = writeln!(o, "{reason:<24} {n}");
        }
    }
    o
}
