//! Pair mode in the controller: each (host, storage entity) pair is steered
//! to a gateway of its own by iSCSI login redirection (`docs/pairmode.md`).
//!
//! - **Data addresses.** Every gateway holds one data address D(E, g) per
//!   entity E, from the pool, where its target software listens on the data
//!   port. They are allocated here, lowest free address first in (entity,
//!   gateway) order, persisted, and released when a gateway is forgotten.
//!   A flow (host, D(E, g)) is pair (host, E) carried by g: counting stays
//!   exact with the data plane unchanged.
//! - **Portal routes** `(None, E)`: the gateway holding E's address runs
//!   E's redirecting portal. They move like target mode's addresses (the
//!   same state machine), placed by a sticky rule: on the alive gateway with
//!   the fewest, moved only off dead gateways or to even out counts that
//!   differ by more than one. The optimiser never sees them.
//! - **Pair routes** `(Some(h), E)`: what the optimiser places. A move holds
//!   the pair's logins at every portal, has the old gateway end its
//!   connections, then redirects it (`ownership.rs`).
//! - **Shares** carry the addresses to hold (portals and data addresses),
//!   and for every alive gateway the whole pair map: per entity its target
//!   names, the default data address for hosts not in the map (the portal's
//!   gateway's), and per host a redirect or a hold; plus the gateway's own
//!   evictions.

use std::{
    collections::{BTreeMap, BTreeSet, HashMap},
    net::IpAddr,
    time::Instant,
};

use ipnet::IpNet;

use super::{ConfigError, Controller, ownership::RouteKey};
use crate::proto::{
    DataAddress, Eviction, HostSteer, MAX_DATA_ADDRESSES, MAX_TARGET_NAMES, Ownership, PairEntity,
    PairShare, valid_target_name,
};

/// Pair mode's settings.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PairSettings {
    /// Where data addresses come from (required in pair mode).
    pub data_pool: Option<IpNet>,
    /// The port the target software listens on at the data addresses.
    pub data_port: u16,
    /// Target names per storage entity: discovery through the portal lists
    /// them, and a login must name one of them (none listed: any name).
    pub target_names: BTreeMap<IpAddr, Vec<String>>,
}

impl Default for PairSettings {
    fn default() -> Self {
        Self {
            data_pool: None,
            data_port: crate::portal::DEFAULT_DATA_PORT,
            target_names: BTreeMap::new(),
        }
    }
}

impl PairSettings {
    /// Checks the values; `targets` are the storage addresses listed.
    pub(super) fn validate(&self, pair_mode: bool, targets: &[IpAddr]) -> Result<(), ConfigError> {
        let bad = |setting, message: String| Err(ConfigError::Invalid { setting, message });
        if let Some(pool) = &self.data_pool {
            if crate::enforce::validate_storage_addr(pool.network()).is_err()
                || pool.hosts().next().is_none()
            {
                return bad(
                    "data_pool",
                    format!("{pool}: not a range of storage addresses"),
                );
            }
            if let Some(t) = targets.iter().find(|t| pool.contains(*t)) {
                return bad(
                    "data_pool",
                    format!(
                        "{pool} holds the storage address {t}: data addresses and entities must not overlap"
                    ),
                );
            }
        } else if pair_mode {
            return bad(
                "data_pool",
                "is needed in pair mode (a pool of data addresses)".into(),
            );
        }
        if self.data_port == 0 || self.data_port == crate::portal::ISCSI_PORT {
            return bad(
                "data_port",
                format!(
                    "{}: must be a port other than 0 and the portal's {}",
                    self.data_port,
                    crate::portal::ISCSI_PORT
                ),
            );
        }
        for (addr, names) in &self.target_names {
            if names.len() > MAX_TARGET_NAMES {
                return bad(
                    "target",
                    format!("{addr}: {} names, at most {MAX_TARGET_NAMES}", names.len()),
                );
            }
            if let Some(n) = names.iter().find(|n| !valid_target_name(n)) {
                return bad(
                    "target",
                    format!(
                        "{addr}: \"{}\" is not an iSCSI name (1–223 bytes, no spaces or control characters)",
                        crate::proto::shown(n)
                    ),
                );
            }
        }
        Ok(())
    }
}

