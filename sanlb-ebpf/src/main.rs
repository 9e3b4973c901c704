//! sanlb's data plane: count iSCSI traffic per (initiator, target).
//!
//! On ingress of the gateway's host-facing NIC the agent attaches `sanlb_xdp`
//! (XDP, with multi-buffer support for jumbo frames) or, where XDP would cost
//! throughput, `sanlb_tc_ingress`; on its egress `sanlb_tc`. All only read the
//! frame and always let it through: XDP_PASS, and TC_ACT_UNSPEC, which under
//! TCX is TCX_NEXT ("pass, and let the next program run") so a counting
//! program never short-cuts another one's verdict.
#![no_std]
#![no_main]

mod parse;

use aya_ebpf::{
    bindings::{BPF_F_NO_COMMON_LRU, BPF_NOEXIST, TC_ACT_UNSPEC, xdp_action},
    btf_maps::{Array, LruPerCpuHashMap, PerCpuArray},
    helpers::generated::{bpf_skb_load_bytes, bpf_xdp_get_buff_len},
    macros::{btf_map, classifier, xdp},
    programs::{TcContext, XdpContext},
};
use core::mem::MaybeUninit;

use parse::{Frame, Parsed, Skip};
use sanlb_common::{
    AttachInfo, DEFAULT_MAX_FLOWS, FAMILY_IPV4, FAMILY_IPV6, FLOW_SETS, FLOW_WAYS, FlowCounters,
    FlowKey4, FlowKey6, FlowSet4, FlowSet6, FlowWay4, FlowWay6, HOOK_EGRESS, HOOK_INGRESS, HOOKS,
    HookStats, PORT_BITMAP_WORDS, PortBitmap, SetsUsed, flow_set, flow_set6,
};

/// Counters per IPv4 (initiator, target). LRU bounds memory; the agent sets
/// the size at load time (`--max-flows`). An 8-byte key: the kernel hashes
/// and compares a fifth of what one key for both families would take.
/// `BPF_F_NO_COMMON_LRU`: each CPU keeps its own LRU list (no shared list
/// and lock when entries are created or recycled); each holds max_flows /
/// CPUs entries.
#[btf_map]
static FLOWS4: LruPerCpuHashMap<
    FlowKey4,
    FlowCounters,
    { DEFAULT_MAX_FLOWS as usize },
    { BPF_F_NO_COMMON_LRU as usize },
> = LruPerCpuHashMap::new();

/// The IPv4 pairs each CPU saw first, FLOW_WAYS per set, each with its
/// counters: found with an array index and a compare, where FLOWS4 costs a
/// hash-table look-up (the kernel's jhash, bucket walk and memcmp, a helper
/// call). Pairs of a full set go to FLOWS4. A way is never given up, so a
/// pair's counts never move between the tables and a reader that adds both
/// sees them grow monotonically.
#[btf_map]
static FLOWSETS4: PerCpuArray<FlowSet4, { FLOW_SETS as usize }> = PerCpuArray::new();

/// The IPv6 pairs each CPU saw first, as FLOWSETS4.
#[btf_map]
static FLOWSETS6: PerCpuArray<FlowSet6, { FLOW_SETS as usize }> = PerCpuArray::new();

/// Which sets of FLOWSETS4 (entry FAMILY_IPV4) and FLOWSETS6 (FAMILY_IPV6)
/// hold a pair on this CPU, so that readers read those only: a few sets
/// instead of all 1,024 on every CPU. Written only when a way is taken.
#[btf_map]
static SETS_USED: PerCpuArray<SetsUsed, 2> = PerCpuArray::new();

/// Counters per IPv6 (initiator, target), as FLOWS4.
#[btf_map]
static FLOWS6: LruPerCpuHashMap<
    FlowKey6,
    FlowCounters,
    { DEFAULT_MAX_FLOWS as usize },
    { BPF_F_NO_COMMON_LRU as usize },
> = LruPerCpuHashMap::new();

/// Where the agent attached the ingress counter and why (written by the
/// agent; no program reads it, but `sanlb counters` and bpftool do).
#[btf_map]
static ATTACH: Array<AttachInfo, 1> = Array::new();

/// What each hook saw and why it skipped frames; index HOOK_INGRESS / HOOK_EGRESS.
#[btf_map]
static STATS: PerCpuArray<HookStats, { HOOKS as usize }> = PerCpuArray::new();

