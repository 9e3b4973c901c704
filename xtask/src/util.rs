//! Process helpers.

use std::{
    env,
    ffi::OsStr,
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context as _, Result, bail};
use xtask::lab::proc::show;

/// The workspace root (xtask lives one level below it).
pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("xtask is inside the workspace")
        .to_owned()
}

/// `target/`, honouring CARGO_TARGET_DIR.
pub fn target_dir() -> Result<PathBuf> {
    Ok(match env::var_os("CARGO_TARGET_DIR") {
        Some(d) => PathBuf::from(d),
        None => workspace_root().join("target"),
    })
}

/// `cargo <args>` in the workspace root, with the cargo that runs xtask.
pub fn cargo(args: &[&str]) -> Command {
    let mut cmd = xtask::lab::proc::cargo();
    cmd.current_dir(workspace_root()).args(args);
    cmd
}

/// Whether this process runs as root.
pub fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

/// `program`, through `sudo -E` unless already root.
pub fn as_root(program: impl AsRef<OsStr>) -> Command {
    if is_root() {
        Command::new(program)
    } else {
        let mut cmd = Command::new("sudo");
        cmd.arg("-E").arg(program);
        cmd
    }
}

/// Runs `cmd`, failing unless it exits 0.
pub fn status(cmd: &mut Command) -> Result<()> {
    let status = cmd
        .status()
        .with_context(|| format!("running {}", show(cmd)))?;
    if !status.success() {
        bail!("{} failed: {status}", show(cmd));
    }
    Ok(())
}

/// Runs `cmd` and returns its stdout, failing unless it exits 0.
pub fn output(cmd: &mut Command) -> Result<String> {
    let out = cmd
        .output()
        .with_context(|| format!("running {}", show(cmd)))?;
    if !out.status.success() {
        bail!(
            "{} failed: {}: {}",
            show(cmd),
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}
