//! HumanEval-style code generation (DESIGN section 6).
//!
//! Dataset: JSONL (or `.jsonl.gz`, as openai/human-eval ships
//! `HumanEval.jsonl.gz`) with `task_id`, `prompt` (a function signature and
//! docstring), `test` (defining `check(candidate)`), `entry_point` and
//! optionally `canonical_solution` (kept as the reference).
//!
//! Prompt (the user turn): `Complete the following Python function:`, a
//! newline, a ```` ```python ```` fence line, the HumanEval prompt, then a
//! closing ```` ``` ```` (a newline is added before it when the prompt does not
//! end with one).
//!
//! Reward: the code is the content of the last ```python (or ```py) fenced
//! block of the completion; else of the last fenced block of any language;
//! else the raw completion (an unclosed fence runs to the end). When the code
//! does not define the entry point (`def name(`), it is taken as the
//! continuation of the prompt and the whole prompt goes before it; when it
//! does, the part of the prompt before the entry point's `def` line goes
//! before it (imports and helper functions: HumanEval/10, /38, /50 have
//! helpers, and model-written functions often omit `from typing import List`).
//! The program is `{head}{code}` (the candidate), judged by `{test}` calling
//! `check({entry_point})` in the `sandbox`'s harness (judge_harness.py): the candidate
//! runs in its own process and answers the tests' calls with plain data; reward 1.0
//! only when the harness reports, with the run's token, that `check` returned.
//! Exits of any kind, non-plain results and tampering cannot reach that report
//! (`Outcome` names why a run scored 0).

use std::path::Path;

use super::sandbox::{run_judged, Judged, RunResult, SandboxConfig};
use super::{jsonl, Problem};
use crate::Result;

/// What the code task needs besides the prompt.
#[derive(Clone, Debug, PartialEq)]
pub struct CodeSpec {
    /// The HumanEval prompt (signature and docstring).
    pub prompt: String,
    /// Python defining `check(candidate)`.
    pub test: String,
    /// The function under test.
    pub entry_point: String,
    pub canonical_solution: Option<String>,
}

/// The user-turn text for a HumanEval prompt.
pub fn prompt(code_prompt: &str) -> String {
    let nl = if code_prompt.ends_with('\n') {
        ""
    } else {
        "\n"
    };
    format!("Complete the following Python function:\n```python\n{code_prompt}{nl}```")
}

pub fn load(path: &Path) -> Result<Vec<Problem>> {
    jsonl::read(path, |rec| {
        let spec = CodeSpec {
            prompt: rec.str("prompt")?.to_string(),
            test: rec.str("test")?.to_string(),
            entry_point: rec.str("entry_point")?.to_string(),
            canonical_solution: rec.opt_str("canonical_solution")?.map(str::to_string),
        };
        if !is_identifier(&spec.entry_point) {
            return Err(rec.error(format!(
                "key \"entry_point\" is not a Python identifier: {:?}",
                spec.entry_point
            )));
        }
        Ok(Problem {
            id: rec.str("task_id")?.to_string(),
            prompt: prompt(&spec.prompt),
            reference: spec.canonical_solution.clone().unwrap_or_default(),
            code: Some(spec),
            row: None,
        })
    })
}

fn is_identifier(s: &str) -> bool {
    let mut chars = s.chars();
    chars.next().is_some_and(|c| c.is_alphabetic() || c == '_')
        && chars.all(|c| c.is_alphanumeric() || c == '_')
}

/// The code of a completion: the last ```python block, else the last fenced
/// block, else the whole text.
pub fn extract_code(completion: &str) -> String {
    let mut blocks: Vec<(String, &str)> = Vec::new();
    let mut rest = completion;
    while let Some(open) = rest.find("```") {
        let after = &rest[open + 3..];
        let info_end = after.find('\n').unwrap_or(after.len());
        let info = after[..info_end].trim().to_ascii_lowercase();
        let body = after.get(info_end + 1..).unwrap_or("");
        match body.find("```") {
            Some(close) => {
                blocks.push((info, &body[..close]));
                rest = &body[close + 3..];
            }
            None => {
                blocks.push((info, body));
                break;
            }
        }
    }
    let is_python = |info: &str| matches!(info, "python" | "py" | "python3");
    blocks
        .iter()
        .rev()
        .find(|(info, _)| is_python(info))
        .or(blocks.last())
        .map(|(_, body)| body.to_string())
        .unwrap_or_else(|| completion.to_string())
}

