//! Small SVG line charts of a run, refreshed as it goes: the RL run's mean training
//! reward and held-out accuracy (`OUT/reward.svg`, values in [0, 1]) and the SFT
//! run's training and held-out loss (`OUT/loss.svg`, scaled to its data).

use std::fmt::Write;

/// One line of a chart: its legend, colour and (step, value) points.
pub struct Series<'a> {
    pub name: &'a str,
    pub color: &'a str,
    pub points: &'a [(usize, f64)],
}

/// Series of (step, value) with values in [0, 1].
pub fn reward_svg(train: &[(usize, f64)], eval: &[(usize, f64)], title: &str) -> String {
    line_chart(
        &[
            Series {
                name: "train reward",
                color: "#1f77b4",
                points: train,
            },
            Series {
                name: "eval accuracy",
                color: "#d62728",
                points: eval,
            },
        ],
        title,
        (0.0, 1.0),
    )
}

/// Training loss and held-out loss per step, the y axis from 0 to the largest
/// finite value.
pub fn loss_svg(train: &[(usize, f64)], eval: &[(usize, f64)], title: &str) -> String {
    let top = train
        .iter()
        .chain(eval)
        .map(|&(_, v)| v)
        .filter(|v| v.is_finite())
        .fold(0.0f64, f64::max);
    line_chart(
        &[
            Series {
                name: "train loss",
                color: "#1f77b4",
                points: train,
            },
            Series {
                name: "eval loss",
                color: "#d62728",
                points: eval,
            },
        ],
        title,
        (0.0, if top > 0.0 { top * 1.05 } else { 1.0 }),
    )
}

/// A chart of `series` over steps, values clamped to `range`.
pub fn line_chart(series: &[Series<'_>], title: &str, range: (f64, f64)) -> String {
    let (w, h, m) = (640.0, 360.0, 48.0);
    let max_step = series
        .iter()
        .flat_map(|s| s.points)
        .map(|&(s, _)| s)
        .max()
        .unwrap_or(1)
        .max(1) as f64;
    let (lo, hi) = range;
    let span = if hi > lo { hi - lo } else { 1.0 };
    let x = |s: usize| m + (w - 2.0 * m) * s as f64 / max_step;
    let y = |v: f64| h - m - (h - 2.0 * m) * ((v - lo) / span).clamp(0.0, 1.0);
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
        let v = lo + span * i as f64 / 4.0;
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
    for (k, s) in series.iter().enumerate() {
        if s.points.is_empty() {
            continue;
        }
        let pts: Vec<String> = s
            .points
            .iter()
            .filter(|(_, v)| v.is_finite())
            .map(|&(st, v)| format!("{:.1},{:.1}", x(st), y(v)))
            .collect();
        let _ = write!(
            svg,
            r#"<polyline fill="none" stroke="{}" stroke-width="2" points="{}"/>"#,
            s.color,
            pts.join(" ")
        );
        let _ = write!(
            svg,
            r#"<text x="{}" y="{}" fill="{}">{}</text>"#,
            w - m - 110.0,
            40.0 + 16.0 * k as f64,
            s.color,
            escape(s.name)
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
        let svg = super::loss_svg(&[(1, 3.0), (2, f64::NAN), (3, 1.0)], &[], "sft");
        assert_eq!(svg.matches("<polyline").count(), 1);
        assert!(svg.contains("3.15"), "the axis reaches the largest loss");
    }
}
