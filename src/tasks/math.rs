//! MATH-style problems with `\boxed{}` answers (DESIGN section 6).
//!
//! Dataset: JSONL with `problem` and `answer` (a string or a number); without
//! `answer`, the last `\boxed{...}` of `solution` is the answer. `unique_id`,
//! when present, is the problem id.
//!
//! Prompt: the problem, a newline, then `Please reason step by step, and put
//! your final answer within \boxed{}.` (the Qwen2.5-Math / verl instruction).
//!
//! Reward: 1.0 when the last `\boxed{...}` (or `\fbox{...}`, braces nested to
//! any depth; also the `\boxed 5` form) of the completion is equivalent to the
//! reference, else 0.0 (no box, or an unclosed one: 0.0). Equivalence follows
//! the spirit of Hendrycks et al.'s MATH `is_equiv` / `strip_string`
//! (github.com/hendrycks/math, `modeling/math_equivalence.py`) and verl's
//! `utils/reward_score/math_dapo.py` `normalize_final_answer`: both sides are
//! normalised (drop whitespace, `\left`/`\right`, `\!`, `\,`, `\;`, `$`,
//! `^\circ`, `\%`, a trailing `.`, a trailing `\text{ unit}` or unit word after
//! a number, `\text{}`/`\textbf{}`/`\mathrm{}`/`\mbox{}` wrappers, a short
//! `x =` prefix, thousands commas, outer braces; `\dfrac`/`\tfrac` become
//! `\frac`, `\frac12` becomes `\frac{1}{2}`, `\sqrt2` becomes `\sqrt{2}`; a
//! choice `(A)` becomes `A`) and then compared as strings, or as exact
//! rationals when both are numbers (`0.5`, `1/2`, `\frac{1}{2}`, `-\frac12`,
//! `18.0`). Unlike Hendrycks we compare numbers exactly instead of special-
//! casing `0.5`; unlike verl we do not strip unit words anywhere but only after
//! a number. No symbolic equivalence (sympy) is attempted.

use std::path::Path;

use super::{jsonl, Problem};
use crate::Result;

/// Appended to the problem to make the user turn.
pub const INSTRUCTION: &str =
    "Please reason step by step, and put your final answer within \\boxed{}.";

/// The user-turn text for a problem.
pub fn prompt(problem: &str) -> String {
    format!("{problem}\n{INSTRUCTION}")
}

pub fn load(path: &Path) -> Result<Vec<Problem>> {
    let mut index = 0usize;
    jsonl::read(path, |rec| {
        let problem = rec.str("problem")?;
        let answer = match rec.obj.get("answer") {
            Some(serde_json::Value::String(s)) => s.clone(),
            Some(serde_json::Value::Number(n)) => n.to_string(),
            Some(serde_json::Value::Null) | None => {
                let solution = rec.opt_str("solution")?.ok_or_else(|| {
                    rec.error("missing key \"answer\" (or a \"solution\" with \\boxed{})")
                })?;
                last_boxed(solution)
                    .ok_or_else(|| rec.error("key \"solution\" has no \\boxed{...} answer"))?
            }
            Some(_) => return Err(rec.error("key \"answer\" is not a string or number")),
        };
        let id = match rec.opt_str("unique_id")? {
            Some(u) => u.to_string(),
            None => format!("math-{index}"),
        };
        index += 1;
        Ok(Problem {
            id,
            prompt: prompt(problem),
            reference: normalize(&answer),
            code: None,
            row: None,
        })
    })
}

/// 1.0 when the completion's last `\boxed{}` is equivalent to `reference`.
pub fn reward(reference: &str, completion: &str) -> f64 {
    match last_boxed(completion) {
        Some(got) if equivalent(&got, reference) => 1.0,
        _ => 0.0,
    }
}

/// Whether two answers are the same after normalisation.
pub fn equivalent(a: &str, b: &str) -> bool {
    let (a, b) = (normalize(a), normalize(b));
    match (rational(&a), rational(&b)) {
        (Some((p, q)), Some((r, s))) => match (p.checked_mul(s), r.checked_mul(q)) {
            (Some(x), Some(y)) => x == y,
            _ => a == b,
        },
        _ => a == b,
    }
}

