//! Both storage backends: put, get, ranged get, head, delete, streamed
//! writes, presigned URLs, against the real S3 test server and a folder.

use std::time::Duration;

use bytes::Bytes;
use futures_util::TryStreamExt;
use intake::storage::{ObjectStore, PartConditions, PutConditions, StorageError};
use reqwest::StatusCode;
use sha2::{Digest, Sha256};

use crate::helpers::{Backend, MIB, Relay, TestApp, env, s3_keys, spawn};

async fn read_all(
    store: &dyn ObjectStore,
    key: &str,
    range: Option<std::ops::Range<u64>>,
) -> Vec<u8> {
    let body = store.get(key, range).await.unwrap();
    let chunks: Vec<Bytes> = body.stream.try_collect().await.unwrap();
    chunks.concat()
}

/// An app on S3 whose storage traffic goes through a proxy the test can
/// hold or cut.
async fn s3_behind_proxy() -> (Relay, TestApp) {
    let proxy = Relay::to(&env("TEST_S3_ENDPOINT")).await;
    let app = spawn()
        .backend(Backend::S3)
        .var("S3_ENDPOINT", &proxy.addr)
        .start()
        .await;
    (proxy, app)
}

fn pattern(len: usize) -> Vec<u8> {
    (0..len).map(|i| (i * 31 % 251) as u8).collect()
}

async fn both_backends() -> Vec<TestApp> {
    vec![
        spawn().backend(Backend::S3).start().await,
        spawn().backend(Backend::Fs).start().await,
    ]
}

#[tokio::test]
async fn put_get_range_head_and_delete() {
    for app in both_backends().await {
        let store = app.state.store.as_ref();
        let data = pattern(10_000);
        store
            .put(
                "u/a/one",
                Bytes::from(data.clone()),
                "application/octet-stream",
            )
            .await
            .unwrap();
        assert_eq!(
            store.head("u/a/one").await.unwrap(),
            Some(10_000),
            "{}",
            store.kind()
        );
        assert_eq!(read_all(store, "u/a/one", None).await, data);

        let ranged = store.get("u/a/one", Some(100..200)).await.unwrap();
        assert_eq!(
            (ranged.len, ranged.total_len),
            (100, 10_000),
            "{}",
            store.kind()
        );
        assert_eq!(
            read_all(store, "u/a/one", Some(100..200)).await,
            &data[100..200]
        );
        assert!(matches!(
            store.get("u/a/one", Some(20_000..20_001)).await,
            Err(StorageError::InvalidRange)
        ));

        store.delete("u/a/one").await.unwrap();
        assert_eq!(store.head("u/a/one").await.unwrap(), None);
        assert!(matches!(
            store.get("u/a/one", None).await,
            Err(StorageError::NotFound)
        ));
        store
            .delete("u/a/one")
            .await
            .expect("deleting a missing object succeeds");
    }
}

#[tokio::test]
async fn writers_stream_in_parts_and_abort_cleanly() {
    for app in both_backends().await {
        let store = app.state.store.as_ref();
        let part = 5 * MIB;
        let data = pattern(2 * part + 12_345);

        let mut writer = store.writer("u/w/big", "video/mp4", part).await.unwrap();
        for chunk in data.chunks(64 * 1024) {
            writer.write(Bytes::copy_from_slice(chunk)).await.unwrap();
        }
        assert!(
            writer.multipart_upload_id().is_some(),
            "{}: a multipart upload is under way",
            store.kind()
        );
        assert_eq!(writer.finish().await.unwrap(), data.len() as u64);
        let back = read_all(store, "u/w/big", None).await;
        assert_eq!(
            Sha256::digest(&back),
            Sha256::digest(&data),
            "{}",
            store.kind()
        );

        // A small object is one PUT.
        let mut writer = store.writer("u/w/small", "text/plain", part).await.unwrap();
        writer.write(Bytes::from_static(b"hello")).await.unwrap();
        assert_eq!(writer.finish().await.unwrap(), 5);
        assert_eq!(read_all(store, "u/w/small", None).await, b"hello");

        // Aborted after a part went out: nothing is visible.
        let mut writer = store
            .writer("u/w/aborted", "video/mp4", part)
            .await
            .unwrap();
        writer.write(Bytes::from(pattern(part + 10))).await.unwrap();
        writer.abort().await.unwrap();
        assert_eq!(store.head("u/w/aborted").await.unwrap(), None);
    }
}

