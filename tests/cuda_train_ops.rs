//! The CUDA backend's training ops (everything but attention) against the CPU
//! reference, on the host emulator always and on a GPU when one is usable: the
//! backward kernels, the GEMM gradients, the fused token loss, the optimizers, the
//! sum of squares and the casts. Inputs are random and nonzero, outputs written with
//! `=` are poisoned (NaN) first, accumulators start nonzero; shapes are small and odd
//! (not multiples of the tiles or vectors). bf16 outputs: relative error <= 2e-2
//! (DESIGN.md section 7); f32 accumulators and pure data movement: much tighter.

mod common;

use common::{assert_close, cuda_backends, diff};
use onelayer::backend::cpu::{self, CpuBackend};
use onelayer::backend::cuda::buffers::DType;
use onelayer::backend::cuda::device::{download_vec, upload_new, GemmEx};
use onelayer::backend::cuda::CudaBackend;
use onelayer::backend::{stat, AttnDims, Backend, KlType, LossConfig, LossRows};
use onelayer::sampling;
use onelayer::train::AdamW;

const BF16: f64 = 2e-2;

/// `assert_close`, printing the errors first (`cargo test -- --nocapture` lists them).
#[track_caller]
fn close(what: &str, got: &[f32], want: &[f32], tol: f64) {
    let d = diff(got, want);
    eprintln!("{what}: rel {:.2e}, max abs {:.2e}", d.rel, d.max_abs);
    assert_close(what, got, want, tol);
}

/// A small deterministic generator for test inputs.
struct Gen(u64);
impl Gen {
    fn next(&mut self) -> f32 {
        self.0 = sampling::mix64(self.0);
        (self.0 >> 40) as f32 / (1u64 << 24) as f32
    }
    /// Uniform in (-scale, scale), never exactly zero.
    fn f32s(&mut self, n: usize, scale: f32) -> Vec<f32> {
        (0..n)
            .map(|_| {
                let v = (self.next() * 2.0 - 1.0) * scale;
                if v == 0.0 {
                    scale * 0.5
                } else {
                    v
                }
            })
            .collect()
    }
    fn range(&mut self, n: usize, lo: f32, hi: f32) -> Vec<f32> {
        (0..n).map(|_| lo + (hi - lo) * self.next()).collect()
    }
    fn below(&mut self, n: usize, bound: u32) -> Vec<u32> {
        (0..n)
            .map(|_| {
                self.0 = sampling::mix64(self.0);
                (self.0 % bound as u64) as u32
            })
            .collect()
    }
    /// `n` distinct values below `bound` in random order.
    fn distinct(&mut self, n: usize, bound: u32) -> Vec<u32> {
        let mut all: Vec<u32> = (0..bound).collect();
        for i in (1..all.len()).rev() {
            self.0 = sampling::mix64(self.0);
            all.swap(i, (self.0 % (i as u64 + 1)) as usize);
        }
        all.truncate(n);
        all
    }
}

/// Round through bf16, as an upload to a bf16 buffer does.
fn bf16(v: &[f32]) -> Vec<f32> {
    v.iter()
        .map(|&x| half::bf16::from_f32(x).to_f32())
        .collect()
}

fn cpu() -> CpuBackend<f32> {
    CpuBackend::<f32>::new()
}

/// A buffer of `dtype` holding NaN everywhere (so unwritten elements show up).
fn poisoned(
    be: &CudaBackend,
    len: usize,
    dtype: DType,
) -> onelayer::backend::cuda::buffers::CudaBuf {
    be.upload_as(&vec![f32::NAN; len], dtype).unwrap()
}

fn upload(be: &CudaBackend, v: &[f32], dtype: DType) -> onelayer::backend::cuda::buffers::CudaBuf {
    be.upload_as(v, dtype).unwrap()
}

/// Values as stored in `dtype`.
fn stored(v: &[f32], dtype: DType) -> Vec<f32> {
    match dtype {
        DType::Bf16 => bf16(v),
        DType::F32 => v.to_vec(),
    }
}

const DTYPE_PAIRS: [(DType, DType); 4] = [
    (DType::Bf16, DType::Bf16),
    (DType::F32, DType::F32),
    (DType::Bf16, DType::F32),
    (DType::F32, DType::Bf16),
];

