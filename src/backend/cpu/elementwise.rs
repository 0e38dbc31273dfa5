//! Embedding gather, SwiGLU (forward and backward), residual add and the log-softmax gather of the LM head.

use super::Real;
use rayon::prelude::*;

/// `out[t, :] = table[ids[t], :]`.
pub fn embedding<T: Real>(out: &mut [T], ids: &[u32], table: &[T], tokens: usize, dim: usize) {
    assert_eq!(out.len(), tokens * dim, "embedding: out");
    assert_eq!(ids.len(), tokens, "embedding: ids");
    for (o, &id) in out.chunks_mut(dim).zip(ids) {
        let r = id as usize * dim;
        o.copy_from_slice(&table[r..r + dim]);
    }
}

/// `silu(x) = x * sigmoid(x)`.
pub fn silu<T: Real>(x: T) -> T {
    x / (T::one() + (-x).exp())
}

/// `out = silu(gate) * up`.
pub fn swiglu<T: Real>(out: &mut [T], gate: &[T], up: &[T], n: usize) {
    assert!(
        out.len() == n && gate.len() == n && up.len() == n,
        "swiglu: lengths"
    );
    out.par_iter_mut()
        .zip(gate.par_iter().zip(up))
        .for_each(|(o, (&g, &u))| *o = silu(g) * u);
}

/// Backward of `swiglu`: `dgate = dout * up * silu'(gate)`, `dup = dout * silu(gate)`
/// (both =), with `silu'(g) = s * (1 + g * (1 - s))`, `s = sigmoid(g)`.
pub fn swiglu_backward<T: Real>(
    dgate: &mut [T],
    dup: &mut [T],
    dout: &[T],
    gate: &[T],
    up: &[T],
    n: usize,
) {
    assert!(
        dgate.len() == n && dup.len() == n && dout.len() == n && gate.len() == n && up.len() == n,
        "swiglu_backward: lengths"
    );
    dgate
        .par_iter_mut()
        .zip(dup.par_iter_mut())
        .zip(dout.par_iter().zip(gate.par_iter().zip(up)))
        .for_each(|((dg, du), (&d, (&g, &u)))| {
            let s = (T::one() + (-g).exp()).recip();
            let silu = g * s;
            *du = d * silu;
            *dg = d * u * s * (T::one() + g * (T::one() - s));
        });
}

pub fn add_assign<T: Real>(x: &mut [T], y: &[T]) {
    assert_eq!(x.len(), y.len(), "add_assign: lengths");
    x.iter_mut().zip(y).for_each(|(a, &b)| *a = *a + b);
}

/// Log-sum-exp of one row, max-subtracted.
pub fn logsumexp<T: Real>(row: &[T]) -> T {
    let max = row.iter().fold(T::neg_infinity(), |m, &v| m.max(v));
    max + row.iter().map(|&v| (v - max).exp()).sum::<T>().ln()
}

/// `out[r] = logits[r, target[r]] - logsumexp(logits[r, :])`.
pub fn logprob_gather<T: Real>(
    out: &mut [T],
    logits: &[T],
    target: &[u32],
    rows: usize,
    vocab: usize,
) {
    assert_eq!(logits.len(), rows * vocab, "logprob_gather: logits");
    assert!(
        out.len() == rows && target.len() == rows,
        "logprob_gather: rows"
    );
    out.par_iter_mut().enumerate().for_each(|(r, o)| {
        let row = &logits[r * vocab..(r + 1) * vocab];
        *o = row[target[r] as usize] - logsumexp(row);
    });
}
