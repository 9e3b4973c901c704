//! Probing the host-facing segment: who answers for a storage address, and
//! whether the storage service behind each answer accepts connections.
//!
//! - **Who answers**: an RFC 5227 ARP probe (ARP request, sender IP
//!   0.0.0.0, target IP the address) for IPv4; a DAD-style Neighbor
//!   Solicitation (from `::` to the address's solicited-node group, no
//!   source link-layer option, RFC 4862 §5.4.2) for IPv6. A station holding
//!   the address answers a probe with a reply (IPv4, to our MAC) or a
//!   Neighbor Advertisement to all nodes (IPv6), and neither creates a
//!   neighbour entry anywhere (the sender IP is unspecified), so probing
//!   disturbs no host's cache. Every answer within the window counts: two
//!   MACs for one address is a duplicate.
//! - **Service**: for every answer, one TCP SYN to the storage port, sent
//!   straight to the answering MAC from this NIC's own address. A SYN-ACK
//!   means the service listens; a reset means the machine is up but the
//!   service is not (every process of the gateway killed, say). The kernel
//!   of this gateway resets the half-open connection when the SYN-ACK
//!   arrives (no socket of its own asked for it), so nothing lingers.
//!
//! The frames are built by hand on `AF_PACKET` sockets, for the reasons
//! `announce.rs` gives: a few dozen fixed bytes each, sent independently of
//! routing (the gateway has no route to the storage prefix; the address
//! may be its own) and of the kernel's neighbour cache. Receiving sockets
//! are bound to the NIC and to one ethertype, with a classic BPF filter that
//! keeps only the answers (no iSCSI traffic is copied up), attached before
//! the socket is bound so that nothing else is ever queued on it. Each
//! probe opens its sockets and closes them when its window ends.

use std::{
    collections::{BTreeMap, BTreeSet},
    io,
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
    os::fd::{AsRawFd as _, FromRawFd as _, OwnedFd},
    time::Duration,
};

use tokio::{io::unix::AsyncFd, time::Instant};

use super::announce::Mac;
use crate::proto::{MacAddr, ProbeAnswer, ProbedAddress, Service};

const ETHERTYPE_IPV4: u16 = 0x0800;
const ETHERTYPE_ARP: u16 = 0x0806;
const ETHERTYPE_IPV6: u16 = 0x86dd;
const ETH_BROADCAST: Mac = [0xff; 6];
const ETH_MIN_FRAME: usize = 60;
const ARP_REQUEST: u16 = 1;
const IPPROTO_TCP: u8 = 6;
const IPPROTO_ICMPV6: u8 = 58;
const ICMPV6_NS: u8 = 135;
const ICMPV6_NA: u8 = 136;
const ND_OPT_TARGET_LLADDR: u8 = 2;
const TCP_SYN: u8 = 0x02;
const TCP_RST: u8 = 0x04;
const TCP_ACK: u8 = 0x10;
/// `SO_ATTACH_FILTER` (asm-generic).
const SO_ATTACH_FILTER: libc::c_int = 26;
/// `sll_pkttype` of a frame this host sent.
const PACKET_OUTGOING: u8 = 4;

/// What to probe.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ProbeSpec {
    /// The addresses (IPv4 and IPv6 may mix).
    pub addrs: Vec<IpAddr>,
    /// How long to collect the answers of each phase (who answers, then the
    /// service); the probe frames are sent at its start and again halfway.
    pub window: Duration,
    /// The storage service's TCP port to check on every answer; `None`
    /// checks nothing (a self-probe for conflicts).
    pub service_port: Option<u16>,
}

/// The state of a NIC as a prober sees it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LinkState {
    /// Administratively up with a carrier (`IFF_UP` and `IFF_LOWER_UP`).
    pub up: bool,
    /// Its MAC, if it is an Ethernet NIC.
    pub mac: Option<MacAddr>,
}

/// The NIC a probe runs on.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Nic {
    pub index: u32,
    pub mac: Mac,
    /// Its own (unmanaged) addresses, the sources of the service checks.
    pub own_v4: Option<Ipv4Addr>,
    pub own_v6: Option<Ipv6Addr>,
}

/// An RFC 5227 ARP probe for `target` from `mac`: broadcast request, sender
/// IP 0.0.0.0, target MAC zero.
pub(crate) fn arp_probe_frame(mac: Mac, target: Ipv4Addr) -> [u8; ETH_MIN_FRAME] {
    let mut f = [0u8; ETH_MIN_FRAME];
    f[0..6].copy_from_slice(&ETH_BROADCAST);
    f[6..12].copy_from_slice(&mac);
    f[12..14].copy_from_slice(&ETHERTYPE_ARP.to_be_bytes());
    f[14..16].copy_from_slice(&1u16.to_be_bytes()); // Ethernet
    f[16..18].copy_from_slice(&ETHERTYPE_IPV4.to_be_bytes());
    f[18] = 6;
    f[19] = 4;
    f[20..22].copy_from_slice(&ARP_REQUEST.to_be_bytes());
    f[22..28].copy_from_slice(&mac);
    // Sender IP 0.0.0.0 (28..32) and target MAC zero (32..38) stay zero.
    f[38..42].copy_from_slice(&target.octets());
    f
}

