//! The lab harness itself, against real tgtd and libiscsi in namespaces.

use std::{process::Command, time::Duration};

use xtask::lab::{LAB_PREFIX, Lab, netns, proc};

/// `timeout 10 PROGRAM ARGS` inside the host's namespace, for libiscsi tools
/// that can hang on a dead portal.
fn iscsi_tool(lab: &Lab, host: usize, program: &str, args: &[&str]) -> String {
    let h = &lab.hosts()[host];
    let mut cmd = h.ns.command("timeout");
    cmd.arg("10")
        .arg(program)
        .args(["-i", &h.initiator])
        .args(args);
    let out = proc::output_timeout(&mut cmd, Duration::from_secs(15)).unwrap();
    assert!(
        out.status.success(),
        "{program} {args:?} failed ({}): {}{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn lab_namespaces(id: &str) -> Vec<String> {
    netns::list()
        .unwrap()
        .into_iter()
        .filter(|n| n.starts_with(id))
        .collect()
}

#[test]
#[ignore = "privileged: cargo xtask test runs it as root"]
fn one_host_two_gateways_serve_the_same_disk_across_a_move() {
    let lab = Lab::builder()
        .hosts(1)
        .gateways(2)
        .targets(1)
        .build()
        .unwrap();
    let id = lab.id().to_owned();
    let dir = lab.dir().to_owned();
    assert!(id.starts_with(LAB_PREFIX));
    assert_eq!(lab_namespaces(&id).len(), 4, "san, h1, gw1, gw2");

    let t = lab.targets()[0].clone();
    assert_eq!(lab.owner(t.addr).unwrap().as_deref(), Some("gw1"));

    // Discovery through gw1 lists the target at its own address.
    let ls = iscsi_tool(&lab, 0, "iscsi-ls", &["-s", &format!("iscsi://{}", t.addr)]);
    assert!(ls.contains(&t.iqn), "{ls}");
    assert!(ls.contains(&t.addr.to_string()), "{ls}");
    // The unit serial number page carries the identity set on every gateway.
    let inq_args = ["-e", "1", "-c", "128", &t.url()];
    let serial_gw1 = iscsi_tool(&lab, 0, "iscsi-inq", &inq_args);
    assert!(serial_gw1.contains(&t.spec.scsi_sn), "{serial_gw1}");
    let gw1_rx_before = lab.gateways()[0].ns.link_stats("eth0").unwrap().rx_bytes;
    let gw2_rx_before = lab.gateways()[1].ns.link_stats("eth0").unwrap().rx_bytes;

    lab.move_address(t.addr, "gw1", "gw2", true).unwrap();
    assert_eq!(lab.owner(t.addr).unwrap().as_deref(), Some("gw2"));
    assert_eq!(lab.placement().unwrap()[&t.addr], ["gw2"]);

    // The same disk answers through gw2, and it was gw2 that carried it.
    let serial_gw2 = iscsi_tool(&lab, 0, "iscsi-inq", &inq_args);
    assert_eq!(serial_gw1, serial_gw2);
    let gw1_rx = lab.gateways()[0].ns.link_stats("eth0").unwrap().rx_bytes - gw1_rx_before;
    let gw2_rx = lab.gateways()[1].ns.link_stats("eth0").unwrap().rx_bytes - gw2_rx_before;
    // A login + inquiry is well over 500 bytes from the host; gw1 saw only
    // the gratuitous ARPs (broadcast, 42 bytes each, 3 of them).
    assert!(gw2_rx > 500, "gw2 received {gw2_rx} bytes");
    assert!(gw1_rx < 500, "gw1 received {gw1_rx} bytes after the move");
    let sessions = lab.gateways()[1]
        .tgtd
        .as_ref()
        .unwrap()
        .initiators(1)
        .unwrap();
    assert!(sessions.is_empty(), "the inquiry logged out: {sessions:?}");

    // A move back without an announcement leaves the host's neighbour entry
    // on gw2, which no longer has the address: the lab must not announce
    // behind the caller's back.
    lab.move_address(t.addr, "gw2", "gw1", false).unwrap();
    let neigh = lab.hosts()[0]
        .ns
        .ip(&["neigh", "show", &t.addr.to_string()])
        .unwrap();
    assert!(neigh.contains(&lab.gateways()[1].mac), "{neigh}");

    let tgtd_pids: Vec<u32> = lab
        .gateways()
        .iter()
        .filter_map(|g| g.tgtd.as_ref()?.pid())
        .collect();
    assert_eq!(tgtd_pids.len(), 2);
    drop(lab);

    assert!(
        lab_namespaces(&id).is_empty(),
        "namespaces left: {:?}",
        lab_namespaces(&id)
    );
    assert!(!dir.exists(), "{} left", dir.display());
    for pid in tgtd_pids {
        assert!(
            !std::path::Path::new(&format!("/proc/{pid}")).exists(),
            "tgtd {pid} still runs"
        );
    }
}

#[test]
#[ignore = "privileged: cargo xtask test runs it as root"]
fn leftovers_of_a_killed_run_are_removed() {
    // A child process builds a lab and is SIGKILLed: nothing of it is
    // dropped, as after a Ctrl-\ or an OOM kill.
    let prefix = format!("sanlb-lab-left{}", std::process::id());
    let ready = std::env::temp_dir().join(format!("{prefix}.ready"));
    let mut child = Command::new(env!("CARGO_BIN_EXE_lab-fixture"))
        .arg(&prefix)
        .arg(&ready)
        .spawn()
        .unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while !ready.exists() {
        assert!(
            std::time::Instant::now() < deadline,
            "the child never built its lab"
        );
        assert!(
            child.try_wait().unwrap().is_none(),
            "the child exited early"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    child.kill().unwrap();
    child.wait().unwrap();
    let _ = std::fs::remove_file(&ready);
    let left: Vec<String> = netns::list()
        .unwrap()
        .into_iter()
        .filter(|n| n.starts_with(&prefix))
        .collect();
    assert_eq!(left.len(), 3, "san, h1, gw1: {left:?}");

    let done = xtask::lab::cleanup_leftovers(&prefix).unwrap();
    assert_eq!(done.namespaces.len(), 3);
    assert!(done.processes >= 1, "its tgtd was running");
    assert_eq!(done.folders.len(), 1, "the temporary folder");
    assert!(
        netns::list()
            .unwrap()
            .iter()
            .all(|n| !n.starts_with(&prefix))
    );
    assert!(
        !std::env::temp_dir()
            .join(&prefix)
            .read_dir()
            .unwrap()
            .any(|_| true)
    );
    let _ = std::fs::remove_dir(std::env::temp_dir().join(&prefix));
}
