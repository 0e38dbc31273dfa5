//! The tasks module: datasets, prompts and rewards (DESIGN section 6), the code
//! sandbox's limits, and one-line errors on bad datasets. Real GSM8K and
//! HumanEval lines are used when `../shared/data` holds them; sandbox tests are
//! skipped when no Python interpreter is found.

mod common;

use common::inc_problem;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use onelayer::tasks::{
    self, arith, gsm8k, math, pass_at_k, sandbox, ArithOptions, Outcome, Problem, Rewarder,
    SandboxConfig, TaskKind,
};

/// `../shared/data/<rel>` when present, else None (with a message).
fn shared_data(rel: &str) -> Option<PathBuf> {
    let p = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../shared/data")
        .join(rel);
    if p.exists() {
        Some(p)
    } else {
        println!("skipped: {} not found", p.display());
        None
    }
}

fn have_python() -> bool {
    let ok = sandbox::python(&SandboxConfig::default()).is_some();
    if !ok {
        println!("skipped: no python3 (set ONELAYER_PYTHON)");
    }
    ok
}

fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, text).unwrap();
    p
}

fn one_line_error<T: std::fmt::Debug>(r: onelayer::Result<T>) -> String {
    let e = r.unwrap_err().to_string();
    assert!(!e.contains('\n'), "error is not one line: {e}");
    e
}

#[test]
fn task_kind_parsing() {
    assert_eq!(TaskKind::parse("gsm8k").unwrap(), TaskKind::Gsm8k);
    assert_eq!(TaskKind::parse("MATH").unwrap(), TaskKind::Math);
    assert_eq!(TaskKind::parse("code").unwrap(), TaskKind::Code);
    assert_eq!(TaskKind::parse("arith").unwrap(), TaskKind::Arith);
    let e = one_line_error(TaskKind::parse("chess"));
    assert!(
        e.contains("--task") && e.contains("gsm8k, math, code, arith"),
        "{e}"
    );
    assert!(!TaskKind::Arith.uses_chat_template() && TaskKind::Gsm8k.uses_chat_template());
}

#[test]
fn load_needs_data_except_arith() {
    let opts = ArithOptions::default();
    for kind in [TaskKind::Gsm8k, TaskKind::Math, TaskKind::Code] {
        let e = one_line_error(tasks::load(kind, None, &opts));
        assert!(e.contains("--data") && e.contains(kind.name()), "{e}");
    }
    let e = one_line_error(tasks::load(
        TaskKind::Arith,
        Some(Path::new("x.jsonl")),
        &opts,
    ));
    assert!(e.contains("--data"), "{e}");
    assert_eq!(
        tasks::load(TaskKind::Arith, None, &opts).unwrap().len(),
        1000
    );
}

#[test]
fn gsm8k_hand_written_rewards() {
    let p = Problem {
        id: "t".into(),
        prompt: gsm8k::prompt("q"),
        reference: "1234".into(),
        code: None,
        row: None,
    };
    let r = |c: &str| tasks::reward(TaskKind::Gsm8k, &p, c);
    assert_eq!(r("so the total is 1234.\n#### 1234"), 1.0, "right");
    assert_eq!(r("#### 1235"), 0.0, "wrong");
    assert_eq!(r("the answer is 1234"), 0.0, "no ####");
    assert_eq!(r("#### 1234 wait, no\n#### 99"), 0.0, "last #### counts");
    assert_eq!(r("#### 99 wait, no\n#### 1234"), 1.0, "last #### counts");
    assert_eq!(r("#### $1,234"), 1.0, "commas and $");
    assert_eq!(r("#### 1,234.00."), 1.0, "decimals and a trailing period");
    assert_eq!(r("####1234"), 1.0, "no space");
    let neg = Problem {
        reference: "-7".into(),
        ..p.clone()
    };
    assert_eq!(tasks::reward(TaskKind::Gsm8k, &neg, "#### -7"), 1.0);
    assert_eq!(tasks::reward(TaskKind::Gsm8k, &neg, "#### 7"), 0.0);
    let dec = Problem {
        reference: "2.5".into(),
        ..p
    };
    assert_eq!(tasks::reward(TaskKind::Gsm8k, &dec, "#### 2.50"), 1.0);
    assert_eq!(tasks::reward(TaskKind::Gsm8k, &dec, "#### 2"), 0.0);
}

