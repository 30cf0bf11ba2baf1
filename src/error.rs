//! The one error type of the HTTP API and its RFC 9457 problem+json form.
//!
//! Every failure a client can see is an [`ApiError`]; each case carries the
//! stable snake_case `code` of DESIGN.md that clients branch on. Features have
//! their own error enums and convert into this one.

use axum::{
    http::{HeaderValue, StatusCode, header},
    response::{IntoResponse, Response},
};
use problem_details::ProblemDetails;
use serde_json::{Map, Value, json};

use crate::{sniff::SniffError, storage::StorageError};

/// An error answered to the client as problem+json.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// 401: no valid credentials.
    #[error("{0}")]
    Unauthorized(String),
    /// 403: a cookie-authenticated request that changes state lacks its CSRF token.
    #[error("this request needs the X-CSRF-Token header that login returned")]
    CsrfTokenRequired,
    /// 403: authenticated, but not allowed.
    #[error("{0}")]
    Forbidden(String),
    /// 403: FREE accounts cannot create API keys.
    #[error("API keys need a paid tier (starter or above)")]
    ApiKeyRequiresPaidTier,
    /// 403: the account's tier no longer includes API access.
    #[error("the account's tier does not include API access; use the dashboard or upgrade")]
    ApiAccessNotInTier,
    /// 404.
    #[error("{0}")]
    NotFound(String),
    /// 409.
    #[error("{0}")]
    Conflict(String),
    /// 409: a request with the same `Idempotency-Key` is still running.
    #[error("a request with this Idempotency-Key is still running; retry when it has ended")]
    IdempotencyKeyInUse,
    /// 422: an `Idempotency-Key` sent again with another body.
    #[error(
        "this Idempotency-Key was first sent with another body; use a new key for a new request"
    )]
    IdempotencyKeyReused,
    /// 410.
    #[error("{0}")]
    Gone(String),
    /// 412: a tus request without `Tus-Resumable: 1.0.0`.
    #[error("this server speaks tus 1.0.0: send Tus-Resumable: 1.0.0")]
    TusVersionUnsupported,
    /// 423: another request is writing this resumable upload right now.
    #[error("{0}")]
    UploadLocked(String),
    /// 460: the body does not match its `Upload-Checksum`.
    #[error("the body does not match its Upload-Checksum; nothing of it was kept")]
    ChecksumMismatch,
    /// 400 (malformed) or 422 (well-formed but invalid).
    #[error("{detail}")]
    InvalidRequest {
        /// 400 or 422.
        status: StatusCode,
        /// What is wrong.
        detail: String,
    },
    /// 413: a body above what the route accepts.
    #[error("the request body is larger than the {limit} bytes this route accepts")]
    PayloadTooLarge {
        /// The largest accepted body.
        limit: u64,
    },
    /// 413: a file above its category cap.
    #[error("the file is larger than the {limit} bytes allowed for it")]
    FileTooLarge {
        /// The cap that was hit.
        limit: u64,
    },
    /// 413: a file above the streaming cap but within its category cap.
    #[error("files above {limit} bytes must use a presigned upload")]
    UsePresignedUpload {
        /// The streaming cap.
        limit: u64,
    },
    /// 413: more files in a batch than the tier allows.
    #[error("a batch may hold at most {limit} files")]
    BatchTooLarge {
        /// The tier's batch size.
        limit: u64,
    },
    /// 413: an upload token's `max_files` or `max_bytes` would be passed.
    #[error("this upload token's {what} of {limit} would be exceeded")]
    UploadTokenExhausted {
        /// Which of the token's limits: `max_files` or `max_bytes`.
        what: &'static str,
        /// Its figure.
        limit: u64,
        /// What the token has used and holds for uploads in flight.
        used: u64,
    },
    /// 415.
    #[error("{0}")]
    UnsupportedMediaType(String),
    /// 415: the declared type disagrees with the bytes.
    #[error("{0}")]
    TypeMismatch(String),
    /// 422: a presigned upload's object is not what was declared.
    #[error("{0}")]
    UploadVerificationFailed(String),
    /// 429: a rate limit; `what` names what it counts and over what.
    #[error("rate limit of {limit} {what} exceeded; retry in {retry_after} s")]
    RateLimited {
        /// What the limit allows in its window.
        limit: u64,
        /// What is counted, per what ("requests per minute").
        what: &'static str,
        /// Whole seconds until the next request is allowed.
        retry_after: u64,
    },
    /// 429 `rate_limited`: the logins of this e-mail address failed too
    /// often in a row; the next is refused until the delay is over.
    #[error("too many failed logins for this e-mail address; retry in {retry_after} s")]
    LoginDelayed {
        /// Whole seconds until the delay is over.
        retry_after: u64,
    },
    /// 429: every concurrent-upload slot is taken.
    #[error("all {limit} concurrent upload slots are in use")]
    ConcurrentUploadLimit {
        /// Slots of the account.
        limit: u64,
        /// Whole seconds after which a retry makes sense.
        retry_after: u64,
    },
    /// 429: the account (or the client address) already has as many requests
    /// or AI calls running as it may; `what` names which bound was hit.
    #[error("at most {limit} {what} may run at once; retry when one has finished")]
    ConcurrentRequestLimit {
        /// The bound that was hit.
        limit: u64,
        /// What is counted ("requests of this account", "connections from this address", "AI calls of this account").
        what: &'static str,
        /// Whole seconds after which a retry makes sense.
        retry_after: u64,
    },
    /// 429: a monthly quota is used up.
    #[error("the monthly quota of {limit} is used up")]
    MonthlyQuotaExceeded {
        /// The monthly quota.
        limit: u64,
        /// What has been used this month.
        used: u64,
        /// Seconds until the next month starts (UTC).
        retry_after: u64,
    },
    /// 507: the storage quota would be exceeded.
    #[error("the storage quota of {limit} bytes would be exceeded")]
    StorageQuotaExceeded {
        /// The quota in bytes.
        limit: u64,
        /// Bytes stored and reserved.
        used: u64,
    },
    /// 503: no AI provider configured or reachable.
    #[error("{0}")]
    AiUnavailable(String),
    /// 503: a dependency (database, storage) is down.
    #[error("{0}")]
    ServiceUnavailable(String),
    /// 503 `service_unavailable` with `Retry-After`: the server is at a
    /// bound it keeps to protect itself (e.g. password hashes at once).
    #[error("{detail}")]
    Busy {
        /// What is busy.
        detail: String,
        /// Whole seconds after which a retry makes sense.
        retry_after: u64,
    },
    /// 500: logged with its cause, answered with a generic message.
    #[error(transparent)]
    Internal(#[from] anyhow::Error),
}

