//! Extractors that turn the request's [`Principal`] into what a handler needs,
//! or into the error the client sees.

use axum::{extract::FromRequestParts, http::request::Parts};
use subtle::ConstantTimeEq;

use super::{Account, Principal, UploadToken};
use crate::{error::ApiError, state::AppState};

/// How the caller authenticated.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AuthMethod {
    /// An API key.
    ApiKey,
    /// A login session.
    Session,
}

/// An account reached with an API key or a session (CSRF checked for
/// session requests that change state).
#[derive(Debug, Clone)]
pub struct CurrentAccount {
    /// The account.
    pub account: Account,
    /// How it authenticated.
    pub method: AuthMethod,
}

/// The caller of a route that starts an upload: an account (as
/// [`CurrentAccount`]) or one of its upload tokens that has not expired.
#[derive(Debug, Clone)]
pub struct Uploader {
    /// The account the upload is for.
    pub account: Account,
    /// The token, when a token sent the request.
    pub token: Option<UploadToken>,
}

/// The caller of a request that continues an upload (a resumable upload's
/// `HEAD`/`PATCH`/`DELETE`, a presigned upload's completion or abort): as
/// [`Uploader`], but an expired token still continues the uploads it
/// started; which uploads it reaches is the [`Owner`]'s to say.
#[derive(Debug, Clone)]
pub struct ContinuingUploader(pub Uploader);

/// Whose uploads a caller reaches: every upload of its account, or, for a
/// token, only those the token started (another token's and the account's
/// own are not found).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Owner {
    /// The account.
    pub account_id: uuid::Uuid,
    /// The token, when a token is calling.
    pub token_id: Option<String>,
}

impl Uploader {
    /// Whose uploads this caller reaches.
    pub fn owner(&self) -> Owner {
        Owner {
            account_id: self.account.id,
            token_id: self.token.as_ref().map(|t| t.id.clone()),
        }
    }
}

/// An account reached with a login session only (key management, logout).
#[derive(Debug, Clone)]
pub struct SessionAccount {
    /// The account.
    pub account: Account,
    /// The session id.
    pub session_id: uuid::Uuid,
}

/// A request that carries the admin token.
#[derive(Debug, Clone, Copy)]
pub struct AdminAuth;

/// The client's address as the rate limits key it (the socket peer, or
/// behind trusted proxies the address they name), which the HTTP layer
/// puts on every request it limits.
#[derive(Debug, Clone, Copy)]
pub struct ClientIp(pub std::net::IpAddr);

fn principal(parts: &Parts) -> Result<&Principal, ApiError> {
    parts
        .extensions
        .get::<Principal>()
        .ok_or_else(|| ApiError::Unauthorized("authentication required".into()))
}

fn unauthenticated(p: &Principal) -> ApiError {
    match p {
        Principal::Anonymous {
            failure: Some(f), ..
        } => f.to_error(),
        _ => ApiError::Unauthorized(
            "authentication required: an API key (Authorization: Bearer ik_…) or a session cookie"
                .into(),
        ),
    }
}

/// What an upload token meets on a route it does not open: 401 once it
/// has expired (as on every route where it starts nothing), 403 before.
fn token_refused(token: &UploadToken) -> ApiError {
    if token.expired {
        expired(token)
    } else {
        ApiError::Forbidden(
            "an upload token opens only the upload routes (stream, batch, presigned, tus)".into(),
        )
    }
}

fn expired(token: &UploadToken) -> ApiError {
    ApiError::Unauthorized(format!(
        "the upload token expired at {}; it only continues the uploads it started",
        token
            .expires_at
            .to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
    ))
}

/// The uploader a request resolves to; `continuing`: whether an expired
/// token is still let through.
fn uploader(parts: &Parts, state: &AppState, continuing: bool) -> Result<Uploader, ApiError> {
    match principal(parts)? {
        Principal::UploadToken { account, token } => {
            if token.expired && !continuing {
                return Err(expired(token));
            }
            // Tokens are minted on tiers with API access; one whose account
            // has left them since goes as an old API key does.
            if !account.limits().api_keys {
                return Err(ApiError::ApiAccessNotInTier);
            }
            Ok(Uploader {
                account: account.clone(),
                token: Some(token.clone()),
            })
        }
        _ => {
            let caller = current_account(parts, state)?;
            Ok(Uploader {
                account: caller.account,
                token: None,
            })
        }
    }
}

fn check_csrf(parts: &Parts, state: &AppState, session_id: uuid::Uuid) -> Result<(), ApiError> {
    if parts.method.is_safe() {
        return Ok(());
    }
    let expected = state.jwt.csrf_token(session_id);
    let given = parts
        .headers
        .get("x-csrf-token")
        .map(|v| v.as_bytes())
        .unwrap_or_default();
    if bool::from(expected.as_bytes().ct_eq(given)) {
        Ok(())
    } else {
        Err(ApiError::CsrfTokenRequired)
    }
}

impl FromRequestParts<AppState> for CurrentAccount {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        current_account(parts, state)
    }
}

impl FromRequestParts<AppState> for Uploader {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        uploader(parts, state, false)
    }
}

impl FromRequestParts<AppState> for ContinuingUploader {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        uploader(parts, state, true).map(Self)
    }
}

fn current_account(parts: &Parts, state: &AppState) -> Result<CurrentAccount, ApiError> {
    match principal(parts)? {
        Principal::ApiKey { account, .. } => {
            if !account.limits().api_keys {
                return Err(ApiError::ApiAccessNotInTier);
            }
            Ok(CurrentAccount {
                account: account.clone(),
                method: AuthMethod::ApiKey,
            })
        }
        Principal::Session {
            account,
            session_id,
        } => {
            check_csrf(parts, state, *session_id)?;
            Ok(CurrentAccount {
                account: account.clone(),
                method: AuthMethod::Session,
            })
        }
        Principal::UploadToken { token, .. } => Err(token_refused(token)),
        other => Err(unauthenticated(other)),
    }
}

impl FromRequestParts<AppState> for SessionAccount {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        match principal(parts)? {
            Principal::Session {
                account,
                session_id,
            } => {
                check_csrf(parts, state, *session_id)?;
                Ok(Self {
                    account: account.clone(),
                    session_id: *session_id,
                })
            }
            Principal::ApiKey { .. } => Err(ApiError::Forbidden(
                "this route needs a dashboard session; API keys cannot manage API keys".into(),
            )),
            Principal::UploadToken { token, .. } => Err(token_refused(token)),
            other => Err(unauthenticated(other)),
        }
    }
}

impl FromRequestParts<AppState> for ClientIp {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _: &AppState) -> Result<Self, ApiError> {
        parts.extensions.get::<ClientIp>().copied().ok_or_else(|| {
            ApiError::Internal(anyhow::anyhow!("the request carries no client address"))
        })
    }
}

impl FromRequestParts<AppState> for AdminAuth {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        if state.config.admin_token.is_none() {
            return Err(ApiError::NotFound(
                "the admin API is disabled (ADMIN_TOKEN is not set)".into(),
            ));
        }
        match principal(parts)? {
            Principal::Admin => Ok(Self),
            Principal::Anonymous {
                failure: Some(f), ..
            } => Err(f.to_error()),
            _ => Err(ApiError::Unauthorized(
                "the admin API needs Authorization: Bearer <ADMIN_TOKEN>".into(),
            )),
        }
    }
}
