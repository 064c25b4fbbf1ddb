//! Multiple-choice tasks: prompts against the harness's strings, readers on
//! the shared data and on Hugging Face Parquet, the log-likelihood of a
//! choice against a naive reference forward, acc / acc_norm on hand-made
//! log-likelihoods, and `evaluate piqa` end to end on a tiny model.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;

use arrow_array::{ArrayRef, Int64Array, RecordBatch, StringArray};
use evaluate::choice::*;
use model::safetensors::StoredDtype;
use model::tokenizer::Tokenizer;
use model::{load_model, select_device, DeviceChoice};
use serde_json::json;
use testkit::*;

fn shared(sub: &str) -> PathBuf {
    testkit::shared_data().join(sub)
}

fn reqs(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
    pairs.iter().map(|(a, b)| (a.to_string(), b.to_string())).collect()
}

#[test]
fn piqa_arc_boolq_prompts_are_the_harness_strings() {
    let piqa =
        ChoiceTask::Piqa.item(&json!({"goal": "Open a jar", "sol1": "Twist the lid.", "sol2": "Kick it.", "label": 0}), None).unwrap();
    assert_eq!(
        piqa.requests,
        reqs(&[("Question: Open a jar\nAnswer:", " Twist the lid."), ("Question: Open a jar\nAnswer:", " Kick it.")])
    );
    assert_eq!((piqa.gold, piqa.choices.clone()), (0, vec!["Twist the lid.".to_string(), "Kick it.".to_string()]));
    // The label may come from the separate labels file instead.
    let piqa2 = ChoiceTask::Piqa.item(&json!({"goal": "g", "sol1": "a", "sol2": "b"}), Some(1)).unwrap();
    assert_eq!(piqa2.gold, 1);
    assert!(ChoiceTask::Piqa.item(&json!({"goal": "g", "sol1": "a", "sol2": "b"}), None).is_err());

    let foundry =
        ChoiceTask::ArcEasy.item(&json!({"query": "Question: Which is a gas?", "choices": ["ice", "steam"], "gold": 1}), None).unwrap();
    let hf = ChoiceTask::ArcEasy
        .item(&json!({"id": "x", "question": "Which is a gas?", "choices": {"text": ["ice", "steam"], "label": ["A", "B"]}, "answerKey": "B"}), None)
        .unwrap();
    assert_eq!(foundry.requests, reqs(&[("Question: Which is a gas?\nAnswer:", " ice"), ("Question: Which is a gas?\nAnswer:", " steam")]));
    assert_eq!(foundry, hf);

    let boolq_foundry = ChoiceTask::Boolq
        .item(
            &json!({"query": "Passage: Water boils at 100 C.\nQuestion: does water boil at 100 c?", "choices": ["no", "yes"], "gold": 1}),
            None,
        )
        .unwrap();
    let boolq_hf = ChoiceTask::Boolq
        .item(&json!({"question": "does water boil at 100 c", "answer": true, "passage": "Water boils at 100 C."}), None)
        .unwrap();
    let ctx = "Water boils at 100 C.\nQuestion: does water boil at 100 c?\nAnswer:";
    assert_eq!(boolq_hf.requests, reqs(&[(ctx, " no"), (ctx, " yes")]));
    assert_eq!(boolq_foundry, boolq_hf);
    assert_eq!(boolq_hf.gold, 1);
}

