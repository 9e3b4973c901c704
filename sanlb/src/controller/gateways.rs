//! The gateways the controller knows: what each reported last, and its
//! lease (alive while it reports within one).

use std::{
    collections::{BTreeMap, BTreeSet},
    net::IpAddr,
    time::{Duration, Instant},
};

use crate::proto::{EnforceCounters, Report};

/// One gateway as the controller sees it.
#[derive(Debug, Clone)]
pub struct Gateway {
    /// Relative capacity it declares.
    pub capacity: f64,
    /// Reporting within its lease.
    pub alive: bool,
    /// Its last report (or the controller's start, for a restored one).
    pub last_seen: Instant,
    /// Boot id of its agent's last counted report.
    pub boot_id: String,
    /// Generation it last applied.
    pub applied: u64,
    /// Addresses it holds.
    pub owned: BTreeSet<IpAddr>,
    /// Its agent's enforcement counters.
    pub enforce: EnforceCounters,
    /// Another agent reporting under this name while its own is live.
    pub conflict: Option<Contender>,
    /// Heartbeats, link, probes, drain, conflicts (`faults.rs`).
    pub health: super::faults::Health,
}

/// A second live agent under one gateway name (a misconfiguration or an
/// impostor): its reports are refused while the first one reports.
#[derive(Debug, Clone, PartialEq)]
pub struct Contender {
    /// Its boot id.
    pub boot_id: String,
    /// Its reports refused so far.
    pub refused: u64,
    /// Its last refused report.
    pub last: Instant,
}

/// Why a report was refused: another agent reports under its name.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "gateway {gateway} is reported by another live agent (boot {owner}); boot {contender} is refused until that one has been silent for half a lease"
)]
pub struct BootConflict {
    /// The gateway name (escaped for display).
    pub gateway: String,
    /// The boot id of the agent that owns the name.
    pub owner: String,
    /// The refused boot id.
    pub contender: String,
}

impl Gateway {
    /// A gateway first heard of at `now`, not yet alive.
    pub fn new(capacity: f64, alive: bool, now: Instant) -> Self {
        Self {
            capacity,
            alive,
            last_seen: now,
            boot_id: String::new(),
            applied: 0,
            owned: BTreeSet::new(),
            enforce: EnforceCounters::default(),
            conflict: None,
            health: super::faults::Health::new(now),
        }
    }
}

/// The registry, by name.
#[derive(Debug, Default, Clone)]
pub struct Gateways {
    map: BTreeMap<String, Gateway>,
}

impl Gateways {
    /// Restores a saved gateway.
    pub fn insert(&mut self, name: String, g: Gateway) {
        self.map.insert(name, g);
    }

    /// One gateway.
    pub fn get(&self, name: &str) -> Option<&Gateway> {
        self.map.get(name)
    }

    /// One gateway, to change.
    pub fn get_mut(&mut self, name: &str) -> Option<&mut Gateway> {
        self.map.get_mut(name)
    }

    /// Whether `name` is known and alive.
    pub fn alive(&self, name: &str) -> bool {
        self.map.get(name).is_some_and(|g| g.alive)
    }

