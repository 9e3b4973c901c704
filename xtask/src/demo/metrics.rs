//! The figures of the demo: balance of a set of gateway loads, the samples
//! taken every tick, the I/O stalls, and the summary.
//!
//! Rates are in MiB/s (2^20 bytes a second) wherever a person reads them:
//! the demo's `--rate 24M` is 24 MiB/s, and `sanlb status` prints the same
//! unit.

use std::{collections::BTreeMap, net::Ipv4Addr};

use serde::Serialize;

/// Bytes in a MiB: rates are shown in MiB/s.
pub const MIB: f64 = (1u64 << 20) as f64;

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
    /// Owner (gateway index) of each target's address (in pair mode: of
    /// its portal).
    pub owners: Vec<Option<usize>>,
    /// iSCSI bytes per (initiator, target) and gateway (pair mode: where
    /// each pair runs).
    pub pair_gateway_bytes: BTreeMap<(Ipv4Addr, Ipv4Addr), Vec<u64>>,
}

/// The gateway that carried each (initiator, target) between two samples:
/// the one whose count grew the most (`None` when none grew).
pub fn carriers(a: &Sample, b: &Sample) -> BTreeMap<(Ipv4Addr, Ipv4Addr), Option<usize>> {
    b.pair_gateway_bytes
        .iter()
        .map(|(k, now)| {
            let before = a.pair_gateway_bytes.get(k);
            let grew = now
                .iter()
                .enumerate()
                .map(|(g, n)| (g, n.saturating_sub(before.map_or(0, |b| b[g]))))
                .filter(|(_, d)| *d > 0)
                .max_by_key(|(_, d)| *d)
                .map(|(g, _)| g);
            (*k, grew)
        })
        .collect()
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
    /// Gateway loads by the agents, MiB/s.
    pub loads_mib_s: Vec<f64>,
    /// Gateway loads by the veth counters, MiB/s.
    pub loads_veth_mib_s: Vec<f64>,
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
            loads_mib_s: agents.iter().map(|b| b / MIB).collect(),
            loads_veth_mib_s: veth.iter().map(|b| b / MIB).collect(),
            from_s: from,
            to_s: to,
        })
    }
}

/// Where the run is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Phase {
    /// The initiators write their regions, then run the skewed load.
    Load,
    /// The load is over; the initiators read back what they wrote.
    ReadBack,
    /// `iscsi-perf` reads t1 as fast as it can (an independent client).
    Reader,
    /// One more interval with the controller, so that what the burst of the
    /// read-back and iscsi-perf makes it decide is seen too.
    After,
}

impl Phase {
    /// Its name in the summary and the plot.
    pub fn name(self) -> &'static str {
        match self {
            Phase::Load => "load",
            Phase::ReadBack => "read-back",
            Phase::Reader => "iscsi-perf",
            Phase::After => "after",
        }
    }
}

/// When each phase of the run began and ended, seconds since the load
/// started.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct Phases {
    /// Every initiator had written its regions (the fill spike is over).
    pub prefill_end_s: f64,
    /// The load ended (the read-back began).
    pub load_end_s: f64,
    /// Every initiator had read back and exited.
    pub readback_end_s: f64,
    /// iscsi-perf ran from here..
    pub reader_start_s: f64,
    /// ..to here; then the demo watches one more interval.
    pub reader_end_s: f64,
    /// The controller was stopped (no decision after this).
    pub controller_stop_s: Option<f64>,
    /// The last sample.
    pub end_s: f64,
}

/// One rebalance the controller adopted (from `sanlb status`).
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Rebalance {
    /// Seconds since the load started.
    pub at_s: f64,
    /// The phase it fell in.
    pub phase: Phase,
    /// Generation after the decision.
    pub generation: u64,
    /// `interval` or `failover`.
    pub trigger: String,
    /// The controller's reason (`gain 1.96`: the cost fell by that much).
    pub reason: String,
    /// Routes it moved.
    pub moves: usize,
    /// var_norm of the map in force before (by the controller's rates).
    pub var_norm_before: Option<f64>,
    /// var_norm of the map adopted.
    pub var_norm_after: f64,
}

