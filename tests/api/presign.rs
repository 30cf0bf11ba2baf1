//! Presigned uploads: URLs a client uses as a user would (plain HTTP PUTs),
//! with every limit held from issue to completion, abort or expiry.

use reqwest::{Method, StatusCode};
use serde_json::{Value, json};
use sha2::{Digest, Sha256};

use crate::helpers::{
    Backend, Holdings, MIB, assert_problem,
    clients::presign::{abort, complete, issue, presign, put, put_answer, put_parts},
    fixtures, past, spawn, spawn_app,
};

#[tokio::test]
async fn a_single_put_upload_completes_into_a_file_on_both_backends() {
    for backend in [Backend::S3, Backend::Fs] {
        let app = spawn().backend(backend).start().await;
        let (account, key) = app.account_with_key("starter").await;
        let data = fixtures::png(300_000);
        let sha = hex::encode(Sha256::digest(&data));
        let resp = presign(&app, &key, json!({"filename": "a.png", "content_type": "image/png", "size": data.len(), "sha256": sha})).await;
        assert_eq!(resp.status(), StatusCode::CREATED, "{backend:?}");
        let issued: Value = resp.json().await.unwrap();
        assert_eq!(issued["method"], "PUT");
        // Counted from issue: the bytes are reserved, the slot held.
        let usage: Value = app
            .get("/usage")
            .bearer_auth(&key)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        assert_eq!(usage["usage"]["storage_bytes"]["reserved"], data.len());
        assert_eq!(usage["usage"]["concurrent_uploads"]["active"], 1);

        let status = put(
            issued["url"].as_str().unwrap(),
            &issued["headers"],
            data.clone(),
        )
        .await;
        assert!(status.is_success(), "{backend:?}: {status}");
        let id = issued["upload_id"].as_str().unwrap();
        let resp = complete(&app, &key, id, json!({})).await;
        assert_eq!(resp.status(), StatusCode::CREATED, "{backend:?}");
        let file: Value = resp.json().await.unwrap();
        assert_eq!(file["size"], data.len());
        assert_eq!(file["sha256"], sha);
        assert_eq!(file["id"], id);
        // Completing twice answers the same file.
        let again: Value = complete(&app, &key, id, json!({}))
            .await
            .json()
            .await
            .unwrap();
        assert_eq!(again["id"], id);
        let size = data.len() as i64;
        assert_eq!(app.settled(account.id).await, Holdings::stored(1, size));
        assert_eq!(app.download(&key, id).await, data);
    }
}

#[tokio::test]
async fn storage_refuses_other_bytes_other_lengths_and_expired_urls() {
    let app = spawn().var("PRESIGN_EXPIRY_SECS", "2").start().await;
    let (_, key) = app.account_with_key("starter").await;
    let data = fixtures::pdf(10_000);
    let sha = hex::encode(Sha256::digest(&data));
    let issued: Value = issue(&app, &key, json!({"filename": "r.pdf", "content_type": "application/pdf", "size": data.len(), "sha256": sha})).await;
    let url = issued["url"].as_str().unwrap();
    let mut tampered = data.clone();
    tampered[500] ^= 1;
    // The S3 test server does not check a part's checksum (completion
    // checks the stored bytes against it instead); AWS S3 and Garage do.
    assert_eq!(
        put(url, &issued["headers"], tampered)
            .await
            .is_client_error(),
        crate::helpers::s3_store() != "s3s-fs"
    );
    assert!(
        put(url, &issued["headers"], data[..9_000].to_vec())
            .await
            .is_client_error()
    );
    // An expired URL is refused too (a fresh upload, left to expire).
    let issued: Value = issue(&app, &key, json!({"filename": "r.pdf", "content_type": "application/pdf", "size": data.len(), "sha256": sha})).await;
    past(expires_at(&issued), std::time::Duration::from_secs(1)).await;
    assert!(
        put(
            issued["url"].as_str().unwrap(),
            &issued["headers"],
            data.clone()
        )
        .await
        .is_client_error(),
        "expired"
    );
    let resp = complete(&app, &key, issued["upload_id"].as_str().unwrap(), json!({})).await;
    assert_problem(resp, StatusCode::GONE, "gone").await;
}

