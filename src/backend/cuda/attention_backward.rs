//! Attention for training on the CUDA backend: the forward pass that saves the
//! log-sum-exp, and the FlashAttention-2 backward (`kernels/attention_backward.cu`).
//!
//! The forward is the prefill kernel for every batch (single tokens per slot
//! included: the split-K decode kernel does not save lse). The backward needs a
//! training batch: each slot's tokens one contiguous run at consecutive positions
//! (a whole sequence, possibly after a cached prefix whose keys get dK/dV too); it
//! runs three kernels: D = rowsum(dO * O), dK/dV per key tile (+= into the cache
//! gradients), dQ per query tile (=). Deterministic, no atomics.

use super::attention_plan::{
    backward_key_tiles, backward_query_tiles, backward_smem, padded_head_dim, prefill_tiles,
    slot_runs,
};
use super::backend::{check_len, CudaBackend};
use super::buffers::{CudaBuf, CudaIdx, DType};
use super::device::{Device, KernelArg, LaunchConfig};
use super::launch::{grid_1d, int, launch, ptr, Launch};
use crate::backend::{AttnDims, Backend};
use crate::{Error, Result};

/// The shape checks both directions share; returns the padded head dim.
fn check_dims(d: AttnDims, slot: &CudaIdx, pos: &CudaIdx, what: &str) -> Result<usize> {
    if d.kv_heads == 0 || d.heads % d.kv_heads != 0 {
        return Err(Error::invalid(format!(
            "{what}: heads {} is not a multiple of kv_heads {}",
            d.heads, d.kv_heads
        )));
    }
    if slot.host().len() != d.tokens || pos.host().len() != d.tokens {
        return Err(Error::invalid(format!(
            "{what}: {} slots and {} positions for {} tokens",
            slot.host().len(),
            pos.host().len(),
            d.tokens
        )));
    }
    for (&s, &p) in slot.host().iter().zip(pos.host()) {
        if s as usize >= d.slots || p as usize >= d.max_len {
            return Err(Error::invalid(format!(
                "{what}: slot {s} pos {p} outside the cache ({} slots x {})",
                d.slots, d.max_len
            )));
        }
    }
    padded_head_dim(d.head_dim).ok_or_else(|| {
        Error::Unsupported(format!(
            "{what}: head_dim {} on CUDA (a multiple of 16 up to 256)",
            d.head_dim
        ))
    })
}

fn upload_tiles(be: &CudaBackend, tiles: &[i32]) -> Result<CudaIdx> {
    be.upload_idx(&tiles.iter().map(|&v| v as u32).collect::<Vec<_>>())
}

/// A launch with dynamic shared memory (`launch::Launch` has none).
fn launch_smem(
    dev: &dyn Device,
    kernel: &'static str,
    grid: [u32; 3],
    shared_bytes: u32,
    args: &[KernelArg],
) -> Result<()> {
    if grid.contains(&0) {
        return Ok(());
    }
    let cfg = LaunchConfig {
        grid,
        block: [128, 1, 1],
        shared_bytes,
    };
    dev.launch(kernel, cfg, args)
}

#[allow(clippy::too_many_arguments)]
pub fn attention_saved(
    be: &CudaBackend,
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
    let rows = d.tokens * d.heads * d.head_dim;
    check_len(out, rows, "attention_saved out")?;
    check_len(q, rows, "attention_saved q")?;
    check_len(lse, d.tokens * d.heads, "attention_saved lse")?;
    check_len(k_cache, d.cache_len(), "attention_saved k_cache")?;
    check_len(v_cache, d.cache_len(), "attention_saved v_cache")?;
    let dt = check_dims(d, slot, pos, "attention_saved")?;
    let tiles = upload_tiles(be, &prefill_tiles(slot.host(), pos.host()))?;
    super::launch::attention_prefill(
        &**be.device(),
        out,
        Some(lse),
        q,
        k_cache,
        v_cache,
        &tiles,
        None,
        d,
        dt,
        scale,
    )
}