/// The solicited-node multicast address of `a` (RFC 4291 §2.7.1).
fn solicited_node(a: Ipv6Addr) -> Ipv6Addr {
    let o = a.octets();
    Ipv6Addr::new(
        0xff02,
        0,
        0,
        0,
        0,
        1,
        0xff00 | u16::from(o[13]),
        u16::from_be_bytes([o[14], o[15]]),
    )
}

/// Length of a DAD solicitation: Ethernet 14 + IPv6 40 + NS 24.
const NS_FRAME_LEN: usize = 14 + 40 + 24;

/// A duplicate-address-detection Neighbor Solicitation for `target` from
/// `mac`: source `::`, destination the solicited-node group, hop limit 255,
/// no source link-layer address option (RFC 4861 §7.2.2 forbids it with an
/// unspecified source).
pub(crate) fn dad_ns_frame(mac: Mac, target: Ipv6Addr) -> [u8; NS_FRAME_LEN] {
    let dst = solicited_node(target);
    let d = dst.octets();
    let mut f = [0u8; NS_FRAME_LEN];
    f[0..6].copy_from_slice(&[0x33, 0x33, d[12], d[13], d[14], d[15]]);
    f[6..12].copy_from_slice(&mac);
    f[12..14].copy_from_slice(&ETHERTYPE_IPV6.to_be_bytes());
    let ip6 = &mut f[14..54];
    ip6[0] = 0x60;
    ip6[4..6].copy_from_slice(&24u16.to_be_bytes());
    ip6[6] = IPPROTO_ICMPV6;
    ip6[7] = 255;
    // Source :: (8..24) stays zero.
    ip6[24..40].copy_from_slice(&d);
    let ns = &mut f[54..];
    ns[0] = ICMPV6_NS;
    ns[8..24].copy_from_slice(&target.octets());
    let sum = checksum(&[
        &Ipv6Addr::UNSPECIFIED.octets(),
        &d,
        &24u32.to_be_bytes(),
        &[0, 0, 0, IPPROTO_ICMPV6],
        &ns[..],
    ]);
    ns[2..4].copy_from_slice(&sum.to_be_bytes());
    f
}

/// The Internet checksum (RFC 1071) over the concatenation of `parts`, each
/// of even length but the last.
fn checksum(parts: &[&[u8]]) -> u16 {
    let mut sum: u32 = 0;
    for part in parts {
        for chunk in part.chunks(2) {
            let hi = u32::from(chunk[0]) << 8;
            sum += hi | chunk.get(1).copied().map_or(0, u32::from);
        }
    }
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

/// One TCP segment's header fields this module sends or reads.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Segment {
    pub src: IpAddr,
    pub dst: IpAddr,
    pub sport: u16,
    pub dport: u16,
    pub seq: u32,
    pub flags: u8,
}

/// A TCP header with no options and no payload.
fn tcp_header(s: &Segment) -> [u8; 20] {
    let mut t = [0u8; 20];
    t[0..2].copy_from_slice(&s.sport.to_be_bytes());
    t[2..4].copy_from_slice(&s.dport.to_be_bytes());
    t[4..8].copy_from_slice(&s.seq.to_be_bytes());
    t[12] = 5 << 4; // data offset: 5 words
    t[13] = s.flags;
    t[14..16].copy_from_slice(&1024u16.to_be_bytes()); // window
    t
}

