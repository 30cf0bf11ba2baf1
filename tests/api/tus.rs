//! Resumable uploads (tus 1.0): the protocol, every limit, faults, and a
//! stock tus client (tuspy) resuming across instances.

use std::time::Duration;

use base64::{Engine as _, engine::general_purpose::STANDARD};
use reqwest::{Method, StatusCode};
use serde_json::Value;
use sha2::{Digest, Sha256};
use uuid::Uuid;

use crate::helpers::{
    Backend, MIB, Relay, S3_BUCKET, TestApp, assert_problem,
    clients::tus::{
        PART, create, created, metadata, offset_of, patch, patch_when_free, stalled_patch, tus,
        tus_path, wait_for_offset,
    },
    env, eventually, fixtures,
    poll::poll,
    s3_client, s3_keys, spawn, within,
};

/// An app whose parts are 5 MiB.
async fn app_on(backend: Backend) -> TestApp {
    spawn()
        .backend(backend)
        .var("UPLOAD_PART_BYTES", &PART.to_string())
        .start()
        .await
}

fn upload_id(path: &str) -> Uuid {
    path.rsplit('/').next().unwrap().parse().unwrap()
}

pub(crate) fn sha256_hex(data: &[u8]) -> String {
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
    // Aborted: NoSuchUpload on AWS and MinIO, no parts left on s3s-fs.
    s3_client()
        .await
        .list_parts()
        .bucket(S3_BUCKET)
        .key(format!("{}u/{account}/{id}", app.prefix))
        .upload_id(upload_id)
        .send()
        .await
        .is_ok_and(|out| !out.parts().is_empty())
}

/// Waits (up to 10 s) until the account holds nothing and no side object
/// is left, then asserts it.
async fn assert_nothing_left(app: &TestApp, account: Uuid, files: i64) {
    app.assert_left_with(account, files).await;
    within(Duration::from_secs(10), || async {
        side_objects(app).await.is_empty()
    })
    .await;
    assert_eq!(
        side_objects(app).await,
        Vec::<String>::new(),
        "side objects"
    );
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
        let usage_now = app.usage(&key).await;
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
        let after = app.usage(&key).await;
        assert_eq!(after["usage"]["storage_bytes"]["used"], data.len() as u64);
        assert_eq!(after["usage"]["concurrent_uploads"]["active"], 0);
    }
}

/// The tuspy driver (tests/tuspy/upload.py) under the Python that has
/// tuspy (`TUS_PYTHON`, set by scripts/test.sh).
fn tuspy(args: &[&str]) -> tokio::process::Command {
    let python = std::env::var("TUS_PYTHON").unwrap_or_else(|_| {
        panic!("TUS_PYTHON is not set: run the suite with scripts/test.sh, which installs tuspy")
    });
    let mut cmd = tokio::process::Command::new(python);
    cmd.arg(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/tuspy/upload.py"
    ))
    .args(args)
    .stdin(std::process::Stdio::piped())
    .stdout(std::process::Stdio::piped())
    .kill_on_drop(true);
    cmd
}

#[tokio::test]
async fn a_stock_tus_client_killed_midway_resumes_through_another_instance() {
    use tokio::io::{AsyncBufReadExt, BufReader};

    let first = spawn().start().await;
    let second = first.second_instance().await;
    let (account, key) = first.account_with_key("starter").await;
    let data = fixtures::mp4(30 * MIB);
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("clip.mp4");
    std::fs::write(&file, &data).unwrap();
    let file = file.display().to_string();
    let chunk = (5 * MIB).to_string();

    // Two 5 MiB chunks through the first instance, then the client dies.
    let create_url = first.url("/upload/tus");
    let mut client = tuspy(&["start", &create_url, &key, &file, &chunk, "2"])
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(client.stdout.take().unwrap()).lines();
    let mut url = String::new();
    loop {
        let line = lines
            .next_line()
            .await
            .unwrap()
            .expect("the client exited early");
        if let Some(u) = line.strip_prefix("url ") {
            url = u.to_owned();
        }
        if line == format!("offset {}", 10 * MIB) {
            break;
        }
    }
    client.kill().await.unwrap();
    let path = url[url.find("/upload/tus/").unwrap()..].to_owned();
    assert_eq!(offset_of(&second, &path, &key).await, 10 * MIB as u64);

    // The same upload, resumed by a new client through the second instance.
    let resumed = tuspy(&["resume", &second.url(&path), &key, &file, &chunk])
        .output()
        .await
        .unwrap();
    let out = String::from_utf8_lossy(&resumed.stdout).into_owned();
    assert!(resumed.status.success(), "client failed: {out}");
    assert!(
        out.starts_with(&format!("resumed-at {}", 10 * MIB)),
        "{out}"
    );
    let file_id = out
        .lines()
        .find_map(|l| l.strip_prefix("file-id "))
        .expect("the last answer names the file")
        .to_owned();
    let stored = second.download(&key, &file_id).await;
    assert_eq!(sha256_hex(&stored), sha256_hex(&data));
    assert_eq!(stored.len(), data.len());
    let view: Value = second
        .get(&format!("/files/{file_id}"))
        .bearer_auth(&key)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(view["sha256"], sha256_hex(&data));
    assert_eq!(view["category"], "video");
    assert_nothing_left(&first, account.id, 1).await;
}

#[tokio::test]
async fn options_advertise_the_protocol_and_the_callers_largest_cap() {
    let app = spawn().start().await;
    let (_, key) = app.account_with_key("starter").await;
    let anonymous = app
        .request(Method::OPTIONS, "/upload/tus")
        .header("origin", "https://app.example")
        .header("access-control-request-method", "POST")
        .send()
        .await
        .unwrap();
    assert_eq!(anonymous.status(), StatusCode::NO_CONTENT);
    let h = anonymous.headers();
    assert_eq!(h["tus-resumable"], "1.0.0");
    assert_eq!(h["tus-version"], "1.0.0");
    let extensions = h["tus-extension"].to_str().unwrap();
    for ext in [
        "creation",
        "creation-with-upload",
        "termination",
        "expiration",
        "checksum",
    ] {
        assert!(extensions.split(',').any(|e| e == ext), "{extensions}");
    }
    assert_eq!(h["tus-checksum-algorithm"], "sha1,sha256");
    assert!(!h.contains_key("tus-max-size"), "no caller, no cap");
    // With no origin listed (the default), no CORS header at all
    // (tests/api/cors.rs holds what a listed origin gets).
    for name in [
        "access-control-allow-origin",
        "access-control-allow-methods",
        "access-control-expose-headers",
    ] {
        assert!(!h.contains_key(name), "{name}");
    }
    // Discovery at an upload's own URL is answered too.
    let preflight = app
        .request(Method::OPTIONS, &format!("/upload/tus/{}", Uuid::now_v7()))
        .send()
        .await
        .unwrap();
    assert_eq!(preflight.status(), StatusCode::NO_CONTENT);
    assert_eq!(preflight.headers()["tus-version"], "1.0.0");
    // A path that cannot be an upload's URL names nothing.
    let nothing = app
        .request(Method::OPTIONS, "/upload/tus/null,null")
        .send()
        .await
        .unwrap();
    let problem = assert_problem(nothing, StatusCode::NOT_FOUND, "not_found").await;
    assert!(problem["detail"].is_string(), "{problem}");
    // STARTER's largest cap is its video cap (2 GiB), not the streaming cap.
    let known = tus(&app, Method::OPTIONS, "/upload/tus", &key)
        .send()
        .await
        .unwrap();
    assert_eq!(
        known.headers()["tus-max-size"],
        (2u64 << 30).to_string().as_str()
    );
}

