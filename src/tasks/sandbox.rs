//! Runs untrusted Python (model-written code plus tests) in a subprocess with
//! limits. This is a best-effort guard against accidents (infinite loops, huge
//! allocations, runaway output, stray network or file-system calls), NOT a
//! security boundary: run untrusted models' code in a container or VM.
//!
//! How each limit is enforced (Linux):
//! - wall clock (`time_limit`, default 10 s): the parent polls the child and
//!   on expiry kills its whole process group (the child calls `setsid` before
//!   exec) with SIGKILL. RLIMIT_CPU (time limit + 1 s) is a backstop.
//! - memory (`memory_bytes`, default 1 GiB): RLIMIT_AS, so a large allocation
//!   raises MemoryError.
//! - output (`output_bytes`, default 1 MiB): stdout and stderr go to files in
//!   the temporary directory and RLIMIT_FSIZE caps every file the child writes
//!   (Python ignores SIGXFSZ, so a write past the cap raises OSError); only the
//!   last `keep_bytes` of each are read back. No core dumps (RLIMIT_CORE 0),
//!   at most 128 open files (RLIMIT_NOFILE).
//! - network: when `unshare -r -n` (a new user and network namespace, no root
//!   needed where unprivileged user namespaces are allowed) works on this
//!   machine, the child runs inside it and has no network interface but
//!   loopback; otherwise `unshare -n` if that works (when running as root).
//!   Always, a Python prelude replaces `socket.socket`, `create_connection`,
//!   `getaddrinfo` and friends with functions that raise, and no proxy
//!   variables are passed.
//! - file system and processes: a fresh temporary directory is the working
//!   directory, HOME and TMPDIR, and is removed afterwards. The prelude also
//!   disables, as human-eval's `reliability_guard` does (openai/human-eval,
//!   `human_eval/execution.py`), `os.system`, `os.kill`, `os.fork`,
//!   `subprocess.Popen`, `shutil.rmtree`, file removal/renaming/permission
//!   changes and `setsid`. Any process left in the group after the program
//!   ends is killed.
//! - environment: cleared except PATH (`/usr/local/bin:/usr/bin:/bin`), HOME,
//!   TMPDIR, LANG and OMP_NUM_THREADS=1; Python runs with `-I -B` (isolated
//!   mode: no user site-packages, PYTHON* variables ignored, no bytecode).
//!
//! Code verdicts (`run_judged`, judge_harness.py): the tests decide, not the exit
//! status. The candidate runs in its own forked process and answers the tests'
//! calls with plain data over a pipe; the judge writes "passed" with the run's token
//! to a pipe only the engine reads, and only after `check` returns. So `sys.exit`,
//! `os._exit`, `SystemExit`, atexit hooks, killing processes, objects whose `__eq__`
//! always holds (or int subclasses), redefining `check` or the builtins, and writing
//! a fake report all score 0, each with its outcome. What it still cannot stop:
//! a candidate that reads the judge's memory (ptrace or /proc/PID/mem of its parent,
//! where the kernel's ptrace policy allows it for the same user), code that
//! special-cases the tests' inputs, and anything the file system and process guards
//! above do not block (they are not a security boundary).
//!
//! The interpreter: `SandboxConfig::python`, else `$ONELAYER_PYTHON`, else
//! `python3` on PATH, resolved once to its real executable (`sys.executable`,
//! so pyenv shims and the like need no environment).

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Mutex, OnceLock};
use std::time::Duration;

/// Limits of one sandboxed run.
#[derive(Clone, Debug, PartialEq)]
pub struct SandboxConfig {
    /// The interpreter; None: `$ONELAYER_PYTHON`, else `python3` on PATH.
    pub python: Option<PathBuf>,
    /// Wall-clock limit.
    pub time_limit: Duration,
    /// Address-space limit (RLIMIT_AS) in bytes.
    pub memory_bytes: u64,
    /// Largest file the program may write, stdout and stderr included.
    pub output_bytes: u64,
    /// How much of the end of stdout and stderr is kept in the result.
    pub keep_bytes: usize,
    /// Run in a new network namespace when `unshare` allows it.
    pub isolate_network: bool,
}

