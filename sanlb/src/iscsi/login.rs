//! Login Request (0x03, §11.12) and Login Response (0x23, §11.13).

use std::net::SocketAddr;

use super::{
    Keys, Limits, PduError,
    bhs::{Bhs, Opcode, emit},
    target_address,
};

const T_BIT: u8 = 0x80;
const C_BIT: u8 = 0x40;

/// A login stage (CSG/NSG, §11.12.3); the value 2 is reserved.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
#[repr(u8)]
pub enum Stage {
    /// SecurityNegotiation (0).
    Security = 0,
    /// LoginOperationalNegotiation (1).
    Operational = 1,
    /// FullFeaturePhase (3).
    FullFeature = 3,
}

impl Stage {
    fn from_bits(bits: u8, field: &'static str) -> Result<Stage, PduError> {
        match bits & 3 {
            0 => Ok(Stage::Security),
            1 => Ok(Stage::Operational),
            3 => Ok(Stage::FullFeature),
            _ => Err(PduError::InvalidField {
                field,
                why: "reserved stage 2".into(),
            }),
        }
    }
}

/// Status-Class and Status-Detail of a Login Response (§11.13.5), as one
/// number: `0x0101` is class 1, detail 1.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct LoginStatus(pub u16);

impl LoginStatus {
    /// 0x0000 Success.
    pub const SUCCESS: LoginStatus = LoginStatus(0x0000);
    /// 0x0101 Target moved temporarily: TargetAddress names where to log in;
    /// the initiator comes back to the original portal when it reconnects.
    pub const TARGET_MOVED_TEMPORARILY: LoginStatus = LoginStatus(0x0101);
    /// 0x0102 Target moved permanently (libiscsi 1.19 fails the login on it).
    pub const TARGET_MOVED_PERMANENTLY: LoginStatus = LoginStatus(0x0102);
    /// 0x0200 Initiator error (miscellaneous).
    pub const INITIATOR_ERROR: LoginStatus = LoginStatus(0x0200);
    /// 0x0201 Authentication failure.
    pub const AUTHENTICATION_FAILURE: LoginStatus = LoginStatus(0x0201);
    /// 0x0202 Authorization failure.
    pub const AUTHORIZATION_FAILURE: LoginStatus = LoginStatus(0x0202);
    /// 0x0203 Not found: no such target.
    pub const NOT_FOUND: LoginStatus = LoginStatus(0x0203);
    /// 0x0204 Target removed.
    pub const TARGET_REMOVED: LoginStatus = LoginStatus(0x0204);
    /// 0x0205 Unsupported version.
    pub const UNSUPPORTED_VERSION: LoginStatus = LoginStatus(0x0205);
    /// 0x0206 Too many connections.
    pub const TOO_MANY_CONNECTIONS: LoginStatus = LoginStatus(0x0206);
    /// 0x0207 Missing parameter.
    pub const MISSING_PARAMETER: LoginStatus = LoginStatus(0x0207);
    /// 0x0209 Session type not supported.
    pub const SESSION_TYPE_NOT_SUPPORTED: LoginStatus = LoginStatus(0x0209);
    /// 0x020b Invalid request during login.
    pub const INVALID_DURING_LOGIN: LoginStatus = LoginStatus(0x020b);
    /// 0x0300 Target error (miscellaneous).
    pub const TARGET_ERROR: LoginStatus = LoginStatus(0x0300);
    /// 0x0301 Service unavailable: try again later.
    pub const SERVICE_UNAVAILABLE: LoginStatus = LoginStatus(0x0301);
    /// 0x0302 Out of resources.
    pub const OUT_OF_RESOURCES: LoginStatus = LoginStatus(0x0302);

    /// Status-Class: 0 success, 1 redirection, 2 initiator error, 3 target
    /// error.
    pub fn class(self) -> u8 {
        (self.0 >> 8) as u8
    }

    /// Status-Detail.
    pub fn detail(self) -> u8 {
        self.0 as u8
    }

