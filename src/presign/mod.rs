//! Presigned uploads: the client sends the bytes straight to object storage
//! (or, with the local folder, to intake's own data route) through signed
//! URLs, and intake keeps every limit anyway: the type and size are checked
//! at issue ([`quota::caps`]), the size is reserved from the quota
//! ([`quota::reservations`]) and a concurrent-upload slot ([`quota::slots`])
//! is held from issue to completion, abort or expiry; completion verifies
//! the stored object ([`verify`]) before it becomes a file.

mod uploads;
mod verify;

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
use utoipa::ToSchema;
use uuid::Uuid;

use crate::{
    auth::{Account, CurrentAccount},
    deletions::{self, Doomed},
    error::ApiError,
    extract::{Json, Path, Query},
    files::{self, FileView, NewFile},
    quota::{
        caps::{Cap, Route},
        reservations,
        slots::{self, Lease, Slot, UploadKind},
    },
    sniff::{self, Kind},
    state::AppState,
    storage::{FsStore, PutConditions, StorageError},
    upload::sanitize_filename,
};
pub use uploads::staged_in_flight;
use uploads::{NewUpload, State as UploadState, Upload};

/// Above this size an upload is always multipart (S3's single-PUT limit).
const SINGLE_PUT_MAX: u64 = 5 * 1024 * 1024 * 1024;
/// Smallest part intake hands out (S3's minimum is 5 MiB).
const MIN_PART: u64 = 8 * 1024 * 1024;
/// S3's largest part count.
const MAX_PARTS: u64 = 10_000;
/// How long after its URLs expire an unfinished upload keeps its slot, so a
/// PUT that started just before expiry can still complete.
const LEASE_GRACE: Duration = Duration::from_secs(60);
/// How long one request's claim on a completion holds if its instance dies.
const COMPLETE_CLAIM: Duration = Duration::from_secs(120);
/// How long a concurrent complete waits for the one that holds the claim.
const COMPLETE_WAIT: Duration = Duration::from_secs(60);
/// How often it looks.
const COMPLETE_POLL: Duration = Duration::from_millis(100);
/// Seconds past a URL's expiry before its staging object is deleted for
/// good, for storage whose clock runs a little behind ours.
const URL_CLOCK_SKEW_SECS: i64 = 5;

/// Body of `POST /upload/presigned`.
#[derive(Debug, Deserialize, ToSchema)]
pub struct PresignRequest {
    /// The file's name (display only).
    pub filename: String,
    /// The file's type, one intake accepts (aliases such as `image/jpg`
    /// and parameters are accepted too, and normalised: the PUT must send
    /// exactly the `Content-Type` the answer's headers give).
    #[schema(schema_with = accepted_content_type)]
    pub content_type: String,
    /// Exact size in bytes.
    #[schema(minimum = 1)]
    pub size: u64,
    /// SHA-256 of the content (hex); storage refuses other bytes.
    #[schema(pattern = "^[0-9a-fA-F]{64}$")]
    pub sha256: Option<String>,
    /// Ask for a multipart upload even at 5 GB or less.
    #[serde(default)]
    pub multipart: bool,
}

/// The documented body of `POST /upload/presigned`: a [`PresignRequest`]
/// whose `sha256`, if any, goes with a single PUT (no `multipart`, at most
/// 5 GiB), as a multipart upload has no single signature to bind it to
/// (422): a rule between fields that the struct's own schema cannot state.
pub struct PresignBody;

impl utoipa::PartialSchema for PresignBody {
    fn schema() -> utoipa::openapi::RefOr<utoipa::openapi::Schema> {
        use utoipa::openapi::{
            AllOfBuilder, ObjectBuilder, Ref,
            schema::{AnyOfBuilder, SchemaType, Type},
        };
        let single_put = ObjectBuilder::new()
            .property(
                "multipart",
                ObjectBuilder::new()
                    .schema_type(SchemaType::Type(Type::Boolean))
                    .enum_values(Some([false])),
            )
            .property("size", single_put_size());
        let no_sha256 = ObjectBuilder::new().property(
            "sha256",
            ObjectBuilder::new().schema_type(SchemaType::Type(Type::Null)),
        );
        AllOfBuilder::new()
            .item(Ref::from_schema_name("PresignRequest"))
            .item(AnyOfBuilder::new().item(single_put).item(no_sha256))
            .into()
    }
}

impl ToSchema for PresignBody {
    fn schemas(schemas: &mut Vec<(String, utoipa::openapi::RefOr<utoipa::openapi::Schema>)>) {
        schemas.push((
            "PresignRequest".into(),
            <PresignRequest as utoipa::PartialSchema>::schema(),
        ));
        <PresignRequest as ToSchema>::schemas(schemas);
    }
}

