//! The report of a tiny synthetic run: tables, figures and claim verdicts from constructed numbers.

mod common;

use std::path::Path;

use analyze::{compute_jaccard, write_report, write_table, NamedMask, Verdict};
use common::{decode_png, naive_distance, write_metric, write_ppl, write_test_mask, Lcg};
use indicatif::ProgressBar;
use serde_json::json;

type Matrices = Vec<Vec<Vec<bool>>>;

const MODULES: [&str; 4] =
    ["model.layers.0.self_attn.q_proj", "model.layers.0.mlp.down_proj", "model.layers.1.self_attn.q_proj", "model.layers.1.mlp.down_proj"];

fn random(seed: u64) -> Matrices {
    let mut rng = Lcg(seed);
    MODULES.iter().map(|_| rng.matrix(6, 16)).collect()
}

/// `m` with every ninth weight flipped.
fn perturbed(m: &Matrices) -> Matrices {
    m.iter()
        .map(|x| {
            x.iter()
                .enumerate()
                .map(|(r, row)| row.iter().enumerate().map(|(c, k)| if (r * 16 + c) % 9 == 0 { !k } else { *k }).collect())
                .collect()
        })
        .collect()
}

/// Writes a run with masks py-a, py-b (python) and java-a (java), perplexities,
/// the Jaccard artifact and run.json.
fn make_run(dir: &Path, py_a: &Matrices, py_b: &Matrices, java_a: &Matrices) {
    let spec = |m: &Matrices| MODULES.iter().zip(m).map(|(n, x)| (*n, x.clone())).collect::<Vec<_>>();
    let mut named = Vec::new();
    for (name, m) in [("py-a", py_a), ("py-b", py_b), ("java-a", java_a)] {
        let path = write_test_mask(&dir.join(format!("masks/{name}.parquet")), &spec(m));
        named.push(NamedMask { name: name.to_string(), path });
    }
    let table = compute_jaccard(&named, &ProgressBar::hidden()).unwrap();
    write_table(&dir.join("jaccard.parquet"), &table, "test").unwrap();

    let results = [
        (None, "python", 10.0, Some((9.5, 10.5))),
        (None, "java", 12.0, Some((11.0, 13.0))),
        (Some("py-a"), "python", 12.0, Some((11.5, 12.5))),
        (Some("py-a"), "java", 13.5, Some((12.5, 14.5))),
        (Some("py-b"), "python", 12.5, Some((12.0, 13.0))),
        (Some("java-a"), "python", 15.0, None),
        (Some("java-a"), "java", 14.0, Some((13.0, 15.0))),
    ];
    let mut entries = Vec::new();
    for (mask, domain, value, ci) in results {
        let file = format!("results/ppl-{}-on-{domain}.parquet", mask.unwrap_or("dense"));
        write_ppl(&dir.join(&file), mask, domain, value, ci);
        entries.push(json!({"mask": mask, "domain": domain, "path": file}));
    }
    let mask = |name: &str, domain: &str, source: &str| json!({"name": name, "domain": domain, "source": source, "method": "wanda", "pattern": "unstructured-0.5", "path": format!("masks/{name}.parquet")});
    let manifest = json!({
        "title": "Synthetic run",
        "model": {"name": "tiny", "path": "models/tiny", "fingerprint": common::MODEL},
        "masks": [mask("py-a", "python", "stdlib"), mask("py-b", "python", "github"), mask("java-a", "java", "jdk")],
        "results": entries,
        "jaccard": "jaccard.parquet",
        "same_domain_pairs": [["py-a", "py-b"]],
        "figures_dir": "figures"
    });
    std::fs::write(dir.join("run.json"), serde_json::to_string_pretty(&manifest).unwrap()).unwrap();
}

