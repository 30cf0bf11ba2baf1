//! API keys: `ik_<8-char id>_<secret>`, shown once, stored as the id plus the
//! SHA-256 of the secret. A lookup here compares the digests in constant
//! time; the batched lookup ([`super::KeyLane`]) compares them in the
//! database, which is as safe for digests of 256-bit secrets.
//!
//! The secret has 256 bits of entropy, so a fast hash is as safe here as a
//! slow one and keeps per-request authentication cheap.

use std::{
    collections::HashMap,
    time::{Duration, Instant},
};

use chrono::{DateTime, Utc};
use rand::{Rng, RngCore, rngs::OsRng};
use serde::Serialize;
use sha2::{Digest, Sha256};
use sqlx::PgPool;
use subtle::ConstantTimeEq;
use utoipa::ToSchema;
use uuid::Uuid;

use super::{ACCOUNT_COLUMNS, Account, AuthFailure};
use crate::error::{ApiError, ResultExt};

const ID_ALPHABET: &[u8] = b"abcdefghijklmnopqrstuvwxyz0123456789";
const ID_LEN: usize = 8;
const SECRET_HEX_LEN: usize = 64;

/// A key just created: the only time its secret is shown.
#[derive(Debug, Serialize, ToSchema)]
pub struct CreatedKey {
    /// The key's public id.
    pub id: String,
    /// Its name.
    pub name: String,
    /// `ik_<id>`: what listings and logs show of the key.
    pub prefix: String,
    /// The whole key; store it now, it is never shown again.
    pub key: String,
    /// Creation time.
    pub created_at: DateTime<Utc>,
}

/// A key as listed (without its secret).
#[derive(Debug, Serialize, ToSchema, sqlx::FromRow)]
pub struct KeyView {
    /// The key's public id.
    pub id: String,
    /// Its name.
    pub name: String,
    /// `ik_<id>`.
    pub prefix: String,
    /// Creation time.
    pub created_at: DateTime<Utc>,
    /// Last use, to the minute.
    pub last_used_at: Option<DateTime<Utc>>,
}

/// A well-formed key split into its parts.
#[derive(Debug, PartialEq, Eq)]
pub struct ParsedKey<'a> {
    /// The public id.
    pub id: &'a str,
    /// The secret half.
    pub secret: &'a str,
}

/// Splits `ik_<id>_<secret>`; anything else is malformed.
pub fn parse(key: &str) -> Option<ParsedKey<'_>> {
    let rest = key.strip_prefix("ik_")?;
    let (id, secret) = rest.split_once('_')?;
    let id_ok = id.len() == ID_LEN && id.bytes().all(|b| ID_ALPHABET.contains(&b));
    let secret_ok = secret.len() == SECRET_HEX_LEN && secret.bytes().all(|b| b.is_ascii_hexdigit());
    (id_ok && secret_ok).then_some(ParsedKey { id, secret })
}

/// The stored form of a key's secret.
pub fn digest(secret: &str) -> [u8; 32] {
    Sha256::digest(secret.to_ascii_lowercase().as_bytes()).into()
}

/// Checks a presented key. The outer error is the store's; the inner one
/// says why the key was refused.
pub async fn authenticate(
    db: &PgPool,
    key: &str,
) -> Result<Result<(Account, String), AuthFailure>, ApiError> {
    let Some(parsed) = parse(key) else {
        return Ok(Err(AuthFailure::MalformedKey));
    };
    #[derive(sqlx::FromRow)]
    struct Row {
        secret_sha256: Vec<u8>,
        stale: bool,
        #[sqlx(flatten)]
        account: Account,
    }
    let row: Option<Row> = sqlx::query_as(&format!(
        "SELECT api_keys.secret_sha256,
                (api_keys.last_used_at IS NULL OR api_keys.last_used_at < now() - interval '1 minute') AS stale,
                {ACCOUNT_COLUMNS}
         FROM api_keys JOIN accounts ON accounts.id = api_keys.account_id
         WHERE api_keys.id = $1 AND api_keys.revoked_at IS NULL"
    ))
    .bind(parsed.id)
    .fetch_optional(db)
    .await?;
    let Some(row) = row else {
        return Ok(Err(AuthFailure::InvalidKey));
    };
    if !bool::from(row.secret_sha256.as_slice().ct_eq(&digest(parsed.secret))) {
        return Ok(Err(AuthFailure::InvalidKey));
    }
    if row.stale {
        record_use(db, parsed.id);
    }
    Ok(Ok((row.account, parsed.id.to_owned())))
}

/// Keys whose use this instance is recording or recorded in the last
/// minute, with when: a key turns stale for every request at once, and
/// until the first update lands each of them would send another one.
static RECORDING: std::sync::LazyLock<std::sync::Mutex<HashMap<String, Instant>>> =
    std::sync::LazyLock::new(Default::default);

/// Whether a use of key `id` at `now` is the first of the last minute in
/// `recording` (then noted there); forgets uses older than a minute.
fn first_this_minute(recording: &mut HashMap<String, Instant>, id: &str, now: Instant) -> bool {
    const MINUTE: Duration = Duration::from_secs(60);
    if recording
        .get(id)
        .is_some_and(|at| now.duration_since(*at) < MINUTE)
    {
        return false;
    }
    recording.retain(|_, at| now.duration_since(*at) < MINUTE);
    recording.insert(id.to_owned(), now);
    true
}

