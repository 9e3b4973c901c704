//! The `sanlb` command: one binary, one subcommand per role.
//!
//! Exit status, for every subcommand: 0 success, 1 failure, 2 bad flags,
//! configuration or input; `sanlb status` and the controls (`pause`,
//! `resume`, `pin`, `unpin`) add 3 (controller unreachable) and 4 (request
//! refused). Errors are one line on stderr naming the input.

mod agent;
mod args;
mod control;
mod controller;
mod counters;
mod drain;
mod generate;
mod logging;
mod plan;
mod remote;
mod status;
mod token;

use std::{fmt, io::Write as _, path::Path, process::ExitCode};

use clap::Parser as _;
use sanlb::config::{ConfigFile, LogSection};

/// Exit status of a failure.
pub const FAILURE: u8 = 1;
/// Exit status of bad flags, configuration or input.
pub const BAD_INPUT: u8 = 2;
/// `sanlb status`: no answer from the controller.
pub const UNREACHABLE: u8 = 3;
/// `sanlb status`: the controller answered with an error.
pub const REFUSED: u8 = 4;

/// An error with the exit status it ends the process with.
#[derive(Debug)]
pub struct Exit {
    pub code: u8,
    pub error: anyhow::Error,
}

impl fmt::Display for Exit {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:#}", self.error)
    }
}

impl std::error::Error for Exit {}

/// `error` as bad input (exit 2).
pub fn bad_input(error: impl Into<anyhow::Error>) -> anyhow::Error {
    Exit {
        code: BAD_INPUT,
        error: error.into(),
    }
    .into()
}

/// Prints a line on stderr, ignoring a closed stderr (nothing to tell then).
pub fn say(line: fmt::Arguments<'_>) {
    let _ = writeln!(std::io::stderr(), "sanlb: {line}");
}

/// The config file: `--config`'s (which must exist), else the default
/// path's if it exists.
fn config(path: Option<&Path>) -> anyhow::Result<ConfigFile> {
    match path {
        Some(p) => ConfigFile::load(p),
        None => ConfigFile::load_default(),
    }
    .map_err(bad_input)
}

fn main() -> ExitCode {
    let cli = args::Cli::parse();
    let needs_config = matches!(
        cli.command,
        args::Command::Agent(_)
            | args::Command::Controller(_)
            | args::Command::Status(_)
            | args::Command::Drain(_)
            | args::Command::Undrain(_)
            | args::Command::Counters(_)
            | args::Command::Pause(_)
            | args::Command::Resume(_)
            | args::Command::Pin(_)
            | args::Command::Unpin(_)
    );
    let file = if needs_config {
        match config(cli.config.as_deref()) {
            Ok(f) => f,
            Err(e) => return report(e),
        }
    } else {
        ConfigFile::default()
    };
    let log = LogSection {
        format: cli.log_format.map_or(file.log.format, Into::into),
        ..file.log.clone()
    };
    logging::init(&log);
    let result = match cli.command {
        args::Command::Agent(a) => agent::run(a, &file.agent),
        args::Command::Counters(c) => counters::run(c, &file.agent),
        args::Command::Controller(c) => controller::run(*c, &file.controller),
        args::Command::Status(s) => status::run(s, &file.status),
        args::Command::Pause(a) => control::run(control::Action::Pause, a, &file.control),
        args::Command::Resume(a) => control::run(control::Action::Resume, a, &file.control),
        args::Command::Pin(p) => control::run(
            control::Action::Pin(p.target, p.gateway),
            p.control,
            &file.control,
        ),
        args::Command::Unpin(u) => {
            control::run(control::Action::Unpin(u.target), u.control, &file.control)
        }
        args::Command::Drain(d) => drain::run(d, &file.status, true),
        args::Command::Undrain(d) => drain::run(d, &file.status, false),
        args::Command::Plan(p) => plan::run(p),
        args::Command::Token(t) => token::run(t),
        args::Command::Generate(g) => generate::run(g),
    };
    match result {
        Ok(code) => code,
        Err(e) => report(e),
    }
}

fn report(e: anyhow::Error) -> ExitCode {
    say(format_args!("{e:#}"));
    ExitCode::from(e.downcast_ref::<Exit>().map_or(FAILURE, |x| x.code))
}
