//! Text Request (0x04, §11.10) and Text Response (0x24, §11.11), and the
//! SendTargets exchange of discovery sessions (Appendix C).

use std::net::SocketAddr;

use super::{
    Keys, Limits, PduError,
    bhs::{Bhs, Opcode, emit},
    target_address,
};

const F_BIT: u8 = 0x80;
const C_BIT: u8 = 0x40;

fn final_and_continue(bhs: &Bhs) -> Result<(bool, bool), PduError> {
    let (f, c) = (bhs.flags() & F_BIT != 0, bhs.flags() & C_BIT != 0);
    if f && c {
        return Err(PduError::InvalidField {
            field: "flags",
            why: "F and C both set".into(),
        });
    }
    Ok((f, c))
}

/// A Text Request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TextRequest {
    /// I: immediate delivery (CmdSN does not advance).
    pub immediate: bool,
    /// F: the last request of this exchange.
    pub final_: bool,
    /// C: the text goes on in the next request.
    pub cont: bool,
    /// LUN (bytes 8..16; unused by SendTargets).
    pub lun: [u8; 8],
    /// Initiator Task Tag.
    pub itt: u32,
    /// Target Transfer Tag: `0xffffffff` to start, or the one of a
    /// continued response.
    pub ttt: u32,
    /// CmdSN.
    pub cmd_sn: u32,
    /// ExpStatSN.
    pub exp_stat_sn: u32,
    /// The text, unpadded.
    pub data: Vec<u8>,
}

impl TextRequest {
    /// Parses the header (opcode 0x04, not both F and C).
    pub fn from_parts(bhs: &Bhs, data: &[u8]) -> Result<TextRequest, PduError> {
        bhs.expect(Opcode::TextRequest)?;
        let (final_, cont) = final_and_continue(bhs)?;
        Ok(TextRequest {
            immediate: bhs.immediate(),
            final_,
            cont,
            lun: bhs.0[8..16].try_into().expect("8 bytes"),
            itt: bhs.itt(),
            ttt: bhs.u32_at(20),
            cmd_sn: bhs.u32_at(24),
            exp_stat_sn: bhs.u32_at(28),
            data: data.to_vec(),
        })
    }

    /// Parses the text.
    pub fn keys(&self, limits: &Limits) -> Result<Keys, PduError> {
        Ok(Keys::parse(&self.data, limits)?)
    }

    /// Appends the PDU's bytes.
    pub fn encode(&self, out: &mut Vec<u8>) {
        let mut bhs = Bhs::new(Opcode::TextRequest, self.immediate);
        bhs.0[1] = flags(self.final_, self.cont);
        bhs.0[8..16].copy_from_slice(&self.lun);
        bhs.put_u32(16, self.itt);
        bhs.put_u32(20, self.ttt);
        bhs.put_u32(24, self.cmd_sn);
        bhs.put_u32(28, self.exp_stat_sn);
        emit(bhs, &self.data, out);
    }
}

fn flags(final_: bool, cont: bool) -> u8 {
    (if final_ { F_BIT } else { 0 }) | if cont { C_BIT } else { 0 }
}

/// A Text Response.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TextResponse {
    /// F: the last response of this exchange.
    pub final_: bool,
    /// C: the text goes on; the initiator asks for more with an empty
    /// request carrying [`TextResponse::ttt`].
    pub cont: bool,
    /// LUN (bytes 8..16).
    pub lun: [u8; 8],
    /// Initiator Task Tag, as in the request.
    pub itt: u32,
    /// Target Transfer Tag: `0xffffffff` on the final response.
    pub ttt: u32,
    /// StatSN.
    pub stat_sn: u32,
    /// ExpCmdSN.
    pub exp_cmd_sn: u32,
    /// MaxCmdSN.
    pub max_cmd_sn: u32,
    /// The text, unpadded.
    pub data: Vec<u8>,
}

impl TextResponse {
    /// Parses the header (opcode 0x24, not both F and C).
    pub fn from_parts(bhs: &Bhs, data: &[u8]) -> Result<TextResponse, PduError> {
        bhs.expect(Opcode::TextResponse)?;
        let (final_, cont) = final_and_continue(bhs)?;
        Ok(TextResponse {
            final_,
            cont,
            lun: bhs.0[8..16].try_into().expect("8 bytes"),
            itt: bhs.itt(),
            ttt: bhs.u32_at(20),
            stat_sn: bhs.u32_at(24),
            exp_cmd_sn: bhs.u32_at(28),
            max_cmd_sn: bhs.u32_at(32),
            data: data.to_vec(),
        })
    }

    /// Parses the text (complete only when neither this response nor the
    /// ones before it were cut by C).
    pub fn keys(&self, limits: &Limits) -> Result<Keys, PduError> {
        Ok(Keys::parse(&self.data, limits)?)
    }

    /// Appends the PDU's bytes.
    pub fn encode(&self, out: &mut Vec<u8>) {
        let mut bhs = Bhs::new(Opcode::TextResponse, false);
        bhs.0[1] = flags(self.final_, self.cont);
        bhs.0[8..16].copy_from_slice(&self.lun);
        bhs.put_u32(16, self.itt);
        bhs.put_u32(20, self.ttt);
        bhs.put_u32(24, self.stat_sn);
        bhs.put_u32(28, self.exp_cmd_sn);
        bhs.put_u32(32, self.max_cmd_sn);
        emit(bhs, &self.data, out);
    }
}

/// What a `SendTargets=` value asks for (Appendix C).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SendTargets {
    /// `All`: every target the portal offers.
    All,
    /// A target name: that one only.
    Target(String),
    /// Empty: the session's own target (only in a normal session).
    Session,
}

