//! The controller's state in etcd: one JSON document, the state file's
//! format ([`Saved`]), under `PREFIX/state`.
//!
//! One document rather than a key per route or gateway: a write is one
//! `put` in one transaction whatever changed, so the generation and the
//! map it numbers (moves in flight included) change together or not at all
//! (a key per route could need more operations than etcd allows in one
//! transaction, 128 by default, and a split write would break
//! break-before-make); the cost of an etcd write is its raft round and
//! fsync, not the few kilobytes; and a reader parses one value, whole,
//! before anything of it is applied.
//!
//! Every read and write by a leader is a transaction whose condition is its
//! [`Term`]: the leader key still has the term's create revision and lease.
//! A deposed leader (paused, partitioned, its lease expired) can write
//! nothing, whatever it believes.

use etcd_client::{Compare, CompareOp, GetOptions, Txn, TxnOp, TxnOpResponse};
use serde::Deserialize;

use super::{ClusterError, Etcd, Term};
use crate::controller::store::{Saved, VERSION};

/// The controller's state in etcd.
#[derive(Clone, Debug)]
pub struct StateStore {
    etcd: Etcd,
    key: String,
    leader: String,
}

impl StateStore {
    /// The state under `etcd`'s prefix.
    pub fn new(etcd: &Etcd) -> Self {
        Self {
            etcd: etcd.clone(),
            key: etcd.state_key(),
            leader: etcd.leader_key(),
        }
    }

    /// The key.
    pub fn key(&self) -> &str {
        &self.key
    }

    /// The saved state, read as the leader of `term` (`None` when there is
    /// none yet). A value that is not a state of this version is refused,
    /// naming the key.
    pub async fn load(&self, term: &Term) -> Result<Option<Saved>, ClusterError> {
        self.check(term)?;
        let txn = Txn::new()
            .when(self.guard(term))
            .and_then([TxnOp::get(self.key.as_bytes(), None)]);
        let mut kv = self.etcd.client.kv_client();
        let resp = self
            .etcd
            .call(format!("reading {}", self.key), kv.txn(txn))
            .await?;
        if !resp.succeeded() {
            return Err(self.refused(term));
        }
        resp.op_responses()
            .into_iter()
            .find_map(|r| match r {
                TxnOpResponse::Get(g) => g.kvs().first().cloned(),
                _ => None,
            })
            .map(|item| parse_state(&self.key, item.value()))
            .transpose()
    }

    /// Replaces the saved state as the leader of `term`; returns etcd's
    /// revision of the write. Nothing is written unless the term runs by
    /// the local clock and etcd still holds its leader key.
    pub async fn save(&self, term: &Term, state: &Saved) -> Result<i64, ClusterError> {
        self.check(term)?;
        let bytes = serde_json::to_vec(state).expect("the state serialises");
        let txn = Txn::new().when(self.guard(term)).and_then([TxnOp::put(
            self.key.as_bytes(),
            bytes,
            None,
        )]);
        let mut kv = self.etcd.client.kv_client();
        let resp = self
            .etcd
            .call(format!("writing {}", self.key), kv.txn(txn))
            .await?;
        if !resp.succeeded() {
            return Err(self.refused(term));
        }
        Ok(resp.header().map_or(0, |h| h.revision()))
    }

    /// The saved state as anyone can read it (`sanlb status`, tools).
    pub async fn read(&self) -> Result<Option<Saved>, ClusterError> {
        let mut kv = self.etcd.client.kv_client();
        let resp = self
            .etcd
            .call(
                format!("reading {}", self.key),
                kv.get(self.key.as_bytes(), Some(GetOptions::new())),
            )
            .await?;
        resp.kvs()
            .first()
            .map(|item| parse_state(&self.key, item.value()))
            .transpose()
    }

    /// The condition of every guarded transaction: the leader key is the
    /// one this term created, on this term's lease.
    fn guard(&self, term: &Term) -> [Compare; 2] {
        let key = self.leader.as_bytes();
        [
            Compare::create_revision(key, CompareOp::Equal, term.revision()),
            Compare::lease(key, CompareOp::Equal, term.lease()),
        ]
    }

    fn check(&self, term: &Term) -> Result<(), ClusterError> {
        if term.is_valid() {
            return Ok(());
        }
        Err(ClusterError::NotLeader {
            reason: format!(
                "term {} is over (stepped down, or no keep-alive answered within ttl/2)",
                term.revision()
            ),
        })
    }

    fn refused(&self, term: &Term) -> ClusterError {
        ClusterError::NotLeader {
            reason: format!(
                "etcd refused the transaction: {} is no longer term {}'s (lease {:x})",
                self.leader,
                term.revision(),
                term.lease()
            ),
        }
    }
}

