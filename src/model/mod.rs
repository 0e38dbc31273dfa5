//! The Qwen3 / Qwen2 decoder, written once over the `Backend` trait.
//!
//! `forward` runs a flat `TokenBatch` (prefills and decode steps mixed) through every
//! layer, reading and extending the `KvCache`; `score` and `logits` turn final hidden
//! states into per-token log-probs or next-token logits, chunked over rows so the
//! full `[tokens, vocab]` logits never exist at once.

pub mod base;
mod batch;
pub mod forward;
mod kv_cache;
mod paged;
pub(crate) mod score;
mod weights;

pub use batch::TokenBatch;
pub use forward::{KvStore, Scratch};
pub use kv_cache::KvCache;
pub use paged::{PagedIdx, PagedKvCache, PagedStore};
pub use weights::{all_param_specs, layer_param_specs, LayerWeights, ModelWeights, ParamSpec};

use crate::backend::accounting::{purpose, Purpose};
use crate::backend::Backend;
use crate::config::ModelConfig;
use crate::weights::WeightFiles;
use crate::Result;
use std::path::Path;
use std::sync::Arc;

pub struct Model<B: Backend> {
    pub cfg: ModelConfig,
    pub weights: ModelWeights<B>,
    pub backend: B,
    /// The checkpoint the weights came from (memory-mapped), so the trainer can take
    /// a trained layer's master copy from the file's own values, not the device's
    /// rounded copy.
    source: Option<Arc<WeightFiles>>,
}

impl<B: Backend> Model<B> {
    /// Load `config.json` and the safetensors of an HF model directory.
    pub fn load(dir: &Path, backend: B) -> Result<Self> {
        let cfg = ModelConfig::from_file(&dir.join("config.json"))?;
        let files = Arc::new(WeightFiles::open_dir(dir)?);
        let mut model = Self::from_files(cfg, &files, backend)?;
        model.source = Some(files);
        Ok(model)
    }

    pub fn from_files(cfg: ModelConfig, files: &WeightFiles, backend: B) -> Result<Self> {
        let weights = {
            let _w = purpose(Purpose::Weights);
            ModelWeights::load(&cfg, files, &backend)?
        };
        Ok(Model {
            cfg,
            weights,
            backend,
            source: None,
        })
    }

    /// A model with random weights (see `ModelWeights::random`): benchmarks and tests.
    pub fn random(cfg: ModelConfig, backend: B, seed: u64) -> Result<Self> {
        let weights = {
            let _w = purpose(Purpose::Weights);
            ModelWeights::random(&cfg, &backend, seed)?
        };
        Ok(Model {
            cfg,
            weights,
            backend,
            source: None,
        })
    }

    /// Layer `l`'s parameters as f32 in `layer_param_specs` order: the checkpoint's
    /// own values (f32, f16 and bf16 convert exactly) when the model was loaded from
    /// files, else the device's copy.
    pub fn layer_values(&self, l: usize) -> Result<Vec<Vec<f32>>> {
        match &self.source {
            Some(files) => layer_param_specs(&self.cfg, l)
                .iter()
                .map(|spec| files.get_f32(&spec.name, &spec.shape))
                .collect(),
            None => self.weights.layers[l]
                .tensors()
                .into_iter()
                .map(|(_, b)| self.backend.download(b))
                .collect(),
        }
    }

    /// A cache for `slots` sequences of up to `max_len` tokens.
    pub fn new_cache(&self, slots: usize, max_len: usize) -> Result<KvCache<B>> {
        let _k = purpose(Purpose::KvCache);
        KvCache::new(&self.backend, &self.cfg, slots, max_len)
    }
}
