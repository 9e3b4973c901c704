//! The PNG plot of per-gateway load over time, with the moves marked.

use std::path::Path;

use anyhow::{Context as _, Result};
use plotters::prelude::*;

use super::metrics::{Move, Sample, rates};

/// A font for the labels: plotters' bitmap backend draws text with ab_glyph
/// from a font it is given, so no font library is needed. Without one of
/// these files the plot has no text (the colours are listed in the summary).
const FONTS: &[&str] = &[
    "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf",
    "/usr/share/fonts/truetype/liberation/LiberationSans-Regular.ttf",
];

/// Line colours, gateway by gateway (cycled).
pub const COLOURS: &[(&str, RGBColor)] = &[
    ("blue", RGBColor(31, 119, 180)),
    ("orange", RGBColor(255, 127, 14)),
    ("green", RGBColor(44, 160, 44)),
    ("red", RGBColor(214, 39, 40)),
    ("purple", RGBColor(148, 103, 189)),
    ("brown", RGBColor(140, 86, 75)),
];

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

/// Per-gateway MB/s between consecutive samples.
fn series(samples: &[Sample], gateways: usize) -> Vec<Vec<(f64, f64)>> {
    let mut out = vec![Vec::new(); gateways];
    for w in samples.windows(2) {
        let r = rates(&w[0].gateway_bytes, &w[1].gateway_bytes, w[1].t - w[0].t);
        for (g, v) in r.iter().enumerate().take(gateways) {
            out[g].push((w[1].t, v / 1e6));
        }
    }
    out
}

/// Draws `load.png`: one line per gateway (agents' counters, MB/s), a grey
/// vertical line at each move. Returns whether text could be drawn.
pub fn draw(path: &Path, samples: &[Sample], names: &[String], moves: &[Move]) -> Result<bool> {
    let text = register_font();
    let lines = series(samples, names.len());
    let t_max = samples.last().map_or(1.0, |s| s.t).max(1.0);
    let y_max = lines
        .iter()
        .flatten()
        .map(|&(_, v)| v)
        .fold(0.0, f64::max)
        .max(0.1)
        * 1.1;

    let root = BitMapBackend::new(path, (1000, 560)).into_drawing_area();
    let plot_err = |e| anyhow::anyhow!("plotting {}: {e:?}", path.display());
    root.fill(&WHITE).map_err(plot_err)?;
    let mut builder = ChartBuilder::on(&root);
    builder.margin(20);
    if text {
        builder
            .caption("sanlb lab: load per gateway", ("sans-serif", 24))
            .x_label_area_size(40)
            .y_label_area_size(60);
    }
    let mut chart = builder
        .build_cartesian_2d(0.0..t_max, 0.0..y_max)
        .map_err(plot_err)?;
    let mut mesh = chart.configure_mesh();
    if text {
        mesh.x_desc("seconds")
            .y_desc("MB/s (iSCSI, both directions)");
    } else {
        mesh.disable_x_axis().disable_y_axis();
    }
    mesh.draw().map_err(plot_err)?;
    let marker = RGBColor(120, 120, 120).stroke_width(2);
    for (i, m) in moves.iter().enumerate() {
        let series = chart
            .draw_series(LineSeries::new([(m.at_s, 0.0), (m.at_s, y_max)], marker))
            .map_err(plot_err)?;
        if text && i == 0 {
            series
                .label("address moves")
                .legend(move |(x, y)| PathElement::new([(x, y), (x + 20, y)], marker));
        }
    }
    for (g, points) in lines.into_iter().enumerate() {
        let colour = COLOURS[g % COLOURS.len()].1;
        let series = chart
            .draw_series(LineSeries::new(points, colour.stroke_width(2)))
            .map_err(plot_err)?;
        if text {
            series.label(names[g].as_str()).legend(move |(x, y)| {
                PathElement::new([(x, y), (x + 20, y)], colour.stroke_width(2))
            });
        }
    }
    if text {
        chart
            .configure_series_labels()
            .background_style(WHITE.mix(0.8))
            .border_style(BLACK)
            .draw()
            .map_err(plot_err)?;
    }
    root.present()
        .with_context(|| format!("writing {}", path.display()))?;
    Ok(text)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn draws_a_png() {
        let samples: Vec<Sample> = (0..10)
            .map(|t| Sample {
                t: t as f64,
                gateway_bytes: vec![t * 2_000_000, t * 1_000_000],
                veth_bytes: vec![0, 0],
                ..Sample::default()
            })
            .collect();
        let path = std::env::temp_dir().join(format!("xtask-plot-{}.png", std::process::id()));
        draw(&path, &samples, &["gw1".into(), "gw2".into()], &[]).unwrap();
        let bytes = std::fs::read(&path).unwrap();
        assert_eq!(&bytes[..8], b"\x89PNG\r\n\x1a\n");
        std::fs::remove_file(&path).unwrap();
        assert_eq!(series(&samples, 2)[0][0], (1.0, 2.0));
    }
}
