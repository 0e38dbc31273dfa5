//! SVG bar charts of a sweep: C_l by layer (`contribution.svg`, with the full run's
//! C = 1 as a dashed line), or the score gain over the base model when C is
//! undefined; and two sweeps side by side (`compare.svg`, grouped bars).

use super::Sweep;
use std::fmt::Write;

/// A named series of bar heights (`None`: no bar), with optional error bars
/// (`[lo, hi]` per bar; empty: none).
pub struct Series<'a> {
    pub name: &'a str,
    pub color: &'a str,
    pub values: Vec<Option<f64>>,
    pub errors: Vec<Option<[f64; 2]>>,
}

/// The chart of one sweep.
pub fn contribution_svg(s: &Sweep) -> String {
    let labels: Vec<String> = s.layers.iter().map(|e| label(e.layer)).collect();
    let title = format!("layer contribution — {} on {}", s.model, s.task);
    if s.contribution_defined {
        let values = s.layers.iter().map(|e| e.contribution).collect();
        let errors = s.layers.iter().map(|e| e.contribution_ci95).collect();
        let (name, title) = if s.seeds.len() > 1 {
            (
                "C_l (mean, 95% t-interval)",
                format!("{title}, {} seeds", s.seeds.len()),
            )
        } else {
            ("C_l", title)
        };
        let series = [Series {
            name,
            color: "#1f77b4",
            values,
            errors,
        }];
        bars_svg(&title, "C_l", &labels, &series, Some((1.0, "full")))
    } else {
        let values = s
            .layers
            .iter()
            .map(|e| Some(e.score - s.score_base))
            .collect();
        let series = [Series {
            name: "score - base",
            color: "#1f77b4",
            values,
            errors: Vec::new(),
        }];
        let title = format!("{title} (C undefined: full = base; score gain shown)");
        bars_svg(&title, "score - base", &labels, &series, None)
    }
}

fn label(layer: Option<usize>) -> String {
    layer.map_or_else(|| "all".into(), |l| l.to_string())
}

