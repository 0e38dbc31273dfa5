//! Configurations of the released Qwen3 and Qwen2.5 models (docs/REFERENCES.md),
//! for models with random weights (`engine bench`, `engine plan`) where no
//! checkpoint is at hand, plus `tiny` and `base`, small Qwen3-shaped models for the
//! CPU (4 and 8 layers of width 128).

use super::{Family, ModelConfig};

/// (name, family, layers, hidden, intermediate, heads, kv heads, head_dim, tied, vocab)
type Row = (
    &'static str,
    Family,
    usize,
    usize,
    usize,
    usize,
    usize,
    usize,
    bool,
    usize,
);

const SHAPES: &[Row] = &[
    ("tiny", Family::Qwen3, 4, 128, 384, 4, 2, 32, true, 512),
    // The built-in pretrained base (assets/base, tools/make_base_model.sh).
    ("base", Family::Qwen3, 8, 128, 384, 4, 2, 32, true, 512),
    (
        "qwen3-0.6b",
        Family::Qwen3,
        28,
        1024,
        3072,
        16,
        8,
        128,
        true,
        151_936,
    ),
    (
        "qwen3-1.7b",
        Family::Qwen3,
        28,
        2048,
        6144,
        16,
        8,
        128,
        true,
        151_936,
    ),
    (
        "qwen3-4b",
        Family::Qwen3,
        36,
        2560,
        9728,
        32,
        8,
        128,
        true,
        151_936,
    ),
    (
        "qwen3-8b",
        Family::Qwen3,
        36,
        4096,
        12288,
        32,
        8,
        128,
        false,
        151_936,
    ),
    (
        "qwen3-14b",
        Family::Qwen3,
        40,
        5120,
        17408,
        40,
        8,
        128,
        false,
        151_936,
    ),
    (
        "qwen2.5-0.5b",
        Family::Qwen2,
        24,
        896,
        4864,
        14,
        2,
        64,
        true,
        151_936,
    ),
    (
        "qwen2.5-1.5b",
        Family::Qwen2,
        28,
        1536,
        8960,
        12,
        2,
        128,
        true,
        151_936,
    ),
    (
        "qwen2.5-7b",
        Family::Qwen2,
        28,
        3584,
        18944,
        28,
        4,
        128,
        false,
        152_064,
    ),
];

/// The names `builtin` knows.
pub fn builtin_names() -> Vec<&'static str> {
    SHAPES.iter().map(|r| r.0).collect()
}

/// The configuration of a built-in shape (`qwen3-4b`, ...; `-instruct` suffixes
/// accepted: the architecture is the same).
pub fn builtin(name: &str) -> Option<ModelConfig> {
    let key = name.to_ascii_lowercase();
    let key = key.strip_suffix("-instruct").unwrap_or(&key);
    let &(_, family, layers, hidden, inter, heads, kv, hd, tied, vocab) =
        SHAPES.iter().find(|r| r.0 == key)?;
    Some(ModelConfig {
        family,
        vocab_size: vocab,
        hidden_size: hidden,
        intermediate_size: inter,
        num_hidden_layers: layers,
        num_attention_heads: heads,
        num_key_value_heads: kv,
        head_dim: hd,
        rms_norm_eps: 1e-6,
        rope_theta: 1e6,
        max_position_embeddings: 40960,
        tie_word_embeddings: tied,
        qkv_bias: family == Family::Qwen2,
        o_bias: false,
        qk_norm: family == Family::Qwen3,
        eos_token_ids: vec![151_645, 151_643],
        dtype: Some("bfloat16".into()),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shapes_have_the_published_sizes() {
        // parameter counts of the published checkpoints, within 1%
        for (name, billions) in [
            ("qwen3-0.6b", 0.596),
            ("qwen3-4b", 4.02),
            ("qwen3-8b", 8.19),
            ("qwen2.5-7b", 7.62),
        ] {
            let n = builtin(name).unwrap().params_total() as f64 / 1e9;
            assert!((n - billions).abs() / billions < 0.01, "{name}: {n}");
        }
        assert_eq!(builtin("Qwen2.5-1.5B-Instruct").unwrap().head_dim, 128);
        assert!(builtin("llama").is_none());
    }
}
