//! NVRTC: compile the embedded `kernels/` sources to CUBIN at run time.
//!
//! libnvrtc is loaded by its full path (see `toolkit` for where it is looked for),
//! together with `libnvrtc-builtins` from the same folder, so neither needs to be on
//! `LD_LIBRARY_PATH`. We call NVRTC through our own small binding rather than
//! cudarc's, so the library used is exactly the one found, and a missing one is a
//! normal error instead of a panic.
//!
//! Output is CUBIN (`nvrtcGetCUBIN`) for one real architecture, never PTX for the
//! driver to JIT: a newer NVRTC may emit a PTX ISA version an older driver cannot
//! read, but its SASS loads fine. Compiled CUBINs are cached on disk (`cache`).

pub mod cache;
pub mod limits;
pub mod ptxas;
pub mod toolkit;

use crate::kernels::KernelSource;
use crate::{Error, Result};
use std::ffi::{c_char, c_int, c_void, CStr, CString};
use std::path::PathBuf;
use std::sync::OnceLock;

/// A GPU architecture: `sm_90` is (9, 0); `sm_90a` also enables the
/// architecture-specific instructions (wgmma, setmaxnreg, ...), which kernels gate on
/// `__CUDA_ARCH_FEAT_SM90_ALL`. A CUBIN runs only on its exact major.minor.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Arch {
    pub major: u32,
    pub minor: u32,
    pub specific: bool,
}

impl Arch {
    pub const fn new(major: u32, minor: u32) -> Self {
        Arch {
            major,
            minor,
            specific: false,
        }
    }
    /// What to compile for a device of compute capability `major.minor`: the
    /// arch-specific variant from Hopper on (a CUBIN only ever runs on its own
    /// architecture, so nothing is lost).
    pub fn for_device(major: u32, minor: u32) -> Self {
        Arch {
            major,
            minor,
            specific: major >= 9,
        }
    }
    /// `sm_90`, `sm_90a`.
    pub fn name(&self) -> String {
        format!(
            "sm_{}{}{}",
            self.major,
            self.minor,
            if self.specific { "a" } else { "" }
        )
    }
    /// `sm_80`, `sm_90a`, `90`, `9.0` or `compute_90`.
    pub fn parse(s: &str) -> Result<Self> {
        let bad = || {
            Error::invalid(format!(
                "--arch: '{s}' is not an architecture like sm_80 or sm_90"
            ))
        };
        let t = s.trim();
        let t = t
            .strip_prefix("sm_")
            .or_else(|| t.strip_prefix("compute_"))
            .unwrap_or(t);
        let (t, specific) = match t.strip_suffix('a') {
            Some(r) => (r, true),
            None => (t, false),
        };
        let (major, minor) = match t.split_once('.') {
            Some((a, b)) => (a.parse().map_err(|_| bad())?, b.parse().map_err(|_| bad())?),
            None if t.len() >= 2 && t.chars().all(|c| c.is_ascii_digit()) => {
                let (a, b) = t.split_at(t.len() - 1);
                (a.parse().map_err(|_| bad())?, b.parse().map_err(|_| bad())?)
            }
            None => return Err(bad()),
        };
        Ok(Arch {
            major,
            minor,
            specific,
        })
    }
    fn number(&self) -> i32 {
        (self.major * 10 + self.minor) as i32
    }
}

impl std::fmt::Display for Arch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.name())
    }
}

/// How to compile. `Options::new(arch)` gives the engine's defaults.
#[derive(Debug, Clone)]
pub struct Options {
    pub arch: Arch,
    /// `--use_fast_math` (off: the kernels choose their fast intrinsics explicitly).
    pub fast_math: bool,
    /// `-lineinfo`, so profilers and sanitizers map SASS back to kernels/*.cu lines.
    pub lineinfo: bool,
    /// `--ptxas-options=-v`: the log then holds registers / smem / spills per kernel
    /// (see `ptxas::parse`).
    pub ptxas_verbose: bool,
    /// More options passed through as they are (`-DNAME=1`, ...).
    pub extra: Vec<String>,
}

