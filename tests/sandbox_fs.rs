//! The sandbox keeps the machine's data safe (issue 13, item 2): under each
//! namespace mechanism that works here (bubblewrap, unshare; a test prints why it
//! skips one), model-written code cannot create, truncate or append to files outside
//! its directory, by Python calls or by processes it starts, sees nothing of the
//! engine's HOME or working directory, still writes its own directory, leaves no
//! process behind, and the judged runner still decides verdicts. Skipped without a
//! Python interpreter.

mod common;

use common::inc_problem;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use onelayer::tasks::sandbox::{self, Isolation};
use onelayer::tasks::{Outcome, Problem, Rewarder, SandboxConfig, TaskKind};

fn have_python() -> bool {
    let ok = sandbox::python(&SandboxConfig::default()).is_some();
    if !ok {
        println!("skipped: no python3 (set ONELAYER_PYTHON)");
    }
    ok
}

/// The namespace mechanisms that work here, each skipped one with its reason.
fn mechanisms() -> Vec<Isolation> {
    if !have_python() {
        return Vec::new();
    }
    [Isolation::Bwrap, Isolation::Unshare]
        .into_iter()
        .filter(|&i| match sandbox::available(i) {
            Ok(()) => true,
            Err(e) => {
                println!("skipped {i}: {e}");
                false
            }
        })
        .collect()
}

fn config(iso: Isolation, secs: u64) -> SandboxConfig {
    SandboxConfig {
        isolation: Some(iso),
        time_limit: Duration::from_secs(secs),
        ..Default::default()
    }
}

/// A name no other run of any test uses.
fn unique() -> String {
    use std::sync::atomic::{AtomicU64, Ordering};
    static N: AtomicU64 = AtomicU64::new(0);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .subsec_nanos();
    format!(
        "{}{:09}{}",
        std::process::id(),
        nanos,
        N.fetch_add(1, Ordering::Relaxed)
    )
}

/// Temporary directories the test made outside the sandbox (one under its working
/// directory, one under /tmp), each with a sentinel file.
struct Outside {
    local: tempfile::TempDir,
    tmp: tempfile::TempDir,
    sentinels: Vec<(PathBuf, Vec<u8>)>,
}

fn outside() -> Outside {
    let local = tempfile::Builder::new()
        .prefix(".sandbox-fs-test-")
        .tempdir_in(std::env::current_dir().unwrap())
        .unwrap();
    let tmp = tempfile::Builder::new()
        .prefix("sandbox-fs-test-")
        .tempdir_in("/tmp")
        .unwrap();
    let content: Vec<u8> = b"sentinel \x00\xff\n".repeat(100);
    let sentinels = [local.path(), tmp.path()]
        .iter()
        .map(|d| {
            let p = d.join("sentinel.bin");
            std::fs::write(&p, &content).unwrap();
            (p, content.clone())
        })
        .collect();
    Outside {
        local,
        tmp,
        sentinels,
    }
}

impl Outside {
    fn assert_untouched(&self, what: &str) {
        for (p, want) in &self.sentinels {
            let got = std::fs::read(p).unwrap_or_default();
            assert!(
                &got == want,
                "{what}: {} changed ({} bytes now)",
                p.display(),
                got.len()
            );
        }
    }
}

/// The engine's HOME, when it has one the sandbox hides (not `/`).
fn home() -> Option<PathBuf> {
    let h = std::fs::canonicalize(std::env::var_os("HOME")?).ok()?;
    if h == Path::new("/") {
        println!("HOME is /: not checked");
        return None;
    }
    Some(h)
}

fn cwd() -> PathBuf {
    std::fs::canonicalize(std::env::current_dir().unwrap()).unwrap()
}

fn py(s: &Path) -> String {
    serde_json::to_string(s.to_str().unwrap()).unwrap()
}