#[tokio::test]
async fn multipart_uploads_complete_from_their_parts() {
    let app = spawn_app().await;
    let (account, key) = app.account_with_key("starter").await;
    let data = fixtures::mp4(9 * MIB + 123);
    let issued: Value = issue(&app, &key, json!({"filename": "v.mp4", "content_type": "video/mp4", "size": data.len(), "multipart": true})).await;
    let part = issued["part_size"].as_u64().unwrap() as usize;
    assert_eq!(part, 8 * MIB);
    let parts = issued["parts"].as_array().unwrap();
    assert_eq!(parts.len(), 2);
    let etags = put_parts(&issued, &data).await;
    let id = issued["upload_id"].as_str().unwrap();
    let resp = complete(&app, &key, id, json!({"parts": etags})).await;
    assert_eq!(
        resp.status(),
        StatusCode::CREATED,
        "{}",
        resp.text().await.unwrap()
    );
    let file: Value = resp.json().await.unwrap();
    assert_eq!(file["size"], data.len());
    assert!(file["sha256"].is_null(), "no sha256 was declared");
    let size = data.len() as i64;
    assert_eq!(app.settled(account.id).await, Holdings::stored(1, size));
}

#[tokio::test]
async fn a_wrong_etag_or_a_missing_part_keeps_nothing() {
    let app = spawn_app().await;
    let (account, key) = app.account_with_key("starter").await;
    let data = fixtures::mp4(9 * MIB);
    for wrong in ["etag", "missing", "extra"] {
        let issued: Value = issue(&app, &key, json!({"filename": "v.mp4", "content_type": "video/mp4", "size": data.len(), "multipart": true})).await;
        let mut etags = put_parts(&issued, &data).await;
        if wrong == "etag" {
            etags[0]["etag"] = json!("\"00000000000000000000000000000000\"");
        } else if wrong == "missing" {
            etags.pop();
        } else {
            etags.push(json!({"part_number": 3, "etag": "\"0000\""}));
        }
        let resp = complete(
            &app,
            &key,
            issued["upload_id"].as_str().unwrap(),
            json!({"parts": etags}),
        )
        .await;
        assert_problem(
            resp,
            StatusCode::UNPROCESSABLE_ENTITY,
            "upload_verification_failed",
        )
        .await;
    }
    assert_eq!(app.settled(account.id).await, Holdings::NOTHING);
    assert!(app.objects(account.id).await.is_empty());
}

#[tokio::test]
async fn bytes_of_another_type_fail_verification_and_give_everything_back() {
    for backend in [Backend::S3, Backend::Fs] {
        let app = spawn().backend(backend).start().await;
        let (account, key) = app.account_with_key("starter").await;
        let pdf = fixtures::pdf(5_000);
        let issued: Value = issue(
            &app,
            &key,
            json!({"filename": "p.png", "content_type": "image/png", "size": pdf.len()}),
        )
        .await;
        assert!(
            put(issued["url"].as_str().unwrap(), &issued["headers"], pdf)
                .await
                .is_success()
        );
        let id = issued["upload_id"].as_str().unwrap();
        let resp = complete(&app, &key, id, json!({})).await;
        assert_problem(
            resp,
            StatusCode::UNPROCESSABLE_ENTITY,
            "upload_verification_failed",
        )
        .await;
        assert_eq!(
            app.settled(account.id).await,
            Holdings::NOTHING,
            "{backend:?}"
        );
        assert!(app.objects(account.id).await.is_empty(), "{backend:?}");
        let again = complete(&app, &key, id, json!({})).await;
        assert_problem(again, StatusCode::GONE, "gone").await;
    }
}

