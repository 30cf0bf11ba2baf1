//! Streaming uploads: `POST /upload/stream` (one file) and
//! `POST /upload/stream-batch` (up to the tier's batch size in one request).
//!
//! The multipart body is read one part at a time ([`multipart`]) and each
//! file goes to storage as it arrives ([`pipeline`]), never whole in memory.
//! Every limit holds while the bytes flow, decided by the limit modules of
//! [`crate::quota`]; the request holds one concurrent-upload slot for as
//! long as it runs. Whatever ends an upload early, the partial object, the
//! reservation and the slot are given back. An upload token may send both
//! routes: its limits hold on top of the account's ([`crate::quota::tokens`]).

mod batch;
mod doc;
mod filename;
mod multipart;
mod pipeline;
mod reserve;
mod settling;

use axum::{
    body::Body,
    extract::State,
    http::{HeaderMap, StatusCode},
};

pub use batch::{BatchResponse, BatchResult};
pub use filename::sanitize_filename;

use crate::{
    auth::Uploader,
    body::UploadBody,
    error::ApiError,
    extract::Json,
    files::FileView,
    quota::slots::{Slot, UploadKind},
    state::AppState,
};
use multipart::{MAX_PART_HEADER_BYTES, Parts, content_length};
use pipeline::Ctx;

/// Counts a refused upload by its code.
fn rejected(e: &ApiError) {
    metrics::counter!("intake_upload_rejections_total", "code" => e.code()).increment(1);
}

/// Uploads one file (one part named `file`).
#[utoipa::path(post, path = "/upload/stream", tag = "uploads",
    request_body(content = doc::SingleUpload, content_type = "multipart/form-data", description = "one part named `file`"),
    security(("api_key" = []), ("session" = []), ("upload_token" = [])),
    responses((status = 201, body = FileView), (status = 413, description = "file_too_large, use_presigned_upload, upload_token_exhausted"),
              (status = 415), (status = 429), (status = 507)))]
pub async fn stream_single(
    State(state): State<AppState>,
    auth: Uploader,
    headers: HeaderMap,
    UploadBody(body): UploadBody,
) -> Result<(StatusCode, Json<FileView>), ApiError> {
    let whole = state.config.stream_max_file_bytes + MAX_PART_HEADER_BYTES as u64;
    upload(&state, &auth, &headers, body, whole, async |ctx, parts| {
        single(ctx, parts).await
    })
    .await
    .map(|view| (StatusCode::CREATED, Json(view)))
}

/// Runs one upload request: its multipart reader, its slot for as long as it
/// runs (released on every path), and the rejection metrics.
async fn upload<T>(
    state: &AppState,
    auth: &Uploader,
    headers: &HeaderMap,
    body: Body,
    whole_stream_limit: u64,
    run: impl AsyncFnOnce(&Ctx<'_>, &mut Parts) -> Result<T, ApiError>,
) -> Result<T, ApiError> {
    let limits = auth.account.limits();
    let mut parts = Parts::new(headers, body, whole_stream_limit)?;
    let slot = Slot::take(
        &state.db,
        &state.store,
        auth.account.id,
        UploadKind::Stream,
        limits.concurrent_uploads,
        state.config.upload_lease_ttl,
    )
    .await?;
    let ctx = Ctx {
        state,
        account: &auth.account,
        token: auth.token.as_ref(),
        limits,
        lease: slot.lease(),
        body_len: content_length(headers),
        settling: Default::default(),
    };
    let result = run(&ctx, &mut parts).await;
    slot.release().await;
    result.inspect_err(rejected)
}

async fn single(ctx: &Ctx<'_>, parts: &mut Parts) -> Result<FileView, ApiError> {
    let Some(mut field) = parts.next().await? else {
        return Err(ApiError::bad_request(
            "the body has no parts: send one part named file",
        ));
    };
    if field.name() != Some("file") {
        return Err(ApiError::bad_request(format!(
            "expected one part named file, got {:?}",
            field.name().unwrap_or_default()
        )));
    }
    let filename = sanitize_filename(field.file_name().unwrap_or_default());
    let exact = ctx.body_len.and_then(|len| parts.single_part_len(len));
    let staged = ctx
        .receive(&mut field, &filename, exact)
        .await
        .map_err(|e| e.error)?;
    drop(field);
    // The body must end here; only then is the file finished and recorded.
    match parts.next().await {
        Ok(None) => ctx.complete(staged).await.map_err(|e| e.error),
        Ok(Some(_)) => {
            ctx.give_back(staged).await;
            Err(ApiError::bad_request(
                "send exactly one part named file; use /upload/stream-batch for several",
            ))
        }
        Err(e) => {
            ctx.give_back(staged).await;
            Err(e)
        }
    }
}

/// Uploads several files in one request (parts named `files`); one file
/// failing never fails the others.
#[utoipa::path(post, path = "/upload/stream-batch", tag = "uploads",
    request_body(content = doc::BatchUpload, content_type = "multipart/form-data", description = "1..N parts named `files`"),
    security(("api_key" = []), ("session" = []), ("upload_token" = [])),
    responses((status = 200, body = BatchResponse), (status = 413, description = "more parts than the tier's batch size (a part past an upload token's limits is 413 upload_token_exhausted in its result)"),
              (status = 429)))]
pub async fn stream_batch(
    State(state): State<AppState>,
    auth: Uploader,
    headers: HeaderMap,
    UploadBody(body): UploadBody,
) -> Result<Json<BatchResponse>, ApiError> {
    let per_part = state.config.stream_max_file_bytes + MAX_PART_HEADER_BYTES as u64;
    let whole = per_part.saturating_mul(u64::from(auth.account.limits().batch_size));
    upload(&state, &auth, &headers, body, whole, async |ctx, parts| {
        batch::run(ctx, parts).await
    })
    .await
    .map(Json)
}
