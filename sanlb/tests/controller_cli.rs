//! `sanlb controller`, `sanlb status` and `sanlb agent --controller` as
//! commands: bad input refused with its exit code, and a real controller
//! process answering `sanlb status` and stopping cleanly on SIGTERM.

use std::{
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

const SANLB: &str = env!("CARGO_BIN_EXE_sanlb");

fn run(args: &[&str]) -> (Option<i32>, String, String) {
    // /dev/null: every default, whatever /etc/sanlb/sanlb.toml holds.
    let out = Command::new(SANLB)
        .env("SANLB_CONFIG", "/dev/null")
        .args(args)
        .output()
        .unwrap();
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn token_file(dir: &std::path::Path) -> String {
    let p = dir.join("token");
    std::fs::write(&p, "cli-test-token\n").unwrap();
    p.to_str().unwrap().to_owned()
}

/// Kills the controller if the test fails before stopping it.
struct Proc(Child);

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn controller_refuses_bad_configuration() {
    let dir = tempfile::tempdir().unwrap();
    let token = token_file(dir.path());
    let state = dir.path().join("state.json");
    let state = state.to_str().unwrap();
    let base = [
        "controller",
        "--listen",
        "127.0.0.1:0",
        "--state",
        state,
        "--token-file",
        &token,
    ];
    let (code, _, err) = run(&base);
    assert_eq!(code, Some(2), "{err}");
    assert!(
        err.contains("nothing to manage: give --storage, --target or --traffic"),
        "{err}"
    );
    let (code, _, err) = run(&[&base[..], &["--target", "198.18.1.1", "--window", "0"]].concat());
    assert_eq!(code, Some(2));
    assert!(err.contains("--window must be ≥ 1"), "{err}");
    let (code, _, err) = run(&[
        &base[..],
        &["--target", "198.18.1.1", "--interval", "5 parsecs"],
    ]
    .concat());
    assert_eq!(code, Some(2), "clap's usage error");
    assert!(err.contains("--interval"), "{err}");
    let (code, _, err) = run(&[&base[..], &["--storage", "198.18.1.0/33"]].concat());
    assert_eq!(code, Some(2));
    assert!(err.contains("--storage"), "{err}");
    let empty = dir.path().join("empty");
    std::fs::write(&empty, "  \n").unwrap();
    let (code, _, err) = run(&[
        "controller",
        "--listen",
        "127.0.0.1:0",
        "--state",
        state,
        "--token-file",
        empty.to_str().unwrap(),
        "--target",
        "198.18.1.1",
    ]);
    assert_eq!(code, Some(2), "a bad token file is bad input");
    assert!(err.contains("expected one printable token"), "{err}");
    let bad = dir.path().join("bad.csv");
    std::fs::write(&bad, "h,198.18.1.1\n198.18.0.1,lots\n").unwrap();
    let (code, _, err) = run(&[&base[..], &["--traffic", bad.to_str().unwrap()]].concat());
    assert_eq!(code, Some(2));
    assert!(
        err.contains("bad.csv")
            && err.contains("line 2")
            && err.contains("\"lots\" is not a byte count"),
        "{err}"
    );
    let missing = dir.path().join("missing.csv");
    let (code, _, err) = run(&[&base[..], &["--traffic", missing.to_str().unwrap()]].concat());
    assert_eq!(code, Some(2));
    assert!(err.contains("missing.csv"), "{err}");
    assert!(
        !std::path::Path::new(state).exists(),
        "a refused start wrote state"
    );
    let nowhere = dir.path().join("no-such-dir").join("state.json");
    let (code, _, err) = run(&[
        "controller",
        "--listen",
        "127.0.0.1:0",
        "--state",
        nowhere.to_str().unwrap(),
        "--token-file",
        &token,
        "--target",
        "198.18.1.1",
    ]);
    assert_eq!(code, Some(1));
    assert!(
        err.contains("creating") && err.contains("no-such-dir"),
        "{err}"
    );
}

#[test]
fn agent_with_a_controller_needs_a_gateway_and_a_token() {
    let (code, _, err) = run(&[
        "agent",
        "--iface",
        "lo",
        "--controller",
        "http://127.0.0.1:9",
    ]);
    assert_eq!(code, Some(2), "{err}");
    assert!(
        err.contains("--gateway") && err.contains("--token-file"),
        "{err}"
    );
    let dir = tempfile::tempdir().unwrap();
    let token = token_file(dir.path());
    let (code, _, err) = run(&[
        "agent",
        "--iface",
        "lo",
        "--controller",
        "ftp://x",
        "--gateway",
        "gw1",
        "--token-file",
        &token,
    ]);
    assert_eq!(code, Some(2), "a bad URL is bad input");
    assert!(
        err.contains("controller URL \"ftp://x\": expected http://HOST:PORT"),
        "{err}"
    );
}

#[test]
fn status_of_an_unreachable_controller_names_it() {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let url = format!("http://127.0.0.1:{port}");
    let (code, _, err) = run(&["status", "--controller", &url]);
    assert_eq!(code, Some(3), "unreachable: {err}");
    assert!(err.contains(&format!("{url}/v1/status")), "{err}");
}

#[test]
fn a_controller_process_answers_status_and_stops_on_sigterm() {
    let dir = tempfile::tempdir().unwrap();
    let token = token_file(dir.path());
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let listen = format!("127.0.0.1:{port}");
    let state = dir.path().join("state.json");
    let child = Command::new(SANLB)
        .args([
            "controller",
            "--listen",
            &listen,
            "--state",
            state.to_str().unwrap(),
            "--token-file",
            &token,
        ])
        .args([
            "--target",
            "198.18.1.1",
            "--target",
            "198.18.1.2",
            "--lease",
            "300ms",
            "--interval",
            "200ms",
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut proc = Proc(child);
    let url = format!("http://{listen}");
    let end = Instant::now() + Duration::from_secs(20);
    let json = loop {
        let (code, out, err) = run(&[
            "status",
            "--controller",
            &url,
            "--token-file",
            &token,
            "--json",
        ]);
        if code == Some(0) {
            break out;
        }
        assert!(Instant::now() < end, "no status: {err}");
        std::thread::sleep(Duration::from_millis(100));
    };
    let st: serde_json::Value = serde_json::from_str(&json).unwrap();
    assert_eq!(st["mode"], "target");
    assert_eq!(st["map"].as_array().unwrap().len(), 2);
    assert!(st["generation"].is_u64());
    // The table, and the token is required.
    let (code, out, _) = run(&["status", "--controller", &url, "--token-file", &token]);
    assert_eq!(code, Some(0));
    assert!(
        out.contains("GATEWAY") && out.contains("198.18.1.2") && out.contains("REBALANCES"),
        "{out}"
    );
    let (code, _, err) = run(&["status", "--controller", &url]);
    assert_eq!(code, Some(4), "refused: {err}");
    assert!(err.contains("401 Unauthorized: no bearer token"), "{err}");
    // SIGTERM: a clean exit, the state on disk.
    // SAFETY: signalling the child this test started.
    assert_eq!(unsafe { libc::kill(proc.0.id() as i32, libc::SIGTERM) }, 0);
    let end = Instant::now() + Duration::from_secs(10);
    let status = loop {
        if let Some(s) = proc.0.try_wait().unwrap() {
            break s;
        }
        assert!(Instant::now() < end, "controller did not stop on SIGTERM");
        std::thread::sleep(Duration::from_millis(50));
    };
    assert_eq!(status.code(), Some(0));
    let saved: serde_json::Value = serde_json::from_slice(&std::fs::read(&state).unwrap()).unwrap();
    assert_eq!(saved["routes"].as_array().unwrap().len(), 2);
}

/// Every duration flag takes the one grammar (a bare number is seconds), as
/// `sanlb plan --time-limit 2.5` always did: clap parses all flags before
/// the configuration is checked, so the refusal names `--window`, not a
/// duration.
#[test]
fn duration_flags_share_one_grammar() {
    let dir = tempfile::tempdir().unwrap();
    let token = token_file(dir.path());
    let state = dir.path().join("state.json");
    let (code, _, err) = run(&[
        "controller",
        "--listen",
        "127.0.0.1:0",
        "--state",
        state.to_str().unwrap(),
        "--token-file",
        &token,
        "--target",
        "198.18.1.1",
        "--time-limit",
        "2.5",
        "--interval",
        "1m 30s",
        "--lease",
        "1500ms",
        "--window",
        "0",
    ]);
    assert_eq!(code, Some(2));
    assert!(err.contains("--window must be ≥ 1"), "{err}");
    let (code, _, err) = run(&["agent", "--iface", "lo", "--interval", "soon"]);
    assert_eq!(code, Some(2));
    assert!(
        err.contains("--interval") && err.contains("not a duration"),
        "{err}"
    );
}

/// Issue 11, item 8: the agent accepted `--gateway 'bad name'`, which the
/// controller then refused at every report.
#[test]
fn regression_11_8_the_agent_refuses_a_gateway_name_the_controller_would() {
    let dir = tempfile::tempdir().unwrap();
    let token = token_file(dir.path());
    for bad in ["bad name", "gw\n1", "", &"x".repeat(65)] {
        let (code, _, err) = run(&[
            "agent",
            "--iface",
            "lo",
            "--controller",
            "http://127.0.0.1:9",
            "--gateway",
            bad,
            "--token-file",
            &token,
        ]);
        assert_eq!(code, Some(2), "{bad:?}: {err}");
        assert!(
            err.contains("--gateway") && err.contains("[A-Za-z0-9._-]"),
            "{err}"
        );
    }
}

/// `sanlb drain` and `sanlb undrain` (issue 14) against a controller
/// process: a known gateway is drained and undrained, an unknown one is
/// refused naming it, a bad name never leaves the command line, and
/// `--wait` gives up with exit 1 when the gateway cannot be emptied (it is
/// the only one).
#[test]
fn drain_and_undrain_commands() {
    let dir = tempfile::tempdir().unwrap();
    let token = token_file(dir.path());
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let listen = format!("127.0.0.1:{port}");
    let state = dir.path().join("state.json");
    let child = Command::new(SANLB)
        .args(["controller", "--listen", &listen, "--state"])
        .arg(&state)
        .args(["--token-file", &token, "--target", "198.18.1.1"])
        .args(["--lease", "30s", "--startup-grace", "200ms"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let _proc = Proc(child);
    let url = format!("http://{listen}");
    // gw1 reports, holding the target.
    let client = sanlb::agent::Client::new(&url, "cli-test-token", Duration::from_secs(2)).unwrap();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let report = sanlb::proto::Report {
        gateway: "gw1".into(),
        boot_id: "b1".into(),
        seq: 0,
        uptime_ms: 0,
        capacity: 1.0,
        applied: 0,
        owned: vec!["198.18.1.1".parse().unwrap()],
        enforce: Default::default(),
        flows: vec![],
    };
    let end = Instant::now() + Duration::from_secs(20);
    while rt.block_on(client.report(&report)).is_err() {
        assert!(Instant::now() < end, "the controller never answered");
        std::thread::sleep(Duration::from_millis(100));
    }
    let cmd = |verb: &str, extra: &[&str]| {
        run(&[
            &[verb, "--controller", &url, "--token-file", &token][..],
            extra,
        ]
        .concat())
    };
    let (code, out, err) = cmd("drain", &["gw1"]);
    assert_eq!(code, Some(0), "{err}");
    assert_eq!(
        out.trim(),
        "gw1: drained (operator), 1 routes assigned, 1 addresses held"
    );
    let (code, out, _) = run(&["status", "--controller", &url, "--token-file", &token]);
    assert_eq!(code, Some(0));
    assert!(out.contains("up,drained"), "{out}");
    let saved: serde_json::Value = serde_json::from_slice(&std::fs::read(&state).unwrap()).unwrap();
    assert_eq!(saved["gateways"][0]["drained"]["by"], "operator", "{saved}");
    let (code, _, err) = cmd("drain", &["--wait", "300ms", "gw1"]);
    assert_eq!(code, Some(1));
    assert!(
        err.contains("gw1 still has 1 routes and holds 1 addresses"),
        "{err}"
    );
    let (code, _, err) = cmd("drain", &["gw9"]);
    assert_eq!(code, Some(4), "refused: {err}");
    assert!(
        err.contains("404") && err.contains("no gateway gw9"),
        "{err}"
    );
    let (code, _, err) = cmd("drain", &["g w"]);
    assert_eq!(code, Some(2), "{err}");
    let (code, out, err) = cmd("undrain", &["gw1"]);
    assert_eq!(code, Some(0), "{err}");
    assert_eq!(
        out.trim(),
        "gw1: not drained, 1 routes assigned, 1 addresses held"
    );
    // The drain was persisted with the state, and its end too.
    let saved: serde_json::Value = serde_json::from_slice(&std::fs::read(&state).unwrap()).unwrap();
    assert!(saved["gateways"][0].get("drained").is_none(), "{saved}");
}
