//! Bringing a NIC to a desired set of storage addresses.

use std::{collections::BTreeSet, fmt, net::IpAddr};

use super::{AddressOwner, EnforceError, validate_storage_addr};

/// Which half of [`reconcile`] failed for an address.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReconcileOp {
    /// Releasing a managed address that is not desired.
    Release,
    /// Acquiring a desired address that is missing.
    Acquire,
}

impl fmt::Display for ReconcileOp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Release => "release",
            Self::Acquire => "acquire",
        })
    }
}

/// One address [`reconcile`] could not bring to its desired state.
#[derive(Debug)]
pub struct ReconcileFailure {
    /// The address.
    pub addr: IpAddr,
    /// What was tried.
    pub op: ReconcileOp,
    /// Why it failed.
    pub error: EnforceError,
}

/// What [`reconcile`] did.
#[derive(Debug, Default)]
pub struct ReconcileReport {
    /// Managed addresses removed because they were not desired.
    pub released: BTreeSet<IpAddr>,
    /// Desired addresses added (and announced).
    pub acquired: BTreeSet<IpAddr>,
    /// Desired addresses that were already owned: left as they are, not
    /// announced again.
    pub kept: BTreeSet<IpAddr>,
    /// Addresses that could not be released or acquired.
    pub failed: Vec<ReconcileFailure>,
}

impl ReconcileReport {
    /// True when every address reached its desired state.
    pub fn is_complete(&self) -> bool {
        self.failed.is_empty()
    }
}

