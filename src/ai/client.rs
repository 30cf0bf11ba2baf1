//! A client for OpenAI-compatible chat completions: the one protocol that
//! OpenAI, Ollama, vLLM and LiteLLM all speak, so any of them is a
//! provider by its base URL alone.

use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use reqwest::{StatusCode, header};
use serde_json::{Value, json};

use crate::config::{AiProvider, Secret};

/// Largest provider answer read; a chat completion is a few kilobytes.
const MAX_ANSWER_BYTES: usize = 4 * 1024 * 1024;

/// Wait before the retry when the provider says nothing about it.
const DEFAULT_RETRY_WAIT: Duration = Duration::from_secs(1);

/// One part of the user's turn.
#[derive(Debug, Clone)]
pub enum Part {
    /// Plain text.
    Text(String),
    /// An image as a `data:` URL.
    ImageUrl(String),
}

/// What is asked of the model: a system instruction and the user's turn.
#[derive(Debug, Clone)]
pub struct Prompt {
    /// How the model should answer.
    pub system: String,
    /// The user's turn, in order.
    pub user: Vec<Part>,
}

/// The model's answer.
#[derive(Debug, Clone)]
pub struct Completion {
    /// The answer's text (trimmed, never empty).
    pub text: String,
    /// The model that answered, as the provider names it.
    pub model: String,
}

/// Why the provider gave no usable answer.
#[derive(Debug, thiserror::Error)]
pub enum ProviderError {
    /// An error status, after the retry where one was allowed.
    #[error("the AI provider answered {0}")]
    Status(StatusCode),
    /// No complete answer within `AI_TIMEOUT_SECS`.
    #[error("the AI provider did not answer in time")]
    Timeout,
    /// The provider could not be reached.
    #[error("the AI provider could not be reached")]
    Unreachable(#[source] reqwest::Error),
    /// An answer that is not a chat completion with text in it.
    #[error("the AI provider's answer was not a chat completion: {0}")]
    Malformed(String),
}

impl ProviderError {
    /// The `outcome` label of the calls counter.
    fn outcome(&self) -> &'static str {
        match self {
            Self::Status(_) => "http_error",
            Self::Timeout => "timeout",
            Self::Unreachable(_) => "unreachable",
            Self::Malformed(_) => "malformed",
        }
    }
}

/// A configured provider. Cheap to clone (the HTTP client is shared).
#[derive(Debug, Clone)]
pub struct AiClient {
    http: reqwest::Client,
    endpoint: String,
    model: String,
    api_key: Option<Secret>,
    timeout: Duration,
    max_tokens: u32,
}

impl AiClient {
    /// A client for `provider`, each call bounded by `timeout` (its retry
    /// included) and asking for at most `max_tokens` tokens of answer.
    pub fn new(provider: &AiProvider, timeout: Duration, max_tokens: u32) -> anyhow::Result<Self> {
        let http = reqwest::Client::builder()
            .user_agent(concat!("intake/", env!("CARGO_PKG_VERSION")))
            .connect_timeout(timeout.min(Duration::from_secs(10)))
            .build()?;
        Ok(Self {
            http,
            endpoint: format!("{}/chat/completions", provider.base_url),
            model: provider.model.clone(),
            api_key: provider.api_key.clone(),
            timeout,
            max_tokens,
        })
    }

    /// The model asked for.
    pub fn model(&self) -> &str {
        &self.model
    }

    /// Asks for one completion. A 429 or 5xx is retried once, after the
    /// provider's `Retry-After` when it gives one, if that still fits in the
    /// timeout. `operation` labels the metrics (`describe`, `chat`).
    pub async fn complete(
        &self,
        operation: &'static str,
        prompt: &Prompt,
    ) -> Result<Completion, ProviderError> {
        let started = Instant::now();
        let result = self.call(operation, prompt, started + self.timeout).await;
        let outcome = match &result {
            Ok(_) => "ok",
            Err(e) => e.outcome(),
        };
        metrics::histogram!("intake_ai_provider_duration_seconds", "operation" => operation)
            .record(started.elapsed().as_secs_f64());
        metrics::counter!("intake_ai_calls_total", "operation" => operation, "outcome" => outcome)
            .increment(1);
        if let Err(e) = &result {
            tracing::warn!(error = %e, cause = ?std::error::Error::source(e), operation, "AI provider call failed");
        }
        result
    }

    async fn call(
        &self,
        operation: &'static str,
        prompt: &Prompt,
        deadline: Instant,
    ) -> Result<Completion, ProviderError> {
        let body = request_body(&self.model, self.max_tokens, prompt);
        let mut retried = false;
        loop {
            let remaining = deadline.saturating_duration_since(Instant::now());
            if remaining.is_zero() {
                return Err(ProviderError::Timeout);
            }
            let mut request = self
                .http
                .post(&self.endpoint)
                .timeout(remaining)
                .json(&body);
            if let Some(key) = &self.api_key {
                request = request.bearer_auth(key.expose());
            }
            let response = request.send().await.map_err(transport)?;
            let status = response.status();
            if status == StatusCode::TOO_MANY_REQUESTS || status.is_server_error() {
                let wait = retry_after(response.headers()).unwrap_or(DEFAULT_RETRY_WAIT);
                if !retried && Instant::now() + wait < deadline {
                    retried = true;
                    metrics::counter!("intake_ai_retries_total", "operation" => operation)
                        .increment(1);
                    drop(response);
                    tokio::time::sleep(wait).await;
                    continue;
                }
                return Err(ProviderError::Status(status));
            }
            if !status.is_success() {
                return Err(ProviderError::Status(status));
            }
            let answer = read_bounded(response).await?;
            return parse_answer(&answer, &self.model);
        }
    }
}

