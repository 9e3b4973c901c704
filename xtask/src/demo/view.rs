//! What the terminal shows while the demo runs, and the summary at the end.

use std::fmt::Write as _;

use super::metrics::{Balance, MIB, Move, StallFigures, Summary};

/// Width of the load bars.
const BAR: usize = 40;

/// One frame of the live view.
pub struct Frame<'a> {
    /// Header line (shape, balancer).
    pub title: &'a str,
    /// The phase of the run (`load`, `read-back`, `iscsi-perf`).
    pub phase: &'a str,
    /// Seconds since the load started, and of the run.
    pub elapsed: f64,
    /// Planned seconds of load.
    pub duration: f64,
    /// Map generation.
    pub generation: u64,
    /// Gateway names.
    pub gateways: &'a [String],
    /// Gateway loads over the last second, by agents and by veth, bytes/s.
    pub loads: &'a [f64],
    /// The same by the veth counters.
    pub veth: &'a [f64],
    /// Balance over the last interval, if known yet.
    pub balance: Option<&'a Balance>,
    /// Full scale of the bars (the offered load), bytes/s.
    pub scale: f64,
    /// Target names owned by each gateway.
    pub owned: &'a [Vec<String>],
    /// The moves so far.
    pub moves: &'a [Move],
    /// I/O errors, verify errors, reconnects, longest stall seen.
    pub io: (u64, u64, u64, f64),
}

fn bar(value: f64, scale: f64) -> String {
    let cells = if scale > 0.0 {
        ((value / scale) * BAR as f64)
            .round()
            .clamp(0.0, BAR as f64) as usize
    } else {
        0
    };
    format!("{}{}", "█".repeat(cells), "·".repeat(BAR - cells))
}

/// The full-screen frame.
pub fn render(f: &Frame) -> String {
    let mut s = String::new();
    let _ = writeln!(s, "{}", f.title);
    let _ = writeln!(
        s,
        "{:>4.0} s (load: {:.0} s), now: {}",
        f.elapsed, f.duration, f.phase
    );
    let (mm, vn) = f
        .balance
        .map_or((f64::NAN, f64::NAN), |b| (b.max_mean, b.var_norm));
    let _ = writeln!(
        s,
        "generation {:<4} var_norm {:<7.4} max/mean {:<5.2} moves {:<3} io errors {} verify errors {} reconnects {} longest stall {:.2} s",
        f.generation,
        vn,
        mm,
        f.moves.len(),
        f.io.0,
        f.io.1,
        f.io.2,
        f.io.3
    );
    let _ = writeln!(s);
    let _ = writeln!(
        s,
        "{:<8} {:<width$}  {:>8} {:>9}  targets",
        "gateway",
        "load (agents' counters, last second)",
        "MiB/s",
        "veth MiB/s",
        width = BAR
    );
    for (g, name) in f.gateways.iter().enumerate() {
        let _ = writeln!(
            s,
            "{:<8} {}  {:>8.2} {:>9.2}  {}",
            name,
            bar(f.loads[g], f.scale),
            f.loads[g] / MIB,
            f.veth.get(g).copied().unwrap_or(0.0) / MIB,
            f.owned[g].join(" ")
        );
    }
    let _ = writeln!(s);
    let _ = writeln!(s, "moves (latest last)");
    for m in f.moves.iter().rev().take(8).rev() {
        let _ = writeln!(s, "  {}", move_line(m));
    }
    s
}

/// One move, for the view and the log.
pub fn move_line(m: &Move) -> String {
    // Moves are listed as they are seen, before their reconnects are.
    let stall = match (m.stall_s, m.reconnects) {
        (Some(s), n) => format!("stall {s:.2} s ({n} reconnects)"),
        (None, 0) => "stall -".to_owned(),
        (None, n) => format!("no stall ({n} reconnects)"),
    };
    let why = m.decision.as_ref().map_or_else(String::new, |d| {
        format!(
            "  (decided at {:.1} s, {}: {})",
            d.at_s,
            d.phase.name(),
            d.reason
        )
    });
    format!(
        "{:>6.1} s  gen {:<3} {:<4} {:<12} {} → {}   {stall}{why}",
        m.at_s,
        m.generation,
        m.label(),
        m.addr,
        m.from.as_deref().unwrap_or("-"),
        m.to.as_deref().unwrap_or("-"),
    )
}

fn figures(f: &StallFigures) -> String {
    format!(
        "median {:.2} s, p99 {:.2} s, max {:.2} s over {}",
        f.median_s, f.p99_s, f.max_s, f.count
    )
}

