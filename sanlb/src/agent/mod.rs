//! The agent's side of the protocol: read the counters every interval,
//! report them, apply the share the controller hands back.
//!
//! [`Agent`] is generic over where counters come from ([`CounterSource`]:
//! the data plane, or synthetic snapshots in tests) and over how addresses
//! are held ([`AddressOwner`]: rtnetlink on a gateway, in memory in tests).
//!
//! Rules it keeps:
//! - **reconcile**: every share it accepts is applied as an exact set with
//!   [`reconcile`]: addresses it holds but the share lacks are released
//!   first, then the missing ones acquired. It only ever sees the addresses
//!   the owner manages ([`AddressOwner::owned`]), so it never touches others;
//! - **acknowledge**: after applying a share completely it reports at once
//!   with `applied` = that generation, which is what lets the controller
//!   hand a released address to its new owner (break-before-make);
//! - **fail-static**: when the controller cannot be reached, or hands out no
//!   address set, it keeps what it holds and keeps counting;
//! - **monotonic**: a share older than the one applied is ignored;
//! - **pair mode** (a share with a pair map, [`Agent::with_pairs`]): the
//!   portal answers from the share before its addresses are reconciled, and
//!   the share is acknowledged only once the connections it names are
//!   ended (`pairs.rs`).

pub mod client;
pub mod metrics;
pub mod pairs;

use std::{
    collections::BTreeSet,
    future::Future,
    net::IpAddr,
    time::{Duration, Instant},
};

pub use client::{Client, ClientError};
pub use pairs::{PairOptions, SessionEnder, ShareDirector, SockDiag};
use tracing::Instrument as _;

use crate::{
    dataplane::{Dataplane, DataplaneError, PinnedMaps, Snapshot, Stats},
    enforce::{AddressOwner, reconcile},
    proto::{EnforceCounters, Flow, MAX_FLOWS_PER_REPORT, Report, Share},
};

