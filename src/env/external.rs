//! An environment in a child process speaking JSON lines over stdio, so users can
//! plug in ALFWorld-style environments in any language. The engine writes one
//! request per line to the child's stdin and reads one reply line from its stdout
//! for each `reset` and `step` (stderr passes through to the engine's):
//!
//! ```text
//! -> {"op": "reset", "episode": 12, "task": 3}
//! <- {"observation": "You are in a kitchen...", "anchor": "kitchen"}
//! -> {"op": "step", "episode": 12, "action": "open fridge"}
//! <- {"observation": "The fridge is open.", "reward": 0.0, "done": false}
//! -> {"op": "end", "episode": 12}          (no reply: the episode may be dropped)
//! -> {"op": "close"}                       (no reply: exit)
//! <- {"error": "message"}                  (any request may fail this way)
//! ```
//!
//! `anchor` is optional (default: the observation text); `reward` defaults to 0 and
//! `done` to false. Episodes with the same `task` must start from the same state,
//! and an episode's replies must depend only on its task and its actions so far
//! (not on other episodes, the order of requests, time or the process): the
//! engine relies on it to restore episodes in a restarted process.
//! examples/envs/guess_env.py implements the built-in `guess` environment this way.
//!
//! Failures. Every reply must come within the time limit (`--env-timeout`). A
//! failed request (no reply in time, the child exited, a reply that is not a JSON
//! object, lacks "observation", has a non-finite reward or is `{"error": ...}`)
//! kills the child's whole process group and starts the command again; the
//! failing episode is dropped (`Ok(None)`), and every other live episode is
//! restored in the new process by replaying its `reset` and its actions so far
//! (each replayed observation must equal the one first given). A second failure
//! before the next `begin_step` (one RL step's episodes, or one evaluation pass),
//! a replay that fails or differs, or a command that cannot be started again, is
//! an error naming the command, the request, the episode and what went wrong.
//!
//! The child runs in its own session (`setsid`), so `killpg` reaches the `sh -c`
//! wrapper and everything it started, and a Ctrl-C on the terminal reaches the
//! engine only (it finishes the step with the environment still running).

use super::{Environment, Observation, Transition};
use crate::{Error, Result};
use serde::Deserialize;
use serde_json::json;
use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Write};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc::{channel, Receiver, RecvTimeoutError, Sender};
use std::time::{Duration, Instant};

/// A request's outcome: what went wrong, in words.
type Said<T> = std::result::Result<T, String>;

pub struct ExternalEnv {
    command: String,
    /// The time limit of each reply.
    timeout: Duration,
    /// The running child (`None` after a fatal failure).
    proc: Option<Proc>,
    /// What each live episode (reset, not ended, not dropped) was told so far, to
    /// restore it in a restarted child.
    live: BTreeMap<u64, Live>,
    /// Failed requests since `begin_step`.
    failures: usize,
    /// Times the child was started (1 + restarts).
    starts: usize,
}

/// A live episode's history.
#[derive(Debug, Clone)]
struct Live {
    task: u64,
    /// Each action so far with the observation text it got.
    steps: Vec<(String, String)>,
    /// The text of the first observation.
    first: String,
}

/// A running child: requests go to stdin through a writer thread (a child that
/// stops reading cannot block the engine), reply lines come from a reader thread
/// (a hang shows as a `recv_timeout`).
struct Proc {
    child: Child,
    requests: Option<Sender<String>>,
    replies: Receiver<std::io::Result<String>>,
}

#[derive(Deserialize)]
struct Reply {
    #[serde(default)]
    observation: Option<String>,
    #[serde(default)]
    anchor: Option<String>,
    #[serde(default)]
    reward: Option<f64>,
    #[serde(default)]
    done: Option<bool>,
    #[serde(default)]
    error: Option<String>,
}

