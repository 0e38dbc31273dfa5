//! The training ops of the CUDA backend other than attention: backward kernels,
//! GEMM gradients through cuBLAS (`Device::gemm_ex`), the fused token loss, the
//! optimizers. Each kernel's one launcher is here; the kernels' headers
//! (kernels/backward.cu, rmsnorm.cu, rope.cu, elementwise.cu, loss.cu, adamw.cu) give
//! the math, the shapes and the launch geometry these functions follow.
//!
//! Buffers: activation gradients are bf16 (`zeros`), weight gradients and optimizer
//! state f32 (`zeros_f32`). Where a gradient could reasonably arrive in either type
//! (the KV-cache gather, the row scatter, RoPE, RMSNorm, the loss's dlogits, the
//! optimizer's forward copy) both are accepted; other dtypes are refused by name.
//! Every reduction is deterministic: fixed launch geometry for given shapes, partial
//! sums combined in a fixed order, no float atomics.

use super::backend::{check_len, CudaBackend};
use super::buffers::{CudaBuf, CudaIdx, DType};
use super::device::{DevicePtr, GemmEx, KernelArg, LaunchConfig};
use super::launch::{grid_1d, int, launch, ptr, Launch};
use crate::backend::{stat, AttnDims, KlType, LossConfig, LossRows};
use crate::train::AdamW;
use crate::{Error, Result};

/// Blocks of a grid-stride loop with one row per block per step: one per row, capped.
fn row_blocks(rows: usize, cap: usize) -> u32 {
    rows.min(cap) as u32
}

fn check_idx(idx: &CudaIdx, len: usize, what: &str) -> Result<()> {
    if idx.host.len() != len {
        return Err(Error::invalid(format!(
            "{what}: {} indices, expected {len}",
            idx.host.len()
        )));
    }
    Ok(())
}

fn dtype_name(d: DType) -> &'static str {
    match d {
        DType::Bf16 => "bf16",
        DType::F32 => "f32",
    }
}

