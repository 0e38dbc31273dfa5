//! Attention for training on the CUDA backend (`attention_saved`, `attention_backward`;
//! kernels/attention_prefill.cu with lse, kernels/attention_backward.cu) against the
//! CPU reference in f32: on the host emulator always, on a GPU too when one is usable.
//!
//! Both backends run the same code (`run`): the forward that saves lse, then the
//! backward with each backend's own out and lse. Inputs are random (never zeros);
//! out, lse and dq start as NaN, so an element a kernel forgets fails the finiteness
//! check; dk/dv start from random nonzero buffers (+= semantics), and every cache
//! position outside the keys of the batch's sequences must come back bit for bit.
//! bf16 storage: relative error <= 2e-2 (DESIGN.md section 7). Shapes are small: the
//! emulator runs every warp as threads, and this file must stay well under a minute.

mod common;

use common::{assert_close, cuda_backends, diff};
use onelayer::backend::cpu::CpuBackend;
use onelayer::backend::{AttnDims, Backend};
use onelayer::sampling;

const BF16: f64 = 2e-2;

/// A small deterministic generator for test inputs.
struct Gen(u64);
impl Gen {
    fn f32s(&mut self, n: usize, scale: f32) -> Vec<f32> {
        (0..n)
            .map(|_| {
                self.0 = sampling::mix64(self.0);
                ((self.0 >> 40) as f32 / (1u64 << 24) as f32 * 2.0 - 1.0) * scale
            })
            .collect()
    }
    /// Values rounded through bf16, as an upload to the CUDA backend does.
    fn bf16s(&mut self, n: usize, scale: f32) -> Vec<f32> {
        self.f32s(n, scale)
            .into_iter()
            .map(|x| half::bf16::from_f32(x).to_f32())
            .collect()
    }
}

/// One batch: sequences `(slot, first position, tokens)` in batch order; positions
/// below the first are a cached prefix.
struct Case {
    heads: usize,
    kv_heads: usize,
    head_dim: usize,
    slots: usize,
    max_len: usize,
    runs: Vec<(u32, u32, usize)>,
}

struct Inputs {
    d: AttnDims,
    slot: Vec<u32>,
    pos: Vec<u32>,
    q: Vec<f32>,
    k: Vec<f32>,
    v: Vec<f32>,
    dout: Vec<f32>,
    dk0: Vec<f32>,
    dv0: Vec<f32>,
    scale: f32,
}

struct Outputs {
    out: Vec<f32>,
    lse: Vec<f32>,
    dq: Vec<f32>,
    dk: Vec<f32>,
    dv: Vec<f32>,
}

impl Case {
    fn inputs(&self, g: &mut Gen) -> Inputs {
        let (mut slot, mut pos) = (vec![], vec![]);
        for &(s, p0, n) in &self.runs {
            slot.extend(std::iter::repeat_n(s, n));
            pos.extend(p0..p0 + n as u32);
        }
        let d = AttnDims {
            tokens: slot.len(),
            heads: self.heads,
            kv_heads: self.kv_heads,
            head_dim: self.head_dim,
            slots: self.slots,
            max_len: self.max_len,
        };
        let rows = d.tokens * d.heads * d.head_dim;
        Inputs {
            q: g.bf16s(rows, 2.0),
            k: g.bf16s(d.cache_len(), 1.0),
            v: g.bf16s(d.cache_len(), 1.0),
            dout: g.bf16s(rows, 1.0),
            dk0: g.bf16s(d.cache_len(), 0.1),
            dv0: g.bf16s(d.cache_len(), 0.1),
            scale: (d.head_dim as f32).powf(-0.5),
            d,
            slot,
            pos,
        }
    }

    /// Whether cache element `i` belongs to a key some token of the batch attends to.
    fn touched(&self, i: usize) -> bool {
        let row = self.kv_heads * self.head_dim;
        let (s, p) = (i / row / self.max_len, i / row % self.max_len);
        self.runs
            .iter()
            .any(|&(rs, p0, n)| rs as usize == s && p < p0 as usize + n)
    }
}

