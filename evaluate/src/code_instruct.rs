//! The instruct protocol of the code tasks, after evalplus's instruct mode
//! (`evalplus/provider/utility.py` `make_raw_chat_prompt`, the prefixes of
//! `evalplus/codegen.py`).
//!
//! The problem goes to the model as one user message through its chat
//! template, with the generation prompt, followed by the start of the
//! answer ([`response_prefix`], which opens a fenced code block):
//!
//! ```text
//! Please provide a self-contained <Language> script that solves the following problem in a markdown code block:
//! ```
//! <prompt, stripped>
//! ```
//! ```
//!
//! (MBPP: the prompt is evalplus's `"""\n<text>\n<first test>\n"""`.)
//! The answer (response prefix and generated text) gives its first fenced
//! code block. When that code does not define the problem's function
//! (HumanEval-X: the function the prompt opens), the model wrote only a
//! body, and the source is the prompt followed by that body, cut where the
//! function ends as the completion protocol cuts. A C++ `main` or a Java
//! class `Main` of the answer's own is dropped, since the harness brings
//! its own. Python sources go through evalplus's sanitizer
//! ([`crate::python_sanitize`]): the examples and asserts a model writes
//! after its function do not run. The program run is that source followed
//! by the task's tests, as in the completion protocol.

use clap::ValueEnum;

use crate::chat::ChatMessage;
use crate::code_tasks::{lex_step, postprocess, CodeTask, Lex, Problem};
use crate::python_sanitize::sanitize;
use crate::sandbox::Language;
use crate::EvalError;

/// How a code task asks the model for code.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, ValueEnum)]
pub enum Protocol {
    /// The model continues the raw prompt (HumanEval-X's prompt, MBPP's 3-shot prompt); the continuation is cut where the function ends.
    #[default]
    Completion,
    /// The problem goes through the model's chat template (evalplus's instruct mode); the first fenced code block of the answer runs, completed with the prompt's signature when it holds only a body.
    Instruct,
}

impl Protocol {
    /// Lower-case name: `completion` or `instruct`.
    pub fn name(self) -> &'static str {
        match self {
            Protocol::Completion => "completion",
            Protocol::Instruct => "instruct",
        }
    }

    /// The task's name in results: [`CodeTask::name`], with `-instruct`
    /// appended under the instruct protocol so that the two never share a row.
    pub fn task_name(self, task: CodeTask) -> String {
        match self {
            Protocol::Completion => task.name(),
            Protocol::Instruct => format!("{}-instruct", task.name()),
        }
    }
}

/// The closing fence of the answer's code block: generation may stop there.
pub const CLOSING_FENCE: &str = "\n```";
/// evalplus's extra end-of-code strings of Python answers (its `EOS`): a
/// script's own entry point or printing after the function.
pub const PYTHON_INSTRUCT_STOPS: &[&str] = &["\nif __name__", "\ndef main(", "\nprint("];

/// The language's name in the instruction (`Python`, `C++`, `Java`, `JavaScript`).
pub fn language_title(language: Language) -> &'static str {
    match language {
        Language::Python => "Python",
        Language::Cpp => "C++",
        Language::Java => "Java",
        Language::JavaScript => "JavaScript",
    }
}

/// The info string of the language's fenced code blocks.
pub fn fence_tag(language: Language) -> &'static str {
    match language {
        Language::Python => "python",
        Language::Cpp => "cpp",
        Language::Java => "java",
        Language::JavaScript => "javascript",
    }
}

/// The user message that poses `problem` (evalplus's instruction prefix and
/// the stripped prompt in a fence; MBPP's prompt is its text and first test
/// in a docstring, as evalplus writes MBPP+ prompts).
pub fn instruct_message(task: CodeTask, problem: &Problem) -> String {
    let prompt = match &problem.mbpp {
        Some(m) => format!("\"\"\"\n{}\n{}\n\"\"\"", m.text, m.tests.first().map_or("", String::as_str)),
        None => problem.prompt.clone(),
    };
    format!(
        "Please provide a self-contained {} script that solves the following problem in a markdown code block:\n```\n{}\n```\n",
        language_title(task.language()),
        prompt.trim()
    )
}