#[tokio::test]
async fn quota_and_slots_count_from_issue_and_come_back_on_abort_and_expiry() {
    let app = spawn().var("PRESIGN_EXPIRY_SECS", "1").start().await;
    let (account, key) = app.account_with_key("starter").await;
    let before = app.metrics().await;
    app.patch_account(
        account.id,
        json!({"custom_limits": {"storage_bytes": 3 * MIB, "concurrent_uploads": 2}}),
    )
    .await;
    let body =
        |size: usize| json!({"filename": "v.mp4", "content_type": "video/mp4", "size": size});
    let first: Value = presign(&app, &key, body(2 * MIB))
        .await
        .json()
        .await
        .unwrap();
    let resp = presign(&app, &key, body(2 * MIB)).await;
    assert_problem(
        resp,
        StatusCode::INSUFFICIENT_STORAGE,
        "storage_quota_exceeded",
    )
    .await;
    let second: Value = presign(&app, &key, body(MIB)).await.json().await.unwrap();
    assert!(second["upload_id"].is_string());
    let resp = presign(&app, &key, body(1)).await;
    assert_problem(
        resp,
        StatusCode::TOO_MANY_REQUESTS,
        "concurrent_upload_limit",
    )
    .await;

    // Abort gives the bytes and the slot back.
    let resp = app
        .request(
            Method::DELETE,
            &format!("/upload/presigned/{}", first["upload_id"].as_str().unwrap()),
        )
        .bearer_auth(&key)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::NO_CONTENT);
    assert_eq!(app.holdings(account.id).await.reserved, MIB as i64);
    // The freed slot takes a new upload; then both slots are taken again.
    let third = presign(&app, &key, body(1)).await;
    assert_eq!(third.status(), StatusCode::CREATED);
    let resp = presign(&app, &key, body(1)).await;
    assert_problem(
        resp,
        StatusCode::TOO_MANY_REQUESTS,
        "concurrent_upload_limit",
    )
    .await;
    // Expiry too, once the reaper runs (two at once end it once).
    sqlx::query("UPDATE upload_leases SET expires_at = now() - interval '1 second'")
        .execute(&app.state.db)
        .await
        .unwrap();
    let (a, b) = tokio::join!(intake::reap(&app.state), intake::reap(&app.state));
    assert_eq!(a.unwrap().0 + b.unwrap().0, 2);
    assert_eq!(app.holdings(account.id).await, Holdings::NOTHING);
    // Other tests only add to these counters: each grew at least by what
    // this test did (three uploads issued, two leases reaped).
    let after = app.metrics().await;
    assert!(after.grew(&before, "intake_presigned_issued_total", &[]) >= 3.0);
    assert!(after.grew(&before, "intake_reaped_leases_total", &[]) >= 2.0);
    sqlx::query("UPDATE presigned_uploads SET expires_at = now() - interval '1 second'")
        .execute(&app.state.db)
        .await
        .unwrap();
    let resp = complete(&app, &key, second["upload_id"].as_str().unwrap(), json!({})).await;
    assert_problem(resp, StatusCode::GONE, "gone").await;
}

#[tokio::test]
async fn bad_presign_requests_are_refused_and_keep_nothing() {
    let app = spawn_app().await;
    let (account, key) = app.account_with_key("starter").await;
    for (body, status, code) in [
        (
            json!({"filename": "a.png", "content_type": "image/png", "size": -5}),
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_request",
        ),
        (
            json!({"filename": "a.png", "content_type": "image/png", "size": 0}),
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_request",
        ),
        (
            json!({"filename": "a.png", "content_type": "image/png", "size": 1e30}),
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_request",
        ),
        (
            json!({"filename": "a.png", "content_type": "image/png", "size": 51 * MIB}),
            StatusCode::PAYLOAD_TOO_LARGE,
            "file_too_large",
        ),
        (
            json!({"filename": "a.bin", "content_type": "application/x-msdownload", "size": 10}),
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "unsupported_media_type",
        ),
        (
            json!({"filename": "a.pdf", "content_type": "image/png", "size": 10}),
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "type_mismatch",
        ),
        (
            json!({"filename": "a.png", "content_type": "image/png", "size": 10, "sha256": "xyz"}),
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_request",
        ),
    ] {
        let resp = presign(&app, &key, body.clone()).await;
        assert_problem(resp, status, code).await;
    }
    assert_eq!(app.settled(account.id).await, Holdings::NOTHING);
    // Another account's upload is not found.
    let issued: Value = issue(
        &app,
        &key,
        json!({"filename": "a.png", "content_type": "image/png", "size": 10}),
    )
    .await;
    let (_, other) = app.account_with_key("starter").await;
    let resp = complete(
        &app,
        &other,
        issued["upload_id"].as_str().unwrap(),
        json!({}),
    )
    .await;
    assert_problem(resp, StatusCode::NOT_FOUND, "not_found").await;
    let resp = app
        .request(
            Method::DELETE,
            &format!(
                "/upload/presigned/{}",
                issued["upload_id"].as_str().unwrap()
            ),
        )
        .bearer_auth(&other)
        .send()
        .await
        .unwrap();
    assert_problem(resp, StatusCode::NOT_FOUND, "not_found").await;
}

