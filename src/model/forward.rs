//! The forward pass: embedding, decoder layers, final norm.
//!
//! Layer (transformers `Qwen3DecoderLayer` / `Qwen2DecoderLayer`):
//!   h = rmsnorm(x, input_norm)
//!   q, k, v = h·Wqᵀ(+bq), h·Wkᵀ(+bk), h·Wvᵀ(+bv)     reshaped [T, heads, head_dim]
//!   q, k = rmsnorm_per_head(q, q_norm), rmsnorm_per_head(k, k_norm)   (Qwen3 only)
//!   q, k = rope(q), rope(k);  cache ← k, v
//!   x += attention(q, cache)·Woᵀ(+bo)
//!   x += down(silu(gate(h2)) * up(h2)),  h2 = rmsnorm(x, post_norm)

use super::{KvCache, LayerWeights, Model, TokenBatch};
use crate::backend::{AttnDims, Backend};
use crate::config::ModelConfig;
use crate::{Error, Result};

/// Where a forward pass keeps each layer's keys and values and how it attends over
/// them: the contiguous `KvCache` (scoring, tests) or a paged cache (generation).
pub trait KvStore<B: Backend> {
    /// Store layer `l`'s new keys `k` and values `v` (`[tokens, kv_heads,
    /// head_dim]`), then `out = attention(q, cache)` for the batch's tokens.
    #[allow(clippy::too_many_arguments)]
    fn store_and_attend(
        &mut self,
        be: &B,
        l: usize,
        k: &B::Buf,
        v: &B::Buf,
        q: &B::Buf,
        out: &mut B::Buf,
        scale: f32,
    ) -> Result<()>;
}

/// Scratch buffers for one forward pass of `tokens` tokens, reused across layers
/// (and, by a decode step, across steps).
pub struct Scratch<B: Backend> {
    pub tokens: usize,
    h: B::Buf,
    q: B::Buf,
    k: B::Buf,
    v: B::Buf,
    k_normed: B::Buf,
    attn: B::Buf,
    proj: B::Buf,
    gate: B::Buf,
    up: B::Buf,
    act: B::Buf,
}

impl<B: Backend> Scratch<B> {
    /// Buffers for `t` tokens (`empty`: every op writes them whole).
    pub fn new(be: &B, cfg: &ModelConfig, t: usize) -> Result<Self> {
        let (h, i) = (cfg.hidden_size, cfg.intermediate_size);
        Ok(Scratch {
            tokens: t,
            h: be.empty(t * h)?,
            q: be.empty(t * cfg.q_dim())?,
            k: be.empty(t * cfg.kv_dim())?,
            v: be.empty(t * cfg.kv_dim())?,
            k_normed: be.empty(t * cfg.kv_dim())?,
            attn: be.empty(t * cfg.q_dim())?,
            proj: be.empty(t * h)?,
            gate: be.empty(t * i)?,
            up: be.empty(t * i)?,
            act: be.empty(t * i)?,
        })
    }
}

impl<B: Backend> Scratch<B> {
    /// Use the buffers for `t` tokens (at most what they were made for): `set_len`.
    pub fn set_tokens(&mut self, be: &B, cfg: &ModelConfig, t: usize) -> Result<()> {
        let (h, i, q, kv) = (
            cfg.hidden_size,
            cfg.intermediate_size,
            cfg.q_dim(),
            cfg.kv_dim(),
        );
        for (buf, per) in [
            (&mut self.h, h),
            (&mut self.q, q),
            (&mut self.k, kv),
            (&mut self.v, kv),
            (&mut self.k_normed, kv),
            (&mut self.attn, q),
            (&mut self.proj, h),
            (&mut self.gate, i),
            (&mut self.up, i),
            (&mut self.act, i),
        ] {
            be.set_len(buf, t * per)?;
        }
        self.tokens = t;
        Ok(())
    }
}

/// The contiguous cache as a `KvStore`: `kv_write` then `attention`.
struct Contiguous<'a, B: Backend> {
    cache: &'a mut KvCache<B>,
    slots: &'a B::Idx,
    positions: &'a B::Idx,
    dims: AttnDims,
}

impl<B: Backend> KvStore<B> for Contiguous<'_, B> {
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
        be.kv_write(&mut self.cache.k[l], k, self.slots, self.positions, d)?;
        be.kv_write(&mut self.cache.v[l], v, self.slots, self.positions, d)?;
        be.attention(
            out,
            q,
            &self.cache.k[l],
            &self.cache.v[l],
            self.slots,
            self.positions,
            d,
            scale,
        )
    }
}

impl<B: Backend> Model<B> {
    /// Run new tokens through the model, extending `cache`. Returns the final-normed
    /// hidden states `[tokens, hidden]`. With `capture`, also returns the residual
    /// stream after the embedding and after each layer (before the final norm).
    pub fn forward(
        &self,
        batch: &TokenBatch,
        cache: &mut KvCache<B>,
        capture: Option<&mut Vec<Vec<f32>>>,
    ) -> Result<B::Buf> {
        let cfg = &self.cfg;
        let be = &self.backend;
        let t = batch.len();
        if t == 0 {
            return Err(Error::invalid("empty batch: nothing to run"));
        }
        batch.check_ids(cfg.vocab_size)?;
        let new_lens = advance_lens(batch, cache)?;
        let h = cfg.hidden_size;
        let slots = be.upload_idx(&batch.slots)?;
        let positions = be.upload_idx(&batch.positions)?;
        let ids = be.upload_idx(&batch.ids)?;
        let dims = cache.dims(cfg, t);
        let mut store = Contiguous {
            cache,
            slots: &slots,
            positions: &positions,
            dims,
        };
        let mut s = Scratch::<B>::new(be, cfg, t)?;
        let mut x = be.empty(t * h)?;
        let mut out = be.empty(t * h)?;
        self.forward_into(
            &ids, &positions, &mut store, &mut s, &mut x, &mut out, capture,
        )?;
        cache.lens = new_lens;
        Ok(out)
    }

