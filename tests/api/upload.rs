//! Streaming uploads: every category, batches, caps, quota, slots, faults
//! and bad input, with the state left behind checked after each.

use std::time::Duration;

use reqwest::{Method, StatusCode};
use serde_json::{Value, json};
use sha2::{Digest, Sha256};

use crate::helpers::{
    Backend, Form, Holdings, MIB, Relay, assert_problem,
    clients::stream::{Answer, BodySender, STREAM_END, channel_body, open_stream, part_head},
    env, fixtures, spawn, spawn_app,
};

#[tokio::test]
async fn every_category_uploads_with_its_sha256_on_both_backends() {
    for backend in [Backend::S3, Backend::Fs] {
        let app = spawn().backend(backend).start().await;
        let (account, key) = app.account_with_key("starter").await;
        let cases: Vec<(&str, &str, Vec<u8>, &str, &str)> = vec![
            (
                "photo.png",
                "image/png",
                fixtures::png(300_000),
                "image",
                "image/png",
            ),
            (
                "photo.jpg",
                "image/jpeg",
                fixtures::jpeg(10_000),
                "image",
                "image/jpeg",
            ),
            (
                "report.pdf",
                "application/pdf",
                fixtures::pdf(50_000),
                "document",
                "application/pdf",
            ),
            (
                "clip.mp4",
                "video/mp4",
                fixtures::mp4(9 * MIB + 7),
                "video",
                "video/mp4",
            ),
            (
                "table.csv",
                "text/csv",
                fixtures::csv(5_000),
                "document",
                "text/csv",
            ),
        ];
        let mut total = 0i64;
        for (name, ct, data, category, mime) in &cases {
            let resp = app.upload(&key, name, ct, data).await;
            assert_eq!(resp.status(), StatusCode::CREATED, "{backend:?} {name}");
            let file: Value = resp.json().await.unwrap();
            assert_eq!(file["filename"], *name);
            assert_eq!(file["category"], *category);
            assert_eq!(file["content_type"], *mime);
            assert_eq!(file["size"], data.len());
            assert_eq!(file["sha256"], hex::encode(Sha256::digest(data)));
            total += data.len() as i64;
        }
        assert_eq!(
            app.settled(account.id).await,
            Holdings::stored(5, total),
            "{backend:?}"
        );
        assert_eq!(app.objects(account.id).await.len(), 5);
        if backend == Backend::Fs {
            assert_eq!(app.fs_partials(), 0, "no partial files left");
        }
    }
}

#[tokio::test]
async fn a_batch_stores_each_file_and_reports_each_failure() {
    let app = spawn_app().await;
    let (account, key) = app.account_with_key("starter").await;
    let form = Form::new()
        .part("files", "a.png", "image/png", &fixtures::png(1000))
        .part("files", "evil.jpg", "image/jpeg", &fixtures::elf(1000))
        .part("files", "b.pdf", "application/pdf", &fixtures::pdf(2000))
        .part("files", "lie.png", "image/png", &fixtures::pdf(500))
        .part("files", "c.mp4", "", &fixtures::mp4(6 * MIB));
    let resp = app.upload_form("/upload/stream-batch", &key, form).await;
    assert_eq!(resp.status(), StatusCode::OK);
    let body: Value = resp.json().await.unwrap();
    assert_eq!(
        (body["uploaded"].as_u64(), body["failed"].as_u64()),
        (Some(3), Some(2)),
        "{body}"
    );
    let results = body["results"].as_array().unwrap();
    assert_eq!(statuses(&body), [201, 415, 201, 415, 201]);
    for (i, r) in results.iter().enumerate() {
        assert_eq!(r["index"], i);
    }
    assert_eq!(results[1]["error"]["code"], "unsupported_media_type");
    assert_eq!(results[3]["error"]["code"], "type_mismatch");
    assert_eq!(results[4]["file"]["category"], "video");
    app.assert_left_with(account.id, 3).await;
}

/// The statuses of a batch answer's results, in order.
fn statuses(body: &Value) -> Vec<u64> {
    body["results"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["status"].as_u64().unwrap())
        .collect()
}

/// Small files of a batch finish side by side, but reserve their quota in
/// the order they came: near the quota the first ones are stored and the
/// rest refused, as if they were finished one by one.
#[tokio::test]
async fn a_batch_at_the_quota_stores_its_first_files_and_refuses_the_rest() {
    for backend in [Backend::S3, Backend::Fs] {
        let app = spawn().backend(backend).start().await;
        let (account, key) = app.account_with_key("starter").await;
        app.patch_account(
            account.id,
            json!({"custom_limits": {"storage_bytes": 5 * 20_000 + 500}}),
        )
        .await;
        let resp = app
            .upload_form("/upload/stream-batch", &key, Form::pngs(8, 20_000))
            .await;
        assert_eq!(resp.status(), StatusCode::OK);
        let body: Value = resp.json().await.unwrap();
        assert_eq!(
            statuses(&body),
            [201, 201, 201, 201, 201, 507, 507, 507],
            "{backend:?}"
        );
        assert_eq!(
            body["results"][7]["error"]["code"],
            "storage_quota_exceeded"
        );
        assert_eq!(
            app.settled(account.id).await,
            Holdings::stored(5, 100_000),
            "{backend:?}"
        );
        assert_eq!(app.objects(account.id).await.len(), 5, "{backend:?}");
    }
}

