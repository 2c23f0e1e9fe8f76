//! A small SVG line chart for the side-by-side benchmark: latency (log
//! scale) against the number of services (log scale), one colour per
//! proxy, p50 solid and p99 dashed.

use std::fmt::Write;

/// One proxy's measurements: (services, p50 ms, p99 ms) per size.
#[derive(Debug, Clone)]
pub struct Series {
    /// The legend label.
    pub label: String,
    /// An SVG colour.
    pub color: String,
    /// (services, p50 ms, p99 ms), in increasing number of services.
    pub points: Vec<(f64, f64, f64)>,
}

const W: f64 = 640.0;
const H: f64 = 400.0;
const LEFT: f64 = 70.0;
const RIGHT: f64 = 160.0;
const TOP: f64 = 40.0;
const BOTTOM: f64 = 50.0;

fn decades(lo: f64, hi: f64) -> (f64, f64) {
    (lo.max(1e-3).log10().floor(), hi.max(1e-3).log10().ceil().max(lo.max(1e-3).log10().floor() + 1.0))
}

/// The chart, titled `title`.
pub fn latency_chart(title: &str, series: &[Series]) -> String {
    let xs: Vec<f64> = series.iter().flat_map(|s| s.points.iter().map(|p| p.0)).collect();
    let ys: Vec<f64> = series.iter().flat_map(|s| s.points.iter().flat_map(|p| [p.1, p.2])).collect();
    let (x0, x1) = decades(xs.iter().copied().fold(f64::INFINITY, f64::min), xs.iter().copied().fold(0.0, f64::max));
    let (y0, y1) = decades(ys.iter().copied().fold(f64::INFINITY, f64::min), ys.iter().copied().fold(0.0, f64::max));
    let px = |x: f64| LEFT + (x.max(1e-3).log10() - x0) / (x1 - x0) * (W - LEFT - RIGHT);
    let py = |y: f64| H - BOTTOM - (y.max(1e-3).log10() - y0) / (y1 - y0) * (H - TOP - BOTTOM);
    let mut out = String::new();
    let _ = writeln!(out, r#"<svg xmlns="http://www.w3.org/2000/svg" width="{W}" height="{H}" font-family="sans-serif" font-size="12">"#);
    let _ = writeln!(out, r#"<rect width="{W}" height="{H}" fill="white"/>"#);
    let _ = writeln!(out, r#"<text x="{}" y="22" font-size="15" text-anchor="middle">{}</text>"#, W / 2.0, escape(title));
    // Axes, grid and decade labels.
    let (bx, by) = (H - BOTTOM, W - RIGHT);
    let _ = writeln!(out, r#"<path d="M{LEFT} {TOP} V{bx} H{by}" stroke="black" fill="none"/>"#);
    for d in x0 as i32..=x1 as i32 {
        let x = px(10f64.powi(d));
        let _ = writeln!(out, r##"<line x1="{x:.1}" y1="{TOP}" x2="{x:.1}" y2="{bx}" stroke="#ddd"/>"##);
        let _ = writeln!(out, r#"<text x="{x:.1}" y="{}" text-anchor="middle">{}</text>"#, bx + 18.0, fmt_num(10f64.powi(d)));
    }
    for d in y0 as i32..=y1 as i32 {
        let y = py(10f64.powi(d));
        let _ = writeln!(out, r##"<line x1="{LEFT}" y1="{y:.1}" x2="{by}" y2="{y:.1}" stroke="#ddd"/>"##);
        let _ = writeln!(out, r#"<text x="{}" y="{:.1}" text-anchor="end">{} ms</text>"#, LEFT - 6.0, y + 4.0, fmt_num(10f64.powi(d)));
    }
    let _ = writeln!(out, r#"<text x="{}" y="{}" text-anchor="middle">services</text>"#, (LEFT + by) / 2.0, H - 12.0);
    // Lines, markers and the legend.
    for (i, s) in series.iter().enumerate() {
        for (which, dash) in [(1usize, ""), (2usize, r#" stroke-dasharray="6 4""#)] {
            let pts: Vec<String> = s.points.iter().map(|p| format!("{:.1},{:.1}", px(p.0), py(if which == 1 { p.1 } else { p.2 }))).collect();
            let _ = writeln!(out, r#"<polyline points="{}" fill="none" stroke="{}" stroke-width="2"{dash}/>"#, pts.join(" "), s.color);
            for p in &s.points {
                let y = if which == 1 { p.1 } else { p.2 };
                let _ = writeln!(out, r#"<circle cx="{:.1}" cy="{:.1}" r="3" fill="{}"/>"#, px(p.0), py(y), s.color);
            }
        }
        let ly = TOP + 10.0 + 40.0 * i as f64;
        let lx = W - RIGHT + 15.0;
        let _ = writeln!(out, r#"<line x1="{lx}" y1="{ly}" x2="{}" y2="{ly}" stroke="{}" stroke-width="2"/>"#, lx + 25.0, s.color);
        let _ = writeln!(out, r#"<text x="{}" y="{}">{} p50</text>"#, lx + 30.0, ly + 4.0, escape(&s.label));
        let _ = writeln!(out, r#"<line x1="{lx}" y1="{}" x2="{}" y2="{}" stroke="{}" stroke-width="2" stroke-dasharray="6 4"/>"#, ly + 16.0, lx + 25.0, ly + 16.0, s.color);
        let _ = writeln!(out, r#"<text x="{}" y="{}">{} p99</text>"#, lx + 30.0, ly + 20.0, escape(&s.label));
    }
    out.push_str("</svg>\n");
    out
}

fn fmt_num(v: f64) -> String {
    if v >= 1.0 {
        format!("{}", v.round() as i64)
    } else {
        format!("{v}")
    }
}

fn escape(s: &str) -> String {
    s.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_chart_has_a_line_per_percentile_and_proxy_and_balanced_tags() {
        let series = vec![
            Series { label: "kproxy".into(), color: "#1f77b4".into(), points: vec![(100.0, 2.0, 5.0), (5000.0, 3.0, 9.0)] },
            Series { label: "kube-proxy <v1.34>".into(), color: "#d62728".into(), points: vec![(100.0, 40.0, 90.0), (5000.0, 300.0, 900.0)] },
        ];
        let svg = latency_chart("latency & size", &series);
        assert_eq!(svg.matches("<polyline").count(), 4);
        assert_eq!(svg.matches("<circle").count(), 8);
        assert!(svg.contains("latency &amp; size") && svg.contains("kube-proxy &lt;v1.34&gt; p99"));
        assert!(svg.starts_with("<svg") && svg.trim_end().ends_with("</svg>"));
        assert_eq!(svg.matches("<text").count(), svg.matches("</text>").count());
        // Decade labels span the data: 100 to 10000 services, 1 to 1000 ms.
        for label in [">100<", ">10000<", ">1 ms<", ">1000 ms<"] {
            assert!(svg.contains(label), "{label} missing");
        }
    }
}
