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
//! applied sets at once. Every function takes the generation `g` to stamp
//! its changes with; the caller makes it the controller's generation only if
//! something changed.

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

impl RouteState {
    /// Ends a move at its new owner.
    fn complete_move(&mut self, g: u64) {
        if let Ownership::Moving { to, .. } = &self.ownership {
            self.ownership = Ownership::Owned {
                gateway: to.clone(),
            };
            self.changed = g;
        }
    }

    /// Ends a move back at its old owner.
    fn abandon_move(&mut self, g: u64) {
        if let Ownership::Moving { from, .. } = &self.ownership {
            self.ownership = Ownership::Owned {
                gateway: from.clone(),
            };
            self.changed = g;
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
            Ownership::Moving { from, to, .. } => from == gateway || to == gateway,
        })
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
    #[expect(
        dead_code,
        reason = "unused since issue 14; kept with the other accessors"
    )]
    pub fn keys(&self) -> impl Iterator<Item = &RouteKey> {
        self.map.keys()
    }

    /// Routes moving now.
    pub fn moves_in_flight(&self) -> usize {
        self.map
            .values()
            .filter(|r| matches!(r.ownership, Ownership::Moving { .. }))
            .count()
    }

    /// Storage addresses `gateway` owns (its share). Moving ones are in
    /// nobody's.
    pub fn owned_by(&self, gateway: &str) -> Vec<IpAddr> {
        self.map
            .iter()
            .filter(
                |(_, r)| matches!(&r.ownership, Ownership::Owned { gateway: o } if o == gateway),
            )
            .map(|(k, _)| k.1)
            .collect()
    }

    /// After `gateway` reported having applied generation `applied` and
    /// holding `holds`: moves it released complete (they go to their new
    /// owner), and unowned routes whose address it holds become its own.
    /// Returns (released, adopted).
    pub fn acknowledge(
        &mut self,
        gateway: &str,
        applied: u64,
        holds: &BTreeSet<IpAddr>,
        g: u64,
    ) -> (Vec<RouteKey>, Vec<RouteKey>) {
        let (mut released, mut adopted) = (Vec::new(), Vec::new());
        for (key, r) in &mut self.map {
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
    /// within `lease` keeps the route.
    pub fn expire_moves(
        &mut self,
        alive: impl Fn(&str) -> bool,
        now: Instant,
        lease: std::time::Duration,
        g: u64,
    ) -> Expired {
        let mut out = Expired::default();
        for (key, r) in &mut self.map {
            let Ownership::Moving { from, to, .. } = &r.ownership else {
                continue;
            };
            if !alive(from) && alive(to) {
                r.complete_move(g);
                out.bypassed.push(*key);
            } else if alive(from) && now.saturating_duration_since(r.since) >= lease {
                r.abandon_move(g);
                out.abandoned.push(*key);
            }
        }
        out
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
    #[cfg_attr(
        not(test),
        expect(dead_code, reason = "only the unit tests use it since issue 14")
    )]
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
