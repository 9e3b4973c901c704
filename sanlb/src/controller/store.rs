//! The controller's state file: JSON, replaced atomically (write a temporary
//! file beside it, fsync, rename over, fsync the directory), so a crash
//! leaves either the old or the new state, never a mix.
//!
//! A plain file rather than an embedded database: the state is one small
//! document rewritten whole (map, generation, gateways, recent rates),
//! with no queries and one writer.

use std::{
    fs,
    io::Write as _,
    net::IpAddr,
    path::{Path, PathBuf},
};

use serde::{Deserialize, Serialize};

use crate::proto::{
    CATCH_UP_LIMIT, MAX_DATA_ADDRESSES, MAX_GATEWAYS, MAX_ROUTES, Mode, Ownership, RebalanceRecord,
    shown, valid_capacity, valid_gateway_name, valid_storage_address,
};

/// Version of the file format.
pub const VERSION: u32 = 1;

/// Errors of the state file.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// Reading, writing, syncing or renaming failed.
    #[error("{what} {path}")]
    Io {
        /// The operation.
        what: &'static str,
        /// The file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// The file is not a state this version understands.
    #[error("{path}: not a sanlb controller state")]
    Parse {
        /// The file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: serde_json::Error,
    },
    /// The file parses but holds a value live input could never have made.
    #[error("{path}: {reason} (refusing to start from it; fix or move the file away)")]
    Invalid {
        /// The file.
        path: PathBuf,
        /// What is wrong, naming the entry.
        reason: String,
    },
    /// A newer format.
    #[error("{path}: format version {version}, this controller reads {VERSION}")]
    Version {
        /// The file.
        path: PathBuf,
        /// Its version.
        version: u32,
    },
}

/// A gateway as persisted.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SavedGateway {
    /// Name.
    pub name: String,
    /// Relative capacity.
    pub capacity: f64,
    /// Alive when saved.
    pub alive: bool,
}

/// A route as persisted.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SavedRoute {
    /// Host (pair mode).
    pub host: Option<IpAddr>,
    /// Target.
    pub target: IpAddr,
    /// Its state.
    pub ownership: Ownership,
    /// Generation of its last change.
    pub changed: u64,
}

/// A data address as persisted (pair mode).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SavedDataAddress {
    /// The storage entity.
    pub target: IpAddr,
    /// The gateway holding it.
    pub gateway: String,
    /// The address.
    pub address: IpAddr,
}

/// The persisted state.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Saved {
    /// [`VERSION`].
    pub version: u32,
    /// Unit of assignment of the map.
    pub mode: Mode,
    /// Generation.
    pub generation: u64,
    /// Gateways.
    pub gateways: Vec<SavedGateway>,
    /// The map.
    pub routes: Vec<SavedRoute>,
    /// The windowed rates when saved, (host, target, bytes/s): a restarted
    /// controller fills its window with them.
    pub rates: Vec<(IpAddr, IpAddr, f64)>,
    /// Recent rebalance decisions.
    pub history: Vec<RebalanceRecord>,
    /// Pair mode: the data address of each (entity, gateway).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub data_addresses: Vec<SavedDataAddress>,
    /// The operator's controls (pause, pins) and the cool-downs under way.
    #[serde(default)]
    pub controls: super::controls::SavedControls,
}

