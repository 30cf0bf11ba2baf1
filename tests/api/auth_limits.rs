//! What keeps sign-up and login floods from the service: sign-ups per
//! address per hour, a doubling delay for an e-mail address whose logins
//! keep failing, and `/auth/*` refused while its limiter cannot decide.

use reqwest::StatusCode;
use serde_json::json;

use crate::helpers::{PASSWORD, assert_problem, spawn_app};

#[tokio::test]
async fn auth_routes_refuse_requests_the_limiter_cannot_decide_and_other_routes_pass() {
    let app = spawn_app().await;
    let account = app.account("free").await;
    sqlx::query("ALTER TABLE rate_limits RENAME TO rate_limits_gone")
        .execute(&app.state.db)
        .await
        .unwrap();
    let resp = app
        .post("/auth/login")
        .json(&json!({"email": account.email, "password": PASSWORD}))
        .send()
        .await
        .unwrap();
    assert_problem(resp, StatusCode::SERVICE_UNAVAILABLE, "service_unavailable").await;
    let resp = app
        .post("/auth/signup")
        .json(&json!({"email": "new@example.com", "password": PASSWORD}))
        .send()
        .await
        .unwrap();
    assert_problem(resp, StatusCode::SERVICE_UNAVAILABLE, "service_unavailable").await;
    assert_eq!(app.scalar_i64("SELECT count(*) FROM sessions").await, 0);
    assert_eq!(app.scalar_i64("SELECT count(*) FROM accounts").await, 1);

    // Elsewhere the limiter still fails open (RATE_LIMIT_FAIL_OPEN's default).
    let resp = app.get("/limits").send().await.unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    assert!(resp.headers().get("x-ratelimit-limit").is_none());
}
