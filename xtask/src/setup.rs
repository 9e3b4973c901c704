//! `cargo xtask setup`: install what sanlb needs on Debian 12, idempotently.
//!
//! Each step checks first and only installs what is missing, so `test`,
//! `bench`, `run` and `demo` call it every time at the cost of a few probes.

use std::{path::Path, process::Command};

use anyhow::{Context as _, Result, bail};

use crate::util::{self, is_root};

/// Debian packages: the eBPF toolchain (LLVM 22 for bpf-linker, bpftool), the
/// lab's peers (tgt, libiscsi), the tools the lab, tests and benchmarks use
/// (iperf3: the throughput benchmark).
const PACKAGES: &[&str] = &[
    "llvm-22-dev",
    "libpolly-22-dev",
    "bpftool",
    "iproute2",
    "tgt",
    "libiscsi-bin",
    "libiscsi-dev",
    "arping",
    "ndisc6",
    "tcpdump",
    "open-isns-server",
    // isnsadm: the hosts' side of the iSNS tests (sanlb/tests/isns.rs).
    "open-isns-utils",
    "iperf3",
    "gcc",
    "pkg-config",
    // `cargo xtask package --check`: dpkg-deb is in dpkg; systemd-analyze
    // verifies the units; setpriv (util-linux) runs the agent with the
    // unit's capabilities only (sanlb/tests/cli_service.rs).
    "systemd",
    "util-linux",
    // etcd-client's build script compiles etcd's protobufs with protoc.
    "protobuf-compiler",
    "libprotobuf-dev",
    // The HA control plane's tests and failover benchmark run a real etcd
    // (sanlb/tests/cluster.rs, sanlb/tests/ha.rs, sanlb/benches/ha.rs).
    "etcd-server",
    // etcdctl: the lab's HA test watches sanlb's keys with it (and the docs
    // use it to read them).
    "etcd-client",
    // The status page's browser test (headless Chromium over WebDriver) and
    // the metrics' checks: promtool, and a Prometheus that scrapes the lab
    // and answers the Grafana dashboard's queries (sanlb/tests/control/page.rs,
    // xtask/tests/observe.rs).
    "chromium",
    "chromium-driver",
    "prometheus",
    "curl",
];

/// The bpf-linker release this workspace is built and tested with.
const BPF_LINKER_VERSION: &str = "0.13.0";
const LLVM_BIN: &str = "/usr/lib/llvm-22/bin";

/// The cargo-deb release `cargo xtask package` uses.
const CARGO_DEB_VERSION: &str = "3.8.0";

pub fn run() -> Result<()> {
    // cargo-deb compiles for minutes and needs nothing the other steps
    // install (a C compiler is there: cargo links with it): it builds while
    // apt and rustup download.
    let cargo_deb = CargoDeb::start()?;
    apt()?;
    nightly()?;
    bpf_linker()?;
    cargo_deb.finish()
}

/// cargo-deb builds the Debian package (`cargo xtask package`, run by CI).
/// Installed in the background; killed if setup fails before it is waited for.
struct CargoDeb(Option<(std::process::Child, std::path::PathBuf)>);

impl CargoDeb {
    fn start() -> Result<Self> {
        let current = util::cargo(&["deb", "--version"])
            .output()
            .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
            .unwrap_or_default();
        if current.contains(CARGO_DEB_VERSION) {
            return Ok(Self(None));
        }
        let dir = util::target_dir()?;
        std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        let log_path = dir.join("cargo-deb-install.log");
        let log = std::fs::File::create(&log_path)
            .with_context(|| format!("creating {}", log_path.display()))?;
        eprintln!(
            "xtask: installing cargo-deb {CARGO_DEB_VERSION} in the background (log: {})",
            log_path.display()
        );
        let child = util::cargo(&[
            "install",
            "cargo-deb",
            "--locked",
            "--version",
            CARGO_DEB_VERSION,
        ])
        .stdin(std::process::Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log)
        .spawn()
        .context("starting cargo install cargo-deb")?;
        Ok(Self(Some((child, log_path))))
    }

