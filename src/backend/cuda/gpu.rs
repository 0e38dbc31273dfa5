//! The real GPU behind the `Device` interface, through cudarc (driver API).
//!
//! `GpuDevice::open(ordinal)` retains the device's primary context, makes one stream
//! for all work, compiles every embedded kernel source with NVRTC for the device's
//! own architecture (through the on-disk cache) and loads the CUBINs. `launch`
//! checks the arguments against the kernel's signature (from `kernels::find`) before
//! handing them to the driver. GEMMs go to cuBLAS (`blas`).
//!
//! cudarc loads libcuda / libcublas lazily and panics when one is missing, so every
//! entry point probes first and reports absence as a normal one-line error.

mod blas;

pub use blas::{Dtype, Gemm};

use super::device::{
    check_args, Device, DevicePtr, GemmEx, KernelArg, LaunchConfig, MemoryCounter,
};
use super::nvrtc::{self, Arch, Options};
use crate::kernels;
use crate::{Error, Result};
use cudarc::driver::{result as cu, sys, CudaContext, CudaFunction, CudaStream, PushKernelArg};
use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock};

#[cfg(target_endian = "big")]
compile_error!("kernel arguments travel in the low bytes of a u64 (little-endian only)");

/// A GPU, its stream, and the loaded kernels.
pub struct GpuDevice {
    ctx: Arc<CudaContext>,
    stream: Arc<CudaStream>,
    ordinal: usize,
    arch: Arch,
    description: String,
    functions: HashMap<&'static str, CudaFunction>,
    blas: OnceLock<std::result::Result<cudarc::cublas::CudaBlas, String>>,
    /// Bytes of each live allocation (for `memory_use`).
    sizes: Mutex<HashMap<u64, usize>>,
    memory: MemoryCounter,
    /// Captured graphs by handle (`Device::capture_end`).
    graphs: Mutex<(u64, HashMap<u64, CapturedGraph>)>,
}

/// A CUDA graph captured from this device's stream. cudarc's `CudaGraph` holds raw
/// driver handles; every use goes through the device's `graphs` mutex and the one
/// stream, so moving it between threads is sound.
struct CapturedGraph(cudarc::driver::CudaGraph);
// SAFETY: see the type's comment: access is serialised by `GpuDevice::graphs`.
unsafe impl Send for CapturedGraph {}

fn driver_err(what: impl std::fmt::Display) -> impl Fn(cu::DriverError) -> Error {
    move |e| Error::Invalid(format!("{what}: {e}"))
}

/// libcuda present and `cuInit` done; the number of devices.
fn driver_ready() -> Result<usize> {
    // SAFETY: only tries to dlopen libcuda; a panic (never expected) is caught.
    let present = std::panic::catch_unwind(|| unsafe { sys::is_culib_present() }).unwrap_or(false);
    if !present {
        return Err(Error::Invalid("no CUDA driver (libcuda.so) found".into()));
    }
    std::panic::catch_unwind(|| -> Result<usize> {
        match cu::init() {
            // A driver but no device (a container without GPUs) is "zero GPUs".
            Err(e) if e.0 == sys::CUresult::CUDA_ERROR_NO_DEVICE => return Ok(0),
            r => r.map_err(driver_err("CUDA driver failed to initialise"))?,
        }
        let n = cu::device::get_count().map_err(driver_err("cannot count GPUs"))?;
        Ok(n.max(0) as usize)
    })
    .unwrap_or_else(|_| {
        Err(Error::Invalid(
            "the CUDA driver API failed (a driver older than this build's CUDA? see the cuda-12 feature)".into(),
        ))
    })
}

/// `CUDA 13.0`, from `cuDriverGetVersion`.
fn driver_version() -> String {
    let mut v = 0;
    // SAFETY: out-pointer to a live local; libcuda is loaded (driver_ready ran).
    let r = unsafe { sys::cuDriverGetVersion(&mut v) };
    if r != sys::CUresult::CUDA_SUCCESS {
        return "CUDA ?".into();
    }
    format!("CUDA {}.{}", v / 1000, (v % 1000) / 10)
}

