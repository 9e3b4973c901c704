//! Property tests of the iSCSI codec (`sanlb::iscsi`) against hostile
//! input: random bytes, and valid PDUs with random bytes changed, cut or
//! appended. The parser must never panic, must never take more than the
//! limits allow, and whatever it accepts must encode back to an equal PDU.

use proptest::prelude::*;
use sanlb::iscsi::{
    BHS_LEN, Keys, Limits, LoginRequest, LoginResponse, LoginStatus, LogoutRequest, Pdu, PduError,
    SendTargets, Stage, TextRequest, send_targets_text,
};

fn limits() -> Limits {
    Limits::default()
}

/// Checks one decode: no panic (the call returning at all), bounded
/// consumption and data, and a stable round trip of what parsed.
fn check(buf: &[u8]) {
    let limits = limits();
    match Pdu::decode(buf, &limits) {
        Ok((pdu, used)) => {
            assert!(used <= buf.len());
            assert!(used <= BHS_LEN + limits.max_ahs + limits.max_data_segment + 3);
            let data_len = match &pdu {
                Pdu::LoginRequest(p) => p.data.len(),
                Pdu::LoginResponse(p) => p.data.len(),
                Pdu::TextRequest(p) => p.data.len(),
                Pdu::TextResponse(p) => p.data.len(),
                _ => 0,
            };
            assert!(data_len <= limits.max_data_segment);
            // What parsed encodes to bytes that parse to the same PDU
            // (other opcodes are kept as a header only).
            if matches!(pdu, Pdu::Other(_)) {
                return;
            }
            let again = pdu.to_bytes();
            let (back, n) = Pdu::decode(&again, &limits).expect("re-encoded pdu parses");
            assert_eq!(n, again.len());
            assert_eq!(back, pdu);
            // Texts parse within their limits or fail cleanly.
            let data = match &pdu {
                Pdu::LoginRequest(p) => Some(&p.data),
                Pdu::TextRequest(p) => Some(&p.data),
                _ => None,
            };
            if let Some(data) = data
                && let Ok(keys) = Keys::parse(data, &limits)
            {
                assert!(keys.len() <= limits.max_keys);
                for (k, v) in keys.iter() {
                    assert!(!k.is_empty() && k.len() <= limits.max_key_len);
                    assert!(v.len() <= limits.max_value_len);
                }
            }
        }
        Err(PduError::Truncated { need, have }) => {
            assert_eq!(have, buf.len());
            assert!(need > have);
            assert!(need <= BHS_LEN + limits.max_ahs + limits.max_data_segment + 3);
        }
        Err(_) => {}
    }
}

fn valid_pdus() -> Vec<Vec<u8>> {
    let keys: Keys = [
        ("InitiatorName", "iqn.2026-11.test.sanlb:h1"),
        ("TargetName", "iqn.2026-11.test.sanlb:t1"),
        ("SessionType", "Normal"),
        ("HeaderDigest", "None,CRC32C"),
        ("MaxRecvDataSegmentLength", "262144"),
    ]
    .into_iter()
    .collect();
    let login = LoginRequest::new(
        Stage::Operational,
        Some(Stage::FullFeature),
        [0x80, 1, 2, 3, 4, 5],
        0x1234,
        keys.encode(),
    );
    let redirect = LoginResponse::redirect(&login, "198.18.1.1:3261".parse().unwrap());
    let error = LoginResponse::error(&login, LoginStatus::SERVICE_UNAVAILABLE);
    let text = TextRequest {
        immediate: true,
        final_: true,
        cont: false,
        lun: [0; 8],
        itt: 2,
        ttt: 0xffff_ffff,
        cmd_sn: 3,
        exp_stat_sn: 4,
        data: b"SendTargets=All\0".to_vec(),
    };
    let addr = SendTargets::address("198.18.1.50:3260".parse().unwrap(), 1);
    let answer = sanlb::iscsi::TextResponse {
        final_: true,
        cont: false,
        lun: [0; 8],
        itt: 2,
        ttt: 0xffff_ffff,
        stat_sn: 5,
        exp_cmd_sn: 3,
        max_cmd_sn: 3,
        data: send_targets_text([("iqn.2026-11.test.sanlb:t1", [addr.as_str()])]),
    };
    let logout = LogoutRequest {
        immediate: true,
        reason: 0,
        itt: 5,
        cid: 0,
        cmd_sn: 3,
        exp_stat_sn: 6,
    };
    vec![
        Pdu::LoginRequest(login).to_bytes(),
        Pdu::LoginResponse(redirect).to_bytes(),
        Pdu::LoginResponse(error).to_bytes(),
        Pdu::TextRequest(text).to_bytes(),
        Pdu::TextResponse(answer).to_bytes(),
        Pdu::LogoutRequest(logout).to_bytes(),
    ]
}