/// The data addresses: one per (entity, gateway).
#[derive(Debug, Default, Clone)]
pub(super) struct DataAddresses {
    by_entity: BTreeMap<IpAddr, BTreeMap<String, IpAddr>>,
    by_addr: HashMap<IpAddr, (IpAddr, String)>,
    /// (entity, gateway) the pool could not serve at the last allocation.
    short: usize,
}

impl DataAddresses {
    /// D(entity, gateway).
    pub fn get(&self, entity: IpAddr, gateway: &str) -> Option<IpAddr> {
        self.by_entity.get(&entity)?.get(gateway).copied()
    }

    /// The (entity, gateway) of a data address.
    pub fn owner(&self, addr: &IpAddr) -> Option<(IpAddr, &str)> {
        self.by_addr.get(addr).map(|(e, g)| (*e, g.as_str()))
    }

    /// The gateways with a data address for `entity`.
    pub fn gateways(&self, entity: IpAddr) -> impl Iterator<Item = &str> {
        self.by_entity
            .get(&entity)
            .into_iter()
            .flat_map(|m| m.keys().map(String::as_str))
    }

    /// Every (entity, gateway, address), in order.
    pub fn iter(&self) -> impl Iterator<Item = (IpAddr, &str, IpAddr)> {
        self.by_entity
            .iter()
            .flat_map(|(e, m)| m.iter().map(|(g, a)| (*e, g.as_str(), *a)))
    }

    /// `gateway`'s data addresses.
    pub fn of(&self, gateway: &str) -> impl Iterator<Item = IpAddr> {
        self.by_entity
            .values()
            .filter_map(|m| m.get(gateway).copied())
    }

    pub fn len(&self) -> usize {
        self.by_addr.len()
    }

    /// (entity, gateway) without an address at the last allocation.
    pub fn short(&self) -> usize {
        self.short
    }

    /// Restores one (validated on load).
    pub fn insert(&mut self, entity: IpAddr, gateway: String, addr: IpAddr) {
        self.by_addr.insert(addr, (entity, gateway.clone()));
        self.by_entity
            .entry(entity)
            .or_default()
            .insert(gateway, addr);
    }

    /// Gives every (entity, gateway) without one an address: the lowest
    /// free one of `pool`, in (entity, gateway) order, so that the same
    /// events give the same addresses. Returns whether any was allocated.
    pub fn allocate(&mut self, pool: &IpNet, entities: &[IpAddr], gateways: &[&str]) -> bool {
        let mut missing = Vec::new();
        for &e in entities {
            for &g in gateways {
                if self.get(e, g).is_none() {
                    missing.push((e, g));
                }
            }
        }
        let short_before = self.short;
        self.short = 0;
        if missing.is_empty() {
            return false;
        }
        let skip_network = matches!(pool, IpNet::V6(n) if n.prefix_len() < 127);
        let used = &self.by_addr;
        let mut free = pool.hosts().filter(|a| {
            !(used.contains_key(a)
                || (skip_network && *a == pool.network())
                || crate::enforce::validate_storage_addr(*a).is_err())
        });
        let mut new = Vec::new();
        for (e, g) in missing {
            match free
                .next()
                .filter(|_| self.by_addr.len() + new.len() < MAX_DATA_ADDRESSES)
            {
                Some(a) => new.push((e, g, a)),
                None => self.short += 1,
            }
        }
        drop(free);
        if self.short > 0 && self.short != short_before {
            tracing::error!(
                pool = %pool,
                unserved = self.short,
                "the data pool is too small: pairs of these (entity, gateway) stay where they are"
            );
        }
        let allocated = !new.is_empty();
        for (e, g, a) in new {
            tracing::info!(entity = %e, gateway = g, address = %a, "data address allocated");
            self.insert(e, g.to_owned(), a);
        }
        allocated
    }

