//! Training the layers a sweep picks (`engine run --from-sweep DIR/sweep.json`).
//!
//! - `--train-layer top-K`: the K swept layers of highest contribution C (ties: the
//!   lower layer). K larger than the number of swept layers is an error, and so is
//!   top-K without --from-sweep (`TrainLayers::parse` names both flags).
//! - `--lr-by-contribution`: each trained layer l gets the learning rate
//!
//!       lr_l = lr * max(C_l, 0) / max_{k in S} C_k
//!
//!   over the trained set S: the best trained layer keeps `--lr`, the others
//!   train in proportion to how much of the full-RL gain they recover alone, and a
//!   layer whose C is <= 0 (training it alone did not help) gets 0 and stays
//!   frozen. It needs a sweep with defined contributions, every trained layer in it,
//!   and at least one trained layer with C > 0.
//!
//! Only `layers[].layer` and `layers[].contribution` (and `num_layers`) of the
//! sweep file are read; anything else wrong with it is a one-line error naming the
//! file.

use crate::rl::RunSettings;
use crate::train::TrainLayers;
use crate::{Error, Result};
use serde::Deserialize;
use std::path::Path;

/// What selection reads of a sweep.json.
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct Picks {
    pub num_layers: usize,
    pub layers: Vec<Pick>,
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct Pick {
    pub layer: usize,
    pub contribution: Option<f64>,
}

/// Read and check a sweep.json (or a sweep directory holding one).
pub fn read_picks(path: &Path) -> Result<Picks> {
    let path = if path.is_dir() {
        path.join("sweep.json")
    } else {
        path.to_path_buf()
    };
    let text = std::fs::read_to_string(&path).map_err(|e| Error::file(&path, e))?;
    let p: Picks = serde_json::from_str(&text)
        .map_err(|e| Error::file(&path, format!("not a sweep.json ({e})")))?;
    let bad = |m: String| Err(Error::file(&path, m));
    if p.layers.is_empty() {
        return bad("lists no layer".into());
    }
    let mut seen = vec![false; p.num_layers];
    for e in &p.layers {
        if e.layer >= p.num_layers {
            return bad(format!(
                "layer {} is out of range for num_layers {}",
                e.layer, p.num_layers
            ));
        }
        if std::mem::replace(&mut seen[e.layer], true) {
            return bad(format!("layer {} is listed twice", e.layer));
        }
        if e.contribution.is_some_and(|c| !c.is_finite()) {
            return bad(format!("layer {}: contribution is not finite", e.layer));
        }
    }
    Ok(p)
}

/// The `k` layers of highest contribution, highest first.
pub fn top_k(p: &Picks, k: usize, file: &Path) -> Result<Vec<usize>> {
    if k > p.layers.len() {
        return Err(Error::invalid(format!(
            "--train-layer top-{k}: {} sweeps only {} layer(s)",
            file.display(),
            p.layers.len()
        )));
    }
    let mut v: Vec<(f64, usize)> = Vec::with_capacity(p.layers.len());
    for e in &p.layers {
        let c = e.contribution.ok_or_else(|| undefined(file))?;
        v.push((c, e.layer));
    }
    v.sort_by(|a, b| b.0.total_cmp(&a.0).then(a.1.cmp(&b.1)));
    Ok(v.into_iter().take(k).map(|(_, l)| l).collect())
}

fn undefined(file: &Path) -> Error {
    Error::file(
        file,
        "contributions are undefined (the full run scored the same as the base model)",
    )
}

/// `lr_l / lr` for each of `layers` (the rule in the module docs).
pub fn lr_scales(p: &Picks, layers: &[usize], file: &Path) -> Result<Vec<f32>> {
    let mut c = Vec::with_capacity(layers.len());
    for &l in layers {
        let e = p.layers.iter().find(|e| e.layer == l).ok_or_else(|| {
            Error::file(
                file,
                format!("--lr-by-contribution: layer {l} is not in the sweep"),
            )
        })?;
        c.push(e.contribution.ok_or_else(|| undefined(file))?);
    }
    let best = c.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
    if best <= 0.0 {
        return Err(Error::file(
            file,
            format!(
                "--lr-by-contribution: no trained layer of {layers:?} has a positive contribution"
            ),
        ));
    }
    Ok(c.iter().map(|&x| (x.max(0.0) / best) as f32).collect())
}

/// The trained layers of a run: `--train-layer` (`top-K` resolved with
/// `--from-sweep`) and, with `--lr-by-contribution`, each layer's learning-rate
/// multiplier. The hook `run_rl` calls instead of `TrainLayers::parse`.
pub fn train_layers(s: &RunSettings, spec: &str, num_layers: usize) -> Result<TrainLayers> {
    let by_c = s.lr_by_contribution.unwrap_or(false);
    let Some(file) = &s.from_sweep else {
        if by_c {
            return Err(Error::invalid(
                "--lr-by-contribution needs --from-sweep DIR/sweep.json",
            ));
        }
        return TrainLayers::parse(spec, num_layers);
    };
    let p = read_picks(file)?;
    if p.num_layers != num_layers {
        return Err(Error::file(
            file,
            format!(
                "--from-sweep: a sweep of a {}-layer model; this model has {num_layers} layers",
                p.num_layers
            ),
        ));
    }
    let layers = match TrainLayers::top_k(spec)? {
        Some(k) => {
            let picked = top_k(&p, k, file)?;
            eprintln!(
                "--train-layer top-{k}: layers {picked:?} (highest contribution in {})",
                file.display()
            );
            TrainLayers::from_layers(picked, num_layers)?
        }
        None => TrainLayers::parse(spec, num_layers)?,
    };
    if !by_c {
        return Ok(layers);
    }
    let scales = lr_scales(&p, layers.layers(), file)?;
    let table: Vec<String> = layers
        .layers()
        .iter()
        .zip(&scales)
        .map(|(l, s)| format!("{l}: x{s:.3}"))
        .collect();
    eprintln!(
        "--lr-by-contribution: learning-rate multipliers {}",
        table.join(", ")
    );
    let all = layers.layers().to_vec();
    layers.with_lr_scales(|l| scales[all.iter().position(|&x| x == l).unwrap_or(0)])
}

#[cfg(test)]
mod tests {
    use super::*;

    fn picks(c: &[Option<f64>]) -> Picks {
        Picks {
            num_layers: c.len(),
            layers: c
                .iter()
                .enumerate()
                .map(|(layer, &contribution)| Pick {
                    layer,
                    contribution,
                })
                .collect(),
        }
    }

    #[test]
    fn top_k_orders_by_contribution() {
        let f = Path::new("s.json");
        let p = picks(&[Some(0.1), Some(0.9), Some(-0.2), Some(0.9), Some(0.5)]);
        assert_eq!(top_k(&p, 3, f).unwrap(), vec![1, 3, 4]);
        assert_eq!(top_k(&p, 5, f).unwrap(), vec![1, 3, 4, 0, 2]);
        let e = top_k(&p, 6, f).unwrap_err().to_string();
        assert!(e.contains("top-6") && e.contains("s.json"), "{e}");
        let e = top_k(&picks(&[None, None]), 1, f).unwrap_err().to_string();
        assert!(e.contains("undefined"), "{e}");
    }

    /// lr_l = lr * max(C_l, 0) / max C over the trained layers.
    #[test]
    fn lr_rule() {
        let f = Path::new("s.json");
        let p = picks(&[Some(0.2), Some(0.8), Some(-0.4), Some(0.4)]);
        assert_eq!(lr_scales(&p, &[1, 3], f).unwrap(), vec![1.0, 0.5]);
        assert_eq!(lr_scales(&p, &[0, 1, 2], f).unwrap(), vec![0.25, 1.0, 0.0]);
        assert_eq!(lr_scales(&p, &[0], f).unwrap(), vec![1.0]);
        assert!(lr_scales(&p, &[2], f).is_err());
        let e = lr_scales(&picks(&[Some(0.5)]), &[0, 1], f).unwrap_err();
        assert!(e.to_string().contains("layer 1"), "{e}");
    }

    #[test]
    fn needs_the_sweep() {
        let s = RunSettings {
            lr_by_contribution: Some(true),
            ..RunSettings::default()
        };
        let e = train_layers(&s, "1", 4).unwrap_err().to_string();
        assert!(e.contains("--lr-by-contribution") && e.contains("--from-sweep"));
        let e = train_layers(&RunSettings::default(), "top-2", 4)
            .unwrap_err()
            .to_string();
        assert!(e.contains("top-2") && e.contains("--from-sweep"), "{e}");
        assert_eq!(
            train_layers(&RunSettings::default(), "1-2", 4)
                .unwrap()
                .layers(),
            &[1, 2]
        );
    }
}
