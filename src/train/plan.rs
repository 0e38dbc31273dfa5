//! The memory plan of a single-layer RL run (DESIGN.md section 4), term by term,
//! for the CUDA backend (bf16 weights and activations, f32 trained state):
//!
//! - frozen weights: every parameter in bf16 (the trained layers keep a bf16 copy
//!   for the forward pass too);
//! - trained state: 16 bytes per trained parameter (f32 master, gradient, AdamW m, v);
//! - activations of one micro-batch: the hidden state entering the lowest trained
//!   layer (cached once, reused across PPO epochs), the input of every layer from
//!   there up (saved for recomputation), one layer's recomputation workspace, and
//!   one chunk of f32 logits and their gradient in the fused LM-head loss;
//! - KV cache of the rollouts;
//! - workspace: cuBLAS and scratch (a fixed allowance).

use super::layers::TrainLayers;
use crate::config::ModelConfig;

/// Rows of logits the fused LM-head loss materialises at once.
pub const LOSS_CHUNK_ROWS: usize = 1024;
/// cuBLAS workspace and small scratch buffers.
pub const WORKSPACE_BYTES: usize = 256 << 20;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PlanInput {
    /// Sequences per training micro-batch.
    pub batch: usize,
    /// Tokens per sequence (prompt + completion).
    pub seq: usize,
    /// Sequences generated at once (prompts x group size).
    pub rollout_batch: usize,
}

/// Bytes of each term.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MemoryPlan {
    pub frozen_weights: usize,
    pub trained_params: usize,
    pub trained_state: usize,
    pub activations: usize,
    pub kv_cache: usize,
    pub workspace: usize,
    /// For comparison: weights plus AdamW state for every parameter.
    pub full_parameter_state: usize,
}

impl MemoryPlan {
    pub fn new(cfg: &ModelConfig, train: &TrainLayers, p: PlanInput) -> Self {
        let bf16 = 2;
        let total = cfg.params_total();
        let trained_params = train.len() * cfg.params_per_layer();
        let tokens = p.batch * p.seq;
        let h = cfg.hidden_size;
        let saved_inputs = (cfg.num_hidden_layers - train.lowest() + 1) * tokens * h * bf16;
        let per_token_layer =
            cfg.q_dim() * 2 + cfg.kv_dim() * 2 + 3 * cfg.intermediate_size + 4 * h;
        let recompute = tokens * per_token_layer * bf16 + tokens * cfg.num_attention_heads * 4;
        let logits = 2 * LOSS_CHUNK_ROWS.min(tokens) * cfg.vocab_size * 4;
        MemoryPlan {
            frozen_weights: total * bf16,
            trained_params,
            trained_state: trained_params * 16,
            activations: saved_inputs + recompute + logits,
            kv_cache: 2 * cfg.num_hidden_layers * p.rollout_batch * p.seq * cfg.kv_dim() * bf16,
            workspace: WORKSPACE_BYTES,
            full_parameter_state: total * bf16 + total * 16,
        }
    }

    pub fn total(&self) -> usize {
        self.frozen_weights + self.trained_state + self.activations + self.kv_cache + self.workspace
    }

    /// (name, bytes) in print order.
    pub fn terms(&self) -> Vec<(&'static str, usize)> {
        vec![
            ("frozen weights (bf16)", self.frozen_weights),
            (
                "trained params + grads + AdamW (16 B/param)",
                self.trained_state,
            ),
            ("activations (one micro-batch)", self.activations),
            ("KV cache (rollouts)", self.kv_cache),
            ("workspace", self.workspace),
        ]
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::builtin;

    const GIB: f64 = (1u64 << 30) as f64;

    #[test]
    fn qwen3_4b_layer_18_matches_design() {
        let cfg = builtin("qwen3-4b").unwrap();
        let input = PlanInput {
            batch: 16,
            seq: 1536,
            rollout_batch: 64,
        };
        let one = MemoryPlan::new(&cfg, &TrainLayers::parse("18", 36).unwrap(), input);
        // ~8 GB of bf16 weights, ~1.6 GB of trained state (DESIGN.md section 4)
        assert!(
            (one.frozen_weights as f64 / 1e9 - 8.04).abs() < 0.1,
            "{one:?}"
        );
        assert!(
            (one.trained_state as f64 / 1e9 - 1.615).abs() < 0.01,
            "{one:?}"
        );
        // full-parameter AdamW: ~64 GB of weights, gradients and optimizer state + bf16 weights
        assert!(one.full_parameter_state as f64 / 1e9 > 64.0);
        assert!(one.total() < one.full_parameter_state / 2);
        // training every layer through the same plan costs the full state
        let all = MemoryPlan::new(&cfg, &TrainLayers::parse("all", 36).unwrap(), input);
        assert_eq!(all.trained_state, 36 * one.trained_state);
        assert!(
            all.activations > one.activations,
            "more layers to save inputs for"
        );
        assert!(one.total() as f64 / GIB < 40.0);
    }
}
