//! `engine run`: RL post-training of the selected layers.
//!
//! - No `--rollouts`: the RL loop (`onelayer::rl`): generate, reward, train,
//!   evaluate, checkpoint. With no `--model` it is the built-in demo (the tiny model
//!   on the `arith` task). Settings: defaults, then `--config run.toml`, then flags;
//!   `--resume DIR` continues DIR with its `config.toml` (flags still override, e.g. a
//!   larger `--steps`).
//! - `--rollouts FILE.jsonl`: train from a rollout file without generating (each step
//!   uses every record, split into `--mini-batch` updates, `--ppo-epochs` times),
//!   writing `OUT/trained.safetensors` and `OUT/metrics.jsonl`.

use super::{load_tokenizer, with_backend, BackendJob};
use onelayer::backend::Backend;
use onelayer::chat::ChatTemplate;
use onelayer::config::{builtin, Family};
use onelayer::generation_config::stop_token_ids;
use onelayer::model::Model;
use onelayer::resolve::resolve_model;
use onelayer::rl::run::{finite, run_rl, train_config, INTERRUPTED};
use onelayer::rl::{CharCodec, ChatCodec, RunSettings, TextCodec};
use onelayer::tasks::{arith, TaskKind};
use onelayer::train::{read_rollouts, Rollout, StepStats, TrainLayers, Trainer};
use onelayer::{Error, Result};
use serde_json::json;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Instant;

