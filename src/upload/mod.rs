//! Streaming uploads: `POST /upload/stream` (one file) and
//! `POST /upload/stream-batch` (up to the tier's batch size in one request).
//!
//! The multipart body is read one part at a time and each file goes to
//! storage as it arrives, never whole in memory. Every limit holds while the
//! bytes flow: the type is decided on the first bytes, the size caps on the
//! running count, the storage quota by reservations made ahead of the bytes,
//! the concurrency by the request's lease. Whatever ends an upload early, the
//! partial object, the reservation and the slot are given back.

pub mod sniff;

use std::{
    pin::Pin,
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicUsize, Ordering},
    },
    task::{Context, Poll},
};

use axum::{
    body::Body,
    extract::State,
    http::{HeaderMap, StatusCode, header},
};
use bytes::Bytes;
use futures_util::Stream;
use serde::Serialize;
use serde_json::Value;
use sha2::{Digest, Sha256};
use tokio::task::JoinHandle;
use utoipa::ToSchema;
use uuid::Uuid;

use crate::{
    auth::{Account, CurrentAccount},
    error::ApiError,
    files::{self, FileView, NewFile},
    http::extract::Json,
    quota::lease::{self, Lease, ReserveError},
    state::AppState,
    storage::ObjectWriter,
    tiers::Limits,
};
use sniff::{Category, Kind, SNIFF_BYTES, SniffError, Utf8Stream};

/// Largest part header block accepted; more is an attack or a broken client.
const MAX_PART_HEADER_BYTES: usize = 1024 * 1024;

/// A display name from a client's filename: the last path component, without
/// control characters, at most 255 bytes; never used as a path.
pub fn sanitize_filename(raw: &str) -> String {
    let last = raw.rsplit(['/', '\\']).next().unwrap_or_default();
    let cleaned: String = last.chars().filter(|c| !c.is_control()).collect();
    let mut name = cleaned.trim().to_owned();
    if name.is_empty() || name == "." || name == ".." {
        return "file".to_owned();
    }
    if name.len() > 255 {
        let mut cut = 255;
        while !name.is_char_boundary(cut) {
            cut -= 1;
        }
        name.truncate(cut);
    }
    name
}

/// The request's concurrent-upload slot: renewed while the upload runs,
/// reclaimed (object, reservation, slot) however the request ends.
pub struct SlotGuard {
    lease: Option<Lease>,
    renewer: Option<JoinHandle<()>>,
    state: AppState,
}

impl SlotGuard {
    /// Takes one of the account's slots, or answers 429.
    pub async fn acquire(
        state: &AppState,
        account: &Account,
        limits: &Limits,
        kind: &str,
    ) -> Result<Self, ApiError> {
        let ttl = state.config.upload_lease_ttl;
        let lease =
            lease::take_slot(&state.db, account.id, kind, limits.concurrent_uploads, ttl).await?;
        metrics::gauge!("intake_uploads_in_flight").increment(1.0);
        let (db, id) = (state.db.clone(), lease.id);
        let renewer = tokio::spawn(async move {
            let mut tick = tokio::time::interval(ttl / 3);
            tick.tick().await;
            loop {
                tick.tick().await;
                let renewed = lease::renew(&db, id, ttl).await;
                if let Err(e) = renewed {
                    tracing::warn!(error = %e, lease = %id, "could not renew an upload lease");
                }
            }
        });
        Ok(Self {
            lease: Some(lease),
            renewer: Some(renewer),
            state: state.clone(),
        })
    }

    fn lease(&self) -> &Lease {
        // Present until release or drop, which take self.
        self.lease
            .as_ref()
            .unwrap_or_else(|| unreachable!("lease taken before the guard ended"))
    }

    /// Ends the lease now (the normal path of every request).
    pub async fn release(mut self) {
        if let Some(task) = self.renewer.take() {
            task.abort();
        }
        if let Some(lease) = self.lease.take() {
            end(self.state.clone(), lease.id).await;
        }
    }
}

