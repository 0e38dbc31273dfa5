//! `CudaBackend`: the `Backend` ops as launches of the kernels in `kernels/` and
//! cuBLAS GEMMs, over a `Device` (the GPU, or the host emulator in tests).
//!
//! Activations and frozen weights are bf16; logits, log-probs and the attention
//! log-sum-exp are f32. Every kernel has exactly one launcher here or in
//! `launch.rs`, which is the only place that passes its arguments.

use super::attention_plan::{decode_splits, is_pure_decode, padded_head_dim, prefill_tiles};
use super::buffers::{decode, encode, CudaBuf, CudaIdx, DType};
use super::device::{Device, DevicePtr, GemmArgs, KernelArg};
use super::launch::{grid_1d, int, launch, ptr, Launch};
use super::pool::PoolDevice;
use crate::backend::accounting::{DeviceCounts, MemoryReport, Purpose};
use crate::backend::cpu::inv_freq;
use crate::backend::{AttnDims, Backend, LossConfig, LossRows, PagedDims};
use crate::sampling::SamplingParams;
use crate::train::AdamW;
use crate::{Error, Result};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};

/// Blocks the decode attention aims to launch (about two waves on an H100's 132 SMs).
const DECODE_TARGET_BLOCKS: usize = 264;

pub struct CudaBackend {
    /// The caching allocator and counter over the device (`pool.rs`); every launch,
    /// copy and allocation goes through it.
    pool: Arc<PoolDevice>,
    dev: Arc<dyn Device>,
    /// RoPE inverse frequencies per (head_dim, theta bits), computed on the host like
    /// the CPU reference and uploaded once.
    inv_freq: Mutex<HashMap<(usize, u32), Arc<CudaBuf>>>,
}

impl CudaBackend {
    pub fn new(dev: Arc<dyn Device>) -> Self {
        let pool = Arc::new(PoolDevice::new(dev));
        CudaBackend {
            dev: pool.clone(),
            pool,
            inv_freq: Mutex::new(HashMap::new()),
        }
    }

    /// The device as the backend uses it (through the caching allocator).
    pub fn device(&self) -> &Arc<dyn Device> {
        &self.dev
    }

    /// The caching allocator and its counts.
    pub fn pool(&self) -> &Arc<PoolDevice> {
        &self.pool
    }

    /// A zeroed buffer.
    pub(super) fn alloc(&self, len: usize, dtype: DType) -> Result<CudaBuf> {
        let buf = CudaBuf::alloc(&self.dev, len, dtype)?;
        self.dev.zero(buf.ptr(), buf.bytes())?;
        Ok(buf)
    }

    /// Upload host bytes of `dtype` into a new buffer.
    pub fn upload_as(&self, values: &[f32], dtype: DType) -> Result<CudaBuf> {
        let buf = CudaBuf::alloc(&self.dev, values.len(), dtype)?;
        self.dev.upload(buf.ptr(), &encode(values, dtype))?;
        Ok(buf)
    }

    pub(super) fn inv_freq(&self, head_dim: usize, theta: f32) -> Result<Arc<CudaBuf>> {
        let mut cache = self.inv_freq.lock().expect("inv_freq lock");
        if let Some(b) = cache.get(&(head_dim, theta.to_bits())) {
            return Ok(b.clone());
        }
        let buf = Arc::new(self.upload_as(&inv_freq(head_dim, theta), DType::F32)?);
        cache.insert((head_dim, theta.to_bits()), buf.clone());
        Ok(buf)
    }
}

/// A graph captured on this backend's device (the caching allocator records one
/// where the device has no native capture); freed on drop.
pub struct CudaGraph {
    id: u64,
    dev: Arc<dyn Device>,
}

impl Drop for CudaGraph {
    fn drop(&mut self) {
        self.dev.graph_free(self.id);
    }
}

fn check_idx_len(idx: &CudaIdx, len: usize, what: &str) -> Result<()> {
    if idx.host.len() != len {
        return Err(Error::invalid(format!(
            "{what}: {} indices, expected {len}",
            idx.host.len()
        )));
    }
    Ok(())
}

pub(super) fn check_len(buf: &CudaBuf, len: usize, what: &str) -> Result<()> {
    if buf.len() != len {
        return Err(Error::invalid(format!(
            "{what}: buffer has {} elements, expected {len}",
            buf.len()
        )));
    }
    Ok(())
}