#[test]
fn hellaswag_preprocessing_follows_the_harness() {
    // By hand from the harness's preprocess and process_docs.
    assert_eq!(hellaswag_preprocess("  How to cook [title] Boil water. [step] Add salt.  "), "How to cook. Boil water. Add salt.");
    assert_eq!(hellaswag_preprocess("a [b\nc] d"), "a [b\nc] d");
    // Python's replace("  ", " ") is one pass: three spaces become two.
    assert_eq!(hellaswag_preprocess("x [header]  y"), "x  y");
    assert_eq!(hellaswag_preprocess("x [header] y"), "x y");
    assert_eq!(py_capitalize("tHE Man"), "The man");
    let hf = json!({
        "ind": 4, "activity_label": "Making tea", "ctx_a": "A woman boils water.", "ctx_b": "she",
        "ctx": "A woman boils water. she",
        "endings": ["pours it [step] into a cup.", "eats the kettle.", "sings.", "sleeps."], "label": "0"
    });
    let item = ChoiceTask::Hellaswag.item(&hf, None).unwrap();
    let q = "Making tea: A woman boils water. She";
    assert_eq!(item.requests, reqs(&[(q, " pours it into a cup."), (q, " eats the kettle."), (q, " sings."), (q, " sleeps.")]));
    assert_eq!(item.gold, 0);
    // The shared copy already holds `activity_label: ctx`.
    let shared = json!({"ind": 4, "ctx": "Making tea: A woman boils water. She", "label": 0,
        "endings": ["pours it into a cup.", "eats the kettle.", "sings.", "sleeps."]});
    assert_eq!(ChoiceTask::Hellaswag.item(&shared, None).unwrap(), item);
}

#[test]
fn winogrande_partial_scoring_from_both_layouts() {
    let hf = json!({"sentence": "Sarah was a much better surgeon than Maria so _ always got the harder cases.",
        "option1": "Sarah", "option2": "Maria", "answer": "1"});
    let item = ChoiceTask::Winogrande.item(&hf, None).unwrap();
    let cont = " always got the harder cases.";
    assert_eq!(
        item.requests,
        reqs(&[
            ("Sarah was a much better surgeon than Maria so Sarah", cont),
            ("Sarah was a much better surgeon than Maria so Maria", cont)
        ])
    );
    assert_eq!(item.gold, 0);
    let foundry = json!({"context_options": ["Sarah was a much better surgeon than Maria so Sarah", "Sarah was a much better surgeon than Maria so Maria"],
        "continuation": "always got the harder cases.", "gold": 0});
    assert_eq!(ChoiceTask::Winogrande.item(&foundry, None).unwrap(), item);
}

#[test]
fn shared_data_sets_read_completely() {
    let cases = [
        (ChoiceTask::Piqa, "piqa", 1838, 2),
        (ChoiceTask::Hellaswag, "hellaswag", 10042, 4),
        (ChoiceTask::ArcEasy, "arc", 2376, 0),
        (ChoiceTask::ArcChallenge, "arc", 1172, 0),
        (ChoiceTask::Winogrande, "winogrande", 1267, 2),
        (ChoiceTask::Boolq, "boolq", 3270, 2),
    ];
    for (task, dir, n, choices) in cases {
        let (_, items) = load_choice_items(task, &shared(dir), None).unwrap();
        assert_eq!(items.len(), n, "{}", task.name());
        for it in &items {
            assert!(it.gold < it.requests.len() && it.requests.len() == it.choices.len());
            assert!(choices == 0 || it.requests.len() == choices, "{}", task.name());
        }
    }
    // PIQA's labels file: the first three labels are 0, 1, 1 (valid-labels.lst).
    let (_, piqa) = load_choice_items(ChoiceTask::Piqa, &shared("piqa"), Some(3)).unwrap();
    assert_eq!(piqa.iter().map(|i| i.gold).collect::<Vec<_>>(), vec![0, 1, 1]);
    assert_eq!(piqa[0].requests[0].0, "Question: How do I ready a guinea pig cage for it's new occupants?\nAnswer:");
    let (_, hs) = load_choice_items(ChoiceTask::Hellaswag, &shared("hellaswag"), Some(1)).unwrap();
    assert_eq!(
        hs[0].requests[3],
        ("Roof shingle removal: A man is sitting on a roof. he".into(), " starts pulling up roofing on a roof.".into())
    );
    let (_, bq) = load_choice_items(ChoiceTask::Boolq, &shared("boolq"), Some(1)).unwrap();
    assert!(bq[0].requests[0].0.starts_with("All biomass goes through") && bq[0].requests[0].0.ends_with("produces?\nAnswer:"));

    let err = load_choice_items(ChoiceTask::Piqa, Path::new("/nonexistent/piqa"), None).unwrap_err().to_string();
    assert!(err.contains("/nonexistent/piqa") && err.contains("valid.jsonl"), "{err}");
}

