//! Bad input ends with one line on stderr naming the file, key or flag, and a
//! non-zero exit — never a panic (DESIGN.md section 9).

mod common;

use common::fixture;
use safetensors::tensor::{Dtype, TensorView};
use std::path::{Path, PathBuf};

const MODEL: &str = "qwen3-gqa2-tied";

use common::engine_output as engine;

/// Runs the engine, expects failure with one `error:` line containing every `needle`.
#[track_caller]
fn fails_with(args: &[&str], needles: &[&str]) {
    let (ok, _, err) = engine(args);
    assert!(!ok, "{args:?} should fail");
    let lines: Vec<&str> = err.lines().filter(|l| !l.starts_with("device:")).collect();
    assert_eq!(lines.len(), 1, "{args:?}: expected one line, got:\n{err}");
    assert!(lines[0].starts_with("error: "), "{args:?}: {err}");
    assert!(
        !err.contains("panicked") && !err.contains("internal error"),
        "{err}"
    );
    for n in needles {
        assert!(lines[0].contains(n), "{args:?}: {:?} lacks {n:?}", lines[0]);
    }
}

/// A copy of the fixture model in a temp dir, to break.
fn copy_model() -> (tempfile::TempDir, PathBuf) {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("model");
    std::fs::create_dir(&dir).unwrap();
    for e in std::fs::read_dir(fixture(MODEL)).unwrap() {
        let e = e.unwrap();
        std::fs::copy(e.path(), dir.join(e.file_name())).unwrap();
    }
    (tmp, dir)
}

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

#[test]
fn the_happy_path_works() {
    let m = fixture(MODEL);
    let (ok, out, err) = engine(&["score", "--model", s(&m), "--ids", "1,2,3"]);
    assert!(ok, "{err}");
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["ids"], serde_json::json!([1, 2, 3]));
    assert!(v["logprobs"][0].is_null() && v["logprobs"][2].as_f64().unwrap() < 0.0);
    let (ok, out, err) = engine(&["score", "--model", s(&m), "--text", "Hello world"]);
    assert!(ok && out.contains("logprobs"), "{err}");
    let (ok, out, err) = engine(&[
        "generate",
        "--model",
        s(&m),
        "--prompt",
        "Hello",
        "--max-new-tokens",
        "4",
        "--json",
    ]);
    assert!(ok, "{err}");
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["ids"].as_array().unwrap().len(), 4);
    let (ok, out, err) = engine(&["inspect", "--model", s(&m), "--json"]);
    assert!(ok, "{err}");
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["layers"], 3);
    assert!(v["params_total"].as_u64().unwrap() > 0);
}

#[test]
fn nonexistent_model_path() {
    fails_with(
        &["score", "--model", "/no/such/model", "--ids", "1,2"],
        &["/no/such/model"],
    );
    fails_with(
        &["score", "--model", "not-an-alias-or-id", "--ids", "1,2"],
        &["not-an-alias-or-id"],
    );
}

#[test]
fn missing_or_malformed_config() {
    let (_t, dir) = copy_model();
    let model = s(&dir).to_string();
    std::fs::write(dir.join("config.json"), "{\"model_type\": \"qwen3\",").unwrap();
    fails_with(
        &["score", "--model", &model, "--ids", "1,2"],
        &["config.json", "malformed"],
    );
    std::fs::write(dir.join("config.json"), "{\"model_type\": \"qwen3\"}").unwrap();
    fails_with(
        &["score", "--model", &model, "--ids", "1,2"],
        &["config.json", "hidden_size"],
    );
    std::fs::remove_file(dir.join("config.json")).unwrap();
    fails_with(&["inspect", "--model", &model], &["config.json"]);
}

#[test]
fn truncated_or_garbage_safetensors() {
    let (_t, dir) = copy_model();
    let model = s(&dir).to_string();
    let file = dir.join("model.safetensors");
    let bytes = std::fs::read(&file).unwrap();
    std::fs::write(&file, &bytes[..bytes.len() / 2]).unwrap();
    fails_with(
        &["score", "--model", &model, "--ids", "1,2"],
        &["model.safetensors"],
    );
    std::fs::write(&file, b"this is not a safetensors file at all").unwrap();
    fails_with(
        &["score", "--model", &model, "--ids", "1,2"],
        &["model.safetensors"],
    );
    std::fs::remove_file(&file).unwrap();
    fails_with(
        &["score", "--model", &model, "--ids", "1,2"],
        &["model.safetensors"],
    );
}

/// Rewrite the checkpoint with `name` dropped, or replaced by a tensor of `shape`.
fn rewrite(dir: &Path, name: &str, shape: Option<Vec<usize>>) {
    let file = dir.join("model.safetensors");
    let bytes = std::fs::read(&file).unwrap();
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let mut owned: Vec<(String, Dtype, Vec<usize>, Vec<u8>)> = st
        .tensors()
        .into_iter()
        .filter(|(n, _)| n != name)
        .map(|(n, t)| (n, t.dtype(), t.shape().to_vec(), t.data().to_vec()))
        .collect();
    if let Some(shape) = shape {
        let n: usize = shape.iter().product();
        owned.push((name.to_string(), Dtype::F32, shape, vec![0u8; n * 4]));
    }
    let views: Vec<(String, TensorView)> = owned
        .iter()
        .map(|(n, d, s, b)| (n.clone(), TensorView::new(*d, s.clone(), b).unwrap()))
        .collect();
    safetensors::serialize_to_file(views, None, &file).unwrap();
}