    /// The RFC's name of the status, if it has one.
    pub fn name(self) -> Option<&'static str> {
        Some(match self.0 {
            0x0000 => "success",
            0x0101 => "target moved temporarily",
            0x0102 => "target moved permanently",
            0x0103 => "proxy required",
            0x0200 => "initiator error",
            0x0201 => "authentication failure",
            0x0202 => "authorization failure",
            0x0203 => "not found",
            0x0204 => "target removed",
            0x0205 => "unsupported version",
            0x0206 => "too many connections",
            0x0207 => "missing parameter",
            0x0208 => "can't include in session",
            0x0209 => "session type not supported",
            0x020a => "session does not exist",
            0x020b => "invalid during login",
            0x0300 => "target error",
            0x0301 => "service unavailable",
            0x0302 => "out of resources",
            _ => return None,
        })
    }
}

impl std::fmt::Display for LoginStatus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.name() {
            Some(name) => write!(f, "{:#06x} ({name})", self.0),
            None => write!(f, "{:#06x}", self.0),
        }
    }
}

/// A Login Request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LoginRequest {
    /// T: the initiator wants to go to [`LoginRequest::nsg`].
    pub transit: bool,
    /// C: the text goes on in the next Login Request.
    pub cont: bool,
    /// The current stage: never [`Stage::FullFeature`].
    pub csg: Stage,
    /// The next stage, set exactly when T is (then above `csg`).
    pub nsg: Option<Stage>,
    /// Version-max.
    pub version_max: u8,
    /// Version-min.
    pub version_min: u8,
    /// The initiator part of the session id.
    pub isid: [u8; 6],
    /// Target-assigned session handle (0 for a new session).
    pub tsih: u16,
    /// Initiator Task Tag.
    pub itt: u32,
    /// Connection id.
    pub cid: u16,
    /// CmdSN.
    pub cmd_sn: u32,
    /// ExpStatSN.
    pub exp_stat_sn: u32,
    /// The text (`key=value\0`...), unpadded; see [`LoginRequest::keys`].
    pub data: Vec<u8>,
}

impl LoginRequest {
    /// A request for a new session (TSIH 0) in stage `csg`, transiting to
    /// `nsg` if given; all counters 0, version 0.
    pub fn new(
        csg: Stage,
        nsg: Option<Stage>,
        isid: [u8; 6],
        itt: u32,
        data: Vec<u8>,
    ) -> LoginRequest {
        LoginRequest {
            transit: nsg.is_some(),
            cont: false,
            csg,
            nsg,
            version_max: 0,
            version_min: 0,
            isid,
            tsih: 0,
            itt,
            cid: 0,
            cmd_sn: 0,
            exp_stat_sn: 0,
            data,
        }
    }

    /// Parses and checks the header: opcode 0x03 with the I bit, not both
    /// T and C, no reserved stage, CSG below full feature, NSG above CSG.
    pub fn from_parts(bhs: &Bhs, data: &[u8]) -> Result<LoginRequest, PduError> {
        bhs.expect(Opcode::LoginRequest)?;
        if !bhs.immediate() {
            return Err(PduError::InvalidField {
                field: "I bit",
                why: "a login request is always immediate".into(),
            });
        }
        let flags = bhs.flags();
        let (transit, cont) = (flags & T_BIT != 0, flags & C_BIT != 0);
        if transit && cont {
            return Err(PduError::InvalidField {
                field: "flags",
                why: "T and C both set".into(),
            });
        }
        let csg = Stage::from_bits(flags >> 2, "CSG")?;
        if csg == Stage::FullFeature {
            return Err(PduError::InvalidField {
                field: "CSG",
                why: "a login cannot be in the full feature phase".into(),
            });
        }
        let nsg = if transit {
            let nsg = Stage::from_bits(flags, "NSG")?;
            if nsg <= csg {
                return Err(PduError::InvalidField {
                    field: "NSG",
                    why: format!("no transit from {csg:?} to {nsg:?}"),
                });
            }
            Some(nsg)
        } else {
            None
        };
        Ok(LoginRequest {
            transit,
            cont,
            csg,
            nsg,
            version_max: bhs.0[2],
            version_min: bhs.0[3],
            isid: bhs.0[8..14].try_into().expect("6 bytes"),
            tsih: bhs.u16_at(14),
            itt: bhs.itt(),
            cid: bhs.u16_at(20),
            cmd_sn: bhs.u32_at(24),
            exp_stat_sn: bhs.u32_at(28),
            data: data.to_vec(),
        })
    }

