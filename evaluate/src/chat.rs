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

fn raise_exception(message: String) -> Result<String, JinjaError> {
    Err(JinjaError::new(ErrorKind::InvalidOperation, message))
}

/// Renders `template` over `messages` with `add_generation_prompt`,
/// `bos_token` and `eos_token` in scope; `source` names where the template
/// came from, for errors.
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
    let fail = |e: JinjaError| EvalError::Input(format!("chat template of {source}: {e:#}"));
    env.add_template("chat", template).map_err(fail)?;
    let rendered = env
        .get_template("chat")
        .map_err(fail)?
        .render(context! { messages => messages, add_generation_prompt => add_generation_prompt, bos_token => bos_token, eos_token => eos_token })
        .map_err(fail)?;
    Ok(rendered)
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
    fn python_string_methods_and_block_trimming_work() {
        // As Jinja2 renders it with trim_blocks and lstrip_blocks (transformers' settings).
        let template = "{% for m in messages %}\n{{ m.content.strip() }}|{% endfor %}{{ eos_token }}\n  {% if true %}y{% endif %}";
        let out = render_chat(template, &[ChatMessage::user("  hi ")], false, "<s>", "</s>", "t").unwrap();
        assert_eq!(out, "hi|</s>\ny");
    }
}
