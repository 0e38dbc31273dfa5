//! The built-in generated task (DESIGN section 6): small additions and
//! subtractions, sized so the built-in tiny model learns them on a CPU in
//! about a minute.
//!
//! Problem `i` of seed `s` is drawn from a counter hash of `(s, i, draw)`
//! (`crate::sampling::mix64`), so a problem does not depend on how many are
//! generated. Each operand has a digit count uniform in `1..=max_digits`, then
//! a value uniform among the numbers with that many digits (one digit: 0-9);
//! the operator is uniform among `ops`; for `-` the operands are swapped when
//! needed so the result is not negative (unless `allow_negative`).
//!
//! With `terms` > 2 (`--arith-terms`) a problem chains that many operands, evaluated
//! left to right (`23+58-17=`); an operand that would take the running total below
//! zero turns its `-` into `+` (unless `allow_negative`). Its worked solution
//! (`worked`, what SFT trains on) rewrites the expression one operation at a time:
//! `81-17=64`, and for four terms `81-17+5=64+5=69`.
//!
//! Prompt: exactly the expression, `"23+58="` (no chat template). Reference:
//! the result, `"81"`. Reward: 1.0 when the answer of the completion equals the
//! reference, else 0.0. The answer is, within the completion's first line with
//! surrounding whitespace removed, the number after its last `=` (a worked
//! solution's end), or its leading number when it has no `=`; the number must be
//! followed by a non-digit or the end (`"81"`, `" 81\n"`, `"81 because"`,
//! `"99-18=81"` score 1; `"810"`, `"8"`, `"x81"`, `"81=80"` score 0).
//!
//! `ALPHABET` is every character the task uses, `END` (a newline) included:
//! the end-of-answer marker a character-level model emits after the number
//! (`"23+58=81\n"`).

use super::Problem;
use crate::sampling::mix64;
use crate::{Error, Result};

/// The end-of-answer marker.
pub const END: char = '\n';

/// The seed of the held-out problems `engine run`, `engine eval` and `engine sft`
/// evaluate on: fixed, not the run's `--seed`, so runs over several seeds (a seeded
/// sweep) are scored on the same problems. (`mix64(0xe7a1)`, the set seed 0 always
/// had.)
pub const HELD_OUT_SEED: u64 = 0xc544_b398_e56f_3885;

/// Every character of prompts, answers and the end marker.
pub const ALPHABET: &str = "0123456789+-= \n";

/// Settings of the generated task.
#[derive(Clone, Debug, PartialEq)]
pub struct ArithOptions {
    pub seed: u64,
    /// How many problems to generate.
    pub count: usize,
    /// Largest operand digit count (1..=9).
    pub max_digits: u32,
    /// Operators to draw from, a subset of `"+-"`.
    pub ops: String,
    /// Allow negative results of `-`.
    pub allow_negative: bool,
    /// Operands per problem (2..=9), evaluated left to right.
    pub terms: usize,
}

impl Default for ArithOptions {
    fn default() -> Self {
        ArithOptions {
            seed: 0,
            count: 1000,
            max_digits: 2,
            ops: "+-".into(),
            allow_negative: false,
            terms: 2,
        }
    }
}

impl ArithOptions {
    pub fn validate(&self) -> Result<()> {
        if !(1..=9).contains(&self.max_digits) {
            return Err(Error::invalid(format!(
                "arith task: operand digits must be in 1..=9, got {}",
                self.max_digits
            )));
        }
        if self.ops.is_empty() || !self.ops.chars().all(|c| c == '+' || c == '-') {
            return Err(Error::invalid(format!(
                "arith task: operators must be a non-empty subset of \"+-\", got {:?}",
                self.ops
            )));
        }
        if !(2..=9).contains(&self.terms) {
            return Err(Error::invalid(format!(
                "arith task: terms must be in 2..=9, got {}",
                self.terms
            )));
        }
        if self.count == 0 {
            return Err(Error::invalid(
                "arith task: the problem count must be at least 1",
            ));
        }
        Ok(())
    }
}

