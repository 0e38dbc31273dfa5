//! GEMMs through cuBLAS (`cublasGemmEx`): bf16 or f32 operands, f32 accumulation.
//!
//! # Row-major on a column-major library
//!
//! The engine stores matrices row-major; cuBLAS reads them column-major. A row-major
//! `[r, c]` buffer *is* the column-major `[c, r]` matrix, its transpose, with leading
//! dimension `c`. So for the row-major product
//!
//! ```text
//!     C[m,n] = op(A)[m,k] · op(B)[k,n]
//! ```
//!
//! we ask cuBLAS for the transposed product, which lands in C's buffer exactly as
//! row-major `C`:
//!
//! ```text
//!     Cᵀ[n,m] = op(B)ᵀ[n,k] · op(A)ᵀ[k,m]     (column-major, ldc = n)
//! ```
//!
//! i.e. swap the operands (cuBLAS "A" = our B, cuBLAS "B" = our A) and swap m and n.
//! Each operand's transpose flag stays as it is:
//! - B not transposed (stored `[k,n]`): seen by cuBLAS as `[n,k]` = op(B)ᵀ already
//!   -> `N`, lda = n. B transposed (stored `[n,k]`, e.g. an HF Linear weight): seen
//!   as `[k,n]` = op(B) -> `T`, lda = k.
//! - A not transposed (stored `[m,k]`): seen as `[k,m]` = op(A)ᵀ -> `N`, ldb = k.
//!   A transposed (stored `[k,m]`): seen as `[m,k]` -> `T`, ldb = m.
//!
//! The HF Linear forward `out[m,n] = x[m,k] · w[n,k]ᵀ` is therefore
//! `cublasGemmEx(T, N, n, m, k, w, lda=k, x, ldb=k, out, ldc=n)`; the input gradient
//! `dx[m,k] = dy[m,n] · w[n,k]` is `Gemm { trans_b: false, .. }` with (m, n, k) =
//! (m, k, n); the weight gradient `dw[n,k] = dy[m,n]ᵀ · x[m,k]` is
//! `Gemm { trans_a: true, .. }` with (m, n, k) = (n, k, m).
//!
//! The device-level `GemmEx` (`Device::gemm_ex`, shared with the emulator) is this
//! `Gemm` with a = x, b = w, bf16 operands and beta 0 or 1 (`accumulate`).

use super::GpuDevice;
use crate::backend::cuda::device::Device;
use crate::backend::cuda::device::DevicePtr;
use crate::backend::cuda::nvrtc::toolkit;
use crate::{Error, Result};
use cudarc::cublas::{result as blas, sys, CudaBlas};

/// Element type of a GEMM operand.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dtype {
    BF16,
    F32,
}

impl Dtype {
    fn cuda(self) -> sys::cudaDataType {
        match self {
            Dtype::BF16 => sys::cudaDataType::CUDA_R_16BF,
            Dtype::F32 => sys::cudaDataType::CUDA_R_32F,
        }
    }
}

/// Row-major `c[m,n] = alpha · op(a)[m,k] · op(b)[k,n] + beta · c`, where `op(a)` is
/// `a` stored `[m,k]`, or `aᵀ` with `a` stored `[k,m]` when `trans_a`; likewise `b`
/// is stored `[k,n]`, or `[n,k]` when `trans_b`. `a` and `b` share one type; the
/// accumulation is f32 either way.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Gemm {
    pub m: usize,
    pub n: usize,
    pub k: usize,
    pub trans_a: bool,
    pub trans_b: bool,
    pub ab: Dtype,
    pub c: Dtype,
    pub alpha: f32,
    pub beta: f32,
}

impl Gemm {
    /// The HF Linear forward: `out[m,n] = x[m,k] · w[n,k]ᵀ`, bf16 inputs.
    pub fn linear(m: usize, n: usize, k: usize, out: Dtype) -> Self {
        Gemm {
            m,
            n,
            k,
            trans_a: false,
            trans_b: true,
            ab: Dtype::BF16,
            c: out,
            alpha: 1.0,
            beta: 0.0,
        }
    }

