//! iSNSP framing (RFC 4171 §5): the 12-byte header, TLV attributes, the
//! source / message key / delimiter / operating attribute sections, status
//! codes. Encoding builds requests; decoding is strict and meant for replies
//! from a server that may be buggy or hostile: every length is bounded, every
//! malformed field is an error that names it, nothing panics.

use std::{fmt, net::IpAddr};

/// The iSNSP version this codec speaks (RFC 4171 §5.2).
pub const ISNSP_VERSION: u16 = 1;
/// The IANA port of iSNS.
pub const DEFAULT_PORT: u16 = 3205;
/// Size of the PDU header.
pub const HEADER_LEN: usize = 12;
/// Largest payload a PDU can carry (the length field is 16 bits).
pub const MAX_PAYLOAD: usize = u16::MAX as usize;
/// Largest message open-isns 0.101 accepts or builds (`ISNS_MAX_MESSAGE`):
/// requests are kept within it, and a reply that would exceed it fails on the
/// server, which is why state is read one object at a time (DevGetNext).
pub const OPEN_ISNS_MAX_MESSAGE: usize = 8192;
/// Longest iSCSI name (RFC 3720 §3.2.6.1), the bound of node names here.
pub const MAX_ISCSI_NAME: usize = 223;
/// Longest string attribute accepted in either direction (RFC 4171 caps
/// symbolic names and EIDs at 255 bytes; 1 KiB leaves room for the NUL and
/// vendor strings without letting a reply claim megabytes).
pub const MAX_STRING: usize = 1024;

/// Header flags (RFC 4171 §5.1.4).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Flags(pub u16);

impl Flags {
    /// Sender is the iSNS client.
    pub const CLIENT: Flags = Flags(0x8000);
    /// Sender is the iSNS server.
    pub const SERVER: Flags = Flags(0x4000);
    /// An authentication block follows the PDU.
    pub const AUTH: Flags = Flags(0x2000);
    /// DevAttrReg replaces the object named by the message key.
    pub const REPLACE: Flags = Flags(0x1000);
    /// Last PDU of the message.
    pub const LAST: Flags = Flags(0x0800);
    /// First PDU of the message.
    pub const FIRST: Flags = Flags(0x0400);

    /// Whether every bit of `other` is set.
    pub fn contains(self, other: Flags) -> bool {
        self.0 & other.0 == other.0
    }
}

impl std::ops::BitOr for Flags {
    type Output = Flags;
    fn bitor(self, rhs: Flags) -> Flags {
        Flags(self.0 | rhs.0)
    }
}

/// Function identifiers of the requests sanlb sends (RFC 4171 §5.1.3); a
/// response carries `0x8000 | id`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[repr(u16)]
pub enum Function {
    /// Device Attribute Registration.
    DevAttrReg = 0x0001,
    /// Device Attribute Query.
    DevAttrQry = 0x0002,
    /// Device Get Next.
    DevGetNext = 0x0003,
    /// Device Deregistration.
    DevDereg = 0x0004,
    /// Discovery Domain Registration.
    DdReg = 0x0009,
    /// Discovery Domain Deregistration.
    DdDereg = 0x000A,
}

impl Function {
    /// The function id of the request.
    pub fn id(self) -> u16 {
        self as u16
    }

    /// The function id of its response.
    pub fn response_id(self) -> u16 {
        0x8000 | self as u16
    }

    /// The name RFC 4171 uses.
    pub fn name(self) -> &'static str {
        match self {
            Function::DevAttrReg => "DevAttrReg",
            Function::DevAttrQry => "DevAttrQry",
            Function::DevGetNext => "DevGetNext",
            Function::DevDereg => "DevDereg",
            Function::DdReg => "DDReg",
            Function::DdDereg => "DDDereg",
        }
    }
}

impl fmt::Display for Function {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// A response status code (RFC 4171 §5.4).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Status(pub u32);

impl Status {
    /// Successful.
    pub const SUCCESS: Status = Status(0);
    /// Invalid registration.
    pub const INVALID_REGISTRATION: Status = Status(3);
    /// Source unauthorized.
    pub const SOURCE_UNAUTHORIZED: Status = Status(8);
    /// No such entry: a query or DevGetNext matched nothing.
    pub const NO_SUCH_ENTRY: Status = Status(9);

    /// The RFC's name of the code, lowercase.
    pub fn name(self) -> &'static str {
        match self.0 {
            0 => "successful",
            1 => "unknown error",
            2 => "message format error",
            3 => "invalid registration",
            4 => "reserved",
            5 => "invalid query",
            6 => "source unknown",
            7 => "source absent",
            8 => "source unauthorized",
            9 => "no such entry",
            10 => "version not supported",
            11 => "internal error",
            12 => "busy",
            13 => "option not understood",
            14 => "invalid update",
            15 => "message not supported",
            16 => "scn event rejected",
            17 => "scn registration rejected",
            18 => "attribute not implemented",
            19 => "fc domain id not available",
            20 => "fc domain id not allocated",
            21 => "esi not available",
            22 => "invalid deregistration",
            23 => "registration feature not supported",
            _ => "undefined status",
        }
    }
}

impl fmt::Display for Status {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} ({})", self.0, self.name())
    }
}

