//! What an RL step samples: single-turn problems of a task (gsm8k, math, code,
//! arith: G completions per prompt, rewarded by the task's checker), or episodes of
//! a multi-turn environment (`--task guess`, `--env CMD`: G episodes per task id,
//! `episodes.rs`). Both give the trainer rollouts with the step's reward statistics,
//! and both evaluate on held-out problems or tasks with greedy decoding.

use super::codec::{problem_ids, TextCodec};
use super::episodes::{play, rollouts};
use super::eval::{evaluate, EvalResult};
use super::run::{load_problems, step_problems};
use super::sample::sample_groups;
use super::settings::RunSettings;
use crate::backend::Backend;
use crate::env::{self, Environment};
use crate::generate::GenerateParams;
use crate::model::Model;
use crate::sampling::SamplingParams;
use crate::tasks::{Problem, RewardFn, Rewarder, TaskKind};
use crate::train::{
    gigpo_advantages, Algo, EpisodeStep, EpisodeSteps, GigpoConfig, GigpoMode, Rollout,
};
use crate::{Error, Result};

/// Training tasks of an environment are drawn from `0..ENV_TASKS`; evaluation
/// tasks are `EVAL_TASK_BASE + i`, never seen in training.
const ENV_TASKS: usize = 100_000;
const EVAL_TASK_BASE: u64 = 1_000_000;

pub enum Work {
    Tasks {
        kind: TaskKind,
        problems: Vec<Problem>,
        eval_problems: Vec<Problem>,
        prompts: Vec<Vec<u32>>,
        rewarder: Rewarder,
        gigpo: GigpoConfig,
    },
    Env {
        env: Box<dyn Environment>,
        eval_size: usize,
        max_turns: usize,
        gigpo: GigpoConfig,
    },
}

/// One step's rollouts and what the log says of them.
pub struct StepBatch {
    pub rollouts: Vec<Rollout>,
    /// Mean reward of a completion (single-turn) or return of an episode.
    pub reward_mean: f64,
    /// Share of completions / episodes with reward (return) >= 1.
    pub accuracy: f64,
    /// Tokens generated.
    pub gen_tokens: usize,
    /// Mean actions per episode (multi-turn only).
    pub turns_mean: Option<f64>,
    /// A custom reward function's extra numbers, averaged over the completions that
    /// gave them (`reward/<key>`), and `reward/none`: the share TRL-style None.
    pub reward_extras: Vec<(String, f64)>,
    /// Episodes the environment dropped (multi-turn only).
    pub env_dropped: Option<usize>,
}

/// The GiGPO settings of a run.
pub fn gigpo_config(s: &RunSettings) -> Result<GigpoConfig> {
    let cfg = GigpoConfig {
        step_weight: s.gigpo_step_weight.unwrap_or(1.0),
        gamma: s.gamma.unwrap_or(0.95),
        mode: GigpoMode::parse(s.gigpo_mode.as_deref().unwrap_or("mean_norm"))?,
    };
    if !cfg.step_weight.is_finite() {
        return Err(Error::invalid(
            "--gigpo-step-weight must be a finite number",
        ));
    }
    if !(0.0..=1.0).contains(&cfg.gamma) {
        return Err(Error::invalid(format!(
            "--gamma {}: expected a discount in [0, 1]",
            cfg.gamma
        )));
    }
    Ok(cfg)
}

/// GiGPO on single-turn rollouts: each is a one-step episode whose step group is
/// its prompt group (every sample starts from the same prompt).
fn one_step_gigpo(rollouts: &mut [Rollout], cfg: &GigpoConfig) {
    let episodes: Vec<EpisodeSteps> = rollouts
        .iter()
        .map(|r| EpisodeSteps {
            group: r.group.clone(),
            steps: vec![EpisodeStep {
                anchor: String::new(),
                reward: r.reward,
            }],
        })
        .collect();
    for (r, a) in rollouts.iter_mut().zip(gigpo_advantages(&episodes, cfg)) {
        r.advantage = Some(a[0]);
    }
}