/// Processes on the machine whose command line holds `marker`.
fn processes_with(marker: &str) -> Vec<String> {
    let mut found = Vec::new();
    for e in std::fs::read_dir("/proc").unwrap().flatten() {
        if let Ok(cmd) = std::fs::read(e.path().join("cmdline")) {
            let text = String::from_utf8_lossy(&cmd).replace('\0', " ");
            let state = std::fs::read_to_string(e.path().join("stat")).unwrap_or_default();
            let zombie = state
                .rsplit(')')
                .next()
                .is_some_and(|r| r.trim().starts_with(['Z', 'X']));
            if text.contains(marker) && !zombie {
                found.push(format!("{}: {text}", e.file_name().to_string_lossy()));
            }
        }
    }
    found
}

/// (a)-(d): creating files outside (in the test's directories, /tmp, the engine's
/// working directory and HOME), truncating and appending to existing ones, by Python
/// calls and by started processes, all leave the machine's files as they were; HOME
/// and the working directory show nothing; writing inside works.
#[test]
fn writes_outside_are_refused() {
    for iso in mechanisms() {
        let o = outside();
        let tag = format!("onelayer-escape-{}", unique());
        let (cwd, home) = (cwd(), home());
        let mut targets = vec![o.local.path(), o.tmp.path(), Path::new("/tmp"), &cwd];
        targets.extend(home.as_deref());
        // Unix sockets listening in the test's directories: a read-only mount alone
        // would not stop a connection, hiding them does.
        let sockets: Vec<(PathBuf, std::os::unix::net::UnixListener)> =
            [o.local.path(), o.tmp.path()]
                .iter()
                .map(|d| {
                    let p = d.join("s.sock");
                    let l = std::os::unix::net::UnixListener::bind(&p).unwrap();
                    l.set_nonblocking(true).unwrap();
                    (p, l)
                })
                .collect();
        let socket_list: Vec<String> = sockets.iter().map(|(p, _)| py(p)).collect();
        let target_list: Vec<String> = targets.iter().map(|t| py(t)).collect();
        let sentinel_list: Vec<String> = o.sentinels.iter().map(|(p, _)| py(p)).collect();
        let prog = format!(
            r#"import json, os, subprocess, sys
TAG = {tag:?}
TARGETS = [{targets}]
SENTINELS = [{sentinels}]
SOCKETS = [{sockets}]
HOME, CWD = {home}, {cwd}
res = {{}}
def attempt(name, f):
    try:
        f()
        res[name] = "done"
    except BaseException as e:
        res[name] = type(e).__name__
def spawn(script, *args):
    pid = os.posix_spawn("/bin/sh", ["sh", "-c", script, "sh", *args], {{}})
    return os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1])
for i, d in enumerate(TARGETS):
    attempt(f"open_x{{i}}", lambda d=d: open(os.path.join(d, TAG + "-a"), "x").write("x"))
    attempt(f"os_creat{{i}}", lambda d=d: os.close(os.open(os.path.join(d, TAG + "-b"), os.O_WRONLY | os.O_CREAT, 0o644)))
    attempt(f"mkdir{{i}}", lambda d=d: os.mkdir(os.path.join(d, TAG + "-c")))
    attempt(f"subprocess{{i}}", lambda d=d: subprocess.run(["touch", os.path.join(d, TAG + "-d")]))
for i, s in enumerate(SENTINELS):
    attempt(f"open_w{{i}}", lambda s=s: open(s, "w").close())
    attempt(f"open_a{{i}}", lambda s=s: open(s, "a").write("x"))
    attempt(f"o_trunc{{i}}", lambda s=s: os.close(os.open(s, os.O_WRONLY | os.O_TRUNC)))
    attempt(f"os_truncate{{i}}", lambda s=s: os.truncate(s, 0))
res["spawned_writes"] = spawn(
    'w=0; for d in "$@"; do echo x > "$d/{tag}-e" && w=1; done; for s in {sentinel_words}; do true > "$s" && w=1; echo x >> "$s" && w=1; done; exit $w',
    *TARGETS)
def spawn_python(code, *args):
    pid = os.posix_spawn(sys.executable, [sys.executable, "-I", "-c", code, *args], {{}})
    return os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1])
