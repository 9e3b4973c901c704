//! The statistical server's arithmetic (the controller's only helper for it): cumulative counters → deltas →
//! per-interval rates → a sliding window → the traffic matrix.
//!
//! Rate model: every interval yields one sample of the matrix (bytes/s per
//! (host, target), summed over gateways); a route's rate is the **mean of
//! the last W samples**. Chosen over an EWMA because its memory is bounded
//! and explicit (W samples), a burst weighs exactly 1/W and is forgotten
//! after W intervals (an EWMA never forgets completely, so a stopped route
//! keeps a tail), and operators can read it: "the average over the last
//! W × interval seconds".
//!
//! Within an interval a gateway's rate for a flow is the bytes its reports
//! added divided by the time those reports span, measured on the agent's
//! own clock (`uptime_ms`). A report that arrives after a long silence
//! therefore spreads its delta over the silence instead of spiking one
//! interval. A gateway that sent nothing in an interval (but is alive)
//! keeps its previous rates.
//!
//! Delta rules, per (gateway, flow):
//! - a report from an unknown boot id is a baseline (counts nothing): the
//!   counters restarted (agent restart) or the controller does not know
//!   what came before (controller restart);
//! - a report whose seq is not above the last one of its boot, or from a
//!   boot already replaced, is stale (duplicate or reordered): ignored;
//! - a counter below its previous value either wrapped (the previous value
//!   was within [`WRAP_WINDOW`] of 2⁶⁴: delta = the wrapped distance) or its
//!   map entry was evicted and re-created (delta = the new value);
//! - a flow absent from the previous report is new in the map: its whole
//!   value is the delta;
//! - a delta above [`MAX_RATE`] × span is absurd: the report is refused.

use std::{
    collections::{HashMap, VecDeque},
    net::IpAddr,
};

use rustc_hash::FxHashMap;

use crate::proto::Report;

/// (host, target).
pub type FlowKey = (IpAddr, IpAddr);

/// Highest plausible rate of one flow, bytes/s (8 Tbit/s): more is a bug or
/// a forged report.
pub const MAX_RATE: f64 = 1e12;
/// A counter that falls from within this distance of 2⁶⁴ wrapped.
pub const WRAP_WINDOW: u64 = 1 << 48;
/// Boot ids remembered per gateway to recognise late reports of old boots.
const RETIRED_BOOTS: usize = 8;

/// Why a report's counters are refused.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum RatesError {
    /// A delta that no link can carry.
    #[error("flow {initiator}→{target}: {field} grew by {delta} in {span_ms} ms (over {max} bytes/s)", max = MAX_RATE)]
    Absurd {
        /// Host.
        initiator: IpAddr,
        /// Target.
        target: IpAddr,
        /// Counter name.
        field: &'static str,
        /// The delta.
        delta: u64,
        /// Agent time since the previous report.
        span_ms: u64,
    },
    /// Same boot, later seq, earlier clock.
    #[error("uptime_ms went backwards within boot {boot_id} ({previous} → {now})")]
    UptimeBackwards {
        /// The boot.
        boot_id: String,
        /// Previous report's uptime.
        previous: u64,
        /// This report's uptime.
        now: u64,
    },
    /// The same flow twice in one report.
    #[error("flow {initiator}→{target} listed twice")]
    DuplicateFlow {
        /// Host.
        initiator: IpAddr,
        /// Target.
        target: IpAddr,
    },
}

/// What a report did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Ingest {
    /// First report of a boot: a baseline, nothing counted.
    Baseline,
    /// Deltas counted.
    Counted,
    /// Duplicate or out of order: ignored.
    Stale,
}

// Fx rather than SipHash: hashing address pairs dominated the cost of a
// report (1,000 flows: three lookups each), and the keys come from
// authenticated agents, not from the network at large.
#[derive(Debug, Default)]
struct Source {
    boot_id: String,
    seq: u64,
    uptime_ms: u64,
    /// Cumulative counters of the last report.
    cum: FxHashMap<FlowKey, [u64; 2]>,
    retired: VecDeque<String>,
    /// This interval: agent time covered and bytes per flow.
    span_ms: u64,
    acc: FxHashMap<FlowKey, u64>,
    /// Rates of the last interval in which it reported.
    last: FxHashMap<FlowKey, f64>,
    /// Bytes counted from its reports since the controller started, per
    /// direction (towards targets, towards initiators).
    total: [u64; 2],
}

