//! The figures of the demo: balance of a set of gateway loads, the samples
//! taken every tick, and the summary.

use std::{collections::BTreeMap, net::Ipv4Addr};

use serde::Serialize;

/// Largest gateway load over the mean (1 = perfectly even; 0 without load).
pub fn max_mean(loads: &[f64]) -> f64 {
    let mean = loads.iter().sum::<f64>() / loads.len().max(1) as f64;
    if mean <= 0.0 {
        return 0.0;
    }
    loads.iter().copied().fold(0.0, f64::max) / mean
}

/// Population variance of the loads over their squared mean (the
/// optimiser's `var_norm` with equal capacities).
pub fn var_norm(loads: &[f64]) -> f64 {
    let n = loads.len() as f64;
    let mean = loads.iter().sum::<f64>() / n.max(1.0);
    if mean <= 0.0 {
        return 0.0;
    }
    let var = loads.iter().map(|l| (l - mean).powi(2)).sum::<f64>() / n;
    var / (mean * mean)
}

/// What the demo saw at one tick, cumulative since the start.
#[derive(Clone, Debug, Default)]
pub struct Sample {
    /// Seconds since the load started.
    pub t: f64,
    /// iSCSI bytes (both directions) each gateway's agent counted.
    pub gateway_bytes: Vec<u64>,
    /// Bytes through each gateway's `eth0` (rx + tx), from the kernel.
    pub veth_bytes: Vec<u64>,
    /// iSCSI bytes per (initiator, target), summed over the gateways.
    pub pair_bytes: BTreeMap<(Ipv4Addr, Ipv4Addr), u64>,
    /// SCSI data bytes the commands asked for (READ and WRITE transfer
    /// lengths) per (initiator, target), summed over the gateways.
    pub pair_data_bytes: BTreeMap<(Ipv4Addr, Ipv4Addr), u64>,
    /// Owner (gateway index) of each target.
    pub owners: Vec<Option<usize>>,
}

impl Sample {
    /// iSCSI bytes per target, summed over initiators.
    pub fn target_bytes(&self, targets: &[Ipv4Addr]) -> Vec<u64> {
        targets
            .iter()
            .map(|t| {
                self.pair_bytes
                    .iter()
                    .filter(|((_, tt), _)| tt == t)
                    .map(|(_, b)| b)
                    .sum()
            })
            .collect()
    }
}

/// Per-second rates between two samples.
pub fn rates(a: &[u64], b: &[u64], dt: f64) -> Vec<f64> {
    a.iter()
        .zip(b)
        .map(|(x, y)| y.saturating_sub(*x) as f64 / dt.max(1e-3))
        .collect()
}

/// The gateway loads (bytes/s) over the samples in `[from, to]` seconds,
/// by agents and by veth counters; `None` with fewer than two samples.
pub fn window(samples: &[Sample], from: f64, to: f64) -> Option<(Vec<f64>, Vec<f64>)> {
    let inside: Vec<&Sample> = samples
        .iter()
        .filter(|s| s.t >= from && s.t <= to)
        .collect();
    let (first, last) = (inside.first()?, inside.last()?);
    if last.t - first.t <= 0.0 {
        return None;
    }
    let dt = last.t - first.t;
    Some((
        rates(&first.gateway_bytes, &last.gateway_bytes, dt),
        rates(&first.veth_bytes, &last.veth_bytes, dt),
    ))
}

/// Balance figures of one window.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct Balance {
    /// Largest gateway load over the mean, by the agents' counters.
    pub max_mean: f64,
    /// Normalised variance of the gateway loads, by the agents' counters.
    pub var_norm: f64,
    /// The same max/mean by the gateways' veth byte counters.
    pub max_mean_veth: f64,
    /// Gateway loads by the agents, MB/s.
    pub loads_mb_s: Vec<f64>,
    /// Gateway loads by the veth counters, MB/s.
    pub loads_veth_mb_s: Vec<f64>,
    /// The window, seconds since the load started.
    pub from_s: f64,
    /// End of the window.
    pub to_s: f64,
}