/// A TCP SYN (no options) from `src_mac` to `dst_mac`, IPv4 or IPv6 by the
/// addresses of `s` (both of one family).
pub(crate) fn syn_frame(src_mac: Mac, dst_mac: Mac, s: &Segment) -> Vec<u8> {
    let mut tcp = tcp_header(s);
    let mut f = Vec::with_capacity(ETH_MIN_FRAME + 14);
    f.extend_from_slice(&dst_mac);
    f.extend_from_slice(&src_mac);
    match (s.src, s.dst) {
        (IpAddr::V4(src), IpAddr::V4(dst)) => {
            let sum = checksum(&[&src.octets(), &dst.octets(), &[0, IPPROTO_TCP, 0, 20], &tcp]);
            tcp[16..18].copy_from_slice(&sum.to_be_bytes());
            f.extend_from_slice(&ETHERTYPE_IPV4.to_be_bytes());
            let mut ip = [0u8; 20];
            ip[0] = 0x45;
            ip[2..4].copy_from_slice(&40u16.to_be_bytes());
            ip[4..6].copy_from_slice(&(s.seq as u16).to_be_bytes()); // id
            ip[6] = 0x40; // don't fragment
            ip[8] = 64;
            ip[9] = IPPROTO_TCP;
            ip[12..16].copy_from_slice(&src.octets());
            ip[16..20].copy_from_slice(&dst.octets());
            let sum = checksum(&[&ip]);
            ip[10..12].copy_from_slice(&sum.to_be_bytes());
            f.extend_from_slice(&ip);
            f.extend_from_slice(&tcp);
            f.resize(ETH_MIN_FRAME, 0);
        }
        (IpAddr::V6(src), IpAddr::V6(dst)) => {
            let sum = checksum(&[
                &src.octets(),
                &dst.octets(),
                &20u32.to_be_bytes(),
                &[0, 0, 0, IPPROTO_TCP],
                &tcp,
            ]);
            tcp[16..18].copy_from_slice(&sum.to_be_bytes());
            f.extend_from_slice(&ETHERTYPE_IPV6.to_be_bytes());
            let mut ip = [0u8; 40];
            ip[0] = 0x60;
            ip[4..6].copy_from_slice(&20u16.to_be_bytes());
            ip[6] = IPPROTO_TCP;
            ip[7] = 64;
            ip[8..24].copy_from_slice(&src.octets());
            ip[24..40].copy_from_slice(&dst.octets());
            f.extend_from_slice(&ip);
            f.extend_from_slice(&tcp);
        }
        _ => unreachable!("the caller pairs addresses of one family"),
    }
    f
}

/// The sender of an ARP packet (request or reply) that says it holds an
/// address: (sender IP, sender MAC). Probes (sender IP 0.0.0.0) say nothing.
pub(crate) fn parse_arp_sender(f: &[u8]) -> Option<(Ipv4Addr, Mac)> {
    if f.len() < 42 || f[12..14] != ETHERTYPE_ARP.to_be_bytes() {
        return None;
    }
    if f[14..16] != [0, 1] || f[16..18] != ETHERTYPE_IPV4.to_be_bytes() || f[18] != 6 || f[19] != 4
    {
        return None;
    }
    let mac: Mac = f[22..28].try_into().ok()?;
    let ip = Ipv4Addr::new(f[28], f[29], f[30], f[31]);
    (!ip.is_unspecified()).then_some((ip, mac))
}

/// A Neighbor Advertisement: (target, the advertised MAC: its target
/// link-layer option, else the Ethernet source).
pub(crate) fn parse_na(f: &[u8]) -> Option<(Ipv6Addr, Mac)> {
    if f.len() < 14 + 40 + 24 || f[12..14] != ETHERTYPE_IPV6.to_be_bytes() {
        return None;
    }
    let ip = &f[14..54];
    if ip[6] != IPPROTO_ICMPV6 || ip[7] != 255 {
        return None;
    }
    let plen = usize::from(u16::from_be_bytes([ip[4], ip[5]]));
    let icmp = f.get(54..54 + plen)?;
    if icmp.len() < 24 || icmp[0] != ICMPV6_NA || icmp[1] != 0 {
        return None;
    }
    let target = Ipv6Addr::from(<[u8; 16]>::try_from(&icmp[8..24]).ok()?);
    let mut mac: Mac = f[6..12].try_into().ok()?;
    let mut opts = &icmp[24..];
    while opts.len() >= 8 {
        let len = usize::from(opts[1]) * 8;
        if len == 0 || len > opts.len() {
            break;
        }
        if opts[0] == ND_OPT_TARGET_LLADDR && len == 8 {
            mac = opts[2..8].try_into().ok()?;
        }
        opts = &opts[len..];
    }
    Some((target, mac))
}

/// A TCP segment in an Ethernet frame (IPv4 without fragments, or IPv6
/// without extension headers), with the frame's source MAC.
pub(crate) fn parse_tcp(f: &[u8]) -> Option<(Segment, Mac)> {
    let mac: Mac = f.get(6..12)?.try_into().ok()?;
    let (src, dst, tcp) = match u16::from_be_bytes([*f.get(12)?, *f.get(13)?]) {
        ETHERTYPE_IPV4 => {
            let ip = f.get(14..34)?;
            let ihl = usize::from(ip[0] & 0x0f) * 4;
            if ip[0] >> 4 != 4 || ihl < 20 || ip[9] != IPPROTO_TCP {
                return None;
            }
            if u16::from_be_bytes([ip[6], ip[7]]) & 0x1fff != 0 {
                return None;
            }
            let src = Ipv4Addr::new(ip[12], ip[13], ip[14], ip[15]);
            let dst = Ipv4Addr::new(ip[16], ip[17], ip[18], ip[19]);
            (src.into(), dst.into(), f.get(14 + ihl..14 + ihl + 20)?)
        }
        ETHERTYPE_IPV6 => {
            let ip = f.get(14..54)?;
            if ip[0] >> 4 != 6 || ip[6] != IPPROTO_TCP {
                return None;
            }
            let src = Ipv6Addr::from(<[u8; 16]>::try_from(&ip[8..24]).ok()?);
            let dst = Ipv6Addr::from(<[u8; 16]>::try_from(&ip[24..40]).ok()?);
            (src.into(), dst.into(), f.get(54..74)?)
        }
        _ => return None,
    };
    Some((
        Segment {
            src,
            dst,
            sport: u16::from_be_bytes([tcp[0], tcp[1]]),
            dport: u16::from_be_bytes([tcp[2], tcp[3]]),
            seq: u32::from_be_bytes([tcp[4], tcp[5], tcp[6], tcp[7]]),
            flags: tcp[13],
        },
        mac,
    ))
}

