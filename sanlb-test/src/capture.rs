//! A raw packet capture on one interface, and parsers for the frames that
//! announce an address: ARP and ICMPv6 Neighbor Advertisements. The parsers
//! read the wire format on their own (RFC 826, RFC 4861), independently of
//! the builders in `sanlb::enforce`.

use std::{
    ffi::CString,
    io,
    net::{Ipv4Addr, Ipv6Addr},
    os::fd::{AsRawFd as _, FromRawFd as _, OwnedFd},
    time::{Duration, Instant},
};

use crate::Mac;

/// SIOCGSTAMPNS(_OLD): the kernel's receive time of the last frame read.
const SIOCGSTAMPNS: libc::c_ulong = 0x8907;

/// A frame and the kernel's receive time (CLOCK_REALTIME).
pub struct Frame {
    /// The frame from the Ethernet header on.
    pub bytes: Vec<u8>,
    /// When the kernel received it (since the Unix epoch).
    pub stamp: Duration,
}

/// Captures every frame of an interface (ETH_P_ALL), from its creation on.
pub struct Capture(OwnedFd);

impl Capture {
    /// Opens the capture on `ifname` of the calling thread's namespace.
    pub fn open(ifname: &str) -> io::Result<Self> {
        let proto = (libc::ETH_P_ALL as u16).to_be();
        // SAFETY: socket(2); the descriptor is checked and then owned.
        let fd = unsafe {
            libc::socket(
                libc::AF_PACKET,
                libc::SOCK_RAW | libc::SOCK_CLOEXEC,
                i32::from(proto),
            )
        };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: a fresh descriptor nobody else owns.
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
        let name = CString::new(ifname).unwrap();
        // SAFETY: a valid C string.
        let index = unsafe { libc::if_nametoindex(name.as_ptr()) };
        if index == 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: all-zero is a valid sockaddr_ll.
        let mut sll: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
        sll.sll_family = libc::AF_PACKET as u16;
        sll.sll_protocol = proto;
        sll.sll_ifindex = index as i32;
        // SAFETY: valid address of the given length.
        let r = unsafe {
            libc::bind(
                fd.as_raw_fd(),
                (&raw const sll).cast(),
                std::mem::size_of::<libc::sockaddr_ll>() as libc::socklen_t,
            )
        };
        if r != 0 {
            return Err(io::Error::last_os_error());
        }
        // The first SIOCGSTAMPNS turns receive stamps on (it fails with
        // ENOENT: nothing read yet). Without it now, frames that arrive
        // before the first read would get the time they were read. The
        // kernel switches stamping on in deferred work: wait a little before
        // the frames that matter.
        let mut ts = libc::timespec {
            tv_sec: 0,
            tv_nsec: 0,
        };
        // SAFETY: SIOCGSTAMPNS writes at most one timespec.
        unsafe { libc::ioctl(fd.as_raw_fd(), SIOCGSTAMPNS, &raw mut ts) };
        let tv = libc::timeval {
            tv_sec: 0,
            tv_usec: 20_000,
        };
        // SAFETY: a valid timeval of the given length.
        let r = unsafe {
            libc::setsockopt(
                fd.as_raw_fd(),
                libc::SOL_SOCKET,
                libc::SO_RCVTIMEO,
                (&raw const tv).cast(),
                std::mem::size_of::<libc::timeval>() as libc::socklen_t,
            )
        };
        if r != 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(Self(fd))
    }

    /// Every frame received until `window` has passed.
    pub fn collect(&self, window: Duration) -> Vec<Frame> {
        let end = Instant::now() + window;
        let mut frames = Vec::new();
        let mut buf = vec![0u8; 65536];
        while Instant::now() < end {
            // SAFETY: `buf` is valid for writes of its length.
            let n =
                unsafe { libc::recv(self.0.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len(), 0) };
            if n < 0 {
                continue; // the 20 ms receive timeout, or EINTR
            }
            let mut ts = libc::timespec {
                tv_sec: 0,
                tv_nsec: 0,
            };
            // SAFETY: SIOCGSTAMPNS writes one timespec.
            let r = unsafe { libc::ioctl(self.0.as_raw_fd(), SIOCGSTAMPNS, &raw mut ts) };
            assert_eq!(r, 0, "SIOCGSTAMPNS: {}", io::Error::last_os_error());
            frames.push(Frame {
                bytes: buf[..n as usize].to_vec(),
                stamp: Duration::new(ts.tv_sec as u64, ts.tv_nsec as u32),
            });
        }
        frames
    }
}

