//! The CUDA backend, op by op, against the CPU reference: on the host emulator
//! always, and on a real GPU too when one is usable. Inputs are random, shapes
//! include sizes that are not multiples of the tiles, GQA ratios 1 to 8, decode
//! against long caches, head_dim 16 to 256. bf16 storage: relative error <= 2e-2
//! (DESIGN.md section 7); where both sides see the same bf16 inputs and the op only
//! moves data, equality.

mod common;

use common::{assert_close, cuda_backends as test_devices};
use onelayer::backend::cpu::{self, CpuBackend};
use onelayer::backend::{AttnDims, Backend};
use onelayer::sampling::{self, SamplingParams};

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
    fn below(&mut self, n: usize, bound: u32) -> Vec<u32> {
        (0..n)
            .map(|_| {
                self.0 = sampling::mix64(self.0);
                (self.0 % bound as u64) as u32
            })
            .collect()
    }
}

/// Round through bf16, as an upload to the CUDA backend does.
fn bf16(v: &[f32]) -> Vec<f32> {
    v.iter()
        .map(|&x| half::bf16::from_f32(x).to_f32())
        .collect()
}

#[test]
fn embedding_gathers_rows_exactly() {
    for (name, be) in test_devices() {
        let mut g = Gen(1);
        for dim in [8usize, 20, 64] {
            let table = bf16(&g.f32s(50 * dim, 1.0));
            let ids = g.below(13, 50);
            let mut want = vec![0.0; 13 * dim];
            cpu::embedding(&mut want, &ids, &table, 13, dim);
            let mut out = be.zeros(13 * dim).unwrap();
            be.embedding(
                &mut out,
                &be.upload_idx(&ids).unwrap(),
                &be.upload(&table).unwrap(),
                13,
                dim,
            )
            .unwrap();
            assert_eq!(be.download(&out).unwrap(), want, "{name} dim {dim}");
        }
    }
}

#[test]
fn rmsnorm_matches() {
    for (name, be) in test_devices() {
        let mut g = Gen(2);
        for (rows, dim) in [(3usize, 16usize), (5, 100), (2, 1024), (4, 4100)] {
            let x = bf16(&g.f32s(rows * dim, 3.0));
            let w = bf16(&g.f32s(dim, 1.5));
            let mut want = vec![0.0; rows * dim];
            cpu::rmsnorm(&mut want, &x, &w, rows, dim, 1e-6);
            let mut out = be.zeros(rows * dim).unwrap();
            be.rmsnorm(
                &mut out,
                &be.upload(&x).unwrap(),
                &be.upload(&w).unwrap(),
                rows,
                dim,
                1e-6,
            )
            .unwrap();
            assert_close(
                &format!("{name} rmsnorm {rows}x{dim}"),
                &be.download(&out).unwrap(),
                &want,
                BF16,
            );
        }
    }
}

#[test]
fn linear_matches_with_and_without_bias_in_bf16_and_f32() {
    for (name, be) in test_devices() {
        let mut g = Gen(3);
        for (m, n, k) in [(1usize, 24usize, 16usize), (7, 40, 72), (33, 64, 128)] {
            let x = bf16(&g.f32s(m * k, 1.0));
            let w = bf16(&g.f32s(n * k, 0.5));
            let b = bf16(&g.f32s(n, 0.5));
            for bias in [false, true] {
                let mut want = vec![0.0; m * n];
                cpu::linear(&mut want, &x, &w, bias.then_some(b.as_slice()), m, n, k);
                let bb = be.upload(&b).unwrap();
                let (xb, wb) = (be.upload(&x).unwrap(), be.upload(&w).unwrap());
                let mut out = be.zeros(m * n).unwrap();
                be.linear(&mut out, &xb, &wb, bias.then_some(&bb), m, n, k)
                    .unwrap();
                assert_close(
                    &format!("{name} linear {m}x{n}x{k} bias {bias}"),
                    &be.download(&out).unwrap(),
                    &want,
                    BF16,
                );
                let mut out = be.zeros_f32(m * n).unwrap();
                be.linear(&mut out, &xb, &wb, bias.then_some(&bb), m, n, k)
                    .unwrap();
                assert_close(
                    &format!("{name} linear f32 {m}x{n}x{k}"),
                    &be.download(&out).unwrap(),
                    &want,
                    1e-5,
                );
            }
        }
    }
}

