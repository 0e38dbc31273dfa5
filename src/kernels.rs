//! The CUDA kernel sources embedded at build time (see `build.rs` and DESIGN.md §3).
//!
//! Each `KernelSource` is one `kernels/<op>.cu` as NVRTC should see it: `common.cuh`
//! prepended, with `#line` markers so diagnostics name the right file, plus every
//! `extern "C" __global__` kernel in it with its argument kinds as parsed by build.rs.
//! `SOURCES` are the engine's kernels; `TEST_SOURCES` (`kernels/tests/*.cu`) hold
//! kernels that exist only to test the emulator and the toolchain — NVRTC may compile
//! them too, the engine never launches them. `find` looks in both.

use std::fmt;

/// One embedded `.cu` file.
#[derive(Debug)]
pub struct KernelSource {
    /// Path under `kernels/`, e.g. `rmsnorm.cu` or `tests/emu_selftest.cu`.
    pub file: &'static str,
    /// The NVRTC-ready text (common.cuh + the file).
    pub source: &'static str,
    pub kernels: &'static [KernelSig],
}

/// An `extern "C" __global__` kernel's name and arguments.
#[derive(Debug)]
pub struct KernelSig {
    pub name: &'static str,
    pub args: &'static [ArgKind],
    /// The parameter names in the source (`argN` where unnamed), for messages.
    pub arg_names: &'static [&'static str],
}

/// How a kernel argument is passed. Pointers of any element type are `Ptr`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ArgKind {
    Ptr,
    I32,
    U32,
    F32,
    U64,
}

impl fmt::Display for ArgKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            ArgKind::Ptr => "pointer",
            ArgKind::I32 => "i32",
            ArgKind::U32 => "u32",
            ArgKind::F32 => "f32",
            ArgKind::U64 => "u64",
        })
    }
}

impl KernelSig {
    /// `rmsnorm_forward_f32(out: pointer, rstd: pointer, ..., eps: f32)`
    pub fn describe(&self) -> String {
        let args: Vec<String> = self
            .args
            .iter()
            .zip(self.arg_names)
            .map(|(k, n)| format!("{n}: {k}"))
            .collect();
        format!("{}({})", self.name, args.join(", "))
    }
}

include!(concat!(env!("OUT_DIR"), "/kernel_sources.rs"));

/// The source and signature of kernel `name` (engine kernels first, then test kernels).
pub fn find(name: &str) -> Option<(&'static KernelSource, &'static KernelSig)> {
    SOURCES
        .iter()
        .chain(TEST_SOURCES)
        .find_map(|s| s.kernels.iter().find(|k| k.name == name).map(|k| (s, k)))
}
