//! Rank correlation of two layer rankings: Spearman's rho (Pearson correlation of
//! the ranks, tied values sharing their average rank, as `scipy.stats.spearmanr`)
//! and Kendall's tau-b (ties corrected, as `scipy.stats.kendalltau`'s default).
//! Both are `None` when undefined: fewer than two values, or one side constant.

/// 1-based ranks of `x`, ties sharing the mean of the positions they span.
pub fn average_ranks(x: &[f64]) -> Vec<f64> {
    let mut order: Vec<usize> = (0..x.len()).collect();
    order.sort_by(|&a, &b| x[a].total_cmp(&x[b]));
    let mut ranks = vec![0.0; x.len()];
    let mut i = 0;
    while i < order.len() {
        let mut j = i;
        while j + 1 < order.len() && x[order[j + 1]] == x[order[i]] {
            j += 1;
        }
        // Positions i..=j (0-based) share rank mean(i+1..=j+1).
        let r = (i + j) as f64 / 2.0 + 1.0;
        for &k in &order[i..=j] {
            ranks[k] = r;
        }
        i = j + 1;
    }
    ranks
}

fn pearson(a: &[f64], b: &[f64]) -> Option<f64> {
    let n = a.len() as f64;
    let (ma, mb) = (a.iter().sum::<f64>() / n, b.iter().sum::<f64>() / n);
    let (mut cov, mut va, mut vb) = (0.0, 0.0, 0.0);
    for (x, y) in a.iter().zip(b) {
        cov += (x - ma) * (y - mb);
        va += (x - ma) * (x - ma);
        vb += (y - mb) * (y - mb);
    }
    (va > 0.0 && vb > 0.0).then(|| (cov / (va * vb).sqrt()).clamp(-1.0, 1.0))
}

/// Spearman's rho with average ranks for ties.
pub fn spearman(a: &[f64], b: &[f64]) -> Option<f64> {
    assert_eq!(a.len(), b.len(), "spearman: lengths");
    if a.len() < 2 {
        return None;
    }
    pearson(&average_ranks(a), &average_ranks(b))
}

/// Kendall's tau-b: `(nc - nd) / sqrt((n0 - n1) (n0 - n2))` over all pairs, n1 and
/// n2 the pairs tied in `a` and in `b`.
pub fn kendall_tau_b(a: &[f64], b: &[f64]) -> Option<f64> {
    assert_eq!(a.len(), b.len(), "kendall: lengths");
    let n = a.len();
    let (mut s, mut ties_a, mut ties_b) = (0i64, 0i64, 0i64);
    for i in 0..n {
        for j in i + 1..n {
            let da = a[i].total_cmp(&a[j]) as i64;
            let db = b[i].total_cmp(&b[j]) as i64;
            s += da * db;
            ties_a += i64::from(da == 0);
            ties_b += i64::from(db == 0);
        }
    }
    let n0 = (n * n.saturating_sub(1) / 2) as i64;
    let den = ((n0 - ties_a) as f64 * (n0 - ties_b) as f64).sqrt();
    (den > 0.0).then(|| (s as f64 / den).clamp(-1.0, 1.0))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn close(a: Option<f64>, b: f64) {
        let a = a.expect("defined");
        assert!((a - b).abs() < 1e-12, "{a} vs {b}");
    }

    #[test]
    fn ranks_share_ties() {
        assert_eq!(
            average_ranks(&[3.0, 1.0, 3.0, 2.0, 3.0]),
            vec![4.0, 1.0, 4.0, 2.0, 4.0]
        );
    }

    /// x = [1,2,3,4,5], y = [2,1,4,3,5]: sum d^2 = 4, rho = 1 - 6*4/(5*24) = 0.8;
    /// two discordant pairs of ten, tau = (8-2)/10 = 0.6.
    #[test]
    fn no_ties() {
        let (x, y) = ([1.0, 2.0, 3.0, 4.0, 5.0], [2.0, 1.0, 4.0, 3.0, 5.0]);
        close(spearman(&x, &y), 0.8);
        close(kendall_tau_b(&x, &y), 0.6);
        close(spearman(&x, &[5.0, 4.0, 3.0, 2.0, 1.0]), -1.0);
        close(kendall_tau_b(&x, &[5.0, 4.0, 3.0, 2.0, 1.0]), -1.0);
    }

    /// x = [1,2,2,3] (ranks 1, 2.5, 2.5, 4), y = [1,3,2,4]: rho = 4.5/sqrt(4.5*5)
    /// = sqrt(0.9); pairs: 5 concordant, 0 discordant, 1 tied in x, so
    /// tau-b = 5/sqrt(5*6).
    #[test]
    fn ties() {
        let (x, y) = ([1.0, 2.0, 2.0, 3.0], [1.0, 3.0, 2.0, 4.0]);
        close(spearman(&x, &y), 0.9f64.sqrt());
        close(kendall_tau_b(&x, &y), 5.0 / 30f64.sqrt());
    }

    #[test]
    fn undefined() {
        assert_eq!(spearman(&[1.0, 1.0, 1.0], &[1.0, 2.0, 3.0]), None);
        assert_eq!(kendall_tau_b(&[1.0, 1.0, 1.0], &[1.0, 2.0, 3.0]), None);
        assert_eq!(spearman(&[1.0], &[2.0]), None);
        assert_eq!(kendall_tau_b(&[], &[]), None);
    }
}
