//! The RL loop (DESIGN section 5): each step samples `prompts_per_step` problems
//! (a seeded permutation per pass over the data), generates `group_size`
//! completions each, rewards them, and hands the rollouts to the `Trainer` (old
//! log-probs and the frozen prefix computed once, `ppo_epochs` x mini-batches).
//! With a multi-turn environment a step plays `group_size` episodes of
//! `prompts_per_step` tasks instead (`work.rs`, `episodes.rs`), one rollout per turn.
//! Every `eval_every` steps the held-out set is evaluated; every `save_every` steps
//! and at the end a checkpoint is written. `OUT/metrics.jsonl` gets one line a step,
//! `OUT/reward.svg` is redrawn, `OUT/config.toml` holds the resolved settings.
//!
//! Reproducibility: the problems of step s and the random stream of every sample
//! depend only on (seed, s), so a resumed run (`resume`) continues exactly as the
//! uninterrupted one would (bit-identical on the CPU).

use super::checkpoint;
use super::codec::TextCodec;
use super::eval::EvalResult;
use super::plot::reward_svg;
use super::settings::RunSettings;
use super::work::Work;
use crate::backend::cpu::loss::LossAgg;
use crate::backend::{Backend, LossConfig};
use crate::generate::GenerateParams;
use crate::model::Model;
use crate::sampling::{mix64, SamplingParams};
use crate::tasks::arith::ArithOptions;
use crate::tasks::{self, Problem, TaskKind};
use crate::train::config::{parse_kl_type, parse_loss_agg};
use crate::train::{AdamW, Algo, Optimizer, TrainConfig, TrainLayers, Trainer};
use crate::{Error, Result};
use serde_json::json;
use std::io::Write;
use std::path::Path;
use std::sync::atomic::Ordering;
use std::time::Instant;

pub use crate::train::INTERRUPTED;

/// What a finished run reports.
#[derive(Debug, Clone)]
pub struct RunSummary {
    pub steps_done: usize,
    /// Mean training reward of each step run in this process.
    pub rewards: Vec<(usize, f64)>,
    pub evals: Vec<(usize, EvalResult)>,
    pub interrupted: bool,
}

/// The training settings of `s` (all fields resolved).
pub fn train_config(s: &RunSettings) -> Result<TrainConfig> {
    let algo = Algo::parse(s.algo.as_deref().unwrap_or("grpo"))?;
    let loss_agg: LossAgg = match &s.loss_agg {
        Some(a) => parse_loss_agg(a)?,
        None => TrainConfig::default_agg(algo),
    };
    let lr = s.lr.unwrap_or(1e-6);
    let wd = s.weight_decay.unwrap_or(0.01);
    let optimizer = match s.optimizer.as_deref().unwrap_or("adamw") {
        "adamw" => Optimizer::AdamW(AdamW {
            lr,
            weight_decay: wd,
            ..AdamW::default()
        }),
        "sgd" => Optimizer::Sgd {
            lr,
            weight_decay: wd,
        },
        other => {
            return Err(Error::invalid(format!(
                "--optimizer '{other}': expected adamw or sgd"
            )))
        }
    };
    let clip_c = s.clip_c.unwrap_or(3.0);
    let cfg = TrainConfig {
        algo,
        loss: LossConfig {
            eps_low: s.clip_low.unwrap_or(0.2),
            eps_high: s.clip_high.unwrap_or(0.2),
            clip_c: (clip_c != 0.0).then_some(clip_c),
            kl: parse_kl_type(s.kl_type.as_deref().unwrap_or("k3"))?,
            beta: s.kl_coef.unwrap_or(0.0),
            entropy_coef: s.entropy_coef.unwrap_or(0.0),
            cross_entropy: false,
        },
        loss_agg,
        max_new_tokens: s.max_new_tokens.unwrap_or(512),
        optimizer,
        grad_clip: s.grad_clip.unwrap_or(1.0),
        ppo_epochs: s.ppo_epochs.unwrap_or(1),
        mini_batch: s.mini_batch,
        micro_batch_tokens: s.micro_batch_tokens,
        keep_prefix: true,
    };
    cfg.validate()?;
    Ok(cfg)
}