#[test]
fn report_has_the_tables_figures_and_claim_verdicts_of_the_constructed_run() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let py_a = random(1);
    let py_b = perturbed(&py_a);
    let java_a = random(2);
    make_run(dir, &py_a, &py_b, &java_a);
    let out = dir.join("report.md");
    let report = write_report(dir, &out).unwrap();
    let md = std::fs::read_to_string(&out).unwrap();
    assert_eq!(md, report.markdown);

    assert!(md.contains("# Synthetic run"), "{md}");
    assert!(md.contains("| Domains | python, java |"), "{md}");
    assert!(md.contains("| Methods | wanda |"), "{md}");
    for row in [
        "| calibration | python | java |",
        "| dense | 10.00 [9.50, 10.50] | 12.00 [11.00, 13.00] |",
        "| py-a (python) | 12.00 [11.50, 12.50] | 13.50 [12.50, 14.50] |",
        "| py-b (python) | 12.50 [12.00, 13.00] | n/a |",
        "| java-a (java) | 15.00 (no CI) | 14.00 [13.00, 15.00] |",
    ] {
        assert!(md.contains(row), "missing `{row}` in\n{md}");
    }

    let (ab, aj, bj) = (naive_distance(&py_a, &py_b), naive_distance(&py_a, &java_a), naive_distance(&py_b, &java_a));
    assert!(ab < 0.35 && aj > 0.5 && bj > 0.5, "the constructed masks: {ab} {aj} {bj}");
    let whole_row = format!("| py-a | 0 | {ab:.3} | {aj:.3} |");
    assert!(md.contains(&whole_row), "missing `{whole_row}` in\n{md}");
    assert!(md.contains("| layer | py-a vs py-b |"), "{md}");

    // Claim (a): python is won by its own calibration, java by python's py-a (13.5 < 14.0).
    let own = &report.own_domain_wins;
    assert_eq!(own.len(), 2);
    assert_eq!((own[0].subject.as_str(), own[0].verdict), ("python (unstructured-0.5)", Verdict::Held));
    assert_eq!((own[1].subject.as_str(), own[1].verdict), ("java (unstructured-0.5)", Verdict::NotHeld));
    assert!(md.contains("**python (unstructured-0.5)**: held. `py-a` (own calibration) wins with 12.00 [11.50, 12.50], against 15.00 (no CI) for the best other-domain mask `java-a` (java): lower by 3.00 (20.0%); no paired interval (per-window NLLs not recorded)."), "{md}");
    assert!(md.contains("**java (unstructured-0.5)**: did not hold. `py-a` (calibrated on python) wins with 13.50 [12.50, 14.50], against 14.00 [13.00, 15.00] for the best own-domain mask `java-a`: lower by 0.50 (3.6%); no paired interval (per-window NLLs not recorded)"), "{md}");
    assert!(md.contains("Claim (a) held on 1 of 2 tested domains."), "{md}");

    // Claim (b): py-a and py-b are closer than either is to java-a.
    let (nearest, c) = if aj <= bj { ("py-a", aj) } else { ("py-b", bj) };
    let b = &report.same_domain_closer;
    assert_eq!(b.len(), 1);
    assert_eq!(b[0].verdict, Verdict::Held);
    let text = format!("same-domain (python) distance {ab:.3} against the smallest cross-domain distance {c:.3} (`{nearest}` vs `java-a`): closer, by {:.3}", c - ab);
    assert!(md.contains(&text), "missing `{text}` in\n{md}");
    assert!(md.contains("Claim (b) held for 1 of 1 tested pairs."), "{md}");

    for name in ["perplexity-heatmap", "jaccard-matrix", "jaccard-curves", "mask-diff-same-domain", "mask-diff-cross-domain"] {
        let path = dir.join(format!("figures/{name}.png"));
        let (w, h, _) = decode_png(&path);
        assert!(w > 100 && h > 100, "{name}: {w} x {h}");
        assert!(md.contains(&format!("](figures/{name}.png)")), "no link to {name} in\n{md}");
    }
    assert_eq!(report.figures.len(), 5);
    assert!(report.summary.contains("claim (a) own-domain calibration wins: held on 1 of 2"), "{}", report.summary);
    assert!(report.summary.contains("py-a") && report.summary.contains("13.50"), "{}", report.summary);
}