impl Saved {
    /// Checks the state with the rules live input obeys: a state file is
    /// input too (edited, restored from a backup, corrupted), and one that
    /// breaks them is refused whole, never half-applied.
    pub fn validate(&self) -> Result<(), String> {
        if self.generation > CATCH_UP_LIMIT {
            return Err(format!(
                "generation {} is beyond {CATCH_UP_LIMIT}, the most a controller resumes from",
                self.generation
            ));
        }
        if self.gateways.len() > MAX_GATEWAYS {
            return Err(format!(
                "{} gateways, at most {MAX_GATEWAYS}",
                self.gateways.len()
            ));
        }
        let mut names = std::collections::HashSet::new();
        for g in &self.gateways {
            if !valid_gateway_name(&g.name) {
                return Err(format!(
                    "gateway \"{}\": not a gateway name (1–64 characters of [A-Za-z0-9._-])",
                    shown(&g.name)
                ));
            }
            if !valid_capacity(g.capacity) {
                return Err(format!(
                    "gateway {}: capacity {:?} out of range [1e-6, 1e6]",
                    g.name, g.capacity
                ));
            }
            if !names.insert(g.name.as_str()) {
                return Err(format!("gateway {} listed twice", g.name));
            }
        }
        if self.routes.len() > MAX_ROUTES {
            return Err(format!(
                "{} routes, at most {MAX_ROUTES}",
                self.routes.len()
            ));
        }
        let known = |n: &str| names.contains(n);
        let mut keys = std::collections::HashSet::new();
        for r in &self.routes {
            let label = match r.host {
                Some(h) => format!("route {h}→{}", r.target),
                None => format!("route {}", r.target),
            };
            if !valid_storage_address(&r.target)
                || r.host.is_some_and(|h| !valid_storage_address(&h))
            {
                return Err(format!("{label}: not a usable address"));
            }
            // Pair mode has pairs and the entities' portal routes.
            if r.host.is_some() && self.mode != Mode::Pair {
                return Err(format!("{label}: does not fit a {}-mode map", self.mode));
            }
            if !keys.insert((r.host, r.target)) {
                return Err(format!("{label} listed twice"));
            }
            if r.changed > self.generation {
                return Err(format!(
                    "{label}: changed in generation {}, after the state's {}",
                    r.changed, self.generation
                ));
            }
            match &r.ownership {
                Ownership::Unowned => {}
                Ownership::Owned { gateway } if known(gateway) => {}
                Ownership::Moving { from, to, release }
                    if r.host.is_none()
                        && known(from)
                        && known(to)
                        && from != to
                        && *release <= self.generation => {}
                Ownership::Holding { from, to, hold: g }
                | Ownership::Evicting { from, to, evict: g }
                    if r.host.is_some()
                        && known(from)
                        && known(to)
                        && from != to
                        && *g <= self.generation => {}
                other => {
                    return Err(format!(
                        "{label}: {other:?} names an unknown gateway or an impossible move"
                    ));
                }
            }
        }
        if self.data_addresses.len() > MAX_DATA_ADDRESSES {
            return Err(format!(
                "{} data addresses, at most {MAX_DATA_ADDRESSES}",
                self.data_addresses.len()
            ));
        }
        if !self.data_addresses.is_empty() && self.mode != Mode::Pair {
            return Err(format!("data addresses in a {}-mode state", self.mode));
        }
        let entities: std::collections::HashSet<IpAddr> = self
            .routes
            .iter()
            .filter(|r| r.host.is_none())
            .map(|r| r.target)
            .collect();
        let mut addresses = std::collections::HashSet::new();
        let mut slots = std::collections::HashSet::new();
        for d in &self.data_addresses {
            let label = format!(
                "data address {} of {} on {}",
                d.address,
                d.target,
                shown(&d.gateway)
            );
            if !valid_storage_address(&d.address) {
                return Err(format!("{label}: not a usable address"));
            }
            if !known(&d.gateway) {
                return Err(format!("{label}: unknown gateway"));
            }
            if !entities.contains(&d.target) {
                return Err(format!("{label}: no such storage entity in the map"));
            }
            if entities.contains(&d.address) {
                return Err(format!("{label}: the address is a storage entity's"));
            }
            if !addresses.insert(d.address) {
                return Err(format!("{label}: address listed twice"));
            }
            if !slots.insert((d.target, d.gateway.as_str())) {
                return Err(format!(
                    "{label}: a second address for the same entity and gateway"
                ));
            }
        }
        if self.rates.len() > MAX_ROUTES {
            return Err(format!("{} rates, at most {MAX_ROUTES}", self.rates.len()));
        }
        for (h, t, rate) in &self.rates {
            if !(0.0..=super::rates::MAX_RATE).contains(rate) {
                return Err(format!(
                    "rate {h}→{t}: {rate:?} is not a rate in [0, 1e12] bytes/s"
                ));
            }
        }
        if self.history.len() > super::rebalance::HISTORY {
            return Err(format!(
                "{} rebalance records, at most {}",
                self.history.len(),
                super::rebalance::HISTORY
            ));
        }
        if let Some(h) = self
            .history
            .iter()
            .find(|h| h.reason.len() > 1024 || h.trigger.len() > 16)
        {
            return Err(format!(
                "rebalance record at {} ms: oversized text",
                h.at_ms
            ));
        }
        if let Some(h) = self.history.iter().find(|h| {
            h.result.len() > 16
                || h.changes.len() > crate::proto::MAX_RECORDED_CHANGES
                || h.changes.iter().any(|c| {
                    !valid_gateway_name(&c.to)
                        || c.from.as_deref().is_some_and(|f| !valid_gateway_name(f))
                })
        }) {
            return Err(format!(
                "rebalance record at {} ms: bad result or changes",
                h.at_ms
            ));
        }
        self.controls.validate()
    }
}

