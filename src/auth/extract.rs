//! Extractors that turn the request's [`Principal`] into what a handler needs,
//! or into the error the client sees.

use axum::{extract::FromRequestParts, http::request::Parts};
use subtle::ConstantTimeEq;

use super::{Account, Principal};
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
        match principal(parts)? {
            Principal::ApiKey { account, .. } => {
                if !account.limits().api_keys {
                    return Err(ApiError::ApiAccessNotInTier);
                }
                Ok(Self {
                    account: account.clone(),
                    method: AuthMethod::ApiKey,
                })
            }
            Principal::Session {
                account,
                session_id,
            } => {
                check_csrf(parts, state, *session_id)?;
                Ok(Self {
                    account: account.clone(),
                    method: AuthMethod::Session,
                })
            }
            other => Err(unauthenticated(other)),
        }
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