#[derive(clap::Args, Debug, Default)]
pub struct Args {
    /// Model directory, HF id or alias. Omit for the built-in demo (tiny model, arith task).
    #[arg(long)]
    pub model: Option<String>,
    /// auto | cpu | cuda | cuda:N | emu
    #[arg(long)]
    pub device: Option<String>,
    /// Layers to train: 18, 17,18, 16-19, all, or top-K with --from-sweep (default: the middle layer).
    #[arg(long)]
    pub train_layer: Option<String>,
    /// gsm8k | math | code | arith | custom (rows scored by --reward-fn) | guess (a multi-turn environment)
    #[arg(long)]
    pub task: Option<String>,
    /// Training problems (JSONL) for gsm8k, math, code.
    #[arg(long)]
    pub data: Option<PathBuf>,
    /// Held-out problems for evaluation.
    #[arg(long)]
    pub eval_data: Option<PathBuf>,
    /// Train from this rollout file instead of generating (see the module docs).
    #[arg(long)]
    pub rollouts: Option<PathBuf>,
    #[arg(long)]
    pub steps: Option<usize>,
    /// Run directory (default: runs/<UTC timestamp>).
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// Settings file (TOML, the keys of OUT/config.toml); flags override it.
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// Continue the run in this directory from its last checkpoint.
    #[arg(long)]
    pub resume: Option<PathBuf>,
    #[arg(long)]
    pub prompts_per_step: Option<usize>,
    #[arg(long)]
    pub group_size: Option<usize>,
    #[arg(long)]
    pub max_new_tokens: Option<usize>,
    /// Sampling temperature; training divides the logits by it too, as verl and TRL do.
    #[arg(long)]
    pub temperature: Option<f32>,
    #[arg(long)]
    pub top_p: Option<f32>,
    #[arg(long)]
    pub top_k: Option<usize>,
    #[arg(long)]
    pub seed: Option<u64>,
    /// grpo | dr-grpo | gigpo
    #[arg(long)]
    pub algo: Option<String>,
    /// token-mean | seq-mean-token-mean | seq-mean-token-sum-norm (default: the algorithm's).
    #[arg(long)]
    pub loss_agg: Option<String>,
    /// adamw | sgd
    #[arg(long)]
    pub optimizer: Option<String>,
    #[arg(long)]
    pub lr: Option<f32>,
    #[arg(long)]
    pub weight_decay: Option<f32>,
    /// Clip the global gradient norm to this (0 disables).
    #[arg(long)]
    pub grad_clip: Option<f32>,
    #[arg(long)]
    pub ppo_epochs: Option<usize>,
    /// Rollouts per optimizer update (default: all of a step's).
    #[arg(long)]
    pub mini_batch: Option<usize>,
    /// Tokens per forward/backward pass: each update runs as micro-batches of at most
    /// this many tokens, gradients accumulated (verl's ppo_max_token_len_per_gpu);
    /// default: the largest the device's memory plan allows (16,384 on the CPU).
    #[arg(long)]
    pub micro_batch_tokens: Option<usize>,
    /// Positions the rollouts' paged KV cache holds (vLLM's KV-cache budget): fewer
    /// sequences decode at once, the completions are the same; default: what the
    /// device's memory plan leaves free (every sequence at full length on the CPU).
    #[arg(long)]
    pub kv_cache_tokens: Option<usize>,
    #[arg(long)]
    pub clip_low: Option<f64>,
    #[arg(long)]
    pub clip_high: Option<f64>,
    /// Dual-clip constant for negative advantages (0 disables).
    #[arg(long)]
    pub clip_c: Option<f64>,
    /// Weight of the KL term (--rollouts: needs ref_logprobs in the file).
    #[arg(long)]
    pub kl_coef: Option<f64>,
    /// k1 | k2 | k3 | low-var-kl
    #[arg(long)]
    pub kl_type: Option<String>,
    #[arg(long)]
    pub entropy_coef: Option<f64>,
    #[arg(long)]
    pub eval_every: Option<usize>,
    #[arg(long)]
    pub eval_size: Option<usize>,
    #[arg(long)]
    pub save_every: Option<usize>,
    #[arg(long)]
    pub keep_checkpoints: Option<usize>,
    /// Stop after this many steps in a row with a non-finite loss or gradient.
    #[arg(long)]
    pub max_bad_steps: Option<usize>,
    /// Qwen3 chat prompts with thinking on.
    #[arg(long)]
    pub thinking: bool,
    #[arg(long)]
    pub arith_digits: Option<u32>,
    #[arg(long)]
    pub arith_ops: Option<String>,
    /// Operands per arith problem (default 2); more chain them with a worked solution.
    #[arg(long)]
    pub arith_terms: Option<usize>,
    /// External multi-turn environment: a command speaking JSON lines on stdio
    /// (see examples/envs/README.md).
    #[arg(long)]
    pub env: Option<String>,
    /// Turns per episode of a multi-turn environment.
    #[arg(long)]
    pub max_turns: Option<usize>,
    /// Time limit in seconds of each reply of an --env environment (default 60);
    /// a failing environment is restarted once per step (examples/envs/README.md).
    #[arg(long, value_name = "SECONDS")]
    pub env_timeout: Option<f64>,
    /// GiGPO weight w of the step-level advantage.
    #[arg(long)]
    pub gigpo_step_weight: Option<f64>,
    /// GiGPO discount of step returns.
    #[arg(long)]
    pub gamma: Option<f64>,
    /// GiGPO normalisation: mean_norm | mean_std_norm
    #[arg(long)]
    pub gigpo_mode: Option<String>,
    /// sweep.json whose contributions pick the layers of --train-layer top-K.
    #[arg(long)]
    pub from_sweep: Option<PathBuf>,
    /// Scale each trained layer's learning rate by its contribution (with --from-sweep):
    /// lr_l = lr * max(C_l, 0) / max C over the trained layers (C <= 0: frozen).
    #[arg(long)]
    pub lr_by_contribution: bool,
    #[command(flatten)]
    pub reward: super::reward::RewardFnArgs,
}

