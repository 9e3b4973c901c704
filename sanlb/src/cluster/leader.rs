//! The election: a create-if-absent leader key attached to a lease, the
//! lease renewed one keep-alive at a time against a deadline on the boot
//! clock, the key watched by everyone (see the module above for why).

use std::{
    fmt,
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::Duration,
};

use etcd_client::{
    Compare, CompareOp, EventType, KeyValue, PutOptions, ResponseHeader, Txn, TxnOp, TxnOpResponse,
    WatchOptions,
};
use serde::{Deserialize, Serialize};
use tokio::sync::{oneshot, watch};

use super::{ClusterError, DEFAULT_TTL, Etcd, clock};

/// Version of the leader record.
pub const RECORD_VERSION: u32 = 1;

/// The value of the leader key: who leads.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LeaderRecord {
    /// [`RECORD_VERSION`].
    pub version: u32,
    /// The URL agents and `sanlb status` reach the leader at.
    pub advertise: String,
}

impl LeaderRecord {
    /// Parses the value of `key`; anything else than a record of this
    /// version is refused, naming the key.
    pub(super) fn parse(key: &str, bytes: &[u8]) -> Result<Self, ClusterError> {
        let foreign = |reason: String| ClusterError::Foreign {
            key: key.to_owned(),
            reason,
        };
        let r: Self = serde_json::from_slice(bytes)
            .map_err(|e| foreign(format!("not a sanlb leader record: {e}")))?;
        if r.version != RECORD_VERSION {
            return Err(foreign(format!(
                "leader record version {}, this controller reads {RECORD_VERSION}",
                r.version
            )));
        }
        Ok(r)
    }
}

/// Settings of an [`Elector`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ElectorConfig {
    /// The URL agents and `sanlb status` reach this controller at
    /// (`http://HOST:PORT`), published while it leads.
    pub advertise: String,
    /// Time-to-live of the lease: how long the others wait for a leader
    /// that vanished without resigning. Whole seconds.
    pub ttl: Duration,
}

impl ElectorConfig {
    /// `advertise` with the default TTL.
    pub fn new(advertise: impl Into<String>) -> Self {
        Self {
            advertise: advertise.into(),
            ttl: DEFAULT_TTL,
        }
    }

    /// Checks the settings; the error names the one at fault.
    pub fn validate(&self) -> Result<(), ClusterError> {
        let ttl = |reason: &str| ClusterError::Setting {
            setting: "leader ttl",
            reason: format!("{:?}: {reason}", self.ttl),
        };
        if self.ttl.subsec_nanos() != 0 {
            return Err(ttl("whole seconds only (etcd's leases count in seconds)"));
        }
        if !(1..=3600).contains(&self.ttl.as_secs()) {
            return Err(ttl("must be 1 s to 1 h"));
        }
        let advertise = |reason: String| ClusterError::Setting {
            setting: "advertise",
            reason: format!("{:?}: {reason}", self.advertise),
        };
        if self.advertise.len() > 512 {
            return Err(advertise("longer than 512 bytes".into()));
        }
        let url = reqwest::Url::parse(&self.advertise).map_err(|e| advertise(e.to_string()))?;
        if !matches!(url.scheme(), "http" | "https") || url.host_str().is_none_or(str::is_empty) {
            return Err(advertise("expected http://HOST:PORT".into()));
        }
        Ok(())
    }
}

/// One term of leadership: the lease and the create revision of the
/// leader key, which every guarded write compares, and the moment (on the
/// boot clock) until which this process may believe it leads.
#[derive(Clone, Debug)]
pub struct Term {
    lease: i64,
    revision: i64,
    /// Nanoseconds of [`clock::now`] until which the term runs; 0 once it
    /// ended. Shared by every copy, so ending it ends them all.
    until: Arc<AtomicU64>,
}

impl PartialEq for Term {
    fn eq(&self, other: &Self) -> bool {
        self.lease == other.lease && self.revision == other.revision
    }
}

impl Eq for Term {}

impl Term {
    pub(super) fn new(lease: i64, revision: i64, until: Duration) -> Self {
        Self {
            lease,
            revision,
            until: Arc::new(AtomicU64::new(nanos(until))),
        }
    }

    /// The lease the leader key is attached to.
    pub fn lease(&self) -> i64 {
        self.lease
    }

    /// The create revision of the leader key: unique to this term, and
    /// growing from one term to the next (a fencing token).
    pub fn revision(&self) -> i64 {
        self.revision
    }

    /// Whether the term still runs, by the clock now: false once no
    /// keep-alive was answered for `ttl/2`, or the leader stepped down.
    pub fn is_valid(&self) -> bool {
        !self.remaining().is_zero()
    }