impl Backend for CudaBackend {
    type Buf = CudaBuf;
    type Idx = CudaIdx;
    type Graph = CudaGraph;

    fn name(&self) -> String {
        self.dev.name()
    }

    fn synchronize(&self) -> Result<()> {
        self.dev.synchronize()
    }

    fn upload(&self, host: &[f32]) -> Result<CudaBuf> {
        self.upload_as(host, DType::Bf16)
    }

    fn upload_f32(&self, host: &[f32]) -> Result<CudaBuf> {
        self.upload_as(host, DType::F32)
    }

    fn upload_idx(&self, host: &[u32]) -> Result<CudaIdx> {
        let buf = CudaBuf::alloc(&self.dev, host.len(), DType::F32)?; // 4-byte elements
        let bytes: Vec<u8> = host
            .iter()
            .flat_map(|v| (*v as i32).to_le_bytes())
            .collect();
        self.dev.upload(buf.ptr(), &bytes)?;
        Ok(CudaIdx {
            buf,
            host: host.to_vec(),
        })
    }

    fn download(&self, buf: &CudaBuf) -> Result<Vec<f32>> {
        let mut bytes = vec![0u8; buf.bytes()];
        self.dev.download(buf.ptr(), &mut bytes)?;
        Ok(decode(&bytes, buf.dtype()))
    }

    fn zeros(&self, len: usize) -> Result<CudaBuf> {
        self.alloc(len, DType::Bf16)
    }

    fn zeros_f32(&self, len: usize) -> Result<CudaBuf> {
        self.alloc(len, DType::F32)
    }

    fn empty(&self, len: usize) -> Result<CudaBuf> {
        CudaBuf::alloc(&self.dev, len, DType::Bf16)
    }

    fn empty_f32(&self, len: usize) -> Result<CudaBuf> {
        CudaBuf::alloc(&self.dev, len, DType::F32)
    }

    fn fill_zero(&self, buf: &mut CudaBuf) -> Result<()> {
        self.dev.zero(buf.ptr(), buf.bytes())
    }

    fn len(&self, buf: &CudaBuf) -> usize {
        buf.len()
    }

    fn fill_uniform(&self, len: usize, lo: f32, hi: f32, seed: u64) -> Result<CudaBuf> {
        let out = CudaBuf::alloc(&self.dev, len, DType::Bf16)?;
        let args = [
            ptr(out.ptr()),
            KernelArg::U64(len as u64),
            KernelArg::U64(seed),
            KernelArg::F32(lo),
            KernelArg::F32(hi),
        ];
        launch(
            &*self.dev,
            "fill_uniform_bf16",
            Launch::new([grid_1d(len, 256 * 4), 1, 1], 256),
            &args,
        )?;
        Ok(out)
    }

    fn slice(&self, src: &CudaBuf, start: usize, len: usize) -> Result<CudaBuf> {
        if start + len > src.len() {
            return Err(Error::invalid(format!(
                "slice {start}..{} of a buffer of {}",
                start + len,
                src.len()
            )));
        }
        let out = CudaBuf::alloc(&self.dev, len, src.dtype())?;
        let size = src.dtype().size();
        self.dev.copy(
            out.ptr(),
            DevicePtr(src.ptr().0 + (start * size) as u64),
            len * size,
        )?;
        Ok(out)
    }

    fn copy_within(&self, buf: &mut CudaBuf, src: usize, dst: usize, len: usize) -> Result<()> {
        crate::backend::check_copy_within(buf.len(), src, dst, len)?;
        let size = buf.dtype().size();
        self.dev.copy(
            buf.ptr().offset(dst * size),
            buf.ptr().offset(src * size),
            len * size,
        )
    }

    fn memory_use(&self) -> Option<crate::backend::MemoryUse> {
        Some(self.dev.memory_use())
    }

    fn memory_report(&self) -> Option<MemoryReport> {
        Some(self.pool.memory_report())
    }

    fn counts(&self) -> Option<DeviceCounts> {
        Some(self.pool.counts())
    }

    fn memory_info(&self) -> Option<(usize, usize)> {
        self.pool.memory_info()
    }

    fn release_cached(&self, only: Option<Purpose>) {
        self.pool.release_cached(only)
    }

