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
//!
//! Datasets are JSONL, optionally gzip-compressed (a path ending in `.gz`, as
//! HumanEval ships). `pass_at_k` (in `eval`) is the unbiased pass@k estimator.
//! Multi-turn environments (GiGPO) are not here yet.

pub mod arith;
pub mod code;
pub mod eval;
pub mod gsm8k;
mod jsonl;
pub mod math;
pub mod sandbox;

use std::path::Path;

pub use arith::ArithOptions;
pub use code::CodeSpec;
pub use eval::pass_at_k;
pub use sandbox::{Outcome, RunResult, SandboxConfig};

use crate::{Error, Result};

/// Which task a run trains or evaluates on (`--task`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum TaskKind {
    Gsm8k,
    Math,
    Code,
    Arith,
}

impl TaskKind {
    pub const ALL: [TaskKind; 4] = [
        TaskKind::Gsm8k,
        TaskKind::Math,
        TaskKind::Code,
        TaskKind::Arith,
    ];

    /// Parses a `--task` value (case-insensitive).
    pub fn parse(s: &str) -> Result<TaskKind> {
        let t = s.trim().to_ascii_lowercase();
        TaskKind::ALL
            .into_iter()
            .find(|k| k.name() == t)
            .ok_or_else(|| {
                Error::invalid(format!(
                    "--task: unknown task {s:?} (valid: gsm8k, math, code, arith)"
                ))
            })
    }

    pub fn name(self) -> &'static str {
        match self {
            TaskKind::Gsm8k => "gsm8k",
            TaskKind::Math => "math",
            TaskKind::Code => "code",
            TaskKind::Arith => "arith",
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
#[derive(Clone, Debug, PartialEq)]
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
    }
}

/// The reward of a completion, with the default sandbox settings for code.
pub fn reward(kind: TaskKind, problem: &Problem, completion: &str) -> f64 {
    Rewarder::default().reward(kind, problem, completion)
}

/// A reward and, for code, what the sandboxed run did (for logging).
#[derive(Clone, Debug)]
pub struct Scored {
    pub reward: f64,
    pub run: Option<RunResult>,
}

/// Reward functions with settings (the code sandbox's limits).
#[derive(Clone, Debug, Default)]
pub struct Rewarder {
    pub sandbox: SandboxConfig,
}

impl Rewarder {
    pub fn new(sandbox: SandboxConfig) -> Self {
        Rewarder { sandbox }
    }

    pub fn reward(&self, kind: TaskKind, problem: &Problem, completion: &str) -> f64 {
        self.score(kind, problem, completion).reward
    }

    /// Scores many completions, in parallel on the rayon pool (code runs are
    /// subprocesses, so at most one per pool thread at a time). Same order.
    pub fn score_many(&self, kind: TaskKind, items: &[(&Problem, &str)]) -> Vec<Scored> {
        use rayon::prelude::*;
        items
            .par_iter()
            .map(|(p, c)| self.score(kind, p, c))
            .collect()
    }

    pub fn score(&self, kind: TaskKind, problem: &Problem, completion: &str) -> Scored {
        let plain = |reward| Scored { reward, run: None };
        match kind {
            TaskKind::Gsm8k => plain(gsm8k::reward(&problem.reference, completion)),
            TaskKind::Math => plain(math::reward(&problem.reference, completion)),
            TaskKind::Arith => plain(arith::reward(&problem.reference, completion)),
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
                    }
                }
                None => plain(0.0),
            },
        }
    }
}
