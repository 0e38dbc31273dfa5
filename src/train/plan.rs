//! The memory plan of an RL run on the CUDA backend (bf16 weights and activations,
//! f32 trained state), term by term, written from what the code allocates; the
//! counting device (`--device meta`) measures the same terms (`accounting::Purpose`)
//! and tests/plan_vs_count.rs keeps the two within 10% at real shapes.
//!
//! The device holds at the peak of a step (the rollout of any step after the first):
//! - weights: every parameter in bf16 (the trained layers keep a bf16 copy too);
//! - trained state: f32 master, gradient and, with AdamW, m and v (16 B/param);
//! - the training working set, which the caching allocator keeps reserved between
//!   steps so training allocates nothing after its first step: the hidden state
//!   entering the lowest trained layer for every token of the step (when kept), and
//!   one micro-batch's activations (the inputs of the layers from the lowest trained
//!   one up, one layer's recomputation with its backward temporaries, or the LM-head
//!   loss with one chunk of f32 logits and their gradient);
//! - the rollout's paged KV cache, `2 x layers x kv_cache_tokens x kv_dim` bf16
//!   (`--kv-cache-tokens`; default what the rest leaves of 90% of the device, at
//!   most every sequence at full length), released to the device when generation
//!   ends;
//! - the rollout's activations: one prefill step (at most `MAX_PREFILL_TOKENS`) and
//!   the widest decode step's fixed buffers, with their f32 logits;
//! - a fixed allowance for the CUDA context's and cuBLAS's own memory, which the
//!   allocator does not see.

use super::layers::TrainLayers;
use crate::config::ModelConfig;

use crate::model::score::LOGIT_CHUNK_ELEMS;

/// cuBLAS workspace and the CUDA context: outside the allocator's count.
pub const WORKSPACE_BYTES: usize = 256 << 20;
/// `--micro-batch-tokens` off a GPU, and the most chosen on one.
pub const CPU_MICRO_BATCH_TOKENS: usize = 16_384;
pub const MAX_MICRO_BATCH_TOKENS: usize = 32_768;

/// The shape of a run's step.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PlanInput {
    /// Sequences generated per step (prompts x group size).
    pub rollout_seqs: usize,
    /// Distinct prompts among them (each prefilled once).
    pub distinct_prompts: usize,
    /// Tokens per prompt (the longest).
    pub prompt_len: usize,
    pub max_new_tokens: usize,
    /// Tokens per training pass (`--micro-batch-tokens`).
    pub micro_batch_tokens: usize,
    /// Keep the hidden state entering the lowest trained layer for the step.
    pub keep_prefix: bool,
    /// AdamW (m and v) rather than SGD.
    pub adamw: bool,
    /// Positions of the paged KV cache (`--kv-cache-tokens`); `None`: every
    /// sequence at full length (`default_kv_cache_tokens` fits it to a device).
    pub kv_cache_tokens: Option<usize>,
}

impl PlanInput {
    /// Tokens per sequence (prompt + completion).
    pub fn seq(&self) -> usize {
        self.prompt_len + self.max_new_tokens
    }

    /// KV positions for every sequence at full length: each distinct prompt's whole
    /// blocks once, each sequence's tail and completion itself (`generate::sched`).
    pub fn full_kv_tokens(&self) -> usize {
        let bs = crate::generate::BLOCK_SIZE;
        let shared = (self.prompt_len.max(1) - 1) / bs;
        let all = crate::generate::Scheduler::blocks_for(self.prompt_len, self.max_new_tokens, bs);
        (self.distinct_prompts * shared + self.rollout_seqs * (all - shared)) * bs
    }

    /// The KV cache's positions: the budget given, else every sequence at full length.
    pub fn kv_tokens(&self) -> usize {
        self.kv_cache_tokens
            .unwrap_or_else(|| self.full_kv_tokens())
    }

    /// Rows of the widest decode step.
    pub fn decode_rows(&self) -> usize {
        let max = crate::generate::MAX_RUNNING.min(self.rollout_seqs.max(1));
        crate::generate::step::bucket(max, max)
    }
}