    /// The cublasGemmEx arguments (see the module comment):
    /// (transa, transb, m', n', k', lda, ldb, ldc) with cuBLAS A = our b, B = our a.
    pub fn column_major(&self) -> (bool, bool, usize, usize, usize, usize, usize, usize) {
        let lda = if self.trans_b { self.k } else { self.n };
        let ldb = if self.trans_a { self.m } else { self.k };
        (
            self.trans_b,
            self.trans_a,
            self.n,
            self.m,
            self.k,
            lda.max(1),
            ldb.max(1),
            self.n.max(1),
        )
    }
}

impl GpuDevice {
    /// The cuBLAS handle (created on first use, bound to the device's stream).
    pub(super) fn blas(&self) -> Result<&CudaBlas> {
        self.blas
            .get_or_init(|| {
                // Load libcublasLt / libcublas by path when found in the CUDA roots,
                // so cudarc's by-soname lookup finds them without LD_LIBRARY_PATH.
                toolkit::preload("cublasLt");
                toolkit::preload("cublas");
                // SAFETY: only tries to dlopen libcublas; a panic is caught.
                let present =
                    std::panic::catch_unwind(|| unsafe { sys::is_culib_present() }).unwrap_or(false);
                if !present {
                    return Err(format!(
                        "cuBLAS (libcublas.so.{}) not found ({}): install a CUDA toolkit or the nvidia-cublas wheel (tools/install_cuda_wheels.sh --with-cublas)",
                        toolkit::CUDA_MAJOR,
                        toolkit::searched()
                    ));
                }
                std::panic::catch_unwind(|| CudaBlas::new(self.stream.clone()))
                    .map_err(|_| "cuBLAS failed to load".to_string())?
                    .map_err(|e| format!("cuBLAS: cannot create a handle: {e}"))
            })
            .as_ref()
            .map_err(|e| Error::Invalid(e.clone()))
    }

    /// `c = alpha · op(a) · op(b) + beta · c` (see [`Gemm`]), queued on the stream.
    pub fn cublas_gemm(&self, g: &Gemm, c: DevicePtr, a: DevicePtr, b: DevicePtr) -> Result<()> {
        if g.m == 0 || g.n == 0 {
            return Ok(());
        }
        let elem = |d: Dtype| if d == Dtype::BF16 { 2 } else { 4 };
        if g.k == 0 {
            // cuBLAS wants leading dimensions >= 1 even here; C = beta · C.
            return if g.beta == 1.0 {
                Ok(())
            } else if g.beta == 0.0 {
                self.zero(c, g.m * g.n * elem(g.c))
            } else {
                Err(Error::Unsupported(
                    "gemm with k = 0 and beta other than 0 or 1".into(),
                ))
            };
        }
        let (ta, tb, m, n, k, lda, ldb, ldc) = g.column_major();
        let int = |v: usize| {
            i32::try_from(v).map_err(|_| {
                Error::Unsupported(format!("gemm dimension {v} exceeds cuBLAS's 32-bit limit"))
            })
        };
        let op = |t: bool| {
            if t {
                sys::cublasOperation_t::CUBLAS_OP_T
            } else {
                sys::cublasOperation_t::CUBLAS_OP_N
            }
        };
        let handle = *self.blas()?.handle();
        self.bind()?;
        // SAFETY: a, b, c are device buffers of the sizes the dims imply (caller's
        // contract, as for kernels); alpha/beta are host f32 (default pointer mode,
        // f32 scale type for CUBLAS_COMPUTE_32F) and live across the call.
        unsafe {
            blas::gemm_ex(
                handle,
                op(ta),
                op(tb),
                int(m)?,
                int(n)?,
                int(k)?,
                (&g.alpha as *const f32).cast(),
                b.0 as *const _,
                g.ab.cuda(),
                int(lda)?,
                a.0 as *const _,
                g.ab.cuda(),
                int(ldb)?,
                (&g.beta as *const f32).cast(),
                c.0 as *mut _,
                g.c.cuda(),
                int(ldc)?,
                sys::cublasComputeType_t::CUBLAS_COMPUTE_32F,
                sys::cublasGemmAlgo_t::CUBLAS_GEMM_DEFAULT,
            )
        }
        .map_err(|e| {
            Error::Invalid(format!(
                "cuBLAS gemm {}x{}x{} ({:?} -> {:?}): {e}",
                g.m, g.n, g.k, g.ab, g.c
            ))
        })
    }

