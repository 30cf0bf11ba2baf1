//! Ending a presigned upload before it becomes a file. This module alone
//! decides what ending an upload gives back (its lease, with the objects
//! it tracks, and the staging object once its URL is dead), on abort and
//! on a failed completion alike.

use axum::{extract::State, http::StatusCode};
use uuid::Uuid;

use super::uploads::{self, State as UploadState, Upload};
use crate::{
    auth::CurrentAccount,
    deletions::{self, Doomed},
    error::ApiError,
    extract::Path,
    quota::slots,
    state::AppState,
};

/// Seconds past a URL's expiry before its staging object is deleted for
/// good, for storage whose clock runs a little behind ours.
const URL_CLOCK_SKEW_SECS: i64 = 5;

/// Ends an upload's lease (removing what it still tracks: the staging
/// object, a failed upload's object or multipart upload) and queues the
/// staging object once more for after its URL's expiry, when nothing can
/// write it again.
pub(super) async fn end(state: &AppState, upload: &Upload) -> Result<(), sqlx::Error> {
    slots::end(&state.db, state.store.as_ref(), upload.lease_id).await?;
    if upload.multipart_upload_id.is_none() {
        let mut conn = state.db.acquire().await?;
        let dead = upload.expires_at + chrono::Duration::seconds(URL_CLOCK_SKEW_SECS);
        deletions::enqueue_at(&mut conn, &Doomed::object(upload.target_key()), dead).await?;
    }
    Ok(())
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
