//! Several controllers, one leader elected through etcd (`crate::cluster`),
//! the state in etcd: what a controller does as leader, as follower, and
//! in between.
//!
//! - **Leader**: on each new term it loads the state from etcd (a read
//!   guarded by the term), checks it like the state file
//!   ([`Saved::validate`]), and starts over from it as a restarted
//!   controller would: the generation and the map with its moves in flight,
//!   a fresh lease for every gateway, the start-up grace before steering
//!   (a lease: every gateway reports in first). Writes go through
//!   `persist.rs`, guarded by the term. Shares carry addresses only while
//!   the term runs by the clock ([`Term::is_valid`]).
//! - **Follower**: keeps no state and no clock; answers agents' reports,
//!   shares and `/v1/status` with `307 Temporary Redirect` to the leader's
//!   advertised URL (`Location`, and a JSON error naming it). Agents follow
//!   it only to a controller they were given (`agent::client`).
//! - **No leader known** (etcd unreachable, a term just ended, a leader
//!   being loaded): `503` with the reason; agents keep what they hold.
//!
//! Why the new leader's generation is above anything handed out: a share
//! carries only a generation the store acknowledged (`persist.rs`), every
//! store write is guarded by the writer's term, and the new leader's read
//! is a guarded transaction after it created its leader key, which no
//! write of an older term can follow. So the stored generation bounds
//! every generation any gateway was handed; the new leader hands out
//! nothing during its grace and bumps the generation when it ends.

use std::{sync::Arc, time::Instant};

use axum::{
    Json,
    http::{HeaderValue, StatusCode, Uri, header},
    response::{IntoResponse, Response},
};
use tokio::sync::{Notify, watch};

use super::{
    Controller, ControllerError,
    http::AppState,
    persist::{Backend, Remote},
    store::Saved,
};
use crate::{
    cluster::{ClusterError, ElectorConfig, Etcd, Role, StateStore, Term},
    proto::{ApiError, ClusterStatus},
};

/// What a controller needs to run in a cluster: a connection to etcd and
/// how it campaigns (see [`super::server::Options::cluster`]).
#[derive(Clone, Debug)]
pub struct Cluster {
    /// etcd, connected and checked.
    pub etcd: Etcd,
    /// The URL it advertises while it leads, and its lease's TTL.
    pub elector: ElectorConfig,
}

/// What the HTTP handlers know of the cluster.
#[derive(Debug)]
pub struct ClusterView {
    role: watch::Receiver<Role>,
    advertise: String,
    etcd: String,
}

impl ClusterView {
    pub(super) fn new(role: watch::Receiver<Role>, advertise: String, etcd: &Etcd) -> Self {
        Self {
            role,
            advertise,
            etcd: format!("{} {}", etcd.endpoints(), etcd.prefix()),
        }
    }

    /// The role now, with the clock applied: a leader whose term ran out
    /// does not lead.
    pub fn role(&self) -> Role {
        match self.role.borrow().clone() {
            Role::Leader(t) if !t.is_valid() => Role::Unknown {
                reason: format!("term {} over", t.revision()),
            },
            role => role,
        }
    }

    fn status(&self, role: &Role) -> ClusterStatus {
        let (name, leader, term, reason) = match role {
            Role::Leader(t) => (
                "leader",
                Some(self.advertise.clone()),
                Some(t.revision()),
                None,
            ),
            Role::Follower { leader, revision } => {
                ("follower", Some(leader.clone()), Some(*revision), None)
            }
            Role::Unknown { reason } => ("unknown", None, None, Some(reason.clone())),
        };
        ClusterStatus {
            role: name.into(),
            leader,
            term,
            advertise: self.advertise.clone(),
            etcd: self.etcd.clone(),
            reason,
        }
    }
}

fn refusal(status: StatusCode, message: String) -> Response {
    (status, Json(ApiError { error: message })).into_response()
}

