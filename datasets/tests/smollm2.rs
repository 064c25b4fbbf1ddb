//! `sample` with the real SmolLM2 tokenizer (GGUF from `SUBPRUNE_SMOLLM2_GGUF`,
//! set by `cargo xtask test`) on MBPP documents from the shared data.

use artifacts::{read_documents, read_samples, Split};
use datasets::sample::{SampleMode, SampleOptions};
use datasets::{collect, sample, write_collection, CollectOptions, TextSpec};
use serde_json::json;

#[test]
fn smollm2_samples_of_mbpp_are_slices_of_calib_documents() {
    let gguf = testkit::smollm2_gguf();
    let data = testkit::shared_data().join("mbpp/mbpp.jsonl");
    let dir = tempfile::tempdir().unwrap();
    let docs_path = dir.path().join("documents.parquet");
    let opts = CollectOptions {
        domain: "python".into(),
        from: vec![data],
        text: Some(TextSpec::template("{text}\\n{code}").unwrap()),
        split_filter: None,
        heldout_fraction: 0.1,
        max_docs: None,
        skip_records: 0,
        extensions: vec![],
        include_vendored: false,
        shard: None,
        progress: false,
    };
    write_collection(&docs_path, &collect(&opts).unwrap(), json!({})).unwrap();
    let (_, docs) = read_documents(&docs_path).unwrap();

    let loaded = model::load_model(&gguf).unwrap();
    let tok = loaded.tokenizer().unwrap();
    let calib: Vec<Vec<u32>> = docs.iter().filter(|d| d.split == Split::Calib).map(|d| tok.encode(&d.text, false).unwrap()).collect();
    let held: Vec<Vec<u32>> = docs.iter().filter(|d| d.split == Split::Heldout).map(|d| tok.encode(&d.text, false).unwrap()).collect();

    let out = dir.path().join("samples.parquet");
    let o = SampleOptions {
        nsamples: 8,
        seqlen: 128,
        seed: 0,
        split: Split::Calib,
        mode: SampleMode::Wanda,
        max_windows: None,
        concat: false,
        progress: false,
    };
    sample(&docs_path, &gguf, &o, &out, json!({})).unwrap();
    let (p, info, samples) = read_samples(&out).unwrap();
    assert_eq!(p.model, loaded.fingerprint);
    assert_eq!(info.tokenizer_hash, tok.fingerprint());
    assert_eq!(samples.len(), 8);
    for s in &samples {
        assert_eq!(s.tokens.len(), 128);
        assert!(calib.iter().any(|t| t.windows(128).any(|w| w == s.tokens.as_slice())), "not a slice of a calib document");
        assert!(!held.iter().any(|t| t.windows(128).any(|w| w == s.tokens.as_slice())), "a slice of a held-out document");
    }

    let windows = dir.path().join("windows.parquet");
    let w = SampleOptions { mode: SampleMode::Windows, split: Split::Heldout, max_windows: Some(4), ..o };
    sample(&docs_path, &gguf, &w, &windows, json!({})).unwrap();
    let (_, _, ws) = read_samples(&windows).unwrap();
    let sep = tok.encode("\n\n", false).unwrap();
    let mut stream: Vec<u32> = Vec::new();
    for (i, t) in held.iter().enumerate() {
        if i > 0 {
            stream.extend(&sep);
        }
        stream.extend(t);
    }
    let joined: Vec<u32> = ws.iter().flat_map(|s| s.tokens.clone()).collect();
    assert_eq!(ws.len(), 4);
    assert_eq!(joined.as_slice(), &stream[..4 * 128]);
}
