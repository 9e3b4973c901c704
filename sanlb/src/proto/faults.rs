//! The fault-handling part of the protocol: heartbeats, data-path probes,
//! address conflicts and drains (issue 14).
//!
//! | endpoint | body | reply |
//! | --- | --- | --- |
//! | `POST /v1/heartbeat` | [`Heartbeat`] | [`HeartbeatReply`] |
//! | `POST /v1/drain` | [`DrainRequest`] | [`DrainReply`] |
//! | `POST /v1/undrain` | [`DrainRequest`] | [`DrainReply`] |
//!
//! A heartbeat is the agent's light liveness signal (every 100 ms by
//! default, beside the report every interval). Its reply carries the probes
//! the controller wants this agent to run on the data path; their results
//! come back in the next heartbeat. A probe asks who answers ARP (RFC 5227
//! probe) or neighbour discovery (a DAD-style solicitation) for an address
//! on the host-facing segment, and whether the storage service behind each
//! answer accepts a TCP connection.

use std::{fmt, net::IpAddr, str::FromStr};

use serde::{Deserialize, Serialize};

use super::{MAX_BOOT_ID_LEN, ReportError, shown, valid_gateway_name, valid_storage_address};

/// Most probes a heartbeat reply asks for, and most results a heartbeat carries.
pub const MAX_PROBES_PER_HEARTBEAT: usize = 16;
/// Most addresses one probe covers (a sample of a gateway's addresses
/// decides whether it serves).
pub const MAX_PROBE_ADDRESSES: usize = 64;
/// Most stations one probed address may report as answering.
pub const MAX_ANSWERS: usize = 16;
/// Most conflicts a heartbeat reports.
pub const MAX_CONFLICTS: usize = 1024;

/// An Ethernet address, written `02:00:c6:12:00:01`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct MacAddr(pub [u8; 6]);

impl MacAddr {
    /// A unicast station address: not multicast or broadcast (the low bit of
    /// the first byte clear), not all zeros.
    pub fn is_station(&self) -> bool {
        self.0[0] & 1 == 0 && self.0 != [0; 6]
    }
}

impl fmt::Display for MacAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let m = self.0;
        write!(
            f,
            "{:02x}:{:02x}:{:02x}:{:02x}:{:02x}:{:02x}",
            m[0], m[1], m[2], m[3], m[4], m[5]
        )
    }
}

/// Why a text is not a MAC address.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{0:?}: not a MAC address (six hex bytes separated by colons)")]
pub struct MacParseError(String);

impl FromStr for MacAddr {
    type Err = MacParseError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad = || MacParseError(shown(s));
        let mut out = [0u8; 6];
        let mut parts = s.split(':');
        for b in &mut out {
            let p = parts.next().ok_or_else(bad)?;
            if p.len() != 2 {
                return Err(bad());
            }
            *b = u8::from_str_radix(p, 16).map_err(|_| bad())?;
        }
        if parts.next().is_some() {
            return Err(bad());
        }
        Ok(Self(out))
    }
}

impl Serialize for MacAddr {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for MacAddr {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = <std::borrow::Cow<'de, str>>::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

/// What a TCP connection attempt to the storage service behind one answer
/// found.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Service {
    /// It answered with SYN-ACK: the service listens.
    Open,
    /// It answered with a reset: the machine is up, the service is not.
    Closed,
    /// No answer to the SYN within the probe window.
    Silent,
    /// Not checked (the prober has no address of that family to send from).
    #[default]
    Unchecked,
}

/// One station that answered for a probed address.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct ProbeAnswer {
    /// Its MAC (the ARP sender or NA target link-layer address).
    pub mac: MacAddr,
    /// Its storage service.
    pub service: Service,
}

/// Who answered for one address.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct ProbedAddress {
    /// The address probed.
    pub address: IpAddr,
    /// Every station that answered within the window (the prober's own NIC
    /// excluded).
    pub answers: Vec<ProbeAnswer>,
}

/// The controller asks an agent to probe addresses from its NIC.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProbeRequest {
    /// The controller's id for it; the result names it.
    pub id: u64,
    /// The addresses (at most [`MAX_PROBE_ADDRESSES`]).
    pub addresses: Vec<IpAddr>,
}