/// The kernel of a (destination, source) dtype pair among `[bf16/bf16, f32/f32,
/// bf16/f32, f32/bf16]`.
fn by_dtypes(dst: DType, src: DType, names: [&'static str; 4]) -> &'static str {
    match (dst, src) {
        (DType::Bf16, DType::Bf16) => names[0],
        (DType::F32, DType::F32) => names[1],
        (DType::Bf16, DType::F32) => names[2],
        (DType::F32, DType::Bf16) => names[3],
    }
}

/// kv_write_backward_*: grid-stride over tokens, 128 threads.
pub fn kv_gather(
    be: &CudaBackend,
    x: &mut CudaBuf,
    cache: &CudaBuf,
    slot: &CudaIdx,
    pos: &CudaIdx,
    d: AttnDims,
) -> Result<()> {
    check_len(cache, d.cache_len(), "kv_gather cache")?;
    let row = d.kv_heads * d.head_dim;
    check_len(x, d.tokens * row, "kv_gather x")?;
    check_idx(slot, d.tokens, "kv_gather slot")?;
    check_idx(pos, d.tokens, "kv_gather pos")?;
    for (&s, &p) in slot.host.iter().zip(&pos.host) {
        if s as usize >= d.slots || p as usize >= d.max_len {
            return Err(Error::invalid(format!(
                "kv_gather: slot {s} pos {p} outside the cache"
            )));
        }
    }
    let kernel = by_dtypes(
        x.dtype(),
        cache.dtype(),
        [
            "kv_write_backward_bf16",
            "kv_write_backward_f32",
            "kv_write_backward_f32_to_bf16",
            "kv_write_backward_bf16_to_f32",
        ],
    );
    let args = [
        ptr(x.ptr()),
        ptr(cache.ptr()),
        ptr(slot.buf.ptr()),
        ptr(pos.buf.ptr()),
        int(d.tokens, "tokens")?,
        int(row, "row")?,
        int(d.max_len, "max_len")?,
    ];
    launch(
        &**be.device(),
        kernel,
        Launch::new([row_blocks(d.tokens, 65535), 1, 1], 128),
        &args,
    )
}

/// `out[p, c] (= or +=) sum of x's rows in part p`, column_sum_{bf16,f32}: grid
/// (column blocks, parts), 128 threads, V columns per thread as the kernel decides.
#[allow(clippy::too_many_arguments)]
fn column_sum(
    be: &CudaBackend,
    out: DevicePtr,
    x: DevicePtr,
    x_dtype: DType,
    rows: usize,
    cols: usize,
    rows_per_part: usize,
    accumulate: bool,
) -> Result<()> {
    const THREADS: usize = 128;
    let (kernel, v) = match x_dtype {
        DType::Bf16 => ("column_sum_bf16", 8),
        DType::F32 => ("column_sum_f32", 4),
    };
    // The kernel's own test, so the grid covers exactly the columns it assigns.
    let v = if cols % v == 0 && x.0 % 16 == 0 { v } else { 1 };
    let parts = rows.div_ceil(rows_per_part.max(1));
    if parts > 65535 {
        return Err(Error::invalid(format!(
            "column_sum: {parts} parts (at most 65535)"
        )));
    }
    let args = [
        ptr(out),
        ptr(x),
        int(rows, "rows")?,
        int(cols, "cols")?,
        int(rows_per_part, "rows_per_part")?,
        KernelArg::I32(accumulate as i32),
    ];
    launch(
        &**be.device(),
        kernel,
        Launch::new(
            [cols.div_ceil(THREADS * v) as u32, parts as u32, 1],
            THREADS as u32,
        ),
        &args,
    )
}

/// Threads of rmsnorm_backward_* (RMSB_THREADS in kernels/rmsnorm.cu).
const RMSB_THREADS: usize = 256;
/// Blocks of rmsnorm_backward when it also writes the weight gradient: each block
/// writes one partial row of `dim` floats, summed afterwards in order (about four
/// blocks per SM on an H100).
const RMSB_DW_BLOCKS: usize = 512;

/// rmsnorm_backward_{bf16,f32} (grid-stride over rows; a warp per row up to dim 1024,
/// else a block per row), then column_sum_f32 of the per-block dw partials.
#[allow(clippy::too_many_arguments)]
pub fn rmsnorm_backward(
    be: &CudaBackend,
    dx: &mut CudaBuf,
    dw_accum: Option<&mut CudaBuf>,
    dy: &CudaBuf,
    x: &CudaBuf,
    weight: &CudaBuf,
    rows: usize,
    dim: usize,
    eps: f32,
) -> Result<()> {
    check_len(dx, rows * dim, "rmsnorm_backward dx")?;
    check_len(dy, rows * dim, "rmsnorm_backward dy")?;
    check_len(x, rows * dim, "rmsnorm_backward x")?;
    check_len(weight, dim, "rmsnorm_backward weight")?;
    let t = x.dtype();
    let kernel = match t {
        DType::Bf16 => "rmsnorm_backward_bf16",
        DType::F32 => "rmsnorm_backward_f32",
    };
    let tn = dtype_name(t);
    dx.expect(t, &format!("rmsnorm_backward dx (x is {tn})"))?;
    dy.expect(t, &format!("rmsnorm_backward dy (x is {tn})"))?;
    weight.expect(t, &format!("rmsnorm_backward weight (x is {tn})"))?;
    if let Some(dw) = &dw_accum {
        check_len(dw, dim, "rmsnorm_backward dw_accum")?;
        dw.expect(DType::F32, "rmsnorm_backward dw_accum")?;
    }
    if rows == 0 || dim == 0 {
        return Ok(());
    }
    let groups = if dim <= 1024 { RMSB_THREADS / 32 } else { 1 };
    // At least two rows per row group, so small batches do not pay for one dw partial
    // (or one block start) per row.
    let needed = rows.div_ceil(groups * 2);
    let dev = &**be.device();
    let run = |blocks: usize, dw_part: DevicePtr, shared: usize| -> Result<()> {
        let args = [
            ptr(dx.ptr()),
            ptr(dw_part),
            ptr(dy.ptr()),
            ptr(x.ptr()),
            ptr(weight.ptr()),
            int(rows, "rows")?,
            int(dim, "dim")?,
            KernelArg::F32(eps),
        ];
        let cfg = LaunchConfig::linear(blocks as u32, RMSB_THREADS as u32, shared as u32);
        dev.launch(kernel, cfg, &args)
    };
    match dw_accum {
        None => run(needed.min(65535), DevicePtr::NULL, 0),
        Some(dw) => {
            let shared = groups * dim * 4;
            if shared > 227 * 1024 {
                return Err(Error::Unsupported(format!(
                    "rmsnorm_backward with a weight gradient for dim {dim} (at most {})",
                    227 * 1024 / 4
                )));
            }
            let blocks = needed.min(RMSB_DW_BLOCKS);
            let part = CudaBuf::alloc(be.device(), blocks * dim, DType::F32)?;
            run(blocks, part.ptr(), shared)?;
            column_sum(
                be,
                dw.ptr(),
                part.ptr(),
                DType::F32,
                blocks,
                dim,
                blocks,
                true,
            )
        }
    }
}

/// rope_backward_{bf16,f32}: grid (tokens), 128 threads.
pub fn rope_backward(
    be: &CudaBackend,
    dx: &mut CudaBuf,
    pos: &CudaIdx,
    tokens: usize,
    heads: usize,
    hd: usize,
    theta: f32,
) -> Result<()> {
    check_len(dx, tokens * heads * hd, "rope_backward dx")?;
    check_idx(pos, tokens, "rope_backward pos")?;
    if hd % 2 != 0 {
        return Err(Error::invalid(format!("rope_backward: odd head_dim {hd}")));
    }
    let freqs = be.inv_freq(hd, theta)?;
    let kernel = match dx.dtype() {
        DType::Bf16 => "rope_backward_bf16",
        DType::F32 => "rope_backward_f32",
    };
    let args = [
        ptr(dx.ptr()),
        ptr(pos.buf.ptr()),
        ptr(freqs.ptr()),
        int(tokens, "tokens")?,
        int(heads, "heads")?,
        int(hd, "head_dim")?,
    ];
    launch(
        &**be.device(),
        kernel,
        Launch::new([row_blocks(tokens, 65535), 1, 1], 128),
        &args,
    )
}

/// swiglu_backward_bf16: grid-stride, 256 threads, 8 elements per thread per step.
pub fn swiglu_backward(
    be: &CudaBackend,
    dgate: &mut CudaBuf,
    dup: &mut CudaBuf,
    dout: &CudaBuf,
    gate: &CudaBuf,
    up: &CudaBuf,
    n: usize,
) -> Result<()> {
    for (b, what) in [
        (&*dgate, "swiglu_backward dgate"),
        (&*dup, "swiglu_backward dup"),
        (dout, "swiglu_backward dout"),
        (gate, "swiglu_backward gate"),
        (up, "swiglu_backward up"),
    ] {
        check_len(b, n, what)?;
        b.expect(DType::Bf16, what)?;
    }
    let args = [
        ptr(dgate.ptr()),
        ptr(dup.ptr()),
        ptr(dout.ptr()),
        ptr(gate.ptr()),
        ptr(up.ptr()),
        int(n, "n")?,
    ];
    launch(
        &**be.device(),
        "swiglu_backward_bf16",
        Launch::new([grid_1d(n, 256 * 8), 1, 1], 256),
        &args,
    )
}

/// `dx[m, k] (= or +=) dout[m, n] · w[n, k]`: one GEMM, no transposes.
#[allow(clippy::too_many_arguments)]
pub fn linear_backward_input(
    be: &CudaBackend,
    dx: &mut CudaBuf,
    dout: &CudaBuf,
    w: &CudaBuf,
    m: usize,
    n: usize,
    k: usize,
    accumulate: bool,
) -> Result<()> {
    check_len(dx, m * k, "linear_backward_input dx")?;
    check_len(dout, m * n, "linear_backward_input dout")?;
    check_len(w, n * k, "linear_backward_input w")?;
    be.device().gemm_ex(&GemmEx {
        out: dx.ptr(),
        out_f32: dx.dtype() == DType::F32,
        x: dout.expect(DType::Bf16, "linear_backward_input dout")?,
        w: w.expect(DType::Bf16, "linear_backward_input w")?,
        m,
        n: k,
        k: n,
        trans_x: false,
        trans_w: false,
        accumulate,
    })
}

/// Rows per part of the two-level bias-gradient column sum: at most 256 parts of at
/// least 16 rows.
fn bias_rows_per_part(m: usize) -> usize {
    m.div_ceil(256).max(16)
}

/// `dw_accum[n, k] += dout[m, n]ᵀ · x[m, k]` (one GEMM with beta = 1) and
/// `db_accum[n] += column sums of dout` (column_sum_bf16 per part of the rows, then
/// column_sum_f32 over the parts when there is more than one).
#[allow(clippy::too_many_arguments)]
pub fn linear_backward_weight(
    be: &CudaBackend,
    dw_accum: &mut CudaBuf,
    db_accum: Option<&mut CudaBuf>,
    dout: &CudaBuf,
    x: &CudaBuf,
    m: usize,
    n: usize,
    k: usize,
) -> Result<()> {
    check_len(dw_accum, n * k, "linear_backward_weight dw_accum")?;
    check_len(dout, m * n, "linear_backward_weight dout")?;
    check_len(x, m * k, "linear_backward_weight x")?;
    let dout_p = dout.expect(DType::Bf16, "linear_backward_weight dout")?;
    be.device().gemm_ex(&GemmEx {
        out: dw_accum.expect(DType::F32, "linear_backward_weight dw_accum")?,
        out_f32: true,
        x: dout_p,
        w: x.expect(DType::Bf16, "linear_backward_weight x")?,
        m: n,
        n: k,
        k: m,
        trans_x: true,
        trans_w: false,
        accumulate: true,
    })?;
    let Some(db) = db_accum else {
        return Ok(());
    };
    check_len(db, n, "linear_backward_weight db_accum")?;
    let db_p = db.expect(DType::F32, "linear_backward_weight db_accum")?;
    if m == 0 || n == 0 {
        return Ok(());
    }
    let rpp = bias_rows_per_part(m);
    let parts = m.div_ceil(rpp);
    if parts == 1 {
        return column_sum(be, db_p, dout_p, DType::Bf16, m, n, rpp, true);
    }
    let scratch = CudaBuf::alloc(be.device(), parts * n, DType::F32)?;
    column_sum(be, scratch.ptr(), dout_p, DType::Bf16, m, n, rpp, false)?;
    column_sum(be, db_p, scratch.ptr(), DType::F32, parts, n, parts, true)
}

/// embedding_backward_*: grid-stride over rows, 128 threads.
pub fn scatter_rows(
    be: &CudaBackend,
    dst: &mut CudaBuf,
    src: &CudaBuf,
    rows_idx: &CudaIdx,
    rows: usize,
    dim: usize,
) -> Result<()> {
    check_len(src, rows * dim, "scatter_rows src")?;
    check_idx(rows_idx, rows, "scatter_rows rows_idx")?;
    if dim == 0 {
        return Ok(());
    }
    let dst_rows = dst.len() / dim;
    let mut seen = vec![false; dst_rows];
    for &i in &rows_idx.host {
        let i = i as usize;
        if i >= dst_rows {
            return Err(Error::invalid(format!(
                "scatter_rows: row {i} outside a destination of {dst_rows} rows of {dim}"
            )));
        }
        if std::mem::replace(&mut seen[i], true) {
            return Err(Error::invalid(format!(
                "scatter_rows: row {i} appears twice in rows_idx"
            )));
        }
    }
    let kernel = by_dtypes(
        dst.dtype(),
        src.dtype(),
        [
            "embedding_backward_bf16",
            "embedding_backward_f32",
            "embedding_backward_f32_to_bf16",
            "embedding_backward_bf16_to_f32",
        ],
    );
    let args = [
        ptr(dst.ptr()),
        ptr(src.ptr()),
        ptr(rows_idx.buf.ptr()),
        int(rows, "rows")?,
        int(dim, "dim")?,
    ];
    launch(
        &**be.device(),
        kernel,
        Launch::new([row_blocks(rows, 65535), 1, 1], 128),
        &args,
    )
}

/// embedding_grad_{bf16,f32} (by dx's dtype): the tokens sorted by id on the host
/// (stably), one block per unique id (grid-stride), 128 threads over the columns.
pub fn embedding_grad(
    be: &CudaBackend,
    dtable: &mut CudaBuf,
    dx: &CudaBuf,
    ids: &CudaIdx,
    tokens: usize,
    dim: usize,
) -> Result<()> {
    check_len(dx, tokens * dim, "embedding_grad dx")?;
    check_idx(ids, tokens, "embedding_grad ids")?;
    if tokens == 0 || dim == 0 {
        return Ok(());
    }
    let rows = dtable.len() / dim;
    if let Some(&bad) = ids.host.iter().find(|&&i| i as usize >= rows) {
        return Err(Error::invalid(format!(
            "embedding_grad: id {bad} outside a table of {rows} rows"
        )));
    }
    let mut order: Vec<u32> = (0..tokens as u32).collect();
    order.sort_by_key(|&t| ids.host[t as usize]); // stable: token order within an id
    let (mut uniq, mut starts) = (Vec::new(), Vec::new());
    for (k, &t) in order.iter().enumerate() {
        let id = ids.host[t as usize];
        if uniq.last() != Some(&id) {
            uniq.push(id);
            starts.push(k as u32);
        }
    }
    starts.push(tokens as u32);
    let (order_i, uniq_i, starts_i) = (
        crate::backend::Backend::upload_idx(be, &order)?,
        crate::backend::Backend::upload_idx(be, &uniq)?,
        crate::backend::Backend::upload_idx(be, &starts)?,
    );
    let kernel = match dx.dtype() {
        DType::Bf16 => "embedding_grad_bf16",
        DType::F32 => "embedding_grad_f32",
    };
    let args = [
        ptr(dtable.expect(DType::F32, "embedding_grad dtable")?),
        ptr(dx.ptr()),
        ptr(order_i.buf.ptr()),
        ptr(uniq_i.buf.ptr()),
        ptr(starts_i.buf.ptr()),
        int(uniq.len(), "unique ids")?,
        int(dim, "dim")?,
    ];
    launch(
        &**be.device(),
        kernel,
        Launch::new([row_blocks(uniq.len(), 65535), 1, 1], 128),
        &args,
    )
}

/// Threads of token_loss_backward_* for a vocabulary: about 16 elements per thread
/// up to LOSS_THREADS (512, kernels/loss.cu) for real vocabularies, at least 64.
fn loss_threads(vocab: usize) -> u32 {
    vocab.div_ceil(16).next_multiple_of(32).clamp(64, 512) as u32
}

/// token_loss_backward_{bf16,f32} (by dlogits' dtype): grid-stride over rows, one
/// row per block per step, `loss_threads(vocab)` threads (512 for a Qwen vocabulary).
#[allow(clippy::too_many_arguments)]
pub fn token_loss_backward(
    be: &CudaBackend,
    dlogits: &mut CudaBuf,
    stats: &mut CudaBuf,
    logits: &CudaBuf,
    rows: &LossRows<'_, CudaBackend>,
    n_rows: usize,
    vocab: usize,
    cfg: &LossConfig,
) -> Result<()> {
    check_len(logits, n_rows * vocab, "token_loss_backward logits")?;
    check_len(dlogits, n_rows * vocab, "token_loss_backward dlogits")?;
    check_len(stats, n_rows * stat::STATS, "token_loss_backward stats")?;
    check_idx(rows.target, n_rows, "token_loss_backward target")?;
    if let Some(&bad) = rows.target.host.iter().find(|&&t| t as usize >= vocab) {
        return Err(Error::invalid(format!(
            "token_loss_backward: target {bad} outside a vocabulary of {vocab}"
        )));
    }
    let mut per_row = vec![
        (rows.old_logp, "token_loss_backward old_logp"),
        (rows.adv, "token_loss_backward adv"),
        (rows.weight, "token_loss_backward weight"),
    ];
    if let Some(r) = rows.ref_logp {
        per_row.push((r, "token_loss_backward ref_logp"));
    }
    for (b, what) in per_row {
        check_len(b, n_rows, what)?;
        b.expect(DType::F32, what)?;
    }
    let kernel = match dlogits.dtype() {
        DType::Bf16 => "token_loss_backward_bf16",
        DType::F32 => "token_loss_backward_f32",
    };
    let kl_type = match cfg.kl {
        KlType::K1 => 0,
        KlType::K2 => 1,
        KlType::K3 => 2,
        KlType::LowVarKl => 3,
    };
    let args = [
        ptr(dlogits.ptr()),
        ptr(stats.expect(DType::F32, "token_loss_backward stats")?),
        ptr(logits.expect(DType::F32, "token_loss_backward logits")?),
        ptr(rows.target.buf.ptr()),
        ptr(rows.old_logp.ptr()),
        ptr(rows.ref_logp.map_or(DevicePtr::NULL, |b| b.ptr())),
        ptr(rows.adv.ptr()),
        ptr(rows.weight.ptr()),
        int(n_rows, "rows")?,
        int(vocab, "vocab")?,
        KernelArg::F32(cfg.eps_low as f32),
        KernelArg::F32(cfg.eps_high as f32),
        KernelArg::I32(cfg.clip_c.is_some() as i32),
        KernelArg::F32(cfg.clip_c.unwrap_or(0.0) as f32),
        KernelArg::I32(kl_type),
        KernelArg::F32(cfg.beta as f32),
        KernelArg::F32(cfg.entropy_coef as f32),
        KernelArg::I32(cfg.cross_entropy as i32),
    ];
    launch(
        &**be.device(),
        kernel,
        Launch::new([row_blocks(n_rows, 65535), 1, 1], loss_threads(vocab)),
        &args,
    )
}

/// The optimizer's copy of the new parameter: a bf16 buffer is written by the step
/// kernel (its pointer); an f32 one is a device copy afterwards (`Some`).
fn optimizer_copy<'a>(
    copy: Option<&'a mut CudaBuf>,
    n: usize,
    what: &str,
) -> Result<(DevicePtr, Option<&'a mut CudaBuf>)> {
    match copy {
        None => Ok((DevicePtr::NULL, None)),
        Some(c) => {
            check_len(c, n, what)?;
            match c.dtype() {
                DType::Bf16 => Ok((c.ptr(), None)),
                DType::F32 => Ok((DevicePtr::NULL, Some(c))),
            }
        }
    }
}

/// adamw_step_f32: grid-stride, 256 threads, 4 elements per thread per step.
#[allow(clippy::too_many_arguments)]
pub fn adamw_step(
    be: &CudaBackend,
    param: &mut CudaBuf,
    m: &mut CudaBuf,
    v: &mut CudaBuf,
    copy: Option<&mut CudaBuf>,
    grad: &CudaBuf,
    opt: &AdamW,
    step: u64,
    grad_scale: f32,
) -> Result<()> {
    let n = param.len();
    for (b, what) in [
        (&*param, "adamw param"),
        (&*m, "adamw m"),
        (&*v, "adamw v"),
        (grad, "adamw grad"),
    ] {
        check_len(b, n, what)?;
        b.expect(DType::F32, what)?;
    }
    if step == 0 {
        return Err(Error::invalid("adamw_step: steps count from 1"));
    }
    let (copy_bf16, copy_f32) = optimizer_copy(copy, n, "adamw copy")?;
    let (bc1, bc2) = opt.bias_corrections(step);
    let args = [
        ptr(param.ptr()),
        ptr(m.ptr()),
        ptr(v.ptr()),
        ptr(copy_bf16),
        ptr(grad.ptr()),
        int(n, "n")?,
        KernelArg::F32(opt.lr),
        KernelArg::F32(opt.beta1),
        KernelArg::F32(opt.beta2),
        KernelArg::F32(opt.eps),
        KernelArg::F32(opt.weight_decay),
        KernelArg::F32(bc1),
        KernelArg::F32(bc2),
        KernelArg::F32(grad_scale),
    ];
    let dev = &**be.device();
    launch(
        dev,
        "adamw_step_f32",
        Launch::new([grid_1d(n, 256 * 4), 1, 1], 256),
        &args,
    )?;
    match copy_f32 {
        Some(c) => dev.copy(c.ptr(), param.ptr(), param.bytes()),
        None => Ok(()),
    }
}

/// sgd_step_f32: grid-stride, 256 threads, 4 elements per thread per step.
pub fn sgd_step(
    be: &CudaBackend,
    param: &mut CudaBuf,
    copy: Option<&mut CudaBuf>,
    grad: &CudaBuf,
    lr: f32,
    weight_decay: f32,
    grad_scale: f32,
) -> Result<()> {
    let n = param.len();
    param.expect(DType::F32, "sgd param")?;
    check_len(grad, n, "sgd grad")?;
    grad.expect(DType::F32, "sgd grad")?;
    let (copy_bf16, copy_f32) = optimizer_copy(copy, n, "sgd copy")?;
    let args = [
        ptr(param.ptr()),
        ptr(copy_bf16),
        ptr(grad.ptr()),
        int(n, "n")?,
        KernelArg::F32(lr),
        KernelArg::F32(weight_decay),
        KernelArg::F32(grad_scale),
    ];
    let dev = &**be.device();
    launch(
        dev,
        "sgd_step_f32",
        Launch::new([grid_1d(n, 256 * 4), 1, 1], 256),
        &args,
    )?;
    match copy_f32 {
        Some(c) => dev.copy(c.ptr(), param.ptr(), param.bytes()),
        None => Ok(()),
    }
}

/// Blocks of sum_squares (each writes one f64 partial; the host adds them in order).
const SUMSQ_MAX_BLOCKS: usize = 1024;

/// sum_squares_{f32,bf16}: grid-stride, 256 threads, one f64 partial per block, the
/// partials added on the host in block order.
pub fn sum_squares(be: &CudaBackend, buf: &CudaBuf) -> Result<f64> {
    let n = buf.len();
    if n == 0 {
        return Ok(0.0);
    }
    let kernel = match buf.dtype() {
        DType::Bf16 => "sum_squares_bf16",
        DType::F32 => "sum_squares_f32",
    };
    let blocks = n.div_ceil(256 * 8).min(SUMSQ_MAX_BLOCKS);
    let partial = CudaBuf::alloc(be.device(), blocks * 2, DType::F32)?; // f64 = two 4-byte words
    let args = [ptr(partial.ptr()), ptr(buf.ptr()), int(n, "n")?];
    let dev = &**be.device();
    launch(dev, kernel, Launch::new([blocks as u32, 1, 1], 256), &args)?;
    let mut bytes = vec![0u8; blocks * 8];
    dev.download(partial.ptr(), &mut bytes)?;
    Ok(bytes
        .chunks_exact(8)
        .map(|c| f64::from_le_bytes(c.try_into().expect("8 bytes")))
        .sum())
}

/// Same dtype: a device copy; otherwise cast_f32_to_bf16 / cast_bf16_to_f32
/// (grid-stride, 256 threads, 8 elements per thread per step).
pub fn copy_convert(be: &CudaBackend, dst: &mut CudaBuf, src: &CudaBuf) -> Result<()> {
    let n = src.len();
    check_len(dst, n, "copy_convert dst")?;
    let dev = &**be.device();
    let kernel = match (dst.dtype(), src.dtype()) {
        (a, b) if a == b => return dev.copy(dst.ptr(), src.ptr(), src.bytes()),
        (DType::Bf16, DType::F32) => "cast_f32_to_bf16",
        (DType::F32, DType::Bf16) => "cast_bf16_to_f32",
        _ => unreachable!("two dtypes"),
    };
    let args = [ptr(dst.ptr()), ptr(src.ptr()), int(n, "n")?];
    launch(
        dev,
        kernel,
        Launch::new([grid_1d(n, 256 * 8), 1, 1], 256),
        &args,
    )
}