/// Deltas, windows and the measured traffic matrix.
#[derive(Debug)]
pub struct Rates {
    window: usize,
    sources: HashMap<String, Source>,
    samples: VecDeque<HashMap<FlowKey, f64>>,
    mean: HashMap<FlowKey, f64>,
}

/// Distance a counter moved from `old` to `new` (see the module docs).
pub fn counter_delta(old: u64, new: u64) -> u64 {
    if new >= old {
        new - old
    } else {
        let wrapped = new.wrapping_sub(old);
        if wrapped <= WRAP_WINDOW { wrapped } else { new }
    }
}

impl Rates {
    /// Mean over `window` (≥ 1) intervals.
    pub fn new(window: usize) -> Self {
        Self {
            window: window.max(1),
            sources: HashMap::new(),
            samples: VecDeque::new(),
            mean: HashMap::new(),
        }
    }

    /// Turns a report into deltas. On error nothing changes.
    pub fn ingest(&mut self, r: &Report) -> Result<Ingest, RatesError> {
        if self.is_retired(&r.gateway, &r.boot_id) {
            return Ok(Ingest::Stale);
        }
        // Everything that can refuse the report comes before any state is
        // made for its gateway, so a refused name leaves nothing behind.
        let mut cum = FxHashMap::with_capacity_and_hasher(r.flows.len(), Default::default());
        for f in &r.flows {
            let key = (f.initiator, f.target);
            if cum
                .insert(key, [f.to_target_bytes, f.to_initiator_bytes])
                .is_some()
            {
                return Err(RatesError::DuplicateFlow {
                    initiator: f.initiator,
                    target: f.target,
                });
            }
        }
        let src = self.sources.entry(r.gateway.clone()).or_default();
        if src.boot_id != r.boot_id {
            if !src.boot_id.is_empty() {
                let old = std::mem::take(&mut src.boot_id);
                src.retired.push_back(old);
                if src.retired.len() > RETIRED_BOOTS {
                    src.retired.pop_front();
                }
            }
            src.boot_id = r.boot_id.clone();
            src.seq = r.seq;
            src.uptime_ms = r.uptime_ms;
            src.cum = cum;
            return Ok(Ingest::Baseline);
        }
        if r.seq <= src.seq {
            return Ok(Ingest::Stale);
        }
        if r.uptime_ms < src.uptime_ms {
            return Err(RatesError::UptimeBackwards {
                boot_id: r.boot_id.clone(),
                previous: src.uptime_ms,
                now: r.uptime_ms,
            });
        }
        let span_ms = r.uptime_ms - src.uptime_ms;
        let limit = MAX_RATE * (span_ms.max(1) as f64 / 1000.0);
        let mut deltas = Vec::with_capacity(cum.len());
        let mut total = [0u64; 2];
        for (key, now) in &cum {
            let before = src.cum.get(key).copied().unwrap_or([0, 0]);
            let mut sum = 0u64;
            for (i, field) in ["to_target_bytes", "to_initiator_bytes"]
                .into_iter()
                .enumerate()
            {
                let delta = counter_delta(before[i], now[i]);
                if delta as f64 > limit {
                    return Err(RatesError::Absurd {
                        initiator: key.0,
                        target: key.1,
                        field,
                        delta,
                        span_ms,
                    });
                }
                sum = sum.saturating_add(delta);
                total[i] = total[i].saturating_add(delta);
            }
            if sum > 0 {
                deltas.push((*key, sum));
            }
        }
        src.seq = r.seq;
        src.uptime_ms = r.uptime_ms;
        src.cum = cum;
        src.span_ms = src.span_ms.saturating_add(span_ms);
        for (t, d) in src.total.iter_mut().zip(total) {
            *t = t.wrapping_add(d);
        }
        for (key, d) in deltas {
            let acc = src.acc.entry(key).or_default();
            *acc = acc.saturating_add(d);
        }
        Ok(Ingest::Counted)
    }

    /// A boot of `gateway` this replaced by a newer one (its late reports
    /// are stale).
    pub fn is_retired(&self, gateway: &str, boot_id: &str) -> bool {
        self.sources
            .get(gateway)
            .is_some_and(|s| s.retired.iter().any(|b| b == boot_id))
    }

    /// Forgets a gateway (gone for long).
    pub fn forget(&mut self, gateway: &str) {
        self.sources.remove(gateway);
    }

