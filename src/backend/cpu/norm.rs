//! RMSNorm as transformers computes it: in f32 (or f64),
//! `x * rsqrt(mean(x^2) + eps)`, then times the weight.
//!
//! Forward saves `rstd[r] = rsqrt(mean(x[r, :]^2) + eps)` per row (as
//! `kernels/rmsnorm.cu` does when its rstd pointer is set); backward reads it.

use super::Real;
use rayon::prelude::*;

/// x, out `[rows, dim]`, weight `[dim]`.
pub fn rmsnorm<T: Real>(out: &mut [T], x: &[T], weight: &[T], rows: usize, dim: usize, eps: f32) {
    let mut rstd = vec![T::zero(); rows];
    rmsnorm_saved(out, &mut rstd, x, weight, rows, dim, eps);
}

/// `rmsnorm` that also writes `rstd [rows]` (=) for the backward pass.
pub fn rmsnorm_saved<T: Real>(
    out: &mut [T],
    rstd: &mut [T],
    x: &[T],
    weight: &[T],
    rows: usize,
    dim: usize,
    eps: f32,
) {
    assert_eq!(x.len(), rows * dim, "rmsnorm: x");
    assert_eq!(out.len(), rows * dim, "rmsnorm: out");
    assert_eq!(weight.len(), dim, "rmsnorm: weight");
    assert_eq!(rstd.len(), rows, "rmsnorm: rstd");
    let eps = T::from_f32(eps);
    out.par_chunks_mut(dim)
        .zip(x.par_chunks(dim))
        .zip(rstd.par_iter_mut())
        .for_each(|((o, xr), r)| {
            let ms = xr.iter().map(|&v| v * v).sum::<T>() / T::from_usize(dim);
            let inv = (ms + eps).sqrt().recip();
            *r = inv;
            for ((o, &v), &g) in o.iter_mut().zip(xr).zip(weight) {
                *o = v * inv * g;
            }
        });
}

/// Backward of `y = x * rstd * weight`, with `rstd` saved by `rmsnorm_saved`:
///
/// `dx[r, c] = rstd * (dy * w)[c] - rstd^3 / dim * x[r, c] * sum_c' (dy * w * x)[r, c']` (=),
/// `dw_accum[c] += sum_r dy[r, c] * x[r, c] * rstd[r]` (+=).
///
/// dx, dy, x `[rows, dim]`; weight, dw_accum `[dim]`; rstd `[rows]`.
#[allow(clippy::too_many_arguments)]
pub fn rmsnorm_backward<T: Real>(
    dx: &mut [T],
    dw_accum: &mut [T],
    dy: &[T],
    x: &[T],
    weight: &[T],
    rstd: &[T],
    rows: usize,
    dim: usize,
) {
    assert_eq!(dx.len(), rows * dim, "rmsnorm_backward: dx");
    assert_eq!(dy.len(), rows * dim, "rmsnorm_backward: dy");
    assert_eq!(x.len(), rows * dim, "rmsnorm_backward: x");
    assert_eq!(weight.len(), dim, "rmsnorm_backward: weight");
    assert_eq!(dw_accum.len(), dim, "rmsnorm_backward: dw_accum");
    assert_eq!(rstd.len(), rows, "rmsnorm_backward: rstd");
    let n = T::from_usize(dim);
    dx.par_chunks_mut(dim)
        .zip(dy.par_chunks(dim).zip(x.par_chunks(dim)))
        .zip(rstd.par_iter())
        .for_each(|((dxr, (dyr, xr)), &r)| {
            let dot: T = dyr
                .iter()
                .zip(xr)
                .zip(weight)
                .map(|((&g, &v), &w)| g * w * v)
                .sum();
            let c = r * r * r * dot / n;
            for (((d, &g), &v), &w) in dxr.iter_mut().zip(dyr).zip(xr).zip(weight) {
                *d = r * g * w - c * v;
            }
        });
    // Column sums: one pass over the rows, serial so the sum order is fixed.
    for ((dyr, xr), &r) in dy.chunks(dim).zip(x.chunks(dim)).zip(rstd) {
        for ((acc, &g), &v) in dw_accum.iter_mut().zip(dyr).zip(xr) {
            *acc = *acc + g * v * r;
        }
    }
}