#[tokio::test]
async fn a_batch_over_the_tier_size_keeps_nothing() {
    let app = spawn_app().await;
    let (account, key) = app.account_with_key("starter").await;
    app.patch_account(account.id, json!({"custom_limits": {"batch_size": 2}}))
        .await;
    let resp = app
        .upload_form("/upload/stream-batch", &key, Form::pngs(3, 20_000))
        .await;
    let body = assert_problem(resp, StatusCode::PAYLOAD_TOO_LARGE, "batch_too_large").await;
    assert_eq!(body["limit"], 2);
    assert_eq!(app.settled(account.id).await, Holdings::NOTHING);
    assert!(app.objects(account.id).await.is_empty());

    // Thousands of tiny parts end the same way, quickly.
    let mut form = Form::new();
    for i in 0..5000 {
        form = form.part("files", &format!("{i}.txt"), "text/plain", b"x");
    }
    let resp = app.upload_form("/upload/stream-batch", &key, form).await;
    assert_problem(resp, StatusCode::PAYLOAD_TOO_LARGE, "batch_too_large").await;
    assert_eq!(app.settled(account.id).await, Holdings::NOTHING);
}

#[tokio::test]
async fn a_batch_is_one_request_for_the_rate_limit() {
    let app = spawn_app().await;
    let (_, key) = app.account_with_key("starter").await;
    let resp = app
        .upload_form("/upload/stream-batch", &key, Form::pngs(5, 1000))
        .await;
    assert_eq!(resp.status(), StatusCode::OK);
    assert_eq!(resp.headers()["x-ratelimit-remaining"], "29");
}

#[tokio::test]
async fn a_file_at_its_cap_is_accepted_and_one_byte_over_is_refused() {
    let app = spawn_app().await;
    let (account, key) = app.account_with_key("starter").await;
    app.patch_account(
        account.id,
        json!({"custom_limits": {"max_image_bytes": MIB}}),
    )
    .await;
    let at_cap = fixtures::png(MIB);
    assert_eq!(
        app.upload(&key, "at.png", "image/png", &at_cap)
            .await
            .status(),
        StatusCode::CREATED
    );
    let over = fixtures::png(MIB + 1);
    let resp = app.upload(&key, "over.png", "image/png", &over).await;
    let body = assert_problem(resp, StatusCode::PAYLOAD_TOO_LARGE, "file_too_large").await;
    assert_eq!(body["limit"], MIB);
    assert_eq!(
        app.settled(account.id).await,
        Holdings::stored(1, MIB as i64)
    );
    assert_eq!(app.objects(account.id).await.len(), 1);
}

#[tokio::test]
async fn files_past_the_streaming_cap_are_sent_to_presigned_uploads() {
    let app = spawn()
        .var("STREAM_MAX_FILE_BYTES", "2097152")
        .start()
        .await;
    let (account, key) = app.account_with_key("starter").await;
    let resp = app
        .upload(&key, "long.mp4", "video/mp4", &fixtures::mp4(2 * MIB + 1))
        .await;
    let body = assert_problem(resp, StatusCode::PAYLOAD_TOO_LARGE, "use_presigned_upload").await;
    assert_eq!(body["limit"], 2 * MIB);
    assert_eq!(app.settled(account.id).await, Holdings::NOTHING);
    let limits: Value = app
        .get("/limits")
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(limits["stream_max_file_bytes"], 2 * MIB);
}

#[tokio::test]
async fn the_read_stops_at_the_cap_without_waiting_for_the_rest() {
    refused_at_the_cap_without_waiting(false).await;
}

#[tokio::test]
async fn a_file_announced_over_its_cap_is_refused_before_its_bytes() {
    refused_at_the_cap_without_waiting(true).await;
}

