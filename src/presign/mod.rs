//! Presigned uploads: the client sends the bytes straight to object storage
//! (or, with the local folder, to intake's own data route) through signed
//! URLs, and intake keeps every limit anyway: the type and size are checked
//! at issue, the size is reserved from the quota and a concurrent-upload
//! slot is held from issue to completion, abort or expiry, and completion
//! verifies the stored object before it becomes a file.

use std::time::Duration;

use axum::{
    body::Body,
    extract::State,
    http::{HeaderMap, StatusCode, header},
};
use chrono::{DateTime, Utc};
use futures_util::StreamExt;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use sqlx::PgPool;
use utoipa::ToSchema;
use uuid::Uuid;

use crate::{
    auth::CurrentAccount,
    error::ApiError,
    files::{self, FileView, NewFile},
    http::extract::{Json, Path, Query},
    quota::lease::{self, Lease, Reclaim},
    state::AppState,
    storage::{FsStore, PutConditions, StorageError},
    upload::{
        sanitize_filename,
        sniff::{self, Category, SNIFF_BYTES, SniffError, Utf8Stream},
    },
};

/// Above this size an upload is always multipart (S3's single-PUT limit).
const SINGLE_PUT_MAX: u64 = 5 * 1024 * 1024 * 1024;
/// Smallest part intake hands out (S3's minimum is 5 MiB).
const MIN_PART: u64 = 8 * 1024 * 1024;
/// S3's largest part count.
const MAX_PARTS: u64 = 10_000;
/// How long after its URLs expire an unfinished upload keeps its slot, so a
/// PUT that started just before expiry can still complete.
const LEASE_GRACE: Duration = Duration::from_secs(60);

/// Body of `POST /upload/presigned`.
#[derive(Debug, Deserialize, ToSchema)]
pub struct PresignRequest {
    /// The file's name (display only).
    pub filename: String,
    /// The file's type; the PUT must send exactly this `Content-Type`.
    pub content_type: String,
    /// Exact size in bytes.
    pub size: u64,
    /// SHA-256 of the content (hex); storage refuses other bytes.
    pub sha256: Option<String>,
    /// Ask for a multipart upload even at 5 GB or less.
    #[serde(default)]
    pub multipart: bool,
}

/// One part's URL.
#[derive(Debug, Serialize, ToSchema)]
pub struct PartUrl {
    /// From 1.
    pub part_number: u32,
    /// PUT the part's bytes here.
    pub url: String,
}

/// Answer of `POST /upload/presigned`: a single PUT (`method`, `url`,
/// `headers`) or a multipart upload (`part_size`, `parts`).
#[derive(Debug, Serialize, ToSchema)]
pub struct Presigned {
    /// Id to complete or abort the upload with.
    pub upload_id: Uuid,
    /// When the URLs stop working.
    pub expires_at: DateTime<Utc>,
    /// `PUT`, for a single upload.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub method: Option<String>,
    /// The URL, for a single upload.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub url: Option<String>,
    /// Headers to send exactly as given, for a single upload.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<Object>)]
    pub headers: Option<serde_json::Map<String, serde_json::Value>>,
    /// Bytes of every part but the last, for a multipart upload.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub part_size: Option<u64>,
    /// The parts' URLs, for a multipart upload.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub parts: Option<Vec<PartUrl>>,
}

/// A completed part, as storage answered its PUT.
#[derive(Debug, Deserialize, ToSchema)]
pub struct CompletedPart {
    /// From 1.
    pub part_number: i32,
    /// The `ETag` storage answered.
    pub etag: String,
}

/// Body of `POST /upload/presigned/{id}/complete` (multipart uploads only).
#[derive(Debug, Default, Deserialize, ToSchema)]
pub struct CompleteRequest {
    /// Every part, in order.
    #[serde(default)]
    pub parts: Vec<CompletedPart>,
}

/// The part size for `size` bytes: at least 8 MiB, whole MiB, and at most
/// 10,000 parts.
pub fn part_size(size: u64) -> u64 {
    let mib = 1024 * 1024;
    let needed = size.div_ceil(MAX_PARTS).div_ceil(mib) * mib;
    needed.max(MIN_PART)
}

