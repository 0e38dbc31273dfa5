//! The `Backend` trait: the ops the model is made of, and the buffers they work on.
//!
//! The model, the trainer and the RL loop are written once over this trait. `cpu` is
//! the reference implementation and the spec; the CUDA kernels implement the same
//! methods with the same argument order — outputs, saved-for-backward, inputs,
//! weights, dims — so tests can compare the two op by op.
//!
//! Buffers are flat; shapes travel as explicit dims (row-major, last index fastest),
//! written in the doc comment of each op as `[rows, cols]`.

pub mod accounting;
pub mod cpu;
pub mod cuda;

use crate::sampling::SamplingParams;
use crate::train::AdamW;
use crate::Result;

pub use cpu::loss::{KlType, LossConfig};

/// The per-row inputs of `Backend::token_loss_backward`, all `[rows]`: the target
/// token, the old and (optional) reference log-probs, the advantage, and the
/// aggregation weight (`crate::backend::cpu::loss::aggregate`), f32 buffers.
pub struct LossRows<'a, B: Backend + ?Sized> {
    pub target: &'a B::Idx,
    pub old_logp: &'a B::Buf,
    pub ref_logp: Option<&'a B::Buf>,
    pub adv: &'a B::Buf,
    pub weight: &'a B::Buf,
}

/// Columns of the `stats [rows, STATS]` output of `Backend::token_loss_backward`.
pub mod stat {
    /// log pi(target)
    pub const LOGP: usize = 0;
    /// The per-token policy loss plus `beta * kl` (before the aggregation weight).
    pub const LOSS: usize = 1;
    /// The entropy of the row's distribution.
    pub const ENTROPY: usize = 2;
    /// 1 when a clip (ratio or dual) cut the policy gradient, else 0.
    pub const CLIPPED: usize = 3;
    pub const STATS: usize = 4;
}

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

/// Shapes of attention over a paged KV cache (`Backend::attention_paged`).
///
/// Each cache buffer is `[blocks, block_size, kv_heads, head_dim]`. The block table
/// is `[table_rows, table_width]` (u32): row r lists the physical blocks of one
/// sequence, so its position j lives at physical row
/// `table[r, j / block_size] * block_size + j % block_size`. Queries are `[tokens,
/// heads, head_dim]`; token t reads table row `seq[t]` and attends causally to
/// positions `0..=pos[t]`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PagedDims {
    pub tokens: usize,
    pub heads: usize,
    pub kv_heads: usize,
    pub head_dim: usize,
    pub blocks: usize,
    pub block_size: usize,
    pub table_rows: usize,
    pub table_width: usize,
}

impl PagedDims {
    /// Elements of one K (or V) cache buffer.
    pub fn cache_len(&self) -> usize {
        self.blocks * self.block_size * self.kv_heads * self.head_dim
    }

    /// The longest context a table row can describe.
    pub fn max_context(&self) -> usize {
        self.table_width * self.block_size
    }
}

/// Device memory a backend has allocated (`Backend::memory_use`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct MemoryUse {
    /// Bytes of buffers live now.
    pub live_bytes: usize,
    /// The most bytes live at once so far.
    pub peak_bytes: usize,
}

impl AttnDims {
    /// Elements of one K (or V) cache buffer.
    pub fn cache_len(&self) -> usize {
        self.slots * self.max_len * self.kv_heads * self.head_dim
    }
}

/// The checks of `Backend::copy_within`: both ranges inside a buffer of `buf_len`
/// elements, and apart.
pub(crate) fn check_copy_within(buf_len: usize, src: usize, dst: usize, len: usize) -> Result<()> {
    let fits = |start: usize| start.checked_add(len).is_some_and(|end| end <= buf_len);
    if !fits(src) || !fits(dst) {
        return Err(crate::Error::invalid(format!(
            "copy_within: {len} elements from {src} to {dst} do not fit a buffer of {buf_len}"
        )));
    }
    if len > 0 && src.abs_diff(dst) < len {
        return Err(crate::Error::invalid(format!(
            "copy_within: ranges of {len} elements at {src} and {dst} overlap"
        )));
    }
    Ok(())
}