    /// Releases a forgotten gateway's addresses; whether it had any.
    pub fn release_gateway(&mut self, gateway: &str) -> bool {
        let mut any = false;
        for m in self.by_entity.values_mut() {
            if let Some(a) = m.remove(gateway) {
                self.by_addr.remove(&a);
                any = true;
            }
        }
        self.by_entity.retain(|_, m| !m.is_empty());
        any
    }
}

/// Where the pair's logins go, by its state: a redirect to the data address
/// of its gateway, a hold while it moves, nothing of its own when unowned.
fn steer(data: &DataAddresses, key: &RouteKey, o: &Ownership) -> Option<Option<IpAddr>> {
    match o {
        Ownership::Owned { gateway } => data.get(key.1, gateway).map(Some),
        Ownership::Holding { .. } | Ownership::Evicting { .. } => Some(None),
        Ownership::Unowned | Ownership::Moving { .. } => None,
    }
}

impl Controller {
    pub(super) fn pair_mode(&self) -> bool {
        self.cfg.mode == crate::proto::Mode::Pair
    }

    /// The entity a counted target address stands for in pair mode: its
    /// own, or the one of the data address.
    pub(super) fn entity_of(&self, target: IpAddr) -> IpAddr {
        self.data
            .owner(&target)
            .map_or(target, |(entity, _)| entity)
    }

    /// Whether `addr` is in the data pool.
    pub(super) fn in_data_pool(&self, addr: &IpAddr) -> bool {
        self.cfg
            .pairs
            .data_pool
            .as_ref()
            .is_some_and(|p| p.contains(addr))
    }

    /// A pair-mode flow: a flow to a data address is its entity's pair,
    /// adopted by the data address's gateway when nobody owns it (a new
    /// host sent there by the portals' default); a flow to an entity's own
    /// address (a login at its portal) only makes the entity known.
    /// Returns whether a pair was adopted.
    pub(super) fn pair_flow(&mut self, host: IpAddr, target: IpAddr, now: Instant) -> bool {
        if let Some((entity, gateway)) = self.data.owner(&target) {
            let gateway = gateway.to_owned();
            let key = (Some(host), entity);
            self.discover(Some(host), entity, now);
            let next = self.generation + 1;
            if self.routes.adopt_pair(&key, &gateway, next) {
                self.bump();
                tracing::info!(%host, %entity, gateway, generation = self.generation, "adopting a pair on the gateway that carries it");
                return true;
            }
        } else if self.managed(target) {
            self.discover(None, target, now);
        }
        false
    }

    /// Data addresses for every (entity, gateway) known; releasing those of
    /// forgotten gateways is [`Controller::forget_data`]. Bumps the
    /// generation when one was allocated.
    pub(super) fn allocate_data(&mut self) {
        let Some(pool) = self.cfg.pairs.data_pool else {
            return;
        };
        let entities: Vec<IpAddr> = self
            .routes
            .keys()
            .filter(|k| k.0.is_none())
            .map(|k| k.1)
            .collect();
        let gateways: Vec<&str> = self.gateways.iter().map(|(n, _)| n.as_str()).collect();
        if self.data.allocate(&pool, &entities, &gateways) {
            self.bump();
        }
    }

    /// A forgotten gateway's data addresses go back to the pool.
    pub(super) fn forget_data(&mut self, gateway: &str) {
        if self.data.release_gateway(gateway) {
            tracing::info!(gateway, "data addresses released");
            self.bump();
        }
    }

