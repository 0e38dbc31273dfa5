//! The small device interface the cuda backend is written against, with two
//! implementations: the real GPU (`gpu`, through cudarc) and the host emulator
//! (`emu`, host memory and the C++ emulation of `kernels/`).
//!
//! Device memory is addressed by `DevicePtr` (a device address on a GPU, a host address
//! in the emulator); kernels are launched by name with a `LaunchConfig` and
//! `KernelArg`s, which every implementation checks against the signature build.rs
//! parsed from the source (`check_args`) before launching. GEMMs (`GemmEx`) are not
//! kernels of ours: cuBLAS on a GPU, a CPU GEMM in the emulator.

use crate::backend::MemoryUse;
use crate::kernels::{self, ArgKind, KernelSig};
use crate::{Error, Result};
use std::ffi::c_void;
use std::sync::atomic::{AtomicUsize, Ordering};

/// An address in device memory. `DevicePtr(0)` is null (kernels take it for optional
/// outputs).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct DevicePtr(pub u64);

impl DevicePtr {
    pub const NULL: DevicePtr = DevicePtr(0);

    pub fn is_null(self) -> bool {
        self.0 == 0
    }

    /// The address `bytes` further on.
    pub fn offset(self, bytes: usize) -> DevicePtr {
        DevicePtr(self.0 + bytes as u64)
    }
}

/// Grid and block dimensions (x, y, z) and dynamic shared memory of a launch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LaunchConfig {
    pub grid: [u32; 3],
    pub block: [u32; 3],
    pub shared_bytes: u32,
}

impl LaunchConfig {
    /// A 1-D grid of 1-D blocks.
    pub fn linear(grid: u32, block: u32, shared_bytes: u32) -> Self {
        LaunchConfig {
            grid: [grid, 1, 1],
            block: [block, 1, 1],
            shared_bytes,
        }
    }

    /// Threads per block.
    pub fn threads(&self) -> u64 {
        self.block.iter().map(|&b| b as u64).product()
    }

    /// The limits every CUDA device shares: 1..=1024 threads per block, block z <= 64,
    /// grid x < 2^31, grid y and z <= 65535, at most 227 KiB of dynamic shared memory.
    pub fn validate(&self, kernel: &str) -> Result<()> {
        let t = self.threads();
        if t == 0 || t > 1024 || self.block[2] > 64 {
            return Err(Error::invalid(format!(
                "kernel {kernel}: block {:?} has {t} threads (1..=1024, z <= 64)",
                self.block
            )));
        }
        if self.grid.contains(&0)
            || self.grid[0] > 0x7fff_ffff
            || self.grid[1] > 65535
            || self.grid[2] > 65535
        {
            return Err(Error::invalid(format!(
                "kernel {kernel}: grid {:?} is out of range (x 1..2^31-1, y and z 1..65535)",
                self.grid
            )));
        }
        if self.shared_bytes > 227 * 1024 {
            return Err(Error::invalid(format!(
                "kernel {kernel}: {} bytes of dynamic shared memory (at most 227 KiB)",
                self.shared_bytes
            )));
        }
        Ok(())
    }
}

/// One kernel argument, by value.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum KernelArg {
    Ptr(DevicePtr),
    I32(i32),
    U32(u32),
    F32(f32),
    U64(u64),
}

impl KernelArg {
    pub fn kind(&self) -> ArgKind {
        match self {
            KernelArg::Ptr(_) => ArgKind::Ptr,
            KernelArg::I32(_) => ArgKind::I32,
            KernelArg::U32(_) => ArgKind::U32,
            KernelArg::F32(_) => ArgKind::F32,
            KernelArg::U64(_) => ArgKind::U64,
        }
    }

    /// The value's bytes in the low end of a u64 (little-endian): what a kernel reads
    /// through a pointer to it, 4 or 8 bytes.
    pub fn slot(&self) -> u64 {
        match *self {
            KernelArg::Ptr(p) => p.0,
            KernelArg::I32(v) => v as u32 as u64,
            KernelArg::U32(v) => v as u64,
            KernelArg::F32(v) => v.to_bits() as u64,
            KernelArg::U64(v) => v,
        }
    }
}

impl From<DevicePtr> for KernelArg {
    fn from(p: DevicePtr) -> Self {
        KernelArg::Ptr(p)
    }
}
impl From<i32> for KernelArg {
    fn from(v: i32) -> Self {
        KernelArg::I32(v)
    }
}
impl From<u32> for KernelArg {
    fn from(v: u32) -> Self {
        KernelArg::U32(v)
    }
}
impl From<f32> for KernelArg {
    fn from(v: f32) -> Self {
        KernelArg::F32(v)
    }
}
impl From<u64> for KernelArg {
    fn from(v: u64) -> Self {
        KernelArg::U64(v)
    }
}

