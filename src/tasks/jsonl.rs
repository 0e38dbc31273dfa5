//! JSONL dataset reading shared by the tasks: one JSON object per line, blank
//! lines skipped, `.gz` files decompressed on the fly. Every error is one line
//! naming the file (and the 1-based line number).

use std::io::{BufRead, BufReader, Read};
use std::path::Path;

use serde_json::{Map, Value};

use crate::{Error, Result};

/// One dataset record and where it came from.
pub struct Record<'a> {
    pub path: &'a Path,
    /// 1-based line number in the (decompressed) file.
    pub line: usize,
    pub obj: Map<String, Value>,
}

impl Record<'_> {
    /// An error naming the file and line.
    pub fn error(&self, msg: impl std::fmt::Display) -> Error {
        Error::file(self.path, format!("line {}: {msg}", self.line))
    }

    /// A required string field.
    pub fn str(&self, key: &str) -> Result<&str> {
        match self.obj.get(key) {
            Some(Value::String(s)) => Ok(s),
            Some(_) => Err(self.error(format!("key {key:?} is not a string"))),
            None => Err(self.error(format!("missing key {key:?}"))),
        }
    }

    /// An optional string field (absent or null: None; another type: error).
    pub fn opt_str(&self, key: &str) -> Result<Option<&str>> {
        match self.obj.get(key) {
            None | Some(Value::Null) => Ok(None),
            Some(Value::String(s)) => Ok(Some(s)),
            Some(_) => Err(self.error(format!("key {key:?} is not a string"))),
        }
    }
}

/// Reads every record of `path`, calling `f` on each; stops at the first error.
pub fn read<T>(path: &Path, mut f: impl FnMut(&Record) -> Result<T>) -> Result<Vec<T>> {
    let file = std::fs::File::open(path)
        .map_err(|e| Error::file(path, format!("cannot open dataset: {e}")))?;
    let gz = path
        .extension()
        .is_some_and(|e| e.eq_ignore_ascii_case("gz"));
    let reader: Box<dyn Read> = if gz {
        Box::new(flate2::read::MultiGzDecoder::new(file))
    } else {
        Box::new(file)
    };
    let mut out = Vec::new();
    for (i, line) in BufReader::new(reader).lines().enumerate() {
        let line_no = i + 1;
        let line = line.map_err(|e| Error::file(path, format!("line {line_no}: {e}")))?;
        let text = line.trim();
        if text.is_empty() {
            continue;
        }
        let obj = match serde_json::from_str::<Value>(text) {
            Ok(Value::Object(obj)) => obj,
            Ok(_) => {
                return Err(Error::file(
                    path,
                    format!("line {line_no}: expected a JSON object"),
                ))
            }
            Err(e) => {
                return Err(Error::file(
                    path,
                    format!("line {line_no}: malformed JSON: {e}"),
                ))
            }
        };
        out.push(f(&Record {
            path,
            line: line_no,
            obj,
        })?);
    }
    if out.is_empty() {
        return Err(Error::file(path, "dataset has no records"));
    }
    Ok(out)
}