pub trait Backend: Send + Sync {
    /// A device buffer of the backend's compute type.
    type Buf: Send + Sync;
    /// A device buffer of `u32` indices (token ids, positions, cache slots).
    type Idx: Send + Sync;
    /// A captured graph of launches (`capture_begin`).
    type Graph: Send + Sync;

    /// Human-readable device name, e.g. `cpu (f32, 2 threads)`.
    fn name(&self) -> String;
    /// Wait until all queued work is done (timing; a no-op on the CPU).
    fn synchronize(&self) -> Result<()>;

    fn upload(&self, host: &[f32]) -> Result<Self::Buf>;
    /// Upload into a buffer kept in f32 (see `zeros_f32`).
    fn upload_f32(&self, host: &[f32]) -> Result<Self::Buf>;
    fn upload_idx(&self, host: &[u32]) -> Result<Self::Idx>;
    fn download(&self, buf: &Self::Buf) -> Result<Vec<f32>>;
    /// `download` without rounding to f32 where the buffer holds more (the f64 CPU
    /// backend of the finite-difference tests).
    fn download_f64(&self, buf: &Self::Buf) -> Result<Vec<f64>> {
        Ok(self.download(buf)?.into_iter().map(f64::from).collect())
    }
    /// A buffer of `len` elements, all zero.
    fn zeros(&self, len: usize) -> Result<Self::Buf>;
    /// A zeroed buffer kept in f32 even where activations are lower precision
    /// (logits, log-probs, losses).
    fn zeros_f32(&self, len: usize) -> Result<Self::Buf>;
    /// A buffer of `len` elements whose contents are undefined, for an op that
    /// writes all of it (`=` outputs): no memset on a GPU; the emulator fills it
    /// with NaN so an element left unwritten shows.
    fn empty(&self, len: usize) -> Result<Self::Buf> {
        self.zeros(len)
    }
    /// `empty`, kept in f32 (see `zeros_f32`).
    fn empty_f32(&self, len: usize) -> Result<Self::Buf> {
        self.zeros_f32(len)
    }
    /// Set every element of `buf` to zero, in place (gradient accumulators).
    fn fill_zero(&self, buf: &mut Self::Buf) -> Result<()>;
    fn len(&self, buf: &Self::Buf) -> usize;
    /// `len` values `lo + (hi - lo) * hash_uniform(seed, 0, i)` (random weights for
    /// benchmarks and tests; see `crate::sampling::hash_uniform`).
    fn fill_uniform(&self, len: usize, lo: f32, hi: f32, seed: u64) -> Result<Self::Buf>;
    /// A new buffer holding `src[start..start + len]`.
    fn slice(&self, src: &Self::Buf, start: usize, len: usize) -> Result<Self::Buf>;
    /// `buf[dst..dst + len] = buf[src..src + len]`, on the device (a device-to-device
    /// memcpy on CUDA); the two ranges must not overlap. Generation copies a shared
    /// prompt's K/V from one cache slot to another with it.
    fn copy_within(&self, buf: &mut Self::Buf, src: usize, dst: usize, len: usize) -> Result<()>;
    /// Device memory this backend's buffers take, where it keeps count (the CUDA
    /// backend: every allocation it made, live and peak); `None` on the CPU.
    fn memory_use(&self) -> Option<MemoryUse> {
        None
    }
    /// Reserved, requested and per-purpose bytes (`accounting`), where counted.
    fn memory_report(&self) -> Option<accounting::MemoryReport> {
        None
    }
    /// What the device did so far (launches, allocations, copies, syncs), where
    /// counted (the CUDA backend, on every device).
    fn counts(&self) -> Option<accounting::DeviceCounts> {
        None
    }
    /// The device's (free, total) memory in bytes, where known; free includes what
    /// the backend's allocator holds cached.
    fn memory_info(&self) -> Option<(usize, usize)> {
        None
    }
    /// Give memory the allocator caches back to the device: all of it, or the
    /// blocks first allocated for `only` (generation releases its KV cache).
    fn release_cached(&self, _only: Option<accounting::Purpose>) {}

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

