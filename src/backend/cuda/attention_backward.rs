//! Attention for training on the CUDA backend: the forward pass that saves the
//! log-sum-exp, and the FlashAttention-2 backward (`kernels/attention_backward.cu`).

use super::backend::CudaBackend;
use super::buffers::{CudaBuf, CudaIdx};
use crate::backend::AttnDims;
use crate::{Error, Result};

#[allow(clippy::too_many_arguments)]
pub fn attention_saved(
    _be: &CudaBackend,
    _out: &mut CudaBuf,
    _lse: &mut CudaBuf,
    _q: &CudaBuf,
    _k_cache: &CudaBuf,
    _v_cache: &CudaBuf,
    _slot: &CudaIdx,
    _pos: &CudaIdx,
    _d: AttnDims,
    _scale: f32,
) -> Result<()> {
    Err(Error::Unsupported(
        "attention_saved on CUDA (in progress)".into(),
    ))
}

#[allow(clippy::too_many_arguments)]
pub fn attention_backward(
    _be: &CudaBackend,
    _dq: &mut CudaBuf,
    _dk_cache: &mut CudaBuf,
    _dv_cache: &mut CudaBuf,
    _dout: &CudaBuf,
    _out: &CudaBuf,
    _lse: &CudaBuf,
    _q: &CudaBuf,
    _k_cache: &CudaBuf,
    _v_cache: &CudaBuf,
    _slot: &CudaIdx,
    _pos: &CudaIdx,
    _d: AttnDims,
    _scale: f32,
) -> Result<()> {
    Err(Error::Unsupported(
        "attention_backward on CUDA (in progress)".into(),
    ))
}
