//! Runs untrusted Python (model-written code plus tests) in a subprocess with
//! limits, kept from the machine's data by Linux namespaces where they work: under
//! bubblewrap or unshare (below) the program cannot create, change or remove a file
//! outside its own directory, nor see the engine's HOME or working directory, and
//! its processes die with it. Where neither works, only the older guards remain,
//! which are NOT a security boundary (say so: `engine run`/`eval` print the
//! isolation once). Even the namespaced sandbox shares the host kernel and reads
//! most of the file system (see "What it cannot stop"): run code of models you do
//! not trust in a VM.
//!
//! Isolation (`Isolation`; the strongest that works, probed once per process,
//! `isolation()`; forced by `SandboxConfig::isolation` or
//! `$ONELAYER_SANDBOX=bwrap|unshare|none|guards`, and a forced mechanism that does
//! not work here makes runs `NotRun` and `engine run`/`eval` refuse to start;
//! `RunResult::isolation` records what each run had):
//! - `bwrap` (bubblewrap): `--unshare-all` (new user, mount, PID, network, IPC, UTS
//!   and cgroup namespaces), `--cap-drop ALL` (run as root, bwrap would keep every
//!   capability inside its user namespace, enough to unmount what hides HOME),
//!   `--die-with-parent`, `--new-session`; `/` bound read-only (submounts too), a
//!   /proc of the new PID namespace, a minimal /dev (null, zero, full, random,
//!   urandom, tty, a private pts) remounted read-only; the hidden directories
//!   (below) covered by empty read-only tmpfs, the interpreter's directories bound
//!   again read-only on top where they lie under one, the run's directory bound
//!   read-write last (mounts apply in order).
//! - `unshare` (util-linux): `unshare -r -m -p -i -u -n --fork --mount-proc
//!   --kill-child` runs a `sh` script as the namespaces' root that remounts every
//!   mount of /proc/self/mounts read-only keeping the flags the kernel locked on it
//!   (nosuid, nodev, noexec), makes its fresh /proc read-only, covers /dev with a
//!   read-only tmpfs holding null, zero, full, random and urandom bound from the
//!   host, covers the hidden directories, binds back the interpreter's directories
//!   (read-only) and the run's directory (read-write, nosuid, nodev, noexec) from
//!   descriptors opened before covering them, and runs the program as its child
//!   with no capability (`setpriv --no-new-privs`, bounding, inheritable and
//!   ambient sets cleared) and its environment unchanged. Any failing step ends the
//!   script (status 125, the reason on stderr) before the program runs.
//! - `network` (`ONELAYER_SANDBOX=none`, and where neither works): `unshare -r -n`
//!   (or `unshare -n` as root) when it works: no network, nothing else.
//! - `guards`: the prelude only (also what `network` degrades to without a
//!   network namespace, or with `isolate_network: false`).
//!
//! The probe of bwrap and unshare: a shell under the mechanism must fail to write
//! `/` and the engine's temporary root, see neither a file the engine put there nor
//! anything in its HOME or working directory, share none of the engine's
//! namespaces, have no capability, and write its own directory (checked from
//! outside too); else the mechanism is unavailable, with the reason
//! (`available`).
//!
//! Hidden (empty, read-only) under both: the engine's HOME and working directory
//! (the run directory), its temporary root (the other runs' directories), /tmp,
//! /var/tmp and /run (a read-only mount does not stop connecting to a Unix socket,
//! and Docker's, D-Bus's and databases' live there). Never hidden: `/`, /usr, /bin,
//! /sbin, /lib, /lib64, /etc, /proc, /dev, /sys or an ancestor of them; the
//! interpreter's `sys.prefix`, `sys.base_prefix`, exec prefixes and executable's
//! directory stay visible read-only (pyenv under /root/.pyenv, a venv in the
//! checkout). The run's directory is the program's working directory, HOME and
//! TMPDIR, the one place it can write.
//!
//! How each limit is enforced (Linux; set in the child before exec, so inherited
//! by bwrap, unshare and everything they start):
//! - wall clock (`time_limit`, default 10 s): the parent polls the child and on
//!   expiry kills its whole process group (the child calls `setsid` before exec)
//!   with SIGKILL. Under bwrap and unshare that group holds the PID namespace's
//!   init, whose death kills every process in the namespace, also one started in a
//!   new session (`posix_spawn(..., setsid=True)`), which escapes a group kill; a
//!   busy loop with a 1 s limit ends in about 1 s (tests/sandbox_fs.rs). When the
//!   program ends, what it started dies with the namespace (else with the group).
//!   The child also gets SIGKILL if the engine's thread that started it ends
//!   (PR_SET_PDEATHSIG; bwrap and unshare pass it on into the namespace).
//!   RLIMIT_CPU (time limit + 1 s) is a backstop.
//! - memory (`memory_bytes`, default 1 GiB): RLIMIT_AS, so a large allocation
//!   raises MemoryError.
//! - output (`output_bytes`, default 1 MiB): stdout and stderr go to files in
//!   the temporary directory and RLIMIT_FSIZE caps every file the child writes
//!   (Python ignores SIGXFSZ, so a write past the cap raises OSError); only the
//!   last `keep_bytes` of each are read back. No core dumps (RLIMIT_CORE 0),
//!   at most 128 open files (RLIMIT_NOFILE).
//! - network: a new network namespace (no interface but loopback) under bwrap,
//!   unshare and `network`. Always, a Python prelude replaces `socket.socket`,
//!   `create_connection`, `getaddrinfo` and friends with functions that raise,
//!   and no proxy variables are passed.
//! - the prelude (in every mode) disables, as human-eval's `reliability_guard` does
//!   (openai/human-eval, `human_eval/execution.py`), `os.system`, `os.kill`,
//!   `os.fork`, `subprocess.Popen`, `shutil.rmtree`, file removal/renaming/
//!   permission changes and `setsid`. It is a speed bump, not a wall:
//!   `os.posix_spawn`, `os.open`, `open(..., 'w')` and a fresh interpreter started
//!   by them are not blocked by it, which is what the namespaces are for.
//! - environment: cleared except PATH (`/usr/local/bin:/usr/bin:/bin`), HOME,
//!   TMPDIR, LANG and OMP_NUM_THREADS=1; Python runs with `-I -B` (isolated
//!   mode: no user site-packages, PYTHON* variables ignored, no bytecode).
//! - exit statuses: bwrap's init and the unshare script's shell report a program
//!   killed by signal N as status 128+N; under them a status of 129 to 192 is read
//!   as that signal (`Crashed`, or `Timeout` for SIGXCPU), so a program that exits
//!   with such a status itself reads as killed (a 0 reward either way).
//!
//! Code verdicts (`run_judged`, judge_harness.py): the tests decide, not the exit
//! status. The candidate runs in its own forked process and answers the tests'
//! calls with plain data over a pipe; the judge writes "passed" with the run's token
//! to a pipe only the engine reads (fd 3, which bwrap and unshare pass through), and
//! only after `check` returns. So `sys.exit`, `os._exit`, `SystemExit`, atexit
//! hooks, killing processes, objects whose `__eq__` always holds (or int
//! subclasses), redefining `check` or the builtins, and writing a fake report all
//! score 0, each with its outcome.
//!
//! What it cannot stop:
//! - with `network` or `guards` (no bubblewrap, no working unshare): writes,
//!   truncation and removal of any file the engine's user may change, through
//!   `os.open`, `open(..., 'w')` or a process started with `os.posix_spawn`; Unix
//!   sockets; processes started in a new session outliving the run.
//! - under bwrap and unshare: reading what is not hidden (/etc, /srv, datasets,
//!   other users' homes; as root also /etc/shadow, since uid 0 inside is the
//!   engine's uid) and printing it to its stdout, which the engine keeps in logs;
//!   connecting to a Unix socket outside the hidden directories; filling the disk
//!   under the temporary root through its own directory (RLIMIT_FSIZE caps each
//!   file, not their number); exhausting processes or memory within the time limit
//!   (RLIMIT_AS is per process and there is no cgroup: posix_spawn can start many);
//!   a kernel bug reachable from a user namespace.
//! - in every mode: a candidate that reads the judge's memory (ptrace or
//!   /proc/PID/mem of its parent, same user, where the kernel's ptrace policy
//!   allows it) and code that special-cases the tests' inputs.
//!
//! The interpreter: `SandboxConfig::python`, else `$ONELAYER_PYTHON`, else
//! `python3` on PATH, resolved once to its real executable (`sys.executable`,
//! so pyenv shims and the like need no environment) and its directories.

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
    /// Run in a new network namespace (no interface but loopback) when one can be
    /// had; false shares the machine's network (the prelude's guards still apply).
    pub isolate_network: bool,
    /// The isolation to use; None: `$ONELAYER_SANDBOX` (bwrap, unshare, none or
    /// guards), else the strongest that works here (`isolation()`). A mechanism
    /// asked for that does not work here is not used instead of another: the runs
    /// come back `NotRun`.
    pub isolation: Option<Isolation>,
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
            isolation: None,
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

