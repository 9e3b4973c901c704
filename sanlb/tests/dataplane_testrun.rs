//! The counting programs on crafted frames through BPF_PROG_TEST_RUN: each test
//! asserts the verdict, that the frame is unchanged, and the exact map contents.
//! Privileged (loading BPF needs root); no NIC is involved.

use sanlb::dataplane::{Counters, FlowRecord, Snapshot, Stats};
use sanlb_test::{
    frames::{self, Ext, Frame, L3, L4, TPID_8021AD, TPID_8021Q, V4, V6, tcp4, tcp6},
    testrun::Detached,
};

const XDP_PASS: i32 = 2;
/// TC_ACT_UNSPEC: under TCX this is TCX_NEXT, "pass and let the next program run".
const TC_ACT_UNSPEC: i32 = -1;

fn load(ports: &[u16]) -> Detached {
    Detached::load(ports, 1024).expect("loading the programs (are you root?)")
}

/// Runs `frame` through XDP once; asserts PASS and an unchanged frame.
fn xdp(dp: &mut Detached, frame: &[u8]) -> Snapshot {
    let r = dp.run_xdp(frame, 1).expect("test run");
    assert_eq!(r.verdict, XDP_PASS, "XDP verdict");
    assert_eq!(r.data_out, frame, "XDP altered the frame");
    dp.snapshot().expect("snapshot")
}

/// Runs `frame` through TC once (as `segs` GSO segments); asserts the verdict
/// and an unchanged frame.
fn tc(dp: &mut Detached, frame: &[u8], segs: u16) -> Snapshot {
    let r = dp.run_tc(frame, segs, 1).expect("test run");
    assert_eq!(r.verdict, TC_ACT_UNSPEC, "TC verdict");
    assert_eq!(r.data_out, frame, "TC altered the frame");
    dp.snapshot().expect("snapshot")
}

fn only_flow(s: &Snapshot) -> &FlowRecord {
    assert_eq!(s.flows.len(), 1, "flows: {:?}", s.flows);
    &s.flows[0]
}

fn stats(frames: u64, counted: u64, new_flows: u64) -> Stats {
    Stats {
        frames,
        counted,
        new_flows,
        ..Default::default()
    }
}

fn payload(n: usize) -> Vec<u8> {
    (0..n).map(|i| (i * 7 + 3) as u8).collect()
}

/// Frame bytes of a plain IPv4/TCP frame with `n` payload bytes.
const V4_HDRS: usize = 14 + 20 + 20;
const V6_HDRS: usize = 14 + 40 + 20;

#[test]
#[ignore = "privileged: needs root, run by cargo xtask test"]
fn ipv4_initiator_to_target() {
    let mut dp = load(&[3260]);
    let f = tcp4(40000, 3260, payload(1000)).build();
    let s = xdp(&mut dp, &f);
    let r = only_flow(&s);
    assert_eq!(r.initiator.to_string(), "198.18.0.10");
    assert_eq!(r.target.to_string(), "198.18.1.50");
    assert_eq!(
        r.counters,
        Counters {
            to_target_bytes: 1000,
            to_target_packets: 1,
            to_target_frame_bytes: (V4_HDRS + 1000) as u64,
            ..Default::default()
        }
    );
    assert_eq!(s.ingress, stats(1, 1, 1));
    assert_eq!(s.egress, Stats::default());
}

#[test]
#[ignore = "privileged: needs root, run by cargo xtask test"]
fn ipv4_target_to_initiator_on_egress() {
    let mut dp = load(&[3260]);
    let f = tcp4(3260, 40000, payload(1448)).build();
    let s = tc(&mut dp, &f, 0);
    let r = only_flow(&s);
    // The initiator is the side that is not on the iSCSI port.
    assert_eq!(r.initiator.to_string(), "198.18.0.10");
    assert_eq!(r.target.to_string(), "198.18.1.50");
    assert_eq!(
        r.counters,
        Counters {
            to_initiator_bytes: 1448,
            to_initiator_packets: 1,
            to_initiator_frame_bytes: (V4_HDRS + 1448) as u64,
            ..Default::default()
        }
    );
    assert_eq!(s.egress, stats(1, 1, 1));
    assert_eq!(s.ingress, Stats::default());
}

