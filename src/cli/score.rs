//! `engine score`: `{"ids": [...], "logprobs": [null, lp1, ...]}` where `logprobs[i]`
//! is log p(ids[i] | ids[<i]).

use super::{load_tokenizer, parse_ids, print_json, ModelArgs, ModelJob};
use onelayer::backend::Backend;
use onelayer::model::Model;
use onelayer::{Error, Result};
use serde_json::json;
use std::path::Path;

#[derive(clap::Args, Debug)]
pub struct Args {
    #[command(flatten)]
    pub model: ModelArgs,
    /// Token ids, comma-separated.
    #[arg(long, conflicts_with = "text", required_unless_present = "text")]
    pub ids: Option<String>,
    /// Text, tokenized with the model's tokenizer.json (no special tokens added).
    #[arg(long)]
    pub text: Option<String>,
}

pub fn run(a: Args) -> Result<()> {
    a.model.clone().run(a)
}

impl ModelJob for Args {
    fn run<B: Backend>(self, dir: &Path, model: Model<B>) -> Result<()> {
        score(self, dir, model)
    }
}

fn score<B: Backend>(a: Args, dir: &Path, model: Model<B>) -> Result<()> {
    let ids = match (&a.ids, &a.text) {
        (Some(ids), _) => parse_ids("--ids", ids)?,
        (None, Some(text)) => {
            let ids = load_tokenizer(dir)?.encode(text)?;
            if ids.is_empty() {
                return Err(Error::invalid("--text: empty text"));
            }
            ids
        }
        (None, None) => unreachable!("clap requires --ids or --text"),
    };
    let lp = model.score(std::slice::from_ref(&ids))?.remove(0);
    let logprobs: Vec<serde_json::Value> = std::iter::once(serde_json::Value::Null)
        .chain(lp.iter().map(|&v| json!(v)))
        .collect();
    print_json(&json!({ "ids": ids, "logprobs": logprobs }));
    Ok(())
}
