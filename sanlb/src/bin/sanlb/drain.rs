//! `sanlb drain` and `sanlb undrain`.

use std::{
    process::ExitCode,
    time::{Duration, Instant},
};

use sanlb::{agent::ClientError, config::StatusSection, proto::DrainRequest};

use crate::{Exit, FAILURE, REFUSED, UNREACHABLE, args::DrainArgs};

/// A failed request as its exit status: 4 refused, 3 unreachable.
fn exit(e: ClientError) -> anyhow::Error {
    let code = match e {
        ClientError::Refused { .. } => REFUSED,
        _ => UNREACHABLE,
    };
    Exit {
        code,
        error: e.into(),
    }
    .into()
}

pub fn run(args: DrainArgs, file: &StatusSection, drain: bool) -> anyhow::Result<ExitCode> {
    let urls = crate::remote::controllers(&args.controller, &file.controller, "status")?;
    let token = match args.token_file.as_ref().or(file.token_file.as_ref()) {
        Some(p) => crate::controller::read_token(p)?,
        None => String::new(),
    };
    let ca = args.ca_file.as_ref().or(file.ca_file.as_ref());
    let client = crate::remote::client(&urls, &token, ca.map(|p| p.as_path()))?;
    let rt = crate::remote::runtime()?;
    let req = DrainRequest {
        gateway: args.gateway.clone(),
        boot_id: None,
    };
    let reply = rt
        .block_on(async {
            if drain {
                client.drain(&req).await
            } else {
                client.undrain(&req).await
            }
        })
        .map_err(exit)?;
    println!(
        "{}: {}, {} routes assigned, {} addresses held",
        reply.gateway,
        match reply.drained {
            Some(by) => format!("drained ({by:?})").to_lowercase(),
            None => "not drained".into(),
        },
        reply.routes,
        reply.held
    );
    if !drain || args.wait.is_zero() {
        return Ok(ExitCode::SUCCESS);
    }
    // Until nothing is assigned to it and it reports holding nothing.
    let deadline = Instant::now() + args.wait;
    loop {
        let st = rt.block_on(client.status()).map_err(exit)?;
        let assigned = st
            .map
            .iter()
            .filter(|m| m.ownership.assigned() == Some(args.gateway.as_str()))
            .count();
        let held = st
            .gateways
            .iter()
            .find(|g| g.name == args.gateway)
            .map_or(0, |g| g.owned.len());
        if assigned == 0 && held == 0 {
            println!("{}: empty", args.gateway);
            return Ok(ExitCode::SUCCESS);
        }
        if Instant::now() >= deadline {
            crate::say(format_args!(
                "{} still has {assigned} routes and holds {held} addresses after {:?}",
                args.gateway, args.wait
            ));
            return Ok(ExitCode::from(FAILURE));
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}
