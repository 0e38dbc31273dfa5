//! `guess`: find a secret digit (0-9) from "higher" / "lower" hints. A built-in
//! multi-turn environment for GiGPO that the tiny demo model can learn: binary
//! search solves every secret within 4 guesses, a random guesser solves about a
//! third. The secret is a hash of the task id, so episodes of one task (a prompt
//! group) chase the same secret.
//!
//! Reward 1 on the step that names the secret (the episode ends), else 0. The anchor
//! of a state is the list of guesses and hints so far, so episodes that asked the
//! same questions share step groups.
//!
//! Two wordings: `terse` for the demo model's alphabet (first observation " ",
//! hints "+" (the secret is higher) / "-" (lower), " " for an answer that names no
//! digit), and plain English for chat models.

use super::{Environment, Observation, Transition};
use crate::sampling::mix64;
use crate::{Error, Result};
use std::collections::HashMap;

pub struct GuessEnv {
    terse: bool,
    /// Per live episode: the secret and the anchor so far.
    episodes: HashMap<u64, (u32, String)>,
}

impl GuessEnv {
    pub fn new(terse: bool) -> Self {
        GuessEnv {
            terse,
            episodes: HashMap::new(),
        }
    }

    /// The secret of a task.
    pub fn secret(task: u64) -> u32 {
        (mix64(task ^ 0x9e55) % 10) as u32
    }

    fn words(&self, terse: &'static str, plain: &'static str) -> String {
        if self.terse { terse } else { plain }.to_string()
    }
}

impl Environment for GuessEnv {
    fn reset(&mut self, episode: u64, task: u64) -> Result<Option<Observation>> {
        self.episodes
            .insert(episode, (Self::secret(task), String::new()));
        Ok(Some(Observation {
            text: self.words(
                " ",
                "I am thinking of a whole number from 0 to 9. Guess it: reply with a single digit. After each guess I say whether the number is higher or lower.",
            ),
            anchor: Some(String::new()),
        }))
    }

    /// Never drops an episode.
    fn step(&mut self, episode: u64, action: &str) -> Result<Option<Transition>> {
        let terse = self.terse;
        let (secret, anchor) = self
            .episodes
            .get_mut(&episode)
            .ok_or_else(|| Error::invalid(format!("guess: no live episode {episode}")))?;
        let guess = action.chars().find_map(|c| c.to_digit(10));
        let (text, reward, done, mark) = match guess {
            None => (
                if terse {
                    " "
                } else {
                    "Please reply with a single digit."
                },
                0.0,
                false,
                "?".to_string(),
            ),
            Some(g) if g == *secret => (
                if terse { "=" } else { "Correct!" },
                1.0,
                true,
                format!("{g}="),
            ),
            Some(g) if g < *secret => (
                if terse { "+" } else { "Higher." },
                0.0,
                false,
                format!("{g}+"),
            ),
            Some(g) => (
                if terse { "-" } else { "Lower." },
                0.0,
                false,
                format!("{g}-"),
            ),
        };
        anchor.push_str(&mark);
        Ok(Some(Transition {
            observation: Observation {
                text: text.to_string(),
                anchor: Some(anchor.clone()),
            },
            reward,
            done,
        }))
    }

    fn end(&mut self, episode: u64) -> Result<()> {
        self.episodes.remove(&episode);
        Ok(())
    }

    fn name(&self) -> String {
        "guess".into()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn binary_search_solves_every_secret_in_four() {
        let mut env = GuessEnv::new(true);
        let mut seen = [false; 10];
        for task in 0..200u64 {
            let secret = GuessEnv::secret(task);
            seen[secret as usize] = true;
            let first = env.reset(task, task).unwrap().unwrap();
            assert_eq!(first.text, " ");
            let (mut lo, mut hi) = (0u32, 9u32);
            let mut turns = 0;
            loop {
                let g = (lo + hi) / 2;
                let t = env.step(task, &g.to_string()).unwrap().unwrap();
                turns += 1;
                if t.done {
                    assert_eq!((t.reward, t.observation.text.as_str()), (1.0, "="));
                    break;
                }
                assert_eq!(t.reward, 0.0);
                if t.observation.text == "+" {
                    lo = g + 1;
                } else {
                    hi = g - 1;
                }
            }
            assert!(turns <= 4);
            env.end(task).unwrap();
        }
        assert!(seen.iter().all(|&s| s), "every secret occurs");
        assert!(env.episodes.is_empty());
    }

    #[test]
    fn anchors_follow_the_history_and_bad_answers_cost_a_turn() {
        let mut env = GuessEnv::new(false);
        env.reset(1, 7).unwrap();
        env.reset(2, 7).unwrap();
        let wrong = (GuessEnv::secret(7) + 1) % 10;
        let a = env.step(1, &format!("{wrong}\n")).unwrap().unwrap();
        let b = env.step(2, &format!("My guess: {wrong}")).unwrap().unwrap();
        assert_eq!(a.observation.anchor, b.observation.anchor);
        let c = env.step(1, "no idea").unwrap().unwrap();
        assert_eq!((c.reward, c.done), (0.0, false));
        assert!(c.observation.text.contains("single digit"));
        assert_ne!(c.observation.anchor, b.observation.anchor);
        assert!(env.step(3, "1").is_err());
    }
}
