//! Custom reward functions (`--reward-fn`, verl and TRL forms) and `engine reward`:
//! the rewards a function returns reach `engine reward` and a short `engine run`
//! unchanged; a raising, slow, wrong-typed or crashing function is a one-line error
//! naming the file, the function and the row, and a run it stops keeps its
//! checkpoints; code completions that game the tests score 0 with their outcome.

use serde_json::Value;
use std::path::{Path, PathBuf};

mod common;

fn tmp(name: &str) -> PathBuf {
    let d = common::fresh_dir("rewardfn", name);
    std::fs::create_dir_all(&d).unwrap();
    d
}

fn have_python() -> bool {
    let ok = std::process::Command::new("python3")
        .arg("-c")
        .arg("pass")
        .status()
        .is_ok_and(|s| s.success());
    if !ok {
        eprintln!("skipping: no python3");
    }
    ok
}

fn write(dir: &Path, name: &str, text: &str) -> String {
    let p = dir.join(name);
    std::fs::write(&p, text).unwrap();
    p.to_str().unwrap().to_string()
}

fn json_lines(text: &str) -> Vec<Value> {
    text.lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
        .collect()
}

const VERL_FN: &str = r#"
def compute_score(data_source, solution_str, ground_truth, extra_info=None):
    print("this print must not disturb the protocol")
    right = solution_str.strip() == str(ground_truth)
    return {"score": 1.0 if right else 0.25, "right": float(right),
            "index": extra_info.get("index", -1), "note": "ignored"}
"#;

const TRL_FN: &str = r#"
def reward_func(prompts, completions, completion_ids, **kwargs):
    out = []
    for p, c, w in zip(prompts, completions, kwargs["weight"]):
        text = c[0]["content"] if isinstance(c, list) else c
        out.append(None if text == "skip" else w * len(text))
    return out
"#;

/// Rows: a chat prompt and a plain one, with verl's columns and a TRL extra column.
const ROWS: &str = r#"{"prompt": [{"role": "user", "content": "2+5?"}], "data_source": "toy", "reward_model": {"style": "rule", "ground_truth": "7"}, "extra_info": {"index": 0}, "weight": 1.0}
{"prompt": "3+5?", "ground_truth": "8", "extra_info": {"index": 1}, "weight": 0.5}
"#;

