//! Login sessions: a row in `sessions`, named by the `sid` of a JWT that the
//! `intake_session` cookie carries, so logout and revocation are real. A
//! session ends at its lifetime's end, when revoked, or once idle for
//! `SESSION_IDLE_TIMEOUT_SECS`; the reaper deletes ended ones.

use std::time::Duration;

use chrono::{Duration as ChronoDuration, Utc};
use hmac::{Hmac, Mac};
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde::{Deserialize, Serialize};
use sha2::Sha256;
use sqlx::PgPool;
use uuid::Uuid;

use super::{ACCOUNT_COLUMNS, Account};

/// Name of the session cookie.
pub const COOKIE_NAME: &str = "intake_session";

/// Claims of the session JWT.
#[derive(Debug, Serialize, Deserialize)]
pub struct Claims {
    /// Account id.
    pub sub: Uuid,
    /// Session id (a row of `sessions`).
    pub sid: Uuid,
    /// Issued at (Unix seconds).
    pub iat: i64,
    /// Expiry (Unix seconds).
    pub exp: i64,
}

/// The keys that sign and check session JWTs (HS256).
pub struct JwtKeys {
    encoding: EncodingKey,
    decoding: DecodingKey,
    csrf_key: Vec<u8>,
}

impl JwtKeys {
    /// Derives the keys from `JWT_SECRET`.
    pub fn new(secret: &str) -> Self {
        let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(b"intake csrf v1")
            .unwrap_or_else(|_| unreachable!("HMAC accepts keys of any length"));
        mac.update(secret.as_bytes());
        Self {
            encoding: EncodingKey::from_secret(secret.as_bytes()),
            decoding: DecodingKey::from_secret(secret.as_bytes()),
            csrf_key: mac.finalize().into_bytes().to_vec(),
        }
    }

    /// The CSRF token of a session: derived, so nothing more is stored.
    pub fn csrf_token(&self, session_id: Uuid) -> String {
        let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(&self.csrf_key)
            .unwrap_or_else(|_| unreachable!("HMAC accepts keys of any length"));
        mac.update(session_id.as_bytes());
        hex::encode(mac.finalize().into_bytes())
    }

    /// Signs claims.
    pub fn encode(&self, claims: &Claims) -> anyhow::Result<String> {
        Ok(jsonwebtoken::encode(
            &Header::new(Algorithm::HS256),
            claims,
            &self.encoding,
        )?)
    }

    /// Checks signature and expiry.
    pub fn decode(&self, token: &str) -> Option<Claims> {
        let mut validation = Validation::new(Algorithm::HS256);
        validation.leeway = 0;
        validation.set_required_spec_claims(&["exp", "sub"]);
        jsonwebtoken::decode::<Claims>(token, &self.decoding, &validation)
            .ok()
            .map(|d| d.claims)
    }
}

/// A new session: its JWT and CSRF token.
pub struct NewSession {
    /// The cookie value.
    pub token: String,
    /// The token state-changing cookie requests must echo.
    pub csrf_token: String,
}

/// Creates a session row for the account, valid for `ttl`, and signs its
/// token.
pub async fn create(
    db: &PgPool,
    keys: &JwtKeys,
    ttl: Duration,
    account_id: Uuid,
) -> anyhow::Result<NewSession> {
    let sid = Uuid::new_v4();
    let now = Utc::now();
    let ttl = ChronoDuration::from_std(ttl)?;
    let expires_at = now + ttl;
    sqlx::query("INSERT INTO sessions (id, account_id, expires_at) VALUES ($1, $2, $3)")
        .bind(sid)
        .bind(account_id)
        .bind(expires_at)
        .execute(db)
        .await?;
    let claims = Claims {
        sub: account_id,
        sid,
        iat: now.timestamp(),
        exp: expires_at.timestamp(),
    };
    Ok(NewSession {
        token: keys.encode(&claims)?,
        csrf_token: keys.csrf_token(sid),
    })
}

/// Whether the session row `sessions` is live: not revoked, within its
/// lifetime, seen within the idle timeout (`$3`, in seconds).
const LIVE: &str = "sessions.revoked_at IS NULL AND sessions.expires_at > now()
    AND sessions.last_seen_at > now() - make_interval(secs => $3)";

