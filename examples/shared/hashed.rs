//! A request body on its way to the S3 SDK, hashed with SHA-256 as it
//! passes: the body is not Sync and the SDK's must be, so the bytes cross a
//! channel of two chunks, as in intake.

use aws_sdk_s3::primitives::ByteStream;
use axum::body::Body;
use bytes::Bytes;
use futures_util::StreamExt;
use http_body::Frame;
use http_body_util::StreamBody;
use sha2::{Digest, Sha256};

/// The body to hand to the SDK, and the task that reads `body` into it and
/// ends with `hasher` fed every byte.
pub fn body(body: Body, mut hasher: Sha256) -> (ByteStream, tokio::task::JoinHandle<Sha256>) {
    let (tx, mut rx) = tokio::sync::mpsc::channel::<Result<Frame<Bytes>, std::io::Error>>(2);
    let hashing = tokio::spawn(async move {
        let mut chunks = body.into_data_stream();
        while let Some(chunk) = chunks.next().await {
            let frame = chunk
                .map(|c| {
                    hasher.update(&c);
                    Frame::data(c)
                })
                .map_err(std::io::Error::other);
            if tx.send(frame).await.is_err() {
                break;
            }
        }
        hasher
    });
    let frames = futures_util::stream::poll_fn(move |cx| rx.poll_recv(cx));
    (ByteStream::from_body_1_x(StreamBody::new(frames)), hashing)
}

/// A digest as lowercase hex.
pub fn hex(digest: &[u8]) -> String {
    digest.iter().map(|b| format!("{b:02x}")).collect()
}
