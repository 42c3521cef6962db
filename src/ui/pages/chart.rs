//! The failure rate over time as an SVG line chart, drawn on the server; the page puts the
//! same numbers in a table beside it for those who cannot see the chart.

use maud::{Markup, html};

use crate::campaign::TimelinePoint;

const WIDTH: f64 = 600.0;
const HEIGHT: f64 = 200.0;
const LEFT: f64 = 40.0;
const BOTTOM: f64 = 20.0;
const TOP: f64 = 10.0;

/// One point per timeline interval: x by position, y by failure rate (0 to 100 %).
pub fn failure_rate(points: &[TimelinePoint]) -> Markup {
    let plot_width = WIDTH - LEFT - 10.0;
    let plot_height = HEIGHT - BOTTOM - TOP;
    let step = match points.len() {
        0 | 1 => 0.0,
        n => plot_width / (n - 1) as f64,
    };
    let coordinates: Vec<(f64, f64)> = points
        .iter()
        .enumerate()
        .map(|(index, point)| {
            let x = LEFT + step * index as f64;
            let y = TOP + plot_height * (1.0 - point.fail_rate());
            (x, y)
        })
        .collect();
    let line: Vec<String> = coordinates
        .iter()
        .map(|(x, y)| format!("{x:.1},{y:.1}"))
        .collect();
    let first = points.first().map(|point| point.at.to_rfc3339());
    let last = points.last().map(|point| point.at.to_rfc3339());
    html! {
        svg.chart viewBox={ "0 0 " (WIDTH) " " (HEIGHT) } role="img"
            aria-label="Failure rate per interval; the table below has the same numbers" {
            @for percent in [0, 50, 100] {
                @let y = TOP + plot_height * (1.0 - f64::from(percent) / 100.0);
                line x1=(LEFT) x2=(WIDTH - 10.0) y1=(y) y2=(y) {}
                text x="2" y=(y + 3.0) { (percent) " %" }
            }
            polyline points=(line.join(" ")) {}
            @for (x, y) in &coordinates {
                circle cx=(format!("{x:.1}")) cy=(format!("{y:.1}")) r="3" {}
            }
            @if let Some(first) = first {
                text x=(LEFT) y=(HEIGHT - 4.0) { (first.get(..16).unwrap_or(&first)) " UTC" }
            }
            @if let Some(last) = last.filter(|_| points.len() > 1) {
                text x=(WIDTH - 10.0) y=(HEIGHT - 4.0) text-anchor="end" { (last.get(..16).unwrap_or(&last)) " UTC" }
            }
        }
    }
}
