//! Resumable uploads with the tus 1.0 protocol (core, creation,
//! creation-with-upload, termination, expiration, checksum), so that a large
//! file on a flaky connection resumes where it broke, on any instance,
//! within exactly the limits of the other upload paths.
//!
//! A creation takes a concurrent-upload slot ([`quota::slots`]), checks the
//! declared length against the cap ([`quota::caps`]) and reserves all of it
//! ([`quota::reservations`]); the slot is handed over to the upload until it
//! completes, is terminated or expires. Each PATCH writes the bytes into
//! storage ([`receive`]): the type is sniffed on the first bytes, and the
//! last byte records the file. The state lives in `tus_uploads`
//! ([`uploads`]) and the bytes in the object store (whole parts, and the
//! [`tail`] past them), never on an instance.

mod assembly;
mod buffer;
mod commit;
mod headers;
mod hold;
mod part;
mod receive;
mod sha;
mod spill;
mod tail;
mod uploads;

pub use spill::{IDLE as SPILL_IDLE, trim as trim_spills};

use axum::{
    Extension,
    body::Body,
    extract::{Request, State},
    http::{HeaderMap, HeaderName, HeaderValue, Method, StatusCode},
    middleware::Next,
    response::{IntoResponse, Response},
};
use uuid::Uuid;

use crate::{
    auth::{Account, ContinuingUploader, Owner, Principal, UploadToken, Uploader, upload_tokens},
    body::UploadBody,
    error::ApiError,
    extract::Path,
    files,
    quota::{
        caps::{Cap, Route},
        slots::{self, Lease, Slot, UploadKind},
        tokens,
    },
    sniff,
    state::AppState,
    upload::sanitize_filename,
};
use headers::{Checksum, Metadata, TUS_CHECKSUMS, TUS_EXTENSIONS, TUS_VERSION};
use receive::{Outcome, Writer};
pub use uploads::tails_in_flight;
use uploads::{NewUpload, State as UploadState, Upload};

/// The header that names the recorded file on the final PATCH's answer.
const FILE_ID_HEADER: &str = "intake-file-id";

fn value(s: &str) -> HeaderValue {
    HeaderValue::from_str(s).unwrap_or_else(|_| HeaderValue::from_static(""))
}

/// Wraps every tus route: `Tus-Resumable: 1.0.0` is required on every
/// request but `OPTIONS` (412 otherwise), and every answer says which
/// version intake speaks. CORS, for pages of the origins the operator
/// lists, is `http::cors`'s, as on the other upload routes.
pub async fn protocol(req: Request, next: Next) -> Response {
    let mut response = if req.method() != Method::OPTIONS && !headers::speaks_tus(req.headers()) {
        let mut r = ApiError::TusVersionUnsupported.into_response();
        r.headers_mut()
            .insert("tus-version", HeaderValue::from_static(TUS_VERSION));
        r
    } else {
        next.run(req).await
    };
    let h = response.headers_mut();
    h.insert("tus-resumable", HeaderValue::from_static(TUS_VERSION));
    response
}

