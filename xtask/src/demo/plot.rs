//! `load.png`: the load per gateway over the whole run (top) and its balance,
//! max/mean over the last interval (bottom), with the phases shaded and every
//! move marked and labelled.
//!
//! The load axis is scaled to the steady load (after the fill, before the
//! read-back); what goes above it (the fill, the read-back, iscsi-perf) is
//! clipped and its peak written on it. Each gateway has its own colour, line
//! pattern and point marker, so equal loads stay apart.

use std::path::Path;

use anyhow::{Context as _, Result};
use plotters::{coord::Shift, prelude::*};

use super::metrics::{Balance, MIB, Move, Phases, Sample, rates};

/// A font for the labels: plotters' bitmap backend draws text with ab_glyph
/// from a font it is given, so no font library is needed. Without one of
/// these files the plot has no text (the styles are listed on the terminal).
const FONTS: &[&str] = &[
    "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf",
    "/usr/share/fonts/truetype/liberation/LiberationSans-Regular.ttf",
];

/// Gateway styles, in gateway order (cycled): name, colour.
pub const STYLES: &[(&str, RGBColor)] = &[
    ("blue solid ●", RGBColor(31, 119, 180)),
    ("orange dashed ▲", RGBColor(255, 127, 14)),
    ("green dotted ✕", RGBColor(44, 160, 44)),
    ("red solid ■", RGBColor(214, 39, 40)),
    ("purple dashed ●", RGBColor(148, 103, 189)),
    ("brown dotted ▲", RGBColor(140, 86, 75)),
];

const MOVE: RGBColor = RGBColor(90, 90, 90);
const CLIP: RGBColor = RGBColor(200, 0, 0);

/// What to draw.
pub struct Input<'a> {
    /// Every sample of the run.
    pub samples: &'a [Sample],
    /// Gateway names.
    pub gateways: &'a [String],
    /// Every move of the run.
    pub moves: &'a [Move],
    /// The phases.
    pub phases: &'a Phases,
    /// Seconds of the balance window (the rebalance interval).
    pub interval: f64,
    /// The max/mean below which the map counts as balanced.
    pub balanced: f64,
}

fn register_font() -> bool {
    for path in FONTS {
        if let Ok(bytes) = std::fs::read(path) {
            // plotters keeps fonts for the life of the process.
            let bytes: &'static [u8] = Box::leak(bytes.into_boxed_slice());
            if plotters::style::register_font("sans-serif", FontStyle::Normal, bytes).is_ok() {
                return true;
            }
        }
    }
    false
}

/// Per-gateway MiB/s between consecutive samples, at the later one.
fn series(samples: &[Sample], gateways: usize) -> Vec<Vec<(f64, f64)>> {
    let mut out = vec![Vec::new(); gateways];
    for w in samples.windows(2) {
        let r = rates(&w[0].gateway_bytes, &w[1].gateway_bytes, w[1].t - w[0].t);
        for (g, v) in r.iter().enumerate().take(gateways) {
            out[g].push((w[1].t, v / MIB));
        }
    }
    out
}

/// max/mean of the gateway loads over the last `interval` at each sample.
fn balance_series(samples: &[Sample], interval: f64) -> Vec<(f64, f64)> {
    samples
        .iter()
        .filter(|s| s.t >= interval)
        .filter_map(|s| Some((s.t, Balance::of(samples, s.t - interval, s.t)?.max_mean)))
        // Without load there is no balance to show.
        .filter(|&(_, v)| v > 0.0)
        .collect()
}

/// The top of the load axis: 1.3 × the largest steady load (after the fill,
/// before the end of the load), or of everything if there is no steady part.
fn load_axis(lines: &[Vec<(f64, f64)>], phases: &Phases) -> f64 {
    let steady = |&&(t, _): &&(f64, f64)| t > phases.prefill_end_s + 1.0 && t <= phases.load_end_s;
    let max = |f: &dyn Fn(&&(f64, f64)) -> bool| {
        lines
            .iter()
            .flatten()
            .filter(|p| f(p))
            .map(|&(_, v)| v)
            .fold(0.0, f64::max)
    };
    let m = max(&steady);
    let m = if m > 0.0 { m } else { max(&|_| true) };
    (m * 1.3).max(0.1)
}