#[test]
fn kv_gather_matches_exactly_in_every_dtype_pair() {
    let c = cpu();
    for (name, be) in cuda_backends() {
        let mut g = Gen(11);
        for (kv_heads, head_dim) in [(2usize, 16usize), (1, 12), (3, 5)] {
            let d = AttnDims {
                tokens: 9,
                heads: kv_heads,
                kv_heads,
                head_dim,
                slots: 3,
                max_len: 7,
            };
            let row = kv_heads * head_dim;
            let cache = g.f32s(d.cache_len(), 2.0);
            let slot = g.below(d.tokens, d.slots as u32);
            let pos = g.below(d.tokens, d.max_len as u32);
            for (xt, ct) in DTYPE_PAIRS {
                let cache = stored(&cache, ct);
                let mut want = c.zeros(d.tokens * row).unwrap();
                c.kv_gather(&mut want, &cache, &slot, &pos, d).unwrap();
                let want = stored(&want, xt);
                let mut x = poisoned(&be, d.tokens * row, xt);
                be.kv_gather(
                    &mut x,
                    &upload(&be, &cache, ct),
                    &be.upload_idx(&slot).unwrap(),
                    &be.upload_idx(&pos).unwrap(),
                    d,
                )
                .unwrap();
                assert_eq!(
                    be.download(&x).unwrap(),
                    want,
                    "{name} kv_gather {kv_heads}x{head_dim} x {xt:?} cache {ct:?}"
                );
            }
        }
        // A position outside the cache is refused.
        let d = AttnDims {
            tokens: 1,
            heads: 1,
            kv_heads: 1,
            head_dim: 8,
            slots: 1,
            max_len: 4,
        };
        let mut x = be.zeros(8).unwrap();
        let e = be
            .kv_gather(
                &mut x,
                &be.zeros(d.cache_len()).unwrap(),
                &be.upload_idx(&[0]).unwrap(),
                &be.upload_idx(&[4]).unwrap(),
                d,
            )
            .unwrap_err();
        assert!(e.to_string().contains("outside the cache"), "{e}");
    }
}

#[test]
fn scatter_rows_matches_exactly_and_leaves_other_rows() {
    let c = cpu();
    for (name, be) in cuda_backends() {
        let mut g = Gen(12);
        for dim in [8usize, 20, 3] {
            let (rows, dst_rows) = (6, 11);
            let src = g.f32s(rows * dim, 1.5);
            let dst0 = g.f32s(dst_rows * dim, 1.5);
            let idx = g.distinct(rows, dst_rows as u32);
            for (dt, st) in DTYPE_PAIRS {
                let src = stored(&src, st);
                let mut want = stored(&dst0, dt);
                c.scatter_rows(&mut want, &src, &idx, rows, dim).unwrap();
                let want = stored(&want, dt);
                let mut dst = upload(&be, &dst0, dt);
                be.scatter_rows(
                    &mut dst,
                    &upload(&be, &src, st),
                    &be.upload_idx(&idx).unwrap(),
                    rows,
                    dim,
                )
                .unwrap();
                assert_eq!(
                    be.download(&dst).unwrap(),
                    want,
                    "{name} scatter_rows dim {dim} dst {dt:?} src {st:?}"
                );
            }
        }
        // Repeated rows are refused (the result would depend on the order).
        let mut dst = be.zeros(4 * 8).unwrap();
        let e = be
            .scatter_rows(
                &mut dst,
                &be.zeros(2 * 8).unwrap(),
                &be.upload_idx(&[1, 1]).unwrap(),
                2,
                8,
            )
            .unwrap_err();
        assert!(e.to_string().contains("twice"), "{e}");
    }
}

/// The gradient of a trained embedding table: repeated ids summed in token order,
/// on top of what the accumulator held; the same f32 sums as the CPU reference.
#[test]
fn embedding_grad_accumulates_repeated_ids_exactly() {
    let c = cpu();
    for (name, be) in cuda_backends() {
        let mut g = Gen(13);
        for dim in [8usize, 20, 3] {
            let (tokens, vocab) = (23, 7);
            let dx = g.f32s(tokens * dim, 1.5);
            let acc0 = g.f32s(vocab * dim, 1.0);
            // Every id but 6 appears, several many times, in scattered order.
            let ids: Vec<u32> = (0..tokens).map(|t| ((t * 5 + t / 3) % 6) as u32).collect();
            for dt in [DType::Bf16, DType::F32] {
                let dxs = stored(&dx, dt);
                let mut want = acc0.clone();
                c.embedding_grad(&mut want, &dxs, &ids, tokens, dim)
                    .unwrap();
                let mut acc = upload(&be, &acc0, DType::F32);
                be.embedding_grad(
                    &mut acc,
                    &upload(&be, &dxs, dt),
                    &be.upload_idx(&ids).unwrap(),
                    tokens,
                    dim,
                )
                .unwrap();
                let got = be.download(&acc).unwrap();
                assert_eq!(got, want, "{name} embedding_grad dim {dim} dx {dt:?}");
                assert_eq!(&got[6 * dim..], &acc0[6 * dim..], "an unused row moved");
            }
        }
        let mut acc = be.zeros_f32(4 * 8).unwrap();
        let e = be
            .embedding_grad(
                &mut acc,
                &be.zeros(8).unwrap(),
                &be.upload_idx(&[4]).unwrap(),
                1,
                8,
            )
            .unwrap_err();
        assert!(e.to_string().contains("outside a table"), "{e}");
    }
}