impl Proc {
    fn spawn(command: &str) -> std::io::Result<Proc> {
        let mut cmd = Command::new("sh");
        cmd.arg("-c")
            .arg(command)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit());
        #[cfg(unix)]
        {
            use std::os::unix::process::CommandExt;
            // SAFETY: between fork and exec the hook makes one async-signal-safe
            // system call.
            unsafe {
                cmd.pre_exec(|| {
                    if libc::setsid() < 0 {
                        return Err(std::io::Error::last_os_error());
                    }
                    Ok(())
                });
            }
        }
        let mut child = cmd.spawn()?;
        let stdout = child.stdout.take().expect("stdout is piped");
        let mut stdin = child.stdin.take().expect("stdin is piped");
        let (tx, replies) = channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let (requests, rx) = channel::<String>();
        std::thread::spawn(move || {
            for line in rx {
                if stdin
                    .write_all(line.as_bytes())
                    .and_then(|_| stdin.flush())
                    .is_err()
                {
                    break;
                }
            }
        });
        Ok(Proc {
            child,
            requests: Some(requests),
            replies,
        })
    }

    fn send(&self, request: &serde_json::Value) {
        // A child that stopped reading shows on the reply side.
        if let Some(r) = &self.requests {
            let _ = r.send(format!("{request}\n"));
        }
    }

    /// Whether the child (the `sh` leader) has exited, without reaping it (its
    /// pid, the group's id, stays reserved until `kill` waits for it).
    fn exited(&mut self) -> bool {
        #[cfg(unix)]
        {
            // SAFETY: `info` is a plain C struct the call fills in.
            unsafe {
                let mut info: libc::siginfo_t = std::mem::zeroed();
                let r = libc::waitid(
                    libc::P_PID,
                    self.child.id() as libc::id_t,
                    &mut info,
                    libc::WEXITED | libc::WNOHANG | libc::WNOWAIT,
                );
                r != 0 || info.si_pid() != 0
            }
        }
        #[cfg(not(unix))]
        {
            matches!(self.child.try_wait(), Ok(Some(_)))
        }
    }

    /// Kill the child's process group and reap the child: its exit status, in
    /// words, when it had exited by itself.
    fn kill(mut self) -> Option<String> {
        let exited = self.exited();
        self.requests = None;
        #[cfg(unix)]
        {
            // The leader is not reaped yet, so its pid (the group id) cannot have
            // been reused: this reaches the group, stragglers included.
            // SAFETY: plain system call.
            unsafe { libc::killpg(self.child.id() as libc::pid_t, libc::SIGKILL) };
        }
        #[cfg(not(unix))]
        {
            let _ = self.child.kill();
        }
        let status = self.child.wait();
        match status {
            Ok(s) if exited => Some(s.to_string()),
            _ => None,
        }
    }
}

impl ExternalEnv {
    /// Start `command` (run by `sh -c`); each reply must come within `timeout`.
    pub fn spawn(command: &str, timeout: Duration) -> Result<Self> {
        let proc = Proc::spawn(command)
            .map_err(|e| Error::invalid(format!("--env '{command}': cannot start it: {e}")))?;
        Ok(ExternalEnv {
            command: command.to_string(),
            timeout,
            proc: Some(proc),
            live: BTreeMap::new(),
            failures: 0,
            starts: 1,
        })
    }

    /// How many times the command was started (1 + restarts).
    pub fn starts(&self) -> usize {
        self.starts
    }

    fn fail(&self, what: String) -> Error {
        Error::invalid(format!("--env '{}': {what}", self.command))
    }

