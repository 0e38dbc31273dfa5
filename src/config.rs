//! `config.json` of Qwen3 (`model_type: qwen3`) and Qwen2/2.5 (`model_type: qwen2`)
//! checkpoints, with the Hugging Face field names verbatim.
//!
//! What transformers reads and we mirror:
//! - `head_dim` is explicit for Qwen3 (128, independent of hidden/heads); for Qwen2 it
//!   is derived as `hidden_size / num_attention_heads`.
//! - `rope_theta` sits at the top level in real checkpoints; transformers 5 writes it
//!   inside `rope_parameters`. Both are accepted.
//! - Qwen2 always has q/k/v biases (and none on o_proj); Qwen3 has biases on all four
//!   projections only when `attention_bias` is true; Qwen3 has per-head q/k RMSNorms.
//!
//! Settings the engine does not implement (rope scaling, an active sliding window,
//! another activation or model type) are refused, never silently ignored.

mod builtin;

pub use builtin::{builtin, builtin_names};

use crate::error::{Error, FileContext, Result};
use serde::Deserialize;
use serde_json::Value;
use std::path::Path;

/// The two Qwen families the engine runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Family {
    Qwen3,
    Qwen2,
}

/// A validated model configuration.
#[derive(Debug, Clone, PartialEq)]
pub struct ModelConfig {
    pub family: Family,
    pub vocab_size: usize,
    pub hidden_size: usize,
    pub intermediate_size: usize,
    pub num_hidden_layers: usize,
    pub num_attention_heads: usize,
    pub num_key_value_heads: usize,
    pub head_dim: usize,
    pub rms_norm_eps: f64,
    pub rope_theta: f64,
    pub max_position_embeddings: usize,
    pub tie_word_embeddings: bool,
    /// Biases on q/k/v projections.
    pub qkv_bias: bool,
    /// Bias on o_proj (Qwen3 with `attention_bias: true` only).
    pub o_bias: bool,
    /// Per-head RMSNorm on q and k (Qwen3).
    pub qk_norm: bool,
    pub eos_token_ids: Vec<u32>,
    /// `torch_dtype` / `dtype` as written in the file, if any.
    pub dtype: Option<String>,
}

/// The raw file, HF names verbatim. Unknown keys are ignored.
#[derive(Debug, Deserialize)]
struct RawConfig {
    model_type: Option<String>,
    vocab_size: Option<usize>,
    hidden_size: Option<usize>,
    intermediate_size: Option<usize>,
    num_hidden_layers: Option<usize>,
    num_attention_heads: Option<usize>,
    num_key_value_heads: Option<usize>,
    head_dim: Option<usize>,
    rms_norm_eps: Option<f64>,
    rope_theta: Option<f64>,
    rope_parameters: Option<Value>,
    rope_scaling: Option<Value>,
    max_position_embeddings: Option<usize>,
    tie_word_embeddings: Option<bool>,
    attention_bias: Option<bool>,
    use_sliding_window: Option<bool>,
    layer_types: Option<Vec<String>>,
    hidden_act: Option<String>,
    eos_token_id: Option<Value>,
    torch_dtype: Option<String>,
    dtype: Option<String>,
}