#[tokio::test]
async fn a_length_one_byte_over_the_cap_is_refused_at_creation() {
    let app = spawn().start().await;
    let (account, key) = app.account_with_key("starter").await;
    let image_cap: u64 = 50 << 20;
    let resp = create(
        &app,
        &key,
        image_cap + 1,
        &[("filename", "a.png"), ("filetype", "image/png")],
    )
    .await;
    let body = assert_problem(resp, StatusCode::PAYLOAD_TOO_LARGE, "file_too_large").await;
    assert_eq!(body["limit"], image_cap);
    // Named as an image without a type: the extension decides.
    let resp = create(&app, &key, image_cap + 1, &[("filename", "a.png")]).await;
    assert_problem(resp, StatusCode::PAYLOAD_TOO_LARGE, "file_too_large").await;
    // Nothing declared: the largest cap (the video cap), and no more.
    let video_cap: u64 = 2 << 30;
    let resp = create(&app, &key, video_cap + 1, &[]).await;
    assert_problem(resp, StatusCode::PAYLOAD_TOO_LARGE, "file_too_large").await;
    app.assert_left_with(account.id, 0).await;
    // At the cap exactly: created, and the streaming cap does not apply.
    created(
        &app,
        &key,
        image_cap,
        &[("filename", "a.png"), ("filetype", "image/png")],
    )
    .await;
    created(
        &app,
        &key,
        video_cap,
        &[("filename", "v.mp4"), ("filetype", "video/mp4")],
    )
    .await;
    let u = app.usage(&key).await;
    assert_eq!(
        u["usage"]["storage_bytes"]["reserved"],
        image_cap + video_cap
    );
    assert_eq!(u["usage"]["concurrent_uploads"]["active"], 2);
}

#[tokio::test]
async fn bytes_of_a_category_with_a_smaller_cap_end_the_upload() {
    // Named as nothing, 2 MiB is within the largest cap; the bytes are a
    // PNG, whose cap here is 1 MiB: refused once the type is known.
    let app = app_on(Backend::S3).await;
    let (account, key) = app.account_with_key("starter").await;
    app.patch_account(
        account.id,
        serde_json::json!({"custom_limits": {"max_image_bytes": 1048576}}),
    )
    .await;
    let path = created(&app, &key, 2 * MIB as u64, &[("filename", "blob")]).await;
    let resp = patch(&app, &path, &key, 0, fixtures::png(100 * 1024)).await;
    assert_problem(resp, StatusCode::PAYLOAD_TOO_LARGE, "file_too_large").await;
    let resp = tus(&app, Method::HEAD, &path, &key).send().await.unwrap();
    assert_eq!(resp.status(), StatusCode::GONE);
    assert_nothing_left(&app, account.id, 0).await;
}

#[tokio::test]
async fn the_whole_length_is_reserved_at_creation_within_the_quota() {
    let app = spawn().start().await;
    let (account, key) = app.account_with_key("starter").await;
    app.patch_account(
        account.id,
        serde_json::json!({"custom_limits": {"storage_bytes": 3 * MIB}}),
    )
    .await;
    let path = created(&app, &key, 2 * MIB as u64, &[("filename", "a.pdf")]).await;
    let resp = create(&app, &key, MIB as u64 + 1, &[("filename", "b.pdf")]).await;
    let body = assert_problem(
        resp,
        StatusCode::INSUFFICIENT_STORAGE,
        "storage_quota_exceeded",
    )
    .await;
    assert_eq!(body["limit"], 3 * MIB);
    assert_eq!(body["used"], 2 * MIB);
    // The refused creation left nothing; the other upload holds its bytes.
    let crate::helpers::Holdings {
        used,
        reserved,
        leases,
        ..
    } = app.holdings(account.id).await;
    assert_eq!((used, reserved, leases), (0, 2 * MIB as i64, 1));
    // Exactly what is left fits.
    created(&app, &key, MIB as u64, &[("filename", "c.pdf")]).await;
    let resp = tus(&app, Method::DELETE, &path, &key).send().await.unwrap();
    assert_eq!(resp.status(), StatusCode::NO_CONTENT);
    let crate::helpers::Holdings {
        reserved, leases, ..
    } = app.holdings(account.id).await;
    assert_eq!((reserved, leases), (MIB as i64, 1));
}

#[tokio::test]
async fn each_open_upload_holds_a_slot_until_it_ends() {
    let app = spawn().start().await;
    let (account, key) = app.account_with_key("starter").await;
    app.patch_account(
        account.id,
        serde_json::json!({"custom_limits": {"concurrent_uploads": 2}}),
    )
    .await;
    let a = created(&app, &key, 100, &[("filename", "a.txt")]).await;
    let _b = created(&app, &key, 100, &[("filename", "b.txt")]).await;
    let resp = create(&app, &key, 100, &[("filename", "c.txt")]).await;
    assert!(resp.headers().contains_key("retry-after"));
    let body = assert_problem(
        resp,
        StatusCode::TOO_MANY_REQUESTS,
        "concurrent_upload_limit",
    )
    .await;
    assert_eq!(body["limit"], 2);
    // Other paths share the same slots.
    let resp = app.upload(&key, "d.txt", "text/plain", b"hello").await;
    assert_problem(
        resp,
        StatusCode::TOO_MANY_REQUESTS,
        "concurrent_upload_limit",
    )
    .await;
    // Completing one gives its slot back.
    let resp = patch(&app, &a, &key, 0, vec![b'a'; 100]).await;
    assert_eq!(resp.status(), StatusCode::NO_CONTENT);
    assert!(resp.headers().contains_key("intake-file-id"));
    created(&app, &key, 100, &[("filename", "c.txt")]).await;
    let crate::helpers::Holdings {
        reserved,
        leases,
        files,
        ..
    } = app.holdings(account.id).await;
    assert_eq!((reserved, leases, files), (200, 2, 1));
}

#[tokio::test]
async fn a_png_declared_but_an_executable_sent_is_refused_and_nothing_is_left() {
    for backend in [Backend::S3, Backend::Fs] {
        let app = app_on(backend).await;
        let (account, key) = app.account_with_key("starter").await;
        let exe = fixtures::elf(6 * MIB);
        let path = created(
            &app,
            &key,
            exe.len() as u64,
            &[("filename", "cat.png"), ("filetype", "image/png")],
        )
        .await;
        // The first 64 KiB arrive over two PATCHes: the tail carries them.
        let resp = patch(&app, &path, &key, 0, exe[..40_000].to_vec()).await;
        assert_eq!(resp.status(), StatusCode::NO_CONTENT);
        assert_eq!(side_objects(&app).await.len(), 1, "the tail object");
        let resp = patch(&app, &path, &key, 40_000, exe[40_000..].to_vec()).await;
        assert_eq!(resp.status(), StatusCode::UNSUPPORTED_MEDIA_TYPE);
        let body: Value = resp.json().await.unwrap();
        assert!(
            ["unsupported_media_type", "type_mismatch"].contains(&body["code"].as_str().unwrap()),
            "{body}"
        );
        let resp = tus(&app, Method::HEAD, &path, &key).send().await.unwrap();
        assert_eq!(resp.status(), StatusCode::GONE);
        let resp = patch(&app, &path, &key, 40_000, exe[40_000..].to_vec()).await;
        assert_problem(resp, StatusCode::GONE, "gone").await;
        assert_nothing_left(&app, account.id, 0).await;
    }
}

