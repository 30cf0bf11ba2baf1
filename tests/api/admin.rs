//! The admin API: its token, accounts, tiers, custom limits, keys, usage.

use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

use crate::helpers::{PASSWORD, assert_problem, spawn, spawn_app};

#[tokio::test]
async fn admin_routes_refuse_missing_and_wrong_tokens() {
    let app = spawn_app().await;
    let body = json!({"email": "x@example.com", "tier": "starter"});
    let none = app
        .post("/admin/accounts")
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_problem(none, StatusCode::UNAUTHORIZED, "unauthorized").await;
    let wrong = app
        .post("/admin/accounts")
        .bearer_auth("not-the-token")
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_problem(wrong, StatusCode::UNAUTHORIZED, "unauthorized").await;
    // An API key is no admin token either.
    let (_, key) = app.account_with_key("enterprise").await;
    let with_key = app
        .post("/admin/accounts")
        .bearer_auth(&key)
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_problem(with_key, StatusCode::UNAUTHORIZED, "unauthorized").await;
    assert_eq!(app.scalar_i64("SELECT count(*) FROM accounts").await, 1);
}

#[tokio::test]
async fn the_admin_api_is_off_without_a_token() {
    let app = spawn().var("ADMIN_TOKEN", "").start().await;
    let resp = app
        .post("/admin/accounts")
        .bearer_auth("anything")
        .json(&json!({}))
        .send()
        .await
        .unwrap();
    assert_problem(resp, StatusCode::NOT_FOUND, "not_found").await;
}

#[tokio::test]
async fn admin_creates_accounts_of_any_tier() {
    let app = spawn_app().await;
    let resp = app
        .admin(Method::POST, "/admin/accounts")
        .json(&json!({"email": "Ent@Example.com", "password": PASSWORD, "tier": "enterprise"}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::CREATED);
    let body: Value = resp.json().await.unwrap();
    assert_eq!(body["email"], "ent@example.com");
    assert_eq!(body["tier"], "enterprise");
    assert!(body["limits"]["storage_bytes"].is_null());

    let dup = app
        .admin(Method::POST, "/admin/accounts")
        .json(&json!({"email": "ent@example.com", "tier": "free"}))
        .send()
        .await
        .unwrap();
    assert_problem(dup, StatusCode::CONFLICT, "conflict").await;
    let bad_tier = app
        .admin(Method::POST, "/admin/accounts")
        .json(&json!({"email": "z@example.com", "tier": "gold"}))
        .send()
        .await
        .unwrap();
    assert_problem(
        bad_tier,
        StatusCode::UNPROCESSABLE_ENTITY,
        "invalid_request",
    )
    .await;

    // Without a password the account cannot log in (but may hold keys).
    let resp = app
        .admin(Method::POST, "/admin/accounts")
        .json(&json!({"email": "keys@example.com", "tier": "starter"}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::CREATED);
    let login = app
        .post("/auth/login")
        .json(&json!({"email": "keys@example.com", "password": PASSWORD}))
        .send()
        .await
        .unwrap();
    assert_problem(login, StatusCode::UNAUTHORIZED, "unauthorized").await;
}

#[tokio::test]
async fn custom_limits_override_single_rows_and_clear() {
    let app = spawn_app().await;
    let (account, key) = app.account_with_key("starter").await;
    let path = format!("/admin/accounts/{}", account.id);

    let resp = app
        .admin(Method::PATCH, &path)
        .json(&json!({"custom_limits": {"storage_bytes": 3145728}}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    let resp = app
        .admin(Method::PATCH, &path)
        .json(&json!({"custom_limits": {"requests_per_minute": 1000}}))
        .send()
        .await
        .unwrap();
    let body: Value = resp.json().await.unwrap();
    assert_eq!(
        body["custom_limits"],
        json!({"storage_bytes": 3145728, "requests_per_minute": 1000})
    );

    let usage: Value = app
        .get("/usage")
        .bearer_auth(&key)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(usage["tier"], "starter");
    assert_eq!(usage["limits"]["storage_bytes"], 3145728);
    assert_eq!(usage["limits"]["requests_per_minute"], 1000);
    assert_eq!(
        usage["limits"]["batch_size"], 20,
        "rows not given follow the tier"
    );

    // null storage means unlimited; null elsewhere is refused.
    app.patch_account(
        account.id,
        json!({"custom_limits": {"storage_bytes": null}}),
    )
    .await;
    let admin_usage: Value = app
        .admin(Method::GET, &format!("{path}/usage"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert!(admin_usage["limits"]["storage_bytes"].is_null());
    for bad in [
        json!({"batch_size": null}),
        json!({"nonsense": 1}),
        json!({"max_image_bytes": -5}),
        json!({"api_keys": 1}),
    ] {
        let resp = app
            .admin(Method::PATCH, &path)
            .json(&json!({"custom_limits": bad}))
            .send()
            .await
            .unwrap();
        assert_problem(resp, StatusCode::UNPROCESSABLE_ENTITY, "invalid_request").await;
    }

    // custom_limits: null clears every override.
    let resp = app
        .admin(Method::PATCH, &path)
        .json(&json!({"custom_limits": null}))
        .send()
        .await
        .unwrap();
    let body: Value = resp.json().await.unwrap();
    assert_eq!(body["custom_limits"], json!({}));
    assert_eq!(body["limits"]["storage_bytes"], 25u64 * 1024 * 1024 * 1024);
}

#[tokio::test]
async fn admin_usage_has_the_shape_of_usage() {
    let app = spawn_app().await;
    let (account, key) = app.account_with_key("professional").await;
    let own: Value = app
        .get("/usage")
        .bearer_auth(&key)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let admin: Value = app
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
    let keys = |v: &Value| {
        v["usage"]
            .as_object()
            .unwrap()
            .keys()
            .cloned()
            .collect::<Vec<_>>()
    };
    assert_eq!(keys(&own), keys(&admin));
    assert_eq!(own["limits"], admin["limits"]);
    assert_eq!(
        admin["usage"]["storage_bytes"],
        json!({"used": 0, "reserved": 0})
    );
    assert_eq!(admin["usage"]["concurrent_uploads"]["active"], 0);
    assert_eq!(admin["usage"]["ai_descriptions"]["used"], 0);
    assert!(
        admin["usage"]["chat_messages"]["resets_at"]
            .as_str()
            .unwrap()
            .ends_with("-01T00:00:00Z")
    );
    // The key request above used one of 100 requests.
    assert_eq!(admin["usage"]["requests"]["remaining"], 99);

    let missing = app
        .admin(
            Method::GET,
            &format!("/admin/accounts/{}/usage", uuid::Uuid::new_v4()),
        )
        .send()
        .await
        .unwrap();
    assert_problem(missing, StatusCode::NOT_FOUND, "not_found").await;
}
