//! One connection: read one login and answer it, or run a discovery
//! session. Every read has a deadline and a size bound; every outcome is
//! counted once.

use std::{io, net::SocketAddr, sync::atomic::Ordering, time::Duration};

use tokio::{
    io::{AsyncReadExt as _, AsyncWriteExt as _},
    net::TcpStream,
    time::{Instant, sleep_until, timeout, timeout_at},
};

use super::{
    DiscoveryInfo, LoginInfo, Refusal, Shared, Steer,
    metrics::{Counters, bump},
};
use crate::iscsi::{
    BHS_LEN, Bhs, DEFAULT_MAX_RECV_DATA_SEGMENT, Keys, LoginRequest, LoginResponse, LoginStatus,
    LogoutResponse, Opcode, Pdu, PduError, RESERVED_TAG, Reject, RejectReason, SendTargets, Stage,
    TextResponse, pdu_len, send_targets_text,
};

/// A continued login text may be this many data segments long in total.
const TEXT_SEGMENTS: usize = 4;
/// After answering, how long and how much the portal reads and discards
/// before it closes, so that unread input does not turn the close into a
/// reset that could destroy the answer in flight.
const LINGER_TIME: Duration = Duration::from_millis(500);
const LINGER_BYTES: usize = 64 << 10;
/// Longest iSCSI name (RFC 7143 §4.2.7.1).
const MAX_NAME_LEN: usize = 223;

/// How a connection ended.
enum End {
    Redirected,
    Refused(Refusal),
    BadRedirect(SocketAddr),
    HoldTimeout,
    DiscoveryDone,
    NotLogin(u8),
    Malformed(String),
    Oversized(String),
    MissingKey(&'static str),
    UnsupportedVersion(u8),
    UnsupportedSessionType(String),
    Authentication,
    Timeout,
    PeerClosed,
    Io(io::Error),
}

impl std::fmt::Display for End {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            End::Redirected => write!(f, "redirected"),
            End::Refused(r) => write!(f, "refused by the director: {}", r.status()),
            End::BadRedirect(to) => write!(f, "the director redirected to {to}"),
            End::HoldTimeout => write!(f, "hold timed out"),
            End::DiscoveryDone => write!(f, "discovery session done"),
            End::NotLogin(op) => write!(f, "first pdu has opcode {op:#04x}, not a login"),
            End::Malformed(why) => write!(f, "malformed: {why}"),
            End::Oversized(why) => write!(f, "oversized: {why}"),
            End::MissingKey(key) => write!(f, "missing {key}"),
            End::UnsupportedVersion(v) => write!(f, "unsupported version-min {v}"),
            End::UnsupportedSessionType(t) => write!(f, "unsupported session type {t:?}"),
            End::Authentication => write!(f, "authentication required by the initiator"),
            End::Timeout => write!(f, "timed out"),
            End::PeerClosed => write!(f, "peer closed"),
            End::Io(e) => write!(f, "socket error: {e}"),
        }
    }
}

/// Why a PDU could not be read.
enum ReadError {
    /// EOF where a PDU would start.
    Closed,
    Timeout,
    /// EOF or reset inside a PDU.
    PeerClosed,
    Io(io::Error),
    /// The header announces more than the limits allow.
    TooLarge(Bhs, PduError),
}

impl From<ReadError> for End {
    fn from(e: ReadError) -> End {
        match e {
            ReadError::Closed | ReadError::PeerClosed => End::PeerClosed,
            ReadError::Timeout => End::Timeout,
            ReadError::Io(e) => End::Io(e),
            ReadError::TooLarge(_, e) => End::Oversized(e.to_string()),
        }
    }
}

struct Conn<'a> {
    stream: TcpStream,
    local: SocketAddr,
    peer: SocketAddr,
    shared: &'a Shared,
    stat_sn: u32,
    exp_cmd_sn: u32,
    /// Something was sent: close gracefully.
    answered: bool,
    initiator: Option<String>,
}