impl Args {
    fn flags(&self) -> RunSettings {
        RunSettings {
            model: self.model.clone(),
            device: self.device.clone(),
            task: self.task.clone(),
            data: self.data.clone(),
            eval_data: self.eval_data.clone(),
            train_layer: self.train_layer.clone(),
            steps: self.steps,
            prompts_per_step: self.prompts_per_step,
            group_size: self.group_size,
            max_new_tokens: self.max_new_tokens,
            temperature: self.temperature,
            top_p: self.top_p,
            top_k: self.top_k,
            seed: self.seed,
            algo: self.algo.clone(),
            loss_agg: self.loss_agg.clone(),
            optimizer: self.optimizer.clone(),
            lr: self.lr,
            weight_decay: self.weight_decay,
            grad_clip: self.grad_clip,
            ppo_epochs: self.ppo_epochs,
            mini_batch: self.mini_batch,
            micro_batch_tokens: self.micro_batch_tokens,
            kv_cache_tokens: self.kv_cache_tokens,
            clip_low: self.clip_low,
            clip_high: self.clip_high,
            clip_c: self.clip_c,
            kl_coef: self.kl_coef,
            kl_type: self.kl_type.clone(),
            entropy_coef: self.entropy_coef,
            eval_every: self.eval_every,
            eval_size: self.eval_size,
            save_every: self.save_every,
            keep_checkpoints: self.keep_checkpoints,
            max_bad_steps: self.max_bad_steps,
            thinking: self.thinking.then_some(true),
            arith_digits: self.arith_digits,
            arith_ops: self.arith_ops.clone(),
            env: self.env.clone(),
            max_turns: self.max_turns,
            env_timeout: self.env_timeout,
            gigpo_step_weight: self.gigpo_step_weight,
            gamma: self.gamma,
            gigpo_mode: self.gigpo_mode.clone(),
            from_sweep: self.from_sweep.clone(),
            lr_by_contribution: self.lr_by_contribution.then_some(true),
            reward_fn: self.reward.reward_fn.clone(),
            reward_fn_style: self.reward.reward_fn_style.clone(),
            reward_workers: self.reward.reward_workers,
            reward_timeout: self.reward.reward_timeout,
            arith_terms: self.arith_terms,
        }
    }
}

pub fn run(a: Args) -> Result<()> {
    let flags = a.flags();
    let file = match (&a.resume, &a.config) {
        (Some(dir), _) => RunSettings::from_toml_file(&dir.join("config.toml"))?,
        (None, Some(p)) => RunSettings::from_toml_file(p)?,
        (None, None) => RunSettings::default(),
    };
    let mut given = file.overlay(&flags);
    let has_data = given.data.is_some();
    super::reward::infer_task(&mut given, has_data);
    let settings = RunSettings::resolve(&given);
    if let Some(path) = &a.rollouts {
        return from_rollouts(&settings, path, a.out.as_deref());
    }
    let out = match (&a.resume, &a.out) {
        (Some(dir), _) => dir.clone(),
        (None, Some(o)) => o.clone(),
        (None, None) => PathBuf::from("runs").join(timestamp()),
    };
    let device = settings.device.clone().unwrap_or_else(|| "auto".into());
    let _ = ctrlc::set_handler(|| {
        if INTERRUPTED.swap(true, std::sync::atomic::Ordering::SeqCst) {
            std::process::exit(130);
        }
        eprintln!("\nCtrl-C: finishing this step and saving a checkpoint (again to quit now)");
    });
    with_backend(
        &device,
        RlJob {
            settings,
            out,
            resume: a.resume.is_some(),
        },
    )
}

struct RlJob {
    settings: RunSettings,
    out: PathBuf,
    resume: bool,
}

/// A model, its codec, and its directory (None for the demo model).
pub type Built<B> = (Model<B>, Box<dyn TextCodec>, Option<PathBuf>);

