//! Upload tokens: `iut_<12-char id>_<secret>`, short-lived credentials that
//! an account hands to its own users' browsers. Shown once, stored as the id
//! plus the SHA-256 of the secret (as API keys are: the secret has 256 bits
//! of entropy). This module owns the tokens' identity (minting, listing,
//! revoking, authenticating); what they hold and use of their limits is
//! `quota::tokens`'s.

use chrono::{DateTime, Utc};
use rand::{Rng, RngCore, rngs::OsRng};
use serde::Serialize;
use sha2::{Digest, Sha256};
use sqlx::PgPool;
use subtle::ConstantTimeEq;
use utoipa::ToSchema;
use uuid::Uuid;

use super::{ACCOUNT_COLUMNS, Account, AuthFailure};
use crate::{
    error::{ApiError, ResultExt},
    sniff::Category,
};

/// What every token starts with.
pub const PREFIX: &str = "iut_";
const ID_ALPHABET: &[u8] = b"abcdefghijklmnopqrstuvwxyz0123456789";
const ID_LEN: usize = 12;
const SECRET_HEX_LEN: usize = 64;

/// A token as its requests carry it (the principal's half beside its
/// account).
#[derive(Debug, Clone)]
pub struct UploadToken {
    /// The token's public id.
    pub id: String,
    /// The host's user id, recorded on its files.
    pub subject: Option<String>,
    /// Recorded on its files.
    pub metadata: Option<serde_json::Value>,
    /// The categories its files may be of.
    pub categories: Vec<Category>,
    /// At most this many files, if set.
    pub max_files: Option<i32>,
    /// At most this many bytes, if set.
    pub max_bytes: Option<i64>,
    /// When it stops starting uploads.
    pub expires_at: DateTime<Utc>,
    /// Whether it had expired when the request came (by the database's
    /// clock): it then only continues the uploads it started.
    pub expired: bool,
}

/// A token's figures as listed (and, with its secret, as minted).
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct TokenView {
    /// The token's public id.
    pub id: String,
    /// The whole token, only in the answer that minted it: store it now,
    /// it is never shown again.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub token: Option<String>,
    /// The host's user id, recorded on every file uploaded with the token.
    pub subject: Option<String>,
    /// When the token stops starting uploads.
    pub expires_at: DateTime<Utc>,
    /// At most this many files (`null`: the account's limits only).
    pub max_files: Option<i32>,
    /// At most this many bytes (`null`: the account's limits only).
    pub max_bytes: Option<i64>,
    /// The categories its files may be of.
    pub categories: Vec<Category>,
    /// Recorded on every file uploaded with the token.
    #[schema(value_type = Option<Object>)]
    pub metadata: Option<serde_json::Value>,
    /// Files recorded with it.
    pub files_used: i32,
    /// Their bytes.
    pub bytes_used: i64,
    /// Creation time.
    pub created_at: DateTime<Utc>,
}

/// A token to mint, its fields checked already.
#[derive(Debug, Clone)]
pub struct NewToken {
    /// The host's user id.
    pub subject: Option<String>,
    /// How long it starts uploads.
    pub expires_in: std::time::Duration,
    /// At most this many files.
    pub max_files: Option<i32>,
    /// At most this many bytes.
    pub max_bytes: Option<i64>,
    /// Non-empty, without repeats.
    pub categories: Vec<Category>,
    /// A JSON object.
    pub metadata: Option<serde_json::Value>,
}

/// A well-formed token split into its parts.
#[derive(Debug, PartialEq, Eq)]
pub struct ParsedToken<'a> {
    /// The public id.
    pub id: &'a str,
    /// The secret half.
    pub secret: &'a str,
}

/// Whether a presented credential is meant as an upload token (it is then
/// never taken for an API key, whatever its form).
pub fn is_token(credential: &str) -> bool {
    credential.starts_with(PREFIX)
}

/// Splits `iut_<id>_<secret>`; anything else is malformed.
pub fn parse(token: &str) -> Option<ParsedToken<'_>> {
    let rest = token.strip_prefix(PREFIX)?;
    let (id, secret) = rest.split_once('_')?;
    let id_ok = id.len() == ID_LEN && id.bytes().all(|b| ID_ALPHABET.contains(&b));
    let secret_ok = secret.len() == SECRET_HEX_LEN && secret.bytes().all(|b| b.is_ascii_hexdigit());
    (id_ok && secret_ok).then_some(ParsedToken { id, secret })
}

