//! The written results of a sweep: `sweep.csv` (one row per run, the base model
//! first, values in full precision) and `report.md` (the same table rounded to 4
//! decimals, the chart, the best layers, the settings and the commands that train
//! the picked layers).

use super::{Entry, Sweep};
use std::fmt::Write;

/// The CSV header.
pub const CSV_HEADER: &str = "layer,score,contribution,wall_seconds,peak_rss_mib";
/// The columns a seeded sweep adds.
pub const CSV_SEED_COLUMNS: &str =
    "contribution_sd,contribution_ci95_lo,contribution_ci95_hi,distinguishable_from_best,seeds";

fn mib(bytes: u64) -> f64 {
    bytes as f64 / (1u64 << 20) as f64
}

fn opt(v: Option<f64>) -> String {
    v.map(|v| v.to_string()).unwrap_or_default()
}

fn name(e: &Entry) -> String {
    e.layer.map_or_else(|| "all".into(), |l| l.to_string())
}

/// `sweep.csv`: `base`, `all` (the full run), then every swept layer. The base row
/// has no run of its own (its score is the full run's step-0 evaluation); its C is
/// 0 by definition. Empty cells where C is undefined.
pub fn csv(s: &Sweep) -> String {
    let seeded = s.seeds.len() > 1;
    let mut out = if seeded {
        format!("{CSV_HEADER},{CSV_SEED_COLUMNS}\n")
    } else {
        format!("{CSV_HEADER}\n")
    };
    let c0 = s.contribution_defined.then_some(0.0);
    let _ = write!(out, "base,{},{},,", s.score_base, opt(c0));
    out.push_str(if seeded { ",,,,,\n" } else { "\n" });
    for e in std::iter::once(&s.full).chain(&s.layers) {
        let _ = write!(
            out,
            "{},{},{},{},{:.3}",
            name(e),
            e.score,
            opt(e.contribution),
            e.wall_seconds,
            mib(e.peak_rss_bytes)
        );
        if seeded {
            let ci = e.contribution_ci95;
            let _ = write!(
                out,
                ",{},{},{},{},{}",
                opt(e.contribution_sd),
                opt(ci.map(|c| c[0])),
                opt(ci.map(|c| c[1])),
                e.distinguishable_from_best
                    .map(|d| d.to_string())
                    .unwrap_or_default(),
                e.seeds.len()
            );
        }
        out.push('\n');
    }
    out
}

fn c_cell(c: Option<f64>) -> String {
    c.map_or_else(|| "undefined".into(), |c| format!("{c:.4}"))
}

/// `report.md`; `sweep_json` is how the report names the sweep file in commands.
pub fn markdown(s: &Sweep, sweep_json: &str, chart: &str) -> String {
    let mut md = String::new();
    let _ = writeln!(md, "# Layer sweep: {} on {}\n", s.model, s.task);
    let _ = writeln!(
        md,
        "Contribution of layer l: C_l = (score_l - score_base) / (score_full - score_base), \
         where score is the final held-out `{}` of an RL run that trains layer l alone, \
         score_full that of the run training every layer (`--train-layer all`) and \
         score_base that of the model before training. Every run had the same flags, \
         seeds, budget and data order; only `--train-layer` differed.\n",
        s.metric
    );
    if !s.contribution_defined {
        let _ = writeln!(
            md,
            "**C_l is undefined**: the full-parameter run scored {:.4} against the base \
             model's {:.4}, no gain to share out. The table and the chart show the \
             scores; the layers are ranked by score.\n",
            s.score_full, s.score_base
        );
    }
    if s.seeds.len() > 1 {
        seeded_table(&mut md, s);
    } else {
        plain_table(&mut md, s);
    }
    let _ = writeln!(md, "\n![C_l by layer]({chart})\n");
    best_and_settings(&mut md, s, sweep_json);
    md
}

/// The table of a seeded sweep: means over the seeds, the spread and interval of
/// C, and whether each layer is distinguishable from the best one.
fn seeded_table(md: &mut String, s: &Sweep) {
    let _ = writeln!(
        md,
        "Every run was repeated over {} seeds ({:?}: rollout sampling and data order); \
         scores and C_l are means over the seeds. Intervals: {}.\n",
        s.seeds.len(),
        s.seeds,
        s.interval.as_deref().unwrap_or("95% t-interval")
    );
    let (def, undef): (Vec<_>, Vec<_>) =
        s.full.seeds.iter().partition(|r| r.contribution.is_some());
    if !undef.is_empty() {
        let list = |v: &[&super::SeedRun]| {
            v.iter()
                .map(|r| format!("{} (full {:.4}, base {:.4})", r.seed, r.score, r.base))
                .collect::<Vec<_>>()
                .join(", ")
        };
        let _ = writeln!(
            md,
            "C is defined only where the full run improved on its base: seeds {}; not for \
             seeds {}, which the means and intervals of C leave out (their scores are in \
             the score means).\n",
            if def.is_empty() {
                "none".into()
            } else {
                list(&def)
            },
            list(&undef)
        );
    }
    md.push_str("| layer | score (mean) | C_l (mean) | sd | 95% interval | distinguishable from the best |\n");
    md.push_str("|---|---|---|---|---|---|\n");
    let _ = writeln!(md, "| base | {:.4} | | | | |", s.score_base);
    let _ = writeln!(
        md,
        "| all | {:.4} | {} | | | |",
        s.score_full,
        c_cell(s.full.contribution)
    );
    for e in &s.layers {
        let ci = e
            .contribution_ci95
            .map_or_else(String::new, |[a, b]| format!("[{a:.3}, {b:.3}]"));
        let dist = match e.distinguishable_from_best {
            Some(true) => "yes",
            Some(false) => "no",
            None if s.best_layers.first() == e.layer.as_ref() => "(best)",
            None => "n/a",
        };
        let _ = writeln!(
            md,
            "| {} | {:.4} | {} | {} | {ci} | {dist} |",
            name(e),
            e.score,
            c_cell(e.contribution),
            e.contribution_sd
                .map_or_else(String::new, |v| format!("{v:.3}")),
        );
    }
    let tied: Vec<String> = s
        .layers
        .iter()
        .filter(|e| e.distinguishable_from_best == Some(false))
        .filter_map(|e| e.layer.map(|l| l.to_string()))
        .collect();
    if let Some(best) = s.best_layers.first() {
        let _ = writeln!(
            md,
            "\nBest layer by mean C: {best}. Not distinguishable from it at 95%: {}.",
            if tied.is_empty() {
                "none".to_string()
            } else {
                tied.join(", ")
            }
        );
    }
}