/// Attribute tags sanlb uses (RFC 4171 §6.1).
pub mod tag {
    /// Delimiter between message key and operating attributes.
    pub const DELIMITER: u32 = 0;
    /// Entity Identifier (EID), string.
    pub const ENTITY_ID: u32 = 1;
    /// Entity Protocol, u32 (2 = iSCSI).
    pub const ENTITY_PROTOCOL: u32 = 2;
    /// Management IP address, ip.
    pub const MGMT_IP: u32 = 3;
    /// Entity registration timestamp, u64.
    pub const TIMESTAMP: u32 = 4;
    /// Registration Period in seconds, u32.
    pub const REGISTRATION_PERIOD: u32 = 6;
    /// Entity Index, u32.
    pub const ENTITY_INDEX: u32 = 7;
    /// Portal IP Address, ip.
    pub const PORTAL_IP: u32 = 16;
    /// Portal TCP/UDP Port, u32 (bit 16 = UDP).
    pub const PORTAL_PORT: u32 = 17;
    /// Portal Symbolic Name, string.
    pub const PORTAL_NAME: u32 = 18;
    /// Portal Index, u32.
    pub const PORTAL_INDEX: u32 = 22;
    /// iSCSI Name, string.
    pub const ISCSI_NAME: u32 = 32;
    /// iSCSI Node Type, u32 bitmap (target 1, initiator 2, control 4).
    pub const ISCSI_NODE_TYPE: u32 = 33;
    /// iSCSI Alias, string.
    pub const ISCSI_ALIAS: u32 = 34;
    /// iSCSI Node Index, u32.
    pub const ISCSI_NODE_INDEX: u32 = 36;
    /// Portal Group iSCSI Name, string.
    pub const PG_ISCSI_NAME: u32 = 48;
    /// Portal Group Portal IP Address, ip.
    pub const PG_PORTAL_IP: u32 = 49;
    /// Portal Group Portal TCP/UDP Port, u32.
    pub const PG_PORTAL_PORT: u32 = 50;
    /// Portal Group Tag, u32 or NULL (no access).
    pub const PG_TAG: u32 = 51;
    /// Portal Group Index, u32.
    pub const PG_INDEX: u32 = 52;
    /// Discovery Domain ID, u32.
    pub const DD_ID: u32 = 2065;
    /// Discovery Domain symbolic name, string.
    pub const DD_NAME: u32 = 2066;
    /// DD member iSCSI node index, u32.
    pub const DD_MEMBER_ISCSI_INDEX: u32 = 2067;
    /// DD member iSCSI name, string.
    pub const DD_MEMBER_ISCSI_NAME: u32 = 2068;
    /// DD member portal index, u32.
    pub const DD_MEMBER_PORTAL_INDEX: u32 = 2070;
    /// DD member portal IP address, ip.
    pub const DD_MEMBER_PORTAL_IP: u32 = 2071;
    /// DD member portal TCP/UDP port, u32.
    pub const DD_MEMBER_PORTAL_PORT: u32 = 2072;
    /// DD features, u32.
    pub const DD_FEATURES: u32 = 2078;

    /// The value type of a tag this codec knows, for strict decoding.
    pub(crate) fn kind(tag: u32) -> Option<super::Kind> {
        use super::Kind::*;
        Some(match tag {
            ENTITY_ID | PORTAL_NAME | ISCSI_NAME | ISCSI_ALIAS | PG_ISCSI_NAME | DD_NAME
            | DD_MEMBER_ISCSI_NAME => Str,
            MGMT_IP | PORTAL_IP | PG_PORTAL_IP | DD_MEMBER_PORTAL_IP => Ip,
            TIMESTAMP => U64,
            ENTITY_PROTOCOL
            | REGISTRATION_PERIOD
            | ENTITY_INDEX
            | PORTAL_PORT
            | PORTAL_INDEX
            | ISCSI_NODE_TYPE
            | ISCSI_NODE_INDEX
            | PG_PORTAL_PORT
            | PG_TAG
            | PG_INDEX
            | DD_ID
            | DD_MEMBER_ISCSI_INDEX
            | DD_MEMBER_PORTAL_INDEX
            | DD_MEMBER_PORTAL_PORT
            | DD_FEATURES => U32,
            _ => return None,
        })
    }

    /// A short name for error messages.
    pub fn name(tag: u32) -> &'static str {
        match tag {
            DELIMITER => "delimiter",
            ENTITY_ID => "entity identifier",
            ENTITY_PROTOCOL => "entity protocol",
            MGMT_IP => "management ip address",
            TIMESTAMP => "timestamp",
            REGISTRATION_PERIOD => "registration period",
            ENTITY_INDEX => "entity index",
            PORTAL_IP => "portal ip address",
            PORTAL_PORT => "portal port",
            PORTAL_NAME => "portal symbolic name",
            PORTAL_INDEX => "portal index",
            ISCSI_NAME => "iscsi name",
            ISCSI_NODE_TYPE => "iscsi node type",
            ISCSI_ALIAS => "iscsi alias",
            ISCSI_NODE_INDEX => "iscsi node index",
            PG_ISCSI_NAME => "pg iscsi name",
            PG_PORTAL_IP => "pg portal ip address",
            PG_PORTAL_PORT => "pg portal port",
            PG_TAG => "pg tag",
            PG_INDEX => "pg index",
            DD_ID => "dd id",
            DD_NAME => "dd symbolic name",
            DD_MEMBER_ISCSI_INDEX => "dd member iscsi index",
            DD_MEMBER_ISCSI_NAME => "dd member iscsi name",
            DD_MEMBER_PORTAL_INDEX => "dd member portal index",
            DD_MEMBER_PORTAL_IP => "dd member portal ip address",
            DD_MEMBER_PORTAL_PORT => "dd member portal port",
            DD_FEATURES => "dd features",
            _ => "unknown attribute",
        }
    }
}

