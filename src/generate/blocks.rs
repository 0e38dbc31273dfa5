//! The free list of a paged KV cache's blocks. Block 0 is never handed out: decode
//! steps point their padding rows at it.

/// Blocks `1..total` of a cache, free or in use.
#[derive(Debug, Clone)]
pub struct BlockPool {
    free: Vec<u32>,
    total: usize,
    peak_used: usize,
}

impl BlockPool {
    pub fn new(total: usize) -> Self {
        BlockPool {
            // popped lowest first
            free: (1..total as u32).rev().collect(),
            total,
            peak_used: 0,
        }
    }

    /// Blocks sequences can use (all but the padding block).
    pub fn usable(&self) -> usize {
        self.total.saturating_sub(1)
    }

    pub fn free(&self) -> usize {
        self.free.len()
    }

    pub fn used(&self) -> usize {
        self.usable() - self.free.len()
    }

    /// The most blocks in use at once.
    pub fn peak_used(&self) -> usize {
        self.peak_used
    }

    pub fn alloc(&mut self) -> Option<u32> {
        let b = self.free.pop()?;
        self.peak_used = self.peak_used.max(self.used());
        Some(b)
    }

    pub fn release(&mut self, blocks: impl IntoIterator<Item = u32>) {
        for b in blocks {
            debug_assert!(b != 0 && (b as usize) < self.total && !self.free.contains(&b));
            self.free.push(b);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::BlockPool;

    #[test]
    fn hands_out_every_block_but_the_padding_one() {
        let mut p = BlockPool::new(4);
        assert_eq!(p.usable(), 3);
        let got: Vec<u32> = (0..3).map(|_| p.alloc().unwrap()).collect();
        assert_eq!(got, vec![1, 2, 3]);
        assert!(p.alloc().is_none());
        assert_eq!((p.used(), p.peak_used()), (3, 3));
        p.release([2]);
        assert_eq!(p.alloc(), Some(2));
        p.release(got);
        assert_eq!((p.free(), p.used(), p.peak_used()), (3, 0, 3));
    }
}