impl ModelConfig {
    /// Read and validate `config.json`.
    pub fn from_file(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path).in_file(path)?;
        Self::from_json(&text).map_err(|e| match e {
            Error::Invalid(msg) | Error::Unsupported(msg) => Error::file(path, msg),
            other => other,
        })
    }

    /// Parse and validate the text of a `config.json`.
    pub fn from_json(text: &str) -> Result<Self> {
        let raw: RawConfig = serde_json::from_str(text)
            .map_err(|e| Error::invalid(format!("malformed JSON: {e}")))?;
        raw.validate()
    }

    /// An HF `config.json` for this configuration (what `from_json` reads back, and
    /// what transformers' Qwen3 / Qwen2 classes load).
    pub fn to_hf_json(&self, dtype: &str) -> String {
        let (arch, kind) = match self.family {
            Family::Qwen3 => ("Qwen3ForCausalLM", "qwen3"),
            Family::Qwen2 => ("Qwen2ForCausalLM", "qwen2"),
        };
        let v = serde_json::json!({
            "architectures": [arch],
            "model_type": kind,
            "vocab_size": self.vocab_size,
            "hidden_size": self.hidden_size,
            "intermediate_size": self.intermediate_size,
            "num_hidden_layers": self.num_hidden_layers,
            "num_attention_heads": self.num_attention_heads,
            "num_key_value_heads": self.num_key_value_heads,
            "head_dim": self.head_dim,
            "rms_norm_eps": self.rms_norm_eps,
            "rope_theta": self.rope_theta,
            "max_position_embeddings": self.max_position_embeddings,
            "tie_word_embeddings": self.tie_word_embeddings,
            "attention_bias": self.qkv_bias,
            "hidden_act": "silu",
            "eos_token_id": self.eos_token_ids,
            "torch_dtype": dtype,
        });
        serde_json::to_string_pretty(&v).expect("a config serialises") + "\n"
    }

    /// Query heads per key/value head.
    pub fn gqa_group(&self) -> usize {
        self.num_attention_heads / self.num_key_value_heads
    }

    pub fn q_dim(&self) -> usize {
        self.num_attention_heads * self.head_dim
    }

    pub fn kv_dim(&self) -> usize {
        self.num_key_value_heads * self.head_dim
    }

    /// Parameters of one decoder layer.
    pub fn params_per_layer(&self) -> usize {
        let (h, q, kv, i) = (
            self.hidden_size,
            self.q_dim(),
            self.kv_dim(),
            self.intermediate_size,
        );
        let mut n = h * q + 2 * h * kv + q * h + 3 * h * i + 2 * h;
        if self.qkv_bias {
            n += q + 2 * kv;
        }
        if self.o_bias {
            n += h;
        }
        if self.qk_norm {
            n += 2 * self.head_dim;
        }
        n
    }

    /// All parameters, counting a tied embedding once.
    pub fn params_total(&self) -> usize {
        let embed = self.vocab_size * self.hidden_size;
        let head = if self.tie_word_embeddings { 0 } else { embed };
        embed + head + self.hidden_size + self.num_hidden_layers * self.params_per_layer()
    }
}

fn required<T>(v: Option<T>, key: &str) -> Result<T> {
    v.ok_or_else(|| Error::invalid(format!("missing key `{key}`")))
}

fn positive(v: usize, key: &str) -> Result<usize> {
    if v == 0 {
        return Err(Error::invalid(format!("`{key}` must be positive")));
    }
    Ok(v)
}

/// `eos_token_id` may be an int, a list of ints or null.
pub(crate) fn token_ids(v: &Value, key: &str) -> Result<Vec<u32>> {
    let bad = || Error::invalid(format!("`{key}` must be a token id or a list of token ids"));
    match v {
        Value::Null => Ok(vec![]),
        Value::Number(n) => Ok(vec![n
            .as_u64()
            .and_then(|x| u32::try_from(x).ok())
            .ok_or_else(bad)?]),
        Value::Array(items) => items
            .iter()
            .map(|x| {
                x.as_u64()
                    .and_then(|x| u32::try_from(x).ok())
                    .ok_or_else(bad)
            })
            .collect(),
        _ => Err(bad()),
    }
}