/// iSCSI Node Type bits (RFC 4171 §6.4.2).
pub mod node_type {
    /// Target.
    pub const TARGET: u32 = 1;
    /// Initiator.
    pub const INITIATOR: u32 = 2;
    /// Control node: sees the whole database, regardless of domains.
    pub const CONTROL: u32 = 4;
}

/// Entity Protocol value for iSCSI (RFC 4171 §6.2.2).
pub const ENTITY_PROTOCOL_ISCSI: u32 = 2;

/// The value type of a known tag.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Kind {
    Str,
    Ip,
    U32,
    U64,
}

/// Errors of building a request or decoding a reply.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CodecError {
    /// Fewer bytes than a field needs.
    #[error("truncated {what}: {have} bytes, need {need}")]
    Truncated {
        /// The field.
        what: &'static str,
        /// Bytes there.
        have: usize,
        /// Bytes needed.
        need: usize,
    },
    /// The header's version is not 1.
    #[error("unsupported iSNSP version {0}")]
    Version(u16),
    /// The PDU length is not a multiple of 4.
    #[error("pdu length {0} is not a multiple of 4")]
    PduAlignment(u16),
    /// The reply is one segment of a multi-PDU message.
    #[error(
        "segmented message (flags {0:#06x}): sanlb reads single-PDU replies only, as open-isns sends"
    )]
    Segmented(u16),
    /// The reply carries an authentication block.
    #[error(
        "the reply carries an authentication block (flags {0:#06x}): the server runs with Security = 1, sanlb speaks unauthenticated iSNSP (Security = 0, see docs/isns.md)"
    )]
    Authenticated(u16),
    /// A reply does not have the server flag, or a request the client flag.
    #[error("wrong sender flags {0:#06x}")]
    Sender(u16),
    /// An attribute's length is not a multiple of 4.
    #[error("attribute {tag} ({name}) at offset {offset}: length {len} is not a multiple of 4", name = tag::name(*tag))]
    AttrAlignment {
        /// Tag.
        tag: u32,
        /// Offset in the payload.
        offset: usize,
        /// Length claimed.
        len: u32,
    },
    /// An attribute claims more bytes than the PDU has.
    #[error("attribute {tag} ({name}) at offset {offset}: length {len} exceeds the {left} bytes left", name = tag::name(*tag))]
    AttrOverrun {
        /// Tag.
        tag: u32,
        /// Offset in the payload.
        offset: usize,
        /// Length claimed.
        len: u32,
        /// Bytes left in the payload.
        left: usize,
    },
    /// A known attribute's value has the wrong size or content.
    #[error("attribute {tag} ({name}): {why}", name = tag::name(*tag))]
    AttrValue {
        /// Tag.
        tag: u32,
        /// What is wrong.
        why: String,
    },
    /// A request would not fit in one PDU.
    #[error("{function} request of {len} bytes exceeds the {max}-byte limit")]
    TooLong {
        /// Function.
        function: Function,
        /// Payload length.
        len: usize,
        /// Limit.
        max: usize,
    },
    /// A string to send is unusable (empty, too long, contains NUL).
    #[error("{what} {value:?}: {why}")]
    BadString {
        /// Which string.
        what: &'static str,
        /// The value.
        value: String,
        /// Why.
        why: &'static str,
    },
}

/// A TLV attribute: tag and value bytes as on the wire (a string's value
/// includes its NUL and padding; a zero-length value is NULL).
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Attr {
    /// Tag.
    pub tag: u32,
    /// Value, a multiple of 4 bytes.
    pub value: Vec<u8>,
}

impl fmt::Debug for Attr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}({})=", self.tag, tag::name(self.tag))?;
        if self.value.is_empty() {
            return f.write_str("nil");
        }
        match tag::kind(self.tag) {
            Some(Kind::Str) => match self.as_str() {
                Ok(s) => write!(f, "{s:?}"),
                Err(_) => write!(f, "{:02x?}", self.value),
            },
            Some(Kind::U32) => write!(f, "{}", self.as_u32().unwrap_or(u32::MAX)),
            Some(Kind::Ip) => match self.as_ip() {
                Ok(raw) => write!(f, "{}", ip_from_raw(raw)),
                Err(_) => write!(f, "{:02x?}", self.value),
            },
            _ => write!(f, "{:02x?}", self.value),
        }
    }
}

impl Attr {
    /// A NULL (zero-length) attribute: a wildcard in keys, "return this" in
    /// query operating attributes, "no access" as a PG tag.
    pub fn nil(tag: u32) -> Attr {
        Attr {
            tag,
            value: Vec::new(),
        }
    }

