//! One decoder layer for training: the forward pass that keeps what its backward
//! needs (recomputed from the saved layer input), and the backward pass, which
//! computes input gradients always and parameter gradients only for a trained
//! layer (a frozen layer runs no weight-gradient GEMM).
//!
//! Forward (as `model::forward`), with the names used below:
//!   h1 = rmsnorm(x, input_norm);  q0, k0, v = h1·Wqᵀ(+b), h1·Wkᵀ(+b), h1·Wvᵀ(+b)
//!   q1, k1 = rmsnorm_heads(q0, q_norm), rmsnorm_heads(k0, k_norm)   (Qwen3; else q0, k0)
//!   q2, k2 = rope(q1), rope(k1);  cache ← k2, v;  a, lse = attention(q2, cache)
//!   x2 = x + a·Woᵀ(+bo);  h2 = rmsnorm(x2, post_norm)
//!   g, u = h2·Wgᵀ, h2·Wuᵀ;  s = silu(g) * u;  y = x2 + s·Wdᵀ
//! Backward (dy → dx):
//!   ds = dy·Wd;  dg, du = swiglu'(ds);  dh2 = dg·Wg + du·Wu
//!   dx2 = dy + rmsnorm'(dh2);  da = dx2·Wo;  dq2, dK, dV = attention'(da)
//!   dk2, dv = gather(dK), gather(dV);  dq1, dk1 = rope'(dq2), rope'(dk2)
//!   dq0, dk0 = rmsnorm_heads'(dq1), rmsnorm_heads'(dk1)
//!   dh1 = dq0·Wq + dk0·Wk + dv·Wv;  dx = dx2 + rmsnorm'(dh1)
//! and for a trained layer dW += doutᵀ·in for every projection, db += colsum(dout),
//! dw += of each norm.

use super::pack::Packed;
use crate::backend::{AttnDims, Backend};
use crate::model::{LayerWeights, Model};
use crate::Result;

/// The device copies of a packed batch's indices.
pub struct PackedIdx<B: Backend> {
    pub slots: B::Idx,
    pub positions: B::Idx,
    pub dims: AttnDims,
}

impl<B: Backend> PackedIdx<B> {
    pub fn new(be: &B, p: &Packed, model: &Model<B>) -> Result<Self> {
        Ok(PackedIdx {
            slots: be.upload_idx(&p.slots)?,
            positions: be.upload_idx(&p.positions)?,
            dims: p.dims(&model.cfg),
        })
    }
}

/// What one layer's backward reads, recomputed from its input.
pub struct LayerActs<B: Backend> {
    h1: B::Buf,
    q0: B::Buf,
    k0: B::Buf,
    q2: B::Buf,
    k_cache: B::Buf,
    v_cache: B::Buf,
    a: B::Buf,
    lse: B::Buf,
    x2: B::Buf,
    h2: B::Buf,
    g: B::Buf,
    u: B::Buf,
    s: B::Buf,
}

