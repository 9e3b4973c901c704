//! The Basic Header Segment (§11.2.1) and the framing of whole PDUs.

use super::{
    Limits, LoginRequest, LoginResponse, LogoutRequest, LogoutResponse, PduError, Reject,
    TextRequest, TextResponse,
};

/// Length of the Basic Header Segment.
pub const BHS_LEN: usize = 48;

/// The opcodes of this subset (byte 0, low six bits).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum Opcode {
    /// NOP-Out (initiator).
    NopOut = 0x00,
    /// Login Request.
    LoginRequest = 0x03,
    /// Text Request.
    TextRequest = 0x04,
    /// Logout Request.
    LogoutRequest = 0x06,
    /// Login Response.
    LoginResponse = 0x23,
    /// Text Response.
    TextResponse = 0x24,
    /// Logout Response.
    LogoutResponse = 0x26,
    /// Asynchronous Message (target).
    AsyncMessage = 0x32,
    /// Reject.
    Reject = 0x3f,
}

/// A Basic Header Segment: 48 bytes, big-endian fields.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct Bhs(pub [u8; BHS_LEN]);

impl std::fmt::Debug for Bhs {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Bhs(")?;
        for b in self.0 {
            write!(f, "{b:02x}")?;
        }
        write!(f, ")")
    }
}

impl Bhs {
    /// An all-zero header with `opcode` (and the I bit when `immediate`).
    pub fn new(opcode: Opcode, immediate: bool) -> Bhs {
        let mut b = [0; BHS_LEN];
        b[0] = opcode as u8 | if immediate { 0x40 } else { 0 };
        Bhs(b)
    }

    /// The first [`BHS_LEN`] bytes of `buf`, if there are that many.
    pub fn from_slice(buf: &[u8]) -> Option<Bhs> {
        buf.get(..BHS_LEN)
            .map(|b| Bhs(b.try_into().expect("exactly BHS_LEN bytes")))
    }

    /// The opcode (byte 0, low six bits).
    pub fn opcode(&self) -> u8 {
        self.0[0] & 0x3f
    }

    /// The I (immediate delivery) bit.
    pub fn immediate(&self) -> bool {
        self.0[0] & 0x40 != 0
    }

    /// Byte 1: the opcode-specific flags (F/T, C, stages, reasons).
    pub fn flags(&self) -> u8 {
        self.0[1]
    }

    /// TotalAHSLength in bytes.
    pub fn ahs_len(&self) -> usize {
        self.0[4] as usize * 4
    }

    /// DataSegmentLength in bytes (without padding).
    pub fn data_len(&self) -> usize {
        u32::from_be_bytes([0, self.0[5], self.0[6], self.0[7]]) as usize
    }

    /// Sets DataSegmentLength; `len` must fit in 24 bits.
    pub(super) fn set_data_len(&mut self, len: usize) {
        assert!(len < 1 << 24, "data segment of {len} bytes");
        self.0[5..8].copy_from_slice(&(len as u32).to_be_bytes()[1..]);
    }

    /// The Initiator Task Tag (bytes 16..20).
    pub fn itt(&self) -> u32 {
        self.u32_at(16)
    }

    pub(super) fn u16_at(&self, at: usize) -> u16 {
        u16::from_be_bytes([self.0[at], self.0[at + 1]])
    }

    pub(super) fn u32_at(&self, at: usize) -> u32 {
        u32::from_be_bytes(self.0[at..at + 4].try_into().expect("4 bytes"))
    }

    pub(super) fn put_u16(&mut self, at: usize, v: u16) {
        self.0[at..at + 2].copy_from_slice(&v.to_be_bytes());
    }

    pub(super) fn put_u32(&mut self, at: usize, v: u32) {
        self.0[at..at + 4].copy_from_slice(&v.to_be_bytes());
    }

    /// Checks the opcode.
    pub(super) fn expect(&self, opcode: Opcode) -> Result<(), PduError> {
        if self.opcode() == opcode as u8 {
            Ok(())
        } else {
            Err(PduError::WrongOpcode {
                expected: opcode as u8,
                found: self.opcode(),
            })
        }
    }
}

