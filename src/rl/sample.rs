//! Rollouts for one RL step: each prompt sampled `group_size` times in one batched
//! generation, each completion decoded, then the whole batch rewarded at once (so a
//! custom reward function sees the step's batch, and a failing one stops the step
//! before training). Sample k of prompt p uses the
//! random stream of generation row `p * group_size + k` under the step's seed, so a
//! step's rollouts depend only on (seed, step, problems), not on batch composition.

use super::codec::TextCodec;
use crate::backend::Backend;
use crate::generate::{generate, GenerateParams};
use crate::model::Model;
use crate::tasks::{Problem, Rewarder, ScoreItem, Scored, TaskKind};
use crate::train::Rollout;
use crate::Result;

/// One sampled completion with its text and reward details.
#[derive(Debug, Clone)]
pub struct Sample {
    pub rollout: Rollout,
    /// Index of the problem in the step's list.
    pub problem: usize,
    pub text: String,
    /// What decided the reward.
    pub scored: Scored,
}

/// Sample `group_size` completions for each of `prompts` (token ids; prompt p is
/// `problems[p]`) and reward them with `rewarder`.
#[allow(clippy::too_many_arguments)]
pub fn sample_groups<B: Backend>(
    model: &Model<B>,
    codec: &dyn TextCodec,
    prompts: &[Vec<u32>],
    problems: &[&Problem],
    kind: TaskKind,
    rewarder: &Rewarder,
    group_size: usize,
    params: &GenerateParams,
    group_tag: &str,
) -> Result<Vec<Sample>> {
    let batch: Vec<Vec<u32>> = prompts
        .iter()
        .flat_map(|p| std::iter::repeat_n(p.clone(), group_size))
        .collect();
    let completions = generate(model, &batch, params)?;
    let texts: Vec<String> = completions
        .iter()
        .map(|ids| codec.decode(ids))
        .collect::<Result<_>>()?;
    let items: Vec<ScoreItem> = completions
        .iter()
        .zip(&texts)
        .enumerate()
        .map(|(i, (ids, text))| ScoreItem {
            problem: problems[i / group_size],
            completion: text,
            completion_ids: ids,
        })
        .collect();
    let scores = rewarder.score_batch(kind, &items)?;
    let mut out = Vec::with_capacity(batch.len());
    for (i, ((ids, text), scored)) in completions.into_iter().zip(texts).zip(scores).enumerate() {
        let p = i / group_size;
        out.push(Sample {
            rollout: Rollout {
                group: format!("{group_tag}-{p}"),
                prompt_ids: prompts[p].clone(),
                completion_ids: ids,
                reward: scored.reward,
                old_logprobs: None,
                ref_logprobs: None,
                advantage: None,
            },
            problem: p,
            text,
            scored,
        });
    }
    Ok(out)
}