fn parse_sha256(hex_digest: &str) -> Result<[u8; 32], ApiError> {
    let bytes = hex::decode(hex_digest.trim())
        .map_err(|_| ApiError::unprocessable("sha256 must be 64 hexadecimal characters"))?;
    bytes
        .try_into()
        .map_err(|_| ApiError::unprocessable("sha256 must be 64 hexadecimal characters"))
}

fn storage_error(e: StorageError) -> ApiError {
    match e {
        StorageError::Unsupported(what) => {
            ApiError::unprocessable(format!("{what} need the S3 storage backend"))
        }
        other => ApiError::Internal(other.into()),
    }
}

#[derive(Debug, sqlx::FromRow)]
struct Row {
    id: Uuid,
    account_id: Uuid,
    lease_id: Uuid,
    filename: String,
    content_type: String,
    category: Category,
    size: i64,
    sha256: Option<Vec<u8>>,
    multipart_upload_id: Option<String>,
    state: String,
    expired: bool,
}

const ROW_COLUMNS: &str = "id, account_id, lease_id, filename, content_type, category, size, sha256, \
     multipart_upload_id, state, expires_at < now() AS expired";

async fn find(db: &PgPool, id: Uuid, account_id: Option<Uuid>) -> Result<Row, ApiError> {
    let row: Option<Row> = sqlx::query_as(&format!(
        "SELECT {ROW_COLUMNS} FROM presigned_uploads
         WHERE id = $1 AND ($2::uuid IS NULL OR account_id = $2)"
    ))
    .bind(id)
    .bind(account_id)
    .fetch_optional(db)
    .await?;
    row.ok_or_else(|| ApiError::not_found("presigned upload"))
}

impl Row {
    fn key(&self) -> String {
        files::object_key(self.account_id, self.id)
    }

    fn lease(&self, ttl: Duration) -> Lease {
        Lease::existing(self.lease_id, self.account_id, ttl)
    }
}

/// Issues the URLs of one upload.
#[utoipa::path(post, path = "/upload/presigned", tag = "uploads", request_body = PresignRequest,
    responses((status = 201, body = Presigned), (status = 413, description = "above the type's cap"),
              (status = 415), (status = 429), (status = 507)))]
pub async fn issue(
    State(state): State<AppState>,
    auth: CurrentAccount,
    Json(body): Json<PresignRequest>,
) -> Result<(StatusCode, Json<Presigned>), ApiError> {
    let account = &auth.account;
    let limits = account.limits();
    let filename = sanitize_filename(&body.filename);
    let kind = sniff::announced(&body.content_type, &filename).map_err(|e| match e {
        SniffError::Unsupported(d) => ApiError::UnsupportedMediaType(d),
        SniffError::Mismatch(d) => ApiError::TypeMismatch(d),
    })?;
    if body.size == 0 {
        return Err(ApiError::unprocessable("size must be at least 1 byte"));
    }
    let cap = match kind.category {
        Category::Image => limits.max_image_bytes,
        Category::Document => limits.max_document_bytes,
        Category::Video => limits.max_video_bytes,
    };
    if body.size > cap {
        return Err(ApiError::FileTooLarge { limit: cap });
    }
    let sha256 = body.sha256.as_deref().map(parse_sha256).transpose()?;
    let multipart = body.multipart || body.size > SINGLE_PUT_MAX;
    if multipart && sha256.is_some() {
        return Err(ApiError::unprocessable(
            "sha256 binds a single PUT; leave it out of multipart uploads",
        ));
    }
    let expiry = state.config.presign_expiry;
    let ttl = expiry + LEASE_GRACE;
    let lease = lease::take_slot(
        &state.db,
        account.id,
        "presigned",
        limits.concurrent_uploads,
        ttl,
    )
    .await?;
    let id = Uuid::now_v7();
    let key = files::object_key(account.id, id);
    let issued = async {
        lease.reserve(&state.db, body.size, limits.storage_bytes, Some(&key)).await?;
        let expires_at = Utc::now() + chrono::Duration::from_std(expiry).map_err(|e| ApiError::Internal(e.into()))?;
        let mut answer = Presigned {
            upload_id: id,
            expires_at,
            method: None,
            url: None,
            headers: None,
            part_size: None,
            parts: None,
        };
        let (upload_id, part) = if multipart {
            let upload_id = state.store.create_multipart(&key, &body.content_type).await.map_err(storage_error)?;
            lease.track_object(&state.db, Some(&key), Some(&upload_id)).await?;
            let part = part_size(body.size);
            let count = body.size.div_ceil(part);
            let mut parts = Vec::with_capacity(count as usize);
            for n in 1..=count {
                let len = if n == count { body.size - part * (count - 1) } else { part };
                let signed = state
                    .store
                    .presign_upload_part(&key, &upload_id, n as i32, len, expiry)
                    .await
                    .map_err(storage_error)?;
                parts.push(PartUrl { part_number: n as u32, url: signed.url });
            }
            answer.part_size = Some(part);
            answer.parts = Some(parts);
            (Some(upload_id), Some(part))
        } else {
            let conditions =
                PutConditions { content_length: body.size, content_type: body.content_type.clone(), sha256 };
            let signed = state.store.presign_put(&key, &conditions, expiry).await.map_err(storage_error)?;
            answer.method = Some(signed.method.to_string());
            answer.url = Some(signed.url);
            answer.headers = Some(
                signed
                    .headers
                    .iter()
                    .filter_map(|(k, v)| Some((k.to_string(), serde_json::Value::from(v.to_str().ok()?))))
                    .collect(),
            );
            (None, None)
        };
        sqlx::query(
            "INSERT INTO presigned_uploads (id, account_id, lease_id, filename, content_type, category,
                                            size, sha256, multipart_upload_id, part_size, expires_at)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11)",
        )
        .bind(id)
        .bind(account.id)
        .bind(lease.id)
        .bind(&filename)
        .bind(&body.content_type)
        .bind(kind.category)
        .bind(body.size as i64)
        .bind(sha256.map(|h| h.to_vec()))
        .bind(upload_id)
        .bind(part.map(|p| p as i64))
        .bind(expires_at)
        .execute(&state.db)
        .await?;
        Ok::<_, ApiError>(answer)
    }
    .await;
    match issued {
        Ok(answer) => {
            metrics::counter!("intake_presigned_issued_total").increment(1);
            Ok((StatusCode::CREATED, Json(answer)))
        }
        Err(e) => {
            // Nothing of a refused issue stays: slot, reservation, multipart upload.
            lease::reclaim(&state.db, state.store.as_ref(), lease.id, Reclaim::Own).await?;
            Err(e)
        }
    }
}