/// Before the first allocation on a device that reports its memory: refuse a run
/// whose plan does not fit, naming the largest term and the flag that shrinks it.
fn preflight_run<B: Backend>(s: &RunSettings, dir: &std::path::Path, backend: &B) -> Result<()> {
    let Some((free, _)) = backend.memory_info() else {
        return Ok(());
    };
    let cfg = onelayer::config::ModelConfig::from_file(&dir.join("config.json"))?;
    let n = cfg.num_hidden_layers;
    let spec = s.train_layer.clone().unwrap_or_else(|| (n / 2).to_string());
    let layers = match onelayer::train::TrainLayers::parse(&spec, n) {
        Ok(l) => l,
        Err(_) => return Ok(()), // top-K and bad specs are reported where they are resolved
    };
    let input = onelayer::train::PlanInput {
        kv_cache_tokens: s.kv_cache_tokens,
        ..onelayer::train::run_plan_input(
            s.prompts_per_step.unwrap_or(8),
            s.group_size.unwrap_or(8),
            s.max_new_tokens.unwrap_or(512),
            s.optimizer.as_deref() != Some("sgd"),
        )
    };
    let total = backend.memory_info().map(|(_, t)| t);
    let input = onelayer::train::fit_to_device(&cfg, &layers, input, s.micro_batch_tokens, total);
    let plan = onelayer::train::MemoryPlan::new(&cfg, &layers, input);
    onelayer::train::preflight(&plan, free, &backend.name())
}

/// The model and codec a run's settings name: `--model` loaded from disk, or the
/// built-in demo model (seeded, so the same settings give the same weights).
pub fn build_model<B: Backend>(s: &RunSettings, backend: B) -> Result<Built<B>> {
    let multi_turn = onelayer::env::is_env_task(s.task.as_deref(), s.env.as_deref());
    let kind = if multi_turn {
        None
    } else {
        Some(TaskKind::parse(s.task.as_deref().unwrap_or("arith"))?)
    };
    // `random:SHAPE`: a built-in shape with random weights and the demo's character
    // vocabulary (what `engine sft --train-embeddings` pretrains from).
    let random_shape = s.model.as_deref().and_then(|m| m.strip_prefix("random:"));
    if let Some(shape) = random_shape {
        let codec = CharCodec::new(arith::ALPHABET, arith::END);
        let mut cfg = builtin(shape).ok_or_else(|| {
            Error::invalid(format!(
                "--model random:{shape}: no built-in shape of that name (tiny, base, qwen3-4b, ...)"
            ))
        })?;
        cfg.vocab_size = codec.vocab();
        cfg.eos_token_ids = codec.stop_ids().to_vec();
        let model = Model::random(cfg, backend, s.seed.unwrap_or(0) ^ 0x0de0)?;
        return Ok((model, Box::new(codec), None));
    }
    if s.model.is_none() && multi_turn {
        // The multi-turn demo learns from scratch on the tiny shape (random weights).
        return build_model(
            &RunSettings {
                model: Some("random:tiny".into()),
                ..s.clone()
            },
            backend,
        );
    }
    match &s.model {
        None => {
            if let Some(kind) = kind.filter(|&k| k != TaskKind::Arith && k != TaskKind::Custom) {
                return Err(Error::invalid(format!(
                    "--task {kind}: the built-in demo model only speaks the arith task (and custom rows in its alphabet) and the guess environment; give --model"
                )));
            }
            // The built-in pretrained base (onelayer::model::base, assets/base).
            let codec = CharCodec::new(arith::ALPHABET, arith::END);
            let model = Model::load(&onelayer::model::base::base_dir()?, backend)?;
            if model.cfg.vocab_size != codec.vocab() {
                return Err(Error::invalid(
                    "the built-in base model does not match the arith alphabet (rebuild assets/base)",
                ));
            }
            Ok((model, Box::new(codec), None))
        }
        Some(name) => {
            let dir = resolve_model(name)?;
            preflight_run(s, &dir, &backend)?;
            let model = Model::load(&dir, backend)?;
            let tokenizer = load_tokenizer(&dir)?;
            let mut stop = stop_token_ids(&dir, &model.cfg.eos_token_ids)?;
            let template = kind.is_none_or(|k| k.uses_chat_template()).then(|| {
                let t = match model.cfg.family {
                    Family::Qwen3 => "qwen3",
                    Family::Qwen2 => "qwen2",
                };
                ChatTemplate::detect(&dir, t)
            });
            if let Some(id) = tokenizer.token_id("<|im_end|>") {
                if template.is_some() && !stop.contains(&id) {
                    stop.push(id);
                }
            }
            let codec = ChatCodec {
                tokenizer,
                template,
                enable_thinking: s.thinking.unwrap_or(false),
                stop,
            };
            Ok((model, Box::new(codec), Some(dir)))
        }
    }
}