    /// Parses the text. With C set it may end mid-pair: join the texts of
    /// the continued requests first.
    pub fn keys(&self, limits: &Limits) -> Result<Keys, PduError> {
        Ok(Keys::parse(&self.data, limits)?)
    }

    /// Appends the PDU's bytes.
    pub fn encode(&self, out: &mut Vec<u8>) {
        let mut bhs = Bhs::new(Opcode::LoginRequest, true);
        bhs.0[1] = stage_flags(self.transit, self.cont, self.csg, self.nsg);
        bhs.0[2] = self.version_max;
        bhs.0[3] = self.version_min;
        bhs.0[8..14].copy_from_slice(&self.isid);
        bhs.put_u16(14, self.tsih);
        bhs.put_u32(16, self.itt);
        bhs.put_u16(20, self.cid);
        bhs.put_u32(24, self.cmd_sn);
        bhs.put_u32(28, self.exp_stat_sn);
        emit(bhs, &self.data, out);
    }
}

fn stage_flags(transit: bool, cont: bool, csg: Stage, nsg: Option<Stage>) -> u8 {
    (if transit { T_BIT } else { 0 })
        | (if cont { C_BIT } else { 0 })
        | (csg as u8) << 2
        | nsg.map_or(0, |s| s as u8)
}

/// A Login Response.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LoginResponse {
    /// T: the target agrees to go to [`LoginResponse::nsg`].
    pub transit: bool,
    /// C: the text goes on in the next Login Response.
    pub cont: bool,
    /// The current stage.
    pub csg: Stage,
    /// The next stage, set exactly when T is.
    pub nsg: Option<Stage>,
    /// Version-max.
    pub version_max: u8,
    /// Version-active.
    pub version_active: u8,
    /// ISID, as in the request.
    pub isid: [u8; 6],
    /// TSIH: the request's, or the new session's in its final response.
    pub tsih: u16,
    /// Initiator Task Tag, as in the request.
    pub itt: u32,
    /// StatSN.
    pub stat_sn: u32,
    /// ExpCmdSN.
    pub exp_cmd_sn: u32,
    /// MaxCmdSN.
    pub max_cmd_sn: u32,
    /// Status-Class and Status-Detail.
    pub status: LoginStatus,
    /// The text, unpadded.
    pub data: Vec<u8>,
}

impl LoginResponse {
    /// A response to `req` with `status` and no text: same stage, no
    /// transit, ISID/TSIH/ITT echoed, StatSN = the request's ExpStatSN,
    /// ExpCmdSN = MaxCmdSN = its CmdSN (a login is immediate and does not
    /// advance CmdSN).
    pub fn reply_to(req: &LoginRequest, status: LoginStatus) -> LoginResponse {
        LoginResponse {
            transit: false,
            cont: false,
            csg: req.csg,
            nsg: None,
            version_max: 0,
            version_active: 0,
            isid: req.isid,
            tsih: req.tsih,
            itt: req.itt,
            stat_sn: req.exp_stat_sn,
            exp_cmd_sn: req.cmd_sn,
            max_cmd_sn: req.cmd_sn,
            status,
            data: Vec::new(),
        }
    }

    /// The redirect of §11.13.5: status 0x0101 "target moved temporarily"
    /// with `TargetAddress=IP:PORT` and no portal group tag (§13.8). It may
    /// answer any login request, before security negotiation too.
    pub fn redirect(req: &LoginRequest, to: SocketAddr) -> LoginResponse {
        let mut rsp = LoginResponse::reply_to(req, LoginStatus::TARGET_MOVED_TEMPORARILY);
        let mut keys = Keys::new();
        keys.push("TargetAddress", target_address(to));
        rsp.data = keys.encode();
        rsp
    }

