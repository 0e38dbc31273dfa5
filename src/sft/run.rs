//! Examples: `--data` JSONL (`data.rs`), or with `--task arith` the generated task's
//! problems with their worked solutions, evaluated on the held-out set `engine run`
//! uses for the same seed (greedy accuracy beside the loss).
//!
//! The SFT loop: each step takes `batch_size` examples (a seeded permutation per
//! pass over the data, `sampling::step_problems`), one optimizer update of the
//! trained layers on their token-mean cross-entropy (micro-batched by
//! `micro_batch_tokens`); held-out loss every `eval_every` steps (and before the
//! first); checkpoints every `save_every` and at the end. A resumed run continues
//! exactly as the uninterrupted one (same examples, same state). With
//! `train_embeddings` the embedding, LM head and final norm train too
//! (`Trainer::with_embeddings`), and trained.safetensors holds them.

use super::data::{self, Example, LossOn};
use super::settings::SftSettings;
use crate::backend::cpu::loss::LossAgg;
use crate::backend::{Backend, LossConfig};
use crate::codec::TextCodec;
use crate::model::Model;
use crate::plot::loss_svg;
use crate::sampling::{step_problems, SamplingParams};
use crate::tasks::arith::{self, ArithOptions};
use crate::tasks::{Rewarder, TaskKind};
use crate::train::{
    checkpoint, AdamW, Algo, Optimizer, TrainConfig, TrainLayers, Trainer, INTERRUPTED,
};
use crate::{Error, Result};
use serde_json::json;
use std::io::Write;
use std::path::Path;
use std::sync::atomic::Ordering;
use std::time::Instant;

/// What a finished SFT run reports.
#[derive(Debug, Clone, Default)]
pub struct SftSummary {
    pub steps_done: usize,
    /// Training loss of each step run in this process.
    pub losses: Vec<(usize, f64)>,
    /// Held-out loss at each evaluation (step 0: before training).
    pub evals: Vec<(usize, f64)>,
    pub interrupted: bool,
}

fn positive(flag: &str, v: Option<usize>) -> Result<usize> {
    match v {
        Some(v) if v > 0 => Ok(v),
        _ => Err(Error::invalid(format!("--{flag} must be at least 1"))),
    }
}

/// The trainer's settings for SFT: cross-entropy, token-mean over the batch.
fn train_config(s: &SftSettings, longest: usize) -> Result<TrainConfig> {
    let lr = s.lr.unwrap_or(1e-5);
    let weight_decay = s.weight_decay.unwrap_or(0.0);
    let optimizer = match s.optimizer.as_deref().unwrap_or("adamw") {
        "adamw" => Optimizer::AdamW(AdamW {
            lr,
            weight_decay,
            ..AdamW::default()
        }),
        "sgd" => Optimizer::Sgd { lr, weight_decay },
        other => {
            return Err(Error::invalid(format!(
                "--optimizer '{other}': expected adamw or sgd"
            )))
        }
    };
    let cfg = TrainConfig {
        algo: Algo::Grpo,
        loss: LossConfig::cross_entropy(),
        loss_agg: LossAgg::TokenMean,
        max_new_tokens: longest.max(1),
        optimizer,
        grad_clip: s.grad_clip.unwrap_or(1.0),
        ppo_epochs: 1,
        mini_batch: None,
        micro_batch_tokens: Some(s.micro_batch_tokens.unwrap_or(16_384)),
        keep_prefix: false,
    };
    cfg.validate()?;
    Ok(cfg)
}