    fn finish(mut self) -> Result<()> {
        let Some((mut child, log_path)) = self.0.take() else {
            return Ok(());
        };
        let status = child
            .wait()
            .context("waiting for cargo install cargo-deb")?;
        if !status.success() {
            let log = std::fs::read_to_string(&log_path).unwrap_or_default();
            let tail: Vec<&str> = log.lines().rev().take(30).collect();
            let tail: Vec<&str> = tail.into_iter().rev().collect();
            bail!(
                "cargo install cargo-deb {CARGO_DEB_VERSION} failed ({status}); the end of {}:\n{}",
                log_path.display(),
                tail.join("\n")
            );
        }
        Ok(())
    }
}

impl Drop for CargoDeb {
    fn drop(&mut self) {
        if let Some((child, _)) = &mut self.0 {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

fn apt() -> Result<()> {
    let missing: Vec<&str> = PACKAGES.iter().copied().filter(|p| !installed(p)).collect();
    if missing.is_empty() {
        return Ok(());
    }
    if !is_root() {
        bail!(
            "missing Debian packages: {}; run `sudo -E cargo xtask setup` (apt needs root)",
            missing.join(" ")
        );
    }
    eprintln!("xtask: installing {}", missing.join(" "));
    util::status(Command::new("apt-get").args(["update", "-q"]))?;
    util::status(
        Command::new("apt-get")
            .env("DEBIAN_FRONTEND", "noninteractive")
            .args(["install", "-y", "-q", "--no-install-recommends"])
            .args(&missing),
    )?;
    // Debian enables tgt.service with the package; a tgtd it starts would
    // hold the default control socket. The lab gives each of its tgtd a
    // control port of its own, so it does not depend on this, but a fresh
    // install should not leave a daemon running that nobody asked for.
    // The same for etcd-server's etcd.service (the tests start their own
    // etcd on a free loopback port with a temporary data directory).
    for (package, unit) in [("tgt", "tgt.service"), ("etcd-server", "etcd.service")] {
        if missing.contains(&package) && Path::new("/run/systemd/system").exists() {
            let _ = Command::new("systemctl")
                .args(["disable", "--now", unit])
                .status();
        }
    }
    Ok(())
}

fn installed(package: &str) -> bool {
    Command::new("dpkg-query")
        .args(["-W", "-f=${Status}", package])
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).contains("install ok installed"))
        .unwrap_or(false)
}

/// aya-build compiles the eBPF crate with `rustup run nightly` and
/// `-Z build-std=core`, which needs rust-src for that toolchain.
fn nightly() -> Result<()> {
    let toolchains = util::output(Command::new("rustup").args(["toolchain", "list"]))
        .context("rustup is needed (https://rustup.rs)")?;
    if !toolchains.lines().any(|l| l.starts_with("nightly")) {
        eprintln!("xtask: installing the nightly toolchain with rust-src");
        return util::status(Command::new("rustup").args([
            "toolchain",
            "install",
            "nightly",
            "--profile",
            "minimal",
            "--component",
            "rust-src",
        ]));
    }
    let components = util::output(Command::new("rustup").args([
        "component",
        "list",
        "--installed",
        "--toolchain",
        "nightly",
    ]))?;
    if !components.lines().any(|l| l.starts_with("rust-src")) {
        eprintln!("xtask: adding rust-src to nightly");
        util::status(Command::new("rustup").args([
            "component",
            "add",
            "rust-src",
            "--toolchain",
            "nightly",
        ]))?;
    }
    Ok(())
}

/// bpf-linker built against Debian's LLVM 22: without LLVM 22's llvm-config
/// first on PATH its build finds LLVM 14's and fails to link.
fn bpf_linker() -> Result<()> {
    let current = Command::new("bpf-linker")
        .arg("--version")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
        .unwrap_or_default();
    if current.contains(BPF_LINKER_VERSION) {
        return Ok(());
    }
    eprintln!("xtask: building bpf-linker {BPF_LINKER_VERSION} against LLVM 22 (about 75 s)");
    let path = format!("{LLVM_BIN}:{}", std::env::var("PATH").unwrap_or_default());
    util::status(
        util::cargo(&[
            "install",
            "bpf-linker",
            "--locked",
            "--version",
            BPF_LINKER_VERSION,
            "--no-default-features",
            "--features",
            "llvm-22",
        ])
        .env("PATH", path),
    )
}
