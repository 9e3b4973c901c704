//! Header walk shared by the XDP and TC programs.
//!
//! The walk only reads. Its order of checks is the specification that the
//! user-space model in `sanlb/tests/` mirrors (docs/dataplane.md lists it):
//! Ethernet, up to two VLAN tags, IPv4 or IPv6 (bounded extension-header walk),
//! TCP, iSCSI port, then best-effort iSCSI Basic Header Segment.

use sanlb_common::MAX_IPV6_EXT_HEADERS;

/// Read access to a frame: direct packet access where the bytes are in the
/// first buffer (XDP) or the linear area (TC).
pub trait Frame {
    /// Bytes of the frame from the Ethernet header on, every buffer of a
    /// multi-buffer XDP frame included.
    fn len(&self) -> usize;
    /// A lower bound of [`Frame::len`] that costs nothing to read: the first
    /// buffer of an XDP frame (in TC, the length itself).
    fn linear_len(&self) -> usize;
    /// Reads a scalar (`u8`, `u16`, `u32`, `u64`, in memory order) at `off`,
    /// or `None` when it extends past the end. Scalars only: a byte array
    /// copied to the stack could be read back with misaligned wider loads,
    /// which the verifier refuses on the stack.
    fn load<T: Copy>(&self, off: usize) -> Option<T>;
    /// Whether `n` bytes from `off` are inside the frame.
    fn has(&self, off: usize, n: usize) -> bool {
        off + n <= self.linear_len()
    }
    /// Start and end addresses of the bytes read directly: XDP's first
    /// buffer, TC's linear area.
    fn direct(&self) -> (usize, usize);
    /// The first `N` bytes, when they can be read directly: read with no
    /// further bounds checks.
    #[inline(always)]
    fn head<const N: usize>(&self) -> Option<&[u8; N]> {
        let (start, end) = self.direct();
        if start + N > end {
            return None;
        }
        // SAFETY: N bytes of packet data, checked against their end just
        // above; the program only reads them while it runs.
        Some(unsafe { &*(start as *const [u8; N]) })
    }
}

/// Why a frame was not counted (each is a field of `HookStats`).
#[derive(Clone, Copy)]
pub enum Skip {
    NotIp,
    NotTcp,
    NotIscsi,
    Fragment,
    Truncated,
    Malformed,
    ExtHeaderLimit,
}

/// What the walk found in a countable frame. Addresses are kept as 64-bit
/// words in memory order (IPv4: the first word's low 4 bytes), so building a
/// key is word stores rather than byte copies.
pub struct Parsed {
    /// Source address.
    pub src: [u64; 2],
    /// Destination address.
    pub dst: [u64; 2],
    /// IPv6 (else IPv4).
    pub ipv6: bool,
    /// Initiator to target (the destination port is an iSCSI port).
    pub to_target: bool,
    /// Offset of the TCP payload, which is also the length of all headers.
    pub payload_off: u32,
    /// TCP payload bytes, taken from the IP length fields (never the padding).
    pub payload_len: u32,
}

const ETH_HLEN: usize = 14;
const ETH_P_IP: u16 = 0x0800;
const ETH_P_IPV6: u16 = 0x86dd;
const ETH_P_8021Q: u16 = 0x8100;
const ETH_P_8021AD: u16 = 0x88a8;
const IPPROTO_TCP: u8 = 6;
const IPV6_HLEN: usize = 40;
const TCP_HLEN: usize = 20;

// IPv6 extension headers this walk steps over.
const NH_HOPOPTS: u8 = 0;
const NH_ROUTING: u8 = 43;
const NH_FRAGMENT: u8 = 44;
const NH_AH: u8 = 51;
const NH_DSTOPTS: u8 = 60;
const NH_MOBILITY: u8 = 135;
const NH_HIP: u8 = 139;
const NH_SHIM6: u8 = 140;

/// A big-endian 16-bit field at `off`.
#[inline(always)]
fn be16<F: Frame>(f: &F, off: usize) -> Result<u16, Skip> {
    f.load::<u16>(off).map(u16::from_be).ok_or(Skip::Truncated)
}

