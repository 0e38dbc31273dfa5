//! `engine bench`: prefill and decode throughput of a model on a device. Without
//! `--model` it builds a model of a built-in shape (default qwen3-4b) with random
//! weights on the device, so a GPU machine needs no checkpoint.
//!
//! Prefill: one forward pass over `batch` prompts of `prompt_len` tokens. Decode:
//! `new_tokens` steps of one token per sequence (LM head and greedy sampling on the
//! device included). The decode roofline is the time to read the bf16 weights and the
//! KV cache once per step at 3.0 TB/s (the measured H100 copy bandwidth).
//!
//! `engine bench rl`: one whole RL step, as `engine run` does it, on random prompts:
//! rollout generation (`--prompts-per-step` prompts x `--group-size` samples through
//! `generate`, each prompt prefilled once per group unless `--no-shared-prefill`;
//! no stop token, so every completion has `--max-new-tokens`), then
//! `Trainer::step` of the trained layer(s) on those rollouts (synthetic rewards,
//! AdamW, one PPO epoch, training temperature = sampling temperature). It reports
//! tokens/s of both halves and the peak memory: the device's allocations where the
//! backend counts them (`Backend::memory_use`: the CUDA backend, also on the
//! emulator; not cuBLAS workspace or the CUDA context), else the process's max RSS
//! (`getrusage`), saying which; and the `engine plan` total of the same run.

use super::{print_json, with_backend, BackendJob};
use onelayer::backend::accounting::DeviceCounts;
use onelayer::backend::Backend;
use onelayer::config::{builtin, builtin_names, ModelConfig};
use onelayer::generate::{generate_with_stats, GenerateParams};
use onelayer::model::Model;
use onelayer::resolve::resolve_model;
use onelayer::sampling::{mix64, SamplingParams};
use onelayer::train::{
    fit_to_device, preflight, MemoryPlan, PlanInput, Rollout, TrainConfig, TrainLayers, Trainer,
};
use onelayer::{Error, Result};
use serde_json::json;
use std::time::Instant;

/// Measured device-to-device copy bandwidth of an H100 (docs/REFERENCES.md).
const HBM_BYTES_PER_S: f64 = 3.0e12;

#[derive(clap::Args, Debug)]
#[command(args_conflicts_with_subcommands = true)]
pub struct Args {
    #[command(subcommand)]
    pub command: Option<BenchCommand>,
    /// A model to load (alias, HF id or directory); default: random weights of --shape.
    #[arg(long)]
    pub model: Option<String>,
    /// Built-in shape for random weights: tiny, qwen3-0.6b, qwen3-4b, qwen2.5-7b, ...
    #[arg(long, default_value = "qwen3-4b")]
    pub shape: String,
    /// auto | cpu | cuda | cuda:N | emu
    #[arg(long, default_value = "auto")]
    pub device: String,
    #[arg(long, default_value_t = 16)]
    pub batch: usize,
    #[arg(long, default_value_t = 512)]
    pub prompt_len: usize,
    #[arg(long, default_value_t = 128)]
    pub new_tokens: usize,
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Print JSON instead of text.
    #[arg(long)]
    pub json: bool,
}

#[derive(clap::Subcommand, Debug)]
pub enum BenchCommand {
    /// One whole RL step: rollout generation and the training step of the trained
    /// layer(s), tokens/s of each and the peak memory.
    Rl(RlArgs),
}

