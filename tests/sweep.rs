//! `engine sweep` end to end on the CPU with the built-in demo (a reduced sweep: the
//! full baseline and two layers, a few steps): sweep.json, sweep.csv, report.md and
//! the chart exist and agree, C of the full run is 1; a second invocation skips the
//! finished runs and resumes an unfinished one; `engine run --train-layer top-2
//! --from-sweep` trains the picked layers; `sweep compare` matches hand-computed
//! rank correlations; malformed input is a one-line error. Also the per-layer
//! learning-rate multiplier in the trainer.

use onelayer::sweep::{Entry, Sweep};
use std::path::{Path, PathBuf};
use std::process::Output;

mod common;

use common::engine_ok as run_ok;

fn tmp(name: &str) -> PathBuf {
    common::fresh_dir("sweep", name)
}

fn run(args: &[&str]) -> Output {
    common::engine().args(args).output().unwrap()
}

/// A failure whose stderr is one `error:` line naming `want`, with no panic.
fn one_line_error(args: &[&str], want: &str) {
    let out = run(args);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{args:?} succeeded");
    let last = err.trim().lines().last().unwrap_or("");
    assert!(
        last.starts_with("error:") && last.contains(want),
        "{args:?}: {err}"
    );
    assert!(
        !err.contains("panicked") && !err.contains("internal error"),
        "{err}"
    );
}

/// The reduced sweep's flags: the tiny random model (4 layers) on one-digit
/// subtractions answered in one token (the sweep's mechanics, fast), 10 steps of
/// 16 x 8 samples, 40 held-out problems.
const SWEEP: &[&str] = &[
    "sweep",
    "--device",
    "cpu",
    "--steps",
    "10",
    "--layers",
    "1,2",
    "--model",
    "random:tiny",
];
/// The task of every run (also given to the runs that train a sweep's picks).
const TASK: &[&str] = &[
    "--arith-terms",
    "2",
    "--arith-digits",
    "1",
    "--arith-ops",
    "-",
    "--max-new-tokens",
    "1",
    "--lr",
    "3e-3",
];
const RUN_FLAGS: &[&str] = &["--", "--eval-size", "40", "--eval-every", "10"];

fn sweep_args<'a>(out: &'a str, layers: &'a str) -> Vec<&'a str> {
    let mut v = SWEEP.to_vec();
    v[6] = layers;
    v.extend(["--out", out]);
    v.extend(RUN_FLAGS);
    v.extend(TASK);
    v
}

/// `engine run` flags of a run on the reduced sweep's model and task.
fn tiny_run<'a>(args: &[&'a str]) -> Vec<&'a str> {
    let mut v = args.to_vec();
    v.extend(["--model", "random:tiny"]);
    v.extend(TASK);
    v
}

fn mtime(p: &Path) -> std::time::SystemTime {
    std::fs::metadata(p).unwrap().modified().unwrap()
}

fn close(a: f64, b: f64, what: &str) {
    assert!((a - b).abs() < 1e-9, "{what}: {a} vs {b}");
}

/// sweep.csv and report.md hold the numbers of sweep.json.
fn check_outputs(dir: &Path, s: &Sweep) {
    assert!(
        s.contribution_defined,
        "the full run did not move the score"
    );
    assert_eq!(s.full.contribution, Some(1.0));
    let csv = std::fs::read_to_string(dir.join("sweep.csv")).unwrap();
    let md = std::fs::read_to_string(dir.join("report.md")).unwrap();
    let rows: Vec<Vec<&str>> = csv
        .lines()
        .skip(1)
        .map(|l| l.split(',').collect())
        .collect();
    assert_eq!(rows.len(), 2 + s.layers.len());
    close(rows[0][1].parse().unwrap(), s.score_base, "base score");
    for (row, e) in rows[1..]
        .iter()
        .zip(std::iter::once(&s.full).chain(&s.layers))
    {
        let name = e.layer.map_or("all".to_string(), |l| l.to_string());
        assert_eq!(row[0], name);
        close(row[1].parse().unwrap(), e.score, "csv score");
        close(row[2].parse().unwrap(), e.contribution.unwrap(), "csv C");
        let want = format!(
            "| {name} | {:.4} | {:.4} |",
            e.score,
            e.contribution.unwrap()
        );
        assert!(md.contains(&want), "report.md lacks {want}:\n{md}");
        assert!(e.wall_seconds > 0.0 && e.peak_rss_bytes > 1 << 20, "{e:?}");
    }
    for (e, want) in s.layers.iter().zip(
        s.layers
            .iter()
            .map(|e| (e.score - s.score_base) / (s.score_full - s.score_base)),
    ) {
        close(e.contribution.unwrap(), want, "C");
    }
    assert!(md.contains("![C_l by layer](contribution.svg)"));
    let svg = std::fs::read_to_string(dir.join("contribution.svg")).unwrap();
    assert_eq!(svg.matches("<title>").count(), s.layers.len());
}