/// One move the demo saw: an address (target mode) or a pair's sessions
/// (pair mode).
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Move {
    /// Seconds since the load started, when the demo saw the new owner
    /// (sampled every second).
    pub at_s: f64,
    /// The phase it happened in.
    pub phase: Phase,
    /// Target name.
    pub target: String,
    /// The host whose pair moved (pair mode).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub host: Option<String>,
    /// The target's address.
    pub addr: Ipv4Addr,
    /// Old owner (`None` if it had none).
    pub from: Option<String>,
    /// New owner.
    pub to: Option<String>,
    /// Generation of the share that handed it to the new owner.
    pub generation: u64,
    /// The rebalance that decided it (the latest adopted one before it was
    /// seen).
    pub decision: Option<Rebalance>,
    /// The initiators' reconnects that followed the move: each initiator
    /// whose connection went through the old gateway reconnects once.
    pub reconnects: usize,
    /// Per initiator that reconnected after the move: the I/O stall that
    /// spans its reconnect (from the last completion before the move to the
    /// first after), seconds. Gaps under the loadgens' stall threshold
    /// ([`Stalls::threshold_s`]) are not listed: an initiator idle at the
    /// move reconnects with its next I/O and barely stalls.
    pub stalls_s: Vec<f64>,
    /// The longest of `stalls_s`; `None` if no initiator stalled as long as
    /// the threshold.
    pub stall_s: Option<f64>,
}

impl Move {
    /// What moved: `t1`, or `h1→t1` for a pair.
    pub fn label(&self) -> String {
        match &self.host {
            Some(h) => format!("{h}→{}", self.target),
            None => self.target.clone(),
        }
    }

    /// When it happened, as exactly as known: the decision, else when the
    /// demo saw it.
    pub fn time_s(&self) -> f64 {
        self.decision.as_ref().map_or(self.at_s, |d| d.at_s)
    }
}

/// A stall one initiator saw on one target: time with I/O outstanding and
/// none completing (the loadgen reports those of 20 ms and more).
#[derive(Clone, Debug, PartialEq)]
pub struct Stall {
    /// Host index.
    pub host: usize,
    /// Target name.
    pub target: String,
    /// Start, seconds since the load started.
    pub start_s: f64,
    /// Length, seconds.
    pub duration_s: f64,
}

impl Stall {
    /// Whether it spans `t` (seconds since the start), give or take the
    /// clock steps of the loadgen's output (1 ms).
    pub fn spans(&self, t: f64) -> bool {
        self.start_s <= t + 1e-3 && t <= self.start_s + self.duration_s + 1e-3
    }
}

/// Stall lengths of one kind.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct StallFigures {
    /// How many.
    pub count: usize,
    /// Median, seconds (0 without any).
    pub median_s: f64,
    /// 99th percentile.
    pub p99_s: f64,
    /// Longest.
    pub max_s: f64,
}

impl StallFigures {
    /// The figures of `lengths`.
    pub fn of(mut lengths: Vec<f64>) -> StallFigures {
        lengths.retain(|l| l.is_finite());
        lengths.sort_by(f64::total_cmp);
        let at = |q: f64| {
            if lengths.is_empty() {
                0.0
            } else {
                lengths[((lengths.len() - 1) as f64 * q).round() as usize]
            }
        };
        StallFigures {
            count: lengths.len(),
            median_s: at(0.5),
            p99_s: at(0.99),
            max_s: lengths.last().copied().unwrap_or(0.0),
        }
    }
}

/// The stalls of the moves beside those of ordinary I/O.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct Stalls {
    /// Per move: the longest of its initiators' stalls across their
    /// reconnects ([`Move::stall_s`]).
    pub per_move: StallFigures,
    /// Per initiator and move: the stall that spans the initiator's
    /// reconnect. In target mode an initiator with I/O in flight at the
    /// move waits for a TCP retransmission (about 0.2 s) to reach the new
    /// gateway; one that was idle finds it with its next I/O. In pair mode
    /// the old gateway resets the connection and the initiator reconnects
    /// at once.
    pub per_initiator: StallFigures,
    /// Every other stall of the same initiators during the load after the
    /// fill (no reconnect in it): what I/O sees without any move.
    pub baseline: StallFigures,
    /// The shortest stall the loadgens report, seconds (0.02; 0.005 in
    /// pair mode, whose moves stall less than 0.02 s).
    pub threshold_s: f64,
}