#[derive(clap::Args, Debug)]
pub struct RlArgs {
    /// A model to load (alias, HF id or directory); default: random weights of --shape.
    #[arg(long)]
    pub model: Option<String>,
    /// Built-in shape for random weights: tiny, qwen3-0.6b, qwen3-4b, qwen2.5-7b, ...
    #[arg(long, default_value = "qwen3-4b")]
    pub shape: String,
    /// auto | cpu | cuda | cuda:N | emu
    #[arg(long, default_value = "auto")]
    pub device: String,
    /// Distinct prompts per step (P).
    #[arg(long, default_value_t = 8)]
    pub prompts_per_step: usize,
    /// Samples per prompt (G); the step generates P x G completions.
    #[arg(long, default_value_t = 8)]
    pub group_size: usize,
    /// Tokens per prompt (random ids).
    #[arg(long, default_value_t = 256)]
    pub prompt_len: usize,
    /// Tokens per completion (no stop token: every completion runs to this length).
    #[arg(long, default_value_t = 512)]
    pub max_new_tokens: usize,
    /// Layers to train: 18, 17,18, 16-19 or all (default: the middle layer).
    #[arg(long)]
    pub train_layer: Option<String>,
    /// Rollouts per optimizer update (default: all of the step's in one update).
    #[arg(long)]
    pub mini_batch: Option<usize>,
    #[arg(long, default_value_t = 1.0)]
    pub temperature: f32,
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Prefill every sample's prompt (the generation before prompts were shared
    /// within a group; same tokens, for measuring the difference).
    #[arg(long)]
    pub no_shared_prefill: bool,
    /// Tokens per training pass (default: the largest the device's memory plan
    /// allows; 16,384 on the CPU).
    #[arg(long)]
    pub micro_batch_tokens: Option<usize>,
    /// Positions of the paged KV cache (default: what the memory plan leaves free;
    /// every sequence at full length on the CPU).
    #[arg(long)]
    pub kv_cache_tokens: Option<usize>,
    /// RL steps to run; the report is of the last (the first allocates the
    /// training working set).
    #[arg(long, default_value_t = 2)]
    pub steps: usize,
    /// Print JSON instead of text.
    #[arg(long)]
    pub json: bool,
}

pub fn run(a: Args) -> Result<()> {
    if let Some(BenchCommand::Rl(r)) = a.command {
        return run_rl(r);
    }
    if a.batch == 0 || a.prompt_len == 0 {
        return Err(Error::invalid("--batch and --prompt-len must be positive"));
    }
    let device = a.device.clone();
    with_backend(&device, a)
}

/// `--model` when given, else random weights of the built-in `--shape`.
fn load_model<B: Backend>(model: Option<&str>, shape: &str, seed: u64, be: B) -> Result<Model<B>> {
    match model {
        Some(m) => Model::load(&resolve_model(m)?, be),
        None => Model::random(model_config(None, shape)?, be, seed),
    }
}

impl BackendJob for Args {
    fn run<B: Backend>(self, backend: B) -> Result<()> {
        let t0 = Instant::now();
        let model = load_model(self.model.as_deref(), &self.shape, self.seed, backend)?;
        model.backend.synchronize()?;
        let load_s = t0.elapsed().as_secs_f64();
        let r = measure(&model, &self)?;
        report(&model.cfg, &model.backend.name(), &self, load_s, &r);
        Ok(())
    }
}

struct Timings {
    prefill_s: f64,
    decode_s: f64,
}

/// Prefill and decode through the rollout path (`generate`: paged KV cache, fixed
/// decode-step buffers, device sampling), greedy, every sequence to its limit.
fn measure<B: Backend>(model: &Model<B>, a: &Args) -> Result<Timings> {
    let (b, p) = (a.batch, a.prompt_len);
    let vocab = model.cfg.vocab_size as u64;
    let prompts: Vec<Vec<u32>> = (0..b)
        .map(|s| {
            (0..p)
                .map(|i| (mix64(a.seed ^ ((s * p + i) as u64)) % vocab) as u32)
                .collect()
        })
        .collect();
    let params = GenerateParams::new(a.new_tokens + 1, SamplingParams::default(), 0, vec![]);
    let (_, stats) = generate_with_stats(model, &prompts, &params, true)?;
    model.backend.synchronize()?;
    Ok(Timings {
        prefill_s: stats.prefill_seconds,
        decode_s: stats.decode_seconds,
    })
}