/// `NVIDIA H100 80GB HBM3 (sm_90, 79.1 GiB, driver CUDA 13.0)` and the compute capability.
fn describe(ordinal: usize) -> Result<(String, (u32, u32))> {
    let dev = cu::device::get(ordinal as i32).map_err(driver_err(format!("GPU {ordinal}")))?;
    let name = cu::device::get_name(dev).map_err(driver_err(format!("GPU {ordinal}")))?;
    use sys::CUdevice_attribute::*;
    // SAFETY: `dev` is a valid device handle from cuDeviceGet.
    let (major, minor, mem) = unsafe {
        let a = |k| cu::device::get_attribute(dev, k).map_err(driver_err(format!("GPU {ordinal}")));
        let mem = cu::device::total_mem(dev).map_err(driver_err(format!("GPU {ordinal}")))?;
        (
            a(CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MAJOR)?,
            a(CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MINOR)?,
            mem,
        )
    };
    let gib = mem as f64 / (1u64 << 30) as f64;
    let d = format!(
        "{name} (sm_{major}{minor}, {gib:.1} GiB, driver {})",
        driver_version()
    );
    Ok((d, (major as u32, minor as u32)))
}

/// Why the first GPU is or is not usable: `Ok(description)` when the driver, a
/// device and NVRTC are all there, else the one-line reason.
pub fn probe_detail() -> std::result::Result<String, String> {
    let n = driver_ready().map_err(|e| e.to_string())?;
    if n == 0 {
        return Err("the CUDA driver found no GPU".into());
    }
    let (d, _) = describe(0).map_err(|e| e.to_string())?;
    nvrtc::nvrtc().map_err(|e| e.to_string())?;
    Ok(d)
}

/// A description of GPU 0 when it can run the engine (driver, device and NVRTC
/// present), for `--device auto`.
pub fn probe() -> Option<String> {
    probe_detail().ok()
}

impl GpuDevice {
    /// Open GPU `ordinal`: context, stream, and every kernel compiled and loaded.
    pub fn open(ordinal: usize) -> Result<Self> {
        let n = driver_ready()?;
        if ordinal >= n {
            return Err(Error::invalid(format!(
                "no GPU at index {ordinal} (found {n})"
            )));
        }
        let (description, (major, minor)) = describe(ordinal)?;
        let arch = Arch::for_device(major, minor);
        let nv = nvrtc::nvrtc()?;
        let ctx = CudaContext::new(ordinal).map_err(driver_err(format!(
            "GPU {ordinal}: cannot create a context"
        )))?;
        let stream = ctx
            .new_stream()
            .map_err(driver_err("cannot create a stream"))?;
        if ctx.has_async_alloc() {
            // Keep freed memory in the stream-ordered pool instead of returning it to
            // the driver at every synchronisation (the default threshold is 0), so
            // alloc/free in a training step cost no driver round trips.
            let mut keep = u64::MAX;
            // SAFETY: the device handle comes from the live context; the attribute
            // takes a u64 (cuuint64_t) by pointer.
            let r = unsafe {
                let pool = cu::device::get_default_mem_pool(ctx.cu_device())
                    .map_err(driver_err("memory pool"))?;
                cu::mem_pool::set_attribute(
                    pool,
                    sys::CUmemPool_attribute::CU_MEMPOOL_ATTR_RELEASE_THRESHOLD,
                    (&mut keep as *mut u64).cast(),
                )
            };
            r.map_err(driver_err("memory pool release threshold"))?;
        }

        let cubins = compile_all(nv, arch)?;
        let mut functions = HashMap::new();
        for (src, cubin) in cubins {
            let module = ctx
                .load_module(cudarc::nvrtc::Ptx::from_binary(cubin))
                .map_err(|e| {
                    Error::file(
                        format!("kernels/{}", src.file),
                        format!(
                            "the driver ({}) rejected the CUBIN NVRTC {} built for {arch}: {e}",
                            driver_version(),
                            nv.version_string()
                        ),
                    )
                })?;
            for k in src.kernels {
                let f = module.load_function(k.name).map_err(|e| {
                    Error::file(
                        format!("kernels/{}", src.file),
                        format!("kernel {} missing from the CUBIN: {e}", k.name),
                    )
                })?;
                functions.insert(k.name, f);
            }
        }
        Ok(GpuDevice {
            ctx,
            stream,
            ordinal,
            arch,
            description,
            functions,
            blas: OnceLock::new(),
            sizes: Mutex::new(HashMap::new()),
            memory: MemoryCounter::default(),
            graphs: Mutex::new((0, HashMap::new())),
        })
    }

    /// The architecture the kernels were compiled for (`sm_90a` on an H100).
    pub fn arch(&self) -> Arch {
        self.arch
    }

    pub fn ordinal(&self) -> usize {
        self.ordinal
    }

    /// The stream all work goes to.
    pub fn stream(&self) -> &Arc<CudaStream> {
        &self.stream
    }

