//! Types shared by the sanlb eBPF programs and user space.
//!
//! Everything here is `#[repr(C)]` plain old data with explicit padding so that
//! the kernel, `bpftool` (through BTF) and the agent agree on one layout. The
//! `user` feature adds the `aya::Pod` impls the agent needs to read the maps.
#![no_std]
#![deny(missing_docs)]

pub mod duration;

/// Name of the IPv4 per-(initiator, target) counter map in the eBPF object.
pub const FLOWS4_MAP: &str = "FLOWS4";
/// Name of the IPv6 per-(initiator, target) counter map in the eBPF object.
pub const FLOWS6_MAP: &str = "FLOWS6";
/// Name of the per-CPU set-associative table of IPv4 pairs, [`FlowSet4`]
/// values, looked up before [`FLOWS4_MAP`].
pub const FLOWSETS4_MAP: &str = "FLOWSETS4";
/// Name of the per-CPU set-associative table of IPv6 pairs, [`FlowSet6`]
/// values, looked up before [`FLOWS6_MAP`].
pub const FLOWSETS6_MAP: &str = "FLOWSETS6";
/// Name of the per-CPU record of which flow sets hold a pair: [`SetsUsed`]
/// values, entry [`FAMILY_IPV4`] for [`FLOWSETS4_MAP`], [`FAMILY_IPV6`] for
/// [`FLOWSETS6_MAP`]. Readers read only the sets it marks.
pub const SETS_USED_MAP: &str = "SETS_USED";
/// Name of the per-hook statistics map (skip reasons, new flows, failures).
pub const STATS_MAP: &str = "STATS";
/// Name of the map recording the iSCSI ports (one [`PortBitmap`] written by
/// the agent for `sanlb counters` and bpftool; the programs read
/// [`PORT_BITS_GLOBAL`]).
pub const PORTS_MAP: &str = "ISCSI_PORTS";
/// Name of the global (in .rodata, set when the object is loaded) holding the
/// iSCSI port bitmap the programs check: [`PORT_BITMAP_WORDS`] `u64` words.
pub const PORT_BITS_GLOBAL: &str = "ISCSI_PORT_BITS";
/// Name of the global (in .rodata) holding the one iSCSI port in network
/// byte order when only one is configured, else 0 (then the programs check
/// [`PORT_BITS_GLOBAL`]).
pub const PORT_ONLY_GLOBAL: &str = "ISCSI_PORT_ONLY";
/// Name of the map recording where the agent attached the ingress counter
/// (written by the agent, read by `sanlb counters` and bpftool).
pub const ATTACH_MAP: &str = "ATTACH";
/// Name of the XDP (ingress) program.
pub const XDP_PROG: &str = "sanlb_xdp";
/// Name of the TC egress program.
pub const TC_PROG: &str = "sanlb_tc";
/// Name of the TC ingress program (instead of XDP where XDP costs throughput).
pub const TC_INGRESS_PROG: &str = "sanlb_tc_ingress";

/// The IANA port for iSCSI, used when the operator gives none.
pub const DEFAULT_ISCSI_PORT: u16 = 3260;
/// Default number of (initiator, target) entries of [`FLOWS4_MAP`] and of
/// [`FLOWS6_MAP`] each.
pub const DEFAULT_MAX_FLOWS: u32 = 65_536;
/// Words of the port bitmap: one bit per TCP port.
pub const PORT_BITMAP_WORDS: u32 = 1024;
/// Bounded walk of IPv6 extension headers: a chain longer than this is not counted.
pub const MAX_IPV6_EXT_HEADERS: usize = 6;

/// Index of the ingress (XDP, or TC ingress) entry of [`STATS_MAP`].
pub const HOOK_INGRESS: u32 = 0;
/// Index of the egress (TC) entry of [`STATS_MAP`].
pub const HOOK_EGRESS: u32 = 1;
/// Number of entries of [`STATS_MAP`].
pub const HOOKS: u32 = 2;

/// Key of [`FLOWS4_MAP`]: one IPv4 (initiator, target) pair.
///
/// The initiator is the side whose TCP port is not an iSCSI port. Eight bytes
/// (aligned to 8, so the programs write it as one 64-bit word): the kernel
/// hashes and compares a fifth of the bytes of a key that held IPv6 too.
#[repr(C, align(8))]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct FlowKey4 {
    /// Initiator (host) address, network byte order.
    pub initiator: [u8; 4],
    /// Target (storage entity) address, network byte order.
    pub target: [u8; 4],
}

