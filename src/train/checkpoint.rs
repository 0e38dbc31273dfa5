//! Checkpoints: `OUT/checkpoints/step-NNNNNN/` holding `state.safetensors` (the
//! trained parameters and the optimizer state, `Trainer::state`) and `meta.json`
//! (step, optimizer updates, trained layers). Written into a temporary directory
//! and renamed, so a checkpoint is either complete or absent; the last `keep` are kept.

use crate::backend::Backend;
use crate::train::Trainer;
use crate::weights::{write_f32, WeightFiles};
use crate::{Error, Result};
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::path::{Path, PathBuf};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Meta {
    pub step: usize,
    pub updates: u64,
    pub train_layers: Vec<usize>,
    /// The embedding, head and final norm were trained too (SFT `--train-embeddings`).
    #[serde(default)]
    pub train_embeddings: bool,
}

pub fn dir(out: &Path) -> PathBuf {
    out.join("checkpoints")
}

/// Save the trainer's state after `step`; keep the newest `keep` checkpoints.
pub fn save<B: Backend>(
    out: &Path,
    step: usize,
    trainer: &Trainer<B>,
    keep: usize,
) -> Result<PathBuf> {
    let root = dir(out);
    std::fs::create_dir_all(&root).map_err(|e| Error::file(&root, e))?;
    let final_dir = root.join(format!("step-{step:06}"));
    let tmp = root.join(format!(".tmp-step-{step:06}"));
    if tmp.exists() {
        std::fs::remove_dir_all(&tmp).map_err(|e| Error::file(&tmp, e))?;
    }
    std::fs::create_dir_all(&tmp).map_err(|e| Error::file(&tmp, e))?;
    write_f32(&tmp.join("state.safetensors"), &trainer.state()?)?;
    let meta = Meta {
        step,
        updates: trainer.updates(),
        train_layers: trainer.trained().iter().map(|t| t.layer).collect(),
        train_embeddings: !trainer.edges().is_empty(),
    };
    let meta_path = tmp.join("meta.json");
    std::fs::write(
        &meta_path,
        serde_json::to_string_pretty(&meta).expect("meta serialises"),
    )
    .map_err(|e| Error::file(&meta_path, e))?;
    if final_dir.exists() {
        std::fs::remove_dir_all(&final_dir).map_err(|e| Error::file(&final_dir, e))?;
    }
    std::fs::rename(&tmp, &final_dir).map_err(|e| Error::file(&final_dir, e))?;
    let all = list(out)?;
    if keep > 0 && all.len() > keep {
        for (_, old) in &all[..all.len() - keep] {
            std::fs::remove_dir_all(old).map_err(|e| Error::file(old, e))?;
        }
    }
    Ok(final_dir)
}

/// Complete checkpoints, oldest first.
pub fn list(out: &Path) -> Result<Vec<(usize, PathBuf)>> {
    let root = dir(out);
    if !root.exists() {
        return Ok(Vec::new());
    }
    let mut v = Vec::new();
    for e in std::fs::read_dir(&root).map_err(|e| Error::file(&root, e))? {
        let e = e.map_err(|e| Error::file(&root, e))?;
        let name = e.file_name().to_string_lossy().to_string();
        if let Some(n) = name
            .strip_prefix("step-")
            .and_then(|n| n.parse::<usize>().ok())
        {
            v.push((n, e.path()));
        }
    }
    v.sort();
    Ok(v)
}

/// Load a checkpoint directory into the trainer; returns its metadata.
pub fn load<B: Backend>(ckpt: &Path, trainer: &mut Trainer<B>) -> Result<Meta> {
    let meta_path = ckpt.join("meta.json");
    let text = std::fs::read_to_string(&meta_path).map_err(|e| Error::file(&meta_path, e))?;
    let meta: Meta = serde_json::from_str(&text).map_err(|e| Error::file(&meta_path, e))?;
    let layers: Vec<usize> = trainer.trained().iter().map(|t| t.layer).collect();
    let embeddings = !trainer.edges().is_empty();
    if meta.train_embeddings != embeddings {
        return Err(Error::file(
            &meta_path,
            format!(
                "train_embeddings is {} here but {embeddings} in this run",
                meta.train_embeddings
            ),
        ));
    }
    if meta.train_layers != layers {
        return Err(Error::file(
            &meta_path,
            format!(
                "trained layers {:?} differ from this run's {:?}",
                meta.train_layers, layers
            ),
        ));
    }
    let path = ckpt.join("state.safetensors");
    let files = WeightFiles::open_files(std::slice::from_ref(&path))?;
    let mut tensors = HashMap::new();
    let names: Vec<String> = files.names().map(str::to_string).collect();
    for name in names {
        let info = files.info(&name).expect("listed");
        let v = files.get_f32(&name, &info.shape)?;
        tensors.insert(name, (info.shape.clone(), v));
    }
    trainer
        .load_state(&tensors, meta.updates)
        .map_err(|e| Error::file(&path, e))?;
    Ok(meta)
}

/// (step, value) points of a chart.
pub type Curve = Vec<(usize, f64)>;

/// The two curves (`keys`: the training and the held-out metric) already in a run's
/// `metrics.jsonl` up to step `upto`, for a resumed run; lines after it (and the
/// step-0 line when starting over) are dropped from the file.
pub fn truncate_metrics(path: &Path, upto: usize, keys: (&str, &str)) -> Result<(Curve, Curve)> {
    let (mut train, mut eval) = (Vec::new(), Vec::new());
    if !path.exists() {
        return Ok((train, eval));
    }
    let text = std::fs::read_to_string(path).map_err(|e| Error::file(path, e))?;
    let mut kept = String::new();
    for line in text.lines() {
        let Ok(v) = serde_json::from_str::<serde_json::Value>(line) else {
            continue;
        };
        let step = v["step"].as_u64().unwrap_or(0) as usize;
        if step > upto || (step == 0 && upto == 0) {
            continue;
        }
        kept.push_str(line);
        kept.push('\n');
        if let Some(r) = v[keys.0].as_f64() {
            train.push((step, r));
        }
        if let Some(a) = v[keys.1].as_f64() {
            eval.push((step, a));
        }
    }
    std::fs::write(path, kept).map_err(|e| Error::file(path, e))?;
    Ok((train, eval))
}

/// With `resume`, the trainer restored from the newest checkpoint in `out`; the step
/// it continues after (0 when starting over, or when there is none).
pub fn resume_from<B: Backend>(
    out: &Path,
    trainer: &mut Trainer<B>,
    resume: bool,
) -> Result<usize> {
    if !resume {
        return Ok(0);
    }
    match list(out)?.pop() {
        Some((step, dir)) => {
            load(&dir, trainer)?;
            eprintln!("resuming {} after step {step}", out.display());
            Ok(step)
        }
        None => {
            eprintln!("no checkpoint in {}: starting from step 1", out.display());
            Ok(0)
        }
    }
}

/// A run's `OUT/metrics.jsonl` opened for appending after step `start`, with the two
/// curves (`keys`) it already holds up to there (`truncate_metrics`).
pub fn open_metrics(
    out: &Path,
    start: usize,
    keys: (&str, &str),
) -> Result<(PathBuf, std::fs::File, Curve, Curve)> {
    let path = out.join("metrics.jsonl");
    let (train, eval) = truncate_metrics(&path, start, keys)?;
    let file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&path)
        .map_err(|e| Error::file(&path, e))?;
    Ok((path, file, train, eval))
}
