//! Batched autoregressive generation over the KV cache: all prompts are prefilled in
//! one ragged forward pass, then every unfinished sequence advances one token per
//! step. Draw `k` of sequence `i` uses the random stream (seed, i, k), so a sequence's
//! samples do not depend on what else is in the batch.
//!
//! Identical prompts (equal token sequences, as in an RL group: each prompt repeated
//! `group_size` times) are prefilled once: the first slot of each set of equal
//! prompts runs through the model, the others get a copy of its keys and values
//! (`KvCache::copy_prefix`, one device copy per layer and buffer) and their first
//! token is drawn from the same last-row logits with their own stream. A token's
//! hidden state depends only on its own sequence, so the tokens are the ones each
//! slot's own prefill would give (`prefill_sources` plans it; the tests compare
//! with `share_prefill = false`).

use crate::backend::accounting::Purpose;
use crate::backend::Backend;
use crate::model::{Model, TokenBatch};
use crate::sampling::{stream, SamplingParams};
use crate::{Error, Result};
use std::collections::HashMap;
use std::time::Instant;

#[derive(Debug, Clone)]
pub struct GenerateParams {
    pub max_new_tokens: usize,
    pub sampling: SamplingParams,
    pub seed: u64,
    /// Generation stops after any of these (the stop token is kept in the output).
    pub stop_ids: Vec<u32>,
}

/// What one `generate_with_stats` call did.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct GenerateStats {
    /// Prompt tokens of the batch, every slot counted.
    pub prompt_tokens: usize,
    /// Prompt tokens run through the model (each distinct prompt once when sharing).
    pub prefill_tokens: usize,
    /// Slots whose prompt K/V was copied from an identical prompt's slot.
    pub shared_slots: usize,
    /// Tokens generated, all slots.
    pub new_tokens: usize,
    /// Forward passes over single new tokens (the decode steps).
    pub decode_steps: usize,
    /// Seconds until the first token of every slot was known (prefill, K/V copies and
    /// the first draw; the draw downloads the tokens, so the device work is done).
    pub prefill_seconds: f64,
    /// Seconds of the decode steps after that.
    pub decode_seconds: f64,
}

/// For each prompt, the slot whose prefill it uses: the first index with an equal
/// token sequence (its own index when it is the first of its kind).
pub fn prefill_sources(prompts: &[Vec<u32>]) -> Vec<usize> {
    let mut first: HashMap<&[u32], usize> = HashMap::with_capacity(prompts.len());
    prompts
        .iter()
        .enumerate()
        .map(|(i, p)| *first.entry(p.as_slice()).or_insert(i))
        .collect()
}

/// Generate a continuation for each prompt; returns the new tokens only. Identical
/// prompts are prefilled once (see the module docs).
pub fn generate<B: Backend>(
    model: &Model<B>,
    prompts: &[Vec<u32>],
    p: &GenerateParams,
) -> Result<Vec<Vec<u32>>> {
    Ok(generate_with_stats(model, prompts, p, true)?.0)
}

/// `generate`, also returning what it did. `share_prefill = false` prefills every
/// prompt itself (the reference the sharing is tested against).
pub fn generate_with_stats<B: Backend>(
    model: &Model<B>,
    prompts: &[Vec<u32>],
    p: &GenerateParams,
    share_prefill: bool,
) -> Result<(Vec<Vec<u32>>, GenerateStats)> {
    p.sampling.validate()?;
    if prompts.iter().any(|s| s.is_empty()) {
        return Err(Error::invalid("empty prompt"));
    }
    let n = prompts.len();
    let mut stats = GenerateStats {
        prompt_tokens: prompts.iter().map(Vec::len).sum(),
        ..GenerateStats::default()
    };
    if n == 0 || p.max_new_tokens == 0 {
        return Ok((vec![vec![]; n], stats));
    }
    let t0 = Instant::now();
    let max_len = prompts.iter().map(Vec::len).max().unwrap_or(0) + p.max_new_tokens;
    let mut cache = model.new_cache(n, max_len)?;
    let mut out: Vec<Vec<u32>> = vec![Vec::new(); n];

    let source: Vec<usize> = if share_prefill {
        prefill_sources(prompts)
    } else {
        (0..n).collect()
    };
    // Prefill the first slot of each set of equal prompts; `end_row[s]` is the row of
    // slot s's last prompt token in the batch.
    let mut batch = TokenBatch::default();
    let mut end_row = vec![0; n];
    for (slot, prompt) in prompts.iter().enumerate() {
        if source[slot] == slot {
            batch.push_seq(slot, 0, prompt);
            end_row[slot] = batch.len() - 1;
        }
    }
    stats.prefill_tokens = batch.len();
    // Rows of the batch whose logits pick the next token, with their slot (a shared
    // prompt's last row serves every slot that uses it).
    let mut last_rows: Vec<(usize, usize)> =
        (0..n).map(|slot| (end_row[source[slot]], slot)).collect();
    let mut prefill = true;
    loop {
        let hidden = model.forward(&batch, &mut cache, None)?;
        if prefill {
            for (slot, &src) in source.iter().enumerate() {
                if src != slot {
                    cache.copy_prefix(&model.backend, src, slot, prompts[slot].len())?;
                    stats.shared_slots += 1;
                }
            }
        } else {
            stats.decode_steps += 1;
        }
        // Gather the rows that pick the next token (the embedding op is a row gather).
        let h = model.cfg.hidden_size;
        let row_ids: Vec<u32> = last_rows.iter().map(|&(row, _)| row as u32).collect();
        let mut rows = model.backend.empty(row_ids.len() * h)?;
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
        if prefill {
            stats.prefill_seconds = t0.elapsed().as_secs_f64();
            prefill = false;
        }
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
            stats.new_tokens = out.iter().map(Vec::len).sum();
            stats.decode_seconds = t0.elapsed().as_secs_f64() - stats.prefill_seconds;
            // The KV cache goes back to the device, not to the allocator's cache:
            // training needs the memory for other shapes.
            drop(cache);
            model.backend.release_cached(Some(Purpose::KvCache));
            return Ok((out, stats));
        }
        last_rows = next_rows;
    }
}

#[cfg(test)]
mod tests {
    use super::prefill_sources;

    #[test]
    fn prefill_sources_point_at_the_first_equal_prompt() {
        let (a, b, c) = (vec![1, 2, 3], vec![1, 2], vec![1, 2, 3, 4]);
        let prompts = vec![a.clone(), a.clone(), b.clone(), a.clone(), c.clone(), b, c];
        assert_eq!(prefill_sources(&prompts), vec![0, 0, 2, 0, 4, 2, 4]);
        // prefixes of one another are different prompts
        assert_eq!(
            prefill_sources(&[vec![5], vec![5, 5], vec![5, 5, 5]]),
            vec![0, 1, 2]
        );
        assert!(prefill_sources(&[]).is_empty());
    }
}
