//! The runs of a sweep as child processes of the `engine` binary:
//! `engine run <shared flags> --train-layer X --out DIR/runs/NAME --device D`,
//! output appended to `DIR/logs/NAME.log`.
//!
//! - Isolation and measurement: each run is its own process; its wall time is
//!   measured around it and its peak memory is its maximum resident set size from
//!   `wait4` (host memory: a CUDA run's device memory is not in it).
//! - Resume: a run is finished once the sweep has written `sweep-result.json` into
//!   its directory (after the child exited 0 with its final held-out score in
//!   metrics.jsonl); finished runs are skipped. A directory with a config.toml but
//!   no result is continued with `engine run --resume` (from its last checkpoint,
//!   or from step 1 when it has none).
//! - Parallel: one worker thread per entry of `devices`, each running one child at
//!   a time on its device (`cuda:0`, `cuda:1`, ...); jobs are taken in order.
//! - Ctrl-C reaches the children too (same process group): each saves a checkpoint
//!   and stops; the sweep starts nothing new and says how to continue.

use crate::rl::RunSettings;
use crate::{Error, Result};
use serde::{Deserialize, Serialize};
use std::collections::VecDeque;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;
use std::time::Instant;

/// Set by the sweep's Ctrl-C handler: start no further run.
pub static STOP: AtomicBool = AtomicBool::new(false);

/// One RL run of the sweep.
#[derive(Debug, Clone, PartialEq)]
pub struct Job {
    /// Directory name under `runs/` and log name: `full`, `layer-07`, and with a
    /// seed `full-s1`, `layer-07-s1`.
    pub name: String,
    /// `None` for the full-parameter baseline.
    pub layer: Option<usize>,
    /// `--seed` of a seeded sweep's run.
    pub seed: Option<u64>,
}

impl Job {
    pub fn full() -> Self {
        Job {
            name: "full".into(),
            layer: None,
            seed: None,
        }
    }

    /// The same run with `--seed seed` (a seeded sweep).
    pub fn seeded(mut self, seed: u64) -> Self {
        self.name = format!("{}-s{seed}", self.name);
        self.seed = Some(seed);
        self
    }

    pub fn layer(l: usize, num_layers: usize) -> Self {
        let width = num_layers.saturating_sub(1).to_string().len().max(2);
        Job {
            name: format!("layer-{l:0width$}"),
            layer: Some(l),
            seed: None,
        }
    }

    fn train_layer(&self) -> String {
        self.layer.map_or_else(|| "all".into(), |l| l.to_string())
    }
}

/// What a finished run measured (`runs/NAME/sweep-result.json`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Outcome {
    /// Final held-out score.
    pub score: f64,
    /// The step-0 evaluation (the model before training).
    pub base_score: Option<f64>,
    pub steps: usize,
    pub wall_seconds: f64,
    pub peak_rss_bytes: u64,
    /// True when this invocation did not run it (finished earlier).
    #[serde(skip)]
    pub skipped: bool,
}

/// Everything the runs share.
pub struct Plan<'a> {
    /// The `engine` binary.
    pub exe: &'a Path,
    /// The sweep directory.
    pub dir: &'a Path,
    /// Flags every run gets (all but --train-layer, --out, --device).
    pub run_args: &'a [String],
    /// One worker per device.
    pub devices: &'a [String],
}

pub const RESULT_FILE: &str = "sweep-result.json";

pub fn run_dir(dir: &Path, job: &Job) -> PathBuf {
    dir.join("runs").join(&job.name)
}

