//! Batched autoregressive generation over a paged KV cache with continuous
//! batching (`sched`): prompts are prefilled (chunked, shared within groups of
//! equal prompts), then every running sequence advances one token per decode step
//! while waiting ones are admitted as blocks free up; a full cache preempts. Draw
//! `k` of sequence `i` uses the random stream (seed, i, k), and every kernel on the
//! path computes a token's values from its own sequence alone, so what a sequence
//! generates does not depend on the budget, on what runs beside it, or on whether it
//! was preempted (tests/generate_paged.rs checks cpu and emu).
//!
//! The decode step (`step`) runs in fixed per-bucket buffers: no allocation, one
//! host synchronisation (the drawn ids).

mod blocks;
pub mod sched;
pub mod step;

pub use sched::{Plan, PrefillItem, SchedConfig, Scheduler};

use crate::backend::accounting::{purpose, DeviceCounts, Purpose};
use crate::backend::Backend;
use crate::model::{Model, PagedIdx, PagedKvCache, PagedStore, Scratch};
use crate::sampling::{stream, SamplingParams};
use crate::{Error, Result};
use std::collections::HashMap;
use std::time::Instant;
use step::{bucket, DecodeRow, DecodeStep};

/// Positions per KV block (vLLM's default).
pub const BLOCK_SIZE: usize = 16;
/// Sequences decoding at once, at most (vLLM's `max_num_seqs` on large GPUs).
pub const MAX_RUNNING: usize = 1024;
/// Prompt tokens per prefill step, at most (vLLM's `max_num_batched_tokens`).
pub const MAX_PREFILL_TOKENS: usize = 8192;

#[derive(Debug, Clone)]
pub struct GenerateParams {
    pub max_new_tokens: usize,
    pub sampling: SamplingParams,
    pub seed: u64,
    /// Generation stops after any of these (the stop token is kept in the output).
    pub stop_ids: Vec<u32>,
    /// Positions the paged KV cache holds (`--kv-cache-tokens`); `None`: every
    /// sequence at full length, within what the device has free.
    pub kv_cache_tokens: Option<usize>,
}

impl GenerateParams {
    pub fn new(
        max_new_tokens: usize,
        sampling: SamplingParams,
        seed: u64,
        stop_ids: Vec<u32>,
    ) -> Self {
        GenerateParams {
            max_new_tokens,
            sampling,
            seed,
            stop_ids,
            kv_cache_tokens: None,
        }
    }
}

/// What one `generate_with_stats` call did.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct GenerateStats {
    /// Prompt tokens of the batch, every sequence counted.
    pub prompt_tokens: usize,
    /// Prompt tokens run through the model (a shared prompt's blocks once, each
    /// sequence's tail itself; again after a preemption).
    pub prefill_tokens: usize,
    /// Admissions onto prompt blocks another sequence had prefilled.
    pub shared_slots: usize,
    /// Tokens generated, all sequences.
    pub new_tokens: usize,
    /// Forward passes over single new tokens (the decode steps).
    pub decode_steps: usize,
    /// Prefill steps (chunks of at most `MAX_PREFILL_TOKENS`).
    pub prefill_steps: usize,
    /// Sequences preempted (their blocks freed, recomputed on readmission).
    pub preemptions: usize,
    /// The most sequences running at once.
    pub peak_running: usize,
    /// Positions the KV cache held (its budget) and the most in use at once.
    pub kv_cache_tokens: usize,
    pub kv_peak_tokens: usize,
    /// What the device did in the decode steps after the first (where counted;
    /// bucket changes included), and how many steps that is.
    pub decode_step_counts: Option<DeviceCounts>,
    pub counted_decode_steps: usize,
    /// Seconds in prefill steps (with their first draws).
    pub prefill_seconds: f64,
    /// Seconds in decode steps.
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