fn digest(secret: &str) -> [u8; 32] {
    Sha256::digest(secret.to_ascii_lowercase().as_bytes()).into()
}

fn categories(names: Vec<String>) -> Vec<Category> {
    names
        .iter()
        .filter_map(|n| match n.as_str() {
            "image" => Some(Category::Image),
            "document" => Some(Category::Document),
            "video" => Some(Category::Video),
            _ => None,
        })
        .collect()
}

fn names(categories: &[Category]) -> Vec<&'static str> {
    categories.iter().map(|c| c.as_str()).collect()
}

/// The columns of a token as a request carries it.
const TOKEN_COLUMNS: &str = "t.id AS token_id, t.subject, t.metadata, t.categories, t.max_files, t.max_bytes, \
     t.expires_at, t.expires_at <= now() AS expired";

#[derive(sqlx::FromRow)]
struct TokenRow {
    /// Named apart from the account's `id` it is selected beside.
    #[sqlx(rename = "token_id")]
    id: String,
    subject: Option<String>,
    metadata: Option<serde_json::Value>,
    categories: Vec<String>,
    max_files: Option<i32>,
    max_bytes: Option<i64>,
    expires_at: DateTime<Utc>,
    expired: bool,
}

impl From<TokenRow> for UploadToken {
    fn from(r: TokenRow) -> Self {
        Self {
            id: r.id,
            subject: r.subject,
            metadata: r.metadata,
            categories: categories(r.categories),
            max_files: r.max_files,
            max_bytes: r.max_bytes,
            expires_at: r.expires_at,
            expired: r.expired,
        }
    }
}

/// Checks a presented token. The outer error is the store's; the inner one
/// says why the token was refused (unknown, revoked, wrong secret).
pub async fn authenticate(
    db: &PgPool,
    token: &str,
) -> Result<Result<(Account, UploadToken), AuthFailure>, ApiError> {
    let Some(parsed) = parse(token) else {
        return Ok(Err(AuthFailure::MalformedToken));
    };
    #[derive(sqlx::FromRow)]
    struct Row {
        secret_sha256: Vec<u8>,
        #[sqlx(flatten)]
        token: TokenRow,
        #[sqlx(flatten)]
        account: Account,
    }
    let row: Option<Row> = sqlx::query_as(&format!(
        "SELECT t.secret_sha256, {TOKEN_COLUMNS}, {ACCOUNT_COLUMNS}
         FROM upload_tokens t JOIN accounts ON accounts.id = t.account_id
         WHERE t.id = $1 AND t.revoked_at IS NULL"
    ))
    .bind(parsed.id)
    .fetch_optional(db)
    .await?;
    let Some(row) = row else {
        return Ok(Err(AuthFailure::InvalidToken));
    };
    if !bool::from(row.secret_sha256.as_slice().ct_eq(&digest(parsed.secret))) {
        return Ok(Err(AuthFailure::InvalidToken));
    }
    Ok(Ok((row.account, row.token.into())))
}

/// A token of the account by id, revoked or not (the limits an upload it
/// started keeps to, when another request of the account continues it);
/// `None` when there is no such token.
pub async fn find(
    db: &PgPool,
    account_id: Uuid,
    id: &str,
) -> Result<Option<UploadToken>, sqlx::Error> {
    let row: Option<TokenRow> = sqlx::query_as(&format!(
        "SELECT {TOKEN_COLUMNS} FROM upload_tokens t WHERE t.id = $1 AND t.account_id = $2"
    ))
    .bind(id)
    .bind(account_id)
    .fetch_optional(db)
    .await?;
    Ok(row.map(Into::into))
}

/// Whether token `id` has been revoked (or no longer exists).
pub async fn is_revoked(db: &PgPool, id: &str) -> Result<bool, sqlx::Error> {
    let live: Option<bool> =
        sqlx::query_scalar("SELECT revoked_at IS NULL FROM upload_tokens WHERE id = $1")
            .bind(id)
            .fetch_optional(db)
            .await?;
    Ok(live != Some(true))
}

/// The columns of [`TokenView`] (its `token` aside).
const VIEW_COLUMNS: &str = "id, subject, expires_at, max_files, max_bytes, categories, metadata, \
     files_used, bytes_used, created_at";

#[derive(sqlx::FromRow)]
struct ViewRow {
    id: String,
    subject: Option<String>,
    expires_at: DateTime<Utc>,
    max_files: Option<i32>,
    max_bytes: Option<i64>,
    categories: Vec<String>,
    metadata: Option<serde_json::Value>,
    files_used: i32,
    bytes_used: i64,
    created_at: DateTime<Utc>,
}

