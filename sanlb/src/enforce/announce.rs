//! Announcing a storage address to the hosts of the segment: gratuitous ARP
//! (request and reply forms) for IPv4, an unsolicited Neighbor Advertisement
//! with the Override flag for IPv6.
//!
//! Written by hand on an `AF_PACKET` socket: each frame is a few dozen fixed
//! bytes, and the crates that could send them (pnet and the like) are large
//! packet toolkits whose ARP/NDP layers are not maintained better than these
//! lines; the kernel offers no call that sends a gratuitous ARP or an
//! unsolicited NA for a given address. Building the whole Ethernet frame on
//! one raw socket also keeps IPv4 and IPv6 on the same path and independent of
//! the kernel's source address selection.

use std::{
    io,
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
    os::fd::{AsRawFd as _, FromRawFd as _, OwnedFd},
};

/// An Ethernet (MAC) address.
pub(crate) type Mac = [u8; 6];

const ETH_BROADCAST: Mac = [0xff; 6];
const ETHERTYPE_IPV4: u16 = 0x0800;
const ETHERTYPE_ARP: u16 = 0x0806;
const ETHERTYPE_IPV6: u16 = 0x86dd;
const ARP_HTYPE_ETHERNET: u16 = 1;
/// ARP operation codes (RFC 826).
pub(crate) const ARP_REQUEST: u16 = 1;
/// See [`ARP_REQUEST`].
pub(crate) const ARP_REPLY: u16 = 2;
/// Minimum Ethernet frame without the FCS: drivers pad shorter frames, but
/// not all of them, so ARP frames are padded here.
const ETH_MIN_FRAME: usize = 60;
const IPPROTO_ICMPV6: u8 = 58;
const ICMPV6_NEIGHBOR_ADVERTISEMENT: u8 = 136;
/// Override flag of a Neighbor Advertisement (RFC 4861 §4.4), in the first
/// byte of the flags word; Router (0x80) and Solicited (0x40) stay clear.
const NA_FLAG_OVERRIDE: u8 = 0x20;
/// NDP option: target link-layer address.
const ND_OPT_TARGET_LLADDR: u8 = 2;
/// Receivers drop NDP messages whose hop limit is not 255 (RFC 4861 §7.1.2).
const NDP_HOP_LIMIT: u8 = 255;
const ALL_NODES: Ipv6Addr = Ipv6Addr::new(0xff02, 0, 0, 0, 0, 0, 0, 1);
/// 33:33 + the low 32 bits of ff02::1 (RFC 2464 §7).
const ALL_NODES_MAC: Mac = [0x33, 0x33, 0, 0, 0, 1];

/// A gratuitous ARP for `ip` at `mac`: Ethernet broadcast, sender and target
/// protocol address both `ip`. The request form leaves the target hardware
/// address zero (RFC 5227 announcement); the reply form sets it to `mac`
/// (RFC 5944 §4.6), which is what Linux recognises as a gratuitous reply.
pub(crate) fn garp_frame(op: u16, mac: Mac, ip: Ipv4Addr) -> [u8; ETH_MIN_FRAME] {
    let mut f = [0u8; ETH_MIN_FRAME];
    f[0..6].copy_from_slice(&ETH_BROADCAST);
    f[6..12].copy_from_slice(&mac);
    f[12..14].copy_from_slice(&ETHERTYPE_ARP.to_be_bytes());
    f[14..16].copy_from_slice(&ARP_HTYPE_ETHERNET.to_be_bytes());
    f[16..18].copy_from_slice(&ETHERTYPE_IPV4.to_be_bytes());
    f[18] = 6; // hardware address length
    f[19] = 4; // protocol address length
    f[20..22].copy_from_slice(&op.to_be_bytes());
    f[22..28].copy_from_slice(&mac);
    f[28..32].copy_from_slice(&ip.octets());
    if op == ARP_REPLY {
        f[32..38].copy_from_slice(&mac);
    }
    f[38..42].copy_from_slice(&ip.octets());
    f
}

/// Length of an unsolicited NA frame: Ethernet 14 + IPv6 40 + NA 24 + option 8.
const NA_FRAME_LEN: usize = 14 + 40 + 32;

