//! The counting programs loaded but not attached, run on crafted frames with
//! `BPF_PROG_TEST_RUN`: what the data-plane tests, the property test and the
//! data-plane benchmark use. Needs root (CAP_BPF + CAP_NET_ADMIN), no NIC.
//!
//! The counting programs come from the product ([`sanlb::dataplane::Programs`]);
//! the empty baselines and the benchmark's floors are built from
//! `sanlb-test-ebpf` by this crate's build script and ship nowhere else.

use std::time::Duration;

use anyhow::{Context as _, Result, bail};
use aya::{
    Ebpf,
    maps::{MapData, PerCpuArray, PerCpuHashMap, PerCpuValues},
    programs::{ProgramError, SchedClassifier, TestRun, TestRunOptions, TestRunResult, Xdp},
};
use sanlb::dataplane::{Programs, Snapshot};
use sanlb_common::{
    FAMILY_IPV4, FAMILY_IPV6, FLOW_SETS, FLOWS4_MAP, FLOWS6_MAP, FLOWSETS4_MAP, FLOWSETS6_MAP,
    FlowCounters, FlowKey4, FlowKey6, FlowSet4, FlowSet6, HOOKS, HookStats, SETS_USED_MAP,
    STATS_MAP, SetsUsed, TC_INGRESS_PROG, TC_PROG, XDP_PROG,
};

/// The empty XDP and TC programs, built by `build.rs` from `sanlb-test-ebpf`.
static BASELINE_OBJECT: &[u8] =
    aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/sanlb-baseline"));
const BASELINE_XDP: &str = "baseline_xdp";
const BASELINE_TC: &str = "baseline_tc";

/// The floors of the data-plane benchmark (see `sanlb-test-ebpf`): the least
/// a program with per-hook statistics does for a frame it does not count,
/// and for a frame of a known pair.
#[derive(Clone, Copy, Debug)]
pub enum Floor {
    /// `floor_skip_xdp`: statistics, the ports compared, a skip counted.
    Skip,
    /// `floor_count_xdp`: the same, then a known pair's three counters.
    Count,
}

impl Floor {
    fn program(self) -> &'static str {
        match self {
            Floor::Skip => "floor_skip_xdp",
            Floor::Count => "floor_count_xdp",
        }
    }
}

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
    programs: Programs,
}

impl Detached {
    /// Loads the object with `ports` as iSCSI ports and a flow table of `max_flows`.
    pub fn load(ports: &[u16], max_flows: u32) -> Result<Self> {
        let programs = Programs::load(ports, max_flows).context("loading the counting programs")?;
        Ok(Self { programs })
    }

    /// Runs the XDP program `repeat` times on `frame`. A frame longer than
    /// a page less the XDP headroom becomes a multi-buffer frame (the
    /// program declares `xdp.frags`): the first buffer holds what fits, the
    /// rest goes into page fragments.
    pub fn run_xdp(&mut self, frame: &[u8], repeat: u32) -> Result<RunResult> {
        let xdp: &mut Xdp = prog(self.programs.ebpf_mut(), XDP_PROG)?;
        run_xdp_prog(xdp, frame, repeat)
    }

    /// Runs the TC egress program `repeat` times on `frame`, as a GSO packet
    /// of `gso_segs` segments when that is above 1.
    pub fn run_tc(&mut self, frame: &[u8], gso_segs: u16, repeat: u32) -> Result<RunResult> {
        self.run_classifier(TC_PROG, frame, gso_segs, repeat)
    }

    /// Runs the TC ingress program as [`Detached::run_tc`] runs the egress one
    /// (a GRO packet of `gso_segs` segments).
    pub fn run_tc_ingress(
        &mut self,
        frame: &[u8],
        gso_segs: u16,
        repeat: u32,
    ) -> Result<RunResult> {
        self.run_classifier(TC_INGRESS_PROG, frame, gso_segs, repeat)
    }

    fn run_classifier(
        &mut self,
        name: &str,
        frame: &[u8],
        gso_segs: u16,
        repeat: u32,
    ) -> Result<RunResult> {
        let tc: &mut SchedClassifier = prog(self.programs.ebpf_mut(), name)?;
        run(name, frame, Some(&skb_ctx(gso_segs)), repeat, |o| {
            tc.test_run(o)
        })
    }

    /// The maps' contents, as `sanlb counters` would show them.
    pub fn snapshot(&self) -> Result<Snapshot> {
        self.programs.snapshot().context("reading the maps")
    }

    /// Keys in the IPv4 flow table behind the flow sets (FLOWS4).
    pub fn flows4_keys(&self) -> Result<Vec<FlowKey4>> {
        self.lru_keys(FLOWS4_MAP)
    }

