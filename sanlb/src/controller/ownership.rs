//! The break-before-make state machine of the routes: who owns each one,
//! which moves are in flight, and every transition between them. Each rule
//! lives here once; the controller decides *when* (reports, leases, adopted
//! maps) and stamps each change with a generation.
//!
//! ```text
//!            adopt (gateway already holds it) / assign
//!  Unowned ───────────────────────────────────────────▶ Owned{A}
//!                                                           │ assign to B, A alive
//!                                                           ▼
//!   Owned{B} ◀── A released (applied ≥ release, ──── Moving{A→B, release}
//!            ◀── or A dead: bypass)                         │ A alive, no release
//!   Owned{A} ◀───────────────────────── within a lease: abandon
//! ```
//!
//! A moving route is in nobody's share, so no address is in two gateways'
//! applied sets at once.
//!
//! Pair mode has two kinds of routes. A **portal route** `(None, E)` is an
//! entity's address, where its redirecting portal runs: it moves like an
//! address above. A **pair route** `(Some(h), E)` is where host h's
//! sessions to E run, and moves in three phases, each a generation:
//!
//! ```text
//!  Unowned ── adopt (its flows use g's data address) / assign ──▶ Owned{A}
//!                                                                   │ assign to B, A alive
//!                                                                   ▼
//!                       every alive gateway applied `hold` ── Holding{A→B, hold}
//!                       (A dead: straight to Owned{B})               │ portals hold h's logins
//!                                                                   ▼
//!   Owned{B} ◀── A applied `evict` (A ended h's ─────────── Evicting{A→B, evict}
//!            ◀── connections), or A dead: bypass                     │ no acknowledgement
//!   Owned{A} ◀───────────────────────────────────── within a lease: abandon
//! ```
//!
//! So the portals stop sending h to A before A ends h's connections, and
//! send it to B only after: a pair is never served by sessions it started
//! on two gateways at once.
//!
//! Every function takes the generation `g` to stamp its changes with; the
//! caller makes it the controller's generation only if something changed.

use std::{
    collections::{BTreeMap, BTreeSet},
    net::IpAddr,
    time::Instant,
};

use crate::proto::Ownership;

/// (host in pair mode, target).
pub type RouteKey = (Option<IpAddr>, IpAddr);

/// One route's place in the protocol.
#[derive(Debug, Clone, PartialEq)]
pub struct RouteState {
    /// Who owns it.
    pub ownership: Ownership,
    /// Generation of its last change.
    pub changed: u64,
    /// When the current move started (for abandoning it).
    pub since: Instant,
}

/// The two ends of a move in flight.
fn ends(o: &Ownership) -> Option<(&str, &str)> {
    match o {
        Ownership::Moving { from, to, .. }
        | Ownership::Holding { from, to, .. }
        | Ownership::Evicting { from, to, .. } => Some((from, to)),
        Ownership::Unowned | Ownership::Owned { .. } => None,
    }
}

impl RouteState {
    fn set(&mut self, ownership: Ownership, g: u64) {
        self.ownership = ownership;
        self.changed = g;
    }

    /// Ends a move at its new owner.
    fn complete_move(&mut self, g: u64) {
        if let Some((_, to)) = ends(&self.ownership) {
            let gateway = to.to_owned();
            self.set(Ownership::Owned { gateway }, g);
        }
    }

    /// Ends a move back at its old owner.
    fn abandon_move(&mut self, g: u64) {
        if let Some((from, _)) = ends(&self.ownership) {
            let gateway = from.to_owned();
            self.set(Ownership::Owned { gateway }, g);
        }
    }
}

/// What [`Routes::expire_moves`] did.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Expired {
    /// Moves whose old owner was dead, completed at once.
    pub bypassed: Vec<RouteKey>,
    /// Moves whose alive old owner did not release within a lease, undone.
    pub abandoned: Vec<RouteKey>,
}