connect = "import socket, sys\ns = socket.socket(socket.AF_UNIX)\ns.connect(sys.argv[1])\ns.send(b'x')\n"
res["unguarded_python"] = spawn_python("import socket; socket.socket(socket.AF_UNIX).close()")
res["socket_connects"] = [spawn_python(connect, s) for s in SOCKETS]
needed = [sys.prefix, sys.base_prefix, sys.exec_prefix, sys.base_exec_prefix,
          os.path.dirname(os.path.realpath(sys.executable)), os.getcwd()]
def extra(d):
    try:
        names = os.listdir(d)
    except FileNotFoundError:
        return []  # under a hidden directory: nothing there at all
    except OSError as e:
        return [type(e).__name__]
    return [n for n in names if not any((p + "/").startswith(os.path.join(d, n) + "/") for p in needed)]
res["home_extra"] = extra(HOME) if HOME else []
res["cwd_extra"], res["tmp_extra"], res["run_extra"] = extra(CWD), extra("/tmp"), extra("/run")
attempt("inside_open", lambda: open("inside.txt", "w").write("in"))
attempt("inside_trunc", lambda: os.close(os.open("inside.txt", os.O_WRONLY | os.O_TRUNC)))
res["inside_spawn"] = spawn('echo spawned > spawned.txt; mkdir sub && echo deep > sub/f')
res["inside_read"] = [open("spawned.txt").read(), open("sub/f").read(), os.path.getsize("inside.txt")]
print(json.dumps(res))
"#,
            targets = target_list.join(", "),
            sentinels = sentinel_list.join(", "),
            sentinel_words = o
                .sentinels
                .iter()
                .map(|(p, _)| format!("\"{}\"", p.display()))
                .collect::<Vec<_>>()
                .join(" "),
            sockets = socket_list.join(", "),
            home = home.as_deref().map_or("None".into(), py),
            cwd = py(&cwd),
        );
        let r = sandbox::run_python(&prog, &config(iso, 10));
        // Clean up first: a failing run must not leave files in HOME or the checkout.
        let mut escaped = Vec::new();
        for d in &targets {
            for suffix in ["a", "b", "c", "d", "e"] {
                let p = d.join(format!("{tag}-{suffix}"));
                if p.exists() {
                    let _ = std::fs::remove_file(&p).or_else(|_| std::fs::remove_dir(&p));
                    escaped.push(p);
                }
            }
        }
        assert!(escaped.is_empty(), "{iso}: created outside: {escaped:?}");
        o.assert_untouched(iso.name());
        assert_eq!((r.outcome, r.isolation), (Outcome::Passed, iso), "{r:?}");
        let res: serde_json::Value = serde_json::from_str(r.stdout.trim()).unwrap();
        for (k, v) in res.as_object().unwrap() {
            if k.starts_with("open_")
                || k.starts_with("os_")
                || k.starts_with("o_")
                || k.starts_with("mkdir")
                || k.starts_with("subprocess")
            {
                assert_ne!(v, "done", "{iso}: {k} succeeded");
            }
        }
        assert_eq!(res["spawned_writes"], 0, "{iso}: {res}");
        assert_eq!(res["unguarded_python"], 0, "{iso}: {res}");
        for (p, l) in &sockets {
            let got = l.accept();
            assert!(
                got.as_ref()
                    .is_err_and(|e| e.kind() == std::io::ErrorKind::WouldBlock),
                "{iso}: {} was connected to: {got:?}",
                p.display()
            );
        }
        assert_eq!(
            res["socket_connects"],
            serde_json::json!([1, 1]),
            "{iso}: {res}"
        );
        for k in ["home_extra", "cwd_extra", "tmp_extra", "run_extra"] {
            assert_eq!(res[k], serde_json::json!([]), "{iso}: {k}: {res}");
        }
        assert!(
            std::fs::read_dir(&cwd).unwrap().count() > 0,
            "the test's working directory has files to hide"
        );
        assert_eq!(res["inside_open"], "done", "{iso}: {res}");
        assert_eq!(res["inside_trunc"], "done", "{iso}: {res}");
        assert_eq!(res["inside_spawn"], 0, "{iso}: {res}");
        assert_eq!(
            res["inside_read"],
            serde_json::json!(["spawned\n", "deep\n", 0]),
            "{iso}"
        );
        println!("{iso}: {res}");
    }
}

