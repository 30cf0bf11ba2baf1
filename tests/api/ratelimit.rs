//! Per-minute limits: GCRA in Postgres, its headers on every route and
//! status, shared by every instance.

use std::time::Duration;

use reqwest::{Method, Response, StatusCode};
use serde_json::json;

use crate::helpers::{TestApp, assert_problem, spawn, spawn_app};

fn header(resp: &Response, name: &str) -> Option<String> {
    resp.headers()
        .get(name)
        .map(|v| v.to_str().unwrap().to_owned())
}

fn num(resp: &Response, name: &str) -> i64 {
    header(resp, name)
        .unwrap_or_else(|| panic!("{name} missing"))
        .parse()
        .unwrap()
}

/// Asserts the full set of rate-limit headers and their mutual consistency;
/// returns Remaining.
fn assert_rate_headers(resp: &Response, limit: i64) -> i64 {
    assert_eq!(
        num(resp, "x-ratelimit-limit"),
        limit,
        "X-RateLimit-Limit on {}",
        resp.status()
    );
    let remaining = num(resp, "x-ratelimit-remaining");
    let reset = num(resp, "x-ratelimit-reset");
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64;
    assert!((0..=limit).contains(&remaining));
    assert!(
        reset >= now - 1 && reset <= now + 61,
        "reset {reset} vs now {now}"
    );
    assert_eq!(
        header(resp, "ratelimit-policy").unwrap(),
        format!("\"minute\";q={limit};w=60")
    );
    let rl = header(resp, "ratelimit").unwrap();
    let (r, t) = rl
        .strip_prefix("\"minute\";r=")
        .and_then(|s| s.split_once(";t="))
        .unwrap();
    assert_eq!(r.parse::<i64>().unwrap(), remaining, "{rl}");
    let t: i64 = t.parse().unwrap();
    assert!(
        (reset - now - t).abs() <= 1,
        "t={t} reset={reset} now={now}"
    );
    remaining
}

#[tokio::test]
async fn a_starter_key_gets_exactly_its_burst_then_429() {
    let app = spawn_app().await;
    let (_, key) = app.account_with_key("starter").await;
    for expected in (0..30).rev() {
        let resp = app.get("/me").bearer_auth(&key).send().await.unwrap();
        assert_eq!(resp.status(), StatusCode::OK);
        assert_eq!(assert_rate_headers(&resp, 30), expected);
        assert!(resp.headers().get("retry-after").is_none());
    }
    let resp = app.get("/me").bearer_auth(&key).send().await.unwrap();
    assert_eq!(assert_rate_headers(&resp, 30), 0);
    let retry = num(&resp, "retry-after");
    assert!(
        (1..=2).contains(&retry),
        "one request comes back every 2 s: {retry}"
    );
    let body = assert_problem(resp, StatusCode::TOO_MANY_REQUESTS, "rate_limited").await;
    assert_eq!(body["limit"], 30);
    assert_eq!(body["retry_after"], retry);
}

#[tokio::test]
async fn after_retry_after_the_next_request_passes() {
    let app = spawn_app().await;
    let (account, key) = app.account_with_key("starter").await;
    app.patch_account(
        account.id,
        json!({"custom_limits": {"requests_per_minute": 60}}),
    )
    .await;
    // The burst of 60, then the first refusal (a slow machine may earn a
    // request back during the burst; the refusal comes all the same).
    let mut allowed = 0;
    let refused = loop {
        let resp = app.get("/me").bearer_auth(&key).send().await.unwrap();
        if resp.status() == StatusCode::TOO_MANY_REQUESTS {
            break resp;
        }
        assert_eq!(resp.status(), StatusCode::OK);
        allowed += 1;
        assert!(allowed <= 70, "never refused");
    };
    assert!(allowed >= 60, "the whole burst of 60 first, got {allowed}");
    let retry = num(&refused, "retry-after");
    assert_eq!(retry, 1, "one request per second comes back");
    tokio::time::sleep(Duration::from_secs(retry as u64)).await;
    let resp = app.get("/me").bearer_auth(&key).send().await.unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    assert_eq!(
        assert_rate_headers(&resp, 60),
        0,
        "Remaining never promises a refused request"
    );
}