#[tokio::test]
async fn writers_of_a_known_length_store_exactly_that_or_nothing() {
    for app in both_backends().await {
        let store = app.state.store.as_ref();
        let part = 5 * MIB;
        let data = pattern(part + 777);
        let len = data.len() as u64;

        let mut writer = store
            .writer_of_len("u/l/whole", "video/mp4", len, part)
            .await
            .unwrap();
        for chunk in data.chunks(64 * 1024) {
            writer.write(Bytes::copy_from_slice(chunk)).await.unwrap();
        }
        if store.kind() == "s3" {
            assert_eq!(
                writer.multipart_upload_id(),
                None,
                "one PUT, no multipart upload"
            );
        }
        assert_eq!(writer.finish().await.unwrap(), len);
        let back = read_all(store, "u/l/whole", None).await;
        assert_eq!(
            Sha256::digest(&back),
            Sha256::digest(&data),
            "{}",
            store.kind()
        );

        // Aborted halfway: nothing is visible.
        let mut writer = store
            .writer_of_len("u/l/aborted", "video/mp4", len, part)
            .await
            .unwrap();
        writer
            .write(Bytes::copy_from_slice(&data[..part]))
            .await
            .unwrap();
        writer.abort().await.unwrap();
        assert_eq!(store.head("u/l/aborted").await.unwrap(), None);
        assert_eq!(store.head("u/l/whole").await.unwrap(), Some(len));
    }
}

/// The multipart reader hands out an empty last chunk when a read ends
/// exactly where the file does; by then a PUT of a known length may have
/// taken its last byte and ended, and the empty write must not fail it.
#[tokio::test]
async fn an_empty_write_after_the_last_byte_changes_nothing() {
    for app in both_backends().await {
        let store = app.state.store.as_ref();
        let part = 5 * MIB;
        let data = pattern(300_000);
        let len = data.len() as u64;
        let mut writer = store
            .writer_of_len("u/e/exact", "text/plain", len, part)
            .await
            .unwrap();
        writer.write(Bytes::from(data.clone())).await.unwrap();
        if store.kind() == "s3" {
            // The PUT has all its bytes: storage answers it and the body
            // it read from is gone.
            crate::helpers::eventually("storage has the object", || async {
                store.head("u/e/exact").await.unwrap() == Some(len)
            })
            .await;
        }
        writer.write(Bytes::new()).await.unwrap();
        assert_eq!(writer.finish().await.unwrap(), len, "{}", store.kind());
        assert_eq!(read_all(store, "u/e/exact", None).await, data);

        let mut writer = store.writer("u/e/parts", "text/plain", part).await.unwrap();
        writer.write(Bytes::from(data.clone())).await.unwrap();
        writer.write(Bytes::new()).await.unwrap();
        assert_eq!(writer.finish().await.unwrap(), len, "{}", store.kind());
        assert_eq!(read_all(store, "u/e/parts", None).await, data);
    }
}

#[tokio::test]
async fn an_s3_put_of_a_known_length_refuses_other_lengths_and_storage_cuts() {
    let app = spawn().backend(Backend::S3).start().await;
    let store = app.state.store.as_ref();
    let data = pattern(3 * MIB);
    let len = data.len() as u64;

    // One byte more than announced is refused before it is sent.
    let mut writer = store
        .writer_of_len("u/l/long", "video/mp4", len, 5 << 20)
        .await
        .unwrap();
    writer.write(Bytes::from(data.clone())).await.unwrap();
    assert!(writer.write(Bytes::from_static(b"x")).await.is_err());
    writer.abort().await.unwrap();
    // One byte short: finishing fails and storage keeps nothing.
    let mut writer = store
        .writer_of_len("u/l/short", "video/mp4", len, 5 << 20)
        .await
        .unwrap();
    writer
        .write(Bytes::copy_from_slice(&data[1..]))
        .await
        .unwrap();
    assert!(writer.finish().await.is_err());
    assert_eq!(store.head("u/l/long").await.unwrap(), None);
    assert_eq!(store.head("u/l/short").await.unwrap(), None);

    // Storage gone mid-PUT: the writer says so.
    let (proxy, cut) = s3_behind_proxy().await;
    let store = cut.state.store.as_ref();
    let mut writer = store
        .writer_of_len("u/l/cut", "video/mp4", 64 << 20, 5 << 20)
        .await
        .unwrap();
    writer
        .write(Bytes::copy_from_slice(&data[..1 << 20]))
        .await
        .unwrap();
    proxy.cut();
    let mut failed = false;
    for chunk in data.chunks(256 * 1024).cycle().take(256) {
        if writer.write(Bytes::copy_from_slice(chunk)).await.is_err() {
            failed = true;
            break;
        }
    }
    assert!(failed, "writes fail once storage is gone");
    proxy.restore();
    assert_eq!(store.head("u/l/cut").await.unwrap(), None);
}