    /// A 32-bit unsigned attribute.
    pub fn u32(tag: u32, v: u32) -> Attr {
        Attr {
            tag,
            value: v.to_be_bytes().to_vec(),
        }
    }

    /// An address attribute: IPv4 as an IPv4-mapped IPv6 address (RFC 4171
    /// §6.3.1), IPv6 as is.
    pub fn ip(tag: u32, addr: IpAddr) -> Attr {
        Attr::ip_raw(tag, ip_to_raw(addr))
    }

    /// An address attribute from its 16 bytes, exactly as a server sent them.
    pub fn ip_raw(tag: u32, raw: [u8; 16]) -> Attr {
        Attr {
            tag,
            value: raw.to_vec(),
        }
    }

    /// A string attribute: UTF-8, NUL-terminated, padded to 4 bytes.
    pub fn string(tag: u32, s: &str) -> Result<Attr, CodecError> {
        check_string(tag::name(tag), s, MAX_STRING - 1)?;
        let mut value = Vec::with_capacity(pad4(s.len() + 1));
        value.extend_from_slice(s.as_bytes());
        value.resize(pad4(s.len() + 1), 0);
        Ok(Attr { tag, value })
    }

    /// Whether the value is NULL.
    pub fn is_nil(&self) -> bool {
        self.value.is_empty()
    }

    /// Bytes on the wire.
    pub fn wire_len(&self) -> usize {
        8 + self.value.len()
    }

    /// The value as a 32-bit unsigned integer.
    pub fn as_u32(&self) -> Result<u32, CodecError> {
        let b: [u8; 4] = self
            .value
            .as_slice()
            .try_into()
            .map_err(|_| CodecError::AttrValue {
                tag: self.tag,
                why: format!("{} bytes for a 32-bit integer", self.value.len()),
            })?;
        Ok(u32::from_be_bytes(b))
    }

    /// The value as a 64-bit unsigned integer.
    pub fn as_u64(&self) -> Result<u64, CodecError> {
        let b: [u8; 8] = self
            .value
            .as_slice()
            .try_into()
            .map_err(|_| CodecError::AttrValue {
                tag: self.tag,
                why: format!("{} bytes for a 64-bit integer", self.value.len()),
            })?;
        Ok(u64::from_be_bytes(b))
    }

    /// The value as the 16 bytes of an address.
    pub fn as_ip(&self) -> Result<[u8; 16], CodecError> {
        self.value
            .as_slice()
            .try_into()
            .map_err(|_| CodecError::AttrValue {
                tag: self.tag,
                why: format!("{} bytes for an ip address", self.value.len()),
            })
    }

    /// The value as a string: NUL-terminated, only NULs after the first one,
    /// UTF-8.
    pub fn as_str(&self) -> Result<&str, CodecError> {
        let bad = |why: &str| CodecError::AttrValue {
            tag: self.tag,
            why: why.to_string(),
        };
        let nul = self
            .value
            .iter()
            .position(|&b| b == 0)
            .ok_or_else(|| bad("string without a terminating nul"))?;
        if self.value[nul..].iter().any(|&b| b != 0) {
            return Err(bad("bytes after the string's terminating nul"));
        }
        std::str::from_utf8(&self.value[..nul]).map_err(|_| bad("string is not utf-8"))
    }

    /// Check a known tag's value shape (strings terminated, integers and
    /// addresses of their size); NULL is always well-formed.
    fn validate(&self) -> Result<(), CodecError> {
        if self.is_nil() {
            return Ok(());
        }
        match tag::kind(self.tag) {
            Some(Kind::Str) => self.as_str().map(drop),
            Some(Kind::Ip) => self.as_ip().map(drop),
            Some(Kind::U32) => self.as_u32().map(drop),
            Some(Kind::U64) => self.as_u64().map(drop),
            None => Ok(()),
        }
    }
}

/// Round up to a multiple of 4.
pub(crate) fn pad4(n: usize) -> usize {
    n.div_ceil(4) * 4
}

/// Check a string that goes on the wire.
pub(crate) fn check_string(what: &'static str, s: &str, max: usize) -> Result<(), CodecError> {
    let bad = |why| CodecError::BadString {
        what,
        value: s.to_string(),
        why,
    };
    if s.is_empty() {
        return Err(bad("empty"));
    }
    if s.len() > max {
        return Err(bad("too long"));
    }
    if s.contains('\0') {
        return Err(bad("contains a nul byte"));
    }
    Ok(())
}

/// The 16 bytes of an address as iSNS carries it.
pub fn ip_to_raw(addr: IpAddr) -> [u8; 16] {
    match addr {
        IpAddr::V4(v4) => v4.to_ipv6_mapped().octets(),
        IpAddr::V6(v6) => v6.octets(),
    }
}

/// The address 16 bytes stand for: IPv4-mapped, and the IPv4-compatible form
/// open-isns' own tools write (`::a.b.c.d`), read as IPv4.
pub fn ip_from_raw(raw: [u8; 16]) -> IpAddr {
    let v6 = std::net::Ipv6Addr::from(raw);
    if let Some(v4) = v6.to_ipv4_mapped() {
        return IpAddr::V4(v4);
    }
    if raw[..12].iter().all(|&b| b == 0)
        && u32::from_be_bytes([raw[12], raw[13], raw[14], raw[15]]) > 1
    {
        return IpAddr::V4(std::net::Ipv4Addr::new(raw[12], raw[13], raw[14], raw[15]));
    }
    IpAddr::V6(v6)
}

