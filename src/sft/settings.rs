//! The settings of an SFT run: defaults, then `--config sft.toml`, then flags; the
//! resolved settings go to `OUT/config.toml`, which `--resume` reads back.

use crate::rl::settings::overlay;
use crate::Result;
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SftSettings {
    pub model: Option<String>,
    pub device: Option<String>,
    /// `arith`: examples generated with their worked solutions instead of `data`.
    pub task: Option<String>,
    pub data: Option<PathBuf>,
    pub eval_data: Option<PathBuf>,
    pub train_layer: Option<String>,
    pub steps: Option<usize>,
    /// Sequences per optimizer step.
    pub batch_size: Option<usize>,
    pub lr: Option<f32>,
    pub weight_decay: Option<f32>,
    pub grad_clip: Option<f32>,
    pub optimizer: Option<String>,
    pub micro_batch_tokens: Option<usize>,
    /// Longest sequence (prompt + completion) kept; longer ones are cut.
    pub max_seq_len: Option<usize>,
    /// completion | all
    pub loss_on: Option<String>,
    pub seed: Option<u64>,
    pub eval_every: Option<usize>,
    pub save_every: Option<usize>,
    pub keep_checkpoints: Option<usize>,
    /// Qwen3 chat prompts with thinking enabled.
    pub thinking: Option<bool>,
    /// Also train the embedding, the LM head and the final norm (pretraining).
    pub train_embeddings: Option<bool>,
    /// The arith task's generated training set: problems, digits, operators, terms.
    pub train_size: Option<usize>,
    pub arith_digits: Option<u32>,
    pub arith_ops: Option<String>,
    pub arith_terms: Option<usize>,
    /// Held-out problems of a generated task (greedy accuracy at each evaluation).
    pub eval_size: Option<usize>,
}

impl SftSettings {
    pub fn overlay(mut self, top: &SftSettings) -> Self {
        overlay!(
            self,
            top,
            model,
            device,
            task,
            data,
            eval_data,
            train_layer,
            steps,
            batch_size,
            lr,
            weight_decay,
            grad_clip,
            optimizer,
            micro_batch_tokens,
            max_seq_len,
            loss_on,
            seed,
            eval_every,
            save_every,
            keep_checkpoints,
            thinking,
            train_embeddings,
            train_size,
            arith_digits,
            arith_ops,
            arith_terms,
            eval_size
        );
        self
    }

    /// The defaults (the built-in demo model's learning rate when no model is given).
    pub fn defaults(demo: bool) -> Self {
        SftSettings {
            device: Some("auto".into()),
            steps: Some(100),
            batch_size: Some(32),
            lr: Some(if demo { 3e-3 } else { 1e-5 }),
            weight_decay: Some(0.0),
            grad_clip: Some(1.0),
            optimizer: Some("adamw".into()),
            max_seq_len: Some(2048),
            loss_on: Some("completion".into()),
            seed: Some(0),
            eval_every: Some(25),
            save_every: Some(50),
            keep_checkpoints: Some(3),
            thinking: Some(false),
            train_embeddings: Some(false),
            train_size: Some(50_000),
            arith_digits: Some(2),
            arith_ops: Some("+-".into()),
            arith_terms: Some(2),
            eval_size: Some(200),
            ..SftSettings::default()
        }
    }

    pub fn from_toml_file(path: &Path) -> Result<Self> {
        crate::rl::settings::read_toml(path)
    }

    pub fn to_toml(&self) -> String {
        toml::to_string(self).expect("settings serialise to TOML")
    }
}