/// Positions a cache needs for every sequence at full length (shared prompt blocks
/// counted once when `share`), in whole blocks.
pub fn full_kv_tokens(prompts: &[Vec<u32>], max_new: usize, share: bool) -> usize {
    let bs = BLOCK_SIZE;
    let sources = if share {
        prefill_sources(prompts)
    } else {
        (0..prompts.len()).collect()
    };
    let mut blocks = 0;
    for (i, p) in prompts.iter().enumerate() {
        let shared = (p.len().max(1) - 1) / bs;
        let all = Scheduler::blocks_for(p.len(), max_new, bs);
        blocks += all - shared;
        if sources[i] == i {
            blocks += shared;
        }
    }
    blocks * bs
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
    for prompt in prompts {
        if let Some(id) = prompt
            .iter()
            .find(|&&id| id as usize >= model.cfg.vocab_size)
        {
            return Err(Error::invalid(format!(
                "token id {id} is outside the vocabulary (size {})",
                model.cfg.vocab_size
            )));
        }
    }
    let n = prompts.len();
    let mut stats = GenerateStats {
        prompt_tokens: prompts.iter().map(Vec::len).sum(),
        ..GenerateStats::default()
    };
    if n == 0 || p.max_new_tokens == 0 {
        return Ok((vec![vec![]; n], stats));
    }
    let bs = BLOCK_SIZE;
    let longest = prompts.iter().map(Vec::len).max().unwrap_or(0);
    let width = Scheduler::blocks_for(longest, p.max_new_tokens, bs);
    let sources: Vec<usize> = if share_prefill {
        prefill_sources(prompts)
    } else {
        (0..n).collect()
    };
    let budget = p
        .kv_cache_tokens
        .unwrap_or_else(|| default_kv_tokens(model, prompts, p.max_new_tokens, share_prefill));
    let blocks = budget.div_ceil(bs).max(1) + 1;
    if blocks - 1 < width {
        return Err(Error::invalid(format!(
            "--kv-cache-tokens {budget} cannot hold one sequence of {} tokens (prompt {longest} +              {} new): give at least {}",
            longest + p.max_new_tokens,
            p.max_new_tokens,
            width * bs
        )));
    }
    let cache = PagedKvCache::new(&model.backend, &model.cfg, blocks, bs);
    let mut cache = match cache {
        Ok(c) => c,
        Err(e) => {
            model.backend.release_cached(Some(Purpose::KvCache));
            return Err(e);
        }
    };
    stats.kv_cache_tokens = (blocks - 1) * bs;
    let lens: Vec<usize> = prompts.iter().map(Vec::len).collect();
    let cfg = SchedConfig {
        block_size: bs,
        max_running: MAX_RUNNING.min(n),
        max_prefill_tokens: MAX_PREFILL_TOKENS,
        max_new_tokens: p.max_new_tokens,
    };
    let mut sched = Scheduler::new(cfg, &lens, &sources, blocks);
    let result = run(model, prompts, p, &mut sched, &mut cache, width, &mut stats);
    drop(cache);
    // The KV cache goes back to the device, not to the allocator's cache: training
    // needs the memory for other shapes.
    model.backend.release_cached(Some(Purpose::KvCache));
    result?;
    if !sched.drained() {
        return Err(Error::invalid(format!(
            "generation ended with {} KV blocks still in use (a scheduler bug)",
            sched.pool.used()
        )));
    }
    stats.preemptions = sched.preemptions;
    stats.shared_slots = sched.shared_admissions;
    stats.peak_running = sched.peak_running;
    stats.kv_peak_tokens = sched.pool.peak_used() * bs;
    let out = sched.outputs();
    stats.new_tokens = out.iter().map(Vec::len).sum();
    Ok((out, stats))
}

/// The budget when none is given: every sequence at full length, capped (on a
/// device that reports its memory) to 90% of what is free after the decode and
/// prefill buffers this call will make.
fn default_kv_tokens<B: Backend>(
    model: &Model<B>,
    prompts: &[Vec<u32>],
    max_new: usize,
    share: bool,
) -> usize {
    let full = full_kv_tokens(prompts, max_new, share);
    let Some((free, _)) = model.backend.memory_info() else {
        return full;
    };
    let cfg = &model.cfg;
    let rows = prompts.len().min(MAX_RUNNING);
    let longest = prompts.iter().map(Vec::len).max().unwrap_or(0);
    let per_row = crate::train::plan::decode_row_bytes(cfg, longest + max_new);
    let prefill = MAX_PREFILL_TOKENS * crate::train::plan::prefill_token_bytes(cfg);
    let left = (free as f64 * 0.9) as usize;
    let left = left.saturating_sub(rows * per_row + prefill);
    let per_token = PagedKvCache::<B>::bytes_per_token(cfg, 2);
    full.min(left / per_token / BLOCK_SIZE * BLOCK_SIZE)
        .max(BLOCK_SIZE)
}

