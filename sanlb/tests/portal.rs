//! The redirecting portal on loopback, with a client written from the codec:
//! redirects, holds, refusals, discovery sessions, and hostile input. Each
//! test checks the bytes the client receives (and the connection closing),
//! then the portal's counters.

use std::{
    net::{IpAddr, SocketAddr},
    sync::Arc,
    time::{Duration, Instant},
};

use sanlb::{
    iscsi::{
        BHS_LEN, Keys, Limits, LoginRequest, LoginResponse, LoginStatus, LogoutRequest, Pdu,
        RESERVED_TAG, Stage, TextRequest,
    },
    portal::{Portal, PortalConfig, PortalMetrics, Refusal, Steer, TableDirector},
};
use tokio::{
    io::{AsyncReadExt as _, AsyncWriteExt as _},
    net::{TcpSocket, TcpStream},
    time::timeout,
};

const T1: &str = "iqn.2026-11.test.sanlb:t1";
const T2: &str = "iqn.2026-11.test.sanlb:t2";
const H1: &str = "iqn.2026-11.test.sanlb:h1";
/// Bound on every wait of the client.
const WAIT: Duration = Duration::from_secs(5);

fn data_addr() -> SocketAddr {
    "198.18.2.1:3261".parse().unwrap()
}

struct Setup {
    portal: Portal,
    director: Arc<TableDirector>,
    addr: SocketAddr,
}

fn setup(config: PortalConfig) -> Setup {
    setup_on("127.0.0.1:0", config)
}

fn setup_on(listen: &str, config: PortalConfig) -> Setup {
    let director = Arc::new(TableDirector::new());
    let portal = Portal::new(config, director.clone()).unwrap();
    let addr = portal.listen(listen.parse().unwrap()).unwrap();
    Setup {
        portal,
        director,
        addr,
    }
}

fn fast() -> PortalConfig {
    PortalConfig {
        login_timeout: Duration::from_millis(400),
        pdu_timeout: Duration::from_millis(400),
        hold_timeout: Duration::from_millis(400),
        connection_timeout: Duration::from_secs(3),
        ..PortalConfig::default()
    }
}

/// A client speaking PDUs.
struct Client {
    stream: TcpStream,
    buf: Vec<u8>,
}

impl Client {
    async fn connect(to: SocketAddr) -> Client {
        Client::connect_from(None, to).await
    }

    /// Connects from `from` (a loopback address other than 127.0.0.1 makes
    /// another initiator IP).
    async fn connect_from(from: Option<IpAddr>, to: SocketAddr) -> Client {
        let socket = if to.is_ipv4() {
            TcpSocket::new_v4()
        } else {
            TcpSocket::new_v6()
        }
        .unwrap();
        if let Some(ip) = from {
            socket.bind(SocketAddr::new(ip, 0)).unwrap();
        }
        let stream = timeout(WAIT, socket.connect(to)).await.unwrap().unwrap();
        Client {
            stream,
            buf: Vec::new(),
        }
    }

    async fn send(&mut self, pdu: Pdu) {
        self.send_raw(&pdu.to_bytes()).await;
    }

    async fn send_raw(&mut self, bytes: &[u8]) {
        self.stream.write_all(bytes).await.unwrap();
    }

    /// The next PDU, or `None` when the portal closed the connection.
    async fn recv(&mut self) -> Option<Pdu> {
        let limits = Limits {
            max_data_segment: 1 << 20,
            ..Limits::default()
        };
        loop {
            match Pdu::decode(&self.buf, &limits) {
                Ok((pdu, used)) => {
                    self.buf.drain(..used);
                    return Some(pdu);
                }
                Err(sanlb::iscsi::PduError::Truncated { .. }) => {}
                Err(e) => panic!("portal sent a bad pdu: {e}"),
            }
            let mut chunk = [0u8; 4096];
            match timeout(WAIT, self.stream.read(&mut chunk)).await {
                Err(_) => panic!("no answer within {WAIT:?}"),
                Ok(Ok(0)) | Ok(Err(_)) => {
                    assert!(self.buf.is_empty(), "closed mid-pdu");
                    return None;
                }
                Ok(Ok(n)) => self.buf.extend_from_slice(&chunk[..n]),
            }
        }
    }

    async fn login_response(&mut self) -> LoginResponse {
        match self.recv().await {
            Some(Pdu::LoginResponse(r)) => r,
            other => panic!("expected a login response, got {other:?}"),
        }
    }