/// Ends an upload that failed verification: the object goes, the
/// reservation and the slot come back, the row says so.
async fn fail(state: &AppState, row: &Row, why: String) -> ApiError {
    let ended = async {
        // The lease tracks the object and its multipart upload: ending it
        // removes both and gives back the reservation and the slot.
        lease::reclaim(&state.db, state.store.as_ref(), row.lease_id, Reclaim::Own).await?;
        sqlx::query("UPDATE presigned_uploads SET state = 'failed' WHERE id = $1")
            .bind(row.id)
            .execute(&state.db)
            .await?;
        Ok::<_, sqlx::Error>(())
    }
    .await;
    if let Err(e) = ended {
        tracing::error!(error = %e, upload = %row.id, "could not end a failed presigned upload; the reaper will");
    }
    metrics::counter!("intake_presigned_failed_total").increment(1);
    ApiError::UploadVerificationFailed(why)
}

/// Checks the stored object against what was declared: size, type (first
/// bytes) and, for text documents, UTF-8 to the last byte.
async fn verify(state: &AppState, row: &Row) -> Result<(), String> {
    let key = row.key();
    let size = match state.store.head(&key).await {
        Ok(Some(size)) => size,
        Ok(None) => return Err("nothing was uploaded".into()),
        Err(e) => return Err(format!("the stored object cannot be read: {e}")),
    };
    if size != row.size as u64 {
        return Err(format!(
            "{size} bytes were stored, {} were declared",
            row.size
        ));
    }
    let head_len = size.min(SNIFF_BYTES as u64);
    let mut body = state
        .store
        .get(&key, Some(0..head_len))
        .await
        .map_err(|e| e.to_string())?;
    let mut head = Vec::with_capacity(head_len as usize);
    while let Some(chunk) = body.stream.next().await {
        head.extend_from_slice(&chunk.map_err(|e| e.to_string())?);
    }
    let kind = sniff::sniff(
        &head,
        size <= SNIFF_BYTES as u64,
        &row.content_type,
        &row.filename,
    )
    .map_err(|e| e.to_string())?;
    if kind.text && size > SNIFF_BYTES as u64 {
        let mut body = state
            .store
            .get(&key, None)
            .await
            .map_err(|e| e.to_string())?;
        let mut utf8 = Utf8Stream::default();
        while let Some(chunk) = body.stream.next().await {
            if !utf8.feed(&chunk.map_err(|e| e.to_string())?) {
                return Err("text documents must be valid UTF-8".into());
            }
        }
        if !utf8.finish() {
            return Err("text documents must be valid UTF-8".into());
        }
    }
    Ok(())
}