/// The signature of `kernel`, after checking `args` against it: one error naming the
/// kernel and its full signature on an unknown name, a wrong count or a wrong kind.
pub fn check_args(kernel: &str, args: &[KernelArg]) -> Result<&'static KernelSig> {
    let (_, sig) =
        kernels::find(kernel).ok_or_else(|| Error::invalid(format!("unknown kernel {kernel}")))?;
    if sig.args.len() != args.len() {
        return Err(Error::invalid(format!(
            "kernel {kernel} takes {} arguments, got {}: {}",
            sig.args.len(),
            args.len(),
            sig.describe()
        )));
    }
    for (i, (want, got)) in sig.args.iter().zip(args).enumerate() {
        if *want != got.kind() {
            return Err(Error::invalid(format!(
                "kernel {kernel}: argument {i} ({}) must be {want}, got {}: {}",
                sig.arg_names[i],
                got.kind(),
                sig.describe()
            )));
        }
    }
    Ok(sig)
}

/// Argument values laid out for a launch: `pointers()` is cuLaunchKernel's
/// `kernelParams` (and the emulator's `args`), valid while the pack lives.
pub struct ArgPack {
    slots: Vec<u64>,
}

impl ArgPack {
    pub fn new(args: &[KernelArg]) -> Self {
        ArgPack {
            slots: args.iter().map(KernelArg::slot).collect(),
        }
    }

    pub fn pointers(&mut self) -> Vec<*mut c_void> {
        self.slots
            .iter_mut()
            .map(|s| s as *mut u64 as *mut c_void)
            .collect()
    }
}

/// A Hugging Face `Linear` on the device: `out[m, n] = x[m, k] · w[n, k]ᵀ`, row-major,
/// x and w bf16, f32 accumulation; `out` is f32 when `out_f32`, else bf16 (rounded
/// once, to nearest even). The forward's special case of [`GemmEx`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GemmArgs {
    pub out: DevicePtr,
    pub out_f32: bool,
    pub x: DevicePtr,
    pub w: DevicePtr,
    pub m: usize,
    pub n: usize,
    pub k: usize,
}

/// The general GEMM of the backend, row-major:
///
/// ```text
///     out[m, n] (= or +=) op(x)[m, k] · op(w)[k, n]
/// ```
///
/// `op(x)` is `x` stored `[m, k]`, or `xᵀ` with `x` stored `[k, m]` when `trans_x`;
/// `op(w)` is `w` stored `[k, n]`, or `wᵀ` with `w` stored `[n, k]` when `trans_w`
/// (the HF Linear weight). x and w are bf16; the products are accumulated in f32;
/// `out` is f32 when `out_f32`, else bf16. With `accumulate` the old `out` is added
/// (beta = 1: `out = x·w + out`, rounded once for a bf16 `out`), else overwritten.
///
/// The three GEMMs of a Linear layer `y[m, n] = x[m, k] · w[n, k]ᵀ`:
/// - forward: `GemmEx::linear` (trans_w);
/// - input gradient `dx[m, k] = dy[m, n] · w[n, k]`: x = dy, w = w, no transposes,
///   dims (m, k, n);
/// - weight gradient `dw[n, k] += dy[m, n]ᵀ · x[m, k]`: x = dy with `trans_x`, w = x,
///   dims (n, k, m), `accumulate` into an f32 `dw`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GemmEx {
    pub out: DevicePtr,
    pub out_f32: bool,
    pub x: DevicePtr,
    pub w: DevicePtr,
    pub m: usize,
    pub n: usize,
    pub k: usize,
    pub trans_x: bool,
    pub trans_w: bool,
    pub accumulate: bool,
}

impl GemmEx {
    /// The HF Linear forward `out[m, n] = x[m, k] · w[n, k]ᵀ` (= [`GemmArgs`]).
    pub fn linear(g: &GemmArgs) -> Self {
        GemmEx {
            out: g.out,
            out_f32: g.out_f32,
            x: g.x,
            w: g.w,
            m: g.m,
            n: g.n,
            k: g.k,
            trans_x: false,
            trans_w: true,
            accumulate: false,
        }
    }

    /// Elements of x, w and out the dims imply.
    pub fn lens(&self) -> (usize, usize, usize) {
        (self.m * self.k, self.k * self.n, self.m * self.n)
    }
}

