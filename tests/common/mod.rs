//! Helpers shared by the integration tests: fixture paths, reference tensors,
//! and the error metric of DESIGN.md section 7.
#![allow(dead_code)]

use safetensors::tensor::Dtype;
use safetensors::SafeTensors;
use std::path::{Path, PathBuf};

pub const MODELS: [&str; 4] = [
    "qwen3-gqa2-tied",
    "qwen3-mqa-hd24-untied-bf16",
    "qwen2-gqa4-bias-tied",
    "qwen2-mha-untied-f16",
];

/// The repository root: `$ONELAYER_REPO`, else the crate folder baked in at compile
/// time when it still holds the fixtures, else the current directory (test binaries
/// copied to another machine and run from the repository root: tools/gpu_check.sh).
pub fn repo_root() -> PathBuf {
    if let Some(p) = std::env::var_os("ONELAYER_REPO").filter(|v| !v.is_empty()) {
        return PathBuf::from(p);
    }
    let baked = Path::new(env!("CARGO_MANIFEST_DIR"));
    if baked.join("tests/fixtures").is_dir() {
        baked.to_path_buf()
    } else {
        std::env::current_dir().unwrap_or_else(|_| PathBuf::from("."))
    }
}

pub fn fixture(name: &str) -> PathBuf {
    repo_root().join("tests/fixtures").join(name)
}

/// `../shared/data/...` when the shared folder exists.
pub fn shared_data(rel: &str) -> Option<PathBuf> {
    let p = repo_root().join("../shared/data").join(rel);
    if p.exists() {
        Some(p)
    } else {
        eprintln!("skipping: {} not found", p.display());
        None
    }
}

/// The tensors of a fixture's `reference.safetensors`.
pub struct Reference {
    bytes: Vec<u8>,
    pub json: serde_json::Value,
}

impl Reference {
    pub fn load(model: &str) -> Self {
        let dir = fixture(model);
        let bytes =
            std::fs::read(dir.join("reference.safetensors")).expect("reference.safetensors");
        let json =
            serde_json::from_str(&std::fs::read_to_string(dir.join("reference.json")).unwrap())
                .unwrap();
        Reference { bytes, json }
    }

    fn view(&self, name: &str) -> (Dtype, Vec<usize>, Vec<u8>) {
        let st = SafeTensors::deserialize(&self.bytes).unwrap();
        let t = st
            .tensor(name)
            .unwrap_or_else(|_| panic!("reference tensor {name}"));
        (t.dtype(), t.shape().to_vec(), t.data().to_vec())
    }

    pub fn f32(&self, name: &str) -> (Vec<f32>, Vec<usize>) {
        let (dtype, shape, data) = self.view(name);
        assert_eq!(dtype, Dtype::F32, "{name}");
        (
            data.chunks_exact(4)
                .map(|c| f32::from_le_bytes(c.try_into().unwrap()))
                .collect(),
            shape,
        )
    }

    pub fn ids(&self, name: &str) -> Vec<u32> {
        let (dtype, _, data) = self.view(name);
        assert_eq!(dtype, Dtype::I64, "{name}");
        data.chunks_exact(8)
            .map(|c| i64::from_le_bytes(c.try_into().unwrap()) as u32)
            .collect()
    }
}

/// ‖got − want‖ / ‖want‖, max |got − want| and where it is.
pub struct Diff {
    pub rel: f64,
    pub max_abs: f64,
    pub worst: usize,
}

pub fn diff(got: &[f32], want: &[f32]) -> Diff {
    assert_eq!(got.len(), want.len(), "lengths differ");
    let (mut num, mut den, mut max_abs, mut worst) = (0.0f64, 0.0f64, 0.0f64, 0);
    for (i, (&g, &w)) in got.iter().zip(want).enumerate() {
        let d = (g as f64 - w as f64).abs();
        assert!(g.is_finite(), "non-finite value {g} at {i}");
        num += d * d;
        den += (w as f64) * (w as f64);
        if d > max_abs {
            max_abs = d;
            worst = i;
        }
    }
    Diff {
        rel: num.sqrt() / den.sqrt().max(1e-30),
        max_abs,
        worst,
    }
}