    fn embedding(
        &self,
        out: &mut CudaBuf,
        ids: &CudaIdx,
        table: &CudaBuf,
        tokens: usize,
        dim: usize,
    ) -> Result<()> {
        check_len(out, tokens * dim, "embedding out")?;
        let rows = table.len() / dim.max(1);
        if let Some(&bad) = ids.host.iter().find(|&&i| i as usize >= rows) {
            return Err(Error::invalid(format!(
                "embedding: row {bad} outside a table of {rows} rows"
            )));
        }
        let args = [
            ptr(out.expect(DType::Bf16, "embedding out")?),
            ptr(ids.buf.ptr()),
            ptr(table.expect(DType::Bf16, "embedding table")?),
            int(tokens, "tokens")?,
            int(dim, "dim")?,
        ];
        launch(
            &*self.dev,
            "embedding_forward_bf16",
            Launch::new([tokens as u32, 1, 1], 128),
            &args,
        )
    }

    fn rmsnorm(
        &self,
        out: &mut CudaBuf,
        x: &CudaBuf,
        w: &CudaBuf,
        rows: usize,
        dim: usize,
        eps: f32,
    ) -> Result<()> {
        check_len(out, rows * dim, "rmsnorm out")?;
        check_len(x, rows * dim, "rmsnorm x")?;
        check_len(w, dim, "rmsnorm weight")?;
        super::launch::rmsnorm_bf16(&*self.dev, out, x, w, rows, dim, eps)
    }

    fn linear(
        &self,
        out: &mut CudaBuf,
        x: &CudaBuf,
        w: &CudaBuf,
        bias: Option<&CudaBuf>,
        m: usize,
        n: usize,
        k: usize,
    ) -> Result<()> {
        check_len(out, m * n, "linear out")?;
        check_len(x, m * k, "linear x")?;
        check_len(w, n * k, "linear w")?;
        let g = GemmArgs {
            out: out.ptr(),
            out_f32: out.dtype() == DType::F32,
            x: x.expect(DType::Bf16, "linear x")?,
            w: w.expect(DType::Bf16, "linear w")?,
            m,
            n,
            k,
        };
        self.dev.gemm(&g)?;
        if let Some(b) = bias {
            check_len(b, n, "linear bias")?;
            let name = if g.out_f32 {
                "bias_add_f32"
            } else {
                "bias_add_bf16"
            };
            let args = [
                ptr(out.ptr()),
                ptr(b.expect(DType::Bf16, "bias")?),
                int(m, "m")?,
                int(n, "n")?,
            ];
            launch(
                &*self.dev,
                name,
                Launch::new([grid_1d(m * n, 256), 1, 1], 256),
                &args,
            )?;
        }
        Ok(())
    }

    fn rope(
        &self,
        x: &mut CudaBuf,
        pos: &CudaIdx,
        tokens: usize,
        heads: usize,
        hd: usize,
        theta: f32,
    ) -> Result<()> {
        check_len(x, tokens * heads * hd, "rope x")?;
        let freqs = self.inv_freq(hd, theta)?;
        let args = [
            ptr(x.expect(DType::Bf16, "rope x")?),
            ptr(pos.buf.ptr()),
            ptr(freqs.ptr()),
            int(tokens, "tokens")?,
            int(heads, "heads")?,
            int(hd, "head_dim")?,
        ];
        launch(
            &*self.dev,
            "rope_forward_bf16",
            Launch::new([tokens as u32, 1, 1], 128),
            &args,
        )
    }

    fn kv_write(
        &self,
        cache: &mut CudaBuf,
        x: &CudaBuf,
        slot: &CudaIdx,
        pos: &CudaIdx,
        d: AttnDims,
    ) -> Result<()> {
        check_len(cache, d.cache_len(), "kv cache")?;
        let row = d.kv_heads * d.head_dim;
        check_len(x, d.tokens * row, "kv_write x")?;
        for (&s, &p) in slot.host.iter().zip(&pos.host) {
            if s as usize >= d.slots || p as usize >= d.max_len {
                return Err(Error::invalid(format!(
                    "kv_write: slot {s} pos {p} outside the cache"
                )));
            }
        }
        let args = [
            ptr(cache.expect(DType::Bf16, "kv cache")?),
            ptr(x.expect(DType::Bf16, "kv_write x")?),
            ptr(slot.buf.ptr()),
            ptr(pos.buf.ptr()),
            int(d.tokens, "tokens")?,
            int(row, "row")?,
            int(d.max_len, "max_len")?,
        ];
        launch(
            &*self.dev,
            "kv_write_forward_bf16",
            Launch::new([d.tokens as u32, 1, 1], 128),
            &args,
        )
    }

