//! The local-folder backend's upload URL (`PUT /upload/presigned/{id}/data`).
//! This module alone decides whether a request may write an upload's
//! object (the signature, the signed headers, one writer at a time, the
//! upload still pending) and holds the bytes to the signed length and
//! checksum. The URL dies with its upload: the route refuses an upload that
//! has ended, and bytes that arrive while it ends are never put in place.

use axum::{
    body::Body,
    extract::State,
    http::{HeaderMap, StatusCode, header},
};
use futures_util::StreamExt;
use serde::Deserialize;
use sha2::{Digest, Sha256};
use uuid::Uuid;

use super::uploads::{self, State as UploadState, Upload};
use crate::{
    body::UploadBody,
    db::heartbeat::Heartbeat,
    error::ApiError,
    extract::{Path, Query},
    state::AppState,
    storage::{FsStore, FsWriter, ObjectWriter, PutConditions},
};

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
    request_body(content = crate::body::RawBytes, content_type = "application/octet-stream"),
    responses((status = 200), (status = 400), (status = 403, description = "bad or expired signature")))]
pub async fn data(
    State(state): State<AppState>,
    Path(id): Path<Uuid>,
    Query(query): Query<DataQuery>,
    headers: HeaderMap,
    UploadBody(body): UploadBody,
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
    let key = row.key();
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
    // One writer at a time. The claim is renewed while the request runs
    // and lapses on its own if this instance dies.
    let claim = state.config.upload_idle_timeout * 2;
    if !uploads::claim_writer(&state.db, id, claim, false).await? {
        return Err(ApiError::Conflict(
            "another request is writing this upload".into(),
        ));
    }
    let mut heartbeat = Heartbeat::start(claim / 4, "a presigned upload's writer claim", id, {
        let db = state.db.clone();
        move || {
            let db = db.clone();
            async move { uploads::claim_writer(&db, id, claim, true).await }
        }
    })
    .on_drop({
        let db = state.db.clone();
        async move {
            let _ = uploads::release_writer(&db, id).await;
        }
    });
    let written = write_data(&state, fs, &row, &key, &conditions, body).await;
    heartbeat.stop();
    if let Err(e) = uploads::release_writer(&state.db, id).await {
        tracing::warn!(error = %e, upload = %id, "could not release the writer; it lapses");
    }
    written.map(|()| StatusCode::OK)
}

/// Streams a data route body into a temporary file, held to the signed
/// length and checksum (the body guard holds it to the idle time), then
/// puts it in place as the upload's object.
async fn write_data(
    state: &AppState,
    fs: &FsStore,
    row: &Upload,
    key: &str,
    conditions: &PutConditions,
    body: Body,
) -> Result<(), ApiError> {
    let mut writer = fs.local_writer(key).await?;
    let mut hasher = Sha256::new();
    let mut total: u64 = 0;
    let mut stream = body.into_data_stream();
    let received = async {
        while let Some(chunk) = stream.next().await {
            let chunk = chunk.map_err(|e| crate::body::broken(&e))?;
            total += chunk.len() as u64;
            if total > row.size() {
                return Err(ApiError::bad_request(
                    "more bytes than the signed Content-Length",
                ));
            }
            hasher.update(&chunk);
            writer.write(chunk).await?;
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
        writer.sync().await?;
        Ok(())
    }
    .await;
    match received {
        Ok(()) => place(state, row, writer).await,
        Err(e) => {
            let _ = Box::new(writer).abort().await;
            Err(e)
        }
    }
}

/// Puts the synced bytes in place (a rename) while the upload's row and
/// lease are locked: only if the upload is still pending, so an abort, a
/// completion or the reaper that ends it waits for the rename and then
/// sees the object (which it removes or verifies), and bytes that arrive
/// after the upload ended are discarded.
async fn place(state: &AppState, row: &Upload, writer: FsWriter) -> Result<(), ApiError> {
    let writer = Box::new(writer);
    let mut tx = state.db.begin().await?;
    if !uploads::lock_pending(&mut tx, row.id).await? {
        drop(tx);
        let _ = writer.abort().await;
        return Err(ApiError::Forbidden(
            "this upload has ended; its URL takes no more bytes".into(),
        ));
    }
    writer.finish().await?;
    tx.commit().await?;
    Ok(())
}

fn forbidden() -> ApiError {
    ApiError::Forbidden("the upload URL is invalid or expired".into())
}
