//! The engine's error type. Every error a user can cause prints as one line
//! naming the file, key or flag involved; `main` prints it and exits non-zero.

use std::path::{Path, PathBuf};

#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Something wrong with a file: unreadable, malformed, missing a key.
    #[error("{}: {msg}", path.display())]
    File { path: PathBuf, msg: String },
    /// A bad command-line value or API argument.
    #[error("{0}")]
    Invalid(String),
    /// A valid setting the engine does not implement.
    #[error("unsupported: {0}")]
    Unsupported(String),
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    pub fn file(path: impl AsRef<Path>, msg: impl std::fmt::Display) -> Self {
        Error::File {
            path: path.as_ref().to_path_buf(),
            msg: msg.to_string(),
        }
    }
    pub fn invalid(msg: impl std::fmt::Display) -> Self {
        Error::Invalid(msg.to_string())
    }
}

/// Attach a file path to any error convertible to a string.
pub trait FileContext<T> {
    fn in_file(self, path: impl AsRef<Path>) -> Result<T>;
}

impl<T, E: std::fmt::Display> FileContext<T> for std::result::Result<T, E> {
    fn in_file(self, path: impl AsRef<Path>) -> Result<T> {
        self.map_err(|e| Error::file(path, e))
    }
}
