//! Crafting Ethernet frames for the data-plane tests and benchmarks.

/// 802.1Q tag protocol identifier.
pub const TPID_8021Q: u16 = 0x8100;
/// 802.1ad (QinQ outer) tag protocol identifier.
pub const TPID_8021AD: u16 = 0x88a8;

/// IPv4 layer.
#[derive(Clone, Debug)]
pub struct V4 {
    pub src: [u8; 4],
    pub dst: [u8; 4],
    /// Options, padded by the builder to a multiple of 4.
    pub options: Vec<u8>,
    /// Flags and fragment offset field (host order).
    pub frag: u16,
    pub proto: u8,
    /// Overrides of computed fields, to build malformed packets.
    pub version: u8,
    pub ihl: Option<u8>,
    pub tot_len: Option<u16>,
}

/// IPv6 extension header.
#[derive(Clone, Debug)]
pub struct Ext {
    /// Its own type (0, 43, 44, 51, 60, 135, 139, 140, or anything).
    pub kind: u8,
    /// Hdr Ext Len field (ignored for 44, whose length is fixed at 8).
    pub len: u8,
    /// Fragment header: offset and flags field (host order).
    pub frag: u16,
}

/// IPv6 layer.
#[derive(Clone, Debug)]
pub struct V6 {
    pub src: [u8; 16],
    pub dst: [u8; 16],
    pub ext: Vec<Ext>,
    /// Next header after the extension chain.
    pub proto: u8,
    pub version: u8,
    pub payload_len: Option<u16>,
}

/// TCP layer.
#[derive(Clone, Debug)]
pub struct Tcp {
    pub sport: u16,
    pub dport: u16,
    /// Options, padded by the builder to a multiple of 4.
    pub options: Vec<u8>,
    /// Overrides the data offset (in 32-bit words).
    pub doff: Option<u8>,
    pub payload: Vec<u8>,
}

/// Layer 3 and above.
#[derive(Clone, Debug)]
pub enum L3 {
    V4(V4, L4),
    V6(V6, L4),
    /// Another ethertype with an opaque body.
    Other(u16, Vec<u8>),
}

/// Layer 4.
#[derive(Clone, Debug)]
pub enum L4 {
    Tcp(Tcp),
    Raw(Vec<u8>),
}

/// An Ethernet frame.
#[derive(Clone, Debug)]
pub struct Frame {
    /// Tag protocol identifiers, outermost first.
    pub vlans: Vec<u16>,
    pub l3: L3,
    /// Bytes after the IP packet (Ethernet padding).
    pub trailer: Vec<u8>,
}

pub const HOST_MAC: [u8; 6] = [0x02, 0, 0xc6, 0x12, 0, 0x0a];
pub const GW_MAC: [u8; 6] = [0x02, 0, 0xc6, 0x12, 0, 0x01];

pub const HOST4: [u8; 4] = [198, 18, 0, 10];
pub const TARGET4: [u8; 4] = [198, 18, 1, 50];
pub const HOST6: [u8; 16] = [
    0x20, 0x01, 0x0d, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0x0a,
];
pub const TARGET6: [u8; 16] = [
    0x20, 0x01, 0x0d, 0xb8, 0, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0x50,
];

impl Tcp {
    pub fn new(sport: u16, dport: u16, payload: Vec<u8>) -> Self {
        Self {
            sport,
            dport,
            options: Vec::new(),
            doff: None,
            payload,
        }
    }

    fn build(&self) -> Vec<u8> {
        let mut opts = self.options.clone();
        while !opts.len().is_multiple_of(4) {
            opts.push(1); // NOP
        }
        let doff = self.doff.unwrap_or((5 + opts.len() / 4) as u8);
        let mut b = Vec::with_capacity(20 + opts.len() + self.payload.len());
        b.extend_from_slice(&self.sport.to_be_bytes());
        b.extend_from_slice(&self.dport.to_be_bytes());
        b.extend_from_slice(&0x1000_0000u32.to_be_bytes()); // seq
        b.extend_from_slice(&0u32.to_be_bytes()); // ack
        b.push(doff << 4);
        b.push(0x18); // PSH ACK
        b.extend_from_slice(&64240u16.to_be_bytes());
        b.extend_from_slice(&[0, 0, 0, 0]); // checksum (not checked), urgent
        b.extend_from_slice(&opts);
        b.extend_from_slice(&self.payload);
        b
    }
}

impl L4 {
    fn build(&self) -> Vec<u8> {
        match self {
            L4::Tcp(t) => t.build(),
            L4::Raw(b) => b.clone(),
        }
    }
}

impl V4 {
    pub fn new(src: [u8; 4], dst: [u8; 4]) -> Self {
        Self {
            src,
            dst,
            options: Vec::new(),
            frag: 0x4000, // DF
            proto: 6,
            version: 4,
            ihl: None,
            tot_len: None,
        }
    }