/// A 10 MiB image over a 256 KiB cap, sent chunked (refused on its running
/// count) or with `Content-Length` (refused on its announced length).
async fn refused_at_the_cap_without_waiting(with_length: bool) {
    let app = spawn_app().await;
    let (account, key) = app.account_with_key("starter").await;
    app.patch_account(
        account.id,
        json!({"custom_limits": {"max_image_bytes": 256 * 1024}}),
    )
    .await;
    let (tx, body) = channel_body();
    let boundary = "capboundary";
    let mut request = app.post("/upload/stream").bearer_auth(&key).header(
        "content-type",
        format!("multipart/form-data; boundary={boundary}"),
    );
    if with_length {
        let head = part_head(boundary, "file", "big.png", "image/png");
        request = request.header("content-length", head.len() + 10 * MIB + boundary.len() + 8);
    }
    let request = request.body(body).send();
    let feeder = async {
        tx.send(Ok(part_head(boundary, "file", "big.png", "image/png")))
            .await
            .unwrap();
        let data = fixtures::png(300 * 1024);
        for chunk in data.chunks(16 * 1024) {
            tx.send(Ok(chunk.to_vec())).await.unwrap();
        }
        // The client would send 10 MiB more; the answer must not wait for it.
        std::future::pending::<()>().await;
    };
    let resp = tokio::select! {
        resp = request => resp.unwrap(),
        () = feeder => panic!("the server waited for the whole body"),
    };
    assert_problem(resp, StatusCode::PAYLOAD_TOO_LARGE, "file_too_large").await;
    assert_eq!(app.settled(account.id).await, Holdings::NOTHING);
    assert!(app.objects(account.id).await.is_empty());
}

#[tokio::test]
async fn concurrent_uploads_never_exceed_the_quota() {
    let app = spawn().var("UPLOAD_PART_BYTES", "5242880").start().await;
    let (account, key) = app.account_with_key("starter").await;
    let quota = 10 * MIB as u64 + 12345;
    app.patch_account(
        account.id,
        json!({"custom_limits": {"storage_bytes": quota}}),
    )
    .await;
    let data = fixtures::png(3 * MIB);
    let uploads = (0..8).map(|i| {
        let (app, key, data) = (&app, &key, &data);
        async move {
            app.upload(key, &format!("{i}.png"), "image/png", data)
                .await
        }
    });
    let responses = futures_util::future::join_all(uploads).await;
    let mut created = 0;
    for resp in responses {
        match resp.status() {
            StatusCode::CREATED => created += 1,
            StatusCode::INSUFFICIENT_STORAGE => {
                let body = assert_problem(
                    resp,
                    StatusCode::INSUFFICIENT_STORAGE,
                    "storage_quota_exceeded",
                )
                .await;
                assert_eq!(body["limit"], quota);
            }
            other => panic!("unexpected {other}"),
        }
    }
    assert_eq!(created, 3, "three 3 MiB files fit in 10 MiB");
    let h = app.settled(account.id).await;
    assert_eq!(h, Holdings::stored(3, h.file_bytes));
    assert!(h.used as u64 <= quota);
    let mut in_bucket = 0u64;
    let client = crate::helpers::s3_client().await;
    for k in crate::helpers::s3_keys(&format!("{}u/{}/", app.prefix, account.id)).await {
        let head = client
            .head_object()
            .bucket(crate::helpers::S3_BUCKET)
            .key(k)
            .send()
            .await
            .unwrap();
        in_bucket += head.content_length().unwrap() as u64;
    }
    assert_eq!(
        in_bucket, h.used as u64,
        "usage equals the bytes in the bucket"
    );
}

#[tokio::test]
async fn a_file_that_fits_exactly_in_the_quota_is_accepted() {
    let app = spawn_app().await;
    let (account, key) = app.account_with_key("starter").await;
    app.patch_account(
        account.id,
        json!({"custom_limits": {"storage_bytes": 300_000}}),
    )
    .await;
    assert_eq!(
        app.upload(&key, "a.png", "image/png", &fixtures::png(300_000))
            .await
            .status(),
        StatusCode::CREATED
    );
    let resp = app
        .upload(&key, "b.png", "image/png", &fixtures::png(10))
        .await;
    let body = assert_problem(
        resp,
        StatusCode::INSUFFICIENT_STORAGE,
        "storage_quota_exceeded",
    )
    .await;
    assert_eq!(body["used"], 300_000);
    assert_eq!(app.settled(account.id).await, Holdings::stored(1, 300_000));
}

/// Starts an upload whose body stays open until the returned sender drops.
async fn open_upload(app: &crate::helpers::TestApp, key: &str) -> (BodySender, Answer) {
    open_stream(
        &app.client,
        app.url("/upload/stream"),
        key,
        "slow.png",
        "image/png",
        fixtures::png(100_000),
    )
    .await
}

