//! Finding the CUDA pieces on disk: libnvrtc (+ its builtins), the headers NVRTC
//! needs (`cuda_bf16.h`), `ptxas`, and the cuBLAS libraries.
//!
//! Roots are searched in this order; each item is taken from the first root that
//! has it:
//!
//! 1. `$ONELAYER_CUDA_HOME`             a toolkit (`include/`, `lib64/`, `bin/`)
//! 2. `$ONELAYER_CUDA_WHEELS`           a folder PyPI wheels were installed into
//! 3. `$CUDA_HOME`, `$CUDA_PATH`        toolkits
//! 4. `<repo>/.tools/cuda`              where tools/install_cuda_wheels.sh installs
//! 5. `/usr/local/cuda`
//!
//! Wheel layouts (a site-packages-like folder, or its `nvidia/` subfolder):
//! - CUDA 13 wheels share one tree: `nvidia/cu13/{lib,include,bin}`
//!   (`lib/libnvrtc.so.13`, `lib/libnvrtc-builtins.so.13.0`, `include/cuda_bf16.h`,
//!   `bin/ptxas`, and `lib/libcublas.so.13` from `nvidia-cublas`).
//! - CUDA 12 wheels use one tree per package: `nvidia/cuda_nvrtc/lib/libnvrtc.so.12`,
//!   `nvidia/cuda_runtime/include/cuda_bf16.h`, `nvidia/cuda_nvcc/bin/ptxas`,
//!   `nvidia/cublas/lib/libcublas.so.12`.

use std::path::{Path, PathBuf};

/// The CUDA major version this build binds to (the `cuda-13` / `cuda-12` feature);
/// libraries of this major are preferred.
pub const CUDA_MAJOR: u32 = if cfg!(feature = "cuda-12") { 12 } else { 13 };

/// One place CUDA files may live.
#[derive(Debug, Clone)]
pub struct Root {
    /// Where it came from, e.g. `ONELAYER_CUDA_WHEELS=/x` or `/usr/local/cuda`.
    pub origin: String,
    pub lib_dirs: Vec<PathBuf>,
    pub include_dirs: Vec<PathBuf>,
    pub bin_dirs: Vec<PathBuf>,
}

/// All roots, in search order; roots whose folders do not exist are left out.
pub fn roots() -> Vec<Root> {
    let mut out = candidates();
    out.retain(|r| {
        r.lib_dirs
            .iter()
            .chain(&r.include_dirs)
            .chain(&r.bin_dirs)
            .any(|d| d.is_dir())
    });
    out
}

/// Every root the search considers, existing or not.
fn candidates() -> Vec<Root> {
    let mut out = Vec::new();
    let env = |k: &str| {
        std::env::var_os(k)
            .filter(|v| !v.is_empty())
            .map(PathBuf::from)
    };
    if let Some(p) = env("ONELAYER_CUDA_HOME") {
        out.push(toolkit_root(
            format!("ONELAYER_CUDA_HOME={}", p.display()),
            &p,
        ));
    }
    if let Some(p) = env("ONELAYER_CUDA_WHEELS") {
        out.push(wheel_root(
            format!("ONELAYER_CUDA_WHEELS={}", p.display()),
            &p,
        ));
    }
    for k in ["CUDA_HOME", "CUDA_PATH"] {
        if let Some(p) = env(k) {
            out.push(toolkit_root(format!("{k}={}", p.display()), &p));
        }
    }
    let local = Path::new(env!("CARGO_MANIFEST_DIR")).join(".tools/cuda");
    out.push(wheel_root(local.display().to_string(), &local));
    let usr = PathBuf::from("/usr/local/cuda");
    out.push(toolkit_root(usr.display().to_string(), &usr));
    out
}

fn toolkit_root(origin: String, p: &Path) -> Root {
    Root {
        origin,
        lib_dirs: vec![
            p.join("lib64"),
            p.join("lib"),
            p.join("targets/x86_64-linux/lib"),
            p.join("targets/sbsa-linux/lib"),
        ],
        include_dirs: vec![
            p.join("include"),
            p.join("targets/x86_64-linux/include"),
            p.join("targets/sbsa-linux/include"),
        ],
        bin_dirs: vec![p.join("bin")],
    }
}