    /// Write the new tokens' keys or values into a paged cache (see `PagedDims`):
    /// `cache[rows[t], :, :] = x[t, :, :]`, `rows[t]` the physical row
    /// (`block * block_size + offset`); x `[tokens, kv_heads, head_dim]`.
    fn kv_write_paged(
        &self,
        cache: &mut Self::Buf,
        x: &Self::Buf,
        rows: &Self::Idx,
        dims: PagedDims,
    ) -> Result<()>;

    /// `attention` over a paged cache: token t reads block-table row `seq[t]` and
    /// attends to its positions `0..=pos[t]` (see `PagedDims`). With `decode` (the
    /// f32 workspace of `paged_decode_work_len`), every token is taken to be its
    /// sequence's only new token and the launch reads nothing from the host (a
    /// decode step: no allocation, capturable); without, the host plans prefill tiles
    /// from the index buffers' host copies. Both give each token the same value
    /// whatever else is in the batch.
    #[allow(clippy::too_many_arguments)]
    fn attention_paged(
        &self,
        out: &mut Self::Buf,
        q: &Self::Buf,
        k_cache: &Self::Buf,
        v_cache: &Self::Buf,
        table: &Self::Idx,
        seq: &Self::Idx,
        pos: &Self::Idx,
        dims: PagedDims,
        scale: f32,
        decode: Option<&mut Self::Buf>,
    ) -> Result<()>;

    /// Elements of the f32 workspace `attention_paged` needs in decode mode (0 where
    /// it needs none; at least 1 so the buffer exists).
    fn paged_decode_work_len(&self, _dims: PagedDims) -> usize {
        1
    }

    /// Record the ops issued from now until `capture_end` instead of running them
    /// (a CUDA graph: on a GPU the stream's capture, on the emulator and the counting
    /// device the launches with their arguments). `false`: the backend cannot
    /// capture (the CPU) and runs the ops eagerly, as it will for `replay`. Between
    /// the two calls nothing may allocate, free, copy to or from the host or
    /// synchronise (an error: the graph would keep stale pointers or host values).
    fn capture_begin(&self) -> Result<bool>;

    /// End the capture; `None` where `capture_begin` returned `false`.
    fn capture_end(&self) -> Result<Option<Self::Graph>>;

    /// Run a captured graph again: every op with the arguments it was captured with
    /// (the buffers' current contents).
    fn replay(&self, graph: &Self::Graph) -> Result<()>;

    /// Use the first `len` elements of `buf`'s allocation as the buffer (at most
    /// what it was made with): one set of buffers serves a decode step at every
    /// batch-size bucket, no allocation.
    fn set_len(&self, buf: &mut Self::Buf, len: usize) -> Result<()>;

    /// `set_len` for indices (new elements read as 0 on the host copy).
    fn set_idx_len(&self, idx: &mut Self::Idx, len: usize) -> Result<()>;

    /// Overwrite the device indices `dst` with `host` (same length): the per-step
    /// inputs of a decode step go into fixed buffers, no allocation.
    fn upload_idx_into(&self, dst: &mut Self::Idx, host: &[u32]) -> Result<()>;

    /// Download `n` leading indices (the decode step's sampled ids: its one host
    /// synchronisation).
    fn download_idx(&self, src: &Self::Idx, n: usize) -> Result<Vec<u32>>;