/// An unsolicited Neighbor Advertisement for `ip` at `mac` (RFC 4861 §7.2.6):
/// from `ip` to all-nodes ff02::1, hop limit 255, Override set, Solicited and
/// Router clear, with the target link-layer address option.
pub(crate) fn unsolicited_na_frame(mac: Mac, ip: Ipv6Addr) -> [u8; NA_FRAME_LEN] {
    let mut f = [0u8; NA_FRAME_LEN];
    f[0..6].copy_from_slice(&ALL_NODES_MAC);
    f[6..12].copy_from_slice(&mac);
    f[12..14].copy_from_slice(&ETHERTYPE_IPV6.to_be_bytes());
    let ip6 = &mut f[14..54];
    ip6[0] = 0x60; // version 6, traffic class and flow label 0
    ip6[4..6].copy_from_slice(&32u16.to_be_bytes()); // payload length
    ip6[6] = IPPROTO_ICMPV6;
    ip6[7] = NDP_HOP_LIMIT;
    ip6[8..24].copy_from_slice(&ip.octets());
    ip6[24..40].copy_from_slice(&ALL_NODES.octets());
    let na = &mut f[54..];
    na[0] = ICMPV6_NEIGHBOR_ADVERTISEMENT;
    na[4] = NA_FLAG_OVERRIDE;
    na[8..24].copy_from_slice(&ip.octets());
    na[24] = ND_OPT_TARGET_LLADDR;
    na[25] = 1; // option length in units of 8 bytes
    na[26..32].copy_from_slice(&mac);
    let sum = icmpv6_checksum(ip, ALL_NODES, na);
    na[2..4].copy_from_slice(&sum.to_be_bytes());
    f
}

