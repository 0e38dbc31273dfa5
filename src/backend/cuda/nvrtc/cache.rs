//! On-disk cache of compiled CUBINs.
//!
//! Key: a 128-bit hash of (source text, file name, NVRTC command line, NVRTC
//! identity: version + resolved library path + size). Folder: `$ONELAYER_CACHE/kernels`
//! when `ONELAYER_CACHE` is set, else `$XDG_CACHE_HOME/onelayer/kernels`, else
//! `~/.cache/onelayer/kernels`. Files are `<stem>-<arch>-<hash>.cubin`, written to a
//! temporary name in the same folder and renamed into place, so a reader never sees
//! a partial file and concurrent writers are harmless. `ONELAYER_KERNEL_CACHE=0`
//! turns the cache off. Cache trouble (an unwritable folder, a corrupt entry) never
//! fails a compile: it falls back to compiling.

use super::{Nvrtc, Options};
use crate::Result;
use std::io::Write;
use std::path::{Path, PathBuf};

/// The cache folder, or `None` when caching is off or no home folder is known.
pub fn dir() -> Option<PathBuf> {
    if std::env::var("ONELAYER_KERNEL_CACHE").is_ok_and(|v| v == "0") {
        return None;
    }
    let env = |k: &str| {
        std::env::var_os(k)
            .filter(|v| !v.is_empty())
            .map(PathBuf::from)
    };
    if let Some(p) = env("ONELAYER_CACHE") {
        return Some(p.join("kernels"));
    }
    if let Some(p) = env("XDG_CACHE_HOME") {
        return Some(p.join("onelayer/kernels"));
    }
    env("HOME").map(|h| h.join(".cache/onelayer/kernels"))
}

/// FNV-1a, 128-bit: stable across builds and platforms (unlike `DefaultHasher`).
pub fn hash128(parts: &[&[u8]]) -> u128 {
    const OFFSET: u128 = 0x6c62272e07bb014262b821756295c58d;
    const PRIME: u128 = 0x0000000001000000000000000000013B;
    let mut h = OFFSET;
    for part in parts {
        // Length-prefix each part so ("ab","c") and ("a","bc") differ.
        for b in (part.len() as u64).to_le_bytes().iter().chain(part.iter()) {
            h ^= *b as u128;
            h = h.wrapping_mul(PRIME);
        }
    }
    h
}

/// The cache file for one compilation.
pub fn entry(dir: &Path, nv: &Nvrtc, file: &str, source: &str, opts: &Options) -> PathBuf {
    let args = opts.args(&nv.include).join("\n");
    let h = hash128(&[
        source.as_bytes(),
        file.as_bytes(),
        args.as_bytes(),
        nv.identity.as_bytes(),
    ]);
    let stem = Path::new(file)
        .file_stem()
        .and_then(|s| s.to_str())
        .unwrap_or("kernel");
    let stem: String = stem
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '_' {
                c
            } else {
                '_'
            }
        })
        .collect();
    dir.join(format!("{stem}-{}-{h:032x}.cubin", opts.arch.name()))
}

/// A cached CUBIN when present and plausible (an ELF image), else compile and store.
pub fn compile_cached(nv: &Nvrtc, file: &str, source: &str, opts: &Options) -> Result<Vec<u8>> {
    compile_in(dir().as_deref(), nv, file, source, opts)
}

/// `compile_cached` with an explicit cache folder (`None`: no caching).
pub fn compile_in(
    dir: Option<&Path>,
    nv: &Nvrtc,
    file: &str,
    source: &str,
    opts: &Options,
) -> Result<Vec<u8>> {
    let Some(dir) = dir else {
        return Ok(nv.compile(file, source, opts)?.cubin);
    };
    let path = entry(dir, nv, file, source, opts);
    if let Ok(bytes) = std::fs::read(&path) {
        if bytes.len() > 4 && bytes.starts_with(b"\x7fELF") {
            return Ok(bytes);
        }
    }
    let cubin = nv.compile(file, source, opts)?.cubin;
    let _ = store(&path, &cubin);
    Ok(cubin)
}

/// Write `bytes` to `path` atomically (temporary file in the same folder + rename).
pub fn store(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let dir = path.parent().unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir)?;
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    static SEQ: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let seq = SEQ.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let tmp = dir.join(format!(
        ".tmp-{}-{seq}-{nanos}-{}",
        std::process::id(),
        path.file_name().and_then(|n| n.to_str()).unwrap_or("x")
    ));
    let res = (|| {
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
        std::fs::rename(&tmp, path)
    })();
    if res.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    res
}