#[tokio::test]
async fn the_slot_past_the_limit_is_refused_and_slots_come_back() {
    let app = spawn_app().await;
    let (account, key) = app.account_with_key("enterprise").await;
    app.patch_account(
        account.id,
        json!({"custom_limits": {"concurrent_uploads": 2}}),
    )
    .await;
    let (first_tx, first) = open_upload(&app, &key).await;
    let (second_tx, second) = open_upload(&app, &key).await;
    app.wait_active(&key, 2).await;

    let resp = app
        .upload(&key, "third.png", "image/png", &fixtures::png(100))
        .await;
    assert_eq!(resp.headers()["retry-after"], "1");
    let body = assert_problem(
        resp,
        StatusCode::TOO_MANY_REQUESTS,
        "concurrent_upload_limit",
    )
    .await;
    assert_eq!(body["limit"], 2);

    // A finished upload gives its slot back.
    first_tx.send(Ok(STREAM_END.to_vec())).await.unwrap();
    drop(first_tx);
    assert_eq!(first.await.unwrap().unwrap().status(), StatusCode::CREATED);
    app.wait_active(&key, 1).await;

    // So does a client that disconnects mid-file: nothing of it stays.
    second.abort();
    drop(second_tx);
    app.wait_active(&key, 0).await;
    app.assert_left_with(account.id, 1).await;
    assert_eq!(
        app.upload(&key, "again.png", "image/png", &fixtures::png(100))
            .await
            .status(),
        StatusCode::CREATED
    );
}

#[tokio::test]
async fn a_dead_instances_slots_expire_and_its_reservations_are_reaped() {
    let app = spawn_app().await;
    let (account, key) = app.account_with_key("starter").await;
    app.patch_account(
        account.id,
        json!({"custom_limits": {"concurrent_uploads": 1}}),
    )
    .await;
    // A lease a crashed instance left behind, holding a slot and 5 MB.
    let orphan = format!("u/{}/orphan", account.id);
    app.plant_lease(
        account.id,
        5_000_000,
        &[("object_key", &orphan)],
        "2 seconds",
    )
    .await;
    app.state
        .store
        .put(
            &format!("u/{}/orphan", account.id),
            bytes::Bytes::from_static(b"partial"),
            "image/png",
        )
        .await
        .unwrap();

    let resp = app
        .upload(&key, "a.png", "image/png", &fixtures::png(100))
        .await;
    assert_problem(
        resp,
        StatusCode::TOO_MANY_REQUESTS,
        "concurrent_upload_limit",
    )
    .await;
    app.leases_expired(account.id).await;
    // Expired: the slot counts no more, even before the reaper runs.
    assert_eq!(
        app.upload(&key, "a.png", "image/png", &fixtures::png(100))
            .await
            .status(),
        StatusCode::CREATED
    );
    // Two reapers at once give everything back exactly once.
    let (a, b) = tokio::join!(intake::reap(&app.state), intake::reap(&app.state));
    assert_eq!(a.unwrap().0 + b.unwrap().0, 1);
    assert_eq!(app.holdings(account.id).await, Holdings::stored(1, 100));
    assert_eq!(
        app.objects(account.id).await.len(),
        1,
        "the orphan object is gone"
    );
}

#[tokio::test]
async fn storage_failing_mid_upload_leaves_nothing_behind() {
    storage_fails_mid_upload(None).await;
}

#[tokio::test]
async fn storage_failing_mid_put_of_a_known_length_leaves_nothing_behind() {
    let body_len = part_head("cut", "file", "movie.mp4", "video/mp4").len() + 20 * MIB + 11;
    storage_fails_mid_upload(Some(body_len)).await;
}

/// Storage goes away 12 MiB into a 20 MiB upload, sent chunked (parts of
/// a multipart upload) or with its length (one streamed PUT).
async fn storage_fails_mid_upload(body_len: Option<usize>) {
    let proxy = Relay::to(&env("TEST_S3_ENDPOINT")).await;
    let app = spawn()
        .var("S3_ENDPOINT", &proxy.addr)
        .var("UPLOAD_PART_BYTES", "5242880")
        .start()
        .await;
    let (account, key) = app.account_with_key("starter").await;
    let (tx, body) = channel_body();
    let mut request = app
        .post("/upload/stream")
        .bearer_auth(&key)
        .header("content-type", "multipart/form-data; boundary=cut");
    if let Some(len) = body_len {
        request = request.header("content-length", len);
    }
    let request = tokio::spawn(request.body(body).send());
    tx.send(Ok(part_head("cut", "file", "movie.mp4", "video/mp4")))
        .await
        .unwrap();
    let data = fixtures::mp4(20 * MIB);
    let mut sent = 0;
    for chunk in data.chunks(256 * 1024) {
        if sent == 12 * MIB {
            // Two parts reached storage; now it goes away.
            proxy.cut();
        }
        if tx.send(Ok(chunk.to_vec())).await.is_err() {
            break;
        }
        sent += chunk.len();
    }
    let _ = tx.send(Ok(b"\r\n--cut--\r\n".to_vec())).await;
    drop(tx);
    let resp = request.await.unwrap().unwrap();
    assert_problem(resp, StatusCode::SERVICE_UNAVAILABLE, "service_unavailable").await;
    let h = app.settled(account.id).await;
    assert_eq!((h.used, h.reserved, h.leases, h.files), (0, 0, 0, 0));
    // Storage comes back: the queued cleanup finishes, nothing is left.
    proxy.restore();
    intake::reap(&app.state).await.unwrap();
    assert!(app.objects(account.id).await.is_empty());
    let queued: i64 = app
        .scalar_i64("SELECT count(*) FROM object_deletions")
        .await;
    assert_eq!(queued, 0);
}