fn run<B: Backend>(
    model: &Model<B>,
    prompts: &[Vec<u32>],
    p: &GenerateParams,
    sched: &mut Scheduler,
    cache: &mut PagedKvCache<B>,
    width: usize,
    stats: &mut GenerateStats,
) -> Result<()> {
    let mut step: Option<DecodeStep<B>> = None;
    loop {
        let t0 = Instant::now();
        match sched.plan()? {
            Plan::Finished => return Ok(()),
            Plan::Prefill(items) => {
                let drawn = prefill_step(model, prompts, p, sched, cache, width, &items)?;
                sched.finish_prefill(&items, &drawn, &p.stop_ids);
                stats.prefill_steps += 1;
                stats.prefill_tokens += items.iter().map(|it| it.end - it.start).sum::<usize>();
                stats.prefill_seconds += t0.elapsed().as_secs_f64();
            }
            Plan::Decode(batch) => {
                let c0 = model.backend.counts();
                let widest = MAX_RUNNING.min(prompts.len());
                let rows = bucket(batch.len(), widest);
                if step.is_none() {
                    step = Some(DecodeStep::new(
                        model,
                        cache,
                        bucket(widest, widest),
                        width,
                    )?);
                }
                let st = step.as_mut().expect("made above");
                st.set_rows(model, rows)?;
                let mut tables: Vec<_> = batch.iter().map(|&s| sched.table(s)).collect();
                let mut live: Vec<DecodeRow<'_>> = Vec::with_capacity(batch.len());
                for (&s, table) in batch.iter().zip(tables.iter_mut()) {
                    let (token, pos, k) = sched.decode_input(s);
                    live.push(DecodeRow {
                        token,
                        pos,
                        row: sched.row(s, pos),
                        table,
                        stream: stream(s, k),
                    });
                }
                let drawn = st.run(model, cache, &mut live, &p.sampling, p.seed)?;
                drop(live);
                drop(tables);
                sched.finish_decode(&batch, &drawn, &p.stop_ids);
                if let (Some(c0), Some(c1), true) =
                    (c0, model.backend.counts(), stats.decode_steps > 0)
                {
                    let sum = stats
                        .decode_step_counts
                        .get_or_insert_with(Default::default);
                    sum.add(&c1.since(&c0));
                    stats.counted_decode_steps += 1;
                }
                stats.decode_steps += 1;
                stats.decode_seconds += t0.elapsed().as_secs_f64();
            }
        }
    }
}

/// Run a prefill step's prompt chunks; returns the draws of the items that reach
/// their prompt's end, in order.
fn prefill_step<B: Backend>(
    model: &Model<B>,
    prompts: &[Vec<u32>],
    p: &GenerateParams,
    sched: &Scheduler,
    cache: &mut PagedKvCache<B>,
    width: usize,
    items: &[PrefillItem],
) -> Result<Vec<u32>> {
    let be = &model.backend;
    let cfg = &model.cfg;
    let _a = purpose(Purpose::Activations);
    let (mut ids, mut pos, mut rows, mut seq) = (vec![], vec![], vec![], vec![]);
    let mut table = Vec::with_capacity(items.len() * width);
    let mut last_rows = Vec::new();
    let mut streams = Vec::new();
    for (i, it) in items.iter().enumerate() {
        for (j, &id) in prompts[it.seq]
            .iter()
            .enumerate()
            .take(it.end)
            .skip(it.start)
        {
            ids.push(id);
            pos.push(j as u32);
            rows.push(sched.row(it.seq, j));
            seq.push(i as u32);
        }
        let start = table.len();
        table.extend(sched.table(it.seq));
        table.resize(start + width, 0);
        if it.last {
            last_rows.push(ids.len() as u32 - 1);
            streams.push(stream(it.seq, 0));
        }
    }
    let t = ids.len();
    let h = cfg.hidden_size;
    let ids_d = be.upload_idx(&ids)?;
    let pos_d = be.upload_idx(&pos)?;
    let rows_d = be.upload_idx(&rows)?;
    let seq_d = be.upload_idx(&seq)?;
    let table_d = be.upload_idx(&table)?;
    let dims = cache.dims(cfg, t, items.len(), width);
    let mut store = PagedStore {
        cache,
        idx: PagedIdx {
            rows: &rows_d,
            seq: &seq_d,
            pos: &pos_d,
            table: &table_d,
        },
        dims,
        decode: None,
    };
    let mut s = Scratch::new(be, cfg, t)?;
    let mut x = be.empty(t * h)?;
    let mut hidden = be.empty(t * h)?;
    model.forward_into(
        &ids_d,
        &pos_d,
        &mut store,
        &mut s,
        &mut x,
        &mut hidden,
        None,
    )?;
    drop(s);
    if last_rows.is_empty() {
        return Ok(Vec::new());
    }
    // The rows that draw a first token (the embedding op is a row gather).
    let mut picked = be.empty(last_rows.len() * h)?;
    be.embedding(
        &mut picked,
        &be.upload_idx(&last_rows)?,
        &hidden,
        last_rows.len(),
        h,
    )?;
    // (booked as rollout activations, not the training logits term)
    let (n, v) = (last_rows.len(), cfg.vocab_size);
    let mut logits = be.empty_f32(n * v)?;
    be.linear(&mut logits, &picked, model.weights.head(), None, n, v, h)?;
    be.sample(&logits, &streams, v, &p.sampling, p.seed)
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
