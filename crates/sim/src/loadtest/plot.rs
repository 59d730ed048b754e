//! PNG plots of a load run: bridge CPU and RSS against calls (with the fitted lines), and the
//! latency CDF each way at every level. Text is drawn with a system TrueType font
//! (DejaVu Sans, Debian's `fonts-dejavu-core`); without one there are no plots, only the CSV.

use std::path::{Path, PathBuf};

use anyhow::Context as _;
use plotters::coord::types::RangedCoordf64;
use plotters::prelude::*;
use plotters::style::{FontStyle, register_font};

use super::report::{Fit, LevelResult};

const FONT_PATHS: &[&str] = &[
    "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf",
    "/usr/share/fonts/dejavu/DejaVuSans.ttf",
    "/usr/share/fonts/TTF/DejaVuSans.ttf",
];

fn load_font() -> anyhow::Result<()> {
    let path = FONT_PATHS
        .iter()
        .find(|p| Path::new(p).exists())
        .context("no DejaVu Sans font found (apt-get install fonts-dejavu-core)")?;
    let bytes: &'static [u8] = Box::leak(std::fs::read(path)?.into_boxed_slice());
    register_font("sans-serif", FontStyle::Normal, bytes)
        .map_err(|_| anyhow::anyhow!("{path} is not a usable font"))?;
    Ok(())
}

/// Writes `cpu_rss.png` and `latency_cdf.png` into `dir`; returns their paths.
pub fn draw(
    dir: &Path,
    levels: &[LevelResult],
    cpu_fit: Option<Fit>,
    rss_fit: Option<Fit>,
) -> anyhow::Result<Vec<PathBuf>> {
    load_font()?;
    let cpu_rss = dir.join("cpu_rss.png");
    draw_cpu_rss(&cpu_rss, levels, cpu_fit, rss_fit)?;
    let latency = dir.join("latency_cdf.png");
    draw_latency(&latency, levels)?;
    Ok(vec![cpu_rss, latency])
}

fn plot_error<E: std::fmt::Debug>(err: E) -> anyhow::Error {
    anyhow::anyhow!("drawing: {err:?}")
}

/// Both kinds of chart: f64 against f64 on a PNG.
type Chart<'a> = ChartContext<'a, BitMapBackend<'a>, Cartesian2d<RangedCoordf64, RangedCoordf64>>;

fn draw_legend(chart: &mut Chart<'_>, position: SeriesLabelPosition) -> anyhow::Result<()> {
    chart
        .configure_series_labels()
        .position(position)
        .label_font(("sans-serif", 14))
        .background_style(WHITE.mix(0.8))
        .border_style(BLACK)
        .draw()
        .map_err(plot_error)
}