/// The statement of [`authenticate`]: the account of a live session, and
/// its `last_seen_at` moved to now when it is older than `$4` seconds.
static AUTHENTICATE: std::sync::LazyLock<String> = std::sync::LazyLock::new(|| {
    format!(
        "WITH seen AS (
           UPDATE sessions SET last_seen_at = now()
           WHERE sessions.id = $1 AND sessions.account_id = $2 AND {LIVE}
             AND sessions.last_seen_at <= now() - make_interval(secs => $4)
         )
         SELECT {ACCOUNT_COLUMNS} FROM sessions JOIN accounts ON accounts.id = sessions.account_id
         WHERE sessions.id = $1 AND sessions.account_id = $2 AND {LIVE}"
    )
});

/// How stale a session's `last_seen_at` may grow before a request moves it:
/// a minute, or a quarter of the idle timeout when that is shorter. A
/// session in use is written at most once in that time rather than on
/// every request, and ends between `idle - period` and `idle` after its
/// last request.
fn touch_period(idle: Duration) -> Duration {
    (idle / 4).min(Duration::from_secs(60))
}

/// The account of a valid session token whose session is live (unrevoked,
/// within its lifetime, used within `idle`), noting the use (see
/// [`touch_period`]): one statement.
pub async fn authenticate(
    db: &PgPool,
    keys: &JwtKeys,
    token: &str,
    idle: Duration,
) -> Result<Option<(Account, Uuid)>, sqlx::Error> {
    let Some(claims) = keys.decode(token) else {
        return Ok(None);
    };
    let account: Option<Account> = sqlx::query_as(&AUTHENTICATE)
        .bind(claims.sid)
        .bind(claims.sub)
        .bind(idle.as_secs_f64())
        .bind(touch_period(idle).as_secs_f64())
        .fetch_optional(db)
        .await?;
    Ok(account.map(|a| (a, claims.sid)))
}

/// Revokes every session of the account; returns how many were live.
pub async fn revoke_all(db: &PgPool, account_id: Uuid) -> Result<u64, sqlx::Error> {
    Ok(sqlx::query(
        "UPDATE sessions SET revoked_at = now() WHERE account_id = $1 AND revoked_at IS NULL",
    )
    .bind(account_id)
    .execute(db)
    .await?
    .rows_affected())
}

/// Deletes the sessions that have ended (revoked, past their lifetime, or
/// idle for `idle`); returns how many.
pub async fn prune(db: &PgPool, idle: Duration) -> Result<u64, sqlx::Error> {
    Ok(sqlx::query(
        "DELETE FROM sessions WHERE revoked_at IS NOT NULL OR expires_at <= now()
           OR last_seen_at <= now() - make_interval(secs => $1)",
    )
    .bind(idle.as_secs_f64())
    .execute(db)
    .await?
    .rows_affected())
}

/// Revokes a session.
pub async fn revoke(db: &PgPool, session_id: Uuid) -> Result<(), sqlx::Error> {
    sqlx::query("UPDATE sessions SET revoked_at = now() WHERE id = $1 AND revoked_at IS NULL")
        .bind(session_id)
        .execute(db)
        .await?;
    Ok(())
}

/// The session token from the `Cookie` header, if any.
pub fn cookie_token(headers: &http::HeaderMap) -> Option<&str> {
    headers
        .get_all(http::header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(name, _)| *name == COOKIE_NAME)
        .map(|(_, value)| value.trim())
        .filter(|v| !v.is_empty())
}

/// The `Set-Cookie` value that stores a session token.
pub fn set_cookie(token: &str, max_age_secs: u64, secure: bool) -> String {
    format!(
        "{COOKIE_NAME}={token}; Path=/; Max-Age={max_age_secs}; HttpOnly; SameSite=Lax{}",
        if secure { "; Secure" } else { "" }
    )
}

/// The `Set-Cookie` value that removes the session cookie.
pub fn clear_cookie(secure: bool) -> String {
    set_cookie("", 0, secure)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_session_is_noted_in_use_once_a_minute_or_four_times_per_timeout() {
        let secs = |n| Duration::from_secs(n);
        assert_eq!(touch_period(secs(86_400)), secs(60));
        assert_eq!(touch_period(secs(240)), secs(60));
        assert_eq!(touch_period(secs(120)), secs(30));
        assert_eq!(touch_period(secs(2)), Duration::from_millis(500));
    }
}