/// The sweep, its resume, and training the layers it picks.
#[test]
fn sweep_resume_and_top_k() {
    let dir = tmp("demo");
    let d = dir.to_str().unwrap();
    // First layer 1 only, then layers 1 and 2: the full run and layer 1 are skipped.
    let (_, err) = run_ok(&sweep_args(d, "1"));
    assert!(err.contains("layer-01: score"), "{err}");
    let full_w = dir.join("runs/full/trained.safetensors");
    let l1_w = dir.join("runs/layer-01/trained.safetensors");
    let (t_full, t_l1) = (mtime(&full_w), mtime(&l1_w));
    let (_, err) = run_ok(&sweep_args(d, "1,2"));
    assert!(
        err.contains("full: finished earlier") && err.contains("skipped"),
        "{err}"
    );
    assert!(err.contains("layer-01: finished earlier"), "{err}");
    assert!(err.contains("layer-02: running"), "{err}");
    assert_eq!((mtime(&full_w), mtime(&l1_w)), (t_full, t_l1));
    let s = Sweep::read(&dir).unwrap();
    assert_eq!(
        s.layers.iter().map(|e| e.layer).collect::<Vec<_>>(),
        vec![Some(1), Some(2)]
    );
    check_outputs(&dir, &s);

    // An unfinished run (no result yet) is resumed with `engine run --resume`.
    std::fs::remove_file(dir.join("runs/layer-02/sweep-result.json")).unwrap();
    let (_, err) = run_ok(&sweep_args(d, "1,2"));
    assert!(err.contains("layer-02: resuming"), "{err}");
    assert_eq!(
        Sweep::read(&dir).unwrap().layers[1].score,
        s.layers[1].score
    );

    // Other run flags on the same directory are refused.
    let mut other = sweep_args(d, "1,2");
    other.extend(["--seed", "5"]);
    one_line_error(&other, "sweep-args.json");

    // Train the best layer of the two; with --lr-by-contribution it keeps --lr.
    let json = dir.join("sweep.json");
    let run_dir = dir.join("top1");
    let (_, err) = run_ok(&tiny_run(&[
        "run",
        "--device",
        "cpu",
        "--steps",
        "2",
        "--eval-every",
        "0",
        "--train-layer",
        "top-1",
        "--from-sweep",
        json.to_str().unwrap(),
        "--lr-by-contribution",
        "--out",
        run_dir.to_str().unwrap(),
    ]));
    let best = s.best_layers[0];
    assert!(err.contains(&format!("layers [{best}]")), "{err}");
    assert!(err.contains(&format!("{best}: x1.000")), "{err}");
    let names = trained_layers(&run_dir);
    assert_eq!(names, vec![best]);
    let (_, err) = run_ok(&tiny_run(&[
        "run",
        "--device",
        "cpu",
        "--steps",
        "1",
        "--eval-every",
        "0",
        "--train-layer",
        "top-2",
        "--from-sweep",
        d,
        "--out",
        run_dir.join("two").to_str().unwrap(),
    ]));
    assert!(err.contains("top-2"), "{err}");
    assert_eq!(trained_layers(&run_dir.join("two")), vec![1, 2]);
    one_line_error(
        &tiny_run(&[
            "run",
            "--train-layer",
            "top-3",
            "--from-sweep",
            d,
            "--out",
            d,
        ]),
        "top-3",
    );
    let _ = std::fs::remove_dir_all(&dir);
}

