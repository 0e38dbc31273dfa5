//! `out[m, n] = x[m, k] · w[n, k]ᵀ (+ bias[n])`: the HF `nn.Linear` layout.
//!
//! matrixmultiply does the blocking and SIMD; this splits the output across rayon
//! threads along the larger operand (the weights, for decoding and the LM head).

use super::Real;
use rayon::prelude::*;

/// Below this many multiply-adds a single thread is faster than splitting.
const PARALLEL_MIN_WORK: usize = 1 << 16;

#[derive(Clone, Copy)]
struct SendPtr<T>(*mut T);
unsafe impl<T> Send for SendPtr<T> {}
unsafe impl<T> Sync for SendPtr<T> {}

pub fn linear<T: Real>(
    out: &mut [T],
    x: &[T],
    w: &[T],
    bias: Option<&[T]>,
    m: usize,
    n: usize,
    k: usize,
) {
    assert_eq!(out.len(), m * n, "linear: out");
    assert_eq!(x.len(), m * k, "linear: x");
    assert_eq!(w.len(), n * k, "linear: w");
    if let Some(b) = bias {
        assert_eq!(b.len(), n, "linear: bias");
        for row in out.chunks_mut(n) {
            row.copy_from_slice(b);
        }
    }
    let beta = if bias.is_some() { T::one() } else { T::zero() };
    let threads = rayon::current_num_threads();
    if m * n * k < PARALLEL_MIN_WORK || threads == 1 {
        // SAFETY: shapes checked above; out does not alias x or w.
        unsafe {
            gemm_block(
                out.as_mut_ptr(),
                x.as_ptr(),
                w.as_ptr(),
                0..m,
                0..n,
                n,
                k,
                beta,
            )
        };
        return;
    }
    let out_ptr = SendPtr(out.as_mut_ptr());
    // Split the larger operand so each thread streams its own part of it once:
    // rows of x when x is the larger, rows of w (columns of out) otherwise.
    if m >= 2 * threads && m > n {
        let rows = m.div_ceil(threads * 2);
        (0..m)
            .step_by(rows)
            .collect::<Vec<_>>()
            .into_par_iter()
            .for_each(|r0| {
                let p = out_ptr;
                // SAFETY: disjoint row ranges of out.
                unsafe {
                    gemm_block(
                        p.0,
                        x.as_ptr(),
                        w.as_ptr(),
                        r0..(r0 + rows).min(m),
                        0..n,
                        n,
                        k,
                        beta,
                    )
                };
            });
    } else {
        let cols = n.div_ceil(threads * 4).max(16);
        (0..n)
            .step_by(cols)
            .collect::<Vec<_>>()
            .into_par_iter()
            .for_each(|c0| {
                let p = out_ptr;
                // SAFETY: disjoint column ranges of out.
                unsafe {
                    gemm_block(
                        p.0,
                        x.as_ptr(),
                        w.as_ptr(),
                        0..m,
                        c0..(c0 + cols).min(n),
                        n,
                        k,
                        beta,
                    )
                };
            });
    }
}

/// One block `out[rows, cols]` of the product.
#[allow(clippy::too_many_arguments)]
unsafe fn gemm_block<T: Real>(
    out: *mut T,
    x: *const T,
    w: *const T,
    rows: std::ops::Range<usize>,
    cols: std::ops::Range<usize>,
    n: usize,
    k: usize,
    beta: T,
) {
    let (mb, nb) = (rows.len(), cols.len());
    T::gemm(
        mb,
        k,
        nb,
        x.add(rows.start * k),
        k as isize,
        1,
        w.add(cols.start * k),
        1,
        k as isize,
        beta,
        out.add(rows.start * n + cols.start),
        n as isize,
        1,
    );
}