impl RawConfig {
    fn validate(self) -> Result<ModelConfig> {
        let model_type = required(self.model_type, "model_type")?;
        let family = match model_type.as_str() {
            "qwen3" => Family::Qwen3,
            "qwen2" => Family::Qwen2,
            other => {
                return Err(Error::Unsupported(format!(
                    "`model_type` \"{other}\" (supported: qwen3, qwen2)"
                )))
            }
        };
        let hidden_size = positive(required(self.hidden_size, "hidden_size")?, "hidden_size")?;
        let heads = positive(
            required(self.num_attention_heads, "num_attention_heads")?,
            "num_attention_heads",
        )?;
        let kv_heads = positive(
            self.num_key_value_heads.unwrap_or(heads),
            "num_key_value_heads",
        )?;
        if heads % kv_heads != 0 {
            return Err(Error::invalid(format!(
                "`num_attention_heads` ({heads}) is not a multiple of `num_key_value_heads` ({kv_heads})"
            )));
        }
        let head_dim = match (family, self.head_dim) {
            (_, Some(d)) => positive(d, "head_dim")?,
            (_, None) if hidden_size % heads == 0 => hidden_size / heads,
            _ => {
                return Err(Error::invalid(format!(
                    "no `head_dim` and `hidden_size` ({hidden_size}) is not divisible by `num_attention_heads` ({heads})"
                )))
            }
        };
        if head_dim % 2 != 0 {
            return Err(Error::invalid(format!(
                "`head_dim` ({head_dim}) must be even for RoPE"
            )));
        }
        let rope_theta = rope_theta(
            self.rope_theta,
            self.rope_parameters.as_ref(),
            self.rope_scaling.as_ref(),
        )?;
        if self.use_sliding_window == Some(true) {
            return Err(Error::Unsupported(
                "`use_sliding_window: true` (sliding-window attention)".into(),
            ));
        }
        if let Some(types) = &self.layer_types {
            if let Some(t) = types.iter().find(|t| t.as_str() != "full_attention") {
                return Err(Error::Unsupported(format!(
                    "`layer_types` entry \"{t}\" (only full_attention)"
                )));
            }
        }
        if let Some(act) = &self.hidden_act {
            if act != "silu" {
                return Err(Error::Unsupported(format!(
                    "`hidden_act` \"{act}\" (only silu)"
                )));
            }
        }
        let rms_norm_eps = self.rms_norm_eps.unwrap_or(1e-6);
        if !(rms_norm_eps > 0.0 && rms_norm_eps.is_finite()) {
            return Err(Error::invalid("`rms_norm_eps` must be positive"));
        }
        let attention_bias = self.attention_bias.unwrap_or(false);
        let eos_token_ids = match &self.eos_token_id {
            Some(v) => token_ids(v, "eos_token_id")?,
            None => vec![],
        };
        let cfg = ModelConfig {
            family,
            vocab_size: positive(required(self.vocab_size, "vocab_size")?, "vocab_size")?,
            hidden_size,
            intermediate_size: positive(
                required(self.intermediate_size, "intermediate_size")?,
                "intermediate_size",
            )?,
            num_hidden_layers: positive(
                required(self.num_hidden_layers, "num_hidden_layers")?,
                "num_hidden_layers",
            )?,
            num_attention_heads: heads,
            num_key_value_heads: kv_heads,
            head_dim,
            rms_norm_eps,
            rope_theta,
            max_position_embeddings: self.max_position_embeddings.unwrap_or(32768),
            tie_word_embeddings: self.tie_word_embeddings.unwrap_or(false),
            qkv_bias: family == Family::Qwen2 || attention_bias,
            o_bias: family == Family::Qwen3 && attention_bias,
            qk_norm: family == Family::Qwen3,
            eos_token_ids,
            dtype: self.torch_dtype.or(self.dtype),
        };
        Ok(cfg)
    }
}

/// The RoPE base from either form, refusing any scaling.
fn rope_theta(top: Option<f64>, params: Option<&Value>, scaling: Option<&Value>) -> Result<f64> {
    if let Some(s) = scaling {
        if !s.is_null() && !is_default_rope(s) {
            return Err(Error::Unsupported(format!(
                "`rope_scaling` {s} (no RoPE scaling is implemented)"
            )));
        }
    }
    let mut theta = top;
    if let Some(p) = params {
        if !p.is_null() {
            if !is_default_rope(p) {
                return Err(Error::Unsupported(format!(
                    "`rope_parameters` {p} (only rope_type \"default\" is implemented)"
                )));
            }
            if let Some(t) = p.get("rope_theta") {
                let t = t.as_f64().ok_or_else(|| {
                    Error::invalid("`rope_parameters.rope_theta` must be a number")
                })?;
                theta = Some(t);
            }
        }
    }
    let theta = theta.unwrap_or(10000.0);
    if !(theta > 0.0 && theta.is_finite()) {
        return Err(Error::invalid("`rope_theta` must be positive"));
    }
    Ok(theta)
}

fn is_default_rope(v: &Value) -> bool {
    let kind = v
        .get("rope_type")
        .or_else(|| v.get("type"))
        .and_then(Value::as_str);
    matches!(kind, None | Some("default"))
}

#[cfg(test)]
mod tests;
