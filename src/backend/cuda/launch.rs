//! Typed launchers: the one place each kernel's argument list is written, plus the
//! launch-geometry helpers the backend shares.

use super::attention_plan::TILE_ROWS;
use super::backend::{plan_decode, CudaBackend};
use super::buffers::{CudaBuf, CudaIdx, DType};
use super::device::{Device, DevicePtr, KernelArg, LaunchConfig};
use crate::backend::{AttnDims, Backend, PagedDims};
use crate::{Error, Result};

/// Grid, block and dynamic shared memory of one launch.
pub struct Launch(LaunchConfig);

impl Launch {
    pub fn new(grid: [u32; 3], threads: u32) -> Self {
        Launch(LaunchConfig {
            grid,
            block: [threads, 1, 1],
            shared_bytes: 0,
        })
    }
}

pub fn ptr(p: DevicePtr) -> KernelArg {
    KernelArg::Ptr(p)
}

/// A dimension as an `int` kernel argument, refusing values past the i32 range.
pub fn int(v: usize, what: &str) -> Result<KernelArg> {
    i32::try_from(v)
        .map(KernelArg::I32)
        .map_err(|_| Error::invalid(format!("{what} = {v} exceeds the i32 range")))
}

/// Blocks for a grid-stride loop over `n` items, `per_block` items per block per
/// pass, capped so huge tensors loop instead of launching millions of blocks.
pub fn grid_1d(n: usize, per_block: usize) -> u32 {
    n.div_ceil(per_block).clamp(1, 4096) as u32
}

pub fn launch(dev: &dyn Device, kernel: &'static str, l: Launch, args: &[KernelArg]) -> Result<()> {
    if l.0.grid.contains(&0) {
        return Ok(()); // nothing to do (an empty batch)
    }
    dev.launch(kernel, l.0, args)
}

/// rmsnorm_forward_bf16: one block per row.
pub fn rmsnorm_bf16(
    dev: &dyn Device,
    out: &mut CudaBuf,
    x: &CudaBuf,
    w: &CudaBuf,
    rows: usize,
    dim: usize,
    eps: f32,
) -> Result<()> {
    let threads = if dim >= 1024 { 256 } else { 128 };
    let args = [
        ptr(out.expect(DType::Bf16, "rmsnorm out")?),
        KernelArg::Ptr(DevicePtr(0)), // rstd: not saved in inference
        ptr(x.expect(DType::Bf16, "rmsnorm x")?),
        ptr(w.expect(DType::Bf16, "rmsnorm weight")?),
        int(rows, "rows")?,
        int(dim, "dim")?,
        KernelArg::F32(eps),
    ];
    launch(
        dev,
        "rmsnorm_forward_bf16",
        Launch::new([rows as u32, 1, 1], threads),
        &args,
    )
}

/// attention_prefill_d{32,64,128,256}_forward_bf16: grid (tiles, heads), 128 threads.
/// `lse` (f32 `[tokens, heads]`) is written when given (training saves it). With
/// `paged` (the block table and its dims), tiles name table rows and the caches are
/// paged (`d.slots`, `d.max_len` unused).
#[allow(clippy::too_many_arguments)]
pub fn attention_prefill(
    dev: &dyn Device,
    out: &mut CudaBuf,
    lse: Option<&mut CudaBuf>,
    q: &CudaBuf,
    k_cache: &CudaBuf,
    v_cache: &CudaBuf,
    tiles: &CudaIdx,
    paged: Option<(&CudaIdx, PagedDims)>,
    d: AttnDims,
    padded_dim: usize,
    scale: f32,
) -> Result<()> {
    let kernel = match padded_dim {
        32 => "attention_prefill_d32_forward_bf16",
        64 => "attention_prefill_d64_forward_bf16",
        128 => "attention_prefill_d128_forward_bf16",
        256 => "attention_prefill_d256_forward_bf16",
        other => {
            return Err(Error::Unsupported(format!(
                "attention head_dim padding {other}"
            )))
        }
    };
    debug_assert!(tiles.host().chunks(4).all(|t| t[1] as usize <= TILE_ROWS));
    let n_tiles = tiles.host().len() / 4;
    let args = [
        ptr(out.expect(DType::Bf16, "attention out")?),
        ptr(match lse {
            Some(l) => l.expect(DType::F32, "attention lse")?,
            None => DevicePtr(0), // inference: not saved
        }),
        ptr(q.expect(DType::Bf16, "attention q")?),
        ptr(k_cache.expect(DType::Bf16, "k cache")?),
        ptr(v_cache.expect(DType::Bf16, "v cache")?),
        ptr(tiles.buf.ptr()),
        ptr(paged.map_or(DevicePtr(0), |(t, _)| t.buf.ptr())),
        int(paged.map_or(0, |(_, p)| p.table_width), "table_width")?,
        int(paged.map_or(1, |(_, p)| p.block_size), "block_size")?,
        int(d.heads, "heads")?,
        int(d.kv_heads, "kv_heads")?,
        int(d.head_dim, "head_dim")?,
        int(d.max_len, "max_len")?,
        KernelArg::F32(scale),
    ];
    launch(
        dev,
        kernel,
        // head_dim 256 splits the output dims over two blocks (see the kernel header)
        Launch::new(
            [
                n_tiles as u32,
                d.heads as u32,
                padded_dim.div_ceil(128) as u32,
            ],
            128,
        ),
        &args,
    )
}