/// An Ethernet ARP frame (IPv4 over Ethernet).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Arp {
    /// Ethernet destination.
    pub eth_dst: Mac,
    /// Ethernet source.
    pub eth_src: Mac,
    /// 1 request, 2 reply.
    pub op: u16,
    /// Sender hardware address.
    pub sha: Mac,
    /// Sender protocol address.
    pub spa: Ipv4Addr,
    /// Target hardware address.
    pub tha: Mac,
    /// Target protocol address.
    pub tpa: Ipv4Addr,
}

fn mac(b: &[u8]) -> Mac {
    b.try_into().unwrap()
}

/// Parses an ARP frame; None for anything else.
pub fn parse_arp(f: &[u8]) -> Option<Arp> {
    if f.len() < 42 || f[12..14] != [0x08, 0x06] {
        return None;
    }
    let a = &f[14..42];
    // htype Ethernet, ptype IPv4, hlen 6, plen 4
    assert_eq!(a[0..6], [0, 1, 8, 0, 6, 4], "ARP header of {f:02x?}");
    let ip = |b: &[u8]| Ipv4Addr::new(b[0], b[1], b[2], b[3]);
    Some(Arp {
        eth_dst: mac(&f[0..6]),
        eth_src: mac(&f[6..12]),
        op: u16::from_be_bytes([a[6], a[7]]),
        sha: mac(&a[8..14]),
        spa: ip(&a[14..18]),
        tha: mac(&a[18..24]),
        tpa: ip(&a[24..28]),
    })
}

/// An ICMPv6 Neighbor Advertisement in an Ethernet frame.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Na {
    /// Ethernet destination.
    pub eth_dst: Mac,
    /// Ethernet source.
    pub eth_src: Mac,
    /// IPv6 source.
    pub src: Ipv6Addr,
    /// IPv6 destination.
    pub dst: Ipv6Addr,
    /// IPv6 hop limit (255 for neighbour discovery).
    pub hop_limit: u8,
    /// The R flag.
    pub router: bool,
    /// The S flag.
    pub solicited: bool,
    /// The O flag.
    pub override_: bool,
    /// The address advertised.
    pub target: Ipv6Addr,
    /// The target link-layer address option.
    pub tlla: Option<Mac>,
    /// Whether the ICMPv6 checksum is right.
    pub checksum_ok: bool,
}

/// Parses a Neighbor Advertisement (no extension headers); None for anything
/// else.
pub fn parse_na(f: &[u8]) -> Option<Na> {
    if f.len() < 14 + 40 + 24 || f[12..14] != [0x86, 0xdd] {
        return None;
    }
    let ip6 = &f[14..54];
    let payload_len = usize::from(u16::from_be_bytes([ip6[4], ip6[5]]));
    let icmp = f.get(54..54 + payload_len)?;
    if ip6[6] != 58 || icmp.len() < 24 || icmp[0] != 136 || icmp[1] != 0 {
        return None;
    }
    let addr = |b: &[u8]| Ipv6Addr::from(<[u8; 16]>::try_from(b).unwrap());
    let (src, dst) = (addr(&ip6[8..24]), addr(&ip6[24..40]));
    let mut tlla = None;
    let mut opts = &icmp[24..];
    while opts.len() >= 8 {
        let len = usize::from(opts[1]) * 8;
        if len == 0 || len > opts.len() {
            break;
        }
        if opts[0] == 2 {
            tlla = Some(mac(&opts[2..8]));
        }
        opts = &opts[len..];
    }
    Some(Na {
        eth_dst: mac(&f[0..6]),
        eth_src: mac(&f[6..12]),
        src,
        dst,
        hop_limit: ip6[7],
        router: icmp[4] & 0x80 != 0,
        solicited: icmp[4] & 0x40 != 0,
        override_: icmp[4] & 0x20 != 0,
        target: addr(&icmp[8..24]),
        tlla,
        checksum_ok: ones_complement_sum(src, dst, icmp) == 0xffff,
    })
}

/// The one's complement sum of the IPv6 pseudo-header and an ICMPv6 message
/// including its checksum: 0xffff when the checksum is right.
fn ones_complement_sum(src: Ipv6Addr, dst: Ipv6Addr, msg: &[u8]) -> u16 {
    let mut bytes = Vec::with_capacity(40 + msg.len() + 1);
    bytes.extend_from_slice(&src.octets());
    bytes.extend_from_slice(&dst.octets());
    bytes.extend_from_slice(&(msg.len() as u32).to_be_bytes());
    bytes.extend_from_slice(&[0, 0, 0, 58]);
    bytes.extend_from_slice(msg);
    if bytes.len() % 2 == 1 {
        bytes.push(0);
    }
    let mut sum: u64 = bytes
        .chunks(2)
        .map(|w| u64::from(u16::from_be_bytes([w[0], w[1]])))
        .sum();
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    sum as u16
}