fn report(cfg: &ModelConfig, device: &str, a: &Args, load_s: f64, r: &Timings) {
    let (b, p, n) = (a.batch, a.prompt_len, a.new_tokens);
    let weight_bytes = 2.0 * cfg.params_total() as f64;
    // KV cache read per decode step, at the average context length
    let avg_ctx = p as f64 + n as f64 / 2.0;
    let kv_bytes = 2.0 * 2.0 * (cfg.num_hidden_layers * cfg.kv_dim()) as f64 * avg_ctx * b as f64;
    let roofline_step_s = (weight_bytes + kv_bytes) / HBM_BYTES_PER_S;
    let step_s = if n > 0 { r.decode_s / n as f64 } else { 0.0 };
    let out = json!({
        "device": device,
        "model": a.model.clone().unwrap_or_else(|| format!("random {}", a.shape)),
        "params": cfg.params_total(),
        "batch": b,
        "prompt_len": p,
        "new_tokens": n,
        "load_s": load_s,
        "prefill_s": r.prefill_s,
        "prefill_tokens_per_s": (b * p) as f64 / r.prefill_s,
        "decode_s": r.decode_s,
        "decode_ms_per_step": step_s * 1e3,
        "decode_tokens_per_s": if r.decode_s > 0.0 { (b * n) as f64 / r.decode_s } else { 0.0 },
        "decode_roofline_ms_per_step": roofline_step_s * 1e3,
        "decode_vs_roofline": if roofline_step_s > 0.0 { step_s / roofline_step_s } else { 0.0 },
    });
    if a.json {
        print_json(&out);
        return;
    }
    println!("device     {device}");
    println!(
        "model      {} ({:.2}B params)",
        out["model"].as_str().unwrap_or(""),
        cfg.params_total() as f64 / 1e9
    );
    println!(
        "prefill    {b} x {p} tokens in {:.3} s: {:.0} tokens/s",
        r.prefill_s,
        out["prefill_tokens_per_s"].as_f64().unwrap_or(0.0)
    );
    println!(
        "decode     {b} x {n} tokens in {:.3} s: {:.0} tokens/s, {:.2} ms/step ({:.2}x the {:.2} ms HBM roofline)",
        r.decode_s,
        out["decode_tokens_per_s"].as_f64().unwrap_or(0.0),
        step_s * 1e3,
        out["decode_vs_roofline"].as_f64().unwrap_or(0.0),
        roofline_step_s * 1e3
    );
}

// ---- engine bench rl -------------------------------------------------------------

fn run_rl(a: RlArgs) -> Result<()> {
    let positive = [
        ("--prompts-per-step", a.prompts_per_step),
        ("--group-size", a.group_size),
        ("--prompt-len", a.prompt_len),
        ("--max-new-tokens", a.max_new_tokens),
        ("--steps", a.steps),
        ("--micro-batch-tokens", a.micro_batch_tokens.unwrap_or(1)),
        ("--kv-cache-tokens", a.kv_cache_tokens.unwrap_or(1)),
    ];
    if let Some((flag, _)) = positive.iter().find(|(_, v)| *v == 0) {
        return Err(Error::invalid(format!("{flag} must be at least 1")));
    }
    let device = a.device.clone();
    with_backend(&device, a)
}

/// A synthetic reward in [0, 1) per completion (a hash of its tokens), so groups have
/// non-zero advantages and the step does the work of a real one.
fn synthetic_reward(seed: u64, ids: &[u32]) -> f64 {
    let h = ids
        .iter()
        .fold(mix64(seed), |acc, &t| mix64(acc ^ t as u64));
    (h >> 11) as f64 / (1u64 << 53) as f64
}

/// The process's peak resident set size in bytes (`getrusage`), if the OS says.
fn max_rss_bytes() -> Option<u64> {
    // SAFETY: getrusage fills the zeroed struct it is given; no other effect.
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    if unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut ru) } != 0 {
        return None;
    }
    let v = ru.ru_maxrss.max(0) as u64;
    // Linux reports KiB, macOS bytes.
    Some(if cfg!(target_os = "macos") {
        v
    } else {
        v * 1024
    })
}

