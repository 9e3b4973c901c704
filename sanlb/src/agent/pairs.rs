//! The agent's side of pair mode: when its share carries a pair map, the
//! gateway runs the redirecting [`Portal`] on the entity addresses it holds,
//! answers logins from the latest share it applied ([`ShareDirector`]), and
//! ends the connections the share says must not run here.
//!
//! - **Portal.** It listens on port 3260 of each entity address the share
//!   gives this gateway, bound before the address is acquired (IP_FREEBIND)
//!   and closed after it is released. Specific addresses rather than the
//!   wildcard: the gateway's own address and its data addresses must not
//!   answer logins, and the target software may listen on 3260 elsewhere.
//! - **Director.** Logins are steered by (initiator IP, entity address):
//!   the host's steer in the map (a redirect to a data address on the data
//!   port, or a hold while the pair moves), else the entity's default data
//!   address (a new pair). A target name the entity does not list is "not
//!   found". Discovery sessions list the entity's target names. Each new
//!   share wakes the held logins.
//! - **Ending connections.** A host's connection to one of this gateway's
//!   data addresses is ended when the applied share says so: the pair is in
//!   the share's eviction list (its move away from here), or the map sends
//!   the host to another gateway's data address for that entity (a stray: a
//!   login that raced a move, or a host that bypassed the portal). Pairs the
//!   map does not list (new hosts) and holds are never ended. This runs when
//!   a share is applied (which is acknowledged only once it succeeded) and
//!   again before every report, on the blocking pool (sock_diag).
//!
//! An agent that restarts (a portal restart) ends nothing before it applied
//! a share, and a share only names connections that must not run here:
//! sessions run between the host and the target software on data
//! addresses, so they go on through the restart.

use std::{
    collections::{BTreeSet, HashMap},
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr},
    sync::{Arc, RwLock},
};

use tokio::sync::watch;

use crate::{
    enforce::EnforceError,
    portal::{
        Director, DiscoveryInfo, ISCSI_PORT, LoginInfo, Portal, PortalConfig, PortalError, Refusal,
        Steer,
    },
    proto::{PairShare, Share, shown},
};

/// Ends TCP connections on this gateway (blocking; the agent calls it on
/// the blocking pool). The real one is [`SockDiag`]; tests fake it.
pub trait SessionEnder: Send + Sync + std::fmt::Debug + 'static {
    /// The (local address, peer address) of the connections on local port
    /// `port` from any of `peers`.
    fn connections(
        &self,
        port: u16,
        peers: &[IpAddr],
    ) -> Result<Vec<(IpAddr, IpAddr)>, EnforceError>;
    /// Ends the connections to `local:port` from `peers`; how many.
    fn end(&self, local: IpAddr, port: u16, peers: &[IpAddr]) -> Result<usize, EnforceError>;
}

/// [`SessionEnder`] by sock_diag ([`crate::enforce::end_connections`]):
/// needs CAP_NET_ADMIN in the gateway's network namespace.
#[derive(Debug, Default, Clone, Copy)]
pub struct SockDiag;

impl SessionEnder for SockDiag {
    fn connections(
        &self,
        port: u16,
        peers: &[IpAddr],
    ) -> Result<Vec<(IpAddr, IpAddr)>, EnforceError> {
        let mut out = Vec::new();
        let (v6, v4): (Vec<IpAddr>, Vec<IpAddr>) = peers
            .iter()
            .map(|p| p.to_canonical())
            .partition(IpAddr::is_ipv6);
        // IPv4 peers on IPv4 and dual-stack sockets; IPv6 peers on IPv6 ones.
        for (any, peers) in [
            (IpAddr::V4(Ipv4Addr::UNSPECIFIED), v4),
            (IpAddr::V6(Ipv6Addr::UNSPECIFIED), v6),
        ] {
            if !peers.is_empty() {
                out.extend(
                    crate::enforce::connections(any, port, &peers)?
                        .into_iter()
                        .map(|c| (c.local.ip(), c.peer.ip())),
                );
            }
        }
        Ok(out)
    }

    fn end(&self, local: IpAddr, port: u16, peers: &[IpAddr]) -> Result<usize, EnforceError> {
        crate::enforce::end_connections(local, port, peers)
    }
}

/// How an agent serves pair mode.
#[derive(Debug, Clone)]
pub struct PairOptions {
    /// The portal's settings; `None` runs no portal (the connections are
    /// still ended).
    pub portal: Option<PortalConfig>,
    /// The port the portal listens on: [`ISCSI_PORT`].
    pub portal_port: u16,
    /// How connections are ended.
    pub ender: Arc<dyn SessionEnder>,
    /// The TCP ports the data plane counts, to warn when a share's data
    /// port is not among them (its traffic would not be counted).
    pub counted_ports: Option<Vec<u16>>,
}

