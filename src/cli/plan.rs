//! `engine plan`: the memory plan of an RL run, term by term (`train::plan`), next to
//! what full-parameter AdamW would need. `--model` takes a directory, HF id or alias;
//! an alias that is not downloaded falls back to its built-in configuration. The
//! terms are those the counting device measures (`engine bench rl --device meta`).

use super::print_json;
use onelayer::backend::cuda::meta::{parse_capacity, H100_80GB_BYTES};
use onelayer::config::{builtin, ModelConfig};
use onelayer::resolve::resolve_model;
use onelayer::train::{fit_to_device, MemoryPlan, PlanInput, TrainLayers};
use onelayer::{Error, Result};
use serde_json::json;

#[derive(clap::Args, Debug)]
pub struct Args {
    /// A model directory, HF id or alias (an alias not on disk uses its built-in config).
    #[arg(long)]
    pub model: String,
    /// Layers to train: 18, 17,18, 16-19 or all.
    #[arg(long)]
    pub train_layer: String,
    #[arg(long, default_value_t = 8)]
    pub prompts_per_step: usize,
    #[arg(long, default_value_t = 8)]
    pub group_size: usize,
    /// Tokens per prompt (the longest).
    #[arg(long, default_value_t = 512)]
    pub prompt_len: usize,
    #[arg(long, default_value_t = 1024)]
    pub max_new_tokens: usize,
    /// Tokens per training pass (default: the largest that fits --memory).
    #[arg(long)]
    pub micro_batch_tokens: Option<usize>,
    /// Positions of the rollouts' paged KV cache (default: what the plan leaves free).
    #[arg(long)]
    pub kv_cache_tokens: Option<usize>,
    /// adamw | sgd
    #[arg(long, default_value = "adamw")]
    pub optimizer: String,
    /// The device's memory (default: an 80 GB H100's), e.g. 141GiB.
    #[arg(long)]
    pub memory: Option<String>,
    /// Print JSON instead of text.
    #[arg(long)]
    pub json: bool,
}

fn config(model: &str) -> Result<(ModelConfig, String)> {
    match resolve_model(model) {
        Ok(dir) => Ok((
            ModelConfig::from_file(&dir.join("config.json"))?,
            dir.display().to_string(),
        )),
        Err(e) => match builtin(model) {
            Some(cfg) => Ok((cfg, format!("built-in {model} configuration"))),
            None => Err(e),
        },
    }
}

pub fn run(a: Args) -> Result<()> {
    for (flag, v) in [
        ("--prompts-per-step", a.prompts_per_step),
        ("--group-size", a.group_size),
        ("--prompt-len", a.prompt_len),
        ("--max-new-tokens", a.max_new_tokens),
    ] {
        if v == 0 {
            return Err(Error::invalid(format!("{flag} must be at least 1")));
        }
    }
    let adamw = match a.optimizer.as_str() {
        "adamw" => true,
        "sgd" => false,
        other => {
            return Err(Error::invalid(format!(
                "--optimizer '{other}': expected adamw or sgd"
            )))
        }
    };
    let capacity = match &a.memory {
        Some(m) => parse_capacity(m).map_err(|e| Error::invalid(format!("--memory: {e}")))?,
        None => H100_80GB_BYTES,
    };
    let (cfg, source) = config(&a.model)?;
    let train = TrainLayers::parse(&a.train_layer, cfg.num_hidden_layers)?;
    if a.micro_batch_tokens == Some(0) {
        return Err(Error::invalid("--micro-batch-tokens must be at least 1"));
    }
    if a.kv_cache_tokens == Some(0) {
        return Err(Error::invalid("--kv-cache-tokens must be at least 1"));
    }
    let input = PlanInput {
        rollout_seqs: a.prompts_per_step * a.group_size,
        distinct_prompts: a.prompts_per_step,
        prompt_len: a.prompt_len,
        max_new_tokens: a.max_new_tokens,
        micro_batch_tokens: 0,
        keep_prefix: true,
        adamw,
        kv_cache_tokens: a.kv_cache_tokens,
    };
    let input = fit_to_device(&cfg, &train, input, a.micro_batch_tokens, Some(capacity));
    let plan = MemoryPlan::new(&cfg, &train, input);
    let gib = |b: usize| b as f64 / (1u64 << 30) as f64;
    if a.json {
        let terms: serde_json::Map<String, serde_json::Value> = plan
            .terms()
            .into_iter()
            .map(|(k, v, _)| (k.to_string(), json!(v)))
            .collect();
        print_json(&json!({
            "model": source,
            "train_layers": train.layers(),
            "trained_params": plan.trained_params,
            "micro_batch_tokens": input.micro_batch_tokens,
            "kv_cache_tokens": input.kv_tokens(),
            "full_kv_cache_tokens": input.full_kv_tokens(),
            "capacity_bytes": capacity,
            "terms_bytes": terms,
            "total_bytes": plan.expected_peak(capacity),
            "cached_total_bytes": plan.total(),
            "required_bytes": plan.required(),
            "fits": plan.required() <= capacity,
            "full_parameter_adamw_bytes": plan.full_parameter_state,
        }));
        return Ok(());
    }
    println!("model        {source}");
    println!(
        "train layers {:?} ({} parameters)",
        train.layers(),
        plan.trained_params
    );
    println!(
        "rollouts     {} prompts x {} samples, {} + {} tokens; micro-batches of {} tokens",
        a.prompts_per_step, a.group_size, a.prompt_len, a.max_new_tokens, input.micro_batch_tokens
    );
    println!(
        "KV cache     {} tokens ({} for every sequence at full length)",
        input.kv_tokens(),
        input.full_kv_tokens()
    );
    for (name, bytes, _) in plan.terms() {
        println!("  {name:<62} {:>8.2} GiB", gib(bytes));
    }
    println!(
        "  {:<62} {:>8.2} GiB",
        "total (training working set cached through the rollout)",
        gib(plan.total())
    );
    println!(
        "  {:<62} {:>8.2} GiB",
        "required (the phases in turn)",
        gib(plan.required())
    );
    println!(
        "  {:<62} {:>8.2} GiB{}",
        "device memory",
        gib(capacity),
        if plan.required() <= capacity {
            ""
        } else {
            "  (does not fit)"
        }
    );
    println!(
        "full-parameter AdamW would hold {:.2} GiB of weights and state",
        gib(plan.full_parameter_state)
    );
    Ok(())
}