async fn end(state: AppState, lease_id: Uuid) {
    metrics::gauge!("intake_uploads_in_flight").decrement(1.0);
    if let Err(e) = lease::reclaim(
        &state.db,
        state.store.as_ref(),
        lease_id,
        lease::Reclaim::Own,
    )
    .await
    {
        // The lease expires on its own and the reaper finishes the job.
        tracing::error!(error = %e, lease = %lease_id, "could not end an upload lease");
    }
}

impl Drop for SlotGuard {
    fn drop(&mut self) {
        if let Some(task) = self.renewer.take() {
            task.abort();
        }
        if let Some(lease) = self.lease.take() {
            // The request ended without reaching release (client gone):
            // finish in the background.
            if let Ok(handle) = tokio::runtime::Handle::try_current() {
                handle.spawn(end(self.state.clone(), lease.id));
            }
        }
    }
}

/// Why part headers were refused while streaming.
#[derive(Debug, thiserror::Error)]
#[error("part headers are larger than {MAX_PART_HEADER_BYTES} bytes")]
struct HeadersTooLarge;

/// The request body, counting the bytes read while multer looks for a part's
/// headers, so a part with endless headers cannot grow its buffer forever.
struct MeteredBody {
    inner: axum::body::BodyDataStream,
    reading_headers: Arc<AtomicBool>,
    header_bytes: Arc<AtomicUsize>,
}

impl Stream for MeteredBody {
    type Item = Result<Bytes, Box<dyn std::error::Error + Send + Sync>>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        match Pin::new(&mut self.inner).poll_next(cx) {
            Poll::Ready(Some(Ok(chunk))) => {
                if self.reading_headers.load(Ordering::Relaxed)
                    && self.header_bytes.fetch_add(chunk.len(), Ordering::Relaxed) + chunk.len()
                        > MAX_PART_HEADER_BYTES
                {
                    return Poll::Ready(Some(Err(Box::new(HeadersTooLarge))));
                }
                Poll::Ready(Some(Ok(chunk)))
            }
            Poll::Ready(Some(Err(e))) => Poll::Ready(Some(Err(Box::new(e)))),
            other => other.map(|o| {
                o.map(|r| {
                    r.map_err(|e| -> Box<dyn std::error::Error + Send + Sync> { Box::new(e) })
                })
            }),
        }
    }
}

/// An error that ends one file; `fatal` when the request body itself broke,
/// so no later part can be read either.
#[derive(Debug)]
struct FileError {
    error: ApiError,
    fatal: bool,
}

impl From<ApiError> for FileError {
    fn from(error: ApiError) -> Self {
        Self {
            error,
            fatal: false,
        }
    }
}

impl From<sqlx::Error> for FileError {
    fn from(e: sqlx::Error) -> Self {
        ApiError::from(e).into()
    }
}

fn fatal(error: ApiError) -> FileError {
    FileError { error, fatal: true }
}

fn multipart_error(e: multer::Error) -> ApiError {
    match e {
        multer::Error::StreamReadFailed(inner) if inner.is::<HeadersTooLarge>() => {
            ApiError::bad_request(HeadersTooLarge.to_string())
        }
        multer::Error::StreamReadFailed(_) => ApiError::bad_request(
            "the request body could not be read to its end (client gone or body truncated)",
        ),
        multer::Error::IncompleteStream
        | multer::Error::IncompleteFieldData { .. }
        | multer::Error::IncompleteHeaders => {
            ApiError::bad_request("the multipart body is truncated")
        }
        multer::Error::StreamSizeExceeded { limit } => ApiError::PayloadTooLarge { limit },
        other => ApiError::bad_request(format!("malformed multipart body: {other}")),
    }
}

/// The multipart reader of one request.
struct Parts {
    multipart: multer::Multipart<'static>,
    reading_headers: Arc<AtomicBool>,
    header_bytes: Arc<AtomicUsize>,
}

