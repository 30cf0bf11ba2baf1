//! What keeps sign-up and login floods from the service: sign-ups per
//! address per hour, a doubling delay for an e-mail address whose logins
//! keep failing, and `/auth/*` refused while its limiter cannot decide.

use reqwest::{Response, StatusCode};
use serde_json::{Value, json};

use crate::helpers::{PASSWORD, TestApp, assert_problem, spawn, spawn_app};

fn header(resp: &Response, name: &str) -> Option<i64> {
    resp.headers()
        .get(name)
        .map(|v| v.to_str().unwrap().parse().unwrap())
}

/// A sign-up as a client behind the trusted proxy at `from`.
async fn signup(app: &TestApp, from: &str, email: &str) -> Response {
    app.post("/auth/signup")
        .header("x-forwarded-for", from)
        .json(&json!({"email": email, "password": PASSWORD}))
        .send()
        .await
        .unwrap()
}

/// A login as a client behind the trusted proxy at `from`.
async fn login(app: &TestApp, from: &str, email: &str, password: &str) -> Response {
    app.post("/auth/login")
        .header("x-forwarded-for", from)
        .json(&json!({"email": email, "password": password}))
        .send()
        .await
        .unwrap()
}

#[tokio::test]
async fn signups_past_the_hourly_limit_of_an_address_are_refused_on_every_instance() {
    let app = spawn().var("TRUSTED_PROXIES", "127.0.0.1").start().await;
    let other = app.second_instance().await;
    let from = "198.51.100.7";

    // A sign-up refused for its input creates nothing and spends nothing.
    let bad = app
        .post("/auth/signup")
        .header("x-forwarded-for", from)
        .json(&json!({"email": "not-an-email", "password": PASSWORD}))
        .send()
        .await
        .unwrap();
    assert_problem(bad, StatusCode::UNPROCESSABLE_ENTITY, "invalid_request").await;

    // Five (the default) an hour, whichever instance they reach; the
    // anonymous per-minute limit counts each of them beside.
    for n in 0..5 {
        let on = if n % 2 == 0 { &app } else { &other };
        let resp = signup(on, from, &format!("s{n}@example.com")).await;
        assert_eq!(resp.status(), StatusCode::CREATED, "sign-up {n}");
        assert_eq!(header(&resp, "x-ratelimit-limit"), Some(60));
        let remaining = header(&resp, "x-ratelimit-remaining").unwrap();
        assert!(remaining < 60, "counted per minute too: {remaining} left");
    }
    let resp = signup(&other, from, "s5@example.com").await;
    assert_eq!(header(&resp, "x-ratelimit-limit"), Some(60));
    // One sign-up every 12 minutes once the five are spent.
    let retry = header(&resp, "retry-after").expect("Retry-After");
    assert!((700..=720).contains(&retry), "Retry-After: {retry}");
    let body = assert_problem(resp, StatusCode::TOO_MANY_REQUESTS, "rate_limited").await;
    assert_eq!(body["limit"], 5);
    assert_eq!(body["retry_after"], retry);
    assert_eq!(app.scalar_i64("SELECT count(*) FROM accounts").await, 5);

    // Another address has its own five.
    let resp = signup(&app, "203.0.113.9", "t0@example.com").await;
    assert_eq!(resp.status(), StatusCode::CREATED);

    // An IPv6 client is its /64.
    for n in 0..5 {
        let resp = signup(
            &other,
            &format!("2001:db8:1:2::{n}"),
            &format!("v{n}@example.com"),
        )
        .await;
        assert_eq!(
            resp.status(),
            StatusCode::CREATED,
            "sign-up {n} from the /64"
        );
    }
    let resp = signup(&app, "2001:db8:1:2:ffff::9", "v5@example.com").await;
    assert_problem(resp, StatusCode::TOO_MANY_REQUESTS, "rate_limited").await;

    assert_eq!(app.scalar_i64("SELECT count(*) FROM accounts").await, 11);
    let subjects: Vec<String> =
        sqlx::query_scalar("SELECT key FROM rate_limits WHERE key LIKE 'signup:%' ORDER BY key")
            .fetch_all(&app.state.db)
            .await
            .unwrap();
    assert_eq!(
        subjects,
        [
            "signup:ip:198.51.100.7",
            "signup:ip:2001:db8:1:2::/64",
            "signup:ip:203.0.113.9"
        ]
    );
}

/// Ten failed logins of `email`, each from an address of its own.
async fn fail_ten_times(app: &TestApp, email: &str, first: u8) {
    for n in 0..10 {
        let resp = login(
            app,
            &format!("198.51.100.{}", first + n),
            email,
            "wrong password",
        )
        .await;
        assert_problem(resp, StatusCode::UNAUTHORIZED, "unauthorized").await;
    }
}

