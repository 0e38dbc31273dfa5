//! A mini-batch of rollouts packed for the training pass: every sequence whole, one
//! after another (cache slot = sequence, positions from 0), and the loss rows — one
//! per completion token, at the position whose hidden state predicts it.

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