/// A part that fails while the writer waits for it to drain ends the write
/// with an error: a failed part sends no more bytes, so only its end can
/// wake the wait (which used to last until the client gave up).
#[tokio::test]
async fn s3_writer_waiting_on_a_part_in_flight_fails_when_the_part_does() {
    const PART: usize = 16 << 20;
    let (proxy, app) = s3_behind_proxy().await;
    let store = app.state.store.as_ref();
    let mut writer = store.writer("u/w/held", "video/mp4", PART).await.unwrap();
    let chunk = Bytes::from(pattern(256 * 1024));
    // A whole part: the multipart upload is made and its first part set off.
    let mut accepted = 0;
    while accepted < PART {
        writer.write(chunk.clone()).await.unwrap();
        accepted += chunk.len();
    }
    // Storage takes no more bytes, so the part in flight cannot drain (the
    // socket buffers on the way hold far less than a part) and a write soon
    // waits for it: one that has not returned within a second is waiting.
    proxy.hold();
    loop {
        let write = writer.write(chunk.clone());
        tokio::pin!(write);
        tokio::select! {
            written = &mut write => {
                written.unwrap();
                accepted += chunk.len();
                assert!(accepted < 2 * PART, "the writer holds at most a part");
            }
            () = tokio::time::sleep(Duration::from_secs(1)) => {
                proxy.cut();
                let written = tokio::time::timeout(Duration::from_secs(30), write)
                    .await
                    .expect("the write ends once its part has failed");
                assert!(
                    matches!(written, Err(StorageError::Unavailable(_))),
                    "{written:?}"
                );
                break;
            }
        }
    }
    drop(writer);
    proxy.restore();
    assert!(s3_keys(&app.prefix).await.is_empty());
}

#[tokio::test]
async fn s3_objects_live_under_the_configured_prefix() {
    let app = spawn().backend(Backend::S3).start().await;
    app.state
        .store
        .put("u/p/x", Bytes::from_static(b"x"), "text/plain")
        .await
        .unwrap();
    assert_eq!(
        s3_keys(&app.prefix).await,
        vec![format!("{}u/p/x", app.prefix)]
    );
}

#[tokio::test]
async fn s3_presigned_get_downloads_as_attachment_of_the_type_it_signs() {
    let app = spawn().backend(Backend::S3).start().await;
    let store = app.state.store.as_ref();
    // Whatever type storage holds for the object, the URL decides.
    store
        .put(
            "u/g/file",
            Bytes::from_static(b"presigned bytes"),
            "text/html",
        )
        .await
        .unwrap();
    let req = store
        .presign_get(
            "u/g/file",
            "report \"final\".txt",
            "text/plain",
            Duration::from_secs(60),
        )
        .await
        .unwrap();
    let resp = reqwest::get(&req.url).await.unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    assert_eq!(resp.headers()["content-type"], "text/plain");
    let disposition = resp.headers()["content-disposition"]
        .to_str()
        .unwrap()
        .to_owned();
    assert!(disposition.starts_with("attachment;"), "{disposition}");
    assert_eq!(resp.bytes().await.unwrap(), "presigned bytes");
}