#[test]
#[ignore = "privileged: needs root, run by cargo xtask test"]
fn both_directions_and_both_hooks_share_one_entry() {
    let mut dp = load(&[3260]);
    xdp(&mut dp, &tcp4(40000, 3260, payload(100)).build());
    xdp(&mut dp, &tcp4(40000, 3260, payload(200)).build());
    let s = tc(&mut dp, &tcp4(3260, 40000, payload(300)).build(), 0);
    let c = only_flow(&s).counters;
    assert_eq!((c.to_target_bytes, c.to_target_packets), (300, 2));
    assert_eq!((c.to_initiator_bytes, c.to_initiator_packets), (300, 1));
    assert_eq!(s.ingress, stats(2, 2, 1));
    assert_eq!(s.egress, stats(1, 1, 0));
}

#[test]
#[ignore = "privileged: needs root, run by cargo xtask test"]
fn ipv4_with_options() {
    let mut dp = load(&[3260]);
    let mut f = tcp4(40000, 3260, payload(64));
    if let L3::V4(ip, _) = &mut f.l3 {
        ip.options = vec![0x07, 11, 4, 0, 0, 0, 0, 0, 0, 0, 0, 1]; // record route + NOP: 12 bytes
    }
    let b = f.build();
    let s = xdp(&mut dp, &b);
    let c = only_flow(&s).counters;
    assert_eq!(c.to_target_bytes, 64);
    assert_eq!(c.to_target_frame_bytes, (V4_HDRS + 12 + 64) as u64);
}

#[test]
#[ignore = "privileged: needs root, run by cargo xtask test"]
fn tcp_options_are_not_payload() {
    let mut dp = load(&[3260]);
    let mut f = tcp4(40000, 3260, payload(10));
    if let L3::V4(_, L4::Tcp(t)) = &mut f.l3 {
        t.options = vec![1, 1, 8, 10, 0, 0, 0, 1, 0, 0, 0, 2]; // NOP NOP timestamps
    }
    let s = xdp(&mut dp, &f.build());
    assert_eq!(only_flow(&s).counters.to_target_bytes, 10);
}

#[test]
#[ignore = "privileged: needs root, run by cargo xtask test"]
fn ipv6_both_directions() {
    let mut dp = load(&[3260]);
    xdp(&mut dp, &tcp6(40000, 3260, payload(500)).build());
    let s = tc(&mut dp, &tcp6(3260, 40000, payload(700)).build(), 0);
    let r = only_flow(&s);
    assert_eq!(r.initiator.to_string(), "2001:db8::a");
    assert_eq!(r.target.to_string(), "2001:db8:1::50");
    assert_eq!(
        r.counters,
        Counters {
            to_target_bytes: 500,
            to_target_packets: 1,
            to_target_frame_bytes: (V6_HDRS + 500) as u64,
            to_initiator_bytes: 700,
            to_initiator_packets: 1,
            to_initiator_frame_bytes: (V6_HDRS + 700) as u64,
            ..Default::default()
        }
    );
}

#[test]
#[ignore = "privileged: needs root, run by cargo xtask test"]
fn ipv6_extension_headers() {
    let mut dp = load(&[3260]);
    let mut f = tcp6(40000, 3260, payload(256));
    if let L3::V6(ip, _) = &mut f.l3 {
        ip.ext = vec![
            Ext {
                kind: 0,
                len: 0,
                frag: 0,
            }, // hop-by-hop, 8 bytes
            Ext {
                kind: 60,
                len: 1,
                frag: 0,
            }, // destination options, 16 bytes
            Ext {
                kind: 43,
                len: 2,
                frag: 0,
            }, // routing, 24 bytes
            Ext {
                kind: 44,
                len: 0,
                frag: 0,
            }, // atomic fragment, 8 bytes
            Ext {
                kind: 51,
                len: 4,
                frag: 0,
            }, // AH, (4+2)*4 = 24 bytes
        ];
    }
    let b = f.build();
    let s = xdp(&mut dp, &b);
    let c = only_flow(&s).counters;
    assert_eq!(c.to_target_bytes, 256);
    assert_eq!(c.to_target_frame_bytes, b.len() as u64);
    assert_eq!(b.len(), V6_HDRS + 8 + 16 + 24 + 8 + 24 + 256);
}