/// The peaks of the runs of points above `top`: (time, value).
fn clipped_peaks(points: &[(f64, f64)], top: f64) -> Vec<(f64, f64)> {
    let mut peaks = Vec::new();
    let mut run: Option<(f64, f64)> = None;
    for &(t, v) in points {
        if v > top {
            run = Some(match run {
                Some(p) if p.1 >= v => p,
                _ => (t, v),
            });
        } else if let Some(p) = run.take() {
            peaks.push(p);
        }
    }
    peaks.extend(run);
    peaks
}

/// The moves grouped by the decision that made them: time, label lines
/// (the decision, then each move with the generation that handed it over).
fn move_groups(moves: &[Move]) -> Vec<(f64, Vec<String>)> {
    let mut groups: Vec<(f64, u64, Vec<String>)> = Vec::new();
    for m in moves {
        let t = m.time_s();
        let g = m.decision.as_ref().map_or(m.generation, |d| d.generation);
        let line = format!(
            "{} {}→{} (gen {})",
            m.label(),
            m.from.as_deref().unwrap_or("-"),
            m.to.as_deref().unwrap_or("-"),
            m.generation
        );
        match groups
            .iter_mut()
            .find(|(gt, gg, _)| *gg == g && (gt - t).abs() < 0.5)
        {
            Some(group) => group.2.push(line),
            None => groups.push((t, g, vec![line])),
        }
    }
    groups
        .into_iter()
        .map(|(t, g, mut lines)| {
            lines.insert(0, format!("{t:.1} s: gen {g} decided"));
            (t, lines)
        })
        .collect()
}

/// The shaded phases: from, to, label, colour.
fn shades(p: &Phases) -> Vec<(f64, f64, &'static str, RGBColor)> {
    let mut out = vec![
        (0.0, p.prefill_end_s, "fill", RGBColor(255, 236, 160)),
        (
            p.load_end_s,
            p.readback_end_s,
            "read-back",
            RGBColor(190, 220, 255),
        ),
        (
            p.reader_start_s,
            p.reader_end_s,
            "iscsi-perf",
            RGBColor(215, 215, 215),
        ),
    ];
    out.push((
        p.reader_end_s,
        p.controller_stop_s.unwrap_or(p.end_s),
        "after",
        RGBColor(235, 245, 235),
    ));
    if let Some(stop) = p.controller_stop_s {
        out.push((stop, p.end_s, "stopped", RGBColor(240, 240, 240)));
    }
    out.retain(|s| s.1 > s.0);
    out
}

type Area<'a> = DrawingArea<BitMapBackend<'a>, Shift>;

/// Draws the PNG; returns whether text could be drawn.
pub fn draw(path: &Path, input: &Input) -> Result<bool> {
    let text = register_font();
    let root = BitMapBackend::new(path, (1280, 860)).into_drawing_area();
    let plot_err = |e| anyhow::anyhow!("plotting {}: {e:?}", path.display());
    root.fill(&WHITE).map_err(plot_err)?;
    let (top, bottom) = root.split_vertically(560);
    draw_loads(&top, input, text).map_err(plot_err)?;
    draw_balance(&bottom, input, text).map_err(plot_err)?;
    root.present()
        .with_context(|| format!("writing {}", path.display()))?;
    Ok(text)
}

type DrawResult =
    Result<(), DrawingAreaErrorKind<<BitMapBackend<'static> as DrawingBackend>::ErrorType>>;

