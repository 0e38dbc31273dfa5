//! Backward ops against central finite differences in f64, and the GRPO/PPO loss
//! and its aggregation. Every forward output y is reduced as `L = sum(dy * y)` with
//! a random dy, so the numeric gradient of L is the vector-Jacobian product the
//! backward op computes. Accumulating outputs are pre-filled with random values.

use super::loss::{aggregate, ppo_token_loss, token_loss_row, KlType, LossAgg, LossConfig};
use super::*;
use crate::backend::AttnDims;

const FD_EPS: f64 = 1e-6;
const TOL: f64 = 1e-6;

/// Uniform in [-1, 1), deterministic (splitmix64).
fn rand_vec(n: usize, seed: u64) -> Vec<f64> {
    let mut s = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ 0xD1B5_4A32_D192_ED03;
    (0..n)
        .map(|_| {
            s = s.wrapping_add(0x9E37_79B9_7F4A_7C15);
            let mut z = s;
            z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
            z ^= z >> 31;
            (z >> 11) as f64 / (1u64 << 53) as f64 * 2.0 - 1.0
        })
        .collect()
}

fn dot(a: &[f64], b: &[f64]) -> f64 {
    a.iter().zip(b).map(|(x, y)| x * y).sum()
}

/// Central differences of `f` at `x`, one coordinate at a time.
fn num_grad(x: &[f64], mut f: impl FnMut(&[f64]) -> f64) -> Vec<f64> {
    let mut xp = x.to_vec();
    (0..x.len())
        .map(|i| {
            let v = xp[i];
            xp[i] = v + FD_EPS;
            let up = f(&xp);
            xp[i] = v - FD_EPS;
            let down = f(&xp);
            xp[i] = v;
            (up - down) / (2.0 * FD_EPS)
        })
        .collect()
}

/// ‖got − want‖ / ‖want‖ < TOL, reporting the worst index.
fn assert_close(name: &str, got: &[f64], want: &[f64]) {
    assert_eq!(got.len(), want.len(), "{name}: lengths");
    let norm = dot(want, want).sqrt();
    let diff: Vec<f64> = got.iter().zip(want).map(|(a, b)| a - b).collect();
    let rel = dot(&diff, &diff).sqrt() / norm.max(1e-300);
    let (worst, max_abs) = diff
        .iter()
        .enumerate()
        .fold((0, 0.0f64), |(wi, wm), (i, d)| {
            if d.abs() > wm {
                (i, d.abs())
            } else {
                (wi, wm)
            }
        });
    assert!(norm > 1e-8, "{name}: reference gradient is all zero");
    assert!(
        rel < TOL,
        "{name}: rel err {rel:e}, max abs {max_abs:e} at {worst} (got {}, want {})",
        got[worst],
        want[worst]
    );
}

fn sub(a: &[f64], b: &[f64]) -> Vec<f64> {
    a.iter().zip(b).map(|(x, y)| x - y).collect()
}

#[test]
fn rmsnorm_backward_matches_finite_differences() {
    let (rows, dim, eps) = (3, 16, 1e-6f32);
    let x = rand_vec(rows * dim, 1);
    let w: Vec<f64> = rand_vec(dim, 2).iter().map(|v| 1.0 + 0.5 * v).collect();
    let dy = rand_vec(rows * dim, 3);
    let fwd = |x: &[f64], w: &[f64]| {
        let mut out = vec![0.0; rows * dim];
        rmsnorm(&mut out, x, w, rows, dim, eps);
        dot(&out, &dy)
    };
    let mut out = vec![f64::NAN; rows * dim];
    let mut rstd = vec![f64::NAN; rows];
    rmsnorm_saved(&mut out, &mut rstd, &x, &w, rows, dim, eps);
    let mut plain = vec![f64::NAN; rows * dim];
    rmsnorm(&mut plain, &x, &w, rows, dim, eps);
    assert_eq!(out, plain);
    for (r, &got) in rstd.iter().enumerate() {
        let xr = &x[r * dim..(r + 1) * dim];
        let want = 1.0 / (dot(xr, xr) / dim as f64 + eps as f64).sqrt();
        assert!((got - want).abs() < 1e-14, "rstd[{r}]");
    }
    let mut dx = vec![f64::NAN; rows * dim];
    let dw0 = rand_vec(dim, 4);
    let mut dw = dw0.clone();
    rmsnorm_backward(&mut dx, &mut dw, &dy, &x, &w, &rstd, rows, dim);
    assert_close("rmsnorm dx", &dx, &num_grad(&x, |x| fwd(x, &w)));
    assert_close("rmsnorm dw", &sub(&dw, &dw0), &num_grad(&w, |w| fwd(&x, w)));
}