impl Parts {
    fn new(headers: &HeaderMap, body: Body, whole_stream_limit: u64) -> Result<Self, ApiError> {
        let content_type = headers
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default();
        if !content_type
            .to_ascii_lowercase()
            .starts_with("multipart/form-data")
        {
            return Err(ApiError::UnsupportedMediaType(
                "uploads are multipart/form-data: one part named file (or parts named files for a batch)".into(),
            ));
        }
        let boundary = multer::parse_boundary(content_type)
            .map_err(|_| ApiError::bad_request("the multipart Content-Type has no boundary"))?;
        let reading_headers = Arc::new(AtomicBool::new(true));
        let header_bytes = Arc::new(AtomicUsize::new(0));
        let body = MeteredBody {
            inner: body.into_data_stream(),
            reading_headers: reading_headers.clone(),
            header_bytes: header_bytes.clone(),
        };
        let constraints = multer::Constraints::new()
            .size_limit(multer::SizeLimit::new().whole_stream(whole_stream_limit));
        Ok(Self {
            multipart: multer::Multipart::with_constraints(body, boundary, constraints),
            reading_headers,
            header_bytes,
        })
    }

    /// The next part, or `None` at the end of the body.
    async fn next(&mut self, ctx: &Ctx<'_>) -> Result<Option<multer::Field<'static>>, ApiError> {
        self.header_bytes.store(0, Ordering::Relaxed);
        self.reading_headers.store(true, Ordering::Relaxed);
        let next = tokio::select! {
            next = tokio::time::timeout(ctx.state.config.upload_idle_timeout, self.multipart.next_field()) => next,
            () = ctx.state.shutdown.cancelled() => return Err(shutting_down()),
        };
        let field = next.map_err(|_| idle_timeout())?.map_err(multipart_error)?;
        self.reading_headers.store(false, Ordering::Relaxed);
        Ok(field)
    }
}

fn content_length(headers: &HeaderMap) -> Option<u64> {
    headers
        .get(header::CONTENT_LENGTH)?
        .to_str()
        .ok()?
        .parse()
        .ok()
}

fn idle_timeout() -> ApiError {
    ApiError::InvalidRequest {
        status: StatusCode::REQUEST_TIMEOUT,
        detail: "the upload sent nothing for too long".into(),
    }
}

fn shutting_down() -> ApiError {
    ApiError::ServiceUnavailable("the server is shutting down; retry the upload".into())
}

/// What every file of one request shares.
struct Ctx<'a> {
    state: &'a AppState,
    account: &'a Account,
    limits: Limits,
    lease: &'a Lease,
    /// The request's `Content-Length`, when the client sent one: no file of
    /// the request can be larger, so no reservation needs to be either.
    body_len: Option<u64>,
}