/// Replace the layers' weights with those of a run's `trained.safetensors` (HF
/// names `model.layers.N.*`).
pub fn apply_trained<B: Backend>(model: &mut Model<B>, path: &Path) -> Result<Vec<usize>> {
    let files = onelayer::weights::WeightFiles::open_files(&[path.to_path_buf()])?;
    let mut layers = Vec::new();
    for spec in (0..model.cfg.num_hidden_layers)
        .flat_map(|l| onelayer::model::layer_param_specs(&model.cfg, l))
    {
        if !files.contains(&spec.name) {
            continue;
        }
        let values = files.get_f32(&spec.name, &spec.shape)?;
        let rest = spec
            .name
            .strip_prefix("model.layers.")
            .expect("layer names");
        let (l, suffix) = rest.split_once('.').expect("layer names");
        let l: usize = l.parse().expect("layer index");
        let be = &model.backend;
        let buf = be.upload(&values)?;
        for (name, dst) in model.weights.layers[l].tensors_mut() {
            if name == suffix {
                *dst = buf;
                break;
            }
        }
        if !layers.contains(&l) {
            layers.push(l);
        }
    }
    // The embedding, head and final norm of an SFT run with --train-embeddings.
    let (h, v) = (model.cfg.hidden_size, model.cfg.vocab_size);
    let w = &mut model.weights;
    for (name, shape, dst) in [
        ("model.embed_tokens.weight", vec![v, h], Some(&mut w.embed)),
        ("lm_head.weight", vec![v, h], w.lm_head.as_mut()),
        ("model.norm.weight", vec![h], Some(&mut w.norm)),
    ] {
        if let (true, Some(dst)) = (files.contains(name), dst) {
            *dst = model.backend.upload(&files.get_f32(name, &shape)?)?;
        }
    }
    if layers.is_empty() {
        return Err(Error::file(
            path,
            "holds no decoder-layer tensor of this model",
        ));
    }
    Ok(layers)
}

impl BackendJob for RlJob {
    fn run<B: Backend>(self, backend: B) -> Result<()> {
        let s = &self.settings;
        let (model, codec, _) = build_model(s, backend)?;
        if s.model.is_none() {
            let task = match (&s.env, s.task.as_deref()) {
                (Some(cmd), _) => format!("the environment '{cmd}'"),
                (None, Some("guess")) => "the guess environment".into(),
                (None, t) => format!("the {} task", t.unwrap_or("arith")),
            };
            let which = if onelayer::env::is_env_task(s.task.as_deref(), s.env.as_deref()) {
                "the built-in tiny model (random weights, character vocabulary)"
            } else {
                "RL post-training of the built-in pretrained base (character vocabulary; docs/base-model.md)"
            };
            eprintln!(
                "demo: {which}, a Qwen3-architecture model of {} layers, on {task}",
                model.cfg.num_hidden_layers
            );
        }
        eprintln!("run directory: {}", self.out.display());
        let summary = run_rl(model, codec.as_ref(), s, &self.out, self.resume)?;
        let first = summary.rewards.first().map(|r| r.1).unwrap_or(f64::NAN);
        let last: Vec<f64> = summary.rewards.iter().rev().take(5).map(|r| r.1).collect();
        let last = last.iter().sum::<f64>() / last.len().max(1) as f64;
        eprintln!(
            "done: {} steps; mean reward {first:.3} at the first step, {last:.3} over the last 5; {}/metrics.jsonl, reward.svg, trained.safetensors",
            summary.steps_done,
            self.out.display()
        );
        Ok(())
    }
}

