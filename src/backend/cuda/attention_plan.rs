//! Host-side planning of attention launches from a batch's slots and positions.
//!
//! The prefill kernel takes "tiles": runs of at most 64 consecutive tokens of one
//! slot at consecutive positions. A batch whose every run is a single token (pure
//! decode) goes to the split-K decode kernel instead, with the keys cut into chunks
//! so that a few long sequences still fill the GPU.

/// Query rows per prefill tile (4 warps x 16 rows).
pub const TILE_ROWS: usize = 64;

/// `[token_start, rows, slot, pos0]` per tile, flattened.
pub fn prefill_tiles(slot: &[u32], pos: &[u32]) -> Vec<i32> {
    let mut tiles = Vec::new();
    let mut t = 0;
    while t < slot.len() {
        let mut rows = 1;
        while t + rows < slot.len()
            && rows < TILE_ROWS
            && slot[t + rows] == slot[t]
            && pos[t + rows] == pos[t] + rows as u32
        {
            rows += 1;
        }
        tiles.extend([t as i32, rows as i32, slot[t] as i32, pos[t] as i32]);
        t += rows;
    }
    tiles
}

/// True when no two tokens of the batch could share a prefill tile.
pub fn is_pure_decode(tiles: &[i32]) -> bool {
    tiles.chunks(4).all(|t| t[1] == 1)
}

/// Keys per split and number of splits for decoding `tokens` rows whose longest
/// context is `max_keys`, aiming at `target_blocks` blocks in all (about twice the
/// SM count); chunks hold at least 128 keys so each split has real work.
pub fn decode_splits(
    tokens: usize,
    head_blocks: usize,
    max_keys: usize,
    target_blocks: usize,
) -> (usize, usize) {
    let base = (tokens * head_blocks).max(1);
    let want = target_blocks.div_ceil(base).max(1);
    let chunk = max_keys.div_ceil(want).max(128).next_multiple_of(32);
    (chunk, max_keys.div_ceil(chunk).max(1))
}

/// The padded head dimension instantiated for `head_dim` (a multiple of 16, <= 256).
pub fn padded_head_dim(head_dim: usize) -> Option<usize> {
    if head_dim == 0 || head_dim % 16 != 0 {
        return None;
    }
    [32, 64, 128, 256].into_iter().find(|&d| head_dim <= d)
}

/// Keys per dK/dV block of the attention backward (4 warps x 16 keys).
pub const BWD_KEY_TILE: usize = 64;

/// One sequence of a training batch: `tokens` consecutive batch tokens from `token0`,
/// all of cache slot `slot`, at positions `pos0..pos0 + tokens`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SlotRun {
    pub slot: u32,
    pub token0: usize,
    pub tokens: usize,
    pub pos0: u32,
}

/// The batch as runs of one slot at consecutive positions, refusing a slot that appears
/// in more than one run (its keys would be owned by two backward blocks).
pub fn slot_runs(slot: &[u32], pos: &[u32]) -> std::result::Result<Vec<SlotRun>, String> {
    let mut runs: Vec<SlotRun> = Vec::new();
    let mut t = 0;
    while t < slot.len() {
        let mut n = 1;
        while t + n < slot.len()
            && slot[t + n] == slot[t]
            && pos[t + n] as u64 == pos[t] as u64 + n as u64
        {
            n += 1;
        }
        if let Some(prev) = runs.iter().find(|r| r.slot == slot[t]) {
            return Err(format!(
                "attention backward: the tokens of slot {} are not one run at consecutive positions \
                 (tokens {}..{} at positions {}.., then token {t} at position {})",
                slot[t],
                prev.token0,
                prev.token0 + prev.tokens,
                prev.pos0,
                pos[t]
            ));
        }
        runs.push(SlotRun {
            slot: slot[t],
            token0: t,
            tokens: n,
            pos0: pos[t],
        });
        t += n;
    }
    Ok(runs)
}

/// Query rows of a run that see key `key` (positions >= key).
fn rows_seeing(r: &SlotRun, key: usize) -> usize {
    let first = key.saturating_sub(r.pos0 as usize);
    r.tokens.saturating_sub(first)
}

/// `[slot, key0, keys, token0, tokens, pos0]` per dK/dV block, flattened: every key
/// `0..pos0 + tokens` of each run's slot in tiles of `BWD_KEY_TILE`, the tiles with the
/// most query rows to visit first (the longest blocks start early on a GPU).
pub fn backward_key_tiles(runs: &[SlotRun]) -> Vec<i32> {
    let mut tiles: Vec<(usize, [i32; 6])> = Vec::new();
    for r in runs {
        let kv_len = r.pos0 as usize + r.tokens;
        for key0 in (0..kv_len).step_by(BWD_KEY_TILE) {
            let keys = BWD_KEY_TILE.min(kv_len - key0);
            let t = [
                r.slot as usize,
                key0,
                keys,
                r.token0,
                r.tokens,
                r.pos0 as usize,
            ];
            tiles.push((rows_seeing(r, key0), t.map(|v| v as i32)));
        }
    }
    tiles.sort_by_key(|&(work, _)| std::cmp::Reverse(work));
    tiles.into_iter().flat_map(|(_, t)| t).collect()
}