/// The decoder layers in a run's trained.safetensors.
fn trained_layers(run: &Path) -> Vec<usize> {
    let files =
        onelayer::weights::WeightFiles::open_files(&[run.join("trained.safetensors")]).unwrap();
    let mut layers: Vec<usize> = files
        .names()
        .filter_map(|n| {
            n.strip_prefix("model.layers.")?
                .split('.')
                .next()?
                .parse()
                .ok()
        })
        .collect();
    layers.sort_unstable();
    layers.dedup();
    layers
}

fn entry(layer: Option<usize>, score: f64, c: Option<f64>) -> Entry {
    Entry {
        layer,
        score,
        contribution: c,
        wall_seconds: 1.0,
        peak_rss_bytes: 1 << 20,
        ..Entry::default()
    }
}

fn write_sweep(path: &Path, contributions: &[f64]) {
    let s = Sweep {
        version: 1,
        model: "m".into(),
        task: "arith".into(),
        num_layers: contributions.len(),
        metric: "eval_accuracy".into(),
        score_base: 0.0,
        score_full: 1.0,
        contribution_defined: true,
        full: entry(None, 1.0, Some(1.0)),
        layers: contributions
            .iter()
            .enumerate()
            .map(|(l, &c)| entry(Some(l), c, Some(c)))
            .collect(),
        best_layers: vec![],
        run_args: vec![],
        settings: serde_json::json!({}),
        seeds: vec![],
        interval: None,
    };
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::write(path, serde_json::to_string(&s).unwrap()).unwrap();
}

/// x = [1,2,2,3] (ranks 1, 2.5, 2.5, 4) against y = [1,3,2,4]: Spearman
/// 4.5 / sqrt(4.5 * 5) = sqrt(0.9); Kendall tau-b: 5 concordant pairs, 0
/// discordant, one tied in x: 5 / sqrt(5 * 6).
#[test]
fn compare_matches_hand_computed() {
    let dir = tmp("compare");
    let (a, b) = (dir.join("a/sweep.json"), dir.join("b/sweep.json"));
    write_sweep(&a, &[0.1, 0.2, 0.2, 0.3]);
    write_sweep(&b, &[0.1, 0.3, 0.2, 0.4]);
    let out = dir.join("cmp");
    let (stdout, _) = run_ok(&[
        "sweep",
        "compare",
        a.to_str().unwrap(),
        dir.join("b").to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
    ]);
    let v: serde_json::Value = serde_json::from_str(&stdout).unwrap();
    close(v["spearman"].as_f64().unwrap(), 0.9f64.sqrt(), "spearman");
    close(
        v["kendall_tau_b"].as_f64().unwrap(),
        5.0 / 30f64.sqrt(),
        "kendall",
    );
    assert_eq!(v["key"], "contribution");
    assert_eq!((v["a"].as_str(), v["b"].as_str()), (Some("a"), Some("b")));
    assert!(out.join("compare.svg").exists() && out.join("compare.json").exists());
    // Different depths are refused.
    let c = dir.join("c/sweep.json");
    write_sweep(&c, &[0.1, 0.2, 0.3]);
    one_line_error(
        &["sweep", "compare", a.to_str().unwrap(), c.to_str().unwrap()],
        "same depth",
    );
    let _ = std::fs::remove_dir_all(&dir);
}