#[test]
fn hugging_face_parquet_reads_like_the_jsonl() {
    let dir = tempfile::tempdir().unwrap();
    let (_, jsonl) = load_choice_items(ChoiceTask::Piqa, &shared("piqa"), Some(5)).unwrap();
    let records = artifacts::records::read_records(&shared("piqa/valid.jsonl")).unwrap();
    let col =
        |f: &str| -> ArrayRef { Arc::new(StringArray::from_iter_values(records[..5].iter().map(|r| r[f].as_str().unwrap().to_string()))) };
    let labels: ArrayRef = Arc::new(Int64Array::from_iter_values(jsonl.iter().map(|i| i.gold as i64)));
    let batch =
        RecordBatch::try_from_iter([("goal", col("goal")), ("sol1", col("sol1")), ("sol2", col("sol2")), ("label", labels)]).unwrap();
    let sub = dir.path().join("data");
    std::fs::create_dir_all(&sub).unwrap();
    let path = sub.join("validation-00000-of-00001.parquet");
    let mut w = parquet::arrow::ArrowWriter::try_new(std::fs::File::create(&path).unwrap(), batch.schema(), None).unwrap();
    w.write(&batch).unwrap();
    w.close().unwrap();
    let (found, parquet) = load_choice_items(ChoiceTask::Piqa, dir.path(), None).unwrap();
    assert_eq!(found, path);
    assert_eq!(parquet, jsonl);
}

#[test]
fn acc_and_acc_norm_on_known_logliks() {
    // acc picks -10 over -12; acc_norm compares -10/2 = -5 with -12/6 = -2.
    let choices = vec!["ab".to_string(), "abcdef".to_string()];
    assert_eq!(predict(&[-10.0, -12.0], &choices), (0, 1));
    // Ties go to the first choice, as numpy's argmax.
    assert_eq!(predict(&[-3.0, -3.0], &["x".into(), "y".into()]), (0, 0));
    // Characters, not bytes: "é" is one character.
    assert_eq!(predict(&[-4.0, -6.0], &["éé".into(), "abc".into()]), (0, 0));
    // 3 of 4 right: sample variance 0.25, stderr sqrt(0.25 / 4) = 0.25.
    let (mean, se) = mean_stderr(&[1.0, 0.0, 1.0, 1.0]);
    assert_eq!(mean, 0.75);
    assert!((se.unwrap() - 0.25).abs() < 1e-12);
    assert_eq!(mean_stderr(&[1.0]).1, None);
}

fn reference_logprob(weights: &std::collections::BTreeMap<String, model::HostTensor>, tokens: &[u32], cont: usize) -> f64 {
    let logits = reference_forward(&TINY, weights, tokens);
    (tokens.len() - cont..tokens.len())
        .map(|p| {
            let row = &logits[p - 1];
            let max = row.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
            row[tokens[p] as usize] - max - row.iter().map(|v| (v - max).exp()).sum::<f64>().ln()
        })
        .sum()
}

#[test]
fn choice_loglik_matches_reference_forward_whatever_the_batch() {
    let dir = tempfile::tempdir().unwrap();
    let weights = tiny_weights(&TINY, 31);
    write_hf_dir(dir.path(), &TINY, &weights, StoredDtype::F32);
    let model = load_model(dir.path()).unwrap().build(&select_device(DeviceChoice::Cpu).unwrap().device).unwrap();
    let requests = vec![
        TokenRequest { tokens: vec![5, 17, 33, 2, 90, 41], continuation: 2 },
        TokenRequest { tokens: vec![7, 8, 9], continuation: 1 },
        TokenRequest { tokens: vec![60, 61, 62, 63, 64, 65, 66, 67, 1], continuation: 4 },
        // Choices of the first request's item: the same context (5, 17, 33, 2), passed once.
        TokenRequest { tokens: vec![5, 17, 33, 2, 8], continuation: 1 },
        TokenRequest { tokens: vec![5, 17, 33, 2, 70, 71, 72], continuation: 3 },
    ];
    let one = request_logliks(&model, &requests, 1, |_| {}).unwrap();
    let padded = request_logliks(&model, &requests, 3, |_| {}).unwrap();
    for (i, r) in requests.iter().enumerate() {
        let expected = reference_logprob(&weights, &r.tokens, r.continuation);
        assert!((one[i] - expected).abs() < 1e-3, "request {i}: {} vs {expected}", one[i]);
        assert!((padded[i] - expected).abs() < 1e-3, "request {i} padded: {} vs {expected}", padded[i]);
    }
}