/// A 64-bit hash of (seed, problem, draw).
fn draw(seed: u64, i: usize, j: u64) -> u64 {
    mix64(seed ^ mix64((i as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ mix64(j)))
}

/// Uniform in `lo..=hi` (modulo bias below 2^-30 for these ranges).
fn uniform(h: u64, lo: u64, hi: u64) -> u64 {
    lo + h % (hi - lo + 1)
}

/// Problem `i` of the task: the first operand and each (operator, operand) after it.
fn operands(opts: &ArithOptions, i: usize) -> (i64, Vec<(char, i64)>) {
    let ops: Vec<char> = opts.ops.chars().collect();
    let operand = |j: u64| {
        let d = uniform(draw(opts.seed, i, j), 1, opts.max_digits as u64) as u32;
        let lo = if d == 1 { 0 } else { 10u64.pow(d - 1) };
        uniform(draw(opts.seed, i, j + 1), lo, 10u64.pow(d) - 1) as i64
    };
    let op = |j: u64| ops[uniform(draw(opts.seed, i, j), 0, ops.len() as u64 - 1) as usize];
    // The first two as the two-term task has always drawn them (its problems stay).
    let (mut a, mut b) = (operand(0), operand(2));
    let first = op(4);
    if first == '-' && !opts.allow_negative && a < b {
        std::mem::swap(&mut a, &mut b);
    }
    let mut rest = vec![(first, b)];
    let mut total = apply(a, first, b);
    for k in 2..opts.terms as u64 {
        let x = operand(10 * k);
        let mut o = op(10 * k + 2);
        if o == '-' && !opts.allow_negative && total < x {
            o = '+';
        }
        total = apply(total, o, x);
        rest.push((o, x));
    }
    (a, rest)
}

fn apply(a: i64, op: char, b: i64) -> i64 {
    if op == '+' {
        a + b
    } else {
        a - b
    }
}

/// The worked solution of a prompt `"23+58-17="`: the expression rewritten one
/// operation at a time, `"81-17=64"` (two terms: just the result). None when the
/// prompt is not a chain of numbers, `+` and `-` ending in `=`.
pub fn worked(prompt: &str) -> Option<String> {
    let expr = prompt.strip_suffix('=')?;
    let mut nums = Vec::new();
    let mut ops = Vec::new();
    let mut cur = String::new();
    for c in expr.chars() {
        match c {
            '0'..='9' => cur.push(c),
            '+' | '-' if !cur.is_empty() => {
                nums.push(cur.parse::<i64>().ok()?);
                ops.push(c);
                cur.clear();
            }
            _ => return None,
        }
    }
    nums.push(cur.parse::<i64>().ok()?);
    if ops.is_empty() {
        return None;
    }
    let mut total = nums[0];
    let mut steps = Vec::new();
    for (k, (&o, &x)) in ops.iter().zip(&nums[1..]).enumerate() {
        total = apply(total, o, x);
        let mut step = total.to_string();
        for (&o2, &x2) in ops[k + 1..].iter().zip(&nums[k + 2..]) {
            step.push(o2);
            step.push_str(&x2.to_string());
        }
        steps.push(step);
    }
    Some(steps.join("="))
}

/// Generates `opts.count` problems.
pub fn generate(opts: &ArithOptions) -> Result<Vec<Problem>> {
    opts.validate()?;
    Ok((0..opts.count)
        .map(|i| {
            let (a, rest) = operands(opts, i);
            let mut prompt = a.to_string();
            let mut value = a;
            for &(op, b) in &rest {
                prompt.push(op);
                prompt.push_str(&b.to_string());
                value = apply(value, op, b);
            }
            prompt.push('=');
            Problem {
                id: format!("arith-{}-{i}", opts.seed),
                prompt,
                reference: value.to_string(),
                code: None,
                row: None,
            }
        })
        .collect())
}

/// 1.0 when the completion's answer (module docs) is `reference`.
pub fn reward(reference: &str, completion: &str) -> f64 {
    let line = completion.trim().split(END).next().unwrap_or("").trim();
    let text = match line.rsplit_once('=') {
        Some((_, after)) => after.trim_start(),
        None => line,
    };
    match text.strip_prefix(reference) {
        Some(rest) if !reference.is_empty() && !rest.starts_with(|c: char| c.is_ascii_digit()) => {
            1.0
        }
        _ => 0.0,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_problems_are_right_and_reproducible() {
        let opts = ArithOptions {
            seed: 7,
            count: 500,
            ..Default::default()
        };
        let a = generate(&opts).unwrap();
        assert_eq!(a, generate(&opts).unwrap());
        let first = generate(&ArithOptions {
            count: 10,
            ..opts.clone()
        })
        .unwrap();
        assert_eq!(first[..], a[..10], "a problem does not depend on the count");
        for p in &a {
            let expr = p.prompt.strip_suffix('=').unwrap();
            let (x, op, y) = match expr.split_once('+') {
                Some((x, y)) => (x, '+', y),
                None => {
                    let (x, y) = expr.split_once('-').unwrap();
                    (x, '-', y)
                }
            };
            let (x, y): (i64, i64) = (x.parse().unwrap(), y.parse().unwrap());
            assert!(
                (0..100).contains(&x) && (0..100).contains(&y),
                "{}",
                p.prompt
            );
            let want = if op == '+' { x + y } else { x - y };
            assert!(want >= 0);
            assert_eq!(p.reference, want.to_string());
            assert!(p
                .prompt
                .chars()
                .chain(p.reference.chars())
                .all(|c| ALPHABET.contains(c)));
        }
        let minus = a.iter().filter(|p| p.prompt.contains('-')).count();
        assert!((150..350).contains(&minus), "{minus} subtractions of 500");
        let two_digit = a.iter().filter(|p| p.prompt.len() >= 5).count();
        assert!(two_digit > 250, "{two_digit}");
        let other = generate(&ArithOptions { seed: 8, ..opts }).unwrap();
        assert_ne!(a, other);
    }

    #[test]
    fn held_out_seed_is_the_old_seed_0_set() {
        assert_eq!(HELD_OUT_SEED, mix64(0xe7a1));
    }

    #[test]
    fn rewards() {
        assert_eq!(reward("81", "81"), 1.0);
        assert_eq!(reward("81", " 81\n"), 1.0);
        assert_eq!(reward("81", "81 because"), 1.0);
        assert_eq!(reward("81", "81=81"), 1.0);
        assert_eq!(reward("81", "810"), 0.0);
        assert_eq!(reward("81", "8"), 0.0);
        assert_eq!(reward("81", "x81"), 0.0);
        assert_eq!(reward("81", ""), 0.0);
        assert_eq!(reward("-5", "-5\n"), 1.0);
        assert_eq!(reward("5", "-5"), 0.0);
        // Worked solutions: the number after the last `=` of the first line.
        assert_eq!(reward("64", "81-17=64\n"), 1.0);
        assert_eq!(reward("69", "81-17+5=64+5=69"), 1.0);
        assert_eq!(reward("64", "81-17=63"), 0.0);
        assert_eq!(reward("81", "81=80"), 0.0);
        assert_eq!(reward("64", "81-17=6\n64"), 0.0, "only the first line");
    }

    #[test]
    fn chains_and_their_worked_solutions() {
        assert_eq!(worked("23+58-17=").unwrap(), "81-17=64");
        assert_eq!(worked("23+58-17+5=").unwrap(), "81-17+5=64+5=69");
        assert_eq!(worked("7-3=").unwrap(), "4");
        assert!(worked("7=").is_none() && worked("7*3=").is_none() && worked("-7+3=").is_none());
        let two = ArithOptions {
            seed: 3,
            count: 300,
            ..Default::default()
        };
        let three = ArithOptions {
            terms: 3,
            ..two.clone()
        };
        let (a, b) = (generate(&two).unwrap(), generate(&three).unwrap());
        for (p2, p3) in a.iter().zip(&b) {
            // The first two operands are the two-term problem's.
            assert!(p3.prompt.starts_with(p2.prompt.strip_suffix('=').unwrap()));
            let w = worked(&p3.prompt).unwrap();
            assert_eq!(reward(&p3.reference, &w), 1.0, "{} {w}", p3.prompt);
            assert!(p3.reference.parse::<i64>().unwrap() >= 0);
            assert!(w.chars().all(|c| ALPHABET.contains(c)));
            let ops = p3.prompt.matches(['+', '-']).count();
            assert_eq!(ops, 2, "{}", p3.prompt);
        }
        assert!(generate(&ArithOptions { terms: 1, ..two }).is_err());
    }

    #[test]
    fn bad_options() {
        for opts in [
            ArithOptions {
                max_digits: 0,
                ..Default::default()
            },
            ArithOptions {
                ops: "*".into(),
                ..Default::default()
            },
            ArithOptions {
                count: 0,
                ..Default::default()
            },
        ] {
            let e = generate(&opts).unwrap_err().to_string();
            assert!(e.starts_with("arith task:") && !e.contains('\n'), "{e}");
        }
    }
}
