//! A client of resumable uploads (tus 1.0): creation, PATCHes (whole,
//! stalled or retried while a dead request holds the writer), offsets.

use std::time::Duration;

use base64::{Engine as _, engine::general_purpose::STANDARD};
use reqwest::{Method, Response, StatusCode};

use crate::helpers::{app::TestApp, fixtures::MIB, poll::poll};

/// The smallest part S3 takes, so that tests cross part boundaries quickly.
pub const PART: usize = 5 * MIB;

/// An `Upload-Metadata` value of `pairs`.
pub fn metadata(pairs: &[(&str, &str)]) -> String {
    pairs
        .iter()
        .map(|(k, v)| format!("{k} {}", STANDARD.encode(v)))
        .collect::<Vec<_>>()
        .join(",")
}

/// A request with the key and the protocol version.
pub fn tus(app: &TestApp, method: Method, path: &str, key: &str) -> reqwest::RequestBuilder {
    app.request(method, path)
        .bearer_auth(key)
        .header("tus-resumable", "1.0.0")
}

/// POST /upload/tus with a length and metadata.
pub async fn create(app: &TestApp, key: &str, length: u64, meta: &[(&str, &str)]) -> Response {
    tus(app, Method::POST, "/upload/tus", key)
        .header("upload-length", length.to_string())
        .header("upload-metadata", metadata(meta))
        .send()
        .await
        .unwrap()
}

/// Creates an upload and returns its path (`/upload/tus/<id>`).
pub async fn created(app: &TestApp, key: &str, length: u64, meta: &[(&str, &str)]) -> String {
    let resp = create(app, key, length, meta).await;
    assert_eq!(
        resp.status(),
        StatusCode::CREATED,
        "{}",
        resp.text().await.unwrap()
    );
    let location = resp.headers()["location"].to_str().unwrap();
    assert!(
        location.starts_with("http://"),
        "absolute Location: {location}"
    );
    assert!(resp.headers().contains_key("upload-expires"));
    tus_path(&resp)
}

/// The path (`/upload/tus/<id>`) of the upload a creation answer locates.
pub fn tus_path(created: &Response) -> String {
    let location = created.headers()["location"].to_str().unwrap();
    location[location.find("/upload/tus/").unwrap()..].to_owned()
}

/// A PATCH of `body` at `offset`.
pub async fn patch(app: &TestApp, path: &str, key: &str, offset: u64, body: Vec<u8>) -> Response {
    tus(app, Method::PATCH, path, key)
        .header("upload-offset", offset.to_string())
        .header("content-type", "application/offset+octet-stream")
        .body(body)
        .send()
        .await
        .unwrap()
}

/// The upload's offset as HEAD reports it.
pub async fn offset_of(app: &TestApp, path: &str, key: &str) -> u64 {
    let resp = tus(app, Method::HEAD, path, key).send().await.unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    assert_eq!(resp.headers()["cache-control"], "no-store");
    resp.headers()["upload-offset"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap()
}

/// A PATCH whose body sends `sent` and then stalls, as a client whose
/// connection is about to break; `length` is the Content-Length it claims.
pub fn stalled_patch(
    client: &reqwest::Client,
    url: String,
    key: &str,
    offset: u64,
    sent: Vec<u8>,
    length: u64,
) -> tokio::task::JoinHandle<Result<reqwest::Response, reqwest::Error>> {
    use futures_util::StreamExt as _;
    let chunks: Vec<Result<Vec<u8>, std::io::Error>> =
        sent.chunks(256 * 1024).map(|c| Ok(c.to_vec())).collect();
    let body = futures_util::stream::iter(chunks).chain(futures_util::stream::pending());
    let request = client
        .patch(url)
        .bearer_auth(key)
        .header("tus-resumable", "1.0.0")
        .header("upload-offset", offset.to_string())
        .header("content-type", "application/offset+octet-stream")
        .header("content-length", length.to_string())
        .body(reqwest::Body::wrap_stream(body));
    tokio::spawn(request.send())
}

/// Waits (up to 20 s) until HEAD reports `want`.
pub async fn wait_for_offset(app: &TestApp, path: &str, key: &str, want: u64) {
    let last = std::cell::Cell::new(0);
    let reached = poll(Duration::from_secs(20), || async {
        last.set(offset_of(app, path, key).await);
        (last.get() == want).then_some(())
    })
    .await;
    assert!(
        reached.is_some(),
        "the offset stayed at {}, not {want}",
        last.get()
    );
}

/// PATCHes until the upload's writer is no longer held by a dead request.
pub async fn patch_when_free(
    app: &TestApp,
    path: &str,
    key: &str,
    offset: u64,
    body: &[u8],
) -> Response {
    poll(Duration::from_secs(30), || async {
        let resp = patch(app, path, key, offset, body.to_vec()).await;
        (resp.status() != StatusCode::LOCKED).then_some(resp)
    })
    .await
    .expect("the upload stayed locked")
}
