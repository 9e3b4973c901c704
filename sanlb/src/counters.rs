//! `sanlb counters`: the pinned counters as a table for people or JSON for tools.

use std::fmt::Write as _;

use crate::dataplane::{FlowRecord, Snapshot, Stats};

/// Flows sorted by total payload bytes, largest first (ties by addresses, so
/// the order is stable).
pub fn sorted(flows: &[FlowRecord]) -> Vec<&FlowRecord> {
    let mut v: Vec<&FlowRecord> = flows.iter().collect();
    v.sort_by(|a, b| {
        b.counters
            .total_bytes()
            .cmp(&a.counters.total_bytes())
            .then_with(|| (a.initiator, a.target).cmp(&(b.initiator, b.target)))
    });
    v
}

/// `1.5 GiB`-style byte counts for the table.
pub fn human_bytes(n: u64) -> String {
    const UNITS: [&str; 6] = ["B", "KiB", "MiB", "GiB", "TiB", "PiB"];
    let mut v = n as f64;
    let mut u = 0;
    while v >= 1024.0 && u < UNITS.len() - 1 {
        v /= 1024.0;
        u += 1;
    }
    if u == 0 {
        format!("{n} B")
    } else {
        format!("{v:.1} {}", UNITS[u])
    }
}

/// The table a person reads: one line per (initiator, target), then the
/// per-hook statistics.
pub fn render_table(iface: &str, snap: &Snapshot) -> String {
    let mut out = String::new();
    let ports: Vec<String> = snap.ports.iter().map(u16::to_string).collect();
    let _ = writeln!(
        out,
        "iSCSI counters on {iface} (ports {}), {} initiator/target pairs",
        ports.join(","),
        snap.flows.len()
    );
    let _ = writeln!(
        out,
        "{:<40} {:<40} {:>11} {:>11} {:>9} {:>9} {:>8} {:>8} {:>11} {:>11}",
        "INITIATOR",
        "TARGET",
        "TO TARGET",
        "TO INIT",
        "PKTS >",
        "PKTS <",
        "READS",
        "WRITES",
        "READ REQ",
        "WRITE REQ"
    );
    for f in sorted(&snap.flows) {
        let c = &f.counters;
        let _ = writeln!(
            out,
            "{:<40} {:<40} {:>11} {:>11} {:>9} {:>9} {:>8} {:>8} {:>11} {:>11}",
            f.initiator.to_string(),
            f.target.to_string(),
            human_bytes(c.to_target_bytes),
            human_bytes(c.to_initiator_bytes),
            c.to_target_packets,
            c.to_initiator_packets,
            c.scsi_read_cmds,
            c.scsi_write_cmds,
            human_bytes(c.read_requested_bytes),
            human_bytes(c.write_requested_bytes),
        );
    }
    let _ = writeln!(out);
    match &snap.attachment {
        Some(a) => {
            let _ = writeln!(out, "ingress counted by {} ({})", a.ingress, a.reason);
        }
        None => {
            let _ = writeln!(out, "ingress hook not recorded");
        }
    }
    let _ = writeln!(out, "{:<9} {}", "ingress", stats_line(&snap.ingress));
    let _ = writeln!(out, "{:<9} {}", "egress", stats_line(&snap.egress));
    out
}

fn stats_line(s: &Stats) -> String {
    format!(
        "frames {} counted {} | skipped: not-ip {} not-tcp {} not-iscsi {} fragment {} \
         truncated {} malformed {} ext-hdr-limit {} | flows new {} insert-failed {}",
        s.frames,
        s.counted,
        s.not_ip,
        s.not_tcp,
        s.not_iscsi,
        s.fragment,
        s.truncated,
        s.malformed,
        s.ext_header_limit,
        s.new_flows,
        s.insert_failed
    )
}

/// The `--json` form: an array of flow objects, largest first.
pub fn render_json(snap: &Snapshot) -> serde_json::Result<String> {
    serde_json::to_string_pretty(&sorted(&snap.flows))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dataplane::Counters;

    fn rec(i: &str, t: &str, up: u64, down: u64) -> FlowRecord {
        FlowRecord {
            initiator: i.parse().unwrap(),
            target: t.parse().unwrap(),
            counters: Counters {
                to_target_bytes: up,
                to_initiator_bytes: down,
                ..Default::default()
            },
        }
    }

    #[test]
    fn sorted_by_total_bytes_then_address() {
        let flows = vec![
            rec("198.18.0.10", "198.18.1.50", 10, 0),
            rec("198.18.0.11", "198.18.1.50", 5, 100),
            rec("198.18.0.9", "198.18.1.50", 10, 0),
        ];
        let order: Vec<String> = sorted(&flows)
            .iter()
            .map(|f| f.initiator.to_string())
            .collect();
        // Addresses compare numerically: .9 before .10.
        assert_eq!(order, ["198.18.0.11", "198.18.0.9", "198.18.0.10"]);
    }

    #[test]
    fn json_has_the_documented_fields() {
        let snap = Snapshot {
            flows: vec![rec("198.18.0.10", "2001:db8::5", 7, 9)],
            ..Default::default()
        };
        let v: serde_json::Value = serde_json::from_str(&render_json(&snap).unwrap()).unwrap();
        let o = &v[0];
        assert_eq!(o["initiator"], "198.18.0.10");
        assert_eq!(o["target"], "2001:db8::5");
        assert_eq!(o["to_target_bytes"], 7);
        assert_eq!(o["to_initiator_bytes"], 9);
        for k in [
            "to_target_packets",
            "to_initiator_packets",
            "scsi_read_cmds",
            "read_requested_bytes",
        ] {
            assert!(o.get(k).is_some(), "missing {k}");
        }
    }

    #[test]
    fn table_says_which_hook_counts_ingress_and_why() {
        use crate::dataplane::{AttachReason, Attachment, IngressHook};
        let mut snap = Snapshot::default();
        assert!(render_table("eth0", &snap).contains("ingress hook not recorded"));
        snap.attachment = Some(Attachment {
            ingress: IngressHook::Tc,
            reason: AttachReason::VirtualNic,
        });
        let table = render_table("eth0", &snap);
        assert!(
            table
                .contains("ingress counted by tc (a virtual NIC: native XDP would cost throughput"),
            "{table}"
        );
    }

    #[test]
    fn human_bytes_units() {
        assert_eq!(human_bytes(0), "0 B");
        assert_eq!(human_bytes(1023), "1023 B");
        assert_eq!(human_bytes(1536), "1.5 KiB");
        assert_eq!(human_bytes(3 << 30), "3.0 GiB");
    }
}
