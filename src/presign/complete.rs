//! Completing a presigned upload. This module alone decides which request
//! completes an upload (one claims it, the others wait for its answer and
//! give the same one), how the stored object is verified and becomes a
//! file, and which failures end the upload.

use std::{future::Future, time::Duration};

use axum::{body::Body, extract::State, http::StatusCode};
use uuid::Uuid;

use super::{
    LEASE_GRACE,
    abort::end,
    doc::CompleteRequest,
    uploads::{self, State as UploadState, Upload},
    verify,
};
use crate::{
    auth::{ContinuingUploader, Owner},
    error::ApiError,
    extract::{Json, Path},
    files::{self, FileView, NewFile},
    quota::slots::Lease,
    state::AppState,
    storage::StorageError,
};

/// How long one request's claim on a completion holds if its instance dies.
const COMPLETE_CLAIM: Duration = Duration::from_secs(120);
/// How long a concurrent complete waits for the one that holds the claim.
const COMPLETE_WAIT: Duration = Duration::from_secs(60);
/// How often it looks.
const COMPLETE_POLL: Duration = Duration::from_millis(100);

/// Completes an upload: finishes the multipart upload, verifies the object,
/// and records the file. Completing twice answers the same file.
#[utoipa::path(post, path = "/upload/presigned/{id}/complete", tag = "uploads",
    params(("id" = Uuid, Path)), request_body = CompleteRequest,
    security(("api_key" = []), ("session" = []), ("upload_token" = [])),
    responses((status = 201, body = FileView), (status = 404), (status = 410, description = "expired or aborted"),
              (status = 422, description = "upload_verification_failed")))]
pub async fn complete(
    State(state): State<AppState>,
    ContinuingUploader(auth): ContinuingUploader,
    Path(id): Path<Uuid>,
    body: Body,
) -> Result<(StatusCode, Json<FileView>), ApiError> {
    let body = complete_body(body).await?;
    let owner = auth.owner();
    // One request completes; the others wait for its answer and give
    // the same one, so a client that retries a slow complete loses nothing.
    let turn = wait_for(COMPLETE_WAIT, COMPLETE_POLL, || look(&state, id, &owner)).await?;
    let view = match turn {
        Some(Turn::Done(file)) => file,
        Some(Turn::Ours(upload)) => {
            let view = finish_claimed(&state, &upload, body).await?;
            metrics::counter!("intake_presigned_completed_total").increment(1);
            view
        }
        None => {
            return Err(ApiError::ServiceUnavailable(
                "another request is still completing this upload; retry".into(),
            ));
        }
    };
    Ok((StatusCode::CREATED, Json(view)))
}

/// What one look at an upload to complete found.
enum Turn {
    /// Its file is recorded: that is the answer.
    Done(FileView),
    /// This request claimed its completion (the upload as it was then).
    Ours(Upload),
}

/// Asks `look` until it finds something, every `every` for up to `within`
/// (and always once): `None` when the time ran out first.
async fn wait_for<T, E, F, Fut>(
    within: Duration,
    every: Duration,
    mut look: F,
) -> Result<Option<T>, E>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<Option<T>, E>>,
{
    let deadline = tokio::time::Instant::now() + within;
    loop {
        if let Some(found) = look().await? {
            return Ok(Some(found));
        }
        if tokio::time::Instant::now() >= deadline {
            return Ok(None);
        }
        tokio::time::sleep(every).await;
    }
}

