//! Accounts and who is calling: passwords, login sessions (and the delay
//! of an e-mail address whose logins keep failing), API keys, upload
//! tokens, and the [`Principal`] every request resolves to before it is
//! rate limited.

pub mod api_keys;
pub mod backoff;
mod extract;
mod key_lane;
pub mod password;
pub mod routes;
pub mod session;
pub mod upload_tokens;

use std::net::IpAddr;

use chrono::{DateTime, Utc};
use serde::Serialize;
use sqlx::PgPool;
use utoipa::ToSchema;
use uuid::Uuid;

pub use extract::{
    AdminAuth, ClientIp, ContinuingUploader, CurrentAccount, Owner, SessionAccount, Uploader,
};
pub use key_lane::{KeyCheck, KeyLane, KeyOutcome, counted_key_statement};
pub use upload_tokens::UploadToken;

use crate::{
    error::ApiError,
    ratelimit::Decision,
    state::AppState,
    tiers::{CustomLimits, Limits, Tier, effective_limits},
};

/// An account as the rest of the server sees it.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct Account {
    /// Account id.
    pub id: Uuid,
    /// E-mail address (stored lower-cased).
    pub email: String,
    /// Pricing tier.
    pub tier: Tier,
    /// Overrides of single rows of the tier table.
    #[sqlx(json)]
    pub custom_limits: CustomLimits,
    /// Creation time.
    pub created_at: DateTime<Utc>,
}

impl Account {
    /// The tier's row with this account's overrides.
    pub fn limits(&self) -> Limits {
        effective_limits(self.tier, &self.custom_limits)
    }

    /// The public JSON form.
    pub fn view(&self) -> AccountView {
        AccountView {
            id: self.id,
            email: self.email.clone(),
            tier: self.tier,
            created_at: self.created_at,
        }
    }

    /// Loads an account by id.
    pub async fn find(db: &PgPool, id: Uuid) -> Result<Option<Account>, sqlx::Error> {
        sqlx::query_as(&format!(
            "SELECT {ACCOUNT_COLUMNS} FROM accounts WHERE id = $1"
        ))
        .bind(id)
        .fetch_optional(db)
        .await
    }
}

/// The columns of [`Account`], for queries that select one.
pub const ACCOUNT_COLUMNS: &str =
    "accounts.id, accounts.email, accounts.tier, accounts.custom_limits, accounts.created_at";

/// `{"id","email","tier","created_at"}`.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct AccountView {
    /// Account id.
    pub id: Uuid,
    /// E-mail address.
    pub email: String,
    /// Pricing tier.
    pub tier: Tier,
    /// Creation time (RFC 3339, UTC).
    pub created_at: DateTime<Utc>,
}

/// Who a request comes from, decided once per request by the HTTP layer.
#[derive(Debug, Clone)]
pub enum Principal {
    /// A valid API key.
    ApiKey {
        /// The key's account.
        account: Account,
        /// The key's public id.
        key_id: String,
    },
    /// A valid login session (the dashboard).
    Session {
        /// The session's account.
        account: Account,
        /// The session id (the JWT's `sid`).
        session_id: Uuid,
    },
    /// A valid upload token (expired or not: an expired token still
    /// continues the uploads it started).
    UploadToken {
        /// The token's account.
        account: Account,
        /// The token.
        token: UploadToken,
    },
    /// The admin token.
    Admin,
    /// No credentials, or credentials that failed; `failure` says why, and is
    /// answered by routes that need an account.
    Anonymous {
        /// The client IP the anonymous limit is keyed on.
        ip: IpAddr,
        /// Why the offered credentials were refused, if any were offered.
        failure: Option<AuthFailure>,
    },
}

/// Why offered credentials were refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AuthFailure {
    /// An API key that is not of the `ik_<id>_<secret>` form.
    MalformedKey,
    /// A well-formed key that is unknown, revoked or wrong.
    InvalidKey,
    /// A session cookie whose token is bad, expired or revoked.
    InvalidSession,
    /// A wrong admin token.
    InvalidAdminToken,
    /// An upload token that is not of the `iut_<id>_<secret>` form.
    MalformedToken,
    /// A well-formed upload token that is unknown, revoked or wrong.
    InvalidToken,
}

impl AuthFailure {
    /// The 401 the client sees.
    pub fn to_error(self) -> ApiError {
        ApiError::Unauthorized(
            match self {
                Self::MalformedKey => "the API key is malformed (expected ik_<id>_<secret>)",
                Self::InvalidKey => "the API key is invalid or revoked",
                Self::InvalidSession => "the session is invalid, expired or revoked; log in again",
                Self::InvalidAdminToken => "the admin token is invalid",
                Self::MalformedToken => {
                    "the upload token is malformed (expected iut_<id>_<secret>)"
                }
                Self::InvalidToken => "the upload token is invalid or revoked",
            }
            .to_owned(),
        )
    }
}

