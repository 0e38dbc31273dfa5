//! `engine eval`: accuracy (pass@1, and pass@k with `--samples K`) on a task's
//! problems, as JSON, with the evaluator the training loop uses. `--trained RUN`
//! evaluates a run's trained layers (its config.toml names the model; `--model`
//! overrides), without it the base model.

use super::print_json;
use super::run::{apply_trained, build_model};
use super::{with_backend, BackendJob};
use onelayer::backend::Backend;
use onelayer::rl::eval::{evaluate, EvalResult};
use onelayer::rl::run::load_problems;
use onelayer::rl::work::rewarder;
use onelayer::rl::work::Work;
use onelayer::rl::RunSettings;
use onelayer::sampling::SamplingParams;
use onelayer::tasks::TaskKind;
use onelayer::{Error, Result};
use serde_json::json;
use std::path::PathBuf;

#[derive(clap::Args, Debug)]
pub struct Args {
    /// Model directory, HF id or alias (default: the run's, or the built-in demo model).
    #[arg(long)]
    pub model: Option<String>,
    /// A run directory (or its trained.safetensors) whose trained layers to evaluate.
    #[arg(long)]
    pub trained: Option<PathBuf>,
    /// gsm8k | math | code | arith | custom | guess (default: the run's)
    #[arg(long)]
    pub task: Option<String>,
    /// An external multi-turn environment (see `engine run --env`; default: the run's).
    #[arg(long)]
    pub env: Option<String>,
    /// Turns per episode of a multi-turn environment (default: the run's, else 4).
    #[arg(long)]
    pub max_turns: Option<usize>,
    /// Time limit in seconds of each reply of --env (default: the run's, else 60).
    #[arg(long, value_name = "SECONDS")]
    pub env_timeout: Option<f64>,
    /// The problems (JSONL); arith generates its held-out set.
    #[arg(long)]
    pub data: Option<PathBuf>,
    /// Completions per problem: 1 is greedy (pass@1); K > 1 samples at --temperature
    /// and reports pass@K too.
    #[arg(long, default_value_t = 1)]
    pub samples: usize,
    /// Evaluate at most this many problems.
    #[arg(long)]
    pub limit: Option<usize>,
    #[arg(long)]
    pub max_new_tokens: Option<usize>,
    #[arg(long, default_value_t = 1.0)]
    pub temperature: f32,
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// auto | cpu | cuda | cuda:N | emu
    #[arg(long, default_value = "auto")]
    pub device: String,
    #[command(flatten)]
    pub reward: super::reward::RewardFnArgs,
    /// Operands per arith problem (default: the run's, else 2).
    #[arg(long)]
    pub arith_terms: Option<usize>,
    #[arg(long)]
    pub arith_digits: Option<u32>,
    #[arg(long)]
    pub arith_ops: Option<String>,
}

pub fn run(a: Args) -> Result<()> {
    if a.samples == 0 {
        return Err(Error::invalid("--samples must be at least 1"));
    }
    let (run_settings, trained) = match &a.trained {
        Some(p) if p.is_dir() => (
            RunSettings::from_toml_file(&p.join("config.toml")).ok(),
            Some(p.join("trained.safetensors")),
        ),
        Some(p) => (None, Some(p.clone())),
        None => (None, None),
    };
    let flags = RunSettings {
        model: a.model.clone(),
        task: a.task.clone(),
        env: a.env.clone(),
        max_turns: a.max_turns,
        env_timeout: a.env_timeout,
        max_new_tokens: a.max_new_tokens,
        arith_terms: a.arith_terms,
        arith_digits: a.arith_digits,
        arith_ops: a.arith_ops.clone(),
        ..RunSettings::default()
    };
    let mut given = run_settings.unwrap_or_default().overlay(&flags);
    a.reward.apply(&mut given);
    super::reward::infer_task(&mut given, a.data.is_some());
    let mut s = RunSettings::resolve(&given);
    // Evaluate --data (or, for arith, the generated held-out set) as the eval set.
    s.eval_data = a.data.clone();
    s.data = None;
    s.eval_size = Some(a.limit.unwrap_or(usize::MAX));
    let device = a.device.clone();
    with_backend(&device, Job { a, s, trained })
}

