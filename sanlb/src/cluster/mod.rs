//! The highly available control plane's consensus layer: several
//! controllers, one leader elected through etcd, the controller's state
//! kept in etcd.
//!
//! - [`Etcd`]: a checked connection to etcd and sanlb's keys under a prefix
//!   (two sanlb clusters on one etcd are kept apart by their prefixes);
//! - [`Elector`]: campaigns in the background and publishes the controller's
//!   [`Role`] (leader with its [`Term`], follower with the leader's
//!   advertised URL, or unknown with the reason) on a `tokio::sync::watch`;
//! - [`StateStore`]: the controller's persisted state
//!   ([`Saved`](crate::controller::store::Saved)) as one JSON document,
//!   every write a transaction guarded by the writer's term.
//!
//! # Keys
//!
//! | key | value | written by |
//! |---|---|---|
//! | `PREFIX/leader` | [`LeaderRecord`] (JSON), attached to the leader's lease | created if absent by a candidate |
//! | `PREFIX/state` | [`Saved`](crate::controller::store::Saved) (JSON, the state file's format) | the leader, guarded by its term |
//!
//! Any other key under the prefix is refused at connection with its name
//! (a foreign program's data, or another cluster's prefix nested in this
//! one), and so is a value that is not sanlb's.
//!
//! # Leadership: a create-if-absent key, not etcd's election API
//!
//! A candidate grants itself a lease of `ttl` and creates `PREFIX/leader`
//! in one transaction that succeeds only if the key does not exist
//! (Patroni's way); the key dies with the lease. The others watch the key
//! and campaign when it is deleted. etcd's election API (`v3election`)
//! would do the same with a queue of keys, one per candidate, and a
//! blocking `Campaign` call; the single key is preferred because:
//! - the leader is one key anyone can read (`sanlb status`, `etcdctl get`),
//!   holding the advertised URL the followers hand to agents;
//! - the fence is that key's create revision and lease, which every state
//!   write compares in its transaction ([`Term`]); with the election API it
//!   would be the same compare on a key whose name is only known to the
//!   winner;
//! - no long blocking RPC whose cancellation must be cleaned up, and no
//!   queue of standby keys whose order would decide the next leader
//!   whatever their health: the first standby to see the key go wins.
//!
//! # Stepping down before the lease can expire on etcd
//!
//! The leader renews its lease every `ttl/6`, one keep-alive at a time
//! (etcd-client's `LeaseKeeper` sends one per call: the loop is here). A
//! term is valid until `ttl/2` after the *sending* of the last keep-alive
//! etcd answered, measured on `CLOCK_BOOTTIME`, which keeps counting while
//! the process is stopped or the machine suspended. etcd cannot expire the
//! lease before `ttl` after it received that keep-alive, so the leader
//! stops believing it leads at least `ttl/2` before anybody else can lead.
//! Any failed keep-alive, an answer that the lease is gone, a change of the
//! leader key or a broken watch of it ends the term at once.
//! [`Term::is_valid`] reads the clock itself, so a leader resumed after a
//! pause does not lead even before its background task has run; and
//! whatever a deposed leader believes, its writes are refused by etcd.
//!
//! Written by hand on `etcd-client`'s raw calls: no crate keeps a lease
//! with a local deadline on the boot clock and fences writes with it.
//!
//! # Example
//!
//! ```no_run
//! # async fn run(state: sanlb::controller::store::Saved) -> Result<(), sanlb::cluster::ClusterError> {
//! use sanlb::cluster::{Elector, ElectorConfig, Etcd, StateStore, DEFAULT_TIMEOUT};
//!
//! let etcd = Etcd::connect(&["http://10.0.0.11:2379".into()], "/sanlb/san1/", DEFAULT_TIMEOUT).await?;
//! let elector = Elector::start(&etcd, ElectorConfig::new("http://10.0.0.5:7390"))?;
//! let store = StateStore::new(&etcd);
//! let mut role = elector.subscribe();
//! let leading = role.wait_for(|r| r.is_leader()).await.expect("elector running").clone();
//! let term = leading.term().expect("leads");
//! let resumed = store.load(term).await?; // the last leader's generation and map
//! // … hand out shares only while `term.is_valid()`; persist each new generation first:
//! store.save(term, &state).await?;
//! elector.resign().await; // on shutdown: another controller leads at once
//! # let _ = resumed; Ok(()) }
//! ```