#[test]
fn rope_backward_matches_finite_differences() {
    for head_dim in [8, 16] {
        let (tokens, heads, theta) = (3, 2, 10000.0f32);
        let pos = [0u32, 5, 17];
        let x = rand_vec(tokens * heads * head_dim, 5);
        let dy = rand_vec(x.len(), 6);
        let mut dx = dy.clone();
        rope_backward(&mut dx, &pos, tokens, heads, head_dim, theta);
        let num = num_grad(&x, |x| {
            let mut y = x.to_vec();
            rope(&mut y, &pos, tokens, heads, head_dim, theta);
            dot(&y, &dy)
        });
        assert_close(&format!("rope dx (head_dim {head_dim})"), &dx, &num);
        // The inverse rotation undoes the forward one.
        let mut y = x.clone();
        rope(&mut y, &pos, tokens, heads, head_dim, theta);
        rope_backward(&mut y, &pos, tokens, heads, head_dim, theta);
        assert_close("rope round trip", &y, &x);
    }
}

#[test]
fn swiglu_backward_matches_finite_differences() {
    let n = 24;
    let gate: Vec<f64> = rand_vec(n, 7).iter().map(|v| 4.0 * v).collect();
    let up = rand_vec(n, 8);
    let dout = rand_vec(n, 9);
    let fwd = |g: &[f64], u: &[f64]| {
        let mut out = vec![0.0; n];
        swiglu(&mut out, g, u, n);
        dot(&out, &dout)
    };
    let (mut dgate, mut dup) = (vec![f64::NAN; n], vec![f64::NAN; n]);
    swiglu_backward(&mut dgate, &mut dup, &dout, &gate, &up, n);
    assert_close("swiglu dgate", &dgate, &num_grad(&gate, |g| fwd(g, &up)));
    assert_close("swiglu dup", &dup, &num_grad(&up, |u| fwd(&gate, u)));
}

#[test]
fn linear_backward_matches_finite_differences() {
    let (m, n, k) = (3, 5, 4);
    let x = rand_vec(m * k, 10);
    let w = rand_vec(n * k, 11);
    let b = rand_vec(n, 12);
    let dout = rand_vec(m * n, 13);
    let fwd = |x: &[f64], w: &[f64], b: &[f64]| {
        let mut out = vec![0.0; m * n];
        linear(&mut out, x, w, Some(b), m, n, k);
        dot(&out, &dout)
    };
    let mut dx = vec![f64::NAN; m * k];
    linear_backward_input(&mut dx, &dout, &w, m, n, k);
    let (dw0, db0) = (rand_vec(n * k, 14), rand_vec(n, 15));
    let (mut dw, mut db) = (dw0.clone(), db0.clone());
    linear_backward_weight(&mut dw, Some(&mut db), &dout, &x, m, n, k);
    assert_close("linear dx", &dx, &num_grad(&x, |x| fwd(x, &w, &b)));
    assert_close(
        "linear dw",
        &sub(&dw, &dw0),
        &num_grad(&w, |w| fwd(&x, w, &b)),
    );
    assert_close(
        "linear db",
        &sub(&db, &db0),
        &num_grad(&b, |b| fwd(&x, &w, b)),
    );
    // Without a bias gradient the weight gradient is the same.
    let mut dw2 = dw0.clone();
    linear_backward_weight(&mut dw2, None, &dout, &x, m, n, k);
    assert_close("linear dw (no db)", &dw2, &dw);
}

/// Shapes large enough for the rayon split, against plain loops.
#[test]
fn linear_backward_parallel_matches_loops() {
    let (m, n, k) = (70, 48, 40);
    let x = rand_vec(m * k, 16);
    let w = rand_vec(n * k, 17);
    let dout = rand_vec(m * n, 18);
    let mut dx = vec![f64::NAN; m * k];
    linear_backward_input(&mut dx, &dout, &w, m, n, k);
    let dw0 = rand_vec(n * k, 19);
    let mut dw = dw0.clone();
    linear_backward_weight(&mut dw, None, &dout, &x, m, n, k);
    let mut want_dx = vec![0.0; m * k];
    let mut want_dw = dw0.clone();
    for r in 0..m {
        for o in 0..n {
            let g = dout[r * n + o];
            for i in 0..k {
                want_dx[r * k + i] += g * w[o * k + i];
                want_dw[o * k + i] += g * x[r * k + i];
            }
        }
    }
    assert_close("linear dx (parallel)", &dx, &want_dx);
    assert_close("linear dw (parallel)", &dw, &want_dw);
}

