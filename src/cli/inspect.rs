//! `engine inspect`: configuration, parameters per layer and in total, weight bytes.

use super::{print_json, ModelArgs};
use onelayer::config::ModelConfig;
use onelayer::weights::WeightFiles;
use onelayer::Result;
use serde_json::json;

#[derive(clap::Args, Debug)]
pub struct Args {
    /// An alias, an HF id or a local directory in HF layout.
    #[arg(long)]
    pub model: String,
    /// Print JSON instead of text.
    #[arg(long)]
    pub json: bool,
}

pub fn run(a: Args) -> Result<()> {
    let dir = ModelArgs {
        model: a.model.clone(),
        device: "cpu".into(),
    }
    .dir()?;
    let cfg = ModelConfig::from_file(&dir.join("config.json"))?;
    let files = WeightFiles::open_dir(&dir)?;
    let (bytes, by_dtype) = files.bytes();
    let report = json!({
        "dir": dir.display().to_string(),
        "family": format!("{:?}", cfg.family),
        "layers": cfg.num_hidden_layers,
        "hidden_size": cfg.hidden_size,
        "intermediate_size": cfg.intermediate_size,
        "heads": cfg.num_attention_heads,
        "kv_heads": cfg.num_key_value_heads,
        "head_dim": cfg.head_dim,
        "vocab_size": cfg.vocab_size,
        "tie_word_embeddings": cfg.tie_word_embeddings,
        "rope_theta": cfg.rope_theta,
        "rms_norm_eps": cfg.rms_norm_eps,
        "params_per_layer": cfg.params_per_layer(),
        "params_total": cfg.params_total(),
        "weight_bytes": bytes,
        "weight_bytes_by_dtype": by_dtype,
        "files": files.files().iter().map(|p| p.display().to_string()).collect::<Vec<_>>(),
    });
    if a.json {
        print_json(&report);
        return Ok(());
    }
    println!("model        {}", dir.display());
    println!(
        "family       {:?} ({} layers)",
        cfg.family, cfg.num_hidden_layers
    );
    println!(
        "hidden       {} (intermediate {})",
        cfg.hidden_size, cfg.intermediate_size
    );
    println!(
        "attention    {} heads, {} kv heads, head_dim {}, rope_theta {}",
        cfg.num_attention_heads, cfg.num_key_value_heads, cfg.head_dim, cfg.rope_theta
    );
    println!(
        "vocab        {} (tied embeddings: {})",
        cfg.vocab_size, cfg.tie_word_embeddings
    );
    println!(
        "params       {} per layer, {} total",
        human(cfg.params_per_layer()),
        human(cfg.params_total())
    );
    let dtypes: Vec<String> = by_dtype
        .iter()
        .map(|(d, n)| format!("{d} {}B", human(*n)))
        .collect();
    println!(
        "weights      {}B on disk ({}) in {} file(s)",
        human(bytes),
        dtypes.join(", "),
        files.files().len()
    );
    Ok(())
}

/// 1234567 -> "1.23M".
fn human(n: usize) -> String {
    let n = n as f64;
    match n {
        _ if n >= 1e9 => format!("{:.2}G", n / 1e9),
        _ if n >= 1e6 => format!("{:.2}M", n / 1e6),
        _ if n >= 1e3 => format!("{:.2}K", n / 1e3),
        _ => format!("{n}"),
    }
}
