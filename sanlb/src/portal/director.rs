//! A director from a table: for tests, benchmarks and fixed setups.

use std::{collections::HashMap, net::IpAddr, sync::Mutex};

use tokio::sync::watch;

use super::{Director, DiscoveryInfo, LoginInfo, Refusal, Steer};

/// A [`Director`] answering from tables: a steer per (initiator IP,
/// target), else a default ([`Refusal::NotFound`] until set); target names
/// per local address for discovery. Every change bumps the generation, so
/// held logins ask again.
#[derive(Debug)]
pub struct TableDirector {
    table: Mutex<Table>,
    generation: watch::Sender<u64>,
}

#[derive(Debug)]
struct Table {
    default: Steer,
    pairs: HashMap<(IpAddr, String), Steer>,
    targets: HashMap<IpAddr, Vec<String>>,
}

impl Default for TableDirector {
    fn default() -> Self {
        TableDirector::new()
    }
}

impl TableDirector {
    /// Empty tables: every login is refused "not found", no target listed.
    pub fn new() -> TableDirector {
        TableDirector {
            table: Mutex::new(Table {
                default: Steer::Refuse(Refusal::NotFound),
                pairs: HashMap::new(),
                targets: HashMap::new(),
            }),
            generation: watch::channel(0).0,
        }
    }

    fn change(&self, f: impl FnOnce(&mut Table)) {
        f(&mut self.table.lock().expect("director lock"));
        self.generation.send_modify(|g| *g += 1);
    }

    /// The answer for every pair without one of its own.
    pub fn steer_all(&self, steer: Steer) {
        self.change(|t| t.default = steer);
    }

    /// The answer for the pair (`initiator`, `target`).
    pub fn steer_pair(&self, initiator: IpAddr, target: &str, steer: Steer) {
        self.change(|t| {
            t.pairs
                .insert((initiator.to_canonical(), target.to_owned()), steer);
        });
    }

    /// The targets a discovery session on `local` is offered.
    pub fn set_targets(&self, local: IpAddr, names: Vec<String>) {
        self.change(|t| {
            t.targets.insert(local.to_canonical(), names);
        });
    }

    /// The current generation (changes with every setter call).
    pub fn generation(&self) -> u64 {
        *self.generation.borrow()
    }
}

impl Director for TableDirector {
    fn steer(&self, login: &LoginInfo) -> Steer {
        let t = self.table.lock().expect("director lock");
        t.pairs
            .get(&(login.peer.ip(), login.target_name.clone()))
            .copied()
            .unwrap_or(t.default)
    }

    fn targets(&self, session: &DiscoveryInfo) -> Vec<String> {
        let t = self.table.lock().expect("director lock");
        t.targets
            .get(&session.local.ip())
            .cloned()
            .unwrap_or_default()
    }

    fn changes(&self) -> watch::Receiver<u64> {
        self.generation.subscribe()
    }
}
