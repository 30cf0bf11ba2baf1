//! The `tus_uploads` table: a resumable upload's protocol state (how many
//! bytes are stored where, the running hash, the type once sniffed), the
//! one PATCH allowed to write it, and where it stands. Only this module
//! writes it.

use std::time::Duration;

use chrono::{DateTime, Utc};
use sqlx::PgPool;
use uuid::Uuid;

use super::sha::Sha256State;
use crate::{
    auth::Owner,
    error::ApiError,
    files,
    sniff::{Category, Kind},
};

/// Where a resumable upload stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, sqlx::Type)]
#[sqlx(type_name = "text", rename_all = "lowercase")]
pub enum State {
    /// Accepting bytes.
    Open,
    /// Recorded as a file.
    Completed,
    /// Ended by its client (DELETE).
    Terminated,
    /// Refused (its type or size), everything given back.
    Failed,
}

/// A resumable upload's row.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct Upload {
    /// Also the id of the file it becomes.
    pub id: Uuid,
    /// The owner.
    pub account_id: Uuid,
    /// The lease that holds its slot and reservation.
    pub lease_id: Uuid,
    /// Display name (cleaned).
    pub filename: String,
    /// The client's `filetype` ('' when none).
    pub declared_type: String,
    /// The raw `Upload-Metadata`.
    pub metadata: String,
    /// `Upload-Length`.
    pub length: i64,
    /// Storage's multipart upload, once the first part is stored.
    pub multipart_upload_id: Option<String>,
    /// Bytes per part.
    pub part_size: i64,
    /// Whole parts stored.
    pub parts: i32,
    /// Bytes in those parts.
    pub stored: i64,
    /// Bytes in the tail (the sum of its segments' lengths).
    pub tail_len: i64,
    /// The tail's segments, in order: their numbers ([`segment_key`])…
    pub tail_seqs: Vec<i32>,
    /// …and their lengths.
    pub tail_lens: Vec<i64>,
    /// The number the next segment takes.
    pub tail_next: i32,
    /// SHA-256 state words of the stored parts.
    pub sha_state: Vec<u8>,
    /// The unfinished SHA-256 block.
    pub sha_rest: Vec<u8>,
    /// The sniffed type.
    pub content_type: Option<String>,
    /// The sniffed category.
    pub category: Option<Category>,
    /// Whether it is a text document (UTF-8 checked).
    pub is_text: Option<bool>,
    /// Where it stands.
    pub state: State,
    /// When it expires unless more bytes arrive.
    pub expires_at: DateTime<Utc>,
    /// Whether it has expired.
    pub expired: bool,
    /// The upload token that created it, if one did.
    pub upload_token_id: Option<String>,
}

impl Upload {
    /// Its file's object key.
    pub fn key(&self) -> String {
        files::object_key(self.account_id, self.id)
    }

    /// Bytes received and kept.
    pub fn offset(&self) -> u64 {
        (self.stored + self.tail_len).max(0) as u64
    }

    /// `Upload-Length`.
    pub fn length(&self) -> u64 {
        self.length.max(0) as u64
    }

    /// The running hash of the stored parts.
    pub fn sha(&self) -> Option<Sha256State> {
        Sha256State::from_parts(&self.sha_state, &self.sha_rest, self.stored.max(0) as u64)
    }

    /// The type decided from the first bytes, once it is.
    pub fn kind(&self) -> Option<Kind> {
        let mime = crate::sniff::canonical(self.content_type.as_deref()?)?;
        Some(Kind {
            mime,
            category: self.category?,
            text: self.is_text?,
        })
    }
}

/// The name of an upload's tail, its bytes past the last whole part (the
/// key of its one object in earlier builds; its segments are named after
/// it).
pub fn tail_key(id: Uuid) -> String {
    format!("t/{id}/tail")
}