/// The control: with the guards alone the same truncation through a started process
/// does reach the file (so the test above would see an escape).
#[test]
fn guards_alone_let_processes_write() {
    if !have_python() {
        return;
    }
    let o = outside();
    let (p, want) = &o.sentinels[1];
    let prog = format!(
        "import os\nos.waitpid(os.posix_spawn('/bin/sh', ['sh', '-c', ': > \"$0\"', {}], {{}}), 0)\n",
        py(p)
    );
    let r = sandbox::run_python(&prog, &config(Isolation::Guards, 10));
    assert_eq!(
        (r.outcome, r.isolation),
        (Outcome::Passed, Isolation::Guards),
        "{r:?}"
    );
    assert_eq!(
        std::fs::read(p).unwrap().len(),
        0,
        "was {} bytes",
        want.len()
    );
}

/// The judged runner under each mechanism: the report on fd 3 reaches the engine
/// (honest code passes), exits, crashes (a signal death through bwrap's or the
/// shell's 128+N status), forged reports and non-plain results keep their outcomes,
/// and a candidate that truncates a file outside leaves it whole.
#[test]
fn judged_runs_keep_their_verdicts() {
    for iso in mechanisms() {
        let rw = Rewarder::new(config(iso, 10));
        let p = inc_problem();
        let o = outside();
        let (sentinel, _) = &o.sentinels[0];
        let sneaky = format!(
            "    import os\n    try:\n        open({}, 'w').close()\n    except OSError:\n        pass\n    return x + 1\n",
            py(sentinel)
        );
        let cases: Vec<(String, Outcome, &str)> = vec![
            ("    return x + 1\n".into(), Outcome::Passed, ""),
            (sneaky, Outcome::Passed, ""),
            ("    return x + 2\n".into(), Outcome::Failed, ""),
            ("    import sys\n    sys.exit(0)\n".into(), Outcome::ExitedEarly, "SystemExit"),
            ("    import os\n    os.abort()\n".into(), Outcome::Crashed, "signal 6"),
            (
                "    import os\n    os.write(3, b'x passed\\n')\n    return x + 1\n".into(),
                Outcome::Failed,
                "",
            ),
            (
                "```python\nclass E:\n    def __eq__(self, o):\n        return True\ndef inc(x):\n    return E()\n```".into(),
                Outcome::NonPlainResult,
                "E",
            ),
        ];
        for (completion, want, detail) in cases {
            let s = rw.score(TaskKind::Code, &p, &completion);
            let run = s.run.unwrap();
            assert_eq!(run.outcome, want, "{iso}: {completion}: {run:?}");
            assert_eq!(run.isolation, iso);
            assert_eq!(s.reward, (want == Outcome::Passed) as u8 as f64);
            assert!(run.detail.contains(detail), "{iso}: {run:?}");
        }
        o.assert_untouched(iso.name());
        // The environment is the sandbox's only, the run's directory its home.
        let r = sandbox::run_python(
            "import os\nprint(sorted(os.environ), os.getcwd() == os.environ['HOME'] == os.environ['TMPDIR'])\n",
            &config(iso, 10),
        );
        assert_eq!(
            r.stdout.trim(),
            "['HOME', 'LANG', 'OMP_NUM_THREADS', 'PATH', 'TMPDIR'] True",
            "{iso}: {r:?}"
        );
        // The plain runner: a signal death is a crash, exit statuses stay.
        let r = sandbox::run_python("import os\nos.abort()\n", &config(iso, 10));
        assert_eq!(
            (r.outcome, r.signal),
            (Outcome::Crashed, Some(6)),
            "{iso}: {r:?}"
        );
        let r = sandbox::run_python("import sys\nsys.exit(3)\n", &config(iso, 10));
        assert_eq!(
            (r.outcome, r.exit_code),
            (Outcome::Failed, Some(3)),
            "{iso}: {r:?}"
        );
    }
}

