//! Qwen chat templates written out in Rust (no Jinja engine), without tools.
//!
//! They reproduce, character for character, the `chat_template` of:
//! - Qwen3 (hybrid thinking): huggingface.co/Qwen/Qwen3-8B, tokenizer_config.json
//!   (the same template ships with Qwen3-0.6B ... Qwen3-32B);
//! - Qwen2.5: huggingface.co/Qwen/Qwen2.5-0.5B-Instruct, tokenizer_config.json
//!   (default system "You are Qwen, created by Alibaba Cloud. You are a helpful
//!   assistant.") and huggingface.co/Qwen/Qwen2.5-0.5B (base models, default
//!   system "You are a helpful assistant.").
//!
//! Only the branches without `tools` are implemented; a `tool` message is
//! reported as unsupported, and messages carry no separate `reasoning_content`
//! (Qwen3 reasoning is read from `<think>...</think>` inside the content, as the
//! template does).
//!
//! `ChatTemplate::detect` picks the template from the model directory's
//! `chat_template.jinja` or `tokenizer_config.json` text, falling back to the
//! config's `model_type`. Templates it does not recognise (Qwen3-2507 Instruct /
//! Thinking, QwQ) are treated as the closest of the two.

use std::path::Path;

use crate::error::{Error, Result};

/// System prompt that Qwen2.5 Instruct templates insert when none is given.
pub const QWEN25_DEFAULT_SYSTEM: &str =
    "You are Qwen, created by Alibaba Cloud. You are a helpful assistant.";
/// System prompt that Qwen2.5 base-model templates insert when none is given.
pub const GENERIC_DEFAULT_SYSTEM: &str = "You are a helpful assistant.";

const IM_START: &str = "<|im_start|>";
const IM_END: &str = "<|im_end|>";

/// One chat turn. `role` is `system`, `user` or `assistant`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Message {
    pub role: String,
    pub content: String,
}

impl Message {
    pub fn new(role: impl Into<String>, content: impl Into<String>) -> Self {
        Self {
            role: role.into(),
            content: content.into(),
        }
    }
    pub fn system(content: impl Into<String>) -> Self {
        Self::new("system", content)
    }
    pub fn user(content: impl Into<String>) -> Self {
        Self::new("user", content)
    }
    pub fn assistant(content: impl Into<String>) -> Self {
        Self::new("assistant", content)
    }
}

/// Which official template to reproduce.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ChatTemplate {
    /// Qwen3 hybrid-thinking template (`enable_thinking`).
    Qwen3,
    /// Qwen2.5 ChatML template; `default_system` is inserted when the
    /// conversation does not start with a system message.
    Qwen25 { default_system: Option<String> },
}

impl ChatTemplate {
    /// Pick the template for a model directory: from the Jinja text in
    /// `chat_template.jinja` or `tokenizer_config.json` (`chat_template`) when
    /// present, else from `model_type` (`qwen3*` → Qwen3, anything else →
    /// Qwen2.5 Instruct). Unreadable files fall back to `model_type` too.
    pub fn detect(model_dir: &Path, model_type: &str) -> ChatTemplate {
        match template_text(model_dir) {
            Some(text) => Self::from_template_text(&text),
            None if model_type.starts_with("qwen3") => ChatTemplate::Qwen3,
            None => ChatTemplate::Qwen25 {
                default_system: Some(QWEN25_DEFAULT_SYSTEM.into()),
            },
        }
    }

    /// Classify the Jinja source of a chat template.
    pub fn from_template_text(text: &str) -> ChatTemplate {
        let default_system = if text.contains("enable_thinking") || text.contains("<think>") {
            return ChatTemplate::Qwen3;
        } else if text.contains(QWEN25_DEFAULT_SYSTEM) {
            Some(QWEN25_DEFAULT_SYSTEM)
        } else if text.contains(GENERIC_DEFAULT_SYSTEM) {
            Some(GENERIC_DEFAULT_SYSTEM)
        } else {
            None
        };
        ChatTemplate::Qwen25 {
            default_system: default_system.map(str::to_string),
        }
    }

    /// Whether the template understands `enable_thinking`.
    pub fn supports_thinking(&self) -> bool {
        matches!(self, ChatTemplate::Qwen3)
    }

