//! A small SVG chart of a run: mean training reward per step and held-out accuracy
//! at each evaluation, refreshed as the run goes (`OUT/reward.svg`).

use std::fmt::Write;

/// Series of (step, value) with values in [0, 1].
pub fn reward_svg(train: &[(usize, f64)], eval: &[(usize, f64)], title: &str) -> String {
    let (w, h, m) = (640.0, 360.0, 48.0);
    let max_step = train
        .iter()
        .chain(eval)
        .map(|&(s, _)| s)
        .max()
        .unwrap_or(1)
        .max(1) as f64;
    let x = |s: usize| m + (w - 2.0 * m) * s as f64 / max_step;
    let y = |v: f64| h - m - (h - 2.0 * m) * v.clamp(0.0, 1.0);
    let mut svg = String::new();
    let _ = write!(
        svg,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{w}" height="{h}" font-family="sans-serif" font-size="12">"#
    );
    let _ = write!(svg, r#"<rect width="{w}" height="{h}" fill="white"/>"#);
    let _ = write!(
        svg,
        r#"<text x="{m}" y="24" font-size="14">{}</text>"#,
        escape(title)
    );
    for i in 0..=4 {
        let v = i as f64 / 4.0;
        let yy = y(v);
        let _ = write!(
            svg,
            r##"<line x1="{m}" x2="{}" y1="{yy}" y2="{yy}" stroke="#ddd"/><text x="8" y="{}">{v:.2}</text>"##,
            w - m,
            yy + 4.0,
        );
    }
    let _ = write!(
        svg,
        r#"<text x="{}" y="{}">step</text><text x="{}" y="{}">{}</text>"#,
        w / 2.0,
        h - 12.0,
        w - m - 20.0,
        h - 30.0,
        max_step as usize
    );
    for (series, color, name, dy) in [
        (train, "#1f77b4", "train reward", 0.0),
        (eval, "#d62728", "eval accuracy", 16.0),
    ] {
        if series.is_empty() {
            continue;
        }
        let pts: Vec<String> = series
            .iter()
            .map(|&(s, v)| format!("{:.1},{:.1}", x(s), y(v)))
            .collect();
        let _ = write!(
            svg,
            r#"<polyline fill="none" stroke="{color}" stroke-width="2" points="{}"/>"#,
            pts.join(" ")
        );
        let _ = write!(
            svg,
            r#"<text x="{}" y="{}" fill="{color}">{name}</text>"#,
            w - m - 110.0,
            40.0 + dy
        );
    }
    svg.push_str("</svg>\n");
    svg
}

fn escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

#[cfg(test)]
mod tests {
    #[test]
    fn draws_both_series() {
        let svg = super::reward_svg(&[(1, 0.1), (2, 0.5)], &[(2, 0.4)], "a < b");
        assert!(svg.starts_with("<svg") && svg.contains("a &lt; b"));
        assert_eq!(svg.matches("<polyline").count(), 2);
    }
}
