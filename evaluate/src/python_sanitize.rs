//! evalplus's sanitizer of generated Python (`evalplus/sanitize.py`
//! `sanitize`), which the instruct protocol applies to Python answers
//! before their tests run: only the answer's top-level imports, function
//! and class definitions and assignments stay, so that the examples and
//! checks a model writes after its function (`assert f(1) == 2`,
//! `print(f(1))`, `if __name__ == "__main__": ...`) cannot fail a correct
//! function, nor a wrong one pass.
//!
//! As the reference does:
//! - imports come first, then the kept definitions in their order;
//! - a function is kept only when its text holds a `return`;
//! - of two definitions with one name (function, class or assigned
//!   variable), the first is kept;
//! - given the entry point, only the definitions it reaches (through the
//!   names each one's code mentions) are kept;
//! - a decorated definition is not one of the kinds kept (tree-sitter
//!   parses it as `decorated_definition`), so it is dropped;
//! - when nothing is kept (say, the entry point is not defined), the code
//!   comes back as cut (below), without its trailing blank lines.
//!
//! The reference first cuts the answer to its longest span of lines that
//! Python parses, which drops the last, unfinished lines of an answer that
//! ran out of tokens. This module scans tokens and does not parse Python:
//! it drops last lines until what remains looks whole (`looks_complete`),
//! and never drops first lines.

use std::collections::{BTreeSet, HashMap, VecDeque};

/// A logical line of Python source: its byte range (to its last token),
/// whether it is indented, the identifiers it holds (outside strings and
/// comments) with their offsets, and whether it assigns with a bare `=`
/// or holds a `:` outside brackets.
#[derive(Debug)]
struct LogicalLine {
    start: usize,
    end: usize,
    indented: bool,
    first: u8,
    words: Vec<(usize, usize)>,
    assigns: bool,
    colon: bool,
}

impl LogicalLine {
    fn at(start: usize) -> Self {
        LogicalLine { start, end: start, indented: false, first: 0, words: Vec::new(), assigns: false, colon: false }
    }
}

/// Python source scanned into logical lines (lines with no token left
/// out), its comment-only lines, and whether it ends open: inside
/// brackets, a string, or after a line-continuing backslash.
#[derive(Debug)]
struct Scan {
    lines: Vec<LogicalLine>,
    comments: Vec<Comment>,
    open: bool,
}

/// A line that holds only a comment: where the comment starts and ends,
/// and its column.
#[derive(Debug)]
struct Comment {
    start: usize,
    end: usize,
    column: usize,
}

/// The column of byte `at` of `code`.
fn column(code: &str, at: usize) -> usize {
    at - code[..at].rfind('\n').map_or(0, |p| p + 1)
}

/// What a top-level statement is, for the sanitizer.
#[derive(Debug, PartialEq)]
enum Kind {
    Import,
    Function,
    Class,
    Assignment,
    Other,
}

/// Whether `c` can continue an identifier (non-ASCII bytes count: Python
/// identifiers may hold letters of any script).
fn is_word(c: u8) -> bool {
    c.is_ascii_alphanumeric() || c == b'_' || c >= 0x80
}

/// Whether `prefix` may open a string literal (`r"..."`, `b'...'`, `f"..."`, ...).
fn is_string_prefix(prefix: &[u8]) -> bool {
    let lower: Vec<u8> = prefix.iter().map(u8::to_ascii_lowercase).collect();
    matches!(lower.as_slice(), b"r" | b"b" | b"u" | b"f" | b"rb" | b"br" | b"fr" | b"rf")
}

/// Where the string literal whose quote is at `at` ends (one past its
/// closing quote), and whether it is closed (an unclosed one ends at its
/// line's end, or for triple quotes at the end of the source).
fn string_end(b: &[u8], at: usize) -> (usize, bool) {
    let quote = b[at];
    let triple = b.len() >= at + 3 && b[at + 1] == quote && b[at + 2] == quote;
    let mut i = if triple { at + 3 } else { at + 1 };
    while i < b.len() {
        match b[i] {
            b'\\' => i += 2,
            b'\n' if !triple => return (i, false),
            c if c == quote && (!triple || b[i..].starts_with(&[quote; 3])) => return (i + if triple { 3 } else { 1 }, true),
            _ => i += 1,
        }
    }
    (b.len(), false)
}