    fn bind(&self) -> Result<()> {
        self.ctx
            .bind_to_thread()
            .map_err(driver_err("cannot bind the CUDA context"))
    }
}

/// Each embedded source with its CUBIN.
type Cubins = Vec<(&'static kernels::KernelSource, Vec<u8>)>;

/// Compile every embedded source for `arch`, several at a time (NVRTC is thread-safe
/// across programs); CUBINs come from the disk cache when present.
fn compile_all(nv: &'static nvrtc::Nvrtc, arch: Arch) -> Result<Cubins> {
    // The test kernels too, so tests can launch them on the real device.
    let sources: Vec<&'static kernels::KernelSource> = kernels::SOURCES
        .iter()
        .chain(kernels::TEST_SOURCES)
        .collect();
    let threads = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1)
        .min(sources.len().max(1));
    let opts = Options::new(arch);
    let chunks: Vec<Vec<&'static kernels::KernelSource>> = (0..threads)
        .map(|t| sources.iter().skip(t).step_by(threads).copied().collect())
        .collect();
    let results: Vec<Result<Cubins>> = std::thread::scope(|s| {
        let handles: Vec<_> = chunks
            .iter()
            .map(|chunk| {
                let opts = &opts;
                s.spawn(move || {
                    chunk
                        .iter()
                        .map(|src| Ok((*src, nv.compile_source(src, opts)?)))
                        .collect()
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| {
                h.join()
                    .unwrap_or_else(|_| Err(Error::invalid("NVRTC compile thread panicked")))
            })
            .collect()
    });
    let mut out = Vec::with_capacity(sources.len());
    for r in results {
        out.extend(r?);
    }
    Ok(out)
}

impl Device for GpuDevice {
    fn name(&self) -> String {
        format!("cuda:{} {}", self.ordinal, self.description)
    }

    fn alloc(&self, bytes: usize) -> Result<DevicePtr> {
        if bytes == 0 {
            return Ok(DevicePtr(0));
        }
        self.bind()?;
        let what = || format!("cannot allocate {bytes} bytes on GPU {}", self.ordinal);
        // SAFETY: the stream belongs to this context; the memory is used only through
        // stream-ordered operations on the same stream.
        let p = unsafe {
            if self.ctx.has_async_alloc() {
                cu::malloc_async(self.stream.cu_stream(), bytes)
            } else {
                cu::malloc_sync(bytes)
            }
        }
        .map_err(driver_err(what()))?;
        self.sizes.lock().expect("sizes lock").insert(p, bytes);
        self.memory.add(bytes);
        Ok(DevicePtr(p))
    }

    fn free(&self, p: DevicePtr) {
        if p.0 == 0 || self.bind().is_err() {
            return;
        }
        if let Some(bytes) = self.sizes.lock().expect("sizes lock").remove(&p.0) {
            self.memory.sub(bytes);
        }
        // SAFETY: `p` came from `alloc` on this device and is freed once; the async
        // free is ordered after all work queued on the stream that uses it.
        let r = unsafe {
            if self.ctx.has_async_alloc() {
                cu::free_async(p.0, self.stream.cu_stream())
            } else {
                cu::free_sync(p.0)
            }
        };
        self.ctx.record_err(r);
    }

    fn upload(&self, dst: DevicePtr, src: &[u8]) -> Result<()> {
        if src.is_empty() {
            return Ok(());
        }
        self.bind()?;
        // SAFETY: `dst` holds at least `src.len()` bytes. From pageable host memory the
        // driver stages the data before returning, so `src` may be reused at once.
        unsafe { cu::memcpy_htod_async(dst.0, src, self.stream.cu_stream()) }
            .map_err(driver_err("upload to GPU"))
    }

    fn download(&self, src: DevicePtr, dst: &mut [u8]) -> Result<()> {
        if dst.is_empty() {
            return Ok(());
        }
        self.bind()?;
        // SAFETY: `src` holds at least `dst.len()` bytes; we wait for the copy below.
        unsafe { cu::memcpy_dtoh_async(dst, src.0, self.stream.cu_stream()) }
            .map_err(driver_err("download from GPU"))?;
        self.stream
            .synchronize()
            .map_err(driver_err("download from GPU"))
    }

    fn launch(&self, kernel: &'static str, cfg: LaunchConfig, args: &[KernelArg]) -> Result<()> {
        check_args(kernel, args)?;
        cfg.validate(kernel)?;
        let f = self
            .functions
            .get(kernel)
            .ok_or_else(|| Error::invalid(format!("kernel {kernel} is not loaded")))?;
        if cfg.shared_bytes > 48 * 1024 {
            // Above 48 KiB of dynamic shared memory a kernel must opt in.
            self.bind()?;
            f.set_attribute(
                sys::CUfunction_attribute::CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES,
                cfg.shared_bytes as i32,
            )
            .map_err(driver_err(format!(
                "kernel {kernel}: {} bytes of shared memory",
                cfg.shared_bytes
            )))?;
        }
        let slots: Vec<u64> = args.iter().map(KernelArg::slot).collect();
        let mut b = self.stream.launch_builder(f);
        for s in &slots {
            b.arg(s);
        }
        let lc = cudarc::driver::LaunchConfig {
            grid_dim: (cfg.grid[0], cfg.grid[1], cfg.grid[2]),
            block_dim: (cfg.block[0], cfg.block[1], cfg.block[2]),
            shared_mem_bytes: cfg.shared_bytes,
        };
        // SAFETY: the argument count and kinds match the kernel's C signature
        // (check_args); pointer validity is the caller's contract, as on a real GPU.
        unsafe { b.launch(lc) }.map_err(driver_err(format!("launching {kernel}")))?;
        Ok(())
    }

    /// `bytes` zero bytes at `p` (stream-ordered).
    fn zero(&self, p: DevicePtr, bytes: usize) -> Result<()> {
        if bytes == 0 {
            return Ok(());
        }
        self.bind()?;
        // SAFETY: the caller owns `bytes` bytes at `p`; the memset is stream-ordered.
        unsafe { cu::memset_d8_async(p.0, 0, bytes, self.stream.cu_stream()) }
            .map_err(driver_err("memset"))
    }

    /// Copy `bytes` bytes device to device (stream-ordered).
    fn copy(&self, dst: DevicePtr, src: DevicePtr, bytes: usize) -> Result<()> {
        if bytes == 0 {
            return Ok(());
        }
        self.bind()?;
        // SAFETY: both ranges are device allocations of at least `bytes` bytes.
        unsafe { cu::memcpy_dtod_async(dst.0, src.0, bytes, self.stream.cu_stream()) }
            .map_err(driver_err("device copy"))
    }

    fn gemm_ex(&self, g: &GemmEx) -> Result<()> {
        let spec = Gemm {
            m: g.m,
            n: g.n,
            k: g.k,
            trans_a: g.trans_x,
            trans_b: g.trans_w,
            ab: Dtype::BF16,
            c: if g.out_f32 { Dtype::F32 } else { Dtype::BF16 },
            alpha: 1.0,
            beta: if g.accumulate { 1.0 } else { 0.0 },
        };
        self.cublas_gemm(&spec, g.out, g.x, g.w)
    }

    fn memory_use(&self) -> crate::backend::MemoryUse {
        self.memory.get()
    }

    fn memory_info(&self) -> Option<(usize, usize)> {
        self.bind().ok()?;
        cudarc::driver::result::mem_get_info().ok()
    }

    fn synchronize(&self) -> Result<()> {
        self.bind()?;
        self.stream
            .synchronize()
            .map_err(driver_err("GPU error (from an earlier launch or copy)"))?;
        self.ctx.check_err().map_err(driver_err("GPU error"))
    }

    /// Stream capture (thread-local mode). cuBLAS's handle is made first: creating
    /// it inside a capture is not allowed.
    fn capture_begin(&self) -> Result<()> {
        self.blas()?;
        self.bind()?;
        self.stream
            .begin_capture(sys::CUstreamCaptureMode::CU_STREAM_CAPTURE_MODE_THREAD_LOCAL)
            .map_err(driver_err("cannot begin a graph capture"))
    }

    fn capture_end(&self) -> Result<u64> {
        self.bind()?;
        let graph = self
            .stream
            .end_capture(sys::CUgraphInstantiate_flags(0))
            .map_err(driver_err("cannot end the graph capture"))?
            .ok_or_else(|| Error::invalid("the graph capture recorded nothing"))?;
        let mut g = self.graphs.lock().expect("graphs lock");
        g.0 += 1;
        let id = g.0;
        g.1.insert(id, CapturedGraph(graph));
        Ok(id)
    }

    fn replay(&self, graph: u64) -> Result<()> {
        let g = self.graphs.lock().expect("graphs lock");
        let graph =
            g.1.get(&graph)
                .ok_or_else(|| Error::invalid(format!("no graph {graph}")))?;
        graph.0.launch().map_err(driver_err("graph launch"))
    }

    fn graph_free(&self, graph: u64) {
        self.graphs.lock().expect("graphs lock").1.remove(&graph);
    }
}