pub(super) async fn serve(stream: TcpStream, local: SocketAddr, peer: SocketAddr, shared: &Shared) {
    let deadline = Instant::now() + shared.config.connection_timeout;
    let mut conn = Conn {
        stream,
        local,
        peer,
        shared,
        stat_sn: 0,
        exp_cmd_sn: 0,
        answered: false,
        initiator: None,
    };
    let end = timeout_at(deadline, conn.run())
        .await
        .unwrap_or(End::Timeout);
    conn.account(&end);
    if conn.answered && !matches!(end, End::Timeout | End::PeerClosed | End::Io(_)) {
        conn.linger().await;
    }
}

impl Conn<'_> {
    fn counters(&self) -> &Counters {
        &self.shared.counters
    }

    async fn run(&mut self) -> End {
        let login_deadline = Instant::now() + self.shared.config.login_timeout;
        let (bhs, data) = match self.read_pdu(login_deadline).await {
            Ok(x) => x,
            Err(ReadError::TooLarge(bhs, e)) if bhs.opcode() == Opcode::LoginRequest as u8 => {
                return self
                    .refuse_header(&bhs, End::Oversized(e.to_string()))
                    .await;
            }
            Err(ReadError::TooLarge(bhs, _)) => return End::NotLogin(bhs.opcode()),
            Err(e) => return e.into(),
        };
        if bhs.opcode() != Opcode::LoginRequest as u8 {
            return End::NotLogin(bhs.opcode());
        }
        let req = match LoginRequest::from_parts(&bhs, &data) {
            Ok(r) => r,
            Err(e) => {
                return self
                    .refuse_header(&bhs, End::Malformed(e.to_string()))
                    .await;
            }
        };
        self.stat_sn = req.exp_stat_sn;
        self.exp_cmd_sn = req.cmd_sn;
        let mut pdus = 1;
        let (req, keys) = match self.login_text(req, login_deadline, &mut pdus).await {
            Ok(x) => x,
            Err(end) => return end,
        };
        if req.version_min > 0 {
            let end = End::UnsupportedVersion(req.version_min);
            return self
                .refuse(&req, LoginStatus::UNSUPPORTED_VERSION, end)
                .await;
        }
        let Some(initiator) = keys.get("InitiatorName").map(str::to_owned) else {
            let end = End::MissingKey("InitiatorName");
            return self.refuse(&req, LoginStatus::MISSING_PARAMETER, end).await;
        };
        self.initiator = Some(initiator.clone());
        match keys.get("SessionType").unwrap_or("Normal") {
            "Normal" => self.normal(req, &keys, initiator).await,
            "Discovery" => {
                self.discovery(req, keys, initiator, login_deadline, pdus)
                    .await
            }
            other => {
                let end = End::UnsupportedSessionType(other.chars().take(64).collect());
                self.refuse(&req, LoginStatus::SESSION_TYPE_NOT_SUPPORTED, end)
                    .await
            }
        }
    }

    /// Reads one PDU by `deadline`, within the limits.
    async fn read_pdu(&mut self, deadline: Instant) -> Result<(Bhs, Vec<u8>), ReadError> {
        let mut head = [0u8; BHS_LEN];
        let mut got = 0;
        while got < BHS_LEN {
            match timeout_at(deadline, self.stream.read(&mut head[got..])).await {
                Err(_) => return Err(ReadError::Timeout),
                Ok(Ok(0)) if got == 0 => return Err(ReadError::Closed),
                Ok(Ok(0)) => return Err(ReadError::PeerClosed),
                Ok(Ok(n)) => got += n,
                Ok(Err(e)) => return Err(read_error(e)),
            }
        }
        let bhs = Bhs(head);
        let len =
            pdu_len(&bhs, &self.shared.config.limits).map_err(|e| ReadError::TooLarge(bhs, e))?;
        let mut rest = vec![0; len - BHS_LEN];
        match timeout_at(deadline, self.stream.read_exact(&mut rest)).await {
            Err(_) => return Err(ReadError::Timeout),
            Ok(Err(e)) => return Err(read_error(e)),
            Ok(Ok(_)) => {}
        }
        rest.drain(..bhs.ahs_len());
        rest.truncate(bhs.data_len());
        Ok((bhs, rest))
    }

    /// Reads the continuations of `req` (C bit), answering each with an
    /// empty response, and parses the whole text.
    async fn login_text(
        &mut self,
        mut req: LoginRequest,
        deadline: Instant,
        pdus: &mut usize,
    ) -> Result<(LoginRequest, Keys), End> {
        let limits = self.shared.config.limits;
        let mut text = std::mem::take(&mut req.data);
        while req.cont {
            if *pdus >= self.shared.config.max_login_pdus {
                let end = End::Oversized(format!("more than {pdus} login requests"));
                return Err(self.refuse(&req, LoginStatus::INITIATOR_ERROR, end).await);
            }
            let more = self.login_reply(&req, LoginStatus::SUCCESS);
            self.send(Pdu::LoginResponse(more)).await?;
            let next = self.next_login(deadline, pdus).await?;
            if next.isid != req.isid || next.itt != req.itt || next.csg != req.csg {
                let end = End::Malformed("a continued login changed ISID, ITT or stage".into());
                return Err(self.refuse(&next, LoginStatus::INITIATOR_ERROR, end).await);
            }
            req = next;
            text.append(&mut req.data);
            if text.len() > TEXT_SEGMENTS * limits.max_data_segment {
                let end = End::Oversized(format!("login text above {} bytes", text.len()));
                return Err(self.refuse(&req, LoginStatus::INITIATOR_ERROR, end).await);
            }
        }
        let keys = Keys::parse(&text, &limits).and_then(|k| k.check_unique().map(|()| k));
        match keys {
            Ok(keys) => Ok((req, keys)),
            Err(e) => {
                let end = End::Malformed(format!("login text: {e}"));
                Err(self.refuse(&req, LoginStatus::INITIATOR_ERROR, end).await)
            }
        }
    }

    /// Reads the next Login Request of this login.
    async fn next_login(
        &mut self,
        deadline: Instant,
        pdus: &mut usize,
    ) -> Result<LoginRequest, End> {
        *pdus += 1;
        let (bhs, data) = match self.read_pdu(deadline).await {
            Ok(x) => x,
            Err(ReadError::TooLarge(bhs, e)) if bhs.opcode() == Opcode::LoginRequest as u8 => {
                return Err(self
                    .refuse_header(&bhs, End::Oversized(e.to_string()))
                    .await);
            }
            Err(e) => return Err(e.into()),
        };
        if bhs.opcode() != Opcode::LoginRequest as u8 {
            let end = End::Malformed(format!("opcode {:#04x} during login", bhs.opcode()));
            return Err(self.refuse_header(&bhs, end).await);
        }
        match LoginRequest::from_parts(&bhs, &data) {
            Ok(r) => Ok(r),
            Err(e) => Err(self
                .refuse_header(&bhs, End::Malformed(e.to_string()))
                .await),
        }
    }

    /// A normal session: redirect, hold or refuse, as the director says.
    async fn normal(&mut self, req: LoginRequest, keys: &Keys, initiator_name: String) -> End {
        let Some(target) = keys.get("TargetName") else {
            let end = End::MissingKey("TargetName");
            return self.refuse(&req, LoginStatus::MISSING_PARAMETER, end).await;
        };
        bump(&self.counters().logins);
        let info = LoginInfo {
            local: self.local,
            peer: self.peer,
            initiator_name,
            target_name: target.to_owned(),
            isid: req.isid,
        };
        let director = &self.shared.director;
        let mut changes = director.changes();
        let hold_deadline = Instant::now() + self.shared.config.hold_timeout;
        let mut held = false;
        loop {
            changes.borrow_and_update();
            match director.steer(&info) {
                Steer::Redirect(to) if !redirectable(to, self.local) => {
                    tracing::error!(
                        initiator = %info.initiator_name, target = %info.target_name, %to,
                        "the director redirects to an address no host can log in to"
                    );
                    let end = End::BadRedirect(to);
                    return self.refuse(&req, LoginStatus::TARGET_ERROR, end).await;
                }
                Steer::Redirect(to) => {
                    let mut rsp = LoginResponse::redirect(&req, to);
                    self.number(&mut rsp);
                    if let Err(end) = self.send(Pdu::LoginResponse(rsp)).await {
                        return end;
                    }
                    bump(&self.counters().redirects);
                    tracing::debug!(
                        initiator = %info.initiator_name, peer = %self.peer, target = %info.target_name,
                        %to, held, "portal redirect"
                    );
                    return End::Redirected;
                }
                Steer::Refuse(r) => return self.refuse(&req, r.status(), End::Refused(r)).await,
                Steer::Hold => {
                    if !held {
                        held = true;
                        bump(&self.counters().holds);
                    }
                    // Wait for a change, the hold deadline, or the host
                    // giving up (it sends nothing while it waits for the
                    // answer, so anything readable ends the hold).
                    let mut probe = [0u8; 1];
                    tokio::select! {
                        woke = timeout_at(hold_deadline, changes.changed()) => match woke {
                            Ok(Ok(())) => continue,
                            // The director is gone: nothing will change.
                            Ok(Err(_)) => sleep_until(hold_deadline).await,
                            Err(_) => {}
                        },
                        peeked = self.stream.peek(&mut probe) => return match peeked {
                            Ok(0) | Err(_) => End::PeerClosed,
                            Ok(_) => End::Malformed("data sent during a held login".into()),
                        },
                    }
                    bump(&self.counters().hold_timeouts);
                    tracing::warn!(
                        initiator = %info.initiator_name, peer = %self.peer, target = %info.target_name,
                        "portal hold timed out: service unavailable"
                    );
                    let status = LoginStatus::SERVICE_UNAVAILABLE;
                    return self.refuse(&req, status, End::HoldTimeout).await;
                }
            }
        }
    }

    /// A discovery session: complete the login, then answer SendTargets
    /// and Logout.
    async fn discovery(
        &mut self,
        mut req: LoginRequest,
        mut keys: Keys,
        initiator_name: String,
        deadline: Instant,
        mut pdus: usize,
    ) -> End {
        let mut neg = Negotiation::new(self.shared.config.limits.max_data_segment);
        let mut stage = req.csg;
        loop {
            let answers = match neg.answer(&keys) {
                Ok(a) => a,
                Err((status, end)) => return self.refuse(&req, status, end).await,
            };
            let done = req.transit && req.nsg == Some(Stage::FullFeature);
            let tsih = if done { self.new_tsih() } else { 0 };
            let mut rsp = LoginResponse::success(&req, &answers, tsih);
            self.number(&mut rsp);
            if let Err(end) = self.send(Pdu::LoginResponse(rsp)).await {
                return end;
            }
            if done {
                break;
            }
            if let Some(next) = req.nsg.filter(|_| req.transit) {
                stage = next;
            }
            if pdus >= self.shared.config.max_login_pdus {
                return End::Oversized(format!("more than {pdus} login requests"));
            }
            let next = match self.next_login(deadline, &mut pdus).await {
                Ok(r) => r,
                Err(end) => return end,
            };
            if next.csg != stage {
                let end = End::Malformed(format!("login in stage {:?}, not {stage:?}", next.csg));
                return self.refuse(&next, LoginStatus::INITIATOR_ERROR, end).await;
            }
            (req, keys) = match self.login_text(next, deadline, &mut pdus).await {
                Ok(x) => x,
                Err(end) => return end,
            };
        }
        bump(&self.counters().discovery_sessions);
        let info = DiscoveryInfo {
            local: self.local,
            peer: self.peer,
            initiator_name,
        };
        self.full_feature(&info, neg.send_limit).await
    }

    /// The full feature phase of a discovery session.
    async fn full_feature(&mut self, info: &DiscoveryInfo, send_limit: usize) -> End {
        let config = &self.shared.config;
        // (TTT, rest of the text) of a response cut by C.
        let mut pending: Option<(u32, Vec<u8>)> = None;
        let mut next_ttt: u32 = 1;
        for _ in 0..config.max_session_pdus {
            let deadline = Instant::now() + config.pdu_timeout;
            let (bhs, data) = match self.read_pdu(deadline).await {
                Ok(x) => x,
                // The initiator may simply close after SendTargets.
                Err(ReadError::Closed) => return End::DiscoveryDone,
                Err(e) => return e.into(),
            };
            let pdu = match Pdu::from_parts(&bhs, &data) {
                Ok(p) => p,
                Err(e) => {
                    tracing::debug!(peer = %self.peer, error = %e, "portal reject");
                    bump(&self.counters().malformed);
                    if let Err(end) = self.reject(bhs, RejectReason::INVALID_PDU_FIELD).await {
                        return end;
                    }
                    continue;
                }
            };
            let sent = match pdu {
                Pdu::TextRequest(t) => {
                    self.track_cmd_sn(t.immediate, t.cmd_sn);
                    let text = if t.cont {
                        None // continued requests: not needed for SendTargets
                    } else if t.ttt != RESERVED_TAG {
                        pending
                            .take()
                            .filter(|(ttt, _)| *ttt == t.ttt)
                            .map(|(_, rest)| rest)
                    } else {
                        pending = None;
                        t.keys(&config.limits)
                            .ok()
                            .map(|k| self.text_answer(&k, info))
                    };
                    match text {
                        None => {
                            bump(&self.counters().malformed);
                            self.reject(bhs, RejectReason::PROTOCOL_ERROR).await
                        }
                        Some(mut text) => {
                            let rest = text.split_off(text.len().min(send_limit));
                            let cont = !rest.is_empty();
                            let ttt = if cont {
                                next_ttt = next_ttt.wrapping_add(1).max(1);
                                pending = Some((next_ttt, rest));
                                next_ttt
                            } else {
                                RESERVED_TAG
                            };
                            let rsp = TextResponse {
                                final_: !cont,
                                cont,
                                lun: t.lun,
                                itt: t.itt,
                                ttt,
                                stat_sn: self.next_stat_sn(),
                                exp_cmd_sn: self.exp_cmd_sn,
                                max_cmd_sn: self.exp_cmd_sn,
                                data: text,
                            };
                            self.send(Pdu::TextResponse(rsp)).await
                        }
                    }
                }
                Pdu::LogoutRequest(l) => {
                    self.track_cmd_sn(l.immediate, l.cmd_sn);
                    let rsp = LogoutResponse {
                        // Reason 2 (remove for recovery): recovery is not
                        // supported; 0 and 1 end this one-connection session.
                        response: if l.reason == 2 { 2 } else { 0 },
                        itt: l.itt,
                        stat_sn: self.next_stat_sn(),
                        exp_cmd_sn: self.exp_cmd_sn,
                        max_cmd_sn: self.exp_cmd_sn,
                        time2wait: 0,
                        time2retain: 0,
                    };
                    if let Err(end) = self.send(Pdu::LogoutResponse(rsp)).await {
                        return end;
                    }
                    bump(&self.counters().logouts);
                    return End::DiscoveryDone;
                }
                Pdu::LoginRequest(_) => self.reject(bhs, RejectReason::PROTOCOL_ERROR).await,
                _ => self.reject(bhs, RejectReason::COMMAND_NOT_SUPPORTED).await,
            };
            if let Err(end) = sent {
                return end;
            }
        }
        End::Oversized(format!(
            "more than {} pdus in a discovery session",
            config.max_session_pdus
        ))
    }

    /// The answer to a text request of a discovery session.
    fn text_answer(&self, keys: &Keys, info: &DiscoveryInfo) -> Vec<u8> {
        let mut out = Vec::new();
        for (key, value) in keys.iter() {
            if key != "SendTargets" {
                let mut k = Keys::new();
                k.push(key, "NotUnderstood");
                k.encode_into(&mut out);
                continue;
            }
            bump(&self.counters().send_targets);
            let query = SendTargets::parse(value);
            let address = SendTargets::address(self.local, 1);
            let names = self.shared.director.targets(info);
            let chosen = names
                .iter()
                .filter(|n| valid_name(n))
                .filter(|n| match &query {
                    SendTargets::All => true,
                    SendTargets::Target(want) => *n == want,
                    // The session's own target: a discovery session has none.
                    SendTargets::Session => false,
                })
                .take(self.shared.config.max_targets)
                .map(|n| (n.as_str(), [address.as_str()]));
            out.extend_from_slice(&send_targets_text(chosen));
        }
        out
    }

    fn track_cmd_sn(&mut self, immediate: bool, cmd_sn: u32) {
        if !immediate && cmd_sn == self.exp_cmd_sn {
            self.exp_cmd_sn = self.exp_cmd_sn.wrapping_add(1);
        }
    }

    fn next_stat_sn(&mut self) -> u32 {
        let sn = self.stat_sn;
        self.stat_sn = sn.wrapping_add(1);
        sn
    }

    fn new_tsih(&self) -> u16 {
        loop {
            let t = self.shared.next_tsih.fetch_add(1, Ordering::Relaxed);
            if t != 0 {
                return t;
            }
        }
    }

    /// Sets StatSN, ExpCmdSN and MaxCmdSN (a window of one command).
    fn number(&mut self, rsp: &mut LoginResponse) {
        rsp.stat_sn = self.next_stat_sn();
        rsp.exp_cmd_sn = self.exp_cmd_sn;
        rsp.max_cmd_sn = self.exp_cmd_sn;
    }

    fn login_reply(&mut self, req: &LoginRequest, status: LoginStatus) -> LoginResponse {
        let mut rsp = LoginResponse::reply_to(req, status);
        self.number(&mut rsp);
        rsp
    }

    /// Answers `req` with an error status; the connection then closes.
    async fn refuse(&mut self, req: &LoginRequest, status: LoginStatus, end: End) -> End {
        let rsp = self.login_reply(req, status);
        match self.send(Pdu::LoginResponse(rsp)).await {
            Ok(()) => end,
            Err(e) => e,
        }
    }

    /// Answers a login whose header is all there is to go by
    /// (malformed or oversized) with "initiator error".
    async fn refuse_header(&mut self, bhs: &Bhs, end: End) -> End {
        let req = LoginRequest {
            transit: false,
            cont: false,
            csg: Stage::Security,
            nsg: None,
            version_max: 0,
            version_min: 0,
            isid: bhs.0[8..14].try_into().expect("6 bytes"),
            tsih: u16::from_be_bytes([bhs.0[14], bhs.0[15]]),
            itt: bhs.itt(),
            cid: 0,
            cmd_sn: u32::from_be_bytes(bhs.0[24..28].try_into().expect("4 bytes")),
            exp_stat_sn: u32::from_be_bytes(bhs.0[28..32].try_into().expect("4 bytes")),
            data: Vec::new(),
        };
        if self.stat_sn == 0 && self.exp_cmd_sn == 0 {
            self.stat_sn = req.exp_stat_sn;
            self.exp_cmd_sn = req.cmd_sn;
        }
        self.refuse(&req, LoginStatus::INITIATOR_ERROR, end).await
    }

    async fn reject(&mut self, header: Bhs, reason: RejectReason) -> Result<(), End> {
        let rej = Reject {
            reason,
            stat_sn: self.next_stat_sn(),
            exp_cmd_sn: self.exp_cmd_sn,
            max_cmd_sn: self.exp_cmd_sn,
            header,
        };
        self.send(Pdu::Reject(rej)).await
    }

    async fn send(&mut self, pdu: Pdu) -> Result<(), End> {
        let bytes = pdu.to_bytes();
        self.answered = true;
        self.stream.write_all(&bytes).await.map_err(|e| {
            if is_peer_gone(&e) {
                End::PeerClosed
            } else {
                End::Io(e)
            }
        })
    }

    /// Half-closes, then reads and discards a bounded amount until the peer
    /// closes too, so that the last answer is delivered rather than reset.
    async fn linger(&mut self) {
        let _ = timeout(LINGER_TIME, async {
            self.stream.shutdown().await?;
            let mut buf = [0u8; 4096];
            let mut total = 0;
            while total < LINGER_BYTES {
                match self.stream.read(&mut buf).await? {
                    0 => break,
                    n => total += n,
                }
            }
            io::Result::Ok(())
        })
        .await;
    }

    fn account(&self, end: &End) {
        let c = self.counters();
        let counter = match end {
            End::Redirected | End::HoldTimeout | End::DiscoveryDone => None,
            End::Refused(_) | End::BadRedirect(_) => Some(&c.director),
            End::NotLogin(_) => Some(&c.not_login),
            End::Malformed(_) => Some(&c.malformed),
            End::Oversized(_) => Some(&c.oversized),
            End::MissingKey(_) => Some(&c.missing_key),
            End::UnsupportedVersion(_) => Some(&c.unsupported_version),
            End::UnsupportedSessionType(_) => Some(&c.unsupported_session_type),
            End::Authentication => Some(&c.authentication),
            End::Timeout => Some(&c.timeout),
            End::PeerClosed => Some(&c.peer_closed),
            End::Io(_) => Some(&c.io),
        };
        if let Some(counter) = counter {
            bump(counter);
            tracing::debug!(
                peer = %self.peer, local = %self.local,
                initiator = self.initiator.as_deref().unwrap_or("-"),
                "portal connection ended: {end}"
            );
        }
    }
}