fn answer(status: StatusCode, pairs: Vec<(&'static str, HeaderValue)>) -> Response {
    let mut response = status.into_response();
    for (name, v) in pairs {
        response
            .headers_mut()
            .insert(HeaderName::from_static(name), v);
    }
    response
}

/// What `OPTIONS` advertises; `Tus-Max-Size` only to a known caller (it is
/// the caller's largest cap), as tus lets `OPTIONS` go unauthenticated.
fn discovery(state: &AppState, principal: Option<&Principal>) -> Response {
    let account = match principal {
        Some(
            Principal::ApiKey { account, .. }
            | Principal::Session { account, .. }
            | Principal::UploadToken { account, .. },
        ) => Some(account),
        _ => None,
    };
    let mut pairs = vec![
        ("tus-version", HeaderValue::from_static(TUS_VERSION)),
        ("tus-extension", HeaderValue::from_static(TUS_EXTENSIONS)),
        (
            "tus-checksum-algorithm",
            HeaderValue::from_static(TUS_CHECKSUMS),
        ),
    ];
    if let Some(account) = account {
        let cap = Cap::largest(
            &account.limits(),
            Route::Direct,
            state.config.stream_max_file_bytes,
        );
        pairs.push(("tus-max-size", HeaderValue::from(cap.limit())));
    }
    answer(StatusCode::NO_CONTENT, pairs)
}

/// What the annotations cannot say: a creation's body is optional
/// (creation-with-upload), which `request_body` states only by making the
/// schema nullable.
pub fn document(openapi: &mut utoipa::openapi::OpenApi) {
    let creation = openapi
        .paths
        .paths
        .get_mut("/upload/tus")
        .and_then(|item| item.post.as_mut())
        .and_then(|op| op.request_body.as_mut());
    if let Some(body) = creation {
        body.required = Some(utoipa::openapi::Required::False);
    }
}

/// What intake speaks (tus discovery; a browser's CORS preflight is
/// answered before it, by `http::cors`). No credentials needed; with them, `Tus-Max-Size` is the
/// caller's largest cap.
#[utoipa::path(options, path = "/upload/tus", tag = "tus",
    responses((status = 204, description = "the protocol intake speaks",
        headers(("Tus-Version" = String, description = "1.0.0"),
                ("Tus-Extension" = String, description = "creation,creation-with-upload,termination,expiration,checksum"),
                ("Tus-Checksum-Algorithm" = String, description = "sha1,sha256"),
                ("Tus-Max-Size" = u64, description = "the caller's largest cap, in bytes (only with credentials)")))),
    security((), ("api_key" = []), ("session" = []), ("upload_token" = [])))]
pub async fn discover(
    State(state): State<AppState>,
    principal: Option<Extension<Principal>>,
) -> Response {
    discovery(&state, principal.as_deref())
}

/// tus discovery at an upload's own URL.
#[utoipa::path(options, path = "/upload/tus/{id}", tag = "tus", params(("id" = Uuid, Path)),
    responses((status = 204, description = "the protocol intake speaks")),
    security((), ("api_key" = []), ("session" = []), ("upload_token" = [])))]
pub async fn discover_upload(
    State(state): State<AppState>,
    principal: Option<Extension<Principal>>,
    // Only an upload's URL answers: anything else names nothing (404).
    Path(_id): Path<Uuid>,
) -> Response {
    discovery(&state, principal.as_deref())
}

/// A creation request, parsed and held to the caller's cap.
struct Creation {
    length: u64,
    metadata: Metadata,
    filename: String,
    declared: String,
}

impl Creation {
    fn parse(headers: &HeaderMap, caller: &Uploader, stream_max: u64) -> Result<Self, ApiError> {
        let account = &caller.account;
        let length = headers::upload_length(headers)?;
        let metadata = Metadata::parse(headers)?;
        let filename = sanitize_filename(metadata.filename.as_deref().unwrap_or_default());
        let declared = metadata.filetype.clone().unwrap_or_default();
        // The bytes decide the category later (and the cap again); until then
        // the declared type or name does, or else the largest cap.
        let limits = account.limits();
        let expected = sniff::expected_category(&declared, &filename)?;
        if let (Some(token), Some(category)) = (&caller.token, expected) {
            tokens::check_category(token, category)?;
        }
        let cap = match expected {
            Some(category) => Cap::new(&limits, category, Route::Direct, stream_max),
            None => Cap::largest(&limits, Route::Direct, stream_max),
        };
        cap.check(length)?;
        Ok(Self {
            length,
            metadata,
            filename,
            declared,
        })
    }
}

