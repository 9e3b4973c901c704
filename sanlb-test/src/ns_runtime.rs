//! A tokio runtime whose threads all live in one network namespace.
//!
//! Sockets belong to the namespace of the thread that opens them. Every
//! thread of this runtime `setns()`s into the namespace when it starts, so a
//! task spawned with [`NsRuntime::run`] opens its sockets there, the way the
//! agent does when it runs inside a gateway's namespace. Futures driven with
//! [`NsRuntime::block_on`] run on the calling (test) thread, which stays in
//! the root namespace: that is fine for objects whose sockets were opened
//! already, and shows they work from any thread.

use std::{
    fs::File,
    future::Future,
    os::{fd::AsRawFd as _, unix::fs::MetadataExt as _},
    sync::{Arc, mpsc},
    time::Duration,
};

use tokio::runtime::Runtime;

/// How long one [`NsRuntime::run`] may take before the test fails.
const RUN_LIMIT: Duration = Duration::from_secs(120);

/// See the module docs.
pub struct NsRuntime {
    rt: Option<Runtime>,
    netns: String,
}

impl NsRuntime {
    /// A runtime with one worker in `/run/netns/<netns>`.
    pub fn enter(netns: &str) -> Self {
        let path = format!("/run/netns/{netns}");
        let file = Arc::new(File::open(&path).unwrap_or_else(|e| panic!("opening {path}: {e}")));
        let want_ino = file.metadata().unwrap().ino();
        let ns_fd = Arc::clone(&file);
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .on_thread_start(move || {
                // SAFETY: setns(2) on a valid namespace descriptor; it changes
                // only this thread's network namespace.
                let r = unsafe { libc::setns(ns_fd.as_raw_fd(), libc::CLONE_NEWNET) };
                if r != 0 {
                    eprintln!("setns: {}", std::io::Error::last_os_error());
                    std::process::abort();
                }
            })
            .build()
            .expect("building a runtime");
        let me = Self {
            rt: Some(rt),
            netns: netns.to_owned(),
        };
        let ino = me.run(async { std::fs::metadata("/proc/thread-self/ns/net").unwrap().ino() });
        assert_eq!(ino, want_ino, "runtime threads are not in {netns}");
        me
    }

    fn rt(&self) -> &Runtime {
        self.rt.as_ref().expect("runtime is running")
    }

    /// Runs `f` on a thread of the namespace and waits for it (bounded).
    pub fn run<F>(&self, f: F) -> F::Output
    where
        F: Future + Send + 'static,
        F::Output: Send + 'static,
    {
        let (tx, rx) = mpsc::channel();
        self.rt().spawn(async move {
            let _ = tx.send(f.await);
        });
        rx.recv_timeout(RUN_LIMIT).unwrap_or_else(|e| {
            panic!(
                "a task in {} did not finish within {RUN_LIMIT:?}: {e}",
                self.netns
            )
        })
    }

    /// Spawns `f` in the namespace; it runs until it ends or the runtime is
    /// dropped.
    pub fn spawn<F>(&self, f: F)
    where
        F: Future<Output = ()> + Send + 'static,
    {
        self.rt().spawn(f);
    }

    /// Drives `f` on the calling thread with this runtime's IO and timers
    /// (bounded).
    pub fn block_on<F: Future>(&self, f: F) -> F::Output {
        self.rt()
            .block_on(async { tokio::time::timeout(RUN_LIMIT, f).await })
            .unwrap_or_else(|_| panic!("a call did not finish within {RUN_LIMIT:?}"))
    }
}

impl Drop for NsRuntime {
    fn drop(&mut self) {
        if let Some(rt) = self.rt.take() {
            rt.shutdown_timeout(Duration::from_secs(2));
        }
    }
}