/// Walks the headers of `f`. `is_iscsi_port` tells whether a TCP port, in
/// network byte order (as read from the frame), is an iSCSI port.
#[inline(always)]
pub fn parse<F: Frame>(f: &F, is_iscsi_port: impl Fn(u16) -> bool) -> Result<Parsed, Skip> {
    // The whole length costs a helper call in XDP: only asked for when the
    // first buffer does not hold the IP packet.
    let fits = |end: usize| end <= f.linear_len() || end <= f.len();
    let mut proto = be16(f, 12)?;
    let mut l3 = ETH_HLEN;
    // Up to two tags: 802.1Q, or 802.1ad outer + 802.1Q inner.
    if proto == ETH_P_8021Q || proto == ETH_P_8021AD {
        proto = be16(f, l3 + 2)?;
        l3 += 4;
        if proto == ETH_P_8021Q || proto == ETH_P_8021AD {
            proto = be16(f, l3 + 2)?;
            l3 += 4;
        }
    }

    let src: [u64; 2];
    let dst: [u64; 2];
    let ipv6: bool;
    let l4: usize;
    let ip_end: usize;
    match proto {
        ETH_P_IP => {
            let vihl = f.load::<u8>(l3).ok_or(Skip::Truncated)?;
            let ihl = ((vihl & 0x0f) as usize) * 4;
            if vihl >> 4 != 4 || ihl < 20 {
                return Err(Skip::Malformed);
            }
            // tot_len (2..4), flags+fragment offset (6..8), protocol (9).
            if !f.has(l3, 20) {
                return Err(Skip::Truncated);
            }
            let tot_len = be16(f, l3 + 2)? as usize;
            if tot_len < ihl {
                return Err(Skip::Malformed);
            }
            if !fits(l3 + tot_len) {
                return Err(Skip::Truncated);
            }
            // MF flag or a non-zero fragment offset.
            if be16(f, l3 + 6)? & 0x3fff != 0 {
                return Err(Skip::Fragment);
            }
            if f.load::<u8>(l3 + 9).ok_or(Skip::Truncated)? != IPPROTO_TCP {
                return Err(Skip::NotTcp);
            }
            src = [u64::from(f.load::<u32>(l3 + 12).ok_or(Skip::Truncated)?), 0];
            dst = [u64::from(f.load::<u32>(l3 + 16).ok_or(Skip::Truncated)?), 0];
            ipv6 = false;
            l4 = l3 + ihl;
            ip_end = l3 + tot_len;
        }
        ETH_P_IPV6 => {
            // version (0), payload length (4..6), next header (6).
            if !f.has(l3, IPV6_HLEN) {
                return Err(Skip::Truncated);
            }
            if f.load::<u8>(l3).ok_or(Skip::Truncated)? >> 4 != 6 {
                return Err(Skip::Malformed);
            }
            let payload_len = be16(f, l3 + 4)? as usize;
            ip_end = l3 + IPV6_HLEN + payload_len;
            if !fits(ip_end) {
                return Err(Skip::Truncated);
            }
            let mut nh = f.load::<u8>(l3 + 6).ok_or(Skip::Truncated)?;
            let mut off = l3 + IPV6_HLEN;
            let mut walked = 0;
            while walked < MAX_IPV6_EXT_HEADERS {
                let len = match nh {
                    NH_HOPOPTS | NH_ROUTING | NH_DSTOPTS | NH_MOBILITY | NH_HIP | NH_SHIM6 => {
                        let (next, len) = ext_head(f, off, ip_end)?;
                        nh = next;
                        (len + 1) * 8
                    }
                    NH_AH => {
                        let (next, len) = ext_head(f, off, ip_end)?;
                        nh = next;
                        (len + 2) * 4
                    }
                    NH_FRAGMENT => {
                        if off + 8 > ip_end {
                            return Err(Skip::Malformed);
                        }
                        // Next header, reserved, offset and flags: one load
                        // (see `ext_head`).
                        let [next, _, hi, lo] =
                            f.load::<u32>(off).ok_or(Skip::Truncated)?.to_ne_bytes();
                        // Offset (13 bits) or M flag: a real fragment. An atomic
                        // fragment (both zero) is a whole packet.
                        if u16::from_be_bytes([hi, lo]) & 0xfff9 != 0 {
                            return Err(Skip::Fragment);
                        }
                        nh = next;
                        8
                    }
                    _ => break,
                };
                off += len;
                walked += 1;
            }
            if walked == MAX_IPV6_EXT_HEADERS && is_ext_header(nh) {
                return Err(Skip::ExtHeaderLimit);
            }
            if nh != IPPROTO_TCP {
                return Err(Skip::NotTcp);
            }
            let word = |at: usize| f.load::<u64>(at).ok_or(Skip::Truncated);
            src = [word(l3 + 8)?, word(l3 + 16)?];
            dst = [word(l3 + 24)?, word(l3 + 32)?];
            ipv6 = true;
            l4 = off;
        }
        _ => return Err(Skip::NotIp),
    }

    if l4 + TCP_HLEN > ip_end {
        return Err(Skip::Malformed);
    }
    // In network byte order, as `is_iscsi_port` takes them.
    let sport = f.load::<u16>(l4).ok_or(Skip::Truncated)?;
    let dport = f.load::<u16>(l4 + 2).ok_or(Skip::Truncated)?;
    let to_target = if is_iscsi_port(dport) {
        true
    } else if is_iscsi_port(sport) {
        false
    } else {
        return Err(Skip::NotIscsi);
    };
    let doff = ((f.load::<u8>(l4 + 12).ok_or(Skip::Truncated)? >> 4) as usize) * 4;
    if doff < TCP_HLEN || l4 + doff > ip_end {
        return Err(Skip::Malformed);
    }
    let payload_off = l4 + doff;
    Ok(Parsed {
        src,
        dst,
        ipv6,
        to_target,
        payload_off: payload_off as u32,
        payload_len: (ip_end - payload_off) as u32,
    })
}

