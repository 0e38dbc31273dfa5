//! NVRTC compiles every embedded kernel source (`SOURCES` and the test-only
//! `TEST_SOURCES`) for sm_80 and sm_90 (no GPU needed).
//!
//! Needs libnvrtc and cuda_bf16.h (tools/install_cuda_wheels.sh, or a CUDA toolkit).
//! Without them the tests print a skip message and pass, unless
//! `ONELAYER_REQUIRE_NVRTC=1` (CI sets it after installing the wheels), in which case
//! they fail.

use onelayer::backend::cuda::nvrtc::{self, cache, ptxas, Arch, Nvrtc, Options};
use onelayer::kernels::{KernelSource, SOURCES, TEST_SOURCES};

fn nvrtc_or_skip(test: &str) -> Option<&'static Nvrtc> {
    match nvrtc::nvrtc() {
        Ok(nv) => Some(nv),
        Err(e) => {
            if std::env::var("ONELAYER_REQUIRE_NVRTC").is_ok_and(|v| v == "1") {
                panic!("ONELAYER_REQUIRE_NVRTC=1 but NVRTC is unavailable: {e}");
            }
            eprintln!("skipping {test}: {e}");
            None
        }
    }
}

const ARCHS: [Arch; 2] = [Arch::new(8, 0), Arch::new(9, 0)];

/// Compile one source for one arch; check the CUBIN and that every kernel build.rs
/// listed for the source is an entry function of the compiled module.
fn check_one(nv: &Nvrtc, src: &KernelSource, arch: Arch) -> Result<(), String> {
    let opts = Options {
        ptxas_verbose: true,
        ..Options::new(arch)
    };
    let c = nv
        .compile(&format!("kernels/{}", src.file), src.source, &opts)
        .map_err(|e| e.to_string())?;
    if !c.cubin.starts_with(b"\x7fELF") {
        return Err(format!("{} {arch}: CUBIN is not an ELF image", src.file));
    }
    let report = ptxas::parse(&c.log);
    // The decode path's kernels must not spill (their registers are sized per
    // specialisation, DESIGN.md section 4).
    if src.file == "attention_paged.cu" || src.file == "kv_write.cu" {
        for r in &report {
            if r.spill_store_bytes + r.spill_load_bytes > 0 {
                return Err(format!(
                    "{} {arch}: kernel {} spills ({} bytes stored, {} loaded)",
                    src.file, r.kernel, r.spill_store_bytes, r.spill_load_bytes
                ));
            }
        }
    }
    for k in src.kernels {
        if !report.iter().any(|r| r.kernel == k.name) {
            return Err(format!(
                "{} {arch}: kernel {} not in the compiled module (ptxas saw {:?})",
                src.file,
                k.name,
                report.iter().map(|r| &r.kernel).collect::<Vec<_>>()
            ));
        }
    }
    Ok(())
}

#[test]
fn every_kernel_compiles_for_sm80_and_sm90() {
    let Some(nv) = nvrtc_or_skip("every_kernel_compiles_for_sm80_and_sm90") else {
        return;
    };
    // One job per (source, arch); a few threads (NVRTC is thread-safe across programs).
    let jobs: Vec<_> = SOURCES
        .iter()
        .chain(TEST_SOURCES)
        .flat_map(|s| ARCHS.iter().map(move |&a| (s, a)))
        .collect();
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
    let failures: Vec<String> = std::thread::scope(|scope| {
        let handles: Vec<_> = (0..threads)
            .map(|t| {
                let jobs = &jobs;
                scope.spawn(move || {
                    let mut failures = Vec::new();
                    for &(src, arch) in jobs.iter().skip(t).step_by(threads) {
                        if let Err(e) = check_one(nv, src, arch) {
                            failures.push(e);
                        }
                    }
                    failures
                })
            })
            .collect();
        handles
            .into_iter()
            .flat_map(|h| h.join().expect("compile thread"))
            .collect()
    });
    assert!(
        failures.is_empty(),
        "{} compilations failed:\n{}",
        failures.len(),
        failures.join("\n\n")
    );
}