#[test]
fn report_tables_task_scores_by_calibration_source_with_the_change_against_dense() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let py_a = random(1);
    make_run(dir, &py_a, &perturbed(&py_a), &random(2));
    // Task results: pass@1 of humaneval-x-python (dense, py-a, java-a) and
    // accuracy of piqa (dense and py-a); run.json lists them.
    let scores = [
        (None, "humaneval-x-python", "pass@1", 0.30, Some((0.23, 0.37))),
        (Some("py-a"), "humaneval-x-python", "pass@1", 0.25, Some((0.18, 0.32))),
        (Some("java-a"), "humaneval-x-python", "pass@1", 0.125, None),
        (None, "piqa", "acc", 0.70, Some((0.68, 0.72))),
        (Some("py-a"), "piqa", "acc", 0.66, Some((0.64, 0.68))),
    ];
    let mut entries = Vec::new();
    for (mask, task, metric, value, ci) in scores {
        let file = format!("results/{}--task-{task}.parquet", mask.unwrap_or("dense"));
        write_metric(&dir.join(&file), mask, task, metric, value, ci);
        entries.push(json!({"mask": mask, "task": task, "metric": metric, "path": file}));
    }
    set_task_results(dir, entries);

    let out = dir.join("report.md");
    let report = write_report(dir, &out).unwrap();
    let md = &report.markdown;
    for row in [
        "| calibration | humaneval-x-python (pass@1) | piqa (acc) |",
        "| dense | 0.300 [0.230, 0.370] | 0.700 [0.680, 0.720] |",
        "| py-a (python) | 0.250 [0.180, 0.320] (-0.050) | 0.660 [0.640, 0.680] (-0.040) |",
        "| java-a (java) | 0.125 (no CI) (-0.175) | n/a |",
    ] {
        assert!(md.contains(row), "missing `{row}` in\n{md}");
    }
    // py-b has no task result: no row.
    assert!(!md.contains("| py-b (python) | 0."), "{md}");
    let (w, h, _) = decode_png(&dir.join("figures/task-change-heatmap.png"));
    assert!(w > 100 && h > 50, "{w} x {h}");
    assert!(md.contains("](figures/task-change-heatmap.png)"), "{md}");
}

#[test]
fn report_in_another_directory_links_figures_relatively_and_states_a_failed_claim() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("run");
    let py_a = random(5);
    let py_b = random(6);
    let java_a = perturbed(&py_a);
    make_run(&dir, &py_a, &py_b, &java_a);
    let out = tmp.path().join("docs/report.md");
    let report = write_report(&dir, &out).unwrap();
    assert_eq!(report.same_domain_closer[0].verdict, Verdict::NotHeld);
    let ab = naive_distance(&py_a, &py_b);
    let aj = naive_distance(&py_a, &java_a);
    let text = format!("same-domain (python) distance {ab:.3} against the smallest cross-domain distance {aj:.3} (`py-a` vs `java-a`): not closer, by {:.3}", ab - aj);
    assert!(report.markdown.contains(&text), "missing `{text}` in\n{}", report.markdown);
    assert!(report.markdown.contains("Claim (b) held for 0 of 1 tested pairs."));
    assert!(report.markdown.contains("](../run/figures/jaccard-curves.png)"), "{}", report.markdown);
}

#[test]
fn report_refuses_missing_files_naming_them() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let err = write_report(dir, &dir.join("report.md")).unwrap_err();
    assert!(err.to_string().contains("run.json"), "{err}");

    make_run(dir, &random(1), &random(2), &random(3));
    std::fs::remove_file(dir.join("results/ppl-py-b-on-python.parquet")).unwrap();
    let err = write_report(dir, &dir.join("report.md")).unwrap_err();
    assert!(err.to_string().contains("ppl-py-b-on-python.parquet") && err.to_string().contains("does not exist"), "{err}");
    std::fs::remove_file(dir.join("masks/java-a.parquet")).unwrap();
    let err = write_report(dir, &dir.join("report.md")).unwrap_err();
    assert!(err.to_string().contains("java-a.parquet"), "{err}");

    std::fs::write(dir.join("run.json"), r#"{"title": "x"}"#).unwrap();
    let err = write_report(dir, &dir.join("report.md")).unwrap_err();
    assert!(err.to_string().contains("run.json") && err.to_string().contains("model"), "{err}");
}

