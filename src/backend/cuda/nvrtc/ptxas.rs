//! Per-kernel resource reports (registers, shared memory, spills) from ptxas.
//!
//! Two sources give the same text: NVRTC's own log when compiled with
//! `--ptxas-options=-v` (always available), and an external `ptxas -v` run on the
//! PTX NVRTC produced (the `nvidia-cuda-nvcc` wheel or `$CUDA_HOME/bin`). The lines
//! look like:
//!
//! ```text
//! ptxas info    : Compiling entry function 'rmsnorm_forward_bf16' for 'sm_90'
//! ptxas info    : Function properties for rmsnorm_forward_bf16
//! ptxas         .     0 bytes stack frame, 0 bytes spill stores, 0 bytes spill loads
//! ptxas info    : Used 32 registers, used 1 barriers, 1024 bytes smem, 372 bytes cmem[0]
//! ```

use crate::{Error, Result};
use std::path::Path;

/// What ptxas reports for one kernel (entry function).
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct Resources {
    pub kernel: String,
    pub registers: u32,
    /// Static shared memory, bytes (dynamic shared memory is set at launch).
    pub smem_bytes: u32,
    pub stack_bytes: u32,
    pub spill_store_bytes: u32,
    pub spill_load_bytes: u32,
    pub barriers: u32,
}

/// The number just before `unit` in `line` (`"1024 bytes smem"`, unit `"bytes smem"`).
fn number_before(line: &str, unit: &str) -> Option<u32> {
    let at = line.find(unit)?;
    line[..at]
        .split(|c: char| !c.is_ascii_digit())
        .rfind(|s| !s.is_empty())?
        .parse()
        .ok()
}

/// Parse a ptxas `-v` log into one entry per kernel, in the order they appear.
pub fn parse(log: &str) -> Vec<Resources> {
    let mut out: Vec<Resources> = Vec::new();
    let mut props_for: Option<String> = None;
    for line in log.lines() {
        if let Some(rest) = line.split("Compiling entry function '").nth(1) {
            let name = rest.split('\'').next().unwrap_or("").to_string();
            out.push(Resources {
                kernel: name,
                ..Default::default()
            });
            props_for = None;
        } else if let Some(rest) = line.split("Function properties for ").nth(1) {
            props_for = Some(rest.trim().to_string());
        } else if line.contains("bytes stack frame") {
            // Properties of the current entry (device functions have their own block).
            if let (Some(p), Some(cur)) = (&props_for, out.last_mut()) {
                if *p == cur.kernel {
                    cur.stack_bytes = number_before(line, "bytes stack frame").unwrap_or(0);
                    cur.spill_store_bytes = number_before(line, "bytes spill stores").unwrap_or(0);
                    cur.spill_load_bytes = number_before(line, "bytes spill loads").unwrap_or(0);
                }
            }
        } else if line.contains("Used ") && line.contains("registers") {
            if let Some(cur) = out.last_mut() {
                cur.registers = number_before(line, "registers").unwrap_or(0);
                cur.barriers = number_before(line, "barriers").unwrap_or(0);
                cur.smem_bytes = number_before(line, "bytes smem").unwrap_or(0);
            }
        }
    }
    out
}

/// Run an external `ptxas -v` on `ptx` for `gpu_name` (`sm_90`) and parse its report.
pub fn run_external(ptxas: &Path, ptx: &str, gpu_name: &str) -> Result<Vec<Resources>> {
    // One folder per call: several calls may run at once.
    static SEQ: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let seq = SEQ.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let dir = std::env::temp_dir().join(format!("onelayer-ptxas-{}-{seq}", std::process::id()));
    std::fs::create_dir_all(&dir).map_err(|e| Error::file(&dir, e))?;
    let input = dir.join(format!("{gpu_name}.ptx"));
    std::fs::write(&input, ptx).map_err(|e| Error::file(&input, e))?;
    let out = std::process::Command::new(ptxas)
        .arg("-v")
        .arg(format!("--gpu-name={gpu_name}"))
        .arg(&input)
        .arg("-o")
        .arg(dir.join(format!("{gpu_name}.cubin")))
        .output()
        .map_err(|e| Error::file(ptxas, e));
    let _ = std::fs::remove_dir_all(&dir);
    let out = out?;
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    if !out.status.success() {
        return Err(Error::file(
            ptxas,
            format!("failed for {gpu_name}:\n{}", text.trim_end()),
        ));
    }
    Ok(parse(&text))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_nvrtc_ptxas_log() {
        let log = "ptxas info    : 0 bytes gmem\n\
            ptxas info    : Compiling entry function 'k' for 'sm_80'\n\
            ptxas info    : Function properties for helper\n\
            ptxas         .     8 bytes stack frame, 0 bytes spill stores, 0 bytes spill loads\n\
            ptxas info    : Function properties for k\n\
            ptxas         .     16 bytes stack frame, 4 bytes spill stores, 8 bytes spill loads\n\
            ptxas info    : Used 10 registers, used 1 barriers, 1024 bytes smem, 372 bytes cmem[0]\n\
            ptxas info    : Compiling entry function 'j' for 'sm_80'\n\
            ptxas info    : Used 255 registers, 0 bytes smem\n";
        let r = parse(log);
        assert_eq!(r.len(), 2);
        assert_eq!(
            r[0],
            Resources {
                kernel: "k".into(),
                registers: 10,
                smem_bytes: 1024,
                stack_bytes: 16,
                spill_store_bytes: 4,
                spill_load_bytes: 8,
                barriers: 1
            }
        );
        assert_eq!(
            (r[1].kernel.as_str(), r[1].registers, r[1].barriers),
            ("j", 255, 0)
        );
    }
}
