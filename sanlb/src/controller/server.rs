//! Runs a [`Controller`]: the HTTP API on a listener, and its clock
//! (`timers.rs`).

use std::{net::SocketAddr, sync::Arc, time::Duration};

use tokio::{net::TcpListener, task::JoinHandle};

use super::{
    Controller, ControllerError,
    http::{self, AppState},
    timers,
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
        let timers = tokio::spawn(timers::run(state.clone()));
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