fn draw_cpu_rss(
    path: &Path,
    levels: &[LevelResult],
    cpu_fit: Option<Fit>,
    rss_fit: Option<Fit>,
) -> anyhow::Result<()> {
    let root = BitMapBackend::new(path, (1200, 500)).into_drawing_area();
    root.fill(&WHITE).map_err(plot_error)?;
    let (left, right) = root.split_horizontally(600);
    let max_calls = levels.iter().map(|l| l.admitted).max().unwrap_or(1).max(1) as f64 * 1.05;
    let cpu: Vec<(f64, f64)> = levels
        .iter()
        .map(|l| (l.admitted as f64, l.bridge_cores * 100.0))
        .collect();
    let rss: Vec<(f64, f64)> = levels
        .iter()
        .map(|l| (l.admitted as f64, l.rss_mib))
        .collect();
    let series = [
        (
            &left,
            "Bridge CPU vs calls",
            "CPU, % of one core",
            cpu,
            cpu_fit.map(|f| Fit {
                slope: f.slope * 100.0,
                intercept: f.intercept * 100.0,
            }),
        ),
        (&right, "Bridge RSS vs calls", "RSS, MiB", rss, rss_fit),
    ];
    for (area, title, y_label, points, fit) in series {
        let y_max = points.iter().map(|p| p.1).fold(1.0, f64::max) * 1.15;
        let mut chart = ChartBuilder::on(area)
            .caption(title, ("sans-serif", 22))
            .margin(12)
            .x_label_area_size(40)
            .y_label_area_size(60)
            .build_cartesian_2d(0.0..max_calls, 0.0..y_max)
            .map_err(plot_error)?;
        chart
            .configure_mesh()
            .x_desc("concurrent calls")
            .y_desc(y_label)
            .label_style(("sans-serif", 14))
            .draw()
            .map_err(plot_error)?;
        chart
            .draw_series(points.iter().map(|&p| Circle::new(p, 5, BLUE.filled())))
            .map_err(plot_error)?
            .label("measured")
            .legend(|(x, y)| Circle::new((x + 10, y), 5, BLUE.filled()));
        if let Some(fit) = fit {
            chart
                .draw_series(LineSeries::new(
                    [0.0, max_calls].map(|x| (x, fit.intercept + fit.slope * x)),
                    RED.stroke_width(2),
                ))
                .map_err(plot_error)?
                .label(format!(
                    "fit: {:.2} + {:.3} per call",
                    fit.intercept, fit.slope
                ))
                .legend(|(x, y)| PathElement::new([(x, y), (x + 20, y)], RED.stroke_width(2)));
        }
        draw_legend(&mut chart, SeriesLabelPosition::UpperLeft)?;
    }
    root.present().map_err(plot_error)?;
    Ok(())
}

fn cdf(values: &[f64]) -> Vec<(f64, f64)> {
    let mut sorted = values.to_vec();
    sorted.sort_by(f64::total_cmp);
    let n = sorted.len() as f64;
    sorted
        .iter()
        .enumerate()
        .map(|(i, &v)| (v, (i + 1) as f64 / n))
        .collect()
}

/// Picks one latency series of a level.
type Values = fn(&LevelResult) -> &Vec<f64>;

fn draw_latency(path: &Path, levels: &[LevelResult]) -> anyhow::Result<()> {
    let root = BitMapBackend::new(path, (1200, 500)).into_drawing_area();
    root.fill(&WHITE).map_err(plot_error)?;
    let (left, right) = root.split_horizontally(600);
    let x_max = levels
        .iter()
        .flat_map(|l| l.uplink_ms.iter().chain(&l.downlink_ms))
        .copied()
        .fold(25.0, f64::max)
        .min(200.0)
        * 1.05;
    let uplink: Values = |l| &l.uplink_ms;
    let downlink: Values = |l| &l.downlink_ms;
    let panels = [
        (&left, "Uplink: phone → AI (marker)", uplink),
        (&right, "Downlink: AI → phone (echo)", downlink),
    ];
    for (area, title, values) in panels {
        let mut chart = ChartBuilder::on(area)
            .caption(title, ("sans-serif", 22))
            .margin(12)
            .x_label_area_size(40)
            .y_label_area_size(50)
            .build_cartesian_2d(0.0..x_max, 0.0..1.0)
            .map_err(plot_error)?;
        chart
            .configure_mesh()
            .x_desc("latency, ms")
            .y_desc("fraction of markers")
            .label_style(("sans-serif", 14))
            .draw()
            .map_err(plot_error)?;
        for (index, level) in levels.iter().enumerate() {
            let color = Palette99::pick(index).to_rgba();
            chart
                .draw_series(LineSeries::new(cdf(values(level)), color.stroke_width(2)))
                .map_err(plot_error)?
                .label(format!("{} calls", level.admitted))
                .legend(move |(x, y)| {
                    PathElement::new([(x, y), (x + 20, y)], color.stroke_width(2))
                });
        }
        draw_legend(&mut chart, SeriesLabelPosition::LowerRight)?;
    }
    root.present().map_err(plot_error)?;
    Ok(())
}