/// How sandboxed programs are kept from the machine, strongest first.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Isolation {
    /// bubblewrap (`bwrap`): new mount, PID, user, network, IPC, UTS (and cgroup)
    /// namespaces, no capabilities, the file system read-only but for the run's
    /// directory, the engine's HOME and working directory hidden.
    Bwrap,
    /// The same with util-linux `unshare` and read-only remounts done by a shell
    /// script inside the new namespaces, capabilities dropped by `setpriv`.
    Unshare,
    /// No namespace for the file system or processes: a new network namespace
    /// (`unshare -r -n`) and the prelude's guards.
    Network,
    /// The prelude's guards only.
    Guards,
}

impl Isolation {
    pub const ALL: [Isolation; 4] = [
        Isolation::Bwrap,
        Isolation::Unshare,
        Isolation::Network,
        Isolation::Guards,
    ];

    /// The short name (metrics, `$ONELAYER_SANDBOX`).
    pub fn name(self) -> &'static str {
        match self {
            Isolation::Bwrap => "bwrap",
            Isolation::Unshare => "unshare",
            Isolation::Network => "network",
            Isolation::Guards => "guards",
        }
    }

    /// One line for logs.
    pub fn describe(self) -> &'static str {
        match self {
            Isolation::Bwrap => {
                "bubblewrap (mount, pid, user, net, ipc, uts namespaces; read-only file system)"
            }
            Isolation::Unshare => {
                "unshare (mount, pid, user, net, ipc, uts namespaces; read-only file system)"
            }
            Isolation::Network => {
                "network namespace only (install bubblewrap): file system writable, guards only"
            }
            Isolation::Guards => {
                "no namespaces available (install bubblewrap): file system writable, guards only"
            }
        }
    }

    /// A `$ONELAYER_SANDBOX` value: bwrap (or bubblewrap), unshare, none (no
    /// namespace for the file system: `Network` where it works, else `Guards`), network
    /// or guards.
    pub fn parse(s: &str) -> Option<Isolation> {
        match s.trim().to_ascii_lowercase().as_str() {
            "bwrap" | "bubblewrap" => Some(Isolation::Bwrap),
            "unshare" => Some(Isolation::Unshare),
            "none" | "network" => Some(Isolation::Network),
            "guards" => Some(Isolation::Guards),
            _ => None,
        }
    }

    /// Whether the file system outside the run's directory is read-only and the
    /// processes in their own PID namespace.
    pub fn contains_files(self) -> bool {
        matches!(self, Isolation::Bwrap | Isolation::Unshare)
    }
}