impl PairOptions {
    /// A portal with the default settings on port 3260, connections ended
    /// by sock_diag.
    pub fn new() -> Self {
        Self {
            portal: Some(PortalConfig::default()),
            portal_port: ISCSI_PORT,
            ender: Arc::new(SockDiag),
            counted_ports: None,
        }
    }
}

impl Default for PairOptions {
    fn default() -> Self {
        Self::new()
    }
}

/// Where one entity's logins go.
#[derive(Debug, Default)]
struct Entity {
    targets: Vec<String>,
    default: Option<IpAddr>,
    hosts: HashMap<IpAddr, Option<IpAddr>>,
}

/// The director's table, from one share.
#[derive(Debug, Default)]
struct Table {
    data_port: u16,
    entities: HashMap<IpAddr, Entity>,
}

/// A [`Director`] answering from the pair map of the latest applied share.
#[derive(Debug)]
pub struct ShareDirector {
    table: RwLock<Table>,
    generation: watch::Sender<u64>,
}

impl Default for ShareDirector {
    fn default() -> Self {
        Self {
            table: RwLock::new(Table::default()),
            generation: watch::channel(0).0,
        }
    }
}

impl ShareDirector {
    /// Answers from `pairs` from now on (of share generation `generation`);
    /// held logins ask again.
    pub fn update(&self, generation: u64, pairs: &PairShare) {
        let table = Table {
            data_port: pairs.data_port,
            entities: pairs
                .entities
                .iter()
                .map(|e| {
                    (
                        e.address.to_canonical(),
                        Entity {
                            targets: e.targets.clone(),
                            default: e.default,
                            hosts: e
                                .hosts
                                .iter()
                                .map(|h| (h.host.to_canonical(), h.redirect))
                                .collect(),
                        },
                    )
                })
                .collect(),
        };
        *self.table.write().expect("director lock") = table;
        self.generation.send_replace(generation);
    }
}

impl Director for ShareDirector {
    fn steer(&self, login: &LoginInfo) -> Steer {
        let t = self.table.read().expect("director lock");
        let entity = login.local.ip();
        let steer = match t.entities.get(&entity) {
            None => Steer::Refuse(Refusal::NotFound),
            Some(e) if !e.targets.is_empty() && !e.targets.contains(&login.target_name) => {
                Steer::Refuse(Refusal::NotFound)
            }
            Some(e) => match e.hosts.get(&login.peer.ip()) {
                Some(None) => Steer::Hold,
                Some(Some(d)) => Steer::Redirect(SocketAddr::new(*d, t.data_port)),
                None => match e.default {
                    Some(d) => Steer::Redirect(SocketAddr::new(d, t.data_port)),
                    None => Steer::Refuse(Refusal::Unavailable),
                },
            },
        };
        tracing::info!(
            host = %login.peer.ip(),
            initiator = %shown(&login.initiator_name),
            target = %shown(&login.target_name),
            %entity,
            ?steer,
            "login"
        );
        steer
    }

    fn targets(&self, session: &DiscoveryInfo) -> Vec<String> {
        let t = self.table.read().expect("director lock");
        t.entities
            .get(&session.local.ip())
            .map(|e| e.targets.clone())
            .unwrap_or_default()
    }

    fn changes(&self) -> watch::Receiver<u64> {
        self.generation.subscribe()
    }
}

/// What must not run here by a share: (this gateway's data address, host).
fn unwanted(pairs: &PairShare) -> BTreeSet<(IpAddr, IpAddr)> {
    let mut out: BTreeSet<(IpAddr, IpAddr)> = pairs
        .evict
        .iter()
        .map(|e| (e.data_address, e.host))
        .collect();
    for e in &pairs.entities {
        let Some(ours) = e.data_address else {
            continue;
        };
        for h in &e.hosts {
            if h.redirect.is_some_and(|d| d != ours) {
                out.insert((ours, h.host));
            }
        }
    }
    out
}

/// The agent's pair-mode state.
#[derive(Debug)]
pub(super) struct PairSide {
    options: PairOptions,
    director: Arc<ShareDirector>,
    portal: Option<Portal>,
    listening: BTreeSet<IpAddr>,
    /// The share applied last (its addresses and pair map).
    current: Option<Share>,
    warned_port: bool,
}