/// Splits the stalls of the load (after the fill) into those that span a
/// reconnect (`reconnects`: host, target, seconds since the start) and the
/// others; `moves` gives the per-move figures.
pub fn stalls(
    all: &[Stall],
    reconnects: &[(usize, String, f64)],
    phases: &Phases,
    moves: &[Move],
) -> Stalls {
    let (mut per_initiator, mut baseline) = (Vec::new(), Vec::new());
    for s in all {
        let spans_reconnect = reconnects
            .iter()
            .any(|(h, t, at)| *h == s.host && *t == s.target && s.spans(*at));
        if spans_reconnect {
            per_initiator.push(s.duration_s);
        } else if s.start_s >= phases.prefill_end_s && s.start_s < phases.load_end_s {
            baseline.push(s.duration_s);
        }
    }
    Stalls {
        per_move: StallFigures::of(moves.iter().filter_map(|m| m.stall_s).collect()),
        per_initiator: StallFigures::of(per_initiator),
        baseline: StallFigures::of(baseline),
        threshold_s: 0.02,
    }
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
    /// Moves of the whole run (the load and after it): addresses, or
    /// pairs in pair mode.
    pub moves: usize,
    /// Of which during the load.
    pub moves_in_load: usize,
    /// Seconds from the start of the load to its last move during the load
    /// (0: none).
    pub converge_s: f64,
    /// Seconds from the start to when max/mean stayed within 1.10 to the
    /// end (`None`: it never did).
    pub balanced_s: Option<f64>,
    /// I/Os that failed at the initiators.
    pub io_errors: u64,
    /// Longest stall of any move (0 without moves).
    pub max_stall_s: f64,
    /// The stalls of the moves beside those without a move.
    pub stalls: Stalls,
    /// Reads that did not return what was written, plus blocks found wrong
    /// by the final read-back.
    pub verify_errors: u64,
    /// Blocks read back and checked at the end.
    pub verified_blocks: u64,
    /// Reconnects the initiators made.
    pub reconnects: u64,
    /// The last map generation.
    pub generation: u64,
    /// Who balanced: controller or none.
    pub balancer: String,
    /// What the controller moves: `target` (addresses) or `pair`.
    pub mode: String,
    /// Each move of the run.
    pub move_log: Vec<Move>,
    /// Each rebalance the controller adopted.
    pub rebalances: Vec<Rebalance>,
    /// When each phase of the run began and ended.
    pub phases: Phases,
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
    /// The rebalance interval, seconds.
    pub interval_s: f64,
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
        assert_eq!(after.loads_mib_s, [100.0 / MIB, 100.0 / MIB]);
        assert_eq!(balanced_since(&samples, 2.0, 1.10), Some(6.0));
        assert!(Balance::of(&samples, 20.0, 30.0).is_none());
    }

    #[test]
    fn a_pair_is_carried_where_its_bytes_grew_most() {
        let (h, t) = (Ipv4Addr::new(198, 18, 0, 101), Ipv4Addr::new(198, 18, 1, 1));
        let at = |bytes: [u64; 3]| Sample {
            pair_gateway_bytes: [((h, t), bytes.to_vec())].into(),
            ..Sample::default()
        };
        let c = carriers(&at([100, 0, 0]), &at([200, 0, 0]));
        assert_eq!(c[&(h, t)], Some(0));
        // Moved: the old gateway's last bytes and the new one's.
        let c = carriers(&at([200, 0, 0]), &at([210, 0, 90]));
        assert_eq!(c[&(h, t)], Some(2));
        let c = carriers(&at([210, 0, 90]), &at([210, 0, 90]));
        assert_eq!(c[&(h, t)], None, "idle");
        // New since the last sample.
        let c = carriers(&Sample::default(), &at([0, 5, 0]));
        assert_eq!(c[&(h, t)], Some(1));
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
    fn stall_figures() {
        let f = StallFigures::of(vec![0.3, 0.1, 0.2, f64::NAN]);
        assert_eq!(
            f,
            StallFigures {
                count: 3,
                median_s: 0.2,
                p99_s: 0.3,
                max_s: 0.3
            }
        );
        assert_eq!(StallFigures::of(vec![]), StallFigures::default());
    }

    #[test]
    fn stalls_that_span_a_reconnect_are_the_moves() {
        let stall = |host, target: &str, start_s, duration_s| Stall {
            host,
            target: target.into(),
            start_s,
            duration_s,
        };
        let all = [
            stall(0, "t1", 10.0, 0.25), // spans h1's reconnect on t1
            stall(1, "t1", 10.1, 0.09), // another host: ordinary
            stall(0, "t2", 10.0, 0.3),  // another target: ordinary
            stall(0, "t1", 1.0, 0.5),   // during the fill: left out
            stall(0, "t1", 50.0, 0.5),  // after the load: left out
            stall(0, "t1", 20.0, 0.08),
        ];
        let phases = Phases {
            prefill_end_s: 2.0,
            load_end_s: 45.0,
            ..Phases::default()
        };
        let s = stalls(&all, &[(0, "t1".into(), 10.2)], &phases, &[]);
        assert_eq!((s.per_initiator.count, s.per_initiator.max_s), (1, 0.25));
        assert_eq!(s.per_move.count, 0);
        assert_eq!((s.baseline.count, s.baseline.max_s), (3, 0.3));
        assert_eq!(s.baseline.median_s, 0.09);
    }
}