/// `len` rounded up to a multiple of 4 (data segments are padded, §11.2.3).
pub fn padded_len(len: usize) -> usize {
    len.next_multiple_of(4)
}

/// The length of the whole PDU that starts with `bhs` (BHS, AHS, padded
/// data segment; no digests), if [`Limits`] allow it.
pub fn pdu_len(bhs: &Bhs, limits: &Limits) -> Result<usize, PduError> {
    let ahs = bhs.ahs_len();
    if ahs > limits.max_ahs {
        return Err(PduError::AhsTooLong {
            len: ahs,
            max: limits.max_ahs,
        });
    }
    let data = bhs.data_len();
    if data > limits.max_data_segment {
        return Err(PduError::DataSegmentTooLong {
            len: data,
            max: limits.max_data_segment,
        });
    }
    Ok(BHS_LEN + ahs + padded_len(data))
}

/// Appends a PDU: `bhs` with its DataSegmentLength set, then `data` padded
/// with zeros to a multiple of 4.
pub(super) fn emit(mut bhs: Bhs, data: &[u8], out: &mut Vec<u8>) {
    bhs.set_data_len(data.len());
    out.reserve(BHS_LEN + padded_len(data.len()));
    out.extend_from_slice(&bhs.0);
    out.extend_from_slice(data);
    out.resize(out.len() + padded_len(data.len()) - data.len(), 0);
}

/// One PDU of this subset, or the header of any other.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Pdu {
    /// 0x03.
    LoginRequest(LoginRequest),
    /// 0x23.
    LoginResponse(LoginResponse),
    /// 0x04.
    TextRequest(TextRequest),
    /// 0x24.
    TextResponse(TextResponse),
    /// 0x06.
    LogoutRequest(LogoutRequest),
    /// 0x26.
    LogoutResponse(LogoutResponse),
    /// 0x3f.
    Reject(Reject),
    /// Any other opcode: its header only (its AHS and data are skipped).
    Other(Bhs),
}

impl Pdu {
    /// Decodes the PDU at the start of `buf`; returns it and its length on
    /// the wire. [`PduError::Truncated`] says how many bytes a whole PDU
    /// needs; other errors mean the stream cannot be trusted any more.
    pub fn decode(buf: &[u8], limits: &Limits) -> Result<(Pdu, usize), PduError> {
        let Some(bhs) = Bhs::from_slice(buf) else {
            return Err(PduError::Truncated {
                need: BHS_LEN,
                have: buf.len(),
            });
        };
        let len = pdu_len(&bhs, limits)?;
        if buf.len() < len {
            return Err(PduError::Truncated {
                need: len,
                have: buf.len(),
            });
        }
        let start = BHS_LEN + bhs.ahs_len();
        let data = &buf[start..start + bhs.data_len()];
        Ok((Pdu::from_parts(&bhs, data)?, len))
    }

    /// Decodes a PDU from its header and its (unpadded) data segment.
    pub fn from_parts(bhs: &Bhs, data: &[u8]) -> Result<Pdu, PduError> {
        const LOGIN_REQ: u8 = Opcode::LoginRequest as u8;
        const LOGIN_RSP: u8 = Opcode::LoginResponse as u8;
        const TEXT_REQ: u8 = Opcode::TextRequest as u8;
        const TEXT_RSP: u8 = Opcode::TextResponse as u8;
        const LOGOUT_REQ: u8 = Opcode::LogoutRequest as u8;
        const LOGOUT_RSP: u8 = Opcode::LogoutResponse as u8;
        const REJECT: u8 = Opcode::Reject as u8;
        Ok(match bhs.opcode() {
            LOGIN_REQ => Pdu::LoginRequest(LoginRequest::from_parts(bhs, data)?),
            LOGIN_RSP => Pdu::LoginResponse(LoginResponse::from_parts(bhs, data)?),
            TEXT_REQ => Pdu::TextRequest(TextRequest::from_parts(bhs, data)?),
            TEXT_RSP => Pdu::TextResponse(TextResponse::from_parts(bhs, data)?),
            LOGOUT_REQ => Pdu::LogoutRequest(LogoutRequest::from_parts(bhs, data)?),
            LOGOUT_RSP => Pdu::LogoutResponse(LogoutResponse::from_parts(bhs, data)?),
            REJECT => Pdu::Reject(Reject::from_parts(bhs, data)?),
            _ => Pdu::Other(*bhs),
        })
    }