impl std::fmt::Display for Isolation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
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
    /// How the run was isolated (`Isolation::Guards` for runs that did not start).
    pub isolation: Isolation,
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
            isolation: Isolation::Guards,
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
    interpreter(cfg).map(|i| i.exe)
}

/// A resolved interpreter: its executable and the directories it needs (its
/// prefixes), which stay visible, read-only, where the sandbox hides the engine's
/// HOME or working directory.
#[derive(Clone, Debug)]
struct Interp {
    exe: PathBuf,
    dirs: Vec<PathBuf>,
}

fn interpreter(cfg: &SandboxConfig) -> Option<Interp> {
    let wanted: PathBuf = cfg
        .python
        .clone()
        .or_else(|| std::env::var_os("ONELAYER_PYTHON").map(PathBuf::from))
        .unwrap_or_else(|| PathBuf::from("python3"));
    static CACHE: OnceLock<Mutex<HashMap<PathBuf, Option<Interp>>>> = OnceLock::new();
    let cache = CACHE.get_or_init(Default::default);
    if let Some(hit) = cache.lock().unwrap().get(&wanted) {
        return hit.clone();
    }
    const QUERY: &str = "import os, sys\nfor p in (sys.executable, sys.prefix, sys.base_prefix, sys.exec_prefix, sys.base_exec_prefix, os.path.dirname(os.path.realpath(sys.executable))):\n    print(p)\n";
    let resolved = Command::new(&wanted)
        .args(["-I", "-c", QUERY])
        .stdin(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .output()
        .ok()
        .filter(|o| o.status.success())
        .and_then(|o| {
            let text = String::from_utf8_lossy(&o.stdout).into_owned();
            let mut lines = text.lines().map(PathBuf::from);
            let exe = lines.next().filter(|p| p.is_absolute() && p.exists())?;
            let dirs = lines.filter(|p| p.is_absolute() && p.is_dir()).collect();
            Some(Interp { exe, dirs })
        });
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

/// The isolation runs with `cfg` get here, or why they cannot be run (a mechanism
/// asked for, by `cfg.isolation` or `$ONELAYER_SANDBOX`, that does not work here).
/// Probed once per process.
pub fn isolation_for(cfg: &SandboxConfig) -> Result<Isolation, String> {
    let wanted = match cfg.isolation {
        Some(i) => Some(i),
        None => forced()?,
    };
    let iso = match wanted {
        Some(i @ (Isolation::Bwrap | Isolation::Unshare)) => {
            available(i).map_err(|e| format!("the {i} sandbox was asked for but {e}"))?;
            i
        }
        Some(Isolation::Guards) => Isolation::Guards,
        Some(Isolation::Network) => network_or_guards(),
        None => best_namespaces().unwrap_or_else(network_or_guards),
    };
    Ok(if iso == Isolation::Network && !cfg.isolate_network {
        Isolation::Guards
    } else {
        iso
    })
}

/// The isolation runs with the default settings get here, or why they cannot be
/// run. A run or an evaluation on the code task prints `sandbox: {describe()}`
/// once and records `name()` in its metrics (`sandbox_isolation`).
pub fn isolation() -> Result<Isolation, String> {
    isolation_for(&SandboxConfig::default())
}

/// `$ONELAYER_SANDBOX`, read once.
fn forced() -> Result<Option<Isolation>, String> {
    static FORCED: OnceLock<Result<Option<Isolation>, String>> = OnceLock::new();
    FORCED
        .get_or_init(|| match std::env::var("ONELAYER_SANDBOX") {
            Ok(v) if !v.trim().is_empty() => Isolation::parse(&v).map(Some).ok_or_else(|| {
                format!("ONELAYER_SANDBOX={v:?}: expected bwrap, unshare, none or guards")
            }),
            _ => Ok(None),
        })
        .clone()
}

/// `Network` where a network namespace can be had, else `Guards`.
fn network_or_guards() -> Isolation {
    if network_namespace().is_some() {
        Isolation::Network
    } else {
        Isolation::Guards
    }
}

/// bubblewrap, else unshare, when one of them works here.
fn best_namespaces() -> Option<Isolation> {
    [Isolation::Bwrap, Isolation::Unshare]
        .into_iter()
        .find(|&i| available(i).is_ok())
}

/// Whether a namespace mechanism (`Bwrap`, `Unshare`) works here, or why not:
/// probed once per process by a run that must fail to write outside its directory,
/// see no capability and none of the engine's namespaces, and succeed writing
/// inside. `Network` and `Guards` are always available (the first degrades to the
/// second where no network namespace can be had).
pub fn available(iso: Isolation) -> Result<(), String> {
    static PROBES: [OnceLock<Result<(), String>>; 2] = [OnceLock::new(), OnceLock::new()];
    let slot = match iso {
        Isolation::Bwrap => &PROBES[0],
        Isolation::Unshare => &PROBES[1],
        Isolation::Network | Isolation::Guards => return Ok(()),
    };
    slot.get_or_init(|| imp::probe(iso)).clone()
}

/// Runs a Python program under the limits of `cfg`.
pub fn run_python(program: &str, cfg: &SandboxConfig) -> RunResult {
    let files = [
        ("main.py", program),
        ("_guards.py", GUARDS),
        ("_prelude.py", RUN_MAIN),
    ];
    match prepare(cfg, &files) {
        Ok(run) => imp::run(&run, cfg, &["_prelude.py"], None),
        Err(r) => r,
    }
}

/// What a run needs before it starts.
struct Prepared {
    interp: Interp,
    isolation: Isolation,
    dir: TempDir,
}

/// The interpreter, the isolation and a fresh directory holding `files`; a `NotRun`
/// result when one of them cannot be had.
fn prepare(cfg: &SandboxConfig, files: &[(&str, &str)]) -> Result<Prepared, RunResult> {
    let Some(interp) = interpreter(cfg) else {
        return Err(RunResult::not_run(
            "no Python interpreter: install python3 or set ONELAYER_PYTHON",
        ));
    };
    let isolation = isolation_for(cfg).map_err(RunResult::not_run)?;
    let dir = TempDir::new()
        .map_err(|e| RunResult::not_run(format!("cannot create a temporary directory: {e}")))?;
    files
        .iter()
        .try_for_each(|(name, text)| std::fs::write(dir.path().join(name), text))
        .map_err(|e| RunResult::not_run(format!("cannot write the program: {e}")))?;
    Ok(Prepared {
        interp,
        isolation,
        dir,
    })
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
    let run = match prepare(cfg, &files) {
        Ok(p) => p,
        Err(r) => return r,
    };
    let token = match new_token() {
        Ok(t) => t,
        Err(e) => return RunResult::not_run(format!("cannot draw a run token: {e}")),
    };
    imp::run(&run, cfg, &["_judge.py", j.entry_point], Some(&token))
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
                // The real path: the namespaced runs bind it by name.
                Ok(()) => return Ok(TempDir(std::fs::canonicalize(&path).unwrap_or(path))),
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
    use std::process::{Child, Stdio};
    use std::time::Instant;

    /// What a namespaced run sees of the file system besides `/` read-only.
    #[derive(Debug, PartialEq)]
    pub(super) struct Layout {
        /// The run's directory: read-write, its working directory.
        pub dir: PathBuf,
        /// Covered by an empty read-only tmpfs.
        pub hide: Vec<PathBuf>,
        /// Bound again, read-only, on top of the hidden ones (the interpreter's
        /// directories under them).
        pub keep: Vec<PathBuf>,
    }

    /// Never hidden, nor any of their ancestors (`/` included): the interpreter
    /// and the system it runs on.
    const SYSTEM: [&str; 9] = [
        "/usr", "/bin", "/sbin", "/lib", "/lib64", "/etc", "/proc", "/dev", "/sys",
    ];

    /// Hidden from the program: the engine's HOME, its working directory (the run
    /// directory), its temporary root (the other runs' directories), the shared
    /// temporary directories, and /run (a read-only mount does not stop connecting
    /// to a Unix socket: the Docker, D-Bus and database sockets live there).
    fn engine_dirs() -> Vec<PathBuf> {
        let mut v: Vec<PathBuf> = std::env::var_os("HOME")
            .map(PathBuf::from)
            .into_iter()
            .collect();
        v.extend(std::env::current_dir().ok());
        v.push(std::env::temp_dir());
        v.extend(["/tmp", "/var/tmp", "/run", "/var/run"].map(PathBuf::from));
        v
    }

    /// The layout for a run in `dir` hiding `hide` but keeping `keep` (each by
    /// its real path; missing ones dropped).
    pub(super) fn layout(dir: &Path, hide: &[PathBuf], keep: &[PathBuf]) -> Layout {
        let real = |p: &PathBuf| std::fs::canonicalize(p).ok().filter(|p| p.is_dir());
        let keep: Vec<PathBuf> = keep.iter().filter_map(real).collect();
        let mut hidden: Vec<PathBuf> = hide
            .iter()
            .filter_map(real)
            .filter(|h| !SYSTEM.iter().any(|s| Path::new(s).starts_with(h)))
            .filter(|h| !keep.iter().any(|k| h.starts_with(k)))
            .collect();
        outermost(&mut hidden);
        let mut kept: Vec<PathBuf> = keep
            .into_iter()
            .filter(|k| hidden.iter().any(|h| k.starts_with(h)))
            .collect();
        outermost(&mut kept);
        Layout {
            dir: dir.to_path_buf(),
            hide: hidden,
            keep: kept,
        }
    }

    /// Sorted, each once, none inside another.
    fn outermost(v: &mut Vec<PathBuf>) {
        v.sort();
        let mut out: Vec<PathBuf> = Vec::with_capacity(v.len());
        for p in v.drain(..) {
            if !out.iter().any(|o| p.starts_with(o)) {
                out.push(p);
            }
        }
        *v = out;
    }

    /// `bwrap ... -- env -u PWD` for `l`: mounts apply in order, later ones on top.
    fn bwrap(l: &Layout, net: bool) -> Command {
        let mut c = Command::new("bwrap");
        c.arg("--unshare-all");
        if !net {
            c.arg("--share-net");
        }
        // As root bwrap would keep every capability inside its user namespace
        // (enough to unmount the tmpfs over HOME): drop them all.
        c.args(["--cap-drop", "ALL", "--die-with-parent", "--new-session"]);
        c.args(["--ro-bind", "/", "/", "--dev", "/dev", "--proc", "/proc"]);
        for h in &l.hide {
            c.arg("--tmpfs").arg(h);
        }
        for k in &l.keep {
            c.arg("--ro-bind").arg(k).arg(k);
        }
        c.arg("--bind").arg(&l.dir).arg(&l.dir);
        for h in &l.hide {
            c.arg("--remount-ro").arg(h);
        }
        c.args(["--remount-ro", "/dev", "--chdir"]).arg(&l.dir);
        // bwrap sets PWD: the program gets the same environment as elsewhere.
        c.args(["--", "env", "-u", "PWD"]);
        c
    }

    /// The start of the script `unshare` runs in the new namespaces (as the
    /// namespace's root, with its capabilities): every mount read-only (with the
    /// flags the kernel locked on it, or the remount fails), a fresh read-only
    /// /proc, a minimal read-only /dev (the devices bound from descriptors opened
    /// before it is covered). Any failure ends the script before the program runs.
    const UNSHARE_SETUP: &str = r#"fail() { echo "onelayer sandbox: $*" >&2; exit 125; }
while read -r _src mp _type opts _rest; do
    case "$mp" in /proc|/proc/*) continue ;; esac
    case "$mp" in *\\*) mp=$(printf '%b' "$mp") ;; esac
    f=ro
    case ",$opts," in *,nosuid,*) f=$f,nosuid ;; esac
    case ",$opts," in *,nodev,*) f=$f,nodev ;; esac
    case ",$opts," in *,noexec,*) f=$f,noexec ;; esac
    mount -n -o "remount,bind,$f" "$mp" || fail "cannot make $mp read-only"
done < /proc/self/mounts
mount -n -o remount,bind,ro,nosuid,nodev,noexec /proc || fail "cannot make /proc read-only"
exec 4</dev/null 5</dev/zero 6</dev/full 7</dev/urandom 8</dev/random || fail "cannot open the devices"
mount -n -t tmpfs -o mode=755,nosuid,noexec onelayer /dev || fail "cannot cover /dev"
for n in null zero full urandom random; do true > "/dev/$n" || fail "cannot make /dev/$n"; done
mount -n -c --bind /proc/self/fd/4 /dev/null && mount -n -c --bind /proc/self/fd/5 /dev/zero && mount -n -c --bind /proc/self/fd/6 /dev/full && mount -n -c --bind /proc/self/fd/7 /dev/urandom && mount -n -c --bind /proc/self/fd/8 /dev/random || fail "cannot bind the devices"
ln -s /proc/self/fd /dev/fd && ln -s /proc/self/fd/0 /dev/stdin && ln -s /proc/self/fd/1 /dev/stdout && ln -s /proc/self/fd/2 /dev/stderr || fail "cannot link /dev/fd"
mount -n -o remount,bind,ro,nosuid,nodev,noexec /dev || fail "cannot make /dev read-only"
exec 4<&- 5<&- 6<&- 7<&- 8<&-
"#;

    /// `p` as one single-quoted shell word.
    pub(super) fn sh_quote(p: &Path) -> Result<String, String> {
        let s = p
            .to_str()
            .ok_or_else(|| format!("{}: not UTF-8", p.display()))?;
        Ok(format!("'{}'", s.replace('\'', r"'\''")))
    }

    /// The whole script for `l`: the setup, the hidden directories covered, the
    /// kept ones and the run's directory bound again from descriptors opened before
    /// (4.., below the report pipe's 3 nothing is touched), then the program (`$@`)
    /// without capabilities, as a child so that the shell stays the namespace's
    /// init and a signal death comes back as status 128+N.
    pub(super) fn unshare_script(l: &Layout) -> Result<String, String> {
        let mut bound: Vec<(&Path, bool)> = l.keep.iter().map(|k| (k.as_path(), false)).collect();
        bound.push((&l.dir, true));
        if bound.len() > 6 {
            return Err(format!(
                "too many directories to keep visible ({})",
                bound.len()
            ));
        }
        let mut s = String::from(UNSHARE_SETUP);
        for (fd, (p, _)) in (4..).zip(&bound) {
            s += &format!("exec {fd}<{} || fail \"cannot open {fd}\"\n", sh_quote(p)?);
        }
        for h in &l.hide {
            let q = sh_quote(h)?;
            s += &format!(
                "mount -n -t tmpfs -o mode=755,nosuid,nodev onelayer {q} || fail \"cannot hide \"{q}\n"
            );
        }
        for (fd, (p, rw)) in (4..).zip(&bound) {
            let q = sh_quote(p)?;
            let flags = if *rw {
                "rw,nosuid,nodev,noexec"
            } else {
                "ro,nosuid,nodev"
            };
            s += &format!(
                "mkdir -p {q} && mount -n -c --bind /proc/self/fd/{fd} {q} && mount -n -o remount,bind,{flags} {q} || fail \"cannot bind \"{q}\n"
            );
        }
        for h in &l.hide {
            let q = sh_quote(h)?;
            s += &format!(
                "mount -n -o remount,bind,ro,nosuid,nodev {q} || fail \"cannot make \"{q}\" read-only\"\n"
            );
        }
        for fd in (4..).take(bound.len()) {
            s += &format!("exec {fd}<&-\n");
        }
        s += &format!(
            "cd {} || fail \"cannot enter the run's directory\"\n",
            sh_quote(&l.dir)?
        );
        s += "env -u PWD -u OLDPWD -u SHLVL -u _ setpriv --no-new-privs --inh-caps=-all --ambient-caps=-all --bounding-set=-all -- \"$@\"\nexit $?\n";
        Ok(s)
    }

    /// `unshare ... sh -c SCRIPT sh` for `l`.
    fn unshare(l: &Layout, net: bool) -> Result<Command, String> {
        let script = unshare_script(l)?;
        let mut c = Command::new("unshare");
        c.args(["-r", "-m", "-p", "-i", "-u"]);
        if net {
            c.arg("-n");
        }
        c.args([
            "--fork",
            "--mount-proc",
            "--kill-child",
            "--",
            "/bin/sh",
            "-c",
        ])
        .arg(script)
        .arg("sh");
        Ok(c)
    }

    /// The command that runs `program` in `dir` under `iso`, keeping `keep`
    /// visible.
    fn command(
        iso: Isolation,
        dir: &Path,
        keep: &[PathBuf],
        net: bool,
        program: &Path,
    ) -> Result<Command, String> {
        let mut c = match iso {
            Isolation::Bwrap => bwrap(&layout(dir, &engine_dirs(), keep), net),
            Isolation::Unshare => unshare(&layout(dir, &engine_dirs(), keep), net)?,
            Isolation::Network => {
                let un = network_namespace().ok_or("no network namespace can be had here")?;
                let mut c = Command::new(un[0]);
                c.args(&un[1..]);
                c
            }
            Isolation::Guards => return Ok(Command::new(program)),
        };
        c.arg(program);
        Ok(c)
    }

    /// The environment every sandboxed program gets (and nothing else).
    fn environment(cmd: &mut Command, dir: &Path) {
        cmd.current_dir(dir)
            .env_clear()
            .env("PATH", "/usr/local/bin:/usr/bin:/bin")
            .env("HOME", dir)
            .env("TMPDIR", dir)
            .env("LANG", "C.UTF-8")
            .env("OMP_NUM_THREADS", "1");
    }

    /// In the child before exec: its own session and process group, killed when the
    /// engine's thread that started it ends, the report pipe at fd 3 (when
    /// `report_w >= 0`), and the resource limits (inherited by everything it starts).
    fn confine(cmd: &mut Command, report_w: i32, limits: [(libc::__rlimit_resource_t, u64); 5]) {
        // SAFETY: between fork and exec the hook only makes async-signal-safe
        // system calls (setsid, prctl, dup2, setrlimit) on data prepared before the fork.
        unsafe {
            cmd.pre_exec(move || {
                if libc::setsid() < 0 {
                    return Err(std::io::Error::last_os_error());
                }
                libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL as libc::c_ulong);
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
    }

    fn limits(cfg: &SandboxConfig) -> [(libc::__rlimit_resource_t, u64); 5] {
        let secs = cfg.time_limit.as_secs_f64().ceil() as u64 + 1;
        [
            (libc::RLIMIT_AS, cfg.memory_bytes),
            (libc::RLIMIT_FSIZE, cfg.output_bytes),
            (libc::RLIMIT_CORE, 0),
            (libc::RLIMIT_CPU, secs),
            (libc::RLIMIT_NOFILE, 128),
        ]
    }

    /// Whether `iso` (bwrap or unshare) works here: a shell in it must fail to write
    /// `/` and the engine's temporary root, see none of the engine's temporary root,
    /// HOME or working directory, share none of the engine's namespaces, have no
    /// capability, and write its own directory.
    pub(super) fn probe(iso: Isolation) -> Result<(), String> {
        let tool = match iso {
            Isolation::Bwrap => "bwrap",
            _ => "unshare",
        };
        let dir =
            TempDir::new().map_err(|e| format!("cannot create a temporary directory: {e}"))?;
        let tag = format!("onelayer-sandbox-probe-{}", std::process::id());
        let root_file = Path::new("/").join(&tag);
        let marker = dir.path().with_file_name(&tag);
        std::fs::write(&marker, "")
            .map_err(|e| format!("cannot write {}: {e}", marker.display()))?;
        let l = layout(dir.path(), &engine_dirs(), &[]);
        let q = sh_quote;
        let mut s = String::from("exec 2>/dev/null\n");
        for f in [&root_file, &marker] {
            s += &format!("if true > {0}; then echo wrote {0}; exit 1; fi\n", q(f)?);
        }
        s += &format!(
            "[ ! -e {0} ] || {{ echo sees {0}; exit 1; }}\n",
            q(&marker)?
        );
        for h in l.hide.iter().filter(|h| !dir.path().starts_with(h)) {
            s += &format!(
                "[ -z \"$(ls -A {0})\" ] || {{ echo sees {0}; exit 1; }}\n",
                q(h)?
            );
        }
        for ns in ["mnt", "pid", "user", "ipc", "uts", "net"] {
            if let Ok(mine) = std::fs::read_link(format!("/proc/self/ns/{ns}")) {
                s += &format!(
                    "[ \"$(readlink /proc/self/ns/{ns})\" != {} ] || {{ echo shares the {ns} namespace; exit 1; }}\n",
                    q(&mine)?
                );
            }
        }
        s += "grep -q '^CapEff:[[:space:]]*0*$' /proc/self/status || { echo has capabilities; exit 1; }\n";
        s += "true > ok || { echo cannot write its directory; exit 1; }\n";
        let mut cmd = command(iso, dir.path(), &[], true, Path::new("/bin/sh"))?;
        cmd.arg("-c").arg(&s);
        environment(&mut cmd, dir.path());
        cmd.stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        confine(&mut cmd, -1, limits(&SandboxConfig::default()));
        let spawned = cmd.spawn();
        let result = match spawned {
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                Err(format!("{tool} is not installed"))
            }
            Err(e) => Err(format!("{tool} cannot be started: {e}")),
            Ok(child) => {
                let (ok, text) = finish(child, Duration::from_secs(10));
                if ok && dir.path().join("ok").is_file() {
                    Ok(())
                } else {
                    let why = text
                        .lines()
                        .rev()
                        .find(|l| !l.trim().is_empty())
                        .unwrap_or("it failed");
                    Err(format!("{tool} does not work here: {}", why.trim()))
                }
            }
        };
        let _ = std::fs::remove_file(&marker);
        if std::fs::remove_file(&root_file).is_ok() {
            return Err(format!(
                "{tool} does not work here: it wrote {}",
                root_file.display()
            ));
        }
        result
    }

    /// Wait for a probe (at most `limit`, then kill its group): whether it exited
    /// with status 0, and its stdout and stderr.
    fn finish(mut child: Child, limit: Duration) -> (bool, String) {
        use std::io::Read;
        let start = Instant::now();
        let status = loop {
            match child.try_wait() {
                Ok(Some(s)) => break Some(s),
                Ok(None) if start.elapsed() < limit => std::thread::sleep(Duration::from_millis(2)),
                _ => break None,
            }
        };
        // SAFETY: plain system call on the child's own group.
        unsafe { libc::killpg(child.id() as libc::pid_t, libc::SIGKILL) };
        let status = status.or_else(|| child.wait().ok());
        let mut text = String::new();
        if let Some(mut o) = child.stdout.take() {
            let _ = o.read_to_string(&mut text);
        }
        if let Some(mut e) = child.stderr.take() {
            let _ = e.read_to_string(&mut text);
        }
        (status.is_some_and(|s| s.success()), text)
    }

    /// Run `python -I -B ARGS...` in the prepared directory under its isolation.
    /// With `token` (a judged run): the token on stdin, a pipe at fd 3 for the
    /// harness's report, and the outcome from the report when it carries the token.
    pub fn run(p: &Prepared, cfg: &SandboxConfig, args: &[&str], token: Option<&str>) -> RunResult {
        let dir = p.dir.path();
        let iso = p.isolation;
        let mut cmd = match command(iso, dir, &p.interp.dirs, cfg.isolate_network, &p.interp.exe) {
            Ok(c) => c,
            Err(e) => return RunResult::not_run(e),
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
        cmd.args(["-I", "-B"]).args(args);
        environment(&mut cmd, dir);
        cmd.stdin(if token.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::from(out))
        .stderr(Stdio::from(err));
        confine(&mut cmd, report[1], limits(cfg));
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
                let what = cmd.get_program().to_string_lossy().into_owned();
                return RunResult::not_run(format!("cannot start {what}: {e}"));
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
        // cannot have been reused: kill the group, stragglers included. Under
        // bwrap and unshare the group holds the namespace's init, whose death
        // kills everything in the namespace (processes in their own session too).
        // SAFETY: plain system call.
        unsafe { libc::killpg(pid, libc::SIGKILL) };
        let status = child.wait();
        let elapsed = start.elapsed();
        let (mut code, mut signal) = match &status {
            Ok(s) => (s.code(), s.signal()),
            Err(_) => (None, None),
        };
        // bwrap's init and the unshare script's shell report a program killed by
        // signal N as exit status 128+N.
        if iso.contains_files() {
            if let Some(c) = code.filter(|c| (129..=128 + 64).contains(c)) {
                (code, signal) = (None, Some(c - 128));
            }
        }
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
            network_isolated: match iso {
                Isolation::Bwrap | Isolation::Unshare => cfg.isolate_network,
                Isolation::Network => true,
                Isolation::Guards => false,
            },
            isolation: iso,
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

    pub(super) fn probe(_iso: Isolation) -> Result<(), String> {
        Err("namespaces are Linux only".into())
    }

    pub fn run(
        _p: &Prepared,
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
    fn isolation_names() {
        for i in Isolation::ALL {
            assert_eq!(Isolation::parse(i.name()), Some(i));
        }
        assert_eq!(Isolation::parse(" None "), Some(Isolation::Network));
        assert_eq!(Isolation::parse("bubblewrap"), Some(Isolation::Bwrap));
        assert_eq!(Isolation::parse("docker"), None);
        let forced = SandboxConfig {
            isolation: Some(Isolation::Guards),
            ..Default::default()
        };
        assert_eq!(isolation_for(&forced), Ok(Isolation::Guards));
    }

    #[cfg(target_os = "linux")]
    #[test]
    fn layout_hides_outermost_and_keeps_the_interpreter() {
        let base = TempDir::new().unwrap();
        let b = base.path();
        for d in ["home/.py/v/lib", "home/other", "run"] {
            std::fs::create_dir_all(b.join(d)).unwrap();
        }
        let hide = [
            b.join("home/other"),
            b.join("home"),
            PathBuf::from("/"),
            PathBuf::from("/usr"),
            b.join("missing"),
            b.join("home/.py/v/lib"),
        ];
        let keep = [
            b.join("home/.py/v/lib"),
            b.join("home/.py/v"),
            PathBuf::from("/usr"),
        ];
        let l = imp::layout(&b.join("run"), &hide, &keep);
        assert_eq!(l.hide, vec![b.join("home")]);
        assert_eq!(l.keep, vec![b.join("home/.py/v")]);
        assert_eq!(imp::sh_quote(Path::new("/a'b c")).unwrap(), r"'/a'\''b c'");
        let script = imp::unshare_script(&l).unwrap();
        let at = |needle: &str| script.find(needle).unwrap_or_else(|| panic!("{needle}"));
        let home = imp::sh_quote(&b.join("home")).unwrap();
        let run = imp::sh_quote(&b.join("run")).unwrap();
        // opened before hidden, bound after, made read-only last, the program last
        assert!(at(&format!("exec 5<{run}")) < at(&format!("onelayer {home}")));
        let kept = imp::sh_quote(&b.join("home/.py/v")).unwrap();
        assert!(at(&format!("onelayer {home}")) < at(&format!("fd/4 {kept}")));
        assert!(
            at(&format!("remount,bind,rw,nosuid,nodev,noexec {run}"))
                < at(&format!("remount,bind,ro,nosuid,nodev {home}"))
        );
        assert!(script.trim_end().ends_with("-- \"$@\"\nexit $?"));
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
