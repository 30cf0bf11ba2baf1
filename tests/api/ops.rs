//! Operations routes, request ids, and problem+json on every kind of error.

use std::{
    collections::BTreeSet,
    time::{Duration, Instant},
};

use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

use crate::helpers::{
    Backend, assert_problem, eventually, metrics::Metrics, processes::Instance, spawn, spawn_app,
};

#[tokio::test]
async fn health_and_readiness_answer() {
    for backend in [Backend::S3, Backend::Fs] {
        let app = spawn().backend(backend).start().await;
        let health: Value = app
            .get("/healthz")
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        assert_eq!(health["status"], "ok");
        let resp = app.get("/readyz").send().await.unwrap();
        assert_eq!(resp.status(), StatusCode::OK, "{backend:?}");
    }
}

#[tokio::test]
async fn readiness_fails_when_storage_is_unreachable() {
    // A port nothing listens on.
    let app = spawn()
        .var("S3_ENDPOINT", "http://127.0.0.1:9")
        .start()
        .await;
    let resp = app.get("/readyz").send().await.unwrap();
    let body = assert_problem(resp, StatusCode::SERVICE_UNAVAILABLE, "service_unavailable").await;
    assert!(body["detail"].as_str().unwrap().contains("s3"));
}

#[tokio::test]
async fn readiness_is_checked_at_most_once_a_second() {
    let app = spawn().backend(Backend::Fs).start().await;
    let root = app.fs_root.as_ref().unwrap().path();
    let (probes, away) = (root.join(".tmp"), root.join(".tmp-away"));
    let asked = Instant::now();
    let resp = app.get("/readyz").send().await.unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    // Storage breaks: its probe file can no longer be made.
    std::fs::rename(&probes, &away).unwrap();
    // Every probe answered within a second of the first one's request
    // was answered by its check, which saw storage working.
    let mut answered_by_that_check = 0;
    loop {
        let status = app.get("/readyz").send().await.unwrap().status();
        if asked.elapsed() >= Duration::from_secs(1) {
            break;
        }
        assert_eq!(
            status,
            StatusCode::OK,
            "a probe within the second checked again"
        );
        answered_by_that_check += 1;
    }
    assert!(
        answered_by_that_check >= 3,
        "{answered_by_that_check} probes"
    );
    // Past the second, a probe checks again and sees the failure.
    eventually("readiness sees the storage failure", || async {
        app.get("/readyz").send().await.unwrap().status() == StatusCode::SERVICE_UNAVAILABLE
    })
    .await;
    let body = assert_problem(
        app.get("/readyz").send().await.unwrap(),
        StatusCode::SERVICE_UNAVAILABLE,
        "service_unavailable",
    )
    .await;
    assert!(body["detail"].as_str().unwrap().contains("fs"), "{body}");
    // And the recovery, a second later at most.
    std::fs::rename(&away, &probes).unwrap();
    eventually("readiness sees storage back", || async {
        app.get("/readyz").send().await.unwrap().status() == StatusCode::OK
    })
    .await;
}

#[tokio::test]
async fn metrics_ask_for_the_metrics_token_when_one_is_set() {
    const TOKEN: &str = "metrics-token-0123456789abcdefghijkl";
    let app = spawn().var("METRICS_TOKEN", TOKEN).start().await;
    let resp = app.get("/metrics").send().await.unwrap();
    assert_problem(resp, StatusCode::UNAUTHORIZED, "unauthorized").await;
    let resp = app
        .get("/metrics")
        .bearer_auth("metrics-token-0123456789abcdefghijkX")
        .send()
        .await
        .unwrap();
    assert_problem(resp, StatusCode::UNAUTHORIZED, "unauthorized").await;
    // Other credentials are not the metrics token.
    let resp = app
        .get("/metrics")
        .bearer_auth(crate::helpers::app::ADMIN_TOKEN)
        .send()
        .await
        .unwrap();
    assert_problem(resp, StatusCode::UNAUTHORIZED, "unauthorized").await;
    let resp = app.get("/metrics").bearer_auth(TOKEN).send().await.unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    assert!(
        resp.text()
            .await
            .unwrap()
            .contains("intake_http_requests_total{")
    );
    // Unset, /metrics stays open (the other tests scrape it so).
    let open = spawn_app().await;
    assert_eq!(
        open.get("/metrics").send().await.unwrap().status(),
        StatusCode::OK
    );
}