/// Creates an upload: its slot, its whole length reserved, its row; the
/// slot is handed over to the upload only once all of that succeeded.
async fn create_upload(
    state: &AppState,
    caller: &Uploader,
    c: &Creation,
) -> Result<Upload, ApiError> {
    let account = &caller.account;
    let limits = account.limits();
    let slot = Slot::take(
        &state.db,
        &state.store,
        account.id,
        UploadKind::Tus,
        limits.concurrent_uploads,
        state.config.tus_expiry,
    )
    .await?;
    let token = caller.token.as_ref().map(|t| t.id.as_str());
    match open(state, slot.lease(), limits.storage_bytes, token, c).await {
        Ok(upload) => {
            slot.hand_over();
            Ok(upload)
        }
        Err(e) => {
            slot.release().await;
            Err(e)
        }
    }
}

async fn open(
    state: &AppState,
    lease: &Lease,
    quota: Option<u64>,
    token: Option<&str>,
    c: &Creation,
) -> Result<Upload, ApiError> {
    let id = Uuid::now_v7();
    let key = files::object_key(lease.account_id, id);
    tokens::reserve_file(&state.db, lease, token, c.length, quota, Some(&key)).await?;
    lease
        .track_tail(
            &state.db,
            &uploads::tail_key(id),
            &[uploads::segment_key(id, 0)],
        )
        .await?;
    Ok(uploads::insert(
        &state.db,
        &NewUpload {
            id,
            account_id: lease.account_id,
            lease_id: lease.id,
            filename: &c.filename,
            declared_type: &c.declared,
            metadata: &c.metadata.raw,
            length: c.length,
            part_size: state.config.upload_part_bytes,
            expiry: state.config.tus_expiry,
            upload_token_id: token,
        },
    )
    .await?)
}

/// Writes a request's body at `offset` of the owner's upload `id`, as the
/// one writer of it.
async fn write(
    state: &AppState,
    account: &Account,
    owner: &Owner,
    id: Uuid,
    offset: u64,
    headers: &HeaderMap,
    body: Body,
) -> Result<Outcome, ApiError> {
    let checksum = Checksum::parse(headers)?;
    let token = Uuid::new_v4();
    let hold = state.config.upload_lease_ttl;
    let Some(upload) = uploads::lock(&state.db, id, owner, token, hold).await? else {
        let upload = uploads::find(&state.db, id, owner).await?;
        return Err(uploads::not_writable(&upload));
    };
    if offset != upload.offset() {
        uploads::unlock(&state.db, id, token).await?;
        return Err(ApiError::Conflict(format!(
            "Upload-Offset is {offset} but the upload is at {}: HEAD it and resume from there",
            upload.offset()
        )));
    }
    // The limits of the token that created it hold whoever continues it.
    let upload_token = match upload_token_of(state, &upload).await {
        Ok(found) => found,
        Err(e) => {
            uploads::unlock(&state.db, id, token).await?;
            return Err(e.into());
        }
    };
    let writer = Writer {
        state: state.clone(),
        upload,
        token,
        upload_token,
        limits: account.limits(),
        content_length: headers::content_length(headers),
        checksum,
    };
    // In a task of its own: a client that goes away mid-body ends its
    // request, not the bookkeeping of the bytes it did send.
    tokio::spawn(writer.run(body))
        .await
        .map_err(|e| ApiError::Internal(e.into()))?
}

/// The token an upload was created with, if any.
async fn upload_token_of(
    state: &AppState,
    upload: &Upload,
) -> Result<Option<UploadToken>, sqlx::Error> {
    match upload.upload_token_id.as_deref() {
        Some(id) => upload_tokens::find(&state.db, upload.account_id, id).await,
        None => Ok(None),
    }
}

fn location(state: &AppState, id: Uuid) -> HeaderValue {
    value(&format!("{}/upload/tus/{id}", state.config.public_base_url))
}