/// The dQ tiles (`prefill_tiles` of the runs), the most work (16-row warps times keys)
/// first.
pub fn backward_query_tiles(runs: &[SlotRun]) -> Vec<i32> {
    let mut tiles: Vec<[i32; 4]> = Vec::new();
    for r in runs {
        for start in (0..r.tokens).step_by(TILE_ROWS) {
            let rows = TILE_ROWS.min(r.tokens - start);
            let pos0 = r.pos0 as usize + start;
            tiles.push([r.token0 + start, rows, r.slot as usize, pos0].map(|v| v as i32));
        }
    }
    tiles.sort_by_key(|t| std::cmp::Reverse((t[1] + 15) / 16 * (t[1] + t[3])));
    tiles.into_iter().flatten().collect()
}

/// Dynamic shared memory of the backward kernels for padded head dim `dt`: the dK/dV
/// and the dQ kernel (mirrors `AttnBwdTile` in kernels/attention_backward.cu).
pub fn backward_smem(dt: usize) -> (u32, u32) {
    let ld = dt + 8;
    let br = if dt <= 64 { 64 } else { 32 };
    let qc = br;
    let dkdv = (2 * BWD_KEY_TILE + 2 * br) * ld * 2 + 2 * br * 4;
    let dq = (2 * qc + 2 * TILE_ROWS) * ld * 2;
    (dkdv as u32, dq as u32)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tiles_follow_sequences_and_cap_at_64_rows() {
        // slot 0: positions 0..70 (two tiles), slot 1: 5..7, slot 0 again (decode) at 70
        let mut slot = vec![0u32; 70];
        let mut pos: Vec<u32> = (0..70).collect();
        slot.extend([1, 1]);
        pos.extend([5, 6]);
        slot.push(0);
        pos.push(70);
        let tiles = prefill_tiles(&slot, &pos);
        assert_eq!(
            tiles,
            vec![0, 64, 0, 0, 64, 6, 0, 64, 70, 2, 1, 5, 72, 1, 0, 70]
        );
        assert!(!is_pure_decode(&tiles));
        assert!(is_pure_decode(&prefill_tiles(&[0, 1, 2], &[9, 3, 3])));
    }

    #[test]
    fn splits_cover_every_key() {
        for (tokens, max_keys) in [(1, 1), (1, 100_000), (64, 4096), (3, 129)] {
            let (chunk, splits) = decode_splits(tokens, 8, max_keys, 264);
            assert!(
                chunk * splits >= max_keys && chunk * (splits - 1) < max_keys,
                "{tokens} {max_keys}"
            );
            assert!(chunk >= 128 && chunk % 32 == 0);
        }
        assert!(
            decode_splits(1, 8, 100_000, 264).1 > 1,
            "long contexts split"
        );
    }

    #[test]
    fn head_dims() {
        assert_eq!(padded_head_dim(16), Some(32));
        assert_eq!(padded_head_dim(48), Some(64));
        assert_eq!(padded_head_dim(128), Some(128));
        assert_eq!(padded_head_dim(144), Some(256));
        assert_eq!(padded_head_dim(24), None);
        assert_eq!(padded_head_dim(272), None);
    }

    #[test]
    fn backward_runs_tiles_and_refusals() {
        // slot 2: 70 tokens at 5..75 (cached prefix 0..5), slot 0: 3 tokens at 0..3
        let mut slot = vec![2u32; 70];
        let mut pos: Vec<u32> = (5..75).collect();
        slot.extend([0, 0, 0]);
        pos.extend([0, 1, 2]);
        let runs = slot_runs(&slot, &pos).unwrap();
        assert_eq!(runs.len(), 2);
        assert_eq!(
            runs[0],
            SlotRun {
                slot: 2,
                token0: 0,
                tokens: 70,
                pos0: 5
            }
        );
        // keys 0..75 of slot 2 in two tiles, keys 0..3 of slot 0
        let kt = backward_key_tiles(&runs);
        assert_eq!(
            kt,
            vec![2, 0, 64, 0, 70, 5, 2, 64, 11, 0, 70, 5, 0, 0, 3, 70, 3, 0]
        );
        let qt = backward_query_tiles(&runs);
        assert_eq!(qt, vec![0, 64, 2, 5, 64, 6, 2, 69, 70, 3, 0, 0]);
        // single tokens per slot are runs too
        assert_eq!(slot_runs(&[0, 1], &[7, 0]).unwrap().len(), 2);
        // a slot split in two runs, or a gap in the positions, is refused
        assert!(slot_runs(&[0, 1, 0], &[0, 0, 1]).is_err());
        let e = slot_runs(&[0, 0, 0], &[0, 1, 3]).unwrap_err();
        assert!(e.contains("slot 0") && !e.contains('\n'), "{e}");
        assert_eq!(backward_smem(64), (37376, 36864));
        assert_eq!(backward_smem(256), (101632, 101376));
    }
}