/// Run (or, with `resume`, continue) SFT in `out`; `s` resolved (defaults applied).
pub fn run_sft<B: Backend>(
    model: Model<B>,
    codec: &dyn TextCodec,
    s: &SftSettings,
    out: &Path,
    resume: bool,
) -> Result<SftSummary> {
    let loss_on = LossOn::parse(s.loss_on.as_deref().unwrap_or("completion"))?;
    let max_len = positive("max-seq-len", s.max_seq_len)?;
    let steps = positive("steps", s.steps)?;
    let batch = positive("batch-size", s.batch_size)?;
    let seed = s.seed.unwrap_or(0);
    let (train, eval, eval_problems) = match (s.task.as_deref(), s.data.as_deref()) {
        (Some("arith"), None) => {
            let arith = |seed: u64, count: usize| ArithOptions {
                seed,
                count,
                max_digits: s.arith_digits.unwrap_or(2),
                ops: s.arith_ops.clone().unwrap_or_else(|| "+-".into()),
                allow_negative: false,
                terms: s.arith_terms.unwrap_or(2),
            };
            let train = arith::generate(&arith(seed, s.train_size.unwrap_or(50_000)))?;
            // The held-out set `engine run` evaluates on for the same seed.
            let held_out =
                arith::generate(&arith(arith::HELD_OUT_SEED, s.eval_size.unwrap_or(200)))?;
            (
                data::arith_examples(&train, codec, max_len)?,
                data::arith_examples(&held_out, codec, max_len)?,
                held_out,
            )
        }
        (Some("arith"), Some(p)) => {
            return Err(Error::invalid(format!(
                "--data {}: --task arith generates its examples",
                p.display()
            )))
        }
        (Some(t), _) => {
            return Err(Error::invalid(format!(
                "--task {t}: engine sft generates only arith; give --data FILE.jsonl"
            )))
        }
        (None, Some(path)) => {
            let eval = match &s.eval_data {
                Some(p) => data::load(p, codec, loss_on, max_len)?,
                None => Vec::new(),
            };
            (data::load(path, codec, loss_on, max_len)?, eval, Vec::new())
        }
        (None, None) => {
            return Err(Error::invalid(
                "--data: engine sft needs its examples (JSONL), or --task arith",
            ))
        }
    };
    let vocab = model.cfg.vocab_size;
    for (what, set) in [("--data", &train), ("--eval-data", &eval)] {
        if let Some(bad) = set
            .iter()
            .flat_map(|e| e.prompt_ids.iter().chain(&e.completion_ids))
            .find(|&&t| t as usize >= vocab)
        {
            return Err(Error::invalid(format!(
                "{what}: token {bad} is outside the model's vocabulary of {vocab}"
            )));
        }
    }
    let n_layers = model.cfg.num_hidden_layers;
    let spec = s
        .train_layer
        .clone()
        .unwrap_or_else(|| (n_layers / 2).to_string());
    let layers = TrainLayers::parse(&spec, n_layers)?;
    let longest = train
        .iter()
        .map(|e| e.completion_ids.len())
        .max()
        .unwrap_or(1);
    let mut trainer = Trainer::new(model, &layers, train_config(s, longest)?)?;
    if s.train_embeddings == Some(true) {
        trainer = trainer.with_embeddings()?;
    }

    std::fs::create_dir_all(out).map_err(|e| Error::file(out, e))?;
    let cfg_path = out.join("config.toml");
    std::fs::write(&cfg_path, s.to_toml()).map_err(|e| Error::file(&cfg_path, e))?;
    let start = checkpoint::resume_from(out, &mut trainer, resume)?;
    let (metrics_path, mut metrics, mut train_curve, mut eval_curve) =
        checkpoint::open_metrics(out, start, ("loss", "eval_loss"))?;
    let mut summary = SftSummary {
        steps_done: start,
        ..SftSummary::default()
    };
    let eval_every = s.eval_every.unwrap_or(0);
    let eval_new = eval
        .iter()
        .map(|e| e.completion_ids.len())
        .max()
        .unwrap_or(1);
    // Greedy accuracy of a generated task's held-out problems, with its loss.
    let accuracy = |model: &Model<B>| -> Result<Option<f64>> {
        if eval_problems.is_empty() {
            return Ok(None);
        }
        let r = crate::rl::eval::evaluate(
            model,
            codec,
            TaskKind::Arith,
            &Rewarder::default(),
            &eval_problems,
            1,
            eval_new,
            SamplingParams::default(),
            seed,
        )?;
        Ok(Some(r.accuracy))
    };
    let run_start = Instant::now();
    if start == 0 && !eval.is_empty() && eval_every > 0 {
        let l = eval_loss(trainer.model(), &eval)?;
        let acc = accuracy(trainer.model())?;
        eprintln!(
            "[   0/{steps}] eval loss {l:.4}{} (before training)",
            acc_note(acc)
        );
        let mut line = json!({"step": 0, "eval_loss": l});
        if let Some(a) = acc {
            line["eval_accuracy"] = json!(a);
        }
        writeln!(metrics, "{line}").map_err(|e| Error::file(&metrics_path, e))?;
        eval_curve.push((0, l));
        summary.evals.push((0, l));
    }
    for step in start + 1..=steps {
        let t0 = Instant::now();
        let examples: Vec<Example> = step_problems(train.len(), batch, seed, step)
            .into_iter()
            .map(|i| train[i].clone())
            .collect();
        let stats = trainer.step(&examples)?;
        trainer.model().backend.synchronize()?;
        let secs = t0.elapsed().as_secs_f64();
        let mut line = json!({
            "step": step,
            "loss": crate::rl::run::finite(stats.loss),
            "grad_norm": crate::rl::run::finite(stats.grad_norm),
            "entropy": stats.entropy,
            "tokens": stats.tokens,
            "loss_tokens": stats.loss_tokens,
            "train_tokens_per_s": stats.tokens as f64 / secs.max(1e-9),
            "skipped_updates": stats.skipped,
            "lr": trainer.config().optimizer.lr(),
            "elapsed_seconds": run_start.elapsed().as_secs_f64(),
        });
        let mut note = String::new();
        if !eval.is_empty() && eval_every > 0 && (step % eval_every == 0 || step == steps) {
            let l = eval_loss(trainer.model(), &eval)?;
            let acc = accuracy(trainer.model())?;
            line["eval_loss"] = json!(l);
            if let Some(a) = acc {
                line["eval_accuracy"] = json!(a);
            }
            eval_curve.push((step, l));
            summary.evals.push((step, l));
            note = format!(" eval loss {l:.4}{}", acc_note(acc));
        }
        writeln!(metrics, "{line}").map_err(|e| Error::file(&metrics_path, e))?;
        train_curve.push((step, stats.loss));
        summary.losses.push((step, stats.loss));
        summary.steps_done = step;
        let svg = out.join("loss.svg");
        let title = format!("sft — {}", out.display());
        std::fs::write(&svg, loss_svg(&train_curve, &eval_curve, &title))
            .map_err(|e| Error::file(&svg, e))?;
        eprintln!(
            "[{step:>4}/{steps}] loss {:.4}{note} |g| {:.3} | {:.0} tok/s",
            stats.loss,
            stats.grad_norm,
            stats.tokens as f64 / secs.max(1e-9)
        );
        let save_every = s.save_every.unwrap_or(0);
        let interrupted = INTERRUPTED.load(Ordering::SeqCst);
        if (save_every > 0 && step % save_every == 0) || step == steps || interrupted {
            checkpoint::save(out, step, &trainer, s.keep_checkpoints.unwrap_or(3))?;
        }
        if interrupted {
            eprintln!(
                "interrupted: checkpoint saved after step {step}; --resume {} continues",
                out.display()
            );
            summary.interrupted = true;
            break;
        }
    }
    crate::weights::write_f32(&out.join("trained.safetensors"), &trainer.trained_params()?)?;
    Ok(summary)
}

fn acc_note(acc: Option<f64>) -> String {
    acc.map(|a| format!(" accuracy {a:.3}")).unwrap_or_default()
}

/// Mean cross-entropy per loss token of `examples` under the model's current weights.
pub fn eval_loss<B: Backend>(model: &Model<B>, examples: &[Example]) -> Result<f64> {
    let (mut sum, mut n) = (0.0f64, 0usize);
    for chunk in examples.chunks(32) {
        let seqs: Vec<Vec<u32>> = chunk
            .iter()
            .map(|e| {
                e.prompt_ids
                    .iter()
                    .chain(&e.completion_ids)
                    .copied()
                    .collect()
            })
            .collect();
        for (e, lp) in chunk.iter().zip(model.score(&seqs)?) {
            let first = e.prompt_ids.len() - 1;
            for &v in &lp[first..] {
                sum -= v as f64;
                n += 1;
            }
        }
    }
    Ok(sum / n.max(1) as f64)
}
