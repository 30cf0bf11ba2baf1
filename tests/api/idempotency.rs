//! `Idempotency-Key`: a retried request gets the first one's answer
//! without being run again, on every instance, per account and route,
//! until the key's time is over; a key is in use while its request runs,
//! refused with another JSON body, and free again after an answer that
//! says to retry or a client that went away.

use std::time::Duration;

use reqwest::{Method, RequestBuilder, Response, StatusCode};
use serde_json::{Value, json};

use crate::helpers::{
    Form, Holdings, MIB, Relay, TestApp,
    ai::{self, Provider, ai_app},
    assert_problem,
    clients::{
        stream::{STREAM_BOUNDARY, channel_body, part_head},
        tus::{metadata, tus},
    },
    env, eventually, fixtures,
    poll::poll,
    spawn, spawn_app,
};

const REPLAYED: &str = "idempotency-replayed";

/// Sends `form` (finished here) to `request` with the API key and the
/// idempotency key.
async fn send_keyed(request: RequestBuilder, api_key: &str, idem: &str, form: Form) -> Response {
    let form = form.finish();
    request
        .bearer_auth(api_key)
        .header("idempotency-key", idem)
        .header("content-type", form.content_type())
        .body(form.body)
        .send()
        .await
        .unwrap()
}

/// A one-file form of a PNG of `len` bytes.
fn png_form(len: usize) -> Form {
    Form::new().part("file", "a.png", "image/png", &fixtures::png(len))
}

/// The status, whether the answer is marked replayed, and its JSON body.
async fn answer(resp: Response) -> (StatusCode, bool, Value) {
    let status = resp.status();
    let replayed = match resp.headers().get(REPLAYED) {
        None => false,
        Some(v) => {
            assert_eq!(v, "true");
            true
        }
    };
    (status, replayed, resp.json().await.unwrap())
}

