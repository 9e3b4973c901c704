//! The controller's clock: lease checks (every lease/10) and the rebalance
//! period. Solves run off this path, on the blocking pool, and report back
//! through a channel, so lease checks stay on time while the optimiser
//! works, and a failover never waits behind a periodic rebalance: one solve
//! of each kind may be in flight at once (a failover adopted meanwhile makes
//! the periodic one's answer superseded).

use std::{sync::Arc, time::Duration};

use tokio::{sync::mpsc, time::Instant};

use super::{Rebalance, Trigger, http::AppState};
use crate::optimize::{OptimizeError, Solution};

type Solved = (Rebalance, Result<(Solution, Duration), SolveError>);

/// Why a solve gave no map.
#[derive(Debug, thiserror::Error)]
enum SolveError {
    #[error(transparent)]
    Refused(#[from] OptimizeError),
    #[error("the optimiser panicked: {0}")]
    Panicked(String),
}

/// Solves in flight, by kind.
#[derive(Default)]
struct InFlight {
    interval: bool,
    failover: bool,
    pin: bool,
}

impl InFlight {
    fn slot(&mut self, trigger: Trigger) -> &mut bool {
        match trigger {
            Trigger::Interval => &mut self.interval,
            Trigger::Failover => &mut self.failover,
            Trigger::Pin => &mut self.pin,
        }
    }
}

/// Lease checks between this and 1 s, a tenth of the lease.
pub(super) fn lease_tick(lease: Duration) -> Duration {
    (lease / 10).clamp(Duration::from_millis(20), Duration::from_secs(1))
}

/// Runs until the state is closed.
pub(super) async fn run(state: Arc<AppState>) {
    let cfg = state.lock().config().clone();
    let mut rebalance = tokio::time::interval_at(Instant::now() + cfg.interval, cfg.interval);
    rebalance.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut lease = tokio::time::interval(lease_tick(cfg.lease));
    lease.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let (done_tx, mut done_rx) = mpsc::channel::<Solved>(4);
    let mut in_flight = InFlight::default();
    loop {
        let job = tokio::select! {
            () = state.closed() => return,
            _ = rebalance.tick() => {
                let mut c = state.lock();
                let now = std::time::Instant::now();
                c.expire(now);
                c.close_interval();
                if in_flight.interval {
                    None
                } else {
                    c.start_rebalance_at(Trigger::Interval, now)
                }
            }
            _ = lease.tick() => {
                let mut c = state.lock();
                let now = std::time::Instant::now();
                let failover = c.expire(now);
                if failover && !in_flight.failover {
                    c.start_rebalance_at(Trigger::Failover, now)
                } else if !failover && !in_flight.pin && c.pins_unmet() {
                    // A pin not met (new, or its gateway back): only the
                    // pinned routes move, also while paused.
                    c.start_rebalance_at(Trigger::Pin, now)
                } else {
                    None
                }
            }
            Some((job, result)) = done_rx.recv() => {
                *in_flight.slot(job.trigger()) = false;
                match result {
                    Ok((solution, took)) => {
                        state
                            .lock()
                            .finish_rebalance(&job, &solution, took, std::time::Instant::now());
                    }
                    Err(e) => {
                        tracing::error!(error = %e, trigger = ?job.trigger(), "no new map");
                        state.lock().count_error("solver");
                    }
                }
                None
            }
        };
        if let Some(job) = job {
            *in_flight.slot(job.trigger()) = true;
            spawn_solve(job, done_tx.clone());
        }
    }
}

/// The optimiser is CPU-bound and time-limited: on the blocking pool. A
/// panic in it (a bug) is reported like a refusal: the map in force stays,
/// the controller keeps serving and checking leases, and the next period
/// tries again.
fn spawn_solve(job: Rebalance, done: mpsc::Sender<Solved>) {
    tokio::task::spawn_blocking(move || {
        let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| job.solve()))
            .map_err(|p| {
                let what = p
                    .downcast_ref::<&str>()
                    .map(|s| (*s).to_owned())
                    .or_else(|| p.downcast_ref::<String>().cloned())
                    .unwrap_or_default();
                SolveError::Panicked(what)
            })
            .and_then(|r| r.map_err(SolveError::from));
        // The receiver is gone only when the controller is stopping.
        let _ = done.blocking_send((job, result));
    });
}