fn positive(flag: &str, v: Option<usize>) -> Result<usize> {
    match v {
        Some(v) if v > 0 => Ok(v),
        _ => Err(Error::invalid(format!("--{flag} must be at least 1"))),
    }
}

/// The training and held-out problems of the run's task.
pub fn load_problems(s: &RunSettings) -> Result<(TaskKind, Vec<Problem>, Vec<Problem>)> {
    let kind = TaskKind::parse(s.task.as_deref().unwrap_or("arith"))?;
    let seed = s.seed.unwrap_or(0);
    let arith = |seed: u64, count: usize| ArithOptions {
        seed,
        count,
        max_digits: s.arith_digits.unwrap_or(1),
        ops: s.arith_ops.clone().unwrap_or_else(|| "+".into()),
        allow_negative: false,
        terms: s.arith_terms.unwrap_or(2),
    };
    let train = tasks::load(kind, s.data.as_deref(), &arith(seed, 10_000))?;
    if train.is_empty() {
        return Err(Error::invalid("--data: the dataset holds no problems"));
    }
    let eval_size = s.eval_size.unwrap_or(200);
    let eval = match (&s.eval_data, kind) {
        (Some(p), _) => tasks::load(kind, Some(p), &arith(seed, 0))?,
        (None, TaskKind::Arith) => {
            tasks::load(kind, None, &arith(tasks::arith::HELD_OUT_SEED, eval_size))?
        }
        (None, _) => Vec::new(),
    };
    let eval = eval.into_iter().take(eval_size).collect();
    Ok((kind, train, eval))
}

pub use crate::sampling::step_problems;