/// The content of the last `\boxed{...}` / `\fbox{...}` (nested braces kept),
/// or of a `\boxed 5` up to the next `$` or newline. None when there is none
/// or the last one is not closed.
pub fn last_boxed(text: &str) -> Option<String> {
    let mut end = text.len();
    loop {
        let (pos, cmd) = ["\\boxed", "\\fbox"]
            .iter()
            .filter_map(|c| text[..end].rfind(c).map(|p| (p, *c)))
            .max_by_key(|&(p, _)| p)?;
        let rest = &text[pos + cmd.len()..];
        if rest.starts_with('{') {
            let close = matching_brace(rest, 0)?;
            return Some(rest[1..close].to_string());
        }
        if rest.starts_with(' ') {
            let arg = rest.trim_start();
            let stop = arg.find(['$', '\n']).unwrap_or(arg.len());
            let arg = arg[..stop].trim();
            if !arg.is_empty() {
                return Some(arg.to_string());
            }
        }
        end = pos;
    }
}

/// The index of the `}` matching the `{` at byte `open` of `s`.
fn matching_brace(s: &str, open: usize) -> Option<usize> {
    let mut depth = 0usize;
    for (i, c) in s[open..].char_indices() {
        match c {
            '{' => depth += 1,
            '}' => {
                depth -= 1;
                if depth == 0 {
                    return Some(open + i);
                }
            }
            _ => {}
        }
    }
    None
}

/// Unit words dropped after a number (from verl's `REMOVED_EXPRESSIONS`).
const UNIT_WORDS: &[&str] = &[
    "square",
    "ways",
    "integers",
    "dollars",
    "mph",
    "inches",
    "inch",
    "hours",
    "hour",
    "km",
    "units",
    "points",
    "feet",
    "foot",
    "minutes",
    "digits",
    "cents",
    "degrees",
    "cm",
    "gm",
    "pounds",
    "meters",
    "meals",
    "edges",
    "students",
    "multiples",
    "seconds",
    "days",
    "m",
];

/// The canonical form of an answer (see the module header for the rules).
pub fn normalize(answer: &str) -> String {
    let mut s = answer.trim().replace('\n', "");
    for (from, to) in [
        ("\\!", ""),
        ("\\,", ""),
        ("\\;", ""),
        ("\\:", ""),
        ("\\ ", ""),
        ("\\\\", "\\"),
        ("\\left", ""),
        ("\\right", ""),
        ("tfrac", "frac"),
        ("dfrac", "frac"),
        ("^{\\circ}", ""),
        ("^\\circ", ""),
        ("\\$", ""),
        ("$", ""),
        ("\\%", ""),
        ("%", ""),
        ("\\dots", ""),
        ("\\ldots", ""),
        ("\\displaystyle", ""),
    ] {
        s = s.replace(from, to);
    }
    s = drop_trailing_unit(&s);
    for cmd in [
        "\\text", "\\textbf", "\\textrm", "\\mathrm", "\\mathbf", "\\mbox",
    ] {
        s = unwrap_command(&s, cmd);
    }
    s.retain(|c| !c.is_whitespace());
    if s.matches('=').count() == 1 {
        let (lhs, rhs) = s.split_once('=').unwrap();
        if lhs.chars().count() <= 2 {
            s = rhs.to_string();
        }
    }
    s = fix_args(&s, "\\frac", 2);
    s = fix_args(&s, "\\sqrt", 1);
    s = s.replace("{.", "{0.");
    while let Some(t) = s.strip_suffix('.') {
        s = t.to_string();
    }
    while s.starts_with('{') && matching_brace(&s, 0) == Some(s.len() - 1) {
        s = s[1..s.len() - 1].to_string();
    }
    if s.starts_with('.') {
        s.insert(0, '0');
    }
    s = drop_trailing_unit(&s);
    if is_thousands(&s) {
        s.retain(|c| c != ',');
    }
    let b = s.as_bytes();
    if b.len() == 3 && b[0] == b'(' && b[1].is_ascii_alphabetic() && b[2] == b')' {
        s = s[1..2].to_string();
    }
    s
}

