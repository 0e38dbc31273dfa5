//! The `Backend` trait: the ops the model is made of, and the buffers they work on.
//!
//! The model, the trainer and the RL loop are written once over this trait. `cpu` is
//! the reference implementation and the spec; the CUDA kernels implement the same
//! methods with the same argument order — outputs, saved-for-backward, inputs,
//! weights, dims — so tests can compare the two op by op.
//!
//! Buffers are flat; shapes travel as explicit dims (row-major, last index fastest),
//! written in the doc comment of each op as `[rows, cols]`.

pub mod cpu;
pub mod cuda;

use crate::sampling::SamplingParams;
use crate::Result;

/// Shapes of an attention call over a KV cache.
///
/// Queries are `[tokens, heads, head_dim]`; the cache is `[slots, max_len, kv_heads,
/// head_dim]`. Token `t` belongs to cache slot `slot[t]` at position `pos[t]` and
/// attends causally to positions `0..=pos[t]` of its slot.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AttnDims {
    pub tokens: usize,
    pub heads: usize,
    pub kv_heads: usize,
    pub head_dim: usize,
    pub slots: usize,
    pub max_len: usize,
}

impl AttnDims {
    /// Elements of one K (or V) cache buffer.
    pub fn cache_len(&self) -> usize {
        self.slots * self.max_len * self.kv_heads * self.head_dim
    }
}

pub trait Backend: Send + Sync {
    /// A device buffer of the backend's compute type.
    type Buf: Send + Sync;
    /// A device buffer of `u32` indices (token ids, positions, cache slots).
    type Idx: Send + Sync;

    /// Human-readable device name, e.g. `cpu (f32, 2 threads)`.
    fn name(&self) -> String;
    /// Wait until all queued work is done (timing; a no-op on the CPU).
    fn synchronize(&self) -> Result<()>;

    fn upload(&self, host: &[f32]) -> Result<Self::Buf>;
    /// Upload into a buffer kept in f32 (see `zeros_f32`).
    fn upload_f32(&self, host: &[f32]) -> Result<Self::Buf>;
    fn upload_idx(&self, host: &[u32]) -> Result<Self::Idx>;
    fn download(&self, buf: &Self::Buf) -> Result<Vec<f32>>;
    /// A buffer of `len` elements, all zero.
    fn zeros(&self, len: usize) -> Result<Self::Buf>;
    /// A zeroed buffer kept in f32 even where activations are lower precision
    /// (logits, log-probs, losses).
    fn zeros_f32(&self, len: usize) -> Result<Self::Buf>;
    fn len(&self, buf: &Self::Buf) -> usize;
    /// `len` values `lo + (hi - lo) * hash_uniform(seed, 0, i)` (random weights for
    /// benchmarks and tests; see `crate::sampling::hash_uniform`).
    fn fill_uniform(&self, len: usize, lo: f32, hi: f32, seed: u64) -> Result<Self::Buf>;
    /// A new buffer holding `src[start..start + len]`.
    fn slice(&self, src: &Self::Buf, start: usize, len: usize) -> Result<Self::Buf>;

    /// `out[t, :] = table[ids[t], :]`; out `[tokens, dim]`, table `[vocab, dim]`.
    fn embedding(
        &self,
        out: &mut Self::Buf,
        ids: &Self::Idx,
        table: &Self::Buf,
        tokens: usize,
        dim: usize,
    ) -> Result<()>;

    /// `out[r, :] = x[r, :] * rsqrt(mean(x[r, :]^2) + eps) * weight`; x, out `[rows, dim]`.
    fn rmsnorm(
        &self,
        out: &mut Self::Buf,
        x: &Self::Buf,
        weight: &Self::Buf,
        rows: usize,
        dim: usize,
        eps: f32,
    ) -> Result<()>;

    /// `out = x · wᵀ (+ bias)`; out `[m, n]`, x `[m, k]`, w `[n, k]` (the HF layout).
    #[allow(clippy::too_many_arguments)]
    fn linear(
        &self,
        out: &mut Self::Buf,
        x: &Self::Buf,
        w: &Self::Buf,
        bias: Option<&Self::Buf>,
        m: usize,
        n: usize,
        k: usize,
    ) -> Result<()>;

    /// Rotary embedding in place, half-split form (`rotate_half`, as transformers):
    /// for each head, `(x1, x2) -> (x1 cos - x2 sin, x2 cos + x1 sin)` with
    /// `angle_i = pos[t] * theta^(-2i / head_dim)`. x `[tokens, heads, head_dim]`.
    #[allow(clippy::too_many_arguments)]
    fn rope(
        &self,
        x: &mut Self::Buf,
        pos: &Self::Idx,
        tokens: usize,
        heads: usize,
        head_dim: usize,
        theta: f32,
    ) -> Result<()>;

    /// Write the new tokens' keys or values into the cache:
    /// `cache[slot[t], pos[t], :, :] = x[t, :, :]`; x `[tokens, kv_heads, head_dim]`.
    fn kv_write(
        &self,
        cache: &mut Self::Buf,
        x: &Self::Buf,
        slot: &Self::Idx,
        pos: &Self::Idx,
        dims: AttnDims,
    ) -> Result<()>;

    /// Causal grouped-query attention over the cache (see `AttnDims`), softmax scale
    /// `scale`; query head `h` reads kv head `h / (heads / kv_heads)`. out, q
    /// `[tokens, heads, head_dim]`.
    #[allow(clippy::too_many_arguments)]
    fn attention(
        &self,
        out: &mut Self::Buf,
        q: &Self::Buf,
        k_cache: &Self::Buf,
        v_cache: &Self::Buf,
        slot: &Self::Idx,
        pos: &Self::Idx,
        dims: AttnDims,
        scale: f32,
    ) -> Result<()>;

    /// `out = silu(gate) * up`, elementwise over `n` elements.
    fn swiglu(&self, out: &mut Self::Buf, gate: &Self::Buf, up: &Self::Buf, n: usize)
        -> Result<()>;

    /// `x += y`, elementwise.
    fn add_assign(&self, x: &mut Self::Buf, y: &Self::Buf) -> Result<()>;

    /// The next token of each row of `logits` `[rows, vocab]` (an f32 buffer), by
    /// `crate::sampling`'s algorithm; row r draws from stream `streams[r]`.
    fn sample(
        &self,
        logits: &Self::Buf,
        streams: &[u64],
        vocab: usize,
        params: &SamplingParams,
        seed: u64,
    ) -> Result<Vec<u32>>;

    /// `out[r] = log_softmax(logits[r, :])[target[r]]`; logits `[rows, vocab]`.
    fn logprob_gather(
        &self,
        out: &mut Self::Buf,
        logits: &Self::Buf,
        target: &Self::Idx,
        rows: usize,
        vocab: usize,
    ) -> Result<()>;
}
