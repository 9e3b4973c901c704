//! What the agents count against what the initiators moved and what the
//! kernel saw on the gateways' NICs.

use std::{collections::BTreeMap, net::IpAddr, time::Duration};

use xtask::lab::{
    Lab, Placement,
    agent::{self, FlowCount},
    loadgen::{self, Workload},
};

#[test]
#[ignore = "privileged: cargo xtask test runs it as root"]
fn counted_bytes_match_the_initiators_and_the_nics() {
    let sanlb = agent::sanlb_binary().unwrap();
    let bin = loadgen::build().unwrap();
    let lab = Lab::builder()
        .hosts(2)
        .gateways(2)
        .targets(2)
        .disk_size(16 << 20)
        .placement(Placement::Map(vec![0, 1]))
        .build()
        .unwrap();
    let agents: Vec<_> = lab
        .gateways()
        .iter()
        .map(|g| agent::start(&lab, &sanlb, g, &[]).unwrap())
        .collect();
    let nic_before: Vec<u64> = lab
        .gateway_link_stats()
        .unwrap()
        .iter()
        .map(|(_, s)| s.rx_bytes + s.tx_bytes)
        .collect();

    // Different rates and mixes per (host, target), disjoint regions.
    let rates = [[2u64 << 20, 1 << 20], [1 << 20, 3 << 20]];
    let mut loadgens = Vec::new();
    for (h, host) in lab.hosts().iter().enumerate() {
        let workloads: Vec<Workload> = lab
            .targets()
            .iter()
            .enumerate()
            .map(|(t, target)| Workload {
                rate: Some(rates[h][t]),
                read_pct: if t == 0 { 80 } else { 30 },
                lba: h as u64 * 8192,
                blocks: Some(8192),
                ..Workload::new(target)
            })
            .collect();
        let cmd = loadgen::command(&bin, host, &workloads, Duration::from_secs(6), h as u64);
        loadgens.push(lab.spawn(&format!("loadgen-{}", host.name), cmd).unwrap());
    }
    let mut moved: BTreeMap<(IpAddr, IpAddr), u64> = BTreeMap::new();
    for (h, lg) in loadgens.iter_mut().enumerate() {
        let status = lg
            .wait_timeout(Duration::from_secs(60))
            .unwrap()
            .expect("loadgen ends");
        assert!(status.success(), "loadgen: {}", lg.stderr());
        for (name, totals, _, _) in loadgen::finals(&lg.stdout()).unwrap() {
            assert_eq!(totals.errors, 0);
            let t = lab.targets().iter().find(|t| t.name == name).unwrap();
            moved.insert(
                (lab.hosts()[h].addr.into(), t.addr.into()),
                totals.read_bytes + totals.write_bytes,
            );
        }
    }

    let counts: Vec<Vec<FlowCount>> = lab
        .gateways()
        .iter()
        .map(|g| agent::counters(&sanlb, g).unwrap())
        .collect();
    // Each target was carried by its own gateway only.
    for (g, flows) in counts.iter().enumerate() {
        for f in flows {
            assert_eq!(
                f.target,
                IpAddr::from(lab.targets()[g].addr),
                "{} counted {f:?}",
                lab.gateways()[g].name
            );
        }
    }
    // Per (initiator, target): the iSCSI stream is the data plus PDU
    // headers, logins and NOPs: at least the data, at most 1 % above it.
    for (pair, data) in &moved {
        let counted: u64 = counts
            .iter()
            .flatten()
            .filter(|f| (f.initiator, f.target) == *pair)
            .map(|f| f.to_target_bytes + f.to_initiator_bytes)
            .sum();
        let ratio = counted as f64 / *data as f64;
        eprintln!(
            "{pair:?}: moved {data}, counted {counted} ({:+.3} %)",
            (ratio - 1.0) * 100.0
        );
        assert!(
            (1.0..=1.01).contains(&ratio),
            "{pair:?}: moved {data}, counted {counted}"
        );
    }
    // Per gateway: the frames counted are what crossed its NIC. The NIC
    // counts a TSO/GSO packet once with one set of headers, the agents as
    // the segments it leaves as (docs/dataplane.md): headers are at most
    // 66 of every 1514 bytes, so the agents may count up to ~4.5 % more; the
    // NIC also carried a few ARP frames.
    let nic_after = lab.gateway_link_stats().unwrap();
    for (g, flows) in counts.iter().enumerate() {
        let frames: u64 = flows
            .iter()
            .map(|f| f.to_target_frame_bytes + f.to_initiator_frame_bytes)
            .sum();
        let nic = nic_after[g].1.rx_bytes + nic_after[g].1.tx_bytes - nic_before[g];
        let ratio = frames as f64 / nic as f64;
        eprintln!(
            "{}: frames counted {frames}, NIC {nic} ({:+.3} %)",
            nic_after[g].0,
            (ratio - 1.0) * 100.0
        );
        assert!(
            (0.99..=1.05).contains(&ratio),
            "{}: counted {frames}, NIC {nic}",
            nic_after[g].0
        );
    }
    // Agents remove their pins when they stop.
    drop(agents);
    for g in lab.gateways() {
        let left = g.pin_dir.read_dir().map(|d| d.count()).unwrap_or(0);
        assert_eq!(left, 0, "pins left in {}", g.pin_dir.display());
    }
}