#[tokio::test]
async fn two_instances_share_one_limit_exactly() {
    let first = spawn_app().await;
    let second = first.second_instance().await;
    let (account, key) = first.account_with_key("starter").await;
    // 10 a minute: the next request is earned only 6 s later, far beyond
    // what this loop takes even on a loaded machine.
    first
        .patch_account(
            account.id,
            json!({"custom_limits": {"requests_per_minute": 10}}),
        )
        .await;
    let start = std::time::Instant::now();
    let mut allowed = 0;
    for i in 0..20 {
        let app: &TestApp = if i % 2 == 0 { &first } else { &second };
        if app
            .get("/me")
            .bearer_auth(&key)
            .send()
            .await
            .unwrap()
            .status()
            == StatusCode::OK
        {
            allowed += 1;
        }
    }
    assert!(
        start.elapsed() < Duration::from_secs(6),
        "too slow to judge"
    );
    assert_eq!(allowed, 10);
}

#[tokio::test]
async fn concurrent_requests_never_exceed_the_limit() {
    // 150 requests at once: the bound on requests in flight would refuse
    // some of those the per-minute limit lets through.
    let app = spawn()
        .var("MAX_REQUESTS_IN_FLIGHT_PER_ACCOUNT", "1000")
        .start()
        .await;
    let (_, key) = app.account_with_key("professional").await;
    let start = std::time::Instant::now();
    let requests = (0..150).map(|_| app.get("/me").bearer_auth(&key).send());
    let results = futures_util::future::join_all(requests).await;
    // One request is earned every 0.6 s while the burst is decided.
    let earned = (start.elapsed().as_secs_f64() / 0.6).ceil() as usize;
    let ok = results
        .iter()
        .filter(|r| r.as_ref().unwrap().status() == StatusCode::OK)
        .count();
    assert!(
        (100..=100 + earned).contains(&ok),
        "allowed {ok} of 150 (earned {earned})"
    );
    // Requests decided together still each get their own place in line.
    let remaining: std::collections::BTreeSet<i64> = results
        .iter()
        .map(|r| r.as_ref().unwrap())
        .filter(|r| r.status() == StatusCode::OK)
        .map(|r| num(r, "x-ratelimit-remaining"))
        .collect();
    assert!(
        remaining.len() >= 98,
        "{} distinct Remaining values",
        remaining.len()
    );
}

#[tokio::test]
async fn headers_are_on_every_status() {
    let app = spawn_app().await;
    let (_, key) = app.account_with_key("professional").await;

    let ok = app.get("/usage").bearer_auth(&key).send().await.unwrap();
    assert_eq!(ok.status(), StatusCode::OK);
    assert_rate_headers(&ok, 100);
    let unknown = app
        .get("/no/such/path")
        .bearer_auth(&key)
        .send()
        .await
        .unwrap();
    assert_eq!(unknown.status(), StatusCode::NOT_FOUND);
    assert_rate_headers(&unknown, 100);
    let missing_key = app
        .request(Method::DELETE, "/api-keys/zzzzzzzz")
        .bearer_auth(&key)
        .send()
        .await
        .unwrap();
    assert_eq!(missing_key.status(), StatusCode::FORBIDDEN);
    assert_rate_headers(&missing_key, 100);
    let wrong_type = app.post("/auth/signup").body("{}").send().await.unwrap();
    assert_eq!(wrong_type.status(), StatusCode::UNSUPPORTED_MEDIA_TYPE);
    assert_rate_headers(&wrong_type, 60);
    let too_big = app
        .post("/auth/signup")
        .json(&json!({"email": "x".repeat(70_000)}))
        .send()
        .await
        .unwrap();
    assert_eq!(too_big.status(), StatusCode::PAYLOAD_TOO_LARGE);
    assert_rate_headers(&too_big, 60);

    // A bad key is an anonymous request: the per-IP policy answers.
    let bad = app.get("/me").bearer_auth("ik_nope").send().await.unwrap();
    assert_eq!(bad.status(), StatusCode::UNAUTHORIZED);
    assert_rate_headers(&bad, 60);

    // A server error still carries them.
    sqlx::query("ALTER TABLE monthly_usage RENAME TO monthly_usage_gone")
        .execute(&app.state.db)
        .await
        .unwrap();
    let failed = app.get("/usage").bearer_auth(&key).send().await.unwrap();
    assert_eq!(failed.status(), StatusCode::INTERNAL_SERVER_ERROR);
    assert_rate_headers(&failed, 100);
    sqlx::query("ALTER TABLE monthly_usage_gone RENAME TO monthly_usage")
        .execute(&app.state.db)
        .await
        .unwrap();

    // Exempt routes carry none.
    let health = app.get("/healthz").bearer_auth(&key).send().await.unwrap();
    assert!(health.headers().get("x-ratelimit-limit").is_none());
}

