//! Building the prompt text: the model's chat template (chat mode) or the text as is (raw).

use crate::error::Result;
use crate::llama::{ChatMessage, Model, Token};

/// How to turn the user's text into tokens.
#[derive(Debug, Clone, Default)]
pub struct PromptSpec {
    pub user: String,
    pub system: Option<String>,
    /// Earlier turns of a chat, oldest first, between the system prompt and `user` (chat
    /// mode only).
    pub history: Vec<Turn>,
    /// Plain completion of `user`: no chat template, no history.
    pub raw: bool,
}

impl PromptSpec {
    /// Refuses a request with nothing to answer: an empty (or blank) user message.
    pub fn validate(&self) -> crate::Result<()> {
        if self.user.trim().is_empty() {
            return Err(crate::Error::InvalidParam("the prompt is empty".into()));
        }
        Ok(())
    }
}

/// One earlier message of a chat.
#[derive(Debug, Clone, PartialEq)]
pub struct Turn {
    /// "user" or "assistant" (any role the model's template knows).
    pub role: String,
    pub content: String,
}

/// The formatted prompt and its tokens.
pub struct Prompt {
    pub text: String,
    pub tokens: Vec<Token>,
}

/// Formats and tokenizes a prompt. Chat mode parses special tokens (the template's markers);
/// raw mode treats the text literally. BOS is added only where the model wants it and the
/// template did not already write it.
pub fn build(model: &Model, spec: &PromptSpec) -> Result<Prompt> {
    if spec.raw {
        let tokens = model.tokenize(&spec.user, true, false)?;
        return Ok(Prompt {
            text: spec.user.clone(),
            tokens,
        });
    }
    let mut msgs = Vec::new();
    if let Some(sys) = spec.system.as_deref().filter(|s| !s.is_empty()) {
        msgs.push(ChatMessage {
            role: "system",
            content: sys,
        });
    }
    msgs.extend(spec.history.iter().map(|t| ChatMessage {
        role: &t.role,
        content: &t.content,
    }));
    msgs.push(ChatMessage {
        role: "user",
        content: &spec.user,
    });
    let text = model.apply_chat_template(&msgs)?;
    let template_has_bos = model
        .auto_bos_text()
        .is_some_and(|bos| !bos.is_empty() && text.starts_with(&bos));
    let tokens = model.tokenize(&text, !template_has_bos, true)?;
    Ok(Prompt { text, tokens })
}