/// A request body `/upload/stream` refuses, and the problem it answers.
struct Refused {
    what: &'static str,
    content_type: String,
    body: Vec<u8>,
    status: StatusCode,
    code: &'static str,
}

impl Refused {
    fn new(what: &'static str, content_type: &str, body: Vec<u8>) -> Self {
        Refused {
            what,
            content_type: content_type.to_owned(),
            body,
            status: StatusCode::BAD_REQUEST,
            code: "invalid_request",
        }
    }

    /// A finished form.
    fn form(what: &'static str, form: Form) -> Self {
        let form = form.finish();
        Self::new(what, &form.content_type(), form.body)
    }

    /// One file part named `file`.
    fn file(what: &'static str, filename: &str, content_type: &str, data: &[u8]) -> Self {
        Self::form(what, Form::new().part("file", filename, content_type, data))
    }

    fn answers(mut self, status: StatusCode, code: &'static str) -> Self {
        self.status = status;
        self.code = code;
        self
    }
}

/// Every way a streaming upload's input is refused, each with its status
/// and code.
fn refused_inputs() -> Vec<Refused> {
    let full = Form::new()
        .part("file", "a.png", "image/png", &fixtures::png(50_000))
        .finish();
    let truncated = full.body[..full.body.len() / 2].to_vec();
    let mut huge =
        b"--h\r\nContent-Disposition: form-data; name=\"file\"; filename=\"a.png\"\r\nX-Pad: "
            .to_vec();
    huge.extend(std::iter::repeat_n(b'a', 3 * MIB));
    huge.extend_from_slice(b"\r\n\r\nxx\r\n--h--\r\n");
    vec![
        Refused::new("no boundary", "multipart/form-data", b"--x\r\n".to_vec()),
        Refused::new("not a form", "application/json", b"{}".to_vec())
            .answers(StatusCode::UNSUPPORTED_MEDIA_TYPE, "unsupported_media_type"),
        Refused::new("a truncated form", &full.content_type(), truncated),
        Refused::form(
            "a part not named file",
            Form::new().part("upload", "a.png", "image/png", &fixtures::png(100)),
        ),
        Refused::file("an empty file", "a.txt", "text/plain", b"")
            .answers(StatusCode::UNPROCESSABLE_ENTITY, "invalid_request"),
        Refused::form("no part", Form::new()),
        Refused::form(
            "two files",
            Form::new()
                .part("file", "a.png", "image/png", &fixtures::png(100))
                .part("file", "b.png", "image/png", &fixtures::png(100)),
        ),
        Refused::new("a 3 MiB part head", "multipart/form-data; boundary=h", huge),
        Refused::file(
            "an executable",
            "cat.jpg",
            "image/jpeg",
            &fixtures::elf(4096),
        )
        .answers(StatusCode::UNSUPPORTED_MEDIA_TYPE, "unsupported_media_type"),
        Refused::file(
            "a PDF declared a PNG",
            "cv.png",
            "image/png",
            &fixtures::pdf(4096),
        )
        .answers(StatusCode::UNSUPPORTED_MEDIA_TYPE, "type_mismatch"),
        Refused::file(
            "text that is not UTF-8",
            "notes.txt",
            "text/plain",
            b"ok so far \xff\xfe broken",
        )
        .answers(StatusCode::UNSUPPORTED_MEDIA_TYPE, "unsupported_media_type"),
        // Paths and NUL bytes never reach a path: names are display-only.
        // A raw NUL is not valid in a part header: refused as malformed.
        Refused::file(
            "a NUL in the name",
            "a\u{0}b.png",
            "image/png",
            &fixtures::png(100),
        ),
    ]
}

#[tokio::test]
async fn bad_input_gets_a_clear_problem_and_keeps_nothing() {
    let app = spawn_app().await;
    let (account, key) = app.account_with_key("starter").await;
    let send = |ct: String, body: Vec<u8>| {
        app.post("/upload/stream")
            .bearer_auth(&key)
            .header("content-type", ct)
            .body(body)
            .send()
    };

    for case in refused_inputs() {
        let resp = send(case.content_type, case.body).await.unwrap();
        assert_eq!(resp.status(), case.status, "{}", case.what);
        assert_problem(resp, case.status, case.code).await;
    }
    assert_eq!(app.settled(account.id).await, Holdings::NOTHING);
    assert!(app.objects(account.id).await.is_empty());

    // Path components and control characters that headers may carry are dropped.
    let tabbed = Form::new()
        .part(
            "file",
            "../../etc/pass\twd.png",
            "image/png",
            &fixtures::png(100),
        )
        .finish();
    let resp = send(tabbed.content_type(), tabbed.body).await.unwrap();
    assert_eq!(resp.status(), StatusCode::CREATED);
    let file: Value = resp.json().await.unwrap();
    assert_eq!(file["filename"], "passwd.png");
    assert_eq!(
        app.objects(account.id).await,
        vec![format!(
            "{}u/{}/{}",
            app.prefix,
            account.id,
            file["id"].as_str().unwrap()
        )]
    );

    assert_eq!(
        app.get("/healthz").send().await.unwrap().status(),
        StatusCode::OK,
        "the server keeps serving"
    );
}

