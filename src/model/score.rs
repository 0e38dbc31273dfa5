//! From final hidden states to what users read: per-token log-probs of a ragged
//! batch, and next-token logits. The LM head runs in row chunks so at most
//! `LOGIT_CHUNK_ELEMS` logits exist at a time (Qwen's vocabulary is 151,936).

use super::{Model, TokenBatch};
use crate::backend::accounting::{purpose, Purpose};
use crate::backend::Backend;
use crate::{Error, Result};

/// Largest logits block materialised at once (rows x vocab).
pub(crate) const LOGIT_CHUNK_ELEMS: usize = 1 << 26;

impl<B: Backend> Model<B> {
    /// Logits `[rows, vocab]` for `rows` final hidden states, on the host.
    pub fn logits(&self, hidden: &B::Buf, rows: usize) -> Result<Vec<f32>> {
        let (h, v) = (self.cfg.hidden_size, self.cfg.vocab_size);
        let mut all = Vec::with_capacity(rows * v);
        for (r0, n) in chunks(rows, v) {
            let x = self.backend.slice(hidden, r0 * h, n * h)?;
            all.extend(self.backend.download(&self.logits_on_device(&x, n)?)?);
        }
        Ok(all)
    }

    /// Logits `[rows, vocab]` (f32) of `rows` final hidden states, left on the device.
    pub fn logits_on_device(&self, hidden: &B::Buf, rows: usize) -> Result<B::Buf> {
        let (h, v) = (self.cfg.hidden_size, self.cfg.vocab_size);
        let _l = purpose(Purpose::Logits);
        let mut logits = self.backend.empty_f32(rows * v)?;
        self.backend
            .linear(&mut logits, hidden, self.weights.head(), None, rows, v, h)?;
        Ok(logits)
    }

    /// `out[r] = log p(target[r] | hidden[r])` over the rows of `hidden`.
    pub fn logprobs(&self, hidden: &B::Buf, targets: &[u32]) -> Result<Vec<f32>> {
        let (h, v) = (self.cfg.hidden_size, self.cfg.vocab_size);
        let rows = targets.len();
        let mut out = Vec::with_capacity(rows);
        for (r0, n) in chunks(rows, v) {
            let x = self.backend.slice(hidden, r0 * h, n * h)?;
            let logits = self.logits_on_device(&x, n)?;
            let tgt = self.backend.upload_idx(&targets[r0..r0 + n])?;
            let mut lp = self.backend.empty_f32(n)?;
            self.backend.logprob_gather(&mut lp, &logits, &tgt, n, v)?;
            out.extend(self.backend.download(&lp)?);
        }
        Ok(out)
    }

    /// Per-token log-probs of each sequence: `result[i][j] = log p(seq[j + 1] | seq[..=j])`
    /// (the first token has none, so `result[i].len() == seq.len() - 1`).
    pub fn score(&self, seqs: &[Vec<u32>]) -> Result<Vec<Vec<f32>>> {
        if seqs.iter().any(|s| s.is_empty()) {
            return Err(Error::invalid("cannot score an empty sequence"));
        }
        let max_len = seqs.iter().map(Vec::len).max().unwrap_or(0);
        let mut cache = self.new_cache(seqs.len(), max_len)?;
        let mut batch = TokenBatch::default();
        for (slot, s) in seqs.iter().enumerate() {
            batch.push_seq(slot, 0, s);
        }
        let hidden = self.forward(&batch, &mut cache, None)?;
        // Row r predicts the next token of its sequence; a sequence's last row has no
        // target, so it gets a dummy one and its result is dropped.
        let targets: Vec<u32> = seqs
            .iter()
            .flat_map(|s| s[1..].iter().copied().chain([0]))
            .collect();
        let lp = self.logprobs(&hidden, &targets)?;
        let mut out = Vec::with_capacity(seqs.len());
        let mut r = 0;
        for s in seqs {
            out.push(lp[r..r + s.len() - 1].to_vec());
            r += s.len();
        }
        Ok(out)
    }
}

/// Split `rows` into (start, count) chunks of at most LOGIT_CHUNK_ELEMS logits.
pub(crate) fn chunks(rows: usize, vocab: usize) -> impl Iterator<Item = (usize, usize)> {
    let step = (LOGIT_CHUNK_ELEMS / vocab).max(1);
    (0..rows)
        .step_by(step)
        .map(move |r0| (r0, step.min(rows - r0)))
}