/// The bearer token of `Authorization`, if any.
pub fn bearer(headers: &http::HeaderMap) -> Option<&str> {
    headers
        .get(http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| {
            v.strip_prefix("Bearer ")
                .or_else(|| v.strip_prefix("bearer "))
        })
        .map(str::trim)
}

/// The API key a request presents (`X-API-Key`, else the bearer token), on
/// a route other than the admin API's. A bearer upload token is not one.
pub fn presented_key(headers: &http::HeaderMap) -> Option<&str> {
    headers
        .get("x-api-key")
        .and_then(|v| v.to_str().ok())
        .map(str::trim)
        .or_else(|| bearer(headers).filter(|b| !upload_tokens::is_token(b)))
}

/// The upload token a request presents as its bearer token, if any.
pub fn presented_token(headers: &http::HeaderMap) -> Option<&str> {
    bearer(headers).filter(|b| upload_tokens::is_token(b))
}

/// The principal of a request that presents a well-formed API key, and the
/// decision on its account's limit when `count` and the key is valid, from
/// the batched key statement ([`KeyLane`]; no decision when this instance
/// did not know the account's limit yet). `None` when the key is malformed
/// or the statement failed: the caller then resolves the request the plain
/// way.
/// A database out of reach is the 503 the plain way would answer, without
/// waiting for a connection a second time.
pub async fn resolve_key(
    state: &AppState,
    key: &str,
    ip: IpAddr,
    count: bool,
) -> Result<Option<(Principal, Option<Decision>)>, ApiError> {
    let Some(parsed) = api_keys::parse(key) else {
        return Ok(None);
    };
    let check = KeyCheck {
        id: parsed.id.to_owned(),
        digest: api_keys::digest(parsed.secret),
        count,
    };
    let outcome = match state.keys.check(check).await {
        Ok(outcome) => outcome,
        Err(e) if e.unavailable => {
            tracing::warn!(error = %e, "database unavailable");
            return Err(ApiError::database_unavailable());
        }
        Err(e) => {
            tracing::warn!(error = %e, "batched key check failed; checking the request alone");
            return Ok(None);
        }
    };
    Ok(Some(match outcome.account {
        Some(account) => {
            if outcome.stale {
                api_keys::record_use(&state.db, parsed.id);
            }
            let principal = Principal::ApiKey {
                account,
                key_id: parsed.id.to_owned(),
            };
            (principal, outcome.decision)
        }
        None => (
            Principal::Anonymous {
                ip,
                failure: Some(AuthFailure::InvalidKey),
            },
            None,
        ),
    }))
}

/// Resolves the credentials of a request. Errors are the store's, not the
/// client's: bad credentials resolve to [`Principal::Anonymous`] with a failure.
pub async fn resolve(
    state: &AppState,
    headers: &http::HeaderMap,
    is_admin_route: bool,
    ip: IpAddr,
) -> Result<Principal, ApiError> {
    let anonymous = |failure| Principal::Anonymous {
        ip,
        failure: Some(failure),
    };
    let bearer = bearer(headers);
    if is_admin_route {
        return Ok(match (&state.config.admin_token, bearer) {
            (Some(expected), Some(given))
                if bool::from(subtle::ConstantTimeEq::ct_eq(
                    expected.expose().as_bytes(),
                    given.as_bytes(),
                )) =>
            {
                Principal::Admin
            }
            (_, Some(_)) => anonymous(AuthFailure::InvalidAdminToken),
            (_, None) => Principal::Anonymous { ip, failure: None },
        });
    }

    if let Some(key) = presented_key(headers) {
        return Ok(match api_keys::authenticate(&state.db, key).await? {
            Ok((account, key_id)) => Principal::ApiKey { account, key_id },
            Err(failure) => anonymous(failure),
        });
    }

    if let Some(token) = presented_token(headers) {
        return Ok(match upload_tokens::authenticate(&state.db, token).await? {
            Ok((account, token)) => Principal::UploadToken { account, token },
            Err(failure) => anonymous(failure),
        });
    }

    if let Some(token) = session::cookie_token(headers) {
        return Ok(
            match session::authenticate(
                &state.db,
                &state.jwt,
                token,
                state.config.session_idle_timeout,
            )
            .await?
            {
                Some((account, session_id)) => Principal::Session {
                    account,
                    session_id,
                },
                None => anonymous(AuthFailure::InvalidSession),
            },
        );
    }

    Ok(Principal::Anonymous { ip, failure: None })
}