/// The NVRTC path itself, independent of what kernels/ holds: bf16 header, shared
/// memory, a warp shuffle.
#[test]
fn inline_bf16_source_compiles() {
    let Some(nv) = nvrtc_or_skip("inline_bf16_source_compiles") else {
        return;
    };
    let src = r#"#line 1 "kernels/inline_test.cu"
#include <cuda_bf16.h>
extern "C" __global__ void scale_bf16(__nv_bfloat16* out, const __nv_bfloat16* x, float s, int n) {
    __shared__ float buf[256];
    int i = blockIdx.x * blockDim.x + threadIdx.x;
    buf[threadIdx.x] = i < n ? __bfloat162float(x[i]) : 0.f;
    __syncthreads();
    float v = buf[threadIdx.x] + __shfl_xor_sync(0xffffffffu, buf[threadIdx.x], 1);
    if (i < n) out[i] = __float2bfloat16(v * s);
}
"#;
    for arch in ARCHS {
        let opts = Options {
            ptxas_verbose: true,
            ..Options::new(arch)
        };
        let c = nv
            .compile("kernels/inline_test.cu", src, &opts)
            .unwrap_or_else(|e| panic!("{e}"));
        assert!(c.cubin.len() > 1000 && c.cubin.starts_with(b"\x7fELF"));
        assert!(c.ptx.contains(".entry scale_bf16"));
        let r = ptxas::parse(&c.log);
        assert_eq!(r.len(), 1, "ptxas report: {}", c.log);
        assert_eq!(r[0].smem_bytes, 1024);
        assert!(r[0].registers > 0);
    }
}

#[test]
fn compile_error_names_file_and_line() {
    let Some(nv) = nvrtc_or_skip("compile_error_names_file_and_line") else {
        return;
    };
    let src = "#line 1 \"kernels/broken.cu\"\n\
               extern \"C\" __global__ void broken(float* x) {\n\
               \x20   x[0] = 1.0f;\n\
               \x20   x[1] = not_declared_anywhere;\n\
               }\n";
    let e = nv
        .compile("kernels/broken.cu", src, &Options::new(Arch::new(9, 0)))
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("kernels/broken.cu(3)"),
        "error should point at kernels/broken.cu line 3: {e}"
    );
    assert!(e.contains("not_declared_anywhere"), "{e}");
    assert!(e.starts_with("kernels/broken.cu: "), "{e}");
}

#[test]
fn cache_stores_then_reuses_the_cubin() {
    let Some(nv) = nvrtc_or_skip("cache_stores_then_reuses_the_cubin") else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let src = "extern \"C\" __global__ void k(float* x) { x[threadIdx.x] *= 2.f; }\n";
    let opts = Options::new(Arch::new(8, 0));
    let first = cache::compile_in(Some(dir.path()), nv, "kernels/k.cu", src, &opts).unwrap();
    let entry = cache::entry(dir.path(), nv, "kernels/k.cu", src, &opts);
    assert_eq!(
        std::fs::read(&entry).unwrap(),
        first,
        "cache file holds the CUBIN"
    );
    // A different arch or source is a different entry.
    assert_ne!(
        entry,
        cache::entry(
            dir.path(),
            nv,
            "kernels/k.cu",
            src,
            &Options::new(Arch::new(9, 0))
        )
    );
    assert_ne!(
        entry,
        cache::entry(dir.path(), nv, "kernels/k.cu", "//\n", &opts)
    );
    // A second compile reads the file: prove it by planting a marked ELF there.
    let mut planted = first.clone();
    planted.extend_from_slice(b"planted");
    std::fs::write(&entry, &planted).unwrap();
    assert_eq!(
        cache::compile_in(Some(dir.path()), nv, "kernels/k.cu", src, &opts).unwrap(),
        planted
    );
    // No temporary files are left behind.
    let names: Vec<_> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(names.len(), 1, "{names:?}");
}

#[test]
fn arch_names_parse() {
    assert_eq!(Arch::parse("sm_90").unwrap(), Arch::new(9, 0));
    assert_eq!(Arch::parse("90").unwrap(), Arch::new(9, 0));
    assert_eq!(Arch::parse("8.6").unwrap(), Arch::new(8, 6));
    assert_eq!(Arch::parse("sm_100a").unwrap().name(), "sm_100a");
    assert_eq!(Arch::for_device(9, 0).name(), "sm_90a");
    assert_eq!(Arch::for_device(8, 0).name(), "sm_80");
    assert!(Arch::parse("hopper").is_err());
}
