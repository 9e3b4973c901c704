//! Where the controller's state lives — nowhere (tests, benchmarks), the
//! state file, or etcd — and the rule that ties persisting to handing out.
//!
//! # The rule
//!
//! A share carries the last generation whose state is durable
//! ([`Controller::persisted`](super::Controller)), and addresses only when
//! that is the generation in memory (nothing changed since). So every
//! generation a gateway is handed, and every address set, was stored first,
//! with the moves in flight that go with it: a controller that resumes from
//! the store (a restart, or another controller taking the lead) knows every
//! move a gateway may be in the middle of, and no generation it hands out
//! can be one a gateway already saw with other contents.
//!
//! - **The file** is written synchronously under the controller's lock, in
//!   the step that bumped the generation (`flush`): the rule holds on return.
//! - **etcd** writes are a network round trip, so they leave the lock: the
//!   step that bumped the generation only wakes [`writer`]; the writer takes
//!   a snapshot ([`Saved`]) under the lock, writes it outside the lock in a
//!   transaction guarded by the term ([`StateStore::save`]), and only then,
//!   under the lock again, records the generation as durable and announces
//!   it to the long polls. Changes made meanwhile leave the state dirty:
//!   shares say "keep what you hold" until the writer has stored those too
//!   (a few milliseconds), never the unstored map.
//!
//! A controller writes to etcd only while it leads ([`Term::is_valid`]),
//! and etcd refuses a write of a term that ended, so a deposed leader
//! changes nothing; it hands out no addresses either
//! ([`Backend::may_hand_out`] reads the term's deadline on each share).

use std::sync::Arc;

use tokio::sync::Notify;

use super::{
    Controller,
    http::AppState,
    store::{Saved, Store},
};
use crate::cluster::{ClusterError, StateStore, Term};

/// Where the state is persisted.
#[derive(Debug)]
pub(super) enum Backend {
    /// Nowhere (tests, benchmarks).
    Memory,
    /// The state file, written under the lock.
    File(Store),
    /// etcd, written by [`writer`] while this controller leads.
    Etcd(Remote),
}

/// The etcd backend's side in the controller.
#[derive(Debug)]
pub(super) struct Remote {
    /// The term this controller leads in; `None` while it follows.
    pub(super) term: Option<Term>,
    /// Wakes the writer.
    wake: Arc<Notify>,
    /// The rates are due for a write (no new generation).
    rates_due: bool,
}

impl Remote {
    /// A follower's: no term, nothing written.
    pub(super) fn new(wake: Arc<Notify>, term: Option<Term>) -> Self {
        Self {
            term,
            wake,
            rates_due: false,
        }
    }

    /// Wakes the writer (it may have nothing to do).
    pub(super) fn wake(&self) {
        self.wake.notify_one();
    }

    /// The writer's wake-up.
    pub(super) fn waker(&self) -> Arc<Notify> {
        self.wake.clone()
    }
}

impl Backend {
    /// Whether this controller keeps the state (it is not a follower).
    pub(super) fn active(&self) -> bool {
        match self {
            Self::Memory | Self::File(_) => true,
            Self::Etcd(r) => r.term.is_some(),
        }
    }

    /// Whether shares may carry addresses now: always for a single
    /// controller; with etcd, while the term runs by the clock now.
    pub(super) fn may_hand_out(&self) -> bool {
        match self {
            Self::Memory | Self::File(_) => true,
            Self::Etcd(r) => r.term.as_ref().is_some_and(Term::is_valid),
        }
    }

    /// For logs.
    pub(super) fn describe(&self) -> String {
        match self {
            Self::Memory => "memory".into(),
            Self::File(s) => s.path().display().to_string(),
            Self::Etcd(_) => "etcd".into(),
        }
    }
}

/// One write of the state to etcd, as the writer takes it.
#[derive(Debug)]
pub(super) struct Write {
    term: Term,
    generation: u64,
    saved: Saved,
}

impl Controller {
    /// The last generation whose state is durable: what shares carry.
    pub fn persisted_generation(&self) -> u64 {
        self.persisted
    }

    /// The state of `generation` is durable: announce it, and end the
    /// dirty state if nothing changed since.
    pub(super) fn stored(&mut self, generation: u64) {
        self.persist_failed = false;
        self.persisted = self.persisted.max(generation);
        if generation == self.generation {
            self.dirty = false;
        }
        self.notify.send_replace(self.persisted);
    }