/// iSCSI ports, one bit per TCP port: a global in .rodata that the agent
/// sets when it loads the object, so a port check is one load from a fixed
/// address (no map look-up). Indexed by the port in network byte order, as
/// read from the frame (word = raw / 64, bit = raw % 64), which saves the
/// byte swaps. `ISCSI_PORTS` records the same set by port number for
/// `sanlb counters` and bpftool.
#[unsafe(no_mangle)]
static ISCSI_PORT_BITS: [u64; PORT_BITMAP_WORDS as usize] = [0; PORT_BITMAP_WORDS as usize];

/// The one iSCSI port in network byte order when only one is configured (the
/// common case), else 0: a port check is then a compare with a value whose
/// load does not wait for the frame, where the bitmap's word address does.
/// The verifier knows a read-only global's value, so it drops the branch the
/// loaded object never takes (the bitmap, or this compare).
#[unsafe(no_mangle)]
static ISCSI_PORT_ONLY: u16 = 0;

/// The record of the iSCSI ports (see `ISCSI_PORT_BITS`); no program reads it.
#[btf_map]
static ISCSI_PORTS: Array<PortBitmap, 1> = Array::new();

const EEXIST: i32 = 17;

/// Ingress, XDP. `frags`: the program takes multi-buffer frames, so driver
/// mode works at MTUs above a page (jumbo frames) on drivers with
/// multi-buffer XDP; headers are read from the first buffer, lengths from the
/// whole frame.
#[xdp(frags)]
pub fn sanlb_xdp(ctx: XdpContext) -> u32 {
    count(&Xdp(&ctx), HOOK_INGRESS, 1);
    xdp_action::XDP_PASS
}

/// Ingress, TC: where XDP would cost throughput (veth). Counts a GRO packet
/// as the segments it was made of.
#[classifier]
pub fn sanlb_tc_ingress(ctx: TcContext) -> i32 {
    count(&Tc(&ctx), HOOK_INGRESS, gso_segs(&ctx));
    TC_ACT_UNSPEC
}

/// Egress, TC. Counts a GSO packet as the segments it leaves as.
#[classifier]
pub fn sanlb_tc(ctx: TcContext) -> i32 {
    count(&Tc(&ctx), HOOK_EGRESS, gso_segs(&ctx));
    TC_ACT_UNSPEC
}

#[inline(always)]
fn gso_segs(ctx: &TcContext) -> u32 {
    // SAFETY: `skb` points at the program's __sk_buff context for the whole run.
    unsafe { (*ctx.skb.skb).gso_segs }.max(1)
}

struct Xdp<'a>(&'a XdpContext);

impl Frame for Xdp<'_> {
    /// The whole frame, every buffer of a multi-buffer one.
    #[inline(always)]
    fn len(&self) -> usize {
        // SAFETY: `ctx` is the program's xdp_md for the whole run.
        unsafe { bpf_xdp_get_buff_len(self.0.ctx) as usize }
    }

    #[inline(always)]
    fn linear_len(&self) -> usize {
        self.0.data_end() - self.0.data()
    }

    #[inline(always)]
    fn load<T: Copy>(&self, off: usize) -> Option<T> {
        let start = self.0.data();
        // A fresh, opaque read of data_end for every check: otherwise LLVM
        // drops checks it can derive from earlier length arithmetic, and the
        // verifier, which cannot follow that arithmetic, rejects the access.
        // SAFETY: `ctx` is the program's xdp_md for the whole run.
        let end = unsafe { core::ptr::read_volatile(&(*self.0.ctx).data_end) } as usize;
        if start + off + size_of::<T>() > end {
            return None;
        }
        // SAFETY: bounds checked against data_end just above.
        Some(unsafe { ((start + off) as *const T).read_unaligned() })
    }

    #[inline(always)]
    fn direct(&self) -> (usize, usize) {
        (self.0.data(), self.0.data_end())
    }
}

struct Tc<'a>(&'a TcContext);