fn draw_loads(area: &Area, input: &Input, text: bool) -> DrawResult {
    let lines = series(input.samples, input.gateways.len());
    let t_max = input.phases.end_s.max(1.0);
    let y_max = load_axis(&lines, input.phases);
    let mut builder = ChartBuilder::on(area);
    builder.margin(15).margin_right(25);
    if text {
        builder
            .caption(
                "sanlb lab: load per gateway (agents' counters, iSCSI both directions)",
                ("sans-serif", 22),
            )
            .x_label_area_size(30)
            .y_label_area_size(60);
    }
    let mut chart = builder.build_cartesian_2d(0.0..t_max, 0.0..y_max)?;
    let mut mesh = chart.configure_mesh();
    if text {
        mesh.y_desc("MiB/s").x_labels(16);
    } else {
        mesh.disable_x_axis().disable_y_axis();
    }
    mesh.draw()?;
    for (i, (from, to, label, colour)) in shades(input.phases).into_iter().enumerate() {
        chart.draw_series([Rectangle::new(
            [(from, 0.0), (to, y_max)],
            colour.mix(0.5).filled(),
        )])?;
        if text {
            // Staggered: the phases after the load are short.
            chart.draw_series([Text::new(
                label,
                (from + 0.2, y_max * (0.03 + 0.05 * (i % 4) as f64)),
                ("sans-serif", 13).into_font().color(&BLACK.mix(0.7)),
            )])?;
        }
    }
    // Moves: a line each, labelled with the generation and what moved;
    // labels alternate in height so that close ones do not cover each other.
    let marker = MOVE.stroke_width(2);
    let mut labels = Vec::new();
    for (i, (t, label)) in move_groups(input.moves).into_iter().enumerate() {
        let series =
            chart.draw_series(DashedLineSeries::new([(t, 0.0), (t, y_max)], 6, 4, marker))?;
        if text && i == 0 {
            series
                .label("move")
                .legend(move |(x, y)| PathElement::new([(x, y), (x + 20, y)], marker));
        }
        labels.push((i, t, label));
    }
    for (g, points) in lines.iter().enumerate() {
        let colour = STYLES[g % STYLES.len()].1;
        let style = colour.stroke_width(2);
        let clipped: Vec<(f64, f64)> = points.iter().map(|&(t, v)| (t, v.min(y_max))).collect();
        let shape = g % 4;
        match shape {
            0 => {
                chart.draw_series(clipped.iter().map(|&p| Circle::new(p, 3, colour.filled())))?;
            }
            1 => {
                chart.draw_series(
                    clipped
                        .iter()
                        .map(|&p| TriangleMarker::new(p, 5, colour.filled())),
                )?;
            }
            2 => {
                chart.draw_series(
                    clipped
                        .iter()
                        .map(|&p| Cross::new(p, 4, colour.stroke_width(2))),
                )?;
            }
            _ => {
                chart.draw_series(
                    clipped
                        .iter()
                        .map(|&p| Rectangle::new([p, p], colour.stroke_width(5))),
                )?;
            }
        }
        let series = match g % 3 {
            0 => chart.draw_series(LineSeries::new(clipped, style))?,
            1 => chart.draw_series(DashedLineSeries::new(clipped, 10, 5, style))?,
            _ => chart.draw_series(DashedLineSeries::new(clipped, 2, 5, colour.stroke_width(3)))?,
        };
        if text {
            // The legend shows the line and the point marker.
            let series = series.label(input.gateways[g].as_str());
            let line = move || PathElement::new([(-10, 0), (10, 0)], colour.stroke_width(2));
            match shape {
                0 => series.legend(move |(x, y)| {
                    EmptyElement::at((x + 10, y)) + line() + Circle::new((0, 0), 3, colour.filled())
                }),
                1 => series.legend(move |(x, y)| {
                    EmptyElement::at((x + 10, y))
                        + line()
                        + TriangleMarker::new((0, 0), 5, colour.filled())
                }),
                2 => series.legend(move |(x, y)| {
                    EmptyElement::at((x + 10, y))
                        + line()
                        + Cross::new((0, 0), 4, colour.stroke_width(2))
                }),
                _ => series.legend(move |(x, y)| {
                    EmptyElement::at((x + 10, y))
                        + line()
                        + Rectangle::new([(-2, -2), (2, 2)], colour.filled())
                }),
            };
        }
        // What the axis cuts off: a mark at the top and the peak's value.
        for (t, v) in clipped_peaks(points, y_max) {
            chart.draw_series([TriangleMarker::new((t, y_max), 6, CLIP.filled())])?;
            if text {
                chart.draw_series([Text::new(
                    format!("{} {v:.0} MiB/s", input.gateways[g]),
                    (t + 0.3, y_max * (0.93 - 0.045 * g as f64)),
                    ("sans-serif", 12).into_font().color(&CLIP),
                )])?;
            }
        }
    }
    // The move labels last, on a white box, so that no line crosses them.
    if text {
        let (px, py) = chart.plotting_area().get_pixel_range();
        let per_px_x = t_max / f64::from((px.end - px.start).max(1));
        let per_px_y = y_max / f64::from((py.end - py.start).max(1));
        for (i, t, label) in labels {
            let y0 = y_max * if i % 2 == 0 { 0.68 } else { 0.5 };
            let step = 17.0 * per_px_y;
            let chars = label.iter().map(|l| l.chars().count()).max().unwrap_or(0);
            let (x0, x1) = (
                t + 4.0 * per_px_x,
                t + (10.0 + 6.8 * chars as f64) * per_px_x,
            );
            chart.draw_series([Rectangle::new(
                [
                    (x0, y0 + 3.0 * per_px_y),
                    (x1, y0 - step * label.len() as f64),
                ],
                WHITE.mix(0.85).filled(),
            )])?;
            for (k, line) in label.iter().enumerate() {
                chart.draw_series([Text::new(
                    line.clone(),
                    (x0 + 3.0 * per_px_x, y0 - step * k as f64),
                    ("sans-serif", 13).into_font().color(&MOVE),
                )])?;
            }
        }
    }
    if text {
        chart
            .configure_series_labels()
            .position(SeriesLabelPosition::UpperMiddle)
            .background_style(WHITE.mix(0.85))
            .border_style(BLACK)
            .draw()?;
    }
    Ok(())
}

