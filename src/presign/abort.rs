//! Ending a presigned upload before it becomes a file. This module alone
//! decides what ending an upload gives back (its lease, with the object or
//! multipart upload it tracks), on abort and on a failed completion alike.
//! Once storage has aborted the multipart upload (or, on the local folder,
//! the upload's row has left `pending`), its URLs take no more bytes.

use axum::{extract::State, http::StatusCode};
use uuid::Uuid;

use super::uploads::{self, State as UploadState, Upload};
use crate::{
    auth::ContinuingUploader, error::ApiError, extract::Path, quota::slots, state::AppState,
};

/// Ends an upload's lease: its reservation and slot come back, and what it
/// still tracks (the upload's object, its multipart upload) is removed.
pub(super) async fn end(state: &AppState, upload: &Upload) -> Result<(), sqlx::Error> {
    slots::end(&state.db, state.store.as_ref(), upload.lease_id).await?;
    Ok(())
}

/// Aborts an upload: its object or multipart upload goes, its reservation
/// and slot come back.
#[utoipa::path(delete, path = "/upload/presigned/{id}", tag = "uploads", params(("id" = Uuid, Path)),
    security(("api_key" = []), ("session" = []), ("upload_token" = [])),
    responses((status = 204), (status = 404), (status = 409, description = "already completed")))]
pub async fn abort(
    State(state): State<AppState>,
    ContinuingUploader(auth): ContinuingUploader,
    Path(id): Path<Uuid>,
) -> Result<StatusCode, ApiError> {
    let upload = uploads::find(&state.db, id, Some(&auth.owner())).await?;
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

/// Ends every pending upload that upload token `token_id` issued (the
/// token was just revoked): their URLs die, their reservations, token
/// holds and slots come back. One being completed right now fails on its
/// own, at its record.
pub async fn end_for_token(state: &AppState, token_id: &str) -> Result<u64, sqlx::Error> {
    let mut ended = 0;
    for upload in uploads::pending_of_token(&state.db, token_id).await? {
        if uploads::transition(
            &state.db,
            upload.id,
            &[UploadState::Pending],
            UploadState::Aborted,
        )
        .await?
        {
            end(state, &upload).await?;
            ended += 1;
        }
    }
    Ok(ended)
}
