//! A codec for the login, redirect and discovery subset of iSCSI (RFC 7143).
//!
//! What the redirecting portal ([`crate::portal`]) speaks, and nothing more:
//! the Basic Header Segment and PDU framing ([`Bhs`], [`pdu_len`]), the
//! NUL-separated `key=value` text of login and text PDUs ([`Keys`], §6.1),
//! Login Request/Response (0x03/0x23, §11.12–11.13, with [`LoginStatus`] and
//! the redirect of §11.13.5), Text Request/Response (0x04/0x24) for
//! `SendTargets` (Appendix C), Logout Request/Response (0x06/0x26) and Reject
//! (0x3f). Every PDU parses and serialises byte-exactly; [`Pdu::decode`]
//! frames one PDU out of a buffer.
//!
//! Written by hand because no usable Rust iSCSI crate exists. The one Rust
//! iSCSI initiator library that does exist is AGPL-licensed: it is neither a
//! dependency nor a source of this code. The layouts follow the RFC; libiscsi
//! (the initiator of the tests) was read only to learn its behaviour.
//!
//! Hostile input is the normal case: every parser checks lengths before it
//! reads, allocates at most what [`Limits`] allows, and returns a
//! [`PduError`] naming what is wrong; none panics (a property test feeds it
//! random and mutated PDUs). Digests are never negotiated by sanlb, so PDUs
//! carry none.
//!
//! ```
//! use sanlb::iscsi::{Keys, Limits, LoginRequest, LoginResponse, Pdu, Stage};
//!
//! let mut keys = Keys::new();
//! keys.push("InitiatorName", "iqn.2026-11.test.sanlb:h1");
//! keys.push("TargetName", "iqn.2026-11.test.sanlb:t1");
//! keys.push("SessionType", "Normal");
//! let req = LoginRequest::new(Stage::Operational, Some(Stage::FullFeature), [0x80, 0, 0, 0, 0, 1], 7, keys.encode());
//! let wire = Pdu::LoginRequest(req).to_bytes();
//!
//! let (pdu, used) = Pdu::decode(&wire, &Limits::default()).unwrap();
//! assert_eq!(used, wire.len());
//! let Pdu::LoginRequest(req) = pdu else { unreachable!() };
//! let keys = req.keys(&Limits::default()).unwrap();
//! assert_eq!(keys.get("TargetName"), Some("iqn.2026-11.test.sanlb:t1"));
//!
//! let redirect = LoginResponse::redirect(&req, "198.18.1.1:3261".parse().unwrap());
//! assert_eq!(redirect.status.0, 0x0101);
//! ```

mod bhs;
mod keys;
mod login;
mod logout;
mod reject;
mod text;

pub use bhs::{BHS_LEN, Bhs, Opcode, Pdu, padded_len, pdu_len};
pub use keys::{Keys, target_address};
pub use login::{LoginRequest, LoginResponse, LoginStatus, Stage};
pub use logout::{LogoutRequest, LogoutResponse};
pub use reject::{Reject, RejectReason};
pub use text::{SendTargets, TextRequest, TextResponse, send_targets_text};

/// The RFC's default MaxRecvDataSegmentLength (§13.12): what either side
/// may send during login and before declaring anything else.
pub const DEFAULT_MAX_RECV_DATA_SEGMENT: usize = 8192;

/// The reserved task tag (`0xffffffff`).
pub const RESERVED_TAG: u32 = 0xffff_ffff;

/// Bounds on what a parser accepts; everything above is an error.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Largest DataSegmentLength accepted, in bytes (default 8192, the
    /// RFC's MaxRecvDataSegmentLength during login).
    pub max_data_segment: usize,
    /// Largest TotalAHSLength accepted, in bytes (default 0: none of the
    /// PDUs of this subset has an Additional Header Segment).
    pub max_ahs: usize,
    /// Longest key name (default 63, §6.1).
    pub max_key_len: usize,
    /// Longest value (default 255, §6.1; iSCSI names are at most 223).
    pub max_value_len: usize,
    /// Most `key=value` pairs in one text (default 64).
    pub max_keys: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_data_segment: DEFAULT_MAX_RECV_DATA_SEGMENT,
            max_ahs: 0,
            max_key_len: 63,
            max_value_len: 255,
            max_keys: 64,
        }
    }
}

/// Why bytes are not a valid PDU of this subset.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PduError {
    /// The buffer ends before the PDU does; `need` bytes make it whole.
    #[error("truncated pdu: {have} of {need} bytes")]
    Truncated {
        /// Bytes the PDU needs (BHS, AHS, padded data segment).
        need: usize,
        /// Bytes there are.
        have: usize,
    },
    /// TotalAHSLength is above [`Limits::max_ahs`].
    #[error("additional header segment of {len} bytes (at most {max} accepted)")]
    AhsTooLong {
        /// Its length in bytes.
        len: usize,
        /// The limit.
        max: usize,
    },
    /// DataSegmentLength is above [`Limits::max_data_segment`].
    #[error("data segment of {len} bytes (at most {max} accepted)")]
    DataSegmentTooLong {
        /// DataSegmentLength.
        len: usize,
        /// The limit.
        max: usize,
    },
    /// The opcode is not the one the parser expects.
    #[error("opcode {found:#04x} where {expected:#04x} was expected")]
    WrongOpcode {
        /// The opcode expected.
        expected: u8,
        /// The opcode found.
        found: u8,
    },
    /// A header field holds a value the RFC forbids.
    #[error("invalid {field}: {why}")]
    InvalidField {
        /// The field.
        field: &'static str,
        /// What is wrong.
        why: String,
    },
    /// The text of the data segment is malformed.
    #[error("text: {0}")]
    Text(#[from] KeyError),
}

/// Why a `key=value` text (§6.1) is malformed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KeyError {
    /// A pair without `=`.
    #[error("pair {index} has no '='")]
    NoEquals {
        /// Its position (0-based).
        index: usize,
    },
    /// A key that is empty, too long or holds characters outside §6.1's set.
    #[error("pair {index}: invalid key {key:?}: {why}")]
    BadKey {
        /// Its position (0-based).
        index: usize,
        /// The key, cut to 64 characters.
        key: String,
        /// What is wrong.
        why: &'static str,
    },
    /// A value above [`Limits::max_value_len`].
    #[error("value of {key} is {len} bytes (at most {max} accepted)")]
    ValueTooLong {
        /// The key.
        key: String,
        /// Its length.
        len: usize,
        /// The limit.
        max: usize,
    },
    /// A value that is not UTF-8.
    #[error("value of {key} is not UTF-8")]
    NotUtf8 {
        /// The key.
        key: String,
    },
    /// More pairs than [`Limits::max_keys`].
    #[error("more than {max} pairs")]
    TooMany {
        /// The limit.
        max: usize,
    },
    /// The last pair has no terminating NUL.
    #[error("the last pair is not NUL-terminated")]
    Unterminated,
    /// A key given twice (a negotiation must name each key once, §6.2).
    #[error("key {0} given twice")]
    Duplicate(String),
}
