//! Per-layer key/value caches, `[slots, max_len, kv_heads, head_dim]` each. A slot
//! holds one sequence; `lens[s]` counts the positions written so far. A slot's first
//! `n` positions are one contiguous range of each buffer, so `copy_prefix` can give a
//! slot another slot's prompt with one device copy per layer and buffer.

use crate::backend::{AttnDims, Backend};
use crate::config::ModelConfig;
use crate::{Error, Result};

pub struct KvCache<B: Backend> {
    pub k: Vec<B::Buf>,
    pub v: Vec<B::Buf>,
    pub slots: usize,
    pub max_len: usize,
    pub lens: Vec<usize>,
    /// Elements of one position of one slot: `kv_heads * head_dim`.
    pub kv_dim: usize,
}

impl<B: Backend> KvCache<B> {
    pub fn new(backend: &B, cfg: &ModelConfig, slots: usize, max_len: usize) -> Result<Self> {
        if slots == 0 || max_len == 0 {
            return Err(Error::invalid(
                "KV cache needs at least one slot and one position",
            ));
        }
        let n = slots * max_len * cfg.kv_dim();
        let mut k = Vec::with_capacity(cfg.num_hidden_layers);
        let mut v = Vec::with_capacity(cfg.num_hidden_layers);
        for _ in 0..cfg.num_hidden_layers {
            k.push(backend.zeros(n)?);
            v.push(backend.zeros(n)?);
        }
        Ok(KvCache {
            k,
            v,
            slots,
            max_len,
            lens: vec![0; slots],
            kv_dim: cfg.kv_dim(),
        })
    }

    /// Bytes a cache of this size takes at `bytes_per_elem`.
    pub fn bytes(cfg: &ModelConfig, slots: usize, max_len: usize, bytes_per_elem: usize) -> usize {
        2 * cfg.num_hidden_layers * slots * max_len * cfg.kv_dim() * bytes_per_elem
    }

    pub fn dims(&self, cfg: &ModelConfig, tokens: usize) -> AttnDims {
        AttnDims {
            tokens,
            heads: cfg.num_attention_heads,
            kv_heads: cfg.num_key_value_heads,
            head_dim: cfg.head_dim,
            slots: self.slots,
            max_len: self.max_len,
        }
    }

    /// Give slot `to` the first `len` positions of slot `from` (keys and values of
    /// every layer) and set its length to `len`: what prefilling the same tokens into
    /// `to` would have written. `from` must hold at least `len` positions.
    pub fn copy_prefix(&mut self, backend: &B, from: usize, to: usize, len: usize) -> Result<()> {
        if from >= self.slots || to >= self.slots || from == to {
            return Err(Error::invalid(format!(
                "copy_prefix: slots {from} -> {to} of a cache of {} slots",
                self.slots
            )));
        }
        if len > self.lens[from] {
            return Err(Error::invalid(format!(
                "copy_prefix: slot {from} holds {} positions, not {len}",
                self.lens[from]
            )));
        }
        let slot_elems = self.max_len * self.kv_dim;
        let n = len * self.kv_dim;
        for buf in self.k.iter_mut().chain(self.v.iter_mut()) {
            backend.copy_within(buf, from * slot_elems, to * slot_elems, n)?;
        }
        self.lens[to] = len;
        Ok(())
    }

    /// Forget slot `s` so a new sequence can use it.
    pub fn reset_slot(&mut self, s: usize) {
        self.lens[s] = 0;
    }
}