fn outcome_headers(outcome: &Outcome) -> Vec<(&'static str, HeaderValue)> {
    match outcome {
        Outcome::Stored { offset, expires_at } => vec![
            ("upload-offset", HeaderValue::from(*offset)),
            ("upload-expires", headers::http_date(*expires_at)),
        ],
        Outcome::Completed { offset, file } => vec![
            ("upload-offset", HeaderValue::from(*offset)),
            (FILE_ID_HEADER, value(&file.id.to_string())),
        ],
    }
}

/// Creates an upload (tus creation; with a body, creation-with-upload).
#[utoipa::path(post, path = "/upload/tus", tag = "tus",
    params(("Tus-Resumable" = String, Header, description = "1.0.0", pattern = r"^1\.0\.0$"),
           ("Upload-Length" = u64, Header, description = "the file's size in bytes, at least 1 (deferred lengths are not supported)", minimum = 1, maximum = 9_223_372_036_854_774_784_f64),
           ("Upload-Metadata" = Option<String>, Header, nullable = false, description = "`filename` and `filetype`, base64; keys unique", pattern = r"^[\x21-\x2b\x2d-\x7e]+(?: (?:[A-Za-z0-9+/]{4})*(?:[A-Za-z0-9+/][AQgw](?:==)?|[A-Za-z0-9+/]{2}[AEIMQUYcgkosw048]=?)?)?(?:,[\x21-\x2b\x2d-\x7e]+(?: (?:[A-Za-z0-9+/]{4})*(?:[A-Za-z0-9+/][AQgw](?:==)?|[A-Za-z0-9+/]{2}[AEIMQUYcgkosw048]=?)?)?)*$"),
           ("Upload-Checksum" = Option<String>, Header, nullable = false, description = "`sha1 <base64>` or `sha256 <base64>` of a creation-with-upload body", pattern = r"^(sha1 [A-Za-z0-9+/]{26}[AEIMQUYcgkosw048]=|sha256 [A-Za-z0-9+/]{42}[AEIMQUYcgkosw048]=)$")),
    request_body(content = crate::body::RawBytes, content_type = "application/offset+octet-stream", description = "optional: the first bytes (creation-with-upload)"),
    security(("api_key" = []), ("session" = []), ("upload_token" = [])),
    responses(
        (status = 201, description = "created",
            headers(("Location" = String, description = "the upload's URL"),
                    ("Upload-Offset" = u64, description = "bytes kept from the body, with one"),
                    ("Upload-Expires" = String, description = "when it expires without more bytes"),
                    ("Intake-File-Id" = String, description = "the file, when the body was the whole file"))),
        (status = 400, description = "missing or malformed Upload-Length or Upload-Metadata"),
        (status = 401), (status = 412, description = "tus_version_unsupported"),
        (status = 413, description = "file_too_large: above the category cap; upload_token_exhausted: past an upload token's max_files or max_bytes"),
        (status = 415, description = "unsupported_media_type (also a category the upload token does not take), type_mismatch"),
        (status = 429, description = "concurrent_upload_limit, rate_limited"),
        (status = 460, description = "checksum_mismatch"),
        (status = 507, description = "storage_quota_exceeded")))]
pub async fn create(
    State(state): State<AppState>,
    auth: Uploader,
    headers: HeaderMap,
    UploadBody(body): UploadBody,
) -> Result<Response, ApiError> {
    let creation = Creation::parse(&headers, &auth, state.config.stream_max_file_bytes)?;
    let with_body = headers::is_offset_stream(&headers);
    let upload = create_upload(&state, &auth, &creation).await?;
    metrics::counter!("intake_tus_created_total").increment(1);
    let mut pairs = vec![("location", location(&state, upload.id))];
    if !with_body {
        pairs.push(("upload-expires", headers::http_date(upload.expires_at)));
        return Ok(answer(StatusCode::CREATED, pairs));
    }
    let owner = auth.owner();
    match write(&state, &auth.account, &owner, upload.id, 0, &headers, body).await {
        Ok(outcome) => {
            pairs.extend(outcome_headers(&outcome));
            Ok(answer(StatusCode::CREATED, pairs))
        }
        // The upload exists either way: say where, so it can be resumed.
        Err(e) => {
            let mut response = e.into_response();
            for (name, v) in pairs {
                response
                    .headers_mut()
                    .insert(HeaderName::from_static(name), v);
            }
            Ok(response)
        }
    }
}