impl Default for SandboxConfig {
    fn default() -> Self {
        SandboxConfig {
            python: None,
            time_limit: Duration::from_secs(10),
            memory_bytes: 1 << 30,
            output_bytes: 1 << 20,
            keep_bytes: 2048,
            isolate_network: true,
        }
    }
}

/// How a sandboxed run ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// Exit status 0 within the limits.
    Passed,
    /// Non-zero exit status (a failed assertion, an exception, MemoryError).
    Failed,
    /// Killed at the wall-clock limit (or by the CPU-time backstop).
    Timeout,
    /// Killed by a signal (abort, segfault, ...).
    Crashed,
    /// Judged runs (`run_judged`): the candidate's process ended (`sys.exit`,
    /// `os._exit`, `SystemExit`, ...) before the tests did, or the run ended without
    /// the harness's verdict.
    ExitedEarly,
    /// Judged runs: the candidate returned something that is not plain data.
    NonPlainResult,
    /// Could not be run (no Python, no temporary directory, ...); see `stderr`.
    NotRun,
}

impl Outcome {
    pub fn name(self) -> &'static str {
        match self {
            Outcome::Passed => "passed",
            Outcome::Failed => "failed",
            Outcome::Timeout => "timeout",
            Outcome::Crashed => "crashed",
            Outcome::ExitedEarly => "exited_early",
            Outcome::NonPlainResult => "non_plain_result",
            Outcome::NotRun => "not_run",
        }
    }
}

/// What a sandboxed run did, for the reward and for logging.
#[derive(Clone, Debug)]
pub struct RunResult {
    pub outcome: Outcome,
    /// The exit status, when the program exited.
    pub exit_code: Option<i32>,
    /// The signal that ended it, when one did.
    pub signal: Option<i32>,
    pub elapsed: Duration,
    /// The end of stdout / stderr (at most `keep_bytes` each, lossy UTF-8,
    /// prefixed with `[... N bytes cut]` when cut).
    pub stdout: String,
    pub stderr: String,
    /// Whether the run was inside a new network namespace.
    pub network_isolated: bool,
    /// Judged runs: the harness's reason (the failing assertion's exception, the
    /// signal, what was returned), else empty.
    pub detail: String,
}

impl RunResult {
    pub(crate) fn not_run(msg: impl Into<String>) -> Self {
        RunResult {
            outcome: Outcome::NotRun,
            exit_code: None,
            signal: None,
            elapsed: Duration::ZERO,
            stdout: String::new(),
            stderr: msg.into(),
            network_isolated: false,
            detail: String::new(),
        }
    }
}

/// The guards every sandboxed program runs under (`_guards.py`).
const GUARDS: &str = r#"import sys, os, socket, _socket, shutil, subprocess, faulthandler
faulthandler.disable()
def _onelayer_denied(*args, **kwargs):
    raise OSError(101, "network access is disabled in the onelayer sandbox")
class _OnelayerNoSocket(socket.socket):
    def __init__(self, *args, **kwargs):
        _onelayer_denied()
socket.socket = socket.SocketType = _socket.socket = _socket.SocketType = _OnelayerNoSocket
for _m in (socket, _socket):
    for _n in ("create_connection", "create_server", "socketpair", "fromfd", "getaddrinfo",
               "gethostbyname", "gethostbyname_ex", "gethostbyaddr", "getnameinfo"):
        if hasattr(_m, _n):
            setattr(_m, _n, _onelayer_denied)
for _n in ("system", "kill", "killpg", "fork", "forkpty", "setsid", "setpgid", "setuid",
           "putenv", "remove", "removedirs", "rmdir", "unlink", "rename", "renames", "replace",
           "truncate", "chmod", "fchmod", "chown", "fchown", "lchown", "chroot"):
    if hasattr(os, _n):
        setattr(os, _n, None)
shutil.rmtree = shutil.move = shutil.chown = None
subprocess.Popen = None
for _n in ("resource", "psutil", "ctypes"):
    sys.modules[_n] = None
del _m, _n
"#;