#[tokio::test]
async fn every_tus_answer_carries_the_rate_limit_headers() {
    let app = spawn().start().await;
    let (_, key) = app.account_with_key("professional").await;
    let path = created(&app, &key, 10, &[("filename", "a.txt")]).await;
    let unknown = format!("/upload/tus/{}", Uuid::now_v7());
    let answers = vec![
        tus(&app, Method::OPTIONS, "/upload/tus", &key)
            .send()
            .await
            .unwrap(),
        create(&app, &key, 10, &[("filename", "b.txt")]).await,
        tus(&app, Method::HEAD, &path, &key).send().await.unwrap(),
        patch(&app, &path, &key, 3, b"xx".to_vec()).await,
        patch(&app, &path, &key, 0, b"0123456789".to_vec()).await,
        tus(&app, Method::HEAD, &unknown, &key)
            .send()
            .await
            .unwrap(),
        app.request(Method::HEAD, &path)
            .bearer_auth(&key)
            .send()
            .await
            .unwrap(),
        tus(&app, Method::DELETE, &unknown, &key)
            .send()
            .await
            .unwrap(),
    ];
    let statuses: Vec<u16> = answers.iter().map(|r| r.status().as_u16()).collect();
    assert_eq!(statuses, [204, 201, 200, 409, 204, 404, 412, 404]);
    let mut remaining = Vec::new();
    for resp in &answers {
        let h = resp.headers();
        assert_eq!(h["x-ratelimit-limit"], "100", "{:?}", resp.status());
        assert!(h.contains_key("x-ratelimit-reset") && h.contains_key("ratelimit-policy"));
        assert_eq!(h["tus-resumable"], "1.0.0");
        remaining.push(
            h["x-ratelimit-remaining"]
                .to_str()
                .unwrap()
                .parse::<i64>()
                .unwrap(),
        );
    }
    // Each of them counted as one request.
    assert!(remaining.windows(2).all(|w| w[1] < w[0]), "{remaining:?}");
}

#[tokio::test]
async fn a_checksum_mismatch_keeps_nothing_of_the_body() {
    for backend in [Backend::S3, Backend::Fs] {
        let app = app_on(backend).await;
        let (account, key) = app.account_with_key("starter").await;
        let data = fixtures::pdf(PART + 3 * MIB);
        let path = created(&app, &key, data.len() as u64, &[("filename", "a.pdf")]).await;
        let first = &data[..2 * MIB];
        let ok = tus(&app, Method::PATCH, &path, &key)
            .header("upload-offset", "0")
            .header("content-type", "application/offset+octet-stream")
            .header(
                "upload-checksum",
                format!("sha256 {}", STANDARD.encode(Sha256::digest(first))),
            )
            .body(first.to_vec())
            .send()
            .await
            .unwrap();
        assert_eq!(ok.status(), StatusCode::NO_CONTENT);
        // A body that crosses a part boundary, with the wrong checksum.
        let rest = &data[2 * MIB..];
        let bad = tus(&app, Method::PATCH, &path, &key)
            .header("upload-offset", (2 * MIB).to_string())
            .header("content-type", "application/offset+octet-stream")
            .header(
                "upload-checksum",
                format!("sha1 {}", STANDARD.encode(sha1_of(b"other bytes"))),
            )
            .body(rest.to_vec())
            .send()
            .await
            .unwrap();
        assert!(!bad.headers().contains_key("upload-offset"));
        let body =
            assert_problem(bad, StatusCode::from_u16(460).unwrap(), "checksum_mismatch").await;
        assert_eq!(body["title"], "Checksum Mismatch");
        assert_eq!(offset_of(&app, &path, &key).await, 2 * MIB as u64);
        // An unknown algorithm is 400; the right checksum completes the file.
        let unknown = tus(&app, Method::PATCH, &path, &key)
            .header("upload-offset", (2 * MIB).to_string())
            .header("content-type", "application/offset+octet-stream")
            .header("upload-checksum", "md5 AAAAAAAAAAAAAAAAAAAAAA==")
            .body(rest.to_vec())
            .send()
            .await
            .unwrap();
        assert_problem(unknown, StatusCode::BAD_REQUEST, "invalid_request").await;
        let good = tus(&app, Method::PATCH, &path, &key)
            .header("upload-offset", (2 * MIB).to_string())
            .header("content-type", "application/offset+octet-stream")
            .header(
                "upload-checksum",
                format!("sha1 {}", STANDARD.encode(sha1_of(rest))),
            )
            .body(rest.to_vec())
            .send()
            .await
            .unwrap();
        assert_eq!(good.status(), StatusCode::NO_CONTENT);
        let file_id = good.headers()["intake-file-id"]
            .to_str()
            .unwrap()
            .to_owned();
        assert_eq!(app.download(&key, &file_id).await, data);
        assert_nothing_left(&app, account.id, 1).await;
    }
}

fn sha1_of(data: &[u8]) -> Vec<u8> {
    use sha1::Digest as _;
    sha1::Sha1::digest(data).to_vec()
}

#[tokio::test]
async fn a_connection_cut_mid_patch_keeps_every_byte_that_arrived() {
    for backend in [Backend::S3, Backend::Fs] {
        let app = app_on(backend).await;
        let (account, key) = app.polling_account().await;
        let data = fixtures::mp4(3 * PART);
        let path = created(&app, &key, data.len() as u64, &[("filename", "v.mp4")]).await;
        let proxy = Relay::to(&app.addr).await;
        // A whole part and some more, then the connection breaks.
        let sent = PART + 123_457;
        let request = stalled_patch(
            &app.client,
            format!("{}{path}", proxy.addr),
            &key,
            0,
            data[..sent].to_vec(),
            data.len() as u64,
        );
        wait_for_offset(&app, &path, &key, PART as u64).await;
        proxy.cut();
        let _ = request.await;
        // What arrived after the part is the tail now.
        wait_for_offset(&app, &path, &key, sent as u64).await;
        resume_to_the_whole_file(&app, account.id, &path, &key, sent, &data).await;
    }
}

/// Sends the rest of `data` from `from` once the upload is free, and checks
/// that it became the file, byte for byte, with nothing else left.
async fn resume_to_the_whole_file(
    app: &TestApp,
    account: Uuid,
    path: &str,
    key: &str,
    from: usize,
    data: &[u8],
) {
    let resp = patch_when_free(app, path, key, from as u64, &data[from..]).await;
    if resp.status() != StatusCode::NO_CONTENT {
        panic!("resuming: {} {:?}", resp.status(), resp.text().await);
    }
    let file_id = resp.headers()["intake-file-id"]
        .to_str()
        .unwrap()
        .to_owned();
    assert_eq!(app.download(key, &file_id).await, data);
    assert_nothing_left(app, account, 1).await;
}