#[test]
fn attention_backward_matches_finite_differences() {
    for head_dim in [8, 16] {
        // Ragged: slot 2 continues at positions 3..=5 over a cached prefix, slot 0
        // decodes one token at position 6, slot 1 prefills positions 0..=1.
        let slot = [2u32, 2, 2, 0, 1, 1];
        let pos = [3u32, 4, 5, 6, 0, 1];
        let d = AttnDims {
            tokens: slot.len(),
            heads: 4,
            kv_heads: 2,
            head_dim,
            slots: 3,
            max_len: 8,
        };
        let scale = 2.0 / (head_dim as f32).sqrt();
        let q_len = d.tokens * d.heads * head_dim;
        let q = rand_vec(q_len, 20 + head_dim as u64);
        let kc = rand_vec(d.cache_len(), 21);
        let vc = rand_vec(d.cache_len(), 22);
        let dout = rand_vec(q_len, 23);
        let fwd = |q: &[f64], kc: &[f64], vc: &[f64]| {
            let mut out = vec![0.0; q_len];
            attention(&mut out, q, kc, vc, &slot, &pos, d, scale);
            dot(&out, &dout)
        };
        let mut out = vec![f64::NAN; q_len];
        let mut lse = vec![f64::NAN; d.tokens * d.heads];
        attention_saved(&mut out, &mut lse, &q, &kc, &vc, &slot, &pos, d, scale);
        let mut plain = vec![f64::NAN; q_len];
        attention(&mut plain, &q, &kc, &vc, &slot, &pos, d, scale);
        assert_eq!(out, plain);
        // lse of row (t = 3, h = 3): slot 0, kv head 1, positions 0..=6.
        let (t, h) = (3, 3);
        let qv = &q[(t * d.heads + h) * head_dim..][..head_dim];
        let want = (0..=6)
            .map(|j| {
                let at = ((j * d.kv_heads) + 1) * head_dim;
                (dot(qv, &kc[at..at + head_dim]) * scale as f64).exp()
            })
            .sum::<f64>()
            .ln();
        assert!((lse[t * d.heads + h] - want).abs() < 1e-12, "lse");

        let mut dq = vec![f64::NAN; q_len];
        let dk0 = rand_vec(d.cache_len(), 24);
        let dv0 = rand_vec(d.cache_len(), 25);
        let (mut dk, mut dv) = (dk0.clone(), dv0.clone());
        attention_backward(
            &mut dq, &mut dk, &mut dv, &dout, &out, &lse, &q, &kc, &vc, &slot, &pos, d, scale,
        );
        let name = |s: &str| format!("attention {s} (head_dim {head_dim})");
        assert_close(&name("dq"), &dq, &num_grad(&q, |q| fwd(q, &kc, &vc)));
        let (gk, gv) = (sub(&dk, &dk0), sub(&dv, &dv0));
        assert_close(&name("dk"), &gk, &num_grad(&kc, |kc| fwd(&q, kc, &vc)));
        assert_close(&name("dv"), &gv, &num_grad(&vc, |vc| fwd(&q, &kc, vc)));
        // Cache rows no token attends to are left exactly as they were.
        let row = d.kv_heads * head_dim;
        for (s, p) in [(0, 7), (1, 2), (1, 7), (2, 6)] {
            let at = (s * d.max_len + p) * row;
            assert_eq!(dk[at..at + row], dk0[at..at + row], "dk slot {s} pos {p}");
            assert_eq!(dv[at..at + row], dv0[at..at + row], "dv slot {s} pos {p}");
        }
    }
}

fn loss_grad_check(logp: f64, old: f64, adv: f64, r: Option<f64>, cfg: &LossConfig) -> (f64, bool) {
    let (l, g, clipped) = ppo_token_loss(logp, old, adv, r, cfg);
    let f = |lp: f64| ppo_token_loss(lp, old, adv, r, cfg).0;
    let num = (f(logp + FD_EPS) - f(logp - FD_EPS)) / (2.0 * FD_EPS);
    let err = (g - num).abs() / g.abs().max(1e-3);
    assert!(
        err < TOL,
        "dloss/dlogp at logp {logp} old {old} adv {adv} ref {r:?} {cfg:?}: got {g}, fd {num}"
    );
    (l, clipped)
}