/// Parses the value of the state `key`: a state of this version, whole, or
/// an error naming the key.
pub fn parse_state(key: &str, bytes: &[u8]) -> Result<Saved, ClusterError> {
    #[derive(Deserialize)]
    struct Probe {
        version: u32,
    }
    let foreign = |reason: String| ClusterError::Foreign {
        key: key.to_owned(),
        reason,
    };
    let not_state = |e: serde_json::Error| foreign(format!("not a sanlb controller state: {e}"));
    let probe: Probe = serde_json::from_slice(bytes).map_err(not_state)?;
    if probe.version != VERSION {
        return Err(foreign(format!(
            "state format version {}, this controller reads {VERSION}",
            probe.version
        )));
    }
    serde_json::from_slice(bytes).map_err(not_state)
}

#[cfg(test)]
mod tests {
    use std::{net::IpAddr, time::Duration};

    use sanlb_test::etcd::EtcdServer;

    use super::*;
    use crate::{
        cluster::{Elector, ElectorConfig, clock},
        controller::store::{SavedGateway, SavedRoute},
        proto::{Mode, Ownership},
    };

    fn saved(generation: u64) -> Saved {
        Saved {
            version: VERSION,
            mode: Mode::Target,
            generation,
            gateways: vec![SavedGateway {
                name: "gw1".into(),
                capacity: 1.0,
                alive: true,
            }],
            routes: vec![SavedRoute {
                host: None,
                target: IpAddr::from([198, 18, 1, 1]),
                ownership: Ownership::Moving {
                    from: "gw1".into(),
                    to: "gw2".into(),
                    release: generation,
                },
                changed: generation,
            }],
            rates: vec![],
            history: vec![],
            data_addresses: vec![],
            controls: Default::default(),
        }
    }

    #[test]
    fn refusals_name_the_key() {
        let e = parse_state("/p/state", b"garbage").unwrap_err().to_string();
        assert!(
            e.starts_with("/p/state: not a sanlb controller state"),
            "{e}"
        );
        let e = parse_state("/p/state", br#"{"version": 9}"#)
            .unwrap_err()
            .to_string();
        assert!(e.starts_with("/p/state: state format version 9"), "{e}");
        let mut v = serde_json::to_value(saved(3)).unwrap();
        v["extra"] = 1.into();
        let e = parse_state("/p/state", v.to_string().as_bytes())
            .unwrap_err()
            .to_string();
        assert!(e.contains("unknown field `extra`"), "{e}");
        let ok = serde_json::to_vec(&saved(3)).unwrap();
        assert_eq!(parse_state("/p/state", &ok).unwrap(), saved(3));
    }

    /// The guard is etcd's, not only the local clock's: a term whose lease
    /// etcd revoked behind the leader's back (as when it expired during a
    /// partition), still valid by the local clock, writes nothing.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn etcd_refuses_a_write_of_a_term_it_ended() {
        let server = EtcdServer::start();
        let etcd = Etcd::connect(&[server.endpoint()], "/unit/", Duration::from_secs(2))
            .await
            .unwrap();
        let elector = Elector::start(&etcd, ElectorConfig::new("http://127.0.0.1:1")).unwrap();
        let mut role = elector.subscribe();
        let term = tokio::time::timeout(Duration::from_secs(10), role.wait_for(|r| r.is_leader()))
            .await
            .expect("leads within 10 s")
            .unwrap()
            .term()
            .cloned()
            .unwrap();
        let store = StateStore::new(&etcd);
        store.save(&term, &saved(5)).await.unwrap();
        assert_eq!(store.load(&term).await.unwrap(), Some(saved(5)));
        // A copy of the term with its own deadline far away: the local
        // check passes, only etcd can refuse.
        let stale = Term::new(
            term.lease(),
            term.revision(),
            clock::now() + Duration::from_secs(600),
        );
        etcd.client()
            .clone()
            .lease_revoke(term.lease())
            .await
            .unwrap();
        let e = store.save(&stale, &saved(6)).await.unwrap_err().to_string();
        assert!(e.starts_with("not the leader: etcd refused"), "{e}");
        let e = store.load(&stale).await.unwrap_err().to_string();
        assert!(e.starts_with("not the leader: etcd refused"), "{e}");
        assert_eq!(
            store.read().await.unwrap(),
            Some(saved(5)),
            "nothing written"
        );
        // The elector noticed too, and campaigns again.
        tokio::time::timeout(
            Duration::from_secs(10),
            role.wait_for(|r| r.term().is_some_and(|t| t.revision() != term.revision())),
        )
        .await
        .expect("a new term within 10 s")
        .unwrap();
        assert!(!term.is_valid());
        elector.resign().await;
    }
}
