//! Batches: up to the tier's batch size of files in one request, each with
//! a result of its own, a failed file never failing the others.

use std::future::Future;

use axum::http::StatusCode;
use futures_util::{StreamExt as _, future::BoxFuture, stream::FuturesUnordered};
use serde::Serialize;
use serde_json::Value;
use utoipa::ToSchema;

use super::{
    multipart::Parts,
    pipeline::{Ctx, FileError, Staged},
    rejected, sanitize_filename,
};
use crate::{error::ApiError, files::FileView};

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
    let mut field = match parts.next().await {
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
    let received = match ctx.receive(&mut field, &filename, None).await {
        // A refused file's remaining bytes are skipped here; if the body
        // breaks meanwhile, no later part can be read.
        Err(e) if !e.fatal => match ctx.skip_rest(&mut field).await {
            Ok(()) => Err(e),
            Err(_) => Err(FileError {
                error: e.error,
                fatal: true,
            }),
        },
        other => other,
    };
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

/// Small files being finished (their single PUT, then their record) while
/// the next part is read, so that sending files overlaps receiving them and
/// the statements of one file overlap the others'. Together they hold at
/// most one part's worth of bytes, beside the part being received.
struct Finishing<'c> {
    files: FuturesUnordered<BoxFuture<'c, Finished>>,
    /// Bytes of the files in flight.
    bytes: u64,
    /// The most they may hold together (one part).
    budget: u64,
    /// The results, as files finish (in any order).
    results: Vec<BatchResult>,
}

/// A finished file: its place, its name, its size, and how it ended.
type Finished = (usize, String, u64, Result<FileView, FileError>);

impl<'c> Finishing<'c> {
    fn new(ctx: &Ctx<'_>) -> Self {
        Self {
            files: FuturesUnordered::new(),
            bytes: 0,
            budget: ctx.state.config.upload_part_bytes,
            results: Vec::new(),
        }
    }

    /// Whether a file of `size` bytes may start finishing now.
    fn has_room(&self, size: u64) -> bool {
        self.files.is_empty() || self.bytes + size <= self.budget
    }

    /// Starts finishing a file. Its quota is reserved already: files
    /// reserve as they are read, one after another in the order they came,
    /// so that near the quota the same files are stored as if they were
    /// finished one by one (a file refused while earlier ones still hold
    /// their surplus waits for them: `super::settling`).
    fn start(&mut self, ctx: &'c Ctx<'c>, index: usize, name: String, staged: Staged) {
        let size = staged.size();
        self.bytes += size;
        self.files.push(Box::pin(async move {
            (index, name, size, ctx.complete(staged).await)
        }));
    }

    fn land(&mut self, (index, name, size, done): Finished) {
        self.bytes -= size;
        self.results.push(outcome(index, name, done).0);
    }

    /// Waits for one file to finish.
    async fn one(&mut self) {
        if let Some(finished) = self.files.next().await {
            self.land(finished);
        }
    }

    /// Runs `work` while the files in flight go on finishing.
    async fn beside<T>(&mut self, work: impl Future<Output = T>) -> T {
        let mut work = std::pin::pin!(work);
        loop {
            tokio::select! {
                out = &mut work => return out,
                Some(finished) = self.files.next(), if !self.files.is_empty() => self.land(finished),
            }
        }
    }

    /// Waits for every file in flight.
    async fn all(&mut self) {
        while !self.files.is_empty() {
            self.one().await;
        }
    }
}

/// Reads every part of a batch, storing each file it can.
pub(super) async fn run(ctx: &Ctx<'_>, parts: &mut Parts) -> Result<BatchResponse, ApiError> {
    let mut finishing = Finishing::new(ctx);
    let mut results: Vec<BatchResult> = Vec::new();
    let mut index = 0;
    loop {
        let next = finishing.beside(next_file(ctx, parts, index)).await;
        match next {
            Next::End => break,
            // The body broke before any part: the request failed as a whole.
            Next::Broken(e) if index == 0 => return Err(e),
            Next::Broken(e) => {
                rejected(&e);
                results.push(failure(index, String::new(), &e));
                break;
            }
            Next::TooMany => {
                // Nothing of this request is kept.
                finishing.all().await;
                results.append(&mut finishing.results);
                for stored in results.iter().filter_map(|r| r.file.as_ref()) {
                    ctx.delete_recorded(stored.id).await?;
                }
                return Err(ApiError::BatchTooLarge {
                    limit: u64::from(ctx.limits.batch_size),
                });
            }
            Next::Misnamed(name, e) => results.push(failure(index, name, &e)),
            Next::Received(name, Ok(staged)) if staged.is_small() => {
                while !finishing.has_room(staged.size()) {
                    finishing.one().await;
                }
                finishing.start(ctx, index, name, staged);
            }
            Next::Received(name, received) => {
                let done = match received {
                    Ok(staged) => finishing.beside(ctx.complete(staged)).await,
                    Err(e) => Err(e),
                };
                let (result, fatal) = outcome(index, name, done);
                results.push(result);
                if fatal {
                    break;
                }
            }
        }
        index += 1;
    }
    finishing.all().await;
    results.append(&mut finishing.results);
    if results.is_empty() {
        return Err(ApiError::bad_request(
            "the body has no parts: send 1 or more parts named files",
        ));
    }
    results.sort_by_key(|r| r.index);
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
