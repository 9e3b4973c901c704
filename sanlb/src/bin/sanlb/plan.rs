//! `sanlb plan`.

use std::{io::Write as _, process::ExitCode};

use anyhow::Context as _;
use sanlb::{
    optimize::{self, Options},
    plan::{self, Input, Weights},
};

use crate::args::PlanArgs;

/// Exit code of bad input.
const BAD_INPUT: u8 = 2;

pub fn run(args: PlanArgs) -> anyhow::Result<ExitCode> {
    let input = match (args.problem, args.traffic, args.gateways) {
        (Some(problem), _, _) => Input::Problem(problem),
        (None, Some(traffic), Some(gateways)) => Input::Traffic {
            traffic,
            gateways,
            current: args.current,
            pairs: args.pairs,
        },
        // clap's group and `requires` rule the other cases out.
        _ => anyhow::bail!("give --problem, or --traffic with --gateways"),
    };
    for (flag, value) in [("--w-var", args.w_var), ("--w-change", args.w_change)] {
        if let Some(v) = value.filter(|v| !(0.0..=optimize::MAX_WEIGHT).contains(v)) {
            let _ = writeln!(
                std::io::stderr(),
                "sanlb plan: {flag} {v}: must be a number in [0, 1e12]"
            );
            return Ok(ExitCode::from(BAD_INPUT));
        }
    }
    let weights = Weights {
        w_var: args.w_var,
        w_change: args.w_change,
    };
    let problem = match plan::load(&input, weights) {
        Ok(p) => p,
        Err(e) => {
            let _ = writeln!(std::io::stderr(), "sanlb plan: {e}");
            return Ok(ExitCode::from(BAD_INPUT));
        }
    };
    let options = Options {
        solver: args.solver.into(),
        time_limit: args.time_limit,
        seed: args.seed,
    };
    let solution = match optimize::solve(&problem, &options) {
        Ok(s) => s,
        Err(e) => {
            let _ = writeln!(std::io::stderr(), "sanlb plan: {e}");
            return Ok(ExitCode::from(BAD_INPUT));
        }
    };
    tracing::debug!(solver = %solution.solver, optimal = solution.optimal, "planned");
    let text = if args.json {
        plan::render_json(&problem, &solution)? + "\n"
    } else {
        plan::render_table(&problem, &solution)
    };
    match std::io::stdout().write_all(text.as_bytes()) {
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => Ok(ExitCode::SUCCESS),
        r => {
            r.context("writing the plan")?;
            Ok(ExitCode::SUCCESS)
        }
    }
}