    /// Pair moves whose phase the gateways acknowledged go on (one new
    /// generation for all of them).
    pub(super) fn advance_pairs(&mut self, now: Instant) {
        let gws = &self.gateways;
        let min = gws
            .iter()
            .filter(|(_, g)| g.alive)
            .map(|(_, g)| g.applied)
            .min();
        let next = self.generation + 1;
        let applied = |n: &str| gws.get(n).filter(|g| g.alive).map(|g| g.applied);
        let done = self.routes.advance_pairs(applied, min, next, now);
        if done.evicting.is_empty() && done.owned.is_empty() {
            return;
        }
        let g = self.bump();
        for key in &done.evicting {
            if let (Some(h), Some(Ownership::Evicting { from, to, .. })) =
                (key.0, self.routes.get(key).map(|r| &r.ownership))
            {
                tracing::info!(host = %h, entity = %key.1, from, to, generation = g, "every portal holds the pair: its old gateway ends its connections");
            }
        }
        for key in &done.owned {
            if let (Some(h), Some(gw)) = (key.0, self.routes.get(key)) {
                tracing::info!(host = %h, entity = %key.1, gateway = ?gw.ownership.assigned(), generation = g, "pair moved: the portals redirect it");
            }
        }
        self.events.pair_evictions += done.evicting.len() as u64;
    }

    /// The portal routes' sticky rule: each unowned one, or one on a dead
    /// gateway, goes to the alive gateway with the fewest; then, while no
    /// portal moves, one moves from the gateway with the most to the one
    /// with the fewest when their counts differ by more than one. Moves of
    /// a portal are target mode's (break before make). One new generation
    /// for all of it.
    pub(super) fn place_portals(&mut self, now: Instant) {
        let alive: BTreeSet<String> = self
            .gateways
            .iter()
            .filter(|(_, g)| g.alive)
            .map(|(n, _)| n.clone())
            .collect();
        if alive.is_empty() {
            return;
        }
        let mut count: BTreeMap<&str, usize> = alive.iter().map(|n| (n.as_str(), 0)).collect();
        let mut place = Vec::new();
        let mut in_flight = false;
        for (key, r) in self.routes.iter().filter(|(k, _)| k.0.is_none()) {
            in_flight |= r.ownership.in_flight();
            match r.ownership.assigned() {
                Some(g) if alive.contains(g) => *count.get_mut(g).expect("alive") += 1,
                _ => place.push(*key),
            }
        }
        let fewest = |count: &BTreeMap<&str, usize>| {
            count
                .iter()
                .min_by_key(|(n, c)| (**c, **n))
                .map(|(n, _)| (*n).to_owned())
                .expect("an alive gateway")
        };
        let next = self.generation + 1;
        let mut changed = false;
        for key in place {
            let to = fewest(&count);
            self.routes
                .assign(&key, &to, |n| alive.contains(n), true, next, now);
            *count.get_mut(to.as_str()).expect("alive") += 1;
            changed = true;
            tracing::info!(entity = %key.1, gateway = to, "portal placed");
        }
        if !in_flight && !changed {
            let most = count
                .iter()
                .max_by_key(|(n, c)| (**c, std::cmp::Reverse(**n)))
                .map(|(n, c)| ((*n).to_owned(), *c));
            let to = fewest(&count);
            if let Some((from, n)) = most
                && n > count[to.as_str()] + 1
            {
                let key = self
                    .routes
                    .iter()
                    .filter(|(k, r)| k.0.is_none() && r.ownership.assigned() == Some(from.as_str()))
                    .map(|(k, _)| *k)
                    .last();
                if let Some(key) = key {
                    self.routes
                        .assign(&key, &to, |n| alive.contains(n), true, next, now);
                    changed = true;
                    tracing::info!(entity = %key.1, from, to, "portal moved to even out the portals");
                }
            }
        }
        if changed {
            self.bump();
        }
    }

    /// Pair routes the optimiser cannot place anywhere alive: none of the
    /// alive gateways has a data address for their entity.
    pub(super) fn placeable(&self, key: &RouteKey) -> bool {
        self.data.gateways(key.1).any(|g| self.gateways.alive(g))
    }