#[test]
#[ignore = "privileged: needs root, run by cargo xtask test"]
fn ipv6_extension_chain_longer_than_the_walk() {
    let mut dp = load(&[3260]);
    let mut f = tcp6(40000, 3260, payload(10));
    if let L3::V6(ip, _) = &mut f.l3 {
        ip.ext = (0..7)
            .map(|_| Ext {
                kind: 60,
                len: 0,
                frag: 0,
            })
            .collect();
    }
    let s = xdp(&mut dp, &f.build());
    assert!(s.flows.is_empty());
    assert_eq!(s.ingress.ext_header_limit, 1);
    assert_eq!(s.ingress.frames, 1);
    // Six are walked.
    if let L3::V6(ip, _) = &mut f.l3 {
        ip.ext.pop();
    }
    let s = xdp(&mut dp, &f.build());
    assert_eq!(only_flow(&s).counters.to_target_bytes, 10);
}

#[test]
#[ignore = "privileged: needs root, run by cargo xtask test"]
fn vlan_single_and_double_tags() {
    for vlans in [
        vec![TPID_8021Q],
        vec![TPID_8021AD, TPID_8021Q],
        vec![TPID_8021Q, TPID_8021Q],
    ] {
        let mut dp = load(&[3260]);
        for ipv6 in [false, true] {
            let mut f = if ipv6 {
                tcp6(40000, 3260, payload(90))
            } else {
                tcp4(40000, 3260, payload(90))
            };
            f.vlans = vlans.clone();
            let b = f.build();
            dp.reset().unwrap();
            let s = xdp(&mut dp, &b);
            let c = only_flow(&s).counters;
            assert_eq!(c.to_target_bytes, 90, "tags {vlans:x?} v6 {ipv6}");
            assert_eq!(c.to_target_frame_bytes, b.len() as u64);
            dp.reset().unwrap();
            let s = tc(&mut dp, &b, 0);
            assert_eq!(only_flow(&s).counters.to_target_bytes, 90);
        }
    }
    // Three tags are more than the walk follows: not IP as far as it knows.
    let mut dp = load(&[3260]);
    let mut f = tcp4(40000, 3260, payload(90));
    f.vlans = vec![TPID_8021AD, TPID_8021Q, TPID_8021Q];
    let s = xdp(&mut dp, &f.build());
    assert!(s.flows.is_empty());
    assert_eq!(s.ingress.not_ip, 1);
}

#[test]
#[ignore = "privileged: needs root, run by cargo xtask test"]
fn configured_ports_only() {
    let mut dp = load(&[3260, 860]);
    let s = xdp(&mut dp, &tcp4(40000, 860, payload(33)).build());
    assert_eq!(only_flow(&s).counters.to_target_bytes, 33);
    let s = xdp(&mut dp, &tcp4(40000, 3261, payload(33)).build());
    assert_eq!(s.flows.len(), 1);
    assert_eq!(s.ingress.not_iscsi, 1);
    assert_eq!(s.ports, vec![860, 3260]);
    // With 860 only, 3260 is not iSCSI.
    let mut dp = load(&[860]);
    let s = xdp(&mut dp, &tcp4(40000, 3260, payload(33)).build());
    assert!(s.flows.is_empty());
    assert_eq!(s.ingress.not_iscsi, 1);
}

#[test]
#[ignore = "privileged: needs root, run by cargo xtask test"]
fn fragments_are_passed_not_counted() {
    let mut dp = load(&[3260]);
    for frag in [0x2000u16, 0x0010, 0x2010] {
        // MF, offset only, both.
        let mut f = tcp4(40000, 3260, payload(100));
        if let L3::V4(ip, _) = &mut f.l3 {
            ip.frag = frag;
        }
        let s = xdp(&mut dp, &f.build());
        assert!(s.flows.is_empty());
    }
    for field in [0x0001u16, 0x0008, 0x0009] {
        let mut f = tcp6(40000, 3260, payload(100));
        if let L3::V6(ip, _) = &mut f.l3 {
            ip.ext = vec![Ext {
                kind: 44,
                len: 0,
                frag: field,
            }];
        }
        let s = tc(&mut dp, &f.build(), 0);
        assert!(s.flows.is_empty());
    }
    let s = dp.snapshot().unwrap();
    assert_eq!(s.ingress.fragment, 3);
    assert_eq!(s.egress.fragment, 3);
}