/// The PDU header (RFC 4171 §5.1).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Header {
    /// iSNSP version.
    pub version: u16,
    /// Function id.
    pub function: u16,
    /// Payload length in bytes (header and authentication block excluded).
    pub length: u16,
    /// Flags.
    pub flags: Flags,
    /// Transaction id.
    pub xid: u16,
    /// Sequence id of the PDU within the message.
    pub seq: u16,
}

impl Header {
    /// Wire form.
    pub fn encode(&self) -> [u8; HEADER_LEN] {
        let mut b = [0u8; HEADER_LEN];
        for (i, v) in [
            self.version,
            self.function,
            self.length,
            self.flags.0,
            self.xid,
            self.seq,
        ]
        .into_iter()
        .enumerate()
        {
            b[2 * i..2 * i + 2].copy_from_slice(&v.to_be_bytes());
        }
        b
    }

    /// Parse the header of a reply: version 1, server flag, one PDU, no
    /// authentication block, 4-byte aligned length.
    pub fn decode_reply(b: &[u8]) -> Result<Header, CodecError> {
        let b: &[u8; HEADER_LEN] =
            b.get(..HEADER_LEN)
                .and_then(|s| s.try_into().ok())
                .ok_or(CodecError::Truncated {
                    what: "pdu header",
                    have: b.len(),
                    need: HEADER_LEN,
                })?;
        let word = |i: usize| u16::from_be_bytes([b[2 * i], b[2 * i + 1]]);
        let h = Header {
            version: word(0),
            function: word(1),
            length: word(2),
            flags: Flags(word(3)),
            xid: word(4),
            seq: word(5),
        };
        if h.version != ISNSP_VERSION {
            return Err(CodecError::Version(h.version));
        }
        if h.flags.contains(Flags::AUTH) {
            return Err(CodecError::Authenticated(h.flags.0));
        }
        if !h.flags.contains(Flags::SERVER) || h.flags.contains(Flags::CLIENT) {
            return Err(CodecError::Sender(h.flags.0));
        }
        if !h.flags.contains(Flags::FIRST | Flags::LAST) || h.seq != 0 {
            return Err(CodecError::Segmented(h.flags.0));
        }
        if !h.length.is_multiple_of(4) {
            return Err(CodecError::PduAlignment(h.length));
        }
        Ok(h)
    }
}

/// A request: the source, the message key, the operating attributes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Request {
    /// Function.
    pub function: Function,
    /// Replace flag (DevAttrReg only).
    pub replace: bool,
    /// The iSCSI name of the requesting node (the Source attribute).
    pub source: String,
    /// Message key attributes.
    pub key: Vec<Attr>,
    /// Operating attributes.
    pub operating: Vec<Attr>,
}

impl Request {
    /// A request without the replace flag.
    pub fn new(function: Function, source: &str, key: Vec<Attr>, operating: Vec<Attr>) -> Self {
        Request {
            function,
            replace: false,
            source: source.to_string(),
            key,
            operating,
        }
    }

    /// Payload length.
    pub fn payload_len(&self) -> usize {
        let source = 8 + pad4(self.source.len() + 1);
        source
            + self.key.iter().map(Attr::wire_len).sum::<usize>()
            + 8
            + self.operating.iter().map(Attr::wire_len).sum::<usize>()
    }

    /// The PDU: header, source, key, delimiter, operating attributes.
    pub fn encode(&self, xid: u16) -> Result<Vec<u8>, CodecError> {
        let source = Attr::string(tag::ISCSI_NAME, &self.source)?;
        let len = self.payload_len();
        if len > MAX_PAYLOAD {
            return Err(CodecError::TooLong {
                function: self.function,
                len,
                max: MAX_PAYLOAD,
            });
        }
        let mut flags = Flags::CLIENT | Flags::FIRST | Flags::LAST;
        if self.replace {
            flags = flags | Flags::REPLACE;
        }
        let header = Header {
            version: ISNSP_VERSION,
            function: self.function.id(),
            length: len as u16,
            flags,
            xid,
            seq: 0,
        };
        let mut out = Vec::with_capacity(HEADER_LEN + len);
        out.extend_from_slice(&header.encode());
        let mut put = |a: &Attr| {
            out.extend_from_slice(&a.tag.to_be_bytes());
            out.extend_from_slice(&(a.value.len() as u32).to_be_bytes());
            out.extend_from_slice(&a.value);
        };
        put(&source);
        self.key.iter().for_each(&mut put);
        put(&Attr::nil(tag::DELIMITER));
        self.operating.iter().for_each(&mut put);
        Ok(out)
    }
}

/// A decoded reply.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Response {
    /// Function id (`0x8000 | request`).
    pub function: u16,
    /// Transaction id.
    pub xid: u16,
    /// Status.
    pub status: Status,
    /// Message key attributes.
    pub key: Vec<Attr>,
    /// Operating attributes.
    pub operating: Vec<Attr>,
}