/// Run (or skip) every job; outcomes in the order of `jobs`.
pub fn run_all(plan: &Plan, jobs: &[Job]) -> Result<Vec<Outcome>> {
    let logs = plan.dir.join("logs");
    std::fs::create_dir_all(&logs).map_err(|e| Error::file(&logs, e))?;
    let queue = Mutex::new((0..jobs.len()).collect::<VecDeque<usize>>());
    let results: Mutex<Vec<Option<Outcome>>> = Mutex::new(vec![None; jobs.len()]);
    let first_error: Mutex<Option<Error>> = Mutex::new(None);
    let failed = AtomicBool::new(false);
    let total = jobs.len();
    std::thread::scope(|scope| {
        for device in plan.devices {
            let (queue, results, first_error, failed) = (&queue, &results, &first_error, &failed);
            scope.spawn(move || loop {
                if failed.load(Ordering::SeqCst) || STOP.load(Ordering::SeqCst) {
                    return;
                }
                let Some(i) = queue.lock().expect("queue").pop_front() else {
                    return;
                };
                match run_one(plan, &jobs[i], device, i + 1, total) {
                    Ok(o) => results.lock().expect("results")[i] = Some(o),
                    Err(e) => {
                        failed.store(true, Ordering::SeqCst);
                        first_error.lock().expect("error").get_or_insert(e);
                    }
                }
            });
        }
    });
    let error = first_error.into_inner().expect("error");
    let results = results.into_inner().expect("results");
    if let (Some(e), false) = (error, STOP.load(Ordering::SeqCst)) {
        return Err(e);
    }
    if results.iter().any(Option::is_none) {
        return Err(Error::invalid(format!(
            "sweep interrupted: rerun the same command to continue ({} keeps the finished runs)",
            plan.dir.display()
        )));
    }
    Ok(results.into_iter().flatten().collect())
}

fn run_one(plan: &Plan, job: &Job, device: &str, k: usize, total: usize) -> Result<Outcome> {
    let dir = run_dir(plan.dir, job);
    let marker = dir.join(RESULT_FILE);
    if marker.exists() {
        let text = std::fs::read_to_string(&marker).map_err(|e| Error::file(&marker, e))?;
        let mut o: Outcome = serde_json::from_str(&text).map_err(|e| Error::file(&marker, e))?;
        o.skipped = true;
        eprintln!(
            "[{k}/{total}] {}: finished earlier (score {:.4}), skipped",
            job.name, o.score
        );
        return Ok(o);
    }
    let mut args: Vec<String> = vec!["run".into()];
    let resuming = dir.join("config.toml").exists();
    if resuming {
        args.extend(["--resume".into(), dir.display().to_string()]);
    } else {
        args.extend(plan.run_args.iter().cloned());
        args.extend(["--train-layer".into(), job.train_layer()]);
        args.extend(["--out".into(), dir.display().to_string()]);
        if let Some(seed) = job.seed {
            args.extend(["--seed".into(), seed.to_string()]);
        }
    }
    args.extend(["--device".into(), device.to_string()]);
    let log_path = plan.dir.join("logs").join(format!("{}.log", job.name));
    eprintln!(
        "[{k}/{total}] {}: {} on {device} (log: {})",
        job.name,
        if resuming { "resuming" } else { "running" },
        log_path.display()
    );
    let (code, wall, rss) = spawn_and_wait(plan.exe, &args, &log_path)?;
    if code != 0 {
        return Err(Error::invalid(format!(
            "{} (engine {}) failed with exit status {code}: {}; log: {}",
            job.name,
            args.join(" "),
            last_error(&log_path),
            log_path.display()
        )));
    }
    let mut o = read_outcome(&dir)?;
    o.wall_seconds = wall;
    o.peak_rss_bytes = rss;
    let tmp = dir.join(format!(".{RESULT_FILE}.tmp"));
    let text = serde_json::to_string_pretty(&o).expect("outcome serialises");
    std::fs::write(&tmp, text).map_err(|e| Error::file(&tmp, e))?;
    std::fs::rename(&tmp, &marker).map_err(|e| Error::file(&marker, e))?;
    eprintln!(
        "[{k}/{total}] {}: score {:.4} ({wall:.1} s, peak RSS {:.0} MiB)",
        job.name,
        o.score,
        rss as f64 / (1u64 << 20) as f64
    );
    Ok(o)
}

