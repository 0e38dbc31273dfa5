//! `engine kernels`: list the embedded CUDA kernels; with `--check`, compile every
//! source with NVRTC for each architecture (no GPU needed) and report registers,
//! shared memory and spills per kernel.
//!
//! The report comes from NVRTC's own ptxas pass (`--ptxas-options=-v`), so it needs
//! nothing beyond libnvrtc; `--ptxas` additionally assembles NVRTC's PTX with an
//! external `ptxas -v` (the nvidia-cuda-nvcc wheel or `$CUDA_HOME/bin`) and reports
//! its numbers instead.

use super::print_json;
use onelayer::backend::cuda::nvrtc::{self, ptxas, toolkit, Arch, Nvrtc, Options};
use onelayer::kernels::{KernelSig, KernelSource, SOURCES, TEST_SOURCES};
use onelayer::{Error, Result};
use serde_json::{json, Value};
use std::collections::BTreeMap;

#[derive(clap::Args, Debug)]
pub struct Args {
    /// Compile every kernel source with NVRTC and report resources per kernel.
    #[arg(long)]
    pub check: bool,
    /// Architectures for --check, comma-separated (sm_80, sm_90, sm_90a, ...).
    #[arg(long, value_delimiter = ',', default_value = "sm_80,sm_90")]
    pub arch: Vec<String>,
    /// With --check: also run the external ptxas on NVRTC's PTX and report its numbers.
    #[arg(long)]
    pub ptxas: bool,
    /// Print JSON instead of text.
    #[arg(long)]
    pub json: bool,
}

/// The engine's kernel sources, then the test-only ones (`tests/*.cu`).
fn all_sources() -> Vec<&'static KernelSource> {
    SOURCES.iter().chain(TEST_SOURCES).collect()
}

/// One (source, arch) compilation: per-kernel resources, or the error text.
type Outcome = std::result::Result<Vec<ptxas::Resources>, String>;

/// `["out: ptr", "x: ptr", "n: i32"]`: each parameter's name and kind.
fn arg_names(sig: &KernelSig) -> Vec<String> {
    sig.args
        .iter()
        .zip(sig.arg_names)
        .map(|(k, n)| format!("{n}: {}", format!("{k:?}").to_lowercase()))
        .collect()
}

fn compile_one(
    nv: &Nvrtc,
    src: &KernelSource,
    arch: Arch,
    external: Option<&std::path::Path>,
) -> Outcome {
    let opts = Options {
        ptxas_verbose: true,
        ..Options::new(arch)
    };
    let c = nv
        .compile(&format!("kernels/{}", src.file), src.source, &opts)
        .map_err(|e| e.to_string())?;
    match external {
        Some(p) => ptxas::run_external(p, &c.ptx, &arch.name()).map_err(|e| e.to_string()),
        None => Ok(ptxas::parse(&c.log)),
    }
}

