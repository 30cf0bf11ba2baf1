//! The AI settings: whether a provider is configured, which one, and the
//! bounds on what is sent to it.

use std::time::Duration;

use super::{
    MB,
    env::{ConfigError, Env},
    secret::Secret,
};

/// The OpenAI-compatible provider behind `/files/{id}/describe` and `/chat`.
#[derive(Debug, Clone)]
pub struct AiProvider {
    /// Base URL including the API version, e.g. `http://localhost:11434/v1`
    /// (no trailing slash); requests go to `{base_url}/chat/completions`.
    pub base_url: String,
    /// The model asked for.
    pub model: String,
    /// Sent as a Bearer token when set (local servers often need none).
    pub api_key: Option<Secret>,
}

/// Settings of the AI features.
#[derive(Debug, Clone)]
pub struct AiConfig {
    /// `None` when `AI_BASE_URL` is unset: the AI routes answer `ai_unavailable`.
    pub provider: Option<AiProvider>,
    /// Bound on one provider call, its retry included.
    pub timeout: Duration,
    /// Longest side, in pixels, of an image sent to the provider.
    pub image_max_pixels: u32,
    /// Characters of text sent to the provider at most.
    pub max_input_chars: usize,
    /// Bound on extracting a document's text (PDFs).
    pub extract_timeout: Duration,
    /// Largest file that is read to be described.
    pub max_file_bytes: u64,
    /// `max_tokens` of every provider request: what one call can cost.
    pub max_output_tokens: u32,
    /// AI calls (describes and chats) of one account running at once,
    /// across every instance.
    pub concurrency_per_account: u32,
}

/// The `AI_*` variables.
pub(super) fn ai(env: &Env<'_>) -> Result<AiConfig, ConfigError> {
    Ok(AiConfig {
        provider: provider(env)?,
        timeout: env.positive_secs("AI_TIMEOUT_SECS", 60)?,
        image_max_pixels: env.positive_as("AI_IMAGE_MAX_PIXELS", 1568)?,
        max_input_chars: env.positive_as("AI_MAX_INPUT_CHARS", 32_000)?,
        extract_timeout: env.positive_secs("AI_EXTRACT_TIMEOUT_SECS", 10)?,
        max_file_bytes: env.positive("AI_MAX_FILE_BYTES", 64 * MB)?,
        max_output_tokens: env.positive_as("AI_MAX_OUTPUT_TOKENS", 1024)?,
        concurrency_per_account: env.positive_as("AI_CONCURRENCY_PER_ACCOUNT", 2)?,
    })
}

/// The provider, when `AI_BASE_URL` names one; it then needs a model.
fn provider(env: &Env<'_>) -> Result<Option<AiProvider>, ConfigError> {
    let Some(raw) = env.opt("AI_BASE_URL") else {
        return Ok(None);
    };
    let base_url = raw.trim().trim_end_matches('/').to_owned();
    match url::Url::parse(&base_url) {
        Ok(u) if matches!(u.scheme(), "http" | "https") => {}
        _ => {
            return Err(ConfigError::invalid(
                "AI_BASE_URL",
                format!("expected an http(s) URL, got {base_url:?}"),
            ));
        }
    }
    Ok(Some(AiProvider {
        base_url,
        model: env.required("AI_MODEL")?,
        api_key: env.opt_secret("AI_API_KEY"),
    }))
}