#[test]
fn gsm8k_real_test_lines() {
    let Some(path) = shared_data("gsm8k/test.jsonl") else {
        return;
    };
    let problems = tasks::load(TaskKind::Gsm8k, Some(&path), &ArithOptions::default()).unwrap();
    assert_eq!(problems.len(), 1319);
    let text = std::fs::read_to_string(&path).unwrap();
    for (line, p) in text.lines().take(50).zip(&problems) {
        let v: serde_json::Value = serde_json::from_str(line).unwrap();
        let (question, answer) = (
            v["question"].as_str().unwrap(),
            v["answer"].as_str().unwrap(),
        );
        assert_eq!(p.prompt, gsm8k::prompt(question));
        let raw = answer
            .rsplit("####")
            .next()
            .unwrap()
            .trim()
            .replace(',', "");
        assert_eq!(p.reference, raw, "{}", p.id);
        assert_eq!(tasks::reward(TaskKind::Gsm8k, p, answer), 1.0, "{}", p.id);
        let n: f64 = raw.parse().unwrap();
        let cut = answer.rfind("####").unwrap();
        let changed = format!("{}#### {}", &answer[..cut], n + 1.0);
        assert_eq!(tasks::reward(TaskKind::Gsm8k, p, &changed), 0.0, "{}", p.id);
    }
}

#[test]
fn math_normalisation_and_rewards() {
    let half = Problem {
        id: "m".into(),
        prompt: math::prompt("p"),
        reference: math::normalize("\\frac{1}{2}"),
        code: None,
        row: None,
    };
    let r = |p: &Problem, c: &str| tasks::reward(TaskKind::Math, p, c);
    for c in [
        "\\boxed{\\frac12}",
        "\\boxed{0.5}",
        "\\boxed{\\dfrac{1}{2}}",
        "\\boxed{1/2}",
        "$\\boxed{\\tfrac{1}{2}}$.",
        "\\boxed{ \\left( \\frac{1}{2} \\right) }",
    ] {
        if c.contains("left") {
            // Parentheses are kept: (1/2) is not a bare number.
            assert_eq!(r(&half, c), 0.0, "{c}");
        } else {
            assert_eq!(r(&half, c), 1.0, "{c}");
        }
    }
    assert_eq!(r(&half, "\\boxed{0.25}"), 0.0);
    assert_eq!(r(&half, "1/2"), 0.0, "no box");
    let choice = Problem {
        reference: math::normalize("(A)"),
        ..half.clone()
    };
    assert_eq!(r(&choice, "so \\boxed{\\text{(A)}}"), 1.0);
    assert_eq!(r(&choice, "\\boxed{A}"), 1.0);
    assert_eq!(r(&choice, "\\boxed{\\text{(B)}}"), 0.0);
    let nested = Problem {
        reference: math::normalize("\\frac{\\sqrt{3}}{2}"),
        ..half.clone()
    };
    assert_eq!(r(&nested, "\\boxed{\\dfrac{\\sqrt{3}}{2}}"), 1.0);
    assert_eq!(r(&nested, "\\boxed{\\frac{\\sqrt3}{2}}"), 1.0);
    assert_eq!(r(&nested, "\\boxed{\\frac{\\sqrt{3}}{2}"), 0.0, "unclosed");
    let deg = Problem {
        reference: math::normalize("90"),
        ..half
    };
    for c in [
        "\\boxed{90^\\circ}",
        "\\boxed{90^{\\circ}}",
        "\\boxed{90.}",
        "\\boxed{x = 90}",
        "\\boxed{90\\text{ degrees}}",
        "\\boxed{\\$90}",
        "\\boxed{90.0}",
    ] {
        assert_eq!(r(&deg, c), 1.0, "{c}");
    }
    assert_eq!(math::normalize("10\\%"), "10");
    assert_eq!(math::normalize("1,000"), "1000");
}