#[allow(clippy::too_many_arguments)]
pub fn attention_backward(
    be: &CudaBackend,
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
    let rows = d.tokens * d.heads * d.head_dim;
    for (buf, what) in [(&*dq, "dq"), (dout, "dout"), (out, "out"), (q, "q")] {
        check_len(buf, rows, &format!("attention_backward {what}"))?;
    }
    for (buf, what) in [
        (&*dk_cache, "dk_cache"),
        (&*dv_cache, "dv_cache"),
        (k_cache, "k_cache"),
        (v_cache, "v_cache"),
    ] {
        check_len(buf, d.cache_len(), &format!("attention_backward {what}"))?;
    }
    check_len(lse, d.tokens * d.heads, "attention_backward lse")?;
    let dt = check_dims(d, slot, pos, "attention_backward")?;
    let (dkdv_kernel, dq_kernel) = match dt {
        32 => (
            "attention_dkdv_d32_backward_bf16",
            "attention_dq_d32_backward_bf16",
        ),
        64 => (
            "attention_dkdv_d64_backward_bf16",
            "attention_dq_d64_backward_bf16",
        ),
        128 => (
            "attention_dkdv_d128_backward_bf16",
            "attention_dq_d128_backward_bf16",
        ),
        256 => (
            "attention_dkdv_d256_backward_bf16",
            "attention_dq_d256_backward_bf16",
        ),
        other => {
            return Err(Error::Unsupported(format!(
                "attention_backward: head_dim padding {other}"
            )))
        }
    };
    // Output dims per block: head_dim 256 splits them over two blocks (grid z).
    let z = dt.div_ceil(128) as u32;
    let runs = slot_runs(slot.host(), pos.host()).map_err(Error::invalid)?;
    if d.tokens == 0 {
        return Ok(());
    }
    let dev = &**be.device();
    let (dkdv_smem, dq_smem) = backward_smem(dt);
    let n_rows = d.tokens * d.heads;

    // D = rowsum(dO * O): written for every row, so no zeroing.
    let delta = CudaBuf::alloc(be.device(), n_rows, DType::F32)?;
    let (dout_p, out_p) = (
        dout.expect(DType::Bf16, "attention_backward dout")?,
        out.expect(DType::Bf16, "attention_backward out")?,
    );
    launch(
        dev,
        "attention_dot_backward_bf16",
        Launch::new([grid_1d(n_rows, 8), 1, 1], 256),
        &[
            ptr(delta.ptr()),
            ptr(dout_p),
            ptr(out_p),
            int(n_rows, "tokens * heads")?,
            int(d.head_dim, "head_dim")?,
        ],
    )?;

    let lse_p = lse.expect(DType::F32, "attention_backward lse")?;
    let q_p = q.expect(DType::Bf16, "attention_backward q")?;
    let k_p = k_cache.expect(DType::Bf16, "attention_backward k_cache")?;
    let v_p = v_cache.expect(DType::Bf16, "attention_backward v_cache")?;
    let dims = [
        int(d.heads, "heads")?,
        int(d.kv_heads, "kv_heads")?,
        int(d.head_dim, "head_dim")?,
        int(d.max_len, "max_len")?,
        KernelArg::F32(scale),
    ];

    // dK, dV (+=): one block per (key tile, kv head).
    let key_tiles = upload_tiles(be, &backward_key_tiles(&runs))?;
    let mut args = vec![
        ptr(dk_cache.expect(DType::Bf16, "attention_backward dk_cache")?),
        ptr(dv_cache.expect(DType::Bf16, "attention_backward dv_cache")?),
        ptr(dout_p),
        ptr(lse_p),
        ptr(delta.ptr()),
        ptr(q_p),
        ptr(k_p),
        ptr(v_p),
        ptr(key_tiles.buf.ptr()),
    ];
    args.extend(dims.iter().cloned());
    let n_key_tiles = key_tiles.host().len() / 6;
    launch_smem(
        dev,
        dkdv_kernel,
        [n_key_tiles as u32, d.kv_heads as u32, z],
        dkdv_smem,
        &args,
    )?;

    // dQ (=): one block per (query tile, head).
    let q_tiles = upload_tiles(be, &backward_query_tiles(&runs))?;
    let mut args = vec![
        ptr(dq.expect(DType::Bf16, "attention_backward dq")?),
        ptr(dout_p),
        ptr(lse_p),
        ptr(delta.ptr()),
        ptr(q_p),
        ptr(k_p),
        ptr(v_p),
        ptr(q_tiles.buf.ptr()),
    ];
    args.extend(dims.iter().cloned());
    let n_q_tiles = q_tiles.host().len() / 4;
    launch_smem(
        dev,
        dq_kernel,
        [n_q_tiles as u32, d.heads as u32, z],
        dq_smem,
        &args,
    )
}
