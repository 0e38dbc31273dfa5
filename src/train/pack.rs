//! A mini-batch of rollouts packed for the training pass: every sequence whole, one
//! after another (cache slot = sequence, positions from 0), and the loss rows — one
//! per completion token, at the position whose hidden state predicts it.
//!
//! Micro-batches: `split_by_tokens` cuts a packed mini-batch into runs of whole
//! sequences of at most N tokens (a longer sequence is a run of its own) and `micro`
//! packs one run. The aggregation weights are those of the whole mini-batch, so the
//! gradients of the micro-batches add up to the mini-batch's exactly.

use super::Rollout;
use crate::backend::cpu::loss::{aggregate, LossAgg};
use crate::backend::AttnDims;
use crate::config::ModelConfig;

#[derive(Debug, Clone)]
pub struct Packed {
    pub ids: Vec<u32>,
    pub slots: Vec<u32>,
    pub positions: Vec<u32>,
    pub seqs: usize,
    pub max_len: usize,
    /// Per loss row: the packed token whose hidden state predicts the target.
    pub rows: Vec<u32>,
    pub targets: Vec<u32>,
    pub adv: Vec<f32>,
    /// The aggregation weight (`d loss / d l_row`).
    pub weight: Vec<f32>,
    /// `Some` per row where the rollout carries them.
    pub old_logp: Vec<Option<f32>>,
    pub ref_logp: Vec<Option<f32>>,
    /// The rollout (index into the mini-batch) of each row.
    pub record: Vec<usize>,
    /// Per sequence: its first packed token and its length.
    pub seq_tokens: Vec<(usize, usize)>,
    /// Per sequence: its first loss row and its number of rows.
    pub seq_rows: Vec<(usize, usize)>,
}

impl Packed {
    /// `records` are the rollouts of the mini-batch, `adv` their advantages.
    pub fn new(records: &[&Rollout], adv: &[f64], agg: LossAgg, max_new_tokens: usize) -> Self {
        let mut p = Packed {
            ids: Vec::new(),
            slots: Vec::new(),
            positions: Vec::new(),
            seqs: records.len(),
            max_len: records.iter().map(|r| r.len()).max().unwrap_or(1).max(1),
            rows: Vec::new(),
            targets: Vec::new(),
            adv: Vec::new(),
            weight: Vec::new(),
            old_logp: Vec::new(),
            ref_logp: Vec::new(),
            record: Vec::new(),
            seq_tokens: Vec::new(),
            seq_rows: Vec::new(),
        };
        let width = records
            .iter()
            .map(|r| r.completion_ids.len())
            .max()
            .unwrap_or(0)
            .max(1);
        let mut mask = vec![0.0f64; records.len() * width];
        for (s, r) in records.iter().enumerate() {
            let start = p.ids.len();
            for (t, &id) in r.prompt_ids.iter().chain(&r.completion_ids).enumerate() {
                p.ids.push(id);
                p.slots.push(s as u32);
                p.positions.push(t as u32);
            }
            let plen = r.prompt_ids.len();
            p.seq_tokens.push((start, p.ids.len() - start));
            p.seq_rows.push((p.rows.len(), r.completion_ids.len()));
            for (j, &id) in r.completion_ids.iter().enumerate() {
                p.rows.push((start + plen + j - 1) as u32);
                p.targets.push(id);
                p.adv.push(adv[s] as f32);
                p.old_logp.push(r.old_logprobs.as_ref().map(|v| v[j]));
                p.ref_logp.push(r.ref_logprobs.as_ref().map(|v| v[j]));
                p.record.push(s);
                mask[s * width + j] = 1.0;
            }
        }
        let zeros = vec![0.0f64; mask.len()];
        let (_, w) = aggregate(&zeros, &mask, records.len().max(1), agg, max_new_tokens);
        for (s, r) in records.iter().enumerate() {
            for j in 0..r.completion_ids.len() {
                p.weight.push(w[s * width + j] as f32);
            }
        }
        p
    }

    pub fn tokens(&self) -> usize {
        self.ids.len()
    }

    /// Runs of consecutive sequences of at most `budget` tokens each (a sequence
    /// longer than the budget is a run of its own); the whole batch when `None`.
    pub fn split_by_tokens(&self, budget: Option<usize>) -> Vec<std::ops::Range<usize>> {
        let Some(budget) = budget else {
            return std::iter::once(0..self.seqs).collect();
        };
        let mut out = Vec::new();
        let (mut start, mut used) = (0, 0);
        for (s, &(_, len)) in self.seq_tokens.iter().enumerate() {
            if s > start && used + len > budget {
                out.push(start..s);
                (start, used) = (s, 0);
            }
            used += len;
        }
        if start < self.seqs {
            out.push(start..self.seqs);
        }
        out
    }

