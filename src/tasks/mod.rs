//! Tasks: datasets, prompts and reward functions (DESIGN section 6).
//!
//! - `gsm8k`: JSONL `question` / `answer` (solution ending `#### 42`); reward on
//!   the last `#### <number>` of the completion.
//! - `math`: JSONL `problem` plus `answer` (or a `solution` with `\boxed{}`);
//!   reward on the last `\boxed{}` after normalisation.
//! - `code`: HumanEval-style JSONL; the completion and the tests run in a Python
//!   subprocess (`sandbox`); reward = tests pass.
//! - `arith`: generated, seeded arithmetic (`23+58=` -> `81`) for the built-in
//!   tiny model; no dataset, no chat template.
//! - `custom`: JSONL rows with `prompt` (a string or chat messages) and any other
//!   columns, scored by the user's `--reward-fn` (`custom.rs`, `reward_fn.rs`).
//!
//! `--reward-fn` replaces the reward of any task (the built-in tasks' problems reach
//! it with their reference as `ground_truth`); `Rewarder::score_batch` is the one
//! entry point training, evaluation and `engine reward` share.
//!
//! Datasets are JSONL, optionally gzip-compressed (a path ending in `.gz`, as
//! HumanEval ships). `pass_at_k` (in `eval`) is the unbiased pass@k estimator.
//! Multi-turn environments (GiGPO) are not here yet.

pub mod arith;
pub mod code;
pub mod custom;
pub mod eval;
pub mod gsm8k;
mod jsonl;
pub mod math;
pub mod reward_fn;
pub mod sandbox;

use std::path::Path;
use std::sync::Arc;

pub use arith::ArithOptions;
pub use code::CodeSpec;
pub use eval::pass_at_k;
pub use jsonl::{read as read_jsonl, Record};
pub use reward_fn::{RewardFn, RewardFnSpec, RewardStyle};
pub use sandbox::{Outcome, RunResult, SandboxConfig};

use crate::{Error, Result};

/// Which task a run trains or evaluates on (`--task`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum TaskKind {
    Gsm8k,
    Math,
    Code,
    Arith,
    Custom,
}

impl TaskKind {
    pub const ALL: [TaskKind; 5] = [
        TaskKind::Gsm8k,
        TaskKind::Math,
        TaskKind::Code,
        TaskKind::Arith,
        TaskKind::Custom,
    ];

    /// Parses a `--task` value (case-insensitive).
    pub fn parse(s: &str) -> Result<TaskKind> {
        let t = s.trim().to_ascii_lowercase();
        TaskKind::ALL
            .into_iter()
            .find(|k| k.name() == t)
            .ok_or_else(|| {
                Error::invalid(format!(
                    "--task: unknown task {s:?} (valid: gsm8k, math, code, arith, custom)"
                ))
            })
    }

    pub fn name(self) -> &'static str {
        match self {
            TaskKind::Gsm8k => "gsm8k",
            TaskKind::Math => "math",
            TaskKind::Code => "code",
            TaskKind::Arith => "arith",
            TaskKind::Custom => "custom",
        }
    }

    /// Whether the prompt goes in a user chat turn. The arith prompt is the raw
    /// expression, fed to the tiny model as is.
    pub fn uses_chat_template(self) -> bool {
        self != TaskKind::Arith
    }
}

impl std::fmt::Display for TaskKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// One problem of a task.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Problem {
    /// `gsm8k-0`, `math-0`, HumanEval's `task_id`, `arith-<seed>-<i>`.
    pub id: String,
    /// The user-turn text (for `arith`, the whole prompt).
    pub prompt: String,
    /// The answer, normalised (gsm8k: the number; math: the normalised
    /// `\boxed{}` content; code: the canonical solution or empty; arith: the
    /// number).
    pub reference: String,
    /// Present for the code task.
    pub code: Option<CodeSpec>,
    /// The dataset row (custom datasets): chat messages and every column.
    pub row: Option<Arc<custom::Row>>,
}

/// Reads (gsm8k, math, code) or generates (arith) the problems of a task.
/// Errors are one line naming `--data`, or the file and line.
pub fn load(
    kind: TaskKind,
    data: Option<&Path>,
    arith_opts: &ArithOptions,
) -> Result<Vec<Problem>> {
    match (kind, data) {
        (TaskKind::Arith, None) => arith::generate(arith_opts),
        (TaskKind::Arith, Some(p)) => Err(Error::invalid(format!(
            "--data {}: the arith task is generated and reads no dataset",
            p.display()
        ))),
        (_, None) => Err(Error::invalid(format!(
            "--data: --task {kind} needs a dataset path (JSONL, optionally .gz)"
        ))),
        (TaskKind::Gsm8k, Some(p)) => gsm8k::load(p),
        (TaskKind::Math, Some(p)) => math::load(p),
        (TaskKind::Code, Some(p)) => code::load(p),
        (TaskKind::Custom, Some(p)) => custom::load(p),
    }
}

