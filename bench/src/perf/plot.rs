//! A small SVG line chart: for each series, pods done (y) against seconds (x),
//! from the sorted times at which each pod was done.

use std::fmt::Write as _;

pub struct Series<'a> {
    pub name: String,
    pub color: &'a str,
    /// Sorted seconds at which each pod was done.
    pub times: &'a [f64],
}

/// A "nice" axis step for a range: 1, 2 or 5 times a power of ten, about `ticks` steps.
fn step(range: f64, ticks: f64) -> f64 {
    let raw = (range / ticks).max(1e-9);
    let mag = 10f64.powf(raw.log10().floor());
    [1.0, 2.0, 5.0, 10.0].into_iter().map(|m| m * mag).find(|s| *s >= raw).unwrap_or(10.0 * mag)
}

fn escape(s: &str) -> String {
    s.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;")
}

/// The chart as an SVG document.
pub fn chart(title: &str, y_label: &str, series: &[Series]) -> String {
    let (w, h) = (800.0, 480.0);
    let (left, right, top, bottom) = (70.0, 20.0, 40.0, 60.0);
    let (pw, ph) = (w - left - right, h - top - bottom);
    let x_max = series.iter().filter_map(|s| s.times.last().copied()).fold(1e-3, f64::max);
    let y_max = series.iter().map(|s| s.times.len()).max().unwrap_or(1).max(1) as f64;
    let (xs, ys) = (step(x_max, 8.0), step(y_max, 6.0));
    let (x_top, y_top) = ((x_max / xs).ceil() * xs, (y_max / ys).ceil() * ys);
    let px = |x: f64| left + pw * x / x_top;
    let py = |y: f64| top + ph - ph * y / y_top;
    let mut out = String::new();
    let _ = writeln!(
        out,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{w}" height="{h}" viewBox="0 0 {w} {h}" font-family="sans-serif" font-size="12">"#
    );
    let _ = writeln!(out, r#"<rect width="{w}" height="{h}" fill="white"/>"#);
    let _ =
        writeln!(out, r#"<text x="{}" y="22" text-anchor="middle" font-size="15">{}</text>"#, w / 2.0, escape(title));
    let mut x = 0.0;
    while x <= x_top + 1e-9 {
        let _ = writeln!(
            out,
            r##"<line x1="{0:.1}" y1="{1}" x2="{0:.1}" y2="{2}" stroke="#ddd"/><text x="{0:.1}" y="{3}" text-anchor="middle">{4}</text>"##,
            px(x),
            top,
            top + ph,
            top + ph + 16.0,
            format_num(x)
        );
        x += xs;
    }
    let mut y = 0.0;
    while y <= y_top + 1e-9 {
        let _ = writeln!(
            out,
            r##"<line x1="{0}" y1="{1:.1}" x2="{2}" y2="{1:.1}" stroke="#ddd"/><text x="{3}" y="{4:.1}" text-anchor="end">{5}</text>"##,
            left,
            py(y),
            left + pw,
            left - 6.0,
            py(y) + 4.0,
            format_num(y)
        );
        y += ys;
    }
    let _ = writeln!(
        out,
        r##"<rect x="{left}" y="{top}" width="{pw}" height="{ph}" fill="none" stroke="#333"/>
<text x="{}" y="{}" text-anchor="middle">seconds</text>
<text x="16" y="{}" text-anchor="middle" transform="rotate(-90 16 {})">{}</text>"##,
        left + pw / 2.0,
        h - 20.0,
        top + ph / 2.0,
        top + ph / 2.0,
        escape(y_label)
    );
    for (i, s) in series.iter().enumerate() {
        let mut points = format!("{:.1},{:.1}", px(0.0), py(0.0));
        for (n, t) in s.times.iter().enumerate() {
            // A step: the count rises at each pod's time.
            let _ = write!(points, " {:.1},{:.1} {:.1},{:.1}", px(*t), py(n as f64), px(*t), py(n as f64 + 1.0));
        }
        let _ = writeln!(out, r#"<polyline points="{points}" fill="none" stroke="{}" stroke-width="2"/>"#, s.color);
        let ly = top + 16.0 + 18.0 * i as f64;
        let _ = writeln!(
            out,
            r#"<line x1="{}" y1="{ly}" x2="{}" y2="{ly}" stroke="{}" stroke-width="3"/><text x="{}" y="{}">{}</text>"#,
            left + pw - 250.0,
            left + pw - 225.0,
            s.color,
            left + pw - 220.0,
            ly + 4.0,
            escape(&s.name)
        );
    }
    out.push_str("</svg>\n");
    out
}

fn format_num(v: f64) -> String {
    if (v - v.round()).abs() < 1e-9 { format!("{}", v.round() as i64) } else { format!("{v:.2}") }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_chart_has_both_series_and_their_points() {
        let (fast, slow) = ([0.5, 1.0, 1.5], [2.0, 4.0, 6.0]);
        let svg = chart(
            "rollout <3 pods>",
            "pods updated",
            &[
                Series { name: "berth".into(), color: "#1f77b4", times: &fast },
                Series { name: "StatefulSet".into(), color: "#d62728", times: &slow },
            ],
        );
        assert!(svg.starts_with("<svg") && svg.trim_end().ends_with("</svg>"));
        assert_eq!(svg.matches("<polyline").count(), 2);
        assert!(svg.contains("rollout &lt;3 pods&gt;") && svg.contains(">berth<") && svg.contains(">StatefulSet<"));
        assert_eq!(step(6.0, 8.0), 1.0);
        assert_eq!(step(130.0, 6.0), 50.0);
    }
}
