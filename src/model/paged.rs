//! The paged KV cache: per layer, keys and values in fixed-size blocks,
//! `[blocks, block_size, kv_heads, head_dim]` each, addressed through a block table
//! per sequence (vLLM's layout). Which blocks a sequence owns is the generation
//! scheduler's business (`generate::blocks`); this holds the buffers and runs a
//! forward pass's key/value writes and attention over them.

use super::forward::KvStore;
use crate::backend::accounting::{purpose, Purpose};
use crate::backend::{Backend, PagedDims};
use crate::config::ModelConfig;
use crate::{Error, Result};

pub struct PagedKvCache<B: Backend> {
    pub k: Vec<B::Buf>,
    pub v: Vec<B::Buf>,
    pub blocks: usize,
    pub block_size: usize,
}

impl<B: Backend> PagedKvCache<B> {
    /// `blocks` blocks of `block_size` positions per layer (`empty`: a position is
    /// written before anything reads it; block 0 serves decode-step padding rows).
    pub fn new(backend: &B, cfg: &ModelConfig, blocks: usize, block_size: usize) -> Result<Self> {
        if blocks == 0 || block_size == 0 {
            return Err(Error::invalid(
                "paged KV cache needs at least one block of one position",
            ));
        }
        let _k = purpose(Purpose::KvCache);
        let n = blocks * block_size * cfg.kv_dim();
        let mut k = Vec::with_capacity(cfg.num_hidden_layers);
        let mut v = Vec::with_capacity(cfg.num_hidden_layers);
        for _ in 0..cfg.num_hidden_layers {
            k.push(backend.empty(n)?);
            v.push(backend.empty(n)?);
        }
        Ok(PagedKvCache {
            k,
            v,
            blocks,
            block_size,
        })
    }

    /// Bytes per cached position, all layers, at `bytes_per_elem`.
    pub fn bytes_per_token(cfg: &ModelConfig, bytes_per_elem: usize) -> usize {
        2 * cfg.num_hidden_layers * cfg.kv_dim() * bytes_per_elem
    }

    pub fn dims(
        &self,
        cfg: &ModelConfig,
        tokens: usize,
        table_rows: usize,
        table_width: usize,
    ) -> PagedDims {
        PagedDims {
            tokens,
            heads: cfg.num_attention_heads,
            kv_heads: cfg.num_key_value_heads,
            head_dim: cfg.head_dim,
            blocks: self.blocks,
            block_size: self.block_size,
            table_rows,
            table_width,
        }
    }
}

/// The device indices of one forward pass over a paged cache: for each token its
/// physical row (where its key and value go), block-table row and position, and
/// the block table (`PagedDims`).
pub struct PagedIdx<'a, B: Backend> {
    pub rows: &'a B::Idx,
    pub seq: &'a B::Idx,
    pub pos: &'a B::Idx,
    pub table: &'a B::Idx,
}

/// A paged cache as a `KvStore`. `decode`: the decode kernel's workspace (every
/// token its sequence's only new one), else the prefill kernel plans tiles.
pub struct PagedStore<'a, B: Backend> {
    pub cache: &'a mut PagedKvCache<B>,
    pub idx: PagedIdx<'a, B>,
    pub dims: PagedDims,
    pub decode: Option<&'a mut B::Buf>,
}

impl<B: Backend> KvStore<B> for PagedStore<'_, B> {
    fn store_and_attend(
        &mut self,
        be: &B,
        l: usize,
        k: &B::Buf,
        v: &B::Buf,
        q: &B::Buf,
        out: &mut B::Buf,
        scale: f32,
    ) -> Result<()> {
        let d = self.dims;
        be.kv_write_paged(&mut self.cache.k[l], k, self.idx.rows, d)?;
        be.kv_write_paged(&mut self.cache.v[l], v, self.idx.rows, d)?;
        be.attention_paged(
            out,
            q,
            &self.cache.k[l],
            &self.cache.v[l],
            self.idx.table,
            self.idx.seq,
            self.idx.pos,
            d,
            scale,
            self.decode.as_deref_mut(),
        )
    }
}