#[test]
#[ignore = "privileged: needs root, run by cargo xtask test"]
fn truncated_at_every_byte_boundary() {
    // BPF_PROG_TEST_RUN refuses frames shorter than an Ethernet header, and
    // skb runs of an untagged IPv4/IPv6 frame without its whole IP header; so
    // XDP cuts start at 14 and TC cuts at 15 (tagged) or after the IP header.
    // The programs treat the shorter frames as truncated all the same.
    let tagged_v6 = {
        let mut f = tcp6(40000, 3260, payload(60));
        f.vlans = vec![TPID_8021AD, TPID_8021Q];
        if let L3::V6(ip, _) = &mut f.l3 {
            ip.ext = vec![
                Ext {
                    kind: 0,
                    len: 1,
                    frag: 0,
                },
                Ext {
                    kind: 44,
                    len: 0,
                    frag: 0,
                },
            ];
        }
        f.build()
    };
    let cases = [
        (tcp4(40000, 3260, payload(60)).build(), 14 + 20),
        (tcp6(40000, 3260, payload(60)).build(), 14 + 40),
        (tagged_v6, 15),
    ];
    let mut dp = load(&[3260]);
    for (full, tc_min) in cases {
        for cut in 14..full.len() {
            dp.reset().unwrap();
            let s = xdp(&mut dp, &full[..cut]);
            assert!(s.flows.is_empty(), "XDP counted a frame cut at {cut}");
            assert_eq!(
                s.ingress,
                Stats {
                    frames: 1,
                    truncated: 1,
                    ..Default::default()
                },
                "cut at {cut}"
            );
            if cut < tc_min {
                continue;
            }
            dp.reset().unwrap();
            let s = tc(&mut dp, &full[..cut], 0);
            assert!(s.flows.is_empty(), "TC counted a frame cut at {cut}");
            assert_eq!(
                s.egress,
                Stats {
                    frames: 1,
                    truncated: 1,
                    ..Default::default()
                },
                "cut at {cut}"
            );
        }
        dp.reset().unwrap();
        assert_eq!(only_flow(&xdp(&mut dp, &full)).counters.to_target_bytes, 60);
        dp.reset().unwrap();
        assert_eq!(
            only_flow(&tc(&mut dp, &full, 0)).counters.to_target_bytes,
            60
        );
    }
}

#[test]
#[ignore = "privileged: needs root, run by cargo xtask test"]
fn ethernet_padding_is_not_payload() {
    let mut dp = load(&[3260]);
    let mut f = tcp4(3260, 40000, Vec::new()); // a bare ACK: 54 bytes
    f.trailer = vec![0; 6]; // padded to the 60-byte minimum
    let b = f.build();
    let s = xdp(&mut dp, &b);
    let c = only_flow(&s).counters;
    assert_eq!(c.to_initiator_bytes, 0);
    assert_eq!(c.to_initiator_packets, 1);
    assert_eq!(c.to_initiator_frame_bytes, 60);
}

#[test]
#[ignore = "privileged: needs root, run by cargo xtask test"]
fn malformed_headers() {
    let mut dp = load(&[3260]);
    let mut bad_ihl = tcp4(40000, 3260, payload(10));
    if let L3::V4(ip, _) = &mut bad_ihl.l3 {
        ip.ihl = Some(4);
    }
    let mut short_total = tcp4(40000, 3260, payload(10));
    if let L3::V4(ip, _) = &mut short_total.l3 {
        ip.tot_len = Some(19);
    }
    let mut bad_doff = tcp4(40000, 3260, payload(10));
    if let L3::V4(_, L4::Tcp(t)) = &mut bad_doff.l3 {
        t.doff = Some(4);
    }
    let mut long_doff = tcp4(40000, 3260, payload(10));
    if let L3::V4(_, L4::Tcp(t)) = &mut long_doff.l3 {
        t.doff = Some(15); // 60 bytes of TCP header in a 30-byte segment
    }
    let mut bad_version = tcp6(40000, 3260, payload(10));
    if let L3::V6(ip, _) = &mut bad_version.l3 {
        ip.version = 4;
    }
    for f in [bad_ihl, short_total, bad_doff, long_doff, bad_version] {
        let s = xdp(&mut dp, &f.build());
        assert!(s.flows.is_empty(), "counted {f:?}");
    }
    assert_eq!(dp.snapshot().unwrap().ingress.malformed, 5);
}

