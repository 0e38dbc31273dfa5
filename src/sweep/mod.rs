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
//! When `score_full <= score_base` (the full run gained nothing), C is undefined:
//! every contribution is `null` and `contribution_defined` is false; in a seeded
//! sweep that holds per seed, and the means and intervals use the seeds that define C.
//!
//! `--seeds K` repeats the whole sweep over K seeds (`finish_seeded`, `stats`): each
//! entry then holds its per-seed runs, its mean C (what selection uses), the spread
//! and a 95% t-interval, and whether it is distinguishable from the best layer.

pub mod chart;
pub mod compare;
pub mod rank;
pub mod report;
pub mod runner;
pub mod select;
pub mod stats;

use crate::{Error, Result};
use serde::{Deserialize, Serialize};
use std::path::Path;

/// One seed's run of an entry (seeded sweeps).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SeedRun {
    pub seed: u64,
    pub score: f64,
    /// The seed's base score (its full run's step-0 evaluation).
    pub base: f64,
    /// C of this run against its seed's base and full run.
    pub contribution: Option<f64>,
    pub run_dir: String,
}

/// One finished run of a sweep: the full baseline (`layer: None`) or one layer
/// (with `--seeds K`: its K runs, `score` and `contribution` their means).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
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
    /// Seeded sweeps: every seed's run.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub seeds: Vec<SeedRun>,
    /// Sample standard deviation of C over the seeds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub contribution_sd: Option<f64>,
    /// 95% t-interval of the mean C over the seeds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub contribution_ci95: Option<[f64; 2]>,
    /// The paired 95% t-interval of (C_best - C_l) over the seeds excludes 0.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub distinguishable_from_best: Option<bool>,
}

/// `sweep.json`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Sweep {
    pub version: u32,
    /// `--model` as given, or `builtin:base` for the built-in base.
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
    /// The seeds every entry was run with (`--seeds K`; empty: one run each).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub seeds: Vec<u64>,
    /// How the intervals were computed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub interval: Option<String>,
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