    /// Keys in the IPv6 flow table behind the flow sets (FLOWS6).
    pub fn flows6_keys(&self) -> Result<Vec<FlowKey6>> {
        self.lru_keys(FLOWS6_MAP)
    }

    fn lru_keys<K: aya::Pod>(&self, name: &str) -> Result<Vec<K>> {
        let m = self.programs.ebpf().map(name).context(name.to_owned())?;
        let flows: PerCpuHashMap<&MapData, K, FlowCounters> = PerCpuHashMap::try_from(m)?;
        Ok(flows.keys().filter_map(|k| k.ok()).collect())
    }

    /// Reads every set of both flow-set maps against the SETS_USED marks:
    /// (occupied ways in unmarked sets, marked sets with no occupied way),
    /// both zero when the programs mark exactly the sets they use.
    pub fn unmarked_ways(&self) -> Result<(usize, usize)> {
        let ebpf = self.programs.ebpf();
        let free4 = FlowKey4::default();
        let free6 = FlowKey6::default();
        let v4 = mark_mismatches::<FlowSet4>(ebpf, FLOWSETS4_MAP, FAMILY_IPV4, |s| {
            s.ways.iter().filter(|w| w.key != free4).count()
        })?;
        let v6 = mark_mismatches::<FlowSet6>(ebpf, FLOWSETS6_MAP, FAMILY_IPV6, |s| {
            s.ways.iter().filter(|w| w.key != free6).count()
        })?;
        Ok((v4.0 + v6.0, v4.1 + v6.1))
    }

    /// Empties the flow tables and zeroes the statistics.
    pub fn reset(&mut self) -> Result<()> {
        let ebpf = self.programs.ebpf_mut();
        clear::<FlowKey4>(ebpf, FLOWS4_MAP)?;
        clear::<FlowKey6>(ebpf, FLOWS6_MAP)?;
        let cpus = aya::util::nr_cpus().map_err(|(what, e)| anyhow::anyhow!("{what}: {e}"))?;
        zero_sets::<FlowSet4>(ebpf, FLOWSETS4_MAP, FAMILY_IPV4, cpus)?;
        zero_sets::<FlowSet6>(ebpf, FLOWSETS6_MAP, FAMILY_IPV6, cpus)?;
        let m = ebpf.map_mut(STATS_MAP).context(STATS_MAP)?;
        let mut stats: PerCpuArray<&mut MapData, HookStats> = PerCpuArray::try_from(m)?;
        for hook in 0..HOOKS {
            let zero = PerCpuValues::try_from(vec![HookStats::default(); cpus])?;
            stats.set(hook, zero, 0).context("zeroing stats")?;
        }
        Ok(())
    }
}

/// The empty programs (XDP_PASS, TC_ACT_UNSPEC) that benchmarks compare
/// against, and the floors.
pub struct Baseline {
    ebpf: Ebpf,
}

impl Baseline {
    /// Loads it.
    pub fn load() -> Result<Self> {
        if BASELINE_OBJECT.is_empty() {
            bail!("this build has no baseline object (AYA_BUILD_SKIP was set)");
        }
        let mut ebpf = Ebpf::load(BASELINE_OBJECT).context("loading the baseline object")?;
        let xdp: &mut Xdp = prog(&mut ebpf, BASELINE_XDP)?;
        xdp.load().context("loading baseline_xdp (verifier)")?;
        let tc: &mut SchedClassifier = prog(&mut ebpf, BASELINE_TC)?;
        tc.load().context("loading baseline_tc (verifier)")?;
        for floor in [Floor::Skip, Floor::Count] {
            let xdp: &mut Xdp = prog(&mut ebpf, floor.program())?;
            xdp.load()
                .with_context(|| format!("loading {} (verifier)", floor.program()))?;
        }
        Ok(Self { ebpf })
    }

    /// Runs the XDP one `repeat` times on `frame`.
    pub fn run_xdp(&mut self, frame: &[u8], repeat: u32) -> Result<RunResult> {
        let xdp: &mut Xdp = prog(&mut self.ebpf, BASELINE_XDP)?;
        run_xdp_prog(xdp, frame, repeat)
    }

    /// Runs a floor program `repeat` times on `frame`.
    pub fn run_floor(&mut self, floor: Floor, frame: &[u8], repeat: u32) -> Result<RunResult> {
        let xdp: &mut Xdp = prog(&mut self.ebpf, floor.program())?;
        run_xdp_prog(xdp, frame, repeat)
    }