/// Makes `owner` own exactly `desired`, break-before-make: every managed
/// address that is not desired is released first, and only then are the
/// missing ones acquired. The agent calls it on start (stale addresses of a
/// previous run) and on every map.
///
/// All of `desired` is validated before anything changes: one invalid address
/// refuses the whole call. Failures of single addresses do not stop the
/// others; they are listed in [`ReconcileReport::failed`]. An address whose
/// release failed is still on the NIC, which does not conflict with acquiring
/// other addresses. Errors listing the owned addresses are returned as they are.
pub async fn reconcile<O: AddressOwner>(
    owner: &O,
    desired: &BTreeSet<IpAddr>,
) -> Result<ReconcileReport, EnforceError> {
    for addr in desired {
        validate_storage_addr(*addr)?;
    }
    let owned = owner.owned().await?;
    let mut report = ReconcileReport {
        kept: owned.intersection(desired).copied().collect(),
        ..ReconcileReport::default()
    };
    for &addr in owned.difference(desired) {
        match owner.release(addr).await {
            Ok(()) => {
                report.released.insert(addr);
            }
            Err(error) => report.failed.push(ReconcileFailure {
                addr,
                op: ReconcileOp::Release,
                error,
            }),
        }
    }
    for &addr in desired.difference(&owned) {
        match owner.acquire(addr).await {
            Ok(()) => {
                report.acquired.insert(addr);
            }
            Err(error) => report.failed.push(ReconcileFailure {
                addr,
                op: ReconcileOp::Acquire,
                error,
            }),
        }
    }
    for f in &report.failed {
        tracing::warn!(addr = %f.addr, op = %f.op, error = %f.error, "reconcile could not change an address");
    }
    tracing::info!(
        released = ?report.released,
        acquired = ?report.acquired,
        kept = report.kept.len(),
        failed = report.failed.len(),
        "reconciled storage addresses"
    );
    Ok(report)
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;

    use super::*;

    /// An owner in memory that logs every call and fails on chosen addresses.
    #[derive(Default)]
    struct FakeOwner {
        owned: Mutex<BTreeSet<IpAddr>>,
        log: Mutex<Vec<(ReconcileOp, IpAddr)>>,
        fail: BTreeSet<IpAddr>,
    }

    fn os_error(addr: IpAddr) -> EnforceError {
        EnforceError::Os {
            what: format!("fake failure on {addr}"),
            source: std::io::Error::from_raw_os_error(libc::EPERM),
        }
    }

    impl AddressOwner for FakeOwner {
        async fn owned(&self) -> Result<BTreeSet<IpAddr>, EnforceError> {
            Ok(self.owned.lock().unwrap().clone())
        }
        async fn acquire(&self, addr: IpAddr) -> Result<(), EnforceError> {
            self.log.lock().unwrap().push((ReconcileOp::Acquire, addr));
            if self.fail.contains(&addr) {
                return Err(os_error(addr));
            }
            self.owned.lock().unwrap().insert(addr);
            Ok(())
        }
        async fn release(&self, addr: IpAddr) -> Result<(), EnforceError> {
            self.log.lock().unwrap().push((ReconcileOp::Release, addr));
            if self.fail.contains(&addr) {
                return Err(os_error(addr));
            }
            self.owned.lock().unwrap().remove(&addr);
            Ok(())
        }
    }

    fn set(v: &[&str]) -> BTreeSet<IpAddr> {
        v.iter().map(|s| s.parse().unwrap()).collect()
    }

    fn block_on<F: Future>(f: F) -> F::Output {
        tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap()
            .block_on(f)
    }

    #[test]
    fn releases_before_acquiring() {
        let owner = FakeOwner {
            owned: Mutex::new(set(&["198.18.1.1", "198.18.1.2", "2001:2::a"])),
            ..FakeOwner::default()
        };
        let desired = set(&["198.18.1.2", "198.18.1.3", "2001:2::b"]);
        let report = block_on(reconcile(&owner, &desired)).unwrap();
        assert!(report.is_complete());
        assert_eq!(report.released, set(&["198.18.1.1", "2001:2::a"]));
        assert_eq!(report.acquired, set(&["198.18.1.3", "2001:2::b"]));
        assert_eq!(report.kept, set(&["198.18.1.2"]));
        assert_eq!(*owner.owned.lock().unwrap(), desired);
        let log = owner.log.lock().unwrap();
        let first_acquire = log.iter().position(|(op, _)| *op == ReconcileOp::Acquire);
        let last_release = log.iter().rposition(|(op, _)| *op == ReconcileOp::Release);
        assert_eq!(log.len(), 4, "kept addresses are not touched: {log:?}");
        assert!(last_release < first_acquire, "break-before-make: {log:?}");
    }

    #[test]
    fn invalid_desired_address_changes_nothing() {
        let owner = FakeOwner {
            owned: Mutex::new(set(&["198.18.1.1"])),
            ..FakeOwner::default()
        };
        let err = block_on(reconcile(&owner, &set(&["198.18.1.3", "224.0.0.9"]))).unwrap_err();
        assert!(
            matches!(err, EnforceError::InvalidAddress { addr, .. } if addr == "224.0.0.9".parse::<IpAddr>().unwrap()),
            "{err:?}"
        );
        assert!(owner.log.lock().unwrap().is_empty());
        assert_eq!(*owner.owned.lock().unwrap(), set(&["198.18.1.1"]));
    }

    #[test]
    fn one_failure_does_not_stop_the_others() {
        let owner = FakeOwner {
            owned: Mutex::new(set(&["198.18.1.1", "198.18.1.2"])),
            fail: set(&["198.18.1.1", "198.18.1.4"]),
            ..FakeOwner::default()
        };
        let report = block_on(reconcile(&owner, &set(&["198.18.1.3", "198.18.1.4"]))).unwrap();
        assert!(!report.is_complete());
        assert_eq!(report.released, set(&["198.18.1.2"]));
        assert_eq!(report.acquired, set(&["198.18.1.3"]));
        let failed: Vec<_> = report.failed.iter().map(|f| (f.op, f.addr)).collect();
        assert_eq!(
            failed,
            [
                (ReconcileOp::Release, "198.18.1.1".parse().unwrap()),
                (ReconcileOp::Acquire, "198.18.1.4".parse().unwrap()),
            ]
        );
        assert_eq!(
            *owner.owned.lock().unwrap(),
            set(&["198.18.1.1", "198.18.1.3"])
        );
    }

    #[test]
    fn nothing_to_do() {
        let owner = FakeOwner {
            owned: Mutex::new(set(&["198.18.1.1"])),
            ..FakeOwner::default()
        };
        let report = block_on(reconcile(&owner, &set(&["198.18.1.1"]))).unwrap();
        assert!(report.is_complete());
        assert!(report.released.is_empty() && report.acquired.is_empty());
        assert_eq!(report.kept, set(&["198.18.1.1"]));
        assert!(owner.log.lock().unwrap().is_empty());
    }
}
