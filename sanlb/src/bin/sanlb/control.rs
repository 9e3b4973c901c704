//! `sanlb pause`, `resume`, `pin`, `unpin`: the operator's controls, over
//! the controller's authenticated API (the agents' token).

use std::{fmt::Write as _, io::Write as _, net::IpAddr, process::ExitCode};

use anyhow::Context as _;
use sanlb::{
    agent::ClientError,
    config::ControlSection,
    proto::{ControlsStatus, PinRequest, UnpinRequest},
};

use crate::{Exit, REFUSED, UNREACHABLE, args::ControlArgs, bad_input};

/// What to ask.
pub enum Action {
    Pause,
    Resume,
    Pin(IpAddr, String),
    Unpin(IpAddr),
}

pub fn run(action: Action, args: ControlArgs, file: &ControlSection) -> anyhow::Result<ExitCode> {
    let urls = crate::remote::controllers(&args.controller, &file.controller, "control")?;
    let token_file = args
        .token_file
        .as_ref()
        .or(file.token_file.as_ref())
        .ok_or_else(|| {
            bad_input(anyhow::anyhow!(
                "give --token-file (or token_file in [control]): the agents' token"
            ))
        })?;
    let token = crate::controller::read_token(token_file)?;
    let ca = args.ca_file.as_ref().or(file.ca_file.as_ref());
    let client = crate::remote::client(&urls, &token, ca.map(|p| p.as_path()))?;
    let rt = crate::remote::runtime()?;
    let reply = rt.block_on(async {
        match &action {
            Action::Pause => client.pause(false).await,
            Action::Resume => client.pause(true).await,
            Action::Pin(target, gateway) => {
                client
                    .pin(&PinRequest {
                        target: *target,
                        gateway: gateway.clone(),
                    })
                    .await
            }
            Action::Unpin(target) => client.unpin(&UnpinRequest { target: *target }).await,
        }
    });
    let controls = reply.map_err(|e| {
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
        serde_json::to_string_pretty(&controls)? + "\n"
    } else {
        render(&controls)
    };
    match std::io::stdout().write_all(text.as_bytes()) {
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => Ok(ExitCode::SUCCESS),
        r => {
            r.context("writing the reply")?;
            Ok(ExitCode::SUCCESS)
        }
    }
}

/// The controls in force, a line each.
pub fn render(c: &ControlsStatus) -> String {
    let mut o = String::new();
    if c.advise {
        let _ = writeln!(o, "advise mode: decisions are shown, none is enforced");
    }
    let _ = match c.paused_since_ms {
        Some(ms) => writeln!(
            o,
            "rebalancing paused since {} UTC (failover and pins still act)",
            crate::status::clock(ms)
        ),
        None => writeln!(o, "rebalancing running"),
    };
    if c.pins.is_empty() {
        let _ = writeln!(o, "no pins");
    }
    for p in &c.pins {
        let _ = writeln!(o, "pinned {} to {}", p.target, p.gateway);
    }
    let _ = writeln!(
        o,
        "move cool-down {} s, {} routes cooling",
        c.move_cooldown_ms / 1000,
        c.cooling.len()
    );
    o
}