mod clock;
mod leader;
mod state;

use std::{sync::Arc, time::Duration};

use etcd_client::{Client, ConnectOptions, GetOptions};

pub use leader::{Elector, ElectorConfig, LeaderRecord, RECORD_VERSION, Role, Term};
pub use state::{StateStore, parse_state};

/// Default time-to-live of the leader's lease. Whole seconds: etcd's leases
/// count in seconds, and with its default election timeout (1 s) it raises
/// any shorter lease to 2 s.
pub const DEFAULT_TTL: Duration = Duration::from_secs(2);

/// Default time etcd has to answer one request.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(2);

/// Default key prefix.
pub const DEFAULT_PREFIX: &str = "/sanlb/";

/// The leader key's name under the prefix.
const LEADER: &str = "leader";
/// The state key's name under the prefix.
const STATE: &str = "state";

/// Errors of the consensus layer.
#[derive(Debug, thiserror::Error)]
pub enum ClusterError {
    /// A setting is out of range.
    #[error("{setting}: {reason}")]
    Setting {
        /// The setting.
        setting: &'static str,
        /// What is wrong.
        reason: String,
    },
    /// An endpoint is not an etcd client URL this build can use.
    #[error("etcd endpoint {endpoint:?}: {reason}")]
    Endpoint {
        /// The endpoint.
        endpoint: String,
        /// What is wrong.
        reason: String,
    },
    /// etcd did not answer in time.
    #[error("{what}: etcd at {endpoints} did not answer within {timeout:?}")]
    Timeout {
        /// What was asked.
        what: String,
        /// Every endpoint.
        endpoints: String,
        /// How long it was given.
        timeout: Duration,
    },
    /// etcd answered with an error, or could not be reached.
    #[error("{what}: etcd at {endpoints}")]
    Etcd {
        /// What was asked.
        what: String,
        /// Every endpoint.
        endpoints: String,
        /// The cause.
        #[source]
        source: etcd_client::Error,
    },
    /// A key under the prefix, or its value, is not sanlb's (or not this
    /// version's); nothing of it was used.
    #[error("{key}: {reason}")]
    Foreign {
        /// The key.
        key: String,
        /// Why it is refused.
        reason: String,
    },
    /// The writer or reader does not lead (any more): nothing was written.
    #[error("not the leader: {reason}")]
    NotLeader {
        /// Why.
        reason: String,
    },
}

/// Keys of one sanlb cluster.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Keys {
    prefix: String,
}

impl Keys {
    /// Checks and normalises a prefix: it starts with `/`, ends with `/`
    /// (added if missing), and holds no whitespace or control character.
    fn new(prefix: &str) -> Result<Self, ClusterError> {
        let bad = |reason: &str| ClusterError::Setting {
            setting: "etcd prefix",
            reason: format!("{prefix:?}: {reason}"),
        };
        if !prefix.starts_with('/') {
            return Err(bad("must start with /"));
        }
        if prefix.chars().any(|c| c.is_whitespace() || c.is_control()) {
            return Err(bad("holds whitespace or a control character"));
        }
        if prefix.len() > 256 {
            return Err(bad("longer than 256 bytes"));
        }
        let mut prefix = prefix.to_owned();
        if !prefix.ends_with('/') {
            prefix.push('/');
        }
        if prefix == "/" {
            return Err(bad("the whole key space: give one such as /sanlb/NAME/"));
        }
        Ok(Self { prefix })
    }

