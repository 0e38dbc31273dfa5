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
//! `done` to false. Episodes with the same `task` must start from the same state.
//! examples/envs/guess_env.py implements the built-in `guess` environment this way.

use super::{Environment, Observation, Transition};
use crate::{Error, Result};
use serde::Deserialize;
use serde_json::json;
use std::io::{BufRead, BufReader, Write};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::mpsc::{channel, Receiver, RecvTimeoutError};
use std::time::Duration;

pub struct ExternalEnv {
    command: String,
    /// How long a reply may take before the run stops with an error.
    timeout: Duration,
    child: Child,
    stdin: Option<ChildStdin>,
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

impl ExternalEnv {
    /// Start `command` (run by `sh -c`); each reply must come within `timeout`.
    pub fn spawn(command: &str, timeout: Duration) -> Result<Self> {
        let mut child = Command::new("sh")
            .arg("-c")
            .arg(command)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .map_err(|e| Error::invalid(format!("--env '{command}': cannot start it: {e}")))?;
        let stdout = child.stdout.take().expect("stdout is piped");
        let (tx, replies) = channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        Ok(ExternalEnv {
            command: command.to_string(),
            timeout,
            stdin: child.stdin.take(),
            child,
            replies,
        })
    }

    fn fail(&self, what: String) -> Error {
        Error::invalid(format!("--env '{}': {what}", self.command))
    }

    fn send(&mut self, request: &serde_json::Value) -> Result<()> {
        let line = format!("{request}\n");
        let ok = match self.stdin.as_mut() {
            Some(s) => s.write_all(line.as_bytes()).and_then(|_| s.flush()).is_ok(),
            None => false,
        };
        if ok {
            Ok(())
        } else {
            let status = self.exit_status();
            Err(self.fail(format!("the environment exited ({status})")))
        }
    }

    fn exit_status(&mut self) -> String {
        match self.child.try_wait() {
            Ok(Some(s)) => s.to_string(),
            _ => "still running, stdin closed".into(),
        }
    }

    /// Send a request and parse its reply.
    fn call(&mut self, request: serde_json::Value) -> Result<Reply> {
        // A child that already exited may still have left its reply (or a line
        // that explains the exit) on stdout: read before reporting the write.
        let sent = self.send(&request);
        let op = request["op"].as_str().unwrap_or("?").to_string();
        let line = match self.replies.recv_timeout(self.timeout) {
            Ok(Ok(line)) => line,
            Ok(Err(e)) => return Err(self.fail(format!("reading its reply to {op}: {e}"))),
            Err(RecvTimeoutError::Timeout) => {
                return Err(self.fail(format!(
                    "no reply to {op} in {} s",
                    self.timeout.as_secs_f64()
                )))
            }
            Err(RecvTimeoutError::Disconnected) => {
                sent?;
                std::thread::sleep(Duration::from_millis(50));
                let status = self.exit_status();
                return Err(self.fail(format!("exited before replying to {op} ({status})")));
            }
        };
        let reply: Reply = serde_json::from_str(&line).map_err(|e| {
            let shown: String = line.chars().take(120).collect();
            self.fail(format!("reply to {op} is not a JSON object ({e}): {shown}"))
        })?;
        if let Some(e) = reply.error {
            let e = e.lines().next().unwrap_or("").to_string();
            return Err(self.fail(format!("{op} failed: {e}")));
        }
        Ok(reply)
    }

    fn observation(&self, op: &str, reply: &mut Reply) -> Result<Observation> {
        match reply.observation.take() {
            Some(text) => Ok(Observation {
                text,
                anchor: reply.anchor.take(),
            }),
            None => Err(self.fail(format!("reply to {op} has no \"observation\""))),
        }
    }
}

impl Environment for ExternalEnv {
    fn reset(&mut self, episode: u64, task: u64) -> Result<Option<Observation>> {
        let mut r = self.call(json!({"op": "reset", "episode": episode, "task": task}))?;
        self.observation("reset", &mut r).map(Some)
    }

    fn step(&mut self, episode: u64, action: &str) -> Result<Option<Transition>> {
        let mut r = self.call(json!({"op": "step", "episode": episode, "action": action}))?;
        let reward = r.reward.unwrap_or(0.0);
        if !reward.is_finite() {
            return Err(self.fail(format!("reply to step gave reward {reward}")));
        }
        Ok(Some(Transition {
            observation: self.observation("step", &mut r)?,
            reward,
            done: r.done.unwrap_or(false),
        }))
    }

    fn end(&mut self, episode: u64) -> Result<()> {
        self.send(&json!({"op": "end", "episode": episode}))
    }

    fn name(&self) -> String {
        self.command.clone()
    }
}

impl Drop for ExternalEnv {
    fn drop(&mut self) {
        let _ = self.send(&json!({"op": "close"}));
        self.stdin = None;
        for _ in 0..20 {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(25));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
