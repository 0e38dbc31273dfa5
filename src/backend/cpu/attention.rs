//! Causal grouped-query attention over a KV cache (the reference for prefill and
//! decode alike).
//!
//! q, out `[tokens, heads, head_dim]`; caches `[slots, max_len, kv_heads, head_dim]`.
//! Token t (slot s, position p) attends to cache positions `0..=p` of slot s; query
//! head h reads kv head `h / (heads / kv_heads)`. Softmax is computed in the compute
//! type with the max subtracted, like transformers' eager attention in f32.

use super::Real;
use crate::backend::AttnDims;
use rayon::prelude::*;

/// `cache[slot[t], pos[t]] = x[t]`; x `[tokens, kv_heads, head_dim]`.
pub fn kv_write<T: Real>(cache: &mut [T], x: &[T], slot: &[u32], pos: &[u32], d: AttnDims) {
    let row = d.kv_heads * d.head_dim;
    assert_eq!(cache.len(), d.cache_len(), "kv_write: cache");
    assert_eq!(x.len(), d.tokens * row, "kv_write: x");
    for t in 0..d.tokens {
        let (s, p) = (slot[t] as usize, pos[t] as usize);
        assert!(
            s < d.slots && p < d.max_len,
            "kv_write: slot {s} pos {p} outside the cache"
        );
        let dst = (s * d.max_len + p) * row;
        cache[dst..dst + row].copy_from_slice(&x[t * row..(t + 1) * row]);
    }
}

/// Backward of `kv_write`: `x[t] = cache[slot[t], pos[t]]` (=).
pub fn kv_gather<T: Real>(x: &mut [T], cache: &[T], slot: &[u32], pos: &[u32], d: AttnDims) {
    let row = d.kv_heads * d.head_dim;
    assert_eq!(cache.len(), d.cache_len(), "kv_gather: cache");
    assert_eq!(x.len(), d.tokens * row, "kv_gather: x");
    for t in 0..d.tokens {
        let (s, p) = (slot[t] as usize, pos[t] as usize);
        assert!(
            s < d.slots && p < d.max_len,
            "kv_gather: slot {s} pos {p} outside the cache"
        );
        let src = (s * d.max_len + p) * row;
        x[t * row..(t + 1) * row].copy_from_slice(&cache[src..src + row]);
    }
}

#[allow(clippy::too_many_arguments)]
pub fn attention<T: Real>(
    out: &mut [T],
    q: &[T],
    k_cache: &[T],
    v_cache: &[T],
    slot: &[u32],
    pos: &[u32],
    d: AttnDims,
    scale: f32,
) {
    let mut lse = vec![T::zero(); d.tokens * d.heads];
    attention_saved(out, &mut lse, q, k_cache, v_cache, slot, pos, d, scale);
}

/// `attention` that also writes `lse [tokens, heads]` (=): the log-sum-exp of the
/// scaled scores, `max_j s_j + ln(sum_j exp(s_j - max))` with `s_j = scale * q·k_j`
/// (natural log, as `kernels/attention_prefill.cu` saves it).
#[allow(clippy::too_many_arguments)]
pub fn attention_saved<T: Real>(
    out: &mut [T],
    lse: &mut [T],
    q: &[T],
    k_cache: &[T],
    v_cache: &[T],
    slot: &[u32],
    pos: &[u32],
    d: AttnDims,
    scale: f32,
) {
    let hd = d.head_dim;
    let q_row = d.heads * hd;
    assert_eq!(q.len(), d.tokens * q_row, "attention: q");
    assert_eq!(out.len(), d.tokens * q_row, "attention: out");
    assert_eq!(lse.len(), d.tokens * d.heads, "attention: lse");
    assert_eq!(k_cache.len(), d.cache_len(), "attention: k_cache");
    assert_eq!(v_cache.len(), d.cache_len(), "attention: v_cache");
    assert_eq!(d.heads % d.kv_heads, 0, "attention: heads % kv_heads");
    let group = d.heads / d.kv_heads;
    let scale = T::from_f32(scale);
    out.par_chunks_mut(hd)
        .zip(lse.par_iter_mut())
        .enumerate()
        .for_each(|(row, (o, lse))| {
            let (t, h) = (row / d.heads, row % d.heads);
            let (s, p) = (slot[t] as usize, pos[t] as usize);
            assert!(
                s < d.slots && p < d.max_len,
                "attention: slot {s} pos {p} outside the cache"
            );
            let kvh = h / group;
            let key = |j: usize| ((s * d.max_len + j) * d.kv_heads + kvh) * hd;
            *lse = attend_row(
                o,
                &q[row * hd..(row + 1) * hd],
                k_cache,
                v_cache,
                p,
                key,
                scale,
            );
        });
}

/// One query row: `o = softmax_j(scale q·k_j) v_j` over positions `0..=p`, key and
/// value j at element `key(j)` of the caches; returns the log-sum-exp. The contiguous
/// and the paged reference (`paged.rs`) both use it, so they agree bit for bit.
pub(super) fn attend_row<T: Real>(
    o: &mut [T],
    qv: &[T],
    k_cache: &[T],
    v_cache: &[T],
    p: usize,
    key: impl Fn(usize) -> usize,
    scale: T,
) -> T {
    let hd = qv.len();
    let scores: Vec<T> = (0..=p)
        .map(|j| {
            let kj = &k_cache[key(j)..key(j) + hd];
            qv.iter().zip(kj).map(|(&a, &b)| a * b).sum::<T>() * scale
        })
        .collect();
    let max = scores.iter().fold(T::neg_infinity(), |m, &v| m.max(v));
    let weights: Vec<T> = scores.iter().map(|&v| (v - max).exp()).collect();
    let denom: T = weights.iter().copied().sum();
    o.iter_mut().for_each(|v| *v = T::zero());
    for (j, &w) in weights.iter().enumerate() {
        let vj = &v_cache[key(j)..key(j) + hd];
        let w = w / denom;
        for (o, &v) in o.iter_mut().zip(vj) {
            *o = *o + w * v;
        }
    }
    max + denom.ln()
}

