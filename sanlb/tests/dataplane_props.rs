//! Property test: random frames through both programs (BPF_PROG_TEST_RUN) are
//! passed unchanged and counted exactly as the user-space model in
//! `sanlb_test::model` says. Privileged (loads BPF).

use std::cell::RefCell;

use proptest::{prelude::*, test_runner::TestCaseError};
use sanlb::dataplane::Stats;
use sanlb_test::{
    frames::{self, Ext, Frame, L3, L4, TPID_8021AD, TPID_8021Q, Tcp, V4, V6},
    model,
    testrun::Detached,
};

const PORTS: [u16; 2] = [3260, 860];
/// One port: the programs then compare with it instead of reading the bitmap
/// (ISCSI_PORT_ONLY), a separate path to hold to the model.
const ONE_PORT: [u16; 1] = [3260];

fn port() -> impl Strategy<Value = u16> {
    prop_oneof![Just(3260u16), Just(860), Just(3261), 1u16..=65535]
}

fn payload() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        3 => proptest::collection::vec(any::<u8>(), 0..200),
        // A SCSI Command BHS (possibly with noise in it) opening the segment.
        1 => (any::<bool>(), any::<bool>(), any::<u32>(), proptest::collection::vec(any::<u8>(), 0..64),
              proptest::option::of((0usize..48, any::<u8>())))
            .prop_map(|(r, w, edtl, tail, noise)| {
                let mut b = frames::scsi_cmd_bhs(r, w, edtl);
                if let Some((at, v)) = noise {
                    b[at] = v;
                }
                b.extend(tail);
                b
            }),
    ]
}

fn tcp() -> impl Strategy<Value = L4> {
    (
        port(),
        port(),
        proptest::collection::vec(any::<u8>(), 0..16),
        proptest::option::weighted(0.1, 0u8..16),
        payload(),
    )
        .prop_map(|(sport, dport, options, doff, payload)| {
            L4::Tcp(Tcp {
                sport,
                dport,
                options,
                doff,
                payload,
            })
        })
}

fn l4() -> impl Strategy<Value = L4> {
    prop_oneof![
        9 => tcp(),
        1 => proptest::collection::vec(any::<u8>(), 0..30).prop_map(L4::Raw),
    ]
}

fn addr4() -> impl Strategy<Value = [u8; 4]> {
    (any::<u8>(), any::<u8>()).prop_map(|(a, b)| [198, 18 + (a & 1), a, b])
}

fn addr6() -> impl Strategy<Value = [u8; 16]> {
    any::<[u8; 4]>().prop_map(|t| {
        let mut a = frames::HOST6;
        a[12..].copy_from_slice(&t);
        a
    })
}

fn v4() -> impl Strategy<Value = L3> {
    (
        addr4(),
        addr4(),
        proptest::collection::vec(any::<u8>(), 0..44),
        prop_oneof![4 => Just(0x4000u16), 1 => Just(0u16), 1 => any::<u16>()],
        prop_oneof![8 => Just(6u8), 1 => any::<u8>()],
        prop_oneof![10 => Just(4u8), 1 => 0u8..16],
        proptest::option::weighted(0.1, 0u8..16),
        proptest::option::weighted(0.1, any::<u16>()),
        l4(),
    )
        .prop_map(
            |(src, dst, options, frag, proto, version, ihl, tot_len, l4)| {
                L3::V4(
                    V4 {
                        src,
                        dst,
                        options,
                        frag,
                        proto,
                        version,
                        ihl,
                        tot_len,
                    },
                    l4,
                )
            },
        )
}

fn ext() -> impl Strategy<Value = Ext> {
    (
        prop_oneof![
            Just(0u8),
            Just(43),
            Just(44),
            Just(51),
            Just(60),
            Just(135),
            Just(139),
            Just(140)
        ],
        0u8..4,
        prop_oneof![3 => Just(0u16), 1 => any::<u16>()],
    )
        .prop_map(|(kind, len, frag)| Ext { kind, len, frag })
}