#[test]
fn rope_backward_matches_and_inverts_rope() {
    let c = cpu();
    for (name, be) in cuda_backends() {
        let mut g = Gen(13);
        for (tokens, heads, hd) in [
            (5usize, 3usize, 128usize),
            (4, 2, 24),
            (3, 4, 64),
            (2, 1, 6),
        ] {
            let dy = bf16(&g.f32s(tokens * heads * hd, 2.0));
            let pos: Vec<u32> = g.below(tokens, 4000);
            let mut want = dy.clone();
            c.rope_backward(&mut want, &pos, tokens, heads, hd, 1e6)
                .unwrap();
            let pb = be.upload_idx(&pos).unwrap();
            for dt in [DType::Bf16, DType::F32] {
                let mut dx = upload(&be, &dy, dt);
                be.rope_backward(&mut dx, &pb, tokens, heads, hd, 1e6)
                    .unwrap();
                let tol = if dt == DType::Bf16 { BF16 } else { 1e-5 };
                close(
                    &format!("{name} rope_backward {tokens}x{heads}x{hd} {dt:?}"),
                    &be.download(&dx).unwrap(),
                    &want,
                    tol,
                );
            }
            // rope then rope_backward is the identity (up to bf16 rounding).
            let mut x = be.upload(&dy).unwrap();
            be.rope(&mut x, &pb, tokens, heads, hd, 1e6).unwrap();
            be.rope_backward(&mut x, &pb, tokens, heads, hd, 1e6)
                .unwrap();
            close(
                &format!("{name} rope_backward(rope(x)) {tokens}x{heads}x{hd}"),
                &be.download(&x).unwrap(),
                &dy,
                BF16,
            );
        }
    }
}

#[test]
fn swiglu_backward_matches() {
    let c = cpu();
    for (name, be) in cuda_backends() {
        let mut g = Gen(14);
        for n in [4096usize, 1001, 7] {
            let dout = bf16(&g.f32s(n, 1.0));
            let gate = bf16(&g.f32s(n, 6.0));
            let up = bf16(&g.f32s(n, 2.0));
            let (mut wg, mut wu) = (vec![0.0; n], vec![0.0; n]);
            c.swiglu_backward(&mut wg, &mut wu, &dout, &gate, &up, n)
                .unwrap();
            let mut dg = poisoned(&be, n, DType::Bf16);
            let mut du = poisoned(&be, n, DType::Bf16);
            be.swiglu_backward(
                &mut dg,
                &mut du,
                &be.upload(&dout).unwrap(),
                &be.upload(&gate).unwrap(),
                &be.upload(&up).unwrap(),
                n,
            )
            .unwrap();
            close(
                &format!("{name} swiglu dgate {n}"),
                &be.download(&dg).unwrap(),
                &wg,
                BF16,
            );
            close(
                &format!("{name} swiglu dup {n}"),
                &be.download(&du).unwrap(),
                &wu,
                BF16,
            );
        }
    }
}

#[test]
fn rmsnorm_backward_matches_with_and_without_dw() {
    let c = cpu();
    for (name, be) in cuda_backends() {
        let mut g = Gen(15);
        // Warp-per-row (dim <= 1024) and block-per-row, vector and scalar paths, and
        // blocks looping over many rows.
        for (rows, dim) in [
            (3usize, 16usize),
            (5, 100),
            (37, 128),
            (300, 8),
            (4, 2048),
            (3, 1030),
        ] {
            let x = bf16(&g.f32s(rows * dim, 3.0));
            let dy = bf16(&g.f32s(rows * dim, 1.0));
            let w = bf16(&g.f32s(dim, 1.5));
            let dw0 = g.f32s(dim, 0.5);
            let mut want_dx = vec![0.0; rows * dim];
            let mut want_dw = dw0.clone();
            c.rmsnorm_backward(
                &mut want_dx,
                Some(&mut want_dw),
                &dy,
                &x,
                &w,
                rows,
                dim,
                1e-6,
            )
            .unwrap();
            for dt in [DType::Bf16, DType::F32] {
                let (xb, dyb, wb) = (
                    upload(&be, &x, dt),
                    upload(&be, &dy, dt),
                    upload(&be, &w, dt),
                );
                let dx_tol = if dt == DType::Bf16 { BF16 } else { 1e-5 };
                for with_dw in [false, true] {
                    let mut dx = poisoned(&be, rows * dim, dt);
                    let mut dw = be.upload_f32(&dw0).unwrap();
                    be.rmsnorm_backward(
                        &mut dx,
                        with_dw.then_some(&mut dw),
                        &dyb,
                        &xb,
                        &wb,
                        rows,
                        dim,
                        1e-6,
                    )
                    .unwrap();
                    let what = format!("{name} rmsnorm_backward {rows}x{dim} {dt:?} dw {with_dw}");
                    close(
                        &format!("{what}: dx"),
                        &be.download(&dx).unwrap(),
                        &want_dx,
                        dx_tol,
                    );
                    let got_dw = be.download(&dw).unwrap();
                    if with_dw {
                        close(&format!("{what}: dw"), &got_dw, &want_dw, 1e-5);
                    } else {
                        assert_eq!(got_dw, dw0, "{what}: dw untouched");
                    }
                }
            }
        }
    }
}

