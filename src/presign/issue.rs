//! Issuing a presigned upload. This module alone decides how an upload is
//! sent (whole through one URL, or in parts of [`part_size`]; on S3 always
//! as a multipart upload, so that its URLs die with it) and the order in
//! which issuing takes the slot, reserves, signs and records, so that a
//! failure at any step keeps nothing.

use std::time::Duration;

use axum::{extract::State, http::StatusCode};
use chrono::Utc;
use uuid::Uuid;

use super::{
    LEASE_GRACE,
    doc::{PartUrl, PresignBody, PresignRequest, Presigned},
    uploads::{self, NewUpload},
};
use crate::{
    auth::{Account, UploadToken, Uploader},
    error::ApiError,
    extract::Json,
    files,
    quota::{
        caps::{Cap, Route},
        slots::{Lease, Slot, UploadKind},
        tokens,
    },
    sniff::{self, Kind},
    state::AppState,
    storage::{PartConditions, PresignedRequest, PutConditions},
    upload::sanitize_filename,
};

/// Above this size an upload is always sent in parts (S3's largest part,
/// and its largest single PUT).
pub(super) const SINGLE_PUT_MAX: u64 = 5 * 1024 * 1024 * 1024;
/// Smallest part intake hands out (S3's minimum is 5 MiB).
const MIN_PART: u64 = 8 * 1024 * 1024;
/// S3's largest part count.
const MAX_PARTS: u64 = 10_000;

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
    fn parse(
        body: PresignRequest,
        account: &Account,
        token: Option<&UploadToken>,
        stream_max: u64,
    ) -> Result<Self, ApiError> {
        let filename = sanitize_filename(&body.filename);
        let kind = sniff::announced(&body.content_type, &filename)?;
        if let Some(token) = token {
            tokens::check_category(token, kind.category)?;
        }
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
    security(("api_key" = []), ("session" = []), ("upload_token" = [])),
    responses((status = 201, body = Presigned), (status = 413, description = "above the type's cap (file_too_large), or past an upload token's limits (upload_token_exhausted)"),
              (status = 415), (status = 429), (status = 507)))]
pub async fn issue(
    State(state): State<AppState>,
    auth: Uploader,
    Json(body): Json<PresignRequest>,
) -> Result<(StatusCode, Json<Presigned>), ApiError> {
    let declared = Declared::parse(
        body,
        &auth.account,
        auth.token.as_ref(),
        state.config.stream_max_file_bytes,
    )?;
    let token = auth.token.as_ref().map(|t| t.id.as_str());
    let answer = start(&state, &auth.account, token, &declared).await?;
    metrics::counter!("intake_presigned_issued_total").increment(1);
    Ok((StatusCode::CREATED, Json(answer)))
}

/// Takes the slot, then reserves, signs and records the upload; the slot
/// is handed over to the upload only when all of that succeeded, and
/// released (with whatever it holds) otherwise.
async fn start(
    state: &AppState,
    account: &Account,
    token: Option<&str>,
    d: &Declared,
) -> Result<Presigned, ApiError> {
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
    match sign(state, slot.lease(), limits.storage_bytes, token, d, expiry).await {
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
    token: Option<&str>,
    d: &Declared,
    expiry: Duration,
) -> Result<Presigned, ApiError> {
    let id = Uuid::now_v7();
    // Every URL writes the file's own key: nothing but this upload can
    // write there, and completion need not move the bytes.
    let key = files::object_key(lease.account_id, id);
    tokens::reserve_file(&state.db, lease, token, d.size, quota, Some(&key)).await?;
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
    let (upload_id, parts_of) = match state.store.as_fs() {
        // The local folder's URL is intake's own data route, which stops
        // taking bytes once the upload has ended.
        Some(fs) if !d.multipart => {
            let conditions = PutConditions {
                content_length: d.size,
                content_type: d.kind.mime.to_owned(),
                sha256: d.sha256,
            };
            answer.single(fs.presign_put(&key, &conditions, expiry)?);
            (None, None)
        }
        // On S3 every upload is a multipart upload, sent whole as its one
        // part or a URL per part: completing or aborting it makes storage
        // refuse its URLs.
        _ => {
            let upload_id = state
                .store
                .create_multipart(&key, d.kind.mime, d.sha256.is_some())
                .await?;
            lease
                .track_object(&state.db, Some(&key), Some(&upload_id))
                .await?;
            if d.multipart {
                let part = part_size(d.size);
                answer.part_size = Some(part);
                answer.parts =
                    Some(part_urls(state, &key, &upload_id, d.size, part, expiry).await?);
                (Some(upload_id), Some(part))
            } else {
                let whole = PartConditions {
                    len: d.size,
                    content_type: Some(d.kind.mime.to_owned()),
                    sha256: d.sha256,
                };
                let signed = state
                    .store
                    .presign_upload_part(&key, &upload_id, 1, &whole, expiry)
                    .await?;
                answer.single(signed);
                (Some(upload_id), None)
            }
        }
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
            multipart_upload_id: upload_id.as_deref(),
            part_size: parts_of,
            expires_at,
            upload_token_id: token,
        },
    )
    .await?;
    Ok(answer)
}

impl Presigned {
    /// The answer's one URL, with the headers its signature covers.
    fn single(&mut self, signed: PresignedRequest) {
        self.method = Some(signed.method.to_string());
        self.url = Some(signed.url);
        self.headers = Some(
            signed
                .headers
                .iter()
                .filter_map(|(k, v)| {
                    Some((k.to_string(), serde_json::Value::from(v.to_str().ok()?)))
                })
                .collect(),
        );
    }
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
        let conditions = PartConditions {
            len,
            ..PartConditions::default()
        };
        let signed = state
            .store
            .presign_upload_part(key, upload_id, number, &conditions, expiry)
            .await?;
        parts.push(PartUrl {
            part_number: number.unsigned_abs(),
            url: signed.url,
        });
    }
    Ok(parts)
}
