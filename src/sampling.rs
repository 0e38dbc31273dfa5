//! Next-token selection: greedy, or a seeded sample with temperature, top-k and
//! top-p. This is the spec of `kernels/sampling.cu`; both follow the same steps so a
//! seed gives the same tokens on every backend:
//!
//! - greedy (temperature 0): the first index of the maximum, as `torch.argmax`;
//! - `x_i = logit_i / temperature`;
//! - top-k keeps `x_i >= t_k`, `t_k` the k-th largest value (ties kept);
//! - top-p keeps, within that set, `x_i >= t_p` for the largest `t_p` whose mass
//!   `sum_{x_j >= t_p} e^(x_j - max)` reaches `p` times the set's total mass (the
//!   smallest nucleus of highest-probability tokens, as transformers' TopPLogitsWarper);
//! - the sample is `argmax_i x_i + g_i` over the kept tokens (the Gumbel-max trick,
//!   an exact draw from their softmax), `g_i = -ln(-ln u_i)`, `u_i` a counter-based
//!   hash of `(seed, stream, i)`; `stream` is the caller's (sequence, step) counter.
//!
//! Thresholds are found by binary search over the order-preserving 32-bit keys of the
//! floats, so they are exact; masses are summed in f64.

use crate::{Error, Result};

#[derive(Debug, Clone, Copy, PartialEq)]
pub struct SamplingParams {
    /// 0 means greedy.
    pub temperature: f32,
    /// 1.0 keeps everything.
    pub top_p: f32,
    /// 0 keeps everything.
    pub top_k: usize,
}

impl Default for SamplingParams {
    fn default() -> Self {
        SamplingParams {
            temperature: 0.0,
            top_p: 1.0,
            top_k: 0,
        }
    }
}

impl SamplingParams {
    pub fn validate(&self) -> Result<()> {
        if !(self.temperature >= 0.0 && self.temperature.is_finite()) {
            return Err(Error::invalid(format!(
                "--temperature must be >= 0, got {}",
                self.temperature
            )));
        }
        if !(self.top_p > 0.0 && self.top_p <= 1.0) {
            return Err(Error::invalid(format!(
                "--top-p must be in (0, 1], got {}",
                self.top_p
            )));
        }
        Ok(())
    }
}

/// The examples of step `step` (1-based) out of `n`: a seeded permutation per pass
/// over the data (RL problems, SFT examples), so step s depends only on (seed, s).
pub fn step_problems(n: usize, per_step: usize, seed: u64, step: usize) -> Vec<usize> {
    let mut perm: Option<(usize, Vec<usize>)> = None;
    (0..per_step)
        .map(|k| {
            let flat = (step - 1) * per_step + k;
            let (pass, i) = (flat / n, flat % n);
            if perm.as_ref().is_none_or(|(p, _)| *p != pass) {
                let order = permutation(n, mix64(seed ^ (pass as u64).wrapping_mul(0x9e37)));
                perm = Some((pass, order));
            }
            perm.as_ref().expect("set above").1[i]
        })
        .collect()
}

fn permutation(n: usize, seed: u64) -> Vec<usize> {
    let mut keys: Vec<(u64, usize)> = (0..n).map(|i| (mix64(seed ^ mix64(i as u64)), i)).collect();
    keys.sort();
    keys.into_iter().map(|(_, i)| i).collect()
}

