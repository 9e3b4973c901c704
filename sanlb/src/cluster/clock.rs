//! The clock of a leader's term: `CLOCK_BOOTTIME`, which, unlike
//! `CLOCK_MONOTONIC` (`std::time::Instant`), keeps counting while the
//! machine is suspended, so a leader woken from a suspend does not believe
//! its term still runs. A stopped process (SIGSTOP) is covered by both.

use std::time::Duration;

/// Time since boot, suspends included.
pub(super) fn now() -> Duration {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid, writable timespec; CLOCK_BOOTTIME exists on
    // every kernel sanlb runs on (Linux ≥ 2.6.39).
    let rc = unsafe { libc::clock_gettime(libc::CLOCK_BOOTTIME, &mut ts) };
    assert_eq!(rc, 0, "clock_gettime(CLOCK_BOOTTIME) failed");
    Duration::new(ts.tv_sec as u64, ts.tv_nsec as u32)
}

#[cfg(test)]
mod tests {
    #[test]
    fn runs_forward_with_the_monotonic_clock() {
        let (b0, m0) = (super::now(), std::time::Instant::now());
        std::thread::sleep(std::time::Duration::from_millis(20));
        let (db, dm) = (super::now() - b0, m0.elapsed());
        assert!(db >= std::time::Duration::from_millis(20), "{db:?}");
        // Without a suspend in between, both clocks advance alike.
        assert!(
            db.abs_diff(dm) < std::time::Duration::from_millis(5),
            "{db:?} {dm:?}"
        );
    }
}
