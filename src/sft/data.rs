//! SFT examples from JSONL (optionally `.gz`), one per line, in the layouts TRL's
//! SFTTrainer reads:
//!
//! - `{"prompt": ..., "completion": "..."}`: the prompt (a string, or chat messages)
//!   rendered as `engine run` renders it (the chat template's user turn and
//!   generation prompt for a chat model; raw for the built-in character model), then
//!   the completion's tokens and the end-of-turn token (the codec's first stop id).
//! - `{"messages": [...]}`: every message but the last is the prompt; the last must
//!   be the assistant's and is the completion.
//! - `{"text": "..."}`: plain text, trained on every token (needs `--loss-on all`).
//!
//! `--loss-on completion` (default) puts the loss on the completion's tokens only;
//! `--loss-on all` on every token but the first. Sequences longer than
//! `max_seq_len` are cut at the end.

use crate::chat::Message;
use crate::codec::TextCodec;
use crate::train::Rollout;
use crate::{Error, Result};
use serde_json::Value;
use std::path::Path;

/// Which tokens carry the loss (`--loss-on`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LossOn {
    Completion,
    All,
}

impl LossOn {
    pub fn parse(s: &str) -> Result<LossOn> {
        match s {
            "completion" => Ok(LossOn::Completion),
            "all" => Ok(LossOn::All),
            _ => Err(Error::invalid(format!(
                "--loss-on {s:?}: expected completion or all"
            ))),
        }
    }
}

/// One training sequence: `prompt_ids` carry no loss, `completion_ids` do (as in a
/// rollout, so the trainer packs it the same way).
pub type Example = Rollout;

/// Read every example of `path`; errors name the file and line.
pub fn load(
    path: &Path,
    codec: &dyn TextCodec,
    loss_on: LossOn,
    max_seq_len: usize,
) -> Result<Vec<Example>> {
    let rows = crate::tasks::read_jsonl(path, |rec| {
        let bad = |msg: String| rec.error(msg);
        let stop = codec.stop_ids().first().copied();
        let end = |mut ids: Vec<u32>| {
            ids.extend(stop);
            ids
        };
        let (prompt, completion) = if let Some(text) = rec.obj.get("text") {
            let text = text
                .as_str()
                .ok_or_else(|| bad("key \"text\" is not a string".into()))?;
            if loss_on != LossOn::All {
                return Err(bad(
                    "a \"text\" row has no prompt/completion split: use --loss-on all".into(),
                ));
            }
            (Vec::new(), codec.text_ids(text)?)
        } else if let Some(m) = rec.obj.get("messages") {
            let mut msgs = messages(m).map_err(|e| bad(format!("key \"messages\": {e}")))?;
            let last = msgs
                .pop()
                .filter(|l| l.role == "assistant")
                .ok_or_else(|| {
                    bad("key \"messages\": the last message must be the assistant's".into())
                })?;
            if msgs.is_empty() {
                return Err(bad("key \"messages\": no prompt before the answer".into()));
            }
            (
                codec.messages_ids(&msgs)?,
                end(codec.text_ids(&last.content)?),
            )
        } else {
            let prompt = match rec.obj.get("prompt") {
                Some(Value::String(s)) => codec.prompt_ids(s)?,
                Some(m @ Value::Array(_)) => codec
                    .messages_ids(&messages(m).map_err(|e| bad(format!("key \"prompt\": {e}")))?)?,
                Some(_) => {
                    return Err(bad(
                        "key \"prompt\" is not a string or a list of chat messages".into(),
                    ))
                }
                None => {
                    return Err(bad(
                        "expected \"prompt\" and \"completion\", \"messages\", or \"text\"".into(),
                    ))
                }
            };
            let completion = rec
                .obj
                .get("completion")
                .and_then(Value::as_str)
                .ok_or_else(|| bad("key \"completion\" is missing or not a string".into()))?;
            (prompt, end(codec.text_ids(completion)?))
        };
        Ok(example(prompt, completion, loss_on, max_seq_len))
    })?;
    let kept: Vec<Example> = rows.into_iter().flatten().collect();
    if kept.is_empty() {
        return Err(Error::file(path, "no example has a token to train on"));
    }
    Ok(kept)
}

/// Examples of generated arith problems: the prompt as `engine run` shows it, the
/// worked solution (`arith::worked`) and the end-of-answer token.
pub fn arith_examples(
    problems: &[crate::tasks::Problem],
    codec: &dyn TextCodec,
    max_seq_len: usize,
) -> Result<Vec<Example>> {
    let stop = codec.stop_ids().first().copied();
    problems
        .iter()
        .filter_map(|p| {
            let w = crate::tasks::arith::worked(&p.prompt)?;
            let run = || -> Result<Option<Example>> {
                let mut completion = codec.text_ids(&w)?;
                completion.extend(stop);
                Ok(example(
                    codec.prompt_ids(&p.prompt)?,
                    completion,
                    LossOn::Completion,
                    max_seq_len,
                ))
            };
            run().transpose()
        })
        .collect()
}

/// The example of `prompt ++ completion` (None when no token carries the loss).
fn example(
    prompt: Vec<u32>,
    completion: Vec<u32>,
    loss_on: LossOn,
    max_seq_len: usize,
) -> Option<Example> {
    let mut all: Vec<u32> = prompt.iter().chain(&completion).copied().collect();
    all.truncate(max_seq_len);
    let split = match loss_on {
        LossOn::All => 1,
        LossOn::Completion => prompt.len().max(1),
    };
    if all.len() <= split {
        return None;
    }
    let completion_ids = all.split_off(split);
    Some(Rollout {
        group: String::new(),
        prompt_ids: all,
        completion_ids,
        reward: 0.0,
        old_logprobs: None,
        ref_logprobs: None,
        advantage: Some(0.0),
    })
}

fn messages(v: &Value) -> std::result::Result<Vec<Message>, String> {
    let list = v.as_array().ok_or("not a list of chat messages")?;
    list.iter()
        .enumerate()
        .map(|(i, m)| {
            let f = |k: &str| m.get(k).and_then(Value::as_str);
            match (f("role"), f("content")) {
                (Some(r), Some(c)) => Ok(Message::new(r, c)),
                _ => Err(format!("message {i} needs string \"role\" and \"content\"")),
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_loss_sits_on_the_completion_or_on_everything() {
        let e = example(vec![1, 2, 3], vec![4, 5], LossOn::Completion, 100).unwrap();
        assert_eq!(
            (e.prompt_ids, e.completion_ids),
            (vec![1, 2, 3], vec![4, 5])
        );
        let e = example(vec![1, 2, 3], vec![4, 5], LossOn::All, 100).unwrap();
        assert_eq!(
            (e.prompt_ids, e.completion_ids),
            (vec![1], vec![2, 3, 4, 5])
        );
        let e = example(vec![1, 2, 3], vec![4, 5], LossOn::Completion, 4).unwrap();
        assert_eq!(e.completion_ids, vec![4], "cut at max_seq_len");
        assert!(example(vec![1, 2, 3], vec![4], LossOn::Completion, 3).is_none());
        let e = example(vec![], vec![7, 8], LossOn::All, 10).unwrap();
        assert_eq!((e.prompt_ids, e.completion_ids), (vec![7], vec![8]));
    }
}
