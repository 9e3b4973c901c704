//! Enforcement: a gateway takes and releases storage addresses on its
//! host-facing NIC and announces the ones it takes.
//!
//! [`AddressOwner`] is the seam between the agent's protocol logic (which
//! decides *when*: break-before-make, generations, fail-static) and the kernel
//! mechanics (rtnetlink, gratuitous ARP, unsolicited NA) that decide *how*.
//! [`NetlinkOwner`] is the real implementation on one NIC; [`reconcile`]
//! brings a NIC to a desired set of addresses, releases first.
//! [`end_connections`] ends the TCP connections of given peers on a local
//! address and port (sock_diag `SOCK_DESTROY`), so that their sessions
//! reconnect through the pair-mode portal ([`crate::portal`]).
//!
//! ```no_run
//! # async fn demo() -> Result<(), sanlb::enforce::EnforceError> {
//! use sanlb::enforce::{AddressOwner as _, NetlinkOwner, OwnerConfig, reconcile};
//!
//! // Inside the gateway's network namespace, inside a tokio runtime.
//! let owner = NetlinkOwner::new(OwnerConfig::new("eth0"))?;
//! let desired = ["198.18.1.50".parse().unwrap()].into();
//! let report = reconcile(&owner, &desired).await?;
//! assert!(report.is_complete());
//! owner.release("198.18.1.50".parse().unwrap()).await?;
//! # Ok(()) }
//! ```
//!
//! Invariants (tested in `sanlb/tests/enforce.rs`):
//! - only addresses carrying sanlb's marker (the address protocol number,
//!   [`OwnerConfig::proto`]) are listed, released or reconciled away; any
//!   other address on the NIC, its own above all, is never changed;
//! - refused input (an address that is not a unicast host address, a NIC that
//!   does not exist) changes nothing;
//! - after [`AddressOwner::release`] returns, no announcement for that
//!   address leaves this owner.

use std::{collections::BTreeSet, future::Future, net::IpAddr};

mod announce;
mod netlink;
mod probe;
mod reconcile;
mod sessions;

pub use netlink::{
    DEFAULT_ADDR_PROTO, DEFAULT_GARP_COUNT, DEFAULT_GARP_INTERVAL, MAX_GARP_COUNT,
    MAX_GARP_INTERVAL, NetlinkOwner, OwnerConfig,
};
pub use probe::{LinkState, ProbeSpec};
pub use reconcile::{ReconcileFailure, ReconcileOp, ReconcileReport, reconcile};
pub use sessions::{NETLINK_TIMEOUT, TcpConnection, connections, end_connections};

