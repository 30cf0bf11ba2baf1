//! Resumable uploads (tus 1.0): the protocol, every limit, faults, and a
//! stock tus client (tuspy) resuming across instances.

use std::time::Duration;

use base64::{Engine as _, engine::general_purpose::STANDARD};
use reqwest::{Method, Response, StatusCode};
use serde_json::Value;
use sha2::{Digest, Sha256};
use uuid::Uuid;

use crate::helpers::{
    Backend, Proxy, S3_BUCKET, TestApp, assert_problem, fixtures, s3_client, s3_keys, spawn,
};

const MIB: usize = 1024 * 1024;
/// The smallest part S3 takes, so that tests cross part boundaries quickly.
const PART: usize = 5 * MIB;

/// An app whose parts are 5 MiB.
async fn app_on(backend: Backend) -> TestApp {
    spawn()
        .backend(backend)
        .var("UPLOAD_PART_BYTES", &PART.to_string())
        .start()
        .await
}

fn metadata(pairs: &[(&str, &str)]) -> String {
    pairs
        .iter()
        .map(|(k, v)| format!("{k} {}", STANDARD.encode(v)))
        .collect::<Vec<_>>()
        .join(",")
}

fn tus(app: &TestApp, method: Method, path: &str, key: &str) -> reqwest::RequestBuilder {
    app.request(method, path)
        .bearer_auth(key)
        .header("tus-resumable", "1.0.0")
}

/// POST /upload/tus with a length and metadata.
async fn create(app: &TestApp, key: &str, length: u64, meta: &[(&str, &str)]) -> Response {
    tus(app, Method::POST, "/upload/tus", key)
        .header("upload-length", length.to_string())
        .header("upload-metadata", metadata(meta))
        .send()
        .await
        .unwrap()
}

/// Creates an upload and returns its path (`/upload/tus/<id>`).
async fn created(app: &TestApp, key: &str, length: u64, meta: &[(&str, &str)]) -> String {
    let resp = create(app, key, length, meta).await;
    assert_eq!(
        resp.status(),
        StatusCode::CREATED,
        "{}",
        resp.text().await.unwrap()
    );
    let location = resp.headers()["location"].to_str().unwrap().to_owned();
    assert!(
        location.starts_with("http://"),
        "absolute Location: {location}"
    );
    assert!(resp.headers().contains_key("upload-expires"));
    location[location.find("/upload/tus/").unwrap()..].to_owned()
}

async fn patch(app: &TestApp, path: &str, key: &str, offset: u64, body: Vec<u8>) -> Response {
    tus(app, Method::PATCH, path, key)
        .header("upload-offset", offset.to_string())
        .header("content-type", "application/offset+octet-stream")
        .body(body)
        .send()
        .await
        .unwrap()
}