#[test]
fn math_dataset_answer_or_solution() {
    let dir = tempfile::tempdir().unwrap();
    let p = write(
        dir.path(),
        "math.jsonl",
        concat!(
            r#"{"problem": "1+1?", "answer": "2", "unique_id": "u1"}"#,
            "\n",
            r#"{"problem": "half?", "solution": "It is $\\boxed{\\dfrac{1}{2}}$."}"#,
            "\n",
            r#"{"problem": "n?", "answer": 3}"#,
            "\n",
        ),
    );
    let ps = tasks::load(TaskKind::Math, Some(&p), &ArithOptions::default()).unwrap();
    assert_eq!(ps.len(), 3);
    assert_eq!((ps[0].id.as_str(), ps[0].reference.as_str()), ("u1", "2"));
    assert_eq!(
        (ps[1].id.as_str(), ps[1].reference.as_str()),
        ("math-1", "\\frac{1}{2}")
    );
    assert_eq!(ps[2].reference, "3");
    assert_eq!(
        ps[0].prompt,
        "1+1?\nPlease reason step by step, and put your final answer within \\boxed{}."
    );
}

#[test]
fn bad_datasets_are_one_line_errors() {
    let dir = tempfile::tempdir().unwrap();
    let opts = ArithOptions::default();
    let missing = dir.path().join("nope.jsonl");
    let e = one_line_error(tasks::load(TaskKind::Gsm8k, Some(&missing), &opts));
    assert!(e.contains("nope.jsonl"), "{e}");
    let good = r#"{"question": "q", "answer": "a\n#### 1"}"#;
    let cases = [
        (
            TaskKind::Gsm8k,
            format!("{good}\n{{\"question\": \"q\", \n"),
            "line 2",
            "malformed",
        ),
        (
            TaskKind::Gsm8k,
            format!("{good}\n\n{{\"question\": \"q\"}}\n"),
            "line 3",
            "\"answer\"",
        ),
        (
            TaskKind::Gsm8k,
            "{\"question\": \"q\", \"answer\": \"no marker\"}\n".to_string(),
            "line 1",
            "####",
        ),
        (
            TaskKind::Gsm8k,
            format!("{good}\n[1, 2]\n"),
            "line 2",
            "JSON object",
        ),
        (
            TaskKind::Gsm8k,
            "{\"question\": 5, \"answer\": \"#### 1\"}\n".to_string(),
            "line 1",
            "\"question\"",
        ),
        (
            TaskKind::Math,
            "{\"problem\": \"p\"}\n".to_string(),
            "line 1",
            "\"answer\"",
        ),
        (
            TaskKind::Math,
            "{\"problem\": \"p\", \"solution\": \"no box\"}\n".to_string(),
            "line 1",
            "boxed",
        ),
        (
            TaskKind::Code,
            "{\"task_id\": \"t\", \"prompt\": \"p\", \"test\": \"t\"}\n".to_string(),
            "line 1",
            "\"entry_point\"",
        ),
        (
            TaskKind::Code,
            "{\"task_id\": \"t\", \"prompt\": \"p\", \"test\": \"t\", \"entry_point\": \"a b\"}\n"
                .to_string(),
            "line 1",
            "identifier",
        ),
        (TaskKind::Gsm8k, "\n\n".to_string(), "", "no records"),
    ];
    for (i, (kind, text, line, what)) in cases.iter().enumerate() {
        let p = write(dir.path(), &format!("bad{i}.jsonl"), text);
        let e = one_line_error(tasks::load(*kind, Some(&p), &opts));
        assert!(
            e.contains(&format!("bad{i}.jsonl")) && e.contains(line) && e.contains(what),
            "case {i}: {e}"
        );
    }
}

