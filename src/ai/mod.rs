//! AI descriptions of files and chat about them, through any
//! OpenAI-compatible provider, each counted against a monthly quota that
//! is taken before the provider is called and given back when it fails,
//! and each holding one of the account's concurrent AI calls while it runs.
//!
//! Once a request is handed to the provider its unit stays used unless the
//! provider fails: the provider bills it whether or not the client waits.
//! A describe runs to its end in the background when its client goes (its
//! description is stored); a chat stops with its client.

pub mod client;
pub mod extract;
pub mod pdf;
pub mod workers;

use axum::extract::State;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;
use uuid::Uuid;

use crate::{
    auth::{Account, CurrentAccount},
    error::ApiError,
    extract::{Json, Path},
    files::{self, FileView},
    quota::{
        ai_calls::AiCall,
        monthly::{Charge, Counter},
    },
    state::AppState,
};

use client::{AiClient, Completion, Part, Prompt, ProviderError};
use extract::{ExtractError, Input, Reading, Source};

/// Longest chat message, in characters.
pub const MAX_MESSAGE_CHARS: usize = 8_000;

/// Files one chat message may give as context.
pub const MAX_CHAT_FILES: usize = 10;

const DESCRIBE_INSTRUCTION: &str = "You describe files for a file library: the description is \
searched and read by people who cannot see the file. In one plain-text paragraph of at most 80 \
words, say what the file shows or contains (subjects, setting, visible text, purpose). No \
preamble, no markdown.";

const CHAT_INSTRUCTION: &str = "You are the assistant of a file library. Answer the user's \
message briefly, in plain text. When files are listed below they are the user's own, given as \
context for the message.";

impl From<ExtractError> for ApiError {
    fn from(e: ExtractError) -> Self {
        match e {
            ExtractError::Unsupported(detail) => ApiError::UnsupportedMediaType(detail),
            ExtractError::Bound(detail) => ApiError::unprocessable(detail),
            ExtractError::Busy(detail) => ApiError::Busy {
                detail,
                retry_after: extract::BUSY_RETRY_AFTER_SECS,
            },
            ExtractError::Storage(e) => ApiError::Internal(e.into()),
            ExtractError::Worker(detail) => ApiError::Internal(anyhow::anyhow!(detail)),
        }
    }
}

impl From<ProviderError> for ApiError {
    fn from(e: ProviderError) -> Self {
        ApiError::AiUnavailable(format!("{e}; nothing was counted, try again later"))
    }
}

/// The provider, or `ai_unavailable` when none is configured.
fn provider(state: &AppState) -> Result<&AiClient, ApiError> {
    state.ai.as_ref().ok_or_else(|| {
        ApiError::AiUnavailable("no AI provider is configured on this server (AI_BASE_URL)".into())
    })
}

/// `POST /files/{id}/describe` answer.
#[derive(Debug, Serialize, ToSchema)]
pub struct Described {
    /// The file described.
    pub file_id: Uuid,
    /// The description, now stored on the file.
    pub description: String,
    /// The model that wrote it.
    pub model: String,
}

/// Counts, by operation, the AI requests whose client went away before
/// their answer: a describe then finishes in the background, a chat stops.
struct ClientWatch {
    operation: &'static str,
    answered: bool,
}

impl ClientWatch {
    fn new(operation: &'static str) -> Self {
        Self {
            operation,
            answered: false,
        }
    }

    fn answered(mut self) {
        self.answered = true;
    }
}

impl Drop for ClientWatch {
    fn drop(&mut self) {
        if !self.answered {
            metrics::counter!("intake_ai_clients_gone_total", "operation" => self.operation)
                .increment(1);
        }
    }
}

/// Describes one of the account's files and stores the description on it.
/// Refusals that need no reading (another account's file, a video, no
/// provider, the account's AI calls all running) come before the quota is
/// touched. From the unit taken on, the describe runs to its end whether or
/// not the caller waits for it.
pub async fn describe_file(
    state: &AppState,
    account: &Account,
    file_id: Uuid,
) -> Result<Described, ApiError> {
    let (file, key) = files::find(&state.db, account.id, file_id).await?;
    let source = extract::plan(&file, &state.config.ai)?;
    let ai = provider(state)?.clone();
    let call = AiCall::begin(
        &state.db,
        account.id,
        state.config.ai.concurrency_per_account,
    )
    .await?;
    let charge = match Charge::take(
        &state.db,
        account.id,
        Counter::AiDescriptions,
        account.limits().ai_descriptions_per_month,
    )
    .await
    {
        Ok(charge) => charge,
        Err(e) => {
            call.end().await;
            return Err(e.into());
        }
    };
    let taken = Taken {
        state: state.clone(),
        account_id: account.id,
        file,
        key,
        source,
        ai,
    };
    tokio::spawn(taken.describe(call, charge))
        .await
        .map_err(|e| ApiError::Internal(anyhow::anyhow!("a describe task failed: {e}")))?
}

