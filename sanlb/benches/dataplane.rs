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
//!
//! Two floors beside them (`sanlb-test-ebpf`): the least a program with
//! per-hook statistics does for a frame it does not count (statistics
//! looked up, two counters, the ports compared at fixed offsets) and for a
//! frame of a known pair (the same, then the pair's set and first way, three
//! counters and the whole-frame length); neither checks a header. They show
//! what part of a ratio any exact counter pays on this machine.

use std::time::Duration;

use sanlb_test::{
    frames,
    testrun::{Baseline, Detached, Floor},
};

const REPEAT: u32 = 1_000_000;
const ROUNDS: usize = 15;
const NEW_FLOWS: u32 = 50_000;

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn min(v: &[f64]) -> f64 {
    v.iter().copied().fold(f64::INFINITY, f64::min)
}

/// Rounds of (program, empty program) run back to back, `REPEAT` runs each,
/// timed by the kernel (rounded down to whole ns per run, so about a tenth
/// of the empty program is the resolution; the wall clock is no finer: an
/// XDP test run also updates the XDP dispatcher, a few ms that vary). This
/// VM's speed drifts between rounds, so each round's ratio compares runs
/// made moments apart; the table gives their median, and the ratio of the
/// fastest runs of each.
struct Steady {
    ns: f64,
    base_ns: f64,
    ratio: f64,
    min_ratio: f64,
}

fn steady(mut pair: impl FnMut() -> (Duration, Duration)) -> Steady {
    let (mut p, mut b, mut r) = (Vec::new(), Vec::new(), Vec::new());
    for _ in 0..ROUNDS {
        let (prog, base) = pair();
        p.push(ns(prog));
        b.push(ns(base));
        r.push(ns(prog) / ns(base));
    }
    Steady {
        ns: median(p.clone()),
        base_ns: median(b.clone()),
        ratio: median(r),
        min_ratio: min(&p) / min(&b),
    }
}

/// Keeps every test run on one CPU: the per-CPU tables then hold the
/// known pairs from the first round on, and no run pays a migration.
fn pin_to_this_cpu() {
    // SAFETY: sched_getcpu has no preconditions; the set is a plain value
    // that CPU_SET fills and sched_setaffinity only reads.
    unsafe {
        let cpu = libc::sched_getcpu();
        if cpu < 0 {
            return;
        }
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(cpu as usize, &mut set);
        if libc::sched_setaffinity(0, size_of::<libc::cpu_set_t>(), &set) != 0 {
            eprintln!(
                "dataplane bench: not pinned to CPU {cpu}: {}",
                std::io::Error::last_os_error()
            );
        }
    }
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
    pin_to_this_cpu();
    let mut dp = Detached::load(&[3260], 1 << 20).expect("loading the counting programs");
    let mut base = Baseline::load().expect("loading the baseline program");

    let iscsi = frames::tcp4(40000, 3260, vec![0x5a; 1448]).build();
    let other = frames::tcp4(40000, 22, vec![0x5a; 1448]).build();

    let xdp = |dp: &mut Detached, base: &mut Baseline, frame: &[u8]| {
        steady(|| {
            (
                dp.run_xdp(frame, REPEAT).expect("test run").per_run,
                base.run_xdp(frame, REPEAT).expect("test run").per_run,
            )
        })
    };
    let iscsi6 = frames::tcp6(40000, 3260, vec![0x5a; 1428]).build();
    let jumbo = frames::tcp4(40000, 3260, vec![0x5a; 8960]).build();
    let known = xdp(&mut dp, &mut base, &iscsi);
    let other_tcp = xdp(&mut dp, &mut base, &other);
    let floor = |base: &mut Baseline, floor: Floor, frame: &[u8]| {
        steady(|| {
            (
                base.run_floor(floor, frame, REPEAT)
                    .expect("test run")
                    .per_run,
                base.run_xdp(frame, REPEAT).expect("test run").per_run,
            )
        })
    };
    let floor_count = floor(&mut base, Floor::Count, &iscsi);
    let floor_skip = floor(&mut base, Floor::Skip, &other);
    let known6 = xdp(&mut dp, &mut base, &iscsi6);
    let jumbo_known = xdp(&mut dp, &mut base, &jumbo);
    // TC ingress (the hook on veth) against an empty TC program, on a GRO
    // packet of 3 segments (a test run takes at most a page).
    let tc = |dp: &mut Detached, base: &mut Baseline, frame: &[u8]| {
        steady(|| {
            (
                dp.run_tc_ingress(frame, 3, REPEAT)
                    .expect("test run")
                    .per_run,
                base.run_tc(frame, 3, REPEAT).expect("test run").per_run,
            )
        })
    };
    let gro = frames::tcp4(40000, 3260, vec![0x5a; 3 * 1000]).build();
    let tc_known = tc(&mut dp, &mut base, &gro);
    let tc_other = tc(
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
        "{:<28} {:>8} {:>8} {:>7} {:>10}",
        "case", "sanlb", "empty", "ratio", "min ratio"
    );
    let new_flow = Steady {
        ns: new_ns,
        base_ns: new_base,
        ratio: new_ns / new_base,
        min_ratio: f64::NAN,
    };
    let rows = [
        ("iscsi frame, known flow", &known),
        ("non-iscsi tcp frame", &other_tcp),
        ("floor: known pair", &floor_count),
        ("floor: frame not counted", &floor_skip),
        ("iscsi frame, new flow", &new_flow),
        ("ipv6 iscsi, known flow", &known6),
        ("9014-byte multi-buffer", &jumbo_known),
        ("tc ingress, known flow", &tc_known),
        ("tc ingress, non-iscsi", &tc_other),
    ];
    let mut json = Vec::new();
    for (name, s) in rows {
        println!(
            "{name:<28} {:>8.1} {:>8.1} {:>7.2} {:>10.2}",
            s.ns, s.base_ns, s.ratio, s.min_ratio
        );
        json.push(format!(
            "{{\"case\":\"{name}\",\"ns\":{:.2},\"baseline_ns\":{:.2},\"ratio\":{:.3},\"min_ratio\":{}}}",
            s.ns,
            s.base_ns,
            s.ratio,
            if s.min_ratio.is_finite() { format!("{:.3}", s.min_ratio) } else { "null".into() }
        ));
    }
    println!(
        "(kernel time per run; median over {ROUNDS} rounds of {REPEAT} runs, ratio = median of the \
         rounds' ratios; new flows: mean of {NEW_FLOWS} single runs)"
    );
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/bench");
    let _ = std::fs::create_dir_all(&dir);
    let _ = std::fs::write(
        dir.join("dataplane.json"),
        format!("[{}]\n", json.join(",")),
    );
}