fn transport(e: reqwest::Error) -> ProviderError {
    if e.is_timeout() {
        ProviderError::Timeout
    } else {
        ProviderError::Unreachable(e)
    }
}

async fn read_bounded(mut response: reqwest::Response) -> Result<Vec<u8>, ProviderError> {
    let mut answer = Vec::new();
    while let Some(chunk) = response.chunk().await.map_err(transport)? {
        if answer.len() + chunk.len() > MAX_ANSWER_BYTES {
            return Err(ProviderError::Malformed(format!(
                "the answer is larger than {MAX_ANSWER_BYTES} bytes"
            )));
        }
        answer.extend_from_slice(&chunk);
    }
    Ok(answer)
}

/// The chat-completions request. A user turn of text alone is sent as a
/// string, which text-only models behind every server accept; with an image
/// it is a list of content parts. `max_tokens` bounds what the provider
/// bills for the answer, whatever the prompt asks for.
fn request_body(model: &str, max_tokens: u32, prompt: &Prompt) -> Value {
    let user = match prompt.user.as_slice() {
        [Part::Text(text)] => json!(text),
        parts => Value::Array(
            parts
                .iter()
                .map(|p| match p {
                    Part::Text(text) => json!({"type": "text", "text": text}),
                    Part::ImageUrl(url) => json!({"type": "image_url", "image_url": {"url": url}}),
                })
                .collect(),
        ),
    };
    json!({
        "model": model,
        "messages": [
            {"role": "system", "content": prompt.system},
            {"role": "user", "content": user},
        ],
        "max_tokens": max_tokens,
        "stream": false,
    })
}

/// `choices[0].message.content`, which must be non-empty text.
fn parse_answer(answer: &[u8], asked_model: &str) -> Result<Completion, ProviderError> {
    let value: Value = serde_json::from_slice(answer)
        .map_err(|e| ProviderError::Malformed(format!("not JSON: {e}")))?;
    let text = value
        .pointer("/choices/0/message/content")
        .and_then(Value::as_str)
        .map(str::trim)
        .filter(|t| !t.is_empty())
        .ok_or_else(|| ProviderError::Malformed("no text in choices[0].message.content".into()))?;
    let model = value
        .get("model")
        .and_then(Value::as_str)
        .filter(|m| !m.is_empty())
        .unwrap_or(asked_model);
    Ok(Completion {
        text: text.to_owned(),
        model: model.to_owned(),
    })
}

/// `Retry-After` as seconds or an HTTP date.
fn retry_after(headers: &header::HeaderMap) -> Option<Duration> {
    let raw = headers.get(header::RETRY_AFTER)?.to_str().ok()?.trim();
    if let Ok(secs) = raw.parse::<f64>() {
        return (secs.is_finite() && secs >= 0.0).then(|| Duration::from_secs_f64(secs));
    }
    let at = DateTime::parse_from_rfc2822(raw).ok()?.with_timezone(&Utc);
    Some((at - Utc::now()).to_std().unwrap_or(Duration::ZERO))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_only_turns_are_strings_and_images_are_parts() {
        let text = request_body(
            "m",
            300,
            &Prompt {
                system: "s".into(),
                user: vec![Part::Text("hello".into())],
            },
        );
        assert_eq!(text["messages"][1]["content"], "hello");
        assert_eq!(text["model"], "m");
        assert_eq!(text["max_tokens"], 300);
        let image = request_body(
            "m",
            300,
            &Prompt {
                system: "s".into(),
                user: vec![
                    Part::Text("what is it".into()),
                    Part::ImageUrl("data:image/png;base64,AA==".into()),
                ],
            },
        );
        assert_eq!(image["messages"][1]["content"][1]["type"], "image_url");
        assert_eq!(
            image["messages"][1]["content"][1]["image_url"]["url"],
            "data:image/png;base64,AA=="
        );
    }

    #[test]
    fn answers_without_text_are_malformed() {
        let ok = parse_answer(
            br#"{"model":"llava:7b","choices":[{"message":{"role":"assistant","content":" A cat. "}}]}"#,
            "llava",
        )
        .unwrap();
        assert_eq!(
            (ok.text.as_str(), ok.model.as_str()),
            ("A cat.", "llava:7b")
        );
        for bad in [
            &b"<html>"[..],
            br#"{"choices":[]}"#,
            br#"{"choices":[{"message":{"content":""}}]}"#,
            br#"{"choices":[{"message":{"content":42}}]}"#,
        ] {
            assert!(matches!(
                parse_answer(bad, "m"),
                Err(ProviderError::Malformed(_))
            ));
        }
    }

    #[test]
    fn retry_after_takes_seconds_or_a_date() {
        let mut h = header::HeaderMap::new();
        h.insert(header::RETRY_AFTER, "2".parse().unwrap());
        assert_eq!(retry_after(&h), Some(Duration::from_secs(2)));
        h.insert(
            header::RETRY_AFTER,
            "Sun, 06 Nov 1994 08:49:37 GMT".parse().unwrap(),
        );
        assert_eq!(retry_after(&h), Some(Duration::ZERO));
        h.insert(header::RETRY_AFTER, "soon".parse().unwrap());
        assert_eq!(retry_after(&h), None);
    }
}