/// States in the OpenAPI document what this server's storage allows: the
/// local folder takes no multipart presigned uploads (422), so there
/// `multipart` can only be `false` and `size` at most one PUT's.
pub fn document(doc: &mut utoipa::openapi::OpenApi, storage: &crate::config::StorageConfig) {
    use utoipa::openapi::{RefOr, Schema};
    if !matches!(storage, crate::config::StorageConfig::Fs { .. }) {
        return;
    }
    let request = doc
        .components
        .as_mut()
        .and_then(|c| c.schemas.get_mut("PresignRequest"));
    if let Some(RefOr::T(Schema::Object(object))) = request
        && let Some(RefOr::T(Schema::Object(multipart))) = object.properties.get_mut("multipart")
    {
        multipart.enum_values = Some(vec![false.into()]);
        multipart.description =
            Some("Multipart presigned uploads need the S3 backend: not on this server.".into());
    }
    if let Some(RefOr::T(Schema::Object(object))) = doc
        .components
        .as_mut()
        .and_then(|c| c.schemas.get_mut("PresignRequest"))
    {
        // Above one PUT's size an upload would be multipart.
        object
            .properties
            .insert("size".into(), single_put_size().into());
    }
}

/// A `size` that one PUT can carry.
fn single_put_size() -> utoipa::openapi::Object {
    utoipa::openapi::ObjectBuilder::new()
        .schema_type(utoipa::openapi::schema::Type::Integer)
        .minimum(Some(1))
        .maximum(Some(SINGLE_PUT_MAX as f64))
        .build()
}

/// The schema of a declared `content_type`: the accepted types, from the
/// table `sniff` decides by, so the document cannot drift from it.
fn accepted_content_type() -> utoipa::openapi::Object {
    utoipa::openapi::ObjectBuilder::new()
        .schema_type(utoipa::openapi::schema::Type::String)
        .enum_values(Some(crate::sniff::accepted_types()))
        .build()
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

/// A request to issue, parsed and checked against the caller's caps.
struct Declared {
    filename: String,
    kind: Kind,
    size: u64,
    sha256: Option<[u8; 32]>,
    multipart: bool,
}

impl Declared {
    fn parse(body: PresignRequest, account: &Account, stream_max: u64) -> Result<Self, ApiError> {
        let filename = sanitize_filename(&body.filename);
        let kind = sniff::announced(&body.content_type, &filename)?;
        if body.size == 0 {
            return Err(ApiError::unprocessable("size must be at least 1 byte"));
        }
        Cap::new(&account.limits(), kind.category, Route::Direct, stream_max).check(body.size)?;
        let sha256 = body.sha256.as_deref().map(parse_sha256).transpose()?;
        let multipart = body.multipart || body.size > SINGLE_PUT_MAX;
        if multipart && sha256.is_some() {
            return Err(ApiError::unprocessable(
                "sha256 binds a single PUT; leave it out of multipart uploads",
            ));
        }
        Ok(Self {
            filename,
            kind,
            size: body.size,
            sha256,
            multipart,
        })
    }
}

/// Issues the URLs of one upload.
#[utoipa::path(post, path = "/upload/presigned", tag = "uploads", request_body = PresignBody,
    responses((status = 201, body = Presigned), (status = 413, description = "above the type's cap"),
              (status = 415), (status = 429), (status = 507)))]
pub async fn issue(
    State(state): State<AppState>,
    auth: CurrentAccount,
    Json(body): Json<PresignRequest>,
) -> Result<(StatusCode, Json<Presigned>), ApiError> {
    let declared = Declared::parse(body, &auth.account, state.config.stream_max_file_bytes)?;
    let answer = start(&state, &auth.account, &declared).await?;
    metrics::counter!("intake_presigned_issued_total").increment(1);
    Ok((StatusCode::CREATED, Json(answer)))
}

/// Takes the slot, then reserves, signs and records the upload; the slot
/// is handed over to the upload only when all of that succeeded, and
/// released (with whatever it holds) otherwise.
async fn start(state: &AppState, account: &Account, d: &Declared) -> Result<Presigned, ApiError> {
    let limits = account.limits();
    let expiry = state.config.presign_expiry;
    let slot = Slot::take(
        &state.db,
        &state.store,
        account.id,
        UploadKind::Presigned,
        limits.concurrent_uploads,
        expiry + LEASE_GRACE,
    )
    .await?;
    match sign(state, slot.lease(), limits.storage_bytes, d, expiry).await {
        Ok(answer) => {
            slot.hand_over();
            Ok(answer)
        }
        Err(e) => {
            slot.release().await;
            Err(e)
        }
    }
}