impl Options {
    pub fn new(arch: Arch) -> Self {
        Options {
            arch,
            fast_math: false,
            lineinfo: true,
            ptxas_verbose: false,
            extra: Vec::new(),
        }
    }
    /// The NVRTC command line, given the include folder.
    pub fn args(&self, include: &std::path::Path) -> Vec<String> {
        let mut a = vec![
            format!("--gpu-architecture={}", self.arch.name()),
            "-std=c++17".to_string(),
            "-default-device".to_string(),
            format!("-I{}", include.display()),
        ];
        if self.lineinfo {
            a.push("-lineinfo".into());
        }
        if self.fast_math {
            a.push("--use_fast_math".into());
        }
        if self.ptxas_verbose {
            a.push("--ptxas-options=-v".into());
        }
        a.extend(self.extra.iter().cloned());
        a
    }
}

/// The result of one compilation.
#[derive(Debug, Clone)]
pub struct Compiled {
    /// The CUBIN (an ELF image) for `Options::arch`.
    pub cubin: Vec<u8>,
    /// The PTX NVRTC produced on the way (for an external `ptxas` report).
    pub ptx: String,
    /// NVRTC's log: warnings, and ptxas info when `ptxas_verbose` was set.
    pub log: String,
}

type NvrtcResult = c_int;
type Program = *mut c_void;

/// A loaded libnvrtc. Get the process-wide one with [`nvrtc()`].
pub struct Nvrtc {
    /// libnvrtc's path and the search root it came from.
    pub lib_path: PathBuf,
    pub lib_origin: String,
    /// The folder passed as `-I` (holds `cuda_bf16.h`).
    pub include: PathBuf,
    pub include_origin: String,
    /// `nvrtcVersion()`.
    pub version: (i32, i32),
    /// Architectures this NVRTC can target, as numbers (80, 90, ...).
    pub supported: Vec<i32>,
    /// Identifies this exact library build for the compile cache.
    pub identity: String,
    error_string: unsafe extern "C" fn(NvrtcResult) -> *const c_char,
    create: unsafe extern "C" fn(
        *mut Program,
        *const c_char,
        *const c_char,
        c_int,
        *const *const c_char,
        *const *const c_char,
    ) -> NvrtcResult,
    destroy: unsafe extern "C" fn(*mut Program) -> NvrtcResult,
    compile: unsafe extern "C" fn(Program, c_int, *const *const c_char) -> NvrtcResult,
    log_size: unsafe extern "C" fn(Program, *mut usize) -> NvrtcResult,
    log: unsafe extern "C" fn(Program, *mut c_char) -> NvrtcResult,
    cubin_size: unsafe extern "C" fn(Program, *mut usize) -> NvrtcResult,
    cubin: unsafe extern "C" fn(Program, *mut c_char) -> NvrtcResult,
    ptx_size: unsafe extern "C" fn(Program, *mut usize) -> NvrtcResult,
    ptx: unsafe extern "C" fn(Program, *mut c_char) -> NvrtcResult,
    _lib: libloading::Library,
    _builtins: Option<libloading::Library>,
}

/// The process-wide NVRTC, loaded on first use. A missing NVRTC or header is a
/// one-line error telling the user how to get it.
pub fn nvrtc() -> Result<&'static Nvrtc> {
    static NVRTC: OnceLock<std::result::Result<Nvrtc, String>> = OnceLock::new();
    NVRTC
        .get_or_init(Nvrtc::load)
        .as_ref()
        .map_err(|e| Error::Invalid(e.clone()))
}

const HOW: &str = "run tools/install_cuda_wheels.sh and set ONELAYER_CUDA_WHEELS to the folder it prints, or set CUDA_HOME to a CUDA toolkit";

