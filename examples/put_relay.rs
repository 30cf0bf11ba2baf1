//! The floor of intake's single-PUT ratio on this machine: an HTTP relay
//! that does only the least intake does for every file it streams into one
//! PUT (receive the body, SHA-256 it, send it on as one S3 PutObject of the
//! announced length, payload unsigned) and nothing else: no multipart form,
//! no database, no limits, no sniffing. The upload bench sends its direct
//! single PUT through it; that time beside the direct PUT's is the ratio no
//! relay can beat here, where client, relay and S3 server share the cores.
//!
//!   S3_ENDPOINT=… S3_ACCESS_KEY_ID=… S3_SECRET_ACCESS_KEY=… put_relay ADDR
//!
//! It answers `PUT /{bucket}/{key…}` (any signature accepted) with the
//! store's status and ETag, and the body's SHA-256 in `x-relay-sha256`.

// A measuring tool: any failure ends the run loudly.
#![allow(clippy::expect_used, clippy::unwrap_used)]

use axum::{
    Router,
    body::Body,
    extract::{Path, State},
    http::{HeaderMap, StatusCode},
    response::IntoResponse,
    routing::put,
};
use sha2::{Digest, Sha256};

#[path = "shared/hashed.rs"]
mod hashed;
#[path = "shared/s3.rs"]
mod s3;

async fn relay(
    State(s3): State<aws_sdk_s3::Client>,
    Path((bucket, key)): Path<(String, String)>,
    headers: HeaderMap,
    body: Body,
) -> impl IntoResponse {
    let length: i64 = headers
        .get("content-length")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse().ok())
        .expect("a Content-Length");
    let (stream, hashing) = hashed::body(body, Sha256::new());
    let stored = s3
        .put_object()
        .bucket(bucket)
        .key(key)
        .content_length(length)
        .body(stream)
        .customize()
        .disable_payload_signing()
        .send()
        .await
        .expect("put_object");
    let digest = hashing.await.expect("hashing task").finalize();
    (
        StatusCode::OK,
        [
            ("etag", stored.e_tag().unwrap_or_default().to_owned()),
            ("x-relay-sha256", hashed::hex(&digest)),
        ],
    )
}

#[tokio::main]
async fn main() {
    let addr = std::env::args().nth(1).expect("usage: put_relay ADDR");
    let s3 = s3::client();
    let app = Router::new()
        .route("/{bucket}/{*key}", put(relay))
        .with_state(s3);
    let listener = tokio::net::TcpListener::bind(&addr).await.expect("bind");
    axum::serve(listener, app).await.expect("serve");
}