#[tokio::test]
async fn session_requests_are_unlimited_and_unlabelled() {
    let app = spawn_app().await;
    let account = app.account("free").await;
    let session = app.login(&account.email).await;
    for _ in 0..25 {
        let resp = app
            .get("/me")
            .header("cookie", &session.cookie)
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), StatusCode::OK);
        assert!(resp.headers().get("x-ratelimit-limit").is_none());
        assert!(resp.headers().get("ratelimit").is_none());
    }
}

#[tokio::test]
async fn login_attempts_are_throttled_per_ip() {
    let app = spawn().var("ANON_RATE_LIMIT_PER_MINUTE", "5").start().await;
    let account = app.account("free").await;
    let attempt = || {
        app.post("/auth/login")
            .json(&json!({"email": account.email, "password": "guess guess"}))
            .send()
    };
    for _ in 0..5 {
        assert_eq!(attempt().await.unwrap().status(), StatusCode::UNAUTHORIZED);
    }
    let resp = attempt().await.unwrap();
    assert_rate_headers(&resp, 5);
    assert!(num(&resp, "retry-after") >= 1);
    assert_problem(resp, StatusCode::TOO_MANY_REQUESTS, "rate_limited").await;

    // A session cookie does not lift the login limit.
    let other = app.account("free").await;
    let resp = app
        .post("/auth/login")
        .header("cookie", "intake_session=whatever")
        .json(&json!({"email": other.email, "password": crate::helpers::PASSWORD}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::TOO_MANY_REQUESTS);

    // Key guessing is throttled the same way.
    let resp = app
        .get("/me")
        .bearer_auth(format!("ik_aaaaaaaa_{}", "0".repeat(64)))
        .send()
        .await
        .unwrap();
    assert_problem(resp, StatusCode::TOO_MANY_REQUESTS, "rate_limited").await;
}

#[tokio::test]
async fn forwarded_for_counts_only_from_trusted_proxies() {
    let untrusted = spawn().var("ANON_RATE_LIMIT_PER_MINUTE", "3").start().await;
    for i in 0..3 {
        let resp = untrusted
            .get("/limits")
            .header("x-forwarded-for", format!("198.51.100.{i}"))
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), StatusCode::OK);
    }
    let resp = untrusted
        .get("/limits")
        .header("x-forwarded-for", "198.51.100.99")
        .send()
        .await
        .unwrap();
    assert_eq!(
        resp.status(),
        StatusCode::TOO_MANY_REQUESTS,
        "a spoofed X-Forwarded-For changes nothing"
    );

    let proxied = spawn()
        .var("ANON_RATE_LIMIT_PER_MINUTE", "3")
        .var("TRUSTED_PROXIES", "127.0.0.1/32")
        .start()
        .await;
    for _ in 0..3 {
        let resp = proxied
            .get("/limits")
            .header("x-forwarded-for", "203.0.113.5")
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), StatusCode::OK);
    }
    let resp = proxied
        .get("/limits")
        .header("x-forwarded-for", "203.0.113.5")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::TOO_MANY_REQUESTS);
    // Another client behind the same proxy has its own allowance; a forged
    // leftmost entry does not change who the proxy says the client is.
    let resp = proxied
        .get("/limits")
        .header("x-forwarded-for", "203.0.113.5, 203.0.113.6")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    assert_eq!(num(&resp, "x-ratelimit-remaining"), 2);
}