/// A word-level tokenizer over `[UNK]`, `Question`, `Answer`, `:` and w0..w91 (ids 4..95): every id of the tiny model decodes.
fn word_tokenizer(dir: &Path) {
    let mut vocab = serde_json::Map::new();
    for (i, w) in ["[UNK]", "Question", "Answer", ":"].iter().enumerate() {
        vocab.insert(w.to_string(), json!(i));
    }
    for k in 0..92 {
        vocab.insert(format!("w{k}"), json!(4 + k));
    }
    let tok = json!({
        "version": "1.0", "truncation": null, "padding": null, "added_tokens": [], "normalizer": null,
        "pre_tokenizer": {"type": "Whitespace"}, "post_processor": null, "decoder": null,
        "model": {"type": "WordLevel", "vocab": vocab, "unk_token": "[UNK]"}
    });
    std::fs::write(dir.join("tokenizer.json"), tok.to_string()).unwrap();
}

#[test]
fn encode_pair_moves_trailing_space_and_takes_the_rest_of_the_joint_encoding() {
    let dir = tempfile::tempdir().unwrap();
    word_tokenizer(dir.path());
    let tok = Tokenizer::from_file(&dir.path().join("tokenizer.json")).unwrap();
    let (c, k) = encode_pair(&tok, "Question: w1 w2\nAnswer:", " w3 w4", None).unwrap();
    assert_eq!((c, k), (vec![1, 3, 5, 6, 2, 3], vec![7, 8]));
    // A trailing space of the context moves to the continuation.
    assert_eq!(encode_pair(&tok, "w1 ", "w3", None).unwrap(), (vec![5], vec![7]));
    // An empty context becomes the prefix token.
    assert_eq!(encode_pair(&tok, "", "w3", Some(0)).unwrap(), (vec![0], vec![7]));
    // Left truncation keeps the continuation and the last max_len + 1 tokens.
    let t = tokenize_requests(&tok, &reqs(&[("w1 w2 w3 w4", " w5 w6")]), 3).unwrap();
    assert_eq!(t, vec![TokenRequest { tokens: vec![7, 8, 9, 10], continuation: 2 }]);
}

#[test]
fn evaluate_piqa_end_to_end_on_a_tiny_model() {
    let dir = tempfile::tempdir().unwrap();
    let model_dir = dir.path().join("tiny");
    let weights = tiny_weights(&TINY, 41);
    write_hf_dir(&model_dir, &TINY, &weights, StoredDtype::F32);
    word_tokenizer(&model_dir);
    let data = dir.path().join("piqa.jsonl");
    let items = [("w1 w2", "w3 w4 w5", "w6", 0), ("w7", "w8", "w9 w10 w11 w12", 1), ("w13 w14 w15", "w16 w17", "w18 w19", 1)];
    let lines: Vec<String> = items.iter().map(|(g, a, b, l)| json!({"goal": g, "sol1": a, "sol2": b, "label": l}).to_string()).collect();
    std::fs::write(&data, lines.join("\n")).unwrap();
    let out = dir.path().join("r.parquet");
    let run = Command::new(env!("CARGO_BIN_EXE_evaluate"))
        .args(["piqa", "--device", "cpu", "--quiet", "--batch", "3", "--model"])
        .arg(&model_dir)
        .arg("--data")
        .arg(&data)
        .arg("--out")
        .arg(&out)
        .output()
        .unwrap();
    assert!(run.status.success(), "{}", String::from_utf8_lossy(&run.stderr));

    // Expected from the reference forward over hand-tokenized prompts: Question : goal Answer : sol.
    let ids = |s: &str| -> Vec<u32> { s.split_whitespace().map(|w| 4 + w[1..].parse::<u32>().unwrap()).collect() };
    let (mut acc, mut acc_norm) = (0.0, 0.0);
    let (_, rows) = artifacts::read_items(&artifacts::items_path_for(&out)).unwrap();
    for (row, (goal, a, b, label)) in rows.iter().zip(items) {
        let lls: Vec<f64> = [a, b]
            .iter()
            .map(|sol| {
                let mut t = vec![1, 3];
                t.extend(ids(goal));
                t.extend([2, 3]);
                t.extend(ids(sol));
                reference_logprob(&weights, &t, ids(sol).len())
            })
            .collect();
        let got = row.choice_logliks.clone().unwrap();
        assert!(lls.iter().zip(&got).all(|(e, g)| (e - g).abs() < 1e-3), "{lls:?} vs {got:?}");
        let (p, pn) = predict(&lls, &[a.to_string(), b.to_string()]);
        assert_eq!(row.pred.as_deref(), Some(p.to_string().as_str()));
        acc += f64::from(u8::from(p == label)) / 3.0;
        acc_norm += f64::from(u8::from(pn == label)) / 3.0;
    }
    let stdout = String::from_utf8(run.stdout).unwrap();
    let last: Vec<&str> = stdout.lines().rev().take(2).collect();
    assert_eq!(last, vec![format!("acc_norm: {acc_norm:.4}"), format!("acc: {acc:.4}")]);
    let (_, results) = artifacts::read_results(&out).unwrap();
    assert_eq!(results.iter().map(|r| (r.metric.as_str(), r.n)).collect::<Vec<_>>(), vec![("acc", 3), ("acc_norm", 3)]);

    let run = Command::new(env!("CARGO_BIN_EXE_evaluate")).args(["piqa", "--device", "cpu", "--model"]).arg(&model_dir).output().unwrap();
    assert!(!run.status.success());
    assert!(String::from_utf8_lossy(&run.stderr).contains("needs --data"));
}