    /// The portal closes the connection (EOF or reset) within `WAIT`.
    async fn expect_closed(&mut self) {
        assert!(self.recv().await.is_none(), "connection still open");
    }
}

fn keys(pairs: &[(&str, &str)]) -> Vec<u8> {
    pairs.iter().copied().collect::<Keys>().encode()
}

fn normal_login(target: &str) -> LoginRequest {
    let mut req = LoginRequest::new(
        Stage::Operational,
        Some(Stage::FullFeature),
        [0x80, 0, 0, 0, 0, 7],
        0x1000,
        keys(&[
            ("InitiatorName", H1),
            ("TargetName", target),
            ("SessionType", "Normal"),
            ("HeaderDigest", "None,CRC32C"),
        ]),
    );
    req.cmd_sn = 40;
    req.exp_stat_sn = 9;
    req
}

/// What libiscsi 1.19 sends first in a discovery session without CHAP.
fn discovery_login() -> LoginRequest {
    LoginRequest::new(
        Stage::Operational,
        Some(Stage::FullFeature),
        [0x80, 0, 0, 0, 0, 8],
        0x2000,
        keys(&[
            ("InitiatorName", H1),
            ("SessionType", "Discovery"),
            ("HeaderDigest", "None,CRC32C"),
            ("DataDigest", "None"),
            ("DefaultTime2Wait", "2"),
            ("DefaultTime2Retain", "0"),
            ("IFMarker", "No"),
            ("OFMarker", "No"),
            ("ErrorRecoveryLevel", "0"),
            ("MaxRecvDataSegmentLength", "262144"),
            ("X-com.example.Vendor", "1"),
        ]),
    )
}

fn send_targets(value: &str, itt: u32) -> Pdu {
    Pdu::TextRequest(TextRequest {
        immediate: true,
        final_: true,
        cont: false,
        lun: [0; 8],
        itt,
        ttt: RESERVED_TAG,
        cmd_sn: 0,
        exp_stat_sn: 1,
        data: keys(&[("SendTargets", value)]),
    })
}

