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

    /// Whether `name` is known and alive.
    pub fn alive(&self, name: &str) -> bool {
        self.map.get(name).is_some_and(|g| g.alive)
    }

    /// Whether any gateway is alive.
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
        if counted {
            g.capacity = r.capacity;
            g.boot_id.clone_from(&r.boot_id);
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
}