    /// The gateways a pair may go to: those with a data address for its
    /// entity (`None`: all of them).
    pub(super) fn pair_allowed(&self, key: &RouteKey) -> Option<Vec<String>> {
        let with: Vec<String> = self.data.gateways(key.1).map(str::to_owned).collect();
        (with.len() < self.gateways.len()).then_some(with)
    }

    /// `gateway`'s pair-mode share: addresses (its portals and data
    /// addresses) and the pair map.
    pub(super) fn pair_share(&self, gateway: &str) -> (Vec<IpAddr>, PairShare) {
        let mut addresses = self.routes.owned_by(gateway);
        addresses.extend(self.data.of(gateway));
        addresses.sort_unstable();
        addresses.dedup();
        let mut entities: BTreeMap<IpAddr, PairEntity> = BTreeMap::new();
        let mut evict = Vec::new();
        for (key, r) in self.routes.iter() {
            match key.0 {
                None => {
                    let default = r.ownership.assigned().and_then(|g| self.data.get(key.1, g));
                    entities.insert(
                        key.1,
                        PairEntity {
                            address: key.1,
                            targets: self
                                .cfg
                                .pairs
                                .target_names
                                .get(&key.1)
                                .cloned()
                                .unwrap_or_default(),
                            default,
                            data_address: self.data.get(key.1, gateway),
                            hosts: Vec::new(),
                        },
                    );
                }
                Some(host) => {
                    if let Ownership::Evicting { from, .. } = &r.ownership
                        && from == gateway
                        && let Some(d) = self.data.get(key.1, gateway)
                    {
                        evict.push(Eviction {
                            host,
                            data_address: d,
                        });
                    }
                    if let Some(redirect) = steer(&self.data, key, &r.ownership)
                        && let Some(e) = entities.get_mut(&key.1)
                    {
                        e.hosts.push(HostSteer { host, redirect });
                    }
                }
            }
        }
        evict.sort();
        (
            addresses,
            PairShare {
                data_port: self.cfg.pairs.data_port,
                entities: entities.into_values().collect(),
                evict,
            },
        )
    }

    /// Status: every data address.
    pub(super) fn data_addresses(&self) -> Vec<DataAddress> {
        self.data
            .iter()
            .map(|(target, gateway, address)| DataAddress {
                target,
                gateway: gateway.to_owned(),
                address,
            })
            .collect()
    }

