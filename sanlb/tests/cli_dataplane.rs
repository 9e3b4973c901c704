//! `sanlb agent` and `sanlb counters` on bad input: a clear error naming the
//! input, a failing exit code, nothing attached. Needs no root: every case is
//! refused before anything touches the kernel.

use std::process::Command;

const SANLB: &str = env!("CARGO_BIN_EXE_sanlb");

fn run(args: &[&str]) -> (Option<i32>, String) {
    // /dev/null: every default, whatever /etc/sanlb/sanlb.toml holds.
    let out = Command::new(SANLB)
        .env("SANLB_CONFIG", "/dev/null")
        .args(args)
        .output()
        .unwrap();
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn agent_names_a_missing_interface() {
    let (code, err) = run(&["agent", "--iface", "nosuchnic0"]);
    assert_eq!(code, Some(1), "{err}");
    assert!(
        err.contains("interface \"nosuchnic0\" does not exist"),
        "{err}"
    );
}

#[test]
fn agent_refuses_port_zero_and_an_empty_table() {
    let (code, err) = run(&["agent", "--iface", "lo", "--port", "0"]);
    assert_eq!(code, Some(1));
    assert!(err.contains("invalid iSCSI port 0"), "{err}");
    let (code, err) = run(&["agent", "--iface", "lo", "--max-flows", "0"]);
    assert_eq!(code, Some(1));
    assert!(err.contains("--max-flows must be between 1 and"), "{err}");
}

#[test]
fn agent_refuses_a_port_that_is_not_a_number() {
    let (code, err) = run(&["agent", "--iface", "lo", "--port", "iscsi"]);
    assert_eq!(code, Some(2), "clap's usage error");
    assert!(err.contains("--port"), "{err}");
}

#[test]
fn counters_without_an_agent_says_so() {
    let dir = std::env::temp_dir().join(format!("sanlb-nopins-{}", std::process::id()));
    let (code, err) = run(&[
        "counters",
        "--iface",
        "eth9",
        "--pin-dir",
        dir.to_str().unwrap(),
    ]);
    assert_eq!(code, Some(1));
    assert!(err.contains("no sanlb maps pinned at"), "{err}");
    assert!(
        err.contains("is `sanlb agent` running on this NIC?"),
        "{err}"
    );
}