#[test]
fn gzip_datasets_load() {
    let dir = tempfile::tempdir().unwrap();
    let text = "{\"question\": \"q\", \"answer\": \"#### 1,000\"}\n";
    let plain = write(dir.path(), "g.jsonl", text);
    let gz = dir.path().join("g.jsonl.gz");
    let mut enc = flate2::write::GzEncoder::new(
        std::fs::File::create(&gz).unwrap(),
        flate2::Compression::default(),
    );
    enc.write_all(text.as_bytes()).unwrap();
    enc.finish().unwrap();
    let opts = ArithOptions::default();
    let a = tasks::load(TaskKind::Gsm8k, Some(&plain), &opts).unwrap();
    let b = tasks::load(TaskKind::Gsm8k, Some(&gz), &opts).unwrap();
    assert_eq!(a, b);
    assert_eq!(a[0].reference, "1000");
}

#[test]
fn arith_is_reproducible_and_rewards_are_right() {
    let opts = ArithOptions {
        seed: 3,
        count: 200,
        ..Default::default()
    };
    let a = tasks::load(TaskKind::Arith, None, &opts).unwrap();
    assert_eq!(a, tasks::load(TaskKind::Arith, None, &opts).unwrap());
    assert_ne!(
        a,
        tasks::load(TaskKind::Arith, None, &ArithOptions { seed: 4, ..opts }).unwrap()
    );
    for p in &a {
        assert!(p.prompt.ends_with('='));
        let right = format!("{}{}", p.reference, arith::END);
        assert_eq!(
            tasks::reward(TaskKind::Arith, p, &right),
            1.0,
            "{}",
            p.prompt
        );
        assert_eq!(
            tasks::reward(TaskKind::Arith, p, &format!("{}7", p.reference)),
            0.0
        );
        assert!(p.prompt.chars().all(|c| arith::ALPHABET.contains(c)));
    }
    let p = Problem {
        id: "x".into(),
        prompt: "23+58=".into(),
        reference: "81".into(),
        code: None,
        row: None,
    };
    assert_eq!(tasks::reward(TaskKind::Arith, &p, "81 and more"), 1.0);
    assert_eq!(tasks::reward(TaskKind::Arith, &p, "18"), 0.0);
    assert!(arith::ALPHABET.contains(arith::END));
}

#[test]
fn pass_at_k_estimator() {
    assert!((pass_at_k(5, 2, 1) - 0.4).abs() < 1e-12);
    assert!((pass_at_k(5, 2, 2) - 0.7).abs() < 1e-12); // 1 - C(3,2)/C(5,2)
    assert_eq!(pass_at_k(5, 4, 2), 1.0);
    assert_eq!(pass_at_k(200, 0, 10), 0.0);
}

fn rewarder(secs: u64) -> Rewarder {
    Rewarder::new(SandboxConfig {
        time_limit: Duration::from_secs(secs),
        ..Default::default()
    })
}

#[test]
fn humaneval_canonical_solutions_pass() {
    let Some(path) = shared_data("humaneval/HumanEval.jsonl.gz") else {
        return;
    };
    if !have_python() {
        return;
    }
    let problems = tasks::load(TaskKind::Code, Some(&path), &ArithOptions::default()).unwrap();
    assert_eq!(problems.len(), 164);
    let rw = rewarder(10);
    for p in &problems[..5] {
        let solution = p.code.as_ref().unwrap().canonical_solution.clone().unwrap();
        let s = rw.score(TaskKind::Code, p, &solution);
        let run = s.run.unwrap();
        assert_eq!(s.reward, 1.0, "{}: {:?} {}", p.id, run.outcome, run.stderr);
        // The same body inside a fenced full function, as a chat model writes it.
        let spec = p.code.as_ref().unwrap();
        let def_line = spec.prompt.lines().find(|l| l.starts_with("def ")).unwrap();
        let fenced = format!("Sure.\n```python\n{def_line}\n{solution}```\nDone.");
        assert_eq!(
            rw.reward(TaskKind::Code, p, &fenced),
            1.0,
            "{} fenced",
            p.id
        );
        assert_eq!(
            rw.reward(TaskKind::Code, p, "    return None\n"),
            0.0,
            "{} wrong",
            p.id
        );
    }
    assert!(problems[0]
        .prompt
        .starts_with("Complete the following Python function:\n```python\n"));
}