async fn sign(
    state: &AppState,
    lease: &Lease,
    quota: Option<u64>,
    d: &Declared,
    expiry: Duration,
) -> Result<Presigned, ApiError> {
    let id = Uuid::now_v7();
    // A single PUT writes to a staging key that completion copies from, so
    // its URL can never touch the file; part URLs die with their multipart
    // upload and write to the file's key.
    let key = if d.multipart {
        files::object_key(lease.account_id, id)
    } else {
        uploads::staging_key(lease.account_id, id)
    };
    reservations::reserve(&state.db, lease, d.size, quota, Some(&key)).await?;
    let expires_at = Utc::now()
        + chrono::Duration::from_std(expiry).map_err(|e| ApiError::Internal(e.into()))?;
    let mut answer = Presigned {
        upload_id: id,
        expires_at,
        method: None,
        url: None,
        headers: None,
        part_size: None,
        parts: None,
    };
    let multipart = if d.multipart {
        let upload_id = state.store.create_multipart(&key, d.kind.mime).await?;
        lease
            .track_object(&state.db, Some(&key), Some(&upload_id))
            .await?;
        let part = part_size(d.size);
        answer.part_size = Some(part);
        answer.parts = Some(part_urls(state, &key, &upload_id, d.size, part, expiry).await?);
        Some((upload_id, part))
    } else {
        let conditions = PutConditions {
            content_length: d.size,
            content_type: d.kind.mime.to_owned(),
            sha256: d.sha256,
        };
        let signed = state.store.presign_put(&key, &conditions, expiry).await?;
        answer.method = Some(signed.method.to_string());
        answer.url = Some(signed.url);
        answer.headers = Some(
            signed
                .headers
                .iter()
                .filter_map(|(k, v)| {
                    Some((k.to_string(), serde_json::Value::from(v.to_str().ok()?)))
                })
                .collect(),
        );
        None
    };
    uploads::insert(
        &state.db,
        &NewUpload {
            id,
            account_id: lease.account_id,
            lease_id: lease.id,
            filename: &d.filename,
            content_type: d.kind.mime,
            category: d.kind.category,
            size: d.size,
            sha256: d.sha256,
            multipart,
            expires_at,
        },
    )
    .await?;
    Ok(answer)
}

/// Signs one URL per part of a multipart upload of `size` bytes.
async fn part_urls(
    state: &AppState,
    key: &str,
    upload_id: &str,
    size: u64,
    part: u64,
    expiry: Duration,
) -> Result<Vec<PartUrl>, ApiError> {
    let count = size.div_ceil(part);
    let mut parts = Vec::with_capacity(usize::try_from(count).unwrap_or(0));
    for n in 1..=count {
        let len = if n == count {
            size - part * (count - 1)
        } else {
            part
        };
        let number = i32::try_from(n).map_err(|e| ApiError::Internal(e.into()))?;
        let signed = state
            .store
            .presign_upload_part(key, upload_id, number, len, expiry)
            .await?;
        parts.push(PartUrl {
            part_number: number.unsigned_abs(),
            url: signed.url,
        });
    }
    Ok(parts)
}

/// Ends an upload that failed verification: the objects go (the staging
/// object again once its URL is dead), the reservation and the slot come
/// back, the row says so.
async fn fail(state: &AppState, upload: &Upload, why: String) -> ApiError {
    let ended = async {
        if uploads::transition(
            &state.db,
            upload.id,
            &[UploadState::Completing],
            UploadState::Failed,
        )
        .await?
        {
            end(state, upload).await?;
        }
        Ok::<_, sqlx::Error>(())
    }
    .await;
    if let Err(e) = ended {
        tracing::error!(error = %e, upload = %upload.id, "could not end a failed presigned upload; the reaper will");
    }
    metrics::counter!("intake_presigned_failed_total").increment(1);
    ApiError::UploadVerificationFailed(why)
}

