//! `EmuDevice`: the `Device` interface over host memory, running `kernels/*.cu`
//! through the C++ host emulator that build.rs compiles (kernels/emu/, DESIGN.md §3).
//!
//! A `DevicePtr` is a host address. Allocations are tracked, so a pointer argument
//! outside every live allocation, a copy out of range and a double free are caught.
//! New memory is filled with 0xFF bytes (NaN as f32 and bf16), so tests can check
//! that a kernel wrote every output element. Each allocation sits between two
//! 256-byte guard zones: filled with a canary and checked after every launch (an
//! out-of-bounds write fails the launch), or, in an `ONELAYER_EMU_ASAN=1` build,
//! poisoned so AddressSanitizer reports any access to them on the spot.
//!
//! A launch runs synchronously: `launch` returns when the kernel has finished, with
//! the emulator's error (a barrier that can never complete, a warp collective
//! without its lanes, a misaligned ldmatrix, ...) as a one-line `Error`.

use super::device::{
    check_args, ArgPack, Device, DevicePtr, GemmEx, KernelArg, LaunchConfig, MemoryCounter,
};
use crate::{Error, Result};
use std::alloc::{alloc, dealloc, Layout};
use std::collections::BTreeMap;
use std::ffi::{c_char, c_int, c_void, CStr};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Mutex;
use std::time::Duration;

/// Launch parameters passed to a trampoline; must match `EmuLaunch` in
/// kernels/emu/warp.h.
#[repr(C)]
pub struct EmuLaunch {
    pub grid: [u32; 3],
    pub block: [u32; 3],
    pub shared_bytes: u32,
    /// Barrier timeout in ms; 0: `ONELAYER_EMU_TIMEOUT_MS` or 5000.
    pub timeout_ms: u32,
    /// Out: NUL-terminated error message, empty on success.
    pub error: *mut c_char,
    pub error_cap: u32,
}

/// A kernel's emulated launcher: `args` points at one pointer per argument, each to
/// the argument's value (cuLaunchKernel's `kernelParams`).
pub type EmuEntry = unsafe extern "C" fn(*const EmuLaunch, *mut *mut c_void);

include!(concat!(env!("OUT_DIR"), "/emu_entries.rs"));

extern "C" {
    fn emu_asan_enabled() -> c_int;
    fn emu_asan_poison(p: *mut c_void, n: usize);
    fn emu_asan_unpoison(p: *mut c_void, n: usize);
}

/// Whether the emulator was built with AddressSanitizer (`ONELAYER_EMU_ASAN=1`).
pub fn asan_enabled() -> bool {
    // SAFETY: a constant function of the C++ runtime.
    unsafe { emu_asan_enabled() != 0 }
}

const GUARD: usize = 256;
const CANARY: u8 = 0xA5;
const POISON: u8 = 0xFF;

struct Alloc {
    base: *mut u8, // start of the front guard
    len: usize,
    layout: Layout,
}

// SAFETY: the allocation is plain memory owned by the device; access goes through the
// device's mutex or through kernels the caller orders.
unsafe impl Send for Alloc {}

impl Alloc {
    fn user(&self) -> u64 {
        self.base as u64 + GUARD as u64
    }
    fn guards(&self) -> [(*mut u8, usize); 2] {
        // SAFETY: both zones lie inside the allocation.
        unsafe { [(self.base, GUARD), (self.base.add(GUARD + self.len), GUARD)] }
    }
}

/// The host emulator as a device. Cheap to create; any number may coexist (launches
/// are serialised inside the emulator).
pub struct EmuDevice {
    allocs: Mutex<BTreeMap<u64, Alloc>>, // by user address
    timeout_ms: AtomicU32,
    memory: MemoryCounter,
}

impl Default for EmuDevice {
    fn default() -> Self {
        Self::new()
    }
}

impl EmuDevice {
    pub fn new() -> Self {
        EmuDevice {
            allocs: Mutex::new(BTreeMap::new()),
            timeout_ms: AtomicU32::new(0),
            memory: MemoryCounter::default(),
        }
    }

    /// How long a barrier or warp collective may wait without anyone arriving before
    /// the launch fails as a deadlock (default `ONELAYER_EMU_TIMEOUT_MS`, else 5 s).
    pub fn set_barrier_timeout(&self, t: Duration) {
        self.timeout_ms.store(
            t.as_millis().clamp(1, u32::MAX as u128) as u32,
            Ordering::Relaxed,
        );
    }

    /// Live allocations.
    pub fn allocations(&self) -> usize {
        self.allocs.lock().unwrap().len()
    }

    /// The allocation holding `[p, p + len)`: its user address and length.
    fn range(&self, p: DevicePtr, len: usize) -> Option<(u64, usize)> {
        let allocs = self.allocs.lock().unwrap();
        let (&start, a) = allocs.range(..=p.0).next_back()?;
        (p.0.checked_add(len as u64)? <= start + a.len as u64).then_some((start, a.len))
    }