/// `runs/` names: UTC `YYYYMMDD-HHMMSS`.
pub fn timestamp() -> String {
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let (days, rem) = (secs / 86_400, secs % 86_400);
    // Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
    let z = days as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{y:04}{m:02}{d:02}-{:02}{:02}{:02}",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

fn from_rollouts(s: &RunSettings, path: &Path, out: Option<&Path>) -> Result<()> {
    let model = s.model.clone().ok_or_else(|| {
        Error::invalid("--rollouts needs --model (the model the rollouts came from)")
    })?;
    let layer = s
        .train_layer
        .clone()
        .ok_or_else(|| Error::invalid("--rollouts needs --train-layer"))?;
    let out = out
        .ok_or_else(|| Error::invalid("--rollouts needs --out DIR"))?
        .to_path_buf();
    let steps = s.steps.unwrap_or(1);
    if steps == 0 {
        return Err(Error::invalid("--steps must be at least 1"));
    }
    let cfg = train_config(s)?;
    let rollouts = read_rollouts(path)?;
    std::fs::create_dir_all(&out).map_err(|e| Error::file(&out, e))?;
    let dir = resolve_model(&model)?;
    let device = s.device.clone().unwrap_or_else(|| "auto".into());
    with_backend(
        &device,
        RolloutJob {
            dir,
            cfg,
            rollouts,
            layer,
            steps,
            out,
            temperature: s.temperature.unwrap_or(1.0),
            settings: s.clone(),
        },
    )
}

struct RolloutJob {
    dir: PathBuf,
    cfg: onelayer::train::TrainConfig,
    rollouts: Vec<Rollout>,
    layer: String,
    steps: usize,
    out: PathBuf,
    /// The temperature the rollouts were sampled at (the logits are divided by it).
    temperature: f32,
    /// For `--train-layer top-K --from-sweep` and `--lr-by-contribution`.
    settings: RunSettings,
}

impl BackendJob for RolloutJob {
    fn run<B: Backend>(self, backend: B) -> Result<()> {
        let model = Model::load(&self.dir, backend)?;
        let layers = onelayer::sweep::select::train_layers(
            &self.settings,
            &self.layer,
            model.cfg.num_hidden_layers,
        )?;
        let mut trainer = Trainer::new(model, &layers, self.cfg)?;
        trainer.set_temperature(self.temperature)?;
        let metrics_path = self.out.join("metrics.jsonl");
        let mut metrics =
            std::fs::File::create(&metrics_path).map_err(|e| Error::file(&metrics_path, e))?;
        for step in 1..=self.steps {
            let t0 = Instant::now();
            let s = trainer.step(&self.rollouts)?;
            trainer.model().backend.synchronize()?;
            let secs = t0.elapsed().as_secs_f64();
            writeln!(metrics, "{}", metrics_line(step, &s, secs, &layers))
                .map_err(|e| Error::file(&metrics_path, e))?;
            eprintln!(
                "step {step}/{}: loss {:.5} grad_norm {:.4} clip_frac {:.3} entropy {:.3} reward {:.3} ({:.0} tok/s)",
                self.steps,
                s.loss,
                s.grad_norm,
                s.clip_frac,
                s.entropy,
                s.reward_mean,
                s.tokens as f64 * trainer.config().ppo_epochs as f64 / secs.max(1e-9)
            );
        }
        let params = trainer.trained_params()?;
        let path = self.out.join("trained.safetensors");
        onelayer::weights::write_f32(&path, &params)?;
        eprintln!("wrote {} ({} tensors)", path.display(), params.len());
        Ok(())
    }
}

fn metrics_line(step: usize, s: &StepStats, secs: f64, layers: &TrainLayers) -> serde_json::Value {
    json!({
        "step": step,
        "train_layers": layers.layers(),
        "loss": finite(s.loss),
        "grad_norm": finite(s.grad_norm),
        "clip_frac": s.clip_frac,
        "entropy": s.entropy,
        "kl": s.kl,
        "ratio_mean": s.ratio_mean,
        "reward_mean": s.reward_mean,
        "adv_abs_mean": s.adv_abs_mean,
        "tokens": s.tokens,
        "loss_tokens": s.loss_tokens,
        "updates": s.updates,
        "skipped_updates": s.skipped,
        "step_seconds": secs,
    })
}