    /// Time left before the term ends unless a keep-alive is answered.
    pub fn remaining(&self) -> Duration {
        let until = self.until.load(Ordering::Acquire);
        Duration::from_nanos(until.saturating_sub(nanos(clock::now())))
    }

    /// Moves the end to `until` (never back, never after the term ended).
    fn extend(&self, until: Duration) {
        let until = nanos(until);
        let _ = self
            .until
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |cur| {
                (cur != 0 && until > cur).then_some(until)
            });
    }

    /// Ends the term, in every copy.
    fn end(&self) {
        self.until.store(0, Ordering::Release);
    }
}

fn nanos(d: Duration) -> u64 {
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)
}

/// What this controller is in the cluster.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Role {
    /// Not known: etcd does not answer, the leader key is not sanlb's, or
    /// this controller just stepped down. Nobody should be told to follow
    /// anyone on its word.
    Unknown {
        /// Why, for people.
        reason: String,
    },
    /// Another controller leads.
    Follower {
        /// The leader's advertised URL.
        leader: String,
        /// The create revision of its leader key.
        revision: i64,
    },
    /// This controller leads, for as long as [`Term::is_valid`].
    Leader(Term),
}

impl Role {
    /// The term, if this controller leads and its term still runs by the
    /// clock now.
    pub fn term(&self) -> Option<&Term> {
        match self {
            Self::Leader(t) if t.is_valid() => Some(t),
            _ => None,
        }
    }

    /// Whether this controller leads now (see [`Role::term`]).
    pub fn is_leader(&self) -> bool {
        self.term().is_some()
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Unknown { reason } => write!(f, "unknown ({reason})"),
            Self::Follower { leader, revision } => {
                write!(f, "follower of {leader} (term {revision})")
            }
            Self::Leader(t) if t.is_valid() => {
                write!(f, "leader (term {}, lease {:x})", t.revision, t.lease)
            }
            Self::Leader(t) => write!(f, "former leader (term {} over)", t.revision),
        }
    }
}

/// Campaigns for leadership in the background and publishes this
/// controller's [`Role`].
///
/// Dropping it stops campaigning without resigning, like a process killed
/// with SIGKILL: the others wait for the lease to expire. Call
/// [`Elector::resign`] on an orderly shutdown.
#[derive(Debug)]
pub struct Elector {
    role: watch::Receiver<Role>,
    stop: Option<oneshot::Sender<()>>,
    task: Option<tokio::task::JoinHandle<()>>,
}

impl Elector {
    /// Starts campaigning in a task on the current tokio runtime (panics
    /// outside one).
    pub fn start(etcd: &Etcd, cfg: ElectorConfig) -> Result<Self, ClusterError> {
        cfg.validate()?;
        let record = serde_json::to_vec(&LeaderRecord {
            version: RECORD_VERSION,
            advertise: cfg.advertise.clone(),
        })
        .expect("the leader record serialises");
        let (tx, role) = watch::channel(Role::Unknown {
            reason: "starting".into(),
        });
        let (stop, stopped) = oneshot::channel();
        let campaign = Campaign {
            key: etcd.leader_key(),
            etcd: etcd.clone(),
            ttl: cfg.ttl,
            record,
            tx,
            stale: None,
        };
        let task = tokio::spawn(campaign.run(stopped));
        Ok(Self {
            role,
            stop: Some(stop),
            task: Some(task),
        })
    }

    /// A receiver of every change of role. A [`Role::Leader`] it holds
    /// stays valid only while [`Role::term`] says so: check at each use.
    pub fn subscribe(&self) -> watch::Receiver<Role> {
        self.role.clone()
    }

    /// The role now, with the clock applied: a leader whose term ran out
    /// is [`Role::Unknown`] even before the background task noticed.
    pub fn role(&self) -> Role {
        let role = self.role.borrow().clone();
        match role {
            Role::Leader(t) if !t.is_valid() => Role::Unknown {
                reason: format!("term {} over", t.revision),
            },
            role => role,
        }
    }

    /// Stops campaigning; a leader revokes its lease first, which deletes
    /// the leader key so another controller takes over at once.
    pub async fn resign(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(task) = self.task.take() {
            let _ = task.await;
        }
    }
}

impl Drop for Elector {
    fn drop(&mut self) {
        if let Some(task) = self.task.take() {
            task.abort();
        }
        if let Role::Leader(t) = &*self.role.borrow() {
            t.end();
        }
    }
}