/// Bytes of each term.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MemoryPlan {
    pub weights: usize,
    pub trained_params: usize,
    pub trained_state: usize,
    pub prefix_cache: usize,
    pub train_activations: usize,
    pub train_logits: usize,
    pub kv_cache: usize,
    pub rollout_activations: usize,
    pub workspace: usize,
    /// For comparison: weights plus AdamW state for every parameter.
    pub full_parameter_state: usize,
}

/// (hidden, q_dim, kv_dim, intermediate).
fn dims(cfg: &ModelConfig) -> (usize, usize, usize, usize) {
    (
        cfg.hidden_size,
        cfg.q_dim(),
        cfg.kv_dim(),
        cfg.intermediate_size,
    )
}

/// Bytes per token of what one decoder layer's backward reads, recomputed
/// (`train::layer::LayerActs`: h1, q0, k0, q2, a, x2, h2, g, u, s in bf16, lse in f32).
fn layer_acts_per_token(cfg: &ModelConfig) -> usize {
    let (h, q, kv, i) = dims(cfg);
    (3 * h + 3 * q + kv + 3 * i) * 2 + cfg.num_attention_heads * 4
}

/// Bytes per token of the backward's temporaries at its widest point: the MLP (ds,
/// dg, du) or the attention (dx2, dq, dk, dv, dq0, dk0, dh1, dx).
fn layer_backward_per_token(cfg: &ModelConfig) -> usize {
    let (h, q, kv, i) = dims(cfg);
    (3 * i).max(3 * h + 2 * q + 3 * kv) * 2
}

/// Bytes of one cached position, K and V of every layer, bf16.
fn kv_bytes_per_token(cfg: &ModelConfig) -> usize {
    2 * cfg.num_hidden_layers * cfg.kv_dim() * 2
}

/// Forward scratch of the inference pass per token (`model::forward`).
fn forward_scratch_per_token(cfg: &ModelConfig) -> usize {
    let (h, q, kv, i) = dims(cfg);
    (4 * h + 2 * q + 3 * kv + 3 * i) * 2 + 12
}

/// Bytes per row of a decode step's buffers (`generate::step::DecodeStep`): the
/// forward scratch with the residual stream and final hidden state, the row's f32
/// logits, the split attention's partials over `max_context` positions, the indices.
pub fn decode_row_bytes(cfg: &ModelConfig, max_context: usize) -> usize {
    let splits = max_context.div_ceil(512).max(1);
    let width = max_context.div_ceil(crate::generate::BLOCK_SIZE);
    forward_scratch_per_token(cfg)
        + cfg.vocab_size * 4
        + splits * cfg.num_attention_heads * (cfg.head_dim + 2) * 4
        + (7 + width) * 4
}

/// Bytes per token of a prefill step (forward scratch and its indices).
pub fn prefill_token_bytes(cfg: &ModelConfig) -> usize {
    forward_scratch_per_token(cfg) + 20
}

