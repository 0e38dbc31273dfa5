//! The layer sweep (issue 6, DESIGN sections 5 and 9): how much of the
//! full-parameter RL gain each layer recovers when trained alone,
//!
//!     C_l = (score_l - score_base) / (score_full - score_base),
//!
//! and its uses: a report (`report`: sweep.json, sweep.csv, report.md), a bar chart
//! (`chart`), rank correlation between two sweeps (`rank`, `compare`), and training
//! the layers a sweep picks (`select`: `--train-layer top-K --from-sweep`,
//! `--lr-by-contribution`). `runner` runs the sweep's RL runs as child processes
//! of the `engine` binary (isolated, resumable, one per device in parallel).
//!
//! Scores are the final held-out `eval_accuracy` of each run's metrics.jsonl; the
//! base score is the step-0 evaluation (the model before training) of the full run.
//! When `score_full == score_base`, C is undefined: every contribution is `null`
//! and `contribution_defined` is false.

pub mod chart;
pub mod compare;
pub mod rank;
pub mod report;
pub mod runner;
pub mod select;

use crate::{Error, Result};
use serde::{Deserialize, Serialize};
use std::path::Path;

/// One finished run of a sweep: the full baseline (`layer: None`) or one layer.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Entry {
    /// The trained layer; `None` for the full-parameter baseline (`all`).
    pub layer: Option<usize>,
    /// Final held-out score.
    pub score: f64,
    /// C of this run; `None` when undefined (score_full == score_base).
    pub contribution: Option<f64>,
    /// Wall time of the child process that finished the run.
    pub wall_seconds: f64,
    /// Peak resident memory of that process (host RSS; on CUDA the device memory is
    /// not included).
    pub peak_rss_bytes: u64,
    /// The run directory, relative to the sweep directory.
    pub run_dir: String,
}

/// `sweep.json`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Sweep {
    pub version: u32,
    /// `--model` as given, or `builtin:tiny` for the demo model.
    pub model: String,
    pub task: String,
    pub num_layers: usize,
    /// What `score` measures.
    pub metric: String,
    pub score_base: f64,
    pub score_full: f64,
    /// False when score_full == score_base: every contribution is null.
    pub contribution_defined: bool,
    pub full: Entry,
    /// The swept layers, in layer order.
    pub layers: Vec<Entry>,
    /// The swept layers by contribution, highest first (ties: lower layer first);
    /// by score when contributions are undefined.
    pub best_layers: Vec<usize>,
    /// The `engine run` flags every run shared (all but --train-layer, --out, --device).
    pub run_args: Vec<String>,
    /// The full run's resolved settings (its config.toml).
    pub settings: serde_json::Value,
}

impl Sweep {
    /// Read a sweep.json, or the one in a sweep directory.
    pub fn read(path: &Path) -> Result<Sweep> {
        let path = if path.is_dir() {
            path.join("sweep.json")
        } else {
            path.to_path_buf()
        };
        let text = std::fs::read_to_string(&path).map_err(|e| Error::file(&path, e))?;
        serde_json::from_str(&text)
            .map_err(|e| Error::file(&path, format!("not a sweep.json ({e})")))
    }
}

/// C for a run scoring `score`; `None` when the full run did not move the score.
pub fn contribution(score: f64, base: f64, full: f64) -> Option<f64> {
    let gain = full - base;
    (gain.abs() > 1e-12 && gain.is_finite()).then(|| (score - base) / gain)
}

/// Layers by `key` (contribution, else score), highest first, ties by layer index.
pub fn ranking(layers: &[Entry]) -> Vec<usize> {
    let key = |e: &Entry| e.contribution.unwrap_or(e.score);
    let mut v: Vec<&Entry> = layers.iter().collect();
    v.sort_by(|a, b| key(b).total_cmp(&key(a)).then(a.layer.cmp(&b.layer)));
    v.iter().filter_map(|e| e.layer).collect()
}

/// Fill in the contributions (the full run's is exactly 1 when defined) and the
/// ranking.
pub fn finish(mut s: Sweep) -> Sweep {
    let (base, full) = (s.score_base, s.score_full);
    s.contribution_defined = contribution(full, base, full).is_some();
    s.full.contribution = s.contribution_defined.then_some(1.0);
    for e in &mut s.layers {
        e.contribution = contribution(e.score, base, full);
    }
    s.layers.sort_by_key(|e| e.layer);
    s.best_layers = ranking(&s.layers);
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(layer: Option<usize>, score: f64) -> Entry {
        Entry {
            layer,
            score,
            contribution: None,
            wall_seconds: 1.0,
            peak_rss_bytes: 1 << 20,
            run_dir: String::new(),
        }
    }

    pub(crate) fn sweep(base: f64, full: f64, scores: &[(usize, f64)]) -> Sweep {
        finish(Sweep {
            version: 1,
            model: "builtin:tiny".into(),
            task: "arith".into(),
            num_layers: 4,
            metric: "eval_accuracy".into(),
            score_base: base,
            score_full: full,
            contribution_defined: false,
            full: entry(None, full),
            layers: scores.iter().map(|&(l, s)| entry(Some(l), s)).collect(),
            best_layers: Vec::new(),
            run_args: Vec::new(),
            settings: serde_json::json!({}),
        })
    }

    #[test]
    fn contributions_and_ranking() {
        let s = sweep(0.2, 0.6, &[(2, 0.5), (0, 0.1), (1, 0.5), (3, 0.7)]);
        assert!(s.contribution_defined);
        assert_eq!(s.full.contribution, Some(1.0));
        let c: Vec<f64> = s.layers.iter().map(|e| e.contribution.unwrap()).collect();
        let want = [-0.25, 0.75, 0.75, 1.25];
        for (a, b) in c.iter().zip(want) {
            assert!((a - b).abs() < 1e-12, "{c:?}");
        }
        assert_eq!(s.best_layers, vec![3, 1, 2, 0]);
    }

    #[test]
    fn undefined_when_full_equals_base() {
        let s = sweep(0.3, 0.3, &[(0, 0.1), (1, 0.4)]);
        assert!(!s.contribution_defined);
        assert_eq!(s.full.contribution, None);
        assert!(s.layers.iter().all(|e| e.contribution.is_none()));
        assert_eq!(s.best_layers, vec![1, 0]);
    }
}
