//! Advantages of DESIGN section 5, per completion within its group (verl
//! `compute_grpo_outcome_advantage`): GRPO `(r - mean) / (std + 1e-6)` with Bessel's
//! correction, a group of one gets 0; Dr. GRPO `r - mean`. Computed in f64.
//!
//! GiGPO (arXiv 2505.10978; verl-agent `compute_gigpo_outcome_advantage`) works on
//! multi-turn episodes: `A = A_episode + w * A_step`. A_episode normalises the
//! episode return (sum of its step rewards) within the prompt group; A_step
//! normalises the discounted return from that step (gamma) within its step group,
//! the steps of one prompt group whose anchor (observation) is identical. Departures
//! from DESIGN.md and verl-agent, on purpose: `--gigpo-mode` applies to both levels
//! as in verl-agent (`mean_norm`: subtract the mean; `mean_std_norm`: also divide by
//! std + 1e-6; DESIGN.md had the episode level always divided by std), and a group of
//! one gets 0 at either level (verl-agent gives a lone step its raw return, which
//! has no baseline and scales with the reward).
use super::Rollout;
use std::collections::HashMap;

/// The advantage estimator (`--algo`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Algo {
    Grpo,
    DrGrpo,
    /// Multi-turn: advantages computed per step by [`gigpo_advantages`] and handed
    /// to the trainer in `Rollout::advantage`.
    Gigpo,
}

impl Algo {
    pub fn parse(s: &str) -> crate::Result<Self> {
        match s {
            "grpo" => Ok(Algo::Grpo),
            "dr-grpo" | "dr_grpo" => Ok(Algo::DrGrpo),
            "gigpo" => Ok(Algo::Gigpo),
            other => Err(crate::Error::invalid(format!(
                "--algo '{other}': expected grpo, dr-grpo or gigpo"
            ))),
        }
    }
}

/// One advantage per rollout: the rollout's own `advantage` where it carries one,
/// else from its group's rewards (GiGPO without given advantages: the GRPO formula,
/// which is GiGPO's episode level of one-step episodes).
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
                Algo::Grpo | Algo::Gigpo => (r - mean) / (var.sqrt() + 1e-6),
                Algo::DrGrpo => r - mean,
            };
        }
    }
    for (a, r) in adv.iter_mut().zip(rollouts) {
        if let Some(given) = r.advantage {
            *a = given;
        }
    }
    adv
}

/// How GiGPO normalises within a group (`--gigpo-mode`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GigpoMode {
    /// `x - mean` (verl-agent's default).
    MeanNorm,
    /// `(x - mean) / (std + 1e-6)`, std with Bessel's correction.
    MeanStdNorm,
}

impl GigpoMode {
    pub fn parse(s: &str) -> crate::Result<Self> {
        match s {
            "mean_norm" | "mean-norm" => Ok(GigpoMode::MeanNorm),
            "mean_std_norm" | "mean-std-norm" => Ok(GigpoMode::MeanStdNorm),
            other => Err(crate::Error::invalid(format!(
                "--gigpo-mode '{other}': expected mean_norm or mean_std_norm"
            ))),
        }
    }
}

/// GiGPO's settings: `A = A_episode + step_weight * A_step`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct GigpoConfig {
    pub step_weight: f64,
    pub gamma: f64,
    pub mode: GigpoMode,
}

impl Default for GigpoConfig {
    fn default() -> Self {
        GigpoConfig {
            step_weight: 1.0,
            gamma: 0.95,
            mode: GigpoMode::MeanNorm,
        }
    }
}

/// One step of an episode, as GiGPO sees it.
#[derive(Debug, Clone, PartialEq)]
pub struct EpisodeStep {
    /// The state the action was taken in; equal anchors in a prompt group form a
    /// step group.
    pub anchor: String,
    pub reward: f64,
}

/// One episode: its prompt group and its steps in order.
#[derive(Debug, Clone, PartialEq)]
pub struct EpisodeSteps {
    pub group: String,
    pub steps: Vec<EpisodeStep>,
}

/// `x` normalised within each group of `keys` (a group of one gets 0).
fn normalise<K: std::hash::Hash + Eq>(x: &[f64], keys: &[K], mode: GigpoMode) -> Vec<f64> {
    let mut groups: HashMap<&K, Vec<usize>> = HashMap::new();
    for (i, k) in keys.iter().enumerate() {
        groups.entry(k).or_default().push(i);
    }
    let mut out = vec![0.0; x.len()];
    for members in groups.values() {
        let n = members.len();
        if n < 2 {
            continue;
        }
        let mean = members.iter().map(|&i| x[i]).sum::<f64>() / n as f64;
        let std =
            (members.iter().map(|&i| (x[i] - mean).powi(2)).sum::<f64>() / (n - 1) as f64).sqrt();
        for &i in members {
            out[i] = match mode {
                GigpoMode::MeanNorm => x[i] - mean,
                GigpoMode::MeanStdNorm => (x[i] - mean) / (std + 1e-6),
            };
        }
    }
    out
}

