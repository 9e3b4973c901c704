//! A user-space model of what the counting programs must do with one frame.
//!
//! Written from the rules in docs/dataplane.md ("What is counted"), not from
//! the eBPF code, so the property test compares two readings of one spec.

use sanlb_common::{FlowCounters as Counters, HookStats as Stats};

/// Why the model expects a frame not to be counted.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Skip {
    NotIp,
    NotTcp,
    NotIscsi,
    Fragment,
    Truncated,
    Malformed,
    ExtHeaderLimit,
}

/// The model's verdict on one frame.
#[derive(Clone, Debug, PartialEq)]
pub enum Outcome {
    Skip(Skip),
    Count {
        initiator: std::net::IpAddr,
        target: std::net::IpAddr,
        to_target: bool,
        /// Bytes of all headers, Ethernet to TCP options.
        headers: usize,
        payload: usize,
        /// (read, write, edtl) of a SCSI Command BHS opening the payload.
        command: Option<(bool, bool, u32)>,
    },
}

fn get(b: &[u8], at: usize, n: usize) -> Option<&[u8]> {
    b.get(at..at.checked_add(n)?)
}

fn u16be(b: &[u8], at: usize) -> Option<u16> {
    get(b, at, 2).map(|s| u16::from_be_bytes([s[0], s[1]]))
}

/// Classifies `frame` as the programs must, with `ports` as iSCSI ports.
pub fn classify(frame: &[u8], ports: &[u16]) -> Outcome {
    match walk(frame, ports) {
        Ok(o) => o,
        Err(s) => Outcome::Skip(s),
    }
}

fn walk(f: &[u8], ports: &[u16]) -> Result<Outcome, Skip> {
    // Ethernet, then at most two tags of either TPID.
    let mut ethertype = u16be(f, 12).ok_or(Skip::Truncated)?;
    let mut at = 14;
    for _ in 0..2 {
        if ethertype != 0x8100 && ethertype != 0x88a8 {
            break;
        }
        ethertype = u16be(f, at + 2).ok_or(Skip::Truncated)?;
        at += 4;
    }
    let (src, dst, l4, end): (std::net::IpAddr, std::net::IpAddr, usize, usize) = match ethertype {
        0x0800 => {
            let first = *f.get(at).ok_or(Skip::Truncated)?;
            let ihl = usize::from(first & 15) * 4;
            if first >> 4 != 4 || ihl < 20 {
                return Err(Skip::Malformed);
            }
            let h = get(f, at, 20).ok_or(Skip::Truncated)?;
            let total = usize::from(u16::from_be_bytes([h[2], h[3]]));
            if total < ihl {
                return Err(Skip::Malformed);
            }
            if at + total > f.len() {
                return Err(Skip::Truncated);
            }
            let flags_offset = u16::from_be_bytes([h[6], h[7]]);
            let more_fragments = flags_offset & 0x2000 != 0;
            if more_fragments || flags_offset & 0x1fff != 0 {
                return Err(Skip::Fragment);
            }
            if h[9] != 6 {
                return Err(Skip::NotTcp);
            }
            let s: [u8; 4] = h[12..16].try_into().unwrap();
            let d: [u8; 4] = h[16..20].try_into().unwrap();
            (s.into(), d.into(), at + ihl, at + total)
        }
        0x86dd => {
            let h = get(f, at, 40).ok_or(Skip::Truncated)?;
            if h[0] >> 4 != 6 {
                return Err(Skip::Malformed);
            }
            let end = at + 40 + usize::from(u16::from_be_bytes([h[4], h[5]]));
            if end > f.len() {
                return Err(Skip::Truncated);
            }
            let mut next = h[6];
            let mut cur = at + 40;
            let mut seen = 0;
            loop {
                let is_ext = matches!(next, 0 | 43 | 44 | 51 | 60 | 135 | 139 | 140);
                if !is_ext {
                    break;
                }
                if seen == 6 {
                    return Err(Skip::ExtHeaderLimit);
                }
                if cur + 8 > end {
                    return Err(Skip::Malformed);
                }
                let len = match next {
                    44 => {
                        let field = u16::from_be_bytes([f[cur + 2], f[cur + 3]]);
                        let offset = field >> 3;
                        let more = field & 1;
                        if offset != 0 || more != 0 {
                            return Err(Skip::Fragment);
                        }
                        8
                    }
                    51 => (usize::from(f[cur + 1]) + 2) * 4,
                    _ => (usize::from(f[cur + 1]) + 1) * 8,
                };
                next = f[cur];
                cur += len;
                seen += 1;
            }
            if next != 6 {
                return Err(Skip::NotTcp);
            }
            let s: [u8; 16] = h[8..24].try_into().unwrap();
            let d: [u8; 16] = h[24..40].try_into().unwrap();
            (s.into(), d.into(), cur, end)
        }
        _ => return Err(Skip::NotIp),
    };
    if l4 + 20 > end {
        return Err(Skip::Malformed);
    }
    let sport = u16be(f, l4).unwrap();
    let dport = u16be(f, l4 + 2).unwrap();
    let to_target = if ports.contains(&dport) {
        true
    } else if ports.contains(&sport) {
        false
    } else {
        return Err(Skip::NotIscsi);
    };
    let doff = usize::from(f[l4 + 12] >> 4) * 4;
    if doff < 20 || l4 + doff > end {
        return Err(Skip::Malformed);
    }
    let start = l4 + doff;
    let payload = end - start;
    let command = (to_target && payload >= 48)
        .then(|| {
            let b = &f[start..start + 48];
            let opcode_ok = b[0] & 0x3f == 0x01 && b[0] & 0x80 == 0;
            let reserved_clear = b[1] & 0x18 == 0 && b[2] == 0 && b[3] == 0;
            (opcode_ok && reserved_clear).then(|| {
                (
                    b[1] & 0x40 != 0,
                    b[1] & 0x20 != 0,
                    u32::from_be_bytes([b[20], b[21], b[22], b[23]]),
                )
            })
        })
        .flatten();
    let (initiator, target) = if to_target { (src, dst) } else { (dst, src) };
    Ok(Outcome::Count {
        initiator,
        target,
        to_target,
        headers: start,
        payload,
        command,
    })
}

