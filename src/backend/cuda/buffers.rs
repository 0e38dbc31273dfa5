//! Device buffers of the CUDA backend: typed, sized, freed on drop.

use super::device::{Device, DevicePtr};
use crate::{Error, Result};
use std::sync::Arc;

/// Element type of a device buffer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DType {
    Bf16,
    F32,
}

impl DType {
    pub fn size(self) -> usize {
        match self {
            DType::Bf16 => 2,
            DType::F32 => 4,
        }
    }
}

/// A device allocation of `len` elements of `dtype`.
pub struct CudaBuf {
    pub(super) ptr: DevicePtr,
    pub(super) len: usize,
    /// Elements allocated (`len` may be set lower, `set_len`).
    cap: usize,
    pub(super) dtype: DType,
    dev: Arc<dyn Device>,
}

impl CudaBuf {
    pub(super) fn alloc(dev: &Arc<dyn Device>, len: usize, dtype: DType) -> Result<Self> {
        let ptr = dev.alloc((len * dtype.size()).max(1))?;
        Ok(CudaBuf {
            ptr,
            len,
            cap: len,
            dtype,
            dev: dev.clone(),
        })
    }

    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    pub fn dtype(&self) -> DType {
        self.dtype
    }

    pub fn ptr(&self) -> DevicePtr {
        self.ptr
    }

    pub fn bytes(&self) -> usize {
        self.len * self.dtype.size()
    }

    /// Use the first `len` allocated elements (at most the allocation).
    pub(super) fn set_len(&mut self, len: usize) -> Result<()> {
        if len > self.cap {
            return Err(Error::invalid(format!(
                "set_len: {len} elements in a buffer of {}",
                self.cap
            )));
        }
        self.len = len;
        Ok(())
    }

    /// Fail unless this buffer holds `dtype`.
    pub(super) fn expect(&self, dtype: DType, what: &str) -> Result<DevicePtr> {
        if self.dtype != dtype {
            return Err(Error::invalid(format!(
                "{what}: expected a {dtype:?} buffer, got {:?}",
                self.dtype
            )));
        }
        Ok(self.ptr)
    }
}

impl Drop for CudaBuf {
    fn drop(&mut self) {
        self.dev.free(self.ptr);
    }
}

/// A device array of `i32` indices with its host copy (the backend plans launches,
/// such as attention tiles, from the host copy).
pub struct CudaIdx {
    pub(super) buf: CudaBuf,
    pub(super) host: Vec<u32>,
}

impl CudaIdx {
    pub fn host(&self) -> &[u32] {
        &self.host
    }
}

/// f32 values as little-endian bytes of `dtype` (bf16 rounds to nearest even).
pub fn encode(values: &[f32], dtype: DType) -> Vec<u8> {
    match dtype {
        DType::F32 => values.iter().flat_map(|v| v.to_le_bytes()).collect(),
        DType::Bf16 => values
            .iter()
            .flat_map(|&v| half::bf16::from_f32(v).to_le_bytes())
            .collect(),
    }
}

/// Little-endian bytes of `dtype` back to f32.
pub fn decode(bytes: &[u8], dtype: DType) -> Vec<f32> {
    match dtype {
        DType::F32 => bytes
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect(),
        DType::Bf16 => bytes
            .chunks_exact(2)
            .map(|c| half::bf16::from_le_bytes([c[0], c[1]]).to_f32())
            .collect(),
    }
}
