//! Supervised fine-tuning (`engine sft`): cross-entropy on the completion tokens of
//! JSONL examples (`data.rs`), through the same trainable window, fused LM-head
//! loss (its cross-entropy mode) and optimizer as RL (`crate::train::Trainer`), with
//! the run directory `engine run` keeps: `config.toml` (`SftSettings`),
//! `metrics.jsonl`, `loss.svg`, `checkpoints/`, `trained.safetensors` (`run.rs`).

pub mod data;
pub mod run;
pub mod settings;

pub use data::{Example, LossOn};
pub use run::{run_sft, SftSummary};
pub use settings::SftSettings;