/// The key of segment `n` of an upload's tail (`-1`: the one tail object
/// of earlier builds). A sibling of the tail's name, not below it: the
/// local folder cannot hold a file and a folder of one name.
pub fn segment_key(id: Uuid, n: i32) -> String {
    if n < 0 {
        tail_key(id)
    } else {
        format!("t/{id}/tail-{n}")
    }
}

/// The upload a tail object (its name, or one of its segments) belongs to.
fn tail_owner(key: &str) -> Option<Uuid> {
    let rest = key.strip_prefix("t/")?;
    let (id, name) = rest.split_once('/')?;
    let segment = match name.strip_prefix("tail") {
        Some("") => true,
        Some(n) => n.strip_prefix('-')?.parse::<u32>().is_ok(),
        None => false,
    };
    segment.then(|| id.parse().ok()).flatten()
}

/// What a creation writes.
pub struct NewUpload<'a> {
    /// Upload (and file) id.
    pub id: Uuid,
    /// The owner.
    pub account_id: Uuid,
    /// Its lease.
    pub lease_id: Uuid,
    /// Display name.
    pub filename: &'a str,
    /// Declared type.
    pub declared_type: &'a str,
    /// Raw metadata.
    pub metadata: &'a str,
    /// `Upload-Length`.
    pub length: u64,
    /// Bytes per part.
    pub part_size: u64,
    /// How long it lives without bytes.
    pub expiry: Duration,
    /// The upload token creating it, if any.
    pub upload_token_id: Option<&'a str>,
}

const COLUMNS: &str = "id, account_id, lease_id, filename, declared_type, metadata, length, \
     multipart_upload_id, part_size, parts, stored, tail_len, tail_seqs, tail_lens, tail_next, \
     sha_state, sha_rest, content_type, category, is_text, state, expires_at, \
     expires_at < now() AS expired, upload_token_id";

fn bigint(n: u64) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

/// Records a created upload.
pub async fn insert(db: &PgPool, u: &NewUpload<'_>) -> Result<Upload, sqlx::Error> {
    let (words, rest) = Sha256State::default().to_parts();
    sqlx::query_as(&format!(
        "INSERT INTO tus_uploads (id, account_id, lease_id, filename, declared_type, metadata,
                                  length, part_size, sha_state, sha_rest, expires_at,
                                  upload_token_id)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, now() + make_interval(secs => $11), $12)
         RETURNING {COLUMNS}"
    ))
    .bind(u.id)
    .bind(u.account_id)
    .bind(u.lease_id)
    .bind(u.filename)
    .bind(u.declared_type)
    .bind(u.metadata)
    .bind(bigint(u.length))
    .bind(bigint(u.part_size))
    .bind(words)
    .bind(rest)
    .bind(u.expiry.as_secs_f64())
    .bind(u.upload_token_id)
    .fetch_one(db)
    .await
}

/// The owner's upload by id (another account's upload is not found, nor,
/// for a token, one it did not create).
pub async fn find(db: &PgPool, id: Uuid, owner: &Owner) -> Result<Upload, ApiError> {
    let row: Option<Upload> = sqlx::query_as(&format!(
        "SELECT {COLUMNS} FROM tus_uploads WHERE id = $1 AND account_id = $2
           AND ($3::text IS NULL OR upload_token_id = $3)"
    ))
    .bind(id)
    .bind(owner.account_id)
    .bind(owner.token_id.as_deref())
    .fetch_optional(db)
    .await?;
    row.ok_or_else(|| ApiError::not_found("upload"))
}

/// Why an upload cannot be written now.
pub fn not_writable(upload: &Upload) -> ApiError {
    match upload.state {
        State::Open if upload.expired => {
            ApiError::Gone("this upload expired; start a new one".into())
        }
        State::Open => ApiError::UploadLocked(
            "another request is sending bytes to this upload; retry when it ends".into(),
        ),
        State::Completed => ApiError::Conflict("this upload is complete".into()),
        State::Terminated => ApiError::Gone("this upload was terminated".into()),
        State::Failed => ApiError::Gone("this upload was refused; start a new one".into()),
    }
}