fn plain_table(md: &mut String, s: &Sweep) {
    md.push_str("| layer | score | C_l | wall time (s) | peak RSS (MiB) |\n");
    md.push_str("|---|---|---|---|---|\n");
    let c0 = s.contribution_defined.then_some(0.0);
    let _ = writeln!(md, "| base | {:.4} | {} | | |", s.score_base, c_cell(c0));
    for e in std::iter::once(&s.full).chain(&s.layers) {
        let _ = writeln!(
            md,
            "| {} | {:.4} | {} | {:.1} | {:.0} |",
            name(e),
            e.score,
            c_cell(e.contribution),
            e.wall_seconds,
            mib(e.peak_rss_bytes)
        );
    }
}

fn best_and_settings(md: &mut String, s: &Sweep, sweep_json: &str) {
    md.push_str("## Best layers\n\n");
    for (i, &l) in s.best_layers.iter().take(5).enumerate() {
        if let Some(e) = s.layers.iter().find(|e| e.layer == Some(l)) {
            let _ = writeln!(
                md,
                "{}. layer {l}: C = {}, score {:.4}",
                i + 1,
                c_cell(e.contribution),
                e.score
            );
        }
    }
    let k = s.best_layers.len().min(2);
    let args = s.run_args.join(" ");
    if s.contribution_defined {
        let _ = writeln!(
            md,
            "\nTrain the {k} best layers (`top-{k}`), each at `--lr` scaled by its \
             contribution (lr_l = lr * max(C_l, 0) / max C over the trained layers):\n\n\
             ```sh\nengine run --train-layer top-{k} --from-sweep {sweep_json} --lr-by-contribution {args}\n```\n"
        );
    } else {
        md.push_str("\n`--train-layer top-K --from-sweep` needs defined contributions: rerun the sweep with a budget that moves the full run's score.\n\n");
    }
    md.push_str("## Settings\n\n");
    let _ = writeln!(
        md,
        "Shared `engine run` flags: `{}`\n",
        if args.is_empty() { "(none)" } else { &args }
    );
    md.push_str("Resolved settings of the full run (its config.toml):\n\n```toml\n");
    if let Some(map) = s.settings.as_object() {
        for (k, v) in map {
            let _ = writeln!(md, "{k} = {v}");
        }
    }
    md.push_str("```\n\n## Notes\n\n");
    md.push_str(
        "- Peak memory is the peak resident set size of each run's process (wait4). \
         On a GPU it covers host memory only; the device memory of a run is not in it.\n",
    );
    md.push_str(
        "- Wall time is that of the process that finished the run (a resumed run \
         counts its last part only).\n",
    );
}

#[cfg(test)]
mod tests {
    use super::super::tests::sweep;
    use super::*;

    #[test]
    fn csv_and_markdown_agree() {
        let s = sweep(0.25, 0.75, &[(0, 0.5), (1, 0.25)]);
        let csv = csv(&s);
        let lines: Vec<&str> = csv.lines().collect();
        assert_eq!(lines[0], CSV_HEADER);
        assert_eq!(lines[1], "base,0.25,0,,");
        assert!(lines[2].starts_with("all,0.75,1,1,1.000"), "{}", lines[2]);
        assert!(lines[3].starts_with("0,0.5,0.5,"), "{}", lines[3]);
        let md = markdown(&s, "sweep.json", "contribution.svg");
        assert!(md.contains("| 0 | 0.5000 | 0.5000 |"), "{md}");
        assert!(md.contains("| 1 | 0.2500 | 0.0000 |"), "{md}");
        assert!(md.contains("--train-layer top-2 --from-sweep sweep.json"));
    }

    #[test]
    fn undefined_is_said() {
        let s = sweep(0.5, 0.5, &[(0, 0.5)]);
        assert!(csv(&s).lines().nth(2).unwrap().starts_with("all,0.5,,"));
        let md = markdown(&s, "sweep.json", "c.svg");
        assert!(md.contains("C_l is undefined") && md.contains("| all | 0.5000 | undefined |"));
    }
}