impl PairSide {
    pub fn new(options: PairOptions) -> Self {
        Self {
            options,
            director: Arc::new(ShareDirector::default()),
            portal: None,
            listening: BTreeSet::new(),
            current: None,
            warned_port: false,
        }
    }

    /// Before the share's addresses are reconciled: the director answers
    /// from it, and the portal listens on every entity address it gives
    /// this gateway (before acquiring them). Whether that worked.
    pub fn prepare(&mut self, share: &Share, pairs: &PairShare) -> bool {
        if !self.warned_port
            && let Some(ports) = &self.options.counted_ports
            && !ports.contains(&pairs.data_port)
        {
            tracing::warn!(
                data_port = pairs.data_port,
                counted = ?ports,
                "the data plane does not count the data port: pair traffic goes unmeasured (add --port {})",
                pairs.data_port
            );
            self.warned_port = true;
        }
        self.director.update(share.generation, pairs);
        let Some(config) = &self.options.portal else {
            return true;
        };
        let portal = match &self.portal {
            Some(p) => p,
            None => match Portal::new(config.clone(), self.director.clone()) {
                Ok(p) => self.portal.insert(p),
                Err(e) => {
                    tracing::error!(error = %crate::error_chain(&e), "starting the portal");
                    return false;
                }
            },
        };
        let mut ok = true;
        for e in entities_here(share, pairs) {
            if self.listening.contains(&e) {
                continue;
            }
            match portal.listen(SocketAddr::new(e, self.options.portal_port)) {
                Ok(_) => {
                    self.listening.insert(e);
                }
                Err(err @ (PortalError::Listen { .. } | PortalError::NoRuntime)) => {
                    tracing::error!(entity = %e, error = %crate::error_chain(&err), "the portal cannot listen");
                    ok = false;
                }
                Err(err) => {
                    tracing::error!(error = %crate::error_chain(&err), "portal");
                    ok = false;
                }
            }
        }
        ok
    }

    /// After the addresses are reconciled: the portal stops listening on
    /// entities no longer here, and the connections the share names are
    /// ended. Whether that worked (the share may be acknowledged).
    pub async fn finish(&mut self, share: &Share, pairs: &PairShare) -> bool {
        let here = entities_here(share, pairs);
        if let Some(portal) = &self.portal {
            for e in self.listening.clone() {
                if !here.contains(&e) {
                    portal.unlisten(SocketAddr::new(e, self.options.portal_port));
                    self.listening.remove(&e);
                }
            }
        }
        self.current = Some(share.clone());
        self.sweep().await.is_ok()
    }

    /// Ends the connections the applied share says must not run here.
    pub async fn sweep(&self) -> Result<usize, EnforceError> {
        let Some(share) = &self.current else {
            return Ok(0);
        };
        let Some(pairs) = &share.pairs else {
            return Ok(0);
        };
        let unwanted = unwanted(pairs);
        if unwanted.is_empty() {
            return Ok(0);
        }
        let ender = Arc::clone(&self.options.ender);
        let port = pairs.data_port;
        let generation = share.generation;
        let r = tokio::task::spawn_blocking(move || {
            let peers: Vec<IpAddr> = unwanted
                .iter()
                .map(|(_, h)| *h)
                .collect::<BTreeSet<_>>()
                .into_iter()
                .collect();
            let mut ended = 0;
            for (local, peer) in ender.connections(port, &peers)? {
                if unwanted.contains(&(local, peer)) {
                    let n = ender.end(local, port, &[peer])?;
                    if n > 0 {
                        tracing::info!(host = %peer, data_address = %local, port, generation, "ended the pair's connections: it goes elsewhere");
                    }
                    ended += n;
                }
            }
            Ok(ended)
        })
        .await;
        match r {
            Ok(r) => r.inspect_err(|e| {
                tracing::error!(error = %crate::error_chain(e), "ending connections failed");
            }),
            Err(e) => {
                tracing::error!(error = %e, "ending connections panicked");
                Err(EnforceError::Os {
                    what: "ending connections".into(),
                    source: std::io::Error::other(e.to_string()),
                })
            }
        }
    }

    /// Where the portal listens.
    pub fn portal_listening(&self) -> Vec<SocketAddr> {
        self.portal
            .as_ref()
            .map(Portal::listening)
            .unwrap_or_default()
    }

    /// The portal's counters, if it runs.
    pub fn portal_metrics(&self) -> Option<crate::portal::PortalMetrics> {
        self.portal.as_ref().map(Portal::metrics)
    }
}