/// `5\text{ cm}` -> `5`, `5 cm` -> `5`: a unit after a number is dropped.
fn drop_trailing_unit(s: &str) -> String {
    let t = s.trim_end();
    for cmd in ["\\text{", "\\mbox{"] {
        if let Some(pos) = t.rfind(cmd) {
            let head = t[..pos].trim_end();
            if matching_brace(t, pos + cmd.len() - 1) == Some(t.len() - 1) && ends_in_number(head) {
                return head.to_string();
            }
        }
    }
    for w in UNIT_WORDS {
        if let Some(head) = t.strip_suffix(w) {
            let head = head.trim_end();
            if ends_in_number(head) && rational(head).is_some() {
                return head.to_string();
            }
        }
    }
    t.to_string()
}

fn ends_in_number(s: &str) -> bool {
    s.chars()
        .last()
        .is_some_and(|c| c.is_ascii_digit() || c == '}')
}

/// `\cmd{x}` -> `x` everywhere.
fn unwrap_command(s: &str, cmd: &str) -> String {
    let pat = format!("{cmd}{{");
    let mut s = s.to_string();
    while let Some(pos) = s.find(&pat) {
        let open = pos + cmd.len();
        let Some(close) = matching_brace(&s, open) else {
            break;
        };
        s = format!("{}{}{}", &s[..pos], &s[open + 1..close], &s[close + 1..]);
    }
    s
}

/// Braces the arguments of `cmd`: `\frac12` -> `\frac{1}{2}`, `\frac1{2}`,
/// `\sqrt2` -> `\sqrt{2}`. An argument is a `{...}` group or one character.
fn fix_args(s: &str, cmd: &str, nargs: usize) -> String {
    let mut out = String::with_capacity(s.len() + 8);
    let mut rest = s;
    while let Some(pos) = rest.find(cmd) {
        out.push_str(&rest[..pos + cmd.len()]);
        rest = &rest[pos + cmd.len()..];
        for _ in 0..nargs {
            if rest.starts_with('{') {
                match matching_brace(rest, 0) {
                    Some(close) => {
                        out.push_str(&rest[..=close]);
                        rest = &rest[close + 1..];
                    }
                    None => break,
                }
            } else if let Some(c) = rest.chars().next().filter(|c| c.is_alphanumeric()) {
                out.push('{');
                out.push(c);
                out.push('}');
                rest = &rest[c.len_utf8()..];
            } else {
                break;
            }
        }
    }
    out.push_str(rest);
    out
}

/// `1,234` / `-12,345.5`: digits grouped by three.
fn is_thousands(s: &str) -> bool {
    let s = s.strip_prefix('-').unwrap_or(s);
    let int = s.split('.').next().unwrap_or("");
    let frac_ok = s[int.len()..]
        .strip_prefix('.')
        .is_none_or(|f| !f.is_empty() && f.bytes().all(|b| b.is_ascii_digit()));
    let groups: Vec<&str> = int.split(',').collect();
    groups.len() > 1
        && frac_ok
        && (1..=3).contains(&groups[0].len())
        && groups.iter().all(|g| g.bytes().all(|b| b.is_ascii_digit()))
        && groups[1..].iter().all(|g| g.len() == 3)
}

/// A normalised answer as an exact rational `p/q` (q > 0): a decimal, `a/b` or
/// `\frac{a}{b}` with decimal parts, optionally signed. None otherwise.
pub fn rational(s: &str) -> Option<(i128, i128)> {
    let (neg, body) = match s.strip_prefix('-') {
        Some(b) => (true, b),
        None => (false, s.strip_prefix('+').unwrap_or(s)),
    };
    let (p, q) = if let Some(args) = body.strip_prefix("\\frac{") {
        let close = matching_brace(body, 5)?;
        let den = body[close + 1..].strip_prefix('{')?.strip_suffix('}')?;
        div(rational(&args[..close - 6])?, rational(den)?)?
    } else if let Some((a, b)) = body.split_once('/') {
        div(decimal(a)?, decimal(b)?)?
    } else {
        decimal(body)?
    };
    Some(if neg { (-p, q) } else { (p, q) })
}

