//! Test support shared by sanlb's tests and benchmarks (aya keeps its test
//! programs and harness in a test crate the same way). Nothing here ships in
//! the `sanlb` library or binary: it is a dev-dependency only. It depends on
//! `sanlb` (cargo allows the cycle through a dev-dependency; integration
//! tests and benchmarks see one `sanlb`), so `sanlb`'s own unit tests do not
//! use it.
//!
//! - [`testrun`]: the counting programs on crafted frames with
//!   `BPF_PROG_TEST_RUN`, and the empty XDP program benchmarks compare against;
//! - [`frames`]: Ethernet frames built field by field, malformed ones included;
//! - [`model`]: what the programs must count for one frame, written from the
//!   rules of docs/dataplane.md.
//!
//! Each module is used by several test binaries, so unlike helper folders
//! under `tests/` it needs no `#[allow(dead_code)]`. Calling aya directly is
//! fine here: "only `dataplane` calls aya" holds for the product.
//!
//! - [`segment`]: the lab ([`xtask::lab`], the one lab of every namespace
//!   test) as a host and two gateways, each with a runtime in its namespace
//!   ([`ns_runtime`]);
//! - [`probe`]: what the kernel says about a namespace (addresses with their
//!   protocol, neighbours) and a TCP name service to see which gateway
//!   answers;
//! - [`capture`]: a raw capture with ARP and Neighbor Advertisement parsers;
//! - [`etcd`]: a real etcd on loopback for the HA control plane.

pub mod capture;
pub mod etcd;
pub mod frames;
pub mod model;
pub mod ns_runtime;
pub mod probe;
pub mod segment;
pub mod testrun;

/// An Ethernet address.
pub type Mac = [u8; 6];

/// `02:00:c6:12:00:01`.
pub fn fmt_mac(m: &Mac) -> String {
    m.iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(":")
}

/// Parses `02:00:c6:12:00:01`; `None` for anything else.
pub fn parse_mac(s: &str) -> Option<Mac> {
    let v: Vec<u8> = s
        .split(':')
        .map(|p| u8::from_str_radix(p, 16))
        .collect::<Result<_, _>>()
        .ok()?;
    v.try_into().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn macs_round_trip() {
        let m = [0x02, 0, 0xc6, 0x12, 0, 0xff];
        assert_eq!(fmt_mac(&m), "02:00:c6:12:00:ff");
        assert_eq!(parse_mac("02:00:c6:12:00:ff"), Some(m));
        assert_eq!(parse_mac("02:00:c6:12:00"), None);
        assert_eq!(parse_mac("02:00:c6:12:00:zz"), None);
    }
}
