//! RMSNorm as transformers computes it: in f32 (or f64),
//! `x * rsqrt(mean(x^2) + eps)`, then times the weight.

use super::Real;
use rayon::prelude::*;

/// x, out `[rows, dim]`, weight `[dim]`.
pub fn rmsnorm<T: Real>(out: &mut [T], x: &[T], weight: &[T], rows: usize, dim: usize, eps: f32) {
    assert_eq!(x.len(), rows * dim, "rmsnorm: x");
    assert_eq!(out.len(), rows * dim, "rmsnorm: out");
    assert_eq!(weight.len(), dim, "rmsnorm: weight");
    let eps = T::from_f32(eps);
    out.par_chunks_mut(dim)
        .zip(x.par_chunks(dim))
        .for_each(|(o, xr)| {
            let ms = xr.iter().map(|&v| v * v).sum::<T>() / T::from_usize(dim);
            let inv = (ms + eps).sqrt().recip();
            for ((o, &v), &g) in o.iter_mut().zip(xr).zip(weight) {
                *o = v * inv * g;
            }
        });
}
