//! `engine sweep`: the contribution of every layer (`onelayer::sweep`).
//!
//! `engine sweep [--model M] [--task T] [--data F] [--eval-data F] [--layers all|16-20|1,5,9]
//! [--steps K] [--device D | --devices cuda:0,cuda:1] [--parallel N] --out DIR [-- RUN FLAGS]`
//! runs the full-parameter baseline (`--train-layer all`) and one single-layer run
//! per requested layer, each a child `engine run` with the same flags (so the same
//! seeds, budget and data order; only `--train-layer` differs), then writes
//! DIR/sweep.json, sweep.csv, contribution.svg and report.md. Any other `engine run`
//! flag goes after `--` and is passed to every run unchanged (`-- --lr 1e-5
//! --group-size 8`); the flags the sweep sets itself are refused there. Running the
//! same command again skips finished runs and resumes unfinished ones; other run
//! flags on an existing DIR are an error.
//!
//! `engine sweep compare A B [--out DIR]`: Spearman and Kendall rank correlation of
//! two sweeps' layer rankings, printed as JSON and written with a side-by-side chart
//! to DIR/compare.json and DIR/compare.svg.

use onelayer::config::{builtin, ModelConfig};
use onelayer::device::Device;
use onelayer::resolve::resolve_model;
use onelayer::rl::RunSettings;
use onelayer::sweep::compare::{compare, compare_svg, label};
use onelayer::sweep::runner::{self, run_all, Job, Plan};
use onelayer::sweep::{chart, finish, finish_seeded, report, Entry, SeedRun, Sweep};
use onelayer::train::TrainLayers;
use onelayer::{Error, Result};
use std::path::{Path, PathBuf};

const AFTER_HELP: &str = "\
Runs the full-parameter baseline (--train-layer all) and one run per layer, each a child \
`engine run` in DIR/runs/NAME (log in DIR/logs/NAME.log) with the same flags, so the same \
seeds, budget and data order. Other `engine run` flags go after -- and reach every run \
unchanged, e.g. `engine sweep --steps 50 --out s -- --lr 1e-5 --group-size 8`; the flags \
the sweep sets itself (--model --task --data --eval-data --steps --device --out \
--train-layer --resume --config --rollouts --from-sweep --lr-by-contribution) are refused \
there. Score: each run's final held-out eval_accuracy; base: the step-0 evaluation. \
C_l = (score_l - base) / (score_full - base), null when score_full == base. \
Writes DIR/sweep.json, sweep.csv, contribution.svg, report.md. The same command again \
skips finished runs and resumes unfinished ones; other run flags on an existing DIR are \
an error. Then: engine run --train-layer top-K --from-sweep DIR/sweep.json \
[--lr-by-contribution].";

#[derive(clap::Args, Debug)]
#[command(
    args_conflicts_with_subcommands = true,
    subcommand_negates_reqs = true,
    after_help = AFTER_HELP
)]
pub struct Args {
    #[command(subcommand)]
    pub command: Option<SweepCommand>,
    #[command(flatten)]
    pub sweep: SweepArgs,
}

#[derive(clap::Subcommand, Debug)]
pub enum SweepCommand {
    /// Rank correlation (Spearman, Kendall tau-b) of two sweeps' layer rankings,
    /// with a side-by-side chart.
    Compare(CompareArgs),
}

#[derive(clap::Args, Debug)]
pub struct CompareArgs {
    /// A sweep directory or its sweep.json.
    pub a: PathBuf,
    /// The other sweep.
    pub b: PathBuf,
    /// Where compare.json and compare.svg go.
    #[arg(long, default_value = ".")]
    pub out: PathBuf,
}

