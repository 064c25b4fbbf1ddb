//! `sample` on a tiny model with a word-level tokenizer: every word `wN` is token N.

use std::path::{Path, PathBuf};

use artifacts::{read_provenance, read_samples, write_documents, ArtifactKind, Document, Provenance, Split};
use datasets::sample::{draw, SampleMode, SampleOptions};
use datasets::{sample, DatasetsError};
use model::safetensors::StoredDtype;
use serde_json::json;
use testkit::{tiny_weights, write_hf_dir, TINY};

/// Writes a tiny HF model dir whose tokenizer maps word `wN` to id N (N < 90).
fn tiny_model(dir: &Path) -> PathBuf {
    let model = dir.join("model");
    write_hf_dir(&model, &TINY, &tiny_weights(&TINY, 1), StoredDtype::F32);
    let mut vocab = serde_json::Map::new();
    for i in 0..90u32 {
        vocab.insert(format!("w{i}"), json!(i));
    }
    vocab.insert("[UNK]".into(), json!(90));
    let tok = json!({
        "version": "1.0", "truncation": null, "padding": null, "added_tokens": [], "normalizer": null,
        "pre_tokenizer": {"type": "Whitespace"}, "post_processor": null, "decoder": null,
        "model": {"type": "WordLevel", "vocab": vocab, "unk_token": "[UNK]"}
    });
    std::fs::write(model.join("tokenizer.json"), tok.to_string()).unwrap();
    model
}

fn words(ids: impl IntoIterator<Item = u32>) -> String {
    ids.into_iter().map(|i| format!("w{i}")).collect::<Vec<_>>().join(" ")
}

/// Calib documents use ids 0..60, held-out ones 60..90, so a sample's origin is visible.
fn docs() -> Vec<Document> {
    let mut out = Vec::new();
    let doc = |text: String, split| Document { domain: "toy".into(), source: "mem".into(), id: String::new(), text, split };
    for k in 0..12u32 {
        let len = 5 + 7 * k as usize;
        out.push(doc(words((0..len as u32).map(|j| (j * 7 + k) % 60)), Split::Calib));
        if k % 3 == 0 {
            out.push(doc(words((0..40u32).map(|j| 60 + (j + k) % 30)), Split::Heldout));
        }
    }
    for (i, d) in out.iter_mut().enumerate() {
        d.id = format!("doc {i}");
    }
    out
}

fn encode(t: &str) -> Result<Vec<u32>, DatasetsError> {
    Ok(t.split_whitespace().map(|w| w[1..].parse().unwrap()).collect())
}

fn options(mode: SampleMode, split: Split, seed: u64) -> SampleOptions {
    SampleOptions { nsamples: 16, seqlen: 32, seed, split, mode, max_windows: None, concat: false, progress: false }
}

fn is_slice_of(window: &[u32], doc: &[u32]) -> bool {
    doc.windows(window.len()).any(|w| w == window)
}

fn calib_tokens() -> Vec<Vec<u32>> {
    docs().iter().filter(|d| d.split == Split::Calib).map(|d| encode(&d.text).unwrap()).collect()
}

#[test]
fn wanda_sampling_gives_seqlen_windows_of_long_calib_documents() {
    let all = docs();
    let calib: Vec<&Document> = all.iter().filter(|d| d.split == Split::Calib).collect();
    let toks = calib_tokens();
    let a = draw(&calib, &encode, &options(SampleMode::Wanda, Split::Calib, 0), Path::new("d")).unwrap();
    assert_eq!(a.len(), 16);
    for d in &a {
        assert_eq!(d.tokens.len(), 32);
        assert!(toks[d.doc].len() > 32);
        assert!(d.start + 32 < toks[d.doc].len(), "start in [0, len - seqlen - 1]");
        assert_eq!(&toks[d.doc][d.start..d.start + 32], d.tokens.as_slice());
        assert!(d.tokens.iter().all(|&t| t < 60), "no held-out tokens");
    }
    let again = draw(&calib, &encode, &options(SampleMode::Wanda, Split::Calib, 0), Path::new("d")).unwrap();
    assert_eq!(a, again);
    let other = draw(&calib, &encode, &options(SampleMode::Wanda, Split::Calib, 1), Path::new("d")).unwrap();
    assert_ne!(a, other);
}

#[test]
fn wanda_without_long_document_says_so() {
    let all = docs();
    let calib: Vec<&Document> = all.iter().filter(|d| d.split == Split::Calib).collect();
    let mut o = options(SampleMode::Wanda, Split::Calib, 0);
    o.seqlen = 82;
    let err = draw(&calib, &encode, &o, Path::new("docs.parquet")).unwrap_err().to_string();
    assert!(err.contains("no `calib` document is longer than seqlen = 82 tokens (12 documents, the longest has 82 tokens)"), "{err}");
    o.concat = true;
    let drawn = draw(&calib, &encode, &o, Path::new("docs.parquet")).unwrap();
    assert!(drawn.iter().all(|d| d.tokens.len() == 82));
}