/// attention_decode_split + attention_decode_combine (flash decoding).
#[allow(clippy::too_many_arguments)]
pub fn attention_decode(
    dev: &dyn Device,
    be: &CudaBackend,
    out: &mut CudaBuf,
    q: &CudaBuf,
    k_cache: &CudaBuf,
    v_cache: &CudaBuf,
    slot: &CudaIdx,
    pos: &CudaIdx,
    d: AttnDims,
    scale: f32,
    max_keys: usize,
) -> Result<()> {
    if d.head_dim > 256 || d.head_dim % 2 != 0 {
        return Err(Error::Unsupported(format!(
            "decode attention head_dim {}",
            d.head_dim
        )));
    }
    let group = d.heads / d.kv_heads;
    let head_blocks = group.div_ceil(8);
    let (chunk, splits) = plan_decode(d.tokens, d.kv_heads * head_blocks, max_keys);
    let part_o = be.zeros_f32(splits * d.tokens * d.heads * d.head_dim)?;
    let part_ml = be.zeros_f32(splits * d.tokens * d.heads * 2)?;
    let args = [
        ptr(part_o.ptr()),
        ptr(part_ml.ptr()),
        ptr(q.expect(DType::Bf16, "attention q")?),
        ptr(k_cache.expect(DType::Bf16, "k cache")?),
        ptr(v_cache.expect(DType::Bf16, "v cache")?),
        ptr(slot.buf.ptr()),
        ptr(pos.buf.ptr()),
        int(d.tokens, "tokens")?,
        int(d.heads, "heads")?,
        int(d.kv_heads, "kv_heads")?,
        int(d.head_dim, "head_dim")?,
        int(d.max_len, "max_len")?,
        int(chunk, "chunk")?,
        KernelArg::F32(scale),
    ];
    let grid = [
        d.tokens as u32,
        (d.kv_heads * head_blocks) as u32,
        splits as u32,
    ];
    launch(
        dev,
        "attention_decode_split_forward_bf16",
        Launch::new(grid, 128),
        &args,
    )?;
    let args = [
        ptr(out.expect(DType::Bf16, "attention out")?),
        KernelArg::Ptr(DevicePtr(0)),
        ptr(part_o.ptr()),
        ptr(part_ml.ptr()),
        int(d.tokens, "tokens")?,
        int(d.heads, "heads")?,
        int(d.head_dim, "head_dim")?,
        int(splits, "splits")?,
    ];
    launch(
        dev,
        "attention_decode_combine_forward_bf16",
        Launch::new([d.tokens as u32, d.heads as u32, 1], 64),
        &args,
    )
}