    /// A successful answer to one step of a login: status 0, the text of
    /// `answers`, and the initiator's transit granted (T and NSG echoed).
    /// The final response (NSG = full feature) carries `tsih`, the new
    /// session's handle (never 0).
    pub fn success(req: &LoginRequest, answers: &Keys, tsih: u16) -> LoginResponse {
        let mut rsp = LoginResponse::reply_to(req, LoginStatus::SUCCESS);
        rsp.transit = req.transit;
        rsp.nsg = req.nsg.filter(|_| req.transit);
        if rsp.nsg == Some(Stage::FullFeature) {
            rsp.tsih = tsih;
        }
        rsp.data = answers.encode();
        rsp
    }

    /// A login reject: `status` (class 2 or 3) and no text. The target
    /// closes the connection after sending it.
    pub fn error(req: &LoginRequest, status: LoginStatus) -> LoginResponse {
        LoginResponse::reply_to(req, status)
    }

    /// Parses the header. Stages are checked only on success: with any
    /// other status the RFC has T, CSG and NSG ignored, and they read as
    /// no transit (a reserved CSG as [`Stage::Security`]).
    pub fn from_parts(bhs: &Bhs, data: &[u8]) -> Result<LoginResponse, PduError> {
        bhs.expect(Opcode::LoginResponse)?;
        let flags = bhs.flags();
        let status = LoginStatus(bhs.u16_at(36));
        let (transit, cont) = (flags & T_BIT != 0, flags & C_BIT != 0);
        let (csg, nsg) = if status == LoginStatus::SUCCESS {
            if transit && cont {
                return Err(PduError::InvalidField {
                    field: "flags",
                    why: "T and C both set".into(),
                });
            }
            let csg = Stage::from_bits(flags >> 2, "CSG")?;
            let nsg = transit
                .then(|| Stage::from_bits(flags, "NSG"))
                .transpose()?;
            (csg, nsg)
        } else {
            (
                Stage::from_bits(flags >> 2, "CSG").unwrap_or(Stage::Security),
                None,
            )
        };
        Ok(LoginResponse {
            transit: transit && status == LoginStatus::SUCCESS,
            cont,
            csg,
            nsg,
            version_max: bhs.0[2],
            version_active: bhs.0[3],
            isid: bhs.0[8..14].try_into().expect("6 bytes"),
            tsih: bhs.u16_at(14),
            itt: bhs.itt(),
            stat_sn: bhs.u32_at(24),
            exp_cmd_sn: bhs.u32_at(28),
            max_cmd_sn: bhs.u32_at(32),
            status,
            data: data.to_vec(),
        })
    }

    /// Parses the text.
    pub fn keys(&self, limits: &Limits) -> Result<Keys, PduError> {
        Ok(Keys::parse(&self.data, limits)?)
    }

