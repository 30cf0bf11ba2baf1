//! The floor of intake's tus figures on this machine: a tus server that does
//! only the least intake does for a resumable upload on S3 (receive each
//! PATCH's body, SHA-256 it, stream it into one part of an S3 multipart
//! upload, complete the upload after its last byte) and nothing else: no
//! database, no limits, no sniffing, no lock, nothing kept of a body that
//! breaks. Its state lives in memory and is lost when it stops. The upload
//! bench drives it with the same client, file and load as the tus reference
//! server and intake; its times beside the reference's are the ratios no tus
//! server on this S3 server reaches here, where client, server and S3
//! server share the cores.
//!
//!   S3_ENDPOINT=… S3_ACCESS_KEY_ID=… S3_SECRET_ACCESS_KEY=… tus_relay ADDR BUCKET
//!
//! `POST /files` with `Upload-Length` creates an upload (201, `Location`);
//! `PATCH /files/{id}` at its `Upload-Offset` stores the body as the next
//! part (204, the new `Upload-Offset`). Each PATCH is one part, as the
//! bench's client sends them (every PATCH but the last a whole part of at
//! least 5 MiB); anything else is refused.

// A measuring tool: any failure ends the run loudly.
#![allow(clippy::expect_used, clippy::unwrap_used)]

use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
};

use aws_sdk_s3::types::{CompletedMultipartUpload, CompletedPart};
use axum::{
    Router,
    body::Body,
    extract::{Path, State},
    http::{HeaderMap, StatusCode},
    response::{IntoResponse, Response},
    routing::{patch, post},
};
use sha2::{Digest, Sha256};

#[path = "shared/hashed.rs"]
mod hashed;
#[path = "shared/s3.rs"]
mod s3;

struct Upload {
    upload_id: String,
    length: u64,
    offset: u64,
    parts: Vec<CompletedPart>,
    hasher: Sha256,
}

#[derive(Clone)]
struct Relay {
    s3: aws_sdk_s3::Client,
    bucket: String,
    uploads: Arc<Mutex<HashMap<String, Upload>>>,
}

fn number(headers: &HeaderMap, name: &str) -> Option<u64> {
    headers.get(name)?.to_str().ok()?.parse().ok()
}

async fn create(State(relay): State<Relay>, headers: HeaderMap) -> Response {
    let Some(length) = number(&headers, "upload-length") else {
        return StatusCode::BAD_REQUEST.into_response();
    };
    let id = uuid::Uuid::new_v4().simple().to_string();
    let started = relay
        .s3
        .create_multipart_upload()
        .bucket(&relay.bucket)
        .key(&id)
        .send()
        .await
        .expect("create_multipart_upload");
    relay.uploads.lock().unwrap().insert(
        id.clone(),
        Upload {
            upload_id: started.upload_id().expect("an upload id").to_owned(),
            length,
            offset: 0,
            parts: Vec::new(),
            hasher: Sha256::new(),
        },
    );
    (
        StatusCode::CREATED,
        [
            ("location", format!("/files/{id}")),
            ("tus-resumable", "1.0.0".into()),
        ],
    )
        .into_response()
}

async fn append(
    State(relay): State<Relay>,
    Path(id): Path<String>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let (Some(offset), Some(len)) = (
        number(&headers, "upload-offset"),
        number(&headers, "content-length"),
    ) else {
        return StatusCode::BAD_REQUEST.into_response();
    };
    // The upload leaves the map while its PATCH runs: a second PATCH of it
    // finds nothing (the relay's whole answer to concurrent writers).
    let Some(mut upload) = relay.uploads.lock().unwrap().remove(&id) else {
        return StatusCode::NOT_FOUND.into_response();
    };
    if offset != upload.offset || offset + len > upload.length {
        relay.uploads.lock().unwrap().insert(id, upload);
        return StatusCode::CONFLICT.into_response();
    }
    let (stream, hashing) = hashed::body(body, std::mem::take(&mut upload.hasher));
    let part_number = i32::try_from(upload.parts.len() + 1).unwrap();
    let stored = relay
        .s3
        .upload_part()
        .bucket(&relay.bucket)
        .key(&id)
        .upload_id(&upload.upload_id)
        .part_number(part_number)
        .content_length(i64::try_from(len).unwrap())
        .body(stream)
        .customize()
        .disable_payload_signing()
        .send()
        .await
        .expect("upload_part");
    upload.hasher = hashing.await.expect("hashing task");
    upload.parts.push(
        CompletedPart::builder()
            .part_number(part_number)
            .set_e_tag(stored.e_tag().map(str::to_owned))
            .build(),
    );
    upload.offset += len;
    let new_offset = upload.offset.to_string();
    if upload.offset == upload.length {
        relay
            .s3
            .complete_multipart_upload()
            .bucket(&relay.bucket)
            .key(&id)
            .upload_id(&upload.upload_id)
            .multipart_upload(
                CompletedMultipartUpload::builder()
                    .set_parts(Some(std::mem::take(&mut upload.parts)))
                    .build(),
            )
            .send()
            .await
            .expect("complete_multipart_upload");
        let digest = upload.hasher.finalize();
        return (
            StatusCode::NO_CONTENT,
            [
                ("upload-offset", new_offset),
                ("x-relay-sha256", hashed::hex(&digest)),
            ],
        )
            .into_response();
    }
    relay.uploads.lock().unwrap().insert(id, upload);
    (StatusCode::NO_CONTENT, [("upload-offset", new_offset)]).into_response()
}

#[tokio::main]
async fn main() {
    let mut args = std::env::args().skip(1);
    let (addr, bucket) = (
        args.next().expect("usage: tus_relay ADDR BUCKET"),
        args.next().expect("usage: tus_relay ADDR BUCKET"),
    );
    let relay = Relay {
        s3: s3::client(),
        bucket,
        uploads: Arc::default(),
    };
    let app = Router::new()
        .route("/files", post(create))
        .route("/files/{id}", patch(append))
        .with_state(relay);
    let listener = tokio::net::TcpListener::bind(&addr).await.expect("bind");
    axum::serve(listener, app).await.expect("serve");
}
