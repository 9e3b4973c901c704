//! Reject (0x3f, §11.17): the target refuses a PDU of the full feature
//! phase and returns its header.

use super::{
    BHS_LEN, PduError, RESERVED_TAG,
    bhs::{Bhs, Opcode, emit},
};

/// A Reject reason (§11.17.1).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RejectReason(pub u8);

impl RejectReason {
    /// 0x04 Protocol error: the PDU cannot be resent.
    pub const PROTOCOL_ERROR: RejectReason = RejectReason(0x04);
    /// 0x05 Command not supported.
    pub const COMMAND_NOT_SUPPORTED: RejectReason = RejectReason(0x05);
    /// 0x09 Invalid PDU field.
    pub const INVALID_PDU_FIELD: RejectReason = RejectReason(0x09);
    /// 0x0a Long operation reject: out of resources.
    pub const LONG_OPERATION: RejectReason = RejectReason(0x0a);
}

/// A Reject.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reject {
    /// Why.
    pub reason: RejectReason,
    /// StatSN.
    pub stat_sn: u32,
    /// ExpCmdSN.
    pub exp_cmd_sn: u32,
    /// MaxCmdSN.
    pub max_cmd_sn: u32,
    /// The header of the rejected PDU (the data segment).
    pub header: Bhs,
}

impl Reject {
    /// Parses the PDU (opcode 0x3f, a 48-byte data segment).
    pub fn from_parts(bhs: &Bhs, data: &[u8]) -> Result<Reject, PduError> {
        bhs.expect(Opcode::Reject)?;
        let Some(header) = Bhs::from_slice(data).filter(|_| data.len() == BHS_LEN) else {
            return Err(PduError::InvalidField {
                field: "DataSegmentLength",
                why: format!("{} bytes where the rejected header's 48 belong", data.len()),
            });
        };
        Ok(Reject {
            reason: RejectReason(bhs.0[2]),
            stat_sn: bhs.u32_at(24),
            exp_cmd_sn: bhs.u32_at(28),
            max_cmd_sn: bhs.u32_at(32),
            header,
        })
    }

    /// Appends the PDU's bytes.
    pub fn encode(&self, out: &mut Vec<u8>) {
        let mut bhs = Bhs::new(Opcode::Reject, false);
        bhs.0[1] = 0x80;
        bhs.0[2] = self.reason.0;
        bhs.put_u32(16, RESERVED_TAG);
        bhs.put_u32(24, self.stat_sn);
        bhs.put_u32(28, self.exp_cmd_sn);
        bhs.put_u32(32, self.max_cmd_sn);
        emit(bhs, &self.header.0, out);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::iscsi::{Limits, Pdu};

    #[test]
    fn reject_is_byte_exact() {
        let mut rejected = [0u8; BHS_LEN];
        rejected[0] = 0x01; // a SCSI Command in a discovery session
        rejected[16..20].copy_from_slice(&[0, 0, 0, 5]);
        let rej = Reject {
            reason: RejectReason::COMMAND_NOT_SUPPORTED,
            stat_sn: 3,
            exp_cmd_sn: 4,
            max_cmd_sn: 4,
            header: Bhs(rejected),
        };
        let mut want = vec![
            0x3f, 0x80, 0x05, 0, // opcode, F, reason
            0, 0, 0, 48, // AHS, DataSegmentLength
            0, 0, 0, 0, 0, 0, 0, 0, // reserved
            0xff, 0xff, 0xff, 0xff, // reserved tag
            0, 0, 0, 0, // reserved
            0, 0, 0, 3, // StatSN
            0, 0, 0, 4, // ExpCmdSN
            0, 0, 0, 4, // MaxCmdSN
        ];
        want.resize(BHS_LEN, 0);
        want.extend_from_slice(&rejected);
        let bytes = Pdu::Reject(rej.clone()).to_bytes();
        assert_eq!(bytes, want);
        assert_eq!(
            Pdu::decode(&bytes, &Limits::default()).unwrap().0,
            Pdu::Reject(rej)
        );
    }

    #[test]
    fn reject_needs_a_whole_header() {
        let mut b = vec![0u8; BHS_LEN];
        b[0] = 0x3f;
        b[7] = 4;
        b.extend_from_slice(&[0; 4]);
        assert!(matches!(
            Pdu::decode(&b, &Limits::default()),
            Err(PduError::InvalidField { .. })
        ));
    }
}