async fn offset_of(app: &TestApp, path: &str, key: &str) -> u64 {
    let resp = tus(app, Method::HEAD, path, key).send().await.unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    assert_eq!(resp.headers()["cache-control"], "no-store");
    resp.headers()["upload-offset"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap()
}

fn upload_id(path: &str) -> Uuid {
    path.rsplit('/').next().unwrap().parse().unwrap()
}

fn sha256_hex(data: &[u8]) -> String {
    hex::encode(Sha256::digest(data))
}

/// Objects a resumable upload keeps on the side while it runs (its tail,
/// the local folder's assembly files), whatever the backend.
async fn side_objects(app: &TestApp) -> Vec<String> {
    match app.backend {
        Backend::S3 => s3_keys(&format!("{}t/", app.prefix)).await,
        Backend::Fs => {
            let root = app.fs_root.as_ref().unwrap().path();
            let mut found = Vec::new();
            for dir in ["t", ".tus"] {
                for entry in walk(&root.join(dir)) {
                    found.push(entry);
                }
            }
            found
        }
    }
}

fn walk(dir: &std::path::Path) -> Vec<String> {
    let mut out = Vec::new();
    if let Ok(entries) = std::fs::read_dir(dir) {
        for e in entries.flatten() {
            let path = e.path();
            if path.is_dir() {
                out.extend(walk(&path));
            } else {
                out.push(path.display().to_string());
            }
        }
    }
    out
}

/// Whether storage still knows the upload's multipart upload (S3).
async fn multipart_alive(app: &TestApp, id: Uuid, account: Uuid) -> bool {
    let upload_id: Option<String> =
        sqlx::query_scalar("SELECT multipart_upload_id FROM tus_uploads WHERE id = $1")
            .bind(id)
            .fetch_one(&app.state.db)
            .await
            .unwrap();
    let Some(upload_id) = upload_id else {
        return false;
    };
    if app.backend == Backend::Fs {
        let root = app.fs_root.as_ref().unwrap().path();
        return root.join(".tus").join(upload_id).exists();
    }
    s3_client()
        .await
        .list_parts()
        .bucket(S3_BUCKET)
        .key(format!("{}u/{account}/{id}", app.prefix))
        .upload_id(upload_id)
        .send()
        .await
        .is_ok()
}

/// Waits (up to 10 s) until the account holds nothing and no side object
/// is left, then asserts it.
async fn assert_nothing_left(app: &TestApp, account: Uuid, files: i64) {
    app.assert_left_with(account, files).await;
    for _ in 0..100 {
        if side_objects(app).await.is_empty() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(
        side_objects(app).await,
        Vec::<String>::new(),
        "side objects"
    );
}

async fn usage(app: &TestApp, key: &str) -> Value {
    app.get("/usage")
        .bearer_auth(key)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap()
}

#[tokio::test]
async fn an_upload_in_uneven_patches_becomes_the_file_on_both_backends() {
    for backend in [Backend::S3, Backend::Fs] {
        let app = app_on(backend).await;
        let (account, key) = app.account_with_key("starter").await;
        // Parts, a tail carried over two PATCHes, and a short last part.
        let data = fixtures::png(2 * PART + 1234);
        let path = created(
            &app,
            &key,
            data.len() as u64,
            &[("filename", "../../big.png"), ("filetype", "image/png")],
        )
        .await;
        let usage_now = usage(&app, &key).await;
        assert_eq!(
            usage_now["usage"]["storage_bytes"]["reserved"],
            data.len() as u64
        );
        assert_eq!(usage_now["usage"]["concurrent_uploads"]["active"], 1);
        let cuts = [0, 3 * MIB, 4 * MIB, 8 * MIB, data.len()];
        let mut file_id = None;
        for pair in cuts.windows(2) {
            let resp = patch(
                &app,
                &path,
                &key,
                pair[0] as u64,
                data[pair[0]..pair[1]].to_vec(),
            )
            .await;
            assert_eq!(
                resp.status(),
                StatusCode::NO_CONTENT,
                "{:?}",
                resp.text().await
            );
            assert_eq!(
                resp.headers()["upload-offset"],
                pair[1].to_string().as_str()
            );
            if pair[1] < data.len() {
                assert!(resp.headers().contains_key("upload-expires"));
                assert_eq!(offset_of(&app, &path, &key).await, pair[1] as u64);
            } else {
                file_id = Some(
                    resp.headers()["intake-file-id"]
                        .to_str()
                        .unwrap()
                        .to_owned(),
                );
            }
        }
        let file_id = file_id.unwrap();
        assert_eq!(file_id, upload_id(&path).to_string());
        let file: Value = app
            .get(&format!("/files/{file_id}"))
            .bearer_auth(&key)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        assert_eq!(file["filename"], "big.png");
        assert_eq!(file["content_type"], "image/png");
        assert_eq!(file["size"], data.len());
        assert_eq!(file["sha256"], sha256_hex(&data));
        assert_eq!(app.download(&key, &file_id).await, data);
        // Complete: HEAD says so, and the file owns what the lease held.
        assert_eq!(offset_of(&app, &path, &key).await, data.len() as u64);
        assert_nothing_left(&app, account.id, 1).await;
        let after = usage(&app, &key).await;
        assert_eq!(after["usage"]["storage_bytes"]["used"], data.len() as u64);
        assert_eq!(after["usage"]["concurrent_uploads"]["active"], 0);
    }
}