#[test]
fn rope_matches_at_long_positions() {
    for (name, be) in test_devices() {
        let mut g = Gen(4);
        for hd in [16usize, 48, 64, 128] {
            let (t, h) = (5, 3);
            let x = bf16(&g.f32s(t * h * hd, 2.0));
            let pos = vec![0, 1, 17, 1000, 4095];
            let mut want = x.clone();
            cpu::rope(&mut want, &pos, t, h, hd, 1e6);
            let mut out = be.upload(&x).unwrap();
            be.rope(&mut out, &be.upload_idx(&pos).unwrap(), t, h, hd, 1e6)
                .unwrap();
            assert_close(
                &format!("{name} rope hd {hd}"),
                &be.download(&out).unwrap(),
                &want,
                BF16,
            );
        }
    }
}

/// Fill a cache through kv_write on both backends, then compare attention.
fn check_attention(
    name: &str,
    be: &impl Backend,
    g: &mut Gen,
    d: AttnDims,
    history: &[usize],
    new: &[usize],
) {
    // Slot s holds history[s] old tokens, then new[s] new ones (0 = idle slot).
    let (mut slot, mut pos, mut old_slot, mut old_pos) = (vec![], vec![], vec![], vec![]);
    for (s, (&h, &n)) in history.iter().zip(new).enumerate() {
        old_slot.extend(std::iter::repeat_n(s as u32, h));
        old_pos.extend(0..h as u32);
        slot.extend(std::iter::repeat_n(s as u32, n));
        pos.extend(h as u32..(h + n) as u32);
    }
    let row = d.kv_heads * d.head_dim;
    let mut k_cpu = vec![0.0; d.cache_len()];
    let mut v_cpu = vec![0.0; d.cache_len()];
    let mut k_dev = be.zeros(d.cache_len()).unwrap();
    let mut v_dev = be.zeros(d.cache_len()).unwrap();
    for (sl, ps) in [(&old_slot, &old_pos), (&slot, &pos)] {
        let dt = AttnDims {
            tokens: sl.len(),
            ..d
        };
        let k = bf16(&g.f32s(sl.len() * row, 1.0));
        let v = bf16(&g.f32s(sl.len() * row, 1.0));
        cpu::kv_write(&mut k_cpu, &k, sl, ps, dt);
        cpu::kv_write(&mut v_cpu, &v, sl, ps, dt);
        let (si, pi) = (be.upload_idx(sl).unwrap(), be.upload_idx(ps).unwrap());
        be.kv_write(&mut k_dev, &be.upload(&k).unwrap(), &si, &pi, dt)
            .unwrap();
        be.kv_write(&mut v_dev, &be.upload(&v).unwrap(), &si, &pi, dt)
            .unwrap();
    }
    assert_eq!(be.download(&k_dev).unwrap(), k_cpu, "{name}: kv_write");
    let dq = AttnDims {
        tokens: slot.len(),
        ..d
    };
    let q = bf16(&g.f32s(dq.tokens * d.heads * d.head_dim, 2.0));
    let scale = (d.head_dim as f32).powf(-0.5);
    let mut want = vec![0.0; q.len()];
    cpu::attention(&mut want, &q, &k_cpu, &v_cpu, &slot, &pos, dq, scale);
    let mut out = be.zeros(q.len()).unwrap();
    let (si, pi) = (be.upload_idx(&slot).unwrap(), be.upload_idx(&pos).unwrap());
    be.attention(
        &mut out,
        &be.upload(&q).unwrap(),
        &k_dev,
        &v_dev,
        &si,
        &pi,
        dq,
        scale,
    )
    .unwrap();
    let what = format!("{name} attention {d:?} history {history:?} new {new:?}");
    assert_close(&what, &be.download(&out).unwrap(), &want, BF16);
}

#[test]
fn prefill_attention_ragged_gqa_and_head_dims() {
    for (name, be) in test_devices() {
        let mut g = Gen(5);
        for (heads, kv_heads, hd) in [
            (2usize, 2usize, 16usize),
            (4, 2, 48),
            (8, 1, 64),
            (8, 2, 128),
            (2, 1, 256),
        ] {
            let d = AttnDims {
                tokens: 0,
                heads,
                kv_heads,
                head_dim: hd,
                slots: 3,
                max_len: 160,
            };
            // fresh prompts of ragged lengths (one over a 64-row tile), and a prompt
            // that continues a cached prefix
            check_attention(&name, &be, &mut g, d, &[0, 0, 0], &[70, 13, 1]);
            check_attention(&name, &be, &mut g, d, &[0, 90, 0], &[5, 37, 0]);
        }
    }
}