    /// Render a conversation as the official template does with
    /// `apply_chat_template(messages, tokenize=False, add_generation_prompt,
    /// enable_thinking)`. `enable_thinking` only matters for Qwen3 with a
    /// generation prompt (false appends an empty think block). Errors on an
    /// empty conversation or a role other than system/user/assistant.
    pub fn render(
        &self,
        messages: &[Message],
        add_generation_prompt: bool,
        enable_thinking: bool,
    ) -> Result<String> {
        if messages.is_empty() {
            return Err(Error::invalid("chat template: no messages to render"));
        }
        for m in messages {
            check_role(&m.role)?;
        }
        let mut out = String::new();
        match self {
            ChatTemplate::Qwen25 { default_system } => {
                render_qwen25(&mut out, messages, default_system.as_deref())
            }
            ChatTemplate::Qwen3 => render_qwen3(&mut out, messages),
        }
        if add_generation_prompt {
            out.push_str(IM_START);
            out.push_str("assistant\n");
            if *self == ChatTemplate::Qwen3 && !enable_thinking {
                out.push_str("<think>\n\n</think>\n\n");
            }
        }
        Ok(out)
    }

    /// Shorthand for the usual prompt: an optional system message, one user
    /// turn, and the generation prompt.
    pub fn prompt(
        &self,
        system: Option<&str>,
        user: &str,
        enable_thinking: bool,
    ) -> Result<String> {
        let mut messages = Vec::with_capacity(2);
        if let Some(s) = system {
            messages.push(Message::system(s));
        }
        messages.push(Message::user(user));
        self.render(&messages, true, enable_thinking)
    }
}

fn check_role(role: &str) -> Result<()> {
    match role {
        "system" | "user" | "assistant" => Ok(()),
        "tool" => Err(Error::Unsupported(
            "chat role 'tool' (tool calls are not implemented)".into(),
        )),
        other => Err(Error::invalid(format!(
            "unknown chat role '{other}' (expected system, user or assistant)"
        ))),
    }
}

/// `<|im_start|>{role}\n{content}<|im_end|>\n`
fn push_turn(out: &mut String, role: &str, content: &str) {
    out.push_str(IM_START);
    out.push_str(role);
    out.push('\n');
    out.push_str(content);
    out.push_str(IM_END);
    out.push('\n');
}

fn render_qwen25(out: &mut String, messages: &[Message], default_system: Option<&str>) {
    let leading_system = messages[0].role == "system";
    if !leading_system {
        if let Some(sys) = default_system {
            push_turn(out, "system", sys);
        }
    }
    // The leading system message is the `loop.first` system turn.
    for m in messages {
        push_turn(out, &m.role, &m.content);
    }
}

fn render_qwen3(out: &mut String, messages: &[Message]) {
    // Index of the last real user query (not a wrapped tool response).
    let last_query = messages
        .iter()
        .rposition(|m| {
            m.role == "user"
                && !(m.content.starts_with("<tool_response>")
                    && m.content.ends_with("</tool_response>"))
        })
        .unwrap_or(messages.len() - 1);
    let last = messages.len() - 1;
    for (i, m) in messages.iter().enumerate() {
        match m.role.as_str() {
            "system" | "user" => push_turn(out, &m.role, &m.content),
            _ => {
                let (reasoning, content) = split_reasoning(&m.content);
                out.push_str(IM_START);
                out.push_str("assistant\n");
                if i > last_query && (i == last || !reasoning.is_empty()) {
                    out.push_str("<think>\n");
                    out.push_str(reasoning.trim_matches('\n'));
                    out.push_str("\n</think>\n\n");
                    out.push_str(content.trim_start_matches('\n'));
                } else {
                    out.push_str(content);
                }
                out.push_str(IM_END);
                out.push('\n');
            }
        }
    }
}

/// Qwen3's split of an assistant message into (reasoning, answer):
/// `content.split('</think>')[0].rstrip('\n').split('<think>')[-1].lstrip('\n')`
/// and `content.split('</think>')[-1].lstrip('\n')`; no `</think>` means no
/// reasoning and the content unchanged.
pub fn split_reasoning(content: &str) -> (&str, &str) {
    const CLOSE: &str = "</think>";
    let Some((before, _)) = content.split_once(CLOSE) else {
        return ("", content);
    };
    let before = before.trim_end_matches('\n');
    let reasoning = before
        .rsplit("<think>")
        .next()
        .unwrap_or(before)
        .trim_start_matches('\n');
    let (_, after) = content.rsplit_once(CLOSE).unwrap_or(("", content));
    (reasoning, after.trim_start_matches('\n'))
}