impl Ctx<'_> {
    async fn next_chunk(
        &self,
        field: &mut multer::Field<'static>,
    ) -> Result<Option<Bytes>, FileError> {
        tokio::select! {
            chunk = tokio::time::timeout(self.state.config.upload_idle_timeout, field.chunk()) => {
                chunk.map_err(|_| fatal(idle_timeout()))?.map_err(|e| fatal(multipart_error(e)))
            }
            () = self.state.shutdown.cancelled() => Err(fatal(shutting_down())),
        }
    }

    fn cap_error(&self, category: Category) -> (u64, ApiError) {
        let cap = match category {
            Category::Image => self.limits.max_image_bytes,
            Category::Document => self.limits.max_document_bytes,
            Category::Video => self.limits.max_video_bytes,
        };
        let stream_cap = self.state.config.stream_max_file_bytes;
        if cap <= stream_cap {
            (cap, ApiError::FileTooLarge { limit: cap })
        } else {
            (
                stream_cap,
                ApiError::UsePresignedUpload { limit: stream_cap },
            )
        }
    }

    /// Streams one part to storage and records it.
    async fn stream_file(
        &self,
        field: &mut multer::Field<'static>,
        filename: &str,
    ) -> Result<FileView, FileError> {
        let staged = self.receive(field, filename).await?;
        self.complete(staged).await
    }

    /// Reads one part to its end into storage, holding every limit on the
    /// way; the object is not finished yet (see [`Ctx::complete`]).
    async fn receive(
        &self,
        field: &mut multer::Field<'static>,
        filename: &str,
    ) -> Result<Staged, FileError> {
        let declared = field
            .content_type()
            .map(ToString::to_string)
            .unwrap_or_default();
        let mut head: Vec<Bytes> = Vec::new();
        let mut head_len = 0;
        let mut complete = false;
        while head_len < SNIFF_BYTES {
            match self.next_chunk(field).await? {
                Some(chunk) => {
                    head_len += chunk.len();
                    head.push(chunk);
                }
                None => {
                    complete = true;
                    break;
                }
            }
        }
        if complete && head_len == 0 {
            return Err(ApiError::unprocessable("the file is empty").into());
        }
        let kind =
            sniff::sniff(&head.concat(), complete, &declared, filename).map_err(|e| match e {
                SniffError::Unsupported(d) => ApiError::UnsupportedMediaType(d),
                SniffError::Mismatch(d) => ApiError::TypeMismatch(d),
            })?;
        let id = Uuid::now_v7();
        // Recorded on the lease by the file's first reservation, before any
        // byte reaches storage.
        let key = files::object_key(self.account.id, id);
        let part_size = usize::try_from(self.state.config.upload_part_bytes).unwrap_or(usize::MAX);
        let writer = self
            .state
            .store
            .writer(&key, kind.mime, part_size)
            .await
            .map_err(|e| ApiError::Internal(e.into()))?;
        let mut sink = Sink::new(self, &key, &kind, writer);
        let streamed = async {
            for chunk in head {
                sink.push(chunk).await?;
            }
            if !complete {
                while let Some(chunk) = self.next_chunk(field).await? {
                    sink.push(chunk).await?;
                }
            }
            if kind.text && !sink.utf8.finish() {
                return Err(ApiError::UnsupportedMediaType(
                    "text documents must be valid UTF-8".into(),
                )
                .into());
            }
            Ok::<_, FileError>(())
        }
        .await;
        let (writer, reserved, total, sha) = sink.into_parts();
        let staged = Staged {
            writer,
            id,
            key,
            filename: filename.to_owned(),
            kind,
            reserved,
            total,
            sha,
        };
        match streamed {
            Ok(()) => Ok(staged),
            Err(e) => Err(self.discard(staged, e).await),
        }
    }

    /// Finishes a received file's object and records the file; on failure
    /// gives back everything it took.
    async fn complete(&self, staged: Staged) -> Result<FileView, FileError> {
        let upload_id = staged.writer.multipart_upload_id().map(str::to_owned);
        let Staged {
            writer,
            id,
            key,
            filename,
            kind,
            reserved,
            total,
            sha,
        } = staged;
        let stored = writer
            .finish()
            .await
            .map_err(|e| FileError::from(ApiError::Internal(e.into())));
        let recorded = match stored {
            Ok(_) => {
                let new = NewFile {
                    id,
                    filename,
                    content_type: kind.mime.to_owned(),
                    category: kind.category,
                    size: total,
                    sha256: Some(sha),
                };
                files::record(&self.state.db, self.lease, &new, reserved)
                    .await
                    .map_err(FileError::from)
            }
            Err(e) => Err(e),
        };
        match recorded {
            Ok(view) => {
                metrics::counter!("intake_upload_bytes_total").increment(total);
                Ok(view)
            }
            Err(e) => Err(self
                .release_file(&key, upload_id.as_deref(), reserved, e)
                .await),
        }
    }

    /// Ends a file refused while it streamed.
    async fn discard(&self, staged: Staged, error: FileError) -> FileError {
        let upload_id = staged.writer.multipart_upload_id().map(str::to_owned);
        if let Err(abort) = staged.writer.abort().await {
            tracing::warn!(error = %abort, key = staged.key, "could not abort a refused upload's object");
        }
        self.release_file(&staged.key, upload_id.as_deref(), staged.reserved, error)
            .await
    }

    /// Gives back everything a failed file took: object, tracking, quota.
    async fn release_file(
        &self,
        key: &str,
        upload_id: Option<&str>,
        reserved: u64,
        error: FileError,
    ) -> FileError {
        let released = async {
            let mut conn = self.state.db.acquire().await?;
            lease::remove_object(&mut conn, self.state.store.as_ref(), key, upload_id).await?;
            drop(conn);
            self.lease.unreserve(&self.state.db, reserved, key).await
        }
        .await;
        match released {
            Ok(()) => error,
            // The lease still names the object: the reaper finishes the job.
            Err(e) => {
                tracing::error!(error = %e, key, "could not release a failed upload");
                error
            }
        }
    }
}

