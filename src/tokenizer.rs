//! The model's tokenizer: a thin wrapper over Hugging Face `tokenizers` that
//! loads `tokenizer.json` and turns its errors into the engine's one-line errors.
//!
//! Qwen adds no BOS token and its post-processor adds nothing, so `encode`
//! never adds special tokens; special tokens written in the text itself
//! (`<|im_start|>`, `<think>`, ...) still map to their single ids, which is how
//! a rendered chat template (see `chat`) becomes token ids.

use std::path::{Path, PathBuf};

use crate::error::{Error, Result};

/// A loaded `tokenizer.json`.
pub struct Tokenizer {
    inner: tokenizers::Tokenizer,
    path: PathBuf,
}

impl std::fmt::Debug for Tokenizer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tokenizer")
            .field("path", &self.path)
            .field("vocab_size", &self.vocab_size())
            .finish()
    }
}

impl Tokenizer {
    /// Load a Hugging Face `tokenizer.json`. A missing or malformed file is an
    /// error naming the file.
    pub fn from_file(path: &Path) -> Result<Self> {
        if !path.is_file() {
            return Err(Error::file(path, "tokenizer file not found"));
        }
        let inner = tokenizers::Tokenizer::from_file(path)
            .map_err(|e| Error::file(path, format!("cannot load tokenizer: {}", one_line(&e))))?;
        Ok(Self {
            inner,
            path: path.to_path_buf(),
        })
    }

    /// The file this tokenizer was loaded from.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Token ids of `text`, adding no special tokens (Qwen has no BOS). Special
    /// tokens spelled out in the text map to their single ids. An empty text
    /// gives an empty vector; callers that need a non-empty prompt check that.
    pub fn encode(&self, text: &str) -> Result<Vec<u32>> {
        if text.is_empty() {
            return Ok(Vec::new());
        }
        let enc = self
            .inner
            .encode_fast(text, false)
            .map_err(|e| self.err(format!("cannot encode text: {}", one_line(&e))))?;
        Ok(enc.get_ids().to_vec())
    }

    /// Text of `ids`. With `skip_special`, tokens marked special in
    /// tokenizer.json (`<|im_end|>`, `<|endoftext|>`, ...) are left out; `<think>`
    /// and `</think>` are not special in Qwen's files and always stay. Ids the
    /// tokenizer does not know (the padding rows of Qwen's embedding, past
    /// `vocab_size()`) decode to nothing.
    pub fn decode(&self, ids: &[u32], skip_special: bool) -> Result<String> {
        self.inner
            .decode(ids, skip_special)
            .map_err(|e| self.err(format!("cannot decode token ids: {}", one_line(&e))))
    }

    /// The id of one token (a vocabulary entry or an added token such as
    /// `<|im_end|>`), or `None` when the tokenizer has no such token.
    pub fn token_id(&self, token: &str) -> Option<u32> {
        self.inner.token_to_id(token)
    }

    /// The token string of one id, if the tokenizer knows it.
    pub fn id_to_token(&self, id: u32) -> Option<String> {
        self.inner.id_to_token(id)
    }

    /// Number of token ids the tokenizer can produce, added tokens included
    /// (151,669 for Qwen3's tokenizer; the model's `vocab_size` is padded to
    /// 151,936).
    pub fn vocab_size(&self) -> usize {
        self.inner.get_vocab_size(true)
    }

    fn err(&self, msg: String) -> Error {
        Error::file(&self.path, msg)
    }
}

/// Collapse a multi-line library error into one line.
fn one_line(e: &dyn std::fmt::Display) -> String {
    e.to_string()
        .split_whitespace()
        .collect::<Vec<_>>()
        .join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A word-level tokenizer small enough to write inline, with two added
    /// tokens, one special.
    const TINY: &str = r#"{
      "version": "1.0",
      "truncation": null,
      "padding": null,
      "added_tokens": [
        {"id": 3, "content": "<|im_end|>", "single_word": false, "lstrip": false,
         "rstrip": false, "normalized": false, "special": true},
        {"id": 4, "content": "<think>", "single_word": false, "lstrip": false,
         "rstrip": false, "normalized": false, "special": false}
      ],
      "normalizer": null,
      "pre_tokenizer": {"type": "Whitespace"},
      "post_processor": null,
      "decoder": null,
      "model": {"type": "WordLevel", "vocab": {"a": 0, "b": 1, "[UNK]": 2},
                "unk_token": "[UNK]"}
    }"#;

    fn tiny() -> (tempfile::TempDir, Tokenizer) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("tokenizer.json");
        std::fs::write(&path, TINY).unwrap();
        let tok = Tokenizer::from_file(&path).unwrap();
        (dir, tok)
    }

    #[test]
    fn encodes_added_tokens_as_single_ids() {
        let (_d, tok) = tiny();
        assert_eq!(tok.encode("a<think>b<|im_end|>").unwrap(), vec![0, 4, 1, 3]);
        assert_eq!(tok.encode("").unwrap(), Vec::<u32>::new());
        assert_eq!(tok.token_id("<|im_end|>"), Some(3));
        assert_eq!(tok.token_id("b"), Some(1));
        assert_eq!(tok.token_id("zzz"), None);
        assert_eq!(tok.vocab_size(), 5);
    }

    #[test]
    fn decode_skips_only_special_tokens() {
        let (_d, tok) = tiny();
        let all = tok.decode(&[0, 4, 3], false).unwrap();
        assert!(
            all.contains("<think>") && all.contains("<|im_end|>"),
            "{all}"
        );
        let skipped = tok.decode(&[0, 4, 3], true).unwrap();
        assert!(
            skipped.contains("<think>") && !skipped.contains("<|im_end|>"),
            "{skipped}"
        );
    }

    #[test]
    fn missing_and_malformed_files_name_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("nope.json");
        let e = Tokenizer::from_file(&missing).unwrap_err().to_string();
        assert!(e.contains("nope.json") && !e.contains('\n'), "{e}");

        let bad = dir.path().join("tokenizer.json");
        std::fs::write(&bad, "{ not json").unwrap();
        let e = Tokenizer::from_file(&bad).unwrap_err().to_string();
        assert!(e.contains("tokenizer.json") && !e.contains('\n'), "{e}");
    }
}