#[tokio::test]
async fn uploads_need_an_account() {
    let app = spawn_app().await;
    let resp = app
        .upload("ik_nope", "a.png", "image/png", &fixtures::png(100))
        .await;
    assert_problem(resp, StatusCode::UNAUTHORIZED, "unauthorized").await;
    let account = app.account("free").await;
    let session = app.login(&account.email).await;
    let form = Form::new()
        .part("file", "a.png", "image/png", &fixtures::png(100))
        .finish();
    let resp = app
        .with_session(Method::POST, "/upload/stream", &session)
        .header("content-type", form.content_type())
        .body(form.body)
        .send()
        .await
        .unwrap();
    assert_eq!(
        resp.status(),
        StatusCode::CREATED,
        "the dashboard uploads with a session"
    );
}

#[tokio::test]
async fn upload_metrics_are_exported() {
    let app = spawn_app().await;
    let (_, key) = app.account_with_key("starter").await;
    let before = app.metrics().await;
    let stored = app
        .upload(&key, "a.png", "image/png", &fixtures::png(1000))
        .await;
    assert_eq!(stored.status(), StatusCode::CREATED);
    let refused = app
        .upload(&key, "a.png", "image/png", &fixtures::elf(1000))
        .await;
    assert_problem(
        refused,
        StatusCode::UNSUPPORTED_MEDIA_TYPE,
        "unsupported_media_type",
    )
    .await;
    // While one upload is open, the gauge counts it.
    let (open_tx, open) = open_upload(&app, &key).await;
    app.wait_active(&key, 1).await;
    let after = app.metrics().await;
    // Other tests only add to these counters: each grew at least by what
    // this test did.
    assert!(
        after.grew(&before, "intake_upload_bytes_total", &[]) >= 1000.0,
        "the stored file's bytes are counted"
    );
    assert!(
        after.grew(
            &before,
            "intake_upload_files_total",
            &[("category", "image")]
        ) >= 1.0,
        "the stored PNG is counted as an image"
    );
    assert!(
        after.grew(
            &before,
            "intake_upload_rejections_total",
            &[("code", "unsupported_media_type")]
        ) >= 1.0,
        "the refused executable is counted by its code"
    );
    assert!(
        after.value("intake_uploads_in_flight", &[]) >= 1.0,
        "the open upload is in flight"
    );
    drop(open_tx);
    let _ = open.await;
}

#[tokio::test]
async fn shutdown_lets_uploads_finish_then_ends_them_cleanly() {
    let mut app = spawn().var("SHUTDOWN_GRACE_SECS", "1").start().await;
    let (account, key) = app.account_with_key("starter").await;
    // One upload finishes within the grace period, one never would.
    let (quick_tx, quick) = open_upload(&app, &key).await;
    let (_stuck_tx, stuck) = open_upload(&app, &key).await;
    app.wait_active(&key, 2).await;
    app.signal_shutdown();
    app.not_accepting().await;
    quick_tx.send(Ok(STREAM_END.to_vec())).await.unwrap();
    drop(quick_tx);
    assert_eq!(quick.await.unwrap().unwrap().status(), StatusCode::CREATED);
    let resp = stuck.await.unwrap().unwrap();
    assert_problem(resp, StatusCode::SERVICE_UNAVAILABLE, "service_unavailable").await;
    app.stopped().await;
    app.assert_left_with(account.id, 1).await;
}

#[tokio::test]
async fn the_reaper_removes_every_object_a_batch_lease_tracks() {
    let app = spawn_app().await;
    let (account, _) = app.account_with_key("starter").await;
    // One file being received, two whose PUTs were in flight.
    let receiving = format!("u/{}/receiving", account.id);
    let finishing = [
        format!("u/{}/finishing-1", account.id),
        format!("u/{}/finishing-2", account.id),
    ];
    for key in std::iter::once(&receiving).chain(&finishing) {
        app.state
            .store
            .put(key, bytes::Bytes::from_static(b"partial"), "image/png")
            .await
            .unwrap();
    }
    let lease = app
        .plant_lease(account.id, 1000, &[("object_key", &receiving)], "-1 second")
        .await;
    sqlx::query("UPDATE upload_leases SET finishing_keys = $2 WHERE id = $1")
        .bind(lease)
        .bind(&finishing[..])
        .execute(&app.state.db)
        .await
        .unwrap();
    let (leases, _) = intake::reap(&app.state).await.unwrap();
    assert_eq!(leases, 1);
    assert_eq!(app.holdings(account.id).await, Holdings::NOTHING);
    assert!(app.objects(account.id).await.is_empty());
}