/// The decode kernel instantiated for `head_dim` and the GQA group: (name, HD, GH).
pub fn paged_decode_kernel(head_dim: usize, group: usize) -> Result<(&'static str, usize, usize)> {
    const NAMES: [[&str; 3]; 3] = [
        [
            "attention_paged_decode_d64_g2_bf16",
            "attention_paged_decode_d64_g4_bf16",
            "attention_paged_decode_d64_g8_bf16",
        ],
        [
            "attention_paged_decode_d128_g2_bf16",
            "attention_paged_decode_d128_g4_bf16",
            "attention_paged_decode_d128_g8_bf16",
        ],
        [
            "attention_paged_decode_d256_g2_bf16",
            "attention_paged_decode_d256_g4_bf16",
            "attention_paged_decode_d256_g8_bf16",
        ],
    ];
    if head_dim == 0 || head_dim % 8 != 0 || head_dim > 256 {
        return Err(Error::Unsupported(format!(
            "paged decode attention head_dim {head_dim} (a multiple of 8 up to 256)"
        )));
    }
    let hd = [64, 128, 256]
        .iter()
        .position(|&d| head_dim <= d)
        .unwrap_or(2);
    let gh = [2, 4, 8].iter().position(|&g| group <= g).unwrap_or(2);
    Ok((NAMES[hd][gh], [64, 128, 256][hd], [2, 4, 8][gh]))
}

/// Keys per split of the paged decode kernel (`PD_CHUNK` in attention_paged.cu).
pub const PAGED_DECODE_CHUNK: usize = 512;

/// Splits of the paged decode kernel for `d` (fixed by the table's reach, so the
/// launch is the same every step).
pub fn paged_decode_splits(d: &PagedDims) -> usize {
    d.max_context().div_ceil(PAGED_DECODE_CHUNK).max(1)
}

/// f32 elements of the paged decode workspace: part_o then part_ml.
pub fn paged_decode_work_len(d: &PagedDims) -> usize {
    paged_decode_splits(d) * d.tokens * d.heads * (d.head_dim + 2)
}

/// attention_paged_decode_d*_g* + attention_paged_decode_combine: no allocation,
/// no host reads (capturable).
#[allow(clippy::too_many_arguments)]
pub fn attention_paged_decode(
    dev: &dyn Device,
    out: &mut CudaBuf,
    work: &mut CudaBuf,
    q: &CudaBuf,
    k_cache: &CudaBuf,
    v_cache: &CudaBuf,
    table: &CudaIdx,
    seq: &CudaIdx,
    pos: &CudaIdx,
    d: PagedDims,
    scale: f32,
) -> Result<()> {
    let group = d.heads / d.kv_heads;
    let (kernel, _, gh) = paged_decode_kernel(d.head_dim, group)?;
    let splits = paged_decode_splits(&d);
    let need = paged_decode_work_len(&d);
    if work.len() < need || work.dtype() != DType::F32 {
        return Err(Error::invalid(format!(
            "paged decode workspace: {} elements of {:?}, need {need} of F32",
            work.len(),
            work.dtype()
        )));
    }
    let part_o = work.ptr();
    let part_ml = DevicePtr(part_o.0 + (splits * d.tokens * d.heads * d.head_dim * 4) as u64);
    let args = [
        ptr(part_o),
        ptr(part_ml),
        ptr(q.expect(DType::Bf16, "attention q")?),
        ptr(k_cache.expect(DType::Bf16, "k cache")?),
        ptr(v_cache.expect(DType::Bf16, "v cache")?),
        ptr(table.buf.ptr()),
        ptr(seq.buf.ptr()),
        ptr(pos.buf.ptr()),
        int(d.tokens, "tokens")?,
        int(d.heads, "heads")?,
        int(d.kv_heads, "kv_heads")?,
        int(d.head_dim, "head_dim")?,
        int(d.table_width, "table_width")?,
        int(d.block_size, "block_size")?,
        KernelArg::F32(scale),
    ];
    let grid = [
        d.tokens as u32,
        (d.kv_heads * group.div_ceil(gh)) as u32,
        splits as u32,
    ];
    launch(dev, kernel, Launch::new(grid, 128), &args)?;
    let args = [
        ptr(out.expect(DType::Bf16, "attention out")?),
        ptr(part_o),
        ptr(part_ml),
        ptr(pos.buf.ptr()),
        int(d.tokens, "tokens")?,
        int(d.heads, "heads")?,
        int(d.head_dim, "head_dim")?,
    ];
    launch(
        dev,
        "attention_paged_decode_combine_bf16",
        Launch::new([d.tokens as u32, d.heads as u32, 1], 128),
        &args,
    )
}