#[test]
fn missing_or_misshaped_tensor() {
    let name = "model.layers.1.self_attn.k_norm.weight";
    let (_t, dir) = copy_model();
    rewrite(&dir, name, None);
    fails_with(
        &["score", "--model", s(&dir), "--ids", "1,2"],
        &[name, "not found"],
    );
    let (_t, dir) = copy_model();
    rewrite(&dir, name, Some(vec![17]));
    fails_with(
        &["score", "--model", s(&dir), "--ids", "1,2"],
        &[name, "[17]", "[16]", "model.safetensors"],
    );
}

#[test]
fn token_ids_outside_the_vocabulary_or_malformed() {
    let m = fixture(MODEL);
    fails_with(
        &["score", "--model", s(&m), "--ids", "1,384"],
        &["384", "vocabulary"],
    );
    fails_with(
        &["score", "--model", s(&m), "--ids", "1,x"],
        &["--ids", "'x'"],
    );
    fails_with(&["score", "--model", s(&m), "--ids", ","], &["--ids"]);
    fails_with(
        &["generate", "--model", s(&m), "--prompt-ids", "99999"],
        &["99999", "vocabulary"],
    );
}

#[test]
fn empty_prompts() {
    let m = fixture(MODEL);
    fails_with(
        &["generate", "--model", s(&m), "--prompt", ""],
        &["--prompt", "empty"],
    );
    fails_with(
        &["score", "--model", s(&m), "--text", ""],
        &["--text", "empty"],
    );
}

#[test]
fn bad_flags() {
    let m = fixture(MODEL);
    fails_with(
        &["score", "--model", s(&m), "--ids", "1,2", "--device", "tpu"],
        &["--device", "tpu"],
    );
    fails_with(
        &[
            "generate",
            "--model",
            s(&m),
            "--prompt",
            "hi",
            "--top-p",
            "2",
        ],
        &["--top-p"],
    );
    fails_with(
        &[
            "generate",
            "--model",
            s(&m),
            "--prompt",
            "hi",
            "--temperature=-1",
        ],
        &["--temperature"],
    );
}

#[test]
fn devices() {
    let m = fixture(MODEL);
    // the emulated CUDA backend agrees with the CPU within bf16 error
    let score = |device: &str| -> Vec<f64> {
        let (ok, out, err) = engine(&[
            "score",
            "--model",
            s(&m),
            "--ids",
            "5,9,200,3",
            "--device",
            device,
        ]);
        assert!(ok, "{device}: {err}");
        let v: serde_json::Value = serde_json::from_str(&out).unwrap();
        v["logprobs"].as_array().unwrap()[1..]
            .iter()
            .map(|x| x.as_f64().unwrap())
            .collect()
    };
    let (cpu, emu) = (score("cpu"), score("emu"));
    for (a, b) in cpu.iter().zip(&emu) {
        assert!(
            (a - b).abs() < 0.1 + 0.02 * a.abs(),
            "cpu {cpu:?} vs emu {emu:?}"
        );
    }
    if onelayer::backend::cuda::gpu::probe().is_none() {
        fails_with(
            &[
                "score",
                "--model",
                s(&m),
                "--ids",
                "1,2",
                "--device",
                "cuda",
            ],
            &["--device cuda"],
        );
        fails_with(
            &[
                "score",
                "--model",
                s(&m),
                "--ids",
                "1,2",
                "--device",
                "cuda:3",
            ],
            &["--device cuda:3"],
        );
    }
}

#[test]
fn bench_runs_on_a_builtin_shape() {
    let (ok, out, err) = engine(&[
        "bench",
        "--shape",
        "tiny",
        "--device",
        "cpu",
        "--batch",
        "2",
        "--prompt-len",
        "8",
        "--new-tokens",
        "3",
        "--json",
    ]);
    assert!(ok, "{err}");
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert!(
        v["prefill_tokens_per_s"].as_f64().unwrap() > 0.0
            && v["decode_tokens_per_s"].as_f64().unwrap() > 0.0
    );
    assert_eq!(v["batch"], 2);
    fails_with(
        &["bench", "--shape", "llama-7b", "--device", "cpu"],
        &["--shape", "llama-7b"],
    );
    fails_with(
        &[
            "bench", "--shape", "tiny", "--device", "cpu", "--batch", "0",
        ],
        &["--batch"],
    );
}

#[test]
fn plan_terms_and_bad_layers() {
    let (ok, out, err) = engine(&[
        "plan",
        "--model",
        "qwen3-4b",
        "--train-layer",
        "18",
        "--json",
    ]);
    assert!(ok, "{err}");
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["train_layers"], serde_json::json!([18]));
    assert_eq!(v["trained_params"], 100_930_816u64);
    assert!(v["total_bytes"].as_u64().unwrap() < v["full_parameter_adamw_bytes"].as_u64().unwrap());
    let m = fixture(MODEL);
    let (ok, out, err) = engine(&["plan", "--model", s(&m), "--train-layer", "0-2"]);
    assert!(ok && out.contains("[0, 1, 2]"), "{out}{err}");
    fails_with(
        &["plan", "--model", s(&m), "--train-layer", "3"],
        &["--train-layer", "out of range"],
    );
    fails_with(
        &["plan", "--model", s(&m), "--train-layer", "1-x"],
        &["--train-layer", "'x'"],
    );
}
