//! A flat batch of new tokens for one forward pass: any mix of prompt prefills
//! (many tokens of a slot) and decode steps (one token of a slot).

use crate::{Error, Result};

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TokenBatch {
    pub ids: Vec<u32>,
    /// KV cache slot of each token.
    pub slots: Vec<u32>,
    /// Position of each token in its sequence.
    pub positions: Vec<u32>,
}

impl TokenBatch {
    pub fn len(&self) -> usize {
        self.ids.len()
    }

    pub fn is_empty(&self) -> bool {
        self.ids.is_empty()
    }

    /// Append `ids` to slot `slot`, starting at position `start`.
    pub fn push_seq(&mut self, slot: usize, start: usize, ids: &[u32]) {
        for (i, &id) in ids.iter().enumerate() {
            self.ids.push(id);
            self.slots.push(slot as u32);
            self.positions.push((start + i) as u32);
        }
    }

    /// Check ids against the vocabulary.
    pub fn check_ids(&self, vocab: usize) -> Result<()> {
        match self.ids.iter().find(|&&id| id as usize >= vocab) {
            Some(id) => Err(Error::invalid(format!(
                "token id {id} is outside the vocabulary (size {vocab})"
            ))),
            None => Ok(()),
        }
    }
}
