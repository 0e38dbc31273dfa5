//! Datasets for custom reward functions (`--task custom`, or `--reward-fn` without
//! `--task`): JSONL rows with `prompt`, a string or a chat message list
//! (`[{"role": "user", "content": ...}, ...]`, rendered through the model's chat
//! template), and any other columns, which reach the reward function
//! (`reward_fn.rs`): verl's `data_source`, `reward_model.ground_truth` and
//! `extra_info`, or every column for TRL's batched form.

use super::jsonl::{self, Record};
use super::{Problem, TaskKind};
use crate::chat::Message;
use crate::Result;
use serde_json::{json, Map, Value};
use std::path::Path;
use std::sync::Arc;

/// A dataset row as the reward function sees it.
#[derive(Clone, Debug, PartialEq)]
pub struct Row {
    /// The prompt as chat messages, when the row gives a list.
    pub messages: Option<Vec<Message>>,
    /// Every column of the row, `prompt` included.
    pub columns: Map<String, Value>,
}

pub fn load(path: &Path) -> Result<Vec<Problem>> {
    let name = path
        .file_name()
        .unwrap_or_default()
        .to_string_lossy()
        .into_owned();
    jsonl::read(path, |rec| {
        let (prompt, messages) = prompt_of(rec)?;
        let row = Row {
            messages,
            columns: rec.obj.clone(),
        };
        let reference = match ground_truth(&row.columns) {
            Value::String(s) => s,
            Value::Null => String::new(),
            v => v.to_string(),
        };
        Ok(Problem {
            id: format!("{name} line {}", rec.line),
            prompt,
            reference,
            code: None,
            row: Some(Arc::new(row)),
        })
    })
}

/// The prompt text (the last user turn for a message list) and the messages.
fn prompt_of(rec: &Record) -> Result<(String, Option<Vec<Message>>)> {
    match rec.obj.get("prompt") {
        Some(Value::String(s)) => Ok((s.clone(), None)),
        Some(Value::Array(list)) if !list.is_empty() => {
            let messages = list
                .iter()
                .enumerate()
                .map(|(i, m)| {
                    let field = |k: &str| m.get(k).and_then(Value::as_str);
                    match (field("role"), field("content")) {
                        (Some(r), Some(c)) => Ok(Message::new(r, c)),
                        _ => Err(rec.error(format!(
                            "key \"prompt\": message {i} needs string \"role\" and \"content\""
                        ))),
                    }
                })
                .collect::<Result<Vec<_>>>()?;
            let text = messages
                .iter()
                .rev()
                .find(|m| m.role == "user")
                .map(|m| m.content.clone())
                .unwrap_or_default();
            Ok((text, Some(messages)))
        }
        Some(_) => {
            Err(rec.error("key \"prompt\" is not a string or a non-empty list of chat messages"))
        }
        None => Err(rec.error("missing key \"prompt\"")),
    }
}

/// verl's ground truth: `reward_model.ground_truth`, else `ground_truth`, else
/// `answer`.
fn ground_truth(cols: &Map<String, Value>) -> Value {
    cols.get("reward_model")
        .and_then(|r| r.get("ground_truth"))
        .or_else(|| cols.get("ground_truth"))
        .or_else(|| cols.get("answer"))
        .cloned()
        .unwrap_or(Value::Null)
}

/// The `data_source` verl's preprocessing scripts write for a built-in task.
pub fn verl_data_source(kind: TaskKind) -> &'static str {
    match kind {
        TaskKind::Gsm8k => "openai/gsm8k",
        TaskKind::Math => "lighteval/MATH",
        TaskKind::Code => "openai/openai_humaneval",
        TaskKind::Arith => "arith",
        TaskKind::Custom => "custom",
    }
}

impl Problem {
    /// The row's columns; for a built-in task's problem, `prompt`, `ground_truth`
    /// (the reference) and `data_source`.
    pub fn columns(&self, kind: TaskKind) -> Map<String, Value> {
        match &self.row {
            Some(r) => r.columns.clone(),
            None => {
                let mut m = Map::new();
                m.insert("prompt".into(), json!(self.prompt));
                m.insert("ground_truth".into(), json!(self.reference));
                m.insert("data_source".into(), json!(verl_data_source(kind)));
                m
            }
        }
    }

    /// verl's `compute_score` arguments other than `solution_str`:
    /// (data_source, ground_truth, extra_info). A built-in task's problem has its
    /// reference as the ground truth and the task's verl name as the source.
    pub fn verl_fields(&self, kind: TaskKind) -> (Value, Value, Value) {
        let Some(row) = &self.row else {
            return (
                json!(verl_data_source(kind)),
                json!(self.reference),
                json!({}),
            );
        };
        let cols = &row.columns;
        let source = cols
            .get("data_source")
            .cloned()
            .unwrap_or_else(|| json!(verl_data_source(kind)));
        let extra = match cols.get("extra_info") {
            Some(v) if !v.is_null() => v.clone(),
            _ => json!({}),
        };
        (source, ground_truth(cols), extra)
    }

    /// Whether the prompt is a chat message list (TRL's conversational format).
    pub fn is_chat(&self) -> bool {
        self.row.as_ref().is_some_and(|r| r.messages.is_some())
    }
}
