//! `engine sweep compare A B`: how alike two sweeps rank the layers (different
//! tasks, algorithms or models of the same depth). Over the layers both swept, the
//! key is C_l when both sweeps define it, else the score; Spearman's rho and
//! Kendall's tau-b of the two keys (`rank`; the means over seeds for seeded sweeps,
//! with a bootstrap interval of rho), and a side-by-side bar chart.

use super::chart::{bars_svg, Series};
use super::rank::{kendall_tau_b, spearman};
use super::Sweep;
use crate::{Error, Result};
use serde::Serialize;
use std::path::Path;

/// The result, as `compare.json` and stdout.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Comparison {
    pub a: String,
    pub b: String,
    /// "contribution" or "score".
    pub key: String,
    /// The layers both sweeps hold.
    pub layers: Vec<usize>,
    pub values_a: Vec<f64>,
    pub values_b: Vec<f64>,
    pub spearman: Option<f64>,
    /// 95% percentile-bootstrap interval of Spearman's rho over both sweeps' seeds
    /// (`stats::spearman_interval`); None unless both have two seeds or more.
    pub spearman_ci95: Option<[f64; 2]>,
    pub kendall_tau_b: Option<f64>,
}

/// Compare two sweeps (`names` label them in the output).
pub fn compare(a: &Sweep, b: &Sweep, names: (&str, &str)) -> Result<Comparison> {
    if a.num_layers != b.num_layers {
        return Err(Error::invalid(format!(
            "sweep compare: {} is of a {}-layer model, {} of a {}-layer one; layer rankings compare only at the same depth",
            names.0, a.num_layers, names.1, b.num_layers
        )));
    }
    let by_c = a.contribution_defined && b.contribution_defined;
    let value = |s: &Sweep, l: usize| {
        s.layers.iter().find(|e| e.layer == Some(l)).map(|e| {
            if by_c {
                e.contribution.unwrap_or(f64::NAN)
            } else {
                e.score
            }
        })
    };
    let (mut layers, mut va, mut vb) = (Vec::new(), Vec::new(), Vec::new());
    for l in 0..a.num_layers {
        if let (Some(x), Some(y)) = (value(a, l), value(b, l)) {
            layers.push(l);
            va.push(x);
            vb.push(y);
        }
    }
    if layers.len() < 2 {
        return Err(Error::invalid(format!(
            "sweep compare: {} and {} share {} swept layer(s); a rank correlation needs at least 2",
            names.0,
            names.1,
            layers.len()
        )));
    }
    if va.iter().chain(&vb).any(|v| !v.is_finite()) {
        return Err(Error::invalid(
            "sweep compare: a contribution is missing or not finite",
        ));
    }
    let per_seed = |s: &Sweep| -> Vec<Vec<Option<f64>>> {
        layers
            .iter()
            .map(|&l| {
                let e = s
                    .layers
                    .iter()
                    .find(|e| e.layer == Some(l))
                    .expect("shared");
                e.seeds
                    .iter()
                    .map(|r| if by_c { r.contribution } else { Some(r.score) })
                    .collect()
            })
            .collect()
    };
    let spearman_ci95 = super::stats::spearman_interval(&per_seed(a), &per_seed(b));
    Ok(Comparison {
        spearman_ci95,
        a: names.0.into(),
        b: names.1.into(),
        key: if by_c { "contribution" } else { "score" }.into(),
        spearman: spearman(&va, &vb),
        kendall_tau_b: kendall_tau_b(&va, &vb),
        layers,
        values_a: va,
        values_b: vb,
    })
}

/// Grouped bars of both sweeps' keys by layer.
pub fn compare_svg(c: &Comparison) -> String {
    let labels: Vec<String> = c.layers.iter().map(|l| l.to_string()).collect();
    let fmt = |v: Option<f64>| v.map_or_else(|| "undefined".into(), |v| format!("{v:.3}"));
    let title = format!(
        "{} by layer: Spearman {}, Kendall tau-b {}",
        c.key,
        fmt(c.spearman),
        fmt(c.kendall_tau_b)
    );
    let series = [
        Series {
            name: &c.a,
            color: "#1f77b4",
            values: c.values_a.iter().map(|&v| Some(v)).collect(),
            errors: Vec::new(),
        },
        Series {
            name: &c.b,
            color: "#ff7f0e",
            values: c.values_b.iter().map(|&v| Some(v)).collect(),
            errors: Vec::new(),
        },
    ];
    let reference = (c.key == "contribution").then_some((1.0, "full"));
    bars_svg(&title, &c.key, &labels, &series, reference)
}

/// A short label for a sweep path: its directory name.
pub fn label(path: &Path) -> String {
    let p = if path.is_dir() {
        path
    } else {
        path.parent().unwrap_or(path)
    };
    p.file_name()
        .map(|n| n.to_string_lossy().to_string())
        .filter(|n| !n.is_empty())
        .unwrap_or_else(|| path.display().to_string())
}

#[cfg(test)]
mod tests {
    use super::super::tests::sweep;
    use super::*;

    #[test]
    fn correlations_over_shared_layers() {
        let a = sweep(0.0, 1.0, &[(0, 0.1), (1, 0.2), (2, 0.3), (3, 0.4)]);
        let b = sweep(0.0, 0.5, &[(0, 0.05), (1, 0.15), (2, 0.1)]);
        let c = compare(&a, &b, ("a", "b")).unwrap();
        assert_eq!(
            (c.key.as_str(), c.layers.clone()),
            ("contribution", vec![0, 1, 2])
        );
        // a ranks 0 < 1 < 2, b ranks 0 < 2 < 1: rho = 0.5, tau = 1/3.
        assert!((c.spearman.unwrap() - 0.5).abs() < 1e-12);
        assert!((c.kendall_tau_b.unwrap() - 1.0 / 3.0).abs() < 1e-12);
        assert_eq!(compare_svg(&c).matches("<title>").count(), 6);
        let mut deep = b.clone();
        deep.num_layers = 8;
        assert!(compare(&a, &deep, ("a", "b"))
            .unwrap_err()
            .to_string()
            .contains("same depth"));
    }
}
