//! `sanlb drain` and `sanlb undrain`.

use std::{
    process::ExitCode,
    time::{Duration, Instant},
};

use anyhow::Context as _;
use sanlb::{agent::Client, proto::DrainRequest};

use crate::args::DrainArgs;

pub fn run(args: DrainArgs, drain: bool) -> anyhow::Result<ExitCode> {
    let token = match &args.token_file {
        Some(p) => crate::controller::read_token(p)?,
        None => String::new(),
    };
    let client = Client::new(&args.controller, &token, Duration::from_secs(5))?;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the runtime")?;
    let req = DrainRequest {
        gateway: args.gateway.clone(),
        boot_id: None,
    };
    let reply = rt.block_on(async {
        if drain {
            client.drain(&req).await
        } else {
            client.undrain(&req).await
        }
    })?;
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
    // Until it holds nothing and nothing is assigned to it.
    let deadline = Instant::now() + args.wait;
    loop {
        let st = rt.block_on(client.status())?;
        let g = st.gateways.iter().find(|g| g.name == args.gateway);
        let assigned = st
            .map
            .iter()
            .filter(|m| m.ownership.assigned() == Some(args.gateway.as_str()))
            .count();
        let held = g.map_or(0, |g| g.owned.len());
        if assigned == 0 && held == 0 {
            println!("{}: empty", args.gateway);
            return Ok(ExitCode::SUCCESS);
        }
        if Instant::now() >= deadline {
            eprintln!(
                "sanlb: {} still has {assigned} routes and holds {held} addresses after {:?}",
                args.gateway, args.wait
            );
            return Ok(ExitCode::FAILURE);
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}