    fn attention(
        &self,
        out: &mut CudaBuf,
        q: &CudaBuf,
        k_cache: &CudaBuf,
        v_cache: &CudaBuf,
        slot: &CudaIdx,
        pos: &CudaIdx,
        d: AttnDims,
        scale: f32,
    ) -> Result<()> {
        check_len(out, d.tokens * d.heads * d.head_dim, "attention out")?;
        check_len(q, d.tokens * d.heads * d.head_dim, "attention q")?;
        check_len(k_cache, d.cache_len(), "attention k_cache")?;
        check_len(v_cache, d.cache_len(), "attention v_cache")?;
        let dt = padded_head_dim(d.head_dim).ok_or_else(|| {
            Error::Unsupported(format!(
                "head_dim {} on CUDA (a multiple of 16 up to 256)",
                d.head_dim
            ))
        })?;
        if d.heads % d.kv_heads != 0 {
            return Err(Error::invalid(
                "attention: heads is not a multiple of kv_heads",
            ));
        }
        let tiles = prefill_tiles(&slot.host, &pos.host);
        if is_pure_decode(&tiles) {
            let max_keys = pos.host.iter().max().map_or(1, |&p| p as usize + 1);
            super::launch::attention_decode(
                &*self.dev, self, out, q, k_cache, v_cache, slot, pos, d, scale, max_keys,
            )
        } else {
            let tiles = self.upload_idx(&tiles.iter().map(|&v| v as u32).collect::<Vec<_>>())?;
            super::launch::attention_prefill(
                &*self.dev, out, None, q, k_cache, v_cache, &tiles, None, d, dt, scale,
            )
        }
    }

    fn kv_write_paged(
        &self,
        cache: &mut CudaBuf,
        x: &CudaBuf,
        rows: &CudaIdx,
        d: PagedDims,
    ) -> Result<()> {
        check_len(cache, d.cache_len(), "paged kv cache")?;
        let row = d.kv_heads * d.head_dim;
        check_len(x, d.tokens * row, "kv_write_paged x")?;
        check_idx_len(rows, d.tokens, "kv_write_paged rows")?;
        if let Some(r) = rows
            .host
            .iter()
            .find(|&&r| r as usize >= d.blocks * d.block_size)
        {
            return Err(Error::invalid(format!(
                "kv_write_paged: row {r} outside the cache"
            )));
        }
        let args = [
            ptr(cache.expect(DType::Bf16, "kv cache")?),
            ptr(x.expect(DType::Bf16, "kv_write x")?),
            ptr(rows.buf.ptr()),
            int(d.tokens, "tokens")?,
            int(row, "row")?,
        ];
        launch(
            &*self.dev,
            "kv_write_paged_forward_bf16",
            Launch::new([d.tokens as u32, 1, 1], 128),
            &args,
        )
    }