/// (m, n, k) of the GEMM-gradient tests: none a multiple of 16 but one.
const GEMM_SHAPES: [(usize, usize, usize); 5] = [
    (1, 7, 9),
    (5, 13, 19),
    (33, 24, 17),
    (40, 3, 70),
    (70, 33, 41),
];

#[test]
fn linear_backward_input_matches_with_and_without_accumulate() {
    let c = cpu();
    for (name, be) in cuda_backends() {
        let mut g = Gen(16);
        for (m, n, k) in GEMM_SHAPES {
            let dout = bf16(&g.f32s(m * n, 1.0));
            let w = bf16(&g.f32s(n * k, 0.5));
            let dx0 = bf16(&g.f32s(m * k, 1.0));
            let (db, wb) = (be.upload(&dout).unwrap(), be.upload(&w).unwrap());
            for accumulate in [false, true] {
                let mut want = dx0.clone();
                c.linear_backward_input(&mut want, &dout, &w, m, n, k, accumulate)
                    .unwrap();
                for dt in [DType::Bf16, DType::F32] {
                    let mut dx = if accumulate {
                        upload(&be, &dx0, dt)
                    } else {
                        poisoned(&be, m * k, dt)
                    };
                    be.linear_backward_input(&mut dx, &db, &wb, m, n, k, accumulate)
                        .unwrap();
                    let tol = if dt == DType::Bf16 { BF16 } else { 1e-5 };
                    close(
                        &format!(
                            "{name} linear_backward_input {m}x{n}x{k} acc {accumulate} {dt:?}"
                        ),
                        &be.download(&dx).unwrap(),
                        &want,
                        tol,
                    );
                }
            }
        }
    }
}

#[test]
fn linear_backward_weight_accumulates_weight_and_bias_gradients() {
    let c = cpu();
    for (name, be) in cuda_backends() {
        let mut g = Gen(17);
        for (m, n, k) in GEMM_SHAPES {
            let dout = bf16(&g.f32s(m * n, 1.0));
            let x = bf16(&g.f32s(m * k, 1.0));
            let dw0 = g.f32s(n * k, 0.3);
            let db0 = g.f32s(n, 0.3);
            for with_db in [false, true] {
                let (mut want_dw, mut want_db) = (dw0.clone(), db0.clone());
                c.linear_backward_weight(
                    &mut want_dw,
                    with_db.then_some(&mut want_db),
                    &dout,
                    &x,
                    m,
                    n,
                    k,
                )
                .unwrap();
                let mut dw = be.upload_f32(&dw0).unwrap();
                let mut dbias = be.upload_f32(&db0).unwrap();
                be.linear_backward_weight(
                    &mut dw,
                    with_db.then_some(&mut dbias),
                    &be.upload(&dout).unwrap(),
                    &be.upload(&x).unwrap(),
                    m,
                    n,
                    k,
                )
                .unwrap();
                let what = format!("{name} linear_backward_weight {m}x{n}x{k} bias {with_db}");
                close(
                    &format!("{what}: dw"),
                    &be.download(&dw).unwrap(),
                    &want_dw,
                    1e-5,
                );
                let got_db = be.download(&dbias).unwrap();
                if with_db {
                    close(&format!("{what}: db"), &got_db, &want_db, 1e-5);
                } else {
                    assert_eq!(got_db, db0, "{what}: db untouched");
                }
            }
        }
    }
}