/// The delay of a refused login, checked against its answer: 429
/// `rate_limited`, `Retry-After` and `retry_after` alike, no cookie.
async fn delayed(resp: Response) -> (i64, Value) {
    assert!(resp.headers().get("set-cookie").is_none());
    let retry = header(&resp, "retry-after").expect("Retry-After");
    let body = assert_problem(resp, StatusCode::TOO_MANY_REQUESTS, "rate_limited").await;
    assert_eq!(body["retry_after"], retry);
    (retry, body)
}

/// Moves the end of every delay to now, as when it has run out.
async fn delays_run_out(app: &TestApp) {
    sqlx::query("UPDATE login_failures SET locked_until = now() WHERE locked_until > now()")
        .execute(&app.state.db)
        .await
        .unwrap();
}

#[tokio::test]
async fn logins_failing_ten_times_in_a_row_are_delayed_from_any_address_and_the_delay_doubles() {
    let app = spawn().var("TRUSTED_PROXIES", "127.0.0.1").start().await;
    let account = app.account("free").await;

    fail_ten_times(&app, &account.email, 0).await;
    // The right password, from yet another address, waits too: a minute.
    let (retry, known) = delayed(login(&app, "203.0.113.1", &account.email, PASSWORD).await).await;
    assert!((1..=60).contains(&retry), "Retry-After: {retry}");
    assert_eq!(app.scalar_i64("SELECT count(*) FROM sessions").await, 0);

    // An e-mail address no account has is treated the same.
    fail_ten_times(&app, "nobody@example.com", 100).await;
    let (retry, unknown) =
        delayed(login(&app, "203.0.113.2", "nobody@example.com", PASSWORD).await).await;
    assert!((1..=60).contains(&retry), "Retry-After: {retry}");
    let without_delay = |mut v: Value| {
        for field in ["detail", "retry_after"] {
            v.as_object_mut().unwrap().remove(field);
        }
        v
    };
    assert_eq!(without_delay(known), without_delay(unknown));

    // Once the minute is over, one more failure: two minutes.
    delays_run_out(&app).await;
    let resp = login(&app, "203.0.113.3", &account.email, "wrong again").await;
    assert_problem(resp, StatusCode::UNAUTHORIZED, "unauthorized").await;
    let (retry, _) = delayed(login(&app, "203.0.113.4", &account.email, PASSWORD).await).await;
    assert!((61..=120).contains(&retry), "Retry-After: {retry}");

    // A success ends the streak: the next failure is one of a new one.
    delays_run_out(&app).await;
    let resp = login(&app, "203.0.113.5", &account.email, PASSWORD).await;
    assert_eq!(resp.status(), StatusCode::OK);
    assert_eq!(app.scalar_i64("SELECT count(*) FROM sessions").await, 1);
    assert_eq!(
        app.scalar_i64("SELECT count(*) FROM login_failures").await,
        1,
        "only the unknown address's streak is left"
    );
    // Without the reset, the first would have started a four-minute delay.
    for _ in 0..2 {
        let resp = login(&app, "203.0.113.6", &account.email, "wrong").await;
        assert_problem(resp, StatusCode::UNAUTHORIZED, "unauthorized").await;
    }
}

#[tokio::test]
async fn failures_further_apart_than_fifteen_minutes_start_over() {
    let app = spawn()
        .var("TRUSTED_PROXIES", "127.0.0.1")
        .var("LOGIN_FAILURES_BEFORE_DELAY", "3")
        .start()
        .await;
    let account = app.account("free").await;
    let fail = || login(&app, "198.51.100.1", &account.email, "wrong password");
    for _ in 0..2 {
        assert_problem(fail().await, StatusCode::UNAUTHORIZED, "unauthorized").await;
    }
    // Fifteen minutes after the first failure, the streak is forgotten.
    sqlx::query("UPDATE login_failures SET expires_at = now()")
        .execute(&app.state.db)
        .await
        .unwrap();
    for _ in 0..3 {
        assert_problem(fail().await, StatusCode::UNAUTHORIZED, "unauthorized").await;
    }
    // Three in a row within the window: delayed.
    let (retry, _) = delayed(login(&app, "198.51.100.2", &account.email, PASSWORD).await).await;
    assert!((1..=60).contains(&retry), "Retry-After: {retry}");
}

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

    // The failed-login store is a limiter too.
    sqlx::raw_sql(
        "ALTER TABLE rate_limits_gone RENAME TO rate_limits;
         ALTER TABLE login_failures RENAME TO login_failures_gone;",
    )
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
    assert_eq!(app.scalar_i64("SELECT count(*) FROM sessions").await, 0);
}