#[test]
fn ppo_loss_branches_and_gradients() {
    let cfg = LossConfig::default();
    let close = |a: f64, b: f64| (a - b).abs() < 1e-12;
    // Unclipped, A > 0 and A < 0.
    let (l, c) = loss_grad_check(0.1, 0.0, 1.5, None, &cfg);
    assert!(!c && close(l, -1.5 * 0.1f64.exp()));
    let (l, c) = loss_grad_check(0.5, 0.0, -1.0, None, &cfg);
    assert!(
        !c && close(l, 0.5f64.exp()),
        "A < 0, ratio > 1 + eps: unclipped"
    );
    let (l, c) = loss_grad_check(-0.5, 0.0, 1.0, None, &cfg);
    assert!(
        !c && close(l, -(-0.5f64).exp()),
        "A > 0, ratio < 1 - eps: unclipped"
    );
    // Clipped high (A > 0, ratio > 1 + eps): loss -A (1 + eps), gradient 0.
    let (l, c) = loss_grad_check(0.3, 0.0, 1.0, None, &cfg);
    assert!(c && close(l, -1.2));
    // Clipped low (A < 0, ratio < 1 - eps).
    let (l, c) = loss_grad_check(-0.4, 0.0, -2.0, None, &cfg);
    assert!(c && close(l, 2.0 * 0.8));
    // Dual clip (A < 0, -A ratio > -A c).
    let (l, c) = loss_grad_check(1.5, 0.0, -1.0, None, &cfg);
    assert!(c && close(l, 3.0));
    let no_dual = LossConfig {
        clip_c: None,
        ..cfg
    };
    let (l, c) = loss_grad_check(1.5, 0.0, -1.0, None, &no_dual);
    assert!(!c && close(l, 1.5f64.exp()));
    // The ratio clamp at 20: a constant ratio, gradient 0.
    let (l, _) = loss_grad_check(25.0, 0.0, -1.0, None, &no_dual);
    assert!(close(l, 20f64.exp()));
    // KL terms, each estimator; the ratio part is unclipped here.
    for (kl, want) in [
        (KlType::K1, 0.3),
        (KlType::K2, 0.045),
        (KlType::K3, (-0.3f64).exp() + 0.3 - 1.0),
        (KlType::LowVarKl, (-0.3f64).exp() + 0.3 - 1.0),
    ] {
        let kc = LossConfig {
            kl,
            beta: 0.1,
            ..cfg
        };
        let (l, c) = loss_grad_check(0.1, 0.0, 1.0, Some(-0.2), &kc);
        assert!(!c && close(l, -(0.1f64.exp()) + 0.1 * want), "{kl:?}");
        // Negative difference too.
        loss_grad_check(-0.3, 0.0, 1.0, Some(0.4), &kc);
    }
    // low_var_kl saturates at 10 (gradient 0); plain k3 does not.
    let lv = LossConfig {
        kl: KlType::LowVarKl,
        beta: 0.1,
        ..cfg
    };
    let (l, _) = loss_grad_check(-15.0, -15.0, 1.0, Some(0.0), &lv);
    assert!(close(l, -1.0 + 0.1 * 10.0));
    let k3 = LossConfig {
        kl: KlType::K3,
        ..lv
    };
    let (l, _) = loss_grad_check(-15.0, -15.0, 1.0, Some(0.0), &k3);
    assert!(close(l, -1.0 + 0.1 * (15f64.exp() - 15.0 - 1.0)));
    // beta = 0 or no reference: no KL.
    let (l, _) = loss_grad_check(0.1, 0.0, 1.0, None, &lv);
    assert!(close(l, -(0.1f64.exp())));
}