#[test]
#[ignore = "privileged: needs root, run by cargo xtask test"]
fn not_ip_and_not_tcp() {
    let mut dp = load(&[3260]);
    let arp = Frame {
        vlans: vec![],
        l3: L3::Other(0x0806, vec![0; 28]),
        trailer: vec![],
    };
    let mut udp = tcp4(40000, 3260, payload(10));
    if let L3::V4(ip, _) = &mut udp.l3 {
        ip.proto = 17;
    }
    let mut esp6 = tcp6(40000, 3260, payload(10));
    if let L3::V6(ip, _) = &mut esp6.l3 {
        ip.proto = 50;
    }
    xdp(&mut dp, &arp.build());
    xdp(&mut dp, &udp.build());
    let s = xdp(&mut dp, &esp6.build());
    assert!(s.flows.is_empty());
    assert_eq!(
        s.ingress,
        Stats {
            frames: 3,
            not_ip: 1,
            not_tcp: 2,
            ..Default::default()
        }
    );
}

#[test]
#[ignore = "privileged: needs root, run by cargo xtask test"]
fn scsi_commands_from_a_bhs_at_the_segment_start() {
    let mut dp = load(&[3260]);
    let mut write = frames::scsi_cmd_bhs(false, true, 65536);
    write.extend(payload(512)); // immediate data
    xdp(&mut dp, &tcp4(40000, 3260, write).build());
    xdp(
        &mut dp,
        &tcp4(40000, 3260, frames::scsi_cmd_bhs(true, false, 4096)).build(),
    );
    xdp(
        &mut dp,
        &tcp4(40000, 3260, frames::scsi_cmd_bhs(true, false, 8192)).build(),
    );
    xdp(
        &mut dp,
        &tcp4(40000, 3260, frames::scsi_cmd_bhs(false, false, 0)).build(),
    );
    // Not commands: a Data-Out PDU (opcode 0x05), a segment shorter than a BHS,
    // a command-looking BHS with reserved bits set, and a BHS going to the initiator.
    let mut data_out = frames::scsi_cmd_bhs(false, true, 4096);
    data_out[0] = 0x05;
    xdp(&mut dp, &tcp4(40000, 3260, data_out).build());
    xdp(
        &mut dp,
        &tcp4(
            40000,
            3260,
            frames::scsi_cmd_bhs(true, false, 4096)[..47].to_vec(),
        )
        .build(),
    );
    let mut reserved = frames::scsi_cmd_bhs(true, false, 4096);
    reserved[2] = 1;
    xdp(&mut dp, &tcp4(40000, 3260, reserved).build());
    let s = tc(
        &mut dp,
        &tcp4(3260, 40000, frames::scsi_cmd_bhs(true, false, 4096)).build(),
        0,
    );
    let c = only_flow(&s).counters;
    assert_eq!((c.scsi_read_cmds, c.read_requested_bytes), (2, 12288));
    assert_eq!((c.scsi_write_cmds, c.write_requested_bytes), (1, 65536));
    assert_eq!(c.scsi_other_cmds, 1);
    assert_eq!(c.to_target_packets, 7);
}

#[test]
#[ignore = "privileged: needs root, run by cargo xtask test"]
fn gso_packets_count_as_their_segments() {
    let mut dp = load(&[3260]);
    // A 3-segment TSO packet of 3 × 1000 bytes leaves as 3 frames with 54
    // bytes of headers each (test runs take at most a page, hence not 1448).
    let f = tcp4(3260, 40000, payload(3 * 1000)).build();
    let s = tc(&mut dp, &f, 3);
    let c = only_flow(&s).counters;
    assert_eq!(c.to_initiator_bytes, 3 * 1000);
    assert_eq!(c.to_initiator_packets, 3);
    assert_eq!(c.to_initiator_frame_bytes, (3 * (V4_HDRS + 1000)) as u64);
}

#[test]
#[ignore = "privileged: needs root, run by cargo xtask test"]
fn tc_ingress_counts_gro_packets_as_their_segments() {
    let mut dp = load(&[3260]);
    // A GRO packet merged from 3 segments of 1000 bytes.
    let f = tcp4(40000, 3260, payload(3 * 1000)).build();
    let r = dp.run_tc_ingress(&f, 3, 1).unwrap();
    assert_eq!(r.verdict, TC_ACT_UNSPEC, "TC verdict");
    assert_eq!(r.data_out, f, "TC altered the frame");
    let s = dp.snapshot().unwrap();
    assert_eq!(
        only_flow(&s).counters,
        Counters {
            to_target_bytes: 3 * 1000,
            to_target_packets: 3,
            to_target_frame_bytes: (3 * (V4_HDRS + 1000)) as u64,
            ..Default::default()
        }
    );
    assert_eq!(s.ingress, stats(1, 1, 1));
    assert_eq!(s.egress, Stats::default());
}