/// An upload's offset (tus core `HEAD`).
#[utoipa::path(head, path = "/upload/tus/{id}", tag = "tus",
    params(("id" = Uuid, Path), ("Tus-Resumable" = String, Header, description = "1.0.0", pattern = r"^1\.0\.0$")),
    security(("api_key" = []), ("session" = []), ("upload_token" = [])),
    responses(
        (status = 200, description = "the upload's state",
            headers(("Upload-Offset" = u64), ("Upload-Length" = u64), ("Upload-Expires" = String),
                    ("Upload-Metadata" = String), ("Cache-Control" = String, description = "no-store"),
                    ("Intake-File-Id" = String, description = "once complete"))),
        (status = 401), (status = 404, description = "not_found (or another account's)"),
        (status = 410, description = "gone: expired, terminated or refused"),
        (status = 412, description = "tus_version_unsupported")))]
pub async fn status(
    State(state): State<AppState>,
    ContinuingUploader(auth): ContinuingUploader,
    Path(id): Path<Uuid>,
) -> Result<Response, ApiError> {
    let upload = uploads::find(&state.db, id, &auth.owner()).await?;
    let mut pairs = vec![
        ("upload-length", HeaderValue::from(upload.length())),
        ("cache-control", HeaderValue::from_static("no-store")),
    ];
    if !upload.metadata.is_empty() {
        pairs.push(("upload-metadata", value(&upload.metadata)));
    }
    match upload.state {
        UploadState::Open if !upload.expired => {
            pairs.push(("upload-offset", HeaderValue::from(upload.offset())));
            pairs.push(("upload-expires", headers::http_date(upload.expires_at)));
        }
        UploadState::Completed => {
            pairs.push(("upload-offset", HeaderValue::from(upload.length())));
            pairs.push((FILE_ID_HEADER, value(&upload.id.to_string())));
        }
        _ => return Err(uploads::not_writable(&upload)),
    }
    Ok(answer(StatusCode::OK, pairs))
}

/// Appends bytes at the upload's offset (tus core `PATCH`); the last byte
/// records the file.
#[utoipa::path(patch, path = "/upload/tus/{id}", tag = "tus",
    params(("id" = Uuid, Path), ("Tus-Resumable" = String, Header, description = "1.0.0", pattern = r"^1\.0\.0$"),
           ("Upload-Offset" = u64, Header, description = "must equal the upload's offset"),
           ("Upload-Checksum" = Option<String>, Header, nullable = false, description = "`sha1 <base64>` or `sha256 <base64>` of the body", pattern = r"^(sha1 [A-Za-z0-9+/]{26}[AEIMQUYcgkosw048]=|sha256 [A-Za-z0-9+/]{42}[AEIMQUYcgkosw048]=)$")),
    request_body(content = crate::body::RawBytes, content_type = "application/offset+octet-stream"),
    security(("api_key" = []), ("session" = []), ("upload_token" = [])),
    responses(
        (status = 204, description = "bytes kept",
            headers(("Upload-Offset" = u64), ("Upload-Expires" = String),
                    ("Intake-File-Id" = String, description = "the recorded file, on the last PATCH"))),
        (status = 400, description = "invalid_request: bad headers, a body past Upload-Length, a broken body"),
        (status = 401), (status = 404, description = "not_found"),
        (status = 408, description = "invalid_request: the body stalled"),
        (status = 409, description = "conflict: Upload-Offset is not the upload's offset, or the upload is complete"),
        (status = 410, description = "gone: expired, terminated or refused"),
        (status = 412, description = "tus_version_unsupported"),
        (status = 413, description = "file_too_large: the bytes are of a category with a smaller cap"),
        (status = 415, description = "unsupported_media_type (Content-Type, or the content), type_mismatch"),
        (status = 423, description = "upload_locked: another PATCH is writing it"),
        (status = 429, description = "rate_limited"),
        (status = 460, description = "checksum_mismatch: nothing of the body kept")))]
