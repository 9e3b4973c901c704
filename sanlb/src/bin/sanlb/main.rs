//! The `sanlb` command: one binary, one subcommand per role.

mod agent;
mod args;
mod controller;
mod counters;
mod drain;
mod plan;
mod status;

use std::process::ExitCode;

use clap::Parser as _;

fn main() -> ExitCode {
    let args = args::Cli::parse();
    init_tracing();
    let result = match args.command {
        args::Command::Agent(a) => agent::run(a),
        args::Command::Counters(c) => counters::run(c),
        args::Command::Controller(c) => controller::run(c),
        args::Command::Status(s) => status::run(s),
        args::Command::Plan(p) => plan::run(p),
        args::Command::Drain(d) => drain::run(d, true),
        args::Command::Undrain(d) => drain::run(d, false),
    };
    match result {
        Ok(code) => code,
        Err(err) => {
            eprintln!("sanlb: {err:#}");
            ExitCode::FAILURE
        }
    }
}

fn init_tracing() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .init();
}
