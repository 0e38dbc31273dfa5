//! `engine bench`: prefill and decode throughput of a model on a device. Without
//! `--model` it builds a model of a built-in shape (default qwen3-4b) with random
//! weights on the device, so a GPU machine needs no checkpoint.
//!
//! Prefill: one forward pass over `batch` prompts of `prompt_len` tokens. Decode:
//! `new_tokens` steps of one token per sequence (LM head and greedy sampling on the
//! device included). The decode roofline is the time to read the bf16 weights and the
//! KV cache once per step at 3.0 TB/s (the measured H100 copy bandwidth).

use super::{print_json, with_backend, BackendJob};
use onelayer::backend::Backend;
use onelayer::config::{builtin, builtin_names, ModelConfig};
use onelayer::model::{KvCache, Model, TokenBatch};
use onelayer::resolve::resolve_model;
use onelayer::sampling::{mix64, SamplingParams};
use onelayer::{Error, Result};
use serde_json::json;
use std::time::Instant;

/// Measured device-to-device copy bandwidth of an H100 (docs/REFERENCES.md).
const HBM_BYTES_PER_S: f64 = 3.0e12;

#[derive(clap::Args, Debug)]
pub struct Args {
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

pub fn run(a: Args) -> Result<()> {
    if a.batch == 0 || a.prompt_len == 0 {
        return Err(Error::invalid("--batch and --prompt-len must be positive"));
    }
    let device = a.device.clone();
    with_backend(&device, a)
}

impl BackendJob for Args {
    fn run<B: Backend>(self, backend: B) -> Result<()> {
        let t0 = Instant::now();
        let model = match &self.model {
            Some(m) => Model::load(&resolve_model(m)?, backend)?,
            None => {
                let cfg = builtin(&self.shape).ok_or_else(|| {
                    Error::invalid(format!(
                        "--shape: unknown shape '{}' (one of {})",
                        self.shape,
                        builtin_names().join(", ")
                    ))
                })?;
                Model::random(cfg, backend, self.seed)?
            }
        };
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

fn measure<B: Backend>(model: &Model<B>, a: &Args) -> Result<Timings> {
    let (b, p) = (a.batch, a.prompt_len);
    let vocab = model.cfg.vocab_size as u64;
    let mut cache: KvCache<B> = model.new_cache(b, p + a.new_tokens.max(1))?;
    let mut batch = TokenBatch::default();
    for s in 0..b {
        let ids: Vec<u32> = (0..p)
            .map(|i| (mix64(a.seed ^ ((s * p + i) as u64)) % vocab) as u32)
            .collect();
        batch.push_seq(s, 0, &ids);
    }
    let t = Instant::now();
    let hidden = model.forward(&batch, &mut cache, None)?;
    model.backend.synchronize()?;
    let prefill_s = t.elapsed().as_secs_f64();
    // last row of each prompt picks the first new token
    let rows: Vec<u32> = (0..b).map(|s| (s * p + p - 1) as u32).collect();
    let h = model.cfg.hidden_size;
    let mut last = model.backend.zeros(b * h)?;
    model
        .backend
        .embedding(&mut last, &model.backend.upload_idx(&rows)?, &hidden, b, h)?;
    drop(hidden);
    let greedy = SamplingParams::default();
    let streams = vec![0u64; b];
    let mut tokens = model.backend.sample(
        &model.logits_on_device(&last, b)?,
        &streams,
        model.cfg.vocab_size,
        &greedy,
        0,
    )?;
    let t = Instant::now();
    for _ in 0..a.new_tokens {
        let mut step = TokenBatch::default();
        for (s, &tok) in tokens.iter().enumerate() {
            step.push_seq(s, cache.lens[s], &[tok]);
        }
        let hidden = model.forward(&step, &mut cache, None)?;
        tokens = model.backend.sample(
            &model.logits_on_device(&hidden, b)?,
            &streams,
            model.cfg.vocab_size,
            &greedy,
            0,
        )?;
    }
    model.backend.synchronize()?;
    Ok(Timings {
        prefill_s,
        decode_s: t.elapsed().as_secs_f64(),
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