/// Looks at the upload once: its file if one is recorded, an error if it
/// can no longer complete, its completion if this request claims it, and
/// nothing while another request holds the claim.
async fn look(state: &AppState, id: Uuid, owner: &Owner) -> Result<Option<Turn>, ApiError> {
    let upload = uploads::find(&state.db, id, Some(owner)).await?;
    if let Some(file) = files::find_view(&state.db, upload.account_id, upload.id).await? {
        return Ok(Some(Turn::Done(file)));
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
    if uploads::claim_completion(&state.db, id, COMPLETE_CLAIM).await? {
        return Ok(Some(Turn::Ours(upload)));
    }
    Ok(None)
}

/// Completes an upload whose completion this request claimed. A failure
/// that is not the upload's fault (storage or database down) gives the
/// claim back, so the next complete may try again.
async fn finish_claimed(
    state: &AppState,
    upload: &Upload,
    body: CompleteRequest,
) -> Result<FileView, ApiError> {
    let done = finish(state, upload, body).await;
    if let Err(e) = &done
        && !matches!(e, ApiError::UploadVerificationFailed(_))
    {
        let back = uploads::transition(
            &state.db,
            upload.id,
            &[UploadState::Completing],
            UploadState::Pending,
        );
        if let Err(e) = back.await {
            tracing::warn!(error = %e, upload = %upload.id, "could not release a completion claim; it lapses");
        }
    }
    done
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
        Err(e) => return Err(crate::body::broken(&*e)),
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
        finish_in_storage(state, upload, upload_id, body).await?;
    }
    // Nothing but this upload's completion writes the file's key, and its
    // URLs are dead now: the bytes verified are the bytes kept.
    if let Err(why) = verify::verify(state.store.as_ref(), upload).await {
        return Err(fail(state, upload, why).await);
    }
    let lease = Lease::existing(
        upload.lease_id,
        upload.account_id,
        state.config.presign_expiry + LEASE_GRACE,
    );
    let new = NewFile {
        id: upload.id,
        filename: upload.filename.clone(),
        content_type: upload.content_type.clone(),
        category: upload.category,
        size: upload.size(),
        sha256: upload.sha256(),
        upload_token_id: upload.upload_token_id.clone(),
    };
    let view = match files::record(&state.db, &lease, &new, upload.size()).await {
        Ok(view) => view,
        // Another request completed it at the same moment.
        Err(e) => match files::find_view(&state.db, upload.account_id, upload.id).await? {
            Some(file) => return Ok(file),
            None => {
                // Its upload token was revoked: the upload ends with it.
                if matches!(e, ApiError::Unauthorized(_)) {
                    let ended = uploads::transition(
                        &state.db,
                        upload.id,
                        &[UploadState::Completing],
                        UploadState::Aborted,
                    )
                    .await?;
                    if ended {
                        end(state, upload).await?;
                    }
                }
                return Err(e);
            }
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
    // lease frees the slot.
    end(state, upload).await?;
    Ok(view)
}

/// Completes the upload's multipart upload in storage, from the client's
/// parts or, for an upload sent whole, from its one part. An object
/// already under the key was put there by an earlier completion of this
/// upload (nothing else writes that key: parts are not objects) whose
/// request died, or lost storage's answer, before it recorded the file; it
/// goes on to be verified as it is. Storage that does not answer gives the
/// claim back (503); a completion storage refuses fails the upload.
async fn finish_in_storage(
    state: &AppState,
    upload: &Upload,
    upload_id: &str,
    body: CompleteRequest,
) -> Result<(), ApiError> {
    let key = upload.key();
    if state.store.head(&key).await?.is_some() {
        tracing::info!(upload = %upload.id, "an earlier completion finished this upload in storage");
        return Ok(());
    }
    let completed = match upload.part_size {
        Some(_) => {
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
            state
                .store
                .complete_multipart(&key, upload_id, &parts)
                .await
        }
        None => {
            state
                .store
                .complete_parts(&key, upload_id, 1, upload.size())
                .await
        }
    };
    let refused = match completed {
        Ok(()) => return Ok(()),
        Err(e @ StorageError::Unavailable(_)) => return Err(e.into()),
        Err(e) => e,
    };
    tracing::warn!(error = %refused, upload = %upload.id, "multipart completion refused");
    let why = match upload.part_size {
        Some(_) => "the parts do not make the upload",
        None => "nothing was uploaded",
    };
    Err(fail(state, upload, why.into()).await)
}

/// Ends an upload that failed verification: its object or multipart
/// upload goes, the reservation and the slot come back, the row says so.
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