impl AppState {
    /// Why this controller does not serve `uri` (an agent's request or
    /// `/v1/status`): a redirect to the leader, or `503` when no leader is
    /// known or this one is still loading the state. `None`: serve it.
    pub(super) fn not_here(&self, uri: &Uri) -> Option<Response> {
        let view = self.cluster.as_ref()?;
        let role = view.role();
        match &role {
            Role::Leader(term) => {
                if self.lock().leads_in(term) {
                    None
                } else {
                    Some(refusal(
                        StatusCode::SERVICE_UNAVAILABLE,
                        format!(
                            "no leader yet: {} is taking over (loading the state from etcd)",
                            view.advertise
                        ),
                    ))
                }
            }
            Role::Follower { leader, .. } if *leader == view.advertise => Some(refusal(
                StatusCode::SERVICE_UNAVAILABLE,
                format!(
                    "no leader: etcd names this controller ({leader}) from a former run; waiting for that lease to expire"
                ),
            )),
            Role::Follower { leader, .. } => {
                let target = format!(
                    "{}{}",
                    leader.trim_end_matches('/'),
                    uri.path_and_query().map_or("/", |p| p.as_str())
                );
                let mut resp = refusal(
                    StatusCode::TEMPORARY_REDIRECT,
                    format!("not the leader: the leader is {leader}"),
                );
                if let Ok(v) = HeaderValue::from_str(&target) {
                    resp.headers_mut().insert(header::LOCATION, v);
                }
                Some(resp)
            }
            Role::Unknown { reason } => Some(refusal(
                StatusCode::SERVICE_UNAVAILABLE,
                format!("no leader: {reason}"),
            )),
        }
    }

    /// The cluster part of `/v1/status`.
    pub(super) fn cluster_status(&self) -> Option<ClusterStatus> {
        let view = self.cluster.as_ref()?;
        Some(view.status(&view.role()))
    }

    /// `sanlb_cluster_leader` for `/metrics` (empty for a single
    /// controller).
    pub(super) fn cluster_metrics(&self) -> String {
        let Some(view) = &self.cluster else {
            return String::new();
        };
        let leads = matches!(view.role(), Role::Leader(_));
        format!(
            "# HELP sanlb_cluster_leader Whether this controller leads its cluster (etcd).\n# TYPE sanlb_cluster_leader gauge\nsanlb_cluster_leader {}\n",
            u8::from(leads)
        )
    }
}

impl Controller {
    /// Makes this controller a follower persisting to etcd, woken through
    /// `wake` (at the start of a cluster's server).
    pub(super) fn stand_by(&mut self, wake: Arc<Notify>) -> Result<(), ControllerError> {
        self.restart(Backend::Etcd(Remote::new(wake, None)), None, Instant::now())
    }

    /// Whether this controller holds the state of `term`.
    pub(super) fn leads_in(&self, term: &Term) -> bool {
        matches!(&self.backend, Backend::Etcd(r) if r.term.as_ref() == Some(term))
    }

    /// Starts over from `saved` (etcd's state, checked) as the leader of
    /// `term`.
    fn lead(
        &mut self,
        saved: Option<Saved>,
        term: Term,
        now: Instant,
    ) -> Result<(), ControllerError> {
        let wake = self.waker();
        let revision = term.revision();
        self.restart(Backend::Etcd(Remote::new(wake, Some(term))), saved, now)?;
        tracing::info!(
            term = revision,
            generation = self.generation,
            gateways = self.gateways.len(),
            routes = self.routes.len(),
            moving = self.routes.moves_in_flight(),
            grace_ms = self.cfg.lease.as_millis() as u64,
            "leading: state loaded from etcd, steering after the start-up grace"
        );
        Ok(())
    }

    /// Drops the state: another controller leads, or nobody.
    fn follow(&mut self, why: &str) {
        let wake = self.waker();
        tracing::info!(%why, "not leading: handing out nothing");
        // Without a saved state the configuration was checked at start.
        if let Err(e) = self.restart(Backend::Etcd(Remote::new(wake, None)), None, Instant::now()) {
            tracing::error!(error = %crate::error_chain(&e), "dropping the state");
        }
    }

    fn waker(&self) -> Arc<Notify> {
        match &self.backend {
            Backend::Etcd(r) => r.waker(),
            _ => Arc::new(Notify::new()),
        }
    }