impl Frame for Tc<'_> {
    #[inline(always)]
    fn len(&self) -> usize {
        self.0.len() as usize
    }

    #[inline(always)]
    fn linear_len(&self) -> usize {
        self.len()
    }

    #[inline(always)]
    fn load<T: Copy>(&self, off: usize) -> Option<T> {
        // Direct access to the linear area, where the headers almost always
        // are; bpf_skb_load_bytes (a helper call) for what lies beyond it.
        let start = self.0.data();
        // SAFETY: `skb` is the program's __sk_buff for the whole run; a fresh
        // read for the verifier, as in `Xdp::load`.
        let end = unsafe { core::ptr::read_volatile(&(*self.0.skb.skb).data_end) } as usize;
        if start + off + size_of::<T>() <= end {
            // SAFETY: bounds checked against data_end just above.
            return Some(unsafe { ((start + off) as *const T).read_unaligned() });
        }
        // Into an 8-aligned slot: the verifier refuses misaligned stack reads.
        let mut slot = MaybeUninit::<Aligned<T>>::uninit();
        // SAFETY: the helper writes at most size_of::<T>() bytes into the slot
        // and, returning 0, has written all of them.
        unsafe {
            let ret = bpf_skb_load_bytes(
                self.0.skb.skb.cast(),
                off as u32,
                slot.as_mut_ptr().cast(),
                size_of::<T>() as u32,
            );
            (ret == 0).then(|| slot.assume_init().0)
        }
    }

    #[inline(always)]
    fn direct(&self) -> (usize, usize) {
        (self.0.data(), self.0.data_end())
    }
}

#[repr(C, align(8))]
struct Aligned<T>(T);

/// Whether `raw`, a TCP port in network byte order, is an iSCSI port.
#[inline(always)]
fn is_iscsi_port(raw: u16) -> bool {
    // SAFETY: a plain read of a global; volatile as below.
    let only = unsafe { core::ptr::read_volatile(&ISCSI_PORT_ONLY) };
    if only != 0 {
        return raw == only;
    }
    // SAFETY: raw / 64 < 1024 words; volatile so that the compiler does not
    // fold the placeholder value the loader replaces.
    let word =
        unsafe { core::ptr::read_volatile(ISCSI_PORT_BITS.as_ptr().add(usize::from(raw >> 6))) };
    (word >> (raw & 63)) & 1 != 0
}

#[inline(always)]
fn count<F: Frame>(f: &F, hook: u32, segs: u32) {
    let Some(stats) = STATS.get_ptr_mut(hook) else {
        return;
    };
    // SAFETY: per-CPU slot of this CPU. XDP and TC ingress run in softirq (or
    // with bottom halves disabled) and TC egress with bottom halves disabled,
    // so on a non-RT kernel none interrupts another on one CPU and a plain
    // read-modify-write is exact.
    let stats = unsafe { &mut *stats };
    stats.frames += 1;
    // The common frames take a short path; anything else, the whole walk.
    let parsed = match f
        .head::<{ parse::FAST_LEN }>()
        .and_then(|h| parse::fast(h, f.linear_len(), is_iscsi_port))
        .or_else(|| {
            f.head::<{ parse::FAST6_LEN }>()
                .and_then(|h| parse::fast6(h, f.linear_len(), is_iscsi_port))
        }) {
        Some(parsed) => parsed,
        None => parse::parse(f, is_iscsi_port),
    };
    match parsed {
        Ok(p) => {
            let added = if p.ipv6 {
                add6(f, &p, segs, stats)
            } else {
                add4(f, &p, segs, stats)
            };
            if added {
                stats.counted += 1;
            }
        }
        Err(reason) => {
            let field = match reason {
                Skip::NotIp => &mut stats.not_ip,
                Skip::NotTcp => &mut stats.not_tcp,
                Skip::NotIscsi => &mut stats.not_iscsi,
                Skip::Fragment => &mut stats.fragment,
                Skip::Truncated => &mut stats.truncated,
                Skip::Malformed => &mut stats.malformed,
                Skip::ExtHeaderLimit => &mut stats.ext_header_limit,
            };
            *field += 1;
        }
    }
}

#[inline(always)]
fn ends(p: &Parsed) -> ([u64; 2], [u64; 2]) {
    if p.to_target {
        (p.src, p.dst)
    } else {
        (p.dst, p.src)
    }
}

/// The words of a parsed frame's key, initiator first: IPv4 one word (the
/// initiator's 4 bytes in memory order, then the target's: little endian,
/// low half first), IPv6 four.
#[inline(always)]
fn key_words(p: &Parsed) -> [u64; 4] {
    let (initiator, target) = ends(p);
    if p.ipv6 {
        [initiator[0], initiator[1], target[0], target[1]]
    } else {
        [initiator[0] | target[0] << 32, 0, 0, 0]
    }
}