/// What to do after a round of the campaign.
enum Next {
    /// Stop (resigned).
    Stop,
    /// Another round now (the leader key went away).
    Now,
    /// Another round after a pause (etcd did not answer).
    Later,
}

/// How a term ended.
enum Hold {
    Stop,
    Lost(String),
}

/// The background task of an [`Elector`].
struct Campaign {
    etcd: Etcd,
    key: String,
    ttl: Duration,
    record: Vec<u8>,
    tx: watch::Sender<Role>,
    /// The lease of a term this elector stepped down from, revoked as soon
    /// as etcd answers so the others need not wait for it to expire.
    stale: Option<i64>,
}

impl Campaign {
    async fn run(mut self, mut stop: oneshot::Receiver<()>) {
        loop {
            match self.round(&mut stop).await {
                Next::Stop => break,
                Next::Now => {}
                Next::Later => {
                    tokio::select! {
                        _ = &mut stop => break,
                        _ = tokio::time::sleep(self.ttl / 4) => {}
                    }
                }
            }
        }
        self.revoke_stale().await;
    }

    /// Finds the leader; campaigns if there is none; then follows or leads
    /// until that changes.
    async fn round(&mut self, stop: &mut oneshot::Receiver<()>) -> Next {
        self.revoke_stale().await;
        let mut kv = self.etcd.client.kv_client();
        let got = match self
            .etcd
            .call(
                format!("reading {}", self.key),
                kv.get(self.key.as_bytes(), None),
            )
            .await
        {
            Ok(r) => r,
            Err(e) => return self.unreachable(&e),
        };
        if let Some(item) = got.kvs().first() {
            self.follower(item);
            return self.follow(revision(got.header()), stop).await;
        }
        // Nobody leads: campaign.
        let sent = clock::now();
        let mut leases = self.etcd.client.lease_client();
        let grant = match self
            .etcd
            .call(
                "granting a lease",
                leases.grant(self.ttl.as_secs() as i64, None),
            )
            .await
        {
            Ok(g) => g,
            Err(e) => return self.unreachable(&e),
        };
        let lease = grant.id();
        // etcd may raise a short TTL to its minimum; the shorter is the
        // safe one to count with.
        let ttl = self.ttl.min(Duration::from_secs(grant.ttl().max(0) as u64));
        let key = self.key.as_bytes();
        let txn = Txn::new()
            .when([Compare::create_revision(key, CompareOp::Equal, 0)])
            .and_then([TxnOp::put(
                key,
                self.record.clone(),
                Some(PutOptions::new().with_lease(lease)),
            )])
            .or_else([TxnOp::get(key, None)]);
        let resp = match self
            .etcd
            .call(format!("creating {}", self.key), kv.txn(txn))
            .await
        {
            Ok(r) => r,
            Err(e) => {
                // It may have been created: revoking the lease undoes that.
                self.stale = Some(lease);
                return self.unreachable(&e);
            }
        };
        let rev = revision(resp.header());
        if resp.succeeded() {
            return self
                .lead(Term::new(lease, rev, sent + ttl / 2), ttl, stop)
                .await;
        }
        self.stale = Some(lease);
        self.revoke_stale().await;
        let current = resp.op_responses().into_iter().find_map(|r| match r {
            TxnOpResponse::Get(g) => g.kvs().first().cloned(),
            _ => None,
        });
        match current {
            Some(item) => {
                self.follower(&item);
                self.follow(rev, stop).await
            }
            None => Next::Now,
        }
    }

    /// Watches the leader key until it goes away (then campaigns) or etcd
    /// stops answering. A read every `ttl` notices an etcd that went
    /// silent, which a watch alone would not.
    async fn follow(&mut self, from: i64, stop: &mut oneshot::Receiver<()>) -> Next {
        let mut wc = self.etcd.client.watch_client();
        let options = WatchOptions::new().with_start_revision(from + 1);
        let mut events = match self
            .etcd
            .call(
                format!("watching {}", self.key),
                wc.watch(self.key.as_bytes(), Some(options)),
            )
            .await
        {
            Ok(s) => s,
            Err(e) => return self.unreachable(&e),
        };
        let mut recheck =
            tokio::time::interval_at(tokio::time::Instant::now() + self.ttl, self.ttl);
        let mut kv = self.etcd.client.kv_client();
        loop {
            tokio::select! {
                _ = &mut *stop => return Next::Stop,
                msg = events.message() => match msg {
                    Ok(Some(resp)) => {
                        if resp.canceled() {
                            self.unknown(format!("the watch of {} was cancelled: {}", self.key, resp.cancel_reason()));
                            return Next::Later;
                        }
                        for ev in resp.events() {
                            match ev.event_type() {
                                EventType::Delete => return Next::Now,
                                EventType::Put => {
                                    if let Some(item) = ev.kv() {
                                        self.follower(item);
                                    }
                                }
                            }
                        }
                    }
                    Ok(None) => {
                        self.unknown(format!("the watch of {} ended", self.key));
                        return Next::Later;
                    }
                    Err(e) => {
                        self.unknown(format!("the watch of {} broke: {e}", self.key));
                        return Next::Later;
                    }
                },
                _ = recheck.tick() => {
                    match self.etcd.call(format!("reading {}", self.key), kv.get(self.key.as_bytes(), None)).await {
                        Err(e) => return self.unreachable(&e),
                        Ok(r) => match r.kvs().first() {
                            None => return Next::Now,
                            Some(item) => self.follower(item),
                        },
                    }
                }
            }
        }
    }