#[tokio::test]
async fn log_lines_carry_no_colour_codes_off_a_terminal() {
    let app = spawn_app().await;
    let logs = tempfile::tempdir().unwrap();
    // Its standard output and error go to a file, as under docker or
    // systemd.
    let mut instance = Instance::start(app.vars(), logs.path()).await;
    let log = instance.log_tail();
    assert!(log.contains("intake listening"), "{log}");
    assert!(!log.contains('\u{1b}'), "colour codes in the log: {log:?}");
    instance.kill9().await;
}

#[tokio::test]
async fn request_ids_are_generated_or_echoed() {
    let app = spawn_app().await;
    let resp = app.get("/healthz").send().await.unwrap();
    let generated = resp.headers()["x-request-id"].to_str().unwrap();
    assert_eq!(generated.len(), 36, "a UUID: {generated}");
    let resp = app
        .get("/nope")
        .header("x-request-id", "req-42")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.headers()["x-request-id"], "req-42");
}

#[tokio::test]
async fn metrics_are_prometheus_text() {
    let app = spawn_app().await;
    let before = app.metrics().await;
    let limits = app.get("/limits").send().await.unwrap();
    assert_eq!(limits.status(), StatusCode::OK);
    let resp = app.get("/metrics").send().await.unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    assert!(
        resp.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/plain")
    );
    let text = resp.text().await.unwrap();
    assert!(text.contains("intake_http_requests_total{"), "{text}");
    assert!(text.contains("route=\"/limits\""), "{text}");
    assert!(text.contains("intake_ratelimit_decisions_total{"), "{text}");
    // The anonymous request's lane reports its statement's duration.
    assert!(
        text.contains("intake_ratelimit_statement_seconds_count{lane=\"policies\"}"),
        "{text}"
    );
    // The recorder is shared by every test app, so the names alone prove
    // nothing: each series grew at least by this test's request.
    let after = Metrics::parse(&text);
    let grew = |name, labels: &[(&str, &str)]| after.grew(&before, name, labels);
    assert!(
        grew(
            "intake_http_requests_total",
            &[("route", "/limits"), ("method", "GET"), ("status", "200")]
        ) >= 1.0
    );
    assert!(
        grew(
            "intake_ratelimit_decisions_total",
            &[("policy", "anonymous")]
        ) >= 1.0
    );
    assert!(
        grew(
            "intake_ratelimit_statement_seconds_count",
            &[("lane", "policies")]
        ) >= 1.0
    );
}

#[tokio::test]
async fn openapi_lists_every_route() {
    let app = spawn_app().await;
    let doc: Value = app
        .get("/openapi.json")
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert!(doc["openapi"].as_str().unwrap().starts_with("3."));
    let mut listed = BTreeSet::new();
    for (path, item) in doc["paths"].as_object().unwrap() {
        for method in item.as_object().unwrap().keys() {
            listed.insert(format!("{} {path}", method.to_uppercase()));
        }
    }
    let expected: BTreeSet<String> = [
        "POST /auth/signup",
        "POST /auth/login",
        "POST /auth/logout",
        "POST /auth/logout-all",
        "GET /auth/session",
        "GET /me",
        "POST /api-keys",
        "GET /api-keys",
        "DELETE /api-keys/{id}",
        "POST /upload-tokens",
        "GET /upload-tokens",
        "DELETE /upload-tokens/{id}",
        "GET /limits",
        "GET /usage",
        "POST /admin/accounts",
        "PATCH /admin/accounts/{id}",
        "POST /admin/accounts/{id}/api-keys",
        "GET /admin/accounts/{id}/usage",
        "POST /upload/stream",
        "POST /upload/stream-batch",
        "POST /upload/presigned",
        "POST /upload/presigned/{id}/complete",
        "DELETE /upload/presigned/{id}",
        "PUT /upload/presigned/{id}/data",
        "OPTIONS /upload/tus",
        "POST /upload/tus",
        "OPTIONS /upload/tus/{id}",
        "HEAD /upload/tus/{id}",
        "PATCH /upload/tus/{id}",
        "DELETE /upload/tus/{id}",
        "GET /files",
        "GET /files/{id}",
        "DELETE /files/{id}",
        "GET /files/{id}/content",
        "POST /files/{id}/describe",
        "POST /chat",
        "GET /healthz",
        "GET /readyz",
        "GET /metrics",
        "GET /openapi.json",
        "GET /",
        "GET /assets/{build}/{file}",
    ]
    .into_iter()
    .map(String::from)
    .collect();
    assert_eq!(listed, expected);
    assert!(doc["components"]["schemas"]["AccountView"].is_object());
    // Upload tokens are a scheme of their own, named by the routes they open.
    let schemes = &doc["components"]["securitySchemes"];
    assert_eq!(schemes["upload_token"]["bearerFormat"], "iut_<id>_<secret>");
    let security = &doc["paths"]["/upload/stream"]["post"]["security"];
    assert!(
        security
            .as_array()
            .unwrap()
            .contains(&json!({"upload_token": []})),
        "{security}"
    );
    let files_security = &doc["paths"]["/files"]["get"]["security"];
    assert!(!files_security.to_string().contains("upload_token"));
}