/// The run's reward: the task's, or the user's `--reward-fn` (its workers started
/// here, so a wrong file or name fails before any model work).
pub fn rewarder(s: &RunSettings, kind: TaskKind) -> Result<Rewarder> {
    let custom = match &s.reward_fn {
        Some(arg) => Some(RewardFn::start(&crate::tasks::RewardFnSpec::parse(
            arg,
            s.reward_fn_style.as_deref(),
            s.reward_workers,
            s.reward_timeout,
        )?)?),
        None if kind == TaskKind::Custom => return Err(crate::tasks::no_reward_fn()),
        None => None,
    };
    Ok(Rewarder::default().with_fn(custom))
}

/// The step's `reward/<key>` means (each over the completions that gave the key) and,
/// for a custom function, `reward/none` (the share it left without a reward).
fn reward_extras(samples: &[super::sample::Sample], custom: bool) -> Vec<(String, f64)> {
    let mut sums: std::collections::BTreeMap<&str, (f64, usize)> = Default::default();
    for x in samples {
        for (k, v) in &x.scored.extras {
            let e = sums.entry(k.as_str()).or_default();
            e.0 += v;
            e.1 += 1;
        }
    }
    let mut out: Vec<(String, f64)> = sums
        .into_iter()
        .map(|(k, (sum, n))| (format!("reward/{k}"), sum / n as f64))
        .collect();
    if custom {
        let none = samples.iter().filter(|x| x.scored.none).count();
        out.push((
            "reward/none".into(),
            none as f64 / samples.len().max(1) as f64,
        ));
    }
    out
}

impl Work {
    /// The work a run's settings name. `terse`: the model is the built-in demo
    /// model (its character alphabet).
    pub fn open(s: &RunSettings, codec: &dyn TextCodec, terse: bool) -> Result<Work> {
        if env::is_env_task(s.task.as_deref(), s.env.as_deref()) {
            let max_turns = s.max_turns.unwrap_or(4);
            if max_turns == 0 {
                return Err(Error::invalid("--max-turns must be at least 1"));
            }
            let timeout = env::timeout(s.env_timeout)?;
            return Ok(Work::Env {
                env: env::open(s.task.as_deref(), s.env.as_deref(), terse, timeout)?,
                eval_size: s.eval_size.unwrap_or(200),
                max_turns,
                gigpo: gigpo_config(s)?,
            });
        }
        let algo = Algo::parse(s.algo.as_deref().unwrap_or("grpo"))?;
        let (kind, problems, eval_problems) = load_problems(s)?;
        if kind == TaskKind::Code {
            let iso = crate::tasks::sandbox::isolation().map_err(Error::invalid)?;
            eprintln!("sandbox: {}", iso.describe());
        }
        if algo == Algo::Gigpo {
            eprintln!(
                "note: --algo gigpo on the single-turn task {kind}: each episode is one step whose step group is its prompt group"
            );
        }
        let prompts = problems
            .iter()
            .map(|p| problem_ids(codec, p))
            .collect::<Result<_>>()?;
        Ok(Work::Tasks {
            kind,
            problems,
            eval_problems,
            prompts,
            rewarder: rewarder(s, kind)?,
            gigpo: gigpo_config(s)?,
        })
    }

    /// For chart titles and logs.
    pub fn title(&self) -> String {
        match self {
            Work::Tasks { kind, .. } => kind.to_string(),
            Work::Env { env, .. } => env.name(),
        }
    }

    pub fn has_eval(&self) -> bool {
        match self {
            Work::Tasks { eval_problems, .. } => !eval_problems.is_empty(),
            Work::Env { eval_size, .. } => *eval_size > 0,
        }
    }

