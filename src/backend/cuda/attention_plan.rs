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
}
