//! An upload token's limits, on top of the account's: the categories its
//! files may be of, and its `max_files` and `max_bytes`, reserved ahead of
//! the bytes as the storage quota is ([`super::reservations`]), so that
//! concurrent uploads with one token never pass them together.
//!
//! What an upload lease holds of its token is a row of
//! `upload_token_holds` (the lease's id, its token, files and bytes),
//! counted in the token's `files_reserved` and `bytes_reserved`; recorded
//! files are counted in `files_used` and `bytes_used`. This module is the
//! only writer of those four columns and of the holds. Whatever gives back
//! a lease's reservation gives back its hold too: a file given back
//! ([`unreserve`]), a file recorded ([`Spend`], in the statement that
//! records it), the lease's end, whoever ends it ([`release_lease`], in
//! the transaction that deletes the lease, which cannot commit while the
//! lease has a hold). A recorded file that its request refuses as a whole
//! goes back to the token's use ([`refund`]); one deleted later does not:
//! the token counts what was uploaded with it.
//!
//! Lock order, everywhere: the lease row first, then the account row, then
//! the token row and the lease's hold. Every statement that touches a
//! hold locks its lease first, so those of one lease run one at a time; a
//! statement holding a token row waits for no other lease's row.

use sqlx::{PgConnection, PgPool, Postgres, QueryBuilder};

use super::{lease::Lease, reservations};
use crate::{auth::UploadToken, error::ApiError, sniff::Category};

/// Why a token's reservation failed.
#[derive(Debug, thiserror::Error)]
pub enum TokenError {
    /// One of the token's limits would be passed.
    #[error("the upload token's {what} would be exceeded")]
    Exhausted {
        /// `max_files` or `max_bytes`.
        what: &'static str,
        /// Its figure.
        limit: u64,
        /// Used plus reserved at the time.
        used: u64,
    },
    /// The token was revoked while the upload ran.
    #[error("the upload token was revoked")]
    Revoked,
    /// The lease expired (and may have been reaped) while the upload ran.
    #[error("the upload's lease expired")]
    LeaseLost,
    /// The database failed.
    #[error(transparent)]
    Db(#[from] sqlx::Error),
}

impl From<TokenError> for ApiError {
    fn from(e: TokenError) -> Self {
        match e {
            TokenError::Exhausted { what, limit, used } => {
                ApiError::UploadTokenExhausted { what, limit, used }
            }
            TokenError::Revoked => revoked(),
            TokenError::LeaseLost => {
                ApiError::ServiceUnavailable("the upload's lease expired; retry".into())
            }
            TokenError::Db(e) => e.into(),
        }
    }
}

/// The answer to a request whose token was revoked while it ran.
pub fn revoked() -> ApiError {
    ApiError::Unauthorized("the upload token was revoked".into())
}

/// A file of `category` under `token`: 415 `unsupported_media_type`
/// when the token does not take that category.
pub fn check_category(token: &UploadToken, category: Category) -> Result<(), ApiError> {
    if token.categories.contains(&category) {
        return Ok(());
    }
    let allowed: Vec<&str> = token.categories.iter().map(|c| c.as_str()).collect();
    Err(ApiError::UnsupportedMediaType(format!(
        "this upload token takes only {} files, and this one is a {}",
        allowed.join(", "),
        category.as_str()
    )))
}

fn bigint(n: u64) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

/// Reserves `files` more files and exactly `bytes` more bytes of token
/// `token_id`'s limits under `lease`, or nothing. One statement: the lease
/// row is locked first (it must be alive), then the token's counters move
/// by one conditional update, and the lease's hold with them.
pub async fn reserve(
    db: &PgPool,
    lease: &Lease,
    token_id: &str,
    files: u32,
    bytes: u64,
) -> Result<(), TokenError> {
    let (files, bytes) = (i32::try_from(files).unwrap_or(i32::MAX), bigint(bytes));
    let held: Option<uuid::Uuid> = sqlx::query_scalar(
        "WITH l AS (
           SELECT id FROM upload_leases WHERE id = $1 AND expires_at > now() FOR UPDATE
         ), t AS (
           UPDATE upload_tokens SET files_reserved = files_reserved + $3,
                                    bytes_reserved = bytes_reserved + $4
           WHERE id = $2 AND revoked_at IS NULL AND EXISTS (SELECT 1 FROM l)
             AND (max_files IS NULL OR files_used + files_reserved + $3 <= max_files)
             AND (max_bytes IS NULL OR bytes_used + bytes_reserved + $4 <= max_bytes)
           RETURNING id
         )
         INSERT INTO upload_token_holds AS h (lease_id, token_id, files, bytes)
         SELECT $1, id, $3, $4 FROM t
         ON CONFLICT (lease_id) DO UPDATE SET files = h.files + excluded.files,
                                              bytes = h.bytes + excluded.bytes
         RETURNING lease_id",
    )
    .bind(lease.id)
    .bind(token_id)
    .bind(files)
    .bind(bytes)
    .fetch_optional(db)
    .await?;
    if held.is_some() {
        return Ok(());
    }
    // Refused: say why (only on this path, so it costs nothing otherwise).
    #[derive(sqlx::FromRow)]
    struct Why {
        alive: bool,
        revoked: bool,
        max_files: Option<i32>,
        files: i32,
        max_bytes: Option<i64>,
        bytes: i64,
    }
    let why: Option<Why> = sqlx::query_as(
        "SELECT EXISTS (SELECT 1 FROM upload_leases WHERE id = $1 AND expires_at > now()) AS alive,
                revoked_at IS NOT NULL AS revoked, max_files, files_used + files_reserved AS files,
                max_bytes, bytes_used + bytes_reserved AS bytes
         FROM upload_tokens WHERE id = $2",
    )
    .bind(lease.id)
    .bind(token_id)
    .fetch_optional(db)
    .await?;
    let Some(why) = why else {
        return Err(TokenError::Revoked);
    };
    if why.revoked {
        return Err(TokenError::Revoked);
    }
    if !why.alive {
        return Err(TokenError::LeaseLost);
    }
    let as_u64 = |n: i64| n.max(0) as u64;
    match why.max_files {
        Some(max) if why.files + files > max => Err(TokenError::Exhausted {
            what: "max_files",
            limit: as_u64(max.into()),
            used: as_u64(why.files.into()),
        }),
        _ => Err(TokenError::Exhausted {
            what: "max_bytes",
            limit: as_u64(why.max_bytes.unwrap_or(0)),
            used: as_u64(why.bytes),
        }),
    }
}

