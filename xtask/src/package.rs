//! `cargo xtask package [--check]`: the Debian package with cargo-deb.
//!
//! Builds sanlb in release, has it write its man pages and completions
//! (`sanlb generate`) into `target/package/`, then `cargo deb --no-build`
//! assembles `target/debian/sanlb_<version>_amd64.deb` from the assets
//! listed in `sanlb/Cargo.toml`. `--check` (root) installs it with dpkg,
//! verifies the units with `systemd-analyze verify`, runs the installed
//! binary, and purges the package again, also when a check fails.

use std::{
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context as _, Result, bail, ensure};

use crate::{setup, util};

pub fn run(check: bool) -> Result<()> {
    setup::run()?;
    util::status(&mut util::cargo(&[
        "build",
        "--release",
        "--locked",
        "--package",
        "sanlb",
    ]))?;
    let target = util::target_dir()?;
    let bin = target.join("release").join("sanlb");
    // Where sanlb/Cargo.toml's deb assets look (cargo-deb maps only
    // `target/release` to the real target directory).
    let generated = util::workspace_root().join("target").join("package");
    let _ = std::fs::remove_dir_all(&generated);
    util::status(
        Command::new(&bin)
            .arg("generate")
            .arg("--man")
            .arg(generated.join("man"))
            .arg("--completions")
            .arg(generated.join("completions")),
    )?;
    let version = util::output(Command::new(&bin).arg("--version"))?;
    let deb_dir = target.join("debian");
    util::status(
        util::cargo(&["deb", "--package", "sanlb", "--no-build", "--output"]).arg(&deb_dir),
    )?;
    let number = version
        .split_whitespace()
        .nth(1)
        .context("sanlb --version printed no version")?;
    let deb = deb_dir.join(format!("sanlb_{number}_amd64.deb"));
    ensure!(deb.exists(), "cargo deb did not write {}", deb.display());
    eprintln!("xtask: {}", deb.display());
    if check {
        self::check(&deb, version.trim())?;
    }
    Ok(())
}

/// Purges the package when dropped.
struct Installed;

impl Drop for Installed {
    fn drop(&mut self) {
        let _ = Command::new("dpkg").args(["--purge", "sanlb"]).status();
    }
}

fn check(deb: &Path, version: &str) -> Result<()> {
    ensure!(
        util::is_root(),
        "--check installs the package: run it as root"
    );
    if Path::new("/usr/bin/sanlb").exists() {
        bail!("sanlb is already installed here: `dpkg --purge sanlb` first");
    }
    util::status(Command::new("dpkg").arg("--install").arg(deb))?;
    let _installed = Installed;
    // The installed binary is the one built, and names its commit.
    let installed = util::output(Command::new("/usr/bin/sanlb").arg("--version"))?;
    ensure!(
        installed.trim() == version,
        "/usr/bin/sanlb --version says {installed:?}, the build {version:?}"
    );
    ensure!(
        !version.contains("unknown"),
        "sanlb --version names no commit: {version}"
    );
    // The units load, their binary and directives check out. The agent's
    // is a template: verify an instance of it.
    let units = Path::new("/usr/lib/systemd/system");
    let verify = std::env::temp_dir().join(format!("sanlb-verify-{}", std::process::id()));
    std::fs::create_dir_all(&verify)?;
    let agent = verify.join("sanlb-agent@lo.service");
    std::fs::copy(units.join("sanlb-agent@.service"), &agent)?;
    let out = Command::new("systemd-analyze")
        .arg("verify")
        .arg(units.join("sanlb-controller.service"))
        .arg(&agent)
        .env("SYSTEMD_LOG_LEVEL", "warning")
        .output()
        .context("running systemd-analyze")?;
    let _ = std::fs::remove_dir_all(&verify);
    let said = String::from_utf8_lossy(&out.stderr);
    // Outside a booted systemd it may note what it cannot reach; anything
    // about our units is a failure.
    let ours: Vec<&str> = said.lines().filter(|l| l.contains("sanlb")).collect();
    ensure!(
        out.status.success() && ours.is_empty(),
        "systemd-analyze verify: {}\n{said}",
        out.status
    );
    // What the package promises is where it says.
    for path in [
        "/etc/sanlb/sanlb.toml",
        "/var/lib/sanlb",
        "/usr/lib/tmpfiles.d/sanlb.conf",
        "/usr/share/sanlb/sysctl.d/60-sanlb-gateway.conf",
        "/usr/share/doc/sanlb/examples/controller.toml",
        "/usr/share/doc/sanlb/examples/agent.toml",
        "/usr/share/doc/sanlb/deploy.md",
        "/usr/share/bash-completion/completions/sanlb",
        "/usr/share/zsh/vendor-completions/_sanlb",
        "/usr/share/fish/vendor_completions.d/sanlb.fish",
    ] {
        ensure!(
            Path::new(path).exists(),
            "the package did not install {path}"
        );
    }
    for page in [
        "sanlb",
        "sanlb-agent",
        "sanlb-controller",
        "sanlb-status",
        "sanlb-token",
    ] {
        let found = std::fs::read_dir("/usr/share/man/man1")?
            .filter_map(|e| e.ok())
            .any(|e| {
                e.file_name()
                    .to_string_lossy()
                    .starts_with(&format!("{page}.1"))
            });
        ensure!(found, "no man page {page}(1)");
    }
    // The installed config file parses (every key commented: the
    // defaults), so the units start on it once it is filled in: status
    // asks for its controller, not about the file.
    let out = Command::new("/usr/bin/sanlb")
        .args(["--config", "/etc/sanlb/sanlb.toml", "status"])
        .output()?;
    let err = String::from_utf8_lossy(&out.stderr);
    ensure!(
        out.status.code() == Some(2) && err.contains("give --controller"),
        "sanlb status on the installed config: {}: {err}",
        out.status
    );
    // `sanlb token` makes a 0600 file the controller accepts.
    let token = PathBuf::from("/etc/sanlb/xtask-check-token");
    util::status(Command::new("/usr/bin/sanlb").arg("token").arg(&token))?;
    let mode = std::os::unix::fs::PermissionsExt::mode(&std::fs::metadata(&token)?.permissions());
    let _ = std::fs::remove_file(&token);
    ensure!(mode & 0o777 == 0o600, "token file mode {mode:o}");
    eprintln!("xtask: package checked: installs, units verify, {version}");
    Ok(())
}
