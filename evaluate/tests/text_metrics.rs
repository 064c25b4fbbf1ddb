//! GSM8K prompt and answer extraction, METEOR on hand-worked pairs and
//! against NLTK's values, the translation data reader.

use std::path::PathBuf;

use evaluate::gsm8k::{answers_match, extract_answer, gold_answer, prompt, EXEMPLARS};
use evaluate::meteor::{count_chunks, meteor, meteor_detail, MeteorParams, Synonyms};
use evaluate::translation::{load_pairs, prompt as translation_prompt, Pair};

fn shared(sub: &str) -> PathBuf {
    testkit::shared_data().join(sub)
}

#[test]
fn gsm8k_extraction_recovers_every_gold_answer() {
    let records = artifacts::records::read_records(&shared("gsm8k/test.jsonl")).unwrap();
    assert_eq!(records.len(), 1319);
    let mut ok = 0;
    for r in &records {
        let answer = r["answer"].as_str().unwrap();
        let gold = gold_answer(answer).unwrap();
        // The reference solution itself, as if generated: its last number is the answer.
        let as_generated = extract_answer(answer).unwrap();
        // The solution rewritten in the exemplars' style, commas and all.
        let (cot, n) = answer.rsplit_once("####").unwrap();
        let styled = format!(" {} The answer is {}.", cot.trim().replace('\n', " "), n.trim());
        if answers_match(&as_generated, &gold) && answers_match(&extract_answer(&styled).unwrap(), &gold) {
            ok += 1;
        }
    }
    assert_eq!(ok, records.len());
}

#[test]
fn gsm8k_extraction_by_hand() {
    assert_eq!(extract_answer(" He has 5 + 4 = 9. The answer is $1,234.50.").as_deref(), Some("1234.50"));
    assert_eq!(extract_answer(" So 3 - 10 = -7 apples").as_deref(), Some("-7"));
    // "The answer is" comes first, even with later numbers.
    assert_eq!(extract_answer(" The answer is 12. Then 99 more").as_deref(), Some("12"));
    assert_eq!(extract_answer("no number here"), None);
    assert_eq!(gold_answer("a <<1+1=2>>2\n#### 1,000").as_deref(), Some("1000"));
    assert!(answers_match("18.00", "18") && !answers_match("17", "18"));
}

#[test]
fn gsm8k_prompt_is_eight_shot_chain_of_thought() {
    let p = prompt("How many?");
    assert!(p.starts_with("Q: There are 15 trees in the grove. Grove workers will plant trees in the grove today."));
    assert!(p.ends_with("The answer is 8.\n\nQ: How many?\nA:"));
    assert_eq!(p.matches("\nA: ").count(), 8);
    assert_eq!(p.matches("The answer is").count(), 8);
    assert_eq!(EXEMPLARS.len(), 8);
    assert!(p.contains("Q: If there are 3 cars in the parking lot and 2 more cars arrive, how many cars are in the parking lot?\nA: There are originally 3 cars. 2 more cars arrive. 3 + 2 = 5. The answer is 5.\n\n"));
}

fn close(a: f64, b: f64) -> bool {
    (a - b).abs() < 1e-9
}

#[test]
fn meteor_hand_worked_pairs() {
    let p = MeteorParams::default();
    // 1. Identical: m = 6, one chunk, P = R = Fmean = 1,
    //    penalty = 0.5 * (1/6)^3 = 1/432, score = 431/432 = 0.997685185...
    let d = meteor_detail("the cat sat on the mat", "the cat sat on the mat", None, p);
    assert_eq!((d.matches, d.chunks), (6, 1));
    assert!(close(d.fmean, 1.0) && close(d.penalty, 1.0 / 432.0) && close(d.score, 431.0 / 432.0));

    // 2. Swapped halves: hyp "on the mat the cat sat". All 6 words match; the
    //    alignment with fewest chunks maps hyp the(1) -> ref the(4) and hyp the(3)
    //    -> ref the(0): chunks "on the mat" and "the cat sat" = 2.
    //    penalty = 0.5 * (2/6)^3 = 1/54, score = 53/54 = 0.981481...
    //    (NLTK aligns greedily from the end, pairs hyp the(3) with ref the(4),
    //    gets 5 chunks and 0.7106481481.)
    let d = meteor_detail("the cat sat on the mat", "on the mat the cat sat", None, p);
    assert_eq!((d.matches, d.chunks), (6, 2));
    assert!(close(d.score, 53.0 / 54.0), "{}", d.score);

    // 3. Stems: ref "he is running quickly to the stores" (7 words),
    //    hyp "he runs quick to the store" (6 words).
    //    Exact: he, to, the. Stem: runs/running -> run, store/stores -> store;
    //    quick/quickly -> quick/quickli do not match. m = 5.
    //    Alignment (0,0) (1,2) (3,4) (4,5) (5,6): chunks = 3.
    //    P = 5/6, R = 5/7, Fmean = (25/42) / (0.75 + 1/14) = 50/69 = 0.724638,
    //    penalty = 0.5 * (3/5)^3 = 0.108, score = 50/69 * 0.892 = 0.646376811...
    //    (NLTK: 0.6463768116.)
    let d = meteor_detail("he is running quickly to the stores", "he runs quick to the store", None, p);
    assert_eq!((d.matches, d.chunks, d.hyp_len, d.ref_len), (5, 3, 6, 7));
    assert!(close(d.precision, 5.0 / 6.0) && close(d.recall, 5.0 / 7.0));
    assert!(close(d.fmean, 50.0 / 69.0) && close(d.penalty, 0.108));
    assert!(close(d.score, 50.0 / 69.0 * 0.892));
    assert!((d.score - 0.6463768116).abs() < 1e-9);

    // 4. No match at all, and case folding.
    assert_eq!(meteor(&["a b c"], "x y z", None), 0.0);
    assert!(close(meteor(&["The Cat"], "the cat", None), meteor(&["the cat"], "the cat", None)));
    // Several references: the best.
    assert!(close(meteor(&["x y z", "the cat sat on the mat"], "the cat sat on the mat", None), 431.0 / 432.0));
    assert_eq!(count_chunks(&[(2, 5), (0, 0), (1, 1)]), 2);
}