fn div((a, b): (i128, i128), (c, d): (i128, i128)) -> Option<(i128, i128)> {
    if c == 0 {
        return None;
    }
    let (p, q) = (a.checked_mul(d)?, b.checked_mul(c)?);
    Some(if q < 0 { (-p, -q) } else { (p, q) })
}

/// `12`, `-0.50`, `.5` as `p/10^k`.
fn decimal(s: &str) -> Option<(i128, i128)> {
    let (neg, s) = match s.strip_prefix('-') {
        Some(b) => (true, b),
        None => (false, s),
    };
    let (int, frac) = s.split_once('.').unwrap_or((s, ""));
    if int.is_empty() && frac.is_empty()
        || !int.bytes().chain(frac.bytes()).all(|b| b.is_ascii_digit())
        || int.len() + frac.len() > 30
    {
        return None;
    }
    let digits = format!("{int}{frac}");
    let p: i128 = if digits.is_empty() {
        0
    } else {
        digits.parse().ok()?
    };
    let q = 10i128.checked_pow(frac.len() as u32)?;
    Some(if neg { (-p, q) } else { (p, q) })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn boxed_extraction() {
        assert_eq!(
            last_boxed("so \\boxed{1} or \\boxed{2}").as_deref(),
            Some("2")
        );
        assert_eq!(
            last_boxed("\\boxed{\\frac{1}{\\sqrt{2}}}").as_deref(),
            Some("\\frac{1}{\\sqrt{2}}")
        );
        assert_eq!(last_boxed("\\fbox{7}").as_deref(), Some("7"));
        assert_eq!(last_boxed("$\\boxed 5$").as_deref(), Some("5"));
        assert_eq!(last_boxed("\\boxed{3} then \\boxed{4"), None);
        assert_eq!(last_boxed("no answer"), None);
    }

    #[test]
    fn normalisation() {
        for (raw, want) in [
            ("\\dfrac{1}{2}", "\\frac{1}{2}"),
            ("\\frac12", "\\frac{1}{2}"),
            ("\\frac1{22}", "\\frac{1}{22}"),
            ("\\sqrt2", "\\sqrt{2}"),
            ("\\left( 1, 2 \\right)", "(1,2)"),
            ("90^\\circ", "90"),
            ("50\\%", "50"),
            ("\\$4.50", "4.50"),
            ("5\\text{ cm}", "5"),
            ("12 inches", "12"),
            ("\\text{(A)}", "A"),
            ("\\textbf{B}", "B"),
            ("x = 3", "3"),
            ("1,000,000", "1000000"),
            ("(1,2)", "(1,2)"),
            ("7.", "7"),
            (".5", "0.5"),
            ("{5}", "5"),
            ("\\!10", "10"),
        ] {
            assert_eq!(normalize(raw), want, "normalize({raw:?})");
            assert_eq!(normalize(want), want, "idempotent on {want:?}");
        }
    }

    #[test]
    fn equivalence() {
        assert!(equivalent("\\frac12", "0.5"));
        assert!(equivalent("\\dfrac{1}{2}", "1/2"));
        assert!(equivalent("-\\frac{3}{6}", "-0.5"));
        assert!(equivalent("18", "18.0"));
        assert!(equivalent("\\text{(A)}", "A"));
        assert!(!equivalent("\\frac13", "0.333"));
        assert!(!equivalent("2", "3"));
        assert!(!equivalent("1,2", "12"));
        assert_eq!(rational("\\frac{1}{0}"), None);
        assert_eq!(rational("\\frac{\\frac{1}{2}}{2}"), Some((1, 4)));
    }

    #[test]
    fn rewards() {
        assert_eq!(reward("\\frac{1}{2}", "... so \\boxed{0.5}."), 1.0);
        assert_eq!(reward("\\frac{1}{2}", "\\boxed{1/3}"), 0.0);
        assert_eq!(reward("\\frac{1}{2}", "the answer is 0.5"), 0.0);
    }
}