/// Grouped bars: one group per label, one bar per series; `reference` draws a
/// dashed horizontal line at that value.
pub fn bars_svg(
    title: &str,
    y_label: &str,
    labels: &[String],
    series: &[Series],
    reference: Option<(f64, &str)>,
) -> String {
    let n = labels.len().max(1);
    let per = series.len().max(1);
    let group_w = (12.0 * per as f64 + 8.0).max(24.0);
    let (ml, mr, mt, mb) = (64.0, 24.0, 48.0, 48.0);
    let w = (ml + mr + group_w * n as f64).max(480.0);
    let h = 360.0;
    let ends = series
        .iter()
        .flat_map(|s| s.errors.iter().flatten().flat_map(|e| e.iter()));
    let values = series
        .iter()
        .flat_map(|s| s.values.iter().flatten())
        .chain(ends)
        .filter(|v| v.is_finite());
    let mut lo = values.clone().cloned().fold(0.0f64, f64::min);
    let mut hi = values.cloned().fold(0.0f64, f64::max);
    if let Some((r, _)) = reference {
        hi = hi.max(r);
        lo = lo.min(r);
    }
    if hi - lo < 1e-9 {
        hi = lo + 1.0;
    }
    let tick = nice_step((hi - lo) / 4.0);
    let (lo, hi) = ((lo / tick).floor() * tick, (hi / tick).ceil() * tick);
    let y = |v: f64| mt + (h - mt - mb) * (hi - v) / (hi - lo);
    let plot_w = w - ml - mr;
    let gw = plot_w / n as f64;
    let mut svg = String::new();
    let _ = write!(
        svg,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{w:.0}" height="{h:.0}" font-family="sans-serif" font-size="11"><rect width="{w:.0}" height="{h:.0}" fill="white"/>"#
    );
    let _ = write!(
        svg,
        r#"<text x="{ml}" y="22" font-size="14">{}</text>"#,
        escape(title)
    );
    let ticks = ((hi - lo) / tick).round() as usize;
    for i in 0..=ticks {
        let v = lo + tick * i as f64;
        let yy = y(v);
        let _ = write!(
            svg,
            r##"<line x1="{ml}" x2="{:.1}" y1="{yy:.1}" y2="{yy:.1}" stroke="#e5e5e5"/><text x="{:.1}" y="{:.1}" text-anchor="end">{v:.2}</text>"##,
            w - mr,
            ml - 6.0,
            yy + 4.0
        );
    }
    let _ = write!(
        svg,
        r#"<text x="14" y="{:.1}" transform="rotate(-90 14 {:.1})" text-anchor="middle">{}</text>"#,
        h / 2.0,
        h / 2.0,
        escape(y_label)
    );
    let step = n.div_ceil(40).max(1);
    let bar_w = (gw - 6.0).max(2.0) / per as f64;
    for (g, lab) in labels.iter().enumerate() {
        let x0 = ml + g as f64 * gw + 3.0;
        for (k, s) in series.iter().enumerate() {
            let Some(v) = s.values.get(g).copied().flatten() else {
                continue;
            };
            let (top, bottom) = (y(v.max(0.0)), y(v.min(0.0)));
            let _ = write!(
                svg,
                r#"<rect x="{:.1}" y="{top:.1}" width="{:.1}" height="{:.1}" fill="{}"><title>{} {}: {v:.4}</title></rect>"#,
                x0 + k as f64 * bar_w,
                (bar_w - 1.0).max(1.0),
                (bottom - top).max(0.5),
                s.color,
                escape(s.name),
                escape(lab)
            );
            if let Some([a, b]) = s.errors.get(g).copied().flatten() {
                let xc = x0 + k as f64 * bar_w + bar_w / 2.0;
                let _ = write!(
                    svg,
                    r##"<path d="M{:.1},{:.1}V{:.1}M{:.1},{:.1}h{:.1}M{:.1},{:.1}h{:.1}" stroke="#333" fill="none"><title>95% interval {a:.4} .. {b:.4}</title></path>"##,
                    xc,
                    y(a),
                    y(b),
                    xc - 3.0,
                    y(a),
                    6.0,
                    xc - 3.0,
                    y(b),
                    6.0
                );
            }
        }
        if g % step == 0 {
            let _ = write!(
                svg,
                r#"<text x="{:.1}" y="{:.1}" text-anchor="middle">{}</text>"#,
                ml + (g as f64 + 0.5) * gw,
                h - mb + 16.0,
                escape(lab)
            );
        }
    }
    let _ = write!(
        svg,
        r##"<line x1="{ml}" x2="{:.1}" y1="{:.1}" y2="{:.1}" stroke="#333"/><text x="{:.1}" y="{:.1}" text-anchor="middle">layer</text>"##,
        w - mr,
        y(0.0),
        y(0.0),
        ml + plot_w / 2.0,
        h - 12.0
    );
    if let Some((r, name)) = reference {
        let _ = write!(
            svg,
            r##"<line x1="{ml}" x2="{:.1}" y1="{:.1}" y2="{:.1}" stroke="#d62728" stroke-dasharray="6 4"/><text x="{:.1}" y="{:.1}" fill="#d62728" text-anchor="end">{}</text>"##,
            w - mr,
            y(r),
            y(r),
            w - mr,
            y(r) - 4.0,
            escape(name)
        );
    }
    for (k, s) in series.iter().enumerate() {
        let (lx, ly) = (w - mr - 160.0, 36.0 + 14.0 * k as f64);
        let _ = write!(
            svg,
            r#"<rect x="{lx:.1}" y="{:.1}" width="10" height="10" fill="{}"/><text x="{:.1}" y="{ly:.1}">{}</text>"#,
            ly - 9.0,
            s.color,
            lx + 14.0,
            escape(s.name)
        );
    }
    svg.push_str("</svg>\n");
    svg
}

/// The smallest of 1, 2, 2.5, 5 times a power of ten that is >= `raw`.
fn nice_step(raw: f64) -> f64 {
    let p = 10f64.powf(raw.log10().floor());
    [1.0, 2.0, 2.5, 5.0, 10.0]
        .iter()
        .map(|m| m * p)
        .find(|&s| s >= raw * (1.0 - 1e-9))
        .unwrap_or(10.0 * p)
}

fn escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_bar_per_value() {
        let labels: Vec<String> = (0..3).map(|i| i.to_string()).collect();
        let s = [
            Series {
                name: "a<b",
                color: "#111",
                values: vec![Some(0.5), Some(-0.2), None],
                errors: vec![Some([0.3, 0.7]), None, None],
            },
            Series {
                name: "b",
                color: "#222",
                values: vec![Some(1.5), Some(0.0), Some(0.1)],
                errors: Vec::new(),
            },
        ];
        let svg = bars_svg("t", "C", &labels, &s, Some((1.0, "full")));
        assert!(svg.starts_with("<svg") && svg.trim_end().ends_with("</svg>"));
        assert_eq!(
            svg.matches("<title>").count(),
            6,
            "five bars, one error bar"
        );
        assert!(svg.contains("95% interval 0.3000 .. 0.7000"));
        assert!(svg.contains("a&lt;b") && svg.contains("stroke-dasharray"));
        // Ticks at multiples of 0.5 from -0.5 to 1.5.
        assert!(svg.contains(">-0.50</text>") && svg.contains(">1.50</text>"));
    }

    #[test]
    fn nice_steps() {
        assert_eq!(nice_step(0.3), 0.5);
        assert_eq!(nice_step(0.2), 0.2);
        assert_eq!(nice_step(0.26), 0.5);
        assert_eq!(nice_step(0.24), 0.25);
        assert_eq!(nice_step(7.0), 10.0);
    }
}