/// The byte offset of the start of the line that has `def name(` in `code`.
pub fn find_def(code: &str, name: &str) -> Option<usize> {
    code.match_indices(name).find_map(|(i, _)| {
        let before = code[..i].trim_end_matches([' ', '\t']);
        let after = code[i + name.len()..].trim_start_matches([' ', '\t']);
        let head = before.strip_suffix("def")?;
        let line_start = head.rfind('\n').map_or(0, |p| p + 1);
        let ok = before.len() < i
            && head[line_start..].chars().all(|c| c == ' ' || c == '\t')
            && after.starts_with('(');
        ok.then_some(line_start)
    })
}

/// Whether `code` has a `def name(` (at the start of a line, maybe indented).
pub fn defines(code: &str, name: &str) -> bool {
    find_def(code, name).is_some()
}

/// The candidate's module: the prompt's head (or the whole prompt, when the code
/// continues it) and the code.
pub fn candidate_source(spec: &CodeSpec, completion: &str) -> String {
    let code = extract_code(completion);
    let head = if defines(&code, &spec.entry_point) {
        let cut = find_def(&spec.prompt, &spec.entry_point).unwrap_or(0);
        &spec.prompt[..cut]
    } else {
        &spec.prompt[..]
    };
    let nl = if head.is_empty() || head.ends_with('\n') {
        ""
    } else {
        "\n"
    };
    format!("{head}{nl}{code}\n")
}

/// The Python program that tests a completion, as one file (what `run` judges, with
/// the candidate in its own process).
pub fn program(spec: &CodeSpec, completion: &str) -> String {
    format!(
        "{}\n{}\n\ncheck({})\n",
        candidate_source(spec, completion),
        spec.test,
        spec.entry_point
    )
}

/// Runs the tests on a completion in the sandbox, judged by the harness
/// (`sandbox::run_judged`): passed only when `check` returned.
pub fn run(spec: &CodeSpec, completion: &str, cfg: &SandboxConfig) -> RunResult {
    let candidate = candidate_source(spec, completion);
    run_judged(
        &Judged {
            trusted: &spec.prompt,
            candidate: &candidate,
            test: &spec.test,
            entry_point: &spec.entry_point,
        },
        cfg,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn extraction() {
        let c = "Here:\n```python\ndef f(x):\n    return 1\n```\nand\n```python\ndef f(x):\n    return 2\n```\ndone";
        assert_eq!(extract_code(c), "def f(x):\n    return 2\n");
        let mixed = "```python\na = 1\n```\n```text\nout\n```";
        assert_eq!(extract_code(mixed), "a = 1\n");
        assert_eq!(extract_code("```\nb = 2\n```"), "b = 2\n");
        assert_eq!(extract_code("```python\nc = 3\n"), "c = 3\n");
        assert_eq!(extract_code("    return x\n"), "    return x\n");
    }

    #[test]
    fn entry_point_detection() {
        assert!(defines("def add(a, b):\n", "add"));
        assert!(defines("x = 1\ndef  add (a):", "add"));
        assert!(!defines("def add_one(a):", "add"));
        assert!(!defines("undef add(a)", "add"));
        assert!(!defines("return add(a)", "add"));
        assert!(!defines("x = 1; def add(a)", "add"));
        assert_eq!(find_def("import m\n\n    def add(a):", "add"), Some(10));
    }

    #[test]
    fn prompt_text() {
        assert_eq!(
            prompt("def f():\n    \"\"\"doc\"\"\"\n"),
            "Complete the following Python function:\n```python\ndef f():\n    \"\"\"doc\"\"\"\n```"
        );
    }

    #[test]
    fn program_text() {
        let spec = CodeSpec {
            prompt: "def inc(x):\n".into(),
            test: "def check(c):\n    assert c(1) == 2".into(),
            entry_point: "inc".into(),
            canonical_solution: None,
        };
        assert_eq!(
            program(&spec, "    return x + 1\n"),
            "def inc(x):\n    return x + 1\n\n\ndef check(c):\n    assert c(1) == 2\n\ncheck(inc)\n"
        );
        let spec = CodeSpec {
            prompt: "import math\ndef inc(x):\n    \"\"\"doc\"\"\"\n".into(),
            ..spec
        };
        assert_eq!(
            program(&spec, "```python\ndef inc(x):\n    return x + 1\n```"),
            "import math\ndef inc(x):\n    return x + 1\n\n\ndef check(c):\n    assert c(1) == 2\n\ncheck(inc)\n"
        );
    }
}