/// Every combination of the transpose flags, accumulate on and off, f32 and bf16
/// out, against an f64 loop: the device-level GEMM the gradients are built on.
#[test]
fn gemm_ex_transposes_and_accumulate() {
    use half::bf16 as B;
    for (name, be) in cuda_backends() {
        let dev = be.device();
        let mut g = Gen(18);
        let (m, n, k) = (7, 11, 13);
        let a: Vec<B> = g.f32s(m * k, 1.0).into_iter().map(B::from_f32).collect();
        let b: Vec<B> = g.f32s(k * n, 1.0).into_iter().map(B::from_f32).collect();
        let c0 = g.f32s(m * n, 1.0);
        let (ap, bp) = (
            upload_new(&**dev, &a).unwrap(),
            upload_new(&**dev, &b).unwrap(),
        );
        for tx in [false, true] {
            for tw in [false, true] {
                for accumulate in [false, true] {
                    for out_f32 in [true, false] {
                        let out = if out_f32 {
                            upload_new(&**dev, &c0).unwrap()
                        } else {
                            let c: Vec<B> = c0.iter().map(|&v| B::from_f32(v)).collect();
                            upload_new(&**dev, &c).unwrap()
                        };
                        dev.gemm_ex(&GemmEx {
                            out,
                            out_f32,
                            x: ap,
                            w: bp,
                            m,
                            n,
                            k,
                            trans_x: tx,
                            trans_w: tw,
                            accumulate,
                        })
                        .unwrap();
                        let got: Vec<f32> = if out_f32 {
                            download_vec(&**dev, out, m * n).unwrap()
                        } else {
                            download_vec::<B>(&**dev, out, m * n)
                                .unwrap()
                                .iter()
                                .map(|v| v.to_f32())
                                .collect()
                        };
                        dev.free(out);
                        let base = |i: usize| {
                            if out_f32 {
                                c0[i] as f64
                            } else {
                                B::from_f32(c0[i]).to_f64()
                            }
                        };
                        for i in 0..m {
                            for j in 0..n {
                                let dot: f64 = (0..k)
                                    .map(|p| {
                                        let av = if tx { a[p * m + i] } else { a[i * k + p] };
                                        let bv = if tw { b[j * k + p] } else { b[p * n + j] };
                                        av.to_f64() * bv.to_f64()
                                    })
                                    .sum();
                                let want = dot + if accumulate { base(i * n + j) } else { 0.0 };
                                let tol = if out_f32 {
                                    1e-5
                                } else {
                                    want.abs() / 128.0 + 1e-6
                                };
                                let got = got[i * n + j] as f64;
                                assert!(
                                    (got - want).abs() <= tol,
                                    "{name} trans_x {tx} trans_w {tw} acc {accumulate} f32 {out_f32} [{i}][{j}]: {got} vs {want}"
                                );
                            }
                        }
                    }
                }
            }
        }
        dev.free(ap);
        dev.free(bp);
    }
}

/// One token-loss case: logits, per-row inputs built so each row sits well inside
/// one branch of the loss (ratio clipped low / high, dual clip, clamp at 20, inside
/// the band), and the config.
struct LossCase {
    rows: usize,
    vocab: usize,
    logits: Vec<f32>,
    target: Vec<u32>,
    old_logp: Vec<f32>,
    ref_logp: Option<Vec<f32>>,
    adv: Vec<f32>,
    weight: Vec<f32>,
}

/// Ratios and advantages of the rows: (ratio, advantage sign).
const LOSS_ROWS: [(f32, f32); 10] = [
    (1.5, 1.0),    // ratio clip binds (A > 0, r > 1 + eps)
    (0.5, -1.0),   // ratio clip binds (A < 0, r < 1 - eps)
    (5.0, -1.0),   // dual clip binds (A < 0, -A r > -A c)
    (0.9, 1.0),    // inside the band
    (1.1, -1.0),   // inside the band
    (0.5, 1.0),    // unclipped (A > 0, r small)
    (2.0, -1.0),   // unclipped, below the dual clip
    (1e12, 1.0),   // log-ratio past the clamp at 20: ratio constant, clipped
    (1e-12, -1.0), // log-ratio below -20: ratio constant
    (1.05, 1.0),   // inside the band
];

/// ref_logp - logp per row, for every KL type.
const REF_OFFSETS: [f32; 10] = [0.3, -0.5, 1.5, -2.0, 0.8, 0.01, -1.2, 0.7, 2.0, -0.05];
/// The same with the low-var-kl clamps binding: |kl| >= 10 (3.0, 2.9, -25) and
/// |ref - logp| >= 20 (-25, 25). Exponentially large K2 / K3 terms there would
/// swamp every other row's gradient, so only low-var-kl sees these.
const REF_OFFSETS_CLAMPED: [f32; 10] = [0.3, -0.5, 3.0, -25.0, 25.0, 0.01, -1.2, 0.7, 2.9, -0.05];

