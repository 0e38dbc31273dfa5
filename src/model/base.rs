//! The built-in pretrained base model: a Qwen3-architecture model of 8 layers of
//! width 128 (the built-in shape `base`, 1.6 M parameters, the arith task's
//! character vocabulary), pretrained from scratch by tools/make_base_model.sh
//! (`engine sft --train-embeddings` on three-term arithmetic with worked
//! solutions) and committed in assets/base/ (bf16, its card in
//! docs/base-model.md). It is compiled into the binary and written once to a
//! folder of the temporary directory named by its hash, from which it loads as
//! any HF directory.

use crate::sampling::mix64;
use crate::{Error, Result};
use std::path::PathBuf;

const CONFIG: &str = include_str!("../../assets/base/config.json");
const WEIGHTS: &[u8] = include_bytes!("../../assets/base/model.safetensors");

/// The directory holding the base model's config.json and model.safetensors.
pub fn base_dir() -> Result<PathBuf> {
    let hash = WEIGHTS.chunks(8).fold(mix64(CONFIG.len() as u64), |h, c| {
        let mut b = [0u8; 8];
        b[..c.len()].copy_from_slice(c);
        mix64(h ^ u64::from_le_bytes(b))
    });
    let dir = std::env::temp_dir().join(format!("onelayer-base-{hash:016x}"));
    let weights = dir.join("model.safetensors");
    let complete = std::fs::metadata(&weights).is_ok_and(|m| m.len() == WEIGHTS.len() as u64)
        && dir.join("config.json").exists();
    if complete {
        return Ok(dir);
    }
    // Written beside, then renamed: a concurrent first use sees all or nothing.
    let tmp = std::env::temp_dir().join(format!(
        "onelayer-base-{hash:016x}.tmp-{}",
        std::process::id()
    ));
    let fail = |e: std::io::Error| Error::file(&tmp, e);
    std::fs::create_dir_all(&tmp).map_err(fail)?;
    std::fs::write(tmp.join("config.json"), CONFIG).map_err(fail)?;
    std::fs::write(tmp.join("model.safetensors"), WEIGHTS).map_err(fail)?;
    match std::fs::rename(&tmp, &dir) {
        Ok(()) => Ok(dir),
        Err(_) if dir.join("model.safetensors").exists() => {
            let _ = std::fs::remove_dir_all(&tmp);
            Ok(dir)
        }
        Err(e) => Err(Error::file(&dir, e)),
    }
}
