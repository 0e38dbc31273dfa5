//! Uncertainty of a sweep repeated over seeds (`engine sweep --seeds K`): each seed
//! is a complete sweep (its own base, full and layer runs, rollout sampling and data
//! order drawn from that seed), so C_{l,k} = (score_{l,k} - base_k) / (full_k -
//! base_k) per seed k, and per layer:
//!
//! - the mean of C over the seeds where it is defined, its sample standard deviation,
//!   and a 95% t-interval `mean ± t_{0.975, n-1} · sd / sqrt(n)` (Student's t, not a
//!   bootstrap: with 3-5 seeds a percentile bootstrap undercovers badly);
//! - whether it is distinguishable from the best layer (the highest mean): the
//!   95% t-interval of the paired differences `C_best,k - C_l,k` over the seeds
//!   excludes 0 (paired, since one seed's runs share a base and a full run).
//!
//! `spearman_interval` gives the rank correlation of two seeded sweeps with a
//! percentile bootstrap over each sweep's seeds (resampled independently), the
//! spread of the ranking rather than of one layer.

use crate::sampling::mix64;

/// Student's t quantile t_{0.975, df} (df >= 1; the normal 1.96 past 30).
pub fn t975(df: usize) -> f64 {
    const T: [f64; 30] = [
        12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228, 2.201, 2.179, 2.160,
        2.145, 2.131, 2.120, 2.110, 2.101, 2.093, 2.086, 2.080, 2.074, 2.069, 2.064, 2.060, 2.056,
        2.052, 2.048, 2.045, 2.042,
    ];
    match df {
        0 => f64::NAN,
        d if d <= 30 => T[d - 1],
        _ => 1.96,
    }
}

/// Mean, sample standard deviation and 95% t-interval of `x` (None for the
/// spread and the interval with fewer than two values).
pub fn summarize(x: &[f64]) -> (Option<f64>, Option<f64>, Option<[f64; 2]>) {
    if x.is_empty() {
        return (None, None, None);
    }
    let n = x.len() as f64;
    let mean = x.iter().sum::<f64>() / n;
    if x.len() < 2 {
        return (Some(mean), None, None);
    }
    let var = x.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / (n - 1.0);
    let sd = var.sqrt();
    let half = t975(x.len() - 1) * sd / n.sqrt();
    (Some(mean), Some(sd), Some([mean - half, mean + half]))
}

/// Whether the paired differences `best - other` (per seed, both defined) have a
/// 95% t-interval above 0; None with fewer than two pairs.
pub fn distinguishable(best: &[Option<f64>], other: &[Option<f64>]) -> Option<bool> {
    let d: Vec<f64> = best
        .iter()
        .zip(other)
        .filter_map(|(a, b)| Some((*a)? - (*b)?))
        .collect();
    match summarize(&d) {
        (_, _, Some([lo, _])) => Some(lo > 0.0),
        _ => None,
    }
}

/// A 95% percentile-bootstrap interval of Spearman's rho between two sweeps' mean
/// per-layer values, resampling each sweep's seeds (`a[l][k]`: layer l, seed k;
/// None where undefined). None when either sweep has fewer than two seeds.
pub fn spearman_interval(a: &[Vec<Option<f64>>], b: &[Vec<Option<f64>>]) -> Option<[f64; 2]> {
    let (ka, kb) = (a.first()?.len(), b.first()?.len());
    if ka < 2 || kb < 2 {
        return None;
    }
    const B: u64 = 2000;
    let pick = |draw: u64, k: usize| (mix64(draw) % k as u64) as usize;
    let means = |x: &[Vec<Option<f64>>], idx: &[usize]| -> Vec<f64> {
        x.iter()
            .map(|layer| {
                let v: Vec<f64> = idx.iter().filter_map(|&i| layer[i]).collect();
                if v.is_empty() {
                    f64::NAN
                } else {
                    v.iter().sum::<f64>() / v.len() as f64
                }
            })
            .collect()
    };
    let mut rhos = Vec::new();
    for r in 0..B {
        let ia: Vec<usize> = (0..ka).map(|j| pick(r << 20 | j as u64, ka)).collect();
        let ib: Vec<usize> = (0..kb)
            .map(|j| pick(r << 20 | 1 << 19 | j as u64, kb))
            .collect();
        let (ma, mb) = (means(a, &ia), means(b, &ib));
        if ma.iter().chain(&mb).any(|v| !v.is_finite()) {
            continue;
        }
        if let Some(rho) = super::rank::spearman(&ma, &mb) {
            rhos.push(rho);
        }
    }
    if rhos.len() < (B / 2) as usize {
        return None;
    }
    rhos.sort_by(f64::total_cmp);
    let q = |p: f64| rhos[((rhos.len() - 1) as f64 * p).round() as usize];
    Some([q(0.025), q(0.975)])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn t_intervals_by_hand() {
        let (m, sd, ci) = summarize(&[0.2, 0.4, 0.6]);
        assert!((m.unwrap() - 0.4).abs() < 1e-12);
        assert!((sd.unwrap() - 0.2).abs() < 1e-12);
        let half = 4.303 * 0.2 / 3f64.sqrt();
        let [lo, hi] = ci.unwrap();
        assert!((lo - (0.4 - half)).abs() < 1e-12 && (hi - (0.4 + half)).abs() < 1e-12);
        assert_eq!(summarize(&[0.5]), (Some(0.5), None, None));
        assert_eq!(summarize(&[]), (None, None, None));
        assert_eq!(t975(40), 1.96);
    }

    #[test]
    fn distinguishable_uses_paired_differences() {
        // A constant gap over seeds that move together: clearly apart.
        let best = [Some(0.9), Some(0.5), Some(0.7)];
        let close = [Some(0.8), Some(0.4), Some(0.6)];
        assert_eq!(distinguishable(&best, &close), Some(true));
        // Differences of both signs: not distinguishable.
        let mixed = [Some(1.0), Some(0.4), Some(0.6)];
        assert_eq!(distinguishable(&best, &mixed), Some(false));
        assert_eq!(distinguishable(&best[..1], &close[..1]), None);
    }

    #[test]
    fn spearman_interval_brackets_agreement() {
        let a: Vec<Vec<Option<f64>>> = (0..5)
            .map(|l| (0..4).map(|k| Some(l as f64 + 0.01 * k as f64)).collect())
            .collect();
        let [lo, hi] = spearman_interval(&a, &a).unwrap();
        assert!(lo > 0.99 && hi <= 1.0 + 1e-12, "{lo} {hi}");
        let one: Vec<Vec<Option<f64>>> = (0..5).map(|l| vec![Some(l as f64)]).collect();
        assert!(spearman_interval(&a, &one).is_none());
    }
}
