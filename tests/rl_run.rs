//! `engine run` end to end on the CPU: the built-in demo learns (a shortened run),
//! a resumed run ends bit-identical to an uninterrupted one, the run directory holds
//! what it should, and bad settings are one-line errors.

use std::path::{Path, PathBuf};

mod common;

fn tmp(name: &str) -> PathBuf {
    common::fresh_dir("rl", name)
}

/// Run the engine, which must succeed; its stderr.
#[track_caller]
fn run_ok(args: &[&str]) -> String {
    common::engine_ok(args).1
}

fn metrics(dir: &Path) -> Vec<serde_json::Value> {
    std::fs::read_to_string(dir.join("metrics.jsonl"))
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

/// The default demo (RL on the built-in pretrained base, 150 steps): the base scores
/// as its card says (0.28 held-out greedy accuracy, assets/base) and training its
/// middle layer raises the held-out accuracy clearly (0.38 measured).
#[test]
fn demo_learns() {
    let dir = tmp("demo");
    let d = dir.to_str().unwrap();
    run_ok(&["run", "--device", "cpu", "--eval-every", "75", "--out", d]);
    let m = metrics(&dir);
    let base = m[0]["eval_accuracy"].as_f64().unwrap();
    let last = m.last().unwrap()["eval_accuracy"].as_f64().unwrap();
    assert!(
        (0.25..=0.31).contains(&base),
        "the base model scores {base}, its card says 0.28"
    );
    assert!(
        last >= base + 0.06,
        "eval accuracy only reached {last} (from {base})"
    );
    for f in [
        "config.toml",
        "reward.svg",
        "trained.safetensors",
        "checkpoints/step-000050/meta.json",
        "checkpoints/step-000150/meta.json",
    ] {
        assert!(dir.join(f).exists(), "{f} missing");
    }
    let _ = std::fs::remove_dir_all(&dir);
}

/// 6 steps straight vs 3 steps, then --resume to 6: identical trained weights and
/// identical metrics (timings aside).
#[test]
fn resume_equals_uninterrupted() {
    let common = [
        "--device",
        "cpu",
        "--prompts-per-step",
        "4",
        "--eval-every",
        "0",
        "--save-every",
        "3",
    ];
    let a = tmp("straight");
    let b = tmp("resumed");
    let mut args = vec!["run", "--steps", "6", "--out", a.to_str().unwrap()];
    args.extend(common);
    run_ok(&args);
    let mut args = vec!["run", "--steps", "3", "--out", b.to_str().unwrap()];
    args.extend(common);
    run_ok(&args);
    let err = run_ok(&["run", "--resume", b.to_str().unwrap(), "--steps", "6"]);
    assert!(err.contains("resuming"), "{err}");
    let wa = std::fs::read(a.join("trained.safetensors")).unwrap();
    let wb = std::fs::read(b.join("trained.safetensors")).unwrap();
    assert!(
        wa == wb,
        "resumed weights differ from the uninterrupted run's"
    );
    let (ma, mb) = (metrics(&a), metrics(&b));
    assert_eq!(ma.len(), mb.len());
    for (x, y) in ma.iter().zip(&mb) {
        for k in ["step", "reward_mean", "loss", "grad_norm", "entropy"] {
            assert_eq!(x[k], y[k], "metric {k}");
        }
    }
    let _ = std::fs::remove_dir_all(&a);
    let _ = std::fs::remove_dir_all(&b);
}

/// The demo with a KV cache far below what a step needs (32 positions, two blocks:
/// one sequence at a time where the step's 32 need 64 blocks) trains exactly the
/// weights of the unconstrained run.
#[test]
fn a_small_kv_cache_trains_the_same_weights() {
    let common = [
        "--device",
        "cpu",
        "--steps",
        "4",
        "--prompts-per-step",
        "4",
        "--eval-every",
        "0",
    ];
    let a = tmp("kv-full");
    let b = tmp("kv-small");
    let mut args = vec!["run", "--out", a.to_str().unwrap()];
    args.extend(common);
    run_ok(&args);
    let mut args = vec![
        "run",
        "--out",
        b.to_str().unwrap(),
        "--kv-cache-tokens",
        "32",
    ];
    args.extend(common);
    run_ok(&args);
    let wa = std::fs::read(a.join("trained.safetensors")).unwrap();
    let wb = std::fs::read(b.join("trained.safetensors")).unwrap();
    assert!(wa == wb, "a small KV cache changed the trained weights");
    let (ma, mb) = (metrics(&a), metrics(&b));
    assert!(
        ma.iter().any(|m| m["grad_norm"].as_f64().unwrap() > 0.0),
        "no step updated the weights: the comparison would be empty"
    );
    for (x, y) in ma.iter().zip(&mb) {
        for k in ["reward_mean", "loss", "response_length_mean", "grad_norm"] {
            assert_eq!(x[k], y[k], "metric {k}");
        }
    }
    let _ = std::fs::remove_dir_all(&a);
    let _ = std::fs::remove_dir_all(&b);
}

#[test]
fn bad_settings_are_one_line_errors() {
    let dir = tmp("bad");
    let d = dir.to_str().unwrap();
    let cfg = dir.join("bad.toml");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(&cfg, "learning_rate = 1\n").unwrap();
    for (args, want) in [
        (vec!["run", "--task", "chess", "--out", d], "--task"),
        (
            vec![
                "run",
                "--task",
                "gsm8k",
                "--model",
                "tests/fixtures/qwen3-gqa2-tied",
                "--out",
                d,
            ],
            "--data",
        ),
        (vec!["run", "--group-size", "0", "--out", d], "--group-size"),
        (
            vec!["run", "--kv-cache-tokens", "0", "--out", d],
            "--kv-cache-tokens",
        ),
        (
            vec![
                "run",
                "--kv-cache-tokens",
                "8",
                "--max-new-tokens",
                "30",
                "--out",
                d,
            ],
            "--kv-cache-tokens",
        ),
        (
            vec!["run", "--train-layer", "9", "--out", d],
            "--train-layer",
        ),
        (
            vec!["run", "--config", cfg.to_str().unwrap(), "--out", d],
            "bad.toml",
        ),
        (vec!["run", "--algo", "ppo", "--out", d], "--algo"),
        (vec!["run", "--resume", "/nonexistent/run"], "config.toml"),
    ] {
        let out = common::engine().args(&args).output().unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{args:?} succeeded");
        let last = err.trim().lines().last().unwrap_or("");
        assert!(
            last.starts_with("error:") && last.contains(want),
            "{args:?}: {err}"
        );
        assert!(
            !err.contains("panicked") && !err.contains("internal error"),
            "{err}"
        );
    }
    let _ = std::fs::remove_dir_all(&dir);
}

/// Train a layer of the bf16 fixture from a rollout file, export, and load back: the
/// exported directory has every file of the base model, the trained tensors (in
/// bf16), the others unchanged, and the engine scores it as transformers scores the
/// same export (differently from the base).
#[test]
fn export_loads_back() {
    use onelayer::weights::WeightFiles;
    let base = common::fixture("qwen3-mqa-hd24-untied-bf16");
    let dir = tmp("export");
    std::fs::create_dir_all(&dir).unwrap();
    let rollouts = dir.join("r.jsonl");
    std::fs::write(
        &rollouts,
        "{\"group\": 0, \"prompt_ids\": [5, 6, 7], \"completion_ids\": [8, 9], \"reward\": 1}\n\
         {\"group\": 0, \"prompt_ids\": [5, 6, 7], \"completion_ids\": [10, 11], \"reward\": 0}\n",
    )
    .unwrap();
    let run = dir.join("run");
    let out = dir.join("exported");
    run_ok(&[
        "run",
        "--model",
        base.to_str().unwrap(),
        "--train-layer",
        "1",
        "--rollouts",
        rollouts.to_str().unwrap(),
        "--optimizer",
        "sgd",
        "--lr",
        "10",
        "--out",
        run.to_str().unwrap(),
        "--device",
        "cpu",
    ]);
    run_ok(&[
        "export",
        "--model",
        base.to_str().unwrap(),
        "--trained",
        run.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
    ]);
    for f in std::fs::read_dir(&base).unwrap() {
        let name = f.unwrap().file_name().to_string_lossy().to_string();
        if !name.contains("safetensors") {
            assert!(out.join(&name).exists(), "{name} not copied");
        }
    }
    let exported = WeightFiles::open_dir(&out).unwrap();
    let trained = WeightFiles::open_files(&[run.join("trained.safetensors")]).unwrap();
    let original = WeightFiles::open_dir(&base).unwrap();
    let mut changed = 0;
    for name in original.names() {
        let info = original.info(name).unwrap();
        assert_eq!(exported.info(name).unwrap().dtype, info.dtype, "{name}");
        let got = exported.get_f32(name, &info.shape).unwrap();
        let want = if trained.contains(name) {
            changed += 1;
            let t = trained.get_f32(name, &info.shape).unwrap();
            t.iter()
                .map(|&v| half::bf16::from_f32(v).to_f32())
                .collect()
        } else {
            original.get_f32(name, &info.shape).unwrap()
        };
        assert_eq!(got, want, "{name}");
    }
    assert!(changed > 5);
    let score = |m: &Path| {
        let o = common::engine()
            .args([
                "score",
                "--device",
                "cpu",
                "--model",
                m.to_str().unwrap(),
                "--ids",
                "5,6,7,8,9,3,2",
            ])
            .output()
            .unwrap();
        assert!(o.status.success());
        let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
        v["logprobs"].as_array().unwrap()[1..]
            .iter()
            .map(|x| x.as_f64().unwrap())
            .collect::<Vec<f64>>()
    };
    // What transformers' AutoModelForCausalLM computes on this export, loaded
    // unchanged (`python tools/check_export.py EXPORT --ids 5,6,7,8,9,3,2`, float32).
    let transformers = [
        -6.9719122965009115,
        -9.234089793121559,
        -0.5903059088579027,
        -0.2544557406410426,
        -6.022094682333277,
        -11.508150468843287,
    ];
    let (got, before) = (score(&out), score(&base));
    for ((g, t), b) in got.iter().zip(transformers).zip(&before) {
        assert!(
            (g - t).abs() < 2e-3,
            "engine {got:?} vs transformers {transformers:?}"
        );
        assert!(
            (b - t).abs() > 0.1,
            "the export did not change the model: {before:?}"
        );
    }
    let _ = std::fs::remove_dir_all(&dir);
}
