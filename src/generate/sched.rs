//! Continuous batching over a paged KV cache (host side only; `mod.rs` runs the
//! steps on the model).
//!
//! Each step is a prefill step or a decode step. A prefill step continues prompts
//! that are part-way through (chunked prefill, at most `max_prefill_tokens` tokens a
//! step) and admits waiting sequences, in order, while the cache holds every
//! running sequence at its expected length (`max_new_tokens` until a few sequences
//! have finished, then twice their mean completion, never more than the maximum),
//! so that sequences which do run long seldom need preempting; a decode
//! step advances every running sequence by one token, taking a new block where a
//! sequence crosses into one. When no block is free, the most recently admitted
//! running sequence is preempted: its blocks are freed and it goes back to the front
//! of the queue with the tokens it has drawn. On readmission its prompt is
//! prefilled again and those tokens are fed back through decode steps (teacher
//! forcing) before it draws new ones, so its keys and values are recomputed by the
//! very kernels that first made them, bit for bit (recompute preemption, as vLLM;
//! the prefill and decode kernels round differently, so re-prefilling the drawn
//! tokens would not be exact).
//!
//! Sharing: the prompt of sequence i is positions `0..P`; its first `F = ((P - 1) /
//! block_size) * block_size` positions fill whole blocks that every sequence with an
//! equal prompt (`source`) shares, prefilled once by whichever of them is admitted
//! first; the tail `F..P` (1 to block_size positions) and everything after are the
//! sequence's own. The first draw comes from the tail's last row, so each sequence's
//! values never depend on who shared its prompt or when.

use super::blocks::BlockPool;
use crate::{Error, Result};
use std::collections::VecDeque;

#[derive(Debug, Clone, Copy)]
pub struct SchedConfig {
    pub block_size: usize,
    pub max_running: usize,
    pub max_prefill_tokens: usize,
    pub max_new_tokens: usize,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Waiting,
    Running,
    Done,
}

#[derive(Debug, Clone)]
struct Seq {
    prompt_len: usize,
    source: usize,
    /// Positions in the shared prompt blocks (F).
    shared: usize,
    own: Vec<u32>,
    /// Positions written in the cache.
    cached: usize,
    out: Vec<u32>,
    state: State,
    admitted_at: u64,
}

#[derive(Debug, Clone, Default)]
struct Prefix {
    blocks: Vec<u32>,
    users: usize,
    /// Positions of the shared part written so far.
    filled: usize,
}

/// Positions `start..end` of sequence `seq`'s prompt, run in a prefill step; `last`
/// when they reach the prompt's end (the row whose logits give the first draw).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PrefillItem {
    pub seq: usize,
    pub start: usize,
    pub end: usize,
    pub last: bool,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Plan {
    Prefill(Vec<PrefillItem>),
    /// The sequences to advance, each by one token.
    Decode(Vec<usize>),
    Finished,
}

pub struct Scheduler {
    cfg: SchedConfig,
    seqs: Vec<Seq>,
    prefixes: Vec<Prefix>,
    waiting: VecDeque<usize>,
    running: Vec<usize>,
    pub pool: BlockPool,
    admissions: u64,
    pub preemptions: usize,
    /// Sequences admitted onto prompt blocks another sequence had prefilled.
    pub shared_admissions: usize,
    pub peak_running: usize,
    /// Completions finished and their tokens (the expected length).
    finished: usize,
    finished_tokens: usize,
}

impl Scheduler {
    /// `prompt_lens[i]` and `sources[i]` (the index of the first equal prompt, or i)
    /// of each sequence; `blocks` in the cache (block 0 padding).
    pub fn new(cfg: SchedConfig, prompt_lens: &[usize], sources: &[usize], blocks: usize) -> Self {
        let bs = cfg.block_size;
        let seqs = prompt_lens
            .iter()
            .zip(sources)
            .map(|(&p, &source)| Seq {
                prompt_len: p,
                source,
                shared: (p.max(1) - 1) / bs * bs,
                own: Vec::new(),
                cached: 0,
                out: Vec::new(),
                state: State::Waiting,
                admitted_at: 0,
            })
            .collect();
        Scheduler {
            cfg,
            seqs,
            prefixes: vec![Prefix::default(); prompt_lens.len()],
            waiting: (0..prompt_lens.len()).collect(),
            running: Vec::new(),
            pool: BlockPool::new(blocks),
            admissions: 0,
            preemptions: 0,
            shared_admissions: 0,
            peak_running: 0,
            finished: 0,
            finished_tokens: 0,
        }
    }

