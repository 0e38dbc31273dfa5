//! GSM8K (DESIGN section 6). Dataset: JSONL with `question` and `answer`, the
//! answer being a worked solution that ends `#### <number>`.
//!
//! Prompt: the question, a newline, then `Let's think step by step and output
//! the final answer after "####".` (the instruction of verl's
//! `examples/data_preprocess/gsm8k.py`; verl joins with a space, we use a
//! newline).
//!
//! Reward (verl `utils/reward_score/gsm8k.py`, "strict"): take the *last*
//! `####` in the completion that is followed by a number; the number may be
//! preceded by whitespace and `$`, may carry a sign and thousands commas, and a
//! trailing period is dropped (`#### $1,234.` reads 1234). 1.0 when it equals the
//! reference (numerically when both parse: `18` == `18.0`), else 0.0. No `####`
//! with a number: 0.0. Unlike verl we do not clip the completion to its last 300
//! characters.

use std::path::Path;

use super::{jsonl, Problem};
use crate::Result;

/// Appended to the question to make the user turn.
pub const INSTRUCTION: &str =
    "Let's think step by step and output the final answer after \"####\".";

/// The user-turn text for a question.
pub fn prompt(question: &str) -> String {
    format!("{question}\n{INSTRUCTION}")
}

pub fn load(path: &Path) -> Result<Vec<Problem>> {
    let mut index = 0usize;
    jsonl::read(path, |rec| {
        let question = rec.str("question")?;
        let answer = rec.str("answer")?;
        let reference = extract_answer(answer)
            .ok_or_else(|| rec.error("key \"answer\" has no final \"#### <number>\""))?;
        let id = format!("gsm8k-{index}");
        index += 1;
        Ok(Problem {
            id,
            prompt: prompt(question),
            reference,
            code: None,
            row: None,
        })
    })
}

/// The number after the last `####` that is followed by one, with `$`, commas
/// and a trailing period removed (`"-1234.5"`). None when there is none.
pub fn extract_answer(text: &str) -> Option<String> {
    let mut end = text.len();
    while let Some(pos) = text[..end].rfind("####") {
        if let Some(n) = number_after(&text[pos + 4..]) {
            return Some(n);
        }
        end = pos;
    }
    None
}

/// A number at the start of `s` after optional whitespace, `$` and sign.
fn number_after(s: &str) -> Option<String> {
    let s = s.trim_start();
    let s = s.strip_prefix('$').unwrap_or(s);
    let (neg, s) = match s.strip_prefix('-') {
        Some(rest) => (true, rest),
        None => (false, s),
    };
    let s = s.strip_prefix('$').unwrap_or(s).trim_start();
    let run_len = s
        .find(|c: char| !(c.is_ascii_digit() || c == ',' || c == '.'))
        .unwrap_or(s.len());
    let run: String = s[..run_len].chars().filter(|&c| c != ',').collect();
    let run = run.trim_end_matches('.');
    if !run.chars().any(|c| c.is_ascii_digit()) || run.matches('.').count() > 1 {
        return None;
    }
    let run = if run.starts_with('.') {
        format!("0{run}")
    } else {
        run.to_string()
    };
    Some(if neg { format!("-{run}") } else { run })
}

/// Whether two extracted answers are the same number (or the same string when
/// either is not a number).
pub fn same_number(a: &str, b: &str) -> bool {
    match (a.parse::<f64>(), b.parse::<f64>()) {
        (Ok(x), Ok(y)) => (x - y).abs() <= 1e-9 * x.abs().max(y.abs()).max(1.0),
        _ => a == b,
    }
}

/// 1.0 when the completion's last `#### <number>` equals `reference`.
pub fn reward(reference: &str, completion: &str) -> f64 {
    match extract_answer(completion) {
        Some(got) if same_number(&got, reference) => 1.0,
        _ => 0.0,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn extraction() {
        assert_eq!(
            extract_answer("so 9*2 = 18\n#### 18").as_deref(),
            Some("18")
        );
        assert_eq!(extract_answer("#### $1,234.").as_deref(), Some("1234"));
        assert_eq!(extract_answer("####-$5").as_deref(), Some("-5"));
        assert_eq!(extract_answer("#### 3.50 dollars").as_deref(), Some("3.50"));
        assert_eq!(extract_answer("#### .5").as_deref(), Some("0.5"));
        assert_eq!(extract_answer("#### 1 then #### 2").as_deref(), Some("2"));
        // The last `####` has no number: the previous one counts.
        assert_eq!(extract_answer("#### 7\n####").as_deref(), Some("7"));
        assert_eq!(extract_answer("#### seven"), None);
        assert_eq!(extract_answer("the answer is 7"), None);
        assert_eq!(extract_answer("#### 1.2.3"), None);
    }

    #[test]
    fn rewards() {
        assert_eq!(reward("18", "#### 18"), 1.0);
        assert_eq!(reward("18", "#### 18.0"), 1.0);
        assert_eq!(reward("18", "#### 18."), 1.0);
        assert_eq!(reward("18", "#### 17"), 0.0);
        assert_eq!(reward("18", "18"), 0.0);
        assert_eq!(reward("-3", "#### -3"), 1.0);
        assert_eq!(reward("-3", "#### 3"), 0.0);
        assert_eq!(reward("1000", "#### $1,000"), 1.0);
        assert_eq!(reward("0.25", "#### 0.250"), 1.0);
    }

    #[test]
    fn prompt_text() {
        assert_eq!(
            prompt("What is 2+3?"),
            "What is 2+3?\nLet's think step by step and output the final answer after \"####\"."
        );
    }
}