/// The start of the model's answer, appended to the rendered chat prompt:
/// evalplus's response prefix and the opening fence.
pub fn response_prefix(language: Language) -> String {
    format!(
        "Below is a {} script with a self-contained function that solves the problem and passes corresponding tests:\n```{}\n",
        language_title(language),
        fence_tag(language)
    )
}

/// The text the model continues for `problem`: the user message rendered by
/// `render` (the model's chat template, with the generation prompt),
/// followed by [`response_prefix`]. Encode it without adding special
/// tokens: the template holds them.
pub fn instruct_prompt(
    task: CodeTask,
    problem: &Problem,
    render: impl FnOnce(&[ChatMessage]) -> Result<String, EvalError>,
) -> Result<String, EvalError> {
    let chat = render(&[ChatMessage::user(instruct_message(task, problem))])?;
    Ok(chat + &response_prefix(task.language()))
}

/// Where generation of an answer stops besides EOS: the closing fence, and
/// for Python evalplus's [`PYTHON_INSTRUCT_STOPS`].
pub fn instruct_stops(task: CodeTask) -> Vec<String> {
    let mut stops = vec![CLOSING_FENCE.to_string()];
    if task.language() == Language::Python {
        stops.extend(PYTHON_INSTRUCT_STOPS.iter().map(|s| s.to_string()));
    }
    stops
}

/// The first fenced code block of `answer`: the lines after the first line
/// that starts with three backticks, up to the next such line (or the end
/// of the answer when the block is not closed); the whole answer when it
/// has no fence.
pub fn first_code_block(answer: &str) -> &str {
    let mut offset = 0;
    let mut start = None;
    for line in answer.split_inclusive('\n') {
        let fence = line.trim_start().starts_with("```");
        match start {
            None if fence => start = Some(offset + line.len()),
            Some(s) if fence => return &answer[s..offset],
            _ => {}
        }
        offset += line.len();
    }
    start.map_or(answer, |s| &answer[s..])
}

fn is_ident(c: u8) -> bool {
    c.is_ascii_alphanumeric() || c == b'_' || c == b'$'
}

/// The name of the function the tests call (HumanEval-X's entry point):
/// Python, the last `def` of the prompt; C++, Java and JavaScript, the
/// function whose brace is the innermost one the prompt leaves open; MBPP,
/// whose prompt has no signature, the first function of the reference
/// solution that the tests call.
pub fn entry_point(task: CodeTask, problem: &Problem) -> Option<String> {
    let language = match task {
        CodeTask::Mbpp => return mbpp_entry_point(problem),
        CodeTask::HumanEvalX(l) => l,
    };
    if language == Language::Python {
        return problem.prompt.lines().rev().find(|l| l.starts_with("def ")).and_then(python_def_name).map(str::to_string);
    }
    let b = problem.prompt.as_bytes();
    let (mut state, mut depth) = (Lex::Code, 0i64);
    // Where the current declaration starts: after the last `;`, brace, comment or string.
    let mut header_start = 0;
    let mut open: Vec<(usize, usize)> = Vec::new();
    let mut i = 0;
    while i < b.len() {
        let in_code = state == Lex::Code;
        let c = b[i];
        let step = lex_step(b, i, &mut state, &mut depth, language == Language::JavaScript);
        if in_code && state == Lex::Code {
            match c {
                b'{' => {
                    open.push((i, header_start));
                    header_start = i + 1;
                }
                b'}' => {
                    open.pop();
                    header_start = i + 1;
                }
                b';' => header_start = i + 1,
                _ => {}
            }
        } else {
            header_start = i + step;
        }
        i += step;
    }
    let &(brace, mut start) = open.last()?;
    while !problem.prompt.is_char_boundary(start) {
        start += 1;
    }
    let header = &problem.prompt[start..brace];
    let before = header[..header.find('(')?].trim_end().trim_end_matches('=').trim_end();
    let name_start = before.bytes().rposition(|c| !is_ident(c)).map_or(0, |p| p + 1);
    let name = &before[name_start..];
    (!name.is_empty()).then(|| name.to_string())
}