/// The plain runner (`run_python`): the guards, then `main.py` as `__main__`.
const RUN_MAIN: &str = r#"exec(compile(open("_guards.py", encoding="utf-8").read(), "_guards.py", "exec"), {})
import sys
sys.argv = ["main.py"]
with open("main.py", encoding="utf-8") as _f:
    _code = compile(_f.read(), "main.py", "exec")
exec(_code, {"__name__": "__main__", "__file__": "main.py", "__builtins__": __builtins__})
"#;

/// The judged runner (`run_judged`, see the file's header).
const JUDGE: &str = include_str!("judge_harness.py");

/// The interpreter the sandbox would use, resolved to its real executable;
/// None when there is none that runs.
pub fn python(cfg: &SandboxConfig) -> Option<PathBuf> {
    let wanted: PathBuf = cfg
        .python
        .clone()
        .or_else(|| std::env::var_os("ONELAYER_PYTHON").map(PathBuf::from))
        .unwrap_or_else(|| PathBuf::from("python3"));
    static CACHE: OnceLock<Mutex<HashMap<PathBuf, Option<PathBuf>>>> = OnceLock::new();
    let cache = CACHE.get_or_init(Default::default);
    if let Some(hit) = cache.lock().unwrap().get(&wanted) {
        return hit.clone();
    }
    let resolved = Command::new(&wanted)
        .args(["-c", "import sys; print(sys.executable)"])
        .stdin(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| PathBuf::from(String::from_utf8_lossy(&o.stdout).trim()))
        .filter(|p| p.is_absolute() && p.exists());
    cache.lock().unwrap().insert(wanted, resolved.clone());
    resolved
}

/// The `unshare` command that puts a child in a new network namespace here,
/// when one works (probed once).
pub fn network_namespace() -> Option<&'static [&'static str]> {
    static PROBE: OnceLock<Option<&'static [&'static str]>> = OnceLock::new();
    *PROBE.get_or_init(|| {
        const WITH_USER: &[&str] = &["unshare", "-r", "-n", "--"];
        const PLAIN: &[&str] = &["unshare", "-n", "--"];
        [WITH_USER, PLAIN].into_iter().find(|cmd| {
            Command::new(cmd[0])
                .args(&cmd[1..])
                .arg("true")
                .stdin(std::process::Stdio::null())
                .stdout(std::process::Stdio::null())
                .stderr(std::process::Stdio::null())
                .status()
                .is_ok_and(|s| s.success())
        })
    })
}

/// Runs a Python program under the limits of `cfg`.
pub fn run_python(program: &str, cfg: &SandboxConfig) -> RunResult {
    let files = [
        ("main.py", program),
        ("_guards.py", GUARDS),
        ("_prelude.py", RUN_MAIN),
    ];
    match prepare(cfg, &files) {
        Ok((python, dir)) => imp::run(&python, dir.path(), cfg, &["_prelude.py"], None),
        Err(r) => r,
    }
}

/// The interpreter and a fresh directory holding `files`; a `NotRun` result when
/// either cannot be had.
fn prepare(cfg: &SandboxConfig, files: &[(&str, &str)]) -> Result<(PathBuf, TempDir), RunResult> {
    let Some(python) = python(cfg) else {
        return Err(RunResult::not_run(
            "no Python interpreter: install python3 or set ONELAYER_PYTHON",
        ));
    };
    let dir = TempDir::new()
        .map_err(|e| RunResult::not_run(format!("cannot create a temporary directory: {e}")))?;
    files
        .iter()
        .try_for_each(|(name, text)| std::fs::write(dir.path().join(name), text))
        .map_err(|e| RunResult::not_run(format!("cannot write the program: {e}")))?;
    Ok((python, dir))
}

/// A program judged by its tests, not by its exit status.
pub struct Judged<'a> {
    /// Trusted code the tests may use (the dataset's prompt), run beside them.
    pub trusted: &'a str,
    /// The program holding the model's code.
    pub candidate: &'a str,
    /// Trusted tests defining `check(candidate)`.
    pub test: &'a str,
    /// The function the tests call.
    pub entry_point: &'a str,
}