#[tokio::test]
async fn invisible_format_characters_leave_filenames() {
    let app = spawn_app().await;
    let (_, key) = app.account_with_key("starter").await;
    // A bidi override shows "photo\u{202e}gnp.exe" as "photoexe.png"; a
    // zero-width space hides a second extension.
    let resp = app
        .upload(
            &key,
            "photo\u{202e}gnp.exe\u{200b}.png",
            "image/png",
            &fixtures::png(100),
        )
        .await;
    assert_eq!(resp.status(), StatusCode::CREATED);
    let file: Value = resp.json().await.unwrap();
    assert_eq!(file["filename"], "photognp.exe.png");
    let listed: Value = app
        .get("/files")
        .bearer_auth(&key)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(listed["files"][0]["filename"], "photognp.exe.png");
}

#[tokio::test]
async fn a_big_refused_file_in_a_batch_leaves_one_result_per_part() {
    let app = spawn_app().await;
    let (account, key) = app.account_with_key("starter").await;
    // The exe is refused on its first bytes; the 3 MiB after them must be
    // skipped as file data, not counted as the next part's headers.
    let form = Form::new()
        .part(
            "files",
            "setup.exe",
            "application/octet-stream",
            &fixtures::elf(3 * MIB),
        )
        .part("files", "a.png", "image/png", &fixtures::png(1000))
        .part("files", "b.pdf", "application/pdf", &fixtures::pdf(2000));
    let resp = app.upload_form("/upload/stream-batch", &key, form).await;
    assert_eq!(resp.status(), StatusCode::OK);
    let body: Value = resp.json().await.unwrap();
    let statuses: Vec<u64> = body["results"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["status"].as_u64().unwrap())
        .collect();
    assert_eq!(statuses, [415, 201, 201], "{body}");
    assert_eq!(
        body["results"][0]["error"]["code"],
        "unsupported_media_type"
    );
    app.assert_left_with(account.id, 2).await;
}

/// Sends `head` and `body` on a raw connection and returns the answer's
/// status, reading at most `bound` for it.
async fn raw_request(app: &crate::helpers::TestApp, head: String, body: &[u8]) -> u16 {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(app.socket_addr())
        .await
        .unwrap();
    stream.write_all(head.as_bytes()).await.unwrap();
    // The server may answer (and close) before it has read everything.
    let _ = stream.write_all(body).await;
    let mut seen = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(20), async {
        let mut buf = [0u8; 4096];
        while !seen.windows(4).any(|w| w == b"\r\n\r\n") {
            match stream.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => seen.extend_from_slice(&buf[..n]),
            }
        }
    })
    .await;
    assert!(read.is_ok(), "the server answered without waiting for more");
    let text = String::from_utf8_lossy(&seen);
    text.split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0)
}

fn upload_head(app: &crate::helpers::TestApp, key: &str, form: &Form, len: usize) -> String {
    format!(
        "POST /upload/stream HTTP/1.1\r\nHost: {}\r\nAuthorization: Bearer {key}\r\n\
         Content-Type: {}\r\nContent-Length: {len}\r\n\r\n",
        app.socket_addr(),
        form.content_type()
    )
}

#[tokio::test]
async fn a_body_other_than_its_length_announces_is_refused_and_keeps_nothing() {
    let app = spawn_app().await;
    let (account, key) = app.account_with_key("starter").await;
    let form = Form::new()
        .part("file", "a.png", "image/png", &fixtures::png(3 * MIB))
        .finish();
    // Longer than announced: the announced length ends inside the file, so
    // the file runs past the length left for it.
    let short_len = form.body.len() - 10;
    let head = upload_head(&app, &key, &form, short_len);
    assert_eq!(raw_request(&app, head, &form.body).await, 400);
    // Shorter than announced: the file ends before the length left for
    // it, and the answer does not wait for the bytes that never come.
    let head = upload_head(&app, &key, &form, form.body.len() + 10);
    assert_eq!(raw_request(&app, head, &form.body).await, 400);
    // An ending other than the closing delimiter and CRLF is refused too.
    let mut other = form.body.clone();
    other.extend_from_slice(b"epilogue");
    let head = upload_head(&app, &key, &form, other.len());
    assert_eq!(raw_request(&app, head, &other).await, 400);

    assert_eq!(app.settled(account.id).await, Holdings::NOTHING);
    assert!(app.objects(account.id).await.is_empty());
    // The same body, as announced, is stored.
    let head = upload_head(&app, &key, &form, form.body.len());
    assert_eq!(raw_request(&app, head, &form.body).await, 201);
    assert_eq!(
        app.settled(account.id).await,
        Holdings::stored(1, 3 * MIB as i64)
    );
}