/// The first top-level `def` of an MBPP problem's reference solution whose
/// name the tests call (`name(`).
fn mbpp_entry_point(problem: &Problem) -> Option<String> {
    let calls = |name: &str| {
        problem.test.match_indices(name).any(|(at, _)| {
            let before = problem.test[..at].bytes().next_back();
            !before.is_some_and(is_ident) && problem.test[at + name.len()..].trim_start().starts_with('(')
        })
    };
    problem.canonical.lines().filter_map(python_def_name).find(|name| calls(name)).map(str::to_string)
}

/// The name a top-level Python `def name(...)` line defines; None for
/// any other line.
fn python_def_name(line: &str) -> Option<&str> {
    let rest = line.strip_prefix("def ")?;
    let name = rest[..rest.find('(')?].trim();
    (!name.is_empty()).then_some(name)
}

/// Whether `code` defines the function `name`: Python, a top-level `def`;
/// C++, Java and JavaScript, `name(...)` followed by a body's `{` (modifiers
/// such as `const` or `throws E` between), or in JavaScript an assignment
/// `name = ...` — in code, not in comments or strings.
pub fn defines(language: Language, code: &str, name: &str) -> bool {
    if language == Language::Python {
        return code.lines().any(|line| python_def_name(line.strip_prefix("async ").unwrap_or(line)) == Some(name));
    }
    let b = code.as_bytes();
    let backticks = language == Language::JavaScript;
    let (mut state, mut depth) = (Lex::Code, 0i64);
    let mut i = 0;
    while i < b.len() {
        if state == Lex::Code
            && b[i..].starts_with(name.as_bytes())
            && (i == 0 || !is_ident(b[i - 1]))
            && definition_follows(&b[i + name.len()..], backticks)
        {
            return true;
        }
        i += lex_step(b, i, &mut state, &mut depth, backticks);
    }
    false
}

/// Whether what follows a name makes it a definition: `(...)` then a body's
/// `{` (identifiers, commas and dots between), or in JavaScript `=` (not `==`).
fn definition_follows(rest: &[u8], javascript: bool) -> bool {
    if rest.first().is_some_and(|&c| is_ident(c)) {
        return false;
    }
    let mut j = rest.iter().position(|c| !c.is_ascii_whitespace()).unwrap_or(rest.len());
    match rest.get(j) {
        Some(b'=') if javascript => return rest.get(j + 1) != Some(&b'='),
        Some(b'(') => {}
        _ => return false,
    }
    let mut parens = 0i64;
    while j < rest.len() {
        match rest[j] {
            b'(' => parens += 1,
            b')' => parens -= 1,
            _ => {}
        }
        j += 1;
        if parens == 0 {
            break;
        }
    }
    let after = &rest[j.min(rest.len())..];
    match after.iter().position(|&c| !(c.is_ascii_whitespace() || is_ident(c) || c == b',' || c == b'.')) {
        Some(k) => after[k] == b'{',
        None => false,
    }
}

/// Removes from `code` the first top-level block (its line to its closing
/// brace, or to the end where it is not closed, as when generation ran out of
/// tokens) whose line has, at depth 0 and in code, a word where `starts` holds.
fn remove_top_level_block(code: &str, backticks: bool, starts: impl Fn(&str) -> bool) -> String {
    let b = code.as_bytes();
    let (mut state, mut depth) = (Lex::Code, 0i64);
    let mut i = 0;
    while i < b.len() {
        if state == Lex::Code && depth == 0 && code.is_char_boundary(i) && (i == 0 || !is_ident(b[i - 1])) && starts(&code[i..]) {
            let line_start = code[..i].rfind('\n').map_or(0, |p| p + 1);
            let mut opened = false;
            while i < b.len() {
                let brace = state == Lex::Code && b[i] == b'{';
                i += lex_step(b, i, &mut state, &mut depth, backticks);
                opened |= brace;
                if opened && depth == 0 {
                    return format!("{}{}", &code[..line_start], &code[i..]);
                }
            }
            return code[..line_start].to_string();
        }
        i += lex_step(b, i, &mut state, &mut depth, backticks);
    }
    code.to_string()
}

