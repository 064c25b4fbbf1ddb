//! The code-answer target: a model's answer to a code task under the
//! instruct protocol, as `evaluate` reads it: its first fenced code block,
//! whether that block defines the entry point in each language, and the
//! block through evalplus's Python sanitizer, with and without an entry
//! point. Generated code is hostile, so this text comes from a stranger as
//! much as any file; the sanitizer must keep only lines of its input.

use std::path::Path;

use evaluate::code_instruct::{defines, first_code_block};
use evaluate::python_sanitize::sanitize;
use evaluate::sandbox::Language;

use super::Outcome;
use crate::mutate::{Field, Rng};

/// The entry point the answers are asked for.
const ENTRY: &str = "candidate";

/// Reads the answer (invalid UTF-8 replaced, as generated text is decoded),
/// extracts its code, checks the definition in every language, and
/// sanitizes it; panics if the sanitized code holds a line the code lacks.
pub fn run(path: &Path) -> Outcome {
    let bytes = std::fs::read(path).expect("the input file was just written");
    let answer = String::from_utf8_lossy(&bytes);
    let code = first_code_block(&answer);
    let defined = [Language::Python, Language::Cpp, Language::Java, Language::JavaScript]
        .into_iter()
        .filter(|&language| defines(language, code, ENTRY))
        .count();
    for entry in [Some(ENTRY), None] {
        let kept = sanitize(code, entry);
        for line in kept.lines() {
            assert!(code.contains(line), "the sanitizer wrote {line:?}, which is not in its input");
        }
    }
    Outcome::ok(if defined > 0 { "defines" } else { "body" })
}

/// Seeds: answers as chat models write them, fenced or bare, with the
/// shapes the sanitizer treats apart (imports, helpers, classes, decorated
/// and async definitions, top-level tests, strings holding code, a cut-off
/// last line, CRLF line ends, and C++, Java and JavaScript blocks).
pub fn seeds() -> Vec<Vec<u8>> {
    [
        "```python\nimport math\n\ndef helper(x):\n    return x * 2\n\ndef candidate(a, b):\n    \"\"\"Adds.\n    def candidate(): in a docstring\n    \"\"\"\n    return helper(a) + b\n\nassert candidate(1, 2) == 4\nprint(candidate(3, 4))\n```\nThis works because...",
        "Here is the code:\n```python\nfrom typing import List\n\nclass Stack:\n    def __init__(self):\n        self.items = []\n\n    def push(self, x):\n        self.items.append(x)\n\n@cache\ndef candidate(n: int) -> List[int]:\n    s = Stack()\n    for i in range(n):\n        s.push(i)\n    return s.items\n\nLIMIT = 10\nif __name__ == '__main__':\n    candidate(LIMIT)\n```\n",
        "```python\nasync def candidate(x):\n    return await other(x)\n\ndef other(x):\n    return (x +\n            1)\n\nresult = candidate(\n    2,\n```",
        "```\n    if n < 2:\n        return n\n    return candidate(n - 1) + candidate(n - 2)\n```",
        "def candidate(s):\r\n    t = r'\\d+' + f\"{s!r}\" + b'x'.decode()\r\n    return '''multi\r\nline''' + t \\\r\n        + s\r\n",
        "```cpp\n#include <vector>\nint candidate(std::vector<int> v) const {\n    // candidate(x) in a comment\n    return v.size();\n}\nint main() { return candidate({}); }\n```",
        "```java\npublic class Main {\n    public static int candidate(int a) throws Exception {\n        String s = \"candidate(\";\n        return a;\n    }\n}\n```",
        "```javascript\nconst candidate = (a, b) => {\n  return `${a}${b}`;\n};\nconsole.log(candidate == 1);\n```",
    ]
    .into_iter()
    .map(|s| s.as_bytes().to_vec())
    .collect()
}

/// Text has no length or offset fields to rewrite.
pub fn fields(_: &[u8]) -> Vec<Field> {
    Vec::new()
}

/// Pieces of Python (and of the other languages and the fences) that
/// change how the answer scans: quotes, brackets, continuations, line
/// ends, indentation, keywords, decorators, comments, non-ASCII letters.
const PIECES: &[&str] = &[
    "\"\"\"",
    "'''",
    "'",
    "\"",
    "(",
    ")",
    "[",
    "]",
    "{",
    "}",
    "\\\n",
    "\\",
    "\n",
    "\r\n",
    "\n    ",
    "\n\t",
    ":",
    "def candidate(x):\n",
    "def ",
    "class A:\n",
    "@dec\n",
    "import os\n",
    "from a import b\n",
    "x = ",
    "candidate = 1\n",
    "return ",
    "# ",
    "async ",
    "if x:\n",
    "else:\n",
    "elif y:\n",
    "except E:\n",
    "```python\n",
    "```\n",
    "```",
    "αβ",
    "é",
    "r'",
    "f\"",
    "b'",
    "lambda: ",
    " and",
    " or",
    "+",
    "==",
    "=",
    ";",
];

/// Inserts a piece at a character boundary, deletes a stretch, or repeats
/// a line.
pub fn structured(data: &[u8], rng: &mut Rng, _: &Path) -> Option<Vec<u8>> {
    let mut text = String::from_utf8_lossy(data).into_owned();
    let boundaries: Vec<usize> = text.char_indices().map(|(at, _)| at).chain([text.len()]).collect();
    let at = *rng.pick(&boundaries);
    match rng.below(3) {
        0 => {
            let piece = *rng.pick(PIECES);
            text.insert_str(at, piece);
        }
        1 => {
            let end = boundaries.iter().copied().filter(|&b| b >= at).nth(1 + rng.below(16)).unwrap_or(text.len());
            text.replace_range(at..end, "");
        }
        _ => {
            let lines: Vec<&str> = text.split_inclusive('\n').collect();
            let line = if lines.is_empty() { "\n".to_string() } else { rng.pick(&lines).to_string() };
            text.insert_str(at, &line);
        }
    }
    Some(text.into_bytes())
}