/// Errors of the agent loop.
#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    /// Reading the counters failed.
    #[error("reading the counters")]
    Counters(#[source] DataplaneError),
    /// The controller could not be reached or refused.
    #[error(transparent)]
    Client(#[from] ClientError),
    /// The addresses held could not be listed: no report is sent, since
    /// it would misstate them.
    #[error("listing the storage addresses held")]
    Owned(#[source] crate::enforce::EnforceError),
}

/// The programs' statistics: (ingress, egress).
pub type HookStats = (Stats, Stats);

/// Where an agent's cumulative counters come from.
pub trait CounterSource: Send {
    /// The cumulative counters now.
    fn flows(&mut self) -> Result<Vec<Flow>, AgentError>;

    /// The counters with the programs' statistics (ingress, egress), for
    /// the agent's `/metrics`; sources without programs have none.
    fn read(&mut self) -> Result<(Vec<Flow>, Option<HookStats>), AgentError> {
        Ok((self.flows()?, None))
    }
}

fn snapshot_flows(s: Snapshot) -> Vec<Flow> {
    s.flows
        .into_iter()
        .map(|f| Flow {
            initiator: f.initiator,
            target: f.target,
            to_target_bytes: f.counters.to_target_bytes,
            to_initiator_bytes: f.counters.to_initiator_bytes,
        })
        .collect()
}

fn snapshot_read(s: Snapshot) -> (Vec<Flow>, Option<HookStats>) {
    let hooks = (s.ingress, s.egress);
    (snapshot_flows(s), Some(hooks))
}

impl CounterSource for Dataplane {
    fn flows(&mut self) -> Result<Vec<Flow>, AgentError> {
        self.snapshot()
            .map(snapshot_flows)
            .map_err(AgentError::Counters)
    }

    fn read(&mut self) -> Result<(Vec<Flow>, Option<HookStats>), AgentError> {
        self.snapshot()
            .map(snapshot_read)
            .map_err(AgentError::Counters)
    }
}

impl CounterSource for PinnedMaps {
    fn flows(&mut self) -> Result<Vec<Flow>, AgentError> {
        self.snapshot()
            .map(snapshot_flows)
            .map_err(AgentError::Counters)
    }

    fn read(&mut self) -> Result<(Vec<Flow>, Option<HookStats>), AgentError> {
        self.snapshot()
            .map(snapshot_read)
            .map_err(AgentError::Counters)
    }
}

/// How an agent reports.
#[derive(Clone, Debug)]
pub struct AgentConfig {
    /// Gateway name.
    pub gateway: String,
    /// Relative capacity.
    pub capacity: f64,
    /// Report period.
    pub interval: Duration,
    /// Longest wait of one long poll for a new share.
    pub long_poll: Duration,
}

/// Random id of one agent run.
pub fn new_boot_id() -> String {
    format!("{:032x}", rand::random::<u128>())
}

/// One gateway's agent.
#[derive(Debug)]
pub struct Agent<C, A> {
    cfg: AgentConfig,
    client: Client,
    counters: C,
    owner: A,
    boot_id: String,
    started: Instant,
    seq: u64,
    /// Last counters read and when (agent time, ms): resent when a read fails
    /// so the report still carries liveness and acknowledgements.
    last_flows: Vec<Flow>,
    last_read_ms: u64,
    /// What the owner listed for the last report.
    reported_owned: Option<BTreeSet<IpAddr>>,
    applied: u64,
    seen: u64,
    enforce: EnforceCounters,
    truncated_warned: bool,
    /// Pair mode, when enabled.
    pairs: Option<pairs::PairSide>,
    no_pairs_warned: bool,
    stats: metrics::SharedStats,
}

impl<C: CounterSource, A: AddressOwner> Agent<C, A> {
    /// An agent that starts a new boot now.
    pub fn new(cfg: AgentConfig, client: Client, counters: C, owner: A) -> Self {
        Self {
            cfg,
            client,
            counters,
            owner,
            boot_id: new_boot_id(),
            started: Instant::now(),
            seq: 0,
            last_flows: Vec::new(),
            last_read_ms: 0,
            reported_owned: None,
            applied: 0,
            seen: 0,
            enforce: EnforceCounters::default(),
            truncated_warned: false,
            pairs: None,
            no_pairs_warned: false,
            stats: metrics::SharedStats::default(),
        }
    }

    /// Serves pair mode when a share carries a pair map (without this,
    /// such a share is never acknowledged).
    pub fn with_pairs(mut self, options: PairOptions) -> Self {
        self.pairs = Some(pairs::PairSide::new(options));
        self
    }

    /// The pair-mode portal's counters, once it runs.
    pub fn portal_metrics(&self) -> Option<crate::portal::PortalMetrics> {
        self.pairs
            .as_ref()
            .and_then(pairs::PairSide::portal_metrics)
    }

    /// Where the pair-mode portal listens (none before it runs).
    pub fn portal_listening(&self) -> Vec<std::net::SocketAddr> {
        self.pairs
            .as_ref()
            .map(pairs::PairSide::portal_listening)
            .unwrap_or_default()
    }

    /// What `/metrics` shows, updated by the loop ([`metrics::serve`]).
    pub fn stats(&self) -> metrics::SharedStats {
        self.stats.clone()
    }

    fn note(&self, f: impl FnOnce(&mut metrics::AgentStats)) {
        let mut s = self.stats.lock().unwrap_or_else(|p| p.into_inner());
        f(&mut s);
    }

    /// Generation of the last share applied completely.
    pub fn applied(&self) -> u64 {
        self.applied
    }

    /// Gives the counter source back (to detach the data plane).
    pub fn into_counters(self) -> C {
        self.counters
    }

    /// Reports, then applies the reply; when that applied a new generation,
    /// reports again at once to acknowledge it.
    pub async fn cycle(&mut self) -> Result<(), AgentError> {
        // Pair mode: connections that must not run here are ended again
        // (a login that raced a move, a host that bypassed the portal).
        if let Some(p) = &self.pairs
            && p.sweep().await.is_err()
        {
            self.enforce.failed += 1;
        }
        if self.report_and_apply().await? {
            self.report_and_apply().await?;
        }
        Ok(())
    }

    async fn report_and_apply(&mut self) -> Result<bool, AgentError> {
        let report = self.build_report().await?;
        let reply = match self.client.report(&report).await {
            Ok(r) => r,
            Err(e) => {
                self.note(|s| {
                    s.report_failures += 1;
                    s.reachable = false;
                });
                return Err(e.into());
            }
        };
        let held = report.owned.len();
        self.note(|s| {
            s.reports += 1;
            s.reachable = true;
            s.held = held;
        });
        let applied = self.apply(&reply.share).await;
        let (g, e) = (self.applied, self.enforce);
        self.note(|s| {
            s.applied = g;
            s.enforce = e;
        });
        Ok(applied)
    }

    async fn build_report(&mut self) -> Result<Report, AgentError> {
        match self.counters.read() {
            Ok((mut flows, hooks)) => {
                let bytes = flows.iter().fold([0u64; 2], |acc, f| {
                    [
                        acc[0].wrapping_add(f.to_target_bytes),
                        acc[1].wrapping_add(f.to_initiator_bytes),
                    ]
                });
                let (n, gateway) = (flows.len(), self.cfg.gateway.clone());
                self.note(|s| {
                    s.gateway = gateway;
                    s.hooks = hooks;
                    s.flows = n;
                    s.bytes = bytes;
                });
                if flows.len() > MAX_FLOWS_PER_REPORT {
                    if !self.truncated_warned {
                        tracing::warn!(
                            flows = flows.len(),
                            max = MAX_FLOWS_PER_REPORT,
                            "too many flows for one report: sending the largest"
                        );
                        self.truncated_warned = true;
                    }
                    flows.sort_by_key(|f| {
                        std::cmp::Reverse(f.to_target_bytes.saturating_add(f.to_initiator_bytes))
                    });
                    flows.truncate(MAX_FLOWS_PER_REPORT);
                }
                self.last_flows = flows;
                self.last_read_ms = self.started.elapsed().as_millis() as u64;
            }
            Err(e) => {
                self.note(|s| s.read_failures += 1);
                tracing::warn!(error = %crate::error_chain(&e), "reading the counters failed: resending the last ones");
            }
        }
        // What it holds is what acknowledges a release: never guess it (an
        // empty list would complete a move while the address is still here).
        let owned: Vec<IpAddr> = match self.owner.owned().await {
            Ok(o) => {
                let v = o.iter().copied().collect();
                self.reported_owned = Some(o);
                v
            }
            Err(e) => {
                self.reported_owned = None;
                self.enforce.failed += 1;
                return Err(AgentError::Owned(e));
            }
        };
        let seq = self.seq;
        self.seq += 1;
        Ok(Report {
            gateway: self.cfg.gateway.clone(),
            boot_id: self.boot_id.clone(),
            seq,
            uptime_ms: self.last_read_ms,
            capacity: self.cfg.capacity,
            applied: self.applied,
            owned,
            enforce: self.enforce,
            flows: self.last_flows.clone(),
        })
    }

    /// Applies `share` if it is not older than the last applied one and
    /// carries an address set. Returns whether a new generation was applied.
    pub async fn apply(&mut self, share: &Share) -> bool {
        self.seen = self.seen.max(share.generation);
        if share.generation < self.applied {
            tracing::warn!(
                generation = share.generation,
                applied = self.applied,
                "ignoring a share older than the one applied"
            );
            return false;
        }
        let Some(addresses) = &share.addresses else {
            return false;
        };
        let want: BTreeSet<IpAddr> = addresses.iter().copied().collect();

        // The reply to a report about exactly this set, in a generation
        // already applied: nothing to do (a new generation, or any drift of
        // the NIC, is reconciled).
        if share.generation <= self.applied && self.reported_owned.as_ref() == Some(&want) {
            return false;
        }
        let mut pairs_ok = true;
        if let Some(pair_map) = &share.pairs {
            let Some(p) = &mut self.pairs else {
                if !self.no_pairs_warned {
                    tracing::error!(
                        generation = share.generation,
                        "a pair-mode share, but this agent does not serve pair mode: not applied"
                    );
                    self.no_pairs_warned = true;
                }
                return false;
            };
            pairs_ok = p.prepare(share, pair_map);
        }
        let generation = share.generation;
        let started = Instant::now();
        // The owner logs every acquire and release with its timing; the span
        // adds the generation they belong to.
        let span = tracing::info_span!("share", generation);
        let report = match reconcile(&self.owner, &want).instrument(span).await {
            Ok(r) => r,
            Err(e) => {
                tracing::error!(generation, error = %crate::error_chain(&e), "share not applied");
                self.enforce.failed += 1;
                return false;
            }
        };
        self.enforce.released += report.released.len() as u64;
        self.enforce.acquired += report.acquired.len() as u64;
        self.enforce.failed += report.failed.len() as u64;
        if !report.released.is_empty() || !report.acquired.is_empty() || !report.failed.is_empty() {
            tracing::info!(
                generation,
                released = ?report.released,
                acquired = ?report.acquired,
                failed = report.failed.len(),
                ms = started.elapsed().as_secs_f64() * 1000.0,
                "applied share"
            );
        }
        if let (Some(p), Some(pair_map)) = (&mut self.pairs, &share.pairs) {
            pairs_ok &= p.finish(share, pair_map).await;
        }
        if !pairs_ok {
            self.enforce.failed += 1;
        }
        if report.is_complete() && pairs_ok && generation > self.applied {
            self.applied = generation;
            return true;
        }
        false
    }

    /// Runs until `shutdown` resolves: a report every interval, and a long
    /// poll that picks up new shares between reports.
    pub async fn run(&mut self, shutdown: impl Future<Output = ()>) {
        let mut shutdown = std::pin::pin!(shutdown);
        let mut tick = tokio::time::interval(self.cfg.interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut poll = std::pin::pin!(long_poll(
            self.client.clone(),
            self.cfg.gateway.clone(),
            self.boot_id.clone(),
            self.seen,
            self.cfg.long_poll,
            Duration::ZERO
        ));
        let mut unreachable = false;
        loop {
            tokio::select! {
                () = &mut shutdown => return,
                _ = tick.tick() => {
                    match self.cycle().await {
                        Ok(()) => {
                            if unreachable {
                                tracing::info!("reporting again");
                                unreachable = false;
                            }
                        }
                        Err(e) => {
                            if !unreachable {
                                tracing::warn!(error = %crate::error_chain(&e), "no report: keeping the addresses held, counting on");
                                unreachable = true;
                            }
                        }
                    }
                }
                r = &mut poll => {
                    let delay = match r {
                        Ok(share) => {
                            if self.apply(&share).await
                                && let Err(e) = self.cycle().await
                            {
                                tracing::debug!(error = %crate::error_chain(&e), "acknowledging failed");
                            }
                            Duration::ZERO
                        }
                        // Back off: the report loop says what is wrong.
                        Err(_) => self.cfg.interval,
                    };
                    poll.set(long_poll(self.client.clone(), self.cfg.gateway.clone(), self.boot_id.clone(), self.seen, self.cfg.long_poll, delay));
                }
            }
        }
    }
}

async fn long_poll(
    client: Client,
    gateway: String,
    boot_id: String,
    after: u64,
    wait: Duration,
    delay: Duration,
) -> Result<Share, ClientError> {
    tokio::time::sleep(delay).await;
    client.share(&gateway, &boot_id, after, wait).await
}
