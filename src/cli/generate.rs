//! `engine generate`: continue a prompt (greedy when `--temperature 0`, the default).

use super::{load_tokenizer, parse_ids, print_json, ModelArgs, ModelJob};
use onelayer::backend::Backend;
use onelayer::chat::ChatTemplate;
use onelayer::config::Family;
use onelayer::generate::{generate, GenerateParams};
use onelayer::generation_config::stop_token_ids;
use onelayer::model::Model;
use onelayer::sampling::SamplingParams;
use onelayer::{Error, Result};
use serde_json::json;
use std::path::Path;

#[derive(clap::Args, Debug)]
pub struct Args {
    #[command(flatten)]
    pub model: ModelArgs,
    /// Prompt text.
    #[arg(
        long,
        conflicts_with = "prompt_ids",
        required_unless_present = "prompt_ids"
    )]
    pub prompt: Option<String>,
    /// Prompt as token ids, comma-separated.
    #[arg(long)]
    pub prompt_ids: Option<String>,
    /// Wrap the prompt as a user turn in the model's chat template.
    #[arg(long)]
    pub chat: bool,
    /// System message for --chat.
    #[arg(long, requires = "chat")]
    pub system: Option<String>,
    /// Qwen3 with --chat: append the empty think block (enable_thinking=false).
    #[arg(long, requires = "chat")]
    pub no_think: bool,
    #[arg(long, default_value_t = 128)]
    pub max_new_tokens: usize,
    /// 0 is greedy.
    #[arg(long, default_value_t = 0.0)]
    pub temperature: f32,
    #[arg(long, default_value_t = 1.0)]
    pub top_p: f32,
    /// 0 keeps every token.
    #[arg(long, default_value_t = 0)]
    pub top_k: usize,
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Print {"prompt_ids", "ids", "text"} instead of the text.
    #[arg(long)]
    pub json: bool,
}

pub fn run(a: Args) -> Result<()> {
    let sampling = SamplingParams {
        temperature: a.temperature,
        top_p: a.top_p,
        top_k: a.top_k,
    };
    sampling.validate()?;
    a.model.clone().run(a)
}

impl ModelJob for Args {
    fn run<B: Backend>(self, dir: &Path, model: Model<B>) -> Result<()> {
        generate_text(self, dir, model)
    }
}

fn generate_text<B: Backend>(a: Args, dir: &Path, model: Model<B>) -> Result<()> {
    let sampling = SamplingParams {
        temperature: a.temperature,
        top_p: a.top_p,
        top_k: a.top_k,
    };
    let tokenizer = if a.prompt.is_some() || !a.json {
        Some(load_tokenizer(dir)?)
    } else {
        None
    };
    let prompt_ids = match (&a.prompt, &a.prompt_ids, &tokenizer) {
        (Some(text), _, Some(tok)) => {
            if text.is_empty() {
                return Err(Error::invalid("--prompt: empty prompt"));
            }
            let text = if a.chat {
                let model_type = match model.cfg.family {
                    Family::Qwen3 => "qwen3",
                    Family::Qwen2 => "qwen2",
                };
                ChatTemplate::detect(dir, model_type).prompt(
                    a.system.as_deref(),
                    text,
                    !a.no_think,
                )?
            } else {
                text.clone()
            };
            tok.encode(&text)?
        }
        (_, Some(ids), _) => parse_ids("--prompt-ids", ids)?,
        _ => return Err(Error::invalid("give --prompt or --prompt-ids")),
    };
    let mut stop_ids = stop_token_ids(dir, &model.cfg.eos_token_ids)?;
    if let Some(im_end) = tokenizer.as_ref().and_then(|t| t.token_id("<|im_end|>")) {
        if a.chat && !stop_ids.contains(&im_end) {
            stop_ids.push(im_end);
        }
    }
    let params = GenerateParams {
        max_new_tokens: a.max_new_tokens,
        sampling,
        seed: a.seed,
        stop_ids,
        kv_cache_tokens: None,
    };
    let ids = generate(&model, std::slice::from_ref(&prompt_ids), &params)?.remove(0);
    let text = match &tokenizer {
        Some(t) => Some(t.decode(&ids, true)?),
        None => None,
    };
    if a.json {
        print_json(&json!({ "prompt_ids": prompt_ids, "ids": ids, "text": text }));
    } else {
        println!("{}", text.unwrap_or_default());
    }
    Ok(())
}