/// Whether a host can follow a redirect to `to`: a real address and port,
/// and not this portal itself (which would redirect it forever).
fn redirectable(to: SocketAddr, local: SocketAddr) -> bool {
    let ip = to.ip().to_canonical();
    !ip.is_unspecified()
        && !ip.is_multicast()
        && to.port() != 0
        && SocketAddr::new(ip, to.port()) != local
}

fn read_error(e: io::Error) -> ReadError {
    if e.kind() == io::ErrorKind::UnexpectedEof || is_peer_gone(&e) {
        ReadError::PeerClosed
    } else {
        ReadError::Io(e)
    }
}

fn is_peer_gone(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::ConnectionReset
            | io::ErrorKind::ConnectionAborted
            | io::ErrorKind::BrokenPipe
            | io::ErrorKind::UnexpectedEof
    )
}

/// A name the portal may put in a SendTargets answer.
fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= MAX_NAME_LEN
        && !name.chars().any(|c| c.is_control() || c.is_whitespace())
}

/// The operational negotiation of a discovery session: no authentication,
/// no digests, the RFC defaults elsewhere.
struct Negotiation {
    /// What the portal may send in one data segment (the initiator's
    /// declared MaxRecvDataSegmentLength).
    send_limit: usize,
    /// The portal's own MaxRecvDataSegmentLength, declared once.
    own_limit: usize,
    declared: bool,
}

