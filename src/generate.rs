//! Batched autoregressive generation over the KV cache: all prompts are prefilled in
//! one ragged forward pass, then every unfinished sequence advances one token per
//! step. Draw `k` of sequence `i` uses the random stream (seed, i, k), so a sequence's
//! samples do not depend on what else is in the batch.

use crate::backend::Backend;
use crate::model::{Model, TokenBatch};
use crate::sampling::{stream, SamplingParams};
use crate::{Error, Result};

#[derive(Debug, Clone)]
pub struct GenerateParams {
    pub max_new_tokens: usize,
    pub sampling: SamplingParams,
    pub seed: u64,
    /// Generation stops after any of these (the stop token is kept in the output).
    pub stop_ids: Vec<u32>,
}

/// Generate a continuation for each prompt; returns the new tokens only.
pub fn generate<B: Backend>(
    model: &Model<B>,
    prompts: &[Vec<u32>],
    p: &GenerateParams,
) -> Result<Vec<Vec<u32>>> {
    p.sampling.validate()?;
    if prompts.iter().any(|s| s.is_empty()) {
        return Err(Error::invalid("empty prompt"));
    }
    let n = prompts.len();
    if n == 0 || p.max_new_tokens == 0 {
        return Ok(vec![vec![]; n]);
    }
    let max_len = prompts.iter().map(Vec::len).max().unwrap_or(0) + p.max_new_tokens;
    let mut cache = model.new_cache(n, max_len)?;
    let mut out: Vec<Vec<u32>> = vec![Vec::new(); n];

    let mut batch = TokenBatch::default();
    for (slot, prompt) in prompts.iter().enumerate() {
        batch.push_seq(slot, 0, prompt);
    }
    // Rows of the batch whose logits pick the next token, with their slot.
    let mut last_rows: Vec<(usize, usize)> = prompts
        .iter()
        .scan(0, |end, s| {
            *end += s.len();
            Some(*end - 1)
        })
        .zip(0..n)
        .collect();
    loop {
        let hidden = model.forward(&batch, &mut cache, None)?;
        // Gather the rows that pick the next token (the embedding op is a row gather).
        let h = model.cfg.hidden_size;
        let row_ids: Vec<u32> = last_rows.iter().map(|&(row, _)| row as u32).collect();
        let mut rows = model.backend.zeros(row_ids.len() * h)?;
        model.backend.embedding(
            &mut rows,
            &model.backend.upload_idx(&row_ids)?,
            &hidden,
            row_ids.len(),
            h,
        )?;
        let logits = model.logits_on_device(&rows, last_rows.len())?;
        let streams: Vec<u64> = last_rows
            .iter()
            .map(|&(_, slot)| stream(slot, out[slot].len()))
            .collect();
        let tokens =
            model
                .backend
                .sample(&logits, &streams, model.cfg.vocab_size, &p.sampling, p.seed)?;
        batch = TokenBatch::default();
        let mut next_rows = Vec::new();
        for (i, &(_, slot)) in last_rows.iter().enumerate() {
            let tok = tokens[i];
            out[slot].push(tok);
            if p.stop_ids.contains(&tok) || out[slot].len() >= p.max_new_tokens {
                continue;
            }
            next_rows.push((batch.len(), slot));
            batch.push_seq(slot, cache.lens[slot], &[tok]);
        }
        if batch.is_empty() {
            return Ok(out);
        }
        last_rows = next_rows;
    }
}