    /// Appends the PDU's bytes.
    pub fn encode(&self, out: &mut Vec<u8>) {
        let mut bhs = Bhs::new(Opcode::LoginResponse, false);
        bhs.0[1] = stage_flags(self.transit, self.cont, self.csg, self.nsg);
        bhs.0[2] = self.version_max;
        bhs.0[3] = self.version_active;
        bhs.0[8..14].copy_from_slice(&self.isid);
        bhs.put_u16(14, self.tsih);
        bhs.put_u32(16, self.itt);
        bhs.put_u32(24, self.stat_sn);
        bhs.put_u32(28, self.exp_cmd_sn);
        bhs.put_u32(32, self.max_cmd_sn);
        bhs.put_u16(36, self.status.0);
        emit(bhs, &self.data, out);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::iscsi::{BHS_LEN, Pdu};

    /// A libiscsi-style first login of a normal session without CHAP, laid
    /// out by hand from §11.12: CSG=1, NSG=3, T=1.
    fn normal_login_bytes() -> Vec<u8> {
        let text = b"InitiatorName=iqn.2026-11.test.sanlb:h1\0\
                     TargetName=iqn.2026-11.test.sanlb:t1\0\
                     SessionType=Normal\0HeaderDigest=None\0";
        let mut b = vec![
            0x43, // I + opcode 0x03
            0x87, // T, CSG=1, NSG=3
            0x00,
            0x00, // version max, min
            0x00, // TotalAHSLength
            0x00,
            0x00,
            text.len() as u8, // DataSegmentLength
            0x80,
            0x12,
            0x34,
            0x56,
            0x78,
            0x9a, // ISID
            0x00,
            0x00, // TSIH
            0xde,
            0xad,
            0xbe,
            0xef, // ITT
            0x00,
            0x01, // CID
            0x00,
            0x00, // reserved
            0x11,
            0x22,
            0x33,
            0x44, // CmdSN
            0x55,
            0x66,
            0x77,
            0x88, // ExpStatSN
        ];
        b.resize(BHS_LEN, 0);
        b.extend_from_slice(text);
        b.resize(BHS_LEN + text.len().next_multiple_of(4), 0);
        b
    }

    fn hex(s: &str) -> Vec<u8> {
        let s = s.trim();
        (0..s.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
            .collect()
    }

    /// The bytes libiscsi 1.19 sent (see `testdata/README.md`).
    #[test]
    fn parses_libiscsis_logins_byte_exactly() {
        for (file, session, target) in [
            (
                include_str!("testdata/libiscsi-login-normal.hex"),
                "Normal",
                Some("iqn.2026-11.test.sanlb:t1"),
            ),
            (
                include_str!("testdata/libiscsi-login-discovery.hex"),
                "Discovery",
                None,
            ),
        ] {
            let bytes = hex(file);
            let (pdu, len) = Pdu::decode(&bytes, &Limits::default()).unwrap();
            assert_eq!(len, bytes.len(), "{session}");
            let Pdu::LoginRequest(req) = pdu else {
                panic!("{pdu:?}")
            };
            // No CHAP: straight to operational negotiation, asking for
            // the full feature phase.
            assert!(req.transit && !req.cont);
            assert_eq!(
                (req.csg, req.nsg),
                (Stage::Operational, Some(Stage::FullFeature))
            );
            assert_eq!(
                (req.version_max, req.version_min, req.tsih, req.cid),
                (0, 0, 0, 0)
            );
            assert_eq!(req.isid[0], 0x80, "random-qualifier ISID");
            assert_eq!(req.exp_stat_sn, 1);
            let keys = req.keys(&Limits::default()).unwrap();
            keys.check_unique().unwrap();
            assert_eq!(keys.get("InitiatorName"), Some("iqn.2026-11.test.sanlb:h1"));
            assert_eq!(keys.get("SessionType"), Some(session));
            assert_eq!(keys.get("TargetName"), target);
            assert_eq!(keys.get("MaxRecvDataSegmentLength"), Some("262144"));
            assert_eq!(keys.len(), if target.is_some() { 19 } else { 18 });
            assert_eq!(
                Pdu::LoginRequest(req).to_bytes(),
                bytes,
                "{session}: round trip"
            );
        }
    }

    #[test]
    fn parses_a_normal_login() {
        let bytes = normal_login_bytes();
        let (pdu, len) = Pdu::decode(&bytes, &Limits::default()).unwrap();
        assert_eq!(len, bytes.len());
        let Pdu::LoginRequest(req) = pdu else {
            panic!("{pdu:?}")
        };
        assert!(req.transit && !req.cont);
        assert_eq!(
            (req.csg, req.nsg),
            (Stage::Operational, Some(Stage::FullFeature))
        );
        assert_eq!(req.isid, [0x80, 0x12, 0x34, 0x56, 0x78, 0x9a]);
        assert_eq!((req.tsih, req.itt, req.cid), (0, 0xdeadbeef, 1));
        assert_eq!((req.cmd_sn, req.exp_stat_sn), (0x11223344, 0x55667788));
        let keys = req.keys(&Limits::default()).unwrap();
        assert_eq!(keys.get("InitiatorName"), Some("iqn.2026-11.test.sanlb:h1"));
        assert_eq!(keys.get("TargetName"), Some("iqn.2026-11.test.sanlb:t1"));
        assert_eq!(keys.get("SessionType"), Some("Normal"));
        assert_eq!(Pdu::LoginRequest(req).to_bytes(), bytes, "round trip");
    }

    #[test]
    fn refuses_forbidden_flag_combinations() {
        let base = normal_login_bytes();
        for (flags, why) in [
            (0xc7, "T and C both set"),
            (0x8b, "reserved stage 2"),                            // CSG=2
            (0x86, "reserved stage 2"),                            // T, NSG=2
            (0x8d, "a login cannot be in the full feature phase"), // CSG=3
            (0x85, "no transit from Operational to Operational"),
            (0x80, "no transit from Security to Security"),
        ] {
            let mut b = base.clone();
            b[1] = flags;
            match Pdu::decode(&b, &Limits::default()) {
                Err(PduError::InvalidField { why: w, .. }) => {
                    assert_eq!(w, why, "flags {flags:#04x}")
                }
                other => panic!("flags {flags:#04x}: {other:?}"),
            }
        }
        let mut b = base.clone();
        b[0] = 0x03; // no I bit
        assert!(matches!(
            Pdu::decode(&b, &Limits::default()),
            Err(PduError::InvalidField { field: "I bit", .. })
        ));
        // T=0: NSG is not looked at.
        let mut b = base;
        b[1] = 0x06;
        let (Pdu::LoginRequest(req), _) = Pdu::decode(&b, &Limits::default()).unwrap() else {
            panic!()
        };
        assert_eq!((req.transit, req.nsg), (false, None));
    }

    #[test]
    fn redirect_is_byte_exact() {
        let (Pdu::LoginRequest(req), _) =
            Pdu::decode(&normal_login_bytes(), &Limits::default()).unwrap()
        else {
            panic!()
        };
        let rsp = LoginResponse::redirect(&req, "198.18.1.1:3261".parse().unwrap());
        let text = b"TargetAddress=198.18.1.1:3261\0";
        let mut want = vec![
            0x23, // opcode, never immediate
            0x04, // T=0, CSG=1, NSG=0
            0x00,
            0x00, // version max, active
            0x00,
            0x00,
            0x00,
            text.len() as u8, // AHS, DataSegmentLength
            0x80,
            0x12,
            0x34,
            0x56,
            0x78,
            0x9a, // ISID echoed
            0x00,
            0x00, // TSIH echoed
            0xde,
            0xad,
            0xbe,
            0xef, // ITT echoed
            0,
            0,
            0,
            0, // reserved
            0x55,
            0x66,
            0x77,
            0x88, // StatSN = ExpStatSN
            0x11,
            0x22,
            0x33,
            0x44, // ExpCmdSN = CmdSN
            0x11,
            0x22,
            0x33,
            0x44, // MaxCmdSN
            0x01,
            0x01, // Status-Class 1, Detail 1
        ];
        want.resize(BHS_LEN, 0);
        want.extend_from_slice(text);
        want.resize(BHS_LEN + text.len().next_multiple_of(4), 0);
        let got = Pdu::LoginResponse(rsp.clone()).to_bytes();
        assert_eq!(got, want);
        let (back, _) = Pdu::decode(&got, &Limits::default()).unwrap();
        assert_eq!(back, Pdu::LoginResponse(rsp));
    }

    #[test]
    fn ipv6_redirect_puts_the_address_in_brackets() {
        let req = LoginRequest::new(Stage::Security, None, [0; 6], 1, Vec::new());
        let rsp = LoginResponse::redirect(&req, "[2001:2::7]:3261".parse().unwrap());
        assert_eq!(rsp.data, b"TargetAddress=[2001:2::7]:3261\0");
    }

    #[test]
    fn error_responses_carry_class_and_detail() {
        let (Pdu::LoginRequest(req), _) =
            Pdu::decode(&normal_login_bytes(), &Limits::default()).unwrap()
        else {
            panic!()
        };
        for (status, class, detail) in [
            (LoginStatus::NOT_FOUND, 2, 3),
            (LoginStatus::MISSING_PARAMETER, 2, 7),
            (LoginStatus::SERVICE_UNAVAILABLE, 3, 1),
            (LoginStatus::OUT_OF_RESOURCES, 3, 2),
        ] {
            let bytes = Pdu::LoginResponse(LoginResponse::error(&req, status)).to_bytes();
            assert_eq!(bytes.len(), BHS_LEN, "no text");
            assert_eq!((bytes[36], bytes[37]), (class, detail), "{status}");
            assert_eq!(&bytes[5..8], &[0, 0, 0]);
            assert_eq!((status.class(), status.detail()), (class, detail));
        }
        assert_eq!(
            LoginStatus::SERVICE_UNAVAILABLE.to_string(),
            "0x0301 (service unavailable)"
        );
        assert_eq!(LoginStatus(0x02ff).to_string(), "0x02ff");
    }

    #[test]
    fn discovery_success_is_byte_exact() {
        let mut req = LoginRequest::new(
            Stage::Operational,
            Some(Stage::FullFeature),
            [0x80, 0x8b, 0xd9, 0x35, 0, 0],
            0x0f589110,
            Vec::new(),
        );
        req.cmd_sn = 0x2b3f5e62;
        req.exp_stat_sn = 1;
        let answers: Keys = [
            ("HeaderDigest", "None"),
            ("MaxRecvDataSegmentLength", "8192"),
        ]
        .into_iter()
        .collect();
        let rsp = LoginResponse::success(&req, &answers, 0x0007);
        let text = b"HeaderDigest=None\0MaxRecvDataSegmentLength=8192\0";
        let mut want = vec![
            0x23,
            0x87,
            0,
            0, // opcode, T + CSG=1 + NSG=3, versions
            0,
            0,
            0,
            text.len() as u8, // AHS, DataSegmentLength
            0x80,
            0x8b,
            0xd9,
            0x35,
            0,
            0, // ISID
            0x00,
            0x07, // the new TSIH
            0x0f,
            0x58,
            0x91,
            0x10, // ITT
            0,
            0,
            0,
            0, // reserved
            0,
            0,
            0,
            1, // StatSN
            0x2b,
            0x3f,
            0x5e,
            0x62, // ExpCmdSN
            0x2b,
            0x3f,
            0x5e,
            0x62, // MaxCmdSN
            0,
            0, // Status success
        ];
        want.resize(BHS_LEN, 0);
        want.extend_from_slice(text);
        want.resize(BHS_LEN + text.len().next_multiple_of(4), 0);
        assert_eq!(Pdu::LoginResponse(rsp).to_bytes(), want);

        // A step that stays in the security stage: no transit, no TSIH.
        let step = LoginRequest::new(Stage::Security, None, [0; 6], 1, Vec::new());
        let rsp = LoginResponse::success(&step, &Keys::new(), 9);
        assert_eq!((rsp.transit, rsp.nsg, rsp.tsih), (false, None, 0));
        assert_eq!(Pdu::LoginResponse(rsp).to_bytes()[1], 0x00);
    }

    #[test]
    fn a_final_success_round_trips() {
        let req = LoginRequest::new(
            Stage::Operational,
            Some(Stage::FullFeature),
            [1; 6],
            9,
            vec![],
        );
        let mut rsp = LoginResponse::reply_to(&req, LoginStatus::SUCCESS);
        rsp.transit = true;
        rsp.nsg = Some(Stage::FullFeature);
        rsp.tsih = 0x0102;
        rsp.data = b"HeaderDigest=None\0".to_vec();
        let bytes = Pdu::LoginResponse(rsp.clone()).to_bytes();
        assert_eq!(bytes[1], 0x87);
        assert_eq!(&bytes[14..16], &[0x01, 0x02]);
        assert_eq!(
            Pdu::decode(&bytes, &Limits::default()).unwrap().0,
            Pdu::LoginResponse(rsp)
        );
    }
}