#[tokio::test]
async fn a_custom_limit_applies_without_a_restart() {
    let app = spawn_app().await;
    let (account, key) = app.account_with_key("enterprise").await;
    let resp = app.get("/me").bearer_auth(&key).send().await.unwrap();
    assert_eq!(assert_rate_headers(&resp, 500), 499);
    app.patch_account(
        account.id,
        json!({"custom_limits": {"requests_per_minute": 1000}}),
    )
    .await;
    let resp = app.get("/me").bearer_auth(&key).send().await.unwrap();
    // The earlier request is still counted (0.12 s of the new 0.06 s interval each).
    let remaining = assert_rate_headers(&resp, 1000);
    assert!((996..=998).contains(&remaining), "{remaining}");
    let usage: serde_json::Value = app
        .get("/usage")
        .bearer_auth(&key)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(usage["limits"]["requests_per_minute"], 1000);
}

#[tokio::test]
async fn a_failing_store_fails_open_by_default() {
    let app = spawn_app().await;
    let (_, key) = app.account_with_key("starter").await;
    let before = app.metrics().await;
    sqlx::query("ALTER TABLE rate_limits RENAME TO rate_limits_gone")
        .execute(&app.state.db)
        .await
        .unwrap();
    let resp = app.get("/me").bearer_auth(&key).send().await.unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    assert!(
        resp.headers().get("x-ratelimit-limit").is_none(),
        "no numbers to report"
    );
    // Other tests only add to the counter: it grew at least by this
    // request's failure.
    let after = app.metrics().await;
    assert!(after.grew(&before, "intake_ratelimit_store_errors_total", &[]) >= 1.0);
}

#[tokio::test]
async fn a_failing_store_fails_closed_when_asked() {
    let app = spawn().var("RATE_LIMIT_FAIL_OPEN", "false").start().await;
    let (_, key) = app.account_with_key("starter").await;
    sqlx::query("ALTER TABLE rate_limits RENAME TO rate_limits_gone")
        .execute(&app.state.db)
        .await
        .unwrap();
    let resp = app.get("/me").bearer_auth(&key).send().await.unwrap();
    assert_problem(resp, StatusCode::SERVICE_UNAVAILABLE, "service_unavailable").await;
}

#[tokio::test]
async fn limits_can_be_switched_off() {
    let app = spawn().var("RATE_LIMIT_ENABLED", "false").start().await;
    let (_, key) = app.account_with_key("starter").await;
    for _ in 0..40 {
        let resp = app.get("/me").bearer_auth(&key).send().await.unwrap();
        assert_eq!(resp.status(), StatusCode::OK);
        assert!(resp.headers().get("x-ratelimit-limit").is_none());
    }
}

#[tokio::test]
async fn ipv6_clients_share_the_anonymous_budget_of_their_64() {
    let app = spawn()
        .var("TRUSTED_PROXIES", "127.0.0.1")
        .var("ANON_RATE_LIMIT_PER_MINUTE", "2")
        .start()
        .await;
    let from = |ip: &str| app.get("/limits").header("x-forwarded-for", ip).send();
    assert_eq!(
        from("2001:db8:1:2::1").await.unwrap().status(),
        StatusCode::OK
    );
    assert_eq!(
        from("2001:db8:1:2::2").await.unwrap().status(),
        StatusCode::OK
    );
    // A third address of the same /64 is the same client.
    let resp = from("2001:db8:1:2:ffff::3").await.unwrap();
    assert_problem(resp, StatusCode::TOO_MANY_REQUESTS, "rate_limited").await;
    // Another /64 has its own budget.
    assert_eq!(
        from("2001:db8:1:3::1").await.unwrap().status(),
        StatusCode::OK
    );
    let keys: Vec<String> =
        sqlx::query_scalar("SELECT key FROM rate_limits WHERE key LIKE 'ip:2001:%' ORDER BY key")
            .fetch_all(&app.state.db)
            .await
            .unwrap();
    assert_eq!(keys, ["ip:2001:db8:1:2::/64", "ip:2001:db8:1:3::/64"]);
}

