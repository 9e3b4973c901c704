//! `sanlb counters`.

use std::process::ExitCode;

use anyhow::Context as _;
use sanlb::{counters, dataplane};

use crate::args::CountersArgs;

pub fn run(args: CountersArgs) -> anyhow::Result<ExitCode> {
    let dir = args
        .dp
        .pin_dir
        .clone()
        .unwrap_or_else(|| dataplane::default_pin_dir(&args.dp.iface));
    let maps = dataplane::PinnedMaps::open(&dir)?;
    if dataplane::agent_running(&args.dp.iface) == Some(false) {
        eprintln!(
            "sanlb counters: warning: no agent counts on {} now: these are the counts a stopped agent left pinned in {} (they no longer change)",
            args.dp.iface,
            dir.display()
        );
    }
    let snap = maps
        .snapshot()
        .with_context(|| format!("reading {}", dir.display()))?;
    if args.json {
        println!("{}", counters::render_json(&snap)?);
    } else {
        print!("{}", counters::render_table(&args.dp.iface, &snap));
    }
    Ok(ExitCode::SUCCESS)
}