    fn host_ptr(&self, p: DevicePtr, len: usize, what: &str) -> Result<*mut u8> {
        self.range(p, len).map(|_| p.0 as *mut u8).ok_or_else(|| {
            Error::invalid(format!(
                "{what}: {len} bytes at {:#x} are not inside a live allocation of the emulated device",
                p.0
            ))
        })
    }

    /// After a launch: the first guard zone a kernel wrote, restored (canary builds).
    fn check_guards(&self, kernel: &str) -> Result<()> {
        if asan_enabled() {
            return Ok(());
        }
        let allocs = self.allocs.lock().unwrap();
        for a in allocs.values() {
            for (zone, (p, n)) in a.guards().into_iter().enumerate() {
                // SAFETY: the guard zone is part of the live allocation.
                let bytes = unsafe { std::slice::from_raw_parts_mut(p, n) };
                if let Some(k) = bytes.iter().position(|&b| b != CANARY) {
                    bytes.fill(CANARY);
                    let off = if zone == 0 {
                        format!("-{}", GUARD - k)
                    } else {
                        format!("+{}", a.len + k)
                    };
                    return Err(Error::invalid(format!(
                        "kernel {kernel} wrote out of bounds: byte {off} of the {}-byte allocation at {:#x}",
                        a.len,
                        a.user()
                    )));
                }
            }
        }
        Ok(())
    }
}

impl Drop for EmuDevice {
    fn drop(&mut self) {
        let allocs = std::mem::take(&mut *self.allocs.lock().unwrap());
        for a in allocs.into_values() {
            release(a);
        }
    }
}

fn release(a: Alloc) {
    for (p, n) in a.guards() {
        // SAFETY: the zone belongs to this allocation.
        unsafe { emu_asan_unpoison(p.cast(), n) };
    }
    // SAFETY: allocated in `alloc` with this layout, freed once (removed from the map).
    unsafe { dealloc(a.base, a.layout) };
}

impl Device for EmuDevice {
    fn name(&self) -> String {
        format!(
            "host emulator{}",
            if asan_enabled() {
                " (AddressSanitizer)"
            } else {
                ""
            }
        )
    }

    fn alloc(&self, bytes: usize) -> Result<DevicePtr> {
        let layout = Layout::from_size_align(bytes + 2 * GUARD, 256)
            .map_err(|_| Error::invalid(format!("cannot allocate {bytes} bytes")))?;
        // SAFETY: the layout has a non-zero size.
        let base = unsafe { alloc(layout) };
        if base.is_null() {
            return Err(Error::invalid(format!(
                "out of host memory allocating {bytes} bytes"
            )));
        }
        let a = Alloc {
            base,
            len: bytes,
            layout,
        };
        // SAFETY: all inside the fresh allocation.
        unsafe {
            std::ptr::write_bytes(base, CANARY, GUARD);
            std::ptr::write_bytes(base.add(GUARD), POISON, bytes);
            std::ptr::write_bytes(base.add(GUARD + bytes), CANARY, GUARD);
            for (p, n) in a.guards() {
                emu_asan_poison(p.cast(), n);
            }
        }
        let user = a.user();
        self.allocs.lock().unwrap().insert(user, a);
        self.memory.add(bytes);
        Ok(DevicePtr(user))
    }

    fn free(&self, p: DevicePtr) {
        let a = self.allocs.lock().unwrap().remove(&p.0);
        match a {
            Some(a) => {
                self.memory.sub(a.len);
                release(a)
            }
            None => panic!(
                "EmuDevice::free({:#x}): not the start of a live allocation (double free?)",
                p.0
            ),
        }
    }

    fn upload(&self, dst: DevicePtr, src: &[u8]) -> Result<()> {
        let d = self.host_ptr(dst, src.len(), "upload")?;
        // SAFETY: `d..d + len` lies inside a live allocation, disjoint from `src`.
        unsafe { std::ptr::copy_nonoverlapping(src.as_ptr(), d, src.len()) };
        Ok(())
    }

    fn download(&self, src: DevicePtr, dst: &mut [u8]) -> Result<()> {
        let s = self.host_ptr(src, dst.len(), "download")?;
        // SAFETY: `s..s + len` lies inside a live allocation, disjoint from `dst`.
        unsafe { std::ptr::copy_nonoverlapping(s, dst.as_mut_ptr(), dst.len()) };
        Ok(())
    }

