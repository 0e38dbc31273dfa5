//! Training only where it is needed (DESIGN sections 4 and 5): which layers
//! (`layers`), what it costs in memory (`plan`), the rollouts (`rollout`), the
//! advantages (`advantage`), the packed mini-batch (`pack`), one layer's forward
//! with saves and its backward (`layer`), the fused LM-head loss (`head`), the
//! optimizer (`adamw`, SGD in the backend), and the step (`trainer`).

pub mod adamw;
pub mod advantage;
pub mod checkpoint;
pub mod config;
pub mod head;
pub mod layer;
pub mod layers;
pub mod pack;
pub mod plan;
pub mod rollout;
pub mod trainer;

/// Set by a Ctrl-C handler: RL and SFT loops save a checkpoint and stop after the
/// step.
pub static INTERRUPTED: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

pub use adamw::AdamW;
pub use advantage::{
    advantages, gigpo_advantages, Algo, EpisodeStep, EpisodeSteps, GigpoConfig, GigpoMode,
};
pub use config::{Optimizer, TrainConfig};
pub use layers::TrainLayers;
pub use plan::{
    default_kv_cache_tokens, default_micro_batch_tokens, fit_to_device, preflight, run_plan_input,
    MemoryPlan, PlanInput,
};
pub use rollout::{read_rollouts, Rollout};
pub use trainer::{NamedGrads, NamedTensor, StepStats, TrainedLayer, Trainer};