fn v6() -> impl Strategy<Value = L3> {
    (
        addr6(),
        addr6(),
        proptest::collection::vec(ext(), 0..8),
        prop_oneof![8 => Just(6u8), 1 => any::<u8>()],
        prop_oneof![10 => Just(6u8), 1 => 0u8..16],
        proptest::option::weighted(0.1, any::<u16>()),
        l4(),
    )
        .prop_map(|(src, dst, ext, proto, version, payload_len, l4)| {
            L3::V6(
                V6 {
                    src,
                    dst,
                    ext,
                    proto,
                    version,
                    payload_len,
                },
                l4,
            )
        })
}

fn frame() -> impl Strategy<Value = Frame> {
    (
        proptest::collection::vec(prop_oneof![Just(TPID_8021Q), Just(TPID_8021AD)], 0..4),
        prop_oneof![
            5 => v4(),
            5 => v6(),
            1 => (any::<u16>(), proptest::collection::vec(any::<u8>(), 0..80))
                .prop_map(|(et, b)| L3::Other(et, b)),
        ],
        proptest::collection::vec(any::<u8>(), 0..8),
    )
        .prop_map(|(vlans, l3, trailer)| Frame { vlans, l3, trailer })
}

/// A built frame, then possibly cut short or with a byte overwritten.
fn bytes() -> impl Strategy<Value = Vec<u8>> {
    (
        frame(),
        proptest::option::weighted(0.15, any::<prop::sample::Index>()),
        proptest::option::weighted(0.15, (any::<prop::sample::Index>(), any::<u8>())),
    )
        .prop_map(|(f, cut, poke)| {
            let mut b = f.build();
            if let Some((at, v)) = poke {
                let i = at.index(b.len());
                b[i] = v;
            }
            if let Some(c) = cut {
                b.truncate(c.index(b.len() + 1).max(14));
            }
            // Test runs take at least an Ethernet header and at most a page.
            b.resize(b.len().max(14), 0);
            b.truncate(3000);
            b
        })
}

/// Whether the kernel accepts `b` for an skb test run: untagged IPv4/IPv6
/// frames need their whole fixed IP header (see dataplane_testrun.rs).
fn skb_runnable(b: &[u8]) -> bool {
    match u16::from_be_bytes([b[12], b[13]]) {
        0x0800 => b.len() >= 14 + 20,
        0x86dd => b.len() >= 14 + 40,
        _ => b.len() > 14,
    }
}

/// Longer than a page less the XDP headroom: a multi-buffer frame in an
/// XDP test run.
const MULTI_BUFFER_LEN: usize = 5000;