/// Reserves a whole file of `bytes` under `lease` (an upload whose length
/// is known when it starts): under token `token_id`, one file and `bytes`
/// of the token's first, then `bytes` of the storage `quota`, recording
/// `object_key` on the lease. Both or neither.
pub async fn reserve_file(
    db: &PgPool,
    lease: &Lease,
    token_id: Option<&str>,
    bytes: u64,
    quota: Option<u64>,
    object_key: Option<&str>,
) -> Result<(), ApiError> {
    if let Some(token_id) = token_id {
        reserve(db, lease, token_id, 1, bytes).await?;
    }
    let reserved = reservations::reserve(db, lease, bytes, quota, object_key).await;
    if let (Err(_), Some(_)) = (&reserved, token_id) {
        unreserve(db, lease, 1, bytes).await?;
    }
    Ok(reserved?)
}

/// Gives back up to `files` files and `bytes` bytes of what `lease` holds
/// of its token (a file that failed, or the surplus of a step that storage
/// did not grant whole). Nothing when the lease holds nothing of a token,
/// or has ended (its end gave everything back). The lease row is locked
/// first, as by every statement on a lease's hold, so that two files of a
/// batch reserving and giving back at once take their rows in one order.
pub async fn unreserve(
    db: &PgPool,
    lease: &Lease,
    files: u32,
    bytes: u64,
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "WITH l AS (
           SELECT id FROM upload_leases WHERE id = $1 FOR UPDATE
         ), h AS (
           SELECT lease_id, token_id, least($2, files) AS f, least($3, bytes) AS b
           FROM upload_token_holds WHERE lease_id = (SELECT id FROM l) FOR UPDATE
         ), given AS (
           UPDATE upload_token_holds SET files = upload_token_holds.files - h.f,
                                         bytes = upload_token_holds.bytes - h.b
           FROM h WHERE upload_token_holds.lease_id = h.lease_id
         )
         UPDATE upload_tokens SET files_reserved = files_reserved - h.f,
                                  bytes_reserved = bytes_reserved - h.b
         FROM h WHERE upload_tokens.id = h.token_id",
    )
    .bind(lease.id)
    .bind(i32::try_from(files).unwrap_or(i32::MAX))
    .bind(bigint(bytes))
    .execute(db)
    .await?;
    Ok(())
}