/// Classic BPF, the few instructions the filters below use.
mod cbpf {
    pub const LD_B_ABS: u16 = 0x30;
    pub const LD_H_ABS: u16 = 0x28;
    pub const LD_H_IND: u16 = 0x48;
    pub const LDX_B_MSH: u16 = 0xb1;
    pub const JEQ_K: u16 = 0x15;
    pub const JSET_K: u16 = 0x45;
    pub const RET_K: u16 = 0x06;
    /// Bytes of an accepted frame kept (more than any frame read here).
    pub const ACCEPT: u32 = 0x0004_0000;

    pub const fn op(code: u16, jt: u8, jf: u8, k: u32) -> libc::sock_filter {
        libc::sock_filter { code, jt, jf, k }
    }
}

/// Neighbor Advertisements on an `ETH_P_IPV6` socket: next header ICMPv6
/// (no extension headers), type 136.
fn na_filter() -> Vec<libc::sock_filter> {
    use cbpf::*;
    vec![
        op(LD_B_ABS, 0, 0, 14 + 6),
        op(JEQ_K, 0, 3, u32::from(IPPROTO_ICMPV6)),
        op(LD_B_ABS, 0, 0, 14 + 40),
        op(JEQ_K, 0, 1, u32::from(ICMPV6_NA)),
        op(RET_K, 0, 0, ACCEPT),
        op(RET_K, 0, 0, 0),
    ]
}

/// TCP segments to `port` on an `ETH_P_IP` socket (first fragments only).
fn tcp4_filter(port: u16) -> Vec<libc::sock_filter> {
    use cbpf::*;
    vec![
        op(LD_B_ABS, 0, 0, 14 + 9),
        op(JEQ_K, 0, 6, u32::from(IPPROTO_TCP)),
        op(LD_H_ABS, 0, 0, 14 + 6),
        op(JSET_K, 4, 0, 0x1fff),
        op(LDX_B_MSH, 0, 0, 14),
        op(LD_H_IND, 0, 0, 14 + 2),
        op(JEQ_K, 0, 1, u32::from(port)),
        op(RET_K, 0, 0, ACCEPT),
        op(RET_K, 0, 0, 0),
    ]
}

/// TCP segments to `port` on an `ETH_P_IPV6` socket (no extension headers).
fn tcp6_filter(port: u16) -> Vec<libc::sock_filter> {
    use cbpf::*;
    vec![
        op(LD_B_ABS, 0, 0, 14 + 6),
        op(JEQ_K, 0, 3, u32::from(IPPROTO_TCP)),
        op(LD_H_ABS, 0, 0, 14 + 40 + 2),
        op(JEQ_K, 0, 1, u32::from(port)),
        op(RET_K, 0, 0, ACCEPT),
        op(RET_K, 0, 0, 0),
    ]
}

/// A packet socket bound to one NIC and one ethertype, non-blocking.
struct RawSocket {
    fd: AsyncFd<OwnedFd>,
    ifindex: i32,
    ethertype: u16,
}

fn sockaddr(ifindex: i32, ethertype: u16, dst: Option<&[u8]>) -> libc::sockaddr_ll {
    // SAFETY: sockaddr_ll is plain old data; all-zero is a valid value.
    let mut sll: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
    sll.sll_family = libc::AF_PACKET as u16;
    sll.sll_protocol = ethertype.to_be();
    sll.sll_ifindex = ifindex;
    if let Some(d) = dst {
        sll.sll_halen = 6;
        sll.sll_addr[..6].copy_from_slice(&d[..6]);
    }
    sll
}

