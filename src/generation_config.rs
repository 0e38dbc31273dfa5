//! `generation_config.json`: the stop tokens and sampling defaults a model ships.
//!
//! Qwen Instruct/Qwen3 models stop on both `<|im_end|>` and `<|endoftext|>`
//! (`eos_token_id: [151645, 151643]`) while their config.json names only one,
//! so the stop set comes from this file when it exists, as in transformers.

use std::path::Path;

use serde_json::Value;

use crate::error::{Error, Result};

const FILE: &str = "generation_config.json";

/// Token ids that end generation: `eos_token_id` of `generation_config.json`
/// (an integer or a list) when the file exists and sets it, else the
/// config.json eos ids passed in. Duplicates are removed, order kept. A
/// malformed file or a non-integer id is an error naming the file.
pub fn stop_token_ids(model_dir: &Path, config_eos: &[u32]) -> Result<Vec<u32>> {
    let path = model_dir.join(FILE);
    let from_file = match read(model_dir)? {
        Some(json) => match json.get("eos_token_id") {
            None | Some(Value::Null) => None,
            Some(v) => Some(parse_ids(v).ok_or_else(|| {
                Error::file(
                    &path,
                    format!("eos_token_id: expected an integer or a list of integers, got {v}"),
                )
            })?),
        },
        None => None,
    };
    let mut ids = Vec::new();
    for id in from_file.as_deref().unwrap_or(config_eos) {
        if !ids.contains(id) {
            ids.push(*id);
        }
    }
    Ok(ids)
}

/// Sampling settings a model recommends; each is absent when the file does
/// not set it.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct SamplingDefaults {
    pub temperature: Option<f32>,
    pub top_p: Option<f32>,
    pub top_k: Option<usize>,
    pub do_sample: Option<bool>,
}

/// `temperature`, `top_p`, `top_k` and `do_sample` from
/// `generation_config.json`; `None` when the file is absent or unreadable
/// (`stop_token_ids` reports a malformed file). Fields of the wrong type count
/// as absent.
pub fn sampling_defaults(model_dir: &Path) -> Option<SamplingDefaults> {
    let json = read(model_dir).ok()??;
    let float = |k: &str| json.get(k).and_then(Value::as_f64).map(|x| x as f32);
    Some(SamplingDefaults {
        temperature: float("temperature"),
        top_p: float("top_p"),
        top_k: json
            .get("top_k")
            .and_then(Value::as_u64)
            .map(|k| k as usize),
        do_sample: json.get("do_sample").and_then(Value::as_bool),
    })
}

/// The parsed file, `None` when it does not exist.
fn read(model_dir: &Path) -> Result<Option<Value>> {
    let path = model_dir.join(FILE);
    let text = match std::fs::read_to_string(&path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(Error::file(&path, e)),
    };
    let json: Value = serde_json::from_str(&text)
        .map_err(|e| Error::file(&path, format!("malformed JSON: {e}")))?;
    if !json.is_object() {
        return Err(Error::file(&path, "expected a JSON object"));
    }
    Ok(Some(json))
}

fn parse_ids(v: &Value) -> Option<Vec<u32>> {
    let one = |v: &Value| v.as_u64().and_then(|x| u32::try_from(x).ok());
    match v {
        Value::Array(items) => items.iter().map(one).collect(),
        v => one(v).map(|id| vec![id]),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dir_with(text: Option<&str>) -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        if let Some(t) = text {
            std::fs::write(dir.path().join(FILE), t).unwrap();
        }
        dir
    }

    #[test]
    fn eos_int_list_and_fallback() {
        let d = dir_with(Some(r#"{"bos_token_id": 151643, "eos_token_id": 151643}"#));
        assert_eq!(stop_token_ids(d.path(), &[151645]).unwrap(), vec![151643]);

        let d = dir_with(Some(
            r#"{"eos_token_id": [151645, 151643, 151645], "top_k": 20}"#,
        ));
        assert_eq!(
            stop_token_ids(d.path(), &[7]).unwrap(),
            vec![151645, 151643]
        );

        let d = dir_with(Some(r#"{"temperature": 0.7}"#));
        assert_eq!(
            stop_token_ids(d.path(), &[151645, 151645]).unwrap(),
            vec![151645]
        );

        let d = dir_with(None);
        assert_eq!(stop_token_ids(d.path(), &[151643]).unwrap(), vec![151643]);
        assert_eq!(sampling_defaults(d.path()), None);
    }

    #[test]
    fn malformed_file_is_a_one_line_error_naming_it() {
        for bad in [
            "{ \"eos_token_id\": [1, ",
            r#"{"eos_token_id": "x"}"#,
            r#"{"eos_token_id": [-1]}"#,
            "[1]",
        ] {
            let d = dir_with(Some(bad));
            let e = stop_token_ids(d.path(), &[1]).unwrap_err().to_string();
            assert!(e.contains(FILE) && !e.contains('\n'), "{bad}: {e}");
        }
    }

    #[test]
    fn sampling_defaults_read_present_fields() {
        let d = dir_with(Some(
            r#"{"do_sample": true, "temperature": 0.6, "top_p": 0.95, "top_k": 20, "eos_token_id": 1}"#,
        ));
        let s = sampling_defaults(d.path()).unwrap();
        assert_eq!(
            s,
            SamplingDefaults {
                temperature: Some(0.6),
                top_p: Some(0.95),
                top_k: Some(20),
                do_sample: Some(true)
            }
        );
        let d = dir_with(Some(r#"{"top_p": 0.8}"#));
        let s = sampling_defaults(d.path()).unwrap();
        assert_eq!(
            s,
            SamplingDefaults {
                top_p: Some(0.8),
                ..Default::default()
            }
        );
    }
}