    /// Replaces the whole state by one built from `saved`, keeping what
    /// outlives a term: the long polls' channel, the counters of events,
    /// and an epoch above the last (a solve started for the old state is
    /// superseded).
    fn restart(
        &mut self,
        backend: Backend,
        saved: Option<Saved>,
        now: Instant,
    ) -> Result<(), ControllerError> {
        let mut fresh = Self::build(self.cfg.clone(), backend, saved, now)?;
        fresh.epoch += self.epoch + 1;
        fresh.events = std::mem::take(&mut self.events);
        std::mem::swap(&mut fresh.notify, &mut self.notify);
        let persisted = fresh.persisted;
        *self = fresh;
        self.notify.send_replace(persisted);
        Ok(())
    }
}

/// Checks a state read from etcd like the state file: whole, in range,
/// in this controller's mode. The error names the key.
pub fn check_state(key: &str, saved: &Saved, mode: crate::proto::Mode) -> Result<(), ClusterError> {
    let foreign = |reason: String| ClusterError::Foreign {
        key: key.to_owned(),
        reason,
    };
    saved.validate().map_err(|reason| {
        foreign(format!(
            "{reason} (refusing to lead from it; fix or delete the key)"
        ))
    })?;
    if saved.mode != mode {
        return Err(foreign(format!(
            "holds a {}-mode map, the controller runs in {mode} mode (delete the key to start afresh)",
            saved.mode
        )));
    }
    Ok(())
}

/// Follows the elector's role: loads the state on each new term, drops it
/// when the term ends. Ends with an error only when etcd holds a state
/// this controller must not lead from.
pub(super) async fn run(
    state: Arc<AppState>,
    mut role: watch::Receiver<Role>,
    store: StateStore,
) -> Result<(), String> {
    loop {
        let now = role.borrow_and_update().clone();
        let leading = match now {
            Role::Leader(term) if term.is_valid() => {
                if !state.lock().leads_in(&term) {
                    take_lead(&state, &store, &term).await?;
                }
                Some(term)
            }
            other => {
                let active = state.lock().backend.active();
                if active {
                    let why = match &other {
                        Role::Leader(t) => format!("term {} over", t.revision()),
                        r => r.to_string(),
                    };
                    state.lock().follow(&why);
                }
                None
            }
        };
        // The term ends by the clock even if the elector has not said so
        // yet (a paused process, an etcd that stopped answering).
        let left = leading.as_ref().map(Term::remaining);
        tokio::select! {
            () = state.closed() => return Ok(()),
            changed = role.changed() => {
                if changed.is_err() {
                    return Err("the elector stopped".into());
                }
            }
            () = async {
                match left {
                    Some(d) => tokio::time::sleep(d + std::time::Duration::from_millis(1)).await,
                    None => std::future::pending().await,
                }
            } => {}
        }
    }
}

/// Loads the state as the leader of `term` and starts over from it;
/// retries a failed read while the term runs.
async fn take_lead(state: &AppState, store: &StateStore, term: &Term) -> Result<(), String> {
    let started = Instant::now();
    while term.is_valid() {
        match store.load(term).await {
            Ok(saved) => {
                let mode = state.lock().cfg.mode;
                if let Some(s) = &saved {
                    check_state(store.key(), s, mode).map_err(|e| e.to_string())?;
                }
                let mut c = state.lock();
                if !term.is_valid() {
                    break;
                }
                c.lead(saved, term.clone(), Instant::now())
                    .map_err(|e| crate::error_chain(&e))?;
                tracing::debug!(ms = started.elapsed().as_secs_f64() * 1e3, "took the lead");
                return Ok(());
            }
            Err(e @ ClusterError::Foreign { .. }) => return Err(e.to_string()),
            Err(ClusterError::NotLeader { .. }) => break,
            Err(e) => {
                tracing::warn!(error = %crate::error_chain(&e), "loading the state from etcd: retrying");
                tokio::time::sleep(std::time::Duration::from_millis(100)).await;
            }
        }
    }
    tracing::warn!(
        term = term.revision(),
        "term over before the state was loaded"
    );
    Ok(())
}