/// The result of one [`ProbeRequest`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct ProbeResult {
    /// The request's id.
    pub id: u64,
    /// One entry per address probed.
    pub addresses: Vec<ProbedAddress>,
    /// The probe could not be sent (the NIC is down, say): nothing can be
    /// concluded from the empty answers.
    #[serde(default)]
    pub failed: bool,
}

/// An address this gateway holds that another station answers for too (its
/// last self-probe).
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Conflict {
    /// The address.
    pub address: IpAddr,
    /// The other stations' MACs.
    pub macs: Vec<MacAddr>,
}

/// What an agent sends every heartbeat interval.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Heartbeat {
    /// Gateway name.
    pub gateway: String,
    /// Its agent run (as in reports).
    pub boot_id: String,
    /// Heartbeat number within this run, from 0: an older one than the last
    /// is ignored.
    pub seq: u64,
    /// Whether the host-facing NIC is up with a carrier.
    pub link_up: bool,
    /// The host-facing NIC's MAC, when known: it tells the controller which
    /// gateway a probe's answer or a conflict's second MAC is.
    pub mac: Option<MacAddr>,
    /// Results of probes the controller asked for.
    pub probes: Vec<ProbeResult>,
    /// Conflicts its last self-probe found (the current set, not events).
    pub conflicts: Vec<Conflict>,
}

/// An order to remove an address configured on this gateway's NIC without
/// sanlb's marker that the controller assigned to another gateway.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReleaseOrder {
    /// The address.
    pub address: IpAddr,
    /// The gateway the controller assigned it to.
    pub owner: String,
}

/// The controller's answer to a heartbeat.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HeartbeatReply {
    /// False when the controller does not know this agent run yet (it
    /// reports first); the heartbeat changed nothing.
    pub known: bool,
    /// Probes to run.
    #[serde(default)]
    pub probes: Vec<ProbeRequest>,
    /// Addresses to remove from the NIC.
    #[serde(default)]
    pub release: Vec<ReleaseOrder>,
}

/// Who drained a gateway.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DrainKind {
    /// `sanlb drain`: until `sanlb undrain`.
    Operator,
    /// The gateway's agent handing off before it stops: until another run
    /// of it reports.
    Handoff,
}

/// `POST /v1/drain`, `POST /v1/undrain`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct DrainRequest {
    /// The gateway.
    pub gateway: String,
    /// Set by an agent handing off (its run); `None` for an operator.
    pub boot_id: Option<String>,
}

/// The answer to a drain or undrain.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DrainReply {
    /// The gateway.
    pub gateway: String,
    /// Its drain now.
    pub drained: Option<DrainKind>,
    /// Routes the map still assigns it (moving ones count for the new owner).
    pub routes: usize,
    /// Addresses it reported holding last.
    pub held: usize,
}

/// A gateway's liveness as the controller judges it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum GatewayState {
    /// Its agent reports, its NIC is up.
    #[default]
    Up,
    /// Its agent reports its host-facing NIC down: it cannot serve, its
    /// addresses move away.
    LinkDown,
    /// Its agent is silent for a lease; its addresses are being probed.
    Suspect,
    /// Its agent is silent but the gateway answers on the data path: it
    /// keeps its addresses (pinned) and is probed again periodically.
    Serving,
    /// Silent and not serving (or holding nothing): its addresses moved.
    Dead,
}

impl fmt::Display for GatewayState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Up => "up",
            Self::LinkDown => "link-down",
            Self::Suspect => "suspect",
            Self::Serving => "silent-serving",
            Self::Dead => "dead",
        })
    }
}

/// A conflict as `sanlb status` shows it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ConflictStatus {
    /// The address.
    pub address: IpAddr,
    /// The other stations' MACs, with the gateway each belongs to if known.
    pub others: Vec<(MacAddr, Option<String>)>,
    /// Milliseconds since it was first reported.
    pub since_ms: u64,
}