/// The FLOWS4 key of a key word.
#[inline(always)]
fn key4(word: u64) -> FlowKey4 {
    let mut key = MaybeUninit::<FlowKey4>::uninit();
    // SAFETY: FlowKey4 is 8 bytes with alignment 8.
    unsafe {
        key.as_mut_ptr().cast::<u64>().write_volatile(word);
        key.assume_init()
    }
}

/// The FLOWS6 key of four key words.
///
/// Written as four volatile word stores on purpose: plain stores get merged by
/// LLVM into memset/memcpy, which this target lowers to out-of-line byte loops.
#[inline(always)]
fn key6(words: &[u64; 4]) -> FlowKey6 {
    let mut key = MaybeUninit::<FlowKey6>::uninit();
    let w = key.as_mut_ptr().cast::<u64>();
    // SAFETY: FlowKey6 is 32 bytes with alignment 8: four u64 words.
    unsafe {
        for (i, word) in words.iter().enumerate() {
            w.add(i).write_volatile(*word);
        }
        key.assume_init()
    }
}

/// Zeroes a new flow's value in place, word by word for the same reason (and
/// in place: returning it by value gets the copy turned into a memset).
#[inline(always)]
fn zero_counters(v: &mut MaybeUninit<FlowCounters>) -> &mut FlowCounters {
    let w = v.as_mut_ptr().cast::<u64>();
    // SAFETY: FlowCounters is a repr(C) struct of u64 fields only, so the
    // zeroed words initialise it.
    unsafe {
        for i in 0..size_of::<FlowCounters>() / 8 {
            w.add(i).write_volatile(0);
        }
        v.assume_init_mut()
    }
}

/// A way of a flow set whose key is `N` 64-bit words.
trait Way<const N: usize> {
    fn key(&mut self) -> *mut u64;
    fn counters(&mut self) -> &mut FlowCounters;
}

impl Way<1> for FlowWay4 {
    #[inline(always)]
    fn key(&mut self) -> *mut u64 {
        // FlowKey4: 8 bytes, alignment 8.
        core::ptr::from_mut(&mut self.key).cast()
    }
    #[inline(always)]
    fn counters(&mut self) -> &mut FlowCounters {
        &mut self.counters
    }
}

impl Way<4> for FlowWay6 {
    #[inline(always)]
    fn key(&mut self) -> *mut u64 {
        // FlowKey6: 32 bytes, alignment 8.
        core::ptr::from_mut(&mut self.key).cast()
    }
    #[inline(always)]
    fn counters(&mut self) -> &mut FlowCounters {
        &mut self.counters
    }
}

/// Counts the frame in the way of `ways` that holds `key`, else in a free
/// one (taking it, and marking set `set` of `family` in SETS_USED). False
/// when the set is full. `key` is not all zeros (a free way's key).
#[inline(always)]
fn add_to_set<const N: usize, W: Way<N>, F: Frame>(
    ways: &mut [W; FLOW_WAYS],
    (family, set): (u32, u32),
    key: &[u64; N],
    f: &F,
    p: &Parsed,
    segs: u32,
    stats: &mut HookStats,
) -> bool {
    for way in ways.iter_mut() {
        let k = way.key();
        // Word by word: comparing or copying arrays becomes calls to
        // memcmp/memcpy, which this target lowers to out-of-line byte loops.
        let (mut same, mut free) = (true, true);
        for (i, word) in key.iter().enumerate() {
            // SAFETY: `k` points at the way's N-word key.
            let w = unsafe { k.add(i).read() };
            same &= w == *word;
            free &= w == 0;
        }
        if same {
            apply(f, p, segs, way.counters());
            return true;
        }
        if free {
            for (i, word) in key.iter().enumerate() {
                // SAFETY: as above.
                unsafe { k.add(i).write_volatile(*word) };
            }
            // A free way has never been used, so its counters are zero.
            apply(f, p, segs, way.counters());
            stats.new_flows += 1;
            mark_used(family, set);
            return true;
        }
    }
    false
}

/// Marks set `set` of `family` in this CPU's SETS_USED record.
#[inline(always)]
fn mark_used(family: u32, set: u32) {
    if let Some(used) = SETS_USED.get_ptr_mut(family)
        // SAFETY: this CPU's record; nothing else runs on this CPU meanwhile
        // (see `count`).
        && let Some(word) = unsafe { (*used).words.get_mut((set / 64) as usize) }
    {
        *word |= 1 << (set % 64);
    }
}