pub async fn append(
    State(state): State<AppState>,
    ContinuingUploader(auth): ContinuingUploader,
    Path(id): Path<Uuid>,
    headers: HeaderMap,
    UploadBody(body): UploadBody,
) -> Result<Response, ApiError> {
    if !headers::is_offset_stream(&headers) {
        return Err(ApiError::UnsupportedMediaType(format!(
            "a PATCH body is {}",
            headers::OFFSET_OCTET_STREAM
        )));
    }
    let offset = headers::upload_offset(&headers)?;
    let outcome = write(
        &state,
        &auth.account,
        &auth.owner(),
        id,
        offset,
        &headers,
        body,
    )
    .await?;
    if matches!(outcome, Outcome::Completed { .. }) {
        metrics::counter!("intake_tus_completed_total").increment(1);
    }
    Ok(answer(StatusCode::NO_CONTENT, outcome_headers(&outcome)))
}

/// Ends an upload (tus termination): its stored bytes go, its reservation
/// and slot come back.
#[utoipa::path(delete, path = "/upload/tus/{id}", tag = "tus",
    params(("id" = Uuid, Path), ("Tus-Resumable" = String, Header, description = "1.0.0", pattern = r"^1\.0\.0$")),
    security(("api_key" = []), ("session" = []), ("upload_token" = [])),
    responses((status = 204, description = "terminated"), (status = 401),
        (status = 404, description = "not_found"),
        (status = 409, description = "conflict: complete (delete the file instead)"),
        (status = 410, description = "gone: already expired, terminated or refused"),
        (status = 412, description = "tus_version_unsupported"),
        (status = 423, description = "upload_locked: a PATCH is writing it")))]
pub async fn terminate(
    State(state): State<AppState>,
    ContinuingUploader(auth): ContinuingUploader,
    Path(id): Path<Uuid>,
) -> Result<StatusCode, ApiError> {
    // Held like a PATCH, so no request writes bytes after it ended.
    let token = Uuid::new_v4();
    let hold = state.config.upload_lease_ttl;
    let owner = auth.owner();
    let Some(upload) = uploads::lock(&state.db, id, &owner, token, hold).await? else {
        let upload = uploads::find(&state.db, id, &owner).await?;
        return Err(uploads::not_writable(&upload));
    };
    uploads::leave_open(&state.db, upload.id, UploadState::Terminated).await?;
    slots::end(&state.db, state.store.as_ref(), upload.lease_id).await?;
    metrics::counter!("intake_tus_terminated_total").increment(1);
    Ok(StatusCode::NO_CONTENT)
}

/// Ends every open upload that upload token `token_id` created (the token
/// was just revoked): their stored bytes go, their reservations, token
/// holds and slots come back. One that a PATCH is writing right now is
/// ended by that PATCH as it finishes (`receive`).
pub async fn end_for_token(state: &AppState, token_id: &str) -> Result<u64, sqlx::Error> {
    let hold = state.config.upload_lease_ttl;
    let mut ended = 0;
    for upload in uploads::open_of_token(&state.db, token_id).await? {
        let owner = Owner {
            account_id: upload.account_id,
            token_id: Some(token_id.to_owned()),
        };
        let locked = uploads::lock(&state.db, upload.id, &owner, Uuid::new_v4(), hold).await?;
        if locked.is_some()
            && uploads::leave_open(&state.db, upload.id, UploadState::Terminated).await?
        {
            slots::end(&state.db, state.store.as_ref(), upload.lease_id).await?;
            ended += 1;
        }
    }
    Ok(ended)
}