/// Cross-entropy mode: l = -logp whatever the policy inputs, and the logit gradient
/// is weight * (p - onehot), the gradient of PyTorch's cross_entropy.
#[test]
fn cross_entropy_row_is_minus_logp_with_the_softmax_gradient() {
    let logits = [0.3f64, -1.2, 2.0, 0.7, -0.1];
    let lse = logits.iter().map(|z| z.exp()).sum::<f64>().ln();
    let cfg = LossConfig::cross_entropy();
    let mut d = [0.0f64; 5];
    let out = token_loss_row(&mut d, &logits, 3, 5.0, Some(1.0), -2.0, 0.5, &cfg);
    assert!((out[0] - (0.7 - lse)).abs() < 1e-12);
    assert!((out[1] + out[0]).abs() < 1e-12, "loss = -logp");
    assert_eq!(out[3], 0.0, "never clipped");
    for (j, (&g, &z)) in d.iter().zip(&logits).enumerate() {
        let want = 0.5 * ((z - lse).exp() - if j == 3 { 1.0 } else { 0.0 });
        assert!((g - want).abs() < 1e-12, "{j}: {g} vs {want}");
    }
}

#[test]
fn aggregation_modes_by_hand() {
    // Three sequences of 4; the last has no completion tokens.
    let losses: [f64; 12] = [1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0, 8.0, 9.0, 9.0, 9.0, 9.0];
    let mask = [0.0, 1.0, 1.0, 1.0, 0.0, 1.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0];
    let (l, w) = aggregate(&losses, &mask, 3, LossAgg::TokenMean, 4);
    assert!((l - 15.0 / 4.0).abs() < 1e-12);
    assert_eq!(w, [0., 0.25, 0.25, 0.25, 0., 0.25, 0., 0., 0., 0., 0., 0.]);
    // Mean over the two non-empty sequences of (9 / 3, 6 / 1).
    let (l, w) = aggregate(&losses, &mask, 3, LossAgg::SeqMeanTokenMean, 4);
    assert!((l - 4.5).abs() < 1e-12);
    let third = 1.0 / 6.0;
    assert_eq!(
        w,
        [0., third, third, third, 0., 0.5, 0., 0., 0., 0., 0., 0.]
    );
    // Mean over all three sequences of (sum / max_new_tokens): (9 + 6) / 8 / 3.
    let (l, w) = aggregate(&losses, &mask, 3, LossAgg::SeqMeanTokenSumNorm, 8);
    assert!((l - 15.0 / 24.0).abs() < 1e-12);
    assert!(w.iter().zip(&mask).all(|(&w, &m)| w == m / 24.0));
    // An all-zero mask: loss 0, weights 0.
    let (l, w) = aggregate(&losses, &[0.0; 12], 3, LossAgg::TokenMean, 4);
    assert!(l == 0.0 && w.iter().all(|&w| w == 0.0));
}

/// The gradient of the aggregated loss w.r.t. every token's logp is weight * dloss.
#[test]
fn aggregated_loss_gradient_matches_finite_differences() {
    let (seqs, len) = (3, 5);
    let logp: Vec<f64> = rand_vec(seqs * len, 30).iter().map(|v| v - 1.0).collect();
    let old: Vec<f64> = logp
        .iter()
        .zip(rand_vec(seqs * len, 31))
        .map(|(l, e)| l + 0.5 * e)
        .collect();
    let refl: Vec<f64> = logp
        .iter()
        .zip(rand_vec(seqs * len, 32))
        .map(|(l, e)| l + 0.3 * e)
        .collect();
    let adv = [1.0, -0.7, 0.4];
    let mask: Vec<f64> = (0..seqs * len)
        .map(|i| if i % len < 1 + i / len { 1.0 } else { 0.0 })
        .collect();
    let cfg = LossConfig {
        beta: 0.05,
        kl: KlType::LowVarKl,
        ..LossConfig::default()
    };
    for mode in [
        LossAgg::TokenMean,
        LossAgg::SeqMeanTokenMean,
        LossAgg::SeqMeanTokenSumNorm,
    ] {
        let total = |lp: &[f64]| {
            let losses: Vec<f64> = (0..seqs * len)
                .map(|i| ppo_token_loss(lp[i], old[i], adv[i / len], Some(refl[i]), &cfg).0)
                .collect();
            aggregate(&losses, &mask, seqs, mode, 8).0
        };
        let (_, w) = aggregate(&vec![0.0; seqs * len], &mask, seqs, mode, 8);
        let grad: Vec<f64> = (0..seqs * len)
            .map(|i| w[i] * ppo_token_loss(logp[i], old[i], adv[i / len], Some(refl[i]), &cfg).1)
            .collect();
        assert_close(&format!("{mode:?}"), &grad, &num_grad(&logp, total));
    }
}
