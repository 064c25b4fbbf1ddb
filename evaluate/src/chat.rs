//! Chat templates: a model's Jinja template rendered with minijinja the way
//! transformers' `apply_chat_template` renders it (`trim_blocks`,
//! `lstrip_blocks`, `raise_exception`, Python string methods).

use minijinja::{context, Environment, Error as JinjaError, ErrorKind};
use model::LoadedModel;
use serde::Serialize;

use crate::EvalError;

/// One message of a conversation.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ChatMessage {
    /// Who speaks: system, user or assistant.
    pub role: String,
    /// What is said.
    pub content: String,
}

impl ChatMessage {
    /// A message from the user.
    pub fn user(content: impl Into<String>) -> Self {
        ChatMessage { role: "user".into(), content: content.into() }
    }
}

/// Most instructions a chat template may run to render one conversation:
/// real templates take thousands, and a model file is a stranger's input,
/// so a template that loops without end fails instead of hanging.
const TEMPLATE_FUEL: u64 = 5_000_000;

/// Most bytes a rendered conversation may take beyond its messages' own,
/// so a template cannot fill the memory (a real one adds a few hundred).
const OUTPUT_SLACK: usize = 1 << 20;

/// The rendered text, refusing to grow past its limit.
struct BoundedOutput {
    text: Vec<u8>,
    limit: usize,
}

impl std::io::Write for BoundedOutput {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        if self.text.len() + bytes.len() > self.limit {
            return Err(std::io::Error::other("the rendered text reached its limit"));
        }
        self.text.extend_from_slice(bytes);
        Ok(bytes.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

fn raise_exception(message: String) -> Result<String, JinjaError> {
    Err(JinjaError::new(ErrorKind::InvalidOperation, message))
}

/// Renders `template` over `messages` with `add_generation_prompt`,
/// `bos_token` and `eos_token` in scope; `source` names where the template
/// came from, for errors. A template that runs more than [`TEMPLATE_FUEL`]
/// instructions, or writes more than [`OUTPUT_SLACK`] bytes beyond the
/// messages' own, is refused.
pub fn render_chat(
    template: &str,
    messages: &[ChatMessage],
    add_generation_prompt: bool,
    bos_token: &str,
    eos_token: &str,
    source: &str,
) -> Result<String, EvalError> {
    let mut env = Environment::new();
    env.set_trim_blocks(true);
    env.set_lstrip_blocks(true);
    env.set_unknown_method_callback(minijinja_contrib::pycompat::unknown_method_callback);
    env.add_function("raise_exception", raise_exception);
    env.set_fuel(Some(TEMPLATE_FUEL));
    let limit = messages.iter().map(|m| m.role.len() + m.content.len()).sum::<usize>() + bos_token.len() + eos_token.len() + OUTPUT_SLACK;
    let fail = |e: JinjaError| {
        let why = match e.kind() {
            ErrorKind::OutOfFuel => format!("it ran more than {TEMPLATE_FUEL} instructions (a loop without end?)"),
            ErrorKind::WriteFailure => format!("the rendered conversation passed {limit} bytes (a template that grows without end?)"),
            _ => format!("{e:#}"),
        };
        EvalError::Input(format!("chat template of {source}: {why}"))
    };
    env.add_template("chat", template).map_err(fail)?;
    let mut out = BoundedOutput { text: Vec::new(), limit };
    env.get_template("chat")
        .map_err(fail)?
        .render_captured_to(
            context! { messages => messages, add_generation_prompt => add_generation_prompt, bos_token => bos_token, eos_token => eos_token },
            &mut out,
        )
        .map_err(fail)?;
    String::from_utf8(out.text).map_err(|e| EvalError::Input(format!("chat template of {source}: rendered invalid UTF-8 ({e})")))
}

/// Renders the chat template of `loaded` (an error naming the model when it
/// has none), with its tokenizer's BOS and EOS token texts.
pub fn render_model_chat(loaded: &LoadedModel, messages: &[ChatMessage], add_generation_prompt: bool) -> Result<String, EvalError> {
    let source = loaded.path.display().to_string();
    let template = loaded.chat_template.as_deref().ok_or_else(|| {
        EvalError::Input(format!(
            "{source} has no chat template (expected GGUF metadata `tokenizer.chat_template`, or `chat_template` in tokenizer_config.json)"
        ))
    })?;
    let tokenizer = loaded.tokenizer()?;
    let text = |id: Option<u32>| id.and_then(|id| tokenizer.inner().id_to_token(id)).unwrap_or_default();
    render_chat(template, messages, add_generation_prompt, &text(tokenizer.bos_id()), &text(tokenizer.eos_id()), &source)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn raise_exception_fails_the_render_with_its_message() {
        let err = render_chat("{{ raise_exception('only user turns') }}", &[], false, "", "", "t").unwrap_err();
        assert!(err.to_string().contains("only user turns"), "{err}");
    }

    #[test]
    fn a_template_that_loops_or_grows_without_end_is_refused_quickly() {
        let started = std::time::Instant::now();
        let looping = "{% for i in range(100000) %}{% for j in range(100000) %}{% endfor %}{% endfor %}";
        let err = render_chat(looping, &[], false, "", "", "model.gguf").unwrap_err().to_string();
        assert!(err.contains("model.gguf") && err.contains("instructions"), "{err}");
        let growing = "{% for i in range(100000) %}{{ 'x' * 1000000 }}{% endfor %}";
        let err = render_chat(growing, &[ChatMessage::user("hi")], false, "", "", "model.gguf").unwrap_err().to_string();
        assert!(err.contains(&format!("passed {} bytes", "user".len() + "hi".len() + OUTPUT_SLACK)), "{err}");
        // Up to the limit is fine: the messages' bytes and the slack.
        let long = "x".repeat(3 * OUTPUT_SLACK);
        let out = render_chat("{{ messages[0].content }}{{ 'y' * 1000 }}", &[ChatMessage::user(long.clone())], false, "", "", "t").unwrap();
        assert_eq!(out.len(), long.len() + 1000);
        assert!(started.elapsed().as_secs() < 30, "refusing took {:?}", started.elapsed());
    }

    #[test]
    fn python_string_methods_and_block_trimming_work() {
        // As Jinja2 renders it with trim_blocks and lstrip_blocks (transformers' settings).
        let template = "{% for m in messages %}\n{{ m.content.strip() }}|{% endfor %}{{ eos_token }}\n  {% if true %}y{% endif %}";
        let out = render_chat(template, &[ChatMessage::user("  hi ")], false, "<s>", "</s>", "t").unwrap();
        assert_eq!(out, "hi|</s>\ny");
    }
}
