//! onelayer: RL post-training of Qwen3 / Qwen2.5 that trains a single transformer layer.
//!
//! Layout (see docs/DESIGN.md): `config`, `weights`, `tokenizer` and `chat` load a
//! model directory; `resolve` finds one; `backend` holds the ops (the CPU reference
//! here, the CUDA kernels next); `model` is the architecture written once over the
//! `Backend` trait; `generate` and `sampling` decode; `train` is the trainable window, which `rl`
//! (RL post-training) and `sft` (supervised fine-tuning) drive.

pub mod backend;
pub mod chat;
pub mod codec;
pub mod config;
pub mod device;
pub mod env;
pub mod error;
pub mod generate;
pub mod generation_config;
pub mod kernels;
pub mod model;
pub mod plot;
pub mod resolve;
pub mod rl;
pub mod sampling;
pub mod sft;
pub mod sweep;
pub mod tasks;
pub mod tokenizer;
pub mod train;
pub mod weights;

pub use error::{Error, Result};