#[tokio::test]
async fn the_local_data_route_checks_its_signature() {
    let app = spawn().backend(Backend::Fs).start().await;
    let (_, key) = app.account_with_key("starter").await;
    let data = fixtures::png(1000);
    let issued: Value = issue(
        &app,
        &key,
        json!({"filename": "a.png", "content_type": "image/png", "size": data.len()}),
    )
    .await;
    let url = issued["url"].as_str().unwrap();
    let parsed = url::Url::parse(url).unwrap();
    assert!(
        parsed.path().starts_with("/upload/presigned/") && parsed.path().ends_with("/data"),
        "{url}"
    );
    assert_eq!(
        Some(parsed.port().unwrap()),
        url::Url::parse(&app.addr).unwrap().port()
    );
    let forged = url.replace("signature=", "signature=x");
    assert_eq!(
        put(&forged, &issued["headers"], data.clone()).await,
        StatusCode::FORBIDDEN
    );
    assert_eq!(
        put(url, &issued["headers"], data[..10].to_vec()).await,
        StatusCode::BAD_REQUEST
    );
    assert_eq!(put(url, &issued["headers"], data).await, StatusCode::OK);
}

#[tokio::test]
async fn urls_name_the_public_endpoint_when_clients_reach_storage_elsewhere() {
    let proxy = crate::helpers::Relay::to(&crate::helpers::env("TEST_S3_ENDPOINT")).await;
    let app = spawn().var("S3_PUBLIC_ENDPOINT", &proxy.addr).start().await;
    let (_, key) = app.account_with_key("starter").await;
    let data = fixtures::png(2_000);
    let issued: Value = issue(
        &app,
        &key,
        json!({"filename": "a.png", "content_type": "image/png", "size": data.len()}),
    )
    .await;
    let url = issued["url"].as_str().unwrap();
    assert!(url.starts_with(&proxy.addr), "{url}");
    assert!(put(url, &issued["headers"], data).await.is_success());
    let resp = complete(&app, &key, issued["upload_id"].as_str().unwrap(), json!({})).await;
    assert_eq!(resp.status(), StatusCode::CREATED);
}

/// The `expires_at` of an issued upload.
fn expires_at(issued: &Value) -> chrono::DateTime<chrono::Utc> {
    issued["expires_at"].as_str().unwrap().parse().unwrap()
}

/// What bytes sent through the URL of an upload that has ended get: the
/// local folder's data route refuses them itself (403 `forbidden`); on S3
/// the URL is a part of a multipart upload that no longer exists, which
/// s3s-fs refuses with 403 `AccessDenied` and AWS S3 and Garage with 404
/// `NoSuchUpload`.
fn refusal(backend: Backend) -> (StatusCode, Option<&'static str>) {
    match backend {
        Backend::Fs => (StatusCode::FORBIDDEN, Some("forbidden")),
        Backend::S3 if crate::helpers::s3_store() == "s3s-fs" => {
            (StatusCode::FORBIDDEN, Some("AccessDenied"))
        }
        Backend::S3 => (StatusCode::NOT_FOUND, Some("NoSuchUpload")),
    }
}

/// The URL and headers of a single upload, or of the last part of a
/// multipart one, with the bytes that URL takes.
fn last_url(issued: &Value, data: &[u8]) -> (String, Value, Vec<u8>) {
    match issued["parts"].as_array() {
        Some(parts) => {
            let part = issued["part_size"].as_u64().unwrap() as usize;
            let last = parts.last().unwrap();
            let from = (parts.len() - 1) * part;
            (
                last["url"].as_str().unwrap().to_owned(),
                json!({}),
                data[from..].to_vec(),
            )
        }
        None => (
            issued["url"].as_str().unwrap().to_owned(),
            issued["headers"].clone(),
            data.to_vec(),
        ),
    }
}