/// attention_saved then attention_backward on `be`, outputs poisoned with NaN first.
fn run<B: Backend>(be: &B, x: &Inputs) -> onelayer::Result<Outputs> {
    let d = x.d;
    let rows = d.tokens * d.heads * d.head_dim;
    let mut out = be.upload(&vec![f32::NAN; rows])?;
    let mut lse = be.upload_f32(&vec![f32::NAN; d.tokens * d.heads])?;
    let (q, k, v) = (be.upload(&x.q)?, be.upload(&x.k)?, be.upload(&x.v)?);
    let (slot, pos) = (be.upload_idx(&x.slot)?, be.upload_idx(&x.pos)?);
    be.attention_saved(&mut out, &mut lse, &q, &k, &v, &slot, &pos, d, x.scale)?;
    let mut dq = be.upload(&vec![f32::NAN; rows])?;
    let mut dk = be.upload(&x.dk0)?;
    let mut dv = be.upload(&x.dv0)?;
    let dout = be.upload(&x.dout)?;
    be.attention_backward(
        &mut dq, &mut dk, &mut dv, &dout, &out, &lse, &q, &k, &v, &slot, &pos, d, x.scale,
    )?;
    Ok(Outputs {
        out: be.download(&out)?,
        lse: be.download(&lse)?,
        dq: be.download(&dq)?,
        dk: be.download(&dk)?,
        dv: be.download(&dv)?,
    })
}

/// Compare every output of `case` on each CUDA backend with the CPU; returns the
/// largest relative error seen.
fn check(case: &Case, seed: u64) -> f64 {
    let x = case.inputs(&mut Gen(seed));
    let want = run(&CpuBackend::<f32>::new(), &x).expect("cpu");
    let mut worst: f64 = 0.0;
    for (name, be) in cuda_backends() {
        let got = run(&be, &x).unwrap_or_else(|e| panic!("{name}: {e}"));
        let what = |t: &str| {
            format!(
                "{name} {t}: heads {} kv {} hd {} runs {:?}",
                case.heads, case.kv_heads, case.head_dim, case.runs
            )
        };
        let mut errors = String::new();
        let mut record = |t: &str, g: &[f32], w: &[f32]| {
            assert_close(&what(t), g, w, BF16);
            let e = diff(g, w);
            errors += &format!(" {t} {:.1e} ({:.1e})", e.rel, e.max_abs);
            worst = worst.max(e.rel);
        };
        record("out", &got.out, &want.out);
        record("lse", &got.lse, &want.lse);
        record("dq", &got.dq, &want.dq);
        for (t, g, w, start) in [
            ("dk", &got.dk, &want.dk, &x.dk0),
            ("dv", &got.dv, &want.dv, &x.dv0),
        ] {
            // The gradient added (+=) at the keys the batch sees, and nothing elsewhere.
            let (mut gd, mut wd) = (vec![], vec![]);
            for i in 0..start.len() {
                if case.touched(i) {
                    gd.push(g[i] - start[i]);
                    wd.push(w[i] - start[i]);
                } else {
                    assert_eq!(
                        g[i].to_bits(),
                        start[i].to_bits(),
                        "{}: element {i} outside the batch's keys changed",
                        what(t)
                    );
                }
            }
            record(t, &gd, &wd);
        }
        // relative (max abs) error of each output
        eprintln!("{}:{errors}", what("errors"));
    }
    worst
}

