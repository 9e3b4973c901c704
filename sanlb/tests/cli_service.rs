//! `sanlb` as a service runs it: the config file under the flags, logs for
//! terminals, files, the journal and collectors, a closed stderr, exit
//! codes, `sanlb token`, `sanlb --version`.

use std::{
    io::Read as _,
    net::TcpStream,
    os::unix::fs::{MetadataExt as _, PermissionsExt as _},
    path::Path,
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use sanlb::{
    agent::Client,
    proto::{EnforceCounters, Ownership, Report},
};

const SANLB: &str = env!("CARGO_BIN_EXE_sanlb");
const TOKEN: &str = "cli-service-token";

/// Kills the process if the test fails first.
struct Proc(Child);

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

impl Proc {
    /// SIGTERM, then its exit code within 10 s.
    fn term(&mut self) -> Option<i32> {
        // SAFETY: signalling the child this test started.
        assert_eq!(unsafe { libc::kill(self.0.id() as i32, libc::SIGTERM) }, 0);
        let end = Instant::now() + Duration::from_secs(10);
        loop {
            if let Some(s) = self.0.try_wait().unwrap() {
                return s.code();
            }
            assert!(Instant::now() < end, "did not stop on SIGTERM");
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A config file for a controller on `port` in `dir`.
fn controller_config(dir: &Path, port: u16, extra: &str) -> std::path::PathBuf {
    std::fs::write(dir.join("token"), format!("{TOKEN}\n")).unwrap();
    let path = dir.join("sanlb.toml");
    std::fs::write(
        &path,
        format!(
            r#"[controller]
listen = "127.0.0.1:{port}"
state = "{state}"
token_file = "{token}"
targets = ["198.18.1.1", "198.18.1.2"]
lease = "300ms"
interval = "200ms"
{extra}
"#,
            state = dir.join("state.json").display(),
            token = dir.join("token").display(),
        ),
    )
    .unwrap();
    path
}

fn wait_listening(port: u16) {
    let end = Instant::now() + Duration::from_secs(20);
    while TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(Instant::now() < end, "the controller never listened");
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn report(seq: u64) -> Report {
    Report {
        gateway: "gw1".into(),
        boot_id: "boot-1".into(),
        seq,
        uptime_ms: seq * 100,
        capacity: 1.0,
        applied: 0,
        owned: vec![],
        enforce: EnforceCounters::default(),
        flows: vec![],
    }
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

/// Issue 11, item 5: with its stderr closed (`… 2>&1 | head -1`) the
/// controller's log writes failed with EPIPE, tracing's fallback panicked,
/// requests were dropped half-applied and the timer task died while
/// `/v1/status` still answered. Now logging never stops it: reports are
/// applied, the clock runs (placement, leases), SIGTERM saves and exits 0.
#[test]
fn issue_11_item_5_a_closed_stderr_does_not_stop_the_controller() {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let cfg = controller_config(dir.path(), port, "");
    let mut child = Command::new(SANLB)
        .args(["--config", cfg.to_str().unwrap(), "controller"])
        .env("RUST_LOG", "debug")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // Close the reading end: every log write now fails with EPIPE.
    drop(child.stderr.take());
    let mut proc = Proc(child);
    wait_listening(port);
    let rt = runtime();
    let client = Client::new(
        &format!("http://127.0.0.1:{port}"),
        TOKEN,
        Duration::from_secs(2),
    )
    .unwrap();
    // gw1 reports every 100 ms (each request logs) until the clock has
    // placed both targets on it.
    let end = Instant::now() + Duration::from_secs(15);
    let mut seq = 0;
    let placed = loop {
        rt.block_on(client.report(&report(seq)))
            .expect("a report is answered");
        seq += 1;
        let st = rt.block_on(client.status()).unwrap();
        let owned = st
            .map
            .iter()
            .filter(|m| matches!(&m.ownership, Ownership::Owned { gateway } if gateway == "gw1"))
            .count();
        if owned == 2 && !st.rebalances.is_empty() {
            break st;
        }
        assert!(Instant::now() < end, "the clock placed nothing: {st:?}");
        std::thread::sleep(Duration::from_millis(100));
    };
    assert!(placed.generation >= 1);
    // Silent for longer than the lease: the clock declares gw1 dead.
    let end = Instant::now() + Duration::from_secs(10);
    loop {
        let st = rt.block_on(client.status()).unwrap();
        if st.gateways.iter().all(|g| !g.alive) {
            break;
        }
        assert!(Instant::now() < end, "gw1 never expired: {st:?}");
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(proc.term(), Some(0));
    let saved: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.path().join("state.json")).unwrap()).unwrap();
    assert!(
        saved["generation"].as_u64().unwrap() >= placed.generation,
        "{saved}"
    );
    assert!(saved.to_string().contains("gw1"), "{saved}");
}

/// Starts a controller with `args`, makes it log a warning (a request
/// without a token), stops it, and returns its stderr.
fn controller_log(extra_args: &[&str], journal: bool) -> String {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let cfg = controller_config(dir.path(), port, "");
    let (mut reader, writer) = std::io::pipe().unwrap();
    let mut cmd = Command::new(SANLB);
    cmd.args(["--config", cfg.to_str().unwrap()])
        .args(extra_args)
        .arg("controller")
        .env_remove("RUST_LOG")
        .env_remove("JOURNAL_STREAM")
        .stdout(Stdio::null());
    if journal {
        // What systemd sets when stderr is its stream: the pipe's inode.
        let m = std::fs::metadata(format!("/proc/self/fd/{}", {
            use std::os::fd::AsRawFd as _;
            writer.as_raw_fd()
        }))
        .unwrap();
        cmd.env("JOURNAL_STREAM", format!("{}:{}", m.dev(), m.ino()));
    }
    let mut proc = Proc(cmd.stderr(writer).spawn().unwrap());
    wait_listening(port);
    let plain = Client::new(
        &format!("http://127.0.0.1:{port}"),
        "",
        Duration::from_secs(2),
    )
    .unwrap();
    assert!(runtime().block_on(plain.status()).is_err());
    assert_eq!(proc.term(), Some(0));
    drop(cmd);
    let mut out = String::new();
    reader.read_to_string(&mut out).unwrap();
    out
}

#[test]
fn text_logs_have_no_colour_codes_off_a_terminal() {
    let out = controller_log(&[], false);
    assert!(out.contains("controller listening"), "{out}");
    assert!(
        out.contains("WARN") && out.contains("refused: no bearer token"),
        "{out}"
    );
    assert!(!out.contains('\x1b'), "ANSI codes in {out:?}");
}

#[test]
fn json_logs_are_one_object_per_line() {
    let out = controller_log(&["--log-format", "json"], false);
    let lines: Vec<serde_json::Value> = out
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l:?}")))
        .collect();
    assert!(lines.iter().any(|l| l["level"] == "INFO"
        && l["message"] == "controller listening"
        && l["addr"].is_string()));
    assert!(lines.iter().any(
        |l| l["level"] == "WARN" && l["message"].as_str().unwrap().contains("no bearer token")
    ));
    assert!(lines.iter().all(|l| l["timestamp"].is_string()));
}

#[test]
fn the_journal_gets_priorities() {
    let out = controller_log(&[], true);
    let listening = out
        .lines()
        .find(|l| l.contains("controller listening"))
        .unwrap();
    assert!(listening.starts_with("<6>"), "{listening}");
    let refused = out.lines().find(|l| l.contains("no bearer token")).unwrap();
    assert!(refused.starts_with("<4>"), "{refused}");
    // The journal stamps lines itself.
    assert!(
        !listening.contains(":00Z") && !out.contains('\x1b'),
        "{out}"
    );
}

#[test]
fn flags_override_the_config_file() {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    // The file's window (0) is refused unless a flag overrides it.
    let cfg = controller_config(dir.path(), port, "window = 0\nmode = \"pair\"");
    let out = Command::new(SANLB)
        .args(["--config", cfg.to_str().unwrap(), "controller"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("--window must be ≥ 1"));
    let mut proc = Proc(
        Command::new(SANLB)
            .args([
                "--config",
                cfg.to_str().unwrap(),
                "controller",
                "--window",
                "4",
            ])
            .args(["--mode", "target"])
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    wait_listening(port);
    // `sanlb status` takes its controller and token from [status].
    let status_cfg = dir.path().join("status.toml");
    std::fs::write(
        &status_cfg,
        format!(
            "[status]\ncontroller = \"http://127.0.0.1:{port}\"\ntoken_file = \"{}\"\n",
            dir.path().join("token").display()
        ),
    )
    .unwrap();
    let out = Command::new(SANLB)
        .env("SANLB_CONFIG", &status_cfg)
        .args(["status", "--json"])
        .output()
        .unwrap();
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let st: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(st["window"], 4, "the flag");
    assert_eq!(st["interval_ms"], 200, "the file");
    assert_eq!(st["lease_ms"], 300, "the file");
    assert_eq!(st["mode"], "target", "the flag");
    assert_eq!(proc.term(), Some(0));
}

#[test]
fn config_file_errors_name_the_file_and_line_and_exit_2() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("sanlb.toml");
    std::fs::write(&path, "[agent]\ngateway = \"gw1\"\ngatway = \"gw2\"\n").unwrap();
    for sub in ["agent", "controller", "status", "counters"] {
        let out = Command::new(SANLB)
            .args(["--config", path.to_str().unwrap(), sub])
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{sub}: {err}");
        assert_eq!(err.lines().count(), 1, "{sub}: one line: {err}");
        assert!(
            err.starts_with(&format!(
                "sanlb: {} line 3: unknown field `gatway`",
                path.display()
            )),
            "{sub}: {err}"
        );
    }
    let out = Command::new(SANLB)
        .args(["--config", "/nonexistent/sanlb.toml", "status"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert_eq!(
        String::from_utf8_lossy(&out.stderr),
        "sanlb: /nonexistent/sanlb.toml: No such file or directory (os error 2)\n"
    );
}

#[test]
fn status_exit_codes_tell_a_refusal_from_a_dead_controller() {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let cfg = controller_config(dir.path(), port, "");
    let mut proc = Proc(
        Command::new(SANLB)
            .args(["--config", cfg.to_str().unwrap(), "controller"])
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    wait_listening(port);
    let url = format!("http://127.0.0.1:{port}");
    let wrong = dir.path().join("wrong");
    std::fs::write(&wrong, "not-the-token\n").unwrap();
    let status = |token: &Path| {
        let out = Command::new(SANLB)
            .env("SANLB_CONFIG", "/dev/null")
            .args(["status", "--controller", &url, "--token-file"])
            .arg(token)
            .output()
            .unwrap();
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    assert_eq!(status(&dir.path().join("token")).0, Some(0));
    let (code, err) = status(&wrong);
    assert_eq!(code, Some(4), "{err}");
    assert!(
        err.contains("401 Unauthorized: wrong bearer token"),
        "{err}"
    );
    assert_eq!(err.lines().count(), 1, "{err}");
    assert_eq!(proc.term(), Some(0));
    let (code, err) = status(&dir.path().join("token"));
    assert_eq!(code, Some(3), "{err}");
    assert!(
        err.contains(&format!("{url}/v1/status: request failed")),
        "{err}"
    );
    assert_eq!(err.lines().count(), 1, "{err}");
    let (code, err) = status(&dir.path().join("missing"));
    assert_eq!(code, Some(2), "{err}");
    assert!(err.contains("missing"), "{err}");
}

#[test]
fn token_creates_a_private_file_once() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("token");
    let run = |args: &[&str]| {
        let out = Command::new(SANLB).args(args).output().unwrap();
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    assert_eq!(run(&["token", path.to_str().unwrap()]).0, Some(0));
    let first = std::fs::read_to_string(&path).unwrap();
    assert_eq!(first.trim().len(), 64);
    assert!(first.trim().bytes().all(|b| b.is_ascii_hexdigit()));
    assert_eq!(
        std::fs::metadata(&path).unwrap().permissions().mode() & 0o777,
        0o600
    );
    let (code, err) = run(&["token", path.to_str().unwrap()]);
    assert_eq!(code, Some(1));
    assert!(err.contains("exists (give --force to replace it)"), "{err}");
    assert_eq!(std::fs::read_to_string(&path).unwrap(), first, "unchanged");
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
    assert_eq!(
        run(&["token", "--force", path.to_str().unwrap()]).0,
        Some(0)
    );
    assert_ne!(std::fs::read_to_string(&path).unwrap(), first);
    assert_eq!(
        std::fs::metadata(&path).unwrap().permissions().mode() & 0o777,
        0o600
    );
}

#[test]
fn version_names_the_commit() {
    let head = Command::new("git")
        .args(["rev-parse", "--short=12", "HEAD"])
        .output()
        .unwrap();
    assert!(head.status.success(), "the tests run in a git checkout");
    let head = String::from_utf8(head.stdout).unwrap();
    let out = Command::new(SANLB).arg("--version").output().unwrap();
    let version = String::from_utf8(out.stdout).unwrap();
    assert_eq!(
        version,
        format!("sanlb {} ({})\n", env!("CARGO_PKG_VERSION"), head.trim())
    );
}

#[test]
fn man_pages_and_completions_are_generated() {
    let dir = tempfile::tempdir().unwrap();
    let out = Command::new(SANLB)
        .arg("generate")
        .arg("--man")
        .arg(dir.path().join("man"))
        .arg("--completions")
        .arg(dir.path().join("completions"))
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0));
    for page in [
        "sanlb",
        "sanlb-agent",
        "sanlb-controller",
        "sanlb-status",
        "sanlb-token",
    ] {
        let text =
            std::fs::read_to_string(dir.path().join("man").join(format!("{page}.1"))).unwrap();
        assert!(text.starts_with(".ie"), "{page}: {}", &text[..40]);
        assert!(text.contains(".TH"), "{page}");
    }
    assert!(!dir.path().join("man/sanlb-generate.1").exists());
    let bash = std::fs::read_to_string(dir.path().join("completions/sanlb.bash")).unwrap();
    assert!(bash.contains("--token-file"));
    assert!(dir.path().join("completions/_sanlb").exists());
    assert!(dir.path().join("completions/sanlb.fish").exists());
}

/// A network namespace with a veth pair, deleted on drop.
struct Netns(String);

impl Netns {
    fn new(name: &str) -> Self {
        let ip = |args: &[&str]| {
            let ok = Command::new("ip").args(args).status().unwrap().success();
            assert!(ok, "ip {args:?}");
        };
        let _ = Command::new("ip").args(["netns", "del", name]).status();
        ip(&["netns", "add", name]);
        let ns = Self(name.to_owned());
        ip(&[
            "-n", name, "link", "add", "v0", "type", "veth", "peer", "name", "v1",
        ]);
        ip(&["-n", name, "link", "set", "v0", "up"]);
        ip(&["-n", name, "link", "set", "v1", "up"]);
        ns
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["netns", "del", &self.0]).status();
    }
}

/// The capabilities the agent's unit grants, from the unit file itself.
fn unit_capabilities() -> Vec<String> {
    let unit = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../packaging/systemd/sanlb-agent@.service"),
    )
    .unwrap();
    unit.lines()
        .find_map(|l| l.strip_prefix("CapabilityBoundingSet="))
        .unwrap()
        .split_whitespace()
        .map(|c| c.trim_start_matches("CAP_").to_lowercase())
        .collect()
}

/// Runs `sanlb agent` on a veth in a fresh namespace with only `caps`,
/// its stderr closed; returns (exit code after SIGTERM or on its own, the
/// maps were pinned while it ran, no map is pinned after).
fn agent_with(caps: &[String]) -> (Option<i32>, bool, bool) {
    let ns = Netns::new("sanlb-caps");
    let pins = Path::new("/sys/fs/bpf/sanlb-caps-test");
    let bounding = format!(
        "-all,{}",
        caps.iter()
            .map(|c| format!("+{c}"))
            .collect::<Vec<_>>()
            .join(",")
    );
    let mut child = Command::new("nsenter")
        .arg(format!("--net=/run/netns/{}", ns.0))
        .args([
            "setpriv",
            "--bounding-set",
            &bounding,
            "--inh-caps",
            "-all",
            "--",
        ])
        .arg(SANLB)
        .args(["agent", "--iface", "v0", "--pin-dir"])
        .arg(pins)
        .env("SANLB_CONFIG", "/dev/null")
        .env("RUST_LOG", "debug")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    drop(child.stderr.take());
    let mut proc = Proc(child);
    let end = Instant::now() + Duration::from_secs(10);
    let mut pinned = false;
    while Instant::now() < end {
        if let Some(s) = proc.0.try_wait().unwrap() {
            let cleaned = !pins.join(sanlb::dataplane::PIN_FLOWS4).exists();
            // A refused start may leave the empty directory.
            let _ = std::fs::remove_dir(pins);
            return (s.code(), false, cleaned);
        }
        if pins.join(sanlb::dataplane::PIN_FLOWS4).exists() {
            pinned = true;
            std::thread::sleep(Duration::from_millis(300));
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let code = proc.term();
    let cleaned = !pins.join(sanlb::dataplane::PIN_FLOWS4).exists();
    let _ = std::fs::remove_dir(pins);
    (code, pinned, cleaned)
}

/// The agent unit's capabilities are enough, and each is needed to start
/// or is the one its announcements need; with its stderr closed the agent
/// still stops cleanly and removes its pins (issue 11, item 5).
#[test]
#[ignore = "privileged: cargo xtask test runs it as root"]
fn issue_11_item_5_the_agent_with_the_unit_capabilities_and_a_closed_stderr() {
    let caps = unit_capabilities();
    assert_eq!(caps, ["bpf", "net_admin", "net_raw", "perfmon"]);
    let (code, pinned, cleaned) = agent_with(&caps);
    assert_eq!(code, Some(0));
    assert!(pinned, "the agent never pinned its maps");
    assert!(cleaned, "the agent left its pins behind");
    // Without CAP_BPF, CAP_NET_ADMIN or CAP_PERFMON it cannot start.
    for missing in ["bpf", "net_admin", "perfmon"] {
        let fewer: Vec<String> = caps.iter().filter(|c| *c != missing).cloned().collect();
        let (code, pinned, cleaned) = agent_with(&fewer);
        assert_eq!(
            code,
            Some(1),
            "without {missing}: pinned {pinned}, cleaned {cleaned}"
        );
        assert!(!pinned && cleaned, "without {missing}");
    }
}
