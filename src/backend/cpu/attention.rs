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
    let hd = d.head_dim;
    let q_row = d.heads * hd;
    assert_eq!(q.len(), d.tokens * q_row, "attention: q");
    assert_eq!(out.len(), d.tokens * q_row, "attention: out");
    assert_eq!(k_cache.len(), d.cache_len(), "attention: k_cache");
    assert_eq!(v_cache.len(), d.cache_len(), "attention: v_cache");
    assert_eq!(d.heads % d.kv_heads, 0, "attention: heads % kv_heads");
    let group = d.heads / d.kv_heads;
    let scale = T::from_f32(scale);
    out.par_chunks_mut(hd).enumerate().for_each(|(row, o)| {
        let (t, h) = (row / d.heads, row % d.heads);
        let (s, p) = (slot[t] as usize, pos[t] as usize);
        assert!(
            s < d.slots && p < d.max_len,
            "attention: slot {s} pos {p} outside the cache"
        );
        let kvh = h / group;
        let qv = &q[row * hd..(row + 1) * hd];
        let key = |j: usize| ((s * d.max_len + j) * d.kv_heads + kvh) * hd;
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
    });
}
