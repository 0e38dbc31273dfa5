//! The settings of an RL run: built-in defaults, then `--config run.toml`, then the
//! command-line flags (each layer overrides the one before). The resolved settings
//! are written to `OUT/config.toml`, which `--resume` reads back.
//!
//! With no `--model`, the run is the built-in demo: RL post-training of the built-in
//! pretrained base (`crate::model::base`: 8 layers, character vocabulary, pretrained
//! by tools/make_base_model.sh to a held-out greedy accuracy of 0.28) on its task,
//! three-term additions and subtractions of numbers below 100 with a worked solution
//! (`23+58-17=` -> `81-17=64`, 12 new tokens at most), training its middle layer
//! (4) with GRPO: learning rate 3e-4, 150 steps of 8 prompts x 8 samples, held-out
//! accuracy on 200 problems every 25 steps. These are also the settings of every run
//! of the demo's layer sweep (docs/study.md): at 1e-3 the full-parameter baseline
//! collapses (held-out accuracy 0.28 -> 0.005 in 200 steps, measured), at 3e-4 it
//! improves. The same defaults apply to `--model
//! random:SHAPE` (a built-in shape with random weights and that vocabulary). The
//! multi-turn demo (`--task guess`, `--env CMD`) keeps the tiny random model with
//! one-character actions (`RunSettings::env_demo`).

use crate::{Error, Result};
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

/// Every setting, optional: `None` means "not given here".
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RunSettings {
    pub model: Option<String>,
    pub device: Option<String>,
    pub task: Option<String>,
    pub data: Option<PathBuf>,
    pub eval_data: Option<PathBuf>,
    pub train_layer: Option<String>,
    pub steps: Option<usize>,
    pub prompts_per_step: Option<usize>,
    pub group_size: Option<usize>,
    pub max_new_tokens: Option<usize>,
    pub temperature: Option<f32>,
    pub top_p: Option<f32>,
    pub top_k: Option<usize>,
    pub seed: Option<u64>,
    pub algo: Option<String>,
    pub loss_agg: Option<String>,
    pub optimizer: Option<String>,
    pub lr: Option<f32>,
    pub weight_decay: Option<f32>,
    pub grad_clip: Option<f32>,
    pub ppo_epochs: Option<usize>,
    pub mini_batch: Option<usize>,
    /// Tokens per forward/backward pass (gradient accumulation over micro-batches);
    /// unset: chosen from the memory plan on a GPU, 16,384 elsewhere.
    pub micro_batch_tokens: Option<usize>,
    /// Positions of the rollouts' paged KV cache; unset: what the memory plan leaves
    /// free on a GPU, every sequence at full length elsewhere.
    pub kv_cache_tokens: Option<usize>,
    pub clip_low: Option<f64>,
    pub clip_high: Option<f64>,
    pub clip_c: Option<f64>,
    pub kl_coef: Option<f64>,
    pub kl_type: Option<String>,
    pub entropy_coef: Option<f64>,
    pub eval_every: Option<usize>,
    pub eval_size: Option<usize>,
    pub save_every: Option<usize>,
    pub keep_checkpoints: Option<usize>,
    pub max_bad_steps: Option<usize>,
    /// Qwen3 chat prompts with thinking enabled (default false: the empty think block).
    pub thinking: Option<bool>,
    /// Digits per operand of the arith task.
    pub arith_digits: Option<u32>,
    /// Operators of the arith task (a subset of "+-").
    pub arith_ops: Option<String>,
    /// An external multi-turn environment: the command line of a child process
    /// speaking the JSON-lines protocol of `crate::env::external`.
    pub env: Option<String>,
    /// Turns per episode of a multi-turn environment.
    pub max_turns: Option<usize>,
    /// Time limit in seconds of each reply of an external environment.
    pub env_timeout: Option<f64>,
    /// GiGPO: `A = A_episode + w * A_step`, this is w.
    pub gigpo_step_weight: Option<f64>,
    /// GiGPO: discount of the step returns.
    pub gamma: Option<f64>,
    /// GiGPO: mean_norm | mean_std_norm.
    pub gigpo_mode: Option<String>,
    /// `--train-layer top-K` picks the K highest-contribution layers of this sweep.json.
    pub from_sweep: Option<PathBuf>,
    /// Scale each trained layer's learning rate by its contribution (needs from_sweep).
    pub lr_by_contribution: Option<bool>,
    /// A custom reward function, `FILE.py[:NAME]` (replaces the task's reward).
    pub reward_fn: Option<String>,
    /// verl (one completion per call) | trl (a batch per call).
    pub reward_fn_style: Option<String>,
    /// Python worker processes running the reward function.
    pub reward_workers: Option<usize>,
    /// Seconds one call of the reward function may take.
    pub reward_timeout: Option<f64>,
    /// Operands per problem of the arith task (2: `a+b=`; more: a worked chain).
    pub arith_terms: Option<usize>,
}

/// `base.f = top.f` for every listed field `top` sets (the settings overlays of RL
/// and SFT runs).
macro_rules! overlay {
    ($base:ident, $top:ident, $($f:ident),+) => {
        $( if $top.$f.is_some() { $base.$f = $top.$f.clone(); } )+
    };
}
pub(crate) use overlay;

