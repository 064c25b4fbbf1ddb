//! The Python sanitizer of the instruct protocol against evalplus's own
//! (`evalplus.sanitize.sanitize`, tree-sitter based), on sources a model
//! wrote: `fixtures/sanitize_reference.jsonl`, made by
//! `fixtures/make_sanitize_fixture.py`.

use evaluate::python_sanitize::sanitize;

#[test]
fn sources_sanitize_as_evalplus_sanitizes_them() {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/sanitize_reference.jsonl.gz");
    let records = artifacts::records::read_records(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let mut differ = Vec::new();
    let mut changed = 0;
    for record in &records {
        let code = record["code"].as_str().unwrap();
        let expected = record["sanitized"].as_str().unwrap();
        let ours = sanitize(code, record["entry_point"].as_str());
        changed += usize::from(expected != code);
        if ours != expected {
            differ.push(format!(
                "{} item {}:\n--- code\n{code}\n--- evalplus\n{expected}\n--- ours\n{ours}\n",
                record["task"], record["item"]
            ));
        }
    }
    assert_eq!(records.len(), 664, "500 MBPP and 164 HumanEval sources");
    assert!(changed * 2 > records.len(), "the fixture should mostly hold sources the sanitizer changes ({changed} of {})", records.len());
    assert!(differ.is_empty(), "{} of {} sources differ from evalplus's:\n{}", differ.len(), records.len(), differ.join("\n"));
}