    fn leader(&self) -> String {
        format!("{}{LEADER}", self.prefix)
    }

    fn state(&self) -> String {
        format!("{}{STATE}", self.prefix)
    }
}

/// A connection to etcd, checked at creation, and sanlb's keys there.
///
/// Cheap to clone (one shared HTTP/2 channel per endpoint).
#[derive(Clone)]
pub struct Etcd {
    client: Client,
    endpoints: Arc<str>,
    keys: Arc<Keys>,
    timeout: Duration,
}

impl std::fmt::Debug for Etcd {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Etcd")
            .field("endpoints", &self.endpoints)
            .field("prefix", &self.keys.prefix)
            .field("timeout", &self.timeout)
            .finish()
    }
}

impl Etcd {
    /// Connects to etcd at `endpoints` (`http://HOST:PORT`), checks that it
    /// answers within `timeout`, and that every key under `prefix` is
    /// sanlb's. Each later request is given `timeout` too.
    ///
    /// An unreachable etcd is an error naming every endpoint; a foreign key
    /// under the prefix one naming the key.
    pub async fn connect(
        endpoints: &[String],
        prefix: &str,
        timeout: Duration,
    ) -> Result<Self, ClusterError> {
        let keys = Keys::new(prefix)?;
        if timeout.is_zero() {
            return Err(ClusterError::Setting {
                setting: "etcd timeout",
                reason: "must be > 0".into(),
            });
        }
        if endpoints.is_empty() {
            return Err(ClusterError::Endpoint {
                endpoint: String::new(),
                reason: "no etcd endpoint given".into(),
            });
        }
        for e in endpoints {
            check_endpoint(e)?;
        }
        let joined: Arc<str> = endpoints.join(",").into();
        // etcd refuses HTTP/2 pings more often than every 5 s
        // (--grpc-keepalive-min-time) and any without a stream open; the
        // pings only find connections that died silently (a partition),
        // every request has its own timeout below.
        let options = ConnectOptions::new()
            .with_connect_timeout(timeout)
            .with_keep_alive(Duration::from_secs(6), timeout)
            .with_require_leader(true);
        let client =
            match tokio::time::timeout(timeout, Client::connect(endpoints, Some(options))).await {
                Ok(Ok(c)) => c,
                Ok(Err(source)) => {
                    return Err(ClusterError::Etcd {
                        what: "connecting".into(),
                        endpoints: joined.to_string(),
                        source,
                    });
                }
                Err(_) => {
                    return Err(ClusterError::Timeout {
                        what: "connecting".into(),
                        endpoints: joined.to_string(),
                        timeout,
                    });
                }
            };
        let etcd = Self {
            client,
            endpoints: joined,
            keys: Arc::new(keys),
            timeout,
        };
        etcd.check().await?;
        Ok(etcd)
    }

    /// Lists the keys under the prefix and refuses any that is not
    /// sanlb's (named in the error).
    pub async fn check(&self) -> Result<(), ClusterError> {
        let prefix = self.keys.prefix.clone();
        let mut kv = self.client.kv_client();
        let resp = self
            .call(
                format!("listing the keys under {prefix}"),
                kv.get(
                    prefix.as_bytes(),
                    Some(GetOptions::new().with_prefix().with_keys_only()),
                ),
            )
            .await?;
        for item in resp.kvs() {
            let key = String::from_utf8_lossy(item.key());
            let name = &key[prefix.len().min(key.len())..];
            if name != LEADER && name != STATE {
                return Err(ClusterError::Foreign {
                    key: key.into_owned(),
                    reason: format!(
                        "not a key of sanlb under the prefix {prefix} (another program's, or another sanlb cluster's prefix inside this one?)"
                    ),
                });
            }
        }
        Ok(())
    }

    /// The prefix, ending with `/`.
    pub fn prefix(&self) -> &str {
        &self.keys.prefix
    }