    /// (entity, gateway) the data pool cannot serve, and the addresses
    /// allocated (for metrics).
    pub fn data_pool_use(&self) -> (usize, usize) {
        (self.data.short(), self.data.len())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn allocation_is_lowest_free_first_and_deterministic() {
        let pool: IpNet = "198.18.2.0/29".parse().unwrap();
        let (e1, e2) = (ip("198.18.1.1"), ip("198.18.1.2"));
        let mut d = DataAddresses::default();
        assert!(d.allocate(&pool, &[e1, e2], &["gw1", "gw2"]));
        assert_eq!(
            d.get(e1, "gw1"),
            Some(ip("198.18.2.1")),
            "no network address"
        );
        assert_eq!(d.get(e1, "gw2"), Some(ip("198.18.2.2")));
        assert_eq!(d.get(e2, "gw1"), Some(ip("198.18.2.3")));
        assert_eq!(d.get(e2, "gw2"), Some(ip("198.18.2.4")));
        assert_eq!(d.owner(&ip("198.18.2.3")), Some((e2, "gw1")));
        assert!(
            !d.allocate(&pool, &[e1, e2], &["gw1", "gw2"]),
            "nothing new"
        );
        // A third gateway: two addresses left (.5, .6; .7 is the broadcast).
        assert!(d.allocate(&pool, &[e1, e2], &["gw1", "gw2", "gw3"]));
        assert_eq!(d.get(e1, "gw3"), Some(ip("198.18.2.5")));
        assert_eq!(d.get(e2, "gw3"), Some(ip("198.18.2.6")));
        assert_eq!(d.short(), 0);
        // A fourth: the pool is exhausted, which is told, and nothing moves.
        assert!(!d.allocate(&pool, &[e1, e2], &["gw1", "gw2", "gw3", "gw4"]));
        assert_eq!(d.short(), 2);
        assert_eq!(d.gateways(e1).collect::<Vec<_>>(), ["gw1", "gw2", "gw3"]);
        // A forgotten gateway's addresses are reused, lowest first.
        assert!(d.release_gateway("gw2"));
        assert!(!d.release_gateway("gw2"));
        assert!(d.allocate(&pool, &[e1, e2], &["gw1", "gw3", "gw4"]));
        assert_eq!(d.get(e1, "gw4"), Some(ip("198.18.2.2")));
        assert_eq!(d.get(e2, "gw4"), Some(ip("198.18.2.4")));
        assert_eq!((d.short(), d.len()), (0, 6));
        // The same events give the same addresses.
        let mut again = DataAddresses::default();
        again.allocate(&pool, &[e1, e2], &["gw1", "gw2"]);
        again.allocate(&pool, &[e1, e2], &["gw1", "gw2", "gw3"]);
        again.allocate(&pool, &[e1, e2], &["gw1", "gw2", "gw3", "gw4"]);
        again.release_gateway("gw2");
        again.allocate(&pool, &[e1, e2], &["gw1", "gw3", "gw4"]);
        assert_eq!(
            again.iter().collect::<Vec<_>>(),
            d.iter().collect::<Vec<_>>()
        );
    }

    #[test]
    fn ipv6_pools_skip_the_subnet_router_anycast_address() {
        let pool: IpNet = "2001:2:0:2::/126".parse().unwrap();
        let mut d = DataAddresses::default();
        d.allocate(&pool, &[ip("2001:2:0:1::1")], &["gw1", "gw2", "gw3", "gw4"]);
        let got: Vec<IpAddr> = d.iter().map(|x| x.2).collect();
        assert_eq!(
            got,
            [
                ip("2001:2:0:2::1"),
                ip("2001:2:0:2::2"),
                ip("2001:2:0:2::3")
            ]
        );
        assert_eq!(d.short(), 1);
    }

    #[test]
    fn settings_are_checked() {
        let ok = PairSettings {
            data_pool: Some("198.18.2.0/24".parse().unwrap()),
            ..PairSettings::default()
        };
        let setting = |r: Result<(), ConfigError>| match r.unwrap_err() {
            ConfigError::Invalid { setting, message } => format!("{setting} {message}"),
            e => panic!("{e}"),
        };
        assert_eq!(ok.validate(true, &[ip("198.18.1.1")]), Ok(()));
        let e = setting(PairSettings::default().validate(true, &[]));
        assert!(e.starts_with("data_pool"), "{e}");
        assert_eq!(PairSettings::default().validate(false, &[]), Ok(()));
        let e = setting(ok.validate(true, &[ip("198.18.2.9")]));
        assert!(e.contains("198.18.2.9"), "{e}");
        for bad in ["127.0.0.0/8", "224.0.0.0/24", "169.254.0.0/16"] {
            let s = PairSettings {
                data_pool: Some(bad.parse().unwrap()),
                ..PairSettings::default()
            };
            assert!(s.validate(true, &[]).is_err(), "{bad}");
        }
        for port in [0, 3260] {
            let s = PairSettings {
                data_port: port,
                ..ok.clone()
            };
            assert!(setting(s.validate(true, &[])).starts_with("data_port"));
        }
        let s = PairSettings {
            target_names: [(ip("198.18.1.1"), vec!["iqn.x y".to_owned()])].into(),
            ..ok.clone()
        };
        assert!(setting(s.validate(true, &[])).contains("iqn.x y"));
    }
}