/// The last part of a file with parts before it is sent while its bytes
/// arrive, like any other: a break in it keeps what arrived as the tail.
#[tokio::test]
async fn a_connection_cut_in_the_last_part_keeps_what_arrived() {
    for backend in [Backend::S3, Backend::Fs] {
        let app = app_on(backend).await;
        let (account, key) = app.polling_account().await;
        let data = fixtures::mp4(2 * PART + PART / 2);
        let path = created(&app, &key, data.len() as u64, &[("filename", "v.mp4")]).await;
        let resp = patch(&app, &path, &key, 0, data[..2 * PART].to_vec()).await;
        assert_eq!(resp.status(), StatusCode::NO_CONTENT);
        let proxy = Relay::to(&app.addr).await;
        let sent = 2 * PART + 300_001;
        let request = stalled_patch(
            &app.client,
            format!("{}{path}", proxy.addr),
            &key,
            (2 * PART) as u64,
            data[2 * PART..sent].to_vec(),
            (data.len() - 2 * PART) as u64,
        );
        // Nothing is recorded while the part is in flight; the cut makes
        // what arrived the tail. The proxy's count includes the request's
        // headers, so at the cut up to their length of the body may not
        // have been passed on yet.
        let body = (sent - 2 * PART) as u64;
        eventually("the proxy passes the body on", || async {
            proxy.forwarded() >= body
        })
        .await;
        proxy.cut();
        let _ = request.await;
        let kept = std::cell::Cell::new(0);
        eventually("the cut request keeps what arrived", || async {
            kept.set(offset_of(&app, &path, &key).await);
            kept.get() > (2 * PART) as u64
        })
        .await;
        let kept = kept.get() as usize;
        assert!(
            kept + 1024 > sent && kept <= sent,
            "kept {kept} of the {sent} bytes sent"
        );
        resume_to_the_whole_file(&app, account.id, &path, &key, kept, &data).await;
    }
}

#[tokio::test]
async fn an_instance_killed_mid_patch_leaves_the_stored_parts_for_another() {
    let app = spawn()
        .var("UPLOAD_PART_BYTES", &PART.to_string())
        .var("UPLOAD_LEASE_TTL_SECS", "3")
        .start()
        .await;
    let mut doomed = spawn().sharing(&app).start_killable();
    let (account, key) = app.polling_account().await;
    let data = fixtures::mp4(2 * PART + 999);
    let path = created(&app, &key, data.len() as u64, &[("filename", "v.mp4")]).await;
    let request = stalled_patch(
        &app.client,
        doomed.url(&path),
        &key,
        0,
        data[..PART + 4096].to_vec(),
        data.len() as u64,
    );
    wait_for_offset(&app, &path, &key, PART as u64).await;
    doomed.kill();
    let _ = request.await;
    // The part it stored counts; the bytes it held in memory do not.
    assert_eq!(offset_of(&app, &path, &key).await, PART as u64);
    let resp = patch_when_free(&app, &path, &key, PART as u64, &data[PART..]).await;
    assert_eq!(resp.status(), StatusCode::NO_CONTENT);
    let file_id = resp.headers()["intake-file-id"]
        .to_str()
        .unwrap()
        .to_owned();
    let stored = app.download(&key, &file_id).await;
    assert_eq!(sha256_hex(&stored), sha256_hex(&data));
    assert_nothing_left(&app, account.id, 1).await;
}

#[tokio::test]
async fn an_expired_upload_is_reclaimed_whole_by_the_reaper() {
    for backend in [Backend::S3, Backend::Fs] {
        let app = spawn()
            .backend(backend)
            .var("UPLOAD_PART_BYTES", &PART.to_string())
            .var("TUS_EXPIRY_SECS", "2")
            .start()
            .await;
        let (account, key) = app.polling_account().await;
        let data = fixtures::png(2 * PART);
        let path = created(&app, &key, data.len() as u64, &[("filename", "a.png")]).await;
        let resp = patch(&app, &path, &key, 0, data[..PART + 1000].to_vec()).await;
        assert_eq!(resp.status(), StatusCode::NO_CONTENT);
        let id = upload_id(&path);
        assert!(
            multipart_alive(&app, id, account.id).await,
            "a part is stored"
        );
        assert!(!side_objects(&app).await.is_empty(), "the tail is stored");
        // Past its expiry: gone for the client at once…
        let status = poll(Duration::from_secs(10), || async {
            let status = tus(&app, Method::HEAD, &path, &key)
                .send()
                .await
                .unwrap()
                .status();
            (status == StatusCode::GONE).then_some(status)
        })
        .await;
        assert_eq!(status, Some(StatusCode::GONE));
        let resp = patch(
            &app,
            &path,
            &key,
            (PART + 1000) as u64,
            data[PART + 1000..].to_vec(),
        )
        .await;
        assert_problem(resp, StatusCode::GONE, "gone").await;
        // …and the reaper gives back everything it held.
        within(Duration::from_secs(10), || async {
            intake::reap(&app.state).await.unwrap();
            app.holdings(account.id).await.leases == 0
        })
        .await;
        let u = app.usage(&key).await;
        assert_eq!(u["usage"]["storage_bytes"]["used"], 0);
        assert_eq!(u["usage"]["storage_bytes"]["reserved"], 0);
        assert_eq!(u["usage"]["concurrent_uploads"]["active"], 0);
        assert_nothing_left(&app, account.id, 0).await;
        assert!(
            !multipart_alive(&app, id, account.id).await,
            "the multipart upload is aborted"
        );
    }
}

#[tokio::test]
async fn termination_gives_back_reservation_slot_parts_and_objects() {
    for backend in [Backend::S3, Backend::Fs] {
        let app = app_on(backend).await;
        let (account, key) = app.polling_account().await;
        let data = fixtures::jpeg(2 * PART);
        let path = created(&app, &key, data.len() as u64, &[("filename", "a.jpg")]).await;
        let resp = patch(&app, &path, &key, 0, data[..PART + 77].to_vec()).await;
        assert_eq!(resp.status(), StatusCode::NO_CONTENT);
        let id = upload_id(&path);
        assert!(multipart_alive(&app, id, account.id).await);
        let resp = tus(&app, Method::DELETE, &path, &key).send().await.unwrap();
        assert_eq!(resp.status(), StatusCode::NO_CONTENT);
        assert_eq!(resp.headers()["tus-resumable"], "1.0.0");
        assert_nothing_left(&app, account.id, 0).await;
        assert!(!multipart_alive(&app, id, account.id).await);
        let resp = tus(&app, Method::HEAD, &path, &key).send().await.unwrap();
        assert_eq!(resp.status(), StatusCode::GONE);
        let resp = patch(&app, &path, &key, (PART + 77) as u64, vec![0; 10]).await;
        assert_problem(resp, StatusCode::GONE, "gone").await;
        let resp = tus(&app, Method::DELETE, &path, &key).send().await.unwrap();
        assert_problem(resp, StatusCode::GONE, "gone").await;
    }
}