/// `engine sweep --seeds 2` on the reduced demo: every run twice (its own seed),
/// sweep.json with the per-seed runs, mean C, spread, 95% t-interval and the
/// distinguishable-from-best flag; report.md and sweep.csv carry them; selection
/// (`top-1`) reads the means.
#[test]
fn seeded_sweep_writes_intervals() {
    let dir = tmp("seeds");
    let d = dir.to_str().unwrap();
    let mut args = sweep_args(d, "1,2");
    args.splice(1..1, ["--seeds", "2", "--seed", "5"]);
    run_ok(&args);
    let s = Sweep::read(&dir).unwrap();
    assert_eq!(s.seeds, vec![5, 6]);
    assert!(s.interval.as_deref().unwrap().contains("t-interval"));
    for name in ["full-s5", "full-s6", "layer-01-s5", "layer-02-s6"] {
        assert!(
            dir.join("runs")
                .join(name)
                .join("sweep-result.json")
                .exists(),
            "{name}"
        );
    }
    assert_eq!(s.full.seeds.len(), 2);
    let mean_base = s.full.seeds.iter().map(|r| r.base).sum::<f64>() / 2.0;
    close(
        s.score_base,
        mean_base,
        "base is the mean of the seeds' bases",
    );
    for e in &s.layers {
        assert_eq!(e.seeds.len(), 2);
        let mean = e.seeds.iter().map(|r| r.score).sum::<f64>() / 2.0;
        close(e.score, mean, "score is the mean");
        let cs: Vec<f64> = e.seeds.iter().filter_map(|r| r.contribution).collect();
        if cs.len() == 2 {
            let [lo, hi] = e
                .contribution_ci95
                .expect("two defined seeds give an interval");
            let m = e.contribution.unwrap();
            close(m, (cs[0] + cs[1]) / 2.0, "C is the mean");
            assert!(lo <= m && m <= hi);
            // t(0.975, 1) = 12.706: half-width 12.706 * sd / sqrt(2).
            let sd = (cs[0] - cs[1]).abs() / 2f64.sqrt();
            close(hi - m, 12.706 * sd / 2f64.sqrt(), "t-interval half-width");
        }
    }
    let md = std::fs::read_to_string(dir.join("report.md")).unwrap();
    assert!(
        md.contains("95% interval") && md.contains("distinguishable from the best"),
        "{md}"
    );
    let csv = std::fs::read_to_string(dir.join("sweep.csv")).unwrap();
    assert!(csv
        .lines()
        .next()
        .unwrap()
        .ends_with("distinguishable_from_best,seeds"));
    assert!(std::fs::read_to_string(dir.join("contribution.svg"))
        .unwrap()
        .contains("2 seeds"));
    // --seed after -- is the sweep's own with --seeds.
    let mut bad = sweep_args(d, "1");
    bad.splice(1..1, ["--seeds", "2"]);
    bad.extend(["--seed", "3"]);
    one_line_error(&bad, "--seed");
    let _ = std::fs::remove_dir_all(&dir);
}

/// Two seeded sweeps: the rank correlation comes with a bootstrap interval over the
/// seeds; identical sweeps give an interval at 1.
#[test]
fn compare_of_seeded_sweeps_has_an_interval() {
    let dir = tmp("compare-seeds");
    let seeded = |path: &Path, shift: f64| {
        let run = |seed: u64, c: f64| onelayer::sweep::SeedRun {
            seed,
            score: c,
            base: 0.0,
            contribution: Some(c),
            run_dir: String::new(),
        };
        let layers: Vec<Entry> = (0..4)
            .map(|l| {
                let cs: Vec<f64> = (0..3).map(|k| l as f64 * 0.2 + shift * k as f64).collect();
                Entry {
                    seeds: cs
                        .iter()
                        .enumerate()
                        .map(|(k, &c)| run(k as u64, c))
                        .collect(),
                    ..entry(Some(l), cs[1], Some(cs[1]))
                }
            })
            .collect();
        let s = Sweep {
            version: 1,
            model: "m".into(),
            task: "arith".into(),
            num_layers: 4,
            metric: "eval_accuracy".into(),
            score_base: 0.0,
            score_full: 1.0,
            contribution_defined: true,
            full: entry(None, 1.0, Some(1.0)),
            layers,
            best_layers: vec![],
            run_args: vec![],
            settings: serde_json::json!({}),
            seeds: vec![0, 1, 2],
            interval: None,
        };
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, serde_json::to_string(&s).unwrap()).unwrap();
    };
    let (a, b) = (dir.join("a/sweep.json"), dir.join("b/sweep.json"));
    seeded(&a, 0.01);
    seeded(&b, 0.02);
    let (stdout, _) = run_ok(&[
        "sweep",
        "compare",
        a.to_str().unwrap(),
        b.to_str().unwrap(),
        "--out",
        dir.join("cmp").to_str().unwrap(),
    ]);
    let v: serde_json::Value = serde_json::from_str(&stdout).unwrap();
    let ci = v["spearman_ci95"].as_array().expect("an interval");
    assert!((ci[0].as_f64().unwrap() - 1.0).abs() < 1e-9, "{v}");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn bad_input_is_one_line() {
    let dir = tmp("bad");
    std::fs::create_dir_all(&dir).unwrap();
    let bad = dir.join("bad.json");
    std::fs::write(
        &bad,
        "{\"num_layers\": 4, \"layers\": [{\"layer\": \"x\"}]}",
    )
    .unwrap();
    let b = bad.to_str().unwrap();
    let d = dir.to_str().unwrap();
    let out = dir.join("o");
    let o = out.to_str().unwrap();
    one_line_error(
        &[
            "run",
            "--train-layer",
            "top-1",
            "--from-sweep",
            b,
            "--out",
            o,
        ],
        "bad.json",
    );
    one_line_error(&["sweep", "compare", b, b], "bad.json");
    one_line_error(
        &["run", "--train-layer", "top-2", "--out", o],
        "--from-sweep",
    );
    one_line_error(&["run", "--lr-by-contribution", "--out", o], "--from-sweep");
    let missing = dir.join("missing.json");
    one_line_error(
        &[
            "run",
            "--train-layer",
            "top-1",
            "--from-sweep",
            missing.to_str().unwrap(),
            "--out",
            o,
        ],
        "missing.json",
    );
    one_line_error(&["sweep", "--layers", "8", "--out", d], "--layers");
    one_line_error(
        &[
            "sweep",
            "--model",
            "random:tiny",
            "--layers",
            "4",
            "--out",
            d,
        ],
        "--layers",
    );
    one_line_error(
        &["sweep", "--out", d, "--", "--train-layer", "2"],
        "--train-layer",
    );
    let _ = std::fs::remove_dir_all(&dir);
}