/// A file whose bytes are all in storage's hands, not yet finished.
struct Staged {
    writer: Box<dyn ObjectWriter>,
    id: Uuid,
    key: String,
    filename: String,
    kind: Kind,
    reserved: u64,
    total: u64,
    sha: [u8; 32],
}

impl Staged {
    /// Whether finishing it is one small request with no multipart upload,
    /// so it may run while the next file is read without holding a part.
    fn is_small(&self) -> bool {
        self.writer.multipart_upload_id().is_none()
    }
}

/// The running state of one file on its way to storage.
struct Sink<'a> {
    ctx: &'a Ctx<'a>,
    key: &'a str,
    writer: Box<dyn ObjectWriter>,
    category: Category,
    text: bool,
    utf8: Utf8Stream,
    hasher: Sha256,
    total: u64,
    reserved: u64,
    tracked_upload: bool,
}

impl<'a> Sink<'a> {
    fn new(ctx: &'a Ctx<'a>, key: &'a str, kind: &Kind, writer: Box<dyn ObjectWriter>) -> Self {
        Self {
            ctx,
            key,
            writer,
            category: kind.category,
            text: kind.text,
            utf8: Utf8Stream::default(),
            hasher: Sha256::new(),
            total: 0,
            reserved: 0,
            tracked_upload: false,
        }
    }

    async fn push(&mut self, chunk: Bytes) -> Result<(), FileError> {
        self.total += chunk.len() as u64;
        let (limit, too_large) = self.ctx.cap_error(self.category);
        if self.total > limit {
            return Err(too_large.into());
        }
        if self.text && !self.utf8.feed(&chunk) {
            return Err(ApiError::UnsupportedMediaType(
                "text documents must be valid UTF-8".into(),
            )
            .into());
        }
        self.hasher.update(&chunk);
        self.reserve_to(self.total, limit).await?;
        self.writer
            .write(chunk)
            .await
            .map_err(|e| ApiError::Internal(e.into()))?;
        if !self.tracked_upload
            && let Some(upload_id) = self.writer.multipart_upload_id()
        {
            let upload_id = upload_id.to_owned();
            self.ctx
                .lease
                .track_object(&self.ctx.state.db, Some(self.key), Some(&upload_id))
                .await?;
            self.tracked_upload = true;
        }
        Ok(())
    }

    /// Reserves quota ahead of the bytes, a part at a time; near the quota,
    /// exactly what the bytes in hand need, so a file that fits is accepted.
    async fn reserve_to(&mut self, total: u64, limit: u64) -> Result<(), FileError> {
        if self.reserved >= total {
            return Ok(());
        }
        let need = total - self.reserved;
        let most = self.ctx.body_len.map_or(limit, |len| len.min(limit));
        let step = need
            .max(self.ctx.state.config.upload_part_bytes)
            .min(most.saturating_sub(self.reserved))
            .max(need);
        let db = &self.ctx.state.db;
        let quota = self.ctx.limits.storage_bytes;
        // The file's first reservation also records its object on the lease.
        let key = (self.reserved == 0).then_some(self.key);
        let granted = match self.ctx.lease.reserve(db, step, quota, key).await {
            Ok(()) => step,
            Err(ReserveError::Quota { .. }) if step > need => {
                self.ctx
                    .lease
                    .reserve(db, need, quota, key)
                    .await
                    .map_err(ApiError::from)?;
                need
            }
            Err(e) => return Err(ApiError::from(e).into()),
        };
        self.reserved += granted;
        Ok(())
    }

    fn into_parts(self) -> (Box<dyn ObjectWriter>, u64, u64, [u8; 32]) {
        (
            self.writer,
            self.reserved,
            self.total,
            self.hasher.finalize().into(),
        )
    }
}

fn rejected(e: &ApiError) {
    metrics::counter!("intake_upload_rejections_total", "code" => e.code()).increment(1);
}

/// Uploads one file (one part named `file`).
#[utoipa::path(post, path = "/upload/stream", tag = "uploads",
    request_body(content_type = "multipart/form-data", description = "one part named `file`"),
    responses((status = 201, body = FileView), (status = 413), (status = 415), (status = 429), (status = 507)))]
