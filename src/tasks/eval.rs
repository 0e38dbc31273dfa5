//! Evaluation helpers.

/// The unbiased pass@k estimator of the Codex paper (Chen et al. 2021,
/// arXiv 2107.03374, figure 3): with `n` samples of which `c` are correct,
/// `1 - C(n-c, k) / C(n, k)`, computed as the product
/// `1 - prod_{i=n-c+1}^{n} (1 - k/i)` so it never forms a binomial.
///
/// Panics unless `1 <= k <= n` and `c <= n` (callers check user settings).
pub fn pass_at_k(n: usize, c: usize, k: usize) -> f64 {
    assert!(
        k >= 1 && k <= n && c <= n,
        "pass_at_k needs 1 <= k <= n and c <= n (n={n}, c={c}, k={k})"
    );
    if n - c < k {
        return 1.0;
    }
    let prod: f64 = (n - c + 1..=n).map(|i| 1.0 - k as f64 / i as f64).product();
    1.0 - prod
}

/// The mean of `pass_at_k` over problems given as `(n, c)` pairs; 0 when empty.
pub fn mean_pass_at_k(counts: &[(usize, usize)], k: usize) -> f64 {
    if counts.is_empty() {
        return 0.0;
    }
    counts.iter().map(|&(n, c)| pass_at_k(n, c, k)).sum::<f64>() / counts.len() as f64
}

#[cfg(test)]
mod tests {
    use super::*;

    /// C(n, k) in f64 for small arguments.
    fn binom(n: usize, k: usize) -> f64 {
        if k > n {
            return 0.0;
        }
        (0..k).map(|i| (n - i) as f64 / (i + 1) as f64).product()
    }

    #[test]
    fn matches_the_binomial_form() {
        for n in 1..=12 {
            for c in 0..=n {
                for k in 1..=n {
                    let want = 1.0 - binom(n - c, k) / binom(n, k);
                    let got = pass_at_k(n, c, k);
                    assert!(
                        (got - want).abs() < 1e-12,
                        "n={n} c={c} k={k}: {got} vs {want}"
                    );
                }
            }
        }
    }

    #[test]
    fn edge_cases() {
        assert_eq!(pass_at_k(10, 0, 1), 0.0);
        assert!((pass_at_k(10, 3, 1) - 0.3).abs() < 1e-12);
        assert_eq!(pass_at_k(10, 10, 5), 1.0);
        assert_eq!(pass_at_k(5, 1, 5), 1.0);
        // Large n stays finite and in [0, 1].
        let p = pass_at_k(1000, 1, 100);
        assert!((p - 0.1).abs() < 1e-9, "{p}");
        assert!((mean_pass_at_k(&[(4, 0), (4, 4)], 2) - 0.5).abs() < 1e-12);
    }
}