async fn completed_file(db: &PgPool, row: &Row) -> Result<Option<FileView>, ApiError> {
    Ok(files::find_view(db, row.account_id, row.id).await?)
}

/// Completes an upload: finishes the multipart upload, verifies the object,
/// and records the file. Completing twice answers the same file.
#[utoipa::path(post, path = "/upload/presigned/{id}/complete", tag = "uploads",
    params(("id" = Uuid, Path)), request_body = CompleteRequest,
    responses((status = 201, body = FileView), (status = 404), (status = 410, description = "expired or aborted"),
              (status = 422, description = "upload_verification_failed")))]
pub async fn complete(
    State(state): State<AppState>,
    auth: CurrentAccount,
    Path(id): Path<Uuid>,
    body: axum::body::Bytes,
) -> Result<(StatusCode, Json<FileView>), ApiError> {
    // The body is optional: single uploads complete without one.
    let body: CompleteRequest = if body.iter().all(u8::is_ascii_whitespace) {
        CompleteRequest::default()
    } else {
        serde_json::from_slice(&body)
            .map_err(|e| ApiError::unprocessable(format!("invalid body: {e}")))?
    };
    let row = find(&state.db, id, Some(auth.account.id)).await?;
    if let Some(file) = completed_file(&state.db, &row).await? {
        return Ok((StatusCode::CREATED, Json(file)));
    }
    match row.state.as_str() {
        "pending" if !row.expired => {}
        "failed" => {
            return Err(ApiError::Gone(
                "this upload failed verification; start a new one".into(),
            ));
        }
        _ => {
            return Err(ApiError::Gone(
                "this upload expired or was aborted; start a new one".into(),
            ));
        }
    }
    if let Some(upload_id) = &row.multipart_upload_id {
        let parts: Vec<(i32, String)> = body
            .parts
            .into_iter()
            .map(|p| (p.part_number, p.etag))
            .collect();
        if parts.is_empty() {
            return Err(ApiError::unprocessable(
                "a multipart upload completes with its parts",
            ));
        }
        if let Err(e) = state
            .store
            .complete_multipart(&row.key(), upload_id, &parts)
            .await
        {
            return Err(fail(
                &state,
                &row,
                format!("the parts do not make the upload: {e}"),
            )
            .await);
        }
    }
    if let Err(why) = verify(&state, &row).await {
        return Err(fail(&state, &row, why).await);
    }
    let lease = row.lease(state.config.presign_expiry + LEASE_GRACE);
    let new = NewFile {
        id: row.id,
        filename: row.filename.clone(),
        content_type: sniff::announced(&row.content_type, &row.filename)
            .map(|k| k.mime.to_owned())
            .unwrap_or_else(|_| row.content_type.clone()),
        category: row.category,
        size: row.size as u64,
        sha256: row.sha256.as_deref().and_then(|h| h.try_into().ok()),
    };
    let view = match files::record(&state.db, &lease, &new, row.size as u64).await {
        Ok(view) => view,
        // Another request completed it at the same moment.
        Err(e) => match completed_file(&state.db, &row).await? {
            Some(file) => return Ok((StatusCode::CREATED, Json(file))),
            None => return Err(e),
        },
    };
    sqlx::query("UPDATE presigned_uploads SET state = 'completed' WHERE id = $1")
        .bind(row.id)
        .execute(&state.db)
        .await?;
    // The file owns the object now (its key left the lease): ending the
    // lease frees the slot and nothing else.
    lease::reclaim(&state.db, state.store.as_ref(), row.lease_id, Reclaim::Own).await?;
    metrics::counter!("intake_presigned_completed_total").increment(1);
    Ok((StatusCode::CREATED, Json(view)))
}

/// Aborts an upload: its object or multipart upload goes, its reservation
/// and slot come back.
#[utoipa::path(delete, path = "/upload/presigned/{id}", tag = "uploads", params(("id" = Uuid, Path)),
    responses((status = 204), (status = 404), (status = 409, description = "already completed")))]