pub fn run(a: Args) -> Result<()> {
    if !a.check {
        return list(a.json);
    }
    let archs: Vec<Arch> = a
        .arch
        .iter()
        .map(|s| Arch::parse(s))
        .collect::<Result<_>>()?;
    let sources = all_sources();
    let nv = nvrtc::nvrtc()?;
    let external = if a.ptxas {
        Some(toolkit::find_ptxas().ok_or_else(|| {
            Error::Invalid(format!(
                "--ptxas: ptxas not found ({}): run tools/install_cuda_wheels.sh (it installs nvidia-cuda-nvcc)",
                toolkit::searched()
            ))
        })?)
    } else {
        None
    };

    // All (source, arch) pairs, compiled a few at a time.
    let jobs: Vec<(usize, Arch)> = (0..sources.len())
        .flat_map(|i| archs.iter().map(move |&a| (i, a)))
        .collect();
    let threads = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1)
        .min(jobs.len().max(1));
    let mut results: Vec<Option<Outcome>> = vec![None; jobs.len()];
    std::thread::scope(|s| {
        let ext = external.as_deref();
        let handles: Vec<_> = (0..threads)
            .map(|t| {
                let (jobs, sources) = (&jobs, &sources);
                s.spawn(move || {
                    (t..jobs.len())
                        .step_by(threads)
                        .map(|j| (j, compile_one(nv, sources[jobs[j].0], jobs[j].1, ext)))
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        for h in handles {
            for (j, r) in h.join().expect("compile thread") {
                results[j] = Some(r);
            }
        }
    });
    let outcome = |i: usize, arch: Arch| -> &Outcome {
        let j = jobs
            .iter()
            .position(|&(s, a)| s == i && a == arch)
            .expect("job");
        results[j].as_ref().expect("compiled")
    };
    let failed = results.iter().filter(|r| matches!(r, Some(Err(_)))).count();

    if a.json {
        let report: Vec<Value> = sources
            .iter()
            .enumerate()
            .map(|(i, src)| {
                let errors: BTreeMap<String, &String> = archs
                    .iter()
                    .filter_map(|&ar| outcome(i, ar).as_ref().err().map(|e| (ar.name(), e)))
                    .collect();
                let kernels: Vec<Value> = src
                    .kernels
                    .iter()
                    .map(|k| {
                        let res: BTreeMap<String, Option<&ptxas::Resources>> = archs
                            .iter()
                            .filter_map(|&ar| {
                                let r = outcome(i, ar).as_ref().ok()?;
                                Some((ar.name(), r.iter().find(|r| r.kernel == k.name)))
                            })
                            .collect();
                        json!({"name": k.name, "args": arg_names(k), "resources": res})
                    })
                    .collect();
                json!({"file": src.file, "kernels": kernels, "errors": errors})
            })
            .collect();
        print_json(&json!({
            "nvrtc": {
                "version": nv.version_string(),
                "library": nv.lib_path.display().to_string(),
                "include": nv.include.display().to_string(),
                "ptxas": external.as_ref().map(|p| p.display().to_string()),
            },
            "archs": archs.iter().map(|a| a.name()).collect::<Vec<_>>(),
            "sources": report,
            "ok": failed == 0,
        }));
    } else {
        println!(
            "NVRTC {}  {}  ({})",
            nv.version_string(),
            nv.lib_path.display(),
            nv.lib_origin
        );
        println!("headers    {}", nv.include.display());
        if let Some(p) = &external {
            println!("ptxas      {}", p.display());
        }
        for (i, src) in sources.iter().enumerate() {
            println!("{}", src.file);
            for k in src.kernels {
                println!("  {}({})", k.name, arg_names(k).join(", "));
                for &ar in &archs {
                    if let Ok(rs) = outcome(i, ar) {
                        match rs.iter().find(|r| r.kernel == k.name) {
                            Some(r) => println!(
                                "    {:<7} {:>3} regs  {:>6} B smem  {:>4} B stack  spill {} B st / {} B ld{}",
                                ar.name(),
                                r.registers,
                                r.smem_bytes,
                                r.stack_bytes,
                                r.spill_store_bytes,
                                r.spill_load_bytes,
                                if r.spill_store_bytes + r.spill_load_bytes > 0 { "  SPILLS" } else { "" }
                            ),
                            None => println!("    {:<7} (not in ptxas report)", ar.name()),
                        }
                    }
                }
            }
            for &ar in &archs {
                if let Err(e) = outcome(i, ar) {
                    eprintln!("error: {e}");
                }
            }
        }
        let kernels: usize = sources.iter().map(|s| s.kernels.len()).sum();
        println!(
            "{}: {} sources, {kernels} kernels, {} architectures ({})",
            if failed == 0 { "ok" } else { "FAILED" },
            sources.len(),
            archs.len(),
            archs
                .iter()
                .map(|a| a.name())
                .collect::<Vec<_>>()
                .join(", ")
        );
    }
    if failed > 0 {
        return Err(Error::invalid(format!(
            "{failed} of {} kernel compilations failed (NVRTC log above)",
            jobs.len()
        )));
    }
    Ok(())
}

fn list(as_json: bool) -> Result<()> {
    if as_json {
        let v: Vec<Value> = all_sources()
            .into_iter()
            .flat_map(|src| {
                src.kernels
                    .iter()
                    .map(move |k| json!({"file": src.file, "name": k.name, "args": arg_names(k)}))
            })
            .collect();
        print_json(&json!({ "kernels": v }));
        return Ok(());
    }
    for src in all_sources() {
        println!("{}", src.file);
        for k in src.kernels {
            println!("  {}({})", k.name, arg_names(k).join(", "));
        }
    }
    Ok(())
}