    /// A write failed: no changes are handed out until one succeeds (the
    /// lease checks retry it).
    pub(super) fn persist_error(&mut self, e: &dyn std::error::Error) {
        if !self.persist_failed {
            tracing::error!(error = %crate::error_chain(e), "cannot persist the state: handing out no changes until it can");
        }
        self.persist_failed = true;
        self.events.persist_failures += 1;
    }

    /// Refreshes the stored rates (no new generation): the file at once,
    /// etcd through the writer.
    pub(super) fn persist_rates(&mut self) {
        let saved = matches!(self.backend, Backend::File(_)).then(|| self.saved());
        match &mut self.backend {
            Backend::Memory => {}
            Backend::File(store) => {
                if let Some(Err(e)) = saved.map(|s| store.save(&s)) {
                    tracing::warn!(error = %crate::error_chain(&e), "cannot persist the rates");
                    self.events.persist_failures += 1;
                }
            }
            Backend::Etcd(remote) => {
                remote.rates_due = true;
                remote.wake();
            }
        }
    }

    /// What the writer should write now, if anything: the state, while
    /// this controller leads and it changed (or the rates are due).
    pub(super) fn take_write(&mut self) -> Option<Write> {
        let Backend::Etcd(remote) = &mut self.backend else {
            return None;
        };
        let term = remote.term.clone().filter(Term::is_valid)?;
        if !self.dirty && !remote.rates_due {
            return None;
        }
        remote.rates_due = false;
        Some(Write {
            term,
            generation: self.generation,
            saved: self.saved(),
        })
    }

    /// The outcome of `write`. Returns whether to write again at once (the
    /// state changed while it was written).
    pub(super) fn written(&mut self, write: &Write, result: Result<i64, ClusterError>) -> bool {
        let Backend::Etcd(remote) = &self.backend else {
            return false;
        };
        if remote.term.as_ref() != Some(&write.term) {
            // A write of a term this controller no longer leads in.
            return false;
        }
        match result {
            Ok(revision) => {
                if self.persist_failed {
                    tracing::info!("etcd takes writes again");
                }
                tracing::debug!(
                    generation = write.generation,
                    revision,
                    "state written to etcd"
                );
                self.stored(write.generation);
                self.dirty
            }
            Err(e @ ClusterError::NotLeader { .. }) => {
                // The term ended: the role's watcher makes this controller a
                // follower; nothing more to write as this leader.
                tracing::warn!(error = %e, "state not written");
                false
            }
            Err(e) => {
                self.persist_error(&e);
                false
            }
        }
    }
}

/// Writes the state to etcd whenever the controller wakes it, one write at
/// a time, until the server closes.
pub(super) async fn writer(state: Arc<AppState>, store: StateStore, wake: Arc<Notify>) {
    loop {
        tokio::select! {
            () = state.closed() => return,
            () = wake.notified() => {}
        }
        loop {
            let Some(write) = state.lock().take_write() else {
                break;
            };
            let result = store.save(&write.term, &write.saved).await;
            if !state.lock().written(&write, result) {
                break;
            }
        }
    }
}

/// The last write of a leader that stops: its rates and anything not yet
/// stored (best effort, within etcd's timeout).
pub(super) async fn last_write(state: &AppState, store: &StateStore) {
    let write = {
        let mut c = state.lock();
        if let Backend::Etcd(r) = &mut c.backend {
            r.rates_due = true;
        }
        c.take_write()
    };
    if let Some(write) = write {
        let result = store.save(&write.term, &write.saved).await;
        if let Err(e) = &result {
            tracing::warn!(error = %crate::error_chain(e), "last write of the state to etcd");
        }
        state.lock().written(&write, result);
    }
}

impl Controller {
    /// Stores the whole state now for a change that is not a new generation
    /// (the operator's controls): the file at once; etcd through the writer
    /// (a few milliseconds later, guarded by the term), refused when this
    /// controller does not lead. `Err` when it cannot be stored.
    pub(super) fn persist(&mut self) -> Result<(), ()> {
        let saved = matches!(self.backend, Backend::File(_)).then(|| self.saved());
        match &mut self.backend {
            Backend::Memory => {
                self.persist_failed = false;
                Ok(())
            }
            Backend::File(store) => match saved.map(|s| store.save(&s)) {
                Some(Err(e)) => {
                    self.persist_error(&e);
                    Err(())
                }
                _ => {
                    if self.persist_failed {
                        tracing::info!("state file writable again");
                    }
                    self.persist_failed = false;
                    Ok(())
                }
            },
            Backend::Etcd(remote) => {
                if !remote.term.as_ref().is_some_and(Term::is_valid) {
                    return Err(());
                }
                remote.rates_due = true;
                remote.wake();
                Ok(())
            }
        }
    }
}
