//! The ops dashboard's charts, drawn on the server as SVG (no JavaScript):
//! refreshes per hour by outcome, LWA latency p50/p99 per hour, and the
//! consent funnel by region.
//!
//! Every text in these drawings is a number or a fixed label of this file,
//! never a value from a request or the database, so nothing needs escaping.
//! Colours are SVG attributes, not `style`, so the page's CSP allows them.
//! Each bar and point carries `data-*` attributes (what it counts), and a
//! `<title>` a browser shows on hover.

use crate::db::consent_attempts::Funnel;
use crate::ops_summary::HourOfRefreshes;
use std::fmt::Write;

/// A drawing made by this file. Askama writes it as it is (it is marked
/// [`askama::filters::HtmlSafe`]), so templates need no `|safe`, and only
/// this file can make one: its text is ours alone (see above).
pub struct Svg(String);

impl std::fmt::Display for Svg {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl askama::filters::HtmlSafe for Svg {}

const WIDTH: f64 = 720.0;
const HEIGHT: f64 = 196.0;
/// Room for the y axis's labels on the left and the x axis's below.
const LEFT: f64 = 48.0;
const BOTTOM: f64 = 22.0;
/// Room for the legend above the plot.
const TOP: f64 = 24.0;

/// The refresh outcomes, in stacking order, with their colours.
const OUTCOMES: [(&str, &str); 4] = [
    ("ok", "#2e7d32"),
    ("invalid_grant", "#c62828"),
    ("app_credentials_rejected", "#6a1b9a"),
    ("amazon_unavailable", "#ef6c00"),
];

fn counts(h: &HourOfRefreshes) -> [i64; 4] {
    [
        h.ok,
        h.invalid_grant,
        h.app_credentials_rejected,
        h.amazon_unavailable,
    ]
}

/// A round number at or above `max`, for the top of an axis.
fn axis_top(max: f64) -> f64 {
    if max <= 0.0 {
        return 1.0;
    }
    let magnitude = 10f64.powf(max.log10().floor());
    [1.0, 2.0, 5.0, 10.0]
        .into_iter()
        .map(|step| step * magnitude)
        .find(|top| *top >= max)
        .unwrap_or(10.0 * magnitude)
}

fn open(out: &mut String, chart: &str, title: &str, height: f64) {
    let _ = write!(
        out,
        r#"<svg xmlns="http://www.w3.org/2000/svg" class="chart" data-chart="{chart}" viewBox="0 0 {WIDTH} {height}" width="{WIDTH}" height="{height}" role="img" aria-label="{title}"><title>{title}</title>"#
    );
}

/// The frame of an hourly chart: axes, the y axis's top label and the
/// x axis's hours.
fn hourly_axes(out: &mut String, top_label: &str) {
    let plot_bottom = HEIGHT - BOTTOM;
    let _ = write!(
        out,
        r##"<g fill="#555" font-size="11" font-family="sans-serif"><line x1="{LEFT}" y1="{TOP}" x2="{LEFT}" y2="{plot_bottom}" stroke="#999"/><line x1="{LEFT}" y1="{plot_bottom}" x2="{WIDTH}" y2="{plot_bottom}" stroke="#999"/><text x="{x}" y="{y}" text-anchor="end">{top_label}</text><text x="{x}" y="{plot_bottom}" text-anchor="end">0</text><text x="{LEFT}" y="{label_y}">24 h ago</text><text x="{mid}" y="{label_y}" text-anchor="middle">12 h ago</text><text x="{WIDTH}" y="{label_y}" text-anchor="end">now</text></g>"##,
        x = LEFT - 4.0,
        y = TOP + 4.0,
        label_y = HEIGHT - 6.0,
        mid = LEFT + (WIDTH - LEFT) / 2.0,
    );
}

/// Refreshes per hour, stacked by outcome.
pub fn refresh_outcomes(hours: &[HourOfRefreshes]) -> Svg {
    let mut out = String::with_capacity(8 * 1024);
    open(
        &mut out,
        "refresh-outcomes",
        "Refreshes per hour over 24 hours, by outcome",
        HEIGHT,
    );
    let max = hours
        .iter()
        .map(|h| counts(h).iter().sum::<i64>())
        .max()
        .unwrap_or(0);
    let top = axis_top(max as f64);
    hourly_axes(&mut out, &format!("{top}"));
    let plot_height = HEIGHT - BOTTOM - TOP;
    let slot = (WIDTH - LEFT) / hours.len().max(1) as f64;
    for (i, hour) in hours.iter().enumerate() {
        let x = LEFT + i as f64 * slot + 1.0;
        let mut y = HEIGHT - BOTTOM;
        let hours_ago = hours.len() - i;
        for ((outcome, colour), n) in OUTCOMES.iter().zip(counts(hour)) {
            if n == 0 {
                continue;
            }
            let height = n as f64 / top * plot_height;
            y -= height;
            let _ = write!(
                out,
                r#"<rect x="{x:.1}" y="{y:.1}" width="{w:.1}" height="{height:.1}" fill="{colour}" data-outcome="{outcome}" data-count="{n}"><title>{n} {outcome}, {hours_ago} h ago</title></rect>"#,
                w = (slot - 2.0).max(1.0),
            );
        }
    }
    legend(&mut out, OUTCOMES.iter().copied());
    out.push_str("</svg>");
    Svg(out)
}

/// A legend along the top right, one coloured square per series.
fn legend<'a>(out: &mut String, series: impl Iterator<Item = (&'a str, &'a str)>) {
    let mut x = LEFT + 8.0;
    let _ = write!(
        out,
        r##"<g font-size="11" font-family="sans-serif" fill="#333">"##
    );
    for (name, colour) in series {
        let _ = write!(
            out,
            r#"<rect x="{x}" y="4" width="10" height="10" fill="{colour}"/><text x="{tx}" y="13">{name}</text>"#,
            tx = x + 14.0,
        );
        x += 14.0 + 7.0 * name.len() as f64 + 16.0;
    }
    out.push_str("</g>");
}

