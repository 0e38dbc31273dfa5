//! The per-token GRPO / PPO policy loss of DESIGN section 5 and its derivative
//! with respect to the current log-prob, plus the mini-batch aggregation modes as
//! per-token weights (the gradient of the aggregated loss w.r.t. token i's logp is
//! `weight[i] * dloss_dlogp[i]`).
//!
//! Conventions follow verl `verl/trainer/ppo/core_algos.py` (`compute_policy_loss`
//! "vanilla", `kl_penalty`, `agg_loss`):
//! - `ratio = exp(clamp(logp - old_logp, -20, 20))`; outside the clamp the ratio is
//!   constant, so its derivative is 0 there (as autograd through `clamp` gives).
//! - `l = max(-A r, -A clip(r, 1 - eps_low, 1 + eps_high))`; for `A < 0` the dual clip
//!   `l = min(l, -A c)`. Ties (`-A r == -A clip(r)`) take the unclipped branch and
//!   report not clipped (verl's clipfrac counts strict `>` too); torch would split the
//!   gradient of an exact tie between the branches, a measure-zero difference.
//! - `clipped` is true when the policy term's gradient was cut by either clip (the
//!   ratio clip or the dual clip), i.e. verl's `pg_clipfrac` or `pg_clipfrac_lower`.
//! - KL: `K1 = logp - ref`, `K2 = (logp - ref)^2 / 2`, `K3 = exp(ref - logp) -
//!   (ref - logp) - 1` exactly as DESIGN writes it (no clamps), and `LowVarKl` =
//!   verl's `low_var_kl`: `ref - logp` clamped to [-20, 20] before the exp, and the
//!   result clamped to [-10, 10] (derivative 0 where either clamp is active).
//!   Departure: verl also has "abs" and the straight-through "k3+" variants; not here.
//! - Entropy is not a per-token function of logp: it needs the whole distribution
//!   over the vocabulary, so the entropy bonus belongs to the fused LM-head op (which
//!   holds the logits chunk), not here.
//! - Aggregation: `token-mean` = `sum(l M) / sum(M)`; `seq-mean-token-mean` = mean
//!   over sequences with at least one masked-in token of `sum_t l M / sum_t M`
//!   (recent verl skips empty sequences the same way); `seq-mean-token-sum-norm` =
//!   mean over ALL sequences of `sum_t l M / max_new_tokens`. Departure: older verl
//!   computed `sum over sequences / loss_mask.shape[-1]` (no division by the number
//!   of sequences); we follow DESIGN and recent verl (which divides by the batch
//!   size) and take the constant divisor `max_new_tokens` explicitly rather than the
//!   padded width. An all-zero mask gives loss 0 and all-zero weights (verl's `1e-8`
//!   in the denominator gives the same).

use super::Real;

/// KL estimator between the current and the reference policy, per token.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KlType {
    K1,
    K2,
    K3,
    LowVarKl,
}

/// Settings of the per-token loss. `Default` is DESIGN's: eps 0.2 / 0.2, dual clip
/// c = 3, no KL (beta 0).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct LossConfig {
    pub eps_low: f64,
    pub eps_high: f64,
    /// Dual-clip constant; applies only where `A < 0`. `None` disables it.
    pub clip_c: Option<f64>,
    pub kl: KlType,
    /// Weight of the KL term; 0 (or no ref_logp) leaves it out.
    pub beta: f64,
    /// Weight of the entropy bonus (`l -= entropy_coef * H`), applied by the fused
    /// LM-head op (`token_loss_backward`), which holds the whole distribution.
    pub entropy_coef: f64,
    /// Supervised fine-tuning: the token loss is the cross-entropy `l = -logp`
    /// (`dl/dlogp = -1`), never clipped; the policy terms (ratio, clips, KL) are off.
    pub cross_entropy: bool,
}

impl Default for LossConfig {
    fn default() -> Self {
        LossConfig {
            eps_low: 0.2,
            eps_high: 0.2,
            clip_c: Some(3.0),
            kl: KlType::K3,
            beta: 0.0,
            entropy_coef: 0.0,
            cross_entropy: false,
        }
    }
}

impl LossConfig {
    /// The cross-entropy loss of supervised fine-tuning.
    pub fn cross_entropy() -> Self {
        LossConfig {
            cross_entropy: true,
            clip_c: None,
            ..LossConfig::default()
        }
    }
}

fn c<T: Real>(x: f64) -> T {
    T::from(x).expect("f64 constant fits the compute type")
}

/// KL estimate and its derivative with respect to logp.
pub fn kl_term<T: Real>(logp: T, ref_logp: T, kl: KlType) -> (T, T) {
    let diff = logp - ref_logp;
    match kl {
        KlType::K1 => (diff, T::one()),
        KlType::K2 => (diff * diff / c(2.0), diff),
        KlType::K3 => {
            let e = (-diff).exp();
            (e + diff - T::one(), T::one() - e)
        }
        KlType::LowVarKl => {
            let raw = ref_logp - logp;
            let kl = raw.max(c(-20.0)).min(c(20.0));
            let dkl = if raw.abs() < c(20.0) {
                -T::one()
            } else {
                T::zero()
            };
            let e = kl.exp();
            let v = e - kl - T::one();
            let ten: T = c(10.0);
            if v.abs() < ten {
                (v, (e - T::one()) * dkl)
            } else {
                (v.max(-ten).min(ten), T::zero())
            }
        }
    }
}