    /// Leads until the term ends; resigns on stop.
    async fn lead(&mut self, term: Term, ttl: Duration, stop: &mut oneshot::Receiver<()>) -> Next {
        let lease = term.lease();
        self.publish(Role::Leader(term.clone()));
        let held = self.hold(&term, ttl, stop).await;
        term.end();
        match held {
            Hold::Stop => {
                self.publish(Role::Unknown {
                    reason: "resigned".into(),
                });
                self.stale = Some(lease);
                Next::Stop
            }
            Hold::Lost(reason) => {
                tracing::warn!(term = term.revision(), %reason, "stepped down");
                self.publish(Role::Unknown {
                    reason: format!("stepped down: {reason}"),
                });
                self.stale = Some(lease);
                Next::Now
            }
        }
    }

    /// Renews the lease every `ttl/6`, one keep-alive at a time, each
    /// answered within what is left of the term, and watches the leader
    /// key; returns why the term ended.
    async fn hold(&mut self, term: &Term, ttl: Duration, stop: &mut oneshot::Receiver<()>) -> Hold {
        let lease = term.lease();
        let half = ttl / 2;
        let unanswered = || {
            Hold::Lost(format!(
                "no keep-alive of lease {lease:x} answered within ttl/2 = {half:?} (paused, or etcd unreachable or too slow)"
            ))
        };
        let mut leases = self.etcd.client.lease_client();
        let sent = clock::now();
        // The first keep-alive is sent and answered inside this call.
        let (mut keeper, mut answers) =
            match tokio::time::timeout(term.remaining(), leases.keep_alive(lease)).await {
                Ok(Ok(k)) => k,
                Ok(Err(e)) => {
                    return Hold::Lost(format!("keep-alive of lease {lease:x} failed: {e}"));
                }
                Err(_) => return unanswered(),
            };
        term.extend(sent + half);
        let mut wc = self.etcd.client.watch_client();
        let options = WatchOptions::new().with_start_revision(term.revision() + 1);
        let mut events = match tokio::time::timeout(
            term.remaining(),
            wc.watch(self.key.as_bytes(), Some(options)),
        )
        .await
        {
            Ok(Ok(s)) => s,
            Ok(Err(e)) => return Hold::Lost(format!("cannot watch {}: {e}", self.key)),
            Err(_) => return unanswered(),
        };
        let tick = ttl / 6;
        let mut next = tokio::time::Instant::now() + tick;
        loop {
            tokio::select! {
                biased;
                _ = &mut *stop => return Hold::Stop,
                msg = events.message() => match msg {
                    Ok(Some(resp)) => {
                        if resp.canceled() {
                            return Hold::Lost(format!("the watch of {} was cancelled: {}", self.key, resp.cancel_reason()));
                        }
                        for ev in resp.events() {
                            match ev.event_type() {
                                EventType::Delete => return Hold::Lost(format!("{} was deleted", self.key)),
                                EventType::Put if ev.kv().map(KeyValue::lease) != Some(lease) => {
                                    return Hold::Lost(format!("{} was overwritten", self.key));
                                }
                                EventType::Put => {}
                            }
                        }
                    }
                    Ok(None) => return Hold::Lost(format!("the watch of {} ended", self.key)),
                    Err(e) => return Hold::Lost(format!("the watch of {} broke: {e}", self.key)),
                },
                _ = tokio::time::sleep_until(next) => {
                    next = tokio::time::Instant::now() + tick;
                    let sent = clock::now();
                    let left = term.remaining();
                    if left.is_zero() {
                        return unanswered();
                    }
                    let answer = tokio::time::timeout(left, async {
                        keeper.keep_alive().await?;
                        answers.message().await
                    })
                    .await;
                    match answer {
                        Err(_) => return unanswered(),
                        Ok(Err(e)) => return Hold::Lost(format!("keep-alive of lease {lease:x} failed: {e}")),
                        Ok(Ok(None)) => return Hold::Lost("etcd closed the keep-alive stream".into()),
                        Ok(Ok(Some(a))) if a.ttl() <= 0 => {
                            return Hold::Lost(format!("lease {lease:x} expired on etcd"));
                        }
                        Ok(Ok(Some(a))) => {
                            let granted = Duration::from_secs(a.ttl() as u64);
                            term.extend(sent + ttl.min(granted) / 2);
                        }
                    }
                }
            }
        }
    }