impl Nvrtc {
    fn load() -> std::result::Result<Nvrtc, String> {
        let major = toolkit::CUDA_MAJOR;
        let found = toolkit::find_lib("nvrtc").ok_or_else(|| {
            format!(
                "NVRTC (libnvrtc.so.{major}) not found ({}): {HOW}",
                toolkit::searched()
            )
        })?;
        let inc = toolkit::find_include()
            .ok_or_else(|| format!("cuda_bf16.h not found ({}): {HOW}", toolkit::searched()))?;
        let fail = |e: libloading::Error| format!("{}: cannot load: {e}", found.path.display());
        // SAFETY: loading libnvrtc / its builtins runs no code with preconditions.
        let builtins = toolkit::nvrtc_builtins_next_to(&found.path)
            .and_then(|p| unsafe { libloading::Library::new(p) }.ok());
        let lib = unsafe { libloading::Library::new(&found.path) }.map_err(fail)?;
        // SAFETY (for every `sym` below): each symbol is the NVRTC C API function of
        // that name, with the signature declared in nvrtc.h (stable since CUDA 11.1).
        fn sym<T: Copy>(lib: &libloading::Library, name: &str) -> std::result::Result<T, String> {
            let c = format!("{name}\0");
            unsafe { lib.get::<T>(c.as_bytes()) }
                .map(|s| *s)
                .map_err(|e| format!("{name}: {e}"))
        }
        macro_rules! sym {
            ($name:literal) => {
                sym(&lib, $name).map_err(|e| format!("{}: {e}", found.path.display()))?
            };
        }
        let version_fn: unsafe extern "C" fn(*mut c_int, *mut c_int) -> NvrtcResult =
            sym!("nvrtcVersion");
        let num_archs: unsafe extern "C" fn(*mut c_int) -> NvrtcResult =
            sym!("nvrtcGetNumSupportedArchs");
        let archs: unsafe extern "C" fn(*mut c_int) -> NvrtcResult = sym!("nvrtcGetSupportedArchs");
        let mut version = (0, 0);
        let mut n = 0;
        // SAFETY: out-pointers to live locals; the arch buffer has the size NVRTC reported.
        let supported = unsafe {
            version_fn(&mut version.0, &mut version.1);
            num_archs(&mut n);
            let mut v = vec![0; n.max(0) as usize];
            archs(v.as_mut_ptr());
            v
        };
        let canon = std::fs::canonicalize(&found.path).unwrap_or(found.path.clone());
        let size = std::fs::metadata(&canon).map(|m| m.len()).unwrap_or(0);
        Ok(Nvrtc {
            identity: format!(
                "nvrtc {}.{} {} {size}",
                version.0,
                version.1,
                canon.display()
            ),
            error_string: sym!("nvrtcGetErrorString"),
            create: sym!("nvrtcCreateProgram"),
            destroy: sym!("nvrtcDestroyProgram"),
            compile: sym!("nvrtcCompileProgram"),
            log_size: sym!("nvrtcGetProgramLogSize"),
            log: sym!("nvrtcGetProgramLog"),
            cubin_size: sym!("nvrtcGetCUBINSize"),
            cubin: sym!("nvrtcGetCUBIN"),
            ptx_size: sym!("nvrtcGetPTXSize"),
            ptx: sym!("nvrtcGetPTX"),
            lib_path: found.path,
            lib_origin: found.origin,
            include: inc.path,
            include_origin: inc.origin,
            version,
            supported,
            _lib: lib,
            _builtins: builtins,
        })
    }

    /// `13.0`.
    pub fn version_string(&self) -> String {
        format!("{}.{}", self.version.0, self.version.1)
    }

    fn err(&self, what: &str, r: NvrtcResult) -> String {
        // SAFETY: nvrtcGetErrorString returns a static C string for any code.
        let s = unsafe { CStr::from_ptr((self.error_string)(r)) };
        format!("{what}: {}", s.to_string_lossy())
    }