fn remaining(resp: &Response) -> i64 {
    resp.headers()["x-ratelimit-remaining"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap()
}

/// Rows of the app's idempotency keys.
async fn keys(app: &TestApp) -> i64 {
    app.scalar_i64("SELECT count(*) FROM idempotency_keys")
        .await
}

#[tokio::test]
async fn a_stream_upload_and_a_batch_retried_with_one_key_make_one_file_each_and_one_charge() {
    let app = spawn_app().await;
    let (account, key) = app.account_with_key("starter").await;

    let first = send_keyed(app.post("/upload/stream"), &key, "one", png_form(4096)).await;
    let first_remaining = remaining(&first);
    let (status, replayed, file) = answer(first).await;
    assert_eq!((status, replayed), (StatusCode::CREATED, false), "{file}");
    let again = send_keyed(app.post("/upload/stream"), &key, "one", png_form(4096)).await;
    // The replay still counts against the per-minute limit.
    assert!(remaining(&again) < first_remaining);
    assert_eq!(
        answer(again).await,
        (StatusCode::CREATED, true, file.clone())
    );
    assert_eq!(app.holdings(account.id).await, Holdings::stored(1, 4096));

    // The same key on another route is another key; the batch runs once.
    let batch = || {
        send_keyed(
            app.post("/upload/stream-batch"),
            &key,
            "one",
            Form::pngs(2, 1000),
        )
    };
    let (status, replayed, results) = answer(batch().await).await;
    assert_eq!((status, replayed), (StatusCode::OK, false), "{results}");
    assert_eq!(answer(batch().await).await, (StatusCode::OK, true, results));

    assert_eq!(app.holdings(account.id).await, Holdings::stored(3, 6096));
    let usage = app.usage(&key).await;
    assert_eq!(
        usage["usage"]["storage_bytes"],
        json!({"used": 6096, "reserved": 0})
    );
    app.assert_left_with(account.id, 3).await;
}

#[tokio::test]
async fn a_tus_creation_and_a_presigned_upload_retried_with_one_key_make_one_upload_each() {
    let app = spawn_app().await;
    let (account, key) = app.account_with_key("starter").await;
    let create = || {
        tus(&app, Method::POST, "/upload/tus", &key)
            .header("idempotency-key", "make")
            .header("upload-length", "5000")
            .header("upload-metadata", metadata(&[("filename", "a.png")]))
            .send()
    };
    let first = create().await.unwrap();
    assert_eq!(first.status(), StatusCode::CREATED);
    assert!(!first.headers().contains_key(REPLAYED));
    let again = create().await.unwrap();
    assert_eq!(again.status(), StatusCode::CREATED);
    assert_eq!(again.headers()[REPLAYED], "true");
    for header in ["location", "upload-expires", "tus-resumable"] {
        assert_eq!(again.headers()[header], first.headers()[header], "{header}");
    }

    let presign = |body: Value| {
        app.post("/upload/presigned")
            .bearer_auth(&key)
            .header("idempotency-key", "make")
            .json(&body)
            .send()
    };
    let declared = json!({"filename": "b.png", "content_type": "image/png", "size": 3000});
    let (status, replayed, issued) = answer(presign(declared.clone()).await.unwrap()).await;
    assert_eq!((status, replayed), (StatusCode::CREATED, false), "{issued}");
    assert_eq!(
        answer(presign(declared).await.unwrap()).await,
        (StatusCode::CREATED, true, issued)
    );
    let other = json!({"filename": "c.png", "content_type": "image/png", "size": 3000});
    assert_problem(
        presign(other).await.unwrap(),
        StatusCode::UNPROCESSABLE_ENTITY,
        "idempotency_key_reused",
    )
    .await;

    // One resumable and one presigned upload hold their slots and bytes.
    let held = app.holdings(account.id).await;
    assert_eq!((held.leases, held.reserved, held.files), (2, 8000, 0));
}

#[tokio::test]
async fn a_retry_is_answered_before_its_body_is_sent() {
    let app = spawn_app().await;
    let (account, key) = app.account_with_key("starter").await;
    let first = send_keyed(app.post("/upload/stream"), &key, "slow", png_form(4096)).await;
    let (_, _, file) = answer(first).await;

    // A retry whose body would take seconds: its part head, then nothing
    // until the answer has come.
    let (tx, body) = channel_body();
    let retry = app
        .post("/upload/stream")
        .bearer_auth(&key)
        .header("idempotency-key", "slow")
        .header(
            "content-type",
            format!("multipart/form-data; boundary={STREAM_BOUNDARY}"),
        )
        .header("content-length", 20 * MIB)
        .body(body)
        .send();
    let feeder = async {
        tx.send(Ok(part_head(STREAM_BOUNDARY, "file", "b.png", "image/png")))
            .await
            .unwrap();
        // The rest of the 20 MiB would follow; the answer must not wait.
        std::future::pending::<()>().await;
    };
    let resp = tokio::select! {
        resp = retry => resp.unwrap(),
        () = feeder => unreachable!(),
    };
    // Closes the connection whose body it left unread.
    assert_eq!(resp.headers()["connection"], "close");
    assert_eq!(answer(resp).await, (StatusCode::CREATED, true, file));
    drop(tx);
    assert_eq!(app.holdings(account.id).await, Holdings::stored(1, 4096));
    app.assert_left_with(account.id, 1).await;
}

#[tokio::test]
async fn a_key_is_in_use_while_its_request_runs_and_free_once_its_client_has_gone() {
    let app = spawn_app().await;
    let (account, key) = app.polling_account().await;
    let (tx, body) = channel_body();
    let first = tokio::spawn(
        app.post("/upload/stream")
            .bearer_auth(&key)
            .header("idempotency-key", "busy")
            .header(
                "content-type",
                format!("multipart/form-data; boundary={STREAM_BOUNDARY}"),
            )
            .body(body)
            .send(),
    );
    tx.send(Ok(part_head(STREAM_BOUNDARY, "file", "a.png", "image/png")))
        .await
        .unwrap();
    tx.send(Ok(fixtures::png(1000))).await.unwrap();
    // Its slot is taken: its key was claimed before.
    app.wait_active(&key, 1).await;

    let busy = send_keyed(app.post("/upload/stream"), &key, "busy", png_form(100)).await;
    assert_eq!(busy.headers()["retry-after"], "1");
    assert_problem(busy, StatusCode::CONFLICT, "idempotency_key_in_use").await;

    // The first client goes away before its body's end: the key is free.
    tx.send(Err(std::io::Error::other("the client went away")))
        .await
        .unwrap();
    drop(tx);
    assert!(first.await.unwrap().is_err(), "the first request broke");
    let retried = poll(Duration::from_secs(10), || async {
        let resp = send_keyed(app.post("/upload/stream"), &key, "busy", png_form(100)).await;
        (resp.status() != StatusCode::CONFLICT).then_some(resp)
    })
    .await
    .expect("the key was freed");
    let (status, replayed, file) = answer(retried).await;
    assert_eq!((status, replayed), (StatusCode::CREATED, false), "{file}");
    assert_eq!(file["size"], 100);
    app.assert_left_with(account.id, 1).await;
    let again = send_keyed(app.post("/upload/stream"), &key, "busy", png_form(100)).await;
    assert_eq!(answer(again).await, (StatusCode::CREATED, true, file));
}

#[tokio::test]
async fn a_json_body_is_compared_and_a_key_belongs_to_its_path() {
    let provider = Provider::start().await;
    let app = ai_app(&provider, &[]).await;
    let (_, key) = app.account_with_key("starter").await;
    let chat = |body: Value| {
        app.post("/chat")
            .bearer_auth(&key)
            .header("idempotency-key", "ask")
            .json(&body)
            .send()
    };
    let (status, replayed, reply) = answer(chat(json!({"message": "hello"})).await.unwrap()).await;
    assert_eq!((status, replayed), (StatusCode::OK, false), "{reply}");
    assert_eq!(
        answer(chat(json!({"message": "hello"})).await.unwrap()).await,
        (StatusCode::OK, true, reply)
    );
    let reused = chat(json!({"message": "something else"})).await.unwrap();
    assert_problem(
        reused,
        StatusCode::UNPROCESSABLE_ENTITY,
        "idempotency_key_reused",
    )
    .await;
    assert_eq!(provider.requests().len(), 1, "the provider was asked once");

    // Describes of two files with one key: each path is a key of its own.
    let mut files = Vec::new();
    for name in ["a.png", "b.png"] {
        let form = Form::new().part("file", name, "image/png", &ai::png(16, 16));
        let resp = app.upload_form("/upload/stream", &key, form).await;
        assert_eq!(resp.status(), StatusCode::CREATED);
        files.push(
            resp.json::<Value>().await.unwrap()["id"]
                .as_str()
                .unwrap()
                .to_owned(),
        );
    }
    let describe = |id: &str| {
        app.post(&format!("/files/{id}/describe"))
            .bearer_auth(&key)
            .header("idempotency-key", "ask")
            .send()
    };
    let (status, replayed, first) = answer(describe(&files[0]).await.unwrap()).await;
    assert_eq!((status, replayed), (StatusCode::OK, false), "{first}");
    assert_eq!(
        answer(describe(&files[0]).await.unwrap()).await,
        (StatusCode::OK, true, first)
    );
    let (status, replayed, _) = answer(describe(&files[1]).await.unwrap()).await;
    assert_eq!((status, replayed), (StatusCode::OK, false));
    assert_eq!(provider.requests().len(), 3);
    let usage = app.usage(&key).await;
    assert_eq!(usage["usage"]["chat_messages"]["used"], 1);
    assert_eq!(usage["usage"]["ai_descriptions"]["used"], 2);
}

#[tokio::test]
async fn a_key_is_free_after_a_503_from_a_stopped_store_and_the_retry_succeeds() {
    let proxy = Relay::to(&env("TEST_S3_ENDPOINT")).await;
    let app = spawn().var("S3_ENDPOINT", &proxy.addr).start().await;
    let (account, key) = app.account_with_key("starter").await;
    proxy.cut();
    let down = send_keyed(app.post("/upload/stream"), &key, "store", png_form(4096)).await;
    assert_problem(down, StatusCode::SERVICE_UNAVAILABLE, "service_unavailable").await;
    assert_eq!(app.settled(account.id).await, Holdings::NOTHING);
    assert_eq!(keys(&app).await, 0, "the key was freed");

    proxy.restore();
    let back = send_keyed(app.post("/upload/stream"), &key, "store", png_form(4096)).await;
    let (status, replayed, file) = answer(back).await;
    assert_eq!((status, replayed), (StatusCode::CREATED, false), "{file}");
    app.assert_left_with(account.id, 1).await;
}

#[tokio::test]
async fn keys_are_per_account() {
    let app = spawn_app().await;
    let (one, one_key) = app.account_with_key("starter").await;
    let (other, other_key) = app.account_with_key("starter").await;
    for api_key in [&one_key, &other_key] {
        let resp = send_keyed(app.post("/upload/stream"), api_key, "shared", png_form(500)).await;
        let (status, replayed, _) = answer(resp).await;
        assert_eq!((status, replayed), (StatusCode::CREATED, false));
    }
    assert_eq!(app.holdings(one.id).await, Holdings::stored(1, 500));
    assert_eq!(app.holdings(other.id).await, Holdings::stored(1, 500));
}

#[tokio::test]
async fn every_instance_replays_the_answer_another_kept() {
    let app = spawn_app().await;
    let second = app.second_instance().await;
    let (account, key) = app.account_with_key("starter").await;
    let first = send_keyed(app.post("/upload/stream"), &key, "spread", png_form(700)).await;
    let (status, _, file) = answer(first).await;
    assert_eq!(status, StatusCode::CREATED);
    let there = send_keyed(second.post("/upload/stream"), &key, "spread", png_form(700)).await;
    assert_eq!(answer(there).await, (StatusCode::CREATED, true, file));
    assert_eq!(app.holdings(account.id).await, Holdings::stored(1, 700));
}

#[tokio::test]
async fn an_expired_key_runs_anew_and_the_prune_removes_it() {
    let app = spawn().var("IDEMPOTENCY_TTL_SECS", "1").start().await;
    let (account, key) = app.polling_account().await;
    for idem in ["pruned", "reused"] {
        let resp = send_keyed(app.post("/upload/stream"), &key, idem, png_form(300)).await;
        assert_eq!(resp.status(), StatusCode::CREATED);
    }
    eventually("both keys expire", || async {
        app.scalar_i64("SELECT count(*) FROM idempotency_keys WHERE expires_at > now()")
            .await
            == 0
    })
    .await;
    // An expired key is free before the prune comes by.
    let resp = send_keyed(app.post("/upload/stream"), &key, "reused", png_form(300)).await;
    let (status, replayed, _) = answer(resp).await;
    assert_eq!((status, replayed), (StatusCode::CREATED, false));
    assert_eq!(keys(&app).await, 2);

    assert!(intake::prune(&app.state).await.unwrap() >= 1);
    assert_eq!(
        app.scalar_i64("SELECT count(*) FROM idempotency_keys WHERE key = 'pruned'")
            .await,
        0,
        "the expired key is gone"
    );
    let resp = send_keyed(app.post("/upload/stream"), &key, "pruned", png_form(300)).await;
    let (status, replayed, _) = answer(resp).await;
    assert_eq!((status, replayed), (StatusCode::CREATED, false));
    assert_eq!(app.holdings(account.id).await, Holdings::stored(4, 1200));
}

/// A kept answer an instance has seen is replayed from its memory, with no
/// statement, until (a second before) the key expires: with the row gone
/// from Postgres, the instance still replays; after the expiry the request
/// runs anew.
#[tokio::test]
async fn an_instance_replays_a_kept_answer_from_memory_until_the_key_expires() {
    let app = spawn().var("IDEMPOTENCY_TTL_SECS", "4").start().await;
    let (account, key) = app.polling_account().await;
    let first = send_keyed(app.post("/upload/stream"), &key, "held", png_form(300)).await;
    let (status, replayed, file) = answer(first).await;
    assert_eq!((status, replayed), (StatusCode::CREATED, false));

    app.scalar_i64(
        "WITH gone AS (DELETE FROM idempotency_keys RETURNING 1) SELECT count(*) FROM gone",
    )
    .await;
    assert_eq!(keys(&app).await, 0);
    let again = send_keyed(app.post("/upload/stream"), &key, "held", png_form(300)).await;
    let (status, replayed, body) = answer(again).await;
    assert_eq!((status, replayed), (StatusCode::CREATED, true));
    assert_eq!(body, file);

    eventually(
        "the instance forgets the answer when the key expires",
        || async {
            let resp = send_keyed(app.post("/upload/stream"), &key, "held", png_form(300)).await;
            !answer(resp).await.1
        },
    )
    .await;
    assert_eq!(app.holdings(account.id).await, Holdings::stored(2, 600));
}

#[tokio::test]
async fn bad_keys_are_refused_and_make_nothing() {
    let app = spawn_app().await;
    let (account, key) = app.account_with_key("starter").await;
    let longest = "k".repeat(255);
    let too_long = "k".repeat(256);
    for bad in [
        &b""[..],
        too_long.as_bytes(),
        b"tab\there",
        "caf\u{e9}".as_bytes(),
    ] {
        let form = png_form(100).finish();
        let resp = app
            .post("/upload/stream")
            .bearer_auth(&key)
            .header(
                "idempotency-key",
                reqwest::header::HeaderValue::from_bytes(bad).unwrap(),
            )
            .header("content-type", form.content_type())
            .body(form.body)
            .send()
            .await
            .unwrap();
        assert_problem(resp, StatusCode::BAD_REQUEST, "invalid_request").await;
    }
    assert_eq!(app.holdings(account.id).await, Holdings::NOTHING);
    assert_eq!(keys(&app).await, 0);
    let resp = send_keyed(app.post("/upload/stream"), &key, &longest, png_form(100)).await;
    assert_eq!(resp.status(), StatusCode::CREATED);
    assert_eq!(keys(&app).await, 1);
    // Nothing is asked of a request without a key.
    let plain = app.upload_form("/upload/stream", &key, png_form(100)).await;
    assert!(!plain.headers().contains_key(REPLAYED));
    assert_eq!(app.holdings(account.id).await, Holdings::stored(2, 200));
}

#[tokio::test]
async fn the_document_names_the_header_and_its_answers_where_a_route_takes_it() {
    let app = spawn_app().await;
    let doc: Value = app
        .get("/openapi.json")
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let header = |op: &Value| {
        op["parameters"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|p| p["name"] == "Idempotency-Key")
            .cloned()
    };
    for (path, json_body) in [
        ("/upload/stream", false),
        ("/upload/stream-batch", false),
        ("/upload/presigned", true),
        ("/upload/tus", false),
        ("/files/{id}/describe", true),
        ("/chat", true),
    ] {
        let op = &doc["paths"][path]["post"];
        let param = header(op).unwrap_or_else(|| panic!("{path}: no Idempotency-Key"));
        assert_eq!(param["in"], "header", "{path}");
        assert_eq!(param["required"], false, "{path}");
        assert_eq!(param["schema"]["maxLength"], 255, "{path}");
        let in_use = &op["responses"]["409"];
        assert!(
            in_use["description"]
                .as_str()
                .unwrap()
                .contains("idempotency_key_in_use"),
            "{path}: {in_use}"
        );
        assert!(in_use["headers"]["Retry-After"].is_object(), "{path}");
        let reused = op["responses"]["422"]["description"].as_str().unwrap_or("");
        assert_eq!(
            reused.contains("idempotency_key_reused"),
            json_body,
            "{path}: {reused}"
        );
    }
    for (method, path) in [
        ("options", "/upload/tus"),
        ("patch", "/upload/tus/{id}"),
        ("post", "/upload/presigned/{id}/complete"),
        ("post", "/auth/login"),
    ] {
        let op = &doc["paths"][path][method];
        assert!(op.is_object(), "{method} {path}");
        assert!(header(op).is_none(), "{method} {path}");
    }
}