#[test]
fn verl_and_trl_functions_give_their_rewards_in_engine_reward() {
    if !have_python() {
        return;
    }
    let dir = tmp("forms");
    let data = write(&dir, "rows.jsonl", ROWS);
    let comps = write(
        &dir,
        "c.jsonl",
        "{\"index\": 0, \"completion\": \"7\"}\n{\"index\": 1, \"completion\": \"nine\"}\n{\"index\": 1, \"completion\": \"skip\"}\n",
    );
    let verl = write(&dir, "verl.py", VERL_FN);
    let (out, _) = common::engine_ok(&[
        "reward",
        "--data",
        &data,
        "--completions",
        &comps,
        "--reward-fn",
        &verl,
        "--json",
    ]);
    let lines = json_lines(&out);
    assert_eq!(lines.len(), 4, "{out}");
    let rewards: Vec<f64> = lines[..3]
        .iter()
        .map(|l| l["reward"].as_f64().unwrap())
        .collect();
    assert_eq!(rewards, [1.0, 0.25, 0.25]);
    assert_eq!(lines[0]["reward/right"], 1.0);
    assert_eq!(
        lines[1]["reward/index"], 1.0,
        "extra_info reaches the function"
    );
    assert!(
        lines[0].get("reward/note").is_none(),
        "non-numbers are not metrics"
    );
    assert_eq!(lines[3]["summary"], true);
    assert_eq!(lines[3]["completions"], 3);
    assert!((lines[3]["mean_reward"].as_f64().unwrap() - 0.5).abs() < 1e-12);
    assert!((lines[3]["reward/right"].as_f64().unwrap() - 1.0 / 3.0).abs() < 1e-12);

    // TRL: one batched call; a chat row's completion is a message list; None -> 0.
    let trl = write(&dir, "trl.py", TRL_FN);
    let (out, _) = common::engine_ok(&[
        "reward",
        "--data",
        &data,
        "--completions",
        &comps,
        "--reward-fn",
        &trl,
        "--reward-fn-style",
        "trl",
        "--reward-workers",
        "2",
        "--json",
    ]);
    let lines = json_lines(&out);
    let rewards: Vec<f64> = lines[..3]
        .iter()
        .map(|l| l["reward"].as_f64().unwrap())
        .collect();
    assert_eq!(rewards, [1.0, 2.0, 0.0]);
    let outcomes: Vec<&str> = lines[..3]
        .iter()
        .map(|l| l["outcome"].as_str().unwrap())
        .collect();
    assert_eq!(outcomes, ["scored", "scored", "none"]);
    assert_eq!(lines[3]["outcomes"]["none"], 1);
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn a_bad_function_is_a_one_line_error_naming_file_function_and_row() {
    if !have_python() {
        return;
    }
    let dir = tmp("bad");
    let data = write(&dir, "rows.jsonl", ROWS);
    let comps = write(&dir, "c.jsonl", "{\"index\": 1, \"completion\": \"8\"}\n");
    let bad = write(
        &dir,
        "bad.py",
        r#"
import os, time
def raises(**kw):
    raise ValueError("cannot parse the answer")
def slow(**kw):
    time.sleep(60)
def wrong_type(**kw):
    return "1.0"
def crashes(**kw):
    os._exit(3)
def trl_short(prompts, completions, **kw):
    return [1.0] * (len(completions) + 1)
"#,
    );
    let cases: [(&str, &[&str], &str); 6] = [
        (
            "raises",
            &[],
            "ValueError: cannot parse the answer (bad.py line 4",
        ),
        (
            "slow",
            &["--reward-timeout", "1"],
            "did not return within 1 s",
        ),
        ("wrong_type", &[], "returned \"1.0\", expected a float"),
        ("crashes", &[], "the reward worker exited"),
        (
            "trl_short",
            &["--reward-fn-style", "trl"],
            "returned 2 rewards for 1",
        ),
        ("missing", &[], "defines no function 'missing'"),
    ];
    for (name, extra, want) in cases {
        let f = format!("{bad}:{name}");
        let mut args = vec![
            "reward",
            "--data",
            &data,
            "--completions",
            &comps,
            "--reward-fn",
            &f,
        ];
        args.extend_from_slice(extra);
        let t = std::time::Instant::now();
        let (ok, out, err) = common::engine_output(&args);
        assert!(!ok, "{name}: succeeded: {out}");
        assert!(t.elapsed().as_secs() < 30, "{name}: took {:?}", t.elapsed());
        let err_lines: Vec<&str> = err.lines().filter(|l| l.starts_with("error")).collect();
        assert_eq!(err_lines.len(), 1, "{name}: {err}");
        let line = err_lines[0];
        assert!(line.contains(&format!("bad.py:{name}")), "{name}: {line}");
        assert!(line.contains(want), "{name}: {line}");
        if name != "missing" {
            assert!(line.contains("row rows.jsonl line 2"), "{name}: {line}");
        }
    }
    let _ = std::fs::remove_dir_all(&dir);
}

/// Every canonical solution of HumanEval scores 1.0 through `engine reward`.
#[test]
fn humaneval_canonical_solutions_score_one() {
    let Some(he) = common::shared_data("humaneval/HumanEval.jsonl.gz") else {
        return;
    };
    if !have_python() {
        return;
    }
    let dir = tmp("humaneval");
    let rows = onelayer::tasks::code::load(&he).unwrap();
    let comps: String = rows
        .iter()
        .enumerate()
        .map(|(i, p)| {
            let sol = &p.code.as_ref().unwrap().canonical_solution.clone().unwrap();
            format!("{}\n", serde_json::json!({"index": i, "completion": sol}))
        })
        .collect();
    let comps = write(&dir, "c.jsonl", &comps);
    let (out, _) = common::engine_ok(&[
        "reward",
        "--task",
        "code",
        "--data",
        he.to_str().unwrap(),
        "--completions",
        &comps,
        "--json",
    ]);
    let lines = json_lines(&out);
    let summary = lines.last().unwrap();
    assert_eq!(summary["completions"], 164);
    assert_eq!(summary["mean_reward"], 1.0, "{out}");
    assert_eq!(summary["outcomes"]["passed"], 164);
    let _ = std::fs::remove_dir_all(&dir);
}

/// Each known way to game the code reward scores 0 through `engine reward`, with its
/// outcome named, while the honest solution scores 1.
#[test]
fn code_games_score_zero_with_their_outcome() {
    if !have_python() {
        return;
    }
    let dir = tmp("games");
    let row = serde_json::json!({
        "task_id": "toy/0",
        "prompt": "def add(a, b):\n    \"\"\"Sum of a and b.\"\"\"\n",
        "entry_point": "add",
        "test": "def check(candidate):\n    assert candidate(1, 2) == 3\n    assert candidate(2, 2) == 4\n",
        "canonical_solution": "    return a + b\n",
    });
    let data = write(&dir, "toy.jsonl", &format!("{row}\n"));
    let games = [
        ("    return a + b\n", "passed"),
        ("    return a - b\n", "failed"),
        ("    import sys\n    sys.exit(0)\n", "exited_early"),
        ("    import os\n    os._exit(0)\n", "exited_early"),
        ("    raise SystemExit(0)\n", "exited_early"),
        (
            "    class A:\n        def __eq__(self, o): return True\n    return A()\n",
            "non_plain_result",
        ),
        (
            "    return a - b\nimport builtins\nbuiltins.AssertionError = type('X', (BaseException,), {})\ndef check(c): pass\n",
            "failed",
        ),
        ("    while True: pass\n", "timeout"),
    ];
    let comps: String = games
        .iter()
        .map(|(c, _)| format!("{}\n", serde_json::json!({"index": 0, "completion": c})))
        .collect();
    let comps = write(&dir, "c.jsonl", &comps);
    let (out, _) = common::engine_ok(&[
        "reward",
        "--task",
        "code",
        "--data",
        &data,
        "--completions",
        &comps,
        "--json",
    ]);
    let lines = json_lines(&out);
    for ((code, want), line) in games.iter().zip(&lines) {
        assert_eq!(line["outcome"], *want, "{code}: {line}");
        let want_reward = if *want == "passed" { 1.0 } else { 0.0 };
        assert_eq!(line["reward"], want_reward, "{code}: {line}");
    }
    let _ = std::fs::remove_dir_all(&dir);
}

fn metrics(dir: &Path) -> Vec<Value> {
    json_lines(&std::fs::read_to_string(dir.join("metrics.jsonl")).unwrap())
}

/// A short run of the demo model: every step's reward is what the function returned.
#[test]
fn a_custom_function_drives_engine_run() {
    if !have_python() {
        return;
    }
    let dir = tmp("run");
    let f = write(
        &dir,
        "r.py",
        "def compute_score(data_source, solution_str, ground_truth, extra_info=None):\n    assert data_source == 'arith'\n    return {'score': 0.25, 'bonus': 2}\n",
    );
    let out = dir.join("out");
    let o = out.to_str().unwrap();
    let small = [
        "--device",
        "cpu",
        "--steps",
        "2",
        "--prompts-per-step",
        "2",
        "--group-size",
        "2",
        "--eval-every",
        "0",
    ];
    let mut args = vec!["run", "--reward-fn", &f, "--out", o];
    args.extend_from_slice(&small);
    common::engine_ok(&args);
    let m = metrics(&out);
    assert_eq!(m.len(), 2);
    for line in &m {
        assert_eq!(line["reward_mean"], 0.25, "{line}");
        assert_eq!(line["reward/bonus"], 2.0, "{line}");
        assert_eq!(line["reward/none"], 0.0, "{line}");
    }
    // TRL form on a model with a tokenizer and chat rows.
    let trl = write(
        &dir,
        "t.py",
        "def reward_func(prompts, completions, completion_ids, **kw):\n    return [0.5 if isinstance(c, list) else 1.0 for c in completions]\n",
    );
    let data = write(&dir, "rows.jsonl", ROWS);
    let model = common::fixture("qwen3-gqa2-tied");
    let out2 = dir.join("out2");
    let mut args = vec![
        "run",
        "--model",
        model.to_str().unwrap(),
        "--data",
        &data,
        "--reward-fn",
        &trl,
        "--reward-fn-style",
        "trl",
        "--max-new-tokens",
        "4",
        "--out",
        out2.to_str().unwrap(),
    ];
    args.extend_from_slice(&small);
    common::engine_ok(&args);
    for line in metrics(&out2) {
        // Both rows each step (2 prompts per step over 2 rows): (0.5 + 1.0) / 2.
        assert_eq!(line["reward_mean"], 0.75, "{line}");
    }
    let _ = std::fs::remove_dir_all(&dir);
}

/// The worker dies in step 3: the run stops with a one-line error, and the
/// checkpoints and metrics of steps 1 and 2 are still there.
#[test]
fn a_crashing_worker_stops_the_run_and_keeps_its_checkpoints() {
    if !have_python() {
        return;
    }
    let dir = tmp("crash");
    let f = write(
        &dir,
        "r.py",
        "import os\ncalls = 0\ndef compute_score(**kw):\n    global calls\n    calls += 1\n    if calls > 8:\n        os._exit(9)\n    return 1.0\n",
    );
    let out = dir.join("out");
    let (ok, _, err) = common::engine_output(&[
        "run",
        "--device",
        "cpu",
        "--reward-fn",
        &f,
        "--out",
        out.to_str().unwrap(),
        "--steps",
        "4",
        "--prompts-per-step",
        "2",
        "--group-size",
        "2",
        "--eval-every",
        "0",
        "--save-every",
        "1",
    ]);
    assert!(!ok, "the run should stop");
    let errors: Vec<&str> = err.lines().filter(|l| l.starts_with("error")).collect();
    assert_eq!(errors.len(), 1, "{err}");
    assert!(
        errors[0].contains("r.py:compute_score: row arith-"),
        "{}",
        errors[0]
    );
    assert!(
        errors[0].contains("exited (exit status: 9)"),
        "{}",
        errors[0]
    );
    for step in [1, 2] {
        let ck = out.join(format!("checkpoints/step-{step:06}/meta.json"));
        assert!(ck.exists(), "{} missing", ck.display());
    }
    assert!(!out.join("checkpoints/step-000003").exists());
    assert_eq!(metrics(&out).len(), 2);
    let _ = std::fs::remove_dir_all(&dir);
}