/// The fault-handling view of one gateway in `GET /v1/status`.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct GatewayHealth {
    /// Its liveness.
    pub state: GatewayState,
    /// Milliseconds in that state.
    pub state_ms: u64,
    /// Its host-facing NIC is up (as its agent last said).
    pub link_up: bool,
    /// Its NIC's MAC, if its agent sent heartbeats.
    pub mac: Option<MacAddr>,
    /// Milliseconds since its last heartbeat (`None`: none since start).
    pub last_heartbeat_ms: Option<u64>,
    /// Drained, and by whom.
    pub drained: Option<DrainKind>,
    /// For a silent gateway that serves: the addresses it answered for in
    /// the last probe.
    #[serde(default)]
    pub serving: Vec<IpAddr>,
    /// Addresses it holds that another station answers for too.
    #[serde(default)]
    pub conflicts: Vec<ConflictStatus>,
}

/// The wire forms (strict, map-only, as for reports).
mod wire {
    use std::net::IpAddr;

    use serde::Deserialize;

    #[derive(Deserialize)]
    #[serde(deny_unknown_fields)]
    pub struct ProbeAnswer {
        pub mac: super::MacAddr,
        #[serde(default)]
        pub service: super::Service,
    }

    #[derive(Deserialize)]
    #[serde(deny_unknown_fields)]
    pub struct ProbedAddress {
        pub address: IpAddr,
        pub answers: Vec<super::ProbeAnswer>,
    }

    #[derive(Deserialize)]
    #[serde(deny_unknown_fields)]
    pub struct ProbeResult {
        pub id: u64,
        pub addresses: Vec<super::ProbedAddress>,
        #[serde(default)]
        pub failed: bool,
    }

    #[derive(Deserialize)]
    #[serde(deny_unknown_fields)]
    pub struct Conflict {
        pub address: IpAddr,
        pub macs: Vec<super::MacAddr>,
    }

    #[derive(Deserialize)]
    #[serde(deny_unknown_fields)]
    pub struct Heartbeat {
        pub gateway: String,
        pub boot_id: String,
        pub seq: u64,
        pub link_up: bool,
        #[serde(default)]
        pub mac: Option<super::MacAddr>,
        #[serde(default)]
        pub probes: Vec<super::ProbeResult>,
        #[serde(default)]
        pub conflicts: Vec<super::Conflict>,
    }

    #[derive(Deserialize)]
    #[serde(deny_unknown_fields)]
    pub struct DrainRequest {
        pub gateway: String,
        #[serde(default)]
        pub boot_id: Option<String>,
    }
}

impl From<wire::ProbeAnswer> for ProbeAnswer {
    fn from(w: wire::ProbeAnswer) -> Self {
        Self {
            mac: w.mac,
            service: w.service,
        }
    }
}

impl From<wire::ProbedAddress> for ProbedAddress {
    fn from(w: wire::ProbedAddress) -> Self {
        Self {
            address: w.address,
            answers: w.answers,
        }
    }
}

impl From<wire::ProbeResult> for ProbeResult {
    fn from(w: wire::ProbeResult) -> Self {
        Self {
            id: w.id,
            addresses: w.addresses,
            failed: w.failed,
        }
    }
}

impl From<wire::Conflict> for Conflict {
    fn from(w: wire::Conflict) -> Self {
        Self {
            address: w.address,
            macs: w.macs,
        }
    }
}

impl From<wire::Heartbeat> for Heartbeat {
    fn from(w: wire::Heartbeat) -> Self {
        Self {
            gateway: w.gateway,
            boot_id: w.boot_id,
            seq: w.seq,
            link_up: w.link_up,
            mac: w.mac,
            probes: w.probes,
            conflicts: w.conflicts,
        }
    }
}

impl From<wire::DrainRequest> for DrainRequest {
    fn from(w: wire::DrainRequest) -> Self {
        Self {
            gateway: w.gateway,
            boot_id: w.boot_id,
        }
    }
}

use wire::{
    Conflict as WireConflict, DrainRequest as WireDrain, Heartbeat as WireHeartbeat,
    ProbeAnswer as WireAnswer, ProbeResult as WireResult, ProbedAddress as WireProbed,
};
map_only!(ProbeAnswer, WireAnswer);
map_only!(ProbedAddress, WireProbed);
map_only!(ProbeResult, WireResult);
map_only!(Conflict, WireConflict);
map_only!(Heartbeat, WireHeartbeat);
map_only!(DrainRequest, WireDrain);

