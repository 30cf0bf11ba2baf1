//! Signup, login, sessions, CSRF and API keys, with their bad inputs.

use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

use crate::helpers::{PASSWORD, assert_problem, spawn_app};

#[tokio::test]
async fn signup_creates_a_free_account_that_can_log_in() {
    let app = spawn_app().await;
    let resp = app
        .post("/auth/signup")
        .json(&json!({"email": "Ann@Example.com", "password": PASSWORD}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::CREATED);
    let body: Value = resp.json().await.unwrap();
    assert_eq!(body["email"], "ann@example.com");
    assert_eq!(body["tier"], "free");
    assert!(body["id"].is_string() && body["created_at"].as_str().unwrap().ends_with('Z'));
    let stored: String = sqlx::query_scalar("SELECT password_hash FROM accounts")
        .fetch_one(&app.state.db)
        .await
        .unwrap();
    assert!(
        stored.starts_with("$argon2id$"),
        "password stored as argon2id"
    );

    let resp = app
        .post("/auth/login")
        .json(&json!({"email": "ann@example.com", "password": PASSWORD}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    let cookie = resp.headers()["set-cookie"].to_str().unwrap().to_owned();
    assert!(cookie.starts_with("intake_session="), "{cookie}");
    assert!(
        cookie.contains("HttpOnly") && cookie.contains("SameSite=Lax"),
        "{cookie}"
    );
    assert!(
        !cookie.contains("Secure"),
        "COOKIE_SECURE=false drops Secure: {cookie}"
    );
    let body: Value = resp.json().await.unwrap();
    assert_eq!(body["account"]["email"], "ann@example.com");
    assert_eq!(body["csrf_token"].as_str().unwrap().len(), 64);
}

#[tokio::test]
async fn session_cookie_is_secure_by_default() {
    let app = crate::helpers::spawn()
        .var("COOKIE_SECURE", "true")
        .start()
        .await;
    let account = app.account("free").await;
    let resp = app
        .post("/auth/login")
        .json(&json!({"email": account.email, "password": PASSWORD}))
        .send()
        .await
        .unwrap();
    assert!(
        resp.headers()["set-cookie"]
            .to_str()
            .unwrap()
            .contains("; Secure")
    );
}

#[tokio::test]
async fn signup_refuses_bad_input_and_keeps_nothing() {
    let app = spawn_app().await;
    for (body, status) in [
        (
            json!({"email": "not-an-email", "password": PASSWORD}),
            StatusCode::UNPROCESSABLE_ENTITY,
        ),
        (
            json!({"email": "a@example.com", "password": "short"}),
            StatusCode::UNPROCESSABLE_ENTITY,
        ),
        (
            json!({"email": "a@example.com"}),
            StatusCode::UNPROCESSABLE_ENTITY,
        ),
    ] {
        let resp = app.post("/auth/signup").json(&body).send().await.unwrap();
        assert_problem(resp, status, "invalid_request").await;
    }
    let resp = app
        .post("/auth/signup")
        .header("content-type", "application/json")
        .body("{\"email\":")
        .send()
        .await
        .unwrap();
    assert_problem(resp, StatusCode::BAD_REQUEST, "invalid_request").await;
    assert_eq!(app.scalar_i64("SELECT count(*) FROM accounts").await, 0);
}

#[tokio::test]
async fn duplicate_email_is_a_conflict_whatever_its_case() {
    let app = spawn_app().await;
    let first = app
        .post("/auth/signup")
        .json(&json!({"email": "bo@example.com", "password": PASSWORD}))
        .send()
        .await
        .unwrap();
    assert_eq!(first.status(), StatusCode::CREATED);
    let again = app
        .post("/auth/signup")
        .json(&json!({"email": "BO@example.com", "password": PASSWORD}))
        .send()
        .await
        .unwrap();
    assert_problem(again, StatusCode::CONFLICT, "conflict").await;
    assert_eq!(app.scalar_i64("SELECT count(*) FROM accounts").await, 1);
}

#[tokio::test]
async fn wrong_password_and_unknown_email_answer_the_same() {
    let app = spawn_app().await;
    let account = app.account("free").await;
    let wrong = app
        .post("/auth/login")
        .json(&json!({"email": account.email, "password": "wrong password"}))
        .send()
        .await
        .unwrap();
    assert!(wrong.headers().get("set-cookie").is_none());
    let wrong = assert_problem(wrong, StatusCode::UNAUTHORIZED, "unauthorized").await;
    let unknown = app
        .post("/auth/login")
        .json(&json!({"email": "nobody@example.com", "password": PASSWORD}))
        .send()
        .await
        .unwrap();
    let unknown = assert_problem(unknown, StatusCode::UNAUTHORIZED, "unauthorized").await;
    assert_eq!(wrong, unknown);
    assert_eq!(app.scalar_i64("SELECT count(*) FROM sessions").await, 0);
}

#[tokio::test]
async fn me_answers_for_sessions_and_keys_and_refuses_strangers() {
    let app = spawn_app().await;
    let (account, key) = app.account_with_key("starter").await;
    let session = app.login(&account.email).await;

    let by_session: Value = app
        .get("/me")
        .header("cookie", &session.cookie)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(by_session["id"], account.id.to_string());
    assert_eq!(by_session["tier"], "starter");

    for req in [
        app.get("/me").bearer_auth(&key),
        app.get("/me").header("x-api-key", &key),
    ] {
        let resp = req.send().await.unwrap();
        assert_eq!(resp.status(), StatusCode::OK);
        let body: Value = resp.json().await.unwrap();
        assert_eq!(body["email"], account.email);
    }

    let resp = app.get("/me").send().await.unwrap();
    assert_problem(resp, StatusCode::UNAUTHORIZED, "unauthorized").await;
}

#[tokio::test]
async fn tampered_expired_and_revoked_sessions_are_refused() {
    let app = spawn_app().await;
    let account = app.account("starter").await;
    let session = app.login(&account.email).await;
    let token = session
        .cookie
        .trim_start_matches("intake_session=")
        .to_owned();

    // Tampered: flip a character of the signature.
    let mut tampered = token.clone();
    let last = tampered.pop().unwrap();
    tampered.push(if last == 'A' { 'B' } else { 'A' });
    let resp = app
        .get("/me")
        .header("cookie", format!("intake_session={tampered}"))
        .send()
        .await
        .unwrap();
    assert_problem(resp, StatusCode::UNAUTHORIZED, "unauthorized").await;

    // Expired: correctly signed, but past its exp.
    let claims: Value = {
        let payload = token.split('.').nth(1).unwrap();
        use base64::Engine as _;
        serde_json::from_slice(
            &base64::engine::general_purpose::URL_SAFE_NO_PAD
                .decode(payload)
                .unwrap(),
        )
        .unwrap()
    };
    let expired = jsonwebtoken::encode(
        &jsonwebtoken::Header::default(),
        &json!({"sub": claims["sub"], "sid": claims["sid"], "iat": 1_000, "exp": 2_000}),
        &jsonwebtoken::EncodingKey::from_secret(b"test-jwt-secret-0123456789abcdefghijklmnop"),
    )
    .unwrap();
    let resp = app
        .get("/me")
        .header("cookie", format!("intake_session={expired}"))
        .send()
        .await
        .unwrap();
    assert_problem(resp, StatusCode::UNAUTHORIZED, "unauthorized").await;

    // Revoked by logout: the same cookie stops working.
    let resp = app
        .with_session(Method::POST, "/auth/logout", &session)
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
    let resp = app
        .get("/me")
        .header("cookie", &session.cookie)
        .send()
        .await
        .unwrap();
    assert_problem(resp, StatusCode::UNAUTHORIZED, "unauthorized").await;
    assert_eq!(
        app.scalar_i64("SELECT count(*) FROM sessions WHERE revoked_at IS NOT NULL")
            .await,
        1
    );
}

#[tokio::test]
async fn state_changing_cookie_requests_need_the_csrf_token() {
    let app = spawn_app().await;
    let account = app.account("starter").await;
    let session = app.login(&account.email).await;
    let other = app.login(&account.email).await;

    let missing = app
        .post("/api-keys")
        .header("cookie", &session.cookie)
        .json(&json!({"name": "k"}))
        .send()
        .await
        .unwrap();
    assert_problem(missing, StatusCode::FORBIDDEN, "csrf_token_required").await;
    let wrong = app
        .post("/api-keys")
        .header("cookie", &session.cookie)
        .header("x-csrf-token", &other.csrf)
        .json(&json!({"name": "k"}))
        .send()
        .await
        .unwrap();
    assert_problem(wrong, StatusCode::FORBIDDEN, "csrf_token_required").await;
    let logout = app
        .post("/auth/logout")
        .header("cookie", &session.cookie)
        .send()
        .await
        .unwrap();
    assert_problem(logout, StatusCode::FORBIDDEN, "csrf_token_required").await;
    assert_eq!(app.scalar_i64("SELECT count(*) FROM api_keys").await, 0);
    assert_eq!(
        app.scalar_i64("SELECT count(*) FROM sessions WHERE revoked_at IS NOT NULL")
            .await,
        0
    );

    // Reads need no token.
    let list = app
        .get("/api-keys")
        .header("cookie", &session.cookie)
        .send()
        .await
        .unwrap();
    assert_eq!(list.status(), StatusCode::OK);
}

#[tokio::test]
async fn api_keys_are_shown_once_listed_without_secret_and_revocable() {
    let app = spawn_app().await;
    let account = app.account("starter").await;
    let session = app.login(&account.email).await;

    let resp = app
        .with_session(Method::POST, "/api-keys", &session)
        .json(&json!({"name": "ci"}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::CREATED);
    let created: Value = resp.json().await.unwrap();
    let key = created["key"].as_str().unwrap().to_owned();
    let id = created["id"].as_str().unwrap().to_owned();
    assert!(
        key.starts_with(&format!("ik_{id}_")) && key.len() == 3 + 8 + 1 + 64,
        "{key}"
    );
    assert_eq!(created["prefix"], format!("ik_{id}"));
    assert_eq!(created["name"], "ci");

    let stored: Vec<u8> = sqlx::query_scalar("SELECT secret_sha256 FROM api_keys")
        .fetch_one(&app.state.db)
        .await
        .unwrap();
    assert_eq!(stored.len(), 32);
    assert!(
        !String::from_utf8_lossy(&stored).contains(&key[12..]),
        "the secret is not stored"
    );

    let list: Value = app
        .with_session(Method::GET, "/api-keys", &session)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let keys = list["api_keys"].as_array().unwrap();
    assert_eq!(keys.len(), 1);
    assert_eq!(keys[0]["id"], id.as_str());
    assert!(
        keys[0].get("key").is_none(),
        "listing never shows the secret"
    );
    assert!(keys[0]["last_used_at"].is_null());

    assert_eq!(
        app.get("/me")
            .bearer_auth(&key)
            .send()
            .await
            .unwrap()
            .status(),
        StatusCode::OK
    );
    // Use is recorded off the request's path: wait for it.
    crate::helpers::eventually("the key's use is recorded", || async {
        let list: Value = app
            .with_session(Method::GET, "/api-keys", &session)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        list["api_keys"][0]["last_used_at"].is_string()
    })
    .await;

    let resp = app
        .with_session(Method::DELETE, &format!("/api-keys/{id}"), &session)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::NO_CONTENT);
    let resp = app.get("/me").bearer_auth(&key).send().await.unwrap();
    assert_problem(resp, StatusCode::UNAUTHORIZED, "unauthorized").await;
    let again = app
        .with_session(Method::DELETE, &format!("/api-keys/{id}"), &session)
        .send()
        .await
        .unwrap();
    assert_problem(again, StatusCode::NOT_FOUND, "not_found").await;
}

#[tokio::test]
async fn another_accounts_key_cannot_be_revoked() {
    let app = spawn_app().await;
    let (_, key) = app.account_with_key("starter").await;
    let id = &key[3..11];
    let intruder = app.account("starter").await;
    let session = app.login(&intruder.email).await;
    let resp = app
        .with_session(Method::DELETE, &format!("/api-keys/{id}"), &session)
        .send()
        .await
        .unwrap();
    assert_problem(resp, StatusCode::NOT_FOUND, "not_found").await;
    assert_eq!(
        app.get("/me")
            .bearer_auth(&key)
            .send()
            .await
            .unwrap()
            .status(),
        StatusCode::OK
    );
}

#[tokio::test]
async fn free_accounts_cannot_create_keys() {
    let app = spawn_app().await;
    let account = app.account("free").await;
    let session = app.login(&account.email).await;
    let resp = app
        .with_session(Method::POST, "/api-keys", &session)
        .json(&json!({"name": "k"}))
        .send()
        .await
        .unwrap();
    assert_problem(resp, StatusCode::FORBIDDEN, "api_key_requires_paid_tier").await;
    let resp = app
        .admin(
            Method::POST,
            &format!("/admin/accounts/{}/api-keys", account.id),
        )
        .json(&json!({"name": "k"}))
        .send()
        .await
        .unwrap();
    assert_problem(resp, StatusCode::FORBIDDEN, "api_key_requires_paid_tier").await;
    assert_eq!(app.scalar_i64("SELECT count(*) FROM api_keys").await, 0);
}

#[tokio::test]
async fn keys_cannot_manage_keys() {
    let app = spawn_app().await;
    let (_, key) = app.account_with_key("professional").await;
    for (method, path) in [
        (Method::POST, "/api-keys"),
        (Method::GET, "/api-keys"),
        (Method::DELETE, "/api-keys/abcd1234"),
    ] {
        let resp = app
            .request(method, path)
            .bearer_auth(&key)
            .json(&json!({"name": "x"}))
            .send()
            .await
            .unwrap();
        assert_problem(resp, StatusCode::FORBIDDEN, "forbidden").await;
    }
}

#[tokio::test]
async fn malformed_and_unknown_keys_are_refused() {
    let app = spawn_app().await;
    let (_, key) = app.account_with_key("starter").await;
    let unknown = format!("ik_zzzzzzzz_{}", "0".repeat(64));
    let wrong_secret = format!("{}{}", &key[..12], "f".repeat(64));
    for bad in [
        "ik_short",
        "garbage",
        unknown.as_str(),
        wrong_secret.as_str(),
    ] {
        let resp = app.get("/me").bearer_auth(bad).send().await.unwrap();
        assert_problem(resp, StatusCode::UNAUTHORIZED, "unauthorized").await;
    }
}

#[tokio::test]
async fn a_downgraded_accounts_key_is_refused_on_use() {
    let app = spawn_app().await;
    let (account, key) = app.account_with_key("starter").await;
    app.patch_account(account.id, json!({"tier": "free"})).await;
    let resp = app.get("/me").bearer_auth(&key).send().await.unwrap();
    assert_problem(resp, StatusCode::FORBIDDEN, "api_access_not_in_tier").await;
    // The dashboard still works for the account.
    let session = app.login(&account.email).await;
    assert_eq!(
        app.get("/me")
            .header("cookie", &session.cookie)
            .send()
            .await
            .unwrap()
            .status(),
        StatusCode::OK
    );
    // Upgraded again, the same key works.
    app.patch_account(account.id, json!({"tier": "professional"}))
        .await;
    assert_eq!(
        app.get("/me")
            .bearer_auth(&key)
            .send()
            .await
            .unwrap()
            .status(),
        StatusCode::OK
    );
}

#[tokio::test]
async fn the_session_route_gives_a_reloaded_page_its_account_and_csrf_token() {
    let app = spawn_app().await;
    let account = app.account("starter").await;
    let session = app.login(&account.email).await;
    let resp = app
        .get("/auth/session")
        .header("cookie", &session.cookie)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    let body: Value = resp.json().await.unwrap();
    assert_eq!(body["account"]["email"], account.email.as_str());
    assert_eq!(body["account"]["tier"], "starter");
    assert_eq!(body["csrf_token"], session.csrf.as_str());

    // The token it gives is the one state-changing requests need.
    let resp = app
        .post("/auth/logout")
        .header("cookie", &session.cookie)
        .header("x-csrf-token", body["csrf_token"].as_str().unwrap())
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::NO_CONTENT);
    let resp = app
        .get("/auth/session")
        .header("cookie", &session.cookie)
        .send()
        .await
        .unwrap();
    assert_problem(resp, StatusCode::UNAUTHORIZED, "unauthorized").await;
    let resp = app.get("/auth/session").send().await.unwrap();
    assert_problem(resp, StatusCode::UNAUTHORIZED, "unauthorized").await;

    // An API key is not a session: it never learns a CSRF token.
    let key = app.key_for(&account).await;
    let resp = app
        .get("/auth/session")
        .bearer_auth(&key)
        .send()
        .await
        .unwrap();
    assert_problem(resp, StatusCode::FORBIDDEN, "forbidden").await;
}

#[tokio::test]
async fn a_login_flood_past_the_hash_bound_gets_503_with_retry_after() {
    let app = crate::helpers::spawn()
        .var("PASSWORD_HASH_CONCURRENCY", "1")
        .var("PASSWORD_HASH_QUEUE", "1")
        .var("ANON_RATE_LIMIT_PER_MINUTE", "1000")
        .start()
        .await;
    let account = app.account("free").await;
    let logins = (0..12).map(|_| {
        app.post("/auth/login")
            .json(&json!({"email": account.email, "password": PASSWORD}))
            .send()
    });
    let answers = futures_util::future::join_all(logins).await;
    let (mut ok, mut busy) = (0, 0);
    for resp in answers {
        let resp = resp.unwrap();
        if resp.status() == StatusCode::OK {
            ok += 1;
            continue;
        }
        assert_eq!(resp.headers()["retry-after"], "1");
        let body =
            assert_problem(resp, StatusCode::SERVICE_UNAVAILABLE, "service_unavailable").await;
        assert_eq!(body["retry_after"], 1);
        busy += 1;
    }
    assert!(ok >= 1 && busy >= 1, "{ok} logged in, {busy} refused");
    // Only the logins that were let through made sessions.
    assert_eq!(app.scalar_i64("SELECT count(*) FROM sessions").await, ok);
    // The slots come back once the flood is over.
    app.login(&account.email).await;
}