struct Job {
    a: Args,
    s: RunSettings,
    trained: Option<PathBuf>,
}

impl BackendJob for Job {
    fn run<B: Backend>(self, backend: B) -> Result<()> {
        let s = &self.s;
        if onelayer::env::is_env_task(s.task.as_deref(), s.env.as_deref()) {
            return self.run_env(backend);
        }
        let kind = TaskKind::parse(s.task.as_deref().unwrap_or("arith"))?;
        if kind != TaskKind::Arith && s.eval_data.is_none() {
            return Err(Error::invalid(format!(
                "--data: --task {kind} needs the problems to evaluate"
            )));
        }
        // load_problems reads the training set from `data`; for eval only the
        // held-out part matters, so point both at the eval data.
        let mut ls = s.clone();
        ls.data = s.eval_data.clone();
        ls.eval_size = Some(
            s.eval_size
                .unwrap_or(usize::MAX)
                .min(if kind == TaskKind::Arith {
                    200
                } else {
                    usize::MAX
                }),
        );
        let (_, _, problems) = load_problems(&ls)?;
        let sandbox = if kind == TaskKind::Code {
            let iso = onelayer::tasks::sandbox::isolation().map_err(Error::invalid)?;
            eprintln!("sandbox: {}", iso.describe());
            Some(iso.name())
        } else {
            None
        };
        let (model, codec, layers) = self.model(s, backend)?;
        let r = evaluate(
            &model,
            codec.as_ref(),
            kind,
            &rewarder(s, kind)?,
            &problems,
            self.a.samples,
            s.max_new_tokens.unwrap_or(512),
            SamplingParams {
                temperature: self.a.temperature,
                ..SamplingParams::default()
            },
            self.a.seed,
        )?;
        report(kind.name(), layers, &r, sandbox);
        Ok(())
    }
}

/// What `engine eval` prints.
fn report(task: &str, layers: Option<Vec<usize>>, r: &EvalResult, sandbox: Option<&str>) {
    let mut v = json!({
        "task": task,
        "trained_layers": layers,
        "problems": r.problems,
        "samples": r.samples,
        "accuracy": r.accuracy,
        "pass_at_k": r.pass_at_k,
    });
    if let Some(d) = r.env_dropped {
        // Episodes the environment dropped (counted as unsolved).
        v["env_dropped"] = json!(d);
    }
    if let Some(s) = sandbox {
        v["sandbox_isolation"] = json!(s);
    }
    print_json(&v);
}

impl Job {
    /// The model of `s` with `--trained`'s layers merged in (and which they are).
    fn model<B: Backend>(&self, s: &RunSettings, backend: B) -> Result<EvalModel<B>> {
        let (mut model, codec, _) = build_model(s, backend)?;
        let layers = match &self.trained {
            Some(p) => Some(apply_trained(&mut model, p)?),
            None => None,
        };
        Ok((model, codec, layers))
    }

    /// A multi-turn environment: the share of greedy episodes (held-out task ids,
    /// `--limit` of them, default 200) whose return reaches 1, as the run's eval.
    fn run_env<B: Backend>(self, backend: B) -> Result<()> {
        if self.a.samples != 1 {
            return Err(Error::invalid(
                "--samples: environments are evaluated with one greedy episode per task",
            ));
        }
        let mut s = self.s.clone();
        s.eval_size = Some(self.a.limit.unwrap_or(200));
        let (model, codec, layers) = self.model(&s, backend)?;
        let mut work = Work::open(
            &s,
            codec.as_ref(),
            onelayer::rl::settings::is_demo_model(s.model.as_deref()),
        )?;
        let r = work
            .evaluate(
                &model,
                codec.as_ref(),
                s.max_new_tokens.unwrap_or(512),
                SamplingParams::default(),
                self.a.seed,
                0,
            )?
            .ok_or_else(|| Error::invalid("--limit must be at least 1"))?;
        report(&work.title(), layers, &r, None);
        Ok(())
    }
}

/// A model, its codec, and the layers `--trained` replaced.
type EvalModel<B> = (
    onelayer::model::Model<B>,
    Box<dyn onelayer::rl::TextCodec>,
    Option<Vec<usize>>,
);
