//! Next-token sampling on the host: greedy, temperature, top-k, top-p, seeded.
//!
//! Order as transformers' logits processors: temperature, then top-k, then top-p.
//! Greedy (temperature 0) takes the first maximum, as `torch.argmax`.

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

/// xoshiro256** seeded through splitmix64: small, fast, reproducible everywhere.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rng {
    s: [u64; 4],
}

impl Rng {
    pub fn new(seed: u64) -> Self {
        let mut x = seed;
        let mut next = || {
            x = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
            let mut z = x;
            z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
            z ^ (z >> 31)
        };
        Rng {
            s: [next(), next(), next(), next()],
        }
    }

    pub fn next_u64(&mut self) -> u64 {
        let r = self.s[1].wrapping_mul(5).rotate_left(7).wrapping_mul(9);
        let t = self.s[1] << 17;
        self.s[2] ^= self.s[0];
        self.s[3] ^= self.s[1];
        self.s[1] ^= self.s[2];
        self.s[0] ^= self.s[3];
        self.s[2] ^= t;
        self.s[3] = self.s[3].rotate_left(45);
        r
    }

    /// Uniform in [0, 1).
    pub fn uniform(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 * (1.0 / (1u64 << 53) as f64)
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

/// Draw the next token from one row of logits.
pub fn sample(logits: &[f32], p: &SamplingParams, rng: &mut Rng) -> u32 {
    if p.temperature == 0.0 {
        return argmax(logits);
    }
    // Candidates sorted by logit, descending (stable: ties keep the lower id first).
    let mut order: Vec<u32> = (0..logits.len() as u32).collect();
    order.sort_by(|&a, &b| logits[b as usize].total_cmp(&logits[a as usize]));
    if p.top_k > 0 && p.top_k < order.len() {
        order.truncate(p.top_k);
    }
    let t = p.temperature as f64;
    let max = logits[order[0] as usize] as f64 / t;
    let weights: Vec<f64> = order
        .iter()
        .map(|&i| (logits[i as usize] as f64 / t - max).exp())
        .collect();
    let total: f64 = weights.iter().sum();
    // top-p: the smallest prefix whose probability mass reaches top_p.
    let mut keep = weights.len();
    if p.top_p < 1.0 {
        let mut mass = 0.0;
        for (n, w) in weights.iter().enumerate() {
            mass += w / total;
            if mass >= p.top_p as f64 {
                keep = n + 1;
                break;
            }
        }
    }
    let kept: f64 = weights[..keep].iter().sum();
    let mut u = rng.uniform() * kept;
    for (n, w) in weights[..keep].iter().enumerate() {
        if u < *w {
            return order[n];
        }
        u -= w;
    }
    order[keep - 1]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn greedy_takes_first_max() {
        assert_eq!(argmax(&[0.0, 3.0, 3.0, -1.0]), 1);
        let mut rng = Rng::new(0);
        assert_eq!(
            sample(&[1.0, 2.0, 0.5], &SamplingParams::default(), &mut rng),
            1
        );
    }

    #[test]
    fn seeded_sampling_is_reproducible_and_follows_the_distribution() {
        let logits = [0.0f32, (2.0f32).ln(), (7.0f32).ln()]; // probs 0.1, 0.2, 0.7
        let p = SamplingParams {
            temperature: 1.0,
            top_p: 1.0,
            top_k: 0,
        };
        let draw = |seed| {
            let mut rng = Rng::new(seed);
            (0..20000)
                .map(|_| sample(&logits, &p, &mut rng))
                .collect::<Vec<_>>()
        };
        let a = draw(7);
        assert_eq!(a, draw(7));
        assert_ne!(a, draw(8));
        for (tok, want) in [(0, 0.1), (1, 0.2), (2, 0.7)] {
            let freq = a.iter().filter(|&&t| t == tok).count() as f64 / a.len() as f64;
            assert!((freq - want).abs() < 0.015, "token {tok}: {freq} vs {want}");
        }
    }

    #[test]
    fn top_k_and_top_p_restrict_the_support() {
        let logits = [0.0f32, (2.0f32).ln(), (7.0f32).ln()];
        let mut rng = Rng::new(1);
        let k1 = SamplingParams {
            temperature: 1.0,
            top_p: 1.0,
            top_k: 1,
        };
        assert!((0..200).all(|_| sample(&logits, &k1, &mut rng) == 2));
        // mass 0.7 alone reaches 0.7; 0.75 needs the 0.2 token too, never the 0.1 one.
        let p = SamplingParams {
            temperature: 1.0,
            top_p: 0.75,
            top_k: 0,
        };
        let draws: Vec<u32> = (0..2000).map(|_| sample(&logits, &p, &mut rng)).collect();
        assert!(draws.iter().all(|&t| t != 0) && draws.contains(&1));
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