    /// Compile one source text. `file` names it in NVRTC's messages (the embedded
    /// sources carry `#line` markers, so errors point at `kernels/<op>.cu(line)`).
    /// A compile error returns `Error::File` for `file` holding NVRTC's full log.
    pub fn compile(&self, file: &str, source: &str, opts: &Options) -> Result<Compiled> {
        if !self.supported.is_empty() && !self.supported.contains(&opts.arch.number()) {
            return Err(Error::Unsupported(format!(
                "NVRTC {} cannot compile for {} (it supports {})",
                self.version_string(),
                opts.arch,
                self.supported
                    .iter()
                    .map(|a| format!("sm_{a}"))
                    .collect::<Vec<_>>()
                    .join(", ")
            )));
        }
        let nul = |s: &str| {
            CString::new(s).map_err(|_| Error::invalid(format!("{file}: contains a NUL byte")))
        };
        let c_src = nul(source)?;
        let c_name = nul(file)?;
        let args: Vec<CString> = opts
            .args(&self.include)
            .iter()
            .map(|a| nul(a))
            .collect::<Result<_>>()?;
        let argv: Vec<*const c_char> = args.iter().map(|a| a.as_ptr()).collect();
        let fail = |m: String| Error::file(file, m);
        let mut prog: Program = std::ptr::null_mut();
        // SAFETY: all pointers are to live NUL-terminated strings; `prog` is destroyed
        // by the guard below on every path.
        let r = unsafe {
            (self.create)(
                &mut prog,
                c_src.as_ptr(),
                c_name.as_ptr(),
                0,
                std::ptr::null(),
                std::ptr::null(),
            )
        };
        if r != 0 {
            return Err(fail(self.err("nvrtcCreateProgram", r)));
        }
        struct Guard<'a>(&'a Nvrtc, Program);
        impl Drop for Guard<'_> {
            fn drop(&mut self) {
                // SAFETY: the program was created by nvrtcCreateProgram and is freed once.
                unsafe { (self.0.destroy)(&mut self.1) };
            }
        }
        let g = Guard(self, prog);
        // SAFETY: `argv` holds `args.len()` valid C strings that outlive the call.
        let r = unsafe { (self.compile)(g.1, argv.len() as c_int, argv.as_ptr()) };
        let log = self.read(g.1, self.log_size, self.log).unwrap_or_default();
        let log = String::from_utf8_lossy(&log)
            .trim_end_matches('\0')
            .trim_end()
            .to_string();
        if r != 0 {
            let what = self.err("", r);
            let body = if log.is_empty() {
                what.trim_start_matches(": ").to_string()
            } else {
                log
            };
            return Err(fail(format!(
                "NVRTC {} failed to compile for {}:\n{body}",
                self.version_string(),
                opts.arch
            )));
        }
        let cubin = self.read(g.1, self.cubin_size, self.cubin).map_err(fail)?;
        if cubin.is_empty() {
            return Err(fail(format!("NVRTC produced no CUBIN for {}", opts.arch)));
        }
        let ptx = self.read(g.1, self.ptx_size, self.ptx).unwrap_or_default();
        let ptx = String::from_utf8_lossy(&ptx)
            .trim_end_matches('\0')
            .to_string();
        Ok(Compiled { cubin, ptx, log })
    }

    /// Read one of the program's outputs through its size + copy function pair.
    fn read(
        &self,
        prog: Program,
        size: unsafe extern "C" fn(Program, *mut usize) -> NvrtcResult,
        get: unsafe extern "C" fn(Program, *mut c_char) -> NvrtcResult,
    ) -> std::result::Result<Vec<u8>, String> {
        let mut n = 0usize;
        // SAFETY: the buffer has exactly the size NVRTC reported for this output.
        unsafe {
            let r = size(prog, &mut n);
            if r != 0 {
                return Err(self.err("reading NVRTC output size", r));
            }
            let mut buf = vec![0u8; n];
            if n > 0 {
                let r = get(prog, buf.as_mut_ptr().cast());
                if r != 0 {
                    return Err(self.err("reading NVRTC output", r));
                }
            }
            Ok(buf)
        }
    }

    /// Compile one embedded kernel source, through the on-disk cache.
    pub fn compile_source(&self, src: &KernelSource, opts: &Options) -> Result<Vec<u8>> {
        cache::compile_cached(self, &format!("kernels/{}", src.file), src.source, opts)
    }
}