#[tokio::test]
async fn a_url_dies_with_its_aborted_upload_and_the_bucket_holds_nothing() {
    for (backend, multipart) in [
        (Backend::S3, false),
        (Backend::S3, true),
        (Backend::Fs, false),
    ] {
        let app = spawn().backend(backend).start().await;
        let (account, key) = app.account_with_key("starter").await;
        let data = fixtures::mp4(if multipart { 9 * MIB } else { 20_000 });
        let issued: Value = issue(&app, &key, json!({"filename": "v.mp4", "content_type": "video/mp4", "size": data.len(), "multipart": multipart})).await;
        let id = issued["upload_id"].as_str().unwrap();
        let (url, headers, bytes) = last_url(&issued, &data);
        // Bytes sent while the upload lives are taken, then the upload ends.
        let (status, _) = put_answer(&url, &headers, bytes.clone()).await;
        assert!(status.is_success(), "{backend:?}: {status}");
        let resp = abort(&app, &key, id).await;
        assert_eq!(resp.status(), StatusCode::NO_CONTENT);

        // Storage itself refuses what comes through the URL after that.
        let (status, code) = put_answer(&url, &headers, bytes).await;
        assert_eq!(
            (status, code.as_deref()),
            refusal(backend),
            "{backend:?} multipart {multipart}"
        );
        let resp = complete(&app, &key, id, json!({})).await;
        assert_problem(resp, StatusCode::GONE, "gone").await;
        assert_eq!(app.settled(account.id).await, Holdings::NOTHING);
        assert_eq!(
            app.every_object().await,
            Vec::<String>::new(),
            "{backend:?} multipart {multipart}"
        );
    }
}

#[tokio::test]
async fn a_url_dies_with_its_completed_upload_and_the_bucket_holds_only_the_file() {
    for (backend, multipart) in [
        (Backend::S3, false),
        (Backend::S3, true),
        (Backend::Fs, false),
    ] {
        let app = spawn().backend(backend).start().await;
        let (account, key) = app.account_with_key("starter").await;
        let data = fixtures::mp4(if multipart { 9 * MIB } else { 20_000 });
        let issued: Value = issue(&app, &key, json!({"filename": "v.mp4", "content_type": "video/mp4", "size": data.len(), "multipart": multipart})).await;
        let id = issued["upload_id"].as_str().unwrap();
        let parts = if multipart {
            json!({"parts": put_parts(&issued, &data).await})
        } else {
            assert!(
                put(
                    issued["url"].as_str().unwrap(),
                    &issued["headers"],
                    data.clone()
                )
                .await
                .is_success()
            );
            json!({})
        };
        let resp = complete(&app, &key, id, parts.clone()).await;
        assert_eq!(resp.status(), StatusCode::CREATED, "{backend:?}");
        let file: Value = resp.json().await.unwrap();

        // Other bytes of the signed length, through the URL: refused.
        let (url, headers, mut bytes) = last_url(&issued, &data);
        let last = bytes.len() - 1;
        bytes[last] ^= 1;
        let (status, code) = put_answer(&url, &headers, bytes).await;
        assert_eq!(
            (status, code.as_deref()),
            refusal(backend),
            "{backend:?} multipart {multipart}"
        );
        // The file is as completed, and answered so again.
        let again: Value = complete(&app, &key, id, parts).await.json().await.unwrap();
        assert_eq!(again, file, "{backend:?}");
        assert_eq!(app.download(&key, id).await, data, "{backend:?}");
        assert_eq!(
            app.settled(account.id).await,
            Holdings::stored(1, data.len() as i64)
        );
        assert_eq!(
            app.every_object().await,
            vec![format!("u/{}/{id}", account.id)],
            "{backend:?} multipart {multipart}: the file and nothing else"
        );
    }
}

#[tokio::test]
async fn a_url_dies_with_its_failed_upload_and_the_bucket_holds_nothing() {
    for backend in [Backend::S3, Backend::Fs] {
        let app = spawn().backend(backend).start().await;
        let (account, key) = app.account_with_key("starter").await;
        // PDF bytes declared a PNG: verification fails.
        let pdf = fixtures::pdf(20_000);
        let issued: Value = issue(
            &app,
            &key,
            json!({"filename": "c.png", "content_type": "image/png", "size": pdf.len()}),
        )
        .await;
        let url = issued["url"].as_str().unwrap();
        assert!(put(url, &issued["headers"], pdf).await.is_success());
        let id = issued["upload_id"].as_str().unwrap();
        let resp = complete(&app, &key, id, json!({})).await;
        assert_problem(
            resp,
            StatusCode::UNPROCESSABLE_ENTITY,
            "upload_verification_failed",
        )
        .await;

        let (status, code) = put_answer(url, &issued["headers"], fixtures::png(20_000)).await;
        assert_eq!((status, code.as_deref()), refusal(backend), "{backend:?}");
        assert_eq!(app.settled(account.id).await, Holdings::NOTHING);
        assert_eq!(
            app.every_object().await,
            Vec::<String>::new(),
            "{backend:?}"
        );
    }
}