#[test]
fn gqa_groups_and_head_dims_with_ragged_sequences_and_cached_prefixes() {
    let cases = [
        // group 1, head_dim 16 (padded to 32): fresh sequences, one over a 64-row tile,
        // slots not in batch order, slot 3 idle
        Case {
            heads: 2,
            kv_heads: 2,
            head_dim: 16,
            slots: 4,
            max_len: 80,
            runs: vec![(1, 0, 70), (0, 0, 13), (2, 0, 1)],
        },
        // group 2, head_dim 32: a sequence after a cached prefix of 5 keys
        Case {
            heads: 4,
            kv_heads: 2,
            head_dim: 32,
            slots: 3,
            max_len: 40,
            runs: vec![(2, 5, 20), (0, 0, 9)],
        },
        // MQA (group 4), head_dim 64, a prefix of 7
        Case {
            heads: 4,
            kv_heads: 1,
            head_dim: 64,
            slots: 2,
            max_len: 32,
            runs: vec![(0, 0, 24), (1, 7, 3)],
        },
        // group 4 over two kv heads, head_dim 128: 40 queries = two 32-row steps of
        // the dK/dV loop and two 32-key tiles of the dQ loop
        Case {
            heads: 8,
            kv_heads: 2,
            head_dim: 128,
            slots: 2,
            max_len: 48,
            runs: vec![(1, 5, 40)],
        },
        // head_dim 144 (padded to 256: output dims split over two blocks), group 2
        Case {
            heads: 2,
            kv_heads: 1,
            head_dim: 144,
            slots: 2,
            max_len: 24,
            runs: vec![(1, 3, 18)],
        },
    ];
    let mut worst: f64 = 0.0;
    for (i, case) in cases.iter().enumerate() {
        worst = worst.max(check(case, 10 + i as u64));
    }
    eprintln!("largest relative error: {worst:.2e}");
}

#[test]
fn single_tokens_per_slot_use_the_saving_forward_and_backward() {
    // A decode-shaped batch: one token per slot after cached prefixes (head_dim 48:
    // padding inside the 64 instantiation), MQA group 2.
    let case = Case {
        heads: 2,
        kv_heads: 1,
        head_dim: 48,
        slots: 4,
        max_len: 12,
        runs: vec![(0, 7, 1), (1, 0, 1), (3, 3, 1)],
    };
    check(&case, 20);
}

#[test]
fn backward_refuses_what_it_cannot_do() {
    for (name, be) in cuda_backends() {
        let d = AttnDims {
            tokens: 3,
            heads: 2,
            kv_heads: 1,
            head_dim: 32,
            slots: 2,
            max_len: 8,
        };
        let try_backward = |d: AttnDims, slot: &[u32], pos: &[u32]| {
            let rows = d.tokens * d.heads * d.head_dim;
            let mut g = Gen(30);
            let (q, dout) = (
                be.upload(&g.f32s(rows, 1.0)).unwrap(),
                be.upload(&g.f32s(rows, 1.0)).unwrap(),
            );
            let (k, v) = (
                be.upload(&g.f32s(d.cache_len(), 1.0)).unwrap(),
                be.upload(&g.f32s(d.cache_len(), 1.0)).unwrap(),
            );
            let out = be.upload(&g.f32s(rows, 1.0)).unwrap();
            let lse = be.upload_f32(&g.f32s(d.tokens * d.heads, 1.0)).unwrap();
            let mut dq = be.zeros(rows).unwrap();
            let mut dk = be.zeros(d.cache_len()).unwrap();
            let mut dv = be.zeros(d.cache_len()).unwrap();
            let (s, p) = (be.upload_idx(slot).unwrap(), be.upload_idx(pos).unwrap());
            be.attention_backward(
                &mut dq, &mut dk, &mut dv, &dout, &out, &lse, &q, &k, &v, &s, &p, d, 0.1,
            )
            .unwrap_err()
            .to_string()
        };
        // slot 0 in two runs; a gap in slot 0's positions
        for (slot, pos) in [([0u32, 1, 0], [0u32, 0, 1]), ([0, 0, 0], [0, 1, 3])] {
            let e = try_backward(d, &slot, &pos);
            assert!(
                e.contains("slot 0") && e.contains("not one run") && !e.contains('\n'),
                "{name}: {e}"
            );
        }
        // a position past the cache
        let e = try_backward(d, &[0, 0, 0], &[6, 7, 8]);
        assert!(e.contains("outside the cache"), "{name}: {e}");
        // head_dim past 256, or not a multiple of 16
        for hd in [272, 40] {
            let e = try_backward(
                AttnDims {
                    head_dim: hd,
                    tokens: 1,
                    ..d
                },
                &[0],
                &[0],
            );
            assert!(e.contains(&format!("head_dim {hd}")), "{name}: {e}");
        }
    }
}