pub async fn stream_single(
    State(state): State<AppState>,
    auth: CurrentAccount,
    headers: HeaderMap,
    body: Body,
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
    auth: &CurrentAccount,
    headers: &HeaderMap,
    body: Body,
    whole_stream_limit: u64,
    run: impl AsyncFnOnce(&Ctx<'_>, &mut Parts) -> Result<T, ApiError>,
) -> Result<T, ApiError> {
    let limits = auth.account.limits();
    let mut parts = Parts::new(headers, body, whole_stream_limit)?;
    let guard = SlotGuard::acquire(state, &auth.account, &limits, "stream").await?;
    let ctx = Ctx {
        state,
        account: &auth.account,
        limits,
        lease: guard.lease(),
        body_len: content_length(headers),
    };
    let result = run(&ctx, &mut parts).await;
    guard.release().await;
    result.inspect_err(rejected)
}

async fn single(ctx: &Ctx<'_>, parts: &mut Parts) -> Result<FileView, ApiError> {
    let Some(mut field) = parts.next(ctx).await? else {
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
    let view = ctx
        .stream_file(&mut field, &filename)
        .await
        .map_err(|e| e.error)?;
    drop(field);
    if parts.next(ctx).await?.is_some() {
        files::delete(
            &ctx.state.db,
            ctx.state.store.as_ref(),
            ctx.account.id,
            view.id,
        )
        .await?;
        return Err(ApiError::bad_request(
            "send exactly one part named file; use /upload/stream-batch for several",
        ));
    }
    Ok(view)
}

/// The result of one part of a batch.
#[derive(Debug, Serialize, ToSchema)]
pub struct BatchResult {
    /// Position of the part, from 0.
    pub index: usize,
    /// The part's filename (sanitised).
    pub filename: String,
    /// The status this file alone would have had.
    pub status: u16,
    /// The stored file, on success.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub file: Option<FileView>,
    /// The problem, on failure.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<Object>)]
    pub error: Option<Value>,
}

/// `POST /upload/stream-batch` answer.
#[derive(Debug, Serialize, ToSchema)]
pub struct BatchResponse {
    /// Files stored.
    pub uploaded: usize,
    /// Parts refused.
    pub failed: usize,
    /// One result per part, in order.
    pub results: Vec<BatchResult>,
}

/// Uploads several files in one request (parts named `files`); one file
/// failing never fails the others.
#[utoipa::path(post, path = "/upload/stream-batch", tag = "uploads",
    request_body(content_type = "multipart/form-data", description = "1..N parts named `files`"),
    responses((status = 200, body = BatchResponse), (status = 413, description = "more parts than the tier's batch size"),
              (status = 429)))]
pub async fn stream_batch(
    State(state): State<AppState>,
    auth: CurrentAccount,
    headers: HeaderMap,
    body: Body,
) -> Result<Json<BatchResponse>, ApiError> {
    let per_part = state.config.stream_max_file_bytes + MAX_PART_HEADER_BYTES as u64;
    let whole = per_part.saturating_mul(u64::from(auth.account.limits().batch_size));
    upload(&state, &auth, &headers, body, whole, async |ctx, parts| {
        batch(ctx, parts).await
    })
    .await
    .map(Json)
}

/// What reading the next part of a batch came to.
enum Next {
    /// The body ended.
    End,
    /// The body broke before a part could be read.
    Broken(ApiError),
    /// One part more than the batch may hold.
    TooMany,
    /// A part that is not a file of the batch.
    Misnamed(String, ApiError),
    /// A file, read to its end (or refused).
    Received(String, Result<Staged, FileError>),
}

async fn next_file(ctx: &Ctx<'_>, parts: &mut Parts, index: usize) -> Next {
    let mut field = match parts.next(ctx).await {
        Ok(Some(field)) => field,
        Ok(None) => return Next::End,
        Err(e) => return Next::Broken(e),
    };
    if index >= ctx.limits.batch_size as usize {
        return Next::TooMany;
    }
    let filename = sanitize_filename(field.file_name().unwrap_or_default());
    if field.name() != Some("files") {
        let e = ApiError::bad_request(format!(
            "batch parts are named files, got {:?}",
            field.name().unwrap_or_default()
        ));
        return Next::Misnamed(filename, e);
    }
    let received = ctx.receive(&mut field, &filename).await;
    Next::Received(filename, received)
}