/// Records a key's use (to the minute), off the request's path; at most one
/// update per key and minute from this instance.
pub fn record_use(db: &PgPool, id: &str) {
    let mut recording = RECORDING.lock().unwrap_or_else(|e| e.into_inner());
    if !first_this_minute(&mut recording, id, Instant::now()) {
        return;
    }
    drop(recording);
    let (db, id) = (db.clone(), id.to_owned());
    tokio::spawn(async move {
        let updated = sqlx::query("UPDATE api_keys SET last_used_at = now() WHERE id = $1")
            .bind(&id)
            .execute(&db)
            .await;
        if let Err(e) = updated {
            tracing::warn!(error = %e, key_id = id, "could not record API key use");
        }
    });
}

/// Creates a key for an account whose limits allow API keys.
pub async fn create(db: &PgPool, account: &Account, name: &str) -> Result<CreatedKey, ApiError> {
    if !account.limits().api_keys {
        return Err(ApiError::ApiKeyRequiresPaidTier);
    }
    let name = name.trim();
    if name.is_empty() || name.chars().count() > 100 || name.chars().any(char::is_control) {
        return Err(ApiError::unprocessable(
            "name must be 1 to 100 printable characters",
        ));
    }
    let mut secret = [0u8; 32];
    OsRng.fill_bytes(&mut secret);
    let secret = hex::encode(secret);
    // Ids are short, so collisions are possible: retry on the primary key.
    for _ in 0..5 {
        let id: String = (0..ID_LEN)
            .map(|_| ID_ALPHABET[OsRng.gen_range(0..ID_ALPHABET.len())] as char)
            .collect();
        let inserted: Result<DateTime<Utc>, ApiError> = sqlx::query_scalar(
            "INSERT INTO api_keys (id, account_id, name, secret_sha256) VALUES ($1, $2, $3, $4)
             RETURNING created_at",
        )
        .bind(&id)
        .bind(account.id)
        .bind(name)
        .bind(digest(&secret).as_slice())
        .fetch_one(db)
        .await
        .on_constraint("api_keys_pkey", || {
            ApiError::Conflict("key id collision".into())
        });
        match inserted {
            Ok(created_at) => {
                return Ok(CreatedKey {
                    prefix: format!("ik_{id}"),
                    key: format!("ik_{id}_{secret}"),
                    id,
                    name: name.to_owned(),
                    created_at,
                });
            }
            Err(ApiError::Conflict(_)) => continue,
            Err(e) => return Err(e),
        }
    }
    Err(ApiError::Internal(anyhow::anyhow!(
        "could not find a free API key id"
    )))
}

/// The account's active keys, oldest first.
pub async fn list(db: &PgPool, account_id: Uuid) -> Result<Vec<KeyView>, sqlx::Error> {
    sqlx::query_as(
        "SELECT id, name, 'ik_' || id AS prefix, created_at, last_used_at FROM api_keys
         WHERE account_id = $1 AND revoked_at IS NULL ORDER BY created_at, id",
    )
    .bind(account_id)
    .fetch_all(db)
    .await
}

/// Revokes one of the account's keys; another account's key is not found.
pub async fn revoke(db: &PgPool, account_id: Uuid, key_id: &str) -> Result<(), ApiError> {
    let done = sqlx::query(
        "UPDATE api_keys SET revoked_at = now() WHERE id = $1 AND account_id = $2 AND revoked_at IS NULL",
    )
    .bind(key_id)
    .bind(account_id)
    .execute(db)
    .await?;
    if done.rows_affected() == 0 {
        return Err(ApiError::not_found("API key"));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_key_use_is_recorded_once_a_minute() {
        let mut recording = HashMap::new();
        let t0 = Instant::now();
        // (key, seconds after t0, whether that use is recorded)
        let uses = [
            ("a", 0, true),
            // Every request that finds the key stale before the update lands.
            ("a", 0, false),
            ("a", 59, false),
            ("b", 59, true),
            ("a", 60, true),
            // Old entries are forgotten as new ones come.
            ("c", 200, true),
        ];
        for (id, secs, recorded) in uses {
            let at = t0 + Duration::from_secs(secs);
            assert_eq!(
                first_this_minute(&mut recording, id, at),
                recorded,
                "{id} at {secs} s"
            );
        }
        assert_eq!(recording.len(), 1);
    }

    #[test]
    fn keys_parse_only_in_their_exact_form() {
        let secret = "a".repeat(64);
        let key = format!("ik_abcd1234_{secret}");
        assert_eq!(
            parse(&key),
            Some(ParsedKey {
                id: "abcd1234",
                secret: &secret
            })
        );
        for bad in [
            "ik_abcd1234".to_owned(),
            format!("ik_abcd123_{secret}"),
            format!("ik_ABCD1234_{secret}"),
            format!("xk_abcd1234_{secret}"),
            format!("ik_abcd1234_{}", "g".repeat(64)),
            format!("ik_abcd1234_{}", "a".repeat(63)),
        ] {
            assert_eq!(parse(&bad), None, "{bad}");
        }
    }
}