/// Scans `code` into logical lines: a newline inside brackets, a string or
/// after a backslash does not end one.
fn scan(code: &str) -> Scan {
    let b = code.as_bytes();
    let mut lines = Vec::new();
    let mut comments = Vec::new();
    let mut line = LogicalLine::at(0);
    let (mut depth, mut open_string, mut continued) = (0i64, false, false);
    let mut i = 0;
    let mut push = |line: &mut LogicalLine, next: usize| {
        let done = std::mem::replace(line, LogicalLine::at(next));
        if done.first != 0 {
            lines.push(done);
        }
    };
    while i < b.len() {
        let c = b[i];
        if line.first == 0 && !matches!(c, b' ' | b'\t' | b'\r' | b'\n' | b'\x0c' | b'#') {
            line.indented = i > line.start;
            line.start = i;
            line.end = i;
            line.first = c;
        }
        let token = i;
        match c {
            b'#' => {
                while i < b.len() && b[i] != b'\n' {
                    i += 1;
                }
                if line.first == 0 {
                    comments.push(Comment { start: token, end: i, column: column(code, token) });
                }
                continue;
            }
            b' ' | b'\t' | b'\r' | b'\x0c' => {
                i += 1;
                continue;
            }
            b'\\' if b[i + 1..].starts_with(b"\n") || b[i + 1..].starts_with(b"\r\n") => {
                i += if b[i + 1] == b'\n' { 2 } else { 3 };
                continued = true;
                continue;
            }
            b'\n' => {
                if depth == 0 {
                    push(&mut line, i + 1);
                }
                continued = false;
                i += 1;
                continue;
            }
            b'(' | b'[' | b'{' => {
                depth += 1;
                i += 1;
            }
            b')' | b']' | b'}' => {
                depth = (depth - 1).max(0);
                i += 1;
            }
            b'"' | b'\'' => {
                let (end, closed) = string_end(b, i);
                open_string |= !closed;
                i = end;
            }
            b'=' => {
                let before = if i > 0 { b[i - 1] } else { b' ' };
                let bare = !b"=!<>+-*/%&|^@:~".contains(&before) && b.get(i + 1) != Some(&b'=');
                line.assigns |= depth == 0 && bare;
                i += if b.get(i + 1) == Some(&b'=') { 2 } else { 1 };
            }
            b':' => {
                line.colon |= depth == 0 && b.get(i + 1) != Some(&b'=');
                i += 1;
            }
            c if c.is_ascii_digit() => {
                while i < b.len() && (is_word(b[i]) || b[i] == b'.') {
                    i += 1;
                }
            }
            c if is_word(c) => {
                while i < b.len() && is_word(b[i]) {
                    i += 1;
                }
                if matches!(b.get(i), Some(b'"' | b'\'')) && is_string_prefix(&b[token..i]) {
                    let (end, closed) = string_end(b, i);
                    open_string |= !closed;
                    i = end;
                } else {
                    line.words.push((token, i));
                }
            }
            _ => i += 1,
        }
        line.end = i;
        continued = false;
    }
    let open = depth > 0 || open_string || continued;
    push(&mut line, b.len());
    Scan { lines, comments, open }
}

/// Whether Python would take `code` as a whole, as far as tokens tell:
/// nothing left open, and a last line that is not cut short (a block
/// header without its `:` or its body, an operator or keyword waiting for
/// its operand).
fn looks_complete(code: &str) -> bool {
    let scan = scan(code);
    if scan.open {
        return false;
    }
    let Some(last) = scan.lines.last() else { return true };
    let text = &code[last.start..last.end];
    let word_at = |(s, e): (usize, usize)| &code[s..e];
    let first = last.words.first().filter(|&&(s, _)| s == last.start).map(|&w| word_at(w));
    let header = first.is_some_and(|w| {
        matches!(w, "if" | "elif" | "else" | "for" | "while" | "with" | "def" | "class" | "try" | "except" | "finally" | "async")
    });
    if (header && !last.colon) || text.ends_with(':') {
        return false;
    }
    if text.ends_with(['+', '-', '*', '/', '%', '&', '|', '^', '=', '<', '>', '.', '@', '~', '!']) {
        return false;
    }
    let ends_with_word = last.words.last().filter(|&&(_, e)| e == last.end).map(|&w| word_at(w));
    !ends_with_word.is_some_and(|w| {
        matches!(w, "and" | "or" | "not" | "in" | "is" | "if" | "else" | "lambda" | "import" | "from" | "assert" | "del" | "as" | "await")
    })
}

