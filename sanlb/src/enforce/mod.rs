//! Enforcement: a gateway takes and releases storage addresses on its
//! host-facing NIC and announces the ones it takes.
//!
//! [`AddressOwner`] is the seam between the agent's protocol logic (which
//! decides *when*: break-before-make, generations, fail-static) and the kernel
//! mechanics (rtnetlink, gratuitous ARP, unsolicited NA) that decide *how*.

use std::{collections::BTreeSet, future::Future, net::IpAddr};

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
}
