//! Batches: up to the tier's batch size of files in one request, each with
//! a result of its own, a failed file never failing the others.

use axum::http::StatusCode;
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

/// Reads every part of a batch, storing each file it can.
pub(super) async fn run(ctx: &Ctx<'_>, parts: &mut Parts) -> Result<BatchResponse, ApiError> {
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
                    ctx.forget(stored.id).await?;
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