/// Decode a reply's payload (after its header): status, then attributes up
/// to the delimiter (message key), then operating attributes. Known tags are
/// checked for their value's shape.
pub fn decode_response(header: &Header, payload: &[u8]) -> Result<Response, CodecError> {
    if payload.len() != header.length as usize {
        return Err(CodecError::Truncated {
            what: "pdu payload",
            have: payload.len(),
            need: header.length as usize,
        });
    }
    let status: [u8; 4] =
        payload
            .get(..4)
            .and_then(|s| s.try_into().ok())
            .ok_or(CodecError::Truncated {
                what: "status",
                have: payload.len(),
                need: 4,
            })?;
    let attrs = decode_attrs(payload, 4)?;
    let (key, operating) = match attrs.iter().position(|a| a.tag == tag::DELIMITER) {
        Some(i) => {
            let mut key = attrs;
            let mut operating = key.split_off(i);
            operating.remove(0);
            (key, operating)
        }
        None => (attrs, Vec::new()),
    };
    if let Some(a) = operating.iter().find(|a| a.tag == tag::DELIMITER) {
        return Err(CodecError::AttrValue {
            tag: a.tag,
            why: "a second delimiter".to_string(),
        });
    }
    Ok(Response {
        function: header.function,
        xid: header.xid,
        status: Status(u32::from_be_bytes(status)),
        key,
        operating,
    })
}