    /// HF Linear, bf16 out: `out[m,n] = x[m,k] · w[n,k]ᵀ` (row-major), f32 accumulation.
    pub fn gemm_bf16(
        &self,
        out: DevicePtr,
        x: DevicePtr,
        w: DevicePtr,
        m: usize,
        n: usize,
        k: usize,
    ) -> Result<()> {
        self.cublas_gemm(&Gemm::linear(m, n, k, Dtype::BF16), out, x, w)
    }

    /// HF Linear, f32 out: `out[m,n] (+)= x[m,k] · w[n,k]ᵀ` with bf16 x and w; adds to
    /// `out` when `accumulate`.
    #[allow(clippy::too_many_arguments)]
    pub fn gemm_bf16_f32(
        &self,
        out: DevicePtr,
        x: DevicePtr,
        w: DevicePtr,
        m: usize,
        n: usize,
        k: usize,
        accumulate: bool,
    ) -> Result<()> {
        let g = Gemm {
            beta: if accumulate { 1.0 } else { 0.0 },
            ..Gemm::linear(m, n, k, Dtype::F32)
        };
        self.cublas_gemm(&g, out, x, w)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Reference: the column-major call on plain loops must equal the row-major spec.
    #[test]
    fn column_major_mapping_matches_row_major_spec() {
        for &(ta, tb) in &[(false, false), (false, true), (true, false), (true, true)] {
            let (m, n, k) = (3, 5, 4);
            let g = Gemm {
                m,
                n,
                k,
                trans_a: ta,
                trans_b: tb,
                ab: Dtype::F32,
                c: Dtype::F32,
                alpha: 1.0,
                beta: 0.0,
            };
            let a: Vec<f32> = (0..m * k).map(|i| (i as f32 * 0.37).sin()).collect();
            let b: Vec<f32> = (0..k * n).map(|i| (i as f32 * 0.11).cos()).collect();
            // Row-major spec.
            let at = |i: usize, p: usize| if ta { a[p * m + i] } else { a[i * k + p] };
            let bt = |p: usize, j: usize| if tb { b[j * k + p] } else { b[p * n + j] };
            let want: Vec<f32> = (0..m * n)
                .map(|ij| (0..k).map(|p| at(ij / n, p) * bt(p, ij % n)).sum())
                .collect();
            // Column-major BLAS semantics: C(i,j) at c[i + j*ldc], A(i,p) at
            // A[i + p*lda] (or A[p + i*lda] when transposed), same for B.
            let (cta, ctb, cm, cn, ck, lda, ldb, ldc) = g.column_major();
            let ca = |i: usize, p: usize| if cta { b[p + i * lda] } else { b[i + p * lda] };
            let cb = |p: usize, j: usize| if ctb { a[j + p * ldb] } else { a[p + j * ldb] };
            let mut got = vec![0f32; m * n];
            for j in 0..cn {
                for i in 0..cm {
                    got[i + j * ldc] = (0..ck).map(|p| ca(i, p) * cb(p, j)).sum();
                }
            }
            for (x, y) in got.iter().zip(&want) {
                assert!(
                    (x - y).abs() < 1e-5,
                    "trans_a={ta} trans_b={tb}: {x} vs {y}"
                );
            }
        }
    }
}
