//! The SentencePiece-style BPE tokenizer of the real Gemma 3 270M GGUF (path
//! in `SUBPRUNE_GEMMA3_GGUF`, set by `cargo xtask test`) against ids from
//! transformers.

use std::sync::OnceLock;

use model::gguf::GgufFile;
use model::tokenizer::Tokenizer;

fn gemma3() -> &'static Tokenizer {
    static TOK: OnceLock<Tokenizer> = OnceLock::new();
    TOK.get_or_init(|| {
        let path = testkit::gemma3_gguf();
        let file = GgufFile::open(&path).unwrap_or_else(|e| panic!("cannot open {}: {e:?}", path.display()));
        Tokenizer::from_gguf(&file).unwrap_or_else(|e| panic!("{e}"))
    })
}

/// Lines of WikiText-2's test split and their ids from transformers 5.24.0 /
/// tokenizers 0.23.3 (`AutoTokenizer.from_pretrained(dir,
/// gguf_file="gemma-3-270m-q4_k_m.gguf")`, `tok(line)["input_ids"]`, BOS
/// included), in the throwaway venv /tmp/refvenv.
const REFERENCE_IDS: &[(&str, &[u32])] = &[
    (" = Robert Boulter = ", &[2, 578, 9877, 151936, 589, 578, 236743]),
    (" = = Career = = ", &[2, 578, 578, 44987, 578, 578, 236743]),
    (
        " = = = 2000 – 2005 = = = ",
        &[2, 578, 578, 578, 236743, 236778, 236771, 236771, 236771, 1271, 236743, 236778, 236771, 236771, 236810, 578, 578, 578, 236743],
    ),
];

#[test]
fn encodes_like_transformers_with_bos() {
    let tok = gemma3();
    assert_eq!((tok.bos_id(), tok.eos_id(), tok.add_bos(), tok.vocab_size()), (Some(2), Some(1), true, 262_144));
    for (text, want) in REFERENCE_IDS {
        assert_eq!(tok.encode(text, true).unwrap(), *want, "{text:?}");
        assert_eq!(tok.encode(text, false).unwrap(), want[1..], "{text:?} without BOS");
    }
}

#[test]
fn round_trips_text_with_spaces_newlines_and_bytes() {
    let tok = gemma3();
    for text in ["", "  two  spaces\n\nand\ttabs", "naïve café 日本語 🎉", "<start_of_turn>user\nhi<end_of_turn>\n"] {
        let ids = tok.encode(text, false).unwrap();
        assert_eq!(tok.decode(&ids).unwrap(), text, "ids {ids:?}");
    }
    // Control tokens stay whole.
    assert_eq!(tok.encode("<start_of_turn>", false).unwrap().len(), 1);
}