    /// Blocks one sequence of `prompt_len` + `max_new` tokens needs at its longest
    /// (the last drawn token is never fed back, so it takes no position).
    pub fn blocks_for(prompt_len: usize, max_new: usize, block_size: usize) -> usize {
        (prompt_len + max_new)
            .saturating_sub(1)
            .max(1)
            .div_ceil(block_size)
    }

    pub fn outputs(self) -> Vec<Vec<u32>> {
        self.seqs.into_iter().map(|s| s.out).collect()
    }

    pub fn out(&self, s: usize) -> &[u32] {
        &self.seqs[s].out
    }

    pub fn prompt_len(&self, s: usize) -> usize {
        self.seqs[s].prompt_len
    }

    /// Sequence `s`'s block table: the shared prompt blocks, then its own.
    pub fn table(&self, s: usize) -> impl Iterator<Item = u32> + '_ {
        let q = &self.seqs[s];
        self.prefixes[q.source].blocks.iter().chain(&q.own).copied()
    }

    /// The physical row of position `p` of sequence `s`.
    pub fn row(&self, s: usize, p: usize) -> u32 {
        let bs = self.cfg.block_size;
        let q = &self.seqs[s];
        let blocks = &self.prefixes[q.source].blocks;
        let b = p / bs;
        let block = if b < blocks.len() {
            blocks[b]
        } else {
            q.own[b - blocks.len()]
        };
        block * bs as u32 + (p % bs) as u32
    }

    /// The token and position a decode step feeds for `s`, and the draw index its
    /// logits give.
    pub fn decode_input(&self, s: usize) -> (u32, usize, usize) {
        let q = &self.seqs[s];
        let k = q.cached - q.prompt_len;
        (q.out[k], q.cached, k + 1)
    }

    /// Completion tokens a sequence is expected to reach.
    fn expected_new(&self) -> usize {
        let enough = (self.seqs.len() / 8).clamp(1, 8);
        if self.finished < enough {
            return self.cfg.max_new_tokens;
        }
        (2 * self.finished_tokens.div_ceil(self.finished)).min(self.cfg.max_new_tokens)
    }

    /// Blocks `s` is expected to need beyond what it holds.
    fn expected_growth(&self, s: usize, expect: usize) -> usize {
        let q = &self.seqs[s];
        let want = Self::blocks_for(q.prompt_len, expect.max(q.out.len()), self.cfg.block_size);
        let prefix = self.prefixes[q.source].blocks.len();
        want.saturating_sub(prefix + q.own.len())
    }

    /// The next step.
    pub fn plan(&mut self) -> Result<Plan> {
        let mut items = Vec::new();
        let mut budget = self.cfg.max_prefill_tokens;
        // Prompts part-way through, in admission order (running is kept so).
        for &s in &self.running {
            let q = &self.seqs[s];
            if q.cached < q.prompt_len && budget > 0 {
                let end = q.prompt_len.min(q.cached + budget);
                budget -= end - q.cached;
                items.push(PrefillItem {
                    seq: s,
                    start: q.cached,
                    end,
                    last: end == q.prompt_len,
                });
            }
        }
        // Admissions.
        while budget > 0 && self.running.len() < self.cfg.max_running {
            let Some(&s) = self.waiting.front() else {
                break;
            };
            let Some(start) = self.try_admit(s, &items) else {
                break;
            };
            self.waiting.pop_front();
            let end = self.seqs[s].prompt_len.min(start + budget);
            budget -= end - start;
            items.push(PrefillItem {
                seq: s,
                start,
                end,
                last: end == self.seqs[s].prompt_len,
            });
        }
        self.peak_running = self.peak_running.max(self.running.len());
        if !items.is_empty() {
            return Ok(Plan::Prefill(items));
        }
        if self.running.is_empty() {
            return match self.waiting.front() {
                None => Ok(Plan::Finished),
                Some(&s) => Err(Error::invalid(format!(
                    "the KV cache ({} blocks of {} positions) cannot hold one sequence of {} prompt \
                     tokens: raise --kv-cache-tokens",
                    self.pool.usable(),
                    self.cfg.block_size,
                    self.seqs[s].prompt_len
                ))),
            };
        }
        // A block for every sequence entering a new one; preempt from the back.
        let mut batch = Vec::with_capacity(self.running.len());
        let mut i = 0;
        while i < self.running.len() {
            let s = self.running[i];
            if self.needs_block(s) {
                loop {
                    if let Some(b) = self.pool.alloc() {
                        self.seqs[s].own.push(b);
                        break;
                    }
                    let victim = *self.running.last().expect("running");
                    self.preempt(victim);
                    if victim == s {
                        break;
                    }
                }
                if self.seqs[s].state != State::Running {
                    break; // s itself was the last one running after i
                }
            }
            batch.push(s);
            i += 1;
        }
        if batch.is_empty() {
            return Err(Error::invalid(
                "the KV cache cannot hold one running sequence: raise --kv-cache-tokens",
            ));
        }
        Ok(Plan::Decode(batch))
    }

    fn needs_block(&self, s: usize) -> bool {
        let q = &self.seqs[s];
        let prefix = self.prefixes[q.source].blocks.len();
        q.cached >= (prefix + q.own.len()) * self.cfg.block_size
    }

    /// Admit `s` if its blocks fit; returns the first position its prefill runs.
    fn try_admit(&mut self, s: usize, planned: &[PrefillItem]) -> Option<usize> {
        let bs = self.cfg.block_size;
        let q = &self.seqs[s];
        let (shared, source) = (q.shared, q.source);
        let p = &self.prefixes[source];
        let (need, start) = if p.users == 0 {
            (shared / bs + 1, 0)
        } else {
            // The shared part must be written by the end of this step's earlier items.
            let filled_now = planned
                .iter()
                .filter(|it| self.seqs[it.seq].source == source)
                .map(|it| it.end.min(shared))
                .max()
                .unwrap_or(0)
                .max(p.filled);
            if filled_now < shared {
                return None;
            }
            (1, shared)
        };
        if self.pool.free() < need {
            return None;
        }
        if !self.running.is_empty() {
            // room for every running sequence, and this one, at the expected length
            let expect = self.expected_new();
            let bs = self.cfg.block_size;
            let growth: usize = self
                .running
                .iter()
                .map(|&r| self.expected_growth(r, expect))
                .sum();
            let own = Self::blocks_for(q.prompt_len, expect.max(q.out.len()), bs) - shared / bs;
            let prefix = if start == 0 { shared / bs } else { 0 };
            if self.pool.free() < growth + prefix + own {
                return None;
            }
        }
        if start == 0 {
            let blocks: Vec<u32> = (0..shared / bs)
                .map(|_| self.pool.alloc().expect("checked"))
                .collect();
            self.prefixes[source].blocks = blocks;
        } else if shared > 0 {
            self.shared_admissions += 1;
        }
        let own = self.pool.alloc().expect("checked");
        self.prefixes[source].users += 1;
        self.admissions += 1;
        let q = &mut self.seqs[s];
        q.own = vec![own];
        q.cached = start;
        q.state = State::Running;
        q.admitted_at = self.admissions;
        self.running.push(s);
        Some(start)
    }

    /// Free `s`'s blocks (and its prompt's shared blocks when it was their last user).
    fn release(&mut self, s: usize) {
        let own = std::mem::take(&mut self.seqs[s].own);
        self.pool.release(own);
        let source = self.seqs[s].source;
        let p = &mut self.prefixes[source];
        p.users -= 1;
        if p.users == 0 {
            let blocks = std::mem::take(&mut p.blocks);
            p.filled = 0;
            self.pool.release(blocks);
        }
        self.running.retain(|&r| r != s);
        self.seqs[s].cached = 0;
    }

    fn preempt(&mut self, s: usize) {
        self.release(s);
        self.seqs[s].state = State::Waiting;
        self.waiting.push_front(s);
        self.preemptions += 1;
    }

    /// Record a prefill step: `drawn[i]` is the token drawn for the i-th item with
    /// `last` (kept unless the sequence is replaying drawn tokens).
    pub fn finish_prefill(&mut self, items: &[PrefillItem], drawn: &[u32], stop: &[u32]) {
        let mut d = drawn.iter();
        for it in items {
            let q = &mut self.seqs[it.seq];
            q.cached = it.end;
            let shared = q.shared;
            let p = &mut self.prefixes[q.source];
            p.filled = p.filled.max(it.end.min(shared));
            if it.last {
                let tok = *d.next().expect("a draw per last item");
                self.take_draw(it.seq, 0, tok, stop);
            }
        }
    }

    /// Record a decode step over `batch` (in order), `drawn[i]` its draws.
    pub fn finish_decode(&mut self, batch: &[usize], drawn: &[u32], stop: &[u32]) {
        for (&s, &tok) in batch.iter().zip(drawn) {
            let k = self.seqs[s].cached - self.seqs[s].prompt_len + 1;
            self.seqs[s].cached += 1;
            self.take_draw(s, k, tok, stop);
        }
    }

    fn take_draw(&mut self, s: usize, k: usize, tok: u32, stop: &[u32]) {
        let q = &mut self.seqs[s];
        if k < q.out.len() {
            return; // replaying what it drew before a preemption
        }
        q.out.push(tok);
        if stop.contains(&tok) || q.out.len() >= self.cfg.max_new_tokens {
            q.state = State::Done;
            self.finished += 1;
            self.finished_tokens += q.out.len();
            self.release(s);
        }
    }

    /// True when every sequence is done and every block is back.
    pub fn drained(&self) -> bool {
        self.seqs.iter().all(|s| s.state == State::Done) && self.pool.used() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Drive the scheduler with a fake model whose draw is a function of
    /// (sequence, draw index): outputs must not depend on the budget.
    fn run(
        prompts: &[usize],
        sources: &[usize],
        blocks: usize,
        cfg: SchedConfig,
    ) -> (Vec<Vec<u32>>, usize) {
        let mut s = Scheduler::new(cfg, prompts, sources, blocks);
        // even sequences stop at their second draw, odd ones run to the limit (so the
        // expected length learnt from the first is too short for the second)
        let draw = |seq: usize, k: usize| {
            if seq % 2 == 0 && k == 1 {
                10
            } else {
                ((seq * 31 + k * 7) % 10) as u32
            }
        };
        loop {
            match s.plan().unwrap() {
                Plan::Finished => break,
                Plan::Prefill(items) => {
                    let drawn: Vec<u32> = items
                        .iter()
                        .filter(|it| it.last)
                        .map(|it| draw(it.seq, 0))
                        .collect();
                    s.finish_prefill(&items, &drawn, &[10]);
                }
                Plan::Decode(batch) => {
                    let drawn: Vec<u32> = batch
                        .iter()
                        .map(|&q| {
                            let (tok, pos, k) = s.decode_input(q);
                            assert_eq!(tok, s.out(q)[pos - s.prompt_len(q)]);
                            // every position's row is a distinct live block row
                            let _ = s.row(q, pos);
                            draw(q, k)
                        })
                        .collect();
                    s.finish_decode(&batch, &drawn, &[10]);
                }
            }
        }
        assert!(s.drained(), "blocks leaked: {} in use", s.pool.used());
        let pre = s.preemptions;
        (s.outputs(), pre)
    }

    #[test]
    fn outputs_do_not_depend_on_the_budget_and_blocks_come_back() {
        let prompts = [5, 5, 5, 9, 9, 1, 16, 16, 3, 3, 7, 7, 20, 20, 20, 2];
        let sources = [0, 0, 0, 3, 3, 5, 6, 6, 8, 8, 10, 10, 12, 12, 12, 15];
        let cfg = SchedConfig {
            block_size: 4,
            max_running: 64,
            max_prefill_tokens: 64,
            max_new_tokens: 12,
        };
        let (want, pre) = run(&prompts, &sources, 200, cfg);
        assert_eq!(pre, 0);
        // one sequence at a time: 20 + 12 - 1 = 31 positions = 8 blocks (+1 padding)
        let one = Scheduler::blocks_for(20, 12, 4) + 1;
        let mut forced = 0;
        for blocks in [one, one + 2, 12, 20, 40] {
            for (max_running, max_prefill_tokens) in [(1, 64), (3, 5), (64, 3)] {
                let (got, pre) = run(
                    &prompts,
                    &sources,
                    blocks,
                    SchedConfig {
                        max_running,
                        max_prefill_tokens,
                        ..cfg
                    },
                );
                assert_eq!(got, want, "blocks {blocks} running {max_running}");
                forced += pre;
            }
        }
        assert!(forced > 0, "no budget forced a preemption");
        assert!(want.iter().any(|o| o.len() < 12), "no stop token drawn");
    }

    #[test]
    fn a_budget_below_one_sequence_is_an_error_naming_the_flag() {
        let cfg = SchedConfig {
            block_size: 4,
            max_running: 8,
            max_prefill_tokens: 64,
            max_new_tokens: 4,
        };
        let mut s = Scheduler::new(cfg, &[20], &[0], 3);
        let e = s.plan().unwrap_err().to_string();
        assert!(e.contains("--kv-cache-tokens"), "{e}");
    }
}
