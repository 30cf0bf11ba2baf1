//! The `presigned_uploads` table: what an issued upload declared, to verify
//! it at completion, and the state it is in. Only this module writes it.

use std::time::Duration;

use chrono::{DateTime, Utc};
use sqlx::{PgConnection, PgPool};
use uuid::Uuid;

use crate::{auth::Owner, error::ApiError, files, sniff::Category};

/// Where a presigned upload stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, sqlx::Type)]
#[sqlx(type_name = "text", rename_all = "lowercase")]
pub enum State {
    /// Issued; its URLs may be in use.
    Pending,
    /// One request is completing it (verifying and recording).
    Completing,
    /// Verified and recorded as a file.
    Completed,
    /// Given up by its client.
    Aborted,
    /// Its object was not what was declared.
    Failed,
}

/// An issued upload.
#[derive(Debug, sqlx::FromRow)]
pub struct Upload {
    /// Also the id of the file it becomes.
    pub id: Uuid,
    /// The owner.
    pub account_id: Uuid,
    /// The lease that holds its slot and reservation.
    pub lease_id: Uuid,
    /// Display name.
    pub filename: String,
    /// The content type the URLs are signed for.
    pub content_type: String,
    /// The declared category.
    pub category: Category,
    /// The declared size.
    pub size: i64,
    /// The declared SHA-256, if any.
    pub sha256: Option<Vec<u8>>,
    /// Storage's id of the multipart upload the client's URLs send parts
    /// of (on S3, every upload; none on the local folder).
    pub multipart_upload_id: Option<String>,
    /// The part size handed out with a URL per part (`"multipart"`); none
    /// for an upload sent whole through one URL.
    pub part_size: Option<i64>,
    /// Where it stands.
    pub state: State,
    /// Whether its URLs have expired.
    pub expired: bool,
    /// The upload token that issued it, if one did.
    pub upload_token_id: Option<String>,
}

impl State {
    /// The column's value.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Pending => "pending",
            Self::Completing => "completing",
            Self::Completed => "completed",
            Self::Aborted => "aborted",
            Self::Failed => "failed",
        }
    }
}

impl Upload {
    /// Its object's key (the file's key), which the client's URLs write.
    pub fn key(&self) -> String {
        files::object_key(self.account_id, self.id)
    }

    /// The declared size in bytes.
    pub fn size(&self) -> u64 {
        self.size.max(0) as u64
    }

    /// The declared SHA-256, if any.
    pub fn sha256(&self) -> Option<[u8; 32]> {
        self.sha256.as_deref().and_then(|h| h.try_into().ok())
    }
}

/// What is written at issue.
pub struct NewUpload<'a> {
    /// Upload (and file) id.
    pub id: Uuid,
    /// The owner.
    pub account_id: Uuid,
    /// Its lease.
    pub lease_id: Uuid,
    /// Display name.
    pub filename: &'a str,
    /// Signed content type.
    pub content_type: &'a str,
    /// Declared category.
    pub category: Category,
    /// Declared size.
    pub size: u64,
    /// Declared SHA-256.
    pub sha256: Option<[u8; 32]>,
    /// Storage's multipart upload, where there is one.
    pub multipart_upload_id: Option<&'a str>,
    /// The part size, for an upload sent a URL per part.
    pub part_size: Option<u64>,
    /// When the URLs expire.
    pub expires_at: DateTime<Utc>,
    /// The upload token issuing it, if any.
    pub upload_token_id: Option<&'a str>,
}

const COLUMNS: &str = "id, account_id, lease_id, filename, content_type, category, size, sha256, \
     multipart_upload_id, part_size, state, expires_at < now() AS expired, upload_token_id";

/// Records an issued upload.
pub async fn insert(db: &PgPool, u: &NewUpload<'_>) -> Result<(), sqlx::Error> {
    sqlx::query(
        "INSERT INTO presigned_uploads (id, account_id, lease_id, filename, content_type, category,
                                        size, sha256, multipart_upload_id, part_size, expires_at,
                                        upload_token_id)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12)",
    )
    .bind(u.id)
    .bind(u.account_id)
    .bind(u.lease_id)
    .bind(u.filename)
    .bind(u.content_type)
    .bind(u.category)
    .bind(i64::try_from(u.size).unwrap_or(i64::MAX))
    .bind(u.sha256.map(|h| h.to_vec()))
    .bind(u.multipart_upload_id)
    .bind(
        u.part_size
            .map(|part| i64::try_from(part).unwrap_or(i64::MAX)),
    )
    .bind(u.expires_at)
    .bind(u.upload_token_id)
    .execute(db)
    .await?;
    Ok(())
}

