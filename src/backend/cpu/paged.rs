//! Attention over a paged KV cache (the reference for the block-table kernels).
//!
//! Each cache is `[blocks, block_size, kv_heads, head_dim]`; a sequence's position
//! j is physical row `table[r, j / block_size] * block_size + j % block_size` of its
//! table row r (see `PagedDims`). The arithmetic is `attention`'s, key by key in
//! position order, so a paged cache gives bit for bit what a contiguous one does.

use super::attention::attend_row;
use super::Real;
use crate::backend::PagedDims;
use rayon::prelude::*;

/// `cache[rows[t]] = x[t]`; x `[tokens, kv_heads, head_dim]`.
pub fn kv_write_paged<T: Real>(cache: &mut [T], x: &[T], rows: &[u32], d: PagedDims) {
    let row = d.kv_heads * d.head_dim;
    assert_eq!(cache.len(), d.cache_len(), "kv_write_paged: cache");
    assert_eq!(x.len(), d.tokens * row, "kv_write_paged: x");
    assert_eq!(rows.len(), d.tokens, "kv_write_paged: rows");
    for (t, &r) in rows.iter().enumerate() {
        let r = r as usize;
        assert!(
            r < d.blocks * d.block_size,
            "kv_write_paged: row {r} outside the cache"
        );
        cache[r * row..(r + 1) * row].copy_from_slice(&x[t * row..(t + 1) * row]);
    }
}

/// The physical row of position `j` of table row `r`.
pub fn physical_row(table: &[u32], d: &PagedDims, r: usize, j: usize) -> usize {
    let block = table[r * d.table_width + j / d.block_size] as usize;
    assert!(
        block < d.blocks,
        "attention_paged: block {block} outside the cache"
    );
    block * d.block_size + j % d.block_size
}

/// Causal grouped-query attention over block tables; out, q `[tokens, heads,
/// head_dim]`, table `[table_rows, table_width]`, seq and pos `[tokens]`.
#[allow(clippy::too_many_arguments)]
pub fn attention_paged<T: Real>(
    out: &mut [T],
    q: &[T],
    k_cache: &[T],
    v_cache: &[T],
    table: &[u32],
    seq: &[u32],
    pos: &[u32],
    d: PagedDims,
    scale: f32,
) {
    let hd = d.head_dim;
    assert_eq!(q.len(), d.tokens * d.heads * hd, "attention_paged: q");
    assert_eq!(out.len(), d.tokens * d.heads * hd, "attention_paged: out");
    assert_eq!(k_cache.len(), d.cache_len(), "attention_paged: k_cache");
    assert_eq!(v_cache.len(), d.cache_len(), "attention_paged: v_cache");
    assert_eq!(
        table.len(),
        d.table_rows * d.table_width,
        "attention_paged: table"
    );
    assert_eq!(d.heads % d.kv_heads, 0, "attention_paged: heads % kv_heads");
    let group = d.heads / d.kv_heads;
    let scale = T::from_f32(scale);
    out.par_chunks_mut(hd).enumerate().for_each(|(row, o)| {
        let (t, h) = (row / d.heads, row % d.heads);
        let (r, p) = (seq[t] as usize, pos[t] as usize);
        assert!(
            r < d.table_rows && p < d.max_context(),
            "attention_paged: table row {r} position {p} outside the table"
        );
        let kvh = h / group;
        let key = |j: usize| (physical_row(table, &d, r, j) * d.kv_heads + kvh) * hd;
        attend_row(
            o,
            &q[row * hd..(row + 1) * hd],
            k_cache,
            v_cache,
            p,
            key,
            scale,
        );
    });
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::cpu::{attention, kv_write};
    use crate::backend::AttnDims;

    /// A paged cache with scattered blocks equals the contiguous one bit for bit.
    #[test]
    fn paged_equals_contiguous() {
        let (heads, kv_heads, hd, bs) = (4, 2, 8, 4);
        let lens = [7usize, 1, 12];
        let max_len = 12;
        let row = kv_heads * hd;
        let val = |i: usize| ((i * 37 % 101) as f32 - 50.0) / 40.0;
        // contiguous: slot s positions 0..len
        let cd = |tokens| AttnDims {
            tokens,
            heads,
            kv_heads,
            head_dim: hd,
            slots: lens.len(),
            max_len,
        };
        let (mut slot, mut pos) = (vec![], vec![]);
        for (s, &n) in lens.iter().enumerate() {
            for p in 0..n {
                slot.push(s as u32);
                pos.push(p as u32);
            }
        }
        let t = slot.len();
        let k: Vec<f32> = (0..t * row).map(val).collect();
        let v: Vec<f32> = (0..t * row).map(|i| val(i + 7)).collect();
        let q: Vec<f32> = (0..t * heads * hd).map(|i| val(i + 3)).collect();
        let mut kc = vec![0.0; cd(t).cache_len()];
        let mut vc = kc.clone();
        kv_write(&mut kc, &k, &slot, &pos, cd(t));
        kv_write(&mut vc, &v, &slot, &pos, cd(t));
        let mut want = vec![0.0; q.len()];
        attention(&mut want, &q, &kc, &vc, &slot, &pos, cd(t), 0.3);

        // paged: blocks handed out in reverse, table width 3
        let width = 3;
        let blocks = 10;
        let mut table = vec![0u32; lens.len() * width];
        let mut next = blocks;
        for (s, &n) in lens.iter().enumerate() {
            for b in 0..n.div_ceil(bs) {
                next -= 1;
                table[s * width + b] = next as u32;
            }
        }
        let pd = PagedDims {
            tokens: t,
            heads,
            kv_heads,
            head_dim: hd,
            blocks,
            block_size: bs,
            table_rows: lens.len(),
            table_width: width,
        };
        let rows: Vec<u32> = slot
            .iter()
            .zip(&pos)
            .map(|(&s, &p)| physical_row(&table, &pd, s as usize, p as usize) as u32)
            .collect();
        let mut kp = vec![0.0; pd.cache_len()];
        let mut vp = kp.clone();
        kv_write_paged(&mut kp, &k, &rows, pd);
        kv_write_paged(&mut vp, &v, &rows, pd);
        let mut got = vec![0.0; q.len()];
        attention_paged(&mut got, &q, &kp, &vp, &table, &slot, &pos, pd, 0.3);
        assert_eq!(got, want);
    }
}
