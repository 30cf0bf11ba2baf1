//! A client of presigned uploads, as a user's client would use them: issue,
//! plain HTTP PUTs to the URLs, complete.

use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::helpers::app::TestApp;

/// `POST /upload/presigned` with `body`.
pub async fn presign(app: &TestApp, key: &str, body: Value) -> reqwest::Response {
    app.post("/upload/presigned")
        .bearer_auth(key)
        .json(&body)
        .send()
        .await
        .unwrap()
}

/// The answer's body of a presign request.
pub async fn issue(app: &TestApp, key: &str, body: Value) -> Value {
    presign(app, key, body).await.json().await.unwrap()
}

/// PUTs bytes to a URL with the headers the issue answered (as a client would).
pub async fn put(url: &str, headers: &Value, data: Vec<u8>) -> StatusCode {
    let mut req = reqwest::Client::new().put(url).body(data);
    for (name, value) in headers.as_object().into_iter().flatten() {
        if name != "content-length" {
            req = req.header(name.as_str(), value.as_str().unwrap());
        }
    }
    req.send().await.unwrap().status()
}

/// PUTs bytes to a URL as [`put`] does; answers the status and the error
/// code that came with it: S3's `<Code>`, or the `code` of intake's own
/// problem (the local folder's data route). `None` for a success.
pub async fn put_answer(url: &str, headers: &Value, data: Vec<u8>) -> (StatusCode, Option<String>) {
    let mut req = reqwest::Client::new().put(url).body(data);
    for (name, value) in headers.as_object().into_iter().flatten() {
        if name != "content-length" {
            req = req.header(name.as_str(), value.as_str().unwrap());
        }
    }
    let resp = req.send().await.unwrap();
    let status = resp.status();
    if status.is_success() {
        return (status, None);
    }
    let body = resp.text().await.unwrap();
    let code = match serde_json::from_str::<Value>(&body) {
        Ok(problem) => problem["code"].as_str().map(str::to_owned),
        Err(_) => body
            .split_once("<Code>")
            .and_then(|(_, rest)| rest.split_once("</Code>"))
            .map(|(code, _)| code.to_owned()),
    };
    (status, code)
}

/// PUTs each part of a multipart upload to its URL; returns the parts list
/// that completes it.
pub async fn put_parts(issued: &Value, data: &[u8]) -> Vec<Value> {
    let part = issued["part_size"].as_u64().unwrap() as usize;
    let mut etags = Vec::new();
    for (i, p) in issued["parts"].as_array().unwrap().iter().enumerate() {
        let chunk = data[i * part..((i + 1) * part).min(data.len())].to_vec();
        let resp = reqwest::Client::new()
            .put(p["url"].as_str().unwrap())
            .body(chunk)
            .send()
            .await
            .unwrap();
        assert!(
            resp.status().is_success(),
            "part {}: {}",
            i + 1,
            resp.status()
        );
        etags.push(json!({"part_number": i + 1, "etag": resp.headers()["etag"].to_str().unwrap()}));
    }
    etags
}

/// `DELETE /upload/presigned/{id}`.
pub async fn abort(app: &TestApp, key: &str, id: &str) -> reqwest::Response {
    app.request(reqwest::Method::DELETE, &format!("/upload/presigned/{id}"))
        .bearer_auth(key)
        .send()
        .await
        .unwrap()
}

/// `POST /upload/presigned/{id}/complete` with `body`.
pub async fn complete(app: &TestApp, key: &str, id: &str, body: Value) -> reqwest::Response {
    app.post(&format!("/upload/presigned/{id}/complete"))
        .bearer_auth(key)
        .json(&body)
        .send()
        .await
        .unwrap()
}