    /// Revokes the lease of a former term (best effort: kept for the next
    /// round when etcd does not answer; gone once etcd says so).
    async fn revoke_stale(&mut self) {
        let Some(lease) = self.stale else {
            return;
        };
        let mut leases = self.etcd.client.lease_client();
        match self
            .etcd
            .call(format!("revoking lease {lease:x}"), leases.revoke(lease))
            .await
        {
            Ok(_) => self.stale = None,
            Err(ClusterError::Etcd {
                source: etcd_client::Error::GRpcStatus(s),
                ..
            }) if s.message().contains("lease not found") => self.stale = None,
            Err(e) => tracing::debug!(error = %crate::error_chain(&e), "cannot revoke yet"),
        }
    }

    fn follower(&self, item: &KeyValue) {
        match LeaderRecord::parse(&self.key, item.value()) {
            Ok(r) => self.publish(Role::Follower {
                leader: r.advertise,
                revision: item.create_revision(),
            }),
            Err(e) => self.unknown(e.to_string()),
        }
    }

    fn unreachable(&self, e: &ClusterError) -> Next {
        self.unknown(crate::error_chain(e));
        Next::Later
    }

    fn unknown(&self, reason: String) {
        self.publish(Role::Unknown { reason });
    }

    fn publish(&self, role: Role) {
        self.tx.send_if_modified(|cur| {
            if *cur == role {
                return false;
            }
            tracing::info!(key = %self.key, role = %role, "cluster role");
            *cur = role;
            true
        });
    }
}

fn revision(header: Option<&ResponseHeader>) -> i64 {
    header.map_or(0, ResponseHeader::revision)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_term_runs_until_its_deadline_and_ends_in_every_copy() {
        let t = Term::new(7, 42, clock::now() + Duration::from_secs(60));
        let copy = t.clone();
        assert!(copy.is_valid());
        assert!(Role::Leader(copy.clone()).is_leader());
        t.extend(clock::now());
        assert!(copy.is_valid(), "never moved back");
        t.end();
        assert!(!copy.is_valid());
        assert!(!Role::Leader(copy.clone()).is_leader());
        t.extend(clock::now() + Duration::from_secs(60));
        assert!(!copy.is_valid(), "an ended term stays ended");
        let past = Term::new(7, 43, clock::now() - Duration::from_millis(1));
        assert!(!past.is_valid());
        assert_eq!(past.remaining(), Duration::ZERO);
    }

    #[test]
    fn settings_are_checked() {
        ElectorConfig::new("http://10.0.0.5:7390")
            .validate()
            .unwrap();
        let mut c = ElectorConfig::new("http://10.0.0.5:7390");
        c.ttl = Duration::from_millis(2500);
        assert!(
            c.validate()
                .unwrap_err()
                .to_string()
                .starts_with("leader ttl: ")
        );
        c.ttl = Duration::ZERO;
        assert!(
            c.validate()
                .unwrap_err()
                .to_string()
                .starts_with("leader ttl: ")
        );
        for bad in ["", "10.0.0.5:7390", "ftp://x:1", "http://"] {
            let e = ElectorConfig::new(bad).validate().unwrap_err().to_string();
            assert!(e.starts_with("advertise: "), "{e}");
        }
    }

    #[test]
    fn leader_records_are_checked() {
        let r =
            LeaderRecord::parse("/k/leader", br#"{"version":1,"advertise":"http://a:1"}"#).unwrap();
        assert_eq!(r.advertise, "http://a:1");
        for bad in [
            &b"garbage"[..],
            br#"{"version":2,"advertise":"http://a:1"}"#,
            br#"{"version":1,"advertise":"http://a:1","x":1}"#,
        ] {
            let e = LeaderRecord::parse("/k/leader", bad)
                .unwrap_err()
                .to_string();
            assert!(e.starts_with("/k/leader: "), "{e}");
        }
    }
}