/// The built-in reward of a completion, with the default sandbox settings for code.
pub fn reward(kind: TaskKind, problem: &Problem, completion: &str) -> f64 {
    Rewarder::default().reward(kind, problem, completion)
}

/// A reward and what decided it.
#[derive(Clone, Debug, Default)]
pub struct Scored {
    pub reward: f64,
    /// Code: what the sandboxed run did.
    pub run: Option<RunResult>,
    /// A custom function's other numbers (`reward/<key>` in the metrics).
    pub extras: Vec<(String, f64)>,
    /// A TRL-style function returned None (no reward; scored 0).
    pub none: bool,
}

impl Scored {
    /// `passed`/`failed`/... for code, `none` for a TRL None, else `scored`.
    pub fn outcome(&self) -> &'static str {
        match (&self.run, self.none) {
            (Some(r), _) => r.outcome.name(),
            (None, true) => "none",
            (None, false) => "scored",
        }
    }
}

/// The error of a custom task without its reward function.
pub fn no_reward_fn() -> Error {
    Error::invalid(
        "--task custom: the rows are scored by --reward-fn FILE.py[:NAME], and none was given",
    )
}

/// One completion to score.
pub struct ScoreItem<'a> {
    pub problem: &'a Problem,
    pub completion: &'a str,
    /// The completion's token ids (TRL's `completion_ids`; empty when unknown).
    pub completion_ids: &'a [u32],
}

/// Reward functions with settings: the code sandbox's limits, and the user's
/// function when `--reward-fn` is given (it then replaces the task's reward).
#[derive(Clone, Debug, Default)]
pub struct Rewarder {
    pub sandbox: SandboxConfig,
    pub custom: Option<Arc<RewardFn>>,
}

impl Rewarder {
    pub fn new(sandbox: SandboxConfig) -> Self {
        Rewarder {
            sandbox,
            custom: None,
        }
    }

    /// With the user's function (started: its workers are running).
    pub fn with_fn(mut self, f: Option<RewardFn>) -> Self {
        self.custom = f.map(Arc::new);
        self
    }

    /// Scores of `items` in order: the user's function when there is one, else the
    /// task's built-in reward (code runs in parallel on the rayon pool). An error is
    /// one line naming the function and the row; nothing should train on the batch.
    pub fn score_batch(&self, kind: TaskKind, items: &[ScoreItem<'_>]) -> Result<Vec<Scored>> {
        if let Some(f) = &self.custom {
            let inputs: Vec<reward_fn::FnInput> = items
                .iter()
                .map(|i| reward_fn::FnInput {
                    problem: i.problem,
                    completion: i.completion,
                    completion_ids: i.completion_ids,
                })
                .collect();
            return Ok(f
                .score(kind, &inputs)?
                .into_iter()
                .map(|s| Scored {
                    reward: s.reward,
                    run: None,
                    extras: s.extras,
                    none: s.none,
                })
                .collect());
        }
        if kind == TaskKind::Custom {
            return Err(no_reward_fn());
        }
        let pairs: Vec<(&Problem, &str)> =
            items.iter().map(|i| (i.problem, i.completion)).collect();
        Ok(self.score_many(kind, &pairs))
    }

    /// The built-in reward (the user's function is not consulted).
    pub fn reward(&self, kind: TaskKind, problem: &Problem, completion: &str) -> f64 {
        self.score(kind, problem, completion).reward
    }

    /// Scores many completions with the built-in rewards, in parallel on the rayon
    /// pool (code runs are subprocesses, so at most one per pool thread). Same order.
    pub fn score_many(&self, kind: TaskKind, items: &[(&Problem, &str)]) -> Vec<Scored> {
        use rayon::prelude::*;
        items
            .par_iter()
            .map(|(p, c)| self.score(kind, p, c))
            .collect()
    }

    /// The built-in reward of one completion.
    pub fn score(&self, kind: TaskKind, problem: &Problem, completion: &str) -> Scored {
        let plain = |reward| Scored {
            reward,
            ..Scored::default()
        };
        match kind {
            TaskKind::Gsm8k => plain(gsm8k::reward(&problem.reference, completion)),
            TaskKind::Math => plain(math::reward(&problem.reference, completion)),
            TaskKind::Arith => plain(arith::reward(&problem.reference, completion)),
            TaskKind::Custom => plain(0.0),
            TaskKind::Code => match &problem.code {
                Some(spec) => {
                    let run = code::run(spec, completion, &self.sandbox);
                    Scored {
                        reward: if run.outcome == Outcome::Passed {
                            1.0
                        } else {
                            0.0
                        },
                        run: Some(run),
                        ..Scored::default()
                    }
                }
                None => plain(0.0),
            },
        }
    }
}