/// The configuration `--model` or `--shape` names, before anything is allocated.
fn model_config(model: Option<&str>, shape: &str) -> Result<ModelConfig> {
    match model {
        Some(m) => ModelConfig::from_file(&resolve_model(m)?.join("config.json")),
        None => builtin(shape).ok_or_else(|| {
            Error::invalid(format!(
                "--shape: unknown shape '{shape}' (one of {})",
                builtin_names().join(", ")
            ))
        }),
    }
}

/// What one RL step measured.
struct StepReport {
    rollout_s: f64,
    gen: onelayer::generate::GenerateStats,
    train_s: f64,
    stats: onelayer::train::StepStats,
    rollout_counts: Option<DeviceCounts>,
    train_counts: Option<DeviceCounts>,
}

/// One RL step as `engine run` does it: P random prompts x G samples through
/// `generate`, synthetic rewards, `Trainer::step`.
fn rl_step<B: Backend>(trainer: &mut Trainer<B>, a: &RlArgs, step: usize) -> Result<StepReport> {
    let cfg = trainer.model().cfg.clone();
    let (p, g) = (a.prompts_per_step, a.group_size);
    let vocab = cfg.vocab_size as u64;
    let seed = a.seed ^ mix64(step as u64);
    let prompts: Vec<Vec<u32>> = (0..p)
        .map(|i| {
            (0..a.prompt_len)
                .map(|j| (mix64(seed ^ mix64((i * a.prompt_len + j) as u64)) % vocab) as u32)
                .collect()
        })
        .collect();
    let batch: Vec<Vec<u32>> = prompts
        .iter()
        .flat_map(|q| std::iter::repeat_n(q.clone(), g))
        .collect();
    let params = GenerateParams {
        max_new_tokens: a.max_new_tokens,
        sampling: SamplingParams {
            temperature: a.temperature,
            ..SamplingParams::default()
        },
        seed,
        stop_ids: vec![],
        kv_cache_tokens: a.kv_cache_tokens,
    };
    let be = &trainer.model().backend;
    let c0 = be.counts();
    let t = Instant::now();
    let (completions, gen) =
        generate_with_stats(trainer.model(), &batch, &params, !a.no_shared_prefill)?;
    be.synchronize()?;
    let rollout_s = t.elapsed().as_secs_f64();
    let c1 = be.counts();
    let rollouts: Vec<Rollout> = completions
        .into_iter()
        .enumerate()
        .map(|(i, ids)| Rollout {
            group: format!("p{}", i / g),
            prompt_ids: batch[i].clone(),
            reward: synthetic_reward(seed ^ i as u64, &ids),
            completion_ids: ids,
            old_logprobs: None,
            ref_logprobs: None,
            advantage: None,
        })
        .collect();
    let t = Instant::now();
    let stats = trainer.step(&rollouts)?;
    let be = &trainer.model().backend;
    be.synchronize()?;
    let train_s = t.elapsed().as_secs_f64();
    let c2 = be.counts();
    let since = |a: &Option<DeviceCounts>, b: &Option<DeviceCounts>| match (a, b) {
        (Some(a), Some(b)) => Some(b.since(a)),
        _ => None,
    };
    Ok(StepReport {
        rollout_s,
        gen,
        train_s,
        stats,
        rollout_counts: since(&c0, &c1),
        train_counts: since(&c1, &c2),
    })
}

