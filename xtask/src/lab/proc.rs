//! Child processes: a guard that always stops and reaps its child, bounded
//! runs of short commands, and a reader for the lines a child appends to its
//! log.

use std::{
    fs::File,
    io::{Read as _, Seek as _, SeekFrom},
    os::unix::process::{CommandExt as _, ExitStatusExt as _},
    path::{Path, PathBuf},
    process::{Child, Command, ExitStatus, Output, Stdio},
    thread,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail};

/// `cargo` (the one running us, if cargo did) without the variables
/// `cargo run` and `cargo test` set for the program they run
/// (`CARGO_MANIFEST_DIR`, `CARGO_PKG_*`, ..). Build scripts such as ring's
/// rerun when those change, so a build from xtask or a test would otherwise
/// not share its artifacts with the same build from a shell: each would
/// rebuild ring and everything above it.
pub fn cargo() -> Command {
    let mut cmd = Command::new(std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into()));
    for (key, _) in std::env::vars_os() {
        let Some(k) = key.to_str() else { continue };
        if k.starts_with("CARGO_PKG_")
            || matches!(
                k,
                "CARGO_MANIFEST_DIR"
                    | "CARGO_MANIFEST_PATH"
                    | "CARGO_MANIFEST_LINKS"
                    | "CARGO_CRATE_NAME"
                    | "CARGO_BIN_NAME"
                    | "CARGO_PRIMARY_PACKAGE"
                    | "CARGO_TARGET_TMPDIR"
            )
        {
            cmd.env_remove(&key);
        }
    }
    cmd
}

/// How long [`Process`]'s `Drop` waits after SIGTERM before SIGKILL.
pub const DEFAULT_GRACE: Duration = Duration::from_secs(3);

/// Default bound for the short configuration commands the lab runs (`ip`,
/// `sysctl`, `tgtadm`, `arping`).
pub const COMMAND_TIMEOUT: Duration = Duration::from_secs(10);

const POLL: Duration = Duration::from_millis(10);

/// A long-running child with its stdout and stderr captured to files.
///
/// On drop the child gets SIGTERM, then SIGKILL after [`DEFAULT_GRACE`], and
/// is reaped, also when the owner unwinds from a panic. The child runs in a
/// process group of its own so that a Ctrl-C in the terminal reaches only
/// xtask, which then stops its children in order.
#[derive(Debug)]
pub struct Process {
    name: String,
    child: Child,
    stdout: PathBuf,
    stderr: PathBuf,
    status: Option<ExitStatus>,
}

impl Process {
    /// Starts `cmd`, writing its stdout to `LOG_DIR/NAME.out` and its stderr
    /// to `LOG_DIR/NAME.err` (both truncated). Stdin is `/dev/null`.
    pub fn spawn(name: &str, mut cmd: Command, log_dir: &Path) -> Result<Process> {
        std::fs::create_dir_all(log_dir)
            .with_context(|| format!("creating {}", log_dir.display()))?;
        let stdout = log_dir.join(format!("{name}.out"));
        let stderr = log_dir.join(format!("{name}.err"));
        let out =
            File::create(&stdout).with_context(|| format!("creating {}", stdout.display()))?;
        let err =
            File::create(&stderr).with_context(|| format!("creating {}", stderr.display()))?;
        cmd.stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .process_group(0);
        let child = cmd
            .spawn()
            .with_context(|| format!("starting {name}: {}", show(&cmd)))?;
        Ok(Process {
            name: name.to_owned(),
            child,
            stdout,
            stderr,
            status: None,
        })
    }

    /// The name given to [`Process::spawn`].
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The child's process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Where the child's stdout goes.
    pub fn stdout_path(&self) -> &Path {
        &self.stdout
    }

    /// Where the child's stderr goes.
    pub fn stderr_path(&self) -> &Path {
        &self.stderr
    }

    /// Everything the child wrote to stdout so far.
    pub fn stdout(&self) -> String {
        std::fs::read_to_string(&self.stdout).unwrap_or_default()
    }