#[derive(clap::Args, Debug)]
pub struct SweepArgs {
    /// Model directory, HF id or alias. Omit for the built-in demo model (arith task).
    #[arg(long)]
    pub model: Option<String>,
    /// gsm8k | math | code | arith (default: as `engine run`)
    #[arg(long)]
    pub task: Option<String>,
    /// Training problems (JSONL).
    #[arg(long)]
    pub data: Option<PathBuf>,
    /// Held-out problems: every run's score is its final accuracy on them.
    #[arg(long)]
    pub eval_data: Option<PathBuf>,
    /// Layers to sweep: all, 16-20, 1,5,9 (the full baseline always runs).
    #[arg(long, default_value = "all")]
    pub layers: String,
    /// RL steps of every run (default: as `engine run`).
    #[arg(long)]
    pub steps: Option<usize>,
    /// Device of every run: auto | cpu | cuda | cuda:N | emu.
    #[arg(long, default_value = "auto")]
    pub device: String,
    /// One run at a time on each of these devices (e.g. cuda:0,cuda:1,cuda:2).
    #[arg(long, value_delimiter = ',')]
    pub devices: Vec<String>,
    /// Runs at once (default 1, or one per --devices entry). With a CUDA --device,
    /// worker i uses cuda:i (one process per GPU).
    #[arg(long)]
    pub parallel: Option<usize>,
    /// The sweep directory (runs/, logs/, sweep.json, sweep.csv, report.md, ...).
    #[arg(long, required = true)]
    pub out: Option<PathBuf>,
    /// Repeat every run (the full baseline and each layer) over K seeds (rollout
    /// sampling and data order): means, spreads and 95% t-intervals of C.
    #[arg(long, default_value_t = 1)]
    pub seeds: usize,
    /// The first seed of --seeds (the runs use seed, seed + 1, ...).
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Further `engine run` flags for every run, after `--` (e.g. -- --lr 1e-5 --seed 3).
    #[arg(last = true)]
    pub run_args: Vec<String>,
}

/// `engine run` flags a sweep sets itself.
const OWN_FLAGS: &[&str] = &[
    "--model",
    "--task",
    "--data",
    "--eval-data",
    "--steps",
    "--device",
    "--out",
    "--train-layer",
    "--resume",
    "--config",
    "--rollouts",
    "--from-sweep",
    "--lr-by-contribution",
];

pub fn run(a: Args) -> Result<()> {
    match a.command {
        Some(SweepCommand::Compare(c)) => run_compare(c),
        None => run_sweep(a.sweep),
    }
}

fn run_compare(c: CompareArgs) -> Result<()> {
    let (sa, sb) = (Sweep::read(&c.a)?, Sweep::read(&c.b)?);
    let (la, mut lb) = (label(&c.a), label(&c.b));
    if lb == la {
        lb = format!("{lb} (B)");
    }
    let cmp = compare(&sa, &sb, (&la, &lb))?;
    std::fs::create_dir_all(&c.out).map_err(|e| Error::file(&c.out, e))?;
    let json = serde_json::to_string_pretty(&cmp).expect("comparison serialises");
    write(&c.out.join("compare.json"), &json)?;
    write(&c.out.join("compare.svg"), &compare_svg(&cmp))?;
    println!(
        "{}",
        serde_json::to_string(&cmp).expect("comparison serialises")
    );
    eprintln!(
        "wrote {} and {}",
        c.out.join("compare.json").display(),
        c.out.join("compare.svg").display()
    );
    Ok(())
}

fn write(path: &Path, text: &str) -> Result<()> {
    std::fs::write(path, text).map_err(|e| Error::file(path, e))
}

/// The shared `engine run` flags: the sweep's own, then those after `--`.
fn run_args(a: &SweepArgs) -> Result<Vec<String>> {
    for t in &a.run_args {
        let name = t.split('=').next().unwrap_or("");
        if OWN_FLAGS.contains(&name) || (name == "--seed" && a.seeds > 1) {
            return Err(Error::invalid(format!(
                "engine sweep: {name} after -- is set by the sweep itself (give the sweep's own flag before --, or drop it)"
            )));
        }
    }
    let mut v = Vec::new();
    let mut push = |flag: &str, val: Option<String>| {
        if let Some(val) = val {
            v.extend([flag.to_string(), val]);
        }
    };
    push("--model", a.model.clone());
    push("--task", a.task.clone());
    push("--data", a.data.as_ref().map(|p| p.display().to_string()));
    push(
        "--eval-data",
        a.eval_data.as_ref().map(|p| p.display().to_string()),
    );
    push("--steps", a.steps.map(|s| s.to_string()));
    v.extend(a.run_args.iter().cloned());
    Ok(v)
}

/// One device per worker.
fn devices(a: &SweepArgs) -> Result<Vec<String>> {
    for d in std::iter::once(&a.device).chain(&a.devices) {
        d.parse::<Device>()?;
    }
    if a.parallel == Some(0) {
        return Err(Error::invalid("--parallel must be at least 1"));
    }
    if !a.devices.is_empty() {
        let n = a.parallel.unwrap_or(a.devices.len());
        return Ok((0..n)
            .map(|i| a.devices[i % a.devices.len()].clone())
            .collect());
    }
    let n = a.parallel.unwrap_or(1);
    let dev: Device = a.device.parse()?;
    Ok(match (n, if n > 1 { dev.resolve() } else { dev }) {
        (1, _) => vec![a.device.clone()],
        (n, Device::Cuda(first)) => (0..n).map(|i| format!("cuda:{}", first + i)).collect(),
        (n, Device::Cpu) => vec!["cpu".into(); n],
        (n, _) => vec![a.device.clone(); n],
    })
}