impl RawSocket {
    /// Opens it with protocol 0 (nothing is queued yet), attaches `filter`,
    /// then binds it to `ifindex` and `ethertype`: no frame that the filter
    /// refuses, or from another NIC, is ever queued on it.
    fn open(
        ifindex: u32,
        ethertype: u16,
        filter: Option<&[libc::sock_filter]>,
    ) -> io::Result<Self> {
        let ifindex = i32::try_from(ifindex)
            .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "interface index"))?;
        // SAFETY: plain socket(2); the descriptor is checked, then owned.
        let raw = unsafe {
            libc::socket(
                libc::AF_PACKET,
                libc::SOCK_RAW | libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC,
                0,
            )
        };
        if raw < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: a fresh, valid descriptor nobody else owns.
        let fd = unsafe { OwnedFd::from_raw_fd(raw) };
        if let Some(filter) = filter {
            let prog = libc::sock_fprog {
                len: u16::try_from(filter.len()).expect("a short filter"),
                filter: filter.as_ptr().cast_mut(),
            };
            // SAFETY: `prog` points at `filter`, valid for the call; the
            // kernel copies it.
            let r = unsafe {
                libc::setsockopt(
                    fd.as_raw_fd(),
                    libc::SOL_SOCKET,
                    SO_ATTACH_FILTER,
                    (&raw const prog).cast(),
                    std::mem::size_of::<libc::sock_fprog>() as libc::socklen_t,
                )
            };
            if r < 0 {
                return Err(io::Error::last_os_error());
            }
        }
        let sll = sockaddr(ifindex, ethertype, None);
        // SAFETY: a valid sockaddr_ll of the given length.
        let r = unsafe {
            libc::bind(
                fd.as_raw_fd(),
                (&raw const sll).cast(),
                std::mem::size_of::<libc::sockaddr_ll>() as libc::socklen_t,
            )
        };
        if r < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: an OwnedFd is a valid, open descriptor that stays open and
        // the same for as long as the AsyncFd owns it.
        let fd = unsafe { AsyncFd::register(fd) }.map_err(io::Error::from)?;
        Ok(Self {
            fd,
            ifindex,
            ethertype,
        })
    }

    fn send(&self, frame: &[u8]) -> io::Result<()> {
        let sll = sockaddr(self.ifindex, self.ethertype, Some(frame));
        // SAFETY: buffer and address valid for the given lengths.
        let sent = unsafe {
            libc::sendto(
                self.fd.get_ref().as_raw_fd(),
                frame.as_ptr().cast(),
                frame.len(),
                libc::MSG_DONTWAIT,
                (&raw const sll).cast(),
                std::mem::size_of::<libc::sockaddr_ll>() as libc::socklen_t,
            )
        };
        if sent < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }

    /// The next frame another station sent (frames this host sent are
    /// skipped), into `buf`; its length.
    async fn recv(&self, buf: &mut [u8]) -> io::Result<usize> {
        loop {
            let mut guard = self.fd.readable().await?;
            let got = guard.try_io(|fd| {
                // SAFETY: as in `sockaddr`.
                let mut sll: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
                let mut len = std::mem::size_of::<libc::sockaddr_ll>() as libc::socklen_t;
                // SAFETY: buffer and address valid for the given lengths.
                let n = unsafe {
                    libc::recvfrom(
                        fd.get_ref().as_raw_fd(),
                        buf.as_mut_ptr().cast(),
                        buf.len(),
                        libc::MSG_DONTWAIT,
                        (&raw mut sll).cast(),
                        &raw mut len,
                    )
                };
                if n < 0 {
                    return Err(io::Error::last_os_error());
                }
                Ok((n as usize, sll.sll_pkttype))
            });
            match got {
                Ok(Ok((_, PACKET_OUTGOING))) => {}
                Ok(Ok((n, _))) => return Ok(n),
                Ok(Err(e)) => return Err(e),
                Err(_would_block) => {}
            }
        }
    }
}

/// Reads frames from `sock` until `deadline` (or until `done` says so),
/// handing each to `on`.
async fn collect(
    sock: &RawSocket,
    deadline: Instant,
    mut on: impl FnMut(&[u8]),
    done: impl Fn() -> bool,
) -> io::Result<()> {
    let mut buf = vec![0u8; 2048];
    while !done() {
        match tokio::time::timeout_at(deadline, sock.recv(&mut buf)).await {
            Ok(Ok(n)) => on(&buf[..n]),
            Ok(Err(e)) => return Err(e),
            Err(_) => break,
        }
    }
    Ok(())
}