#[test]
fn whole_docs_are_distinct_prefixes() {
    let all = docs();
    let calib: Vec<&Document> = all.iter().filter(|d| d.split == Split::Calib).collect();
    let toks = calib_tokens();
    let mut o = options(SampleMode::WholeDocs, Split::Calib, 3);
    o.nsamples = 10;
    let drawn = draw(&calib, &encode, &o, Path::new("d")).unwrap();
    let mut seen: Vec<usize> = drawn.iter().map(|d| d.doc).collect();
    seen.sort();
    seen.dedup();
    assert_eq!(seen.len(), 10);
    for d in &drawn {
        let full = &toks[d.doc];
        assert_eq!(d.tokens.len(), full.len().min(32));
        assert_eq!(d.tokens.as_slice(), &full[..d.tokens.len()]);
    }
    o.nsamples = 13;
    assert!(draw(&calib, &encode, &o, Path::new("d")).unwrap_err().to_string().contains("has only 12"));
}

#[test]
fn windows_are_in_order_and_tile_the_joined_stream() {
    let all = docs();
    let held: Vec<&Document> = all.iter().filter(|d| d.split == Split::Heldout).collect();
    let stream: Vec<u32> = held.iter().flat_map(|d| encode(&d.text).unwrap()).collect();
    let mut o = options(SampleMode::Windows, Split::Heldout, 0);
    o.seqlen = 30;
    let w = draw(&held, &encode, &o, Path::new("d")).unwrap();
    assert_eq!(w.len(), stream.len() / 30);
    let joined: Vec<u32> = w.iter().flat_map(|d| d.tokens.clone()).collect();
    assert_eq!(joined.as_slice(), &stream[..joined.len()]);
    assert!(w.iter().enumerate().all(|(i, d)| d.start == i * 30));
    o.max_windows = Some(2);
    assert_eq!(draw(&held, &encode, &o, Path::new("d")).unwrap(), w[..2].to_vec());
}

#[test]
fn sample_writes_an_artifact_with_provenance() {
    let dir = tempfile::tempdir().unwrap();
    let model = tiny_model(dir.path());
    let docs_path = dir.path().join("documents.parquet");
    write_documents(&docs_path, &docs(), &Provenance::new(ArtifactKind::Documents, "", json!({}), "test")).unwrap();
    let out = dir.path().join("samples.parquet");
    let o = options(SampleMode::Wanda, Split::Calib, 0);
    let summary = sample(&docs_path, &model, &o, &out, json!({"nsamples": 16})).unwrap();
    assert_eq!(summary.samples, 16);
    let (p, info, samples) = read_samples(&out).unwrap();
    let loaded = model::load_model(&model).unwrap();
    assert_eq!(p.model, loaded.fingerprint);
    assert_eq!(p.inputs["documents"], artifacts::content_hash(&docs_path).unwrap());
    assert_eq!(info.tokenizer_hash, loaded.tokenizer().unwrap().fingerprint());
    assert_eq!((info.seqlen, info.seed), (32, Some(0)));
    let toks = calib_tokens();
    for (i, s) in samples.iter().enumerate() {
        assert_eq!(s.sample_id, i as u64);
        assert_eq!(s.domain, "toy");
        assert_eq!(s.tokens.len(), 32);
        assert!(toks.iter().any(|t| is_slice_of(&s.tokens, t)), "sample {i} is no slice of a calib document");
    }
    let expected = draw(&docs().iter().filter(|d| d.split == Split::Calib).collect::<Vec<_>>(), &encode, &o, Path::new("d")).unwrap();
    assert_eq!(samples.iter().map(|s| s.tokens.clone()).collect::<Vec<_>>(), expected.into_iter().map(|d| d.tokens).collect::<Vec<_>>());

    let held_out = dir.path().join("heldout.parquet");
    let mut w = options(SampleMode::Windows, Split::Heldout, 0);
    w.seqlen = 16;
    sample(&docs_path, &model, &w, &held_out, json!({})).unwrap();
    let (_, info, samples) = read_samples(&held_out).unwrap();
    assert_eq!(info.seed, None);
    assert!(samples.iter().all(|s| s.tokens.iter().all(|&t| t >= 60)));
    assert_eq!(read_provenance(&held_out).unwrap().kind, ArtifactKind::Samples);

    let err = sample(&out, &model, &o, &dir.path().join("x.parquet"), json!({})).unwrap_err().to_string();
    assert!(err.contains("expected a `documents` artifact, found a `samples` artifact"), "{err}");

    // Documents with nothing held out: the error names the file, the split and the way out.
    let calib_only = dir.path().join("calib-only.parquet");
    let only: Vec<Document> = docs().into_iter().filter(|d| d.split == Split::Calib).collect();
    write_documents(&calib_only, &only, &Provenance::new(ArtifactKind::Documents, "", json!({}), "test")).unwrap();
    let missing = dir.path().join("none.parquet");
    let err = sample(&calib_only, &model, &w, &missing, json!({})).unwrap_err().to_string();
    let expected = format!("{}: the `heldout` split has no documents (the file has {} documents in all)", calib_only.display(), only.len());
    assert!(err.contains(&expected) && err.contains("--heldout-fraction"), "{err}");
    assert!(!missing.exists());
}
