//! Rollouts for one RL step: each prompt sampled `group_size` times in one batched
//! generation, each completion decoded and rewarded. Sample k of prompt p uses the
//! random stream of generation row `p * group_size + k` under the step's seed, so a
//! step's rollouts depend only on (seed, step, problems), not on batch composition.

use super::codec::TextCodec;
use crate::backend::Backend;
use crate::generate::{generate, GenerateParams};
use crate::model::Model;
use crate::train::Rollout;
use crate::Result;

/// One sampled completion with its text and reward details.
#[derive(Debug, Clone)]
pub struct Sample {
    pub rollout: Rollout,
    /// Index of the problem in the step's list.
    pub problem: usize,
    pub text: String,
}

/// Sample `group_size` completions for each of `prompts` (token ids) and reward them
/// with `reward(problem index, completion text)`.
pub fn sample_groups<B: Backend>(
    model: &Model<B>,
    codec: &dyn TextCodec,
    prompts: &[Vec<u32>],
    group_size: usize,
    params: &GenerateParams,
    group_tag: &str,
    mut reward: impl FnMut(usize, &str) -> f64,
) -> Result<Vec<Sample>> {
    let batch: Vec<Vec<u32>> = prompts
        .iter()
        .flat_map(|p| std::iter::repeat_n(p.clone(), group_size))
        .collect();
    let completions = generate(model, &batch, params)?;
    let mut out = Vec::with_capacity(batch.len());
    for (i, ids) in completions.into_iter().enumerate() {
        let p = i / group_size;
        let text = codec.decode(&ids)?;
        let r = reward(p, &text);
        out.push(Sample {
            rollout: Rollout {
                group: format!("{group_tag}-{p}"),
                prompt_ids: prompts[p].clone(),
                completion_ids: ids,
                reward: r,
                old_logprobs: None,
                ref_logprobs: None,
                advantage: None,
            },
            problem: p,
            text,
        });
    }
    Ok(out)
}