/// A describe past its checks, with what it needs to run on its own.
struct Taken {
    state: AppState,
    account_id: Uuid,
    file: FileView,
    key: String,
    source: Source,
    ai: AiClient,
}

impl Taken {
    /// Reads the file, asks the provider, stores the answer; the unit goes
    /// back if the reading or the provider fails, and the call ends last.
    async fn describe(self, call: AiCall, mut charge: Charge) -> Result<Described, ApiError> {
        let state = &self.state;
        let answered = async {
            let reading = Reading {
                store: state.store.as_ref(),
                key: &self.key,
                size: u64::try_from(self.file.size).unwrap_or(0),
                account: self.account_id,
            };
            let input =
                extract::read(reading, self.source, &state.config.ai, &state.ai_workers).await?;
            let prompt = describe_prompt(&self.file, input);
            charge.spend();
            Ok::<_, ApiError>(self.ai.complete("describe", &prompt).await?)
        }
        .await;
        let answer = match answered {
            Ok(answer) => answer,
            Err(e) => {
                charge.refund().await;
                call.end().await;
                return Err(e);
            }
        };
        // The provider did the work: it counts even if the file went meanwhile.
        charge.keep();
        let stored =
            files::set_description(&state.db, self.account_id, self.file.id, &answer.text).await;
        call.end().await;
        stored?.ok_or_else(|| ApiError::not_found("file"))?;
        Ok(Described {
            file_id: self.file.id,
            description: answer.text,
            model: answer.model,
        })
    }
}

fn describe_prompt(file: &FileView, input: Input) -> Prompt {
    let user = match input {
        Input::Image(url) => vec![
            Part::Text(format!(
                "Describe this image. Its file name is {:?}.",
                file.filename
            )),
            Part::ImageUrl(url),
        ],
        Input::Text(text) => vec![Part::Text(format!(
            "Describe this document. Its file name is {:?} and its type {}. Its text follows.\n\n{text}",
            file.filename, file.content_type
        ))],
    };
    Prompt {
        system: DESCRIBE_INSTRUCTION.into(),
        user,
    }
}

/// Describes a file: the description is stored on it (replacing an earlier
/// one) and `GET /files?q=` finds it. Counts one AI description this month.
#[utoipa::path(post, path = "/files/{id}/describe", tag = "ai", params(("id" = Uuid, Path)),
    responses(
        (status = 200, body = Described),
        (status = 401, description = "unauthorized"),
        (status = 403, description = "csrf_token_required, api_access_not_in_tier"),
        (status = 404, description = "not_found: no such file of the caller's"),
        (status = 415, description = "unsupported_media_type: a video, or a document whose text cannot be extracted (nothing counted)"),
        (status = 422, description = "invalid_request: the file is past a decoding bound (size, 100 megapixels, a PDF's objects or inflated bytes, time); nothing counted"),
        (status = 429, description = "monthly_quota_exceeded (with limit, used, Retry-After to next month), concurrent_request_limit (the account's AI calls all running; with Retry-After) or rate_limited"),
        (status = 503, description = "ai_unavailable: no provider configured, or it failed (nothing counted); service_unavailable: no worker came free to read the file in time (nothing counted, with Retry-After)"),
    ))]
pub async fn describe(
    State(state): State<AppState>,
    auth: CurrentAccount,
    Path(id): Path<Uuid>,
) -> Result<Json<Described>, ApiError> {
    let watch = ClientWatch::new("describe");
    let described = describe_file(&state, &auth.account, id).await;
    watch.answered();
    Ok(Json(described?))
}

/// `POST /chat` body.
#[derive(Debug, Deserialize, ToSchema)]
pub struct ChatRequest {
    /// The user's message, 1 to 8,000 characters.
    #[schema(min_length = 1, max_length = 8000)]
    pub message: String,
    /// Up to 10 of the caller's files whose descriptions (or text, for text
    /// documents) the model is given as context.
    #[schema(max_items = 10)]
    pub file_ids: Option<Vec<Uuid>>,
}

/// `POST /chat` answer.
#[derive(Debug, Serialize, ToSchema)]
pub struct ChatReply {
    /// The model's answer.
    pub reply: String,
    /// The model that answered.
    pub model: String,
}

/// A chat message checked at the edge: its length and its file list.
#[derive(Debug)]
pub struct ChatMessage {
    message: String,
    file_ids: Vec<Uuid>,
}

impl ChatMessage {
    /// Checks the request: 1 to 8,000 characters, at most 10 distinct files.
    pub fn parse(req: ChatRequest) -> Result<Self, ApiError> {
        let chars = req.message.chars().count();
        if chars == 0 || chars > MAX_MESSAGE_CHARS {
            return Err(ApiError::unprocessable(format!(
                "message must be 1 to {MAX_MESSAGE_CHARS} characters (it has {chars})"
            )));
        }
        let mut file_ids = req.file_ids.unwrap_or_default();
        if file_ids.len() > MAX_CHAT_FILES {
            return Err(ApiError::unprocessable(format!(
                "file_ids may name at most {MAX_CHAT_FILES} files"
            )));
        }
        let mut seen = std::collections::HashSet::new();
        file_ids.retain(|id| seen.insert(*id));
        Ok(Self {
            message: req.message,
            file_ids,
        })
    }
}