/// Adds an IPv4 frame to its pair: in this CPU's FLOWSETS4 set if the pair
/// is there or a way is free, else in FLOWS4 (whose key is only built then).
#[inline(always)]
fn add4<F: Frame>(f: &F, p: &Parsed, segs: u32, stats: &mut HookStats) -> bool {
    let word = key_words(p)[0];
    let index = flow_set(word);
    // The all-zero key (0.0.0.0 to 0.0.0.0) would look like a free way.
    if word != 0
        && let Some(set) = FLOWSETS4.get_ptr_mut(index)
        // SAFETY: this CPU's copy of the set; no other program runs on this
        // CPU meanwhile (see `count`).
        && add_to_set(
            unsafe { &mut (*set).ways },
            (FAMILY_IPV4, index),
            &[word],
            f,
            p,
            segs,
            stats,
        )
    {
        return true;
    }
    add(&FLOWS4, f, &key4(word), p, segs, stats)
}

/// Adds an IPv6 frame to its pair, as `add4`.
#[inline(always)]
fn add6<F: Frame>(f: &F, p: &Parsed, segs: u32, stats: &mut HookStats) -> bool {
    let words = key_words(p);
    let index = flow_set6(words);
    if words.iter().fold(0, |a, w| a | w) != 0
        && let Some(set) = FLOWSETS6.get_ptr_mut(index)
        // SAFETY: as in `add4`.
        && add_to_set(
            unsafe { &mut (*set).ways },
            (FAMILY_IPV6, index),
            &words,
            f,
            p,
            segs,
            stats,
        )
    {
        return true;
    }
    add(&FLOWS6, f, &key6(&words), p, segs, stats)
}

/// Adds the frame to its flow, creating the entry on first sight. Returns
/// false when the entry could not be created.
#[inline(always)]
fn add<K, const N: usize, const FLAGS: usize, F: Frame>(
    flows: &LruPerCpuHashMap<K, FlowCounters, N, FLAGS>,
    f: &F,
    key: &K,
    p: &Parsed,
    segs: u32,
    stats: &mut HookStats,
) -> bool {
    if let Some(v) = flows.get_ptr_mut(key) {
        // SAFETY: this CPU's slot of a per-CPU value.
        apply(f, p, segs, unsafe { &mut *v });
        return true;
    }
    let mut slot = MaybeUninit::uninit();
    let v = zero_counters(&mut slot);
    apply(f, p, segs, v);
    match flows.insert(key, &*v, u64::from(BPF_NOEXIST)) {
        Ok(()) => {
            stats.new_flows += 1;
            true
        }
        // Another CPU created it between our lookup and insert.
        Err(e) if e == -EEXIST => match flows.get_ptr_mut(key) {
            Some(v) => {
                // SAFETY: as above.
                apply(f, p, segs, unsafe { &mut *v });
                true
            }
            None => {
                stats.insert_failed += 1;
                false
            }
        },
        Err(_) => {
            stats.insert_failed += 1;
            false
        }
    }
}

#[inline(always)]
fn apply<F: Frame>(f: &F, p: &Parsed, segs: u32, v: &mut FlowCounters) {
    let segs = u64::from(segs);
    let payload = u64::from(p.payload_len);
    // A GSO packet leaves as `segs` frames, each with its own copy of the headers.
    let frame = f.len() as u64 + (segs - 1) * u64::from(p.payload_off);
    if p.to_target {
        v.to_target_bytes += payload;
        v.to_target_packets += segs;
        v.to_target_frame_bytes += frame;
        if let Some(cmd) = parse::scsi_command(f, p) {
            let edtl = u64::from(cmd.edtl);
            if cmd.read {
                v.scsi_read_cmds += 1;
                v.read_requested_bytes += edtl;
            }
            if cmd.write {
                v.scsi_write_cmds += 1;
                v.write_requested_bytes += edtl;
            }
            if !cmd.read && !cmd.write {
                v.scsi_other_cmds += 1;
            }
        }
    } else {
        v.to_initiator_bytes += payload;
        v.to_initiator_packets += segs;
        v.to_initiator_frame_bytes += frame;
    }
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 13] = *b"Dual MIT/GPL\0";