fn check_name(gateway: &str) -> Result<(), ReportError> {
    if valid_gateway_name(gateway) {
        Ok(())
    } else {
        Err(ReportError {
            field: "gateway",
            message: format!(
                "\"{}\": 1–{} characters of [A-Za-z0-9._-]",
                shown(gateway),
                super::MAX_NAME_LEN
            ),
        })
    }
}

/// A boot id as reports carry it: 1–64 printable ASCII characters.
pub fn valid_boot_id(b: &str) -> bool {
    !b.is_empty() && b.len() <= MAX_BOOT_ID_LEN && b.bytes().all(|c| c.is_ascii_graphic())
}

impl Heartbeat {
    /// Checks every field against the limits above.
    pub fn validate(&self) -> Result<(), ReportError> {
        let invalid = |field, message: String| Err(ReportError { field, message });
        check_name(&self.gateway)?;
        if !valid_boot_id(&self.boot_id) {
            return invalid(
                "boot_id",
                format!("1–{MAX_BOOT_ID_LEN} printable ASCII characters"),
            );
        }
        if self.mac.is_some_and(|m| !m.is_station()) {
            return invalid("mac", "not a unicast station address".into());
        }
        if self.probes.len() > MAX_PROBES_PER_HEARTBEAT {
            return invalid(
                "probes",
                format!(
                    "{} results, at most {MAX_PROBES_PER_HEARTBEAT}",
                    self.probes.len()
                ),
            );
        }
        for p in &self.probes {
            if p.addresses.len() > MAX_PROBE_ADDRESSES {
                return invalid(
                    "probes",
                    format!(
                        "probe {}: {} addresses, at most {MAX_PROBE_ADDRESSES}",
                        p.id,
                        p.addresses.len()
                    ),
                );
            }
            for a in &p.addresses {
                if !valid_storage_address(&a.address) {
                    return invalid(
                        "probes",
                        format!("{} cannot be a storage address", a.address),
                    );
                }
                if a.answers.len() > MAX_ANSWERS {
                    return invalid(
                        "probes",
                        format!(
                            "{}: {} answers, at most {MAX_ANSWERS}",
                            a.address,
                            a.answers.len()
                        ),
                    );
                }
                if a.answers.iter().any(|x| !x.mac.is_station()) {
                    return invalid(
                        "probes",
                        format!("{}: an answer from a non-station MAC", a.address),
                    );
                }
            }
        }
        if self.conflicts.len() > MAX_CONFLICTS {
            return invalid(
                "conflicts",
                format!(
                    "{} conflicts, at most {MAX_CONFLICTS}",
                    self.conflicts.len()
                ),
            );
        }
        for c in &self.conflicts {
            if !valid_storage_address(&c.address) {
                return invalid(
                    "conflicts",
                    format!("{} cannot be a storage address", c.address),
                );
            }
            if c.macs.is_empty() || c.macs.len() > MAX_ANSWERS {
                return invalid("conflicts", format!("{}: 1–{MAX_ANSWERS} MACs", c.address));
            }
            if c.macs.iter().any(|m| !m.is_station()) {
                return invalid("conflicts", format!("{}: a non-station MAC", c.address));
            }
        }
        Ok(())
    }
}