/// LWA's latency per hour: p50 and p99, a line each (broken where an hour
/// had no refresh) with a point per hour.
pub fn lwa_latency(hours: &[HourOfRefreshes]) -> Svg {
    const SERIES: [(&str, &str); 2] = [("p50", "#1565c0"), ("p99", "#b71c1c")];
    let mut out = String::with_capacity(8 * 1024);
    open(
        &mut out,
        "lwa-latency",
        "LWA latency per hour over 24 hours, p50 and p99",
        HEIGHT,
    );
    let max = hours
        .iter()
        .filter_map(|h| h.latency_ms.map(|(_, p99)| p99))
        .fold(0.0, f64::max);
    let top = axis_top(max);
    hourly_axes(&mut out, &format!("{top} ms"));
    let plot_height = HEIGHT - BOTTOM - TOP;
    let slot = (WIDTH - LEFT) / hours.len().max(1) as f64;
    let point = |i: usize, ms: f64| {
        (
            LEFT + (i as f64 + 0.5) * slot,
            HEIGHT - BOTTOM - ms / top * plot_height,
        )
    };
    for (which, (name, colour)) in SERIES.iter().enumerate() {
        let value = |h: &HourOfRefreshes| h.latency_ms.map(|(p50, p99)| [p50, p99][which]);
        let mut run = String::new();
        let flush = |run: &mut String, out: &mut String| {
            if !run.is_empty() {
                let _ = write!(
                    out,
                    r#"<polyline points="{run}" fill="none" stroke="{colour}" stroke-width="2"/>"#
                );
                run.clear();
            }
        };
        for (i, hour) in hours.iter().enumerate() {
            match value(hour) {
                Some(ms) => {
                    let (x, y) = point(i, ms);
                    let _ = write!(run, "{x:.1},{y:.1} ");
                }
                None => flush(&mut run, &mut out),
            }
        }
        flush(&mut run, &mut out);
        for (i, hour) in hours.iter().enumerate() {
            if let Some(ms) = value(hour) {
                let (x, y) = point(i, ms);
                let _ = write!(
                    out,
                    r#"<circle cx="{x:.1}" cy="{y:.1}" r="3" fill="{colour}" data-series="{name}" data-ms="{ms:.0}"><title>{name} {ms:.0} ms, {} h ago</title></circle>"#,
                    hours.len() - i
                );
            }
        }
    }
    legend(&mut out, SERIES.iter().copied());
    out.push_str("</svg>");
    Svg(out)
}