fn num_layers(model: Option<&str>) -> Result<usize> {
    match model {
        None => Ok(ModelConfig::from_file(
            &onelayer::model::base::base_dir()?.join("config.json"),
        )?
        .num_hidden_layers),
        Some(m) if m.starts_with("random:") => builtin(&m["random:".len()..])
            .map(|c| c.num_hidden_layers)
            .ok_or_else(|| Error::invalid(format!("--model {m}: no built-in shape of that name"))),
        Some(m) => {
            Ok(ModelConfig::from_file(&resolve_model(m)?.join("config.json"))?.num_hidden_layers)
        }
    }
}

/// Refuse to mix runs made with other flags into an existing sweep directory (one
/// with a started run; before that the flags may still change).
fn check_args(dir: &Path, args: &[String]) -> Result<()> {
    let path = dir.join("sweep-args.json");
    let want = serde_json::json!({ "run_args": args });
    let started = std::fs::read_dir(dir.join("runs"))
        .map(|d| d.flatten().any(|e| e.path().join("config.toml").exists()))
        .unwrap_or(false);
    if path.exists() && started {
        let text = std::fs::read_to_string(&path).map_err(|e| Error::file(&path, e))?;
        let had: serde_json::Value =
            serde_json::from_str(&text).map_err(|e| Error::file(&path, e))?;
        if had != want {
            return Err(Error::file(
                &path,
                format!(
                    "this sweep's runs used the flags {}, not {}: rerun with those, or use another --out",
                    had["run_args"], want["run_args"]
                ),
            ));
        }
        return Ok(());
    }
    std::fs::create_dir_all(dir).map_err(|e| Error::file(dir, e))?;
    write(&path, &want.to_string())
}