/// The check of an API key the way the middleware sends it.
fn key_check(key: &str, count: bool) -> intake::auth::KeyCheck {
    let parsed = intake::auth::api_keys::parse(key).unwrap();
    intake::auth::KeyCheck {
        id: parsed.id.to_owned(),
        digest: intake::auth::api_keys::digest(parsed.secret),
        count,
    }
}

#[tokio::test]
async fn the_batched_key_statement_reads_every_tier_and_custom_limit_as_the_server_does() {
    let app = spawn_app().await;
    let limiter = &app.state.keys;
    // The free tier has no API keys unless an override grants them.
    let free = app.account("free").await;
    app.patch_account(free.id, json!({"custom_limits": {"api_keys": true}}))
        .await;
    let mut cases = vec![(app.key_for(&free).await, 10)];
    for (tier, limit) in [("starter", 30), ("professional", 100), ("enterprise", 500)] {
        cases.push((app.account_with_key(tier).await.1, limit));
    }
    let (custom, key) = app.account_with_key("starter").await;
    app.patch_account(
        custom.id,
        json!({"custom_limits": {"requests_per_minute": 7}}),
    )
    .await;
    cases.push((key, 7));

    for (key, limit) in &cases {
        // Uncounted: the account, no decision.
        let looked_up = limiter.check(key_check(key, false)).await.unwrap();
        assert!(looked_up.account.is_some(), "{key}");
        assert!(looked_up.decision.is_none());
        // The first counted request teaches this instance the account's
        // limit (an uncounted one teaches nothing): the statement cannot
        // count it and leaves it to the caller, so it spends nothing here.
        let learning = limiter.check(key_check(key, true)).await.unwrap();
        assert!(learning.account.is_some(), "{key}");
        assert!(
            learning.decision.is_none(),
            "{key}: decided before it was known"
        );
        // The next creates the subject, the ones after it are decided by the
        // batched statement itself; small limits are spent to the last
        // request of the burst (a request is earned back only seconds later).
        let burst = if *limit <= 30 { *limit } else { 2 };
        for remaining in (limit - burst..*limit).rev() {
            let counted = limiter.check(key_check(key, true)).await.unwrap();
            let account = counted.account.expect("a valid key");
            assert_eq!(account.limits().requests_per_minute, *limit as u32);
            let d = counted.decision.expect("a counted request is decided");
            assert!(d.allowed);
            assert_eq!(d.limit, *limit as u32, "{key}");
            assert_eq!(i64::from(d.remaining), remaining, "{key}");
        }
        if burst == *limit {
            let refused = limiter.check(key_check(key, true)).await.unwrap();
            assert!(!refused.decision.unwrap().allowed, "{key}: past the burst");
        }
    }
}

#[tokio::test]
async fn a_key_id_without_its_secret_spends_nothing_of_the_account() {
    let app = spawn_app().await;
    let (_, key) = app.account_with_key("starter").await;
    let parsed = intake::auth::api_keys::parse(&key).unwrap();
    let forged = format!("ik_{}_{}", parsed.id, "0".repeat(64));
    assert_ne!(forged, key);
    for _ in 0..5 {
        let resp = app.get("/me").bearer_auth(&forged).send().await.unwrap();
        // Refused, and counted against the caller's address instead.
        assert_rate_headers(&resp, 60);
        assert_problem(resp, StatusCode::UNAUTHORIZED, "unauthorized").await;
    }
    let resp = app.get("/me").bearer_auth(&key).send().await.unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    assert_eq!(assert_rate_headers(&resp, 30), 29);
}