    /// Appends the PDU's bytes to `out`. [`Pdu::Other`] gives its header
    /// with an empty data segment.
    pub fn encode(&self, out: &mut Vec<u8>) {
        match self {
            Pdu::LoginRequest(p) => p.encode(out),
            Pdu::LoginResponse(p) => p.encode(out),
            Pdu::TextRequest(p) => p.encode(out),
            Pdu::TextResponse(p) => p.encode(out),
            Pdu::LogoutRequest(p) => p.encode(out),
            Pdu::LogoutResponse(p) => p.encode(out),
            Pdu::Reject(p) => p.encode(out),
            Pdu::Other(bhs) => emit(*bhs, &[], out),
        }
    }

    /// The PDU's bytes.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut out = Vec::new();
        self.encode(&mut out);
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lengths_come_from_bytes_4_to_7() {
        let mut b = [0u8; BHS_LEN];
        b[4] = 2;
        b[5..8].copy_from_slice(&[0x01, 0x02, 0x03]);
        let bhs = Bhs(b);
        assert_eq!(bhs.ahs_len(), 8);
        assert_eq!(bhs.data_len(), 0x010203);
        let limits = Limits {
            max_ahs: 8,
            max_data_segment: 0x010203,
            ..Limits::default()
        };
        assert_eq!(pdu_len(&bhs, &limits).unwrap(), 48 + 8 + 0x010204);
    }

    #[test]
    fn limits_refuse_before_any_allocation() {
        let mut b = [0u8; BHS_LEN];
        b[5..8].copy_from_slice(&[0xff, 0xff, 0xff]);
        assert_eq!(
            pdu_len(&Bhs(b), &Limits::default()),
            Err(PduError::DataSegmentTooLong {
                len: 0xff_ffff,
                max: 8192
            })
        );
        b[4] = 1;
        assert_eq!(
            pdu_len(&Bhs(b), &Limits::default()),
            Err(PduError::AhsTooLong { len: 4, max: 0 })
        );
    }

    #[test]
    fn decode_says_how_much_is_missing() {
        assert_eq!(
            Pdu::decode(&[0x43; 10], &Limits::default()),
            Err(PduError::Truncated { need: 48, have: 10 })
        );
        let mut b = vec![0u8; BHS_LEN];
        b[0] = 0x43;
        b[7] = 5; // 5 bytes of data, padded to 8
        assert_eq!(
            Pdu::decode(&b, &Limits::default()),
            Err(PduError::Truncated { need: 56, have: 48 })
        );
    }

    #[test]
    fn other_opcodes_keep_their_header() {
        let mut b = [0u8; BHS_LEN];
        b[0] = 0x41; // an immediate SCSI Command
        b[16..20].copy_from_slice(&[1, 2, 3, 4]);
        let (pdu, len) = Pdu::decode(&b, &Limits::default()).unwrap();
        assert_eq!(len, 48);
        assert_eq!(pdu, Pdu::Other(Bhs(b)));
        let Pdu::Other(bhs) = pdu else { unreachable!() };
        assert!(bhs.immediate());
        assert_eq!(bhs.itt(), 0x01020304);
        assert_eq!(Pdu::Other(bhs).to_bytes(), b);
    }

    #[test]
    fn emit_pads_with_zeros() {
        let mut out = Vec::new();
        emit(Bhs::new(Opcode::TextResponse, false), b"abcde", &mut out);
        assert_eq!(out.len(), 56);
        assert_eq!(&out[5..8], &[0, 0, 5]);
        assert_eq!(&out[48..], b"abcde\0\0\0");
    }
}
