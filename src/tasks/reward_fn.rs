//! Custom reward functions in Python (`--reward-fn FILE.py[:NAME]`), in the two forms
//! verl and TRL users already have:
//!
//! - verl (default): `NAME(data_source, solution_str, ground_truth, extra_info)` for
//!   one completion (NAME defaults to `compute_score`), returning a float, or a dict
//!   with `score` plus other numbers (each averaged into the metrics as
//!   `reward/<key>`; non-numeric values are ignored).
//! - TRL (`--reward-fn-style trl`): `NAME(prompts, completions, completion_ids, **columns)`
//!   for a batch, every argument a list with one entry per completion; returns a list
//!   of floats, `None` meaning "no reward" (scored 0 and counted as `reward/none`).
//!   A completion is a string, or `[{"role": "assistant", "content": ...}]` when the
//!   row's prompt is a chat message list (as TRL passes conversational data).
//!
//! Where the arguments come from (`Problem::columns`): a dataset row's `data_source`
//! (else the task's verl name), `reward_model.ground_truth` (else `ground_truth`,
//! else `answer`, else the built-in task's reference), `extra_info` (else `{}`); the
//! TRL form gets every column of the row.
//!
//! The function runs in persistent Python workers (`reward_worker.py`; one, or K with
//! `--reward-workers K`, each a process), fed JSON lines over pipes. verl calls are
//! spread over the workers one completion at a time; a TRL batch is cut into K
//! contiguous parts (as TRL's processes each score their own part). Each call has a
//! time limit (`--reward-timeout`, default 60 s). A function that raises, returns the
//! wrong type or a non-finite number, hangs, or whose worker dies is a one-line error
//! naming the file, the function and the row; the caller stops before training on it.

use super::{Problem, TaskKind};
use crate::{Error, Result};
use serde_json::{json, Map, Value};
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::mpsc::{channel, Receiver, RecvTimeoutError};
use std::sync::Mutex;
use std::time::Duration;

const WORKER: &str = include_str!("reward_worker.py");

/// Which calling convention the function follows (`--reward-fn-style`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RewardStyle {
    Verl,
    Trl,
}

impl RewardStyle {
    pub fn parse(s: &str) -> Result<RewardStyle> {
        match s.trim().to_ascii_lowercase().as_str() {
            "verl" => Ok(RewardStyle::Verl),
            "trl" => Ok(RewardStyle::Trl),
            _ => Err(Error::invalid(format!(
                "--reward-fn-style {s:?}: expected verl or trl"
            ))),
        }
    }
}

/// What `--reward-fn` and its companions name.
#[derive(Clone, Debug, PartialEq)]
pub struct RewardFnSpec {
    pub path: PathBuf,
    pub name: String,
    pub style: RewardStyle,
    pub workers: usize,
    pub timeout: Duration,
}

impl RewardFnSpec {
    /// `FILE.py[:NAME]` (NAME: `compute_score` for verl, `reward_func` for TRL).
    pub fn parse(
        arg: &str,
        style: Option<&str>,
        workers: Option<usize>,
        timeout_s: Option<f64>,
    ) -> Result<RewardFnSpec> {
        let style = RewardStyle::parse(style.unwrap_or("verl"))?;
        let (path, name) = match arg.rsplit_once(':') {
            Some((p, n)) if is_identifier(n) => (p, Some(n)),
            _ => (arg, None),
        };
        let name = name.map(str::to_string).unwrap_or_else(|| match style {
            RewardStyle::Verl => "compute_score".into(),
            RewardStyle::Trl => "reward_func".into(),
        });
        let path = PathBuf::from(path);
        if !path.is_file() {
            return Err(Error::invalid(format!(
                "--reward-fn {}: no such file",
                path.display()
            )));
        }
        let workers = workers.unwrap_or(1);
        if workers == 0 {
            return Err(Error::invalid("--reward-workers must be at least 1"));
        }
        let timeout_s = timeout_s.unwrap_or(60.0);
        if !(timeout_s.is_finite() && timeout_s > 0.0) {
            return Err(Error::invalid(format!(
                "--reward-timeout {timeout_s}: expected a positive number of seconds"
            )));
        }
        Ok(RewardFnSpec {
            path,
            name,
            style,
            workers,
            timeout: Duration::from_secs_f64(timeout_s),
        })
    }
}

fn is_identifier(s: &str) -> bool {
    let mut c = s.chars();
    c.next()
        .is_some_and(|f| f.is_ascii_alphabetic() || f == '_')
        && c.all(|x| x.is_ascii_alphanumeric() || x == '_')
}

/// One completion's score from the function.
#[derive(Clone, Debug, PartialEq)]
pub struct FnScore {
    pub reward: f64,
    /// The dict's other numbers (verl form).
    pub extras: Vec<(String, f64)>,
    /// The TRL form returned None for it.
    pub none: bool,
}

