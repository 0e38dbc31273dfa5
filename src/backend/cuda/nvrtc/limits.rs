//! Per-kernel launch limits as NVRTC compiles them: the block size the kernel was
//! built for (`__launch_bounds__`, `.maxntid` in the PTX) and its static shared
//! memory (the ptxas report). The counting device checks every launch against them
//! with [`check_launch`], so a launch a GPU would refuse fails without a GPU.
//!
//! Compiling every source takes seconds; the table is cached on disk (next to the
//! CUBIN cache) keyed by the sources, the architecture and the NVRTC build.

use super::{cache, ptxas, Arch, Nvrtc, Options};
use crate::backend::cuda::device::LaunchConfig;
use crate::kernels::SOURCES;
use crate::{Error, Result};
use std::collections::HashMap;

/// What a launch of one kernel may use.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct KernelLimits {
    /// `__launch_bounds__` (threads per block), when the kernel declares it.
    pub max_threads: Option<u32>,
    /// Static `__shared__` bytes.
    pub static_smem: u32,
}

/// Dynamic shared memory a kernel may use without opting in (`gpu.rs` opts in above it).
pub const DEFAULT_SMEM: u32 = 48 * 1024;
/// The opt-in limit per block on sm_90 (static + dynamic).
pub const OPTIN_SMEM: u32 = 227 * 1024;

/// Check `cfg` against `lim` for `kernel`: threads within the launch bounds, static
/// plus dynamic shared memory within 48 KiB unless the launch opts in (dynamic above
/// 48 KiB, as `GpuDevice::launch` does), and within the 227 KiB opt-in limit.
pub fn check_launch(kernel: &str, cfg: &LaunchConfig, lim: &KernelLimits) -> Result<()> {
    let threads = cfg.threads();
    if let Some(max) = lim.max_threads {
        if threads > max as u64 {
            return Err(Error::invalid(format!(
                "kernel {kernel}: {threads} threads per block exceed its __launch_bounds__({max})"
            )));
        }
    }
    let total = lim.static_smem + cfg.shared_bytes;
    let opt_in = cfg.shared_bytes > DEFAULT_SMEM;
    let limit = if opt_in { OPTIN_SMEM } else { DEFAULT_SMEM };
    if total > limit {
        return Err(Error::invalid(format!(
            "kernel {kernel}: {} static + {} dynamic bytes of shared memory exceed {} KiB{}",
            lim.static_smem,
            cfg.shared_bytes,
            limit / 1024,
            if opt_in {
                " (the opt-in limit)"
            } else {
                " (the default limit; the launch does not opt in)"
            }
        )));
    }
    Ok(())
}

/// `.maxntid x, y, z` of each `.entry` in a PTX text, as threads per block.
pub fn parse_maxntid(ptx: &str) -> HashMap<String, u32> {
    let mut out = HashMap::new();
    let mut current: Option<String> = None;
    for line in ptx.lines() {
        let t = line.trim();
        if let Some(rest) = t
            .strip_prefix(".visible .entry ")
            .or(t.strip_prefix(".entry "))
        {
            current = Some(rest.split('(').next().unwrap_or("").trim().to_string());
        } else if let (Some(rest), Some(name)) = (t.strip_prefix(".maxntid"), &current) {
            let n: u32 = rest
                .split(',')
                .map(|d| d.trim().trim_end_matches(';').parse::<u32>().unwrap_or(1))
                .product();
            out.insert(name.clone(), n);
        } else if t.starts_with('{') {
            current = None;
        }
    }
    out
}

/// The limits of every engine kernel for `arch`, compiled by `nv` (cached on disk).
pub fn kernel_limits(nv: &Nvrtc, arch: Arch) -> Result<HashMap<String, KernelLimits>> {
    let arch_name = arch.name();
    let parts: Vec<&[u8]> = SOURCES
        .iter()
        .map(|s| s.source.as_bytes())
        .chain([arch_name.as_bytes(), nv.identity.as_bytes()])
        .collect();
    let path = cache::dir().map(|d| {
        d.join(format!(
            "limits-{}-{:032x}.json",
            arch.name(),
            cache::hash128(&parts)
        ))
    });
    if let Some(p) = &path {
        if let Ok(text) = std::fs::read_to_string(p) {
            if let Ok(t) = serde_json::from_str(&text) {
                return Ok(t);
            }
        }
    }
    let opts = Options {
        ptxas_verbose: true,
        lineinfo: false,
        ..Options::new(arch)
    };
    let results: Vec<Result<Vec<(String, KernelLimits)>>> = std::thread::scope(|sc| {
        let handles: Vec<_> = SOURCES
            .iter()
            .map(|src| {
                let opts = &opts;
                sc.spawn(move || {
                    let c = nv.compile(&format!("kernels/{}", src.file), src.source, opts)?;
                    let threads = parse_maxntid(&c.ptx);
                    Ok(ptxas::parse(&c.log)
                        .into_iter()
                        .map(|r| {
                            let lim = KernelLimits {
                                max_threads: threads.get(&r.kernel).copied(),
                                static_smem: r.smem_bytes,
                            };
                            (r.kernel, lim)
                        })
                        .collect())
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().expect("compile thread"))
            .collect()
    });
    let mut table = HashMap::new();
    for r in results {
        table.extend(r?);
    }
    if let Some(p) = &path {
        if let Ok(text) = serde_json::to_string(&table) {
            let _ = cache::store(p, text.as_bytes());
        }
    }
    Ok(table)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_maxntid_per_entry() {
        let ptx = "\n.visible .entry rmsnorm_forward_bf16(\n\t.param .u64 a\n)\n.maxntid 256, 1, 1\n{\n}\n.visible .entry other(\n)\n{\n}\n.visible .entry attn(\n)\n.maxntid 128, 2, 1\n{\n}\n";
        let m = parse_maxntid(ptx);
        assert_eq!(m.get("rmsnorm_forward_bf16"), Some(&256));
        assert_eq!(m.get("other"), None);
        assert_eq!(m.get("attn"), Some(&256));
    }

    #[test]
    fn launch_checks_name_the_limit() {
        let lim = KernelLimits {
            max_threads: Some(128),
            static_smem: 40 * 1024,
        };
        let ok = LaunchConfig::linear(4, 128, 8 * 1024);
        check_launch("k", &ok, &lim).unwrap();
        let e = check_launch("k", &LaunchConfig::linear(4, 256, 0), &lim).unwrap_err();
        assert!(e.to_string().contains("__launch_bounds__(128)"), "{e}");
        // 40 KiB static + 16 KiB dynamic without opting in: refused
        let e = check_launch("k", &LaunchConfig::linear(1, 128, 16 * 1024), &lim).unwrap_err();
        assert!(e.to_string().contains("default limit"), "{e}");
        // opting in (dynamic > 48 KiB) allows up to 227 KiB in all
        check_launch("k", &LaunchConfig::linear(1, 128, 180 * 1024), &lim).unwrap();
        let e = check_launch("k", &LaunchConfig::linear(1, 128, 200 * 1024), &lim).unwrap_err();
        assert!(e.to_string().contains("opt-in"), "{e}");
    }
}
