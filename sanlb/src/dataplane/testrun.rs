//! The counting programs loaded but not attached, run on crafted frames with
//! `BPF_PROG_TEST_RUN`: what the unit tests, the property test and
//! `cargo xtask bench` use. Needs root (CAP_BPF + CAP_NET_ADMIN), no NIC.

use std::time::Duration;

use aya::{
    Ebpf, EbpfLoader,
    maps::{MapData, PerCpuArray, PerCpuHashMap, PerCpuValues},
    programs::{ProgramError, SchedClassifier, TestRun, TestRunOptions, TestRunResult, Xdp},
};
use sanlb_common::{
    FLOWS_MAP, FlowCounters, FlowKey, HOOKS, HookStats, STATS_MAP, TC_PROG, XDP_PROG,
};

use super::{
    BASELINE_OBJECT, DataplaneError, EBPF_OBJECT, Result, Snapshot, missing_map, prog,
    read_snapshot, write_ports,
};
use sanlb_common::PORTS_MAP;

/// Size of `struct __sk_buff` (uapi/linux/bpf.h) and the offset of its
/// `gso_segs`, the one context field the TC program reads.
const SKB_CTX_LEN: usize = 192;
const SKB_GSO_SEGS: usize = 164;

/// What one test run returned.
#[derive(Debug, Clone)]
pub struct RunResult {
    /// The program's return value (XDP action or TC verdict).
    pub verdict: i32,
    /// The frame after the program ran.
    pub data_out: Vec<u8>,
    /// Kernel-measured time per run (the average over `repeat`).
    pub per_run: Duration,
}

/// The programs of the sanlb object, loaded and configured, not attached.
pub struct Detached {
    ebpf: Ebpf,
}

impl Detached {
    /// Loads the object with `ports` as iSCSI ports and a flow table of `max_flows`.
    pub fn load(ports: &[u16], max_flows: u32) -> Result<Self> {
        if EBPF_OBJECT.is_empty() {
            return Err(DataplaneError::NoObject);
        }
        let mut ebpf = EbpfLoader::new()
            .map_max_entries(FLOWS_MAP, max_flows)
            .load(EBPF_OBJECT)
            .map_err(DataplaneError::Load)?;
        write_ports(&mut ebpf, ports)?;
        let verifier = |name: &str| {
            let what = format!("loading {name} (verifier)");
            move |source| DataplaneError::Program { what, source }
        };
        let xdp: &mut Xdp = prog(&mut ebpf, XDP_PROG)?;
        xdp.load().map_err(verifier(XDP_PROG))?;
        let tc: &mut SchedClassifier = prog(&mut ebpf, TC_PROG)?;
        tc.load().map_err(verifier(TC_PROG))?;
        Ok(Self { ebpf })
    }

    /// Runs the XDP program `repeat` times on `frame`.
    pub fn run_xdp(&mut self, frame: &[u8], repeat: u32) -> Result<RunResult> {
        let xdp: &mut Xdp = prog(&mut self.ebpf, XDP_PROG)?;
        run_xdp_prog(xdp, frame, repeat)
    }

    /// Runs the TC program `repeat` times on `frame`, as a GSO packet of
    /// `gso_segs` segments when that is above 1.
    pub fn run_tc(&mut self, frame: &[u8], gso_segs: u16, repeat: u32) -> Result<RunResult> {
        let tc: &mut SchedClassifier = prog(&mut self.ebpf, TC_PROG)?;
        let mut ctx = [0u8; SKB_CTX_LEN];
        ctx[SKB_GSO_SEGS..SKB_GSO_SEGS + 4].copy_from_slice(&u32::from(gso_segs).to_ne_bytes());
        run(TC_PROG, frame, Some(&ctx), repeat, |o| tc.test_run(o))
    }

    /// The maps' contents, as `sanlb counters` would show them.
    pub fn snapshot(&self) -> Result<Snapshot> {
        let map = |n| self.ebpf.map(n).ok_or_else(|| missing_map(n));
        read_snapshot(map(FLOWS_MAP)?, map(STATS_MAP)?, map(PORTS_MAP)?)
    }

