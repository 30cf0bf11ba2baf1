//! What streamed uploads hold in memory: quota before a byte is held, and
//! one budget of upload buffers for the whole process
//! (`UPLOAD_BUFFER_BUDGET_BYTES`), with the state each refusal leaves.

use std::time::Duration;

use reqwest::{Response, StatusCode};
use serde_json::json;

use crate::helpers::{
    Holdings, TestApp,
    app::{assert_problem, spawn},
    clients::{
        stream::{Answer, BodySender, finish, open_stream},
        tus::{created, offset_of, patch},
    },
    fixtures::{self, MIB},
    poll::eventually,
};

/// A chunked upload (no `Content-Length`, so read part by part, holding a
/// part) whose body stays open after `first` bytes of a PNG.
async fn open_png(app: &TestApp, key: &str, name: &str, first: usize) -> (BodySender, Answer) {
    let url = app.url("/upload/stream");
    open_stream(
        &app.client,
        url,
        key,
        name,
        "image/png",
        fixtures::png(first),
    )
    .await
}

/// An app whose upload buffers have room for one part only, and whose
/// uploads wait for room at most 3 s.
async fn one_part_of_room(part: usize) -> TestApp {
    spawn()
        .var("UPLOAD_PART_BYTES", &part.to_string())
        .var("UPLOAD_BUFFER_BUDGET_BYTES", &part.to_string())
        .var("UPLOAD_IDLE_TIMEOUT_SECS", "3")
        .start()
        .await
}

/// A chunked upload that takes all of a one-part budget and keeps its body
/// alive (within its idle timeout) until the keep-alive task is aborted.
async fn hold_the_room(
    app: &TestApp,
    key: &str,
    part: usize,
) -> (BodySender, Answer, tokio::task::JoinHandle<()>) {
    let (tx, handle) = open_png(app, key, "holder.png", 300_000).await;
    eventually("the upload holds the room", || async {
        app.state.upload_buffers.held() == part as u64
    })
    .await;
    let keep_alive = tokio::spawn({
        let tx = tx.clone();
        async move {
            while tx.send(Ok(vec![0; 1024])).await.is_ok() {
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
        }
    });
    (tx, handle, keep_alive)
}

/// The answer to an upload whose body is still open, within `secs`.
async fn answered_within(handle: Answer, secs: u64) -> Response {
    tokio::time::timeout(Duration::from_secs(secs), handle)
        .await
        .expect("answered before the body ended")
        .unwrap()
        .unwrap()
}

/// An account at its quota is refused on its file's first bytes, while its
/// body is still open: it holds neither memory nor quota meanwhile.
#[tokio::test]
async fn an_account_at_its_quota_is_refused_on_its_first_bytes_and_holds_no_memory() {
    let app = spawn().start().await;
    let (account, key) = app.account_with_key("starter").await;
    app.patch_account(
        account.id,
        json!({"custom_limits": {"storage_bytes": 1000}}),
    )
    .await;
    // A file far smaller than a part: before, it waited whole in memory,
    // unreserved, until its last byte.
    let (tx, handle) = open_png(&app, &key, "full.png", 200_000).await;
    let resp = answered_within(handle, 10).await;
    assert_problem(
        resp,
        StatusCode::INSUFFICIENT_STORAGE,
        "storage_quota_exceeded",
    )
    .await;
    drop(tx);
    assert_eq!(app.settled(account.id).await, Holdings::NOTHING);
    assert!(app.objects(account.id).await.is_empty());
    eventually("the upload's buffer room is given back", || async {
        app.state.upload_buffers.held() == 0
    })
    .await;
}

/// With room for one part only, a second upload that would hold another
/// waits for room; past its idle timeout it ends with 503 and gives back
/// what it took, and the first goes on. Room given back is room for the
/// next upload.
#[tokio::test]
async fn an_upload_past_the_buffer_budget_waits_then_ends_with_503_and_keeps_nothing() {
    let part = 5 * MIB;
    let app = one_part_of_room(part).await;
    let (first_account, first_key) = app.account_with_key("enterprise").await;
    let (second_account, second_key) = app.account_with_key("enterprise").await;

    let (first_tx, first, keep_alive) = hold_the_room(&app, &first_key, part).await;
    let (second_tx, second) = open_png(&app, &second_key, "second.png", 100_000).await;
    let resp = answered_within(second, 20).await;
    assert_eq!(resp.headers()["retry-after"], "1");
    assert_problem(resp, StatusCode::SERVICE_UNAVAILABLE, "service_unavailable").await;
    drop(second_tx);
    assert_eq!(app.settled(second_account.id).await, Holdings::NOTHING);
    assert!(app.objects(second_account.id).await.is_empty());
    assert_eq!(app.state.upload_buffers.held(), part as u64);

    keep_alive.abort();
    let resp = finish(first_tx, first).await;
    assert_eq!(resp.status(), StatusCode::CREATED);
    assert_eq!(app.settled(first_account.id).await.files, 1);
    eventually("the first upload's room is given back", || async {
        app.state.upload_buffers.held() == 0
    })
    .await;

    // A waiting upload gets the room when the one holding it ends.
    let (third_tx, third) = open_png(&app, &second_key, "third.png", 100_000).await;
    eventually("the third upload holds the room", || async {
        app.state.upload_buffers.held() == part as u64
    })
    .await;
    let before = app.metrics().await;
    let (fourth_tx, fourth) = open_png(&app, &second_key, "fourth.png", 100_000).await;
    eventually("the fourth upload waits for room", || async {
        let waits = "intake_upload_buffer_waits_total";
        app.metrics().await.grew(&before, waits, &[]) >= 1.0
    })
    .await;
    assert_eq!(finish(third_tx, third).await.status(), StatusCode::CREATED);
    assert_eq!(
        finish(fourth_tx, fourth).await.status(),
        StatusCode::CREATED
    );
    let held = app.settled(second_account.id).await;
    assert_eq!((held.files, held.file_bytes), (2, 200_000));
    assert_eq!(app.state.upload_buffers.held(), 0);
}

/// A tus PATCH takes room for what it may hold too: past the wait it ends
/// with 503 and its upload stays where it was; with room back, the same
/// PATCH goes through.
#[tokio::test]
async fn a_tus_patch_without_room_ends_with_503_and_its_upload_goes_on_later() {
    let part = 5 * MIB;
    let app = one_part_of_room(part).await;
    let (account, key) = app.account_with_key("enterprise").await;
    let (holder_tx, holder, keep_alive) = hold_the_room(&app, &key, part).await;

    let data = fixtures::png(100_000);
    let meta = [("filename", "a.png"), ("filetype", "image/png")];
    let path = created(&app, &key, data.len() as u64, &meta).await;
    let resp = patch(&app, &path, &key, 0, data.clone()).await;
    assert_eq!(resp.headers()["retry-after"], "1");
    assert_problem(resp, StatusCode::SERVICE_UNAVAILABLE, "service_unavailable").await;
    assert_eq!(offset_of(&app, &path, &key).await, 0);

    keep_alive.abort();
    assert_eq!(
        finish(holder_tx, holder).await.status(),
        StatusCode::CREATED
    );
    let resp = patch(&app, &path, &key, 0, data).await;
    assert_eq!(resp.status(), StatusCode::NO_CONTENT);
    assert_eq!(app.settled(account.id).await.files, 2);
    assert_eq!(app.state.upload_buffers.held(), 0);
}