/// Per-token loss `(l, dl/dlogp, clipped)`; see the module header for the formula.
pub fn ppo_token_loss<T: Real>(
    logp: T,
    old_logp: T,
    adv: T,
    ref_logp: Option<T>,
    cfg: &LossConfig,
) -> (T, T, bool) {
    let raw = logp - old_logp;
    let limit: T = c(20.0);
    let ratio = raw.max(-limit).min(limit).exp();
    let dratio = if raw.abs() < limit { ratio } else { T::zero() };
    let lo = T::one() - c(cfg.eps_low);
    let hi = T::one() + c(cfg.eps_high);
    let l1 = -adv * ratio;
    let l2 = -adv * ratio.max(lo).min(hi);
    let (mut loss, mut grad, mut clipped) = if l2 > l1 {
        // Taken branch is the clipped ratio, which is constant here.
        (l2, T::zero(), true)
    } else {
        (l1, -adv * dratio, false)
    };
    if let Some(cc) = cfg.clip_c {
        let l3 = -adv * c(cc);
        if adv < T::zero() && loss > l3 {
            loss = l3;
            grad = T::zero();
            clipped = true;
        }
    }
    if let Some(r) = ref_logp {
        if cfg.beta != 0.0 {
            let (k, dk) = kl_term(logp, r, cfg.kl);
            let beta: T = c(cfg.beta);
            loss = loss + beta * k;
            grad = grad + beta * dk;
        }
    }
    (loss, grad, clipped)
}

/// How per-token losses are reduced over a mini-batch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LossAgg {
    TokenMean,
    SeqMeanTokenMean,
    SeqMeanTokenSumNorm,
}

/// Aggregate `losses [seqs, seq_len]` under `mask [seqs, seq_len]` (1 = completion
/// token, 0 = prompt or padding; any other value is used as a weight). Returns the
/// aggregated loss and the per-token weights `w` with `loss = sum(w * losses)`, so
/// `d loss / d losses[i] = w[i]`. `max_new_tokens` is the divisor of
/// `SeqMeanTokenSumNorm` (ignored by the other modes).
pub fn aggregate<T: Real>(
    losses: &[T],
    mask: &[T],
    seqs: usize,
    mode: LossAgg,
    max_new_tokens: usize,
) -> (T, Vec<T>) {
    assert_eq!(losses.len(), mask.len(), "aggregate: losses vs mask");
    assert!(
        seqs > 0 && losses.len() % seqs == 0,
        "aggregate: {} tokens do not split into {seqs} sequences",
        losses.len()
    );
    let len = losses.len() / seqs;
    let mut w = vec![T::zero(); losses.len()];
    match mode {
        LossAgg::TokenMean => {
            let total: T = mask.iter().copied().sum();
            if total > T::zero() {
                w.iter_mut().zip(mask).for_each(|(w, &m)| *w = m / total);
            }
        }
        LossAgg::SeqMeanTokenMean => {
            let counts: Vec<T> = mask.chunks(len).map(|m| m.iter().copied().sum()).collect();
            let valid = counts.iter().filter(|&&n| n > T::zero()).count();
            for ((wr, mr), &n) in w.chunks_mut(len).zip(mask.chunks(len)).zip(&counts) {
                if n > T::zero() {
                    let f = n * T::from_usize(valid);
                    wr.iter_mut().zip(mr).for_each(|(w, &m)| *w = m / f);
                }
            }
        }
        LossAgg::SeqMeanTokenSumNorm => {
            assert!(max_new_tokens > 0, "aggregate: max_new_tokens is 0");
            let f = T::from_usize(max_new_tokens) * T::from_usize(seqs);
            w.iter_mut().zip(mask).for_each(|(w, &m)| *w = m / f);
        }
    }
    let loss = w.iter().zip(losses).map(|(&w, &l)| w * l).sum();
    (loss, w)
}

/// The CPU reference of `Backend::token_loss_backward` for one row: log-softmax of
/// `logits [vocab]`, the target's log-prob, the token loss `l` and the entropy `H`;
/// writes `dlogits = weight * d(l - entropy_coef * H)/dlogits` and returns
/// `[logp, l, H, clipped]` (see `crate::backend::stat`).
///
/// With `p = softmax(z)`, `lse = log sum exp z`: `logp = z_y - lse`,
/// `dlogp/dz_j = [j = y] - p_j`; `H = lse - sum_j p_j z_j`,
/// `dH/dz_j = -p_j (z_j - lse + H)` (= `-p_j (log p_j + H)`).
#[allow(clippy::too_many_arguments)]
pub fn token_loss_row<T: Real>(
    dlogits: &mut [T],
    logits: &[T],
    target: usize,
    old_logp: T,
    ref_logp: Option<T>,
    adv: T,
    weight: T,
    cfg: &LossConfig,
) -> [T; 4] {
    assert_eq!(dlogits.len(), logits.len(), "token_loss_row: dlogits");
    assert!(target < logits.len(), "token_loss_row: target {target}");
    let lse = super::logsumexp(logits);
    let mean_z: T = logits.iter().map(|&z| (z - lse).exp() * z).sum();
    let entropy = lse - mean_z;
    let logp = logits[target] - lse;
    let (l, g, clipped) = if cfg.cross_entropy {
        (-logp, -T::one(), false)
    } else {
        ppo_token_loss(logp, old_logp, adv, ref_logp, cfg)
    };
    let ec: T = c(cfg.entropy_coef);
    for (j, (d, &z)) in dlogits.iter_mut().zip(logits).enumerate() {
        let p = (z - lse).exp();
        let dlogp = if j == target { T::one() - p } else { -p };
        let dh = -p * (z - lse + entropy);
        *d = weight * (g * dlogp - ec * dh);
    }
    let flag = if clipped { T::one() } else { T::zero() };
    [logp, l, entropy, flag]
}