/// The entity addresses the share gives this gateway (its portals).
fn entities_here(share: &Share, pairs: &PairShare) -> BTreeSet<IpAddr> {
    let mine: BTreeSet<IpAddr> = share.addresses.iter().flatten().copied().collect();
    pairs
        .entities
        .iter()
        .map(|e| e.address)
        .filter(|a| mine.contains(a))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::{Eviction, HostSteer, PairEntity};

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    fn login(peer: &str, entity: &str, target: &str) -> LoginInfo {
        LoginInfo {
            local: SocketAddr::new(ip(entity), 3260),
            peer: SocketAddr::new(ip(peer), 40000),
            initiator_name: "iqn.h".into(),
            target_name: target.into(),
            isid: [0; 6],
        }
    }

    /// gw1's share: the portal of e1 and data address .2.1; h1 on gw2
    /// (.2.2), h2 held, h3 evicted from here.
    fn share() -> Share {
        Share {
            gateway: "gw1".into(),
            generation: 7,
            addresses: Some(vec![ip("198.18.1.1"), ip("198.18.2.1")]),
            pairs: Some(PairShare {
                data_port: 3261,
                entities: vec![
                    PairEntity {
                        address: ip("198.18.1.1"),
                        targets: vec!["iqn.t1".into()],
                        default: Some(ip("198.18.2.1")),
                        data_address: Some(ip("198.18.2.1")),
                        hosts: vec![
                            HostSteer {
                                host: ip("198.18.0.101"),
                                redirect: Some(ip("198.18.2.2")),
                            },
                            HostSteer {
                                host: ip("198.18.0.102"),
                                redirect: None,
                            },
                        ],
                    },
                    PairEntity {
                        address: ip("198.18.1.2"),
                        targets: vec![],
                        default: None,
                        data_address: None,
                        hosts: vec![],
                    },
                ],
                evict: vec![Eviction {
                    host: ip("198.18.0.103"),
                    data_address: ip("198.18.2.1"),
                }],
            }),
        }
    }

    #[test]
    fn the_director_answers_from_the_share() {
        let d = ShareDirector::default();
        let mut changes = d.changes();
        let s = share();
        d.update(s.generation, s.pairs.as_ref().unwrap());
        assert!(changes.has_changed().unwrap());
        assert_eq!(*changes.borrow_and_update(), 7);
        let redirect = |a: &str| Steer::Redirect(SocketAddr::new(ip(a), 3261));
        // A host of the map, a held one, a new one (the default).
        assert_eq!(
            d.steer(&login("198.18.0.101", "198.18.1.1", "iqn.t1")),
            redirect("198.18.2.2")
        );
        assert_eq!(
            d.steer(&login("198.18.0.102", "198.18.1.1", "iqn.t1")),
            Steer::Hold
        );
        assert_eq!(
            d.steer(&login("198.18.0.109", "198.18.1.1", "iqn.t1")),
            redirect("198.18.2.1")
        );
        // A name the entity does not list; an entity not in the map; one
        // without any data address; IPv4-mapped peers are IPv4.
        assert_eq!(
            d.steer(&login("198.18.0.101", "198.18.1.1", "iqn.other")),
            Steer::Refuse(Refusal::NotFound)
        );
        assert_eq!(
            d.steer(&login("198.18.0.101", "198.18.1.9", "iqn.t1")),
            Steer::Refuse(Refusal::NotFound)
        );
        assert_eq!(
            d.steer(&login("198.18.0.101", "198.18.1.2", "iqn.any")),
            Steer::Refuse(Refusal::Unavailable)
        );
        let info = DiscoveryInfo {
            local: SocketAddr::new(ip("198.18.1.1"), 3260),
            peer: SocketAddr::new(ip("198.18.0.101"), 1),
            initiator_name: "iqn.h".into(),
        };
        assert_eq!(d.targets(&info), ["iqn.t1"]);
    }

    #[test]
    fn what_must_not_run_here() {
        let s = share();
        let got = unwanted(s.pairs.as_ref().unwrap());
        // h3: evicted; h1: sent to gw2's data address, a stray here. h2 is
        // held (its session may run on its old gateway) and new hosts are
        // never ended.
        assert_eq!(
            got.into_iter().collect::<Vec<_>>(),
            [
                (ip("198.18.2.1"), ip("198.18.0.101")),
                (ip("198.18.2.1"), ip("198.18.0.103")),
            ]
        );
        assert_eq!(
            entities_here(&s, s.pairs.as_ref().unwrap()),
            [ip("198.18.1.1")].into()
        );
    }
}
