//! The references of the data-plane benchmark: an XDP and a TC program that
//! only pass (the baselines), and two XDP programs that do the least a
//! counter with per-hook statistics can do (the floors), so that the
//! benchmark can show how far the counting programs are from it.
#![no_std]
#![no_main]

use aya_ebpf::{
    bindings::{TC_ACT_UNSPEC, xdp_action},
    btf_maps::PerCpuArray,
    helpers::generated::bpf_xdp_get_buff_len,
    macros::{btf_map, classifier, xdp},
    programs::{TcContext, XdpContext},
};
use sanlb_common::{FLOW_SETS, FlowSet4, HookStats, flow_set};

#[xdp]
pub fn baseline_xdp(_ctx: XdpContext) -> u32 {
    xdp_action::XDP_PASS
}

#[classifier]
pub fn baseline_tc(_ctx: TcContext) -> i32 {
    TC_ACT_UNSPEC
}

/// The floors' statistics, as sanlb's STATS.
#[btf_map]
static FLOOR_STATS: PerCpuArray<HookStats, 1> = PerCpuArray::new();

/// The floors' pairs, as sanlb's FLOWSETS4.
#[btf_map]
static FLOOR_SETS: PerCpuArray<FlowSet4, { FLOW_SETS as usize }> = PerCpuArray::new();

/// The benchmark's iSCSI port, in network byte order.
const PORT: u16 = 3260u16.to_be();

/// The first 54 bytes, read as an untagged IPv4 frame without IP options:
/// a floor checks nothing of what sanlb checks (EtherType, version, lengths,
/// fragments, protocol, TCP data offset).
#[inline(always)]
fn head(ctx: &XdpContext) -> Option<&[u8; 54]> {
    let (start, end) = (ctx.data(), ctx.data_end());
    if start + 54 > end {
        return None;
    }
    // SAFETY: 54 bytes of packet data, checked just above.
    Some(unsafe { &*(start as *const [u8; 54]) })
}

#[inline(always)]
fn is_iscsi(h: &[u8; 54]) -> bool {
    u16::from_ne_bytes([h[36], h[37]]) == PORT || u16::from_ne_bytes([h[34], h[35]]) == PORT
}

/// The floor of a frame sanlb does not count: the hook's statistics looked
/// up, the frame and its reason counted, the two ports compared.
#[xdp(frags)]
pub fn floor_skip_xdp(ctx: XdpContext) -> u32 {
    if let Some(stats) = FLOOR_STATS.get_ptr_mut(0) {
        // SAFETY: this CPU's slot; nothing else runs on this CPU meanwhile.
        let stats = unsafe { &mut *stats };
        stats.frames += 1;
        match head(&ctx) {
            Some(h) if is_iscsi(h) => stats.counted += 1,
            _ => stats.not_iscsi += 1,
        }
    }
    xdp_action::XDP_PASS
}

/// The floor of a frame of a known pair: as `floor_skip_xdp`, then the pair's
/// key from the addresses, its set (an array index), the first way compared,
/// the payload and whole-frame lengths, three counters added.
#[xdp(frags)]
pub fn floor_count_xdp(ctx: XdpContext) -> u32 {
    let Some(stats) = FLOOR_STATS.get_ptr_mut(0) else {
        return xdp_action::XDP_PASS;
    };
    // SAFETY: as above.
    let stats = unsafe { &mut *stats };
    stats.frames += 1;
    let Some(h) = head(&ctx).filter(|h| is_iscsi(h)) else {
        stats.not_iscsi += 1;
        return xdp_action::XDP_PASS;
    };
    let word = u64::from(u32::from_ne_bytes([h[26], h[27], h[28], h[29]]))
        | u64::from(u32::from_ne_bytes([h[30], h[31], h[32], h[33]])) << 32;
    if let Some(set) = FLOOR_SETS.get_ptr_mut(flow_set(word)) {
        // SAFETY: this CPU's copy of the set.
        let way = unsafe { &mut (*set).ways[0] };
        let key = core::ptr::from_mut(&mut way.key).cast::<u64>();
        // SAFETY: FlowKey4 is 8 bytes with alignment 8.
        unsafe {
            if key.read() != word {
                key.write_volatile(word);
            }
        }
        let ip_len = u64::from(u16::from_be_bytes([h[16], h[17]]));
        let payload = ip_len.saturating_sub(20 + u64::from(h[46] >> 4) * 4);
        way.counters.to_target_bytes += payload;
        way.counters.to_target_packets += 1;
        // SAFETY: `ctx` is the program's xdp_md for the whole run.
        way.counters.to_target_frame_bytes += unsafe { bpf_xdp_get_buff_len(ctx.ctx) };
        stats.counted += 1;
    }
    xdp_action::XDP_PASS
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 13] = *b"Dual MIT/GPL\0";