async fn settle(portal: &Portal, done: impl Fn(&PortalMetrics) -> bool) -> PortalMetrics {
    let deadline = Instant::now() + WAIT;
    loop {
        let m = portal.metrics();
        if done(&m) {
            return m;
        }
        assert!(Instant::now() < deadline, "metrics never settled: {m:#?}");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

#[tokio::test]
async fn normal_login_is_redirected_to_the_directors_address() {
    let s = setup(PortalConfig::default());
    s.director.steer_all(Steer::Redirect(data_addr()));
    let mut c = Client::connect(s.addr).await;
    c.send(Pdu::LoginRequest(normal_login(T1))).await;
    let rsp = c.login_response().await;
    assert_eq!(rsp.status, LoginStatus::TARGET_MOVED_TEMPORARILY);
    assert_eq!(rsp.data, b"TargetAddress=198.18.2.1:3261\0");
    assert_eq!(
        (rsp.isid, rsp.itt, rsp.tsih),
        ([0x80, 0, 0, 0, 0, 7], 0x1000, 0)
    );
    assert_eq!((rsp.stat_sn, rsp.exp_cmd_sn), (9, 40));
    c.expect_closed().await;
    let m = settle(&s.portal, |m| m.connections_active == 0).await;
    assert_eq!(
        (m.connections, m.logins, m.redirects, m.holds),
        (1, 1, 1, 0)
    );
    assert_eq!(m.rejects, Default::default());
}

#[tokio::test]
async fn pairs_are_steered_by_initiator_ip_and_target() {
    let s = setup(PortalConfig::default());
    let other: SocketAddr = "198.18.2.2:3261".parse().unwrap();
    s.director.steer_all(Steer::Redirect(data_addr()));
    s.director
        .steer_pair("127.0.0.2".parse().unwrap(), T1, Steer::Redirect(other));
    s.director.steer_pair(
        "127.0.0.3".parse().unwrap(),
        T1,
        Steer::Refuse(Refusal::NotAuthorized),
    );
    for (from, target, want) in [
        ("127.0.0.2", T1, Ok(other)),
        ("127.0.0.2", T2, Ok(data_addr())),
        ("127.0.0.1", T1, Ok(data_addr())),
        ("127.0.0.3", T1, Err(LoginStatus::AUTHORIZATION_FAILURE)),
    ] {
        let mut c = Client::connect_from(Some(from.parse().unwrap()), s.addr).await;
        c.send(Pdu::LoginRequest(normal_login(target))).await;
        let rsp = c.login_response().await;
        match want {
            Ok(to) => {
                assert_eq!(rsp.status, LoginStatus::TARGET_MOVED_TEMPORARILY);
                assert_eq!(rsp.data, format!("TargetAddress={to}\0").as_bytes());
            }
            Err(status) => {
                assert_eq!(rsp.status, status);
                assert!(rsp.data.is_empty());
            }
        }
        c.expect_closed().await;
    }
    let m = settle(&s.portal, |m| m.connections_active == 0).await;
    assert_eq!((m.redirects, m.rejects.director), (3, 1));
}

#[tokio::test]
async fn redirects_no_host_can_follow_are_target_errors() {
    let s = setup(PortalConfig::default());
    for to in [
        s.addr,
        "0.0.0.0:3261".parse().unwrap(),
        "198.18.2.1:0".parse().unwrap(),
        "224.0.0.1:3261".parse().unwrap(),
    ] {
        s.director.steer_all(Steer::Redirect(to));
        let mut c = Client::connect(s.addr).await;
        c.send(Pdu::LoginRequest(normal_login(T1))).await;
        assert_eq!(
            c.login_response().await.status,
            LoginStatus::TARGET_ERROR,
            "{to}"
        );
        c.expect_closed().await;
    }
    let m = settle(&s.portal, |m| m.connections_active == 0).await;
    assert_eq!((m.redirects, m.rejects.director), (0, 4));
}

#[tokio::test]
async fn a_login_text_continued_over_two_pdus_is_joined() {
    let s = setup(PortalConfig::default());
    s.director.steer_all(Steer::Redirect(data_addr()));
    let whole = normal_login(T1);
    // Cut in the middle of the TargetName pair.
    let cut = whole.data.len() / 2;
    let mut first = whole.clone();
    first.data.truncate(cut);
    first.transit = false;
    first.nsg = None;
    first.cont = true;
    let mut second = whole.clone();
    second.data = whole.data[cut..].to_vec();
    let mut c = Client::connect(s.addr).await;
    c.send(Pdu::LoginRequest(first)).await;
    // An empty answer asks for the rest.
    let more = c.login_response().await;
    assert_eq!(more.status, LoginStatus::SUCCESS);
    assert!(!more.transit && !more.cont && more.data.is_empty());
    c.send(Pdu::LoginRequest(second)).await;
    let rsp = c.login_response().await;
    assert_eq!(rsp.status, LoginStatus::TARGET_MOVED_TEMPORARILY);
    assert_eq!(rsp.stat_sn, more.stat_sn + 1);
    c.expect_closed().await;
}

#[tokio::test]
async fn unknown_pairs_are_refused_not_found() {
    let s = setup(PortalConfig::default());
    let mut c = Client::connect(s.addr).await;
    c.send(Pdu::LoginRequest(normal_login(T1))).await;
    let rsp = c.login_response().await;
    assert_eq!(rsp.status, LoginStatus::NOT_FOUND);
    let bytes = Pdu::LoginResponse(rsp).to_bytes();
    assert_eq!((bytes[36], bytes[37]), (0x02, 0x03));
    c.expect_closed().await;
}

#[tokio::test]
async fn a_hold_ends_when_the_director_changes() {
    let s = setup(PortalConfig {
        hold_timeout: Duration::from_secs(10),
        ..PortalConfig::default()
    });
    s.director.steer_all(Steer::Hold);
    let mut c = Client::connect(s.addr).await;
    c.send(Pdu::LoginRequest(normal_login(T1))).await;
    settle(&s.portal, |m| m.holds == 1).await;
    // Held: nothing arrives.
    let mut b = [0u8; 1];
    assert!(
        timeout(Duration::from_millis(300), c.stream.peek(&mut b))
            .await
            .is_err(),
        "a held login was answered"
    );
    // An unrelated change wakes it, but it is still held.
    s.director
        .set_targets("127.0.0.1".parse().unwrap(), vec![T2.into()]);
    assert!(
        timeout(Duration::from_millis(200), c.stream.peek(&mut b))
            .await
            .is_err()
    );
    let released = Instant::now();
    s.director.steer_all(Steer::Redirect(data_addr()));
    let rsp = c.login_response().await;
    let took = released.elapsed();
    assert_eq!(rsp.status, LoginStatus::TARGET_MOVED_TEMPORARILY);
    assert!(took < Duration::from_secs(1), "released after {took:?}");
    let m = settle(&s.portal, |m| m.connections_active == 0).await;
    assert_eq!((m.holds, m.redirects, m.hold_timeouts), (1, 1, 0));
}

#[tokio::test]
async fn a_hold_times_out_as_service_unavailable() {
    let s = setup(fast());
    s.director.steer_all(Steer::Hold);
    let start = Instant::now();
    let mut c = Client::connect(s.addr).await;
    c.send(Pdu::LoginRequest(normal_login(T1))).await;
    let rsp = c.login_response().await;
    let took = start.elapsed();
    assert_eq!(rsp.status, LoginStatus::SERVICE_UNAVAILABLE);
    assert!(
        took >= Duration::from_millis(400) && took < Duration::from_secs(2),
        "{took:?}"
    );
    c.expect_closed().await;
    let m = settle(&s.portal, |m| m.connections_active == 0).await;
    assert_eq!((m.holds, m.hold_timeouts, m.redirects), (1, 1, 0));
}

#[tokio::test]
async fn a_held_login_whose_host_gives_up_ends_at_once() {
    let s = setup(PortalConfig {
        hold_timeout: Duration::from_secs(20),
        connection_timeout: Duration::from_secs(30),
        ..PortalConfig::default()
    });
    s.director.steer_all(Steer::Hold);
    let mut c = Client::connect(s.addr).await;
    c.send(Pdu::LoginRequest(normal_login(T1))).await;
    settle(&s.portal, |m| m.holds == 1).await;
    drop(c);
    // Well before the hold timeout.
    let m = settle(&s.portal, |m| m.connections_active == 0).await;
    assert_eq!((m.rejects.peer_closed, m.hold_timeouts), (1, 0), "{m:#?}");
}

/// Logs in a discovery session the way libiscsi does; returns the final
/// login response.
async fn discovery_session(c: &mut Client) -> LoginResponse {
    c.send(Pdu::LoginRequest(discovery_login())).await;
    c.login_response().await
}

#[tokio::test]
async fn discovery_lists_the_targets_at_the_portals_own_address() {
    let s = setup(PortalConfig::default());
    s.director.set_targets(
        "127.0.0.1".parse().unwrap(),
        vec![T1.into(), T2.into(), "bad name".into()],
    );
    let mut c = Client::connect(s.addr).await;
    let rsp = discovery_session(&mut c).await;
    assert_eq!(rsp.status, LoginStatus::SUCCESS);
    assert!(rsp.transit);
    assert_eq!(
        (rsp.csg, rsp.nsg),
        (Stage::Operational, Some(Stage::FullFeature))
    );
    assert_ne!(rsp.tsih, 0, "a new session gets a TSIH");
    let answers = Keys::parse(&rsp.data, &Limits::default()).unwrap();
    assert_eq!(
        answers.iter().collect::<Vec<_>>(),
        [
            ("HeaderDigest", "None"),
            ("DataDigest", "None"),
            ("DefaultTime2Wait", "0"),
            ("DefaultTime2Retain", "0"),
            ("IFMarker", "No"),
            ("OFMarker", "No"),
            ("ErrorRecoveryLevel", "0"),
            ("MaxRecvDataSegmentLength", "8192"),
            ("X-com.example.Vendor", "NotUnderstood"),
        ]
    );

    c.send(send_targets("All", 0x2001)).await;
    let Some(Pdu::TextResponse(t)) = c.recv().await else {
        panic!("no text response")
    };
    assert!(t.final_ && !t.cont);
    assert_eq!((t.itt, t.ttt), (0x2001, RESERVED_TAG));
    let port = s.addr.port();
    assert_eq!(
        t.data,
        format!(
            "TargetName={T1}\0TargetAddress=127.0.0.1:{port},1\0\
             TargetName={T2}\0TargetAddress=127.0.0.1:{port},1\0"
        )
        .as_bytes()
    );
    assert_eq!(t.stat_sn, rsp.stat_sn + 1);

    c.send(send_targets(T2, 0x2002)).await;
    let Some(Pdu::TextResponse(t)) = c.recv().await else {
        panic!()
    };
    assert_eq!(
        t.data,
        format!("TargetName={T2}\0TargetAddress=127.0.0.1:{port},1\0").as_bytes()
    );

    c.send(Pdu::LogoutRequest(LogoutRequest {
        immediate: true,
        reason: 0,
        itt: 0x2003,
        cid: 0,
        cmd_sn: 0,
        exp_stat_sn: t.stat_sn + 1,
    }))
    .await;
    let Some(Pdu::LogoutResponse(l)) = c.recv().await else {
        panic!("no logout response")
    };
    assert_eq!((l.response, l.itt, l.stat_sn), (0, 0x2003, t.stat_sn + 1));
    c.expect_closed().await;
    let m = settle(&s.portal, |m| m.connections_active == 0).await;
    assert_eq!(
        (m.discovery_sessions, m.send_targets, m.logouts, m.logins),
        (1, 2, 1, 0)
    );
    assert_eq!(m.rejects, Default::default());
}

#[tokio::test]
async fn discovery_through_a_security_stage_and_with_cut_answers() {
    let s = setup(PortalConfig::default());
    let names: Vec<String> = (0..40)
        .map(|i| format!("iqn.2026-11.test.sanlb:target-with-a-long-name-{i:03}"))
        .collect();
    s.director
        .set_targets("127.0.0.1".parse().unwrap(), names.clone());
    let mut c = Client::connect(s.addr).await;
    // Security stage first, offering CHAP or nothing.
    c.send(Pdu::LoginRequest(LoginRequest::new(
        Stage::Security,
        Some(Stage::Operational),
        [0x80, 0, 0, 0, 0, 9],
        1,
        keys(&[
            ("InitiatorName", H1),
            ("SessionType", "Discovery"),
            ("AuthMethod", "CHAP,None"),
        ]),
    )))
    .await;
    let rsp = c.login_response().await;
    assert_eq!(rsp.status, LoginStatus::SUCCESS);
    assert_eq!(
        (rsp.csg, rsp.nsg),
        (Stage::Security, Some(Stage::Operational))
    );
    assert_eq!(rsp.data, b"AuthMethod=None\0");
    assert_eq!(rsp.tsih, 0, "not the final response");
    // Operational stage: a small MaxRecvDataSegmentLength.
    c.send(Pdu::LoginRequest(LoginRequest::new(
        Stage::Operational,
        Some(Stage::FullFeature),
        [0x80, 0, 0, 0, 0, 9],
        1,
        keys(&[("MaxRecvDataSegmentLength", "512")]),
    )))
    .await;
    let rsp = c.login_response().await;
    assert_eq!(
        (rsp.status, rsp.nsg),
        (LoginStatus::SUCCESS, Some(Stage::FullFeature))
    );
    assert_ne!(rsp.tsih, 0);
    // The answer comes in pieces of at most 512 bytes.
    c.send(send_targets("All", 2)).await;
    let mut text = Vec::new();
    let mut pieces = 0;
    loop {
        let Some(Pdu::TextResponse(t)) = c.recv().await else {
            panic!()
        };
        pieces += 1;
        assert!(t.data.len() <= 512);
        text.extend_from_slice(&t.data);
        if t.final_ {
            assert_eq!(t.ttt, RESERVED_TAG);
            break;
        }
        assert!(t.cont && t.ttt != RESERVED_TAG);
        assert!(pieces < 50);
        c.send(Pdu::TextRequest(TextRequest {
            immediate: true,
            final_: true,
            cont: false,
            lun: [0; 8],
            itt: 2,
            ttt: t.ttt,
            cmd_sn: 0,
            exp_stat_sn: t.stat_sn + 1,
            data: Vec::new(),
        }))
        .await;
    }
    assert!(pieces > 1);
    let keys = Keys::parse(
        &text,
        &Limits {
            max_keys: 1000,
            ..Limits::default()
        },
    )
    .unwrap();
    let got: Vec<&str> = keys
        .iter()
        .filter(|(k, _)| *k == "TargetName")
        .map(|(_, v)| v)
        .collect();
    assert_eq!(got, names.iter().map(String::as_str).collect::<Vec<_>>());
}

#[tokio::test]
async fn discovery_demanding_authentication_is_refused() {
    let s = setup(PortalConfig::default());
    let mut c = Client::connect(s.addr).await;
    c.send(Pdu::LoginRequest(LoginRequest::new(
        Stage::Security,
        Some(Stage::Operational),
        [0; 6],
        1,
        keys(&[
            ("InitiatorName", H1),
            ("SessionType", "Discovery"),
            ("AuthMethod", "CHAP"),
        ]),
    )))
    .await;
    assert_eq!(
        c.login_response().await.status,
        LoginStatus::AUTHENTICATION_FAILURE
    );
    c.expect_closed().await;
    let m = settle(&s.portal, |m| m.connections_active == 0).await;
    assert_eq!(m.rejects.authentication, 1);
}

/// A login request with raw header bytes changed.
fn raw_login(edit: impl FnOnce(&mut Vec<u8>)) -> Vec<u8> {
    let mut b = Pdu::LoginRequest(normal_login(T1)).to_bytes();
    edit(&mut b);
    b
}

#[tokio::test]
async fn bad_logins_get_an_error_status_and_the_portal_keeps_serving() {
    let s = setup(fast());
    s.director.steer_all(Steer::Redirect(data_addr()));
    let cases: Vec<(&str, Vec<u8>, LoginStatus)> = vec![
        (
            "T and C",
            raw_login(|b| b[1] = 0xc7),
            LoginStatus::INITIATOR_ERROR,
        ),
        (
            "reserved stage",
            raw_login(|b| b[1] = 0x8b),
            LoginStatus::INITIATOR_ERROR,
        ),
        (
            "oversized data segment",
            raw_login(|b| b[5..8].copy_from_slice(&[0x10, 0, 0])),
            LoginStatus::INITIATOR_ERROR,
        ),
        (
            "unsupported version",
            raw_login(|b| {
                b[2] = 2;
                b[3] = 1
            }),
            LoginStatus::UNSUPPORTED_VERSION,
        ),
        (
            "no initiator name",
            Pdu::LoginRequest(LoginRequest::new(
                Stage::Operational,
                Some(Stage::FullFeature),
                [0; 6],
                1,
                keys(&[("TargetName", T1)]),
            ))
            .to_bytes(),
            LoginStatus::MISSING_PARAMETER,
        ),
        (
            "no target name",
            Pdu::LoginRequest(LoginRequest::new(
                Stage::Operational,
                Some(Stage::FullFeature),
                [0; 6],
                1,
                keys(&[("InitiatorName", H1)]),
            ))
            .to_bytes(),
            LoginStatus::MISSING_PARAMETER,
        ),
        (
            "unknown session type",
            Pdu::LoginRequest(LoginRequest::new(
                Stage::Operational,
                Some(Stage::FullFeature),
                [0; 6],
                1,
                keys(&[("InitiatorName", H1), ("SessionType", "Bulk")]),
            ))
            .to_bytes(),
            LoginStatus::SESSION_TYPE_NOT_SUPPORTED,
        ),
        (
            "malformed text",
            Pdu::LoginRequest(LoginRequest::new(
                Stage::Operational,
                Some(Stage::FullFeature),
                [0; 6],
                1,
                b"InitiatorName=x\0novalue\0".to_vec(),
            ))
            .to_bytes(),
            LoginStatus::INITIATOR_ERROR,
        ),
        (
            "duplicate key",
            Pdu::LoginRequest(LoginRequest::new(
                Stage::Operational,
                Some(Stage::FullFeature),
                [0; 6],
                1,
                keys(&[("InitiatorName", H1), ("InitiatorName", H1)]),
            ))
            .to_bytes(),
            LoginStatus::INITIATOR_ERROR,
        ),
    ];
    for (what, bytes, status) in &cases {
        let mut c = Client::connect(s.addr).await;
        c.send_raw(bytes).await;
        let rsp = c.login_response().await;
        assert_eq!(rsp.status, *status, "{what}");
        c.expect_closed().await;
    }
    let m = settle(&s.portal, |m| m.connections_active == 0).await;
    assert_eq!(m.rejects.malformed, 4, "{m:#?}");
    assert_eq!(m.rejects.oversized, 1);
    assert_eq!(m.rejects.unsupported_version, 1);
    assert_eq!(m.rejects.missing_key, 2);
    assert_eq!(m.rejects.unsupported_session_type, 1);
    assert_eq!(m.redirects, 0);
    still_serves(&s).await;
}

async fn still_serves(s: &Setup) {
    let mut c = Client::connect(s.addr).await;
    c.send(Pdu::LoginRequest(normal_login(T1))).await;
    assert_eq!(
        c.login_response().await.status,
        LoginStatus::TARGET_MOVED_TEMPORARILY
    );
}

#[tokio::test]
async fn garbage_truncated_and_slow_input_is_closed_within_the_timeout() {
    let s = setup(fast());
    s.director.steer_all(Steer::Redirect(data_addr()));
    let started = Instant::now();

    // Not iSCSI at all: closed without an answer.
    let mut c = Client::connect(s.addr).await;
    c.send_raw(b"GET / HTTP/1.1\r\nHost: portal.example\r\nAccept: */*\r\n\r\n")
        .await;
    c.expect_closed().await;

    // A truncated login, then silence: the login timeout.
    let mut c = Client::connect(s.addr).await;
    let login = Pdu::LoginRequest(normal_login(T1)).to_bytes();
    c.send_raw(&login[..30]).await;
    let t = Instant::now();
    c.expect_closed().await;
    assert!(t.elapsed() < Duration::from_secs(2), "{:?}", t.elapsed());

    // A truncated login, then the client closes.
    let mut c = Client::connect(s.addr).await;
    c.send_raw(&login[..60]).await;
    c.stream.shutdown().await.unwrap();
    c.expect_closed().await;

    // Slowloris: a byte every 50 ms never completes a login in 400 ms.
    let mut c = Client::connect(s.addr).await;
    let t = Instant::now();
    let mut closed = false;
    for &b in &login {
        if c.stream.write_all(&[b]).await.is_err() {
            closed = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
        if t.elapsed() > Duration::from_secs(3) {
            break;
        }
    }
    if !closed {
        c.expect_closed().await;
    }
    assert!(t.elapsed() < Duration::from_secs(2), "{:?}", t.elapsed());

    // Silence from the start.
    let mut c = Client::connect(s.addr).await;
    c.expect_closed().await;

    let m = settle(&s.portal, |m| m.connections_active == 0).await;
    assert_eq!(m.rejects.not_login, 1, "{m:#?}");
    assert_eq!(m.rejects.timeout, 3, "{m:#?}");
    assert_eq!(m.rejects.peer_closed, 1, "{m:#?}");
    assert!(started.elapsed() < Duration::from_secs(10));
    still_serves(&s).await;
}

#[tokio::test]
async fn random_garbage_never_stops_the_portal() {
    use rand::{RngExt as _, SeedableRng as _};
    let s = setup(fast());
    s.director.steer_all(Steer::Redirect(data_addr()));
    let mut rng = rand::rngs::Xoshiro256PlusPlus::seed_from_u64(7);
    let valid = Pdu::LoginRequest(normal_login(T1)).to_bytes();
    for i in 0..60 {
        let mut bytes = if i % 2 == 0 {
            let len = rng.random_range(0..200);
            (0..len).map(|_| rng.random()).collect::<Vec<u8>>()
        } else {
            let mut b = valid.clone();
            for _ in 0..rng.random_range(1..6) {
                let at = rng.random_range(0..b.len());
                b[at] = rng.random();
            }
            b
        };
        if i % 3 == 0 {
            bytes.truncate(rng.random_range(0..=bytes.len()));
        }
        let mut c = Client::connect(s.addr).await;
        let _ = c.stream.write_all(&bytes).await;
        let _ = c.stream.shutdown().await;
        // Whatever comes back is well-formed (recv panics otherwise), and
        // the connection ends.
        while c.recv().await.is_some() {}
    }
    let m = settle(&s.portal, |m| m.connections_active == 0).await;
    assert_eq!(m.connections, 60);
    still_serves(&s).await;
}

#[tokio::test]
async fn connections_beyond_the_caps_are_closed_at_once() {
    let s = setup(PortalConfig {
        max_connections_per_peer: 2,
        ..PortalConfig::default()
    });
    s.director.steer_all(Steer::Redirect(data_addr()));
    let _a = Client::connect(s.addr).await;
    let _b = Client::connect(s.addr).await;
    settle(&s.portal, |m| m.connections_active == 2).await;
    let mut c = Client::connect(s.addr).await;
    c.expect_closed().await;
    // Another peer still gets in.
    let mut d = Client::connect_from(Some("127.0.0.2".parse().unwrap()), s.addr).await;
    d.send(Pdu::LoginRequest(normal_login(T1))).await;
    assert_eq!(
        d.login_response().await.status,
        LoginStatus::TARGET_MOVED_TEMPORARILY
    );
    let m = s.portal.metrics();
    assert_eq!(m.connections_refused, 1);
}

#[tokio::test]
async fn connections_beyond_the_total_cap_are_closed_at_once() {
    let s = setup(PortalConfig {
        max_connections: 2,
        ..PortalConfig::default()
    });
    s.director.steer_all(Steer::Redirect(data_addr()));
    let a = Client::connect_from(Some("127.0.0.2".parse().unwrap()), s.addr).await;
    let _b = Client::connect_from(Some("127.0.0.3".parse().unwrap()), s.addr).await;
    settle(&s.portal, |m| m.connections_active == 2).await;
    let mut c = Client::connect_from(Some("127.0.0.4".parse().unwrap()), s.addr).await;
    c.expect_closed().await;
    assert_eq!(s.portal.metrics().connections_refused, 1);
    // A slot freed is a slot taken again.
    drop(a);
    settle(&s.portal, |m| m.connections_active == 1).await;
    still_serves(&s).await;
}

#[tokio::test]
async fn unlisten_stops_new_connections_only() {
    let s = setup(PortalConfig::default());
    s.director.steer_all(Steer::Hold);
    let mut held = Client::connect(s.addr).await;
    held.send(Pdu::LoginRequest(normal_login(T1))).await;
    settle(&s.portal, |m| m.holds == 1).await;
    assert!(s.portal.unlisten(s.addr));
    assert!(!s.portal.unlisten(s.addr));
    // The accept task is aborted; its socket closes when the runtime drops it.
    let deadline = Instant::now() + WAIT;
    while TcpStream::connect(s.addr).await.is_ok() {
        assert!(Instant::now() < deadline, "still listening");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    // The held login is still served.
    s.director.steer_all(Steer::Redirect(data_addr()));
    assert_eq!(
        held.login_response().await.status,
        LoginStatus::TARGET_MOVED_TEMPORARILY
    );
}

#[tokio::test]
async fn ipv6_portal_and_redirect() {
    let s = setup_on("[::1]:0", PortalConfig::default());
    let to: SocketAddr = "[2001:2::7]:3261".parse().unwrap();
    s.director.steer_all(Steer::Redirect(to));
    s.director
        .set_targets("::1".parse().unwrap(), vec![T1.into()]);
    let mut c = Client::connect(s.addr).await;
    c.send(Pdu::LoginRequest(normal_login(T1))).await;
    assert_eq!(
        c.login_response().await.data,
        b"TargetAddress=[2001:2::7]:3261\0"
    );
    let mut c = Client::connect(s.addr).await;
    discovery_session(&mut c).await;
    c.send(send_targets("All", 5)).await;
    let Some(Pdu::TextResponse(t)) = c.recv().await else {
        panic!()
    };
    assert_eq!(
        t.data,
        format!("TargetName={T1}\0TargetAddress=[::1]:{},1\0", s.addr.port()).as_bytes()
    );
}

#[tokio::test]
async fn listens_on_an_address_the_host_does_not_have_yet() {
    // IP_FREEBIND: no traffic is sent, the socket is only bound.
    let director = Arc::new(TableDirector::new());
    let portal = Portal::new(PortalConfig::default(), director).unwrap();
    let addr = portal.listen("198.18.255.254:0".parse().unwrap()).unwrap();
    assert_eq!(addr.ip(), "198.18.255.254".parse::<IpAddr>().unwrap());
    assert_eq!(portal.listening(), [addr]);
    assert!(portal.unlisten(addr));
    assert!(portal.listening().is_empty());
}

#[tokio::test]
async fn shutdown_ends_held_connections() {
    let s = setup(PortalConfig::default());
    s.director.steer_all(Steer::Hold);
    let mut c = Client::connect(s.addr).await;
    c.send(Pdu::LoginRequest(normal_login(T1))).await;
    settle(&s.portal, |m| m.holds == 1).await;
    s.portal.shutdown();
    c.expect_closed().await;
    let deadline = Instant::now() + WAIT;
    while TcpStream::connect(s.addr).await.is_ok() {
        assert!(Instant::now() < deadline, "still listening");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[test]
fn invalid_settings_are_refused() {
    let director = Arc::new(TableDirector::new());
    for (config, field) in [
        (
            PortalConfig {
                hold_timeout: Duration::ZERO,
                ..PortalConfig::default()
            },
            "hold_timeout",
        ),
        (
            PortalConfig {
                connection_timeout: Duration::from_secs(1),
                ..PortalConfig::default()
            },
            "connection_timeout",
        ),
        (
            PortalConfig {
                max_connections: 0,
                ..PortalConfig::default()
            },
            "max_connections",
        ),
    ] {
        let err = Portal::new(config, director.clone()).unwrap_err();
        assert!(err.to_string().contains(field), "{err}");
    }
    let err = Portal::new(PortalConfig::default(), director)
        .unwrap()
        .listen("127.0.0.1:0".parse().unwrap())
        .unwrap_err();
    assert!(err.to_string().contains("tokio runtime"), "{err}");
    let _ = BHS_LEN;
}