/// Makes `token` the one writer of an open, unexpired upload for `hold`
/// (one conditional update: of two PATCHes racing, one wins). `None` when
/// the upload is not the owner's, not open, expired or held by another.
pub async fn lock(
    db: &PgPool,
    id: Uuid,
    owner: &Owner,
    token: Uuid,
    hold: Duration,
) -> Result<Option<Upload>, sqlx::Error> {
    sqlx::query_as(&format!(
        "UPDATE tus_uploads SET patch_token = $3, patch_until = now() + make_interval(secs => $4)
         WHERE id = $1 AND account_id = $2 AND state = 'open' AND expires_at > now()
           AND (patch_until IS NULL OR patch_until < now())
           AND ($5::text IS NULL OR upload_token_id = $5)
         RETURNING {COLUMNS}"
    ))
    .bind(id)
    .bind(owner.account_id)
    .bind(token)
    .bind(hold.as_secs_f64())
    .bind(owner.token_id.as_deref())
    .fetch_optional(db)
    .await
}

/// Extends the writer's hold and the upload's expiry while its bytes flow;
/// `false` when the writer no longer holds it.
pub async fn renew(
    db: &PgPool,
    id: Uuid,
    token: Uuid,
    hold: Duration,
    expiry: Duration,
) -> Result<bool, sqlx::Error> {
    let done = sqlx::query(
        "UPDATE tus_uploads SET patch_until = now() + make_interval(secs => $3),
                                expires_at = greatest(expires_at, now() + make_interval(secs => $4))
         WHERE id = $1 AND patch_token = $2 AND state = 'open'",
    )
    .bind(id)
    .bind(token)
    .bind(hold.as_secs_f64())
    .bind(expiry.as_secs_f64())
    .execute(db)
    .await?;
    Ok(done.rows_affected() == 1)
}

/// Lets another request write the upload.
pub async fn unlock(db: &PgPool, id: Uuid, token: Uuid) -> Result<(), sqlx::Error> {
    sqlx::query(
        "UPDATE tus_uploads SET patch_token = NULL, patch_until = NULL
         WHERE id = $1 AND patch_token = $2",
    )
    .bind(id)
    .bind(token)
    .execute(db)
    .await?;
    Ok(())
}

/// Records the multipart upload that the parts go to.
pub async fn set_multipart(
    db: &PgPool,
    id: Uuid,
    token: Uuid,
    upload_id: &str,
) -> Result<bool, sqlx::Error> {
    let done = sqlx::query(
        "UPDATE tus_uploads SET multipart_upload_id = $3 WHERE id = $1 AND patch_token = $2",
    )
    .bind(id)
    .bind(token)
    .bind(upload_id)
    .execute(db)
    .await?;
    Ok(done.rows_affected() == 1)
}

/// What has been stored durably, to be recorded.
pub struct Progress<'a> {
    /// Whole parts stored.
    pub parts: i32,
    /// Bytes in them.
    pub stored: u64,
    /// Bytes in the tail.
    pub tail_len: u64,
    /// The tail's segments: numbers and lengths.
    pub tail_seqs: &'a [i32],
    /// Their lengths.
    pub tail_lens: &'a [i64],
    /// The number the next segment takes.
    pub tail_next: i32,
    /// The hash of the stored parts.
    pub sha: &'a Sha256State,
    /// The type, once sniffed.
    pub kind: Option<&'a Kind>,
}