/// Key of [`FLOWS6_MAP`]: one IPv6 (initiator, target) pair, as [`FlowKey4`].
#[repr(C, align(8))]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct FlowKey6 {
    /// Initiator (host) address, network byte order.
    pub initiator: [u8; 16],
    /// Target (storage entity) address, network byte order.
    pub target: [u8; 16],
}

/// Value of [`FLOWS4_MAP`] and [`FLOWS6_MAP`], one per CPU; user space sums the CPUs.
///
/// "to_target" is initiator→target, "to_initiator" is target→initiator. Payload
/// bytes are TCP payload, which is the iSCSI byte stream. Frame bytes are the
/// layer-2 frames as the hook sees them (no FCS); a TSO/GSO or GRO packet counts
/// as the segments it is made of, a multi-buffer XDP frame as one frame.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[cfg_attr(feature = "user", derive(serde::Serialize, serde::Deserialize))]
pub struct FlowCounters {
    /// TCP payload bytes from initiator to target.
    pub to_target_bytes: u64,
    /// TCP payload bytes from target to initiator.
    pub to_initiator_bytes: u64,
    /// Packets from initiator to target.
    pub to_target_packets: u64,
    /// Packets from target to initiator.
    pub to_initiator_packets: u64,
    /// Layer-2 frame bytes from initiator to target.
    pub to_target_frame_bytes: u64,
    /// Layer-2 frame bytes from target to initiator.
    pub to_initiator_frame_bytes: u64,
    /// SCSI Command PDUs with the R (read) flag, seen at the start of a segment.
    pub scsi_read_cmds: u64,
    /// SCSI Command PDUs with the W (write) flag, seen at the start of a segment.
    pub scsi_write_cmds: u64,
    /// SCSI Command PDUs with neither flag (TEST UNIT READY, INQUIRY, ...).
    pub scsi_other_cmds: u64,
    /// Sum of Expected Data Transfer Length of read commands.
    pub read_requested_bytes: u64,
    /// Sum of Expected Data Transfer Length of write commands.
    pub write_requested_bytes: u64,
}

impl FlowCounters {
    /// Payload bytes in both directions.
    pub fn total_bytes(&self) -> u64 {
        self.to_target_bytes.saturating_add(self.to_initiator_bytes)
    }

    /// Adds `other` field by field (wrapping, as the kernel counters do).
    pub fn accumulate(&mut self, other: &Self) {
        self.to_target_bytes = self.to_target_bytes.wrapping_add(other.to_target_bytes);
        self.to_initiator_bytes = self
            .to_initiator_bytes
            .wrapping_add(other.to_initiator_bytes);
        self.to_target_packets = self.to_target_packets.wrapping_add(other.to_target_packets);
        self.to_initiator_packets = self
            .to_initiator_packets
            .wrapping_add(other.to_initiator_packets);
        self.to_target_frame_bytes = self
            .to_target_frame_bytes
            .wrapping_add(other.to_target_frame_bytes);
        self.to_initiator_frame_bytes = self
            .to_initiator_frame_bytes
            .wrapping_add(other.to_initiator_frame_bytes);
        self.scsi_read_cmds = self.scsi_read_cmds.wrapping_add(other.scsi_read_cmds);
        self.scsi_write_cmds = self.scsi_write_cmds.wrapping_add(other.scsi_write_cmds);
        self.scsi_other_cmds = self.scsi_other_cmds.wrapping_add(other.scsi_other_cmds);
        self.read_requested_bytes = self
            .read_requested_bytes
            .wrapping_add(other.read_requested_bytes);
        self.write_requested_bytes = self
            .write_requested_bytes
            .wrapping_add(other.write_requested_bytes);
    }
}

/// Sets of [`FLOWSETS4_MAP`] (a power of two).
pub const FLOW_SETS: u32 = 1024;
/// `log2(FLOW_SETS)`.
pub const FLOW_SET_BITS: u32 = FLOW_SETS.trailing_zeros();
/// Pairs one set holds.
pub const FLOW_WAYS: usize = 4;

/// One way of a [`FlowSet4`]: a pair and its counters on one CPU. An all-zero
/// key is a free way.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FlowWay4 {
    /// The pair.
    pub key: FlowKey4,
    /// Its counters on this CPU.
    pub counters: FlowCounters,
}