/// Gives back whatever a lease holds of its token, inside the transaction
/// that deletes the lease (which holds its row).
pub(super) async fn release_lease(
    tx: &mut PgConnection,
    lease_id: uuid::Uuid,
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "WITH h AS (
           DELETE FROM upload_token_holds WHERE lease_id = $1 RETURNING token_id, files, bytes
         )
         UPDATE upload_tokens SET files_reserved = files_reserved - h.files,
                                  bytes_reserved = bytes_reserved - h.bytes
         FROM h WHERE upload_tokens.id = h.token_id",
    )
    .bind(lease_id)
    .execute(tx)
    .await?;
    Ok(())
}

/// Gives back to token `token_id` a file of `size` bytes it had recorded,
/// inside the transaction that deletes the file (the request that uploaded
/// it kept nothing after all).
pub async fn refund(tx: &mut PgConnection, token_id: &str, size: u64) -> Result<(), sqlx::Error> {
    sqlx::query(
        "UPDATE upload_tokens SET files_used = greatest(files_used - 1, 0),
                                  bytes_used = greatest(bytes_used - $2, 0)
         WHERE id = $1",
    )
    .bind(token_id)
    .bind(bigint(size))
    .execute(tx)
    .await?;
    Ok(())
}

/// A file recorded under a token: of what its lease holds of the token,
/// one file and `reserved` bytes become the token's use (one file and
/// `size` bytes). A typed value, as [`super::reservations::Settlement`]
/// is, that the statement recording the file composes: a gate before the
/// settlement (a revoked token records nothing), and the spending after
/// it, which reads only the relation `settled` and defines
/// `token_spent(subject, metadata)`, the token's to record on the file.
#[derive(Debug, Clone, Copy)]
pub struct Spend<'a> {
    /// The lease holding the token's reservation.
    pub lease: &'a Lease,
    /// The token.
    pub token_id: &'a str,
    /// The bytes the lease reserved for the file.
    pub reserved: u64,
    /// The file's size.
    pub size: u64,
}

impl<'a> Spend<'a> {
    /// Pushes the gate, `token_open AS (…), `, and returns its name: a
    /// one-row relation while the token is not revoked (a plain read, so
    /// no token row is locked before the lease's).
    pub fn push_gate(&self, query: &mut QueryBuilder<'a, Postgres>) -> &'static str {
        query
            .push("token_open AS (SELECT 1 FROM upload_tokens WHERE id = ")
            .push_bind(self.token_id)
            .push(" AND revoked_at IS NULL), ");
        "token_open"
    }

    /// Pushes `, token_hold AS (…), token_spent AS (…) ` after the
    /// settlement's `WITH` list.
    pub fn push_spend(&self, query: &mut QueryBuilder<'a, Postgres>) {
        query
            .push(
                ", token_hold AS (
                   UPDATE upload_token_holds SET files = files - 1, bytes = bytes - ",
            )
            .push_bind(bigint(self.reserved))
            .push(" WHERE lease_id = ")
            .push_bind(self.lease.id)
            .push(
                " AND EXISTS (SELECT 1 FROM settled) RETURNING token_id
                 ), token_spent AS (
                   UPDATE upload_tokens SET files_reserved = files_reserved - 1,
                                            files_used = files_used + 1,
                                            bytes_reserved = bytes_reserved - ",
            )
            .push_bind(bigint(self.reserved))
            .push(", bytes_used = bytes_used + ")
            .push_bind(bigint(self.size))
            .push(
                " WHERE id = (SELECT token_id FROM token_hold)
                   RETURNING subject, metadata
                 ) ",
            );
    }
}