/// Probes `spec.addrs` from `nic`; see the module docs. An error means the
/// probe could not be sent (a NIC that is down, say): nothing can be
/// concluded.
pub(crate) async fn probe(nic: Nic, spec: &ProbeSpec) -> io::Result<Vec<ProbedAddress>> {
    let wanted: BTreeSet<IpAddr> = spec.addrs.iter().copied().collect();
    let v4: Vec<Ipv4Addr> = wanted
        .iter()
        .filter_map(|a| match a {
            IpAddr::V4(a) => Some(*a),
            IpAddr::V6(_) => None,
        })
        .collect();
    let v6: Vec<Ipv6Addr> = wanted
        .iter()
        .filter_map(|a| match a {
            IpAddr::V6(a) => Some(*a),
            IpAddr::V4(_) => None,
        })
        .collect();
    // Who answers for each address: MAC → service.
    let mut seen: BTreeMap<IpAddr, BTreeMap<Mac, Service>> =
        wanted.iter().map(|a| (*a, BTreeMap::new())).collect();
    let arp = if v4.is_empty() {
        None
    } else {
        Some(RawSocket::open(nic.index, ETHERTYPE_ARP, None)?)
    };
    let nd = if v6.is_empty() {
        None
    } else {
        Some(RawSocket::open(
            nic.index,
            ETHERTYPE_IPV6,
            Some(&na_filter()),
        )?)
    };
    let send_round = || -> io::Result<()> {
        if let Some(s) = &arp {
            for a in &v4 {
                s.send(&arp_probe_frame(nic.mac, *a))?;
            }
        }
        if let Some(s) = &nd {
            for a in &v6 {
                s.send(&dad_ns_frame(nic.mac, *a))?;
            }
        }
        Ok(())
    };
    let start = Instant::now();
    let deadline = start + spec.window;
    send_round()?;
    {
        let seen = std::sync::Mutex::new(&mut seen);
        let record = |ip: IpAddr, mac: Mac| {
            if mac != nic.mac
                && let Some(m) = seen
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner)
                    .get_mut(&ip)
            {
                m.entry(mac).or_insert(Service::Unchecked);
            }
        };
        let arp_rx = async {
            if let Some(s) = &arp {
                collect(
                    s,
                    deadline,
                    |f| {
                        if let Some((ip, mac)) = parse_arp_sender(f) {
                            record(ip.into(), mac);
                        }
                    },
                    || false,
                )
                .await?;
            }
            Ok::<_, io::Error>(())
        };
        let nd_rx = async {
            if let Some(s) = &nd {
                collect(
                    s,
                    deadline,
                    |f| {
                        if let Some((ip, mac)) = parse_na(f) {
                            record(ip.into(), mac);
                        }
                    },
                    || false,
                )
                .await?;
            }
            Ok::<_, io::Error>(())
        };
        let resend = async {
            tokio::time::sleep_until(start + spec.window / 2).await;
            send_round()
        };
        let (a, b, c) = tokio::join!(arp_rx, nd_rx, resend);
        a?;
        b?;
        c?;
    }
    drop((arp, nd));
    if let Some(port) = spec.service_port {
        check_service(nic, port, spec.window, &mut seen).await?;
    }
    Ok(seen
        .into_iter()
        .map(|(address, answers)| ProbedAddress {
            address,
            answers: answers
                .into_iter()
                .map(|(mac, service)| ProbeAnswer {
                    mac: MacAddr(mac),
                    service,
                })
                .collect(),
        })
        .collect())
}

