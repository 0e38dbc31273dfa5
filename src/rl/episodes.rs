//! Multi-turn rollouts: G episodes per task played against an environment in lock
//! step. Each turn, every live episode's dialogue so far (observation, action,
//! observation, ...) becomes a prompt; one batched generation gives every episode
//! its next action; the environment answers each. An episode ends when the
//! environment says done or after `max_turns` actions.
//!
//! Each (episode, turn) becomes one training sample: prompt = the dialogue before
//! the action, completion = the action's tokens, advantage = that step's (GiGPO,
//! DESIGN section 5) or the episode's (GRPO / Dr. GRPO, broadcast over its turns,
//! as verl-agent does).
//!
//! An episode the environment drops (it failed and was restarted without it,
//! `crate::env`) leaves the step: no rollouts come from it; `Played::dropped`
//! counts it.
//!
//! Reproducibility: turn t's generation uses seed `mix64(seed ^ t)` and the random
//! stream of the episode's index, so a step's episodes depend only on the seed and
//! the tasks.

use super::codec::TextCodec;
use crate::backend::Backend;
use crate::env::Environment;
use crate::generate::{generate, GenerateParams};
use crate::model::Model;
use crate::sampling::mix64;
use crate::train::{
    advantages, gigpo_advantages, Algo, EpisodeStep, EpisodeSteps, GigpoConfig, Rollout,
};
use crate::Result;

/// One action and what followed it.
#[derive(Debug, Clone)]
pub struct Turn {
    pub prompt_ids: Vec<u32>,
    pub completion_ids: Vec<u32>,
    pub action: String,
    /// The anchor of the state the action was taken in.
    pub anchor: String,
    pub reward: f64,
}

#[derive(Debug, Clone)]
pub struct Episode {
    /// Index of its task in the step's list (its prompt group).
    pub group: usize,
    pub turns: Vec<Turn>,
    /// The environment said done (else it ran out of turns).
    pub done: bool,
}

impl Episode {
    /// Undiscounted sum of the step rewards.
    pub fn ret(&self) -> f64 {
        self.turns.iter().map(|t| t.reward).sum()
    }
}

/// The episodes of one `play`.
#[derive(Debug, Clone)]
pub struct Played {
    /// The episodes played to the end, in id order.
    pub episodes: Vec<Episode>,
    /// Episodes the environment dropped (left out of `episodes`).
    pub dropped: usize,
}

/// Play `group_size` episodes of each task. Episode ids are `first_id + i` for the
/// i-th episode (task-major). Starts a pass of the environment (`begin_step`).
#[allow(clippy::too_many_arguments)]
pub fn play<B: Backend>(
    model: &Model<B>,
    codec: &dyn TextCodec,
    env: &mut dyn Environment,
    tasks: &[u64],
    group_size: usize,
    max_turns: usize,
    params: &GenerateParams,
    first_id: u64,
) -> Result<Played> {
    let n = tasks.len() * group_size;
    let mut episodes = Vec::with_capacity(n);
    let mut dialogues = Vec::with_capacity(n);
    let mut anchors = Vec::with_capacity(n);
    let mut dropped = vec![false; n];
    env.begin_step();
    for i in 0..n {
        let (anchor, text) = match env.reset(first_id + i as u64, tasks[i / group_size])? {
            Some(obs) => (obs.anchor().to_string(), obs.text),
            None => {
                dropped[i] = true;
                Default::default()
            }
        };
        anchors.push(anchor);
        dialogues.push(vec![text]);
        episodes.push(Episode {
            group: i / group_size,
            turns: Vec::new(),
            done: false,
        });
    }
    for t in 0..max_turns {
        let live: Vec<usize> = (0..n)
            .filter(|&i| !episodes[i].done && !dropped[i])
            .collect();
        if live.is_empty() {
            break;
        }
        let prompts: Vec<Vec<u32>> = live
            .iter()
            .map(|&i| codec.dialogue_ids(&dialogues[i]))
            .collect::<Result<_>>()?;
        let turn_params = GenerateParams {
            seed: mix64(params.seed ^ t as u64),
            ..params.clone()
        };
        // Generation streams follow the batch row; rows are live episodes in
        // order, so the streams depend on which episodes are still running,
        // itself a function of the seed.
        let actions = generate(model, &prompts, &turn_params)?;
        for ((&i, prompt_ids), completion_ids) in live.iter().zip(prompts).zip(actions) {
            let action = codec.decode(&completion_ids)?;
            let Some(tr) = env.step(first_id + i as u64, &action)? else {
                dropped[i] = true;
                continue;
            };
            episodes[i].turns.push(Turn {
                prompt_ids,
                completion_ids,
                action: action.clone(),
                anchor: std::mem::replace(&mut anchors[i], tr.observation.anchor().to_string()),
                reward: tr.reward,
            });
            dialogues[i].push(action);
            dialogues[i].push(tr.observation.text);
            episodes[i].done = tr.done;
        }
    }
    for i in (0..n).filter(|&i| !dropped[i]) {
        env.end(first_id + i as u64)?;
    }
    let kept = episodes
        .into_iter()
        .zip(&dropped)
        .filter(|(_, &d)| !d)
        .map(|(e, _)| e)
        .collect();
    Ok(Played {
        episodes: kept,
        dropped: dropped.iter().filter(|&&d| d).count(),
    })
}

