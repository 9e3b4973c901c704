//! `sanlb plan`.

use std::{io::Write as _, path::PathBuf, process::ExitCode, time::Duration};

use anyhow::Context as _;
use clap::{ArgGroup, Args};
use sanlb::{
    optimize::{self, Options, Solver},
    plan::{self, Input, Weights},
};

/// Exit code of bad input.
const BAD_INPUT: u8 = 2;

#[derive(Args, Debug)]
#[command(
    group(ArgGroup::new("input").required(true).args(["problem", "traffic"])),
    after_help = "\
Inputs (docs/optimiser.md and docs/examples/ have samples):
  --problem FILE    JSON: {\"gateways\":[{\"name\":\"gw1\",\"capacity\":1.0}],
                    \"routes\":[{\"target\":\"198.18.1.50\",\"host\":null,\"rate\":1200.5,
                    \"current\":\"gw1\",\"allowed\":[\"gw1\",\"gw2\"]}],\"w_var\":1.0,\"w_change\":0.01}
  --traffic FILE    CSV: first row the target addresses (after a corner cell), first
                    column the host addresses, cells the bytes in the interval
  --gateways FILE   JSON array: [{\"name\":\"gw1\",\"capacity\":1.0}, ...] (capacity
                    defaults to 1.0; 0 = drained)
  --current FILE    JSON array: [{\"target\":\"198.18.1.50\",\"host\":null,\"gateway\":\"gw1\"}, ...]
                    or the output of a previous `sanlb plan --json`

Exit status: 0 planned, 2 bad input (the message names the file, route and reason)."
)]
pub struct PlanArgs {
    /// The problem as JSON.
    #[arg(long, value_name = "FILE")]
    pub problem: Option<PathBuf>,
    /// The traffic matrix as CSV (needs --gateways).
    #[arg(long, value_name = "FILE.csv", requires = "gateways")]
    pub traffic: Option<PathBuf>,
    /// The gateways as JSON (with --traffic).
    #[arg(long, value_name = "FILE", requires = "traffic")]
    pub gateways: Option<PathBuf>,
    /// The map in force as JSON (with --traffic).
    #[arg(long, value_name = "FILE", requires = "traffic")]
    pub current: Option<PathBuf>,
    /// One route per (host, target) pair instead of per target (with --traffic).
    #[arg(long, requires = "traffic")]
    pub pairs: bool,
    /// The algorithm.
    #[arg(long, value_enum, default_value_t = Solver::Auto)]
    pub solver: Solver,
    /// Weight of the normalised variance [default: the file's, else 1].
    #[arg(long, value_name = "W", allow_negative_numbers = true)]
    pub w_var: Option<f64>,
    /// Weight of one move [default: the file's, else 0.01].
    #[arg(long, value_name = "W", allow_negative_numbers = true)]
    pub w_change: Option<f64>,
    /// Longest search, e.g. 1s, 250ms, 2.5 (seconds).
    #[arg(long, value_name = "TIME", default_value = "1s", value_parser = parse_duration)]
    pub time_limit: Duration,
    /// Seed of the randomised heuristics.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// JSON instead of tables.
    #[arg(long)]
    pub json: bool,
}

fn parse_duration(s: &str) -> Result<Duration, String> {
    let (number, scale) = if let Some(ms) = s.strip_suffix("ms") {
        (ms, 1e-3)
    } else {
        (s.strip_suffix('s').unwrap_or(s), 1.0)
    };
    number
        .trim()
        .parse::<f64>()
        .ok()
        .and_then(|v| Duration::try_from_secs_f64(v * scale).ok())
        .ok_or_else(|| format!("{s:?} is not a duration like 1s, 250ms or 2.5"))
}

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
        if let Some(v) = value.filter(|v| !v.is_finite() || *v < 0.0) {
            eprintln!("sanlb plan: {flag} {v}: must be a finite number ≥ 0");
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
            eprintln!("sanlb plan: {e}");
            return Ok(ExitCode::from(BAD_INPUT));
        }
    };
    let options = Options {
        solver: args.solver,
        time_limit: args.time_limit,
        seed: args.seed,
    };
    let solution = match optimize::solve(&problem, &options) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("sanlb plan: {e}");
            return Ok(ExitCode::from(BAD_INPUT));
        }
    };
    tracing::debug!(solver = %solution.solver, optimal = solution.optimal, "planned");
    let text = if args.json {
        plan::render_json(&problem, &solution)? + "\n"
    } else {
        plan::render_table(&problem, &solution)
    };
    std::io::stdout()
        .write_all(text.as_bytes())
        .context("writing the plan")?;
    Ok(ExitCode::SUCCESS)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(parse_duration("1s"), Ok(Duration::from_secs(1)));
        assert_eq!(parse_duration("250ms"), Ok(Duration::from_millis(250)));
        assert_eq!(parse_duration("2.5"), Ok(Duration::from_millis(2500)));
        assert!(parse_duration("-1s").is_err());
        assert!(parse_duration("soon").is_err());
    }
}