/// A jumbo frame of MTU 9000 (IPv4 and IPv6, both directions): more than a
/// page, so XDP sees a multi-buffer frame, headers in the first buffer. It
/// counts whole: payload from the IP header, frame bytes over every buffer,
/// a command at the start of the payload; padding past the IP length is
/// not payload.
#[test]
#[ignore = "privileged: needs root, run by cargo xtask test"]
fn multi_buffer_jumbo_frames_count_whole() {
    let mut dp = load(&[3260]);
    let write = |n: usize| {
        let mut b = frames::scsi_cmd_bhs(false, true, 1 << 20);
        b.extend(payload(n - b.len()));
        b
    };
    let v4 = tcp4(40000, 3260, write(9000 - 40)).build();
    assert_eq!(v4.len(), 14 + 9000);
    // The test run puts what fits in a page (less headroom and
    // skb_shared_info) in the first buffer and the rest in fragments
    // (bpf_prog_test_run_xdp): a program that took its lengths from the first
    // buffer would find the IP packet truncated.
    let s = xdp(&mut dp, &v4);
    assert_eq!(
        only_flow(&s).counters,
        Counters {
            to_target_bytes: 9000 - 40,
            to_target_packets: 1,
            to_target_frame_bytes: v4.len() as u64,
            scsi_write_cmds: 1,
            write_requested_bytes: 1 << 20,
            ..Default::default()
        }
    );
    assert_eq!(s.ingress, stats(1, 1, 1));

    dp.reset().unwrap();
    let v6 = tcp6(3260, 40000, payload(9000 - 60)).build();
    let s = xdp(&mut dp, &v6);
    let r = only_flow(&s);
    assert_eq!(r.initiator.to_string(), "2001:db8::a");
    assert_eq!(
        r.counters,
        Counters {
            to_initiator_bytes: 9000 - 60,
            to_initiator_packets: 1,
            to_initiator_frame_bytes: v6.len() as u64,
            ..Default::default()
        }
    );

    // 100 bytes after the IP packet, in the last buffer: padding.
    dp.reset().unwrap();
    let mut f = tcp4(40000, 3260, payload(9000 - 40));
    if let L3::V4(ip, _) = &mut f.l3 {
        ip.tot_len = Some(9000 - 100);
    }
    let padded = f.build();
    let s = xdp(&mut dp, &padded);
    let c = only_flow(&s).counters;
    assert_eq!(c.to_target_bytes, 9000 - 100 - 40);
    assert_eq!(c.to_target_frame_bytes, padded.len() as u64);

    // An IP length past the last buffer: truncated, not counted.
    dp.reset().unwrap();
    let mut f = tcp4(40000, 3260, payload(9000 - 40));
    if let L3::V4(ip, _) = &mut f.l3 {
        ip.tot_len = Some(9001);
    }
    let s = xdp(&mut dp, &f.build());
    assert!(s.flows.is_empty());
    assert_eq!(s.ingress.truncated, 1);
}

/// Runs the calling thread on CPU 0 only, so that every test run uses one
/// CPU's copy of the per-CPU tables.
fn on_cpu0() {
    // SAFETY: a zeroed cpu_set_t is valid; CPU_SET and sched_setaffinity get
    // a pointer to it and its size.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(0, &mut set);
        assert_eq!(
            libc::sched_setaffinity(0, size_of::<libc::cpu_set_t>(), &set),
            0,
            "pinning the test thread to CPU 0"
        );
    }
}

/// The set of a pair as the programs hash it.
fn set_of(initiator: std::net::IpAddr, target: std::net::IpAddr) -> u32 {
    use std::net::IpAddr::{V4, V6};
    let words = |b: &[u8]| -> Vec<u64> {
        b.chunks(8)
            .map(|c| u64::from_le_bytes(c.try_into().unwrap()))
            .collect()
    };
    match (initiator, target) {
        (V4(i), V4(t)) => {
            let key = [i.octets(), t.octets()].concat();
            sanlb_common::flow_set(words(&key)[0])
        }
        (V6(i), V6(t)) => {
            let key = [i.octets(), t.octets()].concat();
            sanlb_common::flow_set6(words(&key).try_into().unwrap())
        }
        _ => unreachable!("one family"),
    }
}