fn run_sweep(a: SweepArgs) -> Result<()> {
    let dir = a.out.clone().expect("clap requires --out");
    let args = run_args(&a)?;
    let devices = devices(&a)?;
    let n = num_layers(a.model.as_deref())?;
    let layers = TrainLayers::parse(&a.layers, n)
        .map_err(|e| Error::invalid(e.to_string().replacen("--train-layer", "--layers", 1)))?;
    check_args(&dir, &args)?;
    let exe = std::env::current_exe().map_err(|e| Error::invalid(format!("engine binary: {e}")))?;
    if a.seeds == 0 {
        return Err(Error::invalid("--seeds must be at least 1"));
    }
    let seeds: Vec<u64> = (0..a.seeds as u64).map(|k| a.seed + k).collect();
    let mut one = vec![Job::full()];
    one.extend(layers.layers().iter().map(|&l| Job::layer(l, n)));
    let jobs: Vec<Job> = if a.seeds == 1 {
        one
    } else {
        seeds
            .iter()
            .flat_map(|&s| one.iter().map(move |j| j.clone().seeded(s)))
            .collect()
    };
    let _ = ctrlc::set_handler(|| {
        use std::sync::atomic::Ordering::SeqCst;
        if runner::STOP.swap(true, SeqCst) {
            std::process::exit(130);
        }
        eprintln!("\nCtrl-C: the running runs save a checkpoint and stop; the same command continues the sweep");
    });
    eprintln!(
        "sweep: the full baseline and {} layer run(s){} in {}, {} at a time",
        layers.len(),
        if a.seeds > 1 {
            format!(", each over {} seeds", a.seeds)
        } else {
            String::new()
        },
        dir.display(),
        devices.len()
    );
    let plan = Plan {
        exe: &exe,
        dir: &dir,
        run_args: &args,
        devices: &devices,
    };
    let outcomes = run_all(&plan, &jobs)?;
    let per = layers.len() + 1; // runs per seed: the full baseline, then each layer
    let entry = |i: usize| Entry {
        layer: jobs[i].layer,
        score: outcomes[i].score,
        wall_seconds: outcomes[i].wall_seconds,
        peak_rss_bytes: outcomes[i].peak_rss_bytes,
        run_dir: format!("runs/{}", jobs[i].name),
        ..Entry::default()
    };
    let base_of = |i: usize| {
        outcomes[i].base_score.ok_or_else(|| {
            Error::invalid(format!(
                "sweep: {} logged no step-0 evaluation of the base model (--eval-every 0?)",
                jobs[i].name
            ))
        })
    };
    let full_dir = runner::run_dir(&dir, &jobs[0]);
    let settings = RunSettings::from_toml_file(&full_dir.join("config.toml"))?;
    let mut settings = serde_json::to_value(&settings).expect("settings serialise");
    if let Some(m) = settings.as_object_mut() {
        m.retain(|_, v| !v.is_null());
    }
    let mut sweep = Sweep {
        version: 1,
        model: a.model.clone().unwrap_or_else(|| "builtin:base".into()),
        task: settings["task"].as_str().unwrap_or("arith").to_string(),
        num_layers: n,
        metric: "eval_accuracy".into(),
        score_base: 0.0,
        score_full: 0.0,
        contribution_defined: false,
        full: entry(0),
        layers: (1..per).map(entry).collect(),
        best_layers: Vec::new(),
        run_args: args,
        settings,
        seeds: Vec::new(),
        interval: None,
    };
    let sweep = if a.seeds == 1 {
        let bases: Vec<f64> = outcomes.iter().filter_map(|o| o.base_score).collect();
        let score_base = base_of(0)?;
        if bases.iter().any(|b| (b - score_base).abs() > 1e-9) {
            eprintln!("warning: the runs' step-0 evaluations differ ({bases:?}); the full run's is the base score");
        }
        sweep.score_base = score_base;
        sweep.score_full = outcomes[0].score;
        finish(sweep)
    } else {
        for (k, &seed) in seeds.iter().enumerate() {
            let full_i = k * per;
            let base = base_of(full_i)?;
            let run = |i: usize| SeedRun {
                seed,
                score: outcomes[i].score,
                base,
                contribution: None,
                run_dir: format!("runs/{}", jobs[i].name),
            };
            sweep.full.seeds.push(run(full_i));
            for (j, e) in sweep.layers.iter_mut().enumerate() {
                e.seeds.push(run(full_i + 1 + j));
            }
        }
        let total = |pick: &dyn Fn(usize) -> bool, f: &dyn Fn(&runner::Outcome) -> f64| {
            outcomes
                .iter()
                .enumerate()
                .filter(|(i, _)| pick(*i))
                .map(|(_, o)| f(o))
                .sum::<f64>()
        };
        sweep.full.wall_seconds = total(&|i| i % per == 0, &|o| o.wall_seconds);
        for (j, e) in sweep.layers.iter_mut().enumerate() {
            e.wall_seconds = total(&|i| i % per == j + 1, &|o| o.wall_seconds);
            e.run_dir = format!("runs/{}-s*", Job::layer(e.layer.unwrap_or(0), n).name);
        }
        sweep.full.run_dir = "runs/full-s*".into();
        sweep.seeds = seeds.clone();
        finish_seeded(sweep)
    };
    let json = serde_json::to_string_pretty(&sweep).expect("sweep serialises");
    write(&dir.join("sweep.json"), &json)?;
    write(&dir.join("sweep.csv"), &report::csv(&sweep))?;
    write(
        &dir.join("contribution.svg"),
        &chart::contribution_svg(&sweep),
    )?;
    let sweep_json = dir.join("sweep.json").display().to_string();
    write(
        &dir.join("report.md"),
        &report::markdown(&sweep, &sweep_json, "contribution.svg"),
    )?;
    summary(&sweep, &dir);
    Ok(())
}

fn summary(s: &Sweep, dir: &Path) {
    eprintln!(
        "base {:.4}, full {:.4}{}",
        s.score_base,
        s.score_full,
        if s.contribution_defined {
            ""
        } else {
            " (C undefined: the full run did not improve on the base)"
        }
    );
    for e in &s.layers {
        let c = e
            .contribution
            .map_or_else(|| "undefined".into(), |c| format!("{c:+.3}"));
        eprintln!(
            "  layer {:>3}: score {:.4}  C {c}",
            e.layer.unwrap_or(0),
            e.score
        );
    }
    eprintln!(
        "best layers: {:?}; {}/sweep.json, sweep.csv, contribution.svg, report.md",
        &s.best_layers[..s.best_layers.len().min(5)],
        dir.display()
    );
}