/// An upload by id, the owner's when `owner` is given (another account's
/// upload is not found, nor, for a token, one it did not issue).
pub async fn find(db: &PgPool, id: Uuid, owner: Option<&Owner>) -> Result<Upload, ApiError> {
    let row: Option<Upload> = sqlx::query_as(&format!(
        "SELECT {COLUMNS} FROM presigned_uploads
         WHERE id = $1 AND ($2::uuid IS NULL OR account_id = $2)
           AND ($3::text IS NULL OR upload_token_id = $3)"
    ))
    .bind(id)
    .bind(owner.map(|o| o.account_id))
    .bind(owner.and_then(|o| o.token_id.as_deref()))
    .fetch_optional(db)
    .await?;
    row.ok_or_else(|| ApiError::not_found("presigned upload"))
}

/// The pending uploads that token `token_id` issued (to end them when it
/// is revoked).
pub async fn pending_of_token(db: &PgPool, token_id: &str) -> Result<Vec<Upload>, sqlx::Error> {
    sqlx::query_as(&format!(
        "SELECT {COLUMNS} FROM presigned_uploads
         WHERE upload_token_id = $1 AND state = 'pending'"
    ))
    .bind(token_id)
    .fetch_all(db)
    .await
}

/// Moves an upload from one of `from` to `to`; `false` when it was in
/// none of them (another request moved it first).
pub async fn transition(
    db: &PgPool,
    id: Uuid,
    from: &[State],
    to: State,
) -> Result<bool, sqlx::Error> {
    let done = sqlx::query(
        "UPDATE presigned_uploads SET state = $3, claimed_until = NULL
         WHERE id = $1 AND state = ANY($2)",
    )
    .bind(id)
    .bind(from.iter().map(|s| s.as_str()).collect::<Vec<_>>())
    .bind(to)
    .execute(db)
    .await?;
    Ok(done.rows_affected() == 1)
}

/// Claims the completion of an upload for `ttl`: a pending, unexpired
/// upload, or one whose last completing request's claim lapsed (its
/// instance died). `false` when another request holds it or it is done.
pub async fn claim_completion(db: &PgPool, id: Uuid, ttl: Duration) -> Result<bool, sqlx::Error> {
    let done = sqlx::query(
        "UPDATE presigned_uploads SET state = 'completing',
                claimed_until = now() + make_interval(secs => $2)
         WHERE id = $1
           AND ((state = 'pending' AND expires_at > now())
             OR (state = 'completing' AND claimed_until < now()))",
    )
    .bind(id)
    .bind(ttl.as_secs_f64())
    .execute(db)
    .await?;
    Ok(done.rows_affected() == 1)
}

/// Claims the data route's single writer slot of a pending upload for
/// `ttl`; `false` when another writer holds it. With `renew`, extends a
/// claim not released yet instead: a renewal that lands after the writer
/// let go (it was in flight as the request ended) does not claim again.
pub async fn claim_writer(
    db: &PgPool,
    id: Uuid,
    ttl: Duration,
    renew: bool,
) -> Result<bool, sqlx::Error> {
    let done = sqlx::query(
        "UPDATE presigned_uploads SET writer_until = now() + make_interval(secs => $2)
         WHERE id = $1 AND state = 'pending'
           AND CASE WHEN $3 THEN writer_until IS NOT NULL
                    ELSE writer_until IS NULL OR writer_until < now() END",
    )
    .bind(id)
    .bind(ttl.as_secs_f64())
    .bind(renew)
    .execute(db)
    .await?;
    Ok(done.rows_affected() == 1)
}

/// Lets the next writer in.
pub async fn release_writer(db: &PgPool, id: Uuid) -> Result<(), sqlx::Error> {
    sqlx::query("UPDATE presigned_uploads SET writer_until = NULL WHERE id = $1")
        .bind(id)
        .execute(db)
        .await?;
    Ok(())
}

/// Locks a pending upload's row, and its lease's, for the transaction
/// `tx`, so that the local folder's data route puts its bytes in place
/// only while the upload is still pending and its lease alive: abort,
/// completion and the reaper wait for the commit, and see what was put.
/// `false` when the upload has ended (or its lease has).
pub async fn lock_pending(tx: &mut PgConnection, id: Uuid) -> Result<bool, sqlx::Error> {
    let found: Option<i32> = sqlx::query_scalar(
        "SELECT 1 FROM presigned_uploads p JOIN upload_leases l ON l.id = p.lease_id
         WHERE p.id = $1 AND p.state = 'pending'
         FOR UPDATE OF p FOR SHARE OF l",
    )
    .bind(id)
    .fetch_optional(tx)
    .await?;
    Ok(found.is_some())
}