fn wheel_root(origin: String, p: &Path) -> Root {
    // Accept the site-packages folder itself or its `nvidia/` subfolder.
    let nv = if p.join("nvidia").is_dir() {
        p.join("nvidia")
    } else {
        p.to_path_buf()
    };
    let per_major = |sub: &str| -> Vec<PathBuf> {
        let mut v = vec![nv.join(format!("cu{CUDA_MAJOR}")).join(sub)];
        for m in [13, 12] {
            if m != CUDA_MAJOR {
                v.push(nv.join(format!("cu{m}")).join(sub));
            }
        }
        v
    };
    let mut lib_dirs = per_major("lib");
    lib_dirs.extend(["cuda_nvrtc/lib", "cublas/lib"].map(|s| nv.join(s)));
    let mut include_dirs = per_major("include");
    include_dirs.push(nv.join("cuda_runtime/include"));
    let mut bin_dirs = per_major("bin");
    bin_dirs.push(nv.join("cuda_nvcc/bin"));
    Root {
        origin,
        lib_dirs,
        include_dirs,
        bin_dirs,
    }
}

/// A shared library found on disk, with the root that provided it.
#[derive(Debug, Clone)]
pub struct Found {
    pub path: PathBuf,
    pub origin: String,
}

/// `lib<stem>.so.<major>` (preferring this build's major, then any other), e.g.
/// `find_lib("nvrtc")` -> `.../libnvrtc.so.13`.
pub fn find_lib(stem: &str) -> Option<Found> {
    let roots = roots();
    let mut majors = vec![CUDA_MAJOR];
    majors.extend([13, 12].into_iter().filter(|m| *m != CUDA_MAJOR));
    for major in majors {
        let name = format!("lib{stem}.so.{major}");
        for r in &roots {
            for d in &r.lib_dirs {
                let p = d.join(&name);
                if p.is_file() {
                    return Some(Found {
                        path: p,
                        origin: r.origin.clone(),
                    });
                }
            }
        }
    }
    None
}

/// `libnvrtc-builtins.so.<major>.<minor>` next to a given libnvrtc (libnvrtc opens it
/// by soname at compile time, so it must be loaded first when its folder is not on
/// the dynamic linker's path).
pub fn nvrtc_builtins_next_to(nvrtc: &Path) -> Option<PathBuf> {
    let dir = nvrtc.parent()?;
    let mut hits: Vec<PathBuf> = std::fs::read_dir(dir)
        .ok()?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| {
            let n = p.file_name().and_then(|n| n.to_str()).unwrap_or("");
            n.starts_with("libnvrtc-builtins.so.") && !n.contains(".alt.")
        })
        .collect();
    // Shortest name first: the soname (`.so.13.0`) before the full version.
    hits.sort_by_key(|p| p.as_os_str().len());
    hits.into_iter().next()
}

/// The folder holding `cuda_bf16.h`, and the root it came from.
pub fn find_include() -> Option<Found> {
    for r in roots() {
        for d in &r.include_dirs {
            if d.join("cuda_bf16.h").is_file() {
                return Some(Found {
                    path: d.clone(),
                    origin: r.origin.clone(),
                });
            }
        }
    }
    None
}

/// `ptxas`: from the roots, then `$PATH`.
pub fn find_ptxas() -> Option<PathBuf> {
    for r in roots() {
        for d in &r.bin_dirs {
            let p = d.join("ptxas");
            if p.is_file() {
                return Some(p);
            }
        }
    }
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|d| d.join("ptxas"))
        .find(|p| p.is_file())
}

/// A one-line description of where the search looked, for error messages.
pub fn searched() -> String {
    let mut r: Vec<String> = candidates().into_iter().map(|r| r.origin).collect();
    let unset: Vec<&str> = [
        "ONELAYER_CUDA_HOME",
        "ONELAYER_CUDA_WHEELS",
        "CUDA_HOME",
        "CUDA_PATH",
    ]
    .into_iter()
    .filter(|k| std::env::var_os(k).is_none_or(|v| v.is_empty()))
    .collect();
    if !unset.is_empty() {
        r.push(format!("{} unset", unset.join("/")));
    }
    format!("searched {}", r.join(", "))
}

/// Load `lib<stem>.so.<major>` by its full path when one is found in the roots, and
/// keep it loaded for the life of the process. cudarc opens its libraries by soname;
/// the dynamic linker then finds this already-loaded copy (a loaded library matches
/// its soname), so no `LD_LIBRARY_PATH` is needed. Returns the path loaded, if any.
pub fn preload(stem: &str) -> Option<PathBuf> {
    let found = find_lib(stem)?;
    // SAFETY: loading a CUDA library runs its initialisers, which have no
    // preconditions; the handle is leaked so the library stays loaded.
    let lib = unsafe { libloading::Library::new(&found.path) }.ok()?;
    std::mem::forget(lib);
    Some(found.path)
}