    /// Bytes counted from `gateway`'s reports since the controller started
    /// (towards targets, towards initiators); counters for `rate()`.
    pub fn bytes_total(&self, gateway: &str) -> Option<[u64; 2]> {
        self.sources.get(gateway).map(|s| s.total)
    }

    /// Gateways with state here.
    pub fn sources(&self) -> usize {
        self.sources.len()
    }

    /// Ends an interval: one sample of the matrix from the gateways for which
    /// `alive` holds, pushed into the window.
    pub fn close_interval(&mut self, alive: impl Fn(&str) -> bool) {
        let mut sample: HashMap<FlowKey, f64> = HashMap::with_capacity(self.mean.len());
        for (name, src) in &mut self.sources {
            if !alive(name) {
                src.acc.clear();
                src.last.clear();
                src.span_ms = 0;
                continue;
            }
            if src.span_ms > 0 {
                let secs = src.span_ms as f64 / 1000.0;
                src.last = src.acc.drain().map(|(k, b)| (k, b as f64 / secs)).collect();
                src.span_ms = 0;
            }
            for (k, r) in &src.last {
                *sample.entry(*k).or_default() += r;
            }
        }
        self.push(sample);
    }

    fn push(&mut self, sample: HashMap<FlowKey, f64>) {
        self.samples.push_back(sample);
        while self.samples.len() > self.window {
            self.samples.pop_front();
        }
        self.recompute();
    }

    fn recompute(&mut self) {
        self.mean.clear();
        let n = self.samples.len() as f64;
        for s in &self.samples {
            for (k, r) in s {
                *self.mean.entry(*k).or_default() += r / n;
            }
        }
    }

    /// Fills an empty window with `matrix` (a-priori seed).
    pub fn seed(&mut self, matrix: &HashMap<FlowKey, f64>) {
        if self.samples.is_empty() {
            for _ in 0..self.window {
                self.samples.push_back(matrix.clone());
            }
            self.recompute();
        }
    }

    /// The measured traffic matrix: mean rate per (host, target), bytes/s.
    pub fn matrix(&self) -> &HashMap<FlowKey, f64> {
        &self.mean
    }

    /// Samples in the window.
    pub fn samples(&self) -> usize {
        self.samples.len()
    }