#[test]
fn evaluate_translation_and_gsm8k_end_to_end_on_a_tiny_model() {
    let dir = tempfile::tempdir().unwrap();
    let model_dir = dir.path().join("tiny");
    write_hf_dir(&model_dir, &TINY, &tiny_weights(&TINY, 43), StoredDtype::F32);
    word_tokenizer(&model_dir);
    let data = dir.path().join("pairs.jsonl");
    let lines: Vec<String> = [("w1 w2", "w3 w4"), ("w5", "w6 w7"), ("w8 w9", "w10"), ("w11", "w12 w13 w14")]
        .iter()
        .map(|(s, t)| json!({"src": s, "tgt": t}).to_string())
        .collect();
    std::fs::write(&data, lines.join("\n")).unwrap();
    let out = dir.path().join("t.parquet");
    let run = Command::new(env!("CARGO_BIN_EXE_evaluate"))
        .args(["translation", "--device", "cpu", "--quiet", "--shots", "1", "--max-new-tokens", "6"])
        .args(["--source-field", "src", "--target-field", "tgt", "--model"])
        .arg(&model_dir)
        .arg("--data")
        .arg(&data)
        .arg("--out")
        .arg(&out)
        .output()
        .unwrap();
    assert!(run.status.success(), "{}", String::from_utf8_lossy(&run.stderr));
    // The first pair is the shot; the other three are scored, each by METEOR of its output.
    let (_, rows) = artifacts::read_items(&artifacts::items_path_for(&out)).unwrap();
    assert_eq!(rows.iter().map(|r| r.item).collect::<Vec<_>>(), vec![1, 2, 3]);
    let scores: Vec<f64> =
        rows.iter().map(|r| evaluate::meteor::meteor(&[r.gold.as_deref().unwrap()], r.pred.as_deref().unwrap(), None)).collect();
    let mean = scores.iter().sum::<f64>() / 3.0;
    let stdout = String::from_utf8(run.stdout).unwrap();
    assert_eq!(stdout.lines().last().unwrap(), format!("meteor: {mean:.4}"));

    let run = Command::new(env!("CARGO_BIN_EXE_evaluate")).args(["gsm8k", "--device", "cpu", "--model"]).arg(&model_dir).output().unwrap();
    assert!(!run.status.success());
    let stderr = String::from_utf8_lossy(&run.stderr);
    assert!(stderr.contains("needs --data") && stderr.contains("test.jsonl"), "{stderr}");
}