/// The consent funnel by region: one bar per step, its count beside it.
pub fn consent_funnel(regions: &[Funnel]) -> Svg {
    const STEPS: [(&str, &str); 5] = [
        ("started", "#546e7a"),
        ("returned", "#1565c0"),
        ("connected", "#2e7d32"),
        ("failed", "#c62828"),
        ("abandoned", "#9e9e9e"),
    ];
    const BAR: f64 = 14.0;
    const GAP: f64 = 4.0;
    const LABEL: f64 = 150.0;
    let group = 20.0 + STEPS.len() as f64 * (BAR + GAP);
    let height = (regions.len().max(1) as f64 * group + 8.0).ceil();
    let mut out = String::with_capacity(4 * 1024);
    open(
        &mut out,
        "consent-funnel",
        "Consent attempts over 24 hours by region",
        height,
    );
    let max = regions.iter().map(|f| f.started).max().unwrap_or(0).max(1) as f64;
    let bar_room = WIDTH - LABEL - 60.0;
    let _ = write!(
        out,
        r##"<g font-size="11" font-family="sans-serif" fill="#333">"##
    );
    if regions.is_empty() {
        let _ = write!(
            out,
            r#"<text x="0" y="20">No consent attempt in the last 24 hours.</text>"#
        );
    }
    for (r, funnel) in regions.iter().enumerate() {
        let region = match funnel.region.as_str() {
            "na" => "North America (na)",
            "eu" => "Europe (eu)",
            _ => "Far East (fe)",
        };
        let code = match funnel.region.as_str() {
            "na" => "na",
            "eu" => "eu",
            _ => "fe",
        };
        let y0 = r as f64 * group;
        let _ = write!(
            out,
            r#"<text x="0" y="{y:.1}" font-weight="bold">{region}</text>"#,
            y = y0 + 14.0
        );
        let values = [
            funnel.started,
            funnel.returned,
            funnel.connected,
            funnel.failed,
            funnel.abandoned,
        ];
        for (s, ((step, colour), n)) in STEPS.iter().zip(values).enumerate() {
            let y = y0 + 20.0 + s as f64 * (BAR + GAP);
            let w = n as f64 / max * bar_room;
            let _ = write!(
                out,
                r#"<text x="{lx}" y="{ty:.1}">{step}</text><rect x="{LABEL}" y="{y:.1}" width="{w:.1}" height="{BAR}" fill="{colour}" data-region="{code}" data-step="{step}" data-count="{n}"><title>{region}: {n} {step}</title></rect><text x="{nx:.1}" y="{ty:.1}">{n}</text>"#,
                lx = 16.0,
                ty = y + BAR - 3.0,
                nx = LABEL + w + 6.0,
            );
        }
    }
    out.push_str("</g></svg>");
    Svg(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn axis_tops_are_round_and_cover_the_maximum() {
        assert_eq!(axis_top(0.0), 1.0);
        assert_eq!(axis_top(1.0), 1.0);
        assert_eq!(axis_top(3.0), 5.0);
        assert_eq!(axis_top(7.0), 10.0);
        assert_eq!(axis_top(12.0), 20.0);
        assert_eq!(axis_top(480.0), 500.0);
        assert_eq!(axis_top(501.0), 1000.0);
    }

    #[test]
    fn each_outcome_of_each_hour_is_one_bar_of_its_height() {
        let mut hours = vec![HourOfRefreshes::default(); 24];
        hours[23].ok = 8;
        hours[23].invalid_grant = 2;
        hours[0].amazon_unavailable = 5;
        let svg = refresh_outcomes(&hours).0;
        assert_eq!(
            svg.matches("<rect x=").count(),
            3 + 4,
            "3 bars, 4 legend squares"
        );
        assert!(svg.contains(r#"data-outcome="ok" data-count="8""#));
        assert!(svg.contains(r#"data-outcome="invalid_grant" data-count="2""#));
        assert!(svg.contains(r#"data-outcome="amazon_unavailable" data-count="5""#));
        // 10 is the axis top: the stack of 10 fills the plot's 150 px.
        assert!(svg.contains(r##"height="120.0" fill="#2e7d32""##), "{svg}");
        assert!(svg.contains(r##"height="30.0" fill="#c62828""##), "{svg}");
    }

    #[test]
    fn latency_lines_break_where_an_hour_had_no_refresh() {
        let mut hours = vec![HourOfRefreshes::default(); 24];
        for i in [0, 1, 5, 6, 7] {
            hours[i].latency_ms = Some((100.0, 400.0));
        }
        let svg = lwa_latency(&hours).0;
        assert_eq!(svg.matches("<polyline").count(), 4, "two runs × two series");
        assert_eq!(svg.matches(r#"data-series="p99" data-ms="400""#).count(), 5);
    }

    #[test]
    fn the_funnel_has_five_steps_per_region() {
        let svg = consent_funnel(&[Funnel {
            region: "eu".into(),
            started: 4,
            returned: 3,
            connected: 2,
            failed: 1,
            abandoned: 1,
        }])
        .0;
        assert_eq!(svg.matches("data-region=\"eu\"").count(), 5);
        assert!(svg.contains(r#"data-step="abandoned" data-count="1""#));
        assert!(consent_funnel(&[]).0.contains("No consent attempt"));
    }
}