impl Negotiation {
    fn new(own_limit: usize) -> Negotiation {
        Negotiation {
            send_limit: DEFAULT_MAX_RECV_DATA_SEGMENT,
            own_limit,
            declared: false,
        }
    }

    /// The answers to one login request's keys, or the status refusing it.
    fn answer(&mut self, keys: &Keys) -> Result<Keys, (LoginStatus, End)> {
        let mut out = Keys::new();
        let offers_none = |v: &str| v.split(',').any(|x| x == "None");
        for (key, value) in keys.iter() {
            let answer = match key {
                // Declarations that need no answer.
                "InitiatorName" | "InitiatorAlias" | "SessionType" | "TargetName" => continue,
                "AuthMethod" if offers_none(value) => "None",
                "AuthMethod" => {
                    return Err((LoginStatus::AUTHENTICATION_FAILURE, End::Authentication));
                }
                "HeaderDigest" | "DataDigest" if offers_none(value) => "None",
                "HeaderDigest" | "DataDigest" => {
                    let end = End::Malformed(format!("{key}={value}: only None is supported"));
                    return Err((LoginStatus::INITIATOR_ERROR, end));
                }
                "MaxRecvDataSegmentLength" => {
                    match value.parse::<usize>() {
                        Ok(n) if (512..1 << 24).contains(&n) => self.send_limit = n,
                        _ => {
                            let end = End::Malformed(format!("{key}={value}"));
                            return Err((LoginStatus::INITIATOR_ERROR, end));
                        }
                    }
                    if self.declared {
                        continue;
                    }
                    self.declared = true;
                    out.push(key, self.own_limit.to_string());
                    continue;
                }
                "DefaultTime2Wait" | "DefaultTime2Retain" | "ErrorRecoveryLevel" => "0",
                "MaxConnections" => "1",
                "IFMarker" | "OFMarker" | "RDMAExtensions" => "No",
                // Irrelevant when SessionType=Discovery (RFC 7143 §13).
                "InitialR2T"
                | "ImmediateData"
                | "MaxBurstLength"
                | "FirstBurstLength"
                | "MaxOutstandingR2T"
                | "DataPDUInOrder"
                | "DataSequenceInOrder" => "Irrelevant",
                _ => "NotUnderstood",
            };
            out.push(key, answer);
        }
        Ok(out)
    }
}
