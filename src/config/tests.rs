use super::*;

const QWEN3_4B: &str = r#"{
  "architectures": ["Qwen3ForCausalLM"], "attention_bias": false, "attention_dropout": 0.0,
  "bos_token_id": 151643, "eos_token_id": 151645, "head_dim": 128, "hidden_act": "silu",
  "hidden_size": 2560, "initializer_range": 0.02, "intermediate_size": 9728,
  "max_position_embeddings": 40960, "max_window_layers": 36, "model_type": "qwen3",
  "num_attention_heads": 32, "num_hidden_layers": 36, "num_key_value_heads": 8,
  "rms_norm_eps": 1e-06, "rope_scaling": null, "rope_theta": 1000000, "sliding_window": null,
  "tie_word_embeddings": true, "torch_dtype": "bfloat16", "transformers_version": "4.51.0",
  "use_cache": true, "use_sliding_window": false, "vocab_size": 151936
}"#;

const QWEN25_15B: &str = r#"{
  "architectures": ["Qwen2ForCausalLM"], "bos_token_id": 151643, "eos_token_id": 151645,
  "hidden_act": "silu", "hidden_size": 1536, "intermediate_size": 8960,
  "max_position_embeddings": 32768, "max_window_layers": 21, "model_type": "qwen2",
  "num_attention_heads": 12, "num_hidden_layers": 28, "num_key_value_heads": 2,
  "rms_norm_eps": 1e-06, "rope_theta": 1000000.0, "sliding_window": 32768,
  "tie_word_embeddings": true, "torch_dtype": "bfloat16", "use_sliding_window": false,
  "vocab_size": 151936
}"#;

fn with(base: &str, key: &str, value: &str) -> String {
    let mut v: Value = serde_json::from_str(base).unwrap();
    v[key] = serde_json::from_str(value).unwrap();
    v.to_string()
}

fn without(base: &str, key: &str) -> String {
    let mut v: Value = serde_json::from_str(base).unwrap();
    v.as_object_mut().unwrap().remove(key);
    v.to_string()
}

#[test]
fn qwen3_4b_real_config() {
    let c = ModelConfig::from_json(QWEN3_4B).unwrap();
    assert_eq!(c.family, Family::Qwen3);
    assert_eq!(
        (c.head_dim, c.num_key_value_heads, c.gqa_group()),
        (128, 8, 4)
    );
    assert_eq!(c.rope_theta, 1e6);
    assert!(c.tie_word_embeddings && c.qk_norm && !c.qkv_bias && !c.o_bias);
    assert_eq!(c.eos_token_ids, vec![151645]);
    // ~101M parameters per layer (DESIGN.md section 4)
    assert_eq!(c.params_per_layer(), 100_930_816);
}

#[test]
fn qwen25_derives_head_dim_and_has_qkv_bias() {
    let c = ModelConfig::from_json(QWEN25_15B).unwrap();
    assert_eq!(c.family, Family::Qwen2);
    assert_eq!(c.head_dim, 128);
    assert!(c.qkv_bias && !c.o_bias && !c.qk_norm);
}

#[test]
fn rope_theta_inside_rope_parameters() {
    let text = with(
        &without(QWEN3_4B, "rope_theta"),
        "rope_parameters",
        r#"{"rope_type": "default", "rope_theta": 5000000.0}"#,
    );
    assert_eq!(ModelConfig::from_json(&text).unwrap().rope_theta, 5e6);
}

#[test]
fn explicit_head_dim_may_differ_from_hidden_over_heads() {
    let text = with(QWEN3_4B, "head_dim", "96");
    assert_eq!(ModelConfig::from_json(&text).unwrap().head_dim, 96);
}

#[test]
fn mqa_and_mha_are_accepted() {
    for kv in ["1", "32"] {
        let c = ModelConfig::from_json(&with(QWEN3_4B, "num_key_value_heads", kv)).unwrap();
        assert_eq!(c.num_key_value_heads, kv.parse::<usize>().unwrap());
    }
    let c = ModelConfig::from_json(&without(QWEN3_4B, "num_key_value_heads")).unwrap();
    assert_eq!(c.num_key_value_heads, 32);
}

#[test]
fn eos_list() {
    let c = ModelConfig::from_json(&with(QWEN3_4B, "eos_token_id", "[151645, 151643]")).unwrap();
    assert_eq!(c.eos_token_ids, vec![151645, 151643]);
}

fn refusal(text: &str) -> String {
    ModelConfig::from_json(text).unwrap_err().to_string()
}

#[test]
fn refuses_what_is_not_implemented() {
    let e = refusal(&with(
        QWEN3_4B,
        "rope_scaling",
        r#"{"rope_type": "yarn", "factor": 4.0}"#,
    ));
    assert!(e.contains("rope_scaling"), "{e}");
    let e = refusal(&with(
        QWEN3_4B,
        "rope_parameters",
        r#"{"rope_type": "linear", "factor": 2.0}"#,
    ));
    assert!(e.contains("rope_parameters"), "{e}");
    let e = refusal(&with(QWEN25_15B, "use_sliding_window", "true"));
    assert!(e.contains("use_sliding_window"), "{e}");
    let e = refusal(&with(QWEN3_4B, "model_type", r#""llama""#));
    assert!(e.contains("model_type") && e.contains("llama"), "{e}");
    let e = refusal(&with(QWEN3_4B, "hidden_act", r#""gelu""#));
    assert!(e.contains("hidden_act"), "{e}");
    let e = refusal(&with(
        QWEN3_4B,
        "layer_types",
        r#"["full_attention", "sliding_attention"]"#,
    ));
    assert!(e.contains("layer_types"), "{e}");
}

#[test]
fn default_rope_scaling_is_fine() {
    let text = with(QWEN3_4B, "rope_scaling", r#"{"rope_type": "default"}"#);
    assert!(ModelConfig::from_json(&text).is_ok());
}

#[test]
fn bad_values_name_the_key() {
    assert!(refusal(&without(QWEN3_4B, "hidden_size")).contains("hidden_size"));
    assert!(refusal(&with(QWEN3_4B, "num_key_value_heads", "5")).contains("num_key_value_heads"));
    assert!(refusal(&with(QWEN3_4B, "vocab_size", "0")).contains("vocab_size"));
    assert!(refusal(&with(QWEN3_4B, "eos_token_id", r#""x""#)).contains("eos_token_id"));
    assert!(refusal(&with(QWEN3_4B, "hidden_size", r#""big""#)).contains("malformed JSON"));
    assert!(refusal("{not json").contains("malformed JSON"));
}

#[test]
fn file_errors_name_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("config.json");
    let e = ModelConfig::from_file(&path).unwrap_err().to_string();
    assert!(e.contains("config.json"), "{e}");
    std::fs::write(&path, "{").unwrap();
    let e = ModelConfig::from_file(&path).unwrap_err().to_string();
    assert!(e.contains("config.json") && e.contains("malformed"), "{e}");
}
