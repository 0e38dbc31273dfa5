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

/// `dx[m, k] = dout[m, n] · w[n, k]` (=): the input gradient of `linear`.
pub fn linear_backward_input<T: Real>(
    dx: &mut [T],
    dout: &[T],
    w: &[T],
    m: usize,
    n: usize,
    k: usize,
) {
    assert_eq!(dx.len(), m * k, "linear_backward_input: dx");
    assert_eq!(dout.len(), m * n, "linear_backward_input: dout");
    assert_eq!(w.len(), n * k, "linear_backward_input: w");
    // SAFETY: dout is [m, n] row-major, w is [n, k] row-major, dx is [m, k] and
    // does not alias them (it is a distinct &mut).
    unsafe {
        par_gemm_rows(
            dx.as_mut_ptr(),
            m,
            n,
            k,
            dout.as_ptr(),
            n as isize,
            1,
            w.as_ptr(),
            k as isize,
            1,
            T::zero(),
        )
    };
}

/// `dw_accum[n, k] += dout[m, n]ᵀ · x[m, k]`, `db_accum[n] += sum_r dout[r, :]`: the
/// weight (and bias) gradients of `linear`, accumulated.
pub fn linear_backward_weight<T: Real>(
    dw_accum: &mut [T],
    db_accum: Option<&mut [T]>,
    dout: &[T],
    x: &[T],
    m: usize,
    n: usize,
    k: usize,
) {
    assert_eq!(dw_accum.len(), n * k, "linear_backward_weight: dw_accum");
    assert_eq!(dout.len(), m * n, "linear_backward_weight: dout");
    assert_eq!(x.len(), m * k, "linear_backward_weight: x");
    // SAFETY: doutᵀ is dout read with strides (1, n): an [n, m] matrix; x is [m, k];
    // dw_accum is [n, k] and does not alias them.
    unsafe {
        par_gemm_rows(
            dw_accum.as_mut_ptr(),
            n,
            m,
            k,
            dout.as_ptr(),
            1,
            n as isize,
            x.as_ptr(),
            k as isize,
            1,
            T::one(),
        )
    };
    if let Some(db) = db_accum {
        assert_eq!(db.len(), n, "linear_backward_weight: db_accum");
        for row in dout.chunks(n) {
            db.iter_mut().zip(row).for_each(|(a, &v)| *a = *a + v);
        }
    }
}

/// `c[rows, cols] = a[rows, inner] · b[inner, cols] + beta * c`, c contiguous
/// row-major, a and b given by element strides; the rows of c are split across
/// rayon threads when the product is large enough.
///
/// # Safety
/// The pointers and strides must describe valid matrices of those shapes, and c
/// must not alias a or b.
#[allow(clippy::too_many_arguments)]
unsafe fn par_gemm_rows<T: Real>(
    c: *mut T,
    rows: usize,
    inner: usize,
    cols: usize,
    a: *const T,
    rsa: isize,
    csa: isize,
    b: *const T,
    rsb: isize,
    csb: isize,
    beta: T,
) {
    let threads = rayon::current_num_threads();
    let block = if rows * inner * cols < PARALLEL_MIN_WORK || threads == 1 || rows < 2 {
        rows.max(1)
    } else {
        rows.div_ceil(threads * 2)
    };
    let (c, a, b) = (SendPtr(c), SendPtr(a as *mut T), SendPtr(b as *mut T));
    (0..rows)
        .step_by(block)
        .collect::<Vec<_>>()
        .into_par_iter()
        .for_each(|r0| {
            let (c, a, b) = (c, a, b);
            let mb = block.min(rows - r0);
            // SAFETY: disjoint row ranges of c; a's rows offset by its row stride.
            T::gemm(
                mb,
                inner,
                cols,
                a.0.offset(r0 as isize * rsa),
                rsa,
                csa,
                b.0,
                rsb,
                csb,
                beta,
                c.0.add(r0 * cols),
                cols as isize,
                1,
            );
        });
}