/// splitmix64's finaliser.
pub fn mix64(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// Uniform in (0, 1) from 24 hashed bits of (seed, stream, i).
pub fn hash_uniform(seed: u64, stream: u64, i: u32) -> f32 {
    let z = mix64(seed ^ mix64(stream ^ mix64(i as u64)));
    ((z >> 40) as f32 + 0.5) * (1.0 / 16_777_216.0)
}

/// The stream of draw `step` of sequence `seq`.
pub fn stream(seq: usize, step: usize) -> u64 {
    ((seq as u64) << 32) | step as u64
}

/// Order-preserving key of a float: larger float, larger key.
pub fn order_key(x: f32) -> u32 {
    let b = x.to_bits();
    if b & 0x8000_0000 != 0 {
        !b
    } else {
        b | 0x8000_0000
    }
}

/// Index of the first maximum.
pub fn argmax(logits: &[f32]) -> u32 {
    let mut best = 0;
    for (i, &v) in logits.iter().enumerate() {
        if v > logits[best] {
            best = i;
        }
    }
    best as u32
}

/// The largest key `t` with `f(t) >= target`, given `f(lo) >= target` and `f`
/// non-increasing.
fn search_key(mut lo: u32, target: f64, f: impl Fn(u32) -> f64) -> u32 {
    let mut hi = u32::MAX;
    while lo < hi {
        let mid = lo + (hi - lo) / 2 + 1;
        if f(mid) >= target {
            lo = mid;
        } else {
            hi = mid - 1;
        }
    }
    lo
}

/// Select the next token from one row of logits.
pub fn sample(logits: &[f32], p: &SamplingParams, seed: u64, stream: u64) -> u32 {
    if p.temperature == 0.0 {
        return argmax(logits);
    }
    let inv_t = 1.0 / p.temperature;
    let x: Vec<f32> = logits.iter().map(|&l| l * inv_t).collect();
    let keys: Vec<u32> = x.iter().map(|&v| order_key(v)).collect();
    let tk = if p.top_k > 0 && p.top_k < x.len() {
        search_key(0, p.top_k as f64, |t| {
            keys.iter().filter(|&&k| k >= t).count() as f64
        })
    } else {
        0
    };
    let max = x.iter().fold(f32::NEG_INFINITY, |m, &v| m.max(v));
    let mass = |t: u32| -> f64 {
        x.iter()
            .zip(&keys)
            .filter(|(_, &k)| k >= t)
            .map(|(&v, _)| ((v - max) as f64).exp())
            .sum()
    };
    let tp = if p.top_p < 1.0 {
        search_key(tk, p.top_p as f64 * mass(tk), mass)
    } else {
        tk
    };
    let mut best = (f32::NEG_INFINITY, logits.len());
    for (i, (&v, &k)) in x.iter().zip(&keys).enumerate() {
        if k < tp {
            continue;
        }
        let g = -(-hash_uniform(seed, stream, i as u32).ln()).ln();
        let s = v + g;
        if s > best.0 || (s == best.0 && i < best.1) {
            best = (s, i);
        }
    }
    if best.1 < logits.len() {
        best.1 as u32
    } else {
        0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn draws(logits: &[f32], p: &SamplingParams, seed: u64, n: usize) -> Vec<u32> {
        (0..n)
            .map(|step| sample(logits, p, seed, stream(0, step)))
            .collect()
    }

    #[test]
    fn greedy_takes_first_max() {
        assert_eq!(argmax(&[0.0, 3.0, 3.0, -1.0]), 1);
        assert_eq!(
            sample(&[1.0, 2.0, 0.5], &SamplingParams::default(), 0, 0),
            1
        );
    }

    #[test]
    fn order_key_is_monotonic() {
        let xs = [
            f32::NEG_INFINITY,
            -3.5,
            -1e-30,
            -0.0,
            0.0,
            1e-30,
            2.0,
            f32::INFINITY,
        ];
        for w in xs.windows(2) {
            assert!(order_key(w[0]) <= order_key(w[1]), "{w:?}");
        }
    }

    #[test]
    fn seeded_sampling_is_reproducible_and_follows_the_distribution() {
        let logits = [0.0f32, (2.0f32).ln(), (7.0f32).ln()]; // probs 0.1, 0.2, 0.7
        let p = SamplingParams {
            temperature: 1.0,
            top_p: 1.0,
            top_k: 0,
        };
        let a = draws(&logits, &p, 7, 20000);
        assert_eq!(a, draws(&logits, &p, 7, 20000));
        assert_ne!(a, draws(&logits, &p, 8, 20000));
        for (tok, want) in [(0, 0.1), (1, 0.2), (2, 0.7)] {
            let freq = a.iter().filter(|&&t| t == tok).count() as f64 / a.len() as f64;
            assert!((freq - want).abs() < 0.015, "token {tok}: {freq} vs {want}");
        }
    }

    #[test]
    fn temperature_sharpens() {
        let logits = [0.0f32, 1.0];
        let hot = SamplingParams {
            temperature: 0.25,
            top_p: 1.0,
            top_k: 0,
        };
        let a = draws(&logits, &hot, 3, 5000);
        let freq = a.iter().filter(|&&t| t == 1).count() as f64 / a.len() as f64;
        let want = 1.0 / (1.0 + (-4.0f64).exp());
        assert!((freq - want).abs() < 0.015, "{freq} vs {want}");
    }

    #[test]
    fn top_k_and_top_p_restrict_the_support() {
        let logits = [0.0f32, (2.0f32).ln(), (7.0f32).ln(), (7.0f32).ln()];
        // top-k 1 with a tie at the top keeps both tied tokens
        let k1 = SamplingParams {
            temperature: 1.0,
            top_p: 1.0,
            top_k: 1,
        };
        let d = draws(&logits, &k1, 1, 400);
        assert!(d.iter().all(|&t| t >= 2) && d.contains(&2) && d.contains(&3));
        // probs 1/17, 2/17, 7/17, 7/17: p = 0.8 needs the two 7s (0.82), never the rest
        let p = SamplingParams {
            temperature: 1.0,
            top_p: 0.8,
            top_k: 0,
        };
        assert!(draws(&logits, &p, 2, 2000).iter().all(|&t| t >= 2));
        // p = 0.9 also needs the 2/17 token, never the 1/17 one
        let p = SamplingParams {
            temperature: 1.0,
            top_p: 0.9,
            top_k: 0,
        };
        let d = draws(&logits, &p, 2, 4000);
        assert!(d.iter().all(|&t| t != 0) && d.contains(&1));
    }

    #[test]
    fn bad_params_are_refused() {
        assert!(SamplingParams {
            temperature: -1.0,
            ..Default::default()
        }
        .validate()
        .is_err());
        assert!(SamplingParams {
            top_p: 0.0,
            ..Default::default()
        }
        .validate()
        .is_err());
        assert!(SamplingParams {
            top_p: 1.5,
            ..Default::default()
        }
        .validate()
        .is_err());
    }
}
