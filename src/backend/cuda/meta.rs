//! `MetaDevice`: the counting device (`--device meta`). A third implementation of
//! the `Device` interface beside the GPU and the emulator: it allocates no memory
//! and runs no kernel, but hands out addresses in a fake address space of a given
//! capacity (an 80 GB H100's by default), checks every call as a GPU would, and
//! lets the CUDA backend above it run its real code at any shape in seconds. The
//! counting itself (launches, GEMM FLOPs, copies, syncs, buffers by purpose) happens
//! in `pool.rs`, the same for every device.
//!
//! Checked: every pointer a launch, GEMM, copy or memset touches lies inside a live
//! allocation (a GEMM's operands over their whole extent); launch geometry against
//! the CUDA limits, and, when NVRTC is present, each kernel's block size against its
//! `__launch_bounds__` and its static plus dynamic shared memory against the sm_90
//! limits (`nvrtc::limits`); an allocation past the capacity is out of memory.
//! Downloads return zeros: sampled tokens are token 0, which is no stop token, so
//! generation runs to its length limit, the worst case.

use super::device::{check_args, Device, DevicePtr, GemmEx, KernelArg, LaunchConfig};
use super::nvrtc::limits::{check_launch, kernel_limits, KernelLimits};
use super::nvrtc::{self, Arch};
use crate::backend::MemoryUse;
use crate::{Error, Result};
use std::collections::{BTreeMap, HashMap};
use std::sync::{Mutex, OnceLock};

/// What `cuMemGetInfo` reports as total on an 80 GB H100 (81,559 MiB).
pub const H100_80GB_BYTES: usize = 81_559 << 20;

/// Where the fake address space starts (far from null, 256-byte aligned).
const BASE: u64 = 0x7f00_0000_0000;

#[derive(Default)]
struct Space {
    next: u64,
    allocs: BTreeMap<u64, usize>,
    live: usize,
    peak: usize,
}

pub struct MetaDevice {
    capacity: usize,
    space: Mutex<Space>,
    limits: OnceLock<std::result::Result<HashMap<String, KernelLimits>, String>>,
}

impl MetaDevice {
    /// A counting device of `capacity` bytes.
    pub fn new(capacity: usize) -> Self {
        MetaDevice {
            capacity,
            space: Mutex::new(Space {
                next: BASE,
                ..Space::default()
            }),
            limits: OnceLock::new(),
        }
    }

    pub fn capacity(&self) -> usize {
        self.capacity
    }

    /// The sm_90 launch limits of every kernel, or why they are unknown (no NVRTC).
    pub fn limits(&self) -> std::result::Result<&HashMap<String, KernelLimits>, &str> {
        self.limits
            .get_or_init(|| {
                let nv = nvrtc::nvrtc().map_err(|e| e.to_string())?;
                kernel_limits(nv, Arch::new(9, 0)).map_err(|e| e.to_string())
            })
            .as_ref()
            .map_err(String::as_str)
    }

    /// Fail unless `[p, p + len)` lies inside one live allocation.
    fn check_range(&self, p: DevicePtr, len: usize, what: &str) -> Result<()> {
        if len == 0 {
            return Ok(());
        }
        let s = self.space.lock().expect("meta lock");
        let inside = s
            .allocs
            .range(..=p.0)
            .next_back()
            .is_some_and(|(&start, &n)| p.0 + len as u64 <= start + n as u64);
        if !inside {
            return Err(Error::invalid(format!(
                "{what}: {len} bytes at {:#x} are not inside a live allocation of the counting device",
                p.0
            )));
        }
        Ok(())
    }
}

impl Device for MetaDevice {
    fn name(&self) -> String {
        format!(
            "counting device ({:.1} GiB, sm_90 limits)",
            self.capacity as f64 / (1u64 << 30) as f64
        )
    }

    fn alloc(&self, bytes: usize) -> Result<DevicePtr> {
        let mut s = self.space.lock().expect("meta lock");
        if s.live + bytes > self.capacity {
            return Err(Error::invalid(format!(
                "out of memory: {bytes} bytes requested with {} of {} in use",
                s.live, self.capacity
            )));
        }
        let p = s.next;
        s.next += (bytes.max(1) as u64).div_ceil(256) * 256 + 256;
        s.allocs.insert(p, bytes);
        s.live += bytes;
        s.peak = s.peak.max(s.live);
        Ok(DevicePtr(p))
    }

    fn free(&self, p: DevicePtr) {
        let mut s = self.space.lock().expect("meta lock");
        if let Some(n) = s.allocs.remove(&p.0) {
            s.live -= n;
        }
    }

