//! config.json inputs found by `cargo xtask fuzz config`, whose
//! configuration, written back as config.json, read as another model.

use std::path::{Path, PathBuf};

use model::ModelConfig;

fn input(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../fuzz/regressions/config").join(name)
}

fn read(path: &Path) -> ModelConfig {
    let json: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    ModelConfig::from_hf_json(&json, path).unwrap()
}

/// The config.json a configuration writes reads back as the same configuration.
fn assert_round_trip(path: &Path) -> serde_json::Value {
    let config = read(path);
    let written = config.to_hf_json();
    let again = ModelConfig::from_hf_json(&written, path).unwrap();
    assert!(again == config, "written back as another configuration:\n{config:?}\n{again:?}");
    written
}

#[test]
fn huge_integral_query_pre_attn_scalar_is_written_as_a_float() {
    // 2e300 was written as `scalar as u64`, which saturates at 2^64 - 1.
    let written = assert_round_trip(&input("query-pre-attn-scalar-2e300.json"));
    assert_eq!(written["query_pre_attn_scalar"], serde_json::json!(2e300));
}

#[test]
fn gemma2_rope_scaling_is_written_back() {
    // Gemma 2 applied a linear rope factor read from config.json but wrote
    // rope_scaling only for Gemma 3, so the written model lost it.
    let written = assert_round_trip(&input("gemma2-rope-scaling-dropped.json"));
    assert_eq!(written["rope_scaling"], serde_json::json!({"rope_type": "linear", "factor": 8.0}));
}

#[test]
fn non_finite_query_pre_attn_scalar_is_refused() {
    let mut json: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(input("gemma2-rope-scaling-dropped.json")).unwrap()).unwrap();
    json["query_pre_attn_scalar"] = serde_json::json!(-4.0);
    let err = ModelConfig::from_hf_json(&json, Path::new("config.json")).unwrap_err().to_string();
    assert!(err.contains("query_pre_attn_scalar must be a positive finite number; found -4"), "{err}");
}

#[test]
fn gemma1_ignores_query_pre_attn_scalar_as_transformers_does() {
    // Gemma 1 read query_pre_attn_scalar from config.json but never wrote
    // it (transformers' Gemma 1 has no such field and scales scores by
    // head_dim^-0.5), so the written model scaled its scores differently.
    let written = assert_round_trip(&input("gemma1-query-pre-attn-scalar.json"));
    assert!(written.get("query_pre_attn_scalar").is_none(), "{written}");
    let config = read(&input("gemma1-query-pre-attn-scalar.json"));
    assert_eq!(config.spec().attention_scale, 0.0625, "256^-0.5");
}