/// Errors of enforcement.
#[derive(Debug, thiserror::Error)]
pub enum EnforceError {
    /// The address cannot be a storage address (not a unicast host address).
    #[error("{addr}: not a storage address ({why})")]
    InvalidAddress {
        /// The address.
        addr: IpAddr,
        /// Why: multicast, loopback, link-local, unspecified, broadcast.
        why: &'static str,
    },
    /// The NIC does not exist.
    #[error("interface {0:?} does not exist")]
    NoSuchInterface(String),
    /// The NIC has no Ethernet address, so nothing can be announced on it.
    #[error(
        "interface {0:?} is not an Ethernet interface; storage addresses cannot be announced on it"
    )]
    NotEthernet(String),
    /// The address is configured already, but not by sanlb on this NIC: sanlb
    /// leaves it alone (it may be the NIC's own address, or an operator's).
    #[error(
        "{addr} is already configured on {iface} without sanlb's marker (address protocol \
         {proto}); sanlb does not touch addresses it does not manage"
    )]
    InUse {
        /// The address.
        addr: IpAddr,
        /// The interface it is configured on.
        iface: String,
        /// sanlb's marker that the address lacks.
        proto: u8,
    },
    /// The kernel accepted the address but dropped sanlb's marker (IFA_PROTO,
    /// Linux 5.18 and later); the address was removed again.
    #[error(
        "the kernel did not keep the address protocol of {addr} on {iface} (IFA_PROTO needs \
         Linux 5.18 or later); the address was removed again"
    )]
    MarkerUnsupported {
        /// The address.
        addr: IpAddr,
        /// The interface.
        iface: String,
    },
    /// An [`OwnerConfig`] field is out of range.
    #[error("invalid enforcement setting {field}: {why}")]
    InvalidConfig {
        /// The field (named as its command-line flag).
        field: &'static str,
        /// What is wrong with it.
        why: String,
    },
    /// [`NetlinkOwner::new`] was called outside a tokio runtime.
    #[error("the address owner of {0:?} must be created inside a tokio runtime")]
    NoRuntime(String),
    /// This owner cannot do what was asked (probing, say, on an owner
    /// with no data path).
    #[error("{0} is not supported by this address owner")]
    Unsupported(&'static str),
    /// sanlb refuses to remove an address it does not manage on the
    /// controller's order: it is not a host prefix on this NIC (the NIC's
    /// own address, say), or it is not there.
    #[error("{addr} on {iface}: {why}; not removed")]
    NotRemovable {
        /// The address.
        addr: IpAddr,
        /// The interface.
        iface: String,
        /// Why.
        why: String,
    },
    /// A netlink or socket operation failed.
    #[error("{what}")]
    Os {
        /// What was being done.
        what: String,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
}

/// Owns storage addresses on one NIC.
pub trait AddressOwner: Send + Sync {
    /// The storage addresses sanlb manages on the NIC now (never the NIC's
    /// own addresses).
    fn owned(&self) -> impl Future<Output = Result<BTreeSet<IpAddr>, EnforceError>> + Send;
    /// Adds `addr` (/32 or /128) and announces it. Idempotent.
    fn acquire(&self, addr: IpAddr) -> impl Future<Output = Result<(), EnforceError>> + Send;
    /// Removes `addr`. Idempotent; never touches an address sanlb does not manage.
    fn release(&self, addr: IpAddr) -> impl Future<Output = Result<(), EnforceError>> + Send;

    // The data path (issue 14). The defaults describe an owner that cannot
    // see it: its NIC is taken to be up, with no known MAC, and it cannot
    // probe; such an agent still reports and heartbeats, but is never asked
    // to probe.

    /// The NIC's state: up with a carrier, and its MAC.
    fn link(&self) -> impl Future<Output = Result<LinkState, EnforceError>> + Send {
        async {
            Ok(LinkState {
                up: true,
                mac: None,
            })
        }
    }

    /// Who answers for `spec.addrs` on the NIC's segment, and whether their
    /// storage service listens (see `probe.rs`). This NIC's own answers are
    /// not listed: a self-probe of held addresses lists the other holders.
    fn probe(
        &self,
        spec: &ProbeSpec,
    ) -> impl Future<Output = Result<Vec<crate::proto::ProbedAddress>, EnforceError>> + Send {
        let _ = spec;
        async { Err(EnforceError::Unsupported("probing")) }
    }

    /// Announces `addr`, which it holds, again (hosts' neighbour entries go
    /// back to this NIC after another station claimed the address).
    /// An address it does not hold is not announced.
    fn reannounce(&self, addr: IpAddr) -> impl Future<Output = Result<(), EnforceError>> + Send {
        let _ = addr;
        async { Ok(()) }
    }

    /// Removes `addr` from the NIC although it lacks sanlb's marker: the
    /// controller's order after a conflict, when the address is assigned to
    /// another gateway. The one exception to "sanlb only touches its own
    /// addresses"; only a host prefix (/32, /128) is ever removed this way.
    fn remove_unmanaged(
        &self,
        addr: IpAddr,
    ) -> impl Future<Output = Result<(), EnforceError>> + Send {
        let _ = addr;
        async { Err(EnforceError::Unsupported("removing unmanaged addresses")) }
    }
}

/// Checks that `addr` can be a storage address: a unicast address that one
/// gateway can own as a /32 or /128 and announce on an Ethernet segment.
///
/// Refused: unspecified, loopback, multicast, link-local (169.254/16,
/// fe80::/10), the limited broadcast 255.255.255.255, 0.0.0.0/8 ("this
/// network"), 240.0.0.0/4 (reserved), IPv4-mapped (`::ffff:a.b.c.d`) and
/// IPv4-compatible (`::a.b.c.d`) IPv6 addresses, and deprecated site-local
/// fec0::/10.
pub fn validate_storage_addr(addr: IpAddr) -> Result<(), EnforceError> {
    let why = match addr {
        IpAddr::V4(a) => {
            let [o0, o1, ..] = a.octets();
            if a.is_unspecified() {
                Some("unspecified")
            } else if a.is_broadcast() {
                Some("broadcast")
            } else if o0 == 0 {
                Some("\"this network\" 0.0.0.0/8")
            } else if a.is_loopback() {
                Some("loopback")
            } else if a.is_multicast() {
                Some("multicast")
            } else if o0 == 169 && o1 == 254 {
                Some("link-local")
            } else if o0 >= 240 {
                Some("reserved 240.0.0.0/4")
            } else {
                None
            }
        }
        IpAddr::V6(a) => {
            let s = a.segments();
            if a.is_unspecified() {
                Some("unspecified")
            } else if a.is_loopback() {
                Some("loopback")
            } else if a.is_multicast() {
                Some("multicast")
            } else if s[0] & 0xffc0 == 0xfe80 {
                Some("link-local")
            } else if s[0] & 0xffc0 == 0xfec0 {
                Some("deprecated site-local")
            } else if a.to_ipv4_mapped().is_some() {
                Some("IPv4-mapped; use the IPv4 address")
            } else if s[..6] == [0; 6] {
                Some("IPv4-compatible (deprecated)")
            } else {
                None
            }
        }
    };
    match why {
        Some(why) => Err(EnforceError::InvalidAddress { addr, why }),
        None => Ok(()),
    }
}

/// The prefix length of a host address: 32 or 128.
fn host_prefix_len(addr: IpAddr) -> u8 {
    match addr {
        IpAddr::V4(_) => 32,
        IpAddr::V6(_) => 128,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn refused(s: &str) -> &'static str {
        match validate_storage_addr(s.parse().unwrap()) {
            Err(EnforceError::InvalidAddress { addr, why }) => {
                assert_eq!(addr, s.parse::<IpAddr>().unwrap());
                why
            }
            other => panic!("{s}: expected InvalidAddress, got {other:?}"),
        }
    }

    #[test]
    fn refuses_what_cannot_be_a_storage_address() {
        for (s, why) in [
            ("0.0.0.0", "unspecified"),
            ("0.1.2.3", "\"this network\" 0.0.0.0/8"),
            ("127.0.0.1", "loopback"),
            ("127.255.0.9", "loopback"),
            ("224.0.0.1", "multicast"),
            ("239.1.2.3", "multicast"),
            ("169.254.0.1", "link-local"),
            ("169.254.255.254", "link-local"),
            ("255.255.255.255", "broadcast"),
            ("240.0.0.1", "reserved 240.0.0.0/4"),
            ("::", "unspecified"),
            ("::1", "loopback"),
            ("ff02::1", "multicast"),
            ("ff05::1:3", "multicast"),
            ("fe80::1", "link-local"),
            ("febf::1", "link-local"),
            ("fec0::1", "deprecated site-local"),
            ("::ffff:198.18.1.50", "IPv4-mapped; use the IPv4 address"),
            ("::198.18.1.50", "IPv4-compatible (deprecated)"),
        ] {
            assert_eq!(refused(s), why, "{s}");
        }
    }

    #[test]
    fn accepts_unicast_host_addresses() {
        for s in [
            "198.18.1.50",
            "198.19.255.254",
            "10.0.0.1",
            "192.168.1.255", // a /32 has no broadcast address of its own
            "1.1.1.1",
            "223.255.255.254",
            "169.253.0.1",
            "2001:2:0:1::50",
            "fd00::5",
            "fc00::1",
            "fe7f::1",
            "2001:db8::1",
            "::1:0:0:1", // outside ::/96
        ] {
            validate_storage_addr(s.parse().unwrap()).unwrap_or_else(|e| panic!("{s}: {e}"));
        }
    }

    #[test]
    fn error_names_the_address() {
        let e = validate_storage_addr("224.0.0.5".parse().unwrap()).unwrap_err();
        assert_eq!(
            e.to_string(),
            "224.0.0.5: not a storage address (multicast)"
        );
    }
}