impl Balance {
    /// The figures of `samples` within `[from, to]`.
    pub fn of(samples: &[Sample], from: f64, to: f64) -> Option<Balance> {
        let (agents, veth) = window(samples, from, to)?;
        Some(Balance {
            max_mean: max_mean(&agents),
            var_norm: var_norm(&agents),
            max_mean_veth: max_mean(&veth),
            loads_mb_s: agents.iter().map(|b| b / 1e6).collect(),
            loads_veth_mb_s: veth.iter().map(|b| b / 1e6).collect(),
            from_s: from,
            to_s: to,
        })
    }
}

/// One address move the demo saw.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Move {
    /// Seconds since the load started.
    pub at_s: f64,
    /// Wall clock, Unix seconds (to match the initiators' stall events).
    pub at_unix: f64,
    /// Target name.
    pub target: String,
    /// Its address.
    pub addr: Ipv4Addr,
    /// Old owner (`None` if it had none).
    pub from: Option<String>,
    /// New owner.
    pub to: Option<String>,
    /// Map generation that made it.
    pub generation: u64,
    /// Longest I/O stall any initiator saw on the target around the move.
    pub stall_s: Option<f64>,
}

/// The byte check: what the agents counted per (initiator, target) against
/// what the initiators moved.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct BytesCheck {
    /// Pairs compared.
    pub pairs: usize,
    /// Largest |counted / moved - 1| over the pairs, counting the iSCSI
    /// stream (TCP payload: the data plus PDU headers, NOPs, logins and
    /// retransmissions, which keep it some 0.6 % above the data at 16 KiB
    /// I/Os).
    pub max_rel_diff: f64,
    /// The same counting the data the READ and WRITE commands asked for
    /// (best effort: from the commands whose header starts a TCP segment).
    pub max_rel_diff_scsi: f64,
    /// iSCSI stream bytes counted in total.
    pub counted: u64,
    /// SCSI data bytes counted in total.
    pub counted_scsi: u64,
    /// Data bytes the initiators read and wrote in total.
    pub moved: u64,
    /// Per pair: label, moved, stream counted, SCSI data counted.
    pub detail: Vec<(String, u64, u64, u64)>,
}

impl BytesCheck {
    /// Adds one (initiator, target) pair.
    pub fn add(&mut self, label: String, moved: u64, stream: u64, scsi: u64) {
        if moved == 0 {
            return;
        }
        self.detail.push((label, moved, stream, scsi));
        self.pairs += 1;
        self.moved += moved;
        self.counted += stream;
        self.counted_scsi += scsi;
        let rel = |c: u64| (c as f64 / moved as f64 - 1.0).abs();
        self.max_rel_diff = self.max_rel_diff.max(rel(stream));
        self.max_rel_diff_scsi = self.max_rel_diff_scsi.max(rel(scsi));
    }
}

/// The summary printed at the end and written by `--summary`.
#[derive(Clone, Debug, Default, Serialize)]
pub struct Summary {
    /// Balance before the first rebalance.
    pub before: Balance,
    /// Balance over the last interval of the load.
    pub after: Balance,
    /// Address moves.
    pub moves: usize,
    /// Seconds from the start of the load to the last move (0: none).
    pub converge_s: f64,
    /// Seconds from the start to when max/mean stayed within 1.10 to the
    /// end (`None`: it never did).
    pub balanced_s: Option<f64>,
    /// I/Os that failed at the initiators.
    pub io_errors: u64,
    /// Longest stall of any move (0 without moves).
    pub max_stall_s: f64,
    /// Reads that did not return what was written, plus blocks found wrong
    /// by the final read-back.
    pub verify_errors: u64,
    /// Blocks read back and checked at the end.
    pub verified_blocks: u64,
    /// Reconnects the initiators made.
    pub reconnects: u64,
    /// Rebalances adopted (the last map generation).
    pub generation: u64,
    /// Who balanced: controller, plan or none.
    pub balancer: String,
    /// Each move.
    pub move_log: Vec<Move>,
    /// Counted against moved bytes per (initiator, target).
    pub bytes: BytesCheck,
    /// The independent client's result (`iscsi-perf` at the end).
    pub iscsi_perf: Option<String>,
    /// Hosts, gateways, targets, seconds of load, skew.
    pub shape: Shape,
}