fn frame_from(src: [u8; 4], len: usize) -> Vec<u8> {
    let mut f = tcp4(40000, 3260, payload(len));
    if let L3::V4(ip, _) = &mut f.l3 {
        ip.src = src;
    }
    f.build()
}

/// An IPv4 or IPv6 frame from `initiator` to the default target.
fn frame_of(initiator: std::net::IpAddr, len: usize) -> (Vec<u8>, std::net::IpAddr) {
    match initiator {
        std::net::IpAddr::V4(a) => {
            let f = tcp4(40000, 3260, payload(len));
            let L3::V4(ip, _) = &f.l3 else { unreachable!() };
            let target = std::net::IpAddr::from(ip.dst);
            (frame_from(a.octets(), len), target)
        }
        std::net::IpAddr::V6(a) => {
            let mut f = tcp6(40000, 3260, payload(len));
            let L3::V6(ip, _) = &mut f.l3 else {
                unreachable!()
            };
            ip.src = a.octets();
            let target = std::net::IpAddr::from(ip.dst);
            (f.build(), target)
        }
    }
}

/// Six initiators whose pairs share one set: the first four take its ways,
/// the other two go to the LRU table; every pair's counts are exact.
fn full_set_spills(initiator: impl Fn(u16) -> std::net::IpAddr) {
    on_cpu0();
    let mut dp = Detached::load(&[3260], 64).unwrap();
    let target = frame_of(initiator(0), 1).1;
    let want = set_of(initiator(0), target);
    let same: Vec<std::net::IpAddr> = (0..=u16::MAX)
        .map(&initiator)
        .filter(|i| set_of(*i, target) == want)
        .take(sanlb_common::FLOW_WAYS + 2)
        .collect();
    assert_eq!(same.len(), sanlb_common::FLOW_WAYS + 2);
    // Each sends i + 1 frames of 100 + i bytes, interleaved.
    for round in 0..same.len() {
        for (i, src) in same.iter().enumerate().skip(round) {
            dp.run_xdp(&frame_of(*src, 100 + i).0, 1).unwrap();
        }
    }
    let s = dp.snapshot().unwrap();
    assert_eq!(s.flows.len(), same.len());
    for (i, src) in same.iter().enumerate() {
        let f = s
            .flows
            .iter()
            .find(|f| f.initiator == *src)
            .unwrap_or_else(|| panic!("no counts for {src}"));
        assert_eq!(f.counters.to_target_packets, i as u64 + 1, "{src}");
        assert_eq!(
            f.counters.to_target_bytes,
            (i as u64 + 1) * (100 + i as u64),
            "{src}"
        );
    }
    let mut spilled: Vec<std::net::IpAddr> = dp
        .flows4_keys()
        .unwrap()
        .into_iter()
        .map(|k| std::net::IpAddr::from(k.initiator))
        .chain(
            dp.flows6_keys()
                .unwrap()
                .into_iter()
                .map(|k| std::net::IpAddr::from(k.initiator)),
        )
        .collect();
    spilled.sort();
    assert_eq!(spilled, same[sanlb_common::FLOW_WAYS..].to_vec());
    assert_eq!(s.ingress.new_flows, same.len() as u64);
    assert_eq!(s.ingress.insert_failed, 0);
}

#[test]
#[ignore = "privileged: needs root, run by cargo xtask test"]
fn a_full_flow_set_sends_new_pairs_to_the_lru_table() {
    full_set_spills(|i| std::net::IpAddr::from([198, 18, (i >> 8) as u8, i as u8]));
}

#[test]
#[ignore = "privileged: needs root, run by cargo xtask test"]
fn a_full_ipv6_flow_set_sends_new_pairs_to_the_lru_table() {
    full_set_spills(|i| {
        let mut a = [0u8; 16];
        a[..4].copy_from_slice(&[0x20, 0x01, 0x0d, 0xb8]);
        a[14..].copy_from_slice(&i.to_be_bytes());
        std::net::IpAddr::from(a)
    });
}