/// HumanEval canonical solutions still pass under each mechanism (the first 10,
/// when `../shared/data` holds the dataset).
#[test]
fn humaneval_canonical_solutions_pass_in_namespaces() {
    let path =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../shared/data/humaneval/HumanEval.jsonl.gz");
    if !path.exists() {
        println!("skipped: {} not found", path.display());
        return;
    }
    for iso in mechanisms() {
        let problems = onelayer::tasks::load(
            TaskKind::Code,
            Some(&path),
            &onelayer::tasks::ArithOptions::default(),
        )
        .unwrap();
        let rw = Rewarder::new(config(iso, 10));
        let items: Vec<(&Problem, String)> = problems[..10]
            .iter()
            .map(|p| {
                (
                    p,
                    p.code.as_ref().unwrap().canonical_solution.clone().unwrap(),
                )
            })
            .collect();
        let refs: Vec<(&Problem, &str)> = items.iter().map(|(p, c)| (*p, c.as_str())).collect();
        for ((p, _), s) in refs.iter().zip(rw.score_many(TaskKind::Code, &refs)) {
            let run = s.run.unwrap();
            assert_eq!(
                s.reward, 1.0,
                "{iso} {}: {:?} {}",
                p.id, run.outcome, run.stderr
            );
        }
    }
}

/// A busy loop with a 1 s limit ends in about a second under each mechanism, and
/// nothing it started is left: not its own process, nor one it started in a new
/// session (which escapes a process-group kill, not a PID namespace).
#[test]
fn timeouts_and_exits_leave_no_process() {
    for iso in mechanisms() {
        let marker = format!("30.{}", unique());
        let prog = format!(
            "import os\nos.posix_spawn('/bin/sleep', ['sleep', '{marker}'], {{}}, setsid=True)\nprint(os.getcwd(), flush=True)\nwhile True:\n    pass\n"
        );
        let t = Instant::now();
        let r = sandbox::run_python(&prog, &config(iso, 1));
        let took = t.elapsed();
        assert_eq!(r.outcome, Outcome::Timeout, "{iso}: {r:?}");
        assert!(took < Duration::from_millis(2500), "{iso}: {took:?}");
        let dir = r.stdout.trim().to_string();
        assert!(dir.contains("onelayer-sandbox-"), "{iso}: {r:?}");
        // The PID namespace's init died with the kill: give the kernel a moment.
        let gone = |what: &str| {
            let t = Instant::now();
            loop {
                let left = processes_with(what);
                if left.is_empty() {
                    break;
                }
                assert!(t.elapsed() < Duration::from_secs(2), "{iso}: left {left:?}");
                std::thread::sleep(Duration::from_millis(20));
            }
        };
        gone(&marker);
        // No process is left in the run's directory (the Python program's own).
        let t = Instant::now();
        loop {
            let left: Vec<String> = std::fs::read_dir("/proc")
                .unwrap()
                .flatten()
                .filter(|e| {
                    std::fs::read_link(e.path().join("cwd"))
                        .is_ok_and(|c| c.to_string_lossy().starts_with(&dir))
                })
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect();
            if left.is_empty() {
                break;
            }
            assert!(
                t.elapsed() < Duration::from_secs(2),
                "{iso}: pids {left:?} still in {dir}"
            );
            std::thread::sleep(Duration::from_millis(5));
        }
        println!(
            "{iso}: the run's processes gone {:?} after it returned",
            t.elapsed()
        );
        println!("{iso}: timed out after {took:?}");
        // A program that ends normally takes what it started with it.
        let marker = format!("30.{}", unique());
        let prog = format!(
            "import os\nos.posix_spawn('/bin/sleep', ['sleep', '{marker}'], {{}}, setsid=True)\n"
        );
        let r = sandbox::run_python(&prog, &config(iso, 10));
        assert_eq!(r.outcome, Outcome::Passed, "{iso}: {r:?}");
        gone(&marker);
    }
}