/// What [`Routes::advance_pairs`] did.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Advanced {
    /// Pairs every portal holds now: their old gateway ends their
    /// connections.
    pub evicting: Vec<RouteKey>,
    /// Pairs whose move is done: the portals send them to the new gateway.
    pub owned: Vec<RouteKey>,
}

/// Every route and its ownership.
#[derive(Debug, Default, Clone)]
pub struct Routes {
    map: BTreeMap<RouteKey, RouteState>,
}

impl Routes {
    /// Restores a saved route as it was.
    pub fn insert(&mut self, key: RouteKey, state: RouteState) {
        self.map.insert(key, state);
    }

    /// A new route, unowned; false when it was known.
    pub fn discover(&mut self, key: RouteKey, g: u64, now: Instant) -> bool {
        if self.map.contains_key(&key) {
            return false;
        }
        self.map.insert(
            key,
            RouteState {
                ownership: Ownership::Unowned,
                changed: g,
                since: now,
            },
        );
        true
    }

    /// Whether `key` is a route.
    pub fn contains(&self, key: &RouteKey) -> bool {
        self.map.contains_key(key)
    }

    /// Whether `gateway` owns a route or is either end of a move.
    pub fn involves(&self, gateway: &str) -> bool {
        self.map.values().any(|r| match &r.ownership {
            Ownership::Unowned => false,
            Ownership::Owned { gateway: g } => g == gateway,
            o => ends(o).is_some_and(|(from, to)| from == gateway || to == gateway),
        })
    }

    /// One route's state.
    pub fn get(&self, key: &RouteKey) -> Option<&RouteState> {
        self.map.get(key)
    }

    /// Number of routes.
    pub fn len(&self) -> usize {
        self.map.len()
    }