#[test]
fn decode_attention_against_long_caches() {
    for (name, be) in test_devices() {
        let mut g = Gen(6);
        for (heads, kv_heads, hd) in [
            (8usize, 1usize, 64usize),
            (4, 4, 16),
            (6, 2, 128),
            (16, 2, 48),
        ] {
            let d = AttnDims {
                tokens: 0,
                heads,
                kv_heads,
                head_dim: hd,
                slots: 3,
                max_len: 1100,
            };
            check_attention(&name, &be, &mut g, d, &[1000, 3, 0], &[1, 1, 1]);
        }
    }
}

#[test]
fn elementwise_ops_match() {
    for (name, be) in test_devices() {
        let mut g = Gen(7);
        for n in [1usize, 1000, 4096] {
            let (a, b) = (bf16(&g.f32s(n, 4.0)), bf16(&g.f32s(n, 4.0)));
            let mut want = vec![0.0; n];
            cpu::swiglu(&mut want, &a, &b, n);
            let (ab, bb) = (be.upload(&a).unwrap(), be.upload(&b).unwrap());
            let mut out = be.zeros(n).unwrap();
            be.swiglu(&mut out, &ab, &bb, n).unwrap();
            assert_close(
                &format!("{name} swiglu {n}"),
                &be.download(&out).unwrap(),
                &want,
                BF16,
            );
            let mut want = a.clone();
            cpu::add_assign(&mut want, &b);
            let mut x = be.upload(&a).unwrap();
            be.add_assign(&mut x, &bb).unwrap();
            assert_close(
                &format!("{name} add {n}"),
                &be.download(&x).unwrap(),
                &want,
                BF16,
            );
        }
    }
}

#[test]
fn logprob_gather_matches() {
    for (name, be) in test_devices() {
        let mut g = Gen(8);
        for vocab in [10usize, 1000, 151_936] {
            let rows = 3;
            let logits = bf16(&g.f32s(rows * vocab, 8.0));
            let target = g.below(rows, vocab as u32);
            let mut want = vec![0.0; rows];
            cpu::logprob_gather(&mut want, &logits, &target, rows, vocab);
            let mut out = be.zeros_f32(rows).unwrap();
            let lb = be.upload_f32(&logits).unwrap();
            be.logprob_gather(&mut out, &lb, &be.upload_idx(&target).unwrap(), rows, vocab)
                .unwrap();
            assert_close(
                &format!("{name} logprob vocab {vocab}"),
                &be.download(&out).unwrap(),
                &want,
                1e-5,
            );
        }
    }
}

#[test]
fn sampling_matches_the_cpu_reference_draw_for_draw() {
    let cpu_be = CpuBackend::<f32>::new();
    for (name, be) in test_devices() {
        let mut g = Gen(9);
        let (rows, vocab) = (4usize, 3000usize);
        let logits = bf16(&g.f32s(rows * vocab, 6.0));
        let lb = be.upload_f32(&logits).unwrap();
        for p in [
            SamplingParams {
                temperature: 0.0,
                top_p: 1.0,
                top_k: 0,
            },
            SamplingParams {
                temperature: 1.0,
                top_p: 1.0,
                top_k: 0,
            },
            SamplingParams {
                temperature: 0.7,
                top_p: 0.9,
                top_k: 0,
            },
            SamplingParams {
                temperature: 1.3,
                top_p: 1.0,
                top_k: 20,
            },
            SamplingParams {
                temperature: 1.0,
                top_p: 0.5,
                top_k: 50,
            },
        ] {
            for step in 0..8 {
                let streams: Vec<u64> = (0..rows).map(|r| sampling::stream(r, step)).collect();
                let want = cpu_be.sample(&logits, &streams, vocab, &p, 42).unwrap();
                let got = be.sample(&lb, &streams, vocab, &p, 42).unwrap();
                assert_eq!(got, want, "{name} {p:?} step {step}");
            }
        }
    }
}