#[test]
fn code_rewards_and_outcomes() {
    if !have_python() {
        return;
    }
    let p = inc_problem();
    let rw = rewarder(10);
    let right = rw.score(TaskKind::Code, &p, "    return x + 1\n");
    assert_eq!(right.reward, 1.0, "{:?}", right.run);
    let fenced = "```python\ndef inc(x):\n    return x + 1\n```";
    assert_eq!(rw.reward(TaskKind::Code, &p, fenced), 1.0);
    let wrong = rw.score(TaskKind::Code, &p, "    return x + 2\n");
    let run = wrong.run.unwrap();
    assert_eq!((wrong.reward, run.outcome), (0.0, Outcome::Failed));
    assert!(run.stderr.contains("AssertionError"), "{}", run.stderr);
    let syntax = rw.score(TaskKind::Code, &p, "    return (x +\n");
    assert_eq!(
        (syntax.reward, syntax.run.unwrap().outcome),
        (0.0, Outcome::Failed)
    );
    // The default rewarder (10 s) through the plain function.
    assert_eq!(tasks::reward(TaskKind::Code, &p, "    return 1 + x\n"), 1.0);
}

/// Completions that game an exit-status reward score 0, each with its reason; the
/// right answer still scores 1 (issue 13).
#[test]
fn code_verdicts_cannot_be_gamed() {
    if !have_python() {
        return;
    }
    let p = inc_problem();
    let rw = rewarder(10);
    let fenced = |code: &str| format!("```python\n{code}\n```");
    let cases: Vec<(String, Outcome)> = vec![
        ("    import sys\n    sys.exit(0)\n".into(), Outcome::ExitedEarly),
        ("    import os\n    os._exit(0)\n".into(), Outcome::ExitedEarly),
        ("    raise SystemExit(0)\n".into(), Outcome::ExitedEarly),
        ("    raise KeyboardInterrupt\n".into(), Outcome::ExitedEarly),
        (
            fenced("import sys\nsys.exit(0)\ndef inc(x):\n    return x"),
            Outcome::ExitedEarly,
        ),
        (
            fenced("import atexit, os\natexit.register(lambda: os._exit(0))\ndef inc(x):\n    return x"),
            Outcome::Failed,
        ),
        (
            fenced("class E:\n    def __eq__(self, o):\n        return True\ndef inc(x):\n    return E()"),
            Outcome::NonPlainResult,
        ),
        (
            fenced("class I(int):\n    def __eq__(self, o):\n        return True\ndef inc(x):\n    return I(0)"),
            Outcome::NonPlainResult,
        ),
        (
            fenced("class E:\n    def __eq__(self, o):\n        return True\ndef inc(x):\n    return [1, E()]"),
            Outcome::NonPlainResult,
        ),
        (
            fenced(
                "import builtins\nbuiltins.AssertionError = Exception\ndef check(c):\n    pass\ndef inc(x):\n    return 0",
            ),
            Outcome::Failed,
        ),
        (
            "    import os\n    os.write(3, b'x passed\\n')\n    return x + 1\n".into(),
            Outcome::Failed,
        ),
        (
            "    try:\n        return x + 2\n    finally:\n        import sys\n        sys.exit(0)\n".into(),
            Outcome::ExitedEarly,
        ),
    ];
    for (completion, want) in cases {
        let s = rw.score(TaskKind::Code, &p, &completion);
        let run = s.run.unwrap();
        assert_eq!(
            (s.reward, run.outcome),
            (0.0, want),
            "{completion}: {run:?}"
        );
        assert!(!run.detail.is_empty() || want == Outcome::Failed, "{run:?}");
    }
    // killing the judge itself ends with no verdict: 0, never a pass
    let kill = "    import os\n    os.posix_spawn('/bin/kill', ['kill', '-9', str(os.getppid())], {})\n    import time\n    time.sleep(2)\n    return x + 1\n";
    let s = rw.score(TaskKind::Code, &p, kill);
    let run = s.run.unwrap();
    assert_eq!(s.reward, 0.0, "{run:?}");
    assert_ne!(run.outcome, Outcome::Passed);
    // and the right answer, with output and a helper, still passes
    let ok = "```python\ndef helper(v):\n    print('computing', v)\n    return v + 1\ndef inc(x):\n    return helper(x)\n```";
    let s = rw.score(TaskKind::Code, &p, ok);
    assert_eq!(s.reward, 1.0, "{:?}", s.run);
}