/// Run `check(entry_point)` with the candidate in its own process (judge_harness.py):
/// `Passed` only when the harness reports, with this run's token, that check
/// returned; every other ending is named (`Outcome`, `RunResult::detail`).
pub fn run_judged(j: &Judged<'_>, cfg: &SandboxConfig) -> RunResult {
    let files = [
        ("trusted.py", j.trusted),
        ("candidate.py", j.candidate),
        ("test.py", j.test),
        ("_guards.py", GUARDS),
        ("_judge.py", JUDGE),
    ];
    let (python, dir) = match prepare(cfg, &files) {
        Ok(p) => p,
        Err(r) => return r,
    };
    let token = match new_token() {
        Ok(t) => t,
        Err(e) => return RunResult::not_run(format!("cannot draw a run token: {e}")),
    };
    imp::run(
        &python,
        dir.path(),
        cfg,
        &["_judge.py", j.entry_point],
        Some(&token),
    )
}

/// 128 random bits as hex, from the kernel.
fn new_token() -> std::io::Result<String> {
    use std::io::Read;
    let mut b = [0u8; 16];
    std::fs::File::open("/dev/urandom")?.read_exact(&mut b)?;
    Ok(b.iter().map(|x| format!("{x:02x}")).collect())
}

/// The outcome a judged run's report gives, when it carries `token`.
fn parse_report(report: &str, token: &str) -> Option<(Outcome, String)> {
    let line = report.lines().next()?;
    let (tok, rest) = line.split_once(' ')?;
    if tok != token {
        return None;
    }
    let (name, detail) = rest.split_once(' ').unwrap_or((rest, ""));
    let outcome = match name {
        "passed" => Outcome::Passed,
        "failed" => Outcome::Failed,
        "crashed" => Outcome::Crashed,
        "exited_early" => Outcome::ExitedEarly,
        "non_plain_result" => Outcome::NonPlainResult,
        _ => return None,
    };
    Some((outcome, detail.trim().to_string()))
}

/// A fresh private directory, removed on drop.
struct TempDir(PathBuf);

impl TempDir {
    fn new() -> std::io::Result<TempDir> {
        use std::sync::atomic::{AtomicU64, Ordering};
        static COUNTER: AtomicU64 = AtomicU64::new(0);
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.subsec_nanos())
            .unwrap_or(0);
        let mut last = None;
        for _ in 0..16 {
            let n = COUNTER.fetch_add(1, Ordering::Relaxed);
            let path = std::env::temp_dir().join(format!(
                "onelayer-sandbox-{}-{nanos:x}-{n}",
                std::process::id()
            ));
            let mut builder = std::fs::DirBuilder::new();
            #[cfg(unix)]
            std::os::unix::fs::DirBuilderExt::mode(&mut builder, 0o700);
            match builder.create(&path) {
                Ok(()) => return Ok(TempDir(path)),
                Err(e) => last = Some(e),
            }
        }
        Err(last.unwrap())
    }

    fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// The last `keep` bytes of a file, lossy UTF-8, marked when cut.
fn tail(path: &Path, keep: usize) -> String {
    use std::io::{Read, Seek, SeekFrom};
    let Ok(mut f) = std::fs::File::open(path) else {
        return String::new();
    };
    let len = f.metadata().map(|m| m.len()).unwrap_or(0);
    let skip = len.saturating_sub(keep as u64);
    let mut buf = Vec::with_capacity(keep.min(len as usize));
    if f.seek(SeekFrom::Start(skip)).is_err() || f.take(keep as u64).read_to_end(&mut buf).is_err()
    {
        return String::new();
    }
    let text = String::from_utf8_lossy(&buf);
    if skip > 0 {
        format!("[... {skip} bytes cut]\n{text}")
    } else {
        text.into_owned()
    }
}

#[cfg(target_os = "linux")]
mod imp {
    use super::*;
    use std::os::unix::process::{CommandExt, ExitStatusExt};
    use std::process::Stdio;
    use std::time::Instant;