#[test]
fn report_without_a_jaccard_artifact_leaves_claim_b_untested() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    make_run(dir, &random(1), &random(2), &random(3));
    let manifest = std::fs::read_to_string(dir.join("run.json")).unwrap();
    let mut manifest: serde_json::Value = serde_json::from_str(&manifest).unwrap();
    manifest["jaccard"] = serde_json::Value::Null;
    std::fs::write(dir.join("run.json"), manifest.to_string()).unwrap();
    let report = write_report(dir, &dir.join("report.md")).unwrap();
    assert_eq!(report.same_domain_closer[0].verdict, Verdict::NotTested);
    assert_eq!(report.own_domain_wins[0].verdict, Verdict::Held);
    assert_eq!(report.figures.len(), 1, "only the perplexity heatmap: {:?}", report.figures);
    assert!(report.markdown.contains("Claim (b) held for 0 of 0 tested pairs."), "{}", report.markdown);
}

/// Writes a task result of `passed` items (pass@1 = their mean, no interval) and its items artifact.
fn write_scored_items(dir: &Path, mask: Option<&str>, task: &str, passed: &[bool]) -> String {
    let file = format!("results/{}--task-{task}.parquet", mask.unwrap_or("dense"));
    let path = dir.join(&file);
    let value = passed.iter().filter(|p| **p).count() as f64 / passed.len() as f64;
    write_metric(&path, mask, task, "pass@1", value, None);
    let rows: Vec<artifacts::ItemRow> =
        passed.iter().enumerate().map(|(i, &p)| artifacts::ItemRow { item: i as u64, passed: Some(p), ..Default::default() }).collect();
    write_items_beside(&path, &rows);
    file
}

/// Lists `entries` as the run's task results in its run.json.
fn set_task_results(dir: &Path, entries: Vec<serde_json::Value>) {
    let run_json = dir.join("run.json");
    let mut manifest: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&run_json).unwrap()).unwrap();
    manifest["task_results"] = json!(entries);
    std::fs::write(&run_json, serde_json::to_string(&manifest).unwrap()).unwrap();
}

/// Writes `rows` as the items artifact beside the results artifact `results`.
fn write_items_beside(results: &Path, rows: &[artifacts::ItemRow]) {
    let prov = artifacts::Provenance::new(artifacts::ArtifactKind::Items, common::MODEL, json!({}), "analyze-test");
    artifacts::write_items(&artifacts::items_path_for(results), rows, &prov).unwrap();
}