#[tokio::test]
async fn a_second_part_after_a_big_file_keeps_nothing() {
    let app = spawn_app().await;
    let (account, key) = app.account_with_key("starter").await;
    let two = Form::new()
        .part("file", "a.mp4", "video/mp4", &fixtures::mp4(12 * MIB))
        .part("file", "b.png", "image/png", &fixtures::png(100))
        .finish();
    let resp = app
        .post("/upload/stream")
        .bearer_auth(&key)
        .header("content-type", two.content_type())
        .body(two.body)
        .send()
        .await
        .unwrap();
    assert_problem(resp, StatusCode::BAD_REQUEST, "invalid_request").await;
    assert_eq!(app.settled(account.id).await, Holdings::NOTHING);
    assert!(app.objects(account.id).await.is_empty());
}

#[tokio::test]
async fn a_client_gone_mid_file_of_a_known_length_keeps_nothing() {
    let app = spawn_app().await;
    let (account, key) = app.account_with_key("starter").await;
    let head = part_head("gone", "file", "movie.mp4", "video/mp4");
    let data = fixtures::mp4(20 * MIB);
    let (tx, body) = channel_body();
    let request = tokio::spawn(
        app.post("/upload/stream")
            .bearer_auth(&key)
            .header("content-type", "multipart/form-data; boundary=gone")
            .header("content-length", head.len() + data.len() + 12)
            .body(body)
            .send(),
    );
    tx.send(Ok(head)).await.unwrap();
    for chunk in data[..8 * MIB].chunks(256 * 1024) {
        tx.send(Ok(chunk.to_vec())).await.unwrap();
    }
    // The server holds the reservation of the whole file while it streams.
    crate::helpers::eventually("the whole file is reserved", || async {
        app.holdings(account.id).await.reserved == 20 * MIB as i64
    })
    .await;
    tx.send(Err(std::io::Error::other("client gone")))
        .await
        .unwrap();
    drop(tx);
    assert!(request.await.unwrap().is_err(), "the client gave up");
    assert_eq!(app.settled(account.id).await, Holdings::NOTHING);
    assert!(app.objects(account.id).await.is_empty());
}

/// A read that ends exactly where the file's bytes do makes the multipart
/// reader hand out an empty last chunk once the closing delimiter comes. The
/// file's single PUT has had all its bytes by then and may have ended: the
/// upload still succeeds (it used to fail with 500 now and then).
#[tokio::test]
async fn a_closing_delimiter_after_storage_has_the_file_still_stores_it() {
    let app = spawn_app().await;
    let (account, key) = app.account_with_key("starter").await;
    let head = part_head("late", "file", "notes.txt", "text/plain");
    // No CR in the text, so the reader holds nothing back for a delimiter.
    let data = b"the quick brown fox jumps over the lazy dog\n".repeat(24_000);
    let closing = b"\r\n--late--\r\n".to_vec();
    let (tx, body) = channel_body();
    let request = tokio::spawn(
        app.post("/upload/stream")
            .bearer_auth(&key)
            .header("content-type", "multipart/form-data; boundary=late")
            .header("content-length", head.len() + data.len() + closing.len())
            .body(body)
            .send(),
    );
    tx.send(Ok(head)).await.unwrap();
    tx.send(Ok(data.clone())).await.unwrap();
    crate::helpers::eventually("storage has the file's bytes", || async {
        !app.objects(account.id).await.is_empty()
    })
    .await;
    tx.send(Ok(closing)).await.unwrap();
    drop(tx);
    let resp = request.await.unwrap().unwrap();
    assert_eq!(resp.status(), StatusCode::CREATED);
    let file: Value = resp.json().await.unwrap();
    assert_eq!(file["size"], data.len());
    assert_eq!(app.download(&key, file["id"].as_str().unwrap()).await, data);
    assert_eq!(
        app.settled(account.id).await,
        Holdings::stored(1, data.len() as i64)
    );
}

#[tokio::test]
async fn a_body_that_starts_otherwise_still_uploads_in_parts() {
    let app = spawn().var("UPLOAD_PART_BYTES", "5242880").start().await;
    let (account, key) = app.account_with_key("starter").await;
    let data = fixtures::mp4(6 * MIB);
    let form = Form::new()
        .part("file", "a.mp4", "video/mp4", &data)
        .finish();
    // A preamble before the first delimiter: the file's length is not read
    // off the body, so it goes through the multipart writer.
    let mut body = b"a preamble\r\n".to_vec();
    body.extend_from_slice(&form.body);
    let resp = app
        .post("/upload/stream")
        .bearer_auth(&key)
        .header("content-type", form.content_type())
        .body(body)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::CREATED);
    let file: Value = resp.json().await.unwrap();
    assert_eq!(file["size"], 6 * MIB);
    assert_eq!(app.download(&key, file["id"].as_str().unwrap()).await, data);
    assert_eq!(
        app.settled(account.id).await,
        Holdings::stored(1, 6 * MIB as i64)
    );
}