impl SendTargets {
    /// Reads a `SendTargets` value.
    pub fn parse(value: &str) -> SendTargets {
        match value {
            "All" => SendTargets::All,
            "" => SendTargets::Session,
            name => SendTargets::Target(name.to_owned()),
        }
    }

    /// `IP:PORT,TPGT` as a TargetAddress value of a SendTargets answer.
    pub fn address(addr: SocketAddr, tpgt: u16) -> String {
        format!("{},{tpgt}", target_address(addr))
    }
}

/// The text of a SendTargets answer: for each target `TargetName=NAME`,
/// then `TargetAddress=ADDRESS` for each of its addresses (built with
/// [`SendTargets::address`]).
pub fn send_targets_text<'a, A>(targets: impl IntoIterator<Item = (&'a str, A)>) -> Vec<u8>
where
    A: IntoIterator<Item = &'a str>,
{
    let mut keys = Keys::new();
    for (name, addresses) in targets {
        keys.push("TargetName", name);
        for a in addresses {
            keys.push("TargetAddress", a);
        }
    }
    keys.encode()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::iscsi::{BHS_LEN, Pdu, RESERVED_TAG};

    /// libiscsi's discovery request: immediate, F, TTT reserved,
    /// `SendTargets=All`.
    #[test]
    fn parses_send_targets_all() {
        let text = b"SendTargets=All\0";
        let mut b = vec![
            0x44,
            0x80,
            0,
            0, // I + opcode 0x04, F
            0,
            0,
            0,
            text.len() as u8, // AHS, DataSegmentLength
            0,
            0,
            0,
            0,
            0,
            0,
            0,
            0, // LUN
            0,
            0,
            0,
            7, // ITT
            0xff,
            0xff,
            0xff,
            0xff, // TTT
            0,
            0,
            0,
            0x10, // CmdSN
            0,
            0,
            0,
            0x20, // ExpStatSN
        ];
        b.resize(BHS_LEN, 0);
        b.extend_from_slice(text);
        let (Pdu::TextRequest(req), len) = Pdu::decode(&b, &Limits::default()).unwrap() else {
            panic!()
        };
        assert_eq!(len, 64);
        assert!(req.immediate && req.final_ && !req.cont);
        assert_eq!(
            (req.itt, req.ttt, req.cmd_sn, req.exp_stat_sn),
            (7, RESERVED_TAG, 0x10, 0x20)
        );
        let keys = req.keys(&Limits::default()).unwrap();
        assert_eq!(
            SendTargets::parse(keys.get("SendTargets").unwrap()),
            SendTargets::All
        );
        assert_eq!(Pdu::TextRequest(req).to_bytes(), b);
    }

    #[test]
    fn send_targets_answer_is_byte_exact() {
        let addr = SendTargets::address("198.18.1.50:3260".parse().unwrap(), 1);
        let text = send_targets_text([
            ("iqn.2026-11.test.sanlb:t1", [addr.as_str()]),
            ("iqn.2026-11.test.sanlb:t2", [addr.as_str()]),
        ]);
        let want: &[u8] = b"TargetName=iqn.2026-11.test.sanlb:t1\0\
                            TargetAddress=198.18.1.50:3260,1\0\
                            TargetName=iqn.2026-11.test.sanlb:t2\0\
                            TargetAddress=198.18.1.50:3260,1\0";
        assert_eq!(text, want);
        let v6 = SendTargets::address("[2001:2::50]:3260".parse().unwrap(), 1);
        assert_eq!(v6, "[2001:2::50]:3260,1");

        let rsp = TextResponse {
            final_: true,
            cont: false,
            lun: [0; 8],
            itt: 7,
            ttt: RESERVED_TAG,
            stat_sn: 0x21,
            exp_cmd_sn: 0x10,
            max_cmd_sn: 0x10,
            data: text,
        };
        let bytes = Pdu::TextResponse(rsp.clone()).to_bytes();
        let mut head = vec![
            0x24,
            0x80,
            0,
            0,
            0,
            0,
            0,
            want.len() as u8, // opcode, F, DSL
            0,
            0,
            0,
            0,
            0,
            0,
            0,
            0, // LUN
            0,
            0,
            0,
            7, // ITT
            0xff,
            0xff,
            0xff,
            0xff, // TTT
            0,
            0,
            0,
            0x21, // StatSN
            0,
            0,
            0,
            0x10, // ExpCmdSN
            0,
            0,
            0,
            0x10, // MaxCmdSN
        ];
        head.resize(BHS_LEN, 0);
        assert_eq!(&bytes[..BHS_LEN], head.as_slice());
        assert_eq!(&bytes[BHS_LEN..BHS_LEN + want.len()], want);
        assert_eq!(bytes.len(), BHS_LEN + want.len().next_multiple_of(4));
        assert_eq!(
            Pdu::decode(&bytes, &Limits::default()).unwrap().0,
            Pdu::TextResponse(rsp)
        );
    }

    #[test]
    fn send_targets_values() {
        assert_eq!(SendTargets::parse("All"), SendTargets::All);
        assert_eq!(SendTargets::parse(""), SendTargets::Session);
        assert_eq!(
            SendTargets::parse("iqn.x:t1"),
            SendTargets::Target("iqn.x:t1".into())
        );
    }

    #[test]
    fn final_and_continue_together_are_refused() {
        let mut b = vec![0u8; BHS_LEN];
        b[0] = 0x04;
        b[1] = 0xc0;
        assert!(matches!(
            Pdu::decode(&b, &Limits::default()),
            Err(PduError::InvalidField { field: "flags", .. })
        ));
        b[0] = 0x24;
        assert!(matches!(
            Pdu::decode(&b, &Limits::default()),
            Err(PduError::InvalidField { field: "flags", .. })
        ));
    }
}