#[test]
fn sandbox_infinite_loop_times_out() {
    if !have_python() {
        return;
    }
    let t = Instant::now();
    let s = rewarder(1).score(
        TaskKind::Code,
        &inc_problem(),
        "    while True:\n        pass\n",
    );
    let run = s.run.unwrap();
    assert_eq!((s.reward, run.outcome), (0.0, Outcome::Timeout));
    assert!(t.elapsed() < Duration::from_secs(3), "{:?}", t.elapsed());
}

#[test]
fn sandbox_crash_fails() {
    if !have_python() {
        return;
    }
    let s = rewarder(10).score(
        TaskKind::Code,
        &inc_problem(),
        "    import os\n    os.abort()\n",
    );
    let run = s.run.unwrap();
    assert_eq!((s.reward, run.outcome), (0.0, Outcome::Crashed), "{run:?}");
    assert!(run.detail.contains("signal 6"), "{run:?}");
}

#[test]
fn sandbox_infinite_output_is_cut() {
    if !have_python() {
        return;
    }
    let t = Instant::now();
    let cfg = SandboxConfig::default();
    let s = rewarder(10).score(
        TaskKind::Code,
        &inc_problem(),
        "    while True:\n        print('spam' * 1000)\n",
    );
    let run = s.run.unwrap();
    assert_eq!(s.reward, 0.0);
    assert_ne!(
        run.outcome,
        Outcome::Timeout,
        "the file-size cap should end it first"
    );
    assert!(t.elapsed() < Duration::from_secs(5), "{:?}", t.elapsed());
    assert!(run.stdout.starts_with("[... ") && run.stdout.len() < cfg.keep_bytes + 40);
    assert!(run.stderr.len() < cfg.keep_bytes + 40);
}

#[test]
fn sandbox_blocks_the_network() {
    if !have_python() {
        return;
    }
    let body = "    import socket\n    s = socket.create_connection(('1.1.1.1', 80), timeout=3)\n    return x + 1\n";
    let s = rewarder(10).score(TaskKind::Code, &inc_problem(), body);
    let run = s.run.unwrap();
    assert_eq!(
        (s.reward, run.outcome),
        (0.0, Outcome::Failed),
        "{}",
        run.stderr
    );
    // Without the namespace, the prelude's guard alone.
    let guard_only = Rewarder::new(SandboxConfig {
        isolate_network: false,
        ..Default::default()
    });
    let s = guard_only.score(TaskKind::Code, &inc_problem(), body);
    let run = s.run.unwrap();
    assert!(!run.network_isolated);
    assert_eq!(
        (s.reward, run.outcome),
        (0.0, Outcome::Failed),
        "{}",
        run.stderr
    );
    assert!(
        run.stderr.contains("network access is disabled"),
        "{}",
        run.stderr
    );
    // Below the monkeypatched module only the network namespace (when usable)
    // stops it: inside one the only interface is loopback.
    let prog = "print(sorted(l.split(':')[0].strip() for l in open('/proc/self/net/dev').readlines()[2:]))\n";
    let r = sandbox::run_python(prog, &SandboxConfig::default());
    println!(
        "network namespace: {}; interfaces seen: {}",
        r.network_isolated,
        r.stdout.trim()
    );
    if r.network_isolated {
        assert_eq!(r.stdout.trim(), "['lo']", "{r:?}");
    }
}

