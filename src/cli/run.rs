//! `engine run`: train the selected layers. With `--rollouts FILE.jsonl` it trains
//! from a rollout file without generating (each step uses every record, split into
//! `--mini-batch` updates, `--ppo-epochs` times), writing `OUT/trained.safetensors`
//! (the trained parameters, f32, HF names) and `OUT/metrics.jsonl` (one line a step).

use super::{ModelArgs, ModelJob};
use onelayer::backend::cpu::loss::LossAgg;
use onelayer::backend::{Backend, LossConfig};
use onelayer::model::Model;
use onelayer::train::config::{parse_kl_type, parse_loss_agg};
use onelayer::train::{
    read_rollouts, AdamW, Algo, Optimizer, Rollout, StepStats, TrainConfig, TrainLayers, Trainer,
};
use onelayer::{Error, Result};
use serde_json::json;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Instant;

#[derive(clap::Args, Debug)]
pub struct Args {
    #[command(flatten)]
    pub model: ModelArgs,
    /// Layers to train: 18, 17,18, 16-19 or all.
    #[arg(long)]
    pub train_layer: String,
    /// Train on these rollouts (JSONL: group, prompt_ids, completion_ids, reward, and
    /// optionally old_logprobs, ref_logprobs) instead of generating.
    #[arg(long)]
    pub rollouts: PathBuf,
    /// Training steps (each uses every rollout in the file).
    #[arg(long, default_value_t = 1)]
    pub steps: usize,
    /// Output directory (trained.safetensors, metrics.jsonl).
    #[arg(long)]
    pub out: PathBuf,
    /// grpo (group-normalised advantages, token-mean) or dr-grpo (no std,
    /// seq-mean-token-sum-norm).
    #[arg(long, default_value = "grpo")]
    pub algo: String,
    /// token-mean | seq-mean-token-mean | seq-mean-token-sum-norm (default: the algorithm's).
    #[arg(long)]
    pub loss_agg: Option<String>,
    /// adamw | sgd
    #[arg(long, default_value = "adamw")]
    pub optimizer: String,
    #[arg(long, default_value_t = 1e-6)]
    pub lr: f32,
    #[arg(long, default_value_t = 0.01)]
    pub weight_decay: f32,
    #[arg(long, default_value_t = 0.9)]
    pub beta1: f32,
    #[arg(long, default_value_t = 0.999)]
    pub beta2: f32,
    #[arg(long, default_value_t = 1e-8)]
    pub adam_eps: f32,
    /// Clip the global gradient norm to this (0 disables).
    #[arg(long, default_value_t = 1.0)]
    pub grad_clip: f32,
    /// The divisor of seq-mean-token-sum-norm (and the generation limit of `run`).
    #[arg(long, default_value_t = 1024)]
    pub max_new_tokens: usize,
    #[arg(long, default_value_t = 1)]
    pub ppo_epochs: usize,
    /// Rollouts per optimizer update (default: all of them).
    #[arg(long)]
    pub mini_batch: Option<usize>,
    #[arg(long, default_value_t = 0.2)]
    pub clip_low: f64,
    #[arg(long, default_value_t = 0.2)]
    pub clip_high: f64,
    /// Dual-clip constant for negative advantages (0 disables).
    #[arg(long, default_value_t = 3.0)]
    pub clip_c: f64,
    /// Weight of the KL term (needs ref_logprobs in the rollouts).
    #[arg(long, default_value_t = 0.0)]
    pub kl_coef: f64,
    /// k1 | k2 | k3 | low-var-kl
    #[arg(long, default_value = "k3")]
    pub kl_type: String,
    #[arg(long, default_value_t = 0.0)]
    pub entropy_coef: f64,
}

impl Args {
    fn train_config(&self) -> Result<TrainConfig> {
        let algo = Algo::parse(&self.algo)?;
        let loss_agg: LossAgg = match &self.loss_agg {
            Some(s) => parse_loss_agg(s)?,
            None => TrainConfig::default_agg(algo),
        };
        let optimizer = match self.optimizer.as_str() {
            "adamw" => Optimizer::AdamW(AdamW {
                lr: self.lr,
                beta1: self.beta1,
                beta2: self.beta2,
                eps: self.adam_eps,
                weight_decay: self.weight_decay,
            }),
            "sgd" => Optimizer::Sgd {
                lr: self.lr,
                weight_decay: self.weight_decay,
            },
            other => {
                return Err(Error::invalid(format!(
                    "--optimizer '{other}': expected adamw or sgd"
                )))
            }
        };
        if let Optimizer::AdamW(a) = optimizer {
            for (flag, v) in [("--beta1", a.beta1), ("--beta2", a.beta2)] {
                if !(0.0..1.0).contains(&v) {
                    return Err(Error::invalid(format!("{flag} {v} must be in [0, 1)")));
                }
            }
            if !(a.eps > 0.0) {
                return Err(Error::invalid("--adam-eps must be positive"));
            }
        }
        let cfg = TrainConfig {
            algo,
            loss: LossConfig {
                eps_low: self.clip_low,
                eps_high: self.clip_high,
                clip_c: (self.clip_c != 0.0).then_some(self.clip_c),
                kl: parse_kl_type(&self.kl_type)?,
                beta: self.kl_coef,
                entropy_coef: self.entropy_coef,
            },
            loss_agg,
            max_new_tokens: self.max_new_tokens,
            optimizer,
            grad_clip: self.grad_clip,
            ppo_epochs: self.ppo_epochs,
            mini_batch: self.mini_batch,
        };
        cfg.validate()?;
        Ok(cfg)
    }
}

pub fn run(a: Args) -> Result<()> {
    if a.steps == 0 {
        return Err(Error::invalid("--steps must be at least 1"));
    }
    let cfg = a.train_config()?;
    let rollouts = read_rollouts(&a.rollouts)?;
    std::fs::create_dir_all(&a.out).map_err(|e| Error::file(&a.out, e))?;
    let job = Job {
        cfg,
        rollouts,
        train_layer: a.train_layer.clone(),
        steps: a.steps,
        out: a.out.clone(),
    };
    a.model.run(job)
}

struct Job {
    cfg: TrainConfig,
    rollouts: Vec<Rollout>,
    train_layer: String,
    steps: usize,
    out: PathBuf,
}

impl ModelJob for Job {
    fn run<B: Backend>(self, _dir: &Path, model: Model<B>) -> Result<()> {
        let layers = TrainLayers::parse(&self.train_layer, model.cfg.num_hidden_layers)?;
        let mut trainer = Trainer::new(model, &layers, self.cfg)?;
        let metrics_path = self.out.join("metrics.jsonl");
        let mut metrics =
            std::fs::File::create(&metrics_path).map_err(|e| Error::file(&metrics_path, e))?;
        for step in 1..=self.steps {
            let t0 = Instant::now();
            let s = trainer.step(&self.rollouts)?;
            trainer.model().backend.synchronize()?;
            let secs = t0.elapsed().as_secs_f64();
            let line = metrics_line(step, &s, secs, &layers);
            writeln!(metrics, "{line}").map_err(|e| Error::file(&metrics_path, e))?;
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

/// JSON has no NaN: non-finite values are written as null.
fn finite(v: f64) -> serde_json::Value {
    if v.is_finite() {
        json!(v)
    } else {
        serde_json::Value::Null
    }
}