#[tokio::test]
async fn s3_part_urls_bind_length_type_and_checksum_and_die_with_their_upload() {
    let app = spawn().backend(Backend::S3).start().await;
    let store = app.state.store.as_ref();
    let body = b"exactly these bytes".to_vec();
    let sha: [u8; 32] = Sha256::digest(&body).into();
    let conditions = PartConditions {
        len: body.len() as u64,
        content_type: Some("text/plain".into()),
        sha256: Some(sha),
    };
    let put = |url: String, headers: http::HeaderMap, data: Vec<u8>| async move {
        let client = reqwest::Client::new();
        let mut req = client.put(url).body(data);
        for (name, value) in headers.iter() {
            if name != http::header::CONTENT_LENGTH {
                req = req.header(name.as_str(), value.to_str().unwrap());
            }
        }
        req.send().await.unwrap().status()
    };
    let upload = store
        .create_multipart("u/s/one", "text/plain", true)
        .await
        .unwrap();
    let req = store
        .presign_upload_part("u/s/one", &upload, 1, &conditions, Duration::from_secs(60))
        .await
        .unwrap();
    assert_eq!(req.headers["content-type"], "text/plain");

    // Same length, other content: AWS S3 and Garage refuse it (the
    // checksum is bound); the S3 test server does not check a part's
    // checksum, which is why completion reads the stored bytes back.
    let mut tampered = body.clone();
    tampered[0] ^= 1;
    let status = put(req.url.clone(), req.headers.clone(), tampered).await;
    assert_eq!(
        status.is_client_error(),
        crate::helpers::s3_store() != "s3s-fs",
        "tampered bytes: {status}"
    );
    // Another length: refused.
    let status = put(req.url.clone(), req.headers.clone(), b"short".to_vec()).await;
    assert!(
        status.is_client_error(),
        "other length refused, got {status}"
    );
    // Another type: refused (the signature covers it).
    let mut other_type = req.headers.clone();
    other_type.insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static("image/png"),
    );
    let status = put(req.url.clone(), other_type, body.clone()).await;
    assert!(status.is_client_error(), "other type refused, got {status}");

    // The right bytes go through, and completing makes the object.
    let status = put(req.url.clone(), req.headers.clone(), body.clone()).await;
    assert_eq!(status, StatusCode::OK);
    store
        .complete_parts("u/s/one", &upload, 1, body.len() as u64)
        .await
        .unwrap();
    assert_eq!(read_all(store, "u/s/one", None).await, body);
    // Then the URL is dead, though unexpired.
    let status = put(req.url.clone(), req.headers.clone(), body.clone()).await;
    assert!(status.is_client_error(), "after completion, got {status}");
    assert_eq!(read_all(store, "u/s/one", None).await, body);
    store.delete("u/s/one").await.unwrap();

    // An expired URL is refused.
    let upload = store
        .create_multipart("u/s/two", "text/plain", true)
        .await
        .unwrap();
    let signed_at = chrono::Utc::now();
    let req = store
        .presign_upload_part("u/s/two", &upload, 1, &conditions, Duration::from_secs(1))
        .await
        .unwrap();
    crate::helpers::past(signed_at, Duration::from_millis(2100)).await;
    let status = put(req.url, req.headers, body).await;
    assert!(
        status.is_client_error(),
        "expired URL refused, got {status}"
    );
    store.abort_multipart("u/s/two", &upload).await.unwrap();
    assert_eq!(store.head("u/s/two").await.unwrap(), None);
}

#[tokio::test]
async fn fs_presigned_urls_carry_a_verifiable_expiring_token() {
    let dir = tempfile::tempdir().unwrap();
    let store = intake::storage::FsStore::new(
        dir.path().to_owned(),
        "http://intake.test",
        "0123456789abcdef0123456789abcdef",
    )
    .await
    .unwrap();
    let conditions = PutConditions {
        content_length: 5,
        content_type: "text/plain".into(),
        sha256: None,
    };
    let req = store
        .presign_put("u/f/x", &conditions, Duration::from_secs(60))
        .unwrap();
    let url = url::Url::parse(&req.url).unwrap();
    assert_eq!(url.path(), "/upload/presigned/x/data");
    let q: std::collections::HashMap<_, _> = url.query_pairs().into_owned().collect();
    let expires: u64 = q["expires"].parse().unwrap();
    let binding = intake::storage::FsStore::put_binding(&conditions);
    assert!(store.verify("PUT", "u/f/x", expires, &binding, &q["signature"]));
    assert!(
        !store.verify("GET", "u/f/x", expires, &binding, &q["signature"]),
        "bound to the method"
    );
    assert!(
        !store.verify("PUT", "u/f/y", expires, &binding, &q["signature"]),
        "bound to the key"
    );
    let other = PutConditions {
        content_length: 6,
        ..conditions
    };
    assert!(
        !store.verify(
            "PUT",
            "u/f/x",
            expires,
            &intake::storage::FsStore::put_binding(&other),
            &q["signature"]
        ),
        "bound to the length"
    );
    assert!(
        !store.verify("PUT", "u/f/x", expires + 10, &binding, &q["signature"]),
        "bound to the expiry"
    );
    assert!(
        !store.verify("PUT", "u/f/x", 1, &binding, &q["signature"]),
        "expired"
    );
}