/// Answers a chat message with the named files as context. Every file must
/// be the caller's, a provider must be configured and one of the account's
/// AI calls free before the quota is touched; a provider failure gives the
/// unit back, and so does a client gone before the provider was asked.
pub async fn reply(
    state: &AppState,
    account: &Account,
    msg: ChatMessage,
) -> Result<Completion, ApiError> {
    let mut files = Vec::with_capacity(msg.file_ids.len());
    for id in &msg.file_ids {
        files.push(files::find(&state.db, account.id, *id).await?);
    }
    let ai = provider(state)?;
    let call = AiCall::begin(
        &state.db,
        account.id,
        state.config.ai.concurrency_per_account,
    )
    .await?;
    let mut charge = match Charge::take(
        &state.db,
        account.id,
        Counter::ChatMessages,
        account.limits().chat_messages_per_month,
    )
    .await
    {
        Ok(charge) => charge,
        Err(e) => {
            call.end().await;
            return Err(e.into());
        }
    };
    let answered = async {
        let context = chat_context(state, &files).await?;
        let prompt = Prompt {
            system: format!("{CHAT_INSTRUCTION}{context}"),
            user: vec![Part::Text(msg.message)],
        };
        charge.spend();
        Ok::<_, ApiError>(ai.complete("chat", &prompt).await?)
    }
    .await;
    match &answered {
        Ok(_) => charge.keep(),
        Err(_) => charge.refund().await,
    }
    call.end().await;
    answered
}

/// Each file's name, type and description, and the text of text documents
/// (the character bound shared between them).
async fn chat_context(state: &AppState, files: &[(FileView, String)]) -> Result<String, ApiError> {
    if files.is_empty() {
        return Ok(String::new());
    }
    let share = state.config.ai.max_input_chars / files.len();
    let mut context = String::from("\n\nFiles:");
    for (file, key) in files {
        context.push_str(&format!(
            "\n\n## {:?} ({}, {} bytes)\n",
            file.filename, file.content_type, file.size
        ));
        match &file.description {
            Some(d) => context.push_str(&format!("Description: {}\n", extract::cut(d, share))),
            None if !extract::is_text(file) => context.push_str("Not described yet.\n"),
            None => {}
        }
        if extract::is_text(file) {
            let size = u64::try_from(file.size).unwrap_or(0);
            let text = extract::read_text(state.store.as_ref(), key, size, share).await?;
            context.push_str(&format!("Text:\n{text}\n"));
        }
    }
    Ok(context)
}

/// Sends a message to the model, with up to 10 of the caller's files as
/// context. Counts one chat message this month.
#[utoipa::path(post, path = "/chat", tag = "ai", request_body = ChatRequest,
    responses(
        (status = 200, body = ChatReply),
        (status = 400, description = "invalid_request: malformed JSON"),
        (status = 401, description = "unauthorized"),
        (status = 403, description = "csrf_token_required, api_access_not_in_tier"),
        (status = 404, description = "not_found: a file_id that is not the caller's"),
        (status = 413, description = "payload_too_large: a body above 64 KiB"),
        (status = 415, description = "unsupported_media_type: not a JSON body"),
        (status = 422, description = "invalid_request: an empty or too long message, more than 10 file_ids, a missing field"),
        (status = 429, description = "monthly_quota_exceeded (with limit, used, Retry-After to next month), concurrent_request_limit (the account's AI calls all running; with Retry-After) or rate_limited"),
        (status = 503, description = "ai_unavailable: no provider configured, or it failed (nothing counted)"),
    ))]
pub async fn chat(
    State(state): State<AppState>,
    auth: CurrentAccount,
    Json(body): Json<ChatRequest>,
) -> Result<Json<ChatReply>, ApiError> {
    let msg = ChatMessage::parse(body)?;
    let watch = ClientWatch::new("chat");
    let answer = reply(&state, &auth.account, msg).await;
    watch.answered();
    let answer = answer?;
    Ok(Json(ChatReply {
        reply: answer.text,
        model: answer.model,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(message: &str, n: usize) -> ChatRequest {
        ChatRequest {
            message: message.into(),
            file_ids: Some((0..n).map(|_| Uuid::new_v4()).collect()),
        }
    }

    #[test]
    fn chat_messages_are_held_to_their_bounds() {
        assert!(ChatMessage::parse(req("", 0)).is_err());
        assert!(ChatMessage::parse(req(&"é".repeat(8_000), 10)).is_ok());
        assert!(ChatMessage::parse(req(&"é".repeat(8_001), 0)).is_err());
        assert!(ChatMessage::parse(req("hi", 11)).is_err());
        let id = Uuid::new_v4();
        let twice = ChatMessage::parse(ChatRequest {
            message: "hi".into(),
            file_ids: Some(vec![id, id]),
        })
        .unwrap();
        assert_eq!(twice.file_ids, [id]);
    }
}