/// A valid PDU with some bytes overwritten, then cut or extended.
fn mutated() -> impl Strategy<Value = Vec<u8>> {
    let n = valid_pdus().len();
    (
        0..n,
        prop::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 0..8),
        prop::option::of(any::<prop::sample::Index>()),
        prop::collection::vec(any::<u8>(), 0..16),
    )
        .prop_map(|(which, writes, cut, tail)| {
            let mut b = valid_pdus().swap_remove(which);
            for (at, v) in writes {
                let i = at.index(b.len());
                b[i] = v;
            }
            if let Some(cut) = cut {
                b.truncate(cut.index(b.len() + 1));
            }
            b.extend_from_slice(&tail);
            b
        })
}

/// Random bytes with a plausible first byte (one of the subset's opcodes)
/// and a small data segment length, so that the opcode parsers are reached.
fn plausible() -> impl Strategy<Value = Vec<u8>> {
    (
        prop::sample::select(vec![0x43u8, 0x03, 0x23, 0x44, 0x04, 0x24, 0x46, 0x26, 0x3f]),
        0usize..300,
        prop::collection::vec(any::<u8>(), BHS_LEN..BHS_LEN + 300),
    )
        .prop_map(|(op, dsl, mut b)| {
            b[0] = op;
            b[4] = 0;
            b[5] = 0;
            b[6] = (dsl >> 8) as u8;
            b[7] = dsl as u8;
            b
        })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 2000, ..ProptestConfig::default() })]

    #[test]
    fn random_bytes_never_panic(b in prop::collection::vec(any::<u8>(), 0..400)) {
        check(&b);
    }

    #[test]
    fn plausible_headers_never_panic(b in plausible()) {
        check(&b);
    }

    #[test]
    fn mutated_pdus_never_panic(b in mutated()) {
        check(&b);
    }

    #[test]
    fn random_texts_parse_within_limits(b in prop::collection::vec(
        prop::sample::select(vec![0u8, b'=', b'A', b'a', b'1', b'.', b' ', 0xff]), 0..600)) {
        let limits = limits();
        if let Ok(keys) = Keys::parse(&b, &limits) {
            prop_assert!(keys.len() <= limits.max_keys);
            // Encoding what parsed gives text that parses the same.
            prop_assert_eq!(Keys::parse(&keys.encode(), &limits).unwrap(), keys);
        }
    }

    #[test]
    fn login_requests_round_trip(
        csg in prop::sample::select(vec![Stage::Security, Stage::Operational]),
        to_ffp in any::<bool>(),
        isid in any::<[u8; 6]>(),
        itt in any::<u32>(),
        cmd_sn in any::<u32>(),
        exp_stat_sn in any::<u32>(),
        tsih in any::<u16>(),
        cid in any::<u16>(),
        text in prop::collection::vec(any::<u8>(), 0..200),
    ) {
        let nsg = match (csg, to_ffp) {
            (_, true) => Some(Stage::FullFeature),
            (Stage::Security, false) => Some(Stage::Operational),
            _ => None,
        };
        let mut req = LoginRequest::new(csg, nsg, isid, itt, text);
        req.cmd_sn = cmd_sn;
        req.exp_stat_sn = exp_stat_sn;
        req.tsih = tsih;
        req.cid = cid;
        let bytes = Pdu::LoginRequest(req.clone()).to_bytes();
        prop_assert_eq!(bytes.len() % 4, 0);
        let (back, n) = Pdu::decode(&bytes, &limits()).unwrap();
        prop_assert_eq!(n, bytes.len());
        prop_assert_eq!(back, Pdu::LoginRequest(req));
    }
}