impl BackendJob for RlArgs {
    fn run<B: Backend>(self, backend: B) -> Result<()> {
        let a = self;
        let t0 = Instant::now();
        let cfg = model_config(a.model.as_deref(), &a.shape)?;
        let n_layers = cfg.num_hidden_layers;
        let spec = a
            .train_layer
            .clone()
            .unwrap_or_else(|| (n_layers / 2).to_string());
        let layers = TrainLayers::parse(&spec, n_layers)?;
        let (p, g) = (a.prompts_per_step, a.group_size);
        let input = PlanInput {
            rollout_seqs: p * g,
            distinct_prompts: if a.no_shared_prefill { p * g } else { p },
            prompt_len: a.prompt_len,
            max_new_tokens: a.max_new_tokens,
            micro_batch_tokens: 0,
            keep_prefix: true,
            adamw: true,
            kv_cache_tokens: a.kv_cache_tokens,
        };
        let memory = backend.memory_info();
        let input = fit_to_device(
            &cfg,
            &layers,
            input,
            a.micro_batch_tokens,
            memory.map(|(_, total)| total),
        );
        let mut a = a;
        a.kv_cache_tokens = input.kv_cache_tokens;
        let plan = MemoryPlan::new(&cfg, &layers, input);
        if let Some((free, _)) = memory {
            preflight(&plan, free, &backend.name())?;
        }
        let model = load_model(a.model.as_deref(), &a.shape, a.seed, backend)?;
        let train_cfg = TrainConfig {
            max_new_tokens: a.max_new_tokens,
            mini_batch: a.mini_batch,
            micro_batch_tokens: Some(input.micro_batch_tokens),
            ..TrainConfig::default()
        };
        let mut trainer = Trainer::new(model, &layers, train_cfg)?;
        trainer.set_temperature(a.temperature)?;
        let be = &trainer.model().backend;
        be.synchronize()?;
        let load_s = t0.elapsed().as_secs_f64();
        let device = be.name();
        let mem_before = be.memory_use();

        let mut last = None;
        for step in 0..a.steps {
            last = Some(rl_step(&mut trainer, &a, step)?);
        }
        let r = last.expect("--steps is at least 1");
        let (gen, stats) = (&r.gen, &r.stats);
        let be = &trainer.model().backend;
        let mem = be.memory_use();
        let report = be.memory_report();
        let rss = max_rss_bytes();
        let (peak, source) = match mem {
            Some(m) => (Some(m.peak_bytes as u64), "device allocations"),
            None => (rss, "process max RSS"),
        };
        let per_s = |n: usize, s: f64| if s > 0.0 { n as f64 / s } else { 0.0 };
        let plan_terms: serde_json::Map<String, serde_json::Value> = plan
            .terms()
            .into_iter()
            .map(|(k, v, _)| (k.to_string(), json!(v)))
            .collect();
        let counts =
            |c: &Option<DeviceCounts>, n: usize| c.as_ref().map(|c| c.to_json_per(n.max(1) as u64));
        let out = json!({
            "bench": "rl",
            "device": device,
            "model": a.model.clone().unwrap_or_else(|| format!("random {}", a.shape)),
            "params": cfg.params_total(),
            "train_layers": layers.layers(),
            "trained_params": layers.len() * cfg.params_per_layer(),
            "prompts_per_step": p,
            "group_size": g,
            "samples": p * g,
            "prompt_len": a.prompt_len,
            "max_new_tokens": a.max_new_tokens,
            "micro_batch_tokens": input.micro_batch_tokens,
            "steps": a.steps,
            "load_s": load_s,
            "rollout": {
                "seconds": r.rollout_s,
                "new_tokens": gen.new_tokens,
                "tokens_per_s": per_s(gen.new_tokens, r.rollout_s),
                "prompt_tokens": gen.prompt_tokens,
                "shared_prefill": !a.no_shared_prefill,
                "prefill_tokens": gen.prefill_tokens,
                "shared_slots": gen.shared_slots,
                "prefill_s": gen.prefill_seconds,
                "decode_s": gen.decode_seconds,
                "decode_steps": gen.decode_steps,
                "decode_tokens_per_s": per_s(gen.new_tokens - p * g, gen.decode_seconds),
                "prefill_steps": gen.prefill_steps,
                "preemptions": gen.preemptions,
                "peak_running": gen.peak_running,
                "kv_cache_tokens": gen.kv_cache_tokens,
                "kv_peak_tokens": gen.kv_peak_tokens,
                "kv_full_tokens": input.full_kv_tokens(),
            },
            "train": {
                "seconds": r.train_s,
                "tokens": stats.tokens,
                "loss_tokens": stats.loss_tokens,
                "tokens_per_s": per_s(stats.tokens, r.train_s),
                "updates": stats.updates,
                "skipped": stats.skipped,
                "loss": finite(stats.loss),
                "grad_norm": finite(stats.grad_norm),
            },
            "step_s": r.rollout_s + r.train_s,
            "counts": {
                "of_step": a.steps,
                "rollout": counts(&r.rollout_counts, 1),
                "train_step": counts(&r.train_counts, 1),
                "decode_step": gen.decode_step_counts.as_ref().map(|c| c.to_json_per(gen.counted_decode_steps.max(1) as u64)),
                "decode_steps_counted": gen.counted_decode_steps,
                "train_update": counts(&r.train_counts, stats.updates),
                "train_launches_by_kernel": r.train_counts.as_ref().map(|c| json!(c.launches_by_kernel)),
            },
            "memory": {
                "peak_bytes": peak,
                "source": source,
                "device_bytes_before_step": mem_before.map(|m| m.live_bytes),
                "device_peak_bytes": mem.map(|m| m.peak_bytes),
                "device": report.as_ref().map(|r| r.to_json()),
                "max_rss_bytes": rss,
                "plan_bytes": memory.map_or(plan.total(), |(_, total)| plan.expected_peak(total)),
                "plan_required_bytes": plan.required(),
                "plan_terms_bytes": plan_terms,
            },
        });
        if a.json {
            print_json(&out);
            return Ok(());
        }
        let gib = |b: Option<u64>| {
            b.map_or("?".into(), |b| {
                format!("{:.2} GiB", b as f64 / (1u64 << 30) as f64)
            })
        };
        println!("device     {device}");
        println!(
            "model      {} ({:.2}B params), training layer(s) {spec}",
            out["model"].as_str().unwrap_or(""),
            cfg.params_total() as f64 / 1e9
        );
        println!(
            "rollout    {p} prompts x {g} samples, {} + {} tokens: {:.3} s, {:.0} new tokens/s \
             (prefill {} of {} prompt tokens, {:.3} s; decode {:.3} s)",
            a.prompt_len,
            a.max_new_tokens,
            r.rollout_s,
            per_s(gen.new_tokens, r.rollout_s),
            gen.prefill_tokens,
            gen.prompt_tokens,
            gen.prefill_seconds,
            gen.decode_seconds
        );
        println!(
            "train      {} tokens ({} completion) in {:.3} s: {:.0} tokens/s, loss {:.4}, |g| {:.3} \
             (micro-batches of {} tokens)",
            stats.tokens,
            stats.loss_tokens,
            r.train_s,
            per_s(stats.tokens, r.train_s),
            stats.loss,
            stats.grad_norm,
            input.micro_batch_tokens
        );
        println!(
            "kv cache   {} tokens, at most {} in use; {} preemptions; up to {} sequences at once",
            gen.kv_cache_tokens, gen.kv_peak_tokens, gen.preemptions, gen.peak_running
        );
        if let Some(c) = &gen.decode_step_counts {
            let n = gen.counted_decode_steps.max(1) as f64;
            println!(
                "counts     decode step (mean of {}): {:.1} launches, {:.2} device allocations, {:.2} host syncs",
                gen.counted_decode_steps,
                c.launches as f64 / n,
                c.device_allocations as f64 / n,
                c.host_syncs as f64 / n
            );
        }
        if let Some(c) = &r.train_counts {
            println!(
                "counts     train step {}: {} launches, {} device allocations, {} host syncs",
                a.steps, c.launches, c.device_allocations, c.host_syncs
            );
        }
        println!(
            "memory     peak {} ({source}); plan {}",
            gib(peak),
            gib(Some(
                memory.map_or(plan.total(), |(_, t)| plan.expected_peak(t)) as u64
            ))
        );
        Ok(())
    }
}

/// JSON null for a non-finite number.
fn finite(x: f64) -> serde_json::Value {
    if x.is_finite() {
        json!(x)
    } else {
        serde_json::Value::Null
    }
}