/// One completion to score.
pub struct FnInput<'a> {
    pub problem: &'a Problem,
    pub completion: &'a str,
    pub completion_ids: &'a [u32],
}

/// A running reward function: its worker processes.
pub struct RewardFn {
    spec: RewardFnSpec,
    label: String,
    workers: Vec<Mutex<Worker>>,
}

impl std::fmt::Debug for RewardFn {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "RewardFn({})", self.label)
    }
}

impl RewardFn {
    /// Start the workers; each imports the file and finds the function first.
    pub fn start(spec: &RewardFnSpec) -> Result<RewardFn> {
        let label = format!(
            "--reward-fn {}:{}",
            spec.path.file_name().unwrap_or_default().to_string_lossy(),
            spec.name
        );
        let python = super::sandbox::python(&Default::default()).ok_or_else(|| {
            Error::invalid(format!(
                "{label}: no Python interpreter (install python3 or set ONELAYER_PYTHON)"
            ))
        })?;
        let workers = (0..spec.workers)
            .map(|_| Worker::spawn(&python, spec, &label).map(Mutex::new))
            .collect::<Result<_>>()?;
        Ok(RewardFn {
            spec: spec.clone(),
            label,
            workers,
        })
    }

    pub fn spec(&self) -> &RewardFnSpec {
        &self.spec
    }

