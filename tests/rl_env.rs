//! Multi-turn RL end to end on the CPU: the built-in `guess` environment with
//! GiGPO improves the demo model, the external JSON-lines example environment gives
//! the very same run as the built-in one, `engine eval` scores a run as the run did,
//! every algorithm runs on both kinds of task, and broken environments or settings
//! are one-line errors.

use std::path::{Path, PathBuf};
use std::process::Command;

mod common;

use common::{engine, engine_ok as run_ok, engine_output};

fn tmp(name: &str) -> PathBuf {
    common::fresh_dir("env", name)
}

/// metrics.jsonl without the timing fields.
fn metrics(dir: &Path) -> Vec<serde_json::Value> {
    std::fs::read_to_string(dir.join("metrics.jsonl"))
        .unwrap()
        .lines()
        .map(|l| {
            let mut v: serde_json::Value = serde_json::from_str(l).unwrap();
            let o = v.as_object_mut().unwrap();
            o.retain(|k, _| !k.contains("second") && !k.contains("per_s"));
            v
        })
        .collect()
}

fn example_env() -> String {
    format!(
        "python3 {}/examples/envs/guess_env.py",
        env!("CARGO_MANIFEST_DIR")
    )
}

/// 30 GiGPO steps on `guess`: episodes are logged with their turns, and the mean
/// return of the last five steps is clearly above the first five (about 0.27 ->
/// 0.42 with these seeds; chance with a random guesser is about a third).
#[test]
fn gigpo_on_guess_improves() {
    let dir = tmp("gigpo");
    let d = dir.to_str().unwrap();
    run_ok(&[
        "run",
        "--device",
        "cpu",
        "--task",
        "guess",
        "--algo",
        "gigpo",
        "--steps",
        "30",
        "--eval-every",
        "30",
        "--eval-size",
        "20",
        "--out",
        d,
    ]);
    let m = metrics(&dir);
    assert_eq!(m.len(), 31, "step 0 eval + 30 steps");
    let reward = |r: std::ops::Range<usize>| {
        r.clone()
            .map(|i| m[i]["reward_mean"].as_f64().unwrap())
            .sum::<f64>()
            / r.len() as f64
    };
    let (first, last) = (reward(1..6), reward(26..31));
    assert!(last > first + 0.08, "mean return {first:.3} -> {last:.3}");
    for line in &m[1..] {
        let turns = line["turns_mean"].as_f64().unwrap();
        assert!((1.0..=4.0).contains(&turns), "{line}");
        // One rollout per turn: 16 tasks x 8 episodes x turns.
        let samples = line["samples"].as_u64().unwrap() as f64;
        assert!((samples - 128.0 * turns).abs() < 1e-6, "{line}");
    }
    // `engine eval --trained RUN` is the run's own evaluation of its final state.
    let out = engine()
        .args(["eval", "--device", "cpu", "--trained", d, "--limit", "20"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let e: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(e["task"], "guess");
    assert_eq!(e["accuracy"], m[30]["eval_accuracy"]);
    let _ = std::fs::remove_dir_all(&dir);
}

/// The example external environment (examples/envs/guess_env.py) reproduces the
/// built-in one exactly: same episodes, same losses, same evaluation.
#[test]
fn external_example_env_matches_the_builtin() {
    if Command::new("python3").arg("--version").output().is_err() {
        eprintln!("skipped: no python3 on this machine");
        return;
    }
    let common = [
        "run",
        "--device",
        "cpu",
        "--algo",
        "gigpo",
        "--steps",
        "2",
        "--prompts-per-step",
        "4",
        "--eval-every",
        "2",
        "--eval-size",
        "10",
    ];
    let (a, b) = (tmp("builtin"), tmp("external"));
    let mut args = common.to_vec();
    args.extend(["--task", "guess", "--out", a.to_str().unwrap()]);
    run_ok(&args);
    let env = example_env();
    let mut args = common.to_vec();
    args.extend(["--env", &env, "--out", b.to_str().unwrap()]);
    run_ok(&args);
    assert_eq!(metrics(&a), metrics(&b));
    let _ = std::fs::remove_dir_all(&a);
    let _ = std::fs::remove_dir_all(&b);
}

/// GRPO and Dr. GRPO on the environment, GiGPO on a single-turn task.
#[test]
fn every_algorithm_runs_on_both_kinds_of_task() {
    for (task, algo) in [("guess", "grpo"), ("guess", "dr-grpo"), ("arith", "gigpo")] {
        let dir = tmp(&format!("{task}-{algo}"));
        run_ok(&[
            "run",
            "--device",
            "cpu",
            "--task",
            task,
            "--algo",
            algo,
            "--steps",
            "2",
            "--prompts-per-step",
            "4",
            "--eval-every",
            "0",
            "--out",
            dir.to_str().unwrap(),
        ]);
        let m = metrics(&dir);
        assert_eq!(m.len(), 2, "{task} {algo}");
        assert!(m[1]["loss"].as_f64().unwrap().is_finite(), "{task} {algo}");
        assert!(dir.join("trained.safetensors").exists());
        let _ = std::fs::remove_dir_all(&dir);
    }
}

#[test]
fn broken_environments_and_settings_are_one_line_errors() {
    let dir = tmp("bad");
    let d = dir.to_str().unwrap();
    let cases: Vec<(Vec<&str>, &str)> = vec![
        (vec!["--env", "exit 3"], "exit status: 3"),
        (vec!["--env", "echo hello"], "not a JSON object"),
        (
            vec!["--env", "echo '{\"error\": \"no such world\"}'"],
            "no such world",
        ),
        (
            vec!["--env", "echo '{\"reward\": 1}'"],
            "no \"observation\"",
        ),
        (vec!["--task", "guess", "--max-turns", "0"], "--max-turns"),
        (vec!["--task", "guess", "--gamma", "1.5"], "--gamma"),
        (
            vec!["--task", "guess", "--gigpo-mode", "median"],
            "--gigpo-mode",
        ),
        (vec!["--task", "guess", "--algo", "ppo"], "--algo"),
    ];
    for (extra, want) in cases {
        let mut args = vec!["run", "--device", "cpu", "--steps", "1", "--out", d];
        args.extend(&extra);
        let (ok, _, err) = engine_output(&args);
        assert!(!ok, "{extra:?} succeeded");
        let last = err.trim_end().lines().last().unwrap_or("");
        assert!(
            last.starts_with("error: ") && last.contains(want),
            "{extra:?}: {err}"
        );
    }
    let _ = std::fs::remove_dir_all(&dir);
}
