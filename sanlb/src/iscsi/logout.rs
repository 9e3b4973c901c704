//! Logout Request (0x06, §11.14) and Logout Response (0x26, §11.15).

use super::{
    PduError,
    bhs::{Bhs, Opcode, emit},
};

/// A Logout Request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogoutRequest {
    /// I: immediate delivery.
    pub immediate: bool,
    /// Reason code: 0 close the session, 1 close the connection, 2 remove
    /// the connection for recovery.
    pub reason: u8,
    /// Initiator Task Tag.
    pub itt: u32,
    /// Connection id (reasons 1 and 2).
    pub cid: u16,
    /// CmdSN.
    pub cmd_sn: u32,
    /// ExpStatSN.
    pub exp_stat_sn: u32,
}

impl LogoutRequest {
    /// Parses the header (opcode 0x06, F set, no data segment).
    pub fn from_parts(bhs: &Bhs, data: &[u8]) -> Result<LogoutRequest, PduError> {
        bhs.expect(Opcode::LogoutRequest)?;
        if bhs.flags() & 0x80 == 0 {
            return Err(PduError::InvalidField {
                field: "flags",
                why: "F is always set on a logout request".into(),
            });
        }
        if !data.is_empty() {
            return Err(PduError::InvalidField {
                field: "DataSegmentLength",
                why: format!("{} bytes on a logout request", data.len()),
            });
        }
        Ok(LogoutRequest {
            immediate: bhs.immediate(),
            reason: bhs.flags() & 0x7f,
            itt: bhs.itt(),
            cid: bhs.u16_at(20),
            cmd_sn: bhs.u32_at(24),
            exp_stat_sn: bhs.u32_at(28),
        })
    }

    /// Appends the PDU's bytes.
    pub fn encode(&self, out: &mut Vec<u8>) {
        let mut bhs = Bhs::new(Opcode::LogoutRequest, self.immediate);
        bhs.0[1] = 0x80 | (self.reason & 0x7f);
        bhs.put_u32(16, self.itt);
        bhs.put_u16(20, self.cid);
        bhs.put_u32(24, self.cmd_sn);
        bhs.put_u32(28, self.exp_stat_sn);
        emit(bhs, &[], out);
    }
}

/// A Logout Response.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogoutResponse {
    /// 0 closed successfully, 1 CID not found, 2 recovery not supported,
    /// 3 cleanup failed.
    pub response: u8,
    /// Initiator Task Tag, as in the request.
    pub itt: u32,
    /// StatSN.
    pub stat_sn: u32,
    /// ExpCmdSN.
    pub exp_cmd_sn: u32,
    /// MaxCmdSN.
    pub max_cmd_sn: u32,
    /// Time2Wait, seconds.
    pub time2wait: u16,
    /// Time2Retain, seconds.
    pub time2retain: u16,
}

impl LogoutResponse {
    /// Parses the header (opcode 0x26, no data segment).
    pub fn from_parts(bhs: &Bhs, data: &[u8]) -> Result<LogoutResponse, PduError> {
        bhs.expect(Opcode::LogoutResponse)?;
        if !data.is_empty() {
            return Err(PduError::InvalidField {
                field: "DataSegmentLength",
                why: format!("{} bytes on a logout response", data.len()),
            });
        }
        Ok(LogoutResponse {
            response: bhs.0[2],
            itt: bhs.itt(),
            stat_sn: bhs.u32_at(24),
            exp_cmd_sn: bhs.u32_at(28),
            max_cmd_sn: bhs.u32_at(32),
            time2wait: bhs.u16_at(40),
            time2retain: bhs.u16_at(42),
        })
    }

    /// Appends the PDU's bytes.
    pub fn encode(&self, out: &mut Vec<u8>) {
        let mut bhs = Bhs::new(Opcode::LogoutResponse, false);
        bhs.0[1] = 0x80;
        bhs.0[2] = self.response;
        bhs.put_u32(16, self.itt);
        bhs.put_u32(24, self.stat_sn);
        bhs.put_u32(28, self.exp_cmd_sn);
        bhs.put_u32(32, self.max_cmd_sn);
        bhs.put_u16(40, self.time2wait);
        bhs.put_u16(42, self.time2retain);
        emit(bhs, &[], out);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::iscsi::{BHS_LEN, Limits, Pdu};

    #[test]
    fn logout_request_is_byte_exact() {
        let mut b = vec![
            0x46, 0x80, 0, 0, 0, 0, 0, 0, // I + 0x06, F + reason 0
            0, 0, 0, 0, 0, 0, 0, 0, // reserved
            0, 0, 0, 9, // ITT
            0, 0, 0, 0, // CID, reserved
            0, 0, 1, 0, // CmdSN
            0, 0, 2, 0, // ExpStatSN
        ];
        b.resize(BHS_LEN, 0);
        let (pdu, len) = Pdu::decode(&b, &Limits::default()).unwrap();
        assert_eq!(len, 48);
        let want = LogoutRequest {
            immediate: true,
            reason: 0,
            itt: 9,
            cid: 0,
            cmd_sn: 0x100,
            exp_stat_sn: 0x200,
        };
        assert_eq!(pdu, Pdu::LogoutRequest(want.clone()));
        assert_eq!(Pdu::LogoutRequest(want).to_bytes(), b);
    }

    #[test]
    fn logout_response_is_byte_exact() {
        let rsp = LogoutResponse {
            response: 0,
            itt: 9,
            stat_sn: 0x201,
            exp_cmd_sn: 0x100,
            max_cmd_sn: 0x100,
            time2wait: 0,
            time2retain: 0,
        };
        let mut want = vec![
            0x26, 0x80, 0, 0, 0, 0, 0, 0, // opcode, F, response 0
            0, 0, 0, 0, 0, 0, 0, 0, // reserved
            0, 0, 0, 9, // ITT
            0, 0, 0, 0, // reserved
            0, 0, 2, 1, // StatSN
            0, 0, 1, 0, // ExpCmdSN
            0, 0, 1, 0, // MaxCmdSN
        ];
        want.resize(BHS_LEN, 0);
        let bytes = Pdu::LogoutResponse(rsp.clone()).to_bytes();
        assert_eq!(bytes, want);
        assert_eq!(
            Pdu::decode(&bytes, &Limits::default()).unwrap().0,
            Pdu::LogoutResponse(rsp)
        );
    }

    #[test]
    fn logout_without_f_or_with_data_is_refused() {
        let mut b = vec![0u8; BHS_LEN];
        b[0] = 0x46;
        assert!(matches!(
            Pdu::decode(&b, &Limits::default()),
            Err(PduError::InvalidField { field: "flags", .. })
        ));
        b[1] = 0x80;
        b[7] = 4;
        b.extend_from_slice(b"A=b\0");
        assert!(matches!(
            Pdu::decode(&b, &Limits::default()),
            Err(PduError::InvalidField {
                field: "DataSegmentLength",
                ..
            })
        ));
    }
}
