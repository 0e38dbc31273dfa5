//! Evaluation on held-out problems, the same reward functions as training: greedy
//! decoding for one sample (accuracy = pass@1), or `k` samples at the run's
//! temperature with the unbiased pass@k estimator.

use super::codec::{problem_ids, TextCodec};
use crate::backend::Backend;
use crate::generate::{generate, GenerateParams};
use crate::model::Model;
use crate::sampling::SamplingParams;
use crate::tasks::eval::mean_pass_at_k;
use crate::tasks::{Problem, Rewarder, ScoreItem, TaskKind};
use crate::Result;
use serde::Serialize;

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct EvalResult {
    pub problems: usize,
    pub samples: usize,
    /// Mean reward over all samples (pass@1).
    pub accuracy: f64,
    /// pass@k for k = samples (when samples > 1).
    pub pass_at_k: Option<f64>,
    /// Multi-turn environments: evaluation episodes the environment dropped
    /// (counted as unsolved).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub env_dropped: Option<usize>,
}

/// Evaluate `problems` with `samples` completions each, `batch` problems at a time.
#[allow(clippy::too_many_arguments)]
pub fn evaluate<B: Backend>(
    model: &Model<B>,
    codec: &dyn TextCodec,
    kind: TaskKind,
    rewarder: &Rewarder,
    problems: &[Problem],
    samples: usize,
    max_new_tokens: usize,
    sampling: SamplingParams,
    seed: u64,
) -> Result<EvalResult> {
    let samples = samples.max(1);
    let sampling = if samples == 1 {
        SamplingParams::default()
    } else {
        sampling
    };
    let params = GenerateParams {
        max_new_tokens,
        sampling,
        seed,
        stop_ids: codec.stop_ids().to_vec(),
        kv_cache_tokens: None,
    };
    let mut counts = Vec::with_capacity(problems.len());
    let mut total = 0.0;
    for chunk in problems.chunks(64) {
        let mut prompts = Vec::with_capacity(chunk.len() * samples);
        for p in chunk {
            let ids = problem_ids(codec, p)?;
            prompts.extend(std::iter::repeat_n(ids, samples));
        }
        let outs = generate(model, &prompts, &params)?;
        let texts: Vec<String> = outs
            .iter()
            .map(|ids| codec.decode(ids))
            .collect::<Result<_>>()?;
        let items: Vec<ScoreItem> = outs
            .iter()
            .zip(&texts)
            .enumerate()
            .map(|(i, (ids, text))| ScoreItem {
                problem: &chunk[i / samples],
                completion: text,
                completion_ids: ids,
            })
            .collect();
        let scores = rewarder.score_batch(kind, &items)?;
        for per_problem in scores.chunks(samples) {
            let mut correct = 0;
            for s in per_problem {
                total += s.reward;
                if s.reward >= 1.0 {
                    correct += 1;
                }
            }
            counts.push((samples, correct));
        }
    }
    let n = (problems.len() * samples).max(1) as f64;
    Ok(EvalResult {
        problems: problems.len(),
        samples,
        accuracy: total / n,
        pass_at_k: (samples > 1).then(|| mean_pass_at_k(&counts, samples)),
        env_dropped: None,
    })
}