    fn attention_paged(
        &self,
        out: &mut CudaBuf,
        q: &CudaBuf,
        k_cache: &CudaBuf,
        v_cache: &CudaBuf,
        table: &CudaIdx,
        seq: &CudaIdx,
        pos: &CudaIdx,
        d: PagedDims,
        scale: f32,
        decode: Option<&mut CudaBuf>,
    ) -> Result<()> {
        check_len(out, d.tokens * d.heads * d.head_dim, "attention out")?;
        check_len(q, d.tokens * d.heads * d.head_dim, "attention q")?;
        check_len(k_cache, d.cache_len(), "attention k_cache")?;
        check_len(v_cache, d.cache_len(), "attention v_cache")?;
        check_idx_len(table, d.table_rows * d.table_width, "attention block table")?;
        check_idx_len(seq, d.tokens, "attention seq")?;
        check_idx_len(pos, d.tokens, "attention pos")?;
        if d.heads % d.kv_heads != 0 {
            return Err(Error::invalid(
                "attention: heads is not a multiple of kv_heads",
            ));
        }
        if let Some(work) = decode {
            return super::launch::attention_paged_decode(
                &*self.dev, out, work, q, k_cache, v_cache, table, seq, pos, d, scale,
            );
        }
        let dt = padded_head_dim(d.head_dim).ok_or_else(|| {
            Error::Unsupported(format!(
                "head_dim {} on CUDA (a multiple of 16 up to 256)",
                d.head_dim
            ))
        })?;
        for (&r, &p) in seq.host.iter().zip(&pos.host) {
            let (r, last) = (r as usize, p as usize / d.block_size);
            let ok = r < d.table_rows
                && last < d.table_width
                && table.host[r * d.table_width..=r * d.table_width + last]
                    .iter()
                    .all(|&b| (b as usize) < d.blocks);
            if !ok {
                return Err(Error::invalid(format!(
                    "attention_paged: table row {r} position {p} outside the table or cache"
                )));
            }
        }
        let tiles = prefill_tiles(&seq.host, &pos.host);
        let tiles = self.upload_idx(&tiles.iter().map(|&v| v as u32).collect::<Vec<_>>())?;
        let ad = AttnDims {
            tokens: d.tokens,
            heads: d.heads,
            kv_heads: d.kv_heads,
            head_dim: d.head_dim,
            slots: d.table_rows,
            max_len: d.max_context(),
        };
        super::launch::attention_prefill(
            &*self.dev,
            out,
            None,
            q,
            k_cache,
            v_cache,
            &tiles,
            Some((table, d)),
            ad,
            dt,
            scale,
        )
    }

    fn paged_decode_work_len(&self, d: PagedDims) -> usize {
        super::launch::paged_decode_work_len(&d)
    }

    fn capture_begin(&self) -> Result<bool> {
        self.dev.capture_begin()?;
        Ok(true)
    }

    fn capture_end(&self) -> Result<Option<CudaGraph>> {
        let id = self.dev.capture_end()?;
        Ok(Some(CudaGraph {
            id,
            dev: self.dev.clone(),
        }))
    }

    fn replay(&self, graph: &CudaGraph) -> Result<()> {
        self.dev.replay(graph.id)
    }

    fn set_len(&self, buf: &mut CudaBuf, len: usize) -> Result<()> {
        buf.set_len(len)
    }

    fn set_idx_len(&self, idx: &mut CudaIdx, len: usize) -> Result<()> {
        idx.buf.set_len(len)?;
        idx.host.resize(len, 0);
        Ok(())
    }

    fn upload_idx_into(&self, dst: &mut CudaIdx, host: &[u32]) -> Result<()> {
        check_idx_len(dst, host.len(), "upload_idx_into")?;
        let bytes: Vec<u8> = host.iter().flat_map(|v| v.to_le_bytes()).collect();
        self.dev.upload(dst.buf.ptr(), &bytes)?;
        dst.host.copy_from_slice(host);
        Ok(())
    }

