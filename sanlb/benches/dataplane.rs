//! `cargo xtask bench` (as root): the XDP program on BPF_PROG_TEST_RUN beside
//! an empty XDP_PASS program measured in the same run, and the TC ingress
//! program beside an empty TC program. The kernel times the
//! runs itself, so the figures are ns per packet of program execution plus
//! the test-run loop, the same loop for both programs.
//!
//! Cases: an iSCSI frame of a known flow (the steady state), a non-iSCSI TCP
//! frame, a frame of a new flow each time (the insert path), an IPv6 frame of
//! a known flow, and a jumbo frame (MTU 9000) that the test run hands over
//! as a multi-buffer frame. Prints a
//! table and writes it as JSON to target/bench/dataplane.json.

use std::time::Duration;

use sanlb_test::{
    frames,
    testrun::{Baseline, Detached},
};

const REPEAT: u32 = 2_000_000;
const ROUNDS: usize = 7;
const NEW_FLOWS: u32 = 50_000;

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn ns(d: Duration) -> f64 {
    d.as_secs_f64() * 1e9
}

fn main() {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        eprintln!(
            "dataplane bench: skipped, loading BPF programs needs root (sudo -E cargo xtask bench)"
        );
        return;
    }
    let filter: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| !a.starts_with('-'))
        .collect();
    if !filter.is_empty() && !filter.iter().any(|f| "dataplane".contains(f.as_str())) {
        return;
    }
    let mut dp = Detached::load(&[3260], 1 << 20).expect("loading the counting programs");
    let mut base = Baseline::load().expect("loading the baseline program");

    let iscsi = frames::tcp4(40000, 3260, vec![0x5a; 1448]).build();
    let other = frames::tcp4(40000, 22, vec![0x5a; 1448]).build();

    let steady = |dp: &mut Detached, base: &mut Baseline, frame: &[u8]| {
        let mut p = Vec::new();
        let mut b = Vec::new();
        for _ in 0..ROUNDS {
            p.push(ns(dp.run_xdp(frame, REPEAT).expect("test run").per_run));
            b.push(ns(base.run_xdp(frame, REPEAT).expect("test run").per_run));
        }
        (median(p), median(b))
    };
    let iscsi6 = frames::tcp6(40000, 3260, vec![0x5a; 1428]).build();
    let jumbo = frames::tcp4(40000, 3260, vec![0x5a; 8960]).build();
    let (iscsi_ns, iscsi_base) = steady(&mut dp, &mut base, &iscsi);
    let (other_ns, other_base) = steady(&mut dp, &mut base, &other);
    let (iscsi6_ns, iscsi6_base) = steady(&mut dp, &mut base, &iscsi6);
    let (jumbo_ns, jumbo_base) = steady(&mut dp, &mut base, &jumbo);
    // TC ingress (the hook on veth) against an empty TC program, on a GRO
    // packet of 3 segments (a test run takes at most a page).
    let gro = frames::tcp4(40000, 3260, vec![0x5a; 3 * 1000]).build();
    let tc_steady = |dp: &mut Detached, base: &mut Baseline, frame: &[u8]| {
        let mut p = Vec::new();
        let mut b = Vec::new();
        for _ in 0..ROUNDS {
            p.push(ns(dp
                .run_tc_ingress(frame, 3, REPEAT)
                .expect("test run")
                .per_run));
            b.push(ns(base.run_tc(frame, 3, REPEAT).expect("test run").per_run));
        }
        (median(p), median(b))
    };
    let (tc_ns, tc_base) = tc_steady(&mut dp, &mut base, &gro);
    let (tc_other_ns, tc_other_base) = tc_steady(
        &mut dp,
        &mut base,
        &frames::tcp4(40000, 22, vec![0x5a; 3 * 1000]).build(),
    );

    // New flows: one run per distinct source address; the kernel's per-run
    // time (repeat = 1) for both programs, averaged.
    let (mut new_sum, mut base_sum) = (0.0, 0.0);
    for i in 0..NEW_FLOWS {
        let mut f = frames::tcp4(40000, 3260, vec![0x5a; 1448]);
        if let frames::L3::V4(ip, _) = &mut f.l3 {
            ip.src = [198, 18, (i >> 8) as u8, i as u8];
            ip.dst = [198, 19, (i >> 16) as u8, 1];
        }
        let b = f.build();
        new_sum += ns(dp.run_xdp(&b, 1).expect("test run").per_run);
        base_sum += ns(base.run_xdp(&b, 1).expect("test run").per_run);
    }
    let snap = dp.snapshot().expect("snapshot");
    assert_eq!(snap.ingress.insert_failed, 0);
    let (new_ns, new_base) = (
        new_sum / f64::from(NEW_FLOWS),
        base_sum / f64::from(NEW_FLOWS),
    );

    println!("dataplane: the programs vs empty ones (XDP, TC), BPF_PROG_TEST_RUN, ns/packet");
    println!(
        "{:<28} {:>10} {:>10} {:>7}",
        "case", "sanlb", "empty", "ratio"
    );
    let rows = [
        ("iscsi frame, known flow", iscsi_ns, iscsi_base),
        ("non-iscsi tcp frame", other_ns, other_base),
        ("iscsi frame, new flow", new_ns, new_base),
        ("ipv6 iscsi, known flow", iscsi6_ns, iscsi6_base),
        ("9014-byte multi-buffer", jumbo_ns, jumbo_base),
        ("tc ingress, known flow", tc_ns, tc_base),
        ("tc ingress, non-iscsi", tc_other_ns, tc_other_base),
    ];
    let mut json = Vec::new();
    for (name, v, b) in rows {
        println!("{name:<28} {v:>10.1} {b:>10.1} {:>7.2}", v / b);
        json.push(format!(
            "{{\"case\":\"{name}\",\"ns\":{v:.2},\"baseline_ns\":{b:.2},\"ratio\":{:.3}}}",
            v / b
        ));
    }
    println!(
        "(median of {ROUNDS} rounds of {REPEAT} runs; new flows: mean of {NEW_FLOWS} single runs)"
    );
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/bench");
    let _ = std::fs::create_dir_all(&dir);
    let _ = std::fs::write(
        dir.join("dataplane.json"),
        format!("[{}]\n", json.join(",")),
    );
}
