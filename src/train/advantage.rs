//! Advantages of DESIGN section 5, per completion within its group (verl
//! `compute_grpo_outcome_advantage`): GRPO `(r - mean) / (std + 1e-6)` with Bessel's
//! correction, a group of one gets 0; Dr. GRPO `r - mean`. Computed in f64.

use super::Rollout;
use std::collections::HashMap;

/// The advantage estimator (`--algo`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Algo {
    Grpo,
    DrGrpo,
}

impl Algo {
    pub fn parse(s: &str) -> crate::Result<Self> {
        match s {
            "grpo" => Ok(Algo::Grpo),
            "dr-grpo" | "dr_grpo" => Ok(Algo::DrGrpo),
            other => Err(crate::Error::invalid(format!(
                "--algo '{other}': expected grpo or dr-grpo"
            ))),
        }
    }
}

/// One advantage per rollout.
pub fn advantages(rollouts: &[Rollout], algo: Algo) -> Vec<f64> {
    let mut groups: HashMap<&str, Vec<usize>> = HashMap::new();
    for (i, r) in rollouts.iter().enumerate() {
        groups.entry(r.group.as_str()).or_default().push(i);
    }
    let mut adv = vec![0.0; rollouts.len()];
    for members in groups.values() {
        let n = members.len();
        if n < 2 {
            continue;
        }
        let rewards: Vec<f64> = members.iter().map(|&i| rollouts[i].reward).collect();
        let mean = rewards.iter().sum::<f64>() / n as f64;
        let var = rewards.iter().map(|r| (r - mean).powi(2)).sum::<f64>() / (n - 1) as f64;
        for (&i, r) in members.iter().zip(&rewards) {
            adv[i] = match algo {
                Algo::Grpo => (r - mean) / (var.sqrt() + 1e-6),
                Algo::DrGrpo => r - mean,
            };
        }
    }
    adv
}

#[cfg(test)]
mod tests {
    use super::*;

    fn r(group: &str, reward: f64) -> Rollout {
        Rollout {
            group: group.into(),
            prompt_ids: vec![1],
            completion_ids: vec![2],
            reward,
            old_logprobs: None,
            ref_logprobs: None,
        }
    }

    #[test]
    fn by_hand() {
        let rs = [
            r("a", 1.0),
            r("a", 0.0),
            r("a", 0.0),
            r("b", 1.0),
            r("c", 0.5),
            r("c", 0.5),
        ];
        let g = advantages(&rs, Algo::Grpo);
        // Group a: mean 1/3, sample std sqrt(1/3).
        let std = (1.0f64 / 3.0).sqrt();
        assert!((g[0] - (2.0 / 3.0) / (std + 1e-6)).abs() < 1e-12);
        assert!((g[1] + (1.0 / 3.0) / (std + 1e-6)).abs() < 1e-12);
        assert_eq!(g[3], 0.0); // a group of one
        assert_eq!((g[4], g[5]), (0.0, 0.0)); // equal rewards
        let d = advantages(&rs, Algo::DrGrpo);
        assert!((d[0] - 2.0 / 3.0).abs() < 1e-12 && (d[2] + 1.0 / 3.0).abs() < 1e-12);
    }
}