impl DrainRequest {
    /// Checks the name and, for a hand-off, the boot id.
    pub fn validate(&self) -> Result<(), ReportError> {
        check_name(&self.gateway)?;
        if self.boot_id.as_deref().is_some_and(|b| !valid_boot_id(b)) {
            return Err(ReportError {
                field: "boot_id",
                message: format!("1–{MAX_BOOT_ID_LEN} printable ASCII characters"),
            });
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn heartbeat() -> Heartbeat {
        Heartbeat {
            gateway: "gw1".into(),
            boot_id: "b1".into(),
            seq: 3,
            link_up: true,
            mac: Some("02:00:c6:12:00:01".parse().unwrap()),
            probes: vec![ProbeResult {
                id: 7,
                addresses: vec![ProbedAddress {
                    address: "198.18.1.1".parse().unwrap(),
                    answers: vec![ProbeAnswer {
                        mac: "02:00:c6:12:00:02".parse().unwrap(),
                        service: Service::Open,
                    }],
                }],
                failed: false,
            }],
            conflicts: vec![Conflict {
                address: "198.18.1.2".parse().unwrap(),
                macs: vec!["02:00:c6:12:00:09".parse().unwrap()],
            }],
        }
    }

    #[test]
    fn macs_round_trip_and_bad_ones_are_refused() {
        let m: MacAddr = "02:00:C6:12:00:0a".parse().unwrap();
        assert_eq!(m.0, [2, 0, 0xc6, 0x12, 0, 10]);
        assert_eq!(m.to_string(), "02:00:c6:12:00:0a");
        for bad in [
            "",
            "02:00:c6:12:00",
            "02:00:c6:12:00:0a:01",
            "2:0:c6:12:0:a",
            "zz:00:00:00:00:00",
        ] {
            assert!(bad.parse::<MacAddr>().is_err(), "{bad}");
        }
        assert!(m.is_station());
        assert!(!MacAddr([0xff; 6]).is_station());
        assert!(!MacAddr([0x33, 0x33, 0, 0, 0, 1]).is_station());
        assert!(!MacAddr([0; 6]).is_station());
    }

    #[test]
    fn a_heartbeat_round_trips_and_validates() {
        let hb = heartbeat();
        hb.validate().unwrap();
        let json = serde_json::to_string(&hb).unwrap();
        let back: Heartbeat = serde_json::from_str(&json).unwrap();
        assert_eq!(back, hb);
        // Optional parts may be left out.
        let min: Heartbeat =
            serde_json::from_str(r#"{"gateway":"gw1","boot_id":"b","seq":0,"link_up":false}"#)
                .unwrap();
        assert!(min.probes.is_empty() && min.mac.is_none());
    }

    #[test]
    fn heartbeats_are_parsed_strictly() {
        for bad in [
            r#"["gw1","b",0,true,null,[],[]]"#,
            r#"{"gateway":"gw1","boot_id":"b","seq":0,"link_up":true,"extra":1}"#,
            r#"{"gateway":"gw1","boot_id":"b","seq":-1,"link_up":true}"#,
            r#"{"gateway":"gw1","boot_id":"b","seq":0,"link_up":true,"mac":"nope"}"#,
            r#"{"gateway":"gw1","boot_id":"b","seq":0,"link_up":true,"probes":[{"id":1,"addresses":[],"x":0}]}"#,
        ] {
            assert!(serde_json::from_str::<Heartbeat>(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn validation_names_the_field() {
        let field = |f: &dyn Fn(&mut Heartbeat)| {
            let mut hb = heartbeat();
            f(&mut hb);
            hb.validate().unwrap_err().field
        };
        assert_eq!(field(&|h| h.gateway = "a b".into()), "gateway");
        assert_eq!(field(&|h| h.boot_id = String::new()), "boot_id");
        assert_eq!(field(&|h| h.mac = Some(MacAddr([0xff; 6]))), "mac");
        assert_eq!(
            field(&|h| h.probes = vec![h.probes[0].clone(); MAX_PROBES_PER_HEARTBEAT + 1]),
            "probes"
        );
        assert_eq!(
            field(&|h| h.probes[0].addresses[0].address = "224.0.0.1".parse().unwrap()),
            "probes"
        );
        assert_eq!(
            field(&|h| h.probes[0].addresses[0].answers[0].mac = MacAddr([1, 0, 0, 0, 0, 0])),
            "probes"
        );
        assert_eq!(field(&|h| h.conflicts[0].macs.clear()), "conflicts");
        assert_eq!(
            field(&|h| h.conflicts[0].address = "127.0.0.1".parse().unwrap()),
            "conflicts"
        );
        let d = DrainRequest {
            gateway: "gw1".into(),
            boot_id: Some("\n".into()),
        };
        assert_eq!(d.validate().unwrap_err().field, "boot_id");
    }
}