/// Sends a SYN to `port` on every answer of `seen` (from this NIC's own
/// address of the family) and records what came back.
async fn check_service(
    nic: Nic,
    port: u16,
    window: Duration,
    seen: &mut BTreeMap<IpAddr, BTreeMap<Mac, Service>>,
) -> io::Result<()> {
    let sport: u16 = rand::random_range(49_152..=65_000);
    let seq: u32 = rand::random();
    let mut syns: Vec<(Mac, Segment)> = Vec::new();
    for (addr, answers) in seen.iter() {
        let src: Option<IpAddr> = match addr {
            IpAddr::V4(_) => nic.own_v4.map(Into::into),
            IpAddr::V6(_) => nic.own_v6.map(Into::into),
        };
        let Some(src) = src else { continue };
        for mac in answers.keys() {
            syns.push((
                *mac,
                Segment {
                    src,
                    dst: *addr,
                    sport,
                    dport: port,
                    seq,
                    flags: TCP_SYN,
                },
            ));
        }
    }
    if syns.is_empty() {
        return Ok(());
    }
    for (mac, s) in &syns {
        if let Some(e) = seen.get_mut(&s.dst).and_then(|m| m.get_mut(mac)) {
            *e = Service::Silent;
        }
    }
    let tcp4 = if syns.iter().any(|(_, s)| s.dst.is_ipv4()) {
        Some(RawSocket::open(
            nic.index,
            ETHERTYPE_IPV4,
            Some(&tcp4_filter(sport)),
        )?)
    } else {
        None
    };
    let tcp6 = if syns.iter().any(|(_, s)| s.dst.is_ipv6()) {
        Some(RawSocket::open(
            nic.index,
            ETHERTYPE_IPV6,
            Some(&tcp6_filter(sport)),
        )?)
    } else {
        None
    };
    let send = |which: &[(Mac, Segment)]| -> io::Result<()> {
        for (mac, s) in which {
            let sock = if s.dst.is_ipv4() { &tcp4 } else { &tcp6 };
            if let Some(sock) = sock {
                sock.send(&syn_frame(nic.mac, *mac, s))?;
            }
        }
        Ok(())
    };
    send(&syns)?;
    let start = Instant::now();
    let deadline = start + window;
    let open = std::sync::Mutex::new(&mut *seen);
    let settled = || {
        !open
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .values()
            .flat_map(|m| m.values())
            .any(|s| *s == Service::Silent)
    };
    let on = |f: &[u8]| {
        let Some((s, mac)) = parse_tcp(f) else { return };
        if s.sport != port || s.dport != sport {
            return;
        }
        let state = if s.flags & TCP_RST != 0 {
            Service::Closed
        } else if s.flags & (TCP_SYN | TCP_ACK) == TCP_SYN | TCP_ACK {
            Service::Open
        } else {
            return;
        };
        if let Some(e) = open
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .get_mut(&s.src)
            .and_then(|m| m.get_mut(&mac))
            && *e == Service::Silent
        {
            *e = state;
        }
    };
    let receive = async {
        let rx4 = async {
            match &tcp4 {
                Some(s) => collect(s, deadline, &on, &settled).await,
                None => Ok(()),
            }
        };
        let rx6 = async {
            match &tcp6 {
                Some(s) => collect(s, deadline, &on, &settled).await,
                None => Ok(()),
            }
        };
        let (a, b) = tokio::join!(rx4, rx6);
        a.and(b)
    };
    // Halfway, the SYNs still unanswered go again (a lost frame); the
    // receivers end as soon as nothing is pending.
    let resend = async {
        tokio::time::sleep_until(start + window / 2).await;
        let again: Vec<(Mac, Segment)> = syns
            .iter()
            .filter(|(mac, s)| {
                open.lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner)
                    .get(&s.dst)
                    .and_then(|m| m.get(mac))
                    .is_some_and(|st| *st == Service::Silent)
            })
            .cloned()
            .collect();
        send(&again)?;
        std::future::pending::<io::Result<()>>().await
    };
    tokio::select! {
        r = receive => r,
        r = resend => r,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MAC: Mac = [0x02, 0x00, 0xc6, 0x12, 0x00, 0x02];
    const PEER: Mac = [0x02, 0x00, 0xc6, 0x12, 0x00, 0x03];

    #[test]
    fn arp_probe_bytes() {
        let f = arp_probe_frame(MAC, Ipv4Addr::new(198, 18, 1, 50));
        #[rustfmt::skip]
        let want: [u8; 42] = [
            0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x02, 0x00, 0xc6, 0x12, 0x00, 0x02, 0x08, 0x06,
            0x00, 0x01, 0x08, 0x00, 6, 4, 0x00, 0x01,
            0x02, 0x00, 0xc6, 0x12, 0x00, 0x02, 0, 0, 0, 0,
            0, 0, 0, 0, 0, 0, 198, 18, 1, 50,
        ];
        assert_eq!(f[..42], want);
        assert_eq!(f[42..], [0; 18]);
        // A probe says nothing about who holds an address.
        assert_eq!(parse_arp_sender(&f), None);
    }

    #[test]
    fn arp_answers_name_their_sender() {
        // The reply Linux sends to a probe: sender the address, target IP 0.
        let mut f = arp_probe_frame(PEER, Ipv4Addr::new(198, 18, 1, 50));
        f[20..22].copy_from_slice(&2u16.to_be_bytes());
        f[28..32].copy_from_slice(&[198, 18, 1, 50]);
        f[38..42].copy_from_slice(&[0, 0, 0, 0]);
        assert_eq!(
            parse_arp_sender(&f),
            Some((Ipv4Addr::new(198, 18, 1, 50), PEER))
        );
        assert_eq!(parse_arp_sender(&f[..41]), None, "short");
        let mut other = f;
        other[12] = 0x86;
        assert_eq!(parse_arp_sender(&other), None, "not ARP");
    }

    #[test]
    fn dad_solicitation_bytes() {
        let target: Ipv6Addr = "2001:2:0:1::50".parse().unwrap();
        let f = dad_ns_frame(MAC, target);
        assert_eq!(f[0..6], [0x33, 0x33, 0xff, 0x00, 0x00, 0x50]);
        assert_eq!(f[12..14], [0x86, 0xdd]);
        assert_eq!(f[14..22], [0x60, 0, 0, 0, 0, 24, 58, 255]);
        assert_eq!(f[22..38], [0; 16], "source ::");
        assert_eq!(
            f[38..54],
            "ff02::1:ff00:50".parse::<Ipv6Addr>().unwrap().octets()
        );
        assert_eq!(f[54], 135);
        assert_eq!(f[62..78], target.octets());
        // The checksum sums to zero over the pseudo-header and message.
        let dst: [u8; 16] = f[38..54].try_into().unwrap();
        assert_eq!(
            checksum(&[
                &[0; 16],
                &dst,
                &24u32.to_be_bytes(),
                &[0, 0, 0, 58],
                &f[54..]
            ]),
            0
        );
    }

    /// The NA Linux sends to a DAD solicitation (built here by hand).
    fn na(target: Ipv6Addr, from: Mac, tlla: Option<Mac>) -> Vec<u8> {
        let mut icmp = vec![ICMPV6_NA, 0, 0, 0, 0x20, 0, 0, 0];
        icmp.extend_from_slice(&target.octets());
        if let Some(m) = tlla {
            icmp.extend_from_slice(&[2, 1]);
            icmp.extend_from_slice(&m);
        }
        let mut f = vec![0x33, 0x33, 0, 0, 0, 1];
        f.extend_from_slice(&from);
        f.extend_from_slice(&[0x86, 0xdd, 0x60, 0, 0, 0]);
        f.extend_from_slice(&(icmp.len() as u16).to_be_bytes());
        f.extend_from_slice(&[58, 255]);
        f.extend_from_slice(&target.octets());
        f.extend_from_slice(&"ff02::1".parse::<Ipv6Addr>().unwrap().octets());
        f.extend_from_slice(&icmp);
        f
    }

    #[test]
    fn advertisements_name_the_advertised_mac() {
        let t: Ipv6Addr = "2001:2:0:1::50".parse().unwrap();
        let other = [0x02, 0, 0, 0, 0, 0x99];
        assert_eq!(parse_na(&na(t, other, Some(PEER))), Some((t, PEER)));
        assert_eq!(parse_na(&na(t, PEER, None)), Some((t, PEER)));
        let mut f = na(t, PEER, None);
        f[54] = ICMPV6_NS;
        assert_eq!(parse_na(&f), None, "a solicitation");
        let mut f = na(t, PEER, None);
        f[21] = 64;
        assert_eq!(parse_na(&f), None, "hop limit not 255");
        assert_eq!(parse_na(&na(t, PEER, None)[..70]), None, "truncated");
    }

    #[test]
    fn syn_frames_carry_valid_checksums_and_parse_back() {
        for (src, dst) in [
            (
                IpAddr::from([198, 18, 0, 2]),
                IpAddr::from([198, 18, 1, 50]),
            ),
            (
                "2001:2::2".parse().unwrap(),
                "2001:2:0:1::50".parse().unwrap(),
            ),
        ] {
            let s = Segment {
                src,
                dst,
                sport: 50_000,
                dport: 3260,
                seq: 0x0102_0304,
                flags: TCP_SYN,
            };
            let f = syn_frame(MAC, PEER, &s);
            assert_eq!(f[0..6], PEER);
            assert_eq!(f[6..12], MAC);
            assert_eq!(parse_tcp(&f), Some((s, MAC)));
            let (ip, tcp) = if src.is_ipv4() {
                assert_eq!(checksum(&[&f[14..34]]), 0, "IPv4 header");
                assert_eq!(f.len(), ETH_MIN_FRAME);
                (&f[14..34], &f[34..54])
            } else {
                (&f[14..54], &f[54..74])
            };
            let pseudo = match (src, dst) {
                (IpAddr::V4(a), IpAddr::V4(b)) => {
                    [&a.octets()[..], &b.octets(), &[0, 6, 0, 20]].concat()
                }
                (IpAddr::V6(a), IpAddr::V6(b)) => [
                    &a.octets()[..],
                    &b.octets(),
                    &20u32.to_be_bytes(),
                    &[0, 0, 0, 6],
                ]
                .concat(),
                _ => unreachable!(),
            };
            assert_eq!(checksum(&[&pseudo, tcp]), 0, "TCP over {ip:?}");
        }
    }

    #[test]
    fn fragments_and_other_protocols_are_not_segments() {
        let s = Segment {
            src: IpAddr::from([198, 18, 0, 2]),
            dst: IpAddr::from([198, 18, 1, 50]),
            sport: 1,
            dport: 2,
            seq: 3,
            flags: TCP_SYN,
        };
        let mut f = syn_frame(MAC, PEER, &s);
        f[14 + 7] = 1; // fragment offset 1
        assert_eq!(parse_tcp(&f), None);
        let mut f = syn_frame(MAC, PEER, &s);
        f[14 + 9] = 17;
        assert_eq!(parse_tcp(&f), None);
    }

    #[test]
    fn solicited_node_groups() {
        assert_eq!(
            solicited_node("2001:db8::1:2:3".parse().unwrap()),
            "ff02::1:ff02:3".parse::<Ipv6Addr>().unwrap()
        );
    }
}
