//! Minimal SVG charts for the report (scatter/line with optional log y, bars, a timeline).
//! Hand-written because the charting crates need a font file to lay out text; SVG viewers
//! lay text out themselves.

use std::fmt::Write;

/// One named series of points, drawn as markers, optionally joined.
pub struct Series {
    pub name: String,
    pub points: Vec<(f64, f64)>,
    pub line: bool,
    pub color: &'static str,
    /// Per-point labels drawn beside the markers.
    pub labels: Vec<String>,
}

const W: f64 = 720.0;
const H: f64 = 440.0;
const L: f64 = 80.0;
const R: f64 = 190.0;
const T: f64 = 40.0;
const B: f64 = 60.0;

fn esc(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

fn nice_ticks(lo: f64, hi: f64, n: usize) -> Vec<f64> {
    let span = (hi - lo).max(1e-12);
    let raw = span / n as f64;
    let mag = 10f64.powf(raw.log10().floor());
    let step = [1.0, 2.0, 2.5, 5.0, 10.0]
        .iter()
        .map(|m| m * mag)
        .find(|s| span / s <= n as f64)
        .unwrap_or(10.0 * mag);
    let mut v = (lo / step).ceil() * step;
    let mut out = Vec::new();
    while v <= hi + step * 1e-9 {
        out.push(v);
        v += step;
    }
    out
}

fn fmt_num(v: f64) -> String {
    if v == 0.0 {
        "0".into()
    } else if v.abs() >= 100.0 {
        format!("{v:.0}")
    } else if v.abs() >= 1.0 {
        format!("{v:.1}")
    } else {
        format!("{v:.2e}")
    }
}

fn header(out: &mut String, title: &str) {
    let _ = write!(
        out,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{W}" height="{H}" viewBox="0 0 {W} {H}" font-family="sans-serif" font-size="12"><rect width="{W}" height="{H}" fill="white"/><text x="{}" y="24" font-size="15" text-anchor="middle">{}</text>"#,
        W / 2.0,
        esc(title)
    );
}

/// A scatter/line chart; `log_y` plots log10(y) (non-positive values are dropped).
pub fn xy_chart(
    title: &str,
    x_label: &str,
    y_label: &str,
    log_y: bool,
    series: &[Series],
) -> String {
    let ty = |y: f64| if log_y { y.log10() } else { y };
    let pts = || {
        series
            .iter()
            .flat_map(|s| s.points.iter())
            .filter(|p| p.0.is_finite() && p.1.is_finite() && (!log_y || p.1 > 0.0))
    };
    let (mut x0, mut x1, mut y0, mut y1) = (f64::MAX, f64::MIN, f64::MAX, f64::MIN);
    for &(x, y) in pts() {
        x0 = x0.min(x);
        x1 = x1.max(x);
        y0 = y0.min(ty(y));
        y1 = y1.max(ty(y));
    }
    if x0 > x1 {
        (x0, x1, y0, y1) = (0.0, 1.0, 0.0, 1.0);
    }
    let pad = |a: f64, b: f64| {
        let d = ((b - a) * 0.08).max(1e-9);
        (a - d, b + d)
    };
    let (x0, x1) = pad(x0, x1);
    let (y0, y1) = if log_y {
        (y0.floor(), y1.ceil().max(y0.floor() + 1.0))
    } else {
        pad(y0, y1)
    };
    let sx = |x: f64| L + (x - x0) / (x1 - x0) * (W - L - R);
    let sy = |y: f64| H - B - (ty(y) - y0) / (y1 - y0) * (H - T - B);
    let mut o = String::new();
    header(&mut o, title);
    let _ = write!(
        o,
        r##"<rect x="{L}" y="{T}" width="{}" height="{}" fill="none" stroke="#444"/>"##,
        W - L - R,
        H - T - B
    );
    for x in nice_ticks(x0, x1, 6) {
        let _ = write!(
            o,
            r##"<line x1="{0}" y1="{1}" x2="{0}" y2="{2}" stroke="#ddd"/><text x="{0}" y="{3}" text-anchor="middle">{4}</text>"##,
            sx(x),
            T,
            H - B,
            H - B + 16.0,
            fmt_num(x)
        );
    }
    let yt: Vec<f64> = if log_y {
        (y0 as i32..=y1 as i32).map(|e| 10f64.powi(e)).collect()
    } else {
        nice_ticks(y0, y1, 6)
    };
    for y in yt {
        let _ = write!(
            o,
            r##"<line x1="{L}" y1="{0}" x2="{1}" y2="{0}" stroke="#ddd"/><text x="{2}" y="{3}" text-anchor="end">{4}</text>"##,
            sy(y),
            W - R,
            L - 6.0,
            sy(y) + 4.0,
            fmt_num(y)
        );
    }
    let _ = write!(
        o,
        r#"<text x="{}" y="{}" text-anchor="middle">{}</text><text transform="translate(18 {}) rotate(-90)" text-anchor="middle">{}</text>"#,
        (L + W - R) / 2.0,
        H - 18.0,
        esc(x_label),
        (T + H - B) / 2.0,
        esc(y_label)
    );
    for (k, s) in series.iter().enumerate() {
        let p: Vec<(f64, f64, usize)> = s
            .points
            .iter()
            .enumerate()
            .filter(|(_, p)| p.0.is_finite() && p.1.is_finite() && (!log_y || p.1 > 0.0))
            .map(|(i, p)| (sx(p.0), sy(p.1), i))
            .collect();
        if s.line && p.len() > 1 {
            let d: Vec<String> = p.iter().map(|(x, y, _)| format!("{x:.1},{y:.1}")).collect();
            let _ = write!(
                o,
                r#"<polyline points="{}" fill="none" stroke="{}" stroke-width="1.5"/>"#,
                d.join(" "),
                s.color
            );
        }
        for (x, y, i) in &p {
            let _ = write!(
                o,
                r#"<circle cx="{x:.1}" cy="{y:.1}" r="4" fill="{}"/>"#,
                s.color
            );
            if let Some(l) = s.labels.get(*i) {
                let _ = write!(
                    o,
                    r#"<text x="{:.1}" y="{:.1}" font-size="10" fill="{}">{}</text>"#,
                    x + 6.0,
                    y - 6.0,
                    s.color,
                    esc(l)
                );
            }
        }
        let ly = T + 10.0 + 18.0 * k as f64;
        let _ = write!(
            o,
            r#"<circle cx="{cx}" cy="{ly}" r="4" fill="{c}"/><text x="{tx}" y="{ty}" fill="{c}">{name}</text>"#,
            cx = W - R + 14.0,
            c = s.color,
            tx = W - R + 24.0,
            ty = ly + 4.0,
            name = esc(&s.name)
        );
    }
    o.push_str("</svg>\n");
    o
}

/// Horizontal bars (label, value) with a reference line at `reference`.
pub fn bar_chart(title: &str, x_label: &str, bars: &[(String, f64)], reference: f64) -> String {
    let max = bars
        .iter()
        .map(|b| b.1)
        .filter(|v| v.is_finite())
        .fold(reference, f64::max)
        * 1.1;
    let lw = 170.0;
    let sx = |v: f64| lw + v / max * (W - lw - 40.0);
    let bh = ((H - T - B) / bars.len().max(1) as f64).min(34.0);
    let mut o = String::new();
    header(&mut o, title);
    for (i, (label, v)) in bars.iter().enumerate() {
        let y = T + 10.0 + i as f64 * bh;
        let _ = write!(
            o,
            r##"<text x="{}" y="{}" text-anchor="end">{}</text><rect x="{lw}" y="{y}" width="{:.1}" height="{}" fill="#4a7ab5"/><text x="{:.1}" y="{}">{:.3}</text>"##,
            lw - 8.0,
            y + bh * 0.6,
            esc(label),
            (sx(v.max(0.0)) - lw).max(0.0),
            bh * 0.7,
            sx(v.max(0.0)) + 4.0,
            y + bh * 0.6,
            v
        );
    }
    let _ = write!(
        o,
        r##"<line x1="{0}" y1="{1}" x2="{0}" y2="{2}" stroke="#c00" stroke-dasharray="4 3"/><text x="{0}" y="{3}" fill="#c00" text-anchor="middle">{4}</text><text x="{5}" y="{6}" text-anchor="middle">{7}</text>"##,
        sx(reference),
        T,
        H - B,
        H - B + 16.0,
        fmt_num(reference),
        (lw + W - 40.0) / 2.0,
        H - 18.0,
        esc(x_label)
    );
    o.push_str("</svg>\n");
    o
}

/// Entropy per token as a line over a band coloured by the gear of each token.
pub fn timeline(title: &str, entropy: &[f64], gear: &[usize], thresholds: (f64, f64)) -> String {
    const COLORS: [&str; 3] = ["#3a9d3a", "#d9a400", "#c83c3c"];
    let n = entropy.len().max(1) as f64;
    let ymax = entropy
        .iter()
        .copied()
        .filter(|v| v.is_finite())
        .fold(thresholds.1, f64::max)
        * 1.1;
    let sx = |i: f64| L + i / n * (W - L - R);
    let sy = |y: f64| H - B - y / ymax * (H - T - B - 20.0);
    let mut o = String::new();
    header(&mut o, title);
    let bw = (W - L - R) / n;
    for (i, g) in gear.iter().enumerate() {
        let _ = write!(
            o,
            r#"<rect x="{:.2}" y="{}" width="{:.2}" height="14" fill="{}"/>"#,
            sx(i as f64),
            H - B + 4.0,
            bw + 0.3,
            COLORS[(*g).min(2)]
        );
    }
    for (v, name) in [(thresholds.0, "low"), (thresholds.1, "high")] {
        let _ = write!(
            o,
            r##"<line x1="{L}" y1="{0:.1}" x2="{1}" y2="{0:.1}" stroke="#999" stroke-dasharray="4 3"/><text x="{2}" y="{3:.1}" fill="#666">{4} {5:.2}</text>"##,
            sy(v),
            W - R,
            W - R + 6.0,
            sy(v) + 4.0,
            name,
            v
        );
    }
    let d: Vec<String> = entropy
        .iter()
        .enumerate()
        .map(|(i, &e)| format!("{:.1},{:.1}", sx(i as f64 + 0.5), sy(e)))
        .collect();
    let _ = write!(
        o,
        r##"<polyline points="{}" fill="none" stroke="#222" stroke-width="1.2"/><rect x="{L}" y="{T}" width="{}" height="{}" fill="none" stroke="#444"/>"##,
        d.join(" "),
        W - L - R,
        H - T - B
    );
    for y in nice_ticks(0.0, ymax, 5) {
        let _ = write!(
            o,
            r#"<text x="{}" y="{:.1}" text-anchor="end">{}</text>"#,
            L - 6.0,
            sy(y) + 4.0,
            fmt_num(y)
        );
    }
    for (k, name) in ["low", "mid", "high"].iter().enumerate() {
        let ly = T + 10.0 + 18.0 * k as f64;
        let _ = write!(
            o,
            r#"<rect x="{}" y="{}" width="10" height="10" fill="{}"/><text x="{}" y="{}">{} gear</text>"#,
            W - R + 10.0,
            ly - 6.0,
            COLORS[k],
            W - R + 26.0,
            ly + 4.0,
            name
        );
    }
    let _ = write!(
        o,
        r#"<text x="{}" y="{}" text-anchor="middle">generated token</text><text transform="translate(18 {}) rotate(-90)" text-anchor="middle">entropy (bits)</text>"#,
        (L + W - R) / 2.0,
        H - 18.0,
        (T + H - B) / 2.0
    );
    o.push_str("</svg>\n");
    o
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn charts_are_closed_svg_with_escaped_text() {
        let s = xy_chart(
            "KL <vs> speed",
            "tok/s",
            "KL",
            true,
            &[Series {
                name: "auto & co".into(),
                points: vec![(1.0, 0.1), (2.0, 0.01), (3.0, 0.0)],
                line: true,
                color: "red",
                labels: vec!["a".into()],
            }],
        );
        assert!(s.starts_with("<svg") && s.trim_end().ends_with("</svg>"));
        assert!(s.contains("KL &lt;vs&gt; speed") && s.contains("auto &amp; co"));
        // The zero KL point cannot be drawn on a log axis and is dropped, not NaN'd.
        assert_eq!(s.matches("<circle").count(), 2 + 1);
        assert!(!s.contains("NaN"));
        let b = bar_chart("r", "ratio", &[("low".into(), 0.97)], 1.0);
        assert!(b.contains("0.970"));
        let t = timeline("t", &[1.0, 5.0], &[0, 2], (1.8, 3.6));
        assert!(t.contains("#3a9d3a") && t.contains("#c83c3c"));
    }

    #[test]
    fn ticks_are_round_numbers_inside_the_range() {
        let t = nice_ticks(0.0, 10.0, 5);
        assert_eq!(t, vec![0.0, 2.0, 4.0, 6.0, 8.0, 10.0]);
        assert_eq!(nice_ticks(0.0, 1.0, 4), vec![0.0, 0.25, 0.5, 0.75, 1.0]);
    }
}