#[tokio::test]
async fn keys_of_one_account_decided_together_share_its_limit() {
    let app = spawn_app().await;
    let (account, first) = app.account_with_key("starter").await;
    let second = app.key_for(&account).await;
    app.patch_account(
        account.id,
        json!({"custom_limits": {"requests_per_minute": 10}}),
    )
    .await;
    let start = std::time::Instant::now();
    let requests = (0..40).map(|i| {
        let key = if i % 2 == 0 { &first } else { &second };
        app.get("/me").bearer_auth(key).send()
    });
    let results = futures_util::future::join_all(requests).await;
    assert!(
        start.elapsed() < Duration::from_secs(6),
        "too slow to judge: a request is earned every 6 s"
    );
    let ok: Vec<i64> = results
        .iter()
        .map(|r| r.as_ref().unwrap())
        .filter(|r| r.status() == StatusCode::OK)
        .map(|r| num(r, "x-ratelimit-remaining"))
        .collect();
    assert_eq!(ok.len(), 10, "allowed {} of 40", ok.len());
    let distinct: std::collections::BTreeSet<i64> = ok.into_iter().collect();
    assert_eq!(distinct, (0..10).collect(), "each in its own place in line");
}

#[tokio::test]
async fn the_database_computes_every_interval_as_the_server_does() {
    let app = spawn_app().await;
    let limits: Vec<i64> = [1, 7, 10, 30, 59, 61, 100, 500, 999, 7_000, 1_000_000]
        .into_iter()
        .chain([
            59_999_999,
            60_000_000,
            60_000_001,
            100_000_000,
            i64::from(u32::MAX),
        ])
        .collect();
    let sql = format!(
        "SELECT {} FROM unnest($1::int8[]) AS x(rpm)",
        intake::ratelimit::interval_sql("rpm")
    );
    let intervals: Vec<i64> = sqlx::query_scalar(&sql)
        .bind(&limits)
        .fetch_all(&app.state.db)
        .await
        .unwrap();
    for (limit, t) in limits.iter().zip(intervals) {
        let policy = intake::ratelimit::Policy::account(uuid::Uuid::nil(), *limit as u32);
        assert_eq!(t, policy.interval_nanos(), "limit {limit}");
    }
}

#[tokio::test]
async fn subjects_are_found_by_their_key_whatever_the_statistics_say() {
    let app = spawn_app().await;
    let mut conn = app.state.db.acquire().await.unwrap();
    // Statistics of an almost empty table, as after a quiet night, and the
    // generic plan a long-lived connection ends up caching.
    sqlx::raw_sql(
        "INSERT INTO rate_limits VALUES ('ip:192.0.2.1', now(), 1, 1000);
         ANALYZE rate_limits;
         SET plan_cache_mode = force_generic_plan;",
    )
    .execute(&mut *conn)
    .await
    .unwrap();
    let [decide, counted] = [
        intake::ratelimit::decide_statement(),
        intake::auth::counted_key_statement(),
    ];
    for (name, sql, args) in [
        (
            "decide",
            decide,
            "'{ip:192.0.2.1}'::text[], '{1}'::int8[], '{1000}'::int8[], '{60000000000}'::int8[]",
        ),
        (
            "counted",
            counted,
            "'{k}'::text[], '{\"\\\\x00\"}'::bytea[], '{60}'::int8[], '{0}'::int8[]",
        ),
    ] {
        sqlx::raw_sql(&format!("PREPARE {name} AS {sql}"))
            .execute(&mut *conn)
            .await
            .unwrap();
        let plan: Vec<String> = sqlx::query_scalar(&format!("EXPLAIN EXECUTE {name}({args})"))
            .fetch_all(&mut *conn)
            .await
            .unwrap();
        let plan = plan.join("\n");
        assert!(
            plan.contains("Conflict Arbiter Indexes: rate_limits_pkey"),
            "{name}: {plan}"
        );
        // No scan of the table: each subject is a probe of its key.
        assert!(!plan.contains("Scan on rate_limits"), "{name}: {plan}");
        assert!(!plan.contains("Scan using rate_limits"), "{name}: {plan}");
    }
    sqlx::raw_sql("DEALLOCATE ALL; RESET plan_cache_mode;")
        .execute(&mut *conn)
        .await
        .unwrap();
}