    /// Everything the child wrote to stderr so far.
    pub fn stderr(&self) -> String {
        std::fs::read_to_string(&self.stderr).unwrap_or_default()
    }

    /// The exit status if the child has exited (reaping it), else `None`.
    pub fn try_status(&mut self) -> Result<Option<ExitStatus>> {
        if self.status.is_none() {
            self.status = self
                .child
                .try_wait()
                .with_context(|| format!("waiting for {}", self.name))?;
        }
        Ok(self.status)
    }

    /// Whether the child is still running.
    pub fn is_running(&mut self) -> bool {
        matches!(self.try_status(), Ok(None))
    }

    /// Waits up to `timeout` for the child to exit.
    pub fn wait_timeout(&mut self, timeout: Duration) -> Result<Option<ExitStatus>> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.try_status()? {
                return Ok(Some(status));
            }
            if Instant::now() >= deadline {
                return Ok(None);
            }
            thread::sleep(POLL);
        }
    }

    /// Sends `signal` (e.g. `libc::SIGTERM`) to the child, unless it has
    /// already been reaped.
    pub fn signal(&mut self, signal: i32) -> Result<()> {
        if self.try_status()?.is_some() {
            return Ok(());
        }
        // SAFETY: kill has no memory preconditions; the pid is our unreaped
        // child, so it cannot have been recycled.
        if unsafe { libc::kill(self.child.id() as i32, signal) } != 0 {
            let e = std::io::Error::last_os_error();
            bail!("signalling {} ({}): {e}", self.name, self.child.id());
        }
        Ok(())
    }

    /// SIGTERM, then SIGKILL after `grace`; returns the exit status.
    pub fn stop(&mut self, grace: Duration) -> Result<ExitStatus> {
        self.signal(libc::SIGTERM)?;
        if let Some(status) = self.wait_timeout(grace)? {
            return Ok(status);
        }
        self.kill()
    }

    /// SIGKILL at once; returns the exit status.
    pub fn kill(&mut self) -> Result<ExitStatus> {
        self.signal(libc::SIGKILL)?;
        match self.wait_timeout(Duration::from_secs(5))? {
            Some(status) => Ok(status),
            None => bail!("{} ({}) survived SIGKILL", self.name, self.child.id()),
        }
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        if let Err(e) = self.stop(DEFAULT_GRACE) {
            eprintln!("lab: stopping {}: {e:#}", self.name);
        }
    }
}