    fn launch(&self, kernel: &'static str, cfg: LaunchConfig, args: &[KernelArg]) -> Result<()> {
        let sig = check_args(kernel, args)?;
        cfg.validate(kernel)?;
        for (i, a) in args.iter().enumerate() {
            if let KernelArg::Ptr(p) = a {
                if !p.is_null() && self.range(*p, 0).is_none() {
                    return Err(Error::invalid(format!(
                        "kernel {kernel}: argument {i} ({}) = {:#x} is not inside a live allocation of the \
                         emulated device (freed, or from another device?)",
                        sig.arg_names[i], p.0
                    )));
                }
            }
        }
        let entry = emu_entry(kernel)
            .ok_or_else(|| Error::invalid(format!("kernel {kernel} has no emulated launcher")))?;
        let mut pack = ArgPack::new(args);
        let mut ptrs = pack.pointers();
        let mut err = vec![0u8; 4096];
        let launch = EmuLaunch {
            grid: cfg.grid,
            block: cfg.block,
            shared_bytes: cfg.shared_bytes,
            timeout_ms: self.timeout_ms.load(Ordering::Relaxed),
            error: err.as_mut_ptr().cast(),
            error_cap: err.len() as u32,
        };
        // SAFETY: `ptrs` holds one pointer per argument to its value, matching the
        // kernel's signature (checked above, and statically in the trampoline); every
        // non-null pointer argument lies in a live allocation; `err` outlives the call.
        unsafe { entry(&launch, ptrs.as_mut_ptr()) };
        let msg = CStr::from_bytes_until_nul(&err)
            .map(|c| c.to_string_lossy().into_owned())
            .unwrap_or_default();
        if !msg.is_empty() {
            return Err(Error::invalid(format!("emulator: {msg}")));
        }
        self.check_guards(kernel)
    }

    fn memory_use(&self) -> crate::backend::MemoryUse {
        self.memory.get()
    }

    fn synchronize(&self) -> Result<()> {
        Ok(())
    }

    fn zero(&self, p: DevicePtr, bytes: usize) -> Result<()> {
        let d = self.host_ptr(p, bytes, "zero")?;
        // SAFETY: `d..d + bytes` lies inside a live allocation.
        unsafe { std::ptr::write_bytes(d, 0, bytes) };
        Ok(())
    }

    fn exact_sizes(&self) -> bool {
        true
    }

    fn poison(&self, p: DevicePtr, bytes: usize) -> Result<()> {
        let d = self.host_ptr(p, bytes, "poison")?;
        // SAFETY: `d..d + bytes` lies inside a live allocation.
        unsafe { std::ptr::write_bytes(d, POISON, bytes) };
        Ok(())
    }

    fn copy(&self, dst: DevicePtr, src: DevicePtr, bytes: usize) -> Result<()> {
        let d = self.host_ptr(dst, bytes, "copy destination")?;
        let s = self.host_ptr(src, bytes, "copy source")?;
        // SAFETY: both ranges lie inside live allocations; `copy` handles overlap.
        unsafe { std::ptr::copy(s, d, bytes) };
        Ok(())
    }

    /// f32 GEMM (matrixmultiply) on the bf16 inputs widened to f32; with
    /// `accumulate` the old `out` (widened) is the beta = 1 term, and a bf16 `out` is
    /// rounded once at the end, as cuBLAS does.
    fn gemm_ex(&self, g: &GemmEx) -> Result<()> {
        let (m, n, k) = (g.m, g.n, g.k);
        let (x_len, w_len, out_len) = g.lens();
        let widen = |p: DevicePtr, len: usize, f32_elems: bool, what: &str| -> Result<Vec<f32>> {
            let r = if f32_elems {
                let mut v = vec![0f32; len];
                self.download(p, bytemuck::cast_slice_mut(&mut v))
                    .map(|_| v)
            } else {
                let mut raw = vec![half::bf16::ZERO; len];
                self.download(p, bytemuck::cast_slice_mut(&mut raw))
                    .map(|_| raw.iter().map(|v| v.to_f32()).collect())
            };
            r.map_err(|e| Error::invalid(format!("gemm {what}: {e}")))
        };
        let x = widen(g.x, x_len, false, "x")?;
        let w = widen(g.w, w_len, false, "w")?;
        let (mut out, beta) = if g.accumulate {
            (widen(g.out, out_len, g.out_f32, "out")?, 1.0)
        } else {
            (vec![0f32; out_len], 0.0)
        };
        // Strides of op(x)[i, p] and op(w)[p, j] in their stored layouts.
        let (rsx, csx) = if g.trans_x { (1, m) } else { (k, 1) };
        let (rsw, csw) = if g.trans_w { (1, k) } else { (n, 1) };
        if m > 0 && n > 0 && k > 0 {
            // SAFETY: x holds m * k elements, stored [m, k] (or [k, m] when trans_x),
            // read as op(x) [m, k] through the strides above; likewise w (k * n) as
            // op(w) [k, n]; out is [m, n] row-major. All are live Vecs of those sizes.
            unsafe {
                matrixmultiply::sgemm(
                    m,
                    k,
                    n,
                    1.0,
                    x.as_ptr(),
                    rsx as isize,
                    csx as isize,
                    w.as_ptr(),
                    rsw as isize,
                    csw as isize,
                    beta,
                    out.as_mut_ptr(),
                    n as isize,
                    1,
                );
            }
        }
        if g.out_f32 {
            self.upload(g.out, bytemuck::cast_slice(&out))
        } else {
            let b: Vec<half::bf16> = out.iter().map(|&v| half::bf16::from_f32(v)).collect();
            self.upload(g.out, bytemuck::cast_slice(&b))
        }
        .map_err(|e| Error::invalid(format!("gemm out: {e}")))
    }
}