#[tokio::test]
async fn one_request_writes_an_upload_at_a_time() {
    let app = app_on(Backend::S3).await;
    let (account, key) = app.polling_account().await;
    let data = fixtures::pdf(MIB);
    let path = created(&app, &key, data.len() as u64, &[("filename", "a.pdf")]).await;
    let first = stalled_patch(
        &app.client,
        app.url(&path),
        &key,
        0,
        data[..1000].to_vec(),
        data.len() as u64,
    );
    // Held by the stalled request once it is in: others wait for it.
    let id = upload_id(&path);
    within(Duration::from_secs(5), || async {
        sqlx::query_scalar("SELECT patch_token IS NOT NULL FROM tus_uploads WHERE id = $1")
            .bind(id)
            .fetch_one(&app.state.db)
            .await
            .unwrap()
    })
    .await;
    let resp = patch(&app, &path, &key, 0, data[..10].to_vec()).await;
    assert_problem(resp, StatusCode::LOCKED, "upload_locked").await;
    let resp = tus(&app, Method::DELETE, &path, &key).send().await.unwrap();
    assert_problem(resp, StatusCode::LOCKED, "upload_locked").await;
    // The stalled client gives up: what it sent is kept, the upload is free.
    first.abort();
    wait_for_offset(&app, &path, &key, 1000).await;
    let resp = patch_when_free(&app, &path, &key, 1000, &data[1000..]).await;
    assert_eq!(resp.status(), StatusCode::NO_CONTENT);
    assert!(resp.headers().contains_key("intake-file-id"));
    app.assert_left_with(account.id, 1).await;
}