/// Run (or, with `resume`, continue) the RL loop in `out`. `settings` must be
/// resolved (defaults applied).
pub fn run_rl<B: Backend>(
    model: Model<B>,
    codec: &dyn TextCodec,
    settings: &RunSettings,
    out: &Path,
    resume: bool,
) -> Result<RunSummary> {
    let s = settings;
    let mut work = Work::open(s, codec, super::settings::is_demo_model(s.model.as_deref()))?;
    let train_cfg = train_config(s)?;
    let algo = train_cfg.algo;
    let steps = positive("steps", s.steps)?;
    let per_step = positive("prompts-per-step", s.prompts_per_step)?;
    let group = positive("group-size", s.group_size)?;
    let max_new = positive("max-new-tokens", s.max_new_tokens)?;
    if s.kv_cache_tokens == Some(0) {
        return Err(Error::invalid("--kv-cache-tokens must be at least 1"));
    }
    let sampling = SamplingParams {
        temperature: s.temperature.unwrap_or(1.0),
        top_p: s.top_p.unwrap_or(1.0),
        top_k: s.top_k.unwrap_or(0),
    };
    sampling.validate()?;
    let seed = s.seed.unwrap_or(0);
    let n_layers = model.cfg.num_hidden_layers;
    let layer_spec = s
        .train_layer
        .clone()
        .unwrap_or_else(|| (n_layers / 2).to_string());
    let layers: TrainLayers = crate::sweep::select::train_layers(s, &layer_spec, n_layers)?;

    std::fs::create_dir_all(out).map_err(|e| Error::file(out, e))?;
    let cfg_path = out.join("config.toml");
    std::fs::write(&cfg_path, s.to_toml()).map_err(|e| Error::file(&cfg_path, e))?;
    let mut train_cfg = train_cfg;
    let adamw = matches!(train_cfg.optimizer, crate::train::Optimizer::AdamW(_));
    let memory = model.backend.memory_info().map(|(_, total)| total);
    let input = crate::train::fit_to_device(
        &model.cfg,
        &layers,
        crate::train::PlanInput {
            kv_cache_tokens: s.kv_cache_tokens,
            ..crate::train::run_plan_input(per_step, group, max_new, adamw)
        },
        train_cfg.micro_batch_tokens,
        memory,
    );
    train_cfg.micro_batch_tokens = Some(input.micro_batch_tokens);
    let kv_cache_tokens = input.kv_cache_tokens;
    let mut trainer = Trainer::new(model, &layers, train_cfg)?;
    trainer.set_temperature(sampling.temperature)?;
    let start = checkpoint::resume_from(out, &mut trainer, resume)?;
    let (metrics_path, mut metrics, mut train_curve, mut eval_curve) =
        checkpoint::open_metrics(out, start, ("reward_mean", "eval_accuracy"))?;
    let mut summary = RunSummary {
        steps_done: start,
        rewards: Vec::new(),
        evals: Vec::new(),
        interrupted: false,
    };
    let mut bad_run = 0;
    let run_start = Instant::now();
    let eval_every = s.eval_every.unwrap_or(0);
    let progress = progress_bar(steps, start);
    // The code task's sandbox (`Work::open` printed it), on the first line this run writes.
    let mut sandbox_isolation = match &work {
        Work::Tasks {
            kind: TaskKind::Code,
            ..
        } => tasks::sandbox::isolation().ok().map(|i| i.name()),
        _ => None,
    };
    if start == 0 && work.has_eval() && eval_every > 0 {
        // The base model, so the chart and the log start from it.
        let r = work
            .evaluate(trainer.model(), codec, max_new, sampling, seed, 0)?
            .expect("has_eval");
        progress.suspend(|| {
            eprintln!(
                "[   0/{steps}] eval {:.3}{} (the model before training)",
                r.accuracy,
                dropped_note(r.env_dropped)
            )
        });
        let mut line = json!({"step": 0, "eval_accuracy": r.accuracy});
        if let Some(d) = r.env_dropped {
            line["eval_env_dropped"] = json!(d);
        }
        if let Some(i) = sandbox_isolation.take() {
            line["sandbox_isolation"] = json!(i);
        }
        writeln!(metrics, "{line}").map_err(|e| Error::file(&metrics_path, e))?;
        eval_curve.push((0, r.accuracy));
        summary.evals.push((0, r));
    }
    for step in start + 1..=steps {
        let t0 = Instant::now();
        let gen = GenerateParams {
            max_new_tokens: max_new,
            sampling,
            seed: mix64(seed ^ mix64(step as u64)),
            stop_ids: codec.stop_ids().to_vec(),
            kv_cache_tokens,
        };
        let batch = work.sample(
            trainer.model(),
            codec,
            step,
            per_step,
            group,
            seed,
            &gen,
            algo,
        )?;
        let gen_secs = t0.elapsed().as_secs_f64();
        let rollouts = &batch.rollouts;
        let t1 = Instant::now();
        let stats = trainer.step(rollouts)?;
        trainer.model().backend.synchronize()?;
        let train_secs = t1.elapsed().as_secs_f64();
        if stats.updates == 0 {
            bad_run += 1;
            progress
                .suspend(|| eprintln!("step {step}: loss or gradient not finite, update skipped"));
        } else {
            bad_run = 0;
        }
        let gen_tokens = batch.gen_tokens;
        let mut line = json!({
            "step": step,
            "reward_mean": batch.reward_mean,
            "accuracy": batch.accuracy,
            "loss": finite(stats.loss),
            "grad_norm": finite(stats.grad_norm),
            "clip_frac": stats.clip_frac,
            "entropy": stats.entropy,
            "kl": stats.kl,
            "ratio_mean": stats.ratio_mean,
            "adv_abs_mean": stats.adv_abs_mean,
            "response_length_mean": gen_tokens as f64 / rollouts.len() as f64,
            "rollout_tokens_per_s": gen_tokens as f64 / gen_secs.max(1e-9),
            "train_tokens_per_s": stats.tokens as f64 * trainer.config().ppo_epochs as f64 / train_secs.max(1e-9),
            "rollout_seconds": gen_secs,
            "train_seconds": train_secs,
            "updates": stats.updates,
            "skipped_updates": stats.skipped,
            "lr": trainer.config().optimizer.lr(),
            "elapsed_seconds": run_start.elapsed().as_secs_f64(),
        });
        for (k, v) in &batch.reward_extras {
            line[k.as_str()] = json!(v);
        }
        if let Some(t) = batch.turns_mean {
            line["turns_mean"] = json!(t);
            line["samples"] = json!(rollouts.len());
        }
        if let Some(d) = batch.env_dropped {
            line["env_dropped_episodes"] = json!(d);
        }
        let mut eval_dropped = None;
        if work.has_eval() && eval_every > 0 && (step % eval_every == 0 || step == steps) {
            let r = work
                .evaluate(trainer.model(), codec, max_new, sampling, seed, step)?
                .expect("has_eval");
            line["eval_accuracy"] = json!(r.accuracy);
            if let Some(d) = r.env_dropped {
                line["eval_env_dropped"] = json!(d);
            }
            eval_dropped = r.env_dropped;
            eval_curve.push((step, r.accuracy));
            summary.evals.push((step, r));
        }
        if let Some(i) = sandbox_isolation.take() {
            line["sandbox_isolation"] = json!(i);
        }
        writeln!(metrics, "{line}").map_err(|e| Error::file(&metrics_path, e))?;
        train_curve.push((step, batch.reward_mean));
        summary.rewards.push((step, batch.reward_mean));
        summary.steps_done = step;
        let svg_path = out.join("reward.svg");
        std::fs::write(
            &svg_path,
            reward_svg(
                &train_curve,
                &eval_curve,
                &format!("{} — {}", work.title(), out.display()),
            ),
        )
        .map_err(|e| Error::file(&svg_path, e))?;
        let eval_note = line
            .get("eval_accuracy")
            .map(|v| {
                format!(
                    " eval {:.3}{}",
                    v.as_f64().unwrap_or(0.0),
                    dropped_note(eval_dropped)
                )
            })
            .unwrap_or_default();
        let dropped = dropped_note(batch.env_dropped);
        let (rollout_tps, train_tps) = (
            gen_tokens as f64 / gen_secs.max(1e-9),
            stats.tokens as f64 / train_secs.max(1e-9),
        );
        progress.set_position(step as u64);
        progress.set_message(format!(
            "reward {:.3}{eval_note} | rollout {rollout_tps:.0} tok/s, train {train_tps:.0} tok/s",
            batch.reward_mean
        ));
        progress.suspend(|| eprintln!(
            "[{step:>4}/{steps}] reward {:.3} acc {:.3}{dropped}{eval_note} loss {:+.4} |g| {:.3} clip {:.3} H {:.3} | rollout {rollout_tps:.0} tok/s, train {train_tps:.0} tok/s",
            batch.reward_mean,
            batch.accuracy,
            stats.loss,
            stats.grad_norm,
            stats.clip_frac,
            stats.entropy,
        ));
        let save_every = s.save_every.unwrap_or(0);
        let interrupted = INTERRUPTED.load(Ordering::SeqCst);
        if (save_every > 0 && step % save_every == 0) || step == steps || interrupted {
            checkpoint::save(out, step, &trainer, s.keep_checkpoints.unwrap_or(3))?;
        }
        if interrupted {
            progress.suspend(|| {
                eprintln!(
                    "interrupted: checkpoint saved after step {step}; --resume {} continues",
                    out.display()
                )
            });
            summary.interrupted = true;
            break;
        }
        let max_bad = s.max_bad_steps.unwrap_or(5);
        if max_bad > 0 && bad_run >= max_bad {
            return Err(Error::invalid(format!(
                "{bad_run} steps in a row had a non-finite loss or gradient (--max-bad-steps {max_bad}); stopping"
            )));
        }
    }
    progress.finish_and_clear();
    let params = trainer.trained_params()?;
    crate::weights::write_f32(&out.join("trained.safetensors"), &params)?;
    Ok(summary)
}

/// A bar on stderr with the step, reward and speeds (drawn only on a terminal; the
/// per-step lines are printed either way).
fn progress_bar(steps: usize, start: usize) -> indicatif::ProgressBar {
    let bar = indicatif::ProgressBar::new(steps as u64);
    bar.set_style(
        indicatif::ProgressStyle::with_template(
            "{bar:30} {pos}/{len} [{elapsed_precise}<{eta_precise}] {msg}",
        )
        .expect("the template is valid"),
    );
    bar.set_position(start as u64);
    bar
}

/// " (N dropped)" for episodes an environment dropped, nothing when none were.
fn dropped_note(dropped: Option<usize>) -> String {
    match dropped {
        Some(d) if d > 0 => format!(" ({d} dropped)"),
        _ => String::new(),
    }
}

/// JSON has no NaN: non-finite values are written as null.
pub fn finite(v: f64) -> serde_json::Value {
    if v.is_finite() {
        json!(v)
    } else {
        serde_json::Value::Null
    }
}
