//! Runs a [`Controller`]: the HTTP API on a listener, the rebalance timer
//! and the lease timer.

use std::{net::SocketAddr, sync::Arc, time::Duration};

use tokio::{net::TcpListener, task::JoinHandle, time::Instant};

use super::{
    Controller, ControllerError, Rebalance, Trigger,
    http::{self, AppState},
};

/// A running controller.
#[derive(Debug)]
pub struct Server {
    addr: SocketAddr,
    state: Arc<AppState>,
    serve: JoinHandle<()>,
    timers: JoinHandle<()>,
}

impl Server {
    /// Serves `controller` on `listener` to clients presenting `token`.
    pub fn start(
        controller: Controller,
        token: String,
        listener: TcpListener,
    ) -> Result<Self, ControllerError> {
        let addr = listener
            .local_addr()
            .map_err(|source| ControllerError::Serve {
                addr: "the listener".into(),
                source,
            })?;
        let state = AppState::new(controller, token);
        let app = http::app(state.clone()).into_make_service_with_connect_info::<SocketAddr>();
        let closing = state.clone();
        let serve = tokio::spawn(async move {
            let r = axum::serve(listener, app)
                .with_graceful_shutdown(async move { closing.closed().await })
                .await;
            if let Err(e) = r {
                tracing::error!(error = %e, "serving stopped");
            }
        });
        let timers = tokio::spawn(timers(state.clone()));
        tracing::info!(%addr, "controller listening");
        Ok(Self {
            addr,
            state,
            serve,
            timers,
        })
    }

    /// The address it listens on.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The shared state (for tests and the binary).
    pub fn state(&self) -> &Arc<AppState> {
        &self.state
    }

    /// Stops serving (long polls end at once), waits at most 5 s for
    /// requests in flight, and saves the state.
    pub async fn stop(self) {
        self.state.close();
        self.timers.abort();
        let _ = self.timers.await;
        let abort = self.serve.abort_handle();
        if tokio::time::timeout(Duration::from_secs(5), self.serve)
            .await
            .is_err()
        {
            abort.abort();
        }
        if let Err(e) = self.state.lock().save() {
            tracing::error!(error = %crate::error_chain(&e), "saving the state on shutdown");
        }
    }
}

async fn timers(state: Arc<AppState>) {
    let cfg = state.lock().config().clone();
    let mut rebalance = tokio::time::interval_at(Instant::now() + cfg.interval, cfg.interval);
    rebalance.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut lease = tokio::time::interval(
        (cfg.lease / 10).clamp(Duration::from_millis(20), Duration::from_secs(1)),
    );
    lease.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            () = state.closed() => return,
            _ = rebalance.tick() => {
                let plan = {
                    let mut c = state.lock();
                    let now = std::time::Instant::now();
                    c.expire(now);
                    c.close_interval();
                    c.start_rebalance(Trigger::Interval)
                };
                run(&state, plan).await;
            }
            _ = lease.tick() => {
                let plan = {
                    let mut c = state.lock();
                    if c.expire(std::time::Instant::now()) { c.start_rebalance(Trigger::Failover) } else { None }
                };
                run(&state, plan).await;
            }
        }
    }
}

async fn run(state: &Arc<AppState>, job: Option<Rebalance>) {
    let Some(job) = job else { return };
    // The solver is CPU-bound and time-limited: off the async workers.
    let solved = tokio::task::spawn_blocking(move || {
        let r = job.solve();
        (job, r)
    })
    .await;
    match solved {
        Ok((job, Ok((solution, took)))) => {
            state
                .lock()
                .finish_rebalance(&job, &solution, took, std::time::Instant::now());
        }
        Ok((_, Err(e))) => tracing::error!(error = %e, "the optimiser refused the problem"),
        Err(e) => tracing::error!(error = %e, "the optimiser panicked"),
    }
}