    /// Send a request and read its reply; what went wrong, in words.
    fn call(&mut self, request: &serde_json::Value) -> Said<Reply> {
        let timeout = self.timeout;
        let Some(p) = self.proc.as_mut() else {
            return Err("the environment is not running".into());
        };
        p.send(request);
        let line = match p.replies.recv_timeout(timeout) {
            Ok(Ok(line)) => line,
            Ok(Err(e)) => return Err(format!("reading its reply: {e}")),
            Err(RecvTimeoutError::Timeout) => {
                return Err(format!("no reply in {} s", timeout.as_secs_f64()))
            }
            Err(RecvTimeoutError::Disconnected) => {
                // Stdout closed: give the child a moment to exit, for its status.
                let t0 = Instant::now();
                while !p.exited() && t0.elapsed() < Duration::from_millis(200) {
                    std::thread::sleep(Duration::from_millis(5));
                }
                let status = self.proc.take().and_then(Proc::kill);
                return Err(match status {
                    Some(s) => format!("the environment exited before replying ({s})"),
                    None => "the environment closed its stdout before replying".into(),
                });
            }
        };
        let reply: Reply = serde_json::from_str(&line).map_err(|e| {
            let shown: String = line.chars().take(120).collect();
            format!("the reply is not a JSON object ({e}): {shown}")
        })?;
        if let Some(e) = reply.error {
            let e = e.lines().next().unwrap_or("").to_string();
            return Err(format!("it answered with an error: {e}"));
        }
        Ok(reply)
    }

    /// A reset's reply as an observation.
    fn reset_reply(reply: Said<Reply>) -> Said<Observation> {
        let mut r = reply?;
        observation(&mut r)
    }

    /// A step's reply as a transition.
    fn step_reply(reply: Said<Reply>) -> Said<Transition> {
        let mut r = reply?;
        let reward = r.reward.unwrap_or(0.0);
        if !reward.is_finite() {
            return Err(format!("the reply gave reward {reward}"));
        }
        Ok(Transition {
            observation: observation(&mut r)?,
            reward,
            done: r.done.unwrap_or(false),
        })
    }

    /// Request `op` of `episode` failed with `what`: drop the episode and restart
    /// the child with the other live episodes restored, or, on a second failure,
    /// the error that stops the run.
    fn failed(&mut self, op: &str, episode: u64, what: &str) -> Result<()> {
        self.failures += 1;
        self.live.remove(&episode);
        if let Some(p) = self.proc.take() {
            p.kill();
        }
        if self.failures > 1 {
            return Err(self.fail(format!(
                "{op} of episode {episode}: {what} (a second failure in one RL step or evaluation; it was restarted after the first)"
            )));
        }
        eprintln!(
            "warning: --env '{}': {op} of episode {episode}: {what}; restarting it without that episode, replaying the {} other live one(s)",
            self.command,
            self.live.len()
        );
        self.restart()
    }

    /// Start the command again and replay every live episode (replies checked
    /// against the first ones, then discarded).
    fn restart(&mut self) -> Result<()> {
        let proc = Proc::spawn(&self.command)
            .map_err(|e| self.fail(format!("cannot start it again: {e}")))?;
        self.proc = Some(proc);
        self.starts += 1;
        let live: Vec<(u64, Live)> = self.live.iter().map(|(&e, l)| (e, l.clone())).collect();
        for (episode, l) in live {
            let r = self.call(&json!({"op": "reset", "episode": episode, "task": l.task}));
            let got = Self::reset_reply(r).map(|o| o.text);
            self.replayed("reset", episode, 0, got, &l.first)?;
            for (k, (action, seen)) in l.steps.iter().enumerate() {
                let r = self.call(&json!({"op": "step", "episode": episode, "action": action}));
                let got = Self::step_reply(r).map(|t| t.observation.text);
                self.replayed("step", episode, k + 1, got, seen)?;
            }
        }
        Ok(())
    }

    /// Check one replayed reply: it came, and says what the first one said.
    fn replayed(
        &mut self,
        op: &str,
        episode: u64,
        turn: usize,
        got: Said<String>,
        want: &str,
    ) -> Result<()> {
        let what = match got {
            Ok(text) if text == want => return Ok(()),
            Ok(text) => {
                let short = |s: &str| s.chars().take(60).collect::<String>();
                format!(
                    "the observation differs from the first run's ({:?} vs {:?}): the environment must be deterministic per task",
                    short(&text),
                    short(want)
                )
            }
            Err(what) => what,
        };
        self.failures += 1;
        if let Some(p) = self.proc.take() {
            p.kill();
        }
        let at = if turn == 0 {
            String::new()
        } else {
            format!(" (action {turn})")
        };
        Err(self.fail(format!(
            "replaying {op}{at} of episode {episode} after a restart: {what}"
        )))
    }
}