/// `code` cut as the reference's `code_extract` cuts an answer that ends
/// part way (generation ran out of tokens): its longest run of whole lines
/// from the start that [`looks_complete`], without the blank lines it ends
/// with; the first line when no run does.
fn complete_lines(code: &str) -> &str {
    let ends: Vec<usize> = code.match_indices('\n').map(|(at, _)| at).chain([code.len()]).collect();
    let cut = ends
        .iter()
        .rev()
        .map(|&end| &code[..end])
        .filter(|prefix| prefix.rsplit('\n').next().is_some_and(|l| !l.trim().is_empty()))
        .find(|prefix| looks_complete(prefix));
    cut.unwrap_or(&code[..ends[0]])
}

/// A top-level statement: its byte range, kind, defined name, and the
/// identifiers its code mentions.
#[derive(Debug)]
struct Statement {
    start: usize,
    end: usize,
    kind: Kind,
    name: Option<String>,
    words: BTreeSet<String>,
}

/// Groups logical lines into top-level statements: a statement runs from an
/// unindented line over the indented lines after it, and over the
/// unindented `else`, `elif`, `except` and `finally` clauses of a compound
/// statement; decorator lines belong to the definition after them.
fn statements(code: &str) -> Vec<Statement> {
    let word = |(s, e): (usize, usize)| &code[s..e];
    let scanned = scan(code);
    let mut groups: Vec<Vec<LogicalLine>> = Vec::new();
    let mut decorated = false;
    for line in scanned.lines {
        let clause = line.words.first().is_some_and(|&w| matches!(word(w), "else" | "elif" | "except" | "finally"))
            && code[line.start..].starts_with(word(line.words[0]));
        let continues = line.indented || clause || decorated;
        decorated = !line.indented && line.first == b'@';
        match groups.last_mut() {
            Some(group) if continues => group.push(line),
            _ => groups.push(vec![line]),
        }
    }
    let starts: Vec<usize> = groups.iter().skip(1).map(|g| g[0].start).chain([code.len()]).collect();
    groups
        .into_iter()
        .zip(starts)
        .map(|(lines, next)| {
            let head = &lines[0];
            let first_word = head.words.first().map(|&w| word(w)).filter(|_| code[head.start..].starts_with(|c: char| c != '@'));
            let starts_with = |w: &str| first_word == Some(w) && code[head.start..].starts_with(w);
            let after = |keyword: &str| -> Option<String> {
                let at = head.words.iter().position(|&w| word(w) == keyword)?;
                head.words.get(at + 1).map(|&w| word(w).to_string())
            };
            let (kind, name) = if head.first == b'@' {
                (Kind::Other, None)
            } else if starts_with("import") || starts_with("from") {
                (Kind::Import, None)
            } else if starts_with("def") || (starts_with("async") && head.words.get(1).is_some_and(|&w| word(w) == "def")) {
                (Kind::Function, after("def"))
            } else if starts_with("class") {
                (Kind::Class, after("class"))
            } else if head.assigns && first_word.is_some_and(|w| !is_keyword(w)) {
                let direct = first_word.filter(|w| {
                    code[head.start..].strip_prefix(*w).is_some_and(|rest| rest.trim_start_matches([' ', '\t']).starts_with(['=', ':']))
                });
                (Kind::Assignment, direct.map(str::to_string))
            } else {
                (Kind::Other, None)
            };
            let words = lines.iter().flat_map(|l| l.words.iter().map(|&w| word(w).to_string())).collect();
            // A block takes the comments after its last line that are
            // indented at least as its body, as tree-sitter parses them.
            let mut end = lines.last().map_or(head.end, |l| l.end);
            if let Some(body) = lines.get(1).filter(|l| l.indented) {
                let indent = column(code, body.start);
                let last = end;
                for comment in scanned.comments.iter().filter(|c| c.start > last && c.start < next) {
                    if comment.column < indent {
                        break;
                    }
                    end = comment.end;
                }
            }
            Statement { start: head.start, end, kind, name, words }
        })
        .collect()
}