/// The training samples of `episodes`, one per turn, each carrying its advantage.
/// `tag` names the step's groups.
pub fn rollouts(episodes: &[Episode], algo: Algo, gigpo: &GigpoConfig, tag: &str) -> Vec<Rollout> {
    let group = |e: &Episode| format!("{tag}-{}", e.group);
    let per_turn: Vec<Vec<f64>> = match algo {
        Algo::Gigpo => {
            let steps: Vec<EpisodeSteps> = episodes
                .iter()
                .map(|e| EpisodeSteps {
                    group: group(e),
                    steps: e
                        .turns
                        .iter()
                        .map(|t| EpisodeStep {
                            anchor: t.anchor.clone(),
                            reward: t.reward,
                        })
                        .collect(),
                })
                .collect();
            gigpo_advantages(&steps, gigpo)
        }
        Algo::Grpo | Algo::DrGrpo => {
            // One pseudo-rollout per episode carries its return through the group
            // statistics; the result is broadcast over the episode's turns.
            let whole: Vec<Rollout> = episodes
                .iter()
                .map(|e| Rollout {
                    group: group(e),
                    prompt_ids: vec![0],
                    completion_ids: vec![],
                    reward: e.ret(),
                    old_logprobs: None,
                    ref_logprobs: None,
                    advantage: None,
                })
                .collect();
            let adv = advantages(&whole, algo);
            episodes
                .iter()
                .zip(adv)
                .map(|(e, a)| vec![a; e.turns.len()])
                .collect()
        }
    };
    let mut out = Vec::new();
    for (e, adv) in episodes.iter().zip(per_turn) {
        for (t, a) in e.turns.iter().zip(adv) {
            out.push(Rollout {
                group: group(e),
                prompt_ids: t.prompt_ids.clone(),
                completion_ids: t.completion_ids.clone(),
                reward: e.ret(),
                old_logprobs: None,
                ref_logprobs: None,
                advantage: Some(a),
            });
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn episode(group: usize, rewards: &[f64], anchors: &[&str]) -> Episode {
        Episode {
            group,
            turns: rewards
                .iter()
                .zip(anchors)
                .enumerate()
                .map(|(t, (&reward, &anchor))| Turn {
                    prompt_ids: vec![1; t + 1],
                    completion_ids: vec![2],
                    action: "x".into(),
                    anchor: anchor.into(),
                    reward,
                })
                .collect(),
            done: rewards.last() == Some(&1.0),
        }
    }

    #[test]
    fn one_rollout_per_turn_with_episode_or_step_advantages() {
        let eps = [
            episode(0, &[0.0, 1.0], &["", "a"]),
            episode(0, &[0.0, 0.0, 0.0], &["", "b", "c"]),
        ];
        let cfg = GigpoConfig::default();
        // GRPO: the episode's advantage on each of its turns (returns 1 and 0:
        // +-0.5 / (std sqrt(1/2) + 1e-6)).
        let r = rollouts(&eps, Algo::Grpo, &cfg, "s1");
        assert_eq!(r.len(), 5);
        let a = 0.5 / (0.5f64.sqrt() + 1e-6);
        let adv: Vec<f64> = r.iter().map(|x| x.advantage.unwrap()).collect();
        for (got, want) in adv.iter().zip([a, a, -a, -a, -a]) {
            assert!((got - want).abs() < 1e-12, "{adv:?}");
        }
        assert!(r.iter().all(|x| x.group == "s1-0"));
        assert_eq!(r[1].prompt_ids.len(), 2);
        // GiGPO, mean_norm, gamma 0.95: episode level +-0.5; the first turns share
        // the anchor "" with step returns 0.95 and 0 -> +-0.475; the rest are alone.
        let r = rollouts(&eps, Algo::Gigpo, &cfg, "s1");
        let adv: Vec<f64> = r.iter().map(|x| x.advantage.unwrap()).collect();
        for (got, want) in adv.iter().zip([0.975, 0.5, -0.975, -0.5, -0.5]) {
            assert!((got - want).abs() < 1e-12, "{adv:?}");
        }
    }
}