fn observation(reply: &mut Reply) -> Said<Observation> {
    match reply.observation.take() {
        Some(text) => Ok(Observation {
            text,
            anchor: reply.anchor.take(),
        }),
        None => Err("the reply has no \"observation\"".into()),
    }
}

impl Environment for ExternalEnv {
    fn reset(&mut self, episode: u64, task: u64) -> Result<Option<Observation>> {
        let r = self.call(&json!({"op": "reset", "episode": episode, "task": task}));
        match Self::reset_reply(r) {
            Ok(obs) => {
                self.live.insert(
                    episode,
                    Live {
                        task,
                        steps: Vec::new(),
                        first: obs.text.clone(),
                    },
                );
                Ok(Some(obs))
            }
            Err(what) => self.failed("reset", episode, &what).map(|_| None),
        }
    }

    fn step(&mut self, episode: u64, action: &str) -> Result<Option<Transition>> {
        if !self.live.contains_key(&episode) {
            return Err(self.fail(format!("step of episode {episode}: no such live episode")));
        }
        let r = self.call(&json!({"op": "step", "episode": episode, "action": action}));
        match Self::step_reply(r) {
            Ok(t) => {
                let l = self.live.get_mut(&episode).expect("checked above");
                l.steps
                    .push((action.to_string(), t.observation.text.clone()));
                Ok(Some(t))
            }
            Err(what) => self.failed("step", episode, &what).map(|_| None),
        }
    }

    fn end(&mut self, episode: u64) -> Result<()> {
        // A dropped episode is unknown to the restarted child: nothing to end.
        if self.live.remove(&episode).is_some() {
            if let Some(p) = &self.proc {
                p.send(&json!({"op": "end", "episode": episode}));
            }
        }
        Ok(())
    }

    fn begin_step(&mut self) {
        self.failures = 0;
    }

    fn name(&self) -> String {
        self.command.clone()
    }
}