/// A read cut off mid-body (storage killed while it sends an object) is
/// storage being unavailable, not a backend error: what reads it (a
/// resumable upload's tail, a presigned upload's check) answers 503.
#[tokio::test]
async fn an_s3_read_cut_off_mid_body_is_unavailable() {
    let (proxy, app) = s3_behind_proxy().await;
    let store = app.state.store.as_ref();
    store
        .put("u/r/big", Bytes::from(pattern(32 << 20)), "video/mp4")
        .await
        .unwrap();
    let mut body = store.get("u/r/big", None).await.unwrap();
    let first = body.stream.try_next().await.unwrap().unwrap();
    assert!(!first.is_empty());
    proxy.cut();
    let failed = loop {
        match tokio::time::timeout(Duration::from_secs(30), body.stream.try_next())
            .await
            .expect("the read ends once its connection is cut")
        {
            Ok(Some(_)) => continue,
            Ok(None) => panic!("a cut read ended as if whole"),
            Err(e) => break StorageError::from(e),
        }
    };
    assert!(matches!(failed, StorageError::Unavailable(_)), "{failed:?}");
}

/// Storage killed after it took a request closes the connection without an
/// answer (hyper's "incomplete message"): the upload is a 503 the client
/// can retry, not an internal error.
#[tokio::test]
async fn storage_that_hangs_up_without_answering_ends_requests_with_503() {
    let hangup = crate::helpers::FakeStorage::hangup().await;
    let app = spawn()
        .var("S3_ENDPOINT", &hangup.addr)
        .var("S3_TIMEOUT_SECS", "5")
        .start()
        .await;
    let (account, key) = app.account_with_key("starter").await;
    for (name, ct, data) in [
        ("a.png", "image/png", crate::helpers::fixtures::png(10_000)),
        ("b.mp4", "video/mp4", crate::helpers::fixtures::mp4(1 << 20)),
    ] {
        let resp = tokio::time::timeout(Duration::from_secs(20), app.upload(&key, name, ct, &data))
            .await
            .expect("the upload is answered, not held");
        crate::helpers::assert_problem(
            resp,
            StatusCode::SERVICE_UNAVAILABLE,
            "service_unavailable",
        )
        .await;
    }
    let h = app.settled(account.id).await;
    assert_eq!((h.files, h.used, h.reserved, h.leases), (0, 0, 0, 0));
}

#[tokio::test]
async fn storage_that_never_answers_ends_requests_with_503() {
    let blackhole = crate::helpers::FakeStorage::blackhole().await;
    let app = spawn()
        .var("S3_ENDPOINT", &blackhole.addr)
        .var("S3_TIMEOUT_SECS", "1")
        .var("S3_CONNECT_TIMEOUT_SECS", "1")
        .start()
        .await;
    let (account, key) = app.account_with_key("starter").await;
    let png = crate::helpers::fixtures::png(10_000);
    let resp = tokio::time::timeout(
        Duration::from_secs(20),
        app.upload(&key, "a.png", "image/png", &png),
    )
    .await
    .expect("the upload is answered, not held");
    crate::helpers::assert_problem(resp, StatusCode::SERVICE_UNAVAILABLE, "service_unavailable")
        .await;
    let resp = tokio::time::timeout(Duration::from_secs(20), app.get("/readyz").send())
        .await
        .expect("readiness is answered")
        .unwrap();
    crate::helpers::assert_problem(resp, StatusCode::SERVICE_UNAVAILABLE, "service_unavailable")
        .await;
    // Nothing is held or counted for the failed upload.
    let h = app.settled(account.id).await;
    assert_eq!((h.files, h.used, h.reserved, h.leases), (0, 0, 0, 0));
}
