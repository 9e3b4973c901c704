//! The portal's counters.

use std::sync::atomic::{AtomicU64, Ordering};

use serde::Serialize;

/// A snapshot of a portal's counters since it was created, for the
/// integrator to render (Prometheus, status pages).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct PortalMetrics {
    /// Connections accepted and served.
    pub connections: u64,
    /// Connections closed at once because the portal was at
    /// [`max_connections`](super::PortalConfig::max_connections) or the peer
    /// at [`max_connections_per_peer`](super::PortalConfig::max_connections_per_peer).
    pub connections_refused: u64,
    /// Connections being served now.
    pub connections_active: u64,
    /// Complete login requests of normal sessions (the director was asked).
    pub logins: u64,
    /// Redirects sent (Status 0x0101).
    pub redirects: u64,
    /// Logins the director held at least once.
    pub holds: u64,
    /// Held logins answered "service unavailable" after the hold timeout.
    pub hold_timeouts: u64,
    /// Discovery sessions logged in (login completed).
    pub discovery_sessions: u64,
    /// SendTargets requests answered.
    pub send_targets: u64,
    /// Logouts answered.
    pub logouts: u64,
    /// Connections ended by an error or a refusal, by reason.
    pub rejects: RejectCounts,
}

/// Why connections were refused or cut, one counter a reason.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct RejectCounts {
    /// The first PDU was not a Login Request (closed without an answer).
    pub not_login: u64,
    /// A malformed PDU or text (answered "initiator error" or Reject).
    pub malformed: u64,
    /// A PDU above the size limits, or a text or exchange above the count
    /// limits.
    pub oversized: u64,
    /// InitiatorName, or TargetName in a normal session, missing.
    pub missing_key: u64,
    /// Version-min above 0.
    pub unsupported_version: u64,
    /// A SessionType other than Normal and Discovery.
    pub unsupported_session_type: u64,
    /// A discovery session that would not go without authentication.
    pub authentication: u64,
    /// The director refused the login, or redirected it to an address no
    /// host can log in to (unspecified, multicast, port 0, the portal
    /// itself), which is answered 0x0300 "target error".
    pub director: u64,
    /// A login, PDU or connection timeout.
    pub timeout: u64,
    /// The peer closed or reset the connection before the exchange ended.
    pub peer_closed: u64,
    /// Any other socket error.
    pub io: u64,
}

macro_rules! counters {
    ($name:ident { $($field:ident),* $(,)? } rejects { $($r:ident),* $(,)? }) => {
        /// The live counters behind [`PortalMetrics`].
        #[derive(Debug, Default)]
        pub(crate) struct $name {
            $(pub(crate) $field: AtomicU64,)*
            $(pub(crate) $r: AtomicU64,)*
        }

        impl $name {
            pub(crate) fn snapshot(&self) -> PortalMetrics {
                PortalMetrics {
                    $($field: self.$field.load(Ordering::Relaxed),)*
                    rejects: RejectCounts {
                        $($r: self.$r.load(Ordering::Relaxed),)*
                    },
                }
            }
        }
    };
}

counters!(Counters {
    connections, connections_refused, connections_active, logins, redirects, holds,
    hold_timeouts, discovery_sessions, send_targets, logouts,
} rejects {
    not_login, malformed, oversized, missing_key, unsupported_version,
    unsupported_session_type, authentication, director, timeout, peer_closed, io,
});

pub(crate) fn bump(counter: &AtomicU64) {
    counter.fetch_add(1, Ordering::Relaxed);
}

pub(crate) fn drop_one(counter: &AtomicU64) {
    counter.fetch_sub(1, Ordering::Relaxed);
}