    fn build(&self, l4: &[u8]) -> Vec<u8> {
        let mut opts = self.options.clone();
        while !opts.len().is_multiple_of(4) {
            opts.push(0); // EOL
        }
        let hlen = 20 + opts.len();
        let ihl = self.ihl.unwrap_or((hlen / 4) as u8);
        let tot = self.tot_len.unwrap_or((hlen + l4.len()) as u16);
        let mut b = Vec::with_capacity(hlen + l4.len());
        b.push(self.version << 4 | (ihl & 0x0f));
        b.push(0);
        b.extend_from_slice(&tot.to_be_bytes());
        b.extend_from_slice(&0x1234u16.to_be_bytes());
        b.extend_from_slice(&self.frag.to_be_bytes());
        b.push(64);
        b.push(self.proto);
        b.extend_from_slice(&[0, 0]);
        b.extend_from_slice(&self.src);
        b.extend_from_slice(&self.dst);
        b.extend_from_slice(&opts);
        b.extend_from_slice(l4);
        b
    }
}

impl V6 {
    pub fn new(src: [u8; 16], dst: [u8; 16]) -> Self {
        Self {
            src,
            dst,
            ext: Vec::new(),
            proto: 6,
            version: 6,
            payload_len: None,
        }
    }

    fn build(&self, l4: &[u8]) -> Vec<u8> {
        let mut exts = Vec::new();
        for (i, e) in self.ext.iter().enumerate() {
            let next = self.ext.get(i + 1).map_or(self.proto, |n| n.kind);
            let len = match e.kind {
                44 => 8,
                51 => (e.len as usize + 2) * 4,
                _ => (e.len as usize + 1) * 8,
            };
            let mut h = vec![0u8; len];
            h[0] = next;
            h[1] = if e.kind == 44 { 0 } else { e.len };
            if e.kind == 44 {
                h[2..4].copy_from_slice(&e.frag.to_be_bytes());
            } else if len > 2 {
                // PadN option filling the rest, so the header is well formed.
                h[2] = 1;
                h[3] = (len - 4) as u8;
            }
            exts.extend_from_slice(&h);
        }
        let first = self.ext.first().map_or(self.proto, |e| e.kind);
        let plen = self.payload_len.unwrap_or((exts.len() + l4.len()) as u16);
        let mut b = Vec::with_capacity(40 + exts.len() + l4.len());
        b.push(self.version << 4);
        b.extend_from_slice(&[0, 0, 0]);
        b.extend_from_slice(&plen.to_be_bytes());
        b.push(first);
        b.push(64);
        b.extend_from_slice(&self.src);
        b.extend_from_slice(&self.dst);
        b.extend_from_slice(&exts);
        b.extend_from_slice(l4);
        b
    }
}

impl Frame {
    pub fn build(&self) -> Vec<u8> {
        let mut b = Vec::new();
        b.extend_from_slice(&GW_MAC);
        b.extend_from_slice(&HOST_MAC);
        for tpid in &self.vlans {
            b.extend_from_slice(&tpid.to_be_bytes());
            b.extend_from_slice(&0x0064u16.to_be_bytes()); // VID 100
        }
        match &self.l3 {
            L3::V4(ip, l4) => {
                b.extend_from_slice(&0x0800u16.to_be_bytes());
                b.extend_from_slice(&ip.build(&l4.build()));
            }
            L3::V6(ip, l4) => {
                b.extend_from_slice(&0x86ddu16.to_be_bytes());
                b.extend_from_slice(&ip.build(&l4.build()));
            }
            L3::Other(et, body) => {
                b.extend_from_slice(&et.to_be_bytes());
                b.extend_from_slice(body);
            }
        }
        b.extend_from_slice(&self.trailer);
        b
    }
}

/// An IPv4 TCP frame from host to target (or back, when `sport` is the iSCSI port).
pub fn tcp4(sport: u16, dport: u16, payload: Vec<u8>) -> Frame {
    let (src, dst) = if dport == 3260 {
        (HOST4, TARGET4)
    } else {
        (TARGET4, HOST4)
    };
    Frame {
        vlans: Vec::new(),
        l3: L3::V4(V4::new(src, dst), L4::Tcp(Tcp::new(sport, dport, payload))),
        trailer: Vec::new(),
    }
}

/// The IPv6 version of [`tcp4`].
pub fn tcp6(sport: u16, dport: u16, payload: Vec<u8>) -> Frame {
    let (src, dst) = if dport == 3260 {
        (HOST6, TARGET6)
    } else {
        (TARGET6, HOST6)
    };
    Frame {
        vlans: Vec::new(),
        l3: L3::V6(V6::new(src, dst), L4::Tcp(Tcp::new(sport, dport, payload))),
        trailer: Vec::new(),
    }
}

/// A 48-byte SCSI Command Basic Header Segment (RFC 7143 §11.3).
pub fn scsi_cmd_bhs(read: bool, write: bool, edtl: u32) -> Vec<u8> {
    let mut b = vec![0u8; 48];
    b[0] = 0x01;
    b[1] = 0x80 | if read { 0x40 } else { 0 } | if write { 0x20 } else { 0 } | 0x01; // F, R, W, ATTR=simple
    b[16..20].copy_from_slice(&7u32.to_be_bytes()); // ITT
    b[20..24].copy_from_slice(&edtl.to_be_bytes());
    b[32] = if write {
        0x2a
    } else if read {
        0x28
    } else {
        0x00
    }; // CDB opcode
    b
}
