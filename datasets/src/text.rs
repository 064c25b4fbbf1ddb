//! Turning a data record (a JSON object) into document text: `--field NAME` or
//! a `--template` with `{field}` placeholders.
//!
//! Field names may be dotted paths into nested objects (`{translation.en}`); a
//! path step over a list applies to each element (`{choices.text}` on a list of
//! `{text, label}` objects gives the list of texts), and a numeric step indexes a
//! list (`{endings.0}`).
//!
//! Values become text as follows: strings as they are, numbers and booleans in
//! their JSON form, lists by joining their elements' texts with a blank line
//! (`"\n\n"`), so a list of solutions becomes one document. A string holding a
//! JSON list of strings (APPS stores `solutions` so) is decoded and joined the
//! same way. A null value makes the record skipped; an object is an error that
//! asks for a dotted path into it.

use serde_json::Value;

use crate::DatasetsError;

/// The separator between the elements of a list value.
pub const LIST_SEPARATOR: &str = "\n\n";

/// One piece of a template.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Part {
    /// Literal text.
    Literal(String),
    /// A field, as its dotted path split on dots.
    Field(Vec<String>),
}

/// How the text of a record is made: one field, or several joined by a template.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TextSpec {
    source: String,
    parts: Vec<Part>,
}

/// Why a record's text could not be made.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FieldProblem {
    /// The field (dotted path) is absent.
    Missing(String),
    /// The field's value cannot be turned into text; the description of what was found.
    Bad(String, String),
}

impl TextSpec {
    /// The text of one field (a dotted path).
    pub fn field(name: &str) -> Result<TextSpec, DatasetsError> {
        if name.is_empty() || name.split('.').any(str::is_empty) {
            return Err(DatasetsError::BadOption {
                option: "--field".into(),
                message: format!("`{name}` is not a field name (expected NAME or a dotted path such as translation.en)"),
            });
        }
        Ok(TextSpec { source: format!("{{{name}}}"), parts: vec![Part::Field(name.split('.').map(str::to_string).collect())] })
    }

    /// Parses a template: `{name}` or `{a.b}` placeholders, `{{` and `}}` for
    /// literal braces, and the escapes `\n`, `\t` and `\\` in literal text (so a
    /// shell's `"{prompt}\n{code}"` means a newline).
    pub fn template(template: &str) -> Result<TextSpec, DatasetsError> {
        let bad = |message: String| DatasetsError::Template { template: template.to_string(), message };
        let mut parts = Vec::new();
        let mut literal = String::new();
        let mut chars = template.chars().peekable();
        while let Some(c) = chars.next() {
            match c {
                '{' if chars.peek() == Some(&'{') => {
                    chars.next();
                    literal.push('{');
                }
                '}' if chars.peek() == Some(&'}') => {
                    chars.next();
                    literal.push('}');
                }
                '{' => {
                    let mut name = String::new();
                    loop {
                        match chars.next() {
                            Some('}') => break,
                            Some('{') => return Err(bad(format!("`{{` inside the placeholder `{{{name}`"))),
                            Some(c) => name.push(c),
                            None => return Err(bad(format!("the placeholder `{{{name}` is not closed with `}}`"))),
                        }
                    }
                    let name = name.trim();
                    if name.is_empty() || name.split('.').any(str::is_empty) {
                        return Err(bad(format!("`{{{name}}}` does not name a field (expected {{NAME}} or {{a.b}})")));
                    }
                    if !literal.is_empty() {
                        parts.push(Part::Literal(std::mem::take(&mut literal)));
                    }
                    parts.push(Part::Field(name.split('.').map(str::to_string).collect()));
                }
                '}' => return Err(bad("a lone `}` (write `}}` for a literal brace)".into())),
                '\\' => match chars.peek() {
                    Some('n') => {
                        chars.next();
                        literal.push('\n');
                    }
                    Some('t') => {
                        chars.next();
                        literal.push('\t');
                    }
                    Some('\\') => {
                        chars.next();
                        literal.push('\\');
                    }
                    _ => literal.push('\\'),
                },
                c => literal.push(c),
            }
        }
        if !literal.is_empty() {
            parts.push(Part::Literal(literal));
        }
        if !parts.iter().any(|p| matches!(p, Part::Field(_))) {
            return Err(bad("it names no field; put field names in braces, e.g. \"{prompt}\\n{canonical_solution}\"".into()));
        }
        Ok(TextSpec { source: template.to_string(), parts })
    }