    /// `sample` into a device buffer: `out[r]` (u32 `[rows]`) is row r's token, drawn
    /// from stream `streams[2r] | streams[2r + 1] << 32` (u32 `[2 * rows]`).
    #[allow(clippy::too_many_arguments)]
    fn sample_into(
        &self,
        out: &mut Self::Idx,
        logits: &Self::Buf,
        streams: &Self::Idx,
        rows: usize,
        vocab: usize,
        params: &SamplingParams,
        seed: u64,
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

    // ---- Training ops (backward, loss, optimizer) ------------------------------
    //
    // Activation gradients live in the compute type (`zeros`); weight gradients and
    // optimizer state are f32 buffers (`zeros_f32`), accumulated with `+=`.

    /// `attention` that also writes `lse [tokens, heads]` (an f32 buffer): the
    /// natural-log log-sum-exp of each row's scaled scores, for the backward pass.
    #[allow(clippy::too_many_arguments)]
    fn attention_saved(
        &self,
        out: &mut Self::Buf,
        lse: &mut Self::Buf,
        q: &Self::Buf,
        k_cache: &Self::Buf,
        v_cache: &Self::Buf,
        slot: &Self::Idx,
        pos: &Self::Idx,
        dims: AttnDims,
        scale: f32,
    ) -> Result<()>;

    /// Backward of `attention_saved` (FlashAttention-2: `D = rowsum(dO * O)`,
    /// `dS = P (dP - D)`): `dq` (=) `[tokens, heads, head_dim]`; `dk_cache`, `dv_cache`
    /// (+=, summed over the query heads sharing a kv head and over tokens) in the
    /// cache layout. Only cache positions some token attends to are touched.
    #[allow(clippy::too_many_arguments)]
    fn attention_backward(
        &self,
        dq: &mut Self::Buf,
        dk_cache: &mut Self::Buf,
        dv_cache: &mut Self::Buf,
        dout: &Self::Buf,
        out: &Self::Buf,
        lse: &Self::Buf,
        q: &Self::Buf,
        k_cache: &Self::Buf,
        v_cache: &Self::Buf,
        slot: &Self::Idx,
        pos: &Self::Idx,
        dims: AttnDims,
        scale: f32,
    ) -> Result<()>;

    /// Backward of `kv_write`: `x[t, :, :] = cache[slot[t], pos[t], :, :]` (=).
    fn kv_gather(
        &self,
        x: &mut Self::Buf,
        cache: &Self::Buf,
        slot: &Self::Idx,
        pos: &Self::Idx,
        dims: AttnDims,
    ) -> Result<()>;

    /// Backward of `rmsnorm` (rstd recomputed from x): `dx` (=) `[rows, dim]`;
    /// `dw_accum` (+=, f32) `[dim]` when given (a trained norm weight).
    #[allow(clippy::too_many_arguments)]
    fn rmsnorm_backward(
        &self,
        dx: &mut Self::Buf,
        dw_accum: Option<&mut Self::Buf>,
        dy: &Self::Buf,
        x: &Self::Buf,
        weight: &Self::Buf,
        rows: usize,
        dim: usize,
        eps: f32,
    ) -> Result<()>;

    /// Backward of `rope`, in place (dy in, dx out): the rotation by `-angle`.
    fn rope_backward(
        &self,
        dx: &mut Self::Buf,
        pos: &Self::Idx,
        tokens: usize,
        heads: usize,
        head_dim: usize,
        theta: f32,
    ) -> Result<()>;

    /// Backward of `swiglu`: `dgate = dout * up * silu'(gate)`, `dup = dout * silu(gate)`.
    fn swiglu_backward(
        &self,
        dgate: &mut Self::Buf,
        dup: &mut Self::Buf,
        dout: &Self::Buf,
        gate: &Self::Buf,
        up: &Self::Buf,
        n: usize,
    ) -> Result<()>;

    /// `dx[m, k] (= or +=) dout[m, n] · w[n, k]`: the input gradient of `linear`.
    #[allow(clippy::too_many_arguments)]
    fn linear_backward_input(
        &self,
        dx: &mut Self::Buf,
        dout: &Self::Buf,
        w: &Self::Buf,
        m: usize,
        n: usize,
        k: usize,
        accumulate: bool,
    ) -> Result<()>;

    /// `dw_accum[n, k] += dout[m, n]ᵀ · x[m, k]` and `db_accum[n] += sum_r dout[r, :]`
    /// (f32 accumulators): the weight and bias gradients of `linear`.
    #[allow(clippy::too_many_arguments)]
    fn linear_backward_weight(
        &self,
        dw_accum: &mut Self::Buf,
        db_accum: Option<&mut Self::Buf>,
        dout: &Self::Buf,
        x: &Self::Buf,
        m: usize,
        n: usize,
        k: usize,
    ) -> Result<()>;

    /// `dst[rows_idx[r], :] = src[r, :]` for `r < rows` (the backward of the row
    /// gather `embedding`; rows_idx must not repeat).
    fn scatter_rows(
        &self,
        dst: &mut Self::Buf,
        src: &Self::Buf,
        rows_idx: &Self::Idx,
        rows: usize,
        dim: usize,
    ) -> Result<()>;

    /// `dtable[ids[t], :] += dx[t, :]` for every token `t < tokens` (f32 accumulator
    /// `[rows, dim]`; ids may repeat): the gradient of `embedding` for a trained
    /// table. Each row's tokens are added in increasing token order (deterministic).
    fn embedding_grad(
        &self,
        dtable: &mut Self::Buf,
        dx: &Self::Buf,
        ids: &Self::Idx,
        tokens: usize,
        dim: usize,
    ) -> Result<()>;

    /// The fused loss of one chunk of LM-head rows (DESIGN section 4): for each row,
    /// log-softmax of `logits [rows, vocab]` (f32), the target's log-prob, the
    /// PPO/GRPO token loss `l` (`cpu::loss::ppo_token_loss`), the entropy `H`; writes
    /// `dlogits [rows, vocab]` (=) `= weight[r] * d(l - cfg.entropy_coef * H)/dlogits`
    /// and `stats [rows, stat::STATS]` (f32; see `stat`).
    #[allow(clippy::too_many_arguments)]
    fn token_loss_backward(
        &self,
        dlogits: &mut Self::Buf,
        stats: &mut Self::Buf,
        logits: &Self::Buf,
        rows: &LossRows<'_, Self>,
        n_rows: usize,
        vocab: usize,
        cfg: &LossConfig,
    ) -> Result<()>;

    /// One `torch.optim.AdamW` step on f32 `param`, `m`, `v` with `grad * grad_scale`
    /// (`crate::train::AdamW::step`); `copy`, when given, receives the new parameter
    /// in the compute type (the forward pass's weight).
    #[allow(clippy::too_many_arguments)]
    fn adamw_step(
        &self,
        param: &mut Self::Buf,
        m: &mut Self::Buf,
        v: &mut Self::Buf,
        copy: Option<&mut Self::Buf>,
        grad: &Self::Buf,
        opt: &AdamW,
        step: u64,
        grad_scale: f32,
    ) -> Result<()>;

    /// One SGD step, `param -= lr * (grad * grad_scale + weight_decay * param)` (torch
    /// `SGD` without momentum), on f32 `param`; `copy` as in `adamw_step`.
    #[allow(clippy::too_many_arguments)]
    fn sgd_step(
        &self,
        param: &mut Self::Buf,
        copy: Option<&mut Self::Buf>,
        grad: &Self::Buf,
        lr: f32,
        weight_decay: f32,
        grad_scale: f32,
    ) -> Result<()>;

    /// `sum(buf^2)`, accumulated in f64 (the global gradient norm).
    fn sum_squares(&self, buf: &Self::Buf) -> Result<f64>;

    /// `dst = src` converted to `dst`'s element type (same length).
    fn copy_convert(&self, dst: &mut Self::Buf, src: &Self::Buf) -> Result<()>;
}
