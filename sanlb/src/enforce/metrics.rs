//! Counters of one address owner, for the agent to expose.

use std::{
    sync::atomic::{AtomicU64, Ordering},
    time::Duration,
};

use serde::Serialize;

/// A snapshot of an owner's counters since it was created.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct EnforceMetrics {
    /// Successful [`acquire`](super::AddressOwner::acquire) calls (each one
    /// announces, also when the address was already there).
    pub acquires: u64,
    /// Successful [`release`](super::AddressOwner::release) calls that removed
    /// an address.
    pub releases: u64,
    /// Announcement frames sent: gratuitous ARPs (two a round) and NAs.
    pub announce_packets: u64,
    /// Failed acquire calls (nothing new is left on the NIC).
    pub acquire_failures: u64,
    /// Failed release calls.
    pub release_failures: u64,
    /// Announcement rounds after the first that could not be sent (the
    /// address stays; the first round went out).
    pub announce_failures: u64,
    /// Duration of the last successful acquire: from the call to the address
    /// being on the NIC and the first announcement round sent.
    pub last_acquire: Option<Duration>,
    /// Duration of the last successful release.
    pub last_release: Option<Duration>,
}

/// The live counters behind [`EnforceMetrics`].
#[derive(Debug, Default)]
pub(crate) struct Counters {
    pub(crate) acquires: AtomicU64,
    pub(crate) releases: AtomicU64,
    pub(crate) announce_packets: AtomicU64,
    pub(crate) acquire_failures: AtomicU64,
    pub(crate) release_failures: AtomicU64,
    pub(crate) announce_failures: AtomicU64,
    /// Nanoseconds plus one; 0 means never.
    last_acquire_ns: AtomicU64,
    /// See `last_acquire_ns`.
    last_release_ns: AtomicU64,
}

impl Counters {
    pub(crate) fn add(counter: &AtomicU64, n: u64) {
        counter.fetch_add(n, Ordering::Relaxed);
    }

    pub(crate) fn acquired(&self, took: Duration) {
        Self::add(&self.acquires, 1);
        self.last_acquire_ns.store(encode(took), Ordering::Relaxed);
    }

    pub(crate) fn released(&self, took: Duration) {
        Self::add(&self.releases, 1);
        self.last_release_ns.store(encode(took), Ordering::Relaxed);
    }

    pub(crate) fn snapshot(&self) -> EnforceMetrics {
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        EnforceMetrics {
            acquires: get(&self.acquires),
            releases: get(&self.releases),
            announce_packets: get(&self.announce_packets),
            acquire_failures: get(&self.acquire_failures),
            release_failures: get(&self.release_failures),
            announce_failures: get(&self.announce_failures),
            last_acquire: decode(get(&self.last_acquire_ns)),
            last_release: decode(get(&self.last_release_ns)),
        }
    }
}

fn encode(d: Duration) -> u64 {
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX - 1) + 1
}

fn decode(v: u64) -> Option<Duration> {
    v.checked_sub(1).map(Duration::from_nanos)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn snapshot_reflects_counters() {
        let c = Counters::default();
        assert_eq!(c.snapshot(), EnforceMetrics::default());
        c.acquired(Duration::from_micros(1500));
        c.acquired(Duration::ZERO);
        Counters::add(&c.announce_packets, 6);
        c.released(Duration::from_millis(2));
        Counters::add(&c.release_failures, 1);
        assert_eq!(
            c.snapshot(),
            EnforceMetrics {
                acquires: 2,
                releases: 1,
                announce_packets: 6,
                release_failures: 1,
                last_acquire: Some(Duration::ZERO),
                last_release: Some(Duration::from_millis(2)),
                ..EnforceMetrics::default()
            }
        );
    }
}
