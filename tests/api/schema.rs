//! Requests that the OpenAPI document calls valid (or invalid) are answered
//! as it says: what the schema fuzzer (scripts/lib/schema.sh) found, kept
//! here as plain tests.

use reqwest::{Method, StatusCode};
use serde_json::json;

use crate::helpers::{assert_problem, spawn_app};

#[tokio::test]
async fn a_json_array_is_not_a_body_and_changes_nothing() {
    let app = spawn_app().await;
    let account = app.account("starter").await;
    app.patch_account(
        account.id,
        json!({"custom_limits": {"storage_bytes": 3145728}}),
    )
    .await;
    // serde would read `[tier, custom_limits]` into the struct: `null`
    // for custom_limits would clear every override.
    let resp = app
        .admin(Method::PATCH, &format!("/admin/accounts/{}", account.id))
        .json(&json!([null, null]))
        .send()
        .await
        .unwrap();
    assert_problem(resp, StatusCode::UNPROCESSABLE_ENTITY, "invalid_request").await;
    let usage: serde_json::Value = app
        .admin(
            Method::GET,
            &format!("/admin/accounts/{}/usage", account.id),
        )
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(usage["limits"]["storage_bytes"], 3145728, "{usage}");
}

#[tokio::test]
async fn a_whole_number_written_with_a_fraction_is_that_number() {
    let app = spawn_app().await;
    let (account, key) = app.account_with_key("starter").await;
    // JSON Schema's `integer` takes 1024.0, so a client built from the
    // document may send it.
    let resp = app
        .post("/upload/presigned")
        .bearer_auth(&key)
        .json(&json!({"filename": "a.png", "content_type": "image/png", "size": 1024.0}))
        .send()
        .await
        .unwrap();
    assert_eq!(
        resp.status(),
        StatusCode::CREATED,
        "{}",
        resp.text().await.unwrap()
    );
    let held = app.holdings(account.id).await;
    assert_eq!(
        (held.reserved, held.leases, held.files),
        (1024, 1, 0),
        "{held:?}"
    );
    // A fraction that is not whole is still refused, and holds nothing more.
    let resp = app
        .post("/upload/presigned")
        .bearer_auth(&key)
        .json(&json!({"filename": "b.png", "content_type": "image/png", "size": 1024.5}))
        .send()
        .await
        .unwrap();
    assert_problem(resp, StatusCode::UNPROCESSABLE_ENTITY, "invalid_request").await;
    assert_eq!(app.holdings(account.id).await, held);
}

#[tokio::test]
async fn a_search_with_a_nul_character_is_refused_not_a_server_error() {
    let app = spawn_app().await;
    let (account, key) = app.account_with_key("starter").await;
    let resp = app
        .get("/files?q=a%00b")
        .bearer_auth(&key)
        .send()
        .await
        .unwrap();
    let problem = assert_problem(resp, StatusCode::BAD_REQUEST, "invalid_request").await;
    assert!(
        problem["detail"].as_str().unwrap().contains("NUL"),
        "{problem}"
    );
    app.assert_left_with(account.id, 0).await;
}