    /// Run `python -I -B ARGS...` in `dir`. With `token` (a judged run): the token
    /// on stdin, a pipe at fd 3 for the harness's report, and the outcome from the
    /// report when it carries the token.
    pub fn run(
        python: &Path,
        dir: &Path,
        cfg: &SandboxConfig,
        args: &[&str],
        token: Option<&str>,
    ) -> RunResult {
        let netns = if cfg.isolate_network {
            network_namespace()
        } else {
            None
        };
        let mut cmd = match netns {
            Some(un) => {
                let mut c = Command::new(un[0]);
                c.args(&un[1..]).arg(python);
                c
            }
            None => Command::new(python),
        };
        let (out, err) = match (
            std::fs::File::create(dir.join("stdout.txt")),
            std::fs::File::create(dir.join("stderr.txt")),
        ) {
            (Ok(o), Ok(e)) => (o, e),
            (Err(e), _) | (_, Err(e)) => {
                return RunResult::not_run(format!("cannot create output files: {e}"))
            }
        };
        // The report pipe (judged runs): read end kept here, write end at fd 3.
        let mut report = [-1, -1];
        if token.is_some() {
            // SAFETY: `report` has room for the two descriptors.
            if unsafe { libc::pipe2(report.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
                return RunResult::not_run(format!(
                    "cannot make the report pipe: {}",
                    std::io::Error::last_os_error()
                ));
            }
        }
        let report_w = report[1];
        cmd.args(["-I", "-B"])
            .args(args)
            .current_dir(dir)
            .env_clear()
            .env("PATH", "/usr/local/bin:/usr/bin:/bin")
            .env("HOME", dir)
            .env("TMPDIR", dir)
            .env("LANG", "C.UTF-8")
            .env("OMP_NUM_THREADS", "1")
            .stdin(if token.is_some() {
                Stdio::piped()
            } else {
                Stdio::null()
            })
            .stdout(Stdio::from(out))
            .stderr(Stdio::from(err));
        let secs = cfg.time_limit.as_secs_f64().ceil() as u64 + 1;
        let limits = [
            (libc::RLIMIT_AS, cfg.memory_bytes),
            (libc::RLIMIT_FSIZE, cfg.output_bytes),
            (libc::RLIMIT_CORE, 0),
            (libc::RLIMIT_CPU, secs),
            (libc::RLIMIT_NOFILE, 128),
        ];
        // SAFETY: between fork and exec the hook only makes async-signal-safe
        // system calls (setsid, setrlimit) on data prepared before the fork.
        unsafe {
            cmd.pre_exec(move || {
                if libc::setsid() < 0 {
                    return Err(std::io::Error::last_os_error());
                }
                // dup2 clears close-on-exec on fd 3 only.
                if report_w >= 0 && libc::dup2(report_w, 3) < 0 {
                    return Err(std::io::Error::last_os_error());
                }
                for (res, lim) in limits {
                    let rl = libc::rlimit {
                        rlim_cur: lim as libc::rlim_t,
                        rlim_max: lim as libc::rlim_t,
                    };
                    if libc::setrlimit(res, &rl) != 0 {
                        return Err(std::io::Error::last_os_error());
                    }
                }
                Ok(())
            });
        }
        let start = Instant::now();
        let spawned = cmd.spawn();
        let close = |fd: i32| {
            if fd >= 0 {
                // SAFETY: a descriptor this function made and closes once.
                unsafe { libc::close(fd) };
            }
        };
        close(report[1]); // the child holds its own copy
        let mut child = match spawned {
            Ok(c) => c,
            Err(e) => {
                close(report[0]);
                return RunResult::not_run(format!("cannot start {}: {e}", python.display()));
            }
        };
        if let (Some(t), Some(mut stdin)) = (token, child.stdin.take()) {
            use std::io::Write;
            let _ = stdin.write_all(t.as_bytes()); // fits the pipe's buffer; closed on drop
        }
        let pid = child.id() as libc::pid_t;
        let mut timed_out = false;
        let mut nap = Duration::from_millis(1);
        loop {
            if exited(pid) {
                break;
            }
            let spent = start.elapsed();
            if spent >= cfg.time_limit {
                timed_out = true;
                break;
            }
            std::thread::sleep(nap.min(cfg.time_limit - spent));
            nap = (nap * 2).min(Duration::from_millis(20));
        }
        // The leader is a zombie or still running, so its pid (the group id)
        // cannot have been reused: kill the group, stragglers included.
        // SAFETY: plain system call.
        unsafe { libc::killpg(pid, libc::SIGKILL) };
        let status = child.wait();
        let elapsed = start.elapsed();
        let (code, signal) = match &status {
            Ok(s) => (s.code(), s.signal()),
            Err(_) => (None, None),
        };
        let judged = token.map(|t| {
            let text = read_all(report[0]);
            close(report[0]);
            parse_report(&text, t)
        });
        let mut detail = String::new();
        let outcome = if timed_out || signal == Some(libc::SIGXCPU) {
            Outcome::Timeout
        } else if let Some(judged) = judged {
            match (judged, signal) {
                (Some((o, d)), _) => {
                    detail = d;
                    o
                }
                (None, Some(sig)) => {
                    detail = format!("the harness was killed by signal {sig}");
                    Outcome::Crashed
                }
                (None, None) => {
                    detail = "the run ended without the harness's verdict".into();
                    Outcome::ExitedEarly
                }
            }
        } else {
            match (code, signal) {
                (Some(0), _) => Outcome::Passed,
                (Some(_), _) => Outcome::Failed,
                _ => Outcome::Crashed,
            }
        };
        RunResult {
            outcome,
            exit_code: code,
            signal,
            elapsed,
            stdout: tail(&dir.join("stdout.txt"), cfg.keep_bytes),
            stderr: tail(&dir.join("stderr.txt"), cfg.keep_bytes),
            network_isolated: netns.is_some(),
            detail,
        }
    }

    /// Everything readable from `fd` now (every writer is gone).
    fn read_all(fd: i32) -> String {
        let mut out = Vec::new();
        let mut buf = [0u8; 4096];
        if fd < 0 {
            return String::new();
        }
        // SAFETY: `fd` is this function's caller's open pipe end; no writer is left,
        // but do not block if one were.
        unsafe { libc::fcntl(fd, libc::F_SETFL, libc::O_NONBLOCK) };
        loop {
            // SAFETY: `buf` has room for the bytes asked for.
            let n = unsafe { libc::read(fd, buf.as_mut_ptr().cast(), buf.len()) };
            if n <= 0 || out.len() > 1 << 16 {
                break;
            }
            out.extend_from_slice(&buf[..n as usize]);
        }
        String::from_utf8_lossy(&out).into_owned()
    }

    /// Whether the child has exited, without reaping it.
    fn exited(pid: libc::pid_t) -> bool {
        // SAFETY: `info` is a plain C struct the call fills in.
        unsafe {
            let mut info: libc::siginfo_t = std::mem::zeroed();
            let r = libc::waitid(
                libc::P_PID,
                pid as libc::id_t,
                &mut info,
                libc::WEXITED | libc::WNOHANG | libc::WNOWAIT,
            );
            r != 0 || info.si_pid() != 0
        }
    }
}

#[cfg(not(target_os = "linux"))]
mod imp {
    use super::*;

    pub fn run(
        _python: &Path,
        _dir: &Path,
        _cfg: &SandboxConfig,
        _args: &[&str],
        _token: Option<&str>,
    ) -> RunResult {
        RunResult::not_run("the code sandbox is implemented for Linux only")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passes_and_fails() {
        let cfg = SandboxConfig::default();
        if python(&cfg).is_none() {
            println!("skipped: no python3");
            return;
        }
        let ok = run_python("print('hi')\n", &cfg);
        assert_eq!(ok.outcome, Outcome::Passed, "{ok:?}");
        assert_eq!(ok.stdout, "hi\n");
        let bad = run_python("assert 1 == 2, 'nope'\n", &cfg);
        assert_eq!(bad.outcome, Outcome::Failed);
        assert!(bad.stderr.contains("nope"), "{bad:?}");
    }

    #[test]
    fn tail_cuts() {
        let dir = TempDir::new().unwrap();
        let p = dir.path().join("f");
        std::fs::write(&p, "abcdefghij").unwrap();
        assert_eq!(tail(&p, 4), "[... 6 bytes cut]\nghij");
        assert_eq!(tail(&p, 40), "abcdefghij");
    }
}