    fn upload(&self, dst: DevicePtr, src: &[u8]) -> Result<()> {
        self.check_range(dst, src.len(), "upload")
    }

    fn download(&self, src: DevicePtr, dst: &mut [u8]) -> Result<()> {
        self.check_range(src, dst.len(), "download")?;
        dst.fill(0);
        Ok(())
    }

    fn launch(&self, kernel: &'static str, cfg: LaunchConfig, args: &[KernelArg]) -> Result<()> {
        check_args(kernel, args)?;
        cfg.validate(kernel)?;
        if let Ok(limits) = self.limits() {
            let lim = limits
                .get(kernel)
                .ok_or_else(|| Error::invalid(format!("kernel {kernel}: not in NVRTC's report")))?;
            check_launch(kernel, &cfg, lim)?;
        }
        for (i, a) in args.iter().enumerate() {
            if let KernelArg::Ptr(p) = a {
                if !p.is_null() {
                    self.check_range(*p, 1, &format!("kernel {kernel} argument {i}"))?;
                }
            }
        }
        Ok(())
    }

    fn synchronize(&self) -> Result<()> {
        Ok(())
    }

    fn zero(&self, p: DevicePtr, bytes: usize) -> Result<()> {
        self.check_range(p, bytes, "memset")
    }

    fn copy(&self, dst: DevicePtr, src: DevicePtr, bytes: usize) -> Result<()> {
        self.check_range(dst, bytes, "copy destination")?;
        self.check_range(src, bytes, "copy source")
    }

    fn gemm_ex(&self, g: &GemmEx) -> Result<()> {
        let (x, w, out) = g.lens();
        self.check_range(g.x, x * 2, "GEMM x")?;
        self.check_range(g.w, w * 2, "GEMM w")?;
        self.check_range(g.out, out * if g.out_f32 { 4 } else { 2 }, "GEMM out")
    }

    fn memory_use(&self) -> MemoryUse {
        let s = self.space.lock().expect("meta lock");
        MemoryUse {
            live_bytes: s.live,
            peak_bytes: s.peak,
        }
    }

    fn memory_info(&self) -> Option<(usize, usize)> {
        let s = self.space.lock().expect("meta lock");
        Some((self.capacity - s.live, self.capacity))
    }
}

/// Parse a capacity such as `80GB`, `141GiB`, `24g` or a byte count.
pub fn parse_capacity(s: &str) -> Result<usize> {
    let t = s.trim().to_ascii_lowercase();
    let (num, mult) = [
        ("gib", 1u64 << 30),
        ("gb", 1_000_000_000),
        ("g", 1 << 30),
        ("mib", 1 << 20),
        ("mb", 1_000_000),
        ("m", 1 << 20),
    ]
    .iter()
    .find_map(|(suf, m)| t.strip_suffix(suf).map(|n| (n, *m)))
    .unwrap_or((t.as_str(), 1));
    let v: f64 = num
        .trim()
        .parse()
        .map_err(|_| Error::invalid(format!("'{s}' is not a memory size (e.g. 80GB, 141GiB)")))?;
    if !(v > 0.0 && v.is_finite()) {
        return Err(Error::invalid(format!(
            "'{s}' is not a positive memory size"
        )));
    }
    Ok((v * mult as f64) as usize)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_capacity_and_checks_ranges() {
        let d = MetaDevice::new(1 << 20);
        let a = d.alloc(1000).unwrap();
        let b = d.alloc(2000).unwrap();
        assert_eq!(d.memory_use().live_bytes, 3000);
        d.upload(a, &[1; 1000]).unwrap();
        assert!(d.upload(a, &[1; 1001]).is_err());
        let mut got = vec![7u8; 16];
        d.download(b, &mut got).unwrap();
        assert!(got.iter().all(|&v| v == 0), "downloads are zeros");
        assert!(d
            .alloc(1 << 20)
            .unwrap_err()
            .to_string()
            .contains("out of memory"));
        d.free(a);
        assert_eq!(
            d.memory_use(),
            MemoryUse {
                live_bytes: 2000,
                peak_bytes: 3000
            }
        );
        assert!(
            d.copy(a, b, 10).is_err(),
            "a freed buffer is not a destination"
        );
    }

    #[test]
    fn parses_capacities() {
        assert_eq!(parse_capacity("80GB").unwrap(), 80_000_000_000);
        assert_eq!(parse_capacity("141GiB").unwrap(), 141 << 30);
        assert_eq!(parse_capacity("24g").unwrap(), 24 << 30);
        assert_eq!(parse_capacity("4096").unwrap(), 4096);
        assert!(parse_capacity("lots").is_err());
        assert!(parse_capacity("-1GB").is_err());
    }
}