/// Run layer `l` on `x` `[tokens, hidden]`; returns the output and the activations.
pub fn forward_saved<B: Backend>(
    model: &Model<B>,
    l: usize,
    x: &B::Buf,
    idx: &PackedIdx<B>,
) -> Result<(B::Buf, LayerActs<B>)> {
    let cfg = &model.cfg;
    let be = &model.backend;
    let w = &model.weights.layers[l];
    let d = idx.dims;
    let (t, h, i) = (d.tokens, cfg.hidden_size, cfg.intermediate_size);
    let (qd, kvd, hd) = (cfg.q_dim(), cfg.kv_dim(), cfg.head_dim);
    let eps = cfg.rms_norm_eps as f32;
    let theta = cfg.rope_theta as f32;

    let mut h1 = be.empty(t * h)?;
    be.rmsnorm(&mut h1, x, &w.input_norm, t, h, eps)?;
    let mut q0 = be.empty(t * qd)?;
    let mut k0 = be.empty(t * kvd)?;
    let mut v = be.empty(t * kvd)?;
    be.linear(&mut q0, &h1, &w.q_proj, w.q_bias.as_ref(), t, qd, h)?;
    be.linear(&mut k0, &h1, &w.k_proj, w.k_bias.as_ref(), t, kvd, h)?;
    be.linear(&mut v, &h1, &w.v_proj, w.v_bias.as_ref(), t, kvd, h)?;
    let (mut q2, mut k2) = (be.empty(t * qd)?, be.empty(t * kvd)?);
    match (&w.q_norm, &w.k_norm) {
        (Some(qn), Some(kn)) => {
            be.rmsnorm(&mut q2, &q0, qn, t * d.heads, hd, eps)?;
            be.rmsnorm(&mut k2, &k0, kn, t * d.kv_heads, hd, eps)?;
        }
        _ => {
            be.copy_convert(&mut q2, &q0)?;
            be.copy_convert(&mut k2, &k0)?;
        }
    }
    be.rope(&mut q2, &idx.positions, t, d.heads, hd, theta)?;
    be.rope(&mut k2, &idx.positions, t, d.kv_heads, hd, theta)?;
    let mut k_cache = be.zeros(d.cache_len())?;
    let mut v_cache = be.zeros(d.cache_len())?;
    be.kv_write(&mut k_cache, &k2, &idx.slots, &idx.positions, d)?;
    be.kv_write(&mut v_cache, &v, &idx.slots, &idx.positions, d)?;
    let mut a = be.empty(t * qd)?;
    let mut lse = be.empty_f32(t * d.heads)?;
    let scale = (hd as f32).powf(-0.5);
    be.attention_saved(
        &mut a,
        &mut lse,
        &q2,
        &k_cache,
        &v_cache,
        &idx.slots,
        &idx.positions,
        d,
        scale,
    )?;
    let mut x2 = be.empty(t * h)?;
    be.linear(&mut x2, &a, &w.o_proj, w.o_bias.as_ref(), t, h, qd)?;
    be.add_assign(&mut x2, x)?;
    let mut h2 = be.empty(t * h)?;
    be.rmsnorm(&mut h2, &x2, &w.post_norm, t, h, eps)?;
    let (mut g, mut u, mut s) = (be.empty(t * i)?, be.empty(t * i)?, be.empty(t * i)?);
    be.linear(&mut g, &h2, &w.gate_proj, None, t, i, h)?;
    be.linear(&mut u, &h2, &w.up_proj, None, t, i, h)?;
    be.swiglu(&mut s, &g, &u, t * i)?;
    let mut y = be.empty(t * h)?;
    be.linear(&mut y, &s, &w.down_proj, None, t, h, i)?;
    be.add_assign(&mut y, &x2)?;
    let acts = LayerActs {
        h1,
        q0,
        k0,
        q2,
        k_cache,
        v_cache,
        a,
        lse,
        x2,
        h2,
        g,
        u,
        s,
    };
    Ok((y, acts))
}