impl ApiError {
    /// 400 `invalid_request`.
    pub fn bad_request(detail: impl Into<String>) -> Self {
        Self::InvalidRequest {
            status: StatusCode::BAD_REQUEST,
            detail: detail.into(),
        }
    }

    /// 422 `invalid_request`.
    pub fn unprocessable(detail: impl Into<String>) -> Self {
        Self::InvalidRequest {
            status: StatusCode::UNPROCESSABLE_ENTITY,
            detail: detail.into(),
        }
    }

    /// 404 `not_found` for a resource that does not exist or is not the caller's.
    pub fn not_found(what: &str) -> Self {
        Self::NotFound(format!("{what} not found"))
    }

    /// The stable code clients branch on.
    pub fn code(&self) -> &'static str {
        match self {
            Self::Unauthorized(_) => "unauthorized",
            Self::CsrfTokenRequired => "csrf_token_required",
            Self::Forbidden(_) => "forbidden",
            Self::ApiKeyRequiresPaidTier => "api_key_requires_paid_tier",
            Self::ApiAccessNotInTier => "api_access_not_in_tier",
            Self::NotFound(_) => "not_found",
            Self::Conflict(_) => "conflict",
            Self::IdempotencyKeyInUse => "idempotency_key_in_use",
            Self::IdempotencyKeyReused => "idempotency_key_reused",
            Self::Gone(_) => "gone",
            Self::TusVersionUnsupported => "tus_version_unsupported",
            Self::UploadLocked(_) => "upload_locked",
            Self::ChecksumMismatch => "checksum_mismatch",
            Self::InvalidRequest { .. } => "invalid_request",
            Self::PayloadTooLarge { .. } => "payload_too_large",
            Self::FileTooLarge { .. } => "file_too_large",
            Self::UsePresignedUpload { .. } => "use_presigned_upload",
            Self::BatchTooLarge { .. } => "batch_too_large",
            Self::UploadTokenExhausted { .. } => "upload_token_exhausted",
            Self::UnsupportedMediaType(_) => "unsupported_media_type",
            Self::TypeMismatch(_) => "type_mismatch",
            Self::UploadVerificationFailed(_) => "upload_verification_failed",
            Self::RateLimited { .. } | Self::LoginDelayed { .. } => "rate_limited",
            Self::ConcurrentUploadLimit { .. } => "concurrent_upload_limit",
            Self::ConcurrentRequestLimit { .. } => "concurrent_request_limit",
            Self::MonthlyQuotaExceeded { .. } => "monthly_quota_exceeded",
            Self::StorageQuotaExceeded { .. } => "storage_quota_exceeded",
            Self::AiUnavailable(_) => "ai_unavailable",
            Self::ServiceUnavailable(_) | Self::Busy { .. } => "service_unavailable",
            Self::Internal(_) => "internal",
        }
    }

    /// The HTTP status of the case.
    pub fn status(&self) -> StatusCode {
        match self {
            Self::Unauthorized(_) => StatusCode::UNAUTHORIZED,
            Self::CsrfTokenRequired
            | Self::Forbidden(_)
            | Self::ApiKeyRequiresPaidTier
            | Self::ApiAccessNotInTier => StatusCode::FORBIDDEN,
            Self::NotFound(_) => StatusCode::NOT_FOUND,
            Self::Conflict(_) | Self::IdempotencyKeyInUse => StatusCode::CONFLICT,
            Self::Gone(_) => StatusCode::GONE,
            Self::TusVersionUnsupported => StatusCode::PRECONDITION_FAILED,
            Self::UploadLocked(_) => StatusCode::LOCKED,
            // tus's checksum extension: 460 Checksum Mismatch.
            Self::ChecksumMismatch => StatusCode::from_u16(460).unwrap_or(StatusCode::BAD_REQUEST),
            Self::InvalidRequest { status, .. } => *status,
            Self::PayloadTooLarge { .. }
            | Self::FileTooLarge { .. }
            | Self::UsePresignedUpload { .. }
            | Self::BatchTooLarge { .. }
            | Self::UploadTokenExhausted { .. } => StatusCode::PAYLOAD_TOO_LARGE,
            Self::UnsupportedMediaType(_) | Self::TypeMismatch(_) => {
                StatusCode::UNSUPPORTED_MEDIA_TYPE
            }
            Self::UploadVerificationFailed(_) | Self::IdempotencyKeyReused => {
                StatusCode::UNPROCESSABLE_ENTITY
            }
            Self::RateLimited { .. }
            | Self::LoginDelayed { .. }
            | Self::ConcurrentUploadLimit { .. }
            | Self::ConcurrentRequestLimit { .. }
            | Self::MonthlyQuotaExceeded { .. } => StatusCode::TOO_MANY_REQUESTS,
            Self::StorageQuotaExceeded { .. } => StatusCode::INSUFFICIENT_STORAGE,
            Self::AiUnavailable(_) | Self::ServiceUnavailable(_) | Self::Busy { .. } => {
                StatusCode::SERVICE_UNAVAILABLE
            }
            Self::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    /// Seconds the client should wait before retrying, where that is known.
    pub fn retry_after(&self) -> Option<u64> {
        match self {
            Self::RateLimited { retry_after, .. }
            | Self::LoginDelayed { retry_after }
            | Self::ConcurrentUploadLimit { retry_after, .. }
            | Self::ConcurrentRequestLimit { retry_after, .. }
            | Self::MonthlyQuotaExceeded { retry_after, .. }
            | Self::Busy { retry_after, .. } => Some((*retry_after).max(1)),
            // The running request ends within seconds as a rule.
            Self::IdempotencyKeyInUse => Some(1),
            _ => None,
        }
    }

    /// The problem object (also used inside batch results).
    pub fn to_problem(&self) -> Value {
        let status = self.status();
        let detail = match self {
            Self::Internal(_) => "an internal error occurred; it has been logged".to_owned(),
            other => other.to_string(),
        };
        let mut body = Map::new();
        body.insert("type".into(), json!(format!("/problems/{}", self.code())));
        body.insert(
            "title".into(),
            json!(status.canonical_reason().unwrap_or(match self {
                Self::ChecksumMismatch => "Checksum Mismatch",
                _ => "Error",
            })),
        );
        body.insert("status".into(), json!(status.as_u16()));
        body.insert("detail".into(), json!(detail));
        body.insert("code".into(), json!(self.code()));
        for (k, v) in self.extensions() {
            body.insert(k.into(), v);
        }
        Value::Object(body)
    }

    fn extensions(&self) -> Vec<(&'static str, Value)> {
        match self {
            Self::PayloadTooLarge { limit }
            | Self::FileTooLarge { limit }
            | Self::UsePresignedUpload { limit }
            | Self::BatchTooLarge { limit } => vec![("limit", json!(limit))],
            Self::RateLimited { limit, .. }
            | Self::ConcurrentUploadLimit { limit, .. }
            | Self::ConcurrentRequestLimit { limit, .. } => vec![
                ("limit", json!(limit)),
                ("retry_after", json!(self.retry_after())),
            ],
            Self::MonthlyQuotaExceeded { limit, used, .. } => vec![
                ("limit", json!(limit)),
                ("used", json!(used)),
                ("retry_after", json!(self.retry_after())),
            ],
            Self::StorageQuotaExceeded { limit, used } => {
                vec![("limit", json!(limit)), ("used", json!(used))]
            }
            Self::UploadTokenExhausted { what, limit, used } => vec![
                ("token_limit", json!(what)),
                ("limit", json!(limit)),
                ("used", json!(used)),
            ],
            Self::Busy { .. } | Self::LoginDelayed { .. } => {
                vec![("retry_after", json!(self.retry_after()))]
            }
            _ => Vec::new(),
        }
    }
}

impl From<SniffError> for ApiError {
    fn from(e: SniffError) -> Self {
        match e {
            SniffError::Unsupported(detail) => Self::UnsupportedMediaType(detail),
            SniffError::Mismatch(detail) => Self::TypeMismatch(detail),
        }
    }
}

/// A feature the backend lacks is the client's to route around (422);
/// storage that does not answer is a 503 the client may retry; any other
/// storage failure is logged and answered as a generic 500.
impl From<StorageError> for ApiError {
    fn from(e: StorageError) -> Self {
        match e {
            StorageError::Unsupported(what) => {
                Self::unprocessable(format!("{what} need the S3 storage backend"))
            }
            StorageError::Unavailable(cause) => {
                tracing::warn!(error = %cause, "object store unavailable");
                Self::ServiceUnavailable("the object store did not answer; retry shortly".into())
            }
            other => Self::Internal(other.into()),
        }
    }
}

/// A database that cannot be reached (refused or broken connections, no
/// free connection within the pool's acquire timeout, a server shutting
/// down or restarting) is a 503 the client may retry; any other database
/// failure is logged and answered as a generic 500.
impl From<sqlx::Error> for ApiError {
    fn from(e: sqlx::Error) -> Self {
        if database_unavailable(&e) {
            tracing::warn!(error = %e, "database unavailable");
            return Self::database_unavailable();
        }
        Self::Internal(e.into())
    }
}

impl ApiError {
    /// The 503 of a request that needs the database while it is out of reach.
    pub fn database_unavailable() -> Self {
        Self::Busy {
            detail: "the database is unavailable; retry shortly".into(),
            retry_after: 1,
        }
    }
}

/// Whether a database error means the database is out of reach rather than
/// that the statement is wrong: connection failures, pool timeouts, and the
/// SQLSTATE classes 08 (connection exception) and 57P (the server is
/// shutting down, crashed, or not yet accepting connections).
pub fn database_unavailable(e: &sqlx::Error) -> bool {
    match e {
        sqlx::Error::PoolTimedOut
        | sqlx::Error::PoolClosed
        | sqlx::Error::Io(_)
        | sqlx::Error::Tls(_)
        | sqlx::Error::WorkerCrashed => true,
        sqlx::Error::Database(db) => db
            .code()
            .is_some_and(|c| c.starts_with("08") || c.starts_with("57P") || c == "53300"),
        _ => false,
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        if let Self::Internal(cause) = &self {
            tracing::error!(error = ?cause, "internal error");
        }
        let status = self.status();
        let Value::Object(fields) = self.to_problem() else {
            return status.into_response();
        };
        let mut problem = ProblemDetails::from_status_code(status);
        problem.title = fields
            .get("title")
            .and_then(Value::as_str)
            .map(str::to_owned);
        problem.detail = fields
            .get("detail")
            .and_then(Value::as_str)
            .map(str::to_owned);
        problem.r#type = format!("/problems/{}", self.code())
            .parse::<http::Uri>()
            .ok()
            .map(Into::into);
        let extensions: Map<String, Value> = fields
            .into_iter()
            .filter(|(k, _)| !matches!(k.as_str(), "type" | "title" | "status" | "detail"))
            .collect();
        let mut response = problem.with_extensions(extensions).into_response();
        if let Some(secs) = self.retry_after() {
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(secs));
        }
        response.extensions_mut().insert(ErrorCode(self.code()));
        response
    }
}