/// The lab's shape and load.
#[derive(Clone, Debug, Default, Serialize)]
pub struct Shape {
    /// Hosts.
    pub hosts: usize,
    /// Gateways.
    pub gateways: usize,
    /// Targets.
    pub targets: usize,
    /// Seconds of load.
    pub duration_s: f64,
    /// Busiest over lightest target rate.
    pub skew: f64,
    /// Offered load of all hosts, bytes/s.
    pub rate: u64,
}

/// When max/mean (over `window` seconds) came within `limit` for good.
pub fn balanced_since(samples: &[Sample], window: f64, limit: f64) -> Option<f64> {
    let end = samples.last()?.t;
    let mut since = None;
    for s in samples.iter().filter(|s| s.t >= window) {
        let ok = Balance::of(samples, s.t - window, s.t).is_some_and(|b| b.max_mean <= limit);
        match (ok, since) {
            (true, None) => since = Some(s.t),
            (false, _) => since = None,
            _ => {}
        }
    }
    since.filter(|&t| t <= end)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn balance_figures() {
        assert_eq!(max_mean(&[3.0, 0.0, 0.0]), 3.0);
        assert_eq!(var_norm(&[3.0, 0.0, 0.0]), 2.0);
        assert_eq!(max_mean(&[1.0, 1.0]), 1.0);
        assert_eq!(var_norm(&[1.0, 1.0]), 0.0);
        assert_eq!(max_mean(&[0.0, 0.0]), 0.0);
        assert!((var_norm(&[1.0, 3.0]) - 0.25).abs() < 1e-12);
    }

    fn sample(t: f64, gw: [u64; 2]) -> Sample {
        Sample {
            t,
            gateway_bytes: gw.to_vec(),
            veth_bytes: gw.map(|b| b + b / 100).to_vec(),
            ..Sample::default()
        }
    }

    #[test]
    fn windows_and_convergence() {
        // gw1 carries everything for 4 s, then both share evenly.
        let samples: Vec<Sample> = (0..=10)
            .map(|t| {
                let t = t as f64;
                let a = (t.min(4.0) * 200.0 + (t - 4.0).max(0.0) * 100.0) as u64;
                let b = ((t - 4.0).max(0.0) * 100.0) as u64;
                sample(t, [a, b])
            })
            .collect();
        let before = Balance::of(&samples, 0.0, 4.0).unwrap();
        assert_eq!((before.max_mean, before.var_norm), (2.0, 1.0));
        let after = Balance::of(&samples, 6.0, 10.0).unwrap();
        assert_eq!((after.max_mean, after.var_norm), (1.0, 0.0));
        assert_eq!(after.max_mean_veth, 1.0);
        assert_eq!(after.loads_mb_s, [100.0 / 1e6, 100.0 / 1e6]);
        assert_eq!(balanced_since(&samples, 2.0, 1.10), Some(6.0));
        assert!(Balance::of(&samples, 20.0, 30.0).is_none());
    }

    #[test]
    fn bytes_check_keeps_the_worst_pair() {
        let mut c = BytesCheck::default();
        c.add("a".into(), 1000, 1010, 1000);
        c.add("b".into(), 2000, 2040, 1990);
        c.add("c".into(), 0, 5, 5);
        assert_eq!(c.pairs, 2);
        assert!((c.max_rel_diff - 0.02).abs() < 1e-12);
        assert!((c.max_rel_diff_scsi - 0.005).abs() < 1e-12);
        assert_eq!((c.moved, c.counted, c.counted_scsi), (3000, 3050, 2990));
    }

    #[test]
    fn target_bytes_sum_initiators() {
        let t1 = Ipv4Addr::new(198, 18, 1, 1);
        let t2 = Ipv4Addr::new(198, 18, 1, 2);
        let h1 = Ipv4Addr::new(198, 18, 0, 101);
        let h2 = Ipv4Addr::new(198, 18, 0, 102);
        let s = Sample {
            pair_bytes: [((h1, t1), 5), ((h2, t1), 7), ((h1, t2), 1)].into(),
            ..Sample::default()
        };
        assert_eq!(s.target_bytes(&[t1, t2]), [12, 1]);
    }
}