/// Decode TLV attributes from `offset` to the end of `buf`.
pub fn decode_attrs(buf: &[u8], mut offset: usize) -> Result<Vec<Attr>, CodecError> {
    let mut out = Vec::new();
    while offset < buf.len() {
        let left = buf.len() - offset;
        if left < 8 {
            return Err(CodecError::Truncated {
                what: "attribute header",
                have: left,
                need: 8,
            });
        }
        let tag = u32::from_be_bytes(buf[offset..offset + 4].try_into().expect("4 bytes"));
        let len = u32::from_be_bytes(buf[offset + 4..offset + 8].try_into().expect("4 bytes"));
        if len % 4 != 0 {
            return Err(CodecError::AttrAlignment { tag, offset, len });
        }
        if len as usize > left - 8 {
            return Err(CodecError::AttrOverrun {
                tag,
                offset,
                len,
                left: left - 8,
            });
        }
        if tag::kind(tag) == Some(Kind::Str) && len as usize > MAX_STRING {
            return Err(CodecError::AttrValue {
                tag,
                why: format!("{len}-byte string exceeds {MAX_STRING} bytes"),
            });
        }
        if tag == tag::DELIMITER && len != 0 {
            return Err(CodecError::AttrValue {
                tag,
                why: format!("delimiter of {len} bytes"),
            });
        }
        let attr = Attr {
            tag,
            value: buf[offset + 8..offset + 8 + len as usize].to_vec(),
        };
        attr.validate()?;
        out.push(attr);
        offset += 8 + len as usize;
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    pub(crate) fn unhex(s: &str) -> Vec<u8> {
        let s: String = s.chars().filter(|c| !c.is_whitespace()).collect();
        (0..s.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
            .collect()
    }

    // Captured on loopback from open-isns 0.101: `isnsadm --query
    // iscsi-node-type=Target ?iscsi-name ?pg-name ?pg-addr ?pg-port ?pg-tag`
    // with SourceName iqn.2024-01.test:host1 (xid 1), and isnsd's answer.
    const ISNSADM_QUERY: &str = "00010002005c8c0000010000\
        000000200000001869716e2e323032342d30312e746573743a686f7374310000\
        0000002100000004000000010000000000000000000000200000000000000030\
        00000000000000310000000000000032000000000000003300000000";
    const ISNSD_QUERY_REPLY: &str = "0001800200884c0000010000\
        0000000000000021000000040000000100000000000000000000002000000018\
        69716e2e323032342d30312e746573743a6469736b3100000000003000000018\
        69716e2e323032342d30312e746573743a6469736b3100000000003100000010\
        000000000000000000000000c6120002000000320000000400000cbc00000033\
        0000000400000001";
    // isnsd's DDRegRsp: DD 1 "ddA", two node members, two portal members
    // (the portal addresses as isnsadm wrote them: IPv4-compatible).
    const ISNSD_DDREG_REPLY: &str = "0001800900e84c0000010000\
        0000000000000000000000000000081100000004000000010000081200000004\
        646441000000081e000000040000000000000813000000040000000800000814\
        0000001869716e2e323032342d30312e746573743a686f737431000000000813\
        0000000400000002000008140000001869716e2e323032342d30312e74657374\
        3a6469736b310000000008160000000400000004000008170000001000000000\
        0000000000000000c6120002000008180000000400000cbc0000081600000004\
        000000030000081700000010000000000000000000000000c612000100000818\
        0000000400000cbc";

    fn reply(hex: &str) -> Result<Response, CodecError> {
        let b = unhex(hex);
        let h = Header::decode_reply(&b)?;
        decode_response(&h, &b[HEADER_LEN..])
    }

    #[test]
    fn query_encodes_byte_for_byte_like_isnsadm() {
        let req = Request::new(
            Function::DevAttrQry,
            "iqn.2024-01.test:host1",
            vec![Attr::u32(tag::ISCSI_NODE_TYPE, node_type::TARGET)],
            [
                tag::ISCSI_NAME,
                tag::PG_ISCSI_NAME,
                tag::PG_PORTAL_IP,
                tag::PG_PORTAL_PORT,
                tag::PG_TAG,
            ]
            .into_iter()
            .map(Attr::nil)
            .collect(),
        );
        assert_eq!(req.encode(1).unwrap(), unhex(ISNSADM_QUERY));
    }

    #[test]
    fn dd_deregister_encodes_like_isnsadm() {
        // isnsadm --dd-register dd-id=1 member-addr=198.18.0.1 member-port=3260
        // (function 9, source iqn.1967-12.vm, v4-compatible address).
        let mut raw = [0u8; 16];
        raw[12..].copy_from_slice(&[198, 18, 0, 1]);
        let req = Request::new(
            Function::DdReg,
            "iqn.1967-12.vm",
            vec![Attr::u32(tag::DD_ID, 1)],
            vec![
                Attr::u32(tag::DD_ID, 1),
                Attr::ip_raw(tag::DD_MEMBER_PORTAL_IP, raw),
                Attr::u32(tag::DD_MEMBER_PORTAL_PORT, 3260),
            ],
        );
        let want = unhex(
            "00010009005c8c0000010000\
             000000200000001069716e2e313936372d31322e766d0000\
             000008110000000400000001 0000000000000000\
             000008110000000400000001\
             0000081700000010000000000000000000000000c6120001\
             000008180000000400000cbc",
        );
        assert_eq!(req.encode(1).unwrap(), want);
    }

    #[test]
    fn query_reply_decodes() {
        let r = reply(ISNSD_QUERY_REPLY).unwrap();
        assert_eq!(r.function, Function::DevAttrQry.response_id());
        assert_eq!((r.xid, r.status), (1, Status::SUCCESS));
        assert_eq!(r.key, vec![Attr::u32(tag::ISCSI_NODE_TYPE, 1)]);
        assert_eq!(r.operating.len(), 5);
        assert_eq!(r.operating[0].as_str().unwrap(), "iqn.2024-01.test:disk1");
        assert_eq!(
            ip_from_raw(r.operating[2].as_ip().unwrap()),
            "198.18.0.2".parse::<IpAddr>().unwrap()
        );
        assert_eq!(r.operating[3].as_u32().unwrap(), 3260);
        assert_eq!(r.operating[4].as_u32().unwrap(), 1);
    }

    #[test]
    fn dd_reply_decodes() {
        let r = reply(ISNSD_DDREG_REPLY).unwrap();
        assert!(r.key.is_empty());
        assert_eq!(r.operating.len(), 13);
        assert_eq!(r.operating[1].as_str().unwrap(), "ddA");
        assert_eq!(
            ip_from_raw(r.operating[11].as_ip().unwrap()),
            "198.18.0.1".parse::<IpAddr>().unwrap()
        );
    }

    fn reply_bytes(payload: &[u8]) -> Vec<u8> {
        let h = Header {
            version: 1,
            function: 0x8002,
            length: payload.len() as u16,
            flags: Flags::SERVER | Flags::FIRST | Flags::LAST,
            xid: 1,
            seq: 0,
        };
        let mut b = h.encode().to_vec();
        b.extend_from_slice(payload);
        b
    }

    fn attr_strategy() -> impl Strategy<Value = Attr> {
        prop_oneof![
            (
                prop::sample::select(vec![
                    tag::ENTITY_ID,
                    tag::ISCSI_NAME,
                    tag::PG_ISCSI_NAME,
                    tag::DD_NAME,
                    tag::DD_MEMBER_ISCSI_NAME
                ]),
                "[a-z0-9.:-]{1,40}"
            )
                .prop_map(|(t, v)| Attr::string(t, &v).unwrap()),
            (
                prop::sample::select(vec![
                    tag::PORTAL_PORT,
                    tag::PG_TAG,
                    tag::DD_ID,
                    tag::ISCSI_NODE_TYPE,
                    9999
                ]),
                any::<u32>()
            )
                .prop_map(|(t, v)| Attr::u32(t, v)),
            (
                prop::sample::select(vec![
                    tag::PORTAL_IP,
                    tag::PG_PORTAL_IP,
                    tag::DD_MEMBER_PORTAL_IP
                ]),
                any::<[u8; 16]>()
            )
                .prop_map(|(t, v)| Attr::ip_raw(t, v)),
            (1u32..3000).prop_map(Attr::nil),
        ]
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(2000))]

        /// Arbitrary bytes: errors at worst, never a panic, in the framing,
        /// the TLV walk and the grouping into objects.
        #[test]
        fn any_bytes_decode_without_panic(bytes in prop::collection::vec(any::<u8>(), 0..400)) {
            if let Ok(h) = Header::decode_reply(&bytes) {
                let _ = decode_response(&h, &bytes[HEADER_LEN..]);
            }
            if let Ok(attrs) = decode_attrs(&bytes, 0) {
                let _ = crate::isns::state::group(&attrs);
            }
            let framed = reply_bytes(&bytes[..bytes.len() / 4 * 4]);
            let h = Header::decode_reply(&framed).unwrap();
            if let Ok(r) = decode_response(&h, &framed[HEADER_LEN..]) {
                let _ = crate::isns::state::group(&r.operating);
            }
        }

        /// A real reply with one byte changed and a random cut.
        #[test]
        fn mutated_replies_decode_without_panic(
            which in 0usize..2, at in any::<prop::sample::Index>(), byte in any::<u8>(),
            cut in any::<prop::sample::Index>(),
        ) {
            let mut b = unhex([ISNSD_QUERY_REPLY, ISNSD_DDREG_REPLY][which]);
            let i = at.index(b.len());
            b[i] = byte;
            b.truncate(cut.index(b.len() + 1));
            if let Ok(h) = Header::decode_reply(&b)
                && let Ok(r) = decode_response(&h, &b[HEADER_LEN..])
            {
                let _ = crate::isns::state::group(&r.operating);
            }
        }

        /// Attributes survive encoding and strict decoding unchanged.
        #[test]
        fn attributes_roundtrip(key in prop::collection::vec(attr_strategy(), 0..6),
                                op in prop::collection::vec(attr_strategy(), 0..12)) {
            let mut payload = vec![0u8; 4];
            for a in key.iter().chain([&Attr::nil(tag::DELIMITER)]).chain(&op) {
                payload.extend_from_slice(&a.tag.to_be_bytes());
                payload.extend_from_slice(&(a.value.len() as u32).to_be_bytes());
                payload.extend_from_slice(&a.value);
            }
            let b = reply_bytes(&payload);
            let r = decode_response(&Header::decode_reply(&b).unwrap(), &b[HEADER_LEN..]).unwrap();
            prop_assert_eq!(r.key, key);
            prop_assert_eq!(r.operating, op);
        }
    }

    #[test]
    fn strings_are_nul_terminated_and_padded() {
        assert_eq!(Attr::string(1, "abc").unwrap().value, b"abc\0");
        assert_eq!(Attr::string(1, "abcd").unwrap().value, b"abcd\0\0\0\0");
        assert!(Attr::string(1, "").is_err());
        assert!(Attr::string(1, "a\0b").is_err());
    }

    #[test]
    fn ipv4_is_mapped_and_compat_is_read_as_ipv4() {
        let v4: IpAddr = "198.18.0.7".parse().unwrap();
        let raw = ip_to_raw(v4);
        assert_eq!(&raw[..12], &[0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff]);
        assert_eq!(ip_from_raw(raw), v4);
        let mut compat = [0u8; 16];
        compat[12..].copy_from_slice(&[198, 18, 0, 7]);
        assert_eq!(ip_from_raw(compat), v4);
        let v6: IpAddr = "2001:db8::1".parse().unwrap();
        assert_eq!(ip_from_raw(ip_to_raw(v6)), v6);
        assert_eq!(ip_from_raw([0; 16]), "::".parse::<IpAddr>().unwrap());
    }

    #[test]
    fn bad_replies_are_named_errors() {
        let good = unhex(ISNSD_QUERY_REPLY);
        let decode = |b: &[u8]| -> Result<Response, CodecError> {
            let h = Header::decode_reply(b)?;
            decode_response(&h, &b[HEADER_LEN.min(b.len())..])
        };
        let with = |i: usize, v: &[u8]| {
            let mut b = good.clone();
            b[i..i + v.len()].copy_from_slice(v);
            b
        };
        assert!(matches!(
            decode(&good[..5]),
            Err(CodecError::Truncated {
                what: "pdu header",
                ..
            })
        ));
        assert_eq!(decode(&with(0, &[0, 2])), Err(CodecError::Version(2)));
        assert_eq!(
            decode(&with(6, &[0x6c, 0])),
            Err(CodecError::Authenticated(0x6c00))
        );
        assert_eq!(
            decode(&with(6, &[0x44, 0])),
            Err(CodecError::Segmented(0x4400))
        );
        assert_eq!(
            decode(&with(6, &[0x8c, 0])),
            Err(CodecError::Sender(0x8c00))
        );
        assert_eq!(
            decode(&with(4, &[0, 0x87])),
            Err(CodecError::PduAlignment(0x87))
        );
        assert!(matches!(
            decode(&good[..good.len() - 4]),
            Err(CodecError::Truncated {
                what: "pdu payload",
                ..
            })
        ));
        // The first operating attribute (the iSCSI name) claims too much, then an odd length.
        let overrun = with(12 + 4 + 12 + 8 + 4, &[0, 0, 0x10, 0]);
        assert!(matches!(
            decode(&overrun),
            Err(CodecError::AttrOverrun { tag: 32, .. })
        ));
        let misaligned = with(12 + 4 + 12 + 8 + 4, &[0, 0, 0, 0x17]);
        assert!(matches!(
            decode(&misaligned),
            Err(CodecError::AttrAlignment { tag: 32, .. })
        ));
        // The node name loses its NUL.
        let no_nul = with(12 + 4 + 12 + 8 + 8 + 20, b"1234");
        let e = decode(&no_nul).unwrap_err();
        assert!(
            e.to_string().contains("iscsi name") && e.to_string().contains("nul"),
            "{e}"
        );
        // The PG port (u32) becomes 8 bytes by swallowing the tag's length.
        let e = decode(&with(good.len() - 20, &[0, 0, 0, 8])).unwrap_err();
        assert!(e.to_string().contains("pg portal port"), "{e}");
    }
}
