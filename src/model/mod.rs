//! The Qwen3 / Qwen2 decoder, written once over the `Backend` trait.
//!
//! `forward` runs a flat `TokenBatch` (prefills and decode steps mixed) through every
//! layer, reading and extending the `KvCache`; `score` and `logits` turn final hidden
//! states into per-token log-probs or next-token logits, chunked over rows so the
//! full `[tokens, vocab]` logits never exist at once.

mod batch;
mod forward;
mod kv_cache;
pub(crate) mod score;
mod weights;

pub use batch::TokenBatch;
pub use kv_cache::KvCache;
pub use weights::{all_param_specs, layer_param_specs, LayerWeights, ModelWeights, ParamSpec};

use crate::backend::Backend;
use crate::config::ModelConfig;
use crate::weights::WeightFiles;
use crate::Result;
use std::path::Path;

pub struct Model<B: Backend> {
    pub cfg: ModelConfig,
    pub weights: ModelWeights<B>,
    pub backend: B,
}

impl<B: Backend> Model<B> {
    /// Load `config.json` and the safetensors of an HF model directory.
    pub fn load(dir: &Path, backend: B) -> Result<Self> {
        let cfg = ModelConfig::from_file(&dir.join("config.json"))?;
        let files = WeightFiles::open_dir(dir)?;
        Self::from_files(cfg, &files, backend)
    }

    pub fn from_files(cfg: ModelConfig, files: &WeightFiles, backend: B) -> Result<Self> {
        let weights = ModelWeights::load(&cfg, files, &backend)?;
        Ok(Model {
            cfg,
            weights,
            backend,
        })
    }

    /// A model with random weights (see `ModelWeights::random`): benchmarks and tests.
    pub fn random(cfg: ModelConfig, backend: B, seed: u64) -> Result<Self> {
        let weights = ModelWeights::random(&cfg, &backend, seed)?;
        Ok(Model {
            cfg,
            weights,
            backend,
        })
    }

    /// A cache for `slots` sequences of up to `max_len` tokens.
    pub fn new_cache(&self, slots: usize, max_len: usize) -> Result<KvCache<B>> {
        KvCache::new(&self.backend, &self.cfg, slots, max_len)
    }
}
