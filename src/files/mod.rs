//! Stored files: recording an upload (turning its reservation into usage),
//! listing ([`list`]), reading, downloading and deleting.

mod list;

pub use list::{__path_list, FileList, ListQuery, list};

use axum::{
    body::Body,
    extract::State,
    http::{HeaderMap, HeaderValue, StatusCode, header},
    response::{IntoResponse, Response},
};
use base64::{Engine as _, engine::general_purpose::URL_SAFE_NO_PAD};
use chrono::{DateTime, Utc};
use serde::Serialize;
use sha2::{Digest, Sha256};
use sqlx::{PgPool, Postgres, QueryBuilder};
use utoipa::ToSchema;
use uuid::Uuid;

use crate::{
    auth::{CurrentAccount, upload_tokens},
    deletions::{self, Doomed},
    error::ApiError,
    extract::Path,
    quota::{reservations, slots::Lease, tokens},
    sniff::Category,
    state::AppState,
    storage::{ObjectStore, attachment_disposition},
};

/// A file as the API shows it.
#[derive(Debug, Clone, Serialize, ToSchema, sqlx::FromRow)]
pub struct FileView {
    /// File id.
    pub id: Uuid,
    /// Display name (no path components, no control characters).
    pub filename: String,
    /// MIME type decided from the content.
    pub content_type: String,
    /// image, document or video.
    pub category: Category,
    /// Size in bytes.
    pub size: i64,
    /// SHA-256 (hex); `null` for presigned uploads issued without one.
    #[serde(serialize_with = "hex_opt")]
    #[schema(value_type = Option<String>)]
    pub sha256: Option<Vec<u8>>,
    /// What the AI provider said the file shows or contains; `null` until
    /// `POST /files/{id}/describe`.
    pub description: Option<String>,
    /// Creation time.
    pub created_at: DateTime<Utc>,
    /// The `subject` of the upload token the file was uploaded with;
    /// `null` otherwise.
    pub subject: Option<String>,
    /// The `metadata` of the upload token the file was uploaded with;
    /// `null` otherwise.
    #[schema(value_type = Option<Object>)]
    pub metadata: Option<serde_json::Value>,
}

fn hex_opt<S: serde::Serializer>(v: &Option<Vec<u8>>, s: S) -> Result<S::Ok, S::Error> {
    match v {
        Some(bytes) => s.serialize_str(&hex::encode(bytes)),
        None => s.serialize_none(),
    }
}

const FILE_COLUMNS: &str = "id, filename, content_type, category, size, sha256, description, created_at, subject, metadata";

/// The object key of a file: never derived from anything the client chose.
pub fn object_key(account_id: Uuid, file_id: Uuid) -> String {
    format!("u/{account_id}/{file_id}")
}

/// A file whose bytes are in storage, ready to be recorded.
#[derive(Debug)]
pub struct NewFile {
    /// File id (also in the object key).
    pub id: Uuid,
    /// Display name.
    pub filename: String,
    /// MIME type.
    pub content_type: String,
    /// Category.
    pub category: Category,
    /// Size in bytes.
    pub size: u64,
    /// SHA-256, when known.
    pub sha256: Option<[u8; 32]>,
    /// The upload token it was uploaded with, if any: the lease holds one
    /// file and `reserved` bytes of it, which become the token's use, and
    /// the file carries the token's subject and metadata.
    pub upload_token_id: Option<String>,
}

/// Records a file: of the `reserved` bytes the lease holds for it, `size`
/// become usage and the rest is given back (and, under an upload token,
/// the token's share likewise), in the transaction that inserts the row.
/// A token revoked meanwhile records nothing (401).
pub async fn record(
    db: &PgPool,
    lease: &Lease,
    file: &NewFile,
    reserved: u64,
) -> Result<FileView, ApiError> {
    let key = object_key(lease.account_id, file.id);
    let settlement = reservations::Settlement {
        lease,
        object_key: &key,
        reserved,
        size: file.size,
    };
    let spend = file
        .upload_token_id
        .as_deref()
        .map(|token_id| tokens::Spend {
            lease,
            token_id,
            reserved,
            size: file.size,
        });
    let mut query: QueryBuilder<'_, Postgres> = QueryBuilder::new("WITH ");
    let gate = spend.as_ref().map(|s| s.push_gate(&mut query));
    settlement.push(&mut query, gate);
    let token_columns = match &spend {
        Some(spend) => {
            spend.push_spend(&mut query);
            "(SELECT subject FROM token_spent), (SELECT metadata FROM token_spent)"
        }
        None => "NULL, NULL",
    };
    query
        .push(
            "INSERT INTO files (id, account_id, filename, content_type, category, size, sha256,
                                object_key, subject, metadata)
             SELECT ",
        )
        .push_bind(file.id)
        .push(", settled.account_id, ")
        .push_bind(&file.filename)
        .push(", ")
        .push_bind(&file.content_type)
        .push(", ")
        .push_bind(file.category)
        .push(", settled.size, ")
        .push_bind(file.sha256.map(|h| h.to_vec()))
        .push(", settled.object_key, ")
        .push(token_columns)
        .push(" FROM settled");
    query.push(" RETURNING ").push(FILE_COLUMNS);
    let view: Option<FileView> = query.build_query_as().fetch_optional(db).await?;
    let Some(view) = view else {
        if let Some(token_id) = file.upload_token_id.as_deref()
            && upload_tokens::is_revoked(db, token_id).await?
        {
            return Err(tokens::revoked());
        }
        return Err(ApiError::ServiceUnavailable(
            "the upload's lease expired before the file was recorded; retry".into(),
        ));
    };
    metrics::counter!("intake_upload_files_total", "category" => file.category.as_str())
        .increment(1);
    Ok(view)
}