    /// Per-CPU values of one flow, unsummed (`None` if absent).
    pub fn flow_per_cpu(&self, key: &FlowKey) -> Result<Option<Vec<FlowCounters>>> {
        let m = self
            .ebpf
            .map(FLOWS_MAP)
            .ok_or_else(|| missing_map(FLOWS_MAP))?;
        let flows: PerCpuHashMap<&MapData, FlowKey, FlowCounters> =
            PerCpuHashMap::try_from(m).map_err(map_err("opening the flow map"))?;
        match flows.get(key, 0) {
            Ok(v) => Ok(Some(v.iter().copied().collect())),
            Err(aya::maps::MapError::KeyNotFound) => Ok(None),
            Err(e) => Err(map_err("reading a flow")(e)),
        }
    }

    /// Empties the flow table and zeroes the statistics.
    pub fn reset(&mut self) -> Result<()> {
        let m = self
            .ebpf
            .map_mut(FLOWS_MAP)
            .ok_or_else(|| missing_map(FLOWS_MAP))?;
        let mut flows: PerCpuHashMap<&mut MapData, FlowKey, FlowCounters> =
            PerCpuHashMap::try_from(m).map_err(map_err("opening the flow map"))?;
        let keys: Vec<FlowKey> = flows.keys().filter_map(|k| k.ok()).collect();
        for k in keys {
            flows.remove(&k).map_err(map_err("removing a flow"))?;
        }
        let m = self
            .ebpf
            .map_mut(STATS_MAP)
            .ok_or_else(|| missing_map(STATS_MAP))?;
        let mut stats: PerCpuArray<&mut MapData, HookStats> =
            PerCpuArray::try_from(m).map_err(map_err("opening the stats map"))?;
        let cpus = aya::util::nr_cpus().map_err(|(what, source)| DataplaneError::Io {
            what: "counting CPUs in",
            path: what.into(),
            source,
        })?;
        for hook in 0..HOOKS {
            let zero =
                PerCpuValues::try_from(vec![HookStats::default(); cpus]).map_err(|source| {
                    DataplaneError::Io {
                        what: "building per-CPU zeros for",
                        path: STATS_MAP.into(),
                        source,
                    }
                })?;
            stats.set(hook, zero, 0).map_err(map_err("zeroing stats"))?;
        }
        Ok(())
    }
}

/// The empty XDP_PASS program that benchmarks compare against.
pub struct Baseline {
    ebpf: Ebpf,
}

impl Baseline {
    /// Loads it.
    pub fn load() -> Result<Self> {
        if BASELINE_OBJECT.is_empty() {
            return Err(DataplaneError::NoObject);
        }
        let mut ebpf = Ebpf::load(BASELINE_OBJECT).map_err(DataplaneError::Load)?;
        let xdp: &mut Xdp = prog(&mut ebpf, "baseline_xdp")?;
        xdp.load().map_err(|source| DataplaneError::Program {
            what: "loading baseline_xdp".into(),
            source,
        })?;
        Ok(Self { ebpf })
    }

    /// Runs it `repeat` times on `frame`.
    pub fn run_xdp(&mut self, frame: &[u8], repeat: u32) -> Result<RunResult> {
        let xdp: &mut Xdp = prog(&mut self.ebpf, "baseline_xdp")?;
        run_xdp_prog(xdp, frame, repeat)
    }
}

fn run_xdp_prog(xdp: &mut Xdp, frame: &[u8], repeat: u32) -> Result<RunResult> {
    run("an XDP program", frame, None, repeat, |o| xdp.test_run(o))
}

/// One BPF_PROG_TEST_RUN of `frame` (and `ctx`) through `test_run`.
fn run(
    what: &str,
    frame: &[u8],
    ctx: Option<&[u8]>,
    repeat: u32,
    test_run: impl FnOnce(TestRunOptions<'_>) -> Result<TestRunResult, ProgramError>,
) -> Result<RunResult> {
    let mut out = vec![0u8; frame.len() + 256];
    let r = test_run(TestRunOptions {
        data_in: Some(frame),
        data_out: Some(&mut out),
        ctx_in: ctx,
        repeat,
        ..Default::default()
    })
    .map_err(|source| DataplaneError::Program {
        what: format!("test run of {what} on a {}-byte frame", frame.len()),
        source,
    })?;
    out.truncate(r.data_size_out as usize);
    Ok(RunResult {
        verdict: r.return_value as i32,
        data_out: out,
        per_run: r.duration,
    })
}

fn map_err(what: &'static str) -> impl Fn(aya::maps::MapError) -> DataplaneError {
    move |source| DataplaneError::Map {
        what: what.into(),
        source,
    }
}
