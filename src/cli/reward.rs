//! `engine reward`: score a file of completions without a model, through the reward
//! path training uses (`Rewarder::score_batch`): the task's built-in reward or the
//! user's `--reward-fn`. Each `--completions` line is `{"index": i, "completion":
//! "..."}` (`index`: the problem's 0-based row in `--data`; for arith, in the
//! training set `engine run --seed S` generates). Prints one line per completion and a
//! summary (mean reward, counts by outcome); `--json` makes them JSON lines.

use onelayer::rl::run::load_problems;
use onelayer::rl::work::rewarder;
use onelayer::rl::RunSettings;
use onelayer::tasks::{self, Problem, ScoreItem, TaskKind};
use onelayer::{Error, Result};
use serde_json::{json, Map, Value};
use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};

/// `--reward-fn` and its companions (run, eval, reward).
#[derive(clap::Args, Debug, Default, Clone)]
pub struct RewardFnArgs {
    /// A custom reward function FILE.py[:NAME] (NAME: compute_score for verl,
    /// reward_func for trl); replaces the task's reward.
    #[arg(long)]
    pub reward_fn: Option<String>,
    /// verl: NAME(data_source, solution_str, ground_truth, extra_info) per completion;
    /// trl: NAME(prompts, completions, completion_ids, **columns) per batch.
    #[arg(long)]
    pub reward_fn_style: Option<String>,
    /// Python worker processes for the reward function (default 1).
    #[arg(long)]
    pub reward_workers: Option<usize>,
    /// Seconds one call of the reward function may take (default 60).
    #[arg(long)]
    pub reward_timeout: Option<f64>,
}

impl RewardFnArgs {
    /// These flags as settings.
    pub fn apply(&self, s: &mut RunSettings) {
        let given = RunSettings {
            reward_fn: self.reward_fn.clone(),
            reward_fn_style: self.reward_fn_style.clone(),
            reward_workers: self.reward_workers,
            reward_timeout: self.reward_timeout,
            ..RunSettings::default()
        };
        *s = s.clone().overlay(&given);
    }
}

/// The task of a run: `--task`, else `custom` when a reward function and a dataset
/// (`has_data`: `--data` of run and reward, eval's problems) are given without one.
pub fn infer_task(s: &mut RunSettings, has_data: bool) {
    if s.task.is_none() && s.reward_fn.is_some() && has_data && s.env.is_none() {
        s.task = Some("custom".into());
    }
}

#[derive(clap::Args, Debug)]
pub struct Args {
    /// gsm8k | math | code | arith | custom (default: custom with --reward-fn and --data)
    #[arg(long)]
    pub task: Option<String>,
    /// The problems (JSONL, optionally .gz); arith generates them.
    #[arg(long)]
    pub data: Option<PathBuf>,
    /// JSONL of {"index": i, "completion": "..."}.
    #[arg(long)]
    pub completions: PathBuf,
    #[command(flatten)]
    pub reward: RewardFnArgs,
    /// Seed of the arith task's generated problems.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// JSON lines instead of text.
    #[arg(long)]
    pub json: bool,
}

/// Completions scored per batch (a TRL-style function's batch).
const CHUNK: usize = 256;