#[tokio::test]
async fn creation_with_upload_stores_the_first_bytes_or_the_whole_file() {
    let app = app_on(Backend::S3).await;
    let (account, key) = app.account_with_key("starter").await;
    let data = fixtures::png(300_000);
    let whole = tus(&app, Method::POST, "/upload/tus", &key)
        .header("upload-length", data.len().to_string())
        .header("upload-metadata", metadata(&[("filename", "small.png")]))
        .header("content-type", "application/offset+octet-stream")
        .body(data.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(whole.status(), StatusCode::CREATED);
    assert_eq!(
        whole.headers()["upload-offset"],
        data.len().to_string().as_str()
    );
    let file_id = whole.headers()["intake-file-id"]
        .to_str()
        .unwrap()
        .to_owned();
    assert_eq!(app.download(&key, &file_id).await, data);
    let part = tus(&app, Method::POST, "/upload/tus", &key)
        .header("upload-length", data.len().to_string())
        .header("content-type", "application/offset+octet-stream")
        .body(data[..100_000].to_vec())
        .send()
        .await
        .unwrap();
    assert_eq!(part.status(), StatusCode::CREATED);
    assert_eq!(part.headers()["upload-offset"], "100000");
    let path = tus_path(&part);
    let resp = patch(&app, &path, &key, 100_000, data[100_000..].to_vec()).await;
    assert_eq!(resp.status(), StatusCode::NO_CONTENT);
    assert_nothing_left(&app, account.id, 2).await;
}

#[tokio::test]
async fn a_text_document_stays_checked_across_parts_and_requests() {
    let app = app_on(Backend::Fs).await;
    let (account, key) = app.account_with_key("starter").await;
    // "Zürich" on every row: parts and requests cut inside characters.
    let csv = fixtures::csv(330_000);
    assert!(csv.len() > PART + 100);
    let path = created(&app, &key, csv.len() as u64, &[("filename", "cities.csv")]).await;
    let cuts = [0, 40_001, PART - 1, PART + 2, csv.len()];
    let mut last = None;
    for pair in cuts.windows(2) {
        last = Some(
            patch(
                &app,
                &path,
                &key,
                pair[0] as u64,
                csv[pair[0]..pair[1]].to_vec(),
            )
            .await,
        );
        assert_eq!(last.as_ref().unwrap().status(), StatusCode::NO_CONTENT);
    }
    let file_id = last.unwrap().headers()["intake-file-id"]
        .to_str()
        .unwrap()
        .to_owned();
    assert_eq!(app.download(&key, &file_id).await, csv);
    // Invalid UTF-8 past the first 64 KiB is found where it lands.
    let mut bad = fixtures::csv(330_000);
    bad[PART + 10] = 0xff;
    let path = created(&app, &key, bad.len() as u64, &[("filename", "bad.csv")]).await;
    let resp = patch(&app, &path, &key, 0, bad.clone()).await;
    assert_problem(
        resp,
        StatusCode::UNSUPPORTED_MEDIA_TYPE,
        "unsupported_media_type",
    )
    .await;
    assert_nothing_left(&app, account.id, 1).await;
}

/// A creation request intake refuses: its headers, and the problem.
struct RefusedCreation {
    what: &'static str,
    headers: Vec<(&'static str, String)>,
    status: StatusCode,
    code: &'static str,
}

/// Every way a creation is refused before anything is held.
fn refused_creations() -> Vec<RefusedCreation> {
    let bad = |what, headers: &[(&'static str, &str)]| RefusedCreation {
        what,
        headers: headers.iter().map(|(h, v)| (*h, (*v).to_owned())).collect(),
        status: StatusCode::BAD_REQUEST,
        code: "invalid_request",
    };
    // No or another protocol version: 412 with the version intake speaks.
    let version = |what, headers: &[(&'static str, &str)]| RefusedCreation {
        status: StatusCode::PRECONDITION_FAILED,
        code: "tus_version_unsupported",
        ..bad(what, headers)
    };
    const V: (&str, &str) = ("tus-resumable", "1.0.0");
    vec![
        version("no version", &[("upload-length", "10")]),
        version(
            "another version",
            &[("upload-length", "10"), ("tus-resumable", "0.2.2")],
        ),
        // Lengths: missing, negative, not a number, absurd, zero, deferred.
        bad("no length", &[V]),
        bad("a negative length", &[V, ("upload-length", "-1")]),
        bad("a length not a number", &[V, ("upload-length", "ten")]),
        bad(
            "an absurd length",
            &[V, ("upload-length", "99999999999999999999999")],
        ),
        bad("a zero length", &[V, ("upload-length", "0")]),
        bad("a deferred length", &[V, ("upload-defer-length", "1")]),
        // Metadata: not base64, a key twice, a name that is not UTF-8.
        bad(
            "metadata not base64",
            &[
                V,
                ("upload-length", "10"),
                ("upload-metadata", "filename not*base64"),
            ],
        ),
        bad(
            "a metadata key twice",
            &[
                V,
                ("upload-length", "10"),
                ("upload-metadata", "filename YQ==,filename Yg=="),
            ],
        ),
        bad(
            "a file name not UTF-8",
            &[
                V,
                ("upload-length", "10"),
                ("upload-metadata", "filename /w=="),
            ],
        ),
        // A declared type intake does not take is refused before anything
        // is held.
        RefusedCreation {
            status: StatusCode::UNSUPPORTED_MEDIA_TYPE,
            code: "unsupported_media_type",
            ..bad(
                "a type intake does not take",
                &[
                    V,
                    ("upload-length", "10"),
                    (
                        "upload-metadata",
                        &metadata(&[
                            ("filename", "a.exe"),
                            ("filetype", "application/x-msdownload"),
                        ]),
                    ),
                ],
            )
        },
    ]
}

/// A PATCH intake refuses on an upload of 10 bytes at offset 0.
struct RefusedPatch {
    what: &'static str,
    offset: Option<&'static str>,
    content_type: &'static str,
    body: &'static str,
    status: StatusCode,
    code: &'static str,
}

const OCTETS: &str = "application/offset+octet-stream";

/// The wrong offset, the wrong body type, a body past the length, no offset.
const REFUSED_PATCHES: &[RefusedPatch] = &[
    RefusedPatch {
        what: "the wrong offset",
        offset: Some("5"),
        content_type: OCTETS,
        body: "hello",
        status: StatusCode::CONFLICT,
        code: "conflict",
    },
    RefusedPatch {
        what: "the wrong body type",
        offset: Some("0"),
        content_type: "application/octet-stream",
        body: "hello",
        status: StatusCode::UNSUPPORTED_MEDIA_TYPE,
        code: "unsupported_media_type",
    },
    RefusedPatch {
        what: "a body past the length",
        offset: Some("0"),
        content_type: OCTETS,
        body: "more than ten bytes",
        status: StatusCode::BAD_REQUEST,
        code: "invalid_request",
    },
    RefusedPatch {
        what: "no offset",
        offset: None,
        content_type: OCTETS,
        body: "hello",
        status: StatusCode::BAD_REQUEST,
        code: "invalid_request",
    },
];

#[tokio::test]
async fn malformed_tus_requests_are_refused_and_keep_nothing() {
    let app = spawn().start().await;
    let (account, key) = app.account_with_key("starter").await;
    let (_, other_key) = app.account_with_key("starter").await;
    for case in refused_creations() {
        let mut req = app.post("/upload/tus").bearer_auth(&key);
        for (name, value) in &case.headers {
            req = req.header(*name, value);
        }
        let resp = req.send().await.unwrap();
        assert_eq!(resp.status(), case.status, "{}", case.what);
        if case.status == StatusCode::PRECONDITION_FAILED {
            assert_eq!(resp.headers()["tus-version"], "1.0.0", "{}", case.what);
        }
        assert_problem(resp, case.status, case.code).await;
    }
    app.assert_left_with(account.id, 0).await;

    let path = created(&app, &key, 10, &[("filename", "a.txt")]).await;
    for case in REFUSED_PATCHES {
        let mut req = tus(&app, Method::PATCH, &path, &key)
            .header("content-type", case.content_type)
            .body(case.body);
        if let Some(offset) = case.offset {
            req = req.header("upload-offset", offset);
        }
        let resp = req.send().await.unwrap();
        assert_eq!(resp.status(), case.status, "{}", case.what);
        assert_problem(resp, case.status, case.code).await;
    }
    assert_eq!(offset_of(&app, &path, &key).await, 0);
    // Another account's upload, and an unknown one, are not found.
    let unknown = format!("/upload/tus/{}", Uuid::now_v7());
    for p in [path.as_str(), unknown.as_str()] {
        let who = if p == path { &other_key } else { &key };
        let resp = tus(&app, Method::HEAD, p, who).send().await.unwrap();
        assert_eq!(resp.status(), StatusCode::NOT_FOUND);
        let resp = patch(&app, p, who, 0, b"hello".to_vec()).await;
        assert_problem(resp, StatusCode::NOT_FOUND, "not_found").await;
        let resp = tus(&app, Method::DELETE, p, who).send().await.unwrap();
        assert_problem(resp, StatusCode::NOT_FOUND, "not_found").await;
    }
    // The upload is untouched by all of that.
    let resp = patch(&app, &path, &key, 0, b"0123456789".to_vec()).await;
    assert_eq!(resp.status(), StatusCode::NO_CONTENT);
    app.assert_left_with(account.id, 1).await;
}

#[tokio::test]
async fn a_patch_of_exactly_one_part_is_stored_as_that_part_without_a_tail() {
    let app = app_on(Backend::S3).await;
    let (account, key) = app.account_with_key("starter").await;
    let data = fixtures::mp4(2 * PART + 10);
    let path = created(&app, &key, data.len() as u64, &[("filename", "v.mp4")]).await;
    for n in 0..2 {
        let resp = patch(
            &app,
            &path,
            &key,
            (n * PART) as u64,
            data[n * PART..(n + 1) * PART].to_vec(),
        )
        .await;
        assert_eq!(resp.status(), StatusCode::NO_CONTENT);
        assert_eq!(
            side_objects(&app).await,
            Vec::<String>::new(),
            "no tail written"
        );
    }
    let parts: i32 = sqlx::query_scalar("SELECT parts FROM tus_uploads WHERE id = $1")
        .bind(upload_id(&path))
        .fetch_one(&app.state.db)
        .await
        .unwrap();
    assert_eq!(parts, 2);
    let resp = patch(
        &app,
        &path,
        &key,
        (2 * PART) as u64,
        data[2 * PART..].to_vec(),
    )
    .await;
    let file_id = resp.headers()["intake-file-id"]
        .to_str()
        .unwrap()
        .to_owned();
    assert_eq!(app.download(&key, &file_id).await, data);
    assert_nothing_left(&app, account.id, 1).await;
}

/// Sends `data[from..to]` in PATCHes of `size` bytes, each answered 204
/// with the offset it reached.
async fn patch_in_pieces(
    app: &TestApp,
    path: &str,
    key: &str,
    data: &[u8],
    (from, to): (usize, usize),
    size: usize,
) {
    let mut at = from;
    while at < to {
        let end = (at + size).min(to);
        let resp = patch(app, path, key, at as u64, data[at..end].to_vec()).await;
        assert_eq!(resp.status(), StatusCode::NO_CONTENT, "PATCH at {at}");
        assert_eq!(resp.headers()["upload-offset"], end.to_string().as_str());
        at = end;
    }
}

/// A flood of small PATCHes costs storage about their own bytes: none
/// reads the unfinished tail back and writes it again whole, the tail
/// stays a handful of objects, and the PATCH that fills the part reads
/// them back once. Counted as the bytes that pass between intake and S3.
#[tokio::test]
async fn small_patches_cost_storage_about_their_own_bytes() {
    const SMALL: usize = 1024;
    const COUNT: usize = 200;
    let proxy = Relay::to(&env("TEST_S3_ENDPOINT")).await;
    let app = spawn()
        .backend(Backend::S3)
        .var("UPLOAD_PART_BYTES", &PART.to_string())
        .var("S3_ENDPOINT", &proxy.addr)
        .start()
        .await;
    let (account, key) = app.polling_account().await;
    let data = fixtures::mp4(2 * PART + 300_000);
    let path = created(&app, &key, data.len() as u64, &[("filename", "v.mp4")]).await;

    let before = proxy.carried();
    patch_in_pieces(&app, &path, &key, &data, (0, COUNT * SMALL), SMALL).await;
    let carried = proxy.carried() - before;
    let sent = (COUNT * SMALL) as u64;
    // The whole tail read back and written again by each PATCH is about
    // COUNT² KiB (39 MiB); its own bytes, merged into larger segments a
    // few times over, and each request's headers are a small multiple of
    // what the client sent.
    assert!(
        carried < 16 * sent + (COUNT as u64) * 8 * 1024,
        "{COUNT} PATCHes of {SMALL} bytes moved {carried} bytes to and from storage"
    );
    let segments = side_objects(&app).await;
    assert!(
        !segments.is_empty() && segments.len() <= 9,
        "a tail of {COUNT} PATCHes is a few segments: {segments:?}"
    );
    assert_eq!(offset_of(&app, &path, &key).await, sent);

    // The rest of the part and more: the part goes to storage once, with
    // the tail read back; what follows it is the new tail.
    let to = PART + 100_000;
    let before = proxy.carried();
    let resp = patch(&app, &path, &key, sent, data[COUNT * SMALL..to].to_vec()).await;
    assert_eq!(
        resp.status(),
        StatusCode::NO_CONTENT,
        "{:?}",
        resp.text().await
    );
    let carried = proxy.carried() - before;
    let body = (to - COUNT * SMALL) as u64;
    assert!(
        carried < body + 2 * sent + 256 * 1024,
        "a PATCH of {body} bytes over a tail of {sent} moved {carried} bytes"
    );
    assert_eq!(side_objects(&app).await.len(), 1, "the new tail");

    // The last byte: the file is whole, and no segment is left.
    let resp = patch(&app, &path, &key, to as u64, data[to..].to_vec()).await;
    assert_eq!(
        resp.status(),
        StatusCode::NO_CONTENT,
        "{:?}",
        resp.text().await
    );
    let file_id = resp.headers()["intake-file-id"]
        .to_str()
        .unwrap()
        .to_owned();
    let file: Value = app
        .get(&format!("/files/{file_id}"))
        .bearer_auth(&key)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(file["size"], data.len());
    assert_eq!(file["sha256"], sha256_hex(&data));
    assert_eq!(app.download(&key, &file_id).await, data);
    assert_nothing_left(&app, account.id, 1).await;
}

/// A checksummed PATCH smaller than the tail that completes a part reads
/// the tail back only once its body matched: a wrong checksum costs
/// storage nothing of the tail, the right one stores the part.
#[tokio::test]
async fn a_small_checksummed_patch_reads_the_tail_back_only_once_it_matched() {
    let proxy = Relay::to(&env("TEST_S3_ENDPOINT")).await;
    let app = spawn()
        .backend(Backend::S3)
        .var("UPLOAD_PART_BYTES", &PART.to_string())
        .var("S3_ENDPOINT", &proxy.addr)
        .start()
        .await;
    let (account, key) = app.polling_account().await;
    let data = fixtures::mp4(PART + 50_000);
    let path = created(&app, &key, data.len() as u64, &[("filename", "v.mp4")]).await;
    let tail = PART - 1000;
    patch_in_pieces(&app, &path, &key, &data, (0, tail), PART).await;
    let body = &data[tail..tail + 2000];
    let checksummed = |digest: &[u8]| {
        tus(&app, Method::PATCH, &path, &key)
            .header("upload-offset", tail.to_string())
            .header("content-type", "application/offset+octet-stream")
            .header(
                "upload-checksum",
                format!("sha256 {}", STANDARD.encode(digest)),
            )
            .body(body.to_vec())
    };
    let before = proxy.carried();
    let bad = checksummed(&Sha256::digest(b"other bytes"))
        .send()
        .await
        .unwrap();
    assert_problem(bad, StatusCode::from_u16(460).unwrap(), "checksum_mismatch").await;
    let carried = proxy.carried() - before;
    assert!(
        carried < 64 * 1024,
        "a refused body of 2000 bytes over a tail of {tail} moved {carried} bytes"
    );
    assert_eq!(offset_of(&app, &path, &key).await, tail as u64);

    let good = checksummed(&Sha256::digest(body)).send().await.unwrap();
    assert_eq!(good.status(), StatusCode::NO_CONTENT);
    assert_eq!(
        good.headers()["upload-offset"],
        (tail + 2000).to_string().as_str()
    );
    let parts: i32 = sqlx::query_scalar("SELECT parts FROM tus_uploads WHERE id = $1")
        .bind(upload_id(&path))
        .fetch_one(&app.state.db)
        .await
        .unwrap();
    assert_eq!(parts, 1, "the part the body completed");
    assert_eq!(side_objects(&app).await.len(), 1, "the bytes after it");
    patch_in_pieces(&app, &path, &key, &data, (tail + 2000, data.len()), PART).await;
    let file_id = upload_id(&path).to_string();
    assert_eq!(app.download(&key, &file_id).await, data);
    assert_nothing_left(&app, account.id, 1).await;
}

/// A tail of several segments is removed whole however the upload ends
/// without becoming a file: terminated by its client, or expired and
/// reclaimed by the reaper.
#[tokio::test]
async fn every_segment_of_a_tail_goes_with_a_terminated_or_expired_upload() {
    for backend in [Backend::S3, Backend::Fs] {
        let app = spawn()
            .backend(backend)
            .var("UPLOAD_PART_BYTES", &PART.to_string())
            .var("TUS_EXPIRY_SECS", "3")
            .start()
            .await;
        let (account, key) = app.polling_account().await;
        let data = fixtures::png(PART);
        for ends_by in ["termination", "expiry"] {
            let path = created(&app, &key, data.len() as u64, &[("filename", "a.png")]).await;
            // Each PATCH smaller than half the one before: a segment each.
            let cuts = [0, 50_000, 51_000, 51_100];
            for pair in cuts.windows(2) {
                patch_in_pieces(&app, &path, &key, &data, (pair[0], pair[1]), PART).await;
            }
            assert_eq!(
                side_objects(&app).await.len(),
                3,
                "{backend:?}: three segments"
            );
            if ends_by == "termination" {
                let resp = tus(&app, Method::DELETE, &path, &key).send().await.unwrap();
                assert_eq!(resp.status(), StatusCode::NO_CONTENT);
            } else {
                within(Duration::from_secs(15), || async {
                    intake::reap(&app.state).await.unwrap();
                    app.holdings(account.id).await.leases == 0
                })
                .await;
                let resp = tus(&app, Method::HEAD, &path, &key).send().await.unwrap();
                assert_eq!(resp.status(), StatusCode::GONE);
            }
            assert_nothing_left(&app, account.id, 0).await;
        }
    }
}

/// Puts an upload back as an earlier build left it: its tail in the one
/// object `t/<id>/tail`, its row and lease without segments; then converts
/// it as migration 0016 does.
async fn as_left_by_an_earlier_build(app: &TestApp, id: Uuid) {
    let (seqs, next): (Vec<i32>, i32) =
        sqlx::query_as("SELECT tail_seqs, tail_next FROM tus_uploads WHERE id = $1")
            .bind(id)
            .fetch_one(&app.state.db)
            .await
            .unwrap();
    assert_eq!((seqs, next), (vec![0], 1), "one segment");
    let (segment, old) = (format!("t/{id}/tail-0"), format!("t/{id}/tail"));
    match app.backend {
        Backend::S3 => {
            let s3 = s3_client().await;
            s3.copy_object()
                .bucket(S3_BUCKET)
                .copy_source(format!("{S3_BUCKET}/{}{segment}", app.prefix))
                .key(format!("{}{old}", app.prefix))
                .send()
                .await
                .unwrap();
            s3.delete_object()
                .bucket(S3_BUCKET)
                .key(format!("{}{segment}", app.prefix))
                .send()
                .await
                .unwrap();
        }
        Backend::Fs => {
            let root = app.fs_root.as_ref().unwrap().path();
            std::fs::rename(root.join(&segment), root.join(&old)).unwrap();
        }
    }
    sqlx::raw_sql(&format!(
        "UPDATE tus_uploads SET tail_seqs = '{{}}', tail_lens = '{{}}', tail_next = 0
         WHERE id = '{id}';
         UPDATE upload_leases SET tail_objects = '{{}}' WHERE tail_key = '{old}';
         UPDATE tus_uploads SET tail_seqs = '{{-1}}', tail_lens = ARRAY[tail_len]
         WHERE state = 'open' AND tail_len > 0;
         UPDATE upload_leases SET tail_objects = ARRAY[tail_key || '-0']
         WHERE tail_key IS NOT NULL;"
    ))
    .execute(&app.state.db)
    .await
    .unwrap();
}

/// An upload begun by an earlier build, whose tail is one object, resumes:
/// that object is the tail's first segment, read back into the part, and
/// it goes with the upload however it ends.
#[tokio::test]
async fn an_upload_whose_tail_is_one_object_of_an_earlier_build_resumes() {
    for backend in [Backend::S3, Backend::Fs] {
        let app = app_on(backend).await;
        let (account, key) = app.polling_account().await;
        let data = fixtures::png(PART + 5000);
        for completed in [true, false] {
            let path = created(&app, &key, data.len() as u64, &[("filename", "a.png")]).await;
            patch_in_pieces(&app, &path, &key, &data, (0, 40_000), PART).await;
            as_left_by_an_earlier_build(&app, upload_id(&path)).await;
            assert_eq!(offset_of(&app, &path, &key).await, 40_000);
            // A small PATCH beside it, then one through the part.
            patch_in_pieces(&app, &path, &key, &data, (40_000, 41_000), PART).await;
            assert_eq!(side_objects(&app).await.len(), 2, "{backend:?}");
            if completed {
                patch_in_pieces(&app, &path, &key, &data, (41_000, data.len()), PART).await;
                assert_nothing_left(&app, account.id, 1).await;
                let file_id = upload_id(&path).to_string();
                assert_eq!(app.download(&key, &file_id).await, data);
            } else {
                let resp = tus(&app, Method::DELETE, &path, &key).send().await.unwrap();
                assert_eq!(resp.status(), StatusCode::NO_CONTENT);
                assert_nothing_left(&app, account.id, 1).await;
            }
        }
    }
}

/// A tus request with a dashboard session (its cookie, and its CSRF token
/// when `csrf` is given) instead of an API key.
fn tus_session(
    app: &TestApp,
    method: Method,
    path: &str,
    session: &crate::helpers::Session,
    csrf: Option<&str>,
) -> reqwest::RequestBuilder {
    let request = app
        .request(method, path)
        .header("cookie", &session.cookie)
        .header("tus-resumable", "1.0.0");
    match csrf {
        Some(token) => request.header("x-csrf-token", token),
        None => request,
    }
}

async fn session_usage(app: &TestApp, session: &crate::helpers::Session) -> Value {
    let resp = app
        .get("/usage")
        .header("cookie", &session.cookie)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    resp.json().await.unwrap()
}

#[tokio::test]
async fn a_free_account_without_api_keys_uploads_through_tus_with_its_session() {
    let app = app_on(Backend::Fs).await;
    // FREE accounts have no API keys: the dashboard's session is their way in.
    let account = app.account("free").await;
    let session = app.login(&account.email).await;
    let csrf = Some(session.csrf.as_str());
    let data = fixtures::png(PART + 4321);
    let resp = tus_session(&app, Method::POST, "/upload/tus", &session, csrf)
        .header("upload-length", data.len().to_string())
        .header(
            "upload-metadata",
            metadata(&[("filename", "holiday.png"), ("filetype", "image/png")]),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::CREATED);
    let path = tus_path(&resp);
    let now = session_usage(&app, &session).await;
    assert_eq!(now["usage"]["storage_bytes"]["reserved"], data.len() as u64);
    assert_eq!(now["usage"]["concurrent_uploads"]["active"], 1);

    let half = 3 * MIB;
    let resp = tus_session(&app, Method::PATCH, &path, &session, csrf)
        .header("upload-offset", "0")
        .header("content-type", "application/offset+octet-stream")
        .body(data[..half].to_vec())
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::NO_CONTENT);
    // HEAD changes nothing: the cookie alone is enough, as for any GET.
    let head = tus_session(&app, Method::HEAD, &path, &session, None)
        .send()
        .await
        .unwrap();
    assert_eq!(head.status(), StatusCode::OK);
    assert_eq!(head.headers()["upload-offset"], half.to_string().as_str());

    let resp = tus_session(&app, Method::PATCH, &path, &session, csrf)
        .header("upload-offset", half.to_string())
        .header("content-type", "application/offset+octet-stream")
        .body(data[half..].to_vec())
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::NO_CONTENT);
    let file_id = resp.headers()["intake-file-id"]
        .to_str()
        .unwrap()
        .to_owned();
    let file: Value = app
        .get(&format!("/files/{file_id}"))
        .header("cookie", &session.cookie)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(file["filename"], "holiday.png");
    assert_eq!(file["sha256"], sha256_hex(&data));
    let after = session_usage(&app, &session).await;
    assert_eq!(after["usage"]["storage_bytes"]["used"], data.len() as u64);
    assert_eq!(after["usage"]["storage_bytes"]["reserved"], 0);
    assert_eq!(after["usage"]["concurrent_uploads"]["active"], 0);
    app.assert_left_with(account.id, 1).await;
}

#[tokio::test]
async fn tus_requests_of_a_session_without_its_csrf_token_are_refused_and_change_nothing() {
    let app = app_on(Backend::Fs).await;
    let account = app.account("free").await;
    let session = app.login(&account.email).await;
    let data = fixtures::png(64 * 1024);
    let creation = |csrf: Option<&str>| {
        tus_session(&app, Method::POST, "/upload/tus", &session, csrf)
            .header("upload-length", data.len().to_string())
            .header(
                "upload-metadata",
                metadata(&[("filename", "a.png"), ("filetype", "image/png")]),
            )
    };
    for csrf in [None, Some("not-the-token")] {
        let resp = creation(csrf).send().await.unwrap();
        assert_problem(resp, StatusCode::FORBIDDEN, "csrf_token_required").await;
    }
    let untouched = session_usage(&app, &session).await;
    assert_eq!(untouched["usage"]["storage_bytes"]["reserved"], 0);
    assert_eq!(untouched["usage"]["concurrent_uploads"]["active"], 0);

    // An upload made with the token takes no bytes, and no ending, without it.
    let resp = creation(Some(&session.csrf)).send().await.unwrap();
    assert_eq!(resp.status(), StatusCode::CREATED);
    let path = tus_path(&resp);
    let resp = tus_session(&app, Method::PATCH, &path, &session, None)
        .header("upload-offset", "0")
        .header("content-type", "application/offset+octet-stream")
        .body(data.clone())
        .send()
        .await
        .unwrap();
    assert_problem(resp, StatusCode::FORBIDDEN, "csrf_token_required").await;
    let resp = tus_session(&app, Method::DELETE, &path, &session, None)
        .send()
        .await
        .unwrap();
    assert_problem(resp, StatusCode::FORBIDDEN, "csrf_token_required").await;
    let head = tus_session(&app, Method::HEAD, &path, &session, None)
        .send()
        .await
        .unwrap();
    assert_eq!(head.status(), StatusCode::OK);
    assert_eq!(head.headers()["upload-offset"], "0");
    let open = session_usage(&app, &session).await;
    assert_eq!(
        open["usage"]["storage_bytes"]["reserved"],
        data.len() as u64
    );
    assert_eq!(open["usage"]["storage_bytes"]["used"], 0);
    assert_eq!(open["usage"]["concurrent_uploads"]["active"], 1);

    // With the token, termination gives everything back.
    let resp = tus_session(&app, Method::DELETE, &path, &session, Some(&session.csrf))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::NO_CONTENT);
    assert_nothing_left(&app, account.id, 0).await;
}
