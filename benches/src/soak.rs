//! The soak's report (`scripts/soak`): the samples it took over time in, a Markdown summary and an SVG of the
//! curves out.
//!
//! Samples use [`crate::report`]'s format with `x` as the minute they were taken at: `{"metric": "rss_mib",
//! "subject": "sandbar-api", "value": 41.2, "x": 12.5}`. The summary gives, for every curve, its first value after
//! the warm-up, its last, its highest, and the growth from the first to the mean of its last quarter: what tells
//! a leak from a plateau. The plot has one panel per metric in [`PANELS`].

use std::fmt::Write as _;

use crate::report::Samples;

/// Metrics drawn, with their panel's caption and unit, in the order the soak writes them.
pub const PANELS: [(&str, &str, &str); 6] = [
    ("rss_mib", "resident memory per service", "MiB"),
    ("fds", "open file descriptors per service", "fds"),
    ("db_mib", "database size", "MiB"),
    ("docker_disk_gib", "Docker disk use", "GiB"),
    ("ops_per_s", "client rounds per second", "rounds/s"),
    ("latency_ms", "exec latency through the proxy (p50, p99)", "ms"),
];

/// One curve's summary.
#[derive(Clone, Debug, PartialEq)]
pub struct Trend {
    pub metric: String,
    pub subject: String,
    /// The first value at or after the warm-up.
    pub first: f64,
    pub last: f64,
    pub max: f64,
    /// (mean of the last quarter of the points after the warm-up) / `first` - 1; `None` when `first` is 0.
    pub growth: Option<f64>,
    pub points: usize,
}

/// Every curve of `s`, its points from minute `warmup` on.
pub fn trends(s: &Samples, warmup: f64) -> Vec<Trend> {
    let mut out = Vec::new();
    for (metric, _, _) in PANELS {
        for (subject, pts) in s.curve(metric) {
            let mut pts: Vec<(f64, f64)> = pts.into_iter().filter(|p| p.0 >= warmup).collect();
            pts.sort_by(|a, b| a.0.total_cmp(&b.0));
            let (Some(first), Some(last)) = (pts.first(), pts.last()) else { continue };
            let tail = &pts[pts.len() - pts.len().div_ceil(4)..];
            let tail_mean = tail.iter().map(|p| p.1).sum::<f64>() / tail.len() as f64;
            let growth = (first.1 != 0.0).then(|| tail_mean / first.1 - 1.0);
            out.push(Trend {
                metric: metric.to_owned(),
                subject,
                first: first.1,
                last: last.1,
                max: pts.iter().map(|p| p.1).fold(f64::MIN, f64::max),
                growth,
                points: pts.len(),
            });
        }
    }
    out
}

/// The summary table.
pub fn markdown(trends: &[Trend]) -> String {
    let mut md = String::from(
        "| metric | subject | first | last | max | growth (last quarter vs first) | points |\n|---|---|---|---|---|---|---|\n",
    );
    for t in trends {
        let growth = t.growth.map_or_else(|| "-".to_owned(), |g| format!("{:+.1}%", g * 100.0));
        let _ = writeln!(
            md,
            "| {} | {} | {} | {} | {} | {growth} | {} |",
            t.metric,
            t.subject,
            crate::report::fmt_num(t.first),
            crate::report::fmt_num(t.last),
            crate::report::fmt_num(t.max),
            t.points
        );
    }
    md
}

/// The SVG: one panel per metric of [`PANELS`] that has samples, curves per subject against minutes.
pub fn plot(s: &Samples, path: &std::path::Path, title: &str) -> anyhow::Result<()> {
    use plotters::prelude::*;
    let root = SVGBackend::new(path, (1200, 1080)).into_drawing_area();
    root.fill(&WHITE)?;
    let root = root.titled(title, ("sans-serif", 18))?;
    let areas = root.split_evenly((3, 2));
    for (area, (metric, caption, unit)) in areas.iter().zip(PANELS) {
        let curves = s.curve(metric);
        if curves.is_empty() {
            continue;
        }
        let pts = || curves.values().flatten();
        let xmax = pts().map(|p| p.0).fold(0.0f64, f64::max).max(1e-3);
        let ymax = pts().map(|p| p.1).fold(0.0f64, f64::max).max(1e-3);
        let mut chart = ChartBuilder::on(area)
            .caption(caption, ("sans-serif", 15))
            .margin(12)
            .x_label_area_size(36)
            .y_label_area_size(64)
            .build_cartesian_2d(0.0..xmax, 0.0..ymax * 1.15)?;
        chart.configure_mesh().x_desc("minutes").y_desc(unit).draw()?;
        for (i, (subject, pts)) in curves.iter().enumerate() {
            let color = Palette99::pick(i).to_rgba();
            let mut pts = pts.clone();
            pts.sort_by(|a, b| a.0.total_cmp(&b.0));
            chart
                .draw_series(LineSeries::new(pts, color.stroke_width(2)))?
                .label(subject.as_str())
                .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 16, y)], color.stroke_width(2)));
        }
        chart.configure_series_labels().background_style(WHITE.mix(0.8)).border_style(BLACK).draw()?;
    }
    root.present()?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn samples(lines: &[(&str, &str, f64, f64)]) -> Samples {
        let text: Vec<String> = lines
            .iter()
            .map(|(m, s, x, v)| serde_json::json!({"metric": m, "subject": s, "x": x, "value": v}).to_string())
            .collect();
        Samples::parse(&text.join("\n")).unwrap()
    }

    #[test]
    fn a_plateau_shows_no_growth_and_a_leak_does() {
        let mut lines = Vec::new();
        for i in 0..8 {
            let t = i as f64;
            lines.push(("rss_mib", "sandbar-api", t, if i == 0 { 5.0 } else { 40.0 }));
            lines.push(("rss_mib", "sandbar-proxy", t, 40.0 + 10.0 * t));
        }
        let tr = trends(&samples(&lines), 1.0);
        let api = tr.iter().find(|t| t.subject == "sandbar-api").unwrap();
        assert_eq!((api.first, api.last, api.max, api.points), (40.0, 40.0, 40.0, 7));
        assert_eq!(api.growth, Some(0.0), "the warm-up point is left out");
        let proxy = tr.iter().find(|t| t.subject == "sandbar-proxy").unwrap();
        // Points 1..=7: first 50; the last quarter is the last two points (100 and 110).
        assert_eq!(proxy.first, 50.0);
        assert!((proxy.growth.unwrap() - 1.1).abs() < 1e-9, "{:?}", proxy.growth);
        let md = markdown(&tr);
        assert!(md.contains("| rss_mib | sandbar-proxy | 50.0 | 110 | 110 | +110.0% | 7 |"), "{md}");
    }

    #[test]
    fn zero_first_value_has_no_growth_and_unknown_metrics_are_ignored() {
        let tr = trends(&samples(&[("fds", "x", 0.0, 0.0), ("fds", "x", 1.0, 3.0), ("other", "y", 0.0, 1.0)]), 0.0);
        assert_eq!(tr.len(), 1);
        assert_eq!(tr[0].growth, None);
        assert!(markdown(&tr).contains("| fds | x | 0.00 | 3.00 | 3.00 | - | 2 |"));
    }

    #[test]
    fn plot_writes_an_svg() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("soak.svg");
        plot(&samples(&[("db_mib", "sqlite", 0.0, 1.0), ("db_mib", "sqlite", 2.0, 1.5)]), &path, "t").unwrap();
        let svg = std::fs::read_to_string(&path).unwrap();
        assert!(svg.starts_with("<svg") && svg.contains("database size"), "{}", &svg[..200.min(svg.len())]);
    }
}