/// The ICMPv6 checksum (RFC 4443 §2.3): one's complement sum over the IPv6
/// pseudo-header and the message (whose checksum field is zero).
fn icmpv6_checksum(src: Ipv6Addr, dst: Ipv6Addr, msg: &[u8]) -> u16 {
    let len = u32::try_from(msg.len()).expect("an ICMPv6 message fits in 32 bits");
    let mut pseudo = [0u8; 40];
    pseudo[0..16].copy_from_slice(&src.octets());
    pseudo[16..32].copy_from_slice(&dst.octets());
    pseudo[32..36].copy_from_slice(&len.to_be_bytes());
    pseudo[39] = IPPROTO_ICMPV6;
    let mut sum: u32 = 0;
    for chunk in pseudo.chunks(2).chain(msg.chunks(2)) {
        let hi = u32::from(chunk[0]) << 8;
        sum += hi | chunk.get(1).copied().map_or(0, u32::from);
    }
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

/// A send-only `AF_PACKET` socket. It belongs to the network namespace it was
/// opened in, whichever thread sends on it later.
#[derive(Debug)]
pub(crate) struct PacketSocket(OwnedFd);

impl PacketSocket {
    /// Opens the socket (needs CAP_NET_RAW). Protocol 0: it receives nothing.
    pub(crate) fn open() -> io::Result<Self> {
        // SAFETY: plain socket(2) call; the returned descriptor is checked and
        // then owned by `OwnedFd`.
        let fd = unsafe { libc::socket(libc::AF_PACKET, libc::SOCK_RAW | libc::SOCK_CLOEXEC, 0) };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: `fd` is a fresh, valid descriptor nobody else owns.
        Ok(Self(unsafe { OwnedFd::from_raw_fd(fd) }))
    }

    /// Sends the announcement frames of one round for `addr`: a gratuitous ARP
    /// request and reply for IPv4, one unsolicited NA for IPv6. Never blocks
    /// (`MSG_DONTWAIT`).
    pub(crate) fn announce(&self, ifindex: u32, mac: Mac, addr: IpAddr) -> io::Result<()> {
        match addr {
            IpAddr::V4(ip) => {
                self.send(ifindex, ETHERTYPE_ARP, &garp_frame(ARP_REQUEST, mac, ip))?;
                self.send(ifindex, ETHERTYPE_ARP, &garp_frame(ARP_REPLY, mac, ip))
            }
            IpAddr::V6(ip) => self.send(ifindex, ETHERTYPE_IPV6, &unsolicited_na_frame(mac, ip)),
        }
    }

    fn send(&self, ifindex: u32, ethertype: u16, frame: &[u8]) -> io::Result<()> {
        let ifindex = i32::try_from(ifindex)
            .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "interface index"))?;
        // SAFETY: sockaddr_ll is plain old data; all-zero is a valid value.
        let mut sll: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
        sll.sll_family = libc::AF_PACKET as u16;
        sll.sll_protocol = ethertype.to_be();
        sll.sll_ifindex = ifindex;
        sll.sll_halen = 6;
        sll.sll_addr[..6].copy_from_slice(&frame[..6]);
        // SAFETY: the buffer and the address are valid for the given lengths
        // for the duration of the call.
        let sent = unsafe {
            libc::sendto(
                self.0.as_raw_fd(),
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
        if sent as usize != frame.len() {
            return Err(io::Error::new(io::ErrorKind::WriteZero, "short send"));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MAC: Mac = [0x02, 0x00, 0xc6, 0x12, 0x00, 0x02];

    #[test]
    fn garp_request_bytes() {
        let f = garp_frame(ARP_REQUEST, MAC, Ipv4Addr::new(198, 18, 1, 50));
        #[rustfmt::skip]
        let want: [u8; 42] = [
            0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x02, 0x00, 0xc6, 0x12, 0x00, 0x02, 0x08, 0x06,
            0x00, 0x01, 0x08, 0x00, 6, 4, 0x00, 0x01,
            0x02, 0x00, 0xc6, 0x12, 0x00, 0x02, 198, 18, 1, 50,
            0, 0, 0, 0, 0, 0, 198, 18, 1, 50,
        ];
        assert_eq!(f[..42], want);
        assert_eq!(f[42..], [0; 18], "padding to the Ethernet minimum");
    }

    #[test]
    fn garp_reply_sets_target_hardware_address() {
        let f = garp_frame(ARP_REPLY, MAC, Ipv4Addr::new(198, 18, 1, 50));
        assert_eq!(f[20..22], [0, 2]);
        assert_eq!(f[22..28], MAC);
        assert_eq!(f[32..38], MAC);
        assert_eq!(f[28..32], f[38..42]);
    }

    #[test]
    fn unsolicited_na_bytes() {
        let ip: Ipv6Addr = "2001:2:0:1::50".parse().unwrap();
        let f = unsolicited_na_frame(MAC, ip);
        assert_eq!(f[0..6], [0x33, 0x33, 0, 0, 0, 1]);
        assert_eq!(f[6..12], MAC);
        assert_eq!(f[12..14], [0x86, 0xdd]);
        assert_eq!(f[14..22], [0x60, 0, 0, 0, 0, 32, 58, 255]);
        assert_eq!(f[22..38], ip.octets());
        assert_eq!(f[38..54], ALL_NODES.octets());
        assert_eq!(f[54..58], [136, 0, f[56], f[57]]);
        assert_eq!(f[58..62], [0x20, 0, 0, 0], "override only");
        assert_eq!(f[62..78], ip.octets());
        assert_eq!(f[78..86], [2, 1, 0x02, 0x00, 0xc6, 0x12, 0x00, 0x02]);
        // Summing the pseudo-header and the message with its checksum in
        // place gives 0xffff, whose complement is 0.
        assert_eq!(icmpv6_checksum(ip, ALL_NODES, &f[54..]), 0);
    }

    #[test]
    fn icmpv6_checksum_known_vector() {
        // An echo request ::1 -> ::1, id 0x1234, seq 1, payload "abcd",
        // checksum computed independently with Python's one's-complement sum.
        let msg = [128, 0, 0, 0, 0x12, 0x34, 0, 1, b'a', b'b', b'c', b'd'];
        assert_eq!(
            icmpv6_checksum(Ipv6Addr::LOCALHOST, Ipv6Addr::LOCALHOST, &msg),
            0xa8bb
        );
    }

    #[test]
    fn icmpv6_checksum_odd_length() {
        let odd = [1u8, 2, 3];
        let padded = [1u8, 2, 3, 0];
        // The pseudo-header carries the length, so compare sums by hand:
        // an odd trailing byte counts as the high byte of a zero-padded word.
        let a = icmpv6_checksum(Ipv6Addr::UNSPECIFIED, Ipv6Addr::UNSPECIFIED, &odd);
        let b = icmpv6_checksum(Ipv6Addr::UNSPECIFIED, Ipv6Addr::UNSPECIFIED, &padded);
        // The lengths differ by one, which the pseudo-header adds to the sum.
        assert_eq!(a.wrapping_sub(1), b);
    }
}