impl Drop for ExternalEnv {
    fn drop(&mut self) {
        let Some(mut p) = self.proc.take() else {
            return;
        };
        p.send(&json!({"op": "close"}));
        p.requests = None; // the writer thread ends: stdin closes
        let t0 = Instant::now();
        while !p.exited() && t0.elapsed() < Duration::from_millis(500) {
            std::thread::sleep(Duration::from_millis(5));
        }
        p.kill();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn script(dir: &std::path::Path, body: &str) -> String {
        let p = dir.join("env.py");
        std::fs::write(&p, body).unwrap();
        format!("python3 {}", p.display())
    }

    fn python() -> bool {
        let ok = Command::new("python3").arg("--version").output().is_ok();
        if !ok {
            eprintln!("skipped: no python3 on this machine");
        }
        ok
    }

    /// A deterministic environment: a step's observation is its action echoed;
    /// the action "crash" gets a line that is not JSON the first time (a marker
    /// file, argv[1]), "hang" never gets a reply.
    const ECHO: &str = r#"
import json, os, sys
marker = sys.argv[1]
for line in sys.stdin:
    req = json.loads(line)
    op = req["op"]
    if op == "close":
        break
    if op == "end":
        continue
    if op == "reset":
        reply = {"observation": f"task {req['task']}"}
    else:
        if req["action"] == "crash" and not os.path.exists(marker):
            open(marker, "w").close()
            print("this is not JSON", flush=True)
            continue
        if req["action"] == "hang":
            import time
            time.sleep(1000)
        reply = {"observation": f"did {req['action']}", "reward": 0.5}
    print(json.dumps(reply), flush=True)
"#;

    fn echo_env(name: &str, timeout: Duration) -> (ExternalEnv, std::path::PathBuf) {
        let dir =
            std::env::temp_dir().join(format!("onelayer-env-unit-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let cmd = format!("{} {}", script(&dir, ECHO), dir.join("crashed").display());
        (ExternalEnv::spawn(&cmd, timeout).unwrap(), dir)
    }

    #[test]
    fn a_failure_drops_the_episode_and_replays_the_others() {
        if !python() {
            return;
        }
        let (mut env, dir) = echo_env("replay", Duration::from_secs(10));
        env.begin_step();
        for e in 1..=3 {
            assert_eq!(
                env.reset(e, 10 + e).unwrap().unwrap().text,
                format!("task {}", 10 + e)
            );
        }
        assert_eq!(env.step(1, "a").unwrap().unwrap().observation.text, "did a");
        assert_eq!(env.step(3, "b").unwrap().unwrap().observation.text, "did b");
        // Episode 2 gets garbage: dropped, the child restarted, 1 and 3 replayed.
        assert!(env.step(2, "crash").unwrap().is_none());
        assert_eq!(env.starts(), 2);
        assert!(!env.live.contains_key(&2));
        // The restored episodes go on in the new child.
        let t = env.step(3, "c").unwrap().unwrap();
        assert_eq!((t.observation.text.as_str(), t.reward), ("did c", 0.5));
        assert_eq!(env.live[&3].steps.len(), 2);
        assert_eq!(
            env.live[&1].steps,
            vec![("a".to_string(), "did a".to_string())]
        );
        env.end(2).unwrap(); // dropped: nothing to end
        env.end(1).unwrap();
        assert_eq!(env.live.len(), 1);
        drop(env);
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn a_hang_is_a_timeout_and_a_second_failure_is_an_error() {
        if !python() {
            return;
        }
        let (mut env, dir) = echo_env("hang", Duration::from_millis(300));
        env.begin_step();
        env.reset(1, 1).unwrap().unwrap();
        env.reset(2, 2).unwrap().unwrap();
        let t0 = Instant::now();
        assert!(env.step(1, "hang").unwrap().is_none());
        assert!(t0.elapsed() < Duration::from_secs(5));
        assert_eq!(env.step(2, "x").unwrap().unwrap().observation.text, "did x");
        // A second failure in the same step stops.
        let e = env.step(2, "hang").unwrap_err().to_string();
        assert!(
            e.contains("step of episode 2: no reply in 0.3 s") && e.contains("second failure"),
            "{e}"
        );
        assert!(!e.contains('\n'), "{e}");
        // After begin_step a failure is the first again.
        let (mut env, _) = echo_env("hang", Duration::from_millis(300));
        env.begin_step();
        env.reset(1, 1).unwrap().unwrap();
        assert!(env.step(1, "hang").unwrap().is_none());
        env.begin_step();
        env.reset(2, 1).unwrap().unwrap();
        assert!(env.step(2, "hang").unwrap().is_none());
        drop(env);
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn a_replay_that_differs_is_an_error() {
        // Observations carry the process id: not deterministic per task. The
        // third request gets garbage, so the restart replays episode 1.
        let mut env = ExternalEnv::spawn(
            r#"n=0; while read -r line; do case "$line" in *'"close"'*) exit;; *'"end"'*) continue;; esac; n=$((n+1)); if [ "$n" = 3 ]; then echo junk; else echo "{\"observation\": \"pid $$\"}"; fi; done"#,
            Duration::from_secs(10),
        )
        .unwrap();
        env.begin_step();
        env.reset(1, 1).unwrap().unwrap();
        env.reset(2, 1).unwrap().unwrap();
        let e = env.step(2, "x").unwrap_err().to_string();
        assert!(
            e.contains("replaying reset of episode 1") && e.contains("deterministic"),
            "{e}"
        );
    }
}