/// A layer's learning-rate multiplier scales its update and nothing else: with
/// AdamW the first step moves each parameter by about lr * sign(g), so layer 2 at
/// x0.5 moves half as far; layer 1 (x1) matches a run without multipliers bit for
/// bit.
#[test]
fn lr_multiplier_scales_one_layer() {
    use onelayer::backend::cpu::CpuBackend;
    use onelayer::config::builtin;
    use onelayer::model::Model;
    use onelayer::train::{AdamW, Optimizer, Rollout, TrainConfig, TrainLayers, Trainer};
    let cfg = builtin("tiny").unwrap();
    let rollouts: Vec<Rollout> = (0..4)
        .map(|i| Rollout {
            group: "g".into(),
            prompt_ids: vec![3, 4, 5 + i],
            completion_ids: vec![7, 8 + i, 9],
            reward: i as f64,
            old_logprobs: None,
            ref_logprobs: None,
            advantage: None,
        })
        .collect();
    let train = TrainConfig {
        optimizer: Optimizer::AdamW(AdamW {
            lr: 1e-3,
            ..AdamW::default()
        }),
        ..TrainConfig::default()
    };
    let step = |layers: TrainLayers| {
        let model = Model::random(cfg.clone(), CpuBackend::<f32>::new(), 7).unwrap();
        let mut t = Trainer::new(model, &layers, train.clone()).unwrap();
        t.step(&rollouts).unwrap();
        t.trained_params().unwrap()
    };
    let plain = TrainLayers::parse("1,2", cfg.num_hidden_layers).unwrap();
    let before = {
        let model = Model::random(cfg.clone(), CpuBackend::<f32>::new(), 7).unwrap();
        Trainer::new(model, &plain, train.clone())
            .unwrap()
            .trained_params()
            .unwrap()
    };
    let unscaled = step(plain.clone());
    let scaled = step(
        plain
            .with_lr_scales(|l| if l == 2 { 0.5 } else { 1.0 })
            .unwrap(),
    );
    let (mut moved1, mut moved2, mut half2) = (0.0f64, 0.0f64, 0.0f64);
    for (((name, _, p0), (_, _, pu)), (_, _, ps)) in before.iter().zip(&unscaled).zip(&scaled) {
        let dist = |a: &[f32], b: &[f32]| {
            a.iter()
                .zip(b)
                .map(|(x, y)| (*x as f64 - *y as f64).abs())
                .sum::<f64>()
        };
        if name.starts_with("model.layers.1.") {
            assert_eq!(pu, ps, "{name}: x1 must match the unscaled run exactly");
            moved1 += dist(p0, pu);
        } else {
            moved2 += dist(p0, pu);
            half2 += dist(p0, ps);
        }
    }
    assert!(moved1 > 0.0 && moved2 > 0.0);
    let ratio = half2 / moved2;
    assert!(
        (ratio - 0.5).abs() < 0.01,
        "layer 2 moved {ratio} of the unscaled step"
    );
}