    /// No route at all.
    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }

    /// Routes in key order.
    pub fn iter(&self) -> impl Iterator<Item = (&RouteKey, &RouteState)> {
        self.map.iter()
    }

    /// Keys in order.
    pub fn keys(&self) -> impl Iterator<Item = &RouteKey> {
        self.map.keys()
    }

    /// Routes moving now (addresses and pairs).
    pub fn moves_in_flight(&self) -> usize {
        self.map
            .values()
            .filter(|r| r.ownership.in_flight())
            .count()
    }

    /// Storage addresses `gateway` owns (its share; in pair mode the
    /// entities whose portal it runs). Moving ones are in nobody's.
    pub fn owned_by(&self, gateway: &str) -> Vec<IpAddr> {
        self.map
            .iter()
            .filter(|(k, r)| {
                k.0.is_none()
                    && matches!(&r.ownership, Ownership::Owned { gateway: o } if o == gateway)
            })
            .map(|(k, _)| k.1)
            .collect()
    }

    /// After `gateway` reported having applied generation `applied` and
    /// holding `holds`: moves it released complete (they go to their new
    /// owner), and unowned routes whose address it holds become its own.
    /// Addresses only (pair routes are not addresses). Returns (released,
    /// adopted).
    pub fn acknowledge(
        &mut self,
        gateway: &str,
        applied: u64,
        holds: &BTreeSet<IpAddr>,
        g: u64,
    ) -> (Vec<RouteKey>, Vec<RouteKey>) {
        let (mut released, mut adopted) = (Vec::new(), Vec::new());
        for (key, r) in self.map.iter_mut().filter(|(k, _)| k.0.is_none()) {
            match &r.ownership {
                Ownership::Moving { from, release, .. }
                    if from == gateway && applied >= *release && !holds.contains(&key.1) =>
                {
                    r.complete_move(g);
                    released.push(*key);
                }
                Ownership::Unowned if holds.contains(&key.1) => {
                    r.ownership = Ownership::Owned {
                        gateway: gateway.to_owned(),
                    };
                    r.changed = g;
                    adopted.push(*key);
                }
                _ => {}
            }
        }
        (released, adopted)
    }

    /// Lease checks of the moves in flight: a dead old owner is bypassed
    /// (when the new one is alive), an alive one that did not release
    /// within `lease` keeps the route. A pair holding longer than a lease
    /// (some gateway did not apply the hold) goes back to its alive old
    /// gateway, or on to the new one when the old one is dead.
    pub fn expire_moves(
        &mut self,
        alive: impl Fn(&str) -> bool,
        now: Instant,
        lease: std::time::Duration,
        g: u64,
    ) -> Expired {
        let mut out = Expired::default();
        for (key, r) in &mut self.map {
            let Some((from, to)) = ends(&r.ownership) else {
                continue;
            };
            let late = now.saturating_duration_since(r.since) >= lease;
            let holding = matches!(r.ownership, Ownership::Holding { .. });
            if !alive(from) && alive(to) && (!holding || late) {
                r.complete_move(g);
                out.bypassed.push(*key);
            } else if alive(from) && late {
                r.abandon_move(g);
                out.abandoned.push(*key);
            }
        }
        out
    }

    /// Pair mode: an unowned pair whose connections use `gateway`'s data
    /// address becomes its own. Whether it did.
    pub fn adopt_pair(&mut self, key: &RouteKey, gateway: &str, g: u64) -> bool {
        match self.map.get_mut(key) {
            Some(r) if key.0.is_some() && r.ownership == Ownership::Unowned => {
                let gateway = gateway.to_owned();
                r.set(Ownership::Owned { gateway }, g);
                true
            }
            _ => false,
        }
    }

    /// Pair mode: moves whose phase is done go on. Holding → Evicting once
    /// every alive gateway applied the hold (`min_applied`: the lowest
    /// generation the alive gateways applied, `None` without any), straight
    /// to Owned when the old gateway is dead (no connection to end there);
    /// Evicting → Owned once the old gateway applied the eviction.
    pub fn advance_pairs(
        &mut self,
        applied: impl Fn(&str) -> Option<u64>,
        min_applied: Option<u64>,
        g: u64,
        now: Instant,
    ) -> Advanced {
        let mut out = Advanced::default();
        for (key, r) in &mut self.map {
            match &r.ownership {
                Ownership::Holding { from, to, hold } if min_applied >= Some(*hold) => {
                    if applied(from).is_some() {
                        let (from, to) = (from.clone(), to.clone());
                        r.set(Ownership::Evicting { from, to, evict: g }, g);
                        r.since = now;
                        out.evicting.push(*key);
                    } else {
                        r.complete_move(g);
                        out.owned.push(*key);
                    }
                }
                Ownership::Evicting { from, evict, .. }
                    if applied(from).is_some_and(|a| a >= *evict) =>
                {
                    r.complete_move(g);
                    out.owned.push(*key);
                }
                _ => {}
            }
        }
        out
    }

    /// Pair mode: gives pair `key` to `to` (an adopted map). A pair on an
    /// alive gateway starts a move (Holding); one on a dead gateway, or on
    /// none, changes hands at once. A move in flight is re-aimed in its
    /// phase, or ends at once back at its old gateway. Returns whether the
    /// pair changed gateway (a move, not a first placement).
    pub fn assign_pair(
        &mut self,
        key: &RouteKey,
        to: &str,
        alive: impl Fn(&str) -> bool,
        g: u64,
        now: Instant,
    ) -> bool {
        let Some(r) = self.map.get_mut(key) else {
            return false;
        };
        let owned = |gateway: &str| Ownership::Owned {
            gateway: gateway.to_owned(),
        };
        let next = match &r.ownership {
            Ownership::Owned { gateway } if gateway == to => return false,
            Ownership::Holding { to: t, .. } | Ownership::Evicting { to: t, .. } if t == to => {
                return false;
            }
            // Back to the old gateway: its session runs on (holding), or
            // the host reconnects to it (evicting).
            Ownership::Holding { from, .. } | Ownership::Evicting { from, .. } if from == to => {
                owned(to)
            }
            Ownership::Holding { from, hold, .. } => Ownership::Holding {
                from: from.clone(),
                to: to.to_owned(),
                hold: *hold,
            },
            Ownership::Evicting { from, evict, .. } => Ownership::Evicting {
                from: from.clone(),
                to: to.to_owned(),
                evict: *evict,
            },
            Ownership::Owned { gateway: from } if alive(from) => Ownership::Holding {
                from: from.clone(),
                to: to.to_owned(),
                hold: g,
            },
            Ownership::Unowned | Ownership::Owned { .. } | Ownership::Moving { .. } => owned(to),
        };
        if !r.ownership.in_flight() {
            r.since = now;
        }
        let moved = r.ownership != Ownership::Unowned;
        r.set(next, g);
        moved
    }

    /// Gives `key` to `to` (an adopted map). An owned route whose owner is
    /// alive starts a move when `break_first` (address ownership: the old
    /// owner must release first); otherwise it changes hands at once.
    /// Returns whether the route changed gateway (a move, not a first
    /// placement).
    pub fn assign(
        &mut self,
        key: &RouteKey,
        to: &str,
        alive: impl Fn(&str) -> bool,
        break_first: bool,
        g: u64,
        now: Instant,
    ) -> bool {
        let Some(r) = self.map.get_mut(key) else {
            return false;
        };
        let next = match &r.ownership {
            Ownership::Owned { gateway } if gateway == to => return false,
            Ownership::Moving { to: t, .. } if t == to => return false,
            // Back to the old owner while it still holds the address.
            Ownership::Moving { from, .. } if from == to => Ownership::Owned {
                gateway: to.to_owned(),
            },
            Ownership::Owned { gateway: from } | Ownership::Moving { from, .. }
                if break_first && alive(from) =>
            {
                let release = match &r.ownership {
                    Ownership::Moving { release, .. } => *release,
                    _ => g,
                };
                Ownership::Moving {
                    from: from.clone(),
                    to: to.to_owned(),
                    release,
                }
            }
            _ => Ownership::Owned {
                gateway: to.to_owned(),
            },
        };
        if !matches!(r.ownership, Ownership::Moving { .. }) {
            r.since = now;
        }
        let moved = !matches!(r.ownership, Ownership::Unowned);
        r.ownership = next;
        r.changed = g;
        moved
    }

    /// Some route is on no gateway, or on one `alive` says is dead.
    pub fn stranded(&self, alive: impl Fn(&str) -> bool) -> bool {
        self.map.values().any(|r| match r.ownership.assigned() {
            None => true,
            Some(g) => !alive(g),
        })
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    const LEASE: Duration = Duration::from_secs(3);

    fn key(i: u8) -> RouteKey {
        (None, IpAddr::from([198, 18, 1, i]))
    }

    fn owned(g: &str) -> Ownership {
        Ownership::Owned { gateway: g.into() }
    }

    fn moving(from: &str, to: &str, release: u64) -> Ownership {
        Ownership::Moving {
            from: from.into(),
            to: to.into(),
            release,
        }
    }

    fn state(r: &Routes, i: u8) -> (Ownership, u64) {
        let s = &r.map[&key(i)];
        (s.ownership.clone(), s.changed)
    }

    fn holds(addrs: &[u8]) -> BTreeSet<IpAddr> {
        addrs.iter().map(|&i| key(i).1).collect()
    }

    /// One route owned by gw1 at generation 1 (explicit clock `t0`).
    fn one_on_gw1(t0: Instant) -> Routes {
        let mut r = Routes::default();
        assert!(r.discover(key(1), 1, t0));
        assert!(!r.discover(key(1), 2, t0), "known routes stay as they are");
        assert!(!r.assign(&key(1), "gw1", |_| true, true, 1, t0));
        assert_eq!(state(&r, 1), (owned("gw1"), 1));
        r
    }

    #[test]
    fn unowned_is_adopted_by_the_gateway_that_holds_it() {
        let t0 = Instant::now();
        let mut r = Routes::default();
        r.discover(key(1), 0, t0);
        r.discover(key(2), 0, t0);
        let (released, adopted) = r.acknowledge("gw2", 0, &holds(&[2]), 5);
        assert!(released.is_empty());
        assert_eq!(adopted, vec![key(2)]);
        assert_eq!(state(&r, 2), (owned("gw2"), 5));
        assert_eq!(state(&r, 1), (Ownership::Unowned, 0));
        assert_eq!(r.owned_by("gw2"), vec![key(2).1]);
        assert!(r.stranded(|_| true), "route 1 is on no gateway");
    }

    #[test]
    fn a_move_waits_for_the_release_then_completes() {
        let t0 = Instant::now();
        let mut r = one_on_gw1(t0);
        assert!(r.assign(&key(1), "gw2", |_| true, true, 2, t0));
        assert_eq!(state(&r, 1), (moving("gw1", "gw2", 2), 2));
        assert!(r.owned_by("gw1").is_empty() && r.owned_by("gw2").is_empty());
        assert_eq!(r.moves_in_flight(), 1);
        // An older generation applied, or the address still held: no release.
        assert_eq!(r.acknowledge("gw1", 1, &holds(&[]), 3).0, vec![]);
        assert_eq!(r.acknowledge("gw1", 2, &holds(&[1]), 3).0, vec![]);
        // Another gateway's acknowledgement does not count.
        assert_eq!(r.acknowledge("gw3", 9, &holds(&[]), 3).0, vec![]);
        let (released, _) = r.acknowledge("gw1", 2, &holds(&[]), 3);
        assert_eq!(released, vec![key(1)]);
        assert_eq!(state(&r, 1), (owned("gw2"), 3));
        assert_eq!(r.moves_in_flight(), 0);
    }

    #[test]
    fn a_dead_old_owner_is_bypassed() {
        let t0 = Instant::now();
        let mut r = one_on_gw1(t0);
        r.assign(&key(1), "gw2", |_| true, true, 2, t0);
        let e = r.expire_moves(|g| g != "gw1", t0, LEASE, 3);
        assert_eq!(e.bypassed, vec![key(1)]);
        assert_eq!(state(&r, 1), (owned("gw2"), 3));
    }

    #[test]
    fn both_dead_waits() {
        let t0 = Instant::now();
        let mut r = one_on_gw1(t0);
        r.assign(&key(1), "gw2", |_| true, true, 2, t0);
        let e = r.expire_moves(|_| false, t0 + LEASE * 2, LEASE, 3);
        assert_eq!(e, Expired::default());
        assert_eq!(state(&r, 1), (moving("gw1", "gw2", 2), 2));
    }

    #[test]
    fn an_alive_owner_that_does_not_release_keeps_the_route_after_a_lease() {
        let t0 = Instant::now();
        let mut r = one_on_gw1(t0);
        r.assign(&key(1), "gw2", |_| true, true, 2, t0);
        let e = r.expire_moves(|_| true, t0 + LEASE - Duration::from_millis(1), LEASE, 3);
        assert_eq!(e, Expired::default(), "not yet");
        let e = r.expire_moves(|_| true, t0 + LEASE, LEASE, 3);
        assert_eq!(e.abandoned, vec![key(1)]);
        assert_eq!(state(&r, 1), (owned("gw1"), 3));
    }

    #[test]
    fn reassigning_a_move() {
        let t0 = Instant::now();
        let mut r = one_on_gw1(t0);
        r.assign(&key(1), "gw2", |_| true, true, 2, t0);
        // Same target: nothing changes.
        assert!(!r.assign(&key(1), "gw2", |_| true, true, 3, t0));
        assert_eq!(state(&r, 1), (moving("gw1", "gw2", 2), 2));
        // Elsewhere: still withheld from gw1 since generation 2, and the
        // lease clock keeps running from the first move.
        let later = t0 + Duration::from_secs(1);
        assert!(r.assign(&key(1), "gw3", |_| true, true, 3, later));
        assert_eq!(state(&r, 1), (moving("gw1", "gw3", 2), 3));
        assert_eq!(r.map[&key(1)].since, t0);
        // Back to the old owner, which still holds it: owned at once.
        assert!(r.assign(&key(1), "gw1", |_| true, true, 4, later));
        assert_eq!(state(&r, 1), (owned("gw1"), 4));
    }

    #[test]
    fn no_release_needed_from_a_dead_owner_or_without_address_ownership() {
        let t0 = Instant::now();
        let mut r = one_on_gw1(t0);
        assert!(r.assign(&key(1), "gw2", |g| g != "gw1", true, 2, t0));
        assert_eq!(state(&r, 1), (owned("gw2"), 2));
        assert!(r.assign(&key(1), "gw3", |_| true, false, 3, t0));
        assert_eq!(state(&r, 1), (owned("gw3"), 3));
        assert!(!r.stranded(|_| true));
        assert!(r.stranded(|g| g != "gw3"));
    }

    const H: IpAddr = IpAddr::V4(std::net::Ipv4Addr::new(198, 18, 0, 101));

    fn pair(i: u8) -> RouteKey {
        (Some(H), key(i).1)
    }

    fn holding(from: &str, to: &str, hold: u64) -> Ownership {
        Ownership::Holding {
            from: from.into(),
            to: to.into(),
            hold,
        }
    }

    fn evicting(from: &str, to: &str, evict: u64) -> Ownership {
        Ownership::Evicting {
            from: from.into(),
            to: to.into(),
            evict,
        }
    }

    fn pair_state(r: &Routes, i: u8) -> (Ownership, u64) {
        let s = &r.map[&pair(i)];
        (s.ownership.clone(), s.changed)
    }

    /// Pair 1 owned by gw1 at generation 1, and its portal route.
    fn pair_on_gw1(t0: Instant) -> Routes {
        let mut r = Routes::default();
        r.discover(key(1), 1, t0);
        assert!(r.discover(pair(1), 1, t0));
        assert!(!r.assign_pair(&pair(1), "gw1", |_| true, 1, t0));
        assert_eq!(pair_state(&r, 1), (owned("gw1"), 1));
        r
    }

    /// `applied` of three alive gateways, `None` for the dead ones.
    fn gateways(applied: [(&'static str, Option<u64>); 3]) -> impl Fn(&str) -> Option<u64> {
        move |g| applied.iter().find(|(n, _)| *n == g).and_then(|(_, a)| *a)
    }

    #[test]
    fn a_pair_move_holds_then_evicts_then_redirects() {
        let t0 = Instant::now();
        let mut r = pair_on_gw1(t0);
        assert!(r.assign_pair(&pair(1), "gw2", |_| true, 2, t0));
        assert_eq!(pair_state(&r, 1), (holding("gw1", "gw2", 2), 2));
        assert_eq!(r.moves_in_flight(), 1);
        assert!(r.involves("gw1") && r.involves("gw2") && !r.involves("gw3"));
        // Not every alive gateway applied the hold yet (gw3 is behind).
        let some = gateways([("gw1", Some(2)), ("gw2", Some(2)), ("gw3", Some(1))]);
        assert_eq!(r.advance_pairs(&some, Some(1), 3, t0), Advanced::default());
        assert_eq!(pair_state(&r, 1), (holding("gw1", "gw2", 2), 2));
        // All did: gw1 ends the pair's connections, the portals still hold.
        let later = t0 + Duration::from_secs(1);
        let all = gateways([("gw1", Some(2)), ("gw2", Some(2)), ("gw3", Some(2))]);
        let a = r.advance_pairs(&all, Some(2), 3, later);
        assert_eq!((a.evicting, a.owned), (vec![pair(1)], vec![]));
        assert_eq!(pair_state(&r, 1), (evicting("gw1", "gw2", 3), 3));
        assert_eq!(r.map[&pair(1)].since, later, "each phase has its lease");
        // Others applying it, or gw1 an older generation, do not count.
        let others = gateways([("gw1", Some(2)), ("gw2", Some(9)), ("gw3", Some(9))]);
        assert_eq!(
            r.advance_pairs(&others, Some(2), 4, later),
            Advanced::default()
        );
        // gw1 applied the eviction (it acknowledges once it ended them).
        let done = gateways([("gw1", Some(3)), ("gw2", Some(2)), ("gw3", Some(2))]);
        let a = r.advance_pairs(&done, Some(2), 4, later);
        assert_eq!((a.evicting, a.owned), (vec![], vec![pair(1)]));
        assert_eq!(pair_state(&r, 1), (owned("gw2"), 4));
        assert_eq!(r.moves_in_flight(), 0);
        // The portal route is untouched throughout.
        assert_eq!(state(&r, 1), (Ownership::Unowned, 1));
    }

    #[test]
    fn a_pair_held_from_a_dead_gateway_skips_the_eviction() {
        let t0 = Instant::now();
        let mut r = pair_on_gw1(t0);
        r.assign_pair(&pair(1), "gw2", |_| true, 2, t0);
        let gw1_dead = gateways([("gw1", None), ("gw2", Some(2)), ("gw3", Some(2))]);
        let a = r.advance_pairs(&gw1_dead, Some(2), 3, t0);
        assert_eq!((a.evicting, a.owned), (vec![], vec![pair(1)]));
        assert_eq!(pair_state(&r, 1), (owned("gw2"), 3));
    }

    #[test]
    fn a_pair_on_a_dead_gateway_moves_at_once() {
        let t0 = Instant::now();
        let mut r = pair_on_gw1(t0);
        assert!(r.assign_pair(&pair(1), "gw2", |g| g != "gw1", 2, t0));
        assert_eq!(pair_state(&r, 1), (owned("gw2"), 2));
        assert_eq!(r.moves_in_flight(), 0);
    }

    #[test]
    fn an_evicting_pair_whose_old_gateway_dies_is_bypassed() {
        let t0 = Instant::now();
        let mut r = pair_on_gw1(t0);
        r.assign_pair(&pair(1), "gw2", |_| true, 2, t0);
        let all = gateways([("gw1", Some(2)), ("gw2", Some(2)), ("gw3", Some(2))]);
        r.advance_pairs(&all, Some(2), 3, t0);
        let e = r.expire_moves(|g| g != "gw1", t0, LEASE, 4);
        assert_eq!(e.bypassed, vec![pair(1)]);
        assert_eq!(pair_state(&r, 1), (owned("gw2"), 4));
    }

    #[test]
    fn a_hold_from_a_dead_gateway_waits_for_the_portals_or_a_lease() {
        let t0 = Instant::now();
        let mut r = pair_on_gw1(t0);
        r.assign_pair(&pair(1), "gw2", |_| true, 2, t0);
        let e = r.expire_moves(|g| g != "gw1", t0 + LEASE / 2, LEASE, 3);
        assert_eq!(
            e,
            Expired::default(),
            "the portals may still redirect to gw1"
        );
        let e = r.expire_moves(|g| g != "gw1", t0 + LEASE, LEASE, 3);
        assert_eq!(e.bypassed, vec![pair(1)]);
        assert_eq!(pair_state(&r, 1), (owned("gw2"), 3));
    }

    #[test]
    fn pair_moves_not_acknowledged_within_a_lease_are_abandoned() {
        let t0 = Instant::now();
        // Holding: a gateway never applied the hold.
        let mut r = pair_on_gw1(t0);
        r.assign_pair(&pair(1), "gw2", |_| true, 2, t0);
        let e = r.expire_moves(|_| true, t0 + LEASE - Duration::from_millis(1), LEASE, 3);
        assert_eq!(e, Expired::default(), "not yet");
        let e = r.expire_moves(|_| true, t0 + LEASE, LEASE, 3);
        assert_eq!(e.abandoned, vec![pair(1)]);
        assert_eq!(pair_state(&r, 1), (owned("gw1"), 3));
        // Evicting: gw1 does not acknowledge the eviction; its lease runs
        // from the phase's start.
        let mut r = pair_on_gw1(t0);
        r.assign_pair(&pair(1), "gw2", |_| true, 2, t0);
        let t1 = t0 + LEASE / 2;
        let all = gateways([("gw1", Some(2)), ("gw2", Some(2)), ("gw3", Some(2))]);
        r.advance_pairs(&all, Some(2), 3, t1);
        let e = r.expire_moves(|_| true, t0 + LEASE, LEASE, 4);
        assert_eq!(e, Expired::default(), "a lease from the eviction's start");
        let e = r.expire_moves(|_| true, t1 + LEASE, LEASE, 4);
        assert_eq!(e.abandoned, vec![pair(1)]);
        assert_eq!(pair_state(&r, 1), (owned("gw1"), 4));
    }

    #[test]
    fn reaiming_a_pair_move() {
        let t0 = Instant::now();
        let mut r = pair_on_gw1(t0);
        r.assign_pair(&pair(1), "gw2", |_| true, 2, t0);
        assert!(!r.assign_pair(&pair(1), "gw2", |_| true, 3, t0), "same aim");
        // Elsewhere while holding: still held since generation 2.
        assert!(r.assign_pair(&pair(1), "gw3", |_| true, 3, t0));
        assert_eq!(pair_state(&r, 1), (holding("gw1", "gw3", 2), 3));
        // Back to gw1, whose session was never ended: owned at once.
        assert!(r.assign_pair(&pair(1), "gw1", |_| true, 4, t0));
        assert_eq!(pair_state(&r, 1), (owned("gw1"), 4));
        // Elsewhere while evicting: the eviction goes on.
        r.assign_pair(&pair(1), "gw2", |_| true, 5, t0);
        let all = gateways([("gw1", Some(5)), ("gw2", Some(5)), ("gw3", Some(5))]);
        r.advance_pairs(&all, Some(5), 6, t0);
        assert!(r.assign_pair(&pair(1), "gw3", |_| true, 7, t0));
        assert_eq!(pair_state(&r, 1), (evicting("gw1", "gw3", 6), 7));
        // Back to gw1 while evicting: the host reconnects to it.
        assert!(r.assign_pair(&pair(1), "gw1", |_| true, 8, t0));
        assert_eq!(pair_state(&r, 1), (owned("gw1"), 8));
    }

    #[test]
    fn unowned_pairs_are_adopted_by_their_data_address_and_placed_once() {
        let t0 = Instant::now();
        let mut r = Routes::default();
        r.discover(key(1), 0, t0);
        r.discover(pair(1), 0, t0);
        r.discover(pair(2), 0, t0);
        // Holding the entity's address does not adopt its pairs.
        let (_, adopted) = r.acknowledge("gw2", 0, &holds(&[1, 2]), 1);
        assert_eq!(adopted, vec![key(1)], "only the portal route");
        assert_eq!(pair_state(&r, 1), (Ownership::Unowned, 0));
        assert!(r.adopt_pair(&pair(1), "gw3", 2));
        assert_eq!(pair_state(&r, 1), (owned("gw3"), 2));
        assert!(!r.adopt_pair(&pair(1), "gw2", 3), "owned already");
        assert!(!r.adopt_pair(&key(1), "gw3", 3), "not a pair");
        assert!(
            !r.assign_pair(&pair(2), "gw1", |_| true, 3, t0),
            "first placement"
        );
        assert_eq!(pair_state(&r, 2), (owned("gw1"), 3));
        // A gateway's share of addresses holds portals, never pairs.
        assert_eq!(r.owned_by("gw2"), vec![key(1).1]);
        assert!(r.owned_by("gw3").is_empty() && r.owned_by("gw1").is_empty());
    }

    #[test]
    fn first_placement_is_not_a_move() {
        let t0 = Instant::now();
        let mut r = Routes::default();
        r.discover(key(1), 0, t0);
        assert!(!r.assign(&key(1), "gw1", |_| true, true, 1, t0));
        assert_eq!(state(&r, 1), (owned("gw1"), 1));
        assert!(
            !r.assign(&key(9), "gw1", |_| true, true, 1, t0),
            "unknown route"
        );
    }
}