/// GiGPO advantages: one per step of each episode, in the episodes' order.
pub fn gigpo_advantages(episodes: &[EpisodeSteps], cfg: &GigpoConfig) -> Vec<Vec<f64>> {
    let returns: Vec<f64> = episodes
        .iter()
        .map(|e| e.steps.iter().map(|s| s.reward).sum())
        .collect();
    let groups: Vec<&str> = episodes.iter().map(|e| e.group.as_str()).collect();
    let a_episode = normalise(&returns, &groups, cfg.mode);
    // Discounted return from each step, and its step group (prompt group, anchor).
    let mut step_returns = Vec::new();
    let mut step_keys = Vec::new();
    for e in episodes {
        let mut g = vec![0.0; e.steps.len()];
        let mut acc = 0.0;
        for (t, s) in e.steps.iter().enumerate().rev() {
            acc = s.reward + cfg.gamma * acc;
            g[t] = acc;
        }
        step_returns.extend(g);
        step_keys.extend(
            e.steps
                .iter()
                .map(|s| (e.group.as_str(), s.anchor.as_str())),
        );
    }
    let a_step = normalise(&step_returns, &step_keys, cfg.mode);
    let mut flat = a_step.into_iter();
    episodes
        .iter()
        .zip(a_episode)
        .map(|(e, ae)| {
            e.steps
                .iter()
                .map(|_| ae + cfg.step_weight * flat.next().unwrap_or(0.0))
                .collect()
        })
        .collect()
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
            advantage: None,
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
        let mut given = rs.to_vec();
        given[1].advantage = Some(-7.0);
        assert_eq!(advantages(&given, Algo::Gigpo)[1], -7.0);
        assert_eq!(advantages(&given, Algo::Gigpo)[0], g[0]);
    }

    fn ep(group: &str, steps: &[(&str, f64)]) -> EpisodeSteps {
        EpisodeSteps {
            group: group.into(),
            steps: steps
                .iter()
                .map(|&(a, r)| EpisodeStep {
                    anchor: a.into(),
                    reward: r,
                })
                .collect(),
        }
    }

    /// Three episodes of one prompt group and a lone episode of another, worked out
    /// by hand with gamma 0.5, w 1 and both modes.
    #[test]
    fn gigpo_by_hand() {
        let eps = [
            ep("g", &[("s0", 0.0), ("s1", 0.0), ("s2", 1.0)]), // return 1
            ep("g", &[("s0", 0.0), ("s1", 1.0)]),              // return 1
            ep("g", &[("s0", 0.0), ("s3", 0.0)]),              // return 0
            ep("h", &[("s0", 1.0)]),
        ];
        let cfg = GigpoConfig {
            step_weight: 1.0,
            gamma: 0.5,
            mode: GigpoMode::MeanNorm,
        };
        let a = gigpo_advantages(&eps, &cfg);
        // Episode level, group g: returns 1, 1, 0, mean 2/3.
        // Discounted step returns: ep0 [0.25, 0.5, 1], ep1 [0.5, 1], ep2 [0, 0].
        // Step group (g, s0): 0.25, 0.5, 0 -> mean 0.25 -> 0, 0.25, -0.25.
        // Step group (g, s1): 0.5, 1 -> mean 0.75 -> -0.25, 0.25. (g, s2), (g, s3),
        // and (h, s0) are groups of one -> 0; group h is an episode group of one -> 0.
        let want = [
            vec![1.0 / 3.0, 1.0 / 3.0 - 0.25, 1.0 / 3.0],
            vec![1.0 / 3.0 + 0.25, 1.0 / 3.0 + 0.25],
            vec![-2.0 / 3.0 - 0.25, -2.0 / 3.0],
            vec![0.0],
        ];
        for (got, want) in a.iter().zip(&want) {
            assert_eq!(got.len(), want.len());
            for (g, w) in got.iter().zip(want) {
                assert!((g - w).abs() < 1e-12, "{a:?}");
            }
        }
        // mean_std_norm, w = 2: episode std of (1, 1, 0) is sqrt(1/3); step group
        // (g, s0) std of (0.25, 0.5, 0) is 0.25, (g, s1) std of (0.5, 1) is sqrt(1/8).
        let cfg = GigpoConfig {
            step_weight: 2.0,
            mode: GigpoMode::MeanStdNorm,
            ..cfg
        };
        let a = gigpo_advantages(&eps, &cfg);
        let e = 1e-6;
        let (se, s0, s1) = ((1.0f64 / 3.0).sqrt() + e, 0.25 + e, (0.125f64).sqrt() + e);
        let want = [
            vec![
                (1.0 / 3.0) / se,
                (1.0 / 3.0) / se - 2.0 * 0.25 / s1,
                (1.0 / 3.0) / se,
            ],
            vec![
                (1.0 / 3.0) / se + 2.0 * 0.25 / s0,
                (1.0 / 3.0) / se + 2.0 * 0.25 / s1,
            ],
            vec![(-2.0 / 3.0) / se - 2.0 * 0.25 / s0, (-2.0 / 3.0) / se],
            vec![0.0],
        ];
        for (got, want) in a.iter().zip(&want) {
            for (g, w) in got.iter().zip(want) {
                assert!((g - w).abs() < 1e-9, "{a:?}");
            }
        }
    }
}