/// Records the writer's progress and pushes the expiry out to `expiry`
/// from now; `None` when the writer no longer holds the upload (nothing
/// is recorded then). Returns the new expiry. With `release`, the writer
/// lets go of the upload in the same statement (its last commit), so the
/// next request needs no separate [`unlock`].
pub async fn commit(
    db: impl sqlx::PgExecutor<'_>,
    id: Uuid,
    token: Uuid,
    p: &Progress<'_>,
    expiry: Duration,
    release: bool,
) -> Result<Option<DateTime<Utc>>, sqlx::Error> {
    let (words, rest) = p.sha.to_parts();
    sqlx::query_scalar(
        "UPDATE tus_uploads SET parts = $3, stored = $4, tail_len = $5, sha_state = $6,
                                sha_rest = $7, content_type = $8, category = $9, is_text = $10,
                                expires_at = now() + make_interval(secs => $11),
                                patch_token = CASE WHEN $12 THEN NULL ELSE patch_token END,
                                patch_until = CASE WHEN $12 THEN NULL ELSE patch_until END,
                                tail_seqs = $13, tail_lens = $14, tail_next = $15
         WHERE id = $1 AND patch_token = $2 AND state = 'open'
         RETURNING expires_at",
    )
    .bind(id)
    .bind(token)
    .bind(p.parts)
    .bind(bigint(p.stored))
    .bind(bigint(p.tail_len))
    .bind(words)
    .bind(rest)
    .bind(p.kind.map(|k| k.mime))
    .bind(p.kind.map(|k| k.category))
    .bind(p.kind.map(|k| k.text))
    .bind(expiry.as_secs_f64())
    .bind(release)
    .bind(p.tail_seqs)
    .bind(p.tail_lens)
    .bind(p.tail_next)
    .fetch_optional(db)
    .await
}

/// Moves an open upload to `to` (and drops any writer's hold); `false`
/// when it was no longer open.
pub async fn leave_open(db: &PgPool, id: Uuid, to: State) -> Result<bool, sqlx::Error> {
    let done = sqlx::query(
        "UPDATE tus_uploads SET state = $2, patch_token = NULL, patch_until = NULL
         WHERE id = $1 AND state = 'open'",
    )
    .bind(id)
    .bind(to)
    .execute(db)
    .await?;
    Ok(done.rows_affected() == 1)
}

/// The open uploads that upload token `token_id` created (to end them
/// when it is revoked).
pub async fn open_of_token(db: &PgPool, token_id: &str) -> Result<Vec<Upload>, sqlx::Error> {
    sqlx::query_as(&format!(
        "SELECT {COLUMNS} FROM tus_uploads WHERE upload_token_id = $1 AND state = 'open'"
    ))
    .bind(token_id)
    .fetch_all(db)
    .await
}

/// Of `keys`, the tail objects (segments, or the one object of earlier
/// builds) of open, unexpired uploads: the next PATCH continues from them.
pub async fn tails_in_flight(db: &PgPool, keys: &[String]) -> Result<Vec<String>, sqlx::Error> {
    let owned: Vec<(&String, Uuid)> = keys
        .iter()
        .filter_map(|k| Some((k, tail_owner(k)?)))
        .collect();
    if owned.is_empty() {
        return Ok(Vec::new());
    }
    let ids: Vec<Uuid> = owned.iter().map(|(_, id)| *id).collect();
    let open: std::collections::HashSet<Uuid> = sqlx::query_scalar(
        "SELECT id FROM tus_uploads WHERE id = ANY($1) AND state = 'open' AND expires_at > now()",
    )
    .bind(&ids)
    .fetch_all(db)
    .await?
    .into_iter()
    .collect();
    Ok(owned
        .into_iter()
        .filter(|(_, id)| open.contains(id))
        .map(|(k, _)| k.clone())
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tail_objects_name_their_upload() {
        let id = Uuid::now_v7();
        for key in [tail_key(id), segment_key(id, 0), segment_key(id, 417)] {
            assert_eq!(tail_owner(&key), Some(id), "{key}");
        }
        assert_eq!(segment_key(id, -1), tail_key(id));
        for key in [
            format!("t/{id}/tail-"),
            format!("t/{id}/tail-x"),
            format!("t/{id}/tails"),
            format!("t/{id}/tail/0"),
            format!("u/{id}/tail"),
            "t/nope/tail-1".to_owned(),
        ] {
            assert_eq!(tail_owner(&key), None, "{key}");
        }
    }
}