/// The summary as text.
pub fn summary(s: &Summary) -> String {
    let mut o = String::new();
    let b = |x: &Balance| {
        format!(
            "max/mean {:.2} (veth {:.2})  var_norm {:.4}  loads {} MiB/s",
            x.max_mean,
            x.max_mean_veth,
            x.var_norm,
            x.loads_mib_s
                .iter()
                .map(|l| format!("{l:.2}"))
                .collect::<Vec<_>>()
                .join(" / ")
        )
    };
    let p = &s.phases;
    let _ = writeln!(o, "summary ({} balancer, {} mode)", s.balancer, s.mode);
    let _ = writeln!(
        o,
        "  run      load 0–{:.0} s (fill until {:.0} s), read-back to {:.1} s, iscsi-perf {:.1}–{:.1} s, then one interval{}, end {:.1} s",
        p.load_end_s,
        p.prefill_end_s,
        p.readback_end_s,
        p.reader_start_s,
        p.reader_end_s,
        p.controller_stop_s
            .map_or_else(String::new, |t| format!(", controller stopped {t:.1} s")),
        p.end_s
    );
    let _ = writeln!(o, "  before   {}", b(&s.before));
    let _ = writeln!(o, "  after    {}  (last interval of the load)", b(&s.after));
    let _ = writeln!(
        o,
        "  moves {} ({} during the load, the last at {:.1} s; {} after it)  generation {}  balanced (≤ 1.10) from {}",
        s.moves,
        s.moves_in_load,
        s.converge_s,
        s.moves - s.moves_in_load,
        s.generation,
        s.balanced_s
            .map_or_else(|| "never".to_owned(), |t| format!("{t:.1} s"))
    );
    if !s.rebalances.is_empty() {
        let _ = writeln!(o, "  rebalances adopted:");
        for r in &s.rebalances {
            let _ = writeln!(
                o,
                "    {:>5.1} s  {:<10} gen {:<3} {} moves  var_norm {} → {:.4}  ({}: {})",
                r.at_s,
                r.phase.name(),
                r.generation,
                r.moves,
                r.var_norm_before
                    .map_or_else(|| "-".to_owned(), |v| format!("{v:.4}")),
                r.var_norm_after,
                r.trigger,
                r.reason
            );
        }
    }
    let _ = writeln!(o, "  every move:");
    for m in &s.move_log {
        let _ = writeln!(o, "    {:<10} {}", m.phase.name(), move_line(m));
    }
    let quiet = s
        .move_log
        .iter()
        .filter(|m| m.stall_s.is_none() && m.reconnects > 0)
        .count();
    let _ = writeln!(
        o,
        "  stall per move (the longest of its initiators' gaps across their reconnects): {}{}",
        figures(&s.stalls.per_move),
        if quiet > 0 {
            format!(
                "; {quiet} more with no stall ≥ {:.0} ms",
                s.stalls.threshold_s * 1000.0
            )
        } else {
            String::new()
        }
    );
    let why = if s.mode == "pair" {
        "the old gateway resets it, the host reconnects through the portal"
    } else {
        "0.2 s with I/O in flight, less when idle"
    };
    let _ = writeln!(
        o,
        "    per initiator and move ({why}): {}",
        figures(&s.stalls.per_initiator)
    );
    let _ = writeln!(
        o,
        "  stall without a move (the same initiators' other gaps ≥ {:.0} ms in the load): {}",
        s.stalls.threshold_s * 1000.0,
        figures(&s.stalls.baseline)
    );
    let _ = writeln!(
        o,
        "  initiators: io errors {}  verify errors {}  blocks read back {}  reconnects {}",
        s.io_errors, s.verify_errors, s.verified_blocks, s.reconnects
    );
    let _ = writeln!(
        o,
        "  bytes counted vs moved per (initiator, target): {} pairs, max difference {:.2} % (iSCSI stream), {:.2} % (SCSI commands' lengths)",
        s.bytes.pairs,
        s.bytes.max_rel_diff * 100.0,
        s.bytes.max_rel_diff_scsi * 100.0
    );
    if let Some(p) = &s.iscsi_perf {
        let _ = writeln!(o, "  iscsi-perf (independent reader): {p}");
    }
    o
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bars_scale_and_clamp() {
        assert_eq!(bar(0.0, 10.0).chars().filter(|&c| c == '█').count(), 0);
        assert_eq!(
            bar(5.0, 10.0).chars().filter(|&c| c == '█').count(),
            BAR / 2
        );
        assert_eq!(bar(50.0, 10.0).chars().filter(|&c| c == '█').count(), BAR);
        assert_eq!(bar(1.0, 0.0).chars().count(), BAR);
    }
}