/// C for a run scoring `score`; `None` unless the full run improved on the base (a
/// share of a loss, or of no change, means nothing: with full < base every C would
/// flip its sign).
pub fn contribution(score: f64, base: f64, full: f64) -> Option<f64> {
    let gain = full - base;
    (gain > 1e-12 && gain.is_finite()).then(|| (score - base) / gain)
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

/// A seeded sweep's statistics: per seed k, C_{l,k} against the seed's own base
/// (`full.seeds[k].base`) and full run (`full.seeds[k].score`); per entry the mean
/// score and C, the spread and 95% t-interval of C, and (for layers) whether it is
/// distinguishable from the best one (`stats`). Selection uses the means.
pub fn finish_seeded(mut s: Sweep) -> Sweep {
    let k = s.full.seeds.len();
    let bases: Vec<f64> = s.full.seeds.iter().map(|r| r.base).collect();
    let fulls: Vec<f64> = s.full.seeds.iter().map(|r| r.score).collect();
    let mean = |v: &[f64]| v.iter().sum::<f64>() / v.len().max(1) as f64;
    s.score_base = mean(&bases);
    s.score_full = mean(&fulls);
    let defined: Vec<bool> = (0..k)
        .map(|i| contribution(fulls[i], bases[i], fulls[i]).is_some())
        .collect();
    s.contribution_defined = defined.iter().any(|&d| d);
    for (r, &d) in s.full.seeds.iter_mut().zip(&defined) {
        r.contribution = d.then_some(1.0);
    }
    s.full.score = s.score_full;
    s.full.contribution = s.contribution_defined.then_some(1.0);
    for e in &mut s.layers {
        for (i, r) in e.seeds.iter_mut().enumerate() {
            r.contribution = contribution(r.score, bases[i], fulls[i]);
        }
        let scores: Vec<f64> = e.seeds.iter().map(|r| r.score).collect();
        e.score = mean(&scores);
        let cs: Vec<f64> = e.seeds.iter().filter_map(|r| r.contribution).collect();
        let (m, sd, ci) = stats::summarize(&cs);
        (e.contribution, e.contribution_sd, e.contribution_ci95) = (m, sd, ci);
    }
    s.layers.sort_by_key(|e| e.layer);
    s.best_layers = ranking(&s.layers);
    if let Some(&best) = s.best_layers.first() {
        let per_seed =
            |e: &Entry| -> Vec<Option<f64>> { e.seeds.iter().map(|r| r.contribution).collect() };
        let best_c = per_seed(
            s.layers
                .iter()
                .find(|e| e.layer == Some(best))
                .expect("ranked"),
        );
        for e in &mut s.layers {
            e.distinguishable_from_best = if e.layer == Some(best) {
                None
            } else {
                stats::distinguishable(&best_c, &per_seed(e))
            };
        }
    }
    s.interval = Some(format!(
        "95% Student t-interval over the {k} seeds (mean +- t(0.975, n-1) sd / sqrt(n)); distinguishable: paired t-interval of C_best - C_l excludes 0"
    ));
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(layer: Option<usize>, score: f64) -> Entry {
        Entry {
            layer,
            score,
            wall_seconds: 1.0,
            peak_rss_bytes: 1 << 20,
            ..Entry::default()
        }
    }

    #[test]
    fn seeded_sweeps_average_and_bound_contributions() {
        let run = |seed: u64, score: f64, base: f64| SeedRun {
            seed,
            score,
            base,
            contribution: None,
            run_dir: String::new(),
        };
        // Seeds: base 0.2 / full 0.6, base 0.1 / full 0.5, base 0.3 / full 0.7.
        let full = Entry {
            seeds: vec![run(0, 0.6, 0.2), run(1, 0.5, 0.1), run(2, 0.7, 0.3)],
            ..entry(None, 0.0)
        };
        let layer = |l: usize, scores: [f64; 3]| Entry {
            seeds: (0..3).map(|k| run(k as u64, scores[k], 0.0)).collect(),
            ..entry(Some(l), 0.0)
        };
        let s = finish_seeded(Sweep {
            seeds: vec![0, 1, 2],
            full,
            layers: vec![layer(1, [0.5, 0.4, 0.6]), layer(0, [0.3, 0.2, 0.35])],
            ..sweep(0.0, 0.0, &[])
        });
        assert!(s.contribution_defined);
        assert!((s.score_base - 0.2).abs() < 1e-12 && (s.score_full - 0.6).abs() < 1e-12);
        let l1 = &s.layers[1];
        // C per seed 0.75, 0.75, 0.75: no spread, a zero-width interval.
        assert!((l1.contribution.unwrap() - 0.75).abs() < 1e-12);
        assert!(l1.contribution_sd.unwrap() < 1e-12);
        let l0 = &s.layers[0];
        let cs: Vec<f64> = l0.seeds.iter().map(|r| r.contribution.unwrap()).collect();
        for (c, want) in cs.iter().zip([0.25, 0.25, 0.125]) {
            assert!((c - want).abs() < 1e-12, "{cs:?}");
        }
        let [lo, hi] = l0.contribution_ci95.unwrap();
        assert!(lo < l0.contribution.unwrap() && l0.contribution.unwrap() < hi);
        assert_eq!(s.best_layers, vec![1, 0]);
        assert_eq!(l0.distinguishable_from_best, Some(true));
        assert_eq!(l1.distinguishable_from_best, None);
        assert!((l0.score - (0.3 + 0.2 + 0.35) / 3.0).abs() < 1e-12);
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
            seeds: Vec::new(),
            interval: None,
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
        let worse = sweep(0.3, 0.2, &[(0, 0.1), (1, 0.4)]);
        assert!(
            !worse.contribution_defined,
            "a full run below the base defines no C"
        );
        let s = sweep(0.3, 0.3, &[(0, 0.1), (1, 0.4)]);
        assert!(!s.contribution_defined);
        assert_eq!(s.full.contribution, None);
        assert!(s.layers.iter().all(|e| e.contribution.is_none()));
        assert_eq!(s.best_layers, vec![1, 0]);
    }
}