#[test]
fn task_claims_compare_own_and_other_domain_masks_by_a_paired_bootstrap_over_items() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let py_a = random(1);
    make_run(dir, &py_a, &perturbed(&py_a), &random(2));
    // humaneval-x-python measures python: py-a passes all 10 items, java-a none, so the
    // difference is +1 on every item and its paired interval is [+1, +1]. humaneval-x-java
    // measures java: java-a and py-a pass the same 5 of 10 items, a tie.
    let half: Vec<bool> = (0..10).map(|i| i % 2 == 0).collect();
    let results = [
        (Some("py-a"), "humaneval-x-python", "python", vec![true; 10]),
        (Some("java-a"), "humaneval-x-python", "python", vec![false; 10]),
        (Some("py-a"), "humaneval-x-java", "java", half.clone()),
        (Some("java-a"), "humaneval-x-java", "java", half.clone()),
        (None, "humaneval-x-java", "java", half),
    ];
    let mut entries = Vec::new();
    for (mask, task, domain, passed) in results {
        let file = write_scored_items(dir, mask, task, &passed);
        entries.push(json!({"mask": mask, "task": task, "metric": "pass@1", "path": file, "domain": domain}));
    }
    set_task_results(dir, entries);

    let report = write_report(dir, &dir.join("report.md")).unwrap();
    let md = &report.markdown;
    let claims = &report.own_domain_tasks;
    assert_eq!(claims.len(), 2, "{claims:?}");
    assert_eq!((claims[0].verdict, claims[1].verdict), (Verdict::Held, Verdict::Held));
    let python = "own-domain `py-a` 1.00 [1.00, 1.00] beats `java-a` (java) 0.00 [0.00, 0.00]: difference +1.00; paired 95% interval of the difference over the same 10 items [+1.00, +1.00], which excludes 0";
    assert!(claims[0].detail.contains(python), "{}", claims[0].detail);
    assert!(claims[1].detail.contains("own-domain `java-a`") && claims[1].detail.contains(" ties `py-a` (python)"), "{}", claims[1].detail);
    assert!(
        claims[1].detail.contains("difference +0.00; paired 95% interval of the difference over the same 10 items [+0.00, +0.00]"),
        "{}",
        claims[1].detail
    );
    assert!(md.contains("Claim (c) held on 2 of 2 tested tasks."), "{md}");
    // Results without an interval get a bootstrap over their items: 5 of 10 passed, about 0.5 +- 0.3.
    let tasks = &md[md.find("## Task scores").unwrap()..];
    let dense = tasks.lines().find(|l| l.starts_with("| dense |")).unwrap();
    assert!(dense.contains("0.500 [0.2") || dense.contains("0.500 [0.1"), "{dense}");
}

#[test]
fn perplexity_claims_pair_the_two_masks_window_by_window() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let py_a = random(1);
    make_run(dir, &py_a, &perturbed(&py_a), &random(2));
    // On java's windows py-a's mean NLL is 0.1 below java-a's on every window: a
    // perplexity ratio java-a / py-a of exactly exp(0.1) = 1.105, whatever the resample.
    for (mask, shift) in [("java-a", 0.1), ("py-a", 0.0)] {
        let rows: Vec<artifacts::ItemRow> =
            (0..6).map(|w| artifacts::ItemRow { item: w, score: Some(2.0 + 0.05 * w as f64 + shift), ..Default::default() }).collect();
        let results = dir.join(format!("results/ppl-{mask}-on-java.parquet"));
        write_items_beside(&results, &rows);
    }
    let report = write_report(dir, &dir.join("report.md")).unwrap();
    let java = &report.own_domain_wins[1];
    assert_eq!(java.verdict, Verdict::NotHeld);
    let text = "own / other perplexity paired over the same 6 windows: 95% interval [1.105, 1.105], which excludes 1";
    assert!(java.detail.contains(text), "{}", java.detail);
}

#[test]
fn a_partial_report_leaves_out_results_not_written_yet_and_counts_them() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    make_run(dir, &random(1), &random(2), &random(3));
    // A run under way: one perplexity and the Jaccard artifact are not written yet.
    std::fs::remove_file(dir.join("results/ppl-java-a-on-java.parquet")).unwrap();
    std::fs::remove_file(dir.join("jaccard.parquet")).unwrap();
    assert!(write_report(dir, &dir.join("report.md")).is_err(), "a whole report needs every result");
    let report = analyze::write_partial_report(dir, &dir.join("report.md")).unwrap();
    let md = &report.markdown;
    assert!(md.contains("2 of the 8 results (the Jaccard artifact counted as one) do not exist yet"), "{md}");
    assert!(md.contains("No distances: the run has no Jaccard artifact (yet)."), "{md}");
    assert_eq!(report.same_domain_closer[0].verdict, Verdict::NotTested);
    // The java-a row keeps its python cell and reads n/a on java.
    let row = md.lines().find(|l| l.starts_with("| java-a (java) |")).unwrap();
    assert!(row.contains("15.00") && row.ends_with("n/a |"), "{row}");
    // A report of the whole run, once everything is there, has no such note.
    make_run(dir, &random(1), &random(2), &random(3));
    let whole = analyze::write_partial_report(dir, &dir.join("report.md")).unwrap();
    assert!(!whole.markdown.contains("partial report"), "{}", whole.markdown);
}