/// Backward of `attention_saved` (FlashAttention-2's math), per query row (t, h)
/// with `P_j = exp(scale * q·k_j - lse)` recomputed from the saved lse:
///
/// `D = dO·O`, `dP_j = dO·v_j`, `dS_j = P_j (dP_j - D)`,
/// `dq = scale * sum_j dS_j k_j` (=),
/// `dk_cache_accum[slot, j, kvh] += scale * dS_j q`, `dv_cache_accum[slot, j, kvh] += P_j dO`
/// (+=, summed over the query heads of the kv head's group and over tokens).
///
/// dq, dout, out, q `[tokens, heads, head_dim]`; lse `[tokens, heads]`; the caches and
/// their gradients `[slots, max_len, kv_heads, head_dim]`. Only positions `0..=pos[t]`
/// of each token's slot are touched. dq rows run in parallel; the cache
/// accumulation is serial over rows (a fixed order, no atomics).
#[allow(clippy::too_many_arguments)]
pub fn attention_backward<T: Real>(
    dq: &mut [T],
    dk_cache_accum: &mut [T],
    dv_cache_accum: &mut [T],
    dout: &[T],
    out: &[T],
    lse: &[T],
    q: &[T],
    k_cache: &[T],
    v_cache: &[T],
    slot: &[u32],
    pos: &[u32],
    d: AttnDims,
    scale: f32,
) {
    let hd = d.head_dim;
    let q_len = d.tokens * d.heads * hd;
    for (buf, name) in [(q, "q"), (out, "out"), (dout, "dout")] {
        assert_eq!(buf.len(), q_len, "attention_backward: {name}");
    }
    assert_eq!(dq.len(), q_len, "attention_backward: dq");
    assert_eq!(lse.len(), d.tokens * d.heads, "attention_backward: lse");
    for (buf, name) in [(k_cache, "k_cache"), (v_cache, "v_cache")] {
        assert_eq!(buf.len(), d.cache_len(), "attention_backward: {name}");
    }
    assert_eq!(
        dk_cache_accum.len(),
        d.cache_len(),
        "attention_backward: dk"
    );
    assert_eq!(
        dv_cache_accum.len(),
        d.cache_len(),
        "attention_backward: dv"
    );
    assert_eq!(
        d.heads % d.kv_heads,
        0,
        "attention_backward: heads % kv_heads"
    );
    let group = d.heads / d.kv_heads;
    let scale = T::from_f32(scale);
    let dot = |a: &[T], b: &[T]| a.iter().zip(b).map(|(&x, &y)| x * y).sum::<T>();
    // Per row: (P_j, dS_j) for j = 0..=p, and dq.
    let rows: Vec<(Vec<T>, Vec<T>)> = dq
        .par_chunks_mut(hd)
        .enumerate()
        .map(|(row, dqr)| {
            let (t, h) = (row / d.heads, row % d.heads);
            let (s, p) = (slot[t] as usize, pos[t] as usize);
            assert!(
                s < d.slots && p < d.max_len,
                "attention_backward: slot {s} pos {p} outside the cache"
            );
            let kvh = h / group;
            let r = row * hd..(row + 1) * hd;
            let (qv, ov, dov) = (&q[r.clone()], &out[r.clone()], &dout[r]);
            let key = |j: usize| ((s * d.max_len + j) * d.kv_heads + kvh) * hd;
            let big_d = dot(dov, ov);
            let mut probs = Vec::with_capacity(p + 1);
            let mut ds = Vec::with_capacity(p + 1);
            dqr.iter_mut().for_each(|v| *v = T::zero());
            for j in 0..=p {
                let kj = &k_cache[key(j)..key(j) + hd];
                let vj = &v_cache[key(j)..key(j) + hd];
                let pj = (dot(qv, kj) * scale - lse[row]).exp();
                let dsj = pj * (dot(dov, vj) - big_d);
                for (g, &kv) in dqr.iter_mut().zip(kj) {
                    *g = *g + scale * dsj * kv;
                }
                probs.push(pj);
                ds.push(dsj);
            }
            (probs, ds)
        })
        .collect();
    for (row, (probs, ds)) in rows.iter().enumerate() {
        let (t, h) = (row / d.heads, row % d.heads);
        let s = slot[t] as usize;
        let kvh = h / group;
        let r = row * hd..(row + 1) * hd;
        let (qv, dov) = (&q[r.clone()], &dout[r]);
        for (j, (&pj, &dsj)) in probs.iter().zip(ds).enumerate() {
            let at = ((s * d.max_len + j) * d.kv_heads + kvh) * hd;
            for ((dk, dv), (&qx, &dox)) in dk_cache_accum[at..at + hd]
                .iter_mut()
                .zip(&mut dv_cache_accum[at..at + hd])
                .zip(qv.iter().zip(dov))
            {
                *dk = *dk + scale * dsj * qx;
                *dv = *dv + pj * dox;
            }
        }
    }
}
