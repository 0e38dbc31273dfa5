//! Attention over a paged KV cache on the CUDA backend (the emulator always, a GPU
//! when usable) against the CPU reference: decode (the split kernel specialised on
//! head_dim 64/128/256 and GQA group 2/4/8, groups of 1 and 16 too, contexts across
//! several splits) and
//! prefill (block-table addressing in the prefill kernel), scattered blocks, head
//! dims that need padding; and a token's decode value does not depend on the batch.

mod common;

use common::{assert_close, cuda_backends as test_devices};
use onelayer::backend::cpu;
use onelayer::backend::{Backend, PagedDims};
use onelayer::sampling;

const BF16: f64 = 2e-2;
const BS: usize = 16;

fn values(seed: u64, n: usize, scale: f32) -> Vec<f32> {
    let mut s = seed;
    (0..n)
        .map(|_| {
            s = sampling::mix64(s);
            let x = ((s >> 40) as f32 / (1u64 << 24) as f32 * 2.0 - 1.0) * scale;
            half::bf16::from_f32(x).to_f32()
        })
        .collect()
}

/// A cache holding `lens[r]` positions for table row r, blocks handed out from the
/// top down and interleaved between rows.
struct Cache {
    d: PagedDims,
    table: Vec<u32>,
    k: Vec<f32>,
    v: Vec<f32>,
}

fn cache(heads: usize, kv_heads: usize, hd: usize, lens: &[usize], seed: u64) -> Cache {
    let width = lens.iter().max().unwrap().div_ceil(BS);
    let blocks = lens.iter().map(|l| l.div_ceil(BS)).sum::<usize>() + 3;
    let mut table = vec![0u32; lens.len() * width];
    let mut next = blocks as u32;
    for b in 0..width {
        for (r, &l) in lens.iter().enumerate() {
            if b < l.div_ceil(BS) {
                next -= 1;
                table[r * width + b] = next;
            }
        }
    }
    let d = PagedDims {
        tokens: 0,
        heads,
        kv_heads,
        head_dim: hd,
        blocks,
        block_size: BS,
        table_rows: lens.len(),
        table_width: width,
    };
    let n = d.cache_len();
    Cache {
        d,
        table,
        k: values(seed, n, 1.0),
        v: values(seed + 1, n, 1.0),
    }
}

/// Attention for tokens (row, pos) on the device (decode mode or not) and the CPU.
fn compare(
    name: &str,
    be: &impl Backend,
    c: &Cache,
    tokens: &[(u32, u32)],
    decode: bool,
) -> Vec<f32> {
    let d = PagedDims {
        tokens: tokens.len(),
        ..c.d
    };
    let (seq, pos): (Vec<u32>, Vec<u32>) = tokens.iter().copied().unzip();
    // each token's query depends on the token only
    let q: Vec<f32> = tokens
        .iter()
        .flat_map(|&(r, p)| values(((r as u64) << 32) | p as u64, d.heads * d.head_dim, 2.0))
        .collect();
    let scale = (d.head_dim as f32).powf(-0.5);
    let mut want = vec![0.0; q.len()];
    cpu::attention_paged(&mut want, &q, &c.k, &c.v, &c.table, &seq, &pos, d, scale);
    let mut out = be.zeros(q.len()).unwrap();
    let mut work = be.empty_f32(be.paged_decode_work_len(d)).unwrap();
    be.attention_paged(
        &mut out,
        &be.upload(&q).unwrap(),
        &be.upload(&c.k).unwrap(),
        &be.upload(&c.v).unwrap(),
        &be.upload_idx(&c.table).unwrap(),
        &be.upload_idx(&seq).unwrap(),
        &be.upload_idx(&pos).unwrap(),
        d,
        scale,
        decode.then_some(&mut work),
    )
    .unwrap();
    let got = be.download(&out).unwrap();
    assert_close(&format!("{name} {d:?} decode {decode}"), &got, &want, BF16);
    got
}

#[test]
fn paged_decode_matches_the_cpu_for_every_specialisation() {
    for (name, be) in test_devices() {
        for (heads, kv_heads, hd) in [
            (8usize, 1usize, 64usize), // group 8
            (4, 4, 128),               // group 1
            (6, 2, 128),               // group 3 -> 4
            (10, 2, 128),              // group 5 -> 8 (Qwen3-14B)
            (32, 2, 64),               // group 16: two blocks of 8
            (4, 2, 256),               // group 2
            (4, 2, 48),                // head_dim padded to 64
        ] {
            let c = cache(heads, kv_heads, hd, &[1100, 17, 1, 16], hd as u64);
            let last: Vec<(u32, u32)> = [1100u32, 17, 1, 16]
                .iter()
                .enumerate()
                .map(|(r, &l)| (r as u32, l - 1))
                .collect();
            compare(&name, &be, &c, &last, true);
        }
    }
}

#[test]
fn paged_prefill_matches_the_cpu() {
    for (name, be) in test_devices() {
        for (heads, kv_heads, hd) in [(4usize, 2usize, 64usize), (2, 1, 128), (2, 2, 16)] {
            let c = cache(heads, kv_heads, hd, &[150, 33, 5], 7);
            // ragged runs: a continuation across block boundaries, a whole prompt, a tail
            let mut tokens = vec![];
            tokens.extend((80..150).map(|p| (0u32, p)));
            tokens.extend((0..33).map(|p| (1u32, p)));
            tokens.extend((3..5).map(|p| (2u32, p)));
            compare(&name, &be, &c, &tokens, false);
        }
    }
}

#[test]
fn a_decode_value_does_not_depend_on_the_batch() {
    for (name, be) in test_devices() {
        let c = cache(8, 2, 128, &[700, 40, 9], 3);
        let all = compare(&name, &be, &c, &[(0, 699), (1, 39), (2, 8)], true);
        let row = 8 * 128;
        let alone = compare(&name, &be, &c, &[(1, 39)], true);
        assert_eq!(alone, all[row..2 * row], "{name}: row 1 alone");
        let swapped = compare(&name, &be, &c, &[(2, 8), (0, 699)], true);
        assert_eq!(swapped[row..], all[..row], "{name}: row 0 second");
    }
}

#[test]
fn kv_write_paged_puts_each_row_in_place() {
    for (name, be) in test_devices() {
        let c = cache(4, 2, 32, &[20, 3], 1);
        let d = PagedDims { tokens: 3, ..c.d };
        let rows = vec![5u32, 0, (d.blocks * BS - 1) as u32];
        let x = values(4, 3 * 2 * 32, 1.0);
        let mut want = c.k.clone();
        cpu::kv_write_paged(&mut want, &x, &rows, d);
        let mut dev = be.upload(&c.k).unwrap();
        be.kv_write_paged(
            &mut dev,
            &be.upload(&x).unwrap(),
            &be.upload_idx(&rows).unwrap(),
            d,
        )
        .unwrap();
        assert_eq!(be.download(&dev).unwrap(), want, "{name}");
        let bad = be.upload_idx(&[(d.blocks * BS) as u32, 0, 0]).unwrap();
        assert!(be
            .kv_write_paged(&mut dev, &be.upload(&x).unwrap(), &bad, d)
            .is_err());
    }
}