/// An account that issues an upload, aborts it (its reservation and slot
/// come back at once) and sends the bytes through the URL anyway, twenty
/// times over: storage refuses every PUT, so no byte is stored against
/// nothing, and the bucket holds the account's files and nothing else.
#[tokio::test]
async fn an_abort_and_put_loop_parks_no_bytes_in_storage() {
    for backend in [Backend::S3, Backend::Fs] {
        let app = spawn().backend(backend).start().await;
        let (account, key) = app.account_with_key("starter").await;
        // As with a session, which has no per-minute limit.
        app.patch_account(
            account.id,
            json!({"custom_limits": {"requests_per_minute": 1000}}),
        )
        .await;
        let kept = app
            .upload(&key, "kept.png", "image/png", &fixtures::png(1_000))
            .await;
        assert_eq!(kept.status(), StatusCode::CREATED);
        let kept: Value = kept.json().await.unwrap();
        let data = fixtures::mp4(256 * 1024);
        for round in 0..20 {
            let issued: Value = issue(
                &app,
                &key,
                json!({"filename": "v.mp4", "content_type": "video/mp4", "size": data.len()}),
            )
            .await;
            let id = issued["upload_id"].as_str().unwrap();
            assert_eq!(abort(&app, &key, id).await.status(), StatusCode::NO_CONTENT);
            let (status, code) = put_answer(
                issued["url"].as_str().unwrap(),
                &issued["headers"],
                data.clone(),
            )
            .await;
            assert_eq!(
                (status, code.as_deref()),
                refusal(backend),
                "{backend:?} round {round}"
            );
        }
        assert_eq!(app.settled(account.id).await, Holdings::stored(1, 1_000));
        assert_eq!(
            app.every_object().await,
            vec![format!("u/{}/{}", account.id, kept["id"].as_str().unwrap())],
            "{backend:?}: nothing but files"
        );
    }
}

/// A request that completed the upload in storage and then died before it
/// recorded the file (its claim lapses), or lost storage's answer (it gave
/// its claim back): the next complete finds the object in place and
/// records it, so the upload is not lost.
#[tokio::test]
async fn a_completion_cut_off_after_storage_completed_is_finished_by_the_next() {
    for (multipart, left) in [
        (false, "completing"),
        (true, "completing"),
        (false, "pending"),
    ] {
        let app = spawn_app().await;
        let (account, key) = app.account_with_key("starter").await;
        let data = fixtures::mp4(9 * MIB);
        let issued: Value = issue(&app, &key, json!({"filename": "v.mp4", "content_type": "video/mp4", "size": data.len(), "multipart": multipart})).await;
        let id = issued["upload_id"].as_str().unwrap();
        let object = format!("u/{}/{id}", account.id);
        let upload_id: String = sqlx::query_scalar(
            "SELECT multipart_upload_id FROM presigned_uploads WHERE id = $1::uuid",
        )
        .bind(id)
        .fetch_one(&app.state.db)
        .await
        .unwrap();
        let parts = if multipart {
            let parts = put_parts(&issued, &data).await;
            let given: Vec<(i32, String)> = parts
                .iter()
                .map(|p| {
                    (
                        p["part_number"].as_i64().unwrap() as i32,
                        p["etag"].as_str().unwrap().to_owned(),
                    )
                })
                .collect();
            app.state
                .store
                .complete_multipart(&object, &upload_id, &given)
                .await
                .unwrap();
            json!({"parts": parts})
        } else {
            assert!(
                put(
                    issued["url"].as_str().unwrap(),
                    &issued["headers"],
                    data.clone()
                )
                .await
                .is_success()
            );
            app.state
                .store
                .complete_parts(&object, &upload_id, 1, data.len() as u64)
                .await
                .unwrap();
            json!({})
        };
        // The request that did that died holding the claim, which lapsed,
        // or gave it back.
        sqlx::query(
            "UPDATE presigned_uploads SET state = $2,
                    claimed_until = now() - interval '1 second' WHERE id = $1::uuid",
        )
        .bind(id)
        .bind(left)
        .execute(&app.state.db)
        .await
        .unwrap();

        let resp = complete(&app, &key, id, parts).await;
        assert_eq!(
            resp.status(),
            StatusCode::CREATED,
            "multipart {multipart}, left {left}"
        );
        assert_eq!(app.download(&key, id).await, data);
        assert_eq!(
            app.settled(account.id).await,
            Holdings::stored(1, data.len() as i64)
        );
        assert_eq!(app.every_object().await, vec![object]);
    }
}

