//! External environments fail without hanging or killing a run (examples/envs/
//! README.md, "When an environment fails"): a reply that does not come within
//! `--env-timeout`, a child that exits, or a reply that is garbage restarts the
//! environment once for that episode, which is dropped from its step and counted
//! (`env_dropped_episodes`, `eval_env_dropped`); a second failure in one step stops
//! the run with a one-line error, keeping the checkpoints already written.
//!
//! The environments are a small Python script (`FAULTY`) that plays a guess-like
//! game and misbehaves on cue; every test skips when there is no python3.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

mod common;

use common::engine_output;

/// A guess-like game (secret `task * 7 % 10`, hints in the demo model's alphabet)
/// that misbehaves as `argv[1]` says when `argv[2]` says:
/// - fault: hang | exit | garbage | error | noobs | infreward
/// - when: `nth:K` (the K-th step request of a process, once: `argv[3]` is a marker
///   file), `eval` (the first step request of an evaluation episode, once), `from:S`
///   (every reset of an episode of RL step S or later)
///
/// A hanging process writes its pid to `argv[3].pid`.
const FAULTY: &str = r#"
import json, os, sys, time
fault, when, marker = sys.argv[1], sys.argv[2], sys.argv[3]
kind, _, arg = when.partition(":")
secrets, steps_seen = {}, 0
for line in sys.stdin:
    req = json.loads(line)
    op, ep = req["op"], req.get("episode", 0)
    if op == "close":
        break
    if op == "end":
        secrets.pop(ep, None)
        continue
    if op == "step":
        steps_seen += 1
    evaluation = ep >> 63 == 1
    if kind == "nth":
        trigger = op == "step" and steps_seen == int(arg) and not os.path.exists(marker)
    elif kind == "eval":
        trigger = op == "step" and evaluation and not os.path.exists(marker)
    else:
        trigger = op == "reset" and not evaluation and (ep >> 32) >= int(arg)
    if trigger:
        open(marker, "w").close()
        if fault == "hang":
            with open(marker + ".pid", "w") as f:
                f.write(str(os.getpid()))
            time.sleep(1000)
        elif fault == "exit":
            sys.exit(3)
        elif fault == "garbage":
            print("Traceback (most recent call last): oops", flush=True)
        elif fault == "error":
            print(json.dumps({"error": "the world fell over"}), flush=True)
        elif fault == "noobs":
            print(json.dumps({"reward": 0.0}), flush=True)
        elif fault == "infreward":
            print('{"observation": "+", "reward": 1e999}', flush=True)
        continue
    if op == "reset":
        secrets[ep] = req["task"] * 7 % 10
        reply = {"observation": " "}
    else:
        digits = [int(c) for c in req["action"] if c.isdigit()]
        s = secrets[ep]
        if digits and digits[0] == s:
            reply = {"observation": "=", "reward": 1.0, "done": True}
        elif digits:
            reply = {"observation": "+" if digits[0] < s else "-"}
        else:
            reply = {"observation": " "}
    print(json.dumps(reply), flush=True)
"#;

fn python() -> bool {
    let ok = Command::new("python3").arg("--version").output().is_ok();
    if !ok {
        println!("skipped: no python3 on this machine");
    }
    ok
}

/// A fresh directory with the faulty environment in it: (dir, its command).
fn faulty(name: &str, fault: &str, when: &str) -> (PathBuf, String) {
    let dir = common::fresh_dir("envfail", name);
    std::fs::create_dir_all(&dir).unwrap();
    let script = dir.join("faulty.py");
    std::fs::write(&script, FAULTY).unwrap();
    let cmd = format!(
        "python3 {} {fault} {when} {}",
        script.display(),
        dir.join("marker").display()
    );
    (dir, cmd)
}

/// `engine run` on the demo model with `env`: (success, stderr, seconds).
fn run(dir: &Path, env: &str, extra: &[&str]) -> (bool, String, f64) {
    let out = dir.join("run");
    let mut args = vec![
        "run",
        "--device",
        "cpu",
        "--env",
        env,
        "--prompts-per-step",
        "4",
        "--out",
        out.to_str().unwrap(),
    ];
    args.extend(extra);
    let t0 = Instant::now();
    let (ok, _, err) = engine_output(&args);
    (ok, err, t0.elapsed().as_secs_f64())
}