/// Bytes [`fast`] reads: an untagged Ethernet header, an IPv4 header without
/// options and the fixed part of a TCP header.
pub const FAST_LEN: usize = ETH_HLEN + 20 + TCP_HLEN;

/// Reads a `T` at `off` of `h`, in memory order.
#[inline(always)]
fn at<T: Copy, const N: usize>(h: &[u8; N], off: usize) -> T {
    debug_assert!(off + size_of::<T>() <= N);
    // SAFETY: every caller passes a constant `off` with `off + size_of::<T>()`
    // within the array.
    unsafe { h.as_ptr().add(off).cast::<T>().read_unaligned() }
}

/// The common frame in a few instructions: untagged IPv4 without options,
/// not a fragment, TCP, the IP packet inside the first `linear_len` bytes.
/// `h` is the frame's first [`FAST_LEN`] bytes. `None` for any other frame,
/// which [`parse`] then walks; where this answers, it answers what [`parse`]
/// would (the property test holds both to the model).
#[inline(always)]
pub fn fast(
    h: &[u8; FAST_LEN],
    linear_len: usize,
    is_iscsi_port: impl Fn(u16) -> bool,
) -> Option<Result<Parsed, Skip>> {
    const L3: usize = ETH_HLEN;
    const L4: usize = L3 + 20;
    if at::<u16, _>(h, 12) != ETH_P_IP.to_be() || h[L3] != 0x45 {
        return None;
    }
    let tot_len = usize::from(u16::from_be(at::<u16, _>(h, L3 + 2)));
    // At least the two fixed headers (else malformed, left to the walk), the
    // IP packet in the first buffer, and not a fragment.
    if tot_len < 20 + TCP_HLEN
        || L3 + tot_len > linear_len
        || at::<u16, _>(h, L3 + 6) & 0x3fff_u16.to_be() != 0
    {
        return None;
    }
    if h[L3 + 9] != IPPROTO_TCP {
        return Some(Err(Skip::NotTcp));
    }
    tcp(h, L4, L3 + tot_len, is_iscsi_port, || {
        (
            [u64::from(at::<u32, _>(h, L3 + 12)), 0],
            [u64::from(at::<u32, _>(h, L3 + 16)), 0],
            false,
        )
    })
}

/// The TCP part of [`fast`] and [`fast6`]: the fixed TCP header at `l4` of
/// `h`, the IP packet ending at `ip_end` (at least `l4` + 20); `addrs` reads
/// the source and destination addresses and tells whether they are IPv6.
#[inline(always)]
fn tcp<const N: usize>(
    h: &[u8; N],
    l4: usize,
    ip_end: usize,
    is_iscsi_port: impl Fn(u16) -> bool,
    addrs: impl FnOnce() -> ([u64; 2], [u64; 2], bool),
) -> Option<Result<Parsed, Skip>> {
    let to_target = if is_iscsi_port(at::<u16, _>(h, l4 + 2)) {
        true
    } else if is_iscsi_port(at::<u16, _>(h, l4)) {
        false
    } else {
        return Some(Err(Skip::NotIscsi));
    };
    // TCP options (timestamps, on by default in Linux) lie beyond `h`; only
    // the data offset is needed.
    let payload_off = l4 + usize::from(h[l4 + 12] >> 4) * 4;
    if payload_off < l4 + TCP_HLEN || payload_off > ip_end {
        return None;
    }
    let (src, dst, ipv6) = addrs();
    Some(Ok(Parsed {
        src,
        dst,
        ipv6,
        to_target,
        payload_off: payload_off as u32,
        payload_len: (ip_end - payload_off) as u32,
    }))
}