fn loss_case(g: &mut Gen, rows: usize, vocab: usize, ref_offsets: Option<&[f32]>) -> LossCase {
    let logits = g.f32s(rows * vocab, 4.0);
    let target = g.below(rows, vocab as u32);
    let mut logp = vec![0.0; rows];
    cpu::logprob_gather(&mut logp, &logits, &target, rows, vocab);
    let old_logp = (0..rows)
        .map(|r| logp[r] - LOSS_ROWS[r % LOSS_ROWS.len()].0.ln())
        .collect();
    let adv = g
        .range(rows, 0.3, 1.5)
        .iter()
        .enumerate()
        .map(|(r, &a)| a * LOSS_ROWS[r % LOSS_ROWS.len()].1)
        .collect();
    let ref_logp = ref_offsets.map(|o| (0..rows).map(|r| logp[r] + o[r % o.len()]).collect());
    LossCase {
        rows,
        vocab,
        logits,
        target,
        old_logp,
        ref_logp,
        adv,
        weight: g.range(rows, 0.1, 1.0),
    }
}

fn check_token_loss(
    name: &str,
    be: &CudaBackend,
    case: &LossCase,
    cfg: &LossConfig,
    dlogits_dtype: DType,
) {
    let c = cpu();
    let (rows, vocab) = (case.rows, case.vocab);
    let mut want_d = vec![0.0; rows * vocab];
    let mut want_s = vec![0.0; rows * stat::STATS];
    let cref = case.ref_logp.clone();
    let cpu_rows = LossRows::<CpuBackend<f32>> {
        target: &case.target,
        old_logp: &case.old_logp,
        ref_logp: cref.as_ref(),
        adv: &case.adv,
        weight: &case.weight,
    };
    c.token_loss_backward(
        &mut want_d,
        &mut want_s,
        &case.logits,
        &cpu_rows,
        rows,
        vocab,
        cfg,
    )
    .unwrap();

    let target = be.upload_idx(&case.target).unwrap();
    let old_logp = be.upload_f32(&case.old_logp).unwrap();
    let ref_logp = case.ref_logp.as_ref().map(|r| be.upload_f32(r).unwrap());
    let adv = be.upload_f32(&case.adv).unwrap();
    let weight = be.upload_f32(&case.weight).unwrap();
    let lr = LossRows::<CudaBackend> {
        target: &target,
        old_logp: &old_logp,
        ref_logp: ref_logp.as_ref(),
        adv: &adv,
        weight: &weight,
    };
    let mut dl = poisoned(be, rows * vocab, dlogits_dtype);
    let mut st = poisoned(be, rows * stat::STATS, DType::F32);
    be.token_loss_backward(
        &mut dl,
        &mut st,
        &be.upload_f32(&case.logits).unwrap(),
        &lr,
        rows,
        vocab,
        cfg,
    )
    .unwrap();
    let what = format!(
        "{name} token_loss vocab {vocab} ref {} kl {:?} beta {} ent {} clip_c {:?} {dlogits_dtype:?}",
        case.ref_logp.is_some(),
        cfg.kl,
        cfg.beta,
        cfg.entropy_coef,
        cfg.clip_c
    );
    let tol = if dlogits_dtype == DType::Bf16 {
        BF16
    } else {
        1e-4
    };
    close(
        &format!("{what}: dlogits"),
        &be.download(&dl).unwrap(),
        &want_d,
        tol,
    );
    let got_s = be.download(&st).unwrap();
    let col = |s: &[f32], c: usize| -> Vec<f32> { s.chunks(stat::STATS).map(|r| r[c]).collect() };
    for (c, label, tol) in [
        (stat::LOGP, "logp", 1e-5),
        (stat::LOSS, "loss", 1e-5),
        (stat::ENTROPY, "entropy", 1e-5),
    ] {
        let d = diff(&col(&got_s, c), &col(&want_s, c));
        eprintln!(
            "{what}: stats {label}: rel {:.2e}, max abs {:.2e}",
            d.rel, d.max_abs
        );
        assert!(
            d.rel <= tol,
            "{what}: stats {label} rel {:.3e} (max abs {:.3e} at row {})",
            d.rel,
            d.max_abs,
            d.worst
        );
    }
    assert_eq!(
        col(&got_s, stat::CLIPPED),
        col(&want_s, stat::CLIPPED),
        "{what}: clipped flags"
    );
}