pub async fn abort(
    State(state): State<AppState>,
    auth: CurrentAccount,
    Path(id): Path<Uuid>,
) -> Result<StatusCode, ApiError> {
    let row = find(&state.db, id, Some(auth.account.id)).await?;
    if row.state == "completed" {
        return Err(ApiError::Conflict(
            "this upload is complete; delete the file instead".into(),
        ));
    }
    lease::reclaim(&state.db, state.store.as_ref(), row.lease_id, Reclaim::Own).await?;
    sqlx::query(
        "UPDATE presigned_uploads SET state = 'aborted' WHERE id = $1 AND state = 'pending'",
    )
    .bind(row.id)
    .execute(&state.db)
    .await?;
    Ok(StatusCode::NO_CONTENT)
}

/// The signed query of a local-folder upload URL.
#[derive(Debug, Deserialize, utoipa::IntoParams)]
pub struct DataQuery {
    /// Unix second the URL expires at.
    pub expires: u64,
    /// HMAC of the upload's conditions.
    pub signature: String,
}

/// The local-folder backend's upload URL: the bytes of a presigned upload,
/// held to the declared length, type and checksum.
#[utoipa::path(put, path = "/upload/presigned/{id}/data", tag = "uploads",
    params(("id" = Uuid, Path), DataQuery),
    request_body(content_type = "application/octet-stream"),
    responses((status = 200), (status = 400), (status = 403, description = "bad or expired signature")))]
pub async fn data(
    State(state): State<AppState>,
    Path(id): Path<Uuid>,
    Query(query): Query<DataQuery>,
    headers: HeaderMap,
    body: Body,
) -> Result<StatusCode, ApiError> {
    let row = find(&state.db, id, None).await.map_err(|_| forbidden())?;
    let Some(fs) = state.store.as_fs() else {
        return Err(ApiError::not_found("upload route"));
    };
    let conditions = PutConditions {
        content_length: row.size as u64,
        content_type: row.content_type.clone(),
        sha256: row.sha256.as_deref().and_then(|h| h.try_into().ok()),
    };
    let key = row.key();
    if row.state != "pending"
        || !fs.verify(
            "PUT",
            &key,
            query.expires,
            &FsStore::put_binding(&conditions),
            &query.signature,
        )
    {
        return Err(forbidden());
    }
    let header_is = |name: header::HeaderName, want: &str| {
        headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v == want)
    };
    if !header_is(header::CONTENT_LENGTH, &row.size.to_string())
        || !header_is(header::CONTENT_TYPE, &row.content_type)
    {
        return Err(ApiError::bad_request(
            "Content-Length and Content-Type must be the signed ones",
        ));
    }
    let part = usize::try_from(state.config.upload_part_bytes).unwrap_or(usize::MAX);
    let mut writer = state
        .store
        .writer(&key, &row.content_type, part)
        .await
        .map_err(|e| ApiError::Internal(e.into()))?;
    let mut hasher = Sha256::new();
    let mut total: u64 = 0;
    let mut stream = body.into_data_stream();
    let received = async {
        while let Some(chunk) = stream.next().await {
            let chunk = chunk
                .map_err(|_| ApiError::bad_request("the body could not be read to its end"))?;
            total += chunk.len() as u64;
            if total > row.size as u64 {
                return Err(ApiError::bad_request(
                    "more bytes than the signed Content-Length",
                ));
            }
            hasher.update(&chunk);
            writer
                .write(chunk)
                .await
                .map_err(|e| ApiError::Internal(e.into()))?;
        }
        if total != row.size as u64 {
            return Err(ApiError::bad_request(
                "fewer bytes than the signed Content-Length",
            ));
        }
        if let Some(want) = conditions.sha256 {
            let got: [u8; 32] = hasher.finalize().into();
            if got != want {
                return Err(ApiError::bad_request(
                    "the content does not match the signed sha256",
                ));
            }
        }
        Ok(())
    }
    .await;
    match received {
        Ok(()) => {
            writer
                .finish()
                .await
                .map_err(|e| ApiError::Internal(e.into()))?;
            Ok(StatusCode::OK)
        }
        Err(e) => {
            let _ = writer.abort().await;
            Err(e)
        }
    }
}

fn forbidden() -> ApiError {
    ApiError::Forbidden("the upload URL is invalid or expired".into())
}