    /// Every endpoint, comma-separated.
    pub fn endpoints(&self) -> &str {
        &self.endpoints
    }

    /// The time each request is given.
    pub fn timeout(&self) -> Duration {
        self.timeout
    }

    /// The leader key.
    pub fn leader_key(&self) -> String {
        self.keys.leader()
    }

    /// The state key.
    pub fn state_key(&self) -> String {
        self.keys.state()
    }

    /// Who leads now, as etcd says (for `sanlb status`): `None` when nobody
    /// does.
    pub async fn leader(&self) -> Result<Option<LeaderRecord>, ClusterError> {
        let key = self.keys.leader();
        let mut kv = self.client.kv_client();
        let resp = self
            .call(format!("reading {key}"), kv.get(key.as_bytes(), None))
            .await?;
        resp.kvs()
            .first()
            .map(|item| LeaderRecord::parse(&key, item.value()))
            .transpose()
    }

    /// The underlying client (for tests and tools that inspect etcd).
    pub fn client(&self) -> &Client {
        &self.client
    }

    /// Runs one request with the timeout, naming `what` and the endpoints
    /// in any error.
    async fn call<T>(
        &self,
        what: impl Into<String>,
        fut: impl Future<Output = Result<T, etcd_client::Error>>,
    ) -> Result<T, ClusterError> {
        match tokio::time::timeout(self.timeout, fut).await {
            Ok(Ok(t)) => Ok(t),
            Ok(Err(source)) => Err(ClusterError::Etcd {
                what: what.into(),
                endpoints: self.endpoints.to_string(),
                source,
            }),
            Err(_) => Err(ClusterError::Timeout {
                what: what.into(),
                endpoints: self.endpoints.to_string(),
                timeout: self.timeout,
            }),
        }
    }
}

/// An etcd client URL: `http://HOST:PORT` (this build has no TLS).
fn check_endpoint(endpoint: &str) -> Result<(), ClusterError> {
    let bad = |reason: &str| ClusterError::Endpoint {
        endpoint: endpoint.to_owned(),
        reason: reason.to_owned(),
    };
    let url = reqwest::Url::parse(endpoint).map_err(|e| bad(&e.to_string()))?;
    match url.scheme() {
        "http" => {}
        "https" => return Err(bad("https is not supported by this build (no TLS)")),
        other => return Err(bad(&format!("scheme {other}, expected http"))),
    }
    if url.host_str().is_none_or(str::is_empty) {
        return Err(bad("no host"));
    }
    if url.port().is_none() {
        return Err(bad("no port (etcd's client port is usually 2379)"));
    }
    if url.path() != "/" || url.query().is_some() || !url.username().is_empty() {
        return Err(bad("expected http://HOST:PORT and nothing more"));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefixes_are_checked_and_normalised() {
        assert_eq!(Keys::new("/sanlb/a").unwrap().prefix, "/sanlb/a/");
        assert_eq!(Keys::new("/sanlb/a/").unwrap().leader(), "/sanlb/a/leader");
        assert_eq!(Keys::new("/x").unwrap().state(), "/x/state");
        for bad in ["", "sanlb/", "/", "//x y/", "/a\n"] {
            let e = Keys::new(bad).unwrap_err().to_string();
            assert!(e.starts_with("etcd prefix: "), "{e}");
        }
    }

    #[test]
    fn endpoints_are_checked() {
        check_endpoint("http://127.0.0.1:2379").unwrap();
        check_endpoint("http://etcd1.example:2379").unwrap();
        for bad in [
            "127.0.0.1:2379",
            "https://127.0.0.1:2379",
            "http://127.0.0.1",
            "http://127.0.0.1:2379/v3",
            "http://u:p@127.0.0.1:2379",
            "",
        ] {
            let e = check_endpoint(bad).unwrap_err().to_string();
            assert!(e.contains(&format!("{bad:?}")), "{e}");
        }
    }
}