#[tokio::test]
async fn concurrent_completes_of_one_upload_all_answer_the_same_file() {
    let app = spawn_app().await;
    let (account, key) = app.account_with_key("starter").await;
    let data = fixtures::mp4(17 * MIB);
    let issued: Value = issue(&app, &key, json!({"filename": "v.mp4", "content_type": "video/mp4", "size": data.len(), "multipart": true})).await;
    let parts = json!({"parts": put_parts(&issued, &data).await});
    let id = issued["upload_id"].as_str().unwrap();
    let (a, b, c) = tokio::join!(
        complete(&app, &key, id, parts.clone()),
        complete(&app, &key, id, parts.clone()),
        complete(&app, &key, id, parts.clone())
    );
    let mut ids = Vec::new();
    for resp in [a, b, c] {
        assert_eq!(resp.status(), StatusCode::CREATED);
        let file: Value = resp.json().await.unwrap();
        ids.push(file["id"].as_str().unwrap().to_owned());
    }
    assert!(ids.iter().all(|i| i == id), "{ids:?}");
    // And once more, after the fact.
    assert_eq!(
        complete(&app, &key, id, parts).await.status(),
        StatusCode::CREATED
    );
    assert_eq!(
        app.settled(account.id).await,
        Holdings::stored(1, data.len() as i64)
    );
    assert_eq!(app.objects(account.id).await.len(), 1);
    assert_eq!(app.download(&key, id).await, data);
}

#[tokio::test]
async fn a_declared_sha256_is_checked_against_the_stored_bytes() {
    let app = spawn_app().await;
    let (account, key) = app.account_with_key("starter").await;
    let data = fixtures::png(50_000);
    let sha = hex::encode(Sha256::digest(&data));
    let issued: Value = issue(&app, &key, json!({"filename": "a.png", "content_type": "image/png", "size": data.len(), "sha256": sha})).await;
    // Other bytes of the same length under the declared checksum. AWS S3
    // and Garage check a part's checksum and keep nothing; the S3 test
    // server does not check it and keeps them, which leaves intake's own
    // check of the stored bytes to refuse them.
    let mut other = data.clone();
    other[1000] ^= 1;
    let status = put(
        issued["url"].as_str().unwrap(),
        &issued["headers"],
        other.clone(),
    )
    .await;
    let checked_by_storage = crate::helpers::s3_store() != "s3s-fs";
    assert_eq!(status.is_client_error(), checked_by_storage, "{status}");
    let id = issued["upload_id"].as_str().unwrap();
    let resp = complete(&app, &key, id, json!({})).await;
    let body = assert_problem(
        resp,
        StatusCode::UNPROCESSABLE_ENTITY,
        "upload_verification_failed",
    )
    .await;
    let why = if checked_by_storage {
        "nothing was uploaded"
    } else {
        "sha256"
    };
    assert!(body["detail"].as_str().unwrap().contains(why), "{body}");
    assert_eq!(app.settled(account.id).await, Holdings::NOTHING);
    assert!(app.objects(account.id).await.is_empty());
}

#[tokio::test]
async fn a_complete_with_ten_thousand_parts_is_read_and_a_larger_body_is_problem_json() {
    let app = spawn_app().await;
    let (account, key) = app.account_with_key("enterprise").await;
    let data = fixtures::mp4(9 * MIB);
    let issued: Value = issue(&app, &key, json!({"filename": "v.mp4", "content_type": "video/mp4", "size": data.len(), "multipart": true})).await;
    let id = issued["upload_id"].as_str().unwrap();
    // 10,000 parts (about 600 KB of JSON) are read; they are not this
    // upload's parts, so completion fails verification.
    let parts: Vec<Value> = (1..=10_000)
        .map(|n| json!({"part_number": n, "etag": format!("\"{:032x}\"", n)}))
        .collect();
    let resp = complete(&app, &key, id, json!({"parts": parts})).await;
    let body = assert_problem(
        resp,
        StatusCode::UNPROCESSABLE_ENTITY,
        "upload_verification_failed",
    )
    .await;
    assert!(
        !body["detail"].as_str().unwrap().contains("object store"),
        "{body}"
    );
    // A body far past any part list is refused, as problem+json.
    let other: Value = issue(&app, &key, json!({"filename": "w.mp4", "content_type": "video/mp4", "size": data.len(), "multipart": true})).await;
    let huge = vec![b' '; 8 * MIB];
    let resp = app
        .post(&format!(
            "/upload/presigned/{}/complete",
            other["upload_id"].as_str().unwrap()
        ))
        .bearer_auth(&key)
        .header("content-type", "application/json")
        .body(huge)
        .send()
        .await
        .unwrap();
    assert_problem(resp, StatusCode::PAYLOAD_TOO_LARGE, "payload_too_large").await;
    app.request(
        Method::DELETE,
        &format!("/upload/presigned/{}", other["upload_id"].as_str().unwrap()),
    )
    .bearer_auth(&key)
    .send()
    .await
    .unwrap();
    assert_eq!(app.settled(account.id).await, Holdings::NOTHING);
}