thread_local! {
    /// One loaded object per port set.
    static DP: RefCell<Vec<(&'static [u16], Detached)>> = const { RefCell::new(Vec::new()) };
}

fn check(b: &[u8], segs: u16) -> Result<(), TestCaseError> {
    check_with(b, segs, &PORTS)
}

fn check_with(b: &[u8], segs: u16, ports: &'static [u16]) -> Result<(), TestCaseError> {
    DP.with(|cell| {
        let mut cell = cell.borrow_mut();
        let at = match cell.iter().position(|(p, _)| *p == ports) {
            Some(at) => at,
            None => {
                cell.push((ports, Detached::load(ports, 4096).expect("loading (root?)")));
                cell.len() - 1
            }
        };
        let dp = &mut cell[at].1;
        let want = model::classify(b, ports);
        let want_stats = model::stats(&want);

        dp.reset().unwrap();
        let r = dp.run_xdp(b, 1).unwrap();
        prop_assert_eq!(r.verdict, 2, "XDP_PASS");
        prop_assert_eq!(&r.data_out, b, "XDP left the frame unchanged");
        let s = dp.snapshot().unwrap();
        compare(&s.flows, &want, b.len(), 1)?;
        prop_assert_eq!(s.ingress, want_stats, "ingress stats for {:?}", want);
        prop_assert_eq!(s.egress, Stats::default());

        // The same frame with a tail of zeros that makes it a multi-buffer
        // frame (longer than a page): the tail is padding or payload as the
        // IP length says, never read for headers.
        let mut long = b.to_vec();
        long.resize(MULTI_BUFFER_LEN, 0);
        let want_long = model::classify(&long, ports);
        dp.reset().unwrap();
        let r = dp.run_xdp(&long, 1).unwrap();
        prop_assert_eq!(r.verdict, 2, "XDP_PASS");
        prop_assert!(
            r.data_out == long,
            "XDP left the multi-buffer frame unchanged"
        );
        let s = dp.snapshot().unwrap();
        compare(&s.flows, &want_long, long.len(), 1)?;
        prop_assert_eq!(
            s.ingress,
            model::stats(&want_long),
            "multi-buffer stats for {:?}",
            want_long
        );

        if skb_runnable(b) {
            for ingress in [false, true] {
                dp.reset().unwrap();
                let r = if ingress {
                    dp.run_tc_ingress(b, segs, 1).unwrap()
                } else {
                    dp.run_tc(b, segs, 1).unwrap()
                };
                prop_assert_eq!(r.verdict, -1, "TC_ACT_UNSPEC");
                prop_assert_eq!(&r.data_out, b, "TC left the frame unchanged");
                let s = dp.snapshot().unwrap();
                compare(&s.flows, &want, b.len(), u64::from(segs.max(1)))?;
                let (hook, other) = if ingress {
                    (s.ingress, s.egress)
                } else {
                    (s.egress, s.ingress)
                };
                prop_assert_eq!(
                    hook,
                    want_stats,
                    "TC stats (ingress: {}) for {:?}",
                    ingress,
                    want
                );
                prop_assert_eq!(other, Stats::default());
            }
        }
        Ok(())
    })
}

fn compare(
    flows: &[sanlb::dataplane::FlowRecord],
    want: &model::Outcome,
    len: usize,
    segs: u64,
) -> Result<(), TestCaseError> {
    match want {
        model::Outcome::Skip(_) => prop_assert!(flows.is_empty(), "counted {:?}", flows),
        model::Outcome::Count {
            initiator, target, ..
        } => {
            prop_assert_eq!(flows.len(), 1);
            prop_assert_eq!(flows[0].initiator, *initiator);
            prop_assert_eq!(flows[0].target, *target);
            prop_assert_eq!(Some(flows[0].counters), model::counters(want, len, segs));
        }
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 1500, ..ProptestConfig::default() })]

    #[test]
    #[ignore = "privileged: needs root, run by cargo xtask test"]
    fn programs_match_the_model(b in bytes(), segs in prop_oneof![4 => Just(0u16), 1 => 1u16..8]) {
        check(&b, segs)?;
    }

    #[test]
    #[ignore = "privileged: needs root, run by cargo xtask test"]
    fn one_port_matches_the_model(b in bytes(), segs in prop_oneof![4 => Just(0u16), 1 => 1u16..8]) {
        check_with(&b, segs, &ONE_PORT)?;
    }

    #[test]
    #[ignore = "privileged: needs root, run by cargo xtask test"]
    fn random_bytes_are_passed(b in proptest::collection::vec(any::<u8>(), 14..300)) {
        check(&b, 0)?;
    }
}

/// The model and the generator must produce every outcome, or the property
/// above proves less than it seems. Runs without root.
#[test]
fn generator_reaches_every_outcome() {
    use proptest::strategy::ValueTree;
    let mut runner = proptest::test_runner::TestRunner::deterministic();
    let mut seen = std::collections::BTreeSet::new();
    let mut commands = 0;
    for _ in 0..3000 {
        let b = bytes().new_tree(&mut runner).unwrap().current();
        let o = model::classify(&b, &PORTS);
        if let model::Outcome::Count {
            command: Some(_), ..
        } = o
        {
            commands += 1;
        }
        seen.insert(match o {
            model::Outcome::Skip(s) => format!("{s:?}"),
            model::Outcome::Count { to_target, .. } => format!("Count{to_target}"),
        });
    }
    let all = [
        "NotIp",
        "NotTcp",
        "NotIscsi",
        "Fragment",
        "Truncated",
        "Malformed",
        "ExtHeaderLimit",
        "Counttrue",
        "Countfalse",
    ];
    for a in all {
        assert!(
            seen.contains(a),
            "the generator never produced {a}: {seen:?}"
        );
    }
    assert!(commands > 10, "only {commands} SCSI commands generated");
}
