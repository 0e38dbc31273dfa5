//! Multi-turn environments for GiGPO (DESIGN section 6). An environment runs many
//! episodes at once, told apart by an episode id; each starts from a task id
//! (episodes started from the same task start from the same state: one GiGPO prompt
//! group) and moves on with the text of each action the model generates.
//!
//! Built in: `guess` (find a secret digit from higher/lower hints, `guess.rs`). Any
//! other environment plugs in as a child process speaking JSON lines on stdio
//! (`external.rs`; protocol and an example in examples/envs/).
//!
//! Failures: an environment may answer `Ok(None)` to `reset` or `step`, meaning
//! that episode is dropped (it failed and the environment recovered without it:
//! the caller plays on without that episode); `Err` is fatal. The external
//! environment drops an episode on its first failure in a pass (`begin_step`
//! starts one) and restores the other live episodes; a second failure is fatal.

pub mod external;
pub mod guess;

use crate::Result;
use std::time::Duration;

/// The default time limit of one request to an external environment
/// (`--env-timeout`, in seconds).
pub const DEFAULT_TIMEOUT_SECS: f64 = 60.0;

/// What the model sees after a reset or an action.
#[derive(Debug, Clone, PartialEq)]
pub struct Observation {
    /// Text shown to the model (appended to the dialogue).
    pub text: String,
    /// The state this observation stands for, for GiGPO's step groups (steps of a
    /// prompt group with equal anchors are compared). `None`: the text itself.
    pub anchor: Option<String>,
}

impl Observation {
    pub fn anchor(&self) -> &str {
        self.anchor.as_deref().unwrap_or(&self.text)
    }
}

/// The outcome of one action.
#[derive(Debug, Clone, PartialEq)]
pub struct Transition {
    pub observation: Observation,
    pub reward: f64,
    /// The episode ended (no further action is asked for).
    pub done: bool,
}

pub trait Environment {
    /// Start episode `episode` from task `task`; its first observation, or `None`:
    /// the episode is dropped (ask nothing more of it, not even `end`).
    fn reset(&mut self, episode: u64, task: u64) -> Result<Option<Observation>>;
    /// Apply the text of an action to episode `episode`; `None`: the episode is
    /// dropped, as for `reset`.
    fn step(&mut self, episode: u64, action: &str) -> Result<Option<Transition>>;
    /// The episode is over (done, or out of turns): its state may be dropped.
    fn end(&mut self, episode: u64) -> Result<()>;
    /// A new pass (an RL step's episodes, an evaluation) begins: failures are
    /// counted from here.
    fn begin_step(&mut self) {}
    /// A short name for messages and the run's records.
    fn name(&self) -> String;
}

/// The built-in environments' names (`--task`).
pub const BUILTIN: &[&str] = &["guess"];

/// Whether a run's task is a multi-turn environment: `--env CMD`, or a built-in
/// environment name as `--task`.
pub fn is_env_task(task: Option<&str>, env: Option<&str>) -> bool {
    env.is_some() || task.is_some_and(|t| BUILTIN.contains(&t))
}

/// `--env-timeout` in seconds as a time limit: a positive, finite number.
pub fn timeout(secs: Option<f64>) -> Result<Duration> {
    let secs = secs.unwrap_or(DEFAULT_TIMEOUT_SECS);
    match Duration::try_from_secs_f64(secs) {
        Ok(d) if secs > 0.0 && !d.is_zero() => Ok(d),
        _ => Err(crate::Error::invalid(format!(
            "--env-timeout {secs}: expected a positive number of seconds"
        ))),
    }
}

/// Open the environment of a run: the external command when given (each request
/// limited to `timeout`), else the built-in one named by `task`. `terse`: the
/// built-in environments speak the demo model's character alphabet.
pub fn open(
    task: Option<&str>,
    env: Option<&str>,
    terse: bool,
    timeout: Duration,
) -> Result<Box<dyn Environment>> {
    match (env, task) {
        (Some(cmd), _) => Ok(Box::new(external::ExternalEnv::spawn(cmd, timeout)?)),
        (None, Some("guess")) => Ok(Box::new(guess::GuessEnv::new(terse))),
        (None, t) => Err(crate::Error::invalid(format!(
            "--task {}: not a multi-turn environment (built in: {})",
            t.unwrap_or("(none)"),
            BUILTIN.join(", ")
        ))),
    }
}
