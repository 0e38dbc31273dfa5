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
use crate::{Error, Result};

/// Scratch buffers for one forward pass, reused across layers.
struct Scratch<B: Backend> {
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

/// The device copies of a batch's indices.
struct BatchIdx<B: Backend> {
    slots: B::Idx,
    positions: B::Idx,
}

impl<B: Backend> Model<B> {
    /// Run new tokens through the model, extending `cache`. Returns the final-normed
    /// hidden states `[tokens, hidden]`. With `capture`, also returns the residual
    /// stream after the embedding and after each layer (before the final norm).
    pub fn forward(
        &self,
        batch: &TokenBatch,
        cache: &mut KvCache<B>,
        mut capture: Option<&mut Vec<Vec<f32>>>,
    ) -> Result<B::Buf> {
        let cfg = &self.cfg;
        let be = &self.backend;
        let t = batch.len();
        if t == 0 {
            return Err(Error::invalid("empty batch: nothing to run"));
        }
        batch.check_ids(cfg.vocab_size)?;
        let new_lens = advance_lens(batch, cache)?;
        let (h, i) = (cfg.hidden_size, cfg.intermediate_size);
        let idx = BatchIdx::<B> {
            slots: be.upload_idx(&batch.slots)?,
            positions: be.upload_idx(&batch.positions)?,
        };
        let ids = be.upload_idx(&batch.ids)?;
        let mut x = be.empty(t * h)?;
        be.embedding(&mut x, &ids, &self.weights.embed, t, h)?;
        if let Some(c) = capture.as_deref_mut() {
            c.push(be.download(&x)?);
        }
        let mut s = Scratch::<B> {
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
        };
        let dims = cache.dims(cfg, t);
        for (l, layer) in self.weights.layers.iter().enumerate() {
            self.layer_forward(layer, &mut x, &mut s, cache, l, &idx, dims)?;
            if let Some(c) = capture.as_deref_mut() {
                c.push(be.download(&x)?);
            }
        }
        cache.lens = new_lens;
        let mut out = be.empty(t * h)?;
        be.rmsnorm(
            &mut out,
            &x,
            &self.weights.norm,
            t,
            h,
            cfg.rms_norm_eps as f32,
        )?;
        Ok(out)
    }

    #[allow(clippy::too_many_arguments)]
    fn layer_forward(
        &self,
        w: &LayerWeights<B>,
        x: &mut B::Buf,
        s: &mut Scratch<B>,
        cache: &mut KvCache<B>,
        l: usize,
        idx: &BatchIdx<B>,
        d: AttnDims,
    ) -> Result<()> {
        let cfg = &self.cfg;
        let be = &self.backend;
        let (t, h, i) = (d.tokens, cfg.hidden_size, cfg.intermediate_size);
        let (q_dim, kv_dim, hd) = (cfg.q_dim(), cfg.kv_dim(), cfg.head_dim);
        let eps = cfg.rms_norm_eps as f32;
        let theta = cfg.rope_theta as f32;

        be.rmsnorm(&mut s.h, x, &w.input_norm, t, h, eps)?;
        be.linear(&mut s.q, &s.h, &w.q_proj, w.q_bias.as_ref(), t, q_dim, h)?;
        be.linear(&mut s.k, &s.h, &w.k_proj, w.k_bias.as_ref(), t, kv_dim, h)?;
        be.linear(&mut s.v, &s.h, &w.v_proj, w.v_bias.as_ref(), t, kv_dim, h)?;
        if let (Some(qn), Some(kn)) = (&w.q_norm, &w.k_norm) {
            // rmsnorm reads and writes distinct buffers: normalise via the attn scratch.
            be.rmsnorm(&mut s.attn, &s.q, qn, t * d.heads, hd, eps)?;
            std::mem::swap(&mut s.attn, &mut s.q);
            be.rmsnorm(&mut s.k_normed, &s.k, kn, t * d.kv_heads, hd, eps)?;
            std::mem::swap(&mut s.k_normed, &mut s.k);
        }
        be.rope(&mut s.q, &idx.positions, t, d.heads, hd, theta)?;
        be.rope(&mut s.k, &idx.positions, t, d.kv_heads, hd, theta)?;
        be.kv_write(&mut cache.k[l], &s.k, &idx.slots, &idx.positions, d)?;
        be.kv_write(&mut cache.v[l], &s.v, &idx.slots, &idx.positions, d)?;
        let scale = (hd as f32).powf(-0.5);
        be.attention(
            &mut s.attn,
            &s.q,
            &cache.k[l],
            &cache.v[l],
            &idx.slots,
            &idx.positions,
            d,
            scale,
        )?;
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