    /// Runs the TC one `repeat` times on `frame` (as `gso_segs` segments).
    pub fn run_tc(&mut self, frame: &[u8], gso_segs: u16, repeat: u32) -> Result<RunResult> {
        let tc: &mut SchedClassifier = prog(&mut self.ebpf, BASELINE_TC)?;
        run(BASELINE_TC, frame, Some(&skb_ctx(gso_segs)), repeat, |o| {
            tc.test_run(o)
        })
    }
}

fn prog<'a, T>(ebpf: &'a mut Ebpf, name: &str) -> Result<&'a mut T>
where
    &'a mut T: TryFrom<&'a mut aya::programs::Program, Error = ProgramError>,
{
    let p = ebpf
        .program_mut(name)
        .with_context(|| format!("program {name} missing from the object"))?;
    p.try_into()
        .with_context(|| format!("program {name} has an unexpected type"))
}

/// Removes every entry of the flow table `name`.
fn clear<K: aya::Pod>(ebpf: &mut Ebpf, name: &str) -> Result<()> {
    let m = ebpf
        .map_mut(name)
        .with_context(|| format!("map {name} missing from the object"))?;
    let mut flows: PerCpuHashMap<&mut MapData, K, FlowCounters> = PerCpuHashMap::try_from(m)?;
    let keys: Vec<K> = flows.keys().filter_map(|k| k.ok()).collect();
    for k in keys {
        flows.remove(&k).context("removing a flow")?;
    }
    Ok(())
}

/// Zeroes the sets of a flow-set map that SETS_USED marks, on every CPU, then
/// the marks: what the programs wrote (they mark every set whose way they
/// take; [`Detached::unmarked_ways`] checks that), in a few system calls
/// rather than one per set.
fn zero_sets<S: aya::Pod + Default>(
    ebpf: &mut Ebpf,
    name: &str,
    family: u32,
    cpus: usize,
) -> Result<()> {
    let used_map = ebpf.map(SETS_USED_MAP).context(SETS_USED_MAP)?;
    let used = sanlb::dataplane::sets_used(used_map, family)?;
    let m = ebpf.map_mut(name).with_context(|| name.to_owned())?;
    let mut sets: PerCpuArray<&mut MapData, S> = PerCpuArray::try_from(m)?;
    for set in (0..FLOW_SETS).filter(|s| used.has(*s)) {
        let zero = PerCpuValues::try_from(vec![S::default(); cpus])?;
        sets.set(set, zero, 0).context("zeroing a flow set")?;
    }
    let m = ebpf.map_mut(SETS_USED_MAP).context(SETS_USED_MAP)?;
    let mut marks: PerCpuArray<&mut MapData, SetsUsed> = PerCpuArray::try_from(m)?;
    let zero = PerCpuValues::try_from(vec![SetsUsed::default(); cpus])?;
    marks
        .set(family, zero, 0)
        .context("zeroing the used-set record")?;
    Ok(())
}

/// Occupied ways (any CPU) in sets of `map` that `SETS_USED` does not mark,
/// and marked sets with no occupied way, every set read.
fn mark_mismatches<S: aya::Pod>(
    ebpf: &Ebpf,
    map: &str,
    family: u32,
    occupied: impl Fn(&S) -> usize,
) -> Result<(usize, usize)> {
    let used =
        sanlb::dataplane::sets_used(ebpf.map(SETS_USED_MAP).context(SETS_USED_MAP)?, family)?;
    let sets: PerCpuArray<&MapData, S> =
        PerCpuArray::try_from(ebpf.map(map).with_context(|| map.to_owned())?)?;
    let (mut unmarked, mut empty_marked) = (0, 0);
    for set in 0..FLOW_SETS {
        let ways: usize = sets.get(&set, 0)?.iter().map(&occupied).sum();
        if used.has(set) {
            empty_marked += usize::from(ways == 0);
        } else {
            unmarked += ways;
        }
    }
    Ok((unmarked, empty_marked))
}

/// A `struct __sk_buff` context with `gso_segs` set.
fn skb_ctx(gso_segs: u16) -> [u8; SKB_CTX_LEN] {
    let mut ctx = [0u8; SKB_CTX_LEN];
    ctx[SKB_GSO_SEGS..SKB_GSO_SEGS + 4].copy_from_slice(&u32::from(gso_segs).to_ne_bytes());
    ctx
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
    .with_context(|| format!("test run of {what} on a {}-byte frame", frame.len()))?;
    out.truncate(r.data_size_out as usize);
    Ok(RunResult {
        verdict: r.return_value as i32,
        data_out: out,
        per_run: r.duration,
    })
}
