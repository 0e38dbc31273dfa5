//! Rollout files: one JSON object per line,
//! `{"group": g, "prompt_ids": [...], "completion_ids": [...], "reward": r}` with
//! optional `"old_logprobs"` and `"ref_logprobs"` (one per completion token) and an
//! optional `"advantage"` (given: used as is, the group's rewards are not
//! normalised; how GiGPO's per-step advantages reach the trainer). `group` may be a
//! number or a string; records with the same group are one GRPO group.

use crate::{Error, Result};
use serde::Deserialize;
use std::path::Path;

/// One sampled completion and its reward.
#[derive(Debug, Clone, PartialEq)]
pub struct Rollout {
    pub group: String,
    pub prompt_ids: Vec<u32>,
    pub completion_ids: Vec<u32>,
    pub reward: f64,
    /// Log-probs of the completion under the policy that sampled it; `None`: the
    /// current policy's, detached (a single on-policy update).
    pub old_logprobs: Option<Vec<f32>>,
    /// Log-probs under the reference policy (for the KL term).
    pub ref_logprobs: Option<Vec<f32>>,
    /// The advantage, when computed outside the group statistics (GiGPO).
    pub advantage: Option<f64>,
}

impl Rollout {
    /// Tokens of the whole sequence (prompt then completion).
    pub fn len(&self) -> usize {
        self.prompt_ids.len() + self.completion_ids.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Line {
    group: serde_json::Value,
    prompt_ids: Vec<u32>,
    completion_ids: Vec<u32>,
    reward: f64,
    #[serde(default)]
    old_logprobs: Option<Vec<f32>>,
    #[serde(default)]
    ref_logprobs: Option<Vec<f32>>,
    #[serde(default)]
    advantage: Option<f64>,
}

/// Parse one line (1-based `line_no` for messages).
pub fn parse_rollout(text: &str) -> std::result::Result<Rollout, String> {
    let l: Line = serde_json::from_str(text).map_err(|e| e.to_string())?;
    let group = match l.group {
        serde_json::Value::String(s) => s,
        serde_json::Value::Number(n) => n.to_string(),
        other => {
            return Err(format!(
                "\"group\" must be a number or a string, not {other}"
            ))
        }
    };
    if l.prompt_ids.is_empty() {
        return Err("\"prompt_ids\" is empty (a completion needs a prompt to follow)".into());
    }
    if !l.reward.is_finite() {
        return Err(format!("\"reward\" is {}", l.reward));
    }
    if let Some(a) = l.advantage.filter(|a| !a.is_finite()) {
        return Err(format!("\"advantage\" is {a}"));
    }
    for (name, lp) in [
        ("old_logprobs", &l.old_logprobs),
        ("ref_logprobs", &l.ref_logprobs),
    ] {
        if let Some(lp) = lp {
            if lp.len() != l.completion_ids.len() {
                return Err(format!(
                    "\"{name}\" has {} values for {} completion tokens",
                    lp.len(),
                    l.completion_ids.len()
                ));
            }
            if let Some(v) = lp.iter().find(|v| !v.is_finite() || **v > 0.0) {
                return Err(format!("\"{name}\" holds {v}, not a log-probability"));
            }
        }
    }
    Ok(Rollout {
        group,
        prompt_ids: l.prompt_ids,
        completion_ids: l.completion_ids,
        reward: l.reward,
        old_logprobs: l.old_logprobs,
        ref_logprobs: l.ref_logprobs,
        advantage: l.advantage,
    })
}

/// Read a rollout file. Blank lines are skipped; a malformed line is an error naming
/// the file and the line.
pub fn read_rollouts(path: &Path) -> Result<Vec<Rollout>> {
    let text = std::fs::read_to_string(path).map_err(|e| Error::file(path, e))?;
    let mut out = Vec::new();
    for (i, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let r =
            parse_rollout(line).map_err(|e| Error::file(path, format!("line {}: {e}", i + 1)))?;
        out.push(r);
    }
    if out.is_empty() {
        return Err(Error::file(path, "no rollouts in the file"));
    }
    Ok(out)
}

/// Check every id against the vocabulary.
pub fn check_vocab(rollouts: &[Rollout], vocab: usize) -> Result<()> {
    for (i, r) in rollouts.iter().enumerate() {
        if let Some(&id) = r
            .prompt_ids
            .iter()
            .chain(&r.completion_ids)
            .find(|&&id| id as usize >= vocab)
        {
            return Err(Error::invalid(format!(
                "rollout {}: token id {id} is outside the vocabulary ({vocab} tokens)",
                i + 1
            )));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_rejects() {
        let r = parse_rollout(
            r#"{"group": 3, "prompt_ids": [1, 2], "completion_ids": [5], "reward": 1.0, "old_logprobs": [-0.5]}"#,
        )
        .unwrap();
        assert_eq!(r.group, "3");
        assert_eq!(r.old_logprobs, Some(vec![-0.5]));
        for bad in [
            r#"{"group": 1, "prompt_ids": [], "completion_ids": [5], "reward": 1}"#,
            r#"{"group": 1, "prompt_ids": [1], "completion_ids": [5], "reward": 1, "old_logprobs": []}"#,
            r#"{"group": 1, "prompt_ids": [1], "completion_ids": [5], "reward": 1, "old_logprobs": [0.5]}"#,
            r#"{"group": [1], "prompt_ids": [1], "completion_ids": [5], "reward": 1}"#,
            r#"{"group": 1, "prompt_ids": [1], "completion_ids": [5]}"#,
            r#"{"group": 1, "prompt_ids": [1], "completion_ids": [-5], "reward": 1}"#,
            r#"{"group": 1, "prompt_ids": [1], "completion_ids": [5], "reward": 1, "extra": 2}"#,
            "not json",
        ] {
            assert!(parse_rollout(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn file_errors_name_the_line() {
        let dir = std::env::temp_dir().join(format!("onelayer-rollouts-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let p = dir.join("r.jsonl");
        std::fs::write(
            &p,
            "{\"group\": 1, \"prompt_ids\": [1], \"completion_ids\": [2], \"reward\": 0}\n\n{oops\n",
        )
        .unwrap();
        let e = read_rollouts(&p).unwrap_err().to_string();
        assert!(e.contains("r.jsonl") && e.contains("line 3"), "{e}");
        assert!(!e.contains('\n'));
    }
}
