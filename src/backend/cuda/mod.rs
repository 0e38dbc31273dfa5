//! The CUDA backend's device layer: the `Device` interface (`device`), the host
//! emulator that runs `kernels/*.cu` without a GPU (`emu`), and the real GPU through
//! cudarc (`gpu`, with run-time compilation by NVRTC in `nvrtc`).

mod attention_backward;
mod attention_plan;
pub mod backend;
pub mod buffers;
pub mod device;
pub mod emu;
pub mod gpu;
mod launch;
pub mod meta;
pub mod nvrtc;
pub mod pool;
mod train_ops;

pub use backend::CudaBackend;