/// Deletes a file: the row and its usage in one transaction that also
/// queues its object for deletion; the object goes right after the commit
/// (or later, by the reaper, if storage fails now). The upload token it was
/// uploaded with keeps it in its use: a token counts what was uploaded.
pub async fn delete(
    db: &PgPool,
    store: &dyn ObjectStore,
    account_id: Uuid,
    file_id: Uuid,
) -> Result<(), ApiError> {
    delete_uploaded(db, store, account_id, file_id, None).await
}

/// [`delete`], for a file that the request uploading it refuses as a whole
/// (a batch that keeps nothing): the upload token it was uploaded with,
/// `token_id`, gets it back too, in the same transaction.
pub async fn delete_uploaded(
    db: &PgPool,
    store: &dyn ObjectStore,
    account_id: Uuid,
    file_id: Uuid,
    token_id: Option<&str>,
) -> Result<(), ApiError> {
    let mut tx = db.begin().await?;
    let gone: Option<(i64, String)> = sqlx::query_as(
        "DELETE FROM files WHERE id = $1 AND account_id = $2 RETURNING size, object_key",
    )
    .bind(file_id)
    .bind(account_id)
    .fetch_optional(&mut *tx)
    .await?;
    let Some((size, key)) = gone else {
        return Err(ApiError::not_found("file"));
    };
    reservations::free(&mut tx, account_id, size.max(0) as u64).await?;
    if let Some(token_id) = token_id {
        tokens::refund(&mut tx, token_id, size.max(0) as u64).await?;
    }
    let doomed = [Doomed::object(key)];
    deletions::enqueue(&mut tx, &doomed[0]).await?;
    tx.commit().await?;
    deletions::delete_queued(db, store, &doomed).await;
    Ok(())
}

/// A file's row as `intake admin reconcile` holds it against storage.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct StoredFile {
    /// Its object's key.
    pub object_key: String,
    /// File id.
    pub id: Uuid,
    /// Its account.
    pub account_id: Uuid,
    /// Its size.
    pub size: i64,
}

/// Up to `limit` files whose keys come after `after`, in the byte order of
/// the keys (the order storage lists objects in; an index serves it).
pub async fn page_by_key(
    db: &PgPool,
    after: &str,
    limit: usize,
) -> Result<Vec<StoredFile>, sqlx::Error> {
    sqlx::query_as(
        "SELECT object_key, id, account_id, size FROM files
         WHERE object_key COLLATE \"C\" > $1
         ORDER BY object_key COLLATE \"C\" LIMIT $2",
    )
    .bind(after)
    .bind(i64::try_from(limit).unwrap_or(i64::MAX))
    .fetch_all(db)
    .await
}

/// Of `keys`, those that are files' objects.
pub async fn known_keys(db: &PgPool, keys: &[String]) -> Result<Vec<String>, sqlx::Error> {
    sqlx::query_scalar("SELECT object_key FROM files WHERE object_key = ANY($1)")
        .bind(keys)
        .fetch_all(db)
        .await
}

/// A JSON answer with a strong ETag of its body, or 304 when the client has it.
fn with_etag<T: Serialize>(headers: &HeaderMap, value: &T) -> Result<Response, ApiError> {
    let body = serde_json::to_vec(value).map_err(|e| ApiError::Internal(e.into()))?;
    let etag = format!(
        "\"{}\"",
        URL_SAFE_NO_PAD.encode(&Sha256::digest(&body)[..16])
    );
    let matches = headers
        .get(header::IF_NONE_MATCH)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| {
            v.split(',').any(|t| {
                t.trim() == etag || t.trim() == "*" || t.trim().trim_start_matches("W/") == etag
            })
        });
    let etag = HeaderValue::from_str(&etag).map_err(|e| ApiError::Internal(e.into()))?;
    if matches {
        return Ok((StatusCode::NOT_MODIFIED, [(header::ETAG, etag)]).into_response());
    }
    Ok((
        [
            (header::ETAG, etag),
            (
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/json"),
            ),
        ],
        body,
    )
        .into_response())
}

/// One of the account's files, if it exists.
pub async fn find_view(
    db: &PgPool,
    account_id: Uuid,
    id: Uuid,
) -> Result<Option<FileView>, sqlx::Error> {
    sqlx::query_as(&format!(
        "SELECT {FILE_COLUMNS} FROM files WHERE id = $1 AND account_id = $2"
    ))
    .bind(id)
    .bind(account_id)
    .fetch_optional(db)
    .await
}