/// Ends an upload's lease (removing what it still tracks: the staging
/// object, a failed upload's object or multipart upload) and queues the
/// staging object once more for after its URL's expiry, when nothing can
/// write it again.
async fn end(state: &AppState, upload: &Upload) -> Result<(), sqlx::Error> {
    slots::end(&state.db, state.store.as_ref(), upload.lease_id).await?;
    if upload.multipart_upload_id.is_none() {
        let mut conn = state.db.acquire().await?;
        let dead = upload.expires_at + chrono::Duration::seconds(URL_CLOCK_SKEW_SECS);
        deletions::enqueue_at(&mut conn, &Doomed::object(upload.target_key()), dead).await?;
    }
    Ok(())
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
    body: Body,
) -> Result<(StatusCode, Json<FileView>), ApiError> {
    let body = complete_body(body).await?;
    let deadline = tokio::time::Instant::now() + COMPLETE_WAIT;
    loop {
        let upload = uploads::find(&state.db, id, Some(auth.account.id)).await?;
        if let Some(file) = files::find_view(&state.db, upload.account_id, upload.id).await? {
            return Ok((StatusCode::CREATED, Json(file)));
        }
        match upload.state {
            UploadState::Pending | UploadState::Completing => {}
            UploadState::Failed => {
                return Err(ApiError::Gone(
                    "this upload failed verification; start a new one".into(),
                ));
            }
            UploadState::Completed => {
                return Err(ApiError::Gone("this upload's file was deleted".into()));
            }
            UploadState::Aborted => {
                return Err(ApiError::Gone(
                    "this upload was aborted; start a new one".into(),
                ));
            }
        }
        if upload.state == UploadState::Pending && upload.expired {
            return Err(ApiError::Gone(
                "this upload expired; start a new one".into(),
            ));
        }
        // One request completes; the others wait for its answer and give
        // the same one, so a client that retries a slow complete loses nothing.
        if uploads::claim_completion(&state.db, id, COMPLETE_CLAIM).await? {
            let done = finish(&state, &upload, body).await;
            if let Err(e) = &done
                && !matches!(e, ApiError::UploadVerificationFailed(_))
            {
                // Not the upload's fault (storage or database down): the
                // next complete may try again.
                let back = uploads::transition(
                    &state.db,
                    id,
                    &[UploadState::Completing],
                    UploadState::Pending,
                );
                if let Err(e) = back.await {
                    tracing::warn!(error = %e, upload = %id, "could not release a completion claim; it lapses");
                }
            }
            let view = done?;
            metrics::counter!("intake_presigned_completed_total").increment(1);
            return Ok((StatusCode::CREATED, Json(view)));
        }
        if tokio::time::Instant::now() >= deadline {
            return Err(ApiError::ServiceUnavailable(
                "another request is still completing this upload; retry".into(),
            ));
        }
        tokio::time::sleep(COMPLETE_POLL).await;
    }
}

/// The largest `complete` body: 10,000 parts of about 60 bytes each, with
/// room to spare (the JSON limit of other routes would cut it short).
const COMPLETE_BODY_LIMIT: usize = 2 * 1024 * 1024;

/// Reads the optional body of `complete` (single uploads complete without
/// one), held to [`COMPLETE_BODY_LIMIT`].
async fn complete_body(body: Body) -> Result<CompleteRequest, ApiError> {
    let limited = http_body_util::Limited::new(body, COMPLETE_BODY_LIMIT);
    let bytes = match http_body_util::BodyExt::collect(limited).await {
        Ok(collected) => collected.to_bytes(),
        Err(e) if e.is::<http_body_util::LengthLimitError>() => {
            return Err(ApiError::PayloadTooLarge {
                limit: COMPLETE_BODY_LIMIT as u64,
            });
        }
        Err(_) => {
            return Err(ApiError::bad_request(
                "the body could not be read to its end",
            ));
        }
    };
    if bytes.iter().all(u8::is_ascii_whitespace) {
        return Ok(CompleteRequest::default());
    }
    crate::extract::from_json_slice(&bytes)
}