#[test]
fn token_loss_backward_matches_every_branch() {
    for (name, be) in cuda_backends() {
        let mut g = Gen(19);
        // 1000: 8-wide vectors, not a multiple of the 512-thread block; 777: scalar.
        for vocab in [1000usize, 777] {
            let plain = loss_case(&mut g, 10, vocab, None);
            let with_ref = loss_case(&mut g, 10, vocab, Some(&REF_OFFSETS));
            let clamped = loss_case(&mut g, 10, vocab, Some(&REF_OFFSETS_CLAMPED));
            let base = LossConfig::default();
            check_token_loss(&name, &be, &plain, &base, DType::Bf16);
            let c = LossConfig {
                entropy_coef: 0.05,
                clip_c: None,
                ..base
            };
            check_token_loss(&name, &be, &plain, &c, DType::Bf16);
            check_token_loss(&name, &be, &plain, &c, DType::F32);
            for kl in [KlType::K1, KlType::K2, KlType::K3, KlType::LowVarKl] {
                let c = LossConfig {
                    kl,
                    beta: 0.1,
                    entropy_coef: if kl == KlType::K3 { 0.0 } else { -0.02 },
                    eps_high: 0.28,
                    ..base
                };
                check_token_loss(&name, &be, &with_ref, &c, DType::Bf16);
            }
            let c = LossConfig {
                kl: KlType::LowVarKl,
                beta: 0.5,
                entropy_coef: 0.01,
                ..base
            };
            check_token_loss(&name, &be, &clamped, &c, DType::Bf16);
            check_token_loss(&name, &be, &clamped, &c, DType::F32);
            // Supervised fine-tuning's cross-entropy (old_logp, adv, ref unused).
            let ce = LossConfig::cross_entropy();
            check_token_loss(&name, &be, &with_ref, &ce, DType::Bf16);
            let ce_h = LossConfig {
                entropy_coef: 0.03,
                ..ce
            };
            check_token_loss(&name, &be, &plain, &ce_h, DType::F32);
        }
    }
}

#[test]
fn token_loss_backward_refuses_a_target_outside_the_vocabulary() {
    for (name, be) in cuda_backends() {
        let f = |n: usize| be.upload_f32(&vec![0.5; n]).unwrap();
        let (target, old, adv, w) = (be.upload_idx(&[3, 8]).unwrap(), f(2), f(2), f(2));
        let rows = LossRows::<CudaBackend> {
            target: &target,
            old_logp: &old,
            ref_logp: None,
            adv: &adv,
            weight: &w,
        };
        let mut dl = be.zeros(16).unwrap();
        let mut st = be.zeros_f32(8).unwrap();
        let e = be
            .token_loss_backward(
                &mut dl,
                &mut st,
                &f(16),
                &rows,
                2,
                8,
                &LossConfig::default(),
            )
            .unwrap_err();
        assert!(e.to_string().contains("target 8"), "{name}: {e}");
    }
}

#[test]
fn adamw_step_matches_cpu_with_the_forward_copy() {
    let c = cpu();
    let opt = AdamW {
        lr: 3e-3,
        beta1: 0.9,
        beta2: 0.99,
        eps: 1e-8,
        weight_decay: 0.05,
    };
    for (name, be) in cuda_backends() {
        let mut g = Gen(20);
        for n in [1000usize, 1003] {
            let p0 = g.f32s(n, 1.0);
            let grads: Vec<Vec<f32>> = (0..3).map(|_| g.f32s(n, 0.1)).collect();
            let (mut p, mut m, mut v) = (p0.clone(), vec![0.0; n], vec![0.0; n]);
            let mut copy = vec![0.0; n];
            for (t, gr) in grads.iter().enumerate() {
                c.adamw_step(
                    &mut p,
                    &mut m,
                    &mut v,
                    Some(&mut copy),
                    gr,
                    &opt,
                    t as u64 + 1,
                    0.7,
                )
                .unwrap();
            }
            for copy_dtype in [DType::Bf16, DType::F32] {
                let mut bp = be.upload_f32(&p0).unwrap();
                let mut bm = be.upload_f32(&vec![0.0; n]).unwrap();
                let mut bv = be.upload_f32(&vec![0.0; n]).unwrap();
                let mut bc = poisoned(&be, n, copy_dtype);
                for (t, gr) in grads.iter().enumerate() {
                    let bg = be.upload_f32(gr).unwrap();
                    be.adamw_step(
                        &mut bp,
                        &mut bm,
                        &mut bv,
                        Some(&mut bc),
                        &bg,
                        &opt,
                        t as u64 + 1,
                        0.7,
                    )
                    .unwrap();
                }
                let what = format!("{name} adamw n {n} copy {copy_dtype:?}");
                let got_p = be.download(&bp).unwrap();
                close(&format!("{what}: param"), &got_p, &p, 1e-6);
                close(&format!("{what}: m"), &be.download(&bm).unwrap(), &m, 1e-6);
                close(&format!("{what}: v"), &be.download(&bv).unwrap(), &v, 1e-6);
                assert_eq!(
                    be.download(&bc).unwrap(),
                    stored(&got_p, copy_dtype),
                    "{what}: the copy is the new parameter"
                );
            }
            // Without a copy.
            let mut bp = be.upload_f32(&p0).unwrap();
            let (mut bm, mut bv) = (be.zeros_f32(n).unwrap(), be.zeros_f32(n).unwrap());
            let bg = be.upload_f32(&grads[0]).unwrap();
            be.adamw_step(&mut bp, &mut bm, &mut bv, None, &bg, &opt, 1, 0.7)
                .unwrap();
            let (mut p1, mut m1, mut v1) = (p0.clone(), vec![0.0; n], vec![0.0; n]);
            opt.step(&mut p1, &mut m1, &mut v1, &grads[0], 1, 0.7);
            close(
                &format!("{name} adamw n {n} no copy"),
                &be.download(&bp).unwrap(),
                &p1,
                1e-6,
            );
        }
    }
}

