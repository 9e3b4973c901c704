//! `cargo xtask`: everything around the build that cargo alone does not do.
//!
//! xtask never depends on the `sanlb` crate: `setup` must build and run on a
//! machine that cannot compile sanlb yet (no bpf-linker, no nightly rust-src).

mod bench_throughput;
mod demo;
mod package;
mod setup;
mod util;

use std::process::ExitCode;

use anyhow::Result;
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "cargo xtask", about = "sanlb development tasks")]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Install everything sanlb needs on Debian (idempotent; root for apt).
    Setup,
    /// Build the eBPF programs and the sanlb binary.
    Build {
        /// Release profile.
        #[arg(long)]
        release: bool,
    },
    /// Build and run `sanlb` as root, e.g. `cargo xtask run -- agent --iface eth0`.
    Run {
        /// Release profile.
        #[arg(long)]
        release: bool,
        /// Arguments for sanlb.
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
    /// Set up, then run every test; the privileged ones (BPF, namespaces) as root.
    Test {
        /// Only the tests that need no root.
        #[arg(long)]
        unprivileged: bool,
        /// Extra arguments for the test binaries (a name filter, say).
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
    /// The SAN lab: a skewed IP SAN in network namespaces rebalances itself
    /// live (root).
    Demo(demo::DemoArgs),
    /// Build the Debian package target/debian/sanlb_<version>_amd64.deb.
    Package {
        /// Then install it, verify its units and binary, and purge it (root).
        #[arg(long)]
        check: bool,
    },
    /// Set up, then run the benchmarks: `cargo bench`, then (as root) the
    /// throughput one (`cargo xtask bench throughput` runs only that).
    Bench {
        /// Arguments for `cargo bench` (a bench name filter, say); `throughput`
        /// alone: only the throughput benchmark.
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.cmd {
        Cmd::Setup => setup::run(),
        Cmd::Build { release } => build(release),
        Cmd::Run { release, args } => run(release, &args),
        Cmd::Test { unprivileged, args } => test(unprivileged, &args),
        Cmd::Bench { args } => bench(&args),
        Cmd::Package { check } => package::run(check),
        Cmd::Demo(args) => setup::run().and_then(|()| demo::run(args)),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("xtask: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn build(release: bool) -> Result<()> {
    setup::run()?;
    let mut cmd = util::cargo(&["build", "--package", "sanlb"]);
    if release {
        cmd.arg("--release");
    }
    util::status(&mut cmd)
}

fn run(release: bool, args: &[String]) -> Result<()> {
    build(release)?;
    let bin = util::target_dir()?
        .join(if release { "release" } else { "debug" })
        .join("sanlb");
    let mut cmd = util::as_root(&bin);
    cmd.args(args);
    util::status(&mut cmd)
}

fn test(unprivileged: bool, args: &[String]) -> Result<()> {
    setup::run()?;
    // Every test that needs no root, across the workspace.
    let mut cmd = workspace_cargo("test");
    cmd.arg("--").args(args);
    util::status(&mut cmd)?;
    if unprivileged {
        return Ok(());
    }
    if !util::is_root() {
        eprintln!(
            "xtask: skipping the privileged tests (BPF, network namespaces): they need root; \
             run `sudo -E cargo xtask test`"
        );
        return Ok(());
    }
    // The privileged ones are #[ignore = "privileged: ..."]; one at a time, as
    // they create namespaces and attach programs.
    let mut cmd = workspace_cargo("test");
    cmd.args(["--", "--ignored", "--test-threads=1"]).args(args);
    util::status(&mut cmd)
}

/// The eBPF crates: their no_main binaries do not link for the host (their
/// users' build scripts build them with aya-build).
const EBPF_CRATES: &[&str] = &["sanlb-ebpf", "sanlb-test-ebpf"];

/// `cargo <subcommand>` over the workspace but for the eBPF crates.
fn workspace_cargo(subcommand: &str) -> std::process::Command {
    let mut cmd = util::cargo(&[subcommand, "--workspace"]);
    for krate in EBPF_CRATES {
        cmd.args(["--exclude", krate]);
    }
    cmd
}

fn bench(args: &[String]) -> Result<()> {
    setup::run()?;
    let only_throughput = args == ["throughput"];
    if !only_throughput {
        let mut cmd = workspace_cargo("bench");
        cmd.args(args);
        util::status(&mut cmd)?;
    }
    if !(args.is_empty() || only_throughput) {
        return Ok(());
    }
    if !util::is_root() {
        eprintln!(
            "xtask: skipping the throughput benchmark (namespaces, BPF): it needs root; \
             run `sudo -E cargo xtask bench throughput`"
        );
        return Ok(());
    }
    bench_throughput::run(bench_throughput::Options::from_env()?)
}