#[test]
fn meteor_agrees_with_nltk_where_alignment_is_unambiguous() {
    // nltk 3.10.4 `single_meteor_score(ref.lower().split(), hyp.lower().split(), wordnet=<no synsets>)`.
    let cases = [
        ("Ein Mann mit einem orangefarbenen Hut, der etwas anstarrt.", "Ein Mann mit orangefarbenem Hut starrt etwas an.", 0.4213483146),
        (
            "two young guys with shaggy hair look at their hands while hanging out in the yard",
            "two young men with long hair are looking at their hands in the garden",
            0.5933544304,
        ),
        ("a fast car", "a quick car", 0.3333333333),
    ];
    for (r, h, nltk) in cases {
        let s = meteor(&[r], h, None);
        assert!((s - nltk).abs() < 1e-9, "{r:?} / {h:?}: {s} vs NLTK {nltk}");
    }
}

#[test]
fn meteor_synonyms_from_a_list_and_from_wordnet_data() {
    let dir = tempfile::tempdir().unwrap();
    let list = dir.path().join("syn.txt");
    std::fs::write(&list, "quick, fast speedy\nautomobile car\n").unwrap();
    let syn = Synonyms::from_path(&list).unwrap();
    // ref "a fast car", hyp "a quick car": a, car exact; quick ~ fast by synonym.
    // m = 3, one chunk, Fmean = 1, penalty = 0.5 / 27, score = 53/54.
    let d = meteor_detail("a fast car", "a quick car", Some(&syn), MeteorParams::default());
    assert_eq!((d.matches, d.chunks), (3, 1));
    assert!(close(d.score, 53.0 / 54.0));

    // The same synonyms as NLTK's WordNet data files.
    let wn = dir.path().join("corpora/wordnet");
    std::fs::create_dir_all(&wn).unwrap();
    std::fs::write(
        wn.join("data.adj"),
        "  1 This software and database is being provided\n00976508 00 s 03 fast 0 quick(a) 0 speedy 0 000 | a gloss\n",
    )
    .unwrap();
    std::fs::write(wn.join("data.noun"), "02958343 06 n 03 car 0 auto 0 motor_car 0 000 | a gloss\n").unwrap();
    let wordnet = Synonyms::from_path(dir.path()).unwrap();
    assert!(wordnet.related("quick", "fast") && wordnet.related("car", "auto") && !wordnet.related("car", "fast"));
    assert!(close(meteor(&["a fast car"], "a quick car", Some(&wordnet)), 53.0 / 54.0));
    assert!(Synonyms::from_path(&dir.path().join("missing")).is_err());
}

#[test]
fn translation_pairs_and_prompt() {
    let (file, pairs) = load_pairs(&shared("multi30k-en-de"), "en", "de").unwrap();
    assert!(file.ends_with("test.en-de.jsonl"));
    assert_eq!(pairs.len(), 1000);
    assert_eq!(pairs[0].source, "A man in an orange hat starring at something.");
    assert_eq!(pairs[0].target, "Ein Mann mit einem orangefarbenen Hut, der etwas anstarrt.");
    let err = load_pairs(&shared("multi30k-en-de/val.en-de.jsonl"), "src", "tgt").unwrap_err().to_string();
    assert!(err.contains("`src`") && err.contains("val.en-de.jsonl"), "{err}");
    let shot = Pair { source: "A dog.".into(), target: "Ein Hund.".into() };
    assert_eq!(
        translation_prompt("A cat.", &[shot], "English", "German"),
        "Translate English to German.\n\nEnglish: A dog.\nGerman: Ein Hund.\n\nEnglish: A cat.\nGerman:"
    );
}