/// The counters one frame of `frame_len` bytes adds, sent as `segs` segments.
pub fn counters(o: &Outcome, frame_len: usize, segs: u64) -> Option<Counters> {
    let Outcome::Count {
        to_target,
        headers,
        payload,
        command,
        ..
    } = *o
    else {
        return None;
    };
    let frame = frame_len as u64 + (segs - 1) * headers as u64;
    let mut c = Counters::default();
    if to_target {
        c.to_target_bytes = payload as u64;
        c.to_target_packets = segs;
        c.to_target_frame_bytes = frame;
        if let Some((read, write, edtl)) = command {
            if read {
                c.scsi_read_cmds = 1;
                c.read_requested_bytes = edtl.into();
            }
            if write {
                c.scsi_write_cmds = 1;
                c.write_requested_bytes = edtl.into();
            }
            if !read && !write {
                c.scsi_other_cmds = 1;
            }
        }
    } else {
        c.to_initiator_bytes = payload as u64;
        c.to_initiator_packets = segs;
        c.to_initiator_frame_bytes = frame;
    }
    Some(c)
}

/// The statistics one frame adds to its hook (a new flow each time).
pub fn stats(o: &Outcome) -> Stats {
    let mut s = Stats {
        frames: 1,
        ..Default::default()
    };
    match o {
        Outcome::Count { .. } => {
            s.counted = 1;
            s.new_flows = 1;
        }
        Outcome::Skip(Skip::NotIp) => s.not_ip = 1,
        Outcome::Skip(Skip::NotTcp) => s.not_tcp = 1,
        Outcome::Skip(Skip::NotIscsi) => s.not_iscsi = 1,
        Outcome::Skip(Skip::Fragment) => s.fragment = 1,
        Outcome::Skip(Skip::Truncated) => s.truncated = 1,
        Outcome::Skip(Skip::Malformed) => s.malformed = 1,
        Outcome::Skip(Skip::ExtHeaderLimit) => s.ext_header_limit = 1,
    }
    s
}