pub fn run(a: Args) -> Result<()> {
    let mut s = RunSettings {
        task: a.task.clone(),
        data: a.data.clone(),
        seed: Some(a.seed),
        ..RunSettings::default()
    };
    a.reward.apply(&mut s);
    infer_task(&mut s, a.data.is_some());
    let Some(task) = s.task.as_deref() else {
        return Err(Error::invalid(
            "--task: name the task (gsm8k, math, code, arith), or give --reward-fn with --data",
        ));
    };
    TaskKind::parse(task)?;
    // The problems exactly as `engine run` loads its training set (arith: the demo's).
    let s = RunSettings::resolve(&s);
    let (kind, problems, _) = load_problems(&s)?;
    let completions = read_completions(&a.completions, problems.len())?;
    let rewarder = rewarder(&s, kind)?;
    let mut summary = Summary::default();
    let stdout = std::io::stdout();
    let mut out = stdout.lock();
    for chunk in completions.chunks(CHUNK) {
        let items: Vec<ScoreItem> = chunk
            .iter()
            .map(|(i, text)| ScoreItem {
                problem: &problems[*i],
                completion: text,
                completion_ids: &[],
            })
            .collect();
        let scores = rewarder.score_batch(kind, &items)?;
        for ((i, _), sc) in chunk.iter().zip(&scores) {
            let p: &Problem = &problems[*i];
            let mut line = Map::new();
            line.insert("index".into(), json!(i));
            line.insert("id".into(), json!(p.id));
            line.insert("reward".into(), json!(sc.reward));
            line.insert("outcome".into(), json!(sc.outcome()));
            if let Some(run) = &sc.run {
                if !run.detail.is_empty() {
                    line.insert("detail".into(), json!(run.detail));
                }
            }
            for (k, v) in &sc.extras {
                line.insert(format!("reward/{k}"), json!(v));
            }
            summary.add(sc);
            let text = if a.json {
                Value::Object(line).to_string()
            } else {
                let detail = sc
                    .run
                    .as_ref()
                    .filter(|r| !r.detail.is_empty())
                    .map(|r| format!(" - {}", r.detail))
                    .unwrap_or_default();
                format!(
                    "{i:>6} {:<24} reward {:.4} {}{detail}",
                    p.id,
                    sc.reward,
                    sc.outcome()
                )
            };
            writeln!(out, "{text}").map_err(|e| Error::invalid(format!("stdout: {e}")))?;
        }
    }
    let line = summary.finish(kind);
    let text = if a.json {
        line.to_string()
    } else {
        format!(
            "{} completions, mean reward {:.4}, outcomes {}",
            summary.n,
            line["mean_reward"].as_f64().unwrap_or(0.0),
            line["outcomes"]
        )
    };
    writeln!(out, "{text}").map_err(|e| Error::invalid(format!("stdout: {e}")))?;
    Ok(())
}

/// (problem index, completion) of every line; errors name the file and line.
fn read_completions(path: &Path, n_problems: usize) -> Result<Vec<(usize, String)>> {
    let file = std::fs::File::open(path)
        .map_err(|e| Error::file(path, format!("cannot open completions: {e}")))?;
    let mut out = Vec::new();
    for (no, line) in BufReader::new(file).lines().enumerate() {
        let no = no + 1;
        let line = line.map_err(|e| Error::file(path, format!("line {no}: {e}")))?;
        if line.trim().is_empty() {
            continue;
        }
        let bad = |msg: String| Error::file(path, format!("line {no}: {msg}"));
        let v: Value =
            serde_json::from_str(&line).map_err(|e| bad(format!("malformed JSON: {e}")))?;
        let index =
            v.get("index").and_then(Value::as_u64).ok_or_else(|| {
                bad("key \"index\" is missing or not a non-negative integer".into())
            })? as usize;
        if index >= n_problems {
            return Err(bad(format!(
                "index {index} is past the dataset's {n_problems} problems"
            )));
        }
        let text = v
            .get("completion")
            .and_then(Value::as_str)
            .ok_or_else(|| bad("key \"completion\" is missing or not a string".into()))?;
        out.push((index, text.to_string()));
    }
    if out.is_empty() {
        return Err(Error::file(path, "no completions"));
    }
    Ok(out)
}

#[derive(Default)]
struct Summary {
    n: usize,
    sum: f64,
    outcomes: BTreeMap<&'static str, usize>,
    extras: BTreeMap<String, (f64, usize)>,
}

impl Summary {
    fn add(&mut self, s: &tasks::Scored) {
        self.n += 1;
        self.sum += s.reward;
        *self.outcomes.entry(s.outcome()).or_default() += 1;
        for (k, v) in &s.extras {
            let e = self.extras.entry(format!("reward/{k}")).or_default();
            e.0 += v;
            e.1 += 1;
        }
    }

    fn finish(&self, kind: TaskKind) -> Value {
        let mut m = Map::new();
        m.insert("summary".into(), json!(true));
        m.insert("task".into(), json!(kind.name()));
        m.insert("completions".into(), json!(self.n));
        m.insert("mean_reward".into(), json!(self.sum / self.n.max(1) as f64));
        m.insert("outcomes".into(), json!(self.outcomes));
        for (k, (sum, n)) in &self.extras {
            m.insert(k.clone(), json!(sum / *n as f64));
        }
        Value::Object(m)
    }
}