    /// Sample step `step`'s rollouts.
    #[allow(clippy::too_many_arguments)]
    pub fn sample<B: Backend>(
        &mut self,
        model: &Model<B>,
        codec: &dyn TextCodec,
        step: usize,
        per_step: usize,
        group: usize,
        seed: u64,
        gen: &GenerateParams,
        algo: Algo,
    ) -> Result<StepBatch> {
        let tag = format!("s{step}");
        match self {
            Work::Tasks {
                kind,
                problems,
                prompts,
                rewarder,
                gigpo,
                ..
            } => {
                let idx = step_problems(problems.len(), per_step, seed, step);
                let step_prompts: Vec<Vec<u32>> = idx.iter().map(|&i| prompts[i].clone()).collect();
                let step_problems: Vec<&Problem> = idx.iter().map(|&i| &problems[i]).collect();
                let samples = sample_groups(
                    model,
                    codec,
                    &step_prompts,
                    &step_problems,
                    *kind,
                    rewarder,
                    group,
                    gen,
                    &tag,
                )?;
                let reward_extras = reward_extras(&samples, rewarder.custom.is_some());
                let mut rollouts: Vec<Rollout> = samples.into_iter().map(|x| x.rollout).collect();
                if algo == Algo::Gigpo {
                    one_step_gigpo(&mut rollouts, gigpo);
                }
                let n = rollouts.len() as f64;
                let reward_mean = rollouts.iter().map(|r| r.reward).sum::<f64>() / n;
                let accuracy = rollouts.iter().filter(|r| r.reward >= 1.0).count() as f64 / n;
                let gen_tokens = rollouts.iter().map(|r| r.completion_ids.len()).sum();
                Ok(StepBatch {
                    rollouts,
                    reward_mean,
                    accuracy,
                    gen_tokens,
                    turns_mean: None,
                    reward_extras,
                    env_dropped: None,
                })
            }
            Work::Env {
                env,
                max_turns,
                gigpo,
                ..
            } => {
                let tasks: Vec<u64> = step_problems(ENV_TASKS, per_step, seed, step)
                    .into_iter()
                    .map(|i| i as u64)
                    .collect();
                let played = play(
                    model,
                    codec,
                    env.as_mut(),
                    &tasks,
                    group,
                    *max_turns,
                    gen,
                    (step as u64) << 32,
                )?;
                let episodes = played.episodes;
                if episodes.is_empty() {
                    return Err(Error::invalid(format!(
                        "step {step}: the environment dropped every episode; nothing to train on"
                    )));
                }
                let n = episodes.len() as f64;
                let reward_mean = episodes.iter().map(|e| e.ret()).sum::<f64>() / n;
                let accuracy = episodes.iter().filter(|e| e.ret() >= 1.0).count() as f64 / n;
                let turns: usize = episodes.iter().map(|e| e.turns.len()).sum();
                let rollouts = rollouts(&episodes, algo, gigpo, &tag);
                let gen_tokens = rollouts.iter().map(|r| r.completion_ids.len()).sum();
                Ok(StepBatch {
                    rollouts,
                    reward_mean,
                    accuracy,
                    gen_tokens,
                    turns_mean: Some(turns as f64 / n),
                    reward_extras: Vec::new(),
                    env_dropped: Some(played.dropped),
                })
            }
        }
    }

    /// Greedy evaluation on the held-out problems / tasks (`None`: there are none).
    #[allow(clippy::too_many_arguments)]
    pub fn evaluate<B: Backend>(
        &mut self,
        model: &Model<B>,
        codec: &dyn TextCodec,
        max_new: usize,
        sampling: SamplingParams,
        seed: u64,
        step: usize,
    ) -> Result<Option<EvalResult>> {
        if !self.has_eval() {
            return Ok(None);
        }
        match self {
            Work::Tasks {
                kind,
                eval_problems,
                rewarder,
                ..
            } => evaluate(
                model,
                codec,
                *kind,
                rewarder,
                eval_problems,
                1,
                max_new,
                sampling,
                seed,
            )
            .map(Some),
            Work::Env {
                env,
                eval_size,
                max_turns,
                ..
            } => {
                let tasks: Vec<u64> = (0..*eval_size as u64).map(|i| EVAL_TASK_BASE + i).collect();
                let gen = GenerateParams {
                    max_new_tokens: max_new,
                    sampling: SamplingParams::default(),
                    seed,
                    stop_ids: codec.stop_ids().to_vec(),
                    kv_cache_tokens: None,
                };
                let first_id = (1u64 << 63) | ((step as u64) << 32);
                let played = play(
                    model,
                    codec,
                    env.as_mut(),
                    &tasks,
                    1,
                    *max_turns,
                    &gen,
                    first_id,
                )?;
                // A dropped episode counts as unsolved.
                let solved = played.episodes.iter().filter(|e| e.ret() >= 1.0).count();
                Ok(Some(EvalResult {
                    problems: tasks.len(),
                    samples: 1,
                    accuracy: solved as f64 / tasks.len() as f64,
                    pass_at_k: None,
                    env_dropped: Some(played.dropped),
                }))
            }
        }
    }
}