/// Completes the multipart upload (if any), verifies the object and records
/// the file; a verification failure ends the upload.
async fn finish(
    state: &AppState,
    upload: &Upload,
    body: CompleteRequest,
) -> Result<FileView, ApiError> {
    if let Some(upload_id) = &upload.multipart_upload_id {
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
            .complete_multipart(&upload.key(), upload_id, &parts)
            .await
        {
            tracing::warn!(error = %e, upload = %upload.id, "multipart completion refused");
            return Err(fail(state, upload, "the parts do not make the upload".into()).await);
        }
    }
    let lease = Lease::existing(
        upload.lease_id,
        upload.account_id,
        state.config.presign_expiry + LEASE_GRACE,
    );
    if upload.multipart_upload_id.is_none() {
        // Copy first and verify the copy: nothing can write the file's key,
        // so the bytes verified are the bytes kept.
        let (staged, key) = (upload.target_key(), upload.key());
        lease.track_copy(&state.db, &key, &staged).await?;
        match state.store.copy(&staged, &key).await {
            Ok(()) => {}
            Err(StorageError::NotFound) => {
                return Err(fail(state, upload, "nothing was uploaded".into()).await);
            }
            Err(e) => return Err(e.into()),
        }
    }
    if let Err(why) = verify::verify(state.store.as_ref(), upload).await {
        return Err(fail(state, upload, why).await);
    }
    let new = NewFile {
        id: upload.id,
        filename: upload.filename.clone(),
        content_type: upload.content_type.clone(),
        category: upload.category,
        size: upload.size(),
        sha256: upload.sha256(),
    };
    let view = match files::record(&state.db, &lease, &new, upload.size()).await {
        Ok(view) => view,
        // Another request completed it at the same moment.
        Err(e) => match files::find_view(&state.db, upload.account_id, upload.id).await? {
            Some(file) => return Ok(file),
            None => return Err(e),
        },
    };
    uploads::transition(
        &state.db,
        upload.id,
        &[UploadState::Completing],
        UploadState::Completed,
    )
    .await?;
    // The file owns its object now (its key left the lease): ending the
    // lease frees the slot and removes the staging object.
    end(state, upload).await?;
    Ok(view)
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
    let upload = uploads::find(&state.db, id, Some(auth.account.id)).await?;
    match upload.state {
        UploadState::Completed => {
            return Err(ApiError::Conflict(
                "this upload is complete; delete the file instead".into(),
            ));
        }
        UploadState::Completing => {
            return Err(ApiError::Conflict("this upload is being completed".into()));
        }
        UploadState::Pending => {
            if !uploads::transition(&state.db, id, &[UploadState::Pending], UploadState::Aborted)
                .await?
            {
                return Err(ApiError::Conflict("this upload is being completed".into()));
            }
            end(&state, &upload).await?;
        }
        // Already ended: aborting again changes nothing.
        UploadState::Aborted | UploadState::Failed => {}
    }
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
    let row = uploads::find(&state.db, id, None)
        .await
        .map_err(|_| forbidden())?;
    let Some(fs) = state.store.as_fs() else {
        return Err(ApiError::not_found("upload route"));
    };
    let conditions = PutConditions {
        content_length: row.size as u64,
        content_type: row.content_type.clone(),
        sha256: row.sha256(),
    };
    let key = row.target_key();
    if row.state != UploadState::Pending
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
    // One writer at a time, each held to the idle timeout of uploads.
    let idle = state.config.upload_idle_timeout;
    if !uploads::claim_writer(&state.db, id, idle * 2, false).await? {
        return Err(ApiError::Conflict(
            "another request is writing this upload".into(),
        ));
    }
    let written = write_data(&state, &row, &key, &conditions, body).await;
    if let Err(e) = uploads::release_writer(&state.db, id).await {
        tracing::warn!(error = %e, upload = %id, "could not release the writer; it lapses");
    }
    written.map(|()| StatusCode::OK)
}

/// Streams a data route body into the upload's staging object, held to the
/// signed length and checksum and to the idle timeout.
async fn write_data(
    state: &AppState,
    row: &Upload,
    key: &str,
    conditions: &PutConditions,
    body: Body,
) -> Result<(), ApiError> {
    let idle = state.config.upload_idle_timeout;
    let part = usize::try_from(state.config.upload_part_bytes).unwrap_or(usize::MAX);
    let mut writer = state.store.writer(key, &row.content_type, part).await?;
    let mut hasher = Sha256::new();
    let mut total: u64 = 0;
    let mut stream = body.into_data_stream();
    let mut renewed = tokio::time::Instant::now();
    let received = async {
        while let Some(chunk) = tokio::time::timeout(idle, stream.next())
            .await
            .map_err(|_| ApiError::idle_timeout())?
        {
            let chunk = chunk
                .map_err(|_| ApiError::bad_request("the body could not be read to its end"))?;
            total += chunk.len() as u64;
            if total > row.size() {
                return Err(ApiError::bad_request(
                    "more bytes than the signed Content-Length",
                ));
            }
            hasher.update(&chunk);
            writer.write(chunk).await?;
            if renewed.elapsed() > idle / 2 {
                uploads::claim_writer(&state.db, row.id, idle * 2, true).await?;
                renewed = tokio::time::Instant::now();
            }
        }
        if total != row.size() {
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
        Ok(()) => Ok(writer.finish().await.map(|_| ())?),
        Err(e) => {
            let _ = writer.abort().await;
            Err(e)
        }
    }
}

fn forbidden() -> ApiError {
    ApiError::Forbidden("the upload URL is invalid or expired".into())
}