/// Whether `text` starts with the word `word` (not a longer identifier) followed by `then` after optional whitespace.
fn word_then(text: &str, word: &str, then: &str) -> bool {
    text.strip_prefix(word)
        .filter(|rest| !rest.bytes().next().is_some_and(is_ident))
        .is_some_and(|rest| rest.trim_start().starts_with(then))
}

/// `code` without the entry point it brings of its own, where the
/// harness's would clash with it: C++'s top-level `main` function, Java's
/// top-level class `Main` (and `public` dropped from `public class
/// Solution`, which the harness's `Main.java` cannot hold), and
/// JavaScript's top-level `console` calls, whose output the harness reads as
/// a failure.
fn without_own_main(language: Language, code: &str) -> String {
    match language {
        Language::Cpp => remove_top_level_block(code, false, |t| word_then(t, "main", "(")),
        Language::Java => {
            let code = remove_top_level_block(code, false, |t| {
                t.strip_prefix("class")
                    .is_some_and(|rest| rest.starts_with(char::is_whitespace) && word_then(rest.trim_start(), "Main", ""))
            });
            code.replace("public class Solution", "class Solution")
        }
        Language::JavaScript => without_top_level_console(code),
        Language::Python => code.to_string(),
    }
}

/// `code` without its top-level statements that start with `console.`: the
/// example calls (`console.log(f(1))`) that instruct answers end with. The
/// harness counts any printed output as a failed test, as CodeGeeX's does,
/// so these would fail a correct function.
fn without_top_level_console(code: &str) -> String {
    let b = code.as_bytes();
    let (mut state, mut depth) = (Lex::Code, 0i64);
    let mut kept = String::with_capacity(code.len());
    let (mut i, mut copied) = (0, 0);
    while i < b.len() {
        let line_start = i == 0 || b[i - 1] == b'\n';
        if line_start && state == Lex::Code && depth == 0 {
            let indent = code[i..].len() - code[i..].trim_start_matches([' ', '\t']).len();
            if code[i + indent..].starts_with("console.") {
                kept.push_str(&code[copied..i]);
                i = statement_end(b, i + indent);
                copied = i;
                continue;
            }
        }
        i += lex_step(b, i, &mut state, &mut depth, true);
    }
    kept.push_str(&code[copied..]);
    kept
}

/// Where the JavaScript statement starting at `start` ends: past its `;` or
/// the newline after it, once its parentheses, brackets and braces are
/// closed (or at the end of `code`).
fn statement_end(b: &[u8], start: usize) -> usize {
    let (mut state, mut braces, mut nesting) = (Lex::Code, 0i64, 0i64);
    let mut i = start;
    while i < b.len() {
        let in_code = state == Lex::Code;
        let c = b[i];
        if in_code && braces == 0 && nesting <= 0 && (c == b';' || c == b'\n') {
            let mut end = i + 1;
            if c == b';' && b.get(end) == Some(&b'\n') {
                end += 1;
            }
            return end;
        }
        if in_code {
            match c {
                b'(' | b'[' => nesting += 1,
                b')' | b']' => nesting -= 1,
                _ => {}
            }
        }
        i += lex_step(b, i, &mut state, &mut braces, true);
    }
    b.len()
}

/// Python body lines written without the function's indentation, indented by four spaces.
fn indent_body(body: &str) -> String {
    let first = body.lines().find(|l| !l.trim().is_empty());
    if first.is_none_or(|l| l.starts_with([' ', '\t'])) {
        return body.to_string();
    }
    body.split_inclusive('\n').map(|l| if l.trim().is_empty() { l.to_string() } else { format!("    {l}") }).collect()
}