/// The final and step-0 held-out scores of a run directory whose run completed
/// all its steps; an error when it stopped early or logged no evaluation.
pub fn read_outcome(dir: &Path) -> Result<Outcome> {
    let cfg = RunSettings::from_toml_file(&dir.join("config.toml"))?;
    let steps = cfg.steps.unwrap_or(0);
    let path = dir.join("metrics.jsonl");
    let text = std::fs::read_to_string(&path).map_err(|e| Error::file(&path, e))?;
    let (mut base, mut last, mut score) = (None, 0, None);
    for line in text.lines() {
        let v: serde_json::Value = serde_json::from_str(line).map_err(|e| Error::file(&path, e))?;
        let step = v["step"].as_u64().unwrap_or(0) as usize;
        let eval = v["eval_accuracy"].as_f64();
        if step == 0 {
            base = base.or(eval);
        }
        last = last.max(step);
        if step == steps {
            score = eval.or(score);
        }
    }
    if last < steps {
        return Err(Error::file(
            &path,
            format!("the run stopped after step {last} of {steps} (interrupted?); rerun the sweep to continue it"),
        ));
    }
    let score = score.ok_or_else(|| {
        Error::file(
            &path,
            format!("no held-out evaluation at the final step {steps} (--eval-every 0, or no --eval-data?)"),
        )
    })?;
    Ok(Outcome {
        score,
        base_score: base,
        steps,
        wall_seconds: 0.0,
        peak_rss_bytes: 0,
        skipped: false,
    })
}

/// The last `error:` line of a log (else its last line).
fn last_error(log: &Path) -> String {
    let text = std::fs::read_to_string(log).unwrap_or_default();
    let lines: Vec<&str> = text.lines().filter(|l| !l.trim().is_empty()).collect();
    lines
        .iter()
        .rev()
        .find(|l| l.starts_with("error:"))
        .or(lines.last())
        .map_or_else(|| "(no output)".into(), |l| l.trim().to_string())
}

/// Run `exe args` with stdout and stderr appended to `log`; (exit code, wall
/// seconds, peak RSS bytes). A child killed by a signal reports 128 + signal.
pub fn spawn_and_wait(exe: &Path, args: &[String], log: &Path) -> Result<(i32, f64, u64)> {
    let open = || {
        std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(log)
            .map_err(|e| Error::file(log, e))
    };
    let t0 = Instant::now();
    let child = Command::new(exe)
        .args(args)
        .stdin(Stdio::null())
        .stdout(open()?)
        .stderr(open()?)
        .spawn()
        .map_err(|e| Error::file(exe, format!("cannot start: {e}")))?;
    let pid = child.id() as libc::pid_t;
    let mut status: libc::c_int = 0;
    // SAFETY: rusage is plain data, zero is a valid value.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    loop {
        // SAFETY: waits for our own child `pid`; status and usage are valid
        // pointers for the call. `child` is never waited on through std afterwards.
        let r = unsafe { libc::wait4(pid, &mut status, 0, &mut usage) };
        if r == pid {
            break;
        }
        let err = std::io::Error::last_os_error();
        if err.kind() != std::io::ErrorKind::Interrupted {
            return Err(Error::file(exe, format!("waiting for the run: {err}")));
        }
    }
    drop(child);
    let wall = t0.elapsed().as_secs_f64();
    let code = if libc::WIFEXITED(status) {
        libc::WEXITSTATUS(status)
    } else if libc::WIFSIGNALED(status) {
        128 + libc::WTERMSIG(status)
    } else {
        -1
    };
    // ru_maxrss is in KiB on Linux, bytes on macOS.
    let unit = if cfg!(target_os = "macos") { 1 } else { 1024 };
    Ok((code, wall, usage.ru_maxrss.max(0) as u64 * unit))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_sort_by_layer() {
        assert_eq!(Job::layer(3, 4).name, "layer-03");
        assert_eq!(Job::layer(7, 128).name, "layer-007");
        assert_eq!(Job::full().train_layer(), "all");
    }

    #[test]
    fn measures_a_child() {
        let dir = std::env::temp_dir().join(format!("onelayer-spawn-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let log = dir.join("x.log");
        let args = [
            "-c".to_string(),
            "echo hi; echo error: boom >&2; exit 3".into(),
        ];
        let (code, wall, rss) = spawn_and_wait(Path::new("/bin/sh"), &args, &log).unwrap();
        assert_eq!(code, 3);
        assert!(wall >= 0.0 && rss > 0);
        assert_eq!(last_error(&log), "error: boom");
        let _ = std::fs::remove_dir_all(&dir);
    }
}