/// Allocation, copies, kernel launches and GEMMs on one device. Launches are ordered; a
/// `download` sees the effect of every launch before it.
pub trait Device: Send + Sync {
    fn name(&self) -> String;
    fn alloc(&self, bytes: usize) -> Result<DevicePtr>;
    fn free(&self, p: DevicePtr);
    fn upload(&self, dst: DevicePtr, src: &[u8]) -> Result<()>;
    fn download(&self, src: DevicePtr, dst: &mut [u8]) -> Result<()>;
    fn launch(&self, kernel: &'static str, cfg: LaunchConfig, args: &[KernelArg]) -> Result<()>;
    fn synchronize(&self) -> Result<()>;
    /// Set `bytes` bytes at `p` to zero.
    fn zero(&self, p: DevicePtr, bytes: usize) -> Result<()>;
    /// Copy `bytes` bytes from `src` to `dst` (device to device, not overlapping).
    fn copy(&self, dst: DevicePtr, src: DevicePtr, bytes: usize) -> Result<()>;
    /// See `GemmArgs` (the HF Linear forward, `gemm_ex` with `GemmEx::linear`).
    fn gemm(&self, g: &GemmArgs) -> Result<()> {
        self.gemm_ex(&GemmEx::linear(g))
    }
    /// See `GemmEx`. cuBLAS on a GPU, a CPU GEMM in the emulator.
    fn gemm_ex(&self, g: &GemmEx) -> Result<()>;
    /// Bytes of the allocations made through `alloc` that are live now, and the most
    /// that were live at once (`MemoryCounter`).
    fn memory_use(&self) -> MemoryUse;
    /// The device's (free, total) memory in bytes, where it knows (`cuMemGetInfo`).
    fn memory_info(&self) -> Option<(usize, usize)> {
        None
    }
    /// Fill `bytes` bytes at `p` with a value no kernel output should keep (the
    /// emulator: NaN), when a cached block is handed out again. A no-op elsewhere.
    fn poison(&self, _p: DevicePtr, _bytes: usize) -> Result<()> {
        Ok(())
    }
    /// Whether a caching allocator above should ask for exactly the bytes it needs
    /// (the emulator: its guard zones then catch a write one past the end).
    fn exact_sizes(&self) -> bool {
        false
    }
    /// Start capturing the stream's launches and GEMMs into a graph (a GPU's stream
    /// capture). `Unsupported` where the device has none: the caching allocator
    /// above (`pool.rs`) then records and replays them itself.
    fn capture_begin(&self) -> Result<()> {
        Err(crate::Error::Unsupported(format!(
            "graph capture on {}",
            self.name()
        )))
    }
    /// End the capture begun by `capture_begin`; the graph's handle.
    fn capture_end(&self) -> Result<u64> {
        Err(crate::Error::Unsupported(format!(
            "graph capture on {}",
            self.name()
        )))
    }
    /// Launch a captured graph on the stream.
    fn replay(&self, _graph: u64) -> Result<()> {
        Err(crate::Error::Unsupported(format!(
            "graph replay on {}",
            self.name()
        )))
    }
    /// Free a captured graph.
    fn graph_free(&self, _graph: u64) {}
}

/// One operation recorded into a graph by a device without native capture.
#[derive(Debug, Clone)]
pub enum GraphOp {
    Launch {
        kernel: &'static str,
        cfg: LaunchConfig,
        args: Vec<KernelArg>,
    },
    Gemm(GemmEx),
}

/// Live and peak bytes of a device's allocations: `alloc` adds, `free` subtracts.
/// Only the device's own allocations count (not cuBLAS workspace, the CUDA context,
/// or what a stream-ordered allocator keeps cached).
#[derive(Debug, Default)]
pub struct MemoryCounter {
    live: AtomicUsize,
    peak: AtomicUsize,
}

impl MemoryCounter {
    pub fn add(&self, bytes: usize) {
        let now = self.live.fetch_add(bytes, Ordering::Relaxed) + bytes;
        self.peak.fetch_max(now, Ordering::Relaxed);
    }

    pub fn sub(&self, bytes: usize) {
        self.live.fetch_sub(bytes, Ordering::Relaxed);
    }

    pub fn get(&self) -> MemoryUse {
        MemoryUse {
            live_bytes: self.live.load(Ordering::Relaxed),
            peak_bytes: self.peak.load(Ordering::Relaxed),
        }
    }
}

/// A new allocation holding `data`.
pub fn upload_new<T: bytemuck::Pod>(dev: &dyn Device, data: &[T]) -> Result<DevicePtr> {
    let p = dev.alloc(std::mem::size_of_val(data))?;
    dev.upload(p, bytemuck::cast_slice(data))?;
    Ok(p)
}

/// `len` elements of type `T` from `src`.
pub fn download_vec<T: bytemuck::Pod>(
    dev: &dyn Device,
    src: DevicePtr,
    len: usize,
) -> Result<Vec<T>> {
    let mut v = vec![T::zeroed(); len];
    dev.download(src, bytemuck::cast_slice_mut(&mut v))?;
    Ok(v)
}