    fn download_idx(&self, src: &CudaIdx, n: usize) -> Result<Vec<u32>> {
        if n > src.host.len() {
            return Err(Error::invalid(format!(
                "download_idx: {n} of {} indices",
                src.host.len()
            )));
        }
        let mut bytes = vec![0u8; n * 4];
        self.dev.download(src.buf.ptr(), &mut bytes)?;
        Ok(bytes
            .chunks_exact(4)
            .map(|c| u32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect())
    }

    fn sample_into(
        &self,
        out: &mut CudaIdx,
        logits: &CudaBuf,
        streams: &CudaIdx,
        rows: usize,
        vocab: usize,
        p: &SamplingParams,
        seed: u64,
    ) -> Result<()> {
        check_len(logits, rows * vocab, "sample logits")?;
        if out.host.len() < rows || streams.host.len() < 2 * rows {
            return Err(Error::invalid(format!(
                "sample_into: {rows} rows need {rows} outputs and {} stream words",
                2 * rows
            )));
        }
        let args = [
            ptr(out.buf.ptr()),
            ptr(logits.expect(DType::F32, "sample logits")?),
            ptr(streams.buf.ptr()),
            int(rows, "rows")?,
            int(vocab, "vocab")?,
            KernelArg::F32(p.temperature),
            int(p.top_k.min(vocab), "top_k")?,
            KernelArg::F32(p.top_p),
            KernelArg::U64(seed),
        ];
        launch(
            &*self.dev,
            "sample_forward_f32",
            Launch::new([rows as u32, 1, 1], 512),
            &args,
        )
    }

    fn swiglu(&self, out: &mut CudaBuf, gate: &CudaBuf, up: &CudaBuf, n: usize) -> Result<()> {
        check_len(out, n, "swiglu out")?;
        check_len(gate, n, "swiglu gate")?;
        check_len(up, n, "swiglu up")?;
        let args = [
            ptr(out.expect(DType::Bf16, "swiglu out")?),
            ptr(gate.expect(DType::Bf16, "swiglu gate")?),
            ptr(up.expect(DType::Bf16, "swiglu up")?),
            int(n, "n")?,
        ];
        launch(
            &*self.dev,
            "swiglu_forward_bf16",
            Launch::new([grid_1d(n, 256 * 8), 1, 1], 256),
            &args,
        )
    }

    fn add_assign(&self, x: &mut CudaBuf, y: &CudaBuf) -> Result<()> {
        check_len(y, x.len(), "add_assign y")?;
        let n = x.len();
        let args = [
            ptr(x.expect(DType::Bf16, "add_assign x")?),
            ptr(y.expect(DType::Bf16, "add_assign y")?),
            int(n, "n")?,
        ];
        launch(
            &*self.dev,
            "add_assign_bf16",
            Launch::new([grid_1d(n, 256 * 8), 1, 1], 256),
            &args,
        )
    }

    fn sample(
        &self,
        logits: &CudaBuf,
        streams: &[u64],
        vocab: usize,
        p: &SamplingParams,
        seed: u64,
    ) -> Result<Vec<u32>> {
        let rows = streams.len();
        let words: Vec<u32> = streams
            .iter()
            .flat_map(|&s| [s as u32, (s >> 32) as u32])
            .collect();
        let mut out = self.upload_idx(&vec![0; rows])?;
        self.sample_into(
            &mut out,
            logits,
            &self.upload_idx(&words)?,
            rows,
            vocab,
            p,
            seed,
        )?;
        self.download_idx(&out, rows)
    }

    fn logprob_gather(
        &self,
        out: &mut CudaBuf,
        logits: &CudaBuf,
        target: &CudaIdx,
        rows: usize,
        vocab: usize,
    ) -> Result<()> {
        check_len(out, rows, "logprob out")?;
        check_len(logits, rows * vocab, "logprob logits")?;
        let args = [
            ptr(out.expect(DType::F32, "logprob out")?),
            ptr(logits.expect(DType::F32, "logprob logits")?),
            ptr(target.buf.ptr()),
            int(rows, "rows")?,
            int(vocab, "vocab")?,
        ];
        launch(
            &*self.dev,
            "logprob_gather_forward_f32",
            Launch::new([rows as u32, 1, 1], 256),
            &args,
        )
    }

    // Training ops: attention in `attention_backward.rs`, the rest in `train_ops.rs`.

    fn attention_saved(
        &self,
        out: &mut CudaBuf,
        lse: &mut CudaBuf,
        q: &CudaBuf,
        k_cache: &CudaBuf,
        v_cache: &CudaBuf,
        slot: &CudaIdx,
        pos: &CudaIdx,
        d: AttnDims,
        scale: f32,
    ) -> Result<()> {
        super::attention_backward::attention_saved(
            self, out, lse, q, k_cache, v_cache, slot, pos, d, scale,
        )
    }

    fn attention_backward(
        &self,
        dq: &mut CudaBuf,
        dk_cache: &mut CudaBuf,
        dv_cache: &mut CudaBuf,
        dout: &CudaBuf,
        out: &CudaBuf,
        lse: &CudaBuf,
        q: &CudaBuf,
        k_cache: &CudaBuf,
        v_cache: &CudaBuf,
        slot: &CudaIdx,
        pos: &CudaIdx,
        d: AttnDims,
        scale: f32,
    ) -> Result<()> {
        super::attention_backward::attention_backward(
            self, dq, dk_cache, dv_cache, dout, out, lse, q, k_cache, v_cache, slot, pos, d, scale,
        )
    }

    fn kv_gather(
        &self,
        x: &mut CudaBuf,
        cache: &CudaBuf,
        slot: &CudaIdx,
        pos: &CudaIdx,
        d: AttnDims,
    ) -> Result<()> {
        super::train_ops::kv_gather(self, x, cache, slot, pos, d)
    }

    fn rmsnorm_backward(
        &self,
        dx: &mut CudaBuf,
        dw_accum: Option<&mut CudaBuf>,
        dy: &CudaBuf,
        x: &CudaBuf,
        weight: &CudaBuf,
        rows: usize,
        dim: usize,
        eps: f32,
    ) -> Result<()> {
        super::train_ops::rmsnorm_backward(self, dx, dw_accum, dy, x, weight, rows, dim, eps)
    }

    fn rope_backward(
        &self,
        dx: &mut CudaBuf,
        pos: &CudaIdx,
        tokens: usize,
        heads: usize,
        hd: usize,
        theta: f32,
    ) -> Result<()> {
        super::train_ops::rope_backward(self, dx, pos, tokens, heads, hd, theta)
    }

    fn swiglu_backward(
        &self,
        dgate: &mut CudaBuf,
        dup: &mut CudaBuf,
        dout: &CudaBuf,
        gate: &CudaBuf,
        up: &CudaBuf,
        n: usize,
    ) -> Result<()> {
        super::train_ops::swiglu_backward(self, dgate, dup, dout, gate, up, n)
    }

    fn linear_backward_input(
        &self,
        dx: &mut CudaBuf,
        dout: &CudaBuf,
        w: &CudaBuf,
        m: usize,
        n: usize,
        k: usize,
        accumulate: bool,
    ) -> Result<()> {
        super::train_ops::linear_backward_input(self, dx, dout, w, m, n, k, accumulate)
    }

    fn linear_backward_weight(
        &self,
        dw_accum: &mut CudaBuf,
        db_accum: Option<&mut CudaBuf>,
        dout: &CudaBuf,
        x: &CudaBuf,
        m: usize,
        n: usize,
        k: usize,
    ) -> Result<()> {
        super::train_ops::linear_backward_weight(self, dw_accum, db_accum, dout, x, m, n, k)
    }

    fn scatter_rows(
        &self,
        dst: &mut CudaBuf,
        src: &CudaBuf,
        rows_idx: &CudaIdx,
        rows: usize,
        dim: usize,
    ) -> Result<()> {
        super::train_ops::scatter_rows(self, dst, src, rows_idx, rows, dim)
    }

    fn embedding_grad(
        &self,
        dtable: &mut CudaBuf,
        dx: &CudaBuf,
        ids: &CudaIdx,
        tokens: usize,
        dim: usize,
    ) -> Result<()> {
        super::train_ops::embedding_grad(self, dtable, dx, ids, tokens, dim)
    }

    fn token_loss_backward(
        &self,
        dlogits: &mut CudaBuf,
        stats: &mut CudaBuf,
        logits: &CudaBuf,
        rows: &LossRows<'_, Self>,
        n_rows: usize,
        vocab: usize,
        cfg: &LossConfig,
    ) -> Result<()> {
        super::train_ops::token_loss_backward(
            self, dlogits, stats, logits, rows, n_rows, vocab, cfg,
        )
    }

    fn adamw_step(
        &self,
        param: &mut CudaBuf,
        m: &mut CudaBuf,
        v: &mut CudaBuf,
        copy: Option<&mut CudaBuf>,
        grad: &CudaBuf,
        opt: &AdamW,
        step: u64,
        grad_scale: f32,
    ) -> Result<()> {
        super::train_ops::adamw_step(self, param, m, v, copy, grad, opt, step, grad_scale)
    }

    fn sgd_step(
        &self,
        param: &mut CudaBuf,
        copy: Option<&mut CudaBuf>,
        grad: &CudaBuf,
        lr: f32,
        weight_decay: f32,
        grad_scale: f32,
    ) -> Result<()> {
        super::train_ops::sgd_step(self, param, copy, grad, lr, weight_decay, grad_scale)
    }

    fn sum_squares(&self, buf: &CudaBuf) -> Result<f64> {
        super::train_ops::sum_squares(self, buf)
    }

    fn copy_convert(&self, dst: &mut CudaBuf, src: &CudaBuf) -> Result<()> {
        super::train_ops::copy_convert(self, dst, src)
    }
}

/// Decode-attention split sizes for this device's launch (re-exported for tests).
pub fn plan_decode(tokens: usize, head_blocks: usize, max_keys: usize) -> (usize, usize) {
    decode_splits(tokens, head_blocks, max_keys, DECODE_TARGET_BLOCKS)
}
