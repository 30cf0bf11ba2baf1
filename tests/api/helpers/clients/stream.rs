//! A client of `/upload/stream`: finished forms, and bodies the test feeds
//! by hand to see what the server does before the client has finished.

use std::time::Duration;

use reqwest::{RequestBuilder, Response};
use tokio::{sync::mpsc::Sender, task::JoinHandle};

use crate::helpers::{app::TestApp, fixtures::Form, poll::eventually};

/// The boundary of an [`open_stream`] form.
pub const STREAM_BOUNDARY: &str = "open";

/// The bytes that end an [`open_stream`] form after its file's bytes.
pub const STREAM_END: &[u8] = b"\r\n--open--\r\n";

/// The sending side of a body fed by hand.
pub type BodySender = Sender<Result<Vec<u8>, std::io::Error>>;

/// The request in flight whose body is fed by hand.
pub type Answer = JoinHandle<reqwest::Result<Response>>;

impl TestApp {
    /// Sends a finished form to an upload route with the key.
    pub async fn upload_form(&self, path: &str, key: &str, form: Form) -> Response {
        send_form(self.post(path), key, form).await
    }

    /// Uploads one file through `/upload/stream`.
    pub async fn upload(
        &self,
        key: &str,
        filename: &str,
        content_type: &str,
        data: &[u8],
    ) -> Response {
        self.upload_form(
            "/upload/stream",
            key,
            Form::new().part("file", filename, content_type, data),
        )
        .await
    }

    /// Uploads in flight of the key's account, as `GET /usage` reports them.
    pub async fn active(&self, key: &str) -> i64 {
        self.usage(key).await["usage"]["concurrent_uploads"]["active"]
            .as_i64()
            .unwrap()
    }

    /// Waits until the key's account has `n` uploads in flight.
    pub async fn wait_active(&self, key: &str, n: i64) {
        eventually(&format!("{n} uploads in flight"), || async {
            self.active(key).await == n
        })
        .await;
    }
}

/// Sends `form`, finished, as the body of `request` with the key.
pub async fn send_form(request: RequestBuilder, key: &str, form: Form) -> Response {
    let form = form.finish();
    request
        .bearer_auth(key)
        .header("content-type", form.content_type())
        .body(form.body)
        .send()
        .await
        .unwrap()
}

/// A body that the test feeds by hand, to see what the server does before
/// the client has finished.
pub fn channel_body() -> (BodySender, reqwest::Body) {
    let (tx, rx) = tokio::sync::mpsc::channel::<Result<Vec<u8>, std::io::Error>>(4);
    let stream = futures_util::stream::unfold(rx, |mut rx| async move {
        rx.recv().await.map(|item| (item, rx))
    });
    (tx, reqwest::Body::wrap_stream(stream))
}

/// The head of a file part of a multipart form.
pub fn part_head(boundary: &str, name: &str, filename: &str, ct: &str) -> Vec<u8> {
    format!("--{boundary}\r\nContent-Disposition: form-data; name=\"{name}\"; filename=\"{filename}\"\r\nContent-Type: {ct}\r\n\r\n").into_bytes()
}

/// A streaming upload to `url` whose body stays open after its part head
/// and `first` bytes, until the sender sends the rest and [`STREAM_END`]
/// (see [`finish`]) or drops.
pub async fn open_stream(
    client: &reqwest::Client,
    url: String,
    key: &str,
    filename: &str,
    content_type: &str,
    first: Vec<u8>,
) -> (BodySender, Answer) {
    let (tx, body) = channel_body();
    let request = client
        .post(url)
        .bearer_auth(key)
        .header(
            "content-type",
            format!("multipart/form-data; boundary={STREAM_BOUNDARY}"),
        )
        .body(body)
        .send();
    let handle = tokio::spawn(request);
    tx.send(Ok(part_head(
        STREAM_BOUNDARY,
        "file",
        filename,
        content_type,
    )))
    .await
    .unwrap();
    for chunk in first.chunks(256 * 1024) {
        if tx.send(Ok(chunk.to_vec())).await.is_err() {
            break;
        }
    }
    (tx, handle)
}

/// Ends an [`open_stream`] body and returns the answer.
pub async fn finish(tx: BodySender, handle: Answer) -> Response {
    // Bounded: an upload intake has already answered takes no more bytes.
    let _ = tokio::time::timeout(Duration::from_secs(10), tx.send(Ok(STREAM_END.to_vec()))).await;
    drop(tx);
    tokio::time::timeout(Duration::from_secs(60), handle)
        .await
        .expect("the upload is answered within a minute")
        .unwrap()
        .unwrap()
}