/// Backward of layer `l` from `dy`; returns `dx`. `grads` (f32 accumulators, the
/// layer's shape) is `Some` for a trained layer: its parameter gradients are added.
#[allow(clippy::too_many_arguments)]
pub fn backward<B: Backend>(
    model: &Model<B>,
    l: usize,
    x: &B::Buf,
    acts: &LayerActs<B>,
    dy: &B::Buf,
    mut grads: Option<&mut LayerWeights<B>>,
    idx: &PackedIdx<B>,
    need_dx: bool,
) -> Result<Option<B::Buf>> {
    let cfg = &model.cfg;
    let be = &model.backend;
    let w = &model.weights.layers[l];
    let d = idx.dims;
    let (t, h, i) = (d.tokens, cfg.hidden_size, cfg.intermediate_size);
    let (qd, kvd, hd) = (cfg.q_dim(), cfg.kv_dim(), cfg.head_dim);
    let eps = cfg.rms_norm_eps as f32;
    let theta = cfg.rope_theta as f32;
    let a = acts;

    // MLP.
    let mut ds = be.empty(t * i)?;
    be.linear_backward_input(&mut ds, dy, &w.down_proj, t, h, i, false)?;
    if let Some(gr) = grads.as_deref_mut() {
        be.linear_backward_weight(&mut gr.down_proj, None, dy, &a.s, t, h, i)?;
    }
    let (mut dg, mut du) = (be.empty(t * i)?, be.empty(t * i)?);
    be.swiglu_backward(&mut dg, &mut du, &ds, &a.g, &a.u, t * i)?;
    drop(ds);
    let mut dh2 = be.empty(t * h)?;
    be.linear_backward_input(&mut dh2, &dg, &w.gate_proj, t, i, h, false)?;
    be.linear_backward_input(&mut dh2, &du, &w.up_proj, t, i, h, true)?;
    if let Some(gr) = grads.as_deref_mut() {
        be.linear_backward_weight(&mut gr.gate_proj, None, &dg, &a.h2, t, i, h)?;
        be.linear_backward_weight(&mut gr.up_proj, None, &du, &a.h2, t, i, h)?;
    }
    drop((dg, du));
    let mut dx2 = be.empty(t * h)?;
    be.rmsnorm_backward(
        &mut dx2,
        grads.as_deref_mut().map(|g| &mut g.post_norm),
        &dh2,
        &a.x2,
        &w.post_norm,
        t,
        h,
        eps,
    )?;
    be.add_assign(&mut dx2, dy)?;

    // Attention.
    let mut da = be.empty(t * qd)?;
    be.linear_backward_input(&mut da, &dx2, &w.o_proj, t, h, qd, false)?;
    if let Some(gr) = grads.as_deref_mut() {
        be.linear_backward_weight(&mut gr.o_proj, gr.o_bias.as_mut(), &dx2, &a.a, t, h, qd)?;
    }
    let mut dq = be.empty(t * qd)?;
    let mut dk_cache = be.zeros(d.cache_len())?;
    let mut dv_cache = be.zeros(d.cache_len())?;
    let scale = (hd as f32).powf(-0.5);
    be.attention_backward(
        &mut dq,
        &mut dk_cache,
        &mut dv_cache,
        &da,
        &a.a,
        &a.lse,
        &a.q2,
        &a.k_cache,
        &a.v_cache,
        &idx.slots,
        &idx.positions,
        d,
        scale,
    )?;
    drop(da);
    let (mut dk, mut dv) = (be.empty(t * kvd)?, be.empty(t * kvd)?);
    be.kv_gather(&mut dk, &dk_cache, &idx.slots, &idx.positions, d)?;
    be.kv_gather(&mut dv, &dv_cache, &idx.slots, &idx.positions, d)?;
    drop((dk_cache, dv_cache));
    be.rope_backward(&mut dq, &idx.positions, t, d.heads, hd, theta)?;
    be.rope_backward(&mut dk, &idx.positions, t, d.kv_heads, hd, theta)?;
    let (dq0, dk0) = match (&w.q_norm, &w.k_norm) {
        (Some(qn), Some(kn)) => {
            let (mut dq0, mut dk0) = (be.empty(t * qd)?, be.empty(t * kvd)?);
            let (gq, gk) = match grads.as_deref_mut() {
                Some(gr) => (gr.q_norm.as_mut(), gr.k_norm.as_mut()),
                None => (None, None),
            };
            be.rmsnorm_backward(&mut dq0, gq, &dq, &a.q0, qn, t * d.heads, hd, eps)?;
            be.rmsnorm_backward(&mut dk0, gk, &dk, &a.k0, kn, t * d.kv_heads, hd, eps)?;
            (dq0, dk0)
        }
        _ => (dq, dk),
    };
    if let Some(gr) = grads.as_deref_mut() {
        be.linear_backward_weight(&mut gr.q_proj, gr.q_bias.as_mut(), &dq0, &a.h1, t, qd, h)?;
        be.linear_backward_weight(&mut gr.k_proj, gr.k_bias.as_mut(), &dk0, &a.h1, t, kvd, h)?;
        be.linear_backward_weight(&mut gr.v_proj, gr.v_bias.as_mut(), &dv, &a.h1, t, kvd, h)?;
    }
    let trained_input_norm = grads.is_some();
    if !need_dx && !trained_input_norm {
        return Ok(None);
    }
    let mut dh1 = be.empty(t * h)?;
    be.linear_backward_input(&mut dh1, &dq0, &w.q_proj, t, qd, h, false)?;
    be.linear_backward_input(&mut dh1, &dk0, &w.k_proj, t, kvd, h, true)?;
    be.linear_backward_input(&mut dh1, &dv, &w.v_proj, t, kvd, h, true)?;
    let mut dx = be.empty(t * h)?;
    be.rmsnorm_backward(
        &mut dx,
        grads.map(|g| &mut g.input_norm),
        &dh1,
        x,
        &w.input_norm,
        t,
        h,
        eps,
    )?;
    if !need_dx {
        return Ok(None);
    }
    be.add_assign(&mut dx, &dx2)?;
    Ok(Some(dx))
}