impl From<ViewRow> for TokenView {
    fn from(r: ViewRow) -> Self {
        Self {
            id: r.id,
            token: None,
            subject: r.subject,
            expires_at: r.expires_at,
            max_files: r.max_files,
            max_bytes: r.max_bytes,
            categories: categories(r.categories),
            metadata: r.metadata,
            files_used: r.files_used,
            bytes_used: r.bytes_used,
            created_at: r.created_at,
        }
    }
}

/// Mints a token for the account (whose tier the caller has checked).
pub async fn create(db: &PgPool, account: &Account, new: &NewToken) -> Result<TokenView, ApiError> {
    let mut secret = [0u8; 32];
    OsRng.fill_bytes(&mut secret);
    let secret = hex::encode(secret);
    // Ids are short, so collisions are possible: retry on the primary key.
    for _ in 0..5 {
        let id: String = (0..ID_LEN)
            .map(|_| ID_ALPHABET[OsRng.gen_range(0..ID_ALPHABET.len())] as char)
            .collect();
        let inserted: Result<ViewRow, ApiError> = sqlx::query_as(&format!(
            "INSERT INTO upload_tokens (id, account_id, secret_sha256, subject, metadata,
                                        categories, max_files, max_bytes, expires_at)
             VALUES ($1, $2, $3, $4, $5::json, $6, $7, $8, now() + make_interval(secs => $9))
             RETURNING {VIEW_COLUMNS}"
        ))
        .bind(&id)
        .bind(account.id)
        .bind(digest(&secret).as_slice())
        .bind(new.subject.as_deref())
        .bind(new.metadata.as_ref().map(ToString::to_string))
        .bind(names(&new.categories))
        .bind(new.max_files)
        .bind(new.max_bytes)
        .bind(new.expires_in.as_secs_f64())
        .fetch_one(db)
        .await
        .on_constraint("upload_tokens_pkey", || {
            ApiError::Conflict("token id collision".into())
        });
        match inserted {
            Ok(row) => {
                let mut view = TokenView::from(row);
                view.token = Some(format!("{PREFIX}{id}_{secret}"));
                return Ok(view);
            }
            Err(ApiError::Conflict(_)) => continue,
            Err(e) => return Err(e),
        }
    }
    Err(ApiError::Internal(anyhow::anyhow!(
        "could not find a free upload token id"
    )))
}

/// The account's tokens that are neither expired nor revoked, oldest first.
pub async fn list(db: &PgPool, account_id: Uuid) -> Result<Vec<TokenView>, sqlx::Error> {
    let rows: Vec<ViewRow> = sqlx::query_as(&format!(
        "SELECT {VIEW_COLUMNS} FROM upload_tokens
         WHERE account_id = $1 AND revoked_at IS NULL AND expires_at > now()
         ORDER BY created_at, id"
    ))
    .bind(account_id)
    .fetch_all(db)
    .await?;
    Ok(rows.into_iter().map(Into::into).collect())
}

/// Revokes one of the account's tokens: from this statement on, it
/// authenticates nothing. Revoking it again changes nothing; another
/// account's token is not found.
pub async fn revoke(db: &PgPool, account_id: Uuid, id: &str) -> Result<(), ApiError> {
    let done = sqlx::query(
        "UPDATE upload_tokens SET revoked_at = coalesce(revoked_at, now())
         WHERE id = $1 AND account_id = $2",
    )
    .bind(id)
    .bind(account_id)
    .execute(db)
    .await?;
    if done.rows_affected() == 0 {
        return Err(ApiError::not_found("upload token"));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_parse_only_in_their_exact_form() {
        let secret = "b".repeat(64);
        let token = format!("iut_abcdef123456_{secret}");
        assert_eq!(
            parse(&token),
            Some(ParsedToken {
                id: "abcdef123456",
                secret: &secret
            })
        );
        for bad in [
            "iut_abcdef123456".to_owned(),
            format!("iut_abcdef12345_{secret}"),
            format!("iut_ABCDEF123456_{secret}"),
            format!("ik_abcdef123456_{secret}"),
            format!("iut_abcdef123456_{}", "g".repeat(64)),
            format!("iut_abcdef123456_{}", "a".repeat(65)),
        ] {
            assert_eq!(parse(&bad), None, "{bad}");
        }
        assert!(is_token(&token) && !is_token(&format!("ik_abcd1234_{secret}")));
    }
}