impl MemoryPlan {
    pub fn new(cfg: &ModelConfig, train: &TrainLayers, p: PlanInput) -> Self {
        let bf16 = 2;
        let total = cfg.params_total();
        let (h, v, kv) = (cfg.hidden_size, cfg.vocab_size, cfg.kv_dim());
        let layers = cfg.num_hidden_layers;
        let trained_params = train.len() * cfg.params_per_layer();
        let seq = p.seq();
        let step_tokens = p.rollout_seqs * seq;
        let t = p.micro_batch_tokens.max(seq).min(step_tokens.max(1));
        let seqs_per_micro = (t / seq).max(1);

        // Training: the window's saved layer outputs, then the widest of one layer's
        // recomputation + backward (with its K/V cache buffers and their gradients)
        // and the loss (normed, dnormed, dx, one chunk of logits + dlogits).
        let window = layers - train.lowest();
        let saved = window * t * h * bf16;
        let caches = seqs_per_micro * seq * kv * bf16;
        let layer = t * (layer_acts_per_token(cfg) + layer_backward_per_token(cfg)) + 4 * caches;
        let chunk_rows = (LOGIT_CHUNK_ELEMS / v).max(1).min(t);
        let train_logits = chunk_rows * v * (4 + bf16);
        let loss = 3 * t * h * bf16;
        let idx = 3 * t * 4;
        // + the gradient flowing down (dy)
        let train_activations = saved + layer.max(loss) + t * h * bf16 + idx;
        let prefix_cache = if p.keep_prefix {
            step_tokens * h * bf16
        } else {
            0
        };

        // Rollout: the paged cache (one block more, for decode padding rows), a
        // prefill step (its tokens' scratch, the drawing rows' logits) and the
        // widest decode step's buffers.
        let bs = crate::generate::BLOCK_SIZE;
        let kv_cache = (p.kv_tokens().div_ceil(bs) + 1) * bs * kv_bytes_per_token(cfg);
        let prefill_tokens = crate::generate::MAX_PREFILL_TOKENS
            .min(p.distinct_prompts * p.prompt_len + p.rollout_seqs * bs);
        let drawing = p.rollout_seqs.min(prefill_tokens);
        let prefill = prefill_tokens * prefill_token_bytes(cfg) + drawing * (2 * h * bf16 + v * 4);
        let decode = p.decode_rows() * decode_row_bytes(cfg, seq);
        // the decode step's buffers stay made through later prefill steps
        let rollout_activations = prefill + decode;
        MemoryPlan {
            weights: total * bf16,
            trained_params,
            trained_state: trained_params * if p.adamw { 16 } else { 8 },
            prefix_cache,
            train_activations,
            train_logits,
            kv_cache,
            rollout_activations,
            workspace: WORKSPACE_BYTES,
            full_parameter_state: total * bf16 + total * 16,
        }
    }

    /// The training working set the allocator keeps between steps.
    pub fn train_working_set(&self) -> usize {
        self.prefix_cache + self.train_activations + self.train_logits
    }

    /// What the device holds at the peak when the training working set stays
    /// cached through the rollout (the allocator's way while both fit).
    pub fn total(&self) -> usize {
        self.weights
            + self.trained_state
            + self.train_working_set()
            + self.kv_cache
            + self.rollout_activations
            + self.workspace
    }

    /// What the run needs at least: the rollout and training phases in turn (the
    /// allocator releases the cached training working set when the rollout's KV
    /// cache does not fit beside it).
    pub fn required(&self) -> usize {
        self.weights
            + self.trained_state
            + self
                .train_working_set()
                .max(self.kv_cache + self.rollout_activations)
            + self.workspace
    }

    /// The peak a device of `capacity` bytes will show: `total` where it fits,
    /// else `required`.
    pub fn expected_peak(&self, capacity: usize) -> usize {
        if self.total() <= capacity {
            self.total()
        } else {
            self.required()
        }
    }

    /// (name, bytes, the flag that shrinks it) in print order.
    pub fn terms(&self) -> Vec<(&'static str, usize, &'static str)> {
        vec![
            ("weights (bf16)", self.weights, "a smaller --model"),
            (
                "trained state (f32 master, grad, AdamW m, v)",
                self.trained_state,
                "--train-layer (fewer layers)",
            ),
            (
                "prefix cache (hidden state entering the lowest trained layer)",
                self.prefix_cache,
                "--prompts-per-step / --group-size",
            ),
            (
                "training activations (one micro-batch)",
                self.train_activations,
                "--micro-batch-tokens",
            ),
            (
                "LM-head logits chunk (f32 + gradient)",
                self.train_logits,
                "--micro-batch-tokens",
            ),
            (
                "KV cache (rollouts, paged)",
                self.kv_cache,
                "--kv-cache-tokens",
            ),
            (
                "rollout activations (prefill / decode step)",
                self.rollout_activations,
                "--prompts-per-step",
            ),
            (
                "CUDA context and cuBLAS workspace",
                self.workspace,
                "nothing",
            ),
        ]
    }

    /// The largest term: (name, bytes, flag).
    pub fn largest(&self) -> (&'static str, usize, &'static str) {
        self.terms()
            .into_iter()
            .filter(|t| t.0 != "weights (bf16)")
            .max_by_key(|t| t.1)
            .expect("terms")
    }
}