#[track_caller]
pub fn assert_close(what: &str, got: &[f32], want: &[f32], tol: f64) {
    let d = diff(got, want);
    assert!(
        d.rel <= tol,
        "{what}: relative error {:.3e} > {tol:.0e} (max abs {:.3e} at {}: got {} want {})",
        d.rel,
        d.max_abs,
        d.worst,
        got[d.worst],
        want[d.worst]
    );
}

/// The CUDA backends to test: the host emulator always, and GPU 0 when one is
/// usable (so the same tests run against the real device).
pub fn cuda_backends() -> Vec<(String, onelayer::backend::cuda::CudaBackend)> {
    use onelayer::backend::cuda::{emu::EmuDevice, gpu::GpuDevice, CudaBackend};
    use std::sync::Arc;
    let mut v = vec![(
        "emu".to_string(),
        CudaBackend::new(Arc::new(EmuDevice::new())),
    )];
    match GpuDevice::open(0) {
        Ok(gpu) => v.push(("gpu".to_string(), CudaBackend::new(Arc::new(gpu)))),
        Err(e) => eprintln!("no GPU test: {e}"),
    }
    v
}

/// Every tensor of a safetensors file, as f32 (the file must hold only F32
/// tensors), by name, with its shape. A missing or unreadable file is a failure.
pub fn read_f32_tensors(path: &Path) -> std::collections::BTreeMap<String, (Vec<usize>, Vec<f32>)> {
    let bytes = std::fs::read(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let st = SafeTensors::deserialize(&bytes).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    st.tensors()
        .into_iter()
        .map(|(name, t)| {
            assert_eq!(t.dtype(), Dtype::F32, "{}: {name}", path.display());
            let data = t
                .data()
                .chunks_exact(4)
                .map(|c| f32::from_le_bytes(c.try_into().unwrap()))
                .collect();
            (name, (t.shape().to_vec(), data))
        })
        .collect()
}

/// The row-major multi-index of flat index `i` in `shape` (for error messages).
pub fn unravel(mut i: usize, shape: &[usize]) -> Vec<usize> {
    let mut idx = vec![0; shape.len()];
    for (k, &d) in shape.iter().enumerate().rev() {
        if d > 0 {
            idx[k] = i % d;
            i /= d;
        }
    }
    idx
}

/// The `engine` binary of this build (offline: no test reaches the HF Hub).
pub fn engine() -> std::process::Command {
    let mut c = std::process::Command::new(env!("CARGO_BIN_EXE_engine"));
    c.env("HF_HUB_OFFLINE", "1");
    c
}

/// Run `engine args`: (success, stdout, stderr).
pub fn engine_output(args: &[&str]) -> (bool, String, String) {
    let out = engine().args(args).output().expect("run engine");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// Run `engine args`, which must succeed: (stdout, stderr).
#[track_caller]
pub fn engine_ok(args: &[&str]) -> (String, String) {
    let (ok, out, err) = engine_output(args);
    assert!(ok, "engine {args:?} failed:\n{err}");
    (out, err)
}

/// A temporary directory for this test process, removed first if it exists
/// (`tag` names the test file, `name` the case).
pub fn fresh_dir(tag: &str, name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("onelayer-{tag}-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    d
}

/// A code problem (`inc`) with a tiny test and its canonical solution.
pub fn inc_problem() -> onelayer::tasks::Problem {
    use onelayer::tasks::{code, CodeSpec, Problem};
    let spec = CodeSpec {
        prompt: "def inc(x: int) -> int:\n    \"\"\"x + 1\"\"\"\n".into(),
        test:
            "def check(candidate):\n    assert candidate(1) == 2\n    assert candidate(-1) == 0\n"
                .into(),
        entry_point: "inc".into(),
        canonical_solution: Some("    return x + 1\n".into()),
    };
    Problem {
        id: "inc".into(),
        prompt: code::prompt(&spec.prompt),
        reference: "    return x + 1\n".into(),
        code: Some(spec),
        row: None,
    }
}
