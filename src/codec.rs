//! Text to token ids and back for the RL loop and SFT: the model's own tokenizer with its
//! chat template (a prompt becomes one user turn plus the generation prompt, as verl
//! and TRL build it), or the character codec of the built-in tiny demo model.

use crate::chat::{ChatTemplate, Message};
use crate::tokenizer::Tokenizer;
use crate::{Error, Result};

pub trait TextCodec: Send + Sync {
    /// The token ids of the prompt the model sees for a task's prompt text.
    fn prompt_ids(&self, prompt: &str) -> Result<Vec<u32>>;
    /// The token ids of plain text (no chat template, no special tokens added).
    fn text_ids(&self, text: &str) -> Result<Vec<u32>>;
    /// The text of generated ids (special tokens dropped).
    fn decode(&self, ids: &[u32]) -> Result<String>;
    /// Generation stops after any of these.
    fn stop_ids(&self) -> &[u32];
    /// The token ids of a multi-turn dialogue: `turns` alternate an environment's
    /// observation and the model's action, first and last an observation; the
    /// model is to produce the next action.
    fn dialogue_ids(&self, turns: &[String]) -> Result<Vec<u32>>;
    /// The token ids of a chat prompt given as messages (a dataset row's message
    /// list), ending with the generation prompt.
    fn messages_ids(&self, messages: &[Message]) -> Result<Vec<u32>>;
}

/// The prompt ids of a problem: its chat messages when the row gives a list, else
/// its prompt text.
pub fn problem_ids(codec: &dyn TextCodec, p: &crate::tasks::Problem) -> Result<Vec<u32>> {
    match p.row.as_ref().and_then(|r| r.messages.as_deref()) {
        Some(messages) => codec.messages_ids(messages),
        None => codec.prompt_ids(&p.prompt),
    }
}

/// A HF tokenizer with a chat template.
pub struct ChatCodec {
    pub tokenizer: Tokenizer,
    pub template: Option<ChatTemplate>,
    pub enable_thinking: bool,
    pub stop: Vec<u32>,
}

impl TextCodec for ChatCodec {
    fn prompt_ids(&self, prompt: &str) -> Result<Vec<u32>> {
        let text = match &self.template {
            Some(t) => t.prompt(None, prompt, self.enable_thinking)?,
            None => prompt.to_string(),
        };
        self.tokenizer.encode(&text)
    }

    fn text_ids(&self, text: &str) -> Result<Vec<u32>> {
        self.tokenizer.encode(text)
    }

    fn decode(&self, ids: &[u32]) -> Result<String> {
        self.tokenizer.decode(ids, true)
    }

    fn stop_ids(&self) -> &[u32] {
        &self.stop
    }

    /// Observations are user turns, actions assistant turns (as verl-agent builds
    /// its multi-turn prompts); without a template the turns are concatenated.
    fn dialogue_ids(&self, turns: &[String]) -> Result<Vec<u32>> {
        let text = match &self.template {
            Some(t) => {
                let messages: Vec<Message> = turns
                    .iter()
                    .enumerate()
                    .map(|(i, x)| {
                        if i % 2 == 0 {
                            Message::user(x.as_str())
                        } else {
                            Message::assistant(x.trim_end())
                        }
                    })
                    .collect();
                t.render(&messages, true, self.enable_thinking)?
            }
            None => turns.concat(),
        };
        self.tokenizer.encode(&text)
    }

    /// Without a template the contents are concatenated.
    fn messages_ids(&self, messages: &[Message]) -> Result<Vec<u32>> {
        let text = match &self.template {
            Some(t) => t.render(messages, true, self.enable_thinking)?,
            None => messages.iter().map(|m| m.content.as_str()).collect(),
        };
        self.tokenizer.encode(&text)
    }
}

/// One token per character of a fixed alphabet (token i = character i); generation
/// stops after the end character. The built-in tiny model's vocabulary for the
/// `arith` demo (`crate::tasks::arith::ALPHABET`, end `'\n'`).
pub struct CharCodec {
    alphabet: Vec<char>,
    stop: Vec<u32>,
}

impl CharCodec {
    /// `end` must be in `alphabet`.
    pub fn new(alphabet: &str, end: char) -> Self {
        let alphabet: Vec<char> = alphabet.chars().collect();
        let end = alphabet
            .iter()
            .position(|&c| c == end)
            .expect("end is in the alphabet");
        CharCodec {
            alphabet,
            stop: vec![end as u32],
        }
    }

    /// Tokens in the vocabulary.
    pub fn vocab(&self) -> usize {
        self.alphabet.len()
    }

    pub fn encode(&self, text: &str) -> Result<Vec<u32>> {
        text.chars()
            .map(|c| {
                self.alphabet
                    .iter()
                    .position(|&a| a == c)
                    .map(|i| i as u32)
                    .ok_or_else(|| {
                        Error::invalid(format!("character {c:?} is not in the demo alphabet"))
                    })
            })
            .collect()
    }
}

impl TextCodec for CharCodec {
    fn prompt_ids(&self, prompt: &str) -> Result<Vec<u32>> {
        self.encode(prompt)
    }

    fn text_ids(&self, text: &str) -> Result<Vec<u32>> {
        self.encode(text)
    }

    fn decode(&self, ids: &[u32]) -> Result<String> {
        Ok(ids
            .iter()
            .map(|&i| self.alphabet.get(i as usize).copied().unwrap_or('\u{fffd}'))
            .collect())
    }

    fn stop_ids(&self) -> &[u32] {
        &self.stop
    }

    /// The turns concatenated.
    fn dialogue_ids(&self, turns: &[String]) -> Result<Vec<u32>> {
        self.encode(&turns.concat())
    }

    /// The contents concatenated.
    fn messages_ids(&self, messages: &[Message]) -> Result<Vec<u32>> {
        self.encode(
            &messages
                .iter()
                .map(|m| m.content.as_str())
                .collect::<String>(),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn char_codec_round_trip() {
        let c = CharCodec::new("0123456789+-= \n", '\n');
        let ids = c.encode("12+7=").unwrap();
        assert_eq!(ids, vec![1, 2, 10, 7, 12]);
        assert_eq!(c.decode(&[1, 2, 14]).unwrap(), "12\n");
        assert_eq!(c.stop_ids(), &[14]);
        assert!(c.encode("x").is_err());
        assert_eq!(c.vocab(), 15);
        let turns = [" ".to_string(), "5".into(), "+".into()];
        assert_eq!(c.dialogue_ids(&turns).unwrap(), c.encode(" 5+").unwrap());
    }
}