#[test]
fn sgd_step_matches_cpu_with_the_forward_copy() {
    let c = cpu();
    for (name, be) in cuda_backends() {
        let mut g = Gen(21);
        for n in [1000usize, 1003] {
            let p0 = g.f32s(n, 1.0);
            let grads: Vec<Vec<f32>> = (0..3).map(|_| g.f32s(n, 0.5)).collect();
            let mut p = p0.clone();
            for gr in &grads {
                c.sgd_step(&mut p, None, gr, 0.05, 0.1, 0.8).unwrap();
            }
            for copy_dtype in [None, Some(DType::Bf16), Some(DType::F32)] {
                let mut bp = be.upload_f32(&p0).unwrap();
                let mut bc = copy_dtype.map(|d| poisoned(&be, n, d));
                for gr in &grads {
                    be.sgd_step(
                        &mut bp,
                        bc.as_mut(),
                        &be.upload_f32(gr).unwrap(),
                        0.05,
                        0.1,
                        0.8,
                    )
                    .unwrap();
                }
                let what = format!("{name} sgd n {n} copy {copy_dtype:?}");
                let got_p = be.download(&bp).unwrap();
                close(&what, &got_p, &p, 1e-6);
                if let (Some(b), Some(d)) = (bc, copy_dtype) {
                    assert_eq!(be.download(&b).unwrap(), stored(&got_p, d), "{what}: copy");
                }
            }
        }
    }
}

#[test]
fn sum_squares_matches_a_host_f64_sum() {
    let c = cpu();
    for (name, be) in cuda_backends() {
        let mut g = Gen(22);
        for n in [1usize, 1001, 10_000, 60_000] {
            let v = g.f32s(n, 3.0);
            for dt in [DType::F32, DType::Bf16] {
                let vs = stored(&v, dt);
                let want: f64 = vs.iter().map(|&x| (x as f64) * (x as f64)).sum();
                let got = be.sum_squares(&upload(&be, &vs, dt)).unwrap();
                assert!(
                    (got - want).abs() <= 1e-10 * want,
                    "{name} sum_squares n {n} {dt:?}: {got} vs {want}"
                );
                if dt == DType::F32 {
                    let cpu_sum = c.sum_squares(&vs).unwrap();
                    assert!((got - cpu_sum).abs() <= 1e-10 * want, "{name}: vs cpu");
                }
            }
        }
        assert_eq!(be.sum_squares(&be.zeros_f32(0).unwrap()).unwrap(), 0.0);
    }
}

#[test]
fn copy_convert_casts_both_ways_and_copies() {
    for (name, be) in cuda_backends() {
        let mut g = Gen(23);
        for n in [1000usize, 1001, 3] {
            let v = g.f32s(n, 10.0);
            for (dt, st) in DTYPE_PAIRS {
                let src = upload(&be, &v, st);
                let mut dst = poisoned(&be, n, dt);
                be.copy_convert(&mut dst, &src).unwrap();
                assert_eq!(
                    be.download(&dst).unwrap(),
                    stored(&stored(&v, st), dt),
                    "{name} copy_convert n {n} {st:?} -> {dt:?}"
                );
            }
        }
        let mut short = be.zeros(3).unwrap();
        assert!(be.copy_convert(&mut short, &be.zeros(4).unwrap()).is_err());
    }
}