/// The chat template source of a model directory, if it ships one.
fn template_text(model_dir: &Path) -> Option<String> {
    if let Ok(text) = std::fs::read_to_string(model_dir.join("chat_template.jinja")) {
        return Some(text);
    }
    let text = std::fs::read_to_string(model_dir.join("tokenizer_config.json")).ok()?;
    let json: serde_json::Value = serde_json::from_str(&text).ok()?;
    match json.get("chat_template")? {
        serde_json::Value::String(s) => Some(s.clone()),
        // A list of named templates: take the default one.
        serde_json::Value::Array(items) => items
            .iter()
            .find(|t| t.get("name").and_then(|n| n.as_str()) == Some("default"))
            .and_then(|t| t.get("template")?.as_str().map(str::to_string)),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn msgs(turns: &[(&str, &str)]) -> Vec<Message> {
        turns.iter().map(|(r, c)| Message::new(*r, *c)).collect()
    }

    /// (turns, add_generation_prompt, enable_thinking, expected text)
    type Case<'a> = (&'a [(&'a str, &'a str)], bool, bool, &'a str);

    // Expected strings were produced by rendering the official Jinja templates
    // (see the module header) with jinja2, as transformers does.
    #[test]
    fn qwen3_matches_official_template() {
        let q = ChatTemplate::Qwen3;
        let cases: &[Case] = &[
            (
                &[("system", "You are terse."), ("user", "What is 2+3?")],
                true,
                false,
                "<|im_start|>system\nYou are terse.<|im_end|>\n<|im_start|>user\nWhat is 2+3?<|im_end|>\n<|im_start|>assistant\n<think>\n\n</think>\n\n",
            ),
            (&[("user", "Hi")], true, true, "<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n"),
            (
                &[("user", "q1"), ("assistant", "<think>\nr1\n</think>\n\nA1"), ("user", "q2"), ("assistant", "<think>r2</think>A2")],
                false,
                true,
                "<|im_start|>user\nq1<|im_end|>\n<|im_start|>assistant\nA1<|im_end|>\n<|im_start|>user\nq2<|im_end|>\n<|im_start|>assistant\n<think>\nr2\n</think>\n\nA2<|im_end|>\n",
            ),
            (
                &[("user", "Hi"), ("assistant", "Hello")],
                false,
                true,
                "<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n<think>\n\n</think>\n\nHello<|im_end|>\n",
            ),
            (
                &[("user", "q"), ("assistant", "\n\n<think>\nA\n</think>\n\nB"), ("assistant", "C"), ("assistant", "D")],
                true,
                false,
                "<|im_start|>user\nq<|im_end|>\n<|im_start|>assistant\n<think>\nA\n</think>\n\nB<|im_end|>\n<|im_start|>assistant\nC<|im_end|>\n<|im_start|>assistant\n<think>\n\n</think>\n\nD<|im_end|>\n<|im_start|>assistant\n<think>\n\n</think>\n\n",
            ),
            (
                &[("user", "q1"), ("assistant", "<think>r</think>a"), ("user", "<tool_response>x</tool_response>"), ("assistant", "b")],
                true,
                true,
                "<|im_start|>user\nq1<|im_end|>\n<|im_start|>assistant\n<think>\nr\n</think>\n\na<|im_end|>\n<|im_start|>user\n<tool_response>x</tool_response><|im_end|>\n<|im_start|>assistant\n<think>\n\n</think>\n\nb<|im_end|>\n<|im_start|>assistant\n",
            ),
            (&[("system", "S")], true, false, "<|im_start|>system\nS<|im_end|>\n<|im_start|>assistant\n<think>\n\n</think>\n\n"),
            (
                &[("user", "u1"), ("system", "s2"), ("user", "u2")],
                true,
                true,
                "<|im_start|>user\nu1<|im_end|>\n<|im_start|>system\ns2<|im_end|>\n<|im_start|>user\nu2<|im_end|>\n<|im_start|>assistant\n",
            ),
            (
                &[("user", "u"), ("assistant", "<think>a</think>b</think>c"), ("assistant", "x<think>y<think>\nz\n</think>\n\nw")],
                false,
                true,
                "<|im_start|>user\nu<|im_end|>\n<|im_start|>assistant\n<think>\na\n</think>\n\nc<|im_end|>\n<|im_start|>assistant\n<think>\nz\n</think>\n\nw<|im_end|>\n",
            ),
        ];
        for (i, (turns, gen, think, want)) in cases.iter().enumerate() {
            let got = q.render(&msgs(turns), *gen, *think).unwrap();
            assert_eq!(got, *want, "case {i}");
        }
    }

    #[test]
    fn qwen25_matches_official_template() {
        let q = ChatTemplate::Qwen25 {
            default_system: Some(QWEN25_DEFAULT_SYSTEM.into()),
        };
        let got = q.render(&msgs(&[("user", "Hi")]), true, true).unwrap();
        assert_eq!(
            got,
            "<|im_start|>system\nYou are Qwen, created by Alibaba Cloud. You are a helpful assistant.<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n"
        );
        let turns = [
            ("system", "Be brief."),
            ("user", "u1"),
            ("assistant", "<think>a</think>b"),
            ("user", "u2"),
        ];
        // enable_thinking is ignored by Qwen2.5, and <think> is plain text there.
        let got = q.render(&msgs(&turns), true, false).unwrap();
        assert_eq!(
            got,
            "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nu1<|im_end|>\n<|im_start|>assistant\n<think>a</think>b<|im_end|>\n<|im_start|>user\nu2<|im_end|>\n<|im_start|>assistant\n"
        );
        let none = ChatTemplate::Qwen25 {
            default_system: None,
        };
        assert_eq!(
            none.render(&msgs(&[("user", "Hi")]), false, true).unwrap(),
            "<|im_start|>user\nHi<|im_end|>\n"
        );
        assert_eq!(none.prompt(Some("S"), "Hi", true).unwrap(), "<|im_start|>system\nS<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n");
    }

    #[test]
    fn bad_conversations_are_errors() {
        let q = ChatTemplate::Qwen3;
        assert!(q.render(&[], true, true).is_err());
        let e = q
            .render(&msgs(&[("robot", "x")]), true, true)
            .unwrap_err()
            .to_string();
        assert!(e.contains("'robot'"), "{e}");
        let e = q.render(&msgs(&[("tool", "x")]), true, true).unwrap_err();
        assert!(matches!(e, Error::Unsupported(_)), "{e}");
    }

    #[test]
    fn split_reasoning_follows_the_template() {
        assert_eq!(split_reasoning("plain"), ("", "plain"));
        assert_eq!(
            split_reasoning("<think>\nr\n</think>\n\nanswer"),
            ("r", "answer")
        );
        assert_eq!(
            split_reasoning("pre<think>a<think>b</think>c</think>\nd"),
            ("b", "d")
        );
    }

    #[test]
    fn detect_from_files_and_model_type() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        assert_eq!(ChatTemplate::detect(d, "qwen3"), ChatTemplate::Qwen3);
        let qwen = ChatTemplate::Qwen25 {
            default_system: Some(QWEN25_DEFAULT_SYSTEM.into()),
        };
        assert_eq!(ChatTemplate::detect(d, "qwen2"), qwen);

        let write = |tpl: serde_json::Value| {
            let cfg = serde_json::json!({ "chat_template": tpl, "eos_token": "<|im_end|>" });
            std::fs::write(d.join("tokenizer_config.json"), cfg.to_string()).unwrap();
        };
        write("{%- if enable_thinking is defined %}{%- endif %}".into());
        assert_eq!(ChatTemplate::detect(d, "qwen2"), ChatTemplate::Qwen3);
        write(
            format!("{{{{- '<|im_start|>system\\n{QWEN25_DEFAULT_SYSTEM}<|im_end|>' }}}}").into(),
        );
        assert_eq!(ChatTemplate::detect(d, "qwen3"), qwen);
        write("{{- 'You are a helpful assistant.' }}".into());
        let generic = ChatTemplate::Qwen25 {
            default_system: Some(GENERIC_DEFAULT_SYSTEM.into()),
        };
        assert_eq!(ChatTemplate::detect(d, "qwen3"), generic);
        write("{% for m in messages %}{{ m.content }}{% endfor %}".into());
        assert_eq!(
            ChatTemplate::detect(d, "qwen3"),
            ChatTemplate::Qwen25 {
                default_system: None
            }
        );
        write(serde_json::json!([{ "name": "default", "template": "<think>" }]));
        assert_eq!(ChatTemplate::detect(d, "qwen2"), ChatTemplate::Qwen3);
        // chat_template.jinja takes precedence over tokenizer_config.json.
        std::fs::write(
            d.join("chat_template.jinja"),
            "You are a helpful assistant.",
        )
        .unwrap();
        assert_eq!(ChatTemplate::detect(d, "qwen3"), generic);
        // A malformed tokenizer_config.json falls back to model_type.
        std::fs::remove_file(d.join("chat_template.jinja")).unwrap();
        std::fs::write(d.join("tokenizer_config.json"), "{ nope").unwrap();
        assert_eq!(ChatTemplate::detect(d, "qwen3"), ChatTemplate::Qwen3);
    }
}