    /// The matrix as (host, target, bytes/s), sorted, for persistence.
    pub fn export(&self) -> Vec<(IpAddr, IpAddr, f64)> {
        let mut v: Vec<_> = self.mean.iter().map(|(k, r)| (k.0, k.1, *r)).collect();
        v.sort_by_key(|x| (x.0, x.1));
        v
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::{EnforceCounters, Flow};

    const H: IpAddr = IpAddr::V4(std::net::Ipv4Addr::new(198, 18, 0, 10));
    const T: IpAddr = IpAddr::V4(std::net::Ipv4Addr::new(198, 18, 1, 50));

    fn report(boot: &str, seq: u64, uptime_ms: u64, tx: u64, rx: u64) -> Report {
        Report {
            gateway: "gw1".into(),
            boot_id: boot.into(),
            seq,
            uptime_ms,
            capacity: 1.0,
            applied: 0,
            owned: vec![],
            enforce: EnforceCounters::default(),
            flows: vec![Flow {
                initiator: H,
                target: T,
                to_target_bytes: tx,
                to_initiator_bytes: rx,
            }],
        }
    }

    fn rate(s: &Rates) -> f64 {
        s.matrix().get(&(H, T)).copied().unwrap_or(0.0)
    }

    #[test]
    fn deltas_over_agent_time() {
        let mut s = Rates::new(1);
        assert_eq!(
            s.ingest(&report("a", 0, 1000, 100, 0)).unwrap(),
            Ingest::Baseline
        );
        assert_eq!(
            s.ingest(&report("a", 1, 2000, 600, 500)).unwrap(),
            Ingest::Counted
        );
        assert_eq!(
            s.ingest(&report("a", 2, 3000, 1100, 1000)).unwrap(),
            Ingest::Counted
        );
        s.close_interval(|_| true);
        // 2000 bytes over 2 s.
        assert_eq!(rate(&s), 1000.0);
        // The baseline counts nothing; each direction on its own.
        assert_eq!(s.bytes_total("gw1"), Some([1000, 1000]));
        assert_eq!(s.bytes_total("gw9"), None);
    }

    #[test]
    fn duplicates_and_reordering_count_once() {
        let mut s = Rates::new(1);
        s.ingest(&report("a", 0, 0, 0, 0)).unwrap();
        s.ingest(&report("a", 2, 2000, 2000, 0)).unwrap();
        assert_eq!(
            s.ingest(&report("a", 2, 2000, 2000, 0)).unwrap(),
            Ingest::Stale
        );
        assert_eq!(
            s.ingest(&report("a", 1, 1000, 1000, 0)).unwrap(),
            Ingest::Stale
        );
        s.close_interval(|_| true);
        assert_eq!(rate(&s), 1000.0);
    }

    #[test]
    fn restart_is_a_baseline_and_keeps_the_rate() {
        let mut s = Rates::new(1);
        s.ingest(&report("a", 0, 0, 0, 0)).unwrap();
        s.ingest(&report("a", 1, 1000, 5000, 0)).unwrap();
        s.close_interval(|_| true);
        assert_eq!(rate(&s), 5000.0);
        // New boot with counters back near zero: no negative, no spike.
        assert_eq!(
            s.ingest(&report("b", 0, 10, 10, 0)).unwrap(),
            Ingest::Baseline
        );
        s.close_interval(|_| true);
        assert_eq!(
            rate(&s),
            5000.0,
            "the previous rate carries over the baseline interval"
        );
        s.ingest(&report("b", 1, 1010, 4010, 0)).unwrap();
        s.close_interval(|_| true);
        assert_eq!(rate(&s), 4000.0);
        // A late report of the old boot changes nothing.
        assert_eq!(
            s.ingest(&report("a", 7, 9000, 1 << 40, 0)).unwrap(),
            Ingest::Stale
        );
    }

    #[test]
    fn wrap_and_eviction() {
        assert_eq!(counter_delta(u64::MAX - 9, 5), 15);
        assert_eq!(counter_delta(1_000_000, 300), 300);
        assert_eq!(counter_delta(7, 7), 0);
        let mut s = Rates::new(1);
        s.ingest(&report("a", 0, 0, u64::MAX - 999, 0)).unwrap();
        s.ingest(&report("a", 1, 1000, 1000, 0)).unwrap();
        s.close_interval(|_| true);
        assert_eq!(rate(&s), 2000.0);
    }

    #[test]
    fn absurd_delta_is_refused_without_change() {
        let mut s = Rates::new(1);
        s.ingest(&report("a", 0, 0, 0, 0)).unwrap();
        let e = s.ingest(&report("a", 1, 1000, 1 << 50, 0)).unwrap_err();
        assert!(
            matches!(
                e,
                RatesError::Absurd {
                    field: "to_target_bytes",
                    ..
                }
            ),
            "{e}"
        );
        // The baseline is intact: the next sane report counts from it.
        s.ingest(&report("a", 2, 2000, 4000, 0)).unwrap();
        s.close_interval(|_| true);
        assert_eq!(rate(&s), 2000.0);
        let e = s.ingest(&report("a", 3, 1500, 4000, 0)).unwrap_err();
        assert!(matches!(e, RatesError::UptimeBackwards { .. }));
    }

    #[test]
    fn window_is_a_mean_of_the_last_w_samples() {
        let mut s = Rates::new(3);
        s.ingest(&report("a", 0, 0, 0, 0)).unwrap();
        let mut total = 0;
        for (i, r) in [300u64, 600, 900, 0].into_iter().enumerate() {
            total += r;
            s.ingest(&report("a", i as u64 + 1, (i as u64 + 1) * 1000, total, 0))
                .unwrap();
            s.close_interval(|_| true);
        }
        assert_eq!(rate(&s), 500.0); // (600 + 900 + 0) / 3
        // A dead gateway contributes nothing.
        s.close_interval(|_| false);
        assert_eq!(rate(&s), 300.0); // (900 + 0 + 0) / 3
    }

    /// Issue 11, item 8: a refused report (here, a flow listed twice) made
    /// per-gateway state before refusing, about 300 B per unique name.
    #[test]
    fn regression_11_8_a_refused_report_leaves_no_state_behind() {
        let mut s = Rates::new(2);
        for i in 0..100 {
            let mut r = report("boot", 0, 0, 1, 1);
            r.gateway = format!("gw{i}");
            r.flows.push(r.flows[0].clone());
            assert!(matches!(
                s.ingest(&r),
                Err(RatesError::DuplicateFlow { .. })
            ));
        }
        assert_eq!(s.sources(), 0);
    }
}