/// Value of [`FLOWSETS4_MAP`], one per set and CPU: the IPv4 pairs this CPU
/// saw first whose key hashes to the set, [`FLOW_WAYS`] of them; later pairs
/// of a full set go to [`FLOWS4_MAP`]. A way, once taken, keeps its pair.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FlowSet4 {
    /// The ways.
    pub ways: [FlowWay4; FLOW_WAYS],
}

/// One way of a [`FlowSet6`], as [`FlowWay4`].
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FlowWay6 {
    /// The pair.
    pub key: FlowKey6,
    /// Its counters on this CPU.
    pub counters: FlowCounters,
}

/// Value of [`FLOWSETS6_MAP`], as [`FlowSet4`] for IPv6 pairs.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FlowSet6 {
    /// The ways.
    pub ways: [FlowWay6; FLOW_WAYS],
}

/// Value of [`SETS_USED_MAP`], one per family and CPU: bit `s % 64` of word
/// `s / 64` is set once a way of set `s` holds a pair on this CPU. Set after
/// the way's key, never cleared while the maps live (as a way is never given
/// up), so a reader that reads this first and then the sets it marks misses
/// at most the pairs taken meanwhile, which the next read finds.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SetsUsed {
    /// The bits, set by set.
    pub words: [u64; (FLOW_SETS / 64) as usize],
}

impl SetsUsed {
    /// Whether set `set` is marked.
    pub fn has(&self, set: u32) -> bool {
        self.words
            .get((set / 64) as usize)
            .is_some_and(|w| w >> (set % 64) & 1 == 1)
    }

    /// Adds the marks of `other` (the union of two CPUs' records).
    pub fn union(&mut self, other: &Self) {
        for (w, o) in self.words.iter_mut().zip(other.words.iter()) {
            *w |= *o;
        }
    }
}

/// [`SETS_USED_MAP`] entry of the IPv4 sets.
pub const FAMILY_IPV4: u32 = 0;
/// [`SETS_USED_MAP`] entry of the IPv6 sets.
pub const FAMILY_IPV6: u32 = 1;

/// The set of a [`FLOWSETS4_MAP`] key: the key as one little-endian 64-bit
/// word (initiator in the low half), Fibonacci-hashed to [`FLOW_SET_BITS`].
#[inline(always)]
pub fn flow_set(key: u64) -> u32 {
    (key.wrapping_mul(0x9e37_79b9_7f4a_7c15) >> (64 - FLOW_SET_BITS)) as u32
}

/// The set of a [`FLOWSETS6_MAP`] key, given as four little-endian 64-bit
/// words (initiator, then target): the words folded into one (each
/// address's two halves xor-ed, the target's turned by 32 bits so that a
/// pair and its reverse differ), then as [`flow_set`].
#[inline(always)]
pub fn flow_set6(key: [u64; 4]) -> u32 {
    flow_set(key[0] ^ key[1] ^ (key[2] ^ key[3]).rotate_left(32))
}

/// Value of [`STATS_MAP`], one per hook and CPU: what each program saw and why
/// it did not count a frame. Every frame is passed whatever the reason.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[cfg_attr(feature = "user", derive(serde::Serialize, serde::Deserialize))]
pub struct HookStats {
    /// Frames the program ran on.
    pub frames: u64,
    /// Frames counted into a flow set ([`FLOWSETS4_MAP`], [`FLOWSETS6_MAP`])
    /// or a flow table ([`FLOWS4_MAP`], [`FLOWS6_MAP`]).
    pub counted: u64,
    /// Not IPv4/IPv6 (ARP, LLDP, ...), also behind VLAN tags.
    pub not_ip: u64,
    /// IP but not TCP (UDP, ICMP, ESP, ...).
    pub not_tcp: u64,
    /// TCP on no configured iSCSI port.
    pub not_iscsi: u64,
    /// IPv4 fragments and IPv6 packets with a (non-atomic) Fragment header.
    pub fragment: u64,
    /// A header or the IP payload extends past the end of the frame.
    pub truncated: u64,
    /// An impossible header field (IHL < 5, TCP data offset < 5, bad lengths).
    pub malformed: u64,
    /// More IPv6 extension headers than the bounded walk follows.
    pub ext_header_limit: u64,
    /// (initiator, target) entries created by this program.
    pub new_flows: u64,
    /// Entries that could not be created (the frame is then not counted).
    pub insert_failed: u64,
}