/// Runs `cmd` to completion with captured output, killing it after
/// `timeout`. Fails if it could not start or timed out; the exit status is
/// the caller's to judge.
pub fn output_timeout(cmd: &mut Command, timeout: Duration) -> Result<Output> {
    cmd.stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = cmd
        .spawn()
        .with_context(|| format!("starting {}", show(cmd)))?;
    let mut out_pipe = child.stdout.take().expect("stdout is piped");
    let mut err_pipe = child.stderr.take().expect("stderr is piped");
    // Drain both pipes while waiting so that a chatty child cannot block.
    let out_reader = thread::spawn(move || {
        let mut buf = Vec::new();
        let _ = out_pipe.read_to_end(&mut buf);
        buf
    });
    let err_reader = thread::spawn(move || {
        let mut buf = Vec::new();
        let _ = err_pipe.read_to_end(&mut buf);
        buf
    });
    let deadline = Instant::now() + timeout;
    let status = loop {
        if let Some(status) = child.try_wait().context("waiting for a command")? {
            break Some(status);
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        thread::sleep(Duration::from_millis(2));
    };
    let stdout = out_reader.join().unwrap_or_default();
    let stderr = err_reader.join().unwrap_or_default();
    match status {
        Some(status) => Ok(Output {
            status,
            stdout,
            stderr,
        }),
        None => bail!("{} timed out after {timeout:?}", show(cmd)),
    }
}

/// Runs `cmd` under [`COMMAND_TIMEOUT`] and returns its stdout; fails unless
/// it exits 0, with its stderr in the message.
pub fn run(cmd: &mut Command) -> Result<String> {
    let out = output_timeout(cmd, COMMAND_TIMEOUT)?;
    if !out.status.success() {
        bail!(
            "{} failed ({}): {}",
            show(cmd),
            describe(out.status),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// "exit 3" or "signal 9".
pub fn describe(status: ExitStatus) -> String {
    match (status.code(), status.signal()) {
        (Some(code), _) => format!("exit {code}"),
        (None, Some(sig)) => format!("signal {sig}"),
        _ => status.to_string(),
    }
}

/// A command line for messages.
pub fn show(cmd: &Command) -> String {
    let mut s = cmd.get_program().to_string_lossy().into_owned();
    for a in cmd.get_args() {
        s.push(' ');
        s.push_str(&a.to_string_lossy());
    }
    s
}

/// Reads the complete lines appended to a file since the last call (a
/// child's stdout log, say); a trailing partial line waits for its newline.
#[derive(Debug)]
pub struct LineTail {
    path: PathBuf,
    offset: u64,
    partial: Vec<u8>,
}

impl LineTail {
    /// Starts at the beginning of `path` (which may not exist yet).
    pub fn new(path: impl Into<PathBuf>) -> LineTail {
        LineTail {
            path: path.into(),
            offset: 0,
            partial: Vec::new(),
        }
    }

    /// The lines completed since the last call.
    pub fn read_lines(&mut self) -> Result<Vec<String>> {
        let mut file = match File::open(&self.path) {
            Ok(f) => f,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(e).with_context(|| format!("opening {}", self.path.display())),
        };
        file.seek(SeekFrom::Start(self.offset))
            .with_context(|| format!("reading {}", self.path.display()))?;
        let mut buf = Vec::new();
        file.read_to_end(&mut buf)
            .with_context(|| format!("reading {}", self.path.display()))?;
        self.offset += buf.len() as u64;
        self.partial.extend_from_slice(&buf);
        let mut lines = Vec::new();
        while let Some(pos) = self.partial.iter().position(|&b| b == b'\n') {
            let line: Vec<u8> = self.partial.drain(..=pos).collect();
            lines.push(String::from_utf8_lossy(&line[..pos]).into_owned());
        }
        Ok(lines)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn output_timeout_kills_a_hanging_command() {
        let err =
            output_timeout(Command::new("sleep").arg("5"), Duration::from_millis(100)).unwrap_err();
        assert!(err.to_string().contains("timed out"), "{err:#}");
    }

    #[test]
    fn run_reports_stderr_of_a_failure() {
        let err = run(Command::new("sh").args(["-c", "echo boom >&2; exit 3"])).unwrap_err();
        let msg = format!("{err:#}");
        assert!(msg.contains("exit 3") && msg.contains("boom"), "{msg}");
    }

    #[test]
    fn process_stop_escalates_to_sigkill() {
        let dir = std::env::temp_dir().join(format!("xtask-proc-test-{}", std::process::id()));
        // A child that ignores SIGTERM, like tgtd.
        let mut cmd = Command::new("sh");
        cmd.args(["-c", "trap '' TERM; echo ready; sleep 30"]);
        let mut p = Process::spawn("stubborn", cmd, &dir).unwrap();
        let mut tail = LineTail::new(p.stdout_path());
        let deadline = Instant::now() + Duration::from_secs(5);
        while tail.read_lines().unwrap().is_empty() {
            assert!(Instant::now() < deadline, "child never started");
            thread::sleep(POLL);
        }
        let status = p.stop(Duration::from_millis(200)).unwrap();
        assert_eq!(status.signal(), Some(libc::SIGKILL));
        drop(p);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn line_tail_keeps_partial_lines() {
        let path = std::env::temp_dir().join(format!("xtask-tail-test-{}", std::process::id()));
        std::fs::write(&path, "a\nb").unwrap();
        let mut tail = LineTail::new(&path);
        assert_eq!(tail.read_lines().unwrap(), ["a"]);
        std::fs::write(&path, "a\nbc\nd\n").unwrap();
        assert_eq!(tail.read_lines().unwrap(), ["bc", "d"]);
        assert!(tail.read_lines().unwrap().is_empty());
        std::fs::remove_file(&path).unwrap();
    }
}