fn metrics(dir: &Path) -> Vec<serde_json::Value> {
    std::fs::read_to_string(dir.join("run/metrics.jsonl"))
        .unwrap_or_default()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

/// The restart warnings on stderr.
fn restarts(err: &str) -> Vec<&str> {
    err.lines()
        .filter(|l| l.starts_with("warning: --env") && l.contains("restarting it"))
        .collect()
}

/// The run's last stderr line is one `error: --env '...'` line containing `want`.
#[track_caller]
fn assert_env_error(err: &str, env: &str, want: &[&str]) {
    let last = err.trim_end().lines().last().unwrap_or("");
    assert!(
        last.starts_with(&format!("error: --env '{env}': ")),
        "{err}"
    );
    for w in want {
        assert!(last.contains(w), "{w:?} not in {last:?}\n{err}");
    }
}

/// Whether process `pid` is gone (or a zombie, dead but not yet reaped).
fn dead(pid: &str) -> bool {
    match std::fs::read_to_string(format!("/proc/{}/stat", pid.trim())) {
        Err(_) => true,
        Ok(stat) => stat
            .rsplit(')')
            .next()
            .is_some_and(|rest| rest.trim_start().starts_with('Z')),
    }
}

/// A 2-step training run with one fault in step 1 completes: one restart line
/// naming the fault, one episode dropped and counted in step 1 (in metrics.jsonl
/// and on the console), none in step 2, and no rollout from the dropped episode
/// (samples = turns of the 31 episodes left).
#[track_caller]
fn completes_with_one_drop(dir: &Path, env: &str, want: &str, extra: &[&str]) -> String {
    let mut args = vec!["--steps", "2", "--eval-every", "0"];
    args.extend(extra);
    let (ok, err, secs) = run(dir, env, &args);
    assert!(ok, "{err}");
    let r = restarts(&err);
    assert_eq!(r.len(), 1, "{err}");
    assert!(r[0].contains(want), "{want:?} not in {:?}", r[0]);
    let m = metrics(dir);
    assert_eq!(m.len(), 2, "{m:?}");
    assert_eq!(m[0]["env_dropped_episodes"], 1, "{}", m[0]);
    assert_eq!(m[1]["env_dropped_episodes"], 0, "{}", m[1]);
    let turns = m[0]["turns_mean"].as_f64().unwrap() * 31.0;
    let samples = m[0]["samples"].as_f64().unwrap();
    assert!((samples - turns).abs() < 1e-6, "{}", m[0]);
    assert!(
        err.lines()
            .any(|l| l.starts_with("[   1/2]") && l.contains("(1 dropped)")),
        "{err}"
    );
    assert!(dir.join("run/trained.safetensors").exists());
    eprintln!("{want}: {secs:.1} s");
    r[0].to_string()
}

/// (a) `sleep 1000` (started by the `sh -c` wrapper, so a grandchild of the engine)
/// with `--env-timeout 1`: the first reset times out, the restarted one too, and
/// the run stops with a one-line error within seconds; the sleep is killed. A
/// Python environment that hangs on its 3rd step request once: restarted, the
/// episode dropped, the run completes; the hung process is killed.
#[test]
fn a_hanging_environment_is_stopped_within_seconds() {
    let dir = common::fresh_dir("envfail", "sleep");
    std::fs::create_dir_all(&dir).unwrap();
    let pids = dir.join("pids");
    let env = format!("sleep 1000 & echo $! >> {}; wait", pids.display());
    let (ok, err, secs) = run(&dir, &env, &["--steps", "2", "--env-timeout", "1"]);
    assert!(!ok);
    // The step-0 evaluation asks first: its first two episodes time out.
    assert_eq!(restarts(&err).len(), 1, "{err}");
    assert_env_error(
        &err,
        &env,
        &[
            "reset of episode 9223372036854775809",
            "no reply in 1 s",
            "second failure",
        ],
    );
    assert!(secs < 20.0, "took {secs:.1} s");
    eprintln!("sleep 1000 with --env-timeout 1: stopped in {secs:.1} s");
    let pids = std::fs::read_to_string(&pids).unwrap();
    assert_eq!(pids.lines().count(), 2, "two starts: {pids}");
    for pid in pids.lines() {
        assert!(dead(pid), "sleep {pid} still running");
    }
    let _ = std::fs::remove_dir_all(&dir);

    if !python() {
        return;
    }
    let (dir, env) = faulty("hang", "hang", "nth:3");
    let t0 = Instant::now();
    completes_with_one_drop(&dir, &env, "no reply in 1 s", &["--env-timeout", "1"]);
    eprintln!(
        "hang on the 3rd step: run completed in {:.1} s",
        t0.elapsed().as_secs_f64()
    );
    let pid = std::fs::read_to_string(dir.join("marker.pid")).unwrap();
    assert!(dead(&pid), "the hung environment {pid} still runs");
    let _ = std::fs::remove_dir_all(&dir);
}

/// (b) An environment that exits in the middle of step 1 (once) is restarted, the
/// episode dropped and counted, the run completes. One that exits in an evaluation
/// episode: that episode counts as unsolved and in `eval_env_dropped`.
#[test]
fn a_crashing_environment_is_restarted_and_the_episode_dropped() {
    if !python() {
        return;
    }
    let (dir, env) = faulty("exit", "exit", "nth:5");
    let line = completes_with_one_drop(&dir, &env, "exited before replying (exit status: 3)", &[]);
    assert!(line.contains("step of episode "), "{line}");
    let _ = std::fs::remove_dir_all(&dir);

    let (dir, env) = faulty("exit-eval", "exit", "eval");
    let (ok, err, _) = run(
        &dir,
        &env,
        &["--steps", "1", "--eval-every", "1", "--eval-size", "10"],
    );
    assert!(ok, "{err}");
    assert_eq!(restarts(&err).len(), 1, "{err}");
    let m = metrics(&dir);
    assert_eq!(m.len(), 2, "{m:?}");
    assert_eq!(m[0]["eval_env_dropped"], 1, "{}", m[0]);
    assert!(m[0]["eval_accuracy"].as_f64().unwrap() <= 0.9, "{}", m[0]);
    assert_eq!(m[1]["eval_env_dropped"], 0, "{}", m[1]);
    assert_eq!(m[1]["env_dropped_episodes"], 0, "{}", m[1]);
    assert!(
        err.lines()
            .any(|l| l.starts_with("[   0/1] eval") && l.contains("(1 dropped)")),
        "{err}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

/// (c) A reply that is not JSON, an `{"error": ...}` reply, a reply without
/// "observation", and a reward out of range: each restarts the environment once,
/// drops the episode, and the run completes.
#[test]
fn a_garbage_speaking_environment_is_restarted_and_the_episode_dropped() {
    if !python() {
        return;
    }
    for (fault, want) in [
        ("garbage", "not a JSON object"),
        ("error", "the world fell over"),
        ("noobs", "no \"observation\""),
        ("infreward", "step of episode"),
    ] {
        let (dir, env) = faulty(fault, fault, "nth:7");
        completes_with_one_drop(&dir, &env, want, &[]);
        let _ = std::fs::remove_dir_all(&dir);
    }
}

/// (d) An environment that fails on every reset from step 2 on: step 1 trains and
/// is checkpointed (`--save-every 1`); in step 2 the first failure restarts it,
/// the second stops the run with one line naming the command, the request, the
/// episode and the failure. Checkpoint 1 stays; nothing of step 2 is written.
#[test]
fn an_environment_failing_every_time_stops_the_run_and_keeps_checkpoints() {
    if !python() {
        return;
    }
    let (dir, env) = faulty("always", "exit", "from:2");
    let (ok, err, _) = run(
        &dir,
        &env,
        &["--steps", "3", "--save-every", "1", "--eval-every", "0"],
    );
    assert!(!ok, "{err}");
    assert_eq!(restarts(&err).len(), 1, "{err}");
    // Step 2's episodes are 2 << 32 onwards: the first dropped, the second fatal.
    assert_env_error(
        &err,
        &env,
        &[
            "reset of episode 8589934593:",
            "exited before replying (exit status: 3)",
            "second failure",
        ],
    );
    let ck = dir.join("run/checkpoints");
    assert!(ck.join("step-000001").is_dir(), "{err}");
    assert!(!ck.join("step-000002").exists());
    assert!(!dir.join("run/trained.safetensors").exists());
    let m = metrics(&dir);
    assert_eq!(m.len(), 1, "{m:?}");
    assert_eq!(m[0]["step"], 1);
    let _ = std::fs::remove_dir_all(&dir);
}

/// `--env-timeout` / `env_timeout` must be a positive number of seconds (one-line
/// errors); the resolved value is in config.toml (default 60).
#[test]
fn env_timeout_is_a_positive_setting() {
    let dir = common::fresh_dir("envfail", "timeout");
    std::fs::create_dir_all(&dir).unwrap();
    let d = dir.join("run");
    let d = d.to_str().unwrap();
    let toml = dir.join("run.toml");
    std::fs::write(&toml, "env_timeout = 0.0\n").unwrap();
    let toml = toml.to_str().unwrap();
    for extra in [
        vec!["--env-timeout", "0"],
        vec!["--env-timeout=-1"],
        vec!["--env-timeout", "nan"],
        vec!["--config", toml],
    ] {
        let mut args = vec!["run", "--device", "cpu", "--task", "guess", "--out", d];
        args.extend(&extra);
        let (ok, _, err) = engine_output(&args);
        assert!(!ok, "{extra:?}");
        let last = err.trim_end().lines().last().unwrap_or("");
        assert!(
            last.starts_with("error: --env-timeout") && last.contains("positive"),
            "{extra:?}: {err}"
        );
    }
    for (extra, want) in [
        (vec![], "env_timeout = 60.0"),
        (vec!["--env-timeout", "2.5"], "env_timeout = 2.5"),
    ] {
        let _ = std::fs::remove_dir_all(d);
        let mut args = vec![
            "run",
            "--device",
            "cpu",
            "--task",
            "guess",
            "--steps",
            "1",
            "--prompts-per-step",
            "2",
            "--eval-every",
            "0",
            "--out",
            d,
        ];
        args.extend(&extra);
        let (ok, _, err) = engine_output(&args);
        assert!(ok, "{err}");
        let cfg = std::fs::read_to_string(Path::new(d).join("config.toml")).unwrap();
        assert!(cfg.lines().any(|l| l == want), "{want} not in\n{cfg}");
    }
    let _ = std::fs::remove_dir_all(&dir);
}