    /// The template text as given (`{name}` for a single field).
    pub fn as_str(&self) -> &str {
        &self.source
    }

    /// The top-level field names the spec reads (first path steps), in order, without repeats.
    pub fn top_level_fields(&self) -> Vec<String> {
        let mut out: Vec<String> = Vec::new();
        for p in &self.parts {
            if let Part::Field(path) = p {
                if !out.contains(&path[0]) {
                    out.push(path[0].clone());
                }
            }
        }
        out
    }

    /// The text of `record`; `Ok(None)` when a field is null (the record is skipped).
    pub fn render(&self, record: &Value) -> Result<Option<String>, FieldProblem> {
        let mut out = String::new();
        for p in &self.parts {
            match p {
                Part::Literal(s) => out.push_str(s),
                Part::Field(path) => {
                    let value = lookup(record, path).ok_or_else(|| FieldProblem::Missing(path.join(".")))?;
                    match value_text(&value).map_err(|found| FieldProblem::Bad(path.join("."), found))? {
                        Some(t) => out.push_str(&t),
                        None => return Ok(None),
                    }
                }
            }
        }
        Ok(Some(out))
    }
}

/// Follows a dotted path; a non-numeric step over a list maps over its elements.
fn lookup(value: &Value, path: &[String]) -> Option<Value> {
    let Some((first, rest)) = path.split_first() else {
        return Some(value.clone());
    };
    match value {
        Value::Object(map) => lookup(map.get(first)?, rest),
        Value::Array(items) => match first.parse::<usize>() {
            Ok(i) => lookup(items.get(i)?, rest),
            Err(_) => items.iter().map(|v| lookup(v, path)).collect::<Option<Vec<_>>>().map(Value::Array),
        },
        Value::String(s) => match parse_json_list(s) {
            Some(list) => lookup(&Value::Array(list), path),
            None => None,
        },
        _ => None,
    }
}

/// A string that holds a JSON list (`["a", "b"]`), decoded.
fn parse_json_list(s: &str) -> Option<Vec<Value>> {
    let t = s.trim();
    if !(t.starts_with('[') && t.ends_with(']')) {
        return None;
    }
    match serde_json::from_str::<Value>(t) {
        Ok(Value::Array(items)) if items.iter().all(|v| v.is_string()) && !items.is_empty() => Some(items),
        _ => None,
    }
}

fn describe(value: &Value) -> String {
    match value {
        Value::Object(map) => format!(
            "an object with keys [{}]; name one of them with a dotted path, e.g. {{field.{}}}",
            map.keys().cloned().collect::<Vec<_>>().join(", "),
            map.keys().next().map(String::as_str).unwrap_or("key")
        ),
        other => other.to_string(),
    }
}

/// The text of a value: see the module documentation. `Err` describes an object value.
pub fn value_text(value: &Value) -> Result<Option<String>, String> {
    match value {
        Value::Null => Ok(None),
        Value::String(s) => match parse_json_list(s) {
            Some(items) => value_text(&Value::Array(items)),
            None => Ok(Some(s.clone())),
        },
        Value::Bool(b) => Ok(Some(b.to_string())),
        Value::Number(n) => Ok(Some(n.to_string())),
        Value::Array(items) => {
            let mut texts = Vec::with_capacity(items.len());
            for item in items {
                if let Some(t) = value_text(item)? {
                    texts.push(t);
                }
            }
            Ok(Some(texts.join(LIST_SEPARATOR)))
        }
        Value::Object(_) => Err(describe(value)),
    }
}