    /// Whether any gateway is alive.
    #[cfg_attr(
        not(test),
        expect(dead_code, reason = "only the unit tests use it since issue 14")
    )]
    pub fn any_alive(&self) -> bool {
        self.map.values().any(|g| g.alive)
    }

    /// By name.
    pub fn iter(&self) -> impl Iterator<Item = (&String, &Gateway)> {
        self.map.iter()
    }

    /// Number of gateways.
    pub fn len(&self) -> usize {
        self.map.len()
    }

    /// Whether a report of `boot_id` under `name` may be taken. A name
    /// belongs to the boot that reports under it; another boot takes it over
    /// only once that one has been silent for `takeover` (an agent that
    /// restarted). Until then the newcomer is refused, and remembered for
    /// status, so that two live agents never share a name — and a share.
    pub fn admit(
        &mut self,
        name: &str,
        boot_id: &str,
        now: Instant,
        takeover: Duration,
    ) -> Result<(), BootConflict> {
        let Some(g) = self.map.get_mut(name) else {
            return Ok(());
        };
        if g.boot_id.is_empty()
            || g.boot_id == boot_id
            || now.saturating_duration_since(g.last_seen) >= takeover
        {
            return Ok(());
        }
        let c = g.conflict.get_or_insert_with(|| Contender {
            boot_id: boot_id.to_owned(),
            refused: 0,
            last: now,
        });
        c.boot_id.clear();
        c.boot_id.push_str(boot_id);
        c.refused += 1;
        c.last = now;
        Err(BootConflict {
            gateway: crate::proto::shown(name),
            owner: g.boot_id.clone(),
            contender: crate::proto::shown(boot_id),
        })
    }

    /// Whether `boot_id` is the agent `name`'s shares go to.
    pub fn is_owner(&self, name: &str, boot_id: &str) -> bool {
        self.map.get(name).is_some_and(|g| g.boot_id == boot_id)
    }

    /// Forgets gateways silent for `after` for which `keep` is false;
    /// returns them.
    pub fn forget(
        &mut self,
        now: Instant,
        after: Duration,
        keep: impl Fn(&str) -> bool,
    ) -> Vec<String> {
        let gone: Vec<String> = self
            .map
            .iter()
            .filter(|(n, g)| {
                !g.alive && now.saturating_duration_since(g.last_seen) >= after && !keep(n)
            })
            .map(|(n, _)| n.clone())
            .collect();
        for n in &gone {
            self.map.remove(n);
        }
        gone
    }

    /// Records a report at `now`: the gateway is alive again; when the
    /// report `counted` (not stale), what it says replaces what it said
    /// before. Returns whether it was dead or unknown (revived).
    pub fn record(&mut self, r: &Report, counted: bool, now: Instant) -> bool {
        let g = self
            .map
            .entry(r.gateway.clone())
            .or_insert_with(|| Gateway::new(r.capacity, false, now));
        g.last_seen = now;
        let revived = !g.alive;
        g.alive = true;
        if revived {
            g.health.revive(now);
        }
        if counted {
            g.capacity = r.capacity;
            if g.boot_id != r.boot_id {
                g.boot_id.clone_from(&r.boot_id);
                // A takeover ends a conflict: the newcomer owns the name.
                if g.conflict.as_ref().is_some_and(|c| c.boot_id == r.boot_id) {
                    g.conflict = None;
                }
            }
            g.applied = r.applied;
            g.owned = r.owned.iter().copied().collect();
            g.enforce = r.enforce;
        }
        revived
    }

    /// Declares dead every alive gateway silent for `lease`; returns them.
    pub fn expire(&mut self, now: Instant, lease: Duration) -> Vec<String> {
        let mut died = Vec::new();
        for (name, g) in &mut self.map {
            if g.alive && now.saturating_duration_since(g.last_seen) >= lease {
                g.alive = false;
                died.push(name.clone());
            }
        }
        died
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::Report;

    fn report(gw: &str, boot: &str, applied: u64) -> Report {
        Report {
            gateway: gw.into(),
            boot_id: boot.into(),
            seq: 0,
            uptime_ms: 0,
            capacity: 2.0,
            applied,
            owned: vec![IpAddr::from([198, 18, 1, 1])],
            enforce: EnforceCounters::default(),
            flows: vec![],
        }
    }

    #[test]
    fn leases() {
        let t0 = Instant::now();
        let lease = Duration::from_secs(3);
        let mut g = Gateways::default();
        assert!(g.record(&report("gw1", "b1", 4), true, t0), "new: revived");
        assert!(!g.record(&report("gw1", "b1", 5), true, t0));
        let gw = g.get("gw1").unwrap();
        assert_eq!((gw.applied, gw.capacity, gw.owned.len()), (5, 2.0, 1));
        // A stale report renews the lease but changes nothing else.
        assert!(!g.record(&report("gw1", "b0", 1), false, t0 + lease / 2));
        assert_eq!(g.get("gw1").unwrap().applied, 5);
        assert!(g.expire(t0 + lease, lease).is_empty());
        assert_eq!(g.expire(t0 + lease / 2 + lease, lease), vec!["gw1"]);
        assert!(!g.alive("gw1") && !g.any_alive());
        assert!(g.record(&report("gw1", "b1", 6), true, t0 + lease * 3));
        assert!(g.alive("gw1"));
    }

    #[test]
    fn two_live_boots_under_one_name() {
        let t0 = Instant::now();
        let half = Duration::from_millis(1500);
        let mut g = Gateways::default();
        assert!(g.admit("gw1", "b1", t0, half).is_ok(), "unknown: admitted");
        g.record(&report("gw1", "b1", 1), true, t0);
        assert!(g.admit("gw1", "b1", t0, half).is_ok());
        // A second boot while the first reports: refused and remembered.
        let e = g.admit("gw1", "b2", t0 + half / 2, half).unwrap_err();
        assert_eq!((e.owner.as_str(), e.contender.as_str()), ("b1", "b2"));
        let c = g.get("gw1").unwrap().conflict.clone().unwrap();
        assert_eq!((c.boot_id.as_str(), c.refused), ("b2", 1));
        assert!(g.is_owner("gw1", "b1") && !g.is_owner("gw1", "b2"));
        // The first keeps reporting: the second stays refused.
        g.record(&report("gw1", "b1", 1), true, t0 + half);
        assert!(
            g.admit("gw1", "b2", t0 + half * 2 - Duration::from_millis(1), half)
                .is_err()
        );
        // The first falls silent for half a lease (a restart): taken over.
        assert!(g.admit("gw1", "b2", t0 + half * 2, half).is_ok());
        g.record(&report("gw1", "b2", 0), true, t0 + half * 2);
        assert!(g.is_owner("gw1", "b2"));
        assert_eq!(g.get("gw1").unwrap().conflict, None);
    }

    #[test]
    fn forgetting() {
        let t0 = Instant::now();
        let lease = Duration::from_secs(3);
        let mut g = Gateways::default();
        g.record(&report("gw1", "b1", 1), true, t0);
        g.record(&report("gw2", "b1", 1), true, t0);
        g.expire(t0 + lease, lease);
        let hour = Duration::from_secs(3600);
        assert!(g.forget(t0 + hour / 2, hour, |_| false).is_empty());
        assert_eq!(g.forget(t0 + hour, hour, |n| n == "gw2"), vec!["gw1"]);
        assert_eq!(g.len(), 1);
    }
}