#[test]
#[ignore = "privileged: needs root, run by cargo xtask test"]
fn flow_tables_stay_bounded() {
    on_cpu0();
    let mut dp = Detached::load(&[3260], 64).unwrap();
    // More pairs than the sets and the 64-entry LRU table hold together.
    let capacity = sanlb_common::FLOW_SETS as usize * sanlb_common::FLOW_WAYS;
    let n = (capacity + 1000) as u32;
    for i in 0..n {
        let src = [198, 18 + (i >> 16) as u8, (i >> 8) as u8, i as u8];
        let r = dp.run_xdp(&frame_from(src, 1), 1).unwrap();
        assert_eq!(r.verdict, XDP_PASS);
    }
    let s = dp.snapshot().unwrap();
    assert!(
        s.flows.len() <= capacity + 64,
        "{} pairs in {capacity} ways and a 64-entry table",
        s.flows.len()
    );
    assert!(s.flows.len() > 64, "the sets hold pairs too");
    assert!(dp.flows4_keys().unwrap().len() <= 64);
    assert_eq!(s.ingress.new_flows, u64::from(n));
    assert_eq!(s.ingress.counted, u64::from(n));
    assert_eq!(s.ingress.insert_failed, 0);
    assert_eq!(dp.unmarked_ways().unwrap(), (0, 0), "every set marked");
}

/// Readers read only the sets SETS_USED marks: the marks must cover every
/// taken way (else its pair would go unreported) and nothing else; the
/// reset the tests rely on empties the sets through them.
#[test]
#[ignore = "privileged: needs root, run by cargo xtask test"]
fn the_used_set_marks_cover_exactly_the_taken_ways() {
    on_cpu0();
    let mut dp = load(&[3260]);
    let v6 = |i: u16| {
        let mut a = [0u8; 16];
        a[..4].copy_from_slice(&[0x20, 0x01, 0x0d, 0xb8]);
        a[14..].copy_from_slice(&i.to_be_bytes());
        std::net::IpAddr::from(a)
    };
    let n = 300u16;
    for i in 0..n {
        let v4 = std::net::IpAddr::from([198, 18, (i >> 8) as u8, i as u8]);
        dp.run_xdp(&frame_of(v4, 100).0, 1).unwrap();
        dp.run_xdp(&frame_of(v6(i), 100).0, 1).unwrap();
    }
    assert_eq!(dp.unmarked_ways().unwrap(), (0, 0));
    let s = dp.snapshot().unwrap();
    assert_eq!(s.flows.len(), 2 * usize::from(n));
    assert!(s.flows.iter().all(|f| f.counters.to_target_packets == 1));
    assert_eq!(s.ingress.new_flows, 2 * u64::from(n));
    // Unmarked and zero everywhere after a reset, every set read.
    dp.reset().unwrap();
    assert_eq!(dp.unmarked_ways().unwrap(), (0, 0));
    assert!(dp.snapshot().unwrap().flows.is_empty());
}

#[test]
#[ignore = "privileged: needs root, run by cargo xtask test"]
fn repeat_counts_every_run() {
    let mut dp = load(&[3260]);
    let f = tcp4(40000, 3260, payload(100)).build();
    dp.run_xdp(&f, 1000).unwrap();
    let c = only_flow(&dp.snapshot().unwrap()).counters;
    assert_eq!((c.to_target_bytes, c.to_target_packets), (100_000, 1000));
}

#[test]
#[ignore = "privileged: needs root, run by cargo xtask test"]
fn unknown_v4_and_v6_tcp_with_raw_l4_is_malformed() {
    // A TCP protocol number with fewer than 20 bytes of TCP header inside the IP packet.
    let mut dp = load(&[3260]);
    let f = Frame {
        vlans: vec![],
        l3: L3::V4(
            V4::new(frames::HOST4, frames::TARGET4),
            L4::Raw(vec![0x9c, 0x40, 0x0c, 0xbc]),
        ),
        trailer: vec![],
    };
    let g = Frame {
        vlans: vec![],
        l3: L3::V6(
            V6::new(frames::HOST6, frames::TARGET6),
            L4::Raw(vec![0; 12]),
        ),
        trailer: vec![],
    };
    xdp(&mut dp, &f.build());
    let s = xdp(&mut dp, &g.build());
    assert_eq!(s.ingress.malformed, 2);
}