#[tokio::test]
async fn the_signed_type_is_the_normalised_one() {
    let app = spawn_app().await;
    let (_, key) = app.account_with_key("starter").await;
    let data = fixtures::png(10_000);
    let issued: Value = issue(&app, &key, json!({"filename": "a.png", "content_type": "Image/PNG; charset=binary", "size": data.len()})).await;
    assert_eq!(issued["headers"]["content-type"], "image/png", "{issued}");
    assert!(
        put(issued["url"].as_str().unwrap(), &issued["headers"], data)
            .await
            .is_success()
    );
    let file: Value = complete(&app, &key, issued["upload_id"].as_str().unwrap(), json!({}))
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(file["content_type"], "image/png");
    let resp = presign(
        &app,
        &key,
        json!({"filename": "a.png", "content_type": "image/png\u{1}", "size": 10}),
    )
    .await;
    assert_problem(
        resp,
        StatusCode::UNSUPPORTED_MEDIA_TYPE,
        "unsupported_media_type",
    )
    .await;
}

#[tokio::test]
async fn the_local_data_route_takes_one_writer_at_a_time_and_drops_a_stalled_one() {
    let app = spawn()
        .backend(Backend::Fs)
        .var("UPLOAD_IDLE_TIMEOUT_SECS", "1")
        .start()
        .await;
    let (account, key) = app.account_with_key("starter").await;
    let data = fixtures::png(100_000);
    let issued: Value = issue(
        &app,
        &key,
        json!({"filename": "a.png", "content_type": "image/png", "size": data.len()}),
    )
    .await;
    // A writer that sends the first bytes and then nothing.
    let (tx, rx) = tokio::sync::mpsc::channel::<Result<Vec<u8>, std::io::Error>>(4);
    tx.send(Ok(data[..1000].to_vec())).await.unwrap();
    let mut stalled = reqwest::Client::new()
        .put(issued["url"].as_str().unwrap())
        .header("content-length", data.len())
        .body(reqwest::Body::wrap_stream(tokio_stream_of(rx)));
    for (name, value) in issued["headers"].as_object().unwrap() {
        if name != "content-length" {
            stalled = stalled.header(name.as_str(), value.as_str().unwrap());
        }
    }
    let stalled = tokio::spawn(stalled.send());
    // While it holds the upload, a second writer is refused.
    crate::helpers::eventually("the first writer holds the upload", || async {
        app.scalar_i64("SELECT count(*) FROM presigned_uploads WHERE writer_until > now()")
            .await
            == 1
    })
    .await;
    let url = issued["url"].as_str().unwrap().to_owned();
    let headers = issued["headers"].clone();
    assert_eq!(
        put(&url, &headers, data.clone()).await,
        StatusCode::CONFLICT
    );
    let resp = stalled.await.unwrap().unwrap();
    assert_problem(resp, StatusCode::REQUEST_TIMEOUT, "invalid_request").await;
    drop(tx);
    // Then the upload takes a writer again, and completes.
    assert!(put(&url, &headers, data.clone()).await.is_success());
    let resp = complete(&app, &key, issued["upload_id"].as_str().unwrap(), json!({})).await;
    assert_eq!(resp.status(), StatusCode::CREATED);
    assert_eq!(
        app.settled(account.id).await,
        Holdings::stored(1, data.len() as i64)
    );
}

fn tokio_stream_of(
    mut rx: tokio::sync::mpsc::Receiver<Result<Vec<u8>, std::io::Error>>,
) -> impl futures_util::Stream<Item = Result<Vec<u8>, std::io::Error>> {
    futures_util::stream::poll_fn(move |cx| rx.poll_recv(cx))
}