/// The isolation a default run gets is the one `isolation()` names (bubblewrap where
/// it works), and the time a run takes under each mechanism (printed; see
/// `cargo test --test sandbox_fs -- --nocapture`).
#[test]
fn isolation_is_reported_and_timed() {
    if !have_python() {
        return;
    }
    let default = sandbox::isolation().unwrap();
    println!("sandbox: {}", default.describe());
    let r = sandbox::run_python("pass\n", &SandboxConfig::default());
    assert_eq!(
        (r.outcome, r.isolation),
        (Outcome::Passed, default),
        "{r:?}"
    );
    if sandbox::available(Isolation::Bwrap).is_ok()
        && std::env::var_os("ONELAYER_SANDBOX").is_none()
    {
        assert_eq!(default, Isolation::Bwrap);
    }
    for iso in Isolation::ALL {
        if sandbox::available(iso).is_err() {
            continue;
        }
        let cfg = config(iso, 10);
        let p = inc_problem();
        let rw = Rewarder::new(cfg.clone());
        let n = 5;
        let t = Instant::now();
        for _ in 0..n {
            assert_eq!(sandbox::run_python("pass\n", &cfg).outcome, Outcome::Passed);
        }
        let plain = t.elapsed() / n;
        let t = Instant::now();
        for _ in 0..n {
            assert_eq!(rw.reward(TaskKind::Code, &p, "    return x + 1\n"), 1.0);
        }
        let judged = t.elapsed() / n;
        println!("{iso}: {plain:?} a plain run, {judged:?} a judged run");
    }
}

/// `engine eval` and `engine run` on the code task print the sandbox once and record
/// it (`sandbox_isolation` in eval's report and the run's first metrics line); a
/// mechanism forced by `$ONELAYER_SANDBOX` that is unknown stops them with one line.
#[test]
fn engine_reports_the_sandbox() {
    if !have_python() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("code.jsonl");
    let line = serde_json::json!({
        "task_id": "t/0",
        "prompt": "def inc(x):\n",
        "test": "def check(c):\n    assert c(1) == 2\n",
        "entry_point": "inc",
    });
    std::fs::write(&data, format!("{line}\n")).unwrap();
    let model = common::fixture("qwen3-gqa2-tied");
    let (m, d) = (model.to_str().unwrap(), data.to_str().unwrap());
    let common_args = [
        "--task",
        "code",
        "--model",
        m,
        "--data",
        d,
        "--max-new-tokens",
        "4",
        "--device",
        "cpu",
    ];
    let want = sandbox::isolation().unwrap();
    let out = common::engine()
        .arg("eval")
        .args(common_args)
        .output()
        .unwrap();
    let (stdout, stderr) = (
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
    );
    assert!(out.status.success(), "{stderr}");
    let said: Vec<&str> = stderr
        .lines()
        .filter(|l| l.starts_with("sandbox: "))
        .collect();
    assert_eq!(said, [format!("sandbox: {}", want.describe())], "{stderr}");
    let v: serde_json::Value = serde_json::from_str(stdout.trim()).unwrap();
    assert_eq!(v["sandbox_isolation"], want.name());
    let run_dir = dir.path().join("run");
    let out = common::engine()
        .arg("run")
        .args(common_args)
        .args([
            "--steps",
            "2",
            "--prompts-per-step",
            "1",
            "--group-size",
            "2",
            "--out",
        ])
        .arg(&run_dir)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert_eq!(stderr.matches("sandbox: ").count(), 1, "{stderr}");
    let metrics = std::fs::read_to_string(run_dir.join("metrics.jsonl")).unwrap();
    let lines: Vec<serde_json::Value> = metrics
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 2);
    assert_eq!(lines[0]["sandbox_isolation"], want.name());
    assert!(lines[1].get("sandbox_isolation").is_none());
    let out = common::engine()
        .arg("eval")
        .args(common_args)
        .env("ONELAYER_SANDBOX", "docker")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        stderr
            .trim()
            .starts_with("error: ONELAYER_SANDBOX=\"docker\""),
        "{stderr}"
    );
}