    /// The forward pass over buffers the caller owns: `ids` and `positions` of
    /// `s.tokens` tokens, keys and values through `store`; `x` is the residual
    /// stream, `out` receives the final-normed hidden states. Allocates nothing
    /// itself (a decode step reuses everything).
    #[allow(clippy::too_many_arguments)]
    pub fn forward_into(
        &self,
        ids: &B::Idx,
        positions: &B::Idx,
        store: &mut dyn KvStore<B>,
        s: &mut Scratch<B>,
        x: &mut B::Buf,
        out: &mut B::Buf,
        mut capture: Option<&mut Vec<Vec<f32>>>,
    ) -> Result<()> {
        let cfg = &self.cfg;
        let be = &self.backend;
        let (t, h) = (s.tokens, cfg.hidden_size);
        be.embedding(x, ids, &self.weights.embed, t, h)?;
        if let Some(c) = capture.as_deref_mut() {
            c.push(be.download(x)?);
        }
        for (l, layer) in self.weights.layers.iter().enumerate() {
            self.layer_forward(layer, x, s, store, l, positions)?;
            if let Some(c) = capture.as_deref_mut() {
                c.push(be.download(x)?);
            }
        }
        be.rmsnorm(out, x, &self.weights.norm, t, h, cfg.rms_norm_eps as f32)
    }

    fn layer_forward(
        &self,
        w: &LayerWeights<B>,
        x: &mut B::Buf,
        s: &mut Scratch<B>,
        store: &mut dyn KvStore<B>,
        l: usize,
        positions: &B::Idx,
    ) -> Result<()> {
        let cfg = &self.cfg;
        let be = &self.backend;
        let (t, h, i) = (s.tokens, cfg.hidden_size, cfg.intermediate_size);
        let (q_dim, kv_dim, hd) = (cfg.q_dim(), cfg.kv_dim(), cfg.head_dim);
        let (heads, kv_heads) = (cfg.num_attention_heads, cfg.num_key_value_heads);
        let eps = cfg.rms_norm_eps as f32;
        let theta = cfg.rope_theta as f32;

        be.rmsnorm(&mut s.h, x, &w.input_norm, t, h, eps)?;
        be.linear(&mut s.q, &s.h, &w.q_proj, w.q_bias.as_ref(), t, q_dim, h)?;
        be.linear(&mut s.k, &s.h, &w.k_proj, w.k_bias.as_ref(), t, kv_dim, h)?;
        be.linear(&mut s.v, &s.h, &w.v_proj, w.v_bias.as_ref(), t, kv_dim, h)?;
        if let (Some(qn), Some(kn)) = (&w.q_norm, &w.k_norm) {
            // rmsnorm reads and writes distinct buffers: normalise via the attn scratch.
            be.rmsnorm(&mut s.attn, &s.q, qn, t * heads, hd, eps)?;
            std::mem::swap(&mut s.attn, &mut s.q);
            be.rmsnorm(&mut s.k_normed, &s.k, kn, t * kv_heads, hd, eps)?;
            std::mem::swap(&mut s.k_normed, &mut s.k);
        }
        be.rope(&mut s.q, positions, t, heads, hd, theta)?;
        be.rope(&mut s.k, positions, t, kv_heads, hd, theta)?;
        let scale = (hd as f32).powf(-0.5);
        store.store_and_attend(be, l, &s.k, &s.v, &s.q, &mut s.attn, scale)?;
        be.linear(
            &mut s.proj,
            &s.attn,
            &w.o_proj,
            w.o_bias.as_ref(),
            t,
            h,
            q_dim,
        )?;
        be.add_assign(x, &s.proj)?;

        be.rmsnorm(&mut s.h, x, &w.post_norm, t, h, eps)?;
        be.linear(&mut s.gate, &s.h, &w.gate_proj, None, t, i, h)?;
        be.linear(&mut s.up, &s.h, &w.up_proj, None, t, i, h)?;
        be.swiglu(&mut s.act, &s.gate, &s.up, t * i)?;
        be.linear(&mut s.proj, &s.act, &w.down_proj, None, t, h, i)?;
        be.add_assign(x, &s.proj)
    }
}

/// Check that each slot's new tokens continue its sequence contiguously and fit the
/// cache; return the lengths after the batch.
fn advance_lens<B: Backend>(batch: &TokenBatch, cache: &KvCache<B>) -> Result<Vec<usize>> {
    let mut next = cache.lens.clone();
    for (&s, &p) in batch.slots.iter().zip(&batch.positions) {
        let s = s as usize;
        if s >= cache.slots {
            return Err(Error::invalid(format!(
                "cache slot {s} out of range ({} slots)",
                cache.slots
            )));
        }
        if p as usize != next[s] {
            return Err(Error::invalid(format!(
                "slot {s}: position {p} does not continue the sequence (expected {})",
                next[s]
            )));
        }
        if next[s] >= cache.max_len {
            return Err(Error::invalid(format!(
                "sequence longer than the cache ({} positions)",
                cache.max_len
            )));
        }
        next[s] += 1;
    }
    Ok(next)
}