impl HookStats {
    /// Adds `other` field by field.
    pub fn accumulate(&mut self, other: &Self) {
        self.frames = self.frames.wrapping_add(other.frames);
        self.counted = self.counted.wrapping_add(other.counted);
        self.not_ip = self.not_ip.wrapping_add(other.not_ip);
        self.not_tcp = self.not_tcp.wrapping_add(other.not_tcp);
        self.not_iscsi = self.not_iscsi.wrapping_add(other.not_iscsi);
        self.fragment = self.fragment.wrapping_add(other.fragment);
        self.truncated = self.truncated.wrapping_add(other.truncated);
        self.malformed = self.malformed.wrapping_add(other.malformed);
        self.ext_header_limit = self.ext_header_limit.wrapping_add(other.ext_header_limit);
        self.new_flows = self.new_flows.wrapping_add(other.new_flows);
        self.insert_failed = self.insert_failed.wrapping_add(other.insert_failed);
    }
}

/// Value of [`ATTACH_MAP`] (one entry): which hook counts ingress traffic and
/// why the agent chose it. Plain `u32` codes so that bpftool prints them.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct AttachInfo {
    /// One of the `INGRESS_*` codes (0: not recorded).
    pub ingress: u32,
    /// One of the `REASON_*` codes (0: not recorded).
    pub reason: u32,
}

/// Value of [`PORTS_MAP`] (one entry): port `p` is bit `p % 64` of word
/// `p / 64`. One value, so a reader takes it in one system call.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PortBitmap {
    /// The bits, port by port.
    pub words: [u64; PORT_BITMAP_WORDS as usize],
}

impl Default for PortBitmap {
    fn default() -> Self {
        Self {
            words: [0; PORT_BITMAP_WORDS as usize],
        }
    }
}

impl PortBitmap {
    /// The bitmap of `ports`.
    pub fn from_ports(ports: &[u16]) -> Self {
        let mut b = Self::default();
        for &p in ports {
            b.words[usize::from(p / 64)] |= 1 << (p % 64);
        }
        b
    }

    /// Whether `port` is set.
    pub fn has(&self, port: u16) -> bool {
        self.words[usize::from(port / 64)] >> (port % 64) & 1 == 1
    }
}

/// [`AttachInfo::ingress`]: XDP in the driver (native).
pub const INGRESS_XDP_DRIVER: u32 = 1;
/// [`AttachInfo::ingress`]: generic (skb) XDP.
pub const INGRESS_XDP_GENERIC: u32 = 2;
/// [`AttachInfo::ingress`]: the TC ingress hook (TCX, or clsact before 6.6).
pub const INGRESS_TC: u32 = 3;

/// [`AttachInfo::reason`]: the operator forced it.
pub const REASON_FORCED: u32 = 1;
/// [`AttachInfo::reason`]: a NIC whose driver runs XDP natively at no cost.
pub const REASON_NATIVE_NIC: u32 = 2;
/// [`AttachInfo::reason`]: a virtual NIC (veth) where native XDP costs
/// throughput (the peer loses GSO/TSO) and generic XDP sees merged packets.
pub const REASON_VIRTUAL_NIC: u32 = 3;
/// [`AttachInfo::reason`]: the driver refused native XDP.
pub const REASON_DRIVER_REFUSED: u32 = 4;

const _: () = assert!(core::mem::size_of::<FlowKey4>() == 8);
const _: () = assert!(core::mem::size_of::<FlowKey6>() == 32);
const _: () = assert!(core::mem::size_of::<AttachInfo>() == 8);
const _: () = assert!(core::mem::size_of::<FlowCounters>() == 11 * 8);
const _: () = assert!(core::mem::size_of::<HookStats>() == 11 * 8);
const _: () = assert!(core::mem::size_of::<FlowWay4>() == 12 * 8);
const _: () = assert!(core::mem::size_of::<FlowWay6>() == 15 * 8);
const _: () = assert!(FLOW_SETS.is_power_of_two() && FLOW_SETS.is_multiple_of(64));

#[cfg(feature = "user")]
mod user {
    // SAFETY: repr(C), only integer fields and explicit padding, valid for every bit pattern.
    unsafe impl aya::Pod for super::FlowKey4 {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::FlowKey6 {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::AttachInfo {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::FlowCounters {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::HookStats {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::FlowSet4 {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::FlowSet6 {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::SetsUsed {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::PortBitmap {}
}
