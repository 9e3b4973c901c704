//! `sanlb counters`.

use std::{io::Write as _, process::ExitCode};

use anyhow::Context as _;
use sanlb::{config::AgentSection, counters, dataplane};

use crate::{args::CountersArgs, bad_input};

pub fn run(args: CountersArgs, file: &AgentSection) -> anyhow::Result<ExitCode> {
    let iface = args
        .dp
        .iface
        .clone()
        .or_else(|| file.iface.clone())
        .ok_or_else(|| bad_input(anyhow::anyhow!("give --iface (or iface in [agent])")))?;
    let dir = args
        .dp
        .pin_dir
        .clone()
        .or_else(|| file.pin_dir.clone())
        .unwrap_or_else(|| dataplane::default_pin_dir(&iface));
    let maps = dataplane::PinnedMaps::open(&dir)?;
    if dataplane::agent_running(&iface) == Some(false) {
        // A closed stderr must not fail the command.
        let _ = writeln!(
            std::io::stderr(),
            "sanlb counters: warning: no agent counts on {iface} now: these are the counts a stopped agent left pinned in {} (they no longer change)",
            dir.display()
        );
    }
    let snap = maps
        .snapshot()
        .with_context(|| format!("reading {}", dir.display()))?;
    let text = if args.json {
        counters::render_json(&snap)? + "\n"
    } else {
        counters::render_table(&iface, &snap)
    };
    match std::io::stdout().write_all(text.as_bytes()) {
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => Ok(ExitCode::SUCCESS),
        r => {
            r.context("writing the counters")?;
            Ok(ExitCode::SUCCESS)
        }
    }
}