/// Prompt tokens assumed where a run's longest prompt is not known yet (the
/// preflight of `engine run`).
pub const PROMPT_LEN_ESTIMATE: usize = 512;

/// The shape of an `engine run` step, before its data is read.
pub fn run_plan_input(prompts: usize, group: usize, max_new: usize, adamw: bool) -> PlanInput {
    PlanInput {
        rollout_seqs: prompts * group,
        distinct_prompts: prompts,
        prompt_len: PROMPT_LEN_ESTIMATE,
        max_new_tokens: max_new,
        micro_batch_tokens: CPU_MICRO_BATCH_TOKENS,
        keep_prefix: true,
        adamw,
        kv_cache_tokens: None,
    }
}

/// Fill in what the user left unset for a device of `capacity` bytes (`None`: the
/// CPU): `--micro-batch-tokens` (`micro`) first, planned beside a KV cache of at
/// most half the device, then `--kv-cache-tokens` from what that leaves. On the CPU:
/// the CPU micro-batch and every sequence at full length.
pub fn fit_to_device(
    cfg: &ModelConfig,
    train: &TrainLayers,
    p: PlanInput,
    micro: Option<usize>,
    capacity: Option<usize>,
) -> PlanInput {
    let Some(capacity) = capacity else {
        return PlanInput {
            micro_batch_tokens: micro.unwrap_or(CPU_MICRO_BATCH_TOKENS),
            ..p
        };
    };
    let per_token = kv_bytes_per_token(cfg);
    let half = (capacity / 2 / per_token).min(p.full_kv_tokens());
    let micro_batch_tokens = micro.unwrap_or_else(|| {
        let beside = PlanInput {
            kv_cache_tokens: Some(p.kv_cache_tokens.unwrap_or(half)),
            ..p
        };
        default_micro_batch_tokens(cfg, train, beside, capacity)
    });
    let p = PlanInput {
        micro_batch_tokens,
        ..p
    };
    PlanInput {
        kv_cache_tokens: Some(
            p.kv_cache_tokens
                .unwrap_or_else(|| default_kv_cache_tokens(cfg, train, p, capacity)),
        ),
        ..p
    }
}

/// `--kv-cache-tokens` when not given: what the plan leaves free in 90% of
/// `capacity` after everything else (the training working set stays cached, so
/// training allocates nothing after its first step), in whole blocks, at most what
/// every sequence at full length needs. Never below one sequence: the preflight then
/// says what does not fit.
pub fn default_kv_cache_tokens(
    cfg: &ModelConfig,
    train: &TrainLayers,
    p: PlanInput,
    capacity: usize,
) -> usize {
    let bs = crate::generate::BLOCK_SIZE;
    let one = crate::generate::Scheduler::blocks_for(p.prompt_len, p.max_new_tokens, bs) * bs;
    let without = MemoryPlan::new(
        cfg,
        train,
        PlanInput {
            kv_cache_tokens: Some(0),
            ..p
        },
    );
    let per_token = kv_bytes_per_token(cfg);
    let room = (0.9 * capacity as f64) as usize;
    let left = room.saturating_sub(without.total()) / per_token / bs * bs;
    left.saturating_sub(bs).min(p.full_kv_tokens()).max(one)
}

/// The largest `--micro-batch-tokens` (a multiple of 1,024 up to
/// `MAX_MICRO_BATCH_TOKENS`, and at least one sequence) whose plan fits in 90% of
/// `capacity` bytes; the smallest candidate when none fits (the preflight then says
/// what does not fit).
pub fn default_micro_batch_tokens(
    cfg: &ModelConfig,
    train: &TrainLayers,
    p: PlanInput,
    capacity: usize,
) -> usize {
    let floor = p.seq().div_ceil(1024) * 1024;
    // Past 2^31 elements the MLP intermediate of one pass would overflow an i32.
    let by_index = ((i32::MAX as usize) / cfg.intermediate_size.max(1)) / 1024 * 1024;
    let top = MAX_MICRO_BATCH_TOKENS.min(by_index).max(floor);
    let fits = |n: usize| {
        let plan = MemoryPlan::new(
            cfg,
            train,
            PlanInput {
                micro_batch_tokens: n,
                ..p
            },
        );
        plan.required() as f64 <= 0.9 * capacity as f64
    };
    let mut n = top;
    while n > floor && !fits(n) {
        n = (n - 1024).max(floor);
    }
    n
}

