//! Case 4: the presigned abort-and-PUT loop on S3. One session, its
//! storage quota set to `PRESIGN_QUOTA_MIB`, issues a presigned upload of
//! `PRESIGN_MIB`, aborts it (its reservation and slot come back), then
//! PUTs the bytes to the URL it was given, `PRESIGN_ROUNDS` times. Then
//! the bucket is listed with the S3 server's own client: what is stored
//! under the server's prefix beside the account's files counts against
//! nothing.

use std::collections::BTreeMap;

use bytes::Bytes;
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

use super::{Case, session::Session};
use crate::{
    admin::Admin,
    form::{Kind, MIB},
    s3::{self, env},
};

/// Objects and bytes under `prefix` in the bucket, and multipart uploads
/// under way there (`None` when the server does not list them).
async fn listed(prefix: &str) -> (usize, u64, Option<usize>) {
    let store = s3::client();
    let bucket = env("S3_BUCKET");
    let (mut objects, mut bytes) = (0, 0);
    let mut pages = store
        .list_objects_v2()
        .bucket(&bucket)
        .prefix(prefix)
        .into_paginator()
        .send();
    while let Some(page) = pages.next().await {
        for object in page.expect("list the bucket").contents() {
            objects += 1;
            bytes += object.size().unwrap_or(0) as u64;
        }
    }
    let uploads = store
        .list_multipart_uploads()
        .bucket(&bucket)
        .prefix(prefix)
        .send()
        .await
        .ok()
        .map(|listed| listed.uploads().len());
    (objects, bytes, uploads)
}

/// Issues a presigned upload (one PUT) of a `size`-byte video.
async fn issue(attacker: &Session, filename: &str, size: usize) -> Value {
    let issued = attacker
        .request(Method::POST, "/upload/presigned")
        .json(&json!({"filename": filename, "content_type": "video/mp4", "size": size}))
        .send()
        .await
        .expect("issue");
    assert_eq!(issued.status(), StatusCode::CREATED, "issue {filename}");
    issued.json().await.expect("the issued upload")
}

/// Aborts an issued upload.
async fn abort(attacker: &Session, issued: &Value) {
    let id = issued["upload_id"].as_str().expect("upload_id");
    let aborted = attacker
        .request(Method::DELETE, &format!("/upload/presigned/{id}"))
        .send()
        .await
        .expect("abort");
    assert!(aborted.status().is_success(), "abort {id}");
}

/// PUTs `data` to an issued upload's URL with its headers; storage's
/// status and error code, or what ended the request.
async fn put(storage: &reqwest::Client, issued: &Value, data: Bytes) -> String {
    let mut put = storage.put(issued["url"].as_str().expect("the upload URL"));
    for (name, value) in issued["headers"].as_object().expect("the upload's headers") {
        if name != "content-length" {
            put = put.header(name, value.as_str().expect("a header value"));
        }
    }
    // Storage that refuses the PUT may answer and close before the body is
    // sent whole: the client sees the connection end.
    match put.body(data).send().await {
        Ok(resp) => {
            let status = resp.status().as_u16();
            // An S3 error names itself in <Code>.
            let text = resp.text().await.unwrap_or_default();
            match text
                .split_once("<Code>")
                .and_then(|(_, rest)| rest.split_once("</Code>"))
            {
                Some((code, _)) => format!("{status} {code}"),
                None => status.to_string(),
            }
        }
        Err(_) => "connection closed by storage before the body was sent".to_owned(),
    }
}

pub async fn run(case: &Case<'_>) {
    let s = case.s;
    let (server, url) = case.intake(true, &[]).await;
    let (_, attacker) = case.attacker(&url).await;
    let quota = s.presign_quota_mib * MIB as u64;
    Admin::new(&url)
        .set_limits(&attacker.id, json!({"storage_bytes": quota}))
        .await;
    let size = s.presign_mib * MIB;
    println!(
        "presigned abort-and-PUT on S3: {} rounds of issue ({} MiB video), abort, \
         PUT to the issued URL, by one session whose storage quota is {} MiB",
        s.presign_rounds, s.presign_mib, s.presign_quota_mib
    );
    let data: Bytes = Kind::MP4.random(size);
    let storage = reqwest::Client::new();
    // The control: the same PUT while its upload lives, then the abort.
    let issued = issue(&attacker, "control.mp4", size).await;
    let control = put(&storage, &issued, data.clone()).await;
    abort(&attacker, &issued).await;
    let mut puts: BTreeMap<String, usize> = BTreeMap::new();
    for round in 0..s.presign_rounds {
        let issued = issue(&attacker, &format!("clip{round}.mp4"), size).await;
        abort(&attacker, &issued).await;
        *puts
            .entry(put(&storage, &issued, data.clone()).await)
            .or_default() += 1;
    }
    let prefix = format!("case{}/", case.number);
    let (objects, bytes, uploads) = listed(&prefix).await;
    let files: Value = attacker
        .request(Method::GET, "/files")
        .send()
        .await
        .expect("GET /files")
        .json()
        .await
        .expect("the files JSON");
    let file_bytes: u64 = files["files"]
        .as_array()
        .expect("files")
        .iter()
        .map(|f| f["size"].as_u64().unwrap_or(0))
        .sum();
    let usage = attacker.usage().await;
    let list: Vec<String> = puts.iter().map(|(st, n)| format!("{st} {n}")).collect();
    println!("  a PUT before the abort (the control): {control}");
    println!(
        "  PUTs after the abort, by storage's answer: {}",
        list.join("; ")
    );
    println!(
        "  bucket under the server's prefix: {objects} objects, {:.1} MiB; the account's files \
         {:.1} MiB; counted against nothing: {:.1} MiB ({:.1} times the quota)",
        bytes as f64 / MIB as f64,
        file_bytes as f64 / MIB as f64,
        bytes.saturating_sub(file_bytes) as f64 / MIB as f64,
        bytes.saturating_sub(file_bytes) as f64 / quota as f64
    );
    println!(
        "  multipart uploads under way there: {}",
        uploads.map_or("not listed by the server".to_owned(), |n| n.to_string())
    );
    println!(
        "  the account's storage usage: used {}, reserved {}",
        usage["usage"]["storage_bytes"]["used"], usage["usage"]["storage_bytes"]["reserved"]
    );
    server.stop();
}