/// The `code` of an error response, left in the response extensions for
/// metrics and logs.
#[derive(Debug, Clone, Copy)]
pub struct ErrorCode(pub &'static str);

/// Maps a unique-violation of the named constraint to another error, so
/// handlers insert and let the database decide instead of check-then-write.
pub trait ResultExt<T> {
    /// Turns a violation of `constraint` into `f()`.
    fn on_constraint(self, constraint: &str, f: impl FnOnce() -> ApiError) -> Result<T, ApiError>;
}

impl<T> ResultExt<T> for Result<T, sqlx::Error> {
    fn on_constraint(self, constraint: &str, f: impl FnOnce() -> ApiError) -> Result<T, ApiError> {
        self.map_err(|e| match &e {
            sqlx::Error::Database(db) if db.constraint() == Some(constraint) => f(),
            _ => e.into(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn problem_carries_code_and_limit_fields() {
        let p = ApiError::RateLimited {
            limit: 30,
            what: "requests per minute",
            retry_after: 0,
        }
        .to_problem();
        assert_eq!(p["status"], 429);
        assert_eq!(p["code"], "rate_limited");
        assert_eq!(p["limit"], 30);
        assert_eq!(p["retry_after"], 1, "retry_after is at least one second");
    }

    #[test]
    fn internal_errors_hide_their_cause() {
        let p = ApiError::Internal(anyhow::anyhow!("password=hunter2")).to_problem();
        assert_eq!(p["status"], 500);
        assert!(!p.to_string().contains("hunter2"));
    }
}