/// Bytes [`fast6`] reads: an untagged Ethernet header, an IPv6 header and
/// the fixed part of a TCP header.
pub const FAST6_LEN: usize = ETH_HLEN + IPV6_HLEN + TCP_HLEN;

/// As [`fast`] for IPv6: untagged, no extension header (TCP right after the
/// IPv6 header), the IP packet inside the first `linear_len` bytes.
#[inline(always)]
pub fn fast6(
    h: &[u8; FAST6_LEN],
    linear_len: usize,
    is_iscsi_port: impl Fn(u16) -> bool,
) -> Option<Result<Parsed, Skip>> {
    const L3: usize = ETH_HLEN;
    const L4: usize = L3 + IPV6_HLEN;
    if at::<u16, _>(h, 12) != ETH_P_IPV6.to_be() || h[L3] >> 4 != 6 || h[L3 + 6] != IPPROTO_TCP {
        return None;
    }
    let ip_end = L4 + usize::from(u16::from_be(at::<u16, _>(h, L3 + 4)));
    if ip_end < L4 + TCP_HLEN || ip_end > linear_len {
        return None;
    }
    tcp(h, L4, ip_end, is_iscsi_port, || {
        (
            [at::<u64, _>(h, L3 + 8), at::<u64, _>(h, L3 + 16)],
            [at::<u64, _>(h, L3 + 24), at::<u64, _>(h, L3 + 32)],
            true,
        )
    })
}

/// Next header and length field of the extension header at `off`.
#[inline(always)]
fn ext_head<F: Frame>(f: &F, off: usize, ip_end: usize) -> Result<(u8, usize), Skip> {
    // Every extension header is at least 8 bytes long.
    if off + 8 > ip_end {
        return Err(Skip::Malformed);
    }
    // One 2-byte load: two 1-byte ones get their bounds checks merged into a
    // form the verifier cannot follow.
    let [next, len] = f.load::<u16>(off).ok_or(Skip::Truncated)?.to_ne_bytes();
    Ok((next, len as usize))
}

#[inline(always)]
fn is_ext_header(nh: u8) -> bool {
    matches!(
        nh,
        NH_HOPOPTS
            | NH_ROUTING
            | NH_FRAGMENT
            | NH_AH
            | NH_DSTOPTS
            | NH_MOBILITY
            | NH_HIP
            | NH_SHIM6
    )
}

/// A SCSI Command PDU found at the start of the TCP payload.
pub struct ScsiCommand {
    pub read: bool,
    pub write: bool,
    /// Expected Data Transfer Length.
    pub edtl: u32,
}

const BHS_LEN: usize = 48;

/// Best effort: a segment that starts with a SCSI Command BHS (opcode 0x01,
/// reserved bits clear). A segment that starts mid-PDU is not recognised unless
/// its bytes happen to look like one; this is a statistic, not a decoder.
#[inline(always)]
pub fn scsi_command<F: Frame>(f: &F, p: &Parsed) -> Option<ScsiCommand> {
    if (p.payload_len as usize) < BHS_LEN {
        return None;
    }
    let off = p.payload_off as usize;
    // In memory order: byte 0 reserved bit 7, Immediate bit 6, opcode 0x01;
    // byte 1 F R W, two reserved bits, ATTR; bytes 2-3 reserved.
    let head = u32::from_be(f.load::<u32>(off)?);
    if head & 0xbf18_ffff != 0x0100_0000 {
        return None;
    }
    let edtl = u32::from_be(f.load::<u32>(off + 20)?);
    Some(ScsiCommand {
        read: head & 0x0040_0000 != 0,
        write: head & 0x0020_0000 != 0,
        edtl,
    })
}