/// Python's keywords that can start a statement which is not an assignment.
fn is_keyword(word: &str) -> bool {
    matches!(
        word,
        "assert"
            | "async"
            | "await"
            | "break"
            | "continue"
            | "del"
            | "for"
            | "global"
            | "if"
            | "lambda"
            | "nonlocal"
            | "pass"
            | "raise"
            | "return"
            | "try"
            | "while"
            | "with"
            | "yield"
    )
}

/// `code` as evalplus's `sanitize(code, entrypoint)` leaves it: its
/// top-level imports, then the function definitions holding a `return`,
/// the class definitions and the assignments (the first of each name;
/// with `entry_point`, only those it reaches), each as written.
pub fn sanitize(code: &str, entry_point: Option<&str>) -> String {
    let code = complete_lines(code);
    let all = statements(code);
    let mut taken: BTreeSet<&str> = BTreeSet::new();
    let mut definitions: Vec<&Statement> = Vec::new();
    for statement in &all {
        let keep = match statement.kind {
            Kind::Function => statement.words.contains("return"),
            Kind::Class | Kind::Assignment => true,
            Kind::Import | Kind::Other => false,
        };
        let name = statement.name.as_deref();
        if keep && !name.is_some_and(|n| taken.contains(n)) {
            taken.extend(name);
            definitions.push(statement);
        }
    }
    let reached: Option<BTreeSet<&str>> = entry_point.map(|entry| {
        let deps: HashMap<&str, &BTreeSet<String>> = definitions.iter().filter_map(|d| Some((d.name.as_deref()?, &d.words))).collect();
        let mut seen = BTreeSet::from([entry]);
        let mut queue = VecDeque::from([entry]);
        while let Some(name) = queue.pop_front() {
            for next in deps.get(name).into_iter().flat_map(|words| words.iter()) {
                if seen.insert(next.as_str()) {
                    queue.push_back(next.as_str());
                }
            }
        }
        seen
    });
    let imports = all.iter().filter(|s| s.kind == Kind::Import);
    let kept = definitions.into_iter().filter(|d| match &reached {
        Some(reached) => d.name.as_deref().is_some_and(|n| reached.contains(n)),
        None => true,
    });
    let sanitized = imports.chain(kept).map(|s| code[s.start..s.end].trim_end()).collect::<Vec<_>>().join("\n");
    if sanitized.is_empty() {
        // The reference falls back to the code as it cut it.
        return code.to_string();
    }
    sanitized
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tests_and_prints_after_the_function_go() {
        let code =
            "import math\n\ndef area(r):\n    # the area\n    return math.pi * r ** 2\n\n# Test\nassert area(1) == 3\nprint(area(2))\n";
        assert_eq!(sanitize(code, Some("area")), "import math\ndef area(r):\n    # the area\n    return math.pi * r ** 2");
    }

    #[test]
    fn imports_come_first_and_helpers_the_entry_point_reaches_stay() {
        let code = "def helper(x):\n    return x + OFFSET\n\nOFFSET = 3\nunused = 1\n\ndef f(x):\n    return helper(x)\n\nfrom os import path\nif __name__ == '__main__':\n    print(f(1))\n";
        assert_eq!(
            sanitize(code, Some("f")),
            "from os import path\ndef helper(x):\n    return x + OFFSET\nOFFSET = 3\ndef f(x):\n    return helper(x)"
        );
        // Without an entry point every definition stays.
        assert_eq!(
            sanitize(code, None),
            "from os import path\ndef helper(x):\n    return x + OFFSET\nOFFSET = 3\nunused = 1\ndef f(x):\n    return helper(x)"
        );
    }

    #[test]
    fn the_first_definition_of_a_name_wins_and_functions_without_return_go() {
        let code = "def f(x):\n    return 1\n\ndef f(x):\n    return 2\n\ndef main():\n    print(f(0))\n\nmain()\n";
        assert_eq!(sanitize(code, None), "def f(x):\n    return 1");
        // A function without `return` does not take its name: a later one with it stays.
        let code = "def g():\n    pass\ndef g():\n    return 3\n";
        assert_eq!(sanitize(code, None), "def g():\n    return 3");
    }

    #[test]
    fn strings_brackets_and_continuations_do_not_split_or_end_statements() {
        let code = concat!(
            "def f(s):\n",
            "    '''Docstring with a line at column zero:\n",
            "assert False\n",
            "    '''\n",
            "    table = {\n",
            "'a': 1,\n",
            "    }\n",
            "    return table.get(s, \\\n",
            "0)\n",
            "x = f('# not a comment')\n",
            "y == 2\n",
        );
        assert_eq!(
            sanitize(code, None),
            "def f(s):\n    '''Docstring with a line at column zero:\nassert False\n    '''\n    table = {\n'a': 1,\n    }\n    return table.get(s, \\\n0)\nx = f('# not a comment')"
        );
    }

    #[test]
    fn compound_statements_keep_their_clauses_and_go_whole() {
        let code = "try:\n    import numpy\nexcept ImportError:\n    numpy = None\nelse:\n    pass\nfinally:\n    x = 1\nclass A:\n    def m(self):\n        return 1\nfor i in range(3):\n    print(i)\n";
        assert_eq!(sanitize(code, None), "class A:\n    def m(self):\n        return 1");
    }

    #[test]
    fn decorated_and_keyword_statements_are_not_kept_but_annotated_assignments_are() {
        let code = "@cache\ndef fib(n):\n    return n if n < 2 else fib(n - 1) + fib(n - 2)\nassert fib(x=1) == 1\nlimit: int = 10\nn += 1\nrf'{x}' == 1\n";
        assert_eq!(sanitize(code, None), "limit: int = 10");
    }

    #[test]
    fn an_answer_cut_short_loses_its_unfinished_last_lines() {
        let whole = "def f(x):\n    if x > 1:\n        return 1\n    # then\n    return 2";
        for tail in [
            "\n    if x < 0 or x > 2",
            "\n    y = [1,\n        2",
            "\n    s = \"\"\"doc",
            "\n    y = x +",
            "\n    if x:",
            "\n    z = x if x else",
        ] {
            assert_eq!(sanitize(&format!("{whole}{tail}"), Some("f")), whole, "tail {tail:?}");
        }
        assert!(looks_complete(whole));
        assert!(looks_complete("x = (1,\n 2)\ny = 'a' \\\n  + 'b'"));
        assert!(!looks_complete("x = 'a' \\\n"));
        assert!(!looks_complete("s = 'open\nt = 1"), "an unclosed string anywhere");
        // Nothing kept: the code as cut comes back.
        assert_eq!(sanitize("print(1)\nprint(2\n\n", None), "print(1)");
    }

    #[test]
    fn a_block_keeps_the_comments_indented_as_its_body() {
        let code = "def f(x):\n    return 1\n    # tail\n\ndef g():\n    return 2\n  # out\nx = 1 # c\n";
        assert_eq!(sanitize(code, None), "def f(x):\n    return 1\n    # tail\ndef g():\n    return 2\nx = 1");
    }

    #[test]
    fn any_text_sanitizes_without_panic_into_lines_of_its_own() {
        let pieces = [
            "def ", "class ", "import ", "x", "αβ", " = ", "==", ":", "\n", "    ", "\t", "(", ")", "[", "]", "{", "}", "'", "\"", "'''",
            "\"\"\"", "#", "\\", "\r\n", "return ", "@d", "if ", "else", "r'", "f\"", "+", ",", "1.5e3", "é",
        ];
        let mut state = 0x9e37_79b9_7f4a_7c15u64;
        for _ in 0..3000 {
            let mut code = String::new();
            for _ in 0..40 {
                state = state.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
                code.push_str(pieces[(state >> 33) as usize % pieces.len()]);
            }
            let out = sanitize(&code, Some("x"));
            for line in out.lines() {
                assert!(code.contains(line), "{line:?} is not from {code:?}");
            }
        }
    }

    #[test]
    fn a_line_of_only_a_continuation_is_an_empty_logical_line() {
        // Found by `subprune-fuzz code-answer` (the input, minimized, is
        // fuzz/regressions/code-answer/continuation-only-line.md): a line
        // holding only a backslash before a comment line was sliced from
        // its start past its end.
        let code = "def f(a, b):\n \\\r\n     \n# c\r\n";
        let out = sanitize(code, Some("f"));
        assert!(out.lines().all(|line| code.contains(line)), "{out:?}");
        // Still open when the continuation ends the code.
        assert!(!looks_complete("x = 1\n \\\n"));
    }

    #[test]
    fn async_functions_count_as_functions() {
        let code = "async def fetch():\n    return 1\nawait fetch()\n";
        assert_eq!(sanitize(code, Some("fetch")), "async def fetch():\n    return 1");
    }
}
