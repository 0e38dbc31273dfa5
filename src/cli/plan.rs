//! `engine plan`: the memory plan of a single-layer run, term by term, next to what
//! full-parameter AdamW would need. `--model` takes a directory, HF id or alias; an
//! alias that is not downloaded falls back to its built-in configuration.

use super::print_json;
use onelayer::config::{builtin, ModelConfig};
use onelayer::resolve::resolve_model;
use onelayer::train::{MemoryPlan, PlanInput, TrainLayers};
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
    /// Sequences per training micro-batch.
    #[arg(long, default_value_t = 16)]
    pub batch: usize,
    /// Tokens per sequence (prompt + completion).
    #[arg(long, default_value_t = 1536)]
    pub seq: usize,
    /// Sequences generated at once (prompts x group size).
    #[arg(long, default_value_t = 64)]
    pub rollout_batch: usize,
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
    if a.batch == 0 || a.seq == 0 {
        return Err(Error::invalid("--batch and --seq must be positive"));
    }
    let (cfg, source) = config(&a.model)?;
    let train = TrainLayers::parse(&a.train_layer, cfg.num_hidden_layers)?;
    let plan = MemoryPlan::new(
        &cfg,
        &train,
        PlanInput {
            batch: a.batch,
            seq: a.seq,
            rollout_batch: a.rollout_batch,
        },
    );
    let gib = |b: usize| b as f64 / (1u64 << 30) as f64;
    if a.json {
        let terms: serde_json::Map<String, serde_json::Value> = plan
            .terms()
            .into_iter()
            .map(|(k, v)| (k.to_string(), json!(v)))
            .collect();
        print_json(&json!({
            "model": source,
            "train_layers": train.layers(),
            "trained_params": plan.trained_params,
            "terms_bytes": terms,
            "total_bytes": plan.total(),
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
        "micro-batch  {} x {} tokens; rollouts {} sequences",
        a.batch, a.seq, a.rollout_batch
    );
    for (name, bytes) in plan.terms() {
        println!("  {name:<46} {:>8.2} GiB", gib(bytes));
    }
    println!("  {:<46} {:>8.2} GiB", "total", gib(plan.total()));
    println!(
        "full-parameter AdamW would hold {:.2} GiB of weights and state",
        gib(plan.full_parameter_state)
    );
    Ok(())
}