    /// The sequences `seqs` packed on their own, with this batch's loss weights,
    /// advantages and log-probs (slots and rows renumbered from 0).
    pub fn micro(&self, seqs: std::ops::Range<usize>) -> Packed {
        let (t0, _) = self.seq_tokens[seqs.start];
        let (last_t, last_len) = self.seq_tokens[seqs.end - 1];
        let tokens = t0..last_t + last_len;
        let (r0, _) = self.seq_rows[seqs.start];
        let (last_r, last_n) = self.seq_rows[seqs.end - 1];
        let rows = r0..last_r + last_n;
        let s0 = seqs.start;
        Packed {
            ids: self.ids[tokens.clone()].to_vec(),
            slots: self.slots[tokens.clone()]
                .iter()
                .map(|&s| s - s0 as u32)
                .collect(),
            positions: self.positions[tokens].to_vec(),
            seqs: seqs.len(),
            max_len: self.seq_tokens[seqs.clone()]
                .iter()
                .map(|&(_, n)| n)
                .max()
                .unwrap_or(1)
                .max(1),
            rows: self.rows[rows.clone()]
                .iter()
                .map(|&r| r - t0 as u32)
                .collect(),
            targets: self.targets[rows.clone()].to_vec(),
            adv: self.adv[rows.clone()].to_vec(),
            weight: self.weight[rows.clone()].to_vec(),
            old_logp: self.old_logp[rows.clone()].to_vec(),
            ref_logp: self.ref_logp[rows.clone()].to_vec(),
            record: self.record[rows].iter().map(|&r| r - s0).collect(),
            seq_tokens: self.seq_tokens[seqs.clone()]
                .iter()
                .map(|&(t, n)| (t - t0, n))
                .collect(),
            seq_rows: self.seq_rows[seqs]
                .iter()
                .map(|&(r, n)| (r - r0, n))
                .collect(),
        }
    }

    pub fn dims(&self, cfg: &ModelConfig) -> AttnDims {
        AttnDims {
            tokens: self.tokens(),
            heads: cfg.num_attention_heads,
            kv_heads: cfg.num_key_value_heads,
            head_dim: cfg.head_dim,
            slots: self.seqs,
            max_len: self.max_len,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rollout(prompt: usize, completion: usize, k: u32) -> Rollout {
        Rollout {
            group: "g".into(),
            prompt_ids: (0..prompt as u32).map(|i| i + k).collect(),
            completion_ids: (0..completion as u32).map(|i| 100 + i + k).collect(),
            reward: k as f64,
            old_logprobs: Some((0..completion).map(|i| -(i as f32) - k as f32).collect()),
            ref_logprobs: None,
            advantage: None,
        }
    }

    #[test]
    fn micro_batches_cover_the_batch_with_its_weights() {
        let rs: Vec<Rollout> = [(3, 2), (2, 5), (4, 1), (1, 3)]
            .iter()
            .enumerate()
            .map(|(k, &(p, c))| rollout(p, c, k as u32))
            .collect();
        let refs: Vec<&Rollout> = rs.iter().collect();
        let adv = [0.5, -1.0, 2.0, 0.25];
        for agg in [
            LossAgg::TokenMean,
            LossAgg::SeqMeanTokenMean,
            LossAgg::SeqMeanTokenSumNorm,
        ] {
            let whole = Packed::new(&refs, &adv, agg, 8);
            // token lengths 5, 7, 5, 4: budget 8 gives [0], [1], [2], [3]; 12 gives [0, 1], [2, 3]
            assert_eq!(whole.split_by_tokens(Some(8)), vec![0..1, 1..2, 2..3, 3..4]);
            assert_eq!(whole.split_by_tokens(Some(12)), vec![0..2, 2..4]);
            assert_eq!(whole.split_by_tokens(Some(3)).len(), 4, "too long: alone");
            assert_eq!(whole.split_by_tokens(None), vec![0..4]);
            for budget in [3, 8, 12, 100] {
                let parts: Vec<Packed> = whole
                    .split_by_tokens(Some(budget))
                    .into_iter()
                    .map(|r| whole.micro(r))
                    .collect();
                let cat = |f: &dyn Fn(&Packed) -> Vec<f32>| -> Vec<f32> {
                    parts.iter().flat_map(f).collect()
                };
                assert_eq!(cat(&|p| p.weight.clone()), whole.weight, "{agg:?}");
                assert_eq!(cat(&|p| p.adv.clone()), whole.adv);
                let ids: Vec<u32> = parts.iter().flat_map(|p| p.ids.clone()).collect();
                assert_eq!(ids, whole.ids);
                let targets: Vec<u32> = parts.iter().flat_map(|p| p.targets.clone()).collect();
                assert_eq!(targets, whole.targets);
                for (p, r) in parts.iter().zip(whole.split_by_tokens(Some(budget))) {
                    // a micro-batch packs as its sequences alone would, weights apart
                    let alone = Packed::new(&refs[r.clone()], &adv[r], agg, 8);
                    assert_eq!(
                        (
                            &p.ids,
                            &p.slots,
                            &p.positions,
                            &p.rows,
                            &p.targets,
                            &p.record
                        ),
                        (
                            &alone.ids,
                            &alone.slots,
                            &alone.positions,
                            &alone.rows,
                            &alone.targets,
                            &alone.record
                        )
                    );
                    assert_eq!((p.seqs, p.max_len), (alone.seqs, alone.max_len));
                    assert_eq!(p.old_logp, alone.old_logp);
                }
            }
        }
    }
}