#[test]
fn sandbox_limits_memory() {
    if !have_python() {
        return;
    }
    let body = "    b = bytearray(4 << 30)\n    return x + 1\n";
    let s = rewarder(10).score(TaskKind::Code, &inc_problem(), body);
    let run = s.run.unwrap();
    assert_eq!((s.reward, run.outcome), (0.0, Outcome::Failed), "{run:?}");
    assert!(run.stderr.contains("MemoryError"), "{}", run.stderr);
}

#[test]
fn sandbox_environment_and_cleanup() {
    if !have_python() {
        return;
    }
    let prog = "import os\nprint(sorted(os.environ))\nprint(os.getcwd() == os.environ['HOME'])\nprint(os.getcwd())\nopen('junk.txt', 'w').write('x')\n";
    let r = sandbox::run_python(prog, &SandboxConfig::default());
    assert_eq!(r.outcome, Outcome::Passed, "{r:?}");
    let mut lines = r.stdout.lines();
    let env = lines.next().unwrap();
    assert_eq!(env, "['HOME', 'LANG', 'OMP_NUM_THREADS', 'PATH', 'TMPDIR']");
    assert_eq!(lines.next(), Some("True"));
    let dir = lines.next().unwrap();
    assert!(dir.contains("onelayer-sandbox-"), "{dir}");
    assert!(!Path::new(dir).exists(), "{dir} was not removed");
}

#[test]
fn sandbox_kills_leftover_processes() {
    if !have_python() {
        return;
    }
    // os.fork and subprocess are disabled, but posix_spawn is not: the spawned
    // process dies with the run (its PID namespace, else its process group). It is
    // found by its command line: inside a PID namespace its pid means nothing here.
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .subsec_nanos();
    let marker = format!("30.{}{nanos:09}", std::process::id());
    let prog = format!("import os\nos.posix_spawn('/bin/sleep', ['sleep', '{marker}'], {{}})\n");
    let r = sandbox::run_python(&prog, &SandboxConfig::default());
    assert_eq!(r.outcome, Outcome::Passed, "{r:?}");
    let t = Instant::now();
    let alive = || {
        std::fs::read_dir("/proc").unwrap().flatten().any(|e| {
            let cmd = std::fs::read(e.path().join("cmdline")).unwrap_or_default();
            let stat = std::fs::read_to_string(e.path().join("stat")).unwrap_or_default();
            // Gone, or a zombie waiting for init.
            let zombie = stat
                .rsplit(')')
                .next()
                .is_some_and(|r| r.trim().starts_with(['Z', 'X']));
            String::from_utf8_lossy(&cmd).contains(&marker) && !zombie
        })
    };
    while alive() {
        assert!(
            t.elapsed() < Duration::from_secs(2),
            "sleep {marker} still runs ({:?})",
            r.isolation
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn score_many_matches_one_by_one() {
    let problems = tasks::load(
        TaskKind::Arith,
        None,
        &ArithOptions {
            count: 20,
            ..Default::default()
        },
    )
    .unwrap();
    let completions: Vec<String> = problems
        .iter()
        .enumerate()
        .map(|(i, p)| {
            if i % 3 == 0 {
                "0".into()
            } else {
                p.reference.clone()
            }
        })
        .collect();
    let items: Vec<(&Problem, &str)> = problems
        .iter()
        .zip(&completions)
        .map(|(p, c)| (p, c.as_str()))
        .collect();
    let rw = Rewarder::default();
    let many: Vec<f64> = rw
        .score_many(TaskKind::Arith, &items)
        .iter()
        .map(|s| s.reward)
        .collect();
    let one: Vec<f64> = items
        .iter()
        .map(|(p, c)| rw.reward(TaskKind::Arith, p, c))
        .collect();
    assert_eq!(many, one);
    assert!(many.contains(&1.0));
}