#[tokio::test]
async fn every_error_is_problem_json() {
    let app = spawn_app().await;
    assert_problem(
        app.get("/no/such/route").send().await.unwrap(),
        StatusCode::NOT_FOUND,
        "not_found",
    )
    .await;
    let resp = app.request(Method::PUT, "/limits").send().await.unwrap();
    assert_problem(resp, StatusCode::METHOD_NOT_ALLOWED, "invalid_request").await;
    let resp = app.post("/auth/signup").body("{}").send().await.unwrap();
    assert_problem(
        resp,
        StatusCode::UNSUPPORTED_MEDIA_TYPE,
        "unsupported_media_type",
    )
    .await;
    let resp = app
        .post("/auth/signup")
        .header("content-type", "application/json")
        .body("{\"email\": \"a@")
        .send()
        .await
        .unwrap();
    assert_problem(resp, StatusCode::BAD_REQUEST, "invalid_request").await;
    let huge = json!({"email": "a@example.com", "password": "x".repeat(70 * 1024)});
    let resp = app.post("/auth/signup").json(&huge).send().await.unwrap();
    let body = assert_problem(resp, StatusCode::PAYLOAD_TOO_LARGE, "payload_too_large").await;
    assert_eq!(body["limit"], 65536);
    let resp = app
        .admin(Method::GET, "/admin/accounts/not-a-uuid/usage")
        .send()
        .await
        .unwrap();
    assert_problem(resp, StatusCode::NOT_FOUND, "not_found").await;
}

#[tokio::test]
async fn a_junk_method_creates_no_metrics_series() {
    let app = spawn_app().await;
    let junk = Method::from_bytes(b"XJUNK001").unwrap();
    let resp = app.request(junk, "/healthz").send().await.unwrap();
    assert_problem(resp, StatusCode::METHOD_NOT_ALLOWED, "invalid_request").await;
    let resp = app
        .request(
            Method::from_bytes(b"XJUNK002").unwrap(),
            "/no/such/XJUNK003",
        )
        .send()
        .await
        .unwrap();
    assert_problem(resp, StatusCode::NOT_FOUND, "not_found").await;
    let text = app
        .get("/metrics")
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(!text.contains("XJUNK"), "{text}");
    assert!(text.contains("method=\"other\""), "{text}");
    assert!(text.contains("route=\"unmatched\""), "{text}");
}

#[tokio::test]
async fn openapi_lists_the_statuses_the_server_layers_add() {
    let app = spawn_app().await;
    let doc: Value = app
        .get("/openapi.json")
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let responses = |method: &str, path: &str| doc["paths"][path][method]["responses"].clone();
    for (method, path) in [
        ("post", "/auth/login"),
        ("post", "/auth/signup"),
        ("post", "/upload/stream"),
        ("post", "/chat"),
    ] {
        let r = responses(method, path);
        assert!(r["408"].is_object(), "{method} {path}: {r}");
        assert!(r["503"].is_object(), "{method} {path}: {r}");
    }
    let r = responses("get", "/files/{id}/content");
    assert!(r["503"].is_object() && r["408"].is_null(), "{r}");
    let r = responses("get", "/healthz");
    assert!(r["503"].is_null(), "{r}");
}