fn draw_balance(area: &Area, input: &Input, text: bool) -> DrawResult {
    let points = balance_series(input.samples, input.interval);
    let t_max = input.phases.end_s.max(1.0);
    let k = input.gateways.len().max(2) as f64;
    let y_max = k + 0.2;
    let mut builder = ChartBuilder::on(area);
    builder.margin(15).margin_right(25);
    if text {
        builder
            .caption(
                format!(
                    "balance: max/mean of the gateway loads over the last {:.0} s (1 = even, {k:.0} = all on one)",
                    input.interval
                ),
                ("sans-serif", 18),
            )
            .x_label_area_size(35)
            .y_label_area_size(60);
    }
    let mut chart = builder.build_cartesian_2d(0.0..t_max, 0.8..y_max)?;
    let mut mesh = chart.configure_mesh();
    if text {
        mesh.x_desc("seconds since the load started")
            .y_desc("max/mean")
            .x_labels(16);
    } else {
        mesh.disable_x_axis().disable_y_axis();
    }
    mesh.draw()?;
    for (from, to, _, colour) in shades(input.phases) {
        chart.draw_series([Rectangle::new(
            [(from, 0.8), (to, y_max)],
            colour.mix(0.5).filled(),
        )])?;
    }
    for (t, _) in move_groups(input.moves) {
        chart.draw_series(DashedLineSeries::new(
            [(t, 0.8), (t, y_max)],
            6,
            4,
            MOVE.stroke_width(2),
        ))?;
    }
    let limit = RGBColor(44, 160, 44);
    chart.draw_series(DashedLineSeries::new(
        [(0.0, input.balanced), (t_max, input.balanced)],
        8,
        6,
        limit.stroke_width(2),
    ))?;
    if text {
        chart.draw_series([Text::new(
            format!("balanced ≤ {:.2}", input.balanced),
            (0.3, input.balanced + 0.12),
            ("sans-serif", 13).into_font().color(&limit),
        )])?;
    }
    let clipped: Vec<(f64, f64)> = points.iter().map(|&(t, v)| (t, v.min(y_max))).collect();
    chart.draw_series(LineSeries::new(clipped.clone(), BLACK.stroke_width(2)))?;
    chart.draw_series(clipped.iter().map(|&p| Circle::new(p, 2, BLACK.filled())))?;
    // The figure at the end of the load, where the summary's "after" is.
    if let Some(&(t, v)) = points.iter().rfind(|(t, _)| *t <= input.phases.load_end_s)
        && text
    {
        chart.draw_series([Text::new(
            format!("{v:.2} at {t:.0} s"),
            (t - 4.0, (v + 0.35).min(y_max - 0.2)),
            ("sans-serif", 14).into_font().color(&BLACK),
        )])?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::demo::metrics::Phase;

    fn samples() -> Vec<Sample> {
        // A fill spike, then 2 and 1 MiB/s, then a read-back burst.
        let mut bytes = [0u64, 0];
        (0..20)
            .map(|t| {
                let add = match t {
                    1 => [50.0, 0.0],
                    2..=15 => [2.0, 1.0],
                    _ => [30.0, 0.5],
                };
                for g in 0..2 {
                    bytes[g] += (add[g] * MIB) as u64;
                }
                Sample {
                    t: t as f64,
                    gateway_bytes: bytes.to_vec(),
                    veth_bytes: vec![0, 0],
                    ..Sample::default()
                }
            })
            .collect()
    }

    fn phases() -> Phases {
        Phases {
            prefill_end_s: 1.0,
            load_end_s: 15.0,
            readback_end_s: 16.0,
            reader_start_s: 16.0,
            reader_end_s: 18.0,
            controller_stop_s: Some(18.5),
            end_s: 19.0,
        }
    }

    #[test]
    fn the_axis_follows_the_steady_load_and_clips_the_rest() {
        let s = samples();
        let lines = series(&s, 2);
        assert_eq!(lines[0][0], (1.0, 50.0));
        let top = load_axis(&lines, &phases());
        assert!((top - 2.6).abs() < 1e-9, "{top}");
        assert_eq!(clipped_peaks(&lines[0], top), [(1.0, 50.0), (16.0, 30.0)]);
        assert!(clipped_peaks(&lines[1], top).is_empty());
    }

    fn mv(target: &str, t: f64, generation: u64) -> Move {
        Move {
            at_s: t,
            phase: Phase::Load,
            target: target.into(),
            host: None,
            addr: "198.18.1.1".parse().unwrap(),
            from: Some("gw1".into()),
            to: Some("gw2".into()),
            generation,
            decision: None,
            reconnects: 0,
            stalls_s: Vec::new(),
            stall_s: None,
        }
    }

    #[test]
    fn moves_are_grouped_by_decision() {
        let g = move_groups(&[mv("t1", 5.0, 4), mv("t2", 5.0, 4), mv("t3", 47.0, 7)]);
        assert_eq!(g.len(), 2);
        assert_eq!(
            g[0].1,
            [
                "5.0 s: gen 4 decided",
                "t1 gw1→gw2 (gen 4)",
                "t2 gw1→gw2 (gen 4)"
            ]
        );
        assert_eq!(g[1].1, ["47.0 s: gen 7 decided", "t3 gw1→gw2 (gen 7)"]);
    }

    #[test]
    fn draws_a_png() {
        let s = samples();
        let path = std::env::temp_dir().join(format!("xtask-plot-{}.png", std::process::id()));
        let moves = [mv("t1", 5.0, 4), mv("t2", 5.0, 4), mv("t3", 16.5, 7)];
        let input = Input {
            samples: &s,
            gateways: &["gw1".into(), "gw2".into()],
            moves: &moves,
            phases: &phases(),
            interval: 5.0,
            balanced: 1.1,
        };
        draw(&path, &input).unwrap();
        if let Some(keep) = std::env::var_os("XTASK_KEEP_PLOT") {
            std::fs::copy(&path, keep).unwrap();
        }
        let bytes = std::fs::read(&path).unwrap();
        assert_eq!(&bytes[..8], b"\x89PNG\r\n\x1a\n");
        std::fs::remove_file(&path).unwrap();
        assert!(!balance_series(&s, 5.0).is_empty());
    }
}