/// The state file.
#[derive(Clone, Debug)]
pub struct Store {
    path: PathBuf,
}

impl Store {
    /// The state lives at `path`.
    pub fn new(path: impl Into<PathBuf>) -> Self {
        Self { path: path.into() }
    }

    /// Its path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The saved state, `None` when there is no file yet.
    pub fn load(&self) -> Result<Option<Saved>, StoreError> {
        let text = match fs::read(&self.path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(source) => {
                return Err(StoreError::Io {
                    what: "reading",
                    path: self.path.clone(),
                    source,
                });
            }
        };
        #[derive(Deserialize)]
        struct Probe {
            version: u32,
        }
        let parse = |source| StoreError::Parse {
            path: self.path.clone(),
            source,
        };
        let probe: Probe = serde_json::from_slice(&text).map_err(parse)?;
        if probe.version != VERSION {
            return Err(StoreError::Version {
                path: self.path.clone(),
                version: probe.version,
            });
        }
        let saved: Saved = serde_json::from_slice(&text).map_err(parse)?;
        saved.validate().map_err(|reason| StoreError::Invalid {
            path: self.path.clone(),
            reason,
        })?;
        Ok(Some(saved))
    }

    /// Replaces the saved state atomically and durably.
    pub fn save(&self, state: &Saved) -> Result<(), StoreError> {
        let io = |what, path: &Path| {
            let path = path.to_owned();
            move |source| StoreError::Io { what, path, source }
        };
        let bytes = serde_json::to_vec(state).expect("the state serialises");
        let dir = match self.path.parent() {
            Some(d) if !d.as_os_str().is_empty() => d.to_owned(),
            _ => PathBuf::from("."),
        };
        let mut name = self.path.file_name().unwrap_or_default().to_owned();
        name.push(".tmp");
        let tmp = dir.join(name);
        let mut f = fs::File::create(&tmp).map_err(io("creating", &tmp))?;
        f.write_all(&bytes).map_err(io("writing", &tmp))?;
        f.sync_all().map_err(io("syncing", &tmp))?;
        drop(f);
        fs::rename(&tmp, &self.path).map_err(io("renaming over", &self.path))?;
        fs::File::open(&dir)
            .and_then(|d| d.sync_all())
            .map_err(io("syncing", &dir))?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_refusals() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::new(dir.path().join("state.json"));
        assert_eq!(store.load().unwrap(), None);
        let saved = Saved {
            version: VERSION,
            mode: Mode::Target,
            generation: 7,
            gateways: vec![
                SavedGateway {
                    name: "gw1".into(),
                    capacity: 2.0,
                    alive: true,
                },
                SavedGateway {
                    name: "gw2".into(),
                    capacity: 1.0,
                    alive: false,
                },
            ],
            routes: vec![SavedRoute {
                host: None,
                target: IpAddr::from([198, 18, 1, 1]),
                ownership: Ownership::Moving {
                    from: "gw1".into(),
                    to: "gw2".into(),
                    release: 7,
                },
                changed: 7,
            }],
            rates: vec![(
                IpAddr::from([198, 18, 0, 1]),
                IpAddr::from([198, 18, 1, 1]),
                5.5,
            )],
            history: vec![],
            data_addresses: vec![],
            controls: Default::default(),
        };
        store.save(&saved).unwrap();
        assert_eq!(store.load().unwrap(), Some(saved));
        assert!(!dir.path().join("state.json.tmp").exists());
        fs::write(store.path(), b"{\"version\": 9}").unwrap();
        assert!(matches!(
            store.load(),
            Err(StoreError::Version { version: 9, .. })
        ));
        fs::write(store.path(), b"garbage").unwrap();
        assert!(matches!(store.load(), Err(StoreError::Parse { .. })));
    }
}