/// One of the account's files with its object key; another account's file
/// is not found, never forbidden.
pub async fn find(db: &PgPool, account_id: Uuid, id: Uuid) -> Result<(FileView, String), ApiError> {
    #[derive(sqlx::FromRow)]
    struct Row {
        #[sqlx(flatten)]
        view: FileView,
        object_key: String,
    }
    let row: Option<Row> = sqlx::query_as(&format!(
        "SELECT {FILE_COLUMNS}, object_key FROM files WHERE id = $1 AND account_id = $2"
    ))
    .bind(id)
    .bind(account_id)
    .fetch_optional(db)
    .await?;
    // Another account's file is not found, never forbidden.
    row.map(|r| (r.view, r.object_key))
        .ok_or_else(|| ApiError::not_found("file"))
}

/// Stores a file's description, replacing any earlier one. `None` when the
/// file is gone (deleted meanwhile).
pub async fn set_description(
    db: &PgPool,
    account_id: Uuid,
    id: Uuid,
    description: &str,
) -> Result<Option<FileView>, sqlx::Error> {
    sqlx::query_as(&format!(
        "UPDATE files SET description = $3 WHERE id = $1 AND account_id = $2 RETURNING {FILE_COLUMNS}"
    ))
    .bind(id)
    .bind(account_id)
    .bind(description)
    .fetch_optional(db)
    .await
}

/// One file.
#[utoipa::path(get, path = "/files/{id}", tag = "files", params(("id" = Uuid, Path)),
    responses((status = 200, body = FileView), (status = 304), (status = 404)))]
pub async fn get(
    State(state): State<AppState>,
    auth: CurrentAccount,
    Path(id): Path<Uuid>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let view = find_view(&state.db, auth.account.id, id)
        .await?
        .ok_or_else(|| ApiError::not_found("file"))?;
    with_etag(&headers, &view)
}

/// How long a download redirect stays valid.
const DOWNLOAD_URL_TTL: std::time::Duration = std::time::Duration::from_secs(300);

/// What every answer with a file's bytes carries beside its type and
/// disposition: no type sniffing, no script of the file's running (the
/// `sandbox` of CSP, even when the file is opened directly), and no other
/// site embedding it.
const SERVED_FILE_HEADERS: [(header::HeaderName, &str); 3] = [
    (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
    (header::CONTENT_SECURITY_POLICY, "sandbox"),
    (
        header::HeaderName::from_static("cross-origin-resource-policy"),
        "same-origin",
    ),
];

/// The file's bytes: a 302 to a short-lived presigned URL on S3, the bytes
/// themselves with the local backend; always as an attachment, as the
/// file's own type (`sniff::served_type`).
#[utoipa::path(get, path = "/files/{id}/content", tag = "files", params(("id" = Uuid, Path)),
    responses((status = 302, description = "redirect to a short-lived URL (S3)"),
              (status = 200, description = "the bytes (local backend), with the file's own content type", body = crate::body::RawBytes, content_type = "*/*"),
              (status = 404)))]
pub async fn content(
    State(state): State<AppState>,
    auth: CurrentAccount,
    Path(id): Path<Uuid>,
) -> Result<Response, ApiError> {
    let (view, key) = find(&state.db, auth.account.id, id).await?;
    let disposition = HeaderValue::from_str(&attachment_disposition(&view.filename))
        .map_err(|e| ApiError::Internal(e.into()))?;
    let content_type = crate::sniff::served_type(&view.content_type);
    if state.store.kind() == "s3" {
        let signed = state
            .store
            .presign_get(&key, &view.filename, content_type, DOWNLOAD_URL_TTL)
            .await
            .map_err(|e| ApiError::Internal(e.into()))?;
        let location =
            HeaderValue::from_str(&signed.url).map_err(|e| ApiError::Internal(e.into()))?;
        return Ok((
            StatusCode::FOUND,
            [
                (header::LOCATION, location),
                (header::CONTENT_DISPOSITION, disposition),
            ],
        )
            .into_response());
    }
    let body = state
        .store
        .get(&key, None)
        .await
        .map_err(|e| ApiError::Internal(e.into()))?;
    let mut response = (
        [
            (header::CONTENT_TYPE, HeaderValue::from_static(content_type)),
            (header::CONTENT_LENGTH, HeaderValue::from(body.len)),
            (header::CONTENT_DISPOSITION, disposition),
        ],
        Body::from_stream(body.stream),
    )
        .into_response();
    for (name, value) in SERVED_FILE_HEADERS {
        response
            .headers_mut()
            .insert(name, HeaderValue::from_static(value));
    }
    Ok(response)
}

/// Deletes a file; its bytes leave the usage at once.
#[utoipa::path(delete, path = "/files/{id}", tag = "files", params(("id" = Uuid, Path)),
    responses((status = 204), (status = 404)))]
pub async fn remove(
    State(state): State<AppState>,
    auth: CurrentAccount,
    Path(id): Path<Uuid>,
) -> Result<StatusCode, ApiError> {
    delete(&state.db, state.store.as_ref(), auth.account.id, id).await?;
    Ok(StatusCode::NO_CONTENT)
}