/// A settings file (TOML); errors are one line naming the file.
pub fn read_toml<T: serde::de::DeserializeOwned>(path: &Path) -> Result<T> {
    let text = std::fs::read_to_string(path).map_err(|e| Error::file(path, e))?;
    toml::from_str(&text).map_err(|e| {
        Error::file(
            path,
            e.to_string()
                .lines()
                .next()
                .unwrap_or("invalid TOML")
                .trim(),
        )
    })
}

impl RunSettings {
    /// `self` with every field `top` sets replaced.
    pub fn overlay(mut self, top: &RunSettings) -> Self {
        overlay!(
            self,
            top,
            model,
            device,
            task,
            data,
            eval_data,
            train_layer,
            steps,
            prompts_per_step,
            group_size,
            max_new_tokens,
            temperature,
            top_p,
            top_k,
            seed,
            algo,
            loss_agg,
            optimizer,
            lr,
            weight_decay,
            grad_clip,
            ppo_epochs,
            mini_batch,
            micro_batch_tokens,
            kv_cache_tokens,
            clip_low,
            clip_high,
            clip_c,
            kl_coef,
            kl_type,
            entropy_coef,
            eval_every,
            eval_size,
            save_every,
            keep_checkpoints,
            max_bad_steps,
            thinking,
            arith_digits,
            arith_ops,
            env,
            max_turns,
            env_timeout,
            gigpo_step_weight,
            gamma,
            gigpo_mode,
            from_sweep,
            lr_by_contribution,
            reward_fn,
            reward_fn_style,
            reward_workers,
            reward_timeout,
            arith_terms
        );
        self
    }

    /// The defaults: the demo's when no model is given, else those of DESIGN
    /// section 5 (verl's actor defaults).
    pub fn defaults(demo: bool) -> Self {
        // `demo`: no --model (the built-in base) or `random:SHAPE`.
        RunSettings {
            device: Some("auto".into()),
            task: Some(if demo { "arith" } else { "gsm8k" }.into()),
            steps: Some(if demo { 150 } else { 200 }),
            prompts_per_step: Some(8),
            group_size: Some(8),
            max_new_tokens: Some(if demo { 12 } else { 512 }),
            temperature: Some(1.0),
            top_p: Some(1.0),
            top_k: Some(0),
            seed: Some(0),
            algo: Some("grpo".into()),
            optimizer: Some("adamw".into()),
            lr: Some(if demo { 3e-4 } else { 1e-6 }),
            weight_decay: Some(if demo { 0.0 } else { 0.01 }),
            grad_clip: Some(1.0),
            ppo_epochs: Some(1),
            clip_low: Some(0.2),
            clip_high: Some(0.2),
            clip_c: Some(3.0),
            kl_coef: Some(0.0),
            kl_type: Some("k3".into()),
            entropy_coef: Some(0.0),
            eval_every: Some(if demo { 25 } else { 50 }),
            eval_size: Some(200),
            save_every: Some(50),
            keep_checkpoints: Some(3),
            max_bad_steps: Some(5),
            thinking: Some(false),
            arith_digits: Some(if demo { 2 } else { 1 }),
            arith_ops: Some("+-".into()),
            arith_terms: Some(if demo { 3 } else { 2 }),
            max_turns: Some(4),
            env_timeout: Some(crate::env::DEFAULT_TIMEOUT_SECS),
            gigpo_step_weight: Some(1.0),
            gamma: Some(0.95),
            gigpo_mode: Some("mean_norm".into()),
            lr_by_contribution: Some(false),
            ..RunSettings::default()
        }
    }

    /// What the multi-turn demo (`--task guess` or `--env` without `--model`) changes:
    /// the tiny random model answers in one character at learning rate 3e-3.
    pub fn env_demo() -> Self {
        RunSettings {
            max_new_tokens: Some(1),
            lr: Some(3e-3),
            steps: Some(200),
            prompts_per_step: Some(16),
            eval_size: Some(100),
            ..RunSettings::default()
        }
    }

    pub fn from_toml_file(path: &Path) -> Result<Self> {
        read_toml(path)
    }

    /// `given` (file and flags) over the defaults that fit it: the demo's without a
    /// model (or with `random:SHAPE`), and the multi-turn demo's for an environment.
    pub fn resolve(given: &RunSettings) -> RunSettings {
        let demo = is_demo_model(given.model.as_deref());
        let mut defaults = RunSettings::defaults(demo);
        if demo && crate::env::is_env_task(given.task.as_deref(), given.env.as_deref()) {
            defaults = defaults.overlay(&RunSettings::env_demo());
        }
        defaults.overlay(given)
    }

    pub fn to_toml(&self) -> String {
        toml::to_string(self).expect("settings serialise to TOML")
    }
}

/// Whether a run's `--model` is the built-in demo's kind (none: the built-in base;
/// `random:SHAPE`), whose defaults and character vocabulary differ.
pub fn is_demo_model(model: Option<&str>) -> bool {
    model.is_none_or(|m| m.starts_with("random:"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn overlay_and_toml_round_trip() {
        let base = RunSettings::defaults(true);
        let top = RunSettings {
            lr: Some(0.5),
            task: Some("gsm8k".into()),
            ..Default::default()
        };
        let s = base.overlay(&top);
        assert_eq!(s.lr, Some(0.5));
        assert_eq!(s.group_size, Some(8));
        let back: RunSettings = toml::from_str(&s.to_toml()).unwrap();
        assert_eq!(back, s);
        assert!(toml::from_str::<RunSettings>("lrr = 1.0").is_err());
    }
}