/// A part's result, and whether the request body broke with it.
fn outcome(
    index: usize,
    filename: String,
    done: Result<FileView, FileError>,
) -> (BatchResult, bool) {
    match done {
        Ok(view) => (
            BatchResult {
                index,
                filename,
                status: StatusCode::CREATED.as_u16(),
                file: Some(view),
                error: None,
            },
            false,
        ),
        Err(FileError { error, fatal }) => {
            rejected(&error);
            (failure(index, filename, &error), fatal)
        }
    }
}

async fn batch(ctx: &Ctx<'_>, parts: &mut Parts) -> Result<BatchResponse, ApiError> {
    let mut results: Vec<BatchResult> = Vec::new();
    // A small file whose single PUT runs while the next part is read, so
    // that sending one file overlaps receiving the next. The lease tracks it
    // as its finishing object until it is recorded.
    let mut finishing: Option<(usize, String, Staged)> = None;
    loop {
        let index = results.len() + usize::from(finishing.is_some());
        let (next, done) = match finishing.take() {
            Some((i, name, staged)) => {
                let (next, done) = tokio::join!(next_file(ctx, parts, index), ctx.complete(staged));
                (next, Some((i, name, done)))
            }
            None => (next_file(ctx, parts, index).await, None),
        };
        if let Some((i, name, done)) = done {
            results.push(outcome(i, name, done).0);
        }
        match next {
            Next::End => break,
            // The body broke before any part: the request failed as a whole.
            Next::Broken(e) if results.is_empty() => return Err(e),
            Next::Broken(e) => {
                rejected(&e);
                results.push(failure(results.len(), String::new(), &e));
                break;
            }
            Next::TooMany => {
                // Nothing of this request is kept.
                for stored in results.iter().filter_map(|r| r.file.as_ref()) {
                    files::delete(
                        &ctx.state.db,
                        ctx.state.store.as_ref(),
                        ctx.account.id,
                        stored.id,
                    )
                    .await?;
                }
                return Err(ApiError::BatchTooLarge {
                    limit: u64::from(ctx.limits.batch_size),
                });
            }
            Next::Misnamed(name, e) => results.push(failure(index, name, &e)),
            Next::Received(name, Ok(staged)) if staged.is_small() => {
                finishing = Some((index, name, staged));
            }
            Next::Received(name, received) => {
                let done = match received {
                    Ok(staged) => ctx.complete(staged).await,
                    Err(e) => Err(e),
                };
                let (result, fatal) = outcome(index, name, done);
                results.push(result);
                if fatal {
                    break;
                }
            }
        }
    }
    if let Some((i, name, staged)) = finishing.take() {
        let done = ctx.complete(staged).await;
        results.push(outcome(i, name, done).0);
    }
    if results.is_empty() {
        return Err(ApiError::bad_request(
            "the body has no parts: send 1 or more parts named files",
        ));
    }
    let uploaded = results.iter().filter(|r| r.file.is_some()).count();
    Ok(BatchResponse {
        uploaded,
        failed: results.len() - uploaded,
        results,
    })
}

fn failure(index: usize, filename: String, e: &ApiError) -> BatchResult {
    if let ApiError::Internal(cause) = e {
        tracing::error!(error = ?cause, index, "batch file failed");
    }
    BatchResult {
        index,
        filename,
        status: e.status().as_u16(),
        file: None,
        error: Some(e.to_problem()),
    }
}

#[cfg(test)]
mod tests {
    use super::sanitize_filename;

    #[test]
    fn filenames_lose_paths_and_control_characters() {
        assert_eq!(sanitize_filename("../../etc/passwd"), "passwd");
        assert_eq!(sanitize_filename("C:\\Users\\me\\photo.jpg"), "photo.jpg");
        assert_eq!(sanitize_filename("a\0b\r\n.txt"), "ab.txt");
        assert_eq!(sanitize_filename(".."), "file");
        assert_eq!(sanitize_filename(""), "file");
        assert_eq!(sanitize_filename(&"é".repeat(200)).len(), 254);
    }
}
