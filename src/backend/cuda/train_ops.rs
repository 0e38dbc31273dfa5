//! The training ops of the CUDA backend other than attention: backward kernels,
//! GEMM gradients through cuBLAS, the fused token loss, the optimizers.

use super::backend::CudaBackend;
use super::buffers::{CudaBuf, CudaIdx};
use crate::backend::{AttnDims, LossConfig, LossRows};
use crate::train::AdamW;
use crate::{Error, Result};

fn todo(what: &str) -> Result<()> {
    Err(Error::Unsupported(format!("{what} on CUDA (in progress)")))
}

pub fn kv_gather(
    _be: &CudaBackend,
    _x: &mut CudaBuf,
    _cache: &CudaBuf,
    _slot: &CudaIdx,
    _pos: &CudaIdx,
    _d: AttnDims,
) -> Result<()> {
    todo("kv_gather")
}

#[allow(clippy::too_many_arguments)]
pub fn rmsnorm_backward(
    _be: &CudaBackend,
    _dx: &mut CudaBuf,
    _dw_accum: Option<&mut CudaBuf>,
    _dy: &CudaBuf,
    _x: &CudaBuf,
    _weight: &CudaBuf,
    _rows: usize,
    _dim: usize,
    _eps: f32,
) -> Result<()> {
    todo("rmsnorm_backward")
}

pub fn rope_backward(
    _be: &CudaBackend,
    _dx: &mut CudaBuf,
    _pos: &CudaIdx,
    _tokens: usize,
    _heads: usize,
    _hd: usize,
    _theta: f32,
) -> Result<()> {
    todo("rope_backward")
}

pub fn swiglu_backward(
    _be: &CudaBackend,
    _dgate: &mut CudaBuf,
    _dup: &mut CudaBuf,
    _dout: &CudaBuf,
    _gate: &CudaBuf,
    _up: &CudaBuf,
    _n: usize,
) -> Result<()> {
    todo("swiglu_backward")
}

#[allow(clippy::too_many_arguments)]
pub fn linear_backward_input(
    _be: &CudaBackend,
    _dx: &mut CudaBuf,
    _dout: &CudaBuf,
    _w: &CudaBuf,
    _m: usize,
    _n: usize,
    _k: usize,
    _accumulate: bool,
) -> Result<()> {
    todo("linear_backward_input")
}

#[allow(clippy::too_many_arguments)]
pub fn linear_backward_weight(
    _be: &CudaBackend,
    _dw_accum: &mut CudaBuf,
    _db_accum: Option<&mut CudaBuf>,
    _dout: &CudaBuf,
    _x: &CudaBuf,
    _m: usize,
    _n: usize,
    _k: usize,
) -> Result<()> {
    todo("linear_backward_weight")
}

pub fn scatter_rows(
    _be: &CudaBackend,
    _dst: &mut CudaBuf,
    _src: &CudaBuf,
    _rows_idx: &CudaIdx,
    _rows: usize,
    _dim: usize,
) -> Result<()> {
    todo("scatter_rows")
}

#[allow(clippy::too_many_arguments)]
pub fn token_loss_backward(
    _be: &CudaBackend,
    _dlogits: &mut CudaBuf,
    _stats: &mut CudaBuf,
    _logits: &CudaBuf,
    _rows: &LossRows<'_, CudaBackend>,
    _n_rows: usize,
    _vocab: usize,
    _cfg: &LossConfig,
) -> Result<()> {
    todo("token_loss_backward")
}

#[allow(clippy::too_many_arguments)]
pub fn adamw_step(
    _be: &CudaBackend,
    _param: &mut CudaBuf,
    _m: &mut CudaBuf,
    _v: &mut CudaBuf,
    _copy: Option<&mut CudaBuf>,
    _grad: &CudaBuf,
    _opt: &AdamW,
    _step: u64,
    _grad_scale: f32,
) -> Result<()> {
    todo("adamw_step")
}

pub fn sgd_step(
    _be: &CudaBackend,
    _param: &mut CudaBuf,
    _copy: Option<&mut CudaBuf>,
    _grad: &CudaBuf,
    _lr: f32,
    _weight_decay: f32,
    _grad_scale: f32,
) -> Result<()> {
    todo("sgd_step")
}

pub fn sum_squares(_be: &CudaBackend, _buf: &CudaBuf) -> Result<f64> {
    Err(Error::Unsupported(
        "sum_squares on CUDA (in progress)".into(),
    ))
}

pub fn copy_convert(_be: &CudaBackend, _dst: &mut CudaBuf, _src: &CudaBuf) -> Result<()> {
    todo("copy_convert")
}