    /// Scores of `items`, in order; the first failure (by row order) is the error.
    pub fn score(&self, kind: TaskKind, items: &[FnInput<'_>]) -> Result<Vec<FnScore>> {
        if items.is_empty() {
            return Ok(Vec::new());
        }
        match self.spec.style {
            RewardStyle::Verl => self.score_verl(kind, items),
            RewardStyle::Trl => self.score_trl(kind, items),
        }
    }

    fn fail(&self, row: &str, msg: impl std::fmt::Display) -> Error {
        Error::invalid(format!("{}: row {row}: {msg}", self.label))
    }

    fn score_verl(&self, kind: TaskKind, items: &[FnInput<'_>]) -> Result<Vec<FnScore>> {
        let next = AtomicUsize::new(0);
        let stop = AtomicBool::new(false);
        let results: Vec<Mutex<Option<Result<FnScore>>>> =
            items.iter().map(|_| Mutex::new(None)).collect();
        std::thread::scope(|scope| {
            for w in &self.workers {
                scope.spawn(|| {
                    let mut w = w.lock().unwrap();
                    while !stop.load(Ordering::Relaxed) {
                        let i = next.fetch_add(1, Ordering::Relaxed);
                        let Some(item) = items.get(i) else { break };
                        let (source, truth, extra) = item.problem.verl_fields(kind);
                        let kwargs = json!({
                            "data_source": source,
                            "solution_str": item.completion,
                            "ground_truth": truth,
                            "extra_info": extra,
                        });
                        let r = w
                            .call(kwargs, self.spec.timeout)
                            .and_then(|v| verl_score(&v))
                            .map_err(|e| self.fail(&item.problem.id, e));
                        if r.is_err() {
                            stop.store(true, Ordering::Relaxed);
                        }
                        *results[i].lock().unwrap() = Some(r);
                    }
                });
            }
        });
        let mut out = Vec::with_capacity(items.len());
        for r in results {
            match r.into_inner().unwrap() {
                Some(r) => out.push(r?),
                None => break, // after an error
            }
        }
        Ok(out)
    }

    fn score_trl(&self, kind: TaskKind, items: &[FnInput<'_>]) -> Result<Vec<FnScore>> {
        let k = self.workers.len().min(items.len());
        let per = items.len().div_ceil(k);
        let chunks: Vec<&[FnInput<'_>]> = items.chunks(per).collect();
        let results: Vec<Result<Vec<FnScore>>> = std::thread::scope(|scope| {
            let handles: Vec<_> = chunks
                .iter()
                .zip(&self.workers)
                .map(|(chunk, w)| {
                    scope.spawn(move || {
                        let rows = if chunk.len() == 1 {
                            chunk[0].problem.id.clone()
                        } else {
                            format!(
                                "{} (and the rest of a batch of {})",
                                chunk[0].problem.id,
                                chunk.len()
                            )
                        };
                        w.lock()
                            .unwrap()
                            .call(trl_kwargs(kind, chunk), self.spec.timeout)
                            .and_then(|v| trl_scores(&v, chunk.len()))
                            .map_err(|e| self.fail(&rows, e))
                    })
                })
                .collect();
            handles
                .into_iter()
                .map(|h| h.join().expect("a scoring thread panicked"))
                .collect()
        });
        let mut out = Vec::with_capacity(items.len());
        for r in results {
            out.extend(r?);
        }
        Ok(out)
    }
}

/// TRL's keyword arguments for a batch: prompts, completions, completion_ids, and
/// every other column as a list (null where a row lacks it).
fn trl_kwargs(kind: TaskKind, chunk: &[FnInput<'_>]) -> Value {
    let cols: Vec<Map<String, Value>> = chunk.iter().map(|i| i.problem.columns(kind)).collect();
    let mut kw = Map::new();
    kw.insert(
        "prompts".into(),
        cols.iter()
            .map(|c| c.get("prompt").cloned().unwrap_or(Value::Null))
            .collect(),
    );
    kw.insert(
        "completions".into(),
        chunk
            .iter()
            .map(|i| {
                if i.problem.is_chat() {
                    json!([{"role": "assistant", "content": i.completion}])
                } else {
                    json!(i.completion)
                }
            })
            .collect(),
    );
    kw.insert(
        "completion_ids".into(),
        chunk.iter().map(|i| json!(i.completion_ids)).collect(),
    );
    let mut names: Vec<&String> = cols.iter().flat_map(|c| c.keys()).collect();
    names.sort();
    names.dedup();
    for name in names {
        if matches!(
            name.as_str(),
            "prompt" | "prompts" | "completions" | "completion_ids"
        ) {
            continue;
        }
        let column: Vec<Value> = cols
            .iter()
            .map(|c| c.get(name).cloned().unwrap_or(Value::Null))
            .collect();
        kw.insert(name.clone(), Value::Array(column));
    }
    Value::Object(kw)
}

fn describe(v: &Value) -> String {
    let s = v.to_string();
    if s.chars().count() > 60 {
        format!("{}...", s.chars().take(60).collect::<String>())
    } else {
        s
    }
}

fn number(v: &Value) -> Option<f64> {
    match v {
        Value::Number(n) => n.as_f64(),
        Value::Bool(b) => Some(*b as u8 as f64),
        _ => None,
    }
}

/// A verl result: a number, or a dict with a numeric `score`.
fn verl_score(v: &Value) -> std::result::Result<FnScore, String> {
    let bad = || {
        format!(
            "returned {}, expected a float or a dict with a numeric \"score\"",
            describe(v)
        )
    };
    let finite = |x: f64| {
        if x.is_finite() {
            Ok(x)
        } else {
            Err(bad())
        }
    };
    match v {
        Value::Object(m) => {
            let reward = finite(m.get("score").and_then(number).ok_or_else(bad)?)?;
            let extras = m
                .iter()
                .filter(|(k, _)| k.as_str() != "score")
                .filter_map(|(k, x)| number(x).filter(|x| x.is_finite()).map(|x| (k.clone(), x)))
                .collect();
            Ok(FnScore {
                reward,
                extras,
                none: false,
            })
        }
        // Non-finite floats arrive as strings ("nan", "inf"): not a number here.
        _ => Ok(FnScore {
            reward: finite(number(v).ok_or_else(bad)?)?,
            extras: Vec::new(),
            none: false,
        }),
    }
}

/// A TRL result: a list of `n` floats or None.
fn trl_scores(v: &Value, n: usize) -> std::result::Result<Vec<FnScore>, String> {
    let Value::Array(list) = v else {
        return Err(format!(
            "returned {}, expected a list of {n} floats (None for no reward)",
            describe(v)
        ));
    };
    if list.len() != n {
        return Err(format!(
            "returned {} rewards for {n} completions",
            list.len()
        ));
    }
    list.iter()
        .enumerate()
        .map(|(i, x)| match x {
            Value::Null => Ok(FnScore {
                reward: 0.0,
                extras: Vec::new(),
                none: true,
            }),
            _ => match number(x).filter(|r| r.is_finite()) {
                Some(reward) => Ok(FnScore {
                    reward,
                    extras: Vec::new(),
                    none: false,
                }),
                None => Err(format!(
                    "returned {} at position {i}, expected a finite float or None",
                    describe(x)
                )),
            },
        })
        .collect()
}

/// One worker process and its reply channel.
struct Worker {
    child: Child,
    stdin: Option<ChildStdin>,
    replies: Receiver<std::io::Result<String>>,
    next_id: u64,
    /// Killed after a time-out, or found exited: every later call fails.
    dead: Option<String>,
}

impl Worker {
    fn spawn(python: &Path, spec: &RewardFnSpec, label: &str) -> Result<Worker> {
        let mut child = Command::new(python)
            .args(["-u", "-c", WORKER])
            .arg(&spec.path)
            .arg(&spec.name)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .map_err(|e| {
                Error::invalid(format!("{label}: cannot start {}: {e}", python.display()))
            })?;
        let stdout = child.stdout.take().expect("stdout is piped");
        let (tx, replies) = channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let mut w = Worker {
            stdin: child.stdin.take(),
            child,
            replies,
            next_id: 0,
            dead: None,
        };
        let first = w
            .read(spec.timeout)
            .map_err(|e| Error::invalid(format!("{label}: while loading: {e}")))?;
        if let Some(f) = first.get("fatal").and_then(Value::as_str) {
            return Err(Error::invalid(format!("{label}: {f}")));
        }
        if first.get("ready") != Some(&Value::Bool(true)) {
            return Err(Error::invalid(format!(
                "{label}: the worker's first line was {}",
                describe(&first)
            )));
        }
        Ok(w)
    }

    /// Call the function with `kwargs`; its plain-JSON result.
    fn call(&mut self, kwargs: Value, timeout: Duration) -> std::result::Result<Value, String> {
        if let Some(why) = &self.dead {
            return Err(why.clone());
        }
        self.next_id += 1;
        let id = self.next_id;
        let line = format!("{}\n", json!({"id": id, "kwargs": kwargs}));
        let sent = self
            .stdin
            .as_mut()
            .is_some_and(|s| s.write_all(line.as_bytes()).and_then(|_| s.flush()).is_ok());
        if !sent {
            return Err(self.died());
        }
        let reply = self.read(timeout)?;
        if reply.get("id").and_then(Value::as_u64) != Some(id) {
            return Err(format!(
                "the worker answered out of turn: {}",
                describe(&reply)
            ));
        }
        if let Some(e) = reply.get("error").and_then(Value::as_str) {
            return Err(format!("raised {e}"));
        }
        Ok(reply.get("result").cloned().unwrap_or(Value::Null))
    }

    /// The next reply line, as JSON.
    fn read(&mut self, timeout: Duration) -> std::result::Result<Value, String> {
        match self.replies.recv_timeout(timeout) {
            Ok(Ok(line)) => serde_json::from_str(&line).map_err(|_| {
                format!(
                    "the worker wrote {:?}",
                    line.chars().take(80).collect::<String>()
                )
            }),
            Ok(Err(e)) => Err(format!("reading the worker's reply: {e}")),
            Err(RecvTimeoutError::Timeout) => {
                let _ = self.child.kill();
                let _ = self.child.wait();
                let why = format!(
                    "did not return within {} s (--reward-timeout); the worker was stopped",
                    timeout.as_secs_f64()
                );
                self.dead = Some(why.clone());
                Err(why)
            }
            Err(RecvTimeoutError::Disconnected) => Err(self.died()),
        }
    }

    fn died(&mut self) -> String {
        let status = match self.child.wait() {
            Ok(s) => s.to_string(),
            Err(e) => e.to_string(),
        };
        let why = format!("the reward worker exited ({status})");
        self.dead = Some(why.clone());
        why
    }
}

impl Drop for Worker {
    fn drop(&mut self) {
        self.stdin = None; // EOF: the worker's loop ends
        for _ in 0..20 {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn results_are_checked() {
        assert_eq!(verl_score(&json!(0.5)).unwrap().reward, 0.5);
        let d = verl_score(&json!({"score": 1, "acc": 1.0, "pred": "42"})).unwrap();
        assert_eq!((d.reward, d.extras), (1.0, vec![("acc".into(), 1.0)]));
        assert!(verl_score(&json!("1.0"))
            .unwrap_err()
            .contains("expected a float"));
        assert!(verl_score(&json!({"acc": 1})).is_err());
        assert!(verl_score(&Value::Null).is_err());
        let t = trl_scores(&json!([1.0, null]), 2).unwrap();
        assert!(t[1].none && t[1].reward == 0.0 && !t[0].none);
        assert!(trl_scores(&json!([1.0]), 2)
            .unwrap_err()
            .contains("1 rewards for 2"));
        assert!(trl_scores(&json!(["x", 1]), 2)
            .unwrap_err()
            .contains("position 0"));
    }

    #[test]
    fn spec_parses_file_and_name() {
        let dir = std::env::temp_dir().join(format!("onelayer-rfspec-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let f = dir.join("r.py");
        std::fs::write(&f, "").unwrap();
        let s = RewardFnSpec::parse(f.to_str().unwrap(), None, None, None).unwrap();
        assert_eq!(
            (s.name.as_str(), s.style),
            ("compute_score", RewardStyle::Verl)
        );
        let s = RewardFnSpec::parse(
            &format!("{}:mine", f.display()),
            Some("trl"),
            Some(2),
            Some(5.0),
        )
        .unwrap();
        assert_eq!((s.name.as_str(), s.workers), ("mine", 2));
        assert!(RewardFnSpec::parse("/nonexistent.py", None, None, None).is_err());
        assert!(RewardFnSpec::parse(f.to_str().unwrap(), Some("x"), None, None).is_err());
        assert!(RewardFnSpec::parse(f.to_str().unwrap(), None, Some(0), None).is_err());
        assert!(RewardFnSpec::parse(f.to_str().unwrap(), None, None, Some(0.0)).is_err());
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
