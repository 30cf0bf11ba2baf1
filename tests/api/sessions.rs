//! How sessions end: idle past `SESSION_IDLE_TIMEOUT_SECS`, all at once
//! with `POST /auth/logout-all`, and pruned by the reaper once ended.

use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use reqwest::{Method, StatusCode};

use crate::helpers::{Session, TestApp, assert_problem, past, poll::poll, spawn, spawn_app};

async fn me(app: &TestApp, s: &Session) -> StatusCode {
    app.get("/me")
        .header("cookie", &s.cookie)
        .send()
        .await
        .unwrap()
        .status()
}

/// When the database last saw the session (the one of that cookie).
async fn last_seen(app: &TestApp, s: &Session) -> (DateTime<Utc>, String) {
    let token = s.cookie.trim_start_matches("intake_session=");
    let sid = {
        use base64::Engine as _;
        let payload = token.split('.').nth(1).unwrap();
        let claims: serde_json::Value = serde_json::from_slice(
            &base64::engine::general_purpose::URL_SAFE_NO_PAD
                .decode(payload)
                .unwrap(),
        )
        .unwrap();
        claims["sid"]
            .as_str()
            .unwrap()
            .parse::<uuid::Uuid>()
            .unwrap()
    };
    sqlx::query_as("SELECT last_seen_at, xmin::text FROM sessions WHERE id = $1")
        .bind(sid)
        .fetch_one(&app.state.db)
        .await
        .unwrap()
}

#[tokio::test]
async fn a_session_idle_past_the_timeout_ends_while_one_in_use_lives_on() {
    let app = spawn().var("SESSION_IDLE_TIMEOUT_SECS", "2").start().await;
    let account = app.account("free").await;
    let busy = app.login(&account.email).await;
    let idle = app.login(&account.email).await;

    // In use for longer than the timeout: every request passes.
    let until = Instant::now() + Duration::from_secs(3);
    let kept = poll(Duration::from_secs(10), || async {
        assert_eq!(me(&app, &busy).await, StatusCode::OK);
        (Instant::now() >= until).then_some(())
    })
    .await;
    assert!(kept.is_some());
    // The other one sat idle all that time.
    let resp = app
        .get("/me")
        .header("cookie", &idle.cookie)
        .send()
        .await
        .unwrap();
    assert_problem(resp, StatusCode::UNAUTHORIZED, "unauthorized").await;

    // Left alone past the timeout, the busy one ends too.
    let (seen, _) = last_seen(&app, &busy).await;
    past(
        seen + chrono::Duration::seconds(2),
        Duration::from_millis(50),
    )
    .await;
    assert_eq!(me(&app, &busy).await, StatusCode::UNAUTHORIZED);

    // Both rows are left for the reaper, which removes them.
    assert_eq!(app.scalar_i64("SELECT count(*) FROM sessions").await, 2);
    intake::reaper::prune(&app.state).await.unwrap();
    assert_eq!(app.scalar_i64("SELECT count(*) FROM sessions").await, 0);
}

#[tokio::test]
async fn a_session_in_use_is_written_at_most_once_a_minute() {
    let app = spawn_app().await;
    let account = app.account("free").await;
    let session = app.login(&account.email).await;
    let before = last_seen(&app, &session).await;
    for _ in 0..20 {
        assert_eq!(me(&app, &session).await, StatusCode::OK);
    }
    // The same row version: none of the twenty requests wrote it.
    assert_eq!(last_seen(&app, &session).await, before);
}

#[tokio::test]
async fn logout_all_ends_every_session_of_the_account_and_nothing_else() {
    let app = spawn_app().await;
    let (account, key) = app.account_with_key("starter").await;
    let first = app.login(&account.email).await;
    let second = app.login(&account.email).await;
    let stranger = app.account("free").await;
    let theirs = app.login(&stranger.email).await;
    let revoked = || app.scalar_i64("SELECT count(*) FROM sessions WHERE revoked_at IS NOT NULL");

    // Like every session write, it needs the CSRF token, and a session.
    let resp = app
        .post("/auth/logout-all")
        .header("cookie", &first.cookie)
        .send()
        .await
        .unwrap();
    assert_problem(resp, StatusCode::FORBIDDEN, "csrf_token_required").await;
    let resp = app
        .post("/auth/logout-all")
        .bearer_auth(&key)
        .send()
        .await
        .unwrap();
    assert_problem(resp, StatusCode::FORBIDDEN, "forbidden").await;
    let resp = app.post("/auth/logout-all").send().await.unwrap();
    assert_problem(resp, StatusCode::UNAUTHORIZED, "unauthorized").await;
    assert_eq!(revoked().await, 0);

    let resp = app
        .with_session(Method::POST, "/auth/logout-all", &first)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::NO_CONTENT);
    assert!(
        resp.headers()["set-cookie"]
            .to_str()
            .unwrap()
            .contains("Max-Age=0")
    );
    assert_eq!(me(&app, &first).await, StatusCode::UNAUTHORIZED);
    assert_eq!(me(&app, &second).await, StatusCode::UNAUTHORIZED);
    assert_eq!(revoked().await, 2);
    // API keys are not sessions; another account's session goes on.
    let resp = app.get("/me").bearer_auth(&key).send().await.unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    assert_eq!(me(&app, &theirs).await, StatusCode::OK);

    // The reaper removes the ended rows, and only those.
    intake::reaper::prune(&app.state).await.unwrap();
    assert_eq!(app.scalar_i64("SELECT count(*) FROM sessions").await, 1);
    assert_eq!(me(&app, &theirs).await, StatusCode::OK);
}

#[tokio::test]
async fn the_reaper_prunes_sessions_past_their_lifetime() {
    let app = spawn().var("SESSION_TTL_SECS", "1").start().await;
    // An instance of the same deployment whose sessions last the default week.
    let mut lasting = spawn()
        .sharing(&app)
        .var("SESSION_TTL_SECS", "604800")
        .start()
        .await;
    lasting.schema.clear();
    let account = app.account("free").await;
    let short = app.login(&account.email).await;
    let long = lasting.login(&account.email).await;
    let expires: DateTime<Utc> = sqlx::query_scalar("SELECT min(expires_at) FROM sessions")
        .fetch_one(&app.state.db)
        .await
        .unwrap();
    past(expires, Duration::from_millis(50)).await;
    assert_eq!(me(&app, &short).await, StatusCode::UNAUTHORIZED);
    intake::reaper::prune(&app.state).await.unwrap();
    assert_eq!(app.scalar_i64("SELECT count(*) FROM sessions").await, 1);
    assert_eq!(me(&app, &long).await, StatusCode::OK);
}