/// Refuse a run that will not fit: one line naming the largest term and the flag
/// that shrinks it.
pub fn preflight(plan: &MemoryPlan, free: usize, device: &str) -> crate::Result<()> {
    if plan.required() <= free {
        return Ok(());
    }
    let gib = |b: usize| b as f64 / (1u64 << 30) as f64;
    let (name, bytes, flag) = plan.largest();
    Err(crate::Error::invalid(format!(
        "this run needs {:.1} GiB on {device} but {:.1} GiB are free; the largest term is {name} \
         ({:.1} GiB): lower {flag} (engine plan shows every term)",
        gib(plan.required()),
        gib(free),
        gib(bytes)
    )))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::builtin;

    const GIB: f64 = (1u64 << 30) as f64;

    fn input() -> PlanInput {
        PlanInput {
            rollout_seqs: 64,
            distinct_prompts: 8,
            prompt_len: 512,
            max_new_tokens: 1024,
            micro_batch_tokens: 16_384,
            keep_prefix: true,
            adamw: true,
            kv_cache_tokens: None,
        }
    }

    #[test]
    fn qwen3_4b_layer_18_matches_design() {
        let cfg = builtin("qwen3-4b").unwrap();
        let one = MemoryPlan::new(&cfg, &TrainLayers::parse("18", 36).unwrap(), input());
        // ~8 GB of bf16 weights, ~1.6 GB of trained state (DESIGN.md section 4)
        assert!((one.weights as f64 / 1e9 - 8.04).abs() < 0.1, "{one:?}");
        assert!(
            (one.trained_state as f64 / 1e9 - 1.615).abs() < 0.01,
            "{one:?}"
        );
        assert!(one.full_parameter_state as f64 / 1e9 > 64.0);
        assert!(one.total() < one.full_parameter_state / 2);
        let all = MemoryPlan::new(&cfg, &TrainLayers::parse("all", 36).unwrap(), input());
        assert_eq!(all.trained_state, 36 * one.trained_state);
        assert!(all.train_activations > one.train_activations);
        assert!(one.total() as f64 / GIB < 40.0);
        // the micro-batch bounds the training activations, not the step's size
        let big = PlanInput {
            rollout_seqs: 1024,
            ..input()
        };
        let p_big = MemoryPlan::new(&cfg, &TrainLayers::parse("18", 36).unwrap(), big);
        assert_eq!(p_big.train_activations, one.train_activations);
        assert!(p_big.kv_cache > 15 * one.kv_cache && p_big.kv_cache < 16 * one.kv_cache);
    }

    #[test]
    fn default_micro_batch_fits_and_preflight_names_the_largest_term() {
        let cfg = builtin("qwen3-8b").unwrap();
        let layers = TrainLayers::parse("18", cfg.num_hidden_layers).unwrap();
        let cap = 80usize << 30;
        let n = default_micro_batch_tokens(&cfg, &layers, input(), cap);
        assert!(
            (1536..=MAX_MICRO_BATCH_TOKENS).contains(&n) && n % 1024 == 0,
            "{n}"
        );
        let plan = MemoryPlan::new(
            &cfg,
            &layers,
            PlanInput {
                micro_batch_tokens: n,
                ..input()
            },
        );
        preflight(&plan, cap, "GPU 0").unwrap();
        let huge = PlanInput {
            rollout_seqs: 2048,
            distinct_prompts: 256,
            ..input()
        };
        let plan = MemoryPlan::new(&cfg, &layers, huge);
        let e = preflight(&plan, cap, "GPU 0").unwrap_err().to_string();
        assert!(
            e.contains("KV cache") && e.contains("--kv-cache-tokens"),
            "{e}"
        );
        assert_eq!(e.lines().count(), 1);
    }
}