/// The source that an instruct answer of `problem` gives: its first fenced
/// code block; when that does not define the problem's entry point, the
/// prompt followed by the block as the function's body (cut where the
/// function ends, as completions are); without a C++ `main` or Java class
/// `Main` of its own; Python, as evalplus's sanitizer leaves it (only its
/// imports and the definitions the entry point reaches, see
/// [`crate::python_sanitize`]).
pub fn instruct_source(task: CodeTask, problem: &Problem, answer: &str) -> String {
    let code = first_code_block(answer);
    let entry = entry_point(task, problem);
    let source = match (task, &entry) {
        (CodeTask::Mbpp, _) => code.to_string(),
        (CodeTask::HumanEvalX(language), Some(name)) if !defines(language, code, name) => {
            let body = if language == Language::Python { indent_body(code) } else { code.to_string() };
            format!("{}{}", problem.prompt, postprocess(task, &problem.prompt, &body))
        }
        (CodeTask::HumanEvalX(language), _) => without_own_main(language, code),
    };
    match task.language() {
        Language::Python => sanitize(&source, entry.as_deref()),
        _ => source,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::chat::render_chat;
    use crate::code_tasks::{program_of_source, MbppText};

    fn problem(prompt: &str) -> Problem {
        Problem { item: 0, task_id: "t".into(), prompt: prompt.into(), canonical: String::new(), test: "TEST".into(), mbpp: None }
    }

    const PY: CodeTask = CodeTask::HumanEvalX(Language::Python);
    const CPP: CodeTask = CodeTask::HumanEvalX(Language::Cpp);
    const PY_PROMPT: &str =
        "from typing import List\n\n\ndef helper(x):\n    return x\n\n\ndef add(a: int, b: int) -> int:\n    \"\"\" Add. \"\"\"\n";
    const CPP_PROMPT: &str = "/*\nSum.\n>>> add({1, 2})\n3\n*/\n#include<stdio.h>\nusing namespace std;\nint add(int a, int b){\n";

    #[test]
    fn the_first_fenced_block_is_taken() {
        assert_eq!(first_code_block("Here:\n```python\ndef f():\n    return 1\n```\nDone."), "def f():\n    return 1\n");
        assert_eq!(first_code_block("```\nx = 1\n```\n"), "x = 1\n");
        assert_eq!(first_code_block("def f():\n    return 1\n"), "def f():\n    return 1\n", "no fence: the whole answer");
        assert_eq!(first_code_block("a\n```py\nfirst\n```\nb\n```py\nsecond\n```\n"), "first\n", "several blocks: the first");
        assert_eq!(
            first_code_block("prefix\n```cpp\nint f(){\n    return 1;\n}"),
            "int f(){\n    return 1;\n}",
            "an unclosed block runs to the end"
        );
    }

    #[test]
    fn entry_points_come_from_the_prompt() {
        assert_eq!(entry_point(PY, &problem(PY_PROMPT)).as_deref(), Some("add"));
        assert_eq!(entry_point(CPP, &problem(CPP_PROMPT)).as_deref(), Some("add"));
        let java = "import java.util.*;\n\nclass Solution {\n    /**\n    f(x) { }\n     */\n    public List<Integer> sortThird(List<Integer> l) {\n";
        assert_eq!(entry_point(CodeTask::HumanEvalX(Language::Java), &problem(java)).as_deref(), Some("sortThird"));
        let js = "/* Sum of {a}.\n  */\nconst addUp = (a, b) => {\n";
        assert_eq!(entry_point(CodeTask::HumanEvalX(Language::JavaScript), &problem(js)).as_deref(), Some("addUp"));
        let cpp_trailing_comment = "#include<string>\nbool is_p(string s){\n    return true;\n}\nstring make_p(string str){\n    /*\n    make_p(\"a\") {x}\n    */\n";
        assert_eq!(entry_point(CPP, &problem(cpp_trailing_comment)).as_deref(), Some("make_p"));
    }

    #[test]
    fn definitions_are_told_from_calls() {
        assert!(defines(Language::Python, "import math\n\ndef add(a, b):\n    return a + b\n", "add"));
        assert!(!defines(Language::Python, "    return add_one(a) + b\n", "add"));
        assert!(defines(Language::Cpp, "int add(int a, int b) {\n    return a + b;\n}\n", "add"));
        assert!(!defines(Language::Cpp, "    if (add(a, b)) { return 1; }\n    return add(a, b);\n}\n", "add"));
        assert!(!defines(Language::Cpp, "// int add(int a, int b) {\n    return a + b;\n}\n", "add"));
        assert!(defines(Language::Java, "public int add(int a) throws Exception {\n", "add"));
        assert!(defines(Language::JavaScript, "const add = (a, b) => {\n  return a + b\n}\n", "add"));
        assert!(!defines(Language::JavaScript, "  return add == 1\n", "add"));
    }

    #[test]
    fn a_python_body_gets_the_signature_and_a_full_function_stays() {
        let p = problem(PY_PROMPT);
        // The prompt's helper, which `add` does not call, goes with the sanitizer.
        let signature = "from typing import List\ndef add(a: int, b: int) -> int:\n    \"\"\" Add. \"\"\"\n";
        let body = "Sure:\n```python\n    return a + b\n```\n";
        assert_eq!(instruct_source(PY, &p, body), format!("{signature}    return a + b"));
        let unindented = "```python\nresult = a + b\nreturn helper(result)\n```";
        assert_eq!(
            instruct_source(PY, &p, unindented),
            "from typing import List\ndef helper(x):\n    return x\ndef add(a: int, b: int) -> int:\n    \"\"\" Add. \"\"\"\n    result = a + b\n    return helper(result)"
        );
        let full = "```python\nfrom typing import List\n\ndef add(a: int, b: int) -> int:\n    return a + b\n\nassert add(1, 2) == 4\n```\nThis adds.";
        let source = instruct_source(PY, &p, full);
        assert_eq!(source, "from typing import List\ndef add(a: int, b: int) -> int:\n    return a + b", "the answer's own assert goes");
        assert_eq!(program_of_source(PY, &p, &source), format!("{source}\nTEST\n"));
    }

    #[test]
    fn a_cpp_body_gets_the_signature_and_a_full_function_stays() {
        let p = problem(CPP_PROMPT);
        let body = "```cpp\n    return a + b;\n}\nint main(){ }\n```";
        assert_eq!(instruct_source(CPP, &p, body), format!("{CPP_PROMPT}    return a + b;\n}}"));
        let full = "```cpp\n#include<vector>\nint add(int a, int b) {\n    return a + b;\n}\n\nint main() {\n    printf(\"%d\", add(1, 2));\n}\n```";
        let source = instruct_source(CPP, &p, full);
        assert_eq!(source, "#include<vector>\nint add(int a, int b) {\n    return a + b;\n}\n\n\n", "the answer's own main is dropped");
        let truncated = "```cpp\nint add(int a, int b) {\n    return a + b;\n}\nint main() {\n    assert(add(1, 2) == 3);\n    assert(add(";
        assert_eq!(instruct_source(CPP, &p, truncated), "int add(int a, int b) {\n    return a + b;\n}\n", "a main cut short goes too");
        let program = program_of_source(CPP, &p, &source);
        assert!(program.starts_with("#include<stdlib.h>\n#include<algorithm>\n"), "{program}");
        assert_eq!(program.matches("#include<vector>").count(), 1, "headers the source holds are not repeated: {program}");
        assert!(program.ends_with(&format!("{source}\nTEST")), "{program}");
    }

    #[test]
    fn java_answers_lose_their_own_main_class() {
        let java = CodeTask::HumanEvalX(Language::Java);
        let p = problem("import java.util.*;\n\nclass Solution {\n    public int add(int a, int b) {\n");
        let answer = "```java\nimport java.util.*;\n\npublic class Solution {\n    public int add(int a, int b) {\n        return a + b;\n    }\n}\n\npublic class Main {\n    public static void main(String[] args) { }\n}\n```";
        assert_eq!(
            instruct_source(java, &p, answer),
            "import java.util.*;\n\nclass Solution {\n    public int add(int a, int b) {\n        return a + b;\n    }\n}\n\n\n"
        );
    }

    #[test]
    fn javascript_answers_lose_their_top_level_console_calls() {
        let js = CodeTask::HumanEvalX(Language::JavaScript);
        let p = problem("const add = (a, b) => {\n");
        let answer = "```javascript\nconst add = (a, b) => {\n  console.log('inside');\n  return a + b;\n}\n\nconsole.log(add(1, 2)); // 3\nconsole.log(\n  add(\n    [1, 2].length, 3)\n)\nconst s = ';';\n  console.assert(add(1, 1) === 2)\n```";
        assert_eq!(
            instruct_source(js, &p, answer),
            "const add = (a, b) => {\n  console.log('inside');\n  return a + b;\n}\n\n // 3\nconst s = ';';\n",
            "calls inside the function stay; top-level ones go, however many lines they span"
        );
    }

    #[test]
    fn mbpp_answers_are_their_code_block() {
        let mut p = problem("ignored");
        p.mbpp = Some(MbppText {
            text: "Write a function to add.".into(),
            tests: vec!["assert add(1, 2) == 3".into(), "assert add(0, 0) == 0".into()],
        });
        p.canonical = "def plus(a, b):\n    return a + b\ndef add(a, b):\n    return plus(a, b)\n".into();
        p.test = "assert add(1, 2) == 3\nassert add(0, 0) == 0\n".into();
        assert_eq!(entry_point(CodeTask::Mbpp, &p).as_deref(), Some("add"), "the reference's first function that the tests call");
        assert_eq!(
            instruct_source(
                CodeTask::Mbpp,
                &p,
                "```python\ndef add(a, b):\n    return a + b\n\nprint(add(1, 2))\ndef unused():\n    return 0\n```"
            ),
            "def add(a, b):\n    return a + b"
        );
        assert_eq!(
            instruct_message(CodeTask::Mbpp, &p),
            "Please provide a self-contained Python script that solves the following problem in a markdown code block:\n```\n\"\"\"\nWrite a function to add.\nassert add(1, 2) == 3\n\"\"\"\n```\n"
        );
    }

    #[test]
    fn a_chatml_template_renders_the_exact_prompt() {
        // A ChatML template in Qwen2.5's form: a default system turn, user turns, the generation prompt.
        let template = "{%- if messages[0]['role'] == 'system' %}\n    {{- '<|im_start|>system\\n' + messages[0]['content'] + '<|im_end|>\\n' }}\n{%- else %}\n    {{- '<|im_start|>system\\nYou are a helpful assistant.<|im_end|>\\n' }}\n{%- endif %}\n{%- for message in messages %}\n    {%- if message.role == 'user' %}\n        {{- '<|im_start|>' + message.role + '\\n' + message.content + '<|im_end|>' + '\\n' }}\n    {%- endif %}\n{%- endfor %}\n{%- if add_generation_prompt %}\n    {{- '<|im_start|>assistant\\n' }}\n{%- endif %}\n";
        let p = problem("def add(a, b):\n    \"\"\" Add. \"\"\"\n");
        let prompt = instruct_prompt(PY, &p, |m| render_chat(template, m, true, "", "<|im_end|>", "test")).unwrap();
        assert_eq!(
            prompt,
            "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n<|im_start|>user\n\
             Please provide a self-contained Python script that solves the following problem in a markdown code block:\n\
             ```\ndef add(a, b):\n    \"\"\" Add. \"\"\"\n```\n<|im_end|>\n<|im_start|>assistant\n\
             Below is a Python script with a self-contained function that solves the problem and passes corresponding tests:\n```python\n"
        );
        assert_eq!(response_prefix(Language::JavaScript).lines().last(), Some("```javascript"));
    }
}
